#!/usr/bin/perl

# optout_check batch: POST to the check location with one destination per
# line, a JSON array of strings or {"sender":..., "destinations":[...]}.
# Answer 200 {"checked","allowed","blocked":[...],"invalid":[...]}; more
# than 10,000 destinations -> 413, malformed JSON -> 400, store
# unavailable -> 503 (fail closed), all JSON.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use POSIX qw(strftime);
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8->canonical;

my $t = OptoutTest->new(workers => 1);
$t->setup(server => <<'EOF');
        location = /check { optout_check; }
        location = /check-hdr {
            optout_check;
            optout_check_sender $http_x_from;
        }
        location = /check-a {
            optout_check;
            optout_namespace a;
        }
EOF

my $A    = '+447700900301';     # account-wide, campaign 42 (link)
my $S    = '+447700900302';     # sender ACME, campaign 300 (link)
my $R    = '+447700900303';     # account-wide, campaign 99 (replay, known t)
my $N    = '+447700900304';     # namespace a, campaign 5 (replay)
my $FREE = '+447700900399';
my $rt = 1795424400;
my $since_rt = strftime('%Y-%m-%dT%H:%M:%SZ', gmtime $rt);
my $ISO = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;

sub replay {
    my ($file) = @_;
    return $t->ctl('replay', '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                   '--store-secret', $t->path('store.key'),
                   $t->path($file));
}

sub batch {
    my ($path, $body, $ctype, %h) = @_;
    my $r = $t->request('POST', $path, body => $body,
                        headers => { 'Content-Type' => $ctype, %h });
    $r->{json} = eval { $JSON->decode($r->{content}) };
    return $r;
}

# check_batch($r, $what, total => N, allowed => A, blocked => {dest =>
#             [campaign, scope, since]}, invalid => {index => dest})
sub check_batch {
    my ($r, $what, %e) = @_;
    my $ok = is($r->{status}, 200, "$what: 200");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: JSON");
    my $j = ref $r->{json} eq 'HASH' ? $r->{json} : {};
    my @bl = ref $j->{blocked} eq 'ARRAY' ? @{ $j->{blocked} } : ();
    my @inv = ref $j->{invalid} eq 'ARRAY' ? @{ $j->{invalid} } : ();
    my $nb = scalar keys %{ $e{blocked} || {} };
    my $ni = scalar keys %{ $e{invalid} || {} };
    $ok &= is($j->{allowed}, $e{allowed}, "$what: allowed count");
    $ok &= is(scalar @bl, $nb, "$what: blocked entries");
    $ok &= is(scalar @inv, $ni, "$what: invalid entries");
    $ok &= is($j->{checked}, $e{total}, "$what: checked");
    $ok &= is($j->{unverified}, undef, "$what: not unverified");
    for my $b (@bl) {
        my $want = $e{blocked}{ $b->{destination} // '' };
        unless ($want) {
            $ok &= fail("$what: unexpected blocked "
                        . ($b->{destination} // 'undef'));
            next;
        }
        my ($camp, $scope, $since) = @$want;
        $ok &= is($b->{campaign}, $camp, "$what: $b->{destination} campaign");
        $ok &= is($b->{scope}, $scope, "$what: $b->{destination} scope");
        if (defined $since) {
            $ok &= is($b->{since}, $since, "$what: $b->{destination} since");
        } else {
            $ok &= like($b->{since} // '', $ISO,
                        "$what: $b->{destination} since ISO 8601");
        }
    }
    for my $i (@inv) {
        my $want = $e{invalid}{ $i->{index} // -1 };
        $ok &= ok(defined $want, "$what: invalid index "
                  . ($i->{index} // 'undef') . ' expected');
        $ok &= is($i->{destination}, $want, "$what: invalid destination")
            if defined $want;
        $ok &= ok(defined $i->{reason} && length $i->{reason},
                  "$what: invalid reason");
    }
    like($r->{content}, qr/"campaign":"/, "$what: campaigns are strings")
        if $nb;
    diag "answer: $r->{status} " . substr($r->{content}, 0, 2000)
        unless $ok;
    return $ok;
}

sub json_error {
    my ($r, $what, $status, $code) = @_;
    my $ok = is($r->{status}, $status, "$what: $status");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json\b},
                "$what: JSON");
    my $e = ref $r->{json} eq 'HASH' && ref $r->{json}{errors} eq 'ARRAY'
            ? $r->{json}{errors} : [];
    $ok &= is(scalar @$e, 1, "$what: one error");
    $ok &= is($e->[0]{code}, $code, "$what: code $code");
    $ok &= ok(length($e->[0]{title} // '') && length($e->[0]{detail} // ''),
              "$what: title and detail");
    diag "answer: $r->{status} " . substr($r->{content}, 0, 500)
        unless $ok;
    return $ok;
}

# ---------------------------------------------------------------- seed

$t->write_file('empty.journal', '');
my ($rc, $out) = replay('empty.journal');
is($rc, 0, 'store seeded') or diag $out;
is($t->post_one_click('/u/' . $t->token(dest => $A, campaign => 42))
     ->{status}, 200, 'link POST: account rule for A');
is($t->post_one_click('/u/' . $t->token(dest => $S, campaign => 300,
                                        sender => 'ACME'))->{status}, 200,
   'link POST: ACME rule for S');
my $jl = sub {
    my ($tt, $ns, $dest, $camp) = @_;
    return qq({"t":$tt,"action":"optout","ns":"$ns","dest":"$dest",)
        . qq("scope":"account","campaign":"$camp","source":"api",)
        . qq("channel":"sms","client":"","kid":0}\n);
};
$t->write_file('hand.journal', $jl->("$rt.500", '', $R, 99)
                               . $jl->($rt, 'a', $N, 5));
($rc, $out) = replay('hand.journal');
is($rc, 0, 'replay of the hand-written journal') or diag $out;
like($out, qr/2 added/, 'replay added both rules') or diag $out;


# ---------------------------------------------------------------- lines

check_batch(batch('/check', "$A\n$FREE\nnot-a-phone\n$R\n", 'text/plain'),
    'lines', total => 4, allowed => 1,
    blocked => { $A => ['42', 'account'], $R => ['99', 'account', $since_rt] },
    invalid => { 2 => 'not-a-phone' });

check_batch(batch('/check', "$A\r\n$FREE\r\n", 'text/plain'),
    'lines with CRLF', total => 2, allowed => 1,
    blocked => { $A => ['42', 'account'] });

check_batch(batch('/check', "$FREE\n$A", 'text/plain'),
    'lines, no final newline', total => 2, allowed => 1,
    blocked => { $A => ['42', 'account'] });

check_batch(batch('/check', "00447700900301\n+44 7700 900399\n",
                  'text/plain'),
    'lines: normalized', total => 2, allowed => 1,
    blocked => { $A => ['42', 'account'] });

check_batch(batch('/check?from=ACME', "$S\n$A\n$FREE\n", 'text/plain'),
    'lines, sender from $arg_from', total => 3, allowed => 1,
    blocked => { $S => ['300', 'sender'], $A => ['42', 'account'] });

check_batch(batch('/check', "$S\n", 'text/plain'),
    'lines, no sender: sender rule does not block', total => 1,
    allowed => 1);

check_batch(batch('/check-hdr', "$S\n", 'text/plain', 'X-From' => 'acme'),
    'lines, sender from optout_check_sender $http_x_from', total => 1,
    allowed => 0, blocked => { $S => ['300', 'sender'] });

# ---------------------------------------------------------------- JSON

check_batch(batch('/check', $JSON->encode([$A, $FREE, 'x', $S]),
                  'application/json'),
    'JSON array', total => 4, allowed => 2,
    blocked => { $A => ['42', 'account'] }, invalid => { 2 => 'x' });

check_batch(batch('/check?from=ACME', $JSON->encode([$S]),
                  'application/json'),
    'JSON array, sender from $arg_from', total => 1, allowed => 0,
    blocked => { $S => ['300', 'sender'] });

check_batch(batch('/check',
                  $JSON->encode({ sender => 'acme',
                                  destinations => [$FREE, $S, $A] }),
                  'application/json'),
    'JSON object with sender', total => 3, allowed => 1,
    blocked => { $S => ['300', 'sender'], $A => ['42', 'account'] });

check_batch(batch('/check?from=OTHER',
                  $JSON->encode({ sender => 'ACME',
                                  destinations => [$FREE, $S, $A, ''] }),
                  'application/json'),
    'JSON object with sender (wins over $arg_from)', total => 4,
    allowed => 1,
    blocked => { $S => ['300', 'sender'], $A => ['42', 'account'] },
    invalid => { 3 => '' });

check_batch(batch('/check', $JSON->encode({ destinations => [$S, $A] }),
                  'application/json'),
    'JSON object without sender', total => 2, allowed => 1,
    blocked => { $A => ['42', 'account'] });

check_batch(batch('/check-a', $JSON->encode([$N, $A]), 'application/json'),
    'JSON array, namespace a', total => 2, allowed => 1,
    blocked => { $N => ['5', 'account', $since_rt] });

json_error(batch('/check', '["+447700900301", ', 'application/json'),
           'malformed JSON array', 400, '40003');
json_error(batch('/check', '{"destinations": "+447700900301"}',
                 'application/json'),
           'destinations is not an array', 400, '40003');
# well-formed JSON, but not strings: each entry is invalid
check_batch(batch('/check', '[1, "+447700900301"]', 'application/json'),
    'array with a number', total => 2, allowed => 0,
    blocked => { $A => ['42', 'account'] }, invalid => { 0 => '' });

json_error(batch('/check', '', 'text/plain'), 'empty body', 400, '40004');
json_error(batch('/check', "\n \r\n\n", 'text/plain'), 'blank lines', 400,
           '40004');
json_error(batch('/check', '[]', 'application/json'), 'empty array', 400,
           '40004');
json_error(batch('/check', '{"sender":"not a sender!","destinations":[]}',
                 'application/json'),
           'invalid sender in the body', 400, '40002');
json_error(batch('/check', '{"sender":7,"destinations":["+447700900399"]}',
                 'application/json'),
           'sender is not a string', 400, '40002');
json_error(batch('/check?from=not%20a%20sender!', "$FREE\n", 'text/plain'),
           'invalid sender from $arg_from', 400, '40002');
json_error(batch('/check', '[1,', 'application/json'),
           'truncated JSON', 400, '40003');

# ---------------------------------------------------------------- echo

# the invalid echo: JSON escapes, UTF-8 as is, 64 characters at most
my $e64 = "\x{e9}" x 70;                 # 70 characters, 140 bytes
my $quote = qq(a"b\\c\td);
check_batch(batch('/check', $JSON->encode([$e64, $quote, $FREE]),
                  'application/json'),
    'echo of JSON strings', total => 3, allowed => 1,
    invalid => { 0 => "\x{e9}" x 64, 1 => $quote });

# bytes that are not UTF-8 come back as U+FFFD, one each
check_batch(batch('/check', "ab\xff\xc3cd\n\xe2\x82\xac" . ('x' x 70) . "\n",
                  'text/plain'),
    'echo of lines', total => 2, allowed => 0,
    invalid => { 0 => "ab\x{fffd}\x{fffd}cd",
                 1 => "\x{20ac}" . ('x' x 63) });

# ---------------------------------------------------------------- limits

my @many = map { OptoutTest::phone(10_000_000 + $_) } 0 .. 9_999;
$many[17] = $A;
$many[9_999] = $R;
$many[5_000] = 'bad';
check_batch(batch('/check', join("\n", @many) . "\n", 'text/plain'),
    '10,000 lines', total => 10_000, allowed => 9_997,
    blocked => { $A => ['42', 'account'], $R => ['99', 'account'] },
    invalid => { 5_000 => 'bad' });
check_batch(batch('/check', $JSON->encode(\@many), 'application/json'),
    '10,000 in a JSON array', total => 10_000, allowed => 9_997,
    blocked => { $A => ['42', 'account'], $R => ['99', 'account'] },
    invalid => { 5_000 => 'bad' });

push @many, $FREE;
json_error(batch('/check', join("\n", @many) . "\n", 'text/plain'),
           '10,001 lines', 413, '41300');
json_error(batch('/check', $JSON->encode(\@many), 'application/json'),
           '10,001 in a JSON array', 413, '41300');

# ---------------------------------------------------------------- store

$t->memcached_stop;
json_error(batch('/check', "$A\n$FREE\n", 'text/plain'),
           'memcached down', 503, '40301');
$t->memcached_start;     # empty, no marker
json_error(batch('/check', "$A\n$FREE\n", 'text/plain'),
           'not seeded', 503, '40301');
my $WHY = qr/The (?:store is not seeded|opt-out rules could not be read)/;
is(scalar(() = ($t->error_log // '')
                   =~ /\[error\].*batch check answered 503: $WHY/g),
   2, 'both 503 answers are logged at [error] with their reason');
($rc, $out) = replay('journal.log');
is($rc, 0, 'reseeded from the journal') or diag $out;
# libmemcached retries a failed server after 1 s
my $r;
my $until = time + 5;
do { $r = batch('/check', "$A\n$FREE\n", 'text/plain'); sleep 0.1 }
    until $r->{status} != 503 || time > $until;
check_batch($r,
    'reseeded', total => 2, allowed => 1,
    blocked => { $A => ['42', 'account'] });

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
