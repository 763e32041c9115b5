
/*
 * The link pages: templates with {{destination}}, {{sender}} and {{action}}
 * placeholders, split into parts once at configuration time, built-in
 * defaults for each channel and scope, and sending a page.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_PAGE_MAX     (64 * 1024)

#define NGX_HTTP_OPTOUT_KIND_EMAIL   1
#define NGX_HTTP_OPTOUT_KIND_SENDER  2


/* one built-in page: <title> and <h1>, the text, the button (confirm) */
typedef struct {
    ngx_str_t                    title;
    ngx_str_t                    text;
    ngx_str_t                    button;
} ngx_http_optout_page_text_t;


static ngx_array_t *ngx_http_optout_page_parse(ngx_conf_t *cf,
    ngx_str_t *text, ngx_str_t *file);
static ngx_array_t *ngx_http_optout_page_build(ngx_conf_t *cf,
    ngx_http_optout_page_text_t *page);
static size_t ngx_http_optout_page_value(ngx_http_optout_ctx_t *ctx,
    ngx_uint_t var, ngx_str_t *value);


static ngx_str_t  ngx_http_optout_page_head = ngx_string(
"<!doctype html>\n"
"<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n"
"<meta name=\"robots\" content=\"noindex,nofollow\">\n"
"<title>");


static ngx_str_t  ngx_http_optout_page_style = ngx_string(
"</title>\n"
"<style>body{font:17px/1.5 system-ui,sans-serif;margin:0;padding:2em 1em;"
"color:#1a1a1a;background:#f6f6f6}main{max-width:26em;margin:auto;"
"background:#fff;padding:1.5em;border-radius:8px}h1{font-size:1.3em;"
"margin-top:0}button{font:inherit;width:100%;padding:.8em;border:0;"
"border-radius:6px;background:#b00020;color:#fff}</style>\n"
"</head><body><main>\n"
"<h1>");


static ngx_str_t  ngx_http_optout_page_form = ngx_string(
"<form method=\"post\" action=\"{{action}}\">\n"
"<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n"
"<button type=\"submit\">");


static ngx_str_t  ngx_http_optout_page_tail = ngx_string(
"</main></body></html>\n");


/* by kind: phone, email, phone with a sender, email with a sender */

static ngx_http_optout_page_text_t  ngx_http_optout_page_confirm[] = {

    { ngx_string("Stop text messages?"),
      ngx_string("Text messages to <b>{{destination}}</b> will stop."),
      ngx_string("Stop messages") },

    { ngx_string("Unsubscribe?"),
      ngx_string("Emails to <b>{{destination}}</b> will stop."),
      ngx_string("Unsubscribe") },

    { ngx_string("Stop text messages from {{sender}}?"),
      ngx_string("Text messages from <b>{{sender}}</b> to "
                 "<b>{{destination}}</b> will stop."),
      ngx_string("Stop messages") },

    { ngx_string("Unsubscribe from {{sender}}?"),
      ngx_string("Emails from <b>{{sender}}</b> to "
                 "<b>{{destination}}</b> will stop."),
      ngx_string("Unsubscribe") }
};


static ngx_http_optout_page_text_t  ngx_http_optout_page_done[] = {

    { ngx_string("Text messages stopped"),
      ngx_string("We will not send further text messages to "
                 "<b>{{destination}}</b>."),
      ngx_null_string },

    { ngx_string("You are unsubscribed"),
      ngx_string("We will not send further emails to "
                 "<b>{{destination}}</b>."),
      ngx_null_string },

    { ngx_string("Text messages from {{sender}} stopped"),
      ngx_string("<b>{{sender}}</b> will not send further text messages "
                 "to <b>{{destination}}</b>."),
      ngx_null_string },

    { ngx_string("You are unsubscribed from {{sender}}"),
      ngx_string("<b>{{sender}}</b> will not send further emails to "
                 "<b>{{destination}}</b>."),
      ngx_null_string }
};


char *
ngx_http_optout_page_set(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    ssize_t                 n;
    ngx_str_t              *value, text;
    ngx_uint_t              i;
    ngx_file_t              file;
    ngx_file_info_t         fi;
    ngx_http_optout_tpl_t **tpl;

    tpl = (ngx_http_optout_tpl_t **) (p + cmd->offset);

    if (*tpl != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_conf_full_name(cf->cycle, &value[1], 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&file, sizeof(ngx_file_t));
    file.name = value[1];
    file.log = cf->log;

    file.fd = ngx_open_file(value[1].data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (file.fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           ngx_open_file_n " \"%V\" failed", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(file.fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > NGX_HTTP_OPTOUT_PAGE_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "page \"%V\" is not a readable file of at most "
                           "64k", &value[1]);
        goto failed;
    }

    text.len = ngx_file_size(&fi);
    text.data = ngx_pnalloc(cf->pool, text.len + 1);
    if (text.data == NULL) {
        goto failed;
    }

    n = ngx_read_file(&file, text.data, text.len, 0);
    if (n != (ssize_t) text.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "cannot read page \"%V\"", &value[1]);
        goto failed;
    }

    (void) ngx_close_file(file.fd);

    *tpl = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_tpl_t));
    if (*tpl == NULL) {
        return NGX_CONF_ERROR;
    }

    (*tpl)->file = value[1];

    (*tpl)->parts[0] = ngx_http_optout_page_parse(cf, &text, &value[1]);
    if ((*tpl)->parts[0] == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < NGX_HTTP_OPTOUT_TPL_KINDS; i++) {
        (*tpl)->parts[i] = (*tpl)->parts[0];
    }

    return NGX_CONF_OK;

failed:

    (void) ngx_close_file(file.fd);
    return NGX_CONF_ERROR;
}


ngx_http_optout_tpl_t *
ngx_http_optout_page_default(ngx_conf_t *cf, ngx_uint_t done)
{
    ngx_uint_t                    i;
    ngx_http_optout_tpl_t        *tpl;
    ngx_http_optout_page_text_t  *page;

    page = done ? ngx_http_optout_page_done : ngx_http_optout_page_confirm;

    tpl = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_tpl_t));
    if (tpl == NULL) {
        return NULL;
    }

    ngx_str_set(&tpl->file, "built-in page");

    for (i = 0; i < NGX_HTTP_OPTOUT_TPL_KINDS; i++) {
        tpl->parts[i] = ngx_http_optout_page_build(cf, &page[i]);
        if (tpl->parts[i] == NULL) {
            return NULL;
        }
    }

    return tpl;
}


static ngx_array_t *
ngx_http_optout_page_build(ngx_conf_t *cf, ngx_http_optout_page_text_t *page)
{
    u_char     *p;
    ngx_str_t   text, name;

    text.len = ngx_http_optout_page_head.len + page->title.len
               + ngx_http_optout_page_style.len + page->title.len
               + sizeof("</h1>\n<p>") - 1 + page->text.len
               + sizeof("</p>\n") - 1
               + ngx_http_optout_page_tail.len;

    if (page->button.len) {
        text.len += ngx_http_optout_page_form.len + page->button.len
                    + sizeof("</button>\n</form>\n") - 1;
    }

    text.data = ngx_pnalloc(cf->pool, text.len);
    if (text.data == NULL) {
        return NULL;
    }

    p = ngx_cpymem(text.data, ngx_http_optout_page_head.data,
                   ngx_http_optout_page_head.len);
    p = ngx_cpymem(p, page->title.data, page->title.len);
    p = ngx_cpymem(p, ngx_http_optout_page_style.data,
                   ngx_http_optout_page_style.len);
    p = ngx_cpymem(p, page->title.data, page->title.len);
    p = ngx_cpymem(p, "</h1>\n<p>", sizeof("</h1>\n<p>") - 1);
    p = ngx_cpymem(p, page->text.data, page->text.len);
    p = ngx_cpymem(p, "</p>\n", sizeof("</p>\n") - 1);

    if (page->button.len) {
        p = ngx_cpymem(p, ngx_http_optout_page_form.data,
                       ngx_http_optout_page_form.len);
        p = ngx_cpymem(p, page->button.data, page->button.len);
        p = ngx_cpymem(p, "</button>\n</form>\n",
                       sizeof("</button>\n</form>\n") - 1);
    }

    ngx_memcpy(p, ngx_http_optout_page_tail.data,
               ngx_http_optout_page_tail.len);

    ngx_str_set(&name, "built-in page");

    return ngx_http_optout_page_parse(cf, &text, &name);
}


static ngx_array_t *
ngx_http_optout_page_parse(ngx_conf_t *cf, ngx_str_t *text, ngx_str_t *file)
{
    u_char                      *p, *last, *start, *end;
    ngx_uint_t                   i;
    ngx_array_t                 *parts;
    ngx_http_optout_tpl_part_t  *part;

    static ngx_str_t  names[] = {
        ngx_null_string,
        ngx_string("destination"),
        ngx_string("sender"),
        ngx_string("action")
    };

    parts = ngx_array_create(cf->pool, 8,
                             sizeof(ngx_http_optout_tpl_part_t));
    if (parts == NULL) {
        return NULL;
    }

    p = text->data;
    last = text->data + text->len;
    start = p;

    while (p < last) {

        if (last - p < 4 || p[0] != '{' || p[1] != '{') {
            p++;
            continue;
        }

        end = ngx_strlchr(p + 2, last, '}');

        if (end == NULL || end + 1 >= last || end[1] != '}') {
            p++;
            continue;
        }

        for (i = 1; i < sizeof(names) / sizeof(ngx_str_t); i++) {
            if ((size_t) (end - p - 2) == names[i].len
                && ngx_strncmp(p + 2, names[i].data, names[i].len) == 0)
            {
                break;
            }
        }

        if (i == sizeof(names) / sizeof(ngx_str_t)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "unknown placeholder \"%*s\" in page \"%V\", "
                               "known are {{destination}}, {{sender}} and "
                               "{{action}}", end + 2 - p, p, file);
            return NULL;
        }

        if (p > start) {
            part = ngx_array_push(parts);
            if (part == NULL) {
                return NULL;
            }

            part->text.data = start;
            part->text.len = p - start;
            part->var = NGX_HTTP_OPTOUT_TPL_TEXT;
        }

        part = ngx_array_push(parts);
        if (part == NULL) {
            return NULL;
        }

        ngx_str_null(&part->text);
        part->var = i;

        p = end + 2;
        start = p;
    }

    if (p > start) {
        part = ngx_array_push(parts);
        if (part == NULL) {
            return NULL;
        }

        part->text.data = start;
        part->text.len = p - start;
        part->var = NGX_HTTP_OPTOUT_TPL_TEXT;
    }

    return parts;
}


static size_t
ngx_http_optout_page_value(ngx_http_optout_ctx_t *ctx, ngx_uint_t var,
    ngx_str_t *value)
{
    switch (var) {

    case NGX_HTTP_OPTOUT_TPL_DESTINATION:
        *value = ctx->masked;
        break;

    case NGX_HTTP_OPTOUT_TPL_SENDER:
        value->data = (u_char *) ctx->link.sender;
        value->len = ctx->link.sender_len;
        break;

    default: /* NGX_HTTP_OPTOUT_TPL_ACTION */
        *value = ctx->token;
        break;
    }

    return value->len + ngx_escape_html(NULL, value->data, value->len);
}


ngx_int_t
ngx_http_optout_page_send(ngx_http_request_t *r, ngx_http_optout_tpl_t *tpl,
    ngx_http_optout_ctx_t *ctx)
{
    size_t                       len;
    u_char                      *p;
    ngx_buf_t                   *b;
    ngx_int_t                    rc;
    ngx_str_t                    value;
    ngx_uint_t                   i, kind, nparts;
    ngx_chain_t                  out;
    ngx_table_elt_t             *h;
    ngx_http_optout_tpl_part_t  *part;

    static ngx_str_t  headers[][2] = {
        { ngx_string("Cache-Control"), ngx_string("no-store") },
        { ngx_string("X-Robots-Tag"), ngx_string("noindex, nofollow") },
        { ngx_string("Referrer-Policy"), ngx_string("no-referrer") },
        { ngx_string("X-Frame-Options"), ngx_string("DENY") }
    };

    kind = 0;

    if (ctx->link.dest.type == OPTOUT_DEST_EMAIL) {
        kind |= NGX_HTTP_OPTOUT_KIND_EMAIL;
    }

    if (ctx->link.sender_len) {
        kind |= NGX_HTTP_OPTOUT_KIND_SENDER;
    }

    part = tpl->parts[kind]->elts;
    nparts = tpl->parts[kind]->nelts;
    len = 0;

    for (i = 0; i < nparts; i++) {
        if (part[i].var == NGX_HTTP_OPTOUT_TPL_TEXT) {
            len += part[i].text.len;

        } else {
            len += ngx_http_optout_page_value(ctx, part[i].var, &value);
        }
    }

    for (i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        h->key = headers[i][0];
        h->value = headers[i][1];
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = len;
    ngx_str_set(&r->headers_out.content_type, "text/html; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/html") - 1;

    if (r->method == NGX_HTTP_HEAD) {
        return ngx_http_send_header(r);
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;

    for (i = 0; i < nparts; i++) {
        if (part[i].var == NGX_HTTP_OPTOUT_TPL_TEXT) {
            p = ngx_cpymem(p, part[i].text.data, part[i].text.len);
            continue;
        }

        (void) ngx_http_optout_page_value(ctx, part[i].var, &value);
        p = (u_char *) ngx_escape_html(p, value.data, value.len);
    }

    b->last = p;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
