#!/usr/bin/perl

# Partial failure of a multi-get: with 2 and 3 memcached servers, one behind
# FaultProxy, a reply of that server is cut (FIN or RST) before or inside the
# VALUE block of a rule, or after its marker, or stalls, while the check runs
# with optout_check_timeout longer and shorter than optout_store_timeout.
# A destination whose rule lives on the faulty server is never answered
# "allowed": single checks answer 403 40301 (fail closed) or 204
# "unverified" (fail open), batches 503 40301 or 200 "unverified"; a cut
# (FIN) after the marker, when the rule has arrived, answers the rule.  (A
# reset there is left out: the client's kernel may drop what it has not
# read yet, so either answer is right.)  A destination whose keys live on
# healthy servers keeps its true answer.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use OptoutTest;
use FaultProxy;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8->canonical;
my $REPS = $ENV{OPTOUT_FAULT_REPS} || 20;      # a 1-in-5 fault shows up
my $STALL_REPS = 3;

# store timeout 500 ms; /c-long and /o-long wait 3 s, /c-short and
# /o-short 200 ms
my $LOCATIONS = <<'EOF';
        location = /c-long  { optout_check; optout_check_timeout 3s; }
        location = /o-long  { optout_check; optout_check_timeout 3s;
                              optout_check_fail open; }
        location = /c-short { optout_check; optout_check_timeout 200ms; }
        location = /o-short { optout_check; optout_check_timeout 200ms;
                              optout_check_fail open; }
EOF

# a replica answers for another server's keys: refused
{
    my $t = OptoutTest->new;
    $t->setup(no_start => 1, omit => { optout_store => 1 },
              http => 'optout_store "--SERVER=127.0.0.1:%%MC%% '
                      . '--SERVER=127.0.0.1:1 --NUMBER-OF-REPLICAS=1";');
    my ($rc, $out) = $t->nginx_test;
    isnt($rc, 0, 'replicas: nginx -t fails');
    my $msg = '"--NUMBER-OF-REPLICAS" is not supported in "optout_store"';
    like($out, qr/\[emerg\] \d+#\d+: \Q$msg\E/,
         'replicas: the message names the option') or diag $out;
    $t->memcached_stop;
}

for my $nservers (2, 3) {
    run($nservers);
}

done_testing;


sub run {
    my ($n) = @_;

    my $t = OptoutTest->new(workers => 1);
    $t->memcached_start;

    # server 0 is the faulty one, behind the proxy
    my @mc = ($t);
    for (2 .. $n) {
        my $m = OptoutTest->new;
        $m->memcached_start;
        push @mc, $m;
    }

    my $proxy = FaultProxy->new(upstream => $t->mc_port);
    my $store = join ' ', '--SERVER=127.0.0.1:' . $proxy->port,
                          map { '--SERVER=127.0.0.1:' . $_->mc_port }
                          @mc[1 .. $#mc];

    $t->setup(store_timeout => '500ms', omit => { optout_store => 1 },
              http => qq{optout_store "$store";}, server => $LOCATIONS);

    # ------------------------------------------------ seed, locate keys

    my @cand = map { OptoutTest::phone(5300 + $_) } 1 .. 60;
    my $rt = 1795424400;
    my $journal = '';
    for my $d (@cand) {
        $journal .= qq({"t":$rt,"action":"optout","ns":"","dest":"$d",)
            . qq("scope":"account","campaign":"42","source":"api",)
            . qq("channel":"sms","client":"","kid":0}\n);
        $journal .= qq({"t":$rt,"action":"optout","ns":"","dest":"$d",)
            . qq("scope":"sender","sender":"ACME","campaign":"7",)
            . qq("source":"api","channel":"sms","client":"","kid":0}\n);
    }
    $t->write_file('seed.journal', $journal);
    my ($rc, $out) = $t->ctl('replay', '--store', $store, '--store-secret',
                             $t->path('store.key'),
                             $t->path('seed.journal'));
    is($rc, 0, "$n servers: replay") or diag $out;

    my $where = sub {
        my ($key) = @_;
        my @on = grep { defined $mc[$_]->mc_get($key) } 0 .. $#mc;
        return @on == 1 ? $on[0] : -1;
    };

    my ($D, $H, $F);
    for my $d (@cand) {
        my $a = $where->($t->skey(dest => $d));
        my $s = $where->($t->skey(dest => $d, sender => 'ACME'));
        $D //= $d if $a == 0 && $s > 0;
        if ($a > 0 && $s > 0) {
            if (!defined $H) { $H = $d }
            elsif (!defined $F) { $F = $d }
        }
    }
    ok(defined $D && defined $H && defined $F,
       "$n servers: destinations found on the faulty and healthy servers")
        or return;

    # D: account rule on the faulty server, no rule for ACME (on a healthy
    # server); H: account rule, healthy; F: no rule, healthy
    my $kd = $t->skey(dest => $D);
    ok($mc[$where->($t->skey(dest => $D, sender => 'ACME'))]
         ->mc_delete($t->skey(dest => $D, sender => 'ACME')),
       "$n servers: D has no ACME rule");
    for my $k ($t->skey(dest => $F), $t->skey(dest => $F, sender => 'ACME'))
    {
        ok($mc[$where->($k)]->mc_delete($k), "$n servers: F has no rule");
    }

    # ------------------------------------------------ answers

    my $chk = sub {
        my ($loc, $dest, $sender) = @_;
        my $q = "/$loc?to=" . OptoutTest::_urlenc($dest);
        $q .= "&from=$sender" if defined $sender;
        my $r = $t->get($q);
        my $j = eval { $JSON->decode($r->{content}) } || {};
        my $code = ref $j->{errors} eq 'ARRAY' ? $j->{errors}[0]{code} : '';
        return join ' ', $r->{status}, $r->{headers}{'x-optout-status'}
                                       // '-', $code // '';
    };

    my $batch = sub {
        my ($loc, $sender) = @_;
        my $body = defined $sender
            ? $JSON->encode({ sender => $sender,
                              destinations => [$D, $H, $F] })
            : $JSON->encode([$D, $H, $F]);
        my $r = $t->request('POST', "/$loc", body => $body,
                            headers => { 'Content-Type'
                                         => 'application/json' });
        my $j = eval { $JSON->decode($r->{content}) } || {};
        if ($r->{status} == 503 && ref $j->{errors} eq 'ARRAY'
            && ($j->{errors}[0]{code} // '') eq '40301')
        {
            # a failure is not "not seeded"
            return "$r->{status} 40301"
                . (($j->{errors}[0]{detail} // '') =~ /not seeded/
                   ? ' not seeded' : '');
        }
        return "$r->{status} ?" unless ref $j->{blocked} eq 'ARRAY';
        return join ' ', $r->{status},
            'blocked=' . join(',', sort map { $_->{destination} }
                                        @{ $j->{blocked} }),
            "allowed=" . ($j->{allowed} // '-'),
            ($j->{unverified} ? 'unverified' : 'verified');
    };

    my $BLOCKED = '403 blocked 40300';
    my $ALLOWED = '204 allowed ';
    my $CLOSED  = '403 unavailable 40301';
    my $OPEN    = '204 unverified ';
    my $B_TRUE  = '200 blocked=' . join(',', sort $D, $H)
                  . ' allowed=1 verified';
    my $B_CLOSED = '503 40301';
    my $B_OPEN  = '200 blocked= allowed=3 unverified';

    # what every healthy answer is, fault or not
    my %truth = (
        "c-long $D"      => $BLOCKED,
        "c-long $D ACME" => $BLOCKED,
        "c-long $H"      => $BLOCKED,
        "c-long $H ACME" => $BLOCKED,
        "c-long $F"      => $ALLOWED,
        "c-long $F ACME" => $ALLOWED,
    );
    for my $k (sort keys %truth) {
        my ($loc, $d, $s) = split / /, $k;
        is($chk->($loc, $d, $s), $truth{$k}, "$n servers, no fault: $k");
    }
    is($batch->('c-long'), $B_TRUE, "$n servers, no fault: batch");
    is($batch->('c-long', 'ACME'), $B_TRUE,
       "$n servers, no fault: batch with sender");

    # ------------------------------------------------ faults

    my $vk = 'VALUE ' . quotemeta($kd) . ' \d+ \d+\r\n';
    my $marker = 'VALUE optout:marker:\d+ \d+ \d+\r\n[^\r]*\r\n';

    my @modes = (
        ['cut before the rule', 'cut', re => 'VALUE ' . quotemeta($kd) . ' '],
        ['reset before the rule', 'cut', re => 'VALUE ' . quotemeta($kd) . ' ',
         how => 'reset'],
        ['cut inside the rule', 'cut', re => $vk, at => 'end', plus => 3],
        ['reset inside the rule', 'cut', re => $vk, at => 'end', plus => 3,
         how => 'reset'],
        ['cut after the marker', 'cut', re => $marker, at => 'end'],
        ['stall before the rule', 'stall', re => 'VALUE ' . quotemeta($kd)
         . ' ', secs => 2],
        ['swallow', 'swallow'],
    );

    for my $m (@modes) {
        my ($name, $mode, %a) = @$m;
        my $stall = $mode eq 'stall' || $mode eq 'swallow';
        my $after = $name =~ /after the marker/;
        my $reps = $stall ? $STALL_REPS : $REPS;
        my (%got, %want);

        $proxy->set($mode, %a);
        my $fired = $proxy->triggered;

        # the rule arrived before the fault when the marker did: true answer
        my %case = (
            'c-long D'      => [sub { $chk->('c-long', $D) },
                                $after ? $BLOCKED : $CLOSED],
            'o-long D'      => [sub { $chk->('o-long', $D) },
                                $after ? $BLOCKED : $OPEN],
            'c-long D ACME' => [sub { $chk->('c-long', $D, 'ACME') },
                                $after ? $BLOCKED : $CLOSED],
            'o-long D ACME' => [sub { $chk->('o-long', $D, 'ACME') },
                                $after ? $BLOCKED : $OPEN],
            'c-long batch'  => [sub { $batch->('c-long') },
                                $after ? $B_TRUE : $B_CLOSED],
            'o-long batch'  => [sub { $batch->('o-long') },
                                $after ? $B_TRUE : $B_OPEN],
            'c-long batch ACME' => [sub { $batch->('c-long', 'ACME') },
                                    $after ? $B_TRUE : $B_CLOSED],
            'c-long H'      => [sub { $chk->('c-long', $H) }, $BLOCKED],
            'c-long H ACME' => [sub { $chk->('c-long', $H, 'ACME') },
                                $BLOCKED],
            'c-long F ACME' => [sub { $chk->('c-long', $F, 'ACME') },
                                $ALLOWED],
        );
        if ($stall) {
            $case{'c-short D'} = [sub { $chk->('c-short', $D) }, $CLOSED];
            $case{'o-short D'} = [sub { $chk->('o-short', $D) }, $OPEN];
            $case{'c-short D ACME'} = [sub { $chk->('c-short', $D, 'ACME') },
                                       $CLOSED];
        }

        for my $i (1 .. $reps) {
            for my $c (sort keys %case) {
                $got{$c}{ $case{$c}[0]->() }++;
            }
        }

        for my $c (sort keys %case) {
            is_deeply($got{$c}, { $case{$c}[1] => $reps },
                      "$n servers, $name: $c, $reps times")
                or diag explain $got{$c};
        }

        # each look-up of D's rule met the fault
        ok($proxy->triggered - $fired >= $reps, "$n servers, $name: the "
           . "fault fired") or diag 'fired ' . ($proxy->triggered - $fired)
            unless $mode eq 'swallow';
    }

    # ------------------------------------------------ coalesced

    $proxy->set('cut', re => $vk, at => 'end', plus => 3, how => 'reset');
    my @res = OptoutTest::run_parallel(6, sub {
        my %got;
        for (1 .. 10) {
            $got{D}{ $chk->('c-long', $D, 'ACME') }++;
            $got{H}{ $chk->('c-long', $H, 'ACME') }++;
            $got{F}{ $chk->('c-long', $F) }++;
        }
        return \%got;
    });
    my %all;
    for my $r (@res) {
        for my $w (qw(D H F)) {
            $all{$w}{$_} += $r->{$w}{$_} for keys %{ $r->{$w} || {} };
        }
    }
    is_deeply($all{D}, { $CLOSED => 60 },
              "$n servers, concurrent, reset inside the rule: D");
    is_deeply($all{H}, { $BLOCKED => 60 },
              "$n servers, concurrent, reset inside the rule: H");
    is_deeply($all{F}, { $ALLOWED => 60 },
              "$n servers, concurrent, reset inside the rule: F");

    $proxy->set('pass');
    is($chk->('c-long', $D), $BLOCKED, "$n servers, pass again: D");

    # every fault was logged as a failure, none as a store not seeded
    my @log = split /\n/, $t->error_log // '';
    is(scalar(grep { /not seeded/ } @log), 0,
       "$n servers: no fault taken for a store not seeded");

    $t->stop;
    $proxy->stop;
    $_->memcached_stop for @mc;
    ok($t->error_log_clean, "$n servers: no alert/crit/emerg in error.log");
}
