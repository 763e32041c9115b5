#!/usr/bin/perl
# Every file in conf-examples/ passes "nginx -t" with the module loaded:
# absolute paths are moved into a scratch directory, key files and a
# self-signed certificate are made where the example expects them.

use strict;
use warnings;

use FindBin;
use File::Temp ();
use File::Basename qw(basename dirname);
use File::Path qw(make_path);
use Test::More;

my $root = "$FindBin::Bin/..";
my @examples = sort glob("$root/conf-examples/*.conf");
my $ctl = "$root/build/optoutctl";

plan skip_all => 'build/ngx_http_optout_module.so is not built'
    unless -f "$root/build/ngx_http_optout_module.so" && -x $ctl;
ok(@examples >= 2, 'conf-examples holds the quickstart and production');

for my $example (@examples) {
    my $name = basename($example);
    my $dir = File::Temp->newdir('optout-conf-XXXXXX', TMPDIR => 1);
    chmod 0755, "$dir";
    make_path("$dir/logs", "$dir/tmp", "$dir/conf");
    symlink("$root/build", "$dir/modules") or die "symlink: $!";

    open my $in, '<', $example or die "$example: $!";
    my $conf = do { local $/; <$in> };
    close $in;

    # system paths become paths in the scratch directory
    $conf =~ s{(?<![\w.])/(etc|var|run)/}{$dir/sys/$1/}g;

    # key files named in the example, relative to the conf directory
    for my $key ($conf =~ /^\s*optout_(?:secret\s+\d+|store_secret)\s+(\S+);/mg) {
        my $path = $key =~ m{^/} ? $key : "$dir/conf/$key";
        make_path(dirname($path));
        system($ctl, 'keygen', $path) == 0 or die "keygen $path";
    }

    # webhook secrets (made like keys: mode 0600) and public keys
    while ($conf =~ /^\s*optout_inbound_verify\s+(twilio|hmac|telnyx)\s+([^\s;]+)/mg) {
        my ($scheme, $key) = ($1, $2);
        my $path = $key =~ m{^/} ? $key : "$dir/conf/$key";
        make_path(dirname($path));
        if ($scheme eq 'telnyx') {
            system("openssl genpkey -algorithm ed25519 2>/dev/null "
                   . "| openssl pkey -pubout -out '$path' 2>/dev/null") == 0
                or die "openssl ed25519 $path";
        } else {
            system($ctl, 'keygen', $path) == 0 or die "keygen $path";
        }
    }

    for my $file ($conf =~ /^\s*(?:optout_journal|access_log|error_log|pid)\s+(\S+)/mg) {
        $file =~ s/;$//;
        make_path(dirname($file =~ m{^/} ? $file : "$dir/$file"));
    }

    my @certs = $conf =~ /^\s*ssl_certificate(?:_key)?\s+(\S+);/mg;
    if (@certs) {
        my ($cert, $certkey) = @certs;
        make_path(dirname($cert));
        system("openssl req -x509 -newkey rsa:2048 -nodes "
               . "-subj /CN=u.example.com -days 1 "
               . "-keyout '$certkey' -out '$cert' 2>/dev/null") == 0
            or die "openssl req failed";
    }

    open my $out, '>', "$dir/conf/$name" or die "$name: $!";
    print $out $conf;
    close $out;

    my $output = `nginx -t -p $dir/ -c $dir/conf/$name 2>&1`;
    is($?, 0, "$name passes nginx -t") or diag($output);
    like($output, qr/test is successful/, "$name: nginx says successful");
}

done_testing;
