#!/usr/bin/perl

# C unit tests of the webhook verifiers and the form decoder
# (tests/unit/test_webhook.c, vectors in tests/webhook-vectors.txt): runs
# build/test_webhook and passes its TAP through.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use Cwd qw(abs_path);

my $root = abs_path(File::Spec->catdir(dirname(abs_path($0)),
                                       File::Spec->updir));
my $bin = "$root/build/test_webhook";

unless (-x $bin) {
    print "1..0 # SKIP $bin is not built, run \"make build/test_webhook\"\n";
    exit 0;
}

chdir $root or die "cannot chdir to $root: $!\n";
exec $bin, "$root/tests/webhook-vectors.txt"
    or die "cannot exec $bin: $!\n";
