/*
 * Where libmemcached puts keys: used by t/59-placement.t to compare the
 * module's configuration strings with the settings other libmemcached
 * clients (pylibmc, PHP Memcached) make.  Nothing is sent to a server.
 *
 *   placement --conf STRING [BEHAVIOR=VALUE ...] < keys
 *       the client as the module and optoutctl make it: memcached(STRING)
 *   placement --servers HOST:PORT[,HOST:PORT...] [BEHAVIOR=VALUE ...]
 *       the client as pylibmc and PHP make it: memcached_create() and
 *       memcached_server_add() per server, then the behaviors
 *
 * BEHAVIOR: distribution=modula|consistent|consistent_ketama,
 * hash=default|md5, ketama=0|1, ketama_weighted=0|1.  Reads one key a
 * line, prints "KEY<TAB>N<TAB>HOST:PORT" for each, N the position of the
 * server in the list.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libmemcached/memcached.h>


static int set_behavior(memcached_st *mc, const char *arg);
static int add_servers(memcached_st *mc, char *list);


int
main(int argc, char **argv)
{
    int            i;
    char           key[256];
    size_t         len;
    uint32_t       s;
    memcached_st  *mc;

    const memcached_instance_st  *server;

    if (argc < 3) {
        fprintf(stderr, "usage: placement --conf STRING|--servers LIST "
                        "[BEHAVIOR=VALUE ...] < keys\n");
        return 2;
    }

    if (strcmp(argv[1], "--conf") == 0) {
        mc = memcached(argv[2], strlen(argv[2]));

    } else if (strcmp(argv[1], "--servers") == 0) {
        mc = memcached_create(NULL);

        if (mc != NULL && add_servers(mc, argv[2]) != 0) {
            return 1;
        }

    } else {
        fprintf(stderr, "placement: --conf or --servers expected\n");
        return 2;
    }

    if (mc == NULL) {
        fprintf(stderr, "placement: cannot create the client\n");
        return 1;
    }

    for (i = 3; i < argc; i++) {
        if (set_behavior(mc, argv[i]) != 0) {
            fprintf(stderr, "placement: cannot set \"%s\"\n", argv[i]);
            return 1;
        }
    }

    while (fgets(key, sizeof(key), stdin) != NULL) {
        len = strcspn(key, "\r\n");
        key[len] = '\0';

        if (len == 0) {
            continue;
        }

        s = memcached_generate_hash(mc, key, len);
        server = memcached_server_instance_by_position(mc, s);

        if (server == NULL) {
            fprintf(stderr, "placement: no server for \"%s\"\n", key);
            return 1;
        }

        printf("%s\t%u\t%s:%u\n", key, (unsigned) s,
               memcached_server_name(server),
               (unsigned) memcached_server_port(server));
    }

    memcached_free(mc);

    return 0;
}


static int
add_servers(memcached_st *mc, char *list)
{
    char  *host, *port, *next;

    for (host = list; host != NULL; host = next) {
        next = strchr(host, ',');

        if (next != NULL) {
            *next++ = '\0';
        }

        port = strrchr(host, ':');
        if (port == NULL) {
            fprintf(stderr, "placement: \"%s\" is not HOST:PORT\n", host);
            return -1;
        }

        *port++ = '\0';

        if (memcached_server_add(mc, host, (in_port_t) atoi(port))
            != MEMCACHED_SUCCESS)
        {
            fprintf(stderr, "placement: cannot add \"%s\"\n", host);
            return -1;
        }
    }

    return 0;
}


static int
set_behavior(memcached_st *mc, const char *arg)
{
    uint64_t              v;
    const char           *eq;
    memcached_behavior_t  b;

    eq = strchr(arg, '=');
    if (eq == NULL) {
        return -1;
    }

    eq++;

    if (strncmp(arg, "distribution=", eq - arg) == 0) {
        b = MEMCACHED_BEHAVIOR_DISTRIBUTION;
        v = strcmp(eq, "modula") == 0 ? MEMCACHED_DISTRIBUTION_MODULA
            : strcmp(eq, "consistent") == 0 ? MEMCACHED_DISTRIBUTION_CONSISTENT
            : strcmp(eq, "consistent_ketama") == 0
              ? MEMCACHED_DISTRIBUTION_CONSISTENT_KETAMA
            : MEMCACHED_DISTRIBUTION_CONSISTENT_MAX;

    } else if (strncmp(arg, "hash=", eq - arg) == 0) {
        b = MEMCACHED_BEHAVIOR_HASH;
        v = strcmp(eq, "default") == 0 ? MEMCACHED_HASH_DEFAULT
            : strcmp(eq, "md5") == 0 ? MEMCACHED_HASH_MD5
            : MEMCACHED_HASH_MAX;

    } else if (strncmp(arg, "ketama=", eq - arg) == 0) {
        b = MEMCACHED_BEHAVIOR_KETAMA;
        v = strtoull(eq, NULL, 10);

    } else if (strncmp(arg, "ketama_weighted=", eq - arg) == 0) {
        b = MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED;
        v = strtoull(eq, NULL, 10);

    } else {
        return -1;
    }

    if (v == MEMCACHED_DISTRIBUTION_CONSISTENT_MAX && b
        == MEMCACHED_BEHAVIOR_DISTRIBUTION)
    {
        return -1;
    }

    if (v == MEMCACHED_HASH_MAX && b == MEMCACHED_BEHAVIOR_HASH) {
        return -1;
    }

    return memcached_behavior_set(mc, b, v) == MEMCACHED_SUCCESS ? 0 : -1;
}
