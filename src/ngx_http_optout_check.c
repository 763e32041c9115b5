
/*
 * The send-time check: "may I send to X from sender Y?".  One lookup asks
 * for the destination's account-wide rule and its rule for the sender;
 * lookups of many requests share one memcached multi-get (see the store),
 * answers are kept in the optout_cache zone, and a store that cannot tell
 * (down, slow, not seeded) never answers "allowed" unless the operator
 * chose "optout_check_fail open".  Opt-outs this node recorded that
 * memcached may not hold yet (the pending set) answer "blocked" first.
 */


#include "ngx_http_optout_module.h"


static ngx_int_t ngx_http_optout_check_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_check_input(ngx_http_request_t *r,
    ngx_http_optout_loc_conf_t *olcf, ngx_http_optout_ctx_t *ctx);
static u_char *ngx_http_optout_check_invalid(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx, u_char *p);
static ngx_int_t ngx_http_optout_check_pending(
    ngx_http_optout_main_conf_t *omcf, ngx_http_optout_ctx_t *ctx);
static void ngx_http_optout_check_allowed(ngx_http_optout_main_conf_t *omcf,
    ngx_http_optout_ctx_t *ctx);
static void ngx_http_optout_check_lookup_done(ngx_http_optout_lookup_t *lk);
static void ngx_http_optout_check_cleanup(void *data);
static void ngx_http_optout_check_finish(ngx_http_optout_ctx_t *ctx);
static ngx_int_t ngx_http_optout_check_respond(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx);


typedef struct {
    char                        *reason;
    char                        *code;
    char                        *title;
    char                        *detail;
} ngx_http_optout_invalid_t;


static ngx_http_optout_invalid_t  ngx_http_optout_invalid[] = {
    { "destination", "40001", "Invalid destination",
      "The destination must be an E.164 phone number (+ and 8 to 15 "
      "digits) or an email address." },
    { "sender", "40002", "Invalid sender",
      "The sender must be an E.164 number, a short code or an "
      "alphanumeric sender ID of up to 11 characters." },
    { "conflicting destination", "40005", "Conflicting destination",
      "The destination was given more than once; give it once." },
    { "conflicting sender", "40006", "Conflicting sender",
      "The sender was given more than once; give it once." },
    { NULL, NULL, NULL, NULL }
};


static ngx_str_t  ngx_http_optout_status_names[] = {
    ngx_null_string,
    ngx_string("allowed"),
    ngx_string("blocked"),
    ngx_string("invalid"),
    ngx_string("unavailable"),
    ngx_string("unverified")
};


char *
ngx_http_optout_check(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (olcf->check != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    olcf->check = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_optout_check_handler;

    return NGX_CONF_OK;
}


char *
ngx_http_optout_check_merge(ngx_conf_t *cf, ngx_http_optout_loc_conf_t *conf)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_optout_module);

    if (omcf->store_conf.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_check\" requires \"optout_store\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->store_mac == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_check\" requires "
                           "\"optout_store_secret\"");
        return NGX_CONF_ERROR;
    }

    if (conf->check_destination == NULL) {
        conf->check_destination = ngx_http_optout_input_default(cf, "to");
        if (conf->check_destination == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->check_sender == NULL) {
        conf->check_sender = ngx_http_optout_input_default(cf, "from");
        if (conf->check_sender == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_optout_check_handler(ngx_http_request_t *r)
{
    ngx_int_t                     rc, miss;
    ngx_uint_t                    i;
    optout_rule_t                 rule;
    ngx_pool_cleanup_t           *cln;
    ngx_http_optout_ctx_t        *ctx;
    ngx_http_optout_lookup_t     *lk;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    if (r->method == NGX_HTTP_POST) {
        return ngx_http_optout_batch_handler(r);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_optout_not_allowed(r);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_optout_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_optout_module);

    ctx->request = r;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    rc = ngx_http_optout_check_input(r, olcf, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->status == NGX_HTTP_OPTOUT_STATUS_INVALID) {
        return ngx_http_optout_check_respond(r, ctx);
    }

    /*
     * the pending set is read before the store: an opt-out it lets go of
     * meanwhile is already in memcached when the store is asked
     */

    rc = ngx_http_optout_check_pending(omcf, ctx);

    if (rc == NGX_OK) {
        return ngx_http_optout_check_respond(r, ctx);
    }

    ctx->pending_busy = (rc == NGX_BUSY);

    lk = &ctx->lookup;

    /* the cache answers when it knows every key, or one blocks */

    if (omcf->cache) {
        miss = 0;

        for (i = 0; i < lk->nkeys; i++) {
            rc = ngx_http_optout_cache_get(omcf->cache, lk->key[i],
                                           lk->key_len[i], &rule);

            if (rc == NGX_OK) {
                ctx->status = NGX_HTTP_OPTOUT_STATUS_BLOCKED;
                ctx->rule = rule;
                ctx->rule_sender = i;
                return ngx_http_optout_check_respond(r, ctx);
            }

            if (rc == NGX_AGAIN) {
                miss = 1;
            }
        }

        if (!miss) {
            ngx_http_optout_check_allowed(omcf, ctx);
            return ngx_http_optout_check_respond(r, ctx);
        }
    }

    lk->handler = ngx_http_optout_check_lookup_done;
    lk->data = ctx;

    if (ngx_http_optout_store_lookup(omcf->store, lk, olcf->check_timeout,
                                     r->connection->log)
        != NGX_OK)
    {
        ctx->status = NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE;
        ctx->reason = "the lookup could not be queued";
        return ngx_http_optout_check_respond(r, ctx);
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        ngx_http_optout_store_lookup_cancel(lk);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_optout_check_cleanup;
    cln->data = ctx;

    r->main->count++;

    return NGX_DONE;
}


/* destination, sender, namespace and store keys of a single check */

static ngx_int_t
ngx_http_optout_check_input(ngx_http_request_t *r,
    ngx_http_optout_loc_conf_t *olcf, ngx_http_optout_ctx_t *ctx)
{
    size_t                        len;
    ngx_int_t                     rc;
    ngx_str_t                     to, from;
    ngx_uint_t                    i;
    ngx_http_optout_lookup_t     *lk;
    ngx_http_optout_main_conf_t  *omcf;

    /* given twice, the backend behind a gateway may read the other one */

    rc = ngx_http_optout_input(r, olcf->check_destination, &to);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: check refused: the destination is given "
                      "more than once");

        ctx->status = NGX_HTTP_OPTOUT_STATUS_INVALID;
        ctx->reason = "conflicting destination";
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_optout_input(r, olcf->check_sender, &from);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: check refused: the sender is given "
                      "more than once");

        ctx->status = NGX_HTTP_OPTOUT_STATUS_INVALID;
        ctx->reason = "conflicting sender";
        return NGX_OK;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (optout_normalize_dest((char *) to.data, to.len, &ctx->link.dest)
        != OPTOUT_OK)
    {
        ctx->status = NGX_HTTP_OPTOUT_STATUS_INVALID;
        ctx->reason = "destination";
        return NGX_OK;
    }

    ctx->masked.data = ngx_pnalloc(r->pool, OPTOUT_MASKED_MAX + 1);
    if (ctx->masked.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->masked.len = optout_mask_dest(&ctx->link.dest,
                                       (char *) ctx->masked.data);

    if (from.len
        && optout_normalize_sender((char *) from.data, from.len,
                                   ctx->link.sender, &ctx->link.sender_len)
           != OPTOUT_OK)
    {
        ctx->status = NGX_HTTP_OPTOUT_STATUS_INVALID;
        ctx->reason = "sender";
        return NGX_OK;
    }

    rc = ngx_http_optout_namespace(r, olcf, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    lk = &ctx->lookup;

    /* key 0: account-wide; key 1: this sender */

    lk->nkeys = ctx->link.sender_len ? 2 : 1;

    for (i = 0; i < lk->nkeys; i++) {
        if (optout_store_key(omcf->store_mac,
                             (char *) omcf->store_prefix.data,
                             omcf->store_prefix.len, (char *) ctx->ns.data,
                             ctx->ns.len, ctx->link.sender,
                             i ? ctx->link.sender_len : 0, &ctx->link.dest,
                             (char *) ctx->keys[i], &len)
            != OPTOUT_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        lk->key[i] = ctx->keys[i];
        lk->key_len[i] = len;
    }

    return NGX_OK;
}


/* 400: the JSON error, and its code in X-Optout-Error for auth_request */

static u_char *
ngx_http_optout_check_invalid(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx, u_char *p)
{
    ngx_http_optout_invalid_t  *e;

    for (e = ngx_http_optout_invalid; e->reason; e++) {
        if (ngx_strcmp(e->reason, ctx->reason) == 0) {
            break;
        }
    }

    if (e->reason == NULL) {
        e = ngx_http_optout_invalid;
    }

    if (ngx_http_optout_add_header(r, "X-Optout-Error", (u_char *) e->code,
                                   ngx_strlen(e->code))
        != NGX_OK)
    {
        return NULL;
    }

    r->headers_out.status = NGX_HTTP_BAD_REQUEST;

    return ngx_sprintf(p, "{\"errors\":[{\"code\":\"%s\",\"title\":\"%s\","
                       "\"detail\":\"%s\"}]}\n", e->code, e->title,
                       e->detail);
}


/*
 * NGX_OK: a key is pending, the check answers "blocked" with its rule;
 * NGX_BUSY: the pending set overflowed; NGX_DECLINED: nothing pending.
 */

static ngx_int_t
ngx_http_optout_check_pending(ngx_http_optout_main_conf_t *omcf,
    ngx_http_optout_ctx_t *ctx)
{
    ngx_int_t                  rc, busy;
    ngx_uint_t                 i;
    optout_rule_t              rule;
    ngx_http_optout_lookup_t  *lk;

    lk = &ctx->lookup;
    busy = 0;

    for (i = 0; i < lk->nkeys; i++) {
        rc = ngx_http_optout_pending_find(omcf->pending, lk->key[i],
                                          lk->key_len[i], &rule);

        if (rc == NGX_OK) {
            ctx->status = NGX_HTTP_OPTOUT_STATUS_BLOCKED;
            ctx->rule = rule;
            ctx->rule_sender = i;
            return NGX_OK;
        }

        if (rc == NGX_BUSY) {
            busy = 1;
        }
    }

    return busy ? NGX_BUSY : NGX_DECLINED;
}


/* neither memcached nor the cache holds a rule: unless one is pending */

static void
ngx_http_optout_check_allowed(ngx_http_optout_main_conf_t *omcf,
    ngx_http_optout_ctx_t *ctx)
{
    switch (ngx_http_optout_check_pending(omcf, ctx)) {

    case NGX_OK:
        break;

    case NGX_DECLINED:
        if (!ctx->pending_busy) {
            ctx->status = NGX_HTTP_OPTOUT_STATUS_ALLOWED;
            break;
        }

        /* fall through */

    case NGX_BUSY:
        ctx->status = NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE;
        ctx->reason = "too many opt-outs recorded on this node are not "
                      "yet known to be in memcached";
        break;

    default: /* NGX_ERROR cannot happen */
        ctx->status = NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE;
        ctx->reason = "the pending set cannot be read";
    }
}


static void
ngx_http_optout_check_lookup_done(ngx_http_optout_lookup_t *lk)
{
    ngx_http_optout_ctx_t *ctx = lk->data;

    ngx_uint_t                    i;
    ngx_http_optout_main_conf_t  *omcf;

    if (lk->rc != NGX_OK) {
        ctx->status = NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE;
        ctx->reason = (lk->rc == NGX_DECLINED)
                      ? "the store is not seeded (marker missing), "
                        "run \"optoutctl replay\""
                      : lk->timedout
                      ? "memcached did not answer within optout_check_timeout"
                      : "memcached lookup failed";

        ngx_http_optout_check_finish(ctx);
        return;
    }

    ctx->status = NGX_HTTP_OPTOUT_STATUS_ALLOWED;

    for (i = 0; i < lk->nkeys; i++) {
        ngx_http_optout_cache_rule(ctx->request, lk->key[i], lk->key_len[i],
                                   lk->found[i] ? &lk->rule[i] : NULL);

        if (lk->found[i] && ctx->status != NGX_HTTP_OPTOUT_STATUS_BLOCKED) {
            ctx->status = NGX_HTTP_OPTOUT_STATUS_BLOCKED;
            ctx->rule = lk->rule[i];
            ctx->rule_sender = i;
        }
    }

    if (ctx->status == NGX_HTTP_OPTOUT_STATUS_ALLOWED) {
        omcf = ngx_http_get_module_main_conf(ctx->request,
                                             ngx_http_optout_module);
        ngx_http_optout_check_allowed(omcf, ctx);
    }

    ngx_http_optout_check_finish(ctx);
}


static void
ngx_http_optout_check_cleanup(void *data)
{
    ngx_http_optout_ctx_t *ctx = data;

    ngx_http_optout_store_lookup_cancel(&ctx->lookup);
}


static void
ngx_http_optout_check_finish(ngx_http_optout_ctx_t *ctx)
{
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = ctx->request;
    c = r->connection;

    rc = ngx_http_optout_check_respond(r, ctx);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_check_respond(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx)
{
    u_char                      *p, *since;
    size_t                       len;
    ngx_buf_t                   *b;
    ngx_str_t                   *status;
    ngx_http_optout_loc_conf_t  *olcf;
    u_char                       campaign[NGX_INT64_LEN];
    u_char                       date[sizeof("1970-01-01T00:00:00Z")];

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (ctx->status == NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE) {
        if (olcf->check_fail == NGX_HTTP_OPTOUT_FAIL_OPEN) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "optout: check unverified, allowed by "
                          "\"optout_check_fail open\": %s", ctx->reason);
            ctx->status = NGX_HTTP_OPTOUT_STATUS_UNVERIFIED;

        } else {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "optout: check denied as unavailable: %s",
                          ctx->reason);
        }
    }

    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_CHECK + ctx->status);

    status = &ngx_http_optout_status_names[ctx->status];

    if (ngx_http_optout_add_header(r, "X-Optout-Status", status->data,
                                     status->len)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->status == NGX_HTTP_OPTOUT_STATUS_ALLOWED
        || ctx->status == NGX_HTTP_OPTOUT_STATUS_UNVERIFIED)
    {
        r->headers_out.status = NGX_HTTP_NO_CONTENT;
        r->headers_out.content_length_n = 0;
        r->header_only = 1;

        return ngx_http_send_header(r);
    }

    b = ngx_create_temp_buf(r->pool, 512);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    switch (ctx->status) {

    case NGX_HTTP_OPTOUT_STATUS_BLOCKED:
        len = ngx_sprintf(campaign, "%uL", ctx->rule.campaign) - campaign;
        since = ngx_http_optout_since(date, ctx->rule.time);

        if (ngx_http_optout_add_header(r, "X-Optout-Campaign", campaign,
                                         len)
               != NGX_OK
            || ngx_http_optout_add_header(r, "X-Optout-Scope",
                   (u_char *) (ctx->rule_sender ? "sender" : "account"),
                   ctx->rule_sender ? 6 : 7)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        r->headers_out.status = NGX_HTTP_FORBIDDEN;
        p = ngx_sprintf(p, "{\"errors\":[{\"code\":\"40300\","
                        "\"title\":\"Blocked due to opt-out\","
                        "\"detail\":\"The destination opted out of "
                        "messages %s; it must not be messaged.\","
                        "\"campaign\":\"%*s\",\"since\":\"%*s\","
                        "\"scope\":\"%s\"}]}\n",
                        ctx->rule_sender ? "from this sender"
                                         : "from this account",
                        len, campaign, since - date, date,
                        ctx->rule_sender ? "sender" : "account");
        break;

    case NGX_HTTP_OPTOUT_STATUS_INVALID:
        p = ngx_http_optout_check_invalid(r, ctx, p);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        break;

    default: /* NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE */
        r->headers_out.status = NGX_HTTP_FORBIDDEN;
        p = ngx_sprintf(p, "{\"errors\":[{\"code\":\"40301\","
                        "\"title\":\"Opt-out store unavailable\","
                        "\"detail\":\"The opt-out rules could not be read; "
                        "sending is denied until they can.\"}]}\n");
        break;
    }

    b->last = p;

    return ngx_http_optout_send_json(r, r->headers_out.status, b);
}


