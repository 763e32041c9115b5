
/*
 * The multi-get with markers, on the event loop, as memcached_pass does
 * its round trip: no thread hop.  Each server of a multi-get gets one
 * "get" of its keys and then its marker, on a keepalive connection of the
 * worker; its answer is read as it comes.  libmemcached never does I/O
 * here: a memcached_st of the same configuration string places the keys
 * (memcached_generate_hash(): the client's hash and distribution) and
 * names the servers; its namespace prefixes every key on the wire.
 */


#include "ngx_http_optout_mget.h"


#define NGX_HTTP_OPTOUT_MC_BUF      4096
#define NGX_HTTP_OPTOUT_MC_IDLE     64
#define NGX_HTTP_OPTOUT_MC_KEY_MAX  250     /* memcached's text protocol */

#define NGX_HTTP_OPTOUT_MC_LINE     0
#define NGX_HTTP_OPTOUT_MC_DATA     1
#define NGX_HTTP_OPTOUT_MC_SKIP     2


typedef struct {
    ngx_addr_t                  *addrs;
    ngx_uint_t                   naddrs;
    ngx_str_t                    name;
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


/* a connection to one server, idle or serving one op */

typedef struct {
    ngx_queue_t                  queue;
    ngx_connection_t            *connection;
    ngx_http_optout_mc_t        *mc;
    ngx_http_optout_mc_op_t     *op;
    ngx_uint_t                   server;
    u_char                      *pos;
    u_char                      *last;
    u_char                       buf[NGX_HTTP_OPTOUT_MC_BUF];
} ngx_http_optout_mc_conn_t;


/* a multi-get of a caller's keys (repeats allowed), in one allocation */

typedef struct {
    ngx_http_optout_mget_t       mget;
    ngx_uint_t                   n;
    ngx_uint_t                  *index;
    u_char                      *found;
    optout_rule_t               *rules;
    ngx_http_optout_keys_pt      handler;
    void                        *data;
} ngx_http_optout_mget_keys_t;


/* one server's part of a multi-get */

struct ngx_http_optout_mc_op_s {
    ngx_http_optout_mget_t      *mget;
    ngx_http_optout_mc_conn_t   *conn;
    ngx_uint_t                   server;
    ngx_uint_t                  *order;     /* key indices, marker last */
    ngx_uint_t                   n;
    ngx_uint_t                   next;      /* in order[] */
    ngx_uint_t                   state;
    ngx_uint_t                   cur;       /* the key of a value */
    size_t                       rest;      /* of a value, CRLF included */
    u_char                      *out;
    size_t                       out_len;
    size_t                       sent;
};


static ngx_int_t ngx_http_optout_mc_servers(ngx_http_optout_mc_t *mc,
    ngx_cycle_t *cycle);
static ngx_int_t ngx_http_optout_mget_place(ngx_http_optout_mc_t *mc,
    ngx_http_optout_mget_t *mg);
static ngx_int_t ngx_http_optout_mget_ops(ngx_http_optout_mc_t *mc,
    ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mc_op_start(ngx_http_optout_mc_op_t *op);
static ngx_int_t ngx_http_optout_mc_connect(ngx_http_optout_mc_op_t *op);
static void ngx_http_optout_mc_write(ngx_event_t *wev);
static void ngx_http_optout_mc_read(ngx_event_t *rev);
static ngx_int_t ngx_http_optout_mc_parse(ngx_http_optout_mc_op_t *op);
static ngx_int_t ngx_http_optout_mc_line(ngx_http_optout_mc_op_t *op,
    u_char *p, u_char *last);
static void ngx_http_optout_mc_op_done(ngx_http_optout_mc_op_t *op,
    memcached_return_t rc);
static void ngx_http_optout_mc_idle(ngx_event_t *ev);
static void ngx_http_optout_mc_close(ngx_http_optout_mc_conn_t *conn);
static void ngx_http_optout_mget_end(ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mget_finish(ngx_http_optout_mget_t *mg);
static void ngx_http_optout_mget_posted(ngx_event_t *ev);
static void ngx_http_optout_mget_keys_done(ngx_http_optout_mget_t *mg);


ngx_http_optout_mc_t *
ngx_http_optout_mc_create(ngx_cycle_t *cycle, ngx_str_t *conf,
    ngx_str_t *prefix, ngx_msec_t timeout)
{
    void                  *ns;
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
            goto failed;
        }

        ngx_memcpy(mc->ns, ns, mc->ns_len);
    }

    if (ngx_http_optout_mc_servers(mc, cycle) != NGX_OK) {
        goto failed;
    }

    return mc;

failed:

    memcached_free(mc->placer);

    return NULL;
}


/* the servers' addresses, resolved as nginx resolves upstream servers */

static ngx_int_t
ngx_http_optout_mc_servers(ngx_http_optout_mc_t *mc, ngx_cycle_t *cycle)
{
    u_char                        *p;
    size_t                         len;
    in_port_t                      port;
    ngx_url_t                      u;
    ngx_uint_t                     i;
    const char                    *name;
    ngx_http_optout_mc_server_t   *s;
    const memcached_instance_st   *in;

    mc->nservers = memcached_server_count(mc->placer);

    for (i = 0; i < mc->nservers; i++) {
        in = memcached_server_instance_by_position(mc->placer, i);
        name = memcached_server_name(in);
        port = memcached_server_port(in);

        len = ngx_strlen(name) + sizeof("unix:") + NGX_INT_T_LEN;

        p = ngx_pnalloc(cycle->pool, len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        s = &mc->server[i];

        if (name[0] == '/') {
            s->name.len = ngx_sprintf(p, "unix:%s", name) - p;

        } else {
            s->name.len = ngx_sprintf(p, "%s:%d", name, (int) port) - p;
        }

        s->name.data = p;

        ngx_memzero(&u, sizeof(ngx_url_t));

        u.url = s->name;
        u.default_port = 11211;

        if (ngx_parse_url(cycle->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                          "optout: memcached server \"%V\": %s",
                          &s->name, u.err ? u.err : "no address");
            return NGX_ERROR;
        }

        s->addrs = u.addrs;
        s->naddrs = u.naddrs;

        ngx_queue_init(&s->idle);
    }

    return NGX_OK;
}


optout_markers_t *
ngx_http_optout_mc_markers(ngx_http_optout_mc_t *mc)
{
    return &mc->markers;
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


void
ngx_http_optout_mget_init(ngx_http_optout_mget_t *mg)
{
    ngx_memzero(mg->hash, (mg->mask + 1) * sizeof(uint32_t));
    ngx_memzero(mg->answered, sizeof(mg->answered));

    mg->nkeys = 0;
    mg->total = 0;
    mg->rc = MEMCACHED_SUCCESS;
}


/* adds a key once; *index is where its answer will be */

ngx_int_t
ngx_http_optout_mget_add(ngx_http_optout_mget_t *mg, const char *key,
    size_t len, ngx_uint_t *index)
{
    uint32_t    h;
    ngx_uint_t  i;
    char       *p;

    h = ngx_http_optout_mget_find(mg, key, len);

    if (mg->hash[h]) {
        *index = mg->hash[h] - 1;
        return NGX_OK;
    }

    if (mg->total == mg->max || len > OPTOUT_STORE_KEY_MAX) {
        return NGX_ERROR;
    }

    i = mg->total++;

    if (mg->data) {
        p = mg->data + i * (OPTOUT_STORE_KEY_MAX + 1);
        ngx_memcpy(p, key, len);
        p[len] = '\0';
        key = p;
    }

    mg->keys[i] = key;
    mg->lens[i] = len;
    mg->found[i] = 0;
    mg->hash[h] = (uint32_t) (i + 1);

    *index = i;

    return NGX_OK;
}


/* the slot of a key in hash[]: its own, or the free one it would take */

ngx_uint_t
ngx_http_optout_mget_find(ngx_http_optout_mget_t *mg, const char *key,
    size_t len)
{
    uint32_t     h;
    ngx_uint_t   i;
    const char  *p;

    /* FNV-1a; keys end in hex digits of a keyed hash */

    h = 2166136261u;

    for (p = key; p < key + len; p++) {
        h ^= (u_char) *p;
        h *= 16777619u;
    }

    /* linear probing; the table is at least twice the number of keys */

    for (h &= mg->mask; mg->hash[h]; h = (h + 1) & mg->mask) {
        i = mg->hash[h] - 1;

        if (mg->lens[i] == len && ngx_memcmp(mg->keys[i], key, len) == 0) {
            break;
        }
    }

    return h;
}


/*
 * NGX_OK: the key's server answered completely; NGX_ERROR: it did not,
 * after a failure; NGX_DECLINED: it ended cleanly without its marker.
 */

ngx_int_t
ngx_http_optout_mget_answer(ngx_http_optout_mget_t *mg, ngx_uint_t i)
{
    uint32_t  s;

    s = mg->server[i];

    if (i < mg->nkeys && s < OPTOUT_MARKERS_MAX && mg->answered[s]) {
        return NGX_OK;
    }

    return (mg->rc == MEMCACHED_SUCCESS) ? NGX_DECLINED : NGX_ERROR;
}


/*
 * Asks for the keys and, after them, the marker of each server that holds
 * one; sets found[], rules[], answered[] and rc, then calls mg->handler,
 * never before it returns.  The callers keep room for the markers.
 */

void
ngx_http_optout_mget_run(ngx_http_optout_mc_t *mc, ngx_http_optout_mget_t *mg)
{
    ngx_uint_t                i, nops;
    ngx_http_optout_mc_op_t  *ops;

    mg->mc = mc;
    mg->block = NULL;
    mg->running = 1;     /* until this function ends */

    if (ngx_http_optout_mget_place(mc, mg) != NGX_OK
        || ngx_http_optout_mget_ops(mc, mg) != NGX_OK)
    {
        mg->rc = MEMCACHED_MEMORY_ALLOCATION_FAILURE;
        mg->running = 1;
    }

    ops = mg->block;
    nops = mg->running - 1;

    for (i = 0; i < nops; i++) {
        ngx_http_optout_mc_op_start(&ops[i]);
    }

    if (--mg->running == 0) {
        /* every server's part ended already: the handler runs later */
        mg->event.handler = ngx_http_optout_mget_posted;
        mg->event.data = mg;
        mg->event.log = mc->log;

        ngx_post_event(&mg->event, &ngx_posted_events);
    }
}


static ngx_int_t
ngx_http_optout_mget_place(ngx_http_optout_mc_t *mc,
    ngx_http_optout_mget_t *mg)
{
    uint32_t           s;
    ngx_uint_t         i;
    optout_markers_t  *m;

    m = &mc->markers;
    mg->nkeys = mg->total;

    for (i = 0; i < m->n; i++) {
        mg->marker[i] = NGX_CONF_UNSET_UINT;
    }

    for (i = 0; i < mg->nkeys; i++) {
        s = memcached_generate_hash(mc->placer, mg->keys[i], mg->lens[i]);

        if (s >= m->n) {
            return NGX_ERROR;
        }

        mg->server[i] = s;

        if (mg->marker[s] == NGX_CONF_UNSET_UINT) {
            if (ngx_http_optout_mget_add(mg, m->key[s], m->len[s],
                                         &mg->marker[s])
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            mg->server[mg->marker[s]] = s;
        }
    }

    return NGX_OK;
}


/*
 * One block: an op for each server asked, the key indices grouped by
 * server (a marker's index is above every key's, so it comes last), and
 * each server's "get" line.
 */

static ngx_int_t
ngx_http_optout_mget_ops(ngx_http_optout_mc_t *mc,
    ngx_http_optout_mget_t *mg)
{
    u_char                   *p;
    size_t                    size, out;
    uint32_t                  s;
    ngx_uint_t                i, nops, *order, count[OPTOUT_MARKERS_MAX];
    ngx_http_optout_mc_op_t  *ops, *op, *of[OPTOUT_MARKERS_MAX];

    nops = 0;
    out = 0;

    for (s = 0; s < mc->markers.n; s++) {
        count[s] = 0;

        if (mg->marker[s] != NGX_CONF_UNSET_UINT) {
            nops++;
            out += sizeof("get\r\n") - 1;
        }
    }

    for (i = 0; i < mg->total; i++) {
        count[mg->server[i]]++;
        out += 1 + mc->ns_len + mg->lens[i];
    }

    size = nops * sizeof(ngx_http_optout_mc_op_t)
           + mg->total * sizeof(ngx_uint_t) + out;

    ops = ngx_alloc(size, mc->log);
    if (ops == NULL) {
        return NGX_ERROR;
    }

    mg->block = ops;

    order = (ngx_uint_t *) (ops + nops);
    p = (u_char *) (order + mg->total);

    op = ops;

    for (s = 0; s < mc->markers.n; s++) {
        of[s] = NULL;

        if (mg->marker[s] == NGX_CONF_UNSET_UINT) {
            continue;
        }

        ngx_memzero(op, sizeof(ngx_http_optout_mc_op_t));

        op->mget = mg;
        op->server = s;
        op->order = order;
        order += count[s];

        of[s] = op++;
    }

    for (i = 0; i < mg->total; i++) {
        op = of[mg->server[i]];
        op->order[op->n++] = i;
    }

    for (op = ops; op < ops + nops; op++) {
        op->out = p;
        p = ngx_cpymem(p, "get", 3);

        for (i = 0; i < op->n; i++) {
            *p++ = ' ';
            p = ngx_cpymem(p, mc->ns, mc->ns_len);
            p = ngx_cpymem(p, mg->keys[op->order[i]],
                           mg->lens[op->order[i]]);
        }

        *p++ = CR; *p++ = LF;
        op->out_len = p - op->out;
    }

    mg->running += nops;

    return NGX_OK;
}


static void
ngx_http_optout_mc_op_start(ngx_http_optout_mc_op_t *op)
{
    ngx_queue_t                  *q;
    ngx_connection_t             *c;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    s = &op->mget->mc->server[op->server];

    if (ngx_queue_empty(&s->idle)) {
        if (ngx_http_optout_mc_connect(op) != NGX_OK) {
            return;
        }

        c = op->conn->connection;

        if (!c->write->ready) {
            /* connecting */
            ngx_add_timer(c->write, op->mget->mc->timeout);
            return;
        }

    } else {
        q = ngx_queue_head(&s->idle);
        ngx_queue_remove(q);
        s->nidle--;

        conn = ngx_queue_data(q, ngx_http_optout_mc_conn_t, queue);
        conn->op = op;
        op->conn = conn;

        c = conn->connection;
        c->idle = 0;
        c->read->handler = ngx_http_optout_mc_read;
        c->write->handler = ngx_http_optout_mc_write;
    }

    ngx_http_optout_mc_write(op->conn->connection->write);
}


static ngx_int_t
ngx_http_optout_mc_connect(ngx_http_optout_mc_op_t *op)
{
    ngx_int_t                     rc;
    ngx_connection_t             *c;
    ngx_http_optout_mc_t         *mc;
    ngx_peer_connection_t         pc;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    mc = op->mget->mc;
    s = &mc->server[op->server];

    conn = ngx_alloc(sizeof(ngx_http_optout_mc_conn_t), mc->log);
    if (conn == NULL) {
        ngx_http_optout_mc_op_done(op, MEMCACHED_MEMORY_ALLOCATION_FAILURE);
        return NGX_ERROR;
    }

    ngx_memzero(&pc, sizeof(ngx_peer_connection_t));

    pc.sockaddr = s->addrs[0].sockaddr;
    pc.socklen = s->addrs[0].socklen;
    pc.name = &s->name;
    pc.get = ngx_event_get_peer;
    pc.log = mc->log;
    pc.log_error = NGX_ERROR_ERR;

    rc = ngx_event_connect_peer(&pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }

        ngx_free(conn);
        ngx_http_optout_mc_op_done(op, MEMCACHED_CONNECTION_FAILURE);
        return NGX_ERROR;
    }

    c = pc.connection;

    conn->connection = c;
    conn->mc = mc;
    conn->op = op;
    conn->server = op->server;
    conn->pos = conn->buf;
    conn->last = conn->buf;

    c->data = conn;
    c->read->handler = ngx_http_optout_mc_read;
    c->write->handler = ngx_http_optout_mc_write;

    op->conn = conn;

    return NGX_OK;
}


static void
ngx_http_optout_mc_write(ngx_event_t *wev)
{
    ssize_t                     n;
    ngx_connection_t           *c;
    ngx_http_optout_mc_op_t    *op;
    ngx_http_optout_mc_conn_t  *conn;

    c = wev->data;
    conn = c->data;
    op = conn->op;

    if (wev->timedout) {
        ngx_http_optout_mc_op_done(op, MEMCACHED_TIMEOUT);
        return;
    }

    while (op->sent < op->out_len) {
        n = c->send(c, op->out + op->sent, op->out_len - op->sent);

        if (n == NGX_AGAIN) {
            ngx_add_timer(wev, conn->mc->timeout);

            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_optout_mc_op_done(op, MEMCACHED_CONNECTION_FAILURE);
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_optout_mc_op_done(op, MEMCACHED_WRITE_FAILURE);
            return;
        }

        op->sent += n;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    ngx_http_optout_mc_read(c->read);
}


static void
ngx_http_optout_mc_read(ngx_event_t *rev)
{
    ssize_t                     n;
    ngx_int_t                   rc;
    ngx_connection_t           *c;
    ngx_http_optout_mc_op_t    *op;
    ngx_http_optout_mc_conn_t  *conn;

    c = rev->data;
    conn = c->data;
    op = conn->op;

    if (op->sent < op->out_len) {
        /* a read event before the request went out: wait for it */
        return;
    }

    if (rev->timedout) {
        ngx_http_optout_mc_op_done(op, MEMCACHED_TIMEOUT);
        return;
    }

    for ( ;; ) {
        if (conn->last == conn->buf + NGX_HTTP_OPTOUT_MC_BUF) {
            if (conn->pos == conn->buf) {
                ngx_http_optout_mc_op_done(op, MEMCACHED_PROTOCOL_ERROR);
                return;
            }

            conn->last = ngx_movemem(conn->buf, conn->pos,
                                     conn->last - conn->pos);
            conn->pos = conn->buf;
        }

        n = c->recv(c, conn->last, conn->buf + NGX_HTTP_OPTOUT_MC_BUF
                                   - conn->last);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            ngx_http_optout_mc_op_done(op, n ? MEMCACHED_READ_FAILURE
                                             : MEMCACHED_CONNECTION_FAILURE);
            return;
        }

        conn->last += n;

        rc = ngx_http_optout_mc_parse(op);

        if (rc == NGX_OK) {
            ngx_http_optout_mc_op_done(op, MEMCACHED_SUCCESS);
            return;
        }

        if (rc == NGX_ERROR) {
            ngx_http_optout_mc_op_done(op, MEMCACHED_PROTOCOL_ERROR);
            return;
        }
    }

    ngx_add_timer(rev, conn->mc->timeout);

    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_optout_mc_op_done(op, MEMCACHED_CONNECTION_FAILURE);
    }
}


/*
 * NGX_OK at "END" with nothing after it, NGX_AGAIN for more, NGX_ERROR
 * for anything memcached would not send: an error line, a value of a key
 * not asked for or out of order.
 */

static ngx_int_t
ngx_http_optout_mc_parse(ngx_http_optout_mc_op_t *op)
{
    u_char                     *p, *lf;
    size_t                      n;
    ngx_int_t                   rc;
    ngx_http_optout_mget_t     *mg;
    ngx_http_optout_mc_conn_t  *conn;

    conn = op->conn;
    mg = op->mget;

    for ( ;; ) {
        p = conn->pos;
        n = conn->last - p;

        switch (op->state) {

        case NGX_HTTP_OPTOUT_MC_SKIP:
            n = ngx_min(n, op->rest);
            conn->pos += n;
            op->rest -= n;

            if (op->rest) {
                return NGX_AGAIN;
            }

            op->state = NGX_HTTP_OPTOUT_MC_LINE;
            continue;

        case NGX_HTTP_OPTOUT_MC_DATA:
            if (n < op->rest) {
                return NGX_AGAIN;
            }

            if (p[op->rest - 2] != CR || p[op->rest - 1] != LF) {
                return NGX_ERROR;
            }

            mg->found[op->cur] = 1;

            if (op->cur < mg->nkeys
                && optout_rule_parse((char *) p, op->rest - 2,
                                     &mg->rules[op->cur])
                   != OPTOUT_OK)
            {
                /* a rule we cannot read still blocks */
                ngx_memzero(&mg->rules[op->cur], sizeof(optout_rule_t));
            }

            conn->pos += op->rest;
            op->state = NGX_HTTP_OPTOUT_MC_LINE;
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

            rc = ngx_http_optout_mc_line(op, p, lf - 1);
            if (rc != NGX_OK) {
                return rc;
            }
        }
    }
}


/* "VALUE <key> <flags> <bytes>": the key must be one asked for, in order */

static ngx_int_t
ngx_http_optout_mc_line(ngx_http_optout_mc_op_t *op, u_char *p,
    u_char *last)
{
    u_char                  *key, *sp;
    size_t                   len;
    uint64_t                 bytes;
    ngx_uint_t               j, k;
    ngx_http_optout_mc_t    *mc;
    ngx_http_optout_mget_t  *mg;

    mg = op->mget;
    mc = mg->mc;

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

    for (j = op->next; j < op->n; j++) {
        k = op->order[j];

        if (mg->lens[k] == len && ngx_memcmp(mg->keys[k], key, len) == 0) {
            break;
        }
    }

    if (j == op->n) {
        return NGX_ERROR;
    }

    op->next = j + 1;
    op->cur = op->order[j];

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

    op->rest = bytes + 2;

    if (op->rest > NGX_HTTP_OPTOUT_MC_BUF / 2) {
        /* no rule is that long: it still blocks, unread */
        mg->found[op->cur] = 1;
        ngx_memzero(&mg->rules[op->cur], sizeof(optout_rule_t));
        op->state = NGX_HTTP_OPTOUT_MC_SKIP;

    } else {
        op->state = NGX_HTTP_OPTOUT_MC_DATA;
    }

    return NGX_OK;
}


/*
 * A server's part ended: its connection goes back to the idle ones only
 * after a clean "END"; after anything else it is closed, so that no late
 * reply is read as the answer to the next multi-get.
 */

static void
ngx_http_optout_mc_op_done(ngx_http_optout_mc_op_t *op,
    memcached_return_t rc)
{
    ngx_connection_t             *c;
    ngx_http_optout_mget_t       *mg;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    mg = op->mget;
    conn = op->conn;

    mg->answered[op->server] = mg->found[mg->marker[op->server]];

    if (rc != MEMCACHED_SUCCESS && mg->rc == MEMCACHED_SUCCESS) {
        mg->rc = rc;
    }

    if (conn) {
        op->conn = NULL;
        conn->op = NULL;
        c = conn->connection;

        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }

        if (c->write->timer_set) {
            ngx_del_timer(c->write);
        }

        s = &mg->mc->server[conn->server];

        if (rc != MEMCACHED_SUCCESS || s->nidle >= NGX_HTTP_OPTOUT_MC_IDLE) {
            ngx_http_optout_mc_close(conn);

        } else {
            conn->pos = conn->buf;
            conn->last = conn->buf;

            c->idle = 1;
            c->read->handler = ngx_http_optout_mc_idle;
            c->write->handler = ngx_http_optout_mc_idle;

            ngx_queue_insert_head(&s->idle, &conn->queue);
            s->nidle++;
        }
    }

    ngx_http_optout_mget_end(mg);
}


/* an idle connection that is readable was closed or is out of step */

static void
ngx_http_optout_mc_idle(ngx_event_t *ev)
{
    ngx_connection_t             *c;
    ngx_http_optout_mc_conn_t    *conn;
    ngx_http_optout_mc_server_t  *s;

    if (ev->write) {
        return;
    }

    c = ev->data;
    conn = c->data;
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


static void
ngx_http_optout_mget_end(ngx_http_optout_mget_t *mg)
{
    if (--mg->running) {
        return;
    }

    ngx_http_optout_mget_finish(mg);
}


static void
ngx_http_optout_mget_finish(ngx_http_optout_mget_t *mg)
{
    uint32_t  s;

    for (s = 0; s < mg->mc->markers.n; s++) {
        if (mg->marker[s] != NGX_CONF_UNSET_UINT) {
            ngx_http_optout_metric_mget(s, mg->answered[s], mg->rc);
        }
    }

    if (mg->block) {
        ngx_free(mg->block);
        mg->block = NULL;
    }

    mg->handler(mg);
}


static void
ngx_http_optout_mget_posted(ngx_event_t *ev)
{
    ngx_http_optout_mget_finish(ev->data);
}


/*
 * One multi-get with markers of keys[]: found[] and rules[] are set, then
 * handler(data, rc) is called, never before this function returns, with
 * NGX_OK, NGX_ERROR when a server that holds one of the keys failed, or
 * NGX_DECLINED when such a server ended without its marker (not seeded).
 * The arrays stay the caller's and must live until then.  NGX_ERROR: no
 * memory, the handler will not be called.
 */

ngx_int_t
ngx_http_optout_mget_keys(ngx_http_optout_mc_t *mc, const char **keys,
    size_t *lens, ngx_uint_t n, u_char *found, optout_rule_t *rules,
    ngx_http_optout_keys_pt handler, void *data)
{
    u_char                       *p;
    size_t                        size, hash;
    ngx_uint_t                    i, max;
    ngx_http_optout_mget_t       *mg;
    ngx_http_optout_mget_keys_t  *mk;

    max = n + mc->markers.n;

    for (hash = 1; hash < max * 2; hash <<= 1) { /* void */ }

    size = sizeof(ngx_http_optout_mget_keys_t)
           + max * (sizeof(optout_rule_t) + sizeof(char *) + sizeof(size_t)
                    + sizeof(uint32_t) + 1)
           + hash * sizeof(uint32_t) + n * sizeof(ngx_uint_t);

    mk = ngx_alloc(size, mc->log);
    if (mk == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(mk, sizeof(ngx_http_optout_mget_keys_t));

    mg = &mk->mget;
    p = (u_char *) &mk[1];

    mg->rules = (optout_rule_t *) p;
    p += max * sizeof(optout_rule_t);
    mg->keys = (const char **) p;
    p += max * sizeof(char *);
    mg->lens = (size_t *) p;
    p += max * sizeof(size_t);
    mk->index = (ngx_uint_t *) p;
    p += n * sizeof(ngx_uint_t);
    mg->server = (uint32_t *) p;
    p += max * sizeof(uint32_t);
    mg->hash = (uint32_t *) p;
    p += hash * sizeof(uint32_t);
    mg->found = p;

    /* mg->data is NULL: the keys stay the caller's */

    mg->max = max;
    mg->mask = hash - 1;
    mg->handler = ngx_http_optout_mget_keys_done;
    mg->data_ptr = mk;

    mk->n = n;
    mk->found = found;
    mk->rules = rules;
    mk->handler = handler;
    mk->data = data;

    ngx_http_optout_mget_init(mg);

    for (i = 0; i < n; i++) {
        if (ngx_http_optout_mget_add(mg, keys[i], lens[i], &mk->index[i])
            != NGX_OK)
        {
            ngx_free(mk);
            return NGX_ERROR;
        }
    }

    ngx_http_optout_mget_run(mc, mg);

    return NGX_OK;
}


static void
ngx_http_optout_mget_keys_done(ngx_http_optout_mget_t *mg)
{
    ngx_http_optout_mget_keys_t *mk = mg->data_ptr;

    void                     *data;
    ngx_int_t                 rc;
    ngx_uint_t                i, j;
    ngx_http_optout_keys_pt   handler;

    rc = NGX_OK;

    for (i = 0; i < mk->n; i++) {
        j = mk->index[i];

        rc = ngx_http_optout_mget_answer(mg, j);
        if (rc != NGX_OK) {
            break;
        }

        mk->found[i] = mg->found[j];

        if (mg->found[j]) {
            mk->rules[i] = mg->rules[j];
        }
    }

    if (rc != NGX_OK && mg->rc != MEMCACHED_SUCCESS) {
        ngx_log_error(NGX_LOG_ERR, mg->mc->log, 0,
                      "optout: memcached multi-get failed: %s",
                      memcached_strerror(NULL, mg->rc));
    }

    handler = mk->handler;
    data = mk->data;

    ngx_free(mk);

    handler(data, rc);
}
