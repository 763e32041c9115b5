
/*
 * The items of an API add, the answers' JSON and the journal lines: one
 * object or an array parsed and checked, each normalized as everywhere
 * else; what exists found in one multi-get with markers; the journal
 * lines of the new rules; the answer in request order.  Safe in a thread
 * (no request, no pool), except the functions that send an answer.
 */


#include "ngx_http_optout_api.h"


#define NGX_HTTP_OPTOUT_CAMPAIGN_MAX  ((1ULL << 35) - 1)
#define NGX_HTTP_OPTOUT_LINE_MAX      2048


static const char *ngx_http_optout_api_items_rule(json_t *v,
    ngx_http_optout_api_item_t *it, double now);
static ngx_int_t ngx_http_optout_api_campaign(json_t *f,
    uint64_t *campaign);
static ngx_int_t ngx_http_optout_api_since(const char *s, size_t len,
    int64_t *t);
static void ngx_http_optout_api_items_keys_free(
    ngx_http_optout_batch_ctx_t *bc);


/* the items: one object, or an array of 1..10,000 */

json_t *
ngx_http_optout_api_items_parse(ngx_http_optout_api_add_t *ac, size_t *n)
{
    u_char        *p, *end;
    json_t        *root;
    json_error_t   err;

    p = ac->bc.body;
    end = p + ac->bc.body_len;

    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
    }

    if (p == end) {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_BAD_REQUEST, "40004",
                                   "No rules", "The request body is empty.");
        return NULL;
    }

    root = json_loadb((char *) p, end - p, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_BAD_REQUEST, "40003",
                                   "Malformed body", err.text);
        return NULL;
    }

    if (json_is_object(root)) {
        *n = 1;
        return root;
    }

    if (!json_is_array(root)) {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_BAD_REQUEST, "40003",
                                   "Malformed body",
                                   "Expected a JSON object or an array of "
                                   "objects.");
        goto failed;
    }

    *n = json_array_size(root);

    if (*n == 0) {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_BAD_REQUEST, "40004",
                                   "No rules", "The array is empty.");
        goto failed;
    }

    if (*n > NGX_HTTP_OPTOUT_BATCH_MAX) {
        ngx_http_optout_batch_fail(&ac->bc,
                                   NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "41300", "Too many rules",
                                   "At most 10000 rules a request.");
        goto failed;
    }

    return root;

failed:

    json_decref(root);

    return NULL;
}


void
ngx_http_optout_api_items_check(ngx_http_optout_api_add_t *ac, json_t *v,
    ngx_http_optout_api_item_t *it)
{
    json_t  *f;

    it->status = NGX_HTTP_OPTOUT_API_INVALID;

    if (!json_is_object(v)) {
        it->reason = "not an object";
        return;
    }

    f = json_object_get(v, "destination");

    if (!json_is_string(f)
        || optout_normalize_dest(json_string_value(f), json_string_length(f),
                                 &it->dest)
           != OPTOUT_OK)
    {
        it->reason = "destination";
        return;
    }

    f = json_object_get(v, "sender");

    if (f && !json_is_null(f)
        && (!json_is_string(f)
            || (json_string_length(f)
                && optout_normalize_sender(json_string_value(f),
                                           json_string_length(f),
                                           it->sender, &it->sender_len)
                   != OPTOUT_OK)))
    {
        it->reason = "sender";
        return;
    }

    it->reason = ngx_http_optout_api_items_rule(v, it, ac->now);
    if (it->reason) {
        return;
    }

    if (optout_store_key(ac->bc.mac, (char *) ac->bc.prefix.data,
                         ac->bc.prefix.len, (char *) ac->bc.ns.data,
                         ac->bc.ns.len, it->sender, it->sender_len,
                         &it->dest, (char *) it->key, &it->key_len)
        != OPTOUT_OK)
    {
        it->reason = "destination";
        return;
    }

    it->status = NGX_HTTP_OPTOUT_API_ADDED;
}


/* campaign, channel, source and since; NULL, or the reason */

static const char *
ngx_http_optout_api_items_rule(json_t *v, ngx_http_optout_api_item_t *it,
    double now)
{
    int      src;
    json_t  *f;

    it->rule.channel = it->dest.type;
    it->rule.source = OPTOUT_SOURCE_API;
    it->rule.time = (int64_t) now;
    it->time = now;

    if (ngx_http_optout_api_campaign(json_object_get(v, "campaign"),
                                     &it->rule.campaign)
        != NGX_OK)
    {
        return "campaign";
    }

    f = json_object_get(v, "channel");

    if (f && !json_is_null(f)
        && !(json_is_string(f)
             && ngx_strcmp(json_string_value(f),
                           optout_channel_name(it->dest.type)) == 0))
    {
        return "channel";
    }

    f = json_object_get(v, "source");

    if (f && !json_is_null(f)) {
        src = json_is_string(f)
              ? optout_source_parse(json_string_value(f),
                                    json_string_length(f))
              : -1;

        if (src < 0) {
            return "source";
        }

        it->rule.source = src;
    }

    f = json_object_get(v, "since");

    if (f && !json_is_null(f)) {
        if (!json_is_string(f)
            || ngx_http_optout_api_since(json_string_value(f),
                                         json_string_length(f),
                                         &it->rule.time)
               != NGX_OK)
        {
            return "since";
        }

        it->time = (double) it->rule.time;
    }

    return NULL;
}


/* absent or null: 0; an integer or a string of digits up to 2^35-1 */

static ngx_int_t
ngx_http_optout_api_campaign(json_t *f, uint64_t *campaign)
{
    size_t       i, len;
    uint64_t     c;
    const char  *s;

    if (f == NULL || json_is_null(f)) {
        *campaign = 0;
        return NGX_OK;
    }

    if (json_is_integer(f)) {
        if (json_integer_value(f) < 0
            || (uint64_t) json_integer_value(f) > NGX_HTTP_OPTOUT_CAMPAIGN_MAX)
        {
            return NGX_ERROR;
        }

        *campaign = json_integer_value(f);
        return NGX_OK;
    }

    if (!json_is_string(f)) {
        return NGX_ERROR;
    }

    s = json_string_value(f);
    len = json_string_length(f);

    if (len == 0 || len > 11) {
        return NGX_ERROR;
    }

    for (c = 0, i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return NGX_ERROR;
        }

        c = c * 10 + (s[i] - '0');
    }

    if (c > NGX_HTTP_OPTOUT_CAMPAIGN_MAX) {
        return NGX_ERROR;
    }

    *campaign = c;

    return NGX_OK;
}


/* "YYYY-MM-DDTHH:MM:SSZ" */

static ngx_int_t
ngx_http_optout_api_since(const char *s, size_t len, int64_t *t)
{
    size_t      i;
    ngx_int_t   v[6];
    ngx_uint_t  k, d, n;

    static const char  fmt[] = "dddd-dd-ddTdd:dd:ddZ";

    if (len != sizeof(fmt) - 1) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        if (fmt[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != fmt[i]) {
            return NGX_ERROR;
        }
    }

    for (k = 0, i = 0; k < 6; k++) {
        n = (k == 0) ? 4 : 2;

        for (v[k] = 0, d = 0; d < n; d++) {
            v[k] = v[k] * 10 + (s[i++] - '0');
        }

        i++;
    }

    if (v[0] < 1970 || v[1] < 1 || v[1] > 12 || v[2] < 1 || v[2] > 31
        || v[3] > 23 || v[4] > 59 || v[5] > 59)
    {
        return NGX_ERROR;
    }

    /* days from civil, as ngx_http_parse_time() does */

    v[1] -= 2;

    if (v[1] <= 0) {
        v[1] += 12;
        v[0] -= 1;
    }

    *t = (int64_t) (365 * v[0] + v[0] / 4 - v[0] / 100 + v[0] / 400
                    + 367 * v[1] / 12 - 30 + v[2] - 1 - 719527 + 31 + 28)
         * 86400 + v[3] * 3600 + v[4] * 60 + v[5];

    return NGX_OK;
}


/* the keys of the items to add, for the one multi-get with markers */

ngx_int_t
ngx_http_optout_api_items_keys(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                        i, m;
    ngx_http_optout_batch_ctx_t  *bc;

    bc = &ac->bc;

    bc->mget_keys = malloc(n * sizeof(char *));
    bc->mget_lens = malloc(n * sizeof(size_t));
    bc->mget_found = malloc(n);
    bc->mget_rules = malloc(n * sizeof(optout_rule_t));

    if (bc->mget_keys == NULL || bc->mget_lens == NULL
        || bc->mget_found == NULL || bc->mget_rules == NULL)
    {
        ngx_http_optout_api_items_keys_free(bc);
        return NGX_ERROR;
    }

    m = 0;

    for (i = 0; i < n; i++) {
        if (items[i].status == NGX_HTTP_OPTOUT_API_ADDED) {
            bc->mget_keys[m] = (char *) items[i].key;
            bc->mget_lens[m] = items[i].key_len;
            m++;
        }
    }

    bc->mget_n = m;

    return NGX_OK;
}


/*
 * After the multi-get (bc->mget_rc): a rule that exists, or is pending on
 * this node, is "present".  When memcached cannot tell, every valid item
 * is recorded: the journal keeps it, and a second opt-out changes nothing.
 */

void
ngx_http_optout_api_items_classify(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                        i, m;
    ngx_int_t                     rc;
    ngx_http_optout_batch_ctx_t  *bc;

    bc = &ac->bc;
    rc = (bc->mget_found && bc->mget_rules) ? bc->mget_rc : NGX_ERROR;

    for (i = 0, m = 0; i < n; i++) {
        if (items[i].status != NGX_HTTP_OPTOUT_API_ADDED) {
            continue;
        }

        items[i].absent = (rc == NGX_OK && !bc->mget_found[m]);

        if (rc == NGX_OK && bc->mget_found[m]) {
            items[i].status = NGX_HTTP_OPTOUT_API_PRESENT;
            items[i].rule = bc->mget_rules[m];

        } else if (ngx_http_optout_pending_find(bc->pending, items[i].key,
                                                items[i].key_len,
                                                &items[i].rule)
                   == NGX_OK)
        {
            items[i].status = NGX_HTTP_OPTOUT_API_PRESENT;
            items[i].absent = 0;
        }

        m++;
    }

    ngx_http_optout_api_items_keys_free(bc);
}


static void
ngx_http_optout_api_items_keys_free(ngx_http_optout_batch_ctx_t *bc)
{
    free(bc->mget_keys);
    free(bc->mget_lens);
    free(bc->mget_found);
    free(bc->mget_rules);

    bc->mget_keys = NULL;
    bc->mget_lens = NULL;
    bc->mget_found = NULL;
    bc->mget_rules = NULL;
    bc->mget_n = 0;
}


/* the changes and journal lines of the added items */

ngx_int_t
ngx_http_optout_api_items_record(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                       i, len;
    optout_journal_rec_t         rec;
    ngx_http_optout_change_t    *ch;
    ngx_http_optout_api_item_t  *it;
    char                         line[NGX_HTTP_OPTOUT_LINE_MAX];

    ac->changes = malloc(n * sizeof(ngx_http_optout_change_t));
    if (ac->changes == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(&rec, sizeof(optout_journal_rec_t));

    rec.action = "optout";
    rec.ns = (char *) ac->bc.ns.data;
    rec.ns_len = ac->bc.ns.len;
    rec.client = (char *) ac->client.data;
    rec.client_len = ac->client.len;
    rec.user = (char *) ac->user.data;
    rec.user_len = ac->user.len;

    for (i = 0; i < n; i++) {
        it = &items[i];

        if (it->status != NGX_HTTP_OPTOUT_API_ADDED) {
            continue;
        }

        rec.time = it->time;
        rec.dest = &it->dest;
        rec.sender = it->sender_len ? it->sender : NULL;
        rec.sender_len = it->sender_len;
        rec.campaign = it->rule.campaign;
        rec.source = it->rule.source;

        len = optout_journal_format(&rec, line, sizeof(line));
        if (len == 0) {
            return NGX_ERROR;
        }

        ngx_http_optout_out(&ac->lines, line, len);

        ch = &ac->changes[ac->nchanges++];

        ch->optin = 0;
        ch->stored = 0;
        ch->absent = it->absent;
        ch->rule = it->rule;
        ch->key_len = it->key_len;
        ngx_memcpy(ch->key, it->key, it->key_len);
    }

    return ac->lines.failed ? NGX_ERROR : NGX_OK;
}


void
ngx_http_optout_api_items_answer(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                       i, len;
    ngx_uint_t                  *count;
    ngx_http_optout_out_t       *o;
    ngx_http_optout_api_item_t  *it;
    u_char                       buf[NGX_INT64_LEN * 3 + 64];

    static const char  *status[] = { "added", "present", "invalid" };

    count = ac->count;

    count[0] = 0;
    count[1] = 0;
    count[2] = 0;

    for (i = 0; i < n; i++) {
        count[items[i].status]++;
    }

    o = &ac->bc.out;
    ac->bc.status = NGX_HTTP_OK;

    len = ngx_sprintf(buf, "{\"added\":%ui,\"present\":%ui,\"invalid\":%ui,"
                      "\"results\":[", count[0], count[1], count[2])
          - buf;
    ngx_http_optout_out(o, (char *) buf, len);

    for (i = 0; i < n; i++) {
        it = &items[i];

        len = ngx_sprintf(buf, "%s{\"index\":%uz,\"status\":\"%s\"",
                          i ? "," : "", i, status[it->status])
              - buf;
        ngx_http_optout_out(o, (char *) buf, len);

        if (it->status == NGX_HTTP_OPTOUT_API_PRESENT) {
            ngx_http_optout_out(o, ",\"rule\":", 8);
            ngx_http_optout_api_rule_out(o, &it->rule, it->sender,
                                         it->sender_len);

        } else if (it->status == NGX_HTTP_OPTOUT_API_INVALID) {
            ngx_http_optout_out(o, ",\"reason\":\"", 11);
            ngx_http_optout_out(o, it->reason, ngx_strlen(it->reason));
            ngx_http_optout_out(o, "\"", 1);
        }

        ngx_http_optout_out(o, "}", 1);
    }

    ngx_http_optout_out(o, "]}\n", 3);

    if (o->failed) {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Out of memory.");
    }
}


/* RULE: {"scope", "sender"?, "campaign", "since", "source", "channel"} */

void
ngx_http_optout_api_rule_out(ngx_http_optout_out_t *o, optout_rule_t *rule,
    const char *sender, size_t sender_len)
{
    size_t  len;
    u_char  buf[NGX_INT64_LEN + 128];

    if (sender_len) {
        ngx_http_optout_out(o, "{\"scope\":\"sender\",\"sender\":\"", 28);
        ngx_http_optout_out_json(o, (u_char *) sender, sender_len,
                                 sender_len);
        ngx_http_optout_out(o, "\"", 1);

    } else {
        ngx_http_optout_out(o, "{\"scope\":\"account\"", 18);
    }

    len = ngx_sprintf(buf, ",\"campaign\":\"%uL\",\"since\":\"",
                      rule->campaign) - buf;
    ngx_http_optout_out(o, (char *) buf, len);

    len = ngx_http_optout_since(buf, rule->time) - buf;
    ngx_http_optout_out(o, (char *) buf, len);

    len = ngx_sprintf(buf, "\",\"source\":\"%s\",\"channel\":\"%s\"}",
                      optout_source_name(rule->source),
                      optout_channel_name(rule->channel)) - buf;
    ngx_http_optout_out(o, (char *) buf, len);
}


/* an error in the check's JSON shape */

ngx_int_t
ngx_http_optout_api_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *title, const char *detail)
{
    ngx_int_t                    rc;
    ngx_http_optout_batch_ctx_t  bc;

    ngx_memzero(&bc, sizeof(ngx_http_optout_batch_ctx_t));

    ngx_http_optout_batch_fail(&bc, status, code, title, detail);

    rc = ngx_http_optout_api_send_out(r, status, &bc.out);

    return rc;
}


/* a malloc()ed answer, copied to the request's pool and freed */

ngx_int_t
ngx_http_optout_api_send_out(ngx_http_request_t *r, ngx_uint_t status,
    ngx_http_optout_out_t *o)
{
    ngx_buf_t  *b;

    if (o->failed || o->data == NULL) {
        free(o->data);
        o->data = NULL;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, o->len);
    if (b == NULL) {
        free(o->data);
        o->data = NULL;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, o->data, o->len);

    free(o->data);
    o->data = NULL;

    return ngx_http_optout_send_json(r, status, b);
}

