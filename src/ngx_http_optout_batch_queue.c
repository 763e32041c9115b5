
/*
 * How many batch checks a worker runs at once, and the bounded queue of
 * those that wait for their turn.  A batch is a long thread-pool task:
 * without a limit, a flood of them fills the pool that single checks and
 * journal writes need.  Batches wait here instead, on the event loop, and
 * are refused with 503 when the queue is full or they waited too long.
 */


#include "ngx_http_optout_batch.h"


static void ngx_http_optout_batch_slot_expire(ngx_event_t *ev);


/* per worker: refusals, logged at most once a second */
static ngx_uint_t  ngx_http_optout_batch_nrefused;
static time_t      ngx_http_optout_batch_logged;


char *
ngx_http_optout_batch_concurrency_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    ngx_int_t   n;
    ngx_str_t  *value;

    if (omcf->batch_concurrency != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);
    if (n < 1 || n > 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid number \"%V\" in \"%V\", "
                           "it must be 1 to 1024", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    omcf->batch_concurrency = n;

    return NGX_CONF_OK;
}


char *
ngx_http_optout_batch_queue_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, s;
    ngx_msec_t   timeout;

    if (omcf->batch_queue != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    n = ngx_atoi(value[1].data, value[1].len);
    if (n == NGX_ERROR || n > 65535) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid queue size \"%V\" in \"%V\", "
                           "it must be 0 to 65535", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    omcf->batch_queue = n;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "timeout=", 8) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\"",
                           &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    s.data = value[2].data + 8;
    s.len = value[2].len - 8;

    timeout = ngx_parse_time(&s, 0);
    if (timeout == (ngx_msec_t) NGX_ERROR || timeout == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid timeout \"%V\" in \"%V\", it must be "
                           "a time greater than 0", &s, &cmd->name);
        return NGX_CONF_ERROR;
    }

    omcf->batch_queue_timeout = timeout;

    return NGX_CONF_OK;
}


char *
ngx_http_optout_batch_init_main_conf(ngx_conf_t *cf,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_conf_init_uint_value(omcf->batch_concurrency, 2);
    ngx_conf_init_uint_value(omcf->batch_queue, 32);
    ngx_conf_init_msec_value(omcf->batch_queue_timeout, 30000);

    ngx_queue_init(&omcf->batch_waiting);

    omcf->batch_thread_pool = omcf->thread_pool;

    if (omcf->batch_thread_pool_name.len == 0 || omcf->thread_pool == NULL) {
        return NGX_CONF_OK;
    }

    /* nginx -t fails if the pool is not declared with "thread_pool" */

    omcf->batch_thread_pool = ngx_thread_pool_add(cf,
                                                &omcf->batch_thread_pool_name);
    if (omcf->batch_thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * NGX_OK: the batch may run now; NGX_AGAIN: it waits, and slot->handler
 * is called when it may run or has waited too long; NGX_BUSY: the queue
 * is full.
 */

ngx_int_t
ngx_http_optout_batch_slot_get(ngx_http_optout_main_conf_t *omcf,
    ngx_http_optout_batch_slot_t *slot, ngx_log_t *log)
{
    slot->omcf = omcf;

    if (omcf->batch_running < omcf->batch_concurrency) {
        omcf->batch_running++;
        slot->state = NGX_HTTP_OPTOUT_SLOT_RUNNING;
        return NGX_OK;
    }

    if (omcf->batch_nwaiting >= omcf->batch_queue) {
        return NGX_BUSY;
    }

    ngx_queue_insert_tail(&omcf->batch_waiting, &slot->queue);
    omcf->batch_nwaiting++;
    slot->state = NGX_HTTP_OPTOUT_SLOT_WAITING;

    slot->timeout.handler = ngx_http_optout_batch_slot_expire;
    slot->timeout.data = slot;
    slot->timeout.log = log;

    ngx_add_timer(&slot->timeout, omcf->batch_queue_timeout);

    return NGX_AGAIN;
}


/* no place to run or wait: refuse before the body is read */

ngx_uint_t
ngx_http_optout_batch_slot_full(ngx_http_optout_main_conf_t *omcf)
{
    return omcf->batch_running >= omcf->batch_concurrency
           && omcf->batch_nwaiting >= omcf->batch_queue;
}


void
ngx_http_optout_batch_refused(ngx_http_optout_main_conf_t *omcf,
    ngx_log_t *log)
{
    ngx_http_optout_batch_nrefused++;
    ngx_http_optout_metric_inc(NGX_HTTP_OPTOUT_M_QUEUE_FULL);

    if (ngx_http_optout_batch_logged == ngx_time()) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, log, 0,
                  "optout: %ui batch checks running and %ui waiting, "
                  "%ui batch checks refused since the last such message",
                  omcf->batch_running, omcf->batch_nwaiting,
                  ngx_http_optout_batch_nrefused);

    ngx_http_optout_batch_nrefused = 0;
    ngx_http_optout_batch_logged = ngx_time();
}


/*
 * A running batch is done, or a waiting one leaves (its request is
 * finalized): the first ones waiting take the free places.
 */

void
ngx_http_optout_batch_slot_put(ngx_http_optout_batch_slot_t *slot)
{
    ngx_queue_t                   *q;
    ngx_http_optout_main_conf_t   *omcf;
    ngx_http_optout_batch_slot_t  *next;

    omcf = slot->omcf;

    switch (slot->state) {

    case NGX_HTTP_OPTOUT_SLOT_WAITING:
        ngx_queue_remove(&slot->queue);
        omcf->batch_nwaiting--;

        if (slot->timeout.timer_set) {
            ngx_del_timer(&slot->timeout);
        }

        slot->state = NGX_HTTP_OPTOUT_SLOT_NONE;
        return;

    case NGX_HTTP_OPTOUT_SLOT_RUNNING:
        omcf->batch_running--;
        slot->state = NGX_HTTP_OPTOUT_SLOT_NONE;
        break;

    default:
        return;
    }

    while (omcf->batch_running < omcf->batch_concurrency
           && !ngx_queue_empty(&omcf->batch_waiting))
    {
        q = ngx_queue_head(&omcf->batch_waiting);
        next = ngx_queue_data(q, ngx_http_optout_batch_slot_t, queue);

        ngx_queue_remove(q);
        omcf->batch_nwaiting--;

        if (next->timeout.timer_set) {
            ngx_del_timer(&next->timeout);
        }

        omcf->batch_running++;
        next->state = NGX_HTTP_OPTOUT_SLOT_RUNNING;
        next->rc = NGX_OK;

        next->handler(next);
    }
}


static void
ngx_http_optout_batch_slot_expire(ngx_event_t *ev)
{
    ngx_http_optout_batch_slot_t *slot = ev->data;

    ngx_queue_remove(&slot->queue);
    slot->omcf->batch_nwaiting--;
    slot->state = NGX_HTTP_OPTOUT_SLOT_NONE;
    slot->rc = NGX_BUSY;

    slot->handler(slot);
}
