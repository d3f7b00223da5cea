/*
 * The readers of GET /v1/events: server-sent events, one JSON object per
 * "data:" line. A reader has at most one h2o_send in flight; what comes
 * meanwhile waits in its buffer, up to the backlog; beyond it the reader is
 * dropped: its response ends, or, when a write to it is stuck, its
 * connection is cut so the write fails and H2O closes it. A comment every
 * 15 s finds readers that went away.
 */
#ifndef HS_AGENT_EVENTS_H
#define HS_AGENT_EVENTS_H

#define H2O_USE_LIBUV 1
#include <h2o.h>

#include "metrics.h"

struct ag_events;

/* @cut: end @req's connection now (a reader whose write is stuck). */
struct ag_events *ag_events_new(uv_loop_t *loop, size_t backlog, struct ag_metrics *m,
                                void (*cut)(void *data, h2o_req_t *req), void *cut_data);
/* Answer @req with the event stream: every event, or @job's ("": all). */
void ag_events_serve(struct ag_events *e, h2o_req_t *req, const char *job);
void ag_events_send(struct ag_events *e, const char *job, const char *text, size_t len);
int ag_events_readers(const struct ag_events *e);
/* Stop the heartbeat; freed once its timer is closed. */
void ag_events_close(struct ag_events *e);

/* A response header (@name: a lowercase literal), for the door's files. */
void ag_h2o_header(h2o_req_t *req, const char *name, const char *value);

#endif
