/*
 * The libvirt connection: one connection at a time, owned by the loop, with
 * a generation number (its epoch). Opening, reconnecting and closing run on
 * the worker pool, so a slow or stopped libvirtd never holds the loop.
 * libvirt calls the close callback on whichever thread is inside an RPC when
 * the socket dies: the callback only records the epoch that died and wakes
 * the loop, which drops the connection, tells every watcher and reconnects
 * with backoff. Every call queued to the worker pool carries the epoch it
 * was made on; a call that fails on an epoch that died (or on a connection
 * that is no longer alive) completes with -ENOTCONN, never as an ordinary
 * failure: its effect on libvirt's side is unknown, and whoever made it
 * looks again on the next connection.
 */
#ifndef HS_VIRT_H
#define HS_VIRT_H

#include <stdint.h>
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
    uint64_t epoch;     /* the connection's generation when the call was queued */
    char uuid[VIR_UUID_STRING_BUFLEN]; /* the domain looked up for fn, or "" */
    virDomainPtr dom;                  /* that domain on conn, while fn runs */
    hs_virt_work_fn fn;
    hs_virt_done_cb done;
    int status;
    int lost;          /* fn failed and the connection was not alive after it */
    struct hs_err err; /* filled by fn on the worker thread */
    void *data;
};

/* The connection came up (@up = 1), or an attempt failed or the connection
 * was lost (@up = 0, with the reason in @err). Loop thread. */
typedef void (*hs_virt_state_cb)(void *data, int up, const struct hs_err *err);

/* Bind libvirt's events to @loop and start connecting on the worker pool;
 * attempts go on with backoff until hs__virt_close. 0 or a negative errno. */
int hs__virt_open(uv_loop_t *loop, const char *uri, hs_virt_state_cb cb, void *data,
                  struct hs_virt **out, struct hs_err *err);
/* Close the connection (on the worker pool) and every handle; @cb when done.
 * No call may be in flight. */
void hs__virt_close(struct hs_virt *v, void (*cb)(void *data), void *data);

/* Whether the hypervisor offers the backup API (domain capabilities), read
 * at each connect. */
/* Calls on the worker pool not yet completed. */
int hs__virt_calls(const struct hs_virt *v);
int hs__virt_has_backup(const struct hs_virt *v);
/* Whether a connection is up (and not known dead). */
int hs__virt_up(const struct hs_virt *v);
/* The current connection, or NULL while down (for tests). */
virConnectPtr hs__virt_conn(struct hs_virt *v);
const char *hs__virt_uri(const struct hs_virt *v);

void hs__virt_watch(struct hs_virt *v, struct hs_virt_watch *w);
void hs__virt_unwatch(struct hs_virt *v, struct hs_virt_watch *w);

/* Run @fn on the worker pool, then @done on the loop. With @uuid (a UUID
 * string), call->dom is that domain looked up on the call's own connection
 * (a domain that no longer exists completes with -ESRCH, fn not run).
 * -ENOTCONN while the connection is down; @done is never called from inside
 * this call. */
int hs__virt_queue(struct hs_virt *v, struct hs_virt_call *call, const char *uuid,
                   hs_virt_work_fn fn, hs_virt_done_cb done);

/* Whether libvirt runs a job on @dom: 1, 0, or -1 on error (any thread).
 * libvirt 9.0 fails job info and stats during parts of a backup ("backup job data
 * missing"); a backup is then told by its XML. */
int hs__virt_job_active(virDomainPtr dom);

#endif
