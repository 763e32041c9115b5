#!/usr/bin/perl

# GET and HEAD of valid links (repeated) leave memcached and the journal
# untouched; a POST afterwards shows that the checks would notice a write.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
$t->setup;

my @links = (
    { dest => '+447700900123', campaign => 42 },
    { dest => 'jane.doe@example.org', campaign => 1 },
    { dest => '+33612345678', campaign => 123456789, sender => 'SHOP' },
    { dest => 'x@example.net', campaign => 9, sender => '+447700900000' },
);

for my $l (@links) {
    $l->{token} = $t->token(%$l);
    $l->{key} = $t->skey(dest => $l->{dest}, sender => $l->{sender});
}

my $n = 0;
for my $round (1 .. 3) {
    for my $l (@links) {
        my $r = $t->get("/u/$l->{token}");
        $n++ if $r->{status} == 200;
        $r = $t->head("/u/$l->{token}");
        $n++ if $r->{status} == 200;
        $r = $t->get("/u/$l->{token}", 'Content-Type' =>
                     'application/x-www-form-urlencoded');
        $n++ if $r->{status} == 200;
    }
}
is($n, 3 * 3 * @links, 'every GET and HEAD answered 200');

my $st = $t->mc_stats;
ok($st, 'memcached answers stats');
is($st->{curr_items}, 0, 'no item in memcached');
is($st->{cmd_set}, 0, 'no set/add command reached memcached');
for my $l (@links) {
    is($t->mc_get($l->{key}), undef, "no rule for $l->{dest}");
}

ok(!-e $t->path('journal.log') || -s $t->path('journal.log') == 0,
   'journal is empty');

my @log = $t->log_lines('logs/optout.log', qr/^(?:GET|HEAD) 200 r=confirm /,
                        3 * 3 * @links);
is(scalar(grep { /^(?:GET|HEAD) 200 r=confirm / } @log), 3 * 3 * @links,
   'access log: every GET/HEAD has $optout_result confirm');
is(scalar(grep { /r=recorded/ } @log), 0, 'access log: nothing recorded');

# control: a POST is seen by the same checks

my $r = $t->post_one_click("/u/$links[0]{token}");
is($r->{status}, 200, 'control POST: 200');
is($t->mc_stats->{curr_items}, 1, 'control POST: one item in memcached');
ok(defined $t->mc_get($links[0]{key}), 'control POST: rule stored');
is($t->journal_count, 1, 'control POST: one journal line');

# GET after the POST still changes nothing

for (1 .. 3) {
    $t->get("/u/$links[0]{token}");
    $t->head("/u/$links[0]{token}");
}
is($t->mc_stats->{curr_items}, 1, 'GET after POST: still one item');
is($t->journal_count, 1, 'GET after POST: still one journal line');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
