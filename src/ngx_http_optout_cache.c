
/*
 * ngx_http_optout_module: "optout_cache", answers of store lookups kept in
 * a shared memory zone for all workers.
 *
 * An entry is keyed by the store key (the memcached key) and holds either
 * a block rule or "known absent", with an absolute expiry time in
 * ngx_current_msec units (a monotonic clock on Linux, the same in all
 * workers and across reloads).  Entries are kept in an rbtree keyed by the
 * crc32 of the key and in an LRU queue, as in ngx_http_limit_req_module.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_CACHE_BLOCKED  600000      /* 10m */
#define NGX_HTTP_OPTOUT_CACHE_SCAN     32
#define NGX_HTTP_OPTOUT_CACHE_EVICT    3
#define NGX_HTTP_OPTOUT_CACHE_LOG      1000


typedef struct {
    ngx_rbtree_node_t            node;      /* node.key: crc32 of the key */
    ngx_queue_t                  queue;
    ngx_msec_t                   expire;
    optout_rule_t                rule;      /* valid when blocked */
    u_short                      len;
    unsigned                     blocked:1;
    u_char                       data[1];
} ngx_http_optout_cache_node_t;


typedef struct {
    ngx_rbtree_t                 rbtree;
    ngx_rbtree_node_t            sentinel;
    ngx_queue_t                  queue;     /* most recently used first */
    ngx_msec_t                   nomem_log; /* next "could not allocate" */
    ngx_uint_t                   count;
} ngx_http_optout_cache_sh_t;


struct ngx_http_optout_cache_s {
    ngx_shm_zone_t              *shm_zone;
    ngx_http_optout_cache_sh_t  *sh;
    ngx_slab_pool_t             *shpool;
    ngx_msec_t                   blocked;   /* ttl of block rules */
    ngx_msec_t                   allowed;   /* ttl of absent, 0: off */
};


static ngx_int_t ngx_http_optout_cache_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_http_optout_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static ngx_http_optout_cache_node_t *ngx_http_optout_cache_lookup(
    ngx_http_optout_cache_t *cache, uint32_t hash, u_char *key, size_t len);
static ngx_http_optout_cache_node_t *ngx_http_optout_cache_alloc(
    ngx_http_optout_cache_t *cache, size_t len);
static void ngx_http_optout_cache_expire(ngx_http_optout_cache_t *cache,
    ngx_uint_t force);
static void ngx_http_optout_cache_delete(ngx_http_optout_cache_t *cache,
    ngx_http_optout_cache_node_t *cn);


char *
ngx_http_optout_cache_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    u_char                   *p;
    ssize_t                   size;
    ngx_int_t                 ttl;
    ngx_str_t                *value, name, s;
    ngx_uint_t                i;
    ngx_shm_zone_t           *shm_zone;
    ngx_http_optout_cache_t  *cache;

    if (omcf->cache) {
        return "is duplicate";
    }

    cache = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_cache_t));
    if (cache == NULL) {
        return NGX_CONF_ERROR;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     cache->shm_zone = NULL;
     *     cache->sh = NULL;
     *     cache->shpool = NULL;
     *     cache->allowed = 0;
     */

    cache->blocked = NGX_HTTP_OPTOUT_CACHE_BLOCKED;

    value = cf->args->elts;

    size = 0;
    name.len = 0;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "zone=", 5) == 0) {

            name.data = value[i].data + 5;

            p = (u_char *) ngx_strchr(name.data, ':');

            if (p == NULL || p == name.data) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone \"%V\" in \"%V\", "
                                   "it must be \"zone=name:size\"",
                                   &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }

            name.len = p - name.data;

            s.data = p + 1;
            s.len = value[i].data + value[i].len - s.data;

            size = (s.len == 0) ? NGX_ERROR : ngx_parse_size(&s);

            if (size == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid zone size \"%V\" in \"%V\"",
                                   &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }

            if (size < (ssize_t) (8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "zone \"%V\" in \"%V\" is too small, "
                                   "it must be at least %uz bytes",
                                   &value[i], &cmd->name, 8 * ngx_pagesize);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "blocked=", 8) == 0
            || ngx_strncmp(value[i].data, "allowed=", 8) == 0)
        {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            ttl = (s.len == 0) ? NGX_ERROR : ngx_parse_time(&s, 0);

            if (ttl == NGX_ERROR) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid time \"%V\" in \"%V\"",
                                   &value[i], &cmd->name);
                return NGX_CONF_ERROR;
            }

            if (value[i].data[0] == 'b') {
                cache->blocked = (ngx_msec_t) ttl;

            } else {
                cache->allowed = (ngx_msec_t) ttl;
            }

            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           &value[i], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must have \"zone\" parameter",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_optout_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" zone \"%V\" is already used",
                           &cmd->name, &name);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_optout_cache_init_zone;
    shm_zone->data = cache;

    cache->shm_zone = shm_zone;

    omcf->cache = cache;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_optout_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_optout_cache_t  *ocache = data;

    size_t                    len;
    ngx_http_optout_cache_t  *cache;

    cache = shm_zone->data;

    if (ocache) {

        /*
         * a reload with the same zone: keep the entries, the ttls
         * of this cycle are in cache and apply from now on
         */

        cache->sh = ocache->sh;
        cache->shpool = ocache->shpool;

        return NGX_OK;
    }

    cache->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        cache->sh = cache->shpool->data;

        return NGX_OK;
    }

    cache->sh = ngx_slab_alloc(cache->shpool,
                               sizeof(ngx_http_optout_cache_sh_t));
    if (cache->sh == NULL) {
        return NGX_ERROR;
    }

    cache->shpool->data = cache->sh;

    ngx_rbtree_init(&cache->sh->rbtree, &cache->sh->sentinel,
                    ngx_http_optout_cache_rbtree_insert_value);

    ngx_queue_init(&cache->sh->queue);

    cache->sh->nomem_log = 0;
    cache->sh->count = 0;

    len = sizeof(" in optout_cache zone \"\"") + shm_zone->shm.name.len;

    cache->shpool->log_ctx = ngx_slab_alloc(cache->shpool, len);
    if (cache->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(cache->shpool->log_ctx, " in optout_cache zone \"%V\"%Z",
                &shm_zone->shm.name);

    cache->shpool->log_nomem = 0;

    return NGX_OK;
}


ngx_int_t
ngx_http_optout_cache_get(ngx_http_optout_cache_t *cache, u_char *key,
    size_t len, optout_rule_t *rule)
{
    uint32_t                       hash;
    ngx_int_t                      rc;
    ngx_msec_t                     now, ttl;
    ngx_http_optout_cache_node_t  *cn;

    if (len == 0 || len > OPTOUT_STORE_KEY_MAX) {
        return NGX_AGAIN;
    }

    hash = ngx_crc32_short(key, len);

    ngx_shmtx_lock(&cache->shpool->mutex);

    now = ngx_current_msec;

    cn = ngx_http_optout_cache_lookup(cache, hash, key, len);

    if (cn == NULL) {
        rc = NGX_AGAIN;
        goto done;
    }

    ttl = cn->blocked ? cache->blocked : cache->allowed;

    if (ttl == 0 || (ngx_msec_int_t) (cn->expire - now) <= 0) {
        ngx_http_optout_cache_delete(cache, cn);
        rc = NGX_AGAIN;
        goto done;
    }

    /* a ttl shortened by a reload applies to the entries already kept */

    if ((ngx_msec_int_t) (cn->expire - now) > (ngx_msec_int_t) ttl) {
        cn->expire = now + ttl;
    }

    ngx_queue_remove(&cn->queue);
    ngx_queue_insert_head(&cache->sh->queue, &cn->queue);

    if (cn->blocked) {
        *rule = cn->rule;
        rc = NGX_OK;

    } else {
        rc = NGX_DECLINED;
    }

done:

    ngx_shmtx_unlock(&cache->shpool->mutex);

    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_HIT + (rc == NGX_AGAIN));

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "optout cache get \"%*s\": %i", len, key, rc);

    return rc;
}


void
ngx_http_optout_cache_put(ngx_http_optout_cache_t *cache, u_char *key,
    size_t len, optout_rule_t *rule)
{
    uint32_t                       hash;
    ngx_msec_t                     now, ttl;
    ngx_uint_t                     nomem;
    ngx_http_optout_cache_node_t  *cn;

    if (len == 0 || len > OPTOUT_STORE_KEY_MAX) {
        return;
    }

    ttl = rule ? cache->blocked : cache->allowed;

    if (rule == NULL && ttl == 0) {
        return;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "optout cache put \"%*s\": %s",
                   len, key, rule ? "blocked" : "absent");

    hash = ngx_crc32_short(key, len);

    nomem = 0;

    ngx_shmtx_lock(&cache->shpool->mutex);

    now = ngx_current_msec;

    cn = ngx_http_optout_cache_lookup(cache, hash, key, len);

    if (cn) {

        if (rule == NULL) {

            /* an absent answer never replaces a block rule still valid */

            if (cn->blocked && (ngx_msec_int_t) (cn->expire - now) > 0) {
                goto done;
            }

            cn->blocked = 0;

        } else if (ttl == 0) {

            /* block rules are not kept: drop an "absent" entry */

            ngx_http_optout_cache_delete(cache, cn);
            goto done;

        } else if (!cn->blocked || (ngx_msec_int_t) (cn->expire - now) <= 0) {

            cn->rule = *rule;
            cn->blocked = 1;
        }

        /* else the rule kept first wins, as "add" does in the store */

        cn->expire = now + ttl;

        ngx_queue_remove(&cn->queue);
        ngx_queue_insert_head(&cache->sh->queue, &cn->queue);

        goto done;
    }

    if (ttl == 0) {
        goto done;
    }

    cn = ngx_http_optout_cache_alloc(cache, len);

    if (cn == NULL) {
        if ((ngx_msec_int_t) (now - cache->sh->nomem_log) >= 0) {
            cache->sh->nomem_log = now + NGX_HTTP_OPTOUT_CACHE_LOG;
            nomem = 1;
        }

        goto done;
    }

    cn->node.key = hash;
    cn->expire = now + ttl;
    cn->len = (u_short) len;

    if (rule) {
        cn->rule = *rule;
        cn->blocked = 1;

    } else {
        ngx_memzero(&cn->rule, sizeof(optout_rule_t));
        cn->blocked = 0;
    }

    ngx_memcpy(cn->data, key, len);

    ngx_rbtree_insert(&cache->sh->rbtree, &cn->node);

    ngx_queue_insert_head(&cache->sh->queue, &cn->queue);
    ngx_http_optout_metric_set(NGX_HTTP_OPTOUT_G_CACHE_ENTRIES,
                               ++cache->sh->count);

done:

    ngx_shmtx_unlock(&cache->shpool->mutex);

    if (nomem) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "optout_cache could not allocate node%s, "
                      "the zone is too small",
                      cache->shpool->log_ctx);
    }
}


void
ngx_http_optout_cache_remove(ngx_http_optout_cache_t *cache, u_char *key,
    size_t len)
{
    uint32_t                       hash;
    ngx_http_optout_cache_node_t  *cn;

    if (len == 0 || len > OPTOUT_STORE_KEY_MAX) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                   "optout cache remove \"%*s\"", len, key);

    hash = ngx_crc32_short(key, len);

    ngx_shmtx_lock(&cache->shpool->mutex);

    cn = ngx_http_optout_cache_lookup(cache, hash, key, len);

    if (cn) {
        ngx_http_optout_cache_delete(cache, cn);
    }

    ngx_shmtx_unlock(&cache->shpool->mutex);
}


static void
ngx_http_optout_cache_rbtree_insert_value(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t             **p;
    ngx_http_optout_cache_node_t   *cn, *cnt;

    for ( ;; ) {

        if (node->key < temp->key) {

            p = &temp->left;

        } else if (node->key > temp->key) {

            p = &temp->right;

        } else { /* node->key == temp->key */

            cn = (ngx_http_optout_cache_node_t *) node;
            cnt = (ngx_http_optout_cache_node_t *) temp;

            p = (ngx_memn2cmp(cn->data, cnt->data, cn->len, cnt->len) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_http_optout_cache_node_t *
ngx_http_optout_cache_lookup(ngx_http_optout_cache_t *cache, uint32_t hash,
    u_char *key, size_t len)
{
    ngx_int_t                      rc;
    ngx_rbtree_node_t             *node, *sentinel;
    ngx_http_optout_cache_node_t  *cn;

    node = cache->sh->rbtree.root;
    sentinel = cache->sh->rbtree.sentinel;

    while (node != sentinel) {

        if (hash < node->key) {
            node = node->left;
            continue;
        }

        if (hash > node->key) {
            node = node->right;
            continue;
        }

        /* hash == node->key */

        cn = (ngx_http_optout_cache_node_t *) node;

        rc = ngx_memn2cmp(key, cn->data, len, (size_t) cn->len);

        if (rc == 0) {
            return cn;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


static ngx_http_optout_cache_node_t *
ngx_http_optout_cache_alloc(ngx_http_optout_cache_t *cache, size_t len)
{
    size_t                         size;
    ngx_http_optout_cache_node_t  *cn;

    size = offsetof(ngx_http_optout_cache_node_t, data) + len;

    ngx_http_optout_cache_expire(cache, 0);

    cn = ngx_slab_alloc_locked(cache->shpool, size);

    if (cn == NULL) {
        ngx_http_optout_cache_expire(cache, 1);

        cn = ngx_slab_alloc_locked(cache->shpool, size);
    }

    return cn;
}


/*
 * force == 0 deletes up to two expired entries at the tail of the LRU
 * queue; force == 1 deletes the expired entries among the oldest ones
 * and, when none of them is expired, the few oldest entries
 */

static void
ngx_http_optout_cache_expire(ngx_http_optout_cache_t *cache,
    ngx_uint_t force)
{
    ngx_uint_t                     n, deleted;
    ngx_msec_t                     now;
    ngx_queue_t                   *q, *prev;
    ngx_http_optout_cache_node_t  *cn;

    now = ngx_current_msec;

    if (!force) {

        for (n = 0; n < 2; n++) {

            if (ngx_queue_empty(&cache->sh->queue)) {
                return;
            }

            q = ngx_queue_last(&cache->sh->queue);
            cn = ngx_queue_data(q, ngx_http_optout_cache_node_t, queue);

            if ((ngx_msec_int_t) (cn->expire - now) > 0) {
                return;
            }

            ngx_http_optout_cache_delete(cache, cn);
        }

        return;
    }

    deleted = 0;

    q = ngx_queue_last(&cache->sh->queue);

    for (n = 0; n < NGX_HTTP_OPTOUT_CACHE_SCAN; n++) {

        if (q == ngx_queue_sentinel(&cache->sh->queue)) {
            break;
        }

        prev = ngx_queue_prev(q);
        cn = ngx_queue_data(q, ngx_http_optout_cache_node_t, queue);

        if ((ngx_msec_int_t) (cn->expire - now) <= 0) {
            ngx_http_optout_cache_delete(cache, cn);
            deleted++;
        }

        q = prev;
    }

    if (deleted) {
        return;
    }

    for (n = 0; n < NGX_HTTP_OPTOUT_CACHE_EVICT; n++) {

        if (ngx_queue_empty(&cache->sh->queue)) {
            return;
        }

        q = ngx_queue_last(&cache->sh->queue);
        cn = ngx_queue_data(q, ngx_http_optout_cache_node_t, queue);

        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_EVICTIONS);
        ngx_http_optout_cache_delete(cache, cn);
    }
}


static void
ngx_http_optout_cache_delete(ngx_http_optout_cache_t *cache,
    ngx_http_optout_cache_node_t *cn)
{
    ngx_queue_remove(&cn->queue);
    ngx_rbtree_delete(&cache->sh->rbtree, &cn->node);
    ngx_slab_free_locked(cache->shpool, cn);
    ngx_http_optout_metric_set(NGX_HTTP_OPTOUT_G_CACHE_ENTRIES,
                               --cache->sh->count);
}


void
ngx_http_optout_cache_rule(ngx_http_request_t *r, u_char *key, size_t len,
    optout_rule_t *rule)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (omcf->cache) {
        ngx_http_optout_cache_put(omcf->cache, key, len, rule);
    }
}
