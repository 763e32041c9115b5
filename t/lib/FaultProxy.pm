package FaultProxy;

# A fault-injecting TCP proxy for the tests: a forked child listens on a
# free loopback port and relays every connection to one upstream (a
# memcached).  Requests always pass; replies pass or meet the fault the
# test has switched on.  Pure Perl, core modules only.
#
#   use FaultProxy;
#   my $p = FaultProxy->new(upstream => $mc_port);   # starts in "pass"
#   ... point the client at 127.0.0.1:$p->{port} ...
#   $p->set('cut', re => qr/VALUE optout:\w+ /, at => 'start');
#   $p->set('cut', re => qr/VALUE k \d+ \d+\r\n/, at => 'end', plus => 2,
#           how => 'reset');                  # RST in the middle of a value
#   $p->set('cut', bytes => 100);             # after 100 reply bytes
#   $p->set('stall', re => qr/.../, secs => 3);  # hold the rest 3 s
#   $p->set('stall', re => qr/.../);          # hold until the next set()
#   $p->set('swallow');                       # read requests, answer nothing
#   $p->set('pass');
#   my $n = $p->triggered;                    # faults fired since new()
#   $p->stop;                                 # also at DESTROY
#
# Modes (each reply stream of each connection, while the mode is on):
#   pass     relay both ways.
#   cut      relay the reply up to the cut point, then close the client
#            connection: how => 'close' (FIN, the default) or 'reset' (RST,
#            SO_LINGER 0); the upstream connection is closed too.
#   stall    relay up to the point, then hold the rest of the replies of
#            that connection for secs seconds (0 or none: until the next
#            set), then relay them.
#   swallow  read requests and drop them; nothing is relayed upstream.
# The point: re => a regexp matched against the reply bytes not yet
# relayed, at => 'start' or 'end' of the match (default 'start'), plus => N
# more bytes; or bytes => N reply bytes since set() on that connection.
# Until a point is found, complete replies pass and a memcached text
# protocol VALUE block that has not fully arrived is held back, so that a
# regexp sees whole VALUE blocks ("VALUE key flags len\r\ndata\r\n").
# That is the text protocol: binary replies wait there for good, so use
# bytes => N (bytes => 0 stalls or cuts a reply from its start) or swallow
# with the binary protocol.
#
# set() returns once the proxy applies the mode: requests sent after it
# meet the new mode.  Switching mode releases every stalled connection.

use strict;
use warnings;

use Errno qw(EINTR EAGAIN);
use IO::Select;
use IO::Socket::INET;
use IO::Handle;
use JSON::PP ();
use POSIX ();
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC SOL_SOCKET SO_LINGER);
use Time::HiRes qw(time);

my $JSON = JSON::PP->new->canonical;


sub new {
    my ($class, %o) = @_;

    my $listen = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                       LocalPort => 0, Proto => 'tcp',
                                       ReuseAddr => 1)
        or die "FaultProxy: listen: $!";

    socketpair(my $parent, my $child, AF_UNIX, SOCK_STREAM, PF_UNSPEC)
        or die "socketpair: $!";
    $parent->autoflush(1);
    $child->autoflush(1);

    die "FaultProxy: upstream required" unless $o{upstream};

    my $self = bless {
        port     => $listen->sockport,
        upstream => $o{upstream},
        host     => $o{host} || '127.0.0.1',
        owner    => $$,
    }, $class;

    my $pid = fork;
    die "fork: $!" unless defined $pid;

    if ($pid == 0) {
        close $parent;
        eval { $self->_run($listen, $child) };
        POSIX::_exit(0);
    }

    close $listen;
    close $child;
    $self->{pid} = $pid;
    $self->{ctl} = $parent;

    return $self;
}

sub port { $_[0]{port} }

# set($mode, %args): see the top of the file; returns the faults fired
sub set {
    my ($self, $mode, %a) = @_;
    $a{re} = "$a{re}" if defined $a{re};
    $a{mode} = $mode;
    my $ctl = $self->{ctl};
    print {$ctl} $JSON->encode(\%a), "\n";
    my $line = <$ctl>;
    die "FaultProxy: no answer from the proxy" unless defined $line;
    my $st = $JSON->decode($line);
    die "FaultProxy: $st->{error}" if $st->{error};
    return $st->{triggered};
}

sub triggered {
    my ($self) = @_;
    my $ctl = $self->{ctl};
    print {$ctl} qq({"mode":"stats"}\n);
    my $line = <$ctl>;
    die "FaultProxy: no answer from the proxy" unless defined $line;
    return $JSON->decode($line)->{triggered};
}

sub stop {
    my ($self) = @_;
    return unless $self->{pid} && $self->{owner} == $$;
    close $self->{ctl} if $self->{ctl};
    $self->{ctl} = undef;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    $self->{pid} = undef;
}

sub DESTROY { $_[0]->stop }


# ---------------------------------------------------------------- child

sub _run {
    my ($self, $listen, $ctl) = @_;

    local $SIG{PIPE} = 'IGNORE';
    $SIG{TERM} = sub { POSIX::_exit(0) };

    my $sel = IO::Select->new($listen, $ctl);
    my (%conn, $mode, $ctlbuf);        # fileno => connection

    $mode = { mode => 'pass' };
    $self->{triggered} = 0;
    $ctlbuf = '';

    for (;;) {
        my $timeout = 1;
        for my $c (values %conn) {
            next unless $c->{until};
            my $left = $c->{until} - time;
            $timeout = $left if $left < $timeout;
        }
        $timeout = 0 if $timeout < 0;

        my @ready = $sel->can_read($timeout);

        for my $fh (@ready) {
            if ($fh == $listen) {
                my $cl = $listen->accept or next;
                my $up = IO::Socket::INET->new(PeerAddr => $self->{host},
                                               PeerPort => $self->{upstream},
                                               Proto => 'tcp', Timeout => 5);
                unless ($up) { close $cl; next }
                my $c = { client => $cl, up => $up, buf => '', sent => 0 };
                $conn{fileno $cl} = $c;
                $conn{fileno $up} = $c;
                $sel->add($cl, $up);

            } elsif ($fh == $ctl) {
                my $n = sysread $ctl, $ctlbuf, 65536, length $ctlbuf;
                POSIX::_exit(0) unless $n;
                while ($ctlbuf =~ s/^([^\n]*)\n//) {
                    my $m = eval { $JSON->decode($1) } || {};
                    my %st = (triggered => $self->{triggered});
                    if ($m->{mode} && $m->{mode} ne 'stats') {
                        if (defined $m->{re}) {
                            $m->{rx} = eval { qr/$m->{re}/ };
                            $st{error} = "bad re: $@" unless $m->{rx};
                        }
                        $mode = $m;
                        for my $c (_uniq(values %conn)) {
                            $c->{sent} = 0;
                            if ($c->{until}) {
                                $c->{until} = 0;
                                $self->_flush($c, length $c->{buf});
                            }
                        }
                    }
                    print {$ctl} $JSON->encode(\%st), "\n";
                }

            } else {
                # closed earlier in this round along with its peer
                my $fd = fileno $fh;
                next unless defined $fd;
                my $c = $conn{$fd} or next;
                my $buf = '';
                my $n = sysread $fh, $buf, 65536;
                next if !defined $n && ($! == EINTR || $! == EAGAIN);

                if (!$n) {
                    $self->_flush($c, length $c->{buf}) if $fh == $c->{up}
                                                           && !$c->{until};
                    _close($sel, \%conn, $c, 0);
                    next;
                }

                if ($fh == $c->{client}) {
                    next if $mode->{mode} eq 'swallow';
                    _write($c->{up}, $buf) or _close($sel, \%conn, $c, 0);
                    next;
                }

                $c->{buf} .= $buf;
                $self->_reply($sel, \%conn, $c, $mode);
            }
        }

        for my $c (_uniq(values %conn)) {
            next unless $c->{until} && time >= $c->{until};
            $c->{until} = 0;
            $self->_flush($c, length $c->{buf});
        }
    }
}

sub _uniq {
    my %seen;
    return grep { !$seen{$_}++ } @_;
}

# relay what the mode lets through of a connection's pending reply bytes
sub _reply {
    my ($self, $sel, $conn, $c, $mode) = @_;

    return if $c->{until};

    my $m = $mode->{mode};

    if ($m ne 'cut' && $m ne 'stall') {
        $self->_flush($c, length $c->{buf});
        return;
    }

    my $point;

    if (defined $mode->{bytes}) {
        $point = $mode->{bytes} - $c->{sent};
        $point = 0 if $point < 0;

    } elsif ($mode->{rx} && $c->{buf} =~ $mode->{rx}) {
        $point = ($mode->{at} // 'start') eq 'end' ? $+[0] : $-[0];
        $point += $mode->{plus} // 0;
    }

    if (defined $point && $point <= length $c->{buf}) {
        $self->{triggered}++;
        $self->_flush($c, $point);

        if ($m eq 'cut') {
            _close($sel, $conn, $c, ($mode->{how} // 'close') eq 'reset');
            return;
        }

        $c->{until} = $mode->{secs} ? time + $mode->{secs} : 9**9**9;
        return;
    }

    $self->_flush($c, defined $mode->{bytes}
                      ? length $c->{buf} : _complete($c->{buf}));
}

# length of the leading complete text-protocol lines and VALUE blocks
sub _complete {
    my ($buf) = @_;
    my $pos = 0;
    for (;;) {
        my $eol = index $buf, "\r\n", $pos;
        return $pos if $eol < 0;
        my $line = substr $buf, $pos, $eol - $pos;
        my $next = $eol + 2;
        if ($line =~ /^VALUE \S+ \d+ (\d+)/) {
            $next += $1 + 2;
            return $pos if $next > length $buf;
        }
        $pos = $next;
    }
}

sub _flush {
    my ($self, $c, $len) = @_;
    return unless $len > 0;
    my $data = substr $c->{buf}, 0, $len, '';
    $c->{sent} += $len;
    _write($c->{client}, $data);
}

sub _write {
    my ($fh, $data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite $fh, $data, length($data) - $off, $off;
        unless (defined $n) {
            next if $! == EINTR || $! == EAGAIN;
            return 0;
        }
        $off += $n;
    }
    return 1;
}

sub _close {
    my ($sel, $conn, $c, $reset) = @_;
    for my $fh ($c->{client}, $c->{up}) {
        next unless $fh;
        delete $conn->{fileno $fh};
        $sel->remove($fh);
    }
    setsockopt($c->{client}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0))
        if $reset;
    close $c->{client};
    close $c->{up};
}


1;
