
/*
 * The one multi-get with markers, on the event loop (see
 * ngx_http_optout_mget.c).
 */


#ifndef _NGX_HTTP_OPTOUT_MGET_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_MGET_H_INCLUDED_


#include "ngx_http_optout_mc.h"


typedef struct ngx_http_optout_mget_s    ngx_http_optout_mget_t;

typedef void (*ngx_http_optout_mget_pt)(ngx_http_optout_mget_t *mg);


/*
 * Distinct keys, then the marker of each server that holds one of them.
 * Each server gets its keys in array order and its marker last, in one
 * "get"; memcached answers in request order and prints nothing for a
 * miss, so the marker is the last value the server returns: once it came
 * back, that server's answer for every key before it was complete.  A key
 * is answered only if its server's marker came back in this very
 * multi-get.
 */

struct ngx_http_optout_mget_s {
    ngx_uint_t                   nkeys;     /* without the markers */
    ngx_uint_t                   total;     /* with the markers */
    ngx_uint_t                   max;
    ngx_uint_t                   mask;      /* of hash[] */
    const char                 **keys;
    size_t                      *lens;
    uint32_t                    *server;
    u_char                      *found;
    optout_rule_t               *rules;
    uint32_t                    *hash;      /* key index + 1; 0: free */
    char                        *data;      /* key copies, or NULL */
    memcached_return_t           rc;        /* the first failure seen */
    u_char                       answered[OPTOUT_MARKERS_MAX];

    ngx_http_optout_mget_pt      handler;
    void                        *ctx;       /* the handler's */
    ngx_http_optout_mc_t        *mc;
    ngx_uint_t                   running;
    void                        *block;     /* the running state */
    ngx_event_t                  event;     /* ended before run returned */
    ngx_uint_t                   marker[OPTOUT_MARKERS_MAX];
};


void ngx_http_optout_mget_init(ngx_http_optout_mget_t *mg);
ngx_int_t ngx_http_optout_mget_add(ngx_http_optout_mget_t *mg,
    const char *key, size_t len, ngx_uint_t *index);
void ngx_http_optout_mget_run(ngx_http_optout_mc_t *mc,
    ngx_http_optout_mget_t *mg);
ngx_int_t ngx_http_optout_mget_answer(ngx_http_optout_mget_t *mg,
    ngx_uint_t i);
ngx_int_t ngx_http_optout_mget_keys(ngx_http_optout_mc_t *mc,
    const char **keys, size_t *lens, ngx_uint_t n, u_char *found,
    optout_rule_t *rules, ngx_http_optout_keys_pt handler, void *data);


#endif /* _NGX_HTTP_OPTOUT_MGET_H_INCLUDED_ */
