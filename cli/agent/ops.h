/*
 * The agent's operations: what its front doors (the HTTP API, the bus) ask
 * of it, whatever their wire format, and the jobs they know. Each door
 * parses its requests into the structs below and calls these; the answers
 * are a status as HTTP has them (200, 202, 400, 404, 409, 429, 503) and a
 * JSON body, the job(s) or {"error": "..."}. Operations call the engine
 * (include/hotsnap.h) and nothing else: they know no door.
 *
 * What a request may choose is checked here, whichever door it came by,
 * against what the operator configured when the agent started: a request
 * names one of the operator's targets (ag_target), never a path or a URL,
 * and a credential goes only with the target it was configured for.
 */
#ifndef HS_AGENT_OPS_H
#define HS_AGENT_OPS_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "api.h"
#include "metrics.h"

#define AG_MAX_RUNNING 1024 /* jobs running or being accepted */

struct ag_ops;
struct ag_pending;

/* An answer; @body is borrowed. @replayed: an idempotency key matched. */
typedef void (*ag_reply_fn)(void *data, int status, const cJSON *body, int replayed);

/* What the operations tell the agent that composed them. */
enum ag_news {
    AG_NEWS_ACCEPTED,    /* a job was accepted */
    AG_NEWS_ENDED,       /* it ended: @status 0 done, else failed */
    AG_NEWS_INTERRUPTED, /* a dead agent's job, failed once recovery ran */
};

struct ag_ops_hooks {
    /* an engine event or the agent's own (accepted, interrupted), printed
     * once; @job is its job's id, or NULL */
    void (*event)(void *data, const char *job, const char *text, size_t len);
    /* @job: the job object, borrowed */
    void (*news)(void *data, enum ag_news what, int status, const cJSON *job);
    /* stopping, and the last running job has ended */
    void (*idle)(void *data);
    void *data;
};

struct ag_ops_config {
    const struct hs_snapshot_opts *defaults; /* what a request leaves out; its token is
                                                for the glance:URL targets alone */
    const struct ag_target *targets; /* what a request may name; [0] is the default,
                                        whose spec NULL is the engine's own store */
    int ntargets;
    const char *state_dir;
    uv_loop_t *loop; /* the history's rewrites run on its worker pool */
    int dirfd;       /* <state-dir>/agent, borrowed: the history */
    int history;
    struct ag_metrics *m;
    struct ag_ops_hooks hooks;
};

/* Load the history: jobs a dead run left unfinished wait for recovery. */
int ag_ops_new(const struct ag_ops_config *cfg, struct ag_ops **out, char *err, size_t errlen);
/* The engine to run jobs on; its events go to ag_ops_engine_event(). */
void ag_ops_attach(struct ag_ops *o, struct hs_engine *eng);
void ag_ops_engine_event(struct ag_ops *o, const cJSON *ev);
/* Recovery ran (@report: hs_engine_recover's): a dead run's jobs are
 * failed, with what recovery did, and snapshots may start. */
void ag_ops_recovered(struct ag_ops *o, const cJSON *report);
/* Refuse new work, answer what waits, cancel every job: the number still
 * running (hooks.idle runs once the last has ended). */
int ag_ops_stop(struct ag_ops *o);
/* Every job has ended: the history rewritten, everything freed. */
void ag_ops_close(struct ag_ops *o);

/* A snapshot request as a door parsed it (ag_parse_snapshots). */
struct ag_snapshot_req {
    cJSON *doc;            /* the request the wants point into */
    struct ag_want *wants; /* @n of them */
    int n;
    int batch;       /* a list was asked for: a list is answered */
    const char *key; /* an idempotency key (ag_key_ok), or NULL */
};

/* Start snapshots; @req's doc and wants are taken. @reply runs once:
 * inside this call (0 returned) or later (1, and *@out is the waiting
 * operation, which ag_pending_abandon() detaches from @reply when the asker
 * goes away). */
int ag_op_snapshot(struct ag_ops *o, struct ag_snapshot_req *req, ag_reply_fn reply, void *data,
                   struct ag_pending **out);
/* The targets a request may name, each with where it goes (no password). */
int ag_op_targets(struct ag_ops *o, cJSON **body);
/* The domains, as GET /v1/domains; same contract. */
int ag_op_domains(struct ag_ops *o, ag_reply_fn reply, void *data, struct ag_pending **out);
void ag_pending_abandon(struct ag_pending *p);
/* POST /v1/targets/{name}/verify: the store's images read again and checked
 * against their sidecars (hs_store_verify), one run per store at a time;
 * same contract. The answer lists the bad images. */
int ag_op_verify(struct ag_ops *o, const char *name, ag_reply_fn reply, void *data,
                 struct ag_pending **out);
/* POST /v1/targets/{name}/prune, and the bus's "prune": the store pruned by
 * retention (hs_store_prune) with @args {"keep_last", "keep_daily",
 * "keep_weekly", "dry_run"}; one verify or prune per store at a time; same
 * contract. The answer says what became of each image. */
int ag_op_prune(struct ag_ops *o, const char *name, const cJSON *args, ag_reply_fn reply,
                void *data, struct ag_pending **out);
/* Verifies and prunes in flight: the agent waits for them before it frees @o. */
int ag_ops_busy(const struct ag_ops *o);

/* At once: the status, and *@body (the caller's). */
int ag_op_get(struct ag_ops *o, const char *id, cJSON **body);
int ag_op_cancel(struct ag_ops *o, const char *id, cJSON **body);
/* @state, @domain: NULL or "" for any; @max <= 0: all. */
int ag_op_list(struct ag_ops *o, const char *state, const char *domain, long max, cJSON **body);

/* What a request leaves out: for the doors' parsers (ag_parse_snapshots). */
const struct hs_snapshot_opts *ag_ops_defaults(const struct ag_ops *o);

/* For /healthz and /metrics. */
int ag_ops_ready(const struct ag_ops *o);
int ag_ops_running(const struct ag_ops *o);
/* Running jobs by the engine's state (metrics.h's ag_state_names). */
void ag_ops_count_states(const struct ag_ops *o, int by_state[AG_NSTATES]);

#endif
