#!/usr/bin/perl

# Tampered and invalid tokens: every tag byte and payload byte flipped,
# every truncation, '=' padding, appended characters, oversized tokens,
# unknown key id, a key that is not configured, malformed base64.  GET and
# POST of each give 404 and nothing reaches memcached or the journal; the
# rejection is logged at info level.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);
$t->key('other', 1);                 # same id, not configured
$t->setup;

my %case;    # label => token

sub add { my ($label, $tok) = @_; $case{$label} = $tok }

for my $l ({ dest => '+447700900123', campaign => 42, name => 'phone' },
           { dest => 'a.b@example.com', campaign => 70000, name => 'email' },
           { dest => '+447700900124', campaign => 3, sender => 'ACME',
             name => 'sender' })
{
    my $name = delete $l->{name};
    my $tok = $t->token(%$l);
    my $bin = OptoutTest::b64url_decode($tok);
    my $len = length $bin;

    # sanity: the untouched token is valid (GET only, changes nothing)
    is($t->get("/u/$tok")->{status}, 200, "$name: untouched token 200");

    for my $i (0 .. $len - 1) {
        my $what = $i >= $len - 16 ? 'tag' : 'payload';
        for my $mask (0x01, 0x80) {
            my $b = $bin;
            substr($b, $i, 1) = chr(ord(substr $b, $i, 1) ^ $mask);
            add(sprintf('%s: %s byte %d ^ 0x%02x', $name, $what, $i, $mask),
                OptoutTest::b64url($b));
        }
    }

    for my $l (0 .. length($tok) - 1) {
        add("$name: truncated to $l chars", substr($tok, 0, $l))
            if $l > 0;
    }
    for my $l (0 .. $len - 1) {
        add("$name: binary truncated to $l bytes",
            OptoutTest::b64url(substr $bin, 0, $l)) if $l > 0;
    }

    add("$name: padded =", "$tok=");
    add("$name: padded ==", "$tok==");
    add("$name: std padding", do {
        my $p = $tok; $p .= '=' x ((4 - length($p) % 4) % 4);
        $p eq $tok ? "$tok====" : $p });
    for my $x ('A', 'AA', 'AAA', 'AAAA', '-', '_', '0', 'x1') {
        add("$name: appended '$x'", $tok . $x);
    }
    add("$name: appended byte", OptoutTest::b64url($bin . "\0"));
    add("$name: prepended 'A'", "A$tok");
    add("$name: oversized (token + 2000 chars)", $tok . ('A' x 2000));

    my $std = $tok;
    $std =~ tr{-_}{+/};
    add("$name: standard base64 alphabet", $std) if $std ne $tok;

    for my $c ('+', '*', '.', '!', '~', '%2A', '%20') {
        my $m = $tok;
        substr($m, 3, 1) = $c;
        add("$name: malformed char '$c'", $m);
    }

    add("$name: unknown key id 2", $t->token(%$l, key_id => 2));
    add("$name: unknown key id 255", $t->token(%$l, key_id => 255));
    add("$name: signed with a key that is not configured",
        $t->token(%$l, key => 'other'));
}

add('oversized 2000 chars', 'A' x 2000);
add('oversized 2000 valid-looking chars', 'EAEq' x 500);
add('empty-ish', 'A');
add('version 2 token', do {
    my $b = OptoutTest::token_payload(dest => '+447700900123',
                                      campaign => 1, key_id => 1);
    substr($b, 0, 1) = chr(0x20);
    $b .= substr(Digest::SHA::hmac_sha256($b, $t->key_bytes('k1')), 0, 16);
    OptoutTest::b64url($b);
});
add('non-minimal LEB128 campaign, correctly signed', do {
    my $b = OptoutTest::token_payload(dest => '+447700900123',
                                      campaign => 0, key_id => 1);
    # campaign 0 encoded as 0x80 0x00 instead of 0x00
    substr($b, 2, 1) = "\x80\x00";
    $b .= substr(Digest::SHA::hmac_sha256($b, $t->key_bytes('k1')), 0, 16);
    OptoutTest::b64url($b);
});
add('trailing garbage before a correct tag', do {
    my $b = OptoutTest::token_payload(dest => '+447700900123',
                                      campaign => 1, key_id => 1) . "\0";
    $b .= substr(Digest::SHA::hmac_sha256($b, $t->key_bytes('k1')), 0, 16);
    OptoutTest::b64url($b);
});

diag(scalar(keys %case) . ' invalid tokens');

my (@bad_get, @bad_post);
for my $label (sort keys %case) {
    my $tok = $case{$label};
    my $g = $t->get("/u/$tok");
    push @bad_get, "$label: $g->{status}" unless $g->{status} == 404;
    my $p = $t->post_one_click("/u/$tok");
    push @bad_post, "$label: $p->{status}" unless $p->{status} == 404;
}
is(scalar @bad_get, 0, 'GET of every invalid token: 404')
    or diag join "\n", @bad_get;
is(scalar @bad_post, 0, 'POST of every invalid token: 404')
    or diag join "\n", @bad_post;

# a few explicit ones, for readable failures
is($t->get('/u/' . $case{'phone: tag byte 25 ^ 0x01'})->{status}, 404,
   'flipped last tag byte: 404');
is($t->post_one_click('/u/' . $case{'phone: padded ='})->{status}, 404,
   'padded token: 404');
is($t->post_one_click('/u/' . $case{'phone: unknown key id 2'})->{status},
   404, 'unknown key id: 404');
is($t->post_one_click('/u/' . $case{'phone: signed with a key that is not '
                                    . 'configured'})->{status},
   404, 'unconfigured key: 404');

my $st = $t->mc_stats;
is($st->{curr_items}, 0, 'nothing in memcached');
is($st->{cmd_set}, 0, 'no write reached memcached');
ok(!-e $t->path('journal.log') || -s $t->path('journal.log') == 0,
   'nothing in the journal');

my $log = $t->error_log // '';
my @info = grep { /\[info\].*optout.*(?:token|link)/i } split /\n/, $log;
ok(scalar @info >= scalar(keys %case),
   'an info-level line for each rejected token')
    or diag scalar(@info) . " info lines";
my @loud = grep { /\[(?:warn|error)\].*(?:token|link)/i } split /\n/, $log;
is(scalar @loud, 0, 'rejections are not logged above info')
    or diag join "\n", @loud[0 .. ($#loud < 4 ? $#loud : 4)];

my @alog = $t->log_lines('logs/optout.log', qr/^(?:GET|POST) 404 r=invalid /,
                         2 * keys(%case) + 4);
is(scalar(grep { /^(?:GET|POST) 404 r=invalid / } @alog),
   2 * keys(%case) + 4, 'access log: $optout_result invalid for each 404');

# control: the untouched token still works and is recorded

my $good = $t->token(dest => '+447700900123', campaign => 42);
is($t->post_one_click("/u/$good")->{status}, 200, 'control POST: 200');
is($t->mc_stats->{curr_items}, 1, 'control POST: rule stored');
is($t->journal_count, 1, 'control POST: journal line');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
