
/*
 * Inbound messages (MO webhooks): the body parsers of the four formats,
 * the confirmation replies per operation and country, and the answers
 * (TwiML, JSON).  No nginx dependency; needs jansson.  See
 * docs/inbound-formats.md.
 */

#ifndef _OPTOUT_INBOUND_H_INCLUDED_
#define _OPTOUT_INBOUND_H_INCLUDED_


#include <stddef.h>


#define OPTOUT_IN_GENERIC   0   /* {"from","to","text"} */
#define OPTOUT_IN_TWILIO    1   /* form: From, To, Body */
#define OPTOUT_IN_TELNYX    2   /* data.payload.from.phone_number,
                                   data.payload.to[0].phone_number,
                                   data.payload.text; data.event_type must be
                                   "message.received" (others: 0 messages) */
#define OPTOUT_IN_INFOBIP   3   /* results[]: from, to, text (cleanText if
                                   text absent, as Infobip documents) */

#define OPTOUT_IN_OK         0
#define OPTOUT_IN_MALFORMED -1  /* 400 40010: not JSON/form, wrong shape,
                                   a required field missing or not a string */
#define OPTOUT_IN_TOOMANY   -2  /* 413 41310: more than max messages */
#define OPTOUT_IN_ENOMEM    -3

#define OPTOUT_IN_MSGS_MAX  100


typedef struct {
    char    *from;  size_t from_len;     /* NUL-terminated copies */
    char    *to;    size_t to_len;
    char    *text;  size_t text_len;
} optout_in_msg_t;


typedef struct {
    optout_in_msg_t  *msgs;
    size_t            n;
} optout_in_msgs_t;


int optout_in_format(const char *name, size_t len);   /* -1 if unknown */
const char *optout_in_format_name(int format);

/* parses a whole body; err gets a short reason for the error log */
int optout_in_parse(int format, const char *body, size_t len, size_t max,
    optout_in_msgs_t *out, char *err, size_t err_len);
void optout_in_msgs_free(optout_in_msgs_t *m);


/* replies per operation (OPTOUT_KW_STOP/START/HELP) and country */
typedef struct optout_in_replies_s  optout_in_replies_t;

optout_in_replies_t *optout_in_replies_create(void);  /* English defaults */
void optout_in_replies_free(optout_in_replies_t *r);
/* refuses invalid UTF-8, fewer than 20 characters (code points), more than
   1600 bytes, a bad country; setting one twice replaces it */
int optout_in_replies_set(optout_in_replies_t *r, int op, const char *country,
    const char *text, size_t len, char *err, size_t err_len);
/* country's reply, else the one without country, else the built-in one */
const char *optout_in_reply(const optout_in_replies_t *r, int op,
    const char *country, size_t *len);


/* the answers: TwiML (XML-escaped, <Response/> without a reply) and JSON
   {"action":..,"keyword":..,"reply":..} (null for absent values) */
#define OPTOUT_IN_TWIML_MAX(n)  ((n) * 6 + 128)
size_t optout_in_twiml(const char *reply, size_t len, char *out, size_t size);
#define OPTOUT_IN_JSON_MAX(a, k, r)  (((a) + (k) + (r)) * 6 + 64)
size_t optout_in_json(const char *action, const char *keyword, size_t kw_len,
    const char *reply, size_t reply_len, char *out, size_t size);


#endif /* _OPTOUT_INBOUND_H_INCLUDED_ */
