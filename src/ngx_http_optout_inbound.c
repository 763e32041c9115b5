
/*
 * The inbound keyword location: a provider's inbound-message webhook.  In
 * the precontent phase the body is read (and preserved, as the mirror
 * module does, so that proxy_pass or mirror forward it untouched), the
 * signature verified, the messages parsed and matched; a STOP records an
 * opt-out and a START an opt-in through the rule write path, each after
 * a look-up that decides whether a confirmation is due (at most one).
 * Then the phases go on: the location's proxy_pass, or the content
 * handler here that answers the provider (TwiML or JSON).
 */


#include "ngx_http_optout_inbound.h"


#define NGX_HTTP_OPTOUT_IN_LINE_MAX     2048
#define NGX_HTTP_OPTOUT_IN_CAMPAIGN_MAX ((1ULL << 35) - 1)   /* as the API */

/* a message refused: not HTTP statuses, not NGX_* codes */
#define NGX_HTTP_OPTOUT_IN_EFROM        1
#define NGX_HTTP_OPTOUT_IN_ETO          2

#define NGX_HTTP_OPTOUT_IN_ALLOWED      0
#define NGX_HTTP_OPTOUT_IN_BLOCKED      1
#define NGX_HTTP_OPTOUT_IN_UNKNOWN      2


static ngx_int_t ngx_http_optout_inbound_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_inbound_not_allowed(ngx_http_request_t *r);
static void ngx_http_optout_inbound_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_inbound_start(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static ngx_int_t ngx_http_optout_inbound_read(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static ngx_int_t ngx_http_optout_inbound_verified(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static ngx_int_t ngx_http_optout_inbound_campaign_value(
    ngx_http_request_t *r, ngx_http_optout_inbound_ctx_t *ctx);
static ngx_int_t ngx_http_optout_inbound_match(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, optout_in_msg_t *in,
    ngx_http_optout_in_msg_t *m);
static ngx_int_t ngx_http_optout_inbound_key(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, optout_in_msg_t *in,
    ngx_http_optout_in_msg_t *m);
static ngx_int_t ngx_http_optout_inbound_lookup(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static void ngx_http_optout_inbound_looked(ngx_http_optout_lookup_t *lk);
static void ngx_http_optout_inbound_state(ngx_http_optout_inbound_ctx_t *ctx,
    ngx_http_optout_in_msg_t *m, ngx_uint_t state);
static ngx_int_t ngx_http_optout_inbound_record(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static size_t ngx_http_optout_inbound_line(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, ngx_http_optout_in_msg_t *m,
    double now, u_char *line);
static void ngx_http_optout_inbound_recorded(ngx_http_optout_record_t *rec);
static ngx_int_t ngx_http_optout_inbound_done(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static ngx_int_t ngx_http_optout_inbound_answer(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx);
static size_t ngx_http_optout_inbound_json(ngx_http_optout_in_msg_t *m,
    u_char *p, size_t size);
static void ngx_http_optout_inbound_go_on(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_optout_inbound_content(ngx_http_request_t *r);
static void ngx_http_optout_inbound_cleanup(void *data);


char *
ngx_http_optout_inbound(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (olcf->inbound->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    olcf->inbound->enable = 1;
    olcf->inbound->file = cf->conf_file->file.name.data;
    olcf->inbound->line = cf->conf_file->line;

    /* proxy_pass after this directive takes the content phase over */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == NULL) {
        clcf->handler = ngx_http_optout_inbound_content;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_optout_inbound_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_optout_inbound_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_inbound_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_pool_cleanup_t             *cln;
    ngx_http_optout_loc_conf_t     *olcf;
    ngx_http_optout_inbound_ctx_t  *ctx;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (!olcf->inbound->enable) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_optout_module);

    if (ctx) {
        return ctx->status;
    }

    if (r->method != NGX_HTTP_POST) {
        ngx_http_finalize_request(r, ngx_http_optout_inbound_not_allowed(r));
        return NGX_DONE;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_optout_inbound_ctx_t));
    if (ctx == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_optout_inbound_cleanup;
    cln->data = ctx;

    ctx->status = NGX_DONE;
    ctx->base.request = r;

    ngx_http_set_ctx(r, ctx, ngx_http_optout_module);

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_optout_inbound_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


static ngx_int_t
ngx_http_optout_inbound_not_allowed(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_optout_add_header(r, "Allow", (u_char *) "POST", 4)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_optout_api_error(r, NGX_HTTP_NOT_ALLOWED, "40500",
                                     "Method not allowed",
                                     "Inbound webhooks are POST requests.");
}


static void
ngx_http_optout_inbound_body(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_optout_inbound_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_optout_module);

    r->preserve_body = 1;

    rc = ngx_http_optout_inbound_start(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_optout_inbound_go_on(r, ctx, rc);
    }
}


/* NGX_DONE: waiting; NGX_DECLINED: acted, go on; else a status to send */

static ngx_int_t
ngx_http_optout_inbound_start(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_uint_t                   level;
    optout_wh_rc_t               wrc;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    rc = ngx_http_optout_inbound_read(r, ctx);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: inbound body larger than "
                      "client_body_buffer_size");

        return ngx_http_optout_api_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                         "41310", "Too large",
                                         "The body does not fit in "
                                         "client_body_buffer_size.");
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (olcf->inbound->verify == NULL) {
        return ngx_http_optout_inbound_verified(r, ctx);
    }

    wrc = ngx_http_optout_inbound_verify(r, olcf->inbound->verify,
                                         &ctx->body);

    if (wrc == OPTOUT_WH_OK) {
        return ngx_http_optout_inbound_verified(r, ctx);
    }

    level = (wrc == OPTOUT_WH_ERROR) ? NGX_LOG_ERR : NGX_LOG_INFO;

    ngx_log_error(level, r->connection->log, 0,
                  "optout: inbound webhook refused: %s",
                  optout_wh_strerror(wrc));

    switch (optout_wh_http_status(wrc)) {

    case NGX_HTTP_UNAUTHORIZED:
        return ngx_http_optout_api_error(r, NGX_HTTP_UNAUTHORIZED, "40110",
                                         "Unsigned webhook",
                                         "The signature is missing or "
                                         "malformed.");

    case NGX_HTTP_FORBIDDEN:
        return ngx_http_optout_api_error(r, NGX_HTTP_FORBIDDEN, "40310",
                                         "Forged webhook",
                                         "The signature does not verify, "
                                         "or it is too old.");

    case NGX_HTTP_BAD_REQUEST:
        return ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST, "40010",
                                         "Malformed body",
                                         "The form body is not well "
                                         "formed.");

    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        return ngx_http_optout_api_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                         "41310", "Too large",
                                         "The body has too many "
                                         "parameters.");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


/* the body, in memory as one string; NGX_DECLINED: it is in a file */

static ngx_int_t
ngx_http_optout_inbound_read(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    size_t        len;
    u_char       *p;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    len = 0;

    if (r->request_body == NULL) {
        goto empty;
    }

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (b->in_file || r->request_body->temp_file) {
            return NGX_DECLINED;
        }

        len += b->last - b->pos;
    }

empty:

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body.data = p;
    ctx->body.len = len;

    if (r->request_body) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            p = ngx_cpymem(p, cl->buf->pos, cl->buf->last - cl->buf->pos);
        }
    }

    *p = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_inbound_verified(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    int                          rc;
    char                         err[256];
    size_t                       i;
    ngx_int_t                    nrc;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    err[0] = '\0';

    rc = optout_in_parse(olcf->inbound->format, (char *) ctx->body.data,
                         ctx->body.len, OPTOUT_IN_MSGS_MAX, &ctx->msgs,
                         err, sizeof(err));

    if (rc == OPTOUT_IN_MALFORMED || rc == OPTOUT_IN_TOOMANY) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: invalid inbound webhook: %s", err);

        if (rc == OPTOUT_IN_TOOMANY) {
            return ngx_http_optout_api_error(r,
                                         NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                         "41310", "Too many messages",
                                         "At most 100 messages are taken "
                                         "in one request.");
        }

        return ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST, "40010",
                                         "Malformed body",
                                         "The body is not a webhook of the "
                                         "configured format.");
    }

    if (rc != OPTOUT_IN_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    nrc = ngx_http_optout_namespace(r, olcf, &ctx->base);
    if (nrc != NGX_OK) {
        return nrc;
    }

    nrc = ngx_http_optout_inbound_campaign_value(r, ctx);
    if (nrc != NGX_OK) {
        return nrc;
    }

    ctx->m = ngx_pcalloc(r->pool, (ctx->msgs.n + 1)
                                  * sizeof(ngx_http_optout_in_msg_t));
    if (ctx->m == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ctx->msgs.n; i++) {
        nrc = ngx_http_optout_inbound_match(r, ctx, &ctx->msgs.msgs[i],
                                            &ctx->m[i]);

        if (nrc == NGX_HTTP_OPTOUT_IN_EFROM) {
            return ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST,
                                             "40001", "Invalid from",
                                             "The sender of a message is "
                                             "not a phone number.");
        }

        if (nrc == NGX_HTTP_OPTOUT_IN_ETO) {
            return ngx_http_optout_api_error(r, NGX_HTTP_BAD_REQUEST,
                                             "40002", "Invalid to",
                                             "The number or sender id a "
                                             "message was sent to is not "
                                             "valid.");
        }

        if (nrc != NGX_OK) {
            return nrc;
        }
    }

    return ngx_http_optout_inbound_lookup(r, ctx);
}


static ngx_int_t
ngx_http_optout_inbound_campaign_value(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    ngx_str_t                    v;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (olcf->inbound->campaign == NULL) {
        return NGX_OK;
    }

    if (ngx_http_complex_value(r, olcf->inbound->campaign, &v) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (v.len == 0) {
        return NGX_OK;
    }

    if (optout_parse_u64((char *) v.data, v.len,
                         NGX_HTTP_OPTOUT_IN_CAMPAIGN_MAX, &ctx->campaign)
        != 0)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "optout: invalid campaign \"%V\" from "
                      "\"optout_inbound_campaign\"", &v);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/*
 * The country of a phone number picks its keywords; a message from
 * anything else is matched on the keywords for all countries and acted
 * upon only if it asks for help.
 */

static ngx_int_t
ngx_http_optout_inbound_match(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, optout_in_msg_t *in,
    ngx_http_optout_in_msg_t *m)
{
    int                          rc;
    ngx_uint_t                   phone;
    optout_kw_match_t            match;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    ngx_memzero(&match, sizeof(optout_kw_match_t));

    phone = (optout_normalize_dest(in->from, in->from_len, &m->dest)
             == OPTOUT_OK && m->dest.type == OPTOUT_DEST_PHONE);

    if (phone) {
        (void) optout_kw_country(m->dest.data, m->dest.len, m->country);
    }

    rc = optout_kw_match(olcf->inbound->kw, olcf->inbound->match,
                         m->country, in->text, in->text_len, &match);

    if (rc == OPTOUT_KW_ENOMEM) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    m->op = rc;
    m->keyword = match.keyword;

    if (m->op == OPTOUT_KW_STOP || m->op == OPTOUT_KW_START) {

        if (!phone) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "optout: invalid inbound \"from\"");
            return NGX_HTTP_OPTOUT_IN_EFROM;
        }

        return ngx_http_optout_inbound_key(r, ctx, in, m);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_inbound_key(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, optout_in_msg_t *in,
    ngx_http_optout_in_msg_t *m)
{
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (olcf->inbound->scope == NGX_HTTP_OPTOUT_SCOPE_SENDER
        && optout_normalize_sender(in->to, in->to_len, m->sender,
                                   &m->sender_len)
           != OPTOUT_OK)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: invalid inbound \"to\"");
        return NGX_HTTP_OPTOUT_IN_ETO;
    }

    if (ngx_http_optout_rule_key(r, &ctx->base.ns,
                                 m->sender_len ? m->sender : NULL,
                                 m->sender_len, &m->dest, m->key,
                                 &m->key_len)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/*
 * One look-up at a time, for the next STOP or START whose rule this
 * request has not changed already: is a confirmation due?
 */

static ngx_int_t
ngx_http_optout_inbound_lookup(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    ngx_uint_t                    j;
    ngx_http_optout_in_msg_t     *m;
    ngx_http_optout_lookup_t     *lk;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    for ( /* void */ ; ctx->next < ctx->msgs.n; ctx->next++) {
        m = &ctx->m[ctx->next];

        if (m->op != OPTOUT_KW_STOP && m->op != OPTOUT_KW_START) {
            continue;
        }

        for (j = ctx->next; j--; /* void */ ) {
            if (ctx->m[j].key_len == m->key_len
                && ngx_memcmp(ctx->m[j].key, m->key, m->key_len) == 0)
            {
                break;
            }
        }

        if (j != (ngx_uint_t) -1) {
            ngx_http_optout_inbound_state(ctx, m,
                                          ctx->m[j].op == OPTOUT_KW_STOP
                                          ? NGX_HTTP_OPTOUT_IN_BLOCKED
                                          : NGX_HTTP_OPTOUT_IN_ALLOWED);
            continue;
        }

        omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
        olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

        lk = &ctx->lookup;

        ngx_memzero(lk, sizeof(ngx_http_optout_lookup_t));

        lk->nkeys = 1;
        lk->key[0] = m->key;
        lk->key_len[0] = m->key_len;
        lk->handler = ngx_http_optout_inbound_looked;
        lk->data = ctx;

        /* one failure is enough: the next ones would wait as long */

        if (ctx->store_failed
            || ngx_http_optout_store_lookup(omcf->store, lk,
                                            olcf->check_timeout,
                                            r->connection->log)
               != NGX_OK)
        {
            lk->rc = NGX_ERROR;
            ngx_http_optout_inbound_looked(lk);
            continue;
        }

        ctx->looking = 1;

        return NGX_DONE;
    }

    return ngx_http_optout_inbound_record(r, ctx);
}


/* also called before the look-up is in flight: it then only decides */

static void
ngx_http_optout_inbound_looked(ngx_http_optout_lookup_t *lk)
{
    ngx_http_optout_inbound_ctx_t *ctx = lk->data;

    ngx_int_t                     rc;
    ngx_uint_t                    state, inflight;
    optout_rule_t                 rule;
    ngx_connection_t             *c;
    ngx_http_request_t           *r;
    ngx_http_optout_in_msg_t     *m;
    ngx_http_optout_main_conf_t  *omcf;

    r = ctx->base.request;
    c = r->connection;
    m = &ctx->m[ctx->next];
    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    inflight = ctx->looking;
    ctx->looking = 0;

    /* a rule found is found, marker or not */

    if (lk->rc != NGX_ERROR && lk->found[0]) {
        state = NGX_HTTP_OPTOUT_IN_BLOCKED;

    } else if (ngx_http_optout_pending_find(omcf->pending, m->key, m->key_len,
                                            &rule)
               == NGX_OK)
    {
        state = NGX_HTTP_OPTOUT_IN_BLOCKED;

    } else {
        state = (lk->rc == NGX_OK) ? NGX_HTTP_OPTOUT_IN_ALLOWED
                                   : NGX_HTTP_OPTOUT_IN_UNKNOWN;
    }

    ngx_http_optout_inbound_state(ctx, m, state);

    if (lk->rc == NGX_ERROR) {
        ctx->store_failed = 1;
    }

    if (!inflight) {
        return;
    }

    ngx_http_set_log_request(c->log, r);

    ctx->next++;

    rc = ngx_http_optout_inbound_lookup(r, ctx);

    if (rc != NGX_DONE) {
        ngx_http_optout_inbound_go_on(r, ctx, rc);
    }

    ngx_http_run_posted_requests(c);
}


/* a failed look-up sends the confirmation: better twice than never */

static void
ngx_http_optout_inbound_state(ngx_http_optout_inbound_ctx_t *ctx,
    ngx_http_optout_in_msg_t *m, ngx_uint_t state)
{
    if (m->op == OPTOUT_KW_STOP) {
        m->confirm = (state != NGX_HTTP_OPTOUT_IN_BLOCKED);

    } else {
        m->confirm = (state != NGX_HTTP_OPTOUT_IN_ALLOWED);
    }

    m->absent = (state == NGX_HTTP_OPTOUT_IN_ALLOWED);
}


/* every STOP and START is recorded, a repeated one too */

static ngx_int_t
ngx_http_optout_inbound_record(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    size_t                     len;
    double                     now;
    u_char                    *lines;
    ngx_uint_t                 i, n;
    ngx_time_t                *tp;
    ngx_http_optout_in_msg_t  *m;
    ngx_http_optout_change_t  *ch;

    for (n = 0, i = 0; i < ctx->msgs.n; i++) {
        m = &ctx->m[i];

        if (m->op == OPTOUT_KW_STOP || m->op == OPTOUT_KW_START) {
            n++;
        }
    }

    if (n == 0) {
        return ngx_http_optout_inbound_done(r, ctx);
    }

    ctx->changes = ngx_pcalloc(r->pool, n * sizeof(ngx_http_optout_change_t));
    lines = ngx_pnalloc(r->pool, n * NGX_HTTP_OPTOUT_IN_LINE_MAX);

    if (ctx->changes == NULL || lines == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tp = ngx_timeofday();
    now = tp->sec + tp->msec / 1000.0;

    ctx->record.lines = lines;

    for (i = 0; i < ctx->msgs.n; i++) {
        m = &ctx->m[i];

        if (m->op != OPTOUT_KW_STOP && m->op != OPTOUT_KW_START) {
            continue;
        }

        len = ngx_http_optout_inbound_line(r, ctx, m, now, lines);
        if (len == 0) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        lines += len;

        ch = &ctx->changes[ctx->nchanges++];

        ch->optin = (m->op == OPTOUT_KW_START);
        ch->absent = m->absent;
        ch->rule.campaign = ctx->campaign;
        ch->rule.time = tp->sec;
        ch->rule.source = OPTOUT_SOURCE_KEYWORD;
        ch->rule.channel = OPTOUT_DEST_PHONE;
        ch->key_len = m->key_len;
        ngx_memcpy(ch->key, m->key, m->key_len);
    }

    ctx->record.request = r;
    ctx->record.changes = ctx->changes;
    ctx->record.n = ctx->nchanges;
    ctx->record.len = lines - ctx->record.lines;
    ctx->record.handler = ngx_http_optout_inbound_recorded;
    ctx->record.data = ctx;

    if (ngx_http_optout_rule_record(&ctx->record) != NGX_OK) {
        return ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                         "50000", "Journal write failed",
                                         "Nothing was recorded.");
    }

    return NGX_DONE;
}


static size_t
ngx_http_optout_inbound_line(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, ngx_http_optout_in_msg_t *m,
    double now, u_char *line)
{
    size_t                len;
    optout_journal_rec_t  rec;

    ngx_memzero(&rec, sizeof(optout_journal_rec_t));

    rec.time = now;
    rec.action = (m->op == OPTOUT_KW_STOP) ? "optout" : "optin";
    rec.ns = (char *) ctx->base.ns.data;
    rec.ns_len = ctx->base.ns.len;
    rec.dest = &m->dest;
    rec.sender = m->sender_len ? m->sender : NULL;
    rec.sender_len = m->sender_len;
    rec.campaign = ctx->campaign;
    rec.source = OPTOUT_SOURCE_KEYWORD;
    rec.keyword = m->keyword;
    rec.keyword_len = ngx_strlen(m->keyword);

    ngx_http_optout_rule_who(r, &rec);

    len = optout_journal_format(&rec, (char *) line,
                                NGX_HTTP_OPTOUT_IN_LINE_MAX);
    if (len == 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "optout: journal line too long");
    }

    return len;
}


static void
ngx_http_optout_inbound_recorded(ngx_http_optout_record_t *rec)
{
    ngx_http_optout_inbound_ctx_t *ctx = rec->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = rec->request;
    c = r->connection;

    if (rec->rc != NGX_OK) {
        rc = ngx_http_optout_api_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "50000", "Journal write failed",
                                       "Nothing was recorded.");

    } else {
        rc = ngx_http_optout_inbound_done(r, ctx);
    }

    ngx_http_optout_inbound_go_on(r, ctx, rc);
    ngx_http_run_posted_requests(c);
}


/* counted, the variables set, the answer ready: the phases go on */

static ngx_int_t
ngx_http_optout_inbound_done(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    const char                  *action;
    ngx_uint_t                   i;
    ngx_http_optout_in_msg_t    *m, *first;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);
    first = NULL;

    for (i = 0; i < ctx->msgs.n; i++) {
        m = &ctx->m[i];

        if (m->op == OPTOUT_KW_NONE) {
            continue;
        }

        if (m->op == OPTOUT_KW_HELP) {
            m->confirm = 1;
        }

        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_KEYWORD + m->op - 1);

        if (m->confirm) {
            m->reply = optout_in_reply(olcf->inbound->replies, m->op,
                                       m->country, &m->reply_len);

        } else {
            ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_KEYWORD_REPEATS);
        }

        if (first == NULL) {
            first = m;
        }
    }

    if (first) {
        action = optout_kw_op_name(first->op);

        ctx->base.kw_action.data = (u_char *) action;
        ctx->base.kw_action.len = ngx_strlen(action);
        ctx->base.kw_keyword.data = (u_char *) first->keyword;
        ctx->base.kw_keyword.len = ngx_strlen(first->keyword);
        ctx->base.kw_reply.data = (u_char *) first->reply;
        ctx->base.kw_reply.len = first->reply ? first->reply_len : 0;
    }

    return ngx_http_optout_inbound_answer(r, ctx);
}


/* TwiML for Twilio, a list for Infobip, one object otherwise */

static ngx_int_t
ngx_http_optout_inbound_answer(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx)
{
    size_t                       size;
    u_char                      *p, *last;
    ngx_uint_t                   i, n;
    ngx_http_optout_in_msg_t    *m;
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    /* the one to answer: the first with a keyword, or the zeroed one */

    for (m = ctx->m, i = 0; i < ctx->msgs.n; i++, m++) {
        if (m->op != OPTOUT_KW_NONE) {
            break;
        }
    }

    if (olcf->inbound->format == OPTOUT_IN_INFOBIP) {
        m = ctx->m;
        n = ctx->msgs.n;

    } else {
        n = 1;
    }

    size = 16 + OPTOUT_IN_TWIML_MAX(ctx->base.kw_reply.len);

    for (i = 0; i < n; i++) {
        size += OPTOUT_IN_JSON_MAX(8, m[i].keyword
                                      ? ngx_strlen(m[i].keyword) : 0,
                                   m[i].reply_len) + 1;
    }

    p = ngx_pnalloc(r->pool, size);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->answer.data = p;
    last = p + size;

    if (olcf->inbound->format == OPTOUT_IN_TWILIO) {
        p += optout_in_twiml((char *) ctx->base.kw_reply.data,
                             ctx->base.kw_reply.len, (char *) p, size);

    } else if (olcf->inbound->format == OPTOUT_IN_INFOBIP) {
        p = ngx_cpymem(p, "{\"results\":[", 12);

        for (i = 0; i < n; i++) {
            if (i) {
                *p++ = ',';
            }

            p += ngx_http_optout_inbound_json(&m[i], p, last - p);
        }

        p = ngx_cpymem(p, "]}\n", 3);

    } else {
        p += ngx_http_optout_inbound_json(m, p, last - p);
        *p++ = '\n';
    }

    ctx->answer.len = p - ctx->answer.data;

    return NGX_DECLINED;
}


static size_t
ngx_http_optout_inbound_json(ngx_http_optout_in_msg_t *m, u_char *p,
    size_t size)
{
    return optout_in_json(m->op ? optout_kw_op_name(m->op) : NULL,
                          m->keyword, m->keyword ? ngx_strlen(m->keyword) : 0,
                          m->reply, m->reply_len, (char *) p, size);
}


/* from the body handler and the completions: on to the next phases */

static void
ngx_http_optout_inbound_go_on(ngx_http_request_t *r,
    ngx_http_optout_inbound_ctx_t *ctx, ngx_int_t rc)
{
    if (rc != NGX_DECLINED) {
        ngx_http_finalize_request(r, rc);
        return;
    }

    ctx->status = NGX_DECLINED;

    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


static ngx_int_t
ngx_http_optout_inbound_content(ngx_http_request_t *r)
{
    ngx_buf_t                      *b;
    ngx_http_optout_loc_conf_t     *olcf;
    ngx_http_optout_inbound_ctx_t  *ctx;

    static ngx_str_t  xml = ngx_string("text/xml");

    ctx = ngx_http_get_module_ctx(r, ngx_http_optout_module);

    if (r != r->main || ctx == NULL || ctx->answer.data == NULL) {
        return NGX_HTTP_NOT_FOUND;
    }

    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (ctx->base.kw_action.len
        && ngx_http_optout_add_header(r, "X-Optout-Action",
                                      ctx->base.kw_action.data,
                                      ctx->base.kw_action.len)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = ctx->answer.data;
    b->last = ctx->answer.data + ctx->answer.len;
    b->memory = 1;

    if (olcf->inbound->format != OPTOUT_IN_TWILIO) {
        return ngx_http_optout_send_json(r, NGX_HTTP_OK, b);
    }

    return ngx_http_optout_send(r, NGX_HTTP_OK, &xml, b);
}


static void
ngx_http_optout_inbound_cleanup(void *data)
{
    ngx_http_optout_inbound_ctx_t *ctx = data;

    ngx_http_optout_store_lookup_cancel(&ctx->lookup);

    optout_in_msgs_free(&ctx->msgs);
}
