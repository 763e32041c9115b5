/*
 * Unit tests of the journal merge and fold (src/optout_fold.h), TAP
 * output.  Run by t/03-unit-fold.t.
 */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "optout_fold.h"
#include "tap.h"


#define LINE(t, action, dest, scope, campaign)                                \
    "{\"t\":" t ",\"action\":\"" action "\",\"ns\":\"\",\"dest\":\"" dest     \
    "\",\"scope\":\"" scope "\",\"campaign\":\"" campaign "\",\"source\":"    \
    "\"link\",\"channel\":\"sms\",\"client\":\"\",\"kid\":1}\n"

#define ACME  "sender\",\"sender\":\"ACME"


static char      dir[] = "/tmp/test_fold.XXXXXX";
static unsigned  nfiles;
static uint64_t  skips;


static char *
journal(const char *text)
{
    FILE  *fp;
    char  *path;

    path = malloc(sizeof(dir) + 16);
    if (path == NULL) {
        abort();
    }

    sprintf(path, "%s/j%u", dir, nfiles++);

    fp = fopen(path, "w");
    if (fp == NULL || fputs(text, fp) == EOF || fclose(fp) != 0) {
        abort();
    }

    return path;
}


static void
count_skip(void *data, const char *name, uint64_t lineno,
    const char *reason)
{
    skips++;
}


/* folds the journals in the order given; *out gets the first item */

static optout_fold_t *
fold(char **names, size_t n, optout_fold_item_t **out, uint64_t *lines)
{
    int                         rc;
    char                        err[256];
    size_t                      k;
    unsigned                    before;
    optout_fold_t              *f;
    optout_merge_t             *m;
    optout_fold_item_t        **items;
    const optout_merge_line_t  *l;

    m = optout_merge_create(names, n, 2, count_skip, NULL, err,
                            sizeof(err));
    f = optout_fold_create();

    if (m == NULL || f == NULL) {
        abort();
    }

    while ((rc = optout_merge_next(m, &l, err, sizeof(err))) == 1) {
        if (optout_fold_apply(f, &l->e, &before) == NULL) {
            abort();
        }
    }

    if (rc != 0) {
        abort();
    }

    *lines = optout_merge_lines(m);
    optout_merge_destroy(m);

    items = optout_fold_sorted(f, &k);
    if (items == NULL) {
        abort();
    }

    *out = k ? items[0] : NULL;
    free(items);

    return f;
}


/* both orders of two journals end in the same state and campaign */

static void
both_orders(const char *a, const char *b, unsigned state, uint64_t campaign,
    const char *what)
{
    char                *names[2];
    uint64_t             lines;
    unsigned             order;
    optout_fold_t       *f;
    optout_fold_item_t  *it;

    for (order = 0; order < 2; order++) {
        names[order] = journal(a);
        names[1 - order] = journal(b);

        f = fold(names, 2, &it, &lines);

        ok(it != NULL && it->state == state
           && (state != OPTOUT_FOLD_OUT || it->rule.campaign == campaign),
           "%s (order %u): state %u campaign %" PRIu64, what, order,
           it ? it->state : 0, it ? it->rule.campaign : 0);

        optout_fold_destroy(f);
        free(names[0]);
        free(names[1]);
    }
}


static void
test_merge(void)
{
    both_orders(LINE("100.000", "optout", "+447700900123", "account", "5"),
                LINE("200.000", "optin", "+447700900123", "account", "0"),
                OPTOUT_FOLD_IN, 0, "STOP on A, later START on B: allowed");

    both_orders(LINE("100.000", "optin", "+447700900123", "account", "0"),
                LINE("200.000", "optout", "+447700900123", "account", "6"),
                OPTOUT_FOLD_OUT, 6, "START on A, later STOP on B: blocked");

    both_orders(LINE("150.500", "optin", "+447700900123", "account", "0"),
                LINE("150.500", "optout", "+447700900123", "account", "7"),
                OPTOUT_FOLD_OUT, 7, "tie of opt-in and opt-out: opt-out "
                "wins");

    both_orders(LINE("150.500", "optout", "+447700900123", "account", "9"),
                LINE("150.500", "optout", "+447700900123", "account", "8"),
                OPTOUT_FOLD_OUT, 8, "tie of two opt-outs: the smaller line "
                "gives the campaign");

    both_orders(LINE("100.000", "optout", "+447700900123", "account", "1")
                LINE("300.000", "optout", "+447700900123", "account", "3"),
                LINE("200.000", "optout", "+447700900123", "account", "2"),
                OPTOUT_FOLD_OUT, 1, "three opt-outs: the first campaign "
                "kept");

    both_orders(LINE("100.000", "optout", "+447700900123", "account", "1")
                LINE("300.000", "optout", "+447700900123", "account", "3"),
                LINE("200.000", "optin", "+447700900123", "account", "0"),
                OPTOUT_FOLD_OUT, 3, "opt-out, opt-in, opt-out: the new "
                "campaign");
}


static void
test_fold(void)
{
    char                 *names[1];
    size_t                n;
    uint64_t              lines;
    optout_fold_t        *f;
    optout_fold_item_t   *it, **items;

    skips = 0;

    names[0] = journal(
        LINE("100.000", "optout", "+447700900123", "account", "1")
        "not json\n"
        LINE("110.000", "optout", "+447700900123", ACME, "2")
        LINE("120.000", "optin", "+447700900123", "account", "0")
        LINE("130.000", "optout", "+447700900123", "account", "4")
        LINE("140.000", "optout", "+447700900001", "account", "5")
        "{\"t\":150.000,\"action\":\"optout\",\"ns\":\"\",\"dest\":\"+4477");

    f = fold(names, 1, &it, &lines);

    ok(lines == 7 && skips == 2, "7 lines read, 2 skipped (got %" PRIu64
       ", %" PRIu64 ")", lines, skips);
    ok(optout_fold_count(f) == 3, "3 identities (got %zu)",
       optout_fold_count(f));

    items = optout_fold_sorted(f, &n);

    ok(items != NULL && n == 3
       && strcmp(optout_fold_dest(items[0]), "+447700900001") == 0
       && items[0]->sender_len == 0
       && strcmp(optout_fold_dest(items[1]), "+447700900123") == 0
       && items[1]->sender_len == 0
       && strcmp(optout_fold_sender(items[2]), "ACME") == 0,
       "sorted by destination, account before sender");

    ok(items[1]->state == OPTOUT_FOLD_OUT && items[1]->reborn
       && items[1]->rule.campaign == 4 && items[1]->rule.time == 130,
       "opted out again after an opt-in: reborn, campaign 4, since 130");
    ok(items[0]->state == OPTOUT_FOLD_OUT && !items[0]->reborn,
       "opted out once: not reborn");
    ok(items[2]->state == OPTOUT_FOLD_OUT && items[2]->rule.campaign == 2,
       "sender rule apart from the account rule");

    free(items);
    optout_fold_destroy(f);
    free(names[0]);
}


int
main(void)
{
    char  cmd[sizeof(dir) + 16];

    if (mkdtemp(dir) == NULL) {
        printf("Bail out! mkdtemp failed\n");
        return 1;
    }

    test_merge();
    test_fold();

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    (void) system(cmd);

    printf("1..%d\n", tests);

    return failures ? 1 : 0;
}
