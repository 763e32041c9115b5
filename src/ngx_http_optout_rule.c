
/*
 * The one write path of rules: record opt-outs and opt-ins.  Their lines
 * go to the journal first (one group write, fdatasync()ed), then to
 * memcached in one thread task; a recorded opt-out is cached at once, a
 * recorded opt-in leaves the pending set at once and the cache once
 * memcached dropped the rule, so this node answers it at once.  A store
 * write that fails is the journal applier's: an opt-out joins the pending
 * set meanwhile, an opt-in keeps blocking until the applier deletes it.
 * Links, the management API and inbound keywords record through here.
 */


#include "ngx_http_optout_module.h"


static void ngx_http_optout_rule_journaled(ngx_http_optout_waiter_t *w);
static void ngx_http_optout_rule_stored(ngx_http_optout_waiter_t *w);
static void ngx_http_optout_rule_finish(ngx_http_optout_record_t *rec);


ngx_int_t
ngx_http_optout_rule_key(ngx_http_request_t *r, ngx_str_t *ns,
    const char *sender, size_t sender_len, optout_dest_t *dest, u_char *key,
    size_t *key_len)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    if (optout_store_key(omcf->store_mac, (char *) omcf->store_prefix.data,
                         omcf->store_prefix.len, (char *) ns->data, ns->len,
                         sender, sender_len, dest, (char *) key, key_len)
        != OPTOUT_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "optout: cannot derive the store key");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* who recorded it: the client address, and $remote_user when set */

void
ngx_http_optout_rule_who(ngx_http_request_t *r, optout_journal_rec_t *rec)
{
    rec->client = (char *) r->connection->addr_text.data;
    rec->client_len = r->connection->addr_text.len;
    rec->user = NULL;
    rec->user_len = 0;

    if (r->headers_in.user.len == 0) {
        (void) ngx_http_auth_basic_user(r);
    }

    if (r->headers_in.user.len) {
        rec->user = (char *) r->headers_in.user.data;
        rec->user_len = r->headers_in.user.len;
    }
}


/*
 * NGX_OK: rec->handler will be called from the event loop once the
 * journal and the store are done (rec->rc says whether the journal took
 * the lines), unless the request was terminated meanwhile; the request
 * is held until then.  NGX_ERROR: nothing was recorded.
 */

ngx_int_t
ngx_http_optout_rule_record(ngx_http_optout_record_t *rec)
{
    ngx_http_request_t           *r;
    ngx_http_optout_main_conf_t  *omcf;

    r = rec->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    rec->rc = NGX_ERROR;
    rec->journal_waiter.handler = ngx_http_optout_rule_journaled;
    rec->journal_waiter.data = rec;
    rec->store_waiter.handler = ngx_http_optout_rule_stored;
    rec->store_waiter.data = rec;

    if (ngx_http_optout_journal_append(omcf->journal, rec->lines, rec->len,
                                       &rec->journal_waiter)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_optout_hold(r, &rec->hold);

    return NGX_OK;
}


static void
ngx_http_optout_rule_journaled(ngx_http_optout_waiter_t *w)
{
    ngx_http_optout_record_t *rec = w->data;

    ngx_int_t                     rc;
    ngx_uint_t                    i, passing;
    ngx_http_request_t           *r;
    ngx_http_optout_change_t     *ch;
    ngx_http_optout_main_conf_t  *omcf;

    if (w->rc != NGX_OK) {
        ngx_http_optout_rule_finish(rec);
        return;
    }

    rec->rc = NGX_OK;

    r = rec->request;
    omcf = ngx_http_get_module_main_conf(r, ngx_http_optout_module);

    /*
     * A pass of the applier that read the journal before these lines may
     * delete a rule after the store write below: the opt-outs answer from
     * the pending set until a pass that starts later has applied them.
     */

    passing = ngx_http_optout_pending_passing(omcf->pending);

    for (i = 0; i < rec->n; i++) {
        ch = &rec->changes[i];

        if (ch->optin) {
            ngx_http_optout_pending_remove(omcf->pending, ch->key,
                                           ch->key_len);

        } else {
            ngx_http_optout_cache_rule(r, ch->key, ch->key_len, &ch->rule);

            if (passing) {
                (void) ngx_http_optout_pending_add(omcf->pending, ch->key,
                                                   ch->key_len, &ch->rule,
                                                   r->connection->log);
            }
        }
    }

    rc = ngx_http_optout_store_write(r, omcf->store, rec->changes, rec->n,
                                     &rec->store_waiter);

    if (rc != NGX_OK) {
        for (i = 0; i < rec->n; i++) {
            rec->changes[i].stored = 0;
        }

        rec->store_waiter.rc = NGX_DECLINED;
        ngx_http_optout_rule_stored(&rec->store_waiter);
    }
}


static void
ngx_http_optout_rule_stored(ngx_http_optout_waiter_t *w)
{
    ngx_http_optout_record_t *rec = w->data;

    ngx_uint_t                    i, failed;
    ngx_log_t                    *log;
    ngx_http_optout_change_t     *ch;
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_get_module_main_conf(rec->request,
                                         ngx_http_optout_module);
    log = rec->request->connection->log;
    failed = 0;

    for (i = 0; i < rec->n; i++) {
        ch = &rec->changes[i];

        if (!ch->stored) {
            failed = 1;
        }

        if (ch->optin) {
            if (omcf->cache) {
                ngx_http_optout_cache_remove(omcf->cache, ch->key,
                                             ch->key_len);
            }

            continue;
        }

        /* recorded, but not in memcached: never "allowed" meanwhile */

        if (!ch->stored) {
            (void) ngx_http_optout_pending_add(omcf->pending, ch->key,
                                               ch->key_len, &ch->rule, log);
        }
    }

    if (failed) {
        ngx_http_optout_pending_kick(omcf->pending);
    }

    ngx_http_optout_rule_finish(rec);
}


static void
ngx_http_optout_rule_finish(ngx_http_optout_record_t *rec)
{
    if (ngx_http_optout_resume(rec->request, &rec->hold) == NGX_DONE) {
        return;
    }

    rec->handler(rec);
}
