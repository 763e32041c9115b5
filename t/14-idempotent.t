#!/usr/bin/perl

# Idempotency: the same link POSTed 3 times gives 3 journal lines and one
# rule; a later link of another campaign for the same destination keeps
# the first campaign in memcached (memcached "add" semantics).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
$t->setup;

my $dest = '+447700900200';
my $key = $t->skey(dest => $dest);
my $tok = $t->token(dest => $dest, campaign => 1001);

for my $i (1 .. 3) {
    is($t->post_one_click("/u/$tok")->{status}, 200, "POST $i: 200");
    sleep 1 if $i == 1;     # a later write would carry a later time
}

my @j = $t->journal_for($dest);
is(scalar @j, 3, 'three journal lines');
is(scalar(grep { $_->{campaign} eq '1001' } @j), 3,
   'all three with the campaign');
is($t->mc_stats->{curr_items}, 1, 'one item in memcached');
my $v1 = $t->mc_get($key);
like($v1 // '', qr/^1 1001 \d+ link sms 1$/, 'the rule');

# campaign A then campaign B for the same destination

my $dest2 = 'someone@example.com';
my $key2 = $t->skey(dest => $dest2);
my $tok_a = $t->token(dest => $dest2, campaign => 5);
my $tok_b = $t->token(dest => $dest2, campaign => 6);

is($t->post_one_click("/u/$tok_a")->{status}, 200, 'campaign A: 200');
my $va = $t->mc_get($key2);
like($va // '', qr/^1 5 \d+ link email 1$/, 'campaign A stored');
sleep 1;
is($t->post_one_click("/u/$tok_b")->{status}, 200, 'campaign B: 200');
is($t->mc_get($key2), $va, 'memcached keeps campaign A (value unchanged)');
is($t->mc_get($key), $v1, 'first rule unchanged');

@j = $t->journal_for($dest2);
is(scalar @j, 2, 'two journal lines for the second destination');
is_deeply([map { $_->{campaign} } @j], ['5', '6'],
          'journal holds both campaigns in order');

# a sender-scoped link for the same destination is a separate rule

my $tok_s = $t->token(dest => $dest2, campaign => 7, sender => 'ACME');
is($t->post_one_click("/u/$tok_s")->{status}, 200, 'sender scope: 200');
like($t->mc_get($t->skey(dest => $dest2, sender => 'ACME')) // '',
     qr/^1 7 \d+ link email 1$/, 'sender rule stored separately');
is($t->mc_get($key2), $va, 'account rule still campaign A');
is($t->mc_stats->{curr_items}, 3, 'three items in memcached');

# a rule put in memcached by someone else is not overwritten

my $dest3 = '+447700900201';
my $key3 = $t->skey(dest => $dest3);
ok($t->mc_set($key3, '1 99 1700000000 api sms 0'), 'preset rule');
is($t->post_one_click('/u/' . $t->token(dest => $dest3, campaign => 8))
   ->{status}, 200, 'POST over a preset rule: 200');
is($t->mc_get($key3), '1 99 1700000000 api sms 0', 'preset rule kept');
is(scalar $t->journal_for($dest3), 1, 'journal line still written');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
