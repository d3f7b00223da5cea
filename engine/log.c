#include <stdarg.h>
#include <stdio.h>

#include "log.h"

static hs_log_cb log_cb;
static void *log_data;
static enum hs_log_level log_level = HS_LOG_WARN;

void hs__log_set(hs_log_cb cb, void *data, enum hs_log_level level)
{
    log_cb = cb;
    log_data = data;
    log_level = level;
}

int hs__log_enabled(enum hs_log_level level)
{
    return log_cb != NULL && level <= log_level;
}

void hs__log(const char *tag, enum hs_log_level level, const char *fmt, ...)
{
    char line[1024];
    int n;
    va_list ap;

    if (!hs__log_enabled(level))
        return;
    n = snprintf(line, sizeof(line), "%s: ", tag);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    log_cb(log_data, level, line);
}
