/*
 * libFuzzer target: the form decoder, the signature and timestamp header
 * parsers, the public key parser and the verifiers on arbitrary input.
 *
 * Input: a header value, a newline, then a body (no newline: all body).
 * Properties (abort() on violation): only the documented results; decoded
 * parameters lie inside the output buffer and re-encoding them decodes to
 * the same bytes; the base64 decoder accepts only canonical text (encoding
 * what it decoded gives the input back); forged input never verifies.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "optout_webhook.h"


#define FUZZ_PARAMS  64


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static optout_mac_t      *mac;
static optout_wh_pkey_t  *pkey;


static size_t
encode_all(const char *in, size_t len, char *out)
{
    size_t  i;

    static const char  hex[] = "0123456789ABCDEF";

    for (i = 0; i < len; i++) {
        out[3 * i] = '%';
        out[3 * i + 1] = hex[(unsigned char) in[i] >> 4];
        out[3 * i + 2] = hex[(unsigned char) in[i] & 0x0f];
    }

    return 3 * len;
}


static void
check_form(const char *in, size_t len)
{
    char               *buf, *enc, *buf2;
    size_t              i, n, n2, total, e;
    optout_wh_rc_t      rc;
    optout_wh_param_t  *p, *p2;

    buf = malloc(len ? len : 1);
    p = malloc(FUZZ_PARAMS * sizeof(optout_wh_param_t));
    p2 = malloc(FUZZ_PARAMS * sizeof(optout_wh_param_t));

    if (buf == NULL || p == NULL || p2 == NULL) {
        abort();
    }

    rc = optout_wh_form_decode(in, len, buf, p, FUZZ_PARAMS, &n);

    if (rc != OPTOUT_WH_OK) {
        if (rc != OPTOUT_WH_FORM && rc != OPTOUT_WH_TOOMANY) {
            abort();
        }

        goto done;
    }

    total = 0;

    for (i = 0; i < n; i++) {
        if (p[i].name < buf || p[i].name + p[i].name_len > buf + len
            || p[i].value < buf || p[i].value + p[i].value_len > buf + len)
        {
            abort();
        }

        total += p[i].name_len + p[i].value_len;
    }

    if (total > len) {
        abort();
    }

    /* every byte percent-encoded: decodes back to the same parameters */

    enc = malloc(3 * total + 2 * n + 1);
    buf2 = malloc(3 * total + 2 * n + 1);

    if (enc == NULL || buf2 == NULL) {
        abort();
    }

    e = 0;

    for (i = 0; i < n; i++) {
        e += encode_all(p[i].name, p[i].name_len, enc + e);
        enc[e++] = '=';
        e += encode_all(p[i].value, p[i].value_len, enc + e);
        enc[e++] = '&';
    }

    rc = optout_wh_form_decode(enc, e, buf2, p2, FUZZ_PARAMS, &n2);

    /* an empty name with an empty value was an "=" pair: kept as such */

    if (rc != OPTOUT_WH_OK || n2 != n) {
        abort();
    }

    for (i = 0; i < n; i++) {
        if (p2[i].name_len != p[i].name_len
            || p2[i].value_len != p[i].value_len
            || memcmp(p2[i].name, p[i].name, p[i].name_len) != 0
            || memcmp(p2[i].value, p[i].value, p[i].value_len) != 0)
        {
            abort();
        }
    }

    free(enc);
    free(buf2);

    /* a forged signature over these parameters never verifies */

    rc = optout_wh_twilio_verify((const unsigned char *) "fuzz token", 10,
                                 "https://h/x", 11, p, n,
                                 "bN875SYK5kbvQARQ8bXBlnUXZEI=", 28);
    if (rc != OPTOUT_WH_MISMATCH) {
        abort();
    }

done:

    free(buf);
    free(p);
    free(p2);
}


static void
check_base64(const char *in, size_t len)
{
    char           *enc;
    size_t          n;
    unsigned char  *out;

    out = malloc(len + 1);
    enc = malloc(len + 5);

    if (out == NULL || enc == NULL) {
        abort();
    }

    if (optout_wh_base64_decode(in, len, out, len + 1, &n) == 0) {
        if (EVP_EncodeBlock((unsigned char *) enc, out, (int) n)
            != (int) len || memcmp(enc, in, len) != 0)
        {
            abort();
        }
    }

    free(out);
    free(enc);
}


static void
check_headers(const char *hdr, size_t hlen, const unsigned char *body,
    size_t blen)
{
    optout_wh_rc_t     rc;
    optout_wh_pkey_t  *k;

    rc = optout_wh_timestamp(hdr, hlen, 1763900000, 300);
    if (rc > OPTOUT_WH_FUTURE || rc == OPTOUT_WH_MISMATCH
        || rc == OPTOUT_WH_BODY_HASH)
    {
        abort();
    }

    k = optout_wh_pkey_parse(hdr, hlen);
    optout_wh_pkey_free(k);

    rc = optout_wh_telnyx_verify(pkey, "1763900000", 10, body, blen, hdr,
                                 hlen, 1763900000, 300);
    if (rc != OPTOUT_WH_MISSING && rc != OPTOUT_WH_MALFORMED
        && rc != OPTOUT_WH_MISMATCH)
    {
        abort();
    }

    rc = optout_wh_hmac_verify(mac, NULL, 0, body, blen, hdr, hlen, 0, 0);
    if (rc != OPTOUT_WH_MISSING && rc != OPTOUT_WH_MALFORMED
        && rc != OPTOUT_WH_MISMATCH)
    {
        abort();
    }

    rc = optout_wh_hmac_verify(mac, (const char *) body, blen, body, blen,
                               hdr, hlen, 1763900000, 300);
    if (rc != OPTOUT_WH_MISSING && rc != OPTOUT_WH_MALFORMED
        && rc != OPTOUT_WH_MISMATCH)
    {
        abort();
    }

    /* the body as a URL: signature, then its bodySHA256 */

    rc = optout_wh_twilio_verify_body((const unsigned char *) "tok", 3,
                                      (const char *) body, blen, body, blen,
                                      hdr, hlen);
    if (rc != OPTOUT_WH_MISSING && rc != OPTOUT_WH_MALFORMED
        && rc != OPTOUT_WH_MISMATCH)
    {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char    *in;
    size_t   h;

    if (mac == NULL) {
        mac = optout_mac_create((const unsigned char *) "fuzz secret", 11);
        /* not the key of the seeds' signature: they must not verify */
        pkey = optout_wh_pkey_parse("AfT15PoAMVAu/xVzcAmc0KET4auRbY8Rh6jqP"
                                    "cy99Ms=", 44);
        if (mac == NULL || pkey == NULL) {
            abort();
        }
    }

    /* exactly sized, not NUL-terminated */

    in = malloc(size ? size : 1);
    if (in == NULL) {
        abort();
    }

    memcpy(in, data, size);

    check_form(in, size);
    check_base64(in, size);

    for (h = 0; h < size && in[h] != '\n'; h++) { /* void */ }

    if (h == size) {
        check_headers(in, size, (const unsigned char *) in, size);

    } else {
        check_headers(in, h, (const unsigned char *) in + h + 1,
                      size - h - 1);
    }

    free(in);

    return 0;
}
