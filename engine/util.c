#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "util.h"

static void uuid_format(unsigned char *b, char out[HS_UUID_LEN])
{
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, HS_UUID_LEN,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

void hs__uuid4(char out[HS_UUID_LEN])
{
    unsigned char b[16];
    size_t got = 0;
    ssize_t n;

    while (got < sizeof(b)) {
        n = getrandom(b + got, sizeof(b) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            abort();
        got += (size_t)n;
    }
    uuid_format(b, out);
}

void hs__uuid_next(const char *base, int n, char out[HS_UUID_LEN])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char *s = hs__asprintf("hotsnap-record/%s/%d", base, n);

    SHA256((const unsigned char *)s, strlen(s), md);
    free(s);
    uuid_format(md, out);
}

double hs__now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

void hs__iso8601(double t, char *buf, size_t len)
{
    time_t sec = (time_t)t;
    struct tm tm;
    char tmp[32];

    gmtime_r(&sec, &tm);
    strftime(tmp, sizeof(tmp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", tmp, (int)((t - (double)sec) * 1000.0 + 0.5) % 1000);
}

int hs__mkdir_p(const char *path, unsigned mode)
{
    char buf[PATH_MAX];
    char *p;

    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    for (p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

/* Empty the directory open at @fd (taken), depth first, by fds. */
static int rm_children(int fd)
{
    DIR *d = fdopendir(fd);
    struct dirent *de;
    int rc = 0, r;

    if (!d) {
        close(fd);
        return -errno;
    }
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        int child;

        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            r = errno == ENOENT ? 0 : -errno;
        } else if (!S_ISDIR(st.st_mode)) {
            r = unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT ? -errno : 0;
        } else {
            /* O_NOFOLLOW: a directory swapped for a symlink meanwhile is not entered */
            child = openat(dirfd(d), de->d_name,
                           O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (child < 0)
                r = errno == ENOENT ? 0 : -errno;
            else if ((r = rm_children(child)) == 0 &&
                     unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT)
                r = -errno;
        }
        if (r < 0 && rc == 0)
            rc = r;
    }
    closedir(d);
    return rc;
}

int hs__rm_rf(const char *path)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    rc = rm_children(fd);
    if (rmdir(path) < 0 && errno != ENOENT && rc == 0)
        rc = -errno;
    return rc;
}

int hs__dir_writable(const char *dir, struct hs_err *err, const char *what)
{
    struct stat st;
    char *probe;
    int fd;

    if (stat(dir, &st) < 0)
        return hs_err_set(err, -errno, HS_ERR_INPUT, errno, "%s '%s' does not exist", what, dir);
    if (!S_ISDIR(st.st_mode))
        return hs_err_set(err, -ENOTDIR, HS_ERR_INPUT, ENOTDIR, "%s '%s' is not a directory", what,
                          dir);
    /* unique: jobs probe the same directory at once from worker threads */
    probe = hs__asprintf("%s/.hotsnap-probe-XXXXXX", dir);
    fd = mkostemp(probe, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(probe);
        return hs_err_set(err, -e, HS_ERR_INPUT, e, "%s '%s' is not writable: %s", what, dir,
                          strerror(e));
    }
    close(fd);
    unlink(probe);
    free(probe);
    return 0;
}

int hs__path_traversable(const char *dir, struct hs_err *err, const char *what)
{
    char buf[PATH_MAX];
    struct stat st;
    char *p;

    if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
        return hs_err_set(err, -ENAMETOOLONG, HS_ERR_INPUT, 0, "%s '%s' is too long", what, dir);
    for (p = buf;;) {
        char *next = strchr(p + 1, '/');

        if (next)
            *next = '\0';
        if (stat(buf[0] ? buf : "/", &st) == 0 && !(st.st_mode & S_IXOTH))
            return hs_err_set(err, -EACCES, HS_ERR_INPUT, 0,
                              "%s '%s' is not reachable by QEMU, which runs as its own user: "
                              "'%s' has mode %04o (it needs o+x)",
                              what, dir, buf, (unsigned)(st.st_mode & 07777));
        if (!next)
            return 0;
        *next = '/';
        p = next;
    }
}

int hs__dir_safe(int dirfd, const char *dir, struct hs_err *err, const char *what)
{
    struct stat st;

    if (fstat(dirfd, &st) < 0)
        return hs_err_set(err, -errno, HS_ERR_SYS, errno, "cannot look at %s '%s': %s", what,
                          dir, strerror(errno));
    if (st.st_uid != 0 && st.st_uid != geteuid())
        return hs_err_set(err, -EPERM, HS_ERR_INPUT, 0,
                          "%s '%s' belongs to user %u, who could put files in hotsnap's way; "
                          "give it to root",
                          what, dir, (unsigned)st.st_uid);
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
        return hs_err_set(err, -EPERM, HS_ERR_INPUT, 0,
                          "%s '%s' can be written by users other than root (mode %04o) and has "
                          "no sticky bit: another user could put files in hotsnap's way; "
                          "chmod g-w,o-w or +t",
                          what, dir, (unsigned)(st.st_mode & 07777));
    return 0;
}

int hs__create_at(int dirfd, const char *name, unsigned mode)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);

    if (fd < 0)
        return -errno;
    if (fchmod(fd, mode) < 0) { /* exactly @mode, whatever the umask */
        int rc = -errno;

        close(fd);
        unlinkat(dirfd, name, 0);
        return rc;
    }
    return fd;
}

int hs__rename_noreplace_at(int dirfd, const char *from, const char *to)
{
    if (renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -errno;
    /* a file system without RENAME_NOREPLACE: a link fails as well on a name taken */
    if (linkat(dirfd, from, dirfd, to, 0) < 0)
        return -errno;
    unlinkat(dirfd, from, 0);
    return 0;
}

#define ATOMIC_RAND 8 /* bytes, 16 hex digits in the name */

int hs__atomic_tmp_name(const char *entry, char *name, size_t len)
{
    size_t n = strlen(entry), base, i;

    /* "." NAME "." 16 hex digits ".tmp" */
    if (entry[0] != '.' || n < 2 * ATOMIC_RAND + 7 || strcmp(entry + n - 4, ".tmp") ||
        entry[n - 2 * ATOMIC_RAND - 5] != '.')
        return 0;
    for (i = n - 2 * ATOMIC_RAND - 4; i < n - 4; i++)
        if (!strchr("0123456789abcdef", entry[i]))
            return 0;
    base = n - 2 * ATOMIC_RAND - 6;
    if (base >= len)
        return 0;
    memcpy(name, entry + 1, base);
    name[base] = '\0';
    return 1;
}

int hs__write_atomic_at(int dirfd, const char *name, const void *data, size_t len, unsigned mode,
                        int noreplace)
{
    char tmp[300];
    unsigned char r[ATOMIC_RAND];
    const char *p = data;
    ssize_t n;
    int fd = -EEXIST, rc = 0, i;

    for (i = 0; i < 16 && fd == -EEXIST; i++) {
        if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
            return -EIO;
        snprintf(tmp, sizeof(tmp), ".%.200s.%02x%02x%02x%02x%02x%02x%02x%02x.tmp", name, r[0],
                 r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
        fd = hs__create_at(dirfd, tmp, mode);
    }
    if (fd < 0)
        return fd;
    while (len > 0) {
        n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        p += n;
        len -= (size_t)n;
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0)
        rc = noreplace ? hs__rename_noreplace_at(dirfd, tmp, name)
                       : (renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0);
    if (rc < 0) {
        unlinkat(dirfd, tmp, 0);
        return rc;
    }
    return fsync(dirfd) < 0 ? -errno : 0;
}

int hs__write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    int fd, rc;

    if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    rc = hs__write_atomic_at(fd, name, data, len, mode, 0);
    close(fd);
    return rc;
}

char *hs__read_file(const char *path, size_t max)
{
    FILE *f = fopen(path, "re");
    char *buf;
    size_t n;

    if (!f)
        return NULL;
    buf = malloc(max + 1);
    if (!buf) {
        fclose(f);
        errno = ENOMEM;
        return NULL;
    }
    n = fread(buf, 1, max, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

char *hs__strdup(const char *s)
{
    char *p = s ? strdup(s) : NULL;

    if (s && !p)
        abort();
    return p;
}

void *hs__calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);

    if (!p)
        abort();
    return p;
}

char *hs__asprintf(const char *fmt, ...)
{
    va_list ap;
    char *p;

    va_start(ap, fmt);
    if (vasprintf(&p, fmt, ap) < 0)
        abort();
    va_end(ap);
    return p;
}

void hs__hex(const unsigned char *b, unsigned n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    unsigned i;

    for (i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int hs__path_in_dir(const char *path, const char *dir)
{
    size_t n = strlen(dir);

    while (n > 1 && dir[n - 1] == '/')
        n--;
    return path && !strncmp(path, dir, n) && path[n] == '/';
}

const char *hs__url_redact(const char *url, char *buf, size_t len)
{
    const char *host = url ? strstr(url, "://") : NULL, *at, *end;

    if (!url)
        return "";
    if (!host) {
        snprintf(buf, len, "%s", url);
        return buf;
    }
    host += 3;
    end = host + strcspn(host, "/?#");
    at = memchr(host, '@', (size_t)(end - host));
    if (!at)
        snprintf(buf, len, "%s", url);
    else
        snprintf(buf, len, "%.*s***%s", (int)(host - url), url, at);
    return buf;
}

void hs__strv_free(char **v)
{
    char **p;

    for (p = v; p && *p; p++)
        free(*p);
    free(v);
}

/* Append @s to @out at @n, percent-encoding all but unreserved characters
 * and @keep; returns the new length. @out has room for 3 * strlen(@s). */
static size_t uri_encode(char *out, size_t n, const char *s, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p;

    for (p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~", *p) || strchr(keep, *p)) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    return n;
}

char *hs__nbd_uri(const char *export_name, const char *socket)
{
    char *out = hs__calloc(1, 32 + 3 * (strlen(export_name) + strlen(socket)));
    size_t n;

    n = (size_t)sprintf(out, "nbd+unix:///");
    n = uri_encode(out, n, export_name, "");
    n += (size_t)sprintf(out + n, "?socket=");
    n = uri_encode(out, n, socket, "/");
    out[n] = 0;
    return out;
}
