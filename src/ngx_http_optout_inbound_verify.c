
/*
 * optout_inbound_verify: the webhook signature schemes (optout_webhook.c)
 * on nginx.  Keys are read when the configuration is, so that nginx -t
 * names a missing or unusable file; a request is verified on the event
 * loop (one HMAC or one Ed25519 verification) before anything else.
 */


#include "ngx_http_optout_inbound.h"

#include <openssl/crypto.h>


#define NGX_HTTP_OPTOUT_FORM_PARAMS  256


static char *ngx_http_optout_verify_params(ngx_conf_t *cf,
    ngx_http_optout_verify_t *v, ngx_str_t *value, ngx_uint_t n);
static char *ngx_http_optout_verify_url(ngx_conf_t *cf,
    ngx_http_optout_verify_t *v, ngx_str_t *url);
static ngx_int_t ngx_http_optout_verify_key(ngx_conf_t *cf,
    ngx_http_optout_verify_t *v, ngx_str_t *file);
static void ngx_http_optout_verify_cleanup(void *data);
static ngx_str_t *ngx_http_optout_verify_header(ngx_http_request_t *r,
    ngx_str_t *name);
static optout_wh_rc_t ngx_http_optout_verify_twilio(ngx_http_request_t *r,
    ngx_http_optout_verify_t *v, ngx_str_t *body);


static ngx_str_t  ngx_http_optout_twilio_url =
    ngx_string("$scheme://$host$request_uri");
static ngx_str_t  ngx_http_optout_twilio_header =
    ngx_string("X-Twilio-Signature");
static ngx_str_t  ngx_http_optout_telnyx_header =
    ngx_string("telnyx-signature-ed25519");
static ngx_str_t  ngx_http_optout_telnyx_timestamp =
    ngx_string("telnyx-timestamp");


char *
ngx_http_optout_inbound_verify_conf(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t                 *value;
    ngx_http_optout_verify_t  *v;

    if (olcf->inbound->verify != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        if (cf->args->nelts != 2) {
            return "takes no parameters with \"off\"";
        }

        olcf->inbound->verify = NULL;
        return NGX_CONF_OK;
    }

    v = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_verify_t));
    if (v == NULL) {
        return NGX_CONF_ERROR;
    }

    v->tolerance = OPTOUT_WH_TOLERANCE;

    if (ngx_strcmp(value[1].data, "twilio") == 0) {
        v->scheme = NGX_HTTP_OPTOUT_VERIFY_TWILIO;

    } else if (ngx_strcmp(value[1].data, "telnyx") == 0) {
        v->scheme = NGX_HTTP_OPTOUT_VERIFY_TELNYX;

    } else if (ngx_strcmp(value[1].data, "hmac") == 0) {
        v->scheme = NGX_HTTP_OPTOUT_VERIFY_HMAC;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid scheme \"%V\" in \"%V\", it must be "
                           "\"off\", \"twilio\", \"telnyx\" or \"hmac\"",
                           &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (cf->args->nelts < 3) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V %V\" needs a key file", &cmd->name,
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_optout_verify_params(cf, v, value, cf->args->nelts)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_optout_verify_key(cf, v, &value[2]) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    olcf->inbound->verify = v;

    return NGX_CONF_OK;
}


static char *
ngx_http_optout_verify_params(ngx_conf_t *cf, ngx_http_optout_verify_t *v,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_str_t   s, url;
    ngx_int_t   t;
    ngx_uint_t  i;

    url = ngx_http_optout_twilio_url;

    for (i = 3; i < n; i++) {

        if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_TWILIO
            && ngx_strncmp(value[i].data, "url=", 4) == 0)
        {
            url.data = value[i].data + 4;
            url.len = value[i].len - 4;
            continue;
        }

        if (v->scheme != NGX_HTTP_OPTOUT_VERIFY_TWILIO
            && ngx_strncmp(value[i].data, "tolerance=", 10) == 0)
        {
            s.data = value[i].data + 10;
            s.len = value[i].len - 10;

            t = ngx_parse_time(&s, 1);
            if (t == NGX_ERROR || t == 0) {
                goto invalid;
            }

            v->tolerance = t;
            continue;
        }

        if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_HMAC
            && ngx_strncmp(value[i].data, "header=", 7) == 0
            && value[i].len > 7)
        {
            v->header.data = value[i].data + 7;
            v->header.len = value[i].len - 7;
            continue;
        }

        if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_HMAC
            && ngx_strncmp(value[i].data, "timestamp=", 10) == 0
            && value[i].len > 10)
        {
            v->timestamp.data = value[i].data + 10;
            v->timestamp.len = value[i].len - 10;
            continue;
        }

        goto invalid;
    }

    if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_HMAC && v->header.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_inbound_verify hmac\" needs "
                           "\"header=NAME\"");
        return NGX_CONF_ERROR;
    }

    if (v->scheme != NGX_HTTP_OPTOUT_VERIFY_TWILIO) {
        return NGX_CONF_OK;
    }

    return ngx_http_optout_verify_url(cf, v, &url);

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid parameter \"%V\" in "
                       "\"optout_inbound_verify\"", &value[i]);
    return NGX_CONF_ERROR;
}


static char *
ngx_http_optout_verify_url(ngx_conf_t *cf, ngx_http_optout_verify_t *v,
    ngx_str_t *url)
{
    ngx_http_compile_complex_value_t  ccv;

    v->url = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (v->url == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = url;
    ccv.complex_value = v->url;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* Twilio's auth token and HMAC keys are secrets (mode 600), see key_load */

static ngx_int_t
ngx_http_optout_verify_key(ngx_conf_t *cf, ngx_http_optout_verify_t *v,
    ngx_str_t *file)
{
    char                 err[NGX_MAX_ERROR_STR];
    size_t               len;
    ngx_str_t            name;
    ngx_pool_cleanup_t  *cln;
    u_char               buf[OPTOUT_KEY_MAX];

    name = *file;

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_optout_verify_cleanup;
    cln->data = v;

    if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_TELNYX) {
        v->pkey = optout_wh_pkey_load((char *) name.data, err, sizeof(err));
        if (v->pkey == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (optout_key_load((char *) name.data, buf, &len, err, sizeof(err))
        != OPTOUT_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_ERROR;
    }

    if (v->scheme == NGX_HTTP_OPTOUT_VERIFY_HMAC) {
        v->mac = optout_mac_create(buf, len);
        OPENSSL_cleanse(buf, sizeof(buf));

        if (v->mac == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cannot create HMAC-SHA256 for key file "
                               "\"%V\"", &name);
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    v->token = ngx_pnalloc(cf->pool, len);
    if (v->token == NULL) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return NGX_ERROR;
    }

    ngx_memcpy(v->token, buf, len);
    v->token_len = len;
    OPENSSL_cleanse(buf, sizeof(buf));

    return NGX_OK;
}


static void
ngx_http_optout_verify_cleanup(void *data)
{
    ngx_http_optout_verify_t *v = data;

    if (v->pkey) {
        optout_wh_pkey_free(v->pkey);
    }

    if (v->mac) {
        optout_mac_destroy(v->mac);
    }

    if (v->token) {
        OPENSSL_cleanse(v->token, v->token_len);
    }
}


optout_wh_rc_t
ngx_http_optout_inbound_verify(ngx_http_request_t *r,
    ngx_http_optout_verify_t *v, ngx_str_t *body)
{
    ngx_str_t  *sig, *ts;

    switch (v->scheme) {

    case NGX_HTTP_OPTOUT_VERIFY_TWILIO:
        return ngx_http_optout_verify_twilio(r, v, body);

    case NGX_HTTP_OPTOUT_VERIFY_TELNYX:
        sig = ngx_http_optout_verify_header(r, &ngx_http_optout_telnyx_header);
        ts = ngx_http_optout_verify_header(r,
                                           &ngx_http_optout_telnyx_timestamp);

        if (sig == NULL || ts == NULL) {
            return OPTOUT_WH_MISSING;
        }

        return optout_wh_telnyx_verify(v->pkey, (char *) ts->data, ts->len,
                                       body->data, body->len,
                                       (char *) sig->data, sig->len,
                                       ngx_time(), v->tolerance);

    default: /* NGX_HTTP_OPTOUT_VERIFY_HMAC */
        sig = ngx_http_optout_verify_header(r, &v->header);
        if (sig == NULL) {
            return OPTOUT_WH_MISSING;
        }

        ts = NULL;

        if (v->timestamp.len) {
            ts = ngx_http_optout_verify_header(r, &v->timestamp);
            if (ts == NULL) {
                return OPTOUT_WH_MISSING;
            }
        }

        return optout_wh_hmac_verify(v->mac, ts ? (char *) ts->data : NULL,
                                     ts ? ts->len : 0, body->data, body->len,
                                     (char *) sig->data, sig->len,
                                     ngx_time(), v->tolerance);
    }
}


/* a JSON body signs the URL with its bodySHA256, a form its parameters */

static optout_wh_rc_t
ngx_http_optout_verify_twilio(ngx_http_request_t *r,
    ngx_http_optout_verify_t *v, ngx_str_t *body)
{
    size_t              n;
    u_char             *buf;
    ngx_str_t           url, *sig, *ct;
    optout_wh_rc_t      rc;
    optout_wh_param_t  *params;

    sig = ngx_http_optout_verify_header(r, &ngx_http_optout_twilio_header);
    if (sig == NULL) {
        return OPTOUT_WH_MISSING;
    }

    if (ngx_http_complex_value(r, v->url, &url) != NGX_OK) {
        return OPTOUT_WH_ERROR;
    }

    ct = r->headers_in.content_type ? &r->headers_in.content_type->value
                                    : NULL;

    if (ct && ct->len >= 16
        && ngx_strncasecmp(ct->data, (u_char *) "application/json", 16) == 0)
    {
        return optout_wh_twilio_verify_body(v->token, v->token_len,
                                            (char *) url.data, url.len,
                                            body->data, body->len,
                                            (char *) sig->data, sig->len);
    }

    buf = ngx_pnalloc(r->pool, body->len + 1);
    params = ngx_palloc(r->pool, NGX_HTTP_OPTOUT_FORM_PARAMS
                                 * sizeof(optout_wh_param_t));

    if (buf == NULL || params == NULL) {
        return OPTOUT_WH_ERROR;
    }

    rc = optout_wh_form_decode((char *) body->data, body->len, (char *) buf,
                               params, NGX_HTTP_OPTOUT_FORM_PARAMS, &n);
    if (rc != OPTOUT_WH_OK) {
        return rc;
    }

    return optout_wh_twilio_verify(v->token, v->token_len, (char *) url.data,
                                   url.len, params, n, (char *) sig->data,
                                   sig->len);
}


static ngx_str_t *
ngx_http_optout_verify_header(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == name->len
            && ngx_strncasecmp(h[i].key.data, name->data, name->len) == 0)
        {
            return &h[i].value;
        }
    }
}
