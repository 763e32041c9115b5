#!/usr/bin/perl

# Journal on a full disk: the journal lives on a tiny tmpfs, filled with a
# filler file.  (A) POSTs until one answers 500 (its write is cut short at
# the end of the space): the journal is truncated back to its last whole
# line and the [crit] line says how much was written and where the journal
# now ends; while the disk is full every POST answers 500; once the space
# is back POSTs answer 200 by themselves; every line is valid JSON, one per
# 200, and "optoutctl replay" restores exactly those opt-outs.  (B) The same
# with an append-only journal (chattr +a), where the truncation itself
# fails: [alert], and the next write ends the partial line first, so that
# every line answered 200 is still whole and replay skips only the torn one.
# (C) A start on a journal that ends with a partial line ends it.  (D) The
# same as (A) with four concurrent clients on two workers.
#
# Needs root (mount, chattr); skipped otherwise.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Fcntl qw(F_SETLK F_SETLKW F_WRLCK F_UNLCK SEEK_SET);
use IO::Select;
use Test::More;
use OptoutTest;

OptoutTest->require_module;

plan skip_all => 'needs root to mount a tmpfs' unless $> == 0;
plan skip_all => 'build/optoutctl not built'
    unless -x OptoutTest::ctl_path();

my $t = OptoutTest->new(workers => 2);

# the master opens the journal as root; after a reopen the workers do
my $fs = $t->tmpfs('jfs', '256k')
    // plan skip_all => 'cannot mount a tmpfs';

$t->setup(journal => 'jfs/journal.log');

my $JOURNAL = "$fs/journal.log";
my $n = 0;

# available bytes on the tmpfs
sub avail {
    my $out = `stat -f -c '%a %S' $fs`;
    my ($blocks, $bsize) = $out =~ /^(\d+) (\d+)/ or die "stat -f: $out";
    return $blocks * $bsize;
}

# fill the tmpfs with $name, then give back $free bytes (whole pages)
sub fill {
    my ($name, $free) = @_;
    open my $fh, '>', "$fs/$name" or die "$name: $!";
    my $chunk = "\0" x 4096;
    my $size = 0;
    while (1) {
        my $w = syswrite $fh, $chunk;
        last unless $w;
        $size += $w;
    }
    truncate $fh, $size - $free or die "truncate: $!";
    close $fh;
    return avail();
}

# one opt-out link per call; all lines have the same length
sub post {
    $n++;
    my $dest = OptoutTest::phone(5000000 + $n);
    my $r = $t->post_one_click('/u/' . $t->token(dest => $dest,
                                                 campaign => 1000 + $n));
    return ($r->{status}, $dest);
}

sub file_size { return -s $_[0] // -1 }

# POST until a 500, then $more POSTs while full, then free $filler and
# POST 5; returns (200 destinations, 500 destinations, other answers)
sub run_full {
    my ($filler, $more) = @_;
    my (@ok, @failed, @other);
    for (1 .. 2000) {
        my ($st, $dest) = post();
        if ($st == 200) { push @ok, $dest; next }
        if ($st == 500) { push @failed, $dest; last }
        push @other, "$dest: $st";
        last;
    }
    for (1 .. $more) {
        my ($st, $dest) = post();
        if ($st == 500) { push @failed, $dest }
        else { push @other, "$dest: $st" }
    }
    unlink "$fs/$filler" or die "unlink: $!";
    for (1 .. 5) {
        my ($st, $dest) = post();
        if ($st == 200) { push @ok, $dest } else { push @other, "$dest: $st" }
    }
    return (\@ok, \@failed, \@other);
}

sub replay {
    my ($file) = @_;
    $t->memcached_restart;
    return $t->ctl('replay', '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                   '--store-secret', $t->path('store.key'), $file);
}

sub count_log {
    my ($re) = @_;
    return scalar grep { /$re/ } split /\n/, ($t->error_log // '');
}

# error.log lines at $level holding exactly "optout: $text"
sub count_msg {
    my ($level, $text) = @_;
    return count_log(qr/\[$level\] \d+#\d+: \Qoptout: $text\E/);
}

my $ENOSPC = '(28: No space left on device)';

# ---------------------------------------------------------------- A: ENOSPC

my $room = fill('filler', 8192);
is($room, 8192, 'A: 8192 bytes left on the tmpfs');
is(file_size($JOURNAL), 0, 'A: the journal starts empty');

my ($ok, $failed, $other) = run_full('filler', 2);
my $k = @$ok - 5;
my ($ok_a, $failed_a) = ($ok, $failed);

is(scalar @$other, 0, 'A: every answer is 200 or 500')
    or diag join "\n", @$other;
ok($k > 10, "A: $k POSTs answered 200 before the disk was full");
is(scalar @$failed, 3, 'A: the failed POST and two more while full: 500');

my @raw = $t->file_lines('jfs/journal.log');
my $L = length($raw[0] // '') + 1;
like($t->journal_raw('jfs/journal.log'), qr/\n\z/,
     'A: the journal ends with a newline');
is(scalar @raw, @$ok, 'A: one journal line per 200');
is(scalar(grep { length($_) + 1 != $L } @raw), 0,
   "A: every line has the same length ($L bytes)");

my @recs = $t->journal_lines('jfs/journal.log');
is(scalar(grep { $_->{_invalid} || ($_->{action} // '') ne 'optout' } @recs),
   0, 'A: every line is one valid JSON opt-out');
is_deeply([map { $_->{dest} } @recs], $ok,
          'A: the journal holds the 200 destinations, in order, and no other');

# the write of the first failed line got what was left on the disk, then
# ENOSPC: the journal was truncated back to the end of the k lines
my $N = $k * $L;
my $X = $room - $N;
ok($X > 0 && $X < $L, "A: the failed write was short ($X of $L bytes)");
is(count_msg('crit', qq{write() of journal "$JOURNAL" failed after $X of $L }
                    . 'bytes, the 1 opt-outs of this group are not '
                    . "recorded, journal truncated back to $N bytes $ENOSPC"),
   3, 'A: [crit] with the figures, once per failed POST')
    or diag $t->error_log;
is(count_log(qr/\[alert\]/), 0, 'A: no [alert]');

# ---------------------------------------------------------------- B: no undo

# a new, append-only journal: ftruncate() fails with EPERM
ok(rename($JOURNAL, "$fs/journal.A.log"), 'B: journal renamed');
ok($t->reopen, 'B: nginx -s reopen');
ok(-e $JOURNAL, 'B: a new journal');
my $append_only = system('chattr', '+a', $JOURNAL) == 0;

SKIP: {
    skip 'chattr +a does not work on this tmpfs', 13 unless $append_only;

    $room = fill('filler2', 8192);
    is($room, 8192, 'B: 8192 bytes left on the tmpfs');

    my $crit0 = count_log(qr/\[crit\]/);
    ($ok, $failed, $other) = run_full('filler2', 2);
    $k = @$ok - 5;

    is(scalar @$other, 0, 'B: every answer is 200 or 500')
        or diag join "\n", @$other;
    is(scalar @$failed, 3, 'B: the failed POST and two more while full: 500');

    $N = $k * $L;
    $X = $room - $N;
    ok($X > 0 && $X < $L, "B: the failed write was short ($X of $L bytes)");

    @raw = $t->file_lines('jfs/journal.log');
    is(scalar @raw, @$ok + 1, 'B: one line per 200 and the torn one');
    is(length($raw[$k] // ''), $X,
       'B: the torn line, ended, after the k lines');
    @recs = $t->journal_lines('jfs/journal.log');
    is(scalar(grep { $_->{_invalid} } @recs), 1,
       'B: only the torn line is invalid');
    is_deeply([map { $_->{dest} } grep { !$_->{_invalid} } @recs], $ok,
              'B: every 200 destination is one whole line, and no other');

    is(count_msg('crit', qq{write() of journal "$JOURNAL" failed after }
                        . "$X of $L bytes, 0 of the 1 opt-outs of this "
                        . "group are whole lines at $N bytes but answered "
                        . "as failed, the others are not recorded $ENOSPC"),
       1, 'B: [crit] with the figures of the short write')
        or diag $t->error_log;
    my $E = $N + $X;
    is(count_msg('alert', qq{ftruncate() of journal "$JOURNAL" back to }
                         . "$N bytes failed, it ends at $E bytes with a "
                         . 'partial line, ended before the next group '
                         . '(1: Operation not permitted)'),
       1, 'B: [alert] for the failed truncation');
    is(count_msg('crit', qq{write() of journal "$JOURNAL" failed, the 1 }
                        . "opt-outs ($L bytes) of this group are not "
                        . "recorded, nothing written $ENOSPC"),
       2, 'B: [crit] for the POSTs while full');
    is(count_log(qr/\[crit\]/) - $crit0, 3, 'B: no other [crit]');
    is(count_msg('error', qq{journal "$JOURNAL" ended with a partial line }
                         . "at $E bytes, ended it"),
       1, 'B: [error] when the partial line is ended');
}

$t->stop;
system('chattr', '-a', $JOURNAL);

# ---------------------------------------------------------------- replay

my @keys_ok_a = map { $t->skey(dest => $_) } @$ok_a;

my ($rc, $out) = replay("$fs/journal.A.log");
is($rc, 0, 'A: replay exits 0') or diag $out;
my $A = @keys_ok_a;
my ($summary) = $out =~ /^(replayed .*)$/m;
is($summary, "replayed $A records: $A added, 0 already present, "
             . '0 deleted, 0 skipped',
     "A: replay restores the $A lines");
my $got = $t->mc_get_multi(@keys_ok_a) || {};
is(scalar(keys %$got), $A, 'A: every opt-out answered 200 is in memcached');
$got = $t->mc_get_multi(map { $t->skey(dest => $_) } @$failed_a) || {};
is(scalar(keys %$got), 0, 'A: no opt-out answered 500 is in memcached');

SKIP: {
    skip 'chattr +a does not work on this tmpfs', 4 unless $append_only;

    my $B = @$ok;
    ($rc, $out) = replay($JOURNAL);
    is($rc, 0, 'B: replay exits 0') or diag $out;
    ($summary) = $out =~ /^(replayed .*)$/m;
    is($summary, sprintf('replayed %d records: %d added, 0 already present, '
                         . '0 deleted, 1 skipped', $B + 1, $B),
         "B: replay restores the $B lines and skips the torn one");
    $got = $t->mc_get_multi(map { $t->skey(dest => $_) } @$ok) || {};
    is(scalar(keys %$got), $B,
       'B: every opt-out answered 200 is in memcached');
    $got = $t->mc_get_multi(map { $t->skey(dest => $_) } @$failed) || {};
    is(scalar(keys %$got), 0, 'B: no opt-out answered 500 is in memcached');
}

# ---------------------------------------------------------------- C: start

# a partial line at start (a crash in the middle of a write) is ended by
# the master, so that the first line of the new run stands on its own
$t->write_file('jfs/journal.C.log', '{"t":1795424400.250,"act', 0644);
$t->write_conf($t->optout_http(journal => 'jfs/journal.C.log'));
$t->start;
my ($st, $dest) = post();
is($st, 200, 'C: POST after a start on a partial line: 200');
@raw = $t->file_lines('jfs/journal.C.log');
is(scalar @raw, 2, 'C: the partial line and the new one');
is(($t->journal_lines('jfs/journal.C.log'))[1]{dest}, $dest,
   'C: the new line is whole');
is(count_msg('warn', qq{journal "$fs/journal.C.log" ends with a partial }
                    . 'line, ending it; replay skips such lines'),
   1, 'C: [warn] at start');
$t->stop;

# ---------------------------------------------------------------- D: clients

# 4 concurrent clients on 2 workers, so that groups hold several lines
$t->write_conf($t->optout_http(journal => 'jfs/journal.D.log'));
$t->start;
$JOURNAL = "$fs/journal.D.log";
$room = fill('filler3', 16384);
is($room, 16384, 'D: 16384 bytes left on the tmpfs');

my $crit1 = count_log(qr/\[crit\]/);

sub post_n {
    my ($i) = @_;
    my $dest = OptoutTest::phone(6000000 + $i);
    my $r = $t->post_one_click('/u/' . $t->token(dest => $dest,
                                                 campaign => 1000));
    return ($r->{status}, $dest);
}

# each client POSTs until it gets a 500, then twice more
my @res = OptoutTest::run_parallel(4, sub {
    my ($c) = @_;
    my (@ok, @failed, @other);
    for my $i (1 .. 500) {
        my ($st, $dest) = post_n($c * 10000 + $i);
        if ($st == 200) { push @ok, $dest }
        elsif ($st == 500) { push @failed, $dest }
        else { push @other, "$dest: $st" }
        last if @failed == 3 || @other;
    }
    return { ok => \@ok, failed => \@failed, other => \@other };
});
unlink "$fs/filler3" or die "unlink: $!";
push @res, OptoutTest::run_parallel(4, sub {
    my ($c) = @_;
    my (@ok, @other);
    for my $i (1 .. 3) {
        my ($st, $dest) = post_n($c * 10000 + 1000 + $i);
        if ($st == 200) { push @ok, $dest } else { push @other, "$dest: $st" }
    }
    return { ok => \@ok, failed => [], other => \@other };
});

my (%ok, @failed_d, @other_d);
for my $r (@res) {
    $ok{$_}++ for @{ $r->{ok} || [] };
    push @failed_d, @{ $r->{failed} || [] };
    push @other_d, @{ $r->{other} || [] }, $r->{error} // ();
}
is(scalar @other_d, 0, 'D: every answer is 200 or 500')
    or diag join "\n", @other_d;
is(scalar @failed_d, 12, 'D: each client got three 500s while full');
is(scalar(grep { @{ $_->{ok} } == 3 } @res[4 .. 7]), 4,
   'D: 200 again for every client once space is back');

like($t->journal_raw('jfs/journal.D.log'), qr/\n\z/,
     'D: the journal ends with a newline');
@recs = $t->journal_lines('jfs/journal.D.log');
is(scalar(grep { $_->{_invalid} } @recs), 0, 'D: every line is valid JSON');
is(scalar @recs, scalar(keys %ok), 'D: one journal line per 200');
is_deeply([sort map { $_->{dest} } @recs], [sort keys %ok],
          'D: the journal holds exactly the 200 destinations');

# the [crit] lines account for every 500, group by group
my $not = 0;
for (split /\n/, $t->error_log) {
    next unless /\[crit\].*journal "\Q$JOURNAL\E".* the (\d+) opt-outs/;
    $not += $1;
}
is($not, scalar @failed_d, 'D: the [crit] lines count every 500');
is(count_log(qr/\[crit\]/) - $crit1,
   count_log(qr/\[crit\].*journal "\Q$JOURNAL\E"/),
   'D: no other [crit]');

# a worker writes only while it holds the journal's record lock: a POST
# waits while another process holds it (and closing any descriptor of the
# file would release the test's lock: only stat it meanwhile)
my $lines0 = $t->journal_count('jfs/journal.D.log');
my $size0 = -s $JOURNAL;
open my $lk, '>>', $JOURNAL or die "$JOURNAL: $!";
my $flock = sub { pack 's s x4 q q i x4', $_[0], SEEK_SET, 0, 0, 0 };
ok(fcntl($lk, F_SETLKW, $flock->(F_WRLCK)), 'D: the test holds the lock');
my $s = $t->send_request('POST', '/u/' . $t->token(dest => '+447700900999',
                                                  campaign => 1),
                         'List-Unsubscribe=One-Click',
                         'Content-Type' =>
                             'application/x-www-form-urlencoded');
ok(!IO::Select->new($s)->can_read(1), 'D: no answer while the lock is held');
is(-s $JOURNAL, $size0, 'D: and no line');
ok(fcntl($lk, F_SETLK, $flock->(F_UNLCK)), 'D: the test releases the lock');
is($t->read_response($s)->{status}, 200, 'D: then the POST answers 200');
close $lk;
is($t->journal_count('jfs/journal.D.log'), $lines0 + 1, 'D: with its line');
$t->stop;

ok($t->error_log_clean(qr/optout: write\(\) of journal/,
                       qr/optout: ftruncate\(\) of journal/),
   'no other alert/crit/emerg in error.log');

done_testing;
