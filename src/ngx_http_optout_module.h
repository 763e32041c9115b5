
/*
 * ngx_http_optout_module: signed one-click opt-out links and the block
 * rules they record.  Types shared by the module's files.
 */


#ifndef _NGX_HTTP_OPTOUT_MODULE_H_INCLUDED_
#define _NGX_HTTP_OPTOUT_MODULE_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_thread_pool.h>

#include "optout_core.h"


#define NGX_HTTP_OPTOUT_RESULT_NONE      0
#define NGX_HTTP_OPTOUT_RESULT_CONFIRM   1
#define NGX_HTTP_OPTOUT_RESULT_RECORDED  2
#define NGX_HTTP_OPTOUT_RESULT_INVALID   3
#define NGX_HTTP_OPTOUT_RESULT_ERROR     4

#define NGX_HTTP_OPTOUT_STATUS_NONE         0
#define NGX_HTTP_OPTOUT_STATUS_ALLOWED      1
#define NGX_HTTP_OPTOUT_STATUS_BLOCKED      2
#define NGX_HTTP_OPTOUT_STATUS_INVALID      3
#define NGX_HTTP_OPTOUT_STATUS_UNAVAILABLE  4
#define NGX_HTTP_OPTOUT_STATUS_UNVERIFIED   5

#define NGX_HTTP_OPTOUT_HOLD             10000

#define NGX_HTTP_OPTOUT_FAIL_CLOSED      0
#define NGX_HTTP_OPTOUT_FAIL_OPEN        1


/*
 * Counters of optout_metrics (ngx_http_optout_metrics.c), one slot each;
 * a family with a label takes consecutive slots.
 */
#define NGX_HTTP_OPTOUT_M_LINK           0      /* + RESULT_* */
#define NGX_HTTP_OPTOUT_M_CHECK          5      /* + STATUS_* */
#define NGX_HTTP_OPTOUT_M_BATCH          11     /* + M_BATCH_* below */
#define NGX_HTTP_OPTOUT_M_BATCH_DEST     16     /* + STATUS_* */
#define NGX_HTTP_OPTOUT_M_QUEUE_FULL     22
#define NGX_HTTP_OPTOUT_M_QUEUE_TIMEOUT  23
#define NGX_HTTP_OPTOUT_M_JOURNAL_LINES  24
#define NGX_HTTP_OPTOUT_M_JOURNAL_BYTES  25
#define NGX_HTTP_OPTOUT_M_JOURNAL_FAILED 26
#define NGX_HTTP_OPTOUT_M_HIT            27
#define NGX_HTTP_OPTOUT_M_MISS           28
#define NGX_HTTP_OPTOUT_M_EVICTIONS      29
#define NGX_HTTP_OPTOUT_M_API            30     /* + M_API_* below */
#define NGX_HTTP_OPTOUT_M_KEYWORD        35     /* + OPTOUT_KW_* - 1 */
#define NGX_HTTP_OPTOUT_M_KEYWORD_REPEATS 38
#define NGX_HTTP_OPTOUT_M_MAX            39

#define NGX_HTTP_OPTOUT_M_BATCH_ANSWERED     0
#define NGX_HTTP_OPTOUT_M_BATCH_INVALID      1
#define NGX_HTTP_OPTOUT_M_BATCH_UNAVAILABLE  2
#define NGX_HTTP_OPTOUT_M_BATCH_REFUSED      3
#define NGX_HTTP_OPTOUT_M_BATCH_ERROR        4

#define NGX_HTTP_OPTOUT_M_API_ADDED          0  /* as the API's item status */
#define NGX_HTTP_OPTOUT_M_API_PRESENT        1
#define NGX_HTTP_OPTOUT_M_API_INVALID        2
#define NGX_HTTP_OPTOUT_M_API_REMOVED        3
#define NGX_HTTP_OPTOUT_M_API_NOT_FOUND      4

/* gauges */
#define NGX_HTTP_OPTOUT_G_PENDING        0
#define NGX_HTTP_OPTOUT_G_APPLIER_LAG    1
#define NGX_HTTP_OPTOUT_G_CACHE_ENTRIES  2
#define NGX_HTTP_OPTOUT_G_MAX            3


typedef struct ngx_http_optout_store_s    ngx_http_optout_store_t;
typedef struct ngx_http_optout_journal_s  ngx_http_optout_journal_t;
typedef struct ngx_http_optout_waiter_s   ngx_http_optout_waiter_t;
typedef struct ngx_http_optout_cache_s    ngx_http_optout_cache_t;
typedef struct ngx_http_optout_pending_s  ngx_http_optout_pending_t;
typedef struct ngx_http_optout_applier_s  ngx_http_optout_applier_t;
typedef struct ngx_http_optout_metrics_s  ngx_http_optout_metrics_t;
typedef struct ngx_http_optout_inbound_conf_s
    ngx_http_optout_inbound_conf_t;

typedef struct ngx_http_optout_lookup_s    ngx_http_optout_lookup_t;
typedef struct ngx_http_optout_record_s    ngx_http_optout_record_t;

typedef void (*ngx_http_optout_done_pt)(ngx_http_optout_waiter_t *w);
typedef void (*ngx_http_optout_lookup_pt)(ngx_http_optout_lookup_t *lk);
typedef void (*ngx_http_optout_record_pt)(ngx_http_optout_record_t *rec);
typedef void (*ngx_http_optout_keys_pt)(void *data, ngx_int_t rc);


/* one asynchronous operation a request waits for */
struct ngx_http_optout_waiter_s {
    ngx_queue_t                  queue;
    ngx_http_optout_done_pt      handler;
    void                        *data;
    ngx_int_t                    rc;
};


#define NGX_HTTP_OPTOUT_LOOKUP_KEYS  2


/*
 * A lookup of the rules of one destination (account-wide and per sender).
 * rc: NGX_OK when every server that holds one of the keys answered
 * completely (its marker came back), NGX_ERROR when one did not after a
 * failure (error, cut, timeout), NGX_DECLINED when one ended without its
 * marker (not seeded).
 */
struct ngx_http_optout_lookup_s {
    ngx_queue_t                  queue;
    void                        *mget;
    ngx_uint_t                   nkeys;
    u_char                      *key[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    size_t                       key_len[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    ngx_uint_t                   index[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    ngx_uint_t                   found[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    optout_rule_t                rule[NGX_HTTP_OPTOUT_LOOKUP_KEYS];
    ngx_int_t                    rc;
    ngx_uint_t                   timedout;  /* rc NGX_ERROR: the timer */
    ngx_event_t                  timer;
    ngx_http_optout_lookup_pt    handler;
    void                        *data;
};


/* one opt-out or opt-in of one rule, as the journal and the store take it */
typedef struct {
    ngx_uint_t                   optin;
    ngx_uint_t                   stored;    /* the store write landed */
    ngx_uint_t                   absent;    /* memcached said: no rule */
    optout_rule_t                rule;      /* opt-out: the rule recorded */
    size_t                       key_len;
    u_char                       key[OPTOUT_STORE_KEY_MAX + 1];
} ngx_http_optout_change_t;


/*
 * Changes recorded for one request (ngx_http_optout_rule.c): their
 * journal lines, one group write, then the store, the cache and the
 * pending set.  rc: NGX_OK once the lines are in the journal.
 */
struct ngx_http_optout_record_s {
    ngx_http_request_t          *request;
    ngx_http_optout_change_t    *changes;
    ngx_uint_t                   n;
    u_char                      *lines;
    size_t                       len;
    ngx_http_optout_record_pt    handler;
    void                        *data;
    ngx_int_t                    rc;
    ngx_http_optout_waiter_t     journal_waiter;
    ngx_http_optout_waiter_t     store_waiter;
    ngx_event_t                  hold;
};


typedef struct {
    ngx_str_t                    text;
    ngx_uint_t                   var;       /* NGX_HTTP_OPTOUT_TPL_* */
} ngx_http_optout_tpl_part_t;

#define NGX_HTTP_OPTOUT_TPL_TEXT         0
#define NGX_HTTP_OPTOUT_TPL_DESTINATION  1
#define NGX_HTTP_OPTOUT_TPL_SENDER       2
#define NGX_HTTP_OPTOUT_TPL_ACTION       3


/*
 * parts by kind (email destination: +1, sender scope: +2): the built-in
 * pages name the channel and the sender, a page file serves every kind
 */
#define NGX_HTTP_OPTOUT_TPL_KINDS        4

typedef struct {
    ngx_array_t                 *parts[NGX_HTTP_OPTOUT_TPL_KINDS];
    ngx_str_t                    file;
} ngx_http_optout_tpl_t;


typedef struct {
    ngx_str_t                    store_conf;
    ngx_array_t                 *store_servers; /* of the multi-get */
    ngx_str_t                    store_prefix;
    ngx_msec_t                   store_timeout;
    ngx_str_t                    thread_pool_name;

    ngx_array_t                 *keys;      /* optout_key_t, signer first */
    optout_mac_t                *store_mac;
    ngx_str_t                    store_secret_file;

    ngx_open_file_t             *journal_file;

    ngx_thread_pool_t           *thread_pool;

    ngx_http_optout_cache_t     *cache;     /* NULL: no optout_cache */
    ngx_http_optout_pending_t   *pending;   /* NULL: no journal */
    ngx_http_optout_applier_t   *applier;   /* set in init_module */
    ngx_http_optout_metrics_t   *metrics;

    ngx_int_t                    check_concurrency;
    ngx_uint_t                   batch_concurrency;
    ngx_uint_t                   batch_queue;
    ngx_msec_t                   batch_queue_timeout;
    ngx_str_t                    batch_thread_pool_name;
    ngx_thread_pool_t           *batch_thread_pool;

    /* per worker: batches running and waiting (batch_queue.c) */
    ngx_uint_t                   batch_running;
    ngx_uint_t                   batch_nwaiting;
    ngx_queue_t                  batch_waiting;

    /* per worker, set in init_process */
    ngx_http_optout_store_t     *store;
    ngx_http_optout_journal_t   *journal;
} ngx_http_optout_main_conf_t;


typedef struct {
    ngx_flag_t                   link;
    ngx_flag_t                   check;
    ngx_flag_t                   api;
    ngx_http_complex_value_t    *namespace;
    ngx_array_t                 *api_destination;    /* input sources */
    ngx_array_t                 *api_sender;
    ngx_array_t                 *check_destination;  /* input sources */
    ngx_array_t                 *check_sender;
    ngx_msec_t                   check_timeout;
    ngx_uint_t                   check_fail;
    ngx_http_optout_tpl_t       *confirm_page;
    ngx_http_optout_tpl_t       *done_page;
    ngx_http_optout_inbound_conf_t  *inbound;
} ngx_http_optout_loc_conf_t;


typedef struct {
    optout_link_t                link;
    ngx_uint_t                   result;
    ngx_str_t                    masked;
    ngx_str_t                    token;
    ngx_str_t                    ns;

    ngx_http_optout_record_t     record;
    ngx_http_optout_change_t     change;

    /* the send-time check */
    ngx_uint_t                   status;
    ngx_uint_t                   rule_sender;   /* the rule is per sender */
    ngx_uint_t                   pending_busy;  /* overflowed before */
    optout_rule_t                rule;
    ngx_http_optout_lookup_t     lookup;
    ngx_http_request_t          *request;
    const char                  *reason;
    u_char                       keys[NGX_HTTP_OPTOUT_LOOKUP_KEYS]
                                     [OPTOUT_STORE_KEY_MAX + 1];

    /* an inbound webhook: its first message with a keyword */
    ngx_str_t                    kw_action;
    ngx_str_t                    kw_keyword;
    ngx_str_t                    kw_reply;
} ngx_http_optout_ctx_t;


extern ngx_module_t  ngx_http_optout_module;


/* ngx_http_optout_http.c */
ngx_int_t ngx_http_optout_namespace(ngx_http_request_t *r,
    ngx_http_optout_loc_conf_t *olcf, ngx_http_optout_ctx_t *ctx);
void ngx_http_optout_hold(ngx_http_request_t *r, ngx_event_t *ev);
ngx_int_t ngx_http_optout_resume(ngx_http_request_t *r, ngx_event_t *ev);
ngx_int_t ngx_http_optout_not_allowed(ngx_http_request_t *r);
ngx_int_t ngx_http_optout_add_header(ngx_http_request_t *r, char *name,
    u_char *value, size_t len);
ngx_int_t ngx_http_optout_send_json(ngx_http_request_t *r,
    ngx_uint_t status, ngx_buf_t *b);
ngx_int_t ngx_http_optout_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, ngx_buf_t *b);
ngx_int_t ngx_http_optout_unescape(ngx_http_request_t *r, ngx_str_t *v);
u_char *ngx_http_optout_since(u_char *p, int64_t t);

/* ngx_http_optout_input.c */
char *ngx_http_optout_input_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_array_t *ngx_http_optout_input_default(ngx_conf_t *cf, char *arg);
ngx_int_t ngx_http_optout_input(ngx_http_request_t *r, ngx_array_t *sources,
    ngx_str_t *value);

/* ngx_http_optout_link.c */
char *ngx_http_optout_link(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

/* ngx_http_optout_rule.c */
ngx_int_t ngx_http_optout_rule_key(ngx_http_request_t *r, ngx_str_t *ns,
    const char *sender, size_t sender_len, optout_dest_t *dest, u_char *key,
    size_t *key_len);
void ngx_http_optout_rule_who(ngx_http_request_t *r,
    optout_journal_rec_t *rec);
ngx_int_t ngx_http_optout_rule_record(ngx_http_optout_record_t *rec);

/* ngx_http_optout_api.c */
char *ngx_http_optout_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_optout_api_merge(ngx_conf_t *cf,
    ngx_http_optout_loc_conf_t *conf);

/* ngx_http_optout_api_add.c */
ngx_int_t ngx_http_optout_api_add_handler(ngx_http_request_t *r);

/* ngx_http_optout_inbound.c */
char *ngx_http_optout_inbound(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_optout_inbound_init(ngx_conf_t *cf);

/* ngx_http_optout_inbound_conf.c */
ngx_http_optout_inbound_conf_t *ngx_http_optout_inbound_create_conf(
    ngx_conf_t *cf);
char *ngx_http_optout_inbound_merge_conf(ngx_conf_t *cf,
    ngx_http_optout_inbound_conf_t *prev,
    ngx_http_optout_inbound_conf_t *conf);
char *ngx_http_optout_inbound_format(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_inbound_scope(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_inbound_campaign(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_keyword_match(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_keyword(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_keyword_reply(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/* ngx_http_optout_inbound_verify.c */
char *ngx_http_optout_inbound_verify_conf(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);

/* ngx_http_optout_check.c */
char *ngx_http_optout_check(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_optout_check_merge(ngx_conf_t *cf,
    ngx_http_optout_loc_conf_t *conf);

/* ngx_http_optout_batch.c */
ngx_int_t ngx_http_optout_batch_handler(ngx_http_request_t *r);

/* ngx_http_optout_batch_queue.c */
char *ngx_http_optout_batch_concurrency_conf(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_optout_batch_queue_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_optout_batch_init_main_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf);

/* ngx_http_optout_page.c */
char *ngx_http_optout_page_set(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_http_optout_tpl_t *ngx_http_optout_page_default(ngx_conf_t *cf,
    ngx_uint_t done);
ngx_int_t ngx_http_optout_page_send(ngx_http_request_t *r,
    ngx_http_optout_tpl_t *tpl, ngx_http_optout_ctx_t *ctx);

/* ngx_http_optout_store.c */
#define NGX_HTTP_OPTOUT_STORE_ADD     0
#define NGX_HTTP_OPTOUT_STORE_DELETE  1
#define NGX_HTTP_OPTOUT_STORE_SET     2


char *ngx_http_optout_store_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_optout_store_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
void ngx_http_optout_store_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
ngx_int_t ngx_http_optout_store_lookup(ngx_http_optout_store_t *store,
    ngx_http_optout_lookup_t *lk, ngx_msec_t timeout, ngx_log_t *log);
void ngx_http_optout_store_lookup_cancel(ngx_http_optout_lookup_t *lk);
ngx_int_t ngx_http_optout_store_mget(ngx_http_optout_store_t *store,
    const char **keys, size_t *lens, ngx_uint_t n, u_char *found,
    optout_rule_t *rules, ngx_http_optout_keys_pt handler, void *data);
ngx_int_t ngx_http_optout_store_write(ngx_http_request_t *r,
    ngx_http_optout_store_t *store, ngx_http_optout_change_t *changes,
    ngx_uint_t n, ngx_http_optout_waiter_t *w);
const char *ngx_http_optout_store_apply(ngx_http_optout_store_t *store,
    ngx_uint_t op, u_char *key, size_t key_len, u_char *value,
    size_t value_len);

/* ngx_http_optout_journal.c */
char *ngx_http_optout_journal_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_optout_journal_init_module(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
ngx_int_t ngx_http_optout_journal_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
void ngx_http_optout_journal_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
ngx_int_t ngx_http_optout_journal_append(ngx_http_optout_journal_t *j,
    u_char *line, size_t len, ngx_http_optout_waiter_t *w);

/* ngx_http_optout_pending.c */
ngx_int_t ngx_http_optout_pending_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf);
ngx_int_t ngx_http_optout_pending_add(ngx_http_optout_pending_t *p,
    u_char *key, size_t len, optout_rule_t *rule, ngx_log_t *log);
void ngx_http_optout_pending_remove(ngx_http_optout_pending_t *p,
    u_char *key, size_t len);
ngx_int_t ngx_http_optout_pending_find(ngx_http_optout_pending_t *p,
    u_char *key, size_t len, optout_rule_t *rule);
ngx_int_t ngx_http_optout_pending_claim(ngx_http_optout_pending_t *p);
void ngx_http_optout_pending_release(ngx_http_optout_pending_t *p);
void ngx_http_optout_pending_kick(ngx_http_optout_pending_t *p);
ngx_uint_t ngx_http_optout_pending_kicked(ngx_http_optout_pending_t *p);
uint64_t ngx_http_optout_pending_start(ngx_http_optout_pending_t *p);
void ngx_http_optout_pending_end(ngx_http_optout_pending_t *p, uint64_t pass);
ngx_uint_t ngx_http_optout_pending_passing(ngx_http_optout_pending_t *p);
void ngx_http_optout_pending_done(ngx_http_optout_pending_t *p,
    uint64_t pass, ngx_log_t *log);

/* ngx_http_optout_applier.c */
ngx_int_t ngx_http_optout_applier_init_module(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
ngx_int_t ngx_http_optout_applier_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);
void ngx_http_optout_applier_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf);

/* ngx_http_optout_cache.c */
char *ngx_http_optout_cache_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_optout_cache_get(ngx_http_optout_cache_t *cache,
    u_char *key, size_t len, optout_rule_t *rule);
void ngx_http_optout_cache_put(ngx_http_optout_cache_t *cache, u_char *key,
    size_t len, optout_rule_t *rule);
void ngx_http_optout_cache_remove(ngx_http_optout_cache_t *cache,
    u_char *key, size_t len);
void ngx_http_optout_cache_rule(ngx_http_request_t *r, u_char *key,
    size_t len, optout_rule_t *rule);

/* ngx_http_optout_metrics.c */
char *ngx_http_optout_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_optout_metrics_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf);
void ngx_http_optout_metric_add(ngx_uint_t i, ngx_atomic_uint_t n);
void ngx_http_optout_metric_set(ngx_uint_t i, ngx_atomic_uint_t v);
void ngx_http_optout_metric_batch(ngx_uint_t status, ngx_uint_t ran);
void ngx_http_optout_metric_dest(ngx_uint_t status, ngx_uint_t unverified);
void ngx_http_optout_metric_journal(ngx_uint_t lines, size_t bytes,
    ngx_uint_t ok);
int ngx_http_optout_metric_fdatasync(ngx_fd_t fd);
void ngx_http_optout_metric_mget(ngx_uint_t server, ngx_uint_t answered,
    int rc);
void ngx_http_optout_metric_write(ngx_uint_t server, int rc);

#define ngx_http_optout_metric_inc(i)  ngx_http_optout_metric_add(i, 1)

/* ngx_http_optout_variables.c */
ngx_int_t ngx_http_optout_add_variables(ngx_conf_t *cf);


#endif /* _NGX_HTTP_OPTOUT_MODULE_H_INCLUDED_ */
