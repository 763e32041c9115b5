
/*
 * Small HTTP helpers that the link, check and batch locations share:
 * the namespace of a request, request holds while a thread-pool task
 * runs, response headers, JSON answers, unescaping and time formatting.
 */


#include "ngx_http_optout_module.h"


static void ngx_http_optout_hold_handler(ngx_event_t *ev);


ngx_int_t
ngx_http_optout_namespace(ngx_http_request_t *r,
    ngx_http_optout_loc_conf_t *olcf, ngx_http_optout_ctx_t *ctx)
{
    if (olcf->namespace == NULL) {
        ngx_str_null(&ctx->ns);
        return NGX_OK;
    }

    if (ngx_http_complex_value(r, olcf->namespace, &ctx->ns) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (optout_check_namespace((char *) ctx->ns.data, ctx->ns.len)
        != OPTOUT_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "optout: invalid namespace \"%V\", it must be up to "
                      "64 characters of A-Z a-z 0-9 . _ : -", &ctx->ns);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/* a JSON answer of check, batch, API and inbound locations */

ngx_int_t
ngx_http_optout_send_json(ngx_http_request_t *r, ngx_uint_t status,
    ngx_buf_t *b)
{
    static ngx_str_t  json = ngx_string("application/json");

    return ngx_http_optout_send(r, status, &json, b);
}


/* an answer held in one memory buffer */

ngx_int_t
ngx_http_optout_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_buf_t *b)
{
    ngx_int_t    rc;
    ngx_chain_t  out;

    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = b->last - b->pos;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


ngx_int_t
ngx_http_optout_unescape(ngx_http_request_t *r, ngx_str_t *v)
{
    u_char  *src, *dst;

    if (v->len == 0 || ngx_strlchr(v->data, v->data + v->len, '%') == NULL) {
        return NGX_OK;
    }

    dst = ngx_pnalloc(r->pool, v->len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    src = v->data;
    v->data = dst;

    ngx_unescape_uri(&dst, &src, v->len, 0);

    v->len = dst - v->data;

    return NGX_OK;
}


u_char *
ngx_http_optout_since(u_char *p, int64_t t)
{
    ngx_tm_t  tm;

    ngx_gmtime((time_t) t, &tm);

    return ngx_sprintf(p, "%4d-%02d-%02dT%02d:%02d:%02dZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
}


/*
 * A request waits for a thread-pool task (or for the journal's group
 * commit) blocked, as nginx's own thread tasks make it: a termination
 * meanwhile is put off until the task is done.  The request has no timer
 * of its own, and a worker that shuts down gracefully exits once no
 * timers are left: the hold keeps it until the task is done.
 */

void
ngx_http_optout_hold(ngx_http_request_t *r, ngx_event_t *ev)
{
    r->main->blocked++;

    ev->handler = ngx_http_optout_hold_handler;
    ev->data = r;
    ev->log = r->connection->log;

    ngx_add_timer(ev, NGX_HTTP_OPTOUT_HOLD);
}


/*
 * Back on the event loop, as nginx's thread event handlers do.  NGX_DONE:
 * the request was terminated while it waited, and the connection's
 * handler has finalized it; the caller must not touch it.  Before 1.25.4
 * nginx has no r->main->terminated: such a request is left with c->error
 * set and a write event handler that finalizes it.
 */

ngx_int_t
ngx_http_optout_resume(ngx_http_request_t *r, ngx_event_t *ev)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    r->main->blocked--;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }

#if (nginx_version >= 1025004)
    if (r->main->terminated) {
#else
    if (c->error) {
#endif
        c->write->handler(c->write);
        return NGX_DONE;
    }

    return NGX_OK;
}


static void
ngx_http_optout_hold_handler(ngx_event_t *ev)
{
    ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                  "optout: still waiting for the journal or memcached");

    ngx_add_timer(ev, NGX_HTTP_OPTOUT_HOLD);
}


/* links and checks take the same methods */

ngx_int_t
ngx_http_optout_not_allowed(ngx_http_request_t *r)
{
    static u_char  methods[] = "GET, HEAD, POST";

    if (ngx_http_optout_add_header(r, "Allow", methods, sizeof(methods) - 1)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_HTTP_NOT_ALLOWED;
}


ngx_int_t
ngx_http_optout_add_header(ngx_http_request_t *r, char *name,
    u_char *value, size_t len)
{
    u_char           *p;
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, value, len);

    h->hash = 1;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = p;
    h->value.len = len;

    return NGX_OK;
}
