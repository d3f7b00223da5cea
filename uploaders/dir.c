/*
 * The local image store, "dir:PATH": PATH/<id>.<format> and PATH/<id>.json.
 * The image stream (engine/stream.h) is written straight into
 * PATH/.<id>.<format>.part from the stream's own buffers (lent, not
 * copied): the loop borrows what the stream has read while a worker writes
 * what was borrowed before, in one pwritev. Each byte is hashed once, by the
 * stream (the store's digest, --store-digest); the sidecar records it with
 * its algorithm (os_hash_algo, os_hash_value, as Glance names them). The
 * writes bypass the page cache (O_DIRECT, the buffers aligned; the tail
 * that is not a multiple of the alignment written buffered) where the
 * filesystem takes it; elsewhere each buffer's writeback is started as
 * soon as it is written and its pages are dropped once written back
 * (sync_file_range, POSIX_FADV_DONTNEED). Either way a night of snapshots
 * does not evict the guests' page cache. Then fsync and
 * rename, and the metadata the same way, so a reader never sees half an
 * image, and an image whose .json exists is complete. Both are root's alone (0600) unless the
 * operator chose a store mode to serve the store to a group.
 *
 * Every file is made relative to the store's directory fd, opened once per
 * image: O_CREAT | O_EXCL | O_NOFOLLOW, renamed into place without replacing
 * anything (an image id given twice fails, and removes nothing of the
 * other's). A store that users other than root could write in without the
 * sticky bit is refused: they could put files in the way.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "stream.h"
#include "uploader.h"
#include "util.h"
#define HS_LOG_TAG "dir"
#include "log.h"

#define DIR_BATCH (4u << 20) /* bytes a worker writes at once, at most */
#define DIR_PIECES 16         /* lends a worker writes at once, at most */
#define DIR_ALIGN 4096u       /* for O_DIRECT: any logical block size up to a page */

struct dir_store {
    char *dir;
    unsigned mode; /* of images and sidecars: 0600 unless the operator serves the store */
};

struct dir_upload {
    uv_work_t work;
    struct hs_upload_req *req;
    const char *dir;
    unsigned mode;
    int dirfd;        /* the store */
    char *final_path; /* for the location */
    char *final_name, *part_name, *meta_name;
    int renamed, meta_written; /* what is ours to remove on a failure */
    int dst_fd;
    int direct;              /* dst_fd has O_DIRECT */
    uint64_t w_off;          /* worker: where the next write goes */
    uint64_t w_prev, w_plen; /* worker: the last range whose writeback was started */
    char digest[HS_DIGEST_HEX]; /* the stream's, once every byte was taken */
    struct iovec piece[2][DIR_PIECES]; /* lent by the stream: the loop's, the worker's */
    int npiece[2];
    size_t len[2]; /* their bytes */
    int fill;      /* the pieces the loop gathers */
    int writing;   /* a worker writes the others */
    size_t w_len;  /* bytes the worker writes */
    int w_final;  /* ... and then fsync, rename, metadata */
    int eof;
    int done;
    int canceled;
    int rc;               /* the loop's */
    int w_rc;             /* the worker's, taken by the loop when it is done */
    const char *err_what; /* what failed, with rc */
};

/* The store, open: a directory that is safe to make root's files in. */
static int dir_open(const struct dir_store *st, struct hs_err *err)
{
    int fd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

    if (fd < 0)
        return hs_err_set(err, -errno, HS_ERR_INPUT, errno, "cannot open image store '%s': %s",
                          st->dir, strerror(errno));
    rc = hs__dir_safe(fd, st->dir, err, "image store");
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

static int dir_check(struct hs_uploader *up, struct hs_err *err)
{
    const struct dir_store *st = up->ctx;
    int fd, rc = hs__dir_writable(st->dir, err, "image store");

    if (rc < 0)
        return rc;
    fd = dir_open(st, err);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

/* Write @n bytes of @iov (which it consumes) at @off. */
static int writev_all(int fd, struct iovec *iov, int cnt, size_t n, uint64_t off)
{
    ssize_t w;

    while (n > 0) {
        while (cnt > 0 && iov->iov_len == 0)
            iov++, cnt--;
        w = pwritev(fd, iov, cnt, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        n -= (size_t)w;
        off += (uint64_t)w;
        for (; w > 0; iov++, cnt--) {
            size_t k = (size_t)w < iov->iov_len ? (size_t)w : iov->iov_len;

            iov->iov_base = (char *)iov->iov_base + k;
            iov->iov_len -= k;
            w -= (ssize_t)k;
            if (iov->iov_len)
                break;
        }
    }
    return 0;
}

/* Worker: the metadata, written once the image is in place. */
static int dir_write_meta(struct dir_upload *u)
{
    struct hs_upload_req *req = u->req;
    char now[40];
    cJSON *m = cJSON_CreateObject(), *it;
    char *text;
    int rc;

    hs__iso8601(hs__now(), now, sizeof(now));
    cJSON_AddStringToObject(m, "id", req->image_id);
    cJSON_AddStringToObject(m, "name", req->name);
    cJSON_AddStringToObject(m, "status", "active");
    cJSON_AddStringToObject(m, "disk_format", req->format);
    cJSON_AddStringToObject(m, "container_format", "bare");
    cJSON_AddNumberToObject(m, "size", (double)req->size);
    cJSON_AddNumberToObject(m, "virtual_size", (double)req->virtual_size);
    cJSON_AddStringToObject(m, "os_hash_algo", hs__digest_name(req->src->algo));
    cJSON_AddStringToObject(m, "os_hash_value", u->digest);
    cJSON_AddStringToObject(m, "created_at", now);
    cJSON_AddStringToObject(m, "file", strrchr(u->final_path, '/') + 1);
    /* the properties a Nova snapshot carries, next to the image's own fields */
    cJSON_ArrayForEach(it, req->props) {
        if (!cJSON_GetObjectItemCaseSensitive(m, it->string))
            cJSON_AddItemToObject(m, it->string, cJSON_Duplicate(it, 1));
    }
    text = cJSON_Print(m);
    cJSON_Delete(m);
    rc = hs__write_atomic_at(u->dirfd, u->meta_name, text, strlen(text), u->mode, 1);
    free(text);
    u->meta_written = rc == 0;
    return rc;
}

/* Worker: write the pieces; after the last, fsync, rename, metadata. */
static void dir_work_cb(uv_work_t *w)
{
    struct dir_upload *u = hs_container_of(w, struct dir_upload, work);
    struct iovec iov[DIR_PIECES], *last;
    int cnt = u->npiece[!u->fill], written = 0;

    /* the worker's results go in w_rc (and err_what), which the loop reads
     * only once the work is done; the pieces stay the loop's to give back */
    memcpy(iov, u->piece[!u->fill], sizeof(iov[0]) * (size_t)cnt);
    last = cnt ? &iov[cnt - 1] : NULL;
    if (u->w_len && u->direct) {
        /* every piece is aligned but the tail of the last one */
        size_t tail = last->iov_len & (DIR_ALIGN - 1), head = u->w_len - tail;
        void *tail_at = (char *)last->iov_base + last->iov_len - tail;

        last->iov_len -= tail;
        u->w_rc = head ? writev_all(u->dst_fd, iov, cnt, head, u->w_off) : 0;
        if (u->w_rc == -EINVAL && u->w_off == 0) {
            /* a filesystem that takes the flag but not the writes: buffered */
            fcntl(u->dst_fd, F_SETFL, fcntl(u->dst_fd, F_GETFL) & ~O_DIRECT);
            u->direct = 0;
            memcpy(iov, u->piece[!u->fill], sizeof(iov[0]) * (size_t)cnt);
        } else if (u->w_rc < 0) {
            u->err_what = "write";
            return;
        } else {
            if (tail) {
                /* the tail (of the image's last piece): through the cache,
                 * and whatever would follow too */
                struct iovec t = {tail_at, tail};

                fcntl(u->dst_fd, F_SETFL, fcntl(u->dst_fd, F_GETFL) & ~O_DIRECT);
                u->direct = 0;
                u->w_rc = writev_all(u->dst_fd, &t, 1, tail, u->w_off + head);
                if (u->w_rc < 0) {
                    u->err_what = "write";
                    return;
                }
            }
            u->w_off += u->w_len;
            written = 1;
        }
    }
    if (u->w_len && !written) {
        u->w_rc = writev_all(u->dst_fd, iov, cnt, u->w_len, u->w_off);
        if (u->w_rc < 0) {
            u->err_what = "write";
            return;
        }
        /* the previous batch is written back by now (or soon: wait for
         * it), and its pages are of no more use to anyone; this one's
         * writeback starts */
        if (u->w_plen) {
            sync_file_range(u->dst_fd, (off_t)u->w_prev, (off_t)u->w_plen,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER);
            posix_fadvise(u->dst_fd, (off_t)u->w_prev, (off_t)u->w_plen, POSIX_FADV_DONTNEED);
        }
        sync_file_range(u->dst_fd, (off_t)u->w_off, (off_t)u->w_len, SYNC_FILE_RANGE_WRITE);
        u->w_prev = u->w_off;
        u->w_plen = u->w_len;
        u->w_off += u->w_len;
    }
    if (!u->w_final)
        return;
    if (fsync(u->dst_fd) < 0) {
        u->w_rc = -errno, u->err_what = "fsync";
        return;
    }
    posix_fadvise(u->dst_fd, 0, 0, POSIX_FADV_DONTNEED); /* the last buffer's too */
    close(u->dst_fd);
    u->dst_fd = -1;
    u->w_rc = hs__rename_noreplace_at(u->dirfd, u->part_name, u->final_name);
    if (u->w_rc < 0) {
        u->err_what = u->w_rc == -EEXIST ? "an image of this id is there" : "rename";
        return;
    }
    u->renamed = 1;
    u->w_rc = dir_write_meta(u);
    if (u->w_rc < 0)
        u->err_what = u->w_rc == -EEXIST ? "a sidecar of this id is there" : "metadata write";
}

static void dir_free(struct dir_upload *u)
{
    if (u->dst_fd >= 0)
        close(u->dst_fd);
    if (u->dirfd >= 0)
        close(u->dirfd);
    free(u->final_path);
    free(u->final_name);
    free(u->part_name);
    free(u->meta_name);
    free(u);
}

/* The pieces a worker wrote are the stream's again. */
static void dir_give_back(struct dir_upload *u, int which)
{
    for (; u->npiece[which] > 0; u->npiece[which]--)
        hs__stream_give_back(u->req->src);
    u->len[which] = 0;
}

static void dir_finish(struct dir_upload *u, int status)
{
    struct hs_upload_req *req = u->req;

    dir_give_back(u, 0); /* no worker runs */
    dir_give_back(u, 1);
    hs__stream_reader(req->src, NULL, NULL);
    if (status < 0) {
        /* ours only: a file of the same name made by someone else stays */
        unlinkat(u->dirfd, u->part_name, 0);
        if (u->renamed)
            unlinkat(u->dirfd, u->final_name, 0);
        if (u->meta_written)
            unlinkat(u->dirfd, u->meta_name, 0);
    } else {
        req->location = hs__strdup(u->final_path);
    }
    req->priv = NULL;
    dir_free(u);
    req->cb(req, status);
}

static void dir_fail(struct dir_upload *u, int rc)
{
    struct hs_upload_req *req = u->req;

    if (rc == -ECANCELED)
        hs_err_set(&req->err, rc, HS_ERR_CANCELED, 0, "storing image '%s' canceled", req->name);
    else if (!req->err.code)
        hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "storing image '%s' in '%s' failed (%s): %s",
                   req->name, u->dir, u->err_what, strerror(-rc));
    dir_finish(u, rc);
}

static void dir_after_work_cb(uv_work_t *w, int status);

/* Borrow what the stream has (also while a worker writes what was borrowed
 * before); hand it to a worker once that one is done, or it is the last. */
static void dir_pump(struct dir_upload *u)
{
    struct hs_upload_req *req = u->req;
    const void *p;
    ssize_t n;
    int rc, f;

    if (u->done)
        return;
    f = u->fill;
    while (!u->eof && !u->rc && !u->canceled && u->npiece[f] < DIR_PIECES &&
           u->len[f] < DIR_BATCH) {
        n = hs__stream_lend(req->src, &p, &req->err);
        if (n == -EAGAIN)
            break; /* dir_ready pumps again */
        if (n < 0) {
            u->rc = (int)n;
        } else if (n == 0) {
            u->eof = 1;
        } else {
            u->piece[f][u->npiece[f]].iov_base = (void *)p;
            u->piece[f][u->npiece[f]++].iov_len = (size_t)n;
            u->len[f] += (size_t)n;
        }
    }
    if (u->writing)
        return; /* its end pumps again */
    if (u->rc < 0 || u->canceled) {
        /* a canceled job publishes nothing, also after the rename */
        dir_fail(u, u->rc < 0 ? u->rc : -ECANCELED);
        return;
    }
    if (!u->eof && !u->len[f])
        return; /* dir_ready pumps again */
    if (u->eof && req->sent + u->len[f] != req->size) {
        hs_err_set(&req->err, -EIO, HS_ERR_SYS, 0, "image '%s' ended after %llu of %llu bytes",
                   req->name, (unsigned long long)(req->sent + u->len[f]),
                   (unsigned long long)req->size);
        dir_fail(u, -EIO);
        return;
    }
    u->w_len = u->len[f];
    u->w_final = u->eof;
    if (u->eof) {
        const char *hex = hs__stream_digest(req->src); /* final: every byte was taken */

        snprintf(u->digest, sizeof(u->digest), "%s", hex ? hex : "");
    }
    u->fill = !f; /* the worker's are the ones just gathered */
    rc = uv_queue_work(req->up->loop, &u->work, dir_work_cb, dir_after_work_cb);
    if (rc < 0) {
        u->err_what = "queue";
        dir_fail(u, rc);
        return;
    }
    u->writing = 1;
    if (!u->eof)
        dir_pump(u); /* borrow more meanwhile */
}

static void dir_ready(struct hs_stream *st, void *data)
{
    dir_pump(data);
}

/* Pump on a later iteration (a worker's turn that writes nothing): never
 * inside begin or cancel. */
static int dir_kick(struct dir_upload *u)
{
    int rc;

    u->w_len = 0;
    u->w_final = 0;
    rc = uv_queue_work(u->req->up->loop, &u->work, dir_work_cb, dir_after_work_cb);
    if (rc == 0)
        u->writing = 1;
    return rc;
}

static void dir_after_work_cb(uv_work_t *w, int status)
{
    struct dir_upload *u = hs_container_of(w, struct dir_upload, work);
    struct hs_upload_req *req = u->req;

    u->writing = 0;
    dir_give_back(u, !u->fill);
    if (u->w_rc < 0 && !u->rc)
        u->rc = u->w_rc;
    if (status < 0 && !u->rc)
        u->rc = status, u->err_what = "worker";
    if (u->rc < 0) {
        dir_fail(u, u->rc);
        return;
    }
    req->sent += u->w_len;
    if (u->w_len && req->on_progress)
        req->on_progress(req);
    if (u->w_final && !u->canceled) {
        u->done = 1;
        dir_finish(u, 0);
        return;
    }
    dir_pump(u);
}

static int dir_begin(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb)
{
    struct dir_upload *u = hs__calloc(1, sizeof(*u));
    const struct dir_store *st = up->ctx;
    const char *dir = st->dir;
    int rc;

    req->up = up;
    req->cb = cb;
    req->sent = 0;
    if (!req->image_id[0])
        hs__uuid4(req->image_id);
    u->req = req;
    u->dir = dir;
    u->mode = st->mode;
    u->dst_fd = -1;
    u->dirfd = dir_open(st, &req->err);
    if (u->dirfd < 0) {
        rc = u->dirfd;
        dir_free(u);
        return rc;
    }
    u->final_path = hs__asprintf("%s/%s.%s", dir, req->image_id, req->format);
    u->final_name = hs__asprintf("%s.%s", req->image_id, req->format);
    u->part_name = hs__asprintf(".%s.%s.part", req->image_id, req->format);
    u->meta_name = hs__asprintf("%s.json", req->image_id);
    /* an id given twice, or an image or sidecar of this id there: refused */
    if (faccessat(u->dirfd, u->final_name, F_OK, AT_SYMLINK_NOFOLLOW) == 0 ||
        faccessat(u->dirfd, u->meta_name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
        u->dst_fd = -EEXIST;
    else
        u->dst_fd = hs__create_at(u->dirfd, u->part_name, u->mode);
    if (u->dst_fd < 0) {
        rc = u->dst_fd;
        if (rc == -EEXIST)
            hs_err_set(&req->err, rc, HS_ERR_INPUT, 0, "image store '%s' has an image of id %s "
                       "already", dir, req->image_id);
        else
            hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "cannot create '%s/%s': %s", dir,
                       u->part_name, strerror(-rc));
        u->dst_fd = -1;
        dir_free(u);
        return rc;
    }
    /* past the page cache where the filesystem can (not tmpfs before 6.6) */
    u->direct = fcntl(u->dst_fd, F_SETFL, fcntl(u->dst_fd, F_GETFL) | O_DIRECT) == 0;
    rc = dir_kick(u);
    if (rc < 0) {
        hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "cannot queue work: %s", uv_strerror(rc));
        unlinkat(u->dirfd, u->part_name, 0);
        dir_free(u);
        return rc;
    }
    req->priv = u;
    hs__stream_reader(req->src, dir_ready, u);
    hs_log(HS_LOG_DEBUG, "storing '%s' as '%s'", req->name, u->final_path);
    return 0;
}

static void dir_cancel(struct hs_upload_req *req)
{
    struct dir_upload *u = req->priv;

    if (!u)
        return;
    u->canceled = 1;
    if (!u->writing)
        dir_kick(u); /* waiting for the stream: out on the next iteration */
}

static void dir_destroy(struct hs_uploader *up)
{
    struct dir_store *st = up->ctx;

    free(st->dir);
    free(st);
}

int hs__dir_new(const struct hs_uploader_env *env, const char *path, struct hs_uploader *up,
                struct hs_err *err)
{
    struct dir_store *st = hs__calloc(1, sizeof(*st));

    st->dir = hs__strdup(path);
    st->mode = env->store_mode ? env->store_mode : 0600;
    up->ctx = st;
    return 0;
}

const char *hs__dir_path(const struct hs_uploader *up)
{
    return up && up->ops == &hs_uploader_dir ? ((const struct dir_store *)up->ctx)->dir : NULL;
}

const struct hs_uploader_ops hs_uploader_dir = {
    .name = "dir",
    .check = dir_check,
    .begin = dir_begin,
    .cancel = dir_cancel,
    .destroy = dir_destroy,
};
