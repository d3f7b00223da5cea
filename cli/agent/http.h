/*
 * The agent's HTTP door: H2O (its libuv build) on the agent's loop, a unix
 * socket listener and optionally a TCP one, each accepted connection a
 * uv_stream_t that h2o_uv_socket_create wraps and h2o_accept serves. Every
 * request goes to ag_http_dispatch (routes.c); the event stream is served
 * by events.c. Nothing else in the tree knows H2O.
 */
#ifndef HS_AGENT_HTTP_H
#define HS_AGENT_HTTP_H

#include <uv.h>

#include "ops.h"

struct ag_http;

struct ag_http_config {
    const char *socket_path;
    const char *socket_group; /* NULL: root's */
    const char *listen;       /* ADDR:PORT, or NULL */
    const char *token;        /* what TCP clients present */
    /* TLS on the TCP listener: a certificate chain and its key (PEM), and a
     * CA whose certificates clients must present (mutual TLS), or NULL */
    const char *tls_cert, *tls_key, *tls_client_ca;
    int max_connections; /* per listener */
    size_t event_backlog; /* bytes an event reader may fall behind */
};

/* What /healthz and /metrics show, from the agent that composed the door. */
struct ag_http_hooks {
    cJSON *(*health)(void *data, int *ok); /* taken */
    char *(*metrics)(void *data);          /* malloc'd text */
    void *data;
};

int ag_http_start(uv_loop_t *loop, struct ag_ops *ops, struct ag_metrics *m,
                  const struct ag_http_config *cfg, const struct ag_http_hooks *hooks,
                  struct ag_http **out, char *err, size_t errlen);
/* An event to every reader of its job's (or of all) events. */
void ag_http_event(struct ag_http *h, const char *job, const char *text, size_t len);
/* Connections open; *@tcp of them on the TCP listener. */
int ag_http_connections(const struct ag_http *h, int *tcp);
int ag_http_readers(const struct ag_http *h);
/* Stop listening (the socket file goes); connections end with the loop. */
void ag_http_close(struct ag_http *h);

#endif
