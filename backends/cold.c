/*
 * cold: Nova's default. Managed save (the guest stops, its memory goes to a
 * file and its disks are at rest), convert the disks, start the domain again
 * in the state it had. The journal records the save before it happens, so a
 * run killed in the middle is undone by the next run (engine/recover.c).
 * Host PCI devices and SR-IOV ports cannot be saved: like Nova, they are
 * detached before the save and attached again after the restore.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "util.h"
#define HS_LOG_TAG "cold"
#include "log.h"

struct cold {
    struct hs_virt_call call;
    struct hs_capture *cap;
    hs_capture_cb cb;
    char *journal_text;
    int paused;      /* restore paused */
    int saved;       /* the managed save succeeded */
    int uncertain;   /* the save's outcome is unknown (connection lost during it) */
    size_t detached; /* host devices detached so far */
    uint64_t t_down; /* hrtime the save began */
};

/* Worker: attach again the first @n host devices. Errors are recorded, not fatal. */
static void cold_reattach(struct cold *c, struct hs_err *err)
{
    struct hs_capture *cap = c->cap;

    while (c->detached > 0) {
        const char *xml = cap->info->hostdevs[c->detached - 1];

        if (virDomainAttachDeviceFlags(cap->dom, xml, VIR_DOMAIN_AFFECT_LIVE) < 0)
            hs_err_virt(err, -EIO, "cannot attach host device %zu of domain '%s' again",
                        c->detached, cap->info->name);
        c->detached--;
    }
}

/* Worker: journal, detach host devices, managed save. */
static int cold_save(struct hs_virt_call *call, virConnectPtr conn)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;
    unsigned flags = c->paused ? VIR_DOMAIN_SAVE_PAUSED : VIR_DOMAIN_SAVE_RUNNING;
    int rc;

    rc = hs__journal_write(cap->journal, c->journal_text);
    if (rc < 0)
        return hs_err_set(&call->err, rc, HS_ERR_SYS, -rc, "cannot write the journal of job %s: %s",
                          cap->job_id, strerror(-rc));
    for (; c->detached < cap->info->nhostdevs; c->detached++) {
        if (virDomainDetachDeviceFlags(cap->dom, cap->info->hostdevs[c->detached],
                                       VIR_DOMAIN_AFFECT_LIVE) < 0) {
            rc = hs_err_virt(&call->err, -EIO,
                             "cannot detach host device %zu of domain '%s' for the save",
                             c->detached + 1, cap->info->name);
            cold_reattach(c, &call->err);
            return rc;
        }
    }
    c->t_down = uv_hrtime();
    if (virDomainManagedSave(cap->dom, flags) < 0) {
        rc = hs_err_virt(&call->err, -EIO, "managed save of domain '%s' failed", cap->info->name);
        if (virConnectIsAlive(conn) != 1)
            c->uncertain = 1; /* libvirtd may still finish it: release looks */
        else
            cold_reattach(c, &call->err);
        return rc;
    }
    return 0; /* c->saved is set on the loop thread, which reads it */
}

static void cold_saved(struct hs_virt_call *call, int status)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;

    free(c->journal_text);
    c->journal_text = NULL;
    if (status < 0) {
        hs_err_adopt(cap->err, &call->err, status);
    } else {
        c->saved = 1;
        hs_log(HS_LOG_DEBUG, "job %s: domain '%s' saved", cap->job_id, cap->info->name);
        hs__capture_in_place(cap);
    }
    c->cb(cap, status);
}

static int cold_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct cold *c = hs__calloc(1, sizeof(*c));
    cJSON *devs;
    size_t i;
    int rc;

    c->cap = cap;
    c->cb = cb;
    c->call.data = c;
    c->paused = cap->dom_state == VIR_DOMAIN_PAUSED;
    cap->priv = c;

    cJSON_AddStringToObject(cap->journal->doc, "backend", "cold");
    cJSON_AddStringToObject(cap->journal->doc, "step", "saving");
    cJSON_AddStringToObject(cap->journal->doc, "resume", c->paused ? "paused" : "running");
    devs = cJSON_AddArrayToObject(cap->journal->doc, "hostdevs");
    for (i = 0; i < cap->info->nhostdevs; i++)
        cJSON_AddItemToArray(devs, cJSON_CreateString(cap->info->hostdevs[i]));
    c->journal_text = hs__journal_render(cap->journal);

    rc = hs__virt_queue(cap->virt, &c->call, cold_save, cold_saved);
    if (rc < 0) {
        free(c->journal_text);
        c->journal_text = NULL;
        return hs_err_set(cap->err, rc, HS_ERR_LIBVIRT, 0,
                          "libvirt connection lost before domain '%s' was saved", cap->info->name);
    }
    return 0;
}

/* Worker: start the domain from its managed-save image, as it was. */
static int cold_restore(struct hs_virt_call *call, virConnectPtr conn)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;
    int state, reason, has_save;

    if (virDomainGetState(cap->dom, &state, &reason, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the state of domain '%s'",
                           cap->info->name);
    has_save = virDomainHasManagedSaveImage(cap->dom, 0);
    if (state == VIR_DOMAIN_SHUTOFF && has_save == 1) {
        if (virDomainCreateWithFlags(cap->dom, c->paused ? VIR_DOMAIN_START_PAUSED : 0) < 0)
            return hs_err_virt(&call->err, -EIO,
                               "cannot restore domain '%s' from its managed save; the next "
                               "hotsnap run tries again",
                               cap->info->name);
        c->saved = 0;
        cap->stall_ms = (double)(uv_hrtime() - c->t_down) / 1e6;
    } else if (state == VIR_DOMAIN_SHUTOFF && c->saved && !cap->domain_gone) {
        return hs_err_set(&call->err, -EIO, HS_ERR_LIBVIRT, 0,
                          "domain '%s' is shut off and its managed-save image is gone; hotsnap "
                          "cannot restore it",
                          cap->info->name);
    }
    /* else: running already (someone started it) or the save never happened */
    c->saved = 0;
    c->uncertain = 0;
    cold_reattach(c, &call->err);
    return call->err.code;
}

static void cold_restored(struct hs_virt_call *call, int status)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;

    if (status < 0)
        hs_err_adopt(cap->err, &call->err, status);
    else
        hs_log(HS_LOG_DEBUG, "job %s: domain '%s' restored", cap->job_id, cap->info->name);
    c->cb(cap, status);
}

static int cold_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct cold *c = cap->priv;
    int rc;

    if (!c || (!c->saved && !c->uncertain && c->detached == 0))
        return 1;
    c->cb = cb;
    rc = hs__virt_queue(cap->virt, &c->call, cold_restore, cold_restored);
    if (rc < 0)
        return rc; /* -ENOTCONN: the job retries once the connection is back */
    return 0;
}

static void cold_lifecycle(struct hs_capture *cap, int event, int detail)
{
    struct cold *c = cap->priv;

    if (event == VIR_DOMAIN_EVENT_STOPPED && detail == VIR_DOMAIN_EVENT_STOPPED_SAVED)
        return; /* ours */
    if (c && c->saved)
        return; /* already off by our save */
    hs__backend_domain_gone(cap, event, detail);
}

static void cold_destroy(struct hs_capture *cap)
{
    struct cold *c = cap->priv;

    if (c)
        free(c->journal_text);
    free(c);
    cap->priv = NULL;
}

const struct hs_backend_ops hs_backend_cold = {
    .name = "cold",
    .capture = cold_capture,
    .release = cold_release,
    .lifecycle = cold_lifecycle,
    .destroy = cold_destroy,
};
