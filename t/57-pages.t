#!/usr/bin/perl

# The built-in pages name the channel (text messages or emails) and, for a
# sender-scoped link, the sender: exact titles, headings, texts and
# buttons of the confirmation page (GET) and the done page (POST) for the
# four kinds of link; a page file still serves every kind.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use OptoutTest;

OptoutTest->require_module;

my $t = OptoutTest->new(workers => 1);

$t->write_file('page.html',
    "<p>{{destination}}|{{sender}}</p>\n", 0644);

$t->setup(server => <<'EOF');
        location /file/ {
            optout_link;
            optout_link_confirm_page %%PREFIX%%/page.html;
            optout_link_done_page %%PREFIX%%/page.html;
        }
EOF

# title (also the h1), paragraph, button (confirm page only)
my @kinds = (
    [ 'phone, account', { dest => '+447700900123' },
      [ 'Stop text messages?',
        'Text messages to <b>+447*******23</b> will stop.',
        'Stop messages' ],
      [ 'Text messages stopped',
        'We will not send further text messages to <b>+447*******23</b>.' ] ],
    [ 'email, account', { dest => 'john@example.com' },
      [ 'Unsubscribe?',
        'Emails to <b>j***@example.com</b> will stop.',
        'Unsubscribe' ],
      [ 'You are unsubscribed',
        'We will not send further emails to <b>j***@example.com</b>.' ] ],
    [ 'phone, sender', { dest => '+14155550100', sender => 'ACME' },
      [ 'Stop text messages from ACME?',
        'Text messages from <b>ACME</b> to <b>+141******00</b> will stop.',
        'Stop messages' ],
      [ 'Text messages from ACME stopped',
        '<b>ACME</b> will not send further text messages to '
        . '<b>+141******00</b>.' ] ],
    [ 'email, sender', { dest => 'jane@example.org', sender => 'A&B CO' },
      [ 'Unsubscribe from A&amp;B CO?',
        'Emails from <b>A&amp;B CO</b> to <b>j***@example.org</b> will stop.',
        'Unsubscribe' ],
      [ 'You are unsubscribed from A&amp;B CO',
        '<b>A&amp;B CO</b> will not send further emails to '
        . '<b>j***@example.org</b>.' ] ],
);

sub parts {
    my ($html) = @_;
    my ($title) = $html =~ m{<title>(.*?)</title>}s;
    my ($h1) = $html =~ m{<h1>(.*?)</h1>}s;
    my ($p) = $html =~ m{</h1>\n<p>(.*?)</p>}s;
    my ($button) = $html =~ m{<button type="submit">(.*?)</button>}s;
    my $forms = () = $html =~ /<form\b/g;
    return ($title, $h1, $p, $button, $forms);
}

for my $k (@kinds) {
    my ($what, $link, $confirm, $done) = @$k;
    my $tok = $t->token(campaign => 9, %$link);

    my $r = $t->get("/u/$tok");
    is($r->{status}, 200, "$what: GET 200");
    my ($title, $h1, $p, $button, $forms) = parts($r->{content});
    is($title, $confirm->[0], "$what: confirm title");
    is($h1, $confirm->[0], "$what: confirm heading");
    is($p, $confirm->[1], "$what: confirm text");
    is($button, $confirm->[2], "$what: confirm button");
    is($forms, 1, "$what: confirm page has one form");
    like($r->{content}, qr{<form method="post" action="\Q$tok\E">},
         "$what: the form posts to the link");

    $r = $t->post_one_click("/u/$tok");
    is($r->{status}, 200, "$what: POST 200");
    ($title, $h1, $p, $button, $forms) = parts($r->{content});
    is($title, $done->[0], "$what: done title");
    is($h1, $done->[0], "$what: done heading");
    is($p, $done->[1], "$what: done text");
    is($button, undef, "$what: done page has no button");
    is($forms, 0, "$what: done page has no form");
}

# the whole confirmation page of an account-wide phone link
my $tok = $t->token(campaign => 9, dest => '+447700900123');
my $r = $t->get("/u/$tok");
my $body = $r->{content};
$body =~ s{<style>.*?</style>}{<style>}s;
is($body, <<"EOF", 'phone, account: the whole confirmation page');
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="robots" content="noindex,nofollow">
<title>Stop text messages?</title>
<style>
</head><body><main>
<h1>Stop text messages?</h1>
<p>Text messages to <b>+447*******23</b> will stop.</p>
<form method="post" action="$tok">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Stop messages</button>
</form>
</main></body></html>
EOF
is($r->{headers}{'content-length'}, length $r->{content},
   'Content-Length is the page length');

# a page file is one template for every kind of link

for my $k (@kinds) {
    my ($what, $link) = @$k;
    my $tok = $t->token(campaign => 10, %$link);
    my $sender = $link->{sender} // '';
    $sender =~ s/&/&amp;/g;
    my ($masked) = ($kinds[0] == $k ? '+447*******23'
                    : $kinds[1] == $k ? 'j***@example.com'
                    : $kinds[2] == $k ? '+141******00'
                    : 'j***@example.org');
    is($t->get("/file/$tok")->{content}, "<p>$masked|$sender</p>\n",
       "$what: page file on GET");
    is($t->post_one_click("/file/$tok")->{content},
       "<p>$masked|$sender</p>\n", "$what: page file on POST");
}

$t->stop;
ok($t->error_log_clean, 'no alert/crit/emerg in error.log');

done_testing;
