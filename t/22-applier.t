#!/usr/bin/perl

# A click recorded while memcached cannot take the write (frozen with
# SIGSTOP: writes never complete, as in a partition) reaches memcached
# without a manual replay, across a reload, workers killed with SIGKILL and
# a full restart; meanwhile this node's check answers exactly "blocked"
# (40300) for it, without and with optout_cache.  The lag is logged at
# [error].  More pending opt-outs than the pending set holds make checks
# fail closed until the applier has caught up.  Batch checks consult the
# same pending set.  A frozen memcached would still execute the writes
# waiting in its socket buffers when thawed, so it is killed (SIGKILL while stopped)
# and started again empty instead: only the journal applier can bring the
# rule back.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $JSON = JSON::PP->new->utf8;

my $t = OptoutTest->new(workers => 2);

my $CHECK = 'location = /check { optout_check; } '
    . 'location = /check-open { optout_check; optout_check_fail open; }';
my $CACHE = 'optout_cache zone=ck:1m blocked=0 allowed=10m;';

$t->setup(server => $CHECK);

# the store counts as seeded: one server, its marker is marker:0
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub check_code {
    my ($dest) = @_;
    my $r = $t->get('/check?to=' . OptoutTest::_urlenc($dest));
    my $code = '';
    if ($r->{status} == 403) {
        my $j = eval { $JSON->decode($r->{content}) };
        $code = $j ? $j->{errors}[0]{code} // '' : 'not JSON';
    }
    return "$r->{status} $code " . ($r->{headers}{'x-optout-campaign'} // '-');
}

# a batch check: "status code|blocked dest:campaign,...|allowed|unverified"
sub batch {
    my ($loc, @dests) = @_;
    my $r = $t->post($loc, join("\n", @dests) . "\n",
                     'Content-Type' => 'text/plain');
    my $j = eval { $JSON->decode($r->{content}) } || {};
    my $code = $j->{errors} ? $j->{errors}[0]{code} // '' : '';
    my $bl = join ',', sort map { "$_->{destination}:$_->{campaign}" }
                            @{ $j->{blocked} || [] };
    return join '|', "$r->{status} $code", $bl, $j->{allowed} // '-',
                     $j->{unverified} ? 'unverified' : '-';
}

sub wait_rule {
    my ($dest) = @_;
    my $key = $t->skey(dest => $dest);
    my $deadline = time + 30;
    my $v;
    until (defined($v = $t->mc_get($key))) {
        last if time > $deadline;
        sleep 0.25;
    }
    return $v // '';
}

sub click {
    my ($dest, $campaign) = @_;
    my $r = $t->post_one_click('/u/' . $t->token(dest => $dest,
                                                 campaign => $campaign));
    return $r->{status};
}

sub kill_workers {
    my @old = $t->worker_pids;
    kill 'KILL', @old;
    my %old = map { $_ => 1 } @old;
    my $deadline = time + 10;
    while (time < $deadline) {
        my @now = grep { !$old{$_} } $t->worker_pids;
        return scalar @old if @now >= 2;
        sleep 0.05;
    }
    return 0;
}


# SIGKILL while stopped: the writes queued in its sockets are lost, as
# they are in a partition
sub memcached_crash {
    my $pid = $t->{mc_pid};
    kill 'KILL', $pid;
    waitpid($pid, 0);
    $t->{mc_pid} = undef;
    $t->{mc_frozen} = 0;
    $t->memcached_start;
}

my $LAG = qr/\[error\].*journal applier: .*are not known to be in memcached/;

# the applier ran and failed while memcached was unreachable
sub wait_lag {
    my ($before) = @_;
    my $deadline = time + 20;
    while (time < $deadline) {
        my @l = grep { /$LAG/ } split /\n/, $t->error_log // '';
        return 1 if @l > $before;
        sleep 0.25;
    }
    return 0;
}

sub lag_lines {
    return scalar grep { /$LAG/ } split /\n/, $t->error_log // '';
}

my $D1 = OptoutTest::phone(220001);
my $D2 = OptoutTest::phone(220002);
my $D3 = OptoutTest::phone(220003);

is(check_code($D1), '204  -', 'before the click: allowed');

# ---------------------------------------------------------------- no cache

$t->memcached_freeze;

is(click($D1, 101), 200, 'click while memcached is frozen: 200');
is(scalar $t->journal_for($D1), 1, 'its journal line');
is(check_code($D1), '403 40300 101',
   'check: blocked (40300), memcached frozen');
is(batch('/check-open', $D1, $D2), "200 |$D1:101|1|unverified",
   'batch, failing open while memcached is frozen: still blocked');

ok($t->reload(10), 'reload while memcached is frozen');
is(check_code($D1), '403 40300 101', 'check after the reload: blocked');

ok(kill_workers(), 'every worker killed with SIGKILL, new ones started');
is(check_code($D1), '403 40300 101', 'check after SIGKILL: blocked');

ok(wait_lag(0), 'the lag is logged at [error] while memcached is frozen');

memcached_crash();

like(wait_rule($D1), qr/^1 101 \d+ link sms 1$/,
     'memcached back (empty): the rule reaches it, no replay');

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set again');
is(check_code($D1), '403 40300 101', 'check from memcached: blocked');

unlike($t->error_log, qr/run "optoutctl replay"/,
       'no operator action asked for');

# ---------------------------------------------------------------- cache

# "no rule" cached, block rules not kept: only the pending set can tell

$t->write_conf($t->optout_http(server => $CHECK, http => $CACHE));
ok($t->reload(10), 'reload with optout_cache');

is(check_code($D2), '204  -', 'with the cache, before the click: allowed');

$t->memcached_freeze;

is(click($D2, 202), 200, 'click while memcached is frozen: 200');
is(check_code($D2), '403 40300 202',
   'with the cache: blocked (40300), memcached frozen');

ok(kill_workers(), 'every worker killed with SIGKILL');
is(check_code($D2), '403 40300 202', 'with the cache, after SIGKILL: blocked');

my $lag = lag_lines();
ok(wait_lag($lag), 'with the cache: the lag is logged at [error]');

memcached_crash();

like(wait_rule($D2), qr/^1 202 \d+ link sms 1$/,
     'with the cache: the rule reaches memcached');

# ---------------------------------------------------------------- restart

$t->memcached_freeze;

is(click($D3, 303), 200, 'click while memcached is frozen: 200');

$t->stop;
$t->start;
is(check_code($D3), '403 40300 303',
   'nginx restarted, memcached still frozen: blocked');

$t->stop;
memcached_crash();
is($t->mc_get($t->skey(dest => $D3)), undef,
   'memcached back, nginx down: the rule is not there yet');

$t->start;
like(wait_rule($D3), qr/^1 303 \d+ link sms 1$/,
     'nginx started after memcached is back: the rule arrives');

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
    my $deadline = time + 30;
    sleep 0.25 while applied() ne journal_end() && time < $deadline;
    return applied();
}

is(wait_applied(), journal_end(),
   'the applied record next to the journal reached its end');

# ---------------------------------------------------------------- rotation

ok(rename($t->path('journal.log'), $t->path('journal.log.1')),
   'journal renamed');
ok($t->reopen, 'nginx -s reopen');

my $D4 = OptoutTest::phone(220004);

$t->memcached_freeze;
is(click($D4, 404), 200, 'click after the rotation, memcached frozen: 200');
is(scalar $t->journal_for($D4), 1, 'its line is in the new journal');
is(check_code($D4), '403 40300 404', 'check: blocked');

memcached_crash();

like(wait_rule($D4), qr/^1 404 \d+ link sms 1$/,
     'after the rotation: the rule from the new journal arrives');
is(wait_applied(), journal_end(),
   'the applied record follows the new journal to its end');

# ---------------------------------------------------------------- overflow

# the pending set holds 10,000 opt-outs: the click after those is not
# kept there, and until the applier has caught up no check answers
# "allowed" (nor "blocked": it cannot tell)

my $N = 10000;
my $X = OptoutTest::phone(240000);
my $F = OptoutTest::phone(250001);

$t->memcached_stop;

my @res = OptoutTest::run_parallel(4, sub {
    my ($c) = @_;
    my $bad = 0;
    for (my $i = $c; $i < $N; $i += 4) {
        $bad++ unless click(OptoutTest::phone(230000 + $i), 7) == 200;
    }
    return { bad => $bad };
});
is(scalar(grep { ($_->{bad} // 1) != 0 } @res), 0,
   "$N clicks with memcached down: all 200");
unlike($t->error_log, qr/more than 10000 recorded opt-outs/,
       '10000 pending opt-outs fit');

is(click($X, 8), 200, 'one more click: 200');
like($t->error_log, qr/\[error\].*more than 10000 recorded opt-outs/,
     'the overflow is logged at [error]');

$t->memcached_start;
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set again');

my $key = $t->skey(dest => $X);
my (%seen, $v);
my $deadline = time + 60;
my %bseen;
until (defined($v = $t->mc_get($key)) || time > $deadline) {
    $seen{ check_code($X) }++;
    $bseen{ batch('/check', $X) }++;
}
like($v // '', qr/^1 8 \d+ link sms 1$/, 'its rule reaches memcached');
is(join(',', grep { !/^403 4030[01] / } sort keys %seen), '',
   'meanwhile its checks never answered "allowed"')
    or diag explain \%seen;
is(join(',', grep { !/^(?:503 40301\|\|-\|-|200 \|\Q$X\E:8\|0\|-)$/ }
                 sort keys %bseen), '',
   'nor did its batch checks (503 40301, or blocked from memcached)')
    or diag explain \%bseen;

$deadline = time + 30;
sleep 0.25 until $t->error_log =~ /\[notice\].*journal applier caught up/
                 || time > $deadline;
like($t->error_log, qr/\[notice\].*journal applier caught up/,
     'the catch-up is logged');
is(check_code($F), '204  -', 'then a destination without a rule: allowed');

my @keys = map { $t->skey(dest => OptoutTest::phone(230000 + $_)) }
           0 .. $N - 1;
is(scalar keys %{ $t->mc_get_multi(@keys) || {} }, $N,
   "all $N rules are in memcached");

$t->stop;
ok($t->error_log_clean(qr/exited on signal 9/),
   'no alert/crit/emerg in error.log but the SIGKILLs');

done_testing;
