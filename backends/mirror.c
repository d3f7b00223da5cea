/*
 * mirror: Nova's live method, the fallback when the backup API is missing.
 * Per disk: a qcow2 delta on the disk's backing file, virDomainBlockCopy
 * (SHALLOW | REUSE_EXT | TRANSIENT_JOB, so a persistent domain stays
 * defined) into it, the READY event, then an abort without pivot: the delta
 * then holds the disk's top layer as of the abort, and the extract step
 * flattens it with its backing chain. Each disk is captured at its own
 * instant, one after another: unlike live, not one instant across disks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "proc.h"
#include "util.h"
#define HS_LOG_TAG "mirror"
#include "log.h"

enum mirror_step {
    MIRROR_SIZE,   /* read the disk's capacity (worker) */
    MIRROR_CREATE, /* qemu-img create the delta (child) */
    MIRROR_COPY,   /* virDomainBlockCopy (worker) */
    MIRROR_READY,  /* wait for the READY event */
    MIRROR_ABORT,  /* abort without pivot (worker) */
    MIRROR_DONE,
};

struct mirror {
    struct hs_virt_call call;
    struct hs_capture *cap;
    hs_capture_cb cb;
    char *journal_text;
    enum mirror_step step;
    size_t cur;
    unsigned long long capacity;
    struct hs_proc *proc;
    int copying; /* a block job of ours runs on disk cur */
    size_t started; /* disks whose copy was asked for: release looks at them */
    int ready;
    int failed_event;
    int busy; /* a worker call or child in flight */
    int cancel;
};

static void mirror_next(struct mirror *m);

static void mirror_fail(struct mirror *m, int status)
{
    m->step = MIRROR_DONE;
    m->cb(m->cap, status);
}

static const char *cur_disk(struct mirror *m)
{
    return m->cap->disks[m->cur].disk->target;
}

static void mirror_call_done(struct hs_virt_call *call, int status)
{
    struct mirror *m = call->data;

    m->busy = 0;
    if (status < 0) {
        /* a copy that failed or was lost may still have started: release looks */
        hs_err_adopt(m->cap->err, &call->err, status);
        m->copying = 0;
        mirror_fail(m, status);
        return;
    }
    mirror_next(m);
}

static int mirror_size(struct hs_virt_call *call, virConnectPtr conn)
{
    struct mirror *m = call->data;
    virDomainBlockInfo bi;
    int rc;

    rc = hs__journal_write(m->cap->journal, m->journal_text);
    if (rc < 0)
        return hs_err_set(&call->err, rc, HS_ERR_SYS, -rc, "cannot write the journal: %s",
                          strerror(-rc));
    if (virDomainGetBlockInfo(call->dom, cur_disk(m), &bi, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read disk '%s' of domain '%s'", cur_disk(m),
                           m->cap->info->name);
    m->capacity = bi.capacity;
    return 0;
}

static int mirror_copy(struct hs_virt_call *call, virConnectPtr conn)
{
    struct mirror *m = call->data;
    char *file = hs__xml_escape(m->cap->disks[m->cur].pit_path);
    char *xml = hs__asprintf("<disk type='file'><source file='%s'/><driver type='qcow2'/></disk>",
                             file);
    int rc = 0;

    free(file);
    if (virDomainBlockCopy(call->dom, cur_disk(m), xml, NULL, 0,
                           VIR_DOMAIN_BLOCK_COPY_SHALLOW | VIR_DOMAIN_BLOCK_COPY_REUSE_EXT |
                               VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB) < 0)
        rc = hs_err_virt(&call->err, -EIO, "block copy of disk '%s' of domain '%s' did not start",
                         cur_disk(m), m->cap->info->name);
    free(xml);
    return rc;
}

static int mirror_abort(struct hs_virt_call *call, virConnectPtr conn)
{
    struct mirror *m = call->data;
    uint64_t t0 = uv_hrtime();

    /* no pivot: the guest stays on its own disk, the delta keeps the copy */
    if (virDomainBlockJobAbort(call->dom, cur_disk(m), 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot end the block copy of disk '%s' of '%s'",
                           cur_disk(m), m->cap->info->name);
    m->cap->stall_ms =
        (m->cap->stall_ms < 0 ? 0 : m->cap->stall_ms) + (double)(uv_hrtime() - t0) / 1e6;
    return 0;
}

static void mirror_created(struct hs_proc *p, int status)
{
    struct mirror *m = p->data;

    m->proc = NULL;
    m->busy = 0;
    if (status < 0) {
        hs_err_set(m->cap->err, status, HS_ERR_QEMU_IMG, p->exit_status,
                   "qemu-img create of the delta for disk '%s' failed: %s", cur_disk(m),
                   hs__proc_stderr(p));
        mirror_fail(m, status);
        return;
    }
    mirror_next(m);
}

static int mirror_queue(struct mirror *m, hs_virt_work_fn fn)
{
    int rc = hs__virt_queue(m->cap->virt, &m->call, m->cap->info->uuid, fn, mirror_call_done);

    if (rc < 0)
        return hs_err_set(m->cap->err, rc, HS_ERR_LIBVIRT, 0, "libvirt connection lost");
    m->busy = 1;
    return 0;
}

/* Move to the next step once the current one completed. */
static void mirror_next(struct mirror *m)
{
    struct hs_capture_disk *cd;
    char size[32];
    int rc = 0;

    if (m->cap->err->code && m->step != MIRROR_ABORT) {
        /* canceled, or the domain went away: end the copy if one runs */
        if (m->copying && m->step != MIRROR_DONE) {
            m->step = MIRROR_ABORT;
            if (mirror_queue(m, mirror_abort) == 0)
                return;
        }
        mirror_fail(m, m->cap->err->code);
        return;
    }
    switch (m->step) {
    case MIRROR_SIZE:
        m->step = MIRROR_CREATE;
        cd = &m->cap->disks[m->cur];
        snprintf(size, sizeof(size), "%llu", m->capacity);
        {
            char *argv[12];
            int n = 0;

            argv[n++] = "qemu-img";
            argv[n++] = "create";
            argv[n++] = "-q";
            argv[n++] = "-f";
            argv[n++] = "qcow2";
            if (cd->disk->backing) {
                argv[n++] = "-b";
                argv[n++] = cd->disk->backing;
                argv[n++] = "-F";
                argv[n++] = cd->disk->backing_format ? cd->disk->backing_format : "raw";
            }
            argv[n++] = cd->pit_path;
            argv[n++] = size;
            argv[n] = NULL;
            rc = hs__proc_spawn(m->cap->loop, argv, 0, NULL, mirror_created, m, &m->proc);
            if (rc < 0)
                hs_err_set(m->cap->err, rc, HS_ERR_QEMU_IMG, 0, "cannot run qemu-img: %s",
                           uv_strerror(rc));
            else
                m->busy = 1;
        }
        break;
    case MIRROR_CREATE:
        m->step = MIRROR_COPY;
        m->ready = 0;
        m->copying = 1;
        m->started = m->cur + 1;
        rc = mirror_queue(m, mirror_copy);
        break;
    case MIRROR_COPY:
        m->step = MIRROR_READY;
        if (!m->ready)
            return; /* the READY event moves on (it may have come already) */
        /* fall through */
    case MIRROR_READY:
        m->step = MIRROR_ABORT;
        rc = mirror_queue(m, mirror_abort);
        break;
    case MIRROR_ABORT:
        m->copying = 0;
        m->started = m->cur; /* this disk's copy is over */
        if (m->cap->err->code) {
            mirror_fail(m, m->cap->err->code);
            return;
        }
        hs_log(HS_LOG_DEBUG, "job %s: disk '%s' copied", m->cap->job_id, cur_disk(m));
        if (++m->cur < m->cap->ndisks) {
            m->step = MIRROR_SIZE;
            rc = mirror_queue(m, mirror_size);
            break;
        }
        m->step = MIRROR_DONE;
        m->cb(m->cap, 0);
        return;
    case MIRROR_DONE:
        return;
    }
    if (rc < 0)
        mirror_fail(m, rc);
}

static int mirror_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct mirror *m = hs__calloc(1, sizeof(*m));
    cJSON *disks;
    size_t i;
    int rc;

    m->cap = cap;
    m->cb = cb;
    m->call.data = m;
    cap->priv = m;
    disks = cJSON_CreateArray();
    for (i = 0; i < cap->ndisks; i++) {
        cap->disks[i].pit_path =
            hs__asprintf("%s/%s.delta.qcow2", cap->scratch, cap->disks[i].disk->target);
        cap->disks[i].pit_format = hs__strdup("qcow2");
        cJSON_AddItemToArray(disks, cJSON_CreateString(cap->disks[i].disk->target));
    }
    cJSON_AddStringToObject(cap->journal->doc, "backend", "mirror");
    cJSON_AddItemToObject(cap->journal->doc, "disks", disks);
    m->journal_text = hs__journal_render(cap->journal);
    m->step = MIRROR_SIZE;
    rc = mirror_queue(m, mirror_size);
    return rc;
}

static void mirror_block_job(struct hs_capture *cap, const char *disk, int type, int status)
{
    struct mirror *m = cap->priv;

    if (!m || m->step > MIRROR_READY || !m->copying || strcmp(disk, cur_disk(m)) ||
        type != VIR_DOMAIN_BLOCK_JOB_TYPE_COPY)
        return;
    if (status == VIR_DOMAIN_BLOCK_JOB_READY) {
        m->ready = 1;
        if (m->step == MIRROR_READY && !m->busy)
            mirror_next(m);
    } else if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED) {
        /* before READY, an end is someone else's doing or a failure */
        m->copying = 0;
        hs_err_set(cap->err, -EIO, HS_ERR_LIBVIRT, status,
                   "block copy of disk '%s' of domain "
                   "'%s' %s",
                   disk, cap->info->name,
                   status == VIR_DOMAIN_BLOCK_JOB_FAILED ? "failed"
                                                         : "was canceled by someone else");
        if (m->step == MIRROR_READY && !m->busy)
            mirror_fail(m, -EIO);
    }
}

static void mirror_lifecycle(struct hs_capture *cap, int event, int detail)
{
    struct mirror *m = cap->priv;

    if (!hs__backend_domain_gone(cap, event, detail) || !m)
        return;
    m->copying = 0; /* the job died with QEMU */
    if (m->proc)
        hs__proc_cancel(m->proc);
    if (m->step == MIRROR_READY && !m->busy)
        mirror_fail(m, -ESRCH);
}

static void mirror_reconnected(struct hs_capture *cap)
{
    struct mirror *m = cap->priv;

    if (!m || m->step != MIRROR_READY || m->busy)
        return;
    /* the READY event may have been lost with the connection: end the copy */
    hs_err_set(cap->err, -ECONNRESET, HS_ERR_LIBVIRT, 0,
               "the libvirt connection was lost during the block copy of domain '%s'",
               cap->info->name);
    mirror_next(m);
}

static void mirror_cancel(struct hs_capture *cap)
{
    struct mirror *m = cap->priv;

    if (!m || m->step == MIRROR_DONE)
        return;
    m->cancel = 1;
    if (m->proc)
        hs__proc_cancel(m->proc);
    if (m->step == MIRROR_READY && !m->busy)
        mirror_next(m); /* sees the error, aborts the copy */
}

/* Worker: no block copy of ours is left on any disk: a copy is ours when it
 * mirrors into our delta (the domain XML's <mirror>). */
static int mirror_cleanup(struct hs_virt_call *call, virConnectPtr conn)
{
    struct mirror *m = call->data;
    virDomainBlockJobInfo info;
    size_t i;
    int k;

    for (i = 0; i < m->started; i++) {
        const char *disk = m->cap->disks[i].disk->target;
        char *xml = virDomainGetXMLDesc(call->dom, 0), *dest;

        if (!xml)
            return hs_err_virt(&call->err, -EIO, "cannot read domain '%s'", m->cap->info->name);
        dest = hs__domain_xml_mirror(xml, disk);
        free(xml);
        if (!dest || strcmp(dest, m->cap->disks[i].pit_path)) {
            free(dest);
            continue;
        }
        free(dest);
        if (virDomainBlockJobAbort(call->dom, disk, 0) < 0)
            return hs_err_virt(&call->err, -EIO, "cannot end the block copy of disk '%s'", disk);
        /* the abort concludes asynchronously: leave no job behind */
        for (k = 0; k < 100 && virDomainGetBlockJobInfo(call->dom, disk, &info, 0) == 1; k++)
            usleep(100 * 1000);
    }
    return 0;
}

static void mirror_cleaned(struct hs_virt_call *call, int status)
{
    struct mirror *m = call->data;

    if (status == 0 || status == -ESRCH) {
        m->started = 0;
        status = 0;
    } else if (status != -ENOTCONN) {
        hs_err_adopt(m->cap->err, &call->err, status);
    }
    m->cb(m->cap, status);
}

static int mirror_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct mirror *m = cap->priv;

    if (!m || !m->started || cap->domain_gone)
        return 1;
    m->cb = cb;
    /* -ENOTCONN: the job calls again once the connection is back */
    return hs__virt_queue(cap->virt, &m->call, cap->info->uuid, mirror_cleanup, mirror_cleaned);
}

static void mirror_destroy(struct hs_capture *cap)
{
    struct mirror *m = cap->priv;

    if (m)
        free(m->journal_text);
    free(m);
    cap->priv = NULL;
}

/* Worker: a dead run's mirror job: every block copy into its scratch ended. */
static void mirror_recover(virConnectPtr conn, const cJSON *doc, cJSON *entry)
{
    const char *scratch = hs__jstr(doc, "scratch");
    virDomainPtr dom = hs__recover_domain(conn, doc, entry);
    virDomainBlockJobInfo info;
    struct hs_err err = {0};
    const cJSON *d;
    char *xml, *dest;
    int did = 0, k;

    if (!dom)
        return;
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(doc, "disks")) {
        if (!cJSON_IsString(d) || !scratch || virDomainIsActive(dom) != 1)
            continue;
        xml = virDomainGetXMLDesc(dom, 0);
        dest = hs__domain_xml_mirror(xml, d->valuestring);
        free(xml);
        if (hs__path_in_dir(dest, scratch)) {
            if (virDomainBlockJobAbort(dom, d->valuestring, 0) < 0)
                hs_err_virt(&err, -EIO, "cannot end the block copy of disk '%s'", d->valuestring);
            for (k = 0; k < 100 && virDomainGetBlockJobInfo(dom, d->valuestring, &info, 0) == 1;
                 k++)
                usleep(100 * 1000);
            did = 1;
        }
        free(dest);
    }
    if (err.code)
        cJSON_AddStringToObject(entry, "error", err.msg);
    else
        cJSON_AddStringToObject(entry, "action",
                                did ? "block copy ended" : "none: no copy of the dead run was left");
    virDomainFree(dom);
}

const struct hs_backend_ops hs_backend_mirror = {
    .name = "mirror",
    .capture = mirror_capture,
    .release = mirror_release,
    .lifecycle = mirror_lifecycle,
    .block_job = mirror_block_job,
    .cancel = mirror_cancel,
    .reconnected = mirror_reconnected,
    .destroy = mirror_destroy,
    .recover = mirror_recover,
};
