/*
 * hotsnap agent: the engine as a long-running daemon with a JSON API over
 * HTTP/1.1 (H2O on the same libuv loop). A front end like the command: it
 * uses only include/hotsnap.h.
 */
#ifndef HS_AGENT_H
#define HS_AGENT_H

#include "hotsnap.h"
#include "api.h"

#define AG_DEFAULT_SOCKET "/run/hotsnap/hotsnap.sock"

struct hs_agent_config {
    struct hs_engine_opts eopts;      /* on_event and on_log are the agent's */
    struct hs_snapshot_opts defaults; /* what a request leaves out; its target is the
                                         target named "default" */
    const struct ag_target *targets;  /* --allow-target: what else a request may name */
    int ntargets;
    const char *socket_path;          /* NULL: AG_DEFAULT_SOCKET */
    const char *socket_group;         /* group of the socket; NULL: root's */
    const char *listen;               /* ADDR:PORT for TCP, or NULL */
    const char *token_file;           /* bearer token for TCP clients */
    const char *tls_cert, *tls_key;   /* TLS on --listen (PEM) */
    const char *tls_client_ca;        /* and the CA its clients' certificates come from */
    const char *log_path;             /* NULL: stderr */
    int history;                      /* finished jobs kept; 0: 1000 */
    int max_connections;              /* 0: 256 */
    uint64_t event_backlog;           /* bytes an event reader may fall behind; 0: 256 KiB */
    int verbose;
    /* the control plane's bus (oslo.messaging on RabbitMQ); NULL url: none */
    const char *transport_url;        /* rabbit://USER:PASS@HOST:PORT/VHOST */
    const char *rpc_topic;            /* NULL: "hotsnap" */
    const char *rpc_server;           /* NULL: the host name */
    const char *control_exchange;     /* NULL: "openstack" */
};

/* Run the agent until SIGTERM or SIGINT; the process's exit status. */
int hs_agent_main(const struct hs_agent_config *cfg);

#endif
