/* Library logging: one sink, a tag per file, messages are one line. */
#ifndef HS_LOG_H
#define HS_LOG_H

#include "hotsnap.h"

void hs__log_set(hs_log_cb cb, void *data, enum hs_log_level level);
int hs__log_enabled(enum hs_log_level level);
void hs__log(const char *tag, enum hs_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Each file defines HS_LOG_TAG before including this header. */
#define hs_log(level, ...) hs__log(HS_LOG_TAG, (level), __VA_ARGS__)

#endif
