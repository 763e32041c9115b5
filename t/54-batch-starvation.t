#!/usr/bin/perl

# Batches do not starve single checks and clicks.  One worker, a thread
# pool of 2 threads and 8 queued tasks: the capacity single checks, link
# POSTs and journal writes need.  A flood of concurrent 10,000-destination
# batches runs through optout_batch_concurrency 1 and optout_batch_queue 2;
# meanwhile single checks answer their true answers and link POSTs 200.
# Every flood answer is the exact batch answer or 503 50300 with
# Retry-After.  With memcached frozen (SIGSTOP), batches stay in flight
# deterministically: the one beyond the queue gets 503 at once, the others
# lose nothing, and clients that go away (waiting or running) leave
# cleanly.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Select;
use JSON::PP ();
use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8->canonical;

my $FLOOD   = 12;       # concurrent batch clients
my $ROUNDS  = 20;       # single checks and clicks during the flood
my $SECONDS = 60;       # bound of the flood, whatever happens

my $t = OptoutTest->new(workers => 1);
$t->setup(
    store_timeout => '10s',
    thread_pool => 'thread_pool optout threads=2 max_queue=8;',
    http => <<'EOF',
    optout_thread_pool optout;
    optout_batch_concurrency 1;
    optout_batch_queue 2 timeout=60s;
EOF
    server => <<'EOF');
        location = /check {
            optout_check;
            optout_check_timeout 10s;
        }
EOF

my $A    = '+447700900301';     # account-wide rule, campaign 42
my $FREE = '+447700900399';

$t->write_file('empty.journal', '');
my ($rc, $out) = $t->ctl('replay', '--store',
                         '--SERVER=127.0.0.1:' . $t->mc_port,
                         '--store-secret', $t->path('store.key'),
                         $t->path('empty.journal'));
is($rc, 0, 'store seeded') or diag $out;
is($t->post_one_click('/u/' . $t->token(dest => $A, campaign => 42))
     ->{status}, 200, 'link POST: account rule for A');

sub decode { my $j = eval { $JSON->decode($_[0]) }; ref $j ? $j : {} }

# the one answer a batch may give besides 503: A blocked, the rest allowed
sub batch_ok {
    my ($r, $total) = @_;
    return 0 unless $r->{status} == 200;
    my $j = decode($r->{content});
    my $b = $j->{blocked};
    return ref $b eq 'ARRAY' && @$b == 1
        && ($b->[0]{destination} // '') eq $A
        && ($b->[0]{campaign} // '') eq '42'
        && ($b->[0]{scope} // '') eq 'account'
        && ref $j->{invalid} eq 'ARRAY' && !@{ $j->{invalid} }
        && ($j->{checked} // -1) == $total
        && ($j->{allowed} // -1) == $total - 1
        && !exists $j->{unverified};
}

sub busy_ok {
    my ($r) = @_;
    my $e = decode($r->{content})->{errors};
    return $r->{status} == 503
        && ($r->{headers}{'retry-after'} // '') eq '1'
        && ($r->{headers}{'content-type'} // '') =~ m{^application/json\b}
        && ref $e eq 'ARRAY' && @$e == 1 && ($e->[0]{code} // '') eq '50300';
}

sub code_of {
    my ($r) = @_;
    my $e = decode($r->{content})->{errors};
    return ref $e eq 'ARRAY' && @$e ? $e->[0]{code} // '' : '';
}

sub touch_file {
    open my $fh, '>', $_[0] or die "$_[0]: $!";
    close $fh;
}

sub batch {
    my ($body, %opt) = @_;
    return $t->request('POST', '/check?from=ACME', body => $body,
                       headers => { 'Content-Type' => 'text/plain' },
                       timeout => $opt{timeout} || 60);
}

# ---------------------------------------------------------------- flood

my @big = map { OptoutTest::phone(20_000_000 + $_) } 0 .. 9_998;
push @big, $A;
my $big = join("\n", @big) . "\n";

my $stop = $t->path('flood.stop');
my $started = $t->path('flood.started');

my $flood = sub {
    my ($i) = @_;
    my %n = (ok => 0, busy => 0, other => 0, what => '');
    my $until = time + $SECONDS;
    while (!-e $stop && time < $until && $n{ok} + $n{busy} + $n{other} < 500)
    {
        my $r = batch($big);
        touch_file("$started.$i");
        if (batch_ok($r, 10_000)) {
            $n{ok}++;
        } elsif (busy_ok($r)) {
            $n{busy}++;
            sleep 0.02;
        } else {
            $n{other}++;
            $n{what} ||= "$r->{status} " . substr($r->{content}, 0, 200);
            sleep 0.02;
        }
    }
    return \%n;
};

my (@checks, @clicks);
my $during = sub {
    my $until = time + 30;
    sleep 0.05 until glob("$started.*") || time > $until;
    for my $i (1 .. $ROUNDS) {
        my $dest = OptoutTest::phone(30_000_000 + $i);
        push @checks,
            [allowed => $t->get("/check?to=%2B447700900399&from=ACME")],
            [blocked => $t->get("/check?to=%2B447700900301&from=ACME")];
        push @clicks, [$dest => $t->post_one_click(
            '/u/' . $t->token(dest => $dest, campaign => 500 + $i))];
    }
    touch_file($stop);
};

my @flood = OptoutTest::run_parallel($FLOOD, $flood, $during);

my %sum = (ok => 0, busy => 0, other => 0);
for my $f (@flood) {
    $sum{$_} += $f->{$_} // 0 for qw(ok busy other);
    diag "flood client: $f->{error}" if $f->{error};
    diag "flood answer: $f->{what}" if $f->{what};
}
diag "flood: $sum{ok} batches answered, $sum{busy} refused with 503";

is(scalar(grep { !$_->{error} } @flood), $FLOOD, 'every flood client ran');
is($sum{other}, 0,
   'every flood answer is the exact batch answer or 503 50300');

my ($allowed_ok, $blocked_ok) = (0, 0);
for my $c (@checks) {
    my ($what, $r) = @$c;
    if ($what eq 'allowed') {
        $allowed_ok++ if $r->{status} == 204
            && ($r->{headers}{'x-optout-status'} // '') eq 'allowed';
    } else {
        $blocked_ok++ if $r->{status} == 403 && code_of($r) eq '40300'
            && ($r->{headers}{'x-optout-status'} // '') eq 'blocked';
    }
    diag "check $what: $r->{status} $r->{content}"
        unless $r->{status} == ($what eq 'allowed' ? 204 : 403);
}
is($allowed_ok, $ROUNDS, 'during the flood: allowed checks answer 204');
is($blocked_ok, $ROUNDS, 'during the flood: blocked checks answer 403 40300');
is(scalar(grep { $_->[1]{status} == 200 } @clicks), $ROUNDS,
   'during the flood: link POSTs answer 200');

# nothing clicked during the flood was lost
my $recorded = 0;
for my $c (@clicks) {
    (my $to = $c->[0]) =~ s/^\+/%2B/;
    my $r = $t->get("/check?to=$to");
    $recorded++ if $r->{status} == 403 && code_of($r) eq '40300';
}
is($recorded, $ROUNDS, 'after the flood: every click blocks its destination');
is(scalar(@{[ $t->journal_lines ]}), $ROUNDS + 1,
   'after the flood: every click is in the journal');

# ---------------------------------------------------------------- frozen

# with memcached stopped, a running batch stays in its thread until thawed

my $small = "$A\n$FREE\n";

sub send_batch {
    return $t->send_request('POST', '/check?from=ACME', $small,
                            'Content-Type' => 'text/plain');
}

sub answered {
    my ($secs, @socks) = @_;
    my @ready = IO::Select->new(@socks)->can_read($secs);
    return scalar @ready;
}

$t->memcached_freeze;

my $s1 = send_batch();
sleep 0.5;                  # running, blocked in its multi-get
my @w = (send_batch(), send_batch());
my $s4 = send_batch();
ok($s1 && $w[0] && $w[1] && $s4, 'frozen: four batches sent');

my $r4 = $t->read_response($s4, 10);
ok(busy_ok($r4), 'frozen: the batch beyond the queue gets 503 50300')
    or diag "answer: $r4->{status} $r4->{content}";
like($r4->{content}, qr/running or waiting/, 'frozen: 503 says why');
is(answered(1, $s1, @w), 0, 'frozen: the others are still waiting');

$t->memcached_thaw;

my @r = map { $t->read_response($_, 30) } $s1, @w;
is(scalar(grep { batch_ok($_, 2) } @r), 3,
   'thawed: the running and the waiting batches answer exactly')
    or diag join "\n", map { "$_->{status} $_->{content}" } @r;

# clients that go away: one running (its task still ends cleanly), one
# waiting (it leaves the queue, so a new batch takes its place)

$t->memcached_freeze;

$s1 = send_batch();
sleep 0.5;
my ($s2, $s3) = (send_batch(), send_batch());
sleep 0.3;
close $s1;
close $s2;
sleep 0.5;                  # nginx sees both connections close
my $s5 = send_batch();
sleep 0.3;
my $s6 = send_batch();

my $r6 = $t->read_response($s6, 10);
ok(busy_ok($r6), 'gone: the new batch took the place of the one that '
   . 'left; the next gets 503')
    or diag "answer: $r6->{status} $r6->{content}";
is(answered(1, $s3, $s5), 0, 'gone: the others are still waiting');

$t->memcached_thaw;

@r = map { $t->read_response($_, 30) } $s3, $s5;
is(scalar(grep { batch_ok($_, 2) } @r), 2,
   'gone: the waiting batches answer exactly after the thaw')
    or diag join "\n", map { "$_->{status} $_->{content}" } @r;

# and the worker is back to normal: nothing running, nothing waiting
@r = map { batch($small) } 1 .. 3;
is(scalar(grep { batch_ok($_, 2) } @r), 3, 'after: batches answer 200');
my $r = $t->get('/check?to=%2B447700900399');
is($r->{status}, 204, 'after: a single check answers 204');

# a batch that waits longer than the queue's timeout gets 503 as well

my %conf = (
    store_timeout => '10s',
    thread_pool => 'thread_pool optout threads=2 max_queue=8;',
    http => "optout_thread_pool optout;\n"
            . "    optout_batch_concurrency 1;\n"
            . "    optout_batch_queue 1 timeout=1s;",
    server => 'location = /check { optout_check; }',
);
$t->write_conf($t->optout_http(%conf), %conf);
ok($t->reload, 'reloaded with optout_batch_queue 1 timeout=1s');

$t->memcached_freeze;
$s1 = send_batch();
sleep 0.5;
$s2 = send_batch();
my $r2 = $t->read_response($s2, 10);
ok(busy_ok($r2), 'timeout: the waiting batch gets 503 50300')
    or diag "answer: $r2->{status} $r2->{content}";
like($r2->{content}, qr/waited too long/, 'timeout: 503 says why');
$t->memcached_thaw;
ok(batch_ok($t->read_response($s1, 30), 2),
   'timeout: the running batch answers exactly');

$t->stop;
like($t->error_log // '', qr/batch checks refused since the last such message/,
     'the refusals are logged');
unlike($t->error_log // '', qr/thread pool .* queue overflow/,
       'the thread pool never overflowed');
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

# ---------------------------------------------------------------- nginx -t

sub conf_error {
    my ($http, $main) = @_;
    my %c = (http => $http, thread_pool => $main // '');
    $t->write_conf($t->optout_http(%c), %c);
    my ($rc, $out) = $t->nginx_test;
    return $rc ? $out : "exit 0: $out";
}

like(conf_error('optout_batch_concurrency 0;'),
     qr/invalid number "0" in "optout_batch_concurrency", it must be 1 to 1024/,
     'nginx -t: optout_batch_concurrency 0');
like(conf_error("optout_batch_concurrency 2;\n"
                . "    optout_batch_concurrency 3;"),
     qr/"optout_batch_concurrency" directive is duplicate/,
     'nginx -t: optout_batch_concurrency twice');
like(conf_error('optout_batch_queue many;'),
     qr/invalid queue size "many" in "optout_batch_queue", it must be 0 to /,
     'nginx -t: optout_batch_queue many');
like(conf_error('optout_batch_queue 4 timeout=0;'),
     qr/invalid timeout "0" in "optout_batch_queue"/,
     'nginx -t: optout_batch_queue timeout=0');
like(conf_error('optout_batch_queue 4 wait=1s;'),
     qr/invalid parameter "wait=1s" in "optout_batch_queue"/,
     'nginx -t: optout_batch_queue wait=1s');
like(conf_error('optout_batch_thread_pool batches;'),
     qr/unknown thread pool "batches"/,
     'nginx -t: optout_batch_thread_pool of an undeclared pool');
my ($tr, $tout);
{
    my %c = (http => "optout_batch_thread_pool batches;\n"
                     . "    optout_batch_concurrency 4;\n"
                     . "    optout_batch_queue 0;",
             thread_pool => 'thread_pool batches threads=4;');
    $t->write_conf($t->optout_http(%c), %c);
    ($tr, $tout) = $t->nginx_test;
}
is($tr, 0, 'nginx -t: a declared batch pool and a queue of 0 are valid')
    or diag $tout;

done_testing;
