
/*
 * The management API (optout_api): look-ups, opt-ins and the answers'
 * JSON, shared by the location handler (api.c) and the adds (api_add.c).
 */


#ifndef _NGX_HTTP_OPTOUT_API_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_API_H_INCLUDED_


#include "ngx_http_optout_batch.h"


#define NGX_HTTP_OPTOUT_API_ADDED     0
#define NGX_HTTP_OPTOUT_API_PRESENT   1
#define NGX_HTTP_OPTOUT_API_INVALID   2


typedef struct ngx_http_optout_api_item_s  ngx_http_optout_api_item_t;


/* a POST of the API: the batch context its thread task owns, and more */
typedef struct {
    ngx_http_optout_batch_ctx_t      bc;        /* first: the task's ctx */
    ngx_str_t                        client;
    ngx_str_t                        user;
    double                           now;
    ngx_http_optout_out_t            lines;
    ngx_http_optout_change_t        *changes;
    ngx_uint_t                       nchanges;
    ngx_http_optout_record_t         record;
    ngx_uint_t                       count[3]; /* by item status */

    /* an array between its two thread tasks */
    json_t                          *root;
    ngx_http_optout_api_item_t      *items;
    size_t                           nitems;

    /* one rule checked on the event loop */
    ngx_http_optout_api_item_t      *item;
    ngx_http_optout_lookup_t         lookup;
} ngx_http_optout_api_add_t;


struct ngx_http_optout_api_item_s {
    ngx_uint_t                       status;
    const char                      *reason;
    optout_dest_t                    dest;
    size_t                           sender_len;
    char                             sender[OPTOUT_SENDER_MAX + 1];
    optout_rule_t                    rule;
    double                           time;
    ngx_uint_t                       absent;    /* memcached said so */
    size_t                           key_len;
    u_char                           key[OPTOUT_STORE_KEY_MAX + 1];
};


/* ngx_http_optout_api_items.c */
json_t *ngx_http_optout_api_items_parse(ngx_http_optout_api_add_t *ac,
    size_t *n);
void ngx_http_optout_api_items_check(ngx_http_optout_api_add_t *ac,
    json_t *v, ngx_http_optout_api_item_t *it);
ngx_int_t ngx_http_optout_api_items_keys(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
void ngx_http_optout_api_items_classify(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
ngx_int_t ngx_http_optout_api_items_record(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
void ngx_http_optout_api_items_answer(ngx_http_optout_api_add_t *ac,
    ngx_http_optout_api_item_t *items, size_t n);
void ngx_http_optout_api_rule_out(ngx_http_optout_out_t *o,
    optout_rule_t *rule, const char *sender, size_t sender_len);
ngx_int_t ngx_http_optout_api_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
ngx_int_t ngx_http_optout_api_send_out(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_optout_out_t *o);


#endif /* _NGX_HTTP_OPTOUT_API_H_INCLUDED_ */
