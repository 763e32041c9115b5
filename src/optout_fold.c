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
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "optout_fold.h"


#define OPTOUT_FOLD_BLOCK    (1024 * 1024)
#define OPTOUT_FOLD_BUCKETS  1024
#define OPTOUT_ARENA_SIZE    (64 * 1024)
#define OPTOUT_BATCH         4096              /* lines parsed together */
#define OPTOUT_BATCH_SPLIT   256               /* parsed on two threads */


/* one line of a batch, parsed */
typedef struct {
    optout_journal_entry_t   e;
    int                      rc;
    size_t                   off;              /* in the batch's text */
    size_t                   len;
    char                     reason[160];
} optout_slot_t;


typedef struct {
    FILE                    *fp;
    char                    *line;             /* getline()'s buffer */
    size_t                   line_cap;
    char                    *text;             /* the batch's lines */
    size_t                   text_len;
    size_t                   text_cap;
    optout_slot_t           *slots;
    size_t                   nslots;
    size_t                   next;             /* the next slot to hand out */
    unsigned                 eof;
    optout_merge_line_t      cur;
} optout_stream_t;


/* a half of a batch, parsed on its own thread */
typedef struct {
    optout_stream_t         *s;
    size_t                   from;
    size_t                   to;
} optout_half_t;


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
static void *optout_stream_parse(void *data);
static int optout_stream_fill(optout_merge_t *m, optout_stream_t *s,
    char *err, size_t err_len);
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
 * One arena a thread: a batch of lines is parsed on two.
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
optout_merge_create(char *const *names, size_t n, optout_merge_skip_pt skip,
    void *data, char *err, size_t err_len)
{
    size_t            i;
    optout_merge_t   *m;
    optout_stream_t  *s;

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

    for (i = 0; i < n; i++) {
        s = &m->streams[i];
        s->cur.name = names[i];

        s->fp = (strcmp(names[i], "-") == 0) ? stdin : fopen(names[i], "re");

        if (s->fp == NULL) {
            snprintf(err, err_len, "%s: %s", names[i], strerror(errno));
            optout_merge_destroy(m);
            return NULL;
        }

        m->nstreams++;

        s->slots = malloc(OPTOUT_BATCH * sizeof(optout_slot_t));
        if (s->slots == NULL) {
            snprintf(err, err_len, "out of memory");
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


static void *
optout_stream_parse(void *data)
{
    size_t          i;
    optout_half_t  *h;
    optout_slot_t  *sl;

    h = data;

    for (i = h->from; i < h->to; i++) {
        sl = &h->s->slots[i];
        sl->reason[0] = '\0';

        optout_arena_on = 1;
        sl->rc = optout_journal_parse(h->s->text + sl->off, sl->len, &sl->e,
                                      sl->reason, sizeof(sl->reason));
        optout_arena_on = 0;
        optout_arena_used = 0;
    }

    return NULL;
}


/* reads up to OPTOUT_BATCH lines and parses them, half on a second thread */

static int
optout_stream_fill(optout_merge_t *m, optout_stream_t *s, char *err,
    size_t err_len)
{
    char           *p;
    size_t          len, cap;
    ssize_t         n;
    pthread_t       tid;
    optout_half_t   a, b;
    optout_slot_t  *sl;

    s->nslots = 0;
    s->next = 0;
    s->text_len = 0;

    while (s->nslots < OPTOUT_BATCH
           && (n = getline(&s->line, &s->line_cap, s->fp)) != -1)
    {
        m->lines++;
        m->bytes += (uint64_t) n;
        len = (size_t) n;

        if (len > 0 && s->line[len - 1] == '\n') {
            len--;
        }

        if (len > 0 && s->line[len - 1] == '\r') {
            len--;
        }

        if (s->text_len + len + 1 > s->text_cap) {
            cap = (s->text_len + len + 1) * 2;
            p = realloc(s->text, cap);

            if (p == NULL) {
                snprintf(err, err_len, "out of memory");
                return -1;
            }

            s->text = p;
            s->text_cap = cap;
        }

        sl = &s->slots[s->nslots++];
        sl->off = s->text_len;
        sl->len = len;
        memcpy(s->text + s->text_len, s->line, len);
        s->text_len += len;
        s->text[s->text_len++] = '\0';
    }

    if (s->nslots < OPTOUT_BATCH) {
        if (ferror(s->fp)) {
            snprintf(err, err_len, "%s: %s", s->cur.name, strerror(errno));
            return -1;
        }

        s->eof = 1;
    }

    a.s = s;
    a.from = 0;
    a.to = s->nslots;

    if (s->nslots >= OPTOUT_BATCH_SPLIT) {
        b.s = s;
        b.from = s->nslots / 2;
        b.to = s->nslots;
        a.to = b.from;

        if (pthread_create(&tid, NULL, optout_stream_parse, &b) != 0) {
            a.to = s->nslots;

        } else {
            (void) optout_stream_parse(&a);

            if (pthread_join(tid, NULL) != 0) {
                snprintf(err, err_len, "cannot join a parser thread");
                return -1;
            }

            return 0;
        }
    }

    (void) optout_stream_parse(&a);

    return 0;
}


/* 1: the next usable line is in s->cur, 0: end of file, -1: read error */

static int
optout_stream_read(optout_merge_t *m, optout_stream_t *s, char *err,
    size_t err_len)
{
    optout_slot_t  *sl;

    for ( ;; ) {
        if (s->next == s->nslots) {
            if (s->eof) {
                return 0;
            }

            if (optout_stream_fill(m, s, err, err_len) != 0) {
                return -1;
            }

            if (s->nslots == 0) {
                return 0;
            }
        }

        sl = &s->slots[s->next++];
        s->cur.lineno++;

        if (sl->rc != OPTOUT_OK) {
            m->skipped++;

            if (m->skip) {
                m->skip(m->data, s->cur.name, s->cur.lineno, sl->reason);
            }

            continue;
        }

        s->cur.e = sl->e;
        s->cur.line = s->text + sl->off;
        s->cur.len = sl->len;

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
    return optout_merge_cmp(&a->cur.e, a->cur.line, a->cur.len,
                            &b->cur.e, b->cur.line, b->cur.len) < 0;
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
    *out = &m->last->cur;

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
        if (m->streams[i].fp != stdin) {
            (void) fclose(m->streams[i].fp);
        }

        free(m->streams[i].line);
        free(m->streams[i].text);
        free(m->streams[i].slots);
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


optout_fold_item_t **
optout_fold_items(optout_fold_t *f, size_t *n)
{
    size_t                i, k;
    optout_fold_item_t   *it, **all;

    all = malloc((f->count ? f->count : 1) * sizeof(optout_fold_item_t *));
    if (all == NULL) {
        return NULL;
    }

    k = 0;

    for (i = 0; i < f->nbuckets; i++) {
        for (it = f->buckets[i]; it != NULL; it = it->next) {
            all[k++] = it;
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
