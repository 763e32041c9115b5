#!/usr/bin/perl

# optout_cache configuration: a good directive passes "nginx -t", bad ones
# fail with a clear message; nginx starts with the zone and reloads keep
# working (same zone, changed ttls, changed size).  Runs as root or not;
# nginx is started with its own prefix in a temporary directory.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use File::Temp;
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use Test::More;

my $ROOT = File::Spec->rel2abs(dirname(File::Spec->rel2abs(__FILE__))
                               . '/..');
my $NGINX = $ENV{NGINX_BINARY} || '/usr/sbin/nginx';
my $SO = "$ROOT/build/ngx_http_optout_module.so";

plan skip_all => "no $NGINX" unless -x $NGINX;
plan skip_all => "no $SO, run make module" unless -f $SO;

my $dir = File::Temp->newdir('optout-cache-XXXXXX', TMPDIR => 1);
my $P = "$dir";
chmod 0755, $P;
for my $d (qw(logs conf)) {
    mkdir "$P/$d" or die "mkdir $d: $!";
    chmod 0755, "$P/$d";
}

my $port = free_port();

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 1, ReuseAddr => 1)
        or die "socket: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub write_conf {
    my ($cache, $file) = @_;
    $file ||= 'nginx.conf';
    my $user = $> == 0 ? "user root;\n" : '';
    open my $fh, '>', "$P/conf/$file" or die "$file: $!";
    print $fh <<"EOF";
load_module $SO;
${user}worker_processes 2;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;
events {
    worker_connections 64;
}
http {
    access_log off;
    client_body_temp_path $P/client_body_temp;
    proxy_temp_path $P/proxy_temp;
    fastcgi_temp_path $P/fastcgi_temp;
    uwsgi_temp_path $P/uwsgi_temp;
    scgi_temp_path $P/scgi_temp;

$cache

    server {
        listen 127.0.0.1:$port;
        location / {
            return 200 "ok\\n";
        }
    }
}
EOF
    close $fh;
}

sub run {
    my (@args) = @_;
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        open STDIN, '<', '/dev/null';
        exec $NGINX, '-p', "$P/", '-c', @args or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return ($? >> 8, defined $out ? $out : '');
}

sub nginx_test {
    my ($file) = @_;
    return run("conf/$file", '-t');
}

sub good {
    my ($name, $cache) = @_;
    write_conf($cache, 'test.conf');
    my ($rc, $out) = nginx_test('test.conf');
    is($rc, 0, "$name: nginx -t passes") or diag $out;
}

sub bad {
    my ($name, $cache, $re) = @_;
    write_conf($cache, 'test.conf');
    my ($rc, $out) = nginx_test('test.conf');
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message") or diag $out;
}

# ------------------------------------------------------------ nginx -t

good('zone, blocked, allowed',
     'optout_cache zone=c:1m blocked=5m allowed=10s;');
good('zone only', 'optout_cache zone=c:1m;');
good('ttls in ms and h', 'optout_cache allowed=500ms zone=c:64k blocked=1h;');
good('without the directive', '');

bad('zone without size', 'optout_cache zone=c;',
    qr/\[emerg\].*invalid zone "zone=c" in "optout_cache"/);
bad('zone with empty name', 'optout_cache zone=:1m;',
    qr/\[emerg\].*invalid zone "zone=:1m" in "optout_cache"/);
bad('zone with bad size', 'optout_cache zone=c:1x;',
    qr/\[emerg\].*invalid zone size "zone=c:1x" in "optout_cache"/);
bad('zone with empty size', 'optout_cache zone=c:;',
    qr/\[emerg\].*invalid zone size "zone=c:" in "optout_cache"/);
bad('zone too small', 'optout_cache zone=c:1k;',
    qr/\[emerg\].*zone "zone=c:1k" in "optout_cache" is too small/);
bad('unknown parameter', 'optout_cache foo=1 zone=c:1m;',
    qr/\[emerg\].*invalid parameter "foo=1" in "optout_cache"/);
bad('no zone', 'optout_cache blocked=1m;',
    qr/\[emerg\].*"optout_cache" must have "zone" parameter/);
bad('duplicate', "optout_cache zone=c:1m;\noptout_cache zone=d:1m;",
    qr/\[emerg\].*"optout_cache" directive is duplicate/);
bad('bad blocked time', 'optout_cache zone=c:1m blocked=xyz;',
    qr/\[emerg\].*invalid time "blocked=xyz" in "optout_cache"/);
bad('empty allowed time', 'optout_cache zone=c:1m allowed=;',
    qr/\[emerg\].*invalid time "allowed=" in "optout_cache"/);
bad('no parameters', 'optout_cache;',
    qr/\[emerg\].*invalid number of arguments in "optout_cache"/);
bad('in server', "server {\n    optout_cache zone=c:1m;\n}",
    qr/\[emerg\].*"optout_cache" directive is not allowed here/);
my $other = qr/\[emerg\].*zone "c" is already declared for a different/;
bad('zone of limit_req, other size',
    "limit_req_zone \$binary_remote_addr zone=c:2m rate=1r/s;\n"
    . 'optout_cache zone=c:1m;', $other);
bad('zone of limit_req, same size',
    "limit_req_zone \$binary_remote_addr zone=c:1m rate=1r/s;\n"
    . 'optout_cache zone=c:1m;', $other);

# ------------------------------------------------------------ start, reload

my $master;

sub children {
    my @pids;
    opendir my $d, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $d) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh>;
        close $fh;
        next unless defined $st && $st =~ /\)\s+(\S)\s+(\d+)/;
        next if $1 eq 'Z' || $1 eq 'X';
        push @pids, $p if $2 == $master;
    }
    closedir $d;
    @pids = sort { $a <=> $b } @pids;
    return @pids;
}

sub get_ok {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Timeout => 2)
        or return 0;
    print $s "GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    local $/;
    my $r = <$s>;
    close $s;
    return defined $r && $r =~ m{^HTTP/1\.1 200}s && $r =~ /\r\n\r\nok\n$/;
}

# the workers changed: none of @old is left and 2 new ones run
sub workers_replaced {
    my (@old) = @_;
    my %old = map { $_ => 1 } @old;
    my $deadline = time + 10;
    while (time < $deadline) {
        my @now = children();
        return 1 if @now == 2 && !grep { $old{$_} } @now;
        sleep 0.05;
    }
    return 0;
}

sub reload_with {
    my ($name, $cache) = @_;
    my @old = children();
    write_conf($cache);
    my ($rc, $out) = run('conf/nginx.conf', '-s', 'reload');
    is($rc, 0, "$name: reload signalled") or diag $out;
    ok(workers_replaced(@old), "$name: new workers");
    ok(get_ok(), "$name: serves");
}

write_conf('optout_cache zone=c:1m blocked=5m allowed=10s;');
my ($rc, $out) = run('conf/nginx.conf');
is($rc, 0, 'nginx starts') or diag $out;

my $deadline = time + 5;
until (-s "$P/logs/nginx.pid" || time > $deadline) { sleep 0.02 }
open my $pf, '<', "$P/logs/nginx.pid";
($master) = (defined $pf ? <$pf> : '') =~ /(\d+)/;
ok($master && kill(0, $master), 'master runs');

$deadline = time + 5;
until (children() == 2 || time > $deadline) { sleep 0.02 }
is(scalar children(), 2, '2 workers');
ok(get_ok(), 'serves');

reload_with('same zone', 'optout_cache zone=c:1m blocked=5m allowed=10s;');
reload_with('other ttls', 'optout_cache zone=c:1m blocked=1m;');
reload_with('other size', 'optout_cache zone=c:2m blocked=1m;');
reload_with('other name', 'optout_cache zone=d:2m;');
reload_with('no cache', '');
reload_with('cache again', 'optout_cache zone=c:1m allowed=1s;');

# a reload with a bad directive keeps the old configuration
{
    my @old = children();
    write_conf('optout_cache zone=c:1m blocked=xyz;');
    run('conf/nginx.conf', '-s', 'reload');
    sleep 0.5;
    is_deeply([children()], \@old, 'bad reload: workers kept');
    ok(get_ok(), 'bad reload: serves');
}

# stop
kill 'QUIT', $master if $master;
$deadline = time + 10;
while ($master && kill(0, $master) && time < $deadline) { sleep 0.05 }
ok(!($master && kill(0, $master)), 'nginx stopped');

open my $log, '<', "$P/logs/error.log" or die "error.log: $!";
my @bad = grep { /\[(alert|crit|emerg)\]/ && !/blocked=xyz/ } <$log>;
close $log;
is(scalar @bad, 0, 'no alert, crit or emerg in error.log') or diag @bad;

END {
    if ($master && kill 0, $master) {
        kill 'TERM', $master;
        sleep 0.5;
        kill 'KILL', $master if kill 0, $master;
    }
}

done_testing();
