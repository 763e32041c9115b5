
/*
 * The management API location (optout_api): POST adds opt-outs
 * (api_add.c), GET looks up the rules of one destination, DELETE removes
 * the rule of one scope (an opt-in).  Look-ups and removals ask memcached
 * through the shared multi-get with markers, so "no rule" is answered
 * only when every server that holds a key answered completely.
 */


#include "ngx_http_optout_api.h"


#define NGX_HTTP_OPTOUT_API_LINE  2048


typedef struct {
    char                        *code;
    char                        *title;
    char                        *detail;
} ngx_http_optout_api_invalid_t;


static ngx_http_optout_api_invalid_t  ngx_http_optout_api_invalid[] = {
    { "40001", "Invalid destination",
      "The destination must be an E.164 phone number (+ and 8 to 15 "
      "digits) or an email address." },
    { "40002", "Invalid sender",
      "The sender must be an E.164 number, a short code or an "
      "alphanumeric sender ID of up to 11 characters." },
    { "40005", "Conflicting destination",
      "The destination was given more than once; give it once." },
    { "40006", "Conflicting sender",
      "The sender was given more than once; give it once." }
};


typedef struct {
    ngx_http_optout_ctx_t        base;      /* the module's request ctx */
    ngx_uint_t                   remove;
    ngx_uint_t                   known;     /* the rule removed */
    ngx_uint_t                   pending[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    optout_rule_t                prule[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
} ngx_http_optout_api_ctx_t;


static ngx_int_t ngx_http_optout_api_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_api_input(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx, ngx_http_optout_api_invalid_t **inv);
static ngx_int_t ngx_http_optout_api_lookup(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx);
static void ngx_http_optout_api_looked(ngx_http_optout_lookup_t *lk);
static void ngx_http_optout_api_cleanup(void *data);
static ngx_int_t ngx_http_optout_api_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx);
static ngx_int_t ngx_http_optout_api_found(ngx_http_optout_api_ctx_t *ctx,
    ngx_uint_t i, optout_rule_t *rule);
static ngx_int_t ngx_http_optout_api_lookup_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx);
static ngx_int_t ngx_http_optout_api_remove(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx);
static void ngx_http_optout_api_removed(ngx_http_optout_record_t *rec);
static ngx_int_t ngx_http_optout_api_removed_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx);


char *
ngx_http_optout_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (olcf->api != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    olcf->api = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_optout_api_handler;

    return NGX_CONF_OK;
}


char *
ngx_http_optout_api_merge(ngx_conf_t *cf, ngx_http_optout_loc_conf_t *conf)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_optout_module);

    if (omcf->store_conf.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_api\" requires \"optout_store\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->store_mac == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_api\" requires \"optout_store_secret\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->journal_file == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_api\" requires \"optout_journal\"");
        return NGX_CONF_ERROR;
    }

    if (conf->check) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_api\" and \"optout_check\" cannot be "
                           "in the same location");
        return NGX_CONF_ERROR;
    }

    conf->api_destination = ngx_http_optout_input_default(cf, "destination");
    if (conf->api_destination == NULL) {
        return NGX_CONF_ERROR;
    }

    conf->api_sender = ngx_http_optout_input_default(cf, "sender");
    if (conf->api_sender == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_optout_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_optout_ctx_t          *base;
    ngx_http_optout_api_ctx_t      *ctx;
    ngx_http_optout_api_invalid_t  *inv;

    static u_char  methods[] = "GET, HEAD, POST, DELETE";

    if (r->method == NGX_HTTP_POST) {
        return ngx_http_optout_api_add_handler(r);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_DELETE))) {
        if (ngx_http_optout_add_header(r, "Allow", methods,
                                       sizeof(methods) - 1)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_optout_api_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    base = &ctx->base;
    base->request = r;
    ctx->remove = (r->method == NGX_HTTP_DELETE);

    ngx_http_set_ctx(r, base, ngx_http_optout_module);

    inv = NULL;

    rc = ngx_http_optout_api_input(r, ctx, &inv);
    if (rc != NGX_OK) {
        return rc;
    }

    if (inv) {
        return ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST, inv->code,
                                         inv->title, inv->detail);
    }

    return ngx_http_optout_api_lookup(r, ctx);
}


/*
 * The rules of the keys: pending on this node, then memcached through
 * the multi-get that the checks in flight share
 */

static ngx_int_t
ngx_http_optout_api_lookup(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx)
{
    ngx_int_t                     rc;
    ngx_uint_t                    i;
    ngx_pool_cleanup_t           *cln;
    ngx_http_optout_ctx_t        *base;
    ngx_http_optout_lookup_t     *lk;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    base = &ctx->base;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);
    lk = &base->lookup;

    for (i = 0; i < lk->nkeys; i++) {
        ctx->pending[i] = (ngx_http_optout_pending_find(omcf->pending,
                                                        lk->key[i],
                                                        lk->key_len[i],
                                                        &ctx->prule[i])
                           == NGX_OK);
    }

    lk->handler = ngx_http_optout_api_looked;
    lk->data = ctx;

    if (ngx_http_optout_store_lookup(omcf->store, lk, olcf->check_timeout,
                                     r->connection->log)
        != NGX_OK)
    {
        lk->rc = NGX_ERROR;

        rc = ngx_http_optout_api_answer(r, ctx);
        if (rc == NGX_DONE) {
            r->main->count++;
        }

        return rc;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_http_optout_store_lookup_cancel(lk);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_optout_api_cleanup;
    cln->data = ctx;

    r->main->count++;

    return NGX_DONE;
}


/*
 * destination, sender, namespace and keys: a look-up asks for the
 * account-wide rule and the sender's; a removal for the one of its scope
 */

static ngx_int_t
ngx_http_optout_api_input(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx, ngx_http_optout_api_invalid_t **inv)
{
    ngx_int_t                    rc;
    ngx_str_t                    to, from;
    ngx_uint_t                   i, sender;
    ngx_http_optout_ctx_t       *base;
    ngx_http_optout_lookup_t    *lk;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);
    base = &ctx->base;

    rc = ngx_http_optout_input(r, olcf->api_destination, &to);

    if (rc == NGX_DECLINED) {
        *inv = &ngx_http_optout_api_invalid[2];
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_optout_input(r, olcf->api_sender, &from);

    if (rc == NGX_DECLINED) {
        *inv = &ngx_http_optout_api_invalid[3];
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (optout_normalize_dest((char *) to.data, to.len, &base->link.dest)
        != OPTOUT_OK)
    {
        *inv = &ngx_http_optout_api_invalid[0];
        return NGX_OK;
    }

    base->masked.data = ngx_pnalloc(r->pool, OPTOUT_MASKED_MAX + 1);
    if (base->masked.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    base->masked.len = optout_mask_dest(&base->link.dest,
                                        (char *) base->masked.data);

    if (from.len
        && optout_normalize_sender((char *) from.data, from.len,
                                   base->link.sender,
                                   &base->link.sender_len)
           != OPTOUT_OK)
    {
        *inv = &ngx_http_optout_api_invalid[1];
        return NGX_OK;
    }

    rc = ngx_http_optout_namespace(r, olcf, base);
    if (rc != NGX_OK) {
        return rc;
    }

    lk = &base->lookup;
    lk->nkeys = (base->link.sender_len && !ctx->remove) ? 2 : 1;

    for (i = 0; i < lk->nkeys; i++) {
        sender = ctx->remove ? (base->link.sender_len != 0) : i;

        if (ngx_http_optout_rule_key(r, &base->ns, base->link.sender,
                                     sender ? base->link.sender_len : 0,
                                     &base->link.dest, base->keys[i],
                                     &lk->key_len[i])
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        lk->key[i] = base->keys[i];
    }

    return NGX_OK;
}


static void
ngx_http_optout_api_looked(ngx_http_optout_lookup_t *lk)
{
    ngx_http_optout_api_ctx_t *ctx = lk->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->base.request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    rc = ngx_http_optout_api_answer(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_optout_api_cleanup(void *data)
{
    ngx_http_optout_api_ctx_t *ctx = data;

    ngx_http_optout_store_lookup_cancel(&ctx->base.lookup);
}


static ngx_int_t
ngx_http_optout_api_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx)
{
    if (ctx->base.lookup.rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "optout: api %s: memcached could not answer "
                      "completely", ctx->remove ? "removal" : "look-up");
    }

    if (ctx->remove) {
        return ngx_http_optout_api_remove(r, ctx);
    }

    return ngx_http_optout_api_lookup_answer(r, ctx);
}


/* NGX_OK: key i has a rule (pending on this node, or in memcached) */

static ngx_int_t
ngx_http_optout_api_found(ngx_http_optout_api_ctx_t *ctx, ngx_uint_t i,
    optout_rule_t *rule)
{
    ngx_http_optout_lookup_t  *lk;

    lk = &ctx->base.lookup;

    if (lk->rc == NGX_OK && lk->found[i]) {
        *rule = lk->rule[i];
        return NGX_OK;
    }

    if (ctx->pending[i]) {
        *rule = ctx->prule[i];
        return NGX_OK;
    }

    return (lk->rc == NGX_OK) ? NGX_DECLINED : NGX_ERROR;
}


static ngx_int_t
ngx_http_optout_api_lookup_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx)
{
    ngx_int_t                  rc;
    ngx_uint_t                 i, n;
    optout_rule_t              rule;
    ngx_http_optout_ctx_t     *base;
    ngx_http_optout_out_t      o;

    base = &ctx->base;

    ngx_memzero(&o, sizeof(ngx_http_optout_out_t));

    ngx_http_optout_out(&o, "{\"destination\":\"", 16);
    ngx_http_optout_out_json(&o, base->masked.data, base->masked.len,
                             base->masked.len);
    ngx_http_optout_out(&o, "\",\"rules\":[", 11);

    n = 0;

    for (i = 0; i < base->lookup.nkeys; i++) {
        rc = ngx_http_optout_api_found(ctx, i, &rule);

        if (rc == NGX_ERROR) {
            free(o.data);
            return ngx_http_optout_api_error(r,
                       NGX_HTTP_SERVICE_UNAVAILABLE, "40301",
                       "Opt-out store unavailable",
                       "The opt-out rules could not be read; retry later.");
        }

        if (rc != NGX_OK) {
            continue;
        }

        if (n++) {
            ngx_http_optout_out(&o, ",", 1);
        }

        ngx_http_optout_api_rule_out(&o, &rule, base->link.sender,
                                     i ? base->link.sender_len : 0);
    }

    ngx_http_optout_out(&o, "]}\n", 3);

    if (n == 0) {
        free(o.data);
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_API
                                   + NGX_HTTP_OPTOUT_M_API_NOT_FOUND);
        return ngx_http_optout_api_error(r, NGX_HTTP_NOT_FOUND, "40400",
                   "No rule", "No opt-out rule applies to this "
                   "destination.");
    }

    return ngx_http_optout_api_send_out(r, NGX_HTTP_OK, &o);
}


/* the opt-in: nothing to remove is a 404 and records nothing */

static ngx_int_t
ngx_http_optout_api_remove(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx)
{
    u_char                    *line;
    ngx_int_t                  rc;
    ngx_time_t                *tp;
    optout_journal_rec_t       rec;
    ngx_http_optout_ctx_t     *base;
    ngx_http_optout_change_t  *ch;

    base = &ctx->base;
    ch = &base->change;

    rc = ngx_http_optout_api_found(ctx, 0, &base->rule);

    if (rc == NGX_DECLINED) {
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_API
                                   + NGX_HTTP_OPTOUT_M_API_NOT_FOUND);
        return ngx_http_optout_api_error(r, NGX_HTTP_NOT_FOUND, "40400",
                   "No rule", "No opt-out rule of this scope exists.");
    }

    /* the store could not tell: remove it anyway, the journal holds it */

    ctx->known = (rc == NGX_OK);

    ch->optin = 1;
    ch->key_len = base->lookup.key_len[0];
    ngx_memcpy(ch->key, base->keys[0], ch->key_len);

    tp = ngx_timeofday();

    ngx_memzero(&rec, sizeof(optout_journal_rec_t));

    rec.time = tp->sec + tp->msec / 1000.0;
    rec.action = "optin";
    rec.ns = (char *) base->ns.data;
    rec.ns_len = base->ns.len;
    rec.dest = &base->link.dest;
    rec.sender = base->link.sender_len ? base->link.sender : NULL;
    rec.sender_len = base->link.sender_len;
    rec.source = OPTOUT_SOURCE_API;

    ngx_http_optout_rule_who(r, &rec);

    line = ngx_pnalloc(r->pool, NGX_HTTP_OPTOUT_API_LINE);
    if (line == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    base->record.len = optout_journal_format(&rec, (char *) line,
                                             NGX_HTTP_OPTOUT_API_LINE);
    if (base->record.len == 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "optout: journal line too long");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    base->record.request = r;
    base->record.changes = ch;
    base->record.n = 1;
    base->record.lines = line;
    base->record.handler = ngx_http_optout_api_removed;
    base->record.data = ctx;

    if (ngx_http_optout_rule_record(&base->record) != NGX_OK) {
        return ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                         "50000", "Journal write failed",
                                         "The opt-in was not recorded.");
    }

    /* the request's count from the handler is still held */

    return NGX_DONE;
}


static void
ngx_http_optout_api_removed(ngx_http_optout_record_t *rec)
{
    ngx_http_optout_api_ctx_t *ctx = rec->data;

    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = rec->request;
    c = r->connection;

    if (rec->rc != NGX_OK) {
        ngx_http_finalize_request(r,
            ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                      "50000", "Journal write failed",
                                      "The opt-in was not recorded."));

    } else {
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_API
                                   + NGX_HTTP_OPTOUT_M_API_REMOVED);
        ngx_http_finalize_request(r,
                                  ngx_http_optout_api_removed_answer(r, ctx));
    }

    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_api_removed_answer(ngx_http_request_t *r,
    ngx_http_optout_api_ctx_t *ctx)
{
    ngx_http_optout_ctx_t  *base;
    ngx_http_optout_out_t   o;

    base = &ctx->base;

    ngx_memzero(&o, sizeof(ngx_http_optout_out_t));

    ngx_http_optout_out(&o, "{\"removed\":", 11);

    if (ctx->known) {
        ngx_http_optout_api_rule_out(&o, &base->rule, base->link.sender,
                                     base->link.sender_len);

    } else if (base->link.sender_len) {
        ngx_http_optout_out(&o, "{\"scope\":\"sender\",\"sender\":\"", 28);
        ngx_http_optout_out_json(&o, (u_char *) base->link.sender,
                                 base->link.sender_len,
                                 base->link.sender_len);
        ngx_http_optout_out(&o, "\"}", 2);

    } else {
        ngx_http_optout_out(&o, "{\"scope\":\"account\"}", 19);
    }

    ngx_http_optout_out(&o, "}\n", 2);

    return ngx_http_optout_api_send_out(r, NGX_HTTP_OK, &o);
}
