
/*
 * The answer of a batch, written in the thread into a malloc()ed buffer:
 * {"blocked":[...],"invalid":[...],"checked":N,"allowed":N}, or the JSON
 * error shape of the check location.
 */


#include "ngx_http_optout_batch.h"


#define ngx_http_optout_out_lit(o, s)                                         \
    ngx_http_optout_out(o, s, sizeof(s) - 1)


static void ngx_http_optout_batch_blocked(ngx_http_optout_out_t *o,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests);
static u_char *ngx_http_optout_out_reserve(ngx_http_optout_out_t *o,
    size_t len);
static void ngx_http_optout_batch_invalid(ngx_http_optout_out_t *o,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests);


void
ngx_http_optout_batch_answer(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests)
{
    size_t      len;
    ngx_uint_t  i, allowed;
    u_char      buf[NGX_INT64_LEN * 2 + 64];

    allowed = 0;

    for (i = 0; i < list->n; i++) {
        if (dests[i].status == NGX_HTTP_OPTOUT_STATUS_ALLOWED) {
            allowed++;
        }

        ngx_http_optout_metric_dest(dests[i].status, bc->unverified);
    }

    bc->status = NGX_HTTP_OK;

    ngx_http_optout_out_lit(&bc->out, "{\"blocked\":[");
    ngx_http_optout_batch_blocked(&bc->out, list, dests);
    ngx_http_optout_out_lit(&bc->out, "],\"invalid\":[");
    ngx_http_optout_batch_invalid(&bc->out, list, dests);

    len = ngx_sprintf(buf, "],\"checked\":%ui,\"allowed\":%ui%s}\n",
                      list->n, allowed,
                      bc->unverified ? ",\"unverified\":true" : "")
          - buf;
    ngx_http_optout_out(&bc->out, (char *) buf, len);

    if (bc->out.failed) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Out of memory.");
    }
}


static void
ngx_http_optout_batch_blocked(ngx_http_optout_out_t *o,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests)
{
    size_t                         len;
    ngx_uint_t                     i, first;
    ngx_http_optout_batch_dest_t  *d;
    u_char                         buf[NGX_INT64_LEN + 64];

    first = 1;

    for (i = 0; i < list->n; i++) {
        d = &dests[i];

        if (d->status != NGX_HTTP_OPTOUT_STATUS_BLOCKED) {
            continue;
        }

        if (!first) {
            ngx_http_optout_out_lit(o, ",");
        }

        first = 0;

        ngx_http_optout_out_lit(o, "{\"destination\":\"");
        ngx_http_optout_out_json(o, (u_char *) d->dest.data, d->dest.len,
                                 d->dest.len);

        len = ngx_sprintf(buf, "\",\"campaign\":\"%uL\",\"since\":\"",
                          d->rule.campaign) - buf;
        ngx_http_optout_out(o, (char *) buf, len);

        len = ngx_http_optout_since(buf, d->rule.time) - buf;
        ngx_http_optout_out(o, (char *) buf, len);

        ngx_http_optout_out_lit(o, "\",\"scope\":\"");
        ngx_http_optout_out(o, d->scope, ngx_strlen(d->scope));
        ngx_http_optout_out_lit(o, "\"}");
    }
}


/* the invalid ones: their index and up to 64 characters of the input */

static void
ngx_http_optout_batch_invalid(ngx_http_optout_out_t *o,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests)
{
    size_t                         len;
    ngx_uint_t                     i, first;
    ngx_http_optout_batch_item_t  *item;
    u_char                         buf[NGX_INT64_LEN + 64];

    first = 1;

    for (i = 0; i < list->n; i++) {
        if (dests[i].status != NGX_HTTP_OPTOUT_STATUS_INVALID) {
            continue;
        }

        item = &list->items[i];

        len = ngx_sprintf(buf, "%s{\"index\":%ui,\"destination\":\"",
                          first ? "" : ",", i) - buf;
        ngx_http_optout_out(o, (char *) buf, len);
        first = 0;

        ngx_http_optout_out_json(o, item->data, item->len,
                                 NGX_HTTP_OPTOUT_ECHO_MAX);

        if (item->string) {
            ngx_http_optout_out_lit(o, "\",\"reason\":\"not an E.164 phone "
                                    "number or an email address\"}");

        } else {
            ngx_http_optout_out_lit(o, "\",\"reason\":\"not a string\"}");
        }
    }
}


void
ngx_http_optout_batch_fail(ngx_http_optout_batch_ctx_t *bc,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail)
{
    size_t  len;

    bc->status = status;
    bc->failure = detail;
    bc->out.len = 0;
    bc->out.failed = 0;

    len = ngx_strlen(detail);

    ngx_http_optout_out_lit(&bc->out, "{\"errors\":[{\"code\":\"");
    ngx_http_optout_out(&bc->out, code, ngx_strlen(code));
    ngx_http_optout_out_lit(&bc->out, "\",\"title\":\"");
    ngx_http_optout_out(&bc->out, title, ngx_strlen(title));
    ngx_http_optout_out_lit(&bc->out, "\",\"detail\":\"");
    ngx_http_optout_out_json(&bc->out, (u_char *) detail, len, len);
    ngx_http_optout_out_lit(&bc->out, "\"}]}\n");
}


void
ngx_http_optout_out(ngx_http_optout_out_t *o, const char *s, size_t len)
{
    u_char  *p;

    p = ngx_http_optout_out_reserve(o, len);
    if (p == NULL) {
        return;
    }

    ngx_memcpy(p, s, len);
    o->len += len;
}


/* room for len more bytes at o->data + o->len, or NULL (o->failed) */

static u_char *
ngx_http_optout_out_reserve(ngx_http_optout_out_t *o, size_t len)
{
    u_char  *p;
    size_t   size;

    if (o->failed) {
        return NULL;
    }

    if (o->len + len > o->size) {
        size = ngx_max(o->size * 2, o->len + len + 4096);

        p = realloc(o->data, size);
        if (p == NULL) {
            o->failed = 1;
            return NULL;
        }

        o->data = p;
        o->size = size;
    }

    return o->data + o->len;
}


/* up to "max" characters of s as the inside of a JSON string */

void
ngx_http_optout_out_json(ngx_http_optout_out_t *o, const u_char *s,
    size_t len, size_t max)
{
    u_char  *p;

    p = ngx_http_optout_out_reserve(o, OPTOUT_JSON_ESCAPED(len));
    if (p == NULL) {
        return;
    }

    o->len += optout_json_escape((const char *) s, len, max, (char *) p);
}


