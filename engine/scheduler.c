#include <errno.h>

#include "scheduler.h"

void hs__sched_init(struct hs_sched *s, uv_loop_t *loop)
{
    uv_timer_init(loop, &s->kick);
    s->kick.data = s;
}

void hs__sched_close(struct hs_sched *s, uv_close_cb cb)
{
    uv_close((uv_handle_t *)&s->kick, cb);
}

static void sched_tell(uv_timer_t *t)
{
    struct hs_sched *s = t->data;
    struct hs_sched_req *req;

    while ((req = s->granted) != NULL) {
        s->granted = req->next;
        req->next = NULL;
        req->pending = 0;
        req->granted(req);
    }
}

static int fits(const struct hs_sched *s, const struct hs_sched_req *req)
{
    int up = s->max[HS_RES_UPLOAD];

    if (s->max[req->res] && s->used[req->res] >= s->max[req->res])
        return 0;
    if (req->res != HS_RES_CAPTURE || req->reserved)
        return 1;
    /* paced: the jobs holding scratch are the uploads and one more */
    if (up && s->holders >= up + 1)
        return 0;
    return !s->budget || s->reserved + req->scratch <= s->budget;
}

static void grant(struct hs_sched *s, struct hs_sched_req *req)
{
    req->queued = 0;
    req->pending = 1;
    req->held = 1;
    if (++s->used[req->res] > s->peak[req->res])
        s->peak[req->res] = s->used[req->res];
    if (req->res == HS_RES_CAPTURE && !req->reserved) {
        req->reserved = 1;
        s->reserved += req->scratch;
        if (s->reserved > s->peak_reserved)
            s->peak_reserved = s->reserved;
        if (++s->holders > s->peak_holders)
            s->peak_holders = s->holders;
    }
}

static void sched_dispatch(struct hs_sched *s)
{
    int r, any = 0;

    for (r = 0; r < HS_RES_NR; r++) {
        struct hs_sched_req *req, **tail;

        /* only ever the head: a later request never overtakes it */
        while ((req = s->queue[r]) != NULL && fits(s, req)) {
            s->queue[r] = req->next;
            grant(s, req);
            /* told in the order granted */
            req->next = NULL;
            for (tail = &s->granted; *tail; tail = &(*tail)->next)
                ;
            *tail = req;
            any = 1;
        }
    }
    if (any)
        uv_timer_start(&s->kick, sched_tell, 0, 0);
}

int hs__sched_acquire(struct hs_sched *s, struct hs_sched_req *req, hs_sched_cb cb)
{
    struct hs_sched_req **pp;

    if (req->res == HS_RES_CAPTURE && !req->reserved && s->budget && req->scratch > s->budget)
        return -ENOSPC;
    req->granted = cb;
    req->seq = ++s->seq;
    req->queued = 1;
    req->next = NULL;
    for (pp = &s->queue[req->res]; *pp && (*pp)->priority >= req->priority; pp = &(*pp)->next)
        ;
    req->next = *pp;
    *pp = req;
    sched_dispatch(s);
    return 0;
}

void hs__sched_release(struct hs_sched *s, struct hs_sched_req *req)
{
    if (!req->held)
        return;
    req->held = 0;
    s->used[req->res]--;
    sched_dispatch(s);
}

void hs__sched_unreserve(struct hs_sched *s, struct hs_sched_req *req)
{
    if (!req->reserved)
        return;
    req->reserved = 0;
    s->reserved -= req->scratch;
    s->holders--;
    sched_dispatch(s);
}

static int unlink_req(struct hs_sched_req **head, struct hs_sched_req *req)
{
    struct hs_sched_req **pp;

    for (pp = head; *pp; pp = &(*pp)->next) {
        if (*pp == req) {
            *pp = req->next;
            req->next = NULL;
            return 1;
        }
    }
    return 0;
}

void hs__sched_cancel(struct hs_sched *s, struct hs_sched_req *req)
{
    if (req->queued) {
        unlink_req(&s->queue[req->res], req);
        req->queued = 0;
        sched_dispatch(s); /* the head may have changed */
        return;
    }
    if (unlink_req(&s->granted, req)) {
        req->pending = 0;
        hs__sched_release(s, req);
        hs__sched_unreserve(s, req);
    }
}
