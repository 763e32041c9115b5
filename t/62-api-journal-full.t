#!/usr/bin/perl

# The management API on a full disk: the journal lives on a tiny tmpfs,
# filled up.  Adds (one rule, an array) and removals answer 500 50000,
# and memcached is not written: nothing is answered or stored before its
# journal line.  Once space is back they answer 200 by themselves.
#
# Needs root (mount); skipped otherwise.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use Time::HiRes qw(time);
use OptoutTest;

OptoutTest->require_module;

plan skip_all => 'needs root to mount a tmpfs' unless $> == 0;

my $JSON = JSON::PP->new->utf8->canonical;
my $t = OptoutTest->new(workers => 1);
my $fs = $t->tmpfs('jfs', '256k')
    // plan skip_all => 'cannot mount a tmpfs';

$t->setup(journal => 'jfs/journal.log',
          server => 'location /api { optout_api; } '
              . 'location = /check { optout_check; }');
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub api {
    my ($method, $path, $body) = @_;
    my $r = $t->request($method, $path, body => $body,
        headers => defined $body ? { 'Content-Type' => 'application/json' }
                                 : {});
    my $j = eval { $JSON->decode($r->{content}) } || {};
    return "$r->{status} " . ($j->{errors} ? $j->{errors}[0]{code} : 'ok');
}

my $A = '+447700900501';
my $B = '+447700900502';

is(api('POST', '/api', '{"destination":"' . $A . '"}'), '200 ok',
   'A added while there is space');

# fill the tmpfs: no byte left for a journal line
open my $fh, '>', "$fs/filler" or die "filler: $!";
1 while syswrite $fh, "\0" x 4096;
close $fh;

# the journal's last page still takes lines: add until one is refused
my ($st, $n, $B0) = ('', 0);
while ($n < 200) {
    $B0 = sprintf('+4477009006%02d', $n++);
    $st = api('POST', '/api', '{"destination":"' . $B0 . '"}');
    last if $st ne '200 ok';
}
is($st, '500 50000', 'one rule, disk full: 500 50000');
is($t->mc_get($t->skey(dest => $B0)), undef,
   'the refused rule never reached memcached');

my $size = -s "$fs/journal.log";
my $lines = () = $t->file_lines('jfs/journal.log');
open my $jf, '<', "$fs/journal.log" or die "journal: $!";
seek $jf, -1, 2;
read $jf, my $last, 1;
close $jf;
is($last, "\n", 'the journal ends on a line boundary');

is(api('POST', '/api', '{"destination":"' . $B . '"}'), '500 50000',
   'again: 500 50000');
is(api('POST', '/api', $JSON->encode([map { { destination => $_ } }
                                      $B, '+447700900503'])),
   '500 50000', 'an array, disk full: 500 50000');
is(api('DELETE', '/api?destination=' . OptoutTest::_urlenc($A)),
   '500 50000', 'a removal, disk full: 500 50000');
is(-s "$fs/journal.log", $size, 'nothing more in the journal');
is($t->mc_get($t->skey(dest => $B)), undef, 'B never reached memcached');
is($t->mc_get($t->skey(dest => '+447700900503')), undef,
   'nor the array');
ok(defined $t->mc_get($t->skey(dest => $A)), 'A is still in memcached');

unlink "$fs/filler" or die "unlink: $!";

is(api('POST', '/api', '{"destination":"' . $B . '"}'), '200 ok',
   'space back: B added');
is(api('DELETE', '/api?destination=' . OptoutTest::_urlenc($A)), '200 ok',
   'space back: A removed');
my @l = $t->journal_lines('jfs/journal.log');
is(scalar @l, $lines + 2, 'two more lines');
is(join(',', map { "$_->{action}:$_->{dest}" } @l[-2, -1]),
   "optout:$B,optin:$A", 'exactly the lines answered 200');
is(scalar(grep { $_->{dest} eq $B0 } @l), 0, 'no line of the refused rule');

$t->stop;
ok($t->error_log_clean(qr/\[crit\].*journal/),
   'no alert/emerg, and crit only about the journal');

done_testing;
