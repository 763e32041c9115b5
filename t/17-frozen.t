#!/usr/bin/perl

# A frozen memcached (SIGSTOP) must not block the worker: with one worker
# process, while a POST waits for memcached, another location answers
# within 400 ms: a generous bound for a noisy machine, far below the 2 s a
# blocked worker would wait.  The POST still gets 200 and its journal line.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
# a long store timeout keeps the POST in flight long enough to look at it
$t->setup(store_timeout => '2s');

# warm up: the worker has a working memcached connection
my $warm = { dest => OptoutTest::phone(500001), campaign => 1 };
is($t->post_one_click('/u/' . $t->token(%$warm))->{status}, 200,
   'warm-up POST: 200');
ok(defined $t->mc_get($t->skey(dest => $warm->{dest})),
   'warm-up rule stored');
is($t->get('/ping')->{status}, 204, '/ping answers 204');

$t->memcached_freeze;

my $l = { dest => OptoutTest::phone(500002), campaign => 2 };
my $tok = $t->token(%$l);
my $sock = $t->send_request('POST', "/u/$tok", 'List-Unsubscribe=One-Click',
    'Content-Type' => 'application/x-www-form-urlencoded');
ok($sock, 'POST sent without waiting');

# the journal line is written before memcached is asked
my $deadline = time + 3;
until (grep { ($_->{dest} // '') eq $l->{dest} } $t->journal_lines) {
    last if time > $deadline;
    sleep 0.005;
}
ok(scalar $t->journal_for($l->{dest}), 'journal line written (POST in flight)');

my $sel = IO::Select->new($sock);
my (@lat, $in_flight);
for (1 .. 10) {
    last if $sel->can_read(0);        # the POST has been answered
    my $t0 = time;
    my $r = $t->get('/ping');
    my $dt = time - $t0;
    if (!$sel->can_read(0)) {
        $in_flight++;
        push @lat, [$dt, $r->{status}];
    }
    sleep 0.1;
}
ok($in_flight, 'at least one /ping while the POST waits for memcached')
    or diag 'the POST was answered before any /ping';
my @slow = grep { $_->[0] >= 0.400 || $_->[1] != 204 } @lat;
is(scalar @slow, 0,
   '/ping answers 204 within 400 ms (not blocked) while the POST waits')
    or diag join ', ', map { sprintf '%.1f ms (%s)', $_->[0] * 1000, $_->[1] }
                       @lat;
diag join ', ', map { sprintf '%.1f ms', $_->[0] * 1000 } @lat;

my $r = $t->read_response($sock, 15, 'POST');
is($r->{status}, 200, 'the POST still gets 200');
is(scalar $t->journal_for($l->{dest}), 1, 'exactly one journal line for it');

$t->memcached_thaw;

# after the thaw the rule arrives (background retry), within ~10 s
my $key = $t->skey(dest => $l->{dest});
$deadline = time + 15;
my $v;
until (defined($v = $t->mc_get($key))) {
    last if time > $deadline;
    sleep 0.25;
}
like($v // '', qr/^1 2 \d+ link sms 1$/, 'rule stored after the thaw');

# and the worker is fine afterwards
is($t->get('/ping')->{status}, 204, '/ping after the thaw');
my $l3 = { dest => OptoutTest::phone(500003), campaign => 3 };
is($t->post_one_click('/u/' . $t->token(%$l3))->{status}, 200,
   'POST after the thaw: 200');
like($t->mc_get($t->skey(dest => $l3->{dest})) // '', qr/^1 3 /,
     'POST after the thaw: rule stored');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
