/*
 * The agent's HTTP door on H2O (see http.h): listeners, connections, and
 * the glue between H2O's requests and ag_http_dispatch.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "events.h"
#include "http.h"
#include "log.h"
#include "routes.h"

#define AG_MAX_BODY (1 << 20)   /* request body */
#define AG_REQ_TIMEOUT_MS 10000 /* a request's headers and body must arrive in this */
#define AG_AUTH_DEADLINE_MS 5000 /* a TCP connection's first valid token must come in this */
#define AG_SWEEP_MS 500

/* An accepted connection: the uv handle H2O's socket wraps. */
struct ag_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct ag_http *http;
    h2o_socket_t *sock;
    int tcp;           /* came in on --listen: needs the bearer token */
    uint64_t deadline; /* TCP, until a request had the token: cut then (uv_now, ms) */
    int cut;
    struct ag_conn *prev, *next;
};

struct ag_handler {
    h2o_handler_t super;
    struct ag_http *http;
};

struct ag_http {
    uv_loop_t *loop;
    struct ag_ops *ops;
    struct ag_metrics *m;
    struct ag_http_config cfg;
    struct ag_http_hooks hooks;
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx; /* the unix socket's */
    h2o_accept_ctx_t tcp_accept; /* TCP's: with TLS when configured */
    SSL_CTX *ssl;
    uv_pipe_t unix_listener;
    uv_tcp_t tcp_listener;
    int have_unix, have_tcp;
    char socket_path[108];
    struct ag_conn *conns;
    int nconns, ntcp; /* each listener has its budget: TCP clients never starve the socket */
    uv_timer_t sweep; /* cuts TCP connections past their deadline */
    int have_sweep;
    struct ag_events *events;
};

/* ---- answers ---- */

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    }
    return "Error";
}

/* Send @body (taken) as the response. */
static void respond_text(struct ag_http *h, h2o_req_t *req, int status, const char *type,
                         char *body)
{
    size_t len = body ? strlen(body) : 0;
    char *copy = h2o_mem_alloc_pool(&req->pool, len + 1);

    memcpy(copy, body ? body : "", len);
    copy[len] = '\0';
    free(body);
    req->res.status = status;
    req->res.reason = reason_of(status);
    req->res.content_length = len;
    ag_h2o_header(req, "content-type", type);
    ag_metrics_count_status(h->m, status);
    h2o_send_inline(req, copy, len);
}

static void respond_json(struct ag_http *h, h2o_req_t *req, int status, const cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    size_t len = s ? strlen(s) : 0;
    char *t = s ? realloc(s, len + 2) : NULL;

    if (t) {
        t[len] = '\n';
        t[len + 1] = '\0';
    }
    respond_text(h, req, status, "application/json", t ? t : s);
}

/* A request's wait for its answer; in the request's pool, whose disposal
 * (the client left) abandons the operation still under way. */
struct http_wait {
    struct ag_http_wait w;
    struct ag_http *http;
    h2o_req_t *req;
};

static void http_wait_gone(void *data)
{
    struct http_wait *hw = data;

    if (hw->w.pending)
        ag_pending_abandon(hw->w.pending);
}

static void http_answer(void *data, const struct ag_http_out *out)
{
    struct http_wait *hw = data;

    if (out->location)
        ag_h2o_header(hw->req, "location", out->location);
    if (out->allow)
        ag_h2o_header(hw->req, "allow", out->allow);
    if (out->replayed)
        ag_h2o_header(hw->req, "idempotent-replayed", "true");
    if (out->unauthorized)
        ag_h2o_header(hw->req, "www-authenticate", "Bearer");
    respond_json(hw->http, hw->req, out->status, out->body);
}

static const char *header(h2o_req_t *req, const char *name, size_t *len)
{
    ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);

    *len = 0;
    if (i < 0)
        return NULL;
    *len = req->headers.entries[i].value.len;
    return req->headers.entries[i].value.base;
}

/* The connection of @req's socket. */
static struct ag_conn *conn_of(struct ag_http *h, h2o_req_t *req)
{
    h2o_socket_t *sock =
        req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    struct ag_conn *c;

    for (c = h->conns; sock && c; c = c->next)
        if (c->sock == sock)
            return c;
    return NULL;
}

/* End a connection now: its socket is shut down, so whatever H2O waits for
 * on it (a request, a write) fails, and H2O closes it. */
static void conn_shutdown(struct ag_conn *c)
{
    uv_os_fd_t fd;

    if (!c->cut && uv_fileno((uv_handle_t *)&c->h, &fd) == 0)
        shutdown(fd, SHUT_RDWR);
    c->cut = 1;
}

/* Events: a reader whose write is stuck is cut off. */
static void conn_cut(void *data, h2o_req_t *req)
{
    struct ag_conn *c = conn_of(data, req);

    if (c)
        conn_shutdown(c);
}

/* TCP connections that showed no valid token within their deadline. */
static void sweep_cb(uv_timer_t *t)
{
    struct ag_http *h = t->data;
    uint64_t now = uv_now(h->loop);
    struct ag_conn *c;

    for (c = h->conns; c; c = c->next) {
        if (c->tcp && c->deadline && now >= c->deadline && !c->cut) {
            h->m->conns_unauthenticated++;
            conn_shutdown(c);
        }
    }
}

static void health(struct ag_http *h, h2o_req_t *req)
{
    int ok = 0;
    cJSON *o = h->hooks.health(h->hooks.data, &ok);

    respond_json(h, req, ok ? 200 : 503, o);
    cJSON_Delete(o);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct ag_http *h = ((struct ag_handler *)self)->http;
    struct ag_conn *c = conn_of(h, req);
    struct http_wait *hw = h2o_mem_alloc_shared(&req->pool, sizeof(*hw), http_wait_gone);
    struct ag_http_in in = {
        .method = req->method.base,
        .method_len = req->method.len,
        .path = req->path.base,
        .path_len = req->path.len,
        .body = req->entity.base,
        .body_len = req->entity.base ? req->entity.len : 0,
        .tcp = !c || c->tcp, /* unknown: ask for the token */
    };
    enum ag_http_route route;
    char job[AG_ID_MAX + 1];

    memset(hw, 0, sizeof(*hw));
    hw->w.answer = http_answer;
    hw->w.data = hw;
    hw->http = h;
    hw->req = req;
    in.auth = header(req, "authorization", &in.auth_len);
    in.key = header(req, "idempotency-key", &in.key_len);
    route = ag_http_dispatch(h->ops, h->cfg.token, &in, &hw->w, job);
    if (c && c->tcp && route != AG_HTTP_UNAUTHORIZED)
        c->deadline = 0; /* it has the token: no deadline any more */
    switch (route) {
    case AG_HTTP_UNAUTHORIZED:
        /* answered 401; the connection ends with the answer */
        req->http1_is_persistent = 0;
        if (c && c->tcp)
            h->m->conns_unauthenticated++;
        break;
    case AG_HTTP_ANSWERED:
        break;
    case AG_HTTP_EVENTS:
        if (h->events)
            ag_events_serve(h->events, req, job);
        else
            respond_text(h, req, 503, "text/plain", strdup("the agent is stopping\n"));
        break;
    case AG_HTTP_HEALTHZ:
        health(h, req);
        break;
    case AG_HTTP_METRICS:
        respond_text(h, req, 200, "text/plain; version=0.0.4", h->hooks.metrics(h->hooks.data));
        break;
    }
    return 0;
}

/* ---- listening and connections ---- */

static void conn_closed(uv_handle_t *handle)
{
    struct ag_conn *c = (struct ag_conn *)handle;
    struct ag_http *h = c->http;

    if (c->prev)
        c->prev->next = c->next;
    else if (h->conns == c)
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->nconns--;
    h->ntcp -= c->tcp;
    free(c);
}

static void conn_refused_closed(uv_handle_t *handle)
{
    free(handle);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct ag_http *h = listener->data;
    int tcp = listener == (uv_stream_t *)&h->tcp_listener;
    struct ag_conn *c;

    if (status < 0)
        return;
    c = calloc(1, sizeof(*c));
    if (!c)
        return;
    if (tcp)
        uv_tcp_init(h->loop, &c->h.tcp);
    else
        uv_pipe_init(h->loop, &c->h.pipe, 0);
    if (uv_accept(listener, (uv_stream_t *)&c->h) < 0) {
        uv_close((uv_handle_t *)&c->h, conn_refused_closed);
        return;
    }
    if ((tcp ? h->ntcp : h->nconns - h->ntcp) >= h->cfg.max_connections) {
        h->m->conns_refused++;
        uv_close((uv_handle_t *)&c->h, conn_refused_closed);
        return;
    }
    c->http = h;
    c->tcp = tcp;
    if (tcp) {
        c->deadline = uv_now(h->loop) + AG_AUTH_DEADLINE_MS;
        h->ntcp++;
    }
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    c->sock = h2o_uv_socket_create((uv_stream_t *)&c->h, conn_closed);
    h2o_accept(tcp ? &h->tcp_accept : &h->accept_ctx, c->sock);
}

/* Whether something answers on the unix socket at @path. */
static int socket_alive(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
    rc = fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
    if (fd >= 0)
        close(fd);
    return rc;
}

static int listen_unix(struct ag_http *h, char *err, size_t errlen)
{
    const char *path = h->cfg.socket_path;
    char dir[sizeof(h->socket_path)], *slash;
    struct stat st;
    gid_t gid = 0;
    int rc;

    if (strlen(path) >= sizeof(h->socket_path)) {
        snprintf(err, errlen, "socket path '%s' is longer than %zu bytes", path,
                 sizeof(h->socket_path) - 1);
        return -1;
    }
    if (h->cfg.socket_group) {
        struct group *g = getgrnam(h->cfg.socket_group);

        if (!g) {
            snprintf(err, errlen, "socket group '%s' does not exist", h->cfg.socket_group);
            return -1;
        }
        gid = g->gr_gid;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(errno));
            return -1;
        }
    }
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "'%s' exists and is not a socket", path);
            return -1;
        }
        if (socket_alive(path)) {
            snprintf(err, errlen, "another agent answers on '%s'", path);
            return -1;
        }
        unlink(path); /* a dead agent's */
    }
    snprintf(h->socket_path, sizeof(h->socket_path), "%s", path);
    uv_pipe_init(h->loop, &h->unix_listener, 0);
    h->unix_listener.data = h;
    h->have_unix = 1;
    rc = uv_pipe_bind(&h->unix_listener, path);
    if (rc == 0 && (chmod(path, 0660) < 0 || chown(path, 0, gid) < 0))
        rc = -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->unix_listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", path, uv_strerror(rc));
        return -1;
    }
    return 0;
}

static int loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    return ss->ss_family == AF_INET6 &&
           IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* OpenSSL's reason for the last failure, for a one-line message. */
static const char *ssl_why(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();

    ERR_clear_error();
    if (!e)
        return "unknown error";
    ERR_error_string_n(e, buf, sizeof(buf));
    return buf;
}

/* TLS on the TCP listener, configured once on its SSL_CTX (TLS 1.2 and up);
 * H2O does the handshake on the same accept path as a plain socket. */
static int tls_setup(struct ag_http *h, char *err, size_t errlen)
{
    const struct ag_http_config *cfg = &h->cfg;
    struct stat st;
    int fd;

    if (!cfg->tls_cert && !cfg->tls_key && !cfg->tls_client_ca)
        return 0;
    if (!cfg->tls_cert || !cfg->tls_key) {
        snprintf(err, errlen, "TLS needs both --tls-cert and --tls-key");
        return -1;
    }
    if (!cfg->listen) {
        snprintf(err, errlen, "--tls-cert, --tls-key and --tls-client-ca are for --listen");
        return -1;
    }
    fd = open(cfg->tls_key, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        snprintf(err, errlen, "cannot read --tls-key '%s': %s", cfg->tls_key, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    if (st.st_mode & 0007) {
        snprintf(err, errlen, "--tls-key '%s' can be read by anyone (mode %03o); chmod o-rwx",
                 cfg->tls_key, (unsigned)(st.st_mode & 0777));
        return -1;
    }
    h->ssl = SSL_CTX_new(TLS_server_method());
    if (!h->ssl || !SSL_CTX_set_min_proto_version(h->ssl, TLS1_2_VERSION)) {
        snprintf(err, errlen, "cannot set up TLS: %s", ssl_why());
        return -1;
    }
    SSL_CTX_set_options(h->ssl, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                    SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(h->ssl, cfg->tls_cert) != 1) {
        snprintf(err, errlen, "--tls-cert '%s': %s", cfg->tls_cert, ssl_why());
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(h->ssl, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(h->ssl) != 1) {
        snprintf(err, errlen, "--tls-key '%s': %s", cfg->tls_key, ssl_why());
        return -1;
    }
    if (cfg->tls_client_ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca);

        if (!names || SSL_CTX_load_verify_locations(h->ssl, cfg->tls_client_ca, NULL) != 1) {
            snprintf(err, errlen, "--tls-client-ca '%s': %s", cfg->tls_client_ca, ssl_why());
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            return -1;
        }
        SSL_CTX_set_client_CA_list(h->ssl, names);
        SSL_CTX_set_verify(h->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    h->tcp_accept.ssl_ctx = h->ssl;
    return 0;
}

static int listen_tcp(struct ag_http *h, char *err, size_t errlen)
{
    char host[128];
    const char *spec = h->cfg.listen, *colon = strrchr(spec, ':');
    struct sockaddr_storage ss;
    long port;
    char *end;
    int rc;

    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host))
        goto bad;
    port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535)
        goto bad;
    if (spec[0] == '[' && colon[-1] == ']') {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - spec - 2), spec + 1);
        rc = uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss);
    } else {
        snprintf(host, sizeof(host), "%.*s", (int)(colon - spec), spec);
        rc = uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss);
    }
    if (rc < 0)
        goto bad;
    if (!h->ssl && !loopback(&ss)) {
        snprintf(err, errlen, "--listen '%s' without --tls-cert would send the bearer token "
                              "in clear: give --tls-cert and --tls-key, or listen on loopback",
                 spec);
        return -1;
    }
    uv_tcp_init(h->loop, &h->tcp_listener);
    h->tcp_listener.data = h;
    h->have_tcp = 1;
    uv_timer_init(h->loop, &h->sweep);
    h->sweep.data = h;
    h->have_sweep = 1;
    uv_timer_start(&h->sweep, sweep_cb, AG_SWEEP_MS, AG_SWEEP_MS);
    rc = uv_tcp_bind(&h->tcp_listener, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->tcp_listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", spec, uv_strerror(rc));
        return -1;
    }
    return 0;
bad:
    snprintf(err, errlen, "--listen '%s' is not ADDR:PORT (e.g. 127.0.0.1:8787 or [::1]:8787)",
             spec);
    return -1;
}

int ag_http_start(uv_loop_t *loop, struct ag_ops *ops, struct ag_metrics *m,
                  const struct ag_http_config *cfg, const struct ag_http_hooks *hooks,
                  struct ag_http **out, char *err, size_t errlen)
{
    struct ag_http *h = calloc(1, sizeof(*h));
    h2o_hostconf_t *host;
    h2o_pathconf_t *path;
    struct ag_handler *handler;

    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *out = h; /* closed by ag_http_close, also when this fails */
    h->loop = loop;
    h->ops = ops;
    h->m = m;
    h->cfg = *cfg;
    h->hooks = *hooks;
    h->events = ag_events_new(loop, cfg->event_backlog, m, conn_cut, h);
    h2o_config_init(&h->conf);
    h->conf.max_request_entity_size = AG_MAX_BODY;
    h->conf.http1.req_timeout = AG_REQ_TIMEOUT_MS;
    h->conf.http1.upgrade_to_http2 = 0;
    h->conf.server_name = h2o_iovec_init(H2O_STRLIT("hotsnap"));
    host = h2o_config_register_host(&h->conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    path = h2o_config_register_path(host, "/", 0);
    handler = (struct ag_handler *)h2o_create_handler(path, sizeof(*handler));
    handler->super.on_req = on_req;
    handler->http = h;
    h2o_context_init(&h->ctx, loop, &h->conf);
    h->accept_ctx.ctx = &h->ctx;
    h->accept_ctx.hosts = h->conf.hosts;
    h->tcp_accept = h->accept_ctx;
    if (!h->events) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (tls_setup(h, err, errlen) < 0 || listen_unix(h, err, errlen) < 0)
        return -1;
    if (cfg->listen && listen_tcp(h, err, errlen) < 0)
        return -1;
    return 0;
}

void ag_http_event(struct ag_http *h, const char *job, const char *text, size_t len)
{
    if (h->events)
        ag_events_send(h->events, job, text, len);
}

int ag_http_connections(const struct ag_http *h, int *tcp)
{
    *tcp = h->ntcp;
    return h->nconns;
}

int ag_http_readers(const struct ag_http *h)
{
    return h->events ? ag_events_readers(h->events) : 0;
}

static void closed_quietly(uv_handle_t *handle)
{
}

void ag_http_close(struct ag_http *h)
{
    if (!h)
        return;
    if (h->have_unix) {
        uv_close((uv_handle_t *)&h->unix_listener, closed_quietly);
        unlink(h->socket_path);
    }
    if (h->have_tcp)
        uv_close((uv_handle_t *)&h->tcp_listener, closed_quietly);
    if (h->have_sweep)
        uv_close((uv_handle_t *)&h->sweep, closed_quietly);
    ag_events_close(h->events);
    h->events = NULL;
    /* the H2O context and the connections live as long as the process */
}
