/* The HTTP door's dispatch (see routes.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

static void answer(struct ag_http_wait *w, int status, const cJSON *body)
{
    struct ag_http_out out = {.status = status, .body = body};

    w->answer(w->data, &out);
}

static void answer_error(struct ag_http_wait *w, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer_error(struct ag_http_wait *w, int status, const char *fmt, ...)
{
    struct ag_http_out out = {.status = status, .unauthorized = status == 401};
    char msg[1024];
    cJSON *b = cJSON_CreateObject();
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cJSON_AddStringToObject(b, "error", msg);
    out.body = b;
    w->answer(w->data, &out);
    cJSON_Delete(b);
}

/* An operation's answer, now or later. */
static void replied(void *data, int status, const cJSON *body, int replayed)
{
    struct ag_http_wait *w = data;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(body, "id"));
    struct ag_http_out out = {.status = status, .body = body, .replayed = replayed};
    char loc[128];

    w->pending = NULL;
    if (status == 202 && id && cJSON_IsObject(body)) {
        snprintf(loc, sizeof(loc), "/v1/snapshots/%s", id);
        out.location = loc;
    }
    w->answer(w->data, &out);
}

static void post(struct ag_ops *o, const struct ag_http_in *in, struct ag_http_wait *w)
{
    struct ag_snapshot_req req = {0};
    char key[AG_ID_MAX + 1], err[1024];

    if (in->key) {
        if (!ag_key_ok(in->key, in->key_len)) {
            answer_error(w, 400, "header 'Idempotency-Key' must be 1 to %d printable characters",
                         AG_ID_MAX);
            return;
        }
        memcpy(key, in->key, in->key_len);
        key[in->key_len] = '\0';
        req.key = key;
    }
    req.n = ag_parse_snapshots(in->body ? in->body : "", in->body_len, ag_ops_defaults(o), &req.doc,
                               &req.wants, err, sizeof(err));
    if (req.n < 0) {
        answer_error(w, 400, "%s", err);
        return;
    }
    req.batch = cJSON_IsArray(req.doc);
    ag_op_snapshot(o, &req, replied, w, &w->pending);
}

static void list(struct ag_ops *o, const struct ag_route *rt, struct ag_http_wait *w)
{
    char state[32] = "", domain[260] = "", limit[16] = "";
    cJSON *body;
    long max = 0;
    int status;

    if (ag_query_get(rt->query, rt->query_len, "state", state, sizeof(state)) < 0 ||
        ag_query_get(rt->query, rt->query_len, "domain", domain, sizeof(domain)) < 0 ||
        ag_query_get(rt->query, rt->query_len, "limit", limit, sizeof(limit)) < 0) {
        answer_error(w, 400, "a query value is malformed or too long");
        return;
    }
    if (limit[0]) {
        char *end;

        max = strtol(limit, &end, 10);
        if (*end || max < 1) {
            answer_error(w, 400, "query 'limit' must be a positive number");
            return;
        }
    }
    status = ag_op_list(o, state, domain, max, &body);
    answer(w, status, body);
    cJSON_Delete(body);
}

enum ag_http_route ag_http_dispatch(struct ag_ops *o, const char *token,
                                    const struct ag_http_in *in, struct ag_http_wait *w,
                                    char job[AG_ID_MAX + 1])
{
    struct ag_route rt;
    const char *allow;
    char err[256];
    cJSON *body;
    int status;

    w->pending = NULL;
    job[0] = '\0';
    if (in->tcp && (!in->auth || !ag_bearer_ok(in->auth, in->auth_len, token))) {
        answer_error(w, 401, "%s",
                     in->auth ? "the bearer token is wrong"
                              : "an Authorization: Bearer token is needed");
        return AG_HTTP_UNAUTHORIZED;
    }
    if (ag_route_match(in->path, in->path_len, &rt, err, sizeof(err)) < 0) {
        answer_error(w, 400, "%s", err);
        return AG_HTTP_ANSWERED;
    }
    if (rt.ep == AG_EP_NONE) {
        answer_error(w, 404, "no such path");
        return AG_HTTP_ANSWERED;
    }
    if (!ag_method_allowed(rt.ep, in->method, in->method_len, &allow)) {
        struct ag_http_out out = {.status = 405, .allow = allow};
        cJSON *b = cJSON_CreateObject();

        snprintf(err, sizeof(err), "%.*s is not allowed here (allowed: %s)",
                 (int)(in->method_len > 16 ? 16 : in->method_len), in->method, allow);
        cJSON_AddStringToObject(b, "error", err);
        out.body = b;
        w->answer(w->data, &out);
        cJSON_Delete(b);
        return AG_HTTP_ANSWERED;
    }
    switch (rt.ep) {
    case AG_EP_SNAPSHOTS:
        if (in->method_len == 4)
            post(o, in, w);
        else
            list(o, &rt, w);
        break;
    case AG_EP_SNAPSHOT:
        status = in->method_len == 6 ? ag_op_cancel(o, rt.id, &body) : ag_op_get(o, rt.id, &body);
        answer(w, status, body);
        cJSON_Delete(body);
        break;
    case AG_EP_EVENTS:
        if (ag_query_get(rt.query, rt.query_len, "job", job, AG_ID_MAX + 1) < 0) {
            answer_error(w, 400, "query 'job' must be a job id of at most %d characters",
                         AG_ID_MAX);
            break;
        }
        return AG_HTTP_EVENTS;
    case AG_EP_DOMAINS:
        ag_op_domains(o, replied, w, &w->pending);
        break;
    case AG_EP_VERIFY:
        ag_op_verify(o, rt.id, replied, w, &w->pending);
        break;
    case AG_EP_PRUNE: {
        cJSON *args = in->body_len ? cJSON_ParseWithLength(in->body, in->body_len) : NULL;

        if (!args) {
            answer_error(w, 400, "a prune's body is a JSON object such as {\"keep_last\": 7}");
            break;
        }
        ag_op_prune(o, rt.id, args, replied, w, &w->pending);
        cJSON_Delete(args);
        break;
    }
    case AG_EP_TARGETS:
        status = ag_op_targets(o, &body);
        answer(w, status, body);
        cJSON_Delete(body);
        break;
    case AG_EP_HEALTHZ:
        return AG_HTTP_HEALTHZ;
    case AG_EP_METRICS:
        return AG_HTTP_METRICS;
    case AG_EP_NONE:
        break;
    }
    return AG_HTTP_ANSWERED;
}
