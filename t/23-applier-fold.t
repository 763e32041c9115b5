#!/usr/bin/perl

# The journal applier folds the journal tail into the final state of each
# store key before it writes to memcached.  With journal lines "optout X
# (campaign 1), optin X, optout X (campaign 3)" and memcached already
# holding X from the live write, re-applying line by line deleted X and
# added it again a moment later: a check in between answered "allowed".
# Here the applied record is cleared again and again, so that the applier
# goes over the same lines pass after pass, while checks of X run in a
# tight loop: none may answer 204.  10,000 other opt-outs between the
# opt-in and the new opt-out make the old window wide, and make a pass cut
# (10,000 keys at most) before the new opt-out, so a key whose opt-in comes
# before the cut and whose opt-out after it is covered too.  A final
# opt-in deletes a rule left in memcached.  The lines are made for real
# through the management API.

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

$t->setup(server => 'location /api { optout_api; } '
                    . 'location = /check { optout_check; } '
                    . 'location = /check-open { optout_check; '
                    . 'optout_check_fail open; }');

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub api {
    my ($method, $path, $body) = @_;
    my %h = defined $body ? ('Content-Type' => 'application/json') : ();
    my $r = $t->request($method, $path, body => $body, headers => \%h);
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if length($r->{content} // '');
    return $r;
}

sub add {
    my $r = api('POST', '/api', $JSON->encode($_[0]));
    return $r->{status} . ' ' . ($r->{json}{added} // '-');
}

sub remove {
    return api('DELETE', '/api?destination='
                         . OptoutTest::_urlenc($_[0]))->{status};
}

sub check {
    my ($dest, $loc) = @_;
    my $r = $t->get(($loc // '/check') . '?to=' . OptoutTest::_urlenc($dest));
    my $code = '';
    if ($r->{status} == 403) {
        my $j = eval { $JSON->decode($r->{content}) };
        $code = $j ? $j->{errors}[0]{code} // '' : 'not JSON';
    }
    return "$r->{status} $code " . ($r->{headers}{'x-optout-campaign'} // '-');
}

# the record's newest slot (two slots, 4096 bytes apart): "inode offset"
sub applied {
    my $rec = $t->read_file('journal.log.applied') // '';
    my ($seq, $at) = (-1, '');
    for my $slot (0, 4096) {
        next unless length($rec) > $slot;
        my $l = substr $rec, $slot, 128;
        next unless $l =~
            /^optout-applied 1 (\d+) \d+ (\d+) (\d+) [0-9a-f]{8}\n/;
        ($seq, $at) = ($1, "$2 $3") if $1 > $seq;
    }
    return $at;
}

sub journal_end {
    my @st = stat $t->path('journal.log');
    return "$st[1] $st[7]";
}

sub wait_applied {
    my $deadline = time + 60;
    sleep 0.1 while applied() ne journal_end() && time < $deadline;
    return applied();
}

# both slots overwritten: the next pass applies the journal from its top
sub clear_record {
    open my $fh, '+<', $t->path('journal.log.applied') or return 0;
    binmode $fh;
    print {$fh} "\0" x 8192;
    close $fh or return 0;
    return applied() eq '';
}

my $X = OptoutTest::phone(230001);
my $Z = OptoutTest::phone(230002);
my $Y = OptoutTest::phone(230003);
my $N = 10000;

# ---------------------------------------------------------------- lines

is(add({ destination => $Z, campaign => 1 }), '200 1', 'Z: opt-out, 1');
is(remove($Z), 200, 'Z: opt-in');
is(add({ destination => $X, campaign => 1 }), '200 1', 'X: opt-out, 1');
is(remove($X), 200, 'X: opt-in');
is(add([ map { { destination => OptoutTest::phone(240000 + $_),
                 campaign => 9 } } 0 .. $N - 1 ]), "200 $N",
   "$N other opt-outs");
is(add({ destination => $X, campaign => 3 }), '200 1', 'X: opt-out, 3');
is(add({ destination => $Z, campaign => 3 }), '200 1', 'Z: opt-out, 3');

is(scalar $t->journal_for($X), 3, 'X: three journal lines');
is(join(',', map { $_->{action} } $t->journal_for($Z)),
   'optout,optin,optout', 'Z: opt-out, opt-in, opt-out');

my $KX = $t->skey(dest => $X);
my $KZ = $t->skey(dest => $Z);

like($t->mc_get($KX) // '', qr/^1 3 \d+ api sms 0$/,
     'memcached holds X with campaign 3 (the live write)');
is(check($X), '403 40300 3', 'X: blocked, campaign 3');
is(check($Z), '403 40300 3', 'Z: blocked, campaign 3');

is(wait_applied(), journal_end(), 'the applier reached the end');

# ---------------------------------------------------------------- passes

my $PASSES = 6;
my $stop = $t->path('stop-checks');

my ($res) = OptoutTest::run_parallel(1, sub {
    my %seen;
    until (-e $stop) {
        $seen{"X $_"}++ for check($X);
        $seen{"Z $_"}++ for check($Z);
    }
    return \%seen;
}, sub {
    my $passes = 0;
    for (1 .. $PASSES) {
        last unless clear_record();
        last unless wait_applied() eq journal_end();
        $passes++;
    }
    is($passes, $PASSES, "$PASSES applier passes over the whole journal");
    open my $fh, '>', $stop or die "$stop: $!";
    close $fh;
});

# "unavailable" (40301, failing closed) is no "allowed": a check may time
# out while memcached takes 10,000 writes on a small, busy machine
is(join(',', grep { !/^[XZ] 403 (?:40300 3|40301 -)$/ } sort keys %$res), '',
   'meanwhile every check of X and Z answered blocked, campaign 3 '
   . '(or unavailable)')
    or diag explain $res;
ok(($res->{'X 403 40300 3'} // 0) > 0 && ($res->{'Z 403 40300 3'} // 0) > 0,
   'checks ran during the passes');
diag "checks during the passes: " . join ', ',
     map { "$_: $res->{$_}" } sort keys %$res;

like($t->mc_get($KX) // '', qr/^1 3 \d+ api sms 0$/,
     'afterwards memcached holds X with campaign 3');
like($t->mc_get($KZ) // '', qr/^1 3 \d+ api sms 0$/,
     'and Z with campaign 3');

# ---------------------------------------------------------------- campaign

# the opt-in's delete never reached memcached: the old rule is still there

ok($t->mc_set($KX, '1 1 1700000000 api sms 0'), 'X: campaign 1 put back');
ok(clear_record(), 'record cleared');
is(wait_applied(), journal_end(), 'a pass over the whole journal');
like($t->mc_get($KX) // '', qr/^1 3 \d+ api sms 0$/,
     'X: the rule since the opt-in (campaign 3) replaced it');

# ---------------------------------------------------------------- opt-in

is(add({ destination => $Y, campaign => 5 }), '200 1', 'Y: opt-out, 5');
is(remove($Y), 200, 'Y: opt-in');

my $KY = $t->skey(dest => $Y);

is($t->mc_get($KY), undef, 'Y: not in memcached');
ok($t->mc_set($KY, '1 5 1700000000 api sms 0'),
   'Y: the rule put back (as if the delete never arrived)');
is(check($Y), '403 40300 5', 'Y: blocked from memcached');

ok(clear_record(), 'record cleared');
is(wait_applied(), journal_end(), 'a pass over the whole journal');
is($t->mc_get($KY), undef, 'Y: the final opt-in deleted it');
is(check($Y), '204  -', 'Y: allowed');

# ---------------------------------------------------------------- start

# the unapplied tail at start: "optout, optin, optout" is pending with the
# last opt-out's campaign, "optout, optin" is not pending

my $V = OptoutTest::phone(230004);
my $W = OptoutTest::phone(230005);

$t->memcached_stop;

is(add({ destination => $V, campaign => 1 }), '200 1',
   'memcached down: V opt-out, 1');
is(remove($V), 200, 'V: opt-in');
is(add({ destination => $V, campaign => 3 }), '200 1', 'V: opt-out, 3');
is(add({ destination => $W, campaign => 1 }), '200 1', 'W: opt-out, 1');
is(remove($W), 200, 'W: opt-in');

$t->stop;
$t->start;

is(check($V), '403 40300 3', 'after a restart: V pending, campaign 3');
is(check($W, '/check-open'), '204  -',
   'W not pending: unverified, failing open');

$t->memcached_start;
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set again');

is(wait_applied(), journal_end(), 'memcached back: the applier caught up');
like($t->mc_get($t->skey(dest => $V)) // '', qr/^1 3 \d+ api sms 0$/,
     'V: campaign 3 in memcached');
is($t->mc_get($t->skey(dest => $W)), undef, 'W: not in memcached');
is(check($W), '204  -', 'W: allowed');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
