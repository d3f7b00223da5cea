/* What the outside sees of a job: its events and the public accessors. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "job_int.h"
#include "util.h"
#define HS_LOG_TAG "job"
#include "log.h"

#define HS_PROGRESS_MIN_S 0.5

const char *hs__job_state_name(enum hs_job_state s)
{
    switch (s) {
    case HS_JOB_QUEUED:
        return "queued";
    case HS_JOB_INSPECT:
        return "inspect";
    case HS_JOB_PREPARE:
        return "prepare";
    case HS_JOB_CAPTURE:
        return "capture";
    case HS_JOB_EXTRACT:
        return "extract";
    case HS_JOB_RELEASE:
        return "release";
    case HS_JOB_UPLOAD:
        return "upload";
    case HS_JOB_CLEANUP:
        return "cleanup";
    case HS_JOB_DONE:
        return "done";
    case HS_JOB_FAILED:
        return "failed";
    }
    return "?";
}

/* Nova's task_state for each of ours */
static const char *job_task_state(const struct hs_job *job)
{
    switch (job->state) {
    case HS_JOB_QUEUED:
    case HS_JOB_INSPECT:
    case HS_JOB_PREPARE:
    case HS_JOB_CAPTURE:
        return "image_snapshot_pending";
    case HS_JOB_EXTRACT:
    case HS_JOB_RELEASE:
        return "image_pending_upload";
    case HS_JOB_UPLOAD:
        return "image_uploading";
    case HS_JOB_CLEANUP:
        return job->err.code ? "failed" : "image_uploading";
    case HS_JOB_DONE:
        return "done";
    case HS_JOB_FAILED:
        return "failed";
    }
    return "?";
}

cJSON *hs__job_event(struct hs_job *job, const char *type)
{
    cJSON *ev = cJSON_CreateObject();
    char ts[40];
    double now = hs__now();

    hs__iso8601(now, ts, sizeof(ts));
    cJSON_AddStringToObject(ev, "event", type);
    cJSON_AddStringToObject(ev, "time", ts);
    cJSON_AddStringToObject(ev, "job", job->id);
    cJSON_AddStringToObject(ev, "domain", job->info.name ? job->info.name : job->domain_arg);
    cJSON_AddNumberToObject(ev, "elapsed", round((now - job->t_start) * 1000.0) / 1000.0);
    return ev;
}

void hs__job_warn(struct hs_job *job, const char *fmt, ...)
{
    char line[768];
    cJSON *ev;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    hs_log(HS_LOG_WARN, "job %s: %s", job->id, line);
    ev = hs__job_event(job, "warning");
    cJSON_AddStringToObject(ev, "message", line);
    hs__engine_emit(job->eng, ev);
}

cJSON *hs_image_json(const struct hs_image *img)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddStringToObject(o, "disk", img->disk);
    cJSON_AddStringToObject(o, "id", img->id);
    cJSON_AddStringToObject(o, "name", img->name);
    cJSON_AddStringToObject(o, "format", img->format);
    cJSON_AddStringToObject(o, "location", img->location);
    cJSON_AddNumberToObject(o, "size", (double)img->size);
    cJSON_AddNumberToObject(o, "virtual_size", (double)img->virtual_size);
    if (img->sha512)
        cJSON_AddStringToObject(o, "sha512", img->sha512);
    if (img->hash) {
        cJSON_AddStringToObject(o, "hash_algo", img->hash_algo);
        cJSON_AddStringToObject(o, "hash", img->hash);
    }
    if (img->read_bytes)
        cJSON_AddNumberToObject(o, "read_bytes", (double)img->read_bytes);
    if (img->incremental || img->full_reason) {
        cJSON_AddBoolToObject(o, "incremental", img->incremental);
        if (img->parent)
            cJSON_AddStringToObject(o, "parent", img->parent);
        if (img->full_reason)
            cJSON_AddStringToObject(o, "full_reason", img->full_reason);
    }
    return o;
}

static cJSON *job_images_json(const struct hs_job *job)
{
    cJSON *arr = cJSON_CreateArray();
    size_t i;

    for (i = 0; i < job->ndisks; i++)
        if (job->disks[i].img.id)
            cJSON_AddItemToArray(arr, hs_image_json(&job->disks[i].img));
    return arr;
}

/* The state event; @waiting: the job entered a state whose slot it awaits. */
void hs__job_publish_state(struct hs_job *job, int waiting)
{
    enum hs_job_state s = job->state;
    cJSON *ev = hs__job_event(job, "state");

    cJSON_AddStringToObject(ev, "state", waiting ? "waiting" : hs__job_state_name(s));
    if (waiting)
        cJSON_AddStringToObject(ev, "for", hs__job_state_name(s));
    cJSON_AddStringToObject(ev, "task_state", job_task_state(job));
    if (job->backend)
        cJSON_AddStringToObject(ev, "mode", job->backend->name);
    if (s == HS_JOB_PREPARE)
        cJSON_AddStringToObject(ev, "reason", job->why);
    if (job->err.code)
        cJSON_AddStringToObject(ev, "error", job->err.msg);
    if (s == HS_JOB_DONE || s == HS_JOB_FAILED) {
        if (hs_job_stall_ms(job) >= 0)
            cJSON_AddNumberToObject(ev, "stall_ms", round(hs_job_stall_ms(job) * 10.0) / 10.0);
        /* what the exports held in scratch at most (copy-before-write data) */
        if (job->captured && job->cap.exported)
            cJSON_AddNumberToObject(ev, "scratch_peak", (double)job->cap.scratch_peak);
        cJSON_AddItemToObject(ev, "images", job_images_json(job));
    }
    hs_log(HS_LOG_DEBUG, "job %s: %s%s", job->id, waiting ? "waiting for " : "", hs__job_state_name(s));
    hs__engine_emit(job->eng, ev);
}

/* A new phase or disk: report its first figure at once, measure its rate from now. */
void hs__job_progress_reset(struct hs_job *job)
{
    job->progress_t = 0;
    job->progress_pct = -100;
    job->progress_start = hs__now();
}

void hs__job_progress(struct hs_job *job, const char *phase, double pct, uint64_t bytes,
                         uint64_t total)
{
    double now = hs__now();
    cJSON *ev;

    if (pct < 100.0 && now - job->progress_t < HS_PROGRESS_MIN_S && pct - job->progress_pct < 5)
        return;
    job->progress_t = now;
    job->progress_pct = pct;
    ev = hs__job_event(job, "progress");
    cJSON_AddStringToObject(ev, "phase", phase);
    cJSON_AddStringToObject(ev, "disk", job->disks[job->cur].img.disk);
    cJSON_AddNumberToObject(ev, "percent", round(pct * 10.0) / 10.0);
    if (total) {
        cJSON_AddNumberToObject(ev, "bytes", (double)bytes);
        cJSON_AddNumberToObject(ev, "total", (double)total);
        if (now > job->progress_start)
            cJSON_AddNumberToObject(ev, "rate", round((double)bytes / (now - job->progress_start)));
    }
    hs__engine_emit(job->eng, ev);
}

const char *hs_job_id(const struct hs_job *job)
{
    return job->id;
}

const char *hs_job_domain(const struct hs_job *job)
{
    return job->info.name ? job->info.name : job->domain_arg;
}

const char *hs_job_mode(const struct hs_job *job)
{
    return job->backend ? job->backend->name : NULL;
}

const char *hs_job_error(const struct hs_job *job)
{
    return job->err.code ? job->err.msg : NULL;
}

double hs_job_seconds(const struct hs_job *job)
{
    return (job->t_end ? job->t_end : hs__now()) - job->t_start;
}

double hs_job_stall_ms(const struct hs_job *job)
{
    return job->captured ? job->cap.stall_ms : -1;
}

size_t hs_job_image_count(const struct hs_job *job)
{
    return job->ndisks;
}

const struct hs_image *hs_job_image(const struct hs_job *job, size_t i)
{
    return i < job->ndisks ? &job->disks[i].img : NULL;
}
