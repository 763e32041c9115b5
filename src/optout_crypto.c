/*
 * HMAC-SHA256 contexts (OpenSSL 3 EVP_MAC), key files and error texts.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "optout_core.h"


struct optout_mac_s {
    EVP_MAC        *mac;
    EVP_MAC_CTX    *ctx;
};


static void optout_err(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));


const char *
optout_strerror(int rc)
{
    switch (rc) {
    case OPTOUT_OK:
        return "ok";
    case OPTOUT_EDEST:
        return "destination is not a valid phone number or email address";
    case OPTOUT_ESENDER:
        return "sender id is not valid";
    case OPTOUT_EMALFORMED:
        return "token is not well formed";
    case OPTOUT_EVERSION:
        return "unknown token version";
    case OPTOUT_EKEY:
        return "unknown key id";
    case OPTOUT_ETAG:
        return "authentication tag mismatch";
    case OPTOUT_ETOOLONG:
        return "input or output too long";
    case OPTOUT_ENAMESPACE:
        return "namespace is not valid";
    case OPTOUT_ECRYPTO:
        return "cryptographic library failure";
    case OPTOUT_EVALUE:
        return "malformed rule value";
    case OPTOUT_EKEYFILE:
        return "key file is not usable";
    default:
        return "unknown error";
    }
}


optout_mac_t *
optout_mac_create(const unsigned char *key, size_t len)
{
    char           digest[] = "SHA256";
    OSSL_PARAM     params[2];
    optout_mac_t  *m;

    if (key == NULL || len == 0) {
        return NULL;
    }

    m = calloc(1, sizeof(optout_mac_t));
    if (m == NULL) {
        return NULL;
    }

    m->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (m->mac == NULL) {
        goto failed;
    }

    m->ctx = EVP_MAC_CTX_new(m->mac);
    if (m->ctx == NULL) {
        goto failed;
    }

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 digest, 0);
    params[1] = OSSL_PARAM_construct_end();

    if (EVP_MAC_init(m->ctx, key, len, params) != 1) {
        goto failed;
    }

    return m;

failed:

    optout_mac_destroy(m);
    return NULL;
}


/* a context of its own for another thread, under the same key */

optout_mac_t *
optout_mac_dup(optout_mac_t *mac)
{
    optout_mac_t  *m;

    m = calloc(1, sizeof(optout_mac_t));
    if (m == NULL) {
        return NULL;
    }

    if (EVP_MAC_up_ref(mac->mac) != 1) {
        free(m);
        return NULL;
    }

    m->mac = mac->mac;

    m->ctx = EVP_MAC_CTX_dup(mac->ctx);
    if (m->ctx == NULL) {
        optout_mac_destroy(m);
        return NULL;
    }

    return m;
}


void
optout_mac_destroy(optout_mac_t *mac)
{
    if (mac == NULL) {
        return;
    }

    EVP_MAC_CTX_free(mac->ctx);
    EVP_MAC_free(mac->mac);
    free(mac);
}


int
optout_mac_compute(optout_mac_t *mac, const unsigned char *data, size_t len,
    unsigned char out[32])
{
    size_t  outl;

    if (mac == NULL || mac->ctx == NULL) {
        return OPTOUT_ECRYPTO;
    }

    /* NULL key: restart with the key given at creation (fast path) */

    if (EVP_MAC_init(mac->ctx, NULL, 0, NULL) != 1) {
        return OPTOUT_ECRYPTO;
    }

    if (len && EVP_MAC_update(mac->ctx, data, len) != 1) {
        return OPTOUT_ECRYPTO;
    }

    if (EVP_MAC_final(mac->ctx, out, &outl, 32) != 1 || outl != 32) {
        return OPTOUT_ECRYPTO;
    }

    return OPTOUT_OK;
}


static void
optout_err(char *err, size_t err_len, const char *fmt, ...)
{
    va_list  args;

    if (err == NULL || err_len == 0) {
        return;
    }

    va_start(args, fmt);
    vsnprintf(err, err_len, fmt, args);
    va_end(args);
}


int
optout_key_load(const char *path, unsigned char *buf, size_t *len, char *err,
    size_t err_len)
{
    int            fd, rc;
    size_t         n;
    ssize_t        r;
    struct stat    st;
    unsigned char  tmp[OPTOUT_KEY_MAX + 256];

    if (err && err_len) {
        err[0] = '\0';
    }

    *len = 0;

    /* O_NONBLOCK: do not hang on a FIFO before fstat() refuses it */

    fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1) {
        optout_err(err, err_len, "cannot open key file \"%s\": %s",
                   path, strerror(errno));
        return OPTOUT_EKEYFILE;
    }

    rc = OPTOUT_EKEYFILE;
    n = 0;

    if (fstat(fd, &st) == -1) {
        optout_err(err, err_len, "cannot stat key file \"%s\": %s",
                   path, strerror(errno));
        goto done;
    }

    if (!S_ISREG(st.st_mode)) {
        optout_err(err, err_len, "key file \"%s\" is not a regular file",
                   path);
        goto done;
    }

    if (st.st_mode & 077) {
        optout_err(err, err_len,
                   "key file \"%s\" is accessible by group or others "
                   "(mode %04o), run \"chmod 600 %s\"",
                   path, (unsigned) (st.st_mode & 07777), path);
        goto done;
    }

    for ( ;; ) {
        if (n == sizeof(tmp)) {
            optout_err(err, err_len,
                       "key file \"%s\" is too large, at most %d bytes "
                       "are allowed", path, OPTOUT_KEY_MAX);
            goto done;
        }

        r = read(fd, tmp + n, sizeof(tmp) - n);

        if (r == -1) {
            if (errno == EINTR) {
                continue;
            }

            optout_err(err, err_len, "cannot read key file \"%s\": %s",
                       path, strerror(errno));
            goto done;
        }

        if (r == 0) {
            break;
        }

        n += r;
    }

    while (n && (tmp[n - 1] == '\n' || tmp[n - 1] == '\r')) {
        n--;
    }

    if (n < OPTOUT_KEY_MIN) {
        optout_err(err, err_len,
                   "key file \"%s\" holds %zu bytes, at least %d are required",
                   path, n, OPTOUT_KEY_MIN);
        goto done;
    }

    if (n > OPTOUT_KEY_MAX) {
        optout_err(err, err_len,
                   "key file \"%s\" holds %zu bytes, at most %d are allowed",
                   path, n, OPTOUT_KEY_MAX);
        goto done;
    }

    memcpy(buf, tmp, n);
    *len = n;
    rc = OPTOUT_OK;

done:

    OPENSSL_cleanse(tmp, sizeof(tmp));
    close(fd);

    return rc;
}
