/*
 * The agent's request grammar: routes, query strings, bearer tokens, the
 * body of POST /v1/snapshots, and the bus's transport URL. Pure functions over bytes, no I/O and no
 * engine, so the fuzz harness (tests/fuzz/fuzz_api.c) drives them directly.
 */
#ifndef HS_AGENT_API_H
#define HS_AGENT_API_H

#include <stddef.h>

#include "hotsnap.h"

#define AG_MAX_BATCH 256 /* snapshot requests in one POST */
#define AG_ID_MAX 64     /* job ids and idempotency keys */

enum ag_endpoint {
    AG_EP_NONE,           /* no such path: 404 */
    AG_EP_SNAPSHOTS,      /* /v1/snapshots */
    AG_EP_SNAPSHOT,       /* /v1/snapshots/{id} */
    AG_EP_EVENTS,         /* /v1/events */
    AG_EP_DOMAINS,        /* /v1/domains */
    AG_EP_HEALTHZ,        /* /healthz */
    AG_EP_METRICS,        /* /metrics */
    AG_EP_TARGETS,        /* /v1/targets */
    AG_EP_VERIFY,         /* /v1/targets/{name}/verify */
    AG_EP_PRUNE,          /* /v1/targets/{name}/prune */
};

struct ag_route {
    enum ag_endpoint ep;
    char id[AG_ID_MAX + 1]; /* AG_EP_SNAPSHOT; AG_EP_VERIFY, _PRUNE: the target's name */
    const char *query;      /* after '?', not terminated; NULL when none */
    size_t query_len;
};

/* Match @path (raw, as the request line has it) to an endpoint; 0, or -1
 * with @err naming what was wrong (an id that is too long or not printable). */
int ag_route_match(const char *path, size_t len, struct ag_route *out, char *err, size_t errlen);

/* Whether @method is allowed on @ep; @allow gets the Allow header's value. */
int ag_method_allowed(enum ag_endpoint ep, const char *method, size_t len, const char **allow);

/* The percent-decoded value of @key in a query string: 1 found, 0 not,
 * -1 malformed or longer than @outlen - 1. */
int ag_query_get(const char *q, size_t qlen, const char *key, char *out, size_t outlen);

/* Whether an Authorization header value is "Bearer <@token>", compared in
 * time independent of where they differ. */
int ag_bearer_ok(const char *hdr, size_t len, const char *token);

/* An Idempotency-Key header: 1 to AG_ID_MAX printable ASCII characters. */
int ag_key_ok(const char *key, size_t len);

/* One snapshot request of a POST body: options with the agent's defaults
 * filled in, strings borrowed from the parsed body. */
struct ag_want {
    const char *domain;
    const char *target; /* the name of one of the agent's targets; NULL: its default */
    struct hs_snapshot_opts opts; /* its target is for the operations to set */
};

/*
 * Parse a POST /v1/snapshots body: one request object or a list of them.
 * Fields: domain (required), target, mode, quiesce, format, compress,
 * all_disks, incremental, name, image_id, priority. Returns the number of requests (>= 1)
 * and the parsed body in @doc (the wants' strings point into it; the caller
 * frees both), or -1 with @err naming the field. Nothing is looked up.
 */
int ag_parse_snapshots(const char *body, size_t len, const struct hs_snapshot_opts *defaults,
                       cJSON **doc, struct ag_want **wants, char *err, size_t errlen);

/* Whether @t is a target's spec: dir:PATH, glance or glance:URL. */
int ag_target_ok(const char *t);

#define AG_TARGET_DEFAULT "default" /* the name of the agent's --to */

/* A target the operator gave the agent: a request names it. */
struct ag_target {
    const char *name;
    const char *spec; /* may hold a password (glance:http://user:pass@host) */
};

/* A target's name: 1 to 64 of [A-Za-z0-9_.-], starting with a letter or digit. */
int ag_target_name_ok(const char *name);
/* --allow-target NAME=SPEC: split in @arg (which it points into). 0, or -1
 * with @err (which never shows a password). */
int ag_target_parse(char *arg, struct ag_target *out, char *err, size_t errlen);
/* @spec as it may be shown: a URL's user and password as "***"; in @buf. */
const char *ag_spec_redact(const char *spec, char *buf, size_t len);
/* Overwrite the user and password of a URL in @s with '*', in place (argv). */
void ag_spec_scrub(char *s);

struct ag_amqp_url {
    char host[256];
    int port;
    char user[256];
    char pass[256];
    char vhost[256];
    /* TLS, in oslo.messaging's terms: the query's ssl, ssl_ca_file,
     * ssl_cert_file, ssl_key_file, ssl_enforce_hostname_verification */
    int ssl;
    int verify_hostname; /* 1 unless ssl_enforce_hostname_verification=false */
    char ca[512], cert[512], key[512];
    char ignored[256]; /* other oslo options of the query, which the agent does not use */
};

/* rabbit://USER:PASS@HOST:PORT/VHOST?OPTIONS (as Nova's transport_url; one
 * host; user, password, vhost and options percent-decoded; port 5672, or
 * 5671 with ssl, and vhost "/" by default). 0, or -1 with a one-line @err
 * that never shows the password. */
int ag_amqp_url_parse(const char *url, struct ag_amqp_url *out, char *err, size_t errlen);

/* An oslo.messaging RPC message, out of its {"oslo.version", "oslo.message"}
 * envelope (or bare). Everything points into @doc, which the caller frees. */
struct ag_rpc {
    cJSON *doc, *inner;
    const char *method;  /* NULL: none given */
    const cJSON *args;   /* NULL: none given */
    const char *msg_id;  /* a call's; NULL for a cast */
    const char *reply_q; /* where a call's answer goes */
    const char *unique_id;
};

/* 0, or -1 with @err when @body is not a JSON object (nothing to answer). */
int ag_rpc_unwrap(const char *body, size_t len, struct ag_rpc *out, char *err, size_t errlen);
void ag_rpc_free(struct ag_rpc *rpc);

/* The `snapshot` method's @args as a POST /v1/snapshots body (malloc'd),
 * arguments given as null left out; @key gets its idempotency key (the
 * idempotency_key argument, else "amqp-" and the message's @unique_id, else
 * ""). NULL with @err when an argument is not what it must be. */
char *ag_rpc_snapshot_body(const cJSON *args, const char *unique_id, char *key, size_t keylen,
                           char *err, size_t errlen);

#endif
