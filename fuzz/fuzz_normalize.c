/*
 * libFuzzer target: destination, sender and namespace normalization,
 * masking, store keys and rule values on arbitrary input.
 *
 * Properties (abort() on violation): only the documented error codes;
 * outputs are NUL-terminated, within their documented bounds and in
 * normal form (normalizing them again gives the same result); a parsed
 * rule value formats back to the same bytes.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optout_core.h"


static optout_mac_t  *smac;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
static void check_json_escape(const char *in, size_t len);


static void
check_dest(const char *in, size_t len, optout_dest_t *d)
{
    int             rc;
    char           *masked;
    size_t          i, n, at;
    optout_dest_t  *d2;

    rc = optout_normalize_dest(in, len, d);

    if (rc != OPTOUT_OK) {
        if (rc != OPTOUT_EDEST) {
            abort();
        }

        d->len = 0;
        return;
    }

    if (d->len == 0 || d->len > OPTOUT_DEST_MAX
        || strlen(d->data) != d->len)
    {
        abort();
    }

    if (d->type == OPTOUT_DEST_PHONE) {
        if (d->data[0] != '+' || d->len < 9 || d->len > 16
            || d->data[1] == '0')
        {
            abort();
        }

        for (i = 1; i < d->len; i++) {
            if (d->data[i] < '0' || d->data[i] > '9') {
                abort();
            }
        }

    } else if (d->type == OPTOUT_DEST_EMAIL) {
        at = 0;

        for (i = 0; i < d->len; i++) {
            if (d->data[i] == '@') {
                at++;
            }

            if ((d->data[i] >= 'A' && d->data[i] <= 'Z')
                || (unsigned char) d->data[i] <= 0x20
                || (unsigned char) d->data[i] >= 0x7f)
            {
                abort();
            }
        }

        if (at != 1) {
            abort();
        }

    } else {
        abort();
    }

    /* idempotent */

    d2 = malloc(sizeof(optout_dest_t));
    if (d2 == NULL) {
        abort();
    }

    rc = optout_normalize_dest(d->data, d->len, d2);

    if (rc != OPTOUT_OK || d2->type != d->type || d2->len != d->len
        || memcmp(d2->data, d->data, d->len + 1) != 0)
    {
        abort();
    }

    free(d2);

    masked = malloc(OPTOUT_MASKED_MAX);
    if (masked == NULL) {
        abort();
    }

    n = optout_mask_dest(d, masked);

    if (n == 0 || n >= OPTOUT_MASKED_MAX || strlen(masked) != n) {
        abort();
    }

    free(masked);
}


static void
check_sender(const char *in, size_t len, char *out, size_t *out_len)
{
    int      rc;
    char    *out2;
    size_t   n2;

    rc = optout_normalize_sender(in, len, out, out_len);

    if (rc != OPTOUT_OK) {
        if (rc != OPTOUT_ESENDER) {
            abort();
        }

        *out_len = 0;
        return;
    }

    if (*out_len == 0 || *out_len > OPTOUT_SENDER_MAX
        || strlen(out) != *out_len)
    {
        abort();
    }

    out2 = malloc(OPTOUT_SENDER_MAX + 1);
    if (out2 == NULL) {
        abort();
    }

    rc = optout_normalize_sender(out, *out_len, out2, &n2);

    if (rc != OPTOUT_OK || n2 != *out_len || memcmp(out, out2, n2 + 1) != 0)
    {
        abort();
    }

    free(out2);
}


static void
check_rule(const char *in, size_t len)
{
    int            rc;
    char          *out;
    size_t         n;
    optout_rule_t  rule;

    rc = optout_rule_parse(in, len, &rule);

    if (rc != OPTOUT_OK) {
        if (rc != OPTOUT_EVALUE) {
            abort();
        }

        return;
    }

    out = malloc(OPTOUT_VALUE_MAX);
    if (out == NULL) {
        abort();
    }

    n = optout_rule_format(&rule, out);

    if (n != len || memcmp(out, in, len) != 0) {
        abort();
    }

    free(out);
}


/*
 * the escaper: within its bound, no raw control character, quote or
 * backslash left alone, and a cut at "max" characters only shortens
 */

static void
check_json_escape(const char *in, size_t len)
{
    char    *out, *cut;
    size_t   i, n, m;

    out = malloc(OPTOUT_JSON_ESCAPED(len) + 1);
    cut = malloc(OPTOUT_JSON_ESCAPED(len) + 1);

    if (out == NULL || cut == NULL) {
        abort();
    }

    n = optout_json_escape(in, len, len, out);
    m = optout_json_escape(in, len, len / 2, cut);

    if (n > OPTOUT_JSON_ESCAPED(len) || m > n || memcmp(out, cut, m) != 0) {
        abort();
    }

    for (i = 0; i < n; i++) {
        if ((unsigned char) out[i] < 0x20 || out[i] == 0x7f) {
            abort();
        }

        if (out[i] == '\\') {
            i++;

            if (i == n || strchr("\"\\u", out[i]) == NULL) {
                abort();
            }

        } else if (out[i] == '"') {
            abort();
        }
    }

    free(out);
    free(cut);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int             rc, nsok;
    char           *in, *sender, *key;
    size_t          slen, n, half;
    optout_dest_t  *d;

    if (smac == NULL) {
        smac = optout_mac_create((const unsigned char *) "fuzz store secret"
                                 " 0123456789abcdef", 34);
        if (smac == NULL) {
            abort();
        }
    }

    /* exactly sized, not NUL-terminated */

    in = malloc(size ? size : 1);
    d = malloc(sizeof(optout_dest_t));
    sender = malloc(OPTOUT_SENDER_MAX + 1);
    key = malloc(OPTOUT_STORE_KEY_MAX + 1);

    if (in == NULL || d == NULL || sender == NULL || key == NULL) {
        abort();
    }

    memcpy(in, data, size);

    check_dest(in, size, d);
    check_sender(in, size, sender, &slen);
    check_rule(in, size);
    check_json_escape(in, size);

    rc = optout_check_namespace(in, size);
    if (rc != OPTOUT_OK && (rc != OPTOUT_ENAMESPACE || size == 0)) {
        abort();
    }

    if (rc == OPTOUT_OK && size > OPTOUT_NAMESPACE_MAX) {
        abort();
    }

    /* split: first half namespace, second half destination and sender */

    half = size / 2;
    nsok = optout_check_namespace(in, half) == OPTOUT_OK;

    check_dest(in + half, size - half, d);
    check_sender(in + half, size - half, sender, &slen);

    if (d->len) {
        rc = optout_store_key(smac, "p:", 2, in, half, sender, slen, d, key,
                              &n);

        if (nsok) {
            if (rc != OPTOUT_OK || n != 2 + OPTOUT_HASH_HEX
                || strlen(key) != n)
            {
                abort();
            }

        } else if (rc != OPTOUT_ENAMESPACE) {
            abort();
        }
    }

    free(in);
    free(d);
    free(sender);
    free(key);

    return 0;
}
