
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


/*
 * One multi-get with markers: distinct keys, then the marker of each
 * server that holds one of them.  libmemcached sends each server its keys
 * in array order and memcached answers them in that order, printing
 * nothing for a miss, so a server's marker is the last value it returns:
 * once it came back, that server's answer for every key before it was
 * complete.  A key is answered only if its server's marker came back in
 * this very multi-get; libmemcached's end code alone proves nothing.
 */

typedef struct {
    ngx_uint_t                   nkeys;     /* without the markers */
    ngx_uint_t                   total;     /* with the markers */
    ngx_uint_t                   max;
    ngx_uint_t                   mask;      /* of hash[] */
    const char                 **keys;
    size_t                      *lens;
    uint32_t                    *server;
    u_char                      *found;
    optout_rule_t               *rules;
    uint32_t                    *hash;      /* key index + 1; 0: free */
    char                        *data;      /* key copies, or NULL */
    memcached_return_t           rc;        /* the first failure seen */
    u_char                       answered[OPTOUT_MARKERS_MAX];
} ngx_http_optout_mget_t;


/*
 * Lookups go to memcached together, in one multi-get: the round trip is
 * the cost.  The lookups of one pass of the event loop share a multi-get,
 * posted at the end of that pass (a posted event), so a lookup waits for
 * no round trip while fewer than optout_check_concurrency multi-gets are
 * in flight in its worker; beyond that, the lookups that arrive wait
 * together for the first one to end.  The thread owns the multi-get; the
 * waiters stay on the event loop, so a request may leave (timeout, close)
 * at any time.
 */

typedef struct {
    ngx_thread_task_t            task;
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
    memcached_st                *master;
    memcached_pool_st           *pool;
    ngx_thread_pool_t           *thread_pool;
    ngx_log_t                   *log;
    struct timespec              wait;

    optout_markers_t             markers;
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
} ngx_http_optout_write_ctx_t;


static ngx_http_optout_shared_t *ngx_http_optout_shared_get(
    ngx_http_optout_store_t *store);
static void ngx_http_optout_shared_flush(ngx_event_t *ev);
static void ngx_http_optout_shared_post(ngx_http_optout_shared_t *sh);
static void ngx_http_optout_shared_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_shared_done(ngx_event_t *ev);
static void ngx_http_optout_mget_init(ngx_http_optout_mget_t *mg);
static ngx_int_t ngx_http_optout_mget_add(ngx_http_optout_mget_t *mg,
    const char *key, size_t len, ngx_uint_t *index);
static ngx_uint_t ngx_http_optout_mget_find(ngx_http_optout_mget_t *mg,
    const char *key, size_t len);
static void ngx_http_optout_mget(ngx_http_optout_store_t *store,
    ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mget_on(ngx_http_optout_store_t *store,
    memcached_st *mc, ngx_http_optout_mget_t *mg);
static ngx_int_t ngx_http_optout_mget_keys(ngx_http_optout_store_t *store,
    memcached_st *mc, const char **keys, size_t *lens, ngx_uint_t n,
    u_char *found, optout_rule_t *rules);
static void ngx_http_optout_store_write_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_store_write_many(ngx_http_optout_write_ctx_t *ctx,
    ngx_uint_t m);
static memcached_return_t ngx_http_optout_store_write_pass(memcached_st *mc,
    ngx_http_optout_write_ctx_t *ctx, const char **keys, size_t *lens,
    ngx_uint_t m);
static void ngx_http_optout_store_write_done(ngx_event_t *ev);
static void ngx_http_optout_mget_fetch(memcached_st *mc,
    ngx_http_optout_mget_t *mg);
static ngx_int_t ngx_http_optout_mget_answer(ngx_http_optout_mget_t *mg,
    ngx_uint_t i);


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
    memcached_free(mc);

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
    ngx_uint_t                 i;
    ngx_http_optout_shared_t  *sh;

    sh = store->filling;

    if (sh && sh->mget.total + lk->nkeys + store->markers.n
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

    return NGX_OK;
}


void
ngx_http_optout_store_lookup_cancel(ngx_http_optout_lookup_t *lk)
{
    if (lk->mget) {
        ngx_queue_remove(&lk->queue);
        lk->mget = NULL;
    }
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

        ngx_memzero(&sh->task, sizeof(ngx_thread_task_t));

        sh->store = store;
        sh->task.ctx = sh;
        sh->task.handler = ngx_http_optout_shared_thread;
        sh->task.event.handler = ngx_http_optout_shared_done;
        sh->task.event.data = sh;
        sh->task.event.log = store->log;

        mg = &sh->mget;

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

    if (ngx_thread_task_post(store->thread_pool, &sh->task) != NGX_OK) {
        /* fails every lookup from the posted events */
        sh->mget.rc = MEMCACHED_FAILURE;
        ngx_post_event(&sh->task.event, &ngx_posted_events);
    }
}


static void
ngx_http_optout_shared_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_shared_t *sh = data;

    ngx_http_optout_mget(sh->store, &sh->mget);
}


static void
ngx_http_optout_shared_done(ngx_event_t *ev)
{
    ngx_http_optout_shared_t *sh = ev->data;

    ngx_int_t                  rc;
    ngx_uint_t                 i, k;
    ngx_queue_t               *q;
    ngx_http_optout_mget_t    *mg;
    ngx_http_optout_store_t   *store;
    ngx_http_optout_lookup_t  *lk;

    store = sh->store;
    store->inflight--;

    mg = &sh->mget;

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


static void
ngx_http_optout_mget_init(ngx_http_optout_mget_t *mg)
{
    ngx_memzero(mg->hash, (mg->mask + 1) * sizeof(uint32_t));
    ngx_memzero(mg->answered, sizeof(mg->answered));

    mg->nkeys = 0;
    mg->total = 0;
    mg->rc = MEMCACHED_SUCCESS;
}


/* adds a key once; *index is where its answer will be */

static ngx_int_t
ngx_http_optout_mget_add(ngx_http_optout_mget_t *mg, const char *key,
    size_t len, ngx_uint_t *index)
{
    uint32_t    h;
    ngx_uint_t  i;
    char       *p;

    h = ngx_http_optout_mget_find(mg, key, len);

    if (mg->hash[h]) {
        *index = mg->hash[h] - 1;
        return NGX_OK;
    }

    if (mg->total == mg->max || len > OPTOUT_STORE_KEY_MAX) {
        return NGX_ERROR;
    }

    i = mg->total++;

    if (mg->data) {
        p = mg->data + i * (OPTOUT_STORE_KEY_MAX + 1);
        ngx_memcpy(p, key, len);
        p[len] = '\0';
        key = p;
    }

    mg->keys[i] = key;
    mg->lens[i] = len;
    mg->found[i] = 0;
    mg->hash[h] = (uint32_t) (i + 1);

    *index = i;

    return NGX_OK;
}


/* the slot of a key in hash[]: its own, or the free one it would take */

static ngx_uint_t
ngx_http_optout_mget_find(ngx_http_optout_mget_t *mg, const char *key,
    size_t len)
{
    uint32_t     h;
    ngx_uint_t   i;
    const char  *p;

    /* FNV-1a; keys end in hex digits of a keyed hash */

    h = 2166136261u;

    for (p = key; p < key + len; p++) {
        h ^= (u_char) *p;
        h *= 16777619u;
    }

    /* linear probing; the table is at least twice the number of keys */

    for (h &= mg->mask; mg->hash[h]; h = (h + 1) & mg->mask) {
        i = mg->hash[h] - 1;

        if (mg->lens[i] == len && ngx_memcmp(mg->keys[i], key, len) == 0) {
            break;
        }
    }

    return h;
}


/*
 * In a thread: asks for the keys and, after them, the marker of each
 * server that holds one; sets found[], rules[], answered[] and rc.
 */

static void
ngx_http_optout_mget(ngx_http_optout_store_t *store,
    ngx_http_optout_mget_t *mg)
{
    memcached_st        *mc;
    memcached_return_t   rc;

    mc = memcached_pool_fetch(store->pool, &store->wait, &rc);
    if (mc == NULL) {
        mg->nkeys = mg->total;
        mg->rc = (rc == MEMCACHED_SUCCESS) ? MEMCACHED_FAILURE : rc;
        return;
    }

    ngx_http_optout_mget_on(store, mc, mg);

    (void) memcached_pool_release(store->pool, mc);
}


static void
ngx_http_optout_mget_on(ngx_http_optout_store_t *store, memcached_st *mc,
    ngx_http_optout_mget_t *mg)
{
    uint32_t             s;
    ngx_uint_t           i, incomplete, marker[OPTOUT_MARKERS_MAX];

    mg->nkeys = mg->total;

    for (i = 0; i < store->markers.n; i++) {
        marker[i] = NGX_CONF_UNSET_UINT;
    }

    for (i = 0; i < mg->nkeys; i++) {
        s = memcached_generate_hash(mc, mg->keys[i], mg->lens[i]);
        mg->server[i] = s;

        if (s < store->markers.n && marker[s] == NGX_CONF_UNSET_UINT) {
            /*
             * the callers keep room for the markers; a server without its
             * marker in the request leaves its keys unanswered anyway
             */
            (void) ngx_http_optout_mget_add(mg, store->markers.key[s],
                                            store->markers.len[s],
                                            &marker[s]);
        }
    }

    ngx_http_optout_mget_fetch(mc, mg);

    incomplete = 0;

    for (s = 0; s < store->markers.n; s++) {
        if (marker[s] == NGX_CONF_UNSET_UINT) {
            continue;
        }

        mg->answered[s] = mg->found[marker[s]];

        if (!mg->answered[s]) {
            incomplete = 1;
        }

        /* a reply still pending: libmemcached gave up polling for it */

        if (memcached_server_response_count(
                memcached_server_instance_by_position(mc, s))
            && mg->rc == MEMCACHED_SUCCESS)
        {
            mg->rc = MEMCACHED_TIMEOUT;
        }

        ngx_http_optout_metric_mget(s, mg->answered[s], mg->rc);
    }

    /*
     * no reply of this multi-get may be left on a connection for its next
     * user to take as its own
     */

    if (incomplete || mg->rc != MEMCACHED_SUCCESS) {
        memcached_quit(mc);
    }
}


static void
ngx_http_optout_mget_fetch(memcached_st *mc, ngx_http_optout_mget_t *mg)
{
    ngx_uint_t            h, i;
    memcached_return_t    rc;
    memcached_result_st   result, *res;

    rc = memcached_mget(mc, mg->keys, mg->lens, mg->total);

    /*
     * SOME_ERRORS: a server that failed while its keys were sent may have
     * been asked again on a new connection for the later keys only, its
     * marker among them; nothing of this multi-get can be trusted then
     */

    if (rc != MEMCACHED_SUCCESS) {
        mg->rc = rc;
        return;
    }

    if (memcached_result_create(mc, &result) == NULL) {
        mg->rc = MEMCACHED_MEMORY_ALLOCATION_FAILURE;
        return;
    }

    for ( ;; ) {
        res = memcached_fetch_result(mc, &result, &rc);
        if (res == NULL) {
            break;
        }

        h = ngx_http_optout_mget_find(mg, memcached_result_key_value(res),
                                      memcached_result_key_length(res));
        if (mg->hash[h] == 0) {
            continue;
        }

        i = mg->hash[h] - 1;
        mg->found[i] = 1;

        if (i < mg->nkeys
            && optout_rule_parse(memcached_result_value(res),
                                 memcached_result_length(res),
                                 &mg->rules[i])
               != OPTOUT_OK)
        {
            /* a rule we cannot read still blocks */
            ngx_memzero(&mg->rules[i], sizeof(optout_rule_t));
        }
    }

    memcached_result_free(&result);

    if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS
        && rc != MEMCACHED_NOTFOUND)
    {
        mg->rc = rc;
        return;
    }

    /* a failure that a later result made memcached_fetch_result() forget */

    rc = memcached_last_error(mc);

    if (memcached_failed(rc)) {
        mg->rc = rc;
    }
}


/*
 * NGX_OK: the key's server answered completely; NGX_ERROR: it did not,
 * after a failure; NGX_DECLINED: it ended cleanly without its marker.
 */

static ngx_int_t
ngx_http_optout_mget_answer(ngx_http_optout_mget_t *mg, ngx_uint_t i)
{
    uint32_t  s;

    s = mg->server[i];

    if (i < mg->nkeys && s < OPTOUT_MARKERS_MAX && mg->answered[s]) {
        return NGX_OK;
    }

    return (mg->rc == MEMCACHED_SUCCESS) ? NGX_DECLINED : NGX_ERROR;
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
 * For batch checks, in a thread only: one multi-get with markers of
 * keys[] (repeats allowed).  Returns NGX_OK, NGX_ERROR when a server that
 * holds one of the keys failed, or NGX_DECLINED when such a server ended
 * without its marker (not seeded).
 */

ngx_int_t
ngx_http_optout_store_mget(ngx_http_optout_store_t *store, const char **keys,
    size_t *lens, ngx_uint_t n, u_char *found, optout_rule_t *rules)
{
    return ngx_http_optout_mget_keys(store, NULL, keys, lens, n, found,
                                     rules);
}


/* mc NULL: a connection of the pool */

static ngx_int_t
ngx_http_optout_mget_keys(ngx_http_optout_store_t *store, memcached_st *mc,
    const char **keys, size_t *lens, ngx_uint_t n, u_char *found,
    optout_rule_t *rules)
{
    size_t                  size;
    ngx_int_t               rc;
    ngx_uint_t              i, j, *index;
    ngx_http_optout_mget_t  mg;

    ngx_memzero(&mg, sizeof(ngx_http_optout_mget_t));

    mg.max = n + store->markers.n;

    for (size = 1; size < mg.max * 2; size <<= 1) { /* void */ }

    mg.mask = size - 1;
    mg.keys = malloc(mg.max * sizeof(char *));
    mg.lens = malloc(mg.max * sizeof(size_t));
    mg.server = malloc(mg.max * sizeof(uint32_t));
    mg.found = malloc(mg.max);
    mg.rules = malloc(mg.max * sizeof(optout_rule_t));
    mg.hash = malloc(size * sizeof(uint32_t));
    index = malloc(n * sizeof(ngx_uint_t));

    rc = NGX_ERROR;

    if (mg.keys == NULL || mg.lens == NULL || mg.server == NULL
        || mg.found == NULL || mg.rules == NULL || mg.hash == NULL
        || index == NULL)
    {
        goto done;
    }

    /* mg.data is NULL: the keys stay the caller's */

    ngx_http_optout_mget_init(&mg);

    for (i = 0; i < n; i++) {
        if (ngx_http_optout_mget_add(&mg, keys[i], lens[i], &index[i])
            != NGX_OK)
        {
            goto done;
        }
    }

    if (mc) {
        ngx_http_optout_mget_on(store, mc, &mg);

    } else {
        ngx_http_optout_mget(store, &mg);
    }

    for (i = 0; i < n; i++) {
        j = index[i];

        rc = ngx_http_optout_mget_answer(&mg, j);
        if (rc != NGX_OK) {
            goto done;
        }

        found[i] = mg.found[j];

        if (mg.found[j]) {
            rules[i] = mg.rules[j];
        }
    }

    rc = NGX_OK;

done:

    free(mg.keys);
    free(mg.lens);
    free(mg.server);
    free(mg.found);
    free(mg.rules);
    free(mg.hash);
    free(index);

    return rc;
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
 * Many opt-outs: written without replies, in one buffered pass, then
 * the one multi-get with markers on the same connections, which memcached
 * answers after the writes: a key found is stored.  The behaviors are set
 * back only after it (setting them closes the connections).
 */

static void
ngx_http_optout_store_write_many(ngx_http_optout_write_ctx_t *ctx,
    ngx_uint_t m)
{
    size_t                    *lens;
    u_char                    *found;
    ngx_uint_t                 i, j;
    const char               **keys;
    memcached_st              *mc;
    optout_rule_t             *rules;
    memcached_return_t         rc;
    ngx_http_optout_change_t  *ch;

    keys = malloc(m * sizeof(char *));
    lens = malloc(m * sizeof(size_t));
    found = malloc(m);
    rules = malloc(m * sizeof(optout_rule_t));

    mc = NULL;
    ctx->error = "out of memory";

    if (keys == NULL || lens == NULL || found == NULL || rules == NULL) {
        goto done;
    }

    mc = memcached_pool_fetch(ctx->store->pool, &ctx->store->wait, &rc);
    if (mc == NULL) {
        ctx->error = memcached_strerror(NULL, rc == MEMCACHED_SUCCESS
                                              ? MEMCACHED_FAILURE : rc);
        goto done;
    }

    rc = memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NOREPLY, 1);

    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_BUFFER_REQUESTS,
                                    1);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = ngx_http_optout_store_write_pass(mc, ctx, keys, lens, m);
    }

    if (rc == MEMCACHED_SUCCESS) {
        rc = memcached_flush_buffers(mc);
    }

    if (rc != MEMCACHED_SUCCESS) {
        ctx->error = memcached_strerror(NULL, rc);
        goto done;
    }

    if (ngx_http_optout_mget_keys(ctx->store, mc, keys, lens, m, found,
                                  rules)
        != NGX_OK)
    {
        ctx->error = "the multi-get after the adds was not answered "
                     "completely";
        goto done;
    }

    ctx->error = NULL;

    for (i = 0, j = 0; i < ctx->n; i++) {
        ch = &ctx->changes[i];

        if (!ch->optin) {
            ch->stored = found[j++];
        }
    }

done:

    if (mc) {
        (void) memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NOREPLY, 0);
        (void) memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_BUFFER_REQUESTS,
                                      0);
        (void) memcached_pool_release(ctx->store->pool, mc);
    }

    free(keys);
    free(lens);
    free(found);
    free(rules);
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

    ngx_http_optout_waiter_t  *w;

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
