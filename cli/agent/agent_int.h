/*
 * What the agent's front doors (the HTTP API in agent.c, the bus in amqp.c)
 * ask of it. Answers are a status as HTTP has them (200, 202, 400, 404, 409,
 * 429, 503) and a JSON body: the job(s), or {"error": "..."}.
 */
#ifndef HS_AGENT_INT_H
#define HS_AGENT_INT_H

#include <cjson/cJSON.h>
#include <stddef.h>

struct agent;
struct ag_pending;

/* An answer; @body is borrowed. @replayed: an idempotency key matched. */
typedef void (*ag_reply_fn)(void *data, int status, const cJSON *body, int replayed);

/* Snapshot requests (a JSON object or a list, as POST /v1/snapshots takes);
 * @key: an idempotency key or NULL. @reply runs once: inside this call (0
 * returned) or later (1, and *@out is the waiting operation, which
 * ag_pending_abandon() detaches from @reply when the asker goes away). */
int ag_op_snapshot(struct agent *a, const char *body, size_t len, const char *key,
                   ag_reply_fn reply, void *data, struct ag_pending **out);
/* The domains, as GET /v1/domains; same contract. */
int ag_op_domains(struct agent *a, ag_reply_fn reply, void *data, struct ag_pending **out);
void ag_pending_abandon(struct ag_pending *p);

/* At once: the status, and *@body (the caller's). */
int ag_op_get(struct agent *a, const char *id, cJSON **body);
int ag_op_cancel(struct agent *a, const char *id, cJSON **body);
/* @state, @domain: NULL or "" for any; @max <= 0: all. */
int ag_op_list(struct agent *a, const char *state, const char *domain, long max, cJSON **body);

/* One line to the agent's log (stderr or --log), stamped. */
void ag_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
