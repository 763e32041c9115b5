#!/usr/bin/perl

# Webhook authenticity on the inbound keyword location (optout_inbound_verify):
# for every scheme (Twilio form, Twilio JSON with bodySHA256, Telnyx
# Ed25519, generic HMAC-SHA256 with and without a timestamp) the right
# signature is answered 200 and the action happens; a wrong signature
# (403 40310), a missing or unreadable header (401 40110), a stale or
# future timestamp and a modified body (403 40310) change nothing.
#
# Expected signatures come from an independent implementation computed
# here at run time: Perl's Digest::SHA for HMAC-SHA1 and HMAC-SHA256,
# python3-cryptography for Ed25519; plus Twilio's own documented example
# and the committed vectors of tests/webhook-vectors.txt where they fit.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::SHA qw(hmac_sha1 hmac_sha256 hmac_sha256_hex sha256_hex);
use JSON::PP ();
use MIME::Base64 qw(encode_base64);
use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $JSON = JSON::PP->new->utf8->canonical;

# ---- the committed vectors (tests/gen-webhook-vectors.py)

my %V;
{
    my $f = "$OptoutTest::ROOT/tests/webhook-vectors.txt";
    open my $fh, '<', $f or die "$f: $!";
    while (<$fh>) {
        chomp;
        next if /^#/ || !/\S/;
        my ($k, $v) = split / /, $_, 2;
        $V{$k} = $v;
    }
}

# ---- Ed25519 by python3-cryptography, with the generator's fixed seed

my $PY_SIGN = <<'PY';
import base64, hashlib, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey)
seed = hashlib.sha256(b"optout webhook test key").digest()
sk = Ed25519PrivateKey.from_private_bytes(seed)
msg = open(sys.argv[1], "rb").read()
print(base64.b64encode(sk.sign(msg)).decode())
PY

my $have_py = system('python3 -c "import cryptography" 2>/dev/null') == 0;

my $t = OptoutTest->new(workers => 1);

sub ed25519_sign {
    my ($msg) = @_;
    my $f = $t->write_file('ed.msg', $msg);
    open my $py, '-|', 'python3', '-c', $PY_SIGN, $f or die "python3: $!";
    my $sig = <$py> // '';
    close $py;
    chomp $sig;
    return $sig;
}

# ---- Twilio's algorithm, written from its documentation

sub urlenc { OptoutTest::_urlenc($_[0]) }

sub form {
    return join '&', map { urlenc($_->[0]) . '=' . urlenc($_->[1]) } @_;
}

# base64(HMAC-SHA1(token, URL . name1 . value1 ...)), parameters sorted
sub twilio_sig {
    my ($token, $url, @pairs) = @_;
    my $data = $url;
    $data .= $_->[0] . $_->[1]
        for sort { $a->[0] cmp $b->[0] || $a->[1] cmp $b->[1] } @pairs;
    return encode_base64(hmac_sha1($data, $token), '');
}

sub sms_params {
    my ($from, $body) = @_;
    return (['ToCountry', 'US'], ['ToState', 'CA'],
            ['SmsMessageSid', 'SM' . substr(sha256_hex($from . $body), 0, 32)],
            ['NumMedia', '0'], ['Body', $body], ['FromCountry', 'US'],
            ['To', '+14155550199'], ['From', $from],
            ['MessageSid', 'SM' . substr(sha256_hex($body . $from), 0, 32)],
            ['AccountSid', 'AC0123456789abcdef0123456789abcdef'],
            ['NumSegments', '1'], ['ApiVersion', '2010-04-01']);
}

# ---- keys and configuration

my $TOKEN = $V{twilio_form_token};
my $HKEY = $V{generic_key};
$t->write_file('twilio.token', "$TOKEN\n", 0600);
# Twilio's documented token is "12345"; key files hold at least 32 bytes
# (real auth tokens have 32).  HMAC pads a key shorter than its block with
# zero bytes (RFC 2104), so "12345" and 27 NUL bytes is the same HMAC key.
$t->write_file('doc.token', "12345" . ("\0" x 27), 0600);
$t->write_file('short.token', "12345\n", 0600);
$t->write_file('hmac.key', "$HKEY\n", 0600);
$t->write_file('telnyx.pub', "$V{telnyx_pubkey_raw_b64}\n", 0644);
$t->write_file('telnyx.pem', "-----BEGIN PUBLIC KEY-----\n"
               . "$V{telnyx_pubkey_spki_b64}\n-----END PUBLIC KEY-----\n",
               0644);

my $V_ = '$optout_keyword_action|$optout_keyword';
my $common = "optout_inbound; add_header X-Var \"$V_\" always;";

$t->setup(http => <<'EOF', server => <<"EOF");
    # the operator's application behind: logs what reaches it
    log_format app '$uri a=$http_x_optout_action';
    server {
        listen 127.0.0.1:%%PORT:app%%;
        access_log %%PREFIX%%/logs/app.log app;
        location / { return 200 "app\n"; }
    }
EOF
        location = /tw-app {
            optout_inbound;
            optout_inbound_format twilio;
            optout_inbound_verify twilio %%PREFIX%%/twilio.token
                url=https://hooks.example.com/sms/inbound;
            proxy_set_header X-Optout-Action \$optout_keyword_action;
            proxy_pass http://127.0.0.1:%%PORT:app%%;
        }
        location = /tw {
            $common
            optout_inbound_format twilio;
            optout_inbound_verify twilio %%PREFIX%%/twilio.token
                url=https://hooks.example.com/sms/inbound?site=eu;
        }
        location = /tw-fw {
            $common
            optout_inbound_format twilio;
            optout_keyword_match first_word;
            optout_inbound_verify twilio %%PREFIX%%/twilio.token
                url=https://hooks.example.com/sms/inbound?site=eu;
        }
        location = /twd {
            $common
            optout_inbound_format twilio;
            optout_inbound_verify twilio %%PREFIX%%/twilio.token;
        }
        location = /twdoc {
            $common
            optout_inbound_format twilio;
            optout_inbound_verify twilio %%PREFIX%%/doc.token
                url=https://mycompany.com/myapp.php?foo=1&bar=2;
        }
        location = /twj {
            $common
            optout_inbound_format generic;
            optout_inbound_verify twilio %%PREFIX%%/twilio.token
                url=https://\$host\$request_uri;
        }
        location = /tx {
            $common
            optout_inbound_format telnyx;
            optout_inbound_verify telnyx %%PREFIX%%/telnyx.pub;
        }
        location = /tx-pem {
            $common
            optout_inbound_format telnyx;
            optout_inbound_verify telnyx %%PREFIX%%/telnyx.pem tolerance=60s;
        }
        location = /hm {
            $common
            optout_inbound_verify hmac %%PREFIX%%/hmac.key header=X-Signature;
        }
        location = /hmt {
            $common
            optout_inbound_verify hmac %%PREFIX%%/hmac.key header=X-Signature
                timestamp=X-Timestamp;
        }
EOF

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

my $HOST = 'hooks.example.com';

sub post {
    my ($path, $body, %h) = @_;
    $h{Host} //= $HOST;
    my $r = $t->request('POST', $path, body => $body, headers => \%h);
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if ($r->{headers}{'content-type'} // '') =~ /json/;
    $r->{code} = ref $r->{json} eq 'HASH' && $r->{json}{errors}
                 ? $r->{json}{errors}[0]{code} : '';
    $r->{var} = $r->{headers}{'x-var'} // '';
    return $r;
}

sub status_code { "$_[0]{status} $_[0]{code}" }

my $phone = 0;
sub from { sprintf '+1415555%04d', ++$phone }

sub blocked {
    my ($from) = @_;
    return defined $t->mc_get($t->skey(dest => $from)) ? 1 : 0;
}

my $journal = 0;
sub new_lines {
    my $n = $t->journal_count;
    my $d = $n - $journal;
    $journal = $n;
    return $d;
}

my @refused;    # numbers of refused requests: nothing may be recorded

# a refused request: exact status and code, nothing journaled
sub refused {
    my ($r, $want, $from, $name) = @_;
    is(status_code($r), $want, "$name: $want");
    is($r->{headers}{'x-optout-action'}, undef, "$name: no action header");
    is(new_lines(), 0, "$name: nothing journaled");
    push @refused, $from if defined $from;
}

sub accepted_stop {
    my ($r, $from, $name) = @_;
    is($r->{status}, 200, "$name: 200") or diag($r->{content});
    is($r->{headers}{'x-optout-action'}, 'stop', "$name: X-Optout-Action");
    is($r->{var}, 'stop|STOP', "$name: \$optout_keyword_action");
    is(new_lines(), 1, "$name: one journal line");
    my @j = $t->journal_for($from);
    is(scalar @j, 1, "$name: the line is the sender's");
    is(join(' ', map { $_ // '-' } @{ $j[0] || {} }{qw(action source keyword
        channel scope)}), 'optout keyword STOP sms account',
       "$name: action, source, keyword, channel, scope");
    is(blocked($from), 1, "$name: the rule is in memcached");
}

# ======================================================= Twilio, form

# Twilio's own worked example (its webhook security page): a voice
# callback without a Body, so the signature passes and the body is then
# not an inbound message (400 40010, nothing recorded)
{
    my @doc = (['CallSid', 'CA1234567890ABCDE'], ['Caller', '+14158675310'],
               ['Digits', '1234'], ['From', '+14158675310'],
               ['To', '+18005551212']);
    is(twilio_sig('12345', 'https://mycompany.com/myapp.php?foo=1&bar=2',
                  @doc), 'GvWf1cFY/Q7PnoempGyD5oXAezc=',
       'Twilio doc example: our Perl signer gives the documented value');
    my $r = post('/twdoc', form(@doc),
                 'X-Twilio-Signature' => 'GvWf1cFY/Q7PnoempGyD5oXAezc=');
    is(status_code($r), '400 40010',
       'Twilio doc example: signature accepted, no Body: 400 40010');
    is(new_lines(), 0, 'Twilio doc example: nothing journaled');
    $r = post('/twdoc', form(@doc),
              'X-Twilio-Signature' => 'RSOYDt4T1cUTdK1PDd93/VVr8B8=');
    refused($r, '403 40310', undef,
            'Twilio doc example: the older revision\'s signature '
            . '(other numbers)');
}

# the committed form vector: "Stop please!" (whole mode: no keyword;
# first_word: stop)
{
    my $sig = $V{twilio_form_sig};
    my $r = post('/tw', $V{twilio_form_body}, 'X-Twilio-Signature' => $sig);
    is($r->{status}, 200, 'vector form, whole mode: 200');
    is($r->{headers}{'x-optout-action'}, undef, 'whole mode: no action');
    is($r->{var}, '|', 'whole mode: variables empty');
    like($r->{content}, qr{<Response\s*/>|<Response>\s*</Response>},
         'whole mode: empty TwiML');
    is(new_lines(), 0, 'whole mode: nothing journaled');

    $r = post('/tw-fw', $V{twilio_form_body}, 'X-Twilio-Signature' => $sig);
    is($r->{status}, 200, 'vector form, first_word: 200');
    is($r->{headers}{'x-optout-action'}, 'stop', 'first_word: stop');
    is(new_lines(), 1, 'first_word: one journal line');
    is(blocked('+14155550100'), 1, 'first_word: +14155550100 blocked');

    # the same body with the percent-encoding spelled another way signs
    # the same (parameters are decoded before signing)
    (my $alt = $V{twilio_form_body}) =~ s/Stop\+please%21/Stop%20please!/;
    $r = post('/tw-fw', $alt, 'X-Twilio-Signature' => $sig);
    is($r->{status}, 200, 'other encoding of the same parameters: 200');
    is(new_lines(), 1, 'other encoding: journaled (a repeat, no reply)');
}

# run-time vectors for a configured url=
{
    my $url = 'https://hooks.example.com/sms/inbound?site=eu';

    my $from = from();
    my @p = sms_params($from, 'STOP');
    my $r = post('/tw', form(@p),
                 'X-Twilio-Signature' => twilio_sig($TOKEN, $url, @p));
    accepted_stop($r, $from, 'twilio form');
    like($r->{headers}{'content-type'}, qr{^text/xml\b}, 'twilio: text/xml');
    my $reply = 'You are unsubscribed and will receive no more messages '
                . 'from us. Reply START to subscribe again.';
    like($r->{content}, qr{<Response><Message>\Q$reply\E</Message></Response>},
         'twilio: the stop reply in TwiML');

    $from = from();
    @p = sms_params($from, 'STOP');
    my $good = twilio_sig($TOKEN, $url, @p);
    my $wrong = twilio_sig('f' x 32, $url, @p);
    refused(post('/tw', form(@p), 'X-Twilio-Signature' => $wrong),
            '403 40310', $from, 'twilio form, another token');

    my $flip = $good;
    substr($flip, 0, 1) = substr($flip, 0, 1) eq 'A' ? 'B' : 'A';
    refused(post('/tw', form(@p), 'X-Twilio-Signature' => $flip),
            '403 40310', $from, 'twilio form, one character changed');

    refused(post('/tw', form(@p)), '401 40110', $from,
            'twilio form, no X-Twilio-Signature');
    refused(post('/tw', form(@p), 'X-Twilio-Signature' => 'c2lnbmF0dXJl'),
            '401 40110', $from, 'twilio form, not a signature of 20 bytes');

    # signed over one body, another sent: Body changed
    my @p2 = map { $_->[0] eq 'Body' ? ['Body', 'START'] : $_ } @p;
    refused(post('/tw', form(@p2), 'X-Twilio-Signature' => $good),
            '403 40310', $from, 'twilio form, Body changed');

    # From changed: the forger silences someone else
    my $victim = from();
    my @p3 = map { $_->[0] eq 'From' ? ['From', $victim] : $_ } @p;
    refused(post('/tw', form(@p3), 'X-Twilio-Signature' => $good),
            '403 40310', $victim, 'twilio form, From changed');

    # a parameter added twice
    refused(post('/tw', form(@p, ['Body', 'STOP']),
                 'X-Twilio-Signature' => $good),
            '403 40310', $from, 'twilio form, Body given twice');

    # signed for another URL
    my $other = twilio_sig($TOKEN, 'https://hooks.example.com/sms/inbound',
                           @p);
    refused(post('/tw', form(@p), 'X-Twilio-Signature' => $other),
            '403 40310', $from, 'twilio form, signed for another URL');
}

# default url=: $scheme://$host$request_uri as nginx sees it
{
    my $from = from();
    my @p = sms_params($from, 'STOP');
    my $sig = twilio_sig($TOKEN, "http://$HOST/twd?x=1&y=%2B1", @p);
    accepted_stop(post('/twd?x=1&y=%2B1', form(@p),
                       'X-Twilio-Signature' => $sig),
                  $from, 'twilio default url');

    $from = from();
    @p = sms_params($from, 'STOP');
    $sig = twilio_sig($TOKEN, "https://$HOST/twd?x=1", @p);
    refused(post('/twd?x=1', form(@p), 'X-Twilio-Signature' => $sig),
            '403 40310', $from, 'twilio default url, signed as https');
    $sig = twilio_sig($TOKEN, "http://$HOST/twd?x=1", @p);
    refused(post('/twd?x=2', form(@p), 'X-Twilio-Signature' => $sig),
            '403 40310', $from, 'twilio default url, query changed');
    refused(post('/twd?x=1', form(@p), 'X-Twilio-Signature' => $sig,
                 Host => 'evil.example.com'),
            '403 40310', $from, 'twilio default url, another Host');
}

# the application behind a verified location: a refused request never
# reaches it, a verified one does, keyword or not
{
    my $url = 'https://hooks.example.com/sms/inbound';
    my $from = from();
    my @p = sms_params($from, 'STOP');
    my $good = twilio_sig($TOKEN, $url, @p);
    refused(post('/tw-app', form(@p), 'X-Twilio-Signature' =>
                 twilio_sig('z' x 32, $url, @p)),
            '403 40310', $from, 'app behind: forged');
    refused(post('/tw-app', form(@p)), '401 40110', $from,
            'app behind: unsigned');
    my @p2 = map { $_->[0] eq 'Body' ? ['Body', 'STOP ALL'] : $_ } @p;
    refused(post('/tw-app', form(@p2), 'X-Twilio-Signature' => $good),
            '403 40310', $from, 'app behind: body changed');

    my $ok = from();
    @p = sms_params($ok, 'STOP');
    my $r = post('/tw-app', form(@p),
                 'X-Twilio-Signature' => twilio_sig($TOKEN, $url, @p));
    is("$r->{status} $r->{content}", "200 app\n",
       'app behind: a verified STOP is answered by the app');
    is(new_lines(), 1, 'app behind: the STOP journaled');
    @p = sms_params($ok, 'See you at 5');
    $r = post('/tw-app', form(@p),
              'X-Twilio-Signature' => twilio_sig($TOKEN, $url, @p));
    is("$r->{status} $r->{content}", "200 app\n",
       'app behind: a verified plain message is answered by the app');
    is(new_lines(), 0, 'app behind: the plain message not journaled');

    my @app = $t->log_lines('logs/app.log', qr{^/tw-app}, 2);
    is(join(',', @app), '/tw-app a=stop,/tw-app a=-',
       'app behind: exactly the two verified requests reached it');
}

# ======================================================= Twilio, JSON

# bodySHA256=hex(SHA-256(body)) in the signed URL, the URL alone signed
{
    my $from = from();
    my $body = $JSON->encode({ from => $from, to => '+14155550199',
                               text => 'STOP' });
    my $path = '/twj?bodySHA256=' . sha256_hex($body);
    my $sig = twilio_sig($TOKEN, "https://$HOST$path");
    accepted_stop(post($path, $body, 'Content-Type' => 'application/json',
                       'X-Twilio-Signature' => $sig),
                  $from, 'twilio JSON');

    $from = from();
    $body = $JSON->encode({ from => $from, to => '+14155550199',
                            text => 'STOP' });
    $path = '/twj?bodySHA256=' . sha256_hex($body);
    $sig = twilio_sig($TOKEN, "https://$HOST$path");
    my $json = 'application/json';

    refused(post($path, $body, 'Content-Type' => $json,
                 'X-Twilio-Signature' => twilio_sig('x' x 32,
                                                    "https://$HOST$path")),
            '403 40310', $from, 'twilio JSON, another token');
    refused(post($path, $body, 'Content-Type' => $json),
            '401 40110', $from, 'twilio JSON, no header');

    # the signed URL's hash names the original body
    (my $mod = $body) =~ s/"STOP"/"START"/;
    refused(post($path, $mod, 'Content-Type' => $json,
                 'X-Twilio-Signature' => $sig),
            '403 40310', $from, 'twilio JSON, body changed');

    # the forger recomputes bodySHA256 but cannot sign the new URL
    my $p2 = '/twj?bodySHA256=' . sha256_hex($mod);
    refused(post($p2, $mod, 'Content-Type' => $json,
                 'X-Twilio-Signature' => $sig),
            '403 40310', $from, 'twilio JSON, body and hash changed');

    # a signed URL without bodySHA256
    my $bare = twilio_sig($TOKEN, "https://$HOST/twj");
    refused(post('/twj', $body, 'Content-Type' => $json,
                 'X-Twilio-Signature' => $bare),
            '403 40310', $from, 'twilio JSON, no bodySHA256');
}

# ======================================================= Telnyx, Ed25519

SKIP: {
    skip 'python3-cryptography is not installed', 1 unless $have_py;

    my $tx_body = sub {
        my ($from, $text) = @_;
        return $JSON->encode({
            data => {
                event_type => 'message.received',
                id => 'b301ed3f-1490-491f-995f-6e64e69674d4',
                occurred_at => '2026-11-23T09:00:00.000+00:00',
                payload => {
                    direction => 'inbound',
                    from => { carrier => 'T-Mobile USA',
                              line_type => 'Wireless',
                              phone_number => $from },
                    to => [{ carrier => 'Telnyx', line_type => 'Wireless',
                             phone_number => '+14155550199',
                             status => 'webhook_delivered' }],
                    text => $text, type => 'SMS', parts => 1,
                    encoding => 'GSM-7', media => [],
                    record_type => 'message',
                },
                record_type => 'event',
            },
            meta => { attempt => 1,
                      delivered_to => 'https://hooks.example.com/tx' },
        });
    };

    # our Python signer is the generator's: same key
    is(ed25519_sign("$V{telnyx_ts}|$V{telnyx_body}"), $V{telnyx_sig},
       'python3 Ed25519 signer reproduces the committed vector');

    my $send = sub {
        my ($path, $body, $ts, $sig) = @_;
        my %h = ('Content-Type' => 'application/json');
        $h{'telnyx-timestamp'} = $ts if defined $ts;
        $h{'telnyx-signature-ed25519'} = $sig if defined $sig;
        return post($path, $body, %h);
    };

    for my $path ('/tx', '/tx-pem') {
        my $from = from();
        my $body = $tx_body->($from, 'STOP');
        my $ts = time;
        accepted_stop($send->($path, $body, $ts,
                              ed25519_sign("$ts|$body")),
                      $from, "telnyx $path");
    }

    my $from = from();
    my $body = $tx_body->($from, 'STOP');
    my $now = time;
    my $sig = ed25519_sign("$now|$body");

    # the committed vector is authentic but from 2025: stale
    refused($send->('/tx', $V{telnyx_body}, $V{telnyx_ts}, $V{telnyx_sig}),
            '403 40310', undef, 'telnyx committed vector: stale');

    my $old = $now - 400;
    refused($send->('/tx', $body, $old, ed25519_sign("$old|$body")),
            '403 40310', $from, 'telnyx signed 400 s ago (tolerance 300)');
    my $old2 = $now - 120;
    refused($send->('/tx-pem', $body, $old2, ed25519_sign("$old2|$body")),
            '403 40310', $from, 'telnyx signed 120 s ago (tolerance=60s)');
    my $fut = $now + 400;
    refused($send->('/tx', $body, $fut, ed25519_sign("$fut|$body")),
            '403 40310', $from, 'telnyx signed 400 s ahead');

    # the signature of a fresh timestamp moved to another one
    refused($send->('/tx', $body, $now - 1, $sig),
            '403 40310', $from, 'telnyx timestamp changed');
    (my $mod = $body) =~ s/"STOP"/"START"/;
    refused($send->('/tx', $mod, $now, $sig),
            '403 40310', $from, 'telnyx body changed');
    my $other = $tx_body->(my $victim = from(), 'STOP');
    refused($send->('/tx', $other, $now, $sig),
            '403 40310', $victim, 'telnyx from changed');

    my $flip = $sig;
    substr($flip, 10, 1) = substr($flip, 10, 1) eq 'A' ? 'B' : 'A';
    refused($send->('/tx', $body, $now, $flip),
            '403 40310', $from, 'telnyx one character changed');

    refused($send->('/tx', $body, $now, undef),
            '401 40110', $from, 'telnyx no signature header');
    refused($send->('/tx', $body, undef, $sig),
            '401 40110', $from, 'telnyx no timestamp header');
    refused($send->('/tx', $body, $now, substr($sig, 0, 44)),
            '401 40110', $from, 'telnyx signature of 32 bytes');
    refused($send->('/tx', $body, "${now}x", $sig),
            '401 40110', $from, 'telnyx timestamp not a number');
}

# ======================================================= generic HMAC

{
    # the committed vector: START from +14155550100, which is blocked by
    # the Twilio first_word test above
    my $r = post('/hm', $V{generic_body}, 'Content-Type' => 'application/json',
                 'X-Signature' => $V{generic_sig_hex});
    is($r->{status}, 200, 'hmac committed vector (hex): 200');
    is($r->{headers}{'x-optout-action'}, 'start', 'hmac vector: start');
    is($r->{var}, 'start|START', 'hmac vector: variables');
    is(new_lines(), 1, 'hmac vector: one journal line (optin)');
    my @j = $t->journal_for('+14155550100');
    is($j[-1]{action}, 'optin', 'hmac vector: the line is an opt-in');
    is(blocked('+14155550100'), 0, 'hmac vector: the rule is gone');

    # the same in base64 and with the sha256= prefix: a repeat START
    # (journaled, no reply)
    $r = post('/hm', $V{generic_body}, 'Content-Type' => 'application/json',
              'X-Signature' => $V{generic_sig_b64});
    is($r->{status}, 200, 'hmac committed vector (base64): 200');
    is(new_lines(), 1, 'hmac base64: journaled');
    $r = post('/hm', $V{generic_body}, 'Content-Type' => 'application/json',
              'X-Signature' => "sha256=$V{generic_sig_hex}");
    is($r->{status}, 200, 'hmac committed vector (sha256=hex): 200');
    is(new_lines(), 1, 'hmac sha256=: journaled');

    my $gbody = sub {
        $JSON->encode({ from => $_[0], to => '+14155550199', text => $_[1] });
    };

    my $from = from();
    my $body = $gbody->($from, 'STOP');
    accepted_stop(post('/hm', $body, 'Content-Type' => 'application/json',
                       'X-Signature' => hmac_sha256_hex($body, $HKEY)),
                  $from, 'hmac');

    $from = from();
    $body = $gbody->($from, 'STOP');
    my $sig = hmac_sha256_hex($body, $HKEY);
    refused(post('/hm', $body, 'X-Signature' => hmac_sha256_hex($body,
                                                                'y' x 40)),
            '403 40310', $from, 'hmac another key');
    refused(post('/hm', $body), '401 40110', $from, 'hmac no header');
    refused(post('/hm', $body, 'X-Signature' => substr($sig, 0, 63)),
            '401 40110', $from, 'hmac 63 hex digits');
    (my $mod = $body) =~ s/"STOP"/"START"/;
    refused(post('/hm', $mod, 'X-Signature' => $sig),
            '403 40310', $from, 'hmac body changed');
    # a timestamp scheme's MAC is not the plain one
    my $ts = time;
    refused(post('/hm', $body, 'X-Signature' =>
                 hmac_sha256_hex("$ts.$body", $HKEY), 'X-Timestamp' => $ts),
            '403 40310', $from, 'hmac: a timestamped MAC where none is');

    # with timestamp=X-Timestamp: HMAC(key, ts . "." . body)
    $from = from();
    $body = $gbody->($from, 'STOP');
    $ts = time;
    accepted_stop(post('/hmt', $body, 'X-Timestamp' => $ts,
                       'X-Signature' => hmac_sha256_hex("$ts.$body", $HKEY)),
                  $from, 'hmac with timestamp');

    $from = from();
    $body = $gbody->($from, 'STOP');
    $ts = time;
    $sig = hmac_sha256_hex("$ts.$body", $HKEY);

    # the committed vector: authentic, from 2025
    refused(post('/hmt', $V{generic_body}, 'X-Timestamp' => $V{generic_ts},
                 'X-Signature' => $V{generic_ts_sig_hex}),
            '403 40310', undef, 'hmac ts committed vector: stale');
    my $old = $ts - 301 - 5;
    refused(post('/hmt', $body, 'X-Timestamp' => $old,
                 'X-Signature' => hmac_sha256_hex("$old.$body", $HKEY)),
            '403 40310', $from, 'hmac ts: signed 306 s ago');
    my $fut = $ts + 400;
    refused(post('/hmt', $body, 'X-Timestamp' => $fut,
                 'X-Signature' => hmac_sha256_hex("$fut.$body", $HKEY)),
            '403 40310', $from, 'hmac ts: 400 s ahead');
    refused(post('/hmt', $body, 'X-Timestamp' => $ts + 1,
                 'X-Signature' => $sig),
            '403 40310', $from, 'hmac ts: timestamp changed');
    refused(post('/hmt', $mod = $gbody->($from, 'START'),
                 'X-Timestamp' => $ts, 'X-Signature' => $sig),
            '403 40310', $from, 'hmac ts: body changed');
    refused(post('/hmt', $body, 'X-Timestamp' => $ts,
                 'X-Signature' => hmac_sha256_hex($body, $HKEY)),
            '403 40310', $from, 'hmac ts: MAC without the timestamp');
    refused(post('/hmt', $body, 'X-Signature' => $sig),
            '401 40110', $from, 'hmac ts: no timestamp header');
    refused(post('/hmt', $body, 'X-Timestamp' => $ts),
            '401 40110', $from, 'hmac ts: no signature header');
}

# ======================================================= nothing recorded

my %seen;
my @nums = grep { !$seen{$_}++ } @refused;
is(scalar(grep { blocked($_) } @nums), 0,
   'no refused number has a rule in memcached (' . scalar(@nums) . ')');
my %refused = map { $_ => 1 } @nums;
is(scalar(grep { $refused{$_->{dest} // ''} } $t->journal_lines), 0,
   'no refused number is in the journal');
is(scalar(grep { $_->{_invalid} } $t->journal_lines), 0,
   'every journal line is JSON');

# ======================================================= nginx -t

my @bad = (
    [ 'optout_inbound;',
      qr/optout_inbound_verify"? is not set; use "off" to accept unsigned webhooks/ ],
    [ 'optout_inbound; optout_inbound_verify hmac %%PREFIX%%/loose.key '
      . 'header=X-Signature;', qr/loose\.key/ ],
    [ 'optout_inbound; optout_inbound_verify hmac %%PREFIX%%/hmac.key;',
      qr/header=/ ],
    [ 'optout_inbound; optout_inbound_verify telnyx %%PREFIX%%/hmac.key;',
      qr/hmac\.key/ ],
    [ 'optout_inbound; optout_inbound_verify rsa %%PREFIX%%/hmac.key;',
      qr/rsa/ ],
    [ 'optout_inbound; optout_inbound_verify twilio %%PREFIX%%/short.token;',
      qr/short\.token" holds 5 bytes, at least 32 are required/ ],
);
$t->write_file('loose.key', "$HKEY\n", 0644);
for my $b (@bad) {
    $t->write_conf($t->optout_http(server =>
        "location = /x { $b->[0] }"));
    my ($rc, $out) = $t->nginx_test;
    isnt($rc, 0, "nginx -t refuses: $b->[0]");
    like($out, $b->[1], "nginx -t says why: $b->[0]");
}

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
