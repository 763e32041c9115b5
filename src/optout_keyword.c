
/*
 * Keyword matching of inbound messages; see optout_keyword.h and
 * docs/keywords.md.
 */

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

#include "optout_keyword.h"


/* rounds of (NFKC, case fold, filter) until the text stops changing */
#define OPTOUT_KW_ROUNDS  8


typedef struct {
    char      *word;                           /* as configured */
    char      *norm;
    size_t     norm_len;
    int        op;
    char       cc[3];                          /* "" for all countries */
    unsigned   custom:1;
} optout_kw_t;


struct optout_kw_set_s {
    optout_kw_t  *kw;
    size_t        n;
    size_t        cap;
};


static const char  *optout_kw_ops[] = { NULL, "stop", "start", "help" };

static const struct {
    int          op;
    const char  *word;
} optout_kw_defaults[] = {
    { OPTOUT_KW_STOP,  "STOP" },
    { OPTOUT_KW_STOP,  "STOPALL" },
    { OPTOUT_KW_STOP,  "STOP ALL" },
    { OPTOUT_KW_STOP,  "UNSUBSCRIBE" },
    { OPTOUT_KW_STOP,  "CANCEL" },
    { OPTOUT_KW_STOP,  "END" },
    { OPTOUT_KW_STOP,  "QUIT" },
    { OPTOUT_KW_STOP,  "REVOKE" },
    { OPTOUT_KW_STOP,  "OPT OUT" },
    { OPTOUT_KW_STOP,  "OPTOUT" },
    { OPTOUT_KW_START, "START" },
    { OPTOUT_KW_START, "UNSTOP" },
    { OPTOUT_KW_HELP,  "HELP" },
    { OPTOUT_KW_HELP,  "INFO" },
};


static int optout_kw_fold(uint8_t **s, size_t *len);
static int optout_kw_filter(uint8_t *s, size_t *len);
static int optout_kw_scope(const char *country, char *cc, char *err,
    size_t err_len);
static optout_kw_t *optout_kw_find(const optout_kw_set_t *set,
    const char *cc, const char *norm, size_t len);
static int optout_kw_insert(optout_kw_set_t *set, int op, const char *cc,
    const char *word, size_t len, char *norm, size_t norm_len, int custom);
static int optout_kw_prepare(const char *word, size_t len, char **norm,
    size_t *norm_len, char *err, size_t err_len);


int
optout_kw_normalize(const char *in, size_t len, char **out, size_t *out_len)
{
    int       i, rc;
    size_t    n;
    uint8_t  *s;

    if (u8_check((const uint8_t *) in, len) != NULL) {
        return OPTOUT_KW_EUTF8;
    }

    s = malloc(len + 1);
    if (s == NULL) {
        return OPTOUT_KW_ENOMEM;
    }

    memcpy(s, in, len);
    n = len;

    /*
     * NFKC and case folding can bring out punctuation ("⑴" is "(1)"), and
     * removing punctuation can leave characters to compose ("e", ".",
     * U+0301): repeated until stable, so that the result is a fixed point
     */

    for (i = 0; i < OPTOUT_KW_ROUNDS; i++) {
        rc = optout_kw_fold(&s, &n);
        if (rc != OPTOUT_KW_OK) {
            free(s);
            return rc;
        }

        if (!optout_kw_filter(s, &n)) {
            break;
        }
    }

    s[n] = '\0';

    *out = (char *) s;
    *out_len = n;

    return OPTOUT_KW_OK;
}


/* NFKC then case folding (normalized to NFKC); *s is replaced */
static int
optout_kw_fold(uint8_t **s, size_t *len)
{
    size_t    n1, n2;
    uint8_t  *nf, *cf;

    if (*len == 0) {
        return OPTOUT_KW_OK;
    }

    nf = u8_normalize(UNINORM_NFKC, *s, *len, NULL, &n1);
    if (nf == NULL) {
        return OPTOUT_KW_ENOMEM;
    }

    cf = u8_casefold(nf, n1, NULL, UNINORM_NFKC, NULL, &n2);
    free(nf);

    if (cf == NULL) {
        return OPTOUT_KW_ENOMEM;
    }

    /* one more byte for the terminating NUL */

    nf = realloc(cf, n2 + 1);
    if (nf == NULL) {
        free(cf);
        return OPTOUT_KW_ENOMEM;
    }

    free(*s);
    *s = nf;
    *len = n2;

    return OPTOUT_KW_OK;
}


/*
 * Whitespace runs become one space, trimmed; punctuation, symbols (emoji
 * are So, their skin tones Sk), enclosing marks (the keycap), variation
 * selectors and other controls, format characters (the zero-width
 * joiner), private-use and unassigned code points are removed.  In place
 * on valid UTF-8; returns 1 if anything changed.
 */
static int
optout_kw_filter(uint8_t *s, size_t *len)
{
    int       l, space, changed;
    ucs4_t    uc;
    size_t    i, o;

    o = 0;
    space = 0;
    changed = 0;

    for (i = 0; i < *len; i += l) {
        l = u8_mbtouc_unsafe(&uc, s + i, *len - i);

        if (uc_is_property_white_space(uc)
            || uc_is_general_category(uc, UC_CATEGORY_Z))
        {
            if (uc != ' ' || space || o == 0) {
                changed = 1;
            }

            space = 1;
            continue;
        }

        if (uc_is_general_category(uc, UC_CATEGORY_P)
            || uc_is_general_category(uc, UC_CATEGORY_S)
            || uc_is_general_category(uc, UC_CATEGORY_C)
            || uc_is_general_category(uc, UC_CATEGORY_Me)
            || uc_is_property_variation_selector(uc))
        {
            changed = 1;
            continue;
        }

        if (space && o > 0) {
            s[o++] = ' ';
        }

        space = 0;

        memmove(s + o, s + i, l);
        o += l;
    }

    if (space) {
        changed = 1;
    }

    *len = o;

    return changed;
}


int
optout_kw_op(const char *name, size_t len)
{
    int  op;

    for (op = OPTOUT_KW_STOP; op <= OPTOUT_KW_HELP; op++) {
        if (strlen(optout_kw_ops[op]) == len
            && strncmp(optout_kw_ops[op], name, len) == 0)
        {
            return op;
        }
    }

    return -1;
}


const char *
optout_kw_op_name(int op)
{
    if (op < OPTOUT_KW_STOP || op > OPTOUT_KW_HELP) {
        return NULL;
    }

    return optout_kw_ops[op];
}


optout_kw_set_t *
optout_kw_set_create(void)
{
    char             *norm;
    size_t            i, len, norm_len;
    optout_kw_set_t  *set;

    set = calloc(1, sizeof(optout_kw_set_t));
    if (set == NULL) {
        return NULL;
    }

    for (i = 0; i < sizeof(optout_kw_defaults) / sizeof(optout_kw_defaults[0]);
         i++)
    {
        len = strlen(optout_kw_defaults[i].word);

        if (optout_kw_normalize(optout_kw_defaults[i].word, len, &norm,
                                &norm_len)
            != OPTOUT_KW_OK)
        {
            optout_kw_set_free(set);
            return NULL;
        }

        if (optout_kw_insert(set, optout_kw_defaults[i].op, "",
                             optout_kw_defaults[i].word, len, norm, norm_len,
                             0)
            != 0)
        {
            free(norm);
            optout_kw_set_free(set);
            return NULL;
        }
    }

    return set;
}


void
optout_kw_set_free(optout_kw_set_t *set)
{
    size_t  i;

    if (set == NULL) {
        return;
    }

    for (i = 0; i < set->n; i++) {
        free(set->kw[i].word);
        free(set->kw[i].norm);
    }

    free(set->kw);
    free(set);
}


int
optout_kw_add(optout_kw_set_t *set, int op, const char *country,
    const char *word, size_t len, char *err, size_t err_len)
{
    int           reserved;
    char          cc[3], *norm;
    size_t        i, n, norm_len;
    optout_kw_t  *k;

    if (optout_kw_op_name(op) == NULL) {
        snprintf(err, err_len, "unknown operation");
        return -1;
    }

    if (optout_kw_scope(country, cc, err, err_len) != 0
        || optout_kw_prepare(word, len, &norm, &norm_len, err, err_len) != 0)
    {
        return -1;
    }

    reserved = optout_kw_op(norm, norm_len);

    if (reserved > 0 && reserved != op) {
        snprintf(err, err_len, "\"%.*s\" is reserved for %s", (int) len,
                 word, optout_kw_ops[reserved]);
        free(norm);
        return -1;
    }

    /*
     * a keyword of another operation in the same scope, or for all
     * countries, or in any country when added for all, is ambiguous
     */

    for (i = 0; i < set->n; i++) {
        k = &set->kw[i];

        if (k->norm_len != norm_len || memcmp(k->norm, norm, norm_len) != 0
            || (cc[0] && k->cc[0] && strcmp(cc, k->cc) != 0))
        {
            continue;
        }

        if (k->op != op) {
            snprintf(err, err_len, "\"%.*s\" is already a %s keyword%s%s",
                     (int) len, word, optout_kw_ops[k->op],
                     k->cc[0] ? " in " : "", k->cc);
            free(norm);
            return -1;
        }

        if (strcmp(k->cc, cc) == 0) {
            free(norm);
            return 0;
        }
    }

    n = 0;

    for (i = 0; i < set->n; i++) {
        if (set->kw[i].custom && set->kw[i].op == op
            && strcmp(set->kw[i].cc, cc) == 0)
        {
            n++;
        }
    }

    if (n >= OPTOUT_KW_CUSTOM_MAX) {
        snprintf(err, err_len, "more than %d custom %s keywords%s%s",
                 OPTOUT_KW_CUSTOM_MAX, optout_kw_ops[op],
                 cc[0] ? " in " : "", cc);
        free(norm);
        return -1;
    }

    if (optout_kw_insert(set, op, cc, word, len, norm, norm_len, 1) != 0) {
        snprintf(err, err_len, "out of memory");
        free(norm);
        return -1;
    }

    return 0;
}


int
optout_kw_remove(optout_kw_set_t *set, int op, const char *country,
    const char *word, size_t len, char *err, size_t err_len)
{
    char          cc[3], *norm;
    size_t        norm_len;
    optout_kw_t  *k;

    if (optout_kw_op_name(op) == NULL) {
        snprintf(err, err_len, "unknown operation");
        return -1;
    }

    if (optout_kw_scope(country, cc, err, err_len) != 0
        || optout_kw_prepare(word, len, &norm, &norm_len, err, err_len) != 0)
    {
        return -1;
    }

    k = optout_kw_find(set, cc, norm, norm_len);

    if (optout_kw_op(norm, norm_len) != -1) {
        snprintf(err, err_len, "\"%.*s\" is reserved and cannot be removed",
                 (int) len, word);
        free(norm);
        return -1;
    }

    free(norm);

    if (k == NULL || k->op != op) {
        snprintf(err, err_len, "\"%.*s\" is not a %s keyword%s%s",
                 (int) len, word, optout_kw_ops[op],
                 cc[0] ? " in " : "", cc);
        return -1;
    }

    free(k->word);
    free(k->norm);

    *k = set->kw[--set->n];

    return 0;
}


static int
optout_kw_scope(const char *country, char *cc, char *err, size_t err_len)
{
    if (country == NULL || country[0] == '\0') {
        cc[0] = '\0';
        return 0;
    }

    if (!isalpha((unsigned char) country[0])
        || !isalpha((unsigned char) country[1]) || country[2] != '\0')
    {
        snprintf(err, err_len, "invalid country \"%s\" (ISO 3166-1 alpha-2 "
                 "expected)", country);
        return -1;
    }

    cc[0] = toupper((unsigned char) country[0]);
    cc[1] = toupper((unsigned char) country[1]);
    cc[2] = '\0';

    return 0;
}


static int
optout_kw_prepare(const char *word, size_t len, char **norm,
    size_t *norm_len, char *err, size_t err_len)
{
    int  rc;

    rc = optout_kw_normalize(word, len, norm, norm_len);

    if (rc == OPTOUT_KW_ENOMEM) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }

    if (rc == OPTOUT_KW_EUTF8) {
        snprintf(err, err_len, "keyword is not valid UTF-8");
        return -1;
    }

    if (*norm_len == 0 || *norm_len > OPTOUT_KW_LEN_MAX) {
        snprintf(err, err_len, "keyword \"%.*s\" is %s after normalization",
                 (int) len, word, *norm_len ? "too long" : "empty");
        free(*norm);
        return -1;
    }

    return 0;
}


static optout_kw_t *
optout_kw_find(const optout_kw_set_t *set, const char *cc, const char *norm,
    size_t len)
{
    size_t  i;

    for (i = 0; i < set->n; i++) {
        if (set->kw[i].norm_len == len
            && memcmp(set->kw[i].norm, norm, len) == 0
            && strcmp(set->kw[i].cc, cc) == 0)
        {
            return &set->kw[i];
        }
    }

    return NULL;
}


/* takes norm over on success */
static int
optout_kw_insert(optout_kw_set_t *set, int op, const char *cc,
    const char *word, size_t len, char *norm, size_t norm_len, int custom)
{
    size_t        cap;
    optout_kw_t  *k;

    if (set->n == set->cap) {
        cap = set->cap ? 2 * set->cap : 32;

        k = realloc(set->kw, cap * sizeof(optout_kw_t));
        if (k == NULL) {
            return -1;
        }

        set->kw = k;
        set->cap = cap;
    }

    k = &set->kw[set->n];

    k->word = malloc(len + 1);
    if (k->word == NULL) {
        return -1;
    }

    memcpy(k->word, word, len);
    k->word[len] = '\0';

    k->norm = norm;
    k->norm_len = norm_len;
    k->op = op;
    k->custom = custom;
    k->cc[0] = cc[0];
    k->cc[1] = cc[0] ? cc[1] : '\0';
    k->cc[2] = '\0';

    set->n++;

    return 0;
}


int
optout_kw_match(const optout_kw_set_t *set, int mode, const char *country,
    const char *text, size_t len, optout_kw_match_t *m)
{
    int     rc;
    char   *norm;
    size_t  norm_len;

    m->op = OPTOUT_KW_NONE;
    m->keyword = NULL;
    m->country = NULL;

    rc = optout_kw_normalize(text, len, &norm, &norm_len);

    if (rc == OPTOUT_KW_EUTF8) {
        return OPTOUT_KW_NONE;
    }

    if (rc != OPTOUT_KW_OK) {
        return rc;
    }

    rc = optout_kw_match_normalized(set, mode, country, norm, norm_len, m);

    free(norm);

    return rc;
}


/*
 * whole: the text is the keyword; first_word: the text is the keyword,
 * or starts with it and a space.  The longest keyword that matches wins,
 * so "stop all please" is STOP ALL rather than STOP.
 */
int
optout_kw_match_normalized(const optout_kw_set_t *set, int mode,
    const char *country, const char *norm, size_t len, optout_kw_match_t *m)
{
    size_t        i;
    const char   *cc;
    optout_kw_t  *k, *best;

    cc = (country == NULL) ? "" : country;
    best = NULL;

    for (i = 0; i < set->n; i++) {
        k = &set->kw[i];

        if (k->cc[0] && strcasecmp(k->cc, cc) != 0) {
            continue;
        }

        if (k->norm_len > len || memcmp(k->norm, norm, k->norm_len) != 0) {
            continue;
        }

        if (k->norm_len < len
            && (mode != OPTOUT_KW_FIRST_WORD || norm[k->norm_len] != ' '))
        {
            continue;
        }

        if (best == NULL || k->norm_len > best->norm_len) {
            best = k;
        }
    }

    if (best == NULL) {
        m->op = OPTOUT_KW_NONE;
        m->keyword = NULL;
        m->country = NULL;
        return OPTOUT_KW_NONE;
    }

    m->op = best->op;
    m->keyword = best->word;
    m->country = best->cc;

    return best->op;
}


/*
 * Calling codes of one country, or of a country that holds nearly all
 * of the numbers of a shared code (+7: Russia, +44: the United Kingdom);
 * the longest prefix wins.  Not a full ITU list: see docs/keywords.md.
 */

static const struct {
    const char  *prefix;
    const char  *cc;
} optout_kw_codes[] = {
    { "20", "EG" }, { "27", "ZA" }, { "30", "GR" }, { "31", "NL" },
    { "32", "BE" }, { "33", "FR" }, { "34", "ES" }, { "36", "HU" },
    { "39", "IT" }, { "40", "RO" }, { "41", "CH" }, { "43", "AT" },
    { "44", "GB" }, { "45", "DK" }, { "46", "SE" }, { "47", "NO" },
    { "48", "PL" }, { "49", "DE" }, { "51", "PE" }, { "52", "MX" },
    { "53", "CU" }, { "54", "AR" }, { "55", "BR" }, { "56", "CL" },
    { "57", "CO" }, { "58", "VE" }, { "60", "MY" }, { "61", "AU" },
    { "62", "ID" }, { "63", "PH" }, { "64", "NZ" }, { "65", "SG" },
    { "66", "TH" }, { "7", "RU" }, { "76", "KZ" }, { "77", "KZ" },
    { "81", "JP" }, { "82", "KR" }, { "84", "VN" }, { "86", "CN" },
    { "90", "TR" }, { "91", "IN" }, { "92", "PK" }, { "93", "AF" },
    { "94", "LK" }, { "95", "MM" }, { "98", "IR" },
    { "212", "MA" }, { "213", "DZ" }, { "216", "TN" }, { "218", "LY" },
    { "220", "GM" }, { "221", "SN" }, { "225", "CI" }, { "233", "GH" },
    { "234", "NG" }, { "237", "CM" }, { "243", "CD" }, { "244", "AO" },
    { "249", "SD" }, { "251", "ET" }, { "254", "KE" }, { "255", "TZ" },
    { "256", "UG" }, { "260", "ZM" }, { "263", "ZW" },
    { "351", "PT" }, { "352", "LU" }, { "353", "IE" }, { "354", "IS" },
    { "355", "AL" }, { "356", "MT" }, { "357", "CY" }, { "358", "FI" },
    { "359", "BG" }, { "370", "LT" }, { "371", "LV" }, { "372", "EE" },
    { "373", "MD" }, { "374", "AM" }, { "375", "BY" }, { "380", "UA" },
    { "381", "RS" }, { "385", "HR" }, { "386", "SI" }, { "387", "BA" },
    { "389", "MK" }, { "420", "CZ" }, { "421", "SK" }, { "423", "LI" },
    { "502", "GT" }, { "503", "SV" }, { "504", "HN" }, { "505", "NI" },
    { "506", "CR" }, { "507", "PA" }, { "591", "BO" }, { "593", "EC" },
    { "595", "PY" }, { "598", "UY" },
    { "852", "HK" }, { "853", "MO" }, { "855", "KH" }, { "880", "BD" },
    { "886", "TW" }, { "961", "LB" }, { "962", "JO" }, { "963", "SY" },
    { "964", "IQ" }, { "965", "KW" }, { "966", "SA" }, { "967", "YE" },
    { "968", "OM" }, { "970", "PS" }, { "971", "AE" }, { "972", "IL" },
    { "973", "BH" }, { "974", "QA" }, { "975", "BT" }, { "976", "MN" },
    { "977", "NP" }, { "992", "TJ" }, { "993", "TM" }, { "994", "AZ" },
    { "995", "GE" }, { "996", "KG" }, { "998", "UZ" },
};


/* +1 area codes outside the United States */

static const struct {
    const char  *npa;
    const char  *cc;
} optout_kw_nanp[] = {
    /* Canada, geographic (CNAC list) and the non-geographic 600, 622 */
    { "204", "CA" }, { "226", "CA" }, { "236", "CA" }, { "249", "CA" },
    { "250", "CA" }, { "257", "CA" }, { "263", "CA" }, { "289", "CA" },
    { "306", "CA" }, { "343", "CA" }, { "354", "CA" }, { "365", "CA" },
    { "367", "CA" }, { "368", "CA" }, { "382", "CA" }, { "403", "CA" },
    { "416", "CA" }, { "418", "CA" }, { "428", "CA" }, { "431", "CA" },
    { "437", "CA" }, { "438", "CA" }, { "450", "CA" }, { "468", "CA" },
    { "474", "CA" }, { "506", "CA" }, { "514", "CA" }, { "519", "CA" },
    { "548", "CA" }, { "579", "CA" }, { "581", "CA" }, { "584", "CA" },
    { "587", "CA" }, { "600", "CA" }, { "604", "CA" }, { "613", "CA" },
    { "622", "CA" }, { "639", "CA" }, { "647", "CA" }, { "672", "CA" },
    { "683", "CA" }, { "705", "CA" }, { "709", "CA" }, { "742", "CA" },
    { "753", "CA" }, { "778", "CA" }, { "780", "CA" }, { "782", "CA" },
    { "807", "CA" }, { "819", "CA" }, { "825", "CA" }, { "867", "CA" },
    { "873", "CA" }, { "879", "CA" }, { "902", "CA" }, { "905", "CA" },
    { "942", "CA" },

    /* the Caribbean and the Pacific */
    { "242", "BS" }, { "246", "BB" }, { "264", "AI" }, { "268", "AG" },
    { "284", "VG" }, { "340", "VI" }, { "345", "KY" }, { "441", "BM" },
    { "473", "GD" }, { "649", "TC" }, { "658", "JM" }, { "664", "MS" },
    { "670", "MP" }, { "671", "GU" }, { "684", "AS" }, { "721", "SX" },
    { "758", "LC" }, { "767", "DM" }, { "784", "VC" }, { "787", "PR" },
    { "809", "DO" }, { "829", "DO" }, { "849", "DO" }, { "868", "TT" },
    { "869", "KN" }, { "876", "JM" }, { "939", "PR" },

    /* toll-free, shared by the whole zone: no country */
    { "800", "" }, { "833", "" }, { "844", "" }, { "855", "" },
    { "866", "" }, { "877", "" }, { "888", "" },
};


int
optout_kw_country(const char *e164, size_t len, char *cc)
{
    size_t       i, n, best;
    const char  *found;

    cc[0] = '\0';

    if (len < 2 || e164[0] != '+') {
        return 0;
    }

    for (i = 1; i < len; i++) {
        if (e164[i] < '0' || e164[i] > '9') {
            return 0;
        }
    }

    e164++;
    len--;
    found = NULL;

    if (e164[0] == '1') {

        /* an area code is [2-9]XX; a number has 10 digits after the 1 */

        if (len != 11 || e164[1] < '2') {
            return 0;
        }

        found = "US";

        for (i = 0; i < sizeof(optout_kw_nanp) / sizeof(optout_kw_nanp[0]);
             i++)
        {
            if (memcmp(optout_kw_nanp[i].npa, e164 + 1, 3) == 0) {
                found = optout_kw_nanp[i].cc;
                break;
            }
        }

    } else {
        best = 0;

        for (i = 0; i < sizeof(optout_kw_codes) / sizeof(optout_kw_codes[0]);
             i++)
        {
            n = strlen(optout_kw_codes[i].prefix);

            if (n > best && n < len
                && memcmp(optout_kw_codes[i].prefix, e164, n) == 0)
            {
                found = optout_kw_codes[i].cc;
                best = n;
            }
        }
    }

    if (found == NULL || found[0] == '\0') {
        return 0;
    }

    memcpy(cc, found, 3);

    return 1;
}
