
/*
 * The fold of a journal tail, as "optoutctl replay" folds journals: per
 * store key, an opt-in as the last word is a delete; otherwise the rule is
 * the one of the first opt-out since the last opt-in, added when the tail
 * holds no opt-in of the key (memcached may hold an older rule, which is
 * kept) and set when it does (that older rule has ended).  Memory grows
 * with distinct keys, up to "max"; in the thread only.
 */


#include "ngx_http_optout_applier_fold.h"


ngx_http_optout_fold_t *
ngx_http_optout_fold_create(ngx_uint_t max, ngx_log_t *log)
{
    ngx_uint_t               size;
    ngx_http_optout_fold_t  *f;

    f = ngx_alloc(sizeof(ngx_http_optout_fold_t), log);
    if (f == NULL) {
        return NULL;
    }

    /* a load factor of one half at most keeps the probes short */

    for (size = 1; size < 2 * max; size <<= 1) { /* void */ }

    f->entries = ngx_alloc(max * sizeof(ngx_http_optout_fold_entry_t), log);
    f->slots = ngx_alloc(size * sizeof(uint32_t), log);

    if (f->entries == NULL || f->slots == NULL) {
        ngx_http_optout_fold_destroy(f);
        return NULL;
    }

    f->mask = size - 1;
    f->max = max;

    ngx_http_optout_fold_reset(f);

    return f;
}


void
ngx_http_optout_fold_destroy(ngx_http_optout_fold_t *f)
{
    if (f == NULL) {
        return;
    }

    ngx_free(f->entries);
    ngx_free(f->slots);
    ngx_free(f);
}


void
ngx_http_optout_fold_reset(ngx_http_optout_fold_t *f)
{
    ngx_memzero(f->slots, (f->mask + 1) * sizeof(uint32_t));
    f->n = 0;
}


/*
 * Folds one line of the key.  A key not seen yet takes an entry when "add"
 * is set; NGX_DECLINED: it did not (not asked to, or the table is full).
 */

ngx_int_t
ngx_http_optout_fold_line(ngx_http_optout_fold_t *f, u_char *key,
    size_t len, ngx_uint_t optin, optout_rule_t *rule, ngx_uint_t add)
{
    uint32_t                       hash;
    ngx_uint_t                     i;
    ngx_http_optout_fold_entry_t  *e;

    if (len > OPTOUT_STORE_KEY_MAX) {
        return NGX_DECLINED;
    }

    hash = ngx_crc32_short(key, len);

    for (i = hash & f->mask; f->slots[i]; i = (i + 1) & f->mask) {
        e = &f->entries[f->slots[i] - 1];

        if (e->hash != hash || e->key_len != len
            || ngx_memcmp(e->key, key, len) != 0)
        {
            continue;
        }

        if (optin) {
            e->op = NGX_HTTP_OPTOUT_STORE_DELETE;

        } else if (e->op == NGX_HTTP_OPTOUT_STORE_DELETE) {
            e->op = NGX_HTTP_OPTOUT_STORE_SET;
            e->rule = *rule;
        }

        return NGX_OK;
    }

    if (!add || f->n == f->max) {
        return NGX_DECLINED;
    }

    e = &f->entries[f->n++];
    f->slots[i] = f->n;

    e->hash = hash;
    e->key_len = len;
    ngx_memcpy(e->key, key, len);

    if (optin) {
        e->op = NGX_HTTP_OPTOUT_STORE_DELETE;

    } else {
        e->op = NGX_HTTP_OPTOUT_STORE_ADD;
        e->rule = *rule;
    }

    return NGX_OK;
}
