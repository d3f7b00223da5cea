/*
 * Backends: how a disk's point-in-time content is captured.
 *
 * A backend turns a domain into one point-in-time source per selected disk
 * (capture): a file (cold, mirror, push, offline with compression), which
 * the job's extract step converts into an image, or an NBD export (stream,
 * offline), which the job streams as an image. Then it puts the domain back
 * as it found it (release): after extract for files, after the upload for
 * exports, which live until release. The job calls release on every path
 * out once capture was called, failure and cancel included.
 */
#ifndef HS_BACKEND_H
#define HS_BACKEND_H

#include <uv.h>
#include <libvirt/libvirt.h>

#include "hotsnap.h"
#include "domain.h"
#include "err.h"
#include "journal.h"
#include "virt.h"

struct hs_chain;

struct hs_capture;
typedef void (*hs_capture_cb)(struct hs_capture *cap, int status);

#define HS_WATCH_MS 200

struct hs_capture_disk {
    const struct hs_disk *disk; /* borrowed from cap->info */
    char *pit_path;             /* the point-in-time file to convert (owned), or NULL */
    char *pit_format;           /* its format (owned) */
    /* or an NBD export of the disk as of the instant (owned): at the unix
     * socket nbd_socket, or served by nbd_argv (NULL-terminated), a server
     * started for the connection alone */
    char *nbd_socket;
    char **nbd_argv;
    char *nbd_export;
    char *nbd_log; /* where nbd_argv's server writes its errors, or NULL */
};

/* One per job; the job owns it and everything it points to but priv.
 * Backends reach the domain through their libvirt calls (hs__virt_queue with
 * info->uuid: the domain looked up on the call's own connection). */
struct hs_capture {
    uv_loop_t *loop;
    struct hs_virt *virt;
    const char *job_id;
    const struct hs_domain_info *info;
    int dom_state; /* VIR_DOMAIN_* when the job began */
    struct hs_capture_disk *disks;
    size_t ndisks;
    const char *scratch; /* the job's scratch directory */
    struct hs_journal *journal;
    struct hs_err *err; /* the job's error record */
    enum hs_quiesce quiesce;
    char warning[256]; /* for the job's events (e.g. "not quiesced: ..."); set by the backend */
    char release_warning[256]; /* what release did that the operator must hear, or "" */
    double frozen_ms;  /* freeze-to-thaw time; < 0 when not frozen */
    /* How long hotsnap kept the guest from running or writing: cold, save to
     * restore; live, freeze (or the backup call) to thaw; mirror, the block
     * job aborts. < 0 when the guest was not touched (offline). */
    double stall_ms;
    void (*on_progress)(struct hs_capture *cap, uint64_t done, uint64_t total);
    int domain_gone; /* the domain was destroyed or crashed by someone else */
    char gone_how[48]; /* ... how ("destroyed", "crashed", ...) */
    int compress;    /* the job wants a compressed image (files may serve better) */
    int exported;    /* the disks are NBD exports: the job uploads before it releases */
    uint64_t scratch_peak; /* most bytes the backend held in scratch at once (exports) */
    /* stream, --incremental: the chain the backup goes on (its checkpoint
     * made with the backup, each disk incremental or full), borrowed from
     * the job; and, by release, whether every image was published (the
     * checkpoint becomes the chain's) or not (it goes) */
    struct hs_chain *chain;
    int published;
    void *priv;            /* backend state */
};

struct hs_backend_ops {
    const char *name;
    /* capture writes a full standalone qcow2 copy of each disk into the
     * scratch, hotsnap's own: when a plain qcow2 is wanted, it is published
     * as it is, unconverted */
    int standalone_pit;
    /* capture yields NBD exports (unless compression is asked for, where the
     * backend may give files) */
    int exports;
    /* ... whose copy-before-write data, what the guest overwrites while
     * they are open, is kept in scratch */
    int cbw_scratch;
    /* Make every disk's point-in-time file or export readable; @cb when done or failed.
     * Returns 0 when @cb will run, or a negative errno with cap->err set. */
    int (*capture)(struct hs_capture *cap, hs_capture_cb cb);
    /* Undo what capture changed on the domain; @cb when done. Returns 0 when
     * @cb will run, 1 when there was nothing to undo (no @cb), or a negative
     * errno with cap->err set (no @cb). Release looks at what is there on the
     * connection it runs on and undoes what is hotsnap's, so it may be called
     * again: -ENOTCONN (returned, or given to @cb, cap->err untouched) means
     * the connection was down or lost, and the job calls release again once
     * libvirt is back. */
    int (*release)(struct hs_capture *cap, hs_capture_cb cb);
    /* A lifecycle event of the domain while the job owns it. */
    void (*lifecycle)(struct hs_capture *cap, int event, int detail);
    /* Block job and domain job events of the domain (optional). */
    void (*block_job)(struct hs_capture *cap, const char *disk, int type, int status);
    void (*job_completed)(struct hs_capture *cap, int operation, const char *errmsg);
    /* Cancel a capture in flight (optional); its cb still runs, also when
     * libvirt is away (the job cancels a capture libvirt does not come back to). */
    void (*cancel)(struct hs_capture *cap);
    /* libvirt's connection came back (optional): events may have been lost. */
    void (*reconnected)(struct hs_capture *cap);
    /* Called every second while capture runs (optional): report with
     * cap->on_progress when the figures are known. */
    void (*progress)(struct hs_capture *cap);
    /* Called every HS_WATCH_MS while the exports are open (optional). */
    void (*watch)(struct hs_capture *cap);
    /* Free priv; NULL-safe on a capture never started. */
    void (*destroy)(struct hs_capture *cap);
    /* Recovery (worker thread, on @conn): undo what a dead run's job of
     * this backend left, exactly as its journal @doc records it and nothing
     * else; say what was done in @entry ("action", or "error"). Optional:
     * without it there is nothing to undo. */
    void (*recover)(virConnectPtr conn, const cJSON *doc, cJSON *entry);
};

/* Every backend, NULL-terminated (recovery finds a journal's backend here). */
extern const struct hs_backend_ops *const hs__backends[];

/* Recovery helpers (worker thread). A string of the journal, or NULL. */
const char *hs__jstr(const cJSON *doc, const char *key);
/* The journal's domain on @conn; NULL (with "action" said in @entry) when it
 * no longer exists. */
virDomainPtr hs__recover_domain(virConnectPtr conn, const cJSON *doc, cJSON *entry);

/* cold's mark, shared by its capture, release and recovery (worker thread) */
int hs__cold_mark(virDomainPtr dom, const char *job_id);
void hs__cold_unmark(virDomainPtr dom);
int hs__cold_save_is_ours(virDomainPtr dom, const char *job_id);

extern const struct hs_backend_ops hs_backend_offline;
extern const struct hs_backend_ops hs_backend_cold;
extern const struct hs_backend_ops hs_backend_live;
extern const struct hs_backend_ops hs_backend_stream;
extern const struct hs_backend_ops hs_backend_mirror;

/* The disks are at rest (shut off, or saved): each disk's own file is its
 * point-in-time file. */
void hs__capture_in_place(struct hs_capture *cap);

/* What a VIR_DOMAIN_SHUTOFF_* reason says happened ("destroyed", ...). */
const char *hs__shutoff_reason(int reason);

/* A lifecycle event that means the domain stopped or crashed under the job:
 * records it (cap->domain_gone, the job's error) and returns 1; else 0. */
int hs__backend_domain_gone(struct hs_capture *cap, int event, int detail);
/* Record that the domain went away under the job, @how ("destroyed", ...). */
void hs__backend_gone(struct hs_capture *cap, const char *how, long detail);

struct hs_select_in {
    enum hs_mode mode;
    const char *domain;
    int state;        /* VIR_DOMAIN_* */
    int managed_save; /* has a managed-save image */
    int has_backup;   /* the hypervisor offers the backup API */
    int qemu_user;    /* the user QEMU runs as is known (pull mode makes a directory for it) */
};

/* Mode selection: the backend, with the reason in @why; or NULL with the
 * error in @err. */
const struct hs_backend_ops *hs__backend_select(const struct hs_select_in *in, char *why,
                                                size_t whylen, struct hs_err *err);

#endif
