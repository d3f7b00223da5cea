/*
 * offline: the domain is shut off (or suspended to a managed-save image), so
 * its disks are at rest and are read where they are: each is exported by a
 * read-only qemu-nbd that libnbd starts for the job's connection alone
 * (socket activation: no socket file, and the server ends with the
 * connection, or with hotsnap), and streamed as an image. With compression
 * the disk is converted by qemu-img instead. qemu-nbd and qemu-img hold a
 * shared lock on the disks while they read, so a start of the domain during
 * the copy fails in QEMU rather than changing the disk under the copy.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "util.h"

struct offline {
    struct hs_virt_call call;
    struct hs_capture *cap;
    hs_capture_cb cb;
};

/* Worker: the domain is still off and every disk file is readable. */
static int offline_check(struct hs_virt_call *call, virConnectPtr conn)
{
    struct offline *o = call->data;
    struct hs_capture *cap = o->cap;
    int state, reason;
    size_t i;

    if (virDomainGetState(call->dom, &state, &reason, 0) < 0)
        return hs_err_virt(&call->err, -EIO, "cannot read the state of domain '%s'",
                           cap->info->name);
    if (state != VIR_DOMAIN_SHUTOFF)
        return hs_err_set(&call->err, -EBUSY, HS_ERR_INPUT, state,
                          "domain '%s' was started before its offline snapshot began",
                          cap->info->name);
    for (i = 0; i < cap->ndisks; i++) {
        const char *path = cap->disks[i].disk->source;

        if (access(path, R_OK) < 0)
            return hs_err_set(&call->err, -errno, HS_ERR_SYS, errno,
                              "disk '%s' of domain '%s': cannot read '%s': %s",
                              cap->disks[i].disk->target, cap->info->name, path, strerror(errno));
    }
    return 0;
}

/* Each disk as an export of a qemu-nbd of its own, its stderr kept in the
 * job's out/ directory for the error message (sh execs setpriv, which execs
 * qemu-nbd, so the pid socket activation names is qemu-nbd's). qemu-nbd
 * ends with its client's connection, but one never connected to (the
 * process killed during the handshake) would wait for its first client
 * forever: it is SIGKILLed when hotsnap dies (setpriv --pdeathsig, from
 * util-linux). */
static void offline_export(struct hs_capture *cap)
{
    size_t i;
    int n;

    for (i = 0; i < cap->ndisks; i++) {
        const struct hs_disk *d = cap->disks[i].disk;
        char **argv = hs__calloc(20, sizeof(char *));

        cap->disks[i].nbd_log = hs__asprintf("%s/out/%s.nbd.log", cap->scratch, d->target);
        n = 0;
        argv[n++] = hs__strdup("/bin/sh");
        argv[n++] = hs__strdup("-c");
        argv[n++] = hs__strdup("log=$1; shift; exec \"$@\" 2>\"$log\"");
        argv[n++] = hs__strdup("sh");
        argv[n++] = hs__strdup(cap->disks[i].nbd_log);
        argv[n++] = hs__strdup("setpriv");
        argv[n++] = hs__strdup("--pdeathsig");
        argv[n++] = hs__strdup("KILL");
        argv[n++] = hs__strdup("qemu-nbd");
        argv[n++] = hs__strdup("--read-only");
        argv[n++] = hs__strdup("--export-name");
        argv[n++] = hs__strdup(d->target);
        if (d->format) {
            argv[n++] = hs__strdup("--format");
            argv[n++] = hs__strdup(d->format);
        }
        argv[n++] = hs__strdup(d->source);
        argv[n] = NULL;
        cap->disks[i].nbd_argv = argv;
        cap->disks[i].nbd_export = hs__strdup(d->target);
    }
    cap->exported = 1;
}

static void offline_checked(struct hs_virt_call *call, int status)
{
    struct offline *o = call->data;
    struct hs_capture *cap = o->cap;

    if (status < 0)
        hs_err_adopt(cap->err, &call->err, status);
    else if (cap->compress)
        hs__capture_in_place(cap);
    else
        offline_export(cap);
    o->cb(cap, status);
}

static int offline_capture(struct hs_capture *cap, hs_capture_cb cb)
{
    struct offline *o = hs__calloc(1, sizeof(*o));
    int rc;

    o->cap = cap;
    o->cb = cb;
    o->call.data = o;
    cap->priv = o;
    rc = hs__virt_queue(cap->virt, &o->call, cap->info->uuid, offline_check, offline_checked);
    if (rc < 0)
        return hs_err_set(cap->err, rc, HS_ERR_LIBVIRT, 0,
                          "libvirt connection lost before the snapshot of '%s' began",
                          cap->info->name);
    return 0;
}

static int offline_release(struct hs_capture *cap, hs_capture_cb cb)
{
    return 1; /* nothing was changed */
}

static void offline_destroy(struct hs_capture *cap)
{
    free(cap->priv);
    cap->priv = NULL;
}

const struct hs_backend_ops hs_backend_offline = {
    .name = "offline",
    .exports = 1,
    .capture = offline_capture,
    .release = offline_release,
    .lifecycle = NULL,
    .destroy = offline_destroy,
};
