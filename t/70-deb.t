#!/usr/bin/perl

# The Debian packages: tools/build-deb.sh (make deb) builds
# libnginx-mod-http-optout and optoutctl with dpkg-buildpackage and
# dh_nginx from a copy of the tree, leaving the tree as it was; lintian
# finds no error; the module package depends on the nginx ABI of nginx-dev
# and enables its modules-available snippet on installation.  Unpacked
# with dpkg-deb -x, the module passes "nginx -t" from the unpacked path,
# loads through its own snippet and records an opt-out, and the unpacked
# optoutctl signs the link and reads the rule back.  Its man page covers
# every command "optoutctl --help" lists.
#
# The build compiles the module again: about a minute on 2 cores.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

my @missing = grep { !in_path($_) }
              qw(dpkg-buildpackage dpkg-deb dh dh_nginx lintian);
plan(skip_all => "@missing not installed (make deps installs debhelper, "
                 . 'dpkg-dev, nginx-dev and lintian)') if @missing;
plan(skip_all => 'no /usr/share/nginx/src/debian/libnginx-mod.abisubstvars '
                 . '(nginx-dev)')
    unless -f '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars';

sub in_path {
    my ($cmd) = @_;
    return grep { -x "$_/$cmd" } split /:/, $ENV{PATH} // '';
}

my $t = OptoutTest->new(workers => 1);
my $R = $t->root;
my $P = $t->prefix;

# (exit code, stdout and stderr)
sub run {
    my (@cmd) = @_;
    return $t->_run(@cmd);
}

sub git_status {
    return undef unless -e "$R/.git";
    my ($rc, $out) = run('git', '-C', $R, 'status', '--porcelain',
                         '--untracked-files=all');
    return $rc == 0 ? $out : undef;
}

# ---------------------------------------------------------------- build

my $before = git_status();
my $deb = "$P/deb";
my ($rc, $out);
{
    local $ENV{DEB_DIR} = $deb;
    # the set of packages below assumes no noautodbgsym
    local $ENV{DEB_BUILD_OPTIONS};
    ($rc, $out) = run('bash', "$R/tools/build-deb.sh");
}
is($rc, 0, 'build-deb.sh: exit 0') or diag $out;

SKIP: {
    skip 'not a git work tree', 1 unless defined $before;
    is(git_status(), $before, 'the build leaves the work tree as it was');
}

my $ver = '';
if (open my $fh, '<', "$R/debian/changelog") {
    ($ver) = <$fh> =~ /\(([^)]+)\)/;
}
my $arch;
($rc, $arch) = run('dpkg', '--print-architecture');
chomp $arch;

my $mod_deb = "$deb/libnginx-mod-http-optout_${ver}_$arch.deb";
my $ctl_deb = "$deb/optoutctl_${ver}_$arch.deb";
my $changes = "$deb/libnginx-mod-http-optout_${ver}_$arch.changes";

opendir(my $dh, $deb) or BAIL_OUT("no $deb");
my @debs = sort grep { /\.deb$/ } readdir $dh;
closedir $dh;
is_deeply(\@debs, [sort "libnginx-mod-http-optout_${ver}_$arch.deb",
                        "libnginx-mod-http-optout-dbgsym_${ver}_$arch.deb",
                        "optoutctl_${ver}_$arch.deb",
                        "optoutctl-dbgsym_${ver}_$arch.deb"],
          'four packages: module, optoutctl and their debug symbols');
ok(!-e "$deb/src", 'the build copy is removed');

# ---------------------------------------------------------------- lintian

($rc, $out) = run('lintian', '--info', $changes);
my @errors = grep { /^E: / } split /\n/, $out;
is(scalar @errors, 0, 'lintian: no error') or diag join "\n", @errors;
is($rc, 0, 'lintian: exit 0') or diag $out;
my @warnings = grep { /^W: / } split /\n/, $out;
note("lintian warnings:\n" . join("\n", @warnings)) if @warnings;

# ---------------------------------------------------------------- control

my $abi;
if (open my $fh, '<', '/usr/share/nginx/src/debian/libnginx-mod.abisubstvars')
{
    for (<$fh>) {
        $abi = $1 if /^nginx:abi=(\S+)/;
    }
}
like($abi // '', qr/^nginx-abi-1\.22\.1-\d+$/, "nginx-dev's ABI: $abi");

($rc, $out) = run('dpkg-deb', '-f', $mod_deb, 'Depends');
my @depends = map { s/^\s+|\s+$//gr } split /,/, $out;
is(scalar(grep { $_ eq $abi } @depends), 1, 'Depends names the nginx ABI')
    or diag $out;

($rc, $out) = run('dpkg-query', '-W', '-f', '${Provides}', 'nginx');
is(scalar(grep { s/^\s+|\s+$//gr eq $abi } split /,/, $out), 1,
   'the installed nginx provides that ABI');

my $ctrl = "$P/control";
($rc, $out) = run('dpkg-deb', '-e', $mod_deb, $ctrl);
is($rc, 0, 'dpkg-deb -e') or diag $out;
my $postinst = $t->read_file("$ctrl/postinst") // '';
like($postinst, qr{\bmod-http-optout\.conf:50-mod-http-optout\.conf\b},
     'postinst links modules-enabled/50-mod-http-optout.conf');
like($postinst, qr{/etc/nginx/modules-enabled/}, 'postinst: modules-enabled');

# ---------------------------------------------------------------- unpacked

my $root = "$P/pkgroot";
for my $d ($mod_deb, $ctl_deb) {
    ($rc, $out) = run('dpkg-deb', '-x', $d, $root);
    is($rc, 0, "dpkg-deb -x " . ($d =~ s{.*/}{}r)) or diag $out;
}

my $so = "$root/usr/lib/nginx/modules/ngx_http_optout_module.so";
my $snippet = "$root/usr/share/nginx/modules-available/mod-http-optout.conf";
my $ctl = "$root/usr/bin/optoutctl";
my $man = "$root/usr/share/man/man1/optoutctl.1.gz";

ok(-f $so, 'module in /usr/lib/nginx/modules');
is($t->read_file($snippet),
   "load_module modules/ngx_http_optout_module.so;\n",
   'modules-available/mod-http-optout.conf loads it');
ok(-x $ctl, '/usr/bin/optoutctl');
ok(-f $man, 'optoutctl(1)');

# nginx -t with load_module at the unpacked path
$t->memcached_start;
$t->key('k1', 1);
$t->key('store');
my $body = $t->optout_http;
$t->write_conf($body, stock => 1, main => "load_module $so;");
($rc, $out) = $t->nginx_test;
is($rc, 0, 'nginx -t, module from the unpacked path') or diag $out;
like($out, qr/test is successful/, 'nginx -t: successful');

# the snippet, as Debian's nginx reads it: modules/ under the prefix
symlink("$root/usr/lib/nginx/modules", "$P/modules")
    or die "symlink: $!";
$t->write_conf($body, stock => 1, main => "include $snippet;");
($rc, $out) = $t->nginx_test;
is($rc, 0, 'nginx -t, module through its snippet') or diag $out;

# optoutctl from the package
($rc, $out) = run($ctl, '--help');
is($rc, 0, 'optoutctl --help: exit 0');
my ($list) = $out =~ /^Commands:\n((?:  \S.*\n)+)/m;
my @cmds = map { /^\s+(\S+)/ } split /\n/, $list // '';
ok(scalar(grep { $_ eq 'sign' } @cmds), 'optoutctl --help lists commands')
    or diag $out;

($rc, $out) = run('sh', '-c', "gzip -dc '$man'");
my $roff = $out;
for my $c (@cmds) {
    ok($roff =~ /^\.SS \Q$c\E$/m, "man page: a section for \"$c\"");
}
SKIP: {
    skip 'man not installed', 1 unless in_path('man');
    ($rc, $out) = run('sh', '-c', "MANWIDTH=80 man --warnings -l '$man' "
                                  . '2>&1 >/dev/null');
    is($out, '', 'man page: no groff warning');
}

# the packaged module records an opt-out signed by the packaged optoutctl
$t->start;
my $phone = '+447700900123';
($rc, $out) = run($ctl, 'sign', '--key', $t->path('k1.key'),
                  '--campaign', 42, $phone);
is($rc, 0, 'optoutctl sign: exit 0') or diag $out;
chomp(my $tok = $out);
is($tok, $t->token(dest => $phone, campaign => 42), 'token as minted');

my $r = $t->post_one_click("/u/$tok");
is($r->{status}, 200, 'one-click POST to the packaged module: 200');
like($t->mc_get($t->skey(dest => $phone)) // '', qr/^1 42 \d+ link sms 1$/,
     'rule in memcached');
is(scalar $t->journal_lines, 1, 'one journal line');

($rc, $out) = run($ctl, 'get',
                  '--store', '--SERVER=127.0.0.1:' . $t->mc_port,
                  '--store-secret', $t->path('store.key'), $phone);
is($rc, 0, 'optoutctl get: exit 0 (a rule exists)') or diag $out;
my $rule = 'source=link channel=sms key_id=1';
like($out, qr/^account: blocked campaign=42 since=\S+ \Q$rule\E$/m,
     'optoutctl get shows the rule');

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
