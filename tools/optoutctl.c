
/*
 * optoutctl: command-line tool of ngx_http_optout_module.
 *
 *   optoutctl keygen FILE            create a link or store key file
 *   optoutctl sign ...               make signed opt-out links
 *   optoutctl verify ... TOKEN       check a token or link
 *   optoutctl get ... DEST           show the rules stored for a destination
 *   optoutctl replay ... JOURNAL     seed memcached from the journal
 *
 * See docs/optoutctl.md.
 */


#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <libmemcached/memcached.h>

#include "optout_core.h"
#include "optout_journal.h"
#include "optout_memcached.h"


#define OCTL_EXIT_OK          0
#define OCTL_EXIT_ERROR       1
#define OCTL_EXIT_USAGE       2
#define OCTL_EXIT_NORULE      3

#define OCTL_KEYGEN_BYTES     32
#define OCTL_DEFAULT_PREFIX   "optout:"
#define OCTL_MC_TIMEOUT       1000              /* ms */
#define OCTL_STDOUT_BUF       (1024 * 1024)
#define OCTL_MAX_KEYS         OPTOUT_KEY_ID_MAX


typedef struct {
    const char     *name;
    int           (*handler)(int argc, char **argv);
    const char     *summary;
} octl_command_t;


typedef struct {
    const char     *file;
    unsigned        id;
    unsigned        id_set;
} octl_key_arg_t;


typedef struct {
    optout_mac_t   *mac;
    optout_link_t   link;
    const char     *ns;
    size_t          ns_len;
    const char     *base;
    size_t          base_len;
    uint64_t        bad;
} octl_sign_t;


typedef enum {
    OCTL_REPLAY_ADDED = 0,
    OCTL_REPLAY_PRESENT,
    OCTL_REPLAY_DELETED,
    OCTL_REPLAY_ABSENT,
    OCTL_REPLAY_SKIPPED,
    OCTL_REPLAY_FATAL
} octl_replay_rc_e;


typedef struct {
    memcached_st   *memc;
    optout_mac_t   *mac;
    const char     *prefix;
    size_t          prefix_len;
    const char     *journal;
    uint64_t        line;
    char            reason[256];
} octl_replay_t;


static int octl_keygen(int argc, char **argv);
static int octl_sign(int argc, char **argv);
static int octl_verify(int argc, char **argv);
static int octl_get(int argc, char **argv);
static int octl_replay(int argc, char **argv);
static int octl_mark(memcached_st *memc, const char *prefix,
    size_t prefix_len);
static const char *octl_memc_error(memcached_st *memc, memcached_return_t rc);
static const char *octl_clean_message(const char *msg, char *buf,
    size_t size);


/* stdout buffer of sign: it stays in use until exit() */
static char  octl_stdout_buf[OCTL_STDOUT_BUF];


static const octl_command_t  octl_commands[] = {
    { "keygen", octl_keygen,
      "create a 256-bit key file (link key or store secret)" },
    { "sign", octl_sign,
      "make signed opt-out links or tokens" },
    { "verify", octl_verify,
      "check a token or link and show what it contains" },
    { "get", octl_get,
      "show the opt-out rules stored in memcached for a destination" },
    { "replay", octl_replay,
      "seed memcached from the opt-out journal" },
    { NULL, NULL, NULL }
};


static const char  octl_keygen_usage[] =
    "usage: optoutctl keygen [--force] FILE\n"
    "\n"
    "Write 32 random bytes as 64 lowercase hex digits and a newline to\n"
    "FILE, created with mode 0600.  An existing FILE is refused.\n"
    "\n"
    "  -f, --force   replace an existing FILE atomically\n"
    "  -h, --help    show this help\n";

static const char  octl_sign_usage[] =
    "usage: optoutctl sign --key FILE [--key-id N] --campaign ID\n"
    "                      [--sender S] [--namespace NS] [--base URL]\n"
    "                      [DEST...]\n"
    "\n"
    "Print one link (BASE/TOKEN) or, without --base, one token per\n"
    "destination.  Destinations are read from stdin, one per line, when\n"
    "none are given.  Invalid destinations are reported on stderr and\n"
    "make the exit status 1; the others are still printed.\n"
    "\n"
    "  -k, --key FILE       link key file\n"
    "  -i, --key-id N       key id, 1..255 (default 1)\n"
    "  -c, --campaign ID    campaign id, decimal 0..18446744073709551615\n"
    "  -s, --sender S       sender-scoped links (default: account-wide)\n"
    "  -n, --namespace NS   the optout_namespace of the link location\n"
    "                       (default: none); the link works only there\n"
    "  -b, --base URL       link base, e.g. https://example.com/o\n"
    "  -h, --help           show this help\n";

static const char  octl_verify_usage[] =
    "usage: optoutctl verify --key FILE [--key-id N] [--key FILE\n"
    "                        [--key-id N]]... [--namespace NS] TOKEN|URL\n"
    "\n"
    "Check a token, or the last path segment of a link, and print what it\n"
    "contains.  Several keys may be given (key rotation); each --key-id\n"
    "applies to the --key before it, a --key without --key-id is id 1.\n"
    "\n"
    "  -k, --key FILE       link key file (repeatable)\n"
    "  -i, --key-id N       id of the preceding key, 1..255\n"
    "  -n, --namespace NS   namespace the token was minted for (default:\n"
    "                       none)\n"
    "  -h, --help           show this help\n"
    "\n"
    "Exit status: 0 valid, 1 invalid, 2 usage error.\n";

static const char  octl_get_usage[] =
    "usage: optoutctl get [--store CONF] [--store-secret FILE] [--prefix P]\n"
    "                     [--namespace NS] [--sender S] DEST\n"
    "\n"
    "Show the account-wide rule and, with --sender, the sender rule\n"
    "stored in memcached for DEST.\n"
    "\n"
    "  -S, --store CONF          libmemcached configuration string, e.g.\n"
    "                            \"--SERVER=127.0.0.1:11211\"\n"
    "                            (default: $OPTOUT_STORE)\n"
    "  -K, --store-secret FILE   store key file (default:\n"
    "                            $OPTOUT_STORE_SECRET)\n"
    "  -p, --prefix P            key prefix (default \"optout:\")\n"
    "  -n, --namespace NS        namespace (default: none)\n"
    "  -s, --sender S            also show the rule for sender S\n"
    "  -h, --help                show this help\n"
    "\n"
    "Exit status: 0 a rule exists, 3 no rule, 1 error, 2 usage error.\n";

static const char  octl_replay_usage[] =
    "usage: optoutctl replay [--store CONF] [--store-secret FILE]\n"
    "                        [--prefix P] JOURNAL\n"
    "\n"
    "Apply the journal (\"-\" for stdin) to memcached in order: opt-outs\n"
    "are added (an existing rule is kept), opt-ins deleted.  Unreadable\n"
    "lines are reported and skipped.  On success every server gets its\n"
    "marker PREFIX\"marker:N\", which seeds the store for the send-time\n"
    "check.  Replay is idempotent: rerun it after an error.\n"
    "\n"
    "  -S, --store CONF          libmemcached configuration string\n"
    "                            (default: $OPTOUT_STORE)\n"
    "  -K, --store-secret FILE   store key file (default:\n"
    "                            $OPTOUT_STORE_SECRET)\n"
    "  -p, --prefix P            key prefix (default \"optout:\")\n"
    "  -h, --help                show this help\n"
    "\n"
    "Exit status: 0 done, 1 error, 2 usage error.\n";


static void
octl_error(const char *fmt, ...)
{
    va_list  args;

    fflush(stdout);

    fputs("optoutctl: ", stderr);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
}


static int
octl_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list  args;

    fputs("optoutctl: ", stderr);

    if (cmd != NULL) {
        fprintf(stderr, "%s: ", cmd);
    }

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    if (cmd != NULL) {
        fprintf(stderr, " (see 'optoutctl %s --help')\n", cmd);

    } else {
        fputs(" (see 'optoutctl --help')\n", stderr);
    }

    return OCTL_EXIT_USAGE;
}


static int
octl_help(const char *text)
{
    fputs(text, stdout);

    if (fflush(stdout) == EOF || ferror(stdout)) {
        return OCTL_EXIT_ERROR;
    }

    return OCTL_EXIT_OK;
}


/*
 * getopt_long() wrapper: reports unknown options and missing arguments
 * itself; returns -2 after such an error, -1 at the end of the options.
 */

static int
octl_getopt(int argc, char **argv, const char *cmd, const char *optstring,
    const struct option *longopts)
{
    int          c;
    const char  *arg;

    c = getopt_long(argc, argv, optstring, longopts, NULL);

    if (c != '?' && c != ':') {
        return c;
    }

    arg = (optind > 0 && optind <= argc) ? argv[optind - 1] : "?";

    if (c == ':') {
        octl_usage_error(cmd, "option %s requires an argument", arg);

    } else if (optopt != 0) {
        octl_usage_error(cmd, "unknown option -%c", optopt);

    } else {
        octl_usage_error(cmd, "unknown option %s", arg);
    }

    return -2;
}


/* a decimal uint64: digits only, no sign, no spaces */

static int
octl_parse_u64(const char *s, size_t len, uint64_t *out)
{
    size_t    i;
    uint64_t  v, d;

    if (len == 0 || len > 20) {
        return -1;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }

        d = (uint64_t) (s[i] - '0');

        if (v > (UINT64_MAX - d) / 10) {
            return -1;
        }

        v = v * 10 + d;
    }

    *out = v;

    return 0;
}


static int
octl_parse_key_id(const char *s, unsigned *id)
{
    uint64_t  v;

    if (octl_parse_u64(s, strlen(s), &v) != 0
        || v < 1 || v > OPTOUT_KEY_ID_MAX)
    {
        return -1;
    }

    *id = (unsigned) v;

    return 0;
}


static int
octl_parse_sender(const char *cmd, const char *in, char *out,
    size_t *out_len)
{
    if (optout_normalize_sender(in, strlen(in), out, out_len) != OPTOUT_OK
        || *out_len == 0)
    {
        return octl_usage_error(cmd, "invalid sender \"%s\"", in);
    }

    return OCTL_EXIT_OK;
}


/* memcached keys must not contain spaces or control characters */

static int
octl_check_prefix(const char *cmd, const char *prefix)
{
    size_t  i, len;

    len = strlen(prefix);

    if (len > OPTOUT_PREFIX_MAX) {
        return octl_usage_error(cmd, "prefix is longer than %d bytes",
                                OPTOUT_PREFIX_MAX);
    }

    for (i = 0; i < len; i++) {
        if ((unsigned char) prefix[i] <= 0x20
            || (unsigned char) prefix[i] == 0x7f)
        {
            return octl_usage_error(cmd, "prefix contains a space or a "
                                    "control character");
        }
    }

    return OCTL_EXIT_OK;
}


static optout_mac_t *
octl_load_mac(const char *path)
{
    char            err[512];
    size_t          len;
    optout_mac_t   *mac;
    unsigned char   buf[OPTOUT_KEY_MAX];

    len = sizeof(buf);
    err[0] = '\0';

    if (optout_key_load(path, buf, &len, err, sizeof(err)) != OPTOUT_OK) {
        OPENSSL_cleanse(buf, sizeof(buf));
        err[sizeof(err) - 1] = '\0';
        octl_error("%s", err[0] != '\0' ? err : "cannot load key file");
        return NULL;
    }

    mac = optout_mac_create(buf, len);

    OPENSSL_cleanse(buf, sizeof(buf));

    if (mac == NULL) {
        octl_error("%s: cannot create the HMAC context", path);
        return NULL;
    }

    return mac;
}


static int
octl_write_all(int fd, const char *buf, size_t len)
{
    ssize_t  n;

    while (len > 0) {
        n = write(fd, buf, len);

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }

            return -1;
        }

        buf += n;
        len -= (size_t) n;
    }

    return 0;
}


/* fsync() the directory holding path so that a rename is durable */

static void
octl_sync_dir(const char *path)
{
    int     fd;
    char   *dir, *slash;

    dir = strdup(path);
    if (dir == NULL) {
        return;
    }

    slash = strrchr(dir, '/');

    if (slash == NULL) {
        strcpy(dir, ".");

    } else if (slash == dir) {
        slash[1] = '\0';

    } else {
        *slash = '\0';
    }

    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd >= 0) {
        (void) fsync(fd);
        (void) close(fd);
    }

    free(dir);
}


static int
octl_keygen(int argc, char **argv)
{
    int             c, fd, force, rc;
    char           *tmp;
    size_t          i;
    const char     *path;
    char            hex[OCTL_KEYGEN_BYTES * 2 + 1];
    unsigned char   raw[OCTL_KEYGEN_BYTES];

    static const char  digits[] = "0123456789abcdef";
    static const struct option  longopts[] = {
        { "force", no_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    force = 0;

    while ((c = octl_getopt(argc, argv, "keygen", ":fh", longopts)) != -1) {
        switch (c) {
        case 'f':
            force = 1;
            break;
        case 'h':
            return octl_help(octl_keygen_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc - optind != 1) {
        return octl_usage_error("keygen", argc == optind
                                ? "missing FILE" : "too many arguments");
    }

    path = argv[optind];

    if (path[0] == '\0') {
        return octl_usage_error("keygen", "empty FILE name");
    }

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        octl_error("RAND_bytes() failed");
        return OCTL_EXIT_ERROR;
    }

    for (i = 0; i < sizeof(raw); i++) {
        hex[i * 2] = digits[raw[i] >> 4];
        hex[i * 2 + 1] = digits[raw[i] & 0x0f];
    }

    hex[sizeof(hex) - 1] = '\n';

    OPENSSL_cleanse(raw, sizeof(raw));

    rc = OCTL_EXIT_ERROR;
    tmp = NULL;

    if (!force) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

        if (fd < 0) {
            if (errno == EEXIST) {
                octl_error("%s: file exists, not overwritten "
                           "(use --force to replace it)", path);

            } else {
                octl_error("%s: %s", path, strerror(errno));
            }

            goto done;
        }

    } else {
        tmp = malloc(strlen(path) + sizeof(".tmp.XXXXXX"));
        if (tmp == NULL) {
            octl_error("out of memory");
            goto done;
        }

        sprintf(tmp, "%s.tmp.XXXXXX", path);

        fd = mkstemp(tmp);

        if (fd < 0) {
            octl_error("%s: %s", tmp, strerror(errno));
            goto done;
        }
    }

    if (fchmod(fd, 0600) != 0
        || octl_write_all(fd, hex, sizeof(hex)) != 0
        || fsync(fd) != 0)
    {
        octl_error("%s: %s", tmp ? tmp : path, strerror(errno));
        (void) close(fd);
        (void) unlink(tmp ? tmp : path);
        goto done;
    }

    if (close(fd) != 0) {
        octl_error("%s: %s", tmp ? tmp : path, strerror(errno));
        (void) unlink(tmp ? tmp : path);
        goto done;
    }

    if (tmp != NULL && rename(tmp, path) != 0) {
        octl_error("%s: %s", path, strerror(errno));
        (void) unlink(tmp);
        goto done;
    }

    octl_sync_dir(path);

    rc = OCTL_EXIT_OK;

done:

    OPENSSL_cleanse(hex, sizeof(hex));
    free(tmp);

    return rc;
}


/* sign */

static int
octl_sign_one(octl_sign_t *ctx, const char *in, size_t len,
    const char *what, uint64_t n)
{
    int     rc;
    size_t  tlen;
    char    token[OPTOUT_TOKEN_MAX + 1];

    rc = optout_normalize_dest(in, len, &ctx->link.dest);

    if (rc != OPTOUT_OK) {
        octl_error("%s %" PRIu64 ": invalid destination", what, n);
        ctx->bad++;
        return rc;
    }

    rc = optout_token_encode(ctx->mac, &ctx->link, ctx->ns, ctx->ns_len,
                             token, sizeof(token), &tlen);

    if (rc != OPTOUT_OK) {
        octl_error("%s %" PRIu64 ": %s", what, n, optout_strerror(rc));
        ctx->bad++;
        return rc;
    }

    if (ctx->base_len) {
        fwrite_unlocked(ctx->base, 1, ctx->base_len, stdout);
        putc_unlocked('/', stdout);
    }

    fwrite_unlocked(token, 1, tlen, stdout);
    putc_unlocked('\n', stdout);

    return OPTOUT_OK;
}


static int
octl_sign(int argc, char **argv)
{
    int             c, rc;
    char           *line;
    size_t          cap, len, i;
    ssize_t         n;
    unsigned        key_id;
    uint64_t        lineno;
    const char     *key_file, *campaign, *sender;
    octl_sign_t     ctx;

    static const struct option  longopts[] = {
        { "key", required_argument, NULL, 'k' },
        { "key-id", required_argument, NULL, 'i' },
        { "campaign", required_argument, NULL, 'c' },
        { "sender", required_argument, NULL, 's' },
        { "namespace", required_argument, NULL, 'n' },
        { "base", required_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    memset(&ctx, 0, sizeof(ctx));

    key_file = NULL;
    campaign = NULL;
    sender = NULL;
    key_id = 1;

    while ((c = octl_getopt(argc, argv, "sign", ":k:i:c:s:n:b:h",
                            longopts))
           != -1)
    {
        switch (c) {
        case 'k':
            key_file = optarg;
            break;
        case 'i':
            if (octl_parse_key_id(optarg, &key_id) != 0) {
                return octl_usage_error("sign", "invalid --key-id \"%s\" "
                                        "(1..255)", optarg);
            }
            break;
        case 'c':
            campaign = optarg;
            break;
        case 's':
            sender = optarg;
            break;
        case 'n':
            ctx.ns = optarg;
            ctx.ns_len = strlen(optarg);
            break;
        case 'b':
            ctx.base = optarg;
            break;
        case 'h':
            return octl_help(octl_sign_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (key_file == NULL) {
        return octl_usage_error("sign", "missing --key");
    }

    if (campaign == NULL) {
        return octl_usage_error("sign", "missing --campaign");
    }

    if (octl_parse_u64(campaign, strlen(campaign), &ctx.link.campaign)
        != 0)
    {
        return octl_usage_error("sign", "invalid --campaign \"%s\" "
                                "(decimal 0..18446744073709551615)",
                                campaign);
    }

    if (sender != NULL) {
        rc = octl_parse_sender("sign", sender, ctx.link.sender,
                               &ctx.link.sender_len);
        if (rc != OCTL_EXIT_OK) {
            return rc;
        }
    }

    if (ctx.ns_len > 0
        && optout_check_namespace(ctx.ns, ctx.ns_len) != OPTOUT_OK)
    {
        return octl_usage_error("sign", "invalid --namespace \"%s\"",
                                ctx.ns);
    }

    if (ctx.base != NULL) {
        ctx.base_len = strlen(ctx.base);

        while (ctx.base_len > 0 && ctx.base[ctx.base_len - 1] == '/') {
            ctx.base_len--;
        }

        if (ctx.base_len == 0) {
            return octl_usage_error("sign", "invalid --base \"%s\"",
                                    ctx.base);
        }
    }

    ctx.link.key_id = key_id;

    ctx.mac = octl_load_mac(key_file);
    if (ctx.mac == NULL) {
        return OCTL_EXIT_ERROR;
    }

    (void) setvbuf(stdout, octl_stdout_buf, _IOFBF, sizeof(octl_stdout_buf));

    rc = OCTL_EXIT_OK;

    if (optind < argc) {
        for (i = 1; optind < argc; optind++, i++) {
            (void) octl_sign_one(&ctx, argv[optind], strlen(argv[optind]),
                                 "argument", i);
        }

    } else {
        line = NULL;
        cap = 0;
        lineno = 0;

        while ((n = getline(&line, &cap, stdin)) != -1) {
            lineno++;
            len = (size_t) n;

            if (len > 0 && line[len - 1] == '\n') {
                len--;
            }

            if (len > 0 && line[len - 1] == '\r') {
                len--;
            }

            if (len == 0) {
                continue;
            }

            (void) octl_sign_one(&ctx, line, len, "line", lineno);
        }

        if (ferror(stdin)) {
            octl_error("reading stdin: %s", strerror(errno));
            rc = OCTL_EXIT_ERROR;
        }

        free(line);
    }

    optout_mac_destroy(ctx.mac);

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        rc = OCTL_EXIT_ERROR;
    }

    if (ctx.bad > 0) {
        rc = OCTL_EXIT_ERROR;
    }

    return rc;
}


/* verify */

static int
octl_verify(int argc, char **argv)
{
    int              c, rc;
    size_t           nkeys, i, j, len;
    const char      *arg, *p, *end, *q, *ns;
    optout_link_t    link;
    optout_key_t     keys[OCTL_MAX_KEYS];
    octl_key_arg_t   args[OCTL_MAX_KEYS];

    static const struct option  longopts[] = {
        { "key", required_argument, NULL, 'k' },
        { "key-id", required_argument, NULL, 'i' },
        { "namespace", required_argument, NULL, 'n' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    nkeys = 0;
    ns = "";

    while ((c = octl_getopt(argc, argv, "verify", ":k:i:n:h", longopts))
           != -1)
    {
        switch (c) {
        case 'k':
            if (nkeys == OCTL_MAX_KEYS) {
                return octl_usage_error("verify", "too many keys");
            }

            args[nkeys].file = optarg;
            args[nkeys].id = 1;
            args[nkeys].id_set = 0;
            nkeys++;
            break;

        case 'i':
            if (nkeys == 0) {
                return octl_usage_error("verify", "--key-id must follow "
                                        "the --key it applies to");
            }

            if (args[nkeys - 1].id_set) {
                return octl_usage_error("verify", "two --key-id for the "
                                        "key \"%s\"", args[nkeys - 1].file);
            }

            if (octl_parse_key_id(optarg, &args[nkeys - 1].id) != 0) {
                return octl_usage_error("verify", "invalid --key-id \"%s\" "
                                        "(1..255)", optarg);
            }

            args[nkeys - 1].id_set = 1;
            break;

        case 'n':
            ns = optarg;
            break;

        case 'h':
            return octl_help(octl_verify_usage);

        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (nkeys == 0) {
        return octl_usage_error("verify", "missing --key");
    }

    if (argc - optind != 1) {
        return octl_usage_error("verify", argc == optind
                                ? "missing TOKEN" : "too many arguments");
    }

    if (optout_check_namespace(ns, strlen(ns)) != OPTOUT_OK) {
        return octl_usage_error("verify", "invalid --namespace \"%s\"", ns);
    }

    for (i = 0; i < nkeys; i++) {
        for (j = 0; j < i; j++) {
            if (args[i].id == args[j].id) {
                return octl_usage_error("verify", "key id %u is given "
                                        "twice", args[i].id);
            }
        }
    }

    /* a bare token, or a link: the last path segment without ?query */

    arg = argv[optind];
    p = arg;
    end = arg + strlen(arg);

    q = memchr(p, '#', (size_t) (end - p));
    if (q != NULL) {
        end = q;
    }

    q = memchr(p, '?', (size_t) (end - p));
    if (q != NULL) {
        end = q;
    }

    while (end > p && end[-1] == '/') {
        end--;
    }

    for (q = end; q > p && q[-1] != '/'; q--) {
        /* void */
    }

    len = (size_t) (end - q);

    for (i = 0; i < nkeys; i++) {
        keys[i].id = args[i].id;
        keys[i].mac = octl_load_mac(args[i].file);

        if (keys[i].mac == NULL) {
            while (i-- > 0) {
                optout_mac_destroy(keys[i].mac);
            }

            return OCTL_EXIT_ERROR;
        }
    }

    memset(&link, 0, sizeof(link));

    if (len == 0) {
        rc = OPTOUT_EMALFORMED;

    } else {
        rc = optout_token_open(keys, nkeys, ns, strlen(ns), q, len, &link);
    }

    for (i = 0; i < nkeys; i++) {
        optout_mac_destroy(keys[i].mac);
    }

    if (rc != OPTOUT_OK) {
        octl_error("invalid token: %s", optout_strerror(rc));
        return OCTL_EXIT_ERROR;
    }

    printf("valid key_id=%u campaign=%" PRIu64 " scope=%s",
           link.key_id, link.campaign,
           link.sender_len ? "sender" : "account");

    if (link.sender_len) {
        printf(" sender=%.*s", (int) link.sender_len, link.sender);
    }

    printf(" dest=%.*s channel=%s\n", (int) link.dest.len, link.dest.data,
           optout_channel_name(link.dest.type));

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        return OCTL_EXIT_ERROR;
    }

    return OCTL_EXIT_OK;
}


/* memcached */

static int
octl_store_args(const char *cmd, const char **conf, const char **secret,
    const char *prefix)
{
    char                err[512], msg[512];
    memcached_return_t  rc;

    if (*conf == NULL) {
        *conf = getenv("OPTOUT_STORE");
    }

    if (*conf == NULL || **conf == '\0') {
        return octl_usage_error(cmd, "no store: use --store or set "
                                "OPTOUT_STORE");
    }

    if (*secret == NULL) {
        *secret = getenv("OPTOUT_STORE_SECRET");
    }

    if (*secret == NULL || **secret == '\0') {
        return octl_usage_error(cmd, "no store secret: use --store-secret "
                                "or set OPTOUT_STORE_SECRET");
    }

    err[0] = '\0';

    rc = libmemcached_check_configuration(*conf, strlen(*conf), err,
                                          sizeof(err));

    if (rc != MEMCACHED_SUCCESS) {
        err[sizeof(err) - 1] = '\0';
        return octl_usage_error(cmd, "invalid store configuration \"%s\": "
                                "%s", *conf,
                                err[0] != '\0'
                                ? octl_clean_message(err, msg, sizeof(msg))
                                : memcached_strerror(NULL, rc));
    }

    return octl_check_prefix(cmd, prefix);
}


/*
 * Seeds every server: each gets its marker (see optout_memcached.h), the
 * sign for the send-time check that the server holds the whole journal.
 */

static int
octl_mark(memcached_st *memc, const char *prefix, size_t prefix_len)
{
    char                 value[64];
    size_t               vlen;
    unsigned             i;
    optout_markers_t     markers;
    memcached_return_t   mrc;

    if (optout_markers(memc, prefix, prefix_len, &markers) != OPTOUT_OK) {
        octl_error("cannot place a marker on each of the %u servers "
                   "(at most %d)", memcached_server_count(memc),
                   OPTOUT_MARKERS_MAX);
        return -1;
    }

    vlen = optout_marker_value(value, sizeof(value));

    for (i = 0; i < markers.n; i++) {
        mrc = memcached_set(memc, markers.key[i], markers.len[i], value,
                            vlen, 0, 0);

        if (mrc != MEMCACHED_SUCCESS) {
            octl_error("cannot set the marker key \"%s\": %s",
                       markers.key[i], octl_memc_error(memc, mrc));
            return -1;
        }
    }

    return 0;
}


static memcached_st *
octl_memc_open(const char *conf)
{
    size_t         len;
    memcached_st  *memc;

    len = strlen(conf);

    memc = memcached(conf, len);

    if (memc == NULL) {
        octl_error("invalid store configuration \"%s\"", conf);
        return NULL;
    }

    /* the same timeouts and settings as the module's, a little longer */

    if (optout_mc_tune(memc, OCTL_MC_TIMEOUT) != 0) {
        octl_error("memcached_behavior_set() failed");
        memcached_free(memc);
        return NULL;
    }

    return memc;
}


/*
 * libmemcached messages look like "(0x55d0c0) CONNECTION FAILURE,  host:
 * 127.0.0.1:1 -> ./src/libmemcached/get.cc:233": drop the pointer and the
 * source location.
 */

static const char *
octl_clean_message(const char *msg, char *buf, size_t size)
{
    size_t       n;
    const char  *p, *end;

    p = msg;

    if (p[0] == '(' && p[1] == '0' && p[2] == 'x') {
        end = strstr(p, ") ");
        if (end != NULL) {
            p = end + 2;
        }
    }

    end = strstr(p, " -> ");
    if (end == NULL) {
        end = p + strlen(p);
    }

    n = 0;

    for ( /* void */ ; p < end && n + 1 < size; p++) {
        if (*p == ' ' && (n == 0 || buf[n - 1] == ' ')) {
            continue;
        }

        buf[n++] = *p;
    }

    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == ',')) {
        n--;
    }

    buf[n] = '\0';

    return buf;
}


static const char *
octl_memc_error(memcached_st *memc, memcached_return_t rc)
{
    const char  *msg;

    static char  buf[512];

    msg = memcached_last_error_message(memc);

    if (memcached_last_error(memc) != rc || msg == NULL || *msg == '\0') {
        return memcached_strerror(memc, rc);
    }

    return octl_clean_message(msg, buf, sizeof(buf));
}


/* get */

static int
octl_print_rule(const char *label, const char *value, size_t len)
{
    char           since[32];
    time_t         t;
    struct tm      tm;
    optout_rule_t  rule;

    if (optout_rule_parse(value, len, &rule) != OPTOUT_OK) {
        printf("%s: blocked (malformed rule value \"%.*s\")\n", label,
               (int) (len > OPTOUT_VALUE_MAX ? OPTOUT_VALUE_MAX : len),
               value);
        return -1;
    }

    t = (time_t) rule.time;

    if ((int64_t) t != rule.time || gmtime_r(&t, &tm) == NULL
        || strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    {
        snprintf(since, sizeof(since), "%" PRId64, rule.time);
    }

    printf("%s: blocked campaign=%" PRIu64 " since=%s source=%s channel=%s "
           "key_id=%u\n", label, rule.campaign, since,
           optout_source_name(rule.source),
           optout_channel_name(rule.channel), rule.key_id);

    return 0;
}


static int
octl_get(int argc, char **argv)
{
    int                   c, rc, found;
    char                 *values[2];
    size_t                nkeys, i, vlens[2], klens[2], ns_len;
    const char           *conf, *secret, *prefix, *ns, *sender, *k;
    const char           *keyp[2];
    memcached_st         *memc;
    optout_mac_t         *mac;
    optout_dest_t         dest;
    memcached_return_t    mrc;
    memcached_result_st   result;
    size_t                sender_len;
    char                  sender_buf[OPTOUT_SENDER_MAX + 1];
    char                  label[sizeof("sender ") + OPTOUT_SENDER_MAX];
    char                  keys[2][OPTOUT_STORE_KEY_MAX + 1];

    static const struct option  longopts[] = {
        { "store", required_argument, NULL, 'S' },
        { "store-secret", required_argument, NULL, 'K' },
        { "prefix", required_argument, NULL, 'p' },
        { "namespace", required_argument, NULL, 'n' },
        { "sender", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    conf = NULL;
    secret = NULL;
    prefix = OCTL_DEFAULT_PREFIX;
    ns = "";
    sender = NULL;
    sender_len = 0;

    while ((c = octl_getopt(argc, argv, "get", ":S:K:p:n:s:h", longopts))
           != -1)
    {
        switch (c) {
        case 'S':
            conf = optarg;
            break;
        case 'K':
            secret = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'n':
            ns = optarg;
            break;
        case 's':
            sender = optarg;
            break;
        case 'h':
            return octl_help(octl_get_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc - optind != 1) {
        return octl_usage_error("get", argc == optind
                                ? "missing DEST" : "too many arguments");
    }

    rc = octl_store_args("get", &conf, &secret, prefix);
    if (rc != OCTL_EXIT_OK) {
        return rc;
    }

    ns_len = strlen(ns);

    if (ns_len > 0 && optout_check_namespace(ns, ns_len) != OPTOUT_OK) {
        return octl_usage_error("get", "invalid --namespace \"%s\"", ns);
    }

    if (sender != NULL) {
        rc = octl_parse_sender("get", sender, sender_buf, &sender_len);
        if (rc != OCTL_EXIT_OK) {
            return rc;
        }
    }

    if (optout_normalize_dest(argv[optind], strlen(argv[optind]), &dest)
        != OPTOUT_OK)
    {
        return octl_usage_error("get", "invalid destination \"%s\"",
                                argv[optind]);
    }

    mac = octl_load_mac(secret);
    if (mac == NULL) {
        return OCTL_EXIT_ERROR;
    }

    nkeys = (sender != NULL) ? 2 : 1;

    for (i = 0; i < nkeys; i++) {
        rc = optout_store_key(mac, prefix, strlen(prefix), ns, ns_len,
                              i ? sender_buf : NULL, i ? sender_len : 0,
                              &dest, keys[i], &klens[i]);

        if (rc != OPTOUT_OK) {
            octl_error("cannot compute the store key: %s",
                       optout_strerror(rc));
            optout_mac_destroy(mac);
            return OCTL_EXIT_ERROR;
        }

        keyp[i] = keys[i];
        values[i] = NULL;
        vlens[i] = 0;
    }

    optout_mac_destroy(mac);

    memc = octl_memc_open(conf);
    if (memc == NULL) {
        return OCTL_EXIT_ERROR;
    }

    rc = OCTL_EXIT_ERROR;

    if (memcached_result_create(memc, &result) == NULL) {
        octl_error("out of memory");
        memcached_free(memc);
        return OCTL_EXIT_ERROR;
    }

    mrc = memcached_mget(memc, keyp, klens, nkeys);

    if (mrc != MEMCACHED_SUCCESS) {
        octl_error("memcached get failed: %s", octl_memc_error(memc, mrc));
        goto done;
    }

    while (memcached_fetch_result(memc, &result, &mrc) != NULL) {
        if (mrc != MEMCACHED_SUCCESS) {
            break;
        }

        k = memcached_result_key_value(&result);

        for (i = 0; i < nkeys; i++) {
            if (memcached_result_key_length(&result) == klens[i]
                && memcmp(k, keys[i], klens[i]) == 0
                && values[i] == NULL)
            {
                vlens[i] = memcached_result_length(&result);
                values[i] = malloc(vlens[i] + 1);

                if (values[i] == NULL) {
                    octl_error("out of memory");
                    goto done;
                }

                memcpy(values[i], memcached_result_value(&result), vlens[i]);
                values[i][vlens[i]] = '\0';
            }
        }
    }

    if (mrc != MEMCACHED_END && mrc != MEMCACHED_NOTFOUND) {
        octl_error("memcached get failed: %s", octl_memc_error(memc, mrc));
        goto done;
    }

    found = 0;
    rc = OCTL_EXIT_NORULE;

    for (i = 0; i < nkeys; i++) {
        if (i == 0) {
            strcpy(label, "account");

        } else {
            snprintf(label, sizeof(label), "sender %.*s", (int) sender_len,
                     sender_buf);
        }

        if (values[i] == NULL) {
            printf("%s: no rule\n", label);
            continue;
        }

        found++;

        if (octl_print_rule(label, values[i], vlens[i]) != 0) {
            octl_error("%s: malformed rule value in memcached", label);
            rc = OCTL_EXIT_ERROR;
        }
    }

    if (found && rc != OCTL_EXIT_ERROR) {
        rc = OCTL_EXIT_OK;
    }

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        rc = OCTL_EXIT_ERROR;
    }

done:

    for (i = 0; i < nkeys; i++) {
        free(values[i]);
    }

    memcached_result_free(&result);
    memcached_free(memc);

    return rc;
}


/* replay */

static octl_replay_rc_e
octl_replay_line(octl_replay_t *ctx, const char *line, size_t line_len)
{
    int                      rc;
    char                     key[OPTOUT_STORE_KEY_MAX + 1];
    char                     value[OPTOUT_VALUE_MAX + 1];
    size_t                   key_len, value_len;
    memcached_return_t       mrc;
    optout_journal_entry_t   e;

    if (optout_journal_parse(line, line_len, &e, ctx->reason,
                             sizeof(ctx->reason))
        != OPTOUT_OK)
    {
        return OCTL_REPLAY_SKIPPED;
    }

    rc = optout_journal_key(&e, ctx->mac, ctx->prefix, ctx->prefix_len, key,
                            &key_len);

    if (rc != OPTOUT_OK) {
        snprintf(ctx->reason, sizeof(ctx->reason),
                 "cannot compute the store key: %s", optout_strerror(rc));
        return OCTL_REPLAY_SKIPPED;
    }

    if (e.optin) {
        mrc = memcached_delete(ctx->memc, key, key_len, 0);

        if (mrc == MEMCACHED_SUCCESS) {
            return OCTL_REPLAY_DELETED;
        }

        if (mrc == MEMCACHED_NOTFOUND) {
            return OCTL_REPLAY_ABSENT;
        }

        snprintf(ctx->reason, sizeof(ctx->reason),
                 "memcached delete failed: %s",
                 octl_memc_error(ctx->memc, mrc));

        return OCTL_REPLAY_FATAL;
    }

    value_len = optout_rule_format(&e.rule, value);

    if (value_len == 0 || value_len > OPTOUT_VALUE_MAX) {
        snprintf(ctx->reason, sizeof(ctx->reason),
                 "cannot format the rule value");
        return OCTL_REPLAY_SKIPPED;
    }

    mrc = memcached_add(ctx->memc, key, key_len, value, value_len, 0, 0);

    if (mrc == MEMCACHED_SUCCESS) {
        return OCTL_REPLAY_ADDED;
    }

    if (mrc == MEMCACHED_NOTSTORED || mrc == MEMCACHED_DATA_EXISTS) {
        return OCTL_REPLAY_PRESENT;
    }

    snprintf(ctx->reason, sizeof(ctx->reason), "memcached add failed: %s",
             octl_memc_error(ctx->memc, mrc));

    return OCTL_REPLAY_FATAL;
}


static int
octl_replay(int argc, char **argv)
{
    int                  c, rc;
    FILE                *fp;
    char                *line;
    size_t               cap, len;
    ssize_t              n;
    uint64_t             total, counts[OCTL_REPLAY_FATAL];
    const char          *conf, *secret, *prefix;
    octl_replay_t        ctx;
    octl_replay_rc_e     ret;

    static const struct option  longopts[] = {
        { "store", required_argument, NULL, 'S' },
        { "store-secret", required_argument, NULL, 'K' },
        { "prefix", required_argument, NULL, 'p' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    conf = NULL;
    secret = NULL;
    prefix = OCTL_DEFAULT_PREFIX;

    while ((c = octl_getopt(argc, argv, "replay", ":S:K:p:h", longopts))
           != -1)
    {
        switch (c) {
        case 'S':
            conf = optarg;
            break;
        case 'K':
            secret = optarg;
            break;
        case 'p':
            prefix = optarg;
            break;
        case 'h':
            return octl_help(octl_replay_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc - optind != 1) {
        return octl_usage_error("replay", argc == optind
                                ? "missing JOURNAL" : "too many arguments");
    }

    rc = octl_store_args("replay", &conf, &secret, prefix);
    if (rc != OCTL_EXIT_OK) {
        return rc;
    }

    memset(&ctx, 0, sizeof(ctx));
    memset(counts, 0, sizeof(counts));

    ctx.journal = argv[optind];
    ctx.prefix = prefix;
    ctx.prefix_len = strlen(prefix);

    if (strcmp(ctx.journal, "-") == 0) {
        fp = stdin;

    } else {
        fp = fopen(ctx.journal, "re");

        if (fp == NULL) {
            octl_error("%s: %s", ctx.journal, strerror(errno));
            return OCTL_EXIT_ERROR;
        }
    }

    line = NULL;
    rc = OCTL_EXIT_ERROR;

    ctx.mac = octl_load_mac(secret);
    if (ctx.mac == NULL) {
        goto done;
    }

    ctx.memc = octl_memc_open(conf);
    if (ctx.memc == NULL) {
        goto done;
    }

    cap = 0;
    total = 0;

    while ((n = getline(&line, &cap, fp)) != -1) {
        ctx.line++;
        len = (size_t) n;

        if (len > 0 && line[len - 1] == '\n') {
            len--;
        }

        if (len > 0 && line[len - 1] == '\r') {
            len--;
        }

        total++;
        ctx.reason[0] = '\0';

        ret = octl_replay_line(&ctx, line, len);

        if (ret == OCTL_REPLAY_FATAL) {
            octl_error("%s:%" PRIu64 ": %s; stopped (the journal is "
                       "intact: run replay again)", ctx.journal, ctx.line,
                       ctx.reason);
            goto done;
        }

        if (ret == OCTL_REPLAY_SKIPPED) {
            octl_error("%s:%" PRIu64 ": skipped: %s", ctx.journal, ctx.line,
                       ctx.reason);
        }

        counts[ret]++;
    }

    if (ferror(fp)) {
        octl_error("%s: %s", ctx.journal, strerror(errno));
        goto done;
    }

    if (octl_mark(ctx.memc, prefix, ctx.prefix_len) != 0) {
        goto done;
    }

    printf("replayed %" PRIu64 " records: %" PRIu64 " added, %" PRIu64
           " already present, %" PRIu64 " deleted, %" PRIu64 " skipped\n",
           total, counts[OCTL_REPLAY_ADDED], counts[OCTL_REPLAY_PRESENT],
           counts[OCTL_REPLAY_DELETED], counts[OCTL_REPLAY_SKIPPED]);

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        goto done;
    }

    rc = OCTL_EXIT_OK;

done:

    free(line);

    if (ctx.memc != NULL) {
        memcached_free(ctx.memc);
    }

    if (ctx.mac != NULL) {
        optout_mac_destroy(ctx.mac);
    }

    if (fp != stdin) {
        (void) fclose(fp);
    }

    return rc;
}


static int
octl_main_usage(FILE *out)
{
    const octl_command_t  *cmd;

    fputs("usage: optoutctl COMMAND [OPTIONS] [ARGS]\n"
          "\n"
          "Commands:\n", out);

    for (cmd = octl_commands; cmd->name != NULL; cmd++) {
        fprintf(out, "  %-8s %s\n", cmd->name, cmd->summary);
    }

    fputs("\n"
          "Run 'optoutctl COMMAND --help' for the options of a command.\n"
          "See docs/optoutctl.md.\n", out);

    return 0;
}


int
main(int argc, char **argv)
{
    const char            *name;
    const octl_command_t  *cmd;

    if (argc < 2) {
        octl_main_usage(stderr);
        return OCTL_EXIT_USAGE;
    }

    name = argv[1];

    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0
        || strcmp(name, "help") == 0)
    {
        octl_main_usage(stdout);
        return (fflush(stdout) == EOF) ? OCTL_EXIT_ERROR : OCTL_EXIT_OK;
    }

    for (cmd = octl_commands; cmd->name != NULL; cmd++) {
        if (strcmp(name, cmd->name) == 0) {
            opterr = 0;
            optind = 1;
            return cmd->handler(argc - 1, argv + 1);
        }
    }

    return octl_usage_error(NULL, "unknown command \"%s\"", name);
}
