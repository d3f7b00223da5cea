#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "progress.h"

#define REDRAW_S 0.2
#define PLAIN_S 10.0

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- sinks: stdout and stderr without blocking the loop ---- */

static void sink_init(struct hs_cli_sink *k, int fd)
{
    memset(k, 0, sizeof(*k));
    k->fd = fd;
}

/* A terminal or a pipe is reopened through /proc: a description of our own
 * can be non-blocking without touching the shell's. A file never blocks
 * for long, and reopening it would lose its offset: it stays as it is. */
static void sink_open(struct hs_cli_sink *k, uv_loop_t *loop)
{
    struct stat st;
    char path[64];
    int fd;

    if (fstat(k->fd, &st) < 0 || !(S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)))
        return;
    snprintf(path, sizeof(path), "/proc/self/fd/%d", k->fd);
    fd = open(path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return;
    if (uv_poll_init(loop, &k->poll, fd) < 0) {
        close(fd);
        return;
    }
    k->poll.data = k;
    k->fd = fd;
    k->own = 1;
    k->started = 1;
}

/* Write what the fd takes now; 1 when everything went. */
static int sink_push(struct hs_cli_sink *k)
{
    ssize_t n;

    while (k->len > 0 && !k->broken) {
        n = write(k->fd, k->buf, k->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) {
            k->broken = 1; /* EPIPE and the like: nobody reads */
            k->len = 0;
            break;
        }
        memmove(k->buf, k->buf + n, k->len - (size_t)n);
        k->len -= (size_t)n;
    }
    return 1;
}

static void sink_writable(uv_poll_t *p, int status, int events)
{
    struct hs_cli_sink *k = p->data;

    if (status < 0 || sink_push(k)) {
        uv_poll_stop(p);
        k->polling = 0;
    }
}

static void sink_write(struct hs_cli_sink *k, const char *data, size_t len)
{
    if (k->broken || !len)
        return;
    if (k->len + len > k->cap) {
        size_t cap = k->cap ? k->cap : 4096;
        char *b;

        while (cap < k->len + len)
            cap *= 2;
        b = realloc(k->buf, cap);
        if (!b)
            abort();
        k->buf = b;
        k->cap = cap;
    }
    memcpy(k->buf + k->len, data, len);
    k->len += len;
    if (sink_push(k) || !k->started || k->polling)
        return;
    uv_poll_start(&k->poll, UV_WRITABLE, sink_writable);
    k->polling = 1;
}

static void sink_vprintf(struct hs_cli_sink *k, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void sink_vprintf(struct hs_cli_sink *k, const char *fmt, va_list ap)
{
    char *s;
    int n = vasprintf(&s, fmt, ap);

    if (n < 0)
        abort();
    sink_write(k, s, (size_t)n);
    free(s);
}

static void sink_printf(struct hs_cli_sink *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sink_printf(struct hs_cli_sink *k, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    sink_vprintf(k, fmt, ap);
    va_end(ap);
}

static void sink_drain(struct hs_cli_sink *k)
{
    struct pollfd pfd = {.fd = k->fd, .events = POLLOUT};

    while (!sink_push(k))
        poll(&pfd, 1, -1);
}

void hs_cli_out_start(struct hs_cli_out *o, uv_loop_t *loop)
{
    sink_open(&o->out, loop);
    sink_open(&o->err, loop);
}

void hs_cli_out_drain(struct hs_cli_out *o)
{
    sink_drain(&o->err);
    sink_drain(&o->out);
}

static void sink_stop(struct hs_cli_sink *k)
{
    sink_drain(k);
    if (k->started) {
        uv_close((uv_handle_t *)&k->poll, NULL);
        k->started = k->polling = 0;
    }
}

void hs_cli_out_stop(struct hs_cli_out *o)
{
    sink_stop(&o->err);
    sink_stop(&o->out);
}

/* ---- the display ---- */

void hs_cli_out_init(struct hs_cli_out *o, int json, int quiet)
{
    memset(o, 0, sizeof(*o));
    sink_init(&o->out, STDOUT_FILENO);
    sink_init(&o->err, STDERR_FILENO);
    o->json = json;
    o->quiet = quiet;
    o->tty = !json && isatty(STDOUT_FILENO);
    o->active = cJSON_CreateObject();
    o->plain_at = now_s();
}

void hs_cli_out_free(struct hs_cli_out *o)
{
    struct hs_cli_sink *k[2] = {&o->out, &o->err};
    int i;

    cJSON_Delete(o->active);
    o->active = NULL;
    for (i = 0; i < 2; i++) {
        if (k[i]->own)
            close(k[i]->fd);
        free(k[i]->buf);
        k[i]->buf = NULL;
    }
}

static double num(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(j, key);

    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

void hs_cli_out_format(const cJSON *j, char *buf, size_t len)
{
    const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(j, "domain"));
    const char *phase = cJSON_GetStringValue(cJSON_GetObjectItem(j, "phase"));
    double pct = num(j, "percent"), rate = num(j, "rate"), eta = num(j, "eta");
    char r[32] = "", e[32] = "";

    if (rate > 0)
        snprintf(r, sizeof(r), "%.0f MB/s", rate / 1e6);
    if (eta >= 0)
        snprintf(e, sizeof(e), "ETA %d:%02d", (int)eta / 60, (int)eta % 60);
    snprintf(buf, len, "%-24.24s %-8.8s %5.1f%% %10s %10s", dom ? dom : "?", phase ? phase : "?",
             pct < 0 ? 0 : pct, r, e);
}

static void block_clear(struct hs_cli_out *o)
{
    if (o->drawn) {
        sink_printf(&o->out, "\033[%dA\033[J", o->drawn);
        o->drawn = 0;
    }
}

static void block_draw(struct hs_cli_out *o, int force)
{
    const cJSON *j;
    char line[160];
    double t = now_s();
    int running = 0;

    if (!o->tty || o->quiet || (!force && t - o->drawn_at < REDRAW_S))
        return;
    if (o->out.len > 0)
        return; /* the terminal does not keep up: this redraw is dropped */
    block_clear(o);
    if (cJSON_GetArraySize(o->active) == 0)
        return; /* nothing runs: the summary follows */
    cJSON_ArrayForEach(j, o->active) {
        hs_cli_out_format(j, line, sizeof(line));
        sink_printf(&o->out, "%s\n", line);
        o->drawn++;
        running++;
    }
    if (o->total) {
        sink_printf(&o->out, "%d running, %d done, %d failed, of %d\n", running, o->done,
                    o->failed, o->total);
        o->drawn++;
    }
    o->drawn_at = t;
}

/* Not a terminal: a plain line per active job now and then. */
static void plain_progress(struct hs_cli_out *o)
{
    const cJSON *j;
    char line[160];
    double t = now_s();

    if (o->tty || o->quiet || t - o->plain_at < PLAIN_S)
        return;
    o->plain_at = t;
    cJSON_ArrayForEach(j, o->active) {
        hs_cli_out_format(j, line, sizeof(line));
        sink_printf(&o->out, "progress: %s\n", line);
    }
}

void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
{
    va_list ap;

    if (f == stdout || o->tty)
        block_clear(o);
    va_start(ap, fmt);
    sink_vprintf(f == stdout ? &o->out : &o->err, fmt, ap);
    va_end(ap);
    block_draw(o, 1);
}

static cJSON *active_job(struct hs_cli_out *o, const char *job, const char *dom)
{
    cJSON *j = cJSON_GetObjectItemCaseSensitive(o->active, job);

    if (!j) {
        j = cJSON_AddObjectToObject(o->active, job);
        cJSON_AddStringToObject(j, "domain", dom);
        if (!o->json)
            o->total++;
    }
    return j;
}

static void set_field(cJSON *j, const char *key, double v)
{
    cJSON_DeleteItemFromObjectCaseSensitive(j, key);
    if (v >= 0)
        cJSON_AddNumberToObject(j, key, v);
}

static void set_phase(cJSON *j, const char *phase)
{
    cJSON_DeleteItemFromObjectCaseSensitive(j, "phase");
    cJSON_AddStringToObject(j, "phase", phase ? phase : "?");
}

void hs_cli_out_event(struct hs_cli_out *o, const cJSON *ev)
{
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "event"));
    const char *job = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "job"));
    const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "domain"));
    const char *state, *mode, *err;
    cJSON *j;
    char *s;

    if (o->json) {
        s = cJSON_PrintUnformatted(ev);
        sink_write(&o->out, s, strlen(s));
        sink_write(&o->out, "\n", 1);
        free(s);
        return;
    }
    if (!type || !job || !dom)
        return;
    if (!strcmp(type, "progress")) {
        double bytes = num(ev, "bytes"), total = num(ev, "total"), rate = num(ev, "rate");

        j = active_job(o, job, dom);
        set_phase(j, cJSON_GetStringValue(cJSON_GetObjectItem(ev, "phase")));
        set_field(j, "percent", num(ev, "percent"));
        set_field(j, "rate", rate);
        set_field(j, "eta", rate > 0 && total > 0 ? (total - bytes) / rate : -1);
        block_draw(o, 0);
        plain_progress(o);
        return;
    }
    if (!strcmp(type, "captured")) {
        const char *warn = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "warning"));

        if (warn && !o->quiet)
            hs_cli_out_line(o, stderr, "%s: warning: %s\n", dom, warn);
        return;
    }
    if (!strcmp(type, "libvirt")) {
        hs_cli_out_line(o, stderr, "%s: libvirt connection %s\n", dom,
                        cJSON_GetStringValue(cJSON_GetObjectItem(ev, "connection")));
        return;
    }
    if (strcmp(type, "state"))
        return;
    state = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "state"));
    mode = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "mode"));
    err = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "error"));
    j = active_job(o, job, dom);
    if (!strcmp(state, "done") || !strcmp(state, "failed")) {
        cJSON_DeleteItemFromObjectCaseSensitive(o->active, job);
        if (!strcmp(state, "done"))
            o->done++;
        else
            o->failed++;
    } else {
        set_phase(j, state);
        set_field(j, "percent", 0);
        set_field(j, "rate", -1);
        set_field(j, "eta", -1);
    }
    if (o->quiet)
        return;
    if (!strcmp(state, "prepare"))
        hs_cli_out_line(o, stdout, "%s: %s snapshot (%s)\n", dom, mode ? mode : "?",
                        cJSON_GetStringValue(cJSON_GetObjectItem(ev, "reason")));
    else if (!strcmp(state, "failed"))
        hs_cli_out_line(o, stdout, "%s: failed: %s\n", dom, err ? err : "unknown error");
    else if (!strcmp(state, "done"))
        hs_cli_out_line(o, stdout, "%s: done in %.1f s\n", dom,
                        cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "elapsed")));
    else
        block_draw(o, 0);
}
