/*
 * The local image store, "dir:PATH": PATH/<id>.<format> and PATH/<id>.json.
 * The image is copied in chunks on the worker pool, hashed (sha256, sha512)
 * as it streams, fsynced and renamed into place; the metadata follows the
 * same way, so a reader never sees half an image, and an image whose .json
 * exists is complete. Both are root's alone (0600) unless the operator
 * chose a store mode to serve the store to a group.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "uploader.h"
#include "util.h"
#define HS_LOG_TAG "dir"
#include "log.h"

#define DIR_CHUNK (4u << 20)

struct dir_store {
    char *dir;
    unsigned mode; /* of images and sidecars: 0600 unless the operator serves the store */
};

struct dir_upload {
    uv_work_t work;
    struct hs_upload_req *req;
    const char *dir;
    unsigned mode;
    char *final_path;
    char *tmp_path;
    char *meta_path;
    int src_fd;
    int dst_fd;
    EVP_MD_CTX *sha256;
    EVP_MD_CTX *sha512;
    unsigned char *buf;
    size_t chunk; /* bytes moved by the last work item */
    int eof;
    int finishing;
    int canceled;
    int rc;
    int err_no;
    const char *err_what;
};

static int dir_check(struct hs_uploader *up, struct hs_err *err)
{
    const struct dir_store *st = up->ctx;

    return hs__dir_writable(st->dir, err, "image store");
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    ssize_t w;

    while (n > 0) {
        w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Worker: the metadata, written once the image is in place. */
static int dir_write_meta(struct dir_upload *u)
{
    struct hs_upload_req *req = u->req;
    unsigned char md[EVP_MAX_MD_SIZE];
    char h256[2 * 32 + 1], h512[2 * 64 + 1], now[40];
    unsigned len;
    cJSON *m = cJSON_CreateObject(), *it;
    char *text;
    int rc;

    EVP_DigestFinal_ex(u->sha256, md, &len);
    hs__hex(md, len, h256);
    EVP_DigestFinal_ex(u->sha512, md, &len);
    hs__hex(md, len, h512);
    hs__iso8601(hs__now(), now, sizeof(now));
    cJSON_AddStringToObject(m, "id", req->image_id);
    cJSON_AddStringToObject(m, "name", req->name);
    cJSON_AddStringToObject(m, "status", "active");
    cJSON_AddStringToObject(m, "disk_format", req->format);
    cJSON_AddStringToObject(m, "container_format", "bare");
    cJSON_AddNumberToObject(m, "size", (double)req->size);
    cJSON_AddNumberToObject(m, "virtual_size", (double)req->virtual_size);
    cJSON_AddStringToObject(m, "sha256", h256);
    cJSON_AddStringToObject(m, "os_hash_algo", "sha512");
    cJSON_AddStringToObject(m, "os_hash_value", h512);
    cJSON_AddStringToObject(m, "created_at", now);
    cJSON_AddStringToObject(m, "file", strrchr(u->final_path, '/') + 1);
    /* the properties a Nova snapshot carries, next to the image's own fields */
    cJSON_ArrayForEach(it, req->props) {
        if (!cJSON_GetObjectItemCaseSensitive(m, it->string))
            cJSON_AddItemToObject(m, it->string, cJSON_Duplicate(it, 1));
    }
    text = cJSON_Print(m);
    cJSON_Delete(m);
    rc = hs__write_atomic(u->meta_path, text, strlen(text), u->mode);
    free(text);
    return rc;
}

static void dir_work_cb(uv_work_t *w)
{
    struct dir_upload *u = hs_container_of(w, struct dir_upload, work);
    ssize_t n;

    u->chunk = 0;
    if (u->finishing) {
        if (fsync(u->dst_fd) < 0) {
            u->rc = -errno, u->err_what = "fsync";
            return;
        }
        close(u->dst_fd);
        u->dst_fd = -1;
        if (rename(u->tmp_path, u->final_path) < 0) {
            u->rc = -errno, u->err_what = "rename";
            return;
        }
        u->rc = dir_write_meta(u);
        if (u->rc < 0)
            u->err_what = "metadata write";
        return;
    }
    do {
        n = read(u->src_fd, u->buf, DIR_CHUNK);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        u->rc = -errno, u->err_what = "read";
        return;
    }
    if (n == 0) {
        u->eof = 1;
        return;
    }
    EVP_DigestUpdate(u->sha256, u->buf, (size_t)n);
    EVP_DigestUpdate(u->sha512, u->buf, (size_t)n);
    u->rc = write_all(u->dst_fd, u->buf, (size_t)n);
    if (u->rc < 0)
        u->err_what = "write";
    u->chunk = (size_t)n;
}

static void dir_free(struct dir_upload *u)
{
    if (u->src_fd >= 0)
        close(u->src_fd);
    if (u->dst_fd >= 0)
        close(u->dst_fd);
    EVP_MD_CTX_free(u->sha256);
    EVP_MD_CTX_free(u->sha512);
    free(u->buf);
    free(u->final_path);
    free(u->tmp_path);
    free(u->meta_path);
    free(u);
}

static void dir_finish(struct dir_upload *u, int status)
{
    struct hs_upload_req *req = u->req;

    if (status < 0) {
        unlink(u->tmp_path);
        unlink(u->final_path);
        unlink(u->meta_path);
    } else {
        req->location = hs__strdup(u->final_path);
    }
    req->priv = NULL;
    dir_free(u);
    req->cb(req, status);
}

static void dir_after_work_cb(uv_work_t *w, int status)
{
    struct dir_upload *u = hs_container_of(w, struct dir_upload, work);
    struct hs_upload_req *req = u->req;

    if (u->rc < 0) {
        hs_err_set(&req->err, u->rc, HS_ERR_SYS, -u->rc,
                   "storing image '%s' in '%s' failed (%s): %s", req->name, u->dir, u->err_what,
                   strerror(-u->rc));
        dir_finish(u, u->rc);
        return;
    }
    if (u->finishing && !u->canceled) {
        dir_finish(u, 0);
        return;
    }
    req->sent += u->chunk;
    if (u->chunk && req->on_progress)
        req->on_progress(req);
    if (u->canceled) {
        /* also after the rename: a canceled job publishes nothing */
        hs_err_set(&req->err, -ECANCELED, HS_ERR_CANCELED, 0, "storing image '%s' canceled",
                   req->name);
        dir_finish(u, -ECANCELED);
        return;
    }
    u->finishing = u->eof;
    uv_queue_work(req->up->loop, &u->work, dir_work_cb, dir_after_work_cb);
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
    hs__uuid4(req->image_id);
    u->req = req;
    u->dir = dir;
    u->mode = st->mode;
    u->dst_fd = -1;
    u->final_path = hs__asprintf("%s/%s.%s", dir, req->image_id, req->format);
    u->tmp_path = hs__asprintf("%s/.%s.%s.part", dir, req->image_id, req->format);
    u->meta_path = hs__asprintf("%s/%s.json", dir, req->image_id);
    u->src_fd = open(req->path, O_RDONLY | O_CLOEXEC);
    if (u->src_fd < 0) {
        rc = -errno;
        hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "cannot open '%s': %s", req->path,
                   strerror(-rc));
        goto fail;
    }
    posix_fadvise(u->src_fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    u->dst_fd = open(u->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (u->dst_fd < 0 || fchmod(u->dst_fd, u->mode) < 0) {
        rc = -errno;
        hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "cannot create '%s': %s", u->tmp_path,
                   strerror(-rc));
        goto fail;
    }
    u->sha256 = EVP_MD_CTX_new();
    u->sha512 = EVP_MD_CTX_new();
    if (!u->sha256 || !u->sha512 || !EVP_DigestInit_ex(u->sha256, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(u->sha512, EVP_sha512(), NULL))
        abort();
    u->buf = malloc(DIR_CHUNK);
    if (!u->buf)
        abort();
    req->priv = u;
    rc = uv_queue_work(up->loop, &u->work, dir_work_cb, dir_after_work_cb);
    if (rc < 0) {
        hs_err_set(&req->err, rc, HS_ERR_SYS, -rc, "cannot queue work: %s", uv_strerror(rc));
        req->priv = NULL;
        goto fail;
    }
    hs_log(HS_LOG_DEBUG, "storing '%s' as '%s'", req->path, u->final_path);
    return 0;
fail:
    if (u->dst_fd >= 0)
        unlink(u->tmp_path);
    dir_free(u);
    return rc;
}

static void dir_cancel(struct hs_upload_req *req)
{
    struct dir_upload *u = req->priv;

    if (u)
        u->canceled = 1;
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

const struct hs_uploader_ops hs_uploader_dir = {
    .name = "dir",
    .check = dir_check,
    .begin = dir_begin,
    .cancel = dir_cancel,
    .destroy = dir_destroy,
};
