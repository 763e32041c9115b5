#!/usr/bin/perl

# A pass of the journal applier reads the journal's end, then writes the
# final state of each destination it read.  A click recorded after that
# read, whose live write lands before the pass's delete of the same
# destination (an opt-in the pass read), is removed from memcached by
# that delete.  The click must still answer "blocked" at once: an opt-out
# recorded while a pass runs joins the pending set until a later pass has
# applied it.
#
# The pass is held in the middle by a FaultProxy in front of memcached:
# its write of Y (already in memcached: "NOT_STORED") is stalled, then,
# after the click of X, released while the reply to its delete of X is
# stalled in turn: X is deleted in memcached, the pass has not ended, and
# the next pass has not run.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;
use FaultProxy;

OptoutTest->require_module;

my $JSON = JSON::PP->new->utf8;

my $t = OptoutTest->new(workers => 1);
$t->memcached_start;

my $proxy = FaultProxy->new(upstream => $t->mc_port);

$t->setup(store_timeout => '20s', omit => { optout_store => 1 },
          http => 'optout_store "--SERVER=127.0.0.1:' . $proxy->port . '";',
          server => 'location = /check { optout_check; } '
                  . 'location /api { optout_api; }');

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub check_code {
    my ($dest) = @_;
    my $r = $t->get('/check?to=' . OptoutTest::_urlenc($dest));
    my $code = '';
    if ($r->{status} == 403) {
        my $j = eval { $JSON->decode($r->{content}) };
        $code = $j ? $j->{errors}[0]{code} // '' : 'not JSON';
    }
    return "$r->{status} $code";
}

sub click {
    my ($dest) = @_;
    return $t->post_one_click('/u/' . $t->token(dest => $dest,
                                                campaign => 9))->{status};
}

sub optin {
    my ($dest) = @_;
    return $t->request('DELETE',
                       '/api?destination=' . OptoutTest::_urlenc($dest)
                      )->{status};
}

sub journal_size { -s $t->path('journal.log') // 0 }

# the newer of the two slots of "journal.log.applied"
sub applied_offset {
    my $raw = $t->read_file('journal.log.applied') // '';
    my ($seq, $off) = (-1, -1);
    while ($raw =~ /optout-applied 1 (\d+) \d+ \d+ (\d+) /g) {
        ($seq, $off) = ($1, $2) if $1 > $seq;
    }
    return $off;
}

# until a pass has applied the journal to its end (a bound, 30 s)
sub settled {
    my $deadline = time + 30;
    sleep 0.05 until applied_offset() == journal_size() || time > $deadline;
    return applied_offset() == journal_size();
}

my ($X, $Y);
my $held = 0;

# a pass starts every 5 s: the lines of Y and X go in right after one
for my $try (1 .. 3) {
    ($Y, $X) = (OptoutTest::phone(24000 + 2 * $try),
                OptoutTest::phone(24001 + 2 * $try));

    is(click('+447700900999'), 200, "try $try: a click to settle on");
    ok(settled(), "try $try: the applier has caught up");

    $proxy->set('stall', re => qr/NOT_STORED/);

    is(click($Y), 200, "try $try: Y opts out");
    is(click($X), 200, "try $try: X opts out");
    is(optin($X), 200, "try $try: X opts in again (API DELETE)");
    is(check_code($X), '204 ', "try $try: X is allowed");

    # the next pass folds Y (add), X (delete): its add of Y is held
    my $deadline = time + 15;
    sleep 0.05 until $proxy->triggered || time > $deadline;

    if ($proxy->triggered) {
        $held = 1;
        last;
    }

    $proxy->set('pass');
}

ok($held, 'a pass is held at its write of Y');

SKIP: {
    skip 'no pass was held', 6 unless $held;

    # recorded after the pass read the journal; its live add lands first
    is(click($X), 200, 'X opts out again while the pass is held');
    is(check_code($X), '403 40300', 'X is blocked');

    # the pass goes on, deletes X in memcached, and is held again
    my $n = $proxy->triggered;
    $proxy->set('stall', re => qr/DELETED|NOT_FOUND/);
    my $deadline = time + 15;
    sleep 0.05 until !defined $t->mc_get($t->skey(dest => $X))
                     || time > $deadline;
    ok(!defined $t->mc_get($t->skey(dest => $X)),
       'the held pass deleted X in memcached');

    is(check_code($X), '403 40300',
       'X is still blocked while memcached lacks its rule');

    $proxy->set('pass');

    $deadline = time + 30;
    sleep 0.1 until defined $t->mc_get($t->skey(dest => $X))
                    || time > $deadline;
    like($t->mc_get($t->skey(dest => $X)) // '', qr/^1 9 \d+ link sms 1$/,
         'the next pass writes X again');
    is(check_code($X), '403 40300', 'X is blocked from memcached');
}

$proxy->stop;
$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
