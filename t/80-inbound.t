#!/usr/bin/perl

# The inbound keyword location (optout_inbound): STOP and START from
# inbound-message webhooks record through the same journal, store and
# cache as links, the check on the same node answers at once; repeated
# keywords are journaled without a second confirmation; HELP and other
# messages record nothing; memcached down during a STOP, then replay;
# the application behind (proxy_pass in the same location, or mirror)
# receives every message with its body and the action taken; malformed,
# oversized and non-POST requests; configuration errors at nginx -t.
# Signatures and the keyword tables are t/81 and t/82.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $JSON = JSON::PP->new->utf8->canonical;

my $t = OptoutTest->new(workers => 1);

my $STOP_REPLY = 'You are unsubscribed and will receive no more messages '
    . 'from us. Reply START to subscribe again.';
my $START_REPLY = 'You are subscribed again and will receive messages from '
    . 'us. Reply STOP to unsubscribe.';
my $HELP_REPLY = 'Reply STOP to unsubscribe, START to subscribe again.';

my $IN = 'optout_inbound; optout_inbound_verify off; '
    . 'access_log %%PREFIX%%/logs/in.log inbound;';

$t->setup(
    http => <<'EOF',
    log_format inbound escape=json
        '$uri $status a=$optout_keyword_action k=$optout_keyword '
        'r=$optout_reply';
    log_format app escape=json
        '$uri a=$http_x_optout_action b=$request_body';

    # the operator's application: logs what it receives
    server {
        listen 127.0.0.1:%%PORT:app%%;
        access_log %%PREFIX%%/logs/app.log app;
        client_body_buffer_size 64k;
        location / { proxy_pass http://127.0.0.1:%%PORT:sink%%; }
    }
    server {
        listen 127.0.0.1:%%PORT:sink%%;
        access_log off;
        location / { return 200 "app\n"; }
    }
EOF
    server => <<"EOF");
        location = /check { optout_check; }
        location = /metrics { optout_metrics; }
        location /in/ { $IN }
        location /sender/ { $IN optout_inbound_scope sender; }
        location /if/ { $IN if (\$arg_x) { set \$y 1; } }
        location /twilio/ { $IN optout_inbound_format twilio; }
        location /infobip/ { $IN optout_inbound_format infobip; }
        location /proxy/ {
            $IN
            proxy_set_header X-Optout-Action \$optout_keyword_action;
            proxy_request_buffering off;
            proxy_pass http://127.0.0.1:%%PORT:app%%/app/;
        }
        location /mirror/ { $IN mirror /m; }
        location = /m {
            internal;
            proxy_set_header X-Optout-Action \$optout_keyword_action;
            proxy_pass http://127.0.0.1:%%PORT:app%%/mirrored;
        }
        location /max/ { $IN client_max_body_size 200; }
        location /buf/ {
            $IN client_body_buffer_size 1k; client_max_body_size 1m;
        }
EOF

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub scrape {
    my %m;
    for (split /\n/, $t->get('/metrics')->{content} // '') {
        $m{$1} = $2 if /^(optout_keyword_\S+)\s+(\d+)$/;
    }
    return \%m;
}

my $m0 = scrape();

my $seq = 0;
sub phone { sprintf '+4477009%05d', ++$seq }

sub post {
    my ($path, $body, $ct) = @_;
    my $r = $t->request('POST', $path, body => $body,
                        headers => { 'Content-Type'
                                     => $ct // 'application/json' });
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if ($r->{headers}{'content-type'} // '') =~ /json/;
    $r->{code} = ref $r->{json} eq 'HASH' && $r->{json}{errors}
                 ? $r->{json}{errors}[0]{code} : '';
    return $r;
}

sub msg {
    my ($path, $from, $text, $to) = @_;
    return post($path, $JSON->encode({ from => $from,
                                       to => $to // '+15005550006',
                                       text => $text }));
}

sub check {
    my ($dest, $sender) = @_;
    my $q = '?to=' . OptoutTest::_urlenc($dest);
    $q .= '&from=' . OptoutTest::_urlenc($sender) if defined $sender;
    my $r = $t->get("/check$q");
    return $r->{status} . ' ' . ($r->{headers}{'x-optout-status'} // '-');
}

# after a memcached restart, until the store answers again
sub check_settled {
    my $deadline = time + 15;
    my $s;
    while (time < $deadline) {
        $s = check(@_);
        last unless $s =~ /unavailable/;
        sleep 0.2;
    }
    return $s;
}

sub jcount { scalar(my @l = $t->journal_for($_[0])) }

# the access log is written once the answer went out
sub last_in {
    my $deadline = time + 5;
    my @l;
    while (time < $deadline) {
        @l = $t->file_lines('logs/in.log');
        last if @l > $_[0];
        sleep 0.05;
    }
    return $l[-1] // '';
}

# ---------------------------------------------------------------- STOP, START

my $A = phone();
is(check($A), '204 allowed', 'no rule yet');

my $n = scalar(my @x = $t->file_lines('logs/in.log'));
my $r = msg('/in/', $A, 'STOP');
is($r->{status}, 200, 'STOP: 200');
is_deeply($r->{json}, { action => 'stop', keyword => 'STOP',
                        reply => $STOP_REPLY }, 'STOP: action and reply');
is($r->{headers}{'x-optout-action'}, 'stop', 'STOP: X-Optout-Action');
is(last_in($n), "/in/ 200 a=stop k=STOP r=$STOP_REPLY",
   'STOP: the variables');
is(check($A), '403 blocked', 'check on this node: blocked at once');
like($t->mc_get($t->skey(dest => $A)) // '', qr/^1 0 \d+ keyword sms 0$/,
     'the rule is in memcached: source keyword, channel sms');

my @j = $t->journal_for($A);
is(scalar @j, 1, 'STOP: one journal line');
is($j[0]{action}, 'optout', 'journal: optout');
is($j[0]{source}, 'keyword', 'journal: source keyword');
is($j[0]{keyword}, 'STOP', 'journal: the keyword');
ok(!exists $j[0]{sender}, 'journal: account-wide');

# repeated STOP: journaled, no second confirmation

$n = scalar(@x = $t->file_lines('logs/in.log'));
$r = msg('/in/', $A, ' stop! ');
is($r->{status}, 200, 'STOP again: 200');
is_deeply($r->{json}, { action => 'stop', keyword => 'STOP', reply => undef },
          'STOP again: no reply');
is(last_in($n), '/in/ 200 a=stop k=STOP r=',
   'STOP again: $optout_reply empty');
is(jcount($A), 2, 'STOP again: journaled');
is(check($A), '403 blocked', 'still blocked');

# START, then START again

$r = msg('/in/', $A, 'Start');
is($r->{status}, 200, 'START: 200');
is_deeply($r->{json}, { action => 'start', keyword => 'START',
                        reply => $START_REPLY }, 'START: reply');
is(check($A), '204 allowed', 'check after START: allowed at once');
is($t->mc_get($t->skey(dest => $A)), undef, 'the rule left memcached');
@j = $t->journal_for($A);
is(scalar @j, 3, 'START: journaled');
is($j[2]{action}, 'optin', 'journal: optin');
is($j[2]{keyword}, 'START', 'journal: START');

$r = msg('/in/', $A, 'START');
is_deeply($r->{json}, { action => 'start', keyword => 'START',
                        reply => undef },
          'START on an allowed number: no reply');
is(jcount($A), 4, 'START again: journaled');
is(check($A), '204 allowed', 'still allowed');

# an opt-out the API recorded counts as blocked too

# an "if" block inside the location acts as the location does

my $I = phone();
$r = msg('/if/?x=1', $I, 'STOP');
is("$r->{status} " . ($r->{json}{action} // '-'), '200 stop',
   'inside "if": STOP acted upon');
is(check($I), '403 blocked', 'inside "if": blocked');

# ---------------------------------------------------------------- HELP, other

my $B = phone();
my $lines = $t->journal_count;
$r = msg('/in/', $B, 'help');
is($r->{status}, 200, 'HELP: 200');
is_deeply($r->{json}, { action => 'help', keyword => 'HELP',
                        reply => $HELP_REPLY }, 'HELP: reply');
$r = msg('/in/', $B, 'help');
is($r->{json}{reply}, $HELP_REPLY, 'HELP again: the reply again');
$r = msg('/in/', $B, 'Please do not stop');
is($r->{status}, 200, 'no keyword: 200');
is_deeply($r->{json}, { action => undef, keyword => undef, reply => undef },
          'no keyword: all null');
ok(!exists $r->{headers}{'x-optout-action'}, 'no keyword: no header');
is($t->journal_count, $lines, 'HELP and other messages: nothing journaled');
is(check($B), '204 allowed', 'HELP: not blocked');

# ---------------------------------------------------------------- scope

my $C = phone();
$r = msg('/sender/', $C, 'STOP', '+15005550006');
is($r->{status}, 200, 'sender scope: STOP 200');
is(check($C, '+15005550006'), '403 blocked',
   'sender scope: that sender blocked');
is(check($C, '+15005550007'), '204 allowed',
   'sender scope: another sender allowed');
is(check($C), '204 allowed', 'sender scope: no account-wide rule');
@j = $t->journal_for($C);
is($j[0]{sender}, '+15005550006', 'sender scope: journal sender');
$r = msg('/sender/', $C, 'STOP', '+15005550007');
is($r->{json}{reply}, $STOP_REPLY, 'sender scope: the other sender confirms');
$r = msg('/sender/', $C, 'STOP', 'not a sender!');
is("$r->{status} $r->{code}", '400 40002', 'sender scope: invalid to');

$r = msg('/in/', 'alice@example.com', 'STOP');
is("$r->{status} $r->{code}", '400 40001', 'STOP from an email: 400 40001');

# ---------------------------------------------------------------- formats

my $D = phone();
(my $De = $D) =~ s/\+/%2B/;
$r = post('/twilio/', "From=$De&To=%2B15005550006&Body=Stop&MessageSid=SM1",
          'application/x-www-form-urlencoded');
is($r->{status}, 200, 'Twilio: 200');
is($r->{headers}{'content-type'}, 'text/xml', 'Twilio: text/xml');
is($r->{content}, qq{<?xml version="1.0" encoding="UTF-8"?><Response>}
   . "<Message>$STOP_REPLY</Message></Response>\n",
   'Twilio: TwiML with the reply');
is(check($D), '403 blocked', 'Twilio: blocked');
$r = post('/twilio/', "From=$De&To=%2B15005550006&Body=Stop",
          'application/x-www-form-urlencoded');
is($r->{content}, qq{<?xml version="1.0" encoding="UTF-8"?><Response/>\n},
   'Twilio: repeated STOP, empty TwiML')
    or diag $r->{content};

my ($E, $F) = (phone(), phone());
(my $Ed = $E) =~ s/^\+//;
(my $Fd = $F) =~ s/^\+//;
$lines = $t->journal_count;
$r = post('/infobip/', $JSON->encode({ results => [
        { from => $Ed, to => '447491163443', text => 'STOP',
          messageId => 'a' },
        { from => $Fd, to => '447491163443', text => 'unsubscribe',
          messageId => 'b' },
        { from => $Fd, to => '447491163443', text => 'hello',
          messageId => 'c' } ],
    messageCount => 3, pendingMessageCount => 0 }));
is($r->{status}, 200, 'Infobip, 3 messages: 200');
is_deeply($r->{json}, { results => [
        { action => 'stop', keyword => 'STOP', reply => $STOP_REPLY },
        { action => 'stop', keyword => 'UNSUBSCRIBE', reply => $STOP_REPLY },
        { action => undef, keyword => undef, reply => undef } ] },
    'Infobip: one result per message');
is($t->journal_count, $lines + 2, 'Infobip: two journal lines');
is(check($E) . ', ' . check($F), '403 blocked, 403 blocked',
   'Infobip: both blocked');

# ---------------------------------------------------------------- the app

sub app_lines {
    my ($want) = @_;
    my $deadline = time + 10;
    my @l;
    while (time < $deadline) {
        @l = $t->file_lines('logs/app.log');
        last if @l >= $want;
        sleep 0.05;
    }
    return @l;
}

my $G = phone();
my @bodies = ($JSON->encode({ from => $G, to => '+15005550006',
                              text => 'STOP' }),
              $JSON->encode({ from => $G, to => '+15005550006',
                              text => 'Hello there' }));
my $app = 0;
for my $b (@bodies) {
    $r = post('/proxy/', $b);
    is("$r->{status} $r->{content}", "200 app\n",
       'proxy_pass: the app answers');
}
my @app = app_lines($app + 2);
(my $be0 = $bodies[0]) =~ s/"/\\"/g;
(my $be1 = $bodies[1]) =~ s/"/\\"/g;
is($app[0], "/app/ a=stop b=$be0", 'proxy_pass: STOP reached the app, '
   . 'body intact, X-Optout-Action: stop');
is($app[1], "/app/ a= b=$be1", 'proxy_pass: a plain message reached it too');
is(check($G), '403 blocked', 'proxy_pass: the STOP was recorded');
$app += 2;

my $H = phone();
@bodies = ($JSON->encode({ from => $H, to => '+15005550006', text => 'STOP' }),
           $JSON->encode({ from => $H, to => '+15005550006', text => 'Hi' }));
for my $b (@bodies) {
    $r = post('/mirror/', $b);
    is($r->{status}, 200, 'mirror: the module answers the provider');
}
is($r->{json}{action}, undef, 'mirror: a plain message, no action');
@app = app_lines($app + 2);
($be0 = $bodies[0]) =~ s/"/\\"/g;
($be1 = $bodies[1]) =~ s/"/\\"/g;
is_deeply([sort @app[$app, $app + 1]],
          [sort("/mirrored a=stop b=$be0", "/mirrored a= b=$be1")],
          'mirror: the app received both, body intact, action from the '
          . 'main request');
is(check($H), '403 blocked', 'mirror: the STOP was recorded');

# ---------------------------------------------------------------- errors

$lines = $t->journal_count;
$r = post('/in/', '{"from":"+447700900001","text":"STOP"');
is("$r->{status} $r->{code}", '400 40010', 'malformed JSON: 400 40010');
$r = post('/in/', '{"from":"+447700900001","to":"x"}');
is("$r->{status} $r->{code}", '400 40010', 'no text: 400 40010');
$r = post('/in/', '');
is("$r->{status} $r->{code}", '400 40010', 'empty body: 400 40010');
$r = post('/infobip/', $JSON->encode({ results => [ map {
        { from => '447700900001', to => '1', text => 'STOP' } } 1 .. 101 ] }));
is("$r->{status} $r->{code}", '413 41310', '101 messages: 413 41310');
$r = post('/max/', $JSON->encode({ from => phone(), to => '+15005550006',
                                   text => 'STOP ' . ('x' x 300) }));
is($r->{status}, 413, 'over client_max_body_size: 413');
$r = post('/buf/', $JSON->encode({ from => phone(), to => '+15005550006',
                                   text => 'STOP', pad => 'x' x 20000 }));
is("$r->{status} $r->{code}", '413 41310',
   'over client_body_buffer_size: 413 41310');
$r = $t->get('/in/');
is($r->{status}, 405, 'GET: 405');
is($r->{headers}{allow}, 'POST', 'GET: Allow: POST');
is($t->journal_count, $lines, 'errors: nothing journaled');

# ---------------------------------------------------------------- metrics

{
    my $m1 = scrape();
    my %want = ('optout_keyword_actions_total{action="stop"}' => 11,
                'optout_keyword_actions_total{action="start"}' => 2,
                'optout_keyword_actions_total{action="help"}' => 2,
                'optout_keyword_repeats_total' => 3);
    for my $k (sort keys %want) {
        is(($m1->{$k} // 'absent') - ($m0->{$k} // 0), $want{$k},
           "metrics: $k +$want{$k}");
    }
}

# ---------------------------------------------------------------- memcached

my $K = phone();
$t->memcached_stop;
$r = msg('/in/', $K, 'STOP');
is($r->{status}, 200, 'memcached down: STOP 200');
is($r->{json}{reply}, $STOP_REPLY, 'memcached down: the confirmation sent');
is(jcount($K), 1, 'memcached down: journaled');
is(check($K), '403 blocked', 'memcached down: the check says blocked');
$r = msg('/in/', $K, 'STOP');
is($r->{json}{reply}, undef, 'memcached down: a repeated STOP, no reply');

$t->memcached_start;
is($t->mc_items, 0, 'memcached restarted empty');

SKIP: {
    skip 'build/optoutctl not built', 2 unless -x OptoutTest::ctl_path();
    my ($rc, $out) = $t->ctl('replay',
                             '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                             '--store-secret', $t->path('store.key'),
                             $t->path('journal.log'));
    is($rc, 0, 'optoutctl replay exits 0') or diag $out;
    like($t->mc_get($t->skey(dest => $K)) // '', qr/^1 0 \d+ keyword sms 0$/,
         'replayed: the keyword rule is in memcached');
}
$t->mc_set('optout:marker:0', '1 ' . int time);
is(check_settled($K), '403 blocked', 'after the restart and replay: blocked');
is(check_settled($A), '204 allowed', 'the START replayed too: allowed');

# a frozen memcached: the look-up gives up at optout_check_timeout, the
# STOP is recorded and confirmed (better twice than never)
my $Z = phone();
$t->memcached_freeze;
my $t0 = time;
$r = msg('/in/', $Z, 'STOP');
my $took = time - $t0;
$t->memcached_thaw;
is($r->{status}, 200, 'memcached frozen: STOP 200');
is($r->{json}{reply}, $STOP_REPLY, 'memcached frozen: the confirmation sent');
is(jcount($Z), 1, 'memcached frozen: journaled');
cmp_ok($took, '<', 10, 'memcached frozen: answered, not hung');
is(check_settled($Z), '403 blocked', 'after the thaw: blocked');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

# ---------------------------------------------------------------- nginx -t

sub conf_error {
    my ($loc, $http) = @_;
    $t->write_conf($t->optout_http(server => $loc, http => $http));
    my ($rc, $out) = $t->nginx_test;
    return $rc ? $out : "passed\n";
}

like(conf_error('location /x { optout_inbound; }'),
     qr/optout_inbound_verify is not set; use "off" .* in \S+nginx.conf:\d/,
     'nginx -t: optout_inbound_verify missing');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_inbound_format sinch; }'),
     qr/invalid format "sinch"/, 'nginx -t: bad format');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_keyword_remove stop STOP; }'),
     qr/reserved and cannot be removed in "optout_keyword_remove" in \S+:\d+/,
     'nginx -t: reserved keyword removal');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; }',
                'optout_keyword start STOP;'),
     qr/"STOP" is reserved for stop/, 'nginx -t: reserved keyword moved');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_keyword_reply stop "Bye now"; }'),
     qr/reply of 7 characters, at least 20 .* "optout_keyword_reply" in \S/,
     'nginx -t: reply shorter than 20 characters');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_keyword stop ' . join(' ', map { "W$_" } 1 .. 21)
                . '; }'),
     qr/more than 20 custom stop keywords/, 'nginx -t: 21 custom keywords');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; }',
                'optout_keyword stop ' . join(' ', map { "W$_" } 1 .. 12)
                . ';') , qr/passed/, 'nginx -t: 12 in http ...');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_keyword stop ' . join(' ', map { "V$_" } 1 .. 9)
                . '; }', 'optout_keyword stop '
                . join(' ', map { "W$_" } 1 .. 12) . ';'),
     qr/more than 20 custom stop keywords/,
     'nginx -t: ... and 9 more in the location: 21');
like(conf_error('location /x { optout_inbound; optout_inbound_verify off; '
                . 'optout_keyword stop country=US '
                . join(' ', map { "V$_" } 1 .. 9)
                . '; }', 'optout_keyword stop '
                . join(' ', map { "W$_" } 1 .. 12) . ';'),
     qr/passed/, 'nginx -t: per country, a limit of its own');
like(conf_error('location /x { optout_inbound; '
                . 'optout_inbound_verify hmac %%PREFIX%%/none.key '
                . 'header=X-Sig; }'),
     qr/cannot open key file ".*none.key"/, 'nginx -t: missing key file');

done_testing;
