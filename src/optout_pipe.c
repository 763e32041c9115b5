/*
 * Pipelined writes to memcached: a batch of add, set and delete commands
 * is written to a server at once and its replies are read back, one per
 * command, each checked.  One round trip a batch instead of one a key;
 * libmemcached's own buffered mode throws the replies away.
 *
 * Keys go to the server libmemcached's distribution chooses
 * (memcached_generate_hash()), with libmemcached's --NAMESPACE in front,
 * as its own add/set/delete would.  The text protocol is spoken whatever
 * the configuration says: memcached accepts either on any connection.
 */

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "optout_pipe.h"


#define OPTOUT_PIPE_CHUNK    (64 * 1024)       /* sent once this is queued */
#define OPTOUT_PIPE_OUT      (256 * 1024)
#define OPTOUT_PIPE_IN       65536


typedef struct {
    int                      fd;
    char                     name[300];        /* host:port, for messages */
    const char              *host;
    in_port_t                port;
    unsigned                 unix_socket;
    char                    *out;
    size_t                   out_len;
    size_t                   out_sent;
    uint64_t                 pending;          /* replies owed */
    size_t                   in_start;
    size_t                   in_len;
    char                     in[OPTOUT_PIPE_IN];
} optout_pipe_server_t;


struct optout_pipe_s {
    memcached_st            *mc;
    unsigned                 timeout_ms;
    unsigned                 n;
    const char              *ns;               /* libmemcached --NAMESPACE */
    size_t                   ns_len;
    optout_pipe_server_t    *servers;
    optout_pipe_counts_t     counts;
};


static int optout_pipe_connect(optout_pipe_t *p, optout_pipe_server_t *s,
    char *err, size_t err_len);
static int optout_pipe_socket(optout_pipe_t *p, int family, int type,
    int proto);
static int optout_pipe_send(optout_pipe_t *p, optout_pipe_server_t *s,
    unsigned all, char *err, size_t err_len);
static int optout_pipe_recv(optout_pipe_t *p, optout_pipe_server_t *s,
    char *err, size_t err_len);
static int optout_pipe_reply(optout_pipe_t *p, optout_pipe_server_t *s,
    const char *line, size_t len, char *err, size_t err_len);


static inline char *
optout_pipe_cpy(char *dst, const char *src, size_t n)
{
    return (char *) memcpy(dst, src, n) + n;
}


optout_pipe_t *
optout_pipe_create(memcached_st *mc, unsigned timeout_ms, char *err,
    size_t err_len)
{
    unsigned                    i;
    const char                 *type, *ns;
    optout_pipe_t              *p;
    memcached_return_t          rc;
    optout_pipe_server_t       *s;
    const memcached_instance_st  *inst;

    p = calloc(1, sizeof(optout_pipe_t));
    if (p == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }

    p->mc = mc;
    p->timeout_ms = timeout_ms;
    p->n = memcached_server_count(mc);
    p->servers = calloc(p->n ? p->n : 1, sizeof(optout_pipe_server_t));

    if (p->servers == NULL) {
        snprintf(err, err_len, "out of memory");
        free(p);
        return NULL;
    }

    ns = (const char *) memcached_callback_get(mc,
                                               MEMCACHED_CALLBACK_NAMESPACE,
                                               &rc);

    if (rc == MEMCACHED_SUCCESS && ns != NULL) {
        p->ns = ns;
        p->ns_len = strlen(ns);
    }

    for (i = 0; i < p->n; i++) {
        s = &p->servers[i];
        s->fd = -1;

        inst = memcached_server_instance_by_position(mc, i);
        type = memcached_server_type(inst);

        s->host = memcached_server_name(inst);
        s->port = memcached_server_port(inst);
        s->unix_socket = (type != NULL && strcmp(type, "SOCKET") == 0);

        if (s->unix_socket) {
            snprintf(s->name, sizeof(s->name), "%s", s->host);

        } else {
            snprintf(s->name, sizeof(s->name), "%s:%u", s->host,
                     (unsigned) s->port);
        }

        if (type != NULL && strcmp(type, "UDP") == 0) {
            snprintf(err, err_len, "%s: UDP servers are not supported",
                     s->name);
            optout_pipe_destroy(p);
            return NULL;
        }

        s->out = malloc(OPTOUT_PIPE_OUT);

        if (s->out == NULL) {
            snprintf(err, err_len, "out of memory");
            optout_pipe_destroy(p);
            return NULL;
        }
    }

    return p;
}


static int
optout_pipe_socket(optout_pipe_t *p, int family, int type, int proto)
{
    int             fd, one;
    struct timeval  tv;

    fd = socket(family, type | SOCK_CLOEXEC, proto);
    if (fd == -1) {
        return -1;
    }

    tv.tv_sec = p->timeout_ms / 1000;
    tv.tv_usec = (p->timeout_ms % 1000) * 1000;
    one = 1;

    /* on Linux the send timeout bounds connect() too */

    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1
        || setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == -1
        || (family != AF_UNIX
            && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
               == -1))
    {
        (void) close(fd);
        return -1;
    }

    return fd;
}


static int
optout_pipe_connect(optout_pipe_t *p, optout_pipe_server_t *s, char *err,
    size_t err_len)
{
    int                  rc, fd;
    char                 port[16];
    struct addrinfo      hints, *res, *ai;
    struct sockaddr_un   sun;

    if (s->unix_socket) {
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;

        if (strlen(s->host) >= sizeof(sun.sun_path)) {
            snprintf(err, err_len, "%s: path too long", s->name);
            return -1;
        }

        strcpy(sun.sun_path, s->host);

        fd = optout_pipe_socket(p, AF_UNIX, SOCK_STREAM, 0);

        if (fd == -1 || connect(fd, (struct sockaddr *) &sun, sizeof(sun))
                        == -1)
        {
            snprintf(err, err_len, "%s: %s", s->name, strerror(errno));

            if (fd != -1) {
                (void) close(fd);
            }

            return -1;
        }

        s->fd = fd;
        return 0;
    }

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%u", (unsigned) s->port);

    rc = getaddrinfo(s->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, err_len, "%s: %s", s->name, gai_strerror(rc));
        return -1;
    }

    snprintf(err, err_len, "%s: no address", s->name);

    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = optout_pipe_socket(p, ai->ai_family, ai->ai_socktype,
                                ai->ai_protocol);

        if (fd != -1 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            s->fd = fd;
            break;
        }

        snprintf(err, err_len, "%s: %s", s->name,
                 errno == EINPROGRESS ? "connection timed out"
                                      : strerror(errno));

        if (fd != -1) {
            (void) close(fd);
        }
    }

    freeaddrinfo(res);

    return (s->fd == -1) ? -1 : 0;
}


int
optout_pipe_write(optout_pipe_t *p, unsigned op, const char *key,
    size_t key_len, const char *value, size_t value_len, char *err,
    size_t err_len)
{
    char                  *o, num[24];
    size_t                 k, n;
    uint32_t               i;
    optout_pipe_server_t  *s;

    static const char  *cmds[] = { "add ", "set ", "delete " };

    if (p->n == 0) {
        snprintf(err, err_len, "no memcached server");
        return -1;
    }

    if (p->ns_len + key_len + value_len + 64 > OPTOUT_PIPE_OUT) {
        snprintf(err, err_len, "command too long");
        return -1;
    }

    i = memcached_generate_hash(p->mc, key, key_len);
    s = &p->servers[i < p->n ? i : 0];

    if (s->out_len >= OPTOUT_PIPE_CHUNK
        || OPTOUT_PIPE_OUT - s->out_len < p->ns_len + key_len + value_len
                                          + 64)
    {
        if (optout_pipe_send(p, s, 0, err, err_len) != 0) {
            return -1;
        }
    }

    o = s->out + s->out_len;
    o = optout_pipe_cpy(o, cmds[op], strlen(cmds[op]));
    o = optout_pipe_cpy(o, p->ns, p->ns_len);
    o = optout_pipe_cpy(o, key, key_len);

    if (op != OPTOUT_PIPE_DELETE) {
        n = value_len;
        k = sizeof(num);

        do {
            num[--k] = (char) ('0' + n % 10);
            n /= 10;
        } while (n);

        o = optout_pipe_cpy(o, " 0 0 ", 5);
        o = optout_pipe_cpy(o, num + k, sizeof(num) - k);
        o = optout_pipe_cpy(o, "\r\n", 2);
        o = optout_pipe_cpy(o, value, value_len);
    }

    o = optout_pipe_cpy(o, "\r\n", 2);

    s->out_len = (size_t) (o - s->out);
    s->pending++;

    return 0;
}


/*
 * Sends what is queued for a server; with all, also reads every reply
 * owed.  Replies are read whenever they arrive, also while sending, so
 * neither side ever waits for the other to read: memcached works on one
 * batch while the next is being formatted.
 */

static int
optout_pipe_send(optout_pipe_t *p, optout_pipe_server_t *s, unsigned all,
    char *err, size_t err_len)
{
    int            rc, moved;
    ssize_t        n;
    struct pollfd  pfd;

    if (s->fd == -1) {
        if (s->pending == 0) {
            return 0;
        }

        if (optout_pipe_connect(p, s, err, err_len) != 0) {
            return -1;
        }
    }

    while (s->out_sent < s->out_len || (all && s->pending > 0)) {
        moved = 0;

        if (s->out_sent < s->out_len) {
            n = send(s->fd, s->out + s->out_sent, s->out_len - s->out_sent,
                     MSG_NOSIGNAL | MSG_DONTWAIT);

            if (n > 0) {
                s->out_sent += (size_t) n;
                moved = 1;

            } else if (errno != EAGAIN && errno != EWOULDBLOCK
                       && errno != EINTR)
            {
                snprintf(err, err_len, "%s: %s", s->name, strerror(errno));
                return -1;
            }
        }

        if (s->pending > 0) {
            rc = optout_pipe_recv(p, s, err, err_len);

            if (rc == -1) {
                return -1;
            }

            moved |= rc;
        }

        if (moved) {
            continue;
        }

        /* wait only when neither direction moved */

        pfd.fd = s->fd;
        pfd.events = (s->out_sent < s->out_len ? POLLOUT : 0)
                     | (s->pending > 0 ? POLLIN : 0);
        pfd.revents = 0;

        rc = poll(&pfd, 1, (int) p->timeout_ms);

        if (rc == 0) {
            snprintf(err, err_len, "%s: timed out", s->name);
            return -1;
        }

        if (rc == -1 && errno != EINTR) {
            snprintf(err, err_len, "%s: %s", s->name, strerror(errno));
            return -1;
        }
    }

    s->out_len = 0;
    s->out_sent = 0;

    /* replies beyond those owed: the stream is out of step */

    if (all && s->in_start != s->in_len) {
        snprintf(err, err_len, "%s: unexpected reply", s->name);
        return -1;
    }

    return 0;
}


/* 1: replies read, 0: none yet, -1: an error or a failed command */

static int
optout_pipe_recv(optout_pipe_t *p, optout_pipe_server_t *s, char *err,
    size_t err_len)
{
    char     *eol;
    size_t    len;
    ssize_t   n;

    if (s->in_start > 0) {
        memmove(s->in, s->in + s->in_start, s->in_len - s->in_start);
        s->in_len -= s->in_start;
        s->in_start = 0;
    }

    if (s->in_len == sizeof(s->in)) {
        snprintf(err, err_len, "%s: reply too long", s->name);
        return -1;
    }

    n = recv(s->fd, s->in + s->in_len, sizeof(s->in) - s->in_len,
             MSG_DONTWAIT);

    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK
                    || errno == EINTR))
    {
        return 0;
    }

    if (n <= 0) {
        snprintf(err, err_len, "%s: %s", s->name,
                 n == 0 ? "connection closed" : strerror(errno));
        return -1;
    }

    s->in_len += (size_t) n;

    while (s->pending > 0) {
        eol = memchr(s->in + s->in_start, '\n', s->in_len - s->in_start);

        if (eol == NULL) {
            break;
        }

        len = (size_t) (eol - (s->in + s->in_start));

        if (len == 0 || s->in[s->in_start + len - 1] != '\r') {
            snprintf(err, err_len, "%s: malformed reply", s->name);
            return -1;
        }

        if (optout_pipe_reply(p, s, s->in + s->in_start, len - 1, err,
                              err_len)
            != 0)
        {
            return -1;
        }

        s->in_start += len + 1;
        s->pending--;
    }

    if (s->pending == 0 && s->in_start != s->in_len) {
        snprintf(err, err_len, "%s: unexpected reply", s->name);
        return -1;
    }

    return 1;
}


static int
optout_pipe_reply(optout_pipe_t *p, optout_pipe_server_t *s,
    const char *line, size_t len, char *err, size_t err_len)
{
#define OPTOUT_PIPE_IS(str)                                                  \
    (len == sizeof(str) - 1 && memcmp(line, str, len) == 0)

    if (OPTOUT_PIPE_IS("STORED")) {
        p->counts.stored++;

    } else if (OPTOUT_PIPE_IS("NOT_STORED") || OPTOUT_PIPE_IS("EXISTS")) {
        p->counts.not_stored++;

    } else if (OPTOUT_PIPE_IS("DELETED")) {
        p->counts.deleted++;

    } else if (OPTOUT_PIPE_IS("NOT_FOUND")) {
        p->counts.not_found++;

    } else {
        snprintf(err, err_len, "%s: %.*s", s->name,
                 (int) (len > 200 ? 200 : len), line);
        return -1;
    }

    return 0;

#undef OPTOUT_PIPE_IS
}


int
optout_pipe_flush(optout_pipe_t *p, char *err, size_t err_len)
{
    unsigned  i;

    for (i = 0; i < p->n; i++) {
        if (optout_pipe_send(p, &p->servers[i], 1, err, err_len) != 0) {
            return -1;
        }
    }

    return 0;
}


const optout_pipe_counts_t *
optout_pipe_counts(optout_pipe_t *p)
{
    return &p->counts;
}


void
optout_pipe_destroy(optout_pipe_t *p)
{
    unsigned  i;

    if (p == NULL) {
        return;
    }

    for (i = 0; i < p->n; i++) {
        if (p->servers[i].fd != -1) {
            (void) close(p->servers[i].fd);
        }

        free(p->servers[i].out);
    }

    free(p->servers);
    free(p);
}
