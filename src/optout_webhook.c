/*
 * Webhook signatures (Twilio, Telnyx, generic HMAC-SHA256) and the form
 * decoder; docs/webhooks.md says exactly what each scheme signs.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "optout_webhook.h"


#define WH_SHA1_LEN      20
#define WH_SHA256_LEN    32
#define WH_ED25519_LEN   32
#define WH_ED25519_SIG   64
#define WH_TS_DIGITS     18
#define WH_SIG_MAX       128    /* decoded signature bytes we look at */


struct optout_wh_pkey_s {
    EVP_PKEY       *pkey;
};


static void wh_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));


const char *
optout_wh_strerror(optout_wh_rc_t rc)
{
    switch (rc) {
    case OPTOUT_WH_OK:
        return "signature verified";
    case OPTOUT_WH_MISSING:
        return "signature header missing";
    case OPTOUT_WH_MALFORMED:
        return "signature header malformed";
    case OPTOUT_WH_MISMATCH:
        return "signature mismatch";
    case OPTOUT_WH_BODY_HASH:
        return "body hash mismatch";
    case OPTOUT_WH_STALE:
        return "timestamp too old";
    case OPTOUT_WH_FUTURE:
        return "timestamp in the future";
    case OPTOUT_WH_FORM:
        return "form body malformed";
    case OPTOUT_WH_TOOMANY:
        return "too many form parameters";
    default:
        return "internal error";
    }
}


int
optout_wh_http_status(optout_wh_rc_t rc)
{
    switch (rc) {
    case OPTOUT_WH_OK:
        return 200;
    case OPTOUT_WH_MISSING:
    case OPTOUT_WH_MALFORMED:
        return 401;
    case OPTOUT_WH_MISMATCH:
    case OPTOUT_WH_BODY_HASH:
    case OPTOUT_WH_STALE:
    case OPTOUT_WH_FUTURE:
        return 403;
    case OPTOUT_WH_FORM:
        return 400;
    case OPTOUT_WH_TOOMANY:
        return 413;
    default:
        return 500;
    }
}


static int
wh_hex(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/* one name or value: "+" is a space, "%XX" a byte, anything else itself */

static optout_wh_rc_t
wh_form_unescape(const char *in, size_t len, char *out, size_t *out_len)
{
    int     hi, lo;
    size_t  i, n;

    n = 0;

    for (i = 0; i < len; i++) {

        if (in[i] == '+') {
            out[n++] = ' ';
            continue;
        }

        if (in[i] != '%') {
            out[n++] = in[i];
            continue;
        }

        if (len - i < 3) {
            return OPTOUT_WH_FORM;
        }

        hi = wh_hex((unsigned char) in[i + 1]);
        lo = wh_hex((unsigned char) in[i + 2]);

        if (hi < 0 || lo < 0) {
            return OPTOUT_WH_FORM;
        }

        out[n++] = (char) (hi << 4 | lo);
        i += 2;
    }

    *out_len = n;

    return OPTOUT_WH_OK;
}


optout_wh_rc_t
optout_wh_form_decode(const char *in, size_t len, char *buf,
    optout_wh_param_t *params, size_t max, size_t *n)
{
    size_t              i, end, eq, nlen, vlen;
    optout_wh_rc_t      rc;
    optout_wh_param_t  *p;

    *n = 0;

    for (i = 0; i < len; i = end + 1) {

        for (end = i; end < len && in[end] != '&'; end++) {
            /* void */
        }

        if (end == i) {
            continue;                       /* "a=1&&b=2", a trailing "&" */
        }

        for (eq = i; eq < end && in[eq] != '='; eq++) {
            /* void */
        }

        if (*n == max) {
            return OPTOUT_WH_TOOMANY;
        }

        p = &params[*n];

        /* out never passes in: both advance, out by at most as much */

        rc = wh_form_unescape(in + i, eq - i, buf + i, &nlen);
        if (rc != OPTOUT_WH_OK) {
            return rc;
        }

        vlen = 0;

        if (eq < end) {
            rc = wh_form_unescape(in + eq + 1, end - eq - 1, buf + eq + 1,
                                  &vlen);
            if (rc != OPTOUT_WH_OK) {
                return rc;
            }
        }

        /* no "=": an empty value, still pointing inside buf */

        p->name = buf + i;
        p->name_len = nlen;
        p->value = eq < end ? buf + eq + 1 : buf + eq;
        p->value_len = vlen;

        (*n)++;
    }

    return OPTOUT_WH_OK;
}


static int
wh_bytes_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int  c;

    c = memcmp(a, b, alen < blen ? alen : blen);

    if (c != 0) {
        return c;
    }

    return (alen > blen) - (alen < blen);
}


static int
wh_param_cmp(const void *one, const void *two)
{
    int                       c;
    const optout_wh_param_t  *a, *b;

    a = one;
    b = two;

    c = wh_bytes_cmp(a->name, a->name_len, b->name, b->name_len);

    if (c != 0) {
        return c;
    }

    return wh_bytes_cmp(a->value, a->value_len, b->value, b->value_len);
}


int
optout_wh_base64_decode(const char *in, size_t len, unsigned char *out,
    size_t out_size, size_t *out_len)
{
    int          v, pad;
    size_t       i, n;
    uint32_t     acc;
    const char  *p;

    static const char  b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    *out_len = 0;

    if (len == 0 || len % 4 != 0 || len / 4 * 3 > out_size + 2) {
        return -1;
    }

    pad = 0;

    if (in[len - 1] == '=') {
        pad = in[len - 2] == '=' ? 2 : 1;
    }

    if (len / 4 * 3 - pad > out_size) {
        return -1;
    }

    n = 0;
    acc = 0;

    for (i = 0; i < len - pad; i++) {
        p = in[i] ? memchr(b64, in[i], 64) : NULL;
        if (p == NULL) {
            return -1;
        }

        v = (int) (p - b64);
        acc = acc << 6 | (uint32_t) v;

        if (i % 4 == 3) {
            out[n++] = (unsigned char) (acc >> 16);
            out[n++] = (unsigned char) (acc >> 8);
            out[n++] = (unsigned char) acc;
            acc = 0;
        }
    }

    if (pad == 2) {
        if (acc & 0x0f) {
            return -1;                      /* non-canonical trailing bits */
        }

        out[n++] = (unsigned char) (acc >> 4);

    } else if (pad == 1) {
        if (acc & 0x03) {
            return -1;
        }

        out[n++] = (unsigned char) (acc >> 10);
        out[n++] = (unsigned char) (acc >> 2);
    }

    *out_len = n;

    return 0;
}


static optout_wh_rc_t
wh_sig_b64(const char *sig, size_t sig_len, unsigned char *out, size_t want)
{
    size_t         n;
    unsigned char  buf[WH_SIG_MAX];

    if (sig == NULL || sig_len == 0) {
        return OPTOUT_WH_MISSING;
    }

    if (optout_wh_base64_decode(sig, sig_len, buf, sizeof(buf), &n) != 0
        || n != want)
    {
        return OPTOUT_WH_MALFORMED;
    }

    memcpy(out, buf, want);

    return OPTOUT_WH_OK;
}


static optout_wh_rc_t
wh_hmac_sha1(const unsigned char *key, size_t key_len, const char *data,
    size_t len, unsigned char out[WH_SHA1_LEN])
{
    size_t  outl;

    if (key_len == 0) {
        return OPTOUT_WH_ERROR;
    }

    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA1", NULL, key, key_len,
                  (const unsigned char *) data, len, out, WH_SHA1_LEN, &outl)
        == NULL || outl != WH_SHA1_LEN)
    {
        return OPTOUT_WH_ERROR;
    }

    return OPTOUT_WH_OK;
}


optout_wh_rc_t
optout_wh_twilio_verify(const unsigned char *token, size_t token_len,
    const char *url, size_t url_len, optout_wh_param_t *params, size_t n,
    const char *sig, size_t sig_len)
{
    char            *data, *p;
    size_t           i, len;
    optout_wh_rc_t   rc;
    unsigned char    got[WH_SHA1_LEN], want[WH_SHA1_LEN];

    rc = wh_sig_b64(sig, sig_len, got, WH_SHA1_LEN);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    if (n > 1) {
        qsort(params, n, sizeof(optout_wh_param_t), wh_param_cmp);
    }

    len = url_len;

    for (i = 0; i < n; i++) {
        len += params[i].name_len + params[i].value_len;
    }

    data = malloc(len ? len : 1);
    if (data == NULL) {
        return OPTOUT_WH_ERROR;
    }

    p = data;
    memcpy(p, url, url_len);
    p += url_len;

    for (i = 0; i < n; i++) {
        memcpy(p, params[i].name, params[i].name_len);
        p += params[i].name_len;
        memcpy(p, params[i].value, params[i].value_len);
        p += params[i].value_len;
    }

    rc = wh_hmac_sha1(token, token_len, data, len, want);

    free(data);

    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    return CRYPTO_memcmp(got, want, WH_SHA1_LEN) == 0 ? OPTOUT_WH_OK
                                                      : OPTOUT_WH_MISMATCH;
}


/* the value of the last "bodySHA256" query parameter, as 32 bytes */

static optout_wh_rc_t
wh_url_body_hash(const char *url, size_t url_len, unsigned char out[32])
{
    int                 hi, lo;
    char               *buf;
    size_t              q, end, i, n, max, found;
    optout_wh_rc_t      rc;
    optout_wh_param_t  *params;

    for (q = 0; q < url_len && url[q] != '?'; q++) { /* void */ }

    if (q == url_len) {
        return OPTOUT_WH_BODY_HASH;
    }

    q++;

    for (end = q; end < url_len && url[end] != '#'; end++) { /* void */ }

    max = 1;

    for (i = q; i < end; i++) {
        max += url[i] == '&';
    }

    buf = malloc(end - q + 1);
    params = malloc(max * sizeof(optout_wh_param_t));

    if (buf == NULL || params == NULL) {
        free(buf);
        free(params);
        return OPTOUT_WH_ERROR;
    }

    rc = optout_wh_form_decode(url + q, end - q, buf, params, max, &n);

    if (rc == OPTOUT_WH_OK) {
        rc = OPTOUT_WH_BODY_HASH;
        found = n;

        for (i = 0; i < n; i++) {
            if (params[i].name_len == 10
                && memcmp(params[i].name, "bodySHA256", 10) == 0)
            {
                found = i;
            }
        }

        if (found < n && params[found].value_len == 2 * WH_SHA256_LEN) {
            rc = OPTOUT_WH_OK;

            for (i = 0; i < WH_SHA256_LEN; i++) {
                hi = wh_hex((unsigned char) params[found].value[2 * i]);
                lo = wh_hex((unsigned char) params[found].value[2 * i + 1]);

                if (hi < 0 || lo < 0) {
                    rc = OPTOUT_WH_BODY_HASH;
                    break;
                }

                out[i] = (unsigned char) (hi << 4 | lo);
            }
        }

    } else {
        rc = OPTOUT_WH_BODY_HASH;
    }

    free(buf);
    free(params);

    return rc;
}


optout_wh_rc_t
optout_wh_twilio_verify_body(const unsigned char *token, size_t token_len,
    const char *url, size_t url_len, const unsigned char *body,
    size_t body_len, const char *sig, size_t sig_len)
{
    optout_wh_rc_t  rc;
    unsigned char   claimed[WH_SHA256_LEN], actual[WH_SHA256_LEN];

    /* the URL, bodySHA256 included, is all the signature covers */

    rc = optout_wh_twilio_verify(token, token_len, url, url_len, NULL, 0,
                                 sig, sig_len);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    rc = wh_url_body_hash(url, url_len, claimed);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    if (EVP_Digest(body, body_len, actual, NULL, EVP_sha256(), NULL) != 1) {
        return OPTOUT_WH_ERROR;
    }

    return CRYPTO_memcmp(claimed, actual, WH_SHA256_LEN) == 0
           ? OPTOUT_WH_OK : OPTOUT_WH_BODY_HASH;
}


optout_wh_rc_t
optout_wh_timestamp(const char *ts, size_t len, time_t now, time_t tolerance)
{
    size_t   i;
    int64_t  t;

    if (ts == NULL || len == 0) {
        return OPTOUT_WH_MISSING;
    }

    if (len > WH_TS_DIGITS) {
        return OPTOUT_WH_MALFORMED;
    }

    t = 0;

    for (i = 0; i < len; i++) {
        if (ts[i] < '0' || ts[i] > '9') {
            return OPTOUT_WH_MALFORMED;
        }

        t = t * 10 + (ts[i] - '0');
    }

    if (t < (int64_t) now - (int64_t) tolerance) {
        return OPTOUT_WH_STALE;
    }

    if (t > (int64_t) now + (int64_t) tolerance) {
        return OPTOUT_WH_FUTURE;
    }

    return OPTOUT_WH_OK;
}


static int
wh_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}


optout_wh_pkey_t *
optout_wh_pkey_parse(const char *in, size_t len)
{
    BIO               *bio;
    size_t             n;
    EVP_PKEY          *pkey;
    optout_wh_pkey_t  *key;
    unsigned char      raw[WH_ED25519_LEN + 3];

    while (len && wh_is_space(in[0])) {
        in++;
        len--;
    }

    while (len && wh_is_space(in[len - 1])) {
        len--;
    }

    if (len == 0 || len > OPTOUT_WH_PKEY_FILE_MAX) {
        return NULL;
    }

    if (len > 10 && memcmp(in, "-----BEGIN", 10) == 0) {
        bio = BIO_new_mem_buf(in, (int) len);
        if (bio == NULL) {
            return NULL;
        }

        pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        BIO_free(bio);

        /* leave no stale entry in the thread's OpenSSL error queue */
        ERR_clear_error();

        if (pkey == NULL) {
            return NULL;
        }

        if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_ED25519) {
            EVP_PKEY_free(pkey);
            return NULL;
        }

    } else {
        if (optout_wh_base64_decode(in, len, raw, sizeof(raw), &n) != 0
            || n != WH_ED25519_LEN)
        {
            return NULL;
        }

        pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, raw, n);
        ERR_clear_error();

        if (pkey == NULL) {
            return NULL;
        }
    }

    key = malloc(sizeof(optout_wh_pkey_t));
    if (key == NULL) {
        EVP_PKEY_free(pkey);
        return NULL;
    }

    key->pkey = pkey;

    return key;
}


static void
wh_err(char *err, size_t err_len, const char *fmt, ...)
{
    va_list  args;

    if (err == NULL || err_len == 0) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(err, err_len, fmt, args);
    va_end(args);
}


optout_wh_pkey_t *
optout_wh_pkey_load(const char *path, char *err, size_t err_len)
{
    int                fd;
    char               buf[OPTOUT_WH_PKEY_FILE_MAX + 1];
    size_t             n;
    ssize_t            r;
    struct stat        st;
    optout_wh_pkey_t  *key;

    wh_err(err, err_len, "%s", "");

    fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1) {
        wh_err(err, err_len, "cannot open public key file \"%s\": %s",
               path, strerror(errno));
        return NULL;
    }

    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        wh_err(err, err_len, "public key file \"%s\" is not a regular file",
               path);
        close(fd);
        return NULL;
    }

    n = 0;

    while (n < sizeof(buf)) {
        r = read(fd, buf + n, sizeof(buf) - n);

        if (r == -1 && errno == EINTR) {
            continue;
        }

        if (r == -1) {
            wh_err(err, err_len, "cannot read public key file \"%s\": %s",
                   path, strerror(errno));
            close(fd);
            return NULL;
        }

        if (r == 0) {
            break;
        }

        n += r;
    }

    close(fd);

    if (n > OPTOUT_WH_PKEY_FILE_MAX) {
        wh_err(err, err_len, "public key file \"%s\" is larger than %d "
               "bytes", path, OPTOUT_WH_PKEY_FILE_MAX);
        return NULL;
    }

    key = optout_wh_pkey_parse(buf, n);

    if (key == NULL) {
        wh_err(err, err_len, "public key file \"%s\" holds neither an "
               "Ed25519 PEM public key nor a base64 32-byte Ed25519 key",
               path);
    }

    return key;
}


void
optout_wh_pkey_free(optout_wh_pkey_t *key)
{
    if (key == NULL) {
        return;
    }

    EVP_PKEY_free(key->pkey);
    free(key);
}


static optout_wh_rc_t
wh_ed25519_verify(EVP_PKEY *pkey, const unsigned char *sig,
    const unsigned char *msg, size_t len)
{
    int          rc;
    EVP_MD_CTX  *ctx;

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return OPTOUT_WH_ERROR;
    }

    if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) != 1) {
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        return OPTOUT_WH_ERROR;
    }

    rc = EVP_DigestVerify(ctx, sig, WH_ED25519_SIG, msg, len);

    EVP_MD_CTX_free(ctx);
    ERR_clear_error();

    return rc == 1 ? OPTOUT_WH_OK : OPTOUT_WH_MISMATCH;
}


/* "ts" sep "body" in one buffer */

static unsigned char *
wh_join(const char *ts, size_t ts_len, char sep, const unsigned char *body,
    size_t body_len, size_t *len)
{
    unsigned char  *msg;

    *len = ts_len + 1 + body_len;

    msg = malloc(*len);
    if (msg == NULL) {
        return NULL;
    }

    memcpy(msg, ts, ts_len);
    msg[ts_len] = (unsigned char) sep;

    if (body_len) {
        memcpy(msg + ts_len + 1, body, body_len);
    }

    return msg;
}


optout_wh_rc_t
optout_wh_telnyx_verify(optout_wh_pkey_t *key, const char *ts, size_t ts_len,
    const unsigned char *body, size_t body_len, const char *sig,
    size_t sig_len, time_t now, time_t tolerance)
{
    size_t           len;
    optout_wh_rc_t   rc;
    unsigned char   *msg, s[WH_ED25519_SIG];

    rc = wh_sig_b64(sig, sig_len, s, WH_ED25519_SIG);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    /* the format first; freshness only once the signature holds */

    rc = optout_wh_timestamp(ts, ts_len, 0, 0);
    if (rc == OPTOUT_WH_MISSING || rc == OPTOUT_WH_MALFORMED) {
        return rc;
    }

    msg = wh_join(ts, ts_len, '|', body, body_len, &len);
    if (msg == NULL) {
        return OPTOUT_WH_ERROR;
    }

    rc = wh_ed25519_verify(key->pkey, s, msg, len);

    free(msg);

    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    return optout_wh_timestamp(ts, ts_len, now, tolerance);
}


/* 64 hex digits, or base64 of 32 bytes; an optional "sha256=" before */

static optout_wh_rc_t
wh_sig_sha256(const char *sig, size_t sig_len, unsigned char out[32])
{
    int     hi, lo;
    size_t  i;

    if (sig == NULL || sig_len == 0) {
        return OPTOUT_WH_MISSING;
    }

    if (sig_len > 7 && memcmp(sig, "sha256=", 7) == 0) {
        sig += 7;
        sig_len -= 7;
    }

    if (sig_len != 2 * WH_SHA256_LEN) {
        return wh_sig_b64(sig, sig_len, out, WH_SHA256_LEN);
    }

    for (i = 0; i < WH_SHA256_LEN; i++) {
        hi = wh_hex((unsigned char) sig[2 * i]);
        lo = wh_hex((unsigned char) sig[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            return OPTOUT_WH_MALFORMED;
        }

        out[i] = (unsigned char) (hi << 4 | lo);
    }

    return OPTOUT_WH_OK;
}


optout_wh_rc_t
optout_wh_hmac_verify(optout_mac_t *mac, const char *ts, size_t ts_len,
    const unsigned char *body, size_t body_len, const char *sig,
    size_t sig_len, time_t now, time_t tolerance)
{
    int              rc2;
    size_t           len;
    optout_wh_rc_t   rc;
    unsigned char   *msg, got[WH_SHA256_LEN], want[WH_SHA256_LEN];

    rc = wh_sig_sha256(sig, sig_len, got);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    if (ts == NULL) {
        rc2 = optout_mac_compute(mac, body, body_len, want);

    } else {
        rc = optout_wh_timestamp(ts, ts_len, 0, 0);
        if (rc == OPTOUT_WH_MISSING || rc == OPTOUT_WH_MALFORMED) {
            return rc;
        }

        msg = wh_join(ts, ts_len, '.', body, body_len, &len);
        if (msg == NULL) {
            return OPTOUT_WH_ERROR;
        }

        rc2 = optout_mac_compute(mac, msg, len, want);
        free(msg);
    }

    if (rc2 != OPTOUT_OK) {
        return OPTOUT_WH_ERROR;
    }

    if (CRYPTO_memcmp(got, want, WH_SHA256_LEN) != 0) {
        return OPTOUT_WH_MISMATCH;
    }

    if (ts == NULL) {
        return OPTOUT_WH_OK;
    }

    return optout_wh_timestamp(ts, ts_len, now, tolerance);
}
