#!/usr/bin/perl

# optout_api configuration and access control.  Part 1: "nginx -t" fails
# with a clear message when the directives the API needs are missing.
# Part 2 runs conf-examples/api.conf itself (ports, paths and the memcached
# address substituted) over TLS with curl: a request without credentials,
# with a wrong password or from a denied address is refused and records
# nothing; an authenticated one is journaled with its user and client
# address; the access log never holds the destination in clear.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use File::Path qw(make_path);
use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'curl and openssl are needed'
    unless grep({ -x "$_/curl" } split /:/, $ENV{PATH})
        && grep({ -x "$_/openssl" } split /:/, $ENV{PATH});

my $JSON = JSON::PP->new->utf8;

# ---- part 1: nginx -t

{
    my $t = OptoutTest->new(workers => 1);
    $t->key('k1', 1);
    $t->key('store');

    my $api = 'location /api { optout_api; }';

    # optout_link of optout_http() needs the journal too: leave it out
    for my $d (qw(optout_journal optout_store optout_store_secret)) {
        my $body = $t->optout_http(server => $api, omit => { $d => 1 });
        $body =~ s{location /u/ \{ optout_link; \}}{}g;
        $t->write_conf($body);
        my ($rc, $out) = $t->nginx_test;
        isnt($rc, 0, "optout_api without $d: nginx -t fails");
        like($out, qr/\[emerg\] .*"optout_api" requires "$d"/,
             "optout_api without $d: message") or diag $out;
    }

    $t->write_conf($t->optout_http(server =>
        'location /api { optout_api; optout_api; }'));
    my ($rc, $out) = $t->nginx_test;
    like($out, qr/\[emerg\].*"optout_api" directive is duplicate/,
         'optout_api twice: is duplicate');

    $t->write_conf($t->optout_http(server =>
        'location /api { optout_api; optout_check; }'));
    ($rc, $out) = $t->nginx_test;
    like($out, qr/\[emerg\] .*"optout_api" and "optout_check" cannot be/,
         'optout_api with optout_check: refused');

    $t->write_conf($t->optout_http(server =>
        'location /api { optout_api 1; }'));
    ($rc, $out) = $t->nginx_test;
    like($out, qr/\[emerg\].*invalid number of arguments in "optout_api"/,
         'optout_api takes no argument');

    $t->write_conf($t->optout_http(server => $api));
    ($rc, $out) = $t->nginx_test;
    is($rc, 0, 'a good optout_api passes') or diag $out;
}

# ---- part 2: conf-examples/api.conf

my $t = OptoutTest->new(workers => 2);
$t->memcached_start;
my $p = $t->prefix;
make_path("$p/conf/keys", "$p/tmp", "$p/ssl");
chmod 0755, "$p/conf/keys", "$p/tmp";
$t->key('conf/keys/store');
my $secret = $t->key_bytes('conf/keys/store');

system("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost "
       . "-days 1 -keyout $p/ssl/privkey.pem -out $p/ssl/fullchain.pem "
       . "2>/dev/null") == 0 or die 'openssl req failed';
my $hash = `openssl passwd -apr1 s3cret`;
chomp $hash;
$t->write_file('htpasswd', "ops:$hash\n", 0644);

open my $fh, '<', "$OptoutTest::ROOT/conf-examples/api.conf"
    or die "api.conf: $!";
my $conf = do { local $/; <$fh> };
close $fh;

my $root = $OptoutTest::ROOT;
my ($port, $mc) = ($t->port('nginx'), $t->mc_port);
my $ok = 1;
$ok &&= $conf =~ s{^load_module\s+modules/}{load_module $root/build/}m;
$ok &&= $conf =~ s{^(\s*pid\s+)\S+;}{${1}logs/nginx.pid;}m;
$ok &&= $conf =~ s{^(\s*error_log\s+)\S+}{${1}logs/error.log}m;
$ok &&= $conf =~ s{/var/log/nginx/}{$p/logs/}g;
$ok &&= $conf =~ s{/var/lib/optout/}{$p/}g;
$ok &&= $conf =~ s{/etc/ssl/optout-api/}{$p/ssl/}g;
$ok &&= $conf =~ s{/etc/nginx/optout-api\.htpasswd}{$p/htpasswd}g;
$ok &&= $conf =~ s{^(\s*listen\s+)127\.0\.0\.1:8443}{${1}127.0.0.1:$port}m;
$ok &&= $conf =~ s{127\.0\.0\.1:11211}{127.0.0.1:$mc}g;
$ok &&= $conf =~ s|^http \{|http {\n    client_body_temp_path $p/tmp;|m;
ok($ok, 'api.conf: every substitution applied');
(my $directives = $conf) =~ s/^\s*#.*$//mg;
unlike($directives, qr{/var/|/run/|/etc/|:8443\b|:11211\b},
       'api.conf: no system path or default port left');
$t->write_file('conf/nginx.conf', $conf);
$t->start;

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

my $URL = "https://127.0.0.1:$port/v1/rules";
my $D = '+447700900401';

# curl(@args): (status, body)
sub curl {
    my @args = @_;
    my $pid = open(my $out, '-|');
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDERR, '>', '/dev/null';
        exec('curl', '-sk', '--max-time', '10', '-w', '\n%{http_code}',
             @args) or POSIX::_exit(127);
    }
    local $/;
    my $all = <$out> // '';
    close $out;
    my ($body, $status) = $all =~ /\A(.*)\n(\d+)\z/s;
    return ($status // 0, $body // '');
}

my @json = ('-H', 'Content-Type: application/json');
my $add = '{"destination":"' . $D . '","campaign":"31"}';

my ($st, $body) = curl(@json, '--data', $add, $URL);
is($st, 401, 'no credentials: 401');
($st) = curl(@json, '-u', 'ops:wrong', '--data', $add, $URL);
is($st, 401, 'wrong password: 401');
($st) = curl(@json, '--interface', '127.0.0.2', '-u', 'ops:s3cret',
             '--data', $add, $URL);
is($st, 403, 'a denied address: 403');
($st) = curl('-X', 'DELETE', "$URL?destination=%2B447700900401");
is($st, 401, 'DELETE without credentials: 401');
is($t->journal_count('journal.log'), 0, 'nothing journaled');
is($t->mc_get(OptoutTest::store_key(secret => $secret, dest => $D)), undef,
   'nothing in memcached');

($st, $body) = curl(@json, '-u', 'ops:s3cret', '--data', $add, $URL);
is($st, 200, 'authenticated add: 200');
my $j = eval { $JSON->decode($body) } || {};
is($j->{added}, 1, 'added');
my @l = $t->journal_lines('journal.log');
is(scalar @l, 1, 'one journal line');
is($l[0]{user}, 'ops', 'journal: user');
is($l[0]{client}, '127.0.0.1', 'journal: client address');
is($l[0]{source}, 'api', 'journal: source api');
like($t->mc_get(OptoutTest::store_key(secret => $secret, dest => $D)) // '',
     qr/^1 31 \d+ api sms 0$/, 'in memcached');

($st, $body) = curl('-u', 'ops:s3cret', "$URL?destination=%2B447700900401");
is($st, 200, 'look-up: 200');
($st, $body) = curl('-u', 'ops:s3cret', '-H', 'X-Optout-Namespace: t1',
                    "$URL?destination=%2B447700900401");
is($st, 404, 'look-up in another namespace: 404');

($st, $body) = curl('-u', 'ops:s3cret', '-X', 'DELETE',
                    "$URL?destination=%2B447700900401");
is($st, 200, 'remove: 200');
@l = $t->journal_lines('journal.log');
is("$l[1]{action} $l[1]{user}", 'optin ops', 'journal: opt-in by ops');

my $log = join '', $t->file_lines('logs/optout-api.log');
like($log, qr{"GET /v1/rules\?destination=\*\*\*"}, 'access log: masked');
unlike($log, qr/447700900401/, 'access log: never the number');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
