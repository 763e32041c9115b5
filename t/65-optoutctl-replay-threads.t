#!/usr/bin/perl

# optoutctl replay parses journals on several threads, in batches of whole
# lines: the memcached state it leaves is exactly that of one thread, key by
# key, with opt-outs and opt-ins of the same rules interleaved across every
# batch boundary, over two journals merged by time, with CRLF lines, a torn
# line, an empty line, a line longer than a batch and no final newline.
# One journal is also checked against a fold computed here.  A server
# error in the middle of the pipelined writes still stops replay.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

my $bin = OptoutTest::ctl_path();
plan skip_all => 'build/optoutctl not built' unless -x $bin;

delete @ENV{qw(OPTOUT_STORE OPTOUT_STORE_SECRET)};

my $t = OptoutTest->new;
$t->memcached_start;
my $ss = $t->key('store');
my $store = '--SERVER=127.0.0.1:' . $t->mc_port;
my $dir = $t->prefix;

sub run {
    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', '/dev/null' or die;
        open STDOUT, '>', "$dir/stdout" or die;
        open STDERR, '>', "$dir/stderr" or die;
        exec $bin, @_ or POSIX::_exit(127);
    }

    waitpid($pid, 0);
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;

    return ($rc, $t->read_file('stdout') // '', $t->read_file('stderr') // '');
}

my $T = 1795424400;

# 300 rules: 100 destinations, account-wide, sender ACME and namespace nx

my @rules;
for my $i (0 .. 99) {
    my $d = sprintf('+4477009%05d', $i);
    push @rules, [$d, undef, ''], [$d, 'ACME', ''], [$d, undef, 'nx'];
}

sub line {
    my ($ms, $action, $r, $c, %o) = @_;
    my ($dest, $sender, $ns) = @$r;
    my $scope = defined $sender ? qq("scope":"sender","sender":"$sender")
                                : '"scope":"account"';
    return sprintf('{"t":%d.%03d,"action":"%s","ns":"%s","dest":"%s",%s,'
                   . '"campaign":"%d","source":"%s","channel":"sms",'
                   . '"client":"%s","kid":%d}',
                   $T + int($ms / 1000), $ms % 1000, $action, $ns, $dest,
                   $scope, $c, $action eq 'optin' ? 'api' : 'link',
                   $o{client} // '192.0.2.1', $action eq 'optin' ? 0 : 1);
}

# a pseudo-random sequence of actions (fixed seed): about 7 MB, 27 batches

srand(12345);
sub rnd { int rand $_[0] }

my (@a, @b, %want);
for my $n (1 .. 40000) {
    my $ri = rnd(scalar @rules);
    my $action = rnd(5) < 3 ? 'optout' : 'optin';
    my $ms = $n * 7 + rnd(3);               # ties between the journals
    my $l = line($ms, $action, $rules[$ri], $n,
                 $n == 15000 ? (client => 'x' x 300000) : ());
    $l .= "\r" if $n % 11 == 0;

    if (!rnd(2)) {
        push @b, $l;
        next;
    }

    push @a, $l;

    # the fold of journal A alone, in file order: the first opt-out since
    # the last opt-in gives the rule
    my $w = $want{$ri} //= { state => '' };
    if ($action eq 'optin') {
        $w->{state} = 'in';
    } elsif ($w->{state} ne 'out') {
        $w->{state} = 'out';
        $w->{value} = sprintf('1 %d %d link sms 1', $n, $T + int($ms / 1000));
    }
}

splice @a, 9000, 0, 'torn {"t":', '';
$t->write_file('a.log', join("\n", @a));           # no final newline
$t->write_file('b.log', join("\n", @b) . "\n");
cmp_ok(-s "$dir/a.log", '>', 10 * 256 * 1024, 'journal A spans 10 batches');

my @keys = map { $t->skey(dest => $_->[0], sender => $_->[1],
                          ns => $_->[2]) } @rules;

# every rule's value ("-": none), the marker, and how many items memcached
# holds (it restarts empty before each replay): nothing else was written

sub state {
    my $got = $t->mc_get_multi(@keys, 'optout:marker:0');
    return join('', map { "$_ " . ($got->{$_} // '-') . "\n" } @keys)
           . 'marker ' . ($got->{'optout:marker:0'} =~ /\A1 \d+\z/ ? 1 : 0)
           . "\nitems " . $t->mc_items . "\n";
}

sub replay {
    my ($threads, @journals) = @_;
    $t->memcached_restart;
    my ($rc, $out, $err) = run('replay', '--store', $store,
                               '--store-secret', $ss, '--threads', $threads,
                               map { "$dir/$_" } @journals);
    return ("exit $rc\n$out$err", state());
}

my ($out1, $state1) = replay(1, 'a.log');
is($out1, sprintf("exit 0\nreplayed %d records: %d added, 0 already present,"
                  . " %d deleted, 2 skipped\n", scalar @a,
                  scalar(grep { $_->{state} eq 'out' } values %want),
                  scalar(grep { $_->{state} eq 'in' } values %want))
          . "optoutctl: $dir/a.log:9001: skipped: not valid JSON: '[' or "
          . "'{' expected near 'torn'\n"
          . "optoutctl: $dir/a.log:9002: skipped: not valid JSON: '[' or "
          . "'{' expected near end of file\n",
   'journal A, 1 thread: counts, 2 lines skipped by their numbers');
my @out = grep { $want{$_} && $want{$_}{state} eq 'out' } 0 .. $#rules;
is($state1, join('', map {
       "$keys[$_] " . ($want{$_} && $want{$_}{state} eq 'out'
                       ? $want{$_}{value} : '-') . "\n" } 0 .. $#rules)
   . 'marker 1' . "\nitems " . (@out + 1) . "\n",
   'journal A, 1 thread: every rule as folded here');

for my $threads (2, 3, 16) {
    my ($out, $state) = replay($threads, 'a.log');
    is($out, $out1, "journal A, $threads threads: same output");
    is($state, $state1, "journal A, $threads threads: same memcached state");
}

my ($out2, $state2) = replay(1, 'a.log', 'b.log');
like($out2, qr/\Aexit 0\nreplayed 40002 records: /,
     'journals A and B, 1 thread: replayed');
cmp_ok(scalar(() = $state2 =~ /^optout:/mg), '>', 50,
       'journals A and B: many rules stored');

for my $threads (2, 4, 16) {
    my ($out, $state) = replay($threads, 'b.log', 'a.log');
    is($out, $out2, "journals B and A, $threads threads: same output");
    is($state, $state2,
       "journals B and A, $threads threads: same memcached state");
}

# three journals: two threads are fewer than the journals (parsed on the
# main thread), six are two a journal

$t->write_file('c.log', join("\n", @b[0 .. 4999]) . "\n");

my ($out3, $state3) = replay(1, 'a.log', 'b.log', 'c.log');
like($out3, qr/\Aexit 0\nreplayed 45002 records: /,
     'journals A, B and C, 1 thread: replayed');

for my $threads (2, 6) {
    my ($out, $state) = replay($threads, 'c.log', 'a.log', 'b.log');
    is($out, $out3, "journals C, A and B, $threads threads: same output");
    is($state, $state3,
       "journals C, A and B, $threads threads: same memcached state");
}

# a full memcached (-M) refuses a write in the middle of the stream of
# pipelined commands: replay stops with its error and no summary

{
    my $full = OptoutTest->new;
    $full->memcached_start('-m', '2', '-M');

    $t->write_file('many.log', join '', map {
        line($_, 'optout', [sprintf('+4479%08d', $_), undef, ''], $_) . "\n"
    } 1 .. 60000);

    my ($rc, $out, $err) = run('replay', '--store',
                               '--SERVER=127.0.0.1:' . $full->mc_port,
                               '--store-secret', $ss, "$dir/many.log");
    is("$rc $out$err", "1 optoutctl: memcached write failed: 127.0.0.1:"
       . $full->mc_port . ": SERVER_ERROR out of memory storing object; "
       . "stopped (the journals are intact: run replay again)\n",
       'replay into a full memcached: the error, exit 1');
    $full->memcached_stop;
}

for my $bad (0, 17, 'x') {
    my ($rc, $out, $err) = run('replay', '--store', $store,
                               '--store-secret', $ss, '--threads', $bad,
                               "$dir/b.log");
    is("$rc $err", "2 optoutctl: replay: invalid --threads \"$bad\" "
       . "(1..16) (see 'optoutctl replay --help')\n",
       "replay --threads $bad: usage error");
}

done_testing();
