/*
 * A store's images checked against their sidecars: each <id>.json names its
 * image file, its size and its one digest (os_hash_algo, os_hash_value);
 * the file is read again, hashed with that algorithm and compared. The
 * listing and each image's read and hash run on the worker pool, two
 * images at a time; the loop only hands out the work and reports. Files
 * are opened at the store's directory fd, never through a symlink, and the
 * pages read are dropped behind the read (a verify of a whole store does
 * not evict the guests' page cache).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h" /* hs__jstr */
#include "digest.h"
#include "hotsnap.h"
#include "util.h"
#include "verify.h"

#define VERIFY_AT_ONCE 2
#define VERIFY_BUF (4u << 20)
#define SIDECAR_MAX (1u << 20)

struct hs_verify;

struct verify_item {
    uv_work_t work;
    struct hs_verify *v;
    char *sidecar;
    char id[HS_UUID_LEN + 64];
    char file[256];
    char why[512];
};

struct hs_verify {
    uv_work_t list_work;
    uv_loop_t *loop;
    char *dir;
    int dirfd;
    hs_verify_image_cb each;
    hs_verify_done_cb done;
    void *data;
    char **names;
    size_t n, next;
    int inflight;
    int checked, bad;
    int rc;
    char err[512];
};

static void verify_next(struct hs_verify *v);

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Worker: the store opened, its sidecars listed (in order, for a stable report). */
static void list_work(uv_work_t *w)
{
    struct hs_verify *v = hs_container_of(w, struct hs_verify, list_work);
    struct dirent *de;
    size_t cap = 0, len;
    DIR *d;
    int fd;

    v->dirfd = open(v->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (v->dirfd < 0) {
        v->rc = -errno;
        snprintf(v->err, sizeof(v->err), "cannot open image store '%s': %s", v->dir,
                 strerror(errno));
        return;
    }
    fd = dup(v->dirfd);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        v->rc = -errno;
        snprintf(v->err, sizeof(v->err), "cannot list image store '%s': %s", v->dir,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    while ((de = readdir(d))) {
        len = strlen(de->d_name);
        /* sidecars only: a dot-file is a part or a temporary, not an image */
        if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".json"))
            continue;
        if (v->n == cap) {
            cap = cap ? 2 * cap : 64;
            v->names = realloc(v->names, cap * sizeof(*v->names));
            if (!v->names)
                abort();
        }
        v->names[v->n++] = hs__strdup(de->d_name);
    }
    closedir(d);
    if (v->n)
        qsort(v->names, v->n, sizeof(*v->names), cmp_names);
}

static char *read_sidecar(int dirfd, const char *name, char *why, size_t whylen)
{
    char *buf = NULL;
    struct stat st;
    ssize_t n;
    size_t got = 0;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        snprintf(why, whylen, "cannot open its sidecar: %s", strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > SIDECAR_MAX) {
        snprintf(why, whylen, "its sidecar is not a regular file of at most 1 MiB");
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        abort();
    while (got < (size_t)st.st_size) {
        n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = 0;
out:
    close(fd);
    return buf;
}

int hs__verify_image(int dirfd, const char *sidecar, char *file_out, size_t file_len, char *why,
                     size_t why_len)
{
    const char *file, *algo_name, *want, *id;
    enum hs_digest_algo algo;
    struct hs_digest dg = {0};
    char hex[HS_DIGEST_HEX];
    unsigned char *buf = NULL;
    const cJSON *size;
    struct stat st;
    uint64_t got = 0;
    cJSON *m = NULL;
    char *text;
    ssize_t n;
    int fd = -1;

    char idbuf[HS_UUID_LEN + 64];

    why[0] = 0;
    if (file_len)
        file_out[0] = 0;
    snprintf(idbuf, sizeof(idbuf), "%.*s", (int)(strlen(sidecar) - 5), sidecar);
    text = read_sidecar(dirfd, sidecar, why, why_len);
    if (!text)
        return -1;
    m = cJSON_Parse(text);
    free(text);
    file = hs__jstr(m, "file");
    algo_name = hs__jstr(m, "os_hash_algo");
    want = hs__jstr(m, "os_hash_value");
    id = hs__jstr(m, "id");
    size = cJSON_GetObjectItemCaseSensitive(m, "size");
    if (!m || !file || !algo_name || !want || !cJSON_IsNumber(size)) {
        snprintf(why, why_len,
                 "its sidecar is not an image's (no file, size, os_hash_algo or os_hash_value)");
        goto out;
    }
    snprintf(file_out, file_len, "%s", file);
    if (id && strcmp(id, idbuf)) {
        snprintf(why, why_len, "its sidecar names another id, '%.64s'", id);
        goto out;
    }
    if (strchr(file, '/') || file[0] == '.' || !*file) {
        snprintf(why, why_len, "its sidecar names a file outside the store");
        goto out;
    }
    if (hs__digest_parse(algo_name, &algo) < 0) {
        snprintf(why, why_len, "its digest '%.32s' is not one hotsnap computes",
                 algo_name);
        goto out;
    }
    fd = openat(dirfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, why_len, "cannot open '%s': %s", file, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "'%s' is not a regular file", file);
        goto out;
    }
    if ((double)st.st_size != size->valuedouble) {
        snprintf(why, why_len, "'%s' has %lld bytes, its sidecar says %.0f", file,
                 (long long)st.st_size, size->valuedouble);
        goto out;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    buf = malloc(VERIFY_BUF);
    if (!buf)
        abort();
    hs__digest_init(&dg, algo);
    for (;;) {
        n = pread(fd, buf, VERIFY_BUF, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, why_len, "cannot read '%s': %s", file, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        hs__digest_update(&dg, buf, (size_t)n);
        posix_fadvise(fd, (off_t)got, n, POSIX_FADV_DONTNEED);
        got += (uint64_t)n;
    }
    hs__digest_final(&dg, hex);
    if (got != (uint64_t)st.st_size)
        snprintf(why, why_len, "'%s' changed while it was read", file);
    else if (strcmp(hex, want))
        snprintf(why, why_len,
                 "the %s of '%s' is not the one its sidecar records: the image changed after it "
                 "was stored",
                 algo_name, file);
out:
    hs__digest_free(&dg);
    free(buf);
    if (fd >= 0)
        close(fd);
    cJSON_Delete(m);
    return why[0] ? -1 : 0;
}

/* Worker: one image read again and hashed, against its sidecar. */
static void item_work(uv_work_t *w)
{
    struct verify_item *it = hs_container_of(w, struct verify_item, work);

    snprintf(it->id, sizeof(it->id), "%.*s", (int)(strlen(it->sidecar) - 5), it->sidecar);
    hs__verify_image(it->v->dirfd, it->sidecar, it->file, sizeof(it->file), it->why,
                     sizeof(it->why));
}

static void verify_end(struct hs_verify *v)
{
    size_t i;

    v->done(v->checked, v->bad, v->rc, v->rc < 0 ? v->err : NULL, v->data);
    for (i = 0; i < v->n; i++)
        free(v->names[i]);
    free(v->names);
    if (v->dirfd >= 0)
        close(v->dirfd);
    free(v->dir);
    free(v);
}

static void item_done(uv_work_t *w, int status)
{
    struct verify_item *it = hs_container_of(w, struct verify_item, work);
    struct hs_verify *v = it->v;

    if (status < 0 && !it->why[0])
        snprintf(it->why, sizeof(it->why), "not checked: %s", uv_strerror(status));
    v->inflight--;
    v->checked++;
    if (it->why[0])
        v->bad++;
    v->each(it->id, it->file[0] ? it->file : NULL, it->why[0] ? it->why : NULL, v->data);
    free(it->sidecar);
    free(it);
    verify_next(v);
}

static void verify_next(struct hs_verify *v)
{
    struct verify_item *it;

    while (v->inflight < VERIFY_AT_ONCE && v->next < v->n) {
        it = hs__calloc(1, sizeof(*it));
        it->v = v;
        it->sidecar = hs__strdup(v->names[v->next++]);
        if (uv_queue_work(v->loop, &it->work, item_work, item_done) < 0)
            abort(); /* only fails for a NULL callback */
        v->inflight++;
    }
    if (!v->inflight)
        verify_end(v);
}

static void list_done(uv_work_t *w, int status)
{
    struct hs_verify *v = hs_container_of(w, struct hs_verify, list_work);

    if (status < 0 && !v->rc) {
        v->rc = status;
        snprintf(v->err, sizeof(v->err), "cannot list image store '%s': %s", v->dir,
                 uv_strerror(status));
    }
    if (v->rc < 0) {
        verify_end(v);
        return;
    }
    verify_next(v);
}

int hs_store_verify(uv_loop_t *loop, const char *target, hs_verify_image_cb each,
                    hs_verify_done_cb done, void *data, char *errbuf, size_t errlen)
{
    struct hs_verify *v;
    int rc;

    if (!target || strncmp(target, "dir:", 4) || !target[4]) {
        snprintf(errbuf, errlen,
                 "verify checks a dir:PATH store (Glance verifies its own "
                 "images, and hotsnap checked each after its upload)");
        return -EINVAL;
    }
    if (!each || !done) {
        snprintf(errbuf, errlen, "verify needs its callbacks");
        return -EINVAL;
    }
    v = hs__calloc(1, sizeof(*v));
    v->loop = loop;
    v->dir = hs__strdup(target + 4);
    v->dirfd = -1;
    v->each = each;
    v->done = done;
    v->data = data;
    rc = uv_queue_work(loop, &v->list_work, list_work, list_done);
    if (rc < 0) {
        snprintf(errbuf, errlen, "cannot queue work: %s", uv_strerror(rc));
        free(v->dir);
        free(v);
        return rc;
    }
    return 0;
}
