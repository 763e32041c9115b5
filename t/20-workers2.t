#!/usr/bin/perl

# The main flows with worker_processes 2: confirmation page, POST with its
# rule and journal line, tampered tokens, idempotency.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 2);
$t->setup(workers => 2, listen => 'reuseport',
          http => "log_format pids '\$pid \$status';",
          server => 'access_log %%PREFIX%%/logs/pids.log pids;');

my @w = $t->worker_pids;
is(scalar @w, 2, 'two worker processes');

my $dest = '+447700900321';
my $tok = $t->token(dest => $dest, campaign => 77);
my $key = $t->skey(dest => $dest);

# GET (many, spread over the workers)

my $n = 0;
my $page;
for (1 .. 20) {
    my $r = $t->get("/u/$tok");
    $page //= $r;
    $n++ if $r->{status} == 200 && $r->{content} =~ /\Q+447*******21\E/
            && $r->{content} =~ /<form\b/i;
}
is($n, 20, '20 GETs: 200 with the confirmation page');
is($t->mc_get($key), undef, 'GET: no rule');
is($t->journal_count, 0, 'GET: no journal line');

# POST via the form, then twice more (idempotency)

my $r = $t->submit_form($page, "/u/$tok");
is($r->{status}, 200, 'POST form: 200');
unlike($r->{content}, qr/<form\b/i, 'POST form: confirmation page');
my $v = $t->mc_get($key);
like($v // '', qr/^1 77 \d+ link sms 1$/, 'rule stored');

$n = 0;
for (1 .. 10) {
    $n++ if $t->post_one_click("/u/$tok")->{status} == 200;
}
is($n, 10, '10 more POSTs: 200');
is($t->mc_get($key), $v, 'rule unchanged');
is($t->mc_items, 1, 'one item in memcached');
my @j = $t->journal_for($dest);
is(scalar @j, 11, '11 journal lines');
is(scalar(grep { $_->{campaign} eq '77' && $_->{scope} eq 'account'
                 && $_->{channel} eq 'sms' && $_->{kid} == 1 } @j), 11,
   'journal lines complete');

# another campaign for the same destination keeps the first

my $tok2 = $t->token(dest => $dest, campaign => 78);
is($t->post_one_click("/u/$tok2")->{status}, 200, 'campaign 78: 200');
is($t->mc_get($key), $v, 'memcached keeps campaign 77');

# tampered tokens

my $bin = OptoutTest::b64url_decode($tok);
my @bad;
for my $i (0 .. length($bin) - 1) {
    my $b = $bin;
    substr($b, $i, 1) = chr(ord(substr $b, $i, 1) ^ 0x04);
    my $bt = OptoutTest::b64url($b);
    for my $m (qw(GET POST)) {
        my $st = $m eq 'GET' ? $t->get("/u/$bt")->{status}
                             : $t->post_one_click("/u/$bt")->{status};
        push @bad, "$m byte $i: $st" unless $st == 404;
    }
}
my $st = $t->post_one_click('/u/' . substr($tok, 0, -1))->{status};
push @bad, "truncated: $st" unless $st == 404;
is(scalar @bad, 0, 'tampered tokens: 404') or diag join "\n", @bad;
is($t->mc_items, 1, 'tampered tokens: nothing stored');
is($t->journal_count, 12, 'tampered tokens: no journal line');

# other methods

is($t->request('PUT', "/u/$tok", body => '')->{status}, 405, 'PUT: 405');

# concurrent POSTs of distinct links on both workers

my @res = OptoutTest::run_parallel(4, sub {
    my ($c) = @_;
    my $ok = 0;
    for my $i (1 .. 25) {
        my $d = OptoutTest::phone(700000 + $c * 100 + $i);
        $ok++ if $t->post_one_click('/u/' . $t->token(dest => $d,
                                                      campaign => $i))
                   ->{status} == 200;
    }
    return { ok => $ok };
});
my $ok = 0;
$ok += $_->{ok} // 0 for @res;
is($ok, 100, '100 concurrent POSTs: 200');
my @keys = map { my $c = $_; map { $t->skey(dest =>
                 OptoutTest::phone(700000 + $c * 100 + $_)) } 1 .. 25 } 0 .. 3;
is(scalar(keys %{ $t->mc_get_multi(@keys) || {} }), 100, '100 rules stored');
is($t->journal_count, 112, '112 journal lines');

# reuseport spreads the connections: both workers answered

my %served;
for ($t->file_lines('logs/pids.log')) {
    $served{$1}++ if /^(\d+) /;
}
is_deeply([sort { $a <=> $b } keys %served], [sort { $a <=> $b } @w],
          'both workers served requests, and no other process did');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
