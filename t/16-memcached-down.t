#!/usr/bin/perl

# memcached down: 1,000 POSTs of distinct destinations, memcached stopped
# after 300 of them; every POST still gets 200 and a journal line.  Then
# (1) memcached restarted empty, no replay: the module's background retry
# stores the rules that failed within about 10 s; (2) memcached restarted
# empty again, "optoutctl replay" of the journal restores all 1,000 rules.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
$t->setup;

my $N = 1000;
my $DOWN_AT = 300;

my (@dest, @key, @camp);
for my $i (1 .. $N) {
    # alternate phones and emails, some sender-scoped
    my %l = (campaign => 500 + $i);
    if ($i % 2) {
        $l{dest} = OptoutTest::phone(300000 + $i);
    } else {
        $l{dest} = "user$i\@example.com";
    }
    $l{sender} = 'BRAND' if $i % 5 == 0;
    push @dest, \%l;
    push @key, $t->skey(dest => $l{dest}, sender => $l{sender});
    push @camp, $l{campaign};
}

my (@fail, $t_down);
for my $i (1 .. $N) {
    if ($i == $DOWN_AT + 1) {
        $t->memcached_stop;
        $t_down = time;
    }
    my $l = $dest[$i - 1];
    my $r = $t->post_one_click('/u/' . $t->token(%$l));
    push @fail, "POST $i: $r->{status} " . ($r->{error} // '')
        unless $r->{status} == 200;
}
diag sprintf '%d POSTs with memcached down took %.1f s', $N - $DOWN_AT,
    time - $t_down;

is(scalar @fail, 0, "all $N POSTs answered 200, memcached down after "
                    . $DOWN_AT)
    or diag join "\n", @fail[0 .. ($#fail < 9 ? $#fail : 9)];
is($t->journal_count, $N, "$N journal lines");

my %jd;
$jd{ $_->{dest} . '|' . ($_->{sender} // '') }++ for $t->journal_lines;
is(scalar(grep { !$jd{ OptoutTest::norm_dest($_->{dest}) . '|'
                       . ($_->{sender} // '') } } @dest),
   0, 'every destination is in the journal');

# ---------------------------------------------------------------- retry

$t->memcached_start;    # same port, empty

my @down_keys = @key[$DOWN_AT .. $N - 1];
my $found = 0;
my $deadline = time + 15;
while (time < $deadline) {
    my $got = $t->mc_get_multi(@down_keys) || {};
    $found = keys %$got;
    last if $found == @down_keys;
    sleep 0.5;
}
is($found, scalar @down_keys,
   'background retry stored the rules that failed, within 15 s');

my $got = $t->mc_get_multi(@down_keys) || {};
my $wrong = 0;
for my $i ($DOWN_AT .. $N - 1) {
    my $v = $got->{ $key[$i] } // next;
    my $ch = $dest[$i]{dest} =~ /^\+/ ? 'sms' : 'email';
    $wrong++ unless $v =~ /^1 $camp[$i] \d+ link $ch 1$/;
}
is($wrong, 0, 'retried rules have the right values');

# a POST now goes straight to memcached

my $extra = { dest => OptoutTest::phone(399999), campaign => 9 };
is($t->post_one_click('/u/' . $t->token(%$extra))->{status}, 200,
   'POST after memcached is back: 200');
my $v = $t->mc_get($t->skey(dest => $extra->{dest}));
like($v // '', qr/^1 9 \d+ link sms 1$/, 'and its rule is stored');

# ---------------------------------------------------------------- replay

SKIP: {
    skip 'build/optoutctl not built', 4 unless -x OptoutTest::ctl_path();

    $t->memcached_restart;
    is($t->mc_items, 0, 'memcached restarted empty');

    my ($rc, $out) = $t->ctl('replay',
                             '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                             '--store-secret', $t->path('store.key'),
                             $t->path('journal.log'));
    is($rc, 0, 'optoutctl replay exits 0') or diag $out;

    $got = $t->mc_get_multi(@key) || {};
    is(scalar(keys %$got), $N, "all $N rules in memcached after replay");

    $wrong = 0;
    for my $i (0 .. $N - 1) {
        my $v = $got->{ $key[$i] } // next;
        my $ch = $dest[$i]{dest} =~ /^\+/ ? 'sms' : 'email';
        $wrong++ unless $v =~ /^1 $camp[$i] \d+ \w+ $ch \d+$/;
    }
    is($wrong, 0, 'replayed rules carry campaign and channel');
}

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
