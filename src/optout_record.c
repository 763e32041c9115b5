/*
 * Keyed store keys, rule values and journal lines: see
 * docs/store-format.md.
 */

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "optout_core.h"


#define OPTOUT_STORE_CONTEXT     "optout-store-v1"
#define OPTOUT_RULE_VERSION      "1"
#define OPTOUT_RULE_FIELDS       6


typedef struct {
    char     *p;
    char     *end;      /* last byte reserved for the NUL */
    int       overflow;
} optout_buf_t;


static const char  *optout_sources[] = { "link", "api", "keyword", "replay",
                                          "import" };
static const char  *optout_channels[] = { "sms", "email" };


static int optout_dest_valid(const optout_dest_t *dest);
static void optout_put(optout_buf_t *b, const char *s, size_t n);
static void optout_put_str(optout_buf_t *b, const char *s);
static void optout_put_json(optout_buf_t *b, const char *s, size_t n);


static int
optout_dest_valid(const optout_dest_t *dest)
{
    optout_dest_t  d;

    if (dest == NULL || dest->len == 0 || dest->len > OPTOUT_DEST_MAX) {
        return 0;
    }

    if (optout_normalize_dest(dest->data, dest->len, &d) != OPTOUT_OK) {
        return 0;
    }

    return d.type == dest->type && d.len == dest->len
           && memcmp(d.data, dest->data, d.len) == 0;
}


int
optout_store_key(optout_mac_t *mac, const char *prefix, size_t prefix_len,
    const char *ns, size_t ns_len, const char *sender, size_t sender_len,
    const optout_dest_t *dest, char *out, size_t *out_len)
{
    int            rc;
    char           s[OPTOUT_SENDER_MAX + 1];
    size_t         i, n, slen;
    unsigned char  c, *p;
    unsigned char  msg[sizeof(OPTOUT_STORE_CONTEXT) + OPTOUT_NAMESPACE_MAX
                       + 2 + OPTOUT_SENDER_MAX + 1 + OPTOUT_DEST_MAX];
    unsigned char  md[32];

    static const char  hex[] = "0123456789abcdef";

    *out_len = 0;
    out[0] = '\0';

    if (mac == NULL) {
        return OPTOUT_ECRYPTO;
    }

    if (prefix_len > OPTOUT_PREFIX_MAX) {
        return OPTOUT_ETOOLONG;
    }

    for (i = 0; i < prefix_len; i++) {
        c = (unsigned char) prefix[i];

        if (c < 0x21 || c > 0x7e) {
            return OPTOUT_EMALFORMED;
        }
    }

    rc = optout_check_namespace(ns, ns_len);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    if (sender_len) {
        if (sender == NULL || sender_len > OPTOUT_SENDER_MAX
            || optout_normalize_sender(sender, sender_len, s, &slen)
               != OPTOUT_OK
            || slen != sender_len
            || memcmp(s, sender, slen) != 0)
        {
            return OPTOUT_ESENDER;
        }
    }

    if (!optout_dest_valid(dest)) {
        return OPTOUT_EDEST;
    }

    /* "optout-store-v1" 0 ns 0 ("a" | "s" sender) 0 dest */

    p = msg;

    memcpy(p, OPTOUT_STORE_CONTEXT, sizeof(OPTOUT_STORE_CONTEXT));
    p += sizeof(OPTOUT_STORE_CONTEXT);

    if (ns_len) {
        memcpy(p, ns, ns_len);
        p += ns_len;
    }

    *p++ = '\0';

    if (sender_len) {
        *p++ = 's';
        memcpy(p, sender, sender_len);
        p += sender_len;

    } else {
        *p++ = 'a';
    }

    *p++ = '\0';

    memcpy(p, dest->data, dest->len);
    p += dest->len;

    rc = optout_mac_compute(mac, msg, p - msg, md);
    if (rc != OPTOUT_OK) {
        return rc;
    }

    if (prefix_len) {
        memcpy(out, prefix, prefix_len);
    }

    n = prefix_len;

    for (i = 0; i < OPTOUT_HASH_HEX / 2; i++) {
        out[n++] = hex[md[i] >> 4];
        out[n++] = hex[md[i] & 0x0f];
    }

    out[n] = '\0';
    *out_len = n;

    return OPTOUT_OK;
}


const char *
optout_source_name(unsigned source)
{
    if (source < sizeof(optout_sources) / sizeof(optout_sources[0])) {
        return optout_sources[source];
    }

    return "unknown";
}


int
optout_source_parse(const char *name, size_t len)
{
    size_t  i;

    if (name == NULL) {
        return -1;
    }

    for (i = 0; i < sizeof(optout_sources) / sizeof(optout_sources[0]); i++) {
        if (strlen(optout_sources[i]) == len
            && memcmp(optout_sources[i], name, len) == 0)
        {
            return (int) i;
        }
    }

    return -1;
}


const char *
optout_channel_name(unsigned channel)
{
    if (channel < sizeof(optout_channels) / sizeof(optout_channels[0])) {
        return optout_channels[channel];
    }

    return "unknown";
}


/* out must hold OPTOUT_VALUE_MAX bytes; returns 0 for invalid values */

size_t
optout_rule_format(const optout_rule_t *rule, char *out)
{
    int  n;

    out[0] = '\0';

    if (rule->time < 0
        || rule->source > OPTOUT_SOURCE_IMPORT
        || rule->channel > OPTOUT_DEST_EMAIL
        || rule->key_id > OPTOUT_KEY_ID_MAX)
    {
        return 0;
    }

    n = snprintf(out, OPTOUT_VALUE_MAX, OPTOUT_RULE_VERSION " %" PRIu64
                 " %" PRId64 " %s %s %u",
                 rule->campaign, rule->time,
                 optout_sources[rule->source], optout_channels[rule->channel],
                 rule->key_id);

    if (n < 0 || n >= OPTOUT_VALUE_MAX) {
        out[0] = '\0';
        return 0;
    }

    return (size_t) n;
}


/* plain decimal: digits only, no sign, no leading zeros, at most max */

int
optout_parse_u64(const char *p, size_t n, uint64_t max, uint64_t *v)
{
    size_t    i;
    uint64_t  r, d;

    if (n == 0 || (n > 1 && p[0] == '0')) {
        return -1;
    }

    r = 0;

    for (i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        d = (uint64_t) (p[i] - '0');

        if (r > (max - d) / 10) {
            return -1;
        }

        r = r * 10 + d;
    }

    *v = r;

    return 0;
}


int
optout_rule_parse(const char *in, size_t len, optout_rule_t *rule)
{
    int            src;
    size_t         nf, fl[OPTOUT_RULE_FIELDS];
    uint64_t       campaign, t, kid;
    const char    *p, *end, *sp, *f[OPTOUT_RULE_FIELDS];

    if (in == NULL || len == 0 || len >= OPTOUT_VALUE_MAX) {
        return OPTOUT_EVALUE;
    }

    /* exactly 6 non-empty fields separated by single spaces */

    p = in;
    end = in + len;
    nf = 0;

    for ( ;; ) {
        if (nf == OPTOUT_RULE_FIELDS) {
            return OPTOUT_EVALUE;
        }

        sp = memchr(p, ' ', end - p);
        if (sp == NULL) {
            sp = end;
        }

        if (sp == p) {
            return OPTOUT_EVALUE;
        }

        f[nf] = p;
        fl[nf] = sp - p;
        nf++;

        if (sp == end) {
            break;
        }

        p = sp + 1;

        if (p == end) {
            return OPTOUT_EVALUE;
        }
    }

    if (nf != OPTOUT_RULE_FIELDS) {
        return OPTOUT_EVALUE;
    }

    if (fl[0] != 1 || f[0][0] != OPTOUT_RULE_VERSION[0]) {
        return OPTOUT_EVALUE;
    }

    if (optout_parse_u64(f[1], fl[1], UINT64_MAX, &campaign) != 0
        || optout_parse_u64(f[2], fl[2], INT64_MAX, &t) != 0
        || optout_parse_u64(f[5], fl[5], OPTOUT_KEY_ID_MAX, &kid) != 0)
    {
        return OPTOUT_EVALUE;
    }

    src = optout_source_parse(f[3], fl[3]);
    if (src < 0) {
        return OPTOUT_EVALUE;
    }

    if (fl[4] == 3 && memcmp(f[4], "sms", 3) == 0) {
        rule->channel = OPTOUT_DEST_PHONE;

    } else if (fl[4] == 5 && memcmp(f[4], "email", 5) == 0) {
        rule->channel = OPTOUT_DEST_EMAIL;

    } else {
        return OPTOUT_EVALUE;
    }

    rule->campaign = campaign;
    rule->time = (int64_t) t;
    rule->source = (unsigned) src;
    rule->key_id = (unsigned) kid;

    return OPTOUT_OK;
}


static void
optout_put(optout_buf_t *b, const char *s, size_t n)
{
    if (b->overflow || (size_t) (b->end - b->p) < n) {
        b->overflow = 1;
        return;
    }

    memcpy(b->p, s, n);
    b->p += n;
}


static void
optout_put_str(optout_buf_t *b, const char *s)
{
    optout_put(b, s, strlen(s));
}


/* fields of a journal line are at most a destination long */

static void
optout_put_json(optout_buf_t *b, const char *s, size_t n)
{
    char  tmp[OPTOUT_JSON_ESCAPED(OPTOUT_DEST_MAX + 1)];

    if (n > OPTOUT_DEST_MAX + 1) {
        b->overflow = 1;
        return;
    }

    optout_put(b, tmp, optout_json_escape(s, n, n, tmp));
}


/* the length of the valid UTF-8 character at s, or 0 */

static size_t
optout_utf8_len(const unsigned char *s, size_t len)
{
    size_t         n, i;
    unsigned char  lo, hi;

    lo = 0x80;
    hi = 0xbf;

    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;

    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;

        if (s[0] == 0xe0) {
            lo = 0xa0;

        } else if (s[0] == 0xed) {
            hi = 0x9f;
        }

    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;

        if (s[0] == 0xf0) {
            lo = 0x90;

        } else if (s[0] == 0xf4) {
            hi = 0x8f;
        }

    } else {
        return 0;
    }

    if (len < n || s[1] < lo || s[1] > hi) {
        return 0;
    }

    for (i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }

    return n;
}


/*
 * The inside of a JSON string, for at most "max" characters of s: '"',
 * '\' and control characters escaped, valid UTF-8 as is, and each byte
 * that is not part of valid UTF-8 as U+FFFD.  out has room for
 * OPTOUT_JSON_ESCAPED(n) bytes; returns the bytes written.
 */

size_t
optout_json_escape(const char *in, size_t n, size_t max, char *out)
{
    char                 *p;
    size_t                len;
    unsigned char         c;
    const unsigned char  *s, *end;

    static const char  hex[] = "0123456789abcdef";

    p = out;
    s = (const unsigned char *) in;
    end = s + n;

    for ( /* void */ ; s < end && max; max--) {
        c = *s;

        if (c >= 0x80) {
            len = optout_utf8_len(s, end - s);

            if (len == 0) {
                memcpy(p, "\\ufffd", 6);
                p += 6;
                s++;

            } else {
                memcpy(p, s, len);
                p += len;
                s += len;
            }

            continue;
        }

        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char) c;

        } else if (c < 0x20 || c == 0x7f) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0x0f];

        } else {
            *p++ = (char) c;
        }

        s++;
    }

    return p - out;
}


size_t
optout_journal_format(const optout_journal_rec_t *rec, char *out,
    size_t out_size)
{
    int           n;
    char          num[64];
    optout_buf_t  b;

    if (out_size == 0) {
        return 0;
    }

    out[0] = '\0';

    if (rec->dest == NULL || !isfinite(rec->time)
        || rec->dest->len > OPTOUT_DEST_MAX)
    {
        return 0;
    }

    b.p = out;
    b.end = out + out_size - 1;
    b.overflow = 0;

    n = snprintf(num, sizeof(num), "%.3f", rec->time);
    if (n < 0 || (size_t) n >= sizeof(num)) {
        return 0;
    }

    optout_put_str(&b, "{\"t\":");
    optout_put(&b, num, n);

    optout_put_str(&b, ",\"action\":\"");
    if (rec->action) {
        optout_put_json(&b, rec->action, strlen(rec->action));
    }

    optout_put_str(&b, "\",\"ns\":\"");
    if (rec->ns) {
        optout_put_json(&b, rec->ns, rec->ns_len);
    }

    optout_put_str(&b, "\",\"dest\":\"");
    optout_put_json(&b, rec->dest->data, rec->dest->len);

    if (rec->sender && rec->sender_len) {
        optout_put_str(&b, "\",\"scope\":\"sender\",\"sender\":\"");
        optout_put_json(&b, rec->sender, rec->sender_len);

    } else {
        optout_put_str(&b, "\",\"scope\":\"account");
    }

    n = snprintf(num, sizeof(num), "%" PRIu64, rec->campaign);
    optout_put_str(&b, "\",\"campaign\":\"");
    optout_put(&b, num, n);

    optout_put_str(&b, "\",\"source\":\"");
    optout_put_str(&b, optout_source_name(rec->source));

    if (rec->keyword && rec->keyword_len) {
        optout_put_str(&b, "\",\"keyword\":\"");
        optout_put_json(&b, rec->keyword, rec->keyword_len);
    }

    optout_put_str(&b, "\",\"channel\":\"");
    optout_put_str(&b, optout_channel_name(rec->dest->type));

    optout_put_str(&b, "\",\"client\":\"");
    if (rec->client) {
        optout_put_json(&b, rec->client, rec->client_len);
    }

    if (rec->user && rec->user_len) {
        optout_put_str(&b, "\",\"user\":\"");
        optout_put_json(&b, rec->user, rec->user_len);
    }

    n = snprintf(num, sizeof(num), "\",\"kid\":%u}\n", rec->key_id);
    optout_put(&b, num, n);

    if (b.overflow) {
        out[0] = '\0';
        return 0;
    }

    *b.p = '\0';

    return b.p - out;
}
