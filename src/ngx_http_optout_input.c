
/*
 * Where the destination and the sender of a check come from: a query
 * argument or a header of the client's request (r->main, which an
 * auth_request subrequest shares), or a string with variables.  An input
 * given twice, by one source or by two, is refused: a gateway checks one
 * value and forwards the request as it came, so a backend that reads the
 * other one must never get it.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_SRC_VALUE   0
#define NGX_HTTP_OPTOUT_SRC_ARG     1
#define NGX_HTTP_OPTOUT_SRC_HEADER  2


typedef struct {
    ngx_uint_t                  type;
    ngx_str_t                   name;
    ngx_http_complex_value_t    value;
} ngx_http_optout_source_t;


static ngx_uint_t ngx_http_optout_input_arg(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *value);
static ngx_uint_t ngx_http_optout_input_arg_name(u_char *p, u_char *last,
    ngx_str_t *name);
static ngx_int_t ngx_http_optout_input_hex(u_char c);
static ngx_uint_t ngx_http_optout_input_header(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *value);
static ngx_int_t ngx_http_optout_input_form(ngx_http_request_t *r,
    ngx_str_t *v);
static char *ngx_http_optout_input_source(ngx_conf_t *cf,
    ngx_http_optout_source_t *src, ngx_str_t *arg);


char *
ngx_http_optout_input_set(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    char                      *rv;
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_array_t              **sources;
    ngx_http_optout_source_t  *src;

    sources = (ngx_array_t **) (p + cmd->offset);

    if (*sources != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    *sources = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                sizeof(ngx_http_optout_source_t));
    if (*sources == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        src = ngx_array_push(*sources);
        if (src == NULL) {
            return NGX_CONF_ERROR;
        }

        rv = ngx_http_optout_input_source(cf, src, &value[i]);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_optout_input_source(ngx_conf_t *cf, ngx_http_optout_source_t *src,
    ngx_str_t *arg)
{
    u_char                            *p, *last;
    ngx_http_compile_complex_value_t   ccv;

    ngx_memzero(src, sizeof(ngx_http_optout_source_t));

    if (arg->len >= 4 && ngx_strncmp(arg->data, "arg=", 4) == 0) {
        src->type = NGX_HTTP_OPTOUT_SRC_ARG;
        src->name.data = arg->data + 4;
        src->name.len = arg->len - 4;

    } else if (arg->len >= 7 && ngx_strncmp(arg->data, "header=", 7) == 0) {
        src->type = NGX_HTTP_OPTOUT_SRC_HEADER;
        src->name.data = arg->data + 7;
        src->name.len = arg->len - 7;

    } else {
        src->type = NGX_HTTP_OPTOUT_SRC_VALUE;

        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = arg;
        ccv.complex_value = &src->value;

        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;
    }

    if (src->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty name in \"%V\"", arg);
        return NGX_CONF_ERROR;
    }

    last = src->name.data + src->name.len;

    for (p = src->name.data; p < last; p++) {
        if (*p <= ' ' || *p >= 0x7f || *p == '&' || *p == ';' || *p == '='
            || *p == '%' || *p == '+' || *p == ':'
            || (*p == '[' && src->type == NGX_HTTP_OPTOUT_SRC_ARG))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid name in \"%V\"", arg);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* "optout_check_destination arg=to", and the like for the sender */

ngx_array_t *
ngx_http_optout_input_default(ngx_conf_t *cf, char *arg)
{
    ngx_array_t               *sources;
    ngx_http_optout_source_t  *src;

    sources = ngx_array_create(cf->pool, 1,
                               sizeof(ngx_http_optout_source_t));
    if (sources == NULL) {
        return NULL;
    }

    src = ngx_array_push(sources);
    if (src == NULL) {
        return NULL;
    }

    ngx_memzero(src, sizeof(ngx_http_optout_source_t));

    src->type = NGX_HTTP_OPTOUT_SRC_ARG;
    src->name.data = (u_char *) arg;
    src->name.len = ngx_strlen(arg);

    return sources;
}


/*
 * NGX_OK: *value is the input, decoded, or empty when no source has it;
 * NGX_DECLINED: it was given more than once.
 */

ngx_int_t
ngx_http_optout_input(ngx_http_request_t *r, ngx_array_t *sources,
    ngx_str_t *value)
{
    ngx_str_t                  v;
    ngx_uint_t                 i, n, m, form;
    ngx_http_optout_source_t  *src;

    ngx_str_null(value);

    n = 0;
    form = 0;
    src = sources->elts;

    for (i = 0; i < sources->nelts; i++) {

        switch (src[i].type) {

        case NGX_HTTP_OPTOUT_SRC_ARG:
            m = ngx_http_optout_input_arg(r, &src[i].name, &v);
            break;

        case NGX_HTTP_OPTOUT_SRC_HEADER:
            m = ngx_http_optout_input_header(r, &src[i].name, &v);
            break;

        default: /* NGX_HTTP_OPTOUT_SRC_VALUE */
            if (ngx_http_complex_value(r, &src[i].value, &v) != NGX_OK) {
                return NGX_ERROR;
            }

            m = v.len ? 1 : 0;
            break;
        }

        if (m == 0) {
            continue;
        }

        n += m;

        if (n > 1) {
            return NGX_DECLINED;
        }

        *value = v;
        form = (src[i].type == NGX_HTTP_OPTOUT_SRC_ARG);
    }

    if (value->len == 0) {
        return NGX_OK;
    }

    return form ? ngx_http_optout_input_form(r, value)
                : ngx_http_optout_unescape(r, value);
}


/*
 * Every parameter of the client's query string whose name decodes to
 * "name" counts: parameters are split at '&' and at ';' (some frameworks
 * split there too), names are compared case-insensitively after %XX and
 * '+' decoding, and "name[...]" counts as well (PHP reads it as "name").
 */

static ngx_uint_t
ngx_http_optout_input_arg(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    u_char      *p, *last, *start, *eq;
    ngx_uint_t   n;

    n = 0;
    p = r->main->args.data;
    last = p + r->main->args.len;

    while (p < last) {
        start = p;

        while (p < last && *p != '&' && *p != ';') {
            p++;
        }

        eq = ngx_strlchr(start, p, '=');

        if (ngx_http_optout_input_arg_name(start, eq ? eq : p, name)) {
            n++;
            value->data = eq ? eq + 1 : p;
            value->len = p - value->data;
        }

        p++;
    }

    return n;
}


static ngx_uint_t
ngx_http_optout_input_arg_name(u_char *p, u_char *last, ngx_str_t *name)
{
    u_char      c;
    ngx_int_t   h, l;
    ngx_uint_t  i, lead;

    i = 0;
    lead = 1;

    while (p < last) {
        c = *p++;

        if (c == '+') {
            c = ' ';

        } else if (c == '%' && last - p >= 2) {
            h = ngx_http_optout_input_hex(p[0]);
            l = ngx_http_optout_input_hex(p[1]);

            if (h >= 0 && l >= 0) {
                c = (u_char) (h << 4 | l);
                p += 2;
            }
        }

        /* PHP drops leading spaces of a name */

        if (lead && c == ' ') {
            continue;
        }

        lead = 0;

        if (i == name->len) {
            return c == '[';
        }

        if (ngx_tolower(c) != ngx_tolower(name->data[i])) {
            return 0;
        }

        i++;
    }

    return i == name->len;
}


static ngx_int_t
ngx_http_optout_input_hex(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/*
 * Headers of the client's request; '-' and '_' are the same, as CGI-style
 * backends read both "X-To" and "X_To" as HTTP_X_TO.
 */

static ngx_uint_t
ngx_http_optout_input_header(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *value)
{
    u_char            a, b;
    ngx_uint_t        i, j, n;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    n = 0;
    part = &r->main->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len != name->len) {
            continue;
        }

        for (j = 0; j < name->len; j++) {
            a = ngx_tolower(h[i].key.data[j]);
            b = ngx_tolower(name->data[j]);

            if (a != b
                && !((a == '-' || a == '_') && (b == '-' || b == '_')))
            {
                break;
            }
        }

        if (j == name->len) {
            n++;
            *value = h[i].value;
        }
    }

    return n;
}


/*
 * A query string is form-encoded: "+" is the space an encoder wrote
 * ("from=ACME+CO"), except as the first character, where it is the "+" of
 * an E.164 number ("to=+447700900123"); "%2B" is always a "+".
 */

static ngx_int_t
ngx_http_optout_input_form(ngx_http_request_t *r, ngx_str_t *v)
{
    u_char  *src, *dst, *p, *last;

    src = ngx_pnalloc(r->pool, v->len);
    if (src == NULL) {
        return NGX_ERROR;
    }

    last = ngx_cpymem(src, v->data, v->len);

    for (p = src + 1; p < last; p++) {
        if (*p == '+') {
            *p = ' ';
        }
    }

    v->data = src;

    if (ngx_strlchr(src, last, '%') == NULL) {
        return NGX_OK;
    }

    dst = ngx_pnalloc(r->pool, v->len);
    if (dst == NULL) {
        return NGX_ERROR;
    }

    v->data = dst;

    ngx_unescape_uri(&dst, &src, v->len, 0);

    v->len = dst - v->data;

    return NGX_OK;
}
