/* The agent's own files (see files.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "files.h"

int ag_replace_open(int dirfd, const char *name, char tmp[AG_TMP_NAME_MAX])
{
    unsigned char r[8];
    int i, fd;

    for (i = 0; i < 16; i++) {
        if (uv_random(NULL, NULL, r, sizeof(r), 0, NULL) < 0)
            return -EIO;
        snprintf(tmp, AG_TMP_NAME_MAX, ".%.32s.%02x%02x%02x%02x%02x%02x%02x%02x", name, r[0], r[1],
                 r[2], r[3], r[4], r[5], r[6], r[7]);
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd >= 0 ? fd : -errno;
    }
    return -EEXIST;
}

int ag_replace_commit(int dirfd, int fd, const char *tmp, const char *name)
{
    int rc = 0;

    if (fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
        rc = -errno;
    if (rc < 0) {
        unlinkat(dirfd, tmp, 0);
        return rc;
    }
    return fsync(dirfd) < 0 ? -errno : 0;
}

void ag_replace_abort(int dirfd, int fd, const char *tmp)
{
    close(fd);
    unlinkat(dirfd, tmp, 0);
}

char *ag_read_secret(const char *path, const char *what, char *err, size_t errlen)
{
    char buf[4096];
    struct stat st;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot read %s '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "%s '%s' is not a file", what, path);
        return NULL;
    }
    if (st.st_mode & 0007) {
        close(fd);
        snprintf(err, errlen, "%s '%s' can be read by anyone (mode %03o); chmod o-rwx", what, path,
                 (unsigned)(st.st_mode & 0777));
        return NULL;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "cannot read %s '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    {
        char *s = strdup(buf);

        explicit_bzero(buf, sizeof(buf));
        if (!s)
            snprintf(err, errlen, "out of memory");
        return s;
    }
}
