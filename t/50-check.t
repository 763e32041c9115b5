#!/usr/bin/perl

# Send-time check (optout_check), single destination: store markers
# (not seeded -> unavailable), account-wide and per-sender rules, namespaces,
# answers (status, JSON body, X-Optout-* headers), variables in an access
# log, invalid input, 405, fail closed / open, memcached stopped, restarted
# (empty) and frozen, and the optout_cache write-through.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use JSON::PP ();
use POSIX qw(strftime);
use Time::Local qw(timegm);
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8;
my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

my $t = OptoutTest->new(workers => 1);

# a long store timeout keeps a lookup on a frozen memcached in flight long
# enough to look at it; the check answers at optout_check_timeout anyway
$t->setup(store_timeout => '1s', http => <<'EOF', server => <<'EOF');
    log_format check '$request_method $status st=$optout_status '
                     'c=$optout_campaign sc=$optout_scope '
                     'since=$optout_since m=$check_class u=$request_uri';
    # the check directives at server level, inherited by the location
    server {
        listen 127.0.0.1:%%PORT:srv%%;
        optout_check_fail open;
        optout_check_destination $http_x_to;
        optout_check_sender $http_x_from;
        optout_check_timeout 800ms;
        location = /check { optout_check; }
    }
    map $optout_status $check_class {
        blocked      B;
        allowed      A;
        invalid      I;
        unavailable  U;
        unverified   V;
        default      X;
    }
EOF
        location = /check {
            optout_check;
            access_log %%PREFIX%%/logs/check.log check;
        }
        location = /check-a {
            optout_check;
            optout_namespace a;
        }
        location = /check-b {
            optout_check;
            optout_namespace b;
        }
        location /ua/ {
            optout_link;
            optout_namespace a;
        }
        location = /check-hdr {
            optout_check;
            optout_check_destination $http_x_to;
            optout_check_sender $http_x_from;
        }
        location = /check-open {
            optout_check;
            optout_check_fail open;
            access_log %%PREFIX%%/logs/check.log check;
        }
        location = /check-slow {
            optout_check;
            optout_check_timeout 800ms;
        }
EOF

sub ctl_store {
    my ($cmd, @args) = @_;
    return $t->ctl($cmd, '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                   '--store-secret', $t->path('store.key'), @args);
}

sub chk {
    my ($path, %h) = @_;
    my $method = delete $h{_method} || 'GET';
    my $port = delete $h{_port};
    my $t0 = time;
    my $r = $t->request($method, $path, headers => \%h, port => $port);
    $r->{elapsed} = time - $t0;
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if length($r->{content} // '');
    return $r;
}

sub err0 {
    my ($r) = @_;
    my $j = $r->{json};
    return {} unless ref $j eq 'HASH' && ref $j->{errors} eq 'ARRAY'
                     && ref $j->{errors}[0] eq 'HASH';
    return $j->{errors}[0];
}

sub is_allowed {
    my ($r, $what) = @_;
    my $ok = is($r->{status}, 204, "$what: 204");
    $ok &= is($r->{headers}{'x-optout-status'}, 'allowed',
              "$what: X-Optout-Status allowed");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

# is_blocked($r, $what, campaign, scope, [since regexp or string])
sub is_blocked {
    my ($r, $what, $campaign, $scope, $since) = @_;
    my $ok = is($r->{status}, 403, "$what: 403");
    $ok &= is($r->{headers}{'x-optout-status'}, 'blocked',
              "$what: X-Optout-Status blocked");
    $ok &= is($r->{headers}{'x-optout-campaign'}, $campaign,
              "$what: X-Optout-Campaign $campaign");
    $ok &= is($r->{headers}{'x-optout-scope'}, $scope,
              "$what: X-Optout-Scope $scope");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: Content-Type application/json");
    my $e = err0($r);
    $ok &= is($e->{code}, '40300', "$what: code 40300");
    $ok &= is($e->{title}, 'Blocked due to opt-out', "$what: title");
    $ok &= ok(defined $e->{detail} && length $e->{detail}, "$what: detail");
    $ok &= is($e->{campaign}, $campaign, "$what: JSON campaign");
    $ok &= like($r->{content}, qr/"campaign":"\Q$campaign\E"/,
                "$what: JSON campaign is a string");
    $ok &= is($e->{scope}, $scope, "$what: JSON scope");
    if (ref $since) {
        $ok &= like($e->{since} // '', $since, "$what: JSON since");
    } elsif (defined $since) {
        $ok &= is($e->{since}, $since, "$what: JSON since");
    } else {
        $ok &= like($e->{since} // '', $ISO, "$what: JSON since ISO 8601");
    }
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

sub is_invalid {
    my ($r, $what, $code) = @_;
    my $ok = is($r->{status}, 400, "$what: 400");
    $ok &= is($r->{headers}{'x-optout-status'}, 'invalid',
              "$what: X-Optout-Status invalid");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: Content-Type application/json");
    $ok &= is(err0($r)->{code}, $code, "$what: code $code");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

sub is_unavailable {
    my ($r, $what) = @_;
    my $ok = is($r->{status}, 403, "$what: 403 (fail closed)");
    $ok &= is($r->{headers}{'x-optout-status'}, 'unavailable',
              "$what: X-Optout-Status unavailable");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: Content-Type application/json");
    $ok &= is(err0($r)->{code}, '40301', "$what: code 40301");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

sub error_lines {
    return grep { /\[error\]/ } split /\n/, ($t->error_log // '');
}

sub is_unverified {
    my ($r, $what, $errors_before) = @_;
    my $ok = is($r->{status}, 204, "$what: 204 (fail open)");
    $ok &= is($r->{headers}{'x-optout-status'}, 'unverified',
              "$what: X-Optout-Status unverified");
    $ok &= cmp_ok(scalar(error_lines()), '>', $errors_before,
                  "$what: an [error] line in error.log");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

# the harness waits for SIGSTOP to take effect; this asserts it did
sub wait_stopped { return $t->memcached_stopped }

my $A   = '+447700900101';      # account-wide rule, campaign 42 (link)
my $S   = '+447700900102';      # rule for sender ACME, campaign 300 (link)
my $N   = '+447700900103';      # account-wide rule in namespace "a" (link)
my $E   = 'john@example.com';   # account-wide email rule, campaign 7 (link)
my $R   = '+447700900150';      # account-wide, campaign 99, from replay
my $BIG = '+447700900151';      # sender ACME, campaign 2^64-1, from replay
my $BOTH = '+447700900152';     # account 7 and sender ACME 8, from replay
my $PS   = '+447700900153';     # sender +447700900001, campaign 61, replay
my $FREE = '+447700900199';     # no rule at all

# ---------------------------------------------------------------- not seeded

ok(!defined $t->mc_get('optout:marker:0'), 'no marker before the seeding');
is_unavailable(chk("/check?to=$FREE"), 'not seeded');
is_unavailable(chk("/check?to=$FREE&from=ACME"), 'not seeded, with sender');
my $errs = error_lines();
is_unverified(chk("/check-open?to=$FREE"), 'not seeded, fail open', $errs);
$errs = error_lines();
is_unverified(chk('/check', _port => $t->port('srv'), 'X-To' => $FREE),
              'not seeded, fail open at server level', $errs);

# ---------------------------------------------------------------- seeding

$t->write_file('empty.journal', '');
my ($rc, $out) = ctl_store('replay', $t->path('empty.journal'));
is($rc, 0, 'optoutctl replay of an empty journal') or diag $out;
like($t->mc_get('optout:marker:0') // '', qr/^1 \d+$/,
     'marker optout:marker:0 is set');
is_allowed(chk("/check?to=$FREE"), 'seeded, no rule');
is_allowed(chk("/check-open?to=$FREE"), 'seeded, no rule, fail open');

# ---------------------------------------------------------------- rules

my $t0 = time;
is($t->post_one_click('/u/' . $t->token(dest => $A, campaign => 42))
     ->{status}, 200, 'link POST: account-wide rule for A');
is($t->post_one_click('/u/' . $t->token(dest => $S, campaign => 300,
                                        sender => 'acme'))->{status}, 200,
   'link POST: ACME rule for S');
is($t->post_one_click('/ua/' . $t->token(dest => $N, campaign => 5,
                                         ns => 'a'))->{status}, 200,
   'link POST: account-wide rule for N in namespace a');
is($t->post_one_click('/u/' . $t->token(dest => 'John@Example.COM',
                                        campaign => 7))->{status}, 200,
   'link POST: email rule');
like($t->mc_get($t->skey(dest => $A)) // '', qr/^1 42 \d+ link sms 1$/,
     'rule for A in memcached');

my $rt = 1795424400;
my $since_rt = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime $rt);
my $jl = sub {
    my (%a) = @_;
    my $scope = defined $a{sender}
        ? qq{"scope":"sender","sender":"$a{sender}"} : '"scope":"account"';
    return sprintf '{"t":%s,"action":"optout","ns":"%s","dest":"%s",%s,'
        . '"campaign":"%s","source":"api","channel":"sms","client":"",'
        . '"kid":0}' . "\n", $a{t}, $a{ns} // '', $a{dest}, $scope,
        $a{campaign};
};
$t->write_file('hand.journal',
    $jl->(t => "$rt.250", dest => $R, campaign => 99)
    . $jl->(t => $rt + 100, dest => $BIG, sender => 'ACME',
            campaign => '18446744073709551615')
    . $jl->(t => $rt + 200, dest => $BOTH, sender => 'ACME', campaign => 8)
    . $jl->(t => $rt + 300, dest => $BOTH, campaign => 7)
    . $jl->(t => $rt, dest => $PS, sender => '+447700900001',
            campaign => 61));
($rc, $out) = ctl_store('replay', $t->path('hand.journal'));
is($rc, 0, 'optoutctl replay of a hand-written journal') or diag $out;
like($out, qr/5 added/, 'replay added 5 rules') or diag $out;

# ---------------------------------------------------------------- scopes

my $since_link = qr/^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$/;
my $r = chk("/check?to=$A");
is_blocked($r, 'account rule, no sender', '42', 'account', $since_link);
{
    my $e = err0($r);
    my @f = ($e->{since} // '') =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)Z$/;
    my $st = @f ? timegm($f[5], $f[4], $f[3], $f[2], $f[1] - 1, $f[0]) : 0;
    ok(abs($st - $t0) < 60, 'since of a link rule is the time of the POST')
        or diag 'since ' . ($e->{since} // 'undef') . ', now '
                . strftime('%FT%TZ', gmtime $t0);
}
is_blocked(chk("/check?to=$A&from=ACME"), 'account rule blocks ACME',
           '42', 'account');
is_blocked(chk("/check?to=$A&from=OTHER"), 'account rule blocks OTHER',
           '42', 'account');
is_blocked(chk("/check?to=$A&from=%2B14155550100"),
           'account rule blocks a phone sender', '42', 'account');

is_allowed(chk("/check?to=$S"), 'sender rule: account-wide check allowed');
is_blocked(chk("/check?to=$S&from=ACME"), 'sender rule blocks ACME',
           '300', 'sender');
is_blocked(chk("/check?to=$S&from=acme"), 'sender rule: sender normalized',
           '300', 'sender');
is_allowed(chk("/check?to=$S&from=OTHER"), 'sender rule: OTHER allowed');
is_allowed(chk("/check?to=$S&from="), 'sender rule: empty sender allowed');

is_blocked(chk("/check?to=$R"), 'replayed rule', '99', 'account', $since_rt);
is_blocked(chk("/check?to=$BIG&from=ACME"), 'campaign 2^64-1',
           '18446744073709551615', 'sender',
           strftime('%Y-%m-%dT%H:%M:%SZ', gmtime($rt + 100)));
is_allowed(chk("/check?to=$BIG"), 'campaign 2^64-1: no account rule');
is_blocked(chk("/check?to=$BOTH&from=ACME"), 'both rules: account wins',
           '7', 'account', strftime('%Y-%m-%dT%H:%M:%SZ',
                                    gmtime($rt + 300)));
is_blocked(chk("/check?to=$BOTH&from=OTHER"), 'both rules, OTHER',
           '7', 'account');

is_blocked(chk('/check?to=John%40Example.COM'), 'email rule', '7',
           'account');
is_blocked(chk('/check?to=john@example.com'), 'email rule, plain @', '7',
           'account');

# ---------------------------------------------------------------- namespaces

is_blocked(chk("/check-a?to=$N"), 'namespace a: rule of namespace a',
           '5', 'account');
is_allowed(chk("/check-b?to=$N"), 'namespace b: rule of a does not block');
is_allowed(chk("/check?to=$N"), 'no namespace: rule of a does not block');
is_allowed(chk("/check-a?to=$A"), 'namespace a: rule without ns ignored');

# ---------------------------------------------------------------- encoding

is_blocked(chk('/check?to=%2B447700900101'), '%2B-encoded plus accepted',
           '42', 'account');
is_blocked(chk('/check?to=%2B44%207700%20900101'),
           'encoded spaces normalized', '42', 'account');
is_blocked(chk('/check?to=00447700900101'), '00 prefix normalized',
           '42', 'account');
is_blocked(chk("/check?to=$S&from=%20acme"), 'sender trimmed', '300',
           'sender');

is_blocked(chk("/check?to=%2B447700900153&from=%2B447700900001"),
           'phone sender, %2B-encoded', '61', 'sender', $since_rt);
is_blocked(chk("/check?to=%2B447700900153&from=00447700900001"),
           'phone sender, 00 prefix', '61', 'sender');
is_allowed(chk("/check?to=%2B447700900153&from=%2B447700900002"),
           'phone sender, another number');

# other sources of destination and sender
is_blocked(chk('/check-hdr', 'X-To' => $S, 'X-From' => 'Acme'),
           'destination and sender from headers', '300', 'sender');
is_allowed(chk('/check-hdr?to=' . $A, 'X-To' => $FREE),
           'header destination, not $arg_to');
is_blocked(chk('/check?to=' . $FREE, _port => $t->port('srv'),
               'X-To' => $S, 'X-From' => 'ACME'),
           'server-level destination and sender', '300', 'sender');

# ---------------------------------------------------------------- HEAD

$r = chk("/check?to=$A", _method => 'HEAD');
is($r->{status}, 403, 'HEAD blocked: 403');
is($r->{headers}{'x-optout-status'}, 'blocked', 'HEAD blocked: status header');
is($r->{body_bytes_received}, 0, 'HEAD blocked: no body on the wire');
$r = chk("/check?to=$FREE", _method => 'HEAD');
is($r->{status}, 204, 'HEAD allowed: 204');
is($r->{headers}{'x-optout-status'}, 'allowed', 'HEAD allowed: header');

# ---------------------------------------------------------------- invalid

is_invalid(chk('/check?to=not-a-phone'), 'bad destination', '40001');
is_invalid(chk('/check?to=%2B12'), 'too short phone', '40001');
is_invalid(chk('/check?to='), 'empty to', '40001');
is_invalid(chk('/check'), 'no to', '40001');
is_invalid(chk('/check?to=%2B447700900101&from=AC%21ME'), 'bad sender',
           '40002');
is_invalid(chk('/check?to=%2B447700900101&from=TOOLONGSENDERID'),
           'sender too long', '40002');
is_invalid(chk('/check?to=bad&from=AC%21ME'), 'both bad: destination first',
           '40001');

# ---------------------------------------------------------------- methods

for my $m (qw(PUT DELETE)) {
    $r = $t->request($m, "/check?to=$A", body => 'x',
                     headers => { 'Content-Type' => 'text/plain' });
    is($r->{status}, 405, "$m: 405");
}

# ---------------------------------------------------------------- variables

{
    my @log = $t->file_lines('logs/check.log');
    my $q = sub { quotemeta $_[0] };
    ok((grep { m{^GET 403 st=blocked c=42 sc=account since=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ m=B u=/check\?to=\+447700900101$} } @log),
       'log: blocked account');
    ok((grep { m{^GET 403 st=blocked c=300 sc=sender since=\S+Z m=B u=/check\?to=\+447700900102&from=ACME$} } @log),
       'log: blocked sender');
    ok((grep { m{^GET 403 st=blocked c=99 sc=account since=\Q$since_rt\E m=B } } @log),
       'log: since of the replayed rule');
    ok((grep { m{^GET 204 st=allowed c=-? sc=-? since=-? m=A u=/check\?to=\+447700900199$} } @log),
       'log: allowed, no campaign / scope / since');
    ok((grep { m{^GET 400 st=invalid .* m=I u=/check\?to=not-a-phone$} } @log),
       'log: invalid');
    ok((grep { m{^GET 403 st=unavailable .* m=U u=/check\?to=\+447700900199$} } @log),
       'log: unavailable (not seeded)');
    ok((grep { m{^GET 204 st=unverified .* m=V u=/check-open\?to=\+447700900199$} } @log),
       'log: unverified (fail open)');
    ok((grep { m{^(?:PUT|DELETE) 405 st=-? } } @log),
       'log: 405 has no $optout_status');
    ok(!(grep { / m=X / && !/^(?:PUT|DELETE) 405 / } @log),
       'log: no unknown status')
        or diag join "\n", grep { / m=X / } @log;
}

# ---------------------------------------------------------------- no cache

# control for the write-through test: without optout_cache a rule deleted
# from memcached is gone
my $D0 = '+447700900160';
is($t->post_one_click('/u/' . $t->token(dest => $D0, campaign => 11))
     ->{status}, 200, 'link POST for D0');
is_blocked(chk("/check?to=$D0"), 'D0 blocked right after the POST',
           '11', 'account');
ok($t->mc_delete($t->skey(dest => $D0)), 'D0 rule deleted from memcached');
is_allowed(chk("/check?to=$D0"), 'no optout_cache: deleted rule is gone');

# ---------------------------------------------------------------- frozen

is($t->get('/ping')->{status}, 204, '/ping before the freeze');
$t->memcached_freeze;
ok(wait_stopped(), 'memcached is stopped (every thread in state T)');

my $sock = $t->send_request('GET', "/check-slow?to=$A");
ok($sock, 'check sent to a frozen memcached');
my $sent = time;
my $sel = IO::Select->new($sock);
my (@lat, $in_flight);
for (1 .. 20) {
    last if $sel->can_read(0);
    my $p0 = time;
    my $pr = $t->get('/ping');
    my $dt = time - $p0;
    if (!$sel->can_read(0)) {
        $in_flight++;
        push @lat, [$dt, $pr->{status}];
    }
    sleep 0.03;
}
ok($in_flight, 'at least one /ping while the check waits for memcached');
my @slow = grep { $_->[0] >= 0.400 || $_->[1] != 204 } @lat;
is(scalar @slow, 0,
   '/ping answers 204 within 400 ms (not blocked) while the check waits')
    or diag join ', ', map { sprintf '%.1f ms (%s)', $_->[0] * 1000, $_->[1] }
                       @lat;
diag 'pings while the check waited: '
     . join ', ', map { sprintf '%.1f ms', $_->[0] * 1000 } @lat;
$r = $t->read_response($sock, 10, 'GET');
my $slow_elapsed = time - $sent;
$r->{json} = eval { $JSON->decode($r->{content}) };
is_unavailable($r, 'frozen, optout_check_timeout 800ms');
like($t->error_log,
     qr/\[error\].*memcached did not answer within optout_check_timeout/,
     'frozen: the timeout is logged as such');
cmp_ok($slow_elapsed, '<', 2, 'frozen: the slow check answers within 2 s');

$errs = error_lines();
$r = chk('/check', _port => $t->port('srv'), 'X-To' => $A);
is_unverified($r, 'frozen, server-level fail open', $errs);
cmp_ok($r->{elapsed}, '<', 2, 'frozen, server level: answers within 2 s');
$r = chk("/check?to=$A");
is_unavailable($r, 'frozen, default timeout');
cmp_ok($r->{elapsed}, '<', 2, 'frozen: the check answers within 2 s');
$errs = error_lines();
$r = chk("/check-open?to=$A");
is_unverified($r, 'frozen, fail open', $errs);
cmp_ok($r->{elapsed}, '<', 2, 'frozen, fail open: answers within 2 s');

$t->memcached_thaw;

my $deadline = time + 10;
do { $r = chk("/check?to=$A"); sleep 0.1 if $r->{status} != 403
     || ($r->{headers}{'x-optout-status'} // '') ne 'blocked' }
    until ($r->{headers}{'x-optout-status'} // '') eq 'blocked'
          || time > $deadline;
is_blocked($r, 'after the thaw', '42', 'account');
is_allowed(chk("/check?to=$FREE"), 'after the thaw, no rule');

# ---------------------------------------------------------------- stopped

$t->memcached_stop;
is_unavailable(chk("/check?to=$A"), 'memcached stopped, blocked dest');
is_unavailable(chk("/check?to=$FREE"), 'memcached stopped, free dest');
$errs = error_lines();
is_unverified(chk("/check-open?to=$FREE"), 'memcached stopped, fail open',
              $errs);

# ---------------------------------------------------------------- restarted

# an empty memcached (no marker) must not turn a blocked destination into
# "allowed": neither while libmemcached still counts the server as failed
# (it retries after 1 s) nor once it is connected again
$t->memcached_start;
my $nlog = () = split /\n/, ($t->error_log // '');
my @after;
my $until = time + 2.5;
while (time < $until) {
    push @after, chk("/check?to=$A");
    sleep 0.1;
}
push @after, chk("/check?to=$A");
my @allowed = grep { ($_->{headers}{'x-optout-status'} // '') ne 'unavailable'
                     || $_->{status} != 403 } @after;
is(scalar @allowed, 0, 'empty memcached: A always unavailable / 403')
    or diag join ', ', map { "$_->{status} "
        . ($_->{headers}{'x-optout-status'} // '-') } @after;
is_unavailable($after[-1], 'empty memcached (no marker)');
is_unavailable(chk("/check?to=$FREE"), 'empty memcached, free dest');
{
    my @all = split /\n/, ($t->error_log // '');
    my @new = @all[$nlog .. $#all];
    ok((grep { /marker missing|not seeded/ } @new),
       'empty memcached: unavailable because the marker is missing')
        or diag join "\n", grep { /optout/ } @new;
}

# reseed from the module's own journal
($rc, $out) = ctl_store('replay', $t->path('journal.log'));
is($rc, 0, 'replay of the journal after the restart') or diag $out;
my @re;
$until = time + 5;
do { push @re, chk("/check?to=$A"); sleep 0.1 }
    until ($re[-1]{headers}{'x-optout-status'} // '') eq 'blocked'
          || time > $until;
is(scalar(grep { $_->{status} == 204 } @re), 0,
   'reseeding: A never allowed');
is_blocked($re[-1], 'reseeded: A blocked again', '42', 'account');
is_blocked(chk("/check?to=$S&from=ACME"), 'reseeded: S blocked for ACME',
           '300', 'sender');
is_allowed(chk("/check?to=$FREE"), 'reseeded: free dest allowed');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

# ---------------------------------------------------------------- cache

{
    my $c = OptoutTest->new(workers => 2);
    $c->setup(workers => 2, http => 'optout_cache zone=oc:1m blocked=10m;',
              server => 'location = /check { optout_check; }');
    $c->write_file('empty.journal', '');
    my ($crc, $cout) = $c->ctl('replay', '--store',
        '--SERVER=127.0.0.1:' . $c->mc_port, '--store-secret',
        $c->path('store.key'), $c->path('empty.journal'));
    is($crc, 0, 'cache: store seeded') or diag $cout;

    my $cchk = sub {
        my $cr = $c->get($_[0]);
        $cr->{json} = eval { $JSON->decode($cr->{content}) }
            if length $cr->{content};
        return $cr;
    };

    my $D = '+447700900170';
    is_allowed($cchk->("/check?to=$D"), 'cache: D allowed before the POST');
    is($c->post_one_click('/u/' . $c->token(dest => $D, campaign => 12))
         ->{status}, 200, 'cache: link POST for D');
    ok($c->mc_delete($c->skey(dest => $D)),
       'cache: D rule deleted from memcached right after the POST');
    # two workers, Connection: close: several checks hit both workers
    for my $i (1 .. 4) {
        is_blocked($cchk->("/check?to=$D"), "cache: D blocked ($i)", '12',
                   'account');
    }

    # sender rule through the cache
    my $DS = '+447700900171';
    is($c->post_one_click('/u/' . $c->token(dest => $DS, campaign => 13,
                                            sender => 'ACME'))->{status},
       200, 'cache: link POST for DS (ACME)');
    ok($c->mc_delete($c->skey(dest => $DS, sender => 'ACME')),
       'cache: DS rule deleted from memcached');
    is_blocked($cchk->("/check?to=$DS&from=ACME"), 'cache: DS blocked for ACME',
               '13', 'sender');
    is_allowed($cchk->("/check?to=$DS&from=OTHER"), 'cache: DS OTHER allowed');

    # allowed answers are not cached by default: a rule set behind the
    # module's back is seen at once
    my $F = '+447700900172';
    is_allowed($cchk->("/check?to=$F"), 'cache: F allowed');
    ok($c->mc_set($c->skey(dest => $F), "1 77 $rt api sms 0"),
       'cache: F rule set directly in memcached');
    is_blocked($cchk->("/check?to=$F"), 'cache: allowed not cached by default',
               '77', 'account', $since_rt);

    $c->stop;
    ok($c->error_log_clean, 'cache: no alert/crit/emerg in error.log');
}

done_testing;
