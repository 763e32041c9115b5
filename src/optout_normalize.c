/*
 * Destination, sender and namespace normalization; masking for logs.
 * Inputs are not NUL-terminated: never read past len.
 */

#include <string.h>

#include "optout_core.h"


#define OPTOUT_EMAIL_LOCAL_MAX   64
#define OPTOUT_EMAIL_DOMAIN_MAX  253
#define OPTOUT_PHONE_DIGITS_MIN  8
#define OPTOUT_PHONE_DIGITS_MAX  15
#define OPTOUT_SHORT_DIGITS_MIN  3

/* '+' or "00" and up to 15 digits */
#define OPTOUT_PHONE_RAW_MAX     (2 + OPTOUT_PHONE_DIGITS_MAX)


static int optout_is_ws(unsigned char c);
static int optout_is_sep(unsigned char c);
static int optout_is_digit(unsigned char c);
static int optout_is_alpha(unsigned char c);
static unsigned char optout_lower(unsigned char c);
static unsigned char optout_upper(unsigned char c);
static void optout_trim(const char **p, const char **end);
static size_t optout_strip(const char *p, const char *end, char *buf,
    size_t size);
static int optout_phone(const char *s, size_t n, char *out, size_t *out_len);
static int optout_email(const char *p, size_t n, optout_dest_t *out);
static int optout_email_local_char(unsigned char c);


static int
optout_is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}


static int
optout_is_sep(unsigned char c)
{
    return c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
}


static int
optout_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}


static int
optout_is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}


static unsigned char
optout_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char) (c | 0x20) : c;
}


static unsigned char
optout_upper(unsigned char c)
{
    return (c >= 'a' && c <= 'z') ? (unsigned char) (c & ~0x20) : c;
}


static void
optout_trim(const char **p, const char **end)
{
    while (*p < *end && optout_is_ws((unsigned char) **p)) {
        (*p)++;
    }

    while (*end > *p && optout_is_ws((unsigned char) (*end)[-1])) {
        (*end)--;
    }
}


/*
 * Copies [p, end) without phone separators into buf; returns the number of
 * bytes kept, or size + 1 when they do not fit.  One "(0)" after "+" or
 * "00" and a digit is the national trunk prefix of the written form
 * ("+44 (0)7700 900123"), not a digit of the number: it is dropped.
 */

static size_t
optout_strip(const char *p, const char *end, char *buf, size_t size)
{
    size_t    n, cc;
    unsigned  trunk;

    n = 0;
    trunk = 0;

    for ( /* void */ ; p < end; p++) {
        if (*p == '(' && !trunk && end - p >= 3 && p[1] == '0'
            && p[2] == ')')
        {
            cc = (n >= 1 && buf[0] == '+') ? 1
                 : (n >= 2 && buf[0] == '0' && buf[1] == '0') ? 2 : 0;

            if (cc && n > cc) {
                trunk = 1;
                p += 2;
                continue;
            }
        }

        if (optout_is_sep((unsigned char) *p)) {
            continue;
        }

        if (n == size) {
            return size + 1;
        }

        buf[n++] = *p;
    }

    return n;
}


/*
 * s: separators removed; accepts "+" or "00" followed by 8..15 digits, the
 * first one 1-9, and writes "+digits" NUL-terminated (at most 17 bytes).
 */

static int
optout_phone(const char *s, size_t n, char *out, size_t *out_len)
{
    size_t  i, start;

    if (n >= 1 && s[0] == '+') {
        start = 1;

    } else if (n >= 2 && s[0] == '0' && s[1] == '0') {
        start = 2;

    } else {
        return -1;
    }

    if (n - start < OPTOUT_PHONE_DIGITS_MIN
        || n - start > OPTOUT_PHONE_DIGITS_MAX)
    {
        return -1;
    }

    if (s[start] < '1' || s[start] > '9') {
        return -1;
    }

    for (i = start; i < n; i++) {
        if (!optout_is_digit((unsigned char) s[i])) {
            return -1;
        }
    }

    out[0] = '+';
    memcpy(out + 1, s + start, n - start);
    out[n - start + 1] = '\0';
    *out_len = n - start + 1;

    return 0;
}


static int
optout_email_local_char(unsigned char c)
{
    if (optout_is_digit(c) || (c >= 'a' && c <= 'z')) {
        return 1;
    }

    return c != '\0' && strchr(".!#$%&'*+/=?^_`{|}~-", c) != NULL;
}


static int
optout_email(const char *p, size_t n, optout_dest_t *out)
{
    size_t          i, at, label;
    unsigned        dots;
    unsigned char   c;
    unsigned char  *d;

    if (n > OPTOUT_DEST_MAX) {
        return OPTOUT_EDEST;
    }

    d = (unsigned char *) out->data;
    at = n;

    for (i = 0; i < n; i++) {
        c = optout_lower((unsigned char) p[i]);

        if (c == '@') {
            if (at != n) {
                return OPTOUT_EDEST;
            }

            at = i;
        }

        d[i] = c;
    }

    d[n] = '\0';

    if (at == n) {
        return OPTOUT_EDEST;
    }

    /* local part */

    if (at == 0 || at > OPTOUT_EMAIL_LOCAL_MAX) {
        return OPTOUT_EDEST;
    }

    if (d[0] == '.' || d[at - 1] == '.') {
        return OPTOUT_EDEST;
    }

    for (i = 0; i < at; i++) {
        if (!optout_email_local_char(d[i])) {
            return OPTOUT_EDEST;
        }

        if (d[i] == '.' && i + 1 < at && d[i + 1] == '.') {
            return OPTOUT_EDEST;
        }
    }

    /* domain: labels of [a-z0-9-], not starting or ending with '-' */

    if (n - at - 1 < 1 || n - at - 1 > OPTOUT_EMAIL_DOMAIN_MAX) {
        return OPTOUT_EDEST;
    }

    dots = 0;
    label = 0;

    for (i = at + 1; i < n; i++) {
        c = d[i];

        if (c == '.') {
            if (label == 0 || d[i - 1] == '-') {
                return OPTOUT_EDEST;
            }

            dots++;
            label = 0;
            continue;
        }

        if (c == '-') {
            if (label == 0) {
                return OPTOUT_EDEST;
            }

        } else if (!optout_is_digit(c) && !(c >= 'a' && c <= 'z')) {
            return OPTOUT_EDEST;
        }

        label++;
    }

    if (label == 0 || d[n - 1] == '-' || dots == 0) {
        return OPTOUT_EDEST;
    }

    out->type = OPTOUT_DEST_EMAIL;
    out->len = n;

    return OPTOUT_OK;
}


int
optout_normalize_dest(const char *in, size_t len, optout_dest_t *out)
{
    int          rc;
    char         buf[OPTOUT_PHONE_RAW_MAX];
    size_t       n;
    const char  *p, *end;

    out->type = OPTOUT_DEST_PHONE;
    out->len = 0;
    out->data[0] = '\0';

    if (in == NULL) {
        return OPTOUT_EDEST;
    }

    p = in;
    end = in + len;

    optout_trim(&p, &end);

    if (memchr(p, '@', end - p) != NULL) {
        rc = optout_email(p, end - p, out);

        if (rc != OPTOUT_OK) {
            out->type = OPTOUT_DEST_PHONE;
            out->len = 0;
            out->data[0] = '\0';
        }

        return rc;
    }

    n = optout_strip(p, end, buf, sizeof(buf));

    if (n > sizeof(buf) || optout_phone(buf, n, out->data, &out->len) != 0) {
        return OPTOUT_EDEST;
    }

    out->type = OPTOUT_DEST_PHONE;

    return OPTOUT_OK;
}


int
optout_normalize_sender(const char *in, size_t len, char *out,
    size_t *out_len)
{
    int             letter;
    char            buf[OPTOUT_PHONE_RAW_MAX];
    size_t          n, i, start;
    const char     *p, *end;
    unsigned char   c;

    *out_len = 0;
    out[0] = '\0';

    if (in == NULL) {
        return OPTOUT_ESENDER;
    }

    p = in;
    end = in + len;

    optout_trim(&p, &end);

    if (p == end) {
        return OPTOUT_ESENDER;
    }

    n = optout_strip(p, end, buf, sizeof(buf));

    if (n > sizeof(buf)) {
        /* too long for any form: an alphanumeric id is at most 11 */
        return OPTOUT_ESENDER;
    }

    /* "+digits" or "00digits": international number */

    start = 0;

    if (n >= 1 && buf[0] == '+') {
        start = 1;

    } else if (n >= 2 && buf[0] == '0' && buf[1] == '0') {
        start = 2;
    }

    if (start && n > start) {
        for (i = start; i < n; i++) {
            if (!optout_is_digit((unsigned char) buf[i])) {
                break;
            }
        }

        if (i == n) {
            if (optout_phone(buf, n, out, out_len) != 0) {
                *out_len = 0;
                out[0] = '\0';
                return OPTOUT_ESENDER;
            }

            return OPTOUT_OK;
        }
    }

    /* all digits: short code or national number, kept as is */

    for (i = 0; i < n; i++) {
        if (!optout_is_digit((unsigned char) buf[i])) {
            break;
        }
    }

    if (n && i == n) {
        if (n < OPTOUT_SHORT_DIGITS_MIN || n > OPTOUT_PHONE_DIGITS_MAX) {
            return OPTOUT_ESENDER;
        }

        memcpy(out, buf, n);
        out[n] = '\0';
        *out_len = n;

        return OPTOUT_OK;
    }

    /* alphanumeric sender id */

    n = end - p;

    if (n > OPTOUT_ALNUM_SENDER_MAX) {
        return OPTOUT_ESENDER;
    }

    letter = 0;

    for (i = 0; i < n; i++) {
        c = (unsigned char) p[i];

        if (optout_is_alpha(c)) {
            letter = 1;

        } else if (!optout_is_digit(c) && c != ' ' && c != '.' && c != '_'
                   && c != '&' && c != '-')
        {
            out[0] = '\0';
            return OPTOUT_ESENDER;
        }

        out[i] = (char) optout_upper(c);
    }

    if (!letter) {
        out[0] = '\0';
        return OPTOUT_ESENDER;
    }

    out[n] = '\0';
    *out_len = n;

    return OPTOUT_OK;
}


int
optout_check_namespace(const char *in, size_t len)
{
    size_t         i;
    unsigned char  c;

    if (len == 0) {
        return OPTOUT_OK;
    }

    if (in == NULL || len > OPTOUT_NAMESPACE_MAX) {
        return OPTOUT_ENAMESPACE;
    }

    for (i = 0; i < len; i++) {
        c = (unsigned char) in[i];

        if (!optout_is_alpha(c) && !optout_is_digit(c) && c != '.'
            && c != '_' && c != ':' && c != '-')
        {
            return OPTOUT_ENAMESPACE;
        }
    }

    return OPTOUT_OK;
}


/*
 * "+447700900123" -> "+447*******23", "john.doe@example.com" ->
 * "j***@example.com".  The result never exceeds OPTOUT_DEST_MAX bytes, so
 * a buffer of OPTOUT_MASKED_MAX bytes holds it with its NUL: for the few
 * addresses where "x***@domain" would be longer, fewer '*' are written.
 */

size_t
optout_mask_dest(const optout_dest_t *dest, char *out)
{
    size_t       i, n, digits, stars, dlen;
    const char  *at;

    n = dest->len;

    if (n == 0 || n > OPTOUT_DEST_MAX) {
        out[0] = '\0';
        return 0;
    }

    if (dest->type != OPTOUT_DEST_EMAIL) {
        /* '+', 3 leading and 2 trailing digits */

        digits = n - 1;
        out[0] = dest->data[0];

        for (i = 1; i < n; i++) {
            if (digits > 5 && i > 3 && i <= digits - 2) {
                out[i] = '*';

            } else if (digits <= 5 && i > 1) {
                out[i] = '*';

            } else {
                out[i] = dest->data[i];
            }
        }

        out[n] = '\0';
        return n;
    }

    at = memchr(dest->data, '@', n);

    if (at == NULL || at == dest->data) {
        memcpy(out, "***", 4);
        return 3;
    }

    dlen = n - (at - dest->data) - 1;

    /* 1 + stars + 1 + dlen <= OPTOUT_DEST_MAX */

    stars = 3;

    if (dlen + 2 + stars > OPTOUT_DEST_MAX) {
        stars = (dlen + 2 > OPTOUT_DEST_MAX) ? 0 : OPTOUT_DEST_MAX - 2 - dlen;
    }

    if (dlen + 2 > OPTOUT_DEST_MAX) {
        dlen = OPTOUT_DEST_MAX - 2;
    }

    n = 0;
    out[n++] = dest->data[0];

    for (i = 0; i < stars; i++) {
        out[n++] = '*';
    }

    memcpy(out + n, at, dlen + 1);
    n += dlen + 1;
    out[n] = '\0';

    return n;
}
