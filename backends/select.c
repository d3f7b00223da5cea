#include <errno.h>
#include <stdio.h>

#include "backend.h"
#include "util.h"

static const char *state_name(int state)
{
    switch ((virDomainState)state) {
    case VIR_DOMAIN_NOSTATE:
        return "in no state";
    case VIR_DOMAIN_RUNNING:
        return "running";
    case VIR_DOMAIN_BLOCKED:
        return "blocked";
    case VIR_DOMAIN_PAUSED:
        return "paused";
    case VIR_DOMAIN_SHUTDOWN:
        return "shutting down";
    case VIR_DOMAIN_SHUTOFF:
        return "shut off";
    case VIR_DOMAIN_CRASHED:
        return "crashed";
    case VIR_DOMAIN_PMSUSPENDED:
        return "suspended by guest power management";
    case VIR_DOMAIN_LAST:
        break;
    }
    return "in an unknown state";
}

static const char *stopped_detail(int detail)
{
    switch ((virDomainEventStoppedDetailType)detail) {
    case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
        return "shut down";
    case VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
        return "destroyed";
    case VIR_DOMAIN_EVENT_STOPPED_CRASHED:
        return "crashed";
    case VIR_DOMAIN_EVENT_STOPPED_MIGRATED:
        return "migrated away";
    case VIR_DOMAIN_EVENT_STOPPED_SAVED:
        return "saved";
    case VIR_DOMAIN_EVENT_STOPPED_FAILED:
        return "stopped by a host failure";
    case VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT:
        return "reverted to a snapshot";
    case VIR_DOMAIN_EVENT_STOPPED_LAST:
        break;
    }
    return "stopped";
}

const char *hs__shutoff_reason(int reason)
{
    switch ((virDomainShutoffReason)reason) {
    case VIR_DOMAIN_SHUTOFF_UNKNOWN:
        return "stopped";
    case VIR_DOMAIN_SHUTOFF_SHUTDOWN:
        return "shut down";
    case VIR_DOMAIN_SHUTOFF_DESTROYED:
        return "destroyed";
    case VIR_DOMAIN_SHUTOFF_CRASHED:
        return "crashed";
    case VIR_DOMAIN_SHUTOFF_MIGRATED:
        return "migrated away";
    case VIR_DOMAIN_SHUTOFF_SAVED:
        return "saved";
    case VIR_DOMAIN_SHUTOFF_FAILED:
        return "stopped by a host failure";
    case VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT:
        return "reverted to a snapshot";
    case VIR_DOMAIN_SHUTOFF_DAEMON:
        return "stopped by libvirtd";
    case VIR_DOMAIN_SHUTOFF_LAST:
        break;
    }
    return "stopped";
}

void hs__capture_in_place(struct hs_capture *cap)
{
    size_t i;

    for (i = 0; i < cap->ndisks; i++) {
        cap->disks[i].pit_path = hs__strdup(cap->disks[i].disk->source);
        cap->disks[i].pit_format = hs__strdup(cap->disks[i].disk->format);
    }
}

int hs__backend_domain_gone(struct hs_capture *cap, int event, int detail)
{
    if (event != VIR_DOMAIN_EVENT_STOPPED && event != VIR_DOMAIN_EVENT_CRASHED)
        return 0;
    hs__backend_gone(cap, event == VIR_DOMAIN_EVENT_CRASHED ? "crashed" : stopped_detail(detail),
                     detail);
    return 1;
}

void hs__backend_gone(struct hs_capture *cap, const char *how, long detail)
{
    cap->domain_gone = 1;
    snprintf(cap->gone_how, sizeof(cap->gone_how), "%s", how);
    hs_err_set(cap->err, -ESRCH, HS_ERR_LIBVIRT, detail, "domain '%s' was %s during its snapshot",
               cap->info->name, how);
}

const struct hs_backend_ops *const hs__backends[] = {
    &hs_backend_stream, &hs_backend_live, &hs_backend_mirror, &hs_backend_cold,
    &hs_backend_offline, NULL,
};

const char *hs__jstr(const cJSON *doc, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);

    return cJSON_IsString(v) ? v->valuestring : NULL;
}

virDomainPtr hs__recover_domain(virConnectPtr conn, const cJSON *doc, cJSON *entry)
{
    const char *uuid = hs__jstr(doc, "uuid");
    virDomainPtr dom = uuid ? virDomainLookupByUUIDString(conn, uuid) : NULL;

    if (!dom)
        cJSON_AddStringToObject(entry, "action", "none: the domain no longer exists");
    return dom;
}

const struct hs_backend_ops *hs__backend_select(const struct hs_select_in *in, char *why,
                                                size_t whylen, struct hs_err *err)
{
    const char *st = state_name(in->state);
    int active = in->state == VIR_DOMAIN_RUNNING || in->state == VIR_DOMAIN_BLOCKED ||
                 in->state == VIR_DOMAIN_PAUSED;

    if (in->state == VIR_DOMAIN_SHUTOFF) {
        if (in->mode != HS_MODE_AUTO && in->mode != HS_MODE_OFFLINE) {
            hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                       "mode '%s' needs a running or paused domain; '%s' is shut off",
                       hs_mode_name(in->mode), in->domain);
            return NULL;
        }
        snprintf(why, whylen, "%s",
                 in->managed_save ? "suspended to a managed-save image: its disks are at rest "
                                    "and it stays suspended"
                                  : "shut off: its disks are at rest");
        return &hs_backend_offline;
    }
    if (!active) {
        hs_err_set(err, -EBUSY, HS_ERR_INPUT, in->state,
                   "domain '%s' is %s; hotsnap takes running, paused or shut-off domains",
                   in->domain, st);
        return NULL;
    }
    switch (in->mode) {
    case HS_MODE_OFFLINE:
        hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                   "mode 'offline' needs a shut-off domain; '%s' is %s", in->domain, st);
        return NULL;
    case HS_MODE_AUTO:
        if (in->has_backup && in->qemu_user) {
            snprintf(why, whylen,
                     "%s: backup API in pull mode, all disks at one instant, no downtime, "
                     "streamed from QEMU into the store with no image in scratch",
                     st);
            return &hs_backend_stream;
        }
        if (in->has_backup) {
            snprintf(why, whylen,
                     "%s: backup API in push mode (the user QEMU runs as is unknown, so no NBD "
                     "socket for pull mode), all disks at one instant, no downtime",
                     st);
            return &hs_backend_live;
        }
        snprintf(why, whylen, "%s: no backup API on this hypervisor, so a block copy", st);
        return &hs_backend_mirror;
    case HS_MODE_STREAM:
        if (!in->has_backup || !in->qemu_user) {
            hs_err_set(err, -ENOTSUP, HS_ERR_INPUT, 0,
                       "mode 'stream' needs libvirt's backup API%s; try --mode %s",
                       in->has_backup ? " and a known QEMU user" : ", which this hypervisor lacks",
                       in->has_backup ? "live" : "mirror");
            return NULL;
        }
        snprintf(why, whylen, "%s: stream requested", st);
        return &hs_backend_stream;
    case HS_MODE_LIVE:
        if (!in->has_backup) {
            hs_err_set(err, -ENOTSUP, HS_ERR_INPUT, 0,
                       "mode 'live' needs libvirt's backup API, which this hypervisor lacks; "
                       "try --mode mirror");
            return NULL;
        }
        snprintf(why, whylen, "%s: live requested", st);
        return &hs_backend_live;
    case HS_MODE_MIRROR:
        snprintf(why, whylen, "%s: mirror requested (each disk at its own instant)", st);
        return &hs_backend_mirror;
    case HS_MODE_COLD:
        snprintf(why, whylen, "%s: cold requested (the guest stops while its disks are copied)",
                 st);
        return &hs_backend_cold;
    }
    hs_err_set(err, -EINVAL, HS_ERR_INPUT, in->mode, "unknown mode %d", (int)in->mode);
    return NULL;
}
