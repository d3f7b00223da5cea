/* The event stream's readers (see events.h). */
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "log.h"

#define AG_HEARTBEAT_MS 15000

/* A reader of GET /v1/events; in its request's pool. */
struct ag_sub {
    h2o_generator_t gen;
    struct ag_events *e;
    h2o_req_t *req;
    char job[65];        /* only this job's events; "" all */
    char *pend, *flight; /* waiting to be sent; being sent */
    size_t npend, cap;
    int sending;
    int dropped; /* fell too far behind: ended at the next chance */
    int linked;  /* in e->subs: e is alive and the reader still served */
    struct ag_sub *prev, *next;
};

struct ag_events {
    uv_timer_t heartbeat;
    size_t backlog;
    struct ag_metrics *m;
    void (*cut)(void *data, h2o_req_t *req);
    void *cut_data;
    struct ag_sub *subs;
};

void ag_h2o_header(h2o_req_t *req, const char *name, const char *value)
{
    h2o_iovec_t v = h2o_strdup(&req->pool, value, strlen(value));

    h2o_add_header_by_str(&req->pool, &req->res.headers, name, strlen(name), 0, NULL, v.base,
                          v.len);
}

static void sub_unlink(struct ag_sub *s)
{
    struct ag_events *e = s->e;

    if (!s->linked)
        return;
    s->linked = 0;
    if (s->prev)
        s->prev->next = s->next;
    else
        e->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    s->req = NULL;
    free(s->pend);
    free(s->flight);
    s->pend = s->flight = NULL;
    s->npend = s->cap = 0;
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
    struct ag_events *e = s->e;

    e->m->subs_dropped++;
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
    e->cut(e->cut_data, s->req);
}

static void sub_push(struct ag_sub *s, const char *text, size_t len, int comment)
{
    size_t need = len + 8;

    if (s->dropped || !s->req)
        return;
    if (s->npend + need > s->e->backlog) {
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

void ag_events_send(struct ag_events *e, const char *job, const char *text, size_t len)
{
    struct ag_sub *s, *next;

    for (s = e->subs; s; s = next) {
        next = s->next;
        if (!s->job[0] || (job && !strcmp(s->job, job)))
            sub_push(s, text, len, 0);
    }
}

static void sub_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct ag_sub *s = (struct ag_sub *)gen;

    s->sending = 0;
    if (s->dropped || !s->linked) {
        sub_unlink(s);
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    sub_flush(s);
}

static void sub_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    sub_unlink((struct ag_sub *)gen);
}

static void heartbeat_cb(uv_timer_t *t)
{
    struct ag_events *e = t->data;
    struct ag_sub *s, *next;

    for (s = e->subs; s; s = next) {
        next = s->next;
        sub_push(s, "", 0, 1);
    }
}

void ag_events_serve(struct ag_events *e, h2o_req_t *req, const char *job)
{
    struct ag_sub *s = h2o_mem_alloc_pool(&req->pool, sizeof(*s));

    memset(s, 0, sizeof(*s));
    s->gen.proceed = sub_proceed;
    s->gen.stop = sub_stop;
    s->e = e;
    s->req = req;
    snprintf(s->job, sizeof(s->job), "%s", job);
    s->linked = 1;
    s->next = e->subs;
    if (e->subs)
        e->subs->prev = s;
    e->subs = s;
    req->res.status = 200;
    req->res.reason = "OK";
    ag_h2o_header(req, "content-type", "text/event-stream");
    ag_h2o_header(req, "cache-control", "no-cache");
    ag_metrics_count_status(e->m, 200);
    h2o_start_response(req, &s->gen);
    sub_push(s, "hotsnap events", strlen("hotsnap events"), 1);
}

int ag_events_readers(const struct ag_events *e)
{
    const struct ag_sub *s;
    int n = 0;

    for (s = e->subs; s; s = s->next)
        n++;
    return n;
}

struct ag_events *ag_events_new(uv_loop_t *loop, size_t backlog, struct ag_metrics *m,
                                void (*cut)(void *data, h2o_req_t *req), void *cut_data)
{
    struct ag_events *e = calloc(1, sizeof(*e));

    if (!e)
        return NULL;
    e->backlog = backlog;
    e->m = m;
    e->cut = cut;
    e->cut_data = cut_data;
    uv_timer_init(loop, &e->heartbeat);
    e->heartbeat.data = e;
    uv_timer_start(&e->heartbeat, heartbeat_cb, AG_HEARTBEAT_MS, AG_HEARTBEAT_MS);
    return e;
}

static void heartbeat_closed(uv_handle_t *h)
{
    free(h->data);
}

void ag_events_close(struct ag_events *e)
{
    if (!e)
        return;
    while (e->subs) /* their requests may outlive this: they find themselves unlinked */
        sub_unlink(e->subs);
    uv_close((uv_handle_t *)&e->heartbeat, heartbeat_closed);
}
