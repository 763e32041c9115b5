
/*
 * ngx_http_optout_module: directives, configuration and process hooks.
 */


#include "ngx_http_optout_module.h"

#include <openssl/crypto.h>


static ngx_int_t ngx_http_optout_preconfiguration(ngx_conf_t *cf);
static void *ngx_http_optout_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_optout_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_optout_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_optout_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_optout_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_optout_store_secret(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_optout_store_prefix(ngx_conf_t *cf, void *post,
    void *data);
static optout_mac_t *ngx_http_optout_load_key(ngx_conf_t *cf,
    ngx_str_t *file);
static void ngx_http_optout_mac_cleanup(void *data);
static ngx_int_t ngx_http_optout_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_optout_init_process(ngx_cycle_t *cycle);
static void ngx_http_optout_exit_process(ngx_cycle_t *cycle);


static ngx_conf_post_handler_pt  ngx_http_optout_store_prefix_p =
    ngx_http_optout_store_prefix;


static ngx_conf_num_bounds_t  ngx_http_optout_check_concurrency_bounds = {
    ngx_conf_check_num_bounds, 1, 64
};


static ngx_conf_enum_t  ngx_http_optout_check_fail[] = {
    { ngx_string("closed"), NGX_HTTP_OPTOUT_FAIL_CLOSED },
    { ngx_string("open"), NGX_HTTP_OPTOUT_FAIL_OPEN },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_optout_commands[] = {

    { ngx_string("optout_store"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_optout_store_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_store_secret"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_store_secret,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_store_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_optout_main_conf_t, store_prefix),
      &ngx_http_optout_store_prefix_p },

    { ngx_string("optout_store_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_optout_main_conf_t, store_timeout),
      NULL },

    { ngx_string("optout_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_optout_main_conf_t, thread_pool_name),
      NULL },

    { ngx_string("optout_secret"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_optout_secret,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_journal"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_journal_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_cache"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE123,
      ngx_http_optout_cache_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_namespace"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, namespace),
      NULL },

    { ngx_string("optout_link"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_optout_link,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_link_confirm_page"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_page_set,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, confirm_page),
      NULL },

    { ngx_string("optout_link_done_page"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_page_set,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, done_page),
      NULL },

    { ngx_string("optout_check"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_optout_check,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_optout_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_check_destination"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_optout_input_set,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, check_destination),
      NULL },

    { ngx_string("optout_check_sender"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_optout_input_set,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, check_sender),
      NULL },

    { ngx_string("optout_check_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, check_timeout),
      NULL },

    { ngx_string("optout_check_fail"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_optout_loc_conf_t, check_fail),
      &ngx_http_optout_check_fail },

    { ngx_string("optout_check_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_optout_main_conf_t, check_concurrency),
      &ngx_http_optout_check_concurrency_bounds },

    { ngx_string("optout_batch_concurrency"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_batch_concurrency_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_batch_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_optout_batch_queue_conf,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_optout_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_inbound"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_optout_inbound,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_inbound_format"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_inbound_format,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_inbound_verify"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_optout_inbound_verify_conf,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_inbound_scope"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_inbound_scope,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_inbound_campaign"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_inbound_campaign,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_keyword"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_optout_keyword,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_keyword_remove"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_2MORE,
      ngx_http_optout_keyword,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_keyword_match"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_optout_keyword_match,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_keyword_reply"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE23,
      ngx_http_optout_keyword_reply,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("optout_batch_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_optout_main_conf_t, batch_thread_pool_name),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_optout_module_ctx = {
    ngx_http_optout_preconfiguration,      /* preconfiguration */
    ngx_http_optout_inbound_init,          /* postconfiguration */

    ngx_http_optout_create_main_conf,      /* create main configuration */
    ngx_http_optout_init_main_conf,        /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_optout_create_loc_conf,       /* create location configuration */
    ngx_http_optout_merge_loc_conf         /* merge location configuration */
};


ngx_module_t  ngx_http_optout_module = {
    NGX_MODULE_V1,
    &ngx_http_optout_module_ctx,           /* module context */
    ngx_http_optout_commands,              /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_optout_init_module,           /* init module */
    ngx_http_optout_init_process,          /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_optout_exit_process,          /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_optout_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_optout_add_variables(cf);
}


static void *
ngx_http_optout_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_main_conf_t));
    if (omcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     omcf->store_conf = { 0, NULL };
     *     omcf->store_servers = NULL;
     *     omcf->store_prefix = { 0, NULL };
     *     omcf->thread_pool_name = { 0, NULL };
     *     omcf->keys = NULL;
     *     omcf->store_mac = NULL;
     *     omcf->store_secret_file = { 0, NULL };
     *     omcf->journal_file = NULL;
     *     omcf->thread_pool = NULL;
     *     omcf->cache = NULL;
     *     omcf->pending = NULL;
     *     omcf->applier = NULL;
     *     omcf->metrics = NULL;
     *     omcf->store = NULL;
     *     omcf->journal = NULL;
     *     omcf->batch_thread_pool_name = { 0, NULL };
     *     omcf->batch_thread_pool = NULL;
     *     omcf->batch_running = 0;
     *     omcf->batch_nwaiting = 0;
     */

    omcf->store_timeout = NGX_CONF_UNSET_MSEC;
    omcf->check_concurrency = NGX_CONF_UNSET;
    omcf->batch_concurrency = NGX_CONF_UNSET_UINT;
    omcf->batch_queue = NGX_CONF_UNSET_UINT;
    omcf->batch_queue_timeout = NGX_CONF_UNSET_MSEC;

    return omcf;
}


static char *
ngx_http_optout_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    if (omcf->store_prefix.data == NULL) {
        ngx_str_set(&omcf->store_prefix, "optout:");
    }

    ngx_conf_init_msec_value(omcf->store_timeout, 200);
    ngx_conf_init_value(omcf->check_concurrency, 4);

    if (omcf->thread_pool_name.data == NULL) {
        ngx_str_set(&omcf->thread_pool_name, "default");
    }

    if (omcf->store_conf.len || omcf->journal_file) {
        omcf->thread_pool = ngx_thread_pool_add(cf, &omcf->thread_pool_name);
        if (omcf->thread_pool == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (ngx_http_optout_metrics_conf(cf, omcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    /* what the journal records, the applier brings to the store */

    if (omcf->journal_file && omcf->store_conf.len && omcf->store_mac
        && ngx_http_optout_pending_conf(cf, omcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return ngx_http_optout_batch_init_main_conf(cf, omcf);
}


static void *
ngx_http_optout_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_optout_loc_conf_t  *olcf;

    olcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_optout_loc_conf_t));
    if (olcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     olcf->confirm_page = NULL;
     *     olcf->done_page = NULL;
     *     olcf->api_destination = NULL;
     *     olcf->api_sender = NULL;
     */

    olcf->link = NGX_CONF_UNSET;
    olcf->check = NGX_CONF_UNSET;
    olcf->api = NGX_CONF_UNSET;
    olcf->namespace = NGX_CONF_UNSET_PTR;
    olcf->check_destination = NGX_CONF_UNSET_PTR;
    olcf->check_sender = NGX_CONF_UNSET_PTR;
    olcf->check_timeout = NGX_CONF_UNSET_MSEC;
    olcf->check_fail = NGX_CONF_UNSET_UINT;

    olcf->inbound = ngx_http_optout_inbound_create_conf(cf);
    if (olcf->inbound == NULL) {
        return NULL;
    }

    return olcf;
}


static char *
ngx_http_optout_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_optout_loc_conf_t *prev = parent;
    ngx_http_optout_loc_conf_t *conf = child;

    ngx_http_optout_main_conf_t  *omcf;

    ngx_conf_merge_value(conf->link, prev->link, 0);
    ngx_conf_merge_value(conf->check, prev->check, 0);
    ngx_conf_merge_value(conf->api, prev->api, 0);
    ngx_conf_merge_ptr_value(conf->namespace, prev->namespace, NULL);
    ngx_conf_merge_ptr_value(conf->check_destination,
                             prev->check_destination, NULL);
    ngx_conf_merge_ptr_value(conf->check_sender, prev->check_sender, NULL);
    ngx_conf_merge_msec_value(conf->check_timeout, prev->check_timeout, 100);
    ngx_conf_merge_uint_value(conf->check_fail, prev->check_fail,
                              NGX_HTTP_OPTOUT_FAIL_CLOSED);

    if (conf->check && ngx_http_optout_check_merge(cf, conf) != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->api && ngx_http_optout_api_merge(cf, conf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (ngx_http_optout_inbound_merge_conf(cf, prev->inbound, conf->inbound)
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (conf->confirm_page == NULL) {
        conf->confirm_page = prev->confirm_page;
    }

    if (conf->done_page == NULL) {
        conf->done_page = prev->done_page;
    }

    if (!conf->link) {
        return NGX_CONF_OK;
    }

    omcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_optout_module);

    if (omcf->keys == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_link\" requires \"optout_secret\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->store_conf.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_link\" requires \"optout_store\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->store_mac == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_link\" requires \"optout_store_secret\"");
        return NGX_CONF_ERROR;
    }

    if (omcf->journal_file == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"optout_link\" requires \"optout_journal\"");
        return NGX_CONF_ERROR;
    }

    if (conf->confirm_page == NULL) {
        conf->confirm_page = ngx_http_optout_page_default(cf, 0);
        if (conf->confirm_page == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (conf->done_page == NULL) {
        conf->done_page = ngx_http_optout_page_default(cf, 1);
        if (conf->done_page == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_optout_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    ngx_int_t      id;
    ngx_str_t     *value;
    ngx_uint_t     i;
    optout_key_t  *key;

    value = cf->args->elts;

    id = ngx_atoi(value[1].data, value[1].len);
    if (id < 1 || id > OPTOUT_KEY_ID_MAX) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid key id \"%V\" in \"%V\", "
                           "it must be 1 to %d",
                           &value[1], &cmd->name, OPTOUT_KEY_ID_MAX);
        return NGX_CONF_ERROR;
    }

    if (omcf->keys == NULL) {
        omcf->keys = ngx_array_create(cf->pool, 2, sizeof(optout_key_t));
        if (omcf->keys == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    key = omcf->keys->elts;
    for (i = 0; i < omcf->keys->nelts; i++) {
        if (key[i].id == (unsigned) id) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "duplicate key id %i in \"%V\"",
                               id, &cmd->name);
            return NGX_CONF_ERROR;
        }
    }

    key = ngx_array_push(omcf->keys);
    if (key == NULL) {
        return NGX_CONF_ERROR;
    }

    key->id = (unsigned) id;
    key->mac = ngx_http_optout_load_key(cf, &value[2]);
    if (key->mac == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_optout_store_secret(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_optout_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->store_mac) {
        return "is duplicate";
    }

    value = cf->args->elts;

    omcf->store_mac = ngx_http_optout_load_key(cf, &value[1]);
    if (omcf->store_mac == NULL) {
        return NGX_CONF_ERROR;
    }

    omcf->store_secret_file = value[1];

    return NGX_CONF_OK;
}


static char *
ngx_http_optout_store_prefix(ngx_conf_t *cf, void *post, void *data)
{
    ngx_str_t  *prefix = data;

    u_char  *p;

    if (prefix->len > OPTOUT_PREFIX_MAX) {
        return "is too long, at most 64 characters";
    }

    for (p = prefix->data; p < prefix->data + prefix->len; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            return "must hold printable characters other than space only";
        }
    }

    return NGX_CONF_OK;
}


static optout_mac_t *
ngx_http_optout_load_key(ngx_conf_t *cf, ngx_str_t *file)
{
    char                 err[NGX_MAX_ERROR_STR];
    size_t               len;
    ngx_str_t            name;
    optout_mac_t        *mac;
    ngx_pool_cleanup_t  *cln;
    u_char               buf[OPTOUT_KEY_MAX];

    name = *file;

    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NULL;
    }

    /* ngx_conf_full_name() leaves the name null-terminated */

    if (optout_key_load((char *) name.data, buf, &len, err, sizeof(err))
        != OPTOUT_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NULL;
    }

    mac = optout_mac_create(buf, len);
    OPENSSL_cleanse(buf, sizeof(buf));

    if (mac == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot create HMAC-SHA256 for key file \"%V\"",
                           &name);
        return NULL;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        optout_mac_destroy(mac);
        return NULL;
    }

    cln->handler = ngx_http_optout_mac_cleanup;
    cln->data = mac;

    return mac;
}


static void
ngx_http_optout_mac_cleanup(void *data)
{
    optout_mac_destroy(data);
}


static ngx_int_t
ngx_http_optout_init_module(ngx_cycle_t *cycle)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_optout_module);
    if (omcf == NULL || omcf->journal_file == NULL) {
        return NGX_OK;
    }

    if (ngx_http_optout_journal_init_module(cycle, omcf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_optout_applier_init_module(cycle, omcf);
}


static ngx_int_t
ngx_http_optout_init_process(ngx_cycle_t *cycle)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_optout_module);
    if (omcf == NULL || omcf->thread_pool == NULL) {
        return NGX_OK;
    }

    omcf->thread_pool = ngx_thread_pool_get(cycle, &omcf->thread_pool_name);
    if (omcf->thread_pool == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: thread pool \"%V\" not found",
                      &omcf->thread_pool_name);
        return NGX_ERROR;
    }

    if (omcf->store_conf.len
        && ngx_http_optout_store_init_worker(cycle, omcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (omcf->journal_file
        && ngx_http_optout_journal_init_worker(cycle, omcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (omcf->applier && omcf->store
        && ngx_http_optout_applier_init_worker(cycle, omcf) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_optout_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_optout_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_optout_module);
    if (omcf == NULL) {
        return;
    }

    if (omcf->applier) {
        ngx_http_optout_applier_exit_worker(cycle, omcf);
    }

    if (omcf->journal) {
        ngx_http_optout_journal_exit_worker(cycle, omcf);
    }

    if (omcf->store) {
        ngx_http_optout_store_exit_worker(cycle, omcf);
    }
}


