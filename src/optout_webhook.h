/*
 * Webhook authenticity, shared core: Twilio's X-Twilio-Signature (form and
 * bodySHA256 variants), Telnyx's Ed25519 signature, a generic HMAC-SHA256
 * header, and the application/x-www-form-urlencoded decoder the Twilio
 * verifier needs.  No nginx dependency; see docs/webhooks.md.
 */

#ifndef _OPTOUT_WEBHOOK_H_INCLUDED_
#define _OPTOUT_WEBHOOK_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "optout_core.h"


typedef enum {
    OPTOUT_WH_OK = 0,
    OPTOUT_WH_MISSING,         /* no signature (or timestamp) header: 401 */
    OPTOUT_WH_MALFORMED,       /* header value not decodable: 401 */
    OPTOUT_WH_MISMATCH,        /* signature does not verify: 403 */
    OPTOUT_WH_BODY_HASH,       /* bodySHA256 missing or wrong: 403 */
    OPTOUT_WH_STALE,           /* timestamp older than the tolerance: 403 */
    OPTOUT_WH_FUTURE,          /* timestamp too far ahead: 403 */
    OPTOUT_WH_FORM,            /* form body not well formed: 400 */
    OPTOUT_WH_TOOMANY,         /* more form parameters than allowed: 413 */
    OPTOUT_WH_ERROR            /* allocation or OpenSSL failure: 500 */
} optout_wh_rc_t;


/* one decoded form parameter; points into the caller's buffer */
typedef struct {
    const char     *name;
    size_t          name_len;
    const char     *value;
    size_t          value_len;
} optout_wh_param_t;


/* an Ed25519 public key */
typedef struct optout_wh_pkey_s  optout_wh_pkey_t;


#define OPTOUT_WH_TOLERANCE      300    /* seconds, default */
#define OPTOUT_WH_PKEY_FILE_MAX  4096


const char *optout_wh_strerror(optout_wh_rc_t rc);
int optout_wh_http_status(optout_wh_rc_t rc);

/*
 * Decodes "in" into "buf" (at least len bytes; decoding never grows) and
 * fills at most "max" parameters in body order, repeated names kept.
 */
optout_wh_rc_t optout_wh_form_decode(const char *in, size_t len, char *buf,
    optout_wh_param_t *params, size_t max, size_t *n);

/* sorts params in place: by name, then by value, bytewise */
optout_wh_rc_t optout_wh_twilio_verify(const unsigned char *token,
    size_t token_len, const char *url, size_t url_len,
    optout_wh_param_t *params, size_t n, const char *sig, size_t sig_len);
optout_wh_rc_t optout_wh_twilio_verify_body(const unsigned char *token,
    size_t token_len, const char *url, size_t url_len,
    const unsigned char *body, size_t body_len, const char *sig,
    size_t sig_len);

/* PEM SubjectPublicKeyInfo, or the raw 32-byte key in base64 */
optout_wh_pkey_t *optout_wh_pkey_parse(const char *in, size_t len);
optout_wh_pkey_t *optout_wh_pkey_load(const char *path, char *err,
    size_t err_len);
void optout_wh_pkey_free(optout_wh_pkey_t *key);

optout_wh_rc_t optout_wh_telnyx_verify(optout_wh_pkey_t *key,
    const char *ts, size_t ts_len, const unsigned char *body,
    size_t body_len, const char *sig, size_t sig_len, time_t now,
    time_t tolerance);

/* ts NULL: the body alone is signed; else "ts.body" */
optout_wh_rc_t optout_wh_hmac_verify(optout_mac_t *mac, const char *ts,
    size_t ts_len, const unsigned char *body, size_t body_len,
    const char *sig, size_t sig_len, time_t now, time_t tolerance);

/* strict parsers, exported for the fuzzer */
int optout_wh_base64_decode(const char *in, size_t len, unsigned char *out,
    size_t out_size, size_t *out_len);
optout_wh_rc_t optout_wh_timestamp(const char *ts, size_t len, time_t now,
    time_t tolerance);


#endif /* _OPTOUT_WEBHOOK_H_INCLUDED_ */
