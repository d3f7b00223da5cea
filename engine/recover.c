/*
 * Recovery: finish what a dead hotsnap run left. Each journal whose lock can
 * be taken belongs to a run that is gone; for a cold job that got as far as
 * the managed save, the domain is started again from its save image in the
 * state it had, its host devices are attached again, and the scratch
 * directory is removed. Runs on the worker pool; it may wait for a libvirt
 * job the dead run started (a save still in progress) to end.
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

#define HS_RECOVER_JOB_WAIT_S 120

static const char *jstr(const cJSON *doc, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);

    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Wait (on the worker) while libvirt still runs a job the dead run started. */
static void recover_wait_job(virDomainPtr dom)
{
    int i;

    for (i = 0; i < HS_RECOVER_JOB_WAIT_S * 5; i++) {
        if (hs__virt_job_active(dom) != 1)
            return;
        usleep(200 * 1000);
    }
}

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

static void recover_cold(virConnectPtr conn, const cJSON *doc, cJSON *entry)
{
    const char *uuid = jstr(doc, "uuid"), *resume = jstr(doc, "resume");
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(doc, "hostdevs"), *dev;
    virDomainPtr dom = uuid ? virDomainLookupByUUIDString(conn, uuid) : NULL;
    int state, reason, paused = resume && !strcmp(resume, "paused");
    struct hs_err err = {0};

    if (!dom) {
        cJSON_AddStringToObject(entry, "action", "none: the domain no longer exists");
        return;
    }
    recover_wait_job(dom);
    if (virDomainGetState(dom, &state, &reason, 0) < 0) {
        hs_err_virt(&err, -EIO, "cannot read the domain state");
        cJSON_AddStringToObject(entry, "error", err.msg);
    } else if (state == VIR_DOMAIN_SHUTOFF && virDomainHasManagedSaveImage(dom, 0) == 1) {
        if (virDomainCreateWithFlags(dom, paused ? VIR_DOMAIN_START_PAUSED : 0) < 0) {
            hs_err_virt(&err, -EIO, "cannot restore the domain");
            cJSON_AddStringToObject(entry, "error", err.msg);
        } else {
            cJSON_AddStringToObject(entry, "action",
                                    paused ? "restored, paused" : "restored, running");
            cJSON_ArrayForEach(dev, devs) {
                if (cJSON_IsString(dev) &&
                    virDomainAttachDeviceFlags(dom, dev->valuestring, VIR_DOMAIN_AFFECT_LIVE) < 0)
                    hs_err_virt(&err, -EIO, "cannot attach a host device again");
            }
            if (err.code)
                cJSON_AddStringToObject(entry, "error", err.msg);
        }
    } else {
        cJSON_AddStringToObject(entry, "action", "none: the domain was not left saved");
    }
    virDomainFree(dom);
}

/* A live or mirror job left by a dead run: no backup or block job, nothing frozen. */
static void recover_live(virConnectPtr conn, const cJSON *doc, cJSON *entry, int mirror)
{
    const char *uuid = jstr(doc, "uuid");
    const cJSON *disks = cJSON_GetObjectItemCaseSensitive(doc, "disks"), *d;
    virDomainPtr dom = uuid ? virDomainLookupByUUIDString(conn, uuid) : NULL;
    virDomainBlockJobInfo bj;
    struct hs_err err = {0};
    int did = 0;

    if (!dom) {
        cJSON_AddStringToObject(entry, "action", "none: the domain no longer exists");
        return;
    }
    if (virDomainIsActive(dom) == 1) {
        if (!mirror && hs__virt_job_active(dom) == 1) {
            if (virDomainAbortJob(dom) < 0)
                hs_err_virt(&err, -EIO, "cannot abort the backup job");
            recover_wait_job(dom); /* the abort concludes asynchronously */
            did = 1;
        }
        cJSON_ArrayForEach(d, disks) {
            if (!cJSON_IsString(d) || virDomainGetBlockJobInfo(dom, d->valuestring, &bj, 0) != 1)
                continue;
            if (virDomainBlockJobAbort(dom, d->valuestring, 0) < 0)
                hs_err_virt(&err, -EIO, "cannot end the block copy of disk '%s'", d->valuestring);
            did = 1;
        }
        /* a thaw when nothing is frozen is harmless; a frozen guest is not */
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(doc, "quiesce")))
            virDomainFSThaw(dom, NULL, 0, 0);
    }
    if (err.code)
        cJSON_AddStringToObject(entry, "error", err.msg);
    else
        cJSON_AddStringToObject(entry, "action",
                                did ? (mirror ? "block copy ended" : "backup job aborted")
                                    : "none: no job of the dead run was left");
    virDomainFree(dom);
}

static int recover_one(virConnectPtr conn, const char *dir, const char *file, cJSON *report)
{
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
    backend = jstr(doc, "backend");
    scratch = jstr(doc, "scratch");
    if (jstr(doc, "domain"))
        cJSON_AddStringToObject(entry, "domain", jstr(doc, "domain"));
    if (recover_kill_children(scratch) > 0)
        cJSON_AddStringToObject(entry, "killed", "qemu-img children of the dead run");
    if (backend && !strcmp(backend, "cold"))
        recover_cold(conn, doc, entry);
    else if (backend && (!strcmp(backend, "live") || !strcmp(backend, "mirror")))
        recover_live(conn, doc, entry, !strcmp(backend, "mirror"));
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
            recover_one(conn, dir, de->d_name, eng->recover_report);
    }
    closedir(d);
    free(dir);
    return 0;
}

static void recover_done(struct hs_virt_call *call, int status)
{
    struct hs_engine *eng = call->data;
    cJSON *report = eng->recover_report;

    eng->recover_report = NULL;
    eng->recover_cb(eng, status, report, eng->recover_data);
    cJSON_Delete(report);
}

int hs_engine_recover(struct hs_engine *eng, hs_recover_cb cb, void *data)
{
    eng->recover_cb = cb;
    eng->recover_data = data;
    eng->recover_call.data = eng;
    return hs__virt_queue(eng->virt, &eng->recover_call, recover_work, recover_done);
}
