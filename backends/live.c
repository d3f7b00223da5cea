/*
 * live: libvirt's backup API in push mode. One virDomainBackupBegin copies
 * every selected disk, as of the instant of the call, into a file in the
 * job's scratch directory while the guest runs on; completion comes from the
 * JOB_COMPLETED event and every disk's BLOCK_JOB_2 backup event. With a
 * responsive guest agent the filesystems are frozen around the BackupBegin
 * call only, and thawed on every path out.
 *
 * The backup is hotsnap's when its targets lie in the job's scratch
 * directory: that is how release, and recovery after a crash, tell it from a
 * backup someone else runs on the domain.
 *
 * When the connection is lost, libvirtd keeps the backup running (also
 * across a restart of the daemon): once libvirt is back, the backend looks
 * (live_look) and waits on for the end of a backup that still runs, or
 * learns from libvirt's last completed job that it ended well.
 *
 * The release rule, in one place (live_release): a thaw is owed while a
 * freeze may have happened and no thaw was confirmed; an abort is owed while
 * the backup runs or may run. Release looks on the connection it runs on and
 * does what is owed; when that connection is lost too, it completes with
 * -ENOTCONN and the job calls it again once libvirt is back.
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

enum live_state {
    LIVE_IDLE,      /* nothing of ours runs in libvirt */
    LIVE_BEGINNING, /* the freeze, BackupBegin and thaw call is in flight */
    LIVE_RUNNING,   /* our backup runs: its end events are awaited */
    LIVE_LOOKING,   /* the connection was lost: is our backup running, once libvirt is back? */
    LIVE_ENDED,     /* it ended, by libvirt's word */
    LIVE_UNKNOWN,   /* given up while it may run: release looks */
};

struct live {
    struct hs_virt_call call; /* begin, abort, look, cleanup: one at a time */
    struct hs_virt_call stats_call;
    struct hs_capture *cap;
    hs_capture_cb cb;
    enum live_state state;
    char *journal_text;   /* before the freeze */
    char *journal_thawed; /* after the thaw */
    char *xml;
    int calling;     /* call is in flight */
    int stats_busy;  /* stats_call is in flight */
    int waiting;     /* capture's cb is owed */
    int thaw_owed;   /* a freeze may have happened, no thaw confirmed (worker writes) */
    int begun;       /* BackupBegin returned success (worker writes) */
    int cancel;      /* cancel requested */
    int abort_sent;  /* an abort of ours reached libvirt */
    int look_after;  /* libvirt came back while a call was in flight */
    int job_ok;      /* JOB_COMPLETED said it succeeded */
    int look_active; /* the look found our backup running (worker writes) */
    int look_done;   /* the look found that it completed (worker writes) */
    int abort_owed;  /* release's call aborts our backup if it runs */
    size_t disks_done;
    unsigned long long processed, total;
    int end_status;
    char end_msg[384];
};

static char *live_backup_xml(struct hs_capture *cap)
{
    const struct hs_domain_info *info = cap->info;
    char *xml = hs__strdup("<domainbackup mode='push'><disks>"), *next, *dev, *file;
    size_t i, k;
    int sel;

    for (i = 0; i < info->ndisks; i++) {
        for (sel = -1, k = 0; k < cap->ndisks; k++)
            if (cap->disks[k].disk == &info->disks[i])
                sel = (int)k;
        dev = hs__xml_escape(info->disks[i].target);
        if (sel < 0) {
            /* disks not named would be backed up too */
            next = hs__asprintf("%s<disk name='%s' backup='no'/>", xml, dev);
        } else {
            file = hs__xml_escape(cap->disks[sel].pit_path);
            next = hs__asprintf("%s<disk name='%s' backup='yes' type='file'><target file='%s'/>"
                                "<driver type='qcow2'/></disk>",
                                xml, dev, file);
            free(file);
        }
        free(dev);
        free(xml);
        xml = next;
    }
    next = hs__asprintf("%s</disks></domainbackup>", xml);
    free(xml);
    return next;
}

/* Worker: is the domain's backup job one of @scratch's (a job's own
 * directory)? 1, 0, or -1 when it cannot tell. */
static int backup_in(virDomainPtr dom, const char *scratch)
{
    char *xml = virDomainBackupGetXMLDesc(dom, 0);
    virErrorPtr e;
    int ours;

    if (!xml) {
        e = virGetLastError();
        return e && (e->code == VIR_ERR_NO_DOMAIN_BACKUP || e->code == VIR_ERR_OPERATION_INVALID)
                   ? 0
                   : -1;
    }
    ours = hs__backup_xml_in_dir(xml, scratch);
    free(xml);
    return ours;
}

static int live_ours_active(struct hs_capture *cap, virDomainPtr dom)
{
    return backup_in(dom, cap->scratch);
}

/* Worker: abort the backup of @scratch if it runs, and wait until it has gone. */
static int backup_abort(virDomainPtr dom, const char *scratch)
{
    int i, rc = 0;

    if (backup_in(dom, scratch) != 1)
        return 0;
    if (virDomainAbortJob(dom) < 0)
        rc = -EIO;
    /* the abort concludes asynchronously: leave no job behind */
    for (i = 0; i < 100 && backup_in(dom, scratch) == 1; i++)
        usleep(100 * 1000);
    return rc < 0 ? rc : 1;
}

/* Worker: thaw what may be frozen (a thaw of nothing frozen is harmless). */
static int live_thaw(struct hs_virt_call *call, struct live *l)
{
    int i;

    for (i = 0; l->thaw_owed && i < 3; i++)
        if (virDomainFSThaw(call->dom, NULL, 0, 0) >= 0)
            l->thaw_owed = 0;
    if (l->thaw_owed)
        return hs_err_virt(&call->err, -EIO, "cannot thaw the filesystems of domain '%s'",
                           l->cap->info->name);
    return 0;
}

/* Worker: journal, freeze, begin, thaw, journal. */
static int live_begin(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;
    struct hs_err aerr = {0};
    uint64_t t0 = 0, ts = uv_hrtime();
    int rc;

    rc = hs__journal_write(cap->journal, l->journal_text);
    if (rc < 0)
        return hs_err_set(&call->err, rc, HS_ERR_SYS, -rc, "cannot write the journal of job %s: %s",
                          cap->job_id, strerror(-rc));
    if (cap->quiesce != HS_QUIESCE_OFF) {
        l->thaw_owed = 1; /* from here on, whatever the freeze answers */
        if (virDomainFSFreeze(call->dom, NULL, 0, 0) < 0) {
            if (virConnectIsAlive(conn) != 1)
                return hs_err_virt(&call->err, -EIO, "freezing the filesystems of domain '%s'",
                                   cap->info->name);
            l->thaw_owed = 0; /* the agent said no: nothing is frozen */
            hs_err_virt(&aerr, -EIO, "guest agent");
            if (cap->quiesce == HS_QUIESCE_REQUIRED)
                return hs_err_set(&call->err, -EIO, HS_ERR_LIBVIRT, aerr.detail,
                                  "quiesce required, but the filesystems of domain '%s' could "
                                  "not be frozen (%s)",
                                  cap->info->name, aerr.msg);
            snprintf(cap->warning, sizeof(cap->warning), "not quiesced: %s", aerr.msg);
        } else {
            t0 = uv_hrtime();
        }
    }
    if (virDomainBackupBegin(call->dom, l->xml, NULL, 0) < 0)
        rc = hs_err_virt(&call->err, -EIO, "backup of domain '%s' did not start", cap->info->name);
    else
        l->begun = 1;
    if (l->thaw_owed) {
        if (live_thaw(call, l) < 0)
            return call->err.code; /* the first error wins; release thaws */
        cap->frozen_ms = (double)(uv_hrtime() - t0) / 1e6;
        hs__journal_write(cap->journal, l->journal_thawed);
    }
    cap->stall_ms = (double)(uv_hrtime() - ts) / 1e6;
    return rc;
}

/* Capture's callback, once nothing of ours is in flight. */
static void live_finish(struct live *l)
{
    struct hs_capture *cap = l->cap;

    if (!l->waiting || l->calling || l->stats_busy)
        return;
    if (l->state == LIVE_BEGINNING || l->state == LIVE_RUNNING || l->state == LIVE_LOOKING)
        return;
    l->waiting = 0;
    if (l->end_status < 0)
        hs_err_set(cap->err, l->end_status, HS_ERR_LIBVIRT, 0, "%s", l->end_msg);
    l->cb(cap, l->end_status);
}

/* The backup is over for the capture: @state is ENDED, UNKNOWN or IDLE. */
static void live_end(struct live *l, enum live_state state, int status, const char *msg)
{
    if (l->state == LIVE_ENDED || l->state == LIVE_UNKNOWN || l->state == LIVE_IDLE)
        return;
    l->state = state;
    l->end_status = status;
    snprintf(l->end_msg, sizeof(l->end_msg), "%s", msg);
    live_finish(l);
}

static void live_look_now(struct live *l);

/* Queue @fn on the one call; when the connection is down, a look waits for
 * it, and anything else ends the capture (release looks once it is back). */
static void live_send(struct live *l, hs_virt_work_fn fn, hs_virt_done_cb done)
{
    int rc = hs__virt_queue(l->cap->virt, &l->call, l->cap->info->uuid, fn, done);

    if (rc == 0) {
        l->calling = 1;
        return;
    }
    if (l->state == LIVE_RUNNING || (l->state == LIVE_LOOKING && l->cancel))
        live_end(l, LIVE_UNKNOWN, rc, "the libvirt connection was lost during the backup");
}

static void live_call_done(struct live *l)
{
    l->calling = 0;
    if (l->look_after) {
        l->look_after = 0;
        live_look_now(l);
        return;
    }
    live_finish(l);
}

static int live_abort(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;

    if (live_ours_active(l->cap, call->dom) == 1 && virDomainAbortJob(call->dom) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                           l->cap->info->name);
    return 0;
}

static void live_aborted(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;

    if (status < 0)
        hs_log(HS_LOG_DEBUG, "job %s: abort: %s", l->cap->job_id, call->err.msg);
    else
        l->abort_sent = 1;
    if (status == -ENOTCONN && l->state == LIVE_RUNNING)
        live_end(l, LIVE_UNKNOWN, -ENOTCONN, call->err.msg);
    live_call_done(l);
}

/* End our backup early (cancel, a failed thaw, the domain gone). */
static void live_send_abort(struct live *l)
{
    if (l->abort_sent || l->state != LIVE_RUNNING || l->calling)
        return; /* not running, or sent once the call in flight is back */
    live_send(l, live_abort, live_aborted);
}

static void live_begun(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;

    l->calling = 0;
    if (status == -ENOTCONN) {
        /* whether the freeze or the backup happened is unknown: look once
         * libvirt is back (now, when it is back already) */
        hs_log(HS_LOG_WARN, "job %s: %s", cap->job_id, call->err.msg);
        l->state = LIVE_LOOKING;
        if (l->look_after || l->cancel) {
            l->look_after = 0;
            live_look_now(l);
        }
        return;
    }
    if (status < 0)
        hs_err_adopt(cap->err, &call->err, status);
    if (!l->begun) {
        l->state = LIVE_IDLE;
        l->end_status = status;
        snprintf(l->end_msg, sizeof(l->end_msg), "%s", call->err.msg);
        live_finish(l);
        return;
    }
    hs_log(HS_LOG_DEBUG, "job %s: backup of '%s' begun", cap->job_id, cap->info->name);
    if (l->state == LIVE_BEGINNING)
        l->state = LIVE_RUNNING; /* else the end events came first */
    if (l->look_after) {
        l->look_after = 0;
        live_look_now(l);
        return;
    }
    if (l->cancel || status < 0 || cap->domain_gone)
        live_send_abort(l); /* a thaw that failed ends the backup too */
    live_finish(l);
}

static int live_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct live *l = hs__calloc(1, sizeof(*l));
    size_t i;
    int rc;

    l->cap = cap;
    l->cb = cb;
    l->call.data = l->stats_call.data = l;
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
    cJSON_AddBoolToObject(cap->journal->doc, "thawed", 1);
    l->journal_thawed = hs__journal_render(cap->journal);
    rc = hs__virt_queue(cap->virt, &l->call, cap->info->uuid, live_begin, live_begun);
    if (rc < 0)
        return hs_err_set(cap->err, rc, HS_ERR_LIBVIRT, 0,
                          "libvirt connection lost before the backup of '%s' began",
                          cap->info->name);
    l->calling = 1;
    l->waiting = 1;
    l->state = LIVE_BEGINNING;
    return 0;
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
            live_end(l, LIVE_ENDED, 0, "");
        return;
    }
    snprintf(msg, sizeof(msg), "backup of domain '%s' %s: %s", cap->info->name,
             l->abort_sent ? "canceled" : "failed", errmsg);
    live_end(l, LIVE_ENDED, l->cancel ? -ECANCELED : -EIO, msg);
}

static void live_block_job(struct hs_capture *cap, const char *disk, int type, int status)
{
    struct live *l = cap->priv;
    char msg[384];

    if (!l || type != VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP)
        return;
    if (status == VIR_DOMAIN_BLOCK_JOB_COMPLETED) {
        if (++l->disks_done >= cap->ndisks && l->job_ok)
            live_end(l, LIVE_ENDED, 0, "");
    } else if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED) {
        snprintf(msg, sizeof(msg), "backup of disk '%s' of domain '%s' %s", disk, cap->info->name,
                 status == VIR_DOMAIN_BLOCK_JOB_FAILED ? "failed"
                 : l->abort_sent                       ? "was canceled"
                                                       : "was canceled by someone else");
        live_end(l, LIVE_ENDED, l->cancel ? -ECANCELED : -EIO, msg);
    }
}

static void live_lifecycle(struct hs_capture *cap, int event, int detail)
{
    struct live *l = cap->priv;

    if (!hs__backend_domain_gone(cap, event, detail) || !l)
        return;
    /* QEMU is gone and with it the backup and any freeze: no end event may come */
    live_end(l, LIVE_ENDED, -ESRCH, cap->err->msg);
}

/* Worker: once libvirt is back, is our backup still running? Thaws what is
 * owed on the way. A backup that completed meanwhile is told by libvirt's
 * stats of the last completed job and by our targets being there. */
static int live_look(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    virTypedParameterPtr params = NULL;
    int type = 0, op = 0, n = 0, i, active;
    virDomainBlockJobInfo bj;
    size_t k, busy;

    l->look_active = l->look_done = 0;
    if (live_thaw(call, l) < 0)
        return call->err.code;
    active = live_ours_active(l->cap, call->dom);
    if (active < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the backup job of domain '%s'",
                           l->cap->info->name);
    if (active) {
        l->look_active = 1;
        return 0;
    }
    if (virDomainGetJobStats(call->dom, &type, &params, &n, VIR_DOMAIN_JOB_STATS_COMPLETED) == 0) {
        virTypedParamsGetInt(params, n, VIR_DOMAIN_JOB_OPERATION, &op);
        virTypedParamsFree(params, n);
    }
    if (type != VIR_DOMAIN_JOB_COMPLETED || op != VIR_DOMAIN_JOB_OPERATION_BACKUP)
        return 0;
    /* a backup completed: ours if it made our targets (the scratch is this job's) */
    for (k = 0; k < l->cap->ndisks; k++)
        if (access(l->cap->disks[k].pit_path, F_OK) < 0)
            return 0;
    /* QEMU lets go of the targets just after the job ends */
    for (i = 0; i < 50; i++) {
        for (busy = 0, k = 0; k < l->cap->ndisks; k++)
            busy += virDomainGetBlockJobInfo(call->dom, l->cap->disks[k].disk->target, &bj, 0) == 1;
        if (!busy)
            break;
        usleep(20 * 1000);
    }
    l->look_done = 1;
    return 0;
}

static void live_looked(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;
    char msg[384];

    if (l->state == LIVE_LOOKING && status == -ENOTCONN && !l->cancel) {
        live_call_done(l); /* lost again: the next reconnect looks again */
        return;
    }
    if (l->state == LIVE_LOOKING) {
        if (status == 0 && l->look_active) {
            hs_log(HS_LOG_INFO, "job %s: the backup of '%s' runs on after the reconnect",
                   l->cap->job_id, l->cap->info->name);
            l->state = LIVE_RUNNING;
            l->begun = 1;
        } else if (status == 0 && l->look_done) {
            live_end(l, LIVE_ENDED, 0, "");
        } else {
            snprintf(msg, sizeof(msg),
                     "the libvirt connection was lost during the backup of domain '%s'%s%s",
                     l->cap->info->name, status < 0 ? ": " : "", status < 0 ? call->err.msg : "");
            /* not running: nothing to abort (a failed look leaves it to release) */
            live_end(l, status < 0 ? LIVE_UNKNOWN : LIVE_ENDED, status < 0 ? status : -ECONNRESET,
                     msg);
        }
    }
    l->calling = 0;
    if (l->state == LIVE_RUNNING && l->cancel)
        live_send_abort(l);
    live_call_done(l);
}

static void live_look_now(struct live *l)
{
    if (l->state == LIVE_RUNNING)
        l->state = LIVE_LOOKING;
    if (l->state != LIVE_LOOKING || l->calling)
        return;
    live_send(l, live_look, live_looked);
}

static void live_reconnected(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (!l)
        return;
    if (l->calling) {
        l->look_after = 1; /* the call in flight completes first */
        return;
    }
    /* events may have been lost with the connection */
    live_look_now(l);
}

/* Worker: the backup's progress. */
static int live_stats(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    virTypedParameterPtr params = NULL;
    int type, n = 0;

    if (virDomainGetJobStats(call->dom, &type, &params, &n, 0) < 0)
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
    if (status == 0 && l->total && l->state == LIVE_RUNNING && l->cap->on_progress)
        l->cap->on_progress(l->cap, l->processed, l->total);
    live_finish(l);
}

static void live_progress(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (!l || l->state != LIVE_RUNNING || l->stats_busy)
        return;
    if (hs__virt_queue(cap->virt, &l->stats_call, cap->info->uuid, live_stats, live_stats_done) ==
        0)
        l->stats_busy = 1;
}

static void live_cancel(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (!l)
        return;
    l->cancel = 1;
    if (l->state == LIVE_LOOKING)
        live_look_now(l); /* ends the capture unless libvirt is back to look */
    else
        live_send_abort(l);
}

/* Worker: no backup of ours and no frozen filesystem is left. */
static int live_cleanup(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;
    int rc = 0;

    if (l->abort_owed && backup_abort(call->dom, l->cap->scratch) < 0)
        rc = hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                         l->cap->info->name);
    if (live_thaw(call, l) < 0 && rc == 0)
        rc = call->err.code;
    return rc;
}

static void live_cleaned(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;

    l->calling = 0;
    if (status == 0 || status == -ESRCH) {
        /* done, or the domain is gone and with it all there was to undo */
        l->state = LIVE_ENDED;
        l->thaw_owed = 0;
        status = 0;
    } else if (status != -ENOTCONN) {
        hs_err_adopt(cap->err, &call->err, status);
    }
    l->cb(cap, status);
}

static int live_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct live *l = cap->priv;
    int rc;

    if (!l || cap->domain_gone)
        return 1;
    /* the whole rule: abort what runs or may run, thaw what may be frozen */
    l->abort_owed = l->state == LIVE_RUNNING || l->state == LIVE_LOOKING ||
                    l->state == LIVE_UNKNOWN;
    if (!l->abort_owed && !l->thaw_owed)
        return 1;
    l->cb = cb;
    rc = hs__virt_queue(cap->virt, &l->call, cap->info->uuid, live_cleanup, live_cleaned);
    if (rc == 0)
        l->calling = 1;
    return rc; /* -ENOTCONN: the job calls again once the connection is back */
}

static void live_destroy(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (l) {
        free(l->journal_text);
        free(l->journal_thawed);
        free(l->xml);
    }
    free(l);
    cap->priv = NULL;
}

/* Worker: a dead run's live job: its backup aborted, its freeze thawed. */
static void live_recover(virConnectPtr conn, const cJSON *doc, cJSON *entry)
{
    const char *scratch = hs__jstr(doc, "scratch");
    virDomainPtr dom = hs__recover_domain(conn, doc, entry);
    struct hs_err err = {0};
    char action[128] = "";
    int rc;

    if (!dom)
        return;
    if (virDomainIsActive(dom) == 1 && scratch) {
        rc = backup_abort(dom, scratch);
        if (rc < 0)
            hs_err_virt(&err, -EIO, "cannot abort the backup job");
        else if (rc > 0)
            snprintf(action, sizeof(action), "backup job aborted");
        /* a freeze with no thaw recorded: thaw (harmless when nothing is frozen) */
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "quiesce")) &&
            !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "thawed"))) {
            if (virDomainFSThaw(dom, NULL, 0, 0) < 0) {
                /* no agent to ask: then it could not have frozen anything either */
                struct hs_err terr = {0};

                hs_err_virt(&terr, -EIO, "cannot thaw the filesystems");
                cJSON_AddStringToObject(entry, "warning", terr.msg);
            } else
                snprintf(action + strlen(action), sizeof(action) - strlen(action), "%sthawed",
                         action[0] ? ", " : "");
        }
    }
    if (err.code)
        cJSON_AddStringToObject(entry, "error", err.msg);
    else
        cJSON_AddStringToObject(entry, "action",
                                action[0] ? action : "none: no backup of the dead run was left");
    virDomainFree(dom);
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
    .recover = live_recover,
};
