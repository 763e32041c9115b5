
/*
 * The link location: GET and HEAD show a confirmation page and change
 * nothing (scanners and previewers fetch every link); POST, from the page's
 * form or as an RFC 8058 one-click request, records the opt-out (the
 * rule file's write path: journal, store, cache, pending set) and then
 * answers with a confirmation page.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_JOURNAL_LINE  2048


static ngx_int_t ngx_http_optout_link_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_link_token(ngx_http_request_t *r,
    ngx_str_t *token);
static ngx_int_t ngx_http_optout_link_record(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx);
static void ngx_http_optout_link_done(ngx_http_optout_record_t *rec);


char *
ngx_http_optout_link(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (olcf->link != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    olcf->link = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_optout_link_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_optout_link_handler(ngx_http_request_t *r)
{
    int                           rc;
    ngx_int_t                     nrc;
    ngx_http_optout_ctx_t        *ctx;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST))) {
        return ngx_http_optout_not_allowed(r);
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_optout_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_set_ctx(r, ctx, ngx_http_optout_module);

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    nrc = ngx_http_optout_namespace(r, olcf, ctx);
    if (nrc != NGX_OK) {
        return nrc;
    }

    /* the token is bound to the namespace, which it does not carry */

    if (ngx_http_optout_link_token(r, &ctx->token) != NGX_OK) {
        ctx->result = NGX_HTTP_OPTOUT_RESULT_INVALID;
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_LINK + ctx->result);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: invalid link: path segments between the "
                      "location and the token");

        return NGX_HTTP_NOT_FOUND;
    }

    rc = optout_token_open(omcf->keys->elts, omcf->keys->nelts,
                           (char *) ctx->ns.data, ctx->ns.len,
                           (char *) ctx->token.data, ctx->token.len,
                           &ctx->link);

    if (rc != OPTOUT_OK) {
        ctx->result = NGX_HTTP_OPTOUT_RESULT_INVALID;
        ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_LINK + ctx->result);

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "optout: invalid link token: %s",
                      optout_strerror(rc));

        return NGX_HTTP_NOT_FOUND;
    }

    ctx->masked.data = ngx_pnalloc(r->pool, OPTOUT_MASKED_MAX + 1);
    if (ctx->masked.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->masked.len = optout_mask_dest(&ctx->link.dest,
                                       (char *) ctx->masked.data);

    if (r->method == NGX_HTTP_POST) {
        return ngx_http_optout_link_record(r, ctx);
    }

    nrc = ngx_http_discard_request_body(r);
    if (nrc != NGX_OK) {
        return nrc;
    }

    ctx->result = NGX_HTTP_OPTOUT_RESULT_CONFIRM;
    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_LINK + ctx->result);

    return ngx_http_optout_page_send(r, olcf->confirm_page, ctx);
}


/*
 * The token is the last path segment of the (normalized) URI.  In a prefix
 * location nothing but the prefix, and a '/' if the prefix lacks one, may
 * stand before it: "/u/TOKEN", not "/u/any/path/TOKEN".  A URI that no
 * longer starts with the prefix ("rewrite ... break") keeps the last
 * segment.
 */

static ngx_int_t
ngx_http_optout_link_token(ngx_http_request_t *r, ngx_str_t *token)
{
    u_char                    *p, *last;
    size_t                     start;
    ngx_http_core_loc_conf_t  *clcf;

    last = r->uri.data + r->uri.len;

    for (p = last; p > r->uri.data && p[-1] != '/'; p--) {
        /* void */
    }

    token->data = p;
    token->len = last - p;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->named || clcf->noname || clcf->exact_match
#if (NGX_PCRE)
        || clcf->regex
#endif
        || r->uri.len < clcf->name.len
        || ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) != 0)
    {
        return NGX_OK;
    }

    start = p - r->uri.data;

    if (start == clcf->name.len
        || (start == clcf->name.len + 1 && clcf->name.len
            && clcf->name.data[clcf->name.len - 1] != '/'))
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_optout_link_record(ngx_http_request_t *r, ngx_http_optout_ctx_t *ctx)
{
    u_char                    *line;
    ngx_int_t                  rc;
    ngx_time_t                *tp;
    optout_rule_t             *rule;
    optout_journal_rec_t       rec;
    ngx_http_optout_change_t  *ch;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ch = &ctx->change;

    if (ngx_http_optout_rule_key(r, &ctx->ns, ctx->link.sender,
                                 ctx->link.sender_len, &ctx->link.dest,
                                 ch->key, &ch->key_len)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    tp = ngx_timeofday();
    rule = &ch->rule;

    rule->campaign = ctx->link.campaign;
    rule->time = tp->sec;
    rule->source = OPTOUT_SOURCE_LINK;
    rule->channel = ctx->link.dest.type;
    rule->key_id = ctx->link.key_id;

    ctx->rule = *rule;

    ngx_memzero(&rec, sizeof(optout_journal_rec_t));

    rec.time = tp->sec + tp->msec / 1000.0;
    rec.action = "optout";
    rec.ns = (char *) ctx->ns.data;
    rec.ns_len = ctx->ns.len;
    rec.dest = &ctx->link.dest;
    rec.sender = ctx->link.sender_len ? ctx->link.sender : NULL;
    rec.sender_len = ctx->link.sender_len;
    rec.campaign = ctx->link.campaign;
    rec.source = OPTOUT_SOURCE_LINK;
    rec.key_id = ctx->link.key_id;

    ngx_http_optout_rule_who(r, &rec);

    line = ngx_pnalloc(r->pool, NGX_HTTP_OPTOUT_JOURNAL_LINE);
    if (line == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->record.len = optout_journal_format(&rec, (char *) line,
                                            NGX_HTTP_OPTOUT_JOURNAL_LINE);
    if (ctx->record.len == 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "optout: journal line too long");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->record.request = r;
    ctx->record.changes = ch;
    ctx->record.n = 1;
    ctx->record.lines = line;
    ctx->record.handler = ngx_http_optout_link_done;
    ctx->record.data = ctx;

    if (ngx_http_optout_rule_record(&ctx->record) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


static void
ngx_http_optout_link_done(ngx_http_optout_record_t *rec)
{
    ngx_http_optout_ctx_t *ctx = rec->data;

    ngx_int_t                    rc;
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_optout_loc_conf_t  *olcf;

    r = rec->request;
    c = r->connection;

    if (rec->rc != NGX_OK) {
        ctx->result = NGX_HTTP_OPTOUT_RESULT_ERROR;
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

    } else {
        ctx->result = NGX_HTTP_OPTOUT_RESULT_RECORDED;
        olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);
        rc = ngx_http_optout_page_send(r, olcf->done_page, ctx);
    }

    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_LINK + ctx->result);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
