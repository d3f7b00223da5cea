/*
 * A snapshot job's insides, shared by the files that make up a job:
 *
 *   job.c         the state machine, one per snapshot (the only file that
 *                 moves a job from one state to the next)
 *   job_events.c  what the outside sees: state, progress and warning
 *                 events, and the public accessors
 *   job_order.c   the engine's list of running jobs and the order jobs of
 *                 one domain take
 *
 * Arrows point one way: job.c uses the other two, they use neither job.c nor
 * each other, and the engine (engine.c) knows nothing of jobs but the list's
 * head.
 */
#ifndef HS_JOB_INT_H
#define HS_JOB_INT_H

#include <stdint.h>
#include <uv.h>

#include "hotsnap.h"
#include "engine_int.h"
#include "domain.h"
#include "journal.h"
#include "proc.h"
#include "stream.h"
#include "util.h"

enum hs_job_state {
    HS_JOB_QUEUED,
    HS_JOB_INSPECT,
    HS_JOB_PREPARE,
    HS_JOB_CAPTURE,
    HS_JOB_EXTRACT,
    HS_JOB_RELEASE,
    HS_JOB_UPLOAD,
    HS_JOB_CLEANUP,
    HS_JOB_DONE,
    HS_JOB_FAILED,
};

struct hs_job_disk {
    struct hs_image img; /* the public view; its strings point at the fields below */
    int idx;             /* index in info.disks */
    char *name;
    char *out_path;
    char *location;
    char image_id[64];
    char digest[HS_DIGEST_HEX]; /* hex, of the bytes published */
    struct hs_stream *src; /* the image as the upload reads it, while open */
};

struct hs_chain;

struct hs_job {
    struct hs_engine *eng;
    struct hs_job *next; /* engine's list of running jobs */
    char id[HS_UUID_LEN];
    enum hs_job_state state;
    double t_start, t_end;
    /* options */
    char *domain_arg;
    char *target_shown; /* its spec, credentials hidden: for the journal */
    char *image_id;     /* the caller's, or NULL */
    char *tmpl;
    char *scratch_root;
    enum hs_mode mode;
    enum hs_format format;
    enum hs_quiesce quiesce;
    int priority;
    int upload_attempts;
    int compress;
    int all_disks;
    int incremental;
    int rotation;       /* Glance backups of the instance, disk and type kept */
    char *backup_type;  /* "daily" or "weekly" with a rotation */
    struct hs_chain *chain; /* --incremental with a pull backup: the chain it goes on */
    struct hs_uploader *up;
    /* the domain */
    unsigned char uuid[VIR_UUID_BUFLEN]; /* read by inspect */
    int dom_state;                       /* VIR_DOMAIN_*, read by inspect */
    struct hs_domain_info info;
    const struct hs_backend_ops *backend;
    char why[256];
    struct hs_capture cap;
    struct hs_journal *journal;
    char *scratch;
    struct hs_virt_watch watch;
    int holds; /* the domain is this job's until it finishes (jobs of one domain wait) */
    /* the images */
    struct hs_job_disk *disks;
    size_t ndisks;
    size_t cur;
    struct hs_proc *proc;
    struct hs_upload_req req;
    int uploading;
    double progress_t;
    double progress_pct;
    double progress_start; /* when the current phase's figures began */
    /* plumbing */
    uv_work_t work;
    int work_rc;
    uv_timer_t kick;
    uv_timer_t tick;      /* backend progress, every second of capture */
    uv_timer_t conn_wait; /* how long a step waits for libvirt to come back */
    uv_timer_t watch_t;   /* the backend's watch, while its exports are open */
    int closing;          /* handles still to close */
    enum { JOB_WAIT_NONE, JOB_WAIT_INSPECT, JOB_WAIT_CAPTURE, JOB_WAIT_RELEASE } wait_conn;
    int wait_domain;             /* in inspect, behind another job of the same domain */
    struct hs_virt_call icall;   /* inspect's libvirt reads */
    struct hs_domain_info *read; /* what the worker read, for the loop to take */
    uint64_t seq;                /* start order */
    int inspecting;              /* the read is in flight */
    int inspect_deferred;        /* read, in line to settle after older jobs */
    int managed_save;            /* read by inspect */
    struct hs_sched_req slot;    /* capture, extract or upload slot; scratch reservation */
    int slot_kept;               /* the state began with the slot of the one before */
    int err_from_stream; /* err is a broken export's: the domain's end, if it comes, says why */
    int captured;
    int adopted; /* the current disk's backup is published unconverted */
    int released;
    int canceled;
    int release_tries; /* a release libvirt could not answer, asked again */
    struct hs_err err;
    hs_job_cb cb;
    void *data;
};

/* ---- job_events.c ---- */

const char *hs__job_state_name(enum hs_job_state s);
/* A new event of @type for @job, with time, job id, domain and elapsed. */
cJSON *hs__job_event(struct hs_job *job, const char *type);
/* Something the operator must see whatever the log level: a warning event
 * and a warning in the log. */
void hs__job_warn(struct hs_job *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The state event; @waiting: the job entered a state whose slot it awaits. */
void hs__job_publish_state(struct hs_job *job, int waiting);
/* A new phase or disk: report its first figure at once, measure its rate from now. */
void hs__job_progress_reset(struct hs_job *job);
void hs__job_progress(struct hs_job *job, const char *phase, double pct, uint64_t bytes,
                      uint64_t total);

/* ---- job_order.c ---- */

void hs__job_link(struct hs_job *job);
void hs__job_unlink(struct hs_job *job);
/* Another running job holds @job's domain. */
int hs__job_domain_busy(struct hs_job *job);
/* The next job whose domain read may settle, in start order; NULL when none may yet. */
struct hs_job *hs__job_next_to_settle(struct hs_engine *eng);

#endif
