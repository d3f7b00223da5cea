/*
 * Reclaim: the image records a dead run made in Glance and never published.
 * Recovery (recover.c) undoes a journal's domain part, marks the journal
 * "undone" and, when it names a glance target, hands it here with its lock
 * held instead of removing it. For each journaled image, its record and the
 * ids its upload would have taken for records it made again (hs__uuid_next,
 * up to the job's attempts) are looked up and deleted when they are still
 * the ones that job made (the image's name, hotsnap_job and hotsnap_disk).
 *
 * Then the journal goes. Glance away: it stays, the lock is let go, and the
 * orphan keeper tries again with its backoff. Refused (401, 403, no
 * credentials configured here for that target): the ids are reported as
 * left behind and the journal goes, as nothing here can do more.
 *
 * A token goes only to the target it was configured with
 * (hs_engine_add_target); any other glance:URL is asked without one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_int.h"
#include "util.h"
#define HS_LOG_TAG "recover"
#include "log.h"

#define RECLAIM_ATTEMPTS 3
#define RECLAIM_STALL_S 10 /* a GET or a DELETE: no body to wait for */

struct hs_target_cred {
    struct hs_target_cred *next;
    char *shown; /* the spec as journals have it, redacted */
    char *spec;
    char *token;
};

struct hs_reclaim {
    struct hs_reclaim *next;
    struct hs_engine *eng;
    struct hs_recovery_pass *pass;
    cJSON *entry; /* the journal's, in the pass's report */
    char *journal;
    char *lock;
    int lock_fd; /* its flock: no other pass takes the journal meanwhile */
    cJSON *doc;
    struct hs_uploader *up;
    struct hs_upload_req req;
    cJSON *props;
    int img;  /* the journaled image being looked at */
    int k;    /* 0: its own id; k: the k-th that follows */
    int kmax; /* the attempts its upload had */
    cJSON *removed;
};

static void reclaim_next(struct hs_reclaim *r);

int hs_engine_add_target(struct hs_engine *eng, const char *target, const char *token)
{
    struct hs_target_cred *c;
    char shown[1024];

    if (!target || strncmp(target, "glance", 6))
        return 0; /* only Glance's records are reclaimed */
    c = hs__calloc(1, sizeof(*c));
    c->shown = hs__strdup(hs__url_redact(target, shown, sizeof(shown)));
    c->spec = hs__strdup(target);
    c->token = token ? hs__strdup(token) : NULL;
    c->next = eng->creds;
    eng->creds = c;
    return 0;
}

void hs__engine_creds_free(struct hs_engine *eng)
{
    struct hs_target_cred *c, *next;

    for (c = eng->creds; c; c = next) {
        next = c->next;
        free(c->shown);
        free(c->spec);
        if (c->token)
            explicit_bzero(c->token, strlen(c->token));
        free(c->token);
        free(c);
    }
    eng->creds = NULL;
}

void hs__reclaim_add(struct hs_recovery_pass *pass, cJSON *entry, const char *journal,
                     const char *lock, int lock_fd, const cJSON *doc)
{
    struct hs_reclaim *r = hs__calloc(1, sizeof(*r));

    r->pass = pass;
    r->entry = entry;
    r->next = pass->found;
    pass->found = r;
    r->journal = hs__strdup(journal);
    r->lock = hs__strdup(lock);
    r->lock_fd = lock_fd;
    r->doc = cJSON_Duplicate(doc, 1);
}

static void reclaim_free(struct hs_reclaim *r)
{
    struct hs_engine *eng = r->eng;
    struct hs_reclaim **p;

    if (eng) {
        for (p = &eng->reclaims; *p; p = &(*p)->next)
            if (*p == r) {
                *p = r->next;
                break;
            }
    }
    if (r->lock_fd >= 0)
        close(r->lock_fd); /* the flock goes with it */
    hs__upload_req_clear(&r->req);
    hs__uploader_free(r->up);
    cJSON_Delete(r->props);
    cJSON_Delete(r->removed);
    cJSON_Delete(r->doc);
    free(r->journal);
    free(r->lock);
    free(r);
}

/* The end of one journal's reclaim, told in its entry of the pass's report:
 * @why NULL is done; @keep leaves the journal for the orphan keeper. */
static void reclaim_end(struct hs_reclaim *r, const char *why, int keep)
{
    struct hs_engine *eng = r->eng;
    struct hs_recovery_pass *pass = r->pass;
    const char *job = hs__jstr(r->doc, "job");

    cJSON_DeleteItemFromObjectCaseSensitive(r->entry, "glance_pending");
    cJSON_AddItemToObject(r->entry, "glance_removed", r->removed);
    r->removed = NULL;
    if (why) {
        /* an error: not undone yet; a warning: what is left behind for good */
        cJSON_AddStringToObject(r->entry, keep ? "error" : "warning", why);
        hs_log(HS_LOG_WARN, "records of job %s in Glance %s: %s", job ? job : "?",
               keep ? "not removed yet" : "left behind", why);
    }
    if (!keep) {
        unlink(r->journal);
        unlink(r->lock);
    } else if (!eng->closing) {
        hs__engine_orphaned(eng); /* tried again, with the keeper's backoff */
    }
    reclaim_free(r);
    if (--pass->pending == 0)
        pass->done(eng, pass);
    if (eng->closing && eng->close_waits && !eng->reclaims)
        hs__engine_close_continue(eng); /* the close waited for the last one */
}

static void reclaim_done(struct hs_upload_req *req, int status)
{
    struct hs_reclaim *r = req->data;
    char why[900];
    int refused;

    hs__upload_req_clear(req);
    if (status == 0 && !req->left_behind[0]) {
        if (req->sent)
            cJSON_AddItemToArray(r->removed, cJSON_CreateString(req->image_id));
        r->k++;
        reclaim_next(r);
        return;
    }
    /* refused, or no credentials: nothing here can do more, now or later */
    refused =
        status != -ECANCELED &&
        (req->err.kind == HS_ERR_INPUT ||
         (req->err.kind == HS_ERR_HTTP && (req->err.detail == 401 || req->err.detail == 403)));
    snprintf(why, sizeof(why), "image record %s: %s", req->image_id,
             req->err.msg[0] ? req->err.msg : "it could not be deleted");
    reclaim_end(r, why, !refused);
}

/* The next id to look at, or the end. */
static void reclaim_next(struct hs_reclaim *r)
{
    const cJSON *imgs = cJSON_GetObjectItemCaseSensitive(r->doc, "images");
    const cJSON *img;
    const char *id, *name, *disk;
    char next[HS_UUID_LEN];

    for (;;) {
        img = cJSON_GetArrayItem(imgs, r->img);
        if (!img) {
            reclaim_end(r, NULL, 0);
            return;
        }
        id = hs__jstr(img, "id");
        name = hs__jstr(img, "name");
        disk = hs__jstr(img, "disk");
        if (id && name && disk && r->k <= r->kmax)
            break;
        r->img++;
        r->k = 0;
    }
    /* a fresh request: what the last one said is not this one's */
    memset(&r->req, 0, sizeof(r->req));
    if (r->k == 0)
        snprintf(r->req.image_id, sizeof(r->req.image_id), "%s", id);
    else {
        hs__uuid_next(id, r->k, next);
        snprintf(r->req.image_id, sizeof(r->req.image_id), "%s", next);
    }
    cJSON_Delete(r->props);
    r->props = cJSON_CreateObject();
    cJSON_AddStringToObject(r->props, "hotsnap_job", hs__jstr(r->doc, "job"));
    cJSON_AddStringToObject(r->props, "hotsnap_disk", disk);
    r->req.name = name;
    r->req.props = r->props;
    r->req.data = r;
    if (r->up->ops->reclaim(r->up, &r->req, reclaim_done) < 0)
        reclaim_end(r, "cannot start a request", 1);
}

static void reclaim_start(struct hs_engine *eng, struct hs_reclaim *r)
{
    const char *target = hs__jstr(r->doc, "target");
    const struct hs_target_cred *c;
    struct hs_uploader_env env = {0};
    struct hs_err err = {0};
    const char *spec = target, *token = NULL;
    const cJSON *att = cJSON_GetObjectItemCaseSensitive(r->doc, "attempts");

    r->eng = eng;
    r->next = eng->reclaims;
    eng->reclaims = r;
    r->removed = cJSON_CreateArray();
    if (!hs__jstr(r->doc, "job")) {
        reclaim_end(r, "no job id journaled: its records cannot be told", 0);
        return;
    }
    /* the records it may have made again take the ids after its own */
    r->kmax =
        cJSON_IsNumber(att) && att->valueint > 0 && att->valueint <= 100 ? att->valueint + 2 : 0;
    for (c = eng->creds; c; c = c->next)
        if (target && !strcmp(c->shown, target)) {
            spec = c->spec;
            token = c->token;
            break;
        }
    if (!c && target && strstr(target, "***")) {
        reclaim_end(r, "its target's credentials are not configured here", 0);
        return;
    }
    env.loop = eng->loop;
    env.http = eng->http;
    env.token = token;
    env.attempts = RECLAIM_ATTEMPTS;
    env.stall_s = RECLAIM_STALL_S;
    if (!target || eng->new_uploader(&env, spec, &r->up, &err) < 0) {
        reclaim_end(r, err.msg[0] ? err.msg : "no target journaled", 0);
        return;
    }
    if (!r->up->ops->reclaim) {
        reclaim_end(r, NULL, 0);
        return;
    }
    reclaim_next(r);
}

void hs__reclaim_start_all(struct hs_engine *eng, struct hs_recovery_pass *pass)
{
    struct hs_reclaim *r, *next;

    pass->pending = 1; /* this loop's own: done runs once, after the last */
    for (r = pass->found; r; r = next) {
        next = r->next;
        pass->pending++;
        reclaim_start(eng, r);
    }
    pass->found = NULL;
    if (--pass->pending == 0)
        pass->done(eng, pass);
}

void hs__reclaim_discard(struct hs_recovery_pass *pass)
{
    struct hs_reclaim *r, *next;

    for (r = pass->found; r; r = next) {
        next = r->next;
        reclaim_free(r); /* the journal stays; its lock goes */
    }
    pass->found = NULL;
}

void hs__reclaim_cancel_all(struct hs_engine *eng)
{
    struct hs_reclaim *r, *next;

    /* a cancel may end its reclaim at once (and free it) */
    for (r = eng->reclaims; r; r = next) {
        next = r->next;
        if (r->req.priv && r->up && r->up->ops->cancel)
            r->up->ops->cancel(&r->req);
    }
}
