/*
 * Journals merged by time and folded into the rules that hold now: what
 * "optoutctl replay", "export" and "report" share.
 *
 * Each journal is read in its own order (the order its node applied its
 * lines); the journals are merged by "t" (k-way, streaming).  Lines with
 * the same "t" are ordered opt-in first, so an opt-out wins a tie, and
 * then by their bytes, so the result never depends on the order in which
 * the journals are given.  The fold keeps one item per rule identity
 * (namespace, destination, scope): memory grows with identities, not with
 * lines.
 */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "optout_fold.h"


#define OPTOUT_FOLD_BLOCK    (1024 * 1024)
#define OPTOUT_FOLD_BUCKETS  1024
#define OPTOUT_ARENA_SIZE    (64 * 1024)
#define OPTOUT_BATCH_BYTES   (256 * 1024)      /* read and parsed together */
#define OPTOUT_THREADS_MAX   16


/* one line of a batch, parsed */
typedef struct {
    optout_merge_line_t      l;
    int                      rc;
    size_t                   size;             /* bytes in the file */
    char                     reason[160];
} optout_slot_t;


#define OPTOUT_BATCH_FREE    0
#define OPTOUT_BATCH_BUSY    1                 /* being read or parsed */
#define OPTOUT_BATCH_READY   2


/* whole lines read at once from a journal, then parsed */
typedef struct {
    char                    *text;             /* lines, each "\0"-ended */
    size_t                   text_len;
    size_t                   text_cap;
    optout_slot_t           *slots;
    size_t                   nslots;
    size_t                   slots_cap;
    int                      err;              /* errno of a failed read */
    unsigned                 last;             /* the file ends here */
    unsigned                 state;
} optout_batch_t;


/*
 * A journal.  Its batches form a ring: parser threads take the next free
 * batch in file order, read it (one thread at a time) and parse it (all
 * at once); the merge hands the batches out in the same order, so it sees
 * exactly the lines one thread would give it.
 */

typedef struct {
    int                      fd;
    unsigned                 own;              /* fd is to be closed */
    const char              *name;
    char                    *carry;            /* a line's start, read on */
    size_t                   carry_len;
    size_t                   carry_cap;
    unsigned                 eof;              /* nothing more to read */
    unsigned                 reading;
    unsigned                 stop;
    optout_batch_t          *ring;
    size_t                   nring;
    uint64_t                 filled;           /* batches taken to read */
    uint64_t                 used;             /* batches handed out */
    optout_batch_t          *cur_batch;
    size_t                   next;             /* the next slot to hand out */
    optout_merge_line_t     *cur;
    uint64_t                 lineno;
    pthread_t                tids[OPTOUT_THREADS_MAX];
    size_t                   nthreads;
    unsigned                 sync;             /* mutex and cond made */
    pthread_mutex_t          mutex;
    pthread_cond_t           cond;
} optout_stream_t;


struct optout_merge_s {
    optout_stream_t         *streams;
    optout_stream_t        **heap;
    size_t                   nstreams;
    size_t                   n;                /* streams in the heap */
    optout_stream_t         *last;             /* handed out, to refill */
    uint64_t                 lines;
    uint64_t                 bytes;
    uint64_t                 skipped;
    optout_merge_skip_pt     skip;
    void                    *data;
};


typedef struct optout_fold_block_s  optout_fold_block_t;

struct optout_fold_block_s {
    optout_fold_block_t     *next;
    size_t                   used;
    char                     data[OPTOUT_FOLD_BLOCK];
};


struct optout_fold_s {
    optout_fold_item_t     **buckets;
    size_t                   nbuckets;
    size_t                   count;
    optout_fold_block_t     *blocks;
};


static void *optout_arena_malloc(size_t size);
static void optout_arena_free(void *p);
static int optout_stream_open(optout_stream_t *s, const char *name,
    unsigned threads, char *err, size_t err_len);
static void optout_stream_close(optout_stream_t *s);
static void *optout_stream_thread(void *data);
static void optout_batch_read(optout_stream_t *s, optout_batch_t *b);
static void optout_batch_carry(optout_stream_t *s, optout_batch_t *b,
    char *end);
static void optout_batch_split(optout_batch_t *b);
static void optout_batch_parse(optout_stream_t *s, optout_batch_t *b);
static optout_batch_t *optout_stream_batch(optout_stream_t *s);
static int optout_stream_read(optout_merge_t *m, optout_stream_t *s,
    char *err, size_t err_len);
static int optout_stream_less(const optout_stream_t *a,
    const optout_stream_t *b);
static void optout_merge_down(optout_merge_t *m, size_t i);
static void *optout_fold_alloc(optout_fold_t *f, size_t size);
static int optout_fold_grow(optout_fold_t *f);
static int optout_fold_item_cmp(const void *a, const void *b);


/*
 * jansson's values of one journal line live in a bump arena, emptied
 * after the line: a line's dozen keys and strings cost no malloc and no
 * free.  What does not fit, and every other jansson value, uses malloc.
 * One arena a thread.
 */

static __thread unsigned char  optout_arena[OPTOUT_ARENA_SIZE];
static __thread size_t         optout_arena_used;
static __thread unsigned       optout_arena_on;


static void *
optout_arena_malloc(size_t size)
{
    void  *p;

    size = (size + 15) & ~(size_t) 15;

    if (!optout_arena_on || OPTOUT_ARENA_SIZE - optout_arena_used < size) {
        return malloc(size);
    }

    p = optout_arena + optout_arena_used;
    optout_arena_used += size;

    return p;
}


static void
optout_arena_free(void *p)
{
    if ((uintptr_t) p - (uintptr_t) optout_arena < OPTOUT_ARENA_SIZE) {
        return;
    }

    free(p);
}


optout_merge_t *
optout_merge_create(char *const *names, size_t n, unsigned threads,
    optout_merge_skip_pt skip, void *data, char *err, size_t err_len)
{
    size_t            i;
    unsigned          each;
    optout_merge_t   *m;

    m = calloc(1, sizeof(optout_merge_t));
    if (m == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }

    m->streams = calloc(n ? n : 1, sizeof(optout_stream_t));
    m->heap = calloc(n ? n : 1, sizeof(optout_stream_t *));

    if (m->streams == NULL || m->heap == NULL) {
        snprintf(err, err_len, "out of memory");
        optout_merge_destroy(m);
        return NULL;
    }

    m->skip = skip;
    m->data = data;

    json_set_alloc_funcs(optout_arena_malloc, optout_arena_free);
    json_object_seed(0);                       /* before any thread */

    /*
     * The threads are shared out among the journals.  With one thread, or
     * fewer threads than journals, the lines are parsed on this thread as
     * they are needed: a batch a journal in memory, however many there
     * are.
     */

    each = (threads > 1) ? threads / (n ? n : 1) : 0;
    each = (each > OPTOUT_THREADS_MAX) ? OPTOUT_THREADS_MAX : each;

    for (i = 0; i < n; i++) {
        m->nstreams++;

        if (optout_stream_open(&m->streams[i], names[i], each, err, err_len)
            != 0)
        {
            optout_merge_destroy(m);
            return NULL;
        }
    }

    for (i = 0; i < n; i++) {
        switch (optout_stream_read(m, &m->streams[i], err, err_len)) {
        case 1:
            m->heap[m->n++] = &m->streams[i];
            break;
        case 0:
            break;
        default:
            optout_merge_destroy(m);
            return NULL;
        }
    }

    for (i = m->n / 2; i-- > 0; /* void */) {
        optout_merge_down(m, i);
    }

    return m;
}


static int
optout_stream_open(optout_stream_t *s, const char *name, unsigned threads,
    char *err, size_t err_len)
{
    s->name = name;
    s->fd = STDIN_FILENO;

    if (strcmp(name, "-") != 0) {
        s->fd = open(name, O_RDONLY | O_CLOEXEC);

        if (s->fd == -1) {
            snprintf(err, err_len, "%s: %s", name, strerror(errno));
            return -1;
        }

        s->own = 1;
    }

    s->nring = threads + 2;
    s->ring = calloc(s->nring, sizeof(optout_batch_t));

    if (s->ring == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }

    if (threads == 0) {
        return 0;
    }

    if (pthread_mutex_init(&s->mutex, NULL) != 0) {
        snprintf(err, err_len, "cannot create a mutex");
        return -1;
    }

    if (pthread_cond_init(&s->cond, NULL) != 0) {
        (void) pthread_mutex_destroy(&s->mutex);
        snprintf(err, err_len, "cannot create a condition variable");
        return -1;
    }

    s->sync = 1;

    /* fewer threads than asked still parse the same lines */

    while (s->nthreads < threads
           && pthread_create(&s->tids[s->nthreads], NULL,
                             optout_stream_thread, s)
              == 0)
    {
        s->nthreads++;
    }

    return 0;
}


static void
optout_stream_close(optout_stream_t *s)
{
    size_t  i;

    if (s->sync) {
        (void) pthread_mutex_lock(&s->mutex);
        s->stop = 1;
        (void) pthread_cond_broadcast(&s->cond);
        (void) pthread_mutex_unlock(&s->mutex);

        for (i = 0; i < s->nthreads; i++) {
            (void) pthread_join(s->tids[i], NULL);
        }

        (void) pthread_cond_destroy(&s->cond);
        (void) pthread_mutex_destroy(&s->mutex);
    }

    if (s->own) {
        (void) close(s->fd);
    }

    for (i = 0; s->ring != NULL && i < s->nring; i++) {
        free(s->ring[i].text);
        free(s->ring[i].slots);
    }

    free(s->ring);
    free(s->carry);
}


static void *
optout_stream_thread(void *data)
{
    optout_stream_t  *s;
    optout_batch_t   *b;

    s = data;

    (void) pthread_mutex_lock(&s->mutex);

    for ( ;; ) {
        while (!s->stop && !s->eof
               && (s->reading
                   || s->ring[s->filled % s->nring].state
                      != OPTOUT_BATCH_FREE))
        {
            (void) pthread_cond_wait(&s->cond, &s->mutex);
        }

        if (s->stop || s->eof) {
            break;
        }

        b = &s->ring[s->filled++ % s->nring];
        b->state = OPTOUT_BATCH_BUSY;
        s->reading = 1;

        (void) pthread_mutex_unlock(&s->mutex);

        optout_batch_read(s, b);

        (void) pthread_mutex_lock(&s->mutex);

        s->reading = 0;
        s->eof = b->last;
        (void) pthread_cond_broadcast(&s->cond);

        (void) pthread_mutex_unlock(&s->mutex);

        if (b->err == 0) {
            optout_batch_split(b);
            optout_batch_parse(s, b);
        }

        (void) pthread_mutex_lock(&s->mutex);

        b->state = OPTOUT_BATCH_READY;
        (void) pthread_cond_broadcast(&s->cond);
    }

    (void) pthread_mutex_unlock(&s->mutex);

    return NULL;
}


/*
 * Reads whole lines into the batch: what follows the last "\n" is carried
 * to the next batch.  A line longer than the batch grows it.  b->last is
 * set at the end of the file and on an error (b->err).  Called by one
 * thread at a time.
 */

static void
optout_batch_read(optout_stream_t *s, optout_batch_t *b)
{
    char     *p, *nl;
    size_t    cap, scan;
    ssize_t   n;

    b->text_len = 0;
    b->nslots = 0;
    b->err = 0;
    b->last = 1;

    cap = OPTOUT_BATCH_BYTES;

    if (cap < s->carry_len + 1) {
        cap = s->carry_len + 1;
    }

    scan = 0;

    for ( ;; ) {
        if (b->text_cap < cap) {
            p = realloc(b->text, cap);
            if (p == NULL) {
                b->err = ENOMEM;
                return;
            }

            b->text = p;
            b->text_cap = cap;
        }

        if (s->carry_len) {
            memcpy(b->text, s->carry, s->carry_len);
            b->text_len = s->carry_len;
            s->carry_len = 0;
        }

        /* one byte stays free for the "\0" of a last line without "\n" */

        while (b->text_len < b->text_cap - 1) {
            n = read(s->fd, b->text + b->text_len,
                     b->text_cap - 1 - b->text_len);

            if (n == -1 && errno == EINTR) {
                continue;
            }

            if (n == -1) {
                b->err = errno;
                return;
            }

            if (n == 0) {
                return;
            }

            b->text_len += (size_t) n;
        }

        for (nl = b->text + b->text_len; nl > b->text + scan; nl--) {
            if (nl[-1] == '\n') {
                break;
            }
        }

        if (nl > b->text + scan) {
            nl--;
            break;
        }

        /* no whole line yet: a bigger batch */

        scan = b->text_len;
        cap = b->text_cap * 2;
    }

    optout_batch_carry(s, b, nl + 1);
}


/* the batch ends at "end": what follows goes to the next batch */

static void
optout_batch_carry(optout_stream_t *s, optout_batch_t *b, char *end)
{
    char    *p;
    size_t   n;

    n = (size_t) ((b->text + b->text_len) - end);

    if (n > 0) {
        if (s->carry_cap < n) {
            p = realloc(s->carry, n * 2);
            if (p == NULL) {
                b->err = ENOMEM;
                return;
            }

            s->carry = p;
            s->carry_cap = n * 2;
        }

        memcpy(s->carry, end, n);
        s->carry_len = n;
    }

    b->text_len = (size_t) (end - b->text);
    b->last = 0;
}


/* the batch's lines, as getline() would give them; b->err: out of memory */

static void
optout_batch_split(optout_batch_t *b)
{
    char           *p, *end, *nl;
    size_t          len, cap;
    optout_slot_t  *sl;

    p = b->text;
    end = b->text + b->text_len;

    while (p < end) {
        nl = memchr(p, '\n', (size_t) (end - p));
        len = (nl != NULL) ? (size_t) (nl - p) : (size_t) (end - p);

        if (b->nslots == b->slots_cap) {
            cap = b->slots_cap ? b->slots_cap * 2 : 2048;
            sl = realloc(b->slots, cap * sizeof(optout_slot_t));

            if (sl == NULL) {
                b->err = ENOMEM;
                return;
            }

            b->slots = sl;
            b->slots_cap = cap;
        }

        sl = &b->slots[b->nslots++];
        sl->l.line = p;
        p[len] = '\0';                         /* the "\n", or the spare */

        if (len > 0 && p[len - 1] == '\r') {
            p[--len] = '\0';
        }

        sl->l.len = len;
        sl->size = (nl != NULL) ? (size_t) (nl - p) + 1 : (size_t) (end - p);
        p += sl->size;
    }
}


static void
optout_batch_parse(optout_stream_t *s, optout_batch_t *b)
{
    size_t          i;
    optout_slot_t  *sl;

    for (i = 0; i < b->nslots; i++) {
        sl = &b->slots[i];
        sl->reason[0] = '\0';
        sl->l.name = s->name;

        optout_arena_on = 1;
        sl->rc = optout_journal_parse(sl->l.line, sl->l.len, &sl->l.e,
                                      sl->reason, sizeof(sl->reason));
        optout_arena_on = 0;
        optout_arena_used = 0;
    }
}


/*
 * The next batch in file order, read and parsed, in s->cur_batch; the
 * previous one goes back to the ring.  NULL: the end.
 */

static optout_batch_t *
optout_stream_batch(optout_stream_t *s)
{
    optout_batch_t  *b;

    if (s->nthreads == 0) {
        s->cur_batch = NULL;

        if (s->eof) {
            return NULL;
        }

        b = &s->ring[0];

        optout_batch_read(s, b);
        s->eof = b->last;

        if (b->err == 0) {
            optout_batch_split(b);
            optout_batch_parse(s, b);
        }

        s->cur_batch = b;

        return b;
    }

    (void) pthread_mutex_lock(&s->mutex);

    if (s->cur_batch != NULL) {
        s->cur_batch->state = OPTOUT_BATCH_FREE;
        s->cur_batch = NULL;
        s->used++;
        (void) pthread_cond_broadcast(&s->cond);
    }

    b = &s->ring[s->used % s->nring];

    while (b->state != OPTOUT_BATCH_READY
           && !(s->eof && !s->reading && s->used == s->filled))
    {
        (void) pthread_cond_wait(&s->cond, &s->mutex);
    }

    (void) pthread_mutex_unlock(&s->mutex);

    if (b->state != OPTOUT_BATCH_READY) {
        return NULL;
    }

    s->cur_batch = b;

    return b;
}


/* 1: the next usable line is in s->cur, 0: end of file, -1: read error */

static int
optout_stream_read(optout_merge_t *m, optout_stream_t *s, char *err,
    size_t err_len)
{
    optout_slot_t   *sl;
    optout_batch_t  *b;

    for ( ;; ) {
        b = s->cur_batch;

        if (b == NULL || s->next == b->nslots) {
            if (b != NULL && b->err != 0) {
                snprintf(err, err_len, "%s: %s", s->name,
                         strerror(b->err));
                return -1;
            }

            b = optout_stream_batch(s);

            if (b == NULL) {
                return 0;
            }

            s->next = 0;

            if (b->nslots == 0) {
                continue;
            }
        }

        sl = &b->slots[s->next++];
        sl->l.lineno = ++s->lineno;
        m->lines++;
        m->bytes += sl->size;

        if (sl->rc != OPTOUT_OK) {
            m->skipped++;

            if (m->skip) {
                m->skip(m->data, s->name, sl->l.lineno, sl->reason);
            }

            continue;
        }

        s->cur = &sl->l;

        return 1;
    }
}


int
optout_merge_cmp(const optout_journal_entry_t *a, const char *la,
    size_t lena, const optout_journal_entry_t *b, const char *lb,
    size_t lenb)
{
    int  rc;

    if (a->time != b->time) {
        return (a->time < b->time) ? -1 : 1;
    }

    if (a->optin != b->optin) {
        return a->optin ? -1 : 1;
    }

    rc = memcmp(la, lb, lena < lenb ? lena : lenb);

    if (rc != 0) {
        return rc;
    }

    return (lena < lenb) ? -1 : (lena > lenb);
}


static int
optout_stream_less(const optout_stream_t *a, const optout_stream_t *b)
{
    return optout_merge_cmp(&a->cur->e, a->cur->line, a->cur->len,
                            &b->cur->e, b->cur->line, b->cur->len) < 0;
}


static void
optout_merge_down(optout_merge_t *m, size_t i)
{
    size_t            l, min;
    optout_stream_t  *t;

    for ( ;; ) {
        l = 2 * i + 1;
        min = i;

        if (l < m->n && optout_stream_less(m->heap[l], m->heap[min])) {
            min = l;
        }

        if (l + 1 < m->n && optout_stream_less(m->heap[l + 1], m->heap[min]))
        {
            min = l + 1;
        }

        if (min == i) {
            return;
        }

        t = m->heap[i];
        m->heap[i] = m->heap[min];
        m->heap[min] = t;
        i = min;
    }
}


int
optout_merge_next(optout_merge_t *m, const optout_merge_line_t **out,
    char *err, size_t err_len)
{
    if (m->last != NULL) {
        m->last = NULL;

        switch (optout_stream_read(m, m->heap[0], err, err_len)) {
        case 1:
            break;
        case 0:
            m->heap[0] = m->heap[--m->n];
            break;
        default:
            return -1;
        }

        optout_merge_down(m, 0);
    }

    if (m->n == 0) {
        return 0;
    }

    m->last = m->heap[0];
    *out = m->last->cur;

    return 1;
}


uint64_t
optout_merge_lines(optout_merge_t *m)
{
    return m->lines;
}


uint64_t
optout_merge_bytes(optout_merge_t *m)
{
    return m->bytes;
}


uint64_t
optout_merge_skipped(optout_merge_t *m)
{
    return m->skipped;
}


void
optout_merge_destroy(optout_merge_t *m)
{
    size_t  i;

    if (m == NULL) {
        return;
    }

    for (i = 0; i < m->nstreams; i++) {
        optout_stream_close(&m->streams[i]);
    }

    free(m->streams);
    free(m->heap);
    free(m);
}


/* fold */

optout_fold_t *
optout_fold_create(void)
{
    optout_fold_t  *f;

    f = calloc(1, sizeof(optout_fold_t));
    if (f == NULL) {
        return NULL;
    }

    f->nbuckets = OPTOUT_FOLD_BUCKETS;
    f->buckets = calloc(f->nbuckets, sizeof(optout_fold_item_t *));

    if (f->buckets == NULL) {
        free(f);
        return NULL;
    }

    return f;
}


static void *
optout_fold_alloc(optout_fold_t *f, size_t size)
{
    void                 *p;
    optout_fold_block_t  *b;

    size = (size + 7) & ~(size_t) 7;
    b = f->blocks;

    if (b == NULL || OPTOUT_FOLD_BLOCK - b->used < size) {
        b = malloc(sizeof(optout_fold_block_t));
        if (b == NULL) {
            return NULL;
        }

        b->next = f->blocks;
        b->used = 0;
        f->blocks = b;
    }

    p = b->data + b->used;
    b->used += size;

    return p;
}


static int
optout_fold_grow(optout_fold_t *f)
{
    size_t               i, n;
    optout_fold_item_t  *it, *next, **buckets;

    n = f->nbuckets * 2;

    buckets = calloc(n, sizeof(optout_fold_item_t *));
    if (buckets == NULL) {
        return -1;
    }

    for (i = 0; i < f->nbuckets; i++) {
        for (it = f->buckets[i]; it != NULL; it = next) {
            next = it->next;
            it->next = buckets[it->hash & (n - 1)];
            buckets[it->hash & (n - 1)] = it;
        }
    }

    free(f->buckets);
    f->buckets = buckets;
    f->nbuckets = n;

    return 0;
}


optout_fold_item_t *
optout_fold_apply(optout_fold_t *f, const optout_journal_entry_t *e,
    unsigned *before)
{
    char                 key[OPTOUT_NAMESPACE_MAX + OPTOUT_DEST_MAX
                             + OPTOUT_SENDER_MAX + 3];
    size_t               len, i;
    uint32_t             hash;
    optout_fold_item_t  *it;

    len = 0;
    memcpy(key, e->ns, e->ns_len);
    len += e->ns_len;
    key[len++] = '\0';
    memcpy(key + len, e->dest.data, e->dest.len);
    len += e->dest.len;
    key[len++] = '\0';
    memcpy(key + len, e->sender, e->sender_len);
    len += e->sender_len;
    key[len++] = '\0';

    hash = 2166136261u;

    for (i = 0; i < len; i++) {
        hash = (hash ^ (unsigned char) key[i]) * 16777619u;
    }

    for (it = f->buckets[hash & (f->nbuckets - 1)]; it; it = it->next) {
        if (it->hash == hash && it->ns_len == e->ns_len
            && it->dest_len == e->dest.len
            && it->sender_len == e->sender_len
            && memcmp(it->key, key, len) == 0)
        {
            break;
        }
    }

    if (it == NULL) {
        if (f->count >= f->nbuckets && optout_fold_grow(f) != 0) {
            return NULL;
        }

        it = optout_fold_alloc(f, sizeof(optout_fold_item_t) + len);
        if (it == NULL) {
            return NULL;
        }

        memset(it, 0, sizeof(optout_fold_item_t));
        memcpy(it->key, key, len);
        it->hash = hash;
        it->ns_len = (uint8_t) e->ns_len;
        it->dest_len = (uint8_t) e->dest.len;
        it->sender_len = (uint8_t) e->sender_len;
        it->next = f->buckets[hash & (f->nbuckets - 1)];
        f->buckets[hash & (f->nbuckets - 1)] = it;
        f->count++;
    }

    *before = it->state;

    if (e->optin) {
        /* the rule stays: it says what the opt-in removed */
        it->state = OPTOUT_FOLD_IN;

    } else if (it->state != OPTOUT_FOLD_OUT) {
        /* the first opt-out since the last opt-in gives the rule */
        it->reborn = (it->state == OPTOUT_FOLD_IN);
        it->state = OPTOUT_FOLD_OUT;
        it->rule = e->rule;
    }

    return it;
}


size_t
optout_fold_count(optout_fold_t *f)
{
    return f->count;
}


static int
optout_fold_item_cmp(const void *a, const void *b)
{
    int                        rc;
    size_t                     la, lb;
    const optout_fold_item_t  *x, *y;

    x = *(optout_fold_item_t * const *) a;
    y = *(optout_fold_item_t * const *) b;

    la = (size_t) x->ns_len + x->dest_len + x->sender_len + 3;
    lb = (size_t) y->ns_len + y->dest_len + y->sender_len + 3;

    rc = memcmp(x->key, y->key, la < lb ? la : lb);

    if (rc != 0) {
        return rc;
    }

    return (la < lb) ? -1 : (la > lb);
}


/* block by block, in the order of creation: no cache miss an item */

optout_fold_item_t **
optout_fold_items(optout_fold_t *f, size_t *n)
{
    size_t                 k, off, size;
    optout_fold_item_t    *it, **all;
    optout_fold_block_t   *b;

    all = malloc((f->count ? f->count : 1) * sizeof(optout_fold_item_t *));
    if (all == NULL) {
        return NULL;
    }

    k = 0;

    for (b = f->blocks; b != NULL; b = b->next) {
        for (off = 0; off < b->used; off += size) {
            it = (optout_fold_item_t *) (b->data + off);
            all[k++] = it;

            size = sizeof(optout_fold_item_t) + it->ns_len + it->dest_len
                   + it->sender_len + 3;
            size = (size + 7) & ~(size_t) 7;
        }
    }

    *n = k;

    return all;
}


optout_fold_item_t **
optout_fold_sorted(optout_fold_t *f, size_t *n)
{
    optout_fold_item_t  **all;

    all = optout_fold_items(f, n);

    if (all != NULL) {
        qsort(all, *n, sizeof(optout_fold_item_t *), optout_fold_item_cmp);
    }

    return all;
}


void
optout_fold_destroy(optout_fold_t *f)
{
    optout_fold_block_t  *b, *next;

    if (f == NULL) {
        return;
    }

    for (b = f->blocks; b != NULL; b = next) {
        next = b->next;
        free(b);
    }

    free(f->buckets);
    free(f);
}
