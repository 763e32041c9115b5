#!/usr/bin/perl

# optoutctl: keygen, sign, verify, replay, get, against a private memcached.

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(hmac_sha256 hmac_sha256_hex);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use MIME::Base64 qw(decode_base64url);
use POSIX qw(WNOHANG);
use Test::More;

my $root = dirname(dirname(abs_path(__FILE__)));
my $bin = "$root/build/optoutctl";

-x $bin or BAIL_OUT("$bin is missing: run make build/optoutctl");

delete @ENV{qw(OPTOUT_STORE OPTOUT_STORE_SECRET)};

my $dir = tempdir(CLEANUP => 1);
my $mc_pid;
my $mc_port;

END {
    my $rc = $?;

    if ($mc_pid) {
        kill 'TERM', $mc_pid;
        waitpid($mc_pid, 0);
    }

    $? = $rc;
}

sub free_port {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, Proto => 'tcp',
                                  ReuseAddr => 1)
        or die "cannot bind: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return undef;
    local $/;
    my $data = <$fh>;
    return $data;
}

sub spew {
    my ($file, $data) = @_;
    open my $fh, '>', $file or die "$file: $!";
    print $fh $data;
    close $fh or die "$file: $!";
}

# run(args..., { stdin => ..., env => {...} }) -> (exit code, stdout, stderr)

sub run {
    my $opt = ref $_[-1] eq 'HASH' ? pop : {};
    my @args = @_;

    spew("$dir/stdin", defined $opt->{stdin} ? $opt->{stdin} : '');

    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        open STDIN, '<', "$dir/stdin" or die;
        open STDOUT, '>', "$dir/stdout" or die;
        open STDERR, '>', "$dir/stderr" or die;

        while (my ($k, $v) = each %{ $opt->{env} || {} }) {
            $ENV{$k} = $v;
        }

        exec $bin, @args;
        exit 127;
    }

    waitpid($pid, 0);
    my $status = $?;

    return ($status & 127 ? 128 + ($status & 127) : $status >> 8,
            slurp("$dir/stdout"), slurp("$dir/stderr"));
}

# raw memcached text protocol get: value or undef

sub mc_get {
    my ($key) = @_;

    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $mc_port, Proto => 'tcp',
                                  Timeout => 5)
        or die "memcached: $!";

    print $s "get $key\r\n";

    my $line = <$s>;
    my $value;

    if (defined $line && $line =~ /^VALUE \S+ \d+ (\d+)\r\n\z/) {
        read($s, $value, $1) == $1 or die "short read";
        <$s>;
        $line = <$s>;
    }

    die "unexpected reply to get: " . (defined $line ? $line : 'EOF')
        unless defined $line && $line eq "END\r\n";

    close $s;
    return $value;
}

sub start_memcached {
    $mc_port = free_port();

    my @cmd = ('memcached', '-U', '0', '-l', '127.0.0.1', '-p', $mc_port,
               '-m', '64');
    push @cmd, '-u', 'nobody' if $> == 0;

    $mc_pid = fork;
    die "fork: $!" unless defined $mc_pid;

    if ($mc_pid == 0) {
        open STDOUT, '>', '/dev/null';
        { exec @cmd }
        print STDERR "exec memcached: $!\n";
        POSIX::_exit(127);
    }

    for (1 .. 100) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $mc_port, Proto => 'tcp');
        return 1 if $s;

        if (waitpid($mc_pid, WNOHANG) == $mc_pid) {
            undef $mc_pid;
            return 0;
        }

        select(undef, undef, undef, 0.05);
    }

    return 0;
}

start_memcached() or BAIL_OUT("cannot start memcached on port $mc_port");

my $store = "--SERVER=127.0.0.1:$mc_port";
my ($rc, $out, $err);

#
# keygen
#

my $k1 = "$dir/link1.key";
my $k2 = "$dir/link2.key";
my $ss = "$dir/store.key";

{
    my $old = umask 022;
    ($rc, $out, $err) = run('keygen', $k1);
    umask $old;
}

is($rc, 0, 'keygen: exit 0') or diag $err;
is((stat $k1)[2] & 07777, 0600, 'keygen: mode 0600 despite umask 022');
is(-s $k1, 65, 'keygen: 65 bytes');
like(slurp($k1), qr/\A[0-9a-f]{64}\n\z/, 'keygen: 64 lowercase hex + LF');

my $k1_data = slurp($k1);

($rc, $out, $err) = run('keygen', $k1);
is($rc, 1, 'keygen: existing file refused');
like($err, qr/^optoutctl: .*exists.*--force/, 'keygen: refusal explained');
is(slurp($k1), $k1_data, 'keygen: existing file untouched');

($rc, $out, $err) = run('keygen', '--force', $k1);
is($rc, 0, 'keygen --force: exit 0') or diag $err;
isnt(slurp($k1), $k1_data, 'keygen --force: new key');
is((stat $k1)[2] & 07777, 0600, 'keygen --force: mode 0600');
is(scalar(grep { !/\/(link1\.key|stdin|stdout|stderr)\z/ } glob("$dir/*")), 0,
   'keygen --force: no temp file left behind');

($rc) = run('keygen', $k2);
is($rc, 0, 'keygen: second key');
($rc) = run('keygen', $ss);
is($rc, 0, 'keygen: store secret');
isnt(slurp($k1), slurp($k2), 'keygen: keys differ');

($rc, $out, $err) = run('keygen');
is($rc, 2, 'keygen: missing FILE is a usage error');

#
# sign and verify
#

($rc, $out, $err) = run('sign', '--key', $k1, '--campaign', '4294967295',
                        '+123456789012345');
is($rc, 0, 'sign: exit 0') or diag $err;
is($err, '', 'sign: nothing on stderr');
chomp(my $tok = $out);
like($tok, qr/\A[A-Za-z0-9_-]+\z/, 'sign: base64url token, one line');
is(length $tok, 40, 'sign: token length 40 (E.164 max, campaign 2^32-1)');

# independent check of the token layout (docs/token-format.md) and tag

{
    my $binary = decode_base64url($tok);
    my $body = substr($binary, 0, -16);
    my $key = slurp($k1);
    $key =~ s/\n\z//;

    is(unpack('H*', $body),
       '1001' . 'ffffffff0f' . sprintf('%014x', 123456789012345),
       'sign: token body: header, key id, LEB128 campaign, 7-byte number');
    is(unpack('H*', substr($binary, -16)),
       unpack('H*', substr(hmac_sha256($body, $key), 0, 16)),
       'sign: tag is HMAC-SHA256 under the key file contents');
}

($rc, $out, $err) = run('verify', '--key', $k1, $tok);
is($rc, 0, 'verify: valid token exit 0') or diag $err;
is($out, "valid key_id=1 campaign=4294967295 scope=account "
         . "dest=+123456789012345 channel=sms\n", 'verify: decoded fields');

($rc, $out, $err) = run('sign', '-k', $k1, '-c', '42', '--sender', 'acme',
                        '--base', 'https://example.com/o//',
                        '+44 (7700) 900-123', 'not a number',
                        'John.Doe@Example.COM');
is($rc, 1, 'sign: a bad argument gives exit 1');
like($err, qr/^optoutctl: argument 2: invalid destination$/m,
     'sign: bad argument reported with its position');
my @links = split /\n/, $out;
is(scalar @links, 2, 'sign: the good arguments are still signed');
like($links[0], qr{\Ahttps://example\.com/o/[A-Za-z0-9_-]+\z},
     'sign: BASE/TOKEN, trailing slashes of --base removed');

($rc, $out, $err) = run('verify', '--key', $k1, "$links[0]?utm=x#frag");
is($out, "valid key_id=1 campaign=42 scope=sender sender=ACME "
         . "dest=+447700900123 channel=sms\n",
   'verify: link with query and fragment, sender scope');
($rc, $out, $err) = run('verify', '--key', $k1, $links[1]);
is($out, "valid key_id=1 campaign=42 scope=sender sender=ACME "
         . "dest=john.doe\@example.com channel=email\n",
   'verify: email destination normalized');

# stdin, CRLF, an empty line, a bad line, no final newline

($rc, $out, $err) = run('sign', '-k', $k1, '-c', '7',
                        { stdin => "+447700900123\r\n\nbad-line\n"
                                   . "0044 7700 900124" });
is($rc, 1, 'sign stdin: a bad line gives exit 1');
like($err, qr/^optoutctl: line 3: invalid destination$/m,
     'sign stdin: bad line reported with its number');
my @toks = split /\n/, $out;
is(scalar @toks, 2, 'sign stdin: two tokens for the two good lines');

($rc, $out) = run('verify', '-k', $k1, $toks[1]);
like($out, qr/ campaign=7 scope=account dest=\+447700900124 /,
     'sign stdin: last line without newline signed');

($rc, $out, $err) = run('sign', '-k', $k1, '-c', '7',
                        { stdin => "+447700900123\n" });
is($rc, 0, 'sign stdin: all good lines give exit 0');

# tampering, wrong key, rotation

my $tampered = $tok;
substr($tampered, 20, 1) = substr($tampered, 20, 1) eq 'A' ? 'B' : 'A';
($rc, $out, $err) = run('verify', '--key', $k1, $tampered);
is($rc, 1, 'verify: tampered token exit 1');
like($err, qr/^optoutctl: invalid token: \S/, 'verify: tampered reported');
is($out, '', 'verify: nothing on stdout for an invalid token');

($rc, $out, $err) = run('verify', '--key', $k2, $tok);
is($rc, 1, 'verify: wrong key exit 1');
like($err, qr/^optoutctl: invalid token: authentication tag mismatch$/,
     'verify: wrong key is a tag mismatch');

($rc, $out, $err) = run('verify', '--key', $k1, 'AAAA!!!');
is($rc, 1, 'verify: garbage exit 1');

($rc, $out, $err) = run('sign', '--key', $k2, '--key-id', '2', '-c', '9',
                        '+447700900555');
chomp(my $tok2 = $out);
is($rc, 0, 'sign: key id 2');

($rc, $out, $err) = run('verify', '--key', $k1, '--key', $k2, '--key-id', '2',
                        $tok2);
is($rc, 0, 'verify rotation: new key accepted') or diag $err;
like($out, qr/^valid key_id=2 campaign=9 /, 'verify rotation: key id 2');
($rc, $out, $err) = run('verify', '--key', $k1, '--key', $k2, '--key-id', '2',
                        $tok);
is($rc, 0, 'verify rotation: old key still accepted');
like($out, qr/^valid key_id=1 campaign=4294967295 /,
     'verify rotation: key id 1');

($rc, $out, $err) = run('verify', '--key', $k1, $tok2);
is($rc, 1, 'verify: token of an unknown key id refused');
like($err, qr/^optoutctl: invalid token: unknown key id$/,
     'verify: unknown key id reported');

($rc, $out, $err) = run('verify', '--key', $k1, '--key', $k2, $tok);
is($rc, 2, 'verify: duplicate key ids refused');
like($err, qr/^optoutctl: .*twice/, 'verify: duplicate key id explained');

chmod 0644, $k2;
($rc, $out, $err) = run('sign', '--key', $k2, '-c', '1', '+447700900123');
is($rc, 1, 'sign: key readable by others refused');
like($err, qr/^optoutctl: .*\Q$k2\E/, 'sign: key file error names the file');
chmod 0600, $k2;

($rc, $out, $err) = run('sign', '--key', "$dir/nope", '-c', '1', '+4477009');
is($rc, 1, 'sign: missing key file exit 1');

#
# replay
#

# the destination as sign and verify see it

($rc, $out) = run('sign', '-k', $k1, '-c', '42', '+44 7700 900123');
chomp(my $jtok = $out);
($rc, $out) = run('verify', '-k', $k1, $jtok);
my ($jdest) = $out =~ / dest=(\S+) /;
is($jdest, '+447700900123', 'replay: destination from a signed link');

my $journal = "$dir/journal.log";
spew($journal, join '',
    qq({"t":1795424400.250,"action":"optout","ns":"","dest":"$jdest",)
    . qq("scope":"account","campaign":"42","source":"link","channel":"sms",)
    . qq("client":"192.0.2.1","kid":1}\n),
    qq({"t":1795424460.000,"action":"optout","ns":"","dest":"$jdest",)
    . qq("scope":"account","campaign":"43","source":"api","channel":"sms",)
    . qq("client":"192.0.2.1","kid":0}\n),
    qq(this is not json\n),
    qq({"t":1795424500.5,"action":"optout","ns":"","dest":"a\@b.co",)
    . qq("scope":"sender","sender":"ACME","campaign":"7","source":"link",)
    . qq("channel":"email","client":"","kid":2}\n),
    qq({"t":1795424600,"action":"optout","ns":"","dest":"+447700900999",)
    . qq("scope":"account","campaign":"5","source":"link","channel":"sms",)
    . qq("client":"","kid":1}\n),
    qq({"t":1795424700,"action":"optin","ns":"","dest":"+447700900999",)
    . qq("scope":"account","campaign":"0","source":"api","channel":"sms",)
    . qq("client":"","kid":0}\n),
    qq({"t":1795424800,"action":"optout","ns":"brand-x",)
    . qq("dest":"+447700900777","scope":"account","campaign":"11",)
    . qq("source":"keyword","channel":"sms","client":"","kid":0}\n),
    qq({"t":1795424800,"action":"optout","ns":"","scope":"account",)
    . qq("campaign":"1","source":"link","channel":"sms","client":"",)
    . qq("kid":1}\n),
    qq({"t":1795424900.5,"action":"optout","ns":"","dest":"+4477009005));

is(mc_get('optout:marker:0'), undef, 'replay: no marker before replay');

my $t0 = time;
($rc, $out, $err) = run('replay', '--store', $store, '--store-secret', $ss,
                        $journal);
is($rc, 0, 'replay: exit 0 despite skipped lines') or diag $err;
# counts are of rules (identities) once the lines are folded: the two
# opt-outs of $jdest are one rule, the opt-out then opt-in one deletion
is($out, "replayed 9 records: 3 added, 0 already present, 1 deleted, "
         . "3 skipped\n", 'replay: counts');
like($err, qr/^optoutctl: \Q$journal\E:3: skipped: /m,
     'replay: garbage line reported');
like($err, qr/^optoutctl: \Q$journal\E:8: skipped: missing "dest"$/m,
     'replay: line without dest reported');
like($err, qr/^optoutctl: \Q$journal\E:9: skipped: /m,
     'replay: torn last line reported');
is(scalar(() = $err =~ /skipped/g), 3, 'replay: exactly three warnings');

my $marker = mc_get('optout:marker:0');
like($marker, qr/\A1 \d+\z/, 'replay: marker key set to "1 <time>"');
my ($mt) = ($marker || '') =~ /\A1 (\d+)\z/;
ok(defined $mt && $mt >= $t0 - 2 && $mt <= time + 2,
   'replay: marker time is now');

# the stored key and value, computed independently (docs/store-format.md)

{
    my $secret = slurp($ss);
    $secret =~ s/\n\z//;
    my $key = 'optout:' . substr(hmac_sha256_hex("optout-store-v1\0\0a\0$jdest",
                                                 $secret), 0, 32);

    is(mc_get($key), '1 42 1795424400 link sms 1',
       'replay: rule value at the keyed store key, first campaign kept');
}

# get

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '+44 7700 900123');
is($rc, 0, 'get: rule found exit 0') or diag $err;
is($out, "account: blocked campaign=42 since=2026-11-23T09:00:00Z "
         . "source=link channel=sms key_id=1\n",
   'get: first campaign kept, time truncated');

($rc, $out, $err) = run('get', '--sender', 'acme', 'A@B.co',
                        { env => { OPTOUT_STORE => $store,
                                   OPTOUT_STORE_SECRET => $ss } });
is($rc, 0, 'get: sender rule found via environment defaults') or diag $err;
is($out, "account: no rule\nsender ACME: blocked campaign=7 "
         . "since=2026-11-23T09:01:40Z source=link channel=email key_id=2\n",
   'get: account and sender scopes');

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '--sender', 'OTHER', 'a@b.co');
is($rc, 3, 'get: other sender, no rule exit 3');
is($out, "account: no rule\nsender OTHER: no rule\n", 'get: no rule lines');

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '+447700900999');
is($rc, 3, 'get: opted back in, exit 3');
is($out, "account: no rule\n", 'get: opt-in deleted the rule');

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '--namespace', 'brand-x', '+447700900777');
is($rc, 0, 'get --namespace: rule found');
like($out, qr/^account: blocked campaign=11 .* source=keyword /,
     'get --namespace: rule of the namespace');
($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '+447700900777');
is($rc, 3, 'get: namespaces are separate');

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $k1,
                        '+447700900123');
is($rc, 3, 'get: another store secret gives other keys');

# replay again: idempotent

($rc, $out, $err) = run('replay', '--store', $store, '--store-secret', $ss,
                        $journal);
is($rc, 0, 'replay again: exit 0');
is($out, "replayed 9 records: 0 added, 3 already present, 1 deleted, "
         . "3 skipped\n", 'replay again: existing rules already present');

($rc, $out, $err) = run('get', '--store', $store, '--store-secret', $ss,
                        '+447700900123');
like($out, qr/^account: blocked campaign=42 /,
     'replay again: first campaign still kept');

# --prefix

($rc, $out, $err) = run('replay', '--store', $store, '--store-secret', $ss,
                        '--prefix', 'p2:', $journal);
like($out, qr/^replayed 9 records: 3 added, /, 'replay --prefix: own keys');
like(mc_get('p2:marker:0'), qr/\A1 \d+\z/, 'replay --prefix: own marker');

# memcached unreachable

my $dead = "--SERVER=127.0.0.1:" . free_port();

($rc, $out, $err) = run('get', '--store', $dead, '--store-secret', $ss,
                        '+447700900123');
is($rc, 1, 'get: memcached down exit 1');
unlike($out, qr/no rule/, 'get: memcached down is never "no rule"');
like($err, qr/^optoutctl: memcached get failed: /, 'get: error reported');

($rc, $out, $err) = run('replay', '--store', $dead, '--store-secret', $ss,
                        $journal);
is($rc, 1, 'replay: memcached down exit 1');
like($err, qr/^optoutctl: memcached write failed: .*; stopped \(the journals /m,
     'replay: error reported');
is($out, '', 'replay: no summary after an error');

#
# usage errors
#

($rc, $out, $err) = run('frobnicate');
is($rc, 2, 'unknown command exit 2');
like($err, qr/^optoutctl: unknown command "frobnicate"/, 'unknown command');

($rc, $out, $err) = run();
is($rc, 2, 'no command exit 2');

($rc, $out, $err) = run('sign', '--key', $k1, '+447700900123');
is($rc, 2, 'sign without --campaign exit 2');
like($err, qr/^optoutctl: sign: missing --campaign/, 'missing --campaign');

for my $c ('12x', '-1', '+5', ' 5', '', '18446744073709551616') {
    ($rc, $out, $err) = run('sign', '--key', $k1, '--campaign', $c,
                            '+447700900123');
    is($rc, 2, "sign --campaign '$c' exit 2");
    like($err, qr/^optoutctl: sign: invalid --campaign/,
         "sign --campaign '$c' explained");
    is($out, '', "sign --campaign '$c' prints nothing");
}

($rc, $out, $err) = run('sign', '--key', $k1, '--campaign',
                        '18446744073709551615', '+447700900123');
is($rc, 0, 'sign: campaign 2^64-1 accepted');

for my $id ('0', '256', 'x') {
    ($rc) = run('sign', '--key', $k1, '--key-id', $id, '-c', '1', '+4477009');
    is($rc, 2, "sign --key-id '$id' exit 2");
}

($rc, $out, $err) = run('sign', '--key', $k1, '-c', '1', '--sender',
                        'WAY-TOO-LONG-SENDER', '+447700900123');
is($rc, 2, 'sign: invalid sender exit 2');

($rc, $out, $err) = run('sign', '--bogus');
is($rc, 2, 'unknown option exit 2');
like($err, qr/^optoutctl: sign: unknown option --bogus/, 'unknown option');

($rc, $out, $err) = run('verify', $tok);
is($rc, 2, 'verify without --key exit 2');

($rc, $out, $err) = run('get', '+447700900123');
is($rc, 2, 'get without store exit 2');
like($err, qr/^optoutctl: get: no store/, 'get without store explained');

($rc, $out, $err) = run('get', '--store', '--NOPE=1', '--store-secret', $ss,
                        '+447700900123');
is($rc, 2, 'get: invalid libmemcached configuration exit 2');
like($err, qr/^optoutctl: get: invalid store configuration/,
     'get: invalid configuration explained');

($rc, $out, $err) = run('replay', '--store', $store, '--store-secret', $ss);
is($rc, 2, 'replay without JOURNAL exit 2');

($rc, $out, $err) = run('--help');
is($rc, 0, '--help exit 0');
like($out, qr/keygen.*sign.*verify.*get.*replay/s, '--help lists commands');

for my $cmd (qw(keygen sign verify get replay)) {
    ($rc, $out, $err) = run($cmd, '--help');
    is($rc, 0, "$cmd --help exit 0");
    like($out, qr/^usage: optoutctl $cmd /, "$cmd --help usage");
    ($rc, $out, $err) = run($cmd, '-h');
    like($out, qr/^usage: optoutctl $cmd /, "$cmd -h usage");
}

done_testing();
