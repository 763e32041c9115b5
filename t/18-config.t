#!/usr/bin/perl

# Configuration errors: "nginx -t" fails with a clear message for unusable
# key files, duplicate or invalid key ids, a bad libmemcached configuration
# string and an optout_link without the directives it needs; a good
# configuration passes.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);

$t->key('k1', 1);
$t->key('k2', 2);
$t->key('store');
$t->write_file('short.key', ('a' x 31) . "\n", 0600);
$t->write_file('short2.key', 'abc', 0600);
$t->write_file('open.key', ('b' x 64) . "\n", 0644);
$t->write_file('group.key', ('c' x 64) . "\n", 0640);
$t->write_file('empty.key', '', 0600);

my $P = $t->prefix;

# optout_http() with a few lines replaced
sub conf {
    my (%o) = @_;
    my $body = $t->optout_http(keys => $o{keys} || [[1, 'k1']],
                               omit => $o{omit}, http => $o{http});
    $body =~ s/^\s*optout_store "[^"]*";\n/    optout_store "$o{store}";\n/m
        if defined $o{store};
    $body =~ s{^\s*optout_store_secret [^;]*;}
              {    optout_store_secret $o{store_secret};}m
        if defined $o{store_secret};
    $body =~ s{^\s*optout_secret 1 [^;]*;}{    $o{secret}}m
        if defined $o{secret};
    $t->write_conf($body);
    return $t->nginx_test;
}

sub bad {
    my ($name, $re, %o) = @_;
    my ($rc, $out) = conf(%o);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message") or diag $out;
    unlike($out, qr/test is successful/, "$name: not successful");
}

bad('missing key file', qr/\[emerg\].*cannot open key file.*nope\.key/,
    secret => "optout_secret 1 $P/nope.key;");
bad('key file shorter than 32 bytes', qr/\[emerg\].*at least 32/,
    secret => "optout_secret 1 $P/short.key;");
bad('3-byte key file', qr/\[emerg\].*at least 32/,
    secret => "optout_secret 1 $P/short2.key;");
bad('empty key file', qr/\[emerg\].*at least 32/,
    secret => "optout_secret 1 $P/empty.key;");
bad('key file mode 0644', qr/\[emerg\].*accessible by group or others/,
    secret => "optout_secret 1 $P/open.key;");
bad('key file mode 0640', qr/\[emerg\].*accessible by group or others/,
    secret => "optout_secret 1 $P/group.key;");
bad('duplicate key id', qr/\[emerg\].*duplicate/i,
    keys => [[1, 'k1'], [1, 'k2']]);
bad('key id 0', qr/\[emerg\].*invalid/i,
    secret => "optout_secret 0 $P/k1.key;");
bad('key id 256', qr/\[emerg\].*invalid/i,
    secret => "optout_secret 256 $P/k1.key;");
bad('key id not a number', qr/\[emerg\].*invalid/i,
    secret => "optout_secret one $P/k1.key;");

bad('store secret missing', qr/\[emerg\].*cannot open key file.*nope\.key/,
    store_secret => "$P/nope.key");
bad('store secret too short', qr/\[emerg\].*at least 32/,
    store_secret => "$P/short.key");
bad('store secret mode 0644', qr/\[emerg\].*accessible by group or others/,
    store_secret => "$P/open.key");

bad('invalid libmemcached configuration', qr/\[emerg\].*optout_store/,
    store => '--NOT-AN-OPTION=1');
bad('libmemcached configuration with garbage', qr/\[emerg\].*optout_store/,
    store => 'this is not a configuration');

bad('optout_link without optout_secret', qr/\[emerg\].*optout_secret/,
    omit => { optout_secret => 1 });
bad('optout_link without optout_store',
    qr/\[emerg\].*optout_store(?![_a-z])/,
    omit => { optout_store => 1 });
bad('optout_link without optout_store_secret',
    qr/\[emerg\].*optout_store_secret/,
    omit => { optout_store_secret => 1 });
bad('optout_link without optout_journal', qr/\[emerg\].*optout_journal/,
    omit => { optout_journal => 1 });

# a good configuration, with two keys

my ($rc, $out) = conf(keys => [[2, 'k2'], [1, 'k1']]);
is($rc, 0, 'good configuration: nginx -t exits 0') or diag $out;
like($out, qr/syntax is ok/, 'good configuration: syntax is ok');
like($out, qr/test is successful/, 'good configuration: test is successful');

# it also starts and serves a link

$t->memcached_start;
$t->start;
my $tok = OptoutTest::mint(key => $t->key_bytes('k1'), key_id => 1,
                           campaign => 1, dest => '+447700900123');
is($t->get("/u/$tok")->{status}, 200, 'good configuration serves a link');

# nginx -t of the running configuration with a non-empty journal

is($t->post_one_click("/u/$tok")->{status}, 200, 'POST: 200');
ok(-s $t->path('journal.log'), 'journal is not empty');
($rc, $out) = $t->nginx_test;
is($rc, 0, 'nginx -t with a non-empty journal exits 0') or diag $out;

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
