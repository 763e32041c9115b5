#!/usr/bin/perl

# Short libFuzzer runs (10 s each) of the token decoder, the normalizers,
# the keyword matcher, the webhook verifiers and the inbound parsers and
# answers, starting from a temporary copy of fuzz/seeds/*; a crash or a
# property violation (abort) makes the fuzzer exit non-zero.
# OPTOUT_FUZZ_TIME overrides the duration.

use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Spec;
use File::Temp qw(tempdir);
use POSIX ();
use Test::More;

my $root = abs_path(File::Spec->catdir(dirname(abs_path($0)),
                                       File::Spec->updir));
my @fuzzers = qw(token normalize keyword webhook inbound);
my $time = $ENV{OPTOUT_FUZZ_TIME} || 10;

my @missing = grep { !-x "$root/build/fuzz_$_" } @fuzzers;

plan skip_all => 'fuzzers are not built (build/fuzz_'
    . join(', build/fuzz_', @missing)
    . ' missing), run "make fuzz-short" (needs clang with libFuzzer)'
    if @missing;

plan tests => 2 * @fuzzers;

for my $name (@fuzzers) {
    my $dir = tempdir("optout-fuzz-$name-XXXXXX", TMPDIR => 1, CLEANUP => 1);
    my $seeds = "$root/fuzz/seeds/$name";
    my $n = 0;

    opendir(my $dh, $seeds) or die "cannot open $seeds: $!\n";

    for my $f (grep { -f "$seeds/$_" } readdir $dh) {
        copy("$seeds/$f", "$dir/$f") or die "cannot copy $seeds/$f: $!\n";
        $n++;
    }

    closedir $dh;

    ok($n > 0, "fuzz_$name: $n seed files");

    # output to a log, crash artifacts to the temporary directory
    my $log = "$dir.log";
    my @cmd = ("$root/build/fuzz_$name", "-max_total_time=$time",
               "-artifact_prefix=$dir/", $dir);

    my $pid = fork;
    die "cannot fork: $!\n" unless defined $pid;

    if ($pid == 0) {
        open(STDOUT, '>', $log) or POSIX::_exit(126);
        open(STDERR, '>&', \*STDOUT) or POSIX::_exit(126);
        exec { $cmd[0] } @cmd or POSIX::_exit(127);
    }

    waitpid($pid, 0);
    my $rc = $?;

    ok($rc == 0, "fuzz_$name ran $time s without failure (status $rc)");

    if ($rc != 0 && open(my $fh, '<', $log)) {
        my @lines = <$fh>;
        splice(@lines, 0, @lines - 40) if @lines > 40;
        diag(join '', @lines);
    }

    unlink $log;
}
