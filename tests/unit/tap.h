
/*
 * The TAP output of the unit tests (tests/unit/test_*.c), run by prove:
 * one "ok N - name" line a check, names kept on one line and ASCII.
 */

#ifndef _OPTOUT_TAP_H_INCLUDED_
#define _OPTOUT_TAP_H_INCLUDED_


#include <stdarg.h>
#include <stdio.h>


static int  tests;
static int  failures;


static int ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), unused));
static void diag(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), unused));


static int
ok(int cond, const char *fmt, ...)
{
    char           buf[1024];
    va_list        args;
    unsigned char *p;

    tests++;

    if (!cond) {
        failures++;
    }

    va_start(args, fmt);
    vsnprintf(buf, sizeof(buf), fmt, args);
    va_end(args);

    printf("%sok %d - ", cond ? "" : "not ", tests);

    for (p = (unsigned char *) buf; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f || *p == '#' || *p == '\\') {
            printf("\\x%02x", *p);

        } else {
            putchar(*p);
        }
    }

    printf("\n");
    fflush(stdout);

    return cond;
}


static void
diag(const char *fmt, ...)
{
    va_list  args;

    printf("# ");

    va_start(args, fmt);
    vprintf(fmt, args);
    va_end(args);

    printf("\n");
    fflush(stdout);
}


#endif /* _OPTOUT_TAP_H_INCLUDED_ */
