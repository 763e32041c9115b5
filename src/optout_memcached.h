/*
 * Shared by ngx_http_optout_module and optoutctl: how both talk to the
 * store with libmemcached.  No nginx dependency.
 */

#ifndef _OPTOUT_MEMCACHED_H_INCLUDED_
#define _OPTOUT_MEMCACHED_H_INCLUDED_


#include <libmemcached/memcached.h>

#include "optout_core.h"


#define OPTOUT_MARKERS_MAX  64      /* memcached servers */
#define OPTOUT_MARKER_KEY   "marker:"


/*
 * The store counts as seeded on a server while that server holds its
 * marker: PREFIX "marker:" N, with N the smallest number whose key the
 * client's distribution puts on that server.  A restarted, flushed or
 * evicted server loses its marker, and checks of keys on it then answer
 * "unavailable" until "optoutctl replay" seeds it (an empty journal will do).
 * A multi-get asks for each server's marker after that server's keys:
 * memcached answers in request order, so the marker's arrival proves
 * that server's answer complete.
 */

typedef struct {
    unsigned    n;
    size_t      len[OPTOUT_MARKERS_MAX];
    char        key[OPTOUT_MARKERS_MAX][OPTOUT_STORE_KEY_MAX + 1];
} optout_markers_t;


int optout_mc_tune(memcached_st *mc, unsigned timeout_ms);
int optout_markers(memcached_st *mc, const char *prefix, size_t prefix_len,
    optout_markers_t *markers);
size_t optout_marker_value(char *out, size_t size);


#endif /* _OPTOUT_MEMCACHED_H_INCLUDED_ */
