package OptoutTest;

# Small integration test harness for ngx_http_optout_module: runs a real
# nginx (/usr/sbin/nginx, daemon on) and a real memcached in a temporary
# prefix, speaks HTTP and the memcached text protocol over raw sockets, and
# mints tokens / store keys in pure Perl (independently of the C code).
#
#   use FindBin; use lib "$FindBin::Bin/lib";
#   use OptoutTest;
#   my $t = OptoutTest->new(workers => 1);
#   $t->memcached_start;
#   my $k = $t->key('k1');
#   $t->write_conf(<<'EOF');
#       optout_store "--SERVER=127.0.0.1:%%MC%%";
#       ...
#   EOF
#   $t->start;
#   my $r = $t->get('/u/' . $token);
#   ...
#   $t->stop;
#   ok($t->error_log_clean, 'no alert/crit/emerg in error.log');
#   done_testing;
#
# Environment: OPTOUT_TEST_KEEP=1 keeps the prefix directory,
# NGINX_BINARY overrides /usr/sbin/nginx, MEMCACHED_BINARY /usr/bin/memcached.

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::SHA qw(hmac_sha256);
use Errno qw(EINTR EAGAIN EWOULDBLOCK);
use File::Basename qw(dirname);
use File::Spec;
use File::Temp ();
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use MIME::Base64 qw(encode_base64 decode_base64);
use POSIX qw(:sys_wait_h);
use Scalar::Util qw(weaken refaddr);
use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More ();
use Time::HiRes qw(time sleep);

our $NGINX     = $ENV{NGINX_BINARY}     || '/usr/sbin/nginx';
our $MEMCACHED = $ENV{MEMCACHED_BINARY} || '/usr/bin/memcached';

my %LIVE;          # refaddr => weak ref, for END cleanup
my $JSON = JSON::PP->new->utf8->allow_nonref;

# repository root: t/lib/OptoutTest.pm -> ../..
our $ROOT = abs_path(File::Spec->catdir(dirname(abs_path(__FILE__)),
                                        '..', '..'));


sub new {
    my ($class, %opt) = @_;

    my $keep = $ENV{OPTOUT_TEST_KEEP} ? 1 : 0;
    my $dir = File::Temp->newdir('optout-t-XXXXXX', TMPDIR => 1,
                                 CLEANUP => !$keep);

    my $self = bless {
        root     => $ROOT,
        dir      => $dir,               # File::Temp object (cleanup)
        prefix   => "$dir",
        workers  => $opt{workers} || 1,
        ports    => {},
        owner    => $$,
        keys     => {},
        mc_pid   => undef,
        mc_port  => undef,
    }, $class;

    # nginx workers run as "nobody" when the tests run as root
    chmod 0755, $self->{prefix};
    for my $d (qw(logs conf)) {
        mkdir "$self->{prefix}/$d" or die "mkdir $d: $!";
        chmod 0755, "$self->{prefix}/$d";
    }

    Test::More::diag("prefix kept in $self->{prefix}") if $keep;

    $self->{ports}{nginx} = _free_port();
    $LIVE{refaddr $self} = $self;
    weaken $LIVE{refaddr $self};

    return $self;
}


# ---------------------------------------------------------------- misc

sub root   { $_[0]{root} }
sub prefix { $_[0]{prefix} }

sub path {
    my ($self, $rel) = @_;
    return $rel =~ m{^/} ? $rel : "$self->{prefix}/$rel";
}

sub module_path {
    return "$ROOT/build/ngx_http_optout_module.so";
}

sub module_built {
    return -f module_path();
}

sub ctl_path {
    return "$ROOT/build/optoutctl";
}

# skip the whole file (plan skip_all) unless the module is built
sub require_module {
    my ($class) = @_;
    unless (module_built()) {
        Test::More::plan(skip_all => 'build/ngx_http_optout_module.so '
                                     . 'is not built (make module)');
    }
}

sub _free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp',
                                      ReuseAddr => 0)
            or next;
        my $p = $s->sockport;
        close $s;
        # avoid handing the same port twice in one process
        next if $OptoutTest::_given{$p}++;
        return $p;
    }
    die "no free port";
}

sub port {
    my ($self, $name) = @_;
    $name = 'nginx' unless defined $name;
    $self->{ports}{$name} //= _free_port();
    return $self->{ports}{$name};
}

sub write_file {
    my ($self, $name, $content, $mode) = @_;
    my $path = $self->path($name);
    open my $fh, '>', $path or die "open $path: $!";
    binmode $fh;
    print $fh $content;
    close $fh or die "close $path: $!";
    chmod(defined $mode ? $mode : 0644, $path);
    return $path;
}

sub read_file {
    my ($self, $name) = @_;
    my $path = $self->path($name);
    open my $fh, '<', $path or return undef;
    binmode $fh;
    local $/;
    my $c = <$fh>;
    close $fh;
    return defined $c ? $c : '';
}

# a 64-hex-char key + "\n", mode 0600; the key bytes are the 64 ASCII chars
sub key {
    my ($self, $name, $id) = @_;
    my $hex = $self->{keys}{$name}{hex};
    unless (defined $hex) {
        $hex = join '', map { sprintf '%02x', int rand 256 } 1 .. 32;
        open my $u, '<', '/dev/urandom';
        if ($u) {
            my $b;
            if (read($u, $b, 32) == 32) {
                $hex = unpack 'H*', $b;
            }
            close $u;
        }
    }
    my $path = $self->path("$name.key");
    $self->write_file("$name.key", "$hex\n", 0600);
    $self->{keys}{$name} = { hex => $hex, path => $path, id => $id };
    return $path;
}

sub key_bytes {
    my ($self, $name) = @_;
    die "no key $name" unless $self->{keys}{$name};
    return $self->{keys}{$name}{hex};
}


# ---------------------------------------------------------------- memcached

sub mc_port {
    my ($self) = @_;
    $self->{mc_port} //= _free_port();
    return $self->{mc_port};
}

sub memcached_start {
    my ($self, @extra) = @_;
    my $port = $self->mc_port;

    die "memcached already running" if $self->{mc_pid};

    my @cmd = ($MEMCACHED, '-l', '127.0.0.1', '-p', $port, '-U', '0',
               '-m', '64', '-c', '4096', '-t', '2', @extra);
    push @cmd, '-u', 'nobody' if $> == 0;

    my $log = $self->path('logs/memcached.log');
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', $log;
        open STDERR, '>&', \*STDOUT;
        exec @cmd or POSIX::_exit(127);
    }
    $self->{mc_pid} = $pid;
    $self->{mc_frozen} = 0;

    my $deadline = time + 5;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            $self->{mc_pid} = undef;
            die "memcached exited at start: " . ($self->read_file($log) // '');
        }
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Timeout => 1);
        if ($s) {
            close $s;
            return $pid;
        }
        sleep 0.02;
    }
    die "memcached did not start on port $port";
}

sub memcached_stop {
    my ($self) = @_;
    my $pid = $self->{mc_pid} or return;
    kill 'CONT', $pid if $self->{mc_frozen};
    kill 'TERM', $pid;
    my $deadline = time + 5;
    while (time < $deadline) {
        my $r = waitpid($pid, WNOHANG);
        last if $r == $pid || $r == -1;
        sleep 0.02;
    }
    if (kill 0, $pid) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    $self->{mc_pid} = undef;
    $self->{mc_frozen} = 0;

    # wait until the port refuses connections
    my $deadline2 = time + 2;
    while (time < $deadline2) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $self->mc_port,
                                      Timeout => 0.5);
        last unless $s;
        close $s;
        sleep 0.02;
    }
}

sub memcached_freeze {
    my ($self) = @_;
    my $pid = $self->{mc_pid} or die "memcached not running";
    kill 'STOP', $pid;
    $self->{mc_frozen} = 1;
    $self->memcached_stopped or die "memcached did not stop";
}

# SIGSTOP is delivered asynchronously: true once every memcached thread is
# stopped, so that a request sent after the freeze meets a frozen server
sub memcached_stopped {
    my ($self) = @_;
    my $pid = $self->{mc_pid} or return 0;
    my $deadline = time + 3;
    while (time < $deadline) {
        my @st;
        for my $f (glob "/proc/$pid/task/*/stat") {
            open my $fh, '<', $f or next;
            my $l = <$fh> // '';
            close $fh;
            push @st, $l =~ /\)\s+(\S)/ ? $1 : '?';
        }
        return 1 if @st && !grep { $_ ne 'T' && $_ ne 't' } @st;
        sleep 0.005;
    }
    return 0;
}

sub memcached_thaw {
    my ($self) = @_;
    my $pid = $self->{mc_pid} or die "memcached not running";
    kill 'CONT', $pid;
    $self->{mc_frozen} = 0;
}

sub memcached_restart {
    my ($self) = @_;
    $self->memcached_stop;
    $self->memcached_start;
}

sub _mc_connect {
    my ($self) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->mc_port,
                                  Proto => 'tcp', Timeout => 2);
    return $s;
}

sub _read_until {
    my ($sock, $buf_ref, $re, $deadline) = @_;
    my $sel = IO::Select->new($sock);
    while ($$buf_ref !~ $re) {
        my $left = $deadline - time;
        return 0 if $left <= 0;
        next unless $sel->can_read($left);
        my $n = sysread($sock, $$buf_ref, 65536, length $$buf_ref);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            return 0;
        }
        return 0 if $n == 0 && $$buf_ref !~ $re;
    }
    return 1;
}

# raw command; returns the full reply up to the terminator regexp, or undef
sub mc_raw {
    my ($self, $cmd, $term) = @_;
    $term ||= qr/(?:^|\r\n)(?:END|STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|OK|ERROR|CLIENT_ERROR[^\r]*|SERVER_ERROR[^\r]*)\r\n\z/;
    my $s = $self->_mc_connect or do { $self->{mc_error} = "connect: $!";
                                       return undef };
    my $deadline = time + 2;
    my $ok = eval {
        local $SIG{PIPE} = 'IGNORE';
        print {$s} $cmd or die "write: $!";
        1;
    };
    unless ($ok) { $self->{mc_error} = $@; return undef }
    my $buf = '';
    unless (_read_until($s, \$buf, $term, $deadline)) {
        $self->{mc_error} = "timeout or eof, got: $buf";
        close $s;
        return undef;
    }
    close $s;
    return $buf;
}

sub mc_get {
    my ($self, $key) = @_;
    my $r = $self->mc_get_multi($key);
    return undef unless $r;
    return $r->{$key};
}

# returns { key => value } for the keys found, undef on connection error
sub mc_get_multi {
    my ($self, @keys) = @_;
    my %out;
    while (my @batch = splice @keys, 0, 100) {
        my $reply = $self->mc_raw("get @batch\r\n", qr/(?:^|\r\n)END\r\n\z/);
        return undef unless defined $reply;
        while ($reply =~ /\GVALUE (\S+) \d+ (\d+)\r\n/gc) {
            my ($k, $len) = ($1, $2);
            my $pos = pos $reply;
            $out{$k} = substr $reply, $pos, $len;
            pos($reply) = $pos + $len + 2;
        }
    }
    return \%out;
}

sub mc_set {
    my ($self, $key, $value, $exptime) = @_;
    $exptime ||= 0;
    my $r = $self->mc_raw(sprintf("set %s 0 %d %d\r\n%s\r\n", $key,
                                  $exptime, length $value, $value));
    return defined $r && $r =~ /^STORED/;
}

sub mc_delete {
    my ($self, $key) = @_;
    my $r = $self->mc_raw("delete $key\r\n");
    return defined $r && $r =~ /^DELETED/;
}

sub mc_flush {
    my ($self) = @_;
    my $r = $self->mc_raw("flush_all\r\n");
    return defined $r && $r =~ /^OK/;
}

sub mc_stats {
    my ($self) = @_;
    my $r = $self->mc_raw("stats\r\n", qr/(?:^|\r\n)END\r\n\z/);
    return undef unless defined $r;
    my %st = $r =~ /^STAT (\S+) (\S*)\r$/mg;
    return \%st;
}

# number of items currently stored
sub mc_items {
    my ($self) = @_;
    my $st = $self->mc_stats or return undef;
    return $st->{curr_items};
}


# ---------------------------------------------------------------- config

sub write_conf {
    my ($self, $body, %opt) = @_;
    my $p = $self->{prefix};
    my $workers = $opt{workers} || $self->{workers};
    $self->{workers} = $workers;

    my $conf = '';
    $conf .= "load_module $ROOT/build/ngx_http_optout_module.so;\n"
        unless $opt{stock};
    $conf .= <<"EOF";
worker_processes $workers;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;
EOF
    $conf .= "$opt{thread_pool}\n" if $opt{thread_pool};
    $conf .= "$opt{main}\n" if defined $opt{main};
    $conf .= <<"EOF";
events {
    worker_connections 1024;
}

http {
    access_log logs/access.log;
    client_body_temp_path $p/client_body_temp;
    proxy_temp_path $p/proxy_temp;
    fastcgi_temp_path $p/fastcgi_temp;
    uwsgi_temp_path $p/uwsgi_temp;
    scgi_temp_path $p/scgi_temp;

$body
}
EOF
    $conf = $self->subst($conf);
    $self->{conf} = $conf;
    $self->write_file('conf/nginx.conf', $conf, 0644);
    return $conf;
}

sub subst {
    my ($self, $text) = @_;
    $text =~ s/%%PORT%%/$self->port('nginx')/ge;
    $text =~ s/%%PORT:(\w+)%%/$self->port($1)/ge;
    $text =~ s/%%MC%%/$self->mc_port/ge;
    $text =~ s/%%PREFIX%%/$self->{prefix}/g;
    $text =~ s/%%ROOT%%/$ROOT/g;
    return $text;
}

sub _nginx_cmd {
    my ($self, @args) = @_;
    return ($NGINX, '-p', "$self->{prefix}/", '-c', 'conf/nginx.conf',
            @args);
}

sub _run {
    my ($self, @cmd) = @_;
    my $pid = open(my $fh, '-|');
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDERR, '>&', \*STDOUT;
        open STDIN, '<', '/dev/null';
        exec @cmd or POSIX::_exit(127);
    }
    local $/;
    my $out = <$fh>;
    close $fh;
    my $rc = $? >> 8;
    $rc = 128 + ($? & 127) if $? & 127;
    return ($rc, defined $out ? $out : '');
}

# (exit code, output) of nginx -t
sub nginx_test {
    my ($self) = @_;
    return $self->_run($self->_nginx_cmd('-t'));
}

# ---------------------------------------------------------------- processes

sub _alive {
    my ($pid) = @_;
    return 0 unless $pid;
    return 0 unless kill 0, $pid;
    # a zombie (not reaped by init) counts as gone
    if (open my $fh, '<', "/proc/$pid/stat") {
        my $st = <$fh>;
        close $fh;
        return 0 if defined $st && $st =~ /\) Z /;
    }
    return 1;
}

sub nginx_pid {
    my ($self) = @_;
    my $c = $self->read_file('logs/nginx.pid');
    return undef unless defined $c && $c =~ /(\d+)/;
    return $1;
}

# live (non-zombie) children of the nginx master
sub worker_pids {
    my ($self) = @_;
    my $master = $self->{nginx_pid} || $self->nginx_pid or return ();
    my @pids;
    opendir my $d, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $d) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh>;
        close $fh;
        next unless defined $st;
        # pid (comm) state ppid ...
        next unless $st =~ /\)\s+(\S)\s+(\d+)/;
        next if $1 eq 'Z' || $1 eq 'X';
        push @pids, $p if $2 == $master;
    }
    closedir $d;
    # remember them: should the master die, stop() kills the orphans
    $self->{seen_workers}{$_} = 1 for @pids;
    @pids = sort { $a <=> $b } @pids;
    return @pids;
}

sub _wait_port {
    my ($self, $port, $secs) = @_;
    my $deadline = time + ($secs || 5);
    while (time < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Timeout => 1);
        if ($s) { close $s; return 1 }
        sleep 0.02;
    }
    return 0;
}

# start nginx; on failure fail the test with the output and end the file
# (unless may_fail => 1, then just return 0)
sub start {
    my ($self, %opt) = @_;
    die "nginx already running" if $self->{nginx_pid}
                                   && _alive($self->{nginx_pid});
    unlink $self->path('logs/nginx.pid');
    my ($rc, $out) = $self->_run($self->_nginx_cmd());
    my $ok = $rc == 0;
    my $pid;
    if ($ok) {
        my $deadline = time + 5;
        until ($pid = $self->nginx_pid) {
            last if time > $deadline;
            sleep 0.02;
        }
        $ok = $pid && _alive($pid);
    }
    if ($ok) {
        $self->{nginx_pid} = $pid;
        $ok = $self->_wait_port($self->port('nginx'), 5);
        # wait for all workers
        my $deadline = time + 5;
        while ($ok && time < $deadline) {
            my @w = $self->worker_pids;
            last if @w >= $self->{workers};
            sleep 0.02;
        }
    }
    return 1 if $ok;

    return 0 if $opt{may_fail};
    Test::More::fail('nginx started');
    Test::More::diag("nginx exit code $rc, output:\n$out");
    Test::More::diag("error.log:\n" . ($self->error_log // ''));
    $self->cleanup;
    Test::More::done_testing();
    exit 1;
}

sub signal {
    my ($self, $sig) = @_;
    return $self->_run($self->_nginx_cmd('-s', $sig));
}

# reload and wait until the old workers are gone (up to 5 s, or $secs);
# returns true when the reload was complete
sub reload {
    my ($self, $secs) = @_;
    my %old = map { $_ => 1 } $self->worker_pids;
    my ($rc, $out) = $self->signal('reload');
    if ($rc != 0) {
        Test::More::diag("nginx -s reload: exit $rc: $out");
        return 0;
    }
    my $deadline = time + ($secs || 5);
    my $master = $self->{nginx_pid};
    while (time < $deadline) {
        if (!_alive($master)) {
            Test::More::diag("reload: the nginx master $master is gone");
            return 0;
        }
        my @now = $self->worker_pids;
        my @still = grep { $old{$_} } @now;
        my @new = grep { !$old{$_} } @now;
        return 1 if !@still && @new >= $self->{workers};
        sleep 0.02;
    }
    Test::More::diag('reload: old workers still running after '
                     . ($secs || 5) . ' s');
    return 0;
}

sub reopen {
    my ($self) = @_;
    my ($rc, $out) = $self->signal('reopen');
    Test::More::diag("nginx -s reopen: exit $rc: $out") if $rc;
    # give the master time to signal the workers, and them to reopen
    sleep 0.3;
    return $rc == 0;
}

# a live process that still looks like an nginx worker
sub _worker_alive {
    my ($w) = @_;
    return 0 unless _alive($w);
    open my $fh, '<', "/proc/$w/cmdline" or return 0;
    my $cmd = <$fh> // '';
    close $fh;
    return $cmd =~ /^nginx: (?:worker|cache)/ ? 1 : 0;
}

sub _kill_orphans {
    my ($self) = @_;
    for my $w (keys %{ $self->{seen_workers} || {} }) {
        next unless _worker_alive($w);
        Test::More::diag("killing orphaned nginx worker $w");
        kill 'KILL', $w;
    }
    $self->{seen_workers} = {};
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{nginx_pid} || $self->nginx_pid;
    $self->worker_pids if $pid && _alive($pid);
    unless ($pid && _alive($pid)) {
        $self->_kill_orphans;
        return 1;
    }
    $self->signal('quit');
    my $deadline = time + 10;
    while (time < $deadline) {
        last unless _alive($pid);
        sleep 0.02;
    }
    if (_alive($pid)) {
        kill 'TERM', $pid;
        sleep 1;
        kill 'KILL', $pid if _alive($pid);
        for my $w ($self->worker_pids) { kill 'KILL', $w }
    }
    # give workers a moment to go, then kill what is left without a master
    my $d2 = time + 5;
    while (time < $d2) {
        last unless grep { _worker_alive($_) }
                    keys %{ $self->{seen_workers} || {} };
        sleep 0.02;
    }
    $self->_kill_orphans;
    $self->{nginx_pid} = undef;
    return 1;
}

sub cleanup {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    eval { $self->stop };
    eval { $self->memcached_stop };
    while (my $dir = pop @{ $self->{mounts} || [] }) {
        system("chattr -a '$_' 2>/dev/null") for glob "$dir/*";
        system('umount', $dir) == 0 or system('umount', '-l', $dir);
    }
}

# a tiny tmpfs of $size at PREFIX/$name, for a journal on a full disk
# (root only): its path, or undef when it cannot be mounted; unmounted
# once nginx has stopped at the end of the test
sub tmpfs {
    my ($self, $name, $size) = @_;
    return undef unless $> == 0;
    my $dir = $self->path($name);
    mkdir $dir or die "mkdir $dir: $!";
    return undef if system('mount', '-t', 'tmpfs', '-o',
                           "size=$size,mode=0755", "optout-$name", $dir) != 0;
    push @{ $self->{mounts} }, $dir;
    return $dir;
}

sub DESTROY {
    my ($self) = @_;
    $self->cleanup;
}

END {
    my $status = $?;
    for my $t (grep { defined } values %LIVE) {
        $t->cleanup;
    }
    $? = $status;
}


# ---------------------------------------------------------------- logs

sub error_log {
    my ($self) = @_;
    return $self->read_file('logs/error.log');
}

sub error_log_clean {
    my ($self, @allow) = @_;
    my $log = $self->error_log;
    unless (defined $log) {
        Test::More::diag("no error.log in $self->{prefix}/logs");
        return 0;
    }
    my @bad = grep { /\[(?:alert|crit|emerg)\]/ } split /\n/, $log;
    for my $re (@allow) {
        @bad = grep { $_ !~ $re } @bad;
    }
    Test::More::diag("error.log:\n" . join("\n", @bad)) if @bad;
    return !@bad;
}

sub access_log {
    my ($self, $name) = @_;
    return $self->read_file($name || 'logs/access.log');
}

# the lines of a log once at least $n of them match $re: nginx writes a
# request's access log line after its response, so a client that has the
# response may read the log too early (waits up to 5 s)
sub log_lines {
    my ($self, $name, $re, $n) = @_;
    my $deadline = time + 5;
    my @l;
    while (1) {
        @l = split /\n/, ($self->read_file($name) // '');
        last if scalar(grep { /$re/ } @l) >= $n || time > $deadline;
        sleep 0.05;
    }
    return @l;
}

# lines of a file (without newlines); a last line without "\n" is kept
sub file_lines {
    my ($self, $name) = @_;
    my $c = $self->read_file($name);
    return () unless defined $c && length $c;
    my @l = split /\n/, $c;
    return @l;
}

# decoded journal records; an undecodable line gives { _invalid => raw }
sub journal_lines {
    my ($self, $name) = @_;
    my @out;
    for my $line ($self->file_lines($name || 'journal.log')) {
        my $rec = eval { $JSON->decode($line) };
        push @out, (ref $rec eq 'HASH') ? $rec : { _invalid => $line };
    }
    return @out;
}

# raw journal text
sub journal_raw {
    my ($self, $name) = @_;
    return $self->read_file($name || 'journal.log') // '';
}


# ---------------------------------------------------------------- tools

sub ctl {
    my ($self, @args) = @_;
    return $self->_run(ctl_path(), @args);
}


# ---------------------------------------------------------------- HTTP

sub _connect {
    my ($self, $port, $timeout) = @_;
    return IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                 PeerPort => $port || $self->port('nginx'),
                                 Proto => 'tcp',
                                 Timeout => $timeout || 5);
}

sub _build_request {
    my ($method, $path, $body, $headers) = @_;
    my $req = "$method $path HTTP/1.1\r\n";
    my %h = (Host => 'localhost', Connection => 'close', %{$headers || {}});
    if (defined $body && !grep { lc $_ eq 'content-length' } keys %h) {
        $h{'Content-Length'} = length $body;
    }
    for my $k (sort keys %h) {
        next unless defined $h{$k};
        # an array sends the header once per value
        $req .= "$k: $_\r\n" for ref $h{$k} ? @{$h{$k}} : $h{$k};
    }
    $req .= "\r\n";
    $req .= $body if defined $body;
    return $req;
}

# send a request and return the socket without waiting for the answer
sub send_request {
    my ($self, $method, $path, $body, %headers) = @_;
    my $port = delete $headers{_port};
    my $s = $self->_connect($port) or return undef;
    local $SIG{PIPE} = 'IGNORE';
    my $req = _build_request($method, $path, $body, \%headers);
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite($s, $req, length($req) - $off, $off);
        return undef unless defined $n;
        $off += $n;
    }
    return $s;
}

sub _parse_response {
    my ($raw, $method) = @_;
    my $r = { raw => $raw, headers => {}, content => '' };
    my $i = index $raw, "\r\n\r\n";
    if ($i < 0 || $raw !~ m{^HTTP/1\.[01] (\d{3})}) {
        $r->{status} = 599;
        $r->{error} = 'malformed response';
        $r->{phase} = 'parse';
        return $r;
    }
    $r->{status} = $1;
    my $head = substr $raw, 0, $i;
    my $body = substr $raw, $i + 4;
    my @lines = split /\r\n/, $head;
    ($r->{status_line}) = shift @lines;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $k = lc $k;
        if (exists $r->{headers}{$k}) {
            $r->{headers}{$k} = [ ref $r->{headers}{$k}
                                  ? @{ $r->{headers}{$k} }
                                  : $r->{headers}{$k}, $v ];
        } else {
            $r->{headers}{$k} = $v;
        }
    }
    if (($r->{headers}{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $out .= substr $body, 0, $n;
            substr($body, 0, $n + 2) = '';
        }
        $body = $out;
    }
    $r->{content} = (defined $method && $method eq 'HEAD') ? '' : $body;
    $r->{body_bytes_received} = length $body;
    $r->{success} = $r->{status} =~ /^2/ ? 1 : 0;
    return $r;
}

# read a complete response (the server closes the connection)
sub read_response {
    my ($self, $s, $timeout, $method) = @_;
    my $deadline = time + ($timeout || 10);
    my $sel = IO::Select->new($s);
    my $buf = '';
    my $err;
    while (1) {
        my $left = $deadline - time;
        if ($left <= 0) { $err = 'timeout'; last }
        next unless $sel->can_read($left);
        my $n = sysread($s, $buf, 65536, length $buf);
        if (!defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            $err = "read: $!";
            last;
        }
        last if $n == 0;
    }
    close $s;
    if (!length $buf) {
        return { status => 599, error => $err || 'connection closed',
                 phase => 'read', bytes => 0, headers => {},
                 content => '' };
    }
    my $r = _parse_response($buf, $method);
    if ($err) {
        $r->{error} = $err;
        $r->{incomplete} = 1;
    }
    $r->{bytes} = length $buf;
    return $r;
}

# request($method, $path, body => ..., headers => {...}, timeout => secs)
# returns { status, headers (lowercase names), content, error, phase }
# status 599 with phase connect / send / read when no response arrived
sub request {
    my ($self, $method, $path, %opt) = @_;
    my $s = $self->_connect($opt{port}, $opt{timeout});
    unless ($s) {
        return { status => 599, error => "connect: $!", phase => 'connect',
                 bytes => 0, headers => {}, content => '',
                 errno => $! + 0 };
    }
    local $SIG{PIPE} = 'IGNORE';
    my $req = _build_request($method, $path, $opt{body}, $opt{headers});
    my $off = 0;
    while ($off < length $req) {
        my $n = syswrite($s, $req, length($req) - $off, $off);
        unless (defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            my $e = "$!";
            # the server may have answered already (e.g. 405 before body)
            my $r = $self->read_response($s, 1, $method);
            return $r if $r->{status} != 599;
            return { status => 599, error => "send: $e", phase => 'send',
                     bytes => 0, headers => {}, content => '' };
        }
        $off += $n;
    }
    return $self->read_response($s, $opt{timeout} || 10, $method);
}

sub get {
    my ($self, $path, %headers) = @_;
    return $self->request('GET', $path, headers => \%headers);
}

sub head {
    my ($self, $path, %headers) = @_;
    return $self->request('HEAD', $path, headers => \%headers);
}

sub post {
    my ($self, $path, $body, %headers) = @_;
    $body = '' unless defined $body;
    $headers{'Content-Type'} //= 'application/x-www-form-urlencoded'
        if length $body;
    return $self->request('POST', $path, body => $body,
                          headers => \%headers);
}

# RFC 8058 one-click bodies
sub post_one_click {
    my ($self, $path) = @_;
    return $self->post($path, 'List-Unsubscribe=One-Click',
                       'Content-Type' => 'application/x-www-form-urlencoded');
}

sub post_one_click_multipart {
    my ($self, $path) = @_;
    my $b = '----optouttest' . int(rand 1e9);
    my $body = "--$b\r\n"
        . "Content-Disposition: form-data; name=\"List-Unsubscribe\"\r\n"
        . "\r\n"
        . "One-Click\r\n"
        . "--$b--\r\n";
    return $self->post($path, $body,
                       'Content-Type' => "multipart/form-data; boundary=$b");
}


# ---------------------------------------------------------------- parallel

# run $code->($i) in $n forked children; each returns a hashref (JSON
# serializable); returns the list of results in order of $i.  Children
# leave with POSIX::_exit so that no END block (nor Test::More) runs there.
# $during, if given, runs in the parent while the children run.
sub run_parallel {
    my ($n, $code, $during) = @_;
    my @kids;
    for my $i (0 .. $n - 1) {
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            close $r;
            my $res = eval { $code->($i) };
            $res = { error => "$@" } if $@;
            print {$w} $JSON->encode($res);
            close $w;
            POSIX::_exit(0);
        }
        close $w;
        push @kids, [$pid, $r];
    }
    $during->() if $during;
    my @res;
    for my $k (@kids) {
        my ($pid, $r) = @$k;
        local $/;
        my $data = <$r>;
        close $r;
        waitpid $pid, 0;
        push @res, eval { $JSON->decode($data) } || { error => 'no result' };
    }
    return @res;
}


# ---------------------------------------------------------------- setup

# the usual http{} body for the module; options:
#   keys => [[id, name], ...] (first listed signs; default [[1, 'k1']]),
#   store_secret => name (default 'store'), prefix => STRING,
#   journal => file (default 'journal.log'), store_timeout => TIME,
#   ns => VALUE, http => extra http text, server => extra server text,
#   listen => extra listen parameters (e.g. 'reuseport'),
#   omit => { directive => 1 } to leave a directive out
sub optout_http {
    my ($self, %o) = @_;
    my @keys = @{ $o{keys} || [[1, 'k1']] };
    my $ss = $o{store_secret} || 'store';
    my $journal = $self->path($o{journal} || 'journal.log');
    my %omit = %{ $o{omit} || {} };
    my $c = '';
    $c .= "    log_format optout '\$request_method \$status "
        . "r=\$optout_result d=\$optout_destination c=\$optout_campaign "
        . "s=\$optout_scope snd=\$optout_sender k=\$optout_key_id "
        . "u=\$uri';\n";
    $c .= "    optout_store \"--SERVER=127.0.0.1:%%MC%%\";\n"
        unless $omit{optout_store};
    $c .= "    optout_store_secret %%PREFIX%%/$ss.key;\n"
        unless $omit{optout_store_secret};
    $c .= "    optout_store_prefix $o{prefix};\n" if defined $o{prefix};
    $c .= "    optout_store_timeout $o{store_timeout};\n"
        if defined $o{store_timeout};
    unless ($omit{optout_secret}) {
        $c .= "    optout_secret $_->[0] %%PREFIX%%/$_->[1].key;\n"
            for @keys;
    }
    $c .= "    optout_journal $journal;\n" unless $omit{optout_journal};
    $c .= "    optout_namespace $o{ns};\n" if defined $o{ns};
    $c .= "    $o{http}\n" if defined $o{http};
    my $listen = defined $o{listen} ? " $o{listen}" : '';
    $c .= <<"EOF";
    server {
        listen 127.0.0.1:%%PORT%%$listen;
        access_log %%PREFIX%%/logs/optout.log optout;
        location /u/ { optout_link; }
        location /ping { return 204; }
EOF
    $c .= "        $o{server}\n" if defined $o{server};
    $c .= "    }\n";
    return $c;
}

# start memcached (unless running), create the keys, write the config and
# start nginx (unless no_start => 1); same options as optout_http plus
# workers, main, thread_pool
sub setup {
    my ($self, %o) = @_;
    $self->memcached_start unless $self->{mc_pid} || $o{no_memcached};
    my @keys = @{ $o{keys} || [[1, 'k1']] };
    for my $k (@keys) {
        $self->key($k->[1], $k->[0]) unless $self->{keys}{$k->[1]};
    }
    my $ss = $o{store_secret} || 'store';
    $self->key($ss) unless $self->{keys}{$ss};
    $self->{signer} = $keys[0][1];
    $self->{store_secret_name} = $ss;
    $self->{store_prefix} = $o{prefix};
    $self->write_conf($self->optout_http(%o), %o);
    $self->start unless $o{no_start};
    return $self;
}

# token(dest => ..., campaign => ..., sender => ..., key => name,
#       key_id => id): mint with a key created by key()/setup()
sub token {
    my ($self, %a) = @_;
    my $name = delete $a{key} || $self->{signer} || 'k1';
    my $k = $self->{keys}{$name} or die "no key $name";
    $a{key_id} //= $k->{id} // 1;
    return mint(key => $k->{hex}, %a);
}

# memcached key for dest/sender/ns under the configured store secret
sub skey {
    my ($self, %a) = @_;
    my $ss = $self->{store_secret_name} || 'store';
    $a{prefix} //= $self->{store_prefix};
    return store_key(secret => $self->{keys}{$ss}{hex}, %a);
}

# journal records for one destination (normalized)
sub journal_for {
    my ($self, $dest, $name) = @_;
    $dest = norm_dest($dest);
    return grep { ($_->{dest} // '') eq $dest }
           $self->journal_lines($name || 'journal.log');
}

sub journal_count {
    my ($self, $name) = @_;
    my @l = $self->file_lines($name || 'journal.log');
    return scalar @l;
}

# submit the first <form> of an HTML page fetched from $url: its action
# (relative to $url, empty = $url) and its input/button name=value pairs
sub submit_form {
    my ($self, $page, $url) = @_;
    my $html = ref $page ? $page->{content} : $page;
    my ($attrs, $inner) = $html =~ m{<form\b([^>]*)>(.*?)</form>}si
        or return { status => 599, error => 'no form in page',
                    headers => {}, content => '' };
    my $action = $url;
    if ($attrs =~ /\baction\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))/i) {
        my $a = $1 // $2 // $3;
        $a =~ s/&amp;/&/g;
        if (length $a) {
            if ($a =~ m{^https?://[^/]+(/.*)?$}) {
                $action = $1 // '/';
            } elsif ($a =~ m{^/}) {
                $action = $a;
            } else {
                (my $base = $url) =~ s{[^/]*$}{};
                $action = $base . $a;
            }
        }
    }
    my @pairs;
    while ($inner =~ m{<(input|button)\b([^>]*)>}sig) {
        my $tag = $2;
        my ($name) = $tag =~ /\bname\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))/i
            ? ($1 // $2 // $3) : ();
        next unless defined $name;
        my ($value) = $tag =~ /\bvalue\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))/i
            ? ($1 // $2 // $3) : ('');
        for ($name, $value) {
            s/&quot;/"/g; s/&lt;/</g; s/&gt;/>/g; s/&amp;/&/g;
        }
        push @pairs, _urlenc($name) . '=' . _urlenc($value);
    }
    my $r = $self->post($action, join('&', @pairs),
                        'Content-Type' => 'application/x-www-form-urlencoded');
    $r->{form_action} = $action;
    $r->{form_body} = join '&', @pairs;
    return $r;
}

sub _urlenc {
    my ($s) = @_;
    $s =~ s/([^A-Za-z0-9\-_.~])/sprintf '%%%02X', ord $1/ge;
    return $s;
}


# ---------------------------------------------------------------- tokens

sub b64url {
    my ($bin) = @_;
    my $s = encode_base64($bin, '');
    $s =~ tr{+/}{-_};
    $s =~ s/=+$//;
    return $s;
}

sub b64url_decode {
    my ($s) = @_;
    $s =~ tr{-_}{+/};
    $s .= '=' x ((4 - length($s) % 4) % 4);
    return decode_base64($s);
}

sub leb128 {
    my ($n) = @_;
    my $out = '';
    do {
        my $b = $n & 0x7f;
        $n >>= 7;
        $b |= 0x80 if $n;
        $out .= chr $b;
    } while ($n);
    return $out;
}

# normalized destination: +digits or a lowercased email
sub norm_dest {
    my ($dest) = @_;
    return $dest =~ /^\+/ ? $dest : lc $dest;
}

sub norm_sender {
    my ($s) = @_;
    return undef unless defined $s;
    return $s =~ /^\+/ ? $s : uc $s;
}

# payload (without tag) of a v1 token
sub token_payload {
    my (%a) = @_;
    my $dest = norm_dest($a{dest});
    my $sender = norm_sender($a{sender});
    my $type = $dest =~ /^\+/ ? 0 : 1;
    my $bin = chr(0x10 | $type | (defined $sender ? 2 : 0));
    $bin .= chr($a{key_id} // 1);
    $bin .= leb128($a{campaign} // 0);
    if ($type == 0) {
        my $n = substr $dest, 1;
        die "bad phone $dest" unless $n =~ /^\d{1,16}$/;
        $bin .= substr(pack('Q>', $n), 1, 7);
    } else {
        $bin .= chr(length $dest) . $dest;
    }
    $bin .= chr(length $sender) . $sender if defined $sender;
    return $bin;
}

# mint(key => $bytes, key_id => 1, campaign => 42, dest => '+4477...',
#      sender => undef, ns => undef): the namespace is not in the token, its
#      length byte and bytes follow the payload in the HMAC input only
sub mint {
    my (%a) = @_;
    die "mint: key required" unless defined $a{key};
    my $bin = token_payload(%a);
    my $in = $bin;
    $in .= chr(length $a{ns}) . $a{ns} if defined $a{ns} && length $a{ns};
    $bin .= substr(hmac_sha256($in, $a{key}), 0, 16);
    return b64url($bin);
}

# store_key(secret => $bytes, prefix => 'optout:', ns => '', sender => undef,
#           dest => ...)
sub store_key {
    my (%a) = @_;
    my $prefix = defined $a{prefix} ? $a{prefix} : 'optout:';
    my $ns = defined $a{ns} ? $a{ns} : '';
    my $sender = norm_sender($a{sender});
    my $scope = defined $sender ? "s$sender" : 'a';
    my $msg = "optout-store-v1\0$ns\0$scope\0" . norm_dest($a{dest});
    return $prefix . unpack('H*', substr(hmac_sha256($msg, $a{secret}),
                                         0, 16));
}

sub mask_dest {
    my ($dest) = @_;
    $dest = norm_dest($dest);
    if ($dest =~ /^\+/) {
        return substr($dest, 0, 4) . ('*' x (length($dest) - 6))
               . substr($dest, -2);
    }
    my ($local, $domain) = split /@/, $dest, 2;
    return substr($local, 0, 1) . '***@' . $domain;
}

# a distinct valid UK mobile number for index $i
sub phone {
    my ($i) = @_;
    return sprintf '+4477%08d', $i;
}


1;
