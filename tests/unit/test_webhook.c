/*
 * Unit tests of the webhook verifiers and the form decoder
 * (src/optout_webhook.h), TAP output.
 *
 *   build/test_webhook [tests/webhook-vectors.txt]
 *
 * The vectors come from tests/gen-webhook-vectors.py (an independent
 * implementation); Twilio's documented example is also checked against
 * the literal value Twilio publishes.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "optout_webhook.h"
#include "tap.h"


#define VEC_MAX     64
#define PARAMS_MAX  64

#define TWILIO_DOC_URL  "https://mycompany.com/myapp.php?foo=1&bar=2"
#define TWILIO_DOC_SIG  "GvWf1cFY/Q7PnoempGyD5oXAezc="
#define TWILIO_OLD_SIG  "RSOYDt4T1cUTdK1PDd93/VVr8B8="


static struct {
    char   *name;
    char   *value;
} vec[VEC_MAX];

static size_t  nvec;


static int
is_rc(optout_wh_rc_t got, optout_wh_rc_t want, const char *what)
{
    return ok(got == want, "%s: %s (want %s)", what, optout_wh_strerror(got),
              optout_wh_strerror(want));
}


static void
load_vectors(const char *path)
{
    FILE  *f;
    char   line[2048], *sp;
    size_t len;

    f = fopen(path, "r");
    if (f == NULL) {
        printf("Bail out! cannot open %s\n", path);
        exit(1);
    }

    while (fgets(line, sizeof(line), f) != NULL) {
        len = strlen(line);

        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
            line[--len] = '\0';
        }

        if (len == 0 || line[0] == '#') {
            continue;
        }

        sp = strchr(line, ' ');
        if (sp == NULL || nvec == VEC_MAX) {
            printf("Bail out! bad vector line \"%s\"\n", line);
            exit(1);
        }

        *sp = '\0';
        vec[nvec].name = strdup(line);
        vec[nvec].value = strdup(sp + 1);

        if (vec[nvec].name == NULL || vec[nvec].value == NULL) {
            printf("Bail out! out of memory\n");
            exit(1);
        }

        nvec++;
    }

    fclose(f);
}


static const char *
v(const char *name)
{
    size_t  i;

    for (i = 0; i < nvec; i++) {
        if (strcmp(vec[i].name, name) == 0) {
            return vec[i].value;
        }
    }

    printf("Bail out! vector \"%s\" missing\n", name);
    exit(1);
}


/* decodes a form and verifies it as Twilio would */

static optout_wh_rc_t
twilio_form(const char *token, const char *url, const char *body,
    const char *sig)
{
    char               buf[4096];
    size_t             n;
    optout_wh_rc_t     rc;
    optout_wh_param_t  params[PARAMS_MAX];

    rc = optout_wh_form_decode(body, strlen(body), buf, params, PARAMS_MAX,
                               &n);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    return optout_wh_twilio_verify((const unsigned char *) token,
                                   strlen(token), url, strlen(url), params,
                                   n, sig, strlen(sig));
}


static char *
replace(const char *s, const char *from, const char *to)
{
    char        *out;
    const char  *p;

    p = strstr(s, from);
    if (p == NULL) {
        printf("Bail out! \"%s\" not in \"%s\"\n", from, s);
        exit(1);
    }

    out = malloc(strlen(s) + strlen(to) + 1);
    if (out == NULL) {
        exit(1);
    }

    sprintf(out, "%.*s%s%s", (int) (p - s), s, to, p + strlen(from));

    return out;
}


/* the same string with its character at i changed */

static char *
flip(const char *s, size_t i)
{
    char  *out;

    out = strdup(s);
    if (out == NULL) {
        exit(1);
    }

    out[i] = out[i] == 'A' ? 'B' : 'A';

    return out;
}


static void
test_form(void)
{
    char               buf[256];
    size_t             n;
    optout_wh_rc_t     rc;
    optout_wh_param_t  p[8];

#define DECODE(s, max)                                                       \
    optout_wh_form_decode(s, sizeof(s) - 1, buf, p, max, &n)

    rc = DECODE("a=1&a=2&b", 8);
    ok(rc == OPTOUT_WH_OK && n == 3
       && p[0].name_len == 1 && p[0].value_len == 1 && p[0].value[0] == '1'
       && p[1].name[0] == 'a' && p[1].value[0] == '2'
       && p[2].name[0] == 'b' && p[2].value_len == 0,
       "form: repeated names kept in order, a name without \"=\"");

    rc = DECODE("x=+%2B%20%41%4a%4A", 8);
    ok(rc == OPTOUT_WH_OK && n == 1 && p[0].value_len == 6
       && memcmp(p[0].value, " + AJJ", 6) == 0,
       "form: \"+\" is a space, %%XX in either case");

    rc = DECODE("a=b%26c%3Dd", 8);
    ok(rc == OPTOUT_WH_OK && n == 1 && p[0].value_len == 5
       && memcmp(p[0].value, "b&c=d", 5) == 0,
       "form: encoded \"&\" and \"=\" stay in the value");

    rc = DECODE("a==b&=x", 8);
    ok(rc == OPTOUT_WH_OK && n == 2 && p[0].value_len == 2
       && memcmp(p[0].value, "=b", 2) == 0 && p[1].name_len == 0
       && p[1].value_len == 1,
       "form: a second \"=\" belongs to the value, an empty name is kept");

    rc = DECODE("&&a=1&", 8);
    ok(rc == OPTOUT_WH_OK && n == 1, "form: empty pairs skipped");

    rc = DECODE("k=%00z", 8);
    ok(rc == OPTOUT_WH_OK && n == 1 && p[0].value_len == 2
       && p[0].value[0] == '\0' && p[0].value[1] == 'z',
       "form: %%00 decodes to a NUL byte, lengths are counted");

    rc = DECODE("", 8);
    ok(rc == OPTOUT_WH_OK && n == 0, "form: empty body");

    is_rc(DECODE("a=%4", 8), OPTOUT_WH_FORM, "form: truncated escape");
    is_rc(DECODE("a=%", 8), OPTOUT_WH_FORM, "form: lone %");
    is_rc(DECODE("a=%G1", 8), OPTOUT_WH_FORM, "form: non-hex escape");
    is_rc(DECODE("%zz=1", 8), OPTOUT_WH_FORM, "form: bad escape in a name");
    is_rc(DECODE("a=1&b=2&c=3", 2), OPTOUT_WH_TOOMANY,
          "form: more parameters than allowed");

#undef DECODE
}


static void
test_twilio(void)
{
    char               *s;
    const char         *tok, *url, *body, *sig;
    optout_wh_rc_t      rc;
    optout_wh_param_t   doc[5] = {
        { "To", 2, "+18005551212", 12 },
        { "From", 4, "+14158675310", 12 },
        { "Digits", 6, "1234", 4 },
        { "CallSid", 7, "CA1234567890ABCDE", 17 },
        { "Caller", 6, "+14158675310", 12 },
    };

    ok(strcmp(v("twilio_doc_sig"), TWILIO_DOC_SIG) == 0,
       "twilio: the independent vector equals the documented signature");

    rc = optout_wh_twilio_verify((const unsigned char *) "12345", 5,
                                 TWILIO_DOC_URL, strlen(TWILIO_DOC_URL),
                                 doc, 5, TWILIO_DOC_SIG,
                                 strlen(TWILIO_DOC_SIG));
    is_rc(rc, OPTOUT_WH_OK, "twilio: documented example, unsorted input");

    /* the call sorted doc: CallSid, Caller, Digits, From, To */
    doc[1].value = "+14158675309";
    doc[3].value = "+14158675309";

    rc = optout_wh_twilio_verify((const unsigned char *) "12345", 5,
                                 TWILIO_DOC_URL, strlen(TWILIO_DOC_URL),
                                 doc, 5, TWILIO_OLD_SIG,
                                 strlen(TWILIO_OLD_SIG));
    is_rc(rc, OPTOUT_WH_OK, "twilio: the older documented example");

    rc = optout_wh_twilio_verify((const unsigned char *) "12346", 5,
                                 TWILIO_DOC_URL, strlen(TWILIO_DOC_URL),
                                 doc, 5, TWILIO_OLD_SIG,
                                 strlen(TWILIO_OLD_SIG));
    is_rc(rc, OPTOUT_WH_MISMATCH, "twilio: wrong auth token");

    tok = v("twilio_form_token");
    url = v("twilio_form_url");
    body = v("twilio_form_body");
    sig = v("twilio_form_sig");

    is_rc(twilio_form(tok, url, body, sig), OPTOUT_WH_OK,
          "twilio: inbound SMS form");

    s = replace(body, "Tag=b&Tag=a", "Tag=a&Tag=b");
    is_rc(twilio_form(tok, url, s, sig), OPTOUT_WH_OK,
          "twilio: repeated name in another order");
    free(s);

    s = replace(body, "ToCountry=US&", "");
    s = realloc(s, strlen(s) + 20);
    strcat(s, "&ToCountry=US");
    is_rc(twilio_form(tok, url, s, sig), OPTOUT_WH_OK,
          "twilio: parameters in another order");
    free(s);

    s = replace(body, "Tag=b&Tag=a", "Tag=b&Tag=a&Tag=a");
    is_rc(twilio_form(tok, url, s, sig), OPTOUT_WH_MISMATCH,
          "twilio: a parameter given twice");
    free(s);

    s = replace(body, "Body=Stop+please%21", "Body=START");
    is_rc(twilio_form(tok, url, s, sig), OPTOUT_WH_MISMATCH,
          "twilio: modified body");
    free(s);

    s = replace(body, "Body=Stop+please%21", "Body=Stop%20please%21");
    is_rc(twilio_form(tok, url, s, sig), OPTOUT_WH_OK,
          "twilio: the decoded values are signed, not the encoding");
    free(s);

    s = replace(url, "site=eu", "site=us");
    is_rc(twilio_form(tok, s, body, sig), OPTOUT_WH_MISMATCH,
          "twilio: modified URL query");
    free(s);

    s = replace(url, "https:", "http:");
    is_rc(twilio_form(tok, s, body, sig), OPTOUT_WH_MISMATCH,
          "twilio: modified URL scheme");
    free(s);

    s = flip(sig, 5);
    is_rc(twilio_form(tok, url, body, s), OPTOUT_WH_MISMATCH,
          "twilio: wrong signature");
    free(s);

    s = strdup(sig);
    s[26] = 'J';                        /* low bits set before one "=" */
    is_rc(twilio_form(tok, url, body, s), OPTOUT_WH_MALFORMED,
          "twilio: signature with non-canonical last character");
    free(s);

    is_rc(twilio_form(tok, url, body, ""), OPTOUT_WH_MISSING,
          "twilio: no signature");
    is_rc(twilio_form(tok, url, body, "bN875SYK5kbvQARQ8bXBlnUXZEI"),
          OPTOUT_WH_MALFORMED, "twilio: signature without padding");
    is_rc(twilio_form(tok, url, body, "bN875SYK5kbvQARQ8bXBlnUXZEI= "),
          OPTOUT_WH_MALFORMED, "twilio: signature with a trailing space");
    is_rc(twilio_form(tok, url, body, "bN875SYK-kbvQARQ8bXBlnUXZEI="),
          OPTOUT_WH_MALFORMED, "twilio: signature in base64url");
    is_rc(twilio_form(tok, url, body, "AAAA"), OPTOUT_WH_MALFORMED,
          "twilio: signature of the wrong length");
}


static optout_wh_rc_t
twilio_json(const char *url, const char *body, const char *sig)
{
    const char  *tok;

    tok = v("twilio_form_token");

    return optout_wh_twilio_verify_body((const unsigned char *) tok,
                                        strlen(tok), url, strlen(url),
                                        (const unsigned char *) body,
                                        strlen(body), sig, strlen(sig));
}


static void
test_twilio_json(void)
{
    char        *s;
    const char  *url, *body, *sig;

    url = v("twilio_json_url");
    body = v("twilio_json_body");
    sig = v("twilio_json_sig");

    is_rc(twilio_json(url, body, sig), OPTOUT_WH_OK,
          "twilio json: bodySHA256 variant");

    s = replace(body, "STOP", "START");
    is_rc(twilio_json(url, s, sig), OPTOUT_WH_BODY_HASH,
          "twilio json: modified body");
    free(s);

    s = flip(url, strlen(url) - 1);
    is_rc(twilio_json(s, body, sig), OPTOUT_WH_MISMATCH,
          "twilio json: modified bodySHA256 in the URL");
    free(s);

    s = flip(sig, 3);
    is_rc(twilio_json(url, body, s), OPTOUT_WH_MISMATCH,
          "twilio json: wrong signature");
    free(s);

    is_rc(twilio_json(v("twilio_badhash_url"), body,
                      v("twilio_badhash_sig")),
          OPTOUT_WH_BODY_HASH,
          "twilio json: signed bodySHA256 wrong in its last digit");

    is_rc(twilio_json(v("twilio_form_url"), body, v("twilio_nohash_sig")),
          OPTOUT_WH_BODY_HASH,
          "twilio json: a signed URL without bodySHA256");
}


static optout_wh_pkey_t *
key_file(const char *text, const char *what)
{
    int                fd;
    char               path[] = "/tmp/optout-wh-key-XXXXXX", err[256];
    optout_wh_pkey_t  *key;

    fd = mkstemp(path);
    if (fd == -1 || write(fd, text, strlen(text)) != (ssize_t) strlen(text))
    {
        printf("Bail out! cannot write %s\n", path);
        exit(1);
    }

    close(fd);

    key = optout_wh_pkey_load(path, err, sizeof(err));
    unlink(path);

    ok(key != NULL, "telnyx: key file, %s%s%s", what, key ? "" : ": ",
       key ? "" : err);

    return key;
}


static optout_wh_rc_t
telnyx(optout_wh_pkey_t *key, const char *ts, const char *body,
    const char *sig, time_t now)
{
    return optout_wh_telnyx_verify(key, ts, strlen(ts),
                                   (const unsigned char *) body,
                                   strlen(body), sig, strlen(sig), now,
                                   OPTOUT_WH_TOLERANCE);
}


static void
test_telnyx(void)
{
    char              *s, pem[512], raw[128];
    time_t             t;
    const char        *ts, *body, *sig;
    optout_wh_pkey_t  *key, *pemkey, *other;

    snprintf(raw, sizeof(raw), "%s\n", v("telnyx_pubkey_raw_b64"));
    snprintf(pem, sizeof(pem), "-----BEGIN PUBLIC KEY-----\n%s\n"
             "-----END PUBLIC KEY-----\n", v("telnyx_pubkey_spki_b64"));

    key = key_file(raw, "raw base64");
    pemkey = key_file(pem, "PEM");
    other = optout_wh_pkey_parse(v("telnyx_other_pubkey_raw_b64"),
                                 strlen(v("telnyx_other_pubkey_raw_b64")));

    if (key == NULL || pemkey == NULL || other == NULL) {
        printf("Bail out! telnyx keys\n");
        exit(1);
    }

    ts = v("telnyx_ts");
    body = v("telnyx_body");
    sig = v("telnyx_sig");
    t = (time_t) atoll(ts);

    is_rc(telnyx(key, ts, body, sig, t), OPTOUT_WH_OK, "telnyx: raw key");
    is_rc(telnyx(pemkey, ts, body, sig, t + 10), OPTOUT_WH_OK,
          "telnyx: PEM key, 10 s later");
    is_rc(telnyx(key, ts, body, sig, t + 300), OPTOUT_WH_OK,
          "telnyx: 300 s old is still fresh");
    is_rc(telnyx(key, ts, body, sig, t + 301), OPTOUT_WH_STALE,
          "telnyx: 301 s old is stale");
    is_rc(telnyx(key, ts, body, sig, t - 301), OPTOUT_WH_FUTURE,
          "telnyx: 301 s in the future");
    is_rc(telnyx(other, ts, body, sig, t), OPTOUT_WH_MISMATCH,
          "telnyx: wrong key");

    s = replace(body, "STOP", "START");
    is_rc(telnyx(key, ts, s, sig, t), OPTOUT_WH_MISMATCH,
          "telnyx: modified body");
    free(s);

    is_rc(telnyx(key, "1763900001", body, sig, t), OPTOUT_WH_MISMATCH,
          "telnyx: modified timestamp");

    s = flip(sig, 10);
    is_rc(telnyx(key, ts, body, s, t), OPTOUT_WH_MISMATCH,
          "telnyx: wrong signature");
    free(s);

    is_rc(telnyx(key, "17639x0000", body, sig, t), OPTOUT_WH_MALFORMED,
          "telnyx: timestamp not a number");
    is_rc(telnyx(key, "", body, sig, t), OPTOUT_WH_MISSING,
          "telnyx: no timestamp");
    is_rc(telnyx(key, ts, body, "", t), OPTOUT_WH_MISSING,
          "telnyx: no signature");
    is_rc(telnyx(key, ts, body, v("twilio_form_sig"), t),
          OPTOUT_WH_MALFORMED, "telnyx: signature of the wrong length");

    ok(optout_wh_pkey_parse("AAAA", 4) == NULL,
       "telnyx: a 3-byte key is refused");
    ok(optout_wh_pkey_parse("-----BEGIN PUBLIC KEY-----\nAAAA\n"
                            "-----END PUBLIC KEY-----\n", 57) == NULL,
       "telnyx: a broken PEM key is refused");

    optout_wh_pkey_free(key);
    optout_wh_pkey_free(pemkey);
    optout_wh_pkey_free(other);
}


static optout_wh_rc_t
generic(optout_mac_t *mac, const char *ts, const char *body,
    const char *sig, time_t now)
{
    return optout_wh_hmac_verify(mac, ts, ts ? strlen(ts) : 0,
                                 (const unsigned char *) body, strlen(body),
                                 sig, strlen(sig), now, OPTOUT_WH_TOLERANCE);
}


static void
test_generic(void)
{
    char           *s, up[80], pre[90];
    size_t          i;
    time_t          t;
    const char     *key, *body, *ts, *hex;
    optout_mac_t   *mac, *wrong;

    key = v("generic_key");
    body = v("generic_body");
    ts = v("generic_ts");
    hex = v("generic_sig_hex");
    t = (time_t) atoll(ts);

    mac = optout_mac_create((const unsigned char *) key, strlen(key));
    wrong = optout_mac_create((const unsigned char *) "another secret", 14);

    if (mac == NULL || wrong == NULL) {
        printf("Bail out! mac\n");
        exit(1);
    }

    for (i = 0; hex[i]; i++) {
        up[i] = (hex[i] >= 'a' && hex[i] <= 'f') ? hex[i] - 32 : hex[i];
    }

    up[i] = '\0';
    snprintf(pre, sizeof(pre), "sha256=%s", hex);

    is_rc(generic(mac, NULL, body, hex, 0), OPTOUT_WH_OK, "generic: hex");
    is_rc(generic(mac, NULL, body, up, 0), OPTOUT_WH_OK,
          "generic: upper-case hex");
    is_rc(generic(mac, NULL, body, pre, 0), OPTOUT_WH_OK,
          "generic: \"sha256=\" prefix");
    is_rc(generic(mac, NULL, body, v("generic_sig_b64"), 0), OPTOUT_WH_OK,
          "generic: base64");
    is_rc(generic(wrong, NULL, body, hex, 0), OPTOUT_WH_MISMATCH,
          "generic: wrong key");

    s = replace(body, "START", "STOP");
    is_rc(generic(mac, NULL, s, hex, 0), OPTOUT_WH_MISMATCH,
          "generic: modified body");
    free(s);

    s = strdup(hex);
    s[0] = 'g';
    is_rc(generic(mac, NULL, body, s, 0), OPTOUT_WH_MALFORMED,
          "generic: a non-hex digit in 64 characters");
    free(s);

    s = strdup(hex);
    s[10] = s[10] == '0' ? '1' : '0';
    is_rc(generic(mac, NULL, body, s, 0), OPTOUT_WH_MISMATCH,
          "generic: wrong signature");
    free(s);

    is_rc(generic(mac, NULL, body, "", 0), OPTOUT_WH_MISSING,
          "generic: no signature");
    is_rc(generic(mac, NULL, body, "sha256=", 0), OPTOUT_WH_MALFORMED,
          "generic: prefix alone");
    is_rc(generic(mac, NULL, body, "abcd", 0), OPTOUT_WH_MALFORMED,
          "generic: too short");

    hex = v("generic_ts_sig_hex");

    is_rc(generic(mac, ts, body, hex, t), OPTOUT_WH_OK,
          "generic: timestamp scheme");
    is_rc(generic(mac, NULL, body, hex, t), OPTOUT_WH_MISMATCH,
          "generic: timestamp signature checked without the timestamp");
    is_rc(generic(mac, "1763900001", body, hex, t), OPTOUT_WH_MISMATCH,
          "generic: modified timestamp");
    is_rc(generic(mac, ts, body, hex, t + 301), OPTOUT_WH_STALE,
          "generic: stale timestamp");
    is_rc(generic(mac, ts, body, hex, t - 301), OPTOUT_WH_FUTURE,
          "generic: future timestamp");
    is_rc(generic(mac, "", body, hex, t), OPTOUT_WH_MISSING,
          "generic: timestamp required but empty");
    is_rc(generic(mac, "-1", body, hex, t), OPTOUT_WH_MALFORMED,
          "generic: negative timestamp");

    optout_mac_destroy(mac);
    optout_mac_destroy(wrong);
}


static void
test_status(void)
{
    ok(optout_wh_http_status(OPTOUT_WH_MISSING) == 401
       && optout_wh_http_status(OPTOUT_WH_MALFORMED) == 401
       && optout_wh_http_status(OPTOUT_WH_MISMATCH) == 403
       && optout_wh_http_status(OPTOUT_WH_BODY_HASH) == 403
       && optout_wh_http_status(OPTOUT_WH_STALE) == 403
       && optout_wh_http_status(OPTOUT_WH_FUTURE) == 403
       && optout_wh_http_status(OPTOUT_WH_FORM) == 400
       && optout_wh_http_status(OPTOUT_WH_TOOMANY) == 413
       && optout_wh_http_status(OPTOUT_WH_ERROR) == 500,
       "status: 401 for missing or malformed, 403 for a failed check");

    ok(strcmp(optout_wh_strerror(OPTOUT_WH_STALE), "timestamp too old") == 0
       && strcmp(optout_wh_strerror(OPTOUT_WH_FUTURE),
                 "timestamp in the future") == 0,
       "status: distinct reasons for stale and future timestamps");
}


int
main(int argc, char **argv)
{
    const char  *path;

    path = argc > 1 ? argv[1] : getenv("OPTOUT_WEBHOOK_VECTORS");
    if (path == NULL) {
        path = "tests/webhook-vectors.txt";
    }

    load_vectors(path);

    test_form();
    test_twilio();
    test_twilio_json();
    test_telnyx();
    test_generic();
    test_status();

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
