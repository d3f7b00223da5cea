/*
 * The libvirt bridge: one connection on the loop, domain events routed to the
 * watcher registered for that domain, slow calls on the worker pool, and
 * reconnection with backoff when libvirtd goes away.
 */
#ifndef HS_VIRT_H
#define HS_VIRT_H

#include <uv.h>
#include <libvirt/libvirt.h>

#include "err.h"

struct hs_virt;

/* Embedded in its owner; callbacks run on the loop thread. */
struct hs_virt_watch {
    unsigned char uuid[VIR_UUID_BUFLEN];
    void (*lifecycle)(struct hs_virt_watch *w, int event, int detail);
    void (*block_job)(struct hs_virt_watch *w, const char *disk, int type, int status);
    /* a domain job ended: VIR_DOMAIN_JOB_OPERATION_*, and libvirt's message when it failed */
    void (*job_completed)(struct hs_virt_watch *w, int operation, const char *errmsg);
    /* the connection went down (up = 0) or came back (up = 1) */
    void (*conn)(struct hs_virt_watch *w, int up);
    struct hs_virt_watch *next;
};

/* A libvirt call on the worker pool. The caller owns the request. */
struct hs_virt_call;
typedef int (*hs_virt_work_fn)(struct hs_virt_call *call, virConnectPtr conn);
typedef void (*hs_virt_done_cb)(struct hs_virt_call *call, int status);

struct hs_virt_call {
    uv_work_t work;
    struct hs_virt *virt;
    virConnectPtr conn; /* referenced while the call runs */
    hs_virt_work_fn fn;
    hs_virt_done_cb done;
    int status;
    struct hs_err err; /* filled by fn on the worker thread */
    void *data;
};

int hs__virt_open(uv_loop_t *loop, const char *uri, struct hs_virt **out, struct hs_err *err);
/* Close the connection and every handle; @cb when done. */
void hs__virt_close(struct hs_virt *v, void (*cb)(void *data), void *data);

/* Whether the hypervisor offers the backup API (domain capabilities), read at open. */
int hs__virt_has_backup(const struct hs_virt *v);

/* The live connection, or NULL while reconnecting. */
virConnectPtr hs__virt_conn(struct hs_virt *v);
const char *hs__virt_uri(const struct hs_virt *v);

void hs__virt_watch(struct hs_virt *v, struct hs_virt_watch *w);
void hs__virt_unwatch(struct hs_virt *v, struct hs_virt_watch *w);

/* Run @fn on the worker pool, then @done on the loop. -ENOTCONN while the
 * connection is down; @done is never called from inside this call. */
int hs__virt_queue(struct hs_virt *v, struct hs_virt_call *call, hs_virt_work_fn fn,
                   hs_virt_done_cb done);

/* Whether libvirt runs a job on @dom: 1, 0, or -1 on error (any thread).
 * libvirt 9.0 fails job info and stats during parts of a backup ("backup job data
 * missing"); a backup is then told by its XML. */
int hs__virt_job_active(virDomainPtr dom);

/* Time a quick libvirt call made on the loop thread: warn above 100 ms. */
uint64_t hs__virt_quick_begin(void);
void hs__virt_quick_end(uint64_t start, const char *what);

#endif
