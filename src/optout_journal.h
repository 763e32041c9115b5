/*
 * Shared by ngx_http_optout_module and optoutctl: journal lines read
 * back.  Needs jansson; no nginx dependency.
 */

#ifndef _OPTOUT_JOURNAL_H_INCLUDED_
#define _OPTOUT_JOURNAL_H_INCLUDED_


#include "optout_core.h"


/* one journal line, checked; what replay and the applier apply */
typedef struct {
    unsigned        optin;                     /* 0: "optout", 1: "optin" */
    double          time;                      /* "t", unix seconds, ms */
    size_t          ns_len;
    char            ns[OPTOUT_NAMESPACE_MAX + 1];
    optout_dest_t   dest;
    size_t          sender_len;                /* 0: account-wide */
    char            sender[OPTOUT_SENDER_MAX + 1];
    optout_rule_t   rule;                      /* "optout"; for "optin"
                                                  campaign and source */
} optout_journal_entry_t;


/*
 * Parses one line (without its "\n").  Returns OPTOUT_OK, or OPTOUT_EVALUE
 * with the reason in err.
 */
int optout_journal_parse(const char *line, size_t len,
    optout_journal_entry_t *e, char *err, size_t err_len);

/* the store key of the entry's rule */
int optout_journal_key(const optout_journal_entry_t *e, optout_mac_t *mac,
    const char *prefix, size_t prefix_len, char *key, size_t *key_len);


#endif /* _OPTOUT_JOURNAL_H_INCLUDED_ */
