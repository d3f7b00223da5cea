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

#include "util.h"

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
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, HS_UUID_LEN,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
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

int hs__rm_rf(const char *path)
{
    struct stat st;
    DIR *d;
    struct dirent *de;
    char *child;
    int rc = 0, r;

    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
    d = opendir(path);
    if (!d)
        return -errno;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        child = hs__asprintf("%s/%s", path, de->d_name);
        r = hs__rm_rf(child);
        if (r < 0 && rc == 0)
            rc = r;
        free(child);
    }
    closedir(d);
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

static int fsync_dir_of(const char *path)
{
    char buf[PATH_MAX];
    char *slash;
    int fd, rc = 0;

    snprintf(buf, sizeof(buf), "%s", path);
    slash = strrchr(buf, '/');
    if (!slash)
        snprintf(buf, sizeof(buf), ".");
    else if (slash == buf)
        buf[1] = '\0';
    else
        *slash = '\0';
    fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        rc = -errno;
    close(fd);
    return rc;
}

int hs__write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    char *tmp = hs__asprintf("%s.tmp.%d", path, (int)getpid());
    const char *p = data;
    ssize_t n;
    int fd, rc = 0;

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = -errno;
        goto cleanup;
    }
    if (fchmod(fd, mode) < 0) /* exactly @mode, whatever the umask */
        rc = -errno;
    while (rc == 0 && len > 0) {
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
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir_of(path);
cleanup:
    if (rc < 0)
        unlink(tmp);
    free(tmp);
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
