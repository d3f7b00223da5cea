#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "uploader.h"
#include "util.h"

int hs__uploader_new(const struct hs_uploader_env *env, const char *spec, struct hs_uploader **out,
                     struct hs_err *err)
{
    struct hs_uploader *up;
    int rc = 0;

    up = hs__calloc(1, sizeof(*up));
    up->loop = env->loop;
    if (!strncmp(spec, "dir:", 4) && spec[4]) {
        up->ops = &hs_uploader_dir;
        up->digest = env->store_digest;
        rc = hs__dir_new(env, spec + 4, up, err);
    } else if (!strcmp(spec, "glance") || (!strncmp(spec, "glance:", 7) && spec[7])) {
        const struct hs_digest_memo *m;

        up->ops = &hs_uploader_glance;
        up->digest = HS_DIGEST_SHA512; /* what Glance reports by default */
        for (m = env->learned ? *env->learned : NULL; m; m = m->next)
            if (!strcmp(m->key, spec))
                up->digest = m->algo; /* ... or what this one was seen to use */
        up->learned = env->learned;
        up->learn_key = hs__strdup(spec);
        rc = hs__glance_new(env, spec[6] ? spec + 7 : NULL, up, err);
    } else {
        char shown[512];

        rc = hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                        "target '%s' is not one of dir:PATH, glance or glance:URL",
                        hs__url_redact(spec, shown, sizeof(shown)));
    }
    if (rc < 0) {
        free(up->learn_key);
        free(up);
        return rc;
    }
    *out = up;
    return 0;
}

void hs__uploader_learn(struct hs_uploader *up, enum hs_digest_algo algo)
{
    struct hs_digest_memo *m;

    if (!up->learned || !up->learn_key)
        return;
    for (m = *up->learned; m; m = m->next) {
        if (!strcmp(m->key, up->learn_key)) {
            m->algo = algo;
            return;
        }
    }
    m = hs__calloc(1, sizeof(*m));
    m->key = hs__strdup(up->learn_key);
    m->algo = algo;
    m->next = *up->learned;
    *up->learned = m;
}

void hs__digest_memo_free(struct hs_digest_memo *m)
{
    struct hs_digest_memo *next;

    for (; m; m = next) {
        next = m->next;
        free(m->key);
        free(m);
    }
}

void hs__uploader_free(struct hs_uploader *up)
{
    if (!up)
        return;
    if (up->ops->destroy)
        up->ops->destroy(up);
    free(up->learn_key);
    free(up);
}

void hs__upload_req_clear(struct hs_upload_req *req)
{
    free(req->location);
    req->location = NULL;
}
