/* The engine: a libvirt connection, the running jobs, the loop-stall meter. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "engine_int.h"
#include "http.h"
#include "backend.h"
#include "domain.h"
#include "util.h"
#define HS_LOG_TAG "engine"
#include "log.h"

#define HS_STALL_TICK_MS 20

static int late_bucket(double ms)
{
    int b = ms < 100 ? (int)(ms * 10) : 1000 + (int)(ms - 100);

    return b < HS_LATE_BUCKETS ? b : HS_LATE_BUCKETS - 1;
}

static double late_bucket_ms(int b)
{
    return b < 1000 ? (b + 1) / 10.0 : 100.0 + (b - 1000) + 1;
}

double hs_engine_loop_lateness_ms(const struct hs_engine *eng, double q)
{
    uint64_t want, seen = 0;
    int b;

    if (!eng->late_n)
        return 0;
    if (q >= 1)
        return eng->max_stall_ms;
    want = (uint64_t)(q * (double)eng->late_n) + 1;
    for (b = 0; b < HS_LATE_BUCKETS; b++) {
        seen += eng->late_hist[b];
        if (seen >= want)
            break;
    }
    /* the bucket's upper edge, never above what was seen */
    return b < HS_LATE_BUCKETS && late_bucket_ms(b) < eng->max_stall_ms ? late_bucket_ms(b)
                                                                         : eng->max_stall_ms;
}

static void engine_stall_cb(uv_timer_t *t)
{
    struct hs_engine *eng = t->data;
    uint64_t now = uv_hrtime();
    double late = (double)(now - eng->stall_last) / 1e6 - HS_STALL_TICK_MS;

    if (late < 0)
        late = 0;
    if (late > eng->max_stall_ms)
        eng->max_stall_ms = late;
    eng->late_hist[late_bucket(late)]++;
    eng->late_n++;
    if (late > 100)
        hs_log(HS_LOG_INFO, "loop stalled for %.0f ms", late);
    eng->stall_last = now;
}

/* 90% of the free space where the state (and default scratch) directory is,
 * or its nearest existing parent; 0 (no budget) when that cannot be read. */
static uint64_t engine_default_budget(const char *dir)
{
    char path[4096];
    struct statvfs sv;
    char *slash;

    snprintf(path, sizeof(path), "%s", dir);
    while (statvfs(path, &sv) < 0) {
        slash = strrchr(path, '/');
        if (!slash || slash == path)
            return 0;
        *slash = '\0';
    }
    return (uint64_t)sv.f_bavail * sv.f_frsize / 10 * 9;
}

/* The libvirt connection came up, failed to, or was lost. */
static void engine_virt_state(void *data, int up, const struct hs_err *err)
{
    struct hs_engine *eng = data;
    hs_recover_cb cb;

    if (up) {
        if (eng->ever_up)
            eng->reconnects++;
        eng->ever_up = 1;
        eng->conn_error[0] = '\0';
        if (eng->recover_pending)
            hs__engine_recover_start(eng);
        hs__engine_orphans_reconnected(eng);
        return;
    }
    snprintf(eng->conn_error, sizeof(eng->conn_error), "%s", err ? err->msg : "not connected");
    if (!eng->ever_up && eng->recover_pending) {
        /* the first attempt failed: the front end decides whether to wait */
        eng->recover_pending = 0;
        cb = eng->recover_cb;
        cb(eng, -ECONNREFUSED, NULL, eng->recover_data);
    }
}

int hs_engine_open(uv_loop_t *loop, const struct hs_engine_opts *opts, struct hs_engine **out,
                   char *errbuf, size_t errlen)
{
    struct hs_engine *eng;
    struct hs_err err = {0};
    int rc;

    hs__log_set(opts->on_log, opts->log_data, opts->log_level);
    eng = hs__calloc(1, sizeof(*eng));
    eng->loop = loop;
    eng->state_dir = hs__strdup(opts->state_dir ? opts->state_dir : HS_DEFAULT_STATE_DIR);
    eng->select_backend = hs__backend_select;
    eng->backends = hs__backends;
    eng->new_uploader = hs__uploader_new;
    eng->on_event = opts->on_event;
    eng->event_data = opts->event_data;
    snprintf(eng->conn_error, sizeof(eng->conn_error), "not connected yet");
    rc = hs__virt_open(loop, opts->uri ? opts->uri : HS_DEFAULT_URI, engine_virt_state, eng,
                       &eng->virt, &err);
    if (rc < 0) {
        hs_err_copy(&err, errbuf, errlen);
        free(eng->state_dir);
        free(eng);
        return rc;
    }
    rc = hs__http_new(loop, &eng->http);
    if (rc < 0) {
        snprintf(errbuf, errlen, "cannot set up HTTP: %s", uv_strerror(rc));
        hs__virt_close(eng->virt, NULL, NULL);
        free(eng->state_dir);
        free(eng);
        return rc;
    }
    hs__sched_init(&eng->sched, loop);
    eng->sched.max[HS_RES_CAPTURE] = opts->max_captures > 0 ? opts->max_captures : 2;
    eng->sched.max[HS_RES_EXTRACT] = opts->max_extracts > 0 ? opts->max_extracts : 2;
    eng->sched.max[HS_RES_UPLOAD] = opts->max_uploads > 0 ? opts->max_uploads : 4;
    eng->sched.budget =
        opts->scratch_budget ? opts->scratch_budget : engine_default_budget(eng->state_dir);
    uv_timer_init(loop, &eng->stall_timer);
    eng->stall_timer.data = eng;
    uv_timer_init(loop, &eng->orphan_timer);
    eng->orphan_timer.data = eng;
    eng->stall_last = uv_hrtime();
    uv_timer_start(&eng->stall_timer, engine_stall_cb, HS_STALL_TICK_MS, HS_STALL_TICK_MS);
    uv_unref((uv_handle_t *)&eng->stall_timer);
    *out = eng;
    return 0;
}

double hs_engine_max_stall_ms(const struct hs_engine *eng)
{
    return eng->max_stall_ms;
}

cJSON *hs_engine_stats(const struct hs_engine *eng)
{
    static const char *const names[HS_RES_NR] = {"capture", "extract", "upload"};
    cJSON *st = cJSON_CreateObject(), *slots = cJSON_AddObjectToObject(st, "slots"), *o;
    const struct hs_sched_req *r;
    int res, waiting;

    cJSON_AddBoolToObject(st, "connected", hs__virt_up(eng->virt));
    cJSON_AddNumberToObject(st, "reconnects", eng->reconnects);
    cJSON_AddNumberToObject(st, "calls", hs__virt_calls(eng->virt));
    for (res = 0; res < HS_RES_NR; res++) {
        waiting = 0;
        for (r = eng->sched.queue[res]; r; r = r->next)
            waiting++;
        o = cJSON_AddObjectToObject(slots, names[res]);
        cJSON_AddNumberToObject(o, "used", eng->sched.used[res]);
        cJSON_AddNumberToObject(o, "max", eng->sched.max[res]);
        cJSON_AddNumberToObject(o, "waiting", waiting);
    }
    o = cJSON_AddObjectToObject(st, "scratch");
    cJSON_AddNumberToObject(o, "reserved", (double)eng->sched.reserved);
    cJSON_AddNumberToObject(o, "budget", (double)eng->sched.budget);
    return st;
}

const char *hs_engine_error(const struct hs_engine *eng)
{
    return hs__virt_up(eng->virt) ? NULL : eng->conn_error;
}

int hs_engine_connected(const struct hs_engine *eng)
{
    return hs__virt_up(eng->virt);
}

void hs__engine_emit(struct hs_engine *eng, cJSON *ev)
{
    if (eng->on_event)
        eng->on_event(eng->event_data, ev);
    cJSON_Delete(ev);
}

static void engine_virt_closed(void *data)
{
    struct hs_engine *eng = data;
    hs_close_cb cb = eng->close_cb;
    void *cb_data = eng->close_data;

    hs__engine_creds_free(eng);
    hs__digest_memo_free(eng->glance_algos);
    free(eng->state_dir);
    free(eng);
    if (cb)
        cb(NULL, cb_data);
}

static void engine_http_closed(void *data)
{
    struct hs_engine *eng = data;

    hs__virt_close(eng->virt, engine_virt_closed, eng);
}

static void engine_sched_closed(uv_handle_t *h)
{
    struct hs_engine *eng = h->data;

    hs__http_close(eng->http, engine_http_closed, eng);
}

static void engine_timer_closed(uv_handle_t *h)
{
    struct hs_engine *eng = h->data;

    if (--eng->closing_timers > 0)
        return;
    eng->sched.kick.data = eng;
    hs__sched_close(&eng->sched, engine_sched_closed);
}

void hs_engine_close(struct hs_engine *eng, hs_close_cb cb, void *data)
{
    eng->close_cb = cb;
    eng->close_data = data;
    eng->closing = 1; /* orphans left now wait for the next run */
    if (eng->reclaims) {
        /* their deletes finish (they are the way out); the rest waits */
        eng->close_waits = 1;
        hs__reclaim_cancel_all(eng);
        return;
    }
    hs__engine_close_continue(eng);
}

void hs__engine_close_continue(struct hs_engine *eng)
{
    eng->close_waits = 0;
    eng->closing_timers = 2;
    uv_close((uv_handle_t *)&eng->stall_timer, engine_timer_closed);
    uv_close((uv_handle_t *)&eng->orphan_timer, engine_timer_closed);
}

/* ---- list ---- */

struct engine_list {
    struct hs_virt_call call;
    struct hs_engine *eng;
    int has_backup;
    cJSON *list;
    hs_list_cb cb;
    void *data;
};

/* Worker: one domain as `hotsnap list` shows it. */
static cJSON *engine_list_domain(struct engine_list *l, virDomainPtr dom)
{
    struct hs_domain_info info;
    struct hs_err err = {0};
    cJSON *o = cJSON_CreateObject(), *disks, *d;
    char *xml = virDomainGetXMLDesc(dom, 0);
    char why[256] = "";
    struct hs_select_in sel = {0};
    int state = 0, reason, managed_save, root;
    const struct hs_backend_ops *be;
    size_t i;

    cJSON_AddStringToObject(o, "name", virDomainGetName(dom));
    if (!xml || virDomainGetState(dom, &state, &reason, 0) < 0 ||
        hs__domain_parse(xml, &info, &err) < 0) {
        free(xml);
        cJSON_AddStringToObject(o, "error", err.msg[0] ? err.msg : "cannot read domain");
        return o;
    }
    free(xml);
    managed_save = virDomainHasManagedSaveImage(dom, 0) == 1;
    cJSON_AddStringToObject(o, "uuid", info.uuid);
    cJSON_AddNumberToObject(o, "state", state);
    cJSON_AddBoolToObject(o, "managed_save", managed_save);
    sel.mode = HS_MODE_AUTO;
    sel.domain = info.name;
    sel.state = state;
    sel.managed_save = managed_save;
    sel.has_backup = l->has_backup;
    sel.qemu_user = hs__domain_qemu_user_known(&info);
    be = l->eng->select_backend(&sel, why, sizeof(why), &err);
    cJSON_AddStringToObject(o, "mode", be ? be->name : "none");
    cJSON_AddStringToObject(o, "reason", be ? why : err.msg);
    root = hs__domain_root_disk(&info);
    disks = cJSON_AddArrayToObject(o, "disks");
    for (i = 0; i < info.ndisks; i++) {
        d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "target", info.disks[i].target);
        cJSON_AddStringToObject(d, "type", info.disks[i].type);
        cJSON_AddStringToObject(d, "format", info.disks[i].format ? info.disks[i].format : "");
        cJSON_AddStringToObject(d, "source", info.disks[i].source ? info.disks[i].source : "");
        cJSON_AddBoolToObject(d, "root", (int)i == root);
        if (info.disks[i].unsupported)
            cJSON_AddStringToObject(d, "unsupported", info.disks[i].unsupported);
        cJSON_AddItemToArray(disks, d);
    }
    hs__domain_info_clear(&info);
    return o;
}

static int engine_list_work(struct hs_virt_call *call, virConnectPtr conn)
{
    struct engine_list *l = call->data;
    virDomainPtr *doms = NULL;
    int n, i;

    n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0)
        return hs_err_virt(&call->err, -EIO, "cannot list the domains of '%s'",
                           hs__virt_uri(l->eng->virt));
    l->list = cJSON_CreateArray();
    for (i = 0; i < n; i++) {
        cJSON_AddItemToArray(l->list, engine_list_domain(l, doms[i]));
        virDomainFree(doms[i]);
    }
    free(doms);
    return 0;
}

static void engine_listed(struct hs_virt_call *call, int status)
{
    struct engine_list *l = call->data;

    if (status < 0) {
        cJSON_Delete(l->list);
        l->list = NULL;
    }
    l->cb(l->eng, status, l->list, status < 0 ? call->err.msg : NULL, l->data);
    free(l);
}

int hs_engine_list(struct hs_engine *eng, hs_list_cb cb, void *data)
{
    struct engine_list *l = hs__calloc(1, sizeof(*l));
    int rc;

    l->eng = eng;
    l->cb = cb;
    l->data = data;
    l->has_backup = hs__virt_has_backup(eng->virt);
    l->call.data = l;
    rc = hs__virt_queue(eng->virt, &l->call, NULL, engine_list_work, engine_listed);
    if (rc < 0)
        free(l);
    return rc;
}
