
/*
 * Batch checks: a POST of up to 10,000 destinations (one a line, a JSON
 * array of strings, or {"sender": ..., "destinations": [...]}) answered
 * with the blocked and the invalid ones.  Parsing, normalization, key
 * derivation, the multi-get and the answer all run in one thread-pool
 * task that owns copies of its inputs; the event loop only reads the body
 * and sends the answer.
 */


#include "ngx_http_optout_module.h"

#include <jansson.h>


#define NGX_HTTP_OPTOUT_BATCH_MAX       10000
#define NGX_HTTP_OPTOUT_BATCH_SEGMENTS  8
#define NGX_HTTP_OPTOUT_ECHO_MAX        64

#define ngx_http_optout_out_lit(o, s)                                         \
    ngx_http_optout_out(o, s, sizeof(s) - 1)


typedef struct {
    u_char                      *dst;
    off_t                        offset;
    size_t                       len;
} ngx_http_optout_segment_t;


typedef struct {
    u_char                      *data;
    size_t                       len;
    size_t                       size;
    ngx_uint_t                   failed;
} ngx_http_optout_out_t;


typedef struct {
    ngx_http_request_t          *request;
    ngx_http_optout_store_t     *store;
    optout_mac_t                *mac;
    ngx_str_t                    prefix;
    ngx_str_t                    ns;
    size_t                       sender_len;
    char                         sender[OPTOUT_SENDER_MAX + 1];

    u_char                      *body;
    size_t                       body_len;
    ngx_fd_t                     fd;
    ngx_uint_t                   nsegments;
    ngx_http_optout_segment_t    segments[NGX_HTTP_OPTOUT_BATCH_SEGMENTS];

    ngx_uint_t                   status;
    ngx_uint_t                   open;
    ngx_uint_t                   unverified;
    ngx_http_optout_out_t        out;
    ngx_event_t                  hold;
} ngx_http_optout_batch_ctx_t;


static void ngx_http_optout_batch_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_optout_batch_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
static void ngx_http_optout_batch_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_batch_check(ngx_http_optout_batch_ctx_t *bc,
    ngx_str_t *items, json_t **json, ngx_uint_t n);
static void ngx_http_optout_batch_fail(ngx_http_optout_batch_ctx_t *bc,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
static void ngx_http_optout_batch_done(ngx_event_t *ev);
static void ngx_http_optout_batch_free(void *data);
static void ngx_http_optout_out(ngx_http_optout_out_t *o, const char *s,
    size_t len);
static void ngx_http_optout_out_json(ngx_http_optout_out_t *o,
    const u_char *s, size_t len);


ngx_int_t
ngx_http_optout_batch_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_optout_batch_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_optout_batch_body(ngx_http_request_t *r)
{
    size_t                        len;
    u_char                       *p;
    ngx_int_t                     rc;
    ngx_str_t                     from;
    ngx_buf_t                    *b;
    ngx_chain_t                  *cl;
    ngx_thread_task_t            *task;
    ngx_pool_cleanup_t           *cln;
    ngx_http_optout_ctx_t         ctx;
    ngx_http_optout_loc_conf_t   *olcf;
    ngx_http_optout_main_conf_t  *omcf;
    ngx_http_optout_batch_ctx_t  *bc;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);
    olcf = ngx_http_get_module_loc_conf(r, ngx_http_optout_module);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40004",
                                        "No destinations",
                                        "The request body is empty."));
        return;
    }

    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_optout_batch_ctx_t));
    if (task == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    bc = task->ctx;
    bc->request = r;
    bc->store = omcf->store;
    bc->prefix = omcf->store_prefix;
    bc->open = (olcf->check_fail == NGX_HTTP_OPTOUT_FAIL_OPEN);
    bc->fd = NGX_INVALID_FILE;

    /* the sender and the namespace come from the configuration */

    rc = ngx_http_optout_input(r, olcf->check_sender, &from);

    if (rc == NGX_DECLINED) {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40006",
                                        "Conflicting sender",
                                        "The sender was given more than "
                                        "once; give it once."));
        return;
    }

    if (rc != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    if (from.len
        && optout_normalize_sender((char *) from.data, from.len, bc->sender,
                                   &bc->sender_len)
           != OPTOUT_OK)
    {
        ngx_http_finalize_request(r,
            ngx_http_optout_batch_error(r, NGX_HTTP_BAD_REQUEST, "40002",
                                        "Invalid sender",
                                        "The sender must be an E.164 number, "
                                        "a short code or an alphanumeric "
                                        "sender ID of up to 11 characters."));
        return;
    }

    ngx_memzero(&ctx, sizeof(ngx_http_optout_ctx_t));

    if (ngx_http_optout_namespace(r, olcf, &ctx) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    bc->ns = ctx.ns;

    /* the body: memory is copied now, file parts are read by the thread */

    len = 0;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        len += ngx_buf_size(cl->buf);
    }

    bc->body = ngx_pnalloc(r->pool, len + 1);
    if (bc->body == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    p = bc->body;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        if (bc->nsegments == NGX_HTTP_OPTOUT_BATCH_SEGMENTS) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }

        bc->fd = b->file->fd;
        bc->segments[bc->nsegments].dst = p;
        bc->segments[bc->nsegments].offset = b->file_pos;
        bc->segments[bc->nsegments].len = b->file_last - b->file_pos;
        bc->nsegments++;

        p += b->file_last - b->file_pos;
    }

    bc->body_len = len;

    bc->mac = optout_mac_dup(omcf->store_mac);
    if (bc->mac == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        optout_mac_destroy(bc->mac);
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    cln->handler = ngx_http_optout_batch_free;
    cln->data = bc;

    task->handler = ngx_http_optout_batch_thread;
    task->event.handler = ngx_http_optout_batch_done;
    task->event.data = bc;

    if (ngx_thread_task_post(omcf->thread_pool, task) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    r->main->blocked++;

    ngx_http_optout_hold(r, &bc->hold);
}


static void
ngx_http_optout_batch_free(void *data)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    if (bc->mac) {
        optout_mac_destroy(bc->mac);
        bc->mac = NULL;
    }

    if (bc->out.data) {
        free(bc->out.data);
        bc->out.data = NULL;
    }
}


static void
ngx_http_optout_batch_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_batch_ctx_t *bc = data;

    u_char        *p, *end, *start;
    size_t         i, n;
    ssize_t        got;
    json_t        *root, *list, *sender, **json;
    ngx_str_t     *items;
    json_error_t   err;

    for (i = 0; i < bc->nsegments; i++) {
        got = pread(bc->fd, bc->segments[i].dst, bc->segments[i].len,
                    bc->segments[i].offset);

        if (got != (ssize_t) bc->segments[i].len) {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "50000", "Internal error",
                                       "The request body could not be read.");
            return;
        }
    }

    p = bc->body;
    end = bc->body + bc->body_len;

    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
    }

    root = NULL;
    json = NULL;
    items = NULL;
    n = 0;

    if (p < end && (*p == '[' || *p == '{')) {

        root = json_loadb((char *) p, end - p, JSON_REJECT_DUPLICATES, &err);
        if (root == NULL) {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40003",
                                       "Malformed body", err.text);
            return;
        }

        list = root;

        if (json_is_object(root)) {
            list = json_object_get(root, "destinations");

            sender = json_object_get(root, "sender");

            /* the body's own sender wins over optout_check_sender */

            if (sender) {
                if (!json_is_string(sender)
                    || optout_normalize_sender(json_string_value(sender),
                                               json_string_length(sender),
                                               bc->sender, &bc->sender_len)
                       != OPTOUT_OK)
                {
                    json_decref(root);
                    ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST,
                        "40002", "Invalid sender",
                        "The sender must be an E.164 number, a short code "
                        "or an alphanumeric sender ID of up to 11 "
                        "characters.");
                    return;
                }
            }
        }

        if (!json_is_array(list)) {
            json_decref(root);
            ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40003",
                                       "Malformed body",
                                       "Expected a JSON array of "
                                       "destinations, or an object with "
                                       "a \"destinations\" array.");
            return;
        }

        n = json_array_size(list);

        if (n <= NGX_HTTP_OPTOUT_BATCH_MAX) {
            json = malloc((n ? n : 1) * sizeof(json_t *));
            if (json == NULL) {
                json_decref(root);
                ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "50000", "Internal error",
                                           "Out of memory.");
                return;
            }

            for (i = 0; i < n; i++) {
                json[i] = json_array_get(list, i);
            }
        }

    } else {

        /*
         * one destination a line; empty lines do not count, and one line
         * past the limit is enough to refuse the batch
         */

        items = malloc((NGX_HTTP_OPTOUT_BATCH_MAX + 1) * sizeof(ngx_str_t));
        if (items == NULL) {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                       "50000", "Internal error",
                                       "Out of memory.");
            return;
        }

        for (start = p; start < end && n <= NGX_HTTP_OPTOUT_BATCH_MAX;
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

            items[n].data = start;
            items[n].len = p - start;

            while (items[n].data[items[n].len - 1] == '\r'
                   || items[n].data[items[n].len - 1] == ' ')
            {
                items[n].len--;
            }

            n++;
        }
    }

    if (n == 0) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_BAD_REQUEST, "40004",
                                   "No destinations",
                                   "The request holds no destination.");

    } else if (n > NGX_HTTP_OPTOUT_BATCH_MAX) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "41300", "Too many destinations",
                                   "At most 10000 destinations a request.");

    } else {
        ngx_http_optout_batch_check(bc, items, json, n);
    }

    free(items);
    free(json);

    if (root) {
        json_decref(root);
    }
}


static void
ngx_http_optout_batch_check(ngx_http_optout_batch_ctx_t *bc,
    ngx_str_t *items, json_t **json, ngx_uint_t n)
{
    size_t          len, nkeys, k, per, i, allowed, first;
    u_char         *found, *valid;
    ngx_int_t       rc;
    const char     *s, **keys;
    optout_dest_t  *dests;
    optout_rule_t  *rules, *rule;
    size_t         *lens;
    char           *keybuf;
    u_char          buf[NGX_INT64_LEN + 64];

    per = bc->sender_len ? 2 : 1;

    dests = malloc(n * sizeof(optout_dest_t));
    valid = malloc(n);
    keybuf = malloc(n * per * (OPTOUT_STORE_KEY_MAX + 1));
    keys = malloc(n * per * sizeof(char *));
    lens = malloc(n * per * sizeof(size_t));
    found = malloc(n * per);
    rules = malloc(n * per * sizeof(optout_rule_t));

    if (dests == NULL || valid == NULL || keybuf == NULL || keys == NULL
        || lens == NULL || found == NULL || rules == NULL)
    {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Out of memory.");
        goto done;
    }

    nkeys = 0;

    for (i = 0; i < n; i++) {
        if (items) {
            s = (char *) items[i].data;
            len = items[i].len;

        } else if (json_is_string(json[i])) {
            s = json_string_value(json[i]);
            len = json_string_length(json[i]);

        } else {
            valid[i] = 0;
            continue;
        }

        valid[i] = (optout_normalize_dest(s, len, &dests[i]) == OPTOUT_OK);

        if (!valid[i]) {
            continue;
        }

        for (k = 0; k < per; k++) {
            keys[nkeys] = keybuf + nkeys * (OPTOUT_STORE_KEY_MAX + 1);

            if (optout_store_key(bc->mac, (char *) bc->prefix.data,
                                 bc->prefix.len, (char *) bc->ns.data,
                                 bc->ns.len, bc->sender,
                                 k ? bc->sender_len : 0, &dests[i],
                                 (char *) keys[nkeys], &lens[nkeys])
                != OPTOUT_OK)
            {
                ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "50000", "Internal error",
                                           "Key derivation failed.");
                goto done;
            }

            nkeys++;
        }
    }

    rc = NGX_OK;

    if (nkeys) {
        rc = ngx_http_optout_store_mget(bc->store, keys, lens, nkeys, found,
                                        rules);
    }

    if (rc != NGX_OK) {
        if (!bc->open) {
            ngx_http_optout_batch_fail(bc, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "40301", "Opt-out store unavailable",
                                       rc == NGX_DECLINED
                                       ? "The store is not seeded; sending "
                                         "is denied until it is."
                                       : "The opt-out rules could not be "
                                         "read; sending is denied until "
                                         "they can.");
            goto done;
        }

        bc->unverified = 1;
        ngx_memzero(found, nkeys);
    }

    bc->status = NGX_HTTP_OK;

    ngx_http_optout_out_lit(&bc->out, "{\"blocked\":[");

    allowed = 0;
    nkeys = 0;
    first = 1;

    for (i = 0; i < n; i++) {
        if (!valid[i]) {
            continue;
        }

        rule = NULL;

        for (k = 0; k < per; k++) {
            if (found[nkeys + k] && rule == NULL) {
                rule = &rules[nkeys + k];
                s = k ? "sender" : "account";
            }
        }

        nkeys += per;

        if (rule == NULL) {
            allowed++;
            continue;
        }

        if (!first) {
            ngx_http_optout_out_lit(&bc->out, ",");
        }

        ngx_http_optout_out_lit(&bc->out, "{\"destination\":\"");
        first = 0;

        ngx_http_optout_out(&bc->out, dests[i].data, dests[i].len);

        len = ngx_sprintf(buf, "\",\"campaign\":\"%uL\",\"since\":\"",
                          rule->campaign) - buf;
        ngx_http_optout_out(&bc->out, (char *) buf, len);

        len = ngx_http_optout_since(buf, rule->time) - buf;
        ngx_http_optout_out(&bc->out, (char *) buf, len);

        ngx_http_optout_out_lit(&bc->out, "\",\"scope\":\"");
        ngx_http_optout_out(&bc->out, s, ngx_strlen(s));
        ngx_http_optout_out_lit(&bc->out, "\"}");
    }

    ngx_http_optout_out_lit(&bc->out, "],\"invalid\":[");

    first = 1;

    for (i = 0; i < n; i++) {
        if (valid[i]) {
            continue;
        }

        len = ngx_sprintf(buf, "%s{\"index\":%uz,\"destination\":\"",
                          first ? "" : ",", i) - buf;
        ngx_http_optout_out(&bc->out, (char *) buf, len);
        first = 0;

        if (items) {
            ngx_http_optout_out_json(&bc->out, items[i].data,
                                     ngx_min(items[i].len,
                                             NGX_HTTP_OPTOUT_ECHO_MAX));

        } else if (json_is_string(json[i])) {
            ngx_http_optout_out_json(&bc->out,
                                     (u_char *) json_string_value(json[i]),
                                     ngx_min(json_string_length(json[i]),
                                             NGX_HTTP_OPTOUT_ECHO_MAX));
        }

        s = (items || json_is_string(json[i]))
            ? "\",\"reason\":\"not an E.164 phone number or an email "
              "address\"}"
            : "\",\"reason\":\"not a string\"}";

        ngx_http_optout_out(&bc->out, s, ngx_strlen(s));
    }

    len = ngx_sprintf(buf, "],\"checked\":%uz,\"allowed\":%uz%s}\n", n,
                      allowed, bc->unverified ? ",\"unverified\":true" : "")
          - buf;
    ngx_http_optout_out(&bc->out, (char *) buf, len);

    if (bc->out.failed) {
        ngx_http_optout_batch_fail(bc, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "50000", "Internal error",
                                   "Out of memory.");
    }

done:

    free(dests);
    free(valid);
    free(keybuf);
    free(keys);
    free(lens);
    free(found);
    free(rules);
}


static void
ngx_http_optout_batch_fail(ngx_http_optout_batch_ctx_t *bc,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail)
{
    bc->status = status;
    bc->out.len = 0;
    bc->out.failed = 0;

    ngx_http_optout_out_lit(&bc->out, "{\"errors\":[{\"code\":\"");
    ngx_http_optout_out(&bc->out, code, ngx_strlen(code));
    ngx_http_optout_out_lit(&bc->out, "\",\"title\":\"");
    ngx_http_optout_out(&bc->out, title, ngx_strlen(title));
    ngx_http_optout_out_lit(&bc->out, "\",\"detail\":\"");
    ngx_http_optout_out_json(&bc->out, (u_char *) detail,
                             ngx_strlen(detail));
    ngx_http_optout_out_lit(&bc->out, "\"}]}\n");
}


static void
ngx_http_optout_batch_done(ngx_event_t *ev)
{
    ngx_http_optout_batch_ctx_t *bc = ev->data;

    ngx_int_t            rc;
    ngx_buf_t           *b;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = bc->request;
    c = r->connection;

    r->main->blocked--;
    ngx_http_optout_release(&bc->hold);

    if (bc->unverified) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "optout: batch check unverified, allowed by "
                      "\"optout_check_fail open\"");
    }

    if (bc->out.failed || bc->out.data == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto finalize;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        goto finalize;
    }

    /* the pool cleanup frees bc->out.data with the request */

    b->pos = bc->out.data;
    b->last = bc->out.data + bc->out.len;
    b->memory = 1;

    rc = ngx_http_optout_send_json(r, bc->status, b);

finalize:

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static ngx_int_t
ngx_http_optout_batch_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *title, const char *detail)
{
    ngx_buf_t                   *b;
    ngx_http_optout_batch_ctx_t  bc;

    ngx_memzero(&bc, sizeof(ngx_http_optout_batch_ctx_t));

    ngx_http_optout_batch_fail(&bc, status, code, title, detail);

    if (bc.out.failed) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_create_temp_buf(r->pool, bc.out.len);
    if (b == NULL) {
        free(bc.out.data);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = ngx_cpymem(b->last, bc.out.data, bc.out.len);
    free(bc.out.data);

    return ngx_http_optout_send_json(r, status, b);
}


static void
ngx_http_optout_out(ngx_http_optout_out_t *o, const char *s, size_t len)
{
    u_char  *p;
    size_t   size;

    if (o->failed) {
        return;
    }

    if (o->len + len > o->size) {
        size = ngx_max(o->size * 2, o->len + len + 4096);

        p = realloc(o->data, size);
        if (p == NULL) {
            o->failed = 1;
            return;
        }

        o->data = p;
        o->size = size;
    }

    ngx_memcpy(o->data + o->len, s, len);
    o->len += len;
}


static void
ngx_http_optout_out_json(ngx_http_optout_out_t *o, const u_char *s,
    size_t len)
{
    u_char   c;
    size_t   i;
    u_char   esc[8];

    static u_char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        c = s[i];

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = c;
            ngx_http_optout_out(o, (char *) esc, 2);

        } else if (c < 0x20 || c >= 0x7f) {
            esc[0] = '\\';
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            ngx_http_optout_out(o, (char *) esc, 6);

        } else {
            ngx_http_optout_out(o, (char *) &c, 1);
        }
    }
}
