/*
 * cold: Nova's default. Managed save (the guest stops, its memory goes to a
 * file and its disks are at rest), convert the disks, start the domain again
 * in the state it had at the moment of the save. Host PCI devices and
 * SR-IOV ports cannot be saved: like Nova, they are detached before the save
 * and attached again after the restore.
 *
 * Before the save the domain gets hotsnap's mark (live metadata with the job
 * id), which the managed-save image keeps: a save image is hotsnap's only
 * when it carries the mark, so release, and recovery after a crash, restore
 * (or remove, when the save was cut short and the guest runs on) exactly the
 * image hotsnap made, never one another tool or the operator made.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "util.h"
#define HS_LOG_TAG "cold"
#include "log.h"

struct cold {
    struct hs_virt_call call;
    struct hs_capture *cap;
    hs_capture_cb cb;
    int paused;      /* at the moment of the save: restore paused (worker writes) */
    int saved;       /* the managed save succeeded */
    int touched;     /* the mark or a detach may have happened: release looks */
    int calling;     /* call is in flight */
    int looking;     /* the save was lost with the connection: look once it is back */
    int look_after;  /* it came back while a call was in flight */
    int look_saved;  /* the look found the domain off with our image (worker writes) */
    size_t detached; /* host devices detached so far */
    uint64_t t_down; /* hrtime the save began */
};

/* Worker: attach again the host devices detached. Errors are recorded, not fatal. */
static void cold_reattach(struct cold *c, virDomainPtr dom, struct hs_err *err)
{
    struct hs_capture *cap = c->cap;

    while (c->detached > 0) {
        const char *xml = cap->info->hostdevs[c->detached - 1];

        if (virDomainAttachDeviceFlags(dom, xml, VIR_DOMAIN_AFFECT_LIVE) < 0)
            hs_err_virt(err, -EIO, "cannot attach host device %zu of domain '%s' again",
                        c->detached, cap->info->name);
        c->detached--;
    }
}

/* Worker: hotsnap's mark on the running domain (and so in its save image). */
int hs__cold_mark(virDomainPtr dom, const char *job_id)
{
    char *xml = hs__asprintf("<job id='%s'/>", job_id);
    int rc = virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, xml, HS_MARK_PREFIX,
                                  HS_MARK_NS, VIR_DOMAIN_AFFECT_LIVE);

    free(xml);
    return rc;
}

void hs__cold_unmark(virDomainPtr dom)
{
    virDomainSetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, NULL, NULL, HS_MARK_NS,
                         VIR_DOMAIN_AFFECT_LIVE);
}

/* Where libvirt's QEMU driver keeps managed-save images (qemu:///system). */
#define COLD_SAVE_DIR "/var/lib/libvirt/qemu/save"

/* Worker: 1 when @dom has a managed-save image of job @job_id: the image
 * carries the job's mark, or it is incomplete (a save cut short) while the
 * domain itself carries the mark. */
int hs__cold_save_is_ours(virDomainPtr dom, const char *job_id)
{
    char *xml;
    int ours;

    if (virDomainHasManagedSaveImage(dom, 0) != 1)
        return 0;
    xml = virDomainManagedSaveGetXMLDesc(dom, 0);
    if (!xml && virDomainIsActive(dom) == 1)
        xml = virDomainGetXMLDesc(dom, 0); /* "save image is incomplete" */
    ours = hs__domain_xml_marked(xml, job_id);
    free(xml);
    return ours;
}

/* The file of @dom's managed-save image, where it can be told (qemu:///system). */
static char *cold_save_file(virConnectPtr conn, const char *name)
{
    char *uri = virConnectGetURI(conn);
    char *path = NULL;

    if (uri && !strcmp(uri, "qemu:///system"))
        path = hs__asprintf("%s/%s.save", COLD_SAVE_DIR, name);
    free(uri);
    return path;
}

/* Record which file our save image is: a save made later (by someone who
 * started the guest from ours) is another file, also when it carries the mark. */
static void cold_journal_save_file(struct hs_capture *cap, virConnectPtr conn)
{
    char *path = cold_save_file(conn, cap->info->name), *text;
    struct stat st;
    cJSON *f;

    if (!path || stat(path, &st) < 0) {
        free(path);
        return;
    }
    f = cJSON_AddObjectToObject(cap->journal->doc, "save_file");
    cJSON_AddStringToObject(f, "path", path);
    /* whole numbers below 2^53 each: cJSON prints a double with 15 digits
     * when that is close enough, and a nanosecond time in one double is not */
    cJSON_AddNumberToObject(f, "ino", (double)st.st_ino);
    cJSON_AddNumberToObject(f, "mtime_s", (double)st.st_mtim.tv_sec);
    cJSON_AddNumberToObject(f, "mtime_ns", (double)st.st_mtim.tv_nsec);
    free(path);
    text = hs__journal_render(cap->journal);
    hs__journal_write(cap->journal, text);
    free(text);
}

/* Worker (recovery): 0 when the journal names the file of our save image and
 * the image there now is another file. */
static int cold_same_save_file(const cJSON *doc)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(doc, "save_file");
    const char *path = hs__jstr(f, "path");
    struct stat st;

    if (!path || stat(path, &st) < 0)
        return 1; /* nothing recorded (or nothing to compare): the mark decides */
    return (double)st.st_ino == cJSON_GetNumberValue(cJSON_GetObjectItem(f, "ino")) &&
           (double)st.st_mtim.tv_sec == cJSON_GetNumberValue(cJSON_GetObjectItem(f, "mtime_s")) &&
           (double)st.st_mtim.tv_nsec == cJSON_GetNumberValue(cJSON_GetObjectItem(f, "mtime_ns"));
}

/* Worker: the state at this moment, the mark, the journal, host devices
 * detached, managed save. */
static int cold_save(struct hs_virt_call *call, virConnectPtr conn)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;
    int state, reason, rc;
    char *text;

    if (virDomainGetState(call->dom, &state, &reason, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the state of domain '%s'",
                           cap->info->name);
    if (state != VIR_DOMAIN_RUNNING && state != VIR_DOMAIN_PAUSED && state != VIR_DOMAIN_BLOCKED)
        return hs_err_set(&call->err, -EBUSY, HS_ERR_LIBVIRT, state,
                          "domain '%s' is no longer running or paused; nothing was saved",
                          cap->info->name);
    /* whoever paused or resumed it while the job waited: this is what comes back */
    c->paused = state == VIR_DOMAIN_PAUSED;
    c->touched = 1;
    if (hs__cold_mark(call->dom, cap->job_id) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot mark domain '%s' for its save",
                           cap->info->name);
    /* the loop leaves the journal to this call while it runs */
    cJSON_AddStringToObject(cap->journal->doc, "resume", c->paused ? "paused" : "running");
    text = hs__journal_render(cap->journal);
    rc = hs__journal_write(cap->journal, text);
    free(text);
    if (rc < 0)
        return hs_err_set(&call->err, rc, HS_ERR_SYS, -rc, "cannot write the journal of job %s: %s",
                          cap->job_id, strerror(-rc));
    for (; c->detached < cap->info->nhostdevs; c->detached++) {
        if (virDomainDetachDeviceFlags(call->dom, cap->info->hostdevs[c->detached],
                                       VIR_DOMAIN_AFFECT_LIVE) < 0)
            return hs_err_virt(&call->err, -EIO,
                               "cannot detach host device %zu of domain '%s' for the save",
                               c->detached + 1, cap->info->name);
    }
    c->t_down = uv_hrtime();
    if (virDomainManagedSave(call->dom, c->paused ? VIR_DOMAIN_SAVE_PAUSED
                                                  : VIR_DOMAIN_SAVE_RUNNING) < 0) {
        rc = hs_err_virt(&call->err, -EIO, "managed save of domain '%s' failed",
                         cap->info->name);
        /* stopped under the save by someone else: say so, as the event would */
        if (virConnectIsAlive(conn) == 1 && virDomainGetState(call->dom, &state, &reason, 0) == 0 &&
            state == VIR_DOMAIN_SHUTOFF && reason != VIR_DOMAIN_SHUTOFF_SAVED) {
            hs_err_clear(&call->err);
            rc = hs_err_set(&call->err, -ESRCH, HS_ERR_LIBVIRT, reason,
                            "domain '%s' was %s during its snapshot", cap->info->name,
                            hs__shutoff_reason(reason));
        }
        return rc;
    }
    cold_journal_save_file(cap, conn);
    return 0; /* c->saved is set on the loop thread, which reads it */
}

static void cold_look_now(struct cold *c);

static void cold_saved(struct hs_virt_call *call, int status)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;

    c->calling = 0;
    if (status == -ENOTCONN) {
        /* whether the save happened is unknown: look once libvirt is back */
        hs_log(HS_LOG_WARN, "job %s: %s", cap->job_id, call->err.msg);
        c->looking = 1;
        if (c->look_after) {
            c->look_after = 0;
            cold_look_now(c);
        }
        return;
    }
    if (status < 0) {
        /* release looks: a lost save may have happened, a failed one left the mark */
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
    cap->priv = c;

    cJSON_AddStringToObject(cap->journal->doc, "backend", "cold");
    cJSON_AddStringToObject(cap->journal->doc, "step", "saving");
    devs = cJSON_AddArrayToObject(cap->journal->doc, "hostdevs");
    for (i = 0; i < cap->info->nhostdevs; i++)
        cJSON_AddItemToArray(devs, cJSON_CreateString(cap->info->hostdevs[i]));
    rc = hs__virt_queue(cap->virt, &c->call, cap->info->uuid, cold_save, cold_saved);
    if (rc < 0)
        return hs_err_set(cap->err, rc, HS_ERR_LIBVIRT, 0,
                          "libvirt connection lost before domain '%s' was saved", cap->info->name);
    c->calling = 1;
    return 0;
}

/* Worker: after a save lost with the connection, did it happen? */
static int cold_look(struct hs_virt_call *call, virConnectPtr conn)
{
    struct cold *c = call->data;
    int state, reason;

    if (virDomainGetState(call->dom, &state, &reason, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the state of domain '%s'",
                           c->cap->info->name);
    c->look_saved =
        state == VIR_DOMAIN_SHUTOFF && hs__cold_save_is_ours(call->dom, c->cap->job_id);
    return 0;
}

static void cold_looked(struct hs_virt_call *call, int status)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;

    c->calling = 0;
    if (status == -ENOTCONN && !cap->err->code) {
        if (c->look_after) {
            c->look_after = 0;
            cold_look_now(c);
        }
        return; /* lost again: the next reconnect looks again */
    }
    c->looking = 0;
    if (status == 0 && c->look_saved && !cap->err->code) {
        /* the save was done while libvirt was away: the disks are at rest */
        hs_log(HS_LOG_INFO, "job %s: domain '%s' was saved while libvirt was away",
               cap->job_id, cap->info->name);
        c->saved = 1;
        hs__capture_in_place(cap);
        c->cb(cap, 0);
        return;
    }
    /* the save did not happen (or cannot be told): release undoes the rest */
    if (status < 0)
        hs_err_adopt(cap->err, &call->err, status);
    hs_err_set(cap->err, -ECONNRESET, HS_ERR_LIBVIRT, 0,
               "the libvirt connection was lost during the managed save of domain '%s'",
               cap->info->name);
    c->cb(cap, cap->err->code);
}

static void cold_look_now(struct cold *c)
{
    struct hs_capture *cap = c->cap;

    if (!c->looking || c->calling)
        return;
    if (hs__virt_queue(cap->virt, &c->call, cap->info->uuid, cold_look, cold_looked) == 0) {
        c->calling = 1;
    } else if (cap->err->code) {
        /* canceled while libvirt is away: release waits for it and undoes */
        c->looking = 0;
        c->cb(cap, cap->err->code);
    }
}

static void cold_reconnected(struct hs_capture *cap)
{
    struct cold *c = cap->priv;

    if (!c)
        return;
    if (c->calling)
        c->look_after = 1;
    else
        cold_look_now(c);
}

static void cold_cancel(struct hs_capture *cap)
{
    struct cold *c = cap->priv;

    /* a save in flight is waited for (abandoning it could leave the guest
     * off); a capture waiting for libvirt gives up */
    if (c && c->looking && !c->calling)
        cold_look_now(c);
}

/* Worker: whatever the save did, undo it. A domain off with our save image
 * is started from it as it was; a guest that runs on after a save cut short
 * loses the partial image; the mark goes; host devices come back. */
static int cold_restore(struct hs_virt_call *call, virConnectPtr conn)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;
    int state, reason, ours;

    if (virDomainGetState(call->dom, &state, &reason, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the state of domain '%s'",
                           cap->info->name);
    ours = hs__cold_save_is_ours(call->dom, cap->job_id);
    if (state == VIR_DOMAIN_SHUTOFF && ours && cap->domain_gone) {
        /* stopped by someone else as the save ended: it stays off, and our
         * image of it goes (a later start must not bring back that state) */
        if (virDomainManagedSaveRemove(call->dom, 0) < 0)
            return hs_err_virt(&call->err, -EIO,
                               "cannot remove the managed-save image of domain '%s'",
                               cap->info->name);
    } else if (state == VIR_DOMAIN_SHUTOFF && ours) {
        if (virDomainCreateWithFlags(call->dom, c->paused ? VIR_DOMAIN_START_PAUSED : 0) < 0)
            return hs_err_virt(&call->err, -EIO,
                               "cannot restore domain '%s' from its managed save; the next "
                               "hotsnap run tries again",
                               cap->info->name);
        if (c->t_down)
            cap->stall_ms = (double)(uv_hrtime() - c->t_down) / 1e6;
    } else if (state == VIR_DOMAIN_SHUTOFF && c->saved && !cap->domain_gone) {
        return hs_err_set(&call->err, -EIO, HS_ERR_LIBVIRT, 0,
                          "domain '%s' is shut off and hotsnap's managed-save image is gone; "
                          "hotsnap cannot restore it",
                          cap->info->name);
    } else if (state != VIR_DOMAIN_SHUTOFF && ours) {
        /* the save was cut short (libvirtd died in it) and the guest runs on:
         * a partial image must not be restored by a later start */
        if (virDomainManagedSaveRemove(call->dom, 0) < 0)
            return hs_err_virt(&call->err, -EIO,
                               "cannot remove the partial managed-save image of domain '%s'",
                               cap->info->name);
    }
    /* else: running already (someone started it), or the save never happened */
    if (state != VIR_DOMAIN_SHUTOFF || ours)
        hs__cold_unmark(call->dom);
    c->saved = 0;
    cold_reattach(c, call->dom, &call->err);
    return call->err.code;
}

static void cold_restored(struct hs_virt_call *call, int status)
{
    struct cold *c = call->data;
    struct hs_capture *cap = c->cap;

    c->calling = 0;
    if (status == 0 || status == -ESRCH) {
        c->touched = 0;
        hs_log(HS_LOG_DEBUG, "job %s: domain '%s' restored", cap->job_id, cap->info->name);
        status = 0;
    } else if (status != -ENOTCONN) {
        hs_err_adopt(cap->err, &call->err, status);
    }
    c->cb(cap, status);
}

static int cold_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct cold *c = cap->priv;
    int rc;

    if (!c || (!c->touched && !c->saved && c->detached == 0))
        return 1;
    c->cb = cb;
    /* -ENOTCONN: the job calls again once the connection is back */
    rc = hs__virt_queue(cap->virt, &c->call, cap->info->uuid, cold_restore, cold_restored);
    if (rc == 0)
        c->calling = 1;
    return rc;
}

static void cold_lifecycle(struct hs_capture *cap, int event, int detail)
{
    if (event == VIR_DOMAIN_EVENT_STOPPED && detail == VIR_DOMAIN_EVENT_STOPPED_SAVED)
        return; /* ours */
    /* any other stop (a destroy that raced the end of the save included) is
     * someone else's: the domain is not started again */
    hs__backend_domain_gone(cap, event, detail);
}

static void cold_destroy(struct hs_capture *cap)
{
    free(cap->priv);
    cap->priv = NULL;
}

#define COLD_RECOVER_WAIT_S 120

/* Worker: a dead run's cold job. Its save still running in libvirtd is
 * waited for; a domain off with the job's save image is started as it was
 * and gets its host devices back; a guest running on after a save cut short
 * loses the partial image; the mark goes. Nothing else is touched: a save
 * image without the job's mark is not hotsnap's. */
static void cold_recover(virConnectPtr conn, const cJSON *doc, cJSON *entry)
{
    const char *job_id = hs__jstr(doc, "job"), *resume = hs__jstr(doc, "resume");
    const cJSON *dev;
    virDomainPtr dom = hs__recover_domain(conn, doc, entry);
    int state, reason, paused = resume && !strcmp(resume, "paused"), i;
    struct hs_err err = {0};
    char *xml;

    if (!dom)
        return;
    if (!job_id)
        goto none;
    /* a save of ours still under way in libvirtd: wait for its end */
    for (i = 0; i < COLD_RECOVER_WAIT_S * 5; i++) {
        xml = virDomainIsActive(dom) == 1 ? virDomainGetXMLDesc(dom, 0) : NULL;
        if (!xml || !hs__domain_xml_marked(xml, job_id) || hs__virt_job_active(dom) != 1) {
            free(xml);
            break;
        }
        free(xml);
        usleep(200 * 1000);
    }
    if (virDomainGetState(dom, &state, &reason, 0) < 0) {
        hs_err_virt(&err, -EIO, "cannot read the domain state");
    } else if (state == VIR_DOMAIN_SHUTOFF && hs__cold_save_is_ours(dom, job_id) &&
               cold_same_save_file(doc)) {
        if (virDomainCreateWithFlags(dom, paused ? VIR_DOMAIN_START_PAUSED : 0) < 0) {
            hs_err_virt(&err, -EIO, "cannot restore the domain");
        } else {
            hs__cold_unmark(dom);
            cJSON_AddStringToObject(entry, "action",
                                    paused ? "restored, paused" : "restored, running");
            cJSON_ArrayForEach(dev, cJSON_GetObjectItemCaseSensitive(doc, "hostdevs")) {
                if (cJSON_IsString(dev) &&
                    virDomainAttachDeviceFlags(dom, dev->valuestring, VIR_DOMAIN_AFFECT_LIVE) < 0)
                    hs_err_virt(&err, -EIO, "cannot attach a host device again");
            }
        }
    } else if (state != VIR_DOMAIN_SHUTOFF && hs__cold_save_is_ours(dom, job_id)) {
        if (virDomainManagedSaveRemove(dom, 0) < 0)
            hs_err_virt(&err, -EIO, "cannot remove the partial managed-save image");
        else
            cJSON_AddStringToObject(entry, "action", "removed a partial managed-save image");
        hs__cold_unmark(dom);
    } else {
        if (state != VIR_DOMAIN_SHUTOFF)
            hs__cold_unmark(dom);
        goto none;
    }
    if (err.code)
        cJSON_AddStringToObject(entry, "error", err.msg);
    virDomainFree(dom);
    return;
none:
    cJSON_AddStringToObject(entry, "action", "none: the domain was not left saved by hotsnap");
    virDomainFree(dom);
}

const struct hs_backend_ops hs_backend_cold = {
    .name = "cold",
    .capture = cold_capture,
    .release = cold_release,
    .lifecycle = cold_lifecycle,
    .cancel = cold_cancel,
    .reconnected = cold_reconnected,
    .destroy = cold_destroy,
    .recover = cold_recover,
};
