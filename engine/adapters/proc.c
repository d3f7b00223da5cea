#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc.h"
#include "util.h"
#define HS_LOG_TAG "proc"
#include "log.h"

static void proc_close_cb(uv_handle_t *h)
{
    struct hs_proc *p = h->data;

    if (--p->pending_close > 0)
        return;
    free(p->capture);
    free(p->name);
    free(p);
}

static void proc_close_all(struct hs_proc *p)
{
    p->pending_close = 4;
    uv_close((uv_handle_t *)&p->process, proc_close_cb);
    uv_close((uv_handle_t *)&p->out, proc_close_cb);
    uv_close((uv_handle_t *)&p->err, proc_close_cb);
    uv_close((uv_handle_t *)&p->kill_timer, proc_close_cb);
}

static void proc_maybe_done(struct hs_proc *p)
{
    int status = 0;

    if (!p->exited || p->open_pipes > 0)
        return;
    uv_timer_stop(&p->kill_timer);
    if (p->canceled)
        status = -ECANCELED;
    else if (p->term_signal || p->exit_status != 0)
        status = -EIO;
    p->on_exit(p, status);
    proc_close_all(p);
}

static void proc_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    struct hs_proc *p = proc->data;

    p->exited = 1;
    p->exit_status = exit_status;
    p->term_signal = term_signal;
    hs_log(HS_LOG_DEBUG, "%s (pid %d) exited with status %lld signal %d", p->name, proc->pid,
           (long long)exit_status, term_signal);
    proc_maybe_done(p);
}

static void proc_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char scratch[65536]; /* loop thread only; consumed before the next read */

    buf->base = scratch;
    buf->len = sizeof(scratch);
}

double hs__proc_parse_progress(const char *buf, size_t len)
{
    double pct = -1, v;
    size_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] != '(')
            continue;
        if (sscanf(buf + i, "(%lf/100%%)", &v) == 1 && v >= 0 && v <= 100)
            pct = v;
    }
    return pct;
}

static void proc_out_progress(struct hs_proc *p, const char *data, size_t n)
{
    size_t i;
    double pct;

    for (i = 0; i < n; i++) {
        char c = data[i];

        if (c == '\r' || c == '\n') {
            pct = hs__proc_parse_progress(p->line, p->linelen);
            if (pct >= 0 && p->on_progress)
                p->on_progress(p, pct);
            p->linelen = 0;
            continue;
        }
        if (p->linelen + 1 < sizeof(p->line))
            p->line[p->linelen++] = c;
        p->line[p->linelen] = '\0';
    }
}

static void proc_pipe_eof(struct hs_proc *p, uv_stream_t *s)
{
    uv_read_stop(s);
    p->open_pipes--;
    proc_maybe_done(p);
}

static void proc_out_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hs_proc *p = s->data;
    size_t n;

    if (nread < 0) {
        proc_pipe_eof(p, s);
        return;
    }
    if (p->capture_max == 0) {
        proc_out_progress(p, buf->base, (size_t)nread);
        return;
    }
    n = (size_t)nread;
    if (p->capture_len + n > p->capture_max)
        n = p->capture_max - p->capture_len;
    memcpy(p->capture + p->capture_len, buf->base, n);
    p->capture_len += n;
    p->capture[p->capture_len] = '\0';
}

static void proc_err_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hs_proc *p = s->data;
    size_t n, keep;

    if (nread < 0) {
        proc_pipe_eof(p, s);
        return;
    }
    n = (size_t)nread;
    if (n >= sizeof(p->errtail) - 1) {
        memcpy(p->errtail, buf->base + n - (sizeof(p->errtail) - 1), sizeof(p->errtail) - 1);
        p->errlen = sizeof(p->errtail) - 1;
    } else {
        keep = p->errlen + n > sizeof(p->errtail) - 1 ? sizeof(p->errtail) - 1 - n : p->errlen;
        memmove(p->errtail, p->errtail + p->errlen - keep, keep);
        memcpy(p->errtail + keep, buf->base, n);
        p->errlen = keep + n;
    }
    p->errtail[p->errlen] = '\0';
}

/* @file as execvp would find it, into @buf: -ENOENT when no directory of
 * PATH has it (setpriv would only say so on its stderr, after the fork). */
static int proc_which(const char *file, char *buf, size_t len)
{
    const char *path = getenv("PATH"), *p, *end;

    if (strchr(file, '/')) {
        if (snprintf(buf, len, "%s", file) >= (int)len)
            return -ENAMETOOLONG;
        return access(buf, X_OK) == 0 ? 0 : -errno;
    }
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (p = path; *p; p = *end ? end + 1 : end) {
        end = strchrnul(p, ':');
        if (snprintf(buf, len, "%.*s/%s", end == p ? 1 : (int)(end - p), end == p ? "." : p,
                     file) >= (int)len)
            continue;
        if (access(buf, X_OK) == 0)
            return 0;
    }
    return -ENOENT;
}

int hs__proc_spawn(uv_loop_t *loop, char *const argv[], size_t capture_max,
                   hs_proc_progress_cb on_progress, hs_proc_exit_cb on_exit, void *data,
                   struct hs_proc **out)
{
    struct hs_proc *p;
    uv_process_options_t opts;
    uv_stdio_container_t stdio[3];
    const char *base = strrchr(argv[0], '/');
    char file[PATH_MAX], **av;
    size_t n;
    int rc;

    rc = proc_which(argv[0], file, sizeof(file));
    if (rc < 0)
        return rc;
    /* setpriv (util-linux) execs the child with PR_SET_PDEATHSIG: it is
     * SIGKILLed when hotsnap dies, so a killed run leaves no qemu-img
     * writing beside the next run's recovery */
    for (n = 0; argv[n]; n++)
        ;
    av = hs__calloc(n + 5, sizeof(*av));
    av[0] = "setpriv";
    av[1] = "--pdeathsig";
    av[2] = "KILL";
    av[3] = "--";
    av[4] = file;
    memcpy(av + 5, argv + 1, n * sizeof(*av)); /* with its NULL */
    p = hs__calloc(1, sizeof(*p));

    p->name = hs__strdup(base ? base + 1 : argv[0]);
    p->on_progress = on_progress;
    p->on_exit = on_exit;
    p->data = data;
    p->capture_max = capture_max;
    if (capture_max)
        p->capture = hs__calloc(1, capture_max + 1);
    uv_pipe_init(loop, &p->out, 0);
    uv_pipe_init(loop, &p->err, 0);
    uv_timer_init(loop, &p->kill_timer);
    p->process.data = p->out.data = p->err.data = p->kill_timer.data = p;

    memset(&opts, 0, sizeof(opts));
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *)&p->out;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *)&p->err;
    opts.file = av[0];
    opts.args = av;
    opts.stdio = stdio;
    opts.stdio_count = 3;
    opts.exit_cb = proc_exit_cb;
    /* its own process group: a terminal's Ctrl-C reaches hotsnap, which then
     * cancels the child, and a cancel reaches the child's children too */
    opts.flags = UV_PROCESS_DETACHED;

    rc = uv_spawn(loop, &p->process, &opts);
    free(av);
    if (rc < 0) {
        /* a failed uv_spawn still needs uv_close */
        proc_close_all(p);
        return rc;
    }
    hs_log(HS_LOG_DEBUG, "spawned %s (pid %d)", p->name, p->process.pid);
    p->open_pipes = 2;
    uv_read_start((uv_stream_t *)&p->out, proc_alloc_cb, proc_out_read_cb);
    uv_read_start((uv_stream_t *)&p->err, proc_alloc_cb, proc_err_read_cb);
    *out = p;
    return 0;
}

static void proc_kill_cb(uv_timer_t *t)
{
    struct hs_proc *p = t->data;

    if (!p->exited) {
        hs_log(HS_LOG_WARN, "%s (pid %d) ignored SIGTERM, sending SIGKILL", p->name,
               p->process.pid);
        kill(-p->process.pid, SIGKILL);
    }
}

void hs__proc_cancel(struct hs_proc *p)
{
    if (p->exited || p->canceled)
        return;
    p->canceled = 1;
    kill(-p->process.pid, SIGTERM);
    uv_timer_start(&p->kill_timer, proc_kill_cb, HS_PROC_GRACE_MS, 0);
}

const char *hs__proc_stderr(struct hs_proc *p)
{
    char *s = p->errtail, *e;

    for (e = s; *e; e++)
        if (*e == '\n' || *e == '\r')
            *e = ' ';
    while (e > s && e[-1] == ' ')
        *--e = '\0';
    while (*s == ' ')
        s++;
    return s;
}
