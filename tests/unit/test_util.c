/* File-system helpers that jobs call at once from worker threads. */
#include <stdlib.h>
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

int main(void)
{
    RUN(test_url_redact);
    RUN(test_dir_writable_from_many_threads);
    return 0;
}
