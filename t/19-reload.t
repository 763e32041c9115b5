#!/usr/bin/perl

# Reload under load: clients POST 500 distinct links while "nginx -s
# reload" is issued 3 times.  Every POST gets 200 (a request is retried
# only when the connection was refused or reset before any byte of a
# response, and such retries are counted); all 500 rules and journal lines
# exist afterwards.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 2);
$t->setup;

my $CLIENTS = 4;
my $PER = 125;
my $N = $CLIENTS * $PER;

sub link_of {
    my ($n) = @_;
    my %l = (campaign => 9000 + $n);
    $l{dest} = $n % 3 ? OptoutTest::phone(600000 + $n)
                      : "reload$n\@example.com";
    return \%l;
}

# a POST before the reloads, so that the journal is not empty
my $first = { dest => OptoutTest::phone(699999), campaign => 1 };
is($t->post_one_click('/u/' . $t->token(%$first))->{status}, 200,
   'POST before the reloads: 200');

my $start = time + 0.5;
my (@reload_ok, @reload_at);

my @res = OptoutTest::run_parallel($CLIENTS, sub {
    my ($c) = @_;
    sleep 0.01 while time < $start;
    my ($ok, $retries, @bad) = (0, 0);
    for my $i (1 .. $PER) {
        my $n = $c * $PER + $i;
        my $tok = $t->token(%{ link_of($n) });
        my $r;
        for my $try (1 .. 20) {
            $r = $t->post_one_click("/u/$tok");
            # no response byte at all: refused, or reset/closed before
            # the answer began
            last unless $r->{status} == 599 && !$r->{bytes};
            $retries++;
            sleep 0.05;
        }
        if ($r->{status} == 200) { $ok++ }
        else {
            push @bad, "$n: $r->{status} "
                       . ($r->{error} // $r->{status_line} // '');
        }
        sleep 0.02;
    }
    return { ok => $ok, retries => $retries, bad => \@bad, end => time };
}, sub {
    sleep 0.01 while time < $start + 0.3;
    for my $k (1 .. 3) {
        push @reload_at, time;
        push @reload_ok, $t->reload(10) ? 1 : 0;
        sleep 0.3;
    }
});

my ($ok, $retries, @bad) = (0, 0);
my $last_end = 0;
for my $r (@res) {
    $ok += $r->{ok} // 0;
    $retries += $r->{retries} // 0;
    push @bad, @{ $r->{bad} || [] };
    push @bad, "client error: $r->{error}" if $r->{error};
    $last_end = $r->{end} if ($r->{end} // 0) > $last_end;
}
diag "retries after refused/reset connections: $retries";

is_deeply(\@reload_ok, [1, 1, 1], 'three reloads completed');
ok(@reload_at == 3 && $reload_at[2] < $last_end,
   'the reloads happened while the clients were POSTing');
is($ok, $N, "all $N POSTs got 200")
    or diag join "\n", @bad[0 .. ($#bad < 9 ? $#bad : 9)];

my @keys = map { my $l = link_of($_);
                 $t->skey(dest => $l->{dest}) } 1 .. $N;
my $got = $t->mc_get_multi(@keys) || {};
is(scalar(keys %$got), $N, "all $N rules in memcached");

my %count;
my $invalid = 0;
for my $rec ($t->journal_lines) {
    if ($rec->{_invalid}) { $invalid++; next }
    $count{ $rec->{dest} }++;
}
is($invalid, 0, 'every journal line is valid JSON');

my @missing = grep { !$count{ OptoutTest::norm_dest(link_of($_)->{dest}) } }
              1 .. $N;
is(scalar @missing, 0, "all $N destinations in the journal")
    or diag "missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]";

my $lines = 0;
$lines += $count{ OptoutTest::norm_dest(link_of($_)->{dest}) } // 0
    for 1 .. $N;
ok($lines >= $N && $lines <= $N + $retries,
   "$N journal lines (up to one more per retried request)")
    or diag "$lines lines, $retries retries";

# the server still works after the reloads
my $after = { dest => OptoutTest::phone(699998), campaign => 2 };
is($t->post_one_click('/u/' . $t->token(%$after))->{status}, 200,
   'POST after the reloads: 200');
is(scalar $t->journal_for($after->{dest}), 1, 'and its journal line');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
