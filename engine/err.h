/* Error records that travel with a request. */
#ifndef HS_ERR_H
#define HS_ERR_H

#include <stddef.h>

enum hs_err_kind {
    HS_ERR_NONE,
    HS_ERR_SYS,      /* detail: errno */
    HS_ERR_LIBVIRT,  /* detail: virErrorNumber */
    HS_ERR_QEMU_IMG, /* detail: exit status (or -signal) */
    HS_ERR_HTTP,     /* detail: HTTP status or CURLcode */
    HS_ERR_INPUT,    /* bad user input */
    HS_ERR_CANCELED,
};

struct hs_err {
    int code; /* negative errno, 0 when no error */
    enum hs_err_kind kind;
    long detail;
    char msg[768];
};

/*
 * Record an error unless one is recorded already (the first cause wins; later
 * ones are only logged by the caller). Returns @code, negative.
 */
int hs_err_set(struct hs_err *err, int code, enum hs_err_kind kind, long detail, const char *fmt,
               ...) __attribute__((format(printf, 5, 6)));
/* Record the calling thread's last libvirt error, prefixed by @fmt. */
int hs_err_virt(struct hs_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void hs_err_clear(struct hs_err *err);
/* Record @from (an inner request's error) in @err, or @status with a generic
 * message when @from is empty. Returns the code recorded or kept. */
int hs_err_adopt(struct hs_err *err, const struct hs_err *from, int status);
/* Copy into a caller buffer (NULL-safe). */
void hs_err_copy(const struct hs_err *err, char *buf, size_t len);

#endif
