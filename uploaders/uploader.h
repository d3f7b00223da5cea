/*
 * Uploaders: where an image goes. One request per image; the caller owns the
 * request, its strings and its image stream (the uploader sets the stream's
 * reader while it reads, and clears it when done); completion is
 * cb(req, status), never called from inside begin().
 */
#ifndef HS_UPLOADER_H
#define HS_UPLOADER_H

#include <stdint.h>
#include <uv.h>
#include <cjson/cJSON.h>

#include "digest.h"
#include "err.h"
#include "stream.h"

struct hs_uploader;
struct hs_upload_req;
typedef void (*hs_upload_cb)(struct hs_upload_req *req, int status);
typedef void (*hs_upload_progress_cb)(struct hs_upload_req *req);
/* Something the operator must see (a record left behind, an image checked
 * by size only): one line, also logged as a warning. */
typedef void (*hs_upload_warn_cb)(struct hs_upload_req *req, const char *msg);

struct hs_upload_req {
    /* in, borrowed */
    struct hs_stream *src; /* the image: read from byte 0, rewound to retry */
    const char *name;   /* image name */
    const char *format; /* "qcow2" or "raw" */
    uint64_t size;      /* bytes in src */
    uint64_t virtual_size;
    const cJSON *props;                /* image properties */
    hs_upload_progress_cb on_progress; /* optional */
    hs_upload_warn_cb on_warn;         /* optional */
    int rotation; /* Glance: once published, the backups of props' instance_uuid,
                     hotsnap_disk and backup_type kept (this one counted); 0: none */
    void *data;                        /* the caller's */
    /* in and out: the image's id, chosen by the caller before begin (the
     * job journals it first, so that a dead run's files and records can be
     * found); a Glance that needs a new record replaces it */
    char image_id[64];
    /* out */
    char *location; /* owned by the request; free with hs__upload_req_clear */
    uint64_t sent;
    char left_behind[64]; /* a record the upload made and could not delete (the first, when
                             several: each is warned about), or "" */
    struct hs_err err;
    /* the uploader's */
    struct hs_uploader *up;
    hs_upload_cb cb;
    void *priv;
};

struct hs_uploader_ops {
    const char *name;
    /* Check the destination before any domain is touched. */
    int (*check)(struct hs_uploader *up, struct hs_err *err);
    int (*begin)(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb);
    /* Optional: remove the record req->image_id a dead run made for the
     * image req->name with req->props, unless it is gone or another's; then
     * cb(req, 0), req->sent 1 when it was removed. One that could not be
     * removed is req->left_behind. */
    int (*reclaim)(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb);
    /* Stop a running upload (or reclaim); its cb still runs, with -ECANCELED. */
    void (*cancel)(struct hs_upload_req *req);
    void (*destroy)(struct hs_uploader *up);
};

/* What a Glance was seen to hash with (its os_hash_algo), per target: the
 * engine keeps it for as long as it runs, so a Glance configured for
 * another algorithm than sha512 is verified by its own from the image
 * after the first on. */
struct hs_digest_memo {
    char *key; /* the target's spec */
    enum hs_digest_algo algo;
    struct hs_digest_memo *next;
};

/* What an uploader may use, lent by the engine and the job's options. */
struct hs_uploader_env {
    uv_loop_t *loop;
    struct hs_http *http; /* curl multi on the loop */
    const char *token;    /* a ready auth token (glance), or NULL */
    const char *image_id; /* a client-chosen image id, or NULL */
    uint64_t max_rate;    /* bytes/s per upload, 0 = unlimited */
    int attempts;         /* tries per upload for transient failures */
    int stall_s;          /* seconds without progress before a transfer is retried */
    int outage_s;         /* seconds the store may be away before it fails; 0: none */
    unsigned store_mode;  /* dir: file mode of images and sidecars */
    enum hs_digest_algo store_digest; /* dir: the one digest a sidecar records */
    struct hs_digest_memo **learned;  /* the engine's, or NULL */
};

struct hs_uploader {
    const struct hs_uploader_ops *ops;
    uv_loop_t *loop;
    void *ctx;
    /* what its images' streams hash with: the digest it records (Glance:
     * its own os_hash_algo: sha512, or what it was seen to use) */
    enum hs_digest_algo digest;
    struct hs_digest_memo **learned; /* where to note what Glance uses, or NULL */
    char *learn_key;
};

extern const struct hs_uploader_ops hs_uploader_dir;
extern const struct hs_uploader_ops hs_uploader_glance;

/* "dir:PATH", "glance" (Keystone from OS_* variables) or "glance:URL" -> an
 * uploader. Unknown or malformed specs fail with a message. */
int hs__uploader_new(const struct hs_uploader_env *env, const char *spec, struct hs_uploader **out,
                     struct hs_err *err);
/* The glance uploader's constructor (uploaders/glance.c). */
int hs__glance_new(const struct hs_uploader_env *env, const char *url, struct hs_uploader *up,
                   struct hs_err *err);
/* The local store's constructor (uploaders/dir.c). */
int hs__dir_new(const struct hs_uploader_env *env, const char *path, struct hs_uploader *up,
                struct hs_err *err);
void hs__uploader_free(struct hs_uploader *up);
/* A dir: store's directory, or NULL for any other uploader. */
const char *hs__dir_path(const struct hs_uploader *up);
/* Glance reported @algo for an image of @up's: its next uploads (this
 * engine's) hash with it. */
void hs__uploader_learn(struct hs_uploader *up, enum hs_digest_algo algo);
void hs__digest_memo_free(struct hs_digest_memo *m);
void hs__upload_req_clear(struct hs_upload_req *req);

#endif
