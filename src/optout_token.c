/*
 * Link tokens, version 1: see docs/token-format.md.
 *
 *   header   0x10 | dest type (bit 0) | sender scope present (bit 1)
 *   key id   1..255
 *   campaign unsigned LEB128, minimal
 *   dest     phone: 7 bytes big-endian; email: length (3..254) + bytes
 *   sender   scope only: length (1..16) + bytes
 *   tag      first 16 bytes of HMAC-SHA256(key, all preceding bytes,
 *            then, with a namespace, its length byte and its bytes)
 *
 * then base64url without padding.  The namespace is not in the token: the
 * verifier knows its own, so a link works only in the namespace it was
 * minted for, and an empty namespace gives the tag as it always was.  The
 * decoder is strict, so every accepted token is the one the encoder
 * produces for its contents.
 */

#include <string.h>

#include <openssl/crypto.h>

#include "optout_core.h"


#define OPTOUT_TOKEN_VERSION     1
#define OPTOUT_HDR_EMAIL         0x01
#define OPTOUT_HDR_SENDER        0x02
#define OPTOUT_HDR_RESERVED      0x0c
#define OPTOUT_PHONE_BYTES       7
#define OPTOUT_PHONE_MIN         10000000ULL            /* 10^7 */
#define OPTOUT_PHONE_LIMIT       1000000000000000ULL    /* 10^15 */
#define OPTOUT_EMAIL_BIN_MIN     3
#define OPTOUT_VARINT_MAX        10

/* binary length of the longest accepted token string */
#define OPTOUT_TOKEN_DEC_MAX     (OPTOUT_TOKEN_MAX / 4 * 3 + 3)


static const char  optout_b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";


static size_t optout_b64_encode(const unsigned char *src, size_t len,
    char *dst);
static int optout_b64_decode(const char *src, size_t len, unsigned char *dst,
    size_t *dst_len);
static int optout_b64_value(unsigned char c);
static int optout_link_check(const optout_link_t *link);
static size_t optout_token_body(const optout_link_t *link, unsigned char *p);
static int optout_token_parse(const unsigned char *p, size_t n,
    optout_link_t *link, size_t *body_len);
static int optout_token_mac(optout_mac_t *mac, const unsigned char *body,
    size_t n, const char *ns, size_t ns_len, unsigned char md[32]);


static size_t
optout_b64_encode(const unsigned char *src, size_t len, char *dst)
{
    char  *d;

    d = dst;

    while (len >= 3) {
        *d++ = optout_b64_alphabet[src[0] >> 2];
        *d++ = optout_b64_alphabet[((src[0] & 0x03) << 4) | (src[1] >> 4)];
        *d++ = optout_b64_alphabet[((src[1] & 0x0f) << 2) | (src[2] >> 6)];
        *d++ = optout_b64_alphabet[src[2] & 0x3f];

        src += 3;
        len -= 3;
    }

    if (len == 1) {
        *d++ = optout_b64_alphabet[src[0] >> 2];
        *d++ = optout_b64_alphabet[(src[0] & 0x03) << 4];

    } else if (len == 2) {
        *d++ = optout_b64_alphabet[src[0] >> 2];
        *d++ = optout_b64_alphabet[((src[0] & 0x03) << 4) | (src[1] >> 4)];
        *d++ = optout_b64_alphabet[(src[1] & 0x0f) << 2];
    }

    *d = '\0';

    return d - dst;
}


static int
optout_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '-') {
        return 62;
    }

    if (c == '_') {
        return 63;
    }

    return -1;
}


/* strict: RFC 4648 section 5 alphabet, no padding, zero unused bits */

static int
optout_b64_decode(const char *src, size_t len, unsigned char *dst,
    size_t *dst_len)
{
    int            v;
    size_t         i, n;
    uint32_t       acc;
    unsigned       bits;

    if (len % 4 == 1) {
        return OPTOUT_EMALFORMED;
    }

    acc = 0;
    bits = 0;
    n = 0;

    for (i = 0; i < len; i++) {
        v = optout_b64_value((unsigned char) src[i]);
        if (v < 0) {
            return OPTOUT_EMALFORMED;
        }

        acc = (acc << 6) | (uint32_t) v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (unsigned char) (acc >> bits);
            acc &= (1U << bits) - 1;
        }
    }

    /* 2 or 4 bits left over must be zero */

    if (acc != 0) {
        return OPTOUT_EMALFORMED;
    }

    *dst_len = n;

    return OPTOUT_OK;
}


static int
optout_link_check(const optout_link_t *link)
{
    size_t         n;
    optout_dest_t  dest;
    char           sender[OPTOUT_SENDER_MAX + 1];

    if (link->key_id < 1 || link->key_id > OPTOUT_KEY_ID_MAX) {
        return OPTOUT_EKEY;
    }

    if ((link->dest.type != OPTOUT_DEST_PHONE
         && link->dest.type != OPTOUT_DEST_EMAIL)
        || link->dest.len == 0 || link->dest.len > OPTOUT_DEST_MAX)
    {
        return OPTOUT_EDEST;
    }

    if (optout_normalize_dest(link->dest.data, link->dest.len, &dest)
        != OPTOUT_OK
        || dest.type != link->dest.type
        || dest.len != link->dest.len
        || memcmp(dest.data, link->dest.data, dest.len) != 0)
    {
        return OPTOUT_EDEST;
    }

    if (link->sender_len) {
        if (link->sender_len > OPTOUT_SENDER_MAX
            || optout_normalize_sender(link->sender, link->sender_len,
                                       sender, &n)
               != OPTOUT_OK
            || n != link->sender_len
            || memcmp(sender, link->sender, n) != 0)
        {
            return OPTOUT_ESENDER;
        }
    }

    return OPTOUT_OK;
}


/* link must have passed optout_link_check(); returns bytes before the tag */

static size_t
optout_token_body(const optout_link_t *link, unsigned char *p)
{
    int                 i;
    size_t              n;
    uint64_t            v;
    const char         *d;
    unsigned char      *start;

    start = p;

    *p++ = (unsigned char) ((OPTOUT_TOKEN_VERSION << 4)
                            | (link->dest.type == OPTOUT_DEST_EMAIL
                               ? OPTOUT_HDR_EMAIL : 0)
                            | (link->sender_len ? OPTOUT_HDR_SENDER : 0));

    *p++ = (unsigned char) link->key_id;

    v = link->campaign;

    while (v >= 0x80) {
        *p++ = (unsigned char) (v | 0x80);
        v >>= 7;
    }

    *p++ = (unsigned char) v;

    if (link->dest.type == OPTOUT_DEST_PHONE) {
        v = 0;
        d = link->dest.data + 1;

        for (n = 1; n < link->dest.len; n++) {
            v = v * 10 + (uint64_t) (*d++ - '0');
        }

        for (i = OPTOUT_PHONE_BYTES - 1; i >= 0; i--) {
            p[i] = (unsigned char) v;
            v >>= 8;
        }

        p += OPTOUT_PHONE_BYTES;

    } else {
        *p++ = (unsigned char) link->dest.len;
        memcpy(p, link->dest.data, link->dest.len);
        p += link->dest.len;
    }

    if (link->sender_len) {
        *p++ = (unsigned char) link->sender_len;
        memcpy(p, link->sender, link->sender_len);
        p += link->sender_len;
    }

    return p - start;
}


/* the MAC input: the body, then the namespace's length and bytes if any */

static int
optout_token_mac(optout_mac_t *mac, const unsigned char *body, size_t n,
    const char *ns, size_t ns_len, unsigned char md[32])
{
    unsigned char  in[OPTOUT_TOKEN_BIN_MAX + 1 + OPTOUT_NAMESPACE_MAX];

    if (ns_len == 0) {
        return optout_mac_compute(mac, body, n, md);
    }

    if (optout_check_namespace(ns, ns_len) != OPTOUT_OK) {
        return OPTOUT_ENAMESPACE;
    }

    if (n > OPTOUT_TOKEN_BIN_MAX) {
        return OPTOUT_ETOOLONG;
    }

    memcpy(in, body, n);
    in[n] = (unsigned char) ns_len;
    memcpy(in + n + 1, ns, ns_len);

    return optout_mac_compute(mac, in, n + 1 + ns_len, md);
}


int
optout_token_encode(optout_mac_t *mac, const optout_link_t *link,
    const char *ns, size_t ns_len, char *out, size_t out_size,
    size_t *out_len)
{
    int            rc;
    size_t         n, len;
    unsigned char  bin[OPTOUT_TOKEN_BIN_MAX];
    unsigned char  md[32];

    *out_len = 0;

    if (out_size) {
        out[0] = '\0';
    }

    if (mac == NULL) {
        return OPTOUT_ECRYPTO;
    }

    rc = optout_link_check(link);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    n = optout_token_body(link, bin);

    len = ((n + OPTOUT_TAG_LEN) * 4 + 2) / 3;

    if (len + 1 > out_size) {
        return OPTOUT_ETOOLONG;
    }

    rc = optout_token_mac(mac, bin, n, ns, ns_len, md);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    memcpy(bin + n, md, OPTOUT_TAG_LEN);

    *out_len = optout_b64_encode(bin, n + OPTOUT_TAG_LEN, out);

    return OPTOUT_OK;
}


/* structure only: fills link, *body_len is the offset of the tag */

static int
optout_token_parse(const unsigned char *p, size_t n, optout_link_t *link,
    size_t *body_len)
{
    int            shift;
    size_t         pos, i, l, slen;
    uint64_t       v;
    unsigned char  hdr, b;
    char          *d;

    if (n < 1) {
        return OPTOUT_EMALFORMED;
    }

    hdr = p[0];

    if ((hdr >> 4) != OPTOUT_TOKEN_VERSION) {
        return OPTOUT_EVERSION;
    }

    if (hdr & OPTOUT_HDR_RESERVED) {
        return OPTOUT_EMALFORMED;
    }

    if (n < 2 || p[1] == 0) {
        return OPTOUT_EMALFORMED;
    }

    link->key_id = p[1];
    pos = 2;

    /* campaign: minimal unsigned LEB128, at most 64 bits */

    v = 0;
    shift = 0;

    for (i = 0; ; i++) {
        if (i == OPTOUT_VARINT_MAX || pos >= n) {
            return OPTOUT_EMALFORMED;
        }

        b = p[pos++];

        if (i == OPTOUT_VARINT_MAX - 1 && b > 1) {
            return OPTOUT_EMALFORMED;
        }

        v |= (uint64_t) (b & 0x7f) << shift;
        shift += 7;

        if (!(b & 0x80)) {
            if (b == 0 && i > 0) {
                return OPTOUT_EMALFORMED;
            }

            break;
        }
    }

    link->campaign = v;

    if (hdr & OPTOUT_HDR_EMAIL) {
        if (pos >= n) {
            return OPTOUT_EMALFORMED;
        }

        l = p[pos++];

        if (l < OPTOUT_EMAIL_BIN_MIN || l > OPTOUT_DEST_MAX || n - pos < l) {
            return OPTOUT_EMALFORMED;
        }

        if (optout_normalize_dest((const char *) p + pos, l, &link->dest)
            != OPTOUT_OK
            || link->dest.type != OPTOUT_DEST_EMAIL
            || link->dest.len != l
            || memcmp(link->dest.data, p + pos, l) != 0)
        {
            return OPTOUT_EMALFORMED;
        }

        pos += l;

    } else {
        if (n - pos < OPTOUT_PHONE_BYTES) {
            return OPTOUT_EMALFORMED;
        }

        v = 0;

        for (i = 0; i < OPTOUT_PHONE_BYTES; i++) {
            v = (v << 8) | p[pos++];
        }

        if (v < OPTOUT_PHONE_MIN || v >= OPTOUT_PHONE_LIMIT) {
            return OPTOUT_EMALFORMED;
        }

        /* digits backwards, then reverse */

        d = link->dest.data;
        l = 0;

        while (v) {
            d[1 + l++] = (char) ('0' + v % 10);
            v /= 10;
        }

        for (i = 0; i < l / 2; i++) {
            b = (unsigned char) d[1 + i];
            d[1 + i] = d[l - i];
            d[l - i] = (char) b;
        }

        d[0] = '+';
        d[l + 1] = '\0';

        link->dest.type = OPTOUT_DEST_PHONE;
        link->dest.len = l + 1;
    }

    if (hdr & OPTOUT_HDR_SENDER) {
        if (pos >= n) {
            return OPTOUT_EMALFORMED;
        }

        l = p[pos++];

        if (l < 1 || l > OPTOUT_SENDER_MAX || n - pos < l) {
            return OPTOUT_EMALFORMED;
        }

        if (optout_normalize_sender((const char *) p + pos, l, link->sender,
                                    &slen)
            != OPTOUT_OK
            || slen != l
            || memcmp(link->sender, p + pos, l) != 0)
        {
            return OPTOUT_EMALFORMED;
        }

        link->sender_len = l;
        pos += l;

    } else {
        link->sender_len = 0;
        link->sender[0] = '\0';
    }

    if (n - pos != OPTOUT_TAG_LEN) {
        return OPTOUT_EMALFORMED;
    }

    *body_len = pos;

    return OPTOUT_OK;
}


int
optout_token_open(const optout_key_t *keys, size_t nkeys, const char *ns,
    size_t ns_len, const char *token, size_t len, optout_link_t *link)
{
    int            rc;
    size_t         n, body, i;
    optout_mac_t  *mac;
    optout_link_t  tmp;
    unsigned char  bin[OPTOUT_TOKEN_DEC_MAX];
    unsigned char  md[32];

    if (token == NULL || len > OPTOUT_TOKEN_MAX) {
        return OPTOUT_EMALFORMED;
    }

    rc = optout_b64_decode(token, len, bin, &n);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    rc = optout_token_parse(bin, n, &tmp, &body);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    mac = NULL;

    for (i = 0; i < nkeys; i++) {
        if (keys[i].id == tmp.key_id && keys[i].mac != NULL) {
            mac = keys[i].mac;
            break;
        }
    }

    if (mac == NULL) {
        return OPTOUT_EKEY;
    }

    rc = optout_token_mac(mac, bin, body, ns, ns_len, md);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    if (CRYPTO_memcmp(md, bin + body, OPTOUT_TAG_LEN) != 0) {
        return OPTOUT_ETAG;
    }

    *link = tmp;

    return OPTOUT_OK;
}
