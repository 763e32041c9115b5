
/*
 * libFuzzer target: keyword normalization, matching and the country of a
 * number on arbitrary bytes.
 *
 * Properties (abort() on violation): invalid UTF-8 is refused, valid
 * UTF-8 normalizes; the result is valid UTF-8 without NULs, leading,
 * trailing or double spaces, and normalizing it again gives the same
 * bytes; a whole-message match is also a first_word match of the same
 * operation; matching the text and its normalized form agree; a country
 * is two uppercase letters.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <unistr.h>

#include "optout_keyword.h"


static optout_kw_set_t  *set;


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
setup(void)
{
    char  err[256];

    set = optout_kw_set_create();
    if (set == NULL
        || optout_kw_add(set, OPTOUT_KW_STOP, "FR", "ARR\xc3\x8aT", 6, err,
                         sizeof(err)) != 0
        || optout_kw_add(set, OPTOUT_KW_HELP, NULL, "stop what", 9, err,
                         sizeof(err)) != 0)
    {
        abort();
    }
}


static void
check_normal(const char *s, size_t len)
{
    int     rc;
    char   *again;
    size_t  n;

    if (u8_check((const uint8_t *) s, len) != NULL
        || memchr(s, '\0', len) != NULL || s[len] != '\0'
        || (len > 0 && (s[0] == ' ' || s[len - 1] == ' '))
        || strstr(s, "  ") != NULL)
    {
        abort();
    }

    rc = optout_kw_normalize(s, len, &again, &n);
    if (rc != OPTOUT_KW_OK) {
        abort();
    }

    if (n != len || memcmp(again, s, len) != 0) {
        abort();
    }

    free(again);
}


static void
check_match(const char *text, size_t len, const char *norm, size_t nlen,
    const char *cc)
{
    int                whole, first, again;
    optout_kw_match_t  m;

    whole = optout_kw_match(set, OPTOUT_KW_WHOLE, cc, text, len, &m);
    first = optout_kw_match(set, OPTOUT_KW_FIRST_WORD, cc, text, len, &m);

    if (whole < 0 || first < 0 || (whole != OPTOUT_KW_NONE && whole != first)
        || (first != OPTOUT_KW_NONE && m.keyword == NULL))
    {
        abort();
    }

    again = optout_kw_match_normalized(set, OPTOUT_KW_FIRST_WORD, cc, norm,
                                       nlen, &m);
    if (again != first) {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                 rc, valid;
    char               *norm, cc[3];
    size_t              n;
    const char         *text;
    optout_kw_match_t   m;

    if (set == NULL) {
        setup();
    }

    text = (const char *) data;
    valid = (u8_check(data, size) == NULL);

    rc = optout_kw_normalize(text, size, &norm, &n);

    if (rc != (valid ? OPTOUT_KW_OK : OPTOUT_KW_EUTF8)) {
        abort();
    }

    if (rc == OPTOUT_KW_OK) {
        check_normal(norm, n);
        check_match(text, size, norm, n, (size & 1) ? "FR" : NULL);
        free(norm);

    } else if (optout_kw_match(set, OPTOUT_KW_FIRST_WORD, NULL, text, size,
                               &m) != OPTOUT_KW_NONE)
    {
        abort();
    }

    if (optout_kw_country(text, size, cc)) {
        if (cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z'
            || cc[2] != '\0')
        {
            abort();
        }

    } else if (cc[0] != '\0') {
        abort();
    }

    return 0;
}
