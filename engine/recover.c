/*
 * Recovery: finish what a dead hotsnap run left. Each journal whose lock can
 * be taken belongs to a run that is gone. The dead run's qemu-img children
 * are ended, the journal's backend undoes exactly what the journal records
 * (backend->recover: a save image, backup or block copy hotsnap made, told by
 * its mark or its scratch directory; never another tool's), and the scratch
 * directory is removed. Runs on the worker pool; a backend may wait for a
 * libvirt job the dead run started (a save still in progress) to end.
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

static int recover_one(struct hs_engine *eng, virConnectPtr conn, const char *dir,
                       const char *file, cJSON *report)
{
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
    if (scratch && hs__rm_rf(scratch) == 0)
        cJSON_AddStringToObject(entry, "removed", scratch);
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

static int recover_work(struct hs_virt_call *call, virConnectPtr conn)
{
    struct hs_engine *eng = call->data;
    char *dir = hs__journal_dir(eng->state_dir);
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t len;

    eng->recover_report = cJSON_CreateArray();
    if (!d) {
        free(dir);
        return 0;
    }
    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);
        if (len > 5 && !strcmp(de->d_name + len - 5, ".json"))
            recover_one(eng, conn, dir, de->d_name, eng->recover_report);
    }
    closedir(d);
    free(dir);
    /* lost on the way: the journals not undone stay, and it runs again */
    return virConnectIsAlive(conn) == 1 ? 0 : -EIO;
}

static void recover_done(struct hs_virt_call *call, int status)
{
    struct hs_engine *eng = call->data;
    cJSON *report = eng->recover_report;

    eng->recover_report = NULL;
    if (status == -ENOTCONN) {
        /* lost halfway: run it again once libvirt is back (journals stay until undone) */
        cJSON_Delete(report);
        eng->recover_pending = 1;
        return;
    }
    eng->recover_cb(eng, status, report, eng->recover_data);
    cJSON_Delete(report);
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
