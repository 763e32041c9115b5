#!/usr/bin/perl

# Single checks under concurrency: several multi-gets in flight per worker
# (optout_check_concurrency) and the lookups that wait for one of them
# coalesced into the next.  optout_check_concurrency at nginx -t: a number
# from 1 to 64.  Then 8 parallel clients check 2,000 distinct destinations,
# some opted out account-wide, some for one sender, half of the checks
# with that sender: every answer must be exactly the expected one (204, or
# 403 with code 40300, the rule's scope and campaign), so that no lookup
# takes another's answer.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8;

my $N       = 2000;
my $CLIENTS = 8;

my $t = OptoutTest->new(workers => 1);

# ---------------------------------------------------------------- nginx -t

# a number from 1 to 64, once

for my $case (['1', 1], ['64', 1], ['0', 0], ['65', 0], ['many', 0]) {
    my ($v, $good) = @$case;
    $t->setup(http => "optout_check_concurrency $v;", no_start => 1);
    my ($trc, $tout) = $t->nginx_test;
    if ($good) {
        is($trc, 0, "optout_check_concurrency $v: nginx -t passes")
            or diag $tout;
    } else {
        isnt($trc, 0, "optout_check_concurrency $v: nginx -t fails");
        like($tout, qr/\[emerg\].*(between 1 and 64|invalid number)/,
             "optout_check_concurrency $v: says why") or diag $tout;
    }
}

$t->setup(http => "optout_check_concurrency 2;\n"
                  . "    optout_check_concurrency 2;", no_start => 1);
my ($drc, $dout) = $t->nginx_test;
isnt($drc, 0, 'optout_check_concurrency twice: nginx -t fails');
like($dout, qr/"optout_check_concurrency" directive is duplicate/,
     'optout_check_concurrency twice: is duplicate') or diag $dout;

# ---------------------------------------------------------------- answers

# 3 in flight for 8 clients: some lookups go at once, others wait and
# share a multi-get
$t->setup(http => 'optout_check_concurrency 3;', server => <<'EOF');
        location = /check { optout_check; }
EOF

sub dest { OptoutTest::phone(600000 + $_[0]) }

# destination i: an account-wide rule when i % 7 == 0 (campaign 1000 + i),
# a rule for sender ACME when i % 11 == 3 (campaign 5000 + i); the check
# names ACME when i is odd
sub expected {
    my ($i) = @_;
    return ['blocked', 'account', 1000 + $i] if $i % 7 == 0;
    return ['blocked', 'sender', 5000 + $i] if $i % 11 == 3 && $i % 2;
    return ['allowed'];
}

my $journal = '';
for my $i (0 .. $N - 1) {
    my @rules;
    push @rules, ['"scope":"account"', 1000 + $i] if $i % 7 == 0;
    push @rules, ['"scope":"sender","sender":"ACME"', 5000 + $i]
        if $i % 11 == 3;
    for my $r (@rules) {
        $journal .= sprintf '{"t":1795424400.000,"action":"optout","ns":"",'
            . '"dest":"%s",%s,"campaign":"%d","source":"api",'
            . '"channel":"sms","client":"","kid":0}' . "\n",
            dest($i), $r->[0], $r->[1];
    }
}
$t->write_file('seed.journal', $journal);

my ($rc, $out) = $t->ctl('replay', '--store',
                         '--SERVER=127.0.0.1:' . $t->mc_port,
                         '--store-secret', $t->path('store.key'),
                         $t->path('seed.journal'));
is($rc, 0, 'replay of the seed journal') or diag $out;

my ($nacct, $nsnd) = (0, 0);
for my $i (0 .. $N - 1) {
    $nacct++ if $i % 7 == 0;
    $nsnd++ if $i % 11 == 3;
}
like($out, qr/\b@{[ $nacct + $nsnd ]} added/,
     "replay added $nacct account and $nsnd sender rules") or diag $out;

# what went wrong with one answer, or undef
sub wrong {
    my ($i, $r) = @_;
    my $e = expected($i);
    my $h = $r->{headers};
    my $got = sprintf '%s %s %s %s', $r->{status},
        $h->{'x-optout-status'} // '-', $h->{'x-optout-scope'} // '-',
        $h->{'x-optout-campaign'} // '-';

    if ($e->[0] eq 'allowed') {
        return undef if $r->{status} == 204
                        && ($h->{'x-optout-status'} // '') eq 'allowed';
        return "$i: expected 204 allowed, got $got";
    }

    my $j = eval { $JSON->decode($r->{content}) } || {};
    my $err = ref $j->{errors} eq 'ARRAY' ? $j->{errors}[0] : {};

    return undef if $r->{status} == 403
                    && ($h->{'x-optout-status'} // '') eq 'blocked'
                    && ($h->{'x-optout-scope'} // '') eq $e->[1]
                    && ($h->{'x-optout-campaign'} // '') eq $e->[2]
                    && ($err->{code} // '') eq '40300'
                    && ($err->{campaign} // '') eq $e->[2]
                    && ($err->{scope} // '') eq $e->[1];
    return "$i: expected 403 40300 $e->[1] $e->[2], got $got "
           . ($err->{code} // '-');
}

sub run_clients {
    my @res = OptoutTest::run_parallel($CLIENTS, sub {
        my ($c) = @_;
        my %r = (answers => 0, allowed => 0, blocked => 0, wrong => []);
        for (my $i = $c; $i < $N; $i += $CLIENTS) {
            my $path = '/check?to=' . OptoutTest::_urlenc(dest($i))
                       . ($i % 2 ? '&from=ACME' : '');
            my $a = $t->get($path);
            $r{answers}++;
            $r{allowed}++ if $a->{status} == 204;
            $r{blocked}++ if $a->{status} == 403;
            my $w = wrong($i, $a);
            push @{ $r{wrong} }, $w if defined $w && @{ $r{wrong} } < 5;
            $r{nwrong}++ if defined $w;
        }
        return \%r;
    });

    my %sum = (answers => 0, allowed => 0, blocked => 0, nwrong => 0);
    my @wrong;
    for my $r (@res) {
        push @wrong, $r->{error} if $r->{error};
        $sum{$_} += $r->{$_} // 0 for keys %sum;
        push @wrong, @{ $r->{wrong} || [] };
    }
    return (\%sum, \@wrong);
}

my $nblocked = grep { expected($_)->[0] eq 'blocked' } 0 .. $N - 1;

for my $round (1, 2) {
    my ($sum, $wrong) = run_clients();
    is($sum->{answers}, $N, "round $round: $N answers");
    is($sum->{nwrong}, 0, "round $round: every answer exact")
        or diag join "\n", @$wrong;
    is($sum->{blocked}, $nblocked, "round $round: $nblocked blocked");
    is($sum->{allowed}, $N - $nblocked,
       "round $round: " . ($N - $nblocked) . ' allowed');
}

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');
unlike($t->error_log, qr/\[error\]/, 'no memcached error logged');


done_testing;
