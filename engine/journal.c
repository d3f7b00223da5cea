#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "util.h"

char *hs__journal_dir(const char *state_dir)
{
    return hs__asprintf("%s/journal", state_dir);
}

int hs__journal_open(const char *state_dir, const char *id, struct hs_journal **out,
                     struct hs_err *err)
{
    char *dir = hs__journal_dir(state_dir);
    struct hs_journal *j;
    struct stat st;
    int rc;

    /* the state dir holds the scratch dir, which QEMU must traverse: 0711;
     * the journal itself is root's alone. One made by someone else without
     * it (systemd's StateDirectoryMode=0700, the agent of an older hotsnap)
     * gets exactly the traverse bit QEMU needs, o+x: nobody may list it. */
    rc = hs__mkdir_p(state_dir, 0711);
    if (rc == 0 && stat(state_dir, &st) == 0 && !(st.st_mode & S_IXOTH) &&
        chmod(state_dir, (st.st_mode & 07777) | S_IXOTH) < 0)
        rc = -errno;
    if (rc == 0)
        rc = hs__mkdir_p(dir, 0700);
    if (rc < 0) {
        hs_err_set(err, rc, HS_ERR_SYS, -rc, "cannot create journal directory '%s': %s", dir,
                   strerror(-rc));
        free(dir);
        return rc;
    }
    j = hs__calloc(1, sizeof(*j));
    j->path = hs__asprintf("%s/%s.json", dir, id);
    j->lock_path = hs__asprintf("%s/%s.lock", dir, id);
    free(dir);
    j->lock_fd = open(j->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (j->lock_fd < 0 || flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        rc = -errno;
        hs_err_set(err, rc, HS_ERR_SYS, -rc, "cannot lock journal '%s': %s", j->lock_path,
                   strerror(-rc));
        if (j->lock_fd >= 0)
            close(j->lock_fd);
        free(j->path);
        free(j->lock_path);
        free(j);
        return rc;
    }
    j->doc = cJSON_CreateObject();
    cJSON_AddStringToObject(j->doc, "job", id);
    cJSON_AddNumberToObject(j->doc, "pid", (double)getpid());
    *out = j;
    return 0;
}

char *hs__journal_render(struct hs_journal *j)
{
    char *s = cJSON_PrintUnformatted(j->doc);

    if (!s)
        abort();
    return s;
}

int hs__journal_write(struct hs_journal *j, const char *text)
{
    int rc = hs__write_atomic(j->path, text, strlen(text), 0600);

    if (rc == 0)
        j->written = 1;
    return rc;
}

static void journal_free(struct hs_journal *j)
{
    if (j->lock_fd >= 0)
        close(j->lock_fd); /* releases the flock */
    cJSON_Delete(j->doc);
    free(j->path);
    free(j->lock_path);
    free(j);
}

void hs__journal_remove(struct hs_journal *j)
{
    if (!j)
        return;
    unlink(j->path);
    unlink(j->lock_path);
    journal_free(j);
}

void hs__journal_abandon(struct hs_journal *j)
{
    if (!j)
        return;
    journal_free(j);
}
