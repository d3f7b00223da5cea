#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "uploader.h"
#include "util.h"

static const struct {
    const char *scheme;
    const struct hs_uploader_ops *ops;
} uploaders[] = {
    {"dir", &hs_uploader_dir},
};

int hs__uploader_new(uv_loop_t *loop, const char *spec, struct hs_uploader **out,
                     struct hs_err *err)
{
    const char *colon = strchr(spec, ':');
    struct hs_uploader *up;
    size_t i, n;

    if (!colon || colon == spec || !colon[1])
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "target '%s' is not of the form dir:PATH",
                          spec);
    n = (size_t)(colon - spec);
    for (i = 0; i < sizeof(uploaders) / sizeof(uploaders[0]); i++) {
        if (strlen(uploaders[i].scheme) != n || strncmp(spec, uploaders[i].scheme, n))
            continue;
        up = hs__calloc(1, sizeof(*up));
        up->ops = uploaders[i].ops;
        up->loop = loop;
        up->ctx = hs__strdup(colon + 1);
        *out = up;
        return 0;
    }
    return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                      "target '%s' has an unknown kind '%.*s' "
                      "(known: dir)",
                      spec, (int)n, spec);
}

void hs__uploader_free(struct hs_uploader *up)
{
    if (!up)
        return;
    if (up->ops->destroy)
        up->ops->destroy(up);
    free(up);
}

void hs__upload_req_clear(struct hs_upload_req *req)
{
    free(req->location);
    req->location = NULL;
}
