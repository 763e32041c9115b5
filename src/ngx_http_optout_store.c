
/*
 * The rule store: memcached through libmemcached.  libmemcached blocks, so
 * every call runs in a thread-pool task that owns copies of its inputs; a
 * per-worker connection pool serves the threads.  A write that fails is
 * left to the journal applier: the journal is the queue of writes.
 */


#include "ngx_http_optout_module.h"

#include <libmemcachedutil-1.0/pool.h>

#include "optout_memcached.h"


#define NGX_HTTP_OPTOUT_POOL_MAX        64

#define NGX_HTTP_OPTOUT_MGET_KEYS      (OPTOUT_MARKERS_MAX + 510)
#define NGX_HTTP_OPTOUT_MGET_HASH      2048
#define NGX_HTTP_OPTOUT_INFLIGHT        1
#define NGX_HTTP_OPTOUT_FREE_BATCHES    8


/*
 * Lookups that arrive while others are in flight wait in one batch and
 * go to memcached together in one multi-get: the round trip is the cost.
 * The thread owns the batch's keys and results; the waiters stay on the
 * event loop, so a request may leave a batch (timeout, close) at any time.
 */

typedef struct {
    ngx_thread_task_t            task;
    ngx_queue_t                  queue;
    ngx_http_optout_store_t     *store;
    ngx_queue_t                  waiters;
    ngx_uint_t                   nkeys;
    memcached_return_t           rc;
    const char                  *keys[NGX_HTTP_OPTOUT_MGET_KEYS];
    size_t                       lens[NGX_HTTP_OPTOUT_MGET_KEYS];
    uint32_t                     server[NGX_HTTP_OPTOUT_MGET_KEYS];
    u_char                       found[NGX_HTTP_OPTOUT_MGET_KEYS];
    optout_rule_t                rules[NGX_HTTP_OPTOUT_MGET_KEYS];
    uint16_t                     hash[NGX_HTTP_OPTOUT_MGET_HASH];
    char                         data[NGX_HTTP_OPTOUT_MGET_KEYS]
                                     [OPTOUT_STORE_KEY_MAX + 1];
} ngx_http_optout_mget_t;


struct ngx_http_optout_store_s {
    memcached_st                *master;
    memcached_pool_st           *pool;
    ngx_thread_pool_t           *thread_pool;
    ngx_log_t                   *log;
    struct timespec              wait;

    optout_markers_t             markers;
    ngx_http_optout_mget_t     *filling;
    ngx_uint_t                   inflight;
    ngx_queue_t                  free_batches;
    ngx_uint_t                   nfree;
};


typedef struct {
    ngx_http_optout_store_t     *store;
    ngx_http_optout_waiter_t    *waiter;
    const char                  *error;
    size_t                       key_len;
    size_t                       value_len;
    u_char                       key[OPTOUT_STORE_KEY_MAX];
    u_char                       value[OPTOUT_VALUE_MAX];
} ngx_http_optout_add_ctx_t;


static ngx_http_optout_mget_t *ngx_http_optout_mget_get(
    ngx_http_optout_store_t *store);
static ngx_int_t ngx_http_optout_mget_add(ngx_http_optout_mget_t *b,
    u_char *key, size_t len, ngx_uint_t *index);
static ngx_uint_t ngx_http_optout_mget_hash(const char *key, size_t len);
static void ngx_http_optout_mget_post(ngx_http_optout_mget_t *b);
static void ngx_http_optout_mget_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_mget_done(ngx_event_t *ev);
static void ngx_http_optout_store_add_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_store_add_done(ngx_event_t *ev);


char *
ngx_http_optout_store_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    char        err[256];
    u_char     *p;
    size_t      len;
    ngx_str_t  *value;
    ngx_uint_t  i;

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

    if (optout_markers(store->master, (char *) omcf->store_prefix.data,
                       omcf->store_prefix.len, &store->markers)
        != OPTOUT_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: cannot place a marker on each of the %uD "
                      "memcached servers (at most %d)",
                      memcached_server_count(store->master),
                      OPTOUT_MARKERS_MAX);
        memcached_free(store->master);
        return NGX_ERROR;
    }

    store->pool = memcached_pool_create(store->master, 1,
                                        NGX_HTTP_OPTOUT_POOL_MAX);
    if (store->pool == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: memcached_pool_create() failed");
        memcached_free(store->master);
        return NGX_ERROR;
    }

    ms = omcf->store_timeout;

    store->wait.tv_sec = ms / 1000;
    store->wait.tv_nsec = (ms % 1000) * 1000000;

    store->thread_pool = omcf->thread_pool;
    store->log = cycle->log;

    ngx_queue_init(&store->free_batches);

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

    while (!ngx_queue_empty(&store->free_batches)) {
        q = ngx_queue_head(&store->free_batches);
        ngx_queue_remove(q);
        ngx_free(ngx_queue_data(q, ngx_http_optout_mget_t, queue));
    }

    if (store->filling) {
        ngx_free(store->filling);
    }

    master = memcached_pool_destroy(store->pool);
    if (master) {
        memcached_free(master);
    }

    omcf->store = NULL;
}


ngx_int_t
ngx_http_optout_store_lookup(ngx_http_optout_store_t *store,
    ngx_http_optout_lookup_t *lk)
{
    ngx_uint_t                i;
    ngx_http_optout_mget_t  *b;

    b = store->filling;

    if (b && b->nkeys + lk->nkeys > NGX_HTTP_OPTOUT_MGET_KEYS) {
        /* full: it goes now, whatever is in flight */
        ngx_http_optout_mget_post(b);
        b = NULL;
    }

    if (b == NULL) {
        b = ngx_http_optout_mget_get(store);
        if (b == NULL) {
            return NGX_ERROR;
        }

        store->filling = b;
    }

    for (i = 0; i < lk->nkeys; i++) {
        if (ngx_http_optout_mget_add(b, lk->key[i], lk->key_len[i],
                                      &lk->index[i])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ngx_queue_insert_tail(&b->waiters, &lk->queue);
    lk->batch = b;

    if (store->inflight < NGX_HTTP_OPTOUT_INFLIGHT) {
        ngx_http_optout_mget_post(b);
    }

    return NGX_OK;
}


void
ngx_http_optout_store_lookup_cancel(ngx_http_optout_lookup_t *lk)
{
    if (lk->batch) {
        ngx_queue_remove(&lk->queue);
        lk->batch = NULL;
    }
}


static ngx_http_optout_mget_t *
ngx_http_optout_mget_get(ngx_http_optout_store_t *store)
{
    ngx_uint_t                i;
    ngx_queue_t              *q;
    ngx_http_optout_mget_t  *b;

    if (!ngx_queue_empty(&store->free_batches)) {
        q = ngx_queue_head(&store->free_batches);
        ngx_queue_remove(q);
        store->nfree--;
        b = ngx_queue_data(q, ngx_http_optout_mget_t, queue);

    } else {
        b = ngx_alloc(sizeof(ngx_http_optout_mget_t), store->log);
        if (b == NULL) {
            return NULL;
        }

        ngx_memzero(&b->task, sizeof(ngx_thread_task_t));

        b->store = store;
        b->task.ctx = b;
        b->task.handler = ngx_http_optout_mget_thread;
        b->task.event.handler = ngx_http_optout_mget_done;
        b->task.event.data = b;
        b->task.event.log = store->log;
    }

    ngx_queue_init(&b->waiters);
    ngx_memzero(b->hash, sizeof(b->hash));
    b->rc = MEMCACHED_SUCCESS;
    b->nkeys = 0;

    /* the markers come first: a server's marker precedes its keys */

    for (i = 0; i < store->markers.n; i++) {
        (void) ngx_http_optout_mget_add(b, (u_char *) store->markers.key[i],
                                         store->markers.len[i], NULL);
    }

    return b;
}


static ngx_int_t
ngx_http_optout_mget_add(ngx_http_optout_mget_t *b, u_char *key,
    size_t len, ngx_uint_t *index)
{
    ngx_uint_t  h, i;

    h = ngx_http_optout_mget_hash((char *) key, len);

    /* linear probing; the table is at least twice the batch size */

    for ( ;; ) {
        i = b->hash[h];

        if (i == 0) {
            break;
        }

        i--;

        if (b->lens[i] == len && ngx_memcmp(b->keys[i], key, len) == 0) {
            if (index) {
                *index = i;
            }

            return NGX_OK;
        }

        h = (h + 1) & (NGX_HTTP_OPTOUT_MGET_HASH - 1);
    }

    if (b->nkeys == NGX_HTTP_OPTOUT_MGET_KEYS
        || len > OPTOUT_STORE_KEY_MAX)
    {
        return NGX_ERROR;
    }

    i = b->nkeys++;

    ngx_memcpy(b->data[i], key, len);
    b->data[i][len] = '\0';
    b->keys[i] = b->data[i];
    b->lens[i] = len;
    b->found[i] = 0;
    b->server[i] = memcached_generate_hash(b->store->master, b->keys[i],
                                           len);
    b->hash[h] = (uint16_t) (i + 1);

    if (index) {
        *index = i;
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_http_optout_mget_hash(const char *key, size_t len)
{
    uint32_t  h;

    /* FNV-1a; keys end in hex digits of a keyed hash */

    h = 2166136261u;

    while (len--) {
        h ^= (u_char) *key++;
        h *= 16777619u;
    }

    return h & (NGX_HTTP_OPTOUT_MGET_HASH - 1);
}


static void
ngx_http_optout_mget_post(ngx_http_optout_mget_t *b)
{
    ngx_http_optout_store_t  *store;

    store = b->store;

    if (store->filling == b) {
        store->filling = NULL;
    }

    store->inflight++;

    if (ngx_thread_task_post(store->thread_pool, &b->task) != NGX_OK) {
        /* fails every lookup of the batch from the posted events */
        b->rc = MEMCACHED_FAILURE;
        ngx_post_event(&b->task.event, &ngx_posted_events);
    }
}


static void
ngx_http_optout_mget_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_mget_t *b = data;

    size_t                klen;
    ngx_uint_t            h, i;
    const char           *key;
    memcached_st         *mc;
    memcached_return_t    rc;
    memcached_result_st   result, *res;

    mc = memcached_pool_fetch(b->store->pool, &b->store->wait, &rc);
    if (mc == NULL) {
        b->rc = (rc == MEMCACHED_SUCCESS) ? MEMCACHED_FAILURE : rc;
        return;
    }

    rc = memcached_mget(mc, b->keys, b->lens, b->nkeys);

    /*
     * a server that could not be asked answers nothing, not even its
     * marker, so its keys come out "not seeded" rather than "no rule"
     */

    if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_SOME_ERRORS) {
        b->rc = rc;
        goto done;
    }

    if (memcached_result_create(mc, &result) == NULL) {
        b->rc = MEMCACHED_MEMORY_ALLOCATION_FAILURE;
        goto done;
    }

    for ( ;; ) {
        res = memcached_fetch_result(mc, &result, &rc);
        if (res == NULL) {
            break;
        }

        key = memcached_result_key_value(res);
        klen = memcached_result_key_length(res);

        h = ngx_http_optout_mget_hash(key, klen);

        while ((i = b->hash[h]) != 0) {
            i--;

            if (b->lens[i] == klen && ngx_memcmp(b->keys[i], key, klen) == 0) {
                b->found[i] = 1;

                if (optout_rule_parse(memcached_result_value(res),
                                      memcached_result_length(res),
                                      &b->rules[i])
                    != OPTOUT_OK)
                {
                    /* a rule we cannot read still blocks */
                    ngx_memzero(&b->rules[i], sizeof(optout_rule_t));
                }

                break;
            }

            h = (h + 1) & (NGX_HTTP_OPTOUT_MGET_HASH - 1);
        }
    }

    /*
     * an error in the middle may have cut a server's answer after its
     * marker: nothing of this batch can be trusted then
     */

    if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS
        && rc != MEMCACHED_NOTFOUND)
    {
        b->rc = rc;
    }

    memcached_result_free(&result);

done:

    (void) memcached_pool_release(b->store->pool, mc);
}


static void
ngx_http_optout_mget_done(ngx_event_t *ev)
{
    ngx_http_optout_mget_t *b = ev->data;

    ngx_uint_t                 i, k, marker;
    ngx_queue_t               *q;
    ngx_http_optout_store_t   *store;
    ngx_http_optout_lookup_t  *lk;

    store = b->store;
    store->inflight--;

    if (b->rc != MEMCACHED_SUCCESS) {
        ngx_log_error(NGX_LOG_ERR, store->log, 0,
                      "optout: memcached lookup failed: %s",
                      memcached_strerror(NULL, b->rc));
    }

    while (!ngx_queue_empty(&b->waiters)) {
        q = ngx_queue_head(&b->waiters);
        ngx_queue_remove(q);

        lk = ngx_queue_data(q, ngx_http_optout_lookup_t, queue);
        lk->batch = NULL;
        lk->rc = (b->rc == MEMCACHED_SUCCESS) ? NGX_OK : NGX_ERROR;

        for (k = 0; lk->rc == NGX_OK && k < lk->nkeys; k++) {
            i = lk->index[k];
            marker = b->server[i];

            if (marker >= store->markers.n || !b->found[marker]) {
                lk->rc = NGX_DECLINED;
                break;
            }

            lk->found[k] = b->found[i];

            if (b->found[i]) {
                lk->rule[k] = b->rules[i];
            }
        }

        lk->handler(lk);
    }

    if (store->nfree < NGX_HTTP_OPTOUT_FREE_BATCHES) {
        ngx_queue_insert_tail(&store->free_batches, &b->queue);
        store->nfree++;

    } else {
        ngx_free(b);
    }

    if (store->filling && store->inflight < NGX_HTTP_OPTOUT_INFLIGHT) {
        ngx_http_optout_mget_post(store->filling);
    }
}


ngx_int_t
ngx_http_optout_store_add(ngx_http_request_t *r,
    ngx_http_optout_store_t *store, u_char *key, size_t key_len,
    u_char *value, size_t value_len, ngx_http_optout_waiter_t *w)
{
    ngx_thread_task_t          *task;
    ngx_http_optout_add_ctx_t  *ctx;

    if (key_len > OPTOUT_STORE_KEY_MAX || value_len > OPTOUT_VALUE_MAX) {
        return NGX_ERROR;
    }

    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_http_optout_add_ctx_t));
    if (task == NULL) {
        return NGX_ERROR;
    }

    ctx = task->ctx;

    ctx->store = store;
    ctx->waiter = w;
    ctx->key_len = key_len;
    ctx->value_len = value_len;
    ngx_memcpy(ctx->key, key, key_len);
    ngx_memcpy(ctx->value, value, value_len);

    task->handler = ngx_http_optout_store_add_thread;
    task->event.handler = ngx_http_optout_store_add_done;
    task->event.data = ctx;

    if (ngx_thread_task_post(store->thread_pool, task) != NGX_OK) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * In a thread: one journal record applied to memcached, "add" for an
 * opt-out (the campaign of the first opt-out is kept) and "delete" for an
 * opt-in.  Returns NULL, or why it failed.
 */

const char *
ngx_http_optout_store_apply(ngx_http_optout_store_t *store, ngx_uint_t optin,
    u_char *key, size_t key_len, u_char *value, size_t value_len)
{
    memcached_st        *mc;
    memcached_return_t   rc;

    mc = memcached_pool_fetch(store->pool, &store->wait, &rc);
    if (mc == NULL) {
        return memcached_strerror(NULL, rc == MEMCACHED_SUCCESS
                                        ? MEMCACHED_FAILURE : rc);
    }

    if (optin) {
        rc = memcached_delete(mc, (char *) key, key_len, 0);

    } else {
        rc = memcached_add(mc, (char *) key, key_len, (char *) value,
                           value_len, 0, 0);
    }

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


static void
ngx_http_optout_store_add_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_add_ctx_t *ctx = data;

    ctx->error = ngx_http_optout_store_apply(ctx->store, 0, ctx->key,
                                             ctx->key_len, ctx->value,
                                             ctx->value_len);
}


static void
ngx_http_optout_store_add_done(ngx_event_t *ev)
{
    ngx_http_optout_add_ctx_t *ctx = ev->data;

    ngx_http_optout_waiter_t  *w;

    w = ctx->waiter;

    if (ctx->error) {
        ngx_log_error(NGX_LOG_ERR, ctx->store->log, 0,
                      "optout: memcached add failed: %s; the journal "
                      "applier will write it", ctx->error);
        w->rc = NGX_DECLINED;

    } else {
        w->rc = NGX_OK;
    }

    w->handler(w);
}


/*
 * For batch checks, in a thread only: one multi-get of keys[] and every
 * server's marker, with a connection of the pool.  Returns NGX_OK,
 * NGX_ERROR when memcached failed, or NGX_DECLINED when a server that
 * holds one of the keys lost its marker.
 */

ngx_int_t
ngx_http_optout_store_mget(ngx_http_optout_store_t *store, const char **keys,
    size_t *lens, ngx_uint_t n, u_char *found, optout_rule_t *rules)
{
    size_t                klen;
    uint32_t              h, mask, *table, *next, i, j, total, m;
    ngx_int_t             rc;
    const char          **all, *key;
    memcached_st         *mc;
    memcached_return_t    mrc;
    memcached_result_st   result, *res;
    size_t               *all_lens;
    u_char               *mfound;

    m = store->markers.n;
    total = n + m;

    for (mask = 1; mask < total * 2; mask <<= 1) { /* void */ }

    all = malloc(total * sizeof(char *));
    all_lens = malloc(total * sizeof(size_t));
    table = calloc(mask, sizeof(uint32_t));
    next = malloc(total * sizeof(uint32_t));
    mfound = calloc(m ? m : 1, 1);

    mc = NULL;
    rc = NGX_ERROR;

    if (all == NULL || all_lens == NULL || table == NULL || next == NULL
        || mfound == NULL)
    {
        goto done;
    }

    mask--;

    for (i = 0; i < total; i++) {
        if (i < m) {
            all[i] = store->markers.key[i];
            all_lens[i] = store->markers.len[i];

        } else {
            all[i] = keys[i - m];
            all_lens[i] = lens[i - m];
            found[i - m] = 0;
        }

        /* index + 1 of the first key with this hash chain, equal keys */

        h = ngx_http_optout_mget_hash(all[i], all_lens[i]) & mask;
        next[i] = 0;

        while (table[h]) {
            j = table[h] - 1;

            if (all_lens[j] == all_lens[i]
                && ngx_memcmp(all[j], all[i], all_lens[i]) == 0)
            {
                while (next[j]) {
                    j = next[j] - 1;
                }

                next[j] = i + 1;
                goto added;
            }

            h = (h + 1) & mask;
        }

        table[h] = i + 1;

    added:

        continue;
    }

    mc = memcached_pool_fetch(store->pool, &store->wait, &mrc);
    if (mc == NULL) {
        goto done;
    }

    mrc = memcached_mget(mc, all, all_lens, total);
    if (mrc != MEMCACHED_SUCCESS && mrc != MEMCACHED_SOME_ERRORS) {
        goto done;
    }

    if (memcached_result_create(mc, &result) == NULL) {
        goto done;
    }

    for ( ;; ) {
        res = memcached_fetch_result(mc, &result, &mrc);
        if (res == NULL) {
            break;
        }

        key = memcached_result_key_value(res);
        klen = memcached_result_key_length(res);

        for (h = ngx_http_optout_mget_hash(key, klen) & mask;
             table[h];
             h = (h + 1) & mask)
        {
            j = table[h] - 1;

            if (all_lens[j] != klen || ngx_memcmp(all[j], key, klen) != 0) {
                continue;
            }

            for ( ;; ) {
                if (j < m) {
                    mfound[j] = 1;

                } else {
                    found[j - m] = 1;

                    if (optout_rule_parse(memcached_result_value(res),
                                          memcached_result_length(res),
                                          &rules[j - m])
                        != OPTOUT_OK)
                    {
                        ngx_memzero(&rules[j - m], sizeof(optout_rule_t));
                    }
                }

                if (next[j] == 0) {
                    break;
                }

                j = next[j] - 1;
            }

            break;
        }
    }

    memcached_result_free(&result);

    if (mrc != MEMCACHED_END && mrc != MEMCACHED_SUCCESS
        && mrc != MEMCACHED_NOTFOUND)
    {
        goto done;
    }

    rc = NGX_OK;

    for (i = 0; i < n; i++) {
        h = memcached_generate_hash(mc, keys[i], lens[i]);

        if (h >= m || !mfound[h]) {
            rc = NGX_DECLINED;
            break;
        }
    }

done:

    if (mc) {
        (void) memcached_pool_release(store->pool, mc);
    }

    free(all);
    free(all_lens);
    free(table);
    free(next);
    free(mfound);

    return rc;
}
