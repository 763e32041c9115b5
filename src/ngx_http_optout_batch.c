
/*
 * Batch checks: a POST of up to 10,000 destinations (one a line, a JSON
 * array of strings, or {"sender": ..., "destinations": [...]}) answered
 * with the blocked and the invalid ones.  The event loop reads the body,
 * waits for a free place among the worker's batches (batch_queue.c) and
 * sends the answer.  Parsing and key derivation run in a thread-pool
 * task that owns copies of its inputs; the multi-get runs on the event
 * loop (ngx_http_optout_batch_stage()); the verdicts and the answer run
 * in a second task.
 */


#include "ngx_http_optout_batch.h"


static void ngx_http_optout_batch_body(ngx_http_request_t *r);
static ngx_http_optout_batch_ctx_t *ngx_http_optout_batch_create(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_batch_init(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc);
static void ngx_http_optout_batch_wake(ngx_http_optout_batch_slot_t *slot);
static ngx_int_t ngx_http_optout_batch_start(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc);
static void ngx_http_optout_batch_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_batch_answer_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_batch_mgot(void *data, ngx_int_t rc);
static void ngx_http_optout_batch_next(ngx_http_optout_batch_ctx_t *bc);
static void ngx_http_optout_batch_done(ngx_event_t *ev);
static ngx_int_t ngx_http_optout_batch_send(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc);
static ngx_int_t ngx_http_optout_batch_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
static ngx_int_t ngx_http_optout_batch_busy(ngx_http_request_t *r,
    const char *why);
static void ngx_http_optout_batch_free(void *data);


ngx_int_t
ngx_http_optout_batch_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    /* a flood is refused before its bodies cost buffers and copies */

    if (ngx_http_optout_batch_slot_full(omcf)) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        ngx_http_optout_batch_refused(omcf, r->connection->log);

        return ngx_http_optout_batch_busy(r, "Too many batch checks are "
                                          "running or waiting");
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_optout_batch_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_optout_batch_body(ngx_http_request_t *r)
{
    ngx_int_t                     rc;
    ngx_http_optout_main_conf_t  *omcf;
    ngx_http_optout_batch_ctx_t  *bc;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40004",
                                        "No destinations",
                                        "The request body is empty."));
        return;
    }

    bc = ngx_http_optout_batch_create(r);
    if (bc == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    rc = ngx_http_optout_batch_init(r, bc);

    if (rc == NGX_ABORT) {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40006",
                                        "Conflicting sender",
                                        "The sender was given more than "
                                        "once; give it once."));
        return;
    }

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40002",
                                        "Invalid sender",
                                        "The sender must be an E.164 "
                                        "number, a short code or an "
                                        "alphanumeric sender ID of up to "
                                        "11 characters."));
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    switch (ngx_http_optout_batch_slot_get(omcf, &bc->slot,
                                           r->connection->log))
    {
    case NGX_OK:
        rc = ngx_http_optout_batch_start(r, bc);
        break;

    case NGX_AGAIN:

        /* notice a client that goes away while its batch waits */

        r->read_event_handler = ngx_http_test_reading;
        return;

    default: /* NGX_BUSY */
        ngx_http_optout_batch_refused(omcf, r->connection->log);
        rc = ngx_http_optout_batch_busy(r, "Too many batch checks are "
                                        "running or waiting");
    }

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
}


/* the context, inside the thread task, freed with the request */

static ngx_http_optout_batch_ctx_t *
ngx_http_optout_batch_create(ngx_http_request_t *r)
{
    ngx_thread_task_t            *task;
    ngx_pool_cleanup_t           *cln;
    ngx_http_optout_batch_ctx_t  *bc;

    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_optout_batch_ctx_t));
    if (task == NULL) {
        return NULL;
    }

    bc = task->ctx;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    cln->handler = ngx_http_optout_batch_free;
    cln->data = bc;

    bc->request = r;
    bc->task = task;
    bc->fd = NGX_INVALID_FILE;

    task->handler = ngx_http_optout_batch_thread;
    task->event.handler = ngx_http_optout_batch_stage;
    task->event.data = bc;

    bc->done = ngx_http_optout_batch_done;

    bc->slot.handler = ngx_http_optout_batch_wake;
    bc->slot.data = bc;

    return bc;
}


/*
 * the inputs that come from the configuration: sender and namespace;
 * NGX_DECLINED: the sender is invalid, NGX_ABORT: it was given twice
 */

static ngx_int_t
ngx_http_optout_batch_init(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc)
{
    ngx_int_t                     rc;
    ngx_str_t                     from;
    ngx_http_optout_ctx_t         ctx;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    bc->store = omcf->store;
    bc->pending = omcf->pending;
    bc->prefix = omcf->store_prefix;
    bc->open = (olcf->check_fail == NGX_HTTP_OPTOUT_FAIL_OPEN);

    rc = ngx_http_optout_input(r, olcf->check_sender, &from);

    if (rc != NGX_OK) {
        return (rc == NGX_DECLINED) ? NGX_ABORT
                                    : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (from.len
        && optout_normalize_sender((char *) from.data, from.len, bc->sender,
                                   &bc->sender_len)
           != OPTOUT_OK)
    {
        return NGX_DECLINED;
    }

    ngx_memzero(&ctx, sizeof(ngx_http_optout_ctx_t));

    if (ngx_http_optout_namespace(r, olcf, &ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    bc->ns = ctx.ns;

    return NGX_OK;
}


/* a waiting batch may run now, or waited too long */

static void
ngx_http_optout_batch_wake(ngx_http_optout_batch_slot_t *slot)
{
    ngx_http_optout_batch_ctx_t *bc = slot->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = bc->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    if (slot->rc == NGX_OK) {
        rc = ngx_http_optout_batch_start(r, bc);

    } else {
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_QUEUE_TIMEOUT);
        ngx_log_error(NGX_LOG_WARN, c->log, 0,
                      "optout: batch check waited too long for its turn");

        rc = ngx_http_optout_batch_busy(r, "The batch check waited too "
                                        "long for its turn");
    }

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


/* NGX_DONE once the task is posted, or a status to finalize with */

static ngx_int_t
ngx_http_optout_batch_start(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (ngx_http_optout_batch_copy_body(r, bc) != NGX_OK) {
        goto failed;
    }

    bc->mac = optout_mac_dup(omcf->store_mac);
    if (bc->mac == NULL) {
        goto failed;
    }

    bc->pool = omcf->batch_thread_pool;

    if (ngx_thread_task_post(bc->pool, bc->task) != NGX_OK) {
        goto failed;
    }

    r->read_event_handler = ngx_http_test_reading;

    ngx_http_optout_hold(r, &bc->hold);

    return NGX_DONE;

failed:

    ngx_http_optout_batch_slot_put(&bc->slot);

    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* memory is copied now, file parts are read by the thread */

ngx_int_t
ngx_http_optout_batch_copy_body(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc)
{
    u_char       *p;
    size_t        len;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    bc->body = ngx_pnalloc(r->pool, len + 1);
    if (bc->body == NULL) {
        return NGX_ERROR;
    }

    p = bc->body;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (bc->nsegments == NGX_HTTP_OPTOUT_BATCH_SEGMENTS) {
            return NGX_ERROR;
        }

        bc->fd = b->file->fd;
        bc->segments[bc->nsegments].dst = p;
        bc->segments[bc->nsegments].offset = b->file_pos;
        bc->segments[bc->nsegments].len = b->file_last - b->file_pos;
        bc->nsegments++;

        p += b->file_last - b->file_pos;
    }

    bc->body_len = len;

    return NGX_OK;
}


static void
ngx_http_optout_batch_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    if (ngx_http_optout_batch_read_body(bc) != NGX_OK) {
        return;
    }

    if (ngx_http_optout_batch_parse(bc, &bc->list) == NGX_OK
        && ngx_http_optout_batch_lookup(bc) == NGX_OK)
    {
        bc->next = ngx_http_optout_batch_answer_thread;
        return;
    }

    ngx_http_optout_batch_list_free(&bc->list);
}


static void
ngx_http_optout_batch_answer_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    ngx_http_optout_batch_dest_t  *dests;

    dests = ngx_http_optout_batch_verdicts(bc);

    if (dests) {
        ngx_http_optout_batch_answer(bc, &bc->list, dests);
        free(dests);
    }

    ngx_http_optout_batch_list_free(&bc->list);
}


/*
 * The first task ended: the multi-get of its keys on the event loop, then
 * the second task; or, without one, the end.
 */

void
ngx_http_optout_batch_stage(ngx_event_t *ev)
{
    ngx_http_optout_batch_ctx_t *bc = ev->data;

    if (bc->next == NULL) {
        bc->done(ev);
        return;
    }

    if (bc->mget_n == 0) {
        bc->mget_rc = NGX_OK;
        ngx_http_optout_batch_next(bc);
        return;
    }

    if (ngx_http_optout_store_mget(bc->store, bc->mget_keys, bc->mget_lens,
                                   bc->mget_n, bc->mget_found,
                                   bc->mget_rules, ngx_http_optout_batch_mgot,
                                   bc)
        != NGX_OK)
    {
        bc->mget_rc = NGX_ERROR;
        ngx_http_optout_batch_next(bc);
    }
}


static void
ngx_http_optout_batch_mgot(void *data, ngx_int_t rc)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    bc->mget_rc = rc;

    ngx_http_optout_batch_next(bc);
}


static void
ngx_http_optout_batch_next(ngx_http_optout_batch_ctx_t *bc)
{
    ngx_thread_task_t  *task;

    task = bc->task;

    task->handler = bc->next;
    task->event.handler = bc->done;

    bc->next = NULL;

    if (ngx_thread_task_post(bc->pool, task) == NGX_OK) {
        return;
    }

    /* the queue is full: the second part runs here, this once */

    task->handler(task->ctx, bc->request->connection->log);
    task->event.handler(&task->event);
}


/* in a thread: the parts of the body in a file; the error is answered */

ngx_int_t
ngx_http_optout_batch_read_body(ngx_http_optout_batch_ctx_t *bc)
{
    ssize_t     n;
    ngx_uint_t  i;

    for (i = 0; i < bc->nsegments; i++) {
        n = pread(bc->fd, bc->segments[i].dst, bc->segments[i].len,
                  bc->segments[i].offset);

        if (n != (ssize_t) bc->segments[i].len) {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "50000", "Internal error",
                                       "The request body could not be read.");
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* back on the event loop, as nginx's own thread event handlers do */

static void
ngx_http_optout_batch_done(ngx_event_t *ev)
{
    ngx_http_optout_batch_ctx_t *bc = ev->data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = bc->request;
    c = r->connection;

    ngx_http_optout_batch_slot_put(&bc->slot);

    if (ngx_http_optout_resume(r, &bc->hold) == NGX_DONE) {
        return;
    }

    r->read_event_handler = ngx_http_block_reading;

    ngx_http_finalize_request(r, ngx_http_optout_batch_send(r, bc));
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_batch_send(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc)
{
    ngx_buf_t  *b;

    ngx_http_optout_metric_batch(bc->status, 1);

    if (bc->unverified) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "optout: batch check unverified, allowed by "
                      "\"optout_check_fail open\"");
    }

    if (bc->status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "optout: batch check answered %ui: %s", bc->status,
                      bc->failure ? bc->failure : "");
    }

    if (bc->out.failed || bc->out.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the pool cleanup frees bc->out.data with the request */

    b->pos = bc->out.data;
    b->last = bc->out.data + bc->out.len;
    b->memory = 1;

    return ngx_http_optout_send_json(r, bc->status, b);
}


/* an error answered on the event loop */

static ngx_int_t
ngx_http_optout_batch_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *title, const char *detail)
{
    ngx_buf_t                    *b;
    ngx_http_optout_batch_ctx_t   bc;

    ngx_memzero(&bc, sizeof(ngx_http_optout_batch_ctx_t));

    ngx_http_optout_metric_batch(status, 0);

    ngx_http_optout_batch_fail(&bc, status, code, title, detail);

    if (bc.out.failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, bc.out.len);
    if (b == NULL) {
        free(bc.out.data);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, bc.out.data, bc.out.len);
    free(bc.out.data);

    return ngx_http_optout_send_json(r, status, b);
}


/* 503 and when to retry: the worker runs and queues all it may */

static ngx_int_t
ngx_http_optout_batch_busy(ngx_http_request_t *r, const char *why)
{
    u_char  detail[128];

    if (ngx_http_optout_add_header(r, "Retry-After", (u_char *) "1", 1)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_sprintf(detail, "%s; retry after the Retry-After time.%Z", why);

    return ngx_http_optout_batch_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "50300", "Too busy",
                                       (char *) detail);
}


static void
ngx_http_optout_batch_free(void *data)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    /* a batch still waiting leaves the queue with its request */

    ngx_http_optout_batch_slot_put(&bc->slot);

    if (bc->mac) {
        optout_mac_destroy(bc->mac);
        bc->mac = NULL;
    }

    if (bc->out.data) {
        free(bc->out.data);
        bc->out.data = NULL;
    }
}
