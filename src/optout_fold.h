/*
 * Used by optoutctl: journals merged by time, and folded into the state
 * each rule is in at the end.  Needs jansson (optout_journal.c); no nginx
 * dependency.
 */

#ifndef _OPTOUT_FOLD_H_INCLUDED_
#define _OPTOUT_FOLD_H_INCLUDED_


#include "optout_journal.h"


#define OPTOUT_FOLD_NONE   0
#define OPTOUT_FOLD_OUT    1                   /* opted out: a rule */
#define OPTOUT_FOLD_IN     2                   /* opted (back) in */


typedef struct optout_merge_s      optout_merge_t;
typedef struct optout_fold_s       optout_fold_t;
typedef struct optout_fold_item_s  optout_fold_item_t;


/* one line out of the merge */
typedef struct {
    optout_journal_entry_t   e;
    const char              *line;             /* without its "\n" */
    size_t                   len;
    const char              *name;             /* journal file name */
    uint64_t                 lineno;
} optout_merge_line_t;


/* a line that cannot be used: reported, then skipped */
typedef void (*optout_merge_skip_pt)(void *data, const char *name,
    uint64_t lineno, const char *reason);


struct optout_fold_item_s {
    optout_fold_item_t      *next;             /* hash chain */
    uint32_t                 hash;
    uint8_t                  ns_len;
    uint8_t                  dest_len;
    uint8_t                  sender_len;
    uint8_t                  state;            /* OPTOUT_FOLD_OUT, _IN */
    unsigned                 reborn;           /* out again after an in */
    optout_rule_t            rule;             /* the last rule */
    char                     key[];            /* ns 0 dest 0 sender 0 */
};


/*
 * names: journal files, "-" for stdin.  threads: how many parse the
 * lines, shared by the journals; 1, or fewer than the journals, parses
 * them on the caller's thread as they are needed.  The lines come out the
 * same either way.  Returns NULL with the reason in err.
 */
optout_merge_t *optout_merge_create(char *const *names, size_t n,
    unsigned threads, optout_merge_skip_pt skip, void *data, char *err,
    size_t err_len);
/* 1: *out is the next line in time order, 0: the end, -1: read error */
int optout_merge_next(optout_merge_t *m, const optout_merge_line_t **out,
    char *err, size_t err_len);
uint64_t optout_merge_lines(optout_merge_t *m);
/* bytes read so far, over all journals */
uint64_t optout_merge_bytes(optout_merge_t *m);
uint64_t optout_merge_skipped(optout_merge_t *m);
void optout_merge_destroy(optout_merge_t *m);

/* the tie rule of the merge: <0, 0, >0 */
int optout_merge_cmp(const optout_journal_entry_t *a, const char *la,
    size_t lena, const optout_journal_entry_t *b, const char *lb,
    size_t lenb);

optout_fold_t *optout_fold_create(void);
/* NULL: out of memory; *before: the item's state before this entry */
optout_fold_item_t *optout_fold_apply(optout_fold_t *f,
    const optout_journal_entry_t *e, unsigned *before);
size_t optout_fold_count(optout_fold_t *f);
/* every item, in no order */
optout_fold_item_t **optout_fold_items(optout_fold_t *f, size_t *n);
/* every item, by namespace, destination, account before senders */
optout_fold_item_t **optout_fold_sorted(optout_fold_t *f, size_t *n);
void optout_fold_destroy(optout_fold_t *f);

#define optout_fold_ns(it)      ((it)->key)
#define optout_fold_dest(it)    ((it)->key + (it)->ns_len + 1)
#define optout_fold_sender(it)                                             \
    ((it)->key + (it)->ns_len + 1 + (it)->dest_len + 1)


#endif /* _OPTOUT_FOLD_H_INCLUDED_ */
