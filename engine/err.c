#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "err.h"

static void err_vset(struct hs_err *err, int code, enum hs_err_kind kind, long detail,
                     const char *fmt, va_list ap)
{
    err->code = code;
    err->kind = kind;
    err->detail = detail;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

int hs_err_set(struct hs_err *err, int code, enum hs_err_kind kind, long detail, const char *fmt,
               ...)
{
    va_list ap;

    if (err->code != 0)
        return code;
    va_start(ap, fmt);
    err_vset(err, code, kind, detail, fmt, ap);
    va_end(ap);
    return code;
}

int hs_err_virt(struct hs_err *err, int code, const char *fmt, ...)
{
    virErrorPtr ve = virGetLastError();
    va_list ap;
    size_t n;
    char *p;

    if (err->code != 0)
        return code;
    va_start(ap, fmt);
    err_vset(err, code, HS_ERR_LIBVIRT, ve ? ve->code : 0, fmt, ap);
    va_end(ap);
    if (ve && ve->message) {
        n = strlen(err->msg);
        snprintf(err->msg + n, sizeof(err->msg) - n, ": %s", ve->message);
        /* one line: libvirt messages sometimes carry QEMU's newlines */
        for (p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return code;
}

int hs_err_adopt(struct hs_err *err, const struct hs_err *from, int status)
{
    if (from->code)
        return hs_err_set(err, from->code, from->kind, from->detail, "%s", from->msg);
    return hs_err_set(err, status, HS_ERR_SYS, -status, "failed: %s", strerror(-status));
}

void hs_err_clear(struct hs_err *err)
{
    memset(err, 0, sizeof(*err));
}

void hs_err_copy(const struct hs_err *err, char *buf, size_t len)
{
    if (buf && len)
        snprintf(buf, len, "%s", err->msg);
}
