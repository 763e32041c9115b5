#!/usr/bin/perl

# Lookups speak memcached's text protocol on the event loop; libmemcached
# only places keys, names the servers and writes.  So what libmemcached
# does to keys on the wire must be done by the lookups too:
# 1. "--NAMESPACE=NS" in optout_store: optoutctl (libmemcached) writes the
#    rules and the marker under NS; single checks, batches and the API's
#    look-up find them there, and an API array of new rules (written
#    without replies, then confirmed by the multi-get) lands under NS.
# 2. Values the parser must take as they come: one far longer than its
#    read buffer (skipped, and its key still blocks), one that is not a
#    rule (blocks), many values in one reply (a batch of blocked ones).
# 3. Server names are resolved when the configuration is loaded: one that
#    does not resolve fails nginx -t, naming it; "localhost" works.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8->canonical;

my $A    = '+447700900401';     # account-wide, campaign 42 (replay)
my $S    = '+447700900402';     # sender ACME, campaign 7 (replay)
my $FREE = '+447700900499';
my @NEW  = ('+447700900410', '+447700900411', '+447700900412');

my $NS = 'tenant7';

my $t = OptoutTest->new(workers => 1);
$t->memcached_start;

my $store = '--SERVER=127.0.0.1:' . $t->mc_port . " --NAMESPACE=$NS";

# ---------------------------------------------------------------- nginx -t

my ($rc, $out);
{
    my $u = OptoutTest->new;
    $u->setup(no_start => 1, no_memcached => 1, omit => { optout_store => 1 },
              http => 'optout_store "--SERVER=no-such-host.invalid:11211";');
    ($rc, $out) = $u->nginx_test;
    isnt($rc, 0, 'unresolvable server: nginx -t fails');
    like($out,
         qr/\[emerg\].*memcached server "no-such-host\.invalid:11211"/,
         'unresolvable server: the message names it') or diag $out;
}

# ---------------------------------------------------------------- namespace

$t->setup(omit => { optout_store => 1 },
          http => "optout_store \"$store\";",
          server => 'location = /check { optout_check; } '
                    . 'location /api { optout_api; }');

my $rt = 1795424400;
my $line = '{"t":%d.000,"action":"optout","ns":"","dest":"%s",%s,'
           . '"campaign":"%s","source":"api","channel":"sms","client":"",'
           . '"kid":0}' . "\n";
my $journal = sprintf($line, $rt, $A, '"scope":"account"', 42)
              . sprintf($line, $rt, $S, '"scope":"sender","sender":"ACME"', 7);
$t->write_file('seed.journal', $journal);

($rc, $out) = $t->ctl('replay', '--store', $store, '--store-secret',
                      $t->path('store.key'), $t->path('seed.journal'));
is($rc, 0, 'replay with the namespace') or diag $out;

ok(defined $t->mc_get($NS . 'optout:marker:0'),
   'the marker is under the namespace');
ok(!defined $t->mc_get('optout:marker:0'), 'and only there');
like($t->mc_get($NS . $t->skey(dest => $A)) // '', qr/^1 42 /,
     'the rule is under the namespace');

sub check {
    my ($dest, $sender) = @_;
    my $q = '/check?to=' . OptoutTest::_urlenc($dest);
    $q .= '&from=' . OptoutTest::_urlenc($sender) if defined $sender;
    my $r = $t->get($q);
    return $r->{status} . ' ' . ($r->{headers}{'x-optout-status'} // '-')
           . ' ' . ($r->{headers}{'x-optout-campaign'} // '-');
}

is(check($A), '403 blocked 42', 'check: the rule under the namespace');
is(check($S, 'ACME'), '403 blocked 7', 'check: the sender rule');
is(check($S), '204 allowed -', 'check: no account-wide rule');
is(check($FREE), '204 allowed -', 'check: no rule, the marker found');

my $r = $t->request('POST', '/check?from=ACME',
                    body => "$A\n$S\n$FREE\n",
                    headers => { 'Content-Type' => 'text/plain' });
is($r->{status}, 200, 'batch: 200');
my $b = eval { $JSON->decode($r->{content}) } || {};
is_deeply([sort map { $_->{destination} } @{ $b->{blocked} || [] }],
          [sort $A, $S], 'batch: both rules found');
is($b->{allowed}, 1, 'batch: the free one allowed');
ok(!$b->{unverified}, 'batch: verified');

$r = $t->get('/api?destination=' . OptoutTest::_urlenc($A));
is($r->{status}, 200, 'API look-up: 200');
my $l = eval { $JSON->decode($r->{content}) } || {};
is(scalar @{ $l->{rules} || [] }, 1, 'API look-up: one rule');
is($l->{rules}[0]{campaign}, '42', 'API look-up: its campaign');

my @items = map { +{ destination => $_, campaign => 5 } } @NEW;
push @items, { destination => $A, campaign => 6 };
$r = $t->request('POST', '/api', body => $JSON->encode(\@items),
                 headers => { 'Content-Type' => 'application/json' });
is($r->{status}, 200, 'API array: 200');
my $j = eval { $JSON->decode($r->{content}) } || {};
is($j->{added}, 3, 'API array: 3 added');
is($j->{present}, 1, 'API array: the replayed rule present')
    or diag $r->{content};

for my $d (@NEW) {
    like($t->mc_get($NS . $t->skey(dest => $d)) // '', qr/^1 5 /,
         "API array: $d written under the namespace");
}

is(check($NEW[0]), '403 blocked 5', 'check: a rule the API added');

my @log = grep { /\[error\]/ } split /\n/, ($t->error_log // '');
is(scalar @log, 0, 'no error logged') or diag join "\n", @log;

# ---------------------------------------------------------------- values

my $BIG = '+447700900420';
my $ODD = '+447700900421';
ok($t->mc_set($NS . $t->skey(dest => $BIG), 'x' x 100000),
   'a value of 100,000 bytes under a rule key');
ok($t->mc_set($NS . $t->skey(dest => $ODD), 'not a rule'),
   'a value that is not a rule');

is(check($BIG), '403 blocked 0', 'check: a long value still blocks');
is(check($ODD), '403 blocked 0', 'check: a value not a rule blocks');
is(check($FREE), '204 allowed -', 'check: the connection is in step after');

my @many = map { sprintf('+4477009005%02d', $_) } 0 .. 99;
ok(!grep({ !$t->mc_set($NS . $t->skey(dest => $_), "1 8 $rt api sms 0") }
         @many), '100 rules set');

$r = $t->request('POST', '/check',
                 body => join('', map { "$_\n" } $BIG, @many, $ODD, $FREE),
                 headers => { 'Content-Type' => 'text/plain' });
$b = eval { $JSON->decode($r->{content}) } || {};
is($r->{status}, 200, 'batch of long and many values: 200');
is(scalar @{ $b->{blocked} || [] }, 102, 'batch: 102 blocked');
is($b->{allowed}, 1, 'batch: 1 allowed');

# ---------------------------------------------------------------- localhost

$t->stop;
$t->setup(omit => { optout_store => 1 },
          http => 'optout_store "--SERVER=localhost:%%MC%% '
                  . "--NAMESPACE=$NS\";",
          server => 'location = /check { optout_check; }');

is(check($A), '403 blocked 42', 'localhost: the rule found');

$t->stop;
ok($t->error_log_clean, 'error.log has no alert, crit or emerg');

done_testing;
