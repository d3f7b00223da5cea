/* The scheduler: limits, scratch budget, priorities, no starvation. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "scheduler.h"

static uv_loop_t loop;
static struct hs_sched s;
static int order[64], norder, told[64];

static void granted(struct hs_sched_req *req)
{
    order[norder++] = (int)(intptr_t)req->data;
    told[(intptr_t)req->data] = 1;
}

static void reset(int captures, int extracts, int uploads, uint64_t budget)
{
    memset(&s, 0, sizeof(s));
    hs__sched_init(&s, &loop);
    s.max[HS_RES_CAPTURE] = captures;
    s.max[HS_RES_EXTRACT] = extracts;
    s.max[HS_RES_UPLOAD] = uploads;
    s.budget = budget;
    norder = 0;
    memset(told, 0, sizeof(told));
}

static void done(void)
{
    hs__sched_close(&s, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void test_limits_and_async_grants(void)
{
    struct hs_sched_req r[10];
    int i;

    reset(3, 0, 0, 0);
    memset(r, 0, sizeof(r));
    for (i = 0; i < 10; i++) {
        r[i].res = HS_RES_CAPTURE;
        r[i].data = (void *)(intptr_t)i;
        CHECK(hs__sched_acquire(&s, &r[i], granted) == 0);
    }
    CHECK(norder == 0); /* never from inside acquire */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(norder == 3 && s.used[HS_RES_CAPTURE] == 3);
    for (i = 0; i < 10; i++) {
        /* release the oldest held: the next in line gets it, never more than 3 */
        int k = order[i];

        hs__sched_release(&s, &r[k]);
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK(s.used[HS_RES_CAPTURE] <= 3);
    }
    CHECK(norder == 10 && s.peak[HS_RES_CAPTURE] == 3);
    for (i = 0; i < 10; i++)
        CHECK(order[i] == i); /* first come, first served */
    done();
}

static void test_scratch_budget(void)
{
    struct hs_sched_req big = {.res = HS_RES_CAPTURE, .scratch = 70, .data = (void *)1};
    struct hs_sched_req small = {.res = HS_RES_CAPTURE, .scratch = 40, .data = (void *)2};
    struct hs_sched_req later = {.res = HS_RES_CAPTURE, .scratch = 10, .data = (void *)3};
    struct hs_sched_req huge = {.res = HS_RES_CAPTURE, .scratch = 101, .data = (void *)4};

    reset(4, 0, 0, 100);
    CHECK(hs__sched_acquire(&s, &huge, granted) == -ENOSPC); /* can never fit */
    CHECK(hs__sched_acquire(&s, &big, granted) == 0);
    CHECK(hs__sched_acquire(&s, &small, granted) == 0);
    CHECK(hs__sched_acquire(&s, &later, granted) == 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    /* 70 + 40 > 100: small waits, and later (which would fit) does not overtake it */
    CHECK(norder == 1 && order[0] == 1 && s.reserved == 70);
    /* the slot goes back after the capture, the reservation stays until cleanup */
    hs__sched_release(&s, &big);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(norder == 1);
    hs__sched_unreserve(&s, &big);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(norder == 3 && order[1] == 2 && order[2] == 3 && s.reserved == 50);
    CHECK(s.peak_reserved <= 100);
    /* a failed or canceled job gives its reservation back */
    hs__sched_cancel(&s, &small);
    hs__sched_release(&s, &small);
    hs__sched_unreserve(&s, &small);
    hs__sched_release(&s, &later);
    hs__sched_unreserve(&s, &later);
    CHECK(s.reserved == 0 && s.used[HS_RES_CAPTURE] == 0 && s.holders == 0);
    done();
}

/* Jobs of capture -> extract -> upload: the scratch holds at most one image
 * beyond the uploads, and every job gets through. */
static void test_captures_paced_to_uploads(void)
{
    enum { N = 8, UPLOADS = 2 };
    struct hs_sched_req r[N];
    int i, step, finished = 0, most_waiting_for_upload = 0;

    reset(4, 2, UPLOADS, 0);
    memset(r, 0, sizeof(r));
    for (i = 0; i < N; i++) {
        r[i].res = HS_RES_CAPTURE;
        r[i].scratch = 1;
        r[i].data = (void *)(intptr_t)i;
        CHECK(hs__sched_acquire(&s, &r[i], granted) == 0);
    }
    for (step = 0; step < 1000 && finished < N; step++) {
        int waiting_for_upload = 0;

        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK(s.holders <= UPLOADS + 1);
        CHECK(s.used[HS_RES_CAPTURE] <= UPLOADS + 1); /* paced below its own limit of 4 */
        for (i = 0; i < N; i++)
            waiting_for_upload += r[i].res == HS_RES_UPLOAD && r[i].queued;
        for (i = 0; i < N; i++) {
            struct hs_sched_req *q = &r[i];

            if (!q->held || !told[i] || (q->res == HS_RES_UPLOAD && step % 3))
                continue; /* uploads are the slow step */
            told[i] = 0;
            norder = 0;
            hs__sched_release(&s, q);
            if (q->res == HS_RES_UPLOAD) {
                hs__sched_unreserve(&s, q);
                finished++;
                continue;
            }
            q->res = q->res == HS_RES_CAPTURE ? HS_RES_EXTRACT : HS_RES_UPLOAD;
            CHECK(hs__sched_acquire(&s, q, granted) == 0);
        }
        if (waiting_for_upload > most_waiting_for_upload)
            most_waiting_for_upload = waiting_for_upload;
    }
    CHECK(finished == N);
    CHECK(s.peak_holders == UPLOADS + 1); /* one ready ahead, no more */
    CHECK(most_waiting_for_upload == 1);
    CHECK(s.holders == 0 && s.reserved == 0);
    done();
}

static void test_priorities_and_cancel(void)
{
    struct hs_sched_req a = {.res = HS_RES_UPLOAD, .data = (void *)1};
    struct hs_sched_req b = {.res = HS_RES_UPLOAD, .data = (void *)2};
    struct hs_sched_req c = {.res = HS_RES_UPLOAD, .priority = 5, .data = (void *)3};
    struct hs_sched_req d = {.res = HS_RES_UPLOAD, .data = (void *)4};

    reset(0, 0, 1, 0);
    CHECK(hs__sched_acquire(&s, &a, granted) == 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(hs__sched_acquire(&s, &b, granted) == 0);
    CHECK(hs__sched_acquire(&s, &c, granted) == 0);
    CHECK(hs__sched_acquire(&s, &d, granted) == 0);
    hs__sched_cancel(&s, &d); /* leaves the queue, never granted */
    hs__sched_release(&s, &a);
    uv_run(&loop, UV_RUN_NOWAIT);
    hs__sched_release(&s, &c);
    uv_run(&loop, UV_RUN_NOWAIT);
    hs__sched_release(&s, &b);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(norder == 3);
    CHECK(order[0] == 1 && order[1] == 3 && order[2] == 2); /* priority 5 first */
    CHECK(s.used[HS_RES_UPLOAD] == 0 && !d.held);
    done();
}

/* A grant made but not yet told can be taken back: its callback never runs,
 * and the slot goes to the next in line. */
static void test_cancel_a_grant_not_yet_told(void)
{
    struct hs_sched_req a = {.res = HS_RES_CAPTURE, .data = (void *)1};
    struct hs_sched_req b = {.res = HS_RES_CAPTURE, .data = (void *)2};
    struct hs_sched_req c = {.res = HS_RES_CAPTURE, .data = (void *)3};

    reset(1, 0, 0, 0);
    CHECK(hs__sched_acquire(&s, &a, granted) == 0);
    CHECK(hs__sched_acquire(&s, &b, granted) == 0);
    CHECK(hs__sched_acquire(&s, &c, granted) == 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(norder == 1 && order[0] == 1);
    hs__sched_release(&s, &a); /* b is granted now, told on the next iteration */
    CHECK(b.held && b.pending && !b.queued);
    hs__sched_cancel(&s, &b);
    CHECK(!b.held && !b.pending && s.used[HS_RES_CAPTURE] == 1); /* c has it */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(!told[2] && told[3] && norder == 2);
    hs__sched_release(&s, &c);
    hs__sched_unreserve(&s, &a);
    hs__sched_unreserve(&s, &c);
    CHECK(s.used[HS_RES_CAPTURE] == 0 && s.holders == 0);
    done();
}

static void test_random_never_exceeds(void)
{
    struct hs_sched_req r[200];
    int i, step;

    reset(2, 3, 4, 1000);
    memset(r, 0, sizeof(r));
    srand(7);
    for (i = 0; i < 200; i++) {
        r[i].res = (enum hs_res)(i % HS_RES_NR);
        r[i].scratch = r[i].res == HS_RES_CAPTURE ? (uint64_t)(rand() % 400) : 0;
        r[i].priority = rand() % 3;
        r[i].data = (void *)(intptr_t)(i % 64);
        CHECK(hs__sched_acquire(&s, &r[i], granted) == 0);
    }
    for (step = 0; step < 2000; step++) {
        int waiting = 0;

        uv_run(&loop, UV_RUN_NOWAIT);
        norder = 0;
        for (i = 0; i < 200; i++) {
            waiting += r[i].queued;
            CHECK(s.used[HS_RES_CAPTURE] <= 2 && s.used[HS_RES_EXTRACT] <= 3);
            CHECK(s.used[HS_RES_UPLOAD] <= 4 && s.reserved <= 1000);
            if (r[i].held && rand() % 2) {
                hs__sched_release(&s, &r[i]);
                hs__sched_unreserve(&s, &r[i]);
            }
        }
        if (!waiting)
            break;
    }
    for (i = 0; i < 200; i++)
        CHECK(!r[i].queued); /* everyone was served: no starvation */
    done();
}

int main(void)
{
    CHECK(uv_loop_init(&loop) == 0);
    RUN(test_limits_and_async_grants);
    RUN(test_scratch_budget);
    RUN(test_captures_paced_to_uploads);
    RUN(test_priorities_and_cancel);
    RUN(test_cancel_a_grant_not_yet_told);
    RUN(test_random_never_exceeds);
    CHECK(uv_loop_close(&loop) == 0);
    return 0;
}
