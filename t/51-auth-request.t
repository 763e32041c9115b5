#!/usr/bin/perl

# optout_check behind auth_request: a send API (POST /v1/messages) proxies
# allowed sends to a real upstream (another server of the same nginx that
# logs every request) and answers blocked / unavailable sends with a JSON
# 403 from error_page; those never reach the upstream.  The variables of
# the check reach the main request through auth_request_set.
#
# Part 1 uses a configuration written here; part 2 runs
# conf-examples/gateway.conf itself (ports, paths and the upstream address
# substituted).

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
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8;

my $A    = '+447700900201';     # account-wide rule, campaign 42
my $S    = '+447700900202';     # rule for sender ACME, campaign 300
my $FREE = '+447700900299';     # no rule
my $S2   = '+447700900203';     # rule for sender "ACME CO" (gateway)

sub decode {
    my ($r) = @_;
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if length($r->{content} // '');
    my $j = $r->{json};
    $r->{err} = (ref $j eq 'HASH' && ref $j->{errors} eq 'ARRAY'
                 && ref $j->{errors}[0] eq 'HASH') ? $j->{errors}[0] : {};
    return $r;
}

# send($t, $query, %headers): POST /v1/messages with a small JSON body
sub send_msg {
    my ($t, $query, %h) = @_;
    my $path = '/v1/messages' . (defined $query ? "?$query" : '');
    return decode($t->request('POST', $path, body => '{"text":"hello"}',
        headers => { 'Content-Type' => 'application/json', %h }));
}

# the upstream logs a request after answering it: count once the log has
# not grown for 200 ms (at most 3 s), so a line still being written is in
sub upstream_count {
    my ($t) = @_;
    my $n = scalar(my @l = $t->file_lines('logs/upstream.log'));
    my $deadline = time + 3;
    while (time < $deadline) {
        sleep 0.2;
        my $m = scalar(@l = $t->file_lines('logs/upstream.log'));
        last if $m == $n;
        $n = $m;
    }
    return $n;
}

sub sent_ok {
    my ($t, $r, $what) = @_;
    my $ok = is($r->{status}, 202, "$what: 202 from the upstream");
    $ok &= is($r->{content}, "sent\n", "$what: upstream body");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

sub refused {
    my ($t, $r, $what, $code, $campaign, $scope) = @_;
    my $ok = is($r->{status}, 403, "$what: 403");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: JSON");
    $ok &= is($r->{err}{code}, $code, "$what: code $code");
    if (defined $campaign) {
        $ok &= is($r->{err}{campaign}, $campaign, "$what: campaign");
        $ok &= is($r->{err}{scope}, $scope, "$what: scope");
        $ok &= like($r->{err}{since} // '',
                    qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/, "$what: since");
    }
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

# 400 from the gateway: the check's code, in JSON, never proxied
sub invalid {
    my ($t, $r, $what, $code) = @_;
    my $ok = is($r->{status}, 400, "$what: 400");
    $ok &= like($r->{headers}{'content-type'} // '',
                qr{^application/json\b}, "$what: JSON");
    $ok &= is($r->{err}{code}, $code, "$what: code $code");
    $ok &= is($r->{headers}{'x-optout-status'}, 'invalid',
              "$what: X-Optout-Status invalid");
    diag "answer: $r->{status} $r->{content}" unless $ok;
    return $ok;
}

sub seed {
    my ($t, $secret) = @_;
    $t->write_file('empty.journal', '');
    my ($rc, $out) = $t->ctl('replay', '--store',
        '--SERVER=127.0.0.1:' . $t->mc_port, '--store-secret', $secret,
        $t->path('empty.journal'));
    is($rc, 0, 'store seeded (replay of an empty journal)') or diag $out;
}

my $rt = 1795424400;

# ================================================================ part 1

{
    my $t = OptoutTest->new(workers => 1);
    $t->setup(http => <<'EOF', server => <<'EOF');
    log_format up '$request_method $request_uri st=$http_x_optout_status';
    log_format api '$request_method $status o=$o_status c=$o_campaign '
                   'sc=$o_scope';
    upstream sms_backend {
        server 127.0.0.1:%%PORT:up%%;
        keepalive 8;
    }
    map $request_uri $send_arg_to   { "~[?&]to=([^&]*)"   $1; default ""; }
    map $request_uri $send_arg_from { "~[?&]from=([^&]*)" $1; default ""; }
    map $http_x_to   $send_to   { "" $send_arg_to;   default $http_x_to; }
    map $http_x_from $send_from { "" $send_arg_from; default $http_x_from; }
    map $o_status $o_code { blocked 40300; default 40301; }
    server {
        listen 127.0.0.1:%%PORT:up%%;
        access_log %%PREFIX%%/logs/upstream.log up;
        location / { return 202 "sent\n"; }
    }
EOF
        location = /v1/messages {
            auth_request /_optout;
            auth_request_set $o_status $optout_status;
            auth_request_set $o_campaign $optout_campaign;
            auth_request_set $o_scope $optout_scope;
            auth_request_set $o_since $optout_since;
            error_page 403 = @blocked;
            proxy_set_header X-Optout-Status $o_status;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://sms_backend;
            access_log %%PREFIX%%/logs/api.log api;
        }
        location = /_optout {
            internal;
            optout_check;
            optout_check_destination $send_to;
            optout_check_sender $send_from;
        }
        # $arg_to in the subrequest: the auth_request subrequest has no
        # query string of its own
        location = /v1/args {
            auth_request /_optout_args;
            error_page 403 = @blocked;
            proxy_pass http://sms_backend;
        }
        location = /_optout_args {
            internal;
            optout_check;
            optout_check_destination $arg_to;
        }
        # fail open: an unverified send goes out, and the backend is told
        location = /v1/open {
            auth_request /_optout_open;
            auth_request_set $o_status $optout_status;
            error_page 403 = @blocked;
            proxy_set_header X-Optout-Status $o_status;
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://sms_backend;
        }
        location = /_optout_open {
            internal;
            optout_check;
            optout_check_fail open;
            optout_check_destination $send_to;
        }
        location @blocked {
            access_log %%PREFIX%%/logs/api.log api;
            default_type application/json;
            add_header X-Optout-Status $o_status always;
            return 403 '{"errors":[{"code":"$o_code","campaign":"$o_campaign","since":"$o_since","scope":"$o_scope"}]}';
        }
EOF

    seed($t, $t->path('store.key'));
    is($t->post_one_click('/u/' . $t->token(dest => $A, campaign => 42))
         ->{status}, 200, 'link POST: account rule for A');
    is($t->post_one_click('/u/' . $t->token(dest => $S, campaign => 300,
                                            sender => 'ACME'))->{status},
       200, 'link POST: ACME rule for S');

    my $n = upstream_count($t);
    my $r = send_msg($t, "to=%2B447700900299&from=ACME");
    sent_ok($t, $r, 'allowed send');
    is(upstream_count($t), $n + 1, 'allowed send reached the upstream');
    like(($t->file_lines('logs/upstream.log'))[-1] // '',
         qr{^POST /v1/messages\?to=%2B447700900299&from=ACME st=allowed$},
         'upstream got the POST and X-Optout-Status: allowed');
    $n = upstream_count($t);

    $r = send_msg($t, 'to=%2B447700900201');
    refused($t, $r, 'blocked send (account)', '40300', '42', 'account');
    is($r->{headers}{'x-optout-status'}, 'blocked',
       'blocked send: auth_request_set $o_status');
    $r = send_msg($t, 'to=%2B447700900201&from=OTHER');
    refused($t, $r, 'blocked send (account, OTHER)', '40300', '42',
            'account');
    $r = send_msg($t, undef, 'X-To' => $S, 'X-From' => 'acme');
    refused($t, $r, 'blocked send (sender, headers)', '40300', '300',
            'sender');
    is(upstream_count($t), $n, 'blocked sends never reached the upstream');

    $r = send_msg($t, 'to=%2B447700900202&from=OTHER');
    sent_ok($t, $r, 'sender rule, OTHER sender');
    $r = send_msg($t, 'to=%2B447700900201', 'X-To' => $FREE);
    sent_ok($t, $r, 'X-To header preferred to the to argument');
    is(upstream_count($t), $n + 2, 'both reached the upstream');
    $n = upstream_count($t);

    $r = send_msg($t, 'to=not-a-number');
    isnt($r->{status}, 202, 'invalid destination: not sent')
        or diag "answer: $r->{status} $r->{content}";
    ok($r->{status} == 400 || $r->{status} == 500,
       'invalid destination: 400, or 500 (auth_request passes 400 as 500)')
        or diag "answer: $r->{status} $r->{content}";
    is(upstream_count($t), $n, 'invalid destination: not at the upstream');

    # does the subrequest see the parent's arguments?
    $r = decode($t->request('POST', '/v1/args?to=%2B447700900201',
                            body => 'x'));
    is($r->{status}, 500,
       '$arg_to in an auth_request subrequest is empty (invalid -> 500)')
        or diag "answer: $r->{status} $r->{content}";
    is(upstream_count($t), $n, '$arg_to: not at the upstream');

    my @api = $t->file_lines('logs/api.log');
    ok((grep { /^POST 202 o=allowed c=-? sc=-?$/ } @api),
       'api log: allowed via auth_request_set') or diag join "\n", @api;
    ok((grep { /^POST 403 o=blocked c=42 sc=account$/ } @api),
       'api log: blocked account via auth_request_set');
    ok((grep { /^POST 403 o=blocked c=300 sc=sender$/ } @api),
       'api log: blocked sender via auth_request_set');

    # unavailable store: fail closed, never sent
    $t->memcached_stop;
    $r = send_msg($t, 'to=%2B447700900299');
    refused($t, $r, 'memcached down', '40301');
    is($r->{headers}{'x-optout-status'}, 'unavailable',
       'memcached down: $o_status unavailable');
    is(upstream_count($t), $n, 'memcached down: not at the upstream');
    $r = decode($t->request('POST', '/v1/open?to=%2B447700900201',
                            body => 'x'));
    sent_ok($t, $r, 'memcached down, fail open: sent');
    like(($t->file_lines('logs/upstream.log'))[-1] // '',
         qr{^POST /v1/open\?to=%2B447700900201 st=unverified$},
         'fail open: the upstream got X-Optout-Status: unverified');
    is(upstream_count($t), $n + 1, 'fail open: one send at the upstream');
    $n = upstream_count($t);

    $t->memcached_start;     # empty: no marker
    $r = send_msg($t, 'to=%2B447700900201');
    refused($t, $r, 'empty memcached, blocked dest', '40301');
    $r = send_msg($t, 'to=%2B447700900299');
    refused($t, $r, 'empty memcached, free dest', '40301');
    is(upstream_count($t), $n, 'not seeded: not at the upstream');

    my ($rc, $out) = $t->ctl('replay', '--store',
        '--SERVER=127.0.0.1:' . $t->mc_port, '--store-secret',
        $t->path('store.key'), $t->path('journal.log'));
    is($rc, 0, 'reseeded from the journal') or diag $out;
    # libmemcached retries a failed server after 1 s
    my $until = time + 5;
    do { $r = send_msg($t, 'to=%2B447700900201'); sleep 0.1 }
        until ($r->{err}{code} // '') ne '40301' || time > $until;
    refused($t, $r, 'reseeded, A', '40300', '42', 'account');
    sent_ok($t, send_msg($t, 'to=%2B447700900299'), 'reseeded, free dest');
    is(upstream_count($t), $n + 1, 'reseeded: one more at the upstream');

    $t->stop;
    ok($t->error_log_clean, 'no alert/crit/emerg in error.log');
}

# ================================================================ part 2

{
    my $g = OptoutTest->new(workers => 2);
    $g->memcached_start;
    my $p = $g->prefix;
    make_path("$p/conf/keys", "$p/tmp");
    chmod 0755, "$p/conf/keys", "$p/tmp";
    my $secret_path = $g->key('conf/keys/store');
    my $secret = $g->key_bytes('conf/keys/store');

    open my $fh, '<', "$OptoutTest::ROOT/conf-examples/gateway.conf"
        or die "gateway.conf: $!";
    my $conf = do { local $/; <$fh> };
    close $fh;

    my $root = $OptoutTest::ROOT;
    my ($port, $up, $mc) = ($g->port('nginx'), $g->port('up'), $g->mc_port);
    my $ok = 1;
    $ok &&= $conf =~ s{^load_module\s+modules/}{load_module $root/build/}m;
    $ok &&= $conf =~ s{^(\s*pid\s+)\S+;}{${1}logs/nginx.pid;}m;
    $ok &&= $conf =~ s{^(\s*worker_processes\s+)\S+;}{${1}2;}m;
    # error.log where the harness looks for [alert] / [crit] / [emerg]
    $ok &&= $conf =~ s{^(\s*error_log\s+)\S+}{${1}logs/error.log}m;
    $ok &&= $conf =~ s{/var/log/nginx/}{$p/logs/}g;
    $ok &&= $conf =~ s{^(\s*listen\s+)\S+;}{${1}127.0.0.1:$port;}m;
    $ok &&= $conf =~ s{127\.0\.0\.1:11211}{127.0.0.1:$mc}g;
    $ok &&= $conf =~ s{(server\s+)127\.0\.0\.1:9000\b}{${1}127.0.0.1:$up};
    # the backend: one more server in the same nginx, logging every request
    my $backend = <<"EOF";
    log_format up '\$request_method \$request_uri st=\$http_x_optout_status';
    server {
        listen 127.0.0.1:$up;
        access_log $p/logs/upstream.log up;
        location / { return 202 "sent\\n"; }
    }
}
EOF
    $ok &&= $conf =~ s/\}\s*\z/$backend/;
    ok($ok, 'gateway.conf: every substitution applied');
    (my $directives = $conf) =~ s/^\s*#.*$//mg;
    unlike($directives, qr{/var/|/run/|:9000\b|:11211\b|:8080\b},
           'gateway.conf: no system path or default port left');
    $g->write_file('conf/nginx.conf', $conf);
    $g->start;

    seed($g, $secret_path);
    my $skey = sub { OptoutTest::store_key(secret => $secret, @_) };
    ok($g->mc_set($skey->(dest => $A), "1 42 $rt api sms 0"),
       'gateway: account rule for A');
    ok($g->mc_set($skey->(dest => $S, sender => 'ACME'),
                  "1 300 $rt api sms 0"), 'gateway: ACME rule for S');

    my $n = upstream_count($g);
    my $r = send_msg($g, 'to=%2B447700900299&from=ACME');
    sent_ok($g, $r, 'gateway: allowed (arguments)');
    like(($g->file_lines('logs/upstream.log'))[-1] // '',
         qr{^POST /v1/messages\?to=%2B447700900299&from=ACME st=allowed$},
         'gateway: upstream got X-Optout-Status: allowed');
    $r = send_msg($g, undef, 'X-To' => $FREE, 'X-From' => 'ACME');
    sent_ok($g, $r, 'gateway: allowed (headers)');
    $r = send_msg($g, 'to=%2B447700900299&from=ACME+CO');
    sent_ok($g, $r, 'gateway: allowed (form-encoded sender ACME+CO)');
    is(upstream_count($g), $n + 3, 'gateway: three sends at the upstream');
    $n = upstream_count($g);

    $r = send_msg($g, 'to=%2B447700900201');
    refused($g, $r, 'gateway: blocked (argument)', '40300', '42', 'account');
    is($r->{err}{title}, 'Blocked due to opt-out', 'gateway: title');
    is($r->{headers}{'x-optout-status'}, 'blocked', 'gateway: status header');
    is($r->{headers}{'x-optout-campaign'}, '42', 'gateway: campaign header');
    $r = send_msg($g, undef, 'X-To' => $A);
    refused($g, $r, 'gateway: blocked (header)', '40300', '42', 'account');
    $r = send_msg($g, 'to=%2B447700900202', 'X-From' => 'acme');
    refused($g, $r, 'gateway: blocked sender (arg to, header from)',
            '40300', '300', 'sender');
    is(upstream_count($g), $n, 'gateway: blocked sends never reach the upstream');

    # the + rule: a leading + is the + of the number, any other + in a
    # query argument is the space a form encoder wrote; in a header a +
    # is a +
    ok($g->mc_set($skey->(dest => $S2, sender => 'ACME CO'),
                  "1 301 $rt api sms 0"), 'gateway: "ACME CO" rule for S2');
    $r = send_msg($g, 'to=+447700900201');
    refused($g, $r, 'gateway: blocked (raw leading + in to)', '40300', '42',
            'account');
    $r = send_msg($g, 'to=%2B447700900203&from=ACME+CO');
    refused($g, $r, 'gateway: blocked (from=ACME+CO is "ACME CO")',
            '40300', '301', 'sender');
    $r = send_msg($g, 'to=%2B447700900203&from=acme%20co');
    refused($g, $r, 'gateway: blocked (from=acme%20co)', '40300', '301',
            'sender');
    $r = send_msg($g, 'to=%2B447700900203', 'X-From' => 'ACME CO');
    refused($g, $r, 'gateway: blocked (X-From: ACME CO)', '40300', '301',
            'sender');
    $r = send_msg($g, 'to=%2B447700900203&from=ACME%2BCO');
    invalid($g, $r, 'gateway: from=ACME%2BCO is "ACME+CO"', '40002');
    $r = send_msg($g, 'to=%2B447700900203', 'X-From' => 'ACME+CO');
    invalid($g, $r, 'gateway: X-From: ACME+CO is "ACME+CO"', '40002');
    is(upstream_count($g), $n, 'gateway: none of these reached the upstream');

    # polluted requests: what is checked must be all the backend can read.
    # Each one is 400 with its code and never reaches the upstream, with
    # the free number first or second.
    my $F = '%2B447700900299';
    my $B = '%2B447700900201';
    my @polluted = (
        [ 'two to (free first)',       "to=$F&to=$B",        {}, '40005' ],
        [ 'two to (blocked first)',    "to=$B&to=$F",        {}, '40005' ],
        [ 'two equal to',              "to=$F&to=$F",        {}, '40005' ],
        [ 'empty to, then to',         "to=&to=$B",          {}, '40005' ],
        [ 'to, then bare to',          "to=$F&to",           {}, '40005' ],
        [ 'to and TO',                 "to=$F&TO=$B",        {}, '40005' ],
        [ 'to and %74o',               "to=$F&%74o=$B",      {}, '40005' ],
        [ 'to and to[]',               "to=$F&to[]=$B",      {}, '40005' ],
        [ 'to;to',                     "to=$F;to=$B",        {}, '40005' ],
        [ 'X-To and to',               "to=$B", { 'X-To' => $FREE }, '40005' ],
        [ 'X-To and to (same)',        "to=$F", { 'X-To' => $FREE }, '40005' ],
        [ 'two X-To',                  undef, { 'X-To' => [$FREE, $A] },
          '40005' ],
        [ 'two from',                  "to=$F&from=OTHER&from=ACME", {},
          '40006' ],
        [ 'from and FROM',             "to=$F&from=OTHER&FROM=ACME", {},
          '40006' ],
        [ 'X-From and from',           "to=$F&from=OTHER",
          { 'X-From' => 'ACME' }, '40006' ],
        [ 'two X-From',                "to=$F",
          { 'X-From' => ['OTHER', 'ACME'] }, '40006' ],
    );

    for my $c (@polluted) {
        my ($what, $q, $h, $code) = @$c;
        invalid($g, send_msg($g, $q, %$h), "gateway: polluted: $what",
                $code);
    }

    is(upstream_count($g), $n,
       'gateway: no polluted request reached the upstream');
    my @upl = $g->file_lines('logs/upstream.log');
    ok(!(grep { /447700900201|447700900203/ } @upl),
       'gateway: the upstream never saw a blocked number')
        or diag join "\n", @upl;
    $r = send_msg($g, 'to=%2B447700900202&from=OTHER');
    sent_ok($g, $r, 'gateway: sender rule, OTHER sender');
    $n = upstream_count($g);

    $r = $g->get('/v1/messages?to=%2B447700900299');
    is($r->{status}, 405, 'gateway: GET /v1/messages is 405');
    $r = send_msg($g, 'to=nonsense');
    invalid($g, $r, 'gateway: invalid destination', '40001');
    is(upstream_count($g), $n, 'gateway: invalid: not at the upstream');
    is($g->get('/healthz')->{status}, 204, 'gateway: /healthz');

    my @cl = $g->file_lines('logs/gateway-check.log');
    ok((grep { /\] blocked campaign=42 scope=account since=\S+Z rt=/ } @cl),
       'gateway: check log has $optout_status blocked')
        or diag join "\n", @cl;
    ok((grep { /\] allowed campaign=-? scope=-? since=-? rt=/ } @cl),
       'gateway: check log has $optout_status allowed');
    my @al = $g->file_lines('logs/gateway-access.log');
    ok((grep { m{"POST /v1/messages" 403 optout=blocked campaign=42 scope=account } } @al),
       'gateway: access log with the answer of the check')
        or diag join "\n", @al;
    ok((grep { m{"POST /v1/messages" 202 optout=allowed } } @al),
       'gateway: access log, allowed send');
    ok(!(grep { /447700900/ } @al, @cl),
       'gateway: no destination in the logs');

    $g->memcached_stop;
    $r = send_msg($g, 'to=%2B447700900299');
    refused($g, $r, 'gateway: memcached down', '40301');
    is($r->{headers}{'x-optout-status'}, 'unavailable',
       'gateway: memcached down: unavailable');
    is(upstream_count($g), $n, 'gateway: unavailable: not at the upstream');

    $g->stop;
    like($g->error_log // '', qr/auth request unexpected status: 400/,
         'gateway: error.log names the 400 that became 500');
    ok($g->error_log_clean, 'gateway: no alert/crit/emerg in error.log');
}

done_testing;
