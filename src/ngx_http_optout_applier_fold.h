
/*
 * The journal applier's fold: the lines of a journal tail folded into the
 * final state of each store key, in a small open-addressing table that
 * belongs to the applier's thread.
 */


#ifndef _NGX_HTTP_OPTOUT_APPLIER_FOLD_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_APPLIER_FOLD_H_INCLUDED_


#include "ngx_http_optout_module.h"


typedef struct {
    optout_rule_t                    rule;      /* ADD and SET */
    uint32_t                         hash;
    ngx_uint_t                       op;        /* NGX_HTTP_OPTOUT_STORE_* */
    size_t                           key_len;
    u_char                           key[OPTOUT_STORE_KEY_MAX];
} ngx_http_optout_fold_entry_t;


typedef struct {
    ngx_http_optout_fold_entry_t    *entries;
    uint32_t                        *slots;     /* entry + 1, 0: free */
    ngx_uint_t                       mask;
    ngx_uint_t                       n;
    ngx_uint_t                       max;
} ngx_http_optout_fold_t;


ngx_http_optout_fold_t *ngx_http_optout_fold_create(ngx_uint_t max,
    ngx_log_t *log);
void ngx_http_optout_fold_destroy(ngx_http_optout_fold_t *f);
void ngx_http_optout_fold_reset(ngx_http_optout_fold_t *f);
ngx_int_t ngx_http_optout_fold_line(ngx_http_optout_fold_t *f, u_char *key,
    size_t len, ngx_uint_t optin, optout_rule_t *rule, ngx_uint_t add);


#endif /* _NGX_HTTP_OPTOUT_APPLIER_FOLD_H_INCLUDED_ */
