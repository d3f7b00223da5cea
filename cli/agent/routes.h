/*
 * The HTTP door's dispatch, without H2O: a request as H2O parsed it (method,
 * path, the headers the API reads, the body, and which listener it came on)
 * is checked (the bearer token on TCP), routed, parsed into the operations'
 * request structs and answered. http.c hands every request here and writes
 * the answers; the fuzz harness drives it with the operations on a fake
 * engine.
 */
#ifndef HS_AGENT_ROUTES_H
#define HS_AGENT_ROUTES_H

#include <stddef.h>

#include "ops.h"

struct ag_http_in {
    const char *method, *path, *auth, *key, *body; /* auth, key: NULL when not given */
    size_t method_len, path_len, auth_len, key_len, body_len;
    int tcp; /* came on --listen: needs the bearer token */
};

struct ag_http_out {
    int status;
    const cJSON *body;    /* borrowed */
    const char *location; /* a job's, or NULL */
    const char *allow;    /* 405: the Allow header */
    int replayed;         /* Idempotent-Replayed: true */
    int unauthorized;     /* 401: WWW-Authenticate: Bearer */
};

typedef void (*ag_http_answer_fn)(void *data, const struct ag_http_out *out);

/* Where an answer goes: the caller's, alive until it is answered or, when
 * its client went first, until it abandoned @pending (if set). */
struct ag_http_wait {
    ag_http_answer_fn answer;
    void *data;
    struct ag_pending *pending; /* an operation whose answer is still to come */
};

enum ag_http_route {
    AG_HTTP_ANSWERED,     /* @answer ran, or runs once *@pending is done */
    AG_HTTP_UNAUTHORIZED, /* answered 401: the connection has no business here */
    AG_HTTP_EVENTS,       /* the caller serves the event stream (of job @job, or all) */
    AG_HTTP_HEALTHZ,      /* the caller answers these two */
    AG_HTTP_METRICS,
};

/*
 * Handle @in: the route it took. @token: the bearer token TCP requests
 * need. @w->pending is set while an answer is still to come (a domain
 * listing); the caller abandons it (ag_pending_abandon) if its client goes
 * first.
 */
enum ag_http_route ag_http_dispatch(struct ag_ops *o, const char *token,
                                    const struct ag_http_in *in, struct ag_http_wait *w,
                                    char job[AG_ID_MAX + 1]);

#endif
