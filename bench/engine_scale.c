/*
 * Engine scale without VMs: N concurrent snapshot jobs through the real
 * engine (inspect, journal, scheduler, extract with the real qemu-img,
 * events) on one thread, on libvirt's mock hypervisor with N running
 * domains. The backend is a fake whose capture completes on a timer;
 * the uploader is either a fake that completes on a timer ("jobs") or the
 * real Glance uploader against a stub HTTP server ("uploads", see
 * bench/glance-stub, which holds every PUT until all N have arrived, so all
 * N transfers are open at once).
 *
 * Reports: memory per job (resident growth from before the jobs to the
 * moment all N are in flight, and to the peak), loop latency (how late a
 * 5 ms repeating timer fires: p50/p99/max), CPU seconds, wall time.
 *
 * usage: hs-bench-engine jobs N
 *        hs-bench-engine uploads N http://127.0.0.1:PORT
 * HS_BENCH_EXTRACTS: qemu-img at once (default 2, the engine's default);
 * HS_BENCH_TRACE: print every tick more than 20 ms late, with the job counts.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine_int.h"
#include "util.h"

#define CAPTURE_MS 2000 /* every capture in flight at once for this long */
#define UPLOAD_MS 1000
#define TICK_MS 5

struct fake {
    uv_timer_t timer;
    struct hs_capture *cap;
    hs_capture_cb cap_cb;
    struct hs_upload_req *req;
    hs_upload_cb up_cb;
};

static uv_loop_t loop;
static struct hs_engine *eng;
static struct fake *fakes;
static int nfakes, ncaptures_live, ncaptures_max, njobs, ndone, nfailed;
static double t_first_capture, t_last_capture;
static char tmpdir[] = "/tmp/hs-bench-engine-XXXXXX";
static char template_path[256];
static long rss_all_in_flight;
static double *lat;
static size_t nlat, lat_cap;
static uint64_t tick_last;
static uv_timer_t tick;
static double t_begin;

static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long kib = -1;

    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, key, strlen(key)))
            kib = strtol(line + strlen(key), NULL, 10);
    if (f)
        fclose(f);
    return kib;
}

static struct fake *fake_get(void)
{
    if (nfakes >= 2 * njobs) {
        fprintf(stderr, "hs-bench-engine: out of fakes\n");
        exit(1);
    }
    return &fakes[nfakes++];
}

/* ---- the fake backend: a point-in-time file linked from a template ---- */

static void capture_fired(uv_timer_t *t)
{
    struct fake *f = t->data;

    ncaptures_live--;
    f->cap_cb(f->cap, 0);
}

static int fake_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct fake *f = fake_get();
    size_t i;

    for (i = 0; i < cap->ndisks; i++) {
        cap->disks[i].pit_path =
            hs__asprintf("%s/%s.pit.qcow2", cap->scratch, cap->disks[i].disk->target);
        cap->disks[i].pit_format = hs__strdup("qcow2");
        if (link(template_path, cap->disks[i].pit_path) < 0)
            return hs_err_set(cap->err, -errno, HS_ERR_SYS, errno, "link: %s", strerror(errno));
    }
    f->cap = cap;
    f->cap_cb = cb;
    cap->priv = f;
    if (!t_first_capture)
        t_first_capture = hs__now();
    t_last_capture = hs__now();
    if (++ncaptures_live > ncaptures_max)
        ncaptures_max = ncaptures_live;
    if (ncaptures_live == njobs)
        rss_all_in_flight = status_kib("VmRSS:");
    uv_timer_start(&f->timer, capture_fired, CAPTURE_MS, 0);
    return 0;
}

static int fake_release(struct hs_capture *cap, hs_capture_cb cb)
{
    return 1; /* nothing to undo */
}

static const struct hs_backend_ops fake_backend = {
    .name = "fake",
    .standalone_pit = 1,
    .capture = fake_capture,
    .release = fake_release,
};

static const struct hs_backend_ops *fake_select(const struct hs_select_in *in, char *why,
                                                size_t whylen, struct hs_err *err)
{
    snprintf(why, whylen, "benchmark");
    return &fake_backend;
}

/* ---- the fake uploader ---- */

static void upload_fired(uv_timer_t *t)
{
    struct fake *f = t->data;

    snprintf(f->req->image_id, sizeof(f->req->image_id), "fake");
    f->req->location = hs__strdup("fake://");
    f->up_cb(f->req, 0);
}

static int fake_check(struct hs_uploader *up, struct hs_err *err)
{
    return 0;
}

static int fake_begin(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb)
{
    struct fake *f = fake_get();

    f->req = req;
    f->up_cb = cb;
    uv_timer_start(&f->timer, upload_fired, UPLOAD_MS, 0);
    return 0;
}

static void fake_cancel(struct hs_upload_req *req)
{
}

static const struct hs_uploader_ops fake_uploader_ops = {
    .name = "fake", .check = fake_check, .begin = fake_begin, .cancel = fake_cancel};

static int fake_new_uploader(const struct hs_uploader_env *env, const char *spec,
                             struct hs_uploader **out, struct hs_err *err)
{
    struct hs_uploader *up = hs__calloc(1, sizeof(*up));

    up->ops = &fake_uploader_ops;
    up->loop = env->loop;
    *out = up;
    return 0;
}

/* ---- measuring ---- */

static void tick_cb(uv_timer_t *t)
{
    uint64_t now = uv_hrtime();
    double late = (double)(now - tick_last) / 1e6 - TICK_MS;

    tick_last = now;
    if (nlat == lat_cap)
        lat = realloc(lat, (lat_cap = lat_cap ? 2 * lat_cap : 4096) * sizeof(*lat));
    if (!lat)
        abort();
    lat[nlat++] = late < 0 ? 0 : late;
    if (getenv("HS_BENCH_TRACE") && late > 20)
        fprintf(stderr, "late %.1f ms at %.2f s: captures live %d, done %d\n", late,
                hs__now() - t_begin, ncaptures_live, ndone);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double pct(double p)
{
    size_t i = (size_t)(p / 100.0 * (double)(nlat - 1) + 0.5);

    return nlat ? lat[i < nlat ? i : nlat - 1] : 0;
}

static void on_event(void *data, const cJSON *ev)
{
}

static void job_cb(struct hs_job *job, int status, void *data)
{
    if (status) {
        if (nfailed++ < 3)
            fprintf(stderr, "job failed: %s\n", hs_job_error(job));
    }
    hs_job_free(job);
    if (++ndone == njobs)
        uv_timer_stop(&tick);
}

static void closed(struct hs_engine *e, void *data)
{
}

/* N running domains of the mock hypervisor, each with one disk. */
static void write_node(const char *path, int n)
{
    FILE *f = fopen(path, "we");
    int i;

    if (!f) {
        perror(path);
        exit(1);
    }
    fprintf(f, "<node>\n");
    for (i = 0; i < n; i++)
        fprintf(f,
                "<domain type='test'><name>hsb-%04d</name><memory unit='MiB'>64</memory>"
                "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
                "<driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda'/>"
                "</disk></devices></domain>\n",
                i, template_path);
    fprintf(f, "</node>\n");
    fclose(f);
}

int main(int argc, char **argv)
{
    struct hs_engine_opts opts = {.on_event = on_event};
    struct hs_snapshot_opts o = {0};
    struct rlimit rl;
    char err[512], uri[512], node[300], cmd[600], name[32];
    long rss0;
    double t0, cpu;
    uv_rusage_t ru;
    int i, uploads;

    if (argc < 3 || (strcmp(argv[1], "jobs") && strcmp(argv[1], "uploads")) ||
        (!strcmp(argv[1], "uploads") && argc < 4)) {
        fprintf(stderr, "usage: hs-bench-engine jobs N | uploads N http://127.0.0.1:PORT\n");
        return 2;
    }
    uploads = !strcmp(argv[1], "uploads");
    njobs = atoi(argv[2]);
    if (njobs <= 0) {
        fprintf(stderr, "hs-bench-engine: N must be a positive number, not '%s'\n", argv[2]);
        return 2;
    }
    /* a journal, a socket and a pipe or two per job */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(template_path, sizeof(template_path), "%s/template.qcow2", tmpdir);
    snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 %s 16M", template_path);
    if (system(cmd) != 0)
        return 1;
    snprintf(node, sizeof(node), "%s/node.xml", tmpdir);
    write_node(node, njobs);
    snprintf(uri, sizeof(uri), "test://%s", node);
    opts.uri = uri;
    opts.state_dir = tmpdir;
    opts.max_captures = njobs;
    opts.max_extracts = getenv("HS_BENCH_EXTRACTS") ? atoi(getenv("HS_BENCH_EXTRACTS")) : 2;
    opts.max_uploads = njobs;
    opts.scratch_budget = (uint64_t)1 << 40;
    fakes = hs__calloc((size_t)(2 * njobs), sizeof(*fakes));
    uv_loop_init(&loop);
    for (i = 0; i < 2 * njobs; i++) {
        uv_timer_init(&loop, &fakes[i].timer);
        fakes[i].timer.data = &fakes[i];
    }
    if (hs_engine_open(&loop, &opts, &eng, err, sizeof(err)) < 0) {
        fprintf(stderr, "hs-bench-engine: %s\n", err);
        return 1;
    }
    eng->select_backend = fake_select;
    if (!uploads)
        eng->new_uploader = fake_new_uploader;
    o.target = uploads ? NULL : "fake:";
    if (uploads) {
        snprintf(cmd, sizeof(cmd), "glance:%s", argv[3]);
        o.target = hs__strdup(cmd);
        o.token = "bench";
    }
    o.quiesce = HS_QUIESCE_OFF;
    while (!hs_engine_connected(eng)) /* connects on the worker pool */
        uv_run(&loop, UV_RUN_ONCE);
    rss0 = status_kib("VmRSS:");
    t0 = t_begin = hs__now();
    uv_timer_init(&loop, &tick);
    tick_last = uv_hrtime();
    uv_timer_start(&tick, tick_cb, TICK_MS, TICK_MS);
    for (i = 0; i < njobs; i++) {
        struct hs_job *job;

        snprintf(name, sizeof(name), "hsb-%04d", i);
        o.domain = name;
        if (hs_snapshot_start(eng, &o, job_cb, NULL, &job, err, sizeof(err)) < 0) {
            fprintf(stderr, "hs-bench-engine: %s\n", err);
            return 1;
        }
    }
    while (ndone < njobs)
        uv_run(&loop, UV_RUN_ONCE);
    qsort(lat, nlat, sizeof(*lat), cmp_double);
    uv_getrusage(&ru);
    cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
          (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("{\"mode\": \"%s\", \"jobs\": %d, \"failed\": %d, \"wall_s\": %.2f, \"cpu_s\": %.2f, "
           "\"rss_before_kib\": %ld, \"rss_all_in_flight_kib\": %ld, \"rss_peak_kib\": %ld, "
           "\"kib_per_job_in_flight\": %.1f, \"kib_per_job_peak\": %.1f, "
           "\"loop_late_ms\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f, \"samples\": %zu}, "
           "\"worst_stall_ms\": %.1f, \"captures_live_max\": %d, "
           "\"captures_begun_s\": [%.2f, %.2f]}\n",
           argv[1], njobs, nfailed, hs__now() - t0, cpu, rss0, rss_all_in_flight,
           status_kib("VmHWM:"), (double)(rss_all_in_flight - rss0) / njobs,
           (double)(status_kib("VmHWM:") - rss0) / njobs, pct(50), pct(99), pct(100), nlat,
           hs_engine_max_stall_ms(eng), ncaptures_max, t_first_capture - t0,
           t_last_capture - t0);
    uv_close((uv_handle_t *)&tick, NULL);
    for (i = 0; i < 2 * njobs; i++)
        uv_close((uv_handle_t *)&fakes[i].timer, NULL);
    hs_engine_close(eng, closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "hs-bench-engine: cannot remove %s\n", tmpdir);
    return nfailed ? 1 : 0;
}
