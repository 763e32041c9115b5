
/*
 * The journal: the durable record of every opt-out, one JSON line each.
 * Lines are appended with O_APPEND, one write() per batch, so lines of
 * several workers never interleave; a thread-pool task writes and
 * fdatasync()s a batch while the next one fills (group commit), and the
 * requests of a batch are answered only after their fdatasync().
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_JOURNAL_BUF  65536


typedef struct {
    u_char                      *data;
    size_t                       len;
    size_t                       size;
    ngx_queue_t                  waiters;
} ngx_http_optout_batch_t;


struct ngx_http_optout_journal_s {
    ngx_open_file_t             *file;
    ngx_thread_pool_t           *thread_pool;
    ngx_log_t                   *log;
    ngx_thread_task_t           *task;
    ngx_http_optout_batch_t      batch[2];
    ngx_http_optout_batch_t     *filling;
    ngx_http_optout_batch_t     *writing;
    ngx_event_t                  fail_event;
    ngx_fd_t                     checked_fd;
};


typedef struct {
    ngx_http_optout_journal_t   *journal;
    ngx_fd_t                     fd;
    ngx_err_t                    err;
    const char                  *op;
} ngx_http_optout_journal_ctx_t;


static ngx_int_t ngx_http_optout_journal_post(ngx_http_optout_journal_t *j);
static void ngx_http_optout_journal_reopened(ngx_http_optout_journal_t *j);
static void ngx_http_optout_journal_fail(ngx_event_t *ev);
static void ngx_http_optout_journal_thread(void *data, ngx_log_t *log);
static void ngx_http_optout_journal_done(ngx_event_t *ev);


char *
ngx_http_optout_journal_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->journal_file) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        return "is empty";
    }

    /* opened by the master, reopened on "nginx -s reopen" like access logs */

    omcf->journal_file = ngx_conf_open_file(cf->cycle, &value[1]);
    if (omcf->journal_file == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * In the master, once the journal is open: end a line cut short by a crash
 * so that the next line starts clean, and take away access for others.
 */

ngx_int_t
ngx_http_optout_journal_init_module(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    u_char            c;
    ssize_t           n;
    ngx_fd_t          fd, rfd;
    ngx_err_t         err;
    ngx_file_info_t   fi;

    fd = omcf->journal_file->fd;

    if (fd == NGX_INVALID_FILE) {
        /* "nginx -t" does not open files */
        return NGX_OK;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: fstat(\"%V\") failed",
                      &omcf->journal_file->name);
        return NGX_ERROR;
    }

    if (fi.st_mode & S_IRWXO) {
        if (fchmod(fd, fi.st_mode & 0770) == -1) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, ngx_errno,
                          "optout: fchmod(\"%V\") failed",
                          &omcf->journal_file->name);
        }
    }

    if (ngx_file_size(&fi) == 0) {
        return NGX_OK;
    }

    /* the descriptor nginx opened is write-only */

    rfd = ngx_open_file(omcf->journal_file->name.data, NGX_FILE_RDONLY,
                        NGX_FILE_OPEN, 0);
    if (rfd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: cannot open journal \"%V\" for reading",
                      &omcf->journal_file->name);
        return NGX_ERROR;
    }

    n = pread(rfd, &c, 1, ngx_file_size(&fi) - 1);
    err = ngx_errno;

    (void) ngx_close_file(rfd);

    if (n != 1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, err,
                      "optout: cannot read the end of journal \"%V\"",
                      &omcf->journal_file->name);
        return NGX_ERROR;
    }

    if (c != '\n') {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "optout: journal \"%V\" ends with a partial line, "
                      "ending it; replay skips such lines",
                      &omcf->journal_file->name);

        if (write(fd, "\n", 1) != 1 || fdatasync(fd) == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "optout: cannot write journal \"%V\"",
                          &omcf->journal_file->name);
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_optout_journal_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_uint_t                  i;
    ngx_http_optout_journal_t  *j;

    j = ngx_pcalloc(cycle->pool, sizeof(ngx_http_optout_journal_t));
    if (j == NULL) {
        return NGX_ERROR;
    }

    j->file = omcf->journal_file;
    j->thread_pool = omcf->thread_pool;
    j->log = cycle->log;

    for (i = 0; i < 2; i++) {
        j->batch[i].size = NGX_HTTP_OPTOUT_JOURNAL_BUF;
        j->batch[i].data = ngx_alloc(j->batch[i].size, cycle->log);
        if (j->batch[i].data == NULL) {
            return NGX_ERROR;
        }

        ngx_queue_init(&j->batch[i].waiters);
    }

    j->filling = &j->batch[0];
    j->checked_fd = omcf->journal_file->fd;

    j->fail_event.handler = ngx_http_optout_journal_fail;
    j->fail_event.data = j;
    j->fail_event.log = cycle->log;

    j->task = ngx_thread_task_alloc(cycle->pool,
                                    sizeof(ngx_http_optout_journal_ctx_t));
    if (j->task == NULL) {
        return NGX_ERROR;
    }

    j->task->handler = ngx_http_optout_journal_thread;
    j->task->event.handler = ngx_http_optout_journal_done;
    j->task->event.data = j;

    omcf->journal = j;

    return NGX_OK;
}


void
ngx_http_optout_journal_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_uint_t                  i;
    ngx_http_optout_journal_t  *j;

    j = omcf->journal;

    /* a request waits for its line, so no batch is pending at exit */

    for (i = 0; i < 2; i++) {
        ngx_free(j->batch[i].data);
    }

    omcf->journal = NULL;
}


ngx_int_t
ngx_http_optout_journal_append(ngx_http_optout_journal_t *j, u_char *line,
    size_t len, ngx_http_optout_waiter_t *w)
{
    u_char                   *p;
    size_t                    size;
    ngx_http_optout_batch_t  *b;

    b = j->filling;

    if (b->len + len > b->size) {
        size = ngx_max(b->size * 2, b->len + len);

        p = ngx_alloc(size, j->log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, b->data, b->len);
        ngx_free(b->data);

        b->data = p;
        b->size = size;
    }

    ngx_memcpy(b->data + b->len, line, len);
    b->len += len;

    ngx_queue_insert_tail(&b->waiters, &w->queue);

    if (j->writing == NULL) {
        (void) ngx_http_optout_journal_post(j);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_journal_post(ngx_http_optout_journal_t *j)
{
    ngx_fd_t                        fd;
    ngx_http_optout_journal_ctx_t  *ctx;

    /*
     * the thread writes to its own duplicate of the descriptor: a reopen
     * on the event loop may close the original meanwhile
     */

    if (j->file->fd != j->checked_fd) {
        ngx_http_optout_journal_reopened(j);
    }

    fd = dup(j->file->fd);

    if (fd == -1) {
        ngx_log_error(NGX_LOG_ALERT, j->log, ngx_errno,
                      "optout: dup() of journal \"%V\" failed",
                      &j->file->name);
        goto failed;
    }

    ctx = j->task->ctx;
    ctx->journal = j;
    ctx->fd = fd;
    ctx->err = 0;
    ctx->op = NULL;

    j->writing = j->filling;
    j->filling = (j->writing == &j->batch[0]) ? &j->batch[1] : &j->batch[0];

    if (ngx_thread_task_post(j->thread_pool, j->task) != NGX_OK) {
        (void) close(fd);

        /* undo: the batch stays where it was filling */
        j->filling = j->writing;
        j->writing = NULL;
        goto failed;
    }

    return NGX_OK;

failed:

    /* answered from the posted events, never from inside the caller */

    if (!j->fail_event.posted) {
        ngx_post_event(&j->fail_event, &ngx_posted_events);
    }

    return NGX_ERROR;
}


/*
 * "nginx -s reopen" creates the new file with the default mode: take away
 * access for others, as at start, since the journal holds destinations
 */

static void
ngx_http_optout_journal_reopened(ngx_http_optout_journal_t *j)
{
    ngx_file_info_t  fi;

    j->checked_fd = j->file->fd;

    if (ngx_fd_info(j->file->fd, &fi) == NGX_FILE_ERROR) {
        return;
    }

    if ((fi.st_mode & S_IRWXO) && fchmod(j->file->fd, fi.st_mode & 0770) == -1)
    {
        ngx_log_error(NGX_LOG_WARN, j->log, ngx_errno,
                      "optout: fchmod(\"%V\") failed", &j->file->name);
    }
}


static void
ngx_http_optout_journal_fail(ngx_event_t *ev)
{
    ngx_http_optout_journal_t *j = ev->data;

    ngx_queue_t               *q;
    ngx_http_optout_batch_t   *b;
    ngx_http_optout_waiter_t  *w;

    if (j->writing) {
        /* a later post went through and takes this batch along */
        return;
    }

    b = j->filling;
    b->len = 0;

    while (!ngx_queue_empty(&b->waiters)) {
        q = ngx_queue_head(&b->waiters);
        ngx_queue_remove(q);

        w = ngx_queue_data(q, ngx_http_optout_waiter_t, queue);
        w->rc = NGX_ERROR;
        w->handler(w);
    }
}


static void
ngx_http_optout_journal_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_journal_ctx_t *ctx = data;

    u_char                     *p;
    size_t                      len;
    ssize_t                     n;
    ngx_http_optout_batch_t    *b;

    b = ctx->journal->writing;

    p = b->data;
    len = b->len;

    while (len) {
        n = write(ctx->fd, p, len);

        if (n == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            ctx->err = ngx_errno;
            ctx->op = "write()";
            goto done;
        }

        p += n;
        len -= n;
    }

    if (fdatasync(ctx->fd) == -1) {
        ctx->err = ngx_errno;
        ctx->op = "fdatasync()";
    }

done:

    (void) close(ctx->fd);
}


static void
ngx_http_optout_journal_done(ngx_event_t *ev)
{
    ngx_http_optout_journal_t *j = ev->data;

    ngx_int_t                       rc;
    ngx_queue_t                    *q;
    ngx_http_optout_batch_t        *b;
    ngx_http_optout_waiter_t       *w;
    ngx_http_optout_journal_ctx_t  *ctx;

    ctx = j->task->ctx;
    b = j->writing;

    rc = NGX_OK;

    if (ctx->err) {
        ngx_log_error(NGX_LOG_CRIT, j->log, ctx->err,
                      "optout: %s of journal \"%V\" failed, %uz bytes "
                      "of opt-outs not recorded", ctx->op, &j->file->name,
                      b->len);
        rc = NGX_ERROR;
    }

    b->len = 0;
    j->writing = NULL;

    /* the next batch goes to the disk while these requests are answered */

    if (j->filling->len) {
        (void) ngx_http_optout_journal_post(j);
    }

    while (!ngx_queue_empty(&b->waiters)) {
        q = ngx_queue_head(&b->waiters);
        ngx_queue_remove(q);

        w = ngx_queue_data(q, ngx_http_optout_waiter_t, queue);
        w->rc = rc;
        w->handler(w);
    }
}
