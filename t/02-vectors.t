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
use File::Temp ();
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

# token lengths stated in docs/token-format.md ("Token length"): every
# phone takes 7 bytes, the campaign 1 byte per 7 bits; each case is
# [campaign, sender, dest, characters]

my $email254 = ('a' x 64) . '@' . ('b' x 63) . '.' . ('c' x 63) . '.'
               . ('d' x 61);
my @lengths = (
    (map { ([ $_->[0], undef, '+10000000', $_->[1] ],
            [ $_->[0], undef, '+999999999999999', $_->[1] ]) }
     [ 0, 35 ], [ 127, 35 ], [ 128, 36 ], [ 16383, 36 ], [ 16384, 38 ],
     [ 2097151, 38 ], [ 2097152, 39 ], [ 268435455, 39 ],
     [ 268435456, 40 ], [ 34359738367, 40 ], [ 34359738368, 42 ],
     [ 4398046511103, 42 ], [ 4398046511104, 43 ],
     [ '562949953421311', 43 ], [ '562949953421312', 44 ],
     [ '72057594037927935', 44 ], [ '72057594037927936', 46 ],
     [ '9223372036854775807', 46 ], [ '9223372036854775808', 47 ],
     [ '18446744073709551615', 47 ]),
    [ 42, 'ACME', '+447700900123', 42 ],
    [ 7, undef, 'a@b.c', 34 ],
    [ '18446744073709551615', '+123456789012345', $email254, 400 ],
);

is(length $email254, 254, 'the longest email has 254 characters');

for my $c (@lengths) {
    my ($campaign, $sender, $dest, $want) = @$c;
    is(length token('k' x 32, 1, $campaign, $sender, $dest), $want,
       "Perl: campaign $campaign " . ($sender // '-') . ' '
       . substr($dest, 0, 16) . ": $want characters");
}

# the C core agrees, and its decoder takes the longest token and refuses
# the longer spellings up to and past its 428-character bound

my $ctl = "$root/build/optoutctl";

SKIP: {
    skip 'build/optoutctl not built', @lengths + 6 unless -x $ctl;

    my $dir = File::Temp::tempdir(CLEANUP => 1);
    my $kf = "$dir/k.key";
    open(my $kh, '>', $kf) or die "$kf: $!";
    print $kh 'k' x 32, "\n";
    close $kh;
    chmod 0600, $kf;

    my $longest;

    for my $c (@lengths) {
        my ($campaign, $sender, $dest, $want) = @$c;
        my @cmd = ($ctl, 'sign', '--key', $kf, '--campaign', $campaign,
                   defined $sender ? ('--sender', $sender) : (), $dest);
        open(my $p, '-|', @cmd) or die "optoutctl: $!";
        my $tok = do { local $/; <$p> } // '';
        close $p;
        $tok =~ s/\n\z//;
        is(length $tok, $want,
           "optoutctl sign: campaign $campaign " . ($sender // '-') . ' '
           . substr($dest, 0, 16) . ": $want characters");
        $longest = $tok if $want == 400;
    }

    # the exit status of optoutctl verify: 0 valid, 1 invalid
    my $verify = sub {
        my ($tok) = @_;
        my $out = qx{'$ctl' verify --key '$kf' '$tok' 2>&1};
        return $? >> 8;
    };

    is($verify->($longest), 0, 'the 400-character token is valid');
    is($verify->($longest . 'A'), 1, '401 characters: refused');
    is($verify->($longest . 'AA'), 1, '402 characters: refused');
    is($verify->($longest . ('A' x 28)), 1, '428 characters: refused');
    is($verify->($longest . ('A' x 29)), 1, '429 characters: refused');
    is($verify->(substr($longest, 0, 399)), 1, '399 characters: refused');
}

done_testing;
