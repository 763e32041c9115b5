
/*
 * Parsing a batch body, in the thread: one destination a line, a JSON
 * array of strings, or {"sender": ..., "destinations": [...]}.  The items
 * point into the body or into the parsed JSON, which the list owns.
 */


#include "ngx_http_optout_batch.h"


static ngx_int_t ngx_http_optout_batch_parse_json(
    ngx_http_optout_batch_ctx_t *bc, u_char *p, u_char *end,
    ngx_http_optout_batch_list_t *list);
static ngx_int_t ngx_http_optout_batch_parse_sender(
    ngx_http_optout_batch_ctx_t *bc, json_t *sender);
static ngx_int_t ngx_http_optout_batch_parse_lines(
    ngx_http_optout_batch_ctx_t *bc, u_char *p, u_char *end,
    ngx_http_optout_batch_list_t *list);
static ngx_int_t ngx_http_optout_batch_no_memory(
    ngx_http_optout_batch_ctx_t *bc);


/*
 * NGX_OK with at least one and at most NGX_HTTP_OPTOUT_BATCH_MAX items,
 * or NGX_ERROR with the error answer written
 */

ngx_int_t
ngx_http_optout_batch_parse(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list)
{
    u_char     *p, *end;
    ngx_int_t   rc;

    p = bc->body;
    end = bc->body + bc->body_len;

    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
    }

    if (p < end && (*p == '[' || *p == '{')) {
        rc = ngx_http_optout_batch_parse_json(bc, p, end, list);

    } else {
        rc = ngx_http_optout_batch_parse_lines(bc, p, end, list);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (list->n == 0) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40004",
                                   "No destinations",
                                   "The request holds no destination.");
        return NGX_ERROR;
    }

    if (list->n > NGX_HTTP_OPTOUT_BATCH_MAX) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "41300", "Too many destinations",
                                   "At most 10000 destinations a request.");
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_http_optout_batch_list_free(ngx_http_optout_batch_list_t *list)
{
    free(list->items);
    list->items = NULL;

    if (list->root) {
        json_decref(list->root);
        list->root = NULL;
    }
}


static ngx_int_t
ngx_http_optout_batch_parse_json(ngx_http_optout_batch_ctx_t *bc, u_char *p,
    u_char *end, ngx_http_optout_batch_list_t *list)
{
    json_t        *v, *array;
    size_t         i;
    json_error_t   err;

    list->root = json_loadb((char *) p, end - p, JSON_REJECT_DUPLICATES,
                            &err);
    if (list->root == NULL) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40003",
                                   "Malformed body", err.text);
        return NGX_ERROR;
    }

    array = list->root;

    if (json_is_object(list->root)) {
        array = json_object_get(list->root, "destinations");

        /* the body's own sender wins over optout_check_sender */

        v = json_object_get(list->root, "sender");

        if (v && ngx_http_optout_batch_parse_sender(bc, v) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (!json_is_array(array)) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40003",
                                   "Malformed body",
                                   "Expected a JSON array of destinations, "
                                   "or an object with a \"destinations\" "
                                   "array.");
        return NGX_ERROR;
    }

    list->n = json_array_size(array);

    if (list->n == 0 || list->n > NGX_HTTP_OPTOUT_BATCH_MAX) {
        return NGX_OK;
    }

    list->items = malloc(list->n * sizeof(ngx_http_optout_batch_item_t));
    if (list->items == NULL) {
        return ngx_http_optout_batch_no_memory(bc);
    }

    for (i = 0; i < list->n; i++) {
        v = json_array_get(array, i);

        list->items[i].string = json_is_string(v);

        if (list->items[i].string) {
            list->items[i].data = (u_char *) json_string_value(v);
            list->items[i].len = json_string_length(v);

        } else {
            list->items[i].data = NULL;
            list->items[i].len = 0;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_batch_parse_sender(ngx_http_optout_batch_ctx_t *bc,
    json_t *sender)
{
    if (json_is_string(sender)
        && optout_normalize_sender(json_string_value(sender),
                                   json_string_length(sender), bc->sender,
                                   &bc->sender_len)
           == OPTOUT_OK)
    {
        return NGX_OK;
    }

    ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40002",
                               "Invalid sender",
                               "The sender must be an E.164 number, a short "
                               "code or an alphanumeric sender ID of up to "
                               "11 characters.");
    return NGX_ERROR;
}


/*
 * one destination a line; empty lines do not count, and one line past the
 * limit is enough to refuse the batch
 */

static ngx_int_t
ngx_http_optout_batch_parse_lines(ngx_http_optout_batch_ctx_t *bc,
    u_char *p, u_char *end, ngx_http_optout_batch_list_t *list)
{
    u_char                        *start;
    ngx_http_optout_batch_item_t  *item;

    list->items = malloc((NGX_HTTP_OPTOUT_BATCH_MAX + 1)
                         * sizeof(ngx_http_optout_batch_item_t));
    if (list->items == NULL) {
        return ngx_http_optout_batch_no_memory(bc);
    }

    for (start = p; start < end && list->n <= NGX_HTTP_OPTOUT_BATCH_MAX;
         start = p + 1)
    {
        p = ngx_strlchr(start, end, '\n');
        if (p == NULL) {
            p = end;
        }

        while (start < p && (*start == ' ' || *start == '\t'
                             || *start == '\r'))
        {
            start++;
        }

        if (start == p) {
            continue;
        }

        item = &list->items[list->n++];

        item->string = 1;
        item->data = start;
        item->len = p - start;

        while (item->data[item->len - 1] == '\r'
               || item->data[item->len - 1] == ' '
               || item->data[item->len - 1] == '\t')
        {
            item->len--;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_batch_no_memory(ngx_http_optout_batch_ctx_t *bc)
{
    ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR, "50000",
                               "Internal error", "Out of memory.");
    return NGX_ERROR;
}
