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

struct hs_virt {
    uv_loop_t *loop;
    char *uri;
    virConnectPtr conn;
    int cb_lifecycle, cb_blockjob, cb_jobdone;
    int has_backup;
    uv_timer_t retry; /* reconnect with backoff */
    unsigned backoff_ms;
    int closing;
    int calls; /* worker calls in flight */
    struct hs_virt_watch *watches;
    void (*close_cb)(void *);
    void *close_data;
};

static void virt_quiet_error(void *data, virErrorPtr e)
{
    /* errors are read with virGetLastError where they happen */
}

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

static void virt_notify_conn(struct hs_virt *v, int up)
{
    struct hs_virt_watch *w, *next;

    for (w = v->watches; w; w = next) {
        next = w->next; /* a watcher may unwatch itself */
        if (w->conn)
            w->conn(w, up);
    }
}

static void virt_close_cb(virConnectPtr conn, int reason, void *opaque);

static int virt_connect(struct hs_virt *v, struct hs_err *err)
{
    virConnectPtr conn;
    uint64_t t0 = hs__virt_quick_begin();

    conn = virConnectOpen(v->uri);
    hs__virt_quick_end(t0, "virConnectOpen");
    if (!conn)
        return hs_err_virt(err, -ECONNREFUSED, "cannot connect to libvirt at '%s'", v->uri);
    if (virConnectSetKeepAlive(conn, HS_KEEPALIVE_INTERVAL, HS_KEEPALIVE_COUNT) < 0)
        hs_log(HS_LOG_DEBUG, "keepalive not supported on '%s'", v->uri);
    virConnectRegisterCloseCallback(conn, virt_close_cb, v, NULL);
    v->cb_lifecycle =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_lifecycle_cb), v, NULL);
    v->cb_blockjob =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_blockjob_cb), v, NULL);
    v->cb_jobdone =
        virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                                         VIR_DOMAIN_EVENT_CALLBACK(virt_jobdone_cb), v, NULL);
    if (v->cb_lifecycle < 0 || v->cb_blockjob < 0 || v->cb_jobdone < 0) {
        hs_err_virt(err, -EIO, "cannot register for domain events on '%s'", v->uri);
        virConnectUnregisterCloseCallback(conn, virt_close_cb);
        virConnectClose(conn);
        return err->code;
    }
    v->conn = conn;
    return 0;
}

static void virt_drop(struct hs_virt *v)
{
    virConnectPtr conn = v->conn;

    if (!conn)
        return;
    v->conn = NULL;
    if (v->cb_lifecycle >= 0)
        virConnectDomainEventDeregisterAny(conn, v->cb_lifecycle);
    if (v->cb_blockjob >= 0)
        virConnectDomainEventDeregisterAny(conn, v->cb_blockjob);
    if (v->cb_jobdone >= 0)
        virConnectDomainEventDeregisterAny(conn, v->cb_jobdone);
    v->cb_lifecycle = v->cb_blockjob = v->cb_jobdone = -1;
    virConnectUnregisterCloseCallback(conn, virt_close_cb);
    virConnectClose(conn);
}

static void virt_retry_cb(uv_timer_t *t)
{
    struct hs_virt *v = t->data;
    struct hs_err err = {0};

    virt_drop(v); /* the dead connection, closed from a clean stack */
    if (v->closing)
        return;
    if (virt_connect(v, &err) < 0) {
        hs_log(HS_LOG_DEBUG, "reconnect failed, next try in %u ms: %s", v->backoff_ms, err.msg);
        uv_timer_start(&v->retry, virt_retry_cb, v->backoff_ms, 0);
        v->backoff_ms =
            v->backoff_ms * 2 > HS_BACKOFF_MAX_MS ? HS_BACKOFF_MAX_MS : v->backoff_ms * 2;
        return;
    }
    hs_log(HS_LOG_INFO, "reconnected to '%s'", v->uri);
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    virt_notify_conn(v, 1);
}

static void virt_close_cb(virConnectPtr conn, int reason, void *opaque)
{
    struct hs_virt *v = opaque;

    if (conn != v->conn || v->closing)
        return;
    hs_log(HS_LOG_WARN, "connection to '%s' closed (reason %d), reconnecting", v->uri, reason);
    /* virConnectClose may not run inside this callback: the retry timer does it */
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    uv_timer_start(&v->retry, virt_retry_cb, 0, 0);
    virt_notify_conn(v, 0);
}

/* <backup supported='yes'/> in the domain capabilities (libvirt >= 7.2 with a QEMU that can) */
static int virt_probe_backup(virConnectPtr conn)
{
    uint64_t t0 = hs__virt_quick_begin();
    char *caps = virConnectGetDomainCapabilities(conn, NULL, NULL, NULL, NULL, 0);
    int yes = caps && strstr(caps, "<backup supported='yes'/>") != NULL;

    hs__virt_quick_end(t0, "virConnectGetDomainCapabilities");
    free(caps);
    return yes;
}

int hs__virt_has_backup(const struct hs_virt *v)
{
    return v->has_backup;
}

int hs__virt_open(uv_loop_t *loop, const char *uri, struct hs_virt **out, struct hs_err *err)
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
    v->cb_lifecycle = v->cb_blockjob = v->cb_jobdone = -1;
    v->backoff_ms = HS_BACKOFF_MIN_MS;
    rc = virt_connect(v, err);
    if (rc < 0) {
        free(v->uri);
        free(v);
        hs__vev_unbind(NULL, NULL);
        return rc;
    }
    v->has_backup = virt_probe_backup(v->conn);
    uv_timer_init(loop, &v->retry);
    v->retry.data = v;
    *out = v;
    return 0;
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

static void virt_work_cb(uv_work_t *req)
{
    struct hs_virt_call *call = hs_container_of(req, struct hs_virt_call, work);

    call->status = call->fn(call, call->conn);
}

static void virt_after_work_cb(uv_work_t *req, int status)
{
    struct hs_virt_call *call = hs_container_of(req, struct hs_virt_call, work);
    struct hs_virt *v = call->virt;

    virConnectClose(call->conn); /* drops the reference taken in hs__virt_queue */
    call->conn = NULL;
    v->calls--;
    if (status < 0 && call->status == 0)
        call->status = status;
    call->done(call, call->status);
}

int hs__virt_queue(struct hs_virt *v, struct hs_virt_call *call, hs_virt_work_fn fn,
                   hs_virt_done_cb done)
{
    int rc;

    if (!v->conn)
        return -ENOTCONN;
    call->virt = v;
    call->fn = fn;
    call->done = done;
    call->status = 0;
    hs_err_clear(&call->err);
    call->conn = v->conn;
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

uint64_t hs__virt_quick_begin(void)
{
    return uv_hrtime();
}

void hs__virt_quick_end(uint64_t start, const char *what)
{
    uint64_t ms = (uv_hrtime() - start) / 1000000;

    if (ms > 100)
        hs_log(HS_LOG_WARN, "%s took %llu ms on the loop thread", what, (unsigned long long)ms);
}

static void virt_unbound_cb(void *data)
{
    struct hs_virt *v = data;
    void (*cb)(void *) = v->close_cb;
    void *cb_data = v->close_data;

    free(v->uri);
    free(v);
    if (cb)
        cb(cb_data);
}

static void virt_retry_closed_cb(uv_handle_t *h)
{
    struct hs_virt *v = h->data;

    hs__vev_unbind(virt_unbound_cb, v);
}

void hs__virt_close(struct hs_virt *v, void (*cb)(void *data), void *data)
{
    assert(v->calls == 0); /* their completions would use what this frees */
    v->closing = 1;
    v->close_cb = cb;
    v->close_data = data;
    virt_drop(v);
    uv_close((uv_handle_t *)&v->retry, virt_retry_closed_cb);
}
