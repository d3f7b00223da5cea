#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "virt_event.h"
#include "util.h"
#define HS_LOG_TAG "event"
#include "log.h"

/* One poll per watch, on a dup of libvirt's fd that the poll owns: libvirt
 * closes its fd whenever it likes (on a worker, as a connection dies), and
 * the next socket made may get that number before the loop has closed the
 * poll; closing a poll then removes the kernel's watch of that number, the
 * other socket's. A number of our own is ours until our poll is closed. */
struct vev_fd {
    uv_poll_t poll; /* data: this */
    int fd;         /* the dup, closed with the poll */
    int uv_events;  /* mask started on the uv side */
    struct vev_fd *next;
};

struct vev_watch {
    int id;
    int fd;     /* libvirt's, as its callbacks want it */
    int dupfd;  /* ours, until a vev_fd takes it; -1 then */
    int events; /* VIR_EVENT_HANDLE_* wanted */
    int deleted;
    virEventHandleCallback cb;
    void *opaque;
    virFreeCallback ff;
    struct vev_fd *pfd; /* NULL until the loop thread attached it */
    struct vev_watch *next;
};

struct vev_timer {
    int id;
    int timeout; /* ms; 0 every iteration; -1 off */
    int armed;   /* what the uv side runs: -1 nothing, else the timeout it was started with */
    int dirty;   /* timeout changed: (re)start on the loop thread */
    int deleted;
    int attached; /* uv handles initialised */
    int closing;  /* handles still to close */
    virEventTimeoutCallback cb;
    void *opaque;
    virFreeCallback ff;
    uv_timer_t timer;
    uv_idle_t idle;
    struct vev_timer *next;
};

static struct {
    int registered;
    int bound;
    uv_loop_t *loop;
    uv_thread_t loop_thread;
    uv_mutex_t lock;
    uv_async_t async;
    struct vev_watch *watches;
    struct vev_timer *timers;
    struct vev_fd *fds;
    int next_id;
    int npoll;
    void (*unbind_cb)(void *);
    void *unbind_data;
} ev;

static void vev_apply_locked(void);

static int on_loop_thread(void)
{
    uv_thread_t self = uv_thread_self();

    return uv_thread_equal(&self, &ev.loop_thread);
}

/* After a change to the model: reconcile now when on the loop thread, and in
 * every case wake the loop so that deleted entries are freed from a clean
 * stack on a later iteration. */
static void vev_changed_locked(void)
{
    if (on_loop_thread())
        vev_apply_locked();
    uv_async_send(&ev.async);
}

static int vir_to_uv(int events)
{
    int uvev = 0;

    if (events & VIR_EVENT_HANDLE_READABLE)
        uvev |= UV_READABLE;
    if (events & VIR_EVENT_HANDLE_WRITABLE)
        uvev |= UV_WRITABLE;
    return uvev;
}

static void vev_poll_cb(uv_poll_t *handle, int status, int events)
{
    struct vev_fd *pfd = handle->data;
    struct vev_watch *w;
    int vev = 0, fire, id, fd;
    virEventHandleCallback cb;
    void *opaque;

    if (status < 0)
        vev |= VIR_EVENT_HANDLE_ERROR;
    if (events & UV_READABLE)
        vev |= VIR_EVENT_HANDLE_READABLE;
    if (events & UV_WRITABLE)
        vev |= VIR_EVENT_HANDLE_WRITABLE;
    if (events & UV_DISCONNECT)
        vev |= VIR_EVENT_HANDLE_HANGUP;

    uv_mutex_lock(&ev.lock);
    /* Entries are freed only by the async callback, never during dispatch, so
     * the list stays walkable while the lock is dropped around a callback.
     * New watches are prepended and so not visited by this dispatch. */
    for (w = ev.watches; w; w = w->next) {
        if (w->deleted || w->pfd != pfd)
            continue;
        fire = vev & (w->events | VIR_EVENT_HANDLE_ERROR | VIR_EVENT_HANDLE_HANGUP);
        if (!fire)
            continue;
        id = w->id;
        fd = w->fd;
        cb = w->cb;
        opaque = w->opaque;
        uv_mutex_unlock(&ev.lock);
        cb(id, fd, fire, opaque);
        uv_mutex_lock(&ev.lock);
    }
    if (status < 0) {
        /* libuv stopped the poll: started again if it is still wanted */
        pfd->uv_events = 0;
        vev_changed_locked();
    }
    uv_mutex_unlock(&ev.lock);
}

static void vev_timer_fire(struct vev_timer *t)
{
    virEventTimeoutCallback cb;
    void *opaque;
    int id;

    uv_mutex_lock(&ev.lock);
    if (t->deleted || t->dirty || t->timeout < 0) {
        uv_mutex_unlock(&ev.lock);
        return;
    }
    cb = t->cb;
    opaque = t->opaque;
    id = t->id;
    uv_mutex_unlock(&ev.lock);
    cb(id, opaque);
}

static void vev_timer_cb(uv_timer_t *handle)
{
    vev_timer_fire(handle->data);
}

static void vev_idle_cb(uv_idle_t *handle)
{
    vev_timer_fire(handle->data);
}

static void vev_fd_close_cb(uv_handle_t *handle)
{
    struct vev_fd *pfd = handle->data;

    close(pfd->fd);
    free(pfd);
    ev.npoll--;
}

static void vev_timer_close_cb(uv_handle_t *handle)
{
    struct vev_timer *t = handle->data;

    if (--t->closing > 0)
        return;
    if (t->ff)
        t->ff(t->opaque);
    free(t);
}

/* A poll of @w's own, on its dup (taken). */
static struct vev_fd *vev_fd_new(struct vev_watch *w)
{
    struct vev_fd *pfd = hs__calloc(1, sizeof(*pfd));

    pfd->fd = w->dupfd;
    if (uv_poll_init(ev.loop, &pfd->poll, pfd->fd) < 0) {
        hs_log(HS_LOG_WARN, "cannot watch fd %d", w->fd);
        free(pfd);
        return NULL;
    }
    w->dupfd = -1;
    pfd->poll.data = pfd;
    ev.npoll++;
    pfd->next = ev.fds;
    ev.fds = pfd;
    return pfd;
}

/* Loop thread only: make the uv handles match the model. */
static void vev_apply_locked(void)
{
    struct vev_watch *w;
    struct vev_timer *t;
    struct vev_fd *pfd, **pp;
    int want;

    for (w = ev.watches; w; w = w->next) {
        if (w->deleted)
            w->pfd = NULL;
        else if (!w->pfd && w->dupfd >= 0)
            w->pfd = vev_fd_new(w);
    }
    pp = &ev.fds;
    while ((pfd = *pp) != NULL) {
        int used = 0;

        want = 0;
        for (w = ev.watches; w; w = w->next) {
            if (w->pfd == pfd) {
                used = 1;
                want |= vir_to_uv(w->events);
            }
        }
        if (!used) {
            /* its watch is gone: the poll and its dup go */
            *pp = pfd->next;
            uv_poll_stop(&pfd->poll);
            uv_close((uv_handle_t *)&pfd->poll, vev_fd_close_cb);
            continue;
        }
        if (want != pfd->uv_events) {
            if (want)
                uv_poll_start(&pfd->poll, want | UV_DISCONNECT, vev_poll_cb);
            else
                uv_poll_stop(&pfd->poll);
            pfd->uv_events = want;
        }
        pp = &pfd->next;
    }

    for (t = ev.timers; t; t = t->next) {
        if (t->deleted)
            continue;
        if (!t->attached) {
            uv_timer_init(ev.loop, &t->timer);
            uv_idle_init(ev.loop, &t->idle);
            t->timer.data = t;
            t->idle.data = t;
            t->attached = 1;
            t->armed = -1;
        }
        if (!t->dirty)
            continue;
        t->dirty = 0;
        uv_timer_stop(&t->timer);
        uv_idle_stop(&t->idle);
        if (t->timeout > 0)
            uv_timer_start(&t->timer, vev_timer_cb, t->timeout, t->timeout);
        else if (t->timeout == 0)
            uv_idle_start(&t->idle, vev_idle_cb);
        t->armed = t->timeout;
    }
}

static void vev_timer_release(struct vev_timer *t)
{
    if (!t->attached) {
        if (t->ff)
            t->ff(t->opaque);
        free(t);
        return;
    }
    t->closing = 2;
    uv_close((uv_handle_t *)&t->timer, vev_timer_close_cb);
    uv_close((uv_handle_t *)&t->idle, vev_timer_close_cb);
}

static void vev_async_cb(uv_async_t *handle)
{
    struct vev_watch *w, **wp, *dead_w = NULL;
    struct vev_timer *t, **tp, *dead_t = NULL;

    uv_mutex_lock(&ev.lock);
    vev_apply_locked();
    for (wp = &ev.watches; (w = *wp) != NULL;) {
        if (w->deleted) {
            *wp = w->next;
            w->next = dead_w;
            dead_w = w;
        } else {
            wp = &w->next;
        }
    }
    for (tp = &ev.timers; (t = *tp) != NULL;) {
        if (t->deleted) {
            *tp = t->next;
            t->next = dead_t;
            dead_t = t;
        } else {
            tp = &t->next;
        }
    }
    uv_mutex_unlock(&ev.lock);

    /* Free callbacks may call back into us: run them without the lock. */
    while ((w = dead_w) != NULL) {
        dead_w = w->next;
        if (w->dupfd >= 0) /* removed before the loop made its poll */
            close(w->dupfd);
        if (w->ff)
            w->ff(w->opaque);
        free(w);
    }
    while ((t = dead_t) != NULL) {
        dead_t = t->next;
        vev_timer_release(t);
    }
}

int hs__vev_add_handle(int fd, int events, virEventHandleCallback cb, void *opaque,
                       virFreeCallback ff)
{
    struct vev_watch *w;
    int id;

    if (fd < 0 || !cb)
        return -1;
    w = hs__calloc(1, sizeof(*w));
    w->fd = fd;
    /* here, on libvirt's thread, while its fd is surely open */
    w->dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (w->dupfd < 0) {
        hs_log(HS_LOG_WARN, "cannot watch fd %d: %s", fd, strerror(errno));
        free(w);
        return -1;
    }
    w->events = events;
    w->cb = cb;
    w->opaque = opaque;
    w->ff = ff;
    uv_mutex_lock(&ev.lock);
    if (!ev.bound) {
        uv_mutex_unlock(&ev.lock);
        close(w->dupfd);
        free(w);
        return -1;
    }
    id = w->id = ++ev.next_id;
    w->next = ev.watches;
    ev.watches = w;
    vev_changed_locked();
    uv_mutex_unlock(&ev.lock);
    hs_log(HS_LOG_DEBUG, "add handle %d fd %d events %d", id, fd, events);
    return id;
}

static struct vev_watch *vev_watch_find(int id)
{
    struct vev_watch *w;

    for (w = ev.watches; w; w = w->next)
        if (w->id == id && !w->deleted)
            return w;
    return NULL;
}

void hs__vev_update_handle(int watch, int events)
{
    struct vev_watch *w;

    uv_mutex_lock(&ev.lock);
    w = vev_watch_find(watch);
    if (w && w->events != events) {
        w->events = events;
        vev_changed_locked();
    }
    uv_mutex_unlock(&ev.lock);
}

int hs__vev_remove_handle(int watch)
{
    struct vev_watch *w;

    uv_mutex_lock(&ev.lock);
    w = vev_watch_find(watch);
    if (!w) {
        uv_mutex_unlock(&ev.lock);
        return -1;
    }
    w->deleted = 1;
    vev_changed_locked();
    uv_mutex_unlock(&ev.lock);
    hs_log(HS_LOG_DEBUG, "remove handle %d", watch);
    return 0;
}

int hs__vev_add_timeout(int timeout, virEventTimeoutCallback cb, void *opaque, virFreeCallback ff)
{
    struct vev_timer *t;
    int id;

    if (!cb)
        return -1;
    t = hs__calloc(1, sizeof(*t));
    t->timeout = timeout;
    t->cb = cb;
    t->opaque = opaque;
    t->ff = ff;
    t->dirty = 1;
    t->armed = -1;
    uv_mutex_lock(&ev.lock);
    if (!ev.bound) {
        uv_mutex_unlock(&ev.lock);
        free(t);
        return -1;
    }
    id = t->id = ++ev.next_id;
    t->next = ev.timers;
    ev.timers = t;
    vev_changed_locked();
    uv_mutex_unlock(&ev.lock);
    return id;
}

static struct vev_timer *vev_timer_find(int id)
{
    struct vev_timer *t;

    for (t = ev.timers; t; t = t->next)
        if (t->id == id && !t->deleted)
            return t;
    return NULL;
}

void hs__vev_update_timeout(int timer, int timeout)
{
    struct vev_timer *t;

    uv_mutex_lock(&ev.lock);
    t = vev_timer_find(timer);
    if (t) {
        /* libvirt's own loop restarts the period on every update */
        t->timeout = timeout;
        t->dirty = 1;
        vev_changed_locked();
    }
    uv_mutex_unlock(&ev.lock);
}

int hs__vev_remove_timeout(int timer)
{
    struct vev_timer *t;

    uv_mutex_lock(&ev.lock);
    t = vev_timer_find(timer);
    if (!t) {
        uv_mutex_unlock(&ev.lock);
        return -1;
    }
    t->deleted = 1;
    vev_changed_locked();
    uv_mutex_unlock(&ev.lock);
    return 0;
}

int hs__vev_poll_count(void)
{
    return ev.npoll;
}

int hs__vev_bind(uv_loop_t *loop)
{
    int rc;

    if (!ev.registered) {
        if (uv_mutex_init(&ev.lock) < 0)
            return -ENOMEM;
    }
    uv_mutex_lock(&ev.lock);
    if (ev.bound) {
        uv_mutex_unlock(&ev.lock);
        return -EBUSY;
    }
    rc = uv_async_init(loop, &ev.async, vev_async_cb);
    if (rc < 0) {
        uv_mutex_unlock(&ev.lock);
        return rc;
    }
    ev.loop = loop;
    ev.loop_thread = uv_thread_self();
    ev.bound = 1;
    uv_mutex_unlock(&ev.lock);
    if (!ev.registered) {
        virEventRegisterImpl(hs__vev_add_handle, hs__vev_update_handle, hs__vev_remove_handle,
                             hs__vev_add_timeout, hs__vev_update_timeout, hs__vev_remove_timeout);
        ev.registered = 1;
    }
    return 0;
}

static void vev_async_close_cb(uv_handle_t *handle)
{
    void (*cb)(void *) = ev.unbind_cb;

    ev.unbind_cb = NULL;
    if (cb)
        cb(ev.unbind_data);
}

void hs__vev_unbind(void (*cb)(void *data), void *data)
{
    struct vev_watch *w;
    struct vev_timer *t;

    uv_mutex_lock(&ev.lock);
    for (w = ev.watches; w; w = w->next)
        w->deleted = 1;
    for (t = ev.timers; t; t = t->next)
        t->deleted = 1;
    uv_mutex_unlock(&ev.lock);
    /* apply, free and run ff now: this is the last chance on this loop */
    vev_async_cb(&ev.async);
    uv_mutex_lock(&ev.lock);
    ev.bound = 0;
    uv_mutex_unlock(&ev.lock);
    ev.unbind_cb = cb;
    ev.unbind_data = data;
    uv_close((uv_handle_t *)&ev.async, vev_async_close_cb);
}
