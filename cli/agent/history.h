/*
 * The agent's job history, <state-dir>/agent/jobs.jsonl: each job's object
 * appended when it is accepted, at each state and at its end; read back at
 * start (the last line of a job wins) and rewritten, without the jobs it no
 * longer keeps, when it holds twice as many lines as it should.
 */
#ifndef HS_AGENT_HISTORY_H
#define HS_AGENT_HISTORY_H

#include <cjson/cJSON.h>

struct ag_history;

#include <uv.h>

/* Open the history in @dirfd (borrowed: the agent's directory); rewrites
 * while it serves run on @loop's worker pool. */
int ag_history_open(uv_loop_t *loop, int dirfd, struct ag_history **out, char *err,
                    size_t errlen);
/* Every line read, in order, to @cb, which takes the object. */
void ag_history_load(struct ag_history *h, void (*cb)(void *data, cJSON *obj), void *data);
void ag_history_append(struct ag_history *h, const cJSON *obj);
/* Rewrite it with the objects @next gives (NULL after the last), then go on
 * appending to the new file. 0, or a negative errno with the old one kept.
 * At once, with its fsync: at start and at the end, not while serving. */
int ag_history_compact(struct ag_history *h, const cJSON *(*next)(void *it), void *it);
/* The same while serving: the objects are printed now, written, fsynced and
 * renamed on the worker pool; lines appended meanwhile follow them. */
void ag_history_compact_async(struct ag_history *h, const cJSON *(*next)(void *it), void *it);
/* Lines appended since it was last rewritten. */
unsigned ag_history_lines(const struct ag_history *h);
/* Closing (the loop no longer serving): a rewrite under way ends first. */
void ag_history_close(struct ag_history *h);

#endif
