
/*
 * memcached on the event loop: the servers of the optout_store string,
 * keepalive connections of each worker, and one "get" of memcached's text
 * protocol a server.  libmemcached only names the servers and places keys
 * (its hash and distribution, no I/O).
 */


#ifndef _NGX_HTTP_OPTOUT_MC_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_MC_H_INCLUDED_


#include "ngx_http_optout_module.h"
#include "optout_memcached.h"


typedef struct ngx_http_optout_mc_s      ngx_http_optout_mc_t;
typedef struct ngx_http_optout_mc_get_s  ngx_http_optout_mc_get_t;

typedef void (*ngx_http_optout_mc_get_pt)(ngx_http_optout_mc_get_t *get);


/* a server as libmemcached names it, and its addresses */
typedef struct {
    ngx_str_t                    name;
    ngx_addr_t                  *addrs;
    ngx_uint_t                   naddrs;
} ngx_http_optout_mc_addr_t;


/*
 * One "get" to one server of keys[order[0]], keys[order[1]], ... in that
 * order.  memcached answers in request order and prints nothing for a
 * miss: found[k] is set for each key whose value came back, and rules[k]
 * for those below nrules.  rc: MEMCACHED_SUCCESS after a clean "END";
 * otherwise what failed, and what arrived before it stays set.
 */
struct ngx_http_optout_mc_get_s {
    ngx_http_optout_mc_t        *mc;
    ngx_uint_t                   server;
    const char                 **keys;
    size_t                      *lens;
    u_char                      *found;
    optout_rule_t               *rules;
    ngx_uint_t                   nrules;
    ngx_uint_t                  *order;
    ngx_uint_t                   n;
    memcached_return_t           rc;
    ngx_http_optout_mc_get_pt    handler;
    void                        *data;

    /* the exchange */
    void                        *conn;
    u_char                      *out;
    size_t                       out_len;
    size_t                       sent;
    size_t                       rest;      /* of a value, CRLF included */
    ngx_uint_t                   next;      /* in order[] */
    ngx_uint_t                   cur;       /* the key of a value */
    unsigned                     state:2;
    unsigned                     reused:1;
    unsigned                     received:1;
};


ngx_array_t *ngx_http_optout_mc_resolve(ngx_conf_t *cf, memcached_st *m);
ngx_http_optout_mc_t *ngx_http_optout_mc_create(ngx_cycle_t *cycle,
    ngx_str_t *conf, ngx_str_t *prefix, ngx_msec_t timeout,
    ngx_array_t *servers);
void ngx_http_optout_mc_destroy(ngx_http_optout_mc_t *mc);
optout_markers_t *ngx_http_optout_mc_markers(ngx_http_optout_mc_t *mc);
uint32_t ngx_http_optout_mc_place(ngx_http_optout_mc_t *mc, const char *key,
    size_t len);
ngx_log_t *ngx_http_optout_mc_log(ngx_http_optout_mc_t *mc);
void ngx_http_optout_mc_get(ngx_http_optout_mc_get_t *get);


#endif /* _NGX_HTTP_OPTOUT_MC_H_INCLUDED_ */
