
/*
 * memcached on the event loop, as memcached_pass does its round trip: no
 * thread hop.  Each worker keeps keepalive connections to each server
 * (ngx_event_connect_peer()); a "get" goes out on one of them and its
 * answer is parsed as it comes.  libmemcached never does I/O here: a
 * memcached_st of the optout_store string names the servers and places
 * the keys (memcached_generate_hash(): the client's hash and
 * distribution), and its namespace prefixes every key on the wire.
 */


#include "ngx_http_optout_mc.h"


#define NGX_HTTP_OPTOUT_MC_BUF      4096
#define NGX_HTTP_OPTOUT_MC_IDLE     64

#define NGX_HTTP_OPTOUT_MC_LINE     0
#define NGX_HTTP_OPTOUT_MC_DATA     1
#define NGX_HTTP_OPTOUT_MC_SKIP     2


typedef struct {
    ngx_http_optout_mc_addr_t   *addr;
    ngx_uint_t                   cur;       /* the address that answered */
    ngx_queue_t                  idle;
    ngx_uint_t                   nidle;
} ngx_http_optout_mc_server_t;


struct ngx_http_optout_mc_s {
    memcached_st                *placer;
    ngx_log_t                   *log;
    ngx_msec_t                   timeout;
    ngx_uint_t                   nservers;
    size_t                       ns_len;
    u_char                       ns[MEMCACHED_MAX_NAMESPACE];
    optout_markers_t             markers;
    ngx_http_optout_mc_server_t  server[OPTOUT_MARKERS_MAX];
};


/* a connection to one server, idle or serving one get */

typedef struct {
    ngx_queue_t                  queue;
    ngx_connection_t            *connection;
    ngx_http_optout_mc_t        *mc;
    ngx_http_optout_mc_get_t    *get;
    ngx_uint_t                   server;
    u_char                      *pos;
    u_char                      *last;
    u_char                       buf[NGX_HTTP_OPTOUT_MC_BUF];
} ngx_http_optout_mc_conn_t;


static void ngx_http_optout_mc_start(ngx_http_optout_mc_get_t *get);
static ngx_int_t ngx_http_optout_mc_connect(ngx_http_optout_mc_get_t *get);
static void ngx_http_optout_mc_write(ngx_event_t *wev);
static void ngx_http_optout_mc_wait(ngx_http_optout_mc_get_t *get,
    ngx_event_t *rev);
static void ngx_http_optout_mc_read(ngx_event_t *rev);
static ngx_int_t ngx_http_optout_mc_parse(ngx_http_optout_mc_get_t *get);
static ngx_int_t ngx_http_optout_mc_value(ngx_http_optout_mc_get_t *get,
    u_char *p, u_char *last);
static void ngx_http_optout_mc_done(ngx_http_optout_mc_get_t *get,
    memcached_return_t rc);
static void ngx_http_optout_mc_keep(ngx_http_optout_mc_conn_t *conn);
static void ngx_http_optout_mc_idle(ngx_event_t *ev);
static void ngx_http_optout_mc_close(ngx_http_optout_mc_conn_t *conn);


ngx_http_optout_mc_t *
ngx_http_optout_mc_create(ngx_cycle_t *cycle, ngx_str_t *conf,
    ngx_str_t *prefix, ngx_msec_t timeout, ngx_array_t *servers)
{
    void                  *ns;
    ngx_uint_t             i;
    memcached_return_t     rc;
    ngx_http_optout_mc_t  *mc;

    mc = ngx_pcalloc(cycle->pool, sizeof(ngx_http_optout_mc_t));
    if (mc == NULL) {
        return NULL;
    }

    mc->log = cycle->log;
    mc->timeout = timeout;

    mc->placer = memcached((char *) conf->data, conf->len);
    if (mc->placer == NULL) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: memcached(\"%V\") failed", conf);
        return NULL;
    }

    if (optout_mc_tune(mc->placer, timeout) != 0
        || optout_markers(mc->placer, (char *) prefix->data, prefix->len,
                          &mc->markers)
           != OPTOUT_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: cannot place a marker on each of the %uD "
                      "memcached servers (at most %d)",
                      memcached_server_count(mc->placer),
                      OPTOUT_MARKERS_MAX);
        goto failed;
    }

    ns = memcached_callback_get(mc->placer, MEMCACHED_CALLBACK_NAMESPACE,
                                &rc);
    if (ns) {
        mc->ns_len = ngx_strlen(ns);

        if (mc->ns_len > sizeof(mc->ns)) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                          "optout: memcached namespace too long");
            goto failed;
        }

        ngx_memcpy(mc->ns, ns, mc->ns_len);
    }

    mc->nservers = memcached_server_count(mc->placer);

    if (mc->nservers != servers->nelts) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "optout: %ui memcached servers, %ui resolved",
                      mc->nservers, servers->nelts);
        goto failed;
    }

    for (i = 0; i < mc->nservers; i++) {
        mc->server[i].addr = (ngx_http_optout_mc_addr_t *) servers->elts + i;
        ngx_queue_init(&mc->server[i].idle);
    }

    return mc;

failed:

    memcached_free(mc->placer);

    return NULL;
}


/*
 * The servers of a configuration string, resolved when the configuration
 * is loaded, as nginx resolves upstream servers: libmemcached's name and
 * port of each, in libmemcached's order.
 */

ngx_array_t *
ngx_http_optout_mc_resolve(ngx_conf_t *cf, memcached_st *m)
{
    u_char                       *p;
    size_t                        len;
    in_port_t                     port;
    ngx_url_t                     u;
    ngx_uint_t                    i, n;
    const char                   *name;
    ngx_array_t                  *servers;
    ngx_http_optout_mc_addr_t    *a;
    const memcached_instance_st  *in;

    n = memcached_server_count(m);

    servers = ngx_array_create(cf->pool, n ? n : 1,
                               sizeof(ngx_http_optout_mc_addr_t));
    if (servers == NULL) {
        return NULL;
    }

    for (i = 0; i < n; i++) {
        in = memcached_server_instance_by_position(m, i);
        name = memcached_server_name(in);
        port = memcached_server_port(in);

        a = ngx_array_push(servers);
        if (a == NULL) {
            return NULL;
        }

        len = ngx_strlen(name) + sizeof("unix:") + NGX_INT_T_LEN;

        p = ngx_pnalloc(cf->pool, len);
        if (p == NULL) {
            return NULL;
        }

        if (name[0] == '/') {
            a->name.len = ngx_sprintf(p, "unix:%s", name) - p;

        } else if (ngx_strchr(name, ':')) {
            a->name.len = ngx_sprintf(p, "[%s]:%d", name, (int) port) - p;

        } else {
            a->name.len = ngx_sprintf(p, "%s:%d", name, (int) port) - p;
        }

        a->name.data = p;

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = a->name;
        u.default_port = 11211;

        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "memcached server \"%V\": %s", &a->name,
                               u.err ? u.err : "no address");
            return NULL;
        }

        a->addrs = u.addrs;
        a->naddrs = u.naddrs;
    }

    return servers;
}


optout_markers_t *
ngx_http_optout_mc_markers(ngx_http_optout_mc_t *mc)
{
    return &mc->markers;
}


uint32_t
ngx_http_optout_mc_place(ngx_http_optout_mc_t *mc, const char *key,
    size_t len)
{
    return memcached_generate_hash(mc->placer, key, len);
}


ngx_log_t *
ngx_http_optout_mc_log(ngx_http_optout_mc_t *mc)
{
    return mc->log;
}


void
ngx_http_optout_mc_destroy(ngx_http_optout_mc_t *mc)
{
    ngx_uint_t                    i;
    ngx_queue_t                  *q;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    for (i = 0; i < mc->nservers; i++) {
        s = &mc->server[i];

        while (!ngx_queue_empty(&s->idle)) {
            q = ngx_queue_head(&s->idle);
            ngx_queue_remove(q);
            s->nidle--;

            conn = ngx_queue_data(q, ngx_http_optout_mc_conn_t, queue);
            ngx_http_optout_mc_close(conn);
        }
    }

    memcached_free(mc->placer);
}


/*
 * Sends the get and reads its answer; get->handler is called once it
 * ended, perhaps before this function returns.
 */

void
ngx_http_optout_mc_get(ngx_http_optout_mc_get_t *get)
{
    u_char                *p;
    size_t                 len;
    ngx_uint_t             i;
    ngx_http_optout_mc_t  *mc;

    mc = get->mc;

    len = sizeof("get\r\n") - 1;

    for (i = 0; i < get->n; i++) {
        len += 1 + mc->ns_len + get->lens[get->order[i]];
    }

    get->out = ngx_alloc(len, mc->log);
    if (get->out == NULL) {
        ngx_http_optout_mc_done(get, MEMCACHED_MEMORY_ALLOCATION_FAILURE);
        return;
    }

    p = ngx_cpymem(get->out, "get", 3);

    for (i = 0; i < get->n; i++) {
        *p++ = ' ';
        p = ngx_cpymem(p, mc->ns, mc->ns_len);
        p = ngx_cpymem(p, get->keys[get->order[i]],
                       get->lens[get->order[i]]);
    }

    *p++ = CR; *p++ = LF;

    get->out_len = p - get->out;
    get->sent = 0;
    get->next = 0;
    get->state = NGX_HTTP_OPTOUT_MC_LINE;
    get->rc = MEMCACHED_SUCCESS;
    get->conn = NULL;
    get->reused = 0;
    get->received = 0;

    ngx_http_optout_mc_start(get);
}


/* on an idle connection of the server, or a new one */

static void
ngx_http_optout_mc_start(ngx_http_optout_mc_get_t *get)
{
    ngx_queue_t                  *q;
    ngx_connection_t             *c;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    s = &get->mc->server[get->server];

    if (ngx_queue_empty(&s->idle) || get->reused) {
        get->reused = 0;

        if (ngx_http_optout_mc_connect(get) != NGX_OK) {
            return;
        }

        conn = get->conn;
        c = conn->connection;

        if (!c->write->ready) {
            /* connecting */
            ngx_add_timer(c->write, get->mc->timeout);
            return;
        }

    } else {
        q = ngx_queue_head(&s->idle);
        ngx_queue_remove(q);
        s->nidle--;

        conn = ngx_queue_data(q, ngx_http_optout_mc_conn_t, queue);
        conn->get = get;
        get->conn = conn;
        get->reused = 1;

        c = conn->connection;
        c->idle = 0;
        c->read->handler = ngx_http_optout_mc_read;
        c->write->handler = ngx_http_optout_mc_write;
    }

    ngx_http_optout_mc_write(c->write);
}


static ngx_int_t
ngx_http_optout_mc_connect(ngx_http_optout_mc_get_t *get)
{
    ngx_int_t                     rc;
    ngx_uint_t                    i;
    ngx_connection_t             *c;
    ngx_http_optout_mc_t         *mc;
    ngx_peer_connection_t         pc;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    mc = get->mc;
    s = &mc->server[get->server];

    conn = ngx_alloc(sizeof(ngx_http_optout_mc_conn_t), mc->log);
    if (conn == NULL) {
        ngx_http_optout_mc_done(get, MEMCACHED_MEMORY_ALLOCATION_FAILURE);
        return NGX_ERROR;
    }

    /* a name of several addresses: the next one after a refusal */

    for (i = 0; i < s->addr->naddrs; i++) {
        ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

        pc.sockaddr = s->addr->addrs[s->cur].sockaddr;
        pc.socklen = s->addr->addrs[s->cur].socklen;
        pc.name = &s->addr->name;
        pc.get = ngx_event_get_peer;
        pc.log = mc->log;
        pc.log_error = NGX_ERROR_ERR;

        rc = ngx_event_connect_peer(&pc);

        if (rc == NGX_OK || rc == NGX_AGAIN) {
            break;
        }

        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }

        s->cur = (s->cur + 1) % s->addr->naddrs;
    }

    if (i == s->addr->naddrs) {
        ngx_free(conn);
        ngx_http_optout_mc_done(get, MEMCACHED_CONNECTION_FAILURE);
        return NGX_ERROR;
    }

    c = pc.connection;

    conn->connection = c;
    conn->mc = mc;
    conn->get = get;
    conn->server = get->server;
    conn->pos = conn->buf;
    conn->last = conn->buf;

    c->data = conn;
    c->read->handler = ngx_http_optout_mc_read;
    c->write->handler = ngx_http_optout_mc_write;

    get->conn = conn;

    return NGX_OK;
}


static void
ngx_http_optout_mc_write(ngx_event_t *wev)
{
    ssize_t                     n;
    ngx_connection_t           *c;
    ngx_http_optout_mc_get_t   *get;
    ngx_http_optout_mc_conn_t  *conn;

    c = wev->data;
    conn = c->data;
    get = conn->get;

    if (wev->timedout) {
        ngx_http_optout_mc_done(get, MEMCACHED_TIMEOUT);
        return;
    }

    while (get->sent < get->out_len) {
        n = c->send(c, get->out + get->sent, get->out_len - get->sent);

        if (n == NGX_AGAIN) {
            ngx_add_timer(wev, conn->mc->timeout);

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_optout_mc_done(get, MEMCACHED_CONNECTION_FAILURE);
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_optout_mc_done(get, MEMCACHED_WRITE_FAILURE);
            return;
        }

        get->sent += n;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (c->read->ready) {
        ngx_http_optout_mc_read(c->read);
        return;
    }

    ngx_http_optout_mc_wait(get, c->read);
}


/* the reply is not there yet: at most optout_store_timeout for more */

static void
ngx_http_optout_mc_wait(ngx_http_optout_mc_get_t *get, ngx_event_t *rev)
{
    ngx_add_timer(rev, get->mc->timeout);

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_optout_mc_done(get, MEMCACHED_CONNECTION_FAILURE);
    }
}


static void
ngx_http_optout_mc_read(ngx_event_t *rev)
{
    ssize_t                     n;
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_optout_mc_get_t   *get;
    ngx_http_optout_mc_conn_t  *conn;

    c = rev->data;
    conn = c->data;
    get = conn->get;

    if (get->sent < get->out_len) {
        /* the write event goes on */
        return;
    }

    if (rev->timedout) {
        ngx_http_optout_mc_done(get, MEMCACHED_TIMEOUT);
        return;
    }

    for ( ;; ) {
        if (conn->last == conn->buf + NGX_HTTP_OPTOUT_MC_BUF) {
            if (conn->pos == conn->buf) {
                ngx_http_optout_mc_done(get, MEMCACHED_PROTOCOL_ERROR);
                return;
            }

            conn->last = ngx_movemem(conn->buf, conn->pos,
                                     conn->last - conn->pos);
            conn->pos = conn->buf;
        }

        n = c->recv(c, conn->last,
                    conn->buf + NGX_HTTP_OPTOUT_MC_BUF - conn->last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_optout_mc_done(get, n ? MEMCACHED_READ_FAILURE
                                           : MEMCACHED_CONNECTION_FAILURE);
            return;
        }

        get->received = 1;
        conn->last += n;

        rc = ngx_http_optout_mc_parse(get);

        if (rc != NGX_AGAIN) {
            ngx_http_optout_mc_done(get, rc == NGX_OK
                                         ? MEMCACHED_SUCCESS
                                         : MEMCACHED_PROTOCOL_ERROR);
            return;
        }
    }

    ngx_http_optout_mc_wait(get, rev);
}


/*
 * NGX_OK at "END" with nothing after it, NGX_AGAIN for more, NGX_ERROR
 * for anything memcached would not send: an error line, a value of a key
 * not asked for or out of order.
 */

static ngx_int_t
ngx_http_optout_mc_parse(ngx_http_optout_mc_get_t *get)
{
    u_char                     *p, *lf;
    size_t                      n;
    ngx_int_t                   rc;
    ngx_http_optout_mc_conn_t  *conn;

    conn = get->conn;

    for ( ;; ) {
        p = conn->pos;
        n = conn->last - p;

        switch (get->state) {

        case NGX_HTTP_OPTOUT_MC_SKIP:
            n = ngx_min(n, get->rest);
            conn->pos += n;
            get->rest -= n;

            if (get->rest) {
                return NGX_AGAIN;
            }

            get->state = NGX_HTTP_OPTOUT_MC_LINE;
            continue;

        case NGX_HTTP_OPTOUT_MC_DATA:
            if (n < get->rest) {
                return NGX_AGAIN;
            }

            if (p[get->rest - 2] != CR || p[get->rest - 1] != LF) {
                return NGX_ERROR;
            }

            get->found[get->cur] = 1;

            if (get->cur < get->nrules
                && optout_rule_parse((char *) p, get->rest - 2,
                                     &get->rules[get->cur])
                   != OPTOUT_OK)
            {
                /* a rule we cannot read still blocks */
                ngx_memzero(&get->rules[get->cur], sizeof(optout_rule_t));
            }

            conn->pos += get->rest;
            get->state = NGX_HTTP_OPTOUT_MC_LINE;
            continue;

        default: /* NGX_HTTP_OPTOUT_MC_LINE */
            lf = ngx_strlchr(p, conn->last, LF);
            if (lf == NULL) {
                return NGX_AGAIN;
            }

            if (lf == p || lf[-1] != CR) {
                return NGX_ERROR;
            }

            conn->pos = lf + 1;

            if (lf - 1 - p == 3 && ngx_strncmp(p, "END", 3) == 0) {
                return (conn->pos == conn->last) ? NGX_OK : NGX_ERROR;
            }

            rc = ngx_http_optout_mc_value(get, p, lf - 1);
            if (rc != NGX_OK) {
                return rc;
            }
        }
    }
}


/* "VALUE <key> <flags> <bytes>": the key must be one asked for, in order */

static ngx_int_t
ngx_http_optout_mc_value(ngx_http_optout_mc_get_t *get, u_char *p,
    u_char *last)
{
    u_char                *key, *sp;
    size_t                 len;
    uint64_t               bytes;
    ngx_uint_t             j, k;
    ngx_http_optout_mc_t  *mc;

    mc = get->mc;

    if (last - p < 6 || ngx_strncmp(p, "VALUE ", 6) != 0) {
        return NGX_ERROR;
    }

    key = p + 6;

    sp = ngx_strlchr(key, last, ' ');
    if (sp == NULL) {
        return NGX_ERROR;
    }

    len = sp - key;

    if (len < mc->ns_len || ngx_memcmp(key, mc->ns, mc->ns_len) != 0) {
        return NGX_ERROR;
    }

    key += mc->ns_len;
    len -= mc->ns_len;

    for (j = get->next; j < get->n; j++) {
        k = get->order[j];

        if (get->lens[k] == len && ngx_memcmp(get->keys[k], key, len) == 0)
        {
            break;
        }
    }

    if (j == get->n) {
        return NGX_ERROR;
    }

    get->next = j + 1;
    get->cur = get->order[j];

    /* flags, then bytes, then perhaps a cas unique */

    p = sp + 1;

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        return NGX_ERROR;
    }

    p = sp + 1;

    sp = ngx_strlchr(p, last, ' ');
    if (sp == NULL) {
        sp = last;
    }

    if (optout_parse_u64((char *) p, sp - p, 1024 * 1024 * 1024, &bytes)
        != OPTOUT_OK)
    {
        return NGX_ERROR;
    }

    get->rest = bytes + 2;

    if (get->rest > NGX_HTTP_OPTOUT_MC_BUF / 2) {
        /* no rule is that long: it still blocks, unread */
        get->found[get->cur] = 1;
        ngx_memzero(&get->rules[get->cur], sizeof(optout_rule_t));
        get->state = NGX_HTTP_OPTOUT_MC_SKIP;

    } else {
        get->state = NGX_HTTP_OPTOUT_MC_DATA;
    }

    return NGX_OK;
}


/*
 * The get ended.  Its connection goes back to the idle ones only after a
 * clean "END"; after anything else it is closed, so that no late reply is
 * read as the answer to the next get.  A kept connection that the server
 * closed before it answered a byte is retried once on a new one, as
 * nginx's upstreams retry their keepalive connections.
 */

static void
ngx_http_optout_mc_done(ngx_http_optout_mc_get_t *get, memcached_return_t rc)
{
    ngx_http_optout_mc_conn_t  *conn;

    conn = get->conn;

    if (conn) {
        get->conn = NULL;
        conn->get = NULL;

        if (rc == MEMCACHED_SUCCESS) {
            ngx_http_optout_mc_keep(conn);

        } else {
            ngx_http_optout_mc_close(conn);

            if (get->reused && !get->received && rc != MEMCACHED_TIMEOUT) {
                get->sent = 0;
                ngx_http_optout_mc_start(get);
                return;
            }
        }
    }

    get->rc = rc;

    if (get->out) {
        ngx_free(get->out);
        get->out = NULL;
    }

    get->handler(get);
}


static void
ngx_http_optout_mc_keep(ngx_http_optout_mc_conn_t *conn)
{
    ngx_connection_t             *c;
    ngx_http_optout_mc_server_t  *s;

    c = conn->connection;
    s = &conn->mc->server[conn->server];

    if (s->nidle >= NGX_HTTP_OPTOUT_MC_IDLE) {
        ngx_http_optout_mc_close(conn);
        return;
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    conn->pos = conn->buf;
    conn->last = conn->buf;

    c->idle = 1;
    c->read->handler = ngx_http_optout_mc_idle;
    c->write->handler = ngx_http_optout_mc_idle;

    ngx_queue_insert_head(&s->idle, &conn->queue);
    s->nidle++;
}


/*
 * An idle connection is readable: the server closed it, or it is out of
 * step, or the worker is exiting (c->close); as nginx's upstream
 * keepalive does, a spurious event leaves it kept.
 */

static void
ngx_http_optout_mc_idle(ngx_event_t *ev)
{
    char                          buf[1];
    ssize_t                       n;
    ngx_connection_t             *c;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    if (ev->write) {
        return;
    }

    c = ev->data;
    conn = c->data;

    if (!c->close) {
        n = recv(c->fd, buf, 1, MSG_PEEK);

        if (n == -1 && ngx_socket_errno == NGX_EAGAIN) {
            ev->ready = 0;

            if (ngx_handle_read_event(c->read, 0) == NGX_OK) {
                return;
            }
        }
    }

    s = &conn->mc->server[conn->server];

    ngx_queue_remove(&conn->queue);
    s->nidle--;

    ngx_http_optout_mc_close(conn);
}


static void
ngx_http_optout_mc_close(ngx_http_optout_mc_conn_t *conn)
{
    ngx_close_connection(conn->connection);
    ngx_free(conn);
}
