/* The read-ahead source: every byte in order, the right sha512, rewind and close at any time. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <uv.h>
#include <xxhash.h>

#include "check.h"
#include "source.h"
#include "util.h"

static uv_loop_t loop;
static char path[] = "/tmp/hs-test-source-XXXXXX";
static unsigned char *data;
static size_t size;
static int readies;

static void ready(struct hs_stream *st, void *d)
{
    readies++;
}

static void make_file(size_t n)
{
    int fd = mkstemp(path);
    size_t i;

    CHECK(fd >= 0);
    data = malloc(n + 1);
    for (i = 0; i < n; i++)
        data[i] = (unsigned char)(i * 7 + i / 4096);
    CHECK(write(fd, data, n) == (ssize_t)n);
    close(fd);
    size = n;
}

static void sha512_hex(const unsigned char *p, size_t n, char *hex)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len;

    EVP_Digest(p, n, md, &len, EVP_sha512(), NULL);
    hs__hex(md, len, hex);
}

/* Turn the loop until the stream says there is more. */
static void wait_more(void)
{
    int before = readies;

    while (readies == before)
        uv_run(&loop, UV_RUN_ONCE);
}

/* Read everything with reads of @step bytes, the loop turning on -EAGAIN;
 * stop after @stop bytes. Returns what was read. */
static size_t drain(struct hs_source *src, unsigned char *out, size_t step, size_t stop)
{
    struct hs_err err = {0};
    size_t got = 0;
    ssize_t n;

    while (got < stop) {
        n = hs__source_read(src, out + got, step, &err);
        if (n == -EAGAIN) {
            wait_more();
            continue;
        }
        CHECK(n >= 0);
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void test_every_byte_and_the_hash(void)
{
    struct hs_source *src;
    struct hs_err err = {0};
    unsigned char *out = malloc(size + 1);
    char want[129];

    sha512_hex(data, size, want);
    CHECK(hs__source_open(&loop, path, size, HS_DIGEST_SHA512, ready, NULL, &src, &err) == 0);
    CHECK(hs__source_digest(src) == NULL);
    CHECK(drain(src, out, 65536, size + 1) == size);
    CHECK(!memcmp(out, data, size));
    CHECK(hs__source_digest(src) && !strcmp(hs__source_digest(src), want));
    /* again from the start, after an odd partial read and a rewind */
    hs__source_rewind(src);
    CHECK(drain(src, out, 1000, 300000) >= 300000);
    hs__source_rewind(src);
    CHECK(hs__source_digest(src) == NULL);
    CHECK(drain(src, out, 7777, size + 1) == size);
    CHECK(!memcmp(out, data, size));
    CHECK(!strcmp(hs__source_digest(src), want));
    /* closed with a read in flight: freed once it ends (ASan watches) */
    hs__source_rewind(src);
    hs__source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    free(out);
}

/* Lent instead of read: every byte in order, each lend page-aligned and
 * all but the last a multiple of 4 KiB, up to every buffer held at once
 * while the stream waits for one back, and the hash final at the end. */
static void test_lend_and_give_back(void)
{
    struct hs_source *src;
    struct hs_err err = {0};
    unsigned char *out = malloc(size + 1);
    size_t got = 0, held_bytes[8];
    const void *p;
    int held = 0, most = 0, ended = 0;
    char want[129];
    ssize_t n;

    sha512_hex(data, size, want);
    CHECK(hs__source_open(&loop, path, size, HS_DIGEST_SHA512, ready, NULL, &src, &err) == 0);
    while (!ended) {
        n = hs__source_lend(src, &p, &err);
        if (n == -EAGAIN && held > 0) {
            /* nothing more to borrow: the oldest goes back (three out of
             * four times; else wait for the read ahead) */
            if (held == 4 || got % 3) {
                hs__source_give_back(src);
                memmove(held_bytes, held_bytes + 1, sizeof(held_bytes[0]) * (size_t)--held);
                continue;
            }
        }
        if (n == -EAGAIN) {
            wait_more();
            continue;
        }
        CHECK(n >= 0);
        if (n == 0) {
            ended = 1;
            break;
        }
        CHECK(((uintptr_t)p & 4095) == 0);
        CHECK(held < 8);
        memcpy(out + got, p, (size_t)n);
        got += (size_t)n;
        CHECK(got == size || n % 4096 == 0);
        held_bytes[held++] = (size_t)n;
        if (held > most)
            most = held;
    }
    while (held-- > 0)
        hs__source_give_back(src);
    CHECK(got == size);
    CHECK(!memcmp(out, data, size));
    CHECK(most >= 2);
    CHECK(hs__source_digest(src) && !strcmp(hs__source_digest(src), want));
    hs__source_rewind(src); /* everything back: a rewind is allowed */
    CHECK(drain(src, out, 65536, size + 1) == size);
    CHECK(!memcmp(out, data, size));
    hs__source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    free(out);
}

/* Each algorithm a store may choose gives what its library computes in one
 * call, in the spelling its own tool prints (xxhsum -H2: big-endian). */
static void test_each_digest(void)
{
    struct hs_source *src;
    struct hs_err err = {0};
    unsigned char *out = malloc(size + 1), md[EVP_MAX_MD_SIZE];
    XXH128_canonical_t c;
    char want[129];
    unsigned len;
    enum hs_digest_algo a;

    XXH128_canonicalFromHash(&c, XXH3_128bits(data, size));
    hs__hex(c.digest, sizeof(c.digest), want);
    CHECK(hs__source_open(&loop, path, size, HS_DIGEST_XXH128, ready, NULL, &src, &err) == 0);
    CHECK(drain(src, out, 65536, size + 1) == size);
    CHECK(!strcmp(hs__source_digest(src), want) && strlen(want) == 32);
    hs__source_rewind(src); /* the hash starts again too */
    CHECK(drain(src, out, 5000, size + 1) == size);
    CHECK(!strcmp(hs__source_digest(src), want));
    hs__source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);

    EVP_Digest(data, size, md, &len, EVP_sha256(), NULL);
    hs__hex(md, len, want);
    CHECK(hs__source_open(&loop, path, size, HS_DIGEST_SHA256, ready, NULL, &src, &err) == 0);
    CHECK(drain(src, out, 65536, size + 1) == size);
    CHECK(!strcmp(hs__source_digest(src), want));
    hs__source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);

    CHECK(hs__digest_parse("xxh128", &a) == 0 && a == HS_DIGEST_XXH128);
    CHECK(hs__digest_parse("sha256", &a) == 0 && !strcmp(hs__digest_name(a), "sha256"));
    CHECK(hs__digest_parse("md5", &a) == -EINVAL && hs__digest_parse(NULL, &a) == -EINVAL);
    free(out);
}

static void test_missing_and_shrunk_files(void)
{
    struct hs_source *src;
    struct hs_err err = {0};
    unsigned char *out = malloc(size + 1);
    ssize_t n = 0;

    CHECK(hs__source_open(&loop, "/nonexistent/x", 10, HS_DIGEST_SHA512, ready, NULL, &src, &err) < 0);
    CHECK(strstr(err.msg, "/nonexistent/x"));
    hs_err_clear(&err);
    /* a file shorter than announced is an error, not a short image */
    CHECK(hs__source_open(&loop, path, size + 100, HS_DIGEST_SHA512, ready, NULL, &src, &err) == 0);
    for (;;) {
        n = hs__source_read(src, out, 65536, &err);
        if (n == -EAGAIN)
            uv_run(&loop, UV_RUN_ONCE);
        else if (n <= 0)
            break;
    }
    CHECK(n < 0 && strstr(err.msg, "changed while it was read"));
    CHECK(hs__source_digest(src) == NULL);
    hs__source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    free(out);
}

int main(void)
{
    uv_loop_init(&loop);
    make_file(5 * 1024 * 1024 + 12345);
    RUN(test_every_byte_and_the_hash);
    RUN(test_each_digest);
    RUN(test_lend_and_give_back);
    RUN(test_missing_and_shrunk_files);
    unlink(path);
    free(data);
    CHECK(uv_loop_close(&loop) == 0);
    return 0;
}
