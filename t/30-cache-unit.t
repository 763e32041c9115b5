#!/usr/bin/perl

# optout_cache functions through a test-only helper module built here from
# the configured tree in build/nginx: a location calls
# ngx_http_optout_cache_get/put/remove (resolved from the optout module:
# nginx loads modules with RTLD_GLOBAL).  Checks hits, misses, "absent"
# entries, the first rule kept, no downgrade, removal, expiry, sharing
# between 2 workers, entries kept across a reload, ttls shortened by a
# reload, and LRU eviction in a small zone.

use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use File::Temp;
use POSIX ();
use Time::HiRes qw(sleep time);
use IO::Socket::INET;
use Test::More;

my $ROOT = File::Spec->rel2abs(dirname(File::Spec->rel2abs(__FILE__))
                               . '/..');
my $NGINX = $ENV{NGINX_BINARY} || '/usr/sbin/nginx';
my $SO = "$ROOT/build/ngx_http_optout_module.so";
my $TREE = "$ROOT/build/nginx";
my $CC = $ENV{CC} || 'cc';

plan skip_all => "no $NGINX" unless -x $NGINX;
plan skip_all => "no $SO, run make module" unless -f $SO;
plan skip_all => "no configured tree in $TREE, run make module"
    unless -f "$TREE/objs/ngx_auto_config.h";

my $dir = File::Temp->newdir('optout-cache-XXXXXX', TMPDIR => 1);
my $P = "$dir";
chmod 0755, $P;
for my $d (qw(logs conf)) {
    mkdir "$P/$d" or die "mkdir $d: $!";
    chmod 0755, "$P/$d";
}

# ------------------------------------------------------------ helper module

{
    open my $fh, '>', "$P/helper.c" or die "helper.c: $!";
    local $/;
    print $fh <DATA>;
    close $fh;

    my @inc = map { ('-I', "$TREE/$_") }
              qw(src/core src/event src/event/modules src/os/unix objs
                 src/http src/http/modules src/http/v2);
    my @cmd = ($CC, qw(-shared -fPIC -O -W -Wall -Wno-unused-parameter
                       -Werror), @inc, '-I', "$ROOT/src",
               '-o', "$P/helper.so", "$P/helper.c");
    my $out = `@cmd 2>&1`;
    is($?, 0, 'helper module builds') or diag $out;
    BAIL_OUT('no helper module') if $?;
}

# ------------------------------------------------------------ nginx

my $port = free_port();
my $master;

sub free_port {
    my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                  Listen => 1, ReuseAddr => 1)
        or die "socket: $!";
    my $p = $s->sockport;
    close $s;
    return $p;
}

sub write_conf {
    my ($cache) = @_;
    my $user = $> == 0 ? "user root;\n" : '';
    open my $fh, '>', "$P/conf/nginx.conf" or die "nginx.conf: $!";
    print $fh <<"EOF";
load_module $SO;
load_module $P/helper.so;
${user}worker_processes 2;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;
events {
    worker_connections 64;
    accept_mutex off;
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
        listen 127.0.0.1:$port reuseport;
        location /c {
            optout_cache_test;
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
        exec $NGINX, '-p', "$P/", '-c', 'conf/nginx.conf', @args
            or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    return ($? >> 8, defined $out ? $out : '');
}

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

sub start {
    my ($cache) = @_;
    write_conf($cache);
    unlink "$P/logs/nginx.pid";
    my ($rc, $out) = run();
    is($rc, 0, 'nginx starts') or diag $out;
    my $deadline = time + 5;
    until (-s "$P/logs/nginx.pid" || time > $deadline) { sleep 0.02 }
    open my $pf, '<', "$P/logs/nginx.pid" or BAIL_OUT('no pid file');
    ($master) = (<$pf> || '') =~ /(\d+)/;
    close $pf;
    $deadline = time + 5;
    until (children() == 2 || time > $deadline) { sleep 0.02 }
    is(scalar(my @c = children()), 2, '2 workers');
}

sub stop {
    return unless $master;
    kill 'QUIT', $master;
    my $deadline = time + 10;
    while (kill(0, $master) && time < $deadline) { sleep 0.05 }
    ok(!kill(0, $master), 'nginx stopped');
    $master = undef;
}

sub reload {
    my ($cache) = @_;
    my @old = children();
    write_conf($cache);
    my ($rc, $out) = run('-s', 'reload');
    is($rc, 0, 'reload signalled') or diag $out;
    ok(workers_replaced(@old), 'reload: new workers');
}

# body of /c?ARGS without " pid=N", and the pid
sub req {
    my ($args) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $port, Timeout => 5)
        or return ('no connection', 0);
    print $s "GET /c?$args HTTP/1.0\r\nHost: x\r\n\r\n";
    local $/;
    my $r = <$s>;
    close $s;
    return ('no response', 0) unless defined $r;
    return ("bad response: $r", 0)
        unless $r =~ m{\r\n\r\n(.*) pid=(\d+)\n\z}s;
    return ($1, $2);
}

sub r { (req(@_))[0] }

my $K1 = 'optout:' . ('a' x 32);
my $K2 = 'optout:' . ('b' x 32);
my $K3 = 'optout:' . ('c' x 32);
my $K4 = 'optout:' . ('d' x 32);
my $K5 = 'optout:' . ('e' x 32);

# ------------------------------------------------------------ basics

start('optout_cache zone=c:1m blocked=1h allowed=1s;');

is(r("op=get&key=$K1"), 'AGAIN', 'miss');
is(r("op=put&key=$K1&c=5"), 'done', 'put');
is(r("op=get&key=$K1"), 'OK 5', 'hit');
r("op=put&key=$K1&c=7");
is(r("op=get&key=$K1"), 'OK 5', 'the first rule is kept');
r("op=absent&key=$K1");
is(r("op=get&key=$K1"), 'OK 5', 'absent does not replace a rule');
r("op=del&key=$K1");
is(r("op=get&key=$K1"), 'AGAIN', 'removed');
r("op=del&key=$K1");
is(r("op=get&key=$K1"), 'AGAIN', 'removed twice');

r("op=absent&key=$K2");
is(r("op=get&key=$K2"), 'DECLINED', 'absent');
r("op=put&key=$K2&c=9");
is(r("op=get&key=$K2"), 'OK 9', 'a rule replaces absent');

r("op=absent&key=$K3");
is(r("op=get&key=$K3"), 'DECLINED', 'absent before expiry');
sleep 1.3;
is(r("op=get&key=$K3"), 'AGAIN', 'absent expired');
is(r("op=get&key=$K2"), 'OK 9', 'rule not expired');

my $long = 'optout:' . ('f' x 90);
r("op=put&key=$long&c=3");
is(r("op=get&key=$long"), 'AGAIN', 'key longer than the maximum ignored');
r('op=put&key=&c=3');
is(r('op=get&key='), 'AGAIN', 'empty key ignored');

# both workers see what one put
{
    r("op=put&key=$K4&c=4");
    my (%pid, %ans);
    for (1 .. 60) {
        my ($a, $pid) = req("op=get&key=$K4");
        $pid{$pid}++;
        $ans{$a}++;
    }
    is_deeply([keys %ans], ['OK 4'], 'hit in all workers');
    SKIP: {
        skip 'all requests went to one worker', 1 if keys %pid < 2;
        is(scalar keys %pid, 2, 'both workers answered');
    }
}

# ------------------------------------------------------------ reload

reload('optout_cache zone=c:1m blocked=1h allowed=1s;');
is(r("op=get&key=$K2"), 'OK 9', 'rule kept across a reload');
is(r("op=get&key=$K4"), 'OK 4', 'other rule kept across a reload');
is(r("op=get&key=$K1"), 'AGAIN', 'removed entry still absent');

reload('optout_cache zone=c:1m blocked=1s;');
r("op=absent&key=$K5");
is(r("op=get&key=$K5"), 'AGAIN', 'allowed=0: absent not kept');
is(r("op=get&key=$K2"), 'OK 9', 'rule kept, ttl shortened by the reload');
sleep 1.3;
is(r("op=get&key=$K2"), 'AGAIN', 'rule expired after the new ttl');

reload('optout_cache zone=c:2m blocked=1h allowed=1h;');
is(r("op=get&key=$K4"), 'AGAIN', 'a new zone size starts empty');

# ------------------------------------------------------------ eviction

reload('optout_cache zone=e:32k blocked=1h allowed=1h;');
is(r('op=fill&n=3000'), 'done 3000', '3000 puts into a 32k zone');
my $n = r('op=count&n=3000');
like($n, qr/^count \d+$/, 'count');
my ($kept) = $n =~ /(\d+)/;
ok($kept > 20 && $kept < 3000, "some entries kept ($kept)");
{
    # the most recent entries are the ones kept
    my $recent = 'optout:fill' . sprintf('%028d', 2998);
    is(r("op=get&key=$recent"), 'OK 2998', 'most recent entry kept');
    my $old = 'optout:fill' . sprintf('%028d', 0);
    is(r("op=get&key=$old"), 'AGAIN', 'oldest entry evicted');
}

stop();

open my $log, '<', "$P/logs/error.log" or die "error.log: $!";
my @log = <$log>;
close $log;
my @bad = grep { /\[(alert|crit|emerg)\]/ } @log;
is(scalar @bad, 0, 'no alert, crit or emerg in error.log') or diag @bad;
my @nomem = grep { /could not allocate/ } @log;
is(scalar @nomem, 0, 'eviction made room every time') or diag @nomem;

END {
    if ($master && kill 0, $master) {
        kill 'TERM', $master;
        sleep 0.5;
        kill 'KILL', $master if kill 0, $master;
    }
}

done_testing();

__DATA__

/* test only: a location that calls the optout_cache functions */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_optout_module.h"


static char *ngx_http_oct(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);


static ngx_command_t  ngx_http_oct_commands[] = {

    { ngx_string("optout_cache_test"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_oct,
      0,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_oct_module_ctx = {
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
};


ngx_module_t  ngx_http_optout_cache_test_module = {
    NGX_MODULE_V1,
    &ngx_http_oct_module_ctx,
    ngx_http_oct_commands,
    NGX_HTTP_MODULE,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NGX_MODULE_V1_PADDING
};


ngx_module_t *ngx_modules[] = {
    &ngx_http_optout_cache_test_module,
    NULL
};

char *ngx_module_names[] = {
    "ngx_http_optout_cache_test_module",
    NULL
};

char *ngx_module_order[] = {
    NULL
};


static ngx_int_t
ngx_http_oct_handler(ngx_http_request_t *r)
{
    u_char                       *p, *last, key[128];
    size_t                        len;
    ngx_int_t                     rc, n, i;
    ngx_str_t                     op, k, c, num;
    ngx_buf_t                    *b;
    ngx_chain_t                   out;
    optout_rule_t                 rule;
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (omcf->cache == NULL
        || ngx_http_arg(r, (u_char *) "op", 2, &op) != NGX_OK)
    {
        return NGX_HTTP_BAD_REQUEST;
    }

    if (ngx_http_arg(r, (u_char *) "key", 3, &k) != NGX_OK) {
        ngx_str_set(&k, "");
    }

    if (ngx_http_arg(r, (u_char *) "c", 1, &c) != NGX_OK) {
        ngx_str_set(&c, "1");
    }

    if (ngx_http_arg(r, (u_char *) "n", 1, &num) != NGX_OK) {
        ngx_str_set(&num, "0");
    }

    b = ngx_create_temp_buf(r->pool, 256);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    ngx_memzero(&rule, sizeof(optout_rule_t));
    rule.campaign = ngx_atoi(c.data, c.len);
    rule.time = 1700000000;
    rule.source = OPTOUT_SOURCE_LINK;
    rule.key_id = 1;

    if (op.len == 3 && ngx_strncmp(op.data, "get", 3) == 0) {
        rc = ngx_http_optout_cache_get(omcf->cache, k.data, k.len, &rule);

        if (rc == NGX_OK) {
            p = ngx_slprintf(p, last, "OK %uL", rule.campaign);

        } else if (rc == NGX_DECLINED) {
            p = ngx_slprintf(p, last, "DECLINED");

        } else if (rc == NGX_AGAIN) {
            p = ngx_slprintf(p, last, "AGAIN");

        } else {
            p = ngx_slprintf(p, last, "rc %i", rc);
        }

    } else if (op.len == 3 && ngx_strncmp(op.data, "put", 3) == 0) {
        ngx_http_optout_cache_put(omcf->cache, k.data, k.len, &rule);
        p = ngx_slprintf(p, last, "done");

    } else if (op.len == 6 && ngx_strncmp(op.data, "absent", 6) == 0) {
        ngx_http_optout_cache_put(omcf->cache, k.data, k.len, NULL);
        p = ngx_slprintf(p, last, "done");

    } else if (op.len == 3 && ngx_strncmp(op.data, "del", 3) == 0) {
        ngx_http_optout_cache_remove(omcf->cache, k.data, k.len);
        p = ngx_slprintf(p, last, "done");

    } else if (op.len == 4 && ngx_strncmp(op.data, "fill", 4) == 0) {
        n = ngx_atoi(num.data, num.len);

        for (i = 0; i < n; i++) {
            len = ngx_sprintf(key, "optout:fill%028i", i) - key;
            rule.campaign = i;
            ngx_http_optout_cache_put(omcf->cache, key, len,
                                      (i % 2) ? NULL : &rule);
        }

        p = ngx_slprintf(p, last, "done %i", n);

    } else if (op.len == 5 && ngx_strncmp(op.data, "count", 5) == 0) {
        n = ngx_atoi(num.data, num.len);
        rc = 0;

        for (i = 0; i < n; i++) {
            len = ngx_sprintf(key, "optout:fill%028i", i) - key;

            if (ngx_http_optout_cache_get(omcf->cache, key, len, &rule)
                != NGX_AGAIN)
            {
                rc++;
            }
        }

        p = ngx_slprintf(p, last, "count %i", rc);

    } else {
        return NGX_HTTP_BAD_REQUEST;
    }

    p = ngx_slprintf(p, last, " pid=%P\n", ngx_pid);

    b->last = p;
    b->last_buf = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static char *
ngx_http_oct(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_oct_handler;

    return NGX_CONF_OK;
}
