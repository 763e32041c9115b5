
/*
 * Adds through the management API: a POST of one rule (a JSON object) or
 * of up to 10,000 (an array).  A thread task parses and checks the items;
 * the event loop asks memcached which rules exist in one multi-get with
 * markers; a second task writes the journal lines of the new ones and the
 * answer; back on the event loop the new rules are recorded
 * (ngx_http_optout_rule.c: one journal group write, then one pipelined
 * store pass) before the answer goes out.  Batches share the batch
 * checks' limit and queue.
 */


#include "ngx_http_optout_api.h"


/* a body this small (one rule, a few) skips the batch queue */
#define NGX_HTTP_OPTOUT_API_SMALL     4096


static void ngx_http_optout_api_add_body(ngx_http_request_t *r);
static ngx_http_optout_api_add_t *ngx_http_optout_api_add_create(
    ngx_http_request_t *r);
static void ngx_http_optout_api_add_wake(ngx_http_optout_batch_slot_t *slot);
static ngx_int_t ngx_http_optout_api_add_start(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac, ngx_thread_pool_t *pool);
static void ngx_http_optout_api_add_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_api_add_record_thread(void *data,
    ngx_log_t *log);
static void ngx_http_optout_api_add_items_free(ngx_http_optout_api_add_t *ac);
static ngx_int_t ngx_http_optout_api_add_one(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac);
static void ngx_http_optout_api_add_looked(ngx_http_optout_lookup_t *lk);
static ngx_int_t ngx_http_optout_api_add_finish(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac);
static void ngx_http_optout_api_add_done(ngx_event_t *ev);
static ngx_int_t ngx_http_optout_api_add_recording(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac);
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

    /* single adds run beside link clicks, batches queue as batch checks */

    if (r->headers_in.content_length_n >= 0
        && r->headers_in.content_length_n <= NGX_HTTP_OPTOUT_API_SMALL)
    {
        rc = ngx_http_optout_api_add_one(r, ac);

        if (rc == NGX_DECLINED) {
            rc = ngx_http_optout_api_add_start(r, ac, omcf->thread_pool);
        }

        if (rc != NGX_DONE) {
            ngx_http_finalize_request(r, rc);
        }

        return;
    }

    switch (ngx_http_optout_batch_slot_get(omcf, &ac->bc.slot,
                                           r->connection->log))
    {
    case NGX_OK:
        rc = ngx_http_optout_api_add_start(r, ac, omcf->batch_thread_pool);
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
    task->event.handler = ngx_http_optout_batch_stage;
    task->event.data = ac;

    ac->bc.done = ngx_http_optout_api_add_done;

    return ac;
}


static void
ngx_http_optout_api_add_wake(ngx_http_optout_batch_slot_t *slot)
{
    ngx_http_optout_api_add_t *ac = slot->data;

    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_request_t           *r;
    ngx_http_optout_main_conf_t  *omcf;

    r = ac->bc.request;
    c = r->connection;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    ngx_http_set_log_request(c->log, r);

    if (slot->rc == NGX_OK) {
        rc = ngx_http_optout_api_add_start(r, ac, omcf->batch_thread_pool);

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
    ngx_http_optout_api_add_t *ac, ngx_thread_pool_t *pool)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (ac->bc.body == NULL
        && ngx_http_optout_batch_copy_body(r, &ac->bc) != NGX_OK)
    {
        goto failed;
    }

    ac->bc.mac = optout_mac_dup(omcf->store_mac);
    if (ac->bc.mac == NULL) {
        goto failed;
    }

    ac->bc.pool = pool;

    if (ngx_thread_task_post(pool, ac->bc.task) != NGX_OK) {
        goto failed;
    }

    r->read_event_handler = ngx_http_test_reading;

    ngx_http_optout_hold(r, &ac->bc.hold);

    return NGX_DONE;

failed:

    ngx_http_optout_batch_slot_put(&ac->bc.slot);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/*
 * One rule in a small body in memory: checked on the event loop, and
 * asked for in the multi-get that the checks in flight share (one round
 * trip for them all).  NGX_DECLINED: the thread task takes the request.
 */

static ngx_int_t
ngx_http_optout_api_add_one(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac)
{
    size_t                        n;
    json_t                       *root;
    ngx_http_optout_lookup_t     *lk;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (ngx_http_optout_batch_copy_body(r, &ac->bc) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ac->bc.nsegments) {
        return NGX_DECLINED;
    }

    /* the event loop's own MAC: the thread would get a copy */

    ac->bc.mac = omcf->store_mac;

    root = ngx_http_optout_api_items_parse(ac, &n);

    if (root == NULL) {
        ac->bc.mac = NULL;
        return ngx_http_optout_api_add_send(r, ac);
    }

    if (n != 1) {
        json_decref(root);
        ac->bc.mac = NULL;
        return NGX_DECLINED;
    }

    ac->item = ngx_pcalloc(r->pool, sizeof(ngx_http_optout_api_item_t));

    if (ac->item) {
        ngx_http_optout_api_items_check(ac, json_is_array(root)
                                            ? json_array_get(root, 0) : root,
                                        ac->item);
    }

    json_decref(root);
    ac->bc.mac = NULL;

    if (ac->item == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lk = &ac->lookup;
    lk->rc = NGX_ERROR;

    if (ac->item->status != NGX_HTTP_OPTOUT_API_ADDED) {
        return ngx_http_optout_api_add_finish(r, ac);
    }

    lk->nkeys = 1;
    lk->key[0] = ac->item->key;
    lk->key_len[0] = ac->item->key_len;
    lk->handler = ngx_http_optout_api_add_looked;
    lk->data = ac;

    if (ngx_http_optout_store_lookup(omcf->store, lk, olcf->check_timeout,
                                     r->connection->log)
        != NGX_OK)
    {
        lk->rc = NGX_ERROR;
        return ngx_http_optout_api_add_finish(r, ac);
    }

    return NGX_DONE;
}


static void
ngx_http_optout_api_add_looked(ngx_http_optout_lookup_t *lk)
{
    ngx_http_optout_api_add_t *ac = lk->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ac->bc.request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    rc = ngx_http_optout_api_add_finish(r, ac);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


/* a rule that exists, or is pending here, is present; then as a batch */

static ngx_int_t
ngx_http_optout_api_add_finish(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac)
{
    ngx_http_optout_lookup_t    *lk;
    ngx_http_optout_api_item_t  *it;

    it = ac->item;
    lk = &ac->lookup;

    if (it->status == NGX_HTTP_OPTOUT_API_ADDED) {

        if (lk->rc == NGX_OK && lk->found[0]) {
            it->status = NGX_HTTP_OPTOUT_API_PRESENT;
            it->rule = lk->rule[0];

        } else if (ngx_http_optout_pending_find(ac->bc.pending, it->key,
                                                it->key_len, &it->rule)
                   == NGX_OK)
        {
            it->status = NGX_HTTP_OPTOUT_API_PRESENT;
        }
    }

    if (ngx_http_optout_api_items_record(ac, it, 1) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_optout_api_items_answer(ac, it, 1);

    return ngx_http_optout_api_add_recording(r, ac);
}


/* the first task: the items parsed and checked, the keys to look up */

static void
ngx_http_optout_api_add_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_api_add_t *ac = data;

    size_t   i, n;
    json_t  *root, *v;

    if (ngx_http_optout_batch_read_body(&ac->bc) != NGX_OK) {
        return;
    }

    root = ngx_http_optout_api_items_parse(ac, &n);
    if (root == NULL) {
        return;
    }

    ac->root = root;
    ac->nitems = n;

    ac->items = calloc(n, sizeof(ngx_http_optout_api_item_t));
    if (ac->items == NULL) {
        goto nomem;
    }

    for (i = 0; i < n; i++) {
        v = json_is_array(root) ? json_array_get(root, i) : root;
        ngx_http_optout_api_items_check(ac, v, &ac->items[i]);
    }

    /* without the keys, every valid item is recorded */

    (void) ngx_http_optout_api_items_keys(ac, ac->items, n);

    ac->bc.next = ngx_http_optout_api_add_record_thread;

    return;

nomem:

    ngx_http_optout_api_add_items_free(ac);

    ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                               "50000", "Internal error", "Out of memory.");
}


/* the second task, after the multi-get: the journal lines and answer */

static void
ngx_http_optout_api_add_record_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_api_add_t *ac = data;

    ngx_http_optout_api_items_classify(ac, ac->items, ac->nitems);

    if (ngx_http_optout_api_items_record(ac, ac->items, ac->nitems)
        != NGX_OK)
    {
        ngx_http_optout_batch_fail(&ac->bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Out of memory.");

    } else {
        ngx_http_optout_api_items_answer(ac, ac->items, ac->nitems);
    }

    ngx_http_optout_api_add_items_free(ac);
}


static void
ngx_http_optout_api_add_items_free(ngx_http_optout_api_add_t *ac)
{
    free(ac->items);
    ac->items = NULL;

    if (ac->root) {
        json_decref(ac->root);
        ac->root = NULL;
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

    rc = ngx_http_optout_api_add_recording(r, ac);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


/* NGX_DONE while the new rules are recorded, or a status to finalize */

static ngx_int_t
ngx_http_optout_api_add_recording(ngx_http_request_t *r,
    ngx_http_optout_api_add_t *ac)
{
    if (ac->bc.status != NGX_HTTP_OK || ac->nchanges == 0) {
        return ngx_http_optout_api_add_send(r, ac);
    }

    ac->record.request = r;
    ac->record.changes = ac->changes;
    ac->record.n = ac->nchanges;
    ac->record.lines = ac->lines.data;
    ac->record.len = ac->lines.len;
    ac->record.handler = ngx_http_optout_api_add_recorded;
    ac->record.data = ac;

    if (ngx_http_optout_rule_record(&ac->record) == NGX_OK) {
        return NGX_DONE;
    }

    return ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                     "50000", "Journal write failed",
                                     "Nothing was recorded.");
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
    ngx_uint_t  i;

    if (ac->bc.out.failed || ac->bc.out.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ac->bc.status == NGX_HTTP_OK) {
        for (i = 0; i < 3; i++) {
            ngx_http_optout_metric_add(NGX_HTTP_OPTOUT_M_API + i,
                                       ac->count[i]);
        }
    }

    return ngx_http_optout_api_send_out(r, ac->bc.status, &ac->bc.out);
}


static void
ngx_http_optout_api_add_free(void *data)
{
    ngx_http_optout_api_add_t *ac = data;

    ngx_http_optout_batch_slot_put(&ac->bc.slot);
    ngx_http_optout_store_lookup_cancel(&ac->lookup);

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


