/*
 * The agent's operations and its jobs (see ops.h).
 *
 * Jobs are JSON objects kept up to date from the engine's events; each is
 * written to the history when accepted, at each state and at its end, so a
 * restarted agent knows what ran, reports what a dead run left as failed
 * with the reason, and keeps a bounded history.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "history.h"
#include "log.h"
#include "ops.h"

/* One job the agent knows: running (job set) or from the history. */
struct ag_job {
    struct ag_job *prev, *next; /* by when accepted */
    struct ag_ops *ops;
    struct hs_job *job; /* while running */
    char id[AG_ID_MAX + 1];
    char key[AG_ID_MAX + 1]; /* Idempotency-Key, or "" */
    cJSON *obj;              /* what the API shows */
    char state[16];          /* the engine's last state */
    double t_state;          /* its "elapsed" when it began */
    int ended;
    int hidden; /* started and canceled inside a failed request */
};

/* An operation waiting for the engine (a domain listing). */
struct ag_pending {
    struct ag_ops *ops;
    ag_reply_fn reply; /* NULL once the asker went away */
    void *data;
    cJSON *doc;
    struct ag_want *wants;
    int n;     /* snapshots it asks for (0: a listing of the domains) */
    int batch; /* the body was a list */
    char key[AG_ID_MAX + 1];
    struct ag_pending *prev, *next;
};

/* A target as the operations keep it. */
struct ops_target {
    char *name;
    char *spec;  /* NULL: the engine's default store */
    char *shown; /* what the API shows: no password */
    int token;   /* glance:URL: the operator's token goes with it */
    int verifying; /* a verify or a prune of this store runs */
};

struct ag_ops {
    struct ag_ops_config cfg;
    struct ops_target *targets;
    int ntargets;
    struct hs_engine *eng;
    struct ag_history *hist;
    struct ag_metrics *m;
    struct ag_job *jobs, *jobs_tail;
    int running;
    int accepting; /* snapshots asked for by requests that wait for the domain list */
    int ready;     /* recovery done: jobs may start */
    int stopping; /* no new work */
    struct ag_pending *pendings;
    int verifies; /* stores being verified or pruned (ag_ops_busy) */
};

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

static int state_ended(const char *s)
{
    return !strcmp(s, "done") || !strcmp(s, "failed");
}

/* ---- the job table and its history ---- */

static struct ag_job *job_find(struct ag_ops *o, const char *id)
{
    struct ag_job *j;

    for (j = o->jobs; j; j = j->next)
        if (!j->hidden && !strcmp(j->id, id))
            return j;
    return NULL;
}

static void job_link(struct ag_ops *o, struct ag_job *j)
{
    j->ops = o;
    j->prev = o->jobs_tail;
    if (o->jobs_tail)
        o->jobs_tail->next = j;
    else
        o->jobs = j;
    o->jobs_tail = j;
}

static void job_unlink_free(struct ag_ops *o, struct ag_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        o->jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        o->jobs_tail = j->prev;
    cJSON_Delete(j->obj);
    free(j);
}

/* The history's lines when it is rewritten: every job shown. */
struct hist_iter {
    struct ag_job *j;
};

static const cJSON *hist_next(void *it)
{
    struct hist_iter *h = it;
    const cJSON *obj;

    while (h->j && h->j->hidden)
        h->j = h->j->next;
    if (!h->j)
        return NULL;
    obj = h->j->obj;
    h->j = h->j->next;
    return obj;
}

static int history_compact(struct ag_ops *o)
{
    struct hist_iter it = {o->jobs};

    return ag_history_compact(o->hist, hist_next, &it);
}

/* Forget the oldest ended jobs beyond the history's bound. */
static void jobs_trim(struct ag_ops *o)
{
    struct ag_job *j, *next;
    int ended = 0;

    for (j = o->jobs; j; j = j->next)
        ended += j->ended;
    for (j = o->jobs; j && ended > o->cfg.history; j = next) {
        next = j->next;
        if (j->ended) {
            job_unlink_free(o, j);
            ended--;
        }
    }
    if (ag_history_lines(o->hist) > (unsigned)(2 * o->cfg.history + 64)) {
        struct hist_iter it = {o->jobs};

        ag_history_compact_async(o->hist, hist_next, &it); /* no fsync on the loop */
    }
}

/* One line of the history: the last line of a job wins. */
static void history_line(void *data, cJSON *obj)
{
    struct ag_ops *o = data;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(obj, "id"));
    const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(obj, "state"));
    const char *key = cJSON_GetStringValue(cJSON_GetObjectItem(obj, "idempotency_key"));
    struct ag_job *j;

    if (!id || !state || strlen(id) > AG_ID_MAX) {
        cJSON_Delete(obj);
        return;
    }
    j = job_find(o, id);
    if (!j) {
        j = calloc(1, sizeof(*j));
        if (!j) {
            cJSON_Delete(obj);
            return;
        }
        snprintf(j->id, sizeof(j->id), "%s", id);
        job_link(o, j);
    }
    cJSON_Delete(j->obj);
    j->obj = obj;
    snprintf(j->key, sizeof(j->key), "%s", key && strlen(key) <= AG_ID_MAX ? key : "");
    snprintf(j->state, sizeof(j->state), "%s", state);
    j->ended = state_ended(state);
}

/* ---- what the engine and the agent say about jobs ---- */

static void emit(struct ag_ops *o, const char *job, const cJSON *ev)
{
    char *text;

    if (!o->cfg.hooks.event)
        return;
    text = cJSON_PrintUnformatted(ev);
    if (text)
        o->cfg.hooks.event(o->cfg.hooks.data, job, text, strlen(text));
    free(text);
}

static void news(struct ag_ops *o, enum ag_news what, int status, const struct ag_job *j)
{
    if (o->cfg.hooks.news)
        o->cfg.hooks.news(o->cfg.hooks.data, what, status, j->obj);
}

/* The agent's own news (accepted, interrupted) to the event readers. */
static void job_announce(struct ag_ops *o, struct ag_job *j, const char *type)
{
    cJSON *ev = cJSON_CreateObject();
    char ts[40];

    iso_now(ts, sizeof(ts));
    cJSON_AddStringToObject(ev, "event", type);
    cJSON_AddStringToObject(ev, "time", ts);
    cJSON_AddStringToObject(ev, "job", j->id);
    cJSON_AddItemToObject(ev, "snapshot", cJSON_Duplicate(j->obj, 1));
    emit(o, j->id, ev);
    cJSON_Delete(ev);
}

/* The engine's event @ev about @j: the job object follows it. The last
 * state event (done or failed) comes before the job's callback, with the
 * images, the error and the stall. */
static void job_on_event(struct ag_job *j, const cJSON *ev)
{
    /* what a state event carries that the job shows: the event's name, the job's */
    static const struct {
        const char *ev, *job;
    } kept[] = {
        {"task_state", "task_state"}, {"mode", "mode"},         {"reason", "mode_reason"},
        {"error", "error"},           {"stall_ms", "stall_ms"}, {"scratch_peak", "scratch_peak"},
        {"images", "images"},
    };
    struct ag_ops *o = j->ops;
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
            ag_hist_observe(&o->m->capture_s, elapsed - j->t_state);
        else if (!strcmp(j->state, "upload"))
            ag_hist_observe(&o->m->upload_s, elapsed - j->t_state);
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
        ag_history_append(o->hist, j->obj);
}

void ag_ops_engine_event(struct ag_ops *o, const cJSON *ev)
{
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "job"));
    struct ag_job *j = id ? job_find(o, id) : NULL;

    if (j)
        job_on_event(j, ev);
    emit(o, id, ev);
}

static void job_done(struct hs_job *job, int status, void *data)
{
    struct ag_job *j = data;
    struct ag_ops *o = j->ops;
    size_t k;

    /* state, error, stall and images came with the engine's last state event */
    for (k = 0; k < hs_job_image_count(job); k++)
        if (hs_job_image(job, k)->id)
            o->m->bytes_published += hs_job_image(job, k)->size;
    obj_set(j->obj, "seconds", cJSON_CreateNumber(round(hs_job_seconds(job) * 1000) / 1000));
    if (hs_job_stall_ms(job) >= 0)
        ag_hist_observe(&o->m->stall_s, hs_job_stall_ms(job) / 1000.0);
    if (!j->hidden) { /* a hidden job was never accepted */
        news(o, AG_NEWS_ENDED, status, j);
        if (status == 0)
            o->m->jobs_done++;
        else if (status == -ECANCELED)
            o->m->jobs_canceled++;
        else
            o->m->jobs_failed++;
    }
    j->ended = 1;
    j->job = NULL;
    hs_job_free(job);
    o->running--;
    if (!j->hidden)
        ag_history_append(o->hist, j->obj);
    else
        job_unlink_free(o, j);
    jobs_trim(o);
    if (o->stopping && o->running == 0 && o->cfg.hooks.idle)
        o->cfg.hooks.idle(o->cfg.hooks.data);
}

/* ---- answers ---- */

static cJSON *error_body_v(const char *fmt, va_list ap)
{
    char msg[1024];
    cJSON *b = cJSON_CreateObject();

    vsnprintf(msg, sizeof(msg), fmt, ap);
    cJSON_AddStringToObject(b, "error", msg);
    return b;
}

/* {"error": "..."}: what every failed request answers. */
static cJSON *error_body(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cJSON *error_body(const char *fmt, ...)
{
    cJSON *b;
    va_list ap;

    va_start(ap, fmt);
    b = error_body_v(fmt, ap);
    va_end(ap);
    return b;
}

static struct ag_pending *pending_new(struct ag_ops *o, ag_reply_fn reply, void *data)
{
    struct ag_pending *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    p->ops = o;
    p->reply = reply;
    p->data = data;
    p->next = o->pendings;
    if (o->pendings)
        o->pendings->prev = p;
    o->pendings = p;
    return p;
}

/* Answer the asker (unless it left) and forget @p; takes @body. */
static void pending_finish(struct ag_pending *p, int status, cJSON *body, int replayed)
{
    struct ag_ops *o = p->ops;

    if (p->reply)
        p->reply(p->data, status, body, replayed);
    cJSON_Delete(body);
    o->accepting -= p->n;
    if (p->prev)
        p->prev->next = p->next;
    else
        o->pendings = p->next;
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

/* ---- snapshot ---- */

/* The target a request named (resolved by resolve_targets). */
static const struct ops_target *target_of(const struct ag_ops *o, const struct ag_want *w)
{
    int i;

    for (i = 1; w->target && i < o->ntargets; i++)
        if (!strcmp(w->target, o->targets[i].name))
            return &o->targets[i];
    return &o->targets[0];
}

/* Each want's target, the operator's: its spec, and the token only where
 * it was configured to go. NULL, or the error's answer. */
static cJSON *resolve_targets(struct ag_ops *o, struct ag_want *wants, int n)
{
    char names[1024];
    size_t k = 0;
    int i, t;

    for (i = 0; i < n; i++) {
        const struct ops_target *tg = NULL;

        for (t = 0; t < o->ntargets && !tg; t++)
            if (!wants[i].target ? t == 0 : !strcmp(wants[i].target, o->targets[t].name))
                tg = &o->targets[t];
        if (!tg) {
            for (t = 0; t < o->ntargets && k < sizeof(names); t++)
                k += (size_t)snprintf(names + k, sizeof(names) - k, "%s%s", t ? ", " : "",
                                      o->targets[t].name);
            return error_body("%sfield 'target': the agent has no target '%s' (it has: %s)",
                              n > 1 ? "a request's " : "", wants[i].target, names);
        }
        wants[i].opts.target = tg->spec;
        wants[i].opts.token = tg->token ? o->cfg.defaults->token : NULL;
    }
    return NULL;
}

static cJSON *job_request_json(const struct ag_want *w, const struct ops_target *t)
{
    cJSON *r = cJSON_CreateObject();
    static const char *const quiesce[] = {"auto", "required", "off"};

    cJSON_AddStringToObject(r, "target", t->name);
    cJSON_AddStringToObject(r, "to", t->shown);
    cJSON_AddStringToObject(r, "mode", hs_mode_name(w->opts.mode));
    cJSON_AddStringToObject(r, "format", hs_format_name(w->opts.format));
    cJSON_AddBoolToObject(r, "compress", w->opts.compress);
    cJSON_AddBoolToObject(r, "all_disks", w->opts.all_disks);
    cJSON_AddBoolToObject(r, "incremental", w->opts.incremental);
    if (w->opts.rotation) {
        cJSON_AddNumberToObject(r, "rotation", w->opts.rotation);
        cJSON_AddStringToObject(r, "backup_type", w->opts.backup_type);
    }
    cJSON_AddStringToObject(r, "quiesce", quiesce[w->opts.quiesce]);
    if (w->opts.name)
        cJSON_AddStringToObject(r, "name", w->opts.name);
    if (w->opts.image_id)
        cJSON_AddStringToObject(r, "image_id", w->opts.image_id);
    cJSON_AddNumberToObject(r, "priority", w->opts.priority);
    return r;
}

static cJSON *jobs_with_key(struct ag_ops *o, const char *key)
{
    cJSON *arr = NULL;
    struct ag_job *j;

    for (j = o->jobs; j; j = j->next) {
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
    struct ag_ops *o = p->ops;
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
    if (status < 0 || o->stopping) {
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
        j->ops = o;
        if (hs_snapshot_start(o->eng, &p->wants[i].opts, job_done, j, &job, err, sizeof(err)) < 0) {
            free(j);
            /* nothing of this request may run: its jobs have not taken a step yet */
            for (k = 0; k < n; k++) {
                started[k]->hidden = 1;
                hs_job_cancel(started[k]->job);
                o->m->jobs_accepted--;
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
        cJSON_AddItemToObject(j->obj, "request",
                              job_request_json(&p->wants[i], target_of(o, &p->wants[i])));
        if (p->key[0])
            cJSON_AddStringToObject(j->obj, "idempotency_key", p->key);
        job_link(o, j);
        started[n++] = j;
        o->running++;
        o->m->jobs_accepted++;
        cJSON_AddItemToArray(arr, cJSON_Duplicate(j->obj, 1));
    }
    for (k = 0; k < n; k++) {
        ag_history_append(o->hist, started[k]->obj);
        job_announce(o, started[k], "accepted");
        news(o, AG_NEWS_ACCEPTED, 0, started[k]);
    }
    code = 202;
    body = jobs_answer(arr, p->batch);
cleanup:
    free(names);
    free(started);
    cJSON_Delete(list);
    pending_finish(p, code, body, 0);
}

int ag_op_snapshot(struct ag_ops *o, struct ag_snapshot_req *req, ag_reply_fn reply, void *data,
                   struct ag_pending **out)
{
    struct ag_pending *p = NULL;
    cJSON *same, *ans = NULL;
    int code = 503;

    *out = NULL;
    if ((ans = resolve_targets(o, req->wants, req->n)) != NULL) {
        reply(data, 400, ans, 0);
        goto done;
    }
    if (req->key && (same = jobs_with_key(o, req->key))) {
        ans = jobs_answer(same, req->batch);
        reply(data, 202, ans, 1);
        goto done;
    }
    for (p = o->pendings; req->key && p; p = p->next) {
        if (p->n && !strcmp(p->key, req->key)) {
            ans = error_body("a request with idempotency key '%s' is being accepted; retry",
                             req->key);
            code = 409;
        }
    }
    if (!ans && (!o->ready || o->stopping))
        ans = error_body("%s", o->stopping ? "the agent is stopping"
                                           : "the agent is recovering what a dead run left; retry");
    /* what is being accepted counts too: its jobs start once libvirt has listed the domains */
    if (!ans && o->running + o->accepting + req->n > AG_MAX_RUNNING) {
        ans = error_body("%d snapshots are running and %d being accepted; at most %d may run",
                         o->running, o->accepting, AG_MAX_RUNNING);
        code = 429;
    }
    if (!ans && !(p = pending_new(o, reply, data)))
        ans = error_body("out of memory");
    if (ans) {
        reply(data, code, ans, 0);
        goto done;
    }
    p->doc = req->doc;
    p->wants = req->wants;
    p->n = req->n;
    o->accepting += p->n;
    p->batch = req->batch;
    snprintf(p->key, sizeof(p->key), "%s", req->key ? req->key : "");
    if (hs_engine_list(o->eng, post_listed, p) < 0) {
        pending_finish(
            p, 503, error_body("not connected to libvirt: %s", hs_engine_error(o->eng) ?: "?"), 0);
        return 0;
    }
    *out = p;
    return 1;
done:
    cJSON_Delete(ans);
    cJSON_Delete(req->doc);
    free(req->wants);
    return 0;
}

/* ---- the others ---- */

int ag_op_get(struct ag_ops *o, const char *id, cJSON **body)
{
    struct ag_job *j = job_find(o, id);

    if (!j) {
        *body = error_body("no snapshot job '%s'", id);
        return 404;
    }
    *body = cJSON_Duplicate(j->obj, 1);
    return 200;
}

int ag_op_cancel(struct ag_ops *o, const char *id, cJSON **body)
{
    struct ag_job *j = job_find(o, id);

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
                           "ending it",
                           id);
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

int ag_op_list(struct ag_ops *o, const char *state, const char *domain, long max, cJSON **body)
{
    cJSON *arr = cJSON_CreateArray();
    struct ag_job *j;
    long n = 0;

    /* newest first */
    for (j = o->jobs_tail; j && (max <= 0 || n < max); j = j->prev) {
        if (job_matches(j, state, domain)) {
            cJSON_AddItemToArray(arr, cJSON_Duplicate(j->obj, 1));
            n++;
        }
    }
    *body = arr;
    return 200;
}

int ag_op_targets(struct ag_ops *o, cJSON **body)
{
    cJSON *arr = cJSON_CreateArray();
    int i;

    for (i = 0; i < o->ntargets; i++) {
        cJSON *t = cJSON_CreateObject();

        cJSON_AddStringToObject(t, "name", o->targets[i].name);
        cJSON_AddStringToObject(t, "to", o->targets[i].shown);
        cJSON_AddBoolToObject(t, "default", i == 0);
        cJSON_AddItemToArray(arr, t);
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

int ag_op_domains(struct ag_ops *o, ag_reply_fn reply, void *data, struct ag_pending **out)
{
    struct ag_pending *p = pending_new(o, reply, data);
    cJSON *err;

    *out = NULL;
    if (p && hs_engine_list(o->eng, domains_listed, p) == 0) {
        *out = p;
        return 1;
    }
    err = p ? error_body("not connected to libvirt: %s", hs_engine_error(o->eng) ?: "?")
            : error_body("out of memory");
    if (p) {
        pending_finish(p, 503, err, 0);
    } else {
        reply(data, 503, err, 0);
        cJSON_Delete(err);
    }
    return 0;
}

/* ---- verify: a store's images against their sidecars ---- */

struct ops_verify {
    struct ag_ops *o;
    struct ops_target *t;
    struct ag_pending *p;
    cJSON *bad;
};

static void verified_one(const char *id, const char *file, const char *why, void *data)
{
    struct ops_verify *v = data;
    cJSON *e;

    if (!why)
        return;
    e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "id", id ? id : "");
    cJSON_AddStringToObject(e, "file", file ? file : "");
    cJSON_AddStringToObject(e, "error", why);
    cJSON_AddItemToArray(v->bad, e);
}

static void verified_all(int checked, int bad, int status, const char *error, void *data)
{
    struct ops_verify *v = data;
    cJSON *b;

    v->t->verifying = 0;
    v->o->verifies--;
    if (status < 0) {
        pending_finish(v->p, 503, error_body("cannot verify target '%s': %s", v->t->name,
                                             error ? error : "?"), 0);
        cJSON_Delete(v->bad);
    } else {
        b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "target", v->t->name);
        cJSON_AddNumberToObject(b, "checked", checked);
        cJSON_AddNumberToObject(b, "bad", bad);
        cJSON_AddItemToObject(b, "images", v->bad); /* the bad ones */
        pending_finish(v->p, 200, b, 0);
    }
    free(v);
}

/* The dir: store a verify or a prune of target @name works on, its spec in
 * @spec; NULL with the answer in *@e and *@status when there is none. */
static struct ops_target *store_target(struct ag_ops *o, const char *name, const char *what,
                                       char *spec, size_t speclen, cJSON **e, int *status)
{
    struct ops_target *t = NULL;
    int i;

    for (i = 0; i < o->ntargets; i++)
        if (!strcmp(o->targets[i].name, name))
            t = &o->targets[i];
    *status = 400;
    if (!t) {
        *e = error_body("no target named '%s' (GET /v1/targets)", name);
        *status = 404;
    } else if (t->spec && strncmp(t->spec, "dir:", 4)) {
        *e = error_body("target '%s' is a Glance: only a dir: store is %s here", name, what);
    } else if (t->verifying) {
        *e = error_body("target '%s' is being verified or pruned already", name);
        *status = 409;
    } else if (o->stopping) {
        *e = error_body("the agent is stopping");
        *status = 503;
    } else {
        /* only the store the operator configured for this name */
        if (t->spec)
            snprintf(spec, speclen, "%s", t->spec);
        else
            snprintf(spec, speclen, "dir:%s/images", o->cfg.state_dir);
        return t;
    }
    return NULL;
}

int ag_op_verify(struct ag_ops *o, const char *name, ag_reply_fn reply, void *data,
                 struct ag_pending **out)
{
    struct ops_verify *v;
    struct ops_target *t;
    char spec[4200], err[512];
    cJSON *e = NULL;
    int status;

    *out = NULL;
    t = store_target(o, name, "verified (Glance checks its own images' os_hash_value)", spec,
                     sizeof(spec), &e, &status);
    if (t && (!(v = calloc(1, sizeof(*v))) || !(v->p = pending_new(o, reply, data)))) {
        free(v);
        e = error_body("out of memory");
        status = 503;
    } else if (t) {
        v->o = o;
        v->t = t;
        v->bad = cJSON_CreateArray();
        if (hs_store_verify(o->cfg.loop, spec, verified_one, verified_all, v, err,
                            sizeof(err)) == 0) {
            t->verifying = 1;
            o->verifies++;
            *out = v->p;
            return 1;
        }
        pending_finish(v->p, 400, error_body("cannot verify target '%s': %s", name, err), 0);
        cJSON_Delete(v->bad);
        free(v);
        return 0;
    }
    reply(data, status, e, 0);
    cJSON_Delete(e);
    return 0;
}

/* ---- prune: a store's retention ---- */

struct ops_prune {
    struct ag_ops *o;
    struct ops_target *t;
    struct ag_pending *p;
    cJSON *images;
    int dry_run;
};

static void pruned_one(const cJSON *img, void *data)
{
    struct ops_prune *v = data;

    cJSON_AddItemToArray(v->images, cJSON_Duplicate(img, 1));
}

static void pruned_all(int kept, int removed, int rewritten, int status, const char *error,
                       void *data)
{
    struct ops_prune *v = data;
    cJSON *b = cJSON_CreateObject();

    v->t->verifying = 0;
    v->o->verifies--;
    cJSON_AddStringToObject(b, "target", v->t->name);
    if (status < 0)
        cJSON_AddStringToObject(b, "error", error ? error : "?");
    cJSON_AddNumberToObject(b, "kept", kept);
    cJSON_AddNumberToObject(b, "removed", removed);
    cJSON_AddNumberToObject(b, "rewritten", rewritten);
    cJSON_AddBoolToObject(b, "dry_run", v->dry_run);
    cJSON_AddItemToObject(b, "images", v->images);
    pending_finish(v->p, status < 0 ? 500 : 200, b, 0);
    free(v);
}

/* The request's retention: the keys known, each of its type; 0 or -1 with @err. */
static int prune_args(const cJSON *args, struct hs_prune_opts *po, char *err, size_t len)
{
    static const char *const keys[] = {"keep_last", "keep_daily", "keep_weekly"};
    const cJSON *it;
    size_t i;

    cJSON_ArrayForEach(it, args) {
        for (i = 0; i < 3 && strcmp(it->string, keys[i]); i++)
            ;
        if (i < 3) {
            if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int)it->valuedouble ||
                it->valuedouble < 0 || it->valuedouble > (i ? 64 : 100000)) {
                snprintf(err, len, "'%s' must be a whole number from 0 to %d", keys[i],
                         i ? 64 : 100000);
                return -1;
            }
            *(i == 0 ? &po->keep_last : i == 1 ? &po->keep_daily : &po->keep_weekly) =
                it->valueint;
        } else if (!strcmp(it->string, "dry_run")) {
            if (!cJSON_IsBool(it)) {
                snprintf(err, len, "'dry_run' must be true or false");
                return -1;
            }
            po->dry_run = cJSON_IsTrue(it);
        } else if (strcmp(it->string, "target")) { /* the bus names the target in its args */
            snprintf(err, len,
                     "unknown key '%.64s' (expected keep_last, keep_daily, keep_weekly, dry_run)",
                     it->string);
            return -1;
        }
    }
    if (!po->keep_last && !po->keep_daily && !po->keep_weekly) {
        snprintf(err, len, "a prune needs keep_last, keep_daily or keep_weekly (what to keep)");
        return -1;
    }
    return 0;
}

int ag_op_prune(struct ag_ops *o, const char *name, const cJSON *args, ag_reply_fn reply,
                void *data, struct ag_pending **out)
{
    struct hs_prune_opts po = {0};
    struct ops_target *t = NULL;
    struct ops_prune *v = NULL;
    char spec[4200], err[512];
    cJSON *e = NULL;
    int status = 400;

    *out = NULL;
    if (args && !cJSON_IsObject(args))
        e = error_body("a prune's body is a JSON object");
    else if (prune_args(args, &po, err, sizeof(err)) < 0)
        e = error_body("%s", err);
    else
        t = store_target(o, name, "pruned", spec, sizeof(spec), &e, &status);
    if (t && (!(v = calloc(1, sizeof(*v))) || !(v->p = pending_new(o, reply, data)))) {
        free(v);
        e = error_body("out of memory");
        status = 503;
    } else if (t) {
        v->o = o;
        v->t = t;
        v->images = cJSON_CreateArray();
        v->dry_run = po.dry_run;
        po.target = spec;
        if (hs_store_prune(o->cfg.loop, &po, pruned_one, pruned_all, v, err, sizeof(err)) == 0) {
            t->verifying = 1;
            o->verifies++;
            *out = v->p;
            return 1;
        }
        pending_finish(v->p, 400, error_body("cannot prune target '%s': %s", name, err), 0);
        cJSON_Delete(v->images);
        free(v);
        return 0;
    }
    reply(data, status, e, 0);
    cJSON_Delete(e);
    return 0;
}

int ag_ops_busy(const struct ag_ops *o)
{
    return o->verifies;
}

/* ---- life ---- */

static void targets_free(struct ag_ops *o)
{
    int i;

    for (i = 0; i < o->ntargets; i++) {
        free(o->targets[i].name);
        if (o->targets[i].spec)
            explicit_bzero(o->targets[i].spec, strlen(o->targets[i].spec));
        free(o->targets[i].spec);
        free(o->targets[i].shown);
    }
    free(o->targets);
    o->targets = NULL;
    o->ntargets = 0;
}

static int targets_copy(struct ag_ops *o, const struct ag_ops_config *cfg)
{
    char shown[4200];
    int i;

    o->targets = calloc((size_t)cfg->ntargets, sizeof(*o->targets));
    if (!o->targets)
        return -1;
    for (i = 0; i < cfg->ntargets; i++) {
        const struct ag_target *t = &cfg->targets[i];
        struct ops_target *c = &o->targets[o->ntargets++];

        if (t->spec)
            ag_spec_redact(t->spec, shown, sizeof(shown));
        else
            snprintf(shown, sizeof(shown), "dir:%s/images", cfg->state_dir);
        c->name = strdup(t->name);
        c->spec = t->spec ? strdup(t->spec) : NULL;
        c->shown = strdup(shown);
        c->token = t->spec && !strncmp(t->spec, "glance:", 7);
        if (!c->name || (t->spec && !c->spec) || !c->shown)
            return -1;
    }
    return 0;
}

int ag_ops_new(const struct ag_ops_config *cfg, struct ag_ops **out, char *err, size_t errlen)
{
    struct ag_ops *o = calloc(1, sizeof(*o));
    int rc;

    if (!o) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    o->cfg = *cfg;
    o->m = cfg->m;
    if (targets_copy(o, cfg) < 0) {
        snprintf(err, errlen, "out of memory");
        targets_free(o);
        free(o);
        return -ENOMEM;
    }
    rc = ag_history_open(cfg->loop, cfg->dirfd, &o->hist, err, errlen);
    if (rc < 0) {
        targets_free(o);
        free(o);
        return rc;
    }
    ag_history_load(o->hist, history_line, o);
    rc = history_compact(o);
    if (rc < 0) {
        snprintf(err, errlen, "cannot rewrite the job history: %s", strerror(-rc));
        while (o->jobs)
            job_unlink_free(o, o->jobs);
        ag_history_close(o->hist);
        targets_free(o);
        free(o);
        return rc;
    }
    *out = o;
    return 0;
}

void ag_ops_attach(struct ag_ops *o, struct hs_engine *eng)
{
    o->eng = eng;
}

/* Jobs a dead run left: failed, with what recovery did about them. */
void ag_ops_recovered(struct ag_ops *o, const cJSON *report)
{
    struct ag_job *j;
    const cJSON *e;

    for (j = o->jobs; j; j = j->next) {
        char why[1024];
        const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(j->obj, "domain"));
        cJSON *rec;
        size_t n;

        if (j->ended)
            continue;
        rec = cJSON_CreateArray();
        n = (size_t)snprintf(why, sizeof(why),
                             "the agent stopped while this snapshot was in state '%s'", j->state);
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
        o->m->jobs_failed++;
        ag_history_append(o->hist, j->obj);
        job_announce(o, j, "interrupted");
        news(o, AG_NEWS_INTERRUPTED, -EINTR, j);
        ag_log("warning", "job %s on '%s': %s", j->id, dom ? dom : "?", why);
    }
    jobs_trim(o);
    o->ready = 1;
}

int ag_ops_stop(struct ag_ops *o)
{
    o->stopping = 1;
    if (o->eng)
        hs_engine_cancel_all(o->eng);
    return o->running;
}

void ag_ops_close(struct ag_ops *o)
{
    if (!o)
        return;
    history_compact(o);
    while (o->jobs)
        job_unlink_free(o, o->jobs);
    ag_history_close(o->hist);
    targets_free(o);
    free(o);
}

const struct hs_snapshot_opts *ag_ops_defaults(const struct ag_ops *o)
{
    return o->cfg.defaults;
}

int ag_ops_ready(const struct ag_ops *o)
{
    return o->ready;
}

int ag_ops_running(const struct ag_ops *o)
{
    return o->running;
}

void ag_ops_count_states(const struct ag_ops *o, int by_state[AG_NSTATES])
{
    const struct ag_job *j;
    int i;

    memset(by_state, 0, sizeof(int) * AG_NSTATES);
    for (j = o->jobs; j; j = j->next) {
        if (j->ended || j->hidden)
            continue;
        for (i = 0; i < AG_NSTATES; i++) {
            if (!strcmp(j->state, ag_state_names[i])) {
                by_state[i]++;
                break;
            }
        }
    }
}
