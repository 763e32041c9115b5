#!/usr/bin/perl

# What docs/store-format.md says about the items in memcached: rules are
# written with flags 0 and no expiry (by a link POST and by optoutctl
# replay); the marker is PREFIX "marker:0" on a single server, written by
# replay as "1 <unix seconds>" with flags 0 and no expiry; any value of
# the marker, empty included, seeds the server; a rule value that does not
# parse still blocks.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $t = OptoutTest->new(workers => 1);

$t->setup(server => <<'EOF');
        location = /check {
            optout_check;
        }
EOF

my $marker = 'optout:marker:0';
my $FREE = '+447700900581';

# flags, TTL (-1: no expiry) and value of a key, by the meta command mg
sub meta {
    my ($key) = @_;
    my $r = $t->mc_raw("mg $key f t v\r\n",
                       qr/(?:^EN\r\n|^VA \d+[^\r]*\r\n.*\r\n)\z/s);
    return undef unless defined $r && $r =~ /^VA (\d+) f(\d+) t(-?\d+)\r\n/;
    my ($len, $flags, $ttl) = ($1, $2, $3);
    return { flags => $flags, ttl => $ttl,
             value => substr($r, length $&, $len) };
}

sub set_raw {
    my ($key, $flags, $value) = @_;
    my $r = $t->mc_raw(sprintf("set %s %d 0 %d\r\n%s\r\n", $key, $flags,
                               length $value, $value));
    return defined $r && $r eq "STORED\r\n";
}

sub check {
    my ($dest) = @_;
    my $r = $t->get("/check?to=$dest");
    return join ' ', $r->{status}, $r->{headers}{'x-optout-status'} // '-',
                     $r->{headers}{'x-optout-campaign'} // '-';
}

# ---------------------------------------------------------------- markers

is(check($FREE), '403 unavailable -', 'no marker: unavailable');

ok(set_raw($marker, 0, ''), 'an empty marker');
is(check($FREE), '204 allowed -', 'an empty marker seeds the server');

ok(set_raw($marker, 7, 'x'), 'a marker of another tool, flags 7');
is(check($FREE), '204 allowed -', 'any marker value seeds the server');

ok($t->mc_delete($marker), 'marker deleted');
is(check($FREE), '403 unavailable -', 'marker gone: unavailable again');

my $rt = 1763900000;
$t->write_file('seed.journal',
    qq({"t":$rt.5,"action":"optout","ns":"","dest":"+447700900582",)
    . qq("scope":"account","campaign":"99","source":"api",)
    . qq("channel":"sms","client":"","kid":0}\n));
my $before = time;
my ($rc, $out) = $t->ctl('replay', '--store',
                         '--SERVER=127.0.0.1:' . $t->mc_port,
                         '--store-secret', $t->path('store.key'),
                         $t->path('seed.journal'));
is($rc, 0, 'optoutctl replay') or diag $out;

my $m = meta($marker);
is($m->{flags}, 0, 'replay: marker flags 0');
is($m->{ttl}, -1, 'replay: marker never expires');
like($m->{value}, qr/\A1 (\d+)\z/, 'replay: marker value "1 <seconds>"');
my ($mt) = ($m->{value} // '') =~ /\A1 (\d+)\z/;
ok(defined $mt && $mt >= $before && $mt <= time,
   'replay: the marker holds the time of the replay');
is(check($FREE), '204 allowed -', 'replay seeded the server');

# ---------------------------------------------------------------- rules

my $r = meta($t->skey(dest => '+447700900582'));
is($r->{flags}, 0, 'replay: rule flags 0');
is($r->{ttl}, -1, 'replay: rule never expires');
is($r->{value}, "1 99 $rt api sms 0", 'replay: rule value');

is($t->post_one_click('/u/' . $t->token(dest => '+447700900583',
                                        campaign => 42))->{status},
   200, 'link POST');
$r = meta($t->skey(dest => '+447700900583'));
is($r->{flags}, 0, 'link: rule flags 0');
is($r->{ttl}, -1, 'link: rule never expires');
like($r->{value}, qr/\A1 42 \d+ link sms 1\z/, 'link: rule value');

# an unreadable rule still blocks, and reports campaign 0

ok(set_raw($t->skey(dest => '+447700900584'), 5, 'not a rule'),
   'a malformed rule value, flags 5');
is(check('+447700900584'), '403 blocked 0', 'a malformed rule blocks');
is(check('+447700900582'), '403 blocked 99', 'the replayed rule blocks');
is(check('+447700900583'), '403 blocked 42', 'the link rule blocks');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
