#!/usr/bin/perl

# C unit tests of the inbound-message core: the four body formats, the
# replies, the TwiML and JSON answers and the journal's keyword field
# (tests/unit/test_inbound.c): runs build/test_inbound and passes its TAP
# through.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use Cwd qw(abs_path);

my $root = abs_path(File::Spec->catdir(dirname(abs_path($0)),
                                       File::Spec->updir));
my $bin = "$root/build/test_inbound";

unless (-x $bin) {
    print "1..0 # SKIP $bin is not built, run \"make build/test_inbound\"\n";
    exit 0;
}

chdir $root or die "cannot chdir to $root: $!\n";
exec $bin or die "cannot exec $bin: $!\n";
