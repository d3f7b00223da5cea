/* The agent's job history (see history.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "files.h"
#include "history.h"

#define AG_HISTORY_FILE "jobs.jsonl"

struct ag_history {
    int dirfd; /* borrowed */
    int fd;    /* appended to */
    unsigned lines;
};

int ag_history_open(int dirfd, struct ag_history **out, char *err, size_t errlen)
{
    struct ag_history *h = calloc(1, sizeof(*h));

    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    h->dirfd = dirfd;
    h->fd = openat(dirfd, AG_HISTORY_FILE, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
                   0600);
    if (h->fd < 0) {
        int rc = -errno;

        snprintf(err, errlen, "cannot open the job history '%s': %s", AG_HISTORY_FILE,
                 strerror(errno));
        free(h);
        return rc;
    }
    *out = h;
    return 0;
}

void ag_history_load(struct ag_history *h, void (*cb)(void *data, cJSON *obj), void *data)
{
    int fd = openat(h->dirfd, AG_HISTORY_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    char *line = NULL;
    size_t cap = 0;

    if (!f && fd >= 0)
        close(fd);
    while (f && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);

        if (cJSON_IsObject(o))
            cb(data, o);
        else
            cJSON_Delete(o);
    }
    free(line);
    if (f)
        fclose(f);
}

static int write_line(int fd, const cJSON *obj)
{
    char *s = cJSON_PrintUnformatted(obj);
    size_t len;
    int rc = 0;

    if (!s)
        return -ENOMEM;
    len = strlen(s);
    s[len] = '\n'; /* replaces the terminator: written as one line */
    if (write(fd, s, len + 1) != (ssize_t)(len + 1))
        rc = -errno;
    free(s);
    return rc;
}

void ag_history_append(struct ag_history *h, const cJSON *obj)
{
    if (write_line(h->fd, obj) < 0)
        ag_log("warning", "cannot write the job history: %s", strerror(errno));
    h->lines++;
}

int ag_history_compact(struct ag_history *h, const cJSON *(*next)(void *it), void *it)
{
    char tmp[AG_TMP_NAME_MAX];
    const cJSON *o;
    unsigned n = 0;
    int fd, rc;

    fd = ag_replace_open(h->dirfd, AG_HISTORY_FILE, tmp);
    if (fd < 0) {
        ag_log("warning", "cannot rewrite the job history: %s", strerror(-fd));
        return fd;
    }
    while ((o = next(it)) != NULL) {
        if ((rc = write_line(fd, o)) < 0) {
            ag_replace_abort(h->dirfd, fd, tmp);
            ag_log("warning", "cannot rewrite the job history: %s", strerror(-rc));
            return rc;
        }
        n++;
    }
    rc = ag_replace_commit(h->dirfd, fd, tmp, AG_HISTORY_FILE);
    if (rc < 0) {
        ag_log("warning", "cannot replace the job history: %s", strerror(-rc));
        return rc;
    }
    fd = openat(h->dirfd, AG_HISTORY_FILE, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        ag_log("warning", "cannot reopen the job history: %s", strerror(errno));
        return -errno;
    }
    close(h->fd);
    h->fd = fd;
    h->lines = n;
    return 0;
}

unsigned ag_history_lines(const struct ag_history *h)
{
    return h->lines;
}

void ag_history_close(struct ag_history *h)
{
    if (!h)
        return;
    close(h->fd);
    free(h);
}
