/* File-system helpers that jobs call at once from worker threads. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "err.h"
#include "util.h"

#define THREADS 8
#define ROUNDS 300

static char dir[] = "/tmp/hs-test-util-XXXXXX";
static int failures;

static void prober(void *arg)
{
    struct hs_err err = {0};
    int i;

    for (i = 0; i < ROUNDS; i++) {
        if (hs__dir_writable(dir, &err, "scratch directory") < 0) {
            fprintf(stderr, "  %s\n", err.msg);
            __atomic_add_fetch(&failures, 1, __ATOMIC_SEQ_CST);
            return;
        }
    }
}

/* Many jobs probe one scratch directory at the same moment: each must see it writable. */
static void test_dir_writable_from_many_threads(void)
{
    uv_thread_t t[THREADS];
    char cmd[64];
    int i;

    CHECK(mkdtemp(dir) != NULL);
    for (i = 0; i < THREADS; i++)
        CHECK(uv_thread_create(&t[i], prober, NULL) == 0);
    for (i = 0; i < THREADS; i++)
        uv_thread_join(&t[i]);
    CHECK(failures == 0);
    snprintf(cmd, sizeof(cmd), "rmdir %s", dir); /* no probe file left behind */
    CHECK(system(cmd) == 0);
}

/* The ids an upload takes for the records it makes again follow from the
 * first: the same in every process, distinct, each a version 4 UUID. */
static void test_uuid_next(void)
{
    const char *base = "0b4a7c2e-1f6d-4e3a-9c5b-2d8e7f6a1b3c";
    char a[HS_UUID_LEN], b[HS_UUID_LEN], c[HS_UUID_LEN];

    hs__uuid_next(base, 1, a);
    hs__uuid_next(base, 1, b);
    hs__uuid_next(base, 2, c);
    CHECK(!strcmp(a, b));
    CHECK(strcmp(a, c) != 0 && strcmp(a, base) != 0);
    CHECK(strlen(a) == 36 && a[8] == '-' && a[14] == '4');
    CHECK(strchr("89ab", a[19]) != NULL);
    hs__uuid_next("another-base", 1, b);
    CHECK(strcmp(a, b) != 0);
}

/* A URL with credentials is never echoed as it is. */
static void test_url_redact(void)
{
    char buf[256];

    CHECK(!strcmp(hs__url_redact("http://admin:s3cret@10.0.0.1:9292/v2", buf, sizeof(buf)),
                  "http://***@10.0.0.1:9292/v2"));
    CHECK(!strcmp(hs__url_redact("https://user@h/x@y", buf, sizeof(buf)), "https://***@h/x@y"));
    CHECK(!strcmp(hs__url_redact("http://h:9292/a@b", buf, sizeof(buf)), "http://h:9292/a@b"));
    CHECK(!strcmp(hs__url_redact("no-scheme@x", buf, sizeof(buf)), "no-scheme@x"));
    CHECK(!strcmp(hs__url_redact(NULL, buf, sizeof(buf)), ""));
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0);
}

static int holds(const char *path, const char *text)
{
    char buf[256] = "";
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

    if (f)
        fclose(f);
    buf[n] = '\0';
    return !strcmp(buf, text);
}

/* A user who can write in a store plants symlinks where root's files go:
 * the name the sidecar's temporary file used to have (predictable from the
 * image id and the pid), and the sidecar's own name. Neither is followed. */
static void test_write_atomic_follows_no_symlink(void)
{
    char d[] = "/tmp/hs-test-atomic-XXXXXX", victim[300], planted[300], final[300];
    struct stat st;

    CHECK(mkdtemp(d) != NULL);
    snprintf(victim, sizeof(victim), "%s/victim", d);
    put(victim, "root's own");
    CHECK(chmod(victim, 0644) == 0);
    snprintf(final, sizeof(final), "%s/img.json", d);
    snprintf(planted, sizeof(planted), "%s.tmp.%d", final, (int)getpid());
    CHECK(symlink(victim, planted) == 0);
    CHECK(hs__write_atomic(final, "{}", 2, 0600) == 0);
    CHECK(holds(victim, "root's own"));
    CHECK(stat(victim, &st) == 0 && (st.st_mode & 0777) == 0644);
    CHECK(holds(final, "{}"));
    /* a symlink at the final name is replaced, what it points to untouched */
    CHECK(unlink(final) == 0 && symlink(victim, final) == 0);
    CHECK(hs__write_atomic(final, "[]", 2, 0600) == 0);
    CHECK(lstat(final, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0600);
    CHECK(holds(victim, "root's own") && holds(final, "[]"));
    /* no temporary file is left */
    {
        char cmd[400];

        snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) -eq 3", d);
        CHECK(system(cmd) == 0);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", d);
        CHECK(system(cmd) == 0);
    }
}

/* Renamed into place without replacing: a name taken stays what it was. */
static void test_noreplace(void)
{
    char d[] = "/tmp/hs-test-noreplace-XXXXXX", a[300], b[300], cmd[300];
    int fd;

    CHECK(mkdtemp(d) != NULL);
    fd = open(d, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    snprintf(a, sizeof(a), "%s/a", d);
    snprintf(b, sizeof(b), "%s/b", d);
    put(a, "new");
    put(b, "old");
    CHECK(hs__rename_noreplace_at(fd, "a", "b") == -EEXIST);
    CHECK(holds(b, "old") && holds(a, "new"));
    CHECK(hs__write_atomic_at(fd, "b", "x", 1, 0600, 1) == -EEXIST);
    CHECK(holds(b, "old"));
    CHECK(hs__create_at(fd, "a", 0600) == -EEXIST);
    CHECK(symlink(a, b) == 0 || errno == EEXIST);
    CHECK(unlink(b) == 0 && symlink("/etc/passwd", b) == 0);
    CHECK(hs__create_at(fd, "b", 0600) == -EEXIST); /* not through the link */
    close(fd);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", d);
    CHECK(system(cmd) == 0);
}

/* The temporary files of an atomic write are told by their whole shape:
 * .NAME.<16 hex digits>.tmp, nothing looser. */
static void test_atomic_tmp_name(void)
{
    char name[32];

    CHECK(hs__atomic_tmp_name(".abc.json.0123456789abcdef.tmp", name, sizeof(name)) == 1);
    CHECK(strcmp(name, "abc.json") == 0);
    CHECK(hs__atomic_tmp_name("..prune-journal.fedcba9876543210.tmp", name, sizeof(name)) == 1);
    CHECK(strcmp(name, ".prune-journal") == 0);
    CHECK(hs__atomic_tmp_name(".a.0123456789abcdef.tmp", name, sizeof(name)) == 1);
    CHECK(strcmp(name, "a") == 0);
    CHECK(hs__atomic_tmp_name("..0123456789abcdef.tmp", name, sizeof(name)) == 0); /* no name */
    CHECK(hs__atomic_tmp_name("abc.json.0123456789abcdef.tmp", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".abc.json.0123456789ABCDEF.tmp", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".abc.json.0123456789abcde.tmp", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".abc.json-0123456789abcdef.tmp", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".abc.json.0123456789abcdef.tmp~", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".abc.json.tmp", name, sizeof(name)) == 0);
    CHECK(hs__atomic_tmp_name(".a-name-longer-than-the-buffer-given.0123456789abcdef.tmp", name,
                              sizeof(name)) == 0);
}

/* Scratch that QEMU's user could write in: rm -rf never follows its links. */
static void test_rm_rf_keeps_what_links_point_to(void)
{
    char d[] = "/tmp/hs-test-rmrf-XXXXXX", outside[] = "/tmp/hs-test-outside-XXXXXX";
    char p[400], cmd[400];

    CHECK(mkdtemp(d) != NULL && mkdtemp(outside) != NULL);
    snprintf(p, sizeof(p), "%s/keep", outside);
    put(p, "x");
    snprintf(p, sizeof(p), "%s/sub", d);
    CHECK(mkdir(p, 0700) == 0);
    snprintf(p, sizeof(p), "%s/sub/file", d);
    put(p, "y");
    snprintf(p, sizeof(p), "%s/sub/link", d);
    CHECK(symlink(outside, p) == 0);
    snprintf(p, sizeof(p), "%s/link", d);
    CHECK(symlink(outside, p) == 0);
    CHECK(hs__rm_rf(d) == 0);
    CHECK(access(d, F_OK) < 0 && errno == ENOENT);
    snprintf(p, sizeof(p), "%s/keep", outside);
    CHECK(holds(p, "x"));
    snprintf(cmd, sizeof(cmd), "rm -rf %s", outside);
    CHECK(system(cmd) == 0);
}

/* A store or scratch directory others could write in without the sticky bit. */
static void test_dir_safe(void)
{
    char d[] = "/tmp/hs-test-safe-XXXXXX";
    struct hs_err err = {0};
    int fd;

    CHECK(mkdtemp(d) != NULL);
    fd = open(d, O_RDONLY | O_DIRECTORY);
    CHECK(chmod(d, 0755) == 0 && hs__dir_safe(fd, d, &err, "image store") == 0);
    CHECK(chmod(d, 0777) == 0 && hs__dir_safe(fd, d, &err, "image store") == -EPERM);
    CHECK(strstr(err.msg, "sticky") && strstr(err.msg, "0777"));
    CHECK(chmod(d, 01777) == 0 && hs__dir_safe(fd, d, &err, "image store") == 0);
    CHECK(chown(d, 65534, 0) == 0);
    hs_err_clear(&err);
    CHECK(hs__dir_safe(fd, d, &err, "image store") == -EPERM && strstr(err.msg, "65534"));
    close(fd);
    CHECK(rmdir(d) == 0);
}

int main(void)
{
    RUN(test_url_redact);
    RUN(test_uuid_next);
    RUN(test_write_atomic_follows_no_symlink);
    RUN(test_noreplace);
    RUN(test_atomic_tmp_name);
    RUN(test_rm_rf_keeps_what_links_point_to);
    RUN(test_dir_safe);
    RUN(test_dir_writable_from_many_threads);
    return 0;
}
