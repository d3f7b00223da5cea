/* The engine's internals, shared by engine.c, job.c and recover.c. */
#ifndef HS_ENGINE_INT_H
#define HS_ENGINE_INT_H

#include <uv.h>

#include "hotsnap.h"
#include "virt.h"
#include "backend.h"
#include "uploader.h"
#include "scheduler.h"

/* Where the library is put together: the job asks these, never a concrete
 * backend or uploader, so tests can hand in fakes with the same tables. */
typedef const struct hs_backend_ops *(*hs_select_fn)(const struct hs_select_in *in, char *why,
                                                     size_t whylen, struct hs_err *err);
typedef int (*hs_uploader_fn)(const struct hs_uploader_env *env, const char *spec,
                              struct hs_uploader **out, struct hs_err *err);

#define HS_LATE_BUCKETS 3000

struct hs_reclaim;
struct hs_target_cred;

/* One pass over the journals of dead runs (recover.c): its report, and the
 * journals whose Glance records are looked at once it is over (reclaim.c);
 * done runs when the last of those has ended. */
struct hs_recovery_pass {
    cJSON *report;
    struct hs_reclaim *found; /* filled on the worker */
    int pending;
    int status;
    void (*done)(struct hs_engine *eng, struct hs_recovery_pass *pass);
};

struct hs_engine {
    uv_loop_t *loop;
    struct hs_digest_memo *glance_algos; /* what each Glance target hashes with */
    struct hs_virt *virt;
    int ever_up;           /* the connection has been up once */
    unsigned reconnects;   /* times it came back up after the first */
    char conn_error[768];  /* why the last connection attempt failed, or "" */
    const struct hs_backend_ops *const *backends; /* by name, for recovery */
    struct hs_http *http;
    char *state_dir;
    hs_event_cb on_event;
    void *event_data;
    hs_select_fn select_backend;
    hs_uploader_fn new_uploader;
    struct hs_sched sched;
    struct hs_job *jobs; /* running jobs: job_order.c's, never walked here */
    uv_timer_t stall_timer;
    uint64_t stall_last; /* hrtime of the last tick */
    double max_stall_ms;
    /* how late each tick came: 0.1 ms buckets below 100 ms, 1 ms up to 2.1 s */
    uint32_t late_hist[HS_LATE_BUCKETS];
    uint64_t late_n;
    struct hs_virt_call recover_call;
    hs_recover_cb recover_cb;
    void *recover_data;
    int recover_pending; /* asked for; waits for the connection */
    struct hs_recovery_pass recover_pass;
    /* journals the engine's own jobs had to leave (a release that could not
     * finish): recovered again by the engine, with backoff, once libvirt is
     * there, until each is undone (recover.c) */
    int orphans;
    int orphan_busy;
    uint64_t orphan_backoff_ms;
    uv_timer_t orphan_timer;
    struct hs_virt_call orphan_call;
    struct hs_recovery_pass orphan_pass;
    struct hs_reclaim *reclaims;    /* running (reclaim.c) */
    struct hs_target_cred *creds;   /* hs_engine_add_target's */
    int closing;
    int close_waits; /* for the reclaims to end */
    int closing_timers;
    hs_close_cb close_cb;
    void *close_data;
};

/* Publish one event (takes ownership of @ev). */
void hs__engine_emit(struct hs_engine *eng, cJSON *ev);
/* Run the recovery asked for, now that libvirt is connected (recover.c). */
void hs__engine_recover_start(struct hs_engine *eng);
/* A job left its journal for recovery: the engine recovers it itself. */
void hs__engine_orphaned(struct hs_engine *eng);
/* libvirt is back: orphans are looked at now (recover.c). */
void hs__engine_orphans_reconnected(struct hs_engine *eng);
/* The close, once what it waited for has ended (engine.c). */
void hs__engine_close_continue(struct hs_engine *eng);

/* reclaim.c: a journal of @pass whose records in Glance are looked at after
 * the pass (its lock @lock_fd held till then; @entry is its report's). */
void hs__reclaim_add(struct hs_recovery_pass *pass, cJSON *entry, const char *journal,
                     const char *lock, int lock_fd, const cJSON *doc);
/* Start those of @pass; pass->done runs when the last has ended (at once
 * when there are none). */
void hs__reclaim_start_all(struct hs_engine *eng, struct hs_recovery_pass *pass);
/* Drop those of @pass unstarted: the journals stay for the next pass. */
void hs__reclaim_discard(struct hs_recovery_pass *pass);
void hs__reclaim_cancel_all(struct hs_engine *eng);
void hs__engine_creds_free(struct hs_engine *eng);

#endif
