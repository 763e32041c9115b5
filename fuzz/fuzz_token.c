/*
 * libFuzzer target: optout_token_open() on arbitrary input.
 *
 * First byte even: the rest is a token string.  First byte odd: the rest
 * is a binary token body; the fuzzer appends the correct tag for key id
 * body[1] (1 or 7, else key 1) and base64url-encodes it, so structural
 * checks are reached with valid tags too.
 *
 * Properties (abort() on violation): only the documented error codes;
 * every accepted token re-encodes, under the same key, to exactly the
 * same string; the decoded link is NUL-terminated and within bounds.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "optout_core.h"


#define FUZZ_KEY1  "0123456789abcdef0123456789abcdef"
#define FUZZ_KEY7  "fuzz key seven, 32 bytes or more.."


static optout_mac_t  *mac1, *mac7;
static optout_key_t   keys[2];

static const char  b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
fuzz_init(void)
{
    if (mac1) {
        return;
    }

    mac1 = optout_mac_create((const unsigned char *) FUZZ_KEY1,
                             strlen(FUZZ_KEY1));
    mac7 = optout_mac_create((const unsigned char *) FUZZ_KEY7,
                             strlen(FUZZ_KEY7));

    if (mac1 == NULL || mac7 == NULL) {
        abort();
    }

    keys[0].id = 1;
    keys[0].mac = mac1;
    keys[1].id = 7;
    keys[1].mac = mac7;
}


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

    return n;
}


static void
check(const char *tok, size_t len)
{
    int            rc;
    char          *out;
    size_t         n;
    optout_mac_t  *mac;
    optout_link_t  link;

    rc = optout_token_open(keys, 2, NULL, 0, tok, len, &link);

    if (rc != OPTOUT_OK) {
        if (rc != OPTOUT_EMALFORMED && rc != OPTOUT_EVERSION
            && rc != OPTOUT_EKEY && rc != OPTOUT_ETAG)
        {
            abort();
        }

        return;
    }

    if (link.key_id == 1) {
        mac = mac1;

    } else if (link.key_id == 7) {
        mac = mac7;

    } else {
        abort();
    }

    if (link.dest.len == 0 || link.dest.len > OPTOUT_DEST_MAX
        || strlen(link.dest.data) != link.dest.len
        || link.sender_len > OPTOUT_SENDER_MAX
        || strlen(link.sender) != link.sender_len
        || (link.dest.type != OPTOUT_DEST_PHONE
            && link.dest.type != OPTOUT_DEST_EMAIL))
    {
        abort();
    }

    /* exactly sized output buffer: ASan catches any overflow */

    out = malloc(len + 1);
    if (out == NULL) {
        abort();
    }

    rc = optout_token_encode(mac, &link, NULL, 0, out, len + 1, &n);

    if (rc != OPTOUT_OK || n != len || memcmp(out, tok, len) != 0
        || out[len] != '\0')
    {
        abort();
    }

    /* one byte less must not fit */

    rc = optout_token_encode(mac, &link, NULL, 0, out, len, &n);

    if (rc != OPTOUT_ETOOLONG) {
        abort();
    }

    free(out);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char           *tok;
    size_t          n;
    unsigned char   md[32];
    unsigned char  *bin;
    optout_mac_t   *mac;

    fuzz_init();

    if (size == 0) {
        return 0;
    }

    if ((data[0] & 1) == 0) {
        /* copy: exactly size - 1 bytes, not NUL-terminated */

        tok = malloc(size - 1 ? size - 1 : 1);
        if (tok == NULL) {
            abort();
        }

        memcpy(tok, data + 1, size - 1);
        check(tok, size - 1);
        free(tok);

        return 0;
    }

    data++;
    size--;

    if (size > OPTOUT_TOKEN_BIN_MAX) {
        return 0;
    }

    bin = malloc(size + OPTOUT_TAG_LEN);
    tok = malloc((size + OPTOUT_TAG_LEN) * 4 / 3 + 4);

    if (bin == NULL || tok == NULL) {
        abort();
    }

    mac = (size > 1 && data[1] == 7) ? mac7 : mac1;

    memcpy(bin, data, size);

    if (optout_mac_compute(mac, bin, size, md) != OPTOUT_OK) {
        abort();
    }

    memcpy(bin + size, md, OPTOUT_TAG_LEN);

    n = b64_encode(bin, size + OPTOUT_TAG_LEN, tok);
    check(tok, n);

    free(bin);
    free(tok);

    return 0;
}
