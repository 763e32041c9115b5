#!/usr/bin/perl

# The management API (optout_api): POST adds one rule or up to 10,000,
# GET looks one destination up, DELETE removes the rule of one scope (an
# opt-in).  Real nginx and memcached; exact answers, exact journal lines.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;

my $JSON = JSON::PP->new->utf8->canonical;

my $t = OptoutTest->new(workers => 1);

$t->setup(
    http => 'optout_cache zone=ck:1m blocked=10m allowed=10m;',
    server => 'location /api { optout_api; } '
        . 'location = /check { optout_check; } '
        . 'location /ns/api { optout_api; '
        . 'optout_namespace $http_x_optout_namespace; } '
        . 'location = /ns/check { optout_check; '
        . 'optout_namespace $http_x_optout_namespace; }');

ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub api {
    my ($method, $path, $body, %h) = @_;
    $h{'Content-Type'} //= 'application/json' if defined $body;
    my $r = $t->request($method, $path, body => $body, headers => \%h);
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if length($r->{content} // '');
    $r->{code} = ref $r->{json} eq 'HASH' && $r->{json}{errors}
                 ? $r->{json}{errors}[0]{code} : '';
    return $r;
}

sub add { api('POST', '/api', $JSON->encode($_[0]), @_[1 .. $#_]) }

sub check {
    my ($dest, $sender, $prefix, %h) = @_;
    my $q = '?to=' . OptoutTest::_urlenc($dest);
    $q .= '&from=' . OptoutTest::_urlenc($sender) if defined $sender;
    my $r = $t->request('GET', ($prefix // '') . "/check$q", headers => \%h);
    return $r->{status} . ' ' . ($r->{headers}{'x-optout-campaign'} // '-');
}

sub qs { '?destination=' . OptoutTest::_urlenc($_[0])
        . (defined $_[1] ? '&sender=' . OptoutTest::_urlenc($_[1]) : '') }

my $A = '+447700900301';
my $B = '+447700900302';
my $C = 'Alice@Example.COM';

# ---- add one, then the same again

is(check($A), '204 -', 'no rule yet (cached as allowed)');

my $r = add({ destination => $A, campaign => 77 });
is($r->{status}, 200, 'add: 200');
is_deeply($r->{json}, { added => 1, present => 0, invalid => 0,
                        results => [{ index => 0, status => 'added' }] },
          'add: added');
is(check($A), '403 77', 'check on this node: blocked at once');
like($t->mc_get($t->skey(dest => $A)) // '', qr/^1 77 \d+ api sms 0$/,
     'the rule is in memcached');

my @j = $t->journal_for($A);
is(scalar @j, 1, 'one journal line');
is($j[0]{action}, 'optout', 'action optout');
is($j[0]{source}, 'api', 'source api');
is($j[0]{campaign}, '77', 'campaign 77');
is($j[0]{client}, '127.0.0.1', 'client address');
ok(!exists $j[0]{user}, 'no user without credentials');

$r = add({ destination => $A, campaign => '99' },
         Authorization => 'Basic ' . MIME::Base64::encode_base64('ops:x', ''));
is($r->{status}, 200, 'duplicate add: 200');
is($r->{json}{present}, 1, 'duplicate add: present');
is($r->{json}{results}[0]{status}, 'present', 'status present');
is($r->{json}{results}[0]{rule}{campaign}, '77', 'with the existing rule');
is($r->{json}{results}[0]{rule}{scope}, 'account', 'scope account');
is($r->{json}{results}[0]{rule}{source}, 'api', 'source api');
is($r->{json}{results}[0]{rule}{channel}, 'sms', 'channel sms');
like($r->{json}{results}[0]{rule}{since},
     qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/,
     'since');
is(scalar($t->journal_for($A)), 1, 'nothing journaled again');

# ---- look up

$r = api('GET', '/api' . qs($A));
is($r->{status}, 200, 'look-up: 200');
is($r->{json}{destination}, OptoutTest::mask_dest($A), 'masked destination');
is(scalar @{ $r->{json}{rules} }, 1, 'one rule');
is($r->{json}{rules}[0]{campaign}, '77', 'its campaign');

$r = api('GET', '/api' . qs($B));
is($r->{status}, 404, 'look-up of nothing: 404');
is($r->{code}, '40400', 'code 40400');
is($r->{json}{errors}[0]{title}, 'No rule', 'title');

$r = api('GET', '/api?destination=nope');
is("$r->{status} $r->{code}", '400 40001', 'invalid destination');
$r = api('GET', '/api' . qs($A, 'bad sender!'));
is("$r->{status} $r->{code}", '400 40002', 'invalid sender');

# ---- sender scope

$r = add({ destination => $B, sender => 'ACME', campaign => 5 });
is($r->{json}{added}, 1, 'sender rule added');
is(check($B, 'ACME'), '403 5', 'blocked from ACME');
is(check($B, 'OTHER'), '204 -', 'allowed from another sender');
is(check($B), '204 -', 'allowed account-wide');
@j = $t->journal_for($B);
is("$j[0]{scope} $j[0]{sender}", 'sender ACME', 'journal: sender scope');

$r = api('GET', '/api' . qs($B, 'ACME'));
is($r->{status}, 200, 'look-up with the sender');
is_deeply([map { "$_->{scope}:" . ($_->{sender} // '') }
           @{ $r->{json}{rules} }],
          ['sender:ACME'], 'the sender rule only');
$r = api('GET', '/api' . qs($B));
is($r->{status}, 404, 'without the sender: no account-wide rule');

# ---- remove (opt-in)

my $n = $t->journal_count;
$r = api('DELETE', '/api' . qs($B));
is("$r->{status} $r->{code}", '404 40400', 'remove of nothing: 404');
is($t->journal_count, $n, 'nothing journaled');

is(check($A), '403 77', 'A blocked (cached)');
$r = api('DELETE', '/api' . qs($A), undef,
         Authorization => 'Basic ' . MIME::Base64::encode_base64('ops:x', ''));
is($r->{status}, 200, 'remove: 200');
is($r->{json}{removed}{campaign}, '77', 'answers the rule removed');
is($r->{json}{removed}{scope}, 'account', 'its scope');
is(check($A), '204 -', 'check on this node: 204 at once (cache dropped)');
is($t->mc_get($t->skey(dest => $A)), undef, 'gone from memcached');
@j = $t->journal_for($A);
is(scalar @j, 2, 'an opt-in line');
is($j[1]{action}, 'optin', 'action optin');
is($j[1]{user}, 'ops', 'user: $remote_user');
is($j[1]{client}, '127.0.0.1', 'client');

$r = api('DELETE', '/api' . qs($B, 'ACME'));
is($r->{status}, 200, 'remove the sender rule');
is("$r->{json}{removed}{scope} $r->{json}{removed}{sender}", 'sender ACME',
   'sender scope removed');
is(check($B, 'ACME'), '204 -', 'ACME allowed again');

# ---- opt-in, then a new opt-out records its own campaign

$r = add({ destination => $A, campaign => 88 });
is($r->{json}{added}, 1, 'new opt-out after the opt-in: added');
is(check($A), '403 88', 'the new campaign');
$r = api('GET', '/api' . qs($A));
is($r->{json}{rules}[0]{campaign}, '88', 'look-up: the new campaign');

# ---- email, channel, source, since

$r = add({ destination => $C, channel => 'email', source => 'import',
           since => '2026-01-02T03:04:05Z', campaign => '12' });
is($r->{json}{added}, 1, 'email added');
$r = api('GET', '/api' . qs($C));
is_deeply($r->{json}{rules}[0], { scope => 'account', campaign => '12',
          since => '2026-01-02T03:04:05Z', source => 'import',
          channel => 'email' }, 'the rule as given');

# ---- an array with invalid items

$r = add([ { destination => '+447700900310' },
           'nope',
           { destination => 'not a number' },
           { destination => '+447700900311', sender => 'WAY TOO LONG SENDER' },
           { destination => '+447700900312', campaign => -1 },
           { destination => '+447700900313', campaign => 2 ** 35 },
           { destination => '+447700900314', channel => 'email' },
           { destination => '+447700900315', source => 'nowhere' },
           { destination => '+447700900316', since => 'yesterday' },
           { destination => $C },
           { destination => '+447700900317', campaign => '34359738367' } ]);
is($r->{status}, 200, 'mixed array: 200');
is("$r->{json}{added} $r->{json}{present} $r->{json}{invalid}", '2 1 8',
   'counts: added, present, invalid');
is_deeply([map { $_->{reason} // $_->{status} } @{ $r->{json}{results} }],
          ['added', 'not an object', 'destination', 'sender', 'campaign',
           'campaign', 'channel', 'source', 'since', 'present', 'added'],
          'exact per-item results in request order');
is_deeply([map { $_->{index} } @{ $r->{json}{results} }], [0 .. 10],
          'indexes');

# ---- request errors

$r = api('POST', '/api', '{"destination":');
is("$r->{status} $r->{code}", '400 40003', 'malformed JSON');
$r = api('POST', '/api', '"x"');
is("$r->{status} $r->{code}", '400 40003', 'not an object or array');
$r = api('POST', '/api', '[]');
is("$r->{status} $r->{code}", '400 40004', 'empty array');
$r = api('POST', '/api', '');
is("$r->{status} $r->{code}", '400 40004', 'empty body');
$n = $t->journal_count;
$r = api('POST', '/api',
         $JSON->encode([map { { destination => sprintf('+4477009%05d', $_) } }
                        1 .. 10001]));
is("$r->{status} $r->{code}", '413 41300', '10,001 items: 413 41300');
is($t->journal_count, $n, 'nothing journaled');
$r = api('PUT', '/api', '{}');
is($r->{status}, 405, 'PUT: 405');

# ---- 10,000 items: one group write, all in memcached

my @many = map { { destination => sprintf('+4477008%05d', $_),
                   campaign => $_ } }
           0 .. 9999;
$r = api('POST', '/api', $JSON->encode(\@many));
is($r->{status}, 200, '10,000 items: 200');
is("$r->{json}{added} $r->{json}{present} $r->{json}{invalid}",
   '10000 0 0', 'all added');
is($t->journal_count, $n + 10000, '10,000 journal lines');
my $got = $t->mc_get_multi(map { $t->skey(dest => $_->{destination}) }
                           @many[0, 4321, 9999]);
is(scalar keys %$got, 3, 'in memcached');
is(check('+447700804321'), '403 4321', 'checked blocked');
$r = api('POST', '/api', $JSON->encode(\@many));
is("$r->{json}{added} $r->{json}{present}", '0 10000', 'again: all present');

# ---- namespaces

$r = add({ destination => $B, campaign => 9 });
is($r->{json}{added}, 1, 'B added in no namespace');
$r = api('POST', '/ns/api',
         $JSON->encode({ destination => $B, campaign => 10 }),
         'X-Optout-Namespace' => 'tenant1');
is($r->{json}{added}, 1, 'B added in tenant1: its own rule');
is(check($B, undef, '/ns', 'X-Optout-Namespace' => 'tenant1'), '403 10',
   'tenant1 check: its campaign');
is(check($B), '403 9', 'default namespace: its campaign');
$r = api('DELETE', '/ns/api' . qs($B), undef,
         'X-Optout-Namespace' => 'tenant1');
is($r->{status}, 200, 'removed in tenant1');
is(check($B, undef, '/ns', 'X-Optout-Namespace' => 'tenant1'), '204 -',
   'tenant1 allowed');
is(check($B), '403 9', 'the default namespace keeps its rule');
@j = grep { $_->{ns} eq 'tenant1' } $t->journal_for($B);
is(join(',', map { $_->{action} } @j), 'optout,optin', 'tenant1 journal');

# ---- a frozen memcached: the API answers, the worker keeps serving

$t->memcached_freeze;
my @pings;
my @res = OptoutTest::run_parallel(3, sub {
    my ($i) = @_;
    my $r = $i == 0
        ? add({ destination => '+447700900340', campaign => 40 })
        : $i == 1
        ? api('POST', '/api', $JSON->encode([map { { destination => $_ } }
                                             '+447700900341',
                                             '+447700900342']))
        : api('DELETE', '/api' . qs($C));
    return { status => $r->{status},
             what => $r->{json}{added} // $r->{json}{removed}{scope} // '' };
}, sub {
    for (1 .. 5) {
        push @pings, $t->get('/ping')->{status};
        sleep 0.05;
    }
});
$t->memcached_thaw;
is_deeply([map { "$_->{status} $_->{what}" } @res],
          ['200 1', '200 2', '200 account'],
          'frozen memcached: add, array and removal answered');
is_deeply(\@pings, [204, 204, 204, 204, 204],
          'the worker served other requests meanwhile');

# ---- memcached stopped: writes are journaled and answered, then delivered

my $D = '+447700900320';
$t->memcached_stop;
$r = add({ destination => $D, campaign => 21 });
is($r->{status}, 200, 'memcached down: add answered');
is($r->{json}{added}, 1, 'added');
is(check($D), '403 21', 'blocked on this node meanwhile');
$r = api('POST', '/api', $JSON->encode([ { destination => '+447700900321' },
                                         { destination => '+447700900322' },
                                       ]));
is($r->{json}{added}, 2, 'an array too');
$r = api('DELETE', '/api' . qs($A));
is($r->{status}, 200, 'remove answered');
is_deeply($r->{json}{removed}, { scope => 'account' },
          'removed: the scope alone (the store could not tell)');

$t->memcached_start;
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set again');
my $deadline = time + 30;
my %have;
while (time < $deadline) {
    %have = %{ $t->mc_get_multi(map { $t->skey(dest => $_) }
                             $D, '+447700900321', '+447700900322') || {} };
    last if keys %have == 3;
    sleep 0.2;
}
is(scalar keys %have, 3, 'the applier delivered them');
is($t->mc_get($t->skey(dest => $A)), undef,
   'and the opt-in is not undone');
$r = api('GET', '/api' . qs($D));
is($r->{json}{rules}[0]{campaign}, '21', 'look-up after delivery');

# ---- a restart with an unapplied tail: the opt-in ends the opt-out
# before it (the pending set filled at start answers "blocked" for
# opt-outs only)

my $E = '+447700900330';
$t->memcached_stop;
is(add({ destination => $E, campaign => 3 })->{json}{added}, 1,
   'E added, memcached down');
is(check($E), '403 3', 'E blocked meanwhile (pending set)');
is(api('DELETE', '/api' . qs($E))->{status}, 200, 'E removed');
is(check($E), '403 -', 'E: unavailable, no longer blocked');
$t->stop;
$t->start;
is(check($E), '403 -', 'after a restart: still unavailable, not blocked');
$t->memcached_start;
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set again');
$deadline = time + 30;
my $c = '';
while (time < $deadline) {
    $c = check($E);
    last if $c eq '204 -';
    sleep 0.2;
}
is($c, '204 -', 'E allowed once memcached is back');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
