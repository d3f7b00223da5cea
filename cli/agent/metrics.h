/* The agent's counters and histograms, rendered in Prometheus's text format. */
#ifndef HS_AGENT_METRICS_H
#define HS_AGENT_METRICS_H

#include <stdint.h>

#include "hotsnap.h"

#define AG_HIST_MAX 16

struct ag_hist {
    const double *bounds; /* upper bounds, ascending; +Inf implied */
    int n;
    uint64_t counts[AG_HIST_MAX]; /* per bucket, not cumulative */
    uint64_t inf;
    uint64_t count;
    double sum;
};

struct ag_metrics {
    uint64_t by_class[6]; /* by_class[k]: kxx answers */
    uint64_t jobs_accepted, jobs_done, jobs_failed, jobs_canceled;
    uint64_t bytes_published;
    uint64_t subs_dropped, conns_refused;
    uint64_t conns_unauthenticated; /* TCP connections cut: no token in time, or a wrong one */
    struct ag_hist capture_s, upload_s, stall_s;
};

#define AG_NSTATES 9 /* the states of a running job */
extern const char *const ag_state_names[AG_NSTATES];

/* What is true now, gathered by the caller for one rendering. */
struct ag_metrics_now {
    int by_state[AG_NSTATES]; /* running jobs by the engine's state */
    const cJSON *stats;       /* hs_engine_stats() */
    double late_p50, late_p99, late_max;
    int connections, subscribers;
    int connections_tcp; /* of them, on the TCP listener */
    int bus;                 /* -1: no --transport-url; else whether it is connected */
    unsigned bus_reconnects;
};

void ag_metrics_init(struct ag_metrics *m);
void ag_hist_observe(struct ag_hist *h, double v);
void ag_metrics_count_status(struct ag_metrics *m, int status);
/* The text exposition (malloc'd). */
char *ag_metrics_render(const struct ag_metrics *m, const struct ag_metrics_now *now);

#endif
