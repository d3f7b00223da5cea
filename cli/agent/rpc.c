/* The bus door's dispatch (see rpc.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

struct rpc_wait {
    ag_rpc_answer_fn fn;
    void *data;
};

static void fail(ag_rpc_answer_fn fn, void *data, int status, const char *why)
{
    struct ag_rpc_answer a = {.status = status, .error = why};

    fn(data, &a);
}

static void answered(struct rpc_wait *w, int status, const cJSON *body)
{
    struct ag_rpc_answer a = {.status = status};

    if (status >= 400)
        a.error = cJSON_GetStringValue(cJSON_GetObjectItem(body, "error")) ?: "failed";
    else
        a.result = body;
    w->fn(w->data, &a);
}

/* An operation's answer, now or later. */
static void replied(void *data, int status, const cJSON *body, int replayed)
{
    struct rpc_wait *w = data;

    answered(w, status, body);
    free(w);
}

static const char *arg_str(const cJSON *args, const char *name, int *bad)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(args, name);

    if (!v || cJSON_IsNull(v))
        return NULL;
    if (!cJSON_IsString(v))
        *bad = 1;
    return cJSON_GetStringValue(v);
}

static void snapshot(struct ag_ops *o, const struct ag_rpc *rpc, struct rpc_wait *w)
{
    struct ag_snapshot_req req = {0};
    struct ag_pending *p;
    char key[AG_ID_MAX + 1], why[1024], *body;

    body = ag_rpc_snapshot_body(rpc->args, rpc->unique_id, key, sizeof(key), why, sizeof(why));
    if (!body) {
        fail(w->fn, w->data, 400, why);
        free(w);
        return;
    }
    req.n = ag_parse_snapshots(body, strlen(body), ag_ops_defaults(o), &req.doc, &req.wants, why,
                               sizeof(why));
    free(body);
    if (req.n < 0) {
        fail(w->fn, w->data, 400, why);
        free(w);
        return;
    }
    req.batch = cJSON_IsArray(req.doc);
    req.key = key[0] ? key : NULL;
    if (req.key && !ag_key_ok(req.key, strlen(req.key))) {
        fail(w->fn, w->data, 400, "the idempotency key must be 1 to 64 printable characters");
        cJSON_Delete(req.doc);
        free(req.wants);
        free(w);
        return;
    }
    ag_op_snapshot(o, &req, replied, w, &p);
}

void ag_rpc_dispatch(struct ag_ops *o, const struct ag_rpc *rpc, ag_rpc_answer_fn fn, void *data)
{
    const char *method = rpc->method;
    const cJSON *args = rpc->args;
    struct rpc_wait *w;
    struct ag_pending *p;
    cJSON *body = NULL;
    char why[300];
    int bad = 0, status;

    if (!method) {
        fail(fn, data, 400, "the message names no method");
        return;
    }
    if (args && !cJSON_IsObject(args)) {
        fail(fn, data, 400, "the message's args are not an object");
        return;
    }
    if (!strcmp(method, "prune") && (!arg_str(args, "target", &bad) || bad)) {
        fail(fn, data, 400, "prune needs an argument 'target', a target's name");
        return;
    }
    if (!strcmp(method, "snapshot") || !strcmp(method, "domains") || !strcmp(method, "prune")) {
        w = calloc(1, sizeof(*w));
        if (!w) {
            fail(fn, data, 503, "out of memory");
            return;
        }
        w->fn = fn;
        w->data = data;
        if (method[0] == 's')
            snapshot(o, rpc, w);
        else if (method[0] == 'p')
            ag_op_prune(o, arg_str(args, "target", &bad), args, replied, w, &p);
        else
            ag_op_domains(o, replied, w, &p);
        return;
    }
    if (!strcmp(method, "get") || !strcmp(method, "cancel")) {
        const char *id = arg_str(args, "id", &bad);

        if (!id || bad) {
            snprintf(why, sizeof(why), "%s needs an argument 'id', a job id string", method);
            fail(fn, data, 400, why);
            return;
        }
        status = method[0] == 'g' ? ag_op_get(o, id, &body) : ag_op_cancel(o, id, &body);
    } else if (!strcmp(method, "targets")) {
        status = ag_op_targets(o, &body);
    } else if (!strcmp(method, "list")) {
        const char *state = arg_str(args, "state", &bad), *dom = arg_str(args, "domain", &bad);

        if (bad) {
            fail(fn, data, 400, "list takes 'state' and 'domain' as strings");
            return;
        }
        status = ag_op_list(o, state, dom, 0, &body);
    } else {
        snprintf(why, sizeof(why),
                 "unknown method '%.100s' (expected snapshot, get, list, cancel, domains, "
                 "targets or prune)",
                 method);
        fail(fn, data, 400, why);
        return;
    }
    {
        struct rpc_wait now = {fn, data};

        answered(&now, status, body);
    }
    cJSON_Delete(body);
}
