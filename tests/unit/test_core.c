/*
 * Unit tests of the shared core (src/optout_core.h), TAP output.
 *
 *   build/test_core [tests/vectors.txt]    run the tests
 *   build/test_core --gen-vectors          print tests/vectors.txt
 *
 * The vectors file defaults to $OPTOUT_VECTORS or tests/vectors.txt.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "optout_core.h"
#include "tap.h"


#define KEY1        "0123456789abcdef0123456789abcdef"
#define KEY2        "5f2b8c0e9d7a4163b1e8f0c2a9d4e7b6" \
                    "3c1f0a8e2d6b4975c0e1f2a3b4c5d6e7"
#define STORE_KEY   "store-secret-0123456789abcdef0123"

#define LINE_MAX_   1024


static optout_mac_t  *mac1, *mac2, *mac3, *smac;


/* independent base64url helpers for building and inspecting tokens */

static const char  b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


static size_t
b64_encode(const unsigned char *src, size_t len, char *dst)
{
    size_t    i, n;
    uint32_t  acc;
    unsigned  bits;

    acc = 0;
    bits = 0;
    n = 0;

    for (i = 0; i < len; i++) {
        acc = (acc << 8) | src[i];
        bits += 8;

        while (bits >= 6) {
            bits -= 6;
            dst[n++] = b64[(acc >> bits) & 0x3f];
        }
    }

    if (bits) {
        dst[n++] = b64[(acc << (6 - bits)) & 0x3f];
    }

    dst[n] = '\0';

    return n;
}


static size_t
b64_decode(const char *src, unsigned char *dst)
{
    size_t       n;
    uint32_t     acc;
    unsigned     bits;
    const char  *p;

    acc = 0;
    bits = 0;
    n = 0;

    for ( /* void */ ; *src; src++) {
        p = strchr(b64, *src);
        if (p == NULL) {
            break;
        }

        acc = (acc << 6) | (uint32_t) (p - b64);
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (unsigned char) (acc >> bits);
        }
    }

    return n;
}


/* body + correct tag under mac, base64url */

static size_t
mint(optout_mac_t *mac, const unsigned char *body, size_t n, char *out)
{
    unsigned char  buf[512];
    unsigned char  md[32];

    memcpy(buf, body, n);
    optout_mac_compute(mac, buf, n, md);
    memcpy(buf + n, md, OPTOUT_TAG_LEN);

    return b64_encode(buf, n + OPTOUT_TAG_LEN, out);
}


static void
make_link(optout_link_t *link, unsigned kid, uint64_t campaign,
    const char *dest, const char *sender)
{
    memset(link, 0, sizeof(optout_link_t));

    link->key_id = kid;
    link->campaign = campaign;

    if (optout_normalize_dest(dest, strlen(dest), &link->dest) != OPTOUT_OK)
    {
        diag("bad test destination \"%s\"", dest);
    }

    if (sender) {
        if (optout_normalize_sender(sender, strlen(sender), link->sender,
                                    &link->sender_len)
            != OPTOUT_OK)
        {
            diag("bad test sender \"%s\"", sender);
        }
    }
}


static int
link_eq(const optout_link_t *a, const optout_link_t *b)
{
    return a->key_id == b->key_id
           && a->campaign == b->campaign
           && a->dest.type == b->dest.type
           && a->dest.len == b->dest.len
           && strcmp(a->dest.data, b->dest.data) == 0
           && a->sender_len == b->sender_len
           && memcmp(a->sender, b->sender, a->sender_len) == 0;
}


static optout_key_t  keys12[2];


/* normalization */

typedef struct {
    const char  *in;
    const char  *out;        /* NULL: refused */
    unsigned     type;
} dest_case_t;


static const dest_case_t  dest_cases[] = {
    { "+447700900123", "+447700900123", OPTOUT_DEST_PHONE },
    { " +44 7700 900123\r\n", "+447700900123", OPTOUT_DEST_PHONE },
    { "\t0044 (7700) 900-123 ", "+447700900123", OPTOUT_DEST_PHONE },
    { "+1.415.555.0100", "+14155550100", OPTOUT_DEST_PHONE },
    { "(+1) 415-555-0100", "+14155550100", OPTOUT_DEST_PHONE },
    { "+12345678", "+12345678", OPTOUT_DEST_PHONE },
    { "+123456789012345", "+123456789012345", OPTOUT_DEST_PHONE },
    { "00123456789012345", "+123456789012345", OPTOUT_DEST_PHONE },
    { "+44 (0)7700 900123", "+447700900123", OPTOUT_DEST_PHONE },
    { "+44(0)20 7946 0958", "+442079460958", OPTOUT_DEST_PHONE },
    { "0044 (0) 7700 900123", "+447700900123", OPTOUT_DEST_PHONE },
    { "+49 (0)30 1234567", "+49301234567", OPTOUT_DEST_PHONE },
    { "+(0)447700900123", NULL, 0 },
    { "(0)7700 900123", NULL, 0 },
    { "+1234567", NULL, 0 },
    { "+1234567890123456", NULL, 0 },
    { "001234567890123456", NULL, 0 },
    { "447700900123", NULL, 0 },
    { "07700900123", NULL, 0 },
    { "+0447700900123", NULL, 0 },
    { "000447700900123", NULL, 0 },
    { "++447700900123", NULL, 0 },
    { "+44+7700900123", NULL, 0 },
    { "+44\t7700900123", NULL, 0 },
    { "+44 7700 9001a3", NULL, 0 },
    { "+44/7700900123", NULL, 0 },
    { "+", NULL, 0 },
    { "00", NULL, 0 },
    { "", NULL, 0 },
    { " \t\r\n", NULL, 0 },
    { "John.Doe@Example.COM", "john.doe@example.com", OPTOUT_DEST_EMAIL },
    { "  a@b.co\n", "a@b.co", OPTOUT_DEST_EMAIL },
    { "user+tag@sub.example.org", "user+tag@sub.example.org",
      OPTOUT_DEST_EMAIL },
    { "o'brien@x-y.ie", "o'brien@x-y.ie", OPTOUT_DEST_EMAIL },
    { "a!#$%&'*+/=?^_`{|}~-z@b.c", "a!#$%&'*+/=?^_`{|}~-z@b.c",
      OPTOUT_DEST_EMAIL },
    { "x@1.2", "x@1.2", OPTOUT_DEST_EMAIL },
    { "x@xn--bcher-kva.example", "x@xn--bcher-kva.example",
      OPTOUT_DEST_EMAIL },
    { "a@b", NULL, 0 },
    { "a@@b.com", NULL, 0 },
    { "a@b@c.com", NULL, 0 },
    { "@b.com", NULL, 0 },
    { "a@", NULL, 0 },
    { "@", NULL, 0 },
    { ".a@b.com", NULL, 0 },
    { "a.@b.com", NULL, 0 },
    { "a..b@c.com", NULL, 0 },
    { "a b@c.com", NULL, 0 },
    { "\"a\"@b.com", NULL, 0 },
    { "a(b)@c.com", NULL, 0 },
    { "a@-b.com", NULL, 0 },
    { "a@b-.com", NULL, 0 },
    { "a@b.com-", NULL, 0 },
    { "a@b..com", NULL, 0 },
    { "a@.b.com", NULL, 0 },
    { "a@b.com.", NULL, 0 },
    { "a@b_c.com", NULL, 0 },
    { "a@b c.com", NULL, 0 },
    { "a@[127.0.0.1]", NULL, 0 },
    { "j\xc3\xb6rg@b.com", NULL, 0 },
    { "a@b\xc3\xa4.com", NULL, 0 },
};


static void
test_dest(void)
{
    int            rc, good;
    char           buf[400];
    size_t         i, n;
    optout_dest_t  d, d2;

    for (i = 0; i < sizeof(dest_cases) / sizeof(dest_cases[0]); i++) {
        const dest_case_t  *c = &dest_cases[i];

        rc = optout_normalize_dest(c->in, strlen(c->in), &d);

        if (c->out == NULL) {
            ok(rc == OPTOUT_EDEST, "dest \"%s\" refused (rc %d)", c->in, rc);
            continue;
        }

        good = rc == OPTOUT_OK && d.type == c->type
               && d.len == strlen(c->out) && strcmp(d.data, c->out) == 0;

        if (!ok(good, "dest \"%s\" -> \"%s\"", c->in, c->out)) {
            diag("rc %d type %u len %zu \"%s\"", rc, d.type, d.len, d.data);
            continue;
        }

        rc = optout_normalize_dest(d.data, d.len, &d2);
        ok(rc == OPTOUT_OK && d2.type == d.type && d2.len == d.len
           && strcmp(d2.data, d.data) == 0,
           "dest \"%s\" is idempotent", c->out);
    }

    /* lengths: local 64/65, total 254/255 */

    memset(buf, 'a', 64);
    strcpy(buf + 64, "@example.com");
    ok(optout_normalize_dest(buf, strlen(buf), &d) == OPTOUT_OK,
       "64-char local part accepted");

    memset(buf, 'a', 65);
    strcpy(buf + 65, "@example.com");
    ok(optout_normalize_dest(buf, strlen(buf), &d) == OPTOUT_EDEST,
       "65-char local part refused");

    /* "a@" + 3 x (63 + ".") + 60 = 254 */

    strcpy(buf, "a@");
    n = 2;

    for (i = 0; i < 3; i++) {
        memset(buf + n, 'b', 63);
        n += 63;
        buf[n++] = '.';
    }

    memset(buf + n, 'c', 60);
    n += 60;
    buf[n] = '\0';

    rc = optout_normalize_dest(buf, strlen(buf), &d);
    ok(strlen(buf) == 254 && rc == OPTOUT_OK && d.len == 254,
       "254-char email accepted");

    strcat(buf, "c");
    ok(optout_normalize_dest(buf, strlen(buf), &d) == OPTOUT_EDEST,
       "255-char email refused");

    /* domain of 254 chars alone */

    strcpy(buf, "a@");
    memset(buf + 2, 'd', 300);
    buf[2 + 100] = '.';
    buf[2 + 254] = '\0';
    ok(optout_normalize_dest(buf, strlen(buf), &d) == OPTOUT_EDEST,
       "email with a 254-char domain refused");

    /* never reads past len: the input is not NUL-terminated */

    rc = optout_normalize_dest("+4477009001239999", 13, &d);
    ok(rc == OPTOUT_OK && strcmp(d.data, "+447700900123") == 0,
       "dest stops at len (phone)");

    rc = optout_normalize_dest("a@b.com@evil.com", 7, &d);
    ok(rc == OPTOUT_OK && strcmp(d.data, "a@b.com") == 0,
       "dest stops at len (email)");

    rc = optout_normalize_dest("+447700900123", 0, &d);
    ok(rc == OPTOUT_EDEST, "empty dest refused");

    rc = optout_normalize_dest("a@b.com\0x", 9, &d);
    ok(rc == OPTOUT_EDEST, "NUL inside email refused");
}


typedef struct {
    const char  *in;
    const char  *out;
} str_case_t;


static const str_case_t  sender_cases[] = {
    { "ACME", "ACME" },
    { " acme co\r\n", "ACME CO" },
    { "Acme&Co", "ACME&CO" },
    { "a_b.c-d", "A_B.C-D" },
    { "ABCDEFGHIJK", "ABCDEFGHIJK" },
    { "1234A", "1234A" },
    { "00A", "00A" },
    { "+44 7700 900123", "+447700900123" },
    { "+44 (0)7700 900123", "+447700900123" },
    { "0044 7700-900123", "+447700900123" },
    { "+12345678", "+12345678" },
    { "12345", "12345" },
    { "123", "123" },
    { "1-800", "1800" },
    { "(020) 7946 0000", "02079460000" },
    { "123456789012345", "123456789012345" },
    { "ABCDEFGHIJKL", NULL },
    { "12", NULL },
    { "1.5", NULL },
    { "1234567890123456", NULL },
    { "+1234567", NULL },
    { "+0123456789", NULL },
    { "0044", NULL },
    { "+", NULL },
    { "+A", NULL },
    { "---", NULL },
    { "_ .", NULL },
    { "(ACME)", NULL },
    { "AC\tME", NULL },
    { "ACM\xc3\x89", NULL },
    { "AC/ME", NULL },
    { "", NULL },
    { "  ", NULL },
};


static void
test_sender(void)
{
    int     rc;
    char    out[OPTOUT_SENDER_MAX + 1], out2[OPTOUT_SENDER_MAX + 1];
    size_t  i, n, n2;

    for (i = 0; i < sizeof(sender_cases) / sizeof(sender_cases[0]); i++) {
        const str_case_t  *c = &sender_cases[i];

        rc = optout_normalize_sender(c->in, strlen(c->in), out, &n);

        if (c->out == NULL) {
            ok(rc == OPTOUT_ESENDER, "sender \"%s\" refused (rc %d)",
               c->in, rc);
            continue;
        }

        if (!ok(rc == OPTOUT_OK && n == strlen(c->out)
                && strcmp(out, c->out) == 0,
                "sender \"%s\" -> \"%s\"", c->in, c->out))
        {
            diag("rc %d \"%s\"", rc, out);
            continue;
        }

        rc = optout_normalize_sender(out, n, out2, &n2);
        ok(rc == OPTOUT_OK && n2 == n && strcmp(out, out2) == 0,
           "sender \"%s\" is idempotent", c->out);
    }

    rc = optout_normalize_sender("ACMEXXXXXXXXXXXXXXXXXX", 4, out, &n);
    ok(rc == OPTOUT_OK && strcmp(out, "ACME") == 0, "sender stops at len");
}


static void
test_namespace(void)
{
    char  buf[80];

    ok(optout_check_namespace(NULL, 0) == OPTOUT_OK, "empty namespace");
    ok(optout_check_namespace("tenant-1", 8) == OPTOUT_OK,
       "namespace tenant-1");
    ok(optout_check_namespace("Eu:shop.B_2", 11) == OPTOUT_OK,
       "namespace Eu:shop.B_2");

    memset(buf, 'n', sizeof(buf));
    ok(optout_check_namespace(buf, 64) == OPTOUT_OK, "64-char namespace");
    ok(optout_check_namespace(buf, 65) == OPTOUT_ENAMESPACE,
       "65-char namespace refused");

    ok(optout_check_namespace("a b", 3) == OPTOUT_ENAMESPACE,
       "namespace with space refused");
    ok(optout_check_namespace("a/b", 3) == OPTOUT_ENAMESPACE,
       "namespace with slash refused");
    ok(optout_check_namespace("a\0b", 3) == OPTOUT_ENAMESPACE,
       "namespace with NUL refused");
    ok(optout_check_namespace("\"", 1) == OPTOUT_ENAMESPACE,
       "namespace with quote refused");
}


static void
test_mask(void)
{
    char           out[OPTOUT_MASKED_MAX + 1];
    char           buf[300];
    size_t         n;
    optout_dest_t  d;

    optout_normalize_dest("+447700900123", 13, &d);
    n = optout_mask_dest(&d, out);
    ok(n == 13 && strcmp(out, "+447*******23") == 0,
       "mask +447700900123 -> +447*******23 (\"%s\")", out);

    optout_normalize_dest("+12345678", 9, &d);
    n = optout_mask_dest(&d, out);
    ok(n == 9 && strcmp(out, "+123***78") == 0,
       "mask +12345678 -> +123***78 (\"%s\")", out);

    optout_normalize_dest("john.doe@example.com", 20, &d);
    n = optout_mask_dest(&d, out);
    ok(n == 16 && strcmp(out, "j***@example.com") == 0,
       "mask john.doe@example.com -> j***@example.com (\"%s\")", out);

    optout_normalize_dest("x@b.c", 5, &d);
    n = optout_mask_dest(&d, out);
    ok(n == 8 && strcmp(out, "x***@b.c") == 0, "mask x@b.c (\"%s\")", out);

    /* 1-char local part, 252-char domain: must still fit */

    strcpy(buf, "x@");
    memset(buf + 2, 'd', 252);
    buf[2 + 100] = '.';
    buf[2 + 252] = '\0';

    if (optout_normalize_dest(buf, strlen(buf), &d) != OPTOUT_OK) {
        diag("cannot normalize long email");
    }

    n = optout_mask_dest(&d, out);
    ok(n <= OPTOUT_DEST_MAX && n < OPTOUT_MASKED_MAX && strlen(out) == n
       && out[0] == 'x' && strcmp(strchr(out, '@'), buf + 1) == 0,
       "mask of a 254-char email fits OPTOUT_MASKED_MAX (%zu)", n);
}


/* tokens */

static void
test_token_roundtrip(void)
{
    int            rc;
    char           tok[OPTOUT_TOKEN_MAX + 1], tok2[OPTOUT_TOKEN_MAX + 1];
    size_t         i, n, n2;
    optout_link_t  link, got;

    static const struct {
        unsigned     kid;
        uint64_t     campaign;
        const char  *dest;
        const char  *sender;
    } cases[] = {
        { 1, 42, "+447700900123", NULL },
        { 1, 0, "+12345678", NULL },
        { 2, 127, "+999999999999999", NULL },
        { 2, 128, "+10000000", NULL },
        { 1, 4294967295ULL, "+123456789012345", NULL },
        { 1, UINT64_MAX, "+447700900123", NULL },
        { 1, 7, "john.doe@example.com", NULL },
        { 2, 0, "a@b.co", NULL },
        { 1, 1000, "+14155550100", "ACME" },
        { 1, 1000, "+14155550100", "ACME CO" },
        { 2, 1ULL << 63, "john.doe@example.com", "+447700900001" },
        { 1, 5, "x@example.org", "12345" },
        { 1, 5, "x@example.org", "ABCDEFGHIJK" },
        { 2, 5, "+447700900123", "+123456789012345" },
    };

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        make_link(&link, cases[i].kid, cases[i].campaign, cases[i].dest,
                  cases[i].sender);

        rc = optout_token_encode(cases[i].kid == 1 ? mac1 : mac2, &link,
                                 NULL, 0, tok, sizeof(tok), &n);

        if (!ok(rc == OPTOUT_OK && n == strlen(tok),
                "encode kid %u campaign %" PRIu64 " %s %s",
                cases[i].kid, cases[i].campaign, cases[i].dest,
                cases[i].sender ? cases[i].sender : "(account)"))
        {
            diag("rc %d", rc);
            continue;
        }

        memset(&got, 0x55, sizeof(got));
        rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);

        ok(rc == OPTOUT_OK && link_eq(&link, &got)
           && got.dest.data[got.dest.len] == '\0'
           && got.sender[got.sender_len] == '\0',
           "open %s round-trips (rc %d)", tok, rc);

        rc = optout_token_encode(cases[i].kid == 1 ? mac1 : mac2, &got,
                                 NULL, 0, tok2, sizeof(tok2), &n2);
        ok(rc == OPTOUT_OK && n2 == n && strcmp(tok, tok2) == 0,
           "re-encode of %s is identical", tok);
    }

    /* the SMS budget */

    make_link(&link, 1, 4294967295ULL, "+999999999999999", NULL);
    rc = optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_OK && n == 40,
       "15-digit phone, campaign 2^32-1, account scope: %zu chars (<= 40)",
       n);

    /* the largest token fits OPTOUT_TOKEN_MAX */

    {
        char  buf[300];

        memset(buf, 'a', 64);
        buf[64] = '@';
        memset(buf + 65, 'b', 189);
        buf[65 + 60] = '.';
        buf[65 + 120] = '.';
        buf[254] = '\0';

        make_link(&link, 255, UINT64_MAX, buf, "+123456789012345");
        rc = optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
        ok(rc == OPTOUT_OK && n <= OPTOUT_TOKEN_MAX && link.dest.len == 254,
           "largest token %zu chars <= OPTOUT_TOKEN_MAX", n);
    }
}


static void
test_token_encode_errors(void)
{
    int            rc;
    char           tok[OPTOUT_TOKEN_MAX + 1];
    size_t         n, len;
    optout_link_t  link, bad;

    make_link(&link, 1, 42, "+447700900123", NULL);

    bad = link;
    bad.key_id = 0;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EKEY, "encode key id 0 -> EKEY (%d)", rc);

    bad.key_id = 256;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EKEY, "encode key id 256 -> EKEY (%d)", rc);

    bad = link;
    strcpy(bad.dest.data, "+44 7700900123");
    bad.dest.len = strlen(bad.dest.data);
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EDEST, "encode non-normalized phone -> EDEST (%d)", rc);

    bad = link;
    strcpy(bad.dest.data, "John@example.com");
    bad.dest.len = strlen(bad.dest.data);
    bad.dest.type = OPTOUT_DEST_EMAIL;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EDEST, "encode non-normalized email -> EDEST (%d)", rc);

    bad = link;
    bad.dest.type = OPTOUT_DEST_EMAIL;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EDEST, "encode type mismatch -> EDEST (%d)", rc);

    bad = link;
    bad.dest.len = 5;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_EDEST, "encode wrong dest len -> EDEST (%d)", rc);

    bad = link;
    strcpy(bad.sender, "acme");
    bad.sender_len = 4;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_ESENDER, "encode lowercase sender -> ESENDER (%d)", rc);

    bad.sender_len = 17;
    rc = optout_token_encode(mac1, &bad, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_ESENDER, "encode sender_len 17 -> ESENDER (%d)", rc);

    rc = optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &len);

    rc = optout_token_encode(mac1, &link, NULL, 0, tok, len + 1, &n);
    ok(rc == OPTOUT_OK && n == len, "encode into exactly len + 1 bytes");

    tok[0] = 'X';
    n = 99;
    rc = optout_token_encode(mac1, &link, NULL, 0, tok, len, &n);
    ok(rc == OPTOUT_ETOOLONG && tok[0] == '\0' && n == 0,
       "encode into len bytes -> ETOOLONG, empty output (%d)", rc);

    rc = optout_token_encode(NULL, &link, NULL, 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_ECRYPTO, "encode without mac -> ECRYPTO (%d)", rc);
}


static void
test_token_tamper(const optout_link_t *link, const char *what)
{
    int            rc, bad_ok, bad_tag;
    char           tok[OPTOUT_TOKEN_MAX + 8], t2[OPTOUT_TOKEN_MAX + 8];
    size_t         n, i, j, blen, tries;
    optout_link_t  got;
    unsigned char  bin[400], b2[400];

    static const char  extra[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        "=+/ .\n";

    rc = optout_token_encode(mac1, link, NULL, 0, tok, sizeof(tok), &n);
    if (!ok(rc == OPTOUT_OK, "%s: encode", what)) {
        return;
    }

    blen = b64_decode(tok, bin);

    /* every bit of every byte of the binary form */

    bad_ok = 0;
    bad_tag = 0;
    tries = 0;

    for (i = 0; i < blen; i++) {
        for (j = 0; j < 8; j++) {
            memcpy(b2, bin, blen);
            b2[i] ^= (unsigned char) (1 << j);
            b64_encode(b2, blen, t2);

            rc = optout_token_open(keys12, 2, NULL, 0, t2, strlen(t2), &got);
            tries++;

            if (rc == OPTOUT_OK) {
                bad_ok++;
                diag("accepted with byte %zu bit %zu flipped", i, j);
            }

            if (i >= blen - OPTOUT_TAG_LEN && rc != OPTOUT_ETAG) {
                bad_tag++;
                diag("tag byte %zu bit %zu flipped: rc %d", i, j, rc);
            }
        }
    }

    ok(bad_ok == 0 && tries == blen * 8,
       "%s: none of %zu single-bit flips accepted", what, tries);
    ok(bad_tag == 0, "%s: every tag bit flip -> ETAG", what);

    /* every bit of every character of the text form */

    bad_ok = 0;

    for (i = 0; i < n; i++) {
        for (j = 0; j < 8; j++) {
            memcpy(t2, tok, n + 1);
            t2[i] ^= (char) (1 << j);

            if (optout_token_open(keys12, 2, NULL, 0, t2, n, &got)
                == OPTOUT_OK)
            {
                bad_ok++;
                diag("accepted with char %zu bit %zu flipped", i, j);
            }
        }
    }

    ok(bad_ok == 0, "%s: no single-bit flip of the text accepted", what);

    /* truncations */

    bad_ok = 0;

    for (i = 0; i < n; i++) {
        if (optout_token_open(keys12, 2, NULL, 0, tok, i, &got)
            == OPTOUT_OK)
        {
            bad_ok++;
            diag("truncation to %zu accepted", i);
        }
    }

    ok(bad_ok == 0, "%s: all %zu truncations rejected", what, n);

    /* appended characters, one and two */

    bad_ok = 0;

    for (i = 0; i < sizeof(extra) - 1; i++) {
        memcpy(t2, tok, n);
        t2[n] = extra[i];
        t2[n + 1] = extra[i];

        if (optout_token_open(keys12, 2, NULL, 0, t2, n + 1, &got)
            == OPTOUT_OK
            || optout_token_open(keys12, 2, NULL, 0, t2, n + 2, &got)
               == OPTOUT_OK)
        {
            bad_ok++;
            diag("appended 0x%02x accepted", extra[i]);
        }
    }

    ok(bad_ok == 0, "%s: every appended character rejected", what);

    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_OK, "%s: original still accepted", what);
}


/* the namespace is bound into the tag and never carried in the token */

static void
test_token_namespace(void)
{
    int            rc;
    char           tok[OPTOUT_TOKEN_MAX + 1], plain[OPTOUT_TOKEN_MAX + 1];
    size_t         n, pn;
    optout_link_t  link, got;

    make_link(&link, 1, 42, "+447700900123", "ACME");

    rc = optout_token_encode(mac1, &link, NULL, 0, plain, sizeof(plain),
                             &pn);
    ok(rc == OPTOUT_OK, "token without namespace");

    rc = optout_token_encode(mac1, &link, "", 0, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_OK && n == pn && strcmp(tok, plain) == 0,
       "an empty namespace is no namespace");

    rc = optout_token_encode(mac1, &link, "tenant-a", 8, tok, sizeof(tok),
                             &n);
    ok(rc == OPTOUT_OK && n == pn && strcmp(tok, plain) != 0
       && memcmp(tok, plain, n - 22) == 0,
       "namespace changes the tag only, not the length (%s)", tok);

    rc = optout_token_open(keys12, 2, "tenant-a", 8, tok, n, &got);
    ok(rc == OPTOUT_OK && link_eq(&link, &got), "opens in its namespace");

    rc = optout_token_open(keys12, 2, "tenant-b", 8, tok, n, &got);
    ok(rc == OPTOUT_ETAG, "tag mismatch in another namespace (%d)", rc);

    rc = optout_token_open(keys12, 2, "tenant-", 7, tok, n, &got);
    ok(rc == OPTOUT_ETAG, "tag mismatch in a prefix of it (%d)", rc);

    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_ETAG, "tag mismatch without namespace (%d)", rc);

    rc = optout_token_open(keys12, 2, "tenant-a", 8, plain, pn, &got);
    ok(rc == OPTOUT_ETAG, "token without namespace refused in one (%d)",
       rc);

    rc = optout_token_open(keys12, 2, NULL, 0, plain, pn, &got);
    ok(rc == OPTOUT_OK, "token without namespace opens without one");

    rc = optout_token_encode(mac1, &link, "bad ns", 6, tok, sizeof(tok), &n);
    ok(rc == OPTOUT_ENAMESPACE, "encode: invalid namespace (%d)", rc);

    rc = optout_token_open(keys12, 2, "bad/ns", 6, plain, pn, &got);
    ok(rc == OPTOUT_ENAMESPACE, "open: invalid namespace (%d)", rc);
}


static void
test_token_decoder(void)
{
    int            rc;
    char           tok[OPTOUT_TOKEN_MAX + 8], t2[OPTOUT_TOKEN_MAX + 8];
    char           big[OPTOUT_TOKEN_MAX + 8];
    size_t         n, i;
    optout_key_t   k;
    optout_link_t  link, got;
    unsigned char  body[400];

    /* phone, account scope, 40 chars: no padding would be needed */

    make_link(&link, 1, 42, "+447700900123", NULL);
    test_token_tamper(&link, "phone token");

    make_link(&link, 1, UINT64_MAX, "john.doe@example.com", "ACME CO");
    test_token_tamper(&link, "email sender token");

    /* padding: a token whose length is not a multiple of 4 */

    make_link(&link, 1, 42, "a@b.co", NULL);
    optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
    ok(n % 4 != 0, "email token length %zu needs padding in base64", n);

    memcpy(t2, tok, n);
    for (i = n; i % 4; i++) {
        t2[i] = '=';
    }
    t2[i] = '\0';

    rc = optout_token_open(keys12, 2, NULL, 0, t2, i, &got);
    ok(rc == OPTOUT_EMALFORMED, "'=' padding rejected (%d)", rc);

    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_OK, "unpadded form accepted (%d)", rc);

    /* non-zero unused bits in the last character */

    memcpy(t2, tok, n + 1);
    t2[n - 1] = b64[(strchr(b64, tok[n - 1]) - b64) | 1];
    rc = optout_token_open(keys12, 2, NULL, 0, t2, n, &got);
    ok(rc == OPTOUT_EMALFORMED, "non-zero unused bits rejected (%d)", rc);

    /* characters outside the alphabet */

    memcpy(t2, tok, n + 1);
    t2[5] = '+';
    rc = optout_token_open(keys12, 2, NULL, 0, t2, n, &got);
    ok(rc == OPTOUT_EMALFORMED, "'+' rejected (%d)", rc);

    t2[5] = '/';
    rc = optout_token_open(keys12, 2, NULL, 0, t2, n, &got);
    ok(rc == OPTOUT_EMALFORMED, "'/' rejected (%d)", rc);

    t2[5] = '\0';
    rc = optout_token_open(keys12, 2, NULL, 0, t2, n, &got);
    ok(rc == OPTOUT_EMALFORMED, "NUL rejected (%d)", rc);

    /* length % 4 == 1 */

    rc = optout_token_open(keys12, 2, NULL, 0, "AAAAA", 5, &got);
    ok(rc == OPTOUT_EMALFORMED, "length %% 4 == 1 rejected (%d)", rc);

    rc = optout_token_open(keys12, 2, NULL, 0, "", 0, &got);
    ok(rc == OPTOUT_EMALFORMED, "empty token rejected (%d)", rc);

    /* too long */

    memset(big, 'A', sizeof(big));
    rc = optout_token_open(keys12, 2, NULL, 0, big, OPTOUT_TOKEN_MAX + 4,
                           &got);
    ok(rc == OPTOUT_EMALFORMED, "token longer than OPTOUT_TOKEN_MAX (%d)",
       rc);

    /* unknown key id, key rotation */

    make_link(&link, 3, 42, "+447700900123", NULL);
    optout_token_encode(mac3, &link, NULL, 0, tok, sizeof(tok), &n);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_EKEY, "unknown key id 3 -> EKEY (%d)", rc);

    k.id = 3;
    k.mac = mac3;
    rc = optout_token_open(&k, 1, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_OK && got.key_id == 3, "key id 3 with its key (%d)", rc);

    rc = optout_token_open(keys12, 0, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_EKEY, "no keys -> EKEY (%d)", rc);

    make_link(&link, 1, 9, "+447700900123", NULL);
    optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_OK && got.key_id == 1, "rotation: old key 1 verifies");

    make_link(&link, 2, 9, "+447700900123", NULL);
    optout_token_encode(mac2, &link, NULL, 0, tok, sizeof(tok), &n);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_OK && got.key_id == 2, "rotation: new key 2 verifies");

    rc = optout_token_open(&keys12[0], 1, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_EKEY, "key 2 token with only key 1 -> EKEY (%d)", rc);

    /* key id 2 but minted with key 1 */

    make_link(&link, 2, 9, "+447700900123", NULL);
    optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, n, &got);
    ok(rc == OPTOUT_ETAG, "key id 2 minted with key 1 -> ETAG (%d)", rc);

    /*
     * structural errors, each with a correct tag so that only the
     * structure check can refuse them
     */

    /* reference: 0x10 kid 1, campaign 42, +447700900123 */

    n = 0;
    body[n++] = 0x10;
    body[n++] = 1;
    body[n++] = 42;
    memcpy(body + n, "\x00\x00\x68\x3d\x0d\x99\x1b", 7);
    n += 7;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && strcmp(got.dest.data, "+447700900123") == 0
       && got.campaign == 42,
       "hand-built token accepted (%d, %s)", rc, got.dest.data);

    body[0] = 0x20;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EVERSION, "version 2 -> EVERSION (%d)", rc);

    body[0] = 0x00;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EVERSION, "version 0 -> EVERSION (%d)", rc);

    body[0] = 0x14;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "reserved bit 2 -> EMALFORMED (%d)", rc);

    body[0] = 0x18;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "reserved bit 3 -> EMALFORMED (%d)", rc);

    body[0] = 0x10;
    body[1] = 0;
    k.id = 0;
    k.mac = mac1;
    mint(mac1, body, n, tok);
    rc = optout_token_open(&k, 1, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "key id 0 -> EMALFORMED (%d)", rc);
    body[1] = 1;

    /* trailing byte */

    body[n] = 0;
    mint(mac1, body, n + 1, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "trailing byte -> EMALFORMED (%d)", rc);

    /* phone out of range: 9999999 and 10^15 */

    memcpy(body + 3, "\x00\x00\x00\x00\x98\x96\x7f", 7);
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "phone 9999999 -> EMALFORMED (%d)", rc);

    memcpy(body + 3, "\x00\x00\x00\x00\x98\x96\x80", 7);
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && strcmp(got.dest.data, "+10000000") == 0,
       "phone 10000000 accepted (%d)", rc);

    memcpy(body + 3, "\x03\x8d\x7e\xa4\xc6\x80\x00", 7);
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "phone 10^15 -> EMALFORMED (%d)", rc);

    memcpy(body + 3, "\x03\x8d\x7e\xa4\xc6\x7f\xff", 7);
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && strcmp(got.dest.data, "+999999999999999") == 0,
       "phone 10^15-1 accepted (%d)", rc);

    /* varints */

    n = 0;
    body[n++] = 0x10;
    body[n++] = 1;
    body[n++] = 0x80;
    body[n++] = 0x00;
    memcpy(body + n, "\x00\x00\x68\x3d\x0d\x99\x1b", 7);
    n += 7;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "non-minimal varint 0 -> EMALFORMED (%d)",
       rc);

    /* 2^64-1: nine 0xff and 0x01; 2^64: nine 0x80 and 0x02 */

    n = 0;
    body[n++] = 0x10;
    body[n++] = 1;
    memset(body + n, 0xff, 9);
    n += 9;
    body[n++] = 0x01;
    memcpy(body + n, "\x00\x00\x68\x3d\x0d\x99\x1b", 7);
    n += 7;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && got.campaign == UINT64_MAX,
       "varint 2^64-1 accepted (%d)", rc);

    body[2 + 9] = 0x03;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "varint > 2^64 -> EMALFORMED (%d)", rc);

    body[2 + 9] = 0x81;
    body[2 + 10] = 0x00;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "11-byte varint -> EMALFORMED (%d)", rc);

    /* emails and senders that are not in normal form */

    n = 0;
    body[n++] = 0x11;
    body[n++] = 1;
    body[n++] = 1;
    body[n++] = 7;
    memcpy(body + n, "a@b.com", 7);
    n += 7;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && strcmp(got.dest.data, "a@b.com") == 0
       && got.dest.type == OPTOUT_DEST_EMAIL,
       "hand-built email token accepted (%d)", rc);

    body[4] = 'A';
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "uppercase email -> EMALFORMED (%d)", rc);

    body[4] = ' ';
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "email with space -> EMALFORMED (%d)", rc);

    body[4] = 'a';
    body[3] = 8;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "email length past end -> EMALFORMED (%d)",
       rc);

    body[3] = 7;
    body[0] = 0x10;
    mint(mac1, body, n, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "email bytes as phone -> EMALFORMED (%d)",
       rc);

    body[0] = 0x13;
    body[n] = 4;
    memcpy(body + n + 1, "ACME", 4);
    mint(mac1, body, n + 5, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_OK && strcmp(got.sender, "ACME") == 0
       && got.sender_len == 4,
       "hand-built sender token accepted (%d)", rc);

    memcpy(body + n + 1, "acme", 4);
    mint(mac1, body, n + 5, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "lowercase sender -> EMALFORMED (%d)", rc);

    memcpy(body + n + 1, "ACM ", 4);
    mint(mac1, body, n + 5, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "sender with trailing space (%d)", rc);

    body[n] = 0;
    mint(mac1, body, n + 1, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "empty sender -> EMALFORMED (%d)", rc);

    body[0] = 0x11;
    body[n] = 4;
    memcpy(body + n + 1, "ACME", 4);
    mint(mac1, body, n + 5, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "sender without scope bit (%d)", rc);

    /* structure is checked before the key: malformed with unknown key */

    body[1] = 99;
    mint(mac1, body, n + 5, tok);
    rc = optout_token_open(keys12, 2, NULL, 0, tok, strlen(tok), &got);
    ok(rc == OPTOUT_EMALFORMED, "structure before key lookup (%d)", rc);
}


/* vectors */

typedef struct {
    const char  *kind;
    const char  *key;
    unsigned     kid;
    uint64_t     campaign;
    const char  *sender;
    const char  *dest;
    const char  *ns;
} vector_t;


static const vector_t  vectors[] = {
    { "token", KEY1, 1, 42, NULL, "+447700900123", NULL },
    { "token", KEY1, 1, 4294967295ULL, NULL, "+123456789012345", NULL },
    { "token", KEY1, 1, 0, NULL, "+14155550100", NULL },
    { "token", KEY1, 1, 7, NULL, "john.doe@example.com", NULL },
    { "token", KEY2, 2, 1000, "ACME", "+14155550100", NULL },
    { "token", KEY2, 2, 300, "ACME CO", "jane+news@mail.example.org", NULL },
    { "token", KEY1, 1, 5, "+447700900001", "+33612345678", NULL },
    { "token", KEY2, 255, UINT64_MAX, NULL, "+33612345678", NULL },
    { "token", KEY1, 17, 1763900000123ULL, "12345", "a@b.co", NULL },
    { "token", KEY1, 1, 42, NULL, "+447700900123", "tenant-a" },
    { "token", KEY1, 1, 42, NULL, "+447700900123", "tenant-b" },
    { "token", KEY2, 2, 300, "ACME CO", "jane+news@mail.example.org",
      "eu:shop" },
    { "token", KEY1, 9, 7, "+447700900001", "a@b.co",
      "0123456789012345678901234567890123456789012345678901234567890123" },
    { "storekey", STORE_KEY, 0, 0, NULL, "+447700900123", NULL },
    { "storekey", STORE_KEY, 0, 0, NULL, "+447700900123", "tenant-1" },
    { "storekey", STORE_KEY, 0, 0, "ACME", "+447700900123", NULL },
    { "storekey", STORE_KEY, 0, 0, NULL, "john.doe@example.com", NULL },
    { "storekey", STORE_KEY, 0, 0, "ACME CO", "john.doe@example.com",
      "eu:shop" },
    { "storekey", KEY1, 0, 0, "+447700900001", "+33612345678", "t.1_x" },
};


static int
vector_compute(const char *kind, const char *key, unsigned kid,
    uint64_t campaign, const char *sender, const char *dest, const char *ns,
    char *out, size_t size)
{
    int            rc;
    size_t         n;
    optout_mac_t  *mac;
    optout_link_t  link;

    mac = optout_mac_create((const unsigned char *) key, strlen(key));
    if (mac == NULL) {
        return OPTOUT_ECRYPTO;
    }

    make_link(&link, kid, campaign, dest, sender);

    if (strcmp(kind, "token") == 0) {
        rc = optout_token_encode(mac, &link, ns, ns ? strlen(ns) : 0, out,
                                 size, &n);

    } else {
        rc = optout_store_key(mac, NULL, 0, ns, ns ? strlen(ns) : 0,
                              link.sender, link.sender_len, &link.dest, out,
                              &n);
    }

    optout_mac_destroy(mac);

    return rc;
}


static int
gen_vectors(void)
{
    char           out[OPTOUT_TOKEN_MAX + 1];
    size_t         i;
    const vector_t *v;

    printf("# Test vectors for ngx_http_optout_module, generated by\n"
           "# \"build/test_core --gen-vectors\"; checked by build/test_core "
           "and t/02-vectors.t.\n"
           "# Tab-separated: kind key key_id campaign sender dest "
           "namespace expected\n"
           "#   kind      token (docs/token-format.md) or storekey "
           "(docs/store-format.md)\n"
           "#   key       HMAC key: the ASCII text as is (token: link key;"
           " storekey: store secret)\n"
           "#   key_id    token key id; - for storekey\n"
           "#   campaign  decimal; - for storekey\n"
           "#   sender    normalized sender id, - for account-wide\n"
           "#   dest      normalized destination\n"
           "#   namespace - for none\n"
           "#   expected  token, or store key with an empty prefix\n");

    for (i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        v = &vectors[i];

        if (vector_compute(v->kind, v->key, v->kid, v->campaign, v->sender,
                           v->dest, v->ns, out, sizeof(out))
            != OPTOUT_OK)
        {
            fprintf(stderr, "vector %zu failed\n", i);
            return 1;
        }

        if (strcmp(v->kind, "token") == 0) {
            printf("token\t%s\t%u\t%" PRIu64 "\t%s\t%s\t%s\t%s\n", v->key,
                   v->kid, v->campaign, v->sender ? v->sender : "-", v->dest,
                   v->ns ? v->ns : "-", out);

        } else {
            printf("storekey\t%s\t-\t-\t%s\t%s\t%s\t%s\n", v->key,
                   v->sender ? v->sender : "-", v->dest,
                   v->ns ? v->ns : "-", out);
        }
    }

    return 0;
}


static void
test_vectors(const char *path)
{
    int            rc, ntoken, nstore, bad;
    char           line[LINE_MAX_], out[OPTOUT_TOKEN_MAX + 1];
    char          *f[9], *p, *nl;
    FILE          *fp;
    size_t         nf;
    unsigned long  kid;
    uint64_t       campaign;

    fp = fopen(path, "r");

    if (!ok(fp != NULL, "open vectors file %s", path)) {
        diag("%s", strerror(errno));
        return;
    }

    ntoken = 0;
    nstore = 0;
    bad = 0;

    while (fgets(line, sizeof(line), fp)) {
        nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
        }

        if (line[0] == '#' || line[0] == '\0') {
            continue;
        }

        nf = 0;
        p = line;

        while (nf < 9) {
            f[nf++] = p;
            p = strchr(p, '\t');
            if (p == NULL) {
                break;
            }
            *p++ = '\0';
        }

        if (nf != 8) {
            ok(0, "vector line has %zu fields", nf);
            bad++;
            continue;
        }

        kid = strcmp(f[2], "-") ? strtoul(f[2], NULL, 10) : 0;
        campaign = strcmp(f[3], "-") ? strtoull(f[3], NULL, 10) : 0;

        rc = vector_compute(f[0], f[1], (unsigned) kid, campaign,
                            strcmp(f[4], "-") ? f[4] : NULL, f[5],
                            strcmp(f[6], "-") ? f[6] : NULL, out,
                            sizeof(out));

        if (strcmp(f[0], "token") == 0) {
            ntoken++;

        } else if (strcmp(f[0], "storekey") == 0) {
            nstore++;

        } else {
            bad++;
        }

        if (rc != OPTOUT_OK || strcmp(out, f[7]) != 0) {
            bad++;
            diag("vector %s %s %s: got \"%s\" (rc %d), want \"%s\"",
                 f[0], f[5], f[3], out, rc, f[7]);
        }
    }

    fclose(fp);

    ok(bad == 0 && ntoken >= 6 && nstore >= 4,
       "vectors reproduced (%d tokens, %d store keys)", ntoken, nstore);
}


/* store keys, rules, journal */

static void
test_store_key(void)
{
    int            rc;
    char           out[OPTOUT_STORE_KEY_MAX + 1];
    char           out2[OPTOUT_STORE_KEY_MAX + 1];
    char           prefix[80];
    size_t         n, n2, i;
    optout_dest_t  d, e;

    static const char  badc[] = { ' ', '\t', '\0', 0x7f, (char) 0x80 };

    optout_normalize_dest("+447700900123", 13, &d);
    optout_normalize_dest("john.doe@example.com", 20, &e);

    rc = optout_store_key(smac, "oo:", 3, NULL, 0, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_OK && n == 3 + OPTOUT_HASH_HEX && strlen(out) == n
       && strncmp(out, "oo:", 3) == 0
       && strspn(out + 3, "0123456789abcdef") == OPTOUT_HASH_HEX,
       "store key: prefix + 32 lowercase hex (%s)", out);

    rc = optout_store_key(smac, NULL, 0, NULL, 0, NULL, 0, &d, out2, &n2);
    ok(rc == OPTOUT_OK && n2 == 32 && strcmp(out2, out + 3) == 0,
       "store key: prefix only prepended");

    rc = optout_store_key(smac, NULL, 0, "t1", 2, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_OK && strcmp(out, out2) != 0,
       "store key depends on the namespace");

    rc = optout_store_key(smac, NULL, 0, NULL, 0, "ACME", 4, &d, out, &n);
    ok(rc == OPTOUT_OK && strcmp(out, out2) != 0,
       "store key depends on the scope");

    rc = optout_store_key(smac, NULL, 0, NULL, 0, NULL, 0, &e, out, &n);
    ok(rc == OPTOUT_OK && strcmp(out, out2) != 0,
       "store key depends on the destination");

    rc = optout_store_key(mac1, NULL, 0, NULL, 0, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_OK && strcmp(out, out2) != 0,
       "store key depends on the secret");

    memset(prefix, 'p', sizeof(prefix));
    rc = optout_store_key(smac, prefix, 64, NULL, 0, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_OK && n == OPTOUT_STORE_KEY_MAX,
       "64-char prefix: %zu chars", n);

    rc = optout_store_key(smac, prefix, 65, NULL, 0, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_ETOOLONG, "65-char prefix -> ETOOLONG (%d)", rc);

    for (i = 0; i < sizeof(badc); i++) {
        prefix[1] = badc[i];
        rc = optout_store_key(smac, prefix, 4, NULL, 0, NULL, 0, &d, out, &n);
        ok(rc == OPTOUT_EMALFORMED, "prefix with 0x%02x -> EMALFORMED (%d)",
           (unsigned char) badc[i], rc);
    }

    rc = optout_store_key(smac, NULL, 0, "a b", 3, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_ENAMESPACE, "bad namespace -> ENAMESPACE (%d)", rc);

    rc = optout_store_key(smac, NULL, 0, NULL, 0, "acme", 4, &d, out, &n);
    ok(rc == OPTOUT_ESENDER, "lowercase sender -> ESENDER (%d)", rc);

    d.data[3] = ' ';
    rc = optout_store_key(smac, NULL, 0, NULL, 0, NULL, 0, &d, out, &n);
    ok(rc == OPTOUT_EDEST, "bad dest -> EDEST (%d)", rc);
}


static void
test_rule(void)
{
    int            rc;
    char           out[OPTOUT_VALUE_MAX];
    size_t         n, i;
    optout_rule_t  r, g;

    static const char  *bad[] = {
        "",
        "1 42 1763900000 link sms",
        "1 42 1763900000 link sms 1 x",
        "2 42 1763900000 link sms 1",
        "1 +42 1763900000 link sms 1",
        "1 -42 1763900000 link sms 1",
        "1 042 1763900000 link sms 1",
        "1 4x2 1763900000 link sms 1",
        "1 18446744073709551616 1763900000 link sms 1",
        "1 42 -1 link sms 1",
        "1 42 9223372036854775808 link sms 1",
        "1 42 1763900000 web sms 1",
        "1 42 1763900000 Link sms 1",
        "1 42 1763900000 link fax 1",
        "1 42 1763900000 link sms 256",
        "1 42 1763900000 link sms -1",
        "1  42 1763900000 link sms 1",
        " 1 42 1763900000 link sms 1",
        "1 42 1763900000 link sms 1 ",
        "1 42 1763900000 link sms 1\n",
        "1 42 1763900000 link sms 1\r\n",
        "1\t42 1763900000 link sms 1",
        "01 42 1763900000 link sms 1",
    };

    r.campaign = 42;
    r.time = 1763900000;
    r.source = OPTOUT_SOURCE_LINK;
    r.channel = OPTOUT_DEST_PHONE;
    r.key_id = 1;

    n = optout_rule_format(&r, out);
    ok(n == strlen(out) && strcmp(out, "1 42 1763900000 link sms 1") == 0,
       "rule format \"%s\"", out);

    memset(&g, 0, sizeof(g));
    rc = optout_rule_parse(out, n, &g);
    ok(rc == OPTOUT_OK && g.campaign == 42 && g.time == 1763900000
       && g.source == OPTOUT_SOURCE_LINK && g.channel == OPTOUT_DEST_PHONE
       && g.key_id == 1, "rule parse round-trips");

    r.campaign = UINT64_MAX;
    r.time = INT64_MAX;
    r.source = OPTOUT_SOURCE_KEYWORD;
    r.channel = OPTOUT_DEST_EMAIL;
    r.key_id = 255;
    n = optout_rule_format(&r, out);
    ok(strcmp(out, "1 18446744073709551615 9223372036854775807 keyword "
                   "email 255") == 0 && n < OPTOUT_VALUE_MAX,
       "rule format extremes \"%s\"", out);

    rc = optout_rule_parse(out, n, &g);
    ok(rc == OPTOUT_OK && g.campaign == UINT64_MAX && g.time == INT64_MAX
       && g.source == OPTOUT_SOURCE_KEYWORD && g.channel == OPTOUT_DEST_EMAIL
       && g.key_id == 255, "rule parse extremes");

    rc = optout_rule_parse("1 0 0 replay email 0", 20, &g);
    ok(rc == OPTOUT_OK && g.campaign == 0 && g.time == 0 && g.key_id == 0
       && g.source == OPTOUT_SOURCE_REPLAY, "rule parse zeros");

    rc = optout_rule_parse("1 7 100 api sms 3 junk", 17, &g);
    ok(rc == OPTOUT_OK && g.key_id == 3 && g.source == OPTOUT_SOURCE_API,
       "rule parse stops at len");

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = optout_rule_parse(bad[i], strlen(bad[i]), &g);
        ok(rc == OPTOUT_EVALUE, "rule \"%s\" -> EVALUE (%d)", bad[i], rc);
    }

    r.time = -1;
    ok(optout_rule_format(&r, out) == 0, "rule format refuses time -1");

    r.time = 1;
    r.source = 5;
    ok(optout_rule_format(&r, out) == 0, "rule format refuses source 5");

    ok(strcmp(optout_source_name(OPTOUT_SOURCE_LINK), "link") == 0
       && strcmp(optout_source_name(OPTOUT_SOURCE_API), "api") == 0
       && strcmp(optout_source_name(OPTOUT_SOURCE_KEYWORD), "keyword") == 0
       && strcmp(optout_source_name(OPTOUT_SOURCE_REPLAY), "replay") == 0
       && strcmp(optout_source_name(OPTOUT_SOURCE_IMPORT), "import") == 0,
       "source names");

    ok(optout_source_parse("link", 4) == OPTOUT_SOURCE_LINK
       && optout_source_parse("api", 3) == OPTOUT_SOURCE_API
       && optout_source_parse("keyword", 7) == OPTOUT_SOURCE_KEYWORD
       && optout_source_parse("replay", 6) == OPTOUT_SOURCE_REPLAY
       && optout_source_parse("import", 6) == OPTOUT_SOURCE_IMPORT
       && optout_source_parse("lin", 3) == -1
       && optout_source_parse("links", 5) == -1
       && optout_source_parse("LINK", 4) == -1
       && optout_source_parse("", 0) == -1,
       "source parse");

    ok(strcmp(optout_channel_name(OPTOUT_DEST_PHONE), "sms") == 0
       && strcmp(optout_channel_name(OPTOUT_DEST_EMAIL), "email") == 0,
       "channel names");
}


static void
test_journal(void)
{
    char                  out[1024];
    size_t                n, need;
    optout_dest_t         d, e;
    optout_journal_rec_t  rec;

    static const char  *want1 =
        "{\"t\":1763900000.123,\"action\":\"optout\",\"ns\":\"\","
        "\"dest\":\"+447700900123\",\"scope\":\"account\","
        "\"campaign\":\"42\",\"source\":\"link\",\"channel\":\"sms\","
        "\"client\":\"127.0.0.1\",\"kid\":1}\n";

    static const char  *want2 =
        "{\"t\":1763900001.500,\"action\":\"optin\",\"ns\":\"eu:shop\","
        "\"dest\":\"john.doe@example.com\",\"scope\":\"sender\","
        "\"sender\":\"ACME&CO\",\"campaign\":\"18446744073709551615\","
        "\"source\":\"api\",\"channel\":\"email\","
        "\"client\":\"a\\\"b\\\\c\\u000a\\u0001\\u007f\\ufffd\xc3\xa9\",\"kid\":0}\n";

    optout_normalize_dest("+447700900123", 13, &d);
    optout_normalize_dest("john.doe@example.com", 20, &e);

    memset(&rec, 0, sizeof(rec));
    rec.time = 1763900000.123;
    rec.action = "optout";
    rec.ns = "";
    rec.ns_len = 0;
    rec.dest = &d;
    rec.campaign = 42;
    rec.source = OPTOUT_SOURCE_LINK;
    rec.client = "127.0.0.1";
    rec.client_len = 9;
    rec.key_id = 1;

    n = optout_journal_format(&rec, out, sizeof(out));
    if (!ok(n == strlen(want1) && strcmp(out, want1) == 0,
            "journal line, account scope"))
    {
        diag("got %s", out);
    }

    need = n + 1;
    n = optout_journal_format(&rec, out, need);
    ok(n == need - 1 && strcmp(out, want1) == 0, "journal exact fit");

    rec.user = "ops\"x";
    rec.user_len = 5;
    n = optout_journal_format(&rec, out, sizeof(out));
    ok(n > 0 && strstr(out, "\"client\":\"127.0.0.1\",\"user\":\"ops\\\"x\","
                             "\"kid\":1}\n") != NULL,
       "journal line with a user");
    rec.user = NULL;
    rec.user_len = 0;

    n = optout_journal_format(&rec, out, need - 1);
    ok(n == 0 && out[0] == '\0', "journal one byte short -> 0");

    rec.time = 1763900001.5;
    rec.action = "optin";
    rec.ns = "eu:shop";
    rec.ns_len = 7;
    rec.dest = &e;
    rec.sender = "ACME&CO";
    rec.sender_len = 7;
    rec.campaign = UINT64_MAX;
    rec.source = OPTOUT_SOURCE_API;
    rec.client = "a\"b\\c\n\x01\x7f\xe9\xc3\xa9";
    rec.client_len = 11;
    rec.key_id = 0;

    n = optout_journal_format(&rec, out, sizeof(out));
    if (!ok(n == strlen(want2) && strcmp(out, want2) == 0,
            "journal line, sender scope, escaping, 64-bit campaign"))
    {
        diag("got %s", out);
    }
}


/* keys */

static int
write_file(const char *path, const char *data, size_t len, mode_t mode)
{
    int  fd;

    unlink(path);

    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd == -1) {
        return -1;
    }

    if (write(fd, data, len) != (ssize_t) len) {
        close(fd);
        return -1;
    }

    close(fd);

    return chmod(path, mode);
}


static void
test_key_load(void)
{
    int            rc;
    char           dir[] = "/tmp/optout-test-XXXXXX";
    char           path[256], err[512], want[1024], big[5000];
    size_t         len;
    unsigned char  buf[OPTOUT_KEY_MAX];

    static const char  hex64[] =
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    if (mkdtemp(dir) == NULL) {
        ok(0, "mkdtemp: %s", strerror(errno));
        return;
    }

    snprintf(path, sizeof(path), "%s/missing.key", dir);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    snprintf(want, sizeof(want),
             "cannot open key file \"%s\": No such file or directory", path);
    ok(rc == OPTOUT_EKEYFILE && strcmp(err, want) == 0,
       "missing key file: %s", err);

    snprintf(path, sizeof(path), "%s/k.key", dir);

    write_file(path, "0123456789ab\n", 13, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    snprintf(want, sizeof(want),
             "key file \"%s\" holds 12 bytes, at least 32 are required", path);
    ok(rc == OPTOUT_EKEYFILE && strcmp(err, want) == 0,
       "short key file: %s", err);

    write_file(path, hex64, 64, 0644);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    snprintf(want, sizeof(want),
             "key file \"%s\" is accessible by group or others (mode 0644), "
             "run \"chmod 600 %s\"", path, path);
    ok(rc == OPTOUT_EKEYFILE && strcmp(err, want) == 0,
       "mode 0644 key file: %s", err);

    write_file(path, hex64, 64, 0604);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE && strstr(err, "(mode 0604)") != NULL,
       "mode 0604 key file refused");

    write_file(path, hex64, 64, 0640);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE, "mode 0640 key file refused");

    write_file(path, hex64, 64, 0600);
    len = 0;
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 64 && memcmp(buf, hex64, 64) == 0,
       "mode 0600 key file loaded");

    write_file(path, hex64, 64, 0400);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 64, "mode 0400 key file loaded");

    memcpy(big, hex64, 64);
    memcpy(big + 64, "\n", 1);
    write_file(path, big, 65, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 64 && memcmp(buf, hex64, 64) == 0,
       "trailing newline stripped");

    memcpy(big + 64, "\r\n\r\n", 4);
    write_file(path, big, 68, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 64, "trailing CR LF stripped");

    memcpy(big + 64, " \n", 2);
    write_file(path, big, 66, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 65 && buf[64] == ' ',
       "other trailing bytes kept");

    memset(big, 'k', 4096);
    big[4096] = '\n';
    write_file(path, big, 4097, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_OK && len == 4096, "4096-byte key loaded");

    memset(big, 'k', sizeof(big));
    write_file(path, big, 4097, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE && strstr(err, "4097 bytes") != NULL,
       "4097-byte key refused: %s", err);

    write_file(path, big, sizeof(big), 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE, "5000-byte key refused: %s", err);

    write_file(path, "", 0, 0600);
    rc = optout_key_load(path, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE && strstr(err, "holds 0 bytes") != NULL,
       "empty key file refused: %s", err);

    unlink(path);

    rc = optout_key_load(dir, buf, &len, err, sizeof(err));
    ok(rc == OPTOUT_EKEYFILE && strstr(err, "not a regular file") != NULL,
       "directory refused: %s", err);

    rc = optout_key_load(dir, buf, &len, NULL, 0);
    ok(rc == OPTOUT_EKEYFILE, "no err buffer");

    rmdir(dir);
}


static void
test_mac(void)
{
    int            rc;
    char           hex[65];
    size_t         i, j;
    unsigned char  md[32];
    optout_mac_t  *m, *d;

    static const char  *want =
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    /* RFC 4231 test case 2 */

    m = optout_mac_create((const unsigned char *) "Jefe", 4);

    if (!ok(m != NULL, "mac create")) {
        return;
    }

    for (i = 0; i < 2; i++) {
        memset(md, 0, sizeof(md));
        rc = optout_mac_compute(m,
                 (const unsigned char *) "what do ya want for nothing?", 28,
                 md);

        for (j = 0; j < 32; j++) {
            snprintf(hex + 2 * j, 3, "%02x", md[j]);
        }

        ok(rc == OPTOUT_OK && strcmp(hex, want) == 0,
           "RFC 4231 case 2, pass %zu", i + 1);
    }

    /* a duplicate, as a batch check's thread uses, outlives the original */

    d = optout_mac_dup(m);
    optout_mac_destroy(m);

    if (ok(d != NULL, "mac dup")) {
        memset(md, 0, sizeof(md));
        rc = optout_mac_compute(d,
                 (const unsigned char *) "what do ya want for nothing?", 28,
                 md);

        for (j = 0; j < 32; j++) {
            snprintf(hex + 2 * j, 3, "%02x", md[j]);
        }

        ok(rc == OPTOUT_OK && strcmp(hex, want) == 0,
           "RFC 4231 case 2 with a duplicated mac");
        optout_mac_destroy(d);
    }

    optout_mac_destroy(NULL);

    ok(optout_mac_create((const unsigned char *) "", 0) == NULL,
       "empty key refused");
}


static void
test_strerror(void)
{
    int          rc, bad;
    const char  *s, *p;

    bad = 0;

    for (rc = OPTOUT_EKEYFILE; rc <= OPTOUT_OK; rc++) {
        s = optout_strerror(rc);

        if (s == NULL || s[0] == '\0' || strcmp(s, "unknown error") == 0) {
            bad++;
            continue;
        }

        for (p = s; *p; p++) {
            if (*p >= 'A' && *p <= 'Z') {
                bad++;
            }
        }
    }

    ok(bad == 0, "strerror has lowercase text for every code");
    ok(strcmp(optout_strerror(-100), "unknown error") == 0,
       "strerror of an unknown code");
    ok(strcmp(optout_strerror(OPTOUT_ETAG), optout_strerror(OPTOUT_EKEY))
       != 0, "strerror texts differ");
}


static void
bench(void)
{
    int              rc;
    char             tok[OPTOUT_TOKEN_MAX + 1];
    size_t           i, n, count;
    double           t;
    optout_link_t    link, got;
    struct timespec  a, b;

    count = 200000;

    make_link(&link, 1, 0, "+447700900123", NULL);

    clock_gettime(CLOCK_MONOTONIC, &a);

    for (i = 0; i < count; i++) {
        link.campaign = i;
        rc = optout_token_encode(mac1, &link, NULL, 0, tok, sizeof(tok), &n);
        if (rc != OPTOUT_OK) {
            break;
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &b);

    t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    diag("encode: %zu tokens in %.3f s, %.0f tokens/s", i, t, i / t);

    clock_gettime(CLOCK_MONOTONIC, &a);

    for (i = 0; i < count; i++) {
        if (optout_token_open(keys12, 2, NULL, 0, tok, n, &got) != OPTOUT_OK) {
            break;
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &b);

    t = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    diag("open: %zu tokens in %.3f s, %.0f tokens/s", i, t, i / t);
}


int
main(int argc, char **argv)
{
    const char  *path;

    mac1 = optout_mac_create((const unsigned char *) KEY1, strlen(KEY1));
    mac2 = optout_mac_create((const unsigned char *) KEY2, strlen(KEY2));
    mac3 = optout_mac_create((const unsigned char *) "key three, long enough "
                             "for a test key", 37);
    smac = optout_mac_create((const unsigned char *) STORE_KEY,
                             strlen(STORE_KEY));

    if (mac1 == NULL || mac2 == NULL || mac3 == NULL || smac == NULL) {
        printf("Bail out! cannot create HMAC contexts\n");
        return 1;
    }

    keys12[0].id = 1;
    keys12[0].mac = mac1;
    keys12[1].id = 2;
    keys12[1].mac = mac2;

    if (argc > 1 && strcmp(argv[1], "--gen-vectors") == 0) {
        return gen_vectors();
    }

    path = argc > 1 ? argv[1] : getenv("OPTOUT_VECTORS");
    if (path == NULL) {
        path = "tests/vectors.txt";
    }

    test_strerror();
    test_mac();
    test_dest();
    test_sender();
    test_namespace();
    test_mask();
    test_token_roundtrip();
    test_token_encode_errors();
    test_token_namespace();
    test_token_decoder();
    test_vectors(path);
    test_store_key();
    test_rule();
    test_journal();
    test_key_load();
    bench();

    optout_mac_destroy(mac1);
    optout_mac_destroy(mac2);
    optout_mac_destroy(mac3);
    optout_mac_destroy(smac);

    printf("1..%d\n", tests);

    if (failures) {
        printf("# %d of %d tests failed\n", failures, tests);
    }

    return failures ? 1 : 0;
}
