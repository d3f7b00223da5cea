#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <libvirt/virterror.h>

#include "virt.h"
#include "virt_event.h"
#include "util.h"
#define HS_LOG_TAG "virt"
#include "log.h"

#define HS_KEEPALIVE_INTERVAL 5
#define HS_KEEPALIVE_COUNT 3
#define HS_BACKOFF_MIN_MS 250
#define HS_BACKOFF_MAX_MS 10000

/* What the close callback knows: the connection's owner and generation.
 * Freed by libvirt when the callback is unregistered. */
/* The close callback's opaque: whether libvirt ever frees it depends on the
 * driver (the test driver keeps no close callback), so the hs_virt owns
 * them all, listed under its lock, and frees them when it is freed. */
struct virt_ref {
    struct hs_virt *v;
    uint64_t epoch;
    struct virt_ref *next;
};

/* One connection attempt, on the worker pool. */
struct virt_attempt {
    uv_work_t work;
    struct hs_virt *v;
    uint64_t epoch;
    virConnectPtr conn;
    int ids[3]; /* lifecycle, block job, job completed */
    int has_backup;
    struct hs_err err;
};

/* A connection to let go of, on the worker pool (deregistering and closing
 * are RPCs: a stopped libvirtd would hold the loop). */
struct virt_drop {
    uv_work_t work;
    struct hs_virt *v;
    virConnectPtr conn;
    int ids[3];
};

struct hs_virt {
    uv_loop_t *loop;
    char *uri;
    hs_virt_state_cb state_cb;
    void *state_data;
    /* loop thread */
    virConnectPtr conn; /* the live connection, or NULL */
    uint64_t epoch;     /* conn's generation */
    uint64_t next_epoch;
    int ids[3];
    int has_backup;
    struct virt_attempt *attempt; /* a connect in flight */
    int drops;                    /* drops in flight */
    uv_timer_t retry;             /* reconnect with backoff */
    unsigned backoff_ms;
    unsigned connects;
    int closing;
    int handles; /* still to close */
    int calls;   /* worker calls in flight */
    struct hs_virt_watch *watches;
    void (*close_cb)(void *);
    void *close_data;
    /* shared with libvirt's threads */
    uv_mutex_t lock;
    uint64_t dead; /* the newest epoch whose connection closed */
    struct virt_ref *refs; /* every close callback opaque made */
    uv_async_t wake;
};

static void virt_quiet_error(void *data, virErrorPtr e)
{
    /* errors are read with virGetLastError where they happen */
}

static uint64_t virt_dead(struct hs_virt *v)
{
    uint64_t dead;

    uv_mutex_lock(&v->lock);
    dead = v->dead;
    uv_mutex_unlock(&v->lock);
    return dead;
}

/* ---- domain events (loop thread: they come through our event implementation) ---- */

static struct hs_virt_watch *virt_find(struct hs_virt *v, virDomainPtr dom)
{
    unsigned char uuid[VIR_UUID_BUFLEN];
    struct hs_virt_watch *w;

    if (virDomainGetUUID(dom, uuid) < 0)
        return NULL;
    for (w = v->watches; w; w = w->next)
        if (!memcmp(w->uuid, uuid, sizeof(uuid)))
            return w;
    return NULL;
}

static int virt_lifecycle_cb(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                             void *opaque)
{
    struct hs_virt *v = opaque;
    struct hs_virt_watch *w = virt_find(v, dom);

    hs_log(HS_LOG_DEBUG, "domain '%s' lifecycle event %d detail %d", virDomainGetName(dom), event,
           detail);
    if (w && w->lifecycle)
        w->lifecycle(w, event, detail);
    return 0;
}

static void virt_blockjob_cb(virConnectPtr conn, virDomainPtr dom, const char *disk, int type,
                             int status, void *opaque)
{
    struct hs_virt *v = opaque;
    struct hs_virt_watch *w = virt_find(v, dom);

    hs_log(HS_LOG_DEBUG, "domain '%s' block job on '%s' type %d status %d", virDomainGetName(dom),
           disk, type, status);
    if (w && w->block_job)
        w->block_job(w, disk, type, status);
}

static void virt_jobdone_cb(virConnectPtr conn, virDomainPtr dom, virTypedParameterPtr params,
                            int nparams, void *opaque)
{
    struct hs_virt *v = opaque;
    struct hs_virt_watch *w = virt_find(v, dom);
    const char *errmsg = NULL;
    int op = 0;

    virTypedParamsGetInt(params, nparams, VIR_DOMAIN_JOB_OPERATION, &op);
    virTypedParamsGetString(params, nparams, VIR_DOMAIN_JOB_ERRMSG, &errmsg);
    hs_log(HS_LOG_DEBUG, "domain '%s' job completed: operation %d%s%s", virDomainGetName(dom), op,
           errmsg ? ": " : "", errmsg ? errmsg : "");
    if (w && w->job_completed)
        w->job_completed(w, op, errmsg);
}

/* @up, or down with @err; the watchers hear only changes (@changed). */
static void virt_notify(struct hs_virt *v, int up, int changed, const struct hs_err *err)
{
    struct hs_virt_watch *w, *next;

    for (w = changed ? v->watches : NULL; w; w = next) {
        next = w->next; /* a watcher may unwatch itself */
        if (w->conn)
            w->conn(w, up);
    }
    if (v->state_cb)
        v->state_cb(v->state_data, up, err);
}

/* ---- the close callback: any thread ---- */

static void virt_close_cb(virConnectPtr conn, int reason, void *opaque)
{
    struct virt_ref *ref = opaque;
    struct hs_virt *v = ref->v;

    uv_mutex_lock(&v->lock);
    if (ref->epoch > v->dead)
        v->dead = ref->epoch;
    uv_mutex_unlock(&v->lock);
    /* the loop drops the connection and tells the watchers, from a clean stack */
    uv_async_send(&v->wake);
}

/* ---- connecting and dropping, on the worker pool ---- */

static void virt_drop_work(uv_work_t *w)
{
    struct virt_drop *d = hs_container_of(w, struct virt_drop, work);
    int i;

    for (i = 0; i < 3; i++)
        if (d->ids[i] >= 0)
            virConnectDomainEventDeregisterAny(d->conn, d->ids[i]);
    /* after this returns no close callback of ours runs */
    virConnectUnregisterCloseCallback(d->conn, virt_close_cb);
    virConnectClose(d->conn);
}

static void virt_maybe_closed(struct hs_virt *v);

static void virt_drop_done(uv_work_t *w, int status)
{
    struct virt_drop *d = hs_container_of(w, struct virt_drop, work);
    struct hs_virt *v = d->v;

    free(d);
    v->drops--;
    virt_maybe_closed(v);
}

static void virt_queue_drop(struct hs_virt *v, virConnectPtr conn, const int ids[3])
{
    struct virt_drop *d = hs__calloc(1, sizeof(*d));

    d->v = v;
    d->conn = conn;
    memcpy(d->ids, ids, sizeof(d->ids));
    if (uv_queue_work(v->loop, &d->work, virt_drop_work, virt_drop_done) < 0) {
        virt_drop_work(&d->work); /* only when the loop is closing: nothing else runs */
        free(d);
        return;
    }
    v->drops++;
}

/* <backup supported='yes'/> in the domain capabilities (libvirt >= 7.2 with a QEMU that can) */
static int virt_probe_backup(virConnectPtr conn)
{
    char *caps = virConnectGetDomainCapabilities(conn, NULL, NULL, NULL, NULL, 0);
    int yes = caps && strstr(caps, "<backup supported='yes'/>") != NULL;

    free(caps);
    return yes;
}

static void virt_connect_work(uv_work_t *w)
{
    struct virt_attempt *a = hs_container_of(w, struct virt_attempt, work);
    struct hs_virt *v = a->v;
    struct virt_ref *ref;
    virConnectPtr conn;
    int i;

    a->ids[0] = a->ids[1] = a->ids[2] = -1;
    conn = virConnectOpen(v->uri);
    if (!conn) {
        hs_err_virt(&a->err, -ECONNREFUSED, "cannot connect to libvirt at '%s'", v->uri);
        return;
    }
    if (virConnectSetKeepAlive(conn, HS_KEEPALIVE_INTERVAL, HS_KEEPALIVE_COUNT) < 0)
        hs_log(HS_LOG_DEBUG, "keepalive not supported on '%s'", v->uri);
    ref = hs__calloc(1, sizeof(*ref));
    ref->v = v;
    ref->epoch = a->epoch;
    uv_mutex_lock(&v->lock);
    ref->next = v->refs;
    v->refs = ref;
    uv_mutex_unlock(&v->lock);
    virConnectRegisterCloseCallback(conn, virt_close_cb, ref, NULL);
    a->ids[0] =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_lifecycle_cb), v, NULL);
    a->ids[1] =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_blockjob_cb), v, NULL);
    a->ids[2] =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_jobdone_cb), v, NULL);
    for (i = 0; i < 3; i++) {
        if (a->ids[i] < 0) {
            hs_err_virt(&a->err, -EIO, "cannot register for domain events on '%s'", v->uri);
            break;
        }
    }
    if (!a->err.code)
        a->has_backup = virt_probe_backup(conn);
    a->conn = conn;
}

static void virt_retry_cb(uv_timer_t *t);

static void virt_schedule_retry(struct hs_virt *v)
{
    uv_timer_start(&v->retry, virt_retry_cb, v->backoff_ms, 0);
    v->backoff_ms = v->backoff_ms * 2 > HS_BACKOFF_MAX_MS ? HS_BACKOFF_MAX_MS : v->backoff_ms * 2;
}

static void virt_lost(struct hs_virt *v);

static void virt_connect_done(uv_work_t *w, int status)
{
    struct virt_attempt *a = hs_container_of(w, struct virt_attempt, work);
    struct hs_virt *v = a->v;

    v->attempt = NULL;
    if (a->conn && (a->err.code || v->closing)) {
        virt_queue_drop(v, a->conn, a->ids);
        a->conn = NULL;
    }
    if (v->closing) {
        free(a);
        virt_maybe_closed(v);
        return;
    }
    if (!a->conn) {
        hs_log(HS_LOG_DEBUG, "connecting failed, next try in %u ms: %s", v->backoff_ms, a->err.msg);
        virt_schedule_retry(v);
        virt_notify(v, 0, 0, &a->err);
        free(a);
        return;
    }
    v->conn = a->conn;
    v->epoch = a->epoch;
    memcpy(v->ids, a->ids, sizeof(v->ids));
    v->has_backup = a->has_backup;
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    free(a);
    if (v->connects++)
        hs_log(HS_LOG_INFO, "reconnected to '%s'", v->uri);
    if (virt_dead(v) >= v->epoch) {
        virt_lost(v); /* it died while we set it up */
        return;
    }
    virt_notify(v, 1, 1, NULL);
}

static void virt_connect(struct hs_virt *v)
{
    struct virt_attempt *a = hs__calloc(1, sizeof(*a));
    int rc;

    a->v = v;
    a->epoch = ++v->next_epoch;
    rc = uv_queue_work(v->loop, &a->work, virt_connect_work, virt_connect_done);
    if (rc < 0) {
        hs_log(HS_LOG_WARN, "cannot queue a libvirt connect: %s", uv_strerror(rc));
        free(a);
        virt_schedule_retry(v);
        return;
    }
    v->attempt = a;
}

static void virt_retry_cb(uv_timer_t *t)
{
    struct hs_virt *v = t->data;

    if (!v->closing && !v->conn && !v->attempt)
        virt_connect(v);
}

/* The connection died: let it go, tell everyone, reconnect. */
static void virt_lost(struct hs_virt *v)
{
    struct hs_err err = {0};

    hs_log(HS_LOG_WARN, "connection to '%s' lost, reconnecting", v->uri);
    hs_err_set(&err, -ENOTCONN, HS_ERR_LIBVIRT, 0, "the connection to libvirt at '%s' was lost",
               v->uri);
    virt_queue_drop(v, v->conn, v->ids);
    v->conn = NULL;
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    uv_timer_start(&v->retry, virt_retry_cb, 0, 0);
    virt_notify(v, 0, 1, &err);
}

static void virt_wake_cb(uv_async_t *a)
{
    struct hs_virt *v = a->data;

    if (v->conn && !v->closing && virt_dead(v) >= v->epoch)
        virt_lost(v);
}

/* ---- open and close ---- */

int hs__virt_open(uv_loop_t *loop, const char *uri, hs_virt_state_cb cb, void *data,
                  struct hs_virt **out, struct hs_err *err)
{
    struct hs_virt *v;
    int rc;

    rc = hs__vev_bind(loop);
    if (rc < 0)
        return hs_err_set(err, rc, HS_ERR_SYS, -rc, "cannot bind libvirt events to this loop: %s",
                          uv_strerror(rc));
    virSetErrorFunc(NULL, virt_quiet_error);
    v = hs__calloc(1, sizeof(*v));
    v->loop = loop;
    v->uri = hs__strdup(uri);
    v->state_cb = cb;
    v->state_data = data;
    v->ids[0] = v->ids[1] = v->ids[2] = -1;
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    uv_mutex_init(&v->lock);
    uv_timer_init(loop, &v->retry);
    uv_async_init(loop, &v->wake, virt_wake_cb);
    v->retry.data = v->wake.data = v;
    virt_connect(v);
    *out = v;
    return 0;
}

static void virt_unbound_cb(void *data)
{
    struct hs_virt *v = data;
    void (*cb)(void *) = v->close_cb;
    void *cb_data = v->close_data;

    while (v->refs) {
        struct virt_ref *ref = v->refs;

        v->refs = ref->next;
        free(ref);
    }
    uv_mutex_destroy(&v->lock);
    free(v->uri);
    free(v);
    if (cb)
        cb(cb_data);
}

static void virt_handle_closed(uv_handle_t *h)
{
    struct hs_virt *v = h->data;

    if (--v->handles == 0)
        hs__vev_unbind(virt_unbound_cb, v);
}

static void virt_maybe_closed(struct hs_virt *v)
{
    /* calls in flight are waited for: their completions use what this frees */
    if (!v->closing || v->attempt || v->drops > 0 || v->calls > 0 || v->handles)
        return;
    v->handles = 2;
    uv_close((uv_handle_t *)&v->retry, virt_handle_closed);
    uv_close((uv_handle_t *)&v->wake, virt_handle_closed);
}

void hs__virt_close(struct hs_virt *v, void (*cb)(void *data), void *data)
{
    v->closing = 1;
    v->close_cb = cb;
    v->close_data = data;
    uv_timer_stop(&v->retry);
    if (v->conn) {
        virt_queue_drop(v, v->conn, v->ids);
        v->conn = NULL;
    }
    virt_maybe_closed(v);
}

int hs__virt_calls(const struct hs_virt *v)
{
    return v->calls;
}

int hs__virt_has_backup(const struct hs_virt *v)
{
    return v->has_backup;
}

int hs__virt_up(const struct hs_virt *v)
{
    return v->conn && !v->closing && virt_dead((struct hs_virt *)v) < v->epoch;
}

virConnectPtr hs__virt_conn(struct hs_virt *v)
{
    return v->conn;
}

const char *hs__virt_uri(const struct hs_virt *v)
{
    return v->uri;
}

void hs__virt_watch(struct hs_virt *v, struct hs_virt_watch *w)
{
    w->next = v->watches;
    v->watches = w;
}

void hs__virt_unwatch(struct hs_virt *v, struct hs_virt_watch *w)
{
    struct hs_virt_watch **pp;

    for (pp = &v->watches; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            w->next = NULL;
            return;
        }
    }
}

/* ---- calls ---- */

static void virt_work_cb(uv_work_t *req)
{
    struct hs_virt_call *call = hs_container_of(req, struct hs_virt_call, work);
    virErrorPtr e;

    if (call->uuid[0]) {
        call->dom = virDomainLookupByUUIDString(call->conn, call->uuid);
        if (!call->dom) {
            e = virGetLastError();
            if (e && e->code == VIR_ERR_NO_DOMAIN)
                call->status = hs_err_set(&call->err, -ESRCH, HS_ERR_LIBVIRT, e->code,
                                          "domain %s no longer exists", call->uuid);
            else
                call->status = hs_err_virt(&call->err, -EIO, "cannot look up domain %s",
                                           call->uuid);
        }
    }
    if (call->status == 0)
        call->status = call->fn(call, call->conn);
    if (call->status < 0 && call->status != -ESRCH && virConnectIsAlive(call->conn) != 1)
        call->lost = 1;
    if (call->dom) {
        virDomainFree(call->dom);
        call->dom = NULL;
    }
}

static void virt_after_work_cb(uv_work_t *req, int status)
{
    struct hs_virt_call *call = hs_container_of(req, struct hs_virt_call, work);
    struct hs_virt *v = call->virt;
    char msg[sizeof(call->err.msg)];

    virConnectClose(call->conn); /* drops the reference taken in hs__virt_queue */
    call->conn = NULL;
    v->calls--;
    if (status < 0 && call->status == 0)
        call->status = status;
    if (call->status < 0 && (call->lost || call->epoch <= virt_dead(v))) {
        /* what the call did on libvirt's side is unknown: not an ordinary failure */
        snprintf(msg, sizeof(msg), "%s", call->err.msg[0] ? call->err.msg : "a libvirt call");
        hs_err_clear(&call->err);
        hs_err_set(&call->err, -ENOTCONN, HS_ERR_LIBVIRT, 0,
                   "the libvirt connection was lost (%s)", msg);
        call->status = -ENOTCONN;
    }
    call->done(call, call->status);
    virt_maybe_closed(v); /* the last call a close waited for */
}

int hs__virt_queue(struct hs_virt *v, struct hs_virt_call *call, const char *uuid,
                   hs_virt_work_fn fn, hs_virt_done_cb done)
{
    int rc;

    if (!hs__virt_up(v))
        return -ENOTCONN;
    call->virt = v;
    call->fn = fn;
    call->done = done;
    call->status = 0;
    call->lost = 0;
    call->dom = NULL;
    snprintf(call->uuid, sizeof(call->uuid), "%s", uuid ? uuid : "");
    hs_err_clear(&call->err);
    call->conn = v->conn;
    call->epoch = v->epoch;
    virConnectRef(call->conn);
    rc = uv_queue_work(v->loop, &call->work, virt_work_cb, virt_after_work_cb);
    if (rc < 0) {
        virConnectClose(call->conn);
        call->conn = NULL;
        return rc;
    }
    v->calls++;
    return 0;
}

int hs__virt_job_active(virDomainPtr dom)
{
    virTypedParameterPtr params = NULL;
    int type, nparams = 0;

    if (virDomainGetJobStats(dom, &type, &params, &nparams, 0) < 0) {
        /* libvirt 9.0 fails job stats for parts of a backup job's life */
        char *xml = virDomainBackupGetXMLDesc(dom, 0);

        free(xml);
        return xml ? 1 : -1;
    }
    virTypedParamsFree(params, nparams);
    return type != VIR_DOMAIN_JOB_NONE;
}
