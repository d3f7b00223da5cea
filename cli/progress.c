#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "progress.h"

void hs_cli_out_init(struct hs_cli_out *o, int json, int quiet)
{
    memset(o, 0, sizeof(*o));
    o->json = json;
    o->quiet = quiet;
    o->tty = !json && isatty(STDOUT_FILENO);
    o->active = cJSON_CreateObject();
}

void hs_cli_out_free(struct hs_cli_out *o)
{
    cJSON_Delete(o->active);
    o->active = NULL;
}

static void status_clear(struct hs_cli_out *o)
{
    if (o->status_shown) {
        fputs("\r\033[K", stdout);
        o->status_shown = 0;
    }
}

static void status_draw(struct hs_cli_out *o)
{
    const cJSON *j;
    char line[512];
    size_t n = 0;

    if (!o->tty || o->quiet)
        return;
    line[0] = '\0';
    cJSON_ArrayForEach(j, o->active) {
        const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(j, "domain"));
        const char *phase = cJSON_GetStringValue(cJSON_GetObjectItem(j, "phase"));
        double pct = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "percent"));

        if (n < sizeof(line))
            n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s %s %.0f%%", n ? " | " : "",
                                  dom ? dom : "?", phase ? phase : "?", pct);
    }
    status_clear(o);
    if (n) {
        fputs(line, stdout);
        o->status_shown = 1;
    }
    fflush(stdout);
}

void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
{
    va_list ap;

    status_clear(o);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fflush(f);
    status_draw(o);
}

static void set_active(struct hs_cli_out *o, const char *job, const char *dom, const char *phase,
                       double pct)
{
    cJSON *j = cJSON_CreateObject();

    cJSON_AddStringToObject(j, "domain", dom);
    cJSON_AddStringToObject(j, "phase", phase);
    cJSON_AddNumberToObject(j, "percent", pct);
    if (cJSON_GetObjectItemCaseSensitive(o->active, job))
        cJSON_ReplaceItemInObjectCaseSensitive(o->active, job, j);
    else
        cJSON_AddItemToObject(o->active, job, j);
}

void hs_cli_out_event(struct hs_cli_out *o, const cJSON *ev)
{
    const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "event"));
    const char *job = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "job"));
    const char *dom = cJSON_GetStringValue(cJSON_GetObjectItem(ev, "domain"));
    const char *state, *mode, *err;
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
        set_active(o, job, dom, cJSON_GetStringValue(cJSON_GetObjectItem(ev, "phase")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(ev, "percent")));
        status_draw(o);
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
    if (!strcmp(state, "done") || !strcmp(state, "failed"))
        cJSON_DeleteItemFromObjectCaseSensitive(o->active, job);
    else
        set_active(o, job, dom, state, 0);
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
    else if (o->tty)
        status_draw(o);
}
