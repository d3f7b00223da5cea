/*
 * hotsnap agent: the engine as a daemon, driven over HTTP/1.1 with JSON.
 *
 * One loop runs everything: the engine, H2O's connections (each an accepted
 * uv_stream_t handed to h2o_uv_socket_create) and the agent's bookkeeping.
 * Jobs are kept as JSON objects updated from the engine's events; each is
 * written to <state-dir>/agent/jobs.jsonl when accepted and when it ends, so
 * a restarted agent knows what ran, reports what a dead run left as failed
 * with the reason, and keeps a bounded history.
 *
 * Only include/hotsnap.h is used; H2O is confined to this directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define H2O_USE_LIBUV 1
#include <h2o.h>

#include "agent.h"
#include "agent_int.h"
#include "amqp.h"
#include "api.h"
#include "metrics.h"

#define AG_MAX_BODY (1 << 20)        /* request body */
#define AG_REQ_TIMEOUT_MS 10000      /* a request's headers and body must arrive in this */
#define AG_HEARTBEAT_MS 15000
#define AG_MAX_RUNNING 1024
#define AG_RECOVER_RETRY_MS 2000

struct agent;

/* One job the agent knows: running (job set) or from the history. */
struct ag_job {
    struct ag_job *prev, *next; /* by when accepted */
    struct agent *agent;
    struct hs_job *job;         /* while running */
    char id[AG_ID_MAX + 1];
    char key[AG_ID_MAX + 1];    /* Idempotency-Key, or "" */
    cJSON *obj;                 /* what the API shows */
    char state[16];             /* the engine's last state */
    double t_state;             /* its "elapsed" when it began */
    int ended;
    int hidden;                 /* started and canceled inside a failed POST */
};

/* An accepted connection: the uv handle H2O's socket wraps. */
struct ag_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct agent *agent;
    h2o_socket_t *sock;
    int tcp; /* came in on --listen: needs the bearer token */
    struct ag_conn *prev, *next;
};

/* A reader of GET /v1/events. */
struct ag_sub {
    h2o_generator_t gen;
    struct agent *agent;
    h2o_req_t *req;
    char job[AG_ID_MAX + 1]; /* only this job's events; "" all */
    char *pend, *flight;     /* waiting to be sent; being sent */
    size_t npend, cap;
    int sending;
    int dropped; /* fell too far behind: ended at the next chance */
    struct ag_sub *prev, *next;
};

/* An operation waiting for the engine (a domain listing). */
struct ag_pending {
    struct agent *agent;
    ag_reply_fn reply; /* NULL once the asker went away */
    void *data;
    cJSON *doc;
    struct ag_want *wants;
    int n;
    int batch; /* the body was a list */
    char key[AG_ID_MAX + 1];
    struct ag_pending *prev, *next;
};

struct ag_handler {
    h2o_handler_t super;
    struct agent *agent;
};

struct agent {
    const struct hs_agent_config *cfg;
    uv_loop_t loop;
    struct hs_engine *eng;
    struct hs_engine_opts eopts;
    char state_dir[4096];
    int lock_fd, hist_fd;
    unsigned hist_lines;
    int history;
    int max_conns;
    size_t event_backlog; /* event bytes a reader may fall behind */
    char *token;
    /* jobs */
    struct ag_job *jobs, *jobs_tail;
    int running;
    int ready;          /* recovery done: jobs may start */
    int stopping;
    uv_timer_t recover_retry;
    /* http */
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    uv_pipe_t unix_listener;
    uv_tcp_t tcp_listener;
    int have_unix, have_tcp;
    char socket_path[108];
    struct ag_conn *conns;
    int nconns;
    struct ag_sub *subs;
    struct ag_pending *pendings;
    uv_timer_t heartbeat;
    uv_signal_t sigterm, sigint, sighup;
    struct ag_metrics m;
    struct ag_amqp *amqp; /* the bus, with --transport-url */
    int exit_code;
    int engine_closed;
};

void ag_log(const char *level, const char *fmt, ...)
{
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;

    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    fprintf(stderr, "%s hotsnap-agent: %s: ", ts, level);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void on_engine_log(void *data, enum hs_log_level level, const char *line)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};

    ag_log(names[level], "%s", line);
}

/* ---- the history: <state-dir>/agent/jobs.jsonl ---- */

static void history_append(struct agent *a, const cJSON *obj)
{
    char *s = cJSON_PrintUnformatted(obj);
    size_t len;

    if (!s)
        return;
    len = strlen(s);
    s[len] = '\n'; /* replaces the terminator: written as one line */
    if (a->hist_fd >= 0 && write(a->hist_fd, s, len + 1) != (ssize_t)(len + 1))
        ag_log("warning", "cannot write the job history: %s", strerror(errno));
    free(s);
    a->hist_lines++;
}

/* Rewrite the history from what is in memory (tmp, fsync, rename). */
static int history_compact(struct agent *a)
{
    char path[4200], tmp[4210];
    struct ag_job *j;
    int fd;

    snprintf(path, sizeof(path), "%s/agent/jobs.jsonl", a->state_dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    if (a->hist_fd >= 0)
        close(a->hist_fd);
    a->hist_fd = fd;
    a->hist_lines = 0;
    for (j = a->jobs; j; j = j->next)
        if (!j->hidden)
            history_append(a, j->obj);
    if (fsync(fd) < 0 || rename(tmp, path) < 0) {
        ag_log("warning", "cannot replace '%s': %s", path, strerror(errno));
        return -errno;
    }
    close(fd);
    a->hist_fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    return a->hist_fd < 0 ? -errno : 0;
}

/* ---- jobs ---- */

static void iso_now(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    size_t n;

    clock_gettime(CLOCK_REALTIME, &ts);
    n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", gmtime_r(&ts.tv_sec, &tm));
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void obj_set(cJSON *obj, const char *key, cJSON *item)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
    else
        cJSON_AddItemToObject(obj, key, item);
}

static void obj_touch(cJSON *obj)
{
    char ts[40];

    iso_now(ts, sizeof(ts));
    obj_set(obj, "updated", cJSON_CreateString(ts));
}

static struct ag_job *job_find(struct agent *a, const char *id)
{
    struct ag_job *j;

    for (j = a->jobs; j; j = j->next)
        if (!j->hidden && !strcmp(j->id, id))
            return j;
    return NULL;
}

static void job_link(struct agent *a, struct ag_job *j)
{
    j->agent = a;
    j->prev = a->jobs_tail;
    if (a->jobs_tail)
        a->jobs_tail->next = j;
    else
        a->jobs = j;
    a->jobs_tail = j;
}

static void job_unlink_free(struct agent *a, struct ag_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        a->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        a->jobs_tail = j->prev;
    cJSON_Delete(j->obj);
    free(j);
}

/* Forget the oldest ended jobs beyond the history's bound. */
static void jobs_trim(struct agent *a)
{
    struct ag_job *j, *next;
    int ended = 0;

    for (j = a->jobs; j; j = j->next)
        ended += j->ended;
    for (j = a->jobs; j && ended > a->history; j = next) {
        next = j->next;
        if (j->ended) {
            job_unlink_free(a, j);
            ended--;
        }
    }
    if (a->hist_lines > (unsigned)(2 * a->history + 64))
        history_compact(a);
}

static cJSON *job_request_json(struct agent *a, const struct ag_want *w)
{
    cJSON *r = cJSON_CreateObject();
    char dflt[4200];
    static const char *const quiesce[] = {"auto", "required", "off"};

    if (!w->opts.target)
        snprintf(dflt, sizeof(dflt), "dir:%s/images", a->state_dir);
    cJSON_AddStringToObject(r, "target", w->opts.target ? w->opts.target : dflt);
    cJSON_AddStringToObject(r, "mode", hs_mode_name(w->opts.mode));
    cJSON_AddStringToObject(r, "format", hs_format_name(w->opts.format));
    cJSON_AddBoolToObject(r, "compress", w->opts.compress);
    cJSON_AddBoolToObject(r, "all_disks", w->opts.all_disks);
    cJSON_AddStringToObject(r, "quiesce", quiesce[w->opts.quiesce]);
    if (w->opts.name)
        cJSON_AddStringToObject(r, "name", w->opts.name);
    if (w->opts.image_id)
        cJSON_AddStringToObject(r, "image_id", w->opts.image_id);
    cJSON_AddNumberToObject(r, "priority", w->opts.priority);
    return r;
}

static int state_ended(const char *s)
{
    return !strcmp(s, "done") || !strcmp(s, "failed");
}

static void sub_broadcast(struct agent *a, const char *job, const char *text, size_t len);

/* The engine's event @ev about @j: the job object follows it. The last
 * state event (done or failed) comes before the job's callback, with the
 * images, the error and the stall. */
static void job_on_event(struct ag_job *j, const cJSON *ev)
{
    /* what a state event carries that the job shows: the event's name, the job's */
    static const struct {
        const char *ev, *job;
    } kept[] = {
        {"task_state", "task_state"}, {"mode", "mode"},       {"reason", "mode_reason"},
        {"error", "error"},           {"stall_ms", "stall_ms"}, {"scratch_peak", "scratch_peak"},
        {"images", "images"},
    };
    struct agent *a = j->agent;
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "event"));
    double elapsed = cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "elapsed"));
    const cJSON *v;
    size_t i;

    if (!type)
        return;
    if (!strcmp(type, "progress")) {
        cJSON *p = cJSON_Duplicate(ev, 1);

        cJSON_DeleteItemFromObject(p, "event");
        cJSON_DeleteItemFromObject(p, "job");
        cJSON_DeleteItemFromObject(p, "domain");
        cJSON_DeleteItemFromObject(p, "time");
        cJSON_DeleteItemFromObject(p, "elapsed");
        obj_set(j->obj, "progress", p);
        obj_touch(j->obj);
        return;
    }
    if (!strcmp(type, "warning")) {
        cJSON *w = cJSON_GetObjectItem(j->obj, "warnings");

        if (!w)
            w = cJSON_AddArrayToObject(j->obj, "warnings");
        if (cJSON_GetArraySize(w) < 16)
            cJSON_AddItemToArray(w, cJSON_Duplicate(cJSON_GetObjectItem(ev, "message"), 0));
        return;
    }
    if (strcmp(type, "state"))
        return;
    v = cJSON_GetObjectItem(ev, "state");
    if (!cJSON_IsString(v))
        return;
    /* the phase that ended, for the duration histograms */
    if (strcmp(j->state, v->valuestring)) {
        if (!strcmp(j->state, "capture"))
            ag_hist_observe(&a->m.capture_s, elapsed - j->t_state);
        else if (!strcmp(j->state, "upload"))
            ag_hist_observe(&a->m.upload_s, elapsed - j->t_state);
        snprintf(j->state, sizeof(j->state), "%s", v->valuestring);
        j->t_state = elapsed;
    }
    obj_set(j->obj, "state", cJSON_CreateString(v->valuestring));
    if ((v = cJSON_GetObjectItem(ev, "for")))
        obj_set(j->obj, "waiting_for", cJSON_Duplicate(v, 0));
    else
        cJSON_DeleteItemFromObject(j->obj, "waiting_for");
    for (i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
        if ((v = cJSON_GetObjectItem(ev, kept[i].ev)))
            obj_set(j->obj, kept[i].job, cJSON_Duplicate(v, 1));
    if (state_ended(j->state))
        cJSON_DeleteItemFromObject(j->obj, "progress");
    obj_touch(j->obj);
    /* each step is recorded: a restarted agent says where a dead run stopped */
    if (!j->hidden && !state_ended(j->state))
        history_append(a, j->obj);
}

static void on_engine_event(void *data, const cJSON *ev)
{
    struct agent *a = data;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "job"));
    struct ag_job *j = id ? job_find(a, id) : NULL;
    char *text;

    if (j)
        job_on_event(j, ev);
    if (!a->subs)
        return;
    text = cJSON_PrintUnformatted(ev);
    if (text) {
        sub_broadcast(a, id, text, strlen(text));
        free(text);
    }
}

/* The agent's own news (accepted, interrupted) to the event readers. */
static void job_announce(struct agent *a, struct ag_job *j, const char *type)
{
    cJSON *ev = cJSON_CreateObject();
    char ts[40], *text;

    iso_now(ts, sizeof(ts));
    cJSON_AddStringToObject(ev, "event", type);
    cJSON_AddStringToObject(ev, "time", ts);
    cJSON_AddStringToObject(ev, "job", j->id);
    cJSON_AddItemToObject(ev, "snapshot", cJSON_Duplicate(j->obj, 1));
    text = cJSON_PrintUnformatted(ev);
    if (text)
        sub_broadcast(a, j->id, text, strlen(text));
    free(text);
    cJSON_Delete(ev);
}

static void job_done(struct hs_job *job, int status, void *data)
{
    struct ag_job *j = data;
    struct agent *a = j->agent;
    size_t k;

    /* state, error, stall and images came with the engine's last state event */
    for (k = 0; k < hs_job_image_count(job); k++)
        if (hs_job_image(job, k)->id)
            a->m.bytes_published += hs_job_image(job, k)->size;
    obj_set(j->obj, "seconds", cJSON_CreateNumber(round(hs_job_seconds(job) * 1000) / 1000));
    if (hs_job_stall_ms(job) >= 0)
        ag_hist_observe(&a->m.stall_s, hs_job_stall_ms(job) / 1000.0);
    if (a->amqp && !j->hidden)
        ag_amqp_notify(a->amqp,
                       status == 0 ? "hotsnap.snapshot.end" : "hotsnap.snapshot.error",
                       status == 0 ? "INFO" : "ERROR", j->obj);
    if (!j->hidden) { /* a hidden job was never accepted */
        if (status == 0)
            a->m.jobs_done++;
        else if (status == -ECANCELED)
            a->m.jobs_canceled++;
        else
            a->m.jobs_failed++;
    }
    j->ended = 1;
    j->job = NULL;
    hs_job_free(job);
    a->running--;
    if (!j->hidden)
        history_append(a, j->obj);
    else
        job_unlink_free(a, j);
    jobs_trim(a);
    if (a->stopping && a->running == 0)
        uv_stop(&a->loop);
}

/* ---- HTTP: responses ---- */

static void add_header(h2o_req_t *req, const char *name, const char *value)
{
    h2o_iovec_t v = h2o_strdup(&req->pool, value, strlen(value));

    /* @name: a lowercase literal */
    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 0, NULL, v.base,
                          v.len);
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    }
    return "Error";
}

/* Send @body (taken) as the response. */
static void respond_text(struct agent *a, h2o_req_t *req, int status, const char *type,
                         char *body)
{
    size_t len = body ? strlen(body) : 0;
    char *copy = h2o_mem_alloc_pool(&req->pool, len + 1);

    memcpy(copy, body ? body : "", len);
    copy[len] = '\0';
    free(body);
    req->res.status = status;
    req->res.reason = reason_of(status);
    req->res.content_length = len;
    add_header(req, "content-type", type);
    ag_metrics_count_status(&a->m, status);
    h2o_send_inline(req, copy, len);
}

static void respond_json(struct agent *a, h2o_req_t *req, int status, const cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    size_t len = s ? strlen(s) : 0;
    char *t = s ? realloc(s, len + 2) : NULL;

    if (t) {
        t[len] = '\n';
        t[len + 1] = '\0';
    }
    respond_text(a, req, status, "application/json", t ? t : s);
}

static cJSON *error_body_v(const char *fmt, va_list ap)
{
    char msg[1024];
    cJSON *o = cJSON_CreateObject();

    vsnprintf(msg, sizeof(msg), fmt, ap);
    cJSON_AddStringToObject(o, "error", msg);
    return o;
}

/* {"error": "..."}: what every failed request answers. */
static cJSON *error_body(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cJSON *error_body(const char *fmt, ...)
{
    cJSON *o;
    va_list ap;

    va_start(ap, fmt);
    o = error_body_v(fmt, ap);
    va_end(ap);
    return o;
}

static void respond_error(struct agent *a, h2o_req_t *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void respond_error(struct agent *a, h2o_req_t *req, int status, const char *fmt, ...)
{
    cJSON *o;
    va_list ap;

    va_start(ap, fmt);
    o = error_body_v(fmt, ap);
    va_end(ap);
    if (status == 401)
        add_header(req, "www-authenticate", "Bearer");
    respond_json(a, req, status, o);
    cJSON_Delete(o);
}

/* ---- HTTP: the event stream ---- */

static void sub_unlink(struct ag_sub *s)
{
    struct agent *a = s->agent;

    if (s->prev)
        s->prev->next = s->next;
    else
        a->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->req = NULL;
    free(s->pend);
    free(s->flight);
    s->pend = s->flight = NULL;
    s->npend = s->cap = 0;
}

/* The connection of @req's socket, to cut off a reader that stopped reading. */
static struct ag_conn *conn_of(struct agent *a, h2o_req_t *req)
{
    h2o_socket_t *sock =
        req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    struct ag_conn *c;

    for (c = a->conns; sock && c; c = c->next)
        if (c->sock == sock)
            return c;
    return NULL;
}

static void sub_flush(struct ag_sub *s)
{
    h2o_iovec_t buf;

    if (s->sending || !s->npend || !s->req)
        return;
    free(s->flight);
    s->flight = s->pend;
    buf = h2o_iovec_init(s->flight, s->npend);
    s->pend = NULL;
    s->npend = s->cap = 0;
    s->sending = 1;
    h2o_send(s->req, &buf, 1, H2O_SEND_STATE_IN_PROGRESS);
}

/* A reader too far behind: end its response now, or cut its connection when
 * a write to it is stuck (the write fails, H2O closes, stop runs). */
static void sub_drop(struct ag_sub *s)
{
    struct agent *a = s->agent;
    struct ag_conn *c;
    uv_os_fd_t fd;

    a->m.subs_dropped++;
    ag_log("warning", "dropped an event reader that fell %zu bytes behind", s->npend);
    free(s->pend);
    s->pend = NULL;
    s->npend = s->cap = 0;
    if (!s->sending) {
        h2o_req_t *req = s->req;

        sub_unlink(s);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    s->dropped = 1;
    c = conn_of(a, s->req);
    if (c && uv_fileno((uv_handle_t *)&c->h, &fd) == 0)
        shutdown(fd, SHUT_RDWR);
}

static void sub_push(struct ag_sub *s, const char *text, size_t len, int comment)
{
    size_t need = len + 8;

    if (s->dropped || !s->req)
        return;
    if (s->npend + need > s->agent->event_backlog) {
        sub_drop(s);
        return;
    }
    if (s->npend + need > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        char *p;

        while (cap < s->npend + need)
            cap *= 2;
        p = realloc(s->pend, cap);
        if (!p) {
            sub_drop(s);
            return;
        }
        s->pend = p;
        s->cap = cap;
    }
    memcpy(s->pend + s->npend, comment ? ": " : "data: ", comment ? 2 : 6);
    s->npend += comment ? 2 : 6;
    memcpy(s->pend + s->npend, text, len);
    s->npend += len;
    memcpy(s->pend + s->npend, "\n\n", 2);
    s->npend += 2;
    sub_flush(s);
}

static void sub_broadcast(struct agent *a, const char *job, const char *text, size_t len)
{
    struct ag_sub *s, *next;

    for (s = a->subs; s; s = next) {
        next = s->next;
        if (!s->job[0] || (job && !strcmp(s->job, job)))
            sub_push(s, text, len, 0);
    }
}

static void sub_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct ag_sub *s = (struct ag_sub *)gen;

    s->sending = 0;
    if (s->dropped) {
        sub_unlink(s);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    sub_flush(s);
}

static void sub_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    struct ag_sub *s = (struct ag_sub *)gen;

    if (s->agent->subs == s || s->prev)
        sub_unlink(s);
}

static void heartbeat_cb(uv_timer_t *t)
{
    struct agent *a = t->data;
    struct ag_sub *s, *next;

    for (s = a->subs; s; s = next) {
        next = s->next;
        sub_push(s, "", 0, 1);
    }
}

static void handle_events(struct agent *a, h2o_req_t *req, const struct ag_route *rt)
{
    char job[AG_ID_MAX + 1] = "";
    struct ag_sub *s;

    if (ag_query_get(rt->query, rt->query_len, "job", job, sizeof(job)) < 0) {
        respond_error(a, req, 400, "query 'job' must be a job id of at most %d characters",
                      AG_ID_MAX);
        return;
    }
    s = h2o_mem_alloc_pool(&req->pool, sizeof(*s));
    memset(s, 0, sizeof(*s));
    s->gen.proceed = sub_proceed;
    s->gen.stop = sub_stop;
    s->agent = a;
    s->req = req;
    snprintf(s->job, sizeof(s->job), "%s", job);
    s->next = a->subs;
    if (a->subs)
        a->subs->prev = s;
    a->subs = s;
    req->res.status = 200;
    req->res.reason = "OK";
    add_header(req, "content-type", "text/event-stream");
    add_header(req, "cache-control", "no-cache");
    ag_metrics_count_status(&a->m, 200);
    h2o_start_response(req, &s->gen);
    sub_push(s, "hotsnap events", strlen("hotsnap events"), 1);
}

/* ---- the operations: what the HTTP API and the bus both ask ---- */

static struct ag_pending *pending_new(struct agent *a, ag_reply_fn reply, void *data)
{
    struct ag_pending *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->agent = a;
    p->reply = reply;
    p->data = data;
    p->next = a->pendings;
    if (a->pendings)
        a->pendings->prev = p;
    a->pendings = p;
    return p;
}

/* Answer the asker (unless it left) and forget @p; takes @body. */
static void pending_finish(struct ag_pending *p, int status, cJSON *body, int replayed)
{
    struct agent *a = p->agent;

    if (p->reply)
        p->reply(p->data, status, body, replayed);
    cJSON_Delete(body);
    if (p->prev)
        p->prev->next = p->next;
    else
        a->pendings = p->next;
    if (p->next)
        p->next->prev = p->prev;
    cJSON_Delete(p->doc);
    free(p->wants);
    free(p);
}

void ag_pending_abandon(struct ag_pending *p)
{
    p->reply = NULL;
}

static cJSON *jobs_with_key(struct agent *a, const char *key)
{
    cJSON *arr = NULL;
    struct ag_job *j;

    for (j = a->jobs; j; j = j->next) {
        if (j->hidden || strcmp(j->key, key))
            continue;
        if (!arr)
            arr = cJSON_CreateArray();
        cJSON_AddItemToArray(arr, cJSON_Duplicate(j->obj, 1));
    }
    return arr;
}

/* The answer to a snapshot request: the job, or the list of them. */
static cJSON *jobs_answer(cJSON *arr, int batch)
{
    cJSON *one;

    if (batch)
        return arr;
    one = cJSON_DetachItemFromArray(arr, 0);
    cJSON_Delete(arr);
    return one;
}

static void post_listed(struct hs_engine *eng, int status, cJSON *list, const char *error,
                        void *data)
{
    struct ag_pending *p = data;
    struct agent *a = p->agent;
    struct ag_job **started;
    const char **names;
    cJSON *d, *arr, *body = NULL;
    char err[1024], ts[40];
    int i, k, n = 0, code = 400;

    if (!p->reply) { /* the asker left: nothing was accepted, nothing starts */
        cJSON_Delete(list);
        pending_finish(p, 0, NULL, 0);
        return;
    }
    if (status < 0 || a->stopping) {
        cJSON_Delete(list);
        pending_finish(p, 503,
                       status < 0 ? error_body("cannot list the domains: %s", error)
                                  : error_body("the agent is stopping"),
                       0);
        return;
    }
    names = calloc((size_t)p->n, sizeof(*names));
    started = calloc((size_t)p->n, sizeof(*started));
    for (i = 0; i < p->n; i++) {
        const char *want = p->wants[i].domain, *found = NULL;

        cJSON_ArrayForEach(d, list) {
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(d, "name"));
            const char *uuid = cJSON_GetStringValue(cJSON_GetObjectItem(d, "uuid"));

            if ((name && !strcmp(want, name)) || (uuid && !strcmp(want, uuid)))
                found = name;
        }
        if (!found) {
            code = 404;
            body = error_body("domain '%s' not found", want);
            goto cleanup;
        }
        for (k = 0; k < i; k++) {
            if (!strcmp(names[k], found)) {
                body = error_body("domain '%s' is asked for twice", want);
                goto cleanup;
            }
        }
        names[i] = found;
    }
    arr = cJSON_CreateArray();
    iso_now(ts, sizeof(ts));
    for (i = 0; i < p->n; i++) {
        struct ag_job *j = calloc(1, sizeof(*j));
        struct hs_job *job;

        p->wants[i].opts.domain = names[i];
        j->agent = a;
        if (hs_snapshot_start(a->eng, &p->wants[i].opts, job_done, j, &job, err, sizeof(err)) <
            0) {
            free(j);
            /* nothing of this request may run: its jobs have not taken a step yet */
            for (k = 0; k < n; k++) {
                started[k]->hidden = 1;
                hs_job_cancel(started[k]->job);
                a->m.jobs_accepted--;
            }
            cJSON_Delete(arr);
            body = error_body("%s", err);
            goto cleanup;
        }
        j->job = job;
        snprintf(j->id, sizeof(j->id), "%s", hs_job_id(job));
        snprintf(j->key, sizeof(j->key), "%s", p->key);
        snprintf(j->state, sizeof(j->state), "queued");
        j->obj = cJSON_CreateObject();
        cJSON_AddStringToObject(j->obj, "id", j->id);
        cJSON_AddStringToObject(j->obj, "domain", names[i]);
        cJSON_AddStringToObject(j->obj, "state", "queued");
        cJSON_AddStringToObject(j->obj, "task_state", "image_snapshot_pending");
        cJSON_AddStringToObject(j->obj, "created", ts);
        cJSON_AddStringToObject(j->obj, "updated", ts);
        cJSON_AddItemToObject(j->obj, "request", job_request_json(a, &p->wants[i]));
        if (p->key[0])
            cJSON_AddStringToObject(j->obj, "idempotency_key", p->key);
        job_link(a, j);
        started[n++] = j;
        a->running++;
        a->m.jobs_accepted++;
        cJSON_AddItemToArray(arr, cJSON_Duplicate(j->obj, 1));
    }
    for (k = 0; k < n; k++) {
        history_append(a, started[k]->obj);
        job_announce(a, started[k], "accepted");
        if (a->amqp)
            ag_amqp_notify(a->amqp, "hotsnap.snapshot.start", "INFO", started[k]->obj);
    }
    code = 202;
    body = jobs_answer(arr, p->batch);
cleanup:
    free(names);
    free(started);
    cJSON_Delete(list);
    pending_finish(p, code, body, 0);
}

int ag_op_snapshot(struct agent *a, const char *body, size_t len, const char *key,
                   ag_reply_fn reply, void *data, struct ag_pending **out)
{
    struct ag_pending *p;
    struct ag_want *wants;
    cJSON *doc, *same, *ans;
    char err[1024];
    int n, code;

    *out = NULL;
    if (key && !ag_key_ok(key, strlen(key))) {
        ans = error_body("the idempotency key must be 1 to %d printable characters", AG_ID_MAX);
        code = 400;
        goto answer;
    }
    n = ag_parse_snapshots(body, len, &a->cfg->defaults, &doc, &wants, err, sizeof(err));
    if (n < 0) {
        ans = error_body("%s", err);
        code = 400;
        goto answer;
    }
    if (key && (same = jobs_with_key(a, key))) {
        ans = jobs_answer(same, cJSON_IsArray(doc));
        cJSON_Delete(doc);
        free(wants);
        reply(data, 202, ans, 1);
        cJSON_Delete(ans);
        return 0;
    }
    code = 503;
    ans = NULL;
    for (p = a->pendings; key && p; p = p->next) {
        if (!strcmp(p->key, key)) {
            ans = error_body("a request with idempotency key '%s' is being accepted; retry", key);
            code = 409;
        }
    }
    if (!ans && (!a->ready || a->stopping))
        ans = error_body("%s", a->stopping ? "the agent is stopping"
                                           : "the agent is recovering what a dead run left; retry");
    if (!ans && a->running + n > AG_MAX_RUNNING) {
        ans = error_body("%d snapshots are running; at most %d may", a->running, AG_MAX_RUNNING);
        code = 429;
    }
    if (!ans && !(p = pending_new(a, reply, data)))
        ans = error_body("out of memory");
    if (ans) {
        cJSON_Delete(doc);
        free(wants);
        goto answer;
    }
    p->doc = doc;
    p->wants = wants;
    p->n = n;
    p->batch = cJSON_IsArray(doc);
    snprintf(p->key, sizeof(p->key), "%s", key ? key : "");
    if (hs_engine_list(a->eng, post_listed, p) < 0) {
        pending_finish(p, 503, error_body("not connected to libvirt: %s",
                                          hs_engine_error(a->eng) ?: "?"), 0);
        return 0;
    }
    *out = p;
    return 1;
answer:
    reply(data, code, ans, 0);
    cJSON_Delete(ans);
    return 0;
}

int ag_op_get(struct agent *a, const char *id, cJSON **body)
{
    struct ag_job *j = job_find(a, id);

    if (!j) {
        *body = error_body("no snapshot job '%s'", id);
        return 404;
    }
    *body = cJSON_Duplicate(j->obj, 1);
    return 200;
}

int ag_op_cancel(struct agent *a, const char *id, cJSON **body)
{
    struct ag_job *j = job_find(a, id);

    if (!j) {
        *body = error_body("no snapshot job '%s'", id);
        return 404;
    }
    if (j->ended) {
        *body = error_body("snapshot job '%s' has already ended (%s)", id, j->state);
        return 409;
    }
    if (!j->job) {
        *body = error_body("snapshot job '%s' was left by an agent that died; recovery is "
                           "ending it", id);
        return 409;
    }
    hs_job_cancel(j->job);
    obj_set(j->obj, "cancel_requested", cJSON_CreateTrue());
    obj_touch(j->obj);
    *body = cJSON_Duplicate(j->obj, 1);
    return 202;
}

static int job_matches(const struct ag_job *j, const char *state, const char *domain)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(j->obj, "state"));
    const char *d = cJSON_GetStringValue(cJSON_GetObjectItem(j->obj, "domain"));

    if (j->hidden)
        return 0;
    if (state && state[0] && !(!strcmp(state, "running") ? !j->ended : s && !strcmp(state, s)))
        return 0;
    return !domain || !domain[0] || (d && !strcmp(domain, d));
}

int ag_op_list(struct agent *a, const char *state, const char *domain, long max, cJSON **body)
{
    cJSON *arr = cJSON_CreateArray();
    struct ag_job *j;
    long n = 0;

    /* newest first */
    for (j = a->jobs_tail; j && (max <= 0 || n < max); j = j->prev) {
        if (job_matches(j, state, domain)) {
            cJSON_AddItemToArray(arr, cJSON_Duplicate(j->obj, 1));
            n++;
        }
    }
    *body = arr;
    return 200;
}

static void domains_listed(struct hs_engine *eng, int status, cJSON *list, const char *error,
                           void *data)
{
    struct ag_pending *p = data;

    if (status < 0)
        pending_finish(p, 503, error_body("cannot list the domains: %s", error), 0);
    else
        pending_finish(p, 200, list, 0);
}

int ag_op_domains(struct agent *a, ag_reply_fn reply, void *data, struct ag_pending **out)
{
    struct ag_pending *p = pending_new(a, reply, data);
    cJSON *err;

    *out = NULL;
    if (p && hs_engine_list(a->eng, domains_listed, p) == 0) {
        *out = p;
        return 1;
    }
    err = p ? error_body("not connected to libvirt: %s", hs_engine_error(a->eng) ?: "?")
            : error_body("out of memory");
    if (p) {
        pending_finish(p, 503, err, 0);
    } else {
        reply(data, 503, err, 0);
        cJSON_Delete(err);
    }
    return 0;
}

/* ---- the HTTP API ---- */

static const char *header(h2o_req_t *req, const char *name, size_t *len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);

    if (i < 0)
        return NULL;
    *len = req->headers.entries[i].value.len;
    return req->headers.entries[i].value.base;
}

/* An HTTP request waiting for an operation; in the request's pool, whose
 * disposal (the client left) abandons the operation's answer. */
struct http_wait {
    struct agent *agent;
    h2o_req_t *req;
    struct ag_pending *p;
};

static void http_wait_gone(void *data)
{
    struct http_wait *w = data;

    if (w->p)
        ag_pending_abandon(w->p);
}

static void http_reply(void *data, int status, const cJSON *body, int replayed)
{
    struct http_wait *w = data;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(body, "id"));
    char loc[128];

    w->p = NULL;
    if (status == 202 && id && cJSON_IsObject(body)) {
        snprintf(loc, sizeof(loc), "/v1/snapshots/%s", id);
        add_header(w->req, "location", loc);
    }
    if (replayed)
        add_header(w->req, "idempotent-replayed", "true");
    respond_json(w->agent, w->req, status, body);
}

static struct http_wait *http_wait_new(struct agent *a, h2o_req_t *req)
{
    struct http_wait *w = h2o_mem_alloc_shared(&req->pool, sizeof(*w), http_wait_gone);

    w->agent = a;
    w->req = req;
    w->p = NULL;
    return w;
}

static void handle_post(struct agent *a, h2o_req_t *req)
{
    struct http_wait *w = http_wait_new(a, req);
    const char *key;
    char kbuf[AG_ID_MAX + 1];
    size_t klen = 0;

    if ((key = header(req, "idempotency-key", &klen))) {
        if (!ag_key_ok(key, klen)) {
            respond_error(a, req, 400, "header 'Idempotency-Key' must be 1 to %d printable "
                          "characters", AG_ID_MAX);
            return;
        }
        memcpy(kbuf, key, klen);
        kbuf[klen] = '\0';
    }
    ag_op_snapshot(a, req->entity.base ? req->entity.base : "", req->entity.len,
                   key ? kbuf : NULL, http_reply, w, &w->p);
}

static void respond_op(struct agent *a, h2o_req_t *req, int status, cJSON *body)
{
    respond_json(a, req, status, body);
    cJSON_Delete(body);
}

static void handle_list(struct agent *a, h2o_req_t *req, const struct ag_route *rt)
{
    char state[32] = "", domain[260] = "", limit[16] = "";
    cJSON *body;
    long max = 0;
    int status;

    if (ag_query_get(rt->query, rt->query_len, "state", state, sizeof(state)) < 0 ||
        ag_query_get(rt->query, rt->query_len, "domain", domain, sizeof(domain)) < 0 ||
        ag_query_get(rt->query, rt->query_len, "limit", limit, sizeof(limit)) < 0) {
        respond_error(a, req, 400, "a query value is malformed or too long");
        return;
    }
    if (limit[0]) {
        char *end;

        max = strtol(limit, &end, 10);
        if (*end || max < 1) {
            respond_error(a, req, 400, "query 'limit' must be a positive number");
            return;
        }
    }
    status = ag_op_list(a, state, domain, max, &body);
    respond_op(a, req, status, body);
}

static void handle_domains(struct agent *a, h2o_req_t *req)
{
    struct http_wait *w = http_wait_new(a, req);

    ag_op_domains(a, http_reply, w, &w->p);
}

static void handle_healthz(struct agent *a, h2o_req_t *req)
{
    cJSON *o = cJSON_CreateObject();
    char dir[4200];
    int ok, writable;

    snprintf(dir, sizeof(dir), "%s/agent", a->state_dir);
    writable = access(dir, W_OK) == 0;
    ok = hs_engine_connected(a->eng) && writable && a->ready;
    cJSON_AddStringToObject(o, "status", ok ? "ok" : "unhealthy");
    cJSON_AddBoolToObject(o, "libvirt", hs_engine_connected(a->eng));
    if (hs_engine_error(a->eng))
        cJSON_AddStringToObject(o, "libvirt_error", hs_engine_error(a->eng));
    cJSON_AddBoolToObject(o, "state_dir_writable", writable);
    cJSON_AddBoolToObject(o, "recovered", a->ready);
    cJSON_AddNumberToObject(o, "running", a->running);
    respond_json(a, req, ok ? 200 : 503, o);
    cJSON_Delete(o);
}

static void handle_metrics(struct agent *a, h2o_req_t *req)
{
    cJSON *stats = hs_engine_stats(a->eng);
    struct ag_job *j;
    struct ag_metrics_now now = {0};
    char *text;
    int i;

    for (j = a->jobs; j; j = j->next) {
        if (j->ended || j->hidden)
            continue;
        for (i = 0; i < AG_NSTATES; i++) {
            if (!strcmp(j->state, ag_state_names[i])) {
                now.by_state[i]++;
                break;
            }
        }
    }
    now.stats = stats;
    now.late_p50 = hs_engine_loop_lateness_ms(a->eng, 0.5);
    now.late_p99 = hs_engine_loop_lateness_ms(a->eng, 0.99);
    now.late_max = hs_engine_loop_lateness_ms(a->eng, 1);
    now.connections = a->nconns;
    for (struct ag_sub *s = a->subs; s; s = s->next)
        now.subscribers++;
    now.bus = a->amqp ? ag_amqp_connected(a->amqp, &now.bus_reconnects) : -1;
    text = ag_metrics_render(&a->m, &now);
    cJSON_Delete(stats);
    respond_text(a, req, 200, "text/plain; version=0.0.4", text);
}

static int is_tcp(struct agent *a, h2o_req_t *req)
{
    struct ag_conn *c = conn_of(a, req);

    return !c || c->tcp; /* unknown: ask for the token */
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct agent *a = ((struct ag_handler *)self)->agent;
    struct ag_route rt;
    const char *allow, *auth;
    size_t alen;
    char err[256];
    cJSON *body;
    int status;

    if (is_tcp(a, req)) {
        auth = header(req, "authorization", &alen);
        if (!auth || !ag_bearer_ok(auth, alen, a->token)) {
            respond_error(a, req, 401, "%s", auth ? "the bearer token is wrong"
                                                  : "an Authorization: Bearer token is needed");
            return 0;
        }
    }
    if (ag_route_match(req->path.base, req->path.len, &rt, err, sizeof(err)) < 0) {
        respond_error(a, req, 400, "%s", err);
        return 0;
    }
    if (rt.ep == AG_EP_NONE) {
        respond_error(a, req, 404, "no such path");
        return 0;
    }
    if (!ag_method_allowed(rt.ep, req->method.base, req->method.len, &allow)) {
        add_header(req, "allow", allow);
        respond_error(a, req, 405, "%.*s is not allowed here (allowed: %s)",
                      (int)(req->method.len > 16 ? 16 : req->method.len), req->method.base,
                      allow);
        return 0;
    }
    switch (rt.ep) {
    case AG_EP_SNAPSHOTS:
        if (req->method.len == 4)
            handle_post(a, req);
        else
            handle_list(a, req, &rt);
        break;
    case AG_EP_SNAPSHOT:
        status = req->method.len == 6 ? ag_op_cancel(a, rt.id, &body)
                                      : ag_op_get(a, rt.id, &body);
        respond_op(a, req, status, body);
        break;
    case AG_EP_EVENTS:
        handle_events(a, req, &rt);
        break;
    case AG_EP_DOMAINS:
        handle_domains(a, req);
        break;
    case AG_EP_HEALTHZ:
        handle_healthz(a, req);
        break;
    case AG_EP_METRICS:
        handle_metrics(a, req);
        break;
    case AG_EP_NONE:
        break;
    }
    return 0;
}

/* ---- HTTP: listening and connections ---- */

static void conn_closed(uv_handle_t *h)
{
    struct ag_conn *c = (struct ag_conn *)h;
    struct agent *a = c->agent;

    if (c->prev)
        c->prev->next = c->next;
    else if (a->conns == c)
        a->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->nconns--;
    free(c);
}

static void conn_refused_closed(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct agent *a = listener->data;
    int tcp = listener == (uv_stream_t *)&a->tcp_listener;
    struct ag_conn *c;

    if (status < 0)
        return;
    c = calloc(1, sizeof(*c));
    if (!c)
        return;
    if (tcp)
        uv_tcp_init(&a->loop, &c->h.tcp);
    else
        uv_pipe_init(&a->loop, &c->h.pipe, 0);
    if (uv_accept(listener, (uv_stream_t *)&c->h) < 0) {
        uv_close((uv_handle_t *)&c->h, conn_refused_closed);
        return;
    }
    if (a->nconns >= a->max_conns || a->stopping) {
        a->m.conns_refused++;
        uv_close((uv_handle_t *)&c->h, conn_refused_closed);
        return;
    }
    c->agent = a;
    c->tcp = tcp;
    c->next = a->conns;
    if (a->conns)
        a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->h, conn_closed);
    h2o_accept(&a->accept_ctx, c->sock);
}

/* Whether something answers on the unix socket at @path. */
static int socket_alive(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    rc = fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    if (fd >= 0)
        close(fd);
    return rc;
}

static int listen_unix(struct agent *a, char *err, size_t errlen)
{
    const char *path = a->cfg->socket_path ? a->cfg->socket_path : AG_DEFAULT_SOCKET;
    char dir[sizeof(a->socket_path)], *slash;
    struct stat st;
    gid_t gid = 0;
    int rc;

    if (strlen(path) >= sizeof(a->socket_path)) {
        snprintf(err, errlen, "socket path '%s' is longer than %zu bytes", path,
                 sizeof(a->socket_path) - 1);
        return -1;
    }
    if (a->cfg->socket_group) {
        struct group *g = getgrnam(a->cfg->socket_group);

        if (!g) {
            snprintf(err, errlen, "socket group '%s' does not exist", a->cfg->socket_group);
            return -1;
        }
        gid = g->gr_gid;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(errno));
            return -1;
        }
    }
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "'%s' exists and is not a socket", path);
            return -1;
        }
        if (socket_alive(path)) {
            snprintf(err, errlen, "another agent answers on '%s'", path);
            return -1;
        }
        unlink(path); /* a dead agent's */
    }
    snprintf(a->socket_path, sizeof(a->socket_path), "%s", path);
    uv_pipe_init(&a->loop, &a->unix_listener, 0);
    a->unix_listener.data = a;
    a->have_unix = 1;
    rc = uv_pipe_bind(&a->unix_listener, path);
    if (rc == 0 && (chmod(path, 0660) < 0 || chown(path, 0, gid) < 0))
        rc = -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->unix_listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", path, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static int listen_tcp(struct agent *a, char *err, size_t errlen)
{
    char host[128];
    const char *spec = a->cfg->listen, *colon = strrchr(spec, ':');
    struct sockaddr_storage ss;
    long port;
    char *end;
    int rc;

    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host))
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        goto bad;
    if (spec[0] == '[' && colon[-1] == ']') {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - spec - 2), spec + 1);
        rc = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss);
    } else {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - spec), spec);
        rc = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss);
    }
    if (rc < 0)
        goto bad;
    uv_tcp_init(&a->loop, &a->tcp_listener);
    a->tcp_listener.data = a;
    a->have_tcp = 1;
    rc = uv_tcp_bind(&a->tcp_listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->tcp_listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", spec, uv_strerror(rc));
        return -1;
    }
    return 0;
bad:
    snprintf(err, errlen, "--listen '%s' is not ADDR:PORT (e.g. 127.0.0.1:8787 or [::1]:8787)",
             spec);
    return -1;
}

/* The token: the first line of --token-file, which others may not read. */
static int read_token(struct agent *a, char *err, size_t errlen)
{
    const char *path = a->cfg->token_file;
    char buf[1024];
    struct stat st;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot read token file '%s': %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) == 0 && (st.st_mode & 0007)) {
        close(fd);
        snprintf(err, errlen, "token file '%s' can be read by anyone (mode %03o); chmod o-rwx",
                 path, st.st_mode & 0777);
        return -1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        n = 0;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (strlen(buf) < 16) {
        snprintf(err, errlen, "token file '%s' must hold a token of at least 16 characters",
                 path);
        return -1;
    }
    a->token = strdup(buf);
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

static int http_start(struct agent *a, char *err, size_t errlen)
{
    h2o_hostconf_t *host;
    h2o_pathconf_t *path;
    struct ag_handler *h;

    h2o_config_init(&a->conf);
    a->conf.max_request_entity_size = AG_MAX_BODY;
    a->conf.http1.req_timeout = AG_REQ_TIMEOUT_MS;
    a->conf.http1.upgrade_to_http2 = 0;
    a->conf.server_name = h2o_iovec_init(H2O_STRLIT("hotsnap"));
    host = h2o_config_register_host(&a->conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    path = h2o_config_register_path(host, "/", 0);
    h = (struct ag_handler *)h2o_create_handler(path, sizeof(*h));
    h->super.on_req = on_req;
    h->agent = a;
    h2o_context_init(&a->ctx, &a->loop, &a->conf);
    a->accept_ctx.ctx = &a->ctx;
    a->accept_ctx.hosts = a->conf.hosts;
    if (listen_unix(a, err, errlen) < 0)
        return -1;
    if (a->cfg->listen && listen_tcp(a, err, errlen) < 0)
        return -1;
    uv_timer_init(&a->loop, &a->heartbeat);
    a->heartbeat.data = a;
    uv_timer_start(&a->heartbeat, heartbeat_cb, AG_HEARTBEAT_MS, AG_HEARTBEAT_MS);
    return 0;
}

/* ---- start, recovery, stop ---- */

/* Read the history; what a dead run left running is remembered as interrupted. */
static int history_load(struct agent *a, char *err, size_t errlen)
{
    char path[4200], *line = NULL;
    size_t cap = 0;
    FILE *f;

    snprintf(path, sizeof(path), "%s/agent/jobs.jsonl", a->state_dir);
    f = fopen(path, "re");
    while (f && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line), *old;
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(o, "id"));
        const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(o, "state"));
        const char *key = cJSON_GetStringValue(cJSON_GetObjectItem(o, "idempotency_key"));
        struct ag_job *j;

        if (!id || !state || strlen(id) > AG_ID_MAX) {
            cJSON_Delete(o);
            continue;
        }
        j = job_find(a, id);
        if (!j) {
            j = calloc(1, sizeof(*j));
            snprintf(j->id, sizeof(j->id), "%s", id);
            job_link(a, j);
        }
        old = j->obj;
        j->obj = o;
        cJSON_Delete(old);
        snprintf(j->key, sizeof(j->key), "%s", key && strlen(key) <= AG_ID_MAX ? key : "");
        snprintf(j->state, sizeof(j->state), "%s", state);
        j->ended = state_ended(state);
    }
    free(line);
    if (f)
        fclose(f);
    if (history_compact(a) < 0) {
        snprintf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Jobs a dead run left: failed, with what recovery did about them. */
static void interrupted_settle(struct agent *a, const cJSON *report)
{
    struct ag_job *j;
    const cJSON *e;

    for (j = a->jobs; j; j = j->next) {
        char why[1024];
        const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(j->obj, "domain"));
        cJSON *rec = cJSON_CreateArray();
        size_t n;

        if (j->ended)
            continue;
        n = (size_t)snprintf(why, sizeof(why),
                             "the agent stopped while this snapshot was in state '%s'",
                             j->state);
        cJSON_ArrayForEach(e, report) {
            const char *ejob = cJSON_GetStringValue(cJSON_GetObjectItem(e, "job"));
            const char *edom = cJSON_GetStringValue(cJSON_GetObjectItem(e, "domain"));
            const char *act = cJSON_GetStringValue(cJSON_GetObjectItem(e, "action"));

            if (ejob ? strcmp(ejob, j->id) : !(edom && dom && !strcmp(edom, dom)))
                continue;
            cJSON_AddItemToArray(rec, cJSON_Duplicate(e, 1));
            if (act && n < sizeof(why))
                n += (size_t)snprintf(why + n, sizeof(why) - n, "; on restart: %s", act);
        }
        obj_set(j->obj, "state", cJSON_CreateString("failed"));
        obj_set(j->obj, "task_state", cJSON_CreateString("failed"));
        obj_set(j->obj, "error", cJSON_CreateString(why));
        obj_set(j->obj, "recovered", rec);
        cJSON_DeleteItemFromObject(j->obj, "progress");
        obj_touch(j->obj);
        snprintf(j->state, sizeof(j->state), "failed");
        j->ended = 1;
        a->m.jobs_failed++;
        history_append(a, j->obj);
        job_announce(a, j, "interrupted");
        ag_log("warning", "job %s on '%s': %s", j->id, dom ? dom : "?", why);
    }
    jobs_trim(a);
}

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
    interrupted_settle(a, report);
    a->ready = 1;
    ag_log("info", "ready");
    /* the bus's requests wait in their queues until now */
    if (a->cfg->transport_url && !a->stopping) {
        struct ag_amqp_config qc = {
            .url = a->cfg->transport_url,
            .topic = a->cfg->rpc_topic,
            .server = a->cfg->rpc_server,
            .exchange = a->cfg->control_exchange,
            .state_dir = a->state_dir,
        };
        char err[512];

        if (ag_amqp_start(&a->loop, a, &qc, &a->amqp, err, sizeof(err)) < 0)
            ag_log("error", "the bus: %s", err);
    }
}

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
        ag_log("info", "still canceling %d snapshot(s)", a->running);
        return;
    }
    ag_log("info", "%s: canceling %d snapshot(s) and stopping",
           signum == SIGINT ? "interrupted" : "terminated", a->running);
    a->stopping = 1;
    hs_engine_cancel_all(a->eng);
    if (a->running == 0)
        uv_stop(&a->loop);
}

static int lock_state_dir(struct agent *a, char *err, size_t errlen)
{
    char path[4200];

    snprintf(path, sizeof(path), "%s/agent", a->state_dir);
    if (mkdir(a->state_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create '%s': %s", a->state_dir, strerror(errno));
        return -1;
    }
    if (mkdir(path, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof(path), "%s/agent/lock", a->state_dir);
    a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0 || flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "another agent uses state directory '%s'", a->state_dir);
        return -1;
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
    char err[1024];
    int fd;

    a->cfg = cfg;
    a->lock_fd = a->hist_fd = -1;
    a->history = cfg->history > 0 ? cfg->history : 1000;
    a->max_conns = cfg->max_connections > 0 ? cfg->max_connections : 256;
    a->event_backlog = cfg->event_backlog ? cfg->event_backlog : 256 << 10;
    snprintf(a->state_dir, sizeof(a->state_dir), "%s",
             cfg->eopts.state_dir ? cfg->eopts.state_dir : HS_DEFAULT_STATE_DIR);
    ag_metrics_init(&a->m);
    if (cfg->log_path) {
        fd = open(cfg->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) {
            fprintf(stderr, "hotsnap: cannot open log '%s': %s\n", cfg->log_path,
                    strerror(errno));
            return 2;
        }
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    if (cfg->transport_url) {
        struct ag_amqp_url url;

        if (ag_amqp_url_parse(cfg->transport_url, &url, err, sizeof(err)) < 0) {
            fprintf(stderr, "hotsnap: %s\n", err);
            return 2;
        }
        explicit_bzero(&url, sizeof(url));
    }
    if (cfg->listen && !cfg->token_file) {
        fprintf(stderr, "hotsnap: --listen needs --token-file: TCP clients must present a token\n");
        return 2;
    }
    if ((cfg->token_file && read_token(a, err, sizeof(err)) < 0) ||
        lock_state_dir(a, err, sizeof(err)) < 0 || history_load(a, err, sizeof(err)) < 0) {
        fprintf(stderr, "hotsnap: %s\n", err);
        return 2;
    }
    uv_loop_init(&a->loop);
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
    if (http_start(a, err, sizeof(err)) < 0) {
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
    ag_log("info", "listening on %s%s%s (state %s)", a->socket_path, cfg->listen ? " and " : "",
           cfg->listen ? cfg->listen : "", a->state_dir);
    uv_run(&a->loop, UV_RUN_DEFAULT);

    /* every job has ended: stop serving, let the engine go */
    if (a->have_unix) {
        uv_close((uv_handle_t *)&a->unix_listener, closed_quietly);
        unlink(a->socket_path);
    }
    if (a->have_tcp)
        uv_close((uv_handle_t *)&a->tcp_listener, closed_quietly);
    history_compact(a);
    if (a->amqp)
        ag_amqp_stop(a->amqp); /* publishes the last notifications first */
    uv_close((uv_handle_t *)&a->heartbeat, closed_quietly);
    uv_close((uv_handle_t *)&a->recover_retry, closed_quietly);
    hs_engine_close(a->eng, engine_closed, a);
    while (!a->engine_closed && uv_run(&a->loop, UV_RUN_ONCE))
        ;
    ag_log("info", "stopped");
    free(a->token);
    return a->exit_code;
}
