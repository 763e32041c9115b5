
/*
 * optoutctl: command-line tool of ngx_http_optout_module.
 *
 *   optoutctl keygen FILE            create a link or store key file
 *   optoutctl sign ...               make signed opt-out links
 *   optoutctl verify ... TOKEN       check a token or link
 *   optoutctl get ... DEST           show the rules stored for a destination
 *   optoutctl replay ... JOURNAL...  seed memcached from the journals
 *   optoutctl export ... JOURNAL...  print the rules the journals leave
 *   optoutctl report ... JOURNAL...  count opt-outs and opt-ins per group
 *   optoutctl import --url URL ...   send rules to the management API
 *
 * See docs/optoutctl.md.
 */


#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libmemcached/memcached.h>

#include "optout_core.h"
#include "optout_fold.h"
#include "optout_journal.h"
#include "optout_memcached.h"
#include "optout_pipe.h"


#define OCTL_EXIT_OK          0
#define OCTL_EXIT_ERROR       1
#define OCTL_EXIT_USAGE       2
#define OCTL_EXIT_NORULE      3

#define OCTL_KEYGEN_BYTES     32
#define OCTL_DEFAULT_PREFIX   "optout:"
#define OCTL_MC_TIMEOUT       1000              /* ms */
#define OCTL_THREADS_MAX      16
#define OCTL_STDOUT_BUF       (1024 * 1024)
#define OCTL_MAX_KEYS         OPTOUT_KEY_ID_MAX
#define OCTL_LABEL_MAX        32
#define OCTL_ACCOUNT_LABEL    "(account-wide)"

#define OCTL_BY_CAMPAIGN      0
#define OCTL_BY_SOURCE        1
#define OCTL_BY_SENDER        2
#define OCTL_BY_DAY           3

#define OCTL_CHUNK_MAX        10000             /* items a request */
#define OCTL_PARALLEL         4                 /* requests in flight */
#define OCTL_PARALLEL_MAX     16
#define OCTL_COLUMNS_MAX      16
#define OCTL_FIELD_MAX        512


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


typedef struct {
    memcached_st   *memc;
    optout_pipe_t  *pipe;
    optout_mac_t   *mac;
    const char     *prefix;
    size_t          prefix_len;
} octl_replay_t;


typedef struct {
    char            label[OCTL_LABEL_MAX];
    uint64_t        num;                      /* campaign: sorts by it */
    uint64_t        optouts;
    uint64_t        optins;
} octl_group_t;


typedef struct {
    unsigned        by;                       /* OCTL_BY_* */
    int             error;
    double          since;
    double          until;
    json_t         *index;                    /* label: groups[i] */
    octl_group_t   *groups;
    size_t          n;
    size_t          cap;
    uint64_t        optouts;
    uint64_t        optins;
} octl_report_t;


/* a progress bar on stderr, when stderr is a terminal */
typedef struct {
    unsigned        on;
    const char     *what;                     /* "replay", "import" */
    const char     *unit;                     /* "lines", "rules" */
    double          start;
    uint64_t        size;                     /* bytes to read, 0: unknown */
} octl_bar_t;


/* one request of an import, in flight or free */
typedef struct {
    CURL               *curl;
    struct curl_slist  *headers;
    char               *body;
    uint64_t           *lines;                /* line numbers of its items */
    size_t              n;
    char               *resp;
    size_t              resp_len;
    size_t              resp_cap;
    unsigned            done;
    CURLcode            result;
    char                errbuf[CURL_ERROR_SIZE];
} octl_xfer_t;


typedef struct {
    CURLM          *multi;
    octl_xfer_t    *xfers;
    size_t          nxfers;
    size_t          head;                     /* the oldest in flight */
    size_t          inflight;
    json_t         *chunk;                    /* items of one request */
    uint64_t       *lines;                    /* their line numbers */
    size_t          max;
    const char     *name;
    unsigned        ndjson;
    octl_bar_t      bar;
    char            ns[OPTOUT_NAMESPACE_MAX + 1];
    const char     *columns[OCTL_COLUMNS_MAX];
    size_t          ncolumns;
    uint64_t        size;
    uint64_t        pos;
    uint64_t        items;
    uint64_t        added;
    uint64_t        present;
    uint64_t        invalid;
} octl_import_t;


typedef void (*octl_fold_pt)(void *data, const optout_merge_line_t *l,
    optout_fold_item_t *it, unsigned before);


static int octl_keygen(int argc, char **argv);
static int octl_sign(int argc, char **argv);
static int octl_verify(int argc, char **argv);
static int octl_get(int argc, char **argv);
static int octl_replay(int argc, char **argv);
static int octl_export(int argc, char **argv);
static int octl_report(int argc, char **argv);
static int octl_import(int argc, char **argv);
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
      "seed memcached from the opt-out journals" },
    { "export", octl_export,
      "print the rules the journals leave in force" },
    { "report", octl_report,
      "count opt-outs and opt-ins by campaign, source, sender or day" },
    { "import", octl_import,
      "send rules (CSV or NDJSON) to the management API" },
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
    "                        [--prefix P] [--threads N] JOURNAL...\n"
    "\n"
    "Merge the journals (\"-\" for stdin) by time, fold them into the\n"
    "state each rule ends in, and write that to memcached: a rule that\n"
    "holds is added (an existing one is kept, unless the journals opted\n"
    "it in before: then it is replaced), an opted-in rule is deleted.\n"
    "Unreadable lines are reported and skipped.  On success every server\n"
    "gets its marker PREFIX\"marker:N\", which seeds the store for the\n"
    "send-time check.  Replay is idempotent: rerun it after an error.\n"
    "\n"
    "  -S, --store CONF          libmemcached configuration string\n"
    "                            (default: $OPTOUT_STORE)\n"
    "  -K, --store-secret FILE   store key file (default:\n"
    "                            $OPTOUT_STORE_SECRET)\n"
    "  -p, --prefix P            key prefix (default \"optout:\")\n"
    "  -j, --threads N           threads that parse the journals, 1..16\n"
    "                            (default: one a CPU); the result is the\n"
    "                            same with any number\n"
    "  -h, --help                show this help\n"
    "\n"
    "Exit status: 0 done, 1 error, 2 usage error.\n";

static const char  octl_export_usage[] =
    "usage: optoutctl export [--format ndjson|csv] JOURNAL...\n"
    "\n"
    "Merge and fold the journals as replay does and print the rules that\n"
    "hold at the end, one a line, sorted by namespace, destination and\n"
    "scope.  The journals are the only source: memcached keys are keyed\n"
    "hashes and cannot be listed.\n"
    "\n"
    "  -f, --format F   ndjson (default) or csv (with a header line)\n"
    "  -h, --help       show this help\n"
    "\n"
    "Exit status: 0 done, 1 error, 2 usage error.\n";

static const char  octl_report_usage[] =
    "usage: optoutctl report [--since T] [--until T]\n"
    "                        [--by campaign|source|sender|day]\n"
    "                        [--format table|csv|json] JOURNAL...\n"
    "\n"
    "Count opt-outs and opt-ins per group, net of repeats: an opt-out of\n"
    "a rule that already holds (a second click) or an opt-in of a rule\n"
    "already removed is not counted again.  T is YYYY-MM-DD,\n"
    "YYYY-MM-DDTHH:MM:SSZ (UTC) or unix seconds; lines at or after\n"
    "--since and before --until are counted.\n"
    "\n"
    "  -s, --since T     count from T\n"
    "  -u, --until T     count up to T, excluded\n"
    "  -b, --by G        group by campaign (default), source, sender or day\n"
    "  -f, --format F    table (default), csv or json\n"
    "  -h, --help        show this help\n"
    "\n"
    "Exit status: 0 done, 1 error, 2 usage error.\n";

static const char  octl_import_usage[] =
    "usage: optoutctl import --url URL [--user USER:PASSWORD]\n"
    "                        [--cacert FILE] [--cert FILE] [--key FILE]\n"
    "                        [--chunk N] [--parallel N] [FILE]\n"
    "\n"
    "Send the rules in FILE (default: stdin) to the optout_api location at\n"
    "URL, in requests of up to N rules (one namespace a request).  FILE is\n"
    "NDJSON (the export format) when its first non-blank character is\n"
    "\"{\", else CSV: destination,sender,campaign,channel, or any columns\n"
    "named by a header line (the export's CSV works).  Rules without a\n"
    "source get source \"import\".  Invalid rules are reported with their\n"
    "line numbers; a refused request stops the import.  Up to\n"
    "--parallel requests are in flight at once; their answers are read\n"
    "in the order they were sent.\n"
    "\n"
    "  -u, --url URL         the optout_api location\n"
    "  -U, --user U:P        basic authentication (default:\n"
    "                        $OPTOUT_API_USER)\n"
    "  -C, --cacert FILE     CA certificates to verify the server\n"
    "  -E, --cert FILE       client certificate (PEM)\n"
    "  -k, --key FILE        its private key\n"
    "  -c, --chunk N         rules a request, 1..10000 (default 10000)\n"
    "  -P, --parallel N      requests in flight, 1..16 (default 4)\n"
    "  -h, --help            show this help\n"
    "\n"
    "Exit status: 0 every rule added or present, 1 a rule invalid or not\n"
    "imported, or an error, 2 usage error.\n";

static const char  *octl_by_names[] = {
    "campaign", "source", "sender", "day", NULL
};


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


static int
octl_parse_key_id(const char *s, unsigned *id)
{
    uint64_t  v;

    if (optout_parse_u64(s, strlen(s), UINT64_MAX, &v) != 0
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

    if (optout_parse_u64(campaign, strlen(campaign), UINT64_MAX,
                         &ctx.link.campaign)
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


/* progress: done units, their rate, and the time left by bytes read */

static double
octl_now(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (double) ts.tv_sec + ts.tv_nsec / 1e9;
}


static void
octl_bar_init(octl_bar_t *bar, const char *what, const char *unit,
    uint64_t size)
{
    bar->on = isatty(STDERR_FILENO);
    bar->what = what;
    bar->unit = unit;
    bar->size = size;
    bar->start = octl_now();
}


static void
octl_bar_show(octl_bar_t *bar, uint64_t done, uint64_t pos)
{
    int     i, w;
    double  f, dt;

    if (!bar->on) {
        return;
    }

    dt = octl_now() - bar->start;
    fprintf(stderr, "\r\033[K%s ", bar->what);

    f = 0;

    if (bar->size > 0) {
        f = (double) pos / (double) bar->size;
        f = f > 1 ? 1 : f;
        w = (int) (f * 30);

        fputc('[', stderr);

        for (i = 0; i < 30; i++) {
            fputc(i < w ? '#' : '.', stderr);
        }

        fprintf(stderr, "] %3d%% ", (int) (f * 100));
    }

    fprintf(stderr, "%" PRIu64 " %s", done, bar->unit);

    if (dt > 0.2) {
        fprintf(stderr, ", %.0f/s", (double) done / dt);

        if (f > 0.01 && f < 1) {
            fprintf(stderr, ", ETA %.0f s", dt * (1 - f) / f);
        }
    }

    fflush(stderr);
}


static void
octl_bar_clear(octl_bar_t *bar)
{
    if (bar->on) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}


/* journals merged and folded: replay, export, report */

static void
octl_skip(void *data, const char *name, uint64_t lineno, const char *reason)
{
    octl_bar_clear(data);
    octl_error("%s:%" PRIu64 ": skipped: %s", name, lineno, reason);
}


/*
 * Merges the journals by time and folds them; cb, when set, sees every
 * usable line with its item and the item's state before the line.
 */

static optout_fold_t *
octl_fold(char **names, size_t n, unsigned threads, const char *what,
    octl_fold_pt cb, void *data, uint64_t *lines, uint64_t *skipped)
{
    int                         rc;
    long                        cpus;
    char                        err[512];
    size_t                      i;
    uint64_t                    size;
    unsigned                    before;
    octl_bar_t                  bar;
    struct stat                 st;
    optout_fold_t              *fold;
    optout_merge_t             *merge;
    optout_fold_item_t         *it;
    const optout_merge_line_t  *l;

    size = 0;

    for (i = 0; i < n; i++) {
        if (stat(names[i], &st) != 0 || !S_ISREG(st.st_mode)) {
            size = 0;
            break;
        }

        size += (uint64_t) st.st_size;
    }

    octl_bar_init(&bar, what, "lines", size);

    if (threads == 0) {
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = (cpus < 1) ? 1
                  : (cpus > OCTL_THREADS_MAX) ? OCTL_THREADS_MAX
                  : (unsigned) cpus;
    }

    merge = optout_merge_create(names, n, threads, octl_skip, &bar, err,
                                sizeof(err));
    if (merge == NULL) {
        octl_error("%s", err);
        return NULL;
    }

    fold = optout_fold_create();
    if (fold == NULL) {
        octl_error("out of memory");
        optout_merge_destroy(merge);
        return NULL;
    }

    while ((rc = optout_merge_next(merge, &l, err, sizeof(err))) == 1) {
        it = optout_fold_apply(fold, &l->e, &before);

        if (it == NULL) {
            octl_error("out of memory");
            break;
        }

        if (cb != NULL) {
            cb(data, l, it, before);
        }

        if ((l->lineno & 0xffff) == 0) {
            octl_bar_show(&bar, optout_merge_lines(merge),
                          optout_merge_bytes(merge));
        }
    }

    octl_bar_clear(&bar);

    if (rc == -1) {
        octl_error("%s", err);
    }

    *lines = optout_merge_lines(merge);
    *skipped = optout_merge_skipped(merge);

    optout_merge_destroy(merge);

    if (rc != 0) {
        optout_fold_destroy(fold);
        return NULL;
    }

    return fold;
}


/* replay */

static int
octl_replay_item(octl_replay_t *ctx, optout_fold_item_t *it)
{
    int                  rc;
    char                 key[OPTOUT_STORE_KEY_MAX + 1];
    char                 value[OPTOUT_VALUE_MAX + 1];
    char                 err[512];
    size_t               key_len, value_len;
    unsigned             op;
    optout_dest_t        dest;

    rc = optout_normalize_dest(optout_fold_dest(it), it->dest_len, &dest);

    if (rc == OPTOUT_OK) {
        rc = optout_store_key(ctx->mac, ctx->prefix, ctx->prefix_len,
                              optout_fold_ns(it), it->ns_len,
                              it->sender_len ? optout_fold_sender(it) : NULL,
                              it->sender_len, &dest, key, &key_len);
    }

    if (rc != OPTOUT_OK) {
        octl_error("cannot compute the store key: %s", optout_strerror(rc));
        return -1;
    }

    value_len = 0;

    /*
     * An opted-in rule is deleted.  A rule born again after an opt-in
     * replaces what the store holds; a rule never removed is added, so an
     * older one (its first campaign) is kept.
     */

    if (it->state == OPTOUT_FOLD_IN) {
        op = OPTOUT_PIPE_DELETE;

    } else {
        op = it->reborn ? OPTOUT_PIPE_SET : OPTOUT_PIPE_ADD;
        value_len = optout_rule_format(&it->rule, value);

        if (value_len == 0) {
            octl_error("cannot format the rule value");
            return -1;
        }
    }

    if (optout_pipe_write(ctx->pipe, op, key, key_len, value, value_len, err,
                          sizeof(err))
        != 0)
    {
        octl_error("memcached write failed: %s; stopped (the journals are "
                   "intact: run replay again)", err);
        return -1;
    }

    return 0;
}


static int
octl_replay(int argc, char **argv)
{
    int                          c, rc;
    char                         err[512];
    size_t                       i, n;
    uint64_t                     lines, skipped, v;
    unsigned                     threads;
    const char                  *conf, *secret, *prefix;
    optout_fold_t               *fold;
    octl_replay_t                ctx;
    optout_fold_item_t         **items;
    const optout_pipe_counts_t  *counts;

    static const struct option  longopts[] = {
        { "store", required_argument, NULL, 'S' },
        { "store-secret", required_argument, NULL, 'K' },
        { "prefix", required_argument, NULL, 'p' },
        { "threads", required_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    conf = NULL;
    secret = NULL;
    prefix = OCTL_DEFAULT_PREFIX;
    threads = 0;

    while ((c = octl_getopt(argc, argv, "replay", ":S:K:p:j:h", longopts))
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
        case 'j':
            if (optout_parse_u64(optarg, strlen(optarg), OCTL_THREADS_MAX,
                                 &v)
                != 0 || v < 1)
            {
                return octl_usage_error("replay", "invalid --threads "
                                        "\"%s\" (1..%d)", optarg,
                                        OCTL_THREADS_MAX);
            }

            threads = (unsigned) v;
            break;
        case 'h':
            return octl_help(octl_replay_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc == optind) {
        return octl_usage_error("replay", "missing JOURNAL");
    }

    rc = octl_store_args("replay", &conf, &secret, prefix);
    if (rc != OCTL_EXIT_OK) {
        return rc;
    }

    memset(&ctx, 0, sizeof(ctx));

    ctx.prefix = prefix;
    ctx.prefix_len = strlen(prefix);

    ctx.mac = octl_load_mac(secret);
    if (ctx.mac == NULL) {
        return OCTL_EXIT_ERROR;
    }

    rc = OCTL_EXIT_ERROR;
    items = NULL;

    fold = octl_fold(argv + optind, argc - optind, threads, "replay", NULL,
                     NULL, &lines, &skipped);
    if (fold == NULL) {
        goto done;
    }

    /* memcached needs no order: the sort is export's */

    items = optout_fold_items(fold, &n);
    if (items == NULL) {
        octl_error("out of memory");
        goto done;
    }

    ctx.memc = octl_memc_open(conf);
    if (ctx.memc == NULL) {
        goto done;
    }

    ctx.pipe = optout_pipe_create(ctx.memc, OCTL_MC_TIMEOUT, err,
                                  sizeof(err));
    if (ctx.pipe == NULL) {
        octl_error("%s", err);
        goto done;
    }

    for (i = 0; i < n; i++) {
        if (octl_replay_item(&ctx, items[i]) != 0) {
            goto done;
        }
    }

    if (optout_pipe_flush(ctx.pipe, err, sizeof(err)) != 0) {
        octl_error("memcached write failed: %s; stopped (the journals are "
                   "intact: run replay again)", err);
        goto done;
    }

    if (octl_mark(ctx.memc, prefix, ctx.prefix_len) != 0) {
        goto done;
    }

    counts = optout_pipe_counts(ctx.pipe);

    printf("replayed %" PRIu64 " records: %" PRIu64 " added, %" PRIu64
           " already present, %" PRIu64 " deleted, %" PRIu64 " skipped\n",
           lines, counts->stored, counts->not_stored,
           counts->deleted + counts->not_found, skipped);

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        goto done;
    }

    rc = OCTL_EXIT_OK;

done:

    free(items);
    optout_fold_destroy(fold);
    optout_pipe_destroy(ctx.pipe);

    if (ctx.memc != NULL) {
        memcached_free(ctx.memc);
    }

    optout_mac_destroy(ctx.mac);

    return rc;
}


/* export */

static void
octl_put_json(FILE *out, const char *s, size_t n)
{
    size_t         i;
    unsigned char  c;

    for (i = 0; i < n; i++) {
        c = (unsigned char) s[i];

        if (c == '"' || c == '\\') {
            putc_unlocked('\\', out);
            putc_unlocked(c, out);

        } else if (c < 0x20 || c >= 0x7f) {
            fprintf(out, "\\u%04x", c);

        } else {
            putc_unlocked(c, out);
        }
    }
}


static void
octl_put_csv(FILE *out, const char *s, size_t n)
{
    size_t  i;

    /* s is NUL-ended: the parts of an item's key are */

    if (strpbrk(s, ",\"\r\n") == NULL) {
        fwrite_unlocked(s, 1, n, out);
        return;
    }

    putc_unlocked('"', out);

    for (i = 0; i < n; i++) {
        if (s[i] == '"') {
            putc_unlocked('"', out);
        }

        putc_unlocked(s[i], out);
    }

    putc_unlocked('"', out);
}


static void
octl_since(int64_t t, char *buf, size_t size)
{
    time_t     tt;
    struct tm  tm;

    tt = (time_t) t;

    if ((int64_t) tt != t || gmtime_r(&tt, &tm) == NULL
        || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    {
        snprintf(buf, size, "%" PRId64, t);
    }
}


static void
octl_export_item(FILE *out, unsigned csv, const optout_fold_item_t *it)
{
    char  since[32];

    octl_since(it->rule.time, since, sizeof(since));

    if (csv) {
        octl_put_csv(out, optout_fold_dest(it), it->dest_len);
        fprintf(out, ",%s,", it->sender_len ? "sender" : "account");
        octl_put_csv(out, optout_fold_sender(it), it->sender_len);
        putc_unlocked(',', out);
        octl_put_csv(out, optout_fold_ns(it), it->ns_len);
        fprintf(out, ",%" PRIu64 ",%s,%s,%s\n", it->rule.campaign, since,
                optout_source_name(it->rule.source),
                optout_channel_name(it->rule.channel));
        return;
    }

    fputs("{\"destination\":\"", out);
    octl_put_json(out, optout_fold_dest(it), it->dest_len);

    if (it->sender_len) {
        fputs("\",\"scope\":\"sender\",\"sender\":\"", out);
        octl_put_json(out, optout_fold_sender(it), it->sender_len);

    } else {
        fputs("\",\"scope\":\"account", out);
    }

    fputs("\",\"namespace\":\"", out);
    octl_put_json(out, optout_fold_ns(it), it->ns_len);

    fprintf(out, "\",\"campaign\":\"%" PRIu64 "\",\"since\":\"%s\","
            "\"source\":\"%s\",\"channel\":\"%s\"}\n", it->rule.campaign,
            since, optout_source_name(it->rule.source),
            optout_channel_name(it->rule.channel));
}


static int
octl_export(int argc, char **argv)
{
    int                   c, rc;
    size_t                i, n;
    uint64_t              lines, skipped;
    unsigned              csv;
    optout_fold_t        *fold;
    optout_fold_item_t  **items;

    static const struct option  longopts[] = {
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    csv = 0;

    while ((c = octl_getopt(argc, argv, "export", ":f:h", longopts)) != -1) {
        switch (c) {
        case 'f':
            if (strcmp(optarg, "csv") == 0) {
                csv = 1;

            } else if (strcmp(optarg, "ndjson") == 0) {
                csv = 0;

            } else {
                return octl_usage_error("export", "invalid --format \"%s\" "
                                        "(csv or ndjson)", optarg);
            }
            break;
        case 'h':
            return octl_help(octl_export_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc == optind) {
        return octl_usage_error("export", "missing JOURNAL");
    }

    fold = octl_fold(argv + optind, argc - optind, 0, "export", NULL, NULL,
                     &lines, &skipped);
    if (fold == NULL) {
        return OCTL_EXIT_ERROR;
    }

    items = optout_fold_sorted(fold, &n);
    if (items == NULL) {
        octl_error("out of memory");
        optout_fold_destroy(fold);
        return OCTL_EXIT_ERROR;
    }

    (void) setvbuf(stdout, octl_stdout_buf, _IOFBF, sizeof(octl_stdout_buf));

    if (csv) {
        fputs("destination,scope,sender,namespace,campaign,since,source,"
              "channel\n", stdout);
    }

    for (i = 0; i < n; i++) {
        if (items[i]->state == OPTOUT_FOLD_OUT) {
            octl_export_item(stdout, csv, items[i]);
        }
    }

    free(items);
    optout_fold_destroy(fold);

    rc = OCTL_EXIT_OK;

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        rc = OCTL_EXIT_ERROR;
    }

    return rc;
}


/* report */

static int
octl_parse_time(const char *s, double *out)
{
    int        n, y, mo, d, h, mi, sec;
    time_t     t;
    uint64_t   v;
    struct tm  tm;

    if (optout_parse_u64(s, strlen(s), UINT64_MAX, &v) == 0) {
        if (v > (uint64_t) INT64_MAX / 2) {
            return -1;
        }

        *out = (double) v;
        return 0;
    }

    h = 0;
    mi = 0;
    sec = 0;
    n = -1;

    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10) {
        return -1;
    }

    if (s[n] == 'T') {
        s += n + 1;
        n = -1;

        if (sscanf(s, "%2d:%2d:%2d%n", &h, &mi, &sec, &n) != 3 || n != 8) {
            return -1;
        }

        if (s[n] == 'Z') {
            n++;
        }
    }

    if (s[n] != '\0') {
        return -1;
    }

    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;

    t = timegm(&tm);

    /* timegm() normalizes: 2026-02-30 would pass otherwise */

    if (t == (time_t) -1 || tm.tm_year != y - 1900 || tm.tm_mon != mo - 1
        || tm.tm_mday != d || tm.tm_hour != h || tm.tm_min != mi
        || tm.tm_sec != sec)
    {
        return -1;
    }

    *out = (double) t;

    return 0;
}


static octl_group_t *
octl_report_group(octl_report_t *ctx, const char *label, uint64_t num)
{
    json_t        *v;
    octl_group_t  *g;

    v = json_object_get(ctx->index, label);

    if (v != NULL) {
        return &ctx->groups[json_integer_value(v)];
    }

    if (ctx->n == ctx->cap) {
        ctx->cap = ctx->cap ? ctx->cap * 2 : 64;
        g = realloc(ctx->groups, ctx->cap * sizeof(octl_group_t));

        if (g == NULL) {
            return NULL;
        }

        ctx->groups = g;
    }

    if (json_object_set_new(ctx->index, label,
                            json_integer((json_int_t) ctx->n))
        != 0)
    {
        return NULL;
    }

    g = &ctx->groups[ctx->n++];

    memset(g, 0, sizeof(octl_group_t));
    snprintf(g->label, sizeof(g->label), "%s", label);
    g->num = num;

    return g;
}


/*
 * A line counts when it changes what the journals know of its rule: a
 * second opt-out of a rule that holds (a second click) or a second opt-in
 * is a repeat.  An opt-in is grouped by the campaign of the rule it
 * removed when the journals hold that rule.
 */

static void
octl_report_line(void *data, const optout_merge_line_t *l,
    optout_fold_item_t *it, unsigned before)
{
    char                           label[OCTL_LABEL_MAX];
    time_t                         t;
    uint64_t                       campaign;
    struct tm                      tm;
    octl_group_t                  *g;
    octl_report_t                 *ctx;
    const optout_journal_entry_t  *e;

    ctx = data;
    e = &l->e;

    if (e->time < ctx->since || e->time >= ctx->until
        || before == (e->optin ? OPTOUT_FOLD_IN : OPTOUT_FOLD_OUT))
    {
        return;
    }

    campaign = 0;

    switch (ctx->by) {

    case OCTL_BY_CAMPAIGN:
        campaign = (e->optin && before == OPTOUT_FOLD_OUT)
                   ? it->rule.campaign : e->rule.campaign;
        snprintf(label, sizeof(label), "%" PRIu64, campaign);
        break;

    case OCTL_BY_SOURCE:
        snprintf(label, sizeof(label), "%s",
                 optout_source_name(e->rule.source));
        break;

    case OCTL_BY_SENDER:
        snprintf(label, sizeof(label), "%.*s", (int) e->sender_len,
                 e->sender);
        break;

    default: /* OCTL_BY_DAY */
        t = (time_t) e->time;

        if (gmtime_r(&t, &tm) == NULL
            || strftime(label, sizeof(label), "%Y-%m-%d", &tm) == 0)
        {
            snprintf(label, sizeof(label), "%" PRId64, (int64_t) t);
        }

        break;
    }

    g = octl_report_group(ctx, label, campaign);

    if (g == NULL) {
        ctx->error = 1;
        return;
    }

    if (e->optin) {
        g->optins++;
        ctx->optins++;

    } else {
        g->optouts++;
        ctx->optouts++;
    }
}


static int
octl_group_cmp(const void *a, const void *b)
{
    const octl_group_t  *x, *y;

    x = a;
    y = b;

    if (x->num != y->num) {
        return (x->num < y->num) ? -1 : 1;
    }

    return strcmp(x->label, y->label);
}


static void
octl_report_table(octl_report_t *ctx)
{
    int          w, nw, len;
    char         num[32];
    size_t       i;
    const char  *label;

    w = (int) strlen("total");

    if ((int) strlen(octl_by_names[ctx->by]) > w) {
        w = (int) strlen(octl_by_names[ctx->by]);
    }

    for (i = 0; i < ctx->n; i++) {
        len = ctx->groups[i].label[0] ? (int) strlen(ctx->groups[i].label)
                                      : (int) strlen(OCTL_ACCOUNT_LABEL);
        if (len > w) {
            w = len;
        }
    }

    nw = snprintf(num, sizeof(num), "%" PRIu64,
                  ctx->optouts > ctx->optins ? ctx->optouts : ctx->optins);

    if (nw < (int) strlen("opt-outs")) {
        nw = (int) strlen("opt-outs");
    }

    printf("%-*s  %*s  %*s\n", w, octl_by_names[ctx->by], nw, "opt-outs",
           nw, "opt-ins");

    for (i = 0; i < ctx->n; i++) {
        label = ctx->groups[i].label[0] ? ctx->groups[i].label
                                        : OCTL_ACCOUNT_LABEL;

        printf("%-*s  %*" PRIu64 "  %*" PRIu64 "\n", w, label, nw,
               ctx->groups[i].optouts, nw, ctx->groups[i].optins);
    }

    printf("%-*s  %*" PRIu64 "  %*" PRIu64 "\n", w, "total", nw,
           ctx->optouts, nw, ctx->optins);
}


static void
octl_report_json(octl_report_t *ctx, const char *since, const char *until)
{
    char         buf[32];
    size_t       i;
    const char  *by;

    by = octl_by_names[ctx->by];

    printf("{\"by\":\"%s\",\"since\":", by);

    if (since != NULL) {
        octl_since((int64_t) ctx->since, buf, sizeof(buf));
        printf("\"%s\"", buf);

    } else {
        fputs("null", stdout);
    }

    fputs(",\"until\":", stdout);

    if (until != NULL) {
        octl_since((int64_t) ctx->until, buf, sizeof(buf));
        printf("\"%s\"", buf);

    } else {
        fputs("null", stdout);
    }

    fputs(",\"groups\":[", stdout);

    for (i = 0; i < ctx->n; i++) {
        printf("%s{\"%s\":\"", i ? "," : "", by);
        octl_put_json(stdout, ctx->groups[i].label,
                      strlen(ctx->groups[i].label));
        printf("\",\"optouts\":%" PRIu64 ",\"optins\":%" PRIu64 "}",
               ctx->groups[i].optouts, ctx->groups[i].optins);
    }

    printf("],\"total\":{\"optouts\":%" PRIu64 ",\"optins\":%" PRIu64
           "}}\n", ctx->optouts, ctx->optins);
}


static int
octl_report(int argc, char **argv)
{
    int              c, rc;
    size_t           i;
    uint64_t         lines, skipped;
    unsigned         format;
    const char      *since, *until;
    optout_fold_t   *fold;
    octl_report_t    ctx;

    static const char  *formats[] = { "table", "csv", "json", NULL };
    static const struct option  longopts[] = {
        { "since", required_argument, NULL, 's' },
        { "until", required_argument, NULL, 'u' },
        { "by", required_argument, NULL, 'b' },
        { "format", required_argument, NULL, 'f' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    memset(&ctx, 0, sizeof(ctx));
    ctx.since = -1;
    ctx.until = INFINITY;
    format = 0;
    since = NULL;
    until = NULL;

    while ((c = octl_getopt(argc, argv, "report", ":s:u:b:f:h", longopts))
           != -1)
    {
        switch (c) {
        case 's':
        case 'u':
            if (octl_parse_time(optarg, c == 's' ? &ctx.since : &ctx.until)
                != 0)
            {
                return octl_usage_error("report", "invalid --%s \"%s\" "
                                        "(YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ "
                                        "or unix seconds)",
                                        c == 's' ? "since" : "until",
                                        optarg);
            }

            if (c == 's') {
                since = optarg;

            } else {
                until = optarg;
            }

            break;
        case 'b':
            for (i = 0; octl_by_names[i] != NULL; i++) {
                if (strcmp(optarg, octl_by_names[i]) == 0) {
                    break;
                }
            }

            if (octl_by_names[i] == NULL) {
                return octl_usage_error("report", "invalid --by \"%s\" "
                                        "(campaign, source, sender or day)",
                                        optarg);
            }

            ctx.by = (unsigned) i;
            break;
        case 'f':
            for (i = 0; formats[i] != NULL; i++) {
                if (strcmp(optarg, formats[i]) == 0) {
                    break;
                }
            }

            if (formats[i] == NULL) {
                return octl_usage_error("report", "invalid --format \"%s\" "
                                        "(table, csv or json)", optarg);
            }

            format = (unsigned) i;
            break;
        case 'h':
            return octl_help(octl_report_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (argc == optind) {
        return octl_usage_error("report", "missing JOURNAL");
    }

    ctx.index = json_object();
    if (ctx.index == NULL) {
        octl_error("out of memory");
        return OCTL_EXIT_ERROR;
    }

    rc = OCTL_EXIT_ERROR;

    fold = octl_fold(argv + optind, argc - optind, 0, "report",
                     octl_report_line, &ctx, &lines, &skipped);
    if (fold == NULL) {
        goto done;
    }

    if (ctx.error) {
        octl_error("out of memory");
        goto done;
    }

    if (ctx.n > 1) {
        qsort(ctx.groups, ctx.n, sizeof(octl_group_t), octl_group_cmp);
    }

    if (format == 0) {
        octl_report_table(&ctx);

    } else if (format == 1) {
        printf("%s,optouts,optins\n", octl_by_names[ctx.by]);

        for (i = 0; i < ctx.n; i++) {
            octl_put_csv(stdout, ctx.groups[i].label,
                         strlen(ctx.groups[i].label));
            printf(",%" PRIu64 ",%" PRIu64 "\n", ctx.groups[i].optouts,
                   ctx.groups[i].optins);
        }

    } else {
        octl_report_json(&ctx, since, until);
    }

    rc = OCTL_EXIT_OK;

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        rc = OCTL_EXIT_ERROR;
    }

done:

    optout_fold_destroy(fold);
    json_decref(ctx.index);
    free(ctx.groups);

    return rc;
}


/* import */

static size_t
octl_curl_write(char *ptr, size_t size, size_t nmemb, void *data)
{
    char         *p;
    size_t        n, cap;
    octl_xfer_t  *ctx;

    ctx = data;
    n = size * nmemb;

    if (ctx->resp_len + n + 1 > ctx->resp_cap) {
        cap = (ctx->resp_len + n + 1) * 2;
        p = realloc(ctx->resp, cap);

        if (p == NULL) {
            return 0;
        }

        ctx->resp = p;
        ctx->resp_cap = cap;
    }

    memcpy(ctx->resp + ctx->resp_len, ptr, n);
    ctx->resp_len += n;
    ctx->resp[ctx->resp_len] = '\0';

    return n;
}


static void
octl_import_msg(octl_import_t *ctx, const char *fmt, ...)
{
    va_list  args;

    fflush(stdout);

    if (ctx->bar.on) {
        fputs("\r\033[K", stderr);
    }

    fputs("optoutctl: ", stderr);

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fputc('\n', stderr);
}


static void
octl_import_bar(octl_import_t *ctx)
{
    octl_bar_show(&ctx->bar, ctx->added + ctx->present + ctx->invalid,
                  ctx->pos);
}


static void
octl_import_invalid(octl_import_t *ctx, uint64_t lineno, const char *reason)
{
    ctx->invalid++;
    octl_import_msg(ctx, "%s:%" PRIu64 ": invalid: %s", ctx->name, lineno,
                    reason);
}


/* the answer to one chunk; -1: refused */

static int
octl_import_answer(octl_import_t *ctx, octl_xfer_t *x, long status)
{
    json_t        *root, *results, *r, *v;
    size_t         i, n;
    uint64_t       added, present, invalid;
    const char    *s, *detail;
    json_error_t   jerr;

    n = x->n;

    /*
     * Every item added or present needs no more than the counts that open
     * the answer; the 10,000 results are read only when one is invalid.
     */

    if (status == 200 && x->resp != NULL
        && sscanf(x->resp, "{\"added\":%" SCNu64 ",\"present\":%" SCNu64
                  ",\"invalid\":%" SCNu64 ",", &added, &present, &invalid)
           == 3
        && invalid == 0 && added + present == n)
    {
        ctx->added += added;
        ctx->present += present;
        return 0;
    }

    root = json_loadb(x->resp ? x->resp : "", x->resp_len, 0, &jerr);

    if (status != 200) {
        detail = NULL;
        v = json_array_get(json_object_get(root, "errors"), 0);

        if (v != NULL) {
            detail = json_string_value(json_object_get(v, "detail"));
            if (detail == NULL) {
                detail = json_string_value(json_object_get(v, "title"));
            }
        }

        octl_import_msg(ctx, "%s:%" PRIu64 "-%" PRIu64 ": refused: HTTP "
                        "%ld%s%s%s", ctx->name, x->lines[0],
                        x->lines[n - 1], status, detail ? ": " : "",
                        detail ? detail : "",
                        status == 413 ? " (raise client_max_body_size in "
                        "the API location, or use a smaller --chunk)" : "");
        json_decref(root);
        return -1;
    }

    results = json_object_get(root, "results");

    if (!json_is_array(results) || json_array_size(results) != n) {
        octl_import_msg(ctx, "%s:%" PRIu64 "-%" PRIu64 ": refused: the "
                        "answer is not the API's", ctx->name, x->lines[0],
                        x->lines[n - 1]);
        json_decref(root);
        return -1;
    }

    json_array_foreach(results, i, r) {
        s = json_string_value(json_object_get(r, "status"));

        if (s != NULL && strcmp(s, "added") == 0) {
            ctx->added++;

        } else if (s != NULL && strcmp(s, "present") == 0) {
            ctx->present++;

        } else {
            s = json_string_value(json_object_get(r, "reason"));
            octl_import_invalid(ctx, x->lines[i], s ? s : "refused");
        }
    }

    json_decref(root);

    return 0;
}


/* moves every request in flight on, without blocking */

static int
octl_import_pump(octl_import_t *ctx)
{
    int           running, left;
    CURLMsg      *msg;
    octl_xfer_t  *y;

    if (curl_multi_perform(ctx->multi, &running) != CURLM_OK) {
        octl_import_msg(ctx, "libcurl failed");
        return -1;
    }

    while ((msg = curl_multi_info_read(ctx->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE
            && curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
                                 (char **) &y)
               == CURLE_OK)
        {
            y->done = 1;
            y->result = msg->data.result;
        }
    }

    return 0;
}


/* waits for the oldest request in flight and reads its answer */

static int
octl_import_wait(octl_import_t *ctx)
{
    int           rc;
    long          status;
    octl_xfer_t  *x;

    x = &ctx->xfers[ctx->head];

    while (!x->done) {
        if (octl_import_pump(ctx) != 0) {
            return -1;
        }

        if (!x->done
            && curl_multi_poll(ctx->multi, NULL, 0, 1000, NULL) != CURLM_OK)
        {
            octl_import_msg(ctx, "libcurl failed");
            return -1;
        }
    }

    (void) curl_multi_remove_handle(ctx->multi, x->curl);

    if (x->result != CURLE_OK) {
        octl_import_msg(ctx, "%s:%" PRIu64 "-%" PRIu64 ": not sent: %s",
                        ctx->name, x->lines[0], x->lines[x->n - 1],
                        x->errbuf[0] ? x->errbuf
                                     : curl_easy_strerror(x->result));
        rc = -1;

    } else {
        status = 0;
        (void) curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
        rc = octl_import_answer(ctx, x, status);
    }

    curl_slist_free_all(x->headers);
    free(x->body);
    x->headers = NULL;
    x->body = NULL;
    x->done = 0;

    ctx->head = (ctx->head + 1) % ctx->nxfers;
    ctx->inflight--;

    octl_import_bar(ctx);

    return rc;
}


/* every request in flight answered; -1: one was refused or not sent */

static int
octl_import_drain(octl_import_t *ctx)
{
    int  rc;

    rc = 0;

    while (ctx->inflight > 0) {
        if (octl_import_wait(ctx) != 0) {
            rc = -1;
        }
    }

    return rc;
}


/* the chunk as the next request; the oldest is answered first if need be */

static int
octl_import_send(octl_import_t *ctx)
{
    char               hdr[sizeof("X-Optout-Namespace: ")
                           + OPTOUT_NAMESPACE_MAX];
    uint64_t          *lines;
    struct curl_slist  *h;
    octl_xfer_t       *x;

    if (json_array_size(ctx->chunk) == 0) {
        return 0;
    }

    if (ctx->inflight == ctx->nxfers && octl_import_wait(ctx) != 0) {
        return -1;
    }

    x = &ctx->xfers[(ctx->head + ctx->inflight) % ctx->nxfers];

    x->body = json_dumps(ctx->chunk, JSON_COMPACT);
    if (x->body == NULL) {
        octl_import_msg(ctx, "out of memory");
        return -1;
    }

    x->headers = curl_slist_append(NULL, "Content-Type: application/json");
    h = x->headers ? curl_slist_append(x->headers, "Expect:") : NULL;

    if (h != NULL && ctx->ns[0] != '\0') {
        snprintf(hdr, sizeof(hdr), "X-Optout-Namespace: %s", ctx->ns);
        h = curl_slist_append(x->headers, hdr);
    }

    if (h == NULL) {
        octl_import_msg(ctx, "out of memory");
        curl_slist_free_all(x->headers);
        free(x->body);
        x->headers = NULL;
        x->body = NULL;
        return -1;
    }

    /* the line numbers go with the request; its old array takes the next */

    lines = x->lines;
    x->lines = ctx->lines;
    ctx->lines = lines;
    x->n = json_array_size(ctx->chunk);
    x->resp_len = 0;
    x->errbuf[0] = '\0';
    x->done = 0;

    json_array_clear(ctx->chunk);

    curl_easy_setopt(x->curl, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(x->curl, CURLOPT_POSTFIELDS, x->body);
    curl_easy_setopt(x->curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t) strlen(x->body));

    if (curl_multi_add_handle(ctx->multi, x->curl) != CURLM_OK) {
        octl_import_msg(ctx, "libcurl failed");
        return -1;
    }

    ctx->inflight++;

    return octl_import_pump(ctx);
}


/* one CSV field: unquoted, or quoted with "" for a quote */

static const char *
octl_csv_field(const char *p, const char *end, char *out, size_t size,
    const char **next)
{
    size_t  n;

    n = 0;

    if (p < end && *p == '"') {
        for (p++; ; p++) {
            if (p == end) {
                return "unterminated quote";
            }

            if (*p == '"') {
                if (p + 1 < end && p[1] == '"') {
                    p++;

                } else {
                    p++;
                    break;
                }
            }

            if (n + 1 >= size) {
                return "field too long";
            }

            out[n++] = *p;
        }

        if (p < end && *p != ',') {
            return "text after a quoted field";
        }

    } else {
        for ( /* void */ ; p < end && *p != ','; p++) {
            if (*p == '"') {
                return "quote inside a field";
            }

            if (n + 1 >= size) {
                return "field too long";
            }

            out[n++] = *p;
        }
    }

    out[n] = '\0';
    *next = (p < end) ? p + 1 : NULL;

    return NULL;
}


/* a CSV line into an API item: columns[] gives each field's name */

static const char *
octl_csv_item(octl_import_t *ctx, const char *line, size_t len,
    json_t *item, char *ns)
{
    char          field[OCTL_FIELD_MAX];
    size_t        i;
    const char   *p, *end, *err, *name;

    p = line;
    end = line + len;
    ns[0] = '\0';

    for (i = 0; p != NULL; i++) {
        err = octl_csv_field(p, end, field, sizeof(field), &p);
        if (err != NULL) {
            return err;
        }

        if (i == ctx->ncolumns) {
            return "too many fields";
        }

        name = ctx->columns[i];

        if (name == NULL || field[0] == '\0') {
            continue;
        }

        if (strcmp(name, "namespace") == 0) {
            if (optout_check_namespace(field, strlen(field)) != OPTOUT_OK) {
                return "namespace";
            }

            strcpy(ns, field);
            continue;
        }

        if (json_object_set_new(item, name, json_string(field)) != 0) {
            return "not UTF-8";
        }
    }

    return NULL;
}


static const char *
octl_ndjson_item(const char *line, size_t len, json_t *item, char *ns)
{
    size_t        i;
    json_t       *root, *v;
    const char   *s;
    json_error_t  jerr;

    static const char  *fields[] = {
        "destination", "sender", "campaign", "channel", "source", "since",
        NULL
    };

    ns[0] = '\0';

    root = json_loadb(line, len, 0, &jerr);
    if (root == NULL) {
        return "not valid JSON";
    }

    if (!json_is_object(root)) {
        json_decref(root);
        return "not an object";
    }

    s = json_string_value(json_object_get(root, "namespace"));

    if (s != NULL && s[0] != '\0') {
        if (optout_check_namespace(s, strlen(s)) != OPTOUT_OK) {
            json_decref(root);
            return "namespace";
        }

        strcpy(ns, s);
    }

    for (i = 0; fields[i] != NULL; i++) {
        v = json_object_get(root, fields[i]);

        if (v == NULL || (json_is_string(v) && json_string_length(v) == 0))
        {
            continue;
        }

        if (json_object_set(item, fields[i], v) != 0) {
            json_decref(root);
            return "out of memory";
        }
    }

    json_decref(root);

    return NULL;
}


/* a first CSV line that names its columns */

static int
octl_csv_header(octl_import_t *ctx, const char *line, size_t len)
{
    char         field[OCTL_FIELD_MAX];
    size_t       i, k;
    const char  *p, *end;

    static const char  *names[] = {
        "destination", "sender", "campaign", "channel", "source", "since",
        "namespace", NULL
    };

    p = line;
    end = line + len;

    if (octl_csv_field(p, end, field, sizeof(field), &p) != NULL
        || strcasecmp(field, "destination") != 0)
    {
        return 0;
    }

    ctx->ncolumns = 0;
    p = line;

    for (i = 0; p != NULL && i < OCTL_COLUMNS_MAX; i++) {
        if (octl_csv_field(p, end, field, sizeof(field), &p) != NULL) {
            return 0;
        }

        ctx->columns[i] = NULL;

        for (k = 0; names[k] != NULL; k++) {
            if (strcasecmp(field, names[k]) == 0) {
                ctx->columns[i] = names[k];
            }
        }

        ctx->ncolumns++;
    }

    return 1;
}


static int
octl_import_line(octl_import_t *ctx, const char *line, size_t len,
    uint64_t lineno)
{
    char         ns[OPTOUT_NAMESPACE_MAX + 1];
    json_t      *item;
    const char  *err;

    item = json_object();
    if (item == NULL) {
        octl_import_msg(ctx, "out of memory");
        return -1;
    }

    err = ctx->ndjson ? octl_ndjson_item(line, len, item, ns)
                      : octl_csv_item(ctx, line, len, item, ns);

    if (err == NULL && json_object_get(item, "destination") == NULL) {
        err = "destination";
    }

    ctx->items++;

    if (err != NULL) {
        json_decref(item);
        octl_import_invalid(ctx, lineno, err);
        return 0;
    }

    if (json_object_get(item, "source") == NULL
        && json_object_set_new(item, "source", json_string("import")) != 0)
    {
        json_decref(item);
        octl_import_msg(ctx, "out of memory");
        return -1;
    }

    /* one namespace a chunk: it travels in a header */

    if (strcmp(ns, ctx->ns) != 0 || json_array_size(ctx->chunk) == ctx->max)
    {
        if (octl_import_send(ctx) != 0) {
            json_decref(item);
            return -1;
        }

        strcpy(ctx->ns, ns);
    }

    ctx->lines[json_array_size(ctx->chunk)] = lineno;

    if (json_array_append_new(ctx->chunk, item) != 0) {
        octl_import_msg(ctx, "out of memory");
        return -1;
    }

    return 0;
}


static int
octl_import_read(octl_import_t *ctx, FILE *fp)
{
    char      *line, *p;
    size_t     cap, len;
    ssize_t    n;
    uint64_t   lineno;
    unsigned   first;

    line = NULL;
    cap = 0;
    lineno = 0;
    first = 1;

    while ((n = getline(&line, &cap, fp)) != -1) {
        lineno++;
        ctx->pos += (uint64_t) n;
        len = (size_t) n;

        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'
                           || line[len - 1] == ' '))
        {
            len--;
        }

        p = line;

        /* a byte order mark, as spreadsheets write them */

        if (first && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
            p += 3;
        }

        for ( /* void */ ; p < line + len && (*p == ' ' || *p == '\t'); p++)
        {
            /* void */
        }

        if (p == line + len) {
            continue;
        }

        if (first) {
            first = 0;
            ctx->ndjson = (*p == '{');

            if (!ctx->ndjson
                && octl_csv_header(ctx, p, len - (size_t) (p - line)))
            {
                continue;
            }
        }

        if (octl_import_line(ctx, p, len - (size_t) (p - line), lineno)
            != 0)
        {
            free(line);
            return -1;
        }
    }

    free(line);

    if (ferror(fp)) {
        octl_import_msg(ctx, "%s: %s", ctx->name, strerror(errno));
        return -1;
    }

    return octl_import_send(ctx);
}


/* one request's handle: every transfer of an import is set up alike */

static int
octl_import_easy(octl_xfer_t *x, const char *url, const char *user,
    const char *cacert, const char *cert, const char *key)
{
    if (curl_easy_setopt(x->curl, CURLOPT_URL, url) != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_PRIVATE, x) != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_ERRORBUFFER, x->errbuf)
           != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_WRITEFUNCTION, octl_curl_write)
           != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_WRITEDATA, x) != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_CONNECTTIMEOUT, 10L)
           != CURLE_OK
        || curl_easy_setopt(x->curl, CURLOPT_TIMEOUT, 300L) != CURLE_OK
        || (user != NULL && user[0] != '\0'
            && curl_easy_setopt(x->curl, CURLOPT_USERPWD, user) != CURLE_OK)
        || (cacert != NULL
            && curl_easy_setopt(x->curl, CURLOPT_CAINFO, cacert)
               != CURLE_OK)
        || (cert != NULL
            && curl_easy_setopt(x->curl, CURLOPT_SSLCERT, cert) != CURLE_OK)
        || (key != NULL
            && curl_easy_setopt(x->curl, CURLOPT_SSLKEY, key) != CURLE_OK))
    {
        return -1;
    }

    return 0;
}


static int
octl_import(int argc, char **argv)
{
    int             c, rc;
    FILE           *fp;
    size_t          i;
    uint64_t        v;
    octl_xfer_t    *x;
    const char     *url, *user, *cacert, *cert, *key;
    struct stat     st;
    octl_import_t   ctx;

    static const char  *csv_columns[] = {
        "destination", "sender", "campaign", "channel"
    };
    static const struct option  longopts[] = {
        { "url", required_argument, NULL, 'u' },
        { "user", required_argument, NULL, 'U' },
        { "cacert", required_argument, NULL, 'C' },
        { "cert", required_argument, NULL, 'E' },
        { "key", required_argument, NULL, 'k' },
        { "chunk", required_argument, NULL, 'c' },
        { "parallel", required_argument, NULL, 'P' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };

    memset(&ctx, 0, sizeof(ctx));
    ctx.max = OCTL_CHUNK_MAX;
    ctx.nxfers = OCTL_PARALLEL;
    url = NULL;
    user = getenv("OPTOUT_API_USER");
    cacert = NULL;
    cert = NULL;
    key = NULL;

    while ((c = octl_getopt(argc, argv, "import", ":u:U:C:E:k:c:P:h",
                            longopts))
           != -1)
    {
        switch (c) {
        case 'u':
            url = optarg;
            break;
        case 'U':
            user = optarg;
            break;
        case 'C':
            cacert = optarg;
            break;
        case 'E':
            cert = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'c':
            if (optout_parse_u64(optarg, strlen(optarg), OCTL_CHUNK_MAX, &v)
                != 0 || v < 1)
            {
                return octl_usage_error("import", "invalid --chunk \"%s\" "
                                        "(1..%d)", optarg, OCTL_CHUNK_MAX);
            }

            ctx.max = (size_t) v;
            break;
        case 'P':
            if (optout_parse_u64(optarg, strlen(optarg), OCTL_PARALLEL_MAX,
                                 &v)
                != 0 || v < 1)
            {
                return octl_usage_error("import", "invalid --parallel "
                                        "\"%s\" (1..%d)", optarg,
                                        OCTL_PARALLEL_MAX);
            }

            ctx.nxfers = (size_t) v;
            break;
        case 'h':
            return octl_help(octl_import_usage);
        default:
            return OCTL_EXIT_USAGE;
        }
    }

    if (url == NULL) {
        return octl_usage_error("import", "missing --url");
    }

    if (argc - optind > 1) {
        return octl_usage_error("import", "too many arguments");
    }

    ctx.name = (optind < argc) ? argv[optind] : "-";

    if (strcmp(ctx.name, "-") == 0) {
        fp = stdin;
        ctx.name = "stdin";

    } else {
        fp = fopen(ctx.name, "re");

        if (fp == NULL) {
            octl_error("%s: %s", ctx.name, strerror(errno));
            return OCTL_EXIT_ERROR;
        }
    }

    if (fstat(fileno(fp), &st) == 0 && S_ISREG(st.st_mode)) {
        ctx.size = (uint64_t) st.st_size;
    }

    octl_bar_init(&ctx.bar, "import", "rules", ctx.size);
    memcpy(ctx.columns, csv_columns, sizeof(csv_columns));
    ctx.ncolumns = 4;

    rc = OCTL_EXIT_ERROR;

    ctx.chunk = json_array();
    ctx.lines = malloc(ctx.max * sizeof(uint64_t));
    ctx.xfers = calloc(ctx.nxfers, sizeof(octl_xfer_t));

    if (ctx.chunk == NULL || ctx.lines == NULL || ctx.xfers == NULL
        || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK
        || (ctx.multi = curl_multi_init()) == NULL)
    {
        octl_error("cannot initialize: out of memory");
        goto done;
    }

    for (i = 0; i < ctx.nxfers; i++) {
        x = &ctx.xfers[i];
        x->lines = malloc(ctx.max * sizeof(uint64_t));
        x->curl = curl_easy_init();

        if (x->lines == NULL || x->curl == NULL) {
            octl_error("cannot initialize: out of memory");
            goto done;
        }

        if (octl_import_easy(x, url, user, cacert, cert, key) != 0) {
            octl_error("invalid --url or TLS option (libcurl refused it)");
            goto done;
        }
    }

    /* what was sent is answered and counted, even after a refusal */

    c = octl_import_read(&ctx, fp);

    if (octl_import_drain(&ctx) == 0 && c == 0) {
        rc = OCTL_EXIT_OK;

    } else {
        octl_import_msg(&ctx, "stopped: run the import again, the rules "
                        "already added are then answered \"present\"");
    }

    octl_bar_clear(&ctx.bar);

    printf("imported %" PRIu64 " rules: %" PRIu64 " added, %" PRIu64
           " already present, %" PRIu64 " invalid, %" PRIu64 " not "
           "imported\n", ctx.items, ctx.added, ctx.present, ctx.invalid,
           ctx.items - ctx.added - ctx.present - ctx.invalid);

    if (ctx.invalid > 0 || ctx.items != ctx.added + ctx.present + ctx.invalid)
    {
        rc = OCTL_EXIT_ERROR;
    }

    if (fflush(stdout) == EOF || ferror(stdout)) {
        octl_error("writing stdout: %s", strerror(errno));
        rc = OCTL_EXIT_ERROR;
    }

done:

    for (i = 0; ctx.xfers != NULL && i < ctx.nxfers; i++) {
        x = &ctx.xfers[i];

        if (x->curl != NULL) {
            (void) curl_multi_remove_handle(ctx.multi, x->curl);
            curl_easy_cleanup(x->curl);
        }

        curl_slist_free_all(x->headers);
        free(x->body);
        free(x->lines);
        free(x->resp);
    }

    if (ctx.multi != NULL) {
        (void) curl_multi_cleanup(ctx.multi);
    }

    curl_global_cleanup();
    json_decref(ctx.chunk);
    free(ctx.xfers);
    free(ctx.lines);

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
          "See optoutctl(1) or docs/optoutctl.md.\n", out);

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
