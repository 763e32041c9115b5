#!/usr/bin/perl

# Where a check's destination and sender come from (optout_check_destination
# and optout_check_sender sources), checked directly on the check location:
# an input given twice is 400 with 40005 / 40006 (the JSON error and
# X-Optout-Error), the + rule of query arguments, "(0)" trunk prefixes,
# header and string sources, the batch's sender, and configuration errors.
# t/51-auth-request.t runs the same rules through conf-examples/gateway.conf.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP ();
use Test::More;
use OptoutTest;

OptoutTest->require_module;
plan skip_all => 'build/optoutctl is not built'
    unless -x OptoutTest::ctl_path();

my $JSON = JSON::PP->new->utf8;

my $A    = '+447700900201';     # account-wide rule, campaign 42
my $S    = '+447700900202';     # rule for sender "ACME CO", campaign 300
my $M    = 'jane+news@example.org';  # account-wide rule, campaign 7
my $FREE = '+447700900299';     # no rule

my $t = OptoutTest->new(workers => 1);
$t->setup(http => "    underscores_in_headers on;\n", server => <<'EOF');
        location = /check {
            optout_check;
        }
        location = /check-hdr {
            optout_check;
            optout_check_destination header=X-To arg=to;
            optout_check_sender header=X-From arg=from;
        }
        location = /check-var {
            optout_check;
            optout_check_destination $http_x_dest $arg_dest;
            optout_check_sender $arg_sender;
        }
EOF

{
    $t->write_file('empty.journal', '');
    my ($rc, $out) = $t->ctl('replay', '--store',
        '--SERVER=127.0.0.1:' . $t->mc_port, '--store-secret',
        $t->path('store.key'), $t->path('empty.journal'));
    is($rc, 0, 'store seeded') or diag $out;
}

my $rt = 1795424400;
ok($t->mc_set($t->skey(dest => $A), "1 42 $rt api sms 0"), 'rule for A');
ok($t->mc_set($t->skey(dest => $S, sender => 'ACME CO'),
              "1 300 $rt api sms 0"), 'rule for S, sender ACME CO');
ok($t->mc_set($t->skey(dest => $M), "1 7 $rt api email 0"), 'rule for M');

sub chk {
    my ($path, %h) = @_;
    my $r = $t->get($path, %h);
    $r->{json} = eval { $JSON->decode($r->{content}) }
        if length($r->{content} // '');
    return $r;
}

sub status_is {
    my ($r, $status, $st, $what) = @_;
    my $ok = is($r->{status}, $status, "$what: $status");
    $ok &= is($r->{headers}{'x-optout-status'}, $st, "$what: $st");
    diag "answer: $r->{status} $r->{content}" unless $ok;
}

sub refused {
    my ($r, $code, $what) = @_;
    my $ok = is($r->{status}, 400, "$what: 400");
    $ok &= is($r->{headers}{'x-optout-status'}, 'invalid',
              "$what: X-Optout-Status invalid");
    $ok &= is($r->{headers}{'x-optout-error'}, $code,
              "$what: X-Optout-Error $code");
    $ok &= like($r->{headers}{'content-type'} // '', qr{^application/json},
                "$what: JSON");
    my $e = ref $r->{json} eq 'HASH' ? $r->{json}{errors}[0] : {};
    $ok &= is($e->{code}, $code, "$what: JSON code $code");
    $ok &= like($e->{title} // '', qr/^(Invalid|Conflicting) /,
                "$what: title");
    diag "answer: $r->{status} $r->{content}" unless $ok;
}

my $F  = '%2B447700900299';
my $B  = '%2B447700900201';

# ------------------------------------------------ the default: arg=to / from

status_is(chk("/check?to=$F"), 204, 'allowed', 'one to');
status_is(chk("/check?to=$B"), 403, 'blocked', 'one to, blocked');
refused(chk("/check?to=$F&to=$B"), '40005', 'two to');
refused(chk("/check?to=$B&to=$F"), '40005', 'two to, blocked first');
refused(chk("/check?to=$F&to=$F"), '40005', 'the same to twice');
refused(chk("/check?to=&to=$B"), '40005', 'an empty to counts');
refused(chk("/check?to=$F&to"), '40005', 'a bare to counts');
refused(chk("/check?to=$F&TO=$B"), '40005', 'names are case-insensitive');
refused(chk("/check?to=$F&%74%6F=$B"), '40005', 'names are %-decoded');
refused(chk("/check?to=$F&+to=$B"), '40005', 'a leading space in a name');
refused(chk("/check?to=$F&to[]=$B"), '40005', 'to[] counts as to');
refused(chk("/check?to=$F;to=$B"), '40005', '; separates parameters');
refused(chk("/check?to=$F&from=ACME&from=OTHER"), '40006', 'two from');
refused(chk("/check?to=$F&from=ACME&From=OTHER"), '40006', 'from and From');
status_is(chk("/check?to=$F&too=$B&xto=$B&t=$B"), 204, 'allowed',
          'other names do not count');
status_is(chk("/check?to=$F&x=to%3D$B"), 204, 'allowed',
          'to= inside a value does not count');

# a destination and a sender given twice: the destination is reported
refused(chk("/check?to=$F&to=$B&from=A&from=B"), '40005',
        'both twice: destination first');

# ------------------------------------------------ the + rule

status_is(chk('/check?to=+447700900201'), 403, 'blocked',
          'leading raw + of to is a +');
status_is(chk('/check?to=+44+7700+900201'), 403, 'blocked',
          'other raw + of to are spaces');
status_is(chk("/check?to=%2B447700900202&from=ACME+CO"), 403, 'blocked',
          'from=ACME+CO is "ACME CO"');
status_is(chk("/check?to=%2B447700900202&from=acme%20co"), 403, 'blocked',
          'from=acme%20co is "ACME CO"');
refused(chk("/check?to=%2B447700900202&from=ACME%2BCO"), '40002',
        'from=ACME%2BCO is "ACME+CO"');
status_is(chk("/check?to=$F&from=+447700900001"), 204, 'allowed',
          'from=+447700900001 is a number');
refused(chk('/check?to=jane+news@example.org'), '40001',
        'to=jane+news@... is "jane news@...": refused');
status_is(chk('/check?to=jane%2Bnews@example.org'), 403, 'blocked',
          'to=jane%2Bnews@... is the address');

# ------------------------------------------------ "(0)"

status_is(chk('/check?to=%2B44%20(0)7700%20900201'), 403, 'blocked',
          '+44 (0)7700 900201 is +447700900201');
status_is(chk('/check?to=0044(0)7700900201'), 403, 'blocked',
          '0044(0)7700900201 is +447700900201');

# ------------------------------------------------ header and arg sources

status_is(chk('/check-hdr', 'X-To' => $A), 403, 'blocked', 'header X-To');
status_is(chk("/check-hdr?to=$B"), 403, 'blocked', 'arg to');
refused(chk("/check-hdr?to=$F", 'X-To' => $FREE), '40005',
        'X-To and to, same value');
refused(chk("/check-hdr?to=$B", 'X-To' => $FREE), '40005', 'X-To and to');
refused(chk('/check-hdr', 'X-To' => [$FREE, $A]), '40005', 'two X-To');
refused(chk('/check-hdr', 'X-To' => $FREE, 'X_To' => $A), '40005',
        'X-To and X_To (one CGI variable)');
refused(chk('/check-hdr', 'X-To' => $FREE, 'x-to' => $A), '40005',
        'X-To and x-to');
refused(chk("/check-hdr?from=OTHER", 'X-To' => $S, 'X-From' => 'ACME CO'),
        '40006', 'X-From and from');
status_is(chk('/check-hdr', 'X-To' => $S, 'X-From' => 'ACME CO'), 403,
          'blocked', 'X-From: ACME CO');
refused(chk('/check-hdr', 'X-To' => $S, 'X-From' => 'ACME+CO'), '40002',
        'X-From: ACME+CO is "ACME+CO" (a header is not form-encoded)');
status_is(chk('/check-hdr', 'X-To' => '%2B447700900201'), 403, 'blocked',
          'a header is %-decoded');

# ------------------------------------------------ string sources

status_is(chk('/check-var?dest=%2B447700900201'), 403, 'blocked',
          'string source $arg_dest');
status_is(chk('/check-var', 'X-Dest' => $A), 403, 'blocked',
          'string source $http_x_dest');
refused(chk("/check-var?dest=$F", 'X-Dest' => $A), '40005',
        'two non-empty string sources');
status_is(chk("/check-var?dest=$F&dest=$B"), 204, 'allowed',
          'a string source is one value ($arg_dest is the first)');
refused(chk("/check-var?dest=%2B447700900202&sender=ACME+CO"), '40002',
        'in a string source a + stays a +');

# ------------------------------------------------ batch: the sender

{
    my $r = $t->post("/check?from=ACME+CO&from=OTHER", "$S\n",
                     'Content-Type' => 'text/plain');
    is($r->{status}, 400, 'batch: two from: 400');
    my $j = eval { $JSON->decode($r->{content}) } || {};
    is($j->{errors}[0]{code}, '40006', 'batch: two from: code 40006')
        or diag $r->{content};

    $r = $t->post("/check?from=ACME+CO", "$S\n$FREE\n",
                  'Content-Type' => 'text/plain');
    is($r->{status}, 200, 'batch: from=ACME+CO: 200');
    $j = eval { $JSON->decode($r->{content}) } || {};
    is(scalar @{ $j->{blocked} || [] }, 1, 'batch: "ACME CO" blocks S')
        or diag $r->{content};
}

# ------------------------------------------------ configuration

sub conf_fails {
    my ($what, $directive, $re) = @_;
    my $c = OptoutTest->new(workers => 1);
    $c->setup(no_start => 1, no_memcached => 1, server => <<"EOF");
        location = /c {
            optout_check;
            $directive
        }
EOF
    my ($rc, $out) = $c->nginx_test;
    isnt($rc, 0, "config: $what: nginx -t fails");
    like($out, $re, "config: $what: message") or diag $out;
}

conf_fails('empty arg name', 'optout_check_destination arg=;',
           qr/\[emerg\].*empty name in "arg="/);
conf_fails('empty header name', 'optout_check_sender header=;',
           qr/\[emerg\].*empty name in "header="/);
conf_fails('& in an arg name', 'optout_check_destination "arg=t&o";',
           qr/\[emerg\].*invalid name in "arg=t&o"/);
conf_fails('duplicate', "optout_check_destination arg=to;\n"
           . "            optout_check_destination arg=dest;",
           qr/\[emerg\].*"optout_check_destination" directive is duplicate/);

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');
like($t->error_log // '',
     qr/\[info\].*check refused: the destination is given more than once/,
     'a conflict is logged at info');

done_testing;
