/*
 * hotsnap: the command. A thin client of libhotsnap: it parses argv, runs the
 * engine on its own loop, prints events and a summary, and exits with 0 only
 * when every snapshot succeeded (1 when one failed, 2 for bad input).
 */
#include <errno.h>
#include <limits.h>
#include <fnmatch.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hotsnap.h"
#include "agent/agent.h"
#include "agent/api.h"
#include "agent/files.h"
#include "progress.h"

#define EXIT_FAILED 1
#define EXIT_USAGE 2

struct cli {
    uv_loop_t loop;
    struct hs_engine *eng;
    struct hs_engine_opts eopts;
    struct hs_snapshot_opts sopts;
    struct hs_cli_out out;
    const char *command;
    char **domains;
    int ndomains;
    int all;
    int include_shutoff;
    int verbose;
    char *token;       /* --token, copied before argv is scrubbed */
    const char *match; /* --match GLOB */
    const char *from;  /* --from FILE */
    struct hs_prune_opts prune; /* --keep-*, --dry-run */
    int prune_opt;
    struct hs_agent_config agent; /* the agent's own options */
    struct ag_target *targets;    /* --allow-target */
    int ntargets;
    char *transport_url;          /* --transport-url, copied before argv is scrubbed */
    uint64_t t0;       /* when the snapshots started */
    uv_signal_t sigint, sigterm, sighup;
    int signals;
    int interrupted; /* a signal came before any snapshot started */
    uint64_t last_sigint;
    struct result {
        struct hs_job *job;
        char *domain;
        int status;
    } * results;
    int nresults;
    int running;
    int exit_code;
};

static void usage(FILE *f)
{
    fputs(
        "usage: hotsnap [options] snapshot DOMAIN... | snapshot --all\n"
        "       hotsnap [options] list\n"
        "       hotsnap [options] recover\n"
        "       hotsnap [--to dir:PATH] verify\n"
        "       hotsnap [--to dir:PATH] prune --keep-last N [--keep-daily D]\n"
        "               [--keep-weekly W] [--dry-run]\n"
        "       hotsnap [options] agent\n"
        "\n"
        "  -c, --connect URI      libvirt URI (default " HS_DEFAULT_URI ")\n"
        "      --state-dir DIR    journal, scratch and default store (default " HS_DEFAULT_STATE_DIR
        ")\n"
        "      --json             print events and results as JSON lines\n"
        "  -v, --verbose          log to stderr and report the worst loop stall\n"
        "  -q, --quiet            print only errors and the summary\n"
        "\n"
        "snapshot options:\n"
        "      --all              every running and paused domain\n"
        "      --include-shutoff  with --all or --match: shut-off domains too\n"
        "      --match GLOB       running and paused domains whose name matches GLOB\n"
        "      --from FILE        domains from FILE (- for stdin): a name per line, or JSON\n"
        "                         lines {\"domain\":..., \"name\", \"mode\", \"format\",\n"
        "                         \"all_disks\", \"priority\"}; # starts a comment\n"
        "      --name TEMPLATE    image name: {domain} {uuid} {date} {time} {disk}\n"
        "                         (default {domain}-{date}-{time})\n"
        "      --mode MODE        auto, stream, live, mirror, cold or offline (default auto:\n"
        "                         stream for running and paused domains, offline when shut\n"
        "                         off; live is the backup API's push mode into scratch)\n"
        "      --quiesce WHEN     auto, required or off: freeze the guest's filesystems for\n"
        "                         the instant of a live capture (default auto)\n"
        "      --format FORMAT    qcow2 or raw (default qcow2)\n"
        "      --compress         compress qcow2 images\n"
        "      --all-disks        every disk, one image each (default: the root disk)\n"
        "      --to TARGET        where images go: dir:PATH (default dir:<state-dir>/images),\n"
        "                         glance (endpoint from Keystone, OS_* variables) or\n"
        "                         glance:URL (with --token or OS_TOKEN, or no auth)\n"
        "      --token TOKEN      auth token for glance:URL (OS_TOKEN keeps it out of the\n"
        "                         process list)\n"
        "      --image-id ID      the image's id (one disk; default: a random UUID, so a\n"
        "                         retried create never makes a second record)\n"
        "      --max-rate RATE    upload rate limit per image, e.g. 50M (bytes/s)\n"
        "      --attempts N       tries per upload for transient failures (default 5)\n"
        "      --stall-timeout S  seconds an upload may make no progress before it is\n"
        "                         retried (default 30)\n"
        "      --glance-outage S  seconds Glance may be away (refused, 502-504: a restart)\n"
        "                         before an upload fails; such tries are not attempts\n"
        "                         (default 180; 0: they are)\n"
        "      --store-mode MODE  file mode of images in a dir: store, octal (default 0600:\n"
        "                         root only; e.g. 0640 to serve the store to a group)\n"
        "      --store-digest ALG the digest a dir: store's sidecar records, each byte\n"
        "                         hashed once: xxh128 (default), sha256 or sha512\n"
        "      --incremental      a dir: store's incremental chain: the first image full,\n"
        "                         each next one a qcow2 overlay of the one before holding\n"
        "                         only what the guest changed since (running or paused\n"
        "                         guests; a disk whose chain cannot go on is read in\n"
        "                         full, and the reason said)\n"
        "      --rotation N       Glance: a backup (as Nova's createBackup); once it is\n"
        "                         verified, the instance's oldest backups of its type and\n"
        "                         disk beyond N are deleted\n"
        "      --backup-type TYPE daily or weekly, with --rotation\n"
        "      --scratch-dir DIR  working space (default <state-dir>/scratch)\n"
        "\n"
        "prune options (per domain and disk; an image a kept one reads through stays,\n"
        "or the kept one is rebased or made self-contained first):\n"
        "      --keep-last N      the newest N images\n"
        "      --keep-daily D     the newest image of each of the last D days (local time)\n"
        "      --keep-weekly W    the newest image of each of the last W ISO weeks\n"
        "      --dry-run          say what would go, change nothing\n"
        "\n"
        "limits on what snapshots share (a job holds each only while it uses it):\n"
        "      --max-captures N   libvirt captures at once (default 2)\n"
        "      --max-extracts N   qemu-img converts at once (default 2)\n"
        "      --max-uploads N    uploads at once (default 4)\n"
        "      --scratch-budget SIZE  scratch images may take at once, e.g. 20G (default:\n"
        "                         90% of the free space under the state directory)\n"
        "\n"
        "agent: a daemon serving a JSON API over HTTP (the snapshot options above are\n"
        "its defaults; see hotsnap(1)):\n"
        "      --socket PATH      unix socket (default " AG_DEFAULT_SOCKET ", mode 0660)\n"
        "      --socket-group G   group that may use the socket (default root)\n"
        "      --listen ADDR:PORT also serve TCP; every request needs the bearer token, and\n"
        "                         an address other than loopback needs TLS\n"
        "      --token-file FILE  the token for TCP clients (never on the command line)\n"
        "      --tls-cert FILE, --tls-key FILE  TLS on --listen: certificate chain and key\n"
        "      --tls-client-ca FILE  and TCP clients must show a certificate of this CA\n"
        "      --history N        finished jobs kept across restarts (default 1000)\n"
        "      --max-connections N  connections at once on each listener (default 256)\n"
        "      --event-backlog SIZE  how far an event reader may fall behind before it is\n"
        "                         dropped (default 256K)\n"
        "      --log FILE         log here instead of stderr; SIGHUP reopens it\n"
        "      --allow-target NAME=TARGET  a target a request may name besides --to (named\n"
        "                         \"default\"); requests name targets, never paths or URLs\n"
        "      --transport-url URL  also serve the control plane's bus: rabbit://USER:PASS@\n"
        "                         HOST:PORT/VHOST (oslo.messaging RPC and notifications)\n"
        "      --transport-url-file FILE  the same, read from FILE (keeps the password\n"
        "                         out of the process list)\n"
        "      --rpc-topic NAME   RPC topic (default hotsnap)\n"
        "      --rpc-server NAME  RPC server name (default the host name)\n"
        "      --control-exchange NAME  the exchange (default openstack)\n",
        f);
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;

    fputs("hotsnap: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_USAGE);
}

static void on_log(void *data, enum hs_log_level level, const char *line)
{
    struct cli *cli = data;
    static const char *const names[] = {"error", "warning", "info", "debug"};

    hs_cli_out_line(&cli->out, stderr, "hotsnap: %s: %s\n", names[level], line);
}

static void on_event(void *data, const cJSON *ev)
{
    struct cli *cli = data;

    hs_cli_out_event(&cli->out, ev);
}

/* "50M" -> 52428800 bytes per second (K, M, G: powers of 1024) */
static int parse_rate(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    uint64_t mul = 1;

    if (end == s || v <= 0)
        return -1;
    if (*end == 'K' || *end == 'k')
        mul = 1024, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024 * 1024 * 1024, end++;
    if (*end)
        return -1;
    *out = (uint64_t)(v * (double)mul);
    return 0;
}

/* The whole of @s as a number in @base from @min to @max. */
static int parse_long(const char *s, int base, long min, long max, long *out)
{
    char *end;
    long v = strtol(s, &end, base);

    if (end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void parse_args(struct cli *cli, int argc, char **argv)
{
    enum {
        OPT_STATE = 256,
        OPT_JSON,
        OPT_ALL,
        OPT_SHUTOFF,
        OPT_NAME,
        OPT_MODE,
        OPT_FORMAT,
        OPT_COMPRESS,
        OPT_ALL_DISKS,
        OPT_TO,
        OPT_SCRATCH,
        OPT_QUIESCE,
        OPT_IMAGE_ID,
        OPT_TOKEN,
        OPT_MAX_RATE,
        OPT_ATTEMPTS,
        OPT_MAX_CAPTURES,
        OPT_MAX_EXTRACTS,
        OPT_MAX_UPLOADS,
        OPT_SCRATCH_BUDGET,
        OPT_MATCH,
        OPT_FROM,
        OPT_STALL_TIMEOUT,
        OPT_GLANCE_OUTAGE,
        OPT_STORE_MODE,
        OPT_STORE_DIGEST,
        OPT_INCREMENTAL,
        OPT_ROTATION,
        OPT_BACKUP_TYPE,
        OPT_KEEP_LAST,
        OPT_KEEP_DAILY,
        OPT_KEEP_WEEKLY,
        OPT_DRY_RUN,
        OPT_SOCKET,
        OPT_SOCKET_GROUP,
        OPT_LISTEN,
        OPT_TOKEN_FILE,
        OPT_HISTORY,
        OPT_MAX_CONNECTIONS,
        OPT_LOG,
        OPT_TRANSPORT_URL,
        OPT_TRANSPORT_URL_FILE,
        OPT_RPC_TOPIC,
        OPT_RPC_SERVER,
        OPT_CONTROL_EXCHANGE,
        OPT_EVENT_BACKLOG,
        OPT_ALLOW_TARGET,
        OPT_TLS_CERT,
        OPT_TLS_KEY,
        OPT_TLS_CLIENT_CA,
    };
    static const struct option longopts[] = {
        {"connect", required_argument, NULL, 'c'},
        {"state-dir", required_argument, NULL, OPT_STATE},
        {"json", no_argument, NULL, OPT_JSON},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"all", no_argument, NULL, OPT_ALL},
        {"include-shutoff", no_argument, NULL, OPT_SHUTOFF},
        {"name", required_argument, NULL, OPT_NAME},
        {"mode", required_argument, NULL, OPT_MODE},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"compress", no_argument, NULL, OPT_COMPRESS},
        {"all-disks", no_argument, NULL, OPT_ALL_DISKS},
        {"to", required_argument, NULL, OPT_TO},
        {"scratch-dir", required_argument, NULL, OPT_SCRATCH},
        {"quiesce", required_argument, NULL, OPT_QUIESCE},
        {"image-id", required_argument, NULL, OPT_IMAGE_ID},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"max-rate", required_argument, NULL, OPT_MAX_RATE},
        {"attempts", required_argument, NULL, OPT_ATTEMPTS},
        {"stall-timeout", required_argument, NULL, OPT_STALL_TIMEOUT},
        {"glance-outage", required_argument, NULL, OPT_GLANCE_OUTAGE},
        {"store-mode", required_argument, NULL, OPT_STORE_MODE},
        {"store-digest", required_argument, NULL, OPT_STORE_DIGEST},
        {"incremental", no_argument, NULL, OPT_INCREMENTAL},
        {"rotation", required_argument, NULL, OPT_ROTATION},
        {"backup-type", required_argument, NULL, OPT_BACKUP_TYPE},
        {"keep-last", required_argument, NULL, OPT_KEEP_LAST},
        {"keep-daily", required_argument, NULL, OPT_KEEP_DAILY},
        {"keep-weekly", required_argument, NULL, OPT_KEEP_WEEKLY},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"max-captures", required_argument, NULL, OPT_MAX_CAPTURES},
        {"max-extracts", required_argument, NULL, OPT_MAX_EXTRACTS},
        {"max-uploads", required_argument, NULL, OPT_MAX_UPLOADS},
        {"scratch-budget", required_argument, NULL, OPT_SCRATCH_BUDGET},
        {"match", required_argument, NULL, OPT_MATCH},
        {"from", required_argument, NULL, OPT_FROM},
        {"socket", required_argument, NULL, OPT_SOCKET},
        {"socket-group", required_argument, NULL, OPT_SOCKET_GROUP},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
        {"history", required_argument, NULL, OPT_HISTORY},
        {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
        {"log", required_argument, NULL, OPT_LOG},
        {"transport-url", required_argument, NULL, OPT_TRANSPORT_URL},
        {"transport-url-file", required_argument, NULL, OPT_TRANSPORT_URL_FILE},
        {"rpc-topic", required_argument, NULL, OPT_RPC_TOPIC},
        {"rpc-server", required_argument, NULL, OPT_RPC_SERVER},
        {"control-exchange", required_argument, NULL, OPT_CONTROL_EXCHANGE},
        {"event-backlog", required_argument, NULL, OPT_EVENT_BACKLOG},
        {"allow-target", required_argument, NULL, OPT_ALLOW_TARGET},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"tls-client-ca", required_argument, NULL, OPT_TLS_CLIENT_CA},
        {NULL, 0, NULL, 0},
    };
    char err[512];
    int c, json = 0, quiet = 0, agent_opt = 0;
    long v;

    while ((c = getopt_long(argc, argv, "c:vqh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cli->eopts.uri = optarg;
            break;
        case OPT_STATE:
            cli->eopts.state_dir = optarg;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case 'v':
            cli->verbose = 1;
            break;
        case 'q':
            quiet = 1;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case OPT_ALL:
            cli->all = 1;
            break;
        case OPT_SHUTOFF:
            cli->include_shutoff = 1;
            break;
        case OPT_NAME:
            if (hs_name_template_check(optarg, err, sizeof(err)) < 0)
                die_usage("%s", err);
            cli->sopts.name = optarg;
            break;
        case OPT_MODE:
            if (hs_mode_parse(optarg, &cli->sopts.mode) < 0)
                die_usage("unknown mode '%s' (expected auto, stream, live, mirror, cold or offline)",
                          optarg);
            break;
        case OPT_FORMAT:
            if (hs_format_parse(optarg, &cli->sopts.format) < 0)
                die_usage("unknown format '%s' (expected qcow2 or raw)", optarg);
            break;
        case OPT_COMPRESS:
            cli->sopts.compress = 1;
            break;
        case OPT_ALL_DISKS:
            cli->sopts.all_disks = 1;
            break;
        case OPT_TO: {
            char shown[512];

            if (!ag_target_ok(optarg))
                die_usage("target '%s' is not one of dir:PATH, glance or glance:URL",
                          ag_spec_redact(optarg, shown, sizeof(shown)));
            /* a password in it stays out of the process title (/proc/PID/cmdline) */
            cli->sopts.target = strdup(optarg);
            ag_spec_scrub(optarg);
            break;
        }
        case OPT_ALLOW_TARGET: {
            struct ag_target *t;
            char *arg = strdup(optarg);
            int i;

            ag_spec_scrub(optarg);
            t = realloc(cli->targets, (size_t)(cli->ntargets + 1) * sizeof(*t));
            if (!arg || !t)
                die_usage("out of memory");
            cli->targets = t;
            if (ag_target_parse(arg, &t[cli->ntargets], err, sizeof(err)) < 0)
                die_usage("%s", err);
            for (i = 0; i < cli->ntargets; i++)
                if (!strcmp(t[i].name, t[cli->ntargets].name))
                    die_usage("--allow-target: '%s' is given twice", t[i].name);
            cli->ntargets++;
            agent_opt = c;
            break;
        }
        case OPT_IMAGE_ID:
            if (hs_image_id_check(optarg, err, sizeof(err)) < 0)
                die_usage("%s", err);
            cli->sopts.image_id = optarg;
            break;
        case OPT_TOKEN:
            /* keep it out of the process title (/proc/PID/cmdline) */
            cli->token = strdup(optarg);
            memset(optarg, '*', strlen(optarg));
            cli->sopts.token = cli->token;
            break;
        case OPT_MAX_RATE:
            if (parse_rate(optarg, &cli->sopts.max_rate) < 0)
                die_usage("--max-rate '%s' is not a rate like 50M (bytes per second)", optarg);
            break;
        case OPT_MAX_CAPTURES:
        case OPT_MAX_EXTRACTS:
        case OPT_MAX_UPLOADS: {
            int n = atoi(optarg);

            if (n < 1 || n > 1000)
                die_usage("'%s' is not a number from 1 to 1000", optarg);
            if (c == OPT_MAX_CAPTURES)
                cli->eopts.max_captures = n;
            else if (c == OPT_MAX_EXTRACTS)
                cli->eopts.max_extracts = n;
            else
                cli->eopts.max_uploads = n;
            break;
        }
        case OPT_MATCH:
            cli->match = optarg;
            break;
        case OPT_FROM:
            cli->from = optarg;
            break;
        case OPT_EVENT_BACKLOG:
            if (parse_rate(optarg, &cli->agent.event_backlog) < 0 ||
                cli->agent.event_backlog < 4096 || cli->agent.event_backlog > (64u << 20))
                die_usage("--event-backlog '%s' is not a size from 4K to 64M", optarg);
            agent_opt = c;
            break;
        case OPT_SCRATCH_BUDGET:
            if (parse_rate(optarg, &cli->eopts.scratch_budget) < 0)
                die_usage("--scratch-budget '%s' is not a size like 20G", optarg);
            break;
        case OPT_ATTEMPTS:
            cli->sopts.upload_attempts = atoi(optarg);
            if (cli->sopts.upload_attempts < 1 || cli->sopts.upload_attempts > 100)
                die_usage("--attempts '%s' is not a number from 1 to 100", optarg);
            break;
        case OPT_STALL_TIMEOUT:
            if (parse_long(optarg, 10, 1, 3600, &v) < 0)
                die_usage("--stall-timeout '%s' is not a number of seconds from 1 to 3600", optarg);
            cli->sopts.stall_timeout = (int)v;
            break;
        case OPT_GLANCE_OUTAGE:
            if (parse_long(optarg, 10, 0, 3600, &v) < 0)
                die_usage("--glance-outage '%s' is not a number of seconds from 0 to 3600",
                          optarg);
            cli->sopts.upload_outage = v ? (int)v : -1;
            break;
        case OPT_STORE_MODE:
            if (parse_long(optarg, 8, 0400, 0666, &v) < 0 || !(v & 0400))
                die_usage("--store-mode '%s' is not a file mode from 0400 to 0666 that root "
                          "can read",
                          optarg);
            cli->sopts.store_mode = (unsigned)v;
            break;
        case OPT_INCREMENTAL:
            cli->sopts.incremental = 1;
            break;
        case OPT_STORE_DIGEST:
            if (strcmp(optarg, "xxh128") && strcmp(optarg, "sha256") && strcmp(optarg, "sha512"))
                die_usage("--store-digest '%s' is not one of xxh128, sha256 or sha512", optarg);
            cli->sopts.store_digest = optarg;
            break;
        case OPT_SCRATCH:
            cli->sopts.scratch_dir = optarg;
            break;
        case OPT_QUIESCE:
            if (hs_quiesce_parse(optarg, &cli->sopts.quiesce) < 0)
                die_usage("unknown quiesce setting '%s' (expected auto, required or off)", optarg);
            break;
        case OPT_SOCKET:
        case OPT_SOCKET_GROUP:
        case OPT_LISTEN:
        case OPT_TOKEN_FILE:
        case OPT_LOG:
        case OPT_TLS_CERT:
        case OPT_TLS_KEY:
        case OPT_TLS_CLIENT_CA:
            *(c == OPT_SOCKET          ? &cli->agent.socket_path
              : c == OPT_SOCKET_GROUP  ? &cli->agent.socket_group
              : c == OPT_LISTEN        ? &cli->agent.listen
              : c == OPT_TOKEN_FILE    ? &cli->agent.token_file
              : c == OPT_TLS_CERT      ? &cli->agent.tls_cert
              : c == OPT_TLS_KEY       ? &cli->agent.tls_key
              : c == OPT_TLS_CLIENT_CA ? &cli->agent.tls_client_ca
                                       : &cli->agent.log_path) = optarg;
            agent_opt = c;
            break;
        case OPT_TRANSPORT_URL:
            /* it holds a password: out of the process title */
            free(cli->transport_url);
            cli->transport_url = strdup(optarg);
            memset(optarg, '*', strlen(optarg));
            cli->agent.transport_url = cli->transport_url;
            agent_opt = c;
            break;
        case OPT_TRANSPORT_URL_FILE:
            /* a password is in it: a file that only root may read, as the token's */
            free(cli->transport_url);
            cli->transport_url = ag_read_secret(optarg, "transport URL file", err, sizeof(err));
            if (!cli->transport_url)
                die_usage("%s", err);
            if (!cli->transport_url[0])
                die_usage("transport URL file '%s' is empty", optarg);
            cli->agent.transport_url = cli->transport_url;
            agent_opt = c;
            break;
        case OPT_RPC_TOPIC:
        case OPT_RPC_SERVER:
        case OPT_CONTROL_EXCHANGE:
            if (!*optarg || strlen(optarg) > 200 || strpbrk(optarg, " ./#*"))
                die_usage("'%s' is not a name of 1 to 200 characters without spaces, '.', '/', "
                          "'#' or '*'",
                          optarg);
            *(c == OPT_RPC_TOPIC    ? &cli->agent.rpc_topic
              : c == OPT_RPC_SERVER ? &cli->agent.rpc_server
                                    : &cli->agent.control_exchange) = optarg;
            agent_opt = c;
            break;
        case OPT_ROTATION:
            if (parse_long(optarg, 10, 1, 1000, &v) < 0)
                die_usage("--rotation '%s' is not a number of backups from 1 to 1000", optarg);
            cli->sopts.rotation = (int)v;
            break;
        case OPT_BACKUP_TYPE:
            if (strcmp(optarg, "daily") && strcmp(optarg, "weekly"))
                die_usage("--backup-type '%s' is not daily or weekly", optarg);
            cli->sopts.backup_type = optarg;
            break;
        case OPT_KEEP_LAST:
        case OPT_KEEP_DAILY:
        case OPT_KEEP_WEEKLY:
            if (parse_long(optarg, 10, 0, c == OPT_KEEP_LAST ? 100000 : 64, &v) < 0)
                die_usage("--keep-%s: '%s' is not a number from 0 to %d",
                          c == OPT_KEEP_LAST ? "last" : c == OPT_KEEP_DAILY ? "daily" : "weekly",
                          optarg, c == OPT_KEEP_LAST ? 100000 : 64);
            *(c == OPT_KEEP_LAST    ? &cli->prune.keep_last
              : c == OPT_KEEP_DAILY ? &cli->prune.keep_daily
                                    : &cli->prune.keep_weekly) = (int)v;
            cli->prune_opt = 1;
            break;
        case OPT_DRY_RUN:
            cli->prune.dry_run = 1;
            cli->prune_opt = 1;
            break;
        case OPT_HISTORY:
        case OPT_MAX_CONNECTIONS:
            if (parse_long(optarg, 10, 1, 100000, &v) < 0)
                die_usage("'%s' is not a number from 1 to 100000", optarg);
            *(c == OPT_HISTORY ? &cli->agent.history : &cli->agent.max_connections) = (int)v;
            agent_opt = c;
            break;
        default:
            usage(stderr);
            exit(EXIT_USAGE);
        }
    }
    if (optind >= argc)
        die_usage("no command given (snapshot, list, recover, verify, prune or agent); see "
                  "--help");
    cli->command = argv[optind++];
    cli->domains = argv + optind;
    cli->ndomains = argc - optind;
    if (!strcmp(cli->command, "snapshot")) {
        if (cli->ndomains == 0 && !cli->all && !cli->match && !cli->from)
            die_usage("snapshot needs domain names, --all, --match GLOB or --from FILE");
        if (cli->all && cli->match)
            die_usage("--all takes every domain; --match narrows it: give one of them");
        if (cli->sopts.compress && cli->sopts.format == HS_FORMAT_RAW)
            die_usage("--compress needs --format qcow2");
        if (!cli->sopts.rotation != !cli->sopts.backup_type)
            die_usage("--rotation N and --backup-type TYPE go together");
    } else if (!strcmp(cli->command, "list") || !strcmp(cli->command, "recover") ||
               !strcmp(cli->command, "agent") || !strcmp(cli->command, "verify") ||
               !strcmp(cli->command, "prune")) {
        if (cli->ndomains > 0)
            die_usage("'%s' takes no arguments", cli->command);
    } else {
        die_usage("unknown command '%s' (expected snapshot, list, recover, verify, prune or "
                  "agent)",
                  cli->command);
    }
    if (!strcmp(cli->command, "prune") && !cli->prune.keep_last && !cli->prune.keep_daily &&
        !cli->prune.keep_weekly)
        die_usage("prune needs --keep-last N, --keep-daily D or --keep-weekly W (what to keep)");
    if (cli->prune_opt && strcmp(cli->command, "prune"))
        die_usage("--keep-last, --keep-daily, --keep-weekly and --dry-run are options of 'prune'");
    if (agent_opt && strcmp(cli->command, "agent"))
        die_usage("--socket, --socket-group, --listen, --token-file, --tls-*, --history, "
                  "--max-connections, --log, --allow-target and the bus's options are options "
                  "of 'agent'");
    if (!strcmp(cli->command, "agent") &&
        (cli->all || cli->match || cli->from || cli->include_shutoff || json))
        die_usage("the agent takes its domains from requests: --all, --match, --from, "
                  "--include-shutoff and --json are not its options");
    if (cli->include_shutoff && !cli->all && !cli->match)
        die_usage("--include-shutoff goes with --all or --match");
    if (!cli->sopts.token && getenv("OS_TOKEN") && *getenv("OS_TOKEN"))
        cli->sopts.token = getenv("OS_TOKEN");
    hs_cli_out_init(&cli->out, json, quiet);
}

/* ---- results ---- */

/* VmHWM: this process's peak resident memory */
static long peak_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;

    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmHWM:", 6))
            kib = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

/* CPU time of this process alone (children such as qemu-img not counted) */
static double cpu_seconds(void)
{
    uv_rusage_t ru;

    if (uv_getrusage(&ru) < 0)
        return -1;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Bytes published by every job, for the totals line. */
static uint64_t total_bytes(struct cli *cli)
{
    uint64_t total = 0;
    size_t k;
    int i;

    for (i = 0; i < cli->nresults; i++)
        for (k = 0; k < hs_job_image_count(cli->results[i].job); k++)
            if (hs_job_image(cli->results[i].job, k)->id)
                total += hs_job_image(cli->results[i].job, k)->size;
    return total;
}

static void print_summary(struct cli *cli)
{
    double secs = (double)(uv_hrtime() - cli->t0) / 1e9;
    uint64_t bytes = total_bytes(cli);
    char size[32], stall[32];
    int i, failed = 0;
    size_t k;

    hs_cli_out_drain(&cli->out); /* every event before the summary */
    if (cli->out.json) {
        cJSON *sum = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(sum, "results"), *late;
        char *s;

        cJSON_AddStringToObject(sum, "event", "summary");
        for (i = 0; i < cli->nresults; i++) {
            struct hs_job *job = cli->results[i].job;
            cJSON *r = cJSON_CreateObject(), *imgs = cJSON_CreateArray();

            cJSON_AddStringToObject(r, "domain", cli->results[i].domain);
            cJSON_AddStringToObject(r, "mode", hs_job_mode(job) ? hs_job_mode(job) : "");
            cJSON_AddNumberToObject(r, "seconds", hs_job_seconds(job));
            if (hs_job_stall_ms(job) >= 0)
                cJSON_AddNumberToObject(r, "stall_ms", round(hs_job_stall_ms(job) * 10.0) / 10.0);
            cJSON_AddStringToObject(r, "result", cli->results[i].status ? "failed" : "ok");
            if (hs_job_error(job))
                cJSON_AddStringToObject(r, "error", hs_job_error(job));
            for (k = 0; k < hs_job_image_count(job); k++) {
                const struct hs_image *img = hs_job_image(job, k);

                if (img->id)
                    cJSON_AddItemToArray(imgs, hs_image_json(img));
            }
            cJSON_AddItemToObject(r, "images", imgs);
            cJSON_AddItemToArray(arr, r);
            failed += cli->results[i].status != 0;
        }
        cJSON_AddNumberToObject(sum, "failed", failed);
        cJSON_AddNumberToObject(sum, "bytes", (double)bytes);
        cJSON_AddNumberToObject(sum, "seconds", secs);
        cJSON_AddNumberToObject(sum, "mb_per_s", secs > 0 ? (double)bytes / secs / 1e6 : 0);
        cJSON_AddNumberToObject(sum, "peak_rss_kib", (double)peak_rss_kib());
        cJSON_AddNumberToObject(sum, "cpu_seconds", cpu_seconds());
        if (cli->verbose)
            cJSON_AddNumberToObject(sum, "max_loop_stall_ms", hs_engine_max_stall_ms(cli->eng));
        late = cJSON_AddObjectToObject(sum, "loop_lateness_ms");
        cJSON_AddNumberToObject(late, "p50", hs_engine_loop_lateness_ms(cli->eng, 0.5));
        cJSON_AddNumberToObject(late, "p99", hs_engine_loop_lateness_ms(cli->eng, 0.99));
        cJSON_AddNumberToObject(late, "max", round(hs_engine_max_stall_ms(cli->eng) * 10) / 10);
        s = cJSON_PrintUnformatted(sum);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(sum);
    } else {
        hs_cli_out_line(&cli->out, stdout, "\n%-20s %-8s %-36s %-5s %10s %8s %9s  %s\n", "DOMAIN",
                        "MODE", "IMAGE", "DISK", "SIZE", "TIME", "STALL", "RESULT");
        for (i = 0; i < cli->nresults; i++) {
            struct hs_job *job = cli->results[i].job;
            const char *err = hs_job_error(job);
            size_t n = hs_job_image_count(job);

            failed += cli->results[i].status != 0;
            stall[0] = '\0';
            if (hs_job_stall_ms(job) >= 0)
                snprintf(stall, sizeof(stall), "%.0f ms", hs_job_stall_ms(job));
            for (k = 0; k < (n ? n : 1); k++) {
                const struct hs_image *img = n ? hs_job_image(job, k) : NULL;

                size[0] = '\0';
                if (img && img->id)
                    snprintf(size, sizeof(size), "%.1f MiB", (double)img->size / (1024.0 * 1024.0));
                printf("%-20s %-8s %-36s %-5s %10s %7.1fs %9s  %s\n", cli->results[i].domain,
                       hs_job_mode(job) ? hs_job_mode(job) : "-", img && img->id ? img->id : "-",
                       img ? img->disk : "-", size, hs_job_seconds(job), k ? "" : stall,
                       err ? err : "ok");
            }
        }
        for (i = 0; i < cli->nresults; i++) {
            struct hs_job *job = cli->results[i].job;

            for (k = 0; k < hs_job_image_count(job); k++)
                if (hs_job_image(job, k)->location)
                    printf("  %s\n", hs_job_image(job, k)->location);
        }
        printf("%d of %d snapshots succeeded; %.1f MiB in %.1f s (%.1f MB/s)\n",
               cli->nresults - failed, cli->nresults, (double)bytes / (1024.0 * 1024.0), secs,
               secs > 0 ? (double)bytes / secs / 1e6 : 0);
        if (cli->verbose)
            printf("worst loop stall: %.1f ms, peak memory %ld KiB\n",
                   hs_engine_max_stall_ms(cli->eng), peak_rss_kib());
    }
    fflush(stdout);
    if (failed)
        cli->exit_code = EXIT_FAILED;
}

static void engine_closed(struct hs_engine *eng, void *data)
{
}

static void finish(struct cli *cli)
{
    int i;

    hs_cli_out_stop(&cli->out);
    if (cli->signals) {
        uv_close((uv_handle_t *)&cli->sigint, NULL);
        uv_close((uv_handle_t *)&cli->sigterm, NULL);
        uv_close((uv_handle_t *)&cli->sighup, NULL);
        cli->signals = 0;
    }
    for (i = 0; i < cli->nresults; i++)
        hs_job_free(cli->results[i].job);
    hs_engine_close(cli->eng, engine_closed, cli);
}

static void job_done(struct hs_job *job, int status, void *data)
{
    struct cli *cli = data;
    int i;

    for (i = 0; i < cli->nresults; i++)
        if (cli->results[i].job == job)
            cli->results[i].status = status;
    if (--cli->running > 0)
        return;
    print_summary(cli);
    finish(cli);
}

/* SIGINT, SIGTERM and SIGHUP (the terminal went away) all end the run the
 * same way: every job is canceled cleanly, guests get back what they had.
 * Handled from the start: a signal during recovery lets recovery finish and
 * starts nothing. */
static void on_signal(uv_signal_t *h, int signum)
{
    struct cli *cli = h->data;
    uint64_t now = uv_now(&cli->loop);

    if (!cli->running) {
        cli->interrupted = 1;
        return;
    }
    if (signum == SIGINT && cli->last_sigint && now - cli->last_sigint < 5000)
        hs_cli_out_line(&cli->out, stderr,
                        "hotsnap: still cleaning up %d snapshot(s): restoring domains and "
                        "removing scratch files, please wait\n",
                        cli->running);
    else
        hs_cli_out_line(&cli->out, stderr, "hotsnap: %s: canceling %d snapshot(s)\n",
                        signum == SIGINT   ? "interrupted"
                        : signum == SIGHUP ? "hung up"
                                           : "terminated",
                        cli->running);
    if (signum == SIGINT)
        cli->last_sigint = now;
    hs_engine_cancel_all(cli->eng);
}

/* ---- commands ---- */

static int state_is(const cJSON *d, int running_or_paused, int shutoff)
{
    int st = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(d, "state"));

    if (st == 1 || st == 2 || st == 3) /* running, blocked, paused */
        return running_or_paused;
    return st == 5 && shutoff;
}

struct want {
    const char *domain;           /* as given; resolved to a name below */
    struct hs_snapshot_opts opts; /* the command's options, with per-line overrides */
};

/* One --from line: a domain name, or a JSON object with per-domain options. */
static int from_line(struct cli *cli, const char *path, int lineno, char *line, cJSON **docs,
                     int *ndocs, struct want *w)
{
    cJSON *o, *v;
    char *end;

    while (*line == ' ' || *line == '\t')
        line++;
    for (end = line + strlen(line); end > line && (end[-1] == '\n' || end[-1] == ' ');)
        *--end = '\0';
    if (!*line || *line == '#')
        return 0;
    w->opts = cli->sopts;
    if (*line != '{') {
        w->domain = line;
        return 1;
    }
    o = cJSON_Parse(line);
    v = cJSON_GetObjectItemCaseSensitive(o, "domain");
    if (!cJSON_IsString(v)) {
        fprintf(stderr, "hotsnap: %s:%d: a JSON line needs a \"domain\" string\n", path, lineno);
        cJSON_Delete(o);
        return -1;
    }
    docs[(*ndocs)++] = o;
    w->domain = v->valuestring;
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "name")))
        w->opts.name = v->valuestring;
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "mode")) &&
        hs_mode_parse(v->valuestring, &w->opts.mode) < 0) {
        fprintf(stderr, "hotsnap: %s:%d: unknown mode '%s'\n", path, lineno, v->valuestring);
        return -1;
    }
    if (cJSON_IsString(v = cJSON_GetObjectItemCaseSensitive(o, "format")) &&
        hs_format_parse(v->valuestring, &w->opts.format) < 0) {
        fprintf(stderr, "hotsnap: %s:%d: unknown format '%s'\n", path, lineno, v->valuestring);
        return -1;
    }
    if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(o, "all_disks")))
        w->opts.all_disks = cJSON_IsTrue(v);
    if (cJSON_IsBool(v = cJSON_GetObjectItemCaseSensitive(o, "incremental")))
        w->opts.incremental = cJSON_IsTrue(v);
    if (cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(o, "priority")))
        w->opts.priority = v->valueint;
    return 1;
}

/* Start the snapshots asked for on @list (taken); -1 when they run, else
 * the exit status. */
static int start_snapshots(struct cli *cli, cJSON *list)
{
    char err[768], *text = NULL, *line, *save = NULL;
    cJSON *d;
    cJSON **docs = NULL;
    struct want *wants;
    const char **names;
    int i, j, n = 0, nw = 0, ndocs = 0, lineno = 0, rc = EXIT_USAGE;
    size_t cap;

    if (cli->from) {
        FILE *f = strcmp(cli->from, "-") ? fopen(cli->from, "re") : stdin;
        size_t len = 0;

        if (!f) {
            fprintf(stderr, "hotsnap: cannot read '%s': %s\n", cli->from, strerror(errno));
            cJSON_Delete(list);
            return EXIT_USAGE;
        }
        if (getdelim(&text, &len, '\0', f) < 0 && !text)
            text = strdup("");
        if (f != stdin)
            fclose(f);
    }
    cap = (size_t)cJSON_GetArraySize(list) + (size_t)cli->ndomains + 1;
    for (line = text; line && *line; line++)
        cap += *line == '\n';
    wants = calloc(cap + 1, sizeof(*wants));
    docs = calloc(cap + 1, sizeof(*docs));
    names = calloc(cap + 1, sizeof(char *));
    if (cli->all || cli->match) {
        cJSON_ArrayForEach(d, list) {
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(d, "name"));

            if (state_is(d, 1, cli->include_shutoff) &&
                (!cli->match || fnmatch(cli->match, name, 0) == 0)) {
                wants[nw].domain = name;
                wants[nw++].opts = cli->sopts;
            }
        }
    }
    for (i = 0; i < cli->ndomains; i++) {
        wants[nw].domain = cli->domains[i];
        wants[nw++].opts = cli->sopts;
    }
    for (line = text ? strtok_r(text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        int r = from_line(cli, cli->from, ++lineno, line, docs, &ndocs, &wants[nw]);

        if (r < 0)
            goto cleanup;
        nw += r;
    }
    for (i = 0; i < nw; i++) {
        const char *want = wants[i].domain, *found = NULL;

        cJSON_ArrayForEach(d, list) {
            if (!strcmp(want, cJSON_GetStringValue(cJSON_GetObjectItem(d, "name"))) ||
                !strcmp(want, cJSON_GetStringValue(cJSON_GetObjectItem(d, "uuid")) ?: ""))
                found = cJSON_GetStringValue(cJSON_GetObjectItem(d, "name"));
        }
        if (!found) {
            fprintf(stderr, "hotsnap: domain '%s' not found\n", want);
            goto cleanup;
        }
        for (j = 0; j < n; j++) {
            if (!strcmp(names[j], found)) {
                fprintf(stderr, "hotsnap: domain '%s' given twice\n", want);
                goto cleanup;
            }
        }
        wants[n].opts = wants[i].opts;
        names[n++] = found;
    }
    if (n == 0) {
        fprintf(stderr, "hotsnap: no domain to snapshot\n");
        rc = cli->all || cli->match ? 0 : EXIT_USAGE;
        goto cleanup;
    }
    cli->t0 = uv_hrtime();
    cli->results = calloc((size_t)n, sizeof(*cli->results));
    for (i = 0; i < n; i++) {
        struct hs_job *job;

        wants[i].opts.domain = names[i];
        if (hs_snapshot_start(cli->eng, &wants[i].opts, job_done, cli, &job, err, sizeof(err)) <
            0) {
            fprintf(stderr, "hotsnap: %s\n", err);
            hs_engine_cancel_all(cli->eng);
            cli->exit_code = EXIT_USAGE;
            break;
        }
        cli->results[cli->nresults].job = job;
        cli->results[cli->nresults].domain = strdup(names[i]);
        cli->nresults++;
        cli->running++;
    }
    rc = cli->running ? -1 : cli->exit_code;
cleanup:
    for (i = 0; i < ndocs; i++)
        cJSON_Delete(docs[i]);
    free(docs);
    free(wants);
    free(names);
    free(text);
    cJSON_Delete(list);
    return rc; /* -1: running */
}

static int do_list(struct cli *cli, cJSON *list)
{
    cJSON *d, *disk;
    char *s;

    hs_cli_out_drain(&cli->out);
    if (cli->out.json) {
        s = cJSON_PrintUnformatted(list);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(list);
        return 0;
    }
    printf("%-24s %-8s %s\n", "DOMAIN", "MODE", "WHY / DISKS");
    cJSON_ArrayForEach(d, list) {
        printf("%-24s %-8s %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(d, "name")),
               cJSON_GetStringValue(cJSON_GetObjectItem(d, "mode")) ?: "-",
               cJSON_GetStringValue(cJSON_GetObjectItem(d, "reason")) ?: "");
        cJSON_ArrayForEach(disk, cJSON_GetObjectItem(d, "disks")) {
            const char *bad = cJSON_GetStringValue(cJSON_GetObjectItem(disk, "unsupported"));

            printf("%-24s %-8s   %s%s %s %s%s%s\n", "", "",
                   cJSON_GetStringValue(cJSON_GetObjectItem(disk, "target")),
                   cJSON_IsTrue(cJSON_GetObjectItem(disk, "root")) ? " (root)" : "",
                   cJSON_GetStringValue(cJSON_GetObjectItem(disk, "format")),
                   cJSON_GetStringValue(cJSON_GetObjectItem(disk, "source")),
                   bad ? "  unsupported: " : "", bad ? bad : "");
        }
    }
    cJSON_Delete(list);
    return 0;
}

static void listed(struct hs_engine *eng, int status, cJSON *list, const char *error, void *data)
{
    struct cli *cli = data;
    int rc;

    if (status < 0) {
        fprintf(stderr, "hotsnap: %s\n", error);
        rc = EXIT_FAILED;
    } else if (cli->interrupted) {
        cJSON_Delete(list);
        rc = EXIT_FAILED;
    } else if (!strcmp(cli->command, "list")) {
        rc = do_list(cli, list);
    } else {
        rc = start_snapshots(cli, list);
        if (rc < 0)
            return; /* jobs running; job_done finishes */
    }
    cli->exit_code = rc;
    finish(cli);
}

static void recovered(struct hs_engine *eng, int status, const cJSON *report, void *data)
{
    struct cli *cli = data;
    const cJSON *e;
    int rc;

    if (!report) {
        fprintf(stderr, "hotsnap: %s\n", hs_engine_error(eng));
        cli->exit_code = EXIT_USAGE;
        finish(cli);
        return;
    }

    cJSON_ArrayForEach(e, report) {
        const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(e, "domain"));
        const char *action = cJSON_GetStringValue(cJSON_GetObjectItem(e, "action"));
        const char *error = cJSON_GetStringValue(cJSON_GetObjectItem(e, "error"));

        if (cli->out.json) {
            cJSON *ev = cJSON_Duplicate(e, 1);

            cJSON_AddStringToObject(ev, "event", "recovered");
            hs_cli_out_event(&cli->out, ev);
            cJSON_Delete(ev);
        } else {
            hs_cli_out_line(&cli->out, stderr,
                            "hotsnap: recovered a killed run's job on '%s': %s%s%s\n",
                            dom ? dom : "?", action ? action : "", error ? "error: " : "",
                            error ? error : "");
        }
    }
    if (status < 0)
        hs_cli_out_line(&cli->out, stderr, "hotsnap: recovery failed: %s\n",
                        uv_strerror(status));
    if (!strcmp(cli->command, "recover") || cli->interrupted) {
        cli->exit_code = status < 0 || cli->interrupted ? EXIT_FAILED : 0;
        finish(cli);
        return;
    }
    rc = hs_engine_list(eng, listed, cli);
    if (rc < 0) {
        fprintf(stderr, "hotsnap: not connected to libvirt: %s\n", uv_strerror(rc));
        cli->exit_code = EXIT_FAILED;
        finish(cli);
    }
}

/* ---- verify: a store's images against their sidecars, no libvirt ---- */

static void verified_one(const char *id, const char *file, const char *why, void *data)
{
    struct cli *cli = data;

    if (cli->out.json) {
        cJSON *ev = cJSON_CreateObject();

        cJSON_AddStringToObject(ev, "event", "verified");
        cJSON_AddStringToObject(ev, "id", id);
        if (file)
            cJSON_AddStringToObject(ev, "file", file);
        cJSON_AddBoolToObject(ev, "ok", !why);
        if (why)
            cJSON_AddStringToObject(ev, "error", why);
        hs_cli_out_event(&cli->out, ev);
        cJSON_Delete(ev);
    } else if (why) {
        hs_cli_out_line(&cli->out, stderr, "hotsnap: image %s: %s\n", id, why);
    } else {
        hs_cli_out_line(&cli->out, stdout, "%s  ok  %s\n", id, file);
    }
}

static void verified_all(int checked, int bad, int status, const char *error, void *data)
{
    struct cli *cli = data;

    if (status < 0) {
        fprintf(stderr, "hotsnap: %s\n", error);
        cli->exit_code = EXIT_USAGE;
    } else {
        if (cli->out.json) {
            cJSON *ev = cJSON_CreateObject();

            cJSON_AddStringToObject(ev, "event", "summary");
            cJSON_AddNumberToObject(ev, "checked", checked);
            cJSON_AddNumberToObject(ev, "bad", bad);
            hs_cli_out_event(&cli->out, ev);
            cJSON_Delete(ev);
        } else {
            hs_cli_out_line(&cli->out, bad ? stderr : stdout,
                            "hotsnap: %d image%s checked, %d bad\n", checked,
                            checked == 1 ? "" : "s", bad);
        }
        cli->exit_code = bad ? EXIT_FAILED : 0;
    }
    hs_cli_out_stop(&cli->out);
}

/* A store's verify or prune: the store a snapshot with the same options
 * publishes to, and the loop it runs on. */
static void store_op_begin(struct cli *cli, char *target, size_t len)
{
    if (cli->sopts.target)
        snprintf(target, len, "%s", cli->sopts.target);
    else
        snprintf(target, len, "dir:%s/images",
                 cli->eopts.state_dir ? cli->eopts.state_dir : HS_DEFAULT_STATE_DIR);
    uv_loop_init(&cli->loop);
    hs_cli_out_start(&cli->out, &cli->loop);
}

/* ... started (@rc, @err), run to its end. */
static int store_op_run(struct cli *cli, int rc, const char *err)
{
    if (rc < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        hs_cli_out_stop(&cli->out);
        cli->exit_code = EXIT_USAGE;
    }
    uv_run(&cli->loop, UV_RUN_DEFAULT);
    uv_loop_close(&cli->loop);
    hs_cli_out_free(&cli->out);
    return cli->exit_code;
}

static int do_verify(struct cli *cli)
{
    char err[512], target[PATH_MAX + 16];

    store_op_begin(cli, target, sizeof(target));
    return store_op_run(cli, hs_store_verify(&cli->loop, target, verified_one, verified_all, cli,
                                             err, sizeof(err)),
                        err);
}

/* ---- prune: a store's retention, chain-aware, no libvirt ---- */

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

    return cJSON_IsString(v) ? v->valuestring : "";
}

static void pruned_one(const cJSON *img, void *data)
{
    struct cli *cli = data;
    const char *action = jstr(img, "action");

    if (cli->out.json) {
        cJSON *ev = cJSON_Duplicate(img, 1);

        cJSON_AddStringToObject(ev, "event", "pruned");
        hs_cli_out_event(&cli->out, ev);
        cJSON_Delete(ev);
    } else {
        hs_cli_out_line(&cli->out, stdout, "%s  %-7s %s\n", jstr(img, "id"),
                        action, jstr(img, "reason"));
    }
}

static void pruned_all(int kept, int removed, int rewritten, int status, const char *error,
                       void *data)
{
    struct cli *cli = data;

    if (cli->out.json) {
        cJSON *ev = cJSON_CreateObject();

        cJSON_AddStringToObject(ev, "event", "summary");
        cJSON_AddNumberToObject(ev, "kept", kept);
        cJSON_AddNumberToObject(ev, "removed", removed);
        cJSON_AddNumberToObject(ev, "rewritten", rewritten);
        cJSON_AddBoolToObject(ev, "dry_run", cli->prune.dry_run);
        if (error)
            cJSON_AddStringToObject(ev, "error", error);
        hs_cli_out_event(&cli->out, ev);
        cJSON_Delete(ev);
    }
    if (status < 0) {
        fprintf(stderr, "hotsnap: %s\n", error);
        cli->exit_code = EXIT_FAILED;
    } else if (!cli->out.json) {
        hs_cli_out_line(&cli->out, stdout, "hotsnap: %d kept (%d rewritten), %d %s\n", kept,
                        rewritten, removed, cli->prune.dry_run ? "would go" : "removed");
    }
    hs_cli_out_stop(&cli->out);
}

static int do_prune(struct cli *cli)
{
    char err[512], target[PATH_MAX + 16];

    store_op_begin(cli, target, sizeof(target));
    cli->prune.target = target;
    return store_op_run(cli, hs_store_prune(&cli->loop, &cli->prune, pruned_one, pruned_all, cli,
                                            err, sizeof(err)),
                        err);
}

int main(int argc, char **argv)
{
    static struct cli cli;
    char err[768];
    int rc, i;

    signal(SIGPIPE, SIG_IGN);
    /* libvirt calls, file reads and hashing share libuv's pool (4 threads by
     * default): enough that a slow managed save never starves the uploads */
    setenv("UV_THREADPOOL_SIZE", "16", 0);
    parse_args(&cli, argc, argv);
    if (!strcmp(cli.command, "agent")) {
        cli.agent.eopts = cli.eopts;
        cli.agent.defaults = cli.sopts;
        cli.agent.targets = cli.targets;
        cli.agent.ntargets = cli.ntargets;
        cli.agent.verbose = cli.verbose;
        return hs_agent_main(&cli.agent);
    }
    if (!strcmp(cli.command, "verify"))
        return do_verify(&cli);
    if (!strcmp(cli.command, "prune"))
        return do_prune(&cli);
    cli.eopts.on_event = on_event;
    cli.eopts.event_data = &cli;
    /* warnings always reach the operator; -v adds the rest */
    cli.eopts.on_log = on_log;
    cli.eopts.log_data = &cli;
    cli.eopts.log_level = cli.verbose ? HS_LOG_DEBUG : HS_LOG_WARN;
    uv_loop_init(&cli.loop);
    hs_cli_out_start(&cli.out, &cli.loop);
    rc = hs_engine_open(&cli.loop, &cli.eopts, &cli.eng, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        uv_loop_close(&cli.loop);
        return EXIT_USAGE;
    }
    uv_signal_init(&cli.loop, &cli.sigint);
    uv_signal_init(&cli.loop, &cli.sigterm);
    uv_signal_init(&cli.loop, &cli.sighup);
    cli.sigint.data = cli.sigterm.data = cli.sighup.data = &cli;
    uv_signal_start(&cli.sigint, on_signal, SIGINT);
    uv_signal_start(&cli.sigterm, on_signal, SIGTERM);
    uv_signal_start(&cli.sighup, on_signal, SIGHUP);
    cli.signals = 1;
    /* a dead run's records at --to are removed with its credentials */
    if (cli.sopts.target)
        hs_engine_add_target(cli.eng, cli.sopts.target, cli.sopts.token);
    rc = hs_engine_recover(cli.eng, recovered, &cli);
    if (rc < 0) {
        fprintf(stderr, "hotsnap: cannot start recovery: %s\n", uv_strerror(rc));
        cli.exit_code = EXIT_FAILED;
        finish(&cli);
    }
    uv_run(&cli.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&cli.loop);
    if (rc != 0)
        fprintf(stderr, "hotsnap: warning: loop closed with handles open\n");
    for (i = 0; i < cli.nresults; i++)
        free(cli.results[i].domain);
    free(cli.results);
    free(cli.token);
    hs_cli_out_free(&cli.out);
    return cli.exit_code;
}
