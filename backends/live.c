/*
 * live: libvirt's backup API in push mode. One virDomainBackupBegin copies
 * every selected disk, as of the instant of the call, into a file in the
 * job's scratch directory while the guest runs on; completion comes from the
 * JOB_COMPLETED event (or a BLOCK_JOB_2 event of type backup that ends it).
 * With a responsive guest agent the filesystems are frozen around the
 * BackupBegin call only, and thawed on every path out.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "util.h"
#define HS_LOG_TAG "live"
#include "log.h"

struct live {
    struct hs_virt_call call;
    struct hs_capture *cap;
    hs_capture_cb cb;
    char *journal_text;
    char *xml;
    int begun;         /* BackupBegin returned success */
    int calling;       /* a worker call is in flight */
    int ended;         /* the backup ended (both events for success, either for failure) */
    int job_ok;        /* JOB_COMPLETED said it succeeded */
    size_t disks_done; /* BLOCK_JOB_2 backup COMPLETED events: QEMU let go of the target */
    int waiting;       /* capture's cb waits for the end event */
    int cancel;        /* cancel requested */
    int aborted;       /* abort sent */
    int frozen;        /* a thaw is still owed */
    struct hs_virt_call stats_call;
    int stats_busy;
    int finish_after_stats; /* the end came while a stats call ran */
    int lost;               /* ended by a lost connection: the backup may still run */
    unsigned long long processed, total;
    int end_status;
    char end_msg[384];
};

static char *live_backup_xml(struct hs_capture *cap)
{
    const struct hs_domain_info *info = cap->info;
    size_t i, k, len = 0, cap_len = 256;
    char *xml = malloc(cap_len);
    int sel;

#define APPEND(...)                                                                                \
    do {                                                                                           \
        int n_ = snprintf(NULL, 0, __VA_ARGS__);                                                   \
        while (len + (size_t)n_ + 1 > cap_len)                                                     \
            xml = realloc(xml, cap_len *= 2);                                                      \
        if (!xml)                                                                                  \
            abort();                                                                               \
        len += (size_t)sprintf(xml + len, __VA_ARGS__);                                            \
    } while (0)

    if (!xml)
        abort();
    APPEND("<domainbackup mode='push'><disks>");
    for (i = 0; i < info->ndisks; i++) {
        for (sel = -1, k = 0; k < cap->ndisks; k++)
            if (cap->disks[k].disk == &info->disks[i])
                sel = (int)k;
        if (sel < 0) {
            /* disks not named would be backed up too */
            APPEND("<disk name='%s' backup='no'/>", info->disks[i].target);
            continue;
        }
        APPEND("<disk name='%s' backup='yes' type='file'><target file='%s'/>"
               "<driver type='qcow2'/></disk>",
               info->disks[i].target, cap->disks[sel].pit_path);
    }
    APPEND("</disks></domainbackup>");
#undef APPEND
    return xml;
}

/* Worker: journal, freeze, begin, thaw. */
static int live_begin(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;
    struct hs_err aerr = {0};
    uint64_t t0 = 0, ts = uv_hrtime();
    int rc, i;

    rc = hs__journal_write(cap->journal, l->journal_text);
    if (rc < 0)
        return hs_err_set(&call->err, rc, HS_ERR_SYS, -rc, "cannot write the journal of job %s: %s",
                          cap->job_id, strerror(-rc));
    if (cap->quiesce != HS_QUIESCE_OFF) {
        if (virDomainFSFreeze(cap->dom, NULL, 0, 0) < 0) {
            hs_err_virt(&aerr, -EIO, "guest agent");
            if (cap->quiesce == HS_QUIESCE_REQUIRED)
                return hs_err_set(&call->err, -EIO, HS_ERR_LIBVIRT, aerr.detail,
                                  "quiesce required, but the filesystems of domain '%s' could "
                                  "not be frozen (%s)",
                                  cap->info->name, aerr.msg);
            snprintf(cap->warning, sizeof(cap->warning), "not quiesced: %s", aerr.msg);
        } else {
            l->frozen = 1;
            t0 = uv_hrtime();
        }
    }
    if (virDomainBackupBegin(cap->dom, l->xml, NULL, 0) < 0) {
        rc = hs_err_virt(&call->err, -EIO, "backup of domain '%s' did not start", cap->info->name);
        if (virConnectIsAlive(conn) != 1)
            l->begun = l->lost = 1; /* libvirtd may have started it: release looks */
    } else {
        l->begun = 1;
    }
    for (i = 0; l->frozen && i < 3; i++) {
        if (virDomainFSThaw(cap->dom, NULL, 0, 0) >= 0) {
            l->frozen = 0;
            cap->frozen_ms = (double)(uv_hrtime() - t0) / 1e6;
        }
    }
    if (l->frozen)
        rc = hs_err_virt(&call->err, -EIO, "cannot thaw the filesystems of domain '%s'",
                         cap->info->name);
    else
        cap->stall_ms = (double)(uv_hrtime() - ts) / 1e6;
    return rc;
}

static void live_finish(struct live *l)
{
    struct hs_capture *cap = l->cap;

    if (l->stats_busy) {
        l->finish_after_stats = 1; /* no call of ours outlives the capture */
        return;
    }
    l->waiting = 0;
    if (l->end_status < 0)
        hs_err_set(cap->err, l->end_status, HS_ERR_LIBVIRT, 0, "%s", l->end_msg);
    l->cb(cap, l->end_status);
}

static void live_abort_done(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;

    l->calling = 0;
    if (status < 0)
        hs_log(HS_LOG_DEBUG, "job %s: abort: %s", l->cap->job_id, call->err.msg);
    if (l->waiting && l->ended)
        live_finish(l);
}

static int live_abort(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;

    if (virDomainAbortJob(l->cap->dom) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                           l->cap->info->name);
    return 0;
}

static void live_send_abort(struct live *l)
{
    if (l->aborted || l->calling || !l->begun || l->ended)
        return;
    l->aborted = 1;
    l->calling = 1;
    if (hs__virt_queue(l->cap->virt, &l->call, live_abort, live_abort_done) < 0)
        l->calling = 0;
}

static void live_begun(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;

    l->calling = 0;
    free(l->journal_text);
    l->journal_text = NULL;
    if (status < 0) {
        hs_err_adopt(cap->err, &call->err, status);
        if (!l->begun || l->lost) {
            /* nothing runs, or the connection is gone: release looks again */
            l->ended = 1;
            l->cb(cap, status);
            return;
        }
    }
    hs_log(HS_LOG_DEBUG, "job %s: backup of '%s' begun", cap->job_id, cap->info->name);
    l->waiting = 1;
    if (l->ended) {
        live_finish(l); /* the end event came before the call returned */
        return;
    }
    if (l->cancel || status < 0 || cap->domain_gone)
        live_send_abort(l);
}

static int live_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct live *l = hs__calloc(1, sizeof(*l));
    size_t i;
    int rc;

    l->cap = cap;
    l->cb = cb;
    l->call.data = l;
    cap->priv = l;
    for (i = 0; i < cap->ndisks; i++) {
        cap->disks[i].pit_path =
            hs__asprintf("%s/%s.backup.qcow2", cap->scratch, cap->disks[i].disk->target);
        cap->disks[i].pit_format = hs__strdup("qcow2");
    }
    /* QEMU itself opens the backup targets in the scratch directory */
    if (hs__path_traversable(cap->scratch, cap->err, "scratch directory") < 0)
        return cap->err->code;
    l->xml = live_backup_xml(cap);
    cJSON_AddStringToObject(cap->journal->doc, "backend", "live");
    cJSON_AddStringToObject(cap->journal->doc, "step", "backup");
    cJSON_AddBoolToObject(cap->journal->doc, "quiesce", cap->quiesce != HS_QUIESCE_OFF);
    l->journal_text = hs__journal_render(cap->journal);
    l->calling = 1;
    rc = hs__virt_queue(cap->virt, &l->call, live_begin, live_begun);
    if (rc < 0) {
        l->calling = 0;
        return hs_err_set(cap->err, rc, HS_ERR_LIBVIRT, 0,
                          "libvirt connection lost before the backup of '%s' began",
                          cap->info->name);
    }
    return 0;
}

static void live_ended(struct live *l, int status, const char *msg)
{
    if (l->ended)
        return;
    l->ended = 1;
    l->end_status = status;
    snprintf(l->end_msg, sizeof(l->end_msg), "%s", msg);
    if (l->waiting && !l->calling)
        live_finish(l);
}

static void live_job_completed(struct hs_capture *cap, int operation, const char *errmsg)
{
    struct live *l = cap->priv;
    char msg[384];

    if (!l || operation != VIR_DOMAIN_JOB_OPERATION_BACKUP)
        return;
    if (!errmsg) {
        /* QEMU still holds the targets open until the block job events */
        l->job_ok = 1;
        if (l->disks_done >= cap->ndisks)
            live_ended(l, 0, "");
        return;
    }
    snprintf(msg, sizeof(msg), "backup of domain '%s' %s: %s", cap->info->name,
             l->aborted ? "canceled" : "failed", errmsg);
    live_ended(l, l->aborted && l->cancel ? -ECANCELED : -EIO, msg);
}

static void live_block_job(struct hs_capture *cap, const char *disk, int type, int status)
{
    struct live *l = cap->priv;
    char msg[384];

    if (!l || type != VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP)
        return;
    if (status == VIR_DOMAIN_BLOCK_JOB_COMPLETED) {
        if (++l->disks_done >= cap->ndisks && l->job_ok)
            live_ended(l, 0, "");
    } else if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED) {
        snprintf(msg, sizeof(msg), "backup of disk '%s' of domain '%s' %s", disk, cap->info->name,
                 status == VIR_DOMAIN_BLOCK_JOB_FAILED ? "failed"
                 : l->aborted                          ? "was canceled"
                                                       : "was canceled by someone else");
        live_ended(l, l->cancel ? -ECANCELED : -EIO, msg);
    }
}

static void live_lifecycle(struct hs_capture *cap, int event, int detail)
{
    struct live *l = cap->priv;

    if (!hs__backend_domain_gone(cap, event, detail) || !l)
        return;
    /* QEMU is gone and with it the backup: no end event may come */
    live_ended(l, -ESRCH, cap->err->msg);
}

/* Worker: the backup's progress. */
static int live_stats(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    virTypedParameterPtr params = NULL;
    int type, n = 0;

    if (virDomainGetJobStats(l->cap->dom, &type, &params, &n, 0) < 0)
        return -EIO; /* libvirt 9.0 fails this during parts of a backup */
    virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DISK_PROCESSED, &l->processed);
    virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DISK_TOTAL, &l->total);
    virTypedParamsFree(params, n);
    return 0;
}

static void live_stats_done(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;

    l->stats_busy = 0;
    if (l->finish_after_stats) {
        l->finish_after_stats = 0;
        live_finish(l);
        return;
    }
    if (status == 0 && l->total && !l->ended && l->cap->on_progress)
        l->cap->on_progress(l->cap, l->processed, l->total);
}

static void live_progress(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (!l || !l->begun || l->ended || l->stats_busy)
        return;
    l->stats_call.data = l;
    if (hs__virt_queue(cap->virt, &l->stats_call, live_stats, live_stats_done) == 0)
        l->stats_busy = 1;
}

static void live_reconnected(struct hs_capture *cap)
{
    struct live *l = cap->priv;
    char msg[256];

    if (!l || l->ended)
        return;
    /* the end event may have been lost with the connection: end it here;
     * release aborts a backup still running */
    snprintf(msg, sizeof(msg), "the libvirt connection was lost during the backup of domain '%s'",
             cap->info->name);
    l->lost = 1;
    live_ended(l, -ECONNRESET, msg);
}

static void live_cancel(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (!l)
        return;
    l->cancel = 1;
    live_send_abort(l);
}

/* Worker: make sure no backup job and no frozen filesystem is left. */
static int live_cleanup(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;
    int i;

    if (l->begun && (!l->ended || l->lost) && hs__virt_job_active(cap->dom) == 1) {
        virDomainAbortJob(cap->dom);
        /* the abort concludes asynchronously: leave no job behind */
        for (i = 0; i < 100 && hs__virt_job_active(cap->dom) == 1; i++)
            usleep(100 * 1000);
    }
    if (l->frozen && virDomainFSThaw(cap->dom, NULL, 0, 0) >= 0)
        l->frozen = 0;
    if (l->frozen)
        return hs_err_virt(&call->err, -EIO, "cannot thaw the filesystems of domain '%s'",
                           cap->info->name);
    return 0;
}

static void live_cleaned(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;

    if (status < 0)
        hs_err_adopt(l->cap->err, &call->err, status);
    l->cb(l->cap, status);
}

static int live_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct live *l = cap->priv;

    if (!l || cap->domain_gone || ((!l->begun || (l->ended && !l->lost)) && !l->frozen))
        return 1;
    l->cb = cb;
    return hs__virt_queue(cap->virt, &l->call, live_cleanup, live_cleaned);
}

static void live_destroy(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (l) {
        free(l->journal_text);
        free(l->xml);
    }
    free(l);
    cap->priv = NULL;
}

const struct hs_backend_ops hs_backend_live = {
    .name = "live",
    .standalone_pit = 1,
    .capture = live_capture,
    .release = live_release,
    .lifecycle = live_lifecycle,
    .block_job = live_block_job,
    .job_completed = live_job_completed,
    .cancel = live_cancel,
    .reconnected = live_reconnected,
    .progress = live_progress,
    .destroy = live_destroy,
};
