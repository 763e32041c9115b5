
/*
 * Batch checks: the request context a thread-pool task owns, and the
 * pieces it is made of: the per-worker limit and wait queue
 * (batch_queue.c), parsing the body (batch_parse.c), key derivation, the
 * multi-get and the verdicts (batch_lookup.c), and the answer
 * (batch_answer.c).
 */


#ifndef _NGX_HTTP_OPTOUT_BATCH_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_BATCH_H_INCLUDED_


#include "ngx_http_optout_module.h"

#include <jansson.h>


#define NGX_HTTP_OPTOUT_BATCH_MAX       10000
#define NGX_HTTP_OPTOUT_BATCH_SEGMENTS  8
#define NGX_HTTP_OPTOUT_ECHO_MAX        64

#define NGX_HTTP_OPTOUT_SLOT_NONE       0
#define NGX_HTTP_OPTOUT_SLOT_WAITING    1
#define NGX_HTTP_OPTOUT_SLOT_RUNNING    2


typedef struct ngx_http_optout_batch_slot_s  ngx_http_optout_batch_slot_t;

typedef void (*ngx_http_optout_batch_slot_pt)(
    ngx_http_optout_batch_slot_t *slot);


/*
 * A batch's place among the batches of a worker: running, or waiting in
 * the queue.  The handler is called when a waiting batch may run (rc
 * NGX_OK) or has waited too long (rc NGX_BUSY).
 */
struct ngx_http_optout_batch_slot_s {
    ngx_queue_t                      queue;
    ngx_event_t                      timeout;
    ngx_http_optout_main_conf_t     *omcf;
    ngx_http_optout_batch_slot_pt    handler;
    void                            *data;
    ngx_uint_t                       state;
    ngx_int_t                        rc;
};


typedef struct {
    u_char                          *data;
    size_t                           len;
    size_t                           size;
    ngx_uint_t                       failed;
} ngx_http_optout_out_t;


/* one destination as the request gave it; string 0: not a JSON string */
typedef struct {
    const u_char                    *data;
    size_t                           len;
    ngx_uint_t                       string;
} ngx_http_optout_batch_item_t;


typedef struct {
    ngx_http_optout_batch_item_t    *items;
    ngx_uint_t                       n;
    json_t                          *root;
} ngx_http_optout_batch_list_t;


/* what the batch found for one destination */
typedef struct {
    ngx_uint_t                       status;    /* NGX_HTTP_OPTOUT_STATUS_* */
    const char                      *scope;
    optout_rule_t                    rule;
    optout_dest_t                    dest;
} ngx_http_optout_batch_dest_t;


typedef struct {
    u_char                          *dst;
    off_t                            offset;
    size_t                           len;
} ngx_http_optout_segment_t;


/* a batch's store keys, "per" a valid destination, and what was found */
typedef struct {
    ngx_uint_t                       per;
    ngx_uint_t                       nkeys;
    char                            *keybuf;
    const char                     **keys;
    size_t                          *lens;
    u_char                          *found;
    optout_rule_t                   *rules;
    u_char                          *pending;   /* in the pending set */
    optout_rule_t                   *prules;
    ngx_uint_t                       busy;      /* that set overflowed */
} ngx_http_optout_batch_keys_t;


/*
 * The context of a batch check or an API add: a thread task, then perhaps
 * the multi-get of mget_keys on the event loop and a second thread task,
 * "next"; "done" ends the last one on the event loop.
 */
typedef struct {
    ngx_http_request_t              *request;
    ngx_thread_task_t               *task;
    ngx_thread_pool_t               *pool;
    ngx_event_handler_pt             done;
    void                           (*next)(void *data, ngx_log_t *log);
    const char                     **mget_keys;
    size_t                          *mget_lens;
    ngx_uint_t                       mget_n;
    u_char                          *mget_found;
    optout_rule_t                   *mget_rules;
    ngx_int_t                        mget_rc;
    ngx_http_optout_store_t         *store;
    ngx_http_optout_pending_t       *pending;
    optout_mac_t                    *mac;
    ngx_str_t                        prefix;
    ngx_str_t                        ns;
    size_t                           sender_len;
    char                             sender[OPTOUT_SENDER_MAX + 1];

    u_char                          *body;
    size_t                           body_len;
    ngx_fd_t                         fd;
    ngx_uint_t                       nsegments;
    ngx_http_optout_segment_t        segments[NGX_HTTP_OPTOUT_BATCH_SEGMENTS];

    ngx_uint_t                       status;
    const char                      *failure;   /* detail of an error */
    ngx_uint_t                       open;
    ngx_uint_t                       unverified;
    ngx_http_optout_out_t            out;
    ngx_event_t                      hold;
    ngx_http_optout_batch_slot_t     slot;

    /* a batch check between its two tasks */
    ngx_http_optout_batch_list_t     list;
    ngx_http_optout_batch_dest_t    *dests;
    ngx_http_optout_batch_keys_t     keys;
} ngx_http_optout_batch_ctx_t;


/* ngx_http_optout_batch.c */
ngx_int_t ngx_http_optout_batch_copy_body(ngx_http_request_t *r,
    ngx_http_optout_batch_ctx_t *bc);
ngx_int_t ngx_http_optout_batch_read_body(ngx_http_optout_batch_ctx_t *bc);
void ngx_http_optout_batch_stage(ngx_event_t *ev);

/* ngx_http_optout_batch_queue.c */
ngx_int_t ngx_http_optout_batch_slot_get(ngx_http_optout_main_conf_t *omcf,
    ngx_http_optout_batch_slot_t *slot, ngx_log_t *log);
void ngx_http_optout_batch_slot_put(ngx_http_optout_batch_slot_t *slot);
ngx_uint_t ngx_http_optout_batch_slot_full(ngx_http_optout_main_conf_t *omcf);
void ngx_http_optout_batch_refused(ngx_http_optout_main_conf_t *omcf,
    ngx_log_t *log);

/* ngx_http_optout_batch_parse.c */
ngx_int_t ngx_http_optout_batch_parse(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list);
void ngx_http_optout_batch_list_free(ngx_http_optout_batch_list_t *list);

/* ngx_http_optout_batch_lookup.c */
ngx_int_t ngx_http_optout_batch_lookup(ngx_http_optout_batch_ctx_t *bc);
ngx_http_optout_batch_dest_t *ngx_http_optout_batch_verdicts(
    ngx_http_optout_batch_ctx_t *bc);

/* ngx_http_optout_batch_answer.c */
void ngx_http_optout_batch_answer(ngx_http_optout_batch_ctx_t *bc,
    ngx_http_optout_batch_list_t *list, ngx_http_optout_batch_dest_t *dests);
void ngx_http_optout_batch_fail(ngx_http_optout_batch_ctx_t *bc,
    ngx_uint_t status, const char *code, const char *title,
    const char *detail);
void ngx_http_optout_out(ngx_http_optout_out_t *o, const char *s,
    size_t len);
void ngx_http_optout_out_json(ngx_http_optout_out_t *o, const u_char *s,
    size_t len, size_t max);


#endif /* _NGX_HTTP_OPTOUT_BATCH_H_INCLUDED_ */
