
/*
 * The journal applier: the journal is the queue of writes to memcached.
 * A record next to the journal, "<journal>.applied", says up to which byte
 * every line is known to be in memcached.  One worker at a time (see the
 * pending set) reads the journal from there to its end in a thread-pool
 * task, folds the lines into the final state of each store key (see the
 * fold), writes only those, and moves the record on once all succeeded:
 * a rule that the lines it read say holds is never deleted by it.  It
 * runs when a worker takes it over (at start, after a reload or a crash),
 * soon after a live write failed, and every few seconds; while memcached
 * fails it backs off.
 */


#include "ngx_http_optout_module.h"

#include <openssl/crypto.h>

#include "optout_journal.h"
#include "ngx_http_optout_applier_fold.h"


#define NGX_HTTP_OPTOUT_APPLIER_TICK     1000
#define NGX_HTTP_OPTOUT_APPLIER_SWEEP    5000
#define NGX_HTTP_OPTOUT_APPLIER_RETRY    1000
#define NGX_HTTP_OPTOUT_APPLIER_BACKOFF  8000
#define NGX_HTTP_OPTOUT_APPLIER_BUF      65536
#define NGX_HTTP_OPTOUT_APPLIER_KEYS     10000    /* a pass at most */

#define NGX_HTTP_OPTOUT_APPLIED_SLOT     4096
#define NGX_HTTP_OPTOUT_APPLIED_LEN      128


/* the record: "optout-applied 1 SEQ DEV INO OFFSET CRC32\n", two slots */

typedef struct {
    uint64_t                     seq;
    uint64_t                     dev;
    uint64_t                     ino;
    off_t                        offset;
    ngx_uint_t                   dirty;     /* differs from the file */
} ngx_http_optout_applied_t;


/* a journal read line by line */

typedef struct {
    ngx_fd_t                     fd;
    off_t                        offset;    /* where the next line starts */
    off_t                        pos;       /* where the next read starts */
    u_char                      *buf;
    size_t                       start;
    size_t                       end;
    ngx_uint_t                   skip;      /* in a line too long for buf */
    ngx_str_t                   *name;
    ngx_log_t                   *log;
} ngx_http_optout_tail_t;


struct ngx_http_optout_applier_s {
    /* opened by the master, inherited by the workers */
    ngx_fd_t                     record_fd;
    ngx_fd_t                     read_fd;
    ngx_str_t                    path;

    /* per worker */
    ngx_http_optout_store_t     *store;
    ngx_http_optout_pending_t   *pending;
    ngx_thread_pool_t           *thread_pool;
    ngx_thread_task_t           *task;
    ngx_log_t                   *log;
    ngx_event_t                  timer;
    ngx_msec_t                   next;
    ngx_msec_t                   delay;
    unsigned                     busy:1;
    unsigned                     failing:1;

    /* the thread's while busy */
    optout_mac_t                *mac;
    ngx_http_optout_fold_t      *fold;
    ngx_str_t                    prefix;
    u_char                      *buf;
    ngx_fd_t                     fd;        /* read_fd, or opened by path */
    uint64_t                     fd_dev;
    uint64_t                     fd_ino;
    off_t                        rotated_end;
    uint64_t                     pass;
    ngx_uint_t                   complete;
    ngx_uint_t                   more;
    ngx_uint_t                   frozen;    /* takes no new key */
    off_t                        end;       /* of the journal, as read */
    off_t                        behind;
    u_char                      *err_end;
    u_char                       err[NGX_MAX_ERROR_STR];
};


static void ngx_http_optout_applier_cleanup(void *data);
static ngx_int_t ngx_http_optout_applier_scan(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf, ngx_http_optout_applier_t *a);
static void ngx_http_optout_applier_tick(ngx_event_t *ev);
static void ngx_http_optout_applier_post(ngx_http_optout_applier_t *a);
static void ngx_http_optout_applier_thread(void *data, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_open(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, struct stat *cur, ngx_log_t *log);
static void ngx_http_optout_applier_check(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_fold(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, struct stat *cur, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_read(ngx_http_optout_applier_t *a,
    ngx_fd_t fd, ngx_http_optout_applied_t *rec, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_ahead(ngx_http_optout_applier_t *a,
    struct stat *cur, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_line(ngx_http_optout_applier_t *a,
    u_char *line, size_t len, off_t off, ngx_uint_t take, ngx_log_t *log);
static ngx_int_t ngx_http_optout_applier_apply(ngx_http_optout_applier_t *a,
    ngx_uint_t *deleted);
static void ngx_http_optout_applier_error(ngx_http_optout_applier_t *a,
    ngx_err_t err, const char *fmt, ...);
static void ngx_http_optout_applier_done(ngx_event_t *ev);
static ngx_int_t ngx_http_optout_applied_read(ngx_fd_t fd,
    ngx_http_optout_applied_t *rec);
static ngx_int_t ngx_http_optout_applied_write(ngx_fd_t fd,
    ngx_http_optout_applied_t *rec);
static ngx_int_t ngx_http_optout_tail_next(ngx_http_optout_tail_t *t,
    u_char **line, size_t *len);


#define ngx_http_optout_same_file(rec, st)                                    \
    ((rec)->dev == (uint64_t) (st)->st_dev                                    \
     && (rec)->ino == (uint64_t) (st)->st_ino)


/*
 * In the master, after the journal's own init: open the record and a
 * read-only descriptor of the journal (the workers may not be allowed to
 * open either), and fill the pending set from the journal's unapplied tail
 * before any worker answers a check.
 */

ngx_int_t
ngx_http_optout_applier_init_module(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    u_char                     *p;
    ngx_err_t                   err;
    ngx_str_t                   name;
    ngx_core_conf_t            *ccf;
    ngx_pool_cleanup_t         *cln;
    ngx_http_optout_applier_t  *a;

    if (omcf->journal_file->fd == NGX_INVALID_FILE
        || omcf->pending == NULL)
    {
        /* "nginx -t" does not open files */
        return NGX_OK;
    }

    a = ngx_pcalloc(cycle->pool, sizeof(ngx_http_optout_applier_t));
    if (a == NULL) {
        return NGX_ERROR;
    }

    a->record_fd = NGX_INVALID_FILE;
    a->read_fd = NGX_INVALID_FILE;
    a->fd = NGX_INVALID_FILE;
    a->path = omcf->journal_file->name;

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_optout_applier_cleanup;
    cln->data = a;

    name.len = a->path.len + sizeof(".applied") - 1;
    name.data = ngx_pnalloc(cycle->pool, name.len + 1);
    if (name.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(name.data, a->path.data, a->path.len);
    ngx_memcpy(p, ".applied", sizeof(".applied"));

    a->record_fd = ngx_open_file(name.data, NGX_FILE_RDWR,
                                 NGX_FILE_CREATE_OR_OPEN, 0600);
    if (a->record_fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      ngx_open_file_n " \"%V\" failed", &name);
        return NGX_ERROR;
    }

    /* both slots take their room now: a full disk must not stop the record */

    err = posix_fallocate(a->record_fd, 0, 2 * NGX_HTTP_OPTOUT_APPLIED_SLOT);
    if (err != 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, err,
                      "posix_fallocate(\"%V\") failed", &name);
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() == 0 && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
        && fchown(a->record_fd, ccf->user, (gid_t) -1) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "fchown(\"%V\") failed", &name);
        return NGX_ERROR;
    }

    a->read_fd = ngx_open_file(a->path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN,
                               0);
    if (a->read_fd == NGX_INVALID_FILE) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "optout: cannot open journal \"%V\" for reading",
                      &a->path);
        return NGX_ERROR;
    }

    omcf->applier = a;

    return ngx_http_optout_applier_scan(cycle, omcf, a);
}


static void
ngx_http_optout_applier_cleanup(void *data)
{
    ngx_http_optout_applier_t *a = data;

    if (a->record_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(a->record_fd);
    }

    if (a->read_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(a->read_fd);
    }
}


/* the opt-outs of the unapplied tail go into the pending set, in order */

static ngx_int_t
ngx_http_optout_applier_scan(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf, ngx_http_optout_applier_t *a)
{
    u_char                     *line;
    size_t                      len, key_len;
    ngx_int_t                   rc;
    ngx_uint_t                  n;
    ngx_file_info_t             fi;
    optout_journal_entry_t      e;
    ngx_http_optout_tail_t      t;
    ngx_http_optout_applied_t   rec;
    char                        key[OPTOUT_STORE_KEY_MAX + 1];

    if (ngx_fd_info(a->read_fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      ngx_fd_info_n " \"%V\" failed", &a->path);
        return NGX_ERROR;
    }

    ngx_memzero(&t, sizeof(ngx_http_optout_tail_t));

    /* without a record of this file, the applier starts from its top */

    if (ngx_http_optout_applied_read(a->record_fd, &rec) == NGX_OK
        && ngx_http_optout_same_file(&rec, &fi))
    {
        t.offset = rec.offset;
    }

    t.fd = a->read_fd;
    t.pos = t.offset;
    t.name = &a->path;
    t.log = cycle->log;

    t.buf = ngx_alloc(NGX_HTTP_OPTOUT_APPLIER_BUF, cycle->log);
    if (t.buf == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    while ((rc = ngx_http_optout_tail_next(&t, &line, &len)) == NGX_OK) {

        if (optout_journal_parse((char *) line, len, &e, NULL, 0)
               != OPTOUT_OK
            || optout_journal_key(&e, omcf->store_mac,
                                  (char *) omcf->store_prefix.data,
                                  omcf->store_prefix.len, key, &key_len)
               != OPTOUT_OK)
        {
            /* the applier reports such lines */
            continue;
        }

        /* a later opt-in ends what an earlier opt-out of the tail began */

        if (e.optin) {
            ngx_http_optout_pending_remove(omcf->pending, (u_char *) key,
                                           key_len);
            continue;
        }

        n++;

        if (ngx_http_optout_pending_add(omcf->pending, (u_char *) key,
                                        key_len, &e.rule, cycle->log)
            != NGX_OK)
        {
            break;
        }
    }

    ngx_free(t.buf);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (n) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "optout: %ui opt-outs of journal \"%V\" are not known "
                      "to be in memcached yet, checks answer them as "
                      "blocked until the journal applier writes them",
                      n, &a->path);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_optout_applier_init_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_http_optout_applier_t  *a;

    a = omcf->applier;

    a->store = omcf->store;
    a->pending = omcf->pending;
    a->thread_pool = omcf->thread_pool;
    a->log = cycle->log;
    a->prefix = omcf->store_prefix;
    a->rotated_end = -1;

    /* the thread hashes with its own copy: a MAC context is not shared */

    a->mac = optout_mac_dup(omcf->store_mac);
    if (a->mac == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: cannot copy the store secret's HMAC");
        return NGX_ERROR;
    }

    a->buf = ngx_alloc(NGX_HTTP_OPTOUT_APPLIER_BUF, cycle->log);
    if (a->buf == NULL) {
        return NGX_ERROR;
    }

    a->task = ngx_thread_task_alloc(cycle->pool, 0);
    if (a->task == NULL) {
        return NGX_ERROR;
    }

    a->task->ctx = a;
    a->task->handler = ngx_http_optout_applier_thread;
    a->task->event.handler = ngx_http_optout_applier_done;
    a->task->event.data = a;

    a->timer.handler = ngx_http_optout_applier_tick;
    a->timer.data = a;
    a->timer.log = cycle->log;
    a->timer.cancelable = 1;

    /* the first tick takes the applier over if nobody runs it */

    a->next = ngx_current_msec;
    ngx_add_timer(&a->timer, 1);

    return NGX_OK;
}


void
ngx_http_optout_applier_exit_worker(ngx_cycle_t *cycle,
    ngx_http_optout_main_conf_t *omcf)
{
    ngx_http_optout_applier_t  *a;

    a = omcf->applier;

    if (a->task == NULL) {
        return;
    }

    /* the thread pools are gone: no pass runs any more */

    ngx_http_optout_pending_release(a->pending);

    if (a->fd != NGX_INVALID_FILE && a->fd != a->read_fd) {
        (void) ngx_close_file(a->fd);
    }

    optout_mac_destroy(a->mac);
    ngx_http_optout_fold_destroy(a->fold);
    ngx_free(a->buf);
}


static void
ngx_http_optout_applier_tick(ngx_event_t *ev)
{
    ngx_http_optout_applier_t *a = ev->data;

    ngx_int_t  rc;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        /* the workers of the new configuration take over */

        if (!a->busy) {
            ngx_http_optout_pending_release(a->pending);
        }

        return;
    }

    rc = ngx_http_optout_pending_claim(a->pending);

    if (rc == NGX_DONE) {
        ngx_log_error(NGX_LOG_INFO, a->log, 0,
                      "optout: this worker runs the journal applier");
        a->next = ngx_current_msec;
    }

    if (rc != NGX_DECLINED && !a->busy
        && ((ngx_msec_int_t) (ngx_current_msec - a->next) >= 0
            || (!a->failing && ngx_http_optout_pending_kicked(a->pending))))
    {
        ngx_http_optout_applier_post(a);
    }

    ngx_add_timer(ev, NGX_HTTP_OPTOUT_APPLIER_TICK);
}


static void
ngx_http_optout_applier_post(ngx_http_optout_applier_t *a)
{
    a->pass = ngx_http_optout_pending_start(a->pending);
    a->complete = 0;
    a->more = 0;
    a->behind = 0;
    a->err_end = a->err;

    if (ngx_thread_task_post(a->thread_pool, a->task) != NGX_OK) {
        ngx_http_optout_pending_end(a->pending, a->pass);
        a->next = ngx_current_msec + NGX_HTTP_OPTOUT_APPLIER_RETRY;
        return;
    }

    a->busy = 1;
}


/*
 * One pass: the journal from the record to its end, folded into the final
 * state of each store key, then those states written and the record moved
 * on.  After a rotation the old file is finished first, and left once it
 * has stopped growing for a whole sweep (workers that did not reopen yet
 * still append to it).  A pass takes at most APPLIER_KEYS keys; the lines
 * after the first line of a key it did not take are still read, to the
 * journal's end, so that the keys it took end in their true final state
 * (a delete is never applied that a later line undoes).
 */

static void
ngx_http_optout_applier_thread(void *data, ngx_log_t *log)
{
    ngx_http_optout_applier_t *a = data;

    ngx_int_t                   rc;
    ngx_uint_t                  deleted;
    struct stat                 st, *cur;
    ngx_http_optout_applied_t   rec;

    if (a->fold == NULL) {
        a->fold = ngx_http_optout_fold_create(NGX_HTTP_OPTOUT_APPLIER_KEYS,
                                              log);
        if (a->fold == NULL) {
            ngx_http_optout_applier_error(a, 0, "no memory for its fold");
            return;
        }
    }

    ngx_http_optout_fold_reset(a->fold);
    a->frozen = 0;
    a->end = -1;

    cur = (stat((char *) a->path.data, &st) == 0) ? &st : NULL;

    if (ngx_http_optout_applied_read(a->record_fd, &rec) != NGX_OK) {

        if (cur == NULL) {
            ngx_http_optout_applier_error(a, ngx_errno,
                                          "journal \"%V\" not found",
                                          &a->path);
            return;
        }

        /* the first pass on this journal applies all of it */

        rec.seq = 0;
        rec.dev = (uint64_t) cur->st_dev;
        rec.ino = (uint64_t) cur->st_ino;
        rec.offset = 0;
        rec.dirty = 1;
    }

    rc = ngx_http_optout_applier_fold(a, &rec, cur, log);

    if (rc == NGX_ABORT) {
        return;
    }

    if (rc == NGX_ERROR
        || ngx_http_optout_applier_apply(a, &deleted) != NGX_OK)
    {
        goto failed;
    }

    if (rec.dirty
        && ngx_http_optout_applied_write(a->record_fd, &rec) != NGX_OK)
    {
        ngx_http_optout_applier_error(a, ngx_errno,
                                      "cannot save the applied offset");
        goto failed;
    }

    /* a short pass: a worker exit waits for it to end */

    a->more = a->frozen;
    a->complete = (rc == NGX_OK && !a->frozen);

    /*
     * A live opt-out written after this pass read the journal may have
     * been deleted by it: the next pass, at once, writes it again.
     */

    if (deleted && a->end != -1
        && (stat((char *) a->path.data, &st) == -1
            || !ngx_http_optout_same_file(&rec, &st)
            || st.st_size > a->end))
    {
        a->more = 1;
    }

    return;

failed:

    /* rec has moved past the lines folded: the saved record has not */

    if (a->fd != NGX_INVALID_FILE && fstat(a->fd, &st) == 0) {
        if (ngx_http_optout_applied_read(a->record_fd, &rec) != NGX_OK
            || !ngx_http_optout_same_file(&rec, &st))
        {
            rec.offset = 0;
        }

        if (st.st_size > rec.offset) {
            a->behind = st.st_size - rec.offset;
        }
    }
}


/*
 * The fold of the journal from the record on; the record moves past the
 * lines taken.  NGX_OK: to the end of the journal; NGX_DONE: to the end of
 * a rotated one; NGX_ERROR: failed; NGX_ABORT: failed, with no file.
 */

static ngx_int_t
ngx_http_optout_applier_fold(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, struct stat *cur, ngx_log_t *log)
{
    ngx_uint_t  i;

    for (i = 0; i < 2; i++) {

        if (ngx_http_optout_applier_open(a, rec, cur, log) != NGX_OK) {
            return NGX_ABORT;
        }

        ngx_http_optout_applier_check(a, rec, log);

        if (ngx_http_optout_applier_read(a, a->fd, rec, log) != NGX_OK) {
            return NGX_ERROR;
        }

        if (cur && ngx_http_optout_same_file(rec, cur)) {
            return NGX_OK;
        }

        if (cur == NULL) {
            /* no new journal yet: the rotated one is all there is */

            if (!a->frozen) {
                a->rotated_end = rec->offset;
            }

            return NGX_DONE;
        }

        if (a->frozen || a->rotated_end != rec->offset) {
            if (!a->frozen) {
                a->rotated_end = rec->offset;
            }

            return ngx_http_optout_applier_ahead(a, cur, log) == NGX_OK
                   ? NGX_DONE : NGX_ERROR;
        }

        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "optout: the rotated journal is applied up to its "
                      "end (%O bytes), going on with the new \"%V\"",
                      rec->offset, &a->path);

        rec->dev = (uint64_t) cur->st_dev;
        rec->ino = (uint64_t) cur->st_ino;
        rec->offset = 0;
        rec->dirty = 1;
        a->rotated_end = -1;
    }

    /* not reached: the second file read is the current journal */

    return NGX_DONE;
}


/* a->fd becomes the file the record is about */

static ngx_int_t
ngx_http_optout_applier_open(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, struct stat *cur, ngx_log_t *log)
{
    ngx_fd_t     fd;
    struct stat  st;

    if (a->fd != NGX_INVALID_FILE
        && a->fd_dev == rec->dev && a->fd_ino == rec->ino)
    {
        return NGX_OK;
    }

    fd = NGX_INVALID_FILE;

    if (fstat(a->read_fd, &st) == 0 && ngx_http_optout_same_file(rec, &st)) {
        fd = a->read_fd;

    } else if (cur && ngx_http_optout_same_file(rec, cur)) {
        fd = ngx_open_file(a->path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

        if (fd == NGX_INVALID_FILE) {
            ngx_http_optout_applier_error(a, ngx_errno,
                                          ngx_open_file_n " \"%V\" failed",
                                          &a->path);
            return NGX_ERROR;
        }

        if (fstat(fd, &st) == -1 || !ngx_http_optout_same_file(rec, &st)) {
            (void) ngx_close_file(fd);
            ngx_http_optout_applier_error(a, 0, "journal \"%V\" was "
                                          "replaced while it was opened",
                                          &a->path);
            return NGX_ERROR;
        }

    } else {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "optout: the journal file the applier was reading "
                      "(device %uL, inode %uL) is gone; its lines after "
                      "byte %O may be missing in memcached: run "
                      "\"optoutctl replay\" of that file",
                      rec->dev, rec->ino, rec->offset);

        if (cur == NULL) {
            ngx_http_optout_applier_error(a, 0, "journal \"%V\" not found",
                                          &a->path);
            return NGX_ERROR;
        }

        rec->dev = (uint64_t) cur->st_dev;
        rec->ino = (uint64_t) cur->st_ino;
        rec->offset = 0;
        rec->dirty = 1;

        return ngx_http_optout_applier_open(a, rec, cur, log);
    }

    if (a->fd != NGX_INVALID_FILE && a->fd != a->read_fd) {
        (void) ngx_close_file(a->fd);
    }

    a->fd = fd;
    a->fd_dev = rec->dev;
    a->fd_ino = rec->ino;

    return NGX_OK;
}


/* a journal cut back (or replaced in place) is applied again */

static void
ngx_http_optout_applier_check(ngx_http_optout_applier_t *a,
    ngx_http_optout_applied_t *rec, ngx_log_t *log)
{
    u_char  c;

    if (rec->offset == 0
        || (pread(a->fd, &c, 1, rec->offset - 1) == 1 && c == '\n'))
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "optout: journal \"%V\" has no line ending at the "
                  "applied offset %O, it is applied again from its start",
                  &a->path, rec->offset);

    rec->offset = 0;
    rec->dirty = 1;
}


/*
 * Folds the lines of fd from rec->offset on, and moves rec->offset past
 * the lines it took; rec NULL: reads fd from its start and only folds the
 * lines of keys already taken.
 */

static ngx_int_t
ngx_http_optout_applier_read(ngx_http_optout_applier_t *a, ngx_fd_t fd,
    ngx_http_optout_applied_t *rec, ngx_log_t *log)
{
    off_t                    off;
    u_char                  *line;
    size_t                   len;
    ngx_int_t                rc;
    ngx_http_optout_tail_t   t;

    ngx_memzero(&t, sizeof(ngx_http_optout_tail_t));

    t.fd = fd;
    t.offset = rec ? rec->offset : 0;
    t.pos = t.offset;
    t.buf = a->buf;
    t.name = &a->path;
    t.log = log;

    for ( ;; ) {
        off = t.offset;

        rc = ngx_http_optout_tail_next(&t, &line, &len);
        if (rc != NGX_OK) {
            break;
        }

        if (rec == NULL || a->frozen) {
            (void) ngx_http_optout_applier_line(a, line, len, off, 0, log);
            continue;
        }

        if (ngx_http_optout_applier_line(a, line, len, off, 1, log)
            == NGX_DECLINED)
        {
            /* this line and the ones after it are the next pass's */
            a->frozen = 1;
            continue;
        }

        rec->offset = t.offset;
        rec->dirty = 1;
    }

    if (rc == NGX_ERROR) {
        ngx_http_optout_applier_error(a, ngx_errno, "pread(\"%V\") failed",
                                      &a->path);
        return NGX_ERROR;
    }

    a->end = t.pos;

    return NGX_OK;
}


/* the new journal after a rotated one that is not finished: read ahead */

static ngx_int_t
ngx_http_optout_applier_ahead(ngx_http_optout_applier_t *a,
    struct stat *cur, ngx_log_t *log)
{
    ngx_fd_t     fd;
    ngx_int_t    rc;
    struct stat  st;

    fd = ngx_open_file(a->path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        ngx_http_optout_applier_error(a, ngx_errno,
                                      ngx_open_file_n " \"%V\" failed",
                                      &a->path);
        return NGX_ERROR;
    }

    if (fstat(fd, &st) == -1
        || st.st_dev != cur->st_dev || st.st_ino != cur->st_ino)
    {
        (void) ngx_close_file(fd);
        ngx_http_optout_applier_error(a, 0, "journal \"%V\" was replaced "
                                      "while it was opened", &a->path);
        return NGX_ERROR;
    }

    rc = ngx_http_optout_applier_read(a, fd, NULL, log);

    (void) ngx_close_file(fd);

    return rc;
}


/*
 * One line folded.  "take": a key not seen yet takes an entry, and a line
 * that cannot be applied is logged.  NGX_DECLINED: the fold is full.
 */

static ngx_int_t
ngx_http_optout_applier_line(ngx_http_optout_applier_t *a, u_char *line,
    size_t len, off_t off, ngx_uint_t take, ngx_log_t *log)
{
    int                      rc;
    size_t                   key_len;
    optout_journal_entry_t   e;
    char                     reason[128];
    u_char                   key[OPTOUT_STORE_KEY_MAX + 1];
    u_char                   value[OPTOUT_VALUE_MAX + 1];

    if (len == 0) {
        return NGX_OK;
    }

    if (optout_journal_parse((char *) line, len, &e, reason, sizeof(reason))
        != OPTOUT_OK)
    {
        if (take) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "optout: journal \"%V\", line at byte %O skipped: "
                          "%s", &a->path, off, reason);
        }

        return NGX_OK;
    }

    rc = optout_journal_key(&e, a->mac, (char *) a->prefix.data,
                            a->prefix.len, (char *) key, &key_len);

    if (rc != OPTOUT_OK
        || (!e.optin && optout_rule_format(&e.rule, (char *) value) == 0))
    {
        if (take) {
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "optout: journal \"%V\", line at byte %O skipped: "
                          "cannot derive its store key or value",
                          &a->path, off);
        }

        return NGX_OK;
    }

    rc = ngx_http_optout_fold_line(a->fold, key, key_len, e.optin, &e.rule,
                                   take);

    return (rc == NGX_DECLINED && take) ? NGX_DECLINED : NGX_OK;
}


/* the final states of the fold, written; *deleted: how many deletes */

static ngx_int_t
ngx_http_optout_applier_apply(ngx_http_optout_applier_t *a,
    ngx_uint_t *deleted)
{
    size_t                         value_len;
    ngx_uint_t                     i;
    const char                    *err;
    ngx_http_optout_fold_entry_t  *e;
    u_char                         value[OPTOUT_VALUE_MAX + 1];

    static const char  *ops[] = { "add", "delete", "set" };

    *deleted = 0;

    for (i = 0; i < a->fold->n; i++) {
        e = &a->fold->entries[i];

        value_len = (e->op == NGX_HTTP_OPTOUT_STORE_DELETE)
                    ? 0 : optout_rule_format(&e->rule, (char *) value);

        err = ngx_http_optout_store_apply(a->store, e->op, e->key,
                                          e->key_len, value, value_len);
        if (err) {
            ngx_http_optout_applier_error(a, 0, "memcached %s failed: %s",
                                          ops[e->op], err);
            return NGX_ERROR;
        }

        if (e->op == NGX_HTTP_OPTOUT_STORE_DELETE) {
            (*deleted)++;
        }
    }

    return NGX_OK;
}


static void
ngx_http_optout_applier_error(ngx_http_optout_applier_t *a, ngx_err_t err,
    const char *fmt, ...)
{
    u_char   *p, *last;
    va_list   args;

    last = a->err + sizeof(a->err);

    va_start(args, fmt);
    p = ngx_vslprintf(a->err, last, fmt, args);
    va_end(args);

    if (err) {
        p = ngx_slprintf(p, last, " (%d: ", err);
        p = ngx_strerror(err, p, last - p);
        p = ngx_slprintf(p, last, ")");
    }

    a->err_end = p;
}


static void
ngx_http_optout_applier_done(ngx_event_t *ev)
{
    ngx_http_optout_applier_t *a = ev->data;

    a->busy = 0;

    ngx_http_optout_pending_end(a->pending, a->pass);

    ngx_http_optout_metric_set(NGX_HTTP_OPTOUT_G_APPLIER_LAG, a->behind);

    if (a->err_end != a->err) {
        a->failing = 1;
        a->delay = a->delay ? ngx_min(a->delay * 2,
                                      NGX_HTTP_OPTOUT_APPLIER_BACKOFF)
                            : NGX_HTTP_OPTOUT_APPLIER_RETRY;
        a->next = ngx_current_msec + a->delay;

        ngx_log_error(NGX_LOG_ERR, a->log, 0,
                      "optout: journal applier: %*s; %O bytes of journal "
                      "\"%V\" are not known to be in memcached, next try "
                      "in %M ms", a->err_end - a->err, a->err, a->behind,
                      &a->path, a->delay);

    } else {
        if (a->failing) {
            ngx_log_error(NGX_LOG_NOTICE, a->log, 0,
                          "optout: journal applier: the journal is in "
                          "memcached again");
        }

        a->failing = 0;
        a->delay = 0;
        a->next = ngx_current_msec + NGX_HTTP_OPTOUT_APPLIER_SWEEP;
    }

    if (a->complete) {
        ngx_http_optout_pending_done(a->pending, a->pass, a->log);
    }

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        ngx_http_optout_pending_release(a->pending);
        return;
    }

    if (a->more) {
        ngx_http_optout_applier_post(a);
    }
}


static ngx_int_t
ngx_http_optout_applied_read(ngx_fd_t fd, ngx_http_optout_applied_t *rec)
{
    u_char                     *nl, *sp;
    ssize_t                     n;
    uint32_t                    crc;
    ngx_uint_t                  i, found;
    unsigned long long          seq, dev, ino, off;
    ngx_http_optout_applied_t   r;
    u_char                      buf[NGX_HTTP_OPTOUT_APPLIED_LEN + 1];

    found = 0;

    for (i = 0; i < 2; i++) {
        n = pread(fd, buf, NGX_HTTP_OPTOUT_APPLIED_LEN,
                  i * NGX_HTTP_OPTOUT_APPLIED_SLOT);
        if (n <= 0) {
            continue;
        }

        nl = ngx_strlchr(buf, buf + n, '\n');
        if (nl == NULL) {
            continue;
        }

        *nl = '\0';

        sp = (u_char *) strrchr((char *) buf, ' ');
        if (sp == NULL || nl - sp != 9) {
            continue;
        }

        crc = (uint32_t) ngx_hextoi(sp + 1, 8);
        *sp = '\0';

        if (crc != ngx_crc32_short(buf, sp - buf)
            || sscanf((char *) buf, "optout-applied 1 %llu %llu %llu %llu",
                      &seq, &dev, &ino, &off)
               != 4)
        {
            continue;
        }

        r.seq = seq;
        r.dev = dev;
        r.ino = ino;
        r.offset = (off_t) off;
        r.dirty = 0;

        if (!found || r.seq > rec->seq) {
            *rec = r;
            found = 1;
        }
    }

    return found ? NGX_OK : NGX_DECLINED;
}


/* the two slots take turns, so a torn write leaves the other one intact */

static ngx_int_t
ngx_http_optout_applied_write(ngx_fd_t fd, ngx_http_optout_applied_t *rec)
{
    u_char  *p;
    u_char   buf[NGX_HTTP_OPTOUT_APPLIED_LEN];

    rec->seq++;

    p = ngx_snprintf(buf, sizeof(buf) - 10, "optout-applied 1 %uL %uL %uL %O",
                     rec->seq, rec->dev, rec->ino, rec->offset);

    p = ngx_sprintf(p, " %08xD\n", ngx_crc32_short(buf, p - buf));

    if (pwrite(fd, buf, p - buf,
               (rec->seq & 1) * NGX_HTTP_OPTOUT_APPLIED_SLOT)
        != p - buf
        || fdatasync(fd) == -1)
    {
        return NGX_ERROR;
    }

    rec->dirty = 0;

    return NGX_OK;
}


/*
 * NGX_OK: the next complete line (without its "\n"), t->offset is past it;
 * NGX_DONE: no complete line left (a line being written ends the file);
 * NGX_ERROR: read error.
 */

static ngx_int_t
ngx_http_optout_tail_next(ngx_http_optout_tail_t *t, u_char **line,
    size_t *len)
{
    u_char   *p, *nl;
    ssize_t   n;

    for ( ;; ) {
        p = t->buf + t->start;
        nl = ngx_strlchr(p, t->buf + t->end, '\n');

        if (nl) {
            t->start = nl + 1 - t->buf;
            t->offset = t->pos - (t->end - t->start);

            if (t->skip) {
                t->skip = 0;
                continue;
            }

            *line = p;
            *len = nl - p;

            return NGX_OK;
        }

        if (t->start) {
            ngx_memmove(t->buf, p, t->end - t->start);
            t->end -= t->start;
            t->start = 0;
        }

        if (t->end == NGX_HTTP_OPTOUT_APPLIER_BUF) {
            if (!t->skip) {
                ngx_log_error(NGX_LOG_ERR, t->log, 0,
                              "optout: journal \"%V\", line at byte %O "
                              "skipped: longer than %d bytes", t->name,
                              t->offset, NGX_HTTP_OPTOUT_APPLIER_BUF);
                t->skip = 1;
            }

            t->end = 0;
        }

        n = pread(t->fd, t->buf + t->end,
                  NGX_HTTP_OPTOUT_APPLIER_BUF - t->end, t->pos);

        if (n == -1) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }

            return NGX_ERROR;
        }

        if (n == 0) {
            return NGX_DONE;
        }

        t->end += n;
        t->pos += n;
    }
}
