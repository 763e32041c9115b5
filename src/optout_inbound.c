
/*
 * Inbound messages: body parsers, replies and answers; see
 * optout_inbound.h and docs/inbound-formats.md.
 */

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <unistr.h>

#include "optout_core.h"
#include "optout_inbound.h"
#include "optout_keyword.h"
#include "optout_webhook.h"


#define OPTOUT_IN_FORM_MAX    256       /* form parameters we decode */
#define OPTOUT_IN_REPLY_MIN   20        /* code points */
#define OPTOUT_IN_REPLY_MAX   1600      /* bytes: 10 concatenated segments */

#define OPTOUT_IN_TWIML_HEAD  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"


typedef struct {
    int       op;
    char      cc[3];                           /* "" for all countries */
    char     *text;
    size_t    len;
} optout_in_reply_t;


struct optout_in_replies_s {
    optout_in_reply_t  *r;
    size_t              n;
};


static const char  *optout_in_formats[] = {
    "generic", "twilio", "telnyx", "infobip"
};

static const char  *optout_in_builtin[] = {
    NULL,
    "You are unsubscribed and will receive no more messages from us. "
    "Reply START to subscribe again.",
    "You are subscribed again and will receive messages from us. "
    "Reply STOP to unsubscribe.",
    "Reply STOP to unsubscribe, START to subscribe again."
};


static int optout_in_fail(char *err, size_t err_len, int rc,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int optout_in_add(optout_in_msgs_t *out, size_t max,
    const char *from, size_t from_len, const char *to, size_t to_len,
    const char *text, size_t text_len, int plus);
static int optout_in_international(const char *s, size_t len);
static int optout_in_string(json_t *obj, const char *name, int required,
    const char **s, size_t *len);
static int optout_in_generic(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len);
static int optout_in_telnyx(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len);
static int optout_in_infobip(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len);
static int optout_in_twilio(const char *body, size_t len, size_t max,
    optout_in_msgs_t *out, char *err, size_t err_len);
static int optout_in_twilio_field(const optout_wh_param_t *p, size_t n,
    const char *name, int required, const char **s, size_t *len,
    char *err, size_t err_len);
static int optout_in_country(const char *country, char *cc);
static optout_in_reply_t *optout_in_find(const optout_in_replies_t *r,
    int op, const char *cc);
static char *optout_in_json_value(char *p, const char *s, size_t len);


int
optout_in_format(const char *name, size_t len)
{
    size_t  i;

    for (i = 0; i < sizeof(optout_in_formats) / sizeof(char *); i++) {
        if (strlen(optout_in_formats[i]) == len
            && memcmp(optout_in_formats[i], name, len) == 0)
        {
            return (int) i;
        }
    }

    return -1;
}


const char *
optout_in_format_name(int format)
{
    if (format < 0
        || (size_t) format >= sizeof(optout_in_formats) / sizeof(char *))
    {
        return NULL;
    }

    return optout_in_formats[format];
}


static int
optout_in_fail(char *err, size_t err_len, int rc, const char *fmt, ...)
{
    va_list  args;

    if (err_len) {
        va_start(args, fmt);
        vsnprintf(err, err_len, fmt, args);
        va_end(args);
    }

    return rc;
}


int
optout_in_parse(int format, const char *body, size_t len, size_t max,
    optout_in_msgs_t *out, char *err, size_t err_len)
{
    int            rc;
    char          *near;
    json_t        *root;
    json_error_t   jerr;

    out->msgs = NULL;
    out->n = 0;

    if (err_len) {
        err[0] = '\0';
    }

    if (format == OPTOUT_IN_TWILIO) {
        rc = optout_in_twilio(body, len, max, out, err, err_len);
        goto done;
    }

    if (format != OPTOUT_IN_GENERIC && format != OPTOUT_IN_TELNYX
        && format != OPTOUT_IN_INFOBIP)
    {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "unknown format %d", format);
    }

    /* duplicate keys are as ambiguous as a repeated form parameter */

    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);

    if (root == NULL) {
        /* jansson quotes the body ("near '...'"): not for the log */
        near = strstr(jerr.text, " near ");
        if (near != NULL) {
            *near = '\0';
        }

        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "not valid JSON: %s at byte %d", jerr.text,
                              jerr.position);
    }

    if (!json_is_object(root)) {
        rc = optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                            "not a JSON object");

    } else if (format == OPTOUT_IN_GENERIC) {
        rc = optout_in_generic(root, max, out, err, err_len);

    } else if (format == OPTOUT_IN_TELNYX) {
        rc = optout_in_telnyx(root, max, out, err, err_len);

    } else {
        rc = optout_in_infobip(root, max, out, err, err_len);
    }

    json_decref(root);

done:

    if (rc == OPTOUT_IN_ENOMEM) {
        optout_in_fail(err, err_len, rc, "out of memory");

    } else if (rc == OPTOUT_IN_TOOMANY && err_len && err[0] == '\0') {
        optout_in_fail(err, err_len, rc, "more than %zu messages", max);
    }

    if (rc != OPTOUT_IN_OK) {
        optout_in_msgs_free(out);
    }

    return rc;
}


void
optout_in_msgs_free(optout_in_msgs_t *m)
{
    size_t  i;

    for (i = 0; i < m->n; i++) {
        free(m->msgs[i].from);
    }

    free(m->msgs);

    m->msgs = NULL;
    m->n = 0;
}


/*
 * One message: from, to and text copied into one allocation.  plus: a
 * number written without its "+" (Infobip) gets it back.
 */

static int
optout_in_add(optout_in_msgs_t *out, size_t max, const char *from,
    size_t from_len, const char *to, size_t to_len, const char *text,
    size_t text_len, int plus)
{
    int               from_plus, to_plus;
    char             *p;
    optout_in_msg_t  *m;

    if (out->n >= max) {
        return OPTOUT_IN_TOOMANY;
    }

    if (out->msgs == NULL) {
        out->msgs = calloc(max, sizeof(optout_in_msg_t));
        if (out->msgs == NULL) {
            return OPTOUT_IN_ENOMEM;
        }
    }

    from_plus = plus && optout_in_international(from, from_len);
    to_plus = plus && optout_in_international(to, to_len);

    p = malloc(from_len + to_len + text_len + 5);
    if (p == NULL) {
        return OPTOUT_IN_ENOMEM;
    }

    m = &out->msgs[out->n++];

    m->from = p;
    m->from_len = from_len + from_plus;
    if (from_plus) {
        *p++ = '+';
    }
    memcpy(p, from, from_len);
    p += from_len;
    *p++ = '\0';

    m->to = p;
    m->to_len = to_len + to_plus;
    if (to_plus) {
        *p++ = '+';
    }
    memcpy(p, to, to_len);
    p += to_len;
    *p++ = '\0';

    m->text = p;
    m->text_len = text_len;
    memcpy(p, text, text_len);
    p[text_len] = '\0';

    return OPTOUT_IN_OK;
}


/*
 * An international number without "+": 8 to 15 digits, the first 1-9
 * (as E.164); shorter digit strings are short codes and stay as they are.
 */

static int
optout_in_international(const char *s, size_t len)
{
    size_t  i;

    if (len < 8 || len > 15 || s[0] < '1' || s[0] > '9') {
        return 0;
    }

    for (i = 1; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }

    return 1;
}


/*
 * A string member: 0 with *s set ("" when absent and not required, or
 * null), -1 when it is missing and required or not a string.
 */

static int
optout_in_string(json_t *obj, const char *name, int required,
    const char **s, size_t *len)
{
    json_t  *v;

    v = json_object_get(obj, name);

    if (v == NULL || (json_is_null(v) && !required)) {
        *s = "";
        *len = 0;
        return required ? -1 : 0;
    }

    if (!json_is_string(v)) {
        return -1;
    }

    *s = json_string_value(v);
    *len = json_string_length(v);

    return 0;
}


static int
optout_in_generic(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len)
{
    size_t       from_len, to_len, text_len;
    const char  *from, *to, *text;

    if (optout_in_string(root, "from", 1, &from, &from_len) != 0) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"from\" missing or not a string");
    }

    if (optout_in_string(root, "to", 0, &to, &to_len) != 0) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"to\" not a string");
    }

    if (optout_in_string(root, "text", 1, &text, &text_len) != 0) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"text\" missing or not a string");
    }

    return optout_in_add(out, max, from, from_len, to, to_len, text,
                         text_len, 0);
}


/*
 * {"data": {"event_type": "message.received", "payload": {"from":
 * {"phone_number": ...}, "to": [{"phone_number": ...}], "text": ...}}};
 * other event types (delivery reports) carry no inbound message.
 */

static int
optout_in_telnyx(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len)
{
    json_t      *data, *payload, *v;
    size_t       type_len, from_len, to_len, text_len;
    const char  *type, *from, *to, *text;

    data = json_object_get(root, "data");

    if (!json_is_object(data)) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"data\" missing or not an object");
    }

    if (optout_in_string(data, "event_type", 1, &type, &type_len) != 0) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"data.event_type\" missing or not a string");
    }

    if (strcmp(type, "message.received") != 0) {
        return OPTOUT_IN_OK;
    }

    payload = json_object_get(data, "payload");

    if (!json_is_object(payload)) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"data.payload\" missing or not an object");
    }

    v = json_object_get(payload, "from");

    if (!json_is_object(v)
        || optout_in_string(v, "phone_number", 1, &from, &from_len) != 0)
    {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"data.payload.from.phone_number\" missing "
                              "or not a string");
    }

    to = "";
    to_len = 0;

    v = json_object_get(payload, "to");

    if (v != NULL) {
        if (!json_is_array(v)) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"data.payload.to\" not an array");
        }

        v = json_array_get(v, 0);

        if (v != NULL
            && (!json_is_object(v)
                || optout_in_string(v, "phone_number", 1, &to, &to_len)
                   != 0))
        {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"data.payload.to[0].phone_number\" "
                                  "missing or not a string");
        }
    }

    /* an MMS without text has "text": null or none */

    if (optout_in_string(payload, "text", 0, &text, &text_len) != 0) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"data.payload.text\" not a string");
    }

    return optout_in_add(out, max, from, from_len, to, to_len, text,
                         text_len, 0);
}


/*
 * {"results": [{"from", "to", "text", "cleanText", ...}, ...]}; Infobip
 * writes international numbers without "+" ("385916242493").
 */

static int
optout_in_infobip(json_t *root, size_t max, optout_in_msgs_t *out,
    char *err, size_t err_len)
{
    int          rc;
    json_t      *results, *m;
    size_t       i, from_len, to_len, text_len;
    const char  *from, *to, *text;

    results = json_object_get(root, "results");

    if (!json_is_array(results)) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "\"results\" missing or not an array");
    }

    if (json_array_size(results) > max) {
        return optout_in_fail(err, err_len, OPTOUT_IN_TOOMANY,
                              "%zu messages, at most %zu",
                              json_array_size(results), max);
    }

    json_array_foreach(results, i, m) {
        if (!json_is_object(m)) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"results[%zu]\" not an object", i);
        }

        if (optout_in_string(m, "from", 1, &from, &from_len) != 0) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"results[%zu].from\" missing or not a "
                                  "string", i);
        }

        if (optout_in_string(m, "to", 0, &to, &to_len) != 0) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"results[%zu].to\" not a string", i);
        }

        if (json_object_get(m, "text") != NULL) {
            rc = optout_in_string(m, "text", 1, &text, &text_len);

        } else {
            rc = optout_in_string(m, "cleanText", 1, &text, &text_len);
        }

        if (rc != 0) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "\"results[%zu].text\" (or \"cleanText\") "
                                  "missing or not a string", i);
        }

        rc = optout_in_add(out, max, from, from_len, to, to_len, text,
                           text_len, 1);
        if (rc != OPTOUT_IN_OK) {
            return rc;
        }
    }

    return OPTOUT_IN_OK;
}


/* application/x-www-form-urlencoded: From, To, Body */

static int
optout_in_twilio(const char *body, size_t len, size_t max,
    optout_in_msgs_t *out, char *err, size_t err_len)
{
    int                 rc;
    char               *buf;
    size_t              n, from_len, to_len, text_len;
    const char         *from, *to, *text;
    optout_wh_rc_t      wrc;
    optout_wh_param_t  *p;

    buf = malloc(len ? len : 1);
    p = malloc(OPTOUT_IN_FORM_MAX * sizeof(optout_wh_param_t));

    if (buf == NULL || p == NULL) {
        rc = OPTOUT_IN_ENOMEM;
        goto done;
    }

    wrc = optout_wh_form_decode(body, len, buf, p, OPTOUT_IN_FORM_MAX, &n);

    if (wrc == OPTOUT_WH_TOOMANY) {
        rc = optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                            "more than %d form parameters",
                            OPTOUT_IN_FORM_MAX);
        goto done;
    }

    if (wrc != OPTOUT_WH_OK) {
        rc = optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                            "not a well-formed form body");
        goto done;
    }

    rc = optout_in_twilio_field(p, n, "From", 1, &from, &from_len, err,
                                err_len);
    if (rc != OPTOUT_IN_OK) {
        goto done;
    }

    rc = optout_in_twilio_field(p, n, "To", 0, &to, &to_len, err, err_len);
    if (rc != OPTOUT_IN_OK) {
        goto done;
    }

    rc = optout_in_twilio_field(p, n, "Body", 1, &text, &text_len, err,
                                err_len);
    if (rc != OPTOUT_IN_OK) {
        goto done;
    }

    rc = optout_in_add(out, max, from, from_len, to, to_len, text, text_len,
                       0);

done:

    free(buf);
    free(p);

    return rc;
}


/* exactly one parameter "name" (or none, if not required), without NUL */

static int
optout_in_twilio_field(const optout_wh_param_t *p, size_t n,
    const char *name, int required, const char **s, size_t *len,
    char *err, size_t err_len)
{
    size_t  i, nlen, found;

    nlen = strlen(name);
    found = 0;
    *s = "";
    *len = 0;

    for (i = 0; i < n; i++) {
        if (p[i].name_len != nlen || memcmp(p[i].name, name, nlen) != 0) {
            continue;
        }

        if (found++) {
            return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                                  "repeated parameter \"%s\"", name);
        }

        *s = p[i].value;
        *len = p[i].value_len;
    }

    if (found == 0 && required) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "missing parameter \"%s\"", name);
    }

    if (memchr(*s, '\0', *len) != NULL) {
        return optout_in_fail(err, err_len, OPTOUT_IN_MALFORMED,
                              "NUL byte in parameter \"%s\"", name);
    }

    return OPTOUT_IN_OK;
}


optout_in_replies_t *
optout_in_replies_create(void)
{
    return calloc(1, sizeof(optout_in_replies_t));
}


void
optout_in_replies_free(optout_in_replies_t *r)
{
    size_t  i;

    if (r == NULL) {
        return;
    }

    for (i = 0; i < r->n; i++) {
        free(r->r[i].text);
    }

    free(r->r);
    free(r);
}


/* NULL or "": 0 with cc ""; two ASCII letters: 0, upper-cased; else -1 */

static int
optout_in_country(const char *country, char *cc)
{
    cc[0] = '\0';

    if (country == NULL || country[0] == '\0') {
        return 0;
    }

    if (!isalpha((unsigned char) country[0])
        || !isalpha((unsigned char) country[1]) || country[2] != '\0'
        || (unsigned char) country[0] >= 0x80
        || (unsigned char) country[1] >= 0x80)
    {
        return -1;
    }

    cc[0] = (char) toupper((unsigned char) country[0]);
    cc[1] = (char) toupper((unsigned char) country[1]);
    cc[2] = '\0';

    return 0;
}


static optout_in_reply_t *
optout_in_find(const optout_in_replies_t *r, int op, const char *cc)
{
    size_t  i;

    for (i = 0; i < r->n; i++) {
        if (r->r[i].op == op && strcmp(r->r[i].cc, cc) == 0) {
            return &r->r[i];
        }
    }

    return NULL;
}


int
optout_in_replies_set(optout_in_replies_t *r, int op, const char *country,
    const char *text, size_t len, char *err, size_t err_len)
{
    char                cc[3], *copy;
    size_t              chars;
    optout_in_reply_t  *reply, *a;

    if (op != OPTOUT_KW_STOP && op != OPTOUT_KW_START
        && op != OPTOUT_KW_HELP)
    {
        return optout_in_fail(err, err_len, -1, "unknown operation %d", op);
    }

    if (optout_in_country(country, cc) != 0) {
        return optout_in_fail(err, err_len, -1, "invalid country \"%.8s\" "
                              "(ISO 3166-1 alpha-2 expected)", country);
    }

    if (u8_check((const uint8_t *) text, len) != NULL) {
        return optout_in_fail(err, err_len, -1, "reply is not valid UTF-8");
    }

    if (memchr(text, '\0', len) != NULL) {
        return optout_in_fail(err, err_len, -1, "reply contains a NUL byte");
    }

    chars = u8_mbsnlen((const uint8_t *) text, len);

    if (chars < OPTOUT_IN_REPLY_MIN) {
        return optout_in_fail(err, err_len, -1, "reply of %zu characters, "
                              "at least %d are required", chars,
                              OPTOUT_IN_REPLY_MIN);
    }

    if (len > OPTOUT_IN_REPLY_MAX) {
        return optout_in_fail(err, err_len, -1, "reply of %zu bytes, at "
                              "most %d are allowed", len,
                              OPTOUT_IN_REPLY_MAX);
    }

    copy = malloc(len + 1);
    if (copy == NULL) {
        return optout_in_fail(err, err_len, -1, "out of memory");
    }

    memcpy(copy, text, len);
    copy[len] = '\0';

    reply = optout_in_find(r, op, cc);

    if (reply == NULL) {
        a = realloc(r->r, (r->n + 1) * sizeof(optout_in_reply_t));
        if (a == NULL) {
            free(copy);
            return optout_in_fail(err, err_len, -1, "out of memory");
        }

        r->r = a;
        reply = &r->r[r->n++];
        reply->op = op;
        memcpy(reply->cc, cc, 3);

    } else {
        free(reply->text);
    }

    reply->text = copy;
    reply->len = len;

    return 0;
}


const char *
optout_in_reply(const optout_in_replies_t *r, int op, const char *country,
    size_t *len)
{
    char                cc[3];
    const char         *s;
    optout_in_reply_t  *reply;

    *len = 0;

    if (op != OPTOUT_KW_STOP && op != OPTOUT_KW_START
        && op != OPTOUT_KW_HELP)
    {
        return NULL;
    }

    reply = NULL;

    if (r != NULL) {
        if (optout_in_country(country, cc) == 0 && cc[0] != '\0') {
            reply = optout_in_find(r, op, cc);
        }

        if (reply == NULL) {
            reply = optout_in_find(r, op, "");
        }
    }

    if (reply != NULL) {
        *len = reply->len;
        return reply->text;
    }

    s = optout_in_builtin[op];
    *len = strlen(s);

    return s;
}


/*
 * TwiML: the reply XML-escaped; bytes that are not UTF-8 become U+FFFD
 * and characters XML 1.0 does not allow (controls other than tab, line
 * feed and carriage return, U+FFFE, U+FFFF) are left out.  Returns the
 * length written (NUL-terminated), 0 if size is too small.
 */

size_t
optout_in_twiml(const char *reply, size_t len, char *out, size_t size)
{
    int             n;
    char           *p;
    ucs4_t          c;
    const char     *esc;
    const uint8_t  *s, *end;

    static const char  head[] = OPTOUT_IN_TWIML_HEAD "<Response><Message>";
    static const char  tail[] = "</Message></Response>\n";
    static const char  none[] = OPTOUT_IN_TWIML_HEAD "<Response/>\n";

    if (reply == NULL || len == 0) {
        if (size < sizeof(none)) {
            return 0;
        }

        memcpy(out, none, sizeof(none));
        return sizeof(none) - 1;
    }

    if (size < OPTOUT_IN_TWIML_MAX(len)) {
        return 0;
    }

    p = out;
    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;

    s = (const uint8_t *) reply;
    end = s + len;

    while (s < end) {
        n = u8_mbtoucr(&c, s, end - s);

        if (n < 0) {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
            s++;
            continue;
        }

        esc = NULL;

        switch (c) {
        case '&':  esc = "&amp;";  break;
        case '<':  esc = "&lt;";   break;
        case '>':  esc = "&gt;";   break;
        case '"':  esc = "&quot;"; break;
        case '\'': esc = "&apos;"; break;
        }

        if (esc != NULL) {
            memcpy(p, esc, strlen(esc));
            p += strlen(esc);

        } else if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r')
                   || c == 0xfffe || c == 0xffff)
        {
            /* not an XML 1.0 character: left out */

        } else {
            memcpy(p, s, n);
            p += n;
        }

        s += n;
    }

    memcpy(p, tail, sizeof(tail));

    return p + sizeof(tail) - 1 - out;
}


/* {"action":..,"keyword":..,"reply":..}, NUL-terminated; 0 if too small */

size_t
optout_in_json(const char *action, const char *keyword, size_t kw_len,
    const char *reply, size_t reply_len, char *out, size_t size)
{
    char    *p;
    size_t   a_len;

    a_len = action ? strlen(action) : 0;

    if (keyword == NULL) {
        kw_len = 0;
    }

    if (reply == NULL) {
        reply_len = 0;
    }

    if (size < OPTOUT_IN_JSON_MAX(a_len, kw_len, reply_len)) {
        return 0;
    }

    p = out;

    memcpy(p, "{\"action\":", 10);
    p = optout_in_json_value(p + 10, action, a_len);

    memcpy(p, ",\"keyword\":", 11);
    p = optout_in_json_value(p + 11, keyword, kw_len);

    memcpy(p, ",\"reply\":", 9);
    p = optout_in_json_value(p + 9, reply, reply_len);

    *p++ = '}';
    *p = '\0';

    return p - out;
}


/* a JSON string, or null for NULL */

static char *
optout_in_json_value(char *p, const char *s, size_t len)
{
    if (s == NULL) {
        memcpy(p, "null", 4);
        return p + 4;
    }

    *p++ = '"';
    p += optout_json_escape(s, len, len, p);
    *p++ = '"';

    return p;
}
