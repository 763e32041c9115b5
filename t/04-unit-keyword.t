#!/usr/bin/perl

# C unit tests of keyword matching (tests/unit/test_keyword.c): the
# normalizer, the keyword sets, both match modes and the country of a
# number; runs build/test_keyword and passes its TAP through.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use Cwd qw(abs_path);

my $root = abs_path(File::Spec->catdir(dirname(abs_path($0)),
                                       File::Spec->updir));
my $bin = "$root/build/test_keyword";

unless (-x $bin) {
    print "1..0 # SKIP $bin is not built, run \"make build/test_keyword\"\n";
    exit 0;
}

chdir $root or die "cannot chdir to $root: $!\n";
exec $bin or die "cannot exec $bin: $!\n";
