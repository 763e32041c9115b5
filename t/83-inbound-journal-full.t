#!/usr/bin/perl

# Inbound keywords on a full disk: the journal lives on a tiny tmpfs,
# filled up.  A STOP and a START answer 500 50000, nothing reaches
# memcached and the check's answer does not change; the application
# behind proxy_pass gets nothing either.  Once space is back they act.
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
          http => 'server { listen 127.0.0.1:%%PORT:app%%; '
              . 'access_log %%PREFIX%%/logs/app.log; '
              . 'location / { return 200 "app\n"; } }',
          server => 'location = /check { optout_check; } '
              . 'location /in { optout_inbound; optout_inbound_verify off; '
              . 'proxy_pass http://127.0.0.1:%%PORT:app%%; }');
ok($t->mc_set('optout:marker:0', '1 ' . int time), 'marker set');

sub msg {
    my ($from, $text) = @_;
    my $r = $t->request('POST', '/in', headers => {
                            'Content-Type' => 'application/json' },
                        body => $JSON->encode({ from => $from,
                                                to => '+15005550006',
                                                text => $text }));
    my $j = eval { $JSON->decode($r->{content}) } || {};
    return "$r->{status} " . ($j->{errors} ? $j->{errors}[0]{code}
                                           : $r->{content});
}

sub check {
    $t->get('/check?to=' . OptoutTest::_urlenc($_[0]))->{status};
}

my $A = '+447700900801';

is(msg($A, 'STOP'), "200 app\n", 'STOP while there is space');
is(check($A), 403, 'A blocked');

# fill the tmpfs: no byte left for a journal line
open my $fh, '>', "$fs/filler" or die "filler: $!";
1 while syswrite $fh, "\0" x 4096;
close $fh;

# the journal's last page still takes lines: STOP until one is refused
my ($st, $n, $B) = ('', 0);
while ($n < 200) {
    $B = sprintf('+4477009008%02d', 10 + $n++);
    $st = msg($B, 'STOP');
    last if $st ne "200 app\n";
}
is($st, '500 50000', 'STOP, disk full: 500 50000');
is($t->mc_get($t->skey(dest => $B)), undef,
   'the refused STOP never reached memcached');
is(check($B), 204, 'the check still allows it');

my $size = -s "$fs/journal.log";
my $app = () = $t->file_lines('logs/app.log');

is(msg($A, 'START'), '500 50000', 'START, disk full: 500 50000');
is(check($A), 403, 'A still blocked');
ok(defined $t->mc_get($t->skey(dest => $A)), 'A still in memcached');
is(-s "$fs/journal.log", $size, 'nothing more in the journal');
is(scalar(() = $t->file_lines('logs/app.log')), $app,
   'the application got neither refused message');

unlink "$fs/filler" or die "unlink: $!";

is(msg($A, 'START'), "200 app\n", 'space back: START');
is(check($A), 204, 'A allowed');
my @l = $t->journal_lines('jfs/journal.log');
is("$l[-1]{action}:$l[-1]{dest}:$l[-1]{keyword}", "optin:$A:START",
   'the last line is the START answered');
is(scalar(grep { $_->{dest} eq $B } @l), 0, 'no line of the refused STOP');

$t->stop;
ok($t->error_log_clean(qr/\[crit\].*journal/),
   'no alert/emerg, and crit only about the journal');

done_testing;
