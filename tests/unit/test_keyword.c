
/*
 * Unit tests of keyword matching (src/optout_keyword.h), TAP output.
 *
 *   build/test_keyword            run the tests
 *   build/test_keyword --bench    time matches (first_word, country FR)
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "optout_keyword.h"
#include "tap.h"


typedef struct {
    const char  *text;
    int          whole;                        /* op in whole mode */
    int          first;                        /* op in first_word mode */
    const char  *keyword;                      /* first_word, if any */
} case_t;


#define S   OPTOUT_KW_STOP
#define G   OPTOUT_KW_START
#define H   OPTOUT_KW_HELP
#define N   OPTOUT_KW_NONE


static const case_t  cases[] = {
    /* sloppy spellings that match in both modes */
    { "STOP", S, S, "STOP" },
    { "Stop", S, S, "STOP" },
    { " STOP. ", S, S, "STOP" },
    { "stop!!", S, S, "STOP" },
    { "\xef\xbc\xb3\xef\xbc\xb4\xef\xbc\xaf\xef\xbc\xb0", S, S, "STOP" },
    { "Stop \xf0\x9f\x9b\x91", S, S, "STOP" },
    { "sToP\n", S, S, "STOP" },
    { "\tstop\r\n", S, S, "STOP" },
    { "\"STOP\"", S, S, "STOP" },
    { "STOP\xe2\x80\x8b", S, S, "STOP" },                 /* ZW space */
    { "\xc2\xa0STOP\xe3\x80\x80", S, S, "STOP" },  /* NBSP, ideographic */
    { "stop \xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd", S, S, "STOP" }, /* skin */
    { "opt-out", S, S, "OPTOUT" },
    { "Opt Out", S, S, "OPT OUT" },
    { "opt   out", S, S, "OPT OUT" },
    { "STOP ALL", S, S, "STOP ALL" },
    { "stop  all!", S, S, "STOP ALL" },
    { "STOPALL", S, S, "STOPALL" },
    { "Unsubscribe", S, S, "UNSUBSCRIBE" },
    { "cancel", S, S, "CANCEL" },
    { "End.", S, S, "END" },
    { "quit", S, S, "QUIT" },
    { "REVOKE", S, S, "REVOKE" },
    { "start", G, G, "START" },
    { "Unstop", G, G, "UNSTOP" },
    { "help?", H, H, "HELP" },
    { "Info", H, H, "INFO" },

    /* a keyword and more words: first_word only */
    { "STOP please", N, S, "STOP" },
    { "Stop, please!", N, S, "STOP" },
    { "STOP ALL please", N, S, "STOP ALL" },
    { "opt out now", N, S, "OPT OUT" },
    { "start again", N, G, "START" },
    { "help me", N, H, "HELP" },

    /* near-misses, in both modes */
    { "Please don't stop", N, N, NULL },
    { "stopp", N, N, NULL },
    { "non-stop", N, N, NULL },
    { "nonstop", N, N, NULL },
    { "unstoppable", N, N, NULL },
    { "STOPPING", N, N, NULL },
    { "bus stop", N, N, NULL },
    { "the end", N, N, NULL },
    { "endless", N, N, NULL },
    { "", N, N, NULL },
    { " !! ", N, N, NULL },
    { "\xf0\x9f\x9b\x91", N, N, NULL },
    { "ST OP", N, N, NULL },
    { "opt", N, N, NULL },
    { "information", N, N, NULL },

    /* invalid UTF-8 never matches */
    { "STOP\xff", N, N, NULL },
    { "\xc0\xafSTOP", N, N, NULL },
    { "STOP \xed\xa0\x80", N, N, NULL },                  /* surrogate */
};


static void
test_table(const optout_kw_set_t *set)
{
    int                 op;
    size_t              i;
    const case_t       *c;
    optout_kw_match_t   m;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        c = &cases[i];

        op = optout_kw_match(set, OPTOUT_KW_WHOLE, NULL, c->text,
                             strlen(c->text), &m);
        ok(op == c->whole, "whole \"%s\": %d (expected %d)", c->text, op,
           c->whole);

        if (c->whole != N) {
            ok(m.keyword && strcmp(m.keyword, c->keyword) == 0,
               "whole \"%s\": keyword \"%s\"", c->text,
               m.keyword ? m.keyword : "(null)");
        }

        op = optout_kw_match(set, OPTOUT_KW_FIRST_WORD, NULL, c->text,
                             strlen(c->text), &m);
        ok(op == c->first, "first_word \"%s\": %d (expected %d)", c->text,
           op, c->first);

        if (c->first != N) {
            ok(m.keyword && strcmp(m.keyword, c->keyword) == 0,
               "first_word \"%s\": keyword \"%s\"", c->text,
               m.keyword ? m.keyword : "(null)");
        }
    }
}


static void
test_normalize(void)
{
    int          rc;
    char        *out;
    size_t       len;
    size_t       i;

    static const struct {
        const char  *in;
        const char  *out;
    } n[] = {
        { "  Hello,   World!  ", "hello world" },
        { "\xef\xbc\xb3\xef\xbc\xb4\xef\xbc\xaf\xef\xbc\xb0", "stop" },
        /* NFD "ARRE" U+0302 "T" composes to "arr\xc3\xaat" */
        { "ARRE\xcc\x82T", "arr\xc3\xaat" },
        /* a dot between a letter and its combining accent */
        { "e.\xcc\x81", "\xc3\xa9" },
        /* Greek final sigma folds to sigma */
        { "\xcf\x84\xce\xad\xce\xbb\xce\xbf\xcf\x82",
          "\xcf\x84\xce\xad\xce\xbb\xce\xbf\xcf\x83" },
        { "Stra\xc3\x9f" "e", "strasse" },
        { "1\xef\xb8\x8f\xe2\x83\xa3", "1" },                /* keycap */
        { "\xe2\x91\xb4stop", "1stop" },                 /* parenthesized 1 */
    };

    for (i = 0; i < sizeof(n) / sizeof(n[0]); i++) {
        rc = optout_kw_normalize(n[i].in, strlen(n[i].in), &out, &len);
        ok(rc == OPTOUT_KW_OK && len == strlen(n[i].out)
           && strcmp(out, n[i].out) == 0,
           "normalize \"%s\" -> \"%s\" (got \"%s\")", n[i].in, n[i].out,
           rc == OPTOUT_KW_OK ? out : "error");

        if (rc == OPTOUT_KW_OK) {
            free(out);
        }
    }

    rc = optout_kw_normalize("a\xff", 2, &out, &len);
    ok(rc == OPTOUT_KW_EUTF8, "normalize invalid UTF-8: %d", rc);
}


static void
test_custom(void)
{
    int                 op, i, rc;
    char                err[256], word[32];
    optout_kw_set_t    *set;
    optout_kw_match_t   m;

    set = optout_kw_set_create();
    if (!ok(set != NULL, "custom: set created")) {
        return;
    }

    /* reserved words cannot be moved nor removed */

    rc = optout_kw_add(set, OPTOUT_KW_START, NULL, "STOP", 4, err,
                       sizeof(err));
    ok(rc == -1 && strcmp(err, "\"STOP\" is reserved for stop") == 0,
       "STOP refused for start: %s", err);

    rc = optout_kw_add(set, OPTOUT_KW_HELP, "FR", "start!", 6, err,
                       sizeof(err));
    ok(rc == -1 && strcmp(err, "\"start!\" is reserved for start") == 0,
       "start! refused for help in FR: %s", err);

    rc = optout_kw_remove(set, OPTOUT_KW_HELP, NULL, "help", 4, err,
                          sizeof(err));
    ok(rc == -1
       && strcmp(err, "\"help\" is reserved and cannot be removed") == 0,
       "HELP not removed: %s", err);

    rc = optout_kw_add(set, OPTOUT_KW_START, NULL, "Cancel", 6, err,
                       sizeof(err));
    ok(rc == -1 && strcmp(err, "\"Cancel\" is already a stop keyword") == 0,
       "CANCEL refused for start: %s", err);

    rc = optout_kw_remove(set, OPTOUT_KW_STOP, NULL, "CANCEL", 6, err,
                          sizeof(err));
    ok(rc == 0, "CANCEL removed from stop");

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, NULL, "cancel", 6, &m);
    ok(op == N, "cancel no longer matches: %d", op);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, NULL, "STOP", 4, err,
                       sizeof(err));
    ok(rc == 0, "STOP added to stop again: no-op");

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "fr", "ARR\xc3\x8aT", 6, err,
                       sizeof(err));
    ok(rc == 0, "ARRET added to stop in FR");

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "FRA", "x", 1, err,
                       sizeof(err));
    ok(rc == -1 && strstr(err, "invalid country") != NULL,
       "country FRA refused: %s", err);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, NULL, "!!", 2, err, sizeof(err));
    ok(rc == -1 && strcmp(err, "keyword \"!!\" is empty after "
                          "normalization") == 0, "\"!!\" refused: %s", err);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, NULL, "\xff", 1, err,
                       sizeof(err));
    ok(rc == -1, "invalid UTF-8 keyword refused: %s", err);

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, "FR", "arr\xc3\xaat !", 7,
                         &m);
    ok(op == S && strcmp(m.keyword, "ARR\xc3\x8aT") == 0
       && strcmp(m.country, "FR") == 0, "arret! matches in FR");

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, "FR", "arret", 5, &m);
    ok(op == N, "arret without its accent does not match: %d", op);

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, "CA", "arr\xc3\xaat", 6, &m);
    ok(op == N, "arret does not match in CA: %d", op);

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, NULL, "arr\xc3\xaat", 6, &m);
    ok(op == N, "arret does not match without a country: %d", op);

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, "FR", "STOP", 4, &m);
    ok(op == S && strcmp(m.country, "") == 0,
       "defaults apply in FR too");

    /* non-Latin: Greek, with a final sigma; Cyrillic */

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "GR",
                       "\xce\xa4\xce\x88\xce\x9b\xce\x9f\xce\xa3", 10, err,
                       sizeof(err));
    ok(rc == 0, "TELOS added in GR");

    op = optout_kw_match(set, OPTOUT_KW_WHOLE, "GR",
                         "\xcf\x84\xce\xad\xce\xbb\xce\xbf\xcf\x82.", 11,
                         &m);
    ok(op == S, "telos (final sigma) matches in GR: %d", op);

    rc = optout_kw_add(set, OPTOUT_KW_START, NULL,
                       "\xd0\xa1\xd0\xa2\xd0\x90\xd0\xa0\xd0\xa2", 10, err,
                       sizeof(err));
    ok(rc == 0, "START in Cyrillic added for all countries");

    op = optout_kw_match(set, OPTOUT_KW_FIRST_WORD, "RU",
                         "\xd1\x81\xd1\x82\xd0\xb0\xd1\x80\xd1\x82 "
                         "\xd0\xbf\xd0\xbe\xd0\xb6", 15, &m);
    ok(op == G, "cyrillic start + word matches in first_word: %d", op);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "RU",
                       "\xd1\x81\xd1\x82\xd0\xb0\xd1\x80\xd1\x82", 10, err,
                       sizeof(err));
    ok(rc == -1, "the same word for stop in RU refused: %s", err);

    /* a multi-word custom keyword wins over a shorter one */

    rc = optout_kw_add(set, OPTOUT_KW_HELP, NULL, "stop what", 9, err,
                       sizeof(err));
    ok(rc == 0, "\"stop what\" added to help");

    op = optout_kw_match(set, OPTOUT_KW_FIRST_WORD, NULL, "Stop what?!", 11,
                         &m);
    ok(op == H && strcmp(m.keyword, "stop what") == 0,
       "first_word: longest keyword wins: %d", op);

    op = optout_kw_match(set, OPTOUT_KW_FIRST_WORD, NULL, "Stop whatever",
                         13, &m);
    ok(op == S, "first_word: \"stop whatever\" is STOP: %d", op);

    /* at most 20 custom keywords per operation and country */

    for (i = 0; i < OPTOUT_KW_CUSTOM_MAX; i++) {
        snprintf(word, sizeof(word), "HALT%d", i);

        if (optout_kw_add(set, OPTOUT_KW_STOP, "DE", word, strlen(word), err,
                          sizeof(err))
            != 0)
        {
            break;
        }
    }

    ok(i == OPTOUT_KW_CUSTOM_MAX, "%d custom stop keywords in DE", i);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "DE", "HALT99", 6, err,
                       sizeof(err));
    ok(rc == -1
       && strcmp(err, "more than 20 custom stop keywords in DE") == 0,
       "the 21st refused: %s", err);

    rc = optout_kw_add(set, OPTOUT_KW_STOP, "AT", "HALT99", 6, err,
                       sizeof(err));
    ok(rc == 0, "but accepted in AT");

    optout_kw_set_free(set);
}


static void
test_country(void)
{
    int     rc;
    char    cc[3];
    size_t  i;

    static const struct {
        const char  *e164;
        const char  *cc;
    } c[] = {
        { "+12125551234", "US" },            /* New York */
        { "+14155550100", "US" },            /* San Francisco */
        { "+15145551234", "CA" },            /* Montreal */
        { "+14165550199", "CA" },            /* Toronto */
        { "+16045550123", "CA" },            /* Vancouver */
        { "+18765550123", "JM" },
        { "+17875550123", "PR" },
        { "+18095550123", "DO" },
        { "+33612345678", "FR" },
        { "+447700900123", "GB" },
        { "+4915123456789", "DE" },
        { "+79161234567", "RU" },
        { "+77011234567", "KZ" },
        { "+3531234567", "IE" },
        { "+351912345678", "PT" },
        { "+61412345678", "AU" },
        { "+8613812345678", "CN" },
        { "+918123456789", "IN" },
        { "+18005550123", "" },              /* toll-free */
        { "+11235550123", "" },              /* no area code 1XX */
        { "+1212555123", "" },               /* too short */
        { "+2421234567", "" },               /* +242 is not in the table */
        { "+999123456", "" },
        { "12125551234", "" },               /* no + */
        { "+1212555x234", "" },
        { "+", "" },
    };

    for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        rc = optout_kw_country(c[i].e164, strlen(c[i].e164), cc);
        ok(rc == (c[i].cc[0] != '\0') && strcmp(cc, c[i].cc) == 0,
           "country %s: \"%s\" (expected \"%s\")", c[i].e164, cc, c[i].cc);
    }
}


static int
bench(const optout_kw_set_t *set)
{
    int                 i, n;
    double              s;
    size_t              j, len;
    struct timespec     a, b;
    optout_kw_match_t   m;

    static const char  *texts[] = {
        "Stop \xf0\x9f\x9b\x91",
        "Hi! Thanks for the reminder, I will be there at 10:30 tomorrow "
        "morning. Could you please send me the address again? The last "
        "message got lost, sorry about that!!",
    };

    n = 100000;

    for (j = 0; j < sizeof(texts) / sizeof(texts[0]); j++) {
        len = strlen(texts[j]);

        if (clock_gettime(CLOCK_MONOTONIC, &a) != 0) {
            return 1;
        }

        for (i = 0; i < n; i++) {
            if (optout_kw_match(set, OPTOUT_KW_FIRST_WORD, "FR", texts[j],
                                len, &m)
                < 0)
            {
                return 1;
            }
        }

        if (clock_gettime(CLOCK_MONOTONIC, &b) != 0) {
            return 1;
        }

        s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;

        printf("%zu-byte message: %.0f matches/s, %.1f us each\n", len,
               n / s, s / n * 1e6);
    }

    return 0;
}


int
main(int argc, char **argv)
{
    int               rc;
    optout_kw_set_t  *set;

    set = optout_kw_set_create();
    if (set == NULL) {
        printf("Bail out! cannot create the keyword set\n");
        return 1;
    }

    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        rc = bench(set);
        optout_kw_set_free(set);
        return rc;
    }

    test_table(set);
    optout_kw_set_free(set);

    test_normalize();
    test_custom();
    test_country();

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
