/* Image name templates: {domain} {uuid} {date} {time} {disk}, {{ and }} for braces. */
#ifndef HS_TEMPLATE_H
#define HS_TEMPLATE_H

#include <stddef.h>

#include "err.h"

#define HS_NAME_MAX 255
#define HS_DEFAULT_TEMPLATE "{domain}-{date}-{time}"

struct hs_template_vars {
    const char *domain;
    const char *uuid;
    const char *disk;
    double time; /* seconds since the epoch, UTC */
};

/* Expand into @out (HS_NAME_MAX + 1 bytes). 0 or -EINVAL naming what was wrong. */
int hs__template_expand(const char *tmpl, const struct hs_template_vars *vars, char *out,
                        struct hs_err *err);
/* Whether @tmpl names {disk} (several images of one domain need distinct names). */
int hs__template_has_disk(const char *tmpl);

#endif
