
/*
 * Keyword matching of inbound messages (STOP, START, HELP): the text
 * normalizer, the keyword sets per operation and country, the matcher,
 * and the country of an E.164 number.  No nginx dependency; needs
 * libunistring.  See docs/keywords.md.
 */

#ifndef _OPTOUT_KEYWORD_H_INCLUDED_
#define _OPTOUT_KEYWORD_H_INCLUDED_


#include <stddef.h>


#define OPTOUT_KW_NONE         0
#define OPTOUT_KW_STOP         1
#define OPTOUT_KW_START        2
#define OPTOUT_KW_HELP         3

#define OPTOUT_KW_WHOLE        0               /* the default mode */
#define OPTOUT_KW_FIRST_WORD   1

#define OPTOUT_KW_OK           0
#define OPTOUT_KW_EUTF8       -1               /* invalid UTF-8 */
#define OPTOUT_KW_ENOMEM      -2

#define OPTOUT_KW_CUSTOM_MAX   20              /* per operation and country */
#define OPTOUT_KW_LEN_MAX      64              /* a normalized keyword */


typedef struct optout_kw_set_s  optout_kw_set_t;


typedef struct {
    int          op;                           /* OPTOUT_KW_* */
    const char  *keyword;                      /* as configured */
    const char  *country;                      /* "" for all countries */
} optout_kw_match_t;


/*
 * Normalizes UTF-8 text: NFKC, case folding, punctuation, symbols and
 * controls removed, whitespace runs collapsed to one space and trimmed.
 * Returns OPTOUT_KW_OK with a malloc()ed NUL-terminated *out (free() it),
 * OPTOUT_KW_EUTF8 or OPTOUT_KW_ENOMEM.
 */
int optout_kw_normalize(const char *in, size_t len, char **out,
    size_t *out_len);

/* "stop", "start", "help" <-> OPTOUT_KW_*; -1 or NULL if unknown */
int optout_kw_op(const char *name, size_t len);
const char *optout_kw_op_name(int op);

/* a set with the default keywords; NULL if out of memory */
optout_kw_set_t *optout_kw_set_create(void);
void optout_kw_set_free(optout_kw_set_t *set);

/*
 * Adds a custom keyword to op, for all countries (country NULL or "") or
 * one (ISO 3166-1 alpha-2, any case).  Adding a keyword op already has in
 * that scope does nothing.  Returns 0, or -1 with a message in err.
 */
int optout_kw_add(optout_kw_set_t *set, int op, const char *country,
    const char *word, size_t len, char *err, size_t err_len);

/*
 * Removes a keyword (a default or a custom one) from op in that scope;
 * START, STOP and HELP are refused.  Returns 0, or -1 with a message.
 */
int optout_kw_remove(optout_kw_set_t *set, int op, const char *country,
    const char *word, size_t len, char *err, size_t err_len);

/*
 * Matches a message.  country: the subscriber's (NULL or "" for none);
 * its keywords apply in addition to those for all countries.  Returns
 * the operation (OPTOUT_KW_NONE when nothing matches, also for invalid
 * UTF-8), with the keyword in *m, or OPTOUT_KW_ENOMEM.
 */
int optout_kw_match(const optout_kw_set_t *set, int mode,
    const char *country, const char *text, size_t len, optout_kw_match_t *m);

/* as optout_kw_match(), on text already normalized */
int optout_kw_match_normalized(const optout_kw_set_t *set, int mode,
    const char *country, const char *norm, size_t len, optout_kw_match_t *m);

/*
 * The country of an E.164 number ("+" and digits): 1 with the ISO 3166-1
 * alpha-2 code in cc (3 bytes), or 0 with cc = "" when unknown.
 */
int optout_kw_country(const char *e164, size_t len, char *cc);


#endif /* _OPTOUT_KEYWORD_H_INCLUDED_ */
