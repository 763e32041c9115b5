#!/usr/bin/perl

# Keyword matching on the inbound location, end to end through nginx:
# every default keyword, sloppy spellings that must match and near-misses
# that must not, in each provider format (payloads written from the
# providers' documentation); whole against first_word; custom and
# per-country keywords in other scripts; per-country replies (+33 FR, +44
# the default, +1 212 US, +1 416 CA); and the configuration errors that
# nginx -t must refuse.  Exact status, action, keyword, reply and journal
# line count for every message.

use strict;
use warnings;
use utf8;

use FindBin;
use lib "$FindBin::Bin/lib";

use Encode qw(encode_utf8 decode_utf8);
use JSON::PP ();
use Test::More;
use OptoutTest;

OptoutTest->require_module;

binmode Test::More->builder->$_, ':encoding(UTF-8)'
    for qw(output failure_output todo_output);

my $JSON = JSON::PP->new->utf8->canonical;

my %REPLY = (
    stop  => 'You are unsubscribed and will receive no more messages from '
             . 'us. Reply START to subscribe again.',
    start => 'You are subscribed again and will receive messages from us. '
             . 'Reply STOP to unsubscribe.',
    help  => 'Reply STOP to unsubscribe, START to subscribe again.',
);

my $FR = 'Vous êtes désinscrit. Répondez START pour vous réabonner.';
my $US = 'US: you are unsubscribed. Reply START to opt back in.';
my $CA = 'CA: you are unsubscribed. Text START to opt back in.';
my $ANY = 'You will get no more texts from ACME. Reply START to undo.';

my $t = OptoutTest->new(workers => 1);

my $var = 'add_header X-Var '
    . '"$optout_keyword_action|$optout_keyword|$optout_reply" always;';
my $in = "optout_inbound; optout_inbound_verify off; $var";

my $server = <<"EOF";
        location = /generic { $in }
        location = /generic-fw { $in optout_keyword_match first_word; }
        location = /twilio { $in optout_inbound_format twilio; }
        location = /twilio-fw { $in optout_inbound_format twilio;
            optout_keyword_match first_word; }
        location = /telnyx { $in optout_inbound_format telnyx; }
        location = /telnyx-fw { $in optout_inbound_format telnyx;
            optout_keyword_match first_word; }
        location = /infobip { $in optout_inbound_format infobip; }
        location = /infobip-fw { $in optout_inbound_format infobip;
            optout_keyword_match first_word; }
        location = /custom {
            $in
            optout_keyword stop country=FR ARRET;
            optout_keyword stop ΤΈΛΟΣ;
            optout_keyword start СТАРТ;
            optout_keyword help country=de HILFE;
            optout_keyword_reply stop country=FR "$FR";
            optout_keyword_reply stop country=US "$US";
            optout_keyword_reply stop country=CA "$CA";
        }
        location = /fallback {
            $in
            optout_keyword_reply stop "$ANY";
            optout_keyword_reply stop country=FR "$FR";
        }
        location = /twilio-esc {
            $in
            optout_inbound_format twilio;
            optout_keyword_reply help "Reply STOP to end & START <again> to return";
        }
        location = /removed {
            $in
            optout_keyword_remove stop CANCEL;
            optout_keyword start CANCEL;
        }
EOF

$t->setup(server => encode_utf8($server));
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

my $n = 0;
sub phone { sprintf '+4477009%05d', ++$n }

# ---- payloads, from each provider's documentation

sub payload {
    my ($fmt, $from, $text) = @_;
    my $to = '+447700900000';
    if ($fmt eq 'generic') {
        return ('application/json',
                $JSON->encode({ from => $from, to => $to, text => $text }));
    }
    if ($fmt eq 'twilio') {
        # an incoming SMS as Twilio posts it (form-encoded)
        my @p = (ToCountry => 'GB', SmsMessageSid => 'SM' . ('a' x 32),
                 NumMedia => '0', Body => $text, FromCountry => 'GB',
                 To => $to, From => $from, SmsStatus => 'received',
                 MessageSid => 'SM' . ('a' x 32),
                 AccountSid => 'AC' . ('b' x 32), NumSegments => '1',
                 ApiVersion => '2010-04-01');
        my @kv;
        while (my ($k, $v) = splice @p, 0, 2) {
            push @kv, "$k=" . OptoutTest::_urlenc(encode_utf8($v));
        }
        return ('application/x-www-form-urlencoded', join '&', @kv);
    }
    if ($fmt eq 'telnyx') {
        # message.received (Telnyx messaging webhooks, API v2)
        return ('application/json', $JSON->encode({
            data => {
                record_type => 'event', event_type => 'message.received',
                id => 'bf6307bd-884d-4c1f-b6ea-c62b8c495d3c',
                occurred_at => '2026-11-23T18:10:02.574Z',
                payload => {
                    record_type => 'message', direction => 'inbound',
                    id => '7ee4241c-f127-47e5-9c34-3aac291f8058',
                    type => 'SMS',
                    from => { phone_number => $from,
                              carrier => 'EE', line_type => 'Wireless' },
                    to => [{ phone_number => $to, status => 'delivered',
                             carrier => 'TELNYX LLC', line_type => 'VoIP' }],
                    cc => [], text => $text, media => [],
                    encoding => 'UCS-2', parts => 1, tags => [],
                },
            },
            meta => { attempt => 1,
                      delivered_to => 'https://example.com/hooks' },
        }));
    }
    if ($fmt eq 'infobip') {
        # MO_JSON_2 (Infobip "Receive inbound SMS messages")
        return ('application/json', $JSON->encode({
            results => [{
                messageId => '817790313235066447', from => $from,
                to => $to, text => $text, cleanText => $text,
                keyword => '', receivedAt => '2026-11-23T16:00:00.000+0000',
                smsCount => 1,
                price => { pricePerMessage => 0, currency => 'EUR' },
                callbackData => 'callbackData',
            }],
            messageCount => 1, pendingMessageCount => 0,
        }));
    }
    die "format $fmt";
}

my $journal = 0;
sub new_lines {
    my $c = $t->journal_count;
    my $d = $c - $journal;
    $journal = $c;
    return $d;
}

# one message: "status|action|keyword|reply|journal lines" from the
# header, the variables, the answer's body, and the journal
sub send_msg {
    my ($path, $from, $text, %o) = @_;
    (my $fmt = $path) =~ s{^/([a-z]+).*}{$1};
    $fmt = 'generic' unless $fmt =~ /^(twilio|telnyx|infobip)$/;
    my ($ct, $body) = payload($fmt, $from, $text);
    my $r = $t->request('POST', $path, body => $body,
                        headers => { 'Content-Type' => $ct });
    my $var = decode_utf8($r->{headers}{'x-var'} // '');
    my ($va, $vk, $vr) = split /\|/, $var, 3;
    my $hdr = $r->{headers}{'x-optout-action'} // '';
    my ($ba, $bk, $br) = ('', '', '');
    if ($fmt eq 'twilio') {
        my $c = decode_utf8($r->{content});
        ($br) = $c =~ m{<Message>(.*)</Message>}s;
        $br //= '';
        ($ba, $bk) = ($va // '', $vk // '');
    } else {
        my $j = eval { $JSON->decode($r->{content}) } || {};
        $j = $j->{results}[0] || {} if $fmt eq 'infobip';
        ($ba, $bk, $br) = map { $_ // '' } @$j{qw(action keyword reply)};
    }
    my @diff;
    push @diff, "header $hdr" if $hdr ne ($va // '');
    push @diff, "body action $ba" if $ba ne ($va // '');
    push @diff, "body keyword $bk" if $bk ne ($vk // '');
    push @diff, "body reply $br" if $br ne ($vr // '');
    diag("$path '$text': variables and answer differ: @diff ["
         . decode_utf8($r->{content}) . ']') if @diff;
    return join '|', $r->{status}, $va // '', $vk // '', $vr // '',
                     new_lines(), @diff ? 'MISMATCH' : ();
}

# what an answer must be
sub stop_ { "200|stop|$_[0]|" . ($_[1] // $REPLY{stop}) . '|1' }
sub start_ { "200|start|$_[0]|" . ($_[1] // $REPLY{start}) . '|1' }
sub help_ { "200|help|$_[0]|" . ($_[1] // $REPLY{help}) . '|0' }
sub none_ { '200||||0' }

my @STOP = ('STOP', 'STOPALL', 'STOP ALL', 'UNSUBSCRIBE', 'CANCEL', 'END',
            'QUIT', 'REVOKE', 'OPT OUT', 'OPTOUT');
my @START = ('START', 'UNSTOP');
my @HELP = ('HELP', 'INFO');

# sloppy spellings: [text, keyword] that must match in both modes
my @SLOPPY = (
    ['Stop', 'STOP'], [' STOP. ', 'STOP'], ['stop!!', 'STOP'],
    ["\x{FF33}\x{FF34}\x{FF2F}\x{FF30}", 'STOP'],          # ＳＴＯＰ
    ["Stop \x{1F6D1}", 'STOP'],                            # Stop 🛑
    ['opt-out', 'OPTOUT'], ['S.T.O.P', 'STOP'], ["stop\tall", 'STOP ALL'],
    ["\x{2003}Unsubscribe\x{FE0F}\n", 'UNSUBSCRIBE'], ['Opt   Out', 'OPT OUT'],
    ['start!', 'START'], ['Help?', 'HELP'],
);

# near-misses: no keyword in either mode
my @NEAR = ("Please don't stop", 'nonstop', 'STOPP', 'non-stop',
            'unstoppable', 'halp', 'S T O P', '');

# whole only: a keyword followed by more words
my @MORE = (['stop it', 'stop', 'STOP'], ['STOP please', 'stop', 'STOP'],
            ['Stop, please!', 'stop', 'STOP'],
            ['stop all please', 'stop', 'STOP ALL'],
            ['help me', 'help', 'HELP'], ['Start again', 'start', 'START']);

for my $fmt (qw(generic twilio telnyx infobip)) {
    for my $mode ('', '-fw') {
        my $path = "/$fmt$mode";
        my $fw = $mode ? 1 : 0;

        for my $kw (@STOP) {
            is(send_msg($path, phone(), $kw), stop_($kw), "$path: $kw");
        }
        for my $kw (@START) {
            # a START confirms only an opt-out that exists
            my $p = phone();
            is(send_msg($path, $p, 'STOP'), stop_('STOP'),
               "$path: STOP before $kw");
            is(send_msg($path, $p, $kw), start_($kw), "$path: $kw");
        }
        for my $kw (@HELP) {
            is(send_msg($path, phone(), $kw), help_($kw), "$path: $kw");
        }
        for my $s (@SLOPPY) {
            my ($text, $kw) = @$s;
            my $p = phone();
            my $want = $kw eq 'START' ? start_($kw)
                     : $kw eq 'HELP' ? help_($kw) : stop_($kw);
            if ($kw eq 'START') {
                send_msg($path, $p, 'STOP');
            }
            is(send_msg($path, $p, $text), $want,
               "$path: sloppy '$text'");
        }
        for my $text (@NEAR) {
            is(send_msg($path, phone(), $text), none_(),
               "$path: near-miss '$text'");
        }
        for my $m (@MORE) {
            my ($text, $op, $kw) = @$m;
            my $p = phone();
            send_msg($path, $p, 'STOP') if $op eq 'start' && $fw;
            my $want = !$fw ? none_()
                     : $op eq 'stop' ? stop_($kw)
                     : $op eq 'start' ? start_($kw) : help_($kw);
            is(send_msg($path, $p, $text), $want,
               "$path: '$text' " . ($fw ? 'matches' : 'does not match'));
        }
    }
}

# Infobip writes numbers without "+" in its documented examples
{
    my ($ct, $body) = payload('infobip', '447700900999', 'STOP');
    my $r = $t->request('POST', '/infobip', body => $body,
                        headers => { 'Content-Type' => $ct });
    is($r->{status}, 200, 'infobip: a documented "from" without "+": 200');
    is($r->{headers}{'x-optout-action'}, 'stop', 'infobip: without "+": stop');
    is(new_lines(), 1, 'infobip: without "+": journaled');
    ok(defined $t->mc_get($t->skey(dest => '+447700900999')),
       'infobip: without "+": +447700900999 blocked');
}

# several messages in one Infobip request: one result each, the variables
# from the first that matched
{
    my @m = (['+447700911001', 'hello'], ['+447700911002', 'STOP'],
             ['+447700911003', 'HELP'], ['+447700911004', 'stop please']);
    my $body = $JSON->encode({ results => [ map { {
        messageId => "id$_->[0]", from => $_->[0], to => '+447700900000',
        text => $_->[1], cleanText => $_->[1], keyword => '',
        receivedAt => '2026-11-23T16:00:00.000+0000', smsCount => 1,
        price => { pricePerMessage => 0, currency => 'EUR' } } } @m ],
        messageCount => 4, pendingMessageCount => 0 });
    my $r = $t->request('POST', '/infobip', body => $body,
                        headers => { 'Content-Type' => 'application/json' });
    is($r->{status}, 200, 'infobip 4 messages: 200');
    my $j = eval { $JSON->decode($r->{content}) } || {};
    is(join(',', map { $_->{action} // 'null' } @{ $j->{results} || [] }),
       'null,stop,help,null', 'infobip 4 messages: one result each');
    is($r->{headers}{'x-var'}, "stop|STOP|$REPLY{stop}",
       'infobip 4 messages: the variables of the first match');
    is(new_lines(), 1, 'infobip 4 messages: one journal line');
}

# ---- custom keywords, per country, other scripts

my $fr = 0;
sub fr { sprintf '+336123%05d', ++$fr }

is(send_msg('/custom', fr(), 'ARRET'), stop_('ARRET', $FR),
   'custom: ARRET from +33: stop, the FR reply');
is(send_msg('/custom', fr(), 'Arrêt'), none_(),
   'custom: "Arrêt" (accent kept) is not ARRET');
is(send_msg('/custom', fr(), 'arret !'), stop_('ARRET', $FR),
   'custom: "arret !" from +33');
is(send_msg('/custom', phone(), 'ARRET'), none_(),
   'custom: ARRET from +44: not a keyword');
is(send_msg('/custom', '+12125550101', 'ARRET'), none_(),
   'custom: ARRET from +1 212: not a keyword');
is(send_msg('/generic', fr(), 'ARRET'), none_(),
   'ARRET in a location without it: nothing');
is(send_msg('/custom', fr(), 'STOP'), stop_('STOP', $FR),
   'custom: STOP from +33: the defaults apply too, FR reply');

is(send_msg('/custom', phone(), 'τέλος'), stop_('ΤΈΛΟΣ'),
   'custom: Greek τέλος (case-folded, final sigma) matches ΤΈΛΟΣ');
is(send_msg('/custom', phone(), 'ΤΈΛΟΣ!'), stop_('ΤΈΛΟΣ'),
   'custom: Greek ΤΈΛΟΣ! matches');
{
    my $p = phone();
    send_msg('/custom', $p, 'stop');
    is(send_msg('/custom', $p, 'Старт'), start_('СТАРТ'),
       'custom: Cyrillic Старт matches СТАРТ');
}
is(send_msg('/custom', '+4915112345678', 'hilfe'), help_('HILFE'),
   'custom: HILFE for country=de from +49');
is(send_msg('/custom', fr(), 'hilfe'), none_(),
   'custom: HILFE from +33: nothing');

# ---- replies per country

is(send_msg('/custom', phone(), 'STOP'), stop_('STOP'),
   'reply: +44 gets the built-in default');
is(send_msg('/custom', '+12125550102', 'STOP'), stop_('STOP', $US),
   'reply: +1 212 gets the US reply');
is(send_msg('/custom', '+14165550103', 'STOP'), stop_('STOP', $CA),
   'reply: +1 416 gets the CA reply');
is(send_msg('/custom', '+18765550104', 'STOP'), stop_('STOP'),
   'reply: +1 876 (JM) gets the built-in default');
is(send_msg('/fallback', phone(), 'STOP'), stop_('STOP', $ANY),
   'fallback: +44 gets the reply without a country');
is(send_msg('/fallback', fr(), 'STOP'), stop_('STOP', $FR),
   'fallback: +33 gets the FR reply');
is(send_msg('/fallback', '+80012345678', 'STOP'), stop_('STOP', $ANY),
   'fallback: +800 (no country) gets the reply without a country');
{
    my $p = phone();
    send_msg('/fallback', $p, 'STOP');
    is(send_msg('/fallback', $p, 'START'), start_('START'),
       'fallback: START keeps the built-in start reply');
}

# TwiML: the whole answer, and a reply with markup characters escaped
{
    my ($ct, $body) = payload('twilio', phone(), 'HELP');
    my $r = $t->request('POST', '/twilio', body => $body,
                        headers => { 'Content-Type' => $ct });
    like($r->{content}, qr{^(?:<\?xml[^>]*\?>\s*)?<Response><Message>
                           \Q$REPLY{help}\E</Message></Response>\s*$}x,
         'twilio: the TwiML answer');
    ($ct, $body) = payload('twilio', phone(), 'HELP');
    $r = $t->request('POST', '/twilio-esc', body => $body,
                     headers => { 'Content-Type' => $ct });
    like($r->{content}, qr{<Message>Reply\ STOP\ to\ end\ &amp;\ START
                           \ &lt;again&gt;\ to\ return</Message>}x,
         'twilio: &, < and > escaped in TwiML');
    ($ct, $body) = payload('twilio', phone(), 'hello');
    $r = $t->request('POST', '/twilio', body => $body,
                     headers => { 'Content-Type' => $ct });
    like($r->{content},
         qr{^(?:<\?xml[^>]*\?>\s*)?(?:<Response/>|<Response></Response>)\s*$},
         'twilio: no keyword, an empty TwiML Response');
    is(new_lines(), 0, 'twilio answers: nothing journaled');
}

# ---- a keyword moved: CANCEL removed from stop, added to start

{
    my $p = phone();
    is(send_msg('/removed', $p, 'CANCEL'), start_('CANCEL', ''),
       'removed: CANCEL on a number not blocked is start, no reply');
    is(send_msg('/removed', $p, 'STOP'), stop_('STOP'), 'removed: STOP');
    is(send_msg('/removed', $p, 'cancel'), start_('CANCEL'),
       'removed: cancel after STOP: start with its reply');
}

# ---- nginx -t

my @bad = (
    [ 'optout_keyword_remove stop STOP;',
      qr/"STOP" is reserved and cannot be removed/ ],
    [ 'optout_keyword_remove help country=FR help;',
      qr/"help" is reserved and cannot be removed/ ],
    [ 'optout_keyword start STOP;', qr/"STOP" is reserved for stop in "optout_keyword"/ ],
    [ 'optout_keyword help Start;', qr/"Start" is reserved for start in "optout_keyword"/ ],
    [ 'optout_keyword start CANCEL;', qr/"CANCEL" is already a stop keyword/ ],
    [ 'optout_keyword stop !!;', qr/keyword "!!" is empty/ ],
    [ 'optout_keyword stop country=FRA ARRET;', qr/invalid country "FRA"/ ],
    [ 'optout_keyword pause WAIT;', qr/pause/ ],
    [ 'optout_keyword_reply stop "Unsubscribed. Bye";',
      qr/reply of 17 characters, at least 20 are required/ ],
    # 18 characters in 20 bytes: characters are counted, not bytes
    [ 'optout_keyword_reply help "Réponse trop brève";',
      qr/reply of 18 characters, at least 20 are required/ ],
    [ 'optout_keyword_reply stop country=1X "You are unsubscribed, bye now.";',
      qr/1X/ ],
    [ 'optout_keyword_match last_word;', qr/last_word/ ],
    [ 'optout_keyword stop ' . join(' ', map { "W$_" } 1 .. 21) . ';',
      qr/more than 20 custom stop keywords/ ],
    [ 'optout_keyword stop country=FR ' . join(' ', map { "M$_" } 1 .. 11)
      . '; optout_keyword stop country=FR '
      . join(' ', map { "N$_" } 1 .. 10) . ';',
      qr/more than 20 custom stop keywords in FR/ ],
);
for my $b (@bad) {
    $t->write_conf($t->optout_http(server => encode_utf8(
        "location = /x { $in $b->[0] }")));
    my ($rc, $out) = $t->nginx_test;
    $out = decode_utf8($out);
    my $name = length $b->[0] > 60 ? substr($b->[0], 0, 60) . '...' : $b->[0];
    isnt($rc, 0, "nginx -t refuses: $name");
    like($out, $b->[1], "nginx -t says why: $name");
}

# 20 custom keywords per operation and country are accepted, and the
# limit counts each country apart
$t->write_conf($t->optout_http(server =>
    "location = /x { $in optout_keyword stop "
    . join(' ', map { "W$_" } 1 .. 20) . '; optout_keyword stop country=FR '
    . join(' ', map { "F$_" } 1 .. 20) . '; optout_keyword start '
    . join(' ', map { "S$_" } 1 .. 20) . '; }'));
my ($rc, $out) = $t->nginx_test;
is($rc, 0, 'nginx -t: 20 stop, 20 stop for FR and 20 start are accepted')
    or diag($out);

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
