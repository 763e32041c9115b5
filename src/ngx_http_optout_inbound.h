
/*
 * The inbound keyword location (optout_inbound): STOP, START and HELP in
 * providers' inbound-message webhooks.  Shared by the request side
 * (inbound.c), the directives (inbound_conf.c) and the signature schemes
 * (inbound_verify.c).
 */


#ifndef _NGX_HTTP_OPTOUT_INBOUND_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_INBOUND_H_INCLUDED_


#include "ngx_http_optout_api.h"

#include "optout_inbound.h"
#include "optout_keyword.h"
#include "optout_webhook.h"


#define NGX_HTTP_OPTOUT_SCOPE_ACCOUNT    0
#define NGX_HTTP_OPTOUT_SCOPE_SENDER     1

#define NGX_HTTP_OPTOUT_VERIFY_TWILIO    1
#define NGX_HTTP_OPTOUT_VERIFY_TELNYX    2
#define NGX_HTTP_OPTOUT_VERIFY_HMAC      3


typedef struct {
    ngx_uint_t                        scheme;
    u_char                           *token;      /* twilio */
    size_t                            token_len;
    ngx_http_complex_value_t         *url;        /* twilio */
    optout_wh_pkey_t                 *pkey;       /* telnyx */
    optout_mac_t                     *mac;        /* hmac */
    ngx_str_t                         header;     /* hmac */
    ngx_str_t                         timestamp;  /* hmac, optional */
    time_t                            tolerance;
} ngx_http_optout_verify_t;


/* optout_keyword, optout_keyword_remove, optout_keyword_reply */
typedef struct {
    ngx_uint_t                        remove;
    int                               op;
    u_char                            country[3];
    ngx_str_t                         text;
    u_char                           *file;
    ngx_uint_t                        line;
} ngx_http_optout_kw_op_t;


struct ngx_http_optout_inbound_conf_s {
    ngx_flag_t                        enable;
    u_char                           *file;       /* of optout_inbound */
    ngx_uint_t                        line;
    ngx_uint_t                        format;
    ngx_uint_t                        scope;
    ngx_uint_t                        match;
    ngx_http_complex_value_t         *campaign;
    ngx_http_optout_verify_t         *verify;     /* NULL: off */

    /* this level's and its parents' directives, in order */
    ngx_array_t                      *kw_ops;
    ngx_array_t                      *reply_ops;
    ngx_uint_t                        own_kw;
    ngx_uint_t                        own_reply;

    optout_kw_set_t                  *kw;
    optout_in_replies_t              *replies;
};


/* one message of a webhook, and what it asked for */
typedef struct {
    int                               op;         /* OPTOUT_KW_* */
    const char                       *keyword;
    char                              country[3];
    optout_dest_t                     dest;
    size_t                            sender_len;
    char                              sender[OPTOUT_SENDER_MAX + 1];
    ngx_uint_t                        absent;     /* memcached said so */
    ngx_uint_t                        confirm;
    const char                       *reply;      /* NULL: none due */
    size_t                            reply_len;
    size_t                            key_len;
    u_char                            key[OPTOUT_STORE_KEY_MAX + 1];
} ngx_http_optout_in_msg_t;


typedef struct {
    ngx_http_optout_ctx_t             base;       /* first: variables */
    ngx_int_t                         status;     /* of the phase handler */
    ngx_str_t                         body;
    optout_in_msgs_t                  msgs;
    ngx_http_optout_in_msg_t         *m;
    ngx_uint_t                        next;       /* lookups done */
    ngx_uint_t                        store_failed;
    uint64_t                          campaign;
    ngx_http_optout_lookup_t          lookup;
    ngx_uint_t                        looking;    /* a look-up in flight */
    ngx_http_optout_change_t         *changes;
    ngx_uint_t                        nchanges;
    ngx_http_optout_record_t          record;
    ngx_str_t                         answer;
} ngx_http_optout_inbound_ctx_t;


/* ngx_http_optout_inbound_verify.c */
optout_wh_rc_t ngx_http_optout_inbound_verify(ngx_http_request_t *r,
    ngx_http_optout_verify_t *v, ngx_str_t *body);


#endif /* _NGX_HTTP_OPTOUT_INBOUND_H_INCLUDED_ */
