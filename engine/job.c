/*
 * The snapshot job: one state machine per snapshot.
 *
 *   queued -> inspect -> prepare -> capture -> extract -> release -> upload -> cleanup -> done
 *
 * A streaming job (capture yields NBD exports, no compression) uploads from
 * the exports, which live until release:
 *
 *   ... -> capture -> extract (open the streams) -> upload -> release -> cleanup -> done
 *
 * On an error the job leaves by the same road: whatever capture changed is
 * released, the scratch directory is cleaned, and the job ends failed. The
 * visible task states are Nova's: image_snapshot_pending (up to capture),
 * image_pending_upload (extract, release), image_uploading, then done or
 * failed. Every transition is published as one JSON event (job_events.c);
 * jobs of one domain take turns (job_order.c).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chain.h"
#include "job_int.h"
#include "nbd_source.h"
#include "source.h"
#include "template.h"
#include "util.h"
#define HS_LOG_TAG "job"
#include "log.h"

#define HS_CONN_WAIT_MS 120000
#define HS_RELEASE_TRIES 10 /* 1 s, 2 s, ... 10 s apart: 55 s in all */

static void job_step(struct hs_job *job);
static void job_advance(struct hs_job *job);

/* The job streams its images from the capture's exports: it uploads before
 * it releases. Known once the backend is chosen. */
static int job_streams(const struct hs_job *job)
{
    return job->backend && job->backend->exports && !job->compress;
}

/* The one place that decides where a job goes next. */
static enum hs_job_state job_next(const struct hs_job *job)
{
    int failed = job->err.code != 0;
    int streams = job_streams(job);

    switch (job->state) {
    case HS_JOB_QUEUED:
        return failed ? HS_JOB_FAILED : HS_JOB_INSPECT;
    case HS_JOB_INSPECT:
        return failed ? HS_JOB_FAILED : HS_JOB_PREPARE;
    case HS_JOB_PREPARE:
        return failed ? HS_JOB_CLEANUP : HS_JOB_CAPTURE;
    case HS_JOB_CAPTURE:
        return failed ? HS_JOB_RELEASE : HS_JOB_EXTRACT;
    case HS_JOB_EXTRACT:
        return streams && !failed ? HS_JOB_UPLOAD : HS_JOB_RELEASE;
    case HS_JOB_RELEASE:
        return failed || streams ? HS_JOB_CLEANUP : HS_JOB_UPLOAD;
    case HS_JOB_UPLOAD:
        return streams ? HS_JOB_RELEASE : HS_JOB_CLEANUP;
    case HS_JOB_CLEANUP:
        return failed ? HS_JOB_FAILED : HS_JOB_DONE;
    case HS_JOB_DONE:
    case HS_JOB_FAILED:
        break;
    }
    return job->state;
}

/* Something the operator must see whatever the log level: a warning event
 * and a warning in the log. */

/* Capture, extract and upload each need a slot of their resource. A
 * streaming job takes an upload slot for its capture and keeps it through
 * the upload and the release: its exports are open only while they can be
 * read, and no more backups (and copy-before-write scratch) are on guests
 * than there are upload slots. */
static int job_needs_slot(const struct hs_job *job, enum hs_job_state s)
{
    if (s == HS_JOB_EXTRACT)
        return !job_streams(job); /* opening a stream is reading its map: no convert */
    return s == HS_JOB_CAPTURE || s == HS_JOB_UPLOAD;
}

static enum hs_res job_slot_res(const struct hs_job *job)
{
    if (job->state == HS_JOB_CAPTURE)
        return job_streams(job) ? HS_RES_UPLOAD : HS_RES_CAPTURE;
    return job->state == HS_JOB_EXTRACT ? HS_RES_EXTRACT : HS_RES_UPLOAD;
}

static void job_set_state(struct hs_job *job, enum hs_job_state s)
{
    int keep = job_streams(job) &&
               (s == HS_JOB_EXTRACT || s == HS_JOB_UPLOAD || s == HS_JOB_RELEASE) && !job->err.code;

    /* a slot is held for one state only (a streaming job's upload slot from
     * capture to its release); the scratch until cleanup */
    if (!keep)
        hs__sched_release(&job->eng->sched, &job->slot);
    job->slot_kept = keep && job->slot.held;
    if (s == HS_JOB_CLEANUP || s == HS_JOB_FAILED || s == HS_JOB_DONE)
        hs__sched_unreserve(&job->eng->sched, &job->slot);
    job->state = s;
    /* a step that needs a slot is published when it starts (job_step) */
    hs__job_publish_state(job, job_needs_slot(job, s) && !job->err.code && !job->slot_kept);
}

/* ---- inspect: everything that can be refused is refused here, before any change ---- */

/* Worker: find the domain (by name, else UUID), read it and parse it. */
static int job_inspect_call(struct hs_virt_call *call, virConnectPtr conn)
{
    struct hs_job *job = call->data;
    virDomainPtr dom;
    char *xml = NULL;
    int reason, rc;

    dom = virDomainLookupByName(conn, job->domain_arg);
    if (!dom)
        dom = virDomainLookupByUUIDString(conn, job->domain_arg);
    if (!dom) {
        if (virConnectIsAlive(conn) != 1)
            return hs_err_virt(&call->err, -EIO, "cannot look up domain '%s'", job->domain_arg);
        return hs_err_set(&call->err, -ENOENT, HS_ERR_INPUT, 0, "domain '%s' not found",
                          job->domain_arg);
    }
    if (virDomainGetUUID(dom, job->uuid) < 0 || !(xml = virDomainGetXMLDesc(dom, 0)) ||
        virDomainGetState(dom, &job->dom_state, &reason, 0) < 0) {
        rc = hs_err_virt(&call->err, -EIO, "cannot read domain '%s'", job->domain_arg);
        goto cleanup;
    }
    job->managed_save = virDomainHasManagedSaveImage(dom, 0) == 1;
    /* parsed aside: the loop may read job->info (hs_job_domain) meanwhile */
    job->read = hs__calloc(1, sizeof(*job->read));
    rc = hs__domain_parse(xml, job->read, &call->err);
    /* the uploader's check may touch the file system (a probe file): here, not on the loop */
    if (rc == 0)
        rc = job->up->ops->check(job->up, &call->err);
cleanup:
    free(xml);
    virDomainFree(dom);
    return rc;
}

static cJSON *job_props(struct hs_job *job, struct hs_job_disk *d)
{
    cJSON *p = cJSON_CreateObject();
    const struct hs_domain_info *info = &job->info;
    double gib = (double)d->img.virtual_size / (1024.0 * 1024.0 * 1024.0);

    cJSON_AddStringToObject(p, "image_type", job->rotation ? "backup" : "snapshot");
    if (job->rotation) {
        char at[40];

        /* Glance's created_at has whole seconds: this orders backups made within one */
        hs__iso8601(job->t_start, at, sizeof(at));
        cJSON_AddStringToObject(p, "backup_type", job->backup_type);
        cJSON_AddStringToObject(p, "hotsnap_backup_at", at);
    }
    cJSON_AddStringToObject(p, "instance_uuid", info->uuid);
    if (info->base_image_ref)
        cJSON_AddStringToObject(p, "base_image_ref", info->base_image_ref);
    if (info->owner_id)
        cJSON_AddStringToObject(p, "owner_id", info->owner_id);
    if (info->user_id)
        cJSON_AddStringToObject(p, "user_id", info->user_id);
    cJSON_AddStringToObject(p, "image_location", "snapshot");
    cJSON_AddStringToObject(p, "image_state", "available");
    cJSON_AddNumberToObject(p, "min_disk", ceil(gib));
    cJSON_AddNumberToObject(p, "min_ram", (double)(info->memory_kib / 1024));
    cJSON_AddStringToObject(p, "hotsnap_disk", d->img.disk);
    cJSON_AddStringToObject(p, "hotsnap_mode", job->backend->name);
    cJSON_AddStringToObject(p, "hotsnap_job", job->id);
    if (job->chain) {
        const struct hs_chain_disk *cdk = &job->chain->disks[d - job->disks];

        cJSON_AddBoolToObject(p, "hotsnap_incremental", cdk->incremental);
        cJSON_AddStringToObject(p, "hotsnap_checkpoint", job->chain->name);
        if (cdk->incremental) {
            cJSON_AddStringToObject(p, "hotsnap_parent", cdk->parent_id);
            cJSON_AddStringToObject(p, "hotsnap_backing_file", cdk->parent_file);
        }
        if (cdk->why_full[0])
            cJSON_AddStringToObject(p, "hotsnap_full_reason", cdk->why_full);
    }
    return p;
}

static int job_name_disks(struct hs_job *job, const int *idx, int n)
{
    struct hs_template_vars vars = {
        .domain = job->info.name, .uuid = job->info.uuid, .time = job->t_start};
    const char *fmt = hs_format_name(job->format);
    char name[HS_NAME_MAX + 1];
    char *tmpl;
    int i, rc = 0;

    /* several images of one domain need names of their own */
    if (n > 1 && !hs__template_has_disk(job->tmpl))
        tmpl = hs__asprintf("%s-{disk}", job->tmpl);
    else
        tmpl = hs__strdup(job->tmpl);
    job->disks = hs__calloc((size_t)n, sizeof(*job->disks));
    job->ndisks = (size_t)n;
    for (i = 0; i < n; i++) {
        struct hs_job_disk *d = &job->disks[i];

        d->idx = idx[i];
        vars.disk = job->info.disks[idx[i]].target;
        rc = hs__template_expand(i == 0 && n > 1 && !hs__template_has_disk(job->tmpl) ? job->tmpl
                                                                                      : tmpl,
                                 &vars, name, &job->err);
        if (rc < 0)
            break;
        d->name = hs__strdup(name);
        d->img.disk = job->info.disks[idx[i]].target;
        d->img.name = d->name;
        d->img.format = fmt;
    }
    free(tmpl);
    return rc;
}

static void job_watch_lifecycle(struct hs_virt_watch *w, int event, int detail);
static void job_watch_block_job(struct hs_virt_watch *w, const char *disk, int type, int status);
static void job_watch_job_completed(struct hs_virt_watch *w, int operation, const char *errmsg);
static void job_watch_conn(struct hs_virt_watch *w, int up);

/* On the loop, once the domain is read: 0 done (advance), 1 waiting for
 * another job of the domain, < 0 failed. */
static int job_inspected_check(struct hs_job *job)
{
    struct hs_select_in sel = {0};
    int n;
    int *idx;

    if (hs__job_domain_busy(job)) {
        hs__domain_info_clear(&job->info); /* read again when it is free */
        return 1;                          /* another job of ours works on this domain */
    }
    sel.mode = job->mode;
    sel.domain = job->info.name;
    sel.state = job->dom_state;
    sel.managed_save = job->managed_save;
    sel.has_backup = hs__virt_has_backup(job->eng->virt);
    sel.qemu_user = hs__domain_qemu_user_known(&job->info);
    job->backend = job->eng->select_backend(&sel, job->why, sizeof(job->why), &job->err);
    if (!job->backend)
        return job->err.code;
    idx = hs__calloc(job->info.ndisks, sizeof(int));
    n = hs__domain_select(&job->info, job->all_disks, idx, &job->err);
    if (n > 0)
        n = job_name_disks(job, idx, n) < 0 ? -EINVAL : n;
    free(idx);
    if (n < 0)
        return job->err.code;
    /* its events are this job's from now on */
    memcpy(job->watch.uuid, job->uuid, sizeof(job->uuid));
    job->holds = 1;
    return 0;
}

static void job_conn_wait(struct hs_job *job, int what);

/* Settle every job whose turn it is. */
static void job_settle(struct hs_engine *eng)
{
    struct hs_job *job;

    while ((job = hs__job_next_to_settle(eng)) != NULL) {
        job->inspect_deferred = 0;
        if (!job->err.code && job_inspected_check(job) == 1)
            job->wait_domain = 1;
        else
            job_advance(job);
    }
}

static void job_inspected(struct hs_virt_call *call, int status)
{
    struct hs_job *job = call->data;
    struct hs_engine *eng = job->eng;

    if (status == -ENOTCONN && !job->err.code) {
        /* nothing was changed: read again once libvirt is back (still
         * "inspecting", so younger jobs of the domain keep their place) */
        hs__domain_info_clear(job->read);
        free(job->read);
        job->read = NULL;
        job_conn_wait(job, JOB_WAIT_INSPECT);
        return;
    }
    job->inspecting = 0;
    if (job->read) {
        hs__domain_info_clear(&job->info);
        job->info = *job->read;
        free(job->read);
        job->read = NULL;
    }
    if (status < 0 && !job->err.code)
        hs_err_adopt(&job->err, &call->err, status);
    job->inspect_deferred = 1; /* read: in line to settle */
    job_settle(eng);
}

/* Read the domain on the worker pool: with many jobs, libvirt's round trips
 * must not hold the loop. 0, or < 0 (recorded) when nothing runs. */
static int job_inspect(struct hs_job *job)
{
    int rc;

    if (job->err.code) /* canceled while it waited */
        return job->err.code;
    job->icall.data = job;
    job->inspecting = 1;
    rc = hs__virt_queue(job->eng->virt, &job->icall, NULL, job_inspect_call, job_inspected);
    if (rc == -ENOTCONN) {
        job_conn_wait(job, JOB_WAIT_INSPECT);
        return 0;
    }
    if (rc < 0) {
        job->inspecting = 0;
        return hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot queue work: %s",
                          uv_strerror(rc));
    }
    return 0;
}

/* ---- prepare: the journal, then the scratch directory it names ---- */

/* Each image's id, chosen now and journaled before anything is made of it,
 * with where it goes (no credentials): recovery finds what a dead run left
 * in a store by them. */
static void job_journal_images(struct hs_job *job)
{
    cJSON *arr = cJSON_AddArrayToObject(job->journal->doc, "images");
    size_t i;

    cJSON_AddStringToObject(job->journal->doc, "target", job->target_shown);
    /* how many records a Glance upload may make again (hs__uuid_next) */
    cJSON_AddNumberToObject(job->journal->doc, "attempts", job->upload_attempts);
    for (i = 0; i < job->ndisks; i++) {
        struct hs_job_disk *d = &job->disks[i];
        cJSON *o = cJSON_CreateObject();

        if (job->image_id)
            snprintf(d->image_id, sizeof(d->image_id), "%s", job->image_id);
        else
            hs__uuid4(d->image_id);
        cJSON_AddStringToObject(o, "disk", d->img.disk);
        cJSON_AddStringToObject(o, "id", d->image_id);
        cJSON_AddStringToObject(o, "name", d->img.name);
        cJSON_AddStringToObject(o, "format", d->img.format);
        cJSON_AddItemToArray(arr, o);
    }
}

/* Worker: the file system can take milliseconds a file (ext4 looking for a
 * free inode among many just deleted), which a loop with many jobs cannot give. */
static void job_prepare_work(uv_work_t *w)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, work);
    char *text;
    int rc = hs__journal_open(job->eng->state_dir, job->id, &job->journal, &job->err);

    if (rc < 0) {
        job->work_rc = rc;
        return;
    }
    cJSON_AddStringToObject(job->journal->doc, "domain", job->info.name);
    cJSON_AddStringToObject(job->journal->doc, "uuid", job->info.uuid);
    cJSON_AddStringToObject(job->journal->doc, "scratch", job->scratch);
    cJSON_AddNumberToObject(job->journal->doc, "started", job->t_start);
    job_journal_images(job);
    text = hs__journal_render(job->journal);
    rc = hs__mkdir_p(job->scratch_root, 0711);
    if (rc == 0 && hs__dir_writable(job->scratch_root, &job->err, "scratch directory") < 0)
        rc = job->err.code;
    else if (rc < 0)
        hs_err_set(&job->err, rc, HS_ERR_INPUT, -rc, "cannot create scratch directory '%s': %s",
                   job->scratch_root, strerror(-rc));
    if (rc == 0 && job->chain)
        rc = hs__chain_load(job->chain, &job->err);
    if (rc == 0) {
        rc = hs__journal_write(job->journal, text);
        if (rc < 0)
            hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot write the journal '%s': %s",
                       job->journal->path, strerror(-rc));
    }
    /* QEMU (its own user) writes backups here: it may traverse, not list;
     * what hotsnap writes itself goes below, in root's alone */
    if (rc == 0 && (mkdir(job->scratch, 0711) < 0 || chmod(job->scratch, 0711) < 0)) {
        rc = -errno;
        hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot create '%s': %s", job->scratch,
                   strerror(-rc));
    }
    if (rc == 0) {
        char *out = hs__asprintf("%s/out", job->scratch);

        if (mkdir(out, 0700) < 0 || chmod(out, 0700) < 0) {
            rc = -errno;
            hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot create '%s': %s", out,
                       strerror(-rc));
        }
        free(out);
    }
    free(text);
    job->work_rc = rc;
}

static void job_after_work(uv_work_t *w, int status)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, work);

    if (status < 0)
        hs_err_set(&job->err, status, HS_ERR_SYS, -status, "worker failed: %s",
                   uv_strerror(status));
    job_advance(job);
}

static int job_queue(struct hs_job *job, uv_work_cb fn)
{
    int rc = uv_queue_work(job->eng->loop, &job->work, fn, job_after_work);

    if (rc < 0)
        hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot queue work: %s", uv_strerror(rc));
    return rc;
}

/* --incremental: the chain a pull backup goes on (the store's file is read
 * on the worker, in prepare). A shut-off guest has no checkpoints (libvirt
 * makes them of running guests only): its image is full and outside the
 * chain, which goes on from its last image next time. */
static void job_chain_new(struct hs_job *job)
{
    char **targets;
    size_t i;

    if (!job->incremental)
        return;
    if (job->backend != &hs_backend_stream) {
        hs__job_warn(job, "domain '%s' is %s: a full image, outside its incremental chain "
                     "(libvirt makes checkpoints of running guests only)",
                     job->info.name, job->backend == &hs_backend_offline ? "shut off" : "not running");
        return;
    }
    targets = hs__calloc(job->ndisks, sizeof(*targets));
    for (i = 0; i < job->ndisks; i++)
        targets[i] = (char *)job->disks[i].img.disk;
    job->chain = hs__chain_new(hs__dir_path(job->up), job->info.uuid, job->id, targets,
                               job->ndisks);
    free(targets);
    for (i = 0; i < job->ndisks; i++) {
        const struct hs_disk *disk = &job->info.disks[job->disks[i].idx];

        if (!disk->format || strcmp(disk->format, "qcow2"))
            job->chain->disks[i].nobitmap = 1; /* libvirt keeps bitmaps in qcow2 only */
    }
}

static int job_prepare(struct hs_job *job)
{
    job->scratch = hs__asprintf("%s/%s", job->scratch_root, job->id);
    job_chain_new(job);
    return job_queue(job, job_prepare_work);
}

/* ---- capture ---- */

static void job_tick_cb(uv_timer_t *t)
{
    struct hs_job *job = t->data;

    if (job->state == HS_JOB_CAPTURE && job->backend->progress)
        job->backend->progress(&job->cap);
}

static void job_capture_progress(struct hs_capture *cap, uint64_t done, uint64_t total)
{
    struct hs_job *job = hs_container_of(cap, struct hs_job, cap);

    hs__job_progress(job, "capture", 100.0 * (double)done / (double)total, done, total);
}

static void job_watch_cb(uv_timer_t *t)
{
    struct hs_job *job = t->data;

    job->backend->watch(&job->cap);
}

static void job_captured(struct hs_capture *cap, int status)
{
    struct hs_job *job = hs_container_of(cap, struct hs_job, cap);
    cJSON *ev;
    size_t i;

    uv_timer_stop(&job->tick);
    /* the exports are open until release: watch what they hold */
    if (status == 0 && cap->exported && job->backend->watch)
        uv_timer_start(&job->watch_t, job_watch_cb, HS_WATCH_MS, HS_WATCH_MS);
    if (job->wait_conn == JOB_WAIT_CAPTURE) {
        job->wait_conn = JOB_WAIT_NONE;
        uv_timer_stop(&job->conn_wait);
    }
    if (status == 0) {
        ev = hs__job_event(job, "captured");
        if (cap->frozen_ms >= 0)
            cJSON_AddNumberToObject(ev, "frozen_ms", round(cap->frozen_ms * 10.0) / 10.0);
        cJSON_AddBoolToObject(ev, "quiesced", cap->frozen_ms >= 0);
        if (cap->stall_ms >= 0)
            cJSON_AddNumberToObject(ev, "stall_ms", round(cap->stall_ms * 10.0) / 10.0);
        if (cap->warning[0])
            cJSON_AddStringToObject(ev, "warning", cap->warning);
        hs__engine_emit(job->eng, ev);
        for (i = 0; job->chain && i < job->chain->ndisks; i++)
            if (job->chain->disks[i].why_full[0]) /* "vdb: ...: full copy" */
                hs__job_warn(job, "%s", job->chain->disks[i].why_full);
    }
    if (status < 0)
        hs_err_set(&job->err, status, HS_ERR_SYS, -status, "capture of domain '%s' failed",
                   job->info.name);
    job_advance(job);
}

static int job_capture(struct hs_job *job)
{
    struct hs_capture *cap = &job->cap;
    size_t i;
    int rc;

    cap->loop = job->eng->loop;
    cap->virt = job->eng->virt;
    cap->job_id = job->id;
    cap->info = &job->info;
    cap->dom_state = job->dom_state;
    cap->scratch = job->scratch;
    cap->journal = job->journal;
    cap->err = &job->err;
    cap->quiesce = job->quiesce;
    cap->compress = job->compress;
    cap->frozen_ms = -1;
    cap->stall_ms = -1;
    cap->on_progress = job_capture_progress;
    cap->chain = job->chain;
    hs__job_progress_reset(job);
    cap->ndisks = job->ndisks;
    cap->disks = hs__calloc(job->ndisks, sizeof(*cap->disks));
    for (i = 0; i < job->ndisks; i++)
        cap->disks[i].disk = &job->info.disks[job->disks[i].idx];
    job->captured = 1;
    rc = job->backend->capture(cap, job_captured);
    if (rc == 0 && job->backend->progress)
        uv_timer_start(&job->tick, job_tick_cb, 1000, 1000);
    return rc;
}

/* ---- extract: qemu-img convert of each point-in-time file, then qemu-img info ---- */

/* A live backup that already is the image wanted (plain qcow2) is published
 * as it is: renamed and checked, not copied again. */
static int job_adopts_backup(const struct hs_job *job)
{
    return job->backend && job->backend->standalone_pit && job->format == HS_FORMAT_QCOW2 &&
           !job->compress;
}

static int job_extract_next(struct hs_job *job);

static void job_convert_progress(struct hs_proc *p, double pct)
{
    hs__job_progress(p->data, "extract", pct, 0, 0);
}

static void job_info_exit(struct hs_proc *p, int status)
{
    struct hs_job *job = p->data;
    struct hs_job_disk *d = &job->disks[job->cur];
    cJSON *info, *vs;
    struct stat st;

    job->proc = NULL;
    if (status == 0) {
        info = cJSON_Parse(p->capture);
        vs = cJSON_GetObjectItemCaseSensitive(info, "virtual-size");
        if (cJSON_IsNumber(vs))
            d->img.virtual_size = (uint64_t)vs->valuedouble;
        else
            status = hs_err_set(&job->err, -EIO, HS_ERR_QEMU_IMG, 0,
                                "qemu-img info of '%s' gave no virtual size", d->out_path);
        cJSON_Delete(info);
    } else {
        hs_err_set(&job->err, status, HS_ERR_QEMU_IMG, p->exit_status,
                   "qemu-img info of '%s' failed: %s", d->out_path, hs__proc_stderr(p));
    }
    if (status == 0 && stat(d->out_path, &st) == 0)
        d->img.size = (uint64_t)st.st_size;
    if (status < 0 || job->err.code) {
        job_advance(job);
        return;
    }
    job->cur++;
    if (job_extract_next(job) < 0)
        job_advance(job);
}

static void job_convert_exit(struct hs_proc *p, int status)
{
    struct hs_job *job = p->data;
    struct hs_job_disk *d = &job->disks[job->cur];
    char *argv[] = {"qemu-img", "info", "--output=json", d->out_path, NULL};
    int rc;

    job->proc = NULL;
    if (status < 0 && status != -ECANCELED && job->adopted) {
        hs_err_set(&job->err, status, HS_ERR_QEMU_IMG, p->exit_status,
                   "qemu-img check of the backup of disk '%s' of domain '%s' failed: %s",
                   d->img.disk, job->info.name, hs__proc_stderr(p));
    } else if (status == -ECANCELED) {
        hs_err_set(&job->err, status, HS_ERR_CANCELED, 0, "snapshot of domain '%s' canceled",
                   job->info.name);
    } else if (status < 0) {
        hs_err_set(&job->err, status, HS_ERR_QEMU_IMG,
                   p->term_signal ? -p->term_signal : p->exit_status,
                   "qemu-img convert of disk '%s' of domain '%s' failed (%s %d): %s", d->img.disk,
                   job->info.name, p->term_signal ? "signal" : "exit status",
                   p->term_signal ? p->term_signal : (int)p->exit_status, hs__proc_stderr(p));
    }
    if (job->err.code) {
        job_advance(job);
        return;
    }
    hs__job_progress(job, "extract", 100.0, 0, 0);
    rc = hs__proc_spawn(job->eng->loop, argv, 1 << 20, NULL, job_info_exit, job, &job->proc);
    if (rc < 0) {
        hs_err_set(&job->err, rc, HS_ERR_QEMU_IMG, 0, "cannot run qemu-img: %s", uv_strerror(rc));
        job_advance(job);
    }
}

/* ---- extract from an export: open its stream (map and layout), or convert from it ---- */

static void job_stream_opened(struct hs_nbd_source *src, int status, const struct hs_err *err,
                              void *data)
{
    struct hs_job *job = data;
    struct hs_job_disk *d = &job->disks[job->cur];
    struct hs_stream *st = hs__nbd_source_stream(src);

    if (status < 0) {
        const char *log_path = job->cap.disks[job->cur].nbd_log;
        char *log = log_path ? hs__read_file(log_path, 4096) : NULL;
        char *nl;

        /* the server's own words, when it said why: its first line */
        if (log && (nl = strchr(log, '\n')) != NULL)
            *nl = 0;
        if (!job->err.code)
            job->err_from_stream = 1;
        hs_err_set(&job->err, status, err->kind, err->detail, "disk '%s' of domain '%s': %s%s%s",
                   d->img.disk, job->info.name, log && *log ? "" : err->msg,
                   log && *log ? "the NBD server failed: " : "", log && *log ? log : "");
        free(log);
        job_advance(job);
        return;
    }
    d->img.size = st->size;
    d->img.virtual_size = hs__nbd_source_virtual_size(src);
    d->img.read_bytes = hs__nbd_source_guest_bytes(src);
    hs__job_progress(job, "extract", 100.0, 0, 0);
    job->cur++;
    if (job_extract_next(job) < 0)
        job_advance(job);
}

static int job_stream_open(struct hs_job *job, struct hs_job_disk *d, struct hs_capture_disk *cd)
{
    struct hs_nbd_export ex = {
        .socket = cd->nbd_socket, .argv = cd->nbd_argv, .name = cd->nbd_export};
    struct hs_chain_disk *cdk = job->chain ? &job->chain->disks[job->cur] : NULL;
    struct hs_nbd_source *src;
    char ctx[128];
    int rc;

    if (cdk && cdk->incremental) {
        /* libvirt exports the disk's dirty bitmap since the checkpoint as
         * backup-<disk>; the overlay names the previous image, beside it */
        snprintf(ctx, sizeof(ctx), "qemu:dirty-bitmap:backup-%s", cd->disk->target);
        ex.dirty_context = ctx;
        ex.backing = cdk->parent_file;
    }
    rc = hs__nbd_source_open(job->eng->loop, &ex, job->format == HS_FORMAT_QCOW2,
                             job->up->digest, job_stream_opened, NULL, job, &src, &job->err);
    if (rc < 0) {
        job->err_from_stream = 1; /* e.g. refused: QEMU may be on its way out */
        return rc;
    }
    d->src = hs__nbd_source_stream(src);
    return 0;
}

/* Close every image stream still open (the NBD connections end, and with
 * them an offline export's server). */
static void job_close_streams(struct hs_job *job)
{
    size_t i;

    for (i = 0; i < job->ndisks; i++) {
        hs__stream_close(job->disks[i].src);
        job->disks[i].src = NULL;
    }
}

/* Start the next disk's convert, or advance when all are done. 0, or a
 * negative errno (recorded) when nothing runs and the caller must advance. */
static int job_extract_next(struct hs_job *job)
{
    struct hs_job_disk *d;
    struct hs_capture_disk *cd;
    const char *fmt = hs_format_name(job->format);
    char *argv[16], *url = NULL;
    int n = 0, rc;

    if (job->cur >= job->ndisks || job->err.code) {
        job_advance(job);
        return 0;
    }
    d = &job->disks[job->cur];
    cd = &job->cap.disks[job->cur];
    if (cd->nbd_export && job_streams(job)) {
        hs__job_progress_reset(job);
        return job_stream_open(job, d, cd);
    }
    d->out_path = hs__asprintf("%s/out/%s.%s", job->scratch, d->img.disk, fmt);
    hs__job_progress_reset(job);
    job->adopted = job_adopts_backup(job);
    if (job->adopted) {
        /* a full backup is already the image: check it, no second copy */
        if (rename(cd->pit_path, d->out_path) < 0)
            return hs_err_set(&job->err, -errno, HS_ERR_SYS, errno, "cannot move '%s': %s",
                              cd->pit_path, strerror(errno));
        argv[n++] = "qemu-img";
        argv[n++] = "check";
        argv[n++] = "-q";
        argv[n++] = "-f";
        argv[n++] = (char *)fmt;
        argv[n++] = d->out_path;
        argv[n] = NULL;
        rc = hs__proc_spawn(job->eng->loop, argv, 0, NULL, job_convert_exit, job, &job->proc);
        if (rc < 0)
            return hs_err_set(&job->err, rc, HS_ERR_QEMU_IMG, 0, "cannot run qemu-img: %s",
                              uv_strerror(rc));
        return 0;
    }
    if (cd->nbd_export) {
        /* compressed from an export: qemu-img reads it once over NBD */
        if (!cd->nbd_socket)
            return hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                              "disk '%s' of domain '%s' has no NBD socket to convert from",
                              d->img.disk, job->info.name);
        url = hs__nbd_uri(cd->nbd_export, cd->nbd_socket);
    }
    argv[n++] = "qemu-img";
    argv[n++] = "convert";
    argv[n++] = "-p";
    argv[n++] = "-f";
    argv[n++] = url ? "raw" : cd->pit_format;
    argv[n++] = "-O";
    argv[n++] = (char *)fmt;
    if (job->compress && job->format == HS_FORMAT_QCOW2)
        argv[n++] = "-c";
    else
        argv[n++] = "-W"; /* out-of-order writes: faster, and the file is not read until done */
    argv[n++] = url ? url : cd->pit_path;
    argv[n++] = d->out_path;
    argv[n] = NULL;
    rc = hs__proc_spawn(job->eng->loop, argv, 0, job_convert_progress, job_convert_exit, job,
                        &job->proc);
    free(url);
    if (rc < 0)
        return hs_err_set(&job->err, rc, HS_ERR_QEMU_IMG, 0, "cannot run qemu-img: %s",
                          uv_strerror(rc));
    return 0;
}

/* ---- release ---- */

static int job_release(struct hs_job *job);

/* An export that broke because QEMU went away: the domain's end, once
 * known (an event, or what release found), says why. */
static void job_gone_says_why(struct hs_job *job)
{
    if (!job->err_from_stream || !job->cap.domain_gone)
        return;
    job->err_from_stream = 0;
    hs_err_clear(&job->err);
    hs_err_set(&job->err, -ESRCH, HS_ERR_LIBVIRT, 0, "domain '%s' was %s during its snapshot",
               job->info.name, job->cap.gone_how);
}

static void job_release_again_cb(uv_timer_t *t)
{
    struct hs_job *job = t->data;

    if (job_release(job) < 0)
        job_advance(job);
}

static void job_released(struct hs_capture *cap, int status)
{
    struct hs_job *job = hs_container_of(cap, struct hs_job, cap);

    if (status == -ENOTCONN) {
        /* lost during the release: it looks again on the next connection */
        job_conn_wait(job, JOB_WAIT_RELEASE);
        return;
    }
    if (status == -EAGAIN && job->release_tries < HS_RELEASE_TRIES) {
        /* libvirt could not tell whether what is ours still runs: ask again */
        hs_log(HS_LOG_WARN, "job %s: libvirt cannot tell whether the backup of '%s' still "
               "runs; looking again", job->id, job->info.name);
        job->release_tries++;
        uv_timer_start(&job->kick, job_release_again_cb, 1000u * (unsigned)job->release_tries, 0);
        return;
    }
    job->released = status == 0;
    if (cap->release_warning[0]) {
        hs__job_warn(job, "%s", cap->release_warning);
        cap->release_warning[0] = 0;
    }
    if (status == -EAGAIN)
        hs_err_set(&job->err, -EAGAIN, HS_ERR_LIBVIRT, 0,
                   "libvirt could not tell whether the backup of domain '%s' still runs; "
                   "hotsnap ends it once libvirt can",
                   job->info.name);
    job_gone_says_why(job);
    job_advance(job);
}

/* 0 when the release is under way or done (the job advances), < 0 when it
 * failed to start (recorded; the caller advances). */
static int job_release(struct hs_job *job)
{
    int rc;

    /* the exports end with the backup: nothing reads them any more */
    uv_timer_stop(&job->watch_t);
    job_close_streams(job);
    if (!job->captured) {
        job->released = 1;
        job_advance(job);
        return 0;
    }
    if (job->chain) {
        size_t i;

        job->cap.published = !job->err.code && !job->canceled;
        for (i = 0; i < job->ndisks; i++)
            job->cap.published &= job->chain->disks[i].image_id != NULL;
    }
    rc = job->backend->release(&job->cap, job_released);
    if (rc == 1) {
        job->released = 1;
        job_gone_says_why(job);
        job_advance(job);
        return 0;
    }
    if (rc == -ENOTCONN) {
        job_conn_wait(job, JOB_WAIT_RELEASE);
        return 0;
    }
    return rc;
}

/* ---- upload ---- */

static int job_upload_next(struct hs_job *job);

static void job_upload_progress(struct hs_upload_req *req)
{
    struct hs_job *job = req->data;

    hs__job_progress(job, "upload", req->size ? 100.0 * (double)req->sent / (double)req->size : 0,
                 req->sent, req->size);
}

static void job_upload_warn(struct hs_upload_req *req, const char *msg)
{
    hs__job_warn(req->data, "%s", msg);
}

static void job_uploaded(struct hs_upload_req *req, int status)
{
    struct hs_job *job = req->data;
    struct hs_job_disk *d = &job->disks[job->cur];

    job->uploading = 0;
    cJSON_Delete((cJSON *)req->props);
    req->props = NULL;
    if (status == 0 && d->src && hs__stream_digest(d->src)) {
        snprintf(d->digest, sizeof(d->digest), "%s", hs__stream_digest(d->src));
        d->img.hash_algo = hs__digest_name(d->src->algo);
        d->img.hash = d->digest;
        if (d->src->algo == HS_DIGEST_SHA512)
            d->img.sha512 = d->digest;
    }
    hs__stream_close(d->src);
    d->src = NULL;
    if (status < 0) {
        if (!job->err.code && job_streams(job) && status != -ECANCELED)
            job->err_from_stream = 1;
        if (req->left_behind[0])
            hs_err_set(&job->err, req->err.code ? req->err.code : status, req->err.kind,
                       req->err.detail, "%s; image record %s is left behind", req->err.msg,
                       req->left_behind);
        hs_err_adopt(&job->err, &req->err, status);
        hs__upload_req_clear(req);
        job_advance(job);
        return;
    }
    snprintf(d->image_id, sizeof(d->image_id), "%s", req->image_id);
    d->location = req->location;
    req->location = NULL;
    d->img.id = d->image_id;
    d->img.location = d->location;
    if (job->chain) {
        struct hs_chain_disk *cdk = &job->chain->disks[job->cur];

        free(cdk->image_id);
        free(cdk->image_file);
        cdk->image_id = hs__strdup(d->image_id);
        cdk->image_file = hs__asprintf("%s.%s", d->image_id, d->img.format);
        cdk->vsize = d->img.virtual_size;
        d->img.incremental = cdk->incremental;
        d->img.parent = cdk->incremental ? cdk->parent_id : NULL;
        d->img.full_reason = cdk->why_full[0] ? cdk->why_full : NULL;
    }
    job->cur++;
    if (job_upload_next(job) < 0)
        job_advance(job);
}

static int job_upload_next(struct hs_job *job)
{
    struct hs_upload_req *req = &job->req;
    struct hs_job_disk *d;
    int rc;

    if (job->cur >= job->ndisks || job->err.code) {
        job_advance(job);
        return 0;
    }
    d = &job->disks[job->cur];
    if (!d->src) {
        struct hs_source *file;

        rc = hs__source_open(job->eng->loop, d->out_path, d->img.size, job->up->digest, NULL,
                             NULL, &file,
                             &job->err);
        if (rc < 0)
            return rc;
        d->src = hs__source_stream(file);
    }
    memset(req, 0, sizeof(*req));
    snprintf(req->image_id, sizeof(req->image_id), "%s", d->image_id); /* journaled */
    req->src = d->src;
    req->name = d->name;
    req->format = d->img.format;
    req->size = d->img.size;
    req->virtual_size = d->img.virtual_size;
    req->props = job_props(job, d);
    req->on_progress = job_upload_progress;
    req->on_warn = job_upload_warn;
    req->rotation = job->rotation;
    req->data = job;
    hs__job_progress_reset(job);
    rc = job->up->ops->begin(job->up, req, job_uploaded);
    if (rc < 0) {
        cJSON_Delete((cJSON *)req->props);
        req->props = NULL;
        hs__stream_close(d->src);
        d->src = NULL;
        return hs_err_set(&job->err, req->err.code ? req->err.code : rc, req->err.kind,
                          req->err.detail, "%s", req->err.msg);
    }
    job->uploading = 1;
    return 0;
}

/* ---- cleanup ---- */

static void job_cleanup_work(uv_work_t *w)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, work);

    /* a capture not released may still use its scratch (a backup writing
     * its copy-before-write data there): it stays, for the recovery that
     * undoes the rest, and is removed with it */
    if (job->captured && !job->released)
        job->work_rc = 0;
    else
        job->work_rc = job->scratch ? hs__rm_rf(job->scratch) : 0;
}

static void job_cleanup_done(uv_work_t *w, int status)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, work);

    if (job->work_rc < 0)
        hs__job_warn(job, "cannot remove scratch '%s': %s", job->scratch, strerror(-job->work_rc));
    /* The journal goes once the domain is as it was and the scratch is gone;
     * else it stays for the next run to finish the job. */
    if ((job->captured && !job->released) || job->work_rc < 0) {
        hs__journal_abandon(job->journal);
        if (job->journal)
            hs__engine_orphaned(job->eng); /* the engine finishes it, once it can */
    } else {
        hs__journal_remove(job->journal);
    }
    job->journal = NULL;
    job_advance(job);
}

/* ---- the machine ---- */

static void job_kick_cb(uv_timer_t *t);

static void job_finish(struct hs_job *job)
{
    struct hs_job *other;

    job->t_end = hs__now();
    hs__virt_unwatch(job->eng->virt, &job->watch);
    job->holds = 0;
    hs__job_unlink(job);
    /* the domain is free: jobs waiting for it look again */
    for (other = job->eng->jobs; other; other = other->next) {
        if (other->wait_domain) {
            other->wait_domain = 0;
            uv_timer_start(&other->kick, job_kick_cb, 0, 0);
        }
    }
    job->cb(job, job->err.code, job->data);
}

static void job_slot_granted(struct hs_sched_req *req)
{
    job_step(req->data);
}

/* Scratch the job may fill, reserved before its capture: the allocated size
 * of each disk and its backing file (an upper bound for a compact image),
 * twice for a live backup that must be converted again, and an eighth of it
 * for what the guest overwrites meanwhile where a backup has copy-before-
 * write scratch. A stream reserves nothing: its capture takes an upload
 * slot, which bounds the backups on guests, and the watch ends a backup
 * before the scratch filesystem fills. */
static uint64_t job_scratch_estimate(const struct hs_job *job)
{
    int twice = job->backend && job->backend->standalone_pit && !job_adopts_backup(job);
    uint64_t total = 0, cbw;
    struct stat st;
    size_t i;

    for (i = 0; i < job->ndisks; i++) {
        const struct hs_disk *disk = &job->info.disks[job->disks[i].idx];

        if (disk->source && stat(disk->source, &st) == 0)
            total += (uint64_t)st.st_blocks * 512;
        if (disk->backing && stat(disk->backing, &st) == 0)
            total += (uint64_t)st.st_blocks * 512;
    }
    cbw = job->backend && job->backend->cbw_scratch ? total / 8 : 0;
    if (job_streams(job))
        return 0; /* never looked at: an upload slot reserves nothing */
    return (twice ? 2 * total : total) + cbw;
}

/* Capture, extract and upload run only with a slot of their resource. 1 when
 * the job waits for one (the step runs again once granted), 0 when it holds
 * it, < 0 when it can never have it. */
static int job_need_slot(struct hs_job *job, enum hs_res res)
{
    struct hs_sched_req *slot = &job->slot;
    int rc;

    if (slot->held && slot->res == res)
        return 0;
    slot->res = res;
    slot->data = job;
    slot->priority = job->priority;
    if (job->state == HS_JOB_CAPTURE && !slot->reserved)
        slot->scratch = job_scratch_estimate(job);
    rc = hs__sched_acquire(&job->eng->sched, slot, job_slot_granted);
    if (rc == -ENOSPC)
        return hs_err_set(&job->err, rc, HS_ERR_INPUT, 0,
                          "the images of domain '%s' need about %llu MiB of scratch, more than "
                          "the budget of %llu MiB",
                          job->info.name, (unsigned long long)(slot->scratch >> 20),
                          (unsigned long long)(job->eng->sched.budget >> 20));
    return rc < 0 ? rc : 1;
}

static void job_step(struct hs_job *job)
{
    int rc = 0;

    if (!job->err.code && job_needs_slot(job, job->state)) {
        rc = job_need_slot(job, job_slot_res(job));
        if (rc == 1)
            return;
        if (rc < 0) {
            job_advance(job);
            return;
        }
        if (!job->slot_kept)
            hs__job_publish_state(job, 0); /* it starts now */
    }
    switch (job->state) {
    case HS_JOB_QUEUED:
        job_advance(job);
        return;
    case HS_JOB_INSPECT:
        if (job_inspect(job) < 0)
            job_advance(job);
        return;
    case HS_JOB_PREPARE:
        rc = job_prepare(job);
        break;
    case HS_JOB_CAPTURE:
        rc = job_capture(job);
        break;
    case HS_JOB_EXTRACT:
        job->cur = 0;
        rc = job_extract_next(job);
        break;
    case HS_JOB_RELEASE:
        rc = job_release(job);
        break;
    case HS_JOB_UPLOAD:
        job->cur = 0;
        rc = job_upload_next(job);
        break;
    case HS_JOB_CLEANUP:
        rc = uv_queue_work(job->eng->loop, &job->work, job_cleanup_work, job_cleanup_done);
        if (rc < 0)
            hs_err_set(&job->err, rc, HS_ERR_SYS, -rc, "cannot queue cleanup: %s", uv_strerror(rc));
        break;
    case HS_JOB_DONE:
    case HS_JOB_FAILED:
        job_finish(job);
        return;
    }
    if (rc < 0)
        job_advance(job);
}

static void job_advance(struct hs_job *job)
{
    enum hs_job_state next = job_next(job);

    if (next == job->state)
        return;
    job_set_state(job, next);
    job_step(job);
}

static void job_kick_cb(uv_timer_t *t)
{
    struct hs_job *job = t->data;

    if (job->state == HS_JOB_INSPECT)
        job_step(job); /* a retry after waiting for the domain */
    else
        job_advance(job);
}

/* ---- domain and connection events ---- */

static int job_owns_domain(const struct hs_job *job)
{
    return job->captured && !job->released && job->state >= HS_JOB_CAPTURE &&
           job->state <= HS_JOB_UPLOAD;
}

static void job_watch_lifecycle(struct hs_virt_watch *w, int event, int detail)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, watch);

    if (!job_owns_domain(job))
        return;
    if (event == VIR_DOMAIN_EVENT_UNDEFINED)
        hs_err_set(&job->err, -ESRCH, HS_ERR_LIBVIRT, detail,
                   "domain '%s' was undefined during its snapshot", job->info.name);
    if (job->backend->lifecycle)
        job->backend->lifecycle(&job->cap, event, detail);
    if (job->err.code && job->proc)
        hs__proc_cancel(job->proc);
}

static void job_watch_block_job(struct hs_virt_watch *w, const char *disk, int type, int status)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, watch);

    if (job_owns_domain(job) && job->backend->block_job)
        job->backend->block_job(&job->cap, disk, type, status);
}

static void job_watch_job_completed(struct hs_virt_watch *w, int operation, const char *errmsg)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, watch);

    if (job_owns_domain(job) && job->backend->job_completed)
        job->backend->job_completed(&job->cap, operation, errmsg);
}

/* How long a step waits for libvirt to come back, and what it does then. */
static void job_conn_timeout(uv_timer_t *t)
{
    struct hs_job *job = t->data;
    int what = job->wait_conn;
    const char *uri = hs__virt_uri(job->eng->virt);

    job->wait_conn = JOB_WAIT_NONE;
    switch (what) {
    case JOB_WAIT_NONE:
        return;
    case JOB_WAIT_INSPECT:
        hs_err_set(&job->err, -ENOTCONN, HS_ERR_LIBVIRT, 0,
                   "libvirt at '%s' did not come back within %d s to read domain '%s'", uri,
                   HS_CONN_WAIT_MS / 1000, job->domain_arg);
        job->inspecting = 0;
        job->inspect_deferred = 1;
        job_settle(job->eng);
        return;
    case JOB_WAIT_CAPTURE:
        hs_err_set(&job->err, -ENOTCONN, HS_ERR_LIBVIRT, 0,
                   "libvirt at '%s' did not come back within %d s during the capture of domain "
                   "'%s'",
                   uri, HS_CONN_WAIT_MS / 1000, job->info.name);
        if (job->backend->cancel)
            job->backend->cancel(&job->cap); /* its capture callback still comes */
        return;
    case JOB_WAIT_RELEASE:
        hs_err_set(&job->err, -ETIMEDOUT, HS_ERR_LIBVIRT, 0,
                   "libvirt at '%s' did not come back within %d s to restore domain '%s'; the "
                   "next hotsnap run restores it",
                   uri, HS_CONN_WAIT_MS / 1000, job->info.name);
        job_advance(job);
        return;
    }
}

static void job_conn_wait(struct hs_job *job, int what)
{
    hs_log(HS_LOG_WARN, "job %s: waiting for libvirt to come back (domain '%s')", job->id,
           hs_job_domain(job));
    job->wait_conn = what;
    uv_timer_start(&job->conn_wait, job_conn_timeout, HS_CONN_WAIT_MS, 0);
}

static void job_watch_conn(struct hs_virt_watch *w, int up)
{
    struct hs_job *job = hs_container_of(w, struct hs_job, watch);
    int what = job->wait_conn;
    cJSON *ev;

    if (job->state != HS_JOB_QUEUED) {
        ev = hs__job_event(job, "libvirt");
        cJSON_AddStringToObject(ev, "connection", up ? "up" : "down");
        hs__engine_emit(job->eng, ev);
    }
    if (!up) {
        /* a capture libvirt does not come back to is given up */
        if (job->state == HS_JOB_CAPTURE && job->captured && !what)
            job_conn_wait(job, JOB_WAIT_CAPTURE);
        return;
    }
    if (what) {
        job->wait_conn = JOB_WAIT_NONE;
        uv_timer_stop(&job->conn_wait);
    }
    if (job_owns_domain(job) && job->backend->reconnected)
        job->backend->reconnected(&job->cap);
    if (what == JOB_WAIT_INSPECT) {
        job->inspecting = 0;
        if (job_inspect(job) < 0)
            job_advance(job);
    } else if (what == JOB_WAIT_RELEASE) {
        if (job_release(job) < 0)
            job_advance(job);
    }
}

/* ---- public ---- */

static int job_fail_start(struct hs_job *job, char *errbuf, size_t errlen)
{
    int rc = job->err.code;

    hs_err_copy(&job->err, errbuf, errlen);
    hs__uploader_free(job->up);
    free(job->domain_arg);
    free(job->tmpl);
    free(job->scratch_root);
    free(job->target_shown);
    free(job->image_id);
    free(job->backup_type);
    free(job);
    return rc;
}

int hs_snapshot_start(struct hs_engine *eng, const struct hs_snapshot_opts *opts, hs_job_cb cb,
                      void *data, struct hs_job **out, char *errbuf, size_t errlen)
{
    static uint64_t job_seq;
    struct hs_job *job = hs__calloc(1, sizeof(*job));
    struct hs_uploader_env env;
    char *target = NULL;
    int rc;

    job->eng = eng;
    job->seq = ++job_seq;
    hs__uuid4(job->id);
    job->t_start = hs__now();
    job->domain_arg = hs__strdup(opts->domain ? opts->domain : "");
    job->tmpl = hs__strdup(opts->name ? opts->name : HS_DEFAULT_TEMPLATE);
    job->scratch_root = opts->scratch_dir ? hs__strdup(opts->scratch_dir)
                                          : hs__asprintf("%s/scratch", eng->state_dir);
    job->mode = opts->mode;
    job->format = opts->format;
    job->compress = opts->compress;
    job->quiesce = opts->quiesce;
    job->priority = opts->priority;
    job->upload_attempts = opts->upload_attempts > 0 ? opts->upload_attempts : 5;
    job->all_disks = opts->all_disks;
    job->cb = cb;
    job->data = data;
    if (!*job->domain_arg) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0, "no domain given");
        return job_fail_start(job, errbuf, errlen);
    }
    if (hs_name_template_check(job->tmpl, job->err.msg, sizeof(job->err.msg)) < 0) {
        job->err.code = -EINVAL;
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->image_id &&
        hs_image_id_check(opts->image_id, job->err.msg, sizeof(job->err.msg)) < 0) {
        job->err.code = -EINVAL; /* a file name in a store, a record's id in Glance */
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->image_id && opts->all_disks) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "an image id names one image; it cannot go with all disks");
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->compress && opts->format != HS_FORMAT_QCOW2) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0, "compression needs format qcow2");
        return job_fail_start(job, errbuf, errlen);
    }
    job->incremental = opts->incremental;
    if (opts->incremental && (opts->format != HS_FORMAT_QCOW2 || opts->compress)) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "an incremental image is a qcow2 overlay: it cannot be raw or compressed");
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->incremental && opts->mode != HS_MODE_AUTO && opts->mode != HS_MODE_STREAM) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "an incremental snapshot reads a pull backup's dirty bitmap: mode %s cannot "
                   "make one (use auto or stream)",
                   hs_mode_name(opts->mode));
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->rotation < 0 || opts->rotation > 1000 ||
        (opts->rotation && (!opts->backup_type || (strcmp(opts->backup_type, "daily") &&
                                                   strcmp(opts->backup_type, "weekly"))))) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "a rotation keeps 1 to 1000 backups of a backup type, daily or weekly");
        return job_fail_start(job, errbuf, errlen);
    }
    if (opts->backup_type && !opts->rotation) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "a backup type goes with a rotation (how many backups of it to keep)");
        return job_fail_start(job, errbuf, errlen);
    }
    job->rotation = opts->rotation;
    job->backup_type = opts->backup_type ? hs__strdup(opts->backup_type) : NULL;
    if (!opts->target) {
        /* the default store is ours to create; a named one must exist */
        target = hs__asprintf("dir:%s/images", eng->state_dir);
        hs__mkdir_p(target + 4, 0700);
    }
    env.loop = eng->loop;
    env.http = eng->http;
    env.learned = &eng->glance_algos;
    env.token = opts->token;
    env.image_id = opts->image_id;
    env.max_rate = opts->max_rate;
    env.attempts = opts->upload_attempts;
    env.stall_s = opts->stall_timeout > 0 ? opts->stall_timeout : HS_DEFAULT_STALL_TIMEOUT;
    env.outage_s = opts->upload_outage > 0    ? opts->upload_outage
                   : opts->upload_outage == 0 ? HS_DEFAULT_OUTAGE
                                              : 0;
    env.store_mode = opts->store_mode ? opts->store_mode : 0600;
    env.store_digest = HS_DIGEST_XXH128;
    if (opts->store_digest && hs__digest_parse(opts->store_digest, &env.store_digest) < 0) {
        hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                   "store digest '%.64s' is not one of xxh128, sha256 or sha512",
                   opts->store_digest);
        free(target);
        return job_fail_start(job, errbuf, errlen);
    }
    rc = eng->new_uploader(&env, opts->target ? opts->target : target, &job->up, &job->err);
    {
        char shown[1024];

        job->target_shown =
            hs__strdup(hs__url_redact(opts->target ? opts->target : target, shown, sizeof(shown)));
    }
    job->image_id = opts->image_id ? hs__strdup(opts->image_id) : NULL;
    free(target);
    if (rc == 0 && opts->incremental && !hs__dir_path(job->up)) {
        rc = hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                        "an incremental snapshot needs a dir: store: Glance keeps whole images");
    }
    if (rc == 0 && opts->rotation && hs__dir_path(job->up)) {
        rc = hs_err_set(&job->err, -EINVAL, HS_ERR_INPUT, 0,
                        "a rotation deletes old Glance backups; a dir: store is pruned with "
                        "'hotsnap prune'");
    }
    if (rc < 0)
        return job_fail_start(job, errbuf, errlen);

    uv_timer_init(eng->loop, &job->kick);
    uv_timer_init(eng->loop, &job->tick);
    uv_timer_init(eng->loop, &job->conn_wait);
    uv_timer_init(eng->loop, &job->watch_t);
    job->kick.data = job->tick.data = job->conn_wait.data = job->watch_t.data = job;
    /* connection news from the start; domain events once inspect names the domain */
    job->watch.lifecycle = job_watch_lifecycle;
    job->watch.block_job = job_watch_block_job;
    job->watch.job_completed = job_watch_job_completed;
    job->watch.conn = job_watch_conn;
    hs__virt_watch(eng->virt, &job->watch);
    job->state = HS_JOB_QUEUED;
    hs__job_link(job);
    /* the first step runs on the next loop iteration, never inside this call */
    uv_timer_start(&job->kick, job_kick_cb, 0, 0);
    *out = job;
    return 0;
}

void hs_job_cancel(struct hs_job *job)
{
    if (job->state == HS_JOB_DONE || job->state == HS_JOB_FAILED || job->canceled)
        return;
    job->canceled = 1;
    hs_err_set(&job->err, -ECANCELED, HS_ERR_CANCELED, 0, "snapshot of domain '%s' canceled",
               job->info.name ? job->info.name : job->domain_arg);
    if (job->proc)
        hs__proc_cancel(job->proc);
    if (job->uploading && job->up->ops->cancel)
        job->up->ops->cancel(&job->req);
    if (job->state == HS_JOB_CAPTURE && job->backend->cancel)
        job->backend->cancel(&job->cap);
    if (job->wait_domain || job->inspect_deferred) {
        job->wait_domain = job->inspect_deferred = 0;
        uv_timer_start(&job->kick, job_kick_cb, 0, 0);
    }
    if (job->wait_conn == JOB_WAIT_INSPECT) {
        /* nothing was touched: no need to wait for libvirt */
        job->wait_conn = JOB_WAIT_NONE;
        uv_timer_stop(&job->conn_wait);
        job->inspecting = 0;
        uv_timer_start(&job->kick, job_kick_cb, 0, 0);
    }
    if (job->slot.queued || job->slot.pending) {
        /* waiting for a slot, or granted one not yet told: give it back and
         * take the way out */
        hs__sched_cancel(&job->eng->sched, &job->slot);
        uv_timer_start(&job->kick, job_kick_cb, 0, 0);
    }
    /* release finishes on its own: the domain always gets back what it had */
}

static void job_kick_closed(uv_handle_t *h)
{
    struct hs_job *job = h->data;
    size_t i;

    if (--job->closing > 0)
        return;
    for (i = 0; i < job->ndisks; i++) {
        free(job->disks[i].name);
        free(job->disks[i].out_path);
        free(job->disks[i].location);
    }
    free(job->disks);
    for (i = 0; i < job->cap.ndisks; i++) {
        struct hs_capture_disk *cd = &job->cap.disks[i];

        free(cd->pit_path);
        free(cd->pit_format);
        free(cd->nbd_socket);
        free(cd->nbd_export);
        free(cd->nbd_log);
        hs__strv_free(cd->nbd_argv);
    }
    free(job->cap.disks);
    if (job->backend && job->backend->destroy)
        job->backend->destroy(&job->cap);
    hs__domain_info_clear(&job->info);
    hs__uploader_free(job->up);
    hs__chain_free(job->chain);
    free(job->domain_arg);
    free(job->tmpl);
    free(job->scratch_root);
    free(job->scratch);
    free(job->target_shown);
    free(job->image_id);
    free(job->backup_type);
    free(job);
}

void hs_job_free(struct hs_job *job)
{
    if (!job)
        return;
    job->closing = 4;
    uv_close((uv_handle_t *)&job->kick, job_kick_closed);
    uv_close((uv_handle_t *)&job->tick, job_kick_closed);
    uv_close((uv_handle_t *)&job->conn_wait, job_kick_closed);
    uv_close((uv_handle_t *)&job->watch_t, job_kick_closed);
}


void hs_engine_cancel_all(struct hs_engine *eng)
{
    struct hs_job *job;

    for (job = eng->jobs; job; job = job->next)
        hs_job_cancel(job);
    hs__reclaim_cancel_all(eng);
}
