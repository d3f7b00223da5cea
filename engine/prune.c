/*
 * A store pruned by retention (`hotsnap prune`), chain-aware: it never
 * removes an image that a kept image reads through.
 *
 * The images of a store fall into series, one per domain (instance_uuid)
 * and disk (hotsnap_disk), each in the order they were made (created_at).
 * A series keeps its newest --keep-last images, the newest image of each
 * of its last --keep-daily days and of its last --keep-weekly ISO weeks
 * (local time), and the image a chain file names as the chain's last (the
 * next incremental's parent). The rules are a union: an image any of them
 * names is kept.
 *
 * A kept overlay whose parent goes is rewritten first, on a copy: rebased
 * (qemu-img rebase, safe mode) onto its nearest kept ancestor, or, when it
 * has none, flattened (qemu-img convert) into a self-contained image. The
 * copy is checked (qemu-img check), compared with the image it replaces
 * through both chains (qemu-img compare), hashed with the sidecar's digest
 * and fsynced. Then, each step leaving every sidecar true and every kept
 * image readable:
 *   1. the sidecar names the copy, <id>.prune.<fmt>, with its digest;
 *   2. a hard link of the copy replaces <id>.<fmt> (rename(2), atomic): the
 *      overlays that name it as their backing file read the same content;
 *   3. the sidecar names <id>.<fmt> again; the copy's name is removed.
 * Only once every rewrite is done are images removed, each sidecar before
 * its image (an image without a sidecar is not one, for every reader).
 *
 * What a prune may leave behind when it is killed (copies, images whose
 * sidecar went) is listed in PATH/.prune-journal before it is made; the
 * next prune finishes or removes it before it plans, with the temporary
 * files of the journal's and the sidecars' atomic writes. A prune that
 * changes the store holds an flock on the store's directory: one at a
 * time, so a live prune's files are never a dead one's. Everything runs on
 * the worker pool and in qemu-img children; the loop only sequences.
 * Files are opened at the store's fd, never through a symlink, and only
 * the store user's own are touched.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/proc.h"
#include "backend.h" /* hs__jstr */
#include "digest.h"
#include "hotsnap.h"
#include "util.h"

#define PRUNE_JOURNAL ".prune-journal"
#define PRUNE_FILE_MAX (1u << 20)
#define PRUNE_BUF (4u << 20)

enum prune_action { KEEP, REMOVE, REBASE, FLATTEN };

struct prune_img {
    char *id;
    char *file;
    char *fmt;
    char *series; /* instance_uuid "/" hotsnap_disk, or NULL: not a snapshot of a disk */
    char *parent; /* hotsnap_parent */
    char *created;
    time_t t;
    cJSON *meta; /* the sidecar */
    enum prune_action action;
    char why[160];
    struct prune_img *onto; /* REBASE */
    char *tmp;              /* REBASE, FLATTEN: <id>.prune.<fmt> */
};

struct hs_prune {
    uv_work_t work;
    uv_loop_t *loop;
    struct hs_prune_opts opts;
    char *dir;
    int dirfd;
    hs_prune_image_cb each;
    hs_prune_done_cb done;
    void *data;
    struct prune_img *imgs;
    size_t n;
    size_t *rewrites; /* indexes into imgs, in order */
    size_t nrewrites, cur;
    int step;
    int kept, removed, rewritten;
    int rc;
    char err[768];
};

static void prune_step(struct hs_prune *p);

static void pfail(struct hs_prune *p, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void pfail(struct hs_prune *p, int rc, const char *fmt, ...)
{
    va_list ap;

    if (p->rc < 0)
        return; /* the first reason */
    p->rc = rc;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
}

static char *slurp_at(int dirfd, const char *name, int *err)
{
    struct stat st;
    char *buf;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    *err = 0;
    if (fd < 0) {
        *err = errno;
        return NULL;
    }
    /* only this user's own: another's could be planted */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        st.st_size > PRUNE_FILE_MAX) {
        close(fd);
        *err = EPERM;
        return NULL;
    }
    buf = hs__calloc(1, (size_t)st.st_size + 1);
    if (read(fd, buf, (size_t)st.st_size) != (ssize_t)st.st_size) {
        *err = EIO;
        free(buf);
        buf = NULL;
    }
    close(fd);
    return buf;
}

/* A name a sidecar may give its image: in the store, not a dot-file. */
static int name_ok(const char *f)
{
    return f && *f && f[0] != '.' && !strchr(f, '/') && strlen(f) < 200;
}

static int own_file_at(int dirfd, const char *name)
{
    struct stat st;

    return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
           st.st_uid == geteuid();
}

/* The file sidecar @id.json names, or NULL (caller frees). */
static char *sidecar_file(int dirfd, const char *id)
{
    char *name = hs__asprintf("%s.json", id), *text, *f = NULL;
    cJSON *m;
    int err;

    text = slurp_at(dirfd, name, &err);
    free(name);
    m = text ? cJSON_Parse(text) : NULL;
    if (m && hs__jstr(m, "file"))
        f = hs__strdup(hs__jstr(m, "file"));
    cJSON_Delete(m);
    free(text);
    return f;
}

static int write_json_at(int dirfd, const char *name, const cJSON *doc, unsigned mode)
{
    char *text = cJSON_Print(doc);
    int rc = hs__write_atomic_at(dirfd, name, text, strlen(text), mode, 0);

    free(text);
    return rc;
}

/* Step 2 of a swap (the copy @tmp replaces @file), also for a dead run's. */
static int swap_in(int dirfd, const char *id, const char *tmp, const char *file)
{
    char link[256];
    int rc = 0;

    snprintf(link, sizeof(link), ".%s.prune-link", id);
    unlinkat(dirfd, link, 0);
    if (linkat(dirfd, tmp, dirfd, link, 0) < 0)
        return -errno;
    if (renameat(dirfd, link, dirfd, file) < 0)
        rc = -errno;
    /* a dead run's swap may have put the copy in place already: a rename of
     * two links of one file does nothing, and leaves @link */
    unlinkat(dirfd, link, 0);
    return rc;
}

/* Step 3: the sidecar names @file again, the copy's name goes. */
static int swap_done(int dirfd, const char *id, cJSON *meta, const char *tmp, const char *file,
                     unsigned mode)
{
    char name[256];
    int rc;

    snprintf(name, sizeof(name), "%s.json", id);
    cJSON_DeleteItemFromObjectCaseSensitive(meta, "file");
    cJSON_AddStringToObject(meta, "file", file);
    rc = write_json_at(dirfd, name, meta, mode);
    if (rc == 0)
        unlinkat(dirfd, tmp, 0);
    return rc;
}

/* What an atomic write of a dead prune left (hs__atomic_tmp_name): its
 * journal's, and the sidecars' of the images the journal rewrites (no other
 * writer rewrites a published sidecar). Run under the store's lock. */
static void sweep_tmp(int dirfd, const cJSON *journal)
{
    char name[256], side[256];
    struct dirent *de;
    const cJSON *it;
    int fd = dup(dirfd), hit;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    rewinddir(d);
    while ((de = readdir(d))) {
        if (!hs__atomic_tmp_name(de->d_name, name, sizeof(name)))
            continue;
        hit = !strcmp(name, PRUNE_JOURNAL);
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(journal, "rewrite")) {
            const char *id = hs__jstr(it, "id");
            char buf[8];

            if (hit || !id || hs_image_id_check(id, buf, sizeof(buf)) < 0)
                continue;
            snprintf(side, sizeof(side), "%s.json", id);
            hit = !strcmp(name, side);
        }
        if (hit && own_file_at(dirfd, de->d_name))
            unlinkat(dirfd, de->d_name, 0);
    }
    rewinddir(d); /* the offset is @dirfd's too: the plan lists from the start */
    closedir(d);
}

/* Worker: what a dead prune left, finished or removed. A swap that cannot
 * be finished keeps the journal, and fails the prune. */
static void journal_replay(struct hs_prune *p)
{
    int stuck = 0;
    const cJSON *it;
    cJSON *j;
    char *text, *f;
    int err;

    text = slurp_at(p->dirfd, PRUNE_JOURNAL, &err);
    j = text ? cJSON_Parse(text) : NULL;
    free(text);
    sweep_tmp(p->dirfd, j);
    if (!j)
        return;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "rewrite")) {
        const char *id = hs__jstr(it, "id"), *tmp = hs__jstr(it, "tmp"),
                   *file = hs__jstr(it, "file");
        char buf[8];

        if (!id || hs_image_id_check(id, buf, sizeof(buf)) < 0 || !name_ok(tmp) ||
            !name_ok(file) || !own_file_at(p->dirfd, tmp))
            continue;
        f = sidecar_file(p->dirfd, id);
        if (f && !strcmp(f, tmp)) {
            /* killed between steps 1 and 3: the copy is the verified image */
            char name[256], *mt;
            cJSON *m;
            unsigned mode = 0600;
            struct stat st;

            snprintf(name, sizeof(name), "%s.json", id);
            if (fstatat(p->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
                mode = st.st_mode & 0777;
            mt = slurp_at(p->dirfd, name, &err);
            m = mt ? cJSON_Parse(mt) : NULL;
            if (!m || swap_in(p->dirfd, id, tmp, file) < 0 ||
                swap_done(p->dirfd, id, m, tmp, file, mode) < 0) {
                pfail(p, -EIO, "image %s: the copy a prune made of it (%s) cannot be put in "
                      "place (%s); its sidecar names the copy, which is intact", id, tmp,
                      strerror(errno));
                stuck = 1;
            }
            cJSON_Delete(m);
            free(mt);
        } else {
            unlinkat(p->dirfd, tmp, 0); /* a copy no sidecar took */
        }
        free(f);
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "remove")) {
        const char *id = hs__jstr(it, "id"), *file = hs__jstr(it, "file");
        char buf[8], name[256];

        if (!id || hs_image_id_check(id, buf, sizeof(buf)) < 0 || !name_ok(file))
            continue;
        snprintf(name, sizeof(name), "%s.json", id);
        /* its sidecar gone: the image was being removed */
        if (faccessat(p->dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT &&
            own_file_at(p->dirfd, file))
            unlinkat(p->dirfd, file, 0);
    }
    cJSON_Delete(j);
    if (!stuck)
        unlinkat(p->dirfd, PRUNE_JOURNAL, 0);
    fsync(p->dirfd);
}

/* The backing file a qcow2's header names (what QEMU reads through,
 * whatever a sidecar says), into @buf; "" for none. 0, or -1 when the file
 * is not a qcow2 that can be read. */
static int read_backing(int dirfd, const char *file, char *buf, size_t len)
{
    unsigned char h[24];
    uint64_t off;
    uint32_t n;
    int rc = -1, fd = openat(dirfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    buf[0] = 0;
    if (fd < 0)
        return -1;
    if (pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) && !memcmp(h, "QFI\xfb", 4)) {
        off = ((uint64_t)h[8] << 56) | ((uint64_t)h[9] << 48) | ((uint64_t)h[10] << 40) |
              ((uint64_t)h[11] << 32) | ((uint64_t)h[12] << 24) | ((uint64_t)h[13] << 16) |
              ((uint64_t)h[14] << 8) | h[15];
        n = ((uint32_t)h[16] << 24) | ((uint32_t)h[17] << 16) | ((uint32_t)h[18] << 8) | h[19];
        if (!off || !n)
            rc = 0;
        else if (n < len && pread(fd, buf, n, (off_t)off) == (ssize_t)n)
            buf[n] = 0, rc = 0;
    }
    close(fd);
    return rc;
}

static int cmp_img(const void *a, const void *b)
{
    const struct prune_img *x = a, *y = b;
    int c = strcmp(x->series ? x->series : "", y->series ? y->series : "");

    if (c)
        return c;
    c = strcmp(x->created, y->created);
    return c ? c : strcmp(x->id, y->id);
}

static time_t parse_time(const char *s)
{
    struct tm tm = {0};

    if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%S", &tm))
        return 0;
    return timegm(&tm);
}

static struct prune_img *find_img(struct hs_prune *p, const char *series, const char *id)
{
    size_t i;

    for (i = 0; id && i < p->n; i++)
        if (p->imgs[i].series && !strcmp(p->imgs[i].series, series) && !strcmp(p->imgs[i].id, id))
            return &p->imgs[i];
    return NULL;
}

static void keep(struct prune_img *im, const char *why)
{
    if (im->action != REMOVE)
        return; /* the first rule that names it */
    im->action = KEEP;
    snprintf(im->why, sizeof(im->why), "%s", why);
}

/* Worker: the images read, the series' rules applied, what goes decided. */
static void plan_series(struct hs_prune *p, size_t lo, size_t hi)
{
    char seen[64][16], key[16], why[160];
    int nseen, last = 0;
    size_t i, k;

    /* a qcow2 reading a backing file that is no image of its series (hotsnap
     * names its parents relative to the store): nothing of it is judged */
    for (i = lo; i < hi; i++)
        if (p->imgs[i].parent && !strcmp(p->imgs[i].parent, "-"))
            break;
    if (i < hi) {
        snprintf(why, sizeof(why), "%s reads a backing file that is no image of the store",
                 p->imgs[i].id);
        for (i = lo; i < hi; i++)
            keep(&p->imgs[i], why);
        return;
    }
    /* newest first */
    for (i = hi; i-- > lo;) {
        if (last < p->opts.keep_last) {
            snprintf(why, sizeof(why), "keep-last %d", p->opts.keep_last);
            keep(&p->imgs[i], why);
            last++;
        }
    }
    for (int rule = 0; rule < 2; rule++) {
        int want = rule ? p->opts.keep_weekly : p->opts.keep_daily;

        nseen = 0;
        for (i = hi; i-- > lo && nseen < want && nseen < 64;) {
            struct tm tm;
            time_t t = p->imgs[i].t;

            localtime_r(&t, &tm);
            strftime(key, sizeof(key), rule ? "%G-W%V" : "%Y-%m-%d", &tm);
            for (k = 0; k < (size_t)nseen && strcmp(seen[k], key); k++)
                ;
            if (k < (size_t)nseen)
                continue; /* a newer one of this period is kept */
            memcpy(seen[nseen++], key, sizeof(key));
            snprintf(why, sizeof(why), "keep-%s %d (%s)", rule ? "weekly" : "daily", want, key);
            keep(&p->imgs[i], why);
        }
    }
    /* what the kept read through: rewritten, or kept when it cannot be
     * (oldest first: an ancestor's decision is made before its children's) */
    for (i = lo; i < hi; i++) {
        struct prune_img *im = &p->imgs[i], *a;
        size_t steps = 0;
        int broken = 0;

        if (im->action == REMOVE || !im->parent)
            continue;
        a = find_img(p, im->series, im->parent);
        if (!a || a->action != REMOVE)
            continue; /* its parent stays (or was never here: nothing to keep) */
        while (a->action == REMOVE && a->parent) {
            a = find_img(p, im->series, a->parent);
            /* missing, or a loop of parents (sidecars no hotsnap wrote) */
            if (!a || ++steps > hi - lo) {
                broken = 1;
                break;
            }
        }
        if (broken) {
            /* a chain already broken further up: nothing it reads goes */
            snprintf(why, sizeof(why), "needed by %s, whose chain misses an image", im->id);
            steps = 0;
            for (a = find_img(p, im->series, im->parent); a && steps++ <= hi - lo;
                 a = find_img(p, im->series, a->parent))
                keep(a, why);
            continue;
        }
        snprintf(why, sizeof(why), "%s", im->why);
        if (a->action != REMOVE) {
            im->action = REBASE;
            im->onto = a;
            snprintf(im->why, sizeof(im->why), "%.100s; rebased onto %s", why, a->id);
        } else {
            im->action = FLATTEN;
            snprintf(im->why, sizeof(im->why), "%.100s; made self-contained", why);
        }
        im->tmp = hs__asprintf("%s.prune.%s", im->id, im->fmt);
    }
    for (i = lo; i < hi; i++)
        if (p->imgs[i].action == REMOVE && !p->imgs[i].why[0])
            snprintf(p->imgs[i].why, sizeof(p->imgs[i].why), "no rule keeps it");
}

/* Worker: a chain file's last images stay (the next incremental's parents). */
static void chain_keeps(struct hs_prune *p, const char *name)
{
    const cJSON *d;
    cJSON *doc;
    char *text, series[160], why[160];
    int err;
    size_t i;

    text = slurp_at(p->dirfd, name, &err);
    doc = text ? cJSON_Parse(text) : NULL;
    free(text);
    cJSON_ArrayForEach(d, cJSON_GetObjectItemCaseSensitive(doc, "disks")) {
        snprintf(series, sizeof(series), "%s/%s", name + strlen("chain-"), d->string);
        for (i = 0; i < p->n; i++) {
            struct prune_img *im = &p->imgs[i];

            if (im->series && !strcmp(im->series, series) && hs__jstr(d, "image") &&
                !strcmp(im->id, hs__jstr(d, "image"))) {
                snprintf(why, sizeof(why), "the last image of %s's chain", name);
                im->action = KEEP;
                snprintf(im->why, sizeof(im->why), "%s", why);
            }
        }
    }
    cJSON_Delete(doc);
}

static void plan_work(uv_work_t *w)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);
    struct hs_err err = {0};
    struct dirent *de;
    size_t cap = 0, len, i, lo;
    char **chains = NULL;
    size_t nchains = 0;
    DIR *d;
    int fd;

    p->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (p->dirfd < 0) {
        pfail(p, -errno, "cannot open image store '%s': %s", p->dir, strerror(errno));
        return;
    }
    if (hs__dir_safe(p->dirfd, p->dir, &err, "image store") < 0) {
        pfail(p, err.code, "%s", err.msg);
        return;
    }
    if (!p->opts.dry_run) {
        if (flock(p->dirfd, LOCK_EX | LOCK_NB) < 0) {
            if (errno == EWOULDBLOCK)
                pfail(p, -EBUSY, "image store '%s': another prune of it is running", p->dir);
            else
                pfail(p, -errno, "cannot lock image store '%s': %s", p->dir, strerror(errno));
            return;
        }
        journal_replay(p);
    }
    if (p->rc < 0)
        return;
    fd = dup(p->dirfd);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        pfail(p, -errno, "cannot list image store '%s': %s", p->dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    while ((de = readdir(d))) {
        struct prune_img im = {0};
        const char *uuid, *disk, *file, *fmt, *created;
        char *text, buf[8], id[64], backing[1024] = "";
        int e;

        len = strlen(de->d_name);
        if (!strncmp(de->d_name, "chain-", 6)) {
            chains = realloc(chains, (nchains + 1) * sizeof(*chains));
            if (!chains)
                abort();
            chains[nchains++] = hs__strdup(de->d_name);
            continue;
        }
        if (de->d_name[0] == '.' || len < 6 || len > 60 || strcmp(de->d_name + len - 5, ".json"))
            continue;
        snprintf(id, sizeof(id), "%.*s", (int)(len - 5), de->d_name);
        if (hs_image_id_check(id, buf, sizeof(buf)) < 0)
            continue;
        text = slurp_at(p->dirfd, de->d_name, &e);
        im.meta = text ? cJSON_Parse(text) : NULL;
        free(text);
        uuid = hs__jstr(im.meta, "instance_uuid");
        disk = hs__jstr(im.meta, "hotsnap_disk");
        file = hs__jstr(im.meta, "file");
        fmt = hs__jstr(im.meta, "disk_format");
        created = hs__jstr(im.meta, "created_at");
        im.id = hs__strdup(id);
        im.file = hs__strdup(file ? file : "");
        im.fmt = hs__strdup(fmt ? fmt : "");
        im.created = hs__strdup(created ? created : "");
        im.t = parse_time(created);
        if (!im.meta) {
            snprintf(im.why, sizeof(im.why), "its sidecar is unreadable or not this user's");
        } else if (!uuid || !disk || !im.t || !name_ok(file) ||
                   (strcmp(im.fmt, "qcow2") && strcmp(im.fmt, "raw")) ||
                   strlen(uuid) + strlen(disk) > 150) {
            snprintf(im.why, sizeof(im.why), "not a hotsnap snapshot of a domain's disk");
        } else if (!own_file_at(p->dirfd, file)) {
            snprintf(im.why, sizeof(im.why), "its image is not a file of this user's");
        } else if (!strcmp(im.fmt, "qcow2") &&
                   read_backing(p->dirfd, file, backing, sizeof(backing)) < 0) {
            snprintf(im.why, sizeof(im.why), "its image is not a qcow2 that can be read");
        } else if (strstr(file, ".prune.")) {
            snprintf(im.why, sizeof(im.why), "its sidecar names a prune's copy");
        } else {
            im.series = hs__asprintf("%s/%s", uuid, disk);
            im.action = REMOVE; /* unless a rule keeps it */
            if (backing[0])
                im.parent = hs__strdup(backing); /* a file name, made an id below */
        }
        if (p->n == cap) {
            cap = cap ? 2 * cap : 64;
            p->imgs = realloc(p->imgs, cap * sizeof(*p->imgs));
            if (!p->imgs)
                abort();
        }
        p->imgs[p->n++] = im;
    }
    closedir(d);
    if (p->n)
        qsort(p->imgs, p->n, sizeof(*p->imgs), cmp_img);
    /* a parent is the image of the series whose file the qcow2 header names
     * (what QEMU reads through); one outside the store is no parent we have */
    for (i = 0; i < p->n; i++) {
        struct prune_img *im = &p->imgs[i];
        size_t k;

        if (!im->parent)
            continue;
        for (k = 0; k < p->n; k++)
            if (p->imgs[k].series && !strcmp(p->imgs[k].series, im->series) &&
                !strcmp(p->imgs[k].file, im->parent))
                break;
        free(im->parent);
        im->parent = hs__strdup(k < p->n ? p->imgs[k].id : "-");
    }
    for (i = 0; i < nchains; i++) {
        chain_keeps(p, chains[i]);
        free(chains[i]);
    }
    free(chains);
    for (lo = 0; lo < p->n;) {
        size_t hi = lo + 1;

        if (!p->imgs[lo].series) {
            lo++;
            continue;
        }
        while (hi < p->n && p->imgs[hi].series && !strcmp(p->imgs[hi].series, p->imgs[lo].series))
            hi++;
        plan_series(p, lo, hi);
        lo = hi;
    }
    p->rewrites = hs__calloc(p->n ? p->n : 1, sizeof(*p->rewrites));
    for (i = 0; i < p->n; i++)
        if (p->imgs[i].action == REBASE || p->imgs[i].action == FLATTEN)
            p->rewrites[p->nrewrites++] = i;
    if (!p->opts.dry_run) {
        /* what a kill could leave, before any of it is made */
        cJSON *j = cJSON_CreateObject(), *rw = cJSON_AddArrayToObject(j, "rewrite"),
              *rm = cJSON_AddArrayToObject(j, "remove");
        int any = 0, rc;

        for (i = 0; i < p->n; i++) {
            struct prune_img *im = &p->imgs[i];
            cJSON *e;

            if (im->tmp) {
                e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "id", im->id);
                cJSON_AddStringToObject(e, "tmp", im->tmp);
                cJSON_AddStringToObject(e, "file", im->file);
                cJSON_AddItemToArray(rw, e);
                any = 1;
            } else if (im->action == REMOVE) {
                e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "id", im->id);
                cJSON_AddStringToObject(e, "file", im->file);
                cJSON_AddItemToArray(rm, e);
                any = 1;
            }
        }
        rc = any ? write_json_at(p->dirfd, PRUNE_JOURNAL, j, 0600) : 0;
        cJSON_Delete(j);
        if (rc < 0)
            pfail(p, rc, "cannot write '%s/%s': %s", p->dir, PRUNE_JOURNAL, strerror(-rc));
    }
}

/* ---- one rewrite: copy, qemu-img, check, compare, hash, swap ---- */

enum { ST_COPY, ST_TOOL, ST_CHECK, ST_COMPARE, ST_SWAP, ST_NEXT };

static struct prune_img *cur_img(struct hs_prune *p)
{
    return &p->imgs[p->rewrites[p->cur]];
}

/* Worker: the copy made, root's alone (qemu-img writes into a file that is
 * there and keeps its mode): the overlay's bytes, to be rebased in place
 * of the original, or nothing, to be flattened into. */
static void copy_work(uv_work_t *w)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);
    struct prune_img *im = cur_img(p);
    struct stat st;
    int in, out;
    ssize_t n;

    unlinkat(p->dirfd, im->tmp, 0);
    if (im->action == FLATTEN) {
        out = hs__create_at(p->dirfd, im->tmp, 0600);
        if (out < 0)
            pfail(p, out, "cannot create '%s': %s", im->tmp, strerror(-out));
        else
            close(out);
        return;
    }
    in = openat(p->dirfd, im->file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    out = hs__create_at(p->dirfd, im->tmp, 0600);
    if (in < 0 || out < 0 || fstat(in, &st) < 0) {
        pfail(p, -EIO, "cannot copy '%s' to rebase it: %s", im->file,
              strerror(out < 0 ? -out : errno));
        goto out;
    }
    while ((n = copy_file_range(in, NULL, out, NULL, PRUNE_BUF, 0)) > 0)
        ;
    if (n < 0 || fsync(out) < 0)
        pfail(p, -errno, "cannot copy '%s' to rebase it: %s", im->file, strerror(errno));
out:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
}

static int digest_file(int dirfd, const char *name, enum hs_digest_algo algo, char hex[],
                       uint64_t *size)
{
    struct hs_digest dg = {0};
    unsigned char *buf = malloc(PRUNE_BUF);
    uint64_t off = 0;
    ssize_t n;
    int rc = 0, fd = openat(dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);

    if (!buf)
        abort();
    if (fd < 0 || fsync(fd) < 0) {
        rc = -errno;
        goto out;
    }
    hs__digest_init(&dg, algo);
    while ((n = pread(fd, buf, PRUNE_BUF, (off_t)off)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        hs__digest_update(&dg, buf, (size_t)n);
        posix_fadvise(fd, (off_t)off, n, POSIX_FADV_DONTNEED);
        off += (uint64_t)n;
    }
    hs__digest_final(&dg, hex);
    *size = off;
out:
    hs__digest_free(&dg);
    free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Worker: the checked copy hashed and swapped in (the steps in the head comment). */
static void swap_work(uv_work_t *w)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);
    struct prune_img *im = cur_img(p);
    enum hs_digest_algo algo;
    char hex[HS_DIGEST_HEX], name[256], note[200];
    uint64_t size = 0;
    unsigned mode = 0600;
    struct stat st;
    int rc;

    if (hs__digest_parse(hs__jstr(im->meta, "os_hash_algo"), &algo) < 0) {
        pfail(p, -EINVAL, "image %s: its sidecar's digest is not one hotsnap computes", im->id);
        return;
    }
    rc = digest_file(p->dirfd, im->tmp, algo, hex, &size);
    if (rc < 0) {
        pfail(p, rc, "cannot hash '%s': %s", im->tmp, strerror(-rc));
        return;
    }
    snprintf(name, sizeof(name), "%s.json", im->id);
    if (fstatat(p->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
        mode = st.st_mode & 0777;
    fchmodat(p->dirfd, im->tmp, mode, 0);
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "size");
    cJSON_AddNumberToObject(im->meta, "size", (double)size);
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "os_hash_value");
    cJSON_AddStringToObject(im->meta, "os_hash_value", hex);
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "hotsnap_parent");
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "hotsnap_backing_file");
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "hotsnap_pruned");
    if (im->action == REBASE) {
        cJSON_AddStringToObject(im->meta, "hotsnap_parent", im->onto->id);
        cJSON_AddStringToObject(im->meta, "hotsnap_backing_file", im->onto->file);
        snprintf(note, sizeof(note), "rebased onto %s: its parent %s was pruned", im->onto->id,
                 im->parent);
    } else {
        snprintf(note, sizeof(note), "made self-contained: its parent %s was pruned", im->parent);
    }
    cJSON_AddStringToObject(im->meta, "hotsnap_pruned", note);
    /* 1: the sidecar names the copy */
    cJSON_DeleteItemFromObjectCaseSensitive(im->meta, "file");
    cJSON_AddStringToObject(im->meta, "file", im->tmp);
    rc = write_json_at(p->dirfd, name, im->meta, mode);
    /* 2: the copy in the image's place; 3: the sidecar names it there */
    if (rc == 0)
        rc = swap_in(p->dirfd, im->id, im->tmp, im->file);
    if (rc == 0)
        rc = swap_done(p->dirfd, im->id, im->meta, im->tmp, im->file, mode);
    if (rc < 0)
        pfail(p, rc, "cannot put the rewritten image %s in place: %s", im->id, strerror(-rc));
    fsync(p->dirfd);
}

/* Worker: the images no rule keeps, each sidecar before its image. */
static void remove_work(uv_work_t *w)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);
    char name[256];
    size_t i;

    for (i = p->n; i-- > 0;) {
        struct prune_img *im = &p->imgs[i];

        if (im->action != REMOVE)
            continue;
        snprintf(name, sizeof(name), "%s.json", im->id);
        if (unlinkat(p->dirfd, name, 0) < 0 && errno != ENOENT) {
            pfail(p, -errno, "cannot remove '%s': %s", name, strerror(errno));
            im->action = KEEP;
            continue;
        }
        if (unlinkat(p->dirfd, im->file, 0) < 0 && errno != ENOENT)
            pfail(p, -errno, "cannot remove '%s': %s", im->file, strerror(errno));
        p->removed++;
    }
    fsync(p->dirfd);
    if (p->rc == 0)
        unlinkat(p->dirfd, PRUNE_JOURNAL, 0);
}

/* Worker: a failed rewrite's copy removed; nothing else happens. A copy
 * its sidecar names already stays, and the journal with it (the next prune
 * puts it in place). */
static void abort_work(uv_work_t *w)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);
    int keep = 0;

    if (p->dirfd < 0)
        return;
    if (p->cur < p->nrewrites) {
        char *f = sidecar_file(p->dirfd, cur_img(p)->id);

        keep = f && !strcmp(f, cur_img(p)->tmp);
        if (!keep)
            unlinkat(p->dirfd, cur_img(p)->tmp, 0);
        free(f);
    }
    if (!keep)
        unlinkat(p->dirfd, PRUNE_JOURNAL, 0);
}

static void prune_free(struct hs_prune *p)
{
    size_t i;

    for (i = 0; i < p->n; i++) {
        free(p->imgs[i].id);
        free(p->imgs[i].file);
        free(p->imgs[i].fmt);
        free(p->imgs[i].series);
        free(p->imgs[i].parent);
        free(p->imgs[i].created);
        free(p->imgs[i].tmp);
        cJSON_Delete(p->imgs[i].meta);
    }
    free(p->imgs);
    free(p->rewrites);
    if (p->dirfd >= 0)
        close(p->dirfd);
    free(p->dir);
    free(p);
}

static const char *action_name(enum prune_action a)
{
    static const char *const names[] = {"keep", "remove", "rebase", "flatten"};

    return names[a];
}

static void report(struct hs_prune *p)
{
    size_t i;

    for (i = 0; i < p->n; i++) {
        struct prune_img *im = &p->imgs[i];
        cJSON *o = cJSON_CreateObject();

        cJSON_AddStringToObject(o, "id", im->id);
        if (im->file[0])
            cJSON_AddStringToObject(o, "file", im->file);
        if (im->series)
            cJSON_AddStringToObject(o, "series", im->series);
        if (im->created[0])
            cJSON_AddStringToObject(o, "created_at", im->created);
        cJSON_AddStringToObject(o, "action", action_name(im->action));
        if (im->onto)
            cJSON_AddStringToObject(o, "onto", im->onto->id);
        cJSON_AddStringToObject(o, "reason", im->why[0] ? im->why : "kept");
        cJSON_AddBoolToObject(o, "done", !p->opts.dry_run && p->rc == 0);
        p->each(o, p->data);
        cJSON_Delete(o);
        if (im->action != REMOVE)
            p->kept++;
    }
}

static void prune_end(struct hs_prune *p)
{
    report(p);
    p->done(p->kept, p->removed, p->rewritten, p->rc, p->rc < 0 ? p->err : NULL, p->data);
    prune_free(p);
}

static void end_work_done(uv_work_t *w, int status)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);

    if (status < 0)
        pfail(p, status, "cannot finish the prune: %s", uv_strerror(status));
    prune_end(p);
}

static void work_done(uv_work_t *w, int status)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);

    if (status < 0)
        pfail(p, status, "prune work failed: %s", uv_strerror(status));
    if (p->step == ST_SWAP && p->rc == 0) {
        p->rewritten++;
        p->step = ST_NEXT;
    } else if (p->step == ST_COPY && p->rc == 0) {
        p->step = ST_TOOL;
    }
    prune_step(p);
}

static void tool_exit(struct hs_proc *proc, int status)
{
    struct hs_prune *p = proc->data;
    struct prune_img *im = cur_img(p);
    static const char *const what[] = {"", "rebase or convert", "check", "compare"};

    if (status < 0) {
        pfail(p, status, "image %s: qemu-img %s failed: %s", im->id, what[p->step],
              hs__proc_stderr(proc)[0] ? hs__proc_stderr(proc) : strerror(-status));
    } else {
        p->step++;
    }
    prune_step(p);
}

/* qemu-img, SIGKILLed when hotsnap dies (the proc adapter's setpriv): a
 * killed prune's rewrite stops with it, and the next prune's copy has no
 * second writer. */
static void spawn(struct hs_prune *p, char **argv)
{
    struct hs_proc *proc;
    int rc = hs__proc_spawn(p->loop, argv, 4096, NULL, tool_exit, p, &proc);

    if (rc < 0) {
        pfail(p, rc, "cannot run qemu-img: %s", uv_strerror(rc));
        prune_step(p);
    }
}

static void prune_step(struct hs_prune *p)
{
    struct prune_img *im;
    char src[PATH_MAX], dst[PATH_MAX];

    if (p->rc < 0) {
        /* nothing is removed after a failed rewrite */
        if (uv_queue_work(p->loop, &p->work, abort_work, end_work_done) < 0)
            abort();
        return;
    }
    if (p->step == ST_NEXT) {
        p->cur++;
        p->step = ST_COPY;
    }
    if (p->cur >= p->nrewrites) {
        if (uv_queue_work(p->loop, &p->work, remove_work, end_work_done) < 0)
            abort();
        return;
    }
    im = cur_img(p);
    snprintf(src, sizeof(src), "%s/%s", p->dir, im->file);
    snprintf(dst, sizeof(dst), "%s/%s", p->dir, im->tmp);
    switch (p->step) {
    case ST_COPY:
        if (uv_queue_work(p->loop, &p->work, copy_work, work_done) < 0)
            abort();
        return;
    case ST_TOOL:
        if (im->action == FLATTEN) {
            char *argv[] = {"qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", src, dst, NULL};

            spawn(p, argv);
        } else {
            char *argv[] = {"qemu-img", "rebase", "-f", "qcow2", "-F", "qcow2", "-b",
                            im->onto->file, dst, NULL};

            spawn(p, argv);
        }
        return;
    case ST_CHECK: {
        char *argv[] = {"qemu-img", "check", "-q", "-f", "qcow2", dst, NULL};

        spawn(p, argv);
        return;
    }
    case ST_COMPARE: {
        /* the rewritten chain against the one it replaces, every byte */
        char *argv[] = {"qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", src, dst,
                        NULL};

        spawn(p, argv);
        return;
    }
    case ST_SWAP:
        if (uv_queue_work(p->loop, &p->work, swap_work, work_done) < 0)
            abort();
        return;
    }
}

static void plan_done(uv_work_t *w, int status)
{
    struct hs_prune *p = hs_container_of(w, struct hs_prune, work);

    if (status < 0)
        pfail(p, status, "cannot plan the prune: %s", uv_strerror(status));
    if (p->rc < 0 || p->opts.dry_run) {
        prune_end(p);
        return;
    }
    p->step = ST_COPY;
    prune_step(p);
}

int hs_store_prune(uv_loop_t *loop, const struct hs_prune_opts *opts, hs_prune_image_cb each,
                   hs_prune_done_cb done, void *data, char *errbuf, size_t errlen)
{
    struct hs_prune *p;
    int rc;

    if (!opts || !opts->target || strncmp(opts->target, "dir:", 4) || !opts->target[4]) {
        snprintf(errbuf, errlen,
                 "prune takes a dir:PATH store (Glance's images rotate with --rotation)");
        return -EINVAL;
    }
    if (opts->keep_last < 0 || opts->keep_daily < 0 || opts->keep_weekly < 0 ||
        opts->keep_daily > 64 || opts->keep_weekly > 64) {
        snprintf(errbuf, errlen,
                 "--keep-last must be 0 or more, --keep-daily and --keep-weekly 0 to 64");
        return -EINVAL;
    }
    if (!opts->keep_last && !opts->keep_daily && !opts->keep_weekly) {
        snprintf(errbuf, errlen,
                 "prune keeps nothing: give --keep-last, --keep-daily or --keep-weekly");
        return -EINVAL;
    }
    if (!each || !done) {
        snprintf(errbuf, errlen, "prune needs its callbacks");
        return -EINVAL;
    }
    p = hs__calloc(1, sizeof(*p));
    p->loop = loop;
    p->opts = *opts;
    p->opts.target = NULL;
    p->dir = hs__strdup(opts->target + 4);
    p->dirfd = -1;
    p->each = each;
    p->done = done;
    p->data = data;
    rc = uv_queue_work(loop, &p->work, plan_work, plan_done);
    if (rc < 0) {
        snprintf(errbuf, errlen, "cannot queue work: %s", uv_strerror(rc));
        prune_free(p);
        return rc;
    }
    return 0;
}
