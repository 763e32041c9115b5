
/*
 * The pending set: store keys of the opt-outs this node recorded in its
 * journal that memcached may not hold yet.  Checks answer "blocked" from
 * it, so a partition never turns a recorded opt-out into "allowed".  The
 * same shared zone coordinates the journal applier: which worker runs it
 * and how far its passes got.  An entry made while pass N was the last one
 * started leaves once a pass after N has applied the journal to its end.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_PENDING_SIZE  (4 * 1024 * 1024)
#define NGX_HTTP_OPTOUT_PENDING_MAX   10000


typedef struct {
    ngx_rbtree_t                     rbtree;
    ngx_rbtree_node_t                sentinel;
    ngx_uint_t                       count;
    uint64_t                         started;   /* applier passes */
    uint64_t                         ended;     /* the last that ended */
    uint64_t                         overflow;  /* the pass that clears it */
    ngx_pid_t                        owner;     /* runs the applier */
    ngx_uint_t                       kick;
} ngx_http_optout_pending_sh_t;


struct ngx_http_optout_pending_s {
    ngx_http_optout_pending_sh_t    *sh;
    ngx_slab_pool_t                 *shpool;
};


typedef struct {
    ngx_str_node_t                   sn;
    uint64_t                         need;
    optout_rule_t                    rule;
    u_char                           data[1];
} ngx_http_optout_pending_node_t;


static ngx_int_t ngx_http_optout_pending_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);


static ngx_str_t  ngx_http_optout_pending_name = ngx_string("optout_pending");


ngx_int_t
ngx_http_optout_pending_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_shm_zone_t             *shm_zone;
    ngx_http_optout_pending_t  *p;

    p = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_pending_t));
    if (p == NULL) {
        return NGX_ERROR;
    }

    /* a fixed size, so that a reload always finds the zone it had */

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_optout_pending_name,
                                     NGX_HTTP_OPTOUT_PENDING_SIZE,
                                     &ngx_http_optout_pending_name);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &ngx_http_optout_pending_name);
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_optout_pending_init_zone;
    shm_zone->data = p;

    omcf->pending = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_pending_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_optout_pending_t *opending = data;

    ngx_http_optout_pending_t  *p;

    p = shm_zone->data;

    if (opending) {
        p->sh = opending->sh;
        p->shpool = opending->shpool;
        return NGX_OK;
    }

    p->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        p->sh = p->shpool->data;
        return NGX_OK;
    }

    p->sh = ngx_slab_calloc(p->shpool, sizeof(ngx_http_optout_pending_sh_t));
    if (p->sh == NULL) {
        return NGX_ERROR;
    }

    p->shpool->data = p->sh;

    ngx_rbtree_init(&p->sh->rbtree, &p->sh->sentinel,
                    ngx_str_rbtree_insert_value);

    p->shpool->log_nomem = 0;

    p->shpool->log_ctx = ngx_slab_alloc(p->shpool,
                              sizeof(" in optout pending zone \"\"")
                              + shm_zone->shm.name.len);
    if (p->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(p->shpool->log_ctx, " in optout pending zone \"%V\"%Z",
                &shm_zone->shm.name);

    return NGX_OK;
}


/*
 * An opt-out whose journal line is durable and that memcached may lack.
 * The rule kept first wins, as "add" does in the store.  NGX_BUSY: the set
 * is full, and checks that would answer "allowed" answer "unavailable"
 * until a pass that starts after this one has completed.
 */

ngx_int_t
ngx_http_optout_pending_add(ngx_http_optout_pending_t *p, u_char *key,
    size_t len, optout_rule_t *rule, ngx_log_t *log)
{
    uint32_t                         hash;
    uint64_t                         need;
    ngx_str_t                        k;
    ngx_int_t                        rc;
    ngx_uint_t                       full;
    ngx_http_optout_pending_node_t  *pn;

    k.data = key;
    k.len = len;
    hash = ngx_crc32_short(key, len);
    full = 0;
    rc = NGX_OK;

    ngx_shmtx_lock(&p->shpool->mutex);

    need = p->sh->started + 1;

    pn = (ngx_http_optout_pending_node_t *)
             ngx_str_rbtree_lookup(&p->sh->rbtree, &k, hash);

    if (pn) {
        pn->need = ngx_max(pn->need, need);
        goto done;
    }

    if (p->sh->count >= NGX_HTTP_OPTOUT_PENDING_MAX) {
        goto overflow;
    }

    pn = ngx_slab_alloc_locked(p->shpool,
                          offsetof(ngx_http_optout_pending_node_t, data)
                          + len);
    if (pn == NULL) {
        goto overflow;
    }

    ngx_memcpy(pn->data, key, len);

    pn->sn.node.key = hash;
    pn->sn.str.data = pn->data;
    pn->sn.str.len = len;
    pn->need = need;
    pn->rule = *rule;

    ngx_rbtree_insert(&p->sh->rbtree, &pn->sn.node);
    p->sh->count++;
    ngx_http_optout_metric_set(NGX_HTTP_OPTOUT_G_PENDING, p->sh->count);

    goto done;

overflow:

    full = (p->sh->overflow == 0);
    p->sh->overflow = need;
    rc = NGX_BUSY;

done:

    ngx_shmtx_unlock(&p->shpool->mutex);

    if (full) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "optout: more than %d recorded opt-outs are not "
                      "known to be in memcached: checks that would answer "
                      "\"allowed\" answer \"unavailable\" until the journal "
                      "applier catches up", NGX_HTTP_OPTOUT_PENDING_MAX);
    }

    return rc;
}


/* an opt-in recorded in the journal: its opt-out no longer blocks */

void
ngx_http_optout_pending_remove(ngx_http_optout_pending_t *p, u_char *key,
    size_t len)
{
    ngx_str_t                        k;
    ngx_http_optout_pending_node_t  *pn;

    if (p == NULL) {
        return;
    }

    k.data = key;
    k.len = len;

    ngx_shmtx_lock(&p->shpool->mutex);

    pn = (ngx_http_optout_pending_node_t *)
             ngx_str_rbtree_lookup(&p->sh->rbtree, &k,
                                   ngx_crc32_short(key, len));

    if (pn) {
        ngx_rbtree_delete(&p->sh->rbtree, &pn->sn.node);
        ngx_slab_free_locked(p->shpool, pn);
        p->sh->count--;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);
}


/*
 * Safe in a thread.  NGX_OK: the key is pending, *rule is its rule;
 * NGX_DECLINED: it is not; NGX_BUSY: the set overflowed and cannot tell.
 */

ngx_int_t
ngx_http_optout_pending_find(ngx_http_optout_pending_t *p, u_char *key,
    size_t len, optout_rule_t *rule)
{
    ngx_int_t                        rc;
    ngx_str_t                        k;
    ngx_http_optout_pending_node_t  *pn;

    if (p == NULL) {
        return NGX_DECLINED;
    }

    ngx_memory_barrier();

    if (p->sh->count == 0 && p->sh->overflow == 0) {
        return NGX_DECLINED;
    }

    k.data = key;
    k.len = len;

    ngx_shmtx_lock(&p->shpool->mutex);

    pn = (ngx_http_optout_pending_node_t *)
             ngx_str_rbtree_lookup(&p->sh->rbtree, &k,
                                   ngx_crc32_short(key, len));

    if (pn) {
        *rule = pn->rule;
        rc = NGX_OK;

    } else {
        rc = p->sh->overflow ? NGX_BUSY : NGX_DECLINED;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);

    return rc;
}


/*
 * The applier runs in one worker at a time: NGX_OK when this worker runs
 * it, NGX_DONE when it has just taken it over, NGX_DECLINED otherwise.
 */

ngx_int_t
ngx_http_optout_pending_claim(ngx_http_optout_pending_t *p)
{
    ngx_int_t  rc;
    ngx_pid_t  owner;

    ngx_shmtx_lock(&p->shpool->mutex);

    owner = p->sh->owner;

    if (owner == ngx_pid) {
        rc = NGX_OK;

    } else if (owner == 0
               || (kill(owner, 0) == -1 && ngx_errno == NGX_ESRCH))
    {
        /* released at exit, or its worker died */
        p->sh->owner = ngx_pid;
        rc = NGX_DONE;

    } else {
        rc = NGX_DECLINED;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);

    return rc;
}


void
ngx_http_optout_pending_release(ngx_http_optout_pending_t *p)
{
    ngx_shmtx_lock(&p->shpool->mutex);

    if (p->sh->owner == ngx_pid) {
        p->sh->owner = 0;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);
}


/* a live write failed: the applier should run soon */

void
ngx_http_optout_pending_kick(ngx_http_optout_pending_t *p)
{
    ngx_shmtx_lock(&p->shpool->mutex);
    p->sh->kick = 1;
    ngx_shmtx_unlock(&p->shpool->mutex);
}


/* a pass of the applier starts: its number */

uint64_t
ngx_http_optout_pending_start(ngx_http_optout_pending_t *p)
{
    uint64_t  pass;

    ngx_shmtx_lock(&p->shpool->mutex);

    pass = ++p->sh->started;
    p->sh->kick = 0;

    ngx_shmtx_unlock(&p->shpool->mutex);

    return pass;
}


/* a pass ended, whether it applied the journal or not */

void
ngx_http_optout_pending_end(ngx_http_optout_pending_t *p, uint64_t pass)
{
    ngx_shmtx_lock(&p->shpool->mutex);

    if (pass > p->sh->ended) {
        p->sh->ended = pass;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);
}


/*
 * A pass has started and not ended: it may have read the journal's end
 * before a line just written, and delete the rule that line records
 * after the live write of it (a line that reverses an opt-in it read).
 */

ngx_uint_t
ngx_http_optout_pending_passing(ngx_http_optout_pending_t *p)
{
    ngx_uint_t  passing;

    if (p == NULL) {
        return 0;
    }

    ngx_shmtx_lock(&p->shpool->mutex);
    passing = (p->sh->started != p->sh->ended);
    ngx_shmtx_unlock(&p->shpool->mutex);

    return passing;
}


ngx_uint_t
ngx_http_optout_pending_kicked(ngx_http_optout_pending_t *p)
{
    ngx_memory_barrier();

    return p->sh->kick;
}


/*
 * Pass "pass" applied the journal to its end: every entry made before it
 * started is in memcached now.
 */

void
ngx_http_optout_pending_done(ngx_http_optout_pending_t *p, uint64_t pass,
    ngx_log_t *log)
{
    ngx_uint_t                       n, cleared;
    ngx_rbtree_node_t               *node, *next, *root, *sentinel;
    ngx_http_optout_pending_node_t  *pn;

    n = 0;
    cleared = 0;

    ngx_shmtx_lock(&p->shpool->mutex);

    sentinel = p->sh->rbtree.sentinel;
    root = p->sh->rbtree.root;

    node = (root == sentinel) ? NULL : ngx_rbtree_min(root, sentinel);

    while (node) {
        next = ngx_rbtree_next(&p->sh->rbtree, node);

        pn = (ngx_http_optout_pending_node_t *) node;

        if (pn->need <= pass) {
            ngx_rbtree_delete(&p->sh->rbtree, node);
            ngx_slab_free_locked(p->shpool, pn);
            p->sh->count--;
            n++;
        }

        node = next;
    }

    ngx_http_optout_metric_set(NGX_HTTP_OPTOUT_G_PENDING, p->sh->count);

    if (p->sh->overflow && p->sh->overflow <= pass) {
        p->sh->overflow = 0;
        cleared = 1;
    }

    ngx_shmtx_unlock(&p->shpool->mutex);

    if (cleared) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "optout: the journal applier caught up, checks "
                      "answer from memcached again");
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "optout pending: %ui confirmed", n);
}
