
/*
 * The rule store.  Reads are the one multi-get with markers on the event
 * loop (ngx_http_optout_mget.c); the lookups of single checks share it
 * here.  Writes go through libmemcached, which blocks: each runs in a
 * thread-pool task that owns copies of its inputs, and a per-worker
 * connection pool serves the threads.  A write that fails is left to the
 * journal applier: the journal is the queue of writes.
 */


#include "ngx_http_optout_module.h"

#include <libmemcachedutil-1.0/pool.h>

#include "ngx_http_optout_mget.h"


#define NGX_HTTP_OPTOUT_POOL_MAX        64

#define NGX_HTTP_OPTOUT_MGET_KEYS      (OPTOUT_MARKERS_MAX + 510)
#define NGX_HTTP_OPTOUT_MGET_HASH      2048


/*
 * Lookups go to memcached together, in one multi-get: the round trip is
 * the cost.  The lookups of one pass of the event loop share a multi-get,
 * posted at the end of that pass (a posted event), so a lookup waits for
 * no round trip while fewer than optout_check_concurrency multi-gets are
 * in flight in its worker; beyond that, the lookups that arrive wait
 * together for the first one to end.  A request may leave its multi-get
 * (timeout, close) at any time.
 */

typedef struct {
    ngx_queue_t                  queue;
    ngx_http_optout_store_t     *store;
    ngx_queue_t                  waiters;
    ngx_http_optout_mget_t       mget;
    const char                  *keys[NGX_HTTP_OPTOUT_MGET_KEYS];
    size_t                       lens[NGX_HTTP_OPTOUT_MGET_KEYS];
    uint32_t                     server[NGX_HTTP_OPTOUT_MGET_KEYS];
    u_char                       found[NGX_HTTP_OPTOUT_MGET_KEYS];
    optout_rule_t                rules[NGX_HTTP_OPTOUT_MGET_KEYS];
    uint32_t                     hash[NGX_HTTP_OPTOUT_MGET_HASH];
    char                         data[NGX_HTTP_OPTOUT_MGET_KEYS]
                                     [OPTOUT_STORE_KEY_MAX + 1];
} ngx_http_optout_shared_t;


struct ngx_http_optout_store_s {
    ngx_http_optout_mc_t        *mc;
    memcached_st                *master;
    memcached_pool_st           *pool;
    ngx_thread_pool_t           *thread_pool;
    ngx_log_t                   *log;
    struct timespec              wait;

    ngx_uint_t                   nmarkers;
    ngx_event_t                  flush;
    ngx_http_optout_shared_t    *filling;
    ngx_uint_t                   inflight;
    ngx_uint_t                   inflight_max;
    ngx_queue_t                  free_mgets;
    ngx_uint_t                   nfree;
};


/* the store writes of one recorded change set */

typedef struct {
    ngx_http_optout_store_t     *store;
    ngx_http_optout_waiter_t    *waiter;
    ngx_http_optout_change_t    *changes;
    ngx_uint_t                   n;
    const char                  *error;

    /* many opt-outs: the multi-get that confirms them */
    ngx_uint_t                   m;
    const char                 **keys;
    size_t                      *lens;
    u_char                      *found;
    optout_rule_t               *rules;
} ngx_http_optout_write_ctx_t;


static ngx_http_optout_shared_t *ngx_http_optout_shared_get(
    ngx_http_optout_store_t *store);
static void ngx_http_optout_shared_flush(ngx_event_t *ev);
static void ngx_http_optout_shared_post(ngx_http_optout_shared_t *sh);
static void ngx_http_optout_shared_done(ngx_http_optout_mget_t *mg);
static void ngx_http_optout_store_lookup_expired(ngx_event_t *ev);
static void ngx_http_optout_store_write_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_store_write_many(ngx_http_optout_write_ctx_t *ctx,
    ngx_uint_t m);
static memcached_return_t ngx_http_optout_store_write_pass(memcached_st *mc,
    ngx_http_optout_write_ctx_t *ctx, const char **keys, size_t *lens,
    ngx_uint_t m);
static memcached_return_t ngx_http_optout_store_write_sync(memcached_st *mc,
    const char **keys, size_t *lens, ngx_uint_t m);
static void ngx_http_optout_store_write_done(ngx_event_t *ev);
static void ngx_http_optout_store_confirmed(void *data, ngx_int_t rc);
static void ngx_http_optout_store_written(ngx_http_optout_write_ctx_t *ctx);


char *
ngx_http_optout_store_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    char           err[256];
    u_char        *p;
    size_t         len;
    uint64_t       replicas;
    ngx_str_t     *value;
    ngx_uint_t     i;
    memcached_st  *mc;

    if (omcf->store_conf.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* several arguments are one configuration string, space-separated */

    len = 0;
    for (i = 1; i < cf->args->nelts; i++) {
        len += value[i].len + 1;
    }

    p = ngx_pnalloc(cf->pool, len);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    omcf->store_conf.data = p;

    for (i = 1; i < cf->args->nelts; i++) {
        if (i > 1) {
            *p++ = ' ';
        }

        p = ngx_cpymem(p, value[i].data, value[i].len);
    }

    omcf->store_conf.len = p - omcf->store_conf.data;
    *p = '\0';

    if (omcf->store_conf.len == 0) {
        return "is empty";
    }

    if (libmemcached_check_configuration((char *) omcf->store_conf.data,
                                         omcf->store_conf.len, err,
                                         sizeof(err))
        != MEMCACHED_SUCCESS)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid libmemcached configuration \"%V\" "
                           "in \"%V\": %s", &omcf->store_conf, &cmd->name,
                           err);
        return NGX_CONF_ERROR;
    }

    mc = memcached((char *) omcf->store_conf.data, omcf->store_conf.len);
    if (mc == NULL) {
        return NGX_CONF_ERROR;
    }

    replicas = memcached_behavior_get(mc,
                                      MEMCACHED_BEHAVIOR_NUMBER_OF_REPLICAS);

    /* the multi-get's connections: names resolved now, as upstreams' */

    omcf->store_servers = ngx_http_optout_mc_resolve(cf, mc);
    memcached_free(mc);

    if (omcf->store_servers == NULL) {
        return NGX_CONF_ERROR;
    }

    /* a replica answers for another server's keys: no marker vouches */

    if (replicas) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"--NUMBER-OF-REPLICAS\" is not supported "
                           "in \"%V\"", &cmd->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_optout_store_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_msec_t                ms;
    ngx_http_optout_store_t  *store;

    store = ngx_pcalloc(cycle->pool, sizeof(ngx_http_optout_store_t));
    if (store == NULL) {
        return NGX_ERROR;
    }

    store->master = memcached((char *) omcf->store_conf.data,
                              omcf->store_conf.len);
    if (store->master == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: memcached(\"%V\") failed", &omcf->store_conf);
        return NGX_ERROR;
    }

    if (optout_mc_tune(store->master, omcf->store_timeout) != 0) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: memcached_behavior_set() failed");
        memcached_free(store->master);
        return NGX_ERROR;
    }

    store->mc = ngx_http_optout_mc_create(cycle, &omcf->store_conf,
                                          &omcf->store_prefix,
                                          omcf->store_timeout,
                                          omcf->store_servers);
    if (store->mc == NULL) {
        memcached_free(store->master);
        return NGX_ERROR;
    }

    store->nmarkers = ngx_http_optout_mc_markers(store->mc)->n;

    store->pool = memcached_pool_create(store->master, 1,
                                        NGX_HTTP_OPTOUT_POOL_MAX);
    if (store->pool == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: memcached_pool_create() failed");
        ngx_http_optout_mc_destroy(store->mc);
        memcached_free(store->master);
        return NGX_ERROR;
    }

    ms = omcf->store_timeout;

    store->wait.tv_sec = ms / 1000;
    store->wait.tv_nsec = (ms % 1000) * 1000000;

    store->thread_pool = omcf->thread_pool;
    store->log = cycle->log;
    store->inflight_max = omcf->check_concurrency;

    store->flush.handler = ngx_http_optout_shared_flush;
    store->flush.data = store;
    store->flush.log = cycle->log;

    ngx_queue_init(&store->free_mgets);

    omcf->store = store;

    return NGX_OK;
}


void
ngx_http_optout_store_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    memcached_st             *master;
    ngx_queue_t              *q;
    ngx_http_optout_store_t  *store;

    store = omcf->store;

    if (store->flush.posted) {
        ngx_delete_posted_event(&store->flush);
    }

    while (!ngx_queue_empty(&store->free_mgets)) {
        q = ngx_queue_head(&store->free_mgets);
        ngx_queue_remove(q);
        ngx_free(ngx_queue_data(q, ngx_http_optout_shared_t, queue));
    }

    if (store->filling) {
        ngx_free(store->filling);
    }

    ngx_http_optout_mc_destroy(store->mc);

    master = memcached_pool_destroy(store->pool);
    if (master) {
        memcached_free(master);
    }

    omcf->store = NULL;
}


/*
 * NGX_OK: lk->handler will be called from the event loop, with lk->rc
 * NGX_ERROR and lk->timedout set if no answer came within "timeout";
 * ngx_http_optout_store_lookup_cancel() stops both.
 */

ngx_int_t
ngx_http_optout_store_lookup(ngx_http_optout_store_t *store,
    ngx_http_optout_lookup_t *lk, ngx_msec_t timeout, ngx_log_t *log)
{
    ngx_uint_t                 i;
    ngx_http_optout_shared_t  *sh;

    sh = store->filling;

    if (sh && sh->mget.total + lk->nkeys + store->nmarkers
              > NGX_HTTP_OPTOUT_MGET_KEYS)
    {
        /* full: it goes now, whatever is in flight */
        ngx_http_optout_shared_post(sh);
        sh = NULL;
    }

    if (sh == NULL) {
        sh = ngx_http_optout_shared_get(store);
        if (sh == NULL) {
            return NGX_ERROR;
        }

        store->filling = sh;
    }

    for (i = 0; i < lk->nkeys; i++) {
        if (ngx_http_optout_mget_add(&sh->mget, (char *) lk->key[i],
                                     lk->key_len[i], &lk->index[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ngx_queue_insert_tail(&sh->waiters, &lk->queue);
    lk->mget = sh;

    if (store->inflight < store->inflight_max && !store->flush.posted) {
        ngx_post_event(&store->flush, &ngx_posted_events);
    }

    lk->timedout = 0;
    lk->timer.handler = ngx_http_optout_store_lookup_expired;
    lk->timer.data = lk;
    lk->timer.log = log;

    ngx_add_timer(&lk->timer, timeout);

    return NGX_OK;
}


void
ngx_http_optout_store_lookup_cancel(ngx_http_optout_lookup_t *lk)
{
    if (lk->mget) {
        ngx_queue_remove(&lk->queue);
        lk->mget = NULL;
    }

    if (lk->timer.timer_set) {
        ngx_del_timer(&lk->timer);
    }
}


static void
ngx_http_optout_store_lookup_expired(ngx_event_t *ev)
{
    ngx_http_optout_lookup_t *lk = ev->data;

    ngx_http_optout_store_lookup_cancel(lk);

    lk->rc = NGX_ERROR;
    lk->timedout = 1;

    lk->handler(lk);
}


static ngx_http_optout_shared_t *
ngx_http_optout_shared_get(ngx_http_optout_store_t *store)
{
    ngx_queue_t               *q;
    ngx_http_optout_mget_t    *mg;
    ngx_http_optout_shared_t  *sh;

    if (!ngx_queue_empty(&store->free_mgets)) {
        q = ngx_queue_head(&store->free_mgets);
        ngx_queue_remove(q);
        store->nfree--;
        sh = ngx_queue_data(q, ngx_http_optout_shared_t, queue);

    } else {
        sh = ngx_alloc(sizeof(ngx_http_optout_shared_t), store->log);
        if (sh == NULL) {
            return NULL;
        }

        sh->store = store;

        mg = &sh->mget;

        ngx_memzero(&mg->event, sizeof(ngx_event_t));

        mg->handler = ngx_http_optout_shared_done;
        mg->ctx = sh;

        mg->max = NGX_HTTP_OPTOUT_MGET_KEYS;
        mg->mask = NGX_HTTP_OPTOUT_MGET_HASH - 1;
        mg->keys = sh->keys;
        mg->lens = sh->lens;
        mg->server = sh->server;
        mg->found = sh->found;
        mg->rules = sh->rules;
        mg->hash = sh->hash;
        mg->data = &sh->data[0][0];
    }

    ngx_queue_init(&sh->waiters);
    ngx_http_optout_mget_init(&sh->mget);

    return sh;
}


/* the end of a pass of the event loop: its lookups go together */

static void
ngx_http_optout_shared_flush(ngx_event_t *ev)
{
    ngx_http_optout_store_t *store = ev->data;

    ngx_http_optout_shared_t  *sh;

    sh = store->filling;

    if (sh && !ngx_queue_empty(&sh->waiters)
        && store->inflight < store->inflight_max)
    {
        ngx_http_optout_shared_post(sh);
    }
}


static void
ngx_http_optout_shared_post(ngx_http_optout_shared_t *sh)
{
    ngx_http_optout_store_t  *store;

    store = sh->store;

    if (store->filling == sh) {
        store->filling = NULL;
    }

    store->inflight++;

    ngx_http_optout_mget_run(store->mc, &sh->mget);
}


static void
ngx_http_optout_shared_done(ngx_http_optout_mget_t *mg)
{
    ngx_http_optout_shared_t *sh = mg->ctx;

    ngx_int_t                  rc;
    ngx_uint_t                 i, k;
    ngx_queue_t               *q;
    ngx_http_optout_store_t   *store;
    ngx_http_optout_lookup_t  *lk;

    store = sh->store;
    store->inflight--;

    if (mg->rc != MEMCACHED_SUCCESS) {
        ngx_log_error(NGX_LOG_ERR, store->log, 0,
                      "optout: memcached lookup failed: %s",
                      memcached_strerror(NULL, mg->rc));
    }

    while (!ngx_queue_empty(&sh->waiters)) {
        q = ngx_queue_head(&sh->waiters);
        ngx_queue_remove(q);

        lk = ngx_queue_data(q, ngx_http_optout_lookup_t, queue);
        lk->mget = NULL;
        lk->rc = NGX_OK;

        if (lk->timer.timer_set) {
            ngx_del_timer(&lk->timer);
        }

        for (k = 0; k < lk->nkeys; k++) {
            i = lk->index[k];

            rc = ngx_http_optout_mget_answer(mg, i);
            if (rc != NGX_OK) {
                lk->rc = rc;
                break;
            }

            lk->found[k] = mg->found[i];

            if (mg->found[i]) {
                lk->rule[k] = mg->rules[i];
            }
        }

        lk->handler(lk);
    }

    /* enough for every one in flight and the filling one */

    if (store->nfree <= store->inflight_max) {
        ngx_queue_insert_tail(&store->free_mgets, &sh->queue);
        store->nfree++;

    } else {
        ngx_free(sh);
    }

    sh = store->filling;

    if (sh && !ngx_queue_empty(&sh->waiters)
        && store->inflight < store->inflight_max)
    {
        ngx_http_optout_shared_post(sh);
    }
}


/*
 * In a thread: one rule written to memcached, "add" for an opt-out (the
 * campaign of the first opt-out is kept), "delete" for an opt-in, "set"
 * for the journal applier's opt-out that follows an opt-in.  Returns NULL,
 * or why it failed.
 */

const char *
ngx_http_optout_store_apply(ngx_http_optout_store_t *store, ngx_uint_t op,
    u_char *key, size_t key_len, u_char *value, size_t value_len)
{
    memcached_st        *mc;
    memcached_return_t   rc;

    mc = memcached_pool_fetch(store->pool, &store->wait, &rc);
    if (mc == NULL) {
        return memcached_strerror(NULL, rc == MEMCACHED_SUCCESS
                                        ? MEMCACHED_FAILURE : rc);
    }

    switch (op) {

    case NGX_HTTP_OPTOUT_STORE_DELETE:
        rc = memcached_delete(mc, (char *) key, key_len, 0);
        break;

    case NGX_HTTP_OPTOUT_STORE_SET:
        rc = memcached_set(mc, (char *) key, key_len, (char *) value,
                           value_len, 0, 0);
        break;

    default: /* NGX_HTTP_OPTOUT_STORE_ADD */
        rc = memcached_add(mc, (char *) key, key_len, (char *) value,
                           value_len, 0, 0);
    }

    ngx_http_optout_metric_write(memcached_generate_hash(mc, (char *) key,
                                                         key_len), rc);

    (void) memcached_pool_release(store->pool, mc);

    switch (rc) {

    case MEMCACHED_SUCCESS:
    case MEMCACHED_NOTSTORED:
    case MEMCACHED_DATA_EXISTS:
    case MEMCACHED_NOTFOUND:
        return NULL;

    default:
        return memcached_strerror(NULL, rc);
    }
}


/*
 * One multi-get with markers of keys[] (repeats allowed), on the event
 * loop: see ngx_http_optout_mget_keys().
 */

ngx_int_t
ngx_http_optout_store_mget(ngx_http_optout_store_t *store, const char **keys,
    size_t *lens, ngx_uint_t n, u_char *found, optout_rule_t *rules,
    ngx_http_optout_keys_pt handler, void *data)
{
    return ngx_http_optout_mget_keys(store->mc, keys, lens, n, found, rules,
                                     handler, data);
}


/*
 * The store writes of changes already in the journal: a thread task that
 * owns its context; the changes stay untouched while it runs (their
 * request is held).  Sets changes[i].stored.
 */

ngx_int_t
ngx_http_optout_store_write(ngx_http_request_t *r,
    ngx_http_optout_store_t *store, ngx_http_optout_change_t *changes,
    ngx_uint_t n, ngx_http_optout_waiter_t *w)
{
    ngx_thread_task_t            *task;
    ngx_http_optout_write_ctx_t  *ctx;

    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_optout_write_ctx_t));
    if (task == NULL) {
        return NGX_ERROR;
    }

    ctx = task->ctx;

    ctx->store = store;
    ctx->waiter = w;
    ctx->changes = changes;
    ctx->n = n;

    task->handler = ngx_http_optout_store_write_thread;
    task->event.handler = ngx_http_optout_store_write_done;
    task->event.data = ctx;

    if (ngx_thread_task_post(store->thread_pool, task) != NGX_OK) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static void
ngx_http_optout_store_write_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_write_ctx_t *ctx = data;

    size_t                     len;
    ngx_uint_t                 i, m;
    const char                *err;
    ngx_http_optout_change_t  *ch;
    u_char                     value[OPTOUT_VALUE_MAX];

    m = 0;

    for (i = 0; i < ctx->n; i++) {
        ch = &ctx->changes[i];
        ch->stored = 0;

        if (!ch->optin) {
            m++;
            continue;
        }

        err = ngx_http_optout_store_apply(ctx->store,
                                          NGX_HTTP_OPTOUT_STORE_DELETE,
                                          ch->key, ch->key_len, NULL, 0);
        if (err) {
            ctx->error = err;
            continue;
        }

        ch->stored = 1;
    }

    if (m > 1) {
        ngx_http_optout_store_write_many(ctx, m);
        return;
    }

    for (i = 0; m && i < ctx->n; i++) {
        ch = &ctx->changes[i];

        if (ch->optin) {
            continue;
        }

        len = optout_rule_format(&ch->rule, (char *) value);

        err = ngx_http_optout_store_apply(ctx->store,
                                          NGX_HTTP_OPTOUT_STORE_ADD,
                                          ch->key, ch->key_len, value, len);
        if (err) {
            ctx->error = err;
            continue;
        }

        ch->stored = 1;
    }
}


/*
 * Many opt-outs: written without replies, in one buffered pass; then, on
 * each server written to, a "touch" of one of the keys written (rules
 * never expire, so it changes nothing) whose reply proves every write
 * before it on that connection done.  Back on the event loop, the one
 * multi-get with markers tells which are stored.  The behaviors are set
 * back only after it (setting them closes the connections).
 */

static void
ngx_http_optout_store_write_many(ngx_http_optout_write_ctx_t *ctx,
    ngx_uint_t m)
{
    memcached_st        *mc;
    memcached_return_t   rc;

    ctx->keys = malloc(m * sizeof(char *));
    ctx->lens = malloc(m * sizeof(size_t));
    ctx->found = malloc(m);
    ctx->rules = malloc(m * sizeof(optout_rule_t));

    ctx->error = "out of memory";

    if (ctx->keys == NULL || ctx->lens == NULL || ctx->found == NULL
        || ctx->rules == NULL)
    {
        return;
    }

    mc = memcached_pool_fetch(ctx->store->pool, &ctx->store->wait, &rc);
    if (mc == NULL) {
        ctx->error = memcached_strerror(NULL, rc == MEMCACHED_SUCCESS
                                              ? MEMCACHED_FAILURE : rc);
        return;
    }

    rc = memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NOREPLY, 1);

    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_BUFFER_REQUESTS,
                                    1);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = ngx_http_optout_store_write_pass(mc, ctx, ctx->keys, ctx->lens,
                                              m);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_flush_buffers(mc);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NOREPLY, 0);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = ngx_http_optout_store_write_sync(mc, ctx->keys, ctx->lens, m);
    }

    (void) memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NOREPLY, 0);
    (void) memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_BUFFER_REQUESTS, 0);
    (void) memcached_pool_release(ctx->store->pool, mc);

    if (rc != MEMCACHED_SUCCESS) {
        ctx->error = memcached_strerror(NULL, rc);
        return;
    }

    ctx->error = NULL;
    ctx->m = m;
}


/* a "touch" on each server written to, after its writes */

static memcached_return_t
ngx_http_optout_store_write_sync(memcached_st *mc, const char **keys,
    size_t *lens, ngx_uint_t m)
{
    uint32_t            s;
    ngx_uint_t          i;
    memcached_return_t  rc;
    u_char              done[OPTOUT_MARKERS_MAX];

    ngx_memzero(done, sizeof(done));

    for (i = 0; i < m; i++) {
        s = memcached_generate_hash(mc, keys[i], lens[i]);

        if (s >= OPTOUT_MARKERS_MAX) {
            return MEMCACHED_FAILURE;
        }

        if (done[s]) {
            continue;
        }

        done[s] = 1;

        rc = memcached_touch(mc, keys[i], lens[i], 0);

        if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND) {
            return rc;
        }
    }

    return MEMCACHED_SUCCESS;
}


/*
 * libmemcached buffers "set" but sends each "add" at once: a rule that
 * memcached said it lacks is "set", in reverse order, so that of two
 * items of one key the first is kept, as "add" would.  keys[] and lens[]
 * get the m opt-outs in request order.
 */

static memcached_return_t
ngx_http_optout_store_write_pass(memcached_st *mc,
    ngx_http_optout_write_ctx_t *ctx, const char **keys, size_t *lens,
    ngx_uint_t m)
{
    size_t                     len;
    ngx_uint_t                 i, j;
    memcached_return_t         rc;
    ngx_http_optout_change_t  *ch;
    u_char                     value[OPTOUT_VALUE_MAX];

    rc = MEMCACHED_SUCCESS;

    for (i = ctx->n, j = m; rc == MEMCACHED_SUCCESS && i--; /* void */ ) {
        ch = &ctx->changes[i];

        if (ch->optin) {
            continue;
        }

        len = optout_rule_format(&ch->rule, (char *) value);

        if (ch->absent) {
            rc = memcached_set(mc, (char *) ch->key, ch->key_len,
                               (char *) value, len, 0, 0);

        } else {
            rc = memcached_add(mc, (char *) ch->key, ch->key_len,
                               (char *) value, len, 0, 0);
        }

        if (rc == MEMCACHED_BUFFERED) {
            rc = MEMCACHED_SUCCESS;
        }

        j--;
        keys[j] = (char *) ch->key;
        lens[j] = ch->key_len;
    }

    return rc;
}


static void
ngx_http_optout_store_write_done(ngx_event_t *ev)
{
    ngx_http_optout_write_ctx_t *ctx = ev->data;

    if (ctx->error == NULL && ctx->m
        && ngx_http_optout_store_mget(ctx->store, ctx->keys, ctx->lens,
                                      ctx->m, ctx->found, ctx->rules,
                                      ngx_http_optout_store_confirmed, ctx)
           == NGX_OK)
    {
        return;
    }

    if (ctx->error == NULL && ctx->m) {
        ctx->error = "out of memory";
    }

    ngx_http_optout_store_written(ctx);
}


/* which of many opt-outs memcached holds: those are stored */

static void
ngx_http_optout_store_confirmed(void *data, ngx_int_t rc)
{
    ngx_http_optout_write_ctx_t *ctx = data;

    ngx_uint_t                 i, j;
    ngx_http_optout_change_t  *ch;

    if (rc != NGX_OK) {
        ctx->error = "the multi-get after the adds was not answered "
                     "completely";

    } else {
        for (i = 0, j = 0; i < ctx->n; i++) {
            ch = &ctx->changes[i];

            if (!ch->optin) {
                ch->stored = ctx->found[j++];
            }
        }
    }

    ngx_http_optout_store_written(ctx);
}


static void
ngx_http_optout_store_written(ngx_http_optout_write_ctx_t *ctx)
{
    ngx_http_optout_waiter_t  *w;

    free(ctx->keys);
    free(ctx->lens);
    free(ctx->found);
    free(ctx->rules);

    ctx->keys = NULL;
    ctx->lens = NULL;
    ctx->found = NULL;
    ctx->rules = NULL;

    w = ctx->waiter;

    if (ctx->error) {
        ngx_log_error(NGX_LOG_ERR, ctx->store->log, 0,
                      "optout: memcached write failed: %s; the journal "
                      "applier will write it", ctx->error);
        w->rc = NGX_DECLINED;

    } else {
        w->rc = NGX_OK;
    }

    w->handler(w);
}
