/*
 * Shared by ngx_http_optout_module and optoutctl: destination
 * normalization, link tokens, keyed store keys, rule values and journal
 * lines.  No nginx dependency; see docs/token-format.md and
 * docs/store-format.md for the formats.
 */

#ifndef _OPTOUT_CORE_H_INCLUDED_
#define _OPTOUT_CORE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define OPTOUT_OK               0
#define OPTOUT_EDEST           -1    /* destination is not E.164 or email */
#define OPTOUT_ESENDER         -2    /* sender id is not valid */
#define OPTOUT_EMALFORMED      -3    /* token is not well formed */
#define OPTOUT_EVERSION        -4    /* unknown token version */
#define OPTOUT_EKEY            -5    /* unknown key id */
#define OPTOUT_ETAG            -6    /* authentication tag mismatch */
#define OPTOUT_ETOOLONG        -7    /* input or output too long */
#define OPTOUT_ENAMESPACE      -8    /* namespace is not valid */
#define OPTOUT_ECRYPTO         -9    /* OpenSSL failure */
#define OPTOUT_EVALUE         -10    /* malformed rule value */
#define OPTOUT_EKEYFILE       -11    /* key file unusable, see err text */

#define OPTOUT_DEST_PHONE       0
#define OPTOUT_DEST_EMAIL       1

#define OPTOUT_DEST_MAX         254  /* normalized destination length */
#define OPTOUT_SENDER_MAX       16   /* "+" and 15 digits, or 11 alnum */
#define OPTOUT_ALNUM_SENDER_MAX 11
#define OPTOUT_NAMESPACE_MAX    64
#define OPTOUT_TAG_LEN          16
#define OPTOUT_KEY_MIN          32   /* key file bytes */
#define OPTOUT_KEY_MAX          4096
#define OPTOUT_KEY_ID_MAX       255
#define OPTOUT_TOKEN_BIN_MAX    320
#define OPTOUT_TOKEN_MAX        428  /* base64url of OPTOUT_TOKEN_BIN_MAX */
#define OPTOUT_PREFIX_MAX       64
#define OPTOUT_HASH_HEX         32   /* 128-bit keyed hash, hex */
#define OPTOUT_STORE_KEY_MAX    (OPTOUT_PREFIX_MAX + OPTOUT_HASH_HEX)
#define OPTOUT_VALUE_MAX        96
#define OPTOUT_MASKED_MAX       (OPTOUT_DEST_MAX + 1)


typedef struct {
    unsigned        type;                      /* OPTOUT_DEST_* */
    size_t          len;
    char            data[OPTOUT_DEST_MAX + 1]; /* normalized, NUL-ended */
} optout_dest_t;


typedef struct {
    unsigned        key_id;                    /* 1..255 */
    uint64_t        campaign;
    optout_dest_t   dest;
    size_t          sender_len;                /* 0: account-wide */
    char            sender[OPTOUT_SENDER_MAX + 1];
} optout_link_t;


/* HMAC-SHA256 under one key, reusable (not thread-safe) */
typedef struct optout_mac_s  optout_mac_t;

typedef struct {
    unsigned        id;
    optout_mac_t   *mac;
} optout_key_t;


/* rule value stored in memcached */
#define OPTOUT_SOURCE_LINK      0
#define OPTOUT_SOURCE_API       1
#define OPTOUT_SOURCE_KEYWORD   2
#define OPTOUT_SOURCE_REPLAY    3
#define OPTOUT_SOURCE_IMPORT    4

typedef struct {
    uint64_t        campaign;
    int64_t         time;                      /* unix seconds */
    unsigned        source;                    /* OPTOUT_SOURCE_* */
    unsigned        channel;                   /* OPTOUT_DEST_* */
    unsigned        key_id;                    /* 0 when not from a link */
} optout_rule_t;


/* one journal record */
typedef struct {
    double          time;                      /* unix seconds, ms */
    const char     *action;                    /* "optout" or "optin" */
    const char     *ns;                        /* "" when none */
    size_t          ns_len;
    const optout_dest_t *dest;
    const char     *sender;                    /* NULL: account-wide */
    size_t          sender_len;
    uint64_t        campaign;
    unsigned        source;
    const char     *client;                    /* client address or "" */
    size_t          client_len;
    const char     *user;                      /* NULL: none */
    size_t          user_len;
    const char     *keyword;                   /* NULL: none */
    size_t          keyword_len;
    unsigned        key_id;
} optout_journal_rec_t;


const char *optout_strerror(int rc);

/* normalization */
int optout_normalize_dest(const char *in, size_t len, optout_dest_t *out);
int optout_normalize_sender(const char *in, size_t len, char *out,
    size_t *out_len);
int optout_check_namespace(const char *in, size_t len);
size_t optout_mask_dest(const optout_dest_t *dest, char *out);

/* keys */
int optout_key_load(const char *path, unsigned char *buf, size_t *len,
    char *err, size_t err_len);
optout_mac_t *optout_mac_create(const unsigned char *key, size_t len);
optout_mac_t *optout_mac_dup(optout_mac_t *mac);
void optout_mac_destroy(optout_mac_t *mac);
int optout_mac_compute(optout_mac_t *mac, const unsigned char *data,
    size_t len, unsigned char out[32]);

/* tokens; ns (ns_len 0: none) is bound into the tag, not carried */
int optout_token_encode(optout_mac_t *mac, const optout_link_t *link,
    const char *ns, size_t ns_len, char *out, size_t out_size,
    size_t *out_len);
int optout_token_open(const optout_key_t *keys, size_t nkeys,
    const char *ns, size_t ns_len, const char *token, size_t len,
    optout_link_t *link);

/* store keys and values */
int optout_store_key(optout_mac_t *mac, const char *prefix,
    size_t prefix_len, const char *ns, size_t ns_len, const char *sender,
    size_t sender_len, const optout_dest_t *dest, char *out,
    size_t *out_len);
size_t optout_rule_format(const optout_rule_t *rule, char *out);
int optout_rule_parse(const char *in, size_t len, optout_rule_t *rule);
const char *optout_source_name(unsigned source);
int optout_source_parse(const char *name, size_t len);
const char *optout_channel_name(unsigned channel);

/* journal */
int optout_parse_u64(const char *p, size_t n, uint64_t max, uint64_t *v);

/* JSON string contents, at most max characters; 6 bytes an input byte */
#define OPTOUT_JSON_ESCAPED(n)  ((n) * 6)
size_t optout_json_escape(const char *in, size_t n, size_t max, char *out);

size_t optout_journal_format(const optout_journal_rec_t *rec, char *out,
    size_t out_size);


#endif /* _OPTOUT_CORE_H_INCLUDED_ */
