
/*
 * The one multi-get with markers, on the event loop: single checks (which
 * share it, ngx_http_optout_store.c), batch checks, the API's lookups and
 * the confirmation of many writes all ask memcached through it.  Each
 * server that holds one of the keys gets one "get" of them and then of its
 * marker (ngx_http_optout_mc.c); the gets run at once.
 */


#include "ngx_http_optout_mget.h"


/* a multi-get of a caller's keys (repeats allowed), in one allocation */

typedef struct {
    ngx_http_optout_mget_t       mget;
    ngx_uint_t                   n;
    ngx_uint_t                  *index;
    u_char                      *found;
    optout_rule_t               *rules;
    ngx_http_optout_keys_pt      handler;
    void                        *data;
} ngx_http_optout_mget_keys_t;


static ngx_uint_t ngx_http_optout_mget_find(ngx_http_optout_mget_t *mg,
    const char *key, size_t len);
static ngx_int_t ngx_http_optout_mget_place(ngx_http_optout_mget_t *mg);
static ngx_int_t ngx_http_optout_mget_gets(ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mget_got(ngx_http_optout_mc_get_t *get);
static void ngx_http_optout_mget_finish(ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mget_posted(ngx_event_t *ev);
static void ngx_http_optout_mget_keys_done(ngx_http_optout_mget_t *mg);


void
ngx_http_optout_mget_init(ngx_http_optout_mget_t *mg)
{
    ngx_memzero(mg->hash, (mg->mask + 1) * sizeof(uint32_t));
    ngx_memzero(mg->answered, sizeof(mg->answered));

    mg->nkeys = 0;
    mg->total = 0;
    mg->rc = MEMCACHED_SUCCESS;
}


/* adds a key once; *index is where its answer will be */

ngx_int_t
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
 * NGX_OK: the key's server answered completely; NGX_ERROR: it did not,
 * after a failure; NGX_DECLINED: it ended cleanly without its marker.
 */

ngx_int_t
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
 * Asks for the keys and, after them, the marker of each server that holds
 * one; sets found[], rules[], answered[] and rc, then calls mg->handler,
 * never before it returns.  The callers keep room for the markers.
 */

void
ngx_http_optout_mget_run(ngx_http_optout_mc_t *mc, ngx_http_optout_mget_t *mg)
{
    ngx_uint_t                 i, ngets;
    ngx_http_optout_mc_get_t  *gets;

    mg->mc = mc;
    mg->block = NULL;
    mg->running = 1;     /* until this function ends */

    if (ngx_http_optout_mget_place(mg) != NGX_OK
        || ngx_http_optout_mget_gets(mg) != NGX_OK)
    {
        mg->rc = MEMCACHED_MEMORY_ALLOCATION_FAILURE;
        mg->running = 1;
    }

    gets = mg->block;
    ngets = mg->running - 1;

    for (i = 0; i < ngets; i++) {
        ngx_http_optout_mc_get(&gets[i]);
    }

    if (--mg->running == 0) {
        /* every server's get ended already: the handler runs later */
        mg->event.handler = ngx_http_optout_mget_posted;
        mg->event.data = mg;
        mg->event.log = ngx_http_optout_mc_log(mc);

        ngx_post_event(&mg->event, &ngx_posted_events);
    }
}


static ngx_int_t
ngx_http_optout_mget_place(ngx_http_optout_mget_t *mg)
{
    uint32_t           s;
    ngx_uint_t         i;
    optout_markers_t  *m;

    m = ngx_http_optout_mc_markers(mg->mc);
    mg->nkeys = mg->total;

    for (i = 0; i < m->n; i++) {
        mg->marker[i] = NGX_CONF_UNSET_UINT;
    }

    for (i = 0; i < mg->nkeys; i++) {
        s = ngx_http_optout_mc_place(mg->mc, mg->keys[i], mg->lens[i]);

        if (s >= m->n) {
            return NGX_ERROR;
        }

        mg->server[i] = s;

        if (mg->marker[s] == NGX_CONF_UNSET_UINT) {
            if (ngx_http_optout_mget_add(mg, m->key[s], m->len[s],
                                         &mg->marker[s])
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            mg->server[mg->marker[s]] = s;
        }
    }

    return NGX_OK;
}


/*
 * One block: a get for each server asked, and the key indices grouped by
 * server; a marker's index is above every key's, so it comes last.
 */

static ngx_int_t
ngx_http_optout_mget_gets(ngx_http_optout_mget_t *mg)
{
    uint32_t                   s;
    ngx_uint_t                 i, ngets, *order, count[OPTOUT_MARKERS_MAX];
    optout_markers_t          *m;
    ngx_http_optout_mc_get_t  *gets, *get, *of[OPTOUT_MARKERS_MAX];

    m = ngx_http_optout_mc_markers(mg->mc);
    ngets = 0;

    for (s = 0; s < m->n; s++) {
        count[s] = 0;

        if (mg->marker[s] != NGX_CONF_UNSET_UINT) {
            ngets++;
        }
    }

    for (i = 0; i < mg->total; i++) {
        count[mg->server[i]]++;
    }

    gets = ngx_alloc(ngets * sizeof(ngx_http_optout_mc_get_t)
                     + mg->total * sizeof(ngx_uint_t),
                     ngx_http_optout_mc_log(mg->mc));
    if (gets == NULL) {
        return NGX_ERROR;
    }

    mg->block = gets;
    order = (ngx_uint_t *) (gets + ngets);
    get = gets;

    for (s = 0; s < m->n; s++) {
        of[s] = NULL;

        if (mg->marker[s] == NGX_CONF_UNSET_UINT) {
            continue;
        }

        ngx_memzero(get, sizeof(ngx_http_optout_mc_get_t));

        get->mc = mg->mc;
        get->server = s;
        get->keys = mg->keys;
        get->lens = mg->lens;
        get->found = mg->found;
        get->rules = mg->rules;
        get->nrules = mg->nkeys;
        get->order = order;
        get->handler = ngx_http_optout_mget_got;
        get->data = mg;

        order += count[s];
        of[s] = get++;
    }

    for (i = 0; i < mg->total; i++) {
        get = of[mg->server[i]];
        get->order[get->n++] = i;
    }

    mg->running += ngets;

    return NGX_OK;
}


/* a server's answer is complete once its marker came back */

static void
ngx_http_optout_mget_got(ngx_http_optout_mc_get_t *get)
{
    ngx_http_optout_mget_t *mg = get->data;

    mg->answered[get->server] = mg->found[mg->marker[get->server]];

    if (get->rc != MEMCACHED_SUCCESS && mg->rc == MEMCACHED_SUCCESS) {
        mg->rc = get->rc;
    }

    if (--mg->running == 0) {
        ngx_http_optout_mget_finish(mg);
    }
}


static void
ngx_http_optout_mget_finish(ngx_http_optout_mget_t *mg)
{
    uint32_t           s;
    optout_markers_t  *m;

    m = ngx_http_optout_mc_markers(mg->mc);

    for (s = 0; s < m->n; s++) {
        if (mg->marker[s] != NGX_CONF_UNSET_UINT) {
            ngx_http_optout_metric_mget(s, mg->answered[s], mg->rc);
        }
    }

    if (mg->block) {
        ngx_free(mg->block);
        mg->block = NULL;
    }

    mg->handler(mg);
}


static void
ngx_http_optout_mget_posted(ngx_event_t *ev)
{
    ngx_http_optout_mget_finish(ev->data);
}


/*
 * One multi-get with markers of keys[]: found[] and rules[] are set, then
 * handler(data, rc) is called, never before this function returns, with
 * NGX_OK, NGX_ERROR when a server that holds one of the keys failed, or
 * NGX_DECLINED when such a server ended without its marker (not seeded).
 * The arrays stay the caller's and must live until then.  NGX_ERROR: no
 * memory, the handler will not be called.
 */

ngx_int_t
ngx_http_optout_mget_keys(ngx_http_optout_mc_t *mc, const char **keys,
    size_t *lens, ngx_uint_t n, u_char *found, optout_rule_t *rules,
    ngx_http_optout_keys_pt handler, void *data)
{
    u_char                       *p;
    size_t                        size, hash;
    ngx_uint_t                    i, max;
    ngx_http_optout_mget_t       *mg;
    ngx_http_optout_mget_keys_t  *mk;

    max = n + ngx_http_optout_mc_markers(mc)->n;

    for (hash = 1; hash < max * 2; hash <<= 1) { /* void */ }

    size = sizeof(ngx_http_optout_mget_keys_t)
           + max * (sizeof(optout_rule_t) + sizeof(char *) + sizeof(size_t)
                    + sizeof(uint32_t) + 1)
           + hash * sizeof(uint32_t) + n * sizeof(ngx_uint_t);

    mk = ngx_alloc(size, ngx_http_optout_mc_log(mc));
    if (mk == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(mk, sizeof(ngx_http_optout_mget_keys_t));

    mg = &mk->mget;
    p = (u_char *) &mk[1];

    mg->rules = (optout_rule_t *) p;
    p += max * sizeof(optout_rule_t);
    mg->keys = (const char **) p;
    p += max * sizeof(char *);
    mg->lens = (size_t *) p;
    p += max * sizeof(size_t);
    mk->index = (ngx_uint_t *) p;
    p += n * sizeof(ngx_uint_t);
    mg->server = (uint32_t *) p;
    p += max * sizeof(uint32_t);
    mg->hash = (uint32_t *) p;
    p += hash * sizeof(uint32_t);
    mg->found = p;

    /* mg->data is NULL: the keys stay the caller's */

    mg->max = max;
    mg->mask = hash - 1;
    mg->handler = ngx_http_optout_mget_keys_done;
    mg->ctx = mk;

    mk->n = n;
    mk->found = found;
    mk->rules = rules;
    mk->handler = handler;
    mk->data = data;

    ngx_http_optout_mget_init(mg);

    for (i = 0; i < n; i++) {
        if (ngx_http_optout_mget_add(mg, keys[i], lens[i], &mk->index[i])
            != NGX_OK)
        {
            ngx_free(mk);
            return NGX_ERROR;
        }
    }

    ngx_http_optout_mget_run(mc, mg);

    return NGX_OK;
}


static void
ngx_http_optout_mget_keys_done(ngx_http_optout_mget_t *mg)
{
    ngx_http_optout_mget_keys_t *mk = mg->ctx;

    void                     *data;
    ngx_int_t                 rc;
    ngx_uint_t                i, j;
    ngx_http_optout_keys_pt   handler;

    rc = NGX_OK;

    for (i = 0; i < mk->n; i++) {
        j = mk->index[i];

        rc = ngx_http_optout_mget_answer(mg, j);
        if (rc != NGX_OK) {
            break;
        }

        mk->found[i] = mg->found[j];

        if (mg->found[j]) {
            mk->rules[i] = mg->rules[j];
        }
    }

    if (rc != NGX_OK && mg->rc != MEMCACHED_SUCCESS) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_optout_mc_log(mg->mc), 0,
                      "optout: memcached multi-get failed: %s",
                      memcached_strerror(NULL, mg->rc));
    }

    handler = mk->handler;
    data = mk->data;

    ngx_free(mk);

    handler(data, rc);
}
