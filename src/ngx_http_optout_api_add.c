
/*
 * Adds through the management API: a POST of one rule (a JSON object) or
 * of up to 10,000 (an array).  One thread task parses and checks the
 * items, asks memcached which rules exist in one multi-get with markers,
 * writes the journal lines of the new ones and the answer; back on the
 * event loop the new rules are recorded (ngx_http_optout_rule.c: one
 * journal group write, then one pipelined store pass) before the answer
 * goes out.  Batches share the batch checks' limit and queue.
 */


#include "ngx_http_optout_api.h"


#define NGX_HTTP_OPTOUT_API_ADDED     0
#define NGX_HTTP_OPTOUT_API_PRESENT   1
#define NGX_HTTP_OPTOUT_API_INVALID   2

#define NGX_HTTP_OPTOUT_CAMPAIGN_MAX  ((1ULL << 35) - 1)
#define NGX_HTTP_OPTOUT_LINE_MAX      2048


typedef struct {
    ngx_http_optout_batch_ctx_t      bc;        /* first: the task's ctx */
    ngx_str_t                        client;
    ngx_str_t                        user;
    double                           now;
    ngx_http_optout_out_t            lines;
    ngx_http_optout_change_t        *changes;
    ngx_uint_t                       nchanges;
    ngx_http_optout_record_t         record;
} ngx_http_optout_api_add_t;


typedef struct {
    ngx_uint_t                       status;
    const char                      *reason;
    optout_dest_t                    dest;
    size_t                           sender_len;
    char                             sender[OPTOUT_SENDER_MAX + 1];
    optout_rule_t                    rule;
    double                           time;
    size_t                           key_len;
    u_char                           key[OPTOUT_STORE_KEY_MAX + 1];
} ngx_http_optout_api_item_t;


static void ngx_http_optout_api_add_body(ngx_http_request_t *r);
static ngx_http_optout_api_add_t *ngx_http_optout_api_add_create(
    ngx_http_request_t *r);
static void ngx_http_optout_api_add_wake(ngx_http_optout_batch_slot_t *slot);
static ngx_int_t ngx_http_optout_api_add_start(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac);
static void ngx_http_optout_api_add_thread(void *data, ngx_log_t *log);
static json_t *ngx_http_optout_api_add_parse(ngx_http_optout_api_add_t *ac,
    size_t *n);
static void ngx_http_optout_api_add_item(ngx_http_optout_api_add_t *ac,
    json_t *v, ngx_http_optout_api_item_t *it);
static const char *ngx_http_optout_api_add_rule(json_t *v,
    ngx_http_optout_api_item_t *it, double now);
static ngx_int_t ngx_http_optout_api_since(const char *s, size_t len,
    int64_t *t);
static void ngx_http_optout_api_add_classify(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
static ngx_int_t ngx_http_optout_api_add_record(
    ngx_http_optout_api_add_t *ac, ngx_http_optout_api_item_t *items,
    size_t n);
static void ngx_http_optout_api_add_answer(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
static void ngx_http_optout_api_add_done(ngx_event_t *ev);
static void ngx_http_optout_api_add_recorded(ngx_http_optout_record_t *rec);
static ngx_int_t ngx_http_optout_api_add_send(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac);
static void ngx_http_optout_api_add_free(void *data);


ngx_int_t
ngx_http_optout_api_add_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_optout_api_add_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_optout_api_add_body(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_http_optout_api_add_t    *ac;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;
    ngx_http_optout_ctx_t         ctx;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_http_finalize_request(r,
            ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST, "40004",
                                      "No rules",
                                      "The request body is empty."));
        return;
    }

    ac = ngx_http_optout_api_add_create(r);
    if (ac == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    ngx_memzero(&ctx, sizeof(ngx_http_optout_ctx_t));

    if (ngx_http_optout_namespace(r, olcf, &ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ac->bc.ns = ctx.ns;

    switch (ngx_http_optout_batch_slot_get(omcf, &ac->bc.slot,
                                           r->connection->log))
    {
    case NGX_OK:
        rc = ngx_http_optout_api_add_start(r, ac);
        break;

    case NGX_AGAIN:
        r->read_event_handler = ngx_http_test_reading;
        return;

    default: /* NGX_BUSY */
        ngx_http_optout_batch_refused(omcf, r->connection->log);

        if (ngx_http_optout_add_header(r, "Retry-After", (u_char *) "1", 1)
            != NGX_OK)
        {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            break;
        }

        rc = ngx_http_optout_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "50300", "Too busy",
                                       "Too many batches are running or "
                                       "waiting; retry after the "
                                       "Retry-After time.");
    }

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


static ngx_http_optout_api_add_t *
ngx_http_optout_api_add_create(ngx_http_request_t *r)
{
    optout_journal_rec_t          who;
    ngx_time_t                   *tp;
    ngx_thread_task_t            *task;
    ngx_pool_cleanup_t           *cln;
    ngx_http_optout_api_add_t    *ac;
    ngx_http_optout_main_conf_t  *omcf;

    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_optout_api_add_t));
    if (task == NULL) {
        return NULL;
    }

    ac = task->ctx;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_optout_api_add_free;
    cln->data = ac;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    ac->bc.request = r;
    ac->bc.task = task;
    ac->bc.fd = NGX_INVALID_FILE;
    ac->bc.store = omcf->store;
    ac->bc.pending = omcf->pending;
    ac->bc.prefix = omcf->store_prefix;
    ac->bc.slot.handler = ngx_http_optout_api_add_wake;
    ac->bc.slot.data = ac;

    ngx_http_optout_rule_who(r, &who);

    ac->client.data = (u_char *) who.client;
    ac->client.len = who.client_len;
    ac->user.data = (u_char *) who.user;
    ac->user.len = who.user_len;

    tp = ngx_timeofday();
    ac->now = tp->sec + tp->msec / 1000.0;

    task->handler = ngx_http_optout_api_add_thread;
    task->event.handler = ngx_http_optout_api_add_done;
    task->event.data = ac;

    return ac;
}


static void
ngx_http_optout_api_add_wake(ngx_http_optout_batch_slot_t *slot)
{
    ngx_http_optout_api_add_t *ac = slot->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ac->bc.request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    if (slot->rc == NGX_OK) {
        rc = ngx_http_optout_api_add_start(r, ac);

    } else {
        rc = ngx_http_optout_api_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "50300", "Too busy",
                                       "The request waited too long for "
                                       "its turn.");
    }

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_api_add_start(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (ngx_http_optout_batch_copy_body(r, &ac->bc) != NGX_OK) {
        goto failed;
    }

    ac->bc.mac = optout_mac_dup(omcf->store_mac);
    if (ac->bc.mac == NULL) {
        goto failed;
    }

    if (ngx_thread_task_post(omcf->batch_thread_pool, ac->bc.task)
        != NGX_OK)
    {
        goto failed;
    }

    r->read_event_handler = ngx_http_test_reading;

    ngx_http_optout_hold(r, &ac->bc.hold);

    return NGX_DONE;

failed:

    ngx_http_optout_batch_slot_put(&ac->bc.slot);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


static void
ngx_http_optout_api_add_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_api_add_t *ac = data;

    size_t                       i, n;
    json_t                      *root, *v;
    ngx_http_optout_api_item_t  *items;

    if (ngx_http_optout_batch_read_body(&ac->bc) != NGX_OK) {
        return;
    }

    root = ngx_http_optout_api_add_parse(ac, &n);
    if (root == NULL) {
        return;
    }

    items = calloc(n, sizeof(ngx_http_optout_api_item_t));
    if (items == NULL) {
        goto nomem;
    }

    for (i = 0; i < n; i++) {
        v = json_is_array(root) ? json_array_get(root, i) : root;
        ngx_http_optout_api_add_item(ac, v, &items[i]);
    }

    ngx_http_optout_api_add_classify(ac, items, n);

    if (ngx_http_optout_api_add_record(ac, items, n) != NGX_OK) {
        goto nomem;
    }

    ngx_http_optout_api_add_answer(ac, items, n);

    free(items);
    json_decref(root);

    return;

nomem:

    free(items);
    json_decref(root);

    ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "50000", "Internal error", "Out of memory.");
}


/* the items: one object, or an array of 1..10,000 */

static json_t *
ngx_http_optout_api_add_parse(ngx_http_optout_api_add_t *ac, size_t *n)
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


static void
ngx_http_optout_api_add_item(ngx_http_optout_api_add_t *ac, json_t *v,
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

    it->reason = ngx_http_optout_api_add_rule(v, it, ac->now);
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
ngx_http_optout_api_add_rule(json_t *v, ngx_http_optout_api_item_t *it,
    double now)
{
    int          src;
    json_t      *f;
    size_t       i, len;
    uint64_t     c;
    const char  *s;

    it->rule.channel = it->dest.type;
    it->rule.source = OPTOUT_SOURCE_API;
    it->rule.time = (int64_t) now;
    it->time = now;

    f = json_object_get(v, "campaign");

    if (json_is_integer(f)) {
        if (json_integer_value(f) < 0
            || (uint64_t) json_integer_value(f) > NGX_HTTP_OPTOUT_CAMPAIGN_MAX)
        {
            return "campaign";
        }

        it->rule.campaign = json_integer_value(f);

    } else if (json_is_string(f)) {
        s = json_string_value(f);
        len = json_string_length(f);

        if (len == 0 || len > 11) {
            return "campaign";
        }

        for (c = 0, i = 0; i < len; i++) {
            if (s[i] < '0' || s[i] > '9') {
                return "campaign";
            }

            c = c * 10 + (s[i] - '0');
        }

        if (c > NGX_HTTP_OPTOUT_CAMPAIGN_MAX) {
            return "campaign";
        }

        it->rule.campaign = c;

    } else if (f && !json_is_null(f)) {
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


/*
 * One multi-get with markers: a rule that exists, or is pending on this
 * node, is "present".  When memcached cannot tell, every valid item is
 * recorded: the journal keeps it, and a second opt-out changes nothing.
 */

static void
ngx_http_optout_api_add_classify(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                       i, m, *lens;
    u_char                      *found;
    ngx_int_t                    rc;
    const char                 **keys;
    optout_rule_t               *rules;

    keys = malloc(n * sizeof(char *));
    lens = malloc(n * sizeof(size_t));
    found = malloc(n);
    rules = malloc(n * sizeof(optout_rule_t));

    rc = NGX_ERROR;
    m = 0;

    if (keys && lens && found && rules) {
        for (i = 0; i < n; i++) {
            if (items[i].status == NGX_HTTP_OPTOUT_API_ADDED) {
                keys[m] = (char *) items[i].key;
                lens[m] = items[i].key_len;
                m++;
            }
        }

        rc = m ? ngx_http_optout_store_mget(ac->bc.store, keys, lens, m,
                                            found, rules)
               : NGX_OK;
    }

    for (i = 0, m = 0; i < n; i++) {
        if (items[i].status != NGX_HTTP_OPTOUT_API_ADDED) {
            continue;
        }

        if (rc == NGX_OK && found[m]) {
            items[i].status = NGX_HTTP_OPTOUT_API_PRESENT;
            items[i].rule = rules[m];

        } else if (ngx_http_optout_pending_find(ac->bc.pending, items[i].key,
                                                items[i].key_len,
                                                &items[i].rule)
                   == NGX_OK)
        {
            items[i].status = NGX_HTTP_OPTOUT_API_PRESENT;
        }

        m++;
    }

    free(keys);
    free(lens);
    free(found);
    free(rules);
}


/* the changes and journal lines of the added items */

static ngx_int_t
ngx_http_optout_api_add_record(ngx_http_optout_api_add_t *ac,
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
        ch->rule = it->rule;
        ch->key_len = it->key_len;
        ngx_memcpy(ch->key, it->key, it->key_len);
    }

    return ac->lines.failed ? NGX_ERROR : NGX_OK;
}


static void
ngx_http_optout_api_add_answer(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n)
{
    size_t                       i, len;
    ngx_uint_t                   count[3];
    ngx_http_optout_out_t       *o;
    ngx_http_optout_api_item_t  *it;
    u_char                       buf[NGX_INT64_LEN * 3 + 64];

    static const char  *status[] = { "added", "present", "invalid" };

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


static void
ngx_http_optout_api_add_done(ngx_event_t *ev)
{
    ngx_http_optout_api_add_t *ac = ev->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ac->bc.request;
    c = r->connection;

    ngx_http_optout_batch_slot_put(&ac->bc.slot);

    if (ngx_http_optout_resume(r, &ac->bc.hold) == NGX_DONE) {
        return;
    }

    r->read_event_handler = ngx_http_block_reading;

    if (ac->bc.status != NGX_HTTP_OK || ac->nchanges == 0) {
        rc = ngx_http_optout_api_add_send(r, ac);
        goto done;
    }

    ac->record.request = r;
    ac->record.changes = ac->changes;
    ac->record.n = ac->nchanges;
    ac->record.lines = ac->lines.data;
    ac->record.len = ac->lines.len;
    ac->record.handler = ngx_http_optout_api_add_recorded;
    ac->record.data = ac;

    if (ngx_http_optout_rule_record(&ac->record) == NGX_OK) {
        ngx_http_run_posted_requests(c);
        return;
    }

    rc = ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Journal write failed",
                                   "Nothing was recorded.");

done:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_optout_api_add_recorded(ngx_http_optout_record_t *rec)
{
    ngx_http_optout_api_add_t *ac = rec->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = rec->request;
    c = r->connection;

    if (rec->rc != NGX_OK) {
        rc = ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "50000", "Journal write failed",
                                       "Nothing was recorded.");

    } else {
        rc = ngx_http_optout_api_add_send(r, ac);
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_api_add_send(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac)
{
    if (ac->bc.out.failed || ac->bc.out.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_optout_api_send_out(r, ac->bc.status, &ac->bc.out);
}


static void
ngx_http_optout_api_add_free(void *data)
{
    ngx_http_optout_api_add_t *ac = data;

    ngx_http_optout_batch_slot_put(&ac->bc.slot);

    if (ac->bc.mac) {
        optout_mac_destroy(ac->bc.mac);
        ac->bc.mac = NULL;
    }

    free(ac->bc.out.data);
    ac->bc.out.data = NULL;

    free(ac->lines.data);
    ac->lines.data = NULL;

    free(ac->changes);
    ac->changes = NULL;
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
