
/*
 * Variables: what the module decided for this request, for log_format,
 * map, auth_request_set and other modules.  They read the request's module
 * context, so they are not cacheable, and a value that does not apply is
 * "not found".
 */


#include "ngx_http_optout_module.h"


static ngx_int_t ngx_http_optout_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_optout_keyword_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_optout_check_variable(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx, ngx_http_variable_value_t *v,
    uintptr_t data);


#define NGX_HTTP_OPTOUT_VAR_DESTINATION  0
#define NGX_HTTP_OPTOUT_VAR_CAMPAIGN     1
#define NGX_HTTP_OPTOUT_VAR_RESULT       2
#define NGX_HTTP_OPTOUT_VAR_SCOPE        3
#define NGX_HTTP_OPTOUT_VAR_SENDER       4
#define NGX_HTTP_OPTOUT_VAR_KEY_ID       5
#define NGX_HTTP_OPTOUT_VAR_CHANNEL      6
#define NGX_HTTP_OPTOUT_VAR_STATUS       7
#define NGX_HTTP_OPTOUT_VAR_SINCE        8


static ngx_http_variable_t  ngx_http_optout_vars[] = {

    { ngx_string("optout_destination"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_DESTINATION, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_campaign"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_CAMPAIGN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_result"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_RESULT, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_scope"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_SCOPE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_sender"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_SENDER, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_key_id"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_KEY_ID, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_channel"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_CHANNEL, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_status"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_STATUS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_since"), NULL, ngx_http_optout_variable,
      NGX_HTTP_OPTOUT_VAR_SINCE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("optout_keyword_action"), NULL,
      ngx_http_optout_keyword_variable,
      offsetof(ngx_http_optout_ctx_t, kw_action), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("optout_keyword"), NULL, ngx_http_optout_keyword_variable,
      offsetof(ngx_http_optout_ctx_t, kw_keyword), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

    { ngx_string("optout_reply"), NULL, ngx_http_optout_keyword_variable,
      offsetof(ngx_http_optout_ctx_t, kw_reply), NGX_HTTP_VAR_NOCACHEABLE,
      0 },

      ngx_http_null_variable
};


static ngx_str_t  ngx_http_optout_statuses[] = {
    ngx_null_string,
    ngx_string("allowed"),
    ngx_string("blocked"),
    ngx_string("invalid"),
    ngx_string("unavailable"),
    ngx_string("unverified")
};


static ngx_str_t  ngx_http_optout_results[] = {
    ngx_null_string,
    ngx_string("confirm"),
    ngx_string("recorded"),
    ngx_string("invalid"),
    ngx_string("error")
};


ngx_int_t
ngx_http_optout_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_optout_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


/*
 * What an inbound webhook matched, empty when nothing; from the main
 * request, so that a mirror subrequest reads it too
 */

static ngx_int_t
ngx_http_optout_keyword_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t              *s;
    ngx_http_optout_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_optout_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((u_char *) ctx + data);

    v->data = s->data;
    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                 *p;
    const char             *s;
    ngx_http_optout_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_optout_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    if (ctx->status != NGX_HTTP_OPTOUT_STATUS_NONE) {
        return ngx_http_optout_check_variable(r, ctx, v, data);
    }

    if (ctx->result == NGX_HTTP_OPTOUT_RESULT_NONE
        || data == NGX_HTTP_OPTOUT_VAR_STATUS
        || data == NGX_HTTP_OPTOUT_VAR_SINCE
        || (data != NGX_HTTP_OPTOUT_VAR_RESULT
            && ctx->result == NGX_HTTP_OPTOUT_RESULT_INVALID))
    {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_OPTOUT_VAR_DESTINATION:
        v->data = ctx->masked.data;
        v->len = ctx->masked.len;
        break;

    case NGX_HTTP_OPTOUT_VAR_CAMPAIGN:
        p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;
        v->len = ngx_sprintf(p, "%uL", ctx->link.campaign) - p;
        break;

    case NGX_HTTP_OPTOUT_VAR_RESULT:
        v->data = ngx_http_optout_results[ctx->result].data;
        v->len = ngx_http_optout_results[ctx->result].len;
        break;

    case NGX_HTTP_OPTOUT_VAR_SCOPE:
        if (ctx->link.sender_len) {
            v->data = (u_char *) "sender";
            v->len = sizeof("sender") - 1;

        } else {
            v->data = (u_char *) "account";
            v->len = sizeof("account") - 1;
        }

        break;

    case NGX_HTTP_OPTOUT_VAR_SENDER:
        if (ctx->link.sender_len == 0) {
            v->not_found = 1;
            return NGX_OK;
        }

        v->data = (u_char *) ctx->link.sender;
        v->len = ctx->link.sender_len;
        break;

    case NGX_HTTP_OPTOUT_VAR_KEY_ID:
        p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;
        v->len = ngx_sprintf(p, "%ui", (ngx_uint_t) ctx->link.key_id) - p;
        break;

    default: /* NGX_HTTP_OPTOUT_VAR_CHANNEL */
        s = optout_channel_name(ctx->link.dest.type);
        v->data = (u_char *) s;
        v->len = ngx_strlen(s);
        break;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* the same variables for a send-time check: they describe its answer */

static ngx_int_t
ngx_http_optout_check_variable(ngx_http_request_t *r,
    ngx_http_optout_ctx_t *ctx, ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char  *p;

    switch (data) {

    case NGX_HTTP_OPTOUT_VAR_STATUS:
        v->data = ngx_http_optout_statuses[ctx->status].data;
        v->len = ngx_http_optout_statuses[ctx->status].len;
        break;

    case NGX_HTTP_OPTOUT_VAR_DESTINATION:
        if (ctx->masked.len == 0) {
            goto not_found;
        }

        v->data = ctx->masked.data;
        v->len = ctx->masked.len;
        break;

    case NGX_HTTP_OPTOUT_VAR_SENDER:
        if (ctx->link.sender_len == 0) {
            goto not_found;
        }

        v->data = (u_char *) ctx->link.sender;
        v->len = ctx->link.sender_len;
        break;

    case NGX_HTTP_OPTOUT_VAR_CAMPAIGN:
    case NGX_HTTP_OPTOUT_VAR_SCOPE:
    case NGX_HTTP_OPTOUT_VAR_SINCE:
        if (ctx->status != NGX_HTTP_OPTOUT_STATUS_BLOCKED) {
            goto not_found;
        }

        if (data == NGX_HTTP_OPTOUT_VAR_SCOPE) {
            v->data = (u_char *) (ctx->rule_sender ? "sender" : "account");
            v->len = ctx->rule_sender ? 6 : 7;
            break;
        }

        p = ngx_pnalloc(r->pool, sizeof("1970-01-01T00:00:00Z")
                                 + NGX_INT64_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        v->data = p;

        if (data == NGX_HTTP_OPTOUT_VAR_CAMPAIGN) {
            v->len = ngx_sprintf(p, "%uL", ctx->rule.campaign) - p;

        } else {
            v->len = ngx_http_optout_since(p, ctx->rule.time) - p;
        }

        break;

    default:
        goto not_found;
    }

    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;

not_found:

    v->not_found = 1;

    return NGX_OK;
}
