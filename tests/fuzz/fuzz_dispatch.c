/*
 * libFuzzer harness for the agent's whole dispatch: requests as the doors
 * see them once H2O or rabbitmq-c has the bytes, through the HTTP door's
 * routes (routes.c) and the bus's (rpc.c), into the operations (ops.c) and
 * an engine of this file's that checks what it is asked to do. The input is
 * a sequence of requests separated by "\n%%\n"; each is
 *
 *   "H" or "T" (unix socket or TCP), then "METHOD PATH\n", header lines
 *   ("Authorization: ...", "Idempotency-Key: ...") and a blank line, then
 *   the body; or "B" and a message from the bus.
 *
 * Between requests the fake engine answers what waits (domain lists, jobs
 * ending). What must hold, whatever comes in:
 *
 *   - a snapshot starts only on a target the operator configured, with the
 *     token only where the operator's glance:URL target goes, an image id
 *     only as a UUID, a known domain;
 *   - no answer, event or notification carries the password of a target
 *     or the token; every status is one the API documents;
 *   - TCP requests without the bearer token reach nothing;
 *   - the running cap holds, counting what is being accepted;
 *   - nothing leaks and nothing is used after it is freed (ASan).
 *
 *   build-fuzz/fuzz_dispatch -max_total_time=30 CORPUS_DIR tests/fuzz/corpus-dispatch
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/ops.h"
#include "agent/routes.h"
#include "agent/rpc.h"

#define SECRET "fuzz-password-never-shown"
#define OS_TOKEN "fuzz-os-token-never-shown"
#define BEARER "0123456789abcdef-bearer"
#define GLANCE "glance:http://user:" SECRET "@glance.example:9292"

/* ---- the engine, as the operations see it ---- */

struct hs_engine {
    int connected;
};

struct hs_job {
    char id[40];
    hs_job_cb cb;
    void *data;
    int canceled;
    struct hs_job *next;
};

struct listing {
    hs_list_cb cb;
    void *data;
    struct listing *next;
};

static struct hs_engine engine = {1};
static struct hs_job *jobs;
static struct listing *listings;
static int running, started_total;
static struct ag_ops *ops;

static const struct ag_target targets[] = {
    {AG_TARGET_DEFAULT, GLANCE},
    {"local", "dir:/srv/images"},
    {"keystone", "glance"},
};

int hs_engine_list(struct hs_engine *eng, hs_list_cb cb, void *data)
{
    struct listing *l;

    if (!eng->connected)
        return -ENOTCONN;
    l = calloc(1, sizeof(*l));
    assert(l);
    l->cb = cb;
    l->data = data;
    l->next = listings;
    listings = l;
    return 0;
}

const char *hs_engine_error(const struct hs_engine *eng)
{
    return eng->connected ? NULL : "not connected (fuzz)";
}

void hs_engine_cancel_all(struct hs_engine *eng)
{
    struct hs_job *j;

    for (j = jobs; j; j = j->next)
        j->canceled = 1;
}

int hs_snapshot_start(struct hs_engine *eng, const struct hs_snapshot_opts *opts, hs_job_cb cb,
                      void *data, struct hs_job **out, char *errbuf, size_t errlen)
{
    struct hs_job *j;
    size_t i;
    int configured = 0;

    /* only what the operator configured, with only its own credentials */
    assert(opts->domain && (!strcmp(opts->domain, "web-1") || !strcmp(opts->domain, "db-2")));
    for (i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
        configured |= opts->target && !strcmp(opts->target, targets[i].spec);
    assert(configured);
    assert(!opts->token || (!strcmp(opts->token, OS_TOKEN) && !strcmp(opts->target, GLANCE)));
    assert(!opts->scratch_dir);
    if (opts->image_id)
        assert(hs_image_id_check(opts->image_id, errbuf, errlen) == 0);
    if (opts->priority == 999) { /* the engine's own refusal */
        snprintf(errbuf, errlen, "refused by the engine (fuzz)");
        return -EINVAL;
    }
    j = calloc(1, sizeof(*j));
    assert(j);
    snprintf(j->id, sizeof(j->id), "job-%d", ++started_total);
    j->cb = cb;
    j->data = data;
    j->next = jobs;
    jobs = j;
    running++;
    assert(running <= AG_MAX_RUNNING);
    *out = j;
    return 0;
}

void hs_job_cancel(struct hs_job *job)
{
    job->canceled = 1;
}

void hs_job_free(struct hs_job *job)
{
    free(job);
}

const char *hs_job_id(const struct hs_job *job)
{
    return job->id;
}

size_t hs_job_image_count(const struct hs_job *job)
{
    return 0;
}

const struct hs_image *hs_job_image(const struct hs_job *job, size_t i)
{
    return NULL;
}

double hs_job_seconds(const struct hs_job *job)
{
    return 1;
}

double hs_job_stall_ms(const struct hs_job *job)
{
    return -1;
}

/* What waits, answered: the listings, then every job, which ends (with a
 * state event the way the engine makes them, its location redacted). */
static void pump(int list_fails)
{
    while (listings) {
        struct listing *l = listings;
        cJSON *list = NULL;

        listings = l->next;
        if (!list_fails) {
            list = cJSON_Parse("[{\"name\":\"web-1\",\"uuid\":\"u-1\"},"
                               "{\"name\":\"db-2\",\"uuid\":\"u-2\"}]");
            l->cb(&engine, 0, list, NULL, l->data);
        } else {
            l->cb(&engine, -EIO, NULL, "libvirt said no (fuzz)", l->data);
        }
        free(l);
    }
    while (jobs) {
        struct hs_job *j = jobs;
        cJSON *ev = cJSON_CreateObject();

        jobs = j->next;
        cJSON_AddStringToObject(ev, "event", "state");
        cJSON_AddStringToObject(ev, "job", j->id);
        cJSON_AddStringToObject(ev, "state", j->canceled ? "failed" : "done");
        cJSON_AddStringToObject(ev, "location", "http://***@glance.example:9292/v2/images/x");
        ag_ops_engine_event(ops, ev);
        cJSON_Delete(ev);
        running--;
        j->cb(j, j->canceled ? -ECANCELED : 0, j->data); /* frees it */
    }
}

/* ---- what comes out ---- */

/* what a request gave may come back to it (an idempotency key, a name) */
static int input_has_secret;

static void clean(const char *text, size_t len)
{
    if (input_has_secret)
        return;
    assert(!memmem(text, len, SECRET, strlen(SECRET)));
    assert(!memmem(text, len, OS_TOKEN, strlen(OS_TOKEN)));
}

static void clean_json(const cJSON *body)
{
    char *s = body ? cJSON_PrintUnformatted(body) : NULL;

    if (s) {
        clean(s, strlen(s));
        free(s);
    }
}

static int status_ok(int status)
{
    static const int known[] = {200, 202, 400, 401, 404, 405, 409, 429, 503};
    size_t i;

    for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (status == known[i])
            return 1;
    return 0;
}

static void on_event(void *data, const char *job, const char *text, size_t len)
{
    clean(text, len);
}

static void on_news(void *data, enum ag_news what, int status, const cJSON *job)
{
    clean_json(job);
}

struct http_wait {
    struct ag_http_wait w;
    int answered;
    int abandoned; /* its client went before the answer */
};

static void http_answer(void *data, const struct ag_http_out *out)
{
    struct http_wait *hw = data;

    assert(!hw->answered && !hw->abandoned);
    hw->answered = 1;
    assert(status_ok(out->status));
    assert(out->body);
    assert(!out->unauthorized || out->status == 401);
    clean_json(out->body);
}

static void bus_answer(void *data, const struct ag_rpc_answer *a)
{
    int *answered = data;

    assert(!*answered);
    *answered = 1;
    assert(status_ok(a->status));
    assert((a->status >= 400) == (a->error != NULL));
    if (a->error)
        clean(a->error, strlen(a->error));
    clean_json(a->result);
}

/* ---- one request ---- */

static const char *line_end(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));

    return nl ? nl : end;
}

static void http_request(const char *p, const char *end, int tcp, struct http_wait *hw)
{
    struct ag_http_in in = {.tcp = tcp};
    const char *eol = line_end(p, end), *sp = memchr(p, ' ', (size_t)(eol - p));
    char job[AG_ID_MAX + 1];
    enum ag_http_route r;

    if (!sp) {
        hw->answered = 1; /* not a request line: H2O would have answered 400 itself */
        return;
    }
    in.method = p;
    in.method_len = (size_t)(sp - p);
    in.path = sp + 1;
    in.path_len = (size_t)(eol - sp - 1);
    for (p = eol < end ? eol + 1 : end; p < end; p = eol + 1) {
        const char *colon, *v;

        eol = line_end(p, end);
        if (eol == p)
            break;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            for (v = colon + 1; v < eol && *v == ' '; v++)
                ;
            if ((size_t)(colon - p) == 13 && !strncasecmp(p, "authorization", 13)) {
                in.auth = v;
                in.auth_len = (size_t)(eol - v);
            } else if ((size_t)(colon - p) == 15 && !strncasecmp(p, "idempotency-key", 15)) {
                in.key = v;
                in.key_len = (size_t)(eol - v);
            }
        }
        if (eol == end)
            break;
    }
    in.body = eol < end ? eol + 1 : end;
    in.body_len = (size_t)(end - in.body);
    hw->w.answer = http_answer;
    hw->w.data = hw;
    r = ag_http_dispatch(ops, BEARER, &in, &hw->w, job);
    if (tcp && !(in.auth && ag_bearer_ok(in.auth, in.auth_len, BEARER)))
        assert(r == AG_HTTP_UNAUTHORIZED && hw->answered);
    switch (r) {
    case AG_HTTP_ANSWERED:
        assert(hw->answered || hw->w.pending);
        break;
    case AG_HTTP_UNAUTHORIZED:
        assert(hw->answered);
        break;
    case AG_HTTP_EVENTS:
        assert(strlen(job) <= AG_ID_MAX);
        /* fall through */
    case AG_HTTP_HEALTHZ:
    case AG_HTTP_METRICS:
        assert(!hw->answered && !hw->w.pending);
        break;
    }
}

static void bus_request(const char *p, const char *end, int *answered)
{
    struct ag_rpc rpc;
    char err[256];

    if (ag_rpc_unwrap(p, (size_t)(end - p), &rpc, err, sizeof(err)) < 0) {
        *answered = 1;
        return;
    }
    ag_rpc_dispatch(ops, &rpc, bus_answer, answered);
    ag_rpc_free(&rpc);
}

/* ---- the operations, fresh for each input ---- */

static int dirfd_ = -1;
static struct ag_metrics m;
static uv_loop_t loop; /* the history's rewrites */

static void setup(void)
{
    static struct hs_snapshot_opts defaults = {.token = OS_TOKEN};
    struct ag_ops_config oc = {0};
    char dir[] = "/tmp/hs-fuzz-dispatch-XXXXXX", err[256];

    if (dirfd_ < 0) {
        assert(uv_loop_init(&loop) == 0);
        assert(mkdtemp(dir));
        dirfd_ = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert(dirfd_ >= 0);
    }
    unlinkat(dirfd_, "jobs.jsonl", 0);
    ag_metrics_init(&m);
    oc.defaults = &defaults;
    oc.targets = targets;
    oc.ntargets = sizeof(targets) / sizeof(targets[0]);
    oc.loop = &loop;
    oc.dirfd = dirfd_;
    oc.state_dir = "/var/lib/hotsnap";
    oc.history = 16;
    oc.m = &m;
    oc.hooks.event = on_event;
    oc.hooks.news = on_news;
    assert(ag_ops_new(&oc, &ops, err, sizeof(err)) == 0);
    ag_ops_attach(ops, &engine);
    ag_ops_recovered(ops, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    struct http_wait waits[16];
    int answered[16], n = 0, i;

    memset(waits, 0, sizeof(waits));
    memset(answered, 0, sizeof(answered));
    input_has_secret = memmem(data, size, SECRET, strlen(SECRET)) ||
                       memmem(data, size, OS_TOKEN, strlen(OS_TOKEN));
    setup();
    while (p < end && n < 16) {
        const char *sep = memmem(p, (size_t)(end - p), "\n%%\n", 4), *stop = sep ? sep : end;

        engine.connected = !(size && data[0] == '!'); /* an input that starts with ! has no libvirt */
        if (p < stop && (*p == 'H' || *p == 'T')) {
            http_request(p + 1, stop, *p == 'T', &waits[n]);
            if (stop[-1] == '^' && waits[n].w.pending) { /* "^": the client leaves */
                ag_pending_abandon(waits[n].w.pending);
                waits[n].abandoned = 1;
            }
        }
        else if (p < stop && *p == 'B')
            bus_request(p + 1, stop, &answered[n]);
        else
            answered[n] = waits[n].answered = 1;
        n++;
        if (p < stop && stop[-1] == '~')
            pump(stop - p > 1 && stop[-2] == '~'); /* "~~": libvirt fails the listings */
        uv_run(&loop, UV_RUN_NOWAIT);
        p = sep ? sep + 4 : end;
    }
    pump(0);
    /* every request was answered once, now that nothing waits */
    for (i = 0; i < n; i++) {
        if (waits[i].w.answer)
            assert(waits[i].answered || waits[i].abandoned || !waits[i].w.pending);
        else
            assert(answered[i] || waits[i].answered);
    }
    ag_ops_stop(ops);
    pump(0);
    assert(running == 0 && ag_ops_running(ops) == 0);
    ag_ops_close(ops);
    ops = NULL;
    return 0;
}
