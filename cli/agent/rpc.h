/*
 * The bus door's dispatch, without rabbitmq-c: an oslo.messaging RPC
 * message (unwrapped by ag_rpc_unwrap) names a method and its arguments;
 * they are checked, parsed into the operations' request structs and
 * answered. amqp.c hands every delivery here and publishes the answers;
 * the fuzz harness drives it with the operations on a fake engine.
 */
#ifndef HS_AGENT_RPC_H
#define HS_AGENT_RPC_H

#include "ops.h"

struct ag_rpc_answer {
    int status;          /* as HTTP has them */
    const cJSON *result; /* what it succeeded with (status < 400), borrowed */
    const char *error;   /* why it failed (status >= 400), one line */
};

typedef void (*ag_rpc_answer_fn)(void *data, const struct ag_rpc_answer *a);

/* Carry out @rpc (borrowed for the call): @fn runs once, now or later. */
void ag_rpc_dispatch(struct ag_ops *o, const struct ag_rpc *rpc, ag_rpc_answer_fn fn, void *data);

#endif
