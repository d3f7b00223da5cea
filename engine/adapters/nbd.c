#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libnbd.h>

#include "nbd.h"
#include "util.h"

/* One command; libnbd's callbacks only fill it in and put it on a list. */
struct nbd_cmd {
    struct hs_nbd *n;
    hs_nbd_done_cb done;
    hs_nbd_extent_cb extent;
    void *data;
    int error; /* errno from libnbd, 0 on success */
    uint64_t *ext; /* extent triples: off, len, flags */
    size_t next, cap;
    struct nbd_cmd *prev, *after; /* in flight, or completed and not yet dispatched */
    int completed;
};

struct hs_nbd {
    uv_loop_t *loop;
    struct nbd_handle *h;
    uv_poll_t poll;
    int poll_fd; /* ours: a dup of libnbd's socket (see nbd_open) */
    int polling; /* poll initialized */
    int events;  /* what the poll waits for */
    int connecting;
    int closing;
    int in_flight;
    int dispatching;
    hs_nbd_done_cb connected;
    void *data;
    struct nbd_cmd *cmds; /* every command not yet dispatched, newest first */
    char *dirty_context;  /* a dirty bitmap's meta context asked for too, or NULL */
    char error[256];
};

static void nbd_update(struct hs_nbd *n);

static void nbd_set_error(struct hs_nbd *n, const char *what)
{
    const char *e = nbd_get_error();

    snprintf(n->error, sizeof(n->error), "%s: %s", what, e ? e : "unknown error");
}

/* libnbd's completion callback: record only, no nbd_* call here. */
static int cmd_completed(void *user_data, int *error)
{
    struct nbd_cmd *c = user_data;

    c->error = *error;
    c->completed = 1;
    return 1; /* retire the command */
}

static void cmd_unlink(struct hs_nbd *n, struct nbd_cmd *c)
{
    if (c->prev)
        c->prev->after = c->after;
    else
        n->cmds = c->after;
    if (c->after)
        c->after->prev = c->prev;
}

static int cmd_extents(void *user_data, const char *context, uint64_t offset, uint32_t *entries,
                       size_t nr_entries, int *error)
{
    struct nbd_cmd *c = user_data;
    size_t i;

    uint32_t mark = 0;

    if (c->n->dirty_context && !strcmp(context, c->n->dirty_context))
        mark = HS_NBD_DIRTY_EXTENT;
    else if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION))
        return 0;
    for (i = 0; i + 1 < nr_entries; i += 2) {
        if (c->next + 3 > c->cap) {
            c->cap = c->cap ? c->cap * 2 : 48;
            c->ext = realloc(c->ext, c->cap * sizeof(*c->ext));
            if (!c->ext)
                abort();
        }
        c->ext[c->next++] = offset;
        c->ext[c->next++] = entries[i];
        c->ext[c->next++] = entries[i + 1] | mark;
        offset += entries[i];
    }
    return 0;
}

static void nbd_free(struct hs_nbd *n)
{
    if (n->poll_fd >= 0)
        close(n->poll_fd);
    free(n->dirty_context);
    free(n);
}

static void nbd_poll_closed(uv_handle_t *h)
{
    nbd_free(h->data);
}

/* The caller's callbacks, outside libnbd: they may queue more. */
static struct nbd_cmd *next_completed(struct hs_nbd *n)
{
    struct nbd_cmd *c, *oldest = NULL;

    for (c = n->cmds; c; c = c->after)
        if (c->completed)
            oldest = c; /* newest first: the last one found completed first */
    return oldest;
}

static void nbd_dispatch(struct hs_nbd *n)
{
    struct nbd_cmd *c;
    size_t i;

    if (n->dispatching)
        return;
    n->dispatching = 1;
    while ((c = next_completed(n)) != NULL) {
        cmd_unlink(n, c);
        n->in_flight--;
        if (c->error) {
            snprintf(n->error, sizeof(n->error), "NBD command failed: %s", strerror(c->error));
        } else if (c->extent && !n->closing) {
            for (i = 0; i + 3 <= c->next; i += 3)
                c->extent(c->data, c->ext[i], c->ext[i + 1], (uint32_t)c->ext[i + 2]);
        }
        if (c->done)
            c->done(n, n->closing ? -ECANCELED : -c->error, c->data);
        free(c->ext);
        free(c);
    }
    n->dispatching = 0;
}

static void nbd_poll_cb(uv_poll_t *p, int status, int events)
{
    struct hs_nbd *n = p->data;

    if (status < 0) {
        /* an error event: libuv has stopped the poll. libnbd finds the error
         * by doing what it waits for (a connect waits to write), and the poll
         * is started again below if it still waits */
        events = n->events;
        n->events = 0;
    }
    if (events & UV_READABLE)
        nbd_aio_notify_read(n->h);
    if ((events & UV_WRITABLE) && n->h)
        nbd_aio_notify_write(n->h);
    nbd_update(n);
}

/* After anything that may have moved libnbd's state machine. */
static void nbd_update(struct hs_nbd *n)
{
    unsigned dir;
    int ev = 0;

    if (!n->h)
        return;
    if (nbd_aio_is_dead(n->h) || nbd_aio_is_closed(n->h)) {
        if (!n->error[0])
            nbd_set_error(n, "NBD connection lost");
        if (n->polling && n->events) {
            uv_poll_stop(&n->poll); /* libnbd closed its socket; our dup stays until closed */
            n->events = 0;
        }
    } else {
        dir = nbd_aio_get_direction(n->h);
        if (dir & LIBNBD_AIO_DIRECTION_READ)
            ev |= UV_READABLE;
        if (dir & LIBNBD_AIO_DIRECTION_WRITE)
            ev |= UV_WRITABLE;
        if (n->polling && ev != n->events) {
            if (ev)
                uv_poll_start(&n->poll, ev, nbd_poll_cb);
            else
                uv_poll_stop(&n->poll);
            n->events = ev;
        }
    }
    nbd_dispatch(n);
    if (!n->h)
        return; /* closed by a callback */
    if (n->connecting && !nbd_aio_is_connecting(n->h)) {
        int ok = nbd_aio_is_ready(n->h);

        n->connecting = 0;
        if (!ok && !n->error[0])
            nbd_set_error(n, "NBD handshake failed");
        n->connected(n, ok ? 0 : -EIO, n->data);
    }
}

/* @path: a unix socket to connect to; else @argv: a server libnbd starts
 * with socket activation, its child until the handle is closed. */
static int nbd_open(uv_loop_t *loop, const char *path, char *const *argv, const char *export_name,
                    const char *dirty, hs_nbd_done_cb connected, void *data, struct hs_nbd **out,
                    struct hs_err *err)
{
    struct hs_nbd *n = hs__calloc(1, sizeof(*n));

    n->poll_fd = -1;
    n->loop = loop;
    n->connected = connected;
    n->data = data;
    n->h = nbd_create();
    /* libnbd zeroes each read's buffer first, by default: a failed read here
     * fails its stream before any byte of the buffer is used, so that pass
     * over every byte is saved */
    if (n->h)
        nbd_set_pread_initialize(n->h, false);
    if (!n->h || nbd_set_export_name(n->h, export_name) < 0 ||
        nbd_add_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
        (dirty && nbd_add_meta_context(n->h, dirty) < 0) ||
        (path ? nbd_aio_connect_unix(n->h, path)
              : nbd_aio_connect_systemd_socket_activation(n->h, (char **)argv)) < 0) {
        int rc = hs_err_set(err, -EIO, HS_ERR_SYS, 0, "cannot connect to NBD export '%s' %s '%s': %s",
                            export_name, path ? "at" : "of", path ? path : argv[0],
                            nbd_get_error() ? nbd_get_error() : "?");

        nbd_close(n->h);
        nbd_free(n);
        return rc;
    }
    n->dirty_context = dirty ? hs__strdup(dirty) : NULL;
    /* libnbd closes its socket itself when the connection dies, and the next
     * socket made (another export's, an upload's) may get its number before
     * this handle is closed; closing a uv_poll_t then removes the kernel's
     * watch of that number, the other socket's. The poll watches a number of
     * its own, a dup, which lives exactly as long as the poll. */
    n->poll_fd = fcntl(nbd_aio_get_fd(n->h), F_DUPFD_CLOEXEC, 3);
    if (n->poll_fd < 0 || uv_poll_init(loop, &n->poll, n->poll_fd) < 0) {
        nbd_close(n->h);
        nbd_free(n);
        return hs_err_set(err, -EIO, HS_ERR_SYS, 0, "cannot watch the NBD socket");
    }
    n->poll.data = n;
    n->polling = 1;
    n->connecting = 1;
    nbd_update(n);
    *out = n;
    return 0;
}

int hs__nbd_open(uv_loop_t *loop, const char *path, const char *export_name,
                 hs_nbd_done_cb connected, void *data, struct hs_nbd **out, struct hs_err *err)
{
    return nbd_open(loop, path, NULL, export_name, NULL, connected, data, out, err);
}

int hs__nbd_open_dirty(uv_loop_t *loop, const char *path, char *const *argv,
                       const char *export_name, const char *context, hs_nbd_done_cb connected,
                       void *data, struct hs_nbd **out, struct hs_err *err)
{
    return nbd_open(loop, path, argv, export_name, context, connected, data, out, err);
}

int hs__nbd_has_dirty_context(const struct hs_nbd *n)
{
    return n->dirty_context && nbd_can_meta_context(n->h, n->dirty_context) == 1;
}

int hs__nbd_open_command(uv_loop_t *loop, char *const *argv, const char *export_name,
                         hs_nbd_done_cb connected, void *data, struct hs_nbd **out,
                         struct hs_err *err)
{
    return nbd_open(loop, NULL, argv, export_name, NULL, connected, data, out, err);
}

uint64_t hs__nbd_size(const struct hs_nbd *n)
{
    int64_t s = nbd_get_size(n->h);

    return s < 0 ? 0 : (uint64_t)s;
}

int hs__nbd_has_block_status(const struct hs_nbd *n)
{
    return nbd_can_meta_context(n->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
}

static struct nbd_cmd *cmd_new(struct hs_nbd *n, hs_nbd_done_cb done, void *data)
{
    struct nbd_cmd *c = hs__calloc(1, sizeof(*c));

    c->n = n;
    c->done = done;
    c->data = data;
    return c;
}

static int cmd_queued(struct hs_nbd *n, struct nbd_cmd *c, int64_t cookie, const char *what)
{
    if (cookie < 0) {
        nbd_set_error(n, what);
        free(c);
        return -EIO;
    }
    c->after = n->cmds;
    if (n->cmds)
        n->cmds->prev = c;
    n->cmds = c;
    n->in_flight++;
    nbd_update(n);
    return 0;
}

int hs__nbd_pread(struct hs_nbd *n, void *buf, size_t len, uint64_t off, hs_nbd_done_cb done,
                  void *data)
{
    struct nbd_cmd *c;

    if (n->closing)
        return -ECANCELED;
    c = cmd_new(n, done, data);
    return cmd_queued(n, c,
                      nbd_aio_pread(n->h, buf, len, off,
                                    (nbd_completion_callback){.callback = cmd_completed,
                                                              .user_data = c},
                                    0),
                      "NBD read");
}

int hs__nbd_block_status(struct hs_nbd *n, uint64_t off, uint64_t len, hs_nbd_extent_cb extent,
                         hs_nbd_done_cb done, void *data)
{
    struct nbd_cmd *c;

    if (n->closing)
        return -ECANCELED;
    c = cmd_new(n, done, data);
    c->extent = extent;
    return cmd_queued(n, c,
                      nbd_aio_block_status(
                          n->h, len, off,
                          (nbd_extent_callback){.callback = cmd_extents, .user_data = c},
                          (nbd_completion_callback){.callback = cmd_completed, .user_data = c}, 0),
                      "NBD block status");
}

int hs__nbd_in_flight(const struct hs_nbd *n)
{
    return n->in_flight;
}

const char *hs__nbd_error(const struct hs_nbd *n)
{
    return n->error[0] ? n->error : "no error";
}

void hs__nbd_close(struct hs_nbd *n)
{
    struct nbd_cmd *c;
    int polling;

    if (!n)
        return;
    n->closing = 1;
    polling = n->polling;
    if (polling) {
        /* our number goes first: the server (a socket-activated one ends
         * with its connection) sees the close when libnbd's goes too */
        uv_close((uv_handle_t *)&n->poll, nbd_poll_closed);
        close(n->poll_fd);
        n->poll_fd = -1;
        n->polling = 0;
    }
    /* after nbd_close no libnbd callback runs: every command not yet
     * dispatched, in flight or completed, ends canceled */
    nbd_close(n->h);
    n->h = NULL;
    while ((c = n->cmds) != NULL) {
        cmd_unlink(n, c);
        if (c->done)
            c->done(n, -ECANCELED, c->data);
        free(c->ext);
        free(c);
    }
    if (!polling)
        nbd_free(n); /* else in the poll's close callback */
}
