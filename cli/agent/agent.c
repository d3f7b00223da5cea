/*
 * hotsnap agent: the engine as a daemon. This file composes it: the state
 * directory and its lock, the engine on the agent's loop, the operations
 * (ops.c), the HTTP door (http.c) and the bus (amqp.c), recovery, signals
 * and the way out. The arrows point one way: doors -> operations -> the
 * engine's API (include/hotsnap.h); the operations tell this file what
 * happens to jobs, and it passes the news on to the doors.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "amqp.h"
#include "files.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"

#define AG_RECOVER_RETRY_MS 2000

struct agent {
    const struct hs_agent_config *cfg;
    uv_loop_t loop;
    struct hs_engine *eng;
    struct hs_engine_opts eopts;
    char state_dir[4096];
    int lock_fd, dirfd;
    char *token;
    struct ag_metrics m;
    struct ag_ops *ops;
    struct ag_http *http;
    struct ag_amqp *amqp; /* the bus, with --transport-url */
    uv_timer_t recover_retry;
    uv_signal_t sigterm, sigint, sighup;
    int stopping;
    int engine_closed;
};

static void on_engine_log(void *data, enum hs_log_level level, const char *line)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};

    ag_log(names[level], "%s", line);
}

static void on_engine_event(void *data, const cJSON *ev)
{
    struct agent *a = data;

    ag_ops_engine_event(a->ops, ev);
}

/* ---- what the operations tell: on to the doors ---- */

static void ops_event(void *data, const char *job, const char *text, size_t len)
{
    struct agent *a = data;

    if (a->http)
        ag_http_event(a->http, job, text, len);
}

static void ops_news(void *data, enum ag_news what, int status, const cJSON *job)
{
    struct agent *a = data;

    if (!a->amqp)
        return;
    /* every job that had its start gets one end: a dead run's jobs an error */
    if (what == AG_NEWS_ACCEPTED)
        ag_amqp_notify(a->amqp, "hotsnap.snapshot.start", "INFO", job);
    else
        ag_amqp_notify(a->amqp, status == 0 ? "hotsnap.snapshot.end" : "hotsnap.snapshot.error",
                       status == 0 ? "INFO" : "ERROR", job);
}

static void ops_idle(void *data)
{
    struct agent *a = data;

    uv_stop(&a->loop);
}

/* ---- what the HTTP door shows ---- */

static cJSON *http_health(void *data, int *ok)
{
    struct agent *a = data;
    cJSON *o = cJSON_CreateObject();
    int writable = faccessat(a->dirfd, ".", W_OK, 0) == 0;
    int up = hs_engine_connected(a->eng);

    *ok = up && writable && ag_ops_ready(a->ops);
    cJSON_AddStringToObject(o, "status", *ok ? "ok" : "unhealthy");
    cJSON_AddBoolToObject(o, "libvirt", up);
    if (hs_engine_error(a->eng))
        cJSON_AddStringToObject(o, "libvirt_error", hs_engine_error(a->eng));
    cJSON_AddBoolToObject(o, "state_dir_writable", writable);
    cJSON_AddBoolToObject(o, "recovered", ag_ops_ready(a->ops));
    cJSON_AddNumberToObject(o, "running", ag_ops_running(a->ops));
    return o;
}

static char *http_metrics(void *data)
{
    struct agent *a = data;
    struct ag_metrics_now now = {0};
    cJSON *stats = hs_engine_stats(a->eng);
    char *text;

    ag_ops_count_states(a->ops, now.by_state);
    now.stats = stats;
    now.late_p50 = hs_engine_loop_lateness_ms(a->eng, 0.5);
    now.late_p99 = hs_engine_loop_lateness_ms(a->eng, 0.99);
    now.late_max = hs_engine_loop_lateness_ms(a->eng, 1);
    now.connections = ag_http_connections(a->http, &now.connections_tcp);
    now.subscribers = ag_http_readers(a->http);
    now.bus = a->amqp ? ag_amqp_connected(a->amqp, &now.bus_reconnects) : -1;
    text = ag_metrics_render(&a->m, &now);
    cJSON_Delete(stats);
    return text;
}

/* ---- recovery, then the bus ---- */

static void recovered(struct hs_engine *eng, int status, const cJSON *report, void *data);

static void recover_retry_cb(uv_timer_t *t)
{
    struct agent *a = t->data;

    hs_engine_recover(a->eng, recovered, a);
}

static void recovered(struct hs_engine *eng, int status, const cJSON *report, void *data)
{
    struct agent *a = data;
    const cJSON *e;

    if (!report) {
        /* libvirtd is not there yet: the API answers, jobs wait */
        ag_log("warning", "%s; retrying", hs_engine_error(eng) ? hs_engine_error(eng) : "?");
        uv_timer_start(&a->recover_retry, recover_retry_cb, AG_RECOVER_RETRY_MS, 0);
        return;
    }
    cJSON_ArrayForEach(e, report) {
        char *s = cJSON_PrintUnformatted(e);

        ag_log("info", "recovered a dead run's job: %s", s ? s : "?");
        free(s);
    }
    if (status < 0)
        ag_log("warning", "recovery failed: %s", uv_strerror(status));
    ag_ops_recovered(a->ops, report);
    ag_log("info", "ready");
    /* the bus's requests wait in their queues until now */
    if (a->amqp && !a->stopping)
        ag_amqp_serve(a->amqp);
}

/* The bus, from the start: it publishes notifications (a dead run's jobs'
 * errors among them) at once, and serves requests once recovery has run. */
static int bus_start(struct agent *a, char *err, size_t errlen)
{
    struct ag_amqp_config qc = {
        .url = a->cfg->transport_url,
        .topic = a->cfg->rpc_topic,
        .server = a->cfg->rpc_server,
        .exchange = a->cfg->control_exchange,
        .dirfd = a->dirfd,
    };

    if (!a->cfg->transport_url)
        return 0;
    return ag_amqp_start(&a->loop, a->ops, &qc, &a->amqp, err, errlen);
}

/* ---- signals ---- */

static void on_signal(uv_signal_t *h, int signum)
{
    struct agent *a = h->data;

    if (signum == SIGHUP) {
        int fd;

        if (!a->cfg->log_path)
            return;
        fd = open(a->cfg->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
            ag_log("info", "log reopened");
        }
        return;
    }
    if (a->stopping) {
        ag_log("info", "still canceling %d snapshot(s)", ag_ops_running(a->ops));
        return;
    }
    ag_log("info", "%s: canceling %d snapshot(s) and stopping",
           signum == SIGINT ? "interrupted" : "terminated", ag_ops_running(a->ops));
    a->stopping = 1;
    if (a->amqp)
        ag_amqp_stopping(a->amqp);
    if (ag_ops_stop(a->ops) == 0)
        uv_stop(&a->loop);
}

/* ---- start and stop ---- */

static int lock_state_dir(struct agent *a, char *err, size_t errlen)
{
    char path[4200];

    snprintf(path, sizeof(path), "%s/agent", a->state_dir);
    /* 0711, as the engine makes it: QEMU traverses it to its scratch */
    if (mkdir(a->state_dir, 0711) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create '%s': %s", a->state_dir, strerror(errno));
        return -1;
    }
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        return -1;
    }
    a->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (a->dirfd < 0) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    a->lock_fd = openat(a->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (a->lock_fd < 0 || flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "another agent uses state directory '%s'", a->state_dir);
        return -1;
    }
    return 0;
}

/* The bus's TLS files, there and readable; its key for root alone. */
static int bus_files_ok(const struct ag_amqp_url *url, char *err, size_t errlen)
{
    const char *files[] = {url->ca, url->cert, url->key};
    const char *what[] = {"ssl_ca_file", "ssl_cert_file", "ssl_key_file"};
    struct stat st;
    int i;

    for (i = 0; i < 3; i++) {
        if (!files[i][0])
            continue;
        if (access(files[i], R_OK) < 0 || stat(files[i], &st) < 0) {
            snprintf(err, errlen, "the transport URL's %s '%s': %s", what[i], files[i],
                     strerror(errno));
            return -1;
        }
        if (i == 2 && (st.st_mode & 0007)) {
            snprintf(err, errlen, "the transport URL's ssl_key_file '%s' can be read by anyone "
                                  "(mode %03o); chmod o-rwx",
                     files[i], (unsigned)(st.st_mode & 0777));
            return -1;
        }
    }
    return 0;
}

static void closed_quietly(uv_handle_t *h)
{
}

static void engine_closed(struct hs_engine *eng, void *data)
{
    struct agent *a = data;

    a->engine_closed = 1;
}

int hs_agent_main(const struct hs_agent_config *cfg)
{
    static struct agent agent;
    struct agent *a = &agent;
    struct ag_ops_config oc = {0};
    struct ag_http_config hc = {0};
    struct ag_http_hooks hooks = {http_health, http_metrics, a};
    struct ag_target *targets;
    char err[1024];
    int fd, i;

    a->cfg = cfg;
    a->lock_fd = a->dirfd = -1;
    snprintf(a->state_dir, sizeof(a->state_dir), "%s",
             cfg->eopts.state_dir ? cfg->eopts.state_dir : HS_DEFAULT_STATE_DIR);
    ag_metrics_init(&a->m);
    uv_loop_init(&a->loop);
    if (cfg->log_path) {
        fd = open(cfg->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            fprintf(stderr, "hotsnap: cannot open log '%s': %s\n", cfg->log_path, strerror(errno));
            return 2;
        }
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    if (cfg->transport_url) {
        struct ag_amqp_url url;

        if (ag_amqp_url_parse(cfg->transport_url, &url, err, sizeof(err)) < 0 ||
            bus_files_ok(&url, err, sizeof(err)) < 0) {
            explicit_bzero(&url, sizeof(url));
            fprintf(stderr, "hotsnap: %s\n", err);
            return 2;
        }
        if (url.ignored[0])
            ag_log("warning", "the transport URL's %s: oslo.messaging options the agent does "
                              "not use", url.ignored);
        explicit_bzero(&url, sizeof(url));
    }
    if (cfg->listen && !cfg->token_file) {
        fprintf(stderr, "hotsnap: --listen needs --token-file: TCP clients must present a token\n");
        return 2;
    }
    if (cfg->token_file) {
        a->token = ag_read_secret(cfg->token_file, "token file", err, sizeof(err));
        if (a->token && strlen(a->token) < 16) {
            snprintf(err, sizeof(err),
                     "token file '%s' must hold a token of at least 16 characters",
                     cfg->token_file);
            free(a->token);
            a->token = NULL;
        }
        if (!a->token) {
            fprintf(stderr, "hotsnap: %s\n", err);
            return 2;
        }
    }
    /* what a request may name: --to as "default", then --allow-target */
    targets = calloc((size_t)cfg->ntargets + 1, sizeof(*targets));
    if (!targets) {
        fprintf(stderr, "hotsnap: out of memory\n");
        return 2;
    }
    targets[0] = (struct ag_target){AG_TARGET_DEFAULT, cfg->defaults.target};
    if (cfg->ntargets)
        memcpy(targets + 1, cfg->targets, (size_t)cfg->ntargets * sizeof(*targets));
    oc.defaults = &cfg->defaults;
    oc.targets = targets;
    oc.ntargets = cfg->ntargets + 1;
    oc.state_dir = a->state_dir;
    oc.history = cfg->history > 0 ? cfg->history : 1000;
    oc.loop = &a->loop;
    oc.m = &a->m;
    oc.hooks = (struct ag_ops_hooks){ops_event, ops_news, ops_idle, a};
    if (lock_state_dir(a, err, sizeof(err)) < 0 ||
        (oc.dirfd = a->dirfd, ag_ops_new(&oc, &a->ops, err, sizeof(err))) < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        free(targets);
        return 2;
    }
    free(targets); /* the operations keep their own copy */
    a->eopts = cfg->eopts;
    a->eopts.on_event = on_engine_event;
    a->eopts.event_data = a;
    a->eopts.on_log = on_engine_log;
    a->eopts.log_data = a;
    a->eopts.log_level = cfg->verbose ? HS_LOG_DEBUG : HS_LOG_INFO;
    if (hs_engine_open(&a->loop, &a->eopts, &a->eng, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        return 2;
    }
    ag_ops_attach(a->ops, a->eng);
    /* what a dead run made at the operator's targets is reclaimed with the
     * credentials the operator gave for each, and only there */
    for (i = -1; i < cfg->ntargets; i++) {
        const char *spec = i < 0 ? cfg->defaults.target : cfg->targets[i].spec;

        if (spec)
            hs_engine_add_target(a->eng, spec,
                                 !strncmp(spec, "glance:", 7) ? cfg->defaults.token : NULL);
    }
    hc.socket_path = cfg->socket_path ? cfg->socket_path : AG_DEFAULT_SOCKET;
    hc.socket_group = cfg->socket_group;
    hc.listen = cfg->listen;
    hc.token = a->token;
    hc.tls_cert = cfg->tls_cert;
    hc.tls_key = cfg->tls_key;
    hc.tls_client_ca = cfg->tls_client_ca;
    hc.max_connections = cfg->max_connections > 0 ? cfg->max_connections : 256;
    hc.event_backlog = cfg->event_backlog ? cfg->event_backlog : 256 << 10;
    if (ag_http_start(&a->loop, a->ops, &a->m, &hc, &hooks, &a->http, err, sizeof(err)) < 0 ||
        bus_start(a, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        return 2;
    }
    uv_signal_init(&a->loop, &a->sigterm);
    uv_signal_init(&a->loop, &a->sigint);
    uv_signal_init(&a->loop, &a->sighup);
    a->sigterm.data = a->sigint.data = a->sighup.data = a;
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_start(&a->sighup, on_signal, SIGHUP);
    uv_timer_init(&a->loop, &a->recover_retry);
    a->recover_retry.data = a;
    hs_engine_recover(a->eng, recovered, a);
    ag_log("info", "listening on %s%s%s%s (state %s)", hc.socket_path, cfg->listen ? " and " : "",
           cfg->listen ? cfg->listen : "", cfg->listen && cfg->tls_cert ? " (TLS)" : "",
           a->state_dir);
    uv_run(&a->loop, UV_RUN_DEFAULT);

    /* every job has ended: stop serving, let the engine go */
    ag_http_close(a->http);
    if (a->amqp)
        ag_amqp_stop(a->amqp); /* publishes the last notifications first */
    uv_close((uv_handle_t *)&a->recover_retry, closed_quietly);
    hs_engine_close(a->eng, engine_closed, a);
    while ((!a->engine_closed || ag_ops_busy(a->ops)) && uv_run(&a->loop, UV_RUN_ONCE))
        ;
    ag_ops_close(a->ops);
    ag_log("info", "stopped");
    free(a->token);
    return 0;
}
