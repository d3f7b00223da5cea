/*
 * The job state machine, with a fake backend and a fake uploader handed in
 * where the library is put together, on libvirt's mock hypervisor
 * (test:///default, whose domain "test" runs). Extraction runs the real
 * qemu-img on a small image the test makes.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "engine_int.h"

static uv_loop_t loop;
static struct hs_engine *eng;
static char tmpdir[] = "/tmp/hs-test-job-XXXXXX";
static char src_path[256];

static struct {
    int capture_status;
    int release_status;
    int upload_status;
    int cancel_at_extract;
    int streaming; /* the backend gives NBD exports (qemu-nbd of src_path) */
    uint64_t streamed; /* bytes the fake upload read from the stream */
    struct hs_job *cancel_on_extract; /* cancel this job when another enters extract */
    char captured_domain[64];         /* the last capture's */
    const char *pit_path;
    int captures, releases, uploads, cancels;
    char states[512];
    char tasks[512];
    int job_status;
    int done;
    struct hs_job *job;
} t;

static uv_timer_t fake_timer;
static void (*fake_then)(void);
static struct hs_capture *fake_cap;
static hs_capture_cb fake_cap_cb;
static struct hs_upload_req *fake_req;

static void fake_timer_cb(uv_timer_t *h)
{
    fake_then();
}

static void later(void (*fn)(void))
{
    fake_then = fn;
    uv_timer_start(&fake_timer, fake_timer_cb, 5, 0);
}

static void capture_done(void)
{
    size_t i;

    for (i = 0; t.capture_status == 0 && i < fake_cap->ndisks; i++) {
        if (t.streaming) {
            char **argv = calloc(8, sizeof(char *));

            argv[0] = strdup("qemu-nbd");
            argv[1] = strdup("-r");
            argv[2] = strdup("-f");
            argv[3] = strdup("qcow2");
            argv[4] = strdup("-x");
            argv[5] = strdup("vda");
            argv[6] = strdup(t.pit_path);
            fake_cap->disks[i].nbd_argv = argv;
            fake_cap->disks[i].nbd_export = strdup("vda");
            fake_cap->exported = 1;
            continue;
        }
        fake_cap->disks[i].pit_path = strdup(t.pit_path);
        fake_cap->disks[i].pit_format = strdup("qcow2");
    }
    fake_cap_cb(fake_cap, t.capture_status);
}

static int fake_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    t.captures++;
    snprintf(t.captured_domain, sizeof(t.captured_domain), "%s", cap->info->name);
    CHECK(cap->journal && cap->scratch && cap->ndisks == 1);
    fake_cap = cap;
    fake_cap_cb = cb;
    if (t.capture_status)
        hs_err_set(cap->err, t.capture_status, HS_ERR_LIBVIRT, 0, "fake capture failed");
    later(capture_done);
    return 0;
}

static void release_done(void)
{
    fake_cap_cb(fake_cap, t.release_status);
}

static int fake_release(struct hs_capture *cap, hs_capture_cb cb)
{
    t.releases++;
    fake_cap_cb = cb;
    if (t.release_status)
        hs_err_set(cap->err, t.release_status, HS_ERR_LIBVIRT, 0, "fake release failed");
    later(release_done);
    return 0;
}

static const struct hs_backend_ops fake_backend = {
    .name = "fake",
    .capture = fake_capture,
    .release = fake_release,
};

static const struct hs_backend_ops fake_stream_backend = {
    .name = "fake-stream",
    .exports = 1,
    .capture = fake_capture,
    .release = fake_release,
};

static const struct hs_backend_ops *fake_select(const struct hs_select_in *in, char *why,
                                                size_t whylen, struct hs_err *err)
{
    snprintf(why, whylen, "fake");
    return t.streaming ? &fake_stream_backend : &fake_backend;
}

static int fake_check(struct hs_uploader *up, struct hs_err *err)
{
    return 0;
}

static void upload_done(void)
{
    if (t.upload_status == 0) {
        snprintf(fake_req->image_id, sizeof(fake_req->image_id), "fake-image");
        fake_req->location = strdup("fake://fake-image");
    } else {
        hs_err_set(&fake_req->err, t.upload_status, HS_ERR_HTTP, 500, "fake upload failed");
    }
    fake_req->cb(fake_req, t.upload_status);
}

/* The fake upload reads the whole stream, as an uploader would. */
static void fake_pump(struct hs_stream *st, void *data)
{
    static char buf[100000];
    struct hs_err err = {0};
    ssize_t n;

    while ((n = hs__stream_read(st, buf, sizeof(buf), &err)) > 0)
        t.streamed += (uint64_t)n;
    CHECK(n == 0 || n == -EAGAIN);
    if (n == 0) {
        CHECK(t.streamed == fake_req->size);
        CHECK(hs__stream_digest(st) != NULL);
        hs__stream_reader(st, NULL, NULL);
        later(upload_done);
    }
}

static int fake_begin(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb)
{
    t.uploads++;
    /* the domain is back before the upload starts; a stream's export stays
     * until the upload has ended */
    CHECK(t.releases == (t.streaming ? t.uploads - 1 : t.uploads));
    CHECK(req->src && req->src->size == req->size);
    CHECK(req->virtual_size == 8 << 20);
    CHECK(!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(req->props, "image_type")), "snapshot"));
    req->cb = cb;
    fake_req = req;
    if (t.streaming) {
        t.streamed = 0;
        hs__stream_reader(req->src, fake_pump, NULL);
        fake_pump(req->src, NULL); /* its cb still comes later (upload_done) */
        return 0;
    }
    later(upload_done);
    return 0;
}

static void fake_cancel(struct hs_upload_req *req)
{
    t.cancels++;
}

static const struct hs_uploader_ops fake_uploader_ops = {
    .name = "fake", .check = fake_check, .begin = fake_begin, .cancel = fake_cancel};

static int fake_new_uploader(const struct hs_uploader_env *env, const char *spec,
                             struct hs_uploader **out, struct hs_err *err)
{
    struct hs_uploader *up = calloc(1, sizeof(*up));

    up->ops = &fake_uploader_ops;
    up->loop = env->loop;
    *out = up;
    return 0;
}

static void on_event(void *data, const cJSON *ev)
{
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "event"));
    const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "state"));
    const char *task = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "task_state"));
    const char *tasks_last;

    CHECK(cJSON_GetStringValue(cJSON_GetObjectItem(ev, "time")) != NULL);
    if (strcmp(type, "state"))
        return;
    strcat(t.states, state);
    strcat(t.states, " ");
    /* task states are listed once each, in the order they were entered */
    tasks_last = strrchr(t.tasks, ' ');
    if (!*t.tasks || strncmp(tasks_last ? tasks_last + 1 : t.tasks, task, strlen(task))) {
        strcat(t.tasks, " ");
        strcat(t.tasks, task);
    }
    if (t.cancel_at_extract && !strcmp(state, "extract"))
        hs_job_cancel(t.job);
    if (t.cancel_on_extract && !strcmp(state, "waiting") &&
        !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(ev, "for")), "extract")) {
        hs_job_cancel(t.cancel_on_extract);
        t.cancel_on_extract = NULL;
    }
}

static void job_cb(struct hs_job *job, int status, void *data)
{
    t.job_status = status;
    t.done++;
}

static int dir_empty(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *de;
    int n = 0;

    if (!d)
        return 1;
    while ((de = readdir(d)) != NULL)
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return n == 0;
}

static void run_job(void)
{
    struct hs_snapshot_opts o = {.domain = "hs-unit", .target = "fake:x"};
    char err[256], path[512];

    memset(t.states, 0, sizeof(t.states));
    memset(t.tasks, 0, sizeof(t.tasks));
    t.captures = t.releases = t.uploads = t.cancels = t.done = 0;
    t.job_status = 1;
    CHECK(hs_snapshot_start(eng, &o, job_cb, NULL, &t.job, err, sizeof(err)) == 0);
    CHECK(t.done == 0); /* never from inside the start call */
    while (!t.done)
        uv_run(&loop, UV_RUN_ONCE);
    snprintf(path, sizeof(path), "%s/journal", tmpdir);
    CHECK(dir_empty(path) || t.release_status); /* the journal goes once released */
    snprintf(path, sizeof(path), "%s/scratch", tmpdir);
    /* scratch cleaned on every path but one: a capture not released may
     * still use it, and the recovery of its journal removes it */
    CHECK(dir_empty(path) || t.release_status);
    fprintf(stderr, "  states: %s\n  tasks:%s\n  error: %s\n", t.states, t.tasks,
            hs_job_error(t.job) ? hs_job_error(t.job) : "-");
}

static void test_success(void)
{
    t.pit_path = src_path;
    run_job();
    CHECK(t.job_status == 0);
    CHECK(!strcmp(
        t.states,
        "inspect prepare waiting capture waiting extract release waiting upload cleanup done "));
    CHECK(!strcmp(t.tasks, " image_snapshot_pending image_pending_upload image_uploading done"));
    CHECK(t.captures == 1 && t.releases == 1 && t.uploads == 1);
    CHECK(hs_job_image_count(t.job) == 1);
    CHECK(!strcmp(hs_job_image(t.job, 0)->id, "fake-image"));
    CHECK(!strcmp(hs_job_mode(t.job), "fake"));
    hs_job_free(t.job);
}

/* A backend that gives exports: the job streams from them and releases
 * after the upload (qemu-nbd started by libnbd, ended with the stream). */
static void test_streaming_order(void)
{
    int status;

    t.pit_path = src_path;
    t.streaming = 1;
    run_job();
    t.streaming = 0;
    CHECK(t.job_status == 0);
    CHECK(!strcmp(t.states,
                  "inspect prepare waiting capture extract upload release cleanup done "));
    CHECK(t.captures == 1 && t.releases == 1 && t.uploads == 1);
    CHECK(t.streamed > 0);
    CHECK(hs_job_image(t.job, 0)->virtual_size == 8 << 20);
    CHECK(!strcmp(hs_job_mode(t.job), "fake-stream"));
    /* the export's server is gone with the stream */
    CHECK(waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD);
    hs_job_free(t.job);
}

static void test_capture_failure_still_releases(void)
{
    t.capture_status = -EIO;
    run_job();
    t.capture_status = 0;
    CHECK(t.job_status == -EIO);
    CHECK(!strcmp(t.states, "inspect prepare waiting capture release cleanup failed "));
    CHECK(t.releases == 1 && t.uploads == 0);
    CHECK(strstr(hs_job_error(t.job), "fake capture failed"));
    hs_job_free(t.job);
}

static void test_qemu_img_failure(void)
{
    char missing[300];

    snprintf(missing, sizeof(missing), "%s/missing.qcow2", tmpdir);
    t.pit_path = missing;
    run_job();
    t.pit_path = src_path;
    CHECK(t.job_status == -EIO);
    CHECK(!strcmp(t.states,
                  "inspect prepare waiting capture waiting extract release cleanup failed "));
    CHECK(t.releases == 1 && t.uploads == 0);
    /* the message names the disk and carries qemu-img's own words */
    CHECK(strstr(hs_job_error(t.job), "qemu-img convert of disk"));
    CHECK(strstr(hs_job_error(t.job), "Could not open"));
    hs_job_free(t.job);
}

static void test_upload_failure(void)
{
    t.upload_status = -EIO;
    run_job();
    t.upload_status = 0;
    CHECK(t.job_status == -EIO);
    CHECK(!strcmp(
        t.states,
        "inspect prepare waiting capture waiting extract release waiting upload cleanup failed "));
    CHECK(strstr(hs_job_error(t.job), "fake upload failed"));
    hs_job_free(t.job);
}

static void test_cancel(void)
{
    t.cancel_at_extract = 1;
    run_job();
    t.cancel_at_extract = 0;
    CHECK(t.job_status == -ECANCELED);
    CHECK(!strcmp(t.states,
                  "inspect prepare waiting capture waiting extract release cleanup failed "));
    CHECK(t.releases == 1 && t.uploads == 0);
    CHECK(strstr(hs_job_error(t.job), "canceled"));
    hs_job_free(t.job);
}

static void test_release_failure_keeps_journal(void)
{
    char path[512];

    t.release_status = -EIO;
    run_job();
    t.release_status = 0;
    CHECK(t.job_status == -EIO);
    CHECK(!strcmp(t.states,
                  "inspect prepare waiting capture waiting extract release cleanup failed "));
    CHECK(t.uploads == 0);
    snprintf(path, sizeof(path), "%s/journal", tmpdir);
    CHECK(!dir_empty(path)); /* the next run finishes what the release could not */
    snprintf(path, sizeof(path), "%s/scratch", tmpdir);
    CHECK(!dir_empty(path)); /* and the scratch it may still use stays with it */
    hs_job_free(t.job);
    {
        char cmd[600];

        snprintf(cmd, sizeof(cmd), "rm -rf %s/journal/* %s/scratch/*", tmpdir, tmpdir);
        CHECK(system(cmd) == 0);
    }
}

static void test_bad_input(void)
{
    struct hs_snapshot_opts o = {.domain = "hs-unit", .name = "{bogus}"};
    struct hs_job *job = NULL;
    char err[256];

    CHECK(hs_snapshot_start(eng, &o, job_cb, NULL, &job, err, sizeof(err)) == -EINVAL);
    CHECK(job == NULL && strstr(err, "unknown placeholder '{bogus}'"));
    o.name = NULL;
    o.target = "ftp:x";
    eng->new_uploader = hs__uploader_new;
    CHECK(hs_snapshot_start(eng, &o, job_cb, NULL, &job, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "target 'ftp:x' is not one of dir:PATH, glance or glance:URL"));
    eng->new_uploader = fake_new_uploader;
    /* an unknown domain fails in the job, before anything is touched */
    o.domain = "no-such-domain";
    o.target = "fake:x";
    CHECK(hs_snapshot_start(eng, &o, job_cb, NULL, &t.job, err, sizeof(err)) == 0);
    t.done = t.captures = 0;
    while (!t.done)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(t.job_status == -ENOENT && t.captures == 0);
    CHECK(!strcmp(hs_job_error(t.job), "domain 'no-such-domain' not found"));
    hs_job_free(t.job);
}

/* The mock hypervisor's own domain has no disk format: define one that has. */
static void define_domain(const char *name)
{
    char xml[1024];
    virDomainPtr dom;

    snprintf(xml, sizeof(xml),
             "<domain type='test'><name>%s</name><memory unit='MiB'>64</memory>"
             "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
             "<driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda'/>"
             "</disk></devices></domain>",
             name, src_path);
    dom = virDomainDefineXML(hs__virt_conn(eng->virt), xml);
    CHECK(dom != NULL);
    CHECK(virDomainCreate(dom) == 0);
    virDomainFree(dom);
}

static int order_done[3];
static int order_seq;

static void order_cb(struct hs_job *job, int status, void *data)
{
    order_done[(intptr_t)data] = ++order_seq;
    CHECK(status == 0);
}

/* Three jobs of one domain run one after the other, in the order given,
 * whatever order their domain reads finish in. */
static void test_same_domain_serialized(void)
{
    struct hs_snapshot_opts o = {.domain = "hs-unit", .target = "fake:x"};
    struct hs_job *j[3];
    char err[256];
    int i;

    order_done[0] = order_done[1] = order_done[2] = order_seq = 0;
    t.pit_path = src_path;
    t.captures = t.releases = t.uploads = 0;
    for (i = 0; i < 3; i++)
        CHECK(hs_snapshot_start(eng, &o, order_cb, (void *)(intptr_t)i, &j[i], err, sizeof(err)) ==
              0);
    while (!order_done[0] || !order_done[1] || !order_done[2]) {
        uv_run(&loop, UV_RUN_ONCE);
        /* the next captures only after the one before is done */
        CHECK(t.captures <= 1 + (order_done[0] != 0) + (order_done[1] != 0));
    }
    CHECK(order_done[0] == 1 && order_done[1] == 2 && order_done[2] == 3);
    CHECK(t.captures == 3);
    for (i = 0; i < 3; i++)
        hs_job_free(j[i]);
}

static int race_status[2];

static void race_cb(struct hs_job *job, int status, void *data)
{
    race_status[(intptr_t)data] = status ? status : 1;
}

/* A cancel that comes after the scheduler granted the capture slot but
 * before the job was told: the capture never starts. */
static void test_cancel_racing_a_grant(void)
{
    struct hs_snapshot_opts o = {.target = "fake:x"};
    struct hs_job *j[2];
    char err[256];
    int i;

    eng->sched.max[HS_RES_CAPTURE] = 1;
    t.pit_path = src_path;
    t.captures = t.releases = t.uploads = 0;
    race_status[0] = race_status[1] = 0;
    o.domain = "hs-unit";
    CHECK(hs_snapshot_start(eng, &o, race_cb, (void *)0, &j[0], err, sizeof(err)) == 0);
    o.domain = "hs-unit-2";
    CHECK(hs_snapshot_start(eng, &o, race_cb, (void *)1, &j[1], err, sizeof(err)) == 0);
    /* the first to hold the slot hands it over when it enters extract; the
     * other is canceled right then, its grant not yet told */
    t.cancel_on_extract = NULL;
    while (!t.captures)
        uv_run(&loop, UV_RUN_ONCE);
    t.cancel_on_extract = strcmp(t.captured_domain, "hs-unit") ? j[0] : j[1];
    while (!race_status[0] || !race_status[1])
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(t.captures == 1);
    CHECK((race_status[0] == 1) != (race_status[1] == 1));
    CHECK(race_status[0] == -ECANCELED || race_status[1] == -ECANCELED);
    eng->sched.max[HS_RES_CAPTURE] = 0;
    for (i = 0; i < 2; i++)
        hs_job_free(j[i]);
}

static void closed(struct hs_engine *e, void *data)
{
    *(int *)data = 1;
}

int main(void)
{
    struct hs_engine_opts opts = {.uri = "test:///default", .on_event = on_event};
    char err[256], cmd[600];
    int done = 0;

    CHECK(mkdtemp(tmpdir) != NULL);
    snprintf(src_path, sizeof(src_path), "%s/src.qcow2", tmpdir);
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 %s 8M", src_path);
    if (system(cmd) != 0) {
        fprintf(stderr, "qemu-img is missing\n");
        return 1;
    }
    opts.state_dir = tmpdir;
    CHECK(uv_loop_init(&loop) == 0);
    uv_timer_init(&loop, &fake_timer);
    CHECK(hs_engine_open(&loop, &opts, &eng, err, sizeof(err)) == 0);
    eng->select_backend = fake_select;
    eng->new_uploader = fake_new_uploader;
    while (!hs_engine_connected(eng)) /* connects on the worker pool */
        uv_run(&loop, UV_RUN_ONCE);
    define_domain("hs-unit");
    define_domain("hs-unit-2");

    RUN(test_success);
    RUN(test_streaming_order);
    RUN(test_capture_failure_still_releases);
    RUN(test_qemu_img_failure);
    RUN(test_upload_failure);
    RUN(test_cancel);
    RUN(test_bad_input);
    RUN(test_same_domain_serialized);
    RUN(test_release_failure_keeps_journal);
    RUN(test_cancel_racing_a_grant);

    uv_close((uv_handle_t *)&fake_timer, NULL);
    hs_engine_close(eng, closed, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(done);
    CHECK(uv_loop_close(&loop) == 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    CHECK(system(cmd) == 0);
    return 0;
}
