
/*
 * libFuzzer target: the inbound body parsers of every format, the reply
 * table and the two answer renderers on arbitrary input.
 *
 * Properties (abort() on violation): only the documented results; on
 * success at most max messages, each field NUL-terminated at its length;
 * on failure nothing kept and a reason given; a reply is accepted only
 * when it is valid UTF-8 of 20 code points to 1600 bytes, and is then
 * returned as set; the TwiML answer fits OPTOUT_IN_TWIML_MAX, is valid
 * UTF-8, holds only XML 1.0 characters and no unescaped < > & " '
 * inside the message; the JSON answer fits OPTOUT_IN_JSON_MAX and
 * jansson reads the same reply back.  The same input goes to every
 * format's parser, then to the reply table and the renderers.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <unistr.h>

#include "optout_inbound.h"
#include "optout_keyword.h"


#define FUZZ_MAX  4


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
check_parse(int format, const char *in, size_t len)
{
    int               rc;
    char              err[128];
    size_t            i;
    optout_in_msgs_t  m;

    err[0] = '\0';
    rc = optout_in_parse(format, in, len, FUZZ_MAX, &m, err, sizeof(err));

    if (rc != OPTOUT_IN_OK) {
        if ((rc != OPTOUT_IN_MALFORMED && rc != OPTOUT_IN_TOOMANY
             && rc != OPTOUT_IN_ENOMEM)
            || m.n != 0 || m.msgs != NULL || err[0] == '\0')
        {
            abort();
        }

        return;
    }

    if (m.n > FUZZ_MAX || (m.n == 0) != (m.msgs == NULL)) {
        abort();
    }

    for (i = 0; i < m.n; i++) {
        if (m.msgs[i].from[m.msgs[i].from_len] != '\0'
            || m.msgs[i].to[m.msgs[i].to_len] != '\0'
            || m.msgs[i].text[m.msgs[i].text_len] != '\0'
            || m.msgs[i].text_len > len)
        {
            abort();
        }

        /* a form value or a jansson string never holds a NUL */
        if (memchr(m.msgs[i].from, '\0', m.msgs[i].from_len) != NULL) {
            abort();
        }
    }

    optout_in_msgs_free(&m);
}


static void
check_twiml(const char *in, size_t len)
{
    char           *out, *msg, *end;
    size_t          n, size;
    ucs4_t          c;
    const uint8_t  *s;
    int             k;

    size = OPTOUT_IN_TWIML_MAX(len);
    out = malloc(size);
    if (out == NULL) {
        abort();
    }

    n = optout_in_twiml(in, len, out, size);

    if (n == 0 || n >= size || out[n] != '\0' || strlen(out) != n
        || u8_check((const uint8_t *) out, n) != NULL)
    {
        abort();
    }

    if (optout_in_twiml(in, len, out, len ? size - 1 : 0) != 0) {
        abort();
    }

    n = optout_in_twiml(in, len, out, size);

    msg = strstr(out, "<Message>");

    if (len == 0) {
        if (msg != NULL || strstr(out, "<Response/>") == NULL) {
            abort();
        }

        goto done;
    }

    end = strstr(out, "</Message></Response>\n");

    if (msg == NULL || end == NULL || end + 22 != out + n) {
        abort();
    }

    for (msg += 9; msg < end; msg += k) {
        s = (const uint8_t *) msg;
        k = u8_mbtoucr(&c, s, end - msg);

        if (k <= 0 || c == '<' || c == '>' || c == '"' || c == '\''
            || (c < 0x20 && c != '\t' && c != '\n' && c != '\r')
            || c == 0xfffe || c == 0xffff)
        {
            abort();
        }

        if (c == '&'
            && strncmp(msg, "&amp;", 5) != 0 && strncmp(msg, "&lt;", 4) != 0
            && strncmp(msg, "&gt;", 4) != 0
            && strncmp(msg, "&quot;", 6) != 0
            && strncmp(msg, "&apos;", 6) != 0)
        {
            abort();
        }
    }

done:

    free(out);
}


static void
check_json(const char *in, size_t len)
{
    char          *out;
    json_t        *root, *v;
    size_t         n, size;
    json_error_t   jerr;

    size = OPTOUT_IN_JSON_MAX(4, 4, len);
    out = malloc(size);
    if (out == NULL) {
        abort();
    }

    n = optout_in_json("stop", "STOP", 4, in, len, out, size);

    if (n == 0 || n >= size || strlen(out) != n) {
        abort();
    }

    root = json_loadb(out, n, JSON_ALLOW_NUL, &jerr);
    v = json_object_get(root, "reply");

    if (root == NULL || !json_is_string(v)) {
        abort();
    }

    /* valid UTF-8 comes back as it was */

    if (u8_check((const uint8_t *) in, len) == NULL
        && (json_string_length(v) != len
            || memcmp(json_string_value(v), in, len) != 0))
    {
        abort();
    }

    json_decref(root);
    free(out);
}


static void
check_replies(const char *in, size_t len)
{
    int                   rc, valid;
    char                  err[128];
    size_t                n;
    const char           *s;
    optout_in_replies_t  *r;

    r = optout_in_replies_create();
    if (r == NULL) {
        abort();
    }

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "gb", in, len, err,
                               sizeof(err));

    valid = u8_check((const uint8_t *) in, len) == NULL
            && memchr(in, '\0', len) == NULL
            && u8_mbsnlen((const uint8_t *) in, len) >= 20 && len <= 1600;

    if ((rc == 0) != valid) {
        abort();
    }

    s = optout_in_reply(r, OPTOUT_KW_STOP, "GB", &n);

    if (s == NULL || s[n] != '\0'
        || (valid && (n != len || memcmp(s, in, len) != 0))
        || (!valid && strncmp(s, "You are unsubscribed", 20) != 0))
    {
        abort();
    }

    s = optout_in_reply(r, OPTOUT_KW_STOP, "FR", &n);

    if (s == NULL || strncmp(s, "You are unsubscribed", 20) != 0) {
        abort();
    }

    optout_in_replies_free(r);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int    format;
    char  *in;

    /* exactly sized, not NUL-terminated */

    in = malloc(size ? size : 1);
    if (in == NULL) {
        abort();
    }

    memcpy(in, data, size);

    for (format = OPTOUT_IN_GENERIC; format <= OPTOUT_IN_INFOBIP; format++) {
        check_parse(format, in, size);
    }

    check_twiml(in, size);
    check_json(in, size);
    check_replies(in, size);

    free(in);

    return 0;
}
