/*
 * The agent on the control plane's bus: an RPC server on AMQP 0-9-1 that
 * speaks oslo.messaging's rabbit driver (the oslo.message envelope; topic,
 * per-server and fanout queues on the control exchange; replies on the
 * caller's reply queue with "ending"), and oslo's notifications. rabbitmq-c
 * runs on one thread of its own; the loop and it trade messages through
 * queues, a uv_async_t one way and an eventfd the other (docs/decisions.md).
 */
#ifndef HS_AGENT_AMQP_H
#define HS_AGENT_AMQP_H

#include <uv.h>
#include <cjson/cJSON.h>

#include "ops.h"

struct ag_amqp;

struct ag_amqp_config {
    const char *url;       /* transport URL */
    const char *topic;     /* RPC topic (default "hotsnap") */
    const char *server;    /* RPC server name (default the host name) */
    const char *exchange;  /* control exchange (default "openstack") */
    int dirfd; /* <state-dir>/agent, borrowed: the outbox of notifications not confirmed */
};

/* Connect (and publish notifications) from now on; consume requests only
 * once ag_amqp_serve() is called. */
int ag_amqp_start(uv_loop_t *loop, struct ag_ops *ops, const struct ag_amqp_config *cfg,
                  struct ag_amqp **out, char *err, size_t errlen);
/* The agent serves (recovery has run): declare and consume the RPC queues. */
void ag_amqp_serve(struct ag_amqp *q);
/* The agent stops: requests still waiting, and those that come, are left
 * unacked (the broker gives them back when the connection closes) instead
 * of being answered 503. */
void ag_amqp_stopping(struct ag_amqp *q);
/* Publish a notification (oslo messagingv2) about @job; kept in the outbox
 * file until the broker confirms it, across reconnects and restarts. */
void ag_amqp_notify(struct ag_amqp *q, const char *event_type, const char *priority,
                    const cJSON *job);
/* Whether the connection is up, and how often it came back. */
int ag_amqp_connected(const struct ag_amqp *q, unsigned *reconnects);
/* Stop: the thread gets up to 5 s to publish what waits, then ends. */
void ag_amqp_stop(struct ag_amqp *q);

#endif
