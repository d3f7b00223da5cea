/* The agent's job history (see history.h). */
#include <errno.h>
#include <stddef.h>
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
    uv_loop_t *loop;
    int dirfd; /* borrowed */
    int fd;    /* appended to */
    unsigned lines;
    /* a rewrite on the worker pool */
    uv_work_t work;
    int compacting;
    char *text;  /* the new file, printed on the loop */
    size_t len;
    char *later; /* lines appended meanwhile: after it */
    size_t nlater, caplater;
    unsigned new_lines;
    int w_fd, w_rc; /* the worker's */
};

int ag_history_open(uv_loop_t *loop, int dirfd, struct ag_history **out, char *err,
                    size_t errlen)
{
    struct ag_history *h = calloc(1, sizeof(*h));

    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    h->loop = loop;
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
    h->lines++;
    if (h->compacting) {
        /* the new file is being written: the line goes after it */
        char *s = cJSON_PrintUnformatted(obj);
        size_t len = s ? strlen(s) : 0;

        if (s && h->nlater + len + 1 > h->caplater) {
            size_t cap = (h->caplater ? h->caplater * 2 : 4096) + len + 1;
            char *p = realloc(h->later, cap);

            if (p) {
                h->later = p;
                h->caplater = cap;
            }
        }
        if (s && h->nlater + len + 1 <= h->caplater) {
            memcpy(h->later + h->nlater, s, len);
            h->later[h->nlater + len] = '\n';
            h->nlater += len + 1;
        }
        free(s);
        return;
    }
    if (write_line(h->fd, obj) < 0)
        ag_log("warning", "cannot write the job history: %s", strerror(errno));
}

static int write_all(int fd, const char *p, size_t n)
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

/* Worker: the new file, in place; its fd to append to, in w_fd. */
static void compact_work(uv_work_t *w)
{
    struct ag_history *h = (struct ag_history *)((char *)w - offsetof(struct ag_history, work));
    char tmp[AG_TMP_NAME_MAX];
    int fd = ag_replace_open(h->dirfd, AG_HISTORY_FILE, tmp);

    h->w_fd = -1;
    if (fd < 0) {
        h->w_rc = fd;
        return;
    }
    h->w_rc = write_all(fd, h->text, h->len);
    if (h->w_rc < 0) {
        ag_replace_abort(h->dirfd, fd, tmp);
        return;
    }
    h->w_rc = ag_replace_commit(h->dirfd, fd, tmp, AG_HISTORY_FILE);
    if (h->w_rc == 0) {
        h->w_fd = openat(h->dirfd, AG_HISTORY_FILE, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (h->w_fd < 0)
            h->w_rc = -errno;
    }
}

static void compact_done(uv_work_t *w, int status)
{
    struct ag_history *h = (struct ag_history *)((char *)w - offsetof(struct ag_history, work));

    h->compacting = 0;
    free(h->text);
    h->text = NULL;
    if (status == 0 && h->w_rc == 0) {
        close(h->fd);
        h->fd = h->w_fd;
    } else {
        ag_log("warning", "cannot rewrite the job history: %s",
               strerror(h->w_rc < 0 ? -h->w_rc : -status));
    }
    /* the lines that came meanwhile: after the new file (or the old one, kept) */
    if (h->nlater && write_all(h->fd, h->later, h->nlater) < 0)
        ag_log("warning", "cannot write the job history: %s", strerror(errno));
    h->nlater = 0;
}

void ag_history_compact_async(struct ag_history *h, const cJSON *(*next)(void *it), void *it)
{
    const cJSON *o;
    size_t cap = 0;

    if (h->compacting)
        return;
    h->len = 0;
    h->new_lines = 0;
    while ((o = next(it)) != NULL) {
        char *s = cJSON_PrintUnformatted(o);
        size_t len = s ? strlen(s) : 0;

        if (s && h->len + len + 1 > cap) {
            char *p;

            cap = (cap ? cap * 2 : 65536) + len + 1;
            p = realloc(h->text, cap);
            if (!p) {
                free(s);
                free(h->text);
                h->text = NULL;
                return;
            }
            h->text = p;
        }
        if (s) {
            memcpy(h->text + h->len, s, len);
            h->text[h->len + len] = '\n';
            h->len += len + 1;
            h->new_lines++;
        }
        free(s);
    }
    h->lines = h->new_lines; /* appends from now on follow the new file */
    if (uv_queue_work(h->loop, &h->work, compact_work, compact_done) < 0) {
        free(h->text);
        h->text = NULL;
        return;
    }
    h->compacting = 1;
}

static void compact_wait(struct ag_history *h);

int ag_history_compact(struct ag_history *h, const cJSON *(*next)(void *it), void *it)
{
    char tmp[AG_TMP_NAME_MAX];
    const cJSON *o;
    unsigned n = 0;
    int fd, rc;

    compact_wait(h);
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

/* A rewrite under way ends first (the loop is not serving any more). */
static void compact_wait(struct ag_history *h)
{
    while (h->compacting && uv_run(h->loop, UV_RUN_ONCE))
        ;
}

void ag_history_close(struct ag_history *h)
{
    if (!h)
        return;
    compact_wait(h);
    close(h->fd);
    free(h->text);
    free(h->later);
    free(h);
}
