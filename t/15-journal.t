#!/usr/bin/perl

# Journal: the line of a POST is in the file when the 200 arrives; with two
# workers and concurrent clients every line is complete, valid JSON and
# none is lost or interleaved; "nginx -s reopen" after renaming the journal
# sends new lines to a new file.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 2);
$t->setup;

# ---------------------------------------------------------------- sequential

my @late;
my $seq_ok = 0;
for my $i (1 .. 50) {
    my $dest = OptoutTest::phone(1000 + $i);
    my $r = $t->post_one_click('/u/' . $t->token(dest => $dest,
                                                 campaign => $i));
    $seq_ok++ if $r->{status} == 200;
    # read right after the answer
    my @l = $t->file_lines('journal.log');
    my $last = @l ? $l[-1] : '';
    push @late, "POST $i: " . scalar(@l) . " lines, last: $last"
        unless @l == $i && $last =~ /"dest":"\Q$dest\E"/
               && $last =~ /"campaign":"$i"/;
}
is($seq_ok, 50, '50 sequential POSTs: 200');
is(scalar @late, 0, 'each line is in the journal when the 200 arrives')
    or diag join "\n", @late[0 .. ($#late < 4 ? $#late : 4)];
like($t->journal_raw, qr/\n\z/, 'journal ends with a newline');

# ---------------------------------------------------------------- concurrent

my @res = OptoutTest::run_parallel(4, sub {
    my ($c) = @_;
    my ($ok, @bad) = (0);
    for my $i (1 .. 100) {
        my $n = 100000 + $c * 1000 + $i;
        my $r = $t->post_one_click('/u/' . $t->token(
            dest => OptoutTest::phone($n), campaign => $n));
        if ($r->{status} == 200) { $ok++ }
        else { push @bad, "$n: $r->{status} " . ($r->{error} // '') }
    }
    return { ok => $ok, bad => \@bad };
});
my $conc_ok = 0;
$conc_ok += $_->{ok} // 0 for @res;
is($conc_ok, 400, '4 clients x 100 POSTs: all 200')
    or diag explain [map { $_->{bad} || $_->{error} } @res];

my $raw = $t->journal_raw;
like($raw, qr/\n\z/, 'journal ends with a newline');
my @lines = split /\n/, $raw;
is(scalar @lines, 450, '450 journal lines');

my (%seen, @invalid);
for my $line (@lines) {
    my $rec = eval { JSON::PP->new->decode($line) };
    if (ref $rec ne 'HASH' || $line !~ /^\{.*\}$/
        || ($line =~ tr/{//) != 1)
    {
        push @invalid, $line;
        next;
    }
    $seen{ $rec->{dest} // '' }++;
    push @invalid, $line
        unless ($rec->{action} // '') eq 'optout'
               && ($rec->{source} // '') eq 'link'
               && defined $rec->{campaign} && defined $rec->{t}
               && ($rec->{channel} // '') eq 'sms'
               && ($rec->{client} // '') eq '127.0.0.1'
               && ($rec->{kid} // 0) == 1;
}
is(scalar @invalid, 0, 'every line is one complete, valid JSON record')
    or diag join "\n", @invalid[0 .. ($#invalid < 4 ? $#invalid : 4)];

my @missing;
for my $c (0 .. 3) {
    for my $i (1 .. 100) {
        my $d = OptoutTest::phone(100000 + $c * 1000 + $i);
        push @missing, $d unless ($seen{$d} // 0) == 1;
    }
}
is(scalar @missing, 0, 'each concurrent POST has exactly one line')
    or diag "missing or duplicated: @missing[0 .. ($#missing < 9 ? $#missing : 9)]";

# campaign of every line matches its destination

my $mismatch = 0;
for my $rec ($t->journal_lines) {
    my ($n) = ($rec->{dest} // '') =~ /^\+4477(\d{8})$/;
    $mismatch++ unless defined $n
        && ($n > 100000 ? $rec->{campaign} eq $n + 0
                        : $rec->{campaign} eq ($n - 1000));
}
is($mismatch, 0, 'no line mixes fields of two records');

# ---------------------------------------------------------------- reopen

ok(rename($t->path('journal.log'), $t->path('journal.log.1')),
   'journal renamed');
ok($t->reopen, 'nginx -s reopen');

for my $i (1 .. 6) {
    my $dest = OptoutTest::phone(200000 + $i);
    $t->post_one_click('/u/' . $t->token(dest => $dest, campaign => $i));
}

ok(-e $t->path('journal.log'), 'a new journal file after reopen');
my @new = $t->journal_lines('journal.log');
is(scalar @new, 6, 'new lines go to the new file');
is(scalar(grep { ($_->{dest} // '') =~ /^\+447700200/ } @new), 6,
   'the new file holds the new destinations');
is($t->journal_count('journal.log.1'), 450,
   'the renamed file got no new line');
is(sprintf('%04o', ((stat $t->path('journal.log'))[2] // 0) & 07777),
   '0640', 'journal mode after reopen: others have no access');
is(sprintf('%04o', ((stat $t->path('journal.log.1'))[2] // 0) & 07777),
   '0640', 'the renamed journal keeps its mode');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
