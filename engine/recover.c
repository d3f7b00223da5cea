/*
 * Recovery: finish what a dead hotsnap run left. Each journal whose lock can
 * be taken belongs to a run that is gone. The dead run's qemu-img children
 * are ended, the journal's backend undoes exactly what the journal records
 * (backend->recover: a save image, backup or block copy hotsnap made, told by
 * its mark or its scratch directory; never another tool's), and the scratch
 * directory is removed. Runs on the worker pool; a backend may wait for a
 * libvirt job the dead run started (a save still in progress) to end. A
 * journal that names a glance target is then marked "undone" and kept, with
 * its lock, for its records in Glance (reclaim.c, on the loop, after the pass).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "engine_int.h"
#include "journal.h"
#include "util.h"
#define HS_LOG_TAG "recover"
#include "log.h"

/* Does process @pid have an argument under @dir? (a child of the dead run) */
static int proc_uses(const char *pid, const char *dir)
{
    char *path = hs__asprintf("/proc/%s/cmdline", pid);
    char buf[8192];
    size_t dlen = strlen(dir), off = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC), hit = 0;

    free(path);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    while (off < (size_t)n && !hit) {
        hit = !strncmp(buf + off, dir, dlen) && (buf[off + dlen] == '/' || !buf[off + dlen]);
        off += strlen(buf + off) + 1;
    }
    return hit;
}

/* A killed run's qemu-img children outlive it and keep their locks on the
 * domain's disks (QEMU then cannot resume): end every process still working
 * in the dead job's scratch directory. Returns how many were killed. */
static int recover_kill_children(const char *scratch)
{
    DIR *d;
    struct dirent *de;
    int pids[64], n = 0, i, tries;

    if (!scratch || !*scratch || !(d = opendir("/proc")))
        return 0;
    while ((de = readdir(d)) != NULL && n < 64) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9' || atoi(de->d_name) == getpid())
            continue;
        if (proc_uses(de->d_name, scratch))
            pids[n++] = atoi(de->d_name);
    }
    closedir(d);
    for (i = 0; i < n; i++)
        kill(pids[i], SIGKILL);
    /* wait (on the worker) until they are gone and their locks released */
    for (tries = 0; tries < 100; tries++) {
        int alive = 0;

        for (i = 0; i < n; i++)
            alive += kill(pids[i], 0) == 0;
        if (!alive)
            break;
        usleep(50 * 1000);
    }
    return n;
}

static void store_removed(cJSON *entry, cJSON **removed, const char *name)
{
    if (!*removed)
        *removed = cJSON_AddArrayToObject(entry, "store_removed");
    cJSON_AddItemToArray(*removed, cJSON_CreateString(name));
}

/* Whether @meta is the sidecar of one of the journal's images. */
static int journal_names_sidecar(const cJSON *doc, const char *meta)
{
    const cJSON *img;
    char want[256];

    cJSON_ArrayForEach(img, cJSON_GetObjectItemCaseSensitive(doc, "images")) {
        const char *id = hs__jstr(img, "id");

        if (!id || strchr(id, '/'))
            continue;
        snprintf(want, sizeof(want), "%s.json", id);
        if (!strcmp(meta, want))
            return 1;
    }
    return 0;
}

/* What a dead run left in a dir: store of its journaled images: the parts
 * being written, the sidecars' temporary files, and an image renamed into
 * place whose sidecar (what says it is published) was never written. */
static void recover_store(const cJSON *doc, cJSON *entry)
{
    const char *target = hs__jstr(doc, "target");
    const cJSON *img;
    cJSON *removed = NULL;
    struct dirent *de;
    char written[256];
    DIR *d;
    int fd, dfd;

    if (!target || strncmp(target, "dir:", 4))
        return;
    fd = open(target + 4, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    cJSON_ArrayForEach(img, cJSON_GetObjectItemCaseSensitive(doc, "images")) {
        const char *id = hs__jstr(img, "id"), *fmt = hs__jstr(img, "format");
        char name[256], meta[256];

        if (!id || !fmt || strchr(id, '/') || strchr(fmt, '/'))
            continue;
        snprintf(meta, sizeof(meta), "%s.json", id);
        snprintf(name, sizeof(name), ".%s.%s.part", id, fmt);
        if (unlinkat(fd, name, 0) == 0)
            store_removed(entry, &removed, name);
        snprintf(name, sizeof(name), "%s.%s", id, fmt);
        if (faccessat(fd, meta, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && unlinkat(fd, name, 0) == 0)
            store_removed(entry, &removed, name);
    }
    /* the sidecars' atomic writes, killed before their rename: one pass
     * for all the images (a dup shares @fd's offset, so a listing per
     * image would find the second one at the end) */
    dfd = dup(fd);
    d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d && dfd >= 0)
        close(dfd);
    while (d && (de = readdir(d)) != NULL) {
        if (hs__atomic_tmp_name(de->d_name, written, sizeof(written)) &&
            journal_names_sidecar(doc, written) && unlinkat(fd, de->d_name, 0) == 0)
            store_removed(entry, &removed, de->d_name);
    }
    if (d)
        closedir(d);
    close(fd);
}

/* Its domain part undone, the journal says so: a pass that finds it again
 * (its Glance records not removed yet) goes straight to them. */
static int journal_mark_undone(const char *path, cJSON *doc)
{
    char *text;
    int rc;

    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "undone")))
        return 0;
    cJSON_AddTrueToObject(doc, "undone");
    text = cJSON_PrintUnformatted(doc);
    rc = text ? hs__write_atomic(path, text, strlen(text), 0600) : -ENOMEM;
    free(text);
    return rc;
}

static int journal_has_glance_images(const cJSON *doc)
{
    const char *target = hs__jstr(doc, "target");

    return target && !strncmp(target, "glance", 6) &&
           cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "images")) > 0;
}

static int recover_one(struct hs_engine *eng, virConnectPtr conn, const char *dir,
                       const char *file, struct hs_recovery_pass *pass)
{
    cJSON *report = pass->report;
    const struct hs_backend_ops *ops;
    size_t i;
    char *path = hs__asprintf("%s/%s", dir, file);
    char *lock = hs__asprintf("%s/%.*s.lock", dir, (int)(strlen(file) - 5), file);
    char *text = NULL;
    cJSON *doc = NULL, *entry;
    const char *backend, *scratch;
    int fd, done = 0;

    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0)
        goto cleanup; /* a live run owns it */
    text = hs__read_file(path, 1 << 20);
    doc = text ? cJSON_Parse(text) : NULL;
    entry = cJSON_CreateObject();
    cJSON_AddStringToObject(entry, "journal", path);
    if (!doc) {
        cJSON_AddStringToObject(entry, "error", "unreadable journal, left in place");
        cJSON_AddItemToArray(report, entry);
        goto cleanup;
    }
    backend = hs__jstr(doc, "backend");
    scratch = hs__jstr(doc, "scratch");
    if (hs__jstr(doc, "domain"))
        cJSON_AddStringToObject(entry, "domain", hs__jstr(doc, "domain"));
    if (hs__jstr(doc, "job"))
        cJSON_AddStringToObject(entry, "job", hs__jstr(doc, "job"));
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "undone"))) {
        cJSON_AddStringToObject(entry, "action", "none: undone before; its records in Glance "
                                                 "are looked at");
    } else {
        if (recover_kill_children(scratch) > 0)
            cJSON_AddStringToObject(entry, "killed", "qemu-img children of the dead run");
        ops = NULL;
        for (i = 0; backend && eng->backends[i]; i++)
            if (!strcmp(eng->backends[i]->name, backend))
                ops = eng->backends[i];
        if (ops && ops->recover)
            ops->recover(conn, doc, entry);
        else if (backend)
            cJSON_AddStringToObject(entry, "action", "none: nothing to undo for this backend");
        else
            cJSON_AddStringToObject(entry, "action", "none: the job had not touched the domain");
        recover_store(doc, entry);
        /* the scratch goes once what used it is gone: a backup that could not
         * be ended may still write its copy-before-write data there */
        if (!cJSON_GetObjectItemCaseSensitive(entry, "error") && scratch &&
            hs__rm_rf(scratch) == 0)
            cJSON_AddStringToObject(entry, "removed", scratch);
    }
    if (!cJSON_GetObjectItemCaseSensitive(entry, "error") && journal_has_glance_images(doc)) {
        const cJSON *img;
        cJSON *ids;

        if (journal_mark_undone(path, doc) < 0) {
            cJSON_AddStringToObject(entry, "error", "cannot mark the journal undone");
        } else {
            /* after the pass, on the loop; the lock stays taken till then */
            ids = cJSON_AddArrayToObject(entry, "glance_pending");
            cJSON_ArrayForEach(img, cJSON_GetObjectItemCaseSensitive(doc, "images"))
                if (hs__jstr(img, "id"))
                    cJSON_AddItemToArray(ids, cJSON_CreateString(hs__jstr(img, "id")));
            hs__reclaim_add(pass, entry, path, lock, fd, doc);
            fd = -1;
            hs_log(HS_LOG_INFO, "recovered journal '%s'; its Glance records next", path);
            cJSON_AddItemToArray(report, entry);
            goto cleanup;
        }
    }
    if (!cJSON_GetObjectItemCaseSensitive(entry, "error")) {
        unlink(path);
        unlink(lock);
        done = 1;
    }
    hs_log(HS_LOG_INFO, "recovered journal '%s'", path);
    cJSON_AddItemToArray(report, entry);
cleanup:
    if (fd >= 0)
        close(fd);
    cJSON_Delete(doc);
    free(text);
    free(path);
    free(lock);
    return done;
}

/* Worker: the temporary file of a journal's rewrite that a dead run left
 * (.<id>.json.<random>.tmp, killed between its write and its rename), and
 * the lock of a journal whose first write never got its name. A tmp file is
 * only written under its journal's lock: a lock that can be taken, or none,
 * means its writer is dead, and ids are never used twice. */
static void recover_sweep_tmp(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char base[256], name[300];
    size_t len;
    int dfd, lfd;

    if (!d)
        return;
    dfd = dirfd(d);
    while ((de = readdir(d)) != NULL) {
        if (!hs__atomic_tmp_name(de->d_name, base, sizeof(base)) ||
            (len = strlen(base)) < 6 || strcmp(base + len - 5, ".json"))
            continue;
        base[len - 5] = '\0';
        snprintf(name, sizeof(name), "%s.lock", base);
        lfd = openat(dfd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (lfd >= 0 && flock(lfd, LOCK_EX | LOCK_NB) < 0) {
            close(lfd); /* a live run's */
            continue;
        }
        if (unlinkat(dfd, de->d_name, 0) == 0)
            hs_log(HS_LOG_INFO, "removed '%s/%s' of a dead run", dir, de->d_name);
        snprintf(name, sizeof(name), "%s.json", base);
        if (lfd >= 0 && faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
            snprintf(name, sizeof(name), "%s.lock", base);
            unlinkat(dfd, name, 0);
        }
        if (lfd >= 0)
            close(lfd);
    }
    closedir(d);
}

/* Worker: every journal of a dead run (one whose lock can be taken) into
 * @pass's report. */
static int recover_pass(struct hs_engine *eng, virConnectPtr conn, struct hs_recovery_pass *pass)
{
    char *dir = hs__journal_dir(eng->state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t len;

    if (!d) {
        free(dir);
        return 0;
    }
    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);
        if (len > 5 && !strcmp(de->d_name + len - 5, ".json"))
            recover_one(eng, conn, dir, de->d_name, pass);
    }
    closedir(d);
    recover_sweep_tmp(dir);
    free(dir);
    /* lost on the way: the journals not undone stay, and it runs again */
    return virConnectIsAlive(conn) == 1 ? 0 : -EIO;
}

static int recover_work(struct hs_virt_call *call, virConnectPtr conn)
{
    struct hs_engine *eng = call->data;

    eng->recover_pass.report = cJSON_CreateArray();
    return recover_pass(eng, conn, &eng->recover_pass);
}

/* A journal the pass could not undo, and which can be read: tried again. */
static int report_left(const cJSON *report)
{
    const cJSON *e;

    cJSON_ArrayForEach(e, report) {
        if (cJSON_GetObjectItemCaseSensitive(e, "error") &&
            (cJSON_GetObjectItemCaseSensitive(e, "job") ||
             cJSON_GetObjectItemCaseSensitive(e, "domain")))
            return 1;
    }
    return 0;
}

static void recover_pass_done(struct hs_engine *eng, struct hs_recovery_pass *pass)
{
    cJSON *report = pass->report;

    pass->report = NULL;
    /* what this pass could not undo, the engine retries by itself */
    if (report_left(report) && !eng->closing)
        hs__engine_orphaned(eng);
    eng->recover_cb(eng, pass->status, report, eng->recover_data);
    cJSON_Delete(report);
}

static void recover_done(struct hs_virt_call *call, int status)
{
    struct hs_engine *eng = call->data;
    struct hs_recovery_pass *pass = &eng->recover_pass;

    if (status == -ENOTCONN) {
        /* lost halfway: run it again once libvirt is back (journals stay until undone) */
        hs__reclaim_discard(pass);
        cJSON_Delete(pass->report);
        pass->report = NULL;
        eng->recover_pending = 1;
        return;
    }
    /* the report is given once the dead runs' Glance records are looked at
     * too (bounded: a few tries of a request each, Glance away or not) */
    pass->status = status;
    pass->done = recover_pass_done;
    hs__reclaim_start_all(eng, pass);
}

void hs__engine_recover_start(struct hs_engine *eng)
{
    int rc;

    eng->recover_call.data = eng;
    rc = hs__virt_queue(eng->virt, &eng->recover_call, NULL, recover_work, recover_done);
    eng->recover_pending = rc < 0; /* down again: the next connect runs it */
}

int hs_engine_recover(struct hs_engine *eng, hs_recover_cb cb, void *data)
{
    eng->recover_cb = cb;
    eng->recover_data = data;
    if (hs__virt_up(eng->virt))
        hs__engine_recover_start(eng);
    else
        eng->recover_pending = 1;
    return 0;
}

/* ---- the engine's own orphans ---- */

#define HS_ORPHAN_BACKOFF_MIN_MS 2000
#define HS_ORPHAN_BACKOFF_MAX_MS 60000

static void orphan_timer_cb(uv_timer_t *t);

static int orphan_work(struct hs_virt_call *call, virConnectPtr conn)
{
    struct hs_engine *eng = call->data;

    eng->orphan_pass.report = cJSON_CreateArray();
    return recover_pass(eng, conn, &eng->orphan_pass);
}

static void orphan_schedule(struct hs_engine *eng, uint64_t ms)
{
    if (!eng->closing && !eng->orphan_busy)
        uv_timer_start(&eng->orphan_timer, orphan_timer_cb, ms, 0);
}

static void orphan_pass_done(struct hs_engine *eng, struct hs_recovery_pass *pass)
{
    cJSON *report = pass->report, *e, *ev;
    int left = pass->status < 0;

    pass->report = NULL;
    eng->orphan_busy = 0;
    cJSON_ArrayForEach(e, report) {
        /* what was undone, or why not yet: told like a job's news */
        ev = cJSON_Duplicate(e, 1);
        cJSON_AddStringToObject(ev, "event", "recovered");
        if (cJSON_GetObjectItemCaseSensitive(e, "error")) {
            left = 1;
            hs_log(HS_LOG_WARN, "a journal left by job %s is not undone yet: %s",
                   cJSON_GetStringValue(cJSON_GetObjectItem(e, "job")) ?: "?",
                   cJSON_GetStringValue(cJSON_GetObjectItem(e, "error")));
        }
        hs__engine_emit(eng, ev);
    }
    cJSON_Delete(report);
    if (!left) {
        eng->orphans = 0;
        eng->orphan_backoff_ms = HS_ORPHAN_BACKOFF_MIN_MS;
        return;
    }
    eng->orphan_backoff_ms *= 2;
    if (eng->orphan_backoff_ms > HS_ORPHAN_BACKOFF_MAX_MS)
        eng->orphan_backoff_ms = HS_ORPHAN_BACKOFF_MAX_MS;
    orphan_schedule(eng, eng->orphan_backoff_ms);
}

static void orphan_done(struct hs_virt_call *call, int status)
{
    struct hs_engine *eng = call->data;
    struct hs_recovery_pass *pass = &eng->orphan_pass;

    pass->status = status;
    pass->done = orphan_pass_done;
    hs__reclaim_start_all(eng, pass); /* busy until its reclaims have ended */
}

static void orphan_timer_cb(uv_timer_t *t)
{
    struct hs_engine *eng = t->data;

    if (eng->closing || eng->orphan_busy || !eng->orphans)
        return;
    if (!hs__virt_up(eng->virt))
        return; /* once libvirt is back (hs__engine_orphans_reconnected) */
    eng->orphan_call.data = eng;
    if (hs__virt_queue(eng->virt, &eng->orphan_call, NULL, orphan_work, orphan_done) == 0)
        eng->orphan_busy = 1;
    else
        orphan_schedule(eng, eng->orphan_backoff_ms);
}

void hs__engine_orphaned(struct hs_engine *eng)
{
    eng->orphans = 1;
    if (!eng->orphan_backoff_ms)
        eng->orphan_backoff_ms = HS_ORPHAN_BACKOFF_MIN_MS;
    if (!uv_is_active((uv_handle_t *)&eng->orphan_timer))
        orphan_schedule(eng, eng->orphan_backoff_ms);
}

void hs__engine_orphans_reconnected(struct hs_engine *eng)
{
    if (eng->orphans) {
        eng->orphan_backoff_ms = HS_ORPHAN_BACKOFF_MIN_MS;
        orphan_schedule(eng, 0);
    }
}
