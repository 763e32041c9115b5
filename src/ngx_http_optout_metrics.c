
/*
 * "optout_metrics": the module's counters in Prometheus text exposition
 * format (version 0.0.4).  They live in one shared zone of a fixed name and
 * size, so every reload finds it again and the counters of all workers,
 * old and new, add up.  Counters are sharded by worker so that workers do
 * not fight over cache lines; each update is one atomic add, safe from
 * thread-pool tasks too.  Gauges are set by their owners with a single
 * store.  Memcached servers are counted by position in "optout_store";
 * a reload that changes a position's server starts its counters anew.
 */


#include "ngx_http_optout_module.h"

#include <libmemcached/memcached.h>

#include "optout_memcached.h"


#define NGX_HTTP_OPTOUT_METRICS_SIZE    (256 * 1024)
#define NGX_HTTP_OPTOUT_METRICS_SHARDS  16
#define NGX_HTTP_OPTOUT_SERVER_NAME     128
#define NGX_HTTP_OPTOUT_BUCKETS         14

#ifndef NGX_CPU_CACHE_LINE
#define NGX_CPU_CACHE_LINE              64
#endif


typedef struct {
    ngx_atomic_t                     c[NGX_HTTP_OPTOUT_M_MAX];
    ngx_atomic_t                     bucket[NGX_HTTP_OPTOUT_BUCKETS + 1];
    ngx_atomic_t                     sync_ns;
} ngx_http_optout_metrics_shard_t;


typedef struct {
    ngx_atomic_t                     ops;
    ngx_atomic_t                     errors;
    ngx_atomic_t                     timeouts;
    ngx_atomic_t                     missing;
    u_char                           name[NGX_HTTP_OPTOUT_SERVER_NAME];
} ngx_http_optout_metrics_server_t;


typedef struct {
    ngx_atomic_t                     g[NGX_HTTP_OPTOUT_G_MAX];
    ngx_http_optout_metrics_server_t server[OPTOUT_MARKERS_MAX];
    u_char                          *shards;
} ngx_http_optout_metrics_sh_t;


/* per cycle: the servers of this configuration */

struct ngx_http_optout_metrics_s {
    ngx_http_optout_metrics_sh_t    *sh;
    ngx_uint_t                       nservers;
    ngx_str_t                        servers[OPTOUT_MARKERS_MAX];
};


/*
 * A family: label values name consecutive slots from "slot" on; an empty
 * value skips its slot, NULL ends the list.
 */

typedef struct {
    char                            *name;
    char                            *type;
    char                            *help;
    char                            *label;
    char                           **values;
    ngx_uint_t                       slot;
    ngx_uint_t                       gauge;
} ngx_http_optout_family_t;


static ngx_int_t ngx_http_optout_metrics_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_optout_metrics_servers(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf, ngx_http_optout_metrics_t *m);
static ngx_int_t ngx_http_optout_metrics_handler(ngx_http_request_t *r);
static u_char *ngx_http_optout_metrics_family(u_char *p, u_char *last,
    ngx_http_optout_metrics_sh_t *sh, ngx_http_optout_family_t *f,
    ngx_uint_t present);
static u_char *ngx_http_optout_metrics_histogram(u_char *p, u_char *last,
    ngx_http_optout_metrics_sh_t *sh);
static u_char *ngx_http_optout_metrics_per_server(u_char *p, u_char *last,
    ngx_http_optout_metrics_t *m);
static u_char *ngx_http_optout_metrics_label(u_char *p, u_char *last,
    ngx_str_t *value);
static ngx_atomic_uint_t ngx_http_optout_metrics_sum(ngx_atomic_t *first);


#define ngx_http_optout_shard_size                                            \
    ngx_align(sizeof(ngx_http_optout_metrics_shard_t), NGX_CPU_CACHE_LINE)


static ngx_http_optout_metrics_sh_t  *ngx_http_optout_metrics_sh;

static ngx_str_t  ngx_http_optout_metrics_name =
    ngx_string("optout_metrics");


static char  *ngx_http_optout_link_results[] = {
    "", "confirm", "recorded", "invalid", "error", NULL
};

static char  *ngx_http_optout_check_statuses[] = {
    "", "allowed", "blocked", "invalid", "unavailable", "unverified", NULL
};

static char  *ngx_http_optout_dest_statuses[] = {
    "", "allowed", "blocked", "invalid", "", "unverified", NULL
};

static char  *ngx_http_optout_batch_outcomes[] = {
    "answered", "invalid", "unavailable", "refused", "error", NULL
};

static char  *ngx_http_optout_api_outcomes[] = {
    "added", "present", "invalid", "removed", "not_found", NULL
};

static char  *ngx_http_optout_keyword_actions[] = {
    "stop", "start", "help", NULL
};

static char  *ngx_http_optout_refusal_reasons[] = {
    "queue_full", "queue_timeout", NULL
};


static ngx_http_optout_family_t  ngx_http_optout_families[] = {

    { "optout_link_requests_total", "counter",
      "Answers of optout_link locations by result.",
      "result", ngx_http_optout_link_results, NGX_HTTP_OPTOUT_M_LINK, 0 },

    { "optout_checks_total", "counter",
      "Single send-time checks by status.",
      "status", ngx_http_optout_check_statuses, NGX_HTTP_OPTOUT_M_CHECK, 0 },

    { "optout_batch_requests_total", "counter",
      "Batch checks by outcome.",
      "outcome", ngx_http_optout_batch_outcomes, NGX_HTTP_OPTOUT_M_BATCH, 0 },

    { "optout_batch_destinations_total", "counter",
      "Destinations of batch checks answered 200, by status.",
      "status", ngx_http_optout_dest_statuses, NGX_HTTP_OPTOUT_M_BATCH_DEST,
      0 },

    { "optout_batch_refusals_total", "counter",
      "Batch checks refused with 503 by the batch queue, by reason.",
      "reason", ngx_http_optout_refusal_reasons,
      NGX_HTTP_OPTOUT_M_QUEUE_FULL, 0 },

    { "optout_journal_lines_total", "counter",
      "Opt-out lines appended to the journal and synced to disk.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_JOURNAL_LINES, 0 },

    { "optout_journal_bytes_total", "counter",
      "Bytes appended to the journal and synced to disk.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_JOURNAL_BYTES, 0 },

    { "optout_journal_failures_total", "counter",
      "Opt-out lines the journal could not record; each was answered 500.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_JOURNAL_FAILED, 0 },

    { "optout_cache_hits_total", "counter",
      "Lookups of optout_cache that found a valid entry.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_HIT, 0 },

    { "optout_cache_misses_total", "counter",
      "Lookups of optout_cache that found no valid entry.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_MISS, 0 },

    { "optout_cache_evictions_total", "counter",
      "Entries of optout_cache dropped before expiry to make room.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_EVICTIONS, 0 },

    { "optout_api_rules_total", "counter",
      "Rules of the management API answered, by outcome: added, already "
      "present, invalid, removed (opt-in), not found.",
      "outcome", ngx_http_optout_api_outcomes, NGX_HTTP_OPTOUT_M_API, 0 },

    { "optout_keyword_actions_total", "counter",
      "Inbound messages that matched a keyword, by action; a repeated "
      "STOP or START counts too.",
      "action", ngx_http_optout_keyword_actions, NGX_HTTP_OPTOUT_M_KEYWORD,
      0 },

    { "optout_keyword_repeats_total", "counter",
      "STOP on a destination already blocked, or START on one allowed: "
      "recorded, but no second confirmation sent.",
      NULL, NULL, NGX_HTTP_OPTOUT_M_KEYWORD_REPEATS, 0 },

    { "optout_cache_entries", "gauge",
      "Entries in optout_cache.",
      NULL, NULL, NGX_HTTP_OPTOUT_G_CACHE_ENTRIES, 1 },

    { "optout_pending_optouts", "gauge",
      "Opt-outs recorded in the journal that memcached may not hold yet.",
      NULL, NULL, NGX_HTTP_OPTOUT_G_PENDING, 1 },

    { "optout_applier_lag_bytes", "gauge",
      "Journal bytes the journal applier's last pass could not bring to "
      "memcached.",
      NULL, NULL, NGX_HTTP_OPTOUT_G_APPLIER_LAG, 1 },

    { NULL, NULL, NULL, NULL, NULL, 0, 0 }
};


/* fdatasync() latency buckets: upper bounds in ns and as printed */

static ngx_atomic_uint_t  ngx_http_optout_bucket_ns[] = {
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000,
    2500000000
};

static char  *ngx_http_optout_bucket_le[] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5"
};


char *
ngx_http_optout_metrics(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_optout_metrics_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_optout_metrics_handler;

    return NGX_CONF_OK;
}


/* the zone, always: counting starts before anyone asks */

ngx_int_t
ngx_http_optout_metrics_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_shm_zone_t             *shm_zone;
    ngx_http_optout_metrics_t  *m;

    m = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_metrics_t));
    if (m == NULL) {
        return NGX_ERROR;
    }

    if (ngx_http_optout_metrics_servers(cf, omcf, m) != NGX_OK) {
        return NGX_ERROR;
    }

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_optout_metrics_name,
                                     NGX_HTTP_OPTOUT_METRICS_SIZE,
                                     &ngx_http_optout_metrics_name);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "shared memory zone \"%V\" is already used",
                           &ngx_http_optout_metrics_name);
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_optout_metrics_init_zone;
    shm_zone->data = m;

    omcf->metrics = m;

    return NGX_OK;
}


/* "host:port" of each server, in the order libmemcached numbers them */

static ngx_int_t
ngx_http_optout_metrics_servers(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf, ngx_http_optout_metrics_t *m)
{
    u_char                       *p;
    uint32_t                      i, n;
    in_port_t                     port;
    const char                   *host;
    memcached_st                 *mc;
    const memcached_instance_st  *inst;

    if (omcf->store_conf.len == 0) {
        return NGX_OK;
    }

    mc = memcached((char *) omcf->store_conf.data, omcf->store_conf.len);
    if (mc == NULL) {
        return NGX_ERROR;
    }

    n = ngx_min(memcached_server_count(mc), OPTOUT_MARKERS_MAX);

    for (i = 0; i < n; i++) {
        inst = memcached_server_instance_by_position(mc, i);
        host = memcached_server_name(inst);
        port = memcached_server_port(inst);

        p = ngx_pnalloc(cf->pool, NGX_HTTP_OPTOUT_SERVER_NAME);
        if (p == NULL) {
            memcached_free(mc);
            return NGX_ERROR;
        }

        m->servers[i].data = p;
        m->servers[i].len = (port ? ngx_snprintf(p,
                                 NGX_HTTP_OPTOUT_SERVER_NAME - 1,
                                 "%s:%d", host, (int) port)
                                  : ngx_snprintf(p,
                                 NGX_HTTP_OPTOUT_SERVER_NAME - 1, "%s",
                                 host))
                            - p;
        p[m->servers[i].len] = '\0';
    }

    m->nservers = n;

    memcached_free(mc);

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_optout_metrics_t *om = data;

    size_t                             size;
    ngx_str_t                         *name;
    ngx_uint_t                         i;
    ngx_slab_pool_t                   *shpool;
    ngx_http_optout_metrics_t         *m;
    ngx_http_optout_metrics_server_t  *s;

    m = shm_zone->data;
    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (om) {
        m->sh = om->sh;

    } else if (shm_zone->shm.exists) {
        m->sh = shpool->data;

    } else {
        m->sh = ngx_slab_calloc(shpool, sizeof(ngx_http_optout_metrics_sh_t));
        if (m->sh == NULL) {
            return NGX_ERROR;
        }

        size = ngx_http_optout_shard_size * NGX_HTTP_OPTOUT_METRICS_SHARDS;

        m->sh->shards = ngx_slab_calloc(shpool, size + NGX_CPU_CACHE_LINE);
        if (m->sh->shards == NULL) {
            return NGX_ERROR;
        }

        m->sh->shards = ngx_align_ptr(m->sh->shards, NGX_CPU_CACHE_LINE);

        shpool->data = m->sh;
    }

    /* a position that now names another server starts anew */

    for (i = 0; i < OPTOUT_MARKERS_MAX; i++) {
        s = &m->sh->server[i];
        name = &m->servers[i];

        if (ngx_strlen(s->name) == name->len
            && (name->len == 0
                || ngx_strncmp(s->name, name->data, name->len) == 0))
        {
            continue;
        }

        s->ops = 0;
        s->errors = 0;
        s->timeouts = 0;
        s->missing = 0;

        ngx_memzero(s->name, NGX_HTTP_OPTOUT_SERVER_NAME);

        if (name->len) {
            ngx_memcpy(s->name, name->data, name->len);
        }
    }

    /* the zone keeps its address across reloads: this never dangles */

    ngx_http_optout_metrics_sh = m->sh;

    return NGX_OK;
}


void
ngx_http_optout_metric_add(ngx_uint_t i, ngx_atomic_uint_t n)
{
    ngx_http_optout_metrics_shard_t  *shard;

    if (ngx_http_optout_metrics_sh == NULL) {
        return;
    }

    shard = (ngx_http_optout_metrics_shard_t *)
                (ngx_http_optout_metrics_sh->shards
                 + (ngx_worker % NGX_HTTP_OPTOUT_METRICS_SHARDS)
                   * ngx_http_optout_shard_size);

    (void) ngx_atomic_fetch_add(&shard->c[i], n);
}


void
ngx_http_optout_metric_set(ngx_uint_t i, ngx_atomic_uint_t v)
{
    if (ngx_http_optout_metrics_sh) {
        ngx_http_optout_metrics_sh->g[i] = v;
    }
}


/*
 * A batch answered: "ran" when its task ran (a 503 is then the store's),
 * not when it was answered on the event loop (a 503 is then a refusal).
 */

void
ngx_http_optout_metric_batch(ngx_uint_t status, ngx_uint_t ran)
{
    ngx_uint_t  outcome;

    if (status == NGX_HTTP_OK) {
        outcome = NGX_HTTP_OPTOUT_M_BATCH_ANSWERED;

    } else if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
        outcome = ran ? NGX_HTTP_OPTOUT_M_BATCH_UNAVAILABLE
                      : NGX_HTTP_OPTOUT_M_BATCH_REFUSED;

    } else if (status >= 400 && status < 500) {
        outcome = NGX_HTTP_OPTOUT_M_BATCH_INVALID;

    } else {
        outcome = NGX_HTTP_OPTOUT_M_BATCH_ERROR;
    }

    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_BATCH + outcome);
}


/* one destination of a batch; "allowed" stands unverified in fail-open */

void
ngx_http_optout_metric_dest(ngx_uint_t status, ngx_uint_t unverified)
{
    if (status == NGX_HTTP_OPTOUT_STATUS_ALLOWED && unverified) {
        status = NGX_HTTP_OPTOUT_STATUS_UNVERIFIED;
    }

    if (status <= NGX_HTTP_OPTOUT_STATUS_UNVERIFIED) {
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_BATCH_DEST + status);
    }
}


void
ngx_http_optout_metric_journal(ngx_uint_t lines, size_t bytes, ngx_uint_t ok)
{
    if (lines == 0) {
        return;
    }

    if (ok) {
        ngx_http_optout_metric_add(NGX_HTTP_OPTOUT_M_JOURNAL_LINES, lines);
        ngx_http_optout_metric_add(NGX_HTTP_OPTOUT_M_JOURNAL_BYTES, bytes);

    } else {
        ngx_http_optout_metric_add(NGX_HTTP_OPTOUT_M_JOURNAL_FAILED, lines);
    }
}


/* fdatasync(), timed into the histogram; errno is fdatasync()'s */

int
ngx_http_optout_metric_fdatasync(ngx_fd_t fd)
{
    int                               rc;
    ngx_err_t                         err;
    ngx_uint_t                        b;
    ngx_atomic_uint_t                 ns;
    struct timespec                   t0, t1;
    ngx_http_optout_metrics_shard_t  *shard;

    (void) clock_gettime(CLOCK_MONOTONIC, &t0);

    rc = fdatasync(fd);
    err = ngx_errno;

    if (ngx_http_optout_metrics_sh == NULL
        || clock_gettime(CLOCK_MONOTONIC, &t1) == -1)
    {
        ngx_set_errno(err);
        return rc;
    }

    ns = (ngx_atomic_uint_t) (t1.tv_sec - t0.tv_sec) * 1000000000
         + t1.tv_nsec - t0.tv_nsec;

    for (b = 0; b < NGX_HTTP_OPTOUT_BUCKETS; b++) {
        if (ns <= ngx_http_optout_bucket_ns[b]) {
            break;
        }
    }

    shard = (ngx_http_optout_metrics_shard_t *)
                (ngx_http_optout_metrics_sh->shards
                 + (ngx_worker % NGX_HTTP_OPTOUT_METRICS_SHARDS)
                   * ngx_http_optout_shard_size);

    (void) ngx_atomic_fetch_add(&shard->bucket[b], 1);
    (void) ngx_atomic_fetch_add(&shard->sync_ns, ns);

    ngx_set_errno(err);

    return rc;
}


/*
 * One server's part of a multi-get: its marker came back ("answered"),
 * or the multi-get ended cleanly without it (the marker is missing), or
 * it failed (rc).
 */

void
ngx_http_optout_metric_mget(ngx_uint_t server, ngx_uint_t answered, int rc)
{
    ngx_http_optout_metrics_server_t  *s;

    if (ngx_http_optout_metrics_sh == NULL || server >= OPTOUT_MARKERS_MAX) {
        return;
    }

    s = &ngx_http_optout_metrics_sh->server[server];

    (void) ngx_atomic_fetch_add(&s->ops, 1);

    if (answered) {
        s->missing = 0;
        return;
    }

    if (rc == MEMCACHED_SUCCESS) {
        s->missing = 1;
        return;
    }

    (void) ngx_atomic_fetch_add(&s->errors, 1);

    if (rc == MEMCACHED_TIMEOUT) {
        (void) ngx_atomic_fetch_add(&s->timeouts, 1);
    }
}


/* an "add" or "delete"; the answers that are not failures as in the store */

void
ngx_http_optout_metric_write(ngx_uint_t server, int rc)
{
    ngx_http_optout_metrics_server_t  *s;

    if (ngx_http_optout_metrics_sh == NULL || server >= OPTOUT_MARKERS_MAX) {
        return;
    }

    s = &ngx_http_optout_metrics_sh->server[server];

    (void) ngx_atomic_fetch_add(&s->ops, 1);

    switch (rc) {

    case MEMCACHED_SUCCESS:
    case MEMCACHED_NOTSTORED:
    case MEMCACHED_DATA_EXISTS:
    case MEMCACHED_NOTFOUND:
        return;

    case MEMCACHED_TIMEOUT:
        (void) ngx_atomic_fetch_add(&s->timeouts, 1);
        break;
    }

    (void) ngx_atomic_fetch_add(&s->errors, 1);
}


static ngx_int_t
ngx_http_optout_metrics_handler(ngx_http_request_t *r)
{
    u_char                        *p, *last;
    size_t                         size;
    ngx_int_t                      rc;
    ngx_buf_t                     *b;
    ngx_uint_t                     present;
    ngx_chain_t                    out;
    ngx_http_optout_family_t      *f;
    ngx_http_optout_metrics_t     *m;
    ngx_http_optout_main_conf_t   *omcf;
    ngx_http_optout_metrics_sh_t  *sh;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_optout_not_allowed(r);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    m = omcf->metrics;
    sh = m->sh;

    size = 16384 + m->nservers * 1024;

    b = ngx_create_temp_buf(r->pool, size);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->pos;
    last = b->end;

    for (f = ngx_http_optout_families; f->name; f++) {
        present = (f->slot == NGX_HTTP_OPTOUT_G_CACHE_ENTRIES)
                  ? (omcf->cache != NULL) : (omcf->pending != NULL);

        p = ngx_http_optout_metrics_family(p, last, sh, f, present);
    }

    p = ngx_http_optout_metrics_histogram(p, last, sh);
    p = ngx_http_optout_metrics_per_server(p, last, m);

    if (p == last) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "optout: metrics do not fit in %uz bytes", size);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = b->last - b->pos;
    ngx_str_set(&r->headers_out.content_type,
                "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* a gauge whose owner this configuration lacks is 0, not a stale value */

static u_char *
ngx_http_optout_metrics_family(u_char *p, u_char *last,
    ngx_http_optout_metrics_sh_t *sh, ngx_http_optout_family_t *f,
    ngx_uint_t present)
{
    char                            **v;
    ngx_uint_t                        i;
    ngx_http_optout_metrics_shard_t  *first;

    first = (ngx_http_optout_metrics_shard_t *) sh->shards;

    p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                     f->name, f->help, f->name, f->type);

    if (f->gauge) {
        return ngx_slprintf(p, last, "%s %uA\n", f->name,
                            present ? (ngx_atomic_uint_t) sh->g[f->slot] : 0);
    }

    if (f->label == NULL) {
        return ngx_slprintf(p, last, "%s %uA\n", f->name,
                            ngx_http_optout_metrics_sum(&first->c[f->slot]));
    }

    for (v = f->values, i = f->slot; *v; v++, i++) {
        if (**v == '\0') {
            continue;
        }

        p = ngx_slprintf(p, last, "%s{%s=\"%s\"} %uA\n", f->name, f->label,
                         *v, ngx_http_optout_metrics_sum(&first->c[i]));
    }

    return p;
}


static u_char *
ngx_http_optout_metrics_histogram(u_char *p, u_char *last,
    ngx_http_optout_metrics_sh_t *sh)
{
    ngx_uint_t                        b;
    ngx_atomic_uint_t                 n, ns;
    ngx_http_optout_metrics_shard_t  *first;

    first = (ngx_http_optout_metrics_shard_t *) sh->shards;

    p = ngx_slprintf(p, last,
                     "# HELP optout_journal_fdatasync_seconds Time "
                     "fdatasync() of journal writes took.\n"
                     "# TYPE optout_journal_fdatasync_seconds histogram\n");

    n = 0;

    for (b = 0; b < NGX_HTTP_OPTOUT_BUCKETS; b++) {
        n += ngx_http_optout_metrics_sum(&first->bucket[b]);

        p = ngx_slprintf(p, last,
                         "optout_journal_fdatasync_seconds_bucket"
                         "{le=\"%s\"} %uA\n",
                         ngx_http_optout_bucket_le[b], n);
    }

    n += ngx_http_optout_metrics_sum(&first->bucket[b]);
    ns = ngx_http_optout_metrics_sum(&first->sync_ns);

    return ngx_slprintf(p, last,
                        "optout_journal_fdatasync_seconds_bucket"
                        "{le=\"+Inf\"} %uA\n"
                        "optout_journal_fdatasync_seconds_sum %uA.%09uA\n"
                        "optout_journal_fdatasync_seconds_count %uA\n",
                        n, ns / 1000000000, ns % 1000000000, n);
}


static u_char *
ngx_http_optout_metrics_per_server(u_char *p, u_char *last,
    ngx_http_optout_metrics_t *m)
{
    ngx_uint_t                         i, k;
    ngx_atomic_uint_t                  v;
    ngx_http_optout_metrics_server_t  *s;

    static char  *names[] = {
        "optout_memcached_operations_total", "counter",
        "Requests to each memcached server: a multi-get once per server "
        "it asks, an add or delete once.",
        "optout_memcached_errors_total", "counter",
        "Requests to each memcached server that failed, timeouts included.",
        "optout_memcached_timeouts_total", "counter",
        "Requests to each memcached server that timed out.",
        "optout_memcached_marker_missing", "gauge",
        "1 when the last multi-get that asked a server ended without its "
        "marker (not seeded: run optoutctl replay), else 0."
    };

    if (m->nservers == 0) {
        return p;
    }

    for (k = 0; k < 4; k++) {
        p = ngx_slprintf(p, last, "# HELP %s %s\n# TYPE %s %s\n",
                         names[k * 3], names[k * 3 + 2], names[k * 3],
                         names[k * 3 + 1]);

        for (i = 0; i < m->nservers; i++) {
            s = &m->sh->server[i];

            switch (k) {
            case 0:
                v = s->ops;
                break;
            case 1:
                v = s->errors;
                break;
            case 2:
                v = s->timeouts;
                break;
            default:
                v = s->missing;
            }

            p = ngx_slprintf(p, last, "%s{server=\"", names[k * 3]);
            p = ngx_http_optout_metrics_label(p, last, &m->servers[i]);
            p = ngx_slprintf(p, last, "\"} %uA\n", v);
        }
    }

    return p;
}


/* a label value, escaped as the exposition format wants */

static u_char *
ngx_http_optout_metrics_label(u_char *p, u_char *last, ngx_str_t *value)
{
    u_char  *s, *end;

    end = value->data + value->len;

    for (s = value->data; s < end && p + 2 <= last; s++) {
        switch (*s) {
        case '\\':
        case '"':
            *p++ = '\\';
            *p++ = *s;
            break;
        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;
        default:
            *p++ = *s;
        }
    }

    return p;
}


static ngx_atomic_uint_t
ngx_http_optout_metrics_sum(ngx_atomic_t *first)
{
    u_char             *a;
    ngx_uint_t          i;
    ngx_atomic_uint_t   n;

    /* the same counter in every shard, a shard's size apart */

    a = (u_char *) first;
    n = 0;

    for (i = 0; i < NGX_HTTP_OPTOUT_METRICS_SHARDS; i++) {
        n += *(ngx_atomic_t *) (a + i * ngx_http_optout_shard_size);
    }

    return n;
}
