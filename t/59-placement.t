#!/usr/bin/perl

# Which libmemcached client settings put keys on the same servers as the
# module (README, "Other clients: which settings place keys the same").
# t/lib/placement.c asks libmemcached itself where keys go, built either
# from a configuration string as the module and optoutctl do, or server
# by server with behaviors as pylibmc and PHP Memcached do.
#
# 1. Real memcached servers: optoutctl replay (the module's store code)
#    writes rules and markers; every key is where the client-style
#    placement says, and each server holds exactly the marker
#    PREFIX "marker:N" with N the smallest number placed on it.
# 2. Fixed addresses, nothing sent: how many of 1000 keys each other
#    setting moves.  The counts are libmemcached 1.1.4's.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Digest::MD5 qw(md5_hex);
use File::Temp qw(tempdir);
use Test::More;
use OptoutTest;

plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $dir = tempdir(CLEANUP => 1);
my $bin = "$dir/placement";
my $cc = $ENV{CC} || 'cc';
my $cout = qx{$cc -O1 -Wall -Wextra -Werror -std=gnu99 -o '$bin' \\
              '$FindBin::Bin/lib/placement.c' -lmemcached 2>&1};
plan skip_all => "cannot build t/lib/placement.c: $cout" if $?;

# placement(\@keys, @args): [[server position, "host:port"], ...] by key
sub placement {
    my ($keys, @args) = @_;
    my $in = "$dir/keys";
    open(my $fh, '>', $in) or die "$in: $!";
    print $fh map { "$_\n" } @$keys;
    close $fh;
    open(my $save, '<&', \*STDIN) or die "dup: $!";
    open(STDIN, '<', $in) or die "$in: $!";
    open(my $p, '-|', $bin, @args) or die "placement: $!";
    open(STDIN, '<&', $save) or die "dup: $!";
    my %at;
    while (my $l = <$p>) {
        chomp $l;
        my ($k, $pos, $server) = split /\t/, $l;
        $at{$k} = [$pos, $server];
    }
    close $p;
    die "placement @args failed: $?" if $?;
    die "placement @args: keys missing" if grep { !$at{$_} } @$keys;
    return [map { $at{$_} } @$keys];
}

# keys placed differently; $by: 0 the server's position, 1 its address
sub moved {
    my ($a, $b, $by) = @_;
    return scalar grep { $a->[$_][$by] ne $b->[$_][$by] } 0 .. $#$a;
}

# ---------------------------------------------------------------- 1. real

my $t = OptoutTest->new;
$t->memcached_start;
my @mc = ($t);
for (2 .. 3) {
    my $m = OptoutTest->new;
    $m->memcached_start;
    push @mc, $m;
}
$t->key('store');

my @dests = map { sprintf '+4477009%05d', 59000 + $_ } 1 .. 90;
my $journal = join '', map {
    qq({"t":1763900000,"action":"optout","ns":"","dest":"$_",)
    . qq("scope":"account","campaign":"1","source":"api",)
    . qq("channel":"sms","client":"","kid":0}\n)
} @dests;
$t->write_file('p.journal', $journal);

for my $dist ('modula', 'consistent') {
    my $prefix = "pl-$dist:";
    my $store = join ' ', (map { '--SERVER=127.0.0.1:' . $_->mc_port } @mc),
                          $dist eq 'consistent'
                          ? '--DISTRIBUTION=consistent' : ();
    my $list = join ',', map { '127.0.0.1:' . $_->mc_port } @mc;
    my @beh = $dist eq 'consistent' ? ('distribution=consistent') : ();

    my ($rc, $out) = $t->ctl('replay', '--store', $store, '--prefix',
                             $prefix, '--store-secret',
                             $t->path('store.key'), $t->path('p.journal'));
    is($rc, 0, "$dist: replay into 3 servers") or diag $out;

    my @keys = map { $t->skey(dest => $_, prefix => $prefix) } @dests;
    my @truth = map {
        my $k = $_;
        my @on = grep { defined $mc[$_]->mc_get($k) } 0 .. $#mc;
        [@on == 1 ? $on[0] : -1, '-']
    } @keys;
    is(scalar(grep { $_->[0] < 0 } @truth), 0,
       "$dist: every rule is on exactly one server");
    is(scalar(keys %{{ map { $_->[0] => 1 } @truth }}), 3,
       "$dist: the rules are spread over the 3 servers");

    my $client = placement(\@keys, '--servers', $list, @beh);
    is(moved(\@truth, $client, 0), 0,
       "$dist: a client with the same servers and settings finds every "
       . 'rule where replay put it');

    # markers: the smallest N that the client places on each server
    my @names = map { "${prefix}marker:$_" } 0 .. 99;
    my $mp = placement(\@names, '--servers', $list, @beh);
    my %first;
    for my $n (0 .. $#names) {
        $first{$mp->[$n][0]} //= $n;
    }
    is(scalar(keys %first), 3, "$dist: a marker N for each server");
    for my $s (0 .. $#mc) {
        my $got = $mc[$s]->mc_get_multi(@names);
        is(join(',', sort { $a <=> $b }
                     map { /:(\d+)\z/ ? $1 : () } keys %$got),
           $first{$s}, "$dist: server $s holds exactly marker:$first{$s}");
    }
}

# ---------------------------------------------------------------- 2. fixed

my @keys = map { 'optout:' . md5_hex($_) } 1 .. 1000;
my @A = qw(10.0.0.11:11211 10.0.0.12:11211 10.0.0.13:11211);
my $conf = join ' ', map { "--SERVER=$_" } @A;
my $list = join ',', @A;
my $rlist = join ',', reverse @A;

my $mod = placement(\@keys, '--conf', $conf);
my $con = placement(\@keys, '--conf', "$conf --DISTRIBUTION=consistent");

is(scalar(keys %{{ map { $_->[0] => 1 } @$con }}), 3,
   'consistent: keys on all 3 servers');

# [what, module's placement, client args, by address (1) or position (0),
#  keys moved out of 1000]
my @cases = (
    [ 'default distribution, same server order', $mod,
      [ '--servers', $list ], 1, 0 ],
    [ 'default distribution, servers in another order', $mod,
      [ '--servers', $rlist ], 1, 699 ],
    [ 'default distribution, "localhost" for "127.0.0.1"',
      placement(\@keys, '--conf',
                '--SERVER=127.0.0.1:11211 --SERVER=10.0.0.12:11211 '
                . '--SERVER=10.0.0.13:11211'),
      [ '--conf', '--SERVER=localhost:11211 --SERVER=10.0.0.12:11211 '
                  . '--SERVER=10.0.0.13:11211' ], 0, 0 ],
    [ 'distribution=consistent', $con,
      [ '--servers', $list, 'distribution=consistent' ], 1, 0 ],
    [ 'distribution=consistent, servers in another order', $con,
      [ '--servers', $rlist, 'distribution=consistent' ], 1, 0 ],
    [ 'distribution=consistent_ketama', $con,
      [ '--servers', $list, 'distribution=consistent_ketama' ], 1, 0 ],
    [ 'ketama=1 (MEMCACHED_BEHAVIOR_KETAMA)', $con,
      [ '--servers', $list, 'ketama=1' ], 1, 0 ],
    [ 'consistent, port 11211 left out', $con,
      [ '--conf', '--SERVER=10.0.0.11 --SERVER=10.0.0.12 --SERVER=10.0.0.13 '
                  . '--DISTRIBUTION=consistent' ], 1, 0 ],
    [ 'consistent, a server weight', $con,
      [ '--conf', '--SERVER=10.0.0.11:11211/?5 --SERVER=10.0.0.12:11211 '
                  . '--SERVER=10.0.0.13:11211 --DISTRIBUTION=consistent' ],
      1, 0 ],
    [ 'consistent, libketama-compatible (ketama_weighted=1)', $con,
      [ '--servers', $list, 'distribution=consistent',
        'ketama_weighted=1' ], 1, 690 ],
    [ 'consistent, hash=md5', $con,
      [ '--servers', $list, 'distribution=consistent', 'hash=md5' ], 1,
      658 ],
    [ 'consistent, "localhost" for "127.0.0.1"',
      placement(\@keys, '--conf',
                '--SERVER=127.0.0.1:11211 --SERVER=10.0.0.12:11211 '
                . '--SERVER=10.0.0.13:11211 --DISTRIBUTION=consistent'),
      [ '--conf', '--SERVER=localhost:11211 --SERVER=10.0.0.12:11211 '
                  . '--SERVER=10.0.0.13:11211 --DISTRIBUTION=consistent' ],
      0, 307 ],
);

for my $c (@cases) {
    my ($what, $want_at, $args, $by, $moved) = @$c;
    is(moved($want_at, placement(\@keys, @$args), $by), $moved,
       "$what: $moved of 1000 keys elsewhere");
}

# no nginx runs here (replay is the module's store code), so there is no
# error.log to check, as in t/05-optoutctl.t
$_->memcached_stop for @mc;

done_testing;
