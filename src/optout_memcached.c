/*
 * libmemcached settings and the per-server markers, shared by the module
 * and optoutctl.
 */

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "optout_memcached.h"


#define OPTOUT_MARKER_TRIES  100000


/*
 * libmemcached's defaults (seconds-long timeouts, Nagle) are wrong for a
 * gate: every step of a call is bounded by timeout_ms.  Failed servers are
 * never ejected: keys of a dead server must fail, not move to another one
 * that does not hold them.
 */

int
optout_mc_tune(memcached_st *mc, unsigned timeout_ms)
{
    uint64_t  ms;

    ms = timeout_ms;

    if (memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_NO_BLOCK, 1)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, ms)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, ms)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RCV_TIMEOUT,
                                  ms * 1000)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_SND_TIMEOUT,
                                  ms * 1000)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 1)
           != MEMCACHED_SUCCESS
        || memcached_behavior_set(mc, MEMCACHED_BEHAVIOR_AUTO_EJECT_HOSTS, 0)
           != MEMCACHED_SUCCESS)
    {
        return -1;
    }

    return 0;
}


int
optout_markers(memcached_st *mc, const char *prefix, size_t prefix_len,
    optout_markers_t *markers)
{
    int        len;
    char       key[OPTOUT_STORE_KEY_MAX + 1];
    unsigned   i, n, found;
    uint32_t   server;

    if (prefix_len > OPTOUT_PREFIX_MAX) {
        return OPTOUT_ETOOLONG;
    }

    n = memcached_server_count(mc);
    if (n == 0 || n > OPTOUT_MARKERS_MAX) {
        return OPTOUT_ETOOLONG;
    }

    markers->n = n;

    for (i = 0; i < n; i++) {
        markers->len[i] = 0;
    }

    found = 0;

    for (i = 0; i < OPTOUT_MARKER_TRIES && found < n; i++) {
        len = snprintf(key, sizeof(key), "%.*s" OPTOUT_MARKER_KEY "%u",
                       (int) prefix_len, prefix, i);
        if (len < 0 || (size_t) len >= sizeof(key)) {
            return OPTOUT_ETOOLONG;
        }

        server = memcached_generate_hash(mc, key, len);
        if (server >= n || markers->len[server]) {
            continue;
        }

        memcpy(markers->key[server], key, len + 1);
        markers->len[server] = len;
        found++;
    }

    return found == n ? OPTOUT_OK : OPTOUT_ETOOLONG;
}


size_t
optout_marker_value(char *out, size_t size)
{
    int  n;

    n = snprintf(out, size, "1 %lld", (long long) time(NULL));

    return (n < 0 || (size_t) n >= size) ? 0 : (size_t) n;
}
