#!/usr/bin/perl

# Independent implementation of the token and store key formats
# (docs/token-format.md, docs/store-format.md) with core Perl modules only:
# recomputes every line of tests/vectors.txt from its inputs.

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(hmac_sha256);
use File::Basename qw(dirname);
use File::Spec;
use Math::BigInt;
use MIME::Base64 qw(encode_base64url);
use Test::More;

my $root = abs_path(File::Spec->catdir(dirname(abs_path($0)),
                                       File::Spec->updir));
my $file = "$root/tests/vectors.txt";

sub leb128 {
    my ($n) = @_;
    my $v = Math::BigInt->new($n);
    my $out = '';

    while ($v >= 128) {
        $out .= chr(($v % 128)->numify | 0x80);
        $v = $v / 128;      # Math::BigInt: integer division
    }

    return $out . chr($v->numify);
}

# the namespace is not in the token: with one, its length byte and its
# bytes follow the body in the HMAC input only
sub token {
    my ($key, $kid, $campaign, $sender, $dest, $ns) = @_;
    my $email = $dest =~ /\@/ ? 1 : 0;
    my $data = chr(0x10 | $email | (defined $sender ? 2 : 0)) . chr($kid)
               . leb128($campaign);

    if ($email) {
        $data .= chr(length $dest) . $dest;

    } else {
        die "bad phone $dest\n" unless $dest =~ /^\+([1-9][0-9]{7,14})$/;
        my $hex = substr(Math::BigInt->new($1)->as_hex, 2);
        $data .= pack('H*', ('0' x (14 - length $hex)) . $hex);
    }

    $data .= chr(length $sender) . $sender if defined $sender;

    my $mac_in = $data;
    $mac_in .= chr(length $ns) . $ns if defined $ns && length $ns;

    return encode_base64url($data
                            . substr(hmac_sha256($mac_in, $key), 0, 16));
}

sub store_key {
    my ($key, $sender, $dest, $ns) = @_;
    my $msg = join "\0", 'optout-store-v1', $ns // '',
                   defined $sender ? "s$sender" : 'a', $dest;

    return unpack('H*', substr(hmac_sha256($msg, $key), 0, 16));
}

open(my $fh, '<', $file) or BAIL_OUT("cannot open $file: $!");

my %count;

while (my $line = <$fh>) {
    chomp $line;
    next if $line =~ /^#/ || $line eq '';

    my @f = split /\t/, $line, -1;
    is(scalar @f, 8, "line $.: 8 fields") or next;

    my ($kind, $key, $kid, $campaign, $sender, $dest, $ns, $want) = @f;
    $sender = undef if $sender eq '-';
    $ns = undef if $ns eq '-';
    $count{$kind}++;

    if ($kind eq 'token') {
        my $got = token($key, $kid, $campaign, $sender, $dest, $ns);
        is($got, $want, "token kid $kid campaign $campaign $dest "
           . ($sender // '(account)') . ' ns ' . ($ns // '-'));
        unlike($got, qr/[^A-Za-z0-9_-]/, 'token is base64url without padding');
        $count{token_ns}++ if defined $ns;

        if (defined $ns) {
            my $plain = token($key, $kid, $campaign, $sender, $dest);
            is(length $plain, length $want,
               "ns $ns: no extra token bytes");
            isnt($plain, $want, "ns $ns: the tag differs from no namespace");
        }

    } elsif ($kind eq 'storekey') {
        is(store_key($key, $sender, $dest, $ns), $want,
           "store key $dest " . ($sender // '(account)')
           . ' ns ' . ($ns // '-'));

    } else {
        fail("line $.: unknown kind $kind");
    }
}

close $fh;

cmp_ok($count{token} // 0, '>=', 6, 'at least 6 token vectors');
cmp_ok($count{storekey} // 0, '>=', 4, 'at least 4 store key vectors');
cmp_ok($count{token_ns} // 0, '>=', 3, 'at least 3 namespace token vectors');

# the SMS budget: 15-digit phone, campaign 2^32-1, account-wide: 40 chars
is(length token('k' x 32, 1, '4294967295', undef, '+999999999999999'), 40,
   'longest account-wide SMS token is 40 characters');

done_testing;
