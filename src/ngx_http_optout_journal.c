/*
 * The journal: the durable record of every opt-out, one JSON line each.
 * Lines are appended with O_APPEND; a thread-pool task writes and
 * fdatasync()s one group of lines while the next group fills (group
 * commit), and the requests of a group are answered only after their
 * fdatasync().
 *
 * All workers append to the same file.  A worker writes its group under a
 * POSIX record lock on the whole file, so that when the write fails or is
 * short it can truncate the file back to its size before the group: the
 * journal then always ends on a line boundary, and no line of another
 * worker is glued onto a partial one.
 */


#include "ngx_http_optout_module.h"


#define NGX_HTTP_OPTOUT_JOURNAL_BUF  65536


/* a group-commit buffer: the lines of one group and their requests */

typedef struct {
    u_char                      *data;
    size_t                       len;
    size_t                       size;
    ngx_uint_t                   lines;
    ngx_queue_t                  waiters;
} ngx_http_optout_jbuf_t;


struct ngx_http_optout_journal_s {
    ngx_open_file_t             *file;
    ngx_thread_pool_t           *thread_pool;
    ngx_log_t                   *log;
    ngx_thread_task_t           *task;
    ngx_http_optout_jbuf_t       buf[2];
    ngx_http_optout_jbuf_t      *filling;
    ngx_http_optout_jbuf_t      *writing;
    ngx_event_t                  fail_event;
    ngx_fd_t                     checked_fd;
    ngx_fd_t                     read_fd;
};


/*
 * The task's inputs (its own descriptors and the buffer handed over to
 * it until completion) and what it reports back to the event loop.
 */

typedef struct {
    ngx_fd_t                     fd;
    ngx_fd_t                     read_fd;
    u_char                      *data;
    size_t                       len;

    ngx_err_t                    err;
    const char                  *op;
    off_t                        start;       /* where the group begins */
    off_t                        torn;        /* a partial line ended here */
    size_t                       written;
    ngx_err_t                    undo_err;
    const char                  *undo_op;
    ngx_err_t                    read_err;

    unsigned                     undone:1;
    unsigned                     followed:1;  /* others wrote after us */
    unsigned                     unchecked:1;
} ngx_http_optout_journal_ctx_t;


static ngx_int_t ngx_http_optout_journal_check_end(ngx_cycle_t *cycle,
    ngx_http_optout_journal_t *j);
static void ngx_http_optout_journal_cleanup(void *data);
static ngx_int_t ngx_http_optout_journal_post(ngx_http_optout_journal_t *j);
static void ngx_http_optout_journal_reopened(ngx_http_optout_journal_t *j);
static void ngx_http_optout_journal_fail(ngx_event_t *ev);
static void ngx_http_optout_journal_thread(void *data, ngx_log_t *log);
static ngx_int_t ngx_http_optout_journal_lock(ngx_fd_t fd, short type);
static ngx_int_t ngx_http_optout_journal_end_line(
    ngx_http_optout_journal_ctx_t *ctx);
static ngx_int_t ngx_http_optout_journal_write(
    ngx_http_optout_journal_ctx_t *ctx, u_char *p, size_t len);
static void ngx_http_optout_journal_sync(ngx_http_optout_journal_ctx_t *ctx);
static void ngx_http_optout_journal_undo(ngx_http_optout_journal_ctx_t *ctx);
static void ngx_http_optout_journal_done(ngx_event_t *ev);
static void ngx_http_optout_journal_log(ngx_http_optout_journal_t *j,
    ngx_http_optout_jbuf_t *b, ngx_http_optout_journal_ctx_t *ctx);


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
 * In the master, once the journal is open: take away access for others,
 * open the file for reading (the descriptor nginx opened is write-only,
 * and the workers, which may not open the file themselves, check its last
 * byte before each group), and end a partial line.
 */

ngx_int_t
ngx_http_optout_journal_init_module(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_fd_t                    fd, rfd;
    ngx_file_info_t             fi;
    ngx_pool_cleanup_t         *cln;
    ngx_http_optout_journal_t  *j;

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

    j = ngx_pcalloc(cycle->pool, sizeof(ngx_http_optout_journal_t));
    if (j == NULL) {
        return NGX_ERROR;
    }

    rfd = open((char *) omcf->journal_file->name.data,
               O_RDONLY | O_CLOEXEC);
    if (rfd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: cannot open journal \"%V\" for reading",
                      &omcf->journal_file->name);
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        (void) ngx_close_file(rfd);
        return NGX_ERROR;
    }

    j->file = omcf->journal_file;
    j->read_fd = rfd;
    j->checked_fd = fd;

    cln->handler = ngx_http_optout_journal_cleanup;
    cln->data = j;

    omcf->journal = j;

    return ngx_http_optout_journal_check_end(cycle, j);
}


/*
 * End a line cut short by a crash, or by a write whose truncation failed,
 * under the lock: workers of the previous configuration may be writing
 */

static ngx_int_t
ngx_http_optout_journal_check_end(ngx_cycle_t *cycle,
    ngx_http_optout_journal_t *j)
{
    u_char           c;
    ssize_t          n;
    ngx_fd_t         fd;
    ngx_int_t        rc;
    ngx_file_info_t  fi;

    fd = j->file->fd;

    if (ngx_http_optout_journal_lock(fd, F_WRLCK) != NGX_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: fcntl(F_SETLKW) of journal \"%V\" failed",
                      &j->file->name);
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: fstat(\"%V\") failed", &j->file->name);
        goto unlock;
    }

    if (ngx_file_size(&fi) == 0) {
        rc = NGX_OK;
        goto unlock;
    }

    n = pread(j->read_fd, &c, 1, ngx_file_size(&fi) - 1);

    if (n != 1) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: cannot read the end of journal \"%V\"",
                      &j->file->name);
        goto unlock;
    }

    if (c != '\n') {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "optout: journal \"%V\" ends with a partial line, "
                      "ending it; replay skips such lines", &j->file->name);

        if (write(fd, "\n", 1) != 1 || fdatasync(fd) == -1) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                          "optout: cannot write journal \"%V\"",
                          &j->file->name);
            goto unlock;
        }
    }

    rc = NGX_OK;

unlock:

    (void) ngx_http_optout_journal_lock(fd, F_UNLCK);

    return rc;
}


static void
ngx_http_optout_journal_cleanup(void *data)
{
    ngx_http_optout_journal_t *j = data;

    if (j->read_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(j->read_fd);
        j->read_fd = NGX_INVALID_FILE;
    }
}


ngx_int_t
ngx_http_optout_journal_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_uint_t                  i;
    ngx_http_optout_journal_t  *j;

    j = omcf->journal;

    if (j == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: journal \"%V\" was not set up",
                      &omcf->journal_file->name);
        return NGX_ERROR;
    }

    j->thread_pool = omcf->thread_pool;
    j->log = cycle->log;

    for (i = 0; i < 2; i++) {
        j->buf[i].size = NGX_HTTP_OPTOUT_JOURNAL_BUF;
        j->buf[i].data = ngx_alloc(j->buf[i].size, cycle->log);
        if (j->buf[i].data == NULL) {
            return NGX_ERROR;
        }

        ngx_queue_init(&j->buf[i].waiters);
    }

    j->filling = &j->buf[0];

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

    return NGX_OK;
}


void
ngx_http_optout_journal_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_uint_t                  i;
    ngx_http_optout_journal_t  *j;

    j = omcf->journal;

    /* a request waits for its line, so no group is pending at exit */

    for (i = 0; i < 2; i++) {
        ngx_free(j->buf[i].data);
    }

    omcf->journal = NULL;
}


ngx_int_t
ngx_http_optout_journal_append(ngx_http_optout_journal_t *j, u_char *line,
    size_t len, ngx_http_optout_waiter_t *w)
{
    u_char                  *p;
    size_t                   size;
    ngx_http_optout_jbuf_t  *b;

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
    b->lines++;

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

    j->writing = j->filling;
    j->filling = (j->writing == &j->buf[0]) ? &j->buf[1] : &j->buf[0];

    /* read_fd changes only here, when no task is in flight */

    ctx = j->task->ctx;
    ngx_memzero(ctx, sizeof(ngx_http_optout_journal_ctx_t));

    ctx->fd = fd;
    ctx->read_fd = j->read_fd;
    ctx->data = j->writing->data;
    ctx->len = j->writing->len;

    if (ngx_thread_task_post(j->thread_pool, j->task) != NGX_OK) {
        (void) close(fd);

        /* undo: the group stays where it was filling */
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
 * access for others, as at start, since the journal holds destinations;
 * and read the new file through the descriptor this worker opened (the
 * master gave the file to the worker's user)
 */

static void
ngx_http_optout_journal_reopened(ngx_http_optout_journal_t *j)
{
    ngx_file_info_t  fi;
    u_char           path[NGX_INT_T_LEN + sizeof("/proc/self/fd/")];

    j->checked_fd = j->file->fd;

    if (j->read_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(j->read_fd);
    }

    (void) ngx_sprintf(path, "/proc/self/fd/%d%Z", j->file->fd);

    j->read_fd = open((char *) path, O_RDONLY | O_CLOEXEC);

    if (j->read_fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_WARN, j->log, ngx_errno,
                      "optout: cannot open reopened journal \"%V\" for "
                      "reading, a partial line cannot be detected",
                      &j->file->name);
    }

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
    ngx_http_optout_jbuf_t    *b;
    ngx_http_optout_waiter_t  *w;

    if (j->writing) {
        /* a later post went through and takes this group along */
        return;
    }

    b = j->filling;

    ngx_log_error(NGX_LOG_CRIT, j->log, 0,
                  "optout: the %ui opt-outs (%uz bytes) of this group are "
                  "not recorded in journal \"%V\", nothing written",
                  b->lines, b->len, &j->file->name);

    ngx_http_optout_metric_journal(b->lines, b->len, 0);

    b->len = 0;
    b->lines = 0;

    while (!ngx_queue_empty(&b->waiters)) {
        q = ngx_queue_head(&b->waiters);
        ngx_queue_remove(q);

        w = ngx_queue_data(q, ngx_http_optout_waiter_t, queue);
        w->rc = NGX_ERROR;
        w->handler(w);
    }
}


/*
 * POSIX record locks belong to the process, so they exclude the other
 * workers (a worker has one task in flight at most).  They are released
 * when the process closes any descriptor of the file: a reopen while a
 * group is being written may release the lock on the old file early.
 */

static void
ngx_http_optout_journal_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_journal_ctx_t *ctx = data;

    ngx_file_info_t  fi;

    if (ngx_http_optout_journal_lock(ctx->fd, F_WRLCK) != NGX_OK) {
        ctx->err = ngx_errno;
        ctx->op = "fcntl(F_SETLKW)";
        goto done;
    }

    if (ngx_fd_info(ctx->fd, &fi) == NGX_FILE_ERROR) {
        ctx->err = ngx_errno;
        ctx->op = "fstat()";
        goto unlock;
    }

    ctx->start = ngx_file_size(&fi);

    if (ngx_http_optout_journal_end_line(ctx) != NGX_OK
        || ngx_http_optout_journal_write(ctx, ctx->data, ctx->len) != NGX_OK)
    {
        ngx_http_optout_journal_undo(ctx);
        goto unlock;
    }

    /* other workers may append while this one waits for the disk */

    (void) ngx_http_optout_journal_lock(ctx->fd, F_UNLCK);

    ngx_http_optout_journal_sync(ctx);

    goto done;

unlock:

    (void) ngx_http_optout_journal_lock(ctx->fd, F_UNLCK);

done:

    (void) close(ctx->fd);
}


static ngx_int_t
ngx_http_optout_journal_lock(ngx_fd_t fd, short type)
{
    struct flock  fl;

    ngx_memzero(&fl, sizeof(struct flock));

    fl.l_type = type;
    fl.l_whence = SEEK_SET;

    while (fcntl(fd, type == F_UNLCK ? F_SETLK : F_SETLKW, &fl) == -1) {
        if (ngx_errno != NGX_EINTR) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * A line cut short by a write whose truncation failed, in this worker or
 * in another one: end it, so that this group starts on a line of its own
 */

static ngx_int_t
ngx_http_optout_journal_end_line(ngx_http_optout_journal_ctx_t *ctx)
{
    u_char   c;
    ssize_t  n;

    if (ctx->start == 0) {
        return NGX_OK;
    }

    if (ctx->read_fd == NGX_INVALID_FILE) {
        /* said once, when the journal was reopened */
        return NGX_OK;
    }

    n = pread(ctx->read_fd, &c, 1, ctx->start - 1);

    if (n != 1) {
        ctx->unchecked = 1;
        ctx->read_err = (n == -1) ? ngx_errno : 0;
        return NGX_OK;
    }

    if (c == '\n') {
        return NGX_OK;
    }

    if (ngx_http_optout_journal_write(ctx, (u_char *) "\n", 1) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the ended line stays ended whatever happens to this group */

    ctx->torn = ctx->start;
    ctx->start++;
    ctx->written = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_optout_journal_write(ngx_http_optout_journal_ctx_t *ctx, u_char *p,
    size_t len)
{
    ssize_t  n;

    while (len) {
        n = write(ctx->fd, p, len);

        if (n == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            ctx->err = ngx_errno;
            ctx->op = "write()";
            return NGX_ERROR;
        }

        if (n == 0) {
            ctx->err = 0;
            ctx->op = "write()";
            return NGX_ERROR;
        }

        p += n;
        len -= n;
        ctx->written += n;
    }

    return NGX_OK;
}


/*
 * The group is written but not known to be on the disk, so its requests
 * are answered 500: take its lines back unless other lines follow them,
 * since a line may not be taken out of the middle of the file.
 */

static void
ngx_http_optout_journal_sync(ngx_http_optout_journal_ctx_t *ctx)
{
    ngx_file_info_t  fi;

    if (ngx_http_optout_metric_fdatasync(ctx->fd) != -1) {
        return;
    }

    ctx->err = ngx_errno;
    ctx->op = "fdatasync()";

    if (ngx_http_optout_journal_lock(ctx->fd, F_WRLCK) != NGX_OK) {
        ctx->followed = 1;
        return;
    }

    if (ngx_fd_info(ctx->fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) != ctx->start + (off_t) ctx->len)
    {
        ctx->followed = 1;

    } else {
        ngx_http_optout_journal_undo(ctx);
    }

    (void) ngx_http_optout_journal_lock(ctx->fd, F_UNLCK);
}


static void
ngx_http_optout_journal_undo(ngx_http_optout_journal_ctx_t *ctx)
{
    if (ctx->written == 0) {
        return;
    }

    ctx->undo_op = "ftruncate()";

    if (ftruncate(ctx->fd, ctx->start) == -1) {
        ctx->undo_err = ngx_errno;
        return;
    }

    ctx->undone = 1;

    if (fdatasync(ctx->fd) == -1) {
        ctx->undo_err = ngx_errno;
        ctx->undo_op = "fdatasync() after ftruncate()";
    }
}


static void
ngx_http_optout_journal_done(ngx_event_t *ev)
{
    ngx_http_optout_journal_t *j = ev->data;

    ngx_int_t                       rc;
    ngx_queue_t                    *q;
    ngx_http_optout_jbuf_t         *b;
    ngx_http_optout_waiter_t       *w;
    ngx_http_optout_journal_ctx_t  *ctx;

    ctx = j->task->ctx;
    b = j->writing;

    ngx_http_optout_journal_log(j, b, ctx);

    rc = (ctx->op == NULL) ? NGX_OK : NGX_ERROR;

    ngx_http_optout_metric_journal(b->lines, b->len, rc == NGX_OK);

    b->len = 0;
    b->lines = 0;
    j->writing = NULL;

    /* the next group goes to the disk while these requests are answered */

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


/* say exactly which lines of the group are in the journal and which not */

static void
ngx_http_optout_journal_log(ngx_http_optout_journal_t *j,
    ngx_http_optout_jbuf_t *b, ngx_http_optout_journal_ctx_t *ctx)
{
    u_char      *p, *last;
    ngx_uint_t   whole;

    if (ctx->torn) {
        ngx_log_error(NGX_LOG_ERR, j->log, 0,
                      "optout: journal \"%V\" ended with a partial line "
                      "at %O bytes, ended it", &j->file->name, ctx->torn);
    }

    if (ctx->unchecked) {
        ngx_log_error(NGX_LOG_WARN, j->log, ctx->read_err,
                      "optout: cannot read the end of journal \"%V\", "
                      "a partial line there would not be ended",
                      &j->file->name);
    }

    if (ctx->op == NULL) {
        return;
    }

    if (ctx->written == 0) {
        ngx_log_error(NGX_LOG_CRIT, j->log, ctx->err,
                      "optout: %s of journal \"%V\" failed, the %ui "
                      "opt-outs (%uz bytes) of this group are not recorded, "
                      "nothing written", ctx->op, &j->file->name, b->lines,
                      b->len);
        return;
    }

    if (ctx->undone) {
        ngx_log_error(NGX_LOG_CRIT, j->log, ctx->err,
                      "optout: %s of journal \"%V\" failed after %uz of %uz "
                      "bytes, the %ui opt-outs of this group are not "
                      "recorded, journal truncated back to %O bytes",
                      ctx->op, &j->file->name, ctx->written, b->len,
                      b->lines, ctx->start);

        if (ctx->undo_err) {
            ngx_log_error(NGX_LOG_ALERT, j->log, ctx->undo_err,
                          "optout: %s of journal \"%V\" failed, a crash "
                          "may bring back %uz bytes after %O",
                          ctx->undo_op, &j->file->name, ctx->written,
                          ctx->start);
        }

        return;
    }

    if (ctx->followed) {
        ngx_log_error(NGX_LOG_CRIT, j->log, ctx->err,
                      "optout: %s of journal \"%V\" failed, the %ui "
                      "opt-outs (%uz bytes) of this group are whole lines "
                      "at %O bytes but answered as failed, and were left "
                      "in place since other lines may follow them",
                      ctx->op, &j->file->name, b->lines, b->len,
                      ctx->start);
        return;
    }

    whole = 0;
    last = b->data + ctx->written;

    for (p = b->data; p < last; p++) {
        if (*p == '\n') {
            whole++;
        }
    }

    ngx_log_error(NGX_LOG_CRIT, j->log, ctx->err,
                  "optout: %s of journal \"%V\" failed after %uz of %uz "
                  "bytes, %ui of the %ui opt-outs of this group are whole "
                  "lines at %O bytes but answered as failed, the others are "
                  "not recorded", ctx->op, &j->file->name, ctx->written,
                  b->len, whole, b->lines, ctx->start);

    ngx_log_error(NGX_LOG_ALERT, j->log, ctx->undo_err,
                  "optout: %s of journal \"%V\" back to %O bytes failed, "
                  "it ends at %O bytes%s", ctx->undo_op, &j->file->name,
                  ctx->start, ctx->start + (off_t) ctx->written,
                  (last[-1] == '\n') ? "" : " with a partial line, ended "
                                           "before the next group");
}
