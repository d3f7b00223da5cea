/*
 * The scheduler: limits on the resources snapshots share. A job holds a
 * slot only while it uses it (capture: a libvirt job; extract: a qemu-img;
 * upload: a transfer), and reserves its image's estimated size against the
 * scratch budget from capture until cleanup. Captures are paced to the
 * uploads: with an upload limit U, at most U + 1 jobs hold scratch (U
 * uploading, one ready next), so nothing is converted far ahead of the
 * network and no guest is taken down before its image can move on. Waiting
 * requests are served by priority, then first come first served; the head
 * of a queue is never overtaken, so nothing starves. Grants are delivered on
 * a later loop iteration, never from inside the call that asked.
 */
#ifndef HS_SCHEDULER_H
#define HS_SCHEDULER_H

#include <stdint.h>
#include <uv.h>

enum hs_res {
    HS_RES_CAPTURE,
    HS_RES_EXTRACT,
    HS_RES_UPLOAD,
    HS_RES_NR,
};

struct hs_sched_req;
typedef void (*hs_sched_cb)(struct hs_sched_req *req);

struct hs_sched_req {
    enum hs_res res;
    uint64_t scratch; /* bytes to reserve with a capture slot */
    int priority;     /* higher first */
    uint64_t seq;     /* arrival order */
    int queued;
    int pending;  /* granted, not yet told */
    int held;     /* the slot */
    int reserved; /* the scratch reservation (kept after the slot) */
    hs_sched_cb granted;
    struct hs_sched_req *next;
    void *data;
};

struct hs_sched {
    int max[HS_RES_NR]; /* 0: unlimited */
    int used[HS_RES_NR];
    uint64_t budget; /* scratch bytes; 0: unlimited */
    uint64_t reserved;
    uint64_t seq;
    struct hs_sched_req *queue[HS_RES_NR];
    struct hs_sched_req *granted; /* to be told on the next iteration */
    uv_timer_t kick;
    int peak[HS_RES_NR]; /* most slots ever held at once, for tests and reports */
    uint64_t peak_reserved;
    int holders;      /* jobs holding a scratch reservation */
    int peak_holders; /* most at once */
};

void hs__sched_init(struct hs_sched *s, uv_loop_t *loop);
/* Close its timer; nothing may wait. */
void hs__sched_close(struct hs_sched *s, uv_close_cb cb);
/* Ask for a slot of req->res (and req->scratch with a capture). -ENOSPC when
 * the scratch can never fit the budget. @cb runs once granted. */
int hs__sched_acquire(struct hs_sched *s, struct hs_sched_req *req, hs_sched_cb cb);
/* Give the slot back (the scratch reservation stays). */
void hs__sched_release(struct hs_sched *s, struct hs_sched_req *req);
/* Give the scratch reservation back. */
void hs__sched_unreserve(struct hs_sched *s, struct hs_sched_req *req);
/* Leave the queue (or drop a grant not yet told); the cb will not run. */
void hs__sched_cancel(struct hs_sched *s, struct hs_sched_req *req);

#endif
