/*
 * The agent's own files in its state directory, made as systemd makes them:
 * relative to a directory fd, under a random name opened O_CREAT | O_EXCL |
 * O_NOFOLLOW, and renamed into place; a planted symlink is never followed.
 */
#ifndef HS_AGENT_FILES_H
#define HS_AGENT_FILES_H

#include <stddef.h>

#define AG_TMP_NAME_MAX 64

/* A new file in @dirfd to take the place of @name later: its fd, with its
 * name in @tmp, or a negative errno. */
int ag_replace_open(int dirfd, const char *name, char tmp[AG_TMP_NAME_MAX]);
/* fsync @fd, rename @tmp over @name, fsync the directory; @fd is closed.
 * On failure the temporary file is removed: 0 or a negative errno. */
int ag_replace_commit(int dirfd, int fd, const char *tmp, const char *name);
/* Give up: close @fd and remove @tmp. */
void ag_replace_abort(int dirfd, int fd, const char *tmp);

/* The first line of a file that only root may read (the mode is checked on
 * the open file): malloc'd without its newline, or NULL with @err. */
char *ag_read_secret(const char *path, const char *what, char *err, size_t errlen);

#endif
