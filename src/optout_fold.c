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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "optout_fold.h"


#define OPTOUT_FOLD_BLOCK    (1024 * 1024)
#define OPTOUT_FOLD_BUCKETS  1024
#define OPTOUT_ARENA_SIZE    (64 * 1024)


typedef struct {
    FILE                    *fp;
    char                    *buf;
    size_t                   cap;
    optout_merge_line_t      cur;
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
 */

static unsigned char  optout_arena[OPTOUT_ARENA_SIZE];
static size_t         optout_arena_used;
static unsigned       optout_arena_on;


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


/* 1: the next usable line is in s->cur, 0: end of file, -1: read error */

static int
optout_stream_read(optout_merge_t *m, optout_stream_t *s, char *err,
    size_t err_len)
{
    int      rc;
    char     reason[256];
    size_t   len;
    ssize_t  n;

    while ((n = getline(&s->buf, &s->cap, s->fp)) != -1) {
        m->lines++;
        m->bytes += (uint64_t) n;
        s->cur.lineno++;
        len = (size_t) n;

        if (len > 0 && s->buf[len - 1] == '\n') {
            len--;
        }

        if (len > 0 && s->buf[len - 1] == '\r') {
            len--;
        }

        reason[0] = '\0';

        optout_arena_on = 1;
        rc = optout_journal_parse(s->buf, len, &s->cur.e, reason,
                                  sizeof(reason));
        optout_arena_on = 0;
        optout_arena_used = 0;

        if (rc != OPTOUT_OK) {
            m->skipped++;

            if (m->skip) {
                m->skip(m->data, s->cur.name, s->cur.lineno, reason);
            }

            continue;
        }

        s->cur.line = s->buf;
        s->cur.len = len;

        return 1;
    }

    if (ferror(s->fp)) {
        snprintf(err, err_len, "%s: %s", s->cur.name, strerror(errno));
        return -1;
    }

    return 0;
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

        free(m->streams[i].buf);
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
