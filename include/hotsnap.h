/*
 * hotsnap: snapshots of libvirt/QEMU guests published as images.
 *
 * The engine runs on a caller-supplied uv_loop_t and never blocks it: libvirt
 * events arrive through a libvirt event implementation on that loop, qemu-img
 * runs as non-blocking children, slow libvirt calls run on libuv's worker pool.
 *
 * Ownership: strings passed in are copied; objects handed out (struct hs_job)
 * are owned by the caller once their completion callback has run and are
 * released with hs_job_free(). cJSON objects passed to callbacks are borrowed
 * for the duration of the callback.
 */
#ifndef HOTSNAP_H
#define HOTSNAP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <cjson/cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HS_DEFAULT_URI "qemu:///system"
#define HS_DEFAULT_STATE_DIR "/var/lib/hotsnap"
#define HS_DEFAULT_STALL_TIMEOUT 30 /* seconds */
#define HS_DEFAULT_OUTAGE 180       /* seconds */

enum hs_log_level {
    HS_LOG_ERROR,
    HS_LOG_WARN,
    HS_LOG_INFO,
    HS_LOG_DEBUG,
};

/* How a disk's point-in-time content is captured. */
enum hs_mode {
    HS_MODE_AUTO,    /* stream for running and paused domains, offline when shut off */
    HS_MODE_LIVE,    /* libvirt backup API (push): all disks at one instant, copied to scratch */
    HS_MODE_MIRROR,  /* block copy to a delta, aborted at READY (Nova's live method) */
    HS_MODE_COLD,    /* managed save, convert, restore (Nova's cold path) */
    HS_MODE_OFFLINE, /* domain is shut off: its disks streamed (or converted) where they are */
    HS_MODE_STREAM,  /* libvirt backup API (pull): all disks at one instant, streamed over NBD
                        into the store, no image in scratch */
};

/* Freeze the guest's filesystems (QEMU guest agent) for the instant of capture. */
enum hs_quiesce {
    HS_QUIESCE_AUTO,     /* try; go on unquiesced, with a warning event, if the agent fails */
    HS_QUIESCE_REQUIRED, /* fail the job when the agent does not answer */
    HS_QUIESCE_OFF,
};

enum hs_format {
    HS_FORMAT_QCOW2,
    HS_FORMAT_RAW,
};

struct hs_engine;
struct hs_job;

/* Every job transition and progress report, as one JSON object (borrowed). */
typedef void (*hs_event_cb)(void *data, const cJSON *event);
/* Log lines from the library: level and one preformatted line without newline. */
typedef void (*hs_log_cb)(void *data, enum hs_log_level level, const char *line);

struct hs_engine_opts {
    const char *uri;       /* libvirt URI; NULL: HS_DEFAULT_URI */
    const char *state_dir; /* journal, scratch, default image store; NULL: HS_DEFAULT_STATE_DIR */
    hs_event_cb on_event;
    void *event_data;
    hs_log_cb on_log; /* NULL: no logging */
    void *log_data;
    enum hs_log_level log_level;
    /* limits on shared resources; 0: the default */
    int max_captures;        /* libvirt capture jobs at once (default 2) */
    int max_extracts;        /* qemu-img converts at once (default 2) */
    int max_uploads;         /* uploads at once (default 4) */
    uint64_t scratch_budget; /* bytes of scratch the images may take at once
                                (default: 90% of the state dir's free space) */
};

/*
 * Open the engine on @loop (registers hotsnap's libvirt event
 * implementation, which binds libvirt to this loop for the process lifetime)
 * and start connecting to libvirt on the worker pool; the loop is never held
 * by libvirt, also when libvirtd is slow or stopped. A lost connection is
 * made again with backoff. Returns 0 or a negative errno with a one-line
 * message in @errbuf.
 */
int hs_engine_open(uv_loop_t *loop, const struct hs_engine_opts *opts, struct hs_engine **out,
                   char *errbuf, size_t errlen);

typedef void (*hs_recover_cb)(struct hs_engine *eng, int status, const cJSON *report, void *data);
/*
 * Once libvirt is connected, finish what a dead hotsnap run left behind:
 * undo exactly what its journals record (a save image, backup or block copy
 * hotsnap made, a freeze it did not thaw), end its qemu-img children, remove
 * its scratch files. @report (borrowed) lists what was done. When the first
 * connection attempt fails, @cb gets a negative errno, a NULL @report, and
 * hs_engine_error() says why. Every front end calls this before starting jobs.
 */
int hs_engine_recover(struct hs_engine *eng, hs_recover_cb cb, void *data);

/* Why the last libvirt connection attempt failed, or NULL while connected. */
const char *hs_engine_error(const struct hs_engine *eng);
/* Whether the libvirt connection is up. */
int hs_engine_connected(const struct hs_engine *eng);

/* @list: the domains, their disks and the mode each would get, owned by the
 * callback (cJSON_Delete); NULL with @status < 0 and a one-line @error. */
typedef void (*hs_list_cb)(struct hs_engine *eng, int status, cJSON *list, const char *error,
                           void *data);
/* Read the domains on the worker pool; @cb on the loop, never from inside
 * this call. 0, or a negative errno when nothing was started. */
int hs_engine_list(struct hs_engine *eng, hs_list_cb cb, void *data);

/* Worst time the loop was kept from running, in ms, since open. */
double hs_engine_max_stall_ms(const struct hs_engine *eng);
/* How late the loop ran a 20 ms timer, at quantile @q (0.5, 0.99; 1: the
 * worst), in ms, since the engine opened: what every loop callback costs the
 * others. */
double hs_engine_loop_lateness_ms(const struct hs_engine *eng, double q);

/*
 * The engine's gauges and counters now, for a front end's metrics (owned by
 * the caller, cJSON_Delete): {"connected", "reconnects" (times the libvirt
 * connection came back after the first), "calls" (libvirt calls in flight),
 * "slots": {"capture"|"extract"|"upload": {"used", "max", "waiting"}},
 * "scratch": {"reserved", "budget"}}
 * (bytes; a budget of 0 is none).
 */
cJSON *hs_engine_stats(const struct hs_engine *eng);

/*
 * A target this front end is configured for, with the token that goes with
 * it (NULL: none): recovery deletes the image records a dead run made there
 * and never published. A token is sent only to the target it is given with;
 * a dead run's glance:URL not given here is asked without one ("glance",
 * Keystone, uses the OS_* variables as a job does). Call before
 * hs_engine_recover(); 0 or a negative errno.
 */
int hs_engine_add_target(struct hs_engine *eng, const char *target, const char *token);

/* Cancel every running job (their callbacks still run). */
void hs_engine_cancel_all(struct hs_engine *eng);

typedef void (*hs_close_cb)(struct hs_engine *eng, void *data);
/* Close: jobs must have completed. @cb runs once every handle is closed. */
void hs_engine_close(struct hs_engine *eng, hs_close_cb cb, void *data);

struct hs_snapshot_opts {
    const char *domain; /* name or UUID */
    const char *name;   /* image name template; NULL: "{domain}-{date}-{time}" */
    enum hs_mode mode;
    enum hs_format format;
    int compress;            /* qcow2 compression */
    int all_disks;           /* every disk, one image each; default: the root disk */
    const char *target;      /* "dir:PATH", "glance" (Keystone, OS_* variables) or
                                "glance:URL"; NULL: dir:<state_dir>/images */
    const char *scratch_dir; /* NULL: <state_dir>/scratch */
    enum hs_quiesce quiesce;
    /* glance targets */
    const char *image_id; /* a client-chosen image id (one disk only) */
    const char *token;    /* an auth token for glance:URL */
    uint64_t max_rate;    /* bytes/s per upload; 0 unlimited */
    int upload_attempts;  /* tries for transient failures; 0: 5 */
    int stall_timeout;    /* seconds an HTTP transfer may make no progress before it counts
                             as a transient failure; 0: 30 */
    /* dir: targets */
    unsigned store_mode; /* mode of image files and sidecars; 0: 0600 (root only) */
    int priority;         /* higher is served first when resources are short */
    /* glance targets: seconds Glance may be away (refused, unreachable, HTTP
       502/503/504, as in a restart) before an upload fails, such tries not
       counting as attempts; 0: HS_DEFAULT_OUTAGE; < 0: none (they count) */
    int upload_outage;
    /* dir: targets: the digest each image's sidecar records, its bytes hashed
       once as they stream: "xxh128" (NULL: the default), "sha256" or "sha512" */
    const char *store_digest;
    /* dir: targets, a running or paused guest: an incremental chain. The
       backup makes a libvirt checkpoint; the first image of a chain is
       full, each next one a qcow2 overlay of the one before holding only
       what changed since (read from the checkpoint's dirty bitmap). A disk
       whose chain cannot go on is read in full, with the reason. qcow2,
       uncompressed, mode auto or stream. */
    int incremental;
    /* glance targets: a backup, as Nova's createBackup makes one (image_type
       "backup", backup_type @backup_type: "daily" or "weekly"); once it is
       uploaded and verified, the oldest active backups of the same
       instance, disk and type beyond @rotation (this one counted) are
       deleted. 0: a snapshot, nothing rotated. */
    int rotation;
    const char *backup_type;
};

typedef void (*hs_job_cb)(struct hs_job *job, int status, void *data);

/*
 * Validate @opts and start a snapshot. Bad options fail here, with a one-line
 * message in @errbuf and nothing started. @cb runs exactly once, never from
 * inside this call; the caller then frees the job with hs_job_free().
 */
int hs_snapshot_start(struct hs_engine *eng, const struct hs_snapshot_opts *opts, hs_job_cb cb,
                      void *data, struct hs_job **out, char *errbuf, size_t errlen);

void hs_job_cancel(struct hs_job *job);
void hs_job_free(struct hs_job *job);

struct hs_image {
    const char *disk;     /* target device, e.g. "vda" */
    const char *id;       /* image id */
    const char *name;     /* image name */
    const char *location; /* where it was published */
    const char *format;   /* "qcow2" or "raw" */
    uint64_t size;        /* bytes published */
    uint64_t virtual_size;
    const char *sha512; /* hex digest of the published bytes; NULL until published, and
                           when they were hashed with another algorithm */
    /* the one digest of the published bytes, as recorded with the image
       (Glance's os_hash_value, a store's sidecar), and its algorithm
       ("sha512", "sha256", "xxh128"); NULL until published */
    const char *hash_algo;
    const char *hash;
    /* --incremental: whether this image is an overlay of the chain's
       previous one, that image's id (NULL when full), why a disk of a chain
       was read in full (NULL when it was not, or the chain is new) */
    int incremental;
    const char *parent;
    const char *full_reason;
    /* bytes of the disk read to make the image (streamed images); 0 when unknown */
    uint64_t read_bytes;
};

/* An image as JSON, as the engine's events show it (owned by the caller). */
cJSON *hs_image_json(const struct hs_image *img);

const char *hs_job_id(const struct hs_job *job);
const char *hs_job_domain(const struct hs_job *job);
const char *hs_job_mode(const struct hs_job *job);  /* backend used, once chosen */
const char *hs_job_error(const struct hs_job *job); /* NULL unless failed */
double hs_job_seconds(const struct hs_job *job);
/* How long the guest was kept from running or writing by this snapshot, in ms
 * (cold: save to restore; live: freeze or backup start to thaw; mirror: the
 * block job aborts); < 0 when it was not touched or the capture never ran. */
double hs_job_stall_ms(const struct hs_job *job);
size_t hs_job_image_count(const struct hs_job *job);
const struct hs_image *hs_job_image(const struct hs_job *job, size_t i);

/*
 * A store's images checked against their sidecars (`hotsnap verify`): for
 * each <id>.json of the dir:PATH @target, its image is read again and its
 * size and digest compared with what the sidecar records. On @loop's worker
 * pool, two images at a time; no engine or libvirt needed. @each runs once
 * per image (loop thread) with @why NULL when it is intact, else the reason;
 * @done once at the end with the counts, or status < 0 and the reason when
 * the store cannot be read. 0, or -EINVAL with a message in @errbuf.
 */
typedef void (*hs_verify_image_cb)(const char *id, const char *file, const char *why,
                                   void *data);
typedef void (*hs_verify_done_cb)(int checked, int bad, int status, const char *error,
                                  void *data);
int hs_store_verify(uv_loop_t *loop, const char *target, hs_verify_image_cb each,
                    hs_verify_done_cb done, void *data, char *errbuf, size_t errlen);

/*
 * A store pruned by retention (`hotsnap prune`): for the dir:PATH @target,
 * per domain and disk, the newest @keep_last images, the newest of each of
 * the last @keep_daily days and @keep_weekly ISO weeks (local time), and
 * each chain's last image stay; the rest go. Chain-aware: a kept overlay
 * whose parent goes is first rebased onto its nearest kept ancestor, or
 * made self-contained, with qemu-img, checked, compared and its sidecar
 * rewritten. A prune killed at any moment leaves every sidecar true and
 * every kept image readable; the next one finishes what it left. With
 * @dry_run nothing is changed. @each runs once per image (loop thread)
 * with {"id", "file", "series", "created_at", "action": "keep", "remove",
 * "rebase" or "flatten", "onto", "reason", "done"}; @done once at the end,
 * status < 0 with the reason when the prune stopped (then nothing was
 * removed after the rewrite that failed). 0, or -EINVAL with @errbuf.
 */
struct hs_prune_opts {
    const char *target; /* dir:PATH */
    int keep_last;
    int keep_daily;  /* 0-64 */
    int keep_weekly; /* 0-64 */
    int dry_run;
};
typedef void (*hs_prune_image_cb)(const cJSON *image, void *data);
typedef void (*hs_prune_done_cb)(int kept, int removed, int rewritten, int status,
                                 const char *error, void *data);
int hs_store_prune(uv_loop_t *loop, const struct hs_prune_opts *opts, hs_prune_image_cb each,
                   hs_prune_done_cb done, void *data, char *errbuf, size_t errlen);

/* Validation helpers shared with front ends; 0 or -EINVAL with a message. */
int hs_name_template_check(const char *tmpl, char *errbuf, size_t errlen);
/* An image id a caller chooses: a UUID (8-4-4-4-12 hex digits), as Glance
 * takes it and as a store names its files. */
int hs_image_id_check(const char *id, char *errbuf, size_t errlen);
int hs_mode_parse(const char *s, enum hs_mode *out);
int hs_format_parse(const char *s, enum hs_format *out);
int hs_quiesce_parse(const char *s, enum hs_quiesce *out);
const char *hs_mode_name(enum hs_mode mode);
const char *hs_format_name(enum hs_format fmt);

#ifdef __cplusplus
}
#endif
#endif /* HOTSNAP_H */
