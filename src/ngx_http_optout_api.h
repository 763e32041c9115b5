
/*
 * The management API (optout_api): look-ups, opt-ins and the answers'
 * JSON, shared by the location handler (api.c) and the adds (api_add.c).
 */


#ifndef _NGX_HTTP_OPTOUT_API_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_API_H_INCLUDED_


#include "ngx_http_optout_batch.h"


/* ngx_http_optout_api_add.c */
void ngx_http_optout_api_rule_out(ngx_http_optout_out_t *o,
    optout_rule_t *rule, const char *sender, size_t sender_len);
ngx_int_t ngx_http_optout_api_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
ngx_int_t ngx_http_optout_api_send_out(ngx_http_request_t *r,
    ngx_uint_t status, ngx_http_optout_out_t *o);


#endif /* _NGX_HTTP_OPTOUT_API_H_INCLUDED_ */
