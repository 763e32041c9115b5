#!/usr/bin/perl

# optoutctl replay, export and report over several journals: merged by
# time whatever the order of the files (a START on one node after a STOP on
# another ends allowed), ties, torn lines, exact export and report output
# on a hand-checked pair of journals, replay into a real memcached; import
# errors found before anything is sent (t/63 imports into a real API).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

my $bin = OptoutTest::ctl_path();
plan skip_all => 'build/optoutctl not built' unless -x $bin;

delete @ENV{qw(OPTOUT_STORE OPTOUT_STORE_SECRET OPTOUT_API_USER)};

my $t = OptoutTest->new;
$t->memcached_start;
my $ss = $t->key('store');
my $secret = $t->key_bytes('store');
my $store = '--SERVER=127.0.0.1:' . $t->mc_port;
my $dir = $t->prefix;

# run(args..., { stdin => ... }) -> (exit code, stdout, stderr)

sub run {
    my $opt = ref $_[-1] eq 'HASH' ? pop : {};
    $t->write_file('stdin', $opt->{stdin} // '');

    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', "$dir/stdin" or die;
        open STDOUT, '>', "$dir/stdout" or die;
        open STDERR, '>', "$dir/stderr" or die;
        exec $bin, @_ or POSIX::_exit(127);
    }

    waitpid($pid, 0);
    my $rc = $? & 127 ? 128 + ($? & 127) : $? >> 8;

    return ($rc, $t->read_file('stdout') // '', $t->read_file('stderr') // '');
}

my $T = 1795424400;                   # 2026-11-23T09:00:00Z

sub line {
    my ($dt, $action, $dest, %o) = @_;
    my $scope = defined $o{sender}
        ? qq("scope":"sender","sender":"$o{sender}") : '"scope":"account"';
    my $ch = $dest =~ /@/ ? 'email' : 'sms';
    my $src = $o{source} // ($action eq 'optin' ? 'api' : 'link');
    my $kid = $src eq 'link' ? 1 : 0;
    return sprintf('{"t":%d.%03d,"action":"%s","ns":"%s","dest":"%s",%s,'
                   . '"campaign":"%s","source":"%s","channel":"%s",'
                   . '"client":"192.0.2.1","kid":%d}' . "\n",
                   $T + int($dt), ($dt - int $dt) * 1000, $action,
                   $o{ns} // '', $dest, $scope, $o{c} // 0, $src, $ch, $kid);
}

# node A and node B; the comments give the merged order

my $A = join '',
    line(0, 'optout', '+447700900001', c => 10),            # counted
    line(10, 'optout', '+447700900002', c => 10),           # repeat
    line(20, 'optout', '+447700900001', c => 11),           # repeat
    line(30, 'optout', 'a@b.co', sender => 'ACME', c => 12),
    line(100, 'optin', '+447700900003'),                    # START after
    line(200, 'optout', '+447700900004', ns => 'brand-x', c => 20,
         source => 'keyword'),                              # ties B's START
    '{"t":1795424900.5,"action":"optout","ns":"","dest":"+44770';

my $B = join '',
    line(5, 'optout', '+447700900002', c => 13, source => 'api'),
    line(50, 'optout', '+447700900003', c => 14),           # STOP
    line(60, 'optin', '+447700900001'),
    line(90, 'optout', '+447700900001', c => 15),           # reborn
    line(200, 'optin', '+447700900004', ns => 'brand-x'),
    "garbage\n",
    line(86700, 'optout', '+447700900005', sender => 'ACME', c => 16);

$t->write_file('a.log', $A);
$t->write_file('b.log', $B);
my @ab = ("$dir/a.log", "$dir/b.log");
my @ba = reverse @ab;

# ---------------------------------------------------------------- export

my $want_ndjson = join '', map { "$_\n" }
    '{"destination":"+447700900001","scope":"account","namespace":"",'
    . '"campaign":"15","since":"2026-11-23T09:01:30Z","source":"link",'
    . '"channel":"sms"}',
    '{"destination":"+447700900002","scope":"account","namespace":"",'
    . '"campaign":"13","since":"2026-11-23T09:00:05Z","source":"api",'
    . '"channel":"sms"}',
    '{"destination":"+447700900005","scope":"sender","sender":"ACME",'
    . '"namespace":"","campaign":"16","since":"2026-11-24T09:05:00Z",'
    . '"source":"link","channel":"sms"}',
    '{"destination":"a@b.co","scope":"sender","sender":"ACME",'
    . '"namespace":"","campaign":"12","since":"2026-11-23T09:00:30Z",'
    . '"source":"link","channel":"email"}',
    '{"destination":"+447700900004","scope":"account",'
    . '"namespace":"brand-x","campaign":"20",'
    . '"since":"2026-11-23T09:03:20Z","source":"keyword","channel":"sms"}';

my $want_csv = <<'EOF2';
destination,scope,sender,namespace,campaign,since,source,channel
+447700900001,account,,,15,2026-11-23T09:01:30Z,link,sms
+447700900002,account,,,13,2026-11-23T09:00:05Z,api,sms
+447700900005,sender,ACME,,16,2026-11-24T09:05:00Z,link,sms
a@b.co,sender,ACME,,12,2026-11-23T09:00:30Z,link,email
+447700900004,account,,brand-x,20,2026-11-23T09:03:20Z,keyword,sms
EOF2

for my $order ([ 'A B', @ab ], [ 'B A', @ba ]) {
    my ($name, @files) = @$order;

    my ($rc, $out, $err) = run('export', @files);
    is($rc, 0, "export $name: exit 0");
    is($out, $want_ndjson, "export $name: the rules that hold, ndjson: "
       . '003 allowed (START after STOP), 001 reborn with campaign 15, '
       . '002 keeps the first campaign (13, from B), 004 blocked '
       . '(opt-out wins the tie)');
    is(join('', sort split /^/, $err),
       "optoutctl: $dir/a.log:7: skipped: not valid JSON: premature end of "
       . "input near '\"+44770'\n"
       . "optoutctl: $dir/b.log:6: skipped: not valid JSON: '[' or '{' "
       . "expected near 'garbage'\n",
       "export $name: the torn and the garbage line reported and skipped");

    ($rc, $out) = run('export', '--format', 'csv', @files);
    is($out, $want_csv, "export $name: csv");
}

{
    my ($rc, $out) = run('export', '-', "$dir/b.log", { stdin => $A });
    is($out, $want_ndjson, 'export: a journal on stdin');

    ($rc, $out, my $err) = run('export', '--format', 'xml', @ab);
    is($rc, 2, 'export --format xml: usage error');
    ($rc, $out, $err) = run('export');
    is($rc, 2, 'export without a journal: usage error');
    ($rc, $out, $err) = run('export', "$dir/nope.log");
    is($rc, 1, 'export of a missing file: exit 1');
    like($err, qr{^optoutctl: \Q$dir\E/nope\.log: No such file}, '... said');
}

# ---------------------------------------------------------------- report

my %want_report = (
    'campaign table' => <<'EOF2',
campaign  opt-outs   opt-ins
0                0         1
10               1         1
12               1         0
13               1         0
14               1         1
15               1         0
16               1         0
20               1         0
total            7         3
EOF2
    'source table' => <<'EOF2',
source   opt-outs   opt-ins
api             1         3
keyword         1         0
link            5         0
total           7         3
EOF2
    'sender csv' => "sender,optouts,optins\n,5,3\nACME,2,0\n",
    'day json' => '{"by":"day","since":null,"until":null,"groups":['
        . '{"day":"2026-11-23","optouts":6,"optins":3},'
        . '{"day":"2026-11-24","optouts":1,"optins":0}],'
        . '"total":{"optouts":7,"optins":3}}' . "\n",
    'sender table' => <<'EOF2',
sender          opt-outs   opt-ins
(account-wide)         5         3
ACME                   2         0
total                  7         3
EOF2
);

for my $k (sort keys %want_report) {
    my ($by, $format) = split / /, $k;
    for my $order ([ 'A B', @ab ], [ 'B A', @ba ]) {
        my ($name, @files) = @$order;
        my ($rc, $out) = run('report', '--by', $by, '--format', $format,
                             @files);
        is($rc, 0, "report $k $name: exit 0");
        is($out, $want_report{$k}, "report $k $name: exact counts");
    }
}

{
    my ($rc, $out) = run('report', @ab);
    is($out, $want_report{'campaign table'},
       'report: by campaign, as a table, by default');

    ($rc, $out) = run('report', '--since', '2026-11-23T09:01:00Z',
                      '--until', '2026-11-24', '--format', 'json', @ba);
    is($out, '{"by":"campaign","since":"2026-11-23T09:01:00Z",'
       . '"until":"2026-11-24T00:00:00Z","groups":['
       . '{"campaign":"0","optouts":0,"optins":1},'
       . '{"campaign":"10","optouts":0,"optins":1},'
       . '{"campaign":"14","optouts":0,"optins":1},'
       . '{"campaign":"15","optouts":1,"optins":0},'
       . '{"campaign":"20","optouts":1,"optins":0}],'
       . '"total":{"optouts":2,"optins":3}}' . "\n",
       'report --since --until: only that window, opt-ins under the '
       . 'campaign they undo');

    ($rc, $out) = run('report', '--since', $T + 86400, '--format', 'csv',
                      @ab);
    is($out, "campaign,optouts,optins\n16,1,0\n", 'report --since unix time');

    for my $bad ('2026-02-30', 'yesterday', '2026-11-23T25:00:00Z') {
        ($rc) = run('report', '--since', $bad, @ab);
        is($rc, 2, "report --since '$bad': usage error");
    }
    ($rc) = run('report', '--by', 'color', @ab);
    is($rc, 2, 'report --by color: usage error');
}

# ---------------------------------------------------------------- replay

sub skey { $t->skey(dest => $_[0], sender => $_[1], ns => $_[2]) }

{
    my ($rc, $out, $err) = run('replay', '--store', $store,
                               '--store-secret', $ss, @ba);
    is($rc, 0, 'replay B A: exit 0') or diag $err;
    is($out, "replayed 14 records: 5 added, 0 already present, 1 deleted, "
       . "2 skipped\n", 'replay B A: counts of rules');
    is($t->mc_get(skey('+447700900001')), '1 15 ' . ($T + 90) . ' link sms 1',
       'replay: reborn rule with its new campaign');
    is($t->mc_get(skey('+447700900002')), '1 13 ' . ($T + 5) . ' api sms 0',
       'replay: first campaign, from the other node');
    is($t->mc_get(skey('+447700900003')), undef,
       'replay: STOP on B then START on A: no rule');
    is($t->mc_get(skey('+447700900004', undef, 'brand-x')),
       '1 20 ' . ($T + 200) . ' keyword sms 0', 'replay: the tie is blocked');
    like($t->mc_get('optout:marker:0'), qr/\A1 \d+\z/, 'replay: marker set');

    # a store holding older values: the opted-in rule goes, a rule reborn
    # after an opt-in replaces the old one, a rule never removed keeps it

    $t->mc_flush;
    $t->mc_set(skey('+447700900003'), "1 14 $T link sms 1");
    $t->mc_set(skey('+447700900002'), "1 99 $T link sms 1");
    $t->mc_set(skey('+447700900001'), "1 10 $T link sms 1");

    ($rc, $out, $err) = run('replay', '--store', $store, '--store-secret',
                            $ss, @ab);
    is($out, "replayed 14 records: 4 added, 1 already present, 1 deleted, "
       . "2 skipped\n", 'replay A B over older values: counts');
    is($t->mc_get(skey('+447700900003')), undef,
       'replay: opted-in key deleted');
    is($t->mc_get(skey('+447700900002')), "1 99 $T link sms 1",
       'replay: a rule never removed keeps the stored one');
    is($t->mc_get(skey('+447700900001')), '1 15 ' . ($T + 90) . ' link sms 1',
       'replay: a rule reborn after an opt-in replaces the stored one');
    is($t->mc_get(skey('a@b.co', 'ACME')), '1 12 ' . ($T + 30)
       . ' link email 1', 'replay: sender rule');
}

# two servers: every key written where libmemcached's distribution (and
# so the module, and "optoutctl get") looks for it

{
    my $t2 = OptoutTest->new;
    $t2->memcached_start;
    my $two = "$store --SERVER=127.0.0.1:" . $t2->mc_port;
    $t->mc_flush;

    my ($rc, $out, $err) = run('replay', '--store', $two, '--store-secret',
                               $ss, @ab);
    is($out, "replayed 14 records: 5 added, 0 already present, 1 deleted, "
       . "2 skipped\n", 'replay to two servers: counts') or diag $err;

    my @found;
    for my $q (['+447700900001'], ['+447700900002'], ['a@b.co', 'ACME'],
               ['+447700900005', 'ACME'],
               ['+447700900004', undef, 'brand-x'])
    {
        my ($dest, $sender, $ns) = @$q;
        ($rc, $out) = run('get', '--store', $two, '--store-secret', $ss,
                          (defined $sender ? ('--sender', $sender) : ()),
                          (defined $ns ? ('--namespace', $ns) : ()), $dest);
        push @found, $rc;
    }
    is("@found", '0 0 0 0 0', 'replay to two servers: get finds each rule');
    my @m = map { "optout:marker:$_" } 0 .. 99;
    is(scalar(keys %{ $t2->mc_get_multi(@m) }), 1,
       'replay to two servers: the second server holds its marker');
    $t2->memcached_stop;
}

# ---------------------------------------------------------------- import

# errors found in the file itself: nothing to send, so no server needed

my $closed = 'http://127.0.0.1:' . OptoutTest::_free_port() . '/api';

{
    # a byte order mark before the header, as spreadsheets write it
    $t->write_file('bad.csv', "\xef\xbb\xbfdestination,sender,campaign,"
                   . "channel\n"
                   . "\"+447700900001,ACME\n"
                   . "+447700900002,ACME,1,sms,extra\n"
                   . "\n"
                   . ",ACME,3\n"
                   . "+447700900003,AC\"ME\n");

    my ($rc, $out, $err) = run('import', '--url', $closed, "$dir/bad.csv");
    is($rc, 1, 'import: invalid lines: exit 1');
    is($err, "optoutctl: $dir/bad.csv:2: invalid: unterminated quote\n"
       . "optoutctl: $dir/bad.csv:3: invalid: too many fields\n"
       . "optoutctl: $dir/bad.csv:5: invalid: destination\n"
       . "optoutctl: $dir/bad.csv:6: invalid: quote inside a field\n",
       'import: each invalid line with its number');
    is($out, "imported 4 rules: 0 added, 0 already present, 4 invalid, "
       . "0 not imported\n", 'import: summary');

    ($rc, $out, $err) = run('import', '--url', $closed,
                            { stdin => "+447700900001\n" });
    is($rc, 1, 'import: API unreachable: exit 1');
    like($err, qr/^optoutctl: stdin:1-1: not sent: .*\n.*stopped/,
         'import: API unreachable said');
    is($out, "imported 1 rules: 0 added, 0 already present, 0 invalid, "
       . "1 not imported\n", 'import: unreachable summary');

    ($rc) = run('import', "$dir/bad.csv");
    is($rc, 2, 'import without --url: usage error');
    ($rc) = run('import', '--url', $closed, '--chunk', '10001');
    is($rc, 2, 'import --chunk 10001: usage error');
}

# large journals: lines parsed in batches (of 256 KB, one thread a CPU) keep
# their order and numbers; on a terminal a progress bar, cleared at the end

{
    my $big = '';
    for my $i (1 .. 70000) {
        $big .= $i == 5000 ? "torn\n"
              : line($i, 'optout', sprintf('+4477009%05d', $i % 60000),
                     c => $i);
    }
    $t->write_file('big.log', $big);

    my ($rc, $out, $err) = run('export', '--format', 'csv',
                               "$dir/big.log");
    is($rc, 0, 'export of 70,000 lines: exit 0');
    is($err, "optoutctl: $dir/big.log:5000: skipped: not valid JSON: "
       . "'[' or '{' expected near 'torn'\n",
       'export of 70,000 lines: the torn line by its number, no bar');
    is(scalar(() = $out =~ /\n/g), 60001, 'export: 60,000 rules');
    like($out, qr/^\+447700900001,account,,,1,/m,
         'export: the first campaign of a destination seen twice');

    SKIP: {
        skip 'script(1) not installed', 1
            unless -x '/usr/bin/script';

        my $cmd = "$bin export $dir/big.log 2>&1 >/dev/null";
        my $tty = `/usr/bin/script -qec '$cmd' /dev/null`;
        like($tty, qr/\A\r\e\[Koptoutctl:\ \Q$dir\E\/big\.log:5000:
                      \ skipped:\ [^\r\n]*\r?\n
                      \r\e\[Kexport\ \[\#{28}\.{2}\]\ \ 93%\ 65536\ lines
                      (?:,\ \d+\/s(?:,\ ETA\ \d+\ s)?)?\r\e\[K\z/x,
             'export on a terminal: progress bar, cleared');
    }
}

for my $cmd (qw(export report import)) {
    my ($rc, $out) = run($cmd, '--help');
    is($rc, 0, "$cmd --help: exit 0");
    like($out, qr/^usage: optoutctl $cmd /, "$cmd --help: usage");
}

done_testing();
