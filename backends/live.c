/*
 * live and stream: libvirt's backup API, in push mode (live) and in pull
 * mode (stream).
 *
 * stream: one virDomainBackupBegin exports every selected disk, as of the
 * instant of the call, on an NBD server on a unix socket in the job's
 * scratch directory (nbd/sock, a directory QEMU's user owns, as QEMU makes
 * the socket), with a copy-before-write scratch file per disk that holds
 * only the old contents of blocks the guest overwrites while the export is
 * open. Capture ends once the backup has begun; the job streams the exports
 * and release ends the backup (virDomainAbortJob). While it runs, a watch
 * reads the scratch filesystem's free space and the scratch files'
 * allocation every HS_WATCH_MS: before the filesystem fills (a full one
 * would fail the guest's writes), the backup is ended and the job fails
 * saying why; the most scratch held is reported.
 *
 * live: one virDomainBackupBegin copies
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
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "chain.h"
#include "util.h"
#define HS_LOG_TAG "live"
#include "log.h"

/* what the scratch filesystem keeps free while a pull backup runs: a tenth,
 * within these bounds */
#define HS_SCRATCH_MARGIN_MIN (4ull << 20)
#define HS_SCRATCH_MARGIN_MAX (256ull << 20)

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
    int ioerror;     /* QEMU paused the guest on a write error (the event) */
    int resumed;     /* release resumed it (worker writes) */
    size_t disks_done;
    unsigned long long processed, total;
    int end_status;
    char end_msg[384];
    /* stream (pull mode) */
    int pull;
    char *nbd_dir;  /* the socket's directory, QEMU's user's */
    int scratch_full; /* the watch ended the backup */
    int gone_reason;  /* release found the domain shut off: why (worker writes), or -1 */
    int releasing;    /* release has begun: it owns the call */
    int release_after; /* release waits for the call in flight */
};

/* stream: a disk's copy-before-write scratch, where push writes its copy */
static void stream_cbw_path(const struct hs_capture *cap, const struct hs_disk *disk, char *buf,
                            size_t len)
{
    snprintf(buf, len, "%s/%s.cbw.qcow2", cap->scratch, disk->target);
}

static char *live_backup_xml(struct hs_capture *cap, const struct live *l)
{
    const struct hs_domain_info *info = cap->info;
    char *xml, *next, *dev, *file, mode[512] = "";
    size_t i, k;
    int sel;

    if (l->pull) {
        file = hs__xml_escape(cap->disks[0].nbd_socket);
        xml = hs__asprintf("<domainbackup mode='pull'><server transport='unix' socket='%s'/>"
                           "<disks>",
                           file);
        free(file);
    } else {
        xml = hs__strdup("<domainbackup mode='push'><disks>");
    }
    for (i = 0; i < info->ndisks; i++) {
        for (sel = -1, k = 0; k < cap->ndisks; k++)
            if (cap->disks[k].disk == &info->disks[i])
                sel = (int)k;
        dev = hs__xml_escape(info->disks[i].target);
        if (sel < 0) {
            /* disks not named would be backed up too */
            next = hs__asprintf("%s<disk name='%s' backup='no'/>", xml, dev);
        } else if (l->pull) {
            char cbw[4096];

            stream_cbw_path(cap, &info->disks[i], cbw, sizeof(cbw));
            file = hs__xml_escape(cbw);
            if (cap->chain)
                hs__chain_backup_mode(cap->chain, (size_t)sel, mode, sizeof(mode));
            next = hs__asprintf("%s<disk name='%s' backup='yes' exportname='%s' type='file'%s>"
                                "<scratch file='%s'/><driver type='qcow2'/></disk>",
                                xml, dev, dev, mode, file);
            free(file);
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

/* Worker: abort the backup of @scratch if it runs, and wait until it has
 * gone: 1 aborted, 0 none of ours, -EAGAIN when libvirt cannot tell (ask
 * again: it is not \"not ours\"), -EIO when the abort failed. */
static int backup_abort(virDomainPtr dom, const char *scratch)
{
    int rc = 0, in = backup_in(dom, scratch);
    useconds_t waited = 0, step = 1000;

    if (in < 0)
        return -EAGAIN;
    if (in == 0)
        return 0;
    if (virDomainAbortJob(dom) < 0)
        rc = -EIO;
    /* the abort concludes asynchronously, mostly within milliseconds: leave
     * no job behind, asking again at 1, 2, 4 ... 100 ms, for 10 s at most */
    while (waited < 10 * 1000 * 1000 && (in = backup_in(dom, scratch)) == 1) {
        usleep(step);
        waited += step;
        step = step * 2 > 100 * 1000 ? 100 * 1000 : step * 2;
    }
    if (in != 0)
        return in < 0 ? -EAGAIN : -EIO; /* still there, or cannot tell: not done */
    return rc < 0 ? rc : 1;
}

/* Worker: a guest hotsnap found running that QEMU paused on a write error
 * while our backup was on it: a copy-before-write into a scratch whose
 * filesystem filled (QEMU 7.2's copy-before-write breaks the guest's write
 * then, and the disk's error policy pauses the guest). Once the backup is
 * gone its writes go to its own disk again: resumed, and QEMU retries the
 * write it held. 1 resumed, 0 nothing to do. */
static int resume_if_ioerror(virDomainPtr dom)
{
    int state, reason;

    if (virDomainGetState(dom, &state, &reason, 0) < 0 || state != VIR_DOMAIN_PAUSED ||
        reason != VIR_DOMAIN_PAUSED_IOERROR)
        return 0;
    return virDomainResume(dom) == 0;
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

/* Worker: the directory QEMU makes the NBD socket in: its user's alone
 * (the job's scratch above it is root's, traversable). */
static int live_nbd_dir(struct hs_virt_call *call, struct live *l)
{
    const struct hs_domain_info *info = l->cap->info;
    long uid = info->qemu_uid, gid = info->qemu_gid;
    struct passwd *pw;

    if (uid < 0 && (pw = getpwnam("libvirt-qemu")) != NULL) {
        uid = (long)pw->pw_uid;
        gid = (long)pw->pw_gid;
    }
    if (uid < 0)
        return hs_err_set(&call->err, -ENOENT, HS_ERR_SYS, 0,
                          "cannot tell which user QEMU runs as for domain '%s' (no DAC label, "
                          "no user libvirt-qemu): use --mode live",
                          info->name);
    if ((mkdir(l->nbd_dir, 0700) < 0 && errno != EEXIST) ||
        chown(l->nbd_dir, (uid_t)uid, (gid_t)gid) < 0 || chmod(l->nbd_dir, 0700) < 0)
        return hs_err_set(&call->err, -errno, HS_ERR_SYS, errno, "cannot prepare '%s': %s",
                          l->nbd_dir, strerror(errno));
    return 0;
}

/* Worker, --incremental: each disk checked, then the backup begun with
 * its checkpoint; when libvirt refuses the incremental, once more with
 * every disk in full (the chain starts again), saying why. */
static int live_begin_chain(struct hs_virt_call *call, struct live *l)
{
    struct hs_capture *cap = l->cap;
    struct hs_chain *c = cap->chain;
    char **all = hs__calloc(cap->info->ndisks + 1, sizeof(char *)), *cpxml, msg[300];
    virDomainCheckpointPtr cp;
    size_t i, incr = 0;
    int rc = 0, tries;

    for (i = 0; i < cap->info->ndisks; i++)
        all[i] = cap->info->disks[i].target;
    hs__chain_check(c, call->dom);
    cpxml = hs__chain_checkpoint_xml(c, all, cap->info->ndisks);
    for (tries = 0; tries < 2; tries++) {
        for (incr = 0, i = 0; i < c->ndisks; i++)
            incr += (size_t)c->disks[i].incremental;
        free(l->xml);
        l->xml = live_backup_xml(cap, l);
        if (virDomainBackupBegin(call->dom, l->xml, cpxml, 0) == 0) {
            l->begun = 1;
            break;
        }
        rc = hs_err_virt(&call->err, -EIO, "backup of domain '%s' did not start",
                         cap->info->name);
        if (!incr || virConnectIsAlive(virDomainGetConnect(call->dom)) != 1)
            break;
        snprintf(msg, sizeof(msg), "libvirt refused the incremental backup (%.200s)",
                 call->err.msg);
        hs__chain_all_full(c, msg);
        hs_err_clear(&call->err);
        rc = 0;
    }
    free(cpxml);
    free(all);
    if (l->begun && (cp = virDomainCheckpointLookupByName(call->dom, c->name, 0)) != NULL) {
        /* as the chain file keeps it, for a redefine */
        c->name_xml = virDomainCheckpointGetXMLDesc(cp, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
        hs__chain_strip_parent(c->name_xml);
        virDomainCheckpointFree(cp);
    }
    return rc;
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
    if (l->pull && live_nbd_dir(call, l) < 0)
        return call->err.code;
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
    if (cap->chain)
        rc = live_begin_chain(call, l);
    else if (virDomainBackupBegin(call->dom, l->xml, NULL, 0) < 0)
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

static int live_release_send(struct live *l);

static void live_call_done(struct live *l)
{
    int rc;

    l->calling = 0;
    if (l->release_after) {
        l->release_after = 0;
        rc = live_release_send(l);
        if (rc != 0)
            l->cb(l->cap, rc == 1 ? 0 : rc);
        return;
    }
    if (l->look_after && !l->releasing) {
        l->look_after = 0;
        live_look_now(l);
        return;
    }
    live_finish(l);
}

static int backup_abort(virDomainPtr dom, const char *scratch);

static int live_abort(struct hs_virt_call *call, virConnectPtr conn)
{
    struct live *l = call->data;

    /* a pull backup sends no end event of its own: wait until it has gone */
    if (l->pull && backup_abort(call->dom, l->cap->scratch) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                           l->cap->info->name);
    if (l->pull && l->cap->dom_state == VIR_DOMAIN_RUNNING && resume_if_ioerror(call->dom))
        l->resumed = 1; /* the watch ended it: the guest's writes go to its disk again */
    if (!l->pull && live_ours_active(l->cap, call->dom) == 1 && virDomainAbortJob(call->dom) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                           l->cap->info->name);
    return 0;
}

/* Loop: a resume by a call of ours, told once the job releases. */
static void live_tell_resumed(struct live *l)
{
    if (!l->resumed)
        return;
    l->resumed = l->ioerror = 0;
    snprintf(l->cap->release_warning, sizeof(l->cap->release_warning),
             "paused by QEMU on a write error of the backup's scratch; resumed once the "
             "backup ended");
}

static void live_aborted(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;

    live_tell_resumed(l);
    if (status < 0)
        hs_log(HS_LOG_DEBUG, "job %s: abort: %s", l->cap->job_id, call->err.msg);
    else
        l->abort_sent = 1;
    if (status == -ENOTCONN && l->state == LIVE_RUNNING)
        live_end(l, LIVE_UNKNOWN, -ENOTCONN, call->err.msg);
    else if (status == 0 && l->pull && l->state == LIVE_RUNNING)
        live_end(l, LIVE_ENDED, l->cancel ? -ECANCELED : -EIO, l->scratch_full ? l->cap->err->msg
                                                                : "the backup was ended");
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
    if (l->cancel || status < 0 || cap->domain_gone) {
        live_send_abort(l); /* a thaw that failed ends the backup too */
    } else if (l->pull && l->state == LIVE_RUNNING && l->waiting) {
        /* the exports are open: the capture is done, the backup runs on
         * until release */
        l->waiting = 0;
        l->cb(cap, 0);
        return;
    }
    live_finish(l);
}

static int live_start(struct hs_capture *cap, hs_capture_cb cb, int pull)
{
    struct live *l = hs__calloc(1, sizeof(*l));
    size_t i;
    int rc;

    l->cap = cap;
    l->cb = cb;
    l->pull = pull;
    l->gone_reason = -1;
    l->call.data = l->stats_call.data = l;
    cap->priv = l;
    l->nbd_dir = hs__asprintf("%s/nbd", cap->scratch);
    for (i = 0; i < cap->ndisks; i++) {
        if (pull) {
            cap->disks[i].nbd_socket = hs__asprintf("%s/sock", l->nbd_dir);
            cap->disks[i].nbd_export = hs__strdup(cap->disks[i].disk->target);
            continue;
        }
        cap->disks[i].pit_path =
            hs__asprintf("%s/%s.backup.qcow2", cap->scratch, cap->disks[i].disk->target);
        cap->disks[i].pit_format = hs__strdup("qcow2");
    }
    cap->exported = pull;
    /* QEMU itself opens the backup targets in the scratch directory */
    if (hs__path_traversable(cap->scratch, cap->err, "scratch directory") < 0)
        return cap->err->code;
    l->xml = live_backup_xml(cap, l);
    cJSON_AddStringToObject(cap->journal->doc, "backend", pull ? "stream" : "live");
    cJSON_AddStringToObject(cap->journal->doc, "step", "backup");
    cJSON_AddBoolToObject(cap->journal->doc, "quiesce", cap->quiesce != HS_QUIESCE_OFF);
    cJSON_AddBoolToObject(cap->journal->doc, "running", cap->dom_state == VIR_DOMAIN_RUNNING);
    if (cap->chain) {
        /* before it exists: a dead run's checkpoint is found and goes */
        cJSON_AddStringToObject(cap->journal->doc, "checkpoint", cap->chain->name);
        cJSON_AddStringToObject(cap->journal->doc, "chain_file", cap->chain->file);
    }
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

static int live_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    return live_start(cap, cb, 0);
}

static int stream_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    return live_start(cap, cb, 1);
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

    if (l && event == VIR_DOMAIN_EVENT_SUSPENDED && detail == VIR_DOMAIN_EVENT_SUSPENDED_IOERROR)
        l->ioerror = 1; /* release looks, and resumes it once the backup is gone */
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
    /* a backup completed: ours if it made our targets (the scratch is this job's);
     * a pull backup never completes by itself */
    for (k = 0; k < l->cap->ndisks; k++)
        if (l->pull || access(l->cap->disks[k].pit_path, F_OK) < 0)
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
    if (l->state == LIVE_RUNNING && (l->cancel || l->cap->domain_gone)) {
        live_send_abort(l);
    } else if (l->pull && l->state == LIVE_RUNNING && l->waiting && !l->release_after &&
               !l->look_after) {
        /* a pull backup that runs on after the reconnect: its exports are
         * QEMU's, open still; the capture is done as if BackupBegin had
         * answered, and the job goes on to read them */
        l->waiting = 0;
        l->cb(l->cap, 0);
        return;
    }
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

    if (!l || l->releasing)
        return; /* release looks for itself */
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
    int rc = 0, i;

    if (l->abort_owed && (rc = backup_abort(call->dom, l->cap->scratch)) < 0) {
        if (rc == -EAGAIN)
            return -EAGAIN; /* the job asks again; nothing else is done meanwhile */
        rc = hs_err_virt(&call->err, -EIO, "cannot abort the backup of domain '%s'",
                         l->cap->info->name);
    } else {
        rc = 0;
    }
    if (live_thaw(call, l) < 0 && rc == 0)
        rc = call->err.code;
    if (rc == 0 && l->cap->dom_state == VIR_DOMAIN_RUNNING && resume_if_ioerror(call->dom))
        l->resumed = 1;
    /* the domain stopped meanwhile: with QEMU gone, so are the backup and any
     * freeze. An abort that failed may have met a QEMU on its way out: give
     * it a moment to be gone before calling the failure ours. */
    for (i = 0; rc < 0 && i < 30 && virDomainIsActive(call->dom) == 1; i++)
        usleep(100 * 1000);
    if (virDomainIsActive(call->dom) == 0) {
        int state, reason;

        if (virDomainGetState(call->dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_SHUTOFF)
            l->gone_reason = reason;
        hs_err_clear(&call->err);
        l->thaw_owed = 0;
        rc = 0;
    }
    /* the backup is over: its checkpoint becomes the chain's, or goes */
    if (rc == 0 && l->cap->chain && l->begun) {
        struct hs_err cerr = {0};

        if (!l->cap->published)
            hs__chain_discard(l->cap->chain, call->dom);
        else if (hs__chain_commit(l->cap->chain, call->dom, &cerr) < 0)
            snprintf(l->cap->release_warning, sizeof(l->cap->release_warning), "%s", cerr.msg);
    }
    return rc;
}

static void live_cleaned(struct hs_virt_call *call, int status)
{
    struct live *l = call->data;
    struct hs_capture *cap = l->cap;

    l->calling = 0;
    live_tell_resumed(l);
    if (l->gone_reason >= 0 && !cap->domain_gone)
        hs__backend_gone(cap, hs__shutoff_reason(l->gone_reason), l->gone_reason);
    if (status == 0 || status == -ESRCH || (status < 0 && cap->domain_gone)) {
        /* done, or the domain is gone and with it all there was to undo */
        l->state = LIVE_ENDED;
        l->thaw_owed = 0;
        status = 0;
    } else if (status != -ENOTCONN && status != -EAGAIN) {
        hs_err_adopt(cap->err, &call->err, status);
    }
    l->cb(cap, status);
}

/* As for ops->release, once no call of ours is in flight. */
static int live_release_send(struct live *l)
{
    struct hs_capture *cap = l->cap;
    int rc;

    if (cap->domain_gone)
        return 1;
    /* the whole rule: abort what runs or may run, thaw what may be frozen */
    l->abort_owed = l->state == LIVE_RUNNING || l->state == LIVE_LOOKING ||
                    l->state == LIVE_UNKNOWN;
    if (!l->abort_owed && !l->thaw_owed && !l->ioerror)
        return 1;
    rc = hs__virt_queue(cap->virt, &l->call, cap->info->uuid, live_cleanup, live_cleaned);
    if (rc == 0)
        l->calling = 1;
    return rc; /* -ENOTCONN: the job calls again once the connection is back */
}

static int live_release(struct hs_capture *cap, hs_capture_cb cb)
{
    struct live *l = cap->priv;

    if (!l || cap->domain_gone)
        return 1;
    l->releasing = 1;
    l->cb = cb;
    if (l->calling) {
        /* a stream's look or abort is in flight: release follows it */
        l->release_after = 1;
        return 0;
    }
    return live_release_send(l);
}

/* stream: every HS_WATCH_MS while the export is open (loop thread: a
 * statvfs and a stat per disk of a local filesystem, microseconds). */
static void stream_watch(struct hs_capture *cap)
{
    struct live *l = cap->priv;
    char path[4096];
    struct statvfs vfs;
    struct stat st;
    uint64_t cbw = 0, left, total, margin;
    size_t i;

    if (!l || l->state != LIVE_RUNNING || l->scratch_full)
        return;
    for (i = 0; i < cap->ndisks; i++) {
        stream_cbw_path(cap, cap->disks[i].disk, path, sizeof(path));
        if (stat(path, &st) == 0)
            cbw += (uint64_t)st.st_blocks * 512;
    }
    if (cbw > cap->scratch_peak)
        cap->scratch_peak = cbw;
    if (statvfs(cap->scratch, &vfs) < 0)
        return;
    left = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    total = (uint64_t)vfs.f_blocks * vfs.f_frsize;
    /* room for what a guest can write between two looks, and then some */
    margin = total / 10;
    if (margin < HS_SCRATCH_MARGIN_MIN)
        margin = HS_SCRATCH_MARGIN_MIN;
    if (margin > HS_SCRATCH_MARGIN_MAX)
        margin = HS_SCRATCH_MARGIN_MAX;
    if (left >= margin)
        return;
    l->scratch_full = 1;
    hs_err_set(cap->err, -ENOSPC, HS_ERR_SYS, ENOSPC,
               "the scratch filesystem of '%s' is nearly full (%llu MiB left, %llu MiB of them "
               "held for domain '%s''s overwritten blocks): its backup was ended before the "
               "guest's writes could fail",
               cap->scratch, (unsigned long long)(left >> 20), (unsigned long long)(cbw >> 20),
               cap->info->name);
    hs_log(HS_LOG_WARN, "job %s: %s", cap->job_id, cap->err->msg);
    live_send_abort(l);
}

static void live_destroy(struct hs_capture *cap)
{
    struct live *l = cap->priv;

    if (l) {
        free(l->nbd_dir);
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
        if (rc == -EAGAIN)
            hs_err_set(&err, -EAGAIN, HS_ERR_LIBVIRT, 0,
                       "libvirt cannot tell whether the backup still runs: looked at again");
        else if (rc < 0)
            hs_err_virt(&err, -EIO, "cannot abort the backup job");
        else if (rc > 0)
            snprintf(action, sizeof(action), "backup job aborted");
        /* found running, paused by QEMU on our scratch's write error */
        if (rc >= 0 && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "running")) &&
            resume_if_ioerror(dom))
            snprintf(action + strlen(action), sizeof(action) - strlen(action),
                     "%sresumed (paused on a write error of the backup's scratch)",
                     action[0] ? ", " : "");
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
    /* its checkpoint, unless its images became the chain's */
    if (!err.code && hs__jstr(doc, "checkpoint") && hs__jstr(doc, "chain_file"))
        hs__chain_recover(dom, hs__jstr(doc, "chain_file"), hs__jstr(doc, "checkpoint"), entry);
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

const struct hs_backend_ops hs_backend_stream = {
    .name = "stream",
    .exports = 1,
    .cbw_scratch = 1,
    .capture = stream_capture,
    .release = live_release,
    .lifecycle = live_lifecycle,
    .block_job = live_block_job,
    .job_completed = live_job_completed,
    .cancel = live_cancel,
    .reconnected = live_reconnected,
    .watch = stream_watch,
    .destroy = live_destroy,
    .recover = live_recover,
};
