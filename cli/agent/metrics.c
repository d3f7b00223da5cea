/* The agent's metrics in Prometheus's text exposition format 0.0.4. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

const char *const ag_state_names[AG_NSTATES] = {
    "queued", "waiting", "inspect", "prepare", "capture", "extract", "release", "upload", "cleanup",
};

static const double dur_bounds[] = {0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800};
static const double stall_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30};

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

void ag_metrics_init(struct ag_metrics *m)
{
    memset(m, 0, sizeof(*m));
    m->capture_s.bounds = m->upload_s.bounds = dur_bounds;
    m->capture_s.n = m->upload_s.n = NELEM(dur_bounds);
    m->stall_s.bounds = stall_bounds;
    m->stall_s.n = NELEM(stall_bounds);
}

void ag_hist_observe(struct ag_hist *h, double v)
{
    int i;

    if (v < 0)
        v = 0;
    for (i = 0; i < h->n && v > h->bounds[i]; i++)
        ;
    if (i < h->n)
        h->counts[i]++;
    else
        h->inf++;
    h->count++;
    h->sum += v;
}

void ag_metrics_count_status(struct ag_metrics *m, int status)
{
    if (status >= 100 && status < 600)
        m->by_class[status / 100]++;
}

struct out {
    char *buf;
    size_t len, cap;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        o->cap = o->cap * 2 + (size_t)(n > 0 ? n : 0);
        o->buf = realloc(o->buf, o->cap);
        if (!o->buf)
            abort();
    }
}

static void hist(struct out *o, const char *name, const char *help, const struct ag_hist *h)
{
    uint64_t cum = 0;
    int i;

    put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (i = 0; i < h->n; i++) {
        cum += h->counts[i];
        put(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
    put(o, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static double num(const cJSON *o, const char *a, const char *b, const char *c)
{
    const cJSON *v = cJSON_GetObjectItem(o, a);

    if (b)
        v = cJSON_GetObjectItem(v, b);
    if (c)
        v = cJSON_GetObjectItem(v, c);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

char *ag_metrics_render(const struct ag_metrics *m, const struct ag_metrics_now *now)
{
    static const char *const res[] = {"capture", "extract", "upload"};
    static const struct {
        const char *name, *key, *help;
    } slot[] = {
        {"used", "used", "Slots in use, by resource."},
        {"limit", "max", "Slots there are, by resource."},
        {"waiting", "waiting", "Jobs waiting for a slot, by resource."},
    };
    struct out o = {malloc(8192), 0, 8192};
    int i, k;

    if (!o.buf)
        abort();
    put(&o, "# HELP hotsnap_jobs Snapshot jobs running now, by state.\n"
            "# TYPE hotsnap_jobs gauge\n");
    for (i = 0; i < AG_NSTATES; i++)
        put(&o, "hotsnap_jobs{state=\"%s\"} %d\n", ag_state_names[i], now->by_state[i]);
    put(&o, "# HELP hotsnap_jobs_total Snapshot jobs accepted and ended, by result.\n"
            "# TYPE hotsnap_jobs_total counter\n"
            "hotsnap_jobs_total{result=\"accepted\"} %llu\n"
            "hotsnap_jobs_total{result=\"done\"} %llu\n"
            "hotsnap_jobs_total{result=\"failed\"} %llu\n"
            "hotsnap_jobs_total{result=\"canceled\"} %llu\n",
        (unsigned long long)m->jobs_accepted, (unsigned long long)m->jobs_done,
        (unsigned long long)m->jobs_failed, (unsigned long long)m->jobs_canceled);
    put(&o, "# HELP hotsnap_published_bytes_total Bytes of images published.\n"
            "# TYPE hotsnap_published_bytes_total counter\n"
            "hotsnap_published_bytes_total %llu\n",
        (unsigned long long)m->bytes_published);
    hist(&o, "hotsnap_capture_seconds", "Time jobs spent capturing.", &m->capture_s);
    hist(&o, "hotsnap_upload_seconds", "Time jobs spent uploading.", &m->upload_s);
    hist(&o, "hotsnap_guest_stall_seconds", "How long a snapshot kept its guest from running.",
         &m->stall_s);
    put(&o, "# HELP hotsnap_scratch_reserved_bytes Scratch reserved by running jobs.\n"
            "# TYPE hotsnap_scratch_reserved_bytes gauge\n"
            "hotsnap_scratch_reserved_bytes %.0f\n"
            "# HELP hotsnap_scratch_budget_bytes The scratch budget (0: none).\n"
            "# TYPE hotsnap_scratch_budget_bytes gauge\n"
            "hotsnap_scratch_budget_bytes %.0f\n",
        num(now->stats, "scratch", "reserved", NULL), num(now->stats, "scratch", "budget", NULL));
    for (k = 0; k < 3; k++) {
        put(&o, "# HELP hotsnap_slots_%s %s\n# TYPE hotsnap_slots_%s gauge\n", slot[k].name,
            slot[k].help, slot[k].name);
        for (i = 0; i < 3; i++)
            put(&o, "hotsnap_slots_%s{resource=\"%s\"} %.0f\n", slot[k].name, res[i],
                num(now->stats, "slots", res[i], slot[k].key));
    }
    put(&o, "# HELP hotsnap_loop_lateness_seconds How late the loop ran a 20 ms timer.\n"
            "# TYPE hotsnap_loop_lateness_seconds summary\n"
            "hotsnap_loop_lateness_seconds{quantile=\"0.5\"} %.6f\n"
            "hotsnap_loop_lateness_seconds{quantile=\"0.99\"} %.6f\n"
            "hotsnap_loop_lateness_seconds{quantile=\"1\"} %.6f\n",
        now->late_p50 / 1000, now->late_p99 / 1000, now->late_max / 1000);
    put(&o, "# HELP hotsnap_libvirt_connected Whether the libvirt connection is up.\n"
            "# TYPE hotsnap_libvirt_connected gauge\n"
            "hotsnap_libvirt_connected %d\n"
            "# HELP hotsnap_libvirt_reconnects_total Times the libvirt connection came back.\n"
            "# TYPE hotsnap_libvirt_reconnects_total counter\n"
            "hotsnap_libvirt_reconnects_total %.0f\n"
            "# HELP hotsnap_libvirt_calls libvirt calls in flight on the worker pool.\n"
            "# TYPE hotsnap_libvirt_calls gauge\n"
            "hotsnap_libvirt_calls %.0f\n",
        cJSON_IsTrue(cJSON_GetObjectItem(now->stats, "connected")),
        num(now->stats, "reconnects", NULL, NULL), num(now->stats, "calls", NULL, NULL));
    put(&o, "# HELP hotsnap_http_requests_total HTTP requests answered, by status class.\n"
            "# TYPE hotsnap_http_requests_total counter\n");
    for (i = 2; i < 6; i++)
        put(&o, "hotsnap_http_requests_total{code=\"%dxx\"} %llu\n", i,
            (unsigned long long)m->by_class[i]);
    put(&o, "# HELP hotsnap_http_connections HTTP connections open, by listener.\n"
            "# TYPE hotsnap_http_connections gauge\n"
            "hotsnap_http_connections{listener=\"unix\"} %d\n"
            "hotsnap_http_connections{listener=\"tcp\"} %d\n"
            "# HELP hotsnap_http_connections_refused_total Connections refused at their "
            "listener's limit.\n"
            "# TYPE hotsnap_http_connections_refused_total counter\n"
            "hotsnap_http_connections_refused_total %llu\n"
            "# HELP hotsnap_http_unauthenticated_total TCP connections closed without a valid "
            "token in time.\n"
            "# TYPE hotsnap_http_unauthenticated_total counter\n"
            "hotsnap_http_unauthenticated_total %llu\n"
            "# HELP hotsnap_event_readers Readers of /v1/events.\n"
            "# TYPE hotsnap_event_readers gauge\n"
            "hotsnap_event_readers %d\n"
            "# HELP hotsnap_event_readers_dropped_total Event readers dropped for falling behind.\n"
            "# TYPE hotsnap_event_readers_dropped_total counter\n"
            "hotsnap_event_readers_dropped_total %llu\n",
        now->connections - now->connections_tcp, now->connections_tcp,
        (unsigned long long)m->conns_refused, (unsigned long long)m->conns_unauthenticated,
        now->subscribers,
        (unsigned long long)m->subs_dropped);
    if (now->bus >= 0)
        put(&o, "# HELP hotsnap_bus_connected Whether the AMQP connection is up.\n"
                "# TYPE hotsnap_bus_connected gauge\n"
                "hotsnap_bus_connected %d\n"
                "# HELP hotsnap_bus_reconnects_total Times the AMQP connection came back.\n"
                "# TYPE hotsnap_bus_reconnects_total counter\n"
                "hotsnap_bus_reconnects_total %u\n",
            now->bus, now->bus_reconnects);
    return o.buf;
}
