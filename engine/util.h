/* Small helpers shared by the engine, backends and uploaders. */
#ifndef HS_UTIL_H
#define HS_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define HS_UUID_LEN 37 /* 36 characters and NUL */

#define hs_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* A random (version 4) UUID, lower case. */
void hs__uuid4(char out[HS_UUID_LEN]);
/* The @n-th UUID that follows @base, the same in every process (SHA-256 of
 * both, in the form of a version 4 UUID): the ids an upload takes for the
 * records it makes again can be found from the one journaled. */
void hs__uuid_next(const char *base, int n, char out[HS_UUID_LEN]);
/* Wall clock, seconds since the epoch with ms precision. */
double hs__now(void);
/* UTC "YYYY-MM-DDTHH:MM:SS.mmmZ" of @t. */
void hs__iso8601(double t, char *buf, size_t len);
/* mkdir -p with @mode for created levels. 0 or negative errno. */
int hs__mkdir_p(const char *path, unsigned mode);
/* Remove @path and everything below it; ENOENT is success. 0 or negative errno.
 * Below @path it goes by directory fds and never follows a symlink: one put
 * in its way (by QEMU's user, say) is removed, what it points to is not. */
int hs__rm_rf(const char *path);
/* Check that @dir is a directory we can create files in (creates and removes a probe). */
int hs__dir_writable(const char *dir, struct hs_err *err, const char *what);
/* Whether the directory open at @dirfd (named @dir for the message) is safe
 * for root to make files in: nobody but root (or its owner, this process's
 * user) can write in it, or it has the sticky bit so that nobody can rename
 * or remove another's files. 0, or -EPERM with the reason in @err. */
int hs__dir_safe(int dirfd, const char *dir, struct hs_err *err, const char *what);
/* A new file @name in @dirfd: O_CREAT | O_EXCL | O_NOFOLLOW, mode exactly
 * @mode (whatever the umask). Its fd, or a negative errno. */
int hs__create_at(int dirfd, const char *name, unsigned mode);
/* Rename @from to @to in @dirfd, never over a file that is there: -EEXIST. */
int hs__rename_noreplace_at(int dirfd, const char *from, const char *to);
/* Whether every directory from / down to @dir lets other users through
 * (QEMU runs as its own user); on failure names the first one that does not. */
int hs__path_traversable(const char *dir, struct hs_err *err, const char *what);
/* Write @len bytes to @name in @dirfd atomically: a temporary file of a
 * random name (hs__create_at), fsync, renamed into place, the directory
 * fsynced. With @noreplace an existing @name is -EEXIST, else replaced (a
 * symlink there is replaced, never followed). */
int hs__write_atomic_at(int dirfd, const char *name, const void *data, size_t len, unsigned mode,
                        int noreplace);
/* Whether directory entry @entry is the temporary file of an atomic write
 * (.NAME.RANDOM.tmp, left by a writer killed before its rename): 1 with NAME
 * in @name (@len bytes), else 0. */
int hs__atomic_tmp_name(const char *entry, char *name, size_t len);
/* The same for @path (its directory opened for it). */
int hs__write_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* Read a whole small file; caller frees. NULL with errno set on failure. */
char *hs__read_file(const char *path, size_t max);
/* strdup that aborts on allocation failure (allocation failure is fatal here). */
char *hs__strdup(const char *s);
void *hs__calloc(size_t n, size_t size);
char *hs__asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Whether @path lies below directory @dir. */
int hs__path_in_dir(const char *path, const char *dir);
/* @url with any "user:password@" replaced by "***@", for messages. */
const char *hs__url_redact(const char *url, char *buf, size_t len);
/* Lower-case hex of @n bytes into @out (2n + 1 bytes). */
void hs__hex(const unsigned char *b, unsigned n, char *out);
/* Free a NULL-terminated array of strings and the strings; NULL-safe. */
void hs__strv_free(char **v);
/* The NBD URI of @export at the unix socket @socket (nbd+unix:///...),
 * percent-encoded; caller frees. */
char *hs__nbd_uri(const char *export_name, const char *socket);

#endif
