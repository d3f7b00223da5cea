#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
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

void hs_cli_out_init(struct hs_cli_out *o, int json, int quiet)
{
    memset(o, 0, sizeof(*o));
    o->json = json;
    o->quiet = quiet;
    o->tty = !json && isatty(STDOUT_FILENO);
    o->active = cJSON_CreateObject();
    o->plain_at = now_s();
}

void hs_cli_out_free(struct hs_cli_out *o)
{
    cJSON_Delete(o->active);
    o->active = NULL;
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
        printf("\033[%dA\033[J", o->drawn);
        fflush(stdout); /* before anything goes to stderr */
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
    block_clear(o);
    if (cJSON_GetArraySize(o->active) == 0)
        return; /* nothing runs: the summary follows */
    cJSON_ArrayForEach(j, o->active) {
        hs_cli_out_format(j, line, sizeof(line));
        printf("%s\n", line);
        o->drawn++;
        running++;
    }
    if (o->total) {
        printf("%d running, %d done, %d failed, of %d\n", running, o->done, o->failed, o->total);
        o->drawn++;
    }
    fflush(stdout);
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
        printf("progress: %s\n", line);
    }
    fflush(stdout);
}

void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
{
    va_list ap;

    if (f == stdout || o->tty)
        block_clear(o);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
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
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
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
