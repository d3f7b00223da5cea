/*
 * The agent as an oslo.messaging RPC server on RabbitMQ (see amqp.h).
 *
 * One thread owns the rabbitmq-c connection: it connects (with backoff),
 * declares what an oslo RPC server declares, consumes, publishes replies and
 * notifications (in confirm mode), and acks. It never blocks on the loop and
 * the loop never blocks on it: deliveries go to the loop through a queue and
 * a uv_async_t; replies, notifications and acks come back through another
 * queue and an eventfd the thread polls beside the AMQP socket.
 *
 * A delivery is acked once what it asked is done and, for a snapshot, the
 * job is accepted and recorded; a redelivery (after a reconnect) carries the
 * same _unique_id, which is the job's idempotency key, so it starts nothing
 * new. A request the agent cannot take now (libvirt away, the running cap)
 * is held and tried again, unacked; one that comes while the agent stops
 * stays unacked, and the broker gives it back when the connection closes,
 * to another agent or to the next start.
 *
 * The thread connects, and publishes notifications, from the start; it
 * consumes requests only once the agent serves (ag_amqp_serve: recovery has
 * run). Notifications go through the outbox (see outbox_append).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "amqp.h"
#include "api.h"
#include "files.h"
#include "log.h"
#include "rpc.h"

#define AQ_CHANNEL 1
#define AQ_HEARTBEAT 30       /* seconds */
#define AQ_PREFETCH 64
#define AQ_FANOUT_EXPIRES 1800000 /* ms: oslo's rabbit_transient_queues_ttl */
#define AQ_BACKOFF_MAX_MS 15000
#define AQ_STOP_GRACE_MS 5000
#define AQ_HELD_RETRY_MS 2000 /* a request held (libvirt away, the cap) is tried again */
#define AQ_OUTBOX "outbox.jsonl"

enum aq_kind {
    AQ_DELIVERY,  /* thread -> loop */
    AQ_CONFIRMED, /* thread -> loop: a notification is safe with the broker */
    AQ_STATE,     /* thread -> loop: connected or not, and why */
    AQ_PUBLISH,   /* loop -> thread: a reply */
    AQ_NOTIFY,    /* loop -> thread: a notification, kept until confirmed */
    AQ_ACK,       /* loop -> thread */
    AQ_SERVE,     /* loop -> thread: declare and consume the RPC queues */
};

struct aq_msg {
    enum aq_kind kind;
    struct aq_msg *next;
    uint64_t gen; /* the connection a delivery came on, or an ack is for */
    uint64_t tag; /* delivery tag */
    uint64_t seq; /* notification number */
    char *exchange, *key;
    char *body;
    size_t len;
    int up;
    uint64_t publish_no; /* thread: its number in confirm mode, 0 unpublished */
};

struct aq_queue {
    struct aq_msg *head, *tail;
};

struct ag_amqp {
    uv_loop_t *loop;
    struct ag_ops *ops;
    struct ag_amqp_url url;
    char *topic, *server, *exchange;
    int dirfd;     /* <state>/agent, borrowed */
    int outbox_fd; /* outbox.jsonl, appended by the loop */
    int sync_fd;   /* the same file, fdatasynced by the thread */
    uv_thread_t thread;
    uv_async_t async;
    int wake_fd;
    uv_mutex_t mu;
    struct aq_queue to_thread, to_loop;
    int stop;
    /* the loop's */
    uint64_t next_seq;
    struct aq_queue outbox_list; /* notifications not confirmed (seq, key, body), in order */
    int connected;
    unsigned reconnects;
    int ever_up;
    int stopping;               /* requests now go back to the broker */
    struct aq_call *held;       /* requests the agent could not take yet */
    uint64_t gen_seen;          /* the connection the thread says is up */
    uv_timer_t held_timer;
    /* the thread's */
    int serving;
    amqp_connection_state_t conn;
    uint64_t gen;
    uint64_t published;          /* publishes on this connection, for confirms */
    struct aq_queue notifs;      /* notifications not confirmed */
    char declared[8][64];        /* notification queues declared on this connection */
    int ndeclared;
};

/* ---- queues between the loop and the thread ---- */

static void aq_push(struct aq_queue *q, struct aq_msg *m)
{
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
}

static struct aq_msg *aq_take_all(struct aq_queue *q)
{
    struct aq_msg *m = q->head;

    q->head = q->tail = NULL;
    return m;
}

/* Everything a queue shared by the loop and the thread holds. */
static struct aq_msg *aq_take_locked(struct ag_amqp *q, struct aq_queue *from)
{
    struct aq_msg *m;

    uv_mutex_lock(&q->mu);
    m = aq_take_all(from);
    uv_mutex_unlock(&q->mu);
    return m;
}

/* Take @m (after @prev, or first) out of @q. */
static void aq_unlink(struct aq_queue *q, struct aq_msg *prev, struct aq_msg *m)
{
    if (prev)
        prev->next = m->next;
    else
        q->head = m->next;
    if (q->tail == m)
        q->tail = prev;
}

static void aq_free(struct aq_msg *m)
{
    if (!m)
        return;
    free(m->exchange);
    free(m->key);
    free(m->body);
    free(m);
}

static struct aq_msg *aq_new(enum aq_kind kind, const char *exchange, const char *key,
                             const char *body, size_t len)
{
    struct aq_msg *m = calloc(1, sizeof(*m));

    if (!m)
        abort();
    m->kind = kind;
    m->exchange = exchange ? strdup(exchange) : NULL;
    m->key = key ? strdup(key) : NULL;
    if (body) {
        m->body = malloc(len + 1);
        if (!m->body)
            abort();
        memcpy(m->body, body, len);
        m->body[len] = '\0';
        m->len = len;
    }
    return m;
}

static void to_thread(struct ag_amqp *q, struct aq_msg *m)
{
    uint64_t one = 1;

    uv_mutex_lock(&q->mu);
    aq_push(&q->to_thread, m);
    uv_mutex_unlock(&q->mu);
    if (write(q->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the thread is awake anyway */
    }
}

static void to_loop(struct ag_amqp *q, struct aq_msg *m)
{
    uv_mutex_lock(&q->mu);
    aq_push(&q->to_loop, m);
    uv_mutex_unlock(&q->mu);
    uv_async_send(&q->async);
}

/* ---- the thread ---- */

static int rpc_ok(struct ag_amqp *q, const char *what)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(q->conn);

    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_NONE:
        ag_log("warning", "amqp: %s: no reply", what);
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        ag_log("warning", "amqp: %s: %s", what, amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD ||
            r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_bytes_t text = r.reply.id == AMQP_CONNECTION_CLOSE_METHOD
                                    ? ((amqp_connection_close_t *)r.reply.decoded)->reply_text
                                    : ((amqp_channel_close_t *)r.reply.decoded)->reply_text;

            ag_log("warning", "amqp: %s: the broker says: %.*s", what, (int)text.len,
                   (char *)text.bytes);
        } else {
            ag_log("warning", "amqp: %s: the broker closed the connection", what);
        }
        break;
    }
    return -1;
}

static void disconnect(struct ag_amqp *q, const char *why)
{
    struct aq_msg *m;

    if (!q->conn)
        return;
    amqp_destroy_connection(q->conn);
    q->conn = NULL;
    q->ndeclared = 0;
    for (m = q->notifs.head; m; m = m->next)
        m->publish_no = 0; /* published again on the next connection */
    m = aq_new(AQ_STATE, NULL, NULL, why, strlen(why));
    m->up = 0;
    to_loop(q, m);
}

static int declare_queue(struct ag_amqp *q, const char *queue, const char *exchange,
                         const char *key, int auto_delete, amqp_table_t args)
{
    amqp_queue_declare(q->conn, AQ_CHANNEL, amqp_cstring_bytes(queue), 0, 0, 0, auto_delete,
                       args);
    if (rpc_ok(q, "declaring a queue") < 0)
        return -1;
    amqp_queue_bind(q->conn, AQ_CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    return rpc_ok(q, "binding a queue");
}

static int consume(struct ag_amqp *q, const char *queue)
{
    amqp_basic_consume(q->conn, AQ_CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    return rpc_ok(q, "consuming");
}

/* AMQP over TLS, in oslo.messaging's terms (the transport URL's query):
 * TLS 1.2 and up, the broker's certificate checked against ssl_ca_file (else
 * the system's CAs) and its name against the URL's host unless
 * ssl_enforce_hostname_verification=false, and a client certificate when
 * ssl_cert_file and ssl_key_file are given. */
static amqp_socket_t *tls_socket(struct ag_amqp *q)
{
    amqp_socket_t *sock = amqp_ssl_socket_new(q->conn);

    if (!sock)
        return NULL;
    if (amqp_ssl_socket_set_ssl_versions(sock, AMQP_TLSv1_2, AMQP_TLSvLATEST) != AMQP_STATUS_OK)
        return NULL;
    amqp_ssl_socket_set_verify_peer(sock, 1);
    amqp_ssl_socket_set_verify_hostname(sock, q->url.verify_hostname);
    if (q->url.ca[0] ? amqp_ssl_socket_set_cacert(sock, q->url.ca) != AMQP_STATUS_OK
                     : SSL_CTX_set_default_verify_paths(amqp_ssl_socket_get_context(sock)) != 1)
        return NULL;
    if (q->url.cert[0] &&
        amqp_ssl_socket_set_key(sock, q->url.cert, q->url.key) != AMQP_STATUS_OK)
        return NULL;
    return sock;
}

static int serve_queues(struct ag_amqp *q);

/* Connect, log in, open the channel in confirm mode; consume the RPC queues
 * once the agent serves. */
static int connect_broker(struct ag_amqp *q)
{
    struct timeval tv = {5, 0};
    amqp_socket_t *sock;
    amqp_rpc_reply_t r;
    int rc;

    q->conn = amqp_new_connection();
    sock = q->url.ssl ? tls_socket(q) : amqp_tcp_socket_new(q->conn);
    if (!sock) {
        disconnect(q, q->url.ssl ? "cannot set up TLS (its files?)" : "out of memory");
        return -1;
    }
    ERR_clear_error();
    rc = amqp_socket_open_noblock(sock, q->url.host, q->url.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        char why[512], tls[256] = "";
        unsigned long e = q->url.ssl ? ERR_get_error() : 0;

        if (e)
            ERR_error_string_n(e, tls, sizeof(tls));
        ERR_clear_error();
        snprintf(why, sizeof(why), "cannot reach %s:%d%s: %s%s%s", q->url.host, q->url.port,
                 q->url.ssl ? " over TLS" : "", amqp_error_string2(rc), tls[0] ? ": " : "", tls);
        disconnect(q, why);
        return -1;
    }
    r = amqp_login(q->conn, q->url.vhost, 0, 131072, AQ_HEARTBEAT, AMQP_SASL_METHOD_PLAIN,
                   q->url.user, q->url.pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        disconnect(q, "the broker refused the login (user, password or virtual host)");
        return -1;
    }
    amqp_channel_open(q->conn, AQ_CHANNEL);
    if (rpc_ok(q, "opening a channel") < 0)
        goto fail;
    amqp_confirm_select(q->conn, AQ_CHANNEL);
    if (rpc_ok(q, "selecting confirms") < 0)
        goto fail;
    amqp_basic_qos(q->conn, AQ_CHANNEL, 0, AQ_PREFETCH, 0);
    if (rpc_ok(q, "setting the prefetch") < 0)
        goto fail;
    if (q->serving && serve_queues(q) < 0)
        goto fail;
    q->gen++;
    q->published = 0;
    {
        struct aq_msg *m = aq_new(AQ_STATE, NULL, NULL, "", 0);

        m->up = 1;
        m->gen = q->gen;
        to_loop(q, m);
    }
    return 0;
fail:
    disconnect(q, "the broker refused a declaration");
    return -1;
}

/* What an oslo.messaging RPC server declares, and consume it all. */
static int serve_queues(struct ag_amqp *q)
{
    char server_q[600], fanout_x[300], fanout_q[400];
    amqp_table_entry_t exp = {.key = amqp_cstring_bytes("x-expires"),
                              .value = {.kind = AMQP_FIELD_KIND_I32,
                                        .value = {.i32 = AQ_FANOUT_EXPIRES}}};
    amqp_table_t fanout_args = {1, &exp};
    unsigned char rnd[16];
    int i;

    amqp_exchange_declare(q->conn, AQ_CHANNEL, amqp_cstring_bytes(q->exchange),
                          amqp_cstring_bytes("topic"), 0, 0, 0, 0, amqp_empty_table);
    if (rpc_ok(q, "declaring the control exchange") < 0)
        return -1;
    snprintf(server_q, sizeof(server_q), "%s.%s", q->topic, q->server);
    snprintf(fanout_x, sizeof(fanout_x), "%s_fanout", q->topic);
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) < 0)
        memset(rnd, 7, sizeof(rnd));
    i = snprintf(fanout_q, sizeof(fanout_q), "%s_fanout_", q->topic);
    for (size_t k = 0; k < sizeof(rnd); k++)
        i += snprintf(fanout_q + i, sizeof(fanout_q) - (size_t)i, "%02x", rnd[k]);
    if (declare_queue(q, q->topic, q->exchange, q->topic, 0, amqp_empty_table) < 0 ||
        declare_queue(q, server_q, q->exchange, server_q, 0, amqp_empty_table) < 0)
        return -1;
    amqp_exchange_declare(q->conn, AQ_CHANNEL, amqp_cstring_bytes(fanout_x),
                          amqp_cstring_bytes("fanout"), 0, 0, 1, 0, amqp_empty_table);
    if (rpc_ok(q, "declaring the fanout exchange") < 0 ||
        declare_queue(q, fanout_q, fanout_x, q->topic, 0, fanout_args) < 0)
        return -1;
    if (consume(q, q->topic) < 0 || consume(q, server_q) < 0 || consume(q, fanout_q) < 0)
        return -1;
    return 0;
}

static int publish(struct ag_amqp *q, const char *exchange, const char *key, const char *body,
                   size_t len, int persistent)
{
    amqp_basic_properties_t props = {0};
    amqp_bytes_t b = {len, (void *)body};
    int rc;

    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                   AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.content_encoding = amqp_cstring_bytes("utf-8");
    props.delivery_mode = persistent ? 2 : 1;
    rc = amqp_basic_publish(q->conn, AQ_CHANNEL, amqp_cstring_bytes(exchange),
                            amqp_cstring_bytes(key), 0, 0, &props, b);
    if (rc != AMQP_STATUS_OK) {
        char why[256];

        snprintf(why, sizeof(why), "publishing failed: %s", amqp_error_string2(rc));
        disconnect(q, why);
        return -1;
    }
    q->published++;
    return 0;
}

/* A notification: its queue declared (as oslo's notifier does, so nothing
 * is lost before a listener comes), then published; confirmed later. */
static int publish_notif(struct ag_amqp *q, struct aq_msg *m)
{
    int i;

    for (i = 0; i < q->ndeclared; i++)
        if (!strcmp(q->declared[i], m->key))
            break;
    if (i == q->ndeclared) {
        if (declare_queue(q, m->key, q->exchange, m->key, 0, amqp_empty_table) < 0) {
            disconnect(q, "the broker refused the notification queue");
            return -1;
        }
        if (q->ndeclared < 8)
            snprintf(q->declared[q->ndeclared++], sizeof(q->declared[0]), "%s", m->key);
    }
    if (publish(q, q->exchange, m->key, m->body, m->len, 1) < 0)
        return -1;
    m->publish_no = q->published;
    return 0;
}

static void confirmed(struct ag_amqp *q, uint64_t tag, int multiple)
{
    struct aq_msg *m, *next, *prev = NULL;

    for (m = q->notifs.head; m; m = next) {
        next = m->next;
        if (m->publish_no && (m->publish_no == tag || (multiple && m->publish_no <= tag))) {
            struct aq_msg *c = aq_new(AQ_CONFIRMED, NULL, NULL, NULL, 0);

            c->seq = m->seq;
            to_loop(q, c);
            aq_unlink(&q->notifs, prev, m);
            aq_free(m);
            continue;
        }
        prev = m;
    }
}

/* What the loop sent: replies, notifications, acks. New notifications are
 * on disk for good (fdatasync) before the broker may see them. */
static void thread_drain(struct ag_amqp *q)
{
    struct aq_msg *m, *next, *fresh = NULL, **tail = &fresh;

    for (m = aq_take_locked(q, &q->to_thread); m; m = next) {
        next = m->next;
        switch (m->kind) {
        case AQ_NOTIFY:
            m->next = NULL;
            *tail = m;
            tail = &m->next;
            continue; /* published below, kept until confirmed */
        case AQ_PUBLISH:
            if (q->conn)
                publish(q, m->exchange, m->key, m->body, m->len, 0);
            break;
        case AQ_ACK:
            if (q->conn && m->gen == q->gen &&
                amqp_basic_ack(q->conn, AQ_CHANNEL, m->tag, 0) != AMQP_STATUS_OK)
                disconnect(q, "an ack failed");
            break;
        case AQ_SERVE:
            q->serving = 1;
            if (q->conn && serve_queues(q) < 0)
                disconnect(q, "the broker refused a declaration");
            break;
        case AQ_DELIVERY:
        case AQ_CONFIRMED:
        case AQ_STATE:
            break;
        }
        aq_free(m);
    }
    if (!fresh)
        return;
    if (fdatasync(q->sync_fd) < 0)
        ag_log("warning", "amqp: cannot sync the outbox: %s", strerror(errno));
    for (m = fresh; m; m = next) {
        next = m->next;
        aq_push(&q->notifs, m);
        if (q->conn)
            publish_notif(q, m);
    }
}

/* Frames other than a delivery: confirms, returns, the broker closing. */
static int other_frame(struct ag_amqp *q)
{
    struct timeval zero = {0, 0};
    amqp_frame_t f;
    int rc = amqp_simple_wait_frame_noblock(q->conn, &f, &zero);

    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        disconnect(q, amqp_error_string2(rc));
        return -1;
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *ack = f.payload.method.decoded;

        confirmed(q, ack->delivery_tag, ack->multiple);
        return 0;
    }
    case AMQP_BASIC_RETURN_METHOD: {
        amqp_message_t msg;

        if (amqp_read_message(q->conn, f.channel, &msg, 0).reply_type == AMQP_RESPONSE_NORMAL)
            amqp_destroy_message(&msg);
        return 0;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
        disconnect(q, "the broker closed the connection");
        return -1;
    }
    return 0; /* basic.nack and others: the notification stays, published again */
}

static void thread_read(struct ag_amqp *q)
{
    struct timeval zero = {0, 0};
    amqp_envelope_t env;
    amqp_rpc_reply_t r;

    while (q->conn) {
        amqp_maybe_release_buffers(q->conn);
        r = amqp_consume_message(q->conn, &env, &zero, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            struct aq_msg *m = aq_new(AQ_DELIVERY, NULL, NULL, env.message.body.bytes,
                                      env.message.body.len);

            m->gen = q->gen;
            m->tag = env.delivery_tag;
            amqp_destroy_envelope(&env);
            to_loop(q, m);
            continue;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            return;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (other_frame(q) < 0)
                return;
            continue;
        }
        disconnect(q, r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                          ? amqp_error_string2(r.library_error)
                          : "the broker closed the connection");
    }
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void thread_main(void *arg)
{
    struct ag_amqp *q = arg;
    uint64_t next_try = 0, backoff = 500, stop_at = 0;
    struct pollfd pfd[2];
    uint64_t drain;
    int stop;

    for (;;) {
        uv_mutex_lock(&q->mu);
        stop = q->stop;
        uv_mutex_unlock(&q->mu);
        if (stop && !stop_at)
            stop_at = now_ms() + AQ_STOP_GRACE_MS;
        if (stop_at)
            thread_drain(q); /* the last notifications count as waiting too */
        /* stopping: once every notification is confirmed, or time is up */
        if (stop_at && (!q->notifs.head || !q->conn || now_ms() >= stop_at))
            break;
        if (!q->conn && now_ms() >= next_try) {
            if (connect_broker(q) == 0) {
                struct aq_msg *m;

                backoff = 500;
                for (m = q->notifs.head; m && q->conn; m = m->next)
                    publish_notif(q, m);
            } else {
                next_try = now_ms() + backoff;
                backoff = backoff * 2 > AQ_BACKOFF_MAX_MS ? AQ_BACKOFF_MAX_MS : backoff * 2;
            }
        }
        thread_drain(q);
        if (q->conn && (amqp_frames_enqueued(q->conn) || amqp_data_in_buffer(q->conn))) {
            thread_read(q);
            continue;
        }
        pfd[0].fd = q->wake_fd;
        pfd[0].events = POLLIN;
        pfd[1].fd = q->conn ? amqp_get_sockfd(q->conn) : -1;
        pfd[1].events = POLLIN;
        if (poll(pfd, 2, q->conn ? 1000 : (int)(next_try > now_ms() ? next_try - now_ms() : 0)) >
                0 &&
            (pfd[0].revents & POLLIN)) {
            if (read(q->wake_fd, &drain, sizeof(drain)) < 0) {
                /* nothing to take */
            }
        }
        if (q->conn)
            thread_read(q); /* also sends heartbeats when due */
    }
    if (q->conn) {
        amqp_channel_close(q->conn, AQ_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(q->conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(q->conn);
        q->conn = NULL;
    }
}

/* ---- the loop's side ---- */

/*
 * The outbox, <state>/agent/outbox.jsonl: an append-only log of a line per
 * notification ({"seq", "key", "body"}) and a line per confirm ({"done":
 * seq}). The loop only appends, with write(2) and no fsync (the kernel has
 * the line if the agent is killed; the history is kept the same way); the
 * thread fdatasyncs the file before it publishes what it was handed, so a
 * host that crashes cannot lose a notification the broker may have seen.
 * A confirm costs one short line, and the file is emptied (truncated) once
 * nothing is pending. It is read, and rewritten with what is pending, once,
 * at start.
 */
static void outbox_append(struct ag_amqp *q, cJSON *line)
{
    char *s = cJSON_PrintUnformatted(line);
    size_t len;

    cJSON_Delete(line);
    if (!s)
        return;
    len = strlen(s);
    s[len] = '\n'; /* one write: one whole line */
    if (write(q->outbox_fd, s, len + 1) != (ssize_t)(len + 1))
        ag_log("warning", "amqp: cannot write the outbox: %s", strerror(errno));
    free(s);
}

static void outbox_notif(struct ag_amqp *q, uint64_t seq, const char *key, const char *body)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddNumberToObject(o, "seq", (double)seq);
    cJSON_AddStringToObject(o, "key", key);
    cJSON_AddStringToObject(o, "body", body);
    outbox_append(q, o);
}

/* Hand a notification to the thread, remembering it until confirmed. */
static void notif_send(struct ag_amqp *q, const char *key, const char *body)
{
    struct aq_msg *keep = aq_new(AQ_NOTIFY, NULL, key, body, strlen(body));
    struct aq_msg *m = aq_new(AQ_NOTIFY, NULL, key, body, strlen(body));

    keep->seq = m->seq = ++q->next_seq;
    outbox_notif(q, keep->seq, key, body); /* in the outbox before the thread has it */
    aq_push(&q->outbox_list, keep);
    to_thread(q, m);
}

static void hex_uuid(char *out, int dashes)
{
    unsigned char r[16];
    int i, o = 0;

    if (uv_random(NULL, NULL, r, sizeof(r), 0, NULL) < 0)
        for (i = 0; i < 16; i++)
            r[i] = (unsigned char)rand();
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    for (i = 0; i < 16; i++) {
        if (dashes && (i == 4 || i == 6 || i == 8 || i == 10))
            out[o++] = '-';
        o += sprintf(out + o, "%02x", r[i]);
    }
}

/* The oslo.message envelope around @msg (taken). */
static char *envelope(cJSON *msg)
{
    cJSON *env = cJSON_CreateObject();
    char *inner = cJSON_PrintUnformatted(msg), *s;

    cJSON_AddStringToObject(env, "oslo.version", "2.0");
    cJSON_AddStringToObject(env, "oslo.message", inner ? inner : "{}");
    s = cJSON_PrintUnformatted(env);
    free(inner);
    cJSON_Delete(env);
    cJSON_Delete(msg);
    return s;
}

void ag_amqp_notify(struct ag_amqp *q, const char *event_type, const char *priority,
                    const cJSON *job)
{
    cJSON *msg = cJSON_CreateObject();
    char id[40], ts[40], key[64], lower[16];
    struct timespec now;
    struct tm tm;
    char *body;
    size_t n, i;

    hex_uuid(id, 1);
    clock_gettime(CLOCK_REALTIME, &now);
    n = strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", gmtime_r(&now.tv_sec, &tm));
    snprintf(ts + n, sizeof(ts) - n, ".%06ld", now.tv_nsec / 1000);
    for (i = 0; priority[i] && i < sizeof(lower) - 1; i++)
        lower[i] = (char)(priority[i] | 0x20);
    lower[i] = '\0';
    snprintf(key, sizeof(key), "notifications.%s", lower);
    cJSON_AddStringToObject(msg, "message_id", id);
    {
        char pub[300];

        snprintf(pub, sizeof(pub), "hotsnap.%s", q->server);
        cJSON_AddStringToObject(msg, "publisher_id", pub);
    }
    cJSON_AddStringToObject(msg, "event_type", event_type);
    cJSON_AddStringToObject(msg, "priority", priority);
    cJSON_AddItemToObject(msg, "payload", cJSON_Duplicate(job, 1));
    cJSON_AddStringToObject(msg, "timestamp", ts);
    body = envelope(msg);
    notif_send(q, key, body);
    free(body);
}

static void on_confirmed(struct ag_amqp *q, uint64_t seq)
{
    struct aq_msg *m, *prev = NULL;
    cJSON *done;

    /* confirms come in order, mostly: the head first */
    for (m = q->outbox_list.head; m; prev = m, m = m->next) {
        if (m->seq == seq) {
            aq_unlink(&q->outbox_list, prev, m);
            aq_free(m);
            break;
        }
    }
    if (!q->outbox_list.head) {
        if (ftruncate(q->outbox_fd, 0) < 0)
            ag_log("warning", "amqp: cannot empty the outbox: %s", strerror(errno));
        return;
    }
    done = cJSON_CreateObject();
    cJSON_AddNumberToObject(done, "done", (double)seq);
    outbox_append(q, done);
}

/* ---- requests ---- */

struct aq_call {
    struct ag_amqp *q;
    uint64_t gen, tag;
    char *msg_id, *reply_q;
    char *body; /* the message, to try again when held */
    size_t len;
    struct aq_call *next; /* held */
};

static void call_free(struct aq_call *c)
{
    free(c->msg_id);
    free(c->reply_q);
    free(c->body);
    free(c);
}

static void call_dispatch(struct aq_call *c);

/* The delivery is answered: ack it. */
static void call_ack(struct aq_call *c)
{
    struct aq_msg *m = aq_new(AQ_ACK, NULL, NULL, NULL, 0);

    m->gen = c->gen;
    m->tag = c->tag;
    to_thread(c->q, m);
    call_free(c);
}

static void held_cb(uv_timer_t *t)
{
    struct ag_amqp *q = t->data;
    struct aq_call *c = q->held, *next;

    q->held = NULL;
    for (; c; c = next) {
        next = c->next;
        c->next = NULL;
        if (c->gen != q->gen_seen) /* its delivery ended with its connection: it comes again */
            call_free(c);
        else
            call_dispatch(c);
    }
}

static const char *class_of(int status)
{
    switch (status) {
    case 400:
        return "BadRequest";
    case 404:
        return "NotFound";
    case 409:
        return "Conflict";
    case 429:
        return "TooManyRequests";
    }
    return "Unavailable";
}

/* Answer a call (result or failure), then ack its delivery. What the agent
 * cannot take now is not answered: held and tried again, or, while the
 * agent stops, given back to the broker. */
static void call_done(void *data, const struct ag_rpc_answer *a)
{
    struct aq_call *c = data;
    struct ag_amqp *q = c->q;

    if ((a->status == 503 || a->status == 429) && c->body) {
        if (q->stopping) {
            /* left unacked: the broker gives it back when the connection
             * closes, to another agent or to this one's next start (a
             * reject now would only bring it straight back here) */
            call_free(c);
            return;
        }
        ag_log("info", "amqp: a request waits: %s", a->error ? a->error : "unavailable");
        c->next = q->held;
        q->held = c;
        if (!uv_is_active((uv_handle_t *)&q->held_timer))
            uv_timer_start(&q->held_timer, held_cb, AQ_HELD_RETRY_MS, 0);
        return;
    }
    if (c->reply_q && c->msg_id) {
        cJSON *msg = cJSON_CreateObject();
        char uid[40], *body;

        cJSON_AddItemToObject(msg, "result", a->result && !a->error
                                                 ? cJSON_Duplicate(a->result, 1)
                                                 : cJSON_CreateNull());
        if (a->error) {
            cJSON *f = cJSON_CreateObject(), *args = cJSON_CreateArray();
            char *fs;

            cJSON_AddStringToObject(f, "class", class_of(a->status));
            cJSON_AddStringToObject(f, "module", "hotsnap");
            cJSON_AddStringToObject(f, "message", a->error);
            cJSON_AddItemToObject(f, "tb", cJSON_CreateArray());
            cJSON_AddItemToArray(args, cJSON_CreateString(a->error));
            cJSON_AddItemToObject(f, "args", args);
            cJSON_AddItemToObject(f, "kwargs", cJSON_CreateObject());
            fs = cJSON_PrintUnformatted(f);
            cJSON_AddStringToObject(msg, "failure", fs);
            free(fs);
            cJSON_Delete(f);
        } else {
            cJSON_AddNullToObject(msg, "failure");
        }
        cJSON_AddTrueToObject(msg, "ending");
        cJSON_AddStringToObject(msg, "_msg_id", c->msg_id);
        hex_uuid(uid, 0);
        cJSON_AddStringToObject(msg, "_unique_id", uid);
        body = envelope(msg);
        to_thread(q, aq_new(AQ_PUBLISH, "", c->reply_q, body, strlen(body)));
        free(body);
    } else if (a->error) {
        ag_log("warning", "amqp: a cast failed: %s", a->error);
    }
    call_ack(c);
}

static void call_dispatch(struct aq_call *c)
{
    struct ag_rpc rpc;
    char err[128];

    if (ag_rpc_unwrap(c->body, c->len, &rpc, err, sizeof(err)) < 0) {
        struct ag_rpc_answer a = {.status = 400, .error = err};

        call_done(c, &a); /* acked: it would only come back */
        return;
    }
    free(c->msg_id);
    free(c->reply_q);
    c->msg_id = rpc.msg_id ? strdup(rpc.msg_id) : NULL;
    c->reply_q = rpc.reply_q ? strdup(rpc.reply_q) : NULL;
    ag_rpc_dispatch(c->q->ops, &rpc, call_done, c);
    ag_rpc_free(&rpc);
}

static void on_delivery(struct ag_amqp *q, struct aq_msg *m)
{
    struct aq_call *c = calloc(1, sizeof(*c));

    if (!c)
        abort();
    c->q = q;
    c->gen = m->gen;
    c->tag = m->tag;
    c->body = m->body; /* taken */
    c->len = m->len;
    m->body = NULL;
    call_dispatch(c);
}

static void on_async(uv_async_t *h)
{
    struct ag_amqp *q = h->data;
    struct aq_msg *m, *next;

    for (m = aq_take_locked(q, &q->to_loop); m; m = next) {
        next = m->next;
        switch (m->kind) {
        case AQ_DELIVERY:
            on_delivery(q, m);
            break;
        case AQ_CONFIRMED:
            on_confirmed(q, m->seq);
            break;
        case AQ_STATE:
            if (m->up) {
                q->gen_seen = m->gen;
                if (q->ever_up)
                    q->reconnects++;
                q->ever_up = 1;
                ag_log("info", "amqp: connected to %s:%d%s, serving topic '%s' as server '%s'",
                       q->url.host, q->url.port, q->url.ssl ? " over TLS" : "", q->topic,
                       q->server);
            } else if (q->connected) {
                ag_log("warning", "amqp: connection lost (%s); reconnecting", m->body);
            } else {
                ag_log("warning", "amqp: not connected (%s); retrying", m->body);
            }
            q->connected = m->up;
            break;
        case AQ_PUBLISH:
        case AQ_NOTIFY:
        case AQ_ACK:
        case AQ_SERVE:
            break;
        }
        aq_free(m);
    }
}

int ag_amqp_connected(const struct ag_amqp *q, unsigned *reconnects)
{
    if (reconnects)
        *reconnects = q->reconnects;
    return q->connected;
}

/* Notifications a dead agent left unconfirmed: the outbox rewritten with
 * them alone (numbered anew), then sent again. At start, before serving. */
static int outbox_load(struct ag_amqp *q, char *err, size_t errlen)
{
    struct aq_queue pending = {0};
    struct aq_msg *m, *prev, *next;
    char *line = NULL, tmp[AG_TMP_NAME_MAX];
    size_t cap = 0;
    int fd = openat(q->dirfd, AQ_OUTBOX, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), n = 0;
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;

    while (f && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        const char *key = cJSON_GetStringValue(cJSON_GetObjectItem(o, "key"));
        const char *body = cJSON_GetStringValue(cJSON_GetObjectItem(o, "body"));
        const cJSON *done = cJSON_GetObjectItem(o, "done");

        if (cJSON_IsNumber(done)) {
            for (prev = NULL, m = pending.head; m; prev = m, m = m->next) {
                if (m->seq == (uint64_t)done->valuedouble) {
                    aq_unlink(&pending, prev, m);
                    aq_free(m);
                    break;
                }
            }
        } else if (key && body) {
            m = aq_new(AQ_NOTIFY, NULL, key, body, strlen(body));
            m->seq = (uint64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(o, "seq"));
            aq_push(&pending, m);
        }
        cJSON_Delete(o);
    }
    free(line);
    if (f)
        fclose(f);
    else if (fd >= 0)
        close(fd);
    fd = ag_replace_open(q->dirfd, AQ_OUTBOX, tmp);
    if (fd >= 0) {
        q->outbox_fd = fd;
        for (m = pending.head; m; m = m->next)
            outbox_notif(q, ++n, m->key, m->body);
        q->outbox_fd = -1;
        fd = ag_replace_commit(q->dirfd, fd, tmp, AQ_OUTBOX);
    }
    if (fd >= 0)
        q->outbox_fd = openat(q->dirfd, AQ_OUTBOX,
                              O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || q->outbox_fd < 0) {
        snprintf(err, errlen, "cannot rewrite the outbox '%s': %s", AQ_OUTBOX,
                 strerror(fd < 0 ? -fd : errno));
        for (m = aq_take_all(&pending); m; m = next) {
            next = m->next;
            aq_free(m);
        }
        return -1;
    }
    q->sync_fd = dup(q->outbox_fd);
    /* numbered as they are now in the file: sent again in their order */
    for (m = aq_take_all(&pending); m; m = next) {
        struct aq_msg *keep = aq_new(AQ_NOTIFY, NULL, m->key, m->body, m->len);

        next = m->next;
        keep->seq = m->seq = ++q->next_seq;
        aq_push(&q->outbox_list, keep);
        to_thread(q, m);
    }
    if (q->next_seq)
        ag_log("info", "amqp: %llu notification(s) not yet confirmed by the broker: sending them",
               (unsigned long long)q->next_seq);
    return 0;
}

int ag_amqp_start(uv_loop_t *loop, struct ag_ops *ops, const struct ag_amqp_config *cfg,
                  struct ag_amqp **out, char *err, size_t errlen)
{
    struct ag_amqp *q = calloc(1, sizeof(*q));
    char host[256];

    if (!q) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (ag_amqp_url_parse(cfg->url, &q->url, err, errlen) < 0) {
        free(q);
        return -1;
    }
    if (gethostname(host, sizeof(host)) < 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    q->loop = loop;
    q->ops = ops;
    q->dirfd = cfg->dirfd;
    q->outbox_fd = q->sync_fd = -1;
    q->topic = strdup(cfg->topic ? cfg->topic : "hotsnap");
    q->server = strdup(cfg->server ? cfg->server : host);
    q->exchange = strdup(cfg->exchange ? cfg->exchange : "openstack");
    q->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        free(q);
        return -1;
    }
    uv_mutex_init(&q->mu);
    if (outbox_load(q, err, errlen) < 0) {
        uv_mutex_destroy(&q->mu);
        close(q->wake_fd);
        free(q->topic);
        free(q->server);
        free(q->exchange);
        free(q);
        return -1;
    }
    uv_async_init(loop, &q->async, on_async);
    q->async.data = q;
    uv_timer_init(loop, &q->held_timer);
    q->held_timer.data = q;
    if (uv_thread_create(&q->thread, thread_main, q) != 0) {
        snprintf(err, errlen, "cannot start the AMQP thread");
        return -1;
    }
    *out = q;
    return 0;
}

void ag_amqp_serve(struct ag_amqp *q)
{
    to_thread(q, aq_new(AQ_SERVE, NULL, NULL, NULL, 0));
}

void ag_amqp_stopping(struct ag_amqp *q)
{
    struct aq_call *c, *next;

    q->stopping = 1;
    /* what waits stays unacked: the broker gives it back as the connection
     * closes, for another agent or the next start */
    uv_timer_stop(&q->held_timer);
    for (c = q->held, q->held = NULL; c; c = next) {
        next = c->next;
        call_free(c);
    }
}

static void timer_closed(uv_handle_t *h)
{
    struct ag_amqp *q = h->data;
    struct aq_msg *m, *next;

    for (m = aq_take_all(&q->outbox_list); m; m = next) {
        next = m->next;
        aq_free(m);
    }
    for (m = aq_take_all(&q->to_loop); m; m = next) {
        next = m->next;
        aq_free(m);
    }
    for (m = aq_take_all(&q->to_thread); m; m = next) {
        next = m->next;
        aq_free(m);
    }
    for (m = aq_take_all(&q->notifs); m; m = next) {
        next = m->next;
        aq_free(m);
    }
    uv_mutex_destroy(&q->mu);
    close(q->wake_fd);
    close(q->outbox_fd);
    close(q->sync_fd);
    free(q->topic);
    free(q->server);
    free(q->exchange);
    explicit_bzero(&q->url, sizeof(q->url));
    free(q);
}

static void async_closed(uv_handle_t *h)
{
    struct ag_amqp *q = h->data;

    uv_close((uv_handle_t *)&q->held_timer, timer_closed);
}

void ag_amqp_stop(struct ag_amqp *q)
{
    uint64_t one = 1;

    ag_amqp_stopping(q);
    uv_mutex_lock(&q->mu);
    q->stop = 1;
    uv_mutex_unlock(&q->mu);
    if (write(q->wake_fd, &one, sizeof(one)) < 0) {
        /* awake anyway */
    }
    uv_thread_join(&q->thread);
    on_async(&q->async); /* the last confirms */
    uv_close((uv_handle_t *)&q->async, async_closed);
}
