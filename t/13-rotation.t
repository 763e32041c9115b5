#!/usr/bin/perl

# Key rotation: with "optout_secret 2 new.key; optout_secret 1 old.key;"
# tokens of both key ids verify (and each id is bound to its own key);
# after key 1 is removed and nginx reloaded, key-1 tokens get 404.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
$t->setup(keys => [[2, 'new'], [1, 'old']]);

my $d_old  = '+447700900101';
my $d_new  = '+447700900102';
my $d_old2 = '+447700900103';
my $d_new2 = '+447700900104';

my $tok_old = $t->token(dest => $d_old, campaign => 11, key => 'old');
my $tok_new = $t->token(dest => $d_new, campaign => 12, key => 'new');

is($t->get("/u/$tok_old")->{status}, 200, 'key 1 token: GET 200');
is($t->get("/u/$tok_new")->{status}, 200, 'key 2 token: GET 200');

# the key id selects the key: id 2 with the old key's tag (and v.v.) fails
is($t->get('/u/' . $t->token(dest => $d_old, campaign => 11, key => 'old',
                             key_id => 2))->{status},
   404, 'key id 2 with a tag of key 1: 404');
is($t->get('/u/' . $t->token(dest => $d_new, campaign => 12, key => 'new',
                             key_id => 1))->{status},
   404, 'key id 1 with a tag of key 2: 404');

is($t->post_one_click("/u/$tok_old")->{status}, 200, 'key 1 token: POST 200');
is($t->post_one_click("/u/$tok_new")->{status}, 200, 'key 2 token: POST 200');

like($t->mc_get($t->skey(dest => $d_old)) // '', qr/^1 11 \d+ link sms 1$/,
     'key 1 rule: key id 1 in the value');
like($t->mc_get($t->skey(dest => $d_new)) // '', qr/^1 12 \d+ link sms 2$/,
     'key 2 rule: key id 2 in the value');
is(($t->journal_for($d_old))[0]{kid}, 1, 'key 1 journal: kid 1');
is(($t->journal_for($d_new))[0]{kid}, 2, 'key 2 journal: kid 2');

my @log = $t->log_lines('logs/optout.log', qr/^POST 200 r=recorded .* k=2 /, 1);
ok((grep { /^POST 200 r=recorded .* k=2 / } @log),
   'access log: $optout_key_id 2');

# remove key 1, reload

$t->write_conf($t->optout_http(keys => [[2, 'new']]));
my ($rc, $out) = $t->nginx_test;
is($rc, 0, 'config without key 1: nginx -t ok') or diag $out;
ok($t->reload, 'reload');

my $tok_old2 = $t->token(dest => $d_old2, campaign => 13, key => 'old');
my $tok_new2 = $t->token(dest => $d_new2, campaign => 14, key => 'new');

is($t->get("/u/$tok_old")->{status}, 404, 'after reload: key 1 token GET 404');
is($t->post_one_click("/u/$tok_old2")->{status}, 404,
   'after reload: key 1 token POST 404');
is($t->mc_get($t->skey(dest => $d_old2)), undef,
   'after reload: no rule for the key 1 token');
is(scalar $t->journal_for($d_old2), 0,
   'after reload: no journal line for the key 1 token');

is($t->get("/u/$tok_new")->{status}, 200, 'after reload: key 2 token GET 200');
is($t->post_one_click("/u/$tok_new2")->{status}, 200,
   'after reload: key 2 token POST 200');
like($t->mc_get($t->skey(dest => $d_new2)) // '', qr/^1 14 \d+ link sms 2$/,
     'after reload: key 2 rule stored');

# and back: key 1 re-added (listed second) verifies again

$t->write_conf($t->optout_http(keys => [[2, 'new'], [1, 'old']]));
ok($t->reload, 'reload with key 1 again');
is($t->get("/u/$tok_old2")->{status}, 200, 'key 1 restored: GET 200');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
