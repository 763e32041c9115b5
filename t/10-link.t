#!/usr/bin/perl

# Link flow: GET/HEAD confirmation page, POST (form, RFC 8058 urlencoded and
# multipart), phone / email / sender-scoped tokens, memcached rules and
# journal lines, 405 for other methods, variables in an access log.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);

$t->write_file('confirm.html',
    "<html><body>CONFIRM dest={{destination}} sender={{sender}}\n"
    . "<form method=\"post\" action=\"{{action}}\">"
    . "<button type=\"submit\">Stop</button></form></body></html>\n", 0644);
$t->write_file('done.html',
    "<html><body>DONE dest={{destination}} sender={{sender}}"
    . "</body></html>\n", 0644);

$t->setup(server => <<'EOF');
        location /tpl/ {
            optout_link;
            optout_link_confirm_page %%PREFIX%%/confirm.html;
            optout_link_done_page %%PREFIX%%/done.html;
        }
        location /ns/ {
            optout_link;
            optout_namespace tenant-$http_x_tenant;
        }
        location /np {
            optout_link;
        }
        location ~ ^/re/ {
            optout_link;
        }
        location /unsub/ {
            rewrite ^/unsub/(.*)$ /x/$1 break;
            optout_link;
        }
EOF

my $phone = '+447700900123';
my $email = 'john@example.com';
my $sphone = '+14155550100';

my $tok_phone  = $t->token(dest => $phone, campaign => 42);
my $tok_email  = $t->token(dest => 'John@Example.COM', campaign => 7);
my $tok_sender = $t->token(dest => $sphone, campaign => 300,
                           sender => 'acme');

my $key_phone  = $t->skey(dest => $phone);
my $key_email  = $t->skey(dest => $email);
my $key_sender = $t->skey(dest => $sphone, sender => 'ACME');
my $key_sender_account = $t->skey(dest => $sphone);

# the Perl minting agrees with optoutctl sign (if built)

SKIP: {
    skip 'build/optoutctl not built', 2 unless -x OptoutTest::ctl_path();
    my ($rc, $out) = $t->ctl('sign', '--key', $t->path('k1.key'),
                             '--key-id', 1, '--campaign', 42, $phone);
    $out =~ s/\s+\z//;
    is($out, $tok_phone, 'optoutctl sign = Perl mint (phone)');
    ($rc, $out) = $t->ctl('sign', '--key', $t->path('k1.key'),
                          '--key-id', 1, '--campaign', 300,
                          '--sender', 'acme', $sphone);
    $out =~ s/\s+\z//;
    is($out, $tok_sender, 'optoutctl sign = Perl mint (sender)');
}

SKIP: {
    skip 'build/optoutctl not built', 4 unless -x OptoutTest::ctl_path();
    my $want = $t->token(dest => $phone, campaign => 42, ns => 'tenant-a');
    my ($rc, $out) = $t->ctl('sign', '--key', $t->path('k1.key'),
                             '--campaign', 42, '--namespace', 'tenant-a',
                             $phone);
    $out =~ s/\s+\z//;
    is($out, $want, 'optoutctl sign --namespace = Perl mint (ns)');
    isnt($out, $tok_phone, 'the namespace changes the token');
    ($rc, $out) = $t->ctl('verify', '--key', $t->path('k1.key'),
                          '--namespace', 'tenant-a', $want);
    is($rc, 0, 'optoutctl verify --namespace: valid') or diag $out;
    ($rc, $out) = $t->ctl('verify', '--key', $t->path('k1.key'),
                          '--namespace', 'tenant-b', $want);
    is($rc, 1, 'optoutctl verify in another namespace: invalid')
        or diag $out;
}

sub check_page_headers {
    my ($r, $what) = @_;
    is($r->{status}, 200, "$what: 200");
    like($r->{headers}{'content-type'} // '',
         qr{^text/html;\s*charset=utf-8$}i, "$what: Content-Type");
    like($r->{headers}{'cache-control'} // '', qr/\bno-store\b/,
         "$what: Cache-Control no-store");
    like($r->{headers}{'x-robots-tag'} // '', qr/\bnoindex\b/,
         "$what: X-Robots-Tag noindex");
    is($r->{headers}{'referrer-policy'}, 'no-referrer',
       "$what: Referrer-Policy");
    ok(!exists $r->{headers}{location}, "$what: no Location");
}

# ---------------------------------------------------------------- GET/HEAD

my $r = $t->get("/u/$tok_phone");
check_page_headers($r, 'GET phone');
like($r->{content}, qr/<form\b[^>]*\bmethod\s*=\s*"?post"?/i,
     'GET phone: form method=post');
like($r->{content}, qr/<button\b/i, 'GET phone: button');
like($r->{content}, qr/\Q+447*******23\E/, 'GET phone: masked destination');
unlike($r->{content}, qr/447700900123/, 'GET phone: full number not shown');
my $page_phone = $r;

$r = $t->head("/u/$tok_phone");
check_page_headers($r, 'HEAD phone');
is($r->{content}, '', 'HEAD phone: no body');
is($r->{body_bytes_received}, 0, 'HEAD phone: no body bytes on the wire');

$r = $t->get("/u/$tok_email");
check_page_headers($r, 'GET email');
like($r->{content}, qr/\Qj***\E(?:@|&#64;|&#x40;)\Qexample.com\E/,
     'GET email: masked destination');
unlike($r->{content}, qr/john\@/i, 'GET email: local part not shown');

$r = $t->get("/u/$tok_sender");
check_page_headers($r, 'GET sender');
like($r->{content}, qr/\Q+141******00\E/, 'GET sender: masked destination');

is($t->mc_items, 0, 'GET: nothing in memcached');
is($t->journal_count, 0, 'GET: nothing in the journal');

# ---------------------------------------------------------------- POST form

my $t0 = time;
$r = $t->submit_form($page_phone, "/u/$tok_phone");
check_page_headers($r, 'POST form');
like($r->{form_action}, qr{^/u/\Q$tok_phone\E$}, 'form posts to the link');
unlike($r->{content}, qr/<form\b/i, 'POST form: confirmation page, no form');
like($r->{content}, qr/\Q+447*******23\E/, 'POST form: masked destination');
unlike($r->{content}, qr/447700900123/, 'POST form: full number not shown');

my $v = $t->mc_get($key_phone);
like($v // '', qr/^1 42 (\d+) link sms 1$/, 'phone rule in memcached')
    or diag 'value: ' . ($v // 'undef');
my ($vt) = ($v // '') =~ /^1 42 (\d+)/;
ok($vt && abs($vt - $t0) < 60, 'phone rule time is now');

my @j = $t->journal_lines;
is(scalar @j, 1, 'one journal line after the form POST');
my $j = $j[0] || {};
is($j->{action}, 'optout', 'journal action');
is($j->{ns}, '', 'journal ns');
is($j->{dest}, $phone, 'journal dest');
is($j->{scope}, 'account', 'journal scope');
ok(!exists $j->{sender}, 'journal: no sender for account scope');
is($j->{campaign}, '42', 'journal campaign');
like($t->journal_raw, qr/"campaign":"42"/, 'journal campaign is a JSON string');
is($j->{source}, 'link', 'journal source');
is($j->{channel}, 'sms', 'journal channel');
is($j->{client}, '127.0.0.1', 'journal client');
is($j->{kid}, 1, 'journal kid');
ok(defined $j->{t} && abs($j->{t} - $t0) < 60, 'journal t is now');
like($t->journal_raw, qr/"t":\d+\.\d{3}[,}]/, 'journal t has milliseconds');
like($t->journal_raw, qr/"kid":1[,}]/, 'journal kid is a JSON number');

# ---------------------------------------------------------------- RFC 8058

$r = $t->post_one_click("/u/$tok_email");
check_page_headers($r, 'POST one-click urlencoded (email)');
$v = $t->mc_get($key_email);
like($v // '', qr/^1 7 \d+ link email 1$/, 'email rule in memcached')
    or diag 'value: ' . ($v // 'undef');
@j = $t->journal_for($email);
is(scalar @j, 1, 'email journal line');
$j = $j[0] || {};
is($j->{dest}, $email, 'journal email dest lowercased');
is($j->{channel}, 'email', 'journal email channel');
is($j->{campaign}, '7', 'journal email campaign');
is($j->{scope}, 'account', 'journal email scope');

$r = $t->post_one_click_multipart("/u/$tok_sender");
check_page_headers($r, 'POST one-click multipart (sender)');
$v = $t->mc_get($key_sender);
like($v // '', qr/^1 300 \d+ link sms 1$/, 'sender rule in memcached')
    or diag 'value: ' . ($v // 'undef');
is($t->mc_get($key_sender_account), undef,
   'sender scope: no account-wide rule');
@j = $t->journal_for($sphone);
is(scalar @j, 1, 'sender journal line');
$j = $j[0] || {};
is($j->{scope}, 'sender', 'journal sender scope');
is($j->{sender}, 'ACME', 'journal sender uppercased');
is($j->{campaign}, '300', 'journal sender campaign (multi-byte LEB128)');
is($j->{channel}, 'sms', 'journal sender channel');

is($t->mc_items, 3, 'exactly three rules in memcached');
is($t->journal_count, 3, 'exactly three journal lines');

# ---------------------------------------------------------------- other methods

my $tok_m = $t->token(dest => '+447700900999', campaign => 5);
for my $m (qw(PUT DELETE)) {
    $r = $t->request($m, "/u/$tok_m", body => 'x',
                     headers => { 'Content-Type' => 'text/plain' });
    is($r->{status}, 405, "$m: 405");
}
is($t->mc_get($t->skey(dest => '+447700900999')), undef,
   'PUT/DELETE: no rule');
is(scalar $t->journal_for('+447700900999'), 0, 'PUT/DELETE: no journal');

# ---------------------------------------------------------------- paths

# In a prefix location the token follows the prefix directly.  nginx
# normalizes the path first (dot segments, merged slashes, %XX), so those
# spellings reach the module as /u/TOKEN.
{
    my $tok = $t->token(dest => '+447700900401', campaign => 4);
    my $jn = $t->journal_count;
    is($t->get("/u/any/path/$tok")->{status}, 404,
       'path: GET /u/any/path/TOKEN is 404');
    is($t->post_one_click("/u/any/path/$tok")->{status}, 404,
       'path: POST /u/any/path/TOKEN is 404');
    is($t->post_one_click("/u/x/$tok")->{status}, 404,
       'path: POST /u/x/TOKEN is 404');
    is($t->journal_count, $jn, 'path: nothing recorded for extra segments');
    like($t->error_log // "",
         qr/path segments between the location and the token/,
       'path: the reason is logged');
    is($t->get("/u/x/../$tok")->{status}, 200,
       'path: /u/x/../TOKEN is /u/TOKEN once nginx normalized it');
    is($t->get("/u//$tok")->{status}, 200,
       'path: /u//TOKEN is /u/TOKEN (merge_slashes)');
    is($t->get("/u/$tok?utm=1")->{status}, 200,
       'path: the query string is ignored');
    is($t->get("/u/$tok/")->{status}, 404, 'path: a trailing slash is 404');
    is($t->get("/np/$tok")->{status}, 200,
       'path: location /np serves /np/TOKEN');
    is($t->get("/np/x/$tok")->{status}, 404, 'path: but not /np/x/TOKEN');
    is($t->get("/re/any/path/$tok")->{status}, 200,
       'path: a regex location takes the last segment');
    is($t->get("/unsub/$tok")->{status}, 200,
       'path: rewritten by "rewrite ... break": the last segment');
}

# ---------------------------------------------------------------- templates

my $tok_tpl = $t->token(dest => '+447700900555', campaign => 77,
                        sender => 'Shop1');
$r = $t->get("/tpl/$tok_tpl");
is($r->{status}, 200, 'template GET: 200');
like($r->{content}, qr/^<html><body>CONFIRM dest=\Q+447*******55\E sender=SHOP1/,
     'template GET: custom page with destination and sender');
unlike($r->{content}, qr/\{\{/, 'template GET: all placeholders replaced');
$r = $t->submit_form($r, "/tpl/$tok_tpl");
is($r->{status}, 200, 'template POST via the form action: 200');
like($r->{content}, qr/^<html><body>DONE dest=\Q+447*******55\E sender=SHOP1/,
     'template POST: custom done page');
like($t->mc_get($t->skey(dest => '+447700900555', sender => 'SHOP1')) // '',
     qr/^1 77 \d+ link sms 1$/, 'template POST: rule stored');

# ---------------------------------------------------------------- namespace

# the namespace is bound into the token: a link opts out only in the
# tenant it was minted for, whatever tenant the client names
my $ns_dest = '+447700900777';
my $tok_blue = $t->token(dest => $ns_dest, campaign => 88,
                         ns => 'tenant-blue');
my $tok_none = $t->token(dest => $ns_dest, campaign => 88,
                         ns => 'tenant-');
my $tok_plain = $t->token(dest => $ns_dest, campaign => 88);
my $jn = $t->journal_count;
$r = $t->post("/ns/$tok_blue", 'List-Unsubscribe=One-Click',
              'Content-Type' => 'application/x-www-form-urlencoded',
              'X-Tenant' => 'red');
is($r->{status}, 404, 'namespace: token of tenant-blue POSTed as red: 404');
$r = $t->get("/ns/$tok_blue", 'X-Tenant' => 'red');
is($r->{status}, 404, 'namespace: token of tenant-blue, GET as red: 404');
$r = $t->post_one_click("/ns/$tok_blue");
is($r->{status}, 404, 'namespace: token of tenant-blue without header: 404');
$r = $t->post_one_click("/ns/$tok_plain");
is($r->{status}, 404, 'namespace: token without namespace: 404 here');
is($t->journal_count, $jn, 'namespace: the 404s recorded nothing');
is($t->mc_get($t->skey(dest => $ns_dest, ns => 'tenant-red')), undef,
   'namespace: no rule in tenant-red');
$r = $t->post("/ns/$tok_blue", 'List-Unsubscribe=One-Click',
              'Content-Type' => 'application/x-www-form-urlencoded',
              'X-Tenant' => 'blue');
is($r->{status}, 200, 'namespace: token of tenant-blue POSTed as blue: 200');
like($t->mc_get($t->skey(dest => $ns_dest, ns => 'tenant-blue')) // '',
     qr/^1 88 \d+ link sms 1$/, 'namespace: rule under the namespaced key');
$r = $t->post_one_click("/ns/$tok_none");     # no X-Tenant: "tenant-"
is($r->{status}, 200, 'namespace: token of "tenant-" without header: 200');
my %jns = map { ($_->{ns} // '?') => 1 } $t->journal_for($ns_dest);
ok($jns{'tenant-blue'}, 'namespace: journal ns from the complex value');
ok($jns{'tenant-'}, 'namespace: empty variable gives "tenant-"')
    or diag explain \%jns;
is(scalar keys %jns, 2, 'namespace: no journal line in another tenant')
    or diag explain \%jns;
like($t->mc_get($t->skey(dest => $ns_dest, ns => 'tenant-')) // '',
     qr/^1 88 /, 'namespace "tenant-": its own rule');
is($t->mc_get($t->skey(dest => $ns_dest)), undef,
   'namespace: no rule without namespace');

# ---------------------------------------------------------------- variables

my $bad = $tok_phone;
substr($bad, 5, 1) = substr($bad, 5, 1) eq 'A' ? 'B' : 'A';
is($t->get("/u/$bad")->{status}, 404, 'tampered token: 404');

my $tp = quotemeta $tok_phone;
my @log = $t->log_lines('logs/optout.log', qr{^GET 200 r=confirm .* u=/u/$tp$}, 1);
ok((grep { m{^GET 200 r=confirm d=\+447\*{7}23 c=42 s=account snd=- k=1 u=/u/$tp$} } @log),
   'access log: GET confirm variables');
ok((grep { m{^HEAD 200 r=confirm d=\+447\*{7}23 c=42 s=account snd=- k=1 } } @log),
   'access log: HEAD confirm variables');
ok((grep { m{^POST 200 r=recorded d=\+447\*{7}23 c=42 s=account snd=- k=1 u=/u/$tp$} } @log),
   'access log: POST recorded variables');
ok((grep { m{^POST 200 r=recorded d=j\*\*\*\@example\.com c=7 s=account snd=- k=1 } } @log),
   'access log: email variables');
ok((grep { m{^POST 200 r=recorded d=\+141\*{6}00 c=300 s=sender snd=ACME k=1 } } @log),
   'access log: sender variables');
my $bq = quotemeta $bad;
ok((grep { m{^GET 404 r=invalid .* u=/u/$bq$} } @log),
   'access log: invalid result for a tampered token')
    or diag join "\n", @log;

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
