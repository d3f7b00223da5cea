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

/* Stream into @fd the image @q lays out, data read from the raw @rfd. */
static void stream_image(struct hs_qcow2 *q, int rfd, int fd, uint8_t *buf)
{
    uint64_t cur = 0, g, out, meta = hs__qcow2_data_offset(q);
    size_t i;

    for (out = 0; out < meta;) {
        size_t k = meta - out < 12345 ? (size_t)(meta - out) : 12345;

        hs__qcow2_meta(q, out, buf, k);
        pwrite_all(fd, buf, k, out);
        out += k;
    }
    for (i = 0; (g = hs__qcow2_next_data(q, &cur)) != UINT64_MAX; i++) {
        memset(buf, 0, HS_QCOW2_CLUSTER);
        CHECK(pread(rfd, buf, HS_QCOW2_CLUSTER, (off_t)g) > 0);
        pwrite_all(fd, buf, HS_QCOW2_CLUSTER, out);
        out += HS_QCOW2_CLUSTER;
    }
    CHECK(i == hs__qcow2_data_count(q));
    CHECK(out == hs__qcow2_size(q));
}

/* Stream the image of a disk of @vsize whose data lies in @ext, and check it. */
static void check_image(const char *name, uint64_t vsize, const struct extent *ext, size_t n)
{
    char raw[256], img[256];
    uint8_t *buf = malloc(HS_QCOW2_CLUSTER);
    struct hs_qcow2 *q = hs__qcow2_new(vsize);
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
    stream_image(q, rfd, ifd, buf); /* the Content-Length was right */
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

/* ---- overlays: an incremental image over the chain's previous one ---- */

/* What block status would say of a raw file: the clusters not all zeros. */
static void mark_alloc(struct hs_qcow2 *q, int rfd, uint64_t vsize, uint8_t *buf)
{
    uint64_t o;
    ssize_t r, j;

    for (o = 0; o < vsize; o += HS_QCOW2_CLUSTER) {
        r = pread(rfd, buf, HS_QCOW2_CLUSTER, (off_t)o);
        CHECK(r > 0);
        for (j = 0; j < r && !buf[j]; j++)
            ;
        if (j < r)
            hs__qcow2_mark(q, o, (uint64_t)r);
    }
}

/* A disk of @vsize with data in @base, imaged in full (the chain's first
 * image); then @dirty rewritten (with new bytes, or zeros where @zeroed),
 * imaged as an overlay of the first holding only the dirty clusters. The
 * chain must read as the disk does now, and hold no more than it must. */
static void check_overlay(const char *name, uint64_t vsize, const struct extent *base, size_t nb,
                          const struct extent *dirty, size_t nd, int zeroed)
{
    char raw[256], full[256], top[256], back[256];
    uint8_t *buf = malloc(HS_QCOW2_CLUSTER);
    struct hs_qcow2 *q;
    uint64_t ndirty = 0, c;
    int rfd, fd;
    size_t i;

    snprintf(raw, sizeof(raw), "%s/%s.raw", dir, name);
    snprintf(full, sizeof(full), "%s/%s-0.qcow2", dir, name);
    snprintf(top, sizeof(top), "%s/%s-1.qcow2", dir, name);
    snprintf(back, sizeof(back), "%s-0.qcow2", name); /* relative, as a store names it */
    rfd = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(rfd >= 0 && ftruncate(rfd, (off_t)vsize) == 0);
    for (i = 0; i < nb; i++)
        for (c = base[i].off; c < base[i].off + base[i].len; c += HS_QCOW2_CLUSTER) {
            size_t k = base[i].off + base[i].len - c < HS_QCOW2_CLUSTER
                           ? (size_t)(base[i].off + base[i].len - c)
                           : HS_QCOW2_CLUSTER;

            pattern(c, buf, k);
            pwrite_all(rfd, buf, k, c);
        }
    /* the chain's first image: the whole disk */
    q = hs__qcow2_new(vsize);
    mark_alloc(q, rfd, vsize, buf);
    hs__qcow2_plan(q);
    fd = open(full, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    stream_image(q, rfd, fd, buf);
    close(fd);
    hs__qcow2_free(q);
    /* the guest writes */
    for (i = 0; i < nd; i++)
        for (c = dirty[i].off; c < dirty[i].off + dirty[i].len; c += HS_QCOW2_CLUSTER) {
            size_t j, k = dirty[i].off + dirty[i].len - c < HS_QCOW2_CLUSTER
                              ? (size_t)(dirty[i].off + dirty[i].len - c)
                              : HS_QCOW2_CLUSTER;

            pattern(c, buf, k);
            for (j = 0; j < k; j++)
                buf[j] = zeroed ? 0 : (uint8_t)(buf[j] ^ 0x5a);
            pwrite_all(rfd, buf, k, c);
        }
    /* the overlay */
    q = hs__qcow2_new(vsize);
    CHECK(hs__qcow2_set_backing(q, back, "qcow2") == 0);
    mark_alloc(q, rfd, vsize, buf);
    for (i = 0; i < nd; i++)
        hs__qcow2_mark_dirty(q, dirty[i].off, dirty[i].len);
    hs__qcow2_plan(q);
    for (i = 0; i < nd; i++)
        ndirty += (dirty[i].off + dirty[i].len + HS_QCOW2_CLUSTER - 1) / HS_QCOW2_CLUSTER -
                  dirty[i].off / HS_QCOW2_CLUSTER; /* extents never share a cluster here */
    CHECK(hs__qcow2_data_count(q) <= ndirty); /* only what changed is read */
    if (zeroed)
        CHECK(hs__qcow2_data_count(q) == 0);
    fd = open(top, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    stream_image(q, rfd, fd, buf);
    close(fd);
    close(rfd);
    hs__qcow2_free(q);
    CHECK(sh("qemu-img check -q -f qcow2 '%s'%s", top, "") == 0);
    CHECK(sh("qemu-img info -f qcow2 '%s' | grep -q 'backing file: %s'", top, back) == 0);
    CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", raw, top) == 0);
    unlink(raw);
    unlink(full);
    unlink(top);
    free(buf);
}

static void test_overlay_none_dirty(void)
{
    struct extent b = {0, 3 * MiB};

    check_overlay("ov-none", 3 * MiB, &b, 1, NULL, 0, 0);
}

static void test_overlay_all_dirty(void)
{
    struct extent b = {MiB, MiB}, d = {0, 4 * MiB};

    check_overlay("ov-all", 4 * MiB, &b, 1, &d, 1, 0);
}

static void test_overlay_fragmented(void)
{
    struct extent b[2] = {{0, 8 * MiB}, {20 * MiB, 4 * MiB}}, d[100];
    uint64_t off = 64 * 1024;
    size_t i;

    for (i = 0; i < 100; i++) {
        d[i].off = off;
        d[i].len = 512 * (1 + (i * 7919) % 200); /* within one or two clusters */
        off = (d[i].off + d[i].len + 65535) / 65536 * 65536 + 65536 * (1 + (i * 104729) % 5);
    }
    check_overlay("ov-frag", 32 * MiB, b, 2, d, 100, 0);
}

static void test_overlay_the_last_cluster(void)
{
    struct extent b = {0, 2 * MiB}, d = {2 * MiB - 65536, 65536};

    check_overlay("ov-last", 2 * MiB, &b, 1, &d, 1, 0);
}

static void test_overlay_not_a_multiple_of_the_cluster(void)
{
    uint64_t v = 5 * MiB + 12800;
    struct extent b = {0, v}, d[2] = {{65536, 4096}, {5 * MiB, 12800}};

    check_overlay("ov-odd", v, &b, 1, d, 2, 0);
}

static void test_overlay_dirty_to_zeros(void)
{
    /* discarded or zeroed since: zero clusters, not the old bytes below */
    struct extent b = {0, 4 * MiB}, d[2] = {{0, 65536}, {2 * MiB, 3 * 65536}};

    check_overlay("ov-zero", 4 * MiB, &b, 1, d, 2, 1);
}

static void test_overlay_bad_backing(void)
{
    struct hs_qcow2 *q = hs__qcow2_new(MiB);
    char name[1100];

    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = 0;
    CHECK(hs__qcow2_set_backing(q, name, "qcow2") < 0); /* longer than QEMU reads */
    CHECK(hs__qcow2_set_backing(q, "", "qcow2") < 0);
    CHECK(hs__qcow2_set_backing(q, "x.qcow2", "qcow2") == 0);
    CHECK(hs__qcow2_set_backing(q, "y.qcow2", "qcow2") < 0); /* once */
    hs__qcow2_free(q);
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
    RUN(test_overlay_bad_backing);
    RUN(test_overlay_none_dirty);
    RUN(test_overlay_all_dirty);
    RUN(test_overlay_fragmented);
    RUN(test_overlay_the_last_cluster);
    RUN(test_overlay_not_a_multiple_of_the_cluster);
    RUN(test_overlay_dirty_to_zeros);
    rmdir(dir);
    return 0;
}
