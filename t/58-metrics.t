#!/usr/bin/perl

# optout_metrics: the Prometheus exposition passes "promtool check metrics",
# the alerting rules in conf-examples/prometheus/ pass "promtool check
# rules" and their unit tests; each counter moves by exactly the expected
# amount when its event happens (link GET, POST and invalid token, checks
# of each status, cache hits and misses, a batch of N, a refused batch,
# memcached stopped and frozen, a missing marker, pending opt-outs and the
# applier's lag, a full journal disk, cache evictions); and the values
# survive "nginx -s reload".  The journal's disk is a tmpfs when we are
# root (as in t/21-journal-full.t); otherwise that part is skipped.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $PROMTOOL = `command -v promtool 2>/dev/null`;
chomp $PROMTOOL;

my $t = OptoutTest->new(workers => 1);

my $fs = $t->tmpfs('jfs', '256k');
my $mounted = defined $fs;
my $journal = $mounted ? 'jfs/journal.log' : 'journal.log';

# one worker: the batch queue is per worker; a small cache to evict from
$t->setup(journal => $journal, store_timeout => '1s', http => <<'EOF',
    optout_cache zone=oc:32k blocked=10m allowed=10m;
    optout_batch_concurrency 1;
    optout_batch_queue 0;
EOF
          server => <<'EOF');
        location = /check { optout_check; optout_check_timeout 300ms; }
        location = /api { optout_api; }
        location = /metrics {
            optout_metrics;
            allow 127.0.0.1;
            deny all;
        }
        location = /metrics-deny {
            optout_metrics;
            deny all;
        }
EOF

my $SRV = '127.0.0.1:' . $t->mc_port;
my $SRVL = qq{server="$SRV"};

# ---------------------------------------------------------------- helpers

my $last_text = '';

# name{labels} => value, of one scrape
sub scrape {
    my $r = $t->get('/metrics');
    is($r->{status}, 200, 'GET /metrics: 200') or diag $r->{content};
    $last_text = $r->{content} // '';
    my %m;
    for my $l (split /\n/, $last_text) {
        next if $l =~ /^#/ || $l eq '';
        my ($k, $v) = $l =~ /^(\S+(?:\{[^}]*\})?) (\S+)$/ or next;
        $m{$k} = $v;
    }
    return \%m;
}

# what may move by itself: gauges, and the histogram's time
my $GAUGE = qr/_sum$|_seconds_bucket|^optout_(?:cache_entries|pending_optouts
               |applier_lag_bytes|memcached_marker_missing)/x;

# checks that each key moved by exactly the given amount since $before
sub moved {
    my ($before, $what, %d) = @_;
    my $now = scrape();
    my $ok = 1;
    for my $k (sort keys %d) {
        $ok &= is(($now->{$k} // 'absent') - ($before->{$k} // 0), $d{$k},
                  "$what: $k +$d{$k}");
    }
    # everything else stands still, but gauges and the histogram's sum
    for my $k (sort keys %$now) {
        next if exists $d{$k} || $k =~ $GAUGE;
        next if ($before->{$k} // 0) == $now->{$k};
        $ok &= fail("$what: $k moved from " . ($before->{$k} // 'absent')
                    . " to $now->{$k}");
    }
    return $now;
}

# polls until $k has value $v (a bound, not a measurement)
sub wait_for {
    my ($k, $v, $secs) = @_;
    my $deadline = time + ($secs || 15);
    my $m;
    while (time < $deadline) {
        my $r = $t->get('/metrics');
        $m = {};
        for my $l (split /\n/, $r->{content} // '') {
            my ($kk, $vv) = $l =~ /^(\S+(?:\{[^}]*\})?) (\S+)$/ or next;
            $m->{$kk} = $vv;
        }
        return $m if defined $m->{$k} && $m->{$k} == $v;
        sleep 0.1;
    }
    return $m;
}

sub ctl_store {
    my ($cmd, @args) = @_;
    return $t->ctl($cmd, '--store', '--SERVER=' . $SRV,
                   '--store-secret', $t->path('store.key'), @args);
}

sub chk {
    my ($q) = @_;
    my $r = $t->get("/check?$q");
    return $r->{headers}{'x-optout-status'} // "status $r->{status}";
}

sub journal_size {
    return -s ($mounted ? "$fs/journal.log" : $t->path('journal.log')) // 0;
}

# the newer of the two slots of "<journal>.applied"
sub applied_offset {
    my $raw = $t->read_file("$journal.applied") // '';
    my ($seq, $off) = (-1, undef);
    while ($raw =~ /optout-applied 1 (\d+) \d+ \d+ (\d+) /g) {
        ($seq, $off) = ($1, $2) if $1 > $seq;
    }
    return $off;
}

my $n = 0;
sub dest { return sprintf '+4477009%05d', ++$n }

# ---------------------------------------------------------------- format

my $m = scrape();
my $r = $t->get('/metrics');
is($r->{headers}{'content-type'}, 'text/plain; version=0.0.4; charset=utf-8',
   'Content-Type of the text exposition format');
is($t->get('/metrics-deny')->{status}, 403, 'access rules apply');
is($t->request('POST', '/metrics', body => 'x')->{status}, 405,
   'POST /metrics: 405');
is($t->head('/metrics')->{status}, 200, 'HEAD /metrics: 200');

for my $k ('optout_checks_total{status="allowed"}',
           'optout_link_requests_total{result="recorded"}',
           "optout_memcached_operations_total{$SRVL}",
           "optout_memcached_marker_missing{$SRVL}",
           'optout_journal_fdatasync_seconds_bucket{le="+Inf"}',
           'optout_cache_entries', 'optout_pending_optouts',
           'optout_applier_lag_bytes')
{
    is($m->{$k}, 0, "$k is there, 0 at start");
}

like($last_text, qr/^# TYPE optout_journal_fdatasync_seconds histogram$/m,
     'the fdatasync histogram is typed');
unlike($last_text, qr/\+44|@/, 'no destination in the metrics');

SKIP: {
    skip 'promtool is not installed (Debian package prometheus)', 2
        unless $PROMTOOL;
    $t->write_file('metrics.txt', $last_text);
    my $out = `$PROMTOOL check metrics < @{[$t->path('metrics.txt')]} 2>&1`;
    is($?, 0, 'promtool check metrics: exit 0') or diag $out;
    is($out, '', 'promtool check metrics: no complaint') or diag $out;
}

# ---------------------------------------------------------------- not seeded

my $D = dest();
is(chk("to=$D"), 'unavailable', 'not seeded: unavailable');
$m = moved($m, 'not seeded',
           'optout_checks_total{status="unavailable"}' => 1,
           'optout_cache_misses_total' => 1,
           "optout_memcached_operations_total{$SRVL}" => 1);
is($m->{"optout_memcached_marker_missing{$SRVL}"}, 1,
   'not seeded: the marker is missing');

$t->write_file('empty.journal', '');
my ($rc, $out) = ctl_store('replay', $t->path('empty.journal'));
is($rc, 0, 'optoutctl replay of an empty journal') or diag $out;

# ---------------------------------------------------------------- checks

is(chk("to=$D"), 'allowed', 'seeded: allowed');
$m = moved($m, 'allowed, from memcached',
           'optout_checks_total{status="allowed"}' => 1,
           'optout_cache_misses_total' => 1,
           "optout_memcached_operations_total{$SRVL}" => 1);
is($m->{"optout_memcached_marker_missing{$SRVL}"}, 0,
   'seeded: the marker is there');
is($m->{optout_cache_entries}, 1, 'one cache entry');

is(chk("to=$D"), 'allowed', 'allowed again');
$m = moved($m, 'allowed, from the cache',
           'optout_checks_total{status="allowed"}' => 1,
           'optout_cache_hits_total' => 1);

is(chk("to=nonsense"), 'invalid', 'invalid');
$m = moved($m, 'invalid', 'optout_checks_total{status="invalid"}' => 1);

# ---------------------------------------------------------------- link

my $B = dest();
my $tok = $t->token(dest => $B, campaign => 5);
is($t->get("/u/$tok")->{status}, 200, 'link GET');
$m = moved($m, 'link GET',
           'optout_link_requests_total{result="confirm"}' => 1);

is($t->get('/u/AAAA')->{status}, 404, 'link GET, invalid token');
$m = moved($m, 'invalid token',
           'optout_link_requests_total{result="invalid"}' => 1);

my $size = journal_size();
is($t->post_one_click("/u/$tok")->{status}, 200, 'link POST');
my $bytes = journal_size() - $size;
ok($bytes > 50, "link POST: the journal grew by $bytes bytes");
$m = moved($m, 'link POST',
           'optout_link_requests_total{result="recorded"}' => 1,
           'optout_journal_lines_total' => 1,
           'optout_journal_bytes_total' => $bytes,
           'optout_journal_fdatasync_seconds_count' => 1,
           'optout_journal_fdatasync_seconds_bucket{le="+Inf"}' => 1,
           "optout_memcached_operations_total{$SRVL}" => 1);
is($m->{optout_cache_entries}, 2, 'the rule is in the cache');

is(chk("to=$B"), 'blocked', 'blocked');
$m = moved($m, 'blocked, from the cache',
           'optout_checks_total{status="blocked"}' => 1,
           'optout_cache_hits_total' => 1);

# ---------------------------------------------------------------- batch

my @batch = (dest(), dest(), dest(), $B, 'nonsense');
$r = $t->post('/check', join("\n", @batch) . "\n");
is($r->{status}, 200, 'batch of 5: 200') or diag $r->{content};
$m = moved($m, 'batch of 5',
           'optout_batch_requests_total{outcome="answered"}' => 1,
           'optout_batch_destinations_total{status="allowed"}' => 3,
           'optout_batch_destinations_total{status="blocked"}' => 1,
           'optout_batch_destinations_total{status="invalid"}' => 1,
           "optout_memcached_operations_total{$SRVL}" => 1);

is($t->post('/check', '')->{status}, 400, 'empty batch: 400');
$m = moved($m, 'empty batch',
           'optout_batch_requests_total{outcome="invalid"}' => 1);

# ---------------------------------------------------------------- frozen

# a check times out at 300ms, its multi-get at the store's 1s; meanwhile a
# batch runs (and times out too) and a second one is refused at once
$t->memcached_freeze;
$D = dest();
is(chk("to=$D"), 'unavailable', 'frozen memcached: unavailable');
my $s = $t->send_request('POST', '/check', dest() . "\n");
sleep 0.3;
$r = $t->post('/check', dest() . "\n");
is($r->{status}, 503, 'a second batch is refused: 503');
$r = $t->read_response($s, 10);
is($r->{status}, 503, 'the batch on the frozen memcached: 503')
    or diag $r->{content};
wait_for("optout_memcached_timeouts_total{$SRVL}", 2);
$t->memcached_thaw;
$m = moved($m, 'frozen',
           'optout_checks_total{status="unavailable"}' => 1,
           'optout_cache_misses_total' => 1,
           'optout_batch_requests_total{outcome="unavailable"}' => 1,
           'optout_batch_requests_total{outcome="refused"}' => 1,
           'optout_batch_refusals_total{reason="queue_full"}' => 1,
           "optout_memcached_operations_total{$SRVL}" => 2,
           "optout_memcached_errors_total{$SRVL}" => 2,
           "optout_memcached_timeouts_total{$SRVL}" => 2);

# ---------------------------------------------------------------- stopped

$t->memcached_stop;
$D = dest();
is(chk("to=$D"), 'unavailable', 'memcached stopped: unavailable');
$m = moved($m, 'stopped',
           'optout_checks_total{status="unavailable"}' => 1,
           'optout_cache_misses_total' => 1,
           "optout_memcached_operations_total{$SRVL}" => 1,
           "optout_memcached_errors_total{$SRVL}" => 1);

# the live write fails: the opt-out is pending, the applier falls behind
my $P = dest();
$size = journal_size();
is($t->post_one_click('/u/' . $t->token(dest => $P, campaign => 6))
     ->{status}, 200, 'link POST, memcached stopped');
$bytes = journal_size() - $size;
is(wait_for('optout_pending_optouts', 1)->{optout_pending_optouts}, 1,
   'one opt-out pending');
# behind by what follows the applied offset, which includes this POST
my $lag;
for (1 .. 150) {
    $lag = scrape()->{optout_applier_lag_bytes};
    last if $lag;
    sleep 0.1;
}
is($lag, journal_size() - applied_offset(),
   'the applier is behind by the journal past its applied offset');
cmp_ok($lag, '>=', $bytes, "that includes the POST's $bytes bytes");

$t->memcached_start;
is(wait_for('optout_pending_optouts', 0)->{optout_pending_optouts}, 0,
   'memcached back: nothing pending');
is(wait_for('optout_applier_lag_bytes', 0)->{optout_applier_lag_bytes}, 0,
   'memcached back: the applier caught up');

# a restarted memcached is empty: its marker is missing
$D = dest();
my $st;
for (1 .. 50) {
    $st = chk("to=$D");
    last if $st eq 'unavailable'
            && scrape()->{"optout_memcached_marker_missing{$SRVL}"} == 1;
    sleep 0.1;
}
$m = scrape();
is($m->{"optout_memcached_marker_missing{$SRVL}"}, 1,
   'restarted memcached: the marker is missing');
($rc, $out) = ctl_store('replay', $t->path('empty.journal'));
is($rc, 0, 'seeded again') or diag $out;
is(chk("to=" . dest()), 'allowed', 'seeded again: allowed');
$m = scrape();
is($m->{"optout_memcached_marker_missing{$SRVL}"}, 0,
   'seeded again: the marker is there');

# ---------------------------------------------------------------- full disk

SKIP: {
    skip 'needs root to mount a tmpfs for the journal', 4 unless $mounted;

    open my $fh, '>', "$fs/filler" or die "filler: $!";
    my $chunk = "\0" x 4096;
    while (syswrite $fh, $chunk) { }
    close $fh;

    # the journal's last page may still take some lines
    $size = journal_size();
    my $ok = 0;
    for (1 .. 40) {
        $r = $t->post_one_click('/u/' . $t->token(dest => dest(),
                                                  campaign => 7));
        last if $r->{status} != 200;
        $ok++;
    }
    is($r->{status}, 500, "link POST on a full disk: 500, after $ok 200s");
    $bytes = journal_size() - $size;
    $m = moved($m, 'full disk',
               'optout_link_requests_total{result="recorded"}' => $ok,
               'optout_link_requests_total{result="error"}' => 1,
               'optout_journal_lines_total' => $ok,
               'optout_journal_bytes_total' => $bytes,
               'optout_journal_fdatasync_seconds_count' => $ok,
               'optout_journal_fdatasync_seconds_bucket{le="+Inf"}' => $ok,
               'optout_journal_failures_total' => 1,
               # memcached is written only once the journal line is durable
               "optout_memcached_operations_total{$SRVL}" => $ok);
    unlink "$fs/filler";
}

# ---------------------------------------------------------------- evictions

# 32k hold some hundred entries: without expiry or removal, every entry
# made and gone was evicted
my $before = $m;
for (1 .. 400) {
    chk('to=' . dest());
}
$m = scrape();
my $made = 400 + $before->{optout_cache_entries};
is($m->{optout_cache_evictions_total}
       - $before->{optout_cache_evictions_total},
   $made - $m->{optout_cache_entries},
   'evictions: entries made less entries kept');
ok($m->{optout_cache_evictions_total} > 0, 'the cache evicted');
is($m->{optout_cache_misses_total} - $before->{optout_cache_misses_total},
   400, 'evictions: 400 misses');

# ---------------------------------------------------------------- reload

# the master fills the pending set again from the journal's unapplied
# tail, and the new applier writes it again: let the applier catch up
my $deadline = time + 15;
sleep 0.1 while time < $deadline
                && (applied_offset() // -1) != journal_size();
is(applied_offset(), journal_size(), 'the applier caught up');
$m = scrape();
ok($t->reload, 'nginx -s reload');
is(wait_for('optout_pending_optouts', 0)->{optout_pending_optouts}, 0,
   'nothing pending after the reload');
my $after = scrape();
is_deeply($after, $m, 'every value survives the reload');
is(chk('to=' . dest()), 'allowed', 'after the reload: allowed');
my $now = scrape();
moved($after, 'after the reload',
      'optout_checks_total{status="allowed"}' => 1,
      'optout_cache_misses_total' => 1,
      'optout_cache_evictions_total' => 1 - ($now->{optout_cache_entries}
                                          - $after->{optout_cache_entries}),
      "optout_memcached_operations_total{$SRVL}" => 1);

# ---------------------------------------------------------------- API

{
    my $D = dest();
    my $a0 = scrape();
    my $r = $t->post('/api', qq{[{"destination":"$D"},{"destination":"x"}]},
                     'Content-Type' => 'application/json');
    is($r->{status}, 200, 'API: an array of 2, one invalid: 200')
        or diag $r->{content};
    $r = $t->post('/api', qq{{"destination":"$D"}},
                  'Content-Type' => 'application/json');
    is($r->{status}, 200, 'API: the same again: 200 (present)');
    my $q = 'destination=' . OptoutTest::_urlenc($D);
    is($t->request('DELETE', "/api?$q")->{status}, 200, 'API: DELETE: 200');
    is($t->request('DELETE', "/api?$q")->{status}, 404,
       'API: DELETE again: 404');
    is($t->get("/api?$q")->{status}, 404, 'API: GET after the opt-in: 404');
    my $a1 = scrape();
    my %want = (added => 1, present => 1, invalid => 1, removed => 1,
                not_found => 2);
    for my $o (sort keys %want) {
        my $k = qq{optout_api_rules_total{outcome="$o"}};
        is(($a1->{$k} // 'absent') - ($a0->{$k} // 0), $want{$o},
           "API: $k +$want{$o}");
    }
}

# ---------------------------------------------------------------- rules

SKIP: {
    skip 'promtool is not installed (Debian package prometheus)', 4
        unless $PROMTOOL;
    my $dir = $t->root . '/conf-examples/prometheus';
    $out = `$PROMTOOL check rules $dir/optout-alerts.yml 2>&1`;
    is($?, 0, 'promtool check rules: exit 0') or diag $out;
    like($out, qr/SUCCESS: \d+ rules found/, 'promtool check rules: SUCCESS')
        or diag $out;
    $out = `cd $dir && $PROMTOOL test rules optout-alerts.test.yml 2>&1`;
    is($?, 0, 'promtool test rules: exit 0') or diag $out;
    like($out, qr/SUCCESS/, 'promtool test rules: SUCCESS') or diag $out;
}

$t->stop;
ok($t->error_log_clean(qr/optout: write\(\) of journal/),
   'no other alert/crit/emerg in error.log');

done_testing;
