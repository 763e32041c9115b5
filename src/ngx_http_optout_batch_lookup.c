
/*
 * The lookup of a batch, in two thread tasks around the one multi-get on
 * the event loop: first normalize each destination, derive its store keys
 * (account-wide, and per sender when one is given) and read the pending
 * set; then, with the multi-get's answer, each destination's verdict.
 */


#include "ngx_http_optout_batch.h"


static ngx_int_t ngx_http_optout_batch_keys(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests,
    ngx_http_optout_batch_keys_t *k);
static void ngx_http_optout_batch_pending(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_keys_t *k);
static ngx_int_t ngx_http_optout_batch_mget(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_keys_t *k);
static ngx_int_t ngx_http_optout_batch_verdict(
    ngx_http_optout_batch_ctx_t *bc, ngx_http_optout_batch_dest_t *d,
    ngx_http_optout_batch_keys_t *k, ngx_uint_t key);
static void ngx_http_optout_batch_keys_free(ngx_http_optout_batch_keys_t *k);


/*
 * In the first task: bc->dests, bc->keys, and the keys of the multi-get.
 * NGX_ERROR: the error answer is written (no memory, key derivation
 * failed), and nothing is left to free.
 */

ngx_int_t
ngx_http_optout_batch_lookup(ngx_http_optout_batch_ctx_t *bc)
{
    ngx_int_t                      rc;
    ngx_http_optout_batch_keys_t  *k;
    ngx_http_optout_batch_list_t  *list;

    k = &bc->keys;
    list = &bc->list;

    ngx_memzero(k, sizeof(ngx_http_optout_batch_keys_t));

    bc->dests = malloc(list->n * sizeof(ngx_http_optout_batch_dest_t));
    if (bc->dests == NULL) {
        goto no_memory;
    }

    rc = ngx_http_optout_batch_keys(bc, list, bc->dests, k);

    if (rc == NGX_ERROR) {
        goto no_memory;
    }

    if (rc == NGX_ABORT) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Key derivation failed.");
        goto failed;
    }

    /*
     * the pending set is read before the store: an opt-out it lets go of
     * meanwhile is already in memcached when the store is asked
     */

    ngx_http_optout_batch_pending(bc, k);

    bc->mget_keys = k->keys;
    bc->mget_lens = k->lens;
    bc->mget_n = k->nkeys;
    bc->mget_found = k->found;
    bc->mget_rules = k->rules;

    return NGX_OK;

no_memory:

    ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR, "50000",
                               "Internal error", "Out of memory.");

failed:

    ngx_http_optout_batch_keys_free(k);
    free(bc->dests);
    bc->dests = NULL;

    return NGX_ERROR;
}


/*
 * In the second task, once the multi-get ended (bc->mget_rc): one entry
 * a destination, or NULL with the error answer written (the store cannot
 * answer with "optout_check_fail closed").  The caller frees the entries.
 */

ngx_http_optout_batch_dest_t *
ngx_http_optout_batch_verdicts(ngx_http_optout_batch_ctx_t *bc)
{
    ngx_uint_t                     i, key;
    ngx_http_optout_batch_keys_t  *k;
    ngx_http_optout_batch_dest_t  *dests;

    k = &bc->keys;
    dests = bc->dests;
    bc->dests = NULL;

    if (ngx_http_optout_batch_mget(bc, k) != NGX_OK) {
        goto failed;
    }

    for (i = 0, key = 0; i < bc->list.n; i++) {
        if (dests[i].status == NGX_HTTP_OPTOUT_STATUS_INVALID) {
            continue;
        }

        if (ngx_http_optout_batch_verdict(bc, &dests[i], k, key)
            != NGX_OK)
        {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "40301", "Opt-out store unavailable",
                                       "Too many opt-outs recorded on this "
                                       "node are not yet known to be in "
                                       "memcached; sending is denied until "
                                       "they are.");
            goto failed;
        }

        key += k->per;
    }

    ngx_http_optout_batch_keys_free(k);

    return dests;

failed:

    ngx_http_optout_batch_keys_free(k);
    free(dests);

    return NULL;
}


/*
 * normalizes the destinations and derives their keys, "per" keys a valid
 * destination in a row; NGX_ERROR: no memory, NGX_ABORT: HMAC failed
 */

static ngx_int_t
ngx_http_optout_batch_keys(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests,
    ngx_http_optout_batch_keys_t *k)
{
    size_t                         max;
    ngx_uint_t                     i, s;
    ngx_http_optout_batch_item_t  *item;

    k->per = bc->sender_len ? 2 : 1;
    max = list->n * k->per;

    k->keybuf = malloc(max * (OPTOUT_STORE_KEY_MAX + 1));
    k->keys = malloc(max * sizeof(char *));
    k->lens = malloc(max * sizeof(size_t));
    k->found = malloc(max);
    k->rules = malloc(max * sizeof(optout_rule_t));
    k->pending = malloc(max);
    k->prules = malloc(max * sizeof(optout_rule_t));

    if (k->keybuf == NULL || k->keys == NULL || k->lens == NULL
        || k->found == NULL || k->rules == NULL || k->pending == NULL
        || k->prules == NULL)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < list->n; i++) {
        item = &list->items[i];

        if (!item->string
            || optout_normalize_dest((char *) item->data, item->len,
                                     &dests[i].dest)
               != OPTOUT_OK)
        {
            dests[i].status = NGX_HTTP_OPTOUT_STATUS_INVALID;
            continue;
        }

        dests[i].status = NGX_HTTP_OPTOUT_STATUS_NONE;

        for (s = 0; s < k->per; s++) {
            k->keys[k->nkeys] = k->keybuf
                                + k->nkeys * (OPTOUT_STORE_KEY_MAX + 1);

            if (optout_store_key(bc->mac, (char *) bc->prefix.data,
                                 bc->prefix.len, (char *) bc->ns.data,
                                 bc->ns.len, bc->sender,
                                 s ? bc->sender_len : 0, &dests[i].dest,
                                 (char *) k->keys[k->nkeys],
                                 &k->lens[k->nkeys])
                != OPTOUT_OK)
            {
                return NGX_ABORT;
            }

            k->nkeys++;
        }
    }

    return NGX_OK;
}


/* which keys are recorded on this node but maybe not yet in memcached */

static void
ngx_http_optout_batch_pending(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_keys_t *k)
{
    ngx_int_t   rc;
    ngx_uint_t  i;

    for (i = 0; i < k->nkeys; i++) {
        rc = ngx_http_optout_pending_find(bc->pending, (u_char *) k->keys[i],
                                          k->lens[i], &k->prules[i]);

        k->pending[i] = (rc == NGX_OK);

        if (rc == NGX_BUSY) {
            k->busy = 1;
        }
    }
}


/*
 * The answer of the one call to the store.  NGX_OK: k->found and k->rules
 * are known, or unknown and taken as allowed with "optout_check_fail open"
 * (bc->unverified); NGX_ERROR: the error answer is written.
 */

static ngx_int_t
ngx_http_optout_batch_mget(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_keys_t *k)
{
    ngx_int_t  rc;

    if (k->nkeys == 0) {
        return NGX_OK;
    }

    rc = bc->mget_rc;

    if (rc == NGX_OK) {
        return NGX_OK;
    }

    if (bc->open) {
        bc->unverified = 1;
        ngx_memzero(k->found, k->nkeys);
        return NGX_OK;
    }

    ngx_http_optout_batch_fail(bc, NGX_HTTP_SERVICE_UNAVAILABLE, "40301",
                               "Opt-out store unavailable",
                               rc == NGX_DECLINED
                               ? "The store is not seeded; sending is "
                                 "denied until it is."
                               : "The opt-out rules could not be read; "
                                 "sending is denied until they can.");
    return NGX_ERROR;
}


/*
 * The final verdict of one valid destination from its keys' results: the
 * account-wide rule first, then the sender's; then an opt-out recorded on
 * this node that memcached may not have yet.  NGX_BUSY: that set
 * overflowed and cannot tell, the destination cannot be answered allowed.
 */

static ngx_int_t
ngx_http_optout_batch_verdict(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_dest_t *d, ngx_http_optout_batch_keys_t *k,
    ngx_uint_t key)
{
    ngx_uint_t  s;

    for (s = 0; s < k->per; s++) {
        if (k->found[key + s]) {
            d->status = NGX_HTTP_OPTOUT_STATUS_BLOCKED;
            d->scope = s ? "sender" : "account";
            d->rule = k->rules[key + s];
            return NGX_OK;
        }
    }

    for (s = 0; s < k->per; s++) {
        if (k->pending[key + s]) {
            d->status = NGX_HTTP_OPTOUT_STATUS_BLOCKED;
            d->scope = s ? "sender" : "account";
            d->rule = k->prules[key + s];
            return NGX_OK;
        }
    }

    if (k->busy && !bc->open) {
        return NGX_BUSY;
    }

    if (k->busy) {
        bc->unverified = 1;
    }

    d->status = NGX_HTTP_OPTOUT_STATUS_ALLOWED;

    return NGX_OK;
}


static void
ngx_http_optout_batch_keys_free(ngx_http_optout_batch_keys_t *k)
{
    free(k->keybuf);
    free(k->keys);
    free(k->lens);
    free(k->found);
    free(k->rules);
    free(k->pending);
    free(k->prules);

    ngx_memzero(k, sizeof(ngx_http_optout_batch_keys_t));
}
