
/*
 * Unit tests of the inbound-message core (src/optout_inbound.h): the
 * four body formats, the replies, the TwiML and JSON answers, and the
 * journal line's keyword field.  TAP output.
 *
 * The payloads are written from each provider's documentation (URLs in
 * docs/inbound-formats.md): Twilio's incoming message parameters,
 * Telnyx's message.received example, Infobip's MO_JSON_2 example.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optout_core.h"
#include "optout_inbound.h"
#include "optout_journal.h"
#include "optout_keyword.h"
#include "tap.h"


#define S(s)  (s), (sizeof(s) - 1)


static const char  twilio_doc[] =
    "ToCountry=US&ToState=CA&SmsMessageSid=SM1b9d0e6e8d3c4b5a6f7e8d9c0b1a2f3e"
    "&NumMedia=0&ToCity=SAN+FRANCISCO&FromZip=94105&SmsSid="
    "SM1b9d0e6e8d3c4b5a6f7e8d9c0b1a2f3e&FromState=CA&SmsStatus=received"
    "&FromCity=SAN+FRANCISCO&Body=Stop+%F0%9F%9B%91&FromCountry=US"
    "&To=%2B15017122661&MessagingServiceSid=MG9752274e9e519418a7406176694466fa"
    "&ToZip=94105&NumSegments=1&MessageSid=SM1b9d0e6e8d3c4b5a6f7e8d9c0b1a2f3e"
    "&AccountSid=ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX&From=%2B14155552671"
    "&ApiVersion=2010-04-01";

static const char  telnyx_doc[] =
    "{\"data\":{\"record_type\":\"event\","
    "\"id\":\"bf6307bd-884d-4c1f-b6ea-c62b8c495d3c\","
    "\"event_type\":\"message.received\","
    "\"occurred_at\":\"2019-01-23T18:10:02.574Z\","
    "\"payload\":{\"record_type\":\"message\",\"direction\":\"inbound\","
    "\"id\":\"7ee4241c-f127-47e5-9c34-3aac291f8058\",\"type\":\"SMS\","
    "\"messaging_profile_id\":\"0f512bda-ae1e-4597-8e11-e5f5686b97d3\","
    "\"from\":{\"phone_number\":\"+18665550001\","
    "\"carrier\":\"T-MOBILE USA, INC.\",\"line_type\":\"Wireless\"},"
    "\"to\":[{\"phone_number\":\"+18445550001\",\"status\":\"delivered\","
    "\"carrier\":\"TELNYX LLC\",\"line_type\":\"VoIP\"}],"
    "\"cc\":[],\"text\":\"STOP\",\"media\":[],\"encoding\":\"GSM-7\","
    "\"parts\":1,\"tags\":[],\"received_at\":\"2019-01-23T18:10:02.574Z\"}},"
    "\"meta\":{\"attempt\":1,\"delivered_to\":\"https://example.com/hooks\"}}";

static const char  telnyx_finalized[] =
    "{\"data\":{\"event_type\":\"message.finalized\","
    "\"id\":\"4ee8c3a6-4995-4309-a3c6-38e3db9ea4be\","
    "\"occurred_at\":\"2019-12-09T21:32:14.148+00:00\","
    "\"payload\":{\"direction\":\"outbound\",\"from\":{\"phone_number\":"
    "\"+18445550001\"},\"to\":[{\"phone_number\":\"+18665550001\","
    "\"status\":\"delivered\"}],\"text\":\"Hello\"},"
    "\"record_type\":\"event\"},\"meta\":{\"attempt\":1}}";

static const char  infobip_doc2[] =
    "{\"results\":[{\"messageId\":\"817790313235066447\","
    "\"from\":\"385916242493\",\"to\":\"385921004026\","
    "\"text\":\"QUIZ Correct answer is Paris\","
    "\"cleanText\":\"Correct answer is Paris\",\"keyword\":\"QUIZ\","
    "\"receivedAt\":\"2016-10-06T09:28:39.220+0000\",\"smsCount\":1,"
    "\"price\":{\"pricePerMessage\":0,\"currency\":\"EUR\"},"
    "\"callbackData\":\"callbackData\"},"
    "{\"messageId\":\"817790313235066448\",\"from\":\"447700900123\","
    "\"to\":\"38761\",\"cleanText\":\"STOP\","
    "\"receivedAt\":\"2016-10-06T09:29:01.000+0000\",\"smsCount\":1}],"
    "\"messageCount\":2,\"pendingMessageCount\":0}";


static int
msg_is(const optout_in_msgs_t *m, size_t i, const char *from,
    const char *to, const char *text, const char *what)
{
    const optout_in_msg_t  *g;

    if (i >= m->n) {
        return ok(0, "%s: message %zu exists", what, i);
    }

    g = &m->msgs[i];

    return ok(g->from_len == strlen(from) && strcmp(g->from, from) == 0
              && g->to_len == strlen(to) && strcmp(g->to, to) == 0
              && g->text_len == strlen(text) && strcmp(g->text, text) == 0,
              "%s: from \"%s\" to \"%s\" text \"%s\"", what, g->from, g->to,
              g->text);
}


/* a body that must be refused with rc, nothing kept, a reason given */

static void
refused(int format, const char *body, size_t len, size_t max, int want,
    const char *what)
{
    int               rc;
    char              err[256];
    optout_in_msgs_t  m;

    err[0] = '\0';
    rc = optout_in_parse(format, body, len, max, &m, err, sizeof(err));

    ok(rc == want && m.n == 0 && m.msgs == NULL && err[0] != '\0',
       "%s %s: rc %d (want %d), reason \"%s\"", optout_in_format_name(format),
       what, rc, want, err);
}


static void
test_formats(void)
{
    ok(optout_in_format(S("generic")) == OPTOUT_IN_GENERIC
       && optout_in_format(S("twilio")) == OPTOUT_IN_TWILIO
       && optout_in_format(S("telnyx")) == OPTOUT_IN_TELNYX
       && optout_in_format(S("infobip")) == OPTOUT_IN_INFOBIP,
       "format names");
    ok(optout_in_format(S("Twilio")) == -1
       && optout_in_format(S("twili")) == -1
       && optout_in_format("", 0) == -1, "unknown format names: -1");
    ok(strcmp(optout_in_format_name(OPTOUT_IN_INFOBIP), "infobip") == 0
       && optout_in_format_name(4) == NULL
       && optout_in_format_name(-1) == NULL, "format_name");
}


static void
test_generic(void)
{
    int               rc;
    char              err[256];
    optout_in_msgs_t  m;

    static const char  ok1[] =
        "{\"from\":\"+447700900123\",\"to\":\"ACME\",\"text\":\"stop!!\","
        "\"id\":17}";
    static const char  noto[] =
        "{\"text\":\"\\u0421\\u0422\\u041e\\u041f\","
        "\"from\":\"+33612345678\"}";

    rc = optout_in_parse(OPTOUT_IN_GENERIC, S(ok1), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "generic: one message (rc %d)", rc);
    msg_is(&m, 0, "+447700900123", "ACME", "stop!!", "generic");
    optout_in_msgs_free(&m);
    ok(m.n == 0 && m.msgs == NULL, "msgs_free empties");

    rc = optout_in_parse(OPTOUT_IN_GENERIC, S(noto), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "generic without \"to\"");
    msg_is(&m, 0, "+33612345678", "", "\xd0\xa1\xd0\xa2\xd0\x9e\xd0\x9f",
           "generic, escaped UTF-8");
    optout_in_msgs_free(&m);

    refused(OPTOUT_IN_GENERIC, S("{\"to\":\"A\",\"text\":\"STOP\"}"), 100,
            OPTOUT_IN_MALFORMED, "without from");
    refused(OPTOUT_IN_GENERIC, S("{\"from\":\"+447700900123\",\"to\":\"A\"}"),
            100, OPTOUT_IN_MALFORMED, "without text");
    refused(OPTOUT_IN_GENERIC, S("{\"from\":447700900123,\"text\":\"STOP\"}"),
            100, OPTOUT_IN_MALFORMED, "number from");
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"text\":[\"STOP\"]}"), 100,
            OPTOUT_IN_MALFORMED, "array text");
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"text\":null}"), 100,
            OPTOUT_IN_MALFORMED, "null text");
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"to\":5,\"text\":\"STOP\"}"), 100,
            OPTOUT_IN_MALFORMED, "number to");
    refused(OPTOUT_IN_GENERIC,
            S("[{\"from\":\"+447700900123\",\"text\":\"STOP\"}]"), 100,
            OPTOUT_IN_MALFORMED, "array body");
    refused(OPTOUT_IN_GENERIC, S("from=%2B447700900123&text=STOP"), 100,
            OPTOUT_IN_MALFORMED, "form body");
    refused(OPTOUT_IN_GENERIC, S("{\"from\":\"+447700900123\",\"text\":\"ST"),
            100, OPTOUT_IN_MALFORMED, "truncated JSON");
    refused(OPTOUT_IN_GENERIC, "", 0, 100, OPTOUT_IN_MALFORMED, "empty body");

    rc = optout_in_parse(OPTOUT_IN_GENERIC, S("{\"from\":\"+447700900123"),
                         100, &m, err, sizeof(err));
    ok(rc == OPTOUT_IN_MALFORMED && strstr(err, "447700900123") == NULL
       && strstr(err, "at byte") != NULL,
       "the reason does not quote the body: %s", err);
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"text\":\"HELLO\","
              "\"text\":\"STOP\"}"), 100, OPTOUT_IN_MALFORMED,
            "duplicate key");
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"text\":\"ST\\u0000OP\"}"), 100,
            OPTOUT_IN_MALFORMED, "NUL in a string");
    refused(OPTOUT_IN_GENERIC,
            S("{\"from\":\"+447700900123\",\"text\":\"STOP\"}"), 0,
            OPTOUT_IN_TOOMANY, "max 0");
    refused(7, S("{}"), 100, OPTOUT_IN_MALFORMED, "unknown format");
}


static void
test_twilio(void)
{
    int               rc;
    char              err[256];
    optout_in_msgs_t  m;

    rc = optout_in_parse(OPTOUT_IN_TWILIO, S(twilio_doc), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "twilio: documented request (rc %d)",
       rc);
    msg_is(&m, 0, "+14155552671", "+15017122661", "Stop \xf0\x9f\x9b\x91",
           "twilio");
    optout_in_msgs_free(&m);

    rc = optout_in_parse(OPTOUT_IN_TWILIO, S("Body=&From=%2B14155552671"),
                         100, &m, err, sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "twilio: empty Body, no To");
    msg_is(&m, 0, "+14155552671", "", "", "twilio, empty Body");
    optout_in_msgs_free(&m);

    refused(OPTOUT_IN_TWILIO,
            S("From=%2B14155552671&To=%2B15017122661&Body=HELLO"
              "&From=%2B14155550000"), 100, OPTOUT_IN_MALFORMED,
            "repeated From");
    refused(OPTOUT_IN_TWILIO,
            S("From=%2B14155552671&Body=START&To=%2B15017122661&Body=STOP"),
            100, OPTOUT_IN_MALFORMED, "repeated Body");
    refused(OPTOUT_IN_TWILIO,
            S("From=%2B14155552671&To=a&To=b&Body=STOP"), 100,
            OPTOUT_IN_MALFORMED, "repeated To");
    refused(OPTOUT_IN_TWILIO, S("To=%2B15017122661&Body=STOP"), 100,
            OPTOUT_IN_MALFORMED, "without From");
    refused(OPTOUT_IN_TWILIO, S("From=%2B14155552671&To=%2B15017122661"),
            100, OPTOUT_IN_MALFORMED, "without Body");
    refused(OPTOUT_IN_TWILIO, S("from=%2B14155552671&body=STOP"), 100,
            OPTOUT_IN_MALFORMED, "lower-case names");
    refused(OPTOUT_IN_TWILIO, S("From=%2B14155552671&Body=STOP%zz"), 100,
            OPTOUT_IN_MALFORMED, "bad percent escape");
    refused(OPTOUT_IN_TWILIO, S("From=%2B1415555%002671&Body=STOP"), 100,
            OPTOUT_IN_MALFORMED, "NUL in From");
    refused(OPTOUT_IN_TWILIO,
            S("{\"From\":\"+14155552671\",\"Body\":\"STOP\"}"), 100,
            OPTOUT_IN_MALFORMED, "JSON body");
}


static void
test_telnyx(void)
{
    int               rc;
    char              err[256];
    optout_in_msgs_t  m;

    static const char  mms[] =
        "{\"data\":{\"event_type\":\"message.received\",\"payload\":{"
        "\"from\":{\"phone_number\":\"+18665550001\"},\"to\":[],"
        "\"text\":null,\"media\":[{\"url\":\"https://x/y.jpg\"}]}}}";

    rc = optout_in_parse(OPTOUT_IN_TELNYX, S(telnyx_doc), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "telnyx: documented message.received "
       "(rc %d)", rc);
    msg_is(&m, 0, "+18665550001", "+18445550001", "STOP", "telnyx");
    optout_in_msgs_free(&m);

    rc = optout_in_parse(OPTOUT_IN_TELNYX, S(telnyx_finalized), 100, &m,
                         err, sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 0 && m.msgs == NULL,
       "telnyx: message.finalized carries no message (rc %d, n %zu)", rc,
       m.n);
    optout_in_msgs_free(&m);

    rc = optout_in_parse(OPTOUT_IN_TELNYX, S(mms), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "telnyx: MMS, null text, empty to");
    msg_is(&m, 0, "+18665550001", "", "", "telnyx MMS");
    optout_in_msgs_free(&m);

    refused(OPTOUT_IN_TELNYX, S("{\"data\":{\"payload\":{}}}"), 100,
            OPTOUT_IN_MALFORMED, "without event_type");
    refused(OPTOUT_IN_TELNYX, S("{\"data\":[]}"), 100, OPTOUT_IN_MALFORMED,
            "data an array");
    refused(OPTOUT_IN_TELNYX,
            S("{\"event_type\":\"message.received\",\"payload\":{\"from\":"
              "{\"phone_number\":\"+18665550001\"},\"text\":\"STOP\"}}"),
            100, OPTOUT_IN_MALFORMED, "without data");
    refused(OPTOUT_IN_TELNYX,
            S("{\"data\":{\"event_type\":\"message.received\"}}"), 100,
            OPTOUT_IN_MALFORMED, "without payload");
    refused(OPTOUT_IN_TELNYX,
            S("{\"data\":{\"event_type\":\"message.received\",\"payload\":{"
              "\"from\":\"+18665550001\",\"text\":\"STOP\"}}}"), 100,
            OPTOUT_IN_MALFORMED, "from a string");
    refused(OPTOUT_IN_TELNYX,
            S("{\"data\":{\"event_type\":\"message.received\",\"payload\":{"
              "\"from\":{\"phone_number\":\"+18665550001\"},"
              "\"to\":{\"phone_number\":\"+18445550001\"},"
              "\"text\":\"STOP\"}}}"), 100, OPTOUT_IN_MALFORMED,
            "to an object");
    refused(OPTOUT_IN_TELNYX,
            S("{\"data\":{\"event_type\":\"message.received\",\"payload\":{"
              "\"from\":{\"phone_number\":\"+18665550001\"},"
              "\"to\":[{\"number\":\"+18445550001\"}],"
              "\"text\":\"STOP\"}}}"), 100, OPTOUT_IN_MALFORMED,
            "to[0] without phone_number");
    refused(OPTOUT_IN_TELNYX,
            S("{\"data\":{\"event_type\":\"message.received\",\"payload\":{"
              "\"from\":{\"phone_number\":\"+18665550001\"},"
              "\"text\":7}}}"), 100, OPTOUT_IN_MALFORMED, "number text");
    refused(OPTOUT_IN_TELNYX, S("{\"data\":{\"event_type\":7}}"), 100,
            OPTOUT_IN_MALFORMED, "number event_type");
}


static void
test_infobip(void)
{
    int               rc;
    char              err[256], *big, *p;
    size_t            i;
    optout_in_msgs_t  m;

    rc = optout_in_parse(OPTOUT_IN_INFOBIP, S(infobip_doc2), 100, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 2, "infobip: 2 results (rc %d, n %zu)",
       rc, m.n);
    msg_is(&m, 0, "+385916242493", "+385921004026",
           "QUIZ Correct answer is Paris", "infobip 1: text before cleanText");
    msg_is(&m, 1, "+447700900123", "38761", "STOP",
           "infobip 2: cleanText, short code kept");
    optout_in_msgs_free(&m);

    rc = optout_in_parse(OPTOUT_IN_INFOBIP,
                         S("{\"results\":[],\"messageCount\":0}"), 100, &m,
                         err, sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 0, "infobip: no results");

    rc = optout_in_parse(OPTOUT_IN_INFOBIP,
                         S("{\"results\":[{\"from\":\"InfoSMS\","
                           "\"to\":\"+385921004026\",\"text\":\"x\"}]}"),
                         100, &m, err, sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 1, "infobip: alphanumeric from");
    msg_is(&m, 0, "InfoSMS", "+385921004026", "x", "infobip, as written");
    optout_in_msgs_free(&m);

    refused(OPTOUT_IN_INFOBIP, S(infobip_doc2), 1, OPTOUT_IN_TOOMANY,
            "2 results, max 1");
    refused(OPTOUT_IN_INFOBIP, S("{\"results\":{}}"), 100,
            OPTOUT_IN_MALFORMED, "results an object");
    refused(OPTOUT_IN_INFOBIP, S("{\"messageCount\":0}"), 100,
            OPTOUT_IN_MALFORMED, "without results");
    refused(OPTOUT_IN_INFOBIP, S("{\"results\":[\"STOP\"]}"), 100,
            OPTOUT_IN_MALFORMED, "a string result");
    refused(OPTOUT_IN_INFOBIP,
            S("{\"results\":[{\"from\":\"385916242493\",\"text\":\"A\"},"
              "{\"from\":\"385916242494\"}]}"), 100, OPTOUT_IN_MALFORMED,
            "second result without text");
    refused(OPTOUT_IN_INFOBIP,
            S("{\"results\":[{\"from\":\"385916242493\",\"text\":null,"
              "\"cleanText\":\"STOP\"}]}"), 100, OPTOUT_IN_MALFORMED,
            "null text (cleanText only when text is absent)");
    refused(OPTOUT_IN_INFOBIP,
            S("{\"results\":[{\"to\":\"385921004026\",\"text\":\"STOP\"}]}"),
            100, OPTOUT_IN_MALFORMED, "without from");
    refused(OPTOUT_IN_INFOBIP,
            S("{\"results\":[{\"from\":385916242493,\"text\":\"STOP\"}]}"),
            100, OPTOUT_IN_MALFORMED, "number from");

    /* 101 results, limit 100 */

    big = malloc(101 * 64 + 32);
    if (big == NULL) {
        printf("Bail out! out of memory\n");
        exit(1);
    }

    p = big + sprintf(big, "{\"results\":[");

    for (i = 0; i < 101; i++) {
        p += sprintf(p, "%s{\"from\":\"3859162%05zu\",\"text\":\"STOP\"}",
                     i ? "," : "", i);
    }

    p += sprintf(p, "]}");

    refused(OPTOUT_IN_INFOBIP, big, p - big, OPTOUT_IN_MSGS_MAX,
            OPTOUT_IN_TOOMANY, "101 results");

    rc = optout_in_parse(OPTOUT_IN_INFOBIP, big, p - big, 101, &m, err,
                         sizeof(err));
    ok(rc == OPTOUT_IN_OK && m.n == 101, "infobip: 101 results, max 101");
    msg_is(&m, 100, "+385916200100", "", "STOP", "infobip, the last one");
    optout_in_msgs_free(&m);

    free(big);
}


static void
test_replies(void)
{
    int                   rc;
    char                  err[256], text[1700];
    size_t                len, i;
    const char           *s;
    optout_in_replies_t  *r;

    static const char  stop_fr[] =
        "Vous \xc3\xaates d\xc3\xa9sinscrit. R\xc3\xa9pondez START.";
    static const char  stop_any[] = "Unsubscribed. Reply START to undo it.";
    static const char  help_us[] = "Acme alerts: reply STOP to end, START.";

    r = optout_in_replies_create();
    if (r == NULL) {
        printf("Bail out! out of memory\n");
        exit(1);
    }

    s = optout_in_reply(r, OPTOUT_KW_STOP, NULL, &len);
    ok(s != NULL && len == strlen(s)
       && strcmp(s, "You are unsubscribed and will receive no more messages "
                 "from us. Reply START to subscribe again.") == 0,
       "built-in stop reply");
    s = optout_in_reply(r, OPTOUT_KW_START, "US", &len);
    ok(s != NULL && len == strlen(s)
       && strcmp(s, "You are subscribed again and will receive messages "
                 "from us. Reply STOP to unsubscribe.") == 0,
       "built-in start reply");
    s = optout_in_reply(r, OPTOUT_KW_HELP, "", &len);
    ok(s != NULL && len == strlen(s)
       && strcmp(s, "Reply STOP to unsubscribe, START to subscribe again.")
          == 0, "built-in help reply");
    s = optout_in_reply(r, OPTOUT_KW_NONE, "US", &len);
    ok(s == NULL && len == 0, "no reply without an operation");

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "fr", S(stop_fr), err,
                               sizeof(err));
    ok(rc == 0, "set stop country=fr (lower case)");

    s = optout_in_reply(r, OPTOUT_KW_STOP, "FR", &len);
    ok(s != NULL && len == sizeof(stop_fr) - 1 && strcmp(s, stop_fr) == 0,
       "FR: its own reply");
    s = optout_in_reply(r, OPTOUT_KW_STOP, "fr", &len);
    ok(s != NULL && strcmp(s, stop_fr) == 0, "fr (any case): its own reply");
    s = optout_in_reply(r, OPTOUT_KW_STOP, "DE", &len);
    ok(s != NULL && strncmp(s, "You are unsubscribed", 20) == 0,
       "DE, no reply without country: built-in");
    s = optout_in_reply(r, OPTOUT_KW_START, "FR", &len);
    ok(s != NULL && strncmp(s, "You are subscribed again", 24) == 0,
       "FR start: built-in (the stop reply is per operation)");

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, NULL, S(stop_any), err,
                               sizeof(err));
    ok(rc == 0, "set stop without country");

    s = optout_in_reply(r, OPTOUT_KW_STOP, "DE", &len);
    ok(s != NULL && strcmp(s, stop_any) == 0,
       "DE: the reply without country");
    s = optout_in_reply(r, OPTOUT_KW_STOP, NULL, &len);
    ok(s != NULL && strcmp(s, stop_any) == 0,
       "no country: the reply without country");
    s = optout_in_reply(r, OPTOUT_KW_STOP, "FR", &len);
    ok(s != NULL && strcmp(s, stop_fr) == 0,
       "FR: still its own reply before the one without country");
    s = optout_in_reply(r, OPTOUT_KW_STOP, "F", &len);
    ok(s != NULL && strcmp(s, stop_any) == 0,
       "bad country on lookup: the reply without country");

    rc = optout_in_replies_set(r, OPTOUT_KW_HELP, "US", S(help_us), err,
                               sizeof(err));
    ok(rc == 0, "set help country=US");
    rc = optout_in_replies_set(r, OPTOUT_KW_HELP, "us",
                               S("Acme: STOP to end, START to resume."), err,
                               sizeof(err));
    ok(rc == 0, "set help country=us again");
    s = optout_in_reply(r, OPTOUT_KW_HELP, "US", &len);
    ok(s != NULL && strcmp(s, "Acme: STOP to end, START to resume.") == 0,
       "setting twice replaces");
    s = optout_in_reply(r, OPTOUT_KW_HELP, "CA", &len);
    ok(s != NULL && strncmp(s, "Reply STOP", 10) == 0, "CA help: built-in");

    /* limits */

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, NULL,
                               S("0123456789012345678"), err, sizeof(err));
    ok(rc == -1 && strstr(err, "19 characters") != NULL,
       "19 characters refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB",
                               S("01234567890123456789"), err, sizeof(err));
    ok(rc == 0, "20 characters accepted");

    /* 19 code points in 38 bytes: counted in characters, not bytes */
    for (i = 0; i < 19; i++) {
        memcpy(text + 2 * i, "\xc3\xa9", 2);
    }

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB", text, 38, err,
                               sizeof(err));
    ok(rc == -1, "19 two-byte characters (38 bytes) refused: %s", err);
    memcpy(text + 38, "\xc3\xa9", 2);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB", text, 40, err,
                               sizeof(err));
    ok(rc == 0, "20 two-byte characters accepted");

    memset(text, 'a', sizeof(text));
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB", text, 1600, err,
                               sizeof(err));
    ok(rc == 0, "1600 bytes accepted");
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB", text, 1601, err,
                               sizeof(err));
    ok(rc == -1, "1601 bytes refused: %s", err);
    s = optout_in_reply(r, OPTOUT_KW_STOP, "GB", &len);
    ok(s != NULL && len == 1600, "a refused reply leaves the previous one");

    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB",
                               S("Unsubscribed \xff\xfe reply START now"),
                               err, sizeof(err));
    ok(rc == -1, "invalid UTF-8 refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB",
                               S("Unsubscribed \xed\xa0\x80 reply START now"),
                               err, sizeof(err));
    ok(rc == -1, "a UTF-8 surrogate refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GB",
                               "Unsubscribed\0 reply START now", 29, err,
                               sizeof(err));
    ok(rc == -1, "a NUL byte refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "GBR", S(stop_any), err,
                               sizeof(err));
    ok(rc == -1, "country GBR refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_STOP, "4B", S(stop_any), err,
                               sizeof(err));
    ok(rc == -1, "country 4B refused: %s", err);
    rc = optout_in_replies_set(r, OPTOUT_KW_NONE, NULL, S(stop_any), err,
                               sizeof(err));
    ok(rc == -1, "operation none refused: %s", err);

    optout_in_replies_free(r);
    optout_in_replies_free(NULL);

    s = optout_in_reply(NULL, OPTOUT_KW_STOP, "FR", &len);
    ok(s != NULL && strncmp(s, "You are unsubscribed", 20) == 0,
       "no reply table: built-in");
}


static void
test_twiml(void)
{
    char    out[OPTOUT_IN_TWIML_MAX(64)];
    size_t  n;

    static const char  head[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>";
    static const char  tail[] = "</Message></Response>\n";

    n = optout_in_twiml(S("Reply <&>\"' now"), out, sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>"
                 "<Message>Reply &lt;&amp;&gt;&quot;&apos; now</Message>"
                 "</Response>\n") == 0, "TwiML escapes <&>\"': %s", out);

    n = optout_in_twiml(NULL, 0, out, sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
                 "<Response/>\n") == 0, "TwiML without a reply: %s", out);
    n = optout_in_twiml("x", 0, out, sizeof(out));
    ok(n > 0 && strstr(out, "<Response/>") != NULL,
       "TwiML with an empty reply: no Message");

    n = optout_in_twiml(S("a\tb\nc\rd\x01" "e\x1f" "f\x7f" "g"), out,
                        sizeof(out));
    ok(n == strlen(out) && strncmp(out, head, sizeof(head) - 1) == 0
       && strcmp(out + sizeof(head) - 1, "a\tb\nc\rdef\x7fg" "</Message>"
                 "</Response>\n") == 0,
       "TwiML: tab, LF, CR kept, other C0 controls left out");

    n = optout_in_twiml(S("x\xef\xbf\xbey\xef\xbf\xbfz\xc3\xa9\xff!"), out,
                        sizeof(out));
    ok(n == strlen(out)
       && strcmp(out + sizeof(head) - 1, "xyz\xc3\xa9\xef\xbf\xbd!"
                 "</Message></Response>\n") == 0,
       "TwiML: U+FFFE/U+FFFF left out, invalid byte as U+FFFD");

    n = optout_in_twiml(S("&&&&&&&&&&"), out, OPTOUT_IN_TWIML_MAX(10));
    ok(n == strlen(out) && n == sizeof(head) - 1 + 50 + sizeof(tail) - 1,
       "TwiML: all escaped, within OPTOUT_IN_TWIML_MAX");
    n = optout_in_twiml(S("&&&&&&&&&&"), out, OPTOUT_IN_TWIML_MAX(10) - 1);
    ok(n == 0, "TwiML: buffer below OPTOUT_IN_TWIML_MAX -> 0");
    n = optout_in_twiml(NULL, 0, out, 20);
    ok(n == 0, "TwiML without a reply, buffer too small -> 0");
}


static void
test_json(void)
{
    char    out[OPTOUT_IN_JSON_MAX(5, 4, 40)];
    size_t  n;

    n = optout_in_json("stop", "STOP", 4, S("Bye \"x\"\n\\ \xc3\xa9"), out,
                       sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "{\"action\":\"stop\",\"keyword\":\"STOP\",\"reply\":"
                 "\"Bye \\\"x\\\"\\u000a\\\\ \xc3\xa9\"}") == 0,
       "JSON answer, escaped: %s", out);

    n = optout_in_json(NULL, NULL, 0, NULL, 0, out, sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "{\"action\":null,\"keyword\":null,\"reply\":null}")
          == 0, "JSON answer, nothing matched: %s", out);

    n = optout_in_json("stop", "STOP", 4, NULL, 0, out, sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "{\"action\":\"stop\",\"keyword\":\"STOP\","
                 "\"reply\":null}") == 0,
       "JSON answer, repeated STOP: reply null: %s", out);

    n = optout_in_json("help", "HELP", 4, "", 0, out, sizeof(out));
    ok(n == strlen(out)
       && strcmp(out, "{\"action\":\"help\",\"keyword\":\"HELP\","
                 "\"reply\":\"\"}") == 0, "JSON answer, empty reply");

    n = optout_in_json("stop", "STOP", 4, "0123456789", 10, out,
                       OPTOUT_IN_JSON_MAX(4, 4, 10) - 1);
    ok(n == 0, "JSON answer, buffer below OPTOUT_IN_JSON_MAX -> 0");
}


static void
test_journal(void)
{
    char                    line[1024], err[256];
    size_t                  n;
    optout_dest_t           d;
    optout_journal_rec_t    rec;
    optout_journal_entry_t  e;

    static const char  want[] =
        "{\"t\":1763900000.123,\"action\":\"optout\",\"ns\":\"\","
        "\"dest\":\"+447700900123\",\"scope\":\"sender\","
        "\"sender\":\"ACME\",\"campaign\":\"0\",\"source\":\"keyword\","
        "\"keyword\":\"ARR\\\"\xc3\x8aT\",\"channel\":\"sms\","
        "\"client\":\"10.0.0.1\",\"kid\":0}\n";

    optout_normalize_dest("+447700900123", 13, &d);

    memset(&rec, 0, sizeof(rec));
    rec.time = 1763900000.123;
    rec.action = "optout";
    rec.ns = "";
    rec.dest = &d;
    rec.sender = "ACME";
    rec.sender_len = 4;
    rec.source = OPTOUT_SOURCE_KEYWORD;
    rec.client = "10.0.0.1";
    rec.client_len = 8;
    rec.keyword = "ARR\"\xc3\x8aT";
    rec.keyword_len = 7;

    n = optout_journal_format(&rec, line, sizeof(line));
    if (!ok(n == sizeof(want) - 1 && strcmp(line, want) == 0,
            "journal line with a keyword after source"))
    {
        diag("got %s", line);
    }

    ok(optout_journal_parse(line, n - 1, &e, err, sizeof(err)) == OPTOUT_OK
       && !e.optin && e.rule.source == OPTOUT_SOURCE_KEYWORD
       && e.sender_len == 4 && strcmp(e.dest.data, "+447700900123") == 0,
       "the journal parser reads it back (%s)", err);

    rec.action = "optin";
    n = optout_journal_format(&rec, line, sizeof(line));
    ok(n > 0 && optout_journal_parse(line, n - 1, &e, err, sizeof(err))
                == OPTOUT_OK && e.optin
       && e.rule.source == OPTOUT_SOURCE_KEYWORD,
       "an optin line with a keyword reads back (%s)", err);

    rec.action = "optout";
    rec.keyword = NULL;
    rec.keyword_len = 0;
    n = optout_journal_format(&rec, line, sizeof(line));
    ok(n > 0 && strstr(line, "\"keyword\":") == NULL
       && strstr(line, "\"source\":\"keyword\",\"channel\":\"sms\"") != NULL,
       "no keyword: no field");
}


int
main(void)
{
    test_formats();
    test_generic();
    test_twilio();
    test_telnyx();
    test_infobip();
    test_replies();
    test_twiml();
    test_json();
    test_journal();

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
