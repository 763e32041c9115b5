/*
 * Journal lines read back: the one parser of the journal format, used by
 * "optoutctl replay" and by the module's journal applier.  See
 * docs/store-format.md.
 */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "optout_journal.h"


static int optout_journal_fail(char *err, size_t err_len, const char *fmt,
    ...);
static const char *optout_journal_string(json_t *obj, const char *name,
    size_t *len);
static int optout_journal_rule(json_t *root, optout_journal_entry_t *e,
    double t, char *err, size_t err_len);
static void optout_journal_optin(json_t *root, optout_journal_entry_t *e);


static int
optout_journal_fail(char *err, size_t err_len, const char *fmt, ...)
{
    va_list  args;

    if (err_len) {
        va_start(args, fmt);
        vsnprintf(err, err_len, fmt, args);
        va_end(args);
    }

    return OPTOUT_EVALUE;
}


static const char *
optout_journal_string(json_t *obj, const char *name, size_t *len)
{
    json_t  *v;

    v = json_object_get(obj, name);

    if (v == NULL || !json_is_string(v)) {
        return NULL;
    }

    *len = json_string_length(v);

    return json_string_value(v);
}


int
optout_journal_parse(const char *line, size_t len,
    optout_journal_entry_t *e, char *err, size_t err_len)
{
    int            rc;
    double         t;
    json_t        *root, *v;
    size_t         n, ns_len;
    const char    *s, *ns, *action;
    json_error_t   jerr;

    memset(e, 0, sizeof(optout_journal_entry_t));

    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);

    if (root == NULL) {
        return optout_journal_fail(err, err_len, "not valid JSON: %s",
                                   jerr.text);
    }

    rc = OPTOUT_EVALUE;

    if (!json_is_object(root)) {
        optout_journal_fail(err, err_len, "not a JSON object");
        goto done;
    }

    action = optout_journal_string(root, "action", &n);

    if (action == NULL) {
        optout_journal_fail(err, err_len, "missing \"action\"");
        goto done;
    }

    if (strcmp(action, "optout") != 0 && strcmp(action, "optin") != 0) {
        optout_journal_fail(err, err_len, "unknown action \"%.32s\"",
                            action);
        goto done;
    }

    e->optin = (action[3] == 'i');

    v = json_object_get(root, "t");

    if (v == NULL || !json_is_number(v)) {
        optout_journal_fail(err, err_len, "missing or invalid \"t\"");
        goto done;
    }

    t = json_number_value(v);

    if (!isfinite(t) || t < 0 || t >= 9.2e18) {
        optout_journal_fail(err, err_len, "invalid \"t\"");
        goto done;
    }

    e->time = t;

    ns = optout_journal_string(root, "ns", &ns_len);

    if (ns == NULL) {
        optout_journal_fail(err, err_len, "missing \"ns\"");
        goto done;
    }

    if (ns_len > 0 && optout_check_namespace(ns, ns_len) != OPTOUT_OK) {
        optout_journal_fail(err, err_len, "invalid \"ns\"");
        goto done;
    }

    memcpy(e->ns, ns, ns_len);
    e->ns_len = ns_len;

    s = optout_journal_string(root, "dest", &n);

    if (s == NULL) {
        optout_journal_fail(err, err_len, "missing \"dest\"");
        goto done;
    }

    if (optout_normalize_dest(s, n, &e->dest) != OPTOUT_OK) {
        optout_journal_fail(err, err_len, "invalid \"dest\"");
        goto done;
    }

    s = optout_journal_string(root, "scope", &n);

    if (s == NULL) {
        optout_journal_fail(err, err_len, "missing \"scope\"");
        goto done;
    }

    if (strcmp(s, "sender") == 0) {
        s = optout_journal_string(root, "sender", &n);

        if (s == NULL) {
            optout_journal_fail(err, err_len, "missing \"sender\"");
            goto done;
        }

        if (optout_normalize_sender(s, n, e->sender, &e->sender_len)
            != OPTOUT_OK || e->sender_len == 0)
        {
            optout_journal_fail(err, err_len, "invalid \"sender\"");
            goto done;
        }

    } else if (strcmp(s, "account") != 0) {
        optout_journal_fail(err, err_len, "invalid \"scope\"");
        goto done;
    }

    if (e->optin) {
        optout_journal_optin(root, e);
        rc = OPTOUT_OK;

    } else {
        rc = optout_journal_rule(root, e, t, err, err_len);
    }

done:

    json_decref(root);

    return rc;
}


/* the rule of an "optout" line */

static int
optout_journal_rule(json_t *root, optout_journal_entry_t *e, double t,
    char *err, size_t err_len)
{
    int          rc, source, channel;
    json_t      *v;
    size_t       n;
    uint64_t     campaign;
    json_int_t   kid;
    const char  *s;

    v = json_object_get(root, "campaign");

    if (v != NULL && json_is_string(v)) {
        rc = optout_parse_u64(json_string_value(v), json_string_length(v),
                              UINT64_MAX, &campaign);

    } else if (v != NULL && json_is_integer(v) && json_integer_value(v) >= 0)
    {
        campaign = (uint64_t) json_integer_value(v);
        rc = 0;

    } else {
        rc = -1;
    }

    if (rc != 0) {
        return optout_journal_fail(err, err_len,
                                   "missing or invalid \"campaign\"");
    }

    s = optout_journal_string(root, "source", &n);
    source = (s != NULL) ? optout_source_parse(s, n) : -1;

    if (source < 0) {
        return optout_journal_fail(err, err_len,
                                   "missing or invalid \"source\"");
    }

    s = optout_journal_string(root, "channel", &n);
    channel = -1;

    if (s != NULL) {
        if (strcmp(s, optout_channel_name(OPTOUT_DEST_PHONE)) == 0) {
            channel = OPTOUT_DEST_PHONE;

        } else if (strcmp(s, optout_channel_name(OPTOUT_DEST_EMAIL)) == 0) {
            channel = OPTOUT_DEST_EMAIL;
        }
    }

    if (channel < 0) {
        return optout_journal_fail(err, err_len,
                                   "missing or invalid \"channel\"");
    }

    v = json_object_get(root, "kid");

    if (v == NULL || !json_is_integer(v)) {
        return optout_journal_fail(err, err_len,
                                   "missing or invalid \"kid\"");
    }

    kid = json_integer_value(v);

    if (kid < 0 || kid > OPTOUT_KEY_ID_MAX) {
        return optout_journal_fail(err, err_len, "invalid \"kid\"");
    }

    e->rule.campaign = campaign;
    e->rule.time = (int64_t) t;
    e->rule.source = (unsigned) source;
    e->rule.channel = (unsigned) channel;
    e->rule.key_id = (unsigned) kid;

    return OPTOUT_OK;
}


/*
 * An "optin" line needs neither: its campaign and source only feed
 * reports, so they are taken when valid (source "api" otherwise).
 */

static void
optout_journal_optin(json_t *root, optout_journal_entry_t *e)
{
    int          source;
    json_t      *v;
    size_t       n;
    uint64_t     campaign;
    const char  *s;

    v = json_object_get(root, "campaign");

    if (v != NULL && json_is_string(v)
        && optout_parse_u64(json_string_value(v), json_string_length(v),
                            UINT64_MAX, &campaign)
           == 0)
    {
        e->rule.campaign = campaign;
    }

    s = optout_journal_string(root, "source", &n);
    source = (s != NULL) ? optout_source_parse(s, n) : -1;

    e->rule.source = (source >= 0) ? (unsigned) source : OPTOUT_SOURCE_API;
    e->rule.time = (int64_t) e->time;
}


int
optout_journal_key(const optout_journal_entry_t *e, optout_mac_t *mac,
    const char *prefix, size_t prefix_len, char *key, size_t *key_len)
{
    return optout_store_key(mac, prefix, prefix_len, e->ns, e->ns_len,
                            e->sender_len ? e->sender : NULL, e->sender_len,
                            &e->dest, key, key_len);
}
