#include <errno.h>
#include <stdio.h>

#include "backend.h"

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

const struct hs_backend_ops *hs__backend_select(enum hs_mode mode, const char *domain, int state,
                                                int managed_save, char *why, size_t whylen,
                                                struct hs_err *err)
{
    int active =
        state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_BLOCKED || state == VIR_DOMAIN_PAUSED;

    if (state == VIR_DOMAIN_SHUTOFF) {
        if (mode == HS_MODE_COLD) {
            hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                       "mode 'cold' needs a running or paused domain; '%s' is shut off", domain);
            return NULL;
        }
        snprintf(why, whylen, "%s",
                 managed_save ? "suspended to a managed-save image: its disks are at rest and "
                                "it stays suspended"
                              : "shut off: its disks are at rest");
        return &hs_backend_offline;
    }
    if (!active) {
        hs_err_set(err, -EBUSY, HS_ERR_INPUT, state,
                   "domain '%s' is %s; hotsnap takes running, "
                   "paused or shut-off domains",
                   domain, state_name(state));
        return NULL;
    }
    switch (mode) {
    case HS_MODE_OFFLINE:
        hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                   "mode 'offline' needs a shut-off domain; '%s' "
                   "is %s",
                   domain, state_name(state));
        return NULL;
    case HS_MODE_AUTO:
        snprintf(why, whylen, "%s: saved, copied and restored (no live backend yet)",
                 state_name(state));
        return &hs_backend_cold;
    case HS_MODE_COLD:
        snprintf(why, whylen, "%s: cold requested", state_name(state));
        return &hs_backend_cold;
    }
    hs_err_set(err, -EINVAL, HS_ERR_INPUT, mode, "unknown mode %d", (int)mode);
    return NULL;
}
