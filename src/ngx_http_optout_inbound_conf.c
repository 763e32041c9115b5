
/*
 * Directives of inbound keyword locations: the format, the scope, the
 * campaign, and the keyword and reply sets.  optout_keyword,
 * optout_keyword_remove and optout_keyword_reply are kept as a list of
 * operations per level; a level that adds its own replays its parent's
 * list and then its own on a fresh set (optout_keyword.c and
 * optout_inbound.c allocate with malloc(), a pool cleanup frees them),
 * a level without its own shares its parent's set.
 */


#include "ngx_http_optout_inbound.h"


static char *ngx_http_optout_inbound_merge_sets(ngx_conf_t *cf,
    ngx_http_optout_inbound_conf_t *prev,
    ngx_http_optout_inbound_conf_t *conf);
static ngx_uint_t ngx_http_optout_inbound_enum(ngx_str_t *value,
    char **names);
static ngx_int_t ngx_http_optout_kw_op_add(ngx_conf_t *cf,
    ngx_array_t **ops, ngx_uint_t remove, ngx_str_t *value, ngx_uint_t n,
    ngx_uint_t first);
static char *ngx_http_optout_inbound_merge_ops(ngx_conf_t *cf,
    ngx_array_t **ops, ngx_uint_t own, ngx_array_t *prev);
static optout_kw_set_t *ngx_http_optout_kw_build(ngx_conf_t *cf,
    ngx_array_t *ops);
static optout_in_replies_t *ngx_http_optout_replies_build(ngx_conf_t *cf,
    ngx_array_t *ops);
static void ngx_http_optout_kw_cleanup(void *data);
static void ngx_http_optout_replies_cleanup(void *data);


static char  *ngx_http_optout_scopes[] = { "account", "sender", NULL };
static char  *ngx_http_optout_matches[] = { "whole", "first_word", NULL };


ngx_http_optout_inbound_conf_t *
ngx_http_optout_inbound_create_conf(ngx_conf_t *cf)
{
    ngx_http_optout_inbound_conf_t  *icf;

    icf = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_inbound_conf_t));
    if (icf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     icf->kw_ops = NULL;
     *     icf->reply_ops = NULL;
     *     icf->own_kw = 0;
     *     icf->own_reply = 0;
     *     icf->kw = NULL;
     *     icf->replies = NULL;
     */

    icf->enable = NGX_CONF_UNSET;
    icf->format = NGX_CONF_UNSET_UINT;
    icf->scope = NGX_CONF_UNSET_UINT;
    icf->match = NGX_CONF_UNSET_UINT;
    icf->campaign = NGX_CONF_UNSET_PTR;
    icf->verify = NGX_CONF_UNSET_PTR;

    return icf;
}


char *
ngx_http_optout_inbound_merge_conf(ngx_conf_t *cf,
    ngx_http_optout_inbound_conf_t *prev,
    ngx_http_optout_inbound_conf_t *conf)
{
    ngx_http_core_loc_conf_t     *clcf;
    ngx_http_optout_main_conf_t  *omcf;

    /* a nested location is not an endpoint of its own, "if" is */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (conf->enable == NGX_CONF_UNSET) {
        conf->enable = (clcf->noname && prev->enable == 1);
    }

    ngx_conf_merge_uint_value(conf->format, prev->format, OPTOUT_IN_GENERIC);
    ngx_conf_merge_uint_value(conf->scope, prev->scope,
                              NGX_HTTP_OPTOUT_SCOPE_ACCOUNT);
    ngx_conf_merge_uint_value(conf->match, prev->match, OPTOUT_KW_WHOLE);
    ngx_conf_merge_ptr_value(conf->campaign, prev->campaign, NULL);
    ngx_conf_merge_ptr_value(conf->verify, prev->verify, NGX_CONF_UNSET_PTR);

    if (ngx_http_optout_inbound_merge_sets(cf, prev, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (!conf->enable) {
        return NGX_CONF_OK;
    }

    /* an "if" block names the location's line */

    if (conf->file == NULL) {
        conf->file = prev->file;
        conf->line = prev->line;
    }

    if (conf->verify == NGX_CONF_UNSET_PTR) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "optout_inbound_verify is not set; use \"off\" to "
                      "accept unsigned webhooks in %s:%ui",
                      conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_optout_module);

    if (omcf->store_conf.len == 0 || omcf->store_mac == NULL
        || omcf->journal_file == NULL)
    {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"optout_inbound\" requires \"optout_store\", "
                      "\"optout_store_secret\" and \"optout_journal\" in "
                      "%s:%ui", conf->file, conf->line);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* sets are built where a level adds to them, or where they are used */

static char *
ngx_http_optout_inbound_merge_sets(ngx_conf_t *cf,
    ngx_http_optout_inbound_conf_t *prev,
    ngx_http_optout_inbound_conf_t *conf)
{
    if (ngx_http_optout_inbound_merge_ops(cf, &conf->kw_ops, conf->own_kw,
                                          prev->kw_ops)
        != NGX_CONF_OK
        || ngx_http_optout_inbound_merge_ops(cf, &conf->reply_ops,
                                             conf->own_reply, prev->reply_ops)
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->own_kw || (conf->enable && prev->kw == NULL)) {
        conf->kw = ngx_http_optout_kw_build(cf, conf->kw_ops);
        if (conf->kw == NULL) {
            return NGX_CONF_ERROR;
        }

    } else {
        conf->kw = prev->kw;
    }

    if (conf->own_reply || (conf->enable && prev->replies == NULL)) {
        conf->replies = ngx_http_optout_replies_build(cf, conf->reply_ops);
        if (conf->replies == NULL) {
            return NGX_CONF_ERROR;
        }

    } else {
        conf->replies = prev->replies;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_optout_inbound_format(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    int         format;
    ngx_str_t  *value;

    if (olcf->inbound->format != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    format = optout_in_format((char *) value[1].data, value[1].len);

    if (format < 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid format \"%V\" in \"%V\", it must be "
                           "\"generic\", \"twilio\", \"telnyx\" or "
                           "\"infobip\"", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    olcf->inbound->format = format;

    return NGX_CONF_OK;
}


char *
ngx_http_optout_inbound_scope(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t  *value;

    if (olcf->inbound->scope != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    olcf->inbound->scope = ngx_http_optout_inbound_enum(&value[1],
                                                     ngx_http_optout_scopes);

    if (olcf->inbound->scope == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid scope \"%V\" in \"%V\", it must be "
                           "\"account\" or \"sender\"", &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


char *
ngx_http_optout_keyword_match(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t  *value;

    if (olcf->inbound->match != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    olcf->inbound->match = ngx_http_optout_inbound_enum(&value[1],
                                                     ngx_http_optout_matches);

    if (olcf->inbound->match == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid mode \"%V\" in \"%V\", it must be "
                           "\"whole\" or \"first_word\"", &value[1],
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_uint_t
ngx_http_optout_inbound_enum(ngx_str_t *value, char **names)
{
    ngx_uint_t  i;

    for (i = 0; names[i]; i++) {
        if (value->len == ngx_strlen(names[i])
            && ngx_strncmp(value->data, names[i], value->len) == 0)
        {
            return i;
        }
    }

    return NGX_CONF_UNSET_UINT;
}


char *
ngx_http_optout_inbound_campaign(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (olcf->inbound->campaign != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    olcf->inbound->campaign = ngx_palloc(cf->pool,
                                         sizeof(ngx_http_complex_value_t));
    if (olcf->inbound->campaign == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = olcf->inbound->campaign;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* optout_keyword and optout_keyword_remove: OP [country=CC] WORD ... */

char *
ngx_http_optout_keyword(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   i, first, remove;

    value = cf->args->elts;
    remove = (cmd->name.len == sizeof("optout_keyword_remove") - 1);

    first = (value[2].len > 8
             && ngx_strncmp(value[2].data, "country=", 8) == 0) ? 3 : 2;

    if (first == cf->args->nelts) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no keyword in \"%V\"", &cmd->name);
        return NGX_CONF_ERROR;
    }

    for (i = first; i < cf->args->nelts; i++) {
        if (ngx_http_optout_kw_op_add(cf, &olcf->inbound->kw_ops, remove,
                                      value, i, first)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    olcf->inbound->own_kw = 1;

    return NGX_CONF_OK;
}


/* optout_keyword_reply OP [country=CC] TEXT */

char *
ngx_http_optout_keyword_reply(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_optout_loc_conf_t *olcf = conf;

    ngx_str_t   *value;
    ngx_uint_t   first;

    value = cf->args->elts;

    first = (cf->args->nelts == 4) ? 3 : 2;

    if (first == 3
        && (value[2].len <= 8
            || ngx_strncmp(value[2].data, "country=", 8) != 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\" in \"%V\", expected "
                           "\"country=CC\"", &value[2], &cmd->name);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_optout_kw_op_add(cf, &olcf->inbound->reply_ops, 0, value,
                                  first, first)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    olcf->inbound->own_reply = 1;

    return NGX_CONF_OK;
}


/*
 * value[1] is the operation, value[first - 1] "country=CC" when first is
 * 3, value[i] the keyword or the reply; checked when the sets are built
 */

static ngx_int_t
ngx_http_optout_kw_op_add(ngx_conf_t *cf, ngx_array_t **ops,
    ngx_uint_t remove, ngx_str_t *value, ngx_uint_t i, ngx_uint_t first)
{
    int                       op;
    ngx_str_t                *cc;
    ngx_http_optout_kw_op_t  *o;

    op = optout_kw_op((char *) value[1].data, value[1].len);

    if (op <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid operation \"%V\", it must be \"stop\", "
                           "\"start\" or \"help\"", &value[1]);
        return NGX_ERROR;
    }

    if (*ops == NULL) {
        *ops = ngx_array_create(cf->pool, 4,
                                sizeof(ngx_http_optout_kw_op_t));
        if (*ops == NULL) {
            return NGX_ERROR;
        }
    }

    o = ngx_array_push(*ops);
    if (o == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(o, sizeof(ngx_http_optout_kw_op_t));

    o->remove = remove;
    o->op = op;

    if (first == 3) {
        cc = &value[2];

        if (cc->len != 10) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid country \"%s\" (ISO 3166-1 alpha-2 "
                               "expected)", cc->data + 8);
            return NGX_ERROR;
        }

        o->country[0] = cc->data[8];
        o->country[1] = cc->data[9];
    }

    /* NUL-terminated copies: the sets keep C strings */

    o->text.len = value[i].len;
    o->text.data = ngx_pnalloc(cf->pool, value[i].len + 1);
    if (o->text.data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(o->text.data, value[i].data, value[i].len);
    o->text.data[o->text.len] = '\0';

    o->file = cf->conf_file->file.name.data;
    o->line = cf->conf_file->line;

    return NGX_OK;
}


/* the parent's operations, then this level's own */

static char *
ngx_http_optout_inbound_merge_ops(ngx_conf_t *cf, ngx_array_t **ops,
    ngx_uint_t own, ngx_array_t *prev)
{
    ngx_array_t  *all;

    if (!own) {
        *ops = prev;
        return NGX_CONF_OK;
    }

    if (prev == NULL || prev->nelts == 0) {
        return NGX_CONF_OK;
    }

    all = ngx_array_create(cf->pool, prev->nelts + (*ops)->nelts,
                           sizeof(ngx_http_optout_kw_op_t));
    if (all == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(all->elts, prev->elts,
               prev->nelts * sizeof(ngx_http_optout_kw_op_t));
    ngx_memcpy((u_char *) all->elts
               + prev->nelts * sizeof(ngx_http_optout_kw_op_t),
               (*ops)->elts, (*ops)->nelts * sizeof(ngx_http_optout_kw_op_t));

    all->nelts = prev->nelts + (*ops)->nelts;
    *ops = all;

    return NGX_CONF_OK;
}


static optout_kw_set_t *
ngx_http_optout_kw_build(ngx_conf_t *cf, ngx_array_t *ops)
{
    int                       rc;
    char                      err[256];
    ngx_uint_t                i;
    optout_kw_set_t          *set;
    ngx_pool_cleanup_t       *cln;
    ngx_http_optout_kw_op_t  *o;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    set = optout_kw_set_create();
    if (set == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "no memory for the keyword set");
        return NULL;
    }

    cln->handler = ngx_http_optout_kw_cleanup;
    cln->data = set;

    if (ops == NULL) {
        return set;
    }

    o = ops->elts;

    for (i = 0; i < ops->nelts; i++) {
        if (o[i].remove) {
            rc = optout_kw_remove(set, o[i].op, (char *) o[i].country,
                                  (char *) o[i].text.data, o[i].text.len,
                                  err, sizeof(err));

        } else {
            rc = optout_kw_add(set, o[i].op, (char *) o[i].country,
                               (char *) o[i].text.data, o[i].text.len,
                               err, sizeof(err));
        }

        if (rc != 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "%s in \"%s\" in %s:%ui", err,
                          o[i].remove ? "optout_keyword_remove"
                                      : "optout_keyword",
                          o[i].file, o[i].line);
            return NULL;
        }
    }

    return set;
}


static optout_in_replies_t *
ngx_http_optout_replies_build(ngx_conf_t *cf, ngx_array_t *ops)
{
    char                      err[256];
    ngx_uint_t                i;
    ngx_pool_cleanup_t       *cln;
    optout_in_replies_t      *replies;
    ngx_http_optout_kw_op_t  *o;

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        return NULL;
    }

    replies = optout_in_replies_create();
    if (replies == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "no memory for the replies");
        return NULL;
    }

    cln->handler = ngx_http_optout_replies_cleanup;
    cln->data = replies;

    if (ops == NULL) {
        return replies;
    }

    o = ops->elts;

    for (i = 0; i < ops->nelts; i++) {
        if (optout_in_replies_set(replies, o[i].op, (char *) o[i].country,
                                  (char *) o[i].text.data, o[i].text.len,
                                  err, sizeof(err))
            != 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "%s in \"optout_keyword_reply\" in %s:%ui", err,
                          o[i].file, o[i].line);
            return NULL;
        }
    }

    return replies;
}


static void
ngx_http_optout_kw_cleanup(void *data)
{
    optout_kw_set_free(data);
}


static void
ngx_http_optout_replies_cleanup(void *data)
{
    optout_in_replies_free(data);
}
