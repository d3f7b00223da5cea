/* The option values front ends parse and show: shared with the engine, and
 * apart from it (a front end's tests and fuzzers link them alone). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "hotsnap.h"

int hs_image_id_check(const char *id, char *errbuf, size_t errlen)
{
    size_t i;

    for (i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;

        if (dash ? id[i] != '-' : !isxdigit((unsigned char)id[i]))
            break;
    }
    if (i == 36 && id[36] == '\0')
        return 0;
    snprintf(errbuf, errlen, "image id '%.80s' is not a UUID (8-4-4-4-12 hex digits)", id);
    return -EINVAL;
}

int hs_mode_parse(const char *s, enum hs_mode *out)
{
    static const enum hs_mode modes[] = {HS_MODE_AUTO,   HS_MODE_STREAM, HS_MODE_LIVE,
                                         HS_MODE_MIRROR, HS_MODE_COLD,   HS_MODE_OFFLINE};
    size_t i;

    for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (!strcmp(s, hs_mode_name(modes[i]))) {
            *out = modes[i];
            return 0;
        }
    }
    return -EINVAL;
}

const char *hs_mode_name(enum hs_mode mode)
{
    switch (mode) {
    case HS_MODE_AUTO:
        return "auto";
    case HS_MODE_LIVE:
        return "live";
    case HS_MODE_MIRROR:
        return "mirror";
    case HS_MODE_COLD:
        return "cold";
    case HS_MODE_OFFLINE:
        return "offline";
    case HS_MODE_STREAM:
        return "stream";
    }
    return "?";
}

int hs_format_parse(const char *s, enum hs_format *out)
{
    if (!strcmp(s, "qcow2"))
        *out = HS_FORMAT_QCOW2;
    else if (!strcmp(s, "raw"))
        *out = HS_FORMAT_RAW;
    else
        return -EINVAL;
    return 0;
}

int hs_quiesce_parse(const char *s, enum hs_quiesce *out)
{
    if (!strcmp(s, "auto"))
        *out = HS_QUIESCE_AUTO;
    else if (!strcmp(s, "required"))
        *out = HS_QUIESCE_REQUIRED;
    else if (!strcmp(s, "off"))
        *out = HS_QUIESCE_OFF;
    else
        return -EINVAL;
    return 0;
}

const char *hs_format_name(enum hs_format fmt)
{
    switch (fmt) {
    case HS_FORMAT_QCOW2:
        return "qcow2";
    case HS_FORMAT_RAW:
        return "raw";
    }
    return "?";
}
