/* The streaming qcow2 writer, without any VM: synthetic maps of a disk's
 * data, streamed to a file as an upload would send it, then checked by
 * qemu-img (check, and compare with a raw reference of the same disk). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "qcow2.h"

static char dir[] = "/tmp/hs-test-qcow2-XXXXXX";

struct extent {
    uint64_t off, len;
};

/* The guest's bytes: a pattern no two clusters share. */
static void pattern(uint64_t off, uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(((off + i) >> 9) * 31 + ((off + i) & 0xff) + 1);
}

static void pwrite_all(int fd, const void *p, size_t n, uint64_t off)
{
    CHECK(pwrite(fd, p, n, (off_t)off) == (ssize_t)n);
}

static int sh(const char *fmt, const char *a, const char *b)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), fmt, a, b);
    return system(cmd);
}

/* Stream the image of a disk of @vsize whose data lies in @ext, and check it. */
static void check_image(const char *name, uint64_t vsize, const struct extent *ext, size_t n)
{
    char raw[256], img[256];
    uint8_t *buf = malloc(HS_QCOW2_CLUSTER);
    struct hs_qcow2 *q = hs__qcow2_new(vsize);
    uint64_t cur = 0, g, out, meta;
    int rfd, ifd;
    size_t i;

    CHECK(q);
    snprintf(raw, sizeof(raw), "%s/%s.raw", dir, name);
    snprintf(img, sizeof(img), "%s/%s.qcow2", dir, name);
    /* the reference: the disk's content as a raw file */
    rfd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(rfd >= 0 && ftruncate(rfd, (off_t)vsize) == 0);
    for (i = 0; i < n; i++) {
        uint64_t o = ext[i].off, end = ext[i].off + ext[i].len;

        hs__qcow2_mark(q, ext[i].off, ext[i].len);
        while (o < end) {
            size_t k = end - o < HS_QCOW2_CLUSTER ? (size_t)(end - o) : HS_QCOW2_CLUSTER;

            pattern(o, buf, k);
            pwrite_all(rfd, buf, k, o);
            o += k;
        }
    }
    hs__qcow2_plan(q);
    /* one sequential pass, in chunks that straddle metadata clusters */
    ifd = open(img, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(ifd >= 0);
    meta = hs__qcow2_data_offset(q);
    for (out = 0; out < meta;) {
        size_t k = meta - out < 12345 ? (size_t)(meta - out) : 12345;

        hs__qcow2_meta(q, out, buf, k);
        pwrite_all(ifd, buf, k, out);
        out += k;
    }
    for (i = 0; (g = hs__qcow2_next_data(q, &cur)) != UINT64_MAX; i++) {
        ssize_t r;

        memset(buf, 0, HS_QCOW2_CLUSTER);
        r = pread(rfd, buf, HS_QCOW2_CLUSTER, (off_t)g); /* short at the disk's end */
        CHECK(r > 0);
        pwrite_all(ifd, buf, HS_QCOW2_CLUSTER, out);
        out += HS_QCOW2_CLUSTER;
    }
    CHECK(i == hs__qcow2_data_count(q));
    CHECK(out == hs__qcow2_size(q)); /* the Content-Length was right */
    close(ifd);
    close(rfd);
    CHECK(sh("qemu-img check -q -f qcow2 '%s'%s", img, "") == 0);
    CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", raw, img) == 0);
    unlink(raw);
    unlink(img);
    hs__qcow2_free(q);
    free(buf);
}

#define MiB (1ull << 20)
#define GiB (1ull << 30)
#define TiB (1ull << 40)

static void test_empty(void)
{
    check_image("empty", 1 * GiB, NULL, 0);
}

static void test_full(void)
{
    struct extent e = {0, 3 * MiB};

    check_image("full", 3 * MiB, &e, 1);
}

static void test_fragmented(void)
{
    struct extent e[200];
    uint64_t off = 4096;
    size_t i;

    for (i = 0; i < 200; i++) {
        e[i].off = off;
        e[i].len = 512 * (1 + (i * 7919) % 300); /* 512 B to 150 KiB */
        off += e[i].len + 4096 * (1 + (i * 104729) % 900);
    }
    check_image("frag", off + MiB, e, 200);
}

static void test_not_a_multiple_of_the_cluster(void)
{
    struct extent e[2] = {{0, 4096}, {10 * MiB, 12800}};

    check_image("odd", 10 * MiB + 12800, e, 2);
}

static void test_not_a_multiple_of_the_sector(void)
{
    /* rounded up to a whole sector; the bytes past the disk read as zeros */
    struct extent e = {10 * MiB, 12345};

    check_image("odd-sector", 10 * MiB + 12345, &e, 1);
}

static void test_past_two_tib(void)
{
    uint64_t v = 3 * TiB + 5 * MiB;
    struct extent e[4] = {{0, MiB}, {2 * TiB - 64 * 1024, 128 * 1024}, {2 * TiB + 512 * MiB, 4096},
                          {v - 100, 100}};

    check_image("big", v, e, 4);
}

static void test_a_single_cluster_at_the_end(void)
{
    struct extent e = {GiB - 65536, 65536};

    check_image("end", GiB, &e, 1);
}

static void test_refcount_blocks_beyond_one(void)
{
    /* over 32768 clusters: more than one refcount block */
    struct extent e = {0, 2080 * MiB};

    check_image("many", 2080 * MiB, &e, 1);
}

static void test_bad_sizes(void)
{
    CHECK(hs__qcow2_new(0) == NULL);
    CHECK(hs__qcow2_new(UINT64_MAX) == NULL);
}

int main(void)
{
    CHECK(system("qemu-img --version >/dev/null 2>&1") == 0); /* qemu-utils */
    CHECK(mkdtemp(dir));
    RUN(test_bad_sizes);
    RUN(test_empty);
    RUN(test_full);
    RUN(test_fragmented);
    RUN(test_not_a_multiple_of_the_cluster);
    RUN(test_not_a_multiple_of_the_sector);
    RUN(test_past_two_tib);
    RUN(test_a_single_cluster_at_the_end);
    RUN(test_refcount_blocks_beyond_one);
    rmdir(dir);
    return 0;
}
