/*
 * Used by optoutctl: many writes to memcached pipelined on one connection
 * a server, every reply read and checked.  libmemcached only says where
 * the servers are and which one holds a key.  No nginx dependency.
 */

#ifndef _OPTOUT_PIPE_H_INCLUDED_
#define _OPTOUT_PIPE_H_INCLUDED_


#include <libmemcached/memcached.h>


#define OPTOUT_PIPE_ADD      0
#define OPTOUT_PIPE_SET      1
#define OPTOUT_PIPE_DELETE   2


typedef struct optout_pipe_s  optout_pipe_t;


/* what the replies said, summed */
typedef struct {
    uint64_t        stored;
    uint64_t        not_stored;                /* add of an existing key */
    uint64_t        deleted;
    uint64_t        not_found;                 /* delete of a missing key */
} optout_pipe_counts_t;


/* mc must stay until optout_pipe_destroy(); NULL with err on failure */
optout_pipe_t *optout_pipe_create(memcached_st *mc, unsigned timeout_ms,
    char *err, size_t err_len);
/* 0, or -1 with the reason in err (a server failed: stop there) */
int optout_pipe_write(optout_pipe_t *p, unsigned op, const char *key,
    size_t key_len, const char *value, size_t value_len, char *err,
    size_t err_len);
/* sends what is queued and reads every reply */
int optout_pipe_flush(optout_pipe_t *p, char *err, size_t err_len);
const optout_pipe_counts_t *optout_pipe_counts(optout_pipe_t *p);
void optout_pipe_destroy(optout_pipe_t *p);


#endif /* _OPTOUT_PIPE_H_INCLUDED_ */
