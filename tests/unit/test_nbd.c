/* The NBD adapter against a real qemu-nbd: a qcow2 disk exported on a unix
 * socket, its allocation read by block status, its data by reads several in
 * flight, streamed into a qcow2 laid out in advance (engine/qcow2.c); the
 * result must equal the disk (qemu-img compare) and pass qemu-img check. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <libnbd.h>
#include <uv.h>

#include <openssl/evp.h>

#include "check.h"
#include "nbd.h"
#include "nbd_source.h"
#include "qcow2.h"
#include "util.h"

#define C HS_QCOW2_CLUSTER
#define IN_FLIGHT 8

static uv_loop_t loop;
static char dir[] = "/tmp/hs-test-nbd-XXXXXX";
static char disk[256], sock[256], pidfile[256], out[256];
static struct hs_nbd_export served = {.socket = sock, .name = "vda"};

static int sh(const char *cmd)
{
    return system(cmd);
}

static void start_server(void)
{
    char cmd[1024];
    int i;

    snprintf(disk, sizeof(disk), "%s/disk.qcow2", dir);
    snprintf(sock, sizeof(sock), "%s/nbd.sock", dir);
    snprintf(pidfile, sizeof(pidfile), "%s/nbd.pid", dir);
    snprintf(out, sizeof(out), "%s/out.qcow2", dir);
    snprintf(cmd, sizeof(cmd),
             "qemu-img create -q -f qcow2 %s 300M && qemu-io -f qcow2 -c 'write -P 0x11 0 1M' "
             "-c 'write -P 0x22 5M 64k' -c 'write -P 0x33 100M 3M' -c 'write -z 200M 1M' "
             "-c 'write -P 0x44 299M 1M' %s >/dev/null",
             disk, disk);
    CHECK(sh(cmd) == 0);
    snprintf(cmd, sizeof(cmd), "qemu-nbd -r -t -f qcow2 -k %s -x vda -e 4 --fork --pid-file=%s %s",
             sock, pidfile, disk);
    CHECK(sh(cmd) == 0);
    for (i = 0; i < 100 && access(sock, F_OK) < 0; i++)
        usleep(50000);
}

static void stop_server(void)
{
    FILE *f = fopen(pidfile, "r");
    int pid = 0;

    if (f && fscanf(f, "%d", &pid) == 1 && pid > 0)
        kill(pid, SIGTERM);
    if (f)
        fclose(f);
}

/* ---- one streaming pass ---- */

struct stream {
    struct hs_nbd *n;
    struct hs_qcow2 *q;
    int connected;
    int status;
    uint64_t mapped; /* block status answered up to here */
    int mapping;
    uint64_t cursor, rank, written;
    int fd;
    int reads;
    int done;
};

struct read {
    struct stream *s;
    uint64_t host;
    uint8_t buf[C];
};

static void on_connected(struct hs_nbd *n, int status, void *data)
{
    struct stream *s = data;

    s->connected = 1;
    s->status = status;
}

static void on_extent(void *data, uint64_t off, uint64_t len, uint32_t flags)
{
    struct stream *s = data;

    if (!(flags & LIBNBD_STATE_ZERO))
        hs__qcow2_mark(s->q, off, len);
    if (off + len > s->mapped)
        s->mapped = off + len;
}

static void on_mapped(struct hs_nbd *n, int status, void *data)
{
    struct stream *s = data;

    s->mapping = 0;
    if (status < 0)
        s->status = status;
}

static void read_more(struct stream *s);

static void on_read(struct hs_nbd *n, int status, void *data)
{
    struct read *r = data;
    struct stream *s = r->s;

    CHECK(status == 0);
    CHECK(pwrite(s->fd, r->buf, C, (off_t)r->host) == C);
    s->written += C;
    s->reads--;
    free(r);
    read_more(s);
}

static void read_more(struct stream *s)
{
    uint64_t g;

    while (s->reads < IN_FLIGHT) {
        g = hs__qcow2_next_data(s->q, &s->cursor);
        if (g == UINT64_MAX) {
            s->done = !s->reads;
            return;
        }
        struct read *r = calloc(1, sizeof(*r));
        uint64_t size = hs__nbd_size(s->n), len = size - g < C ? size - g : C;

        r->s = s;
        r->host = hs__qcow2_data_offset(s->q) + s->rank++ * C;
        CHECK(hs__nbd_pread(s->n, r->buf, (size_t)len, g, on_read, r) == 0);
        s->reads++;
    }
}

static void test_stream_an_export_into_qcow2(void)
{
    struct stream s = {0};
    struct hs_err err = {0};
    uint8_t *meta;
    uint64_t size;
    char cmd[1024];

    CHECK(hs__nbd_open(&loop, sock, "vda", on_connected, &s, &s.n, &err) == 0);
    while (!s.connected)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(s.status == 0);
    size = hs__nbd_size(s.n);
    CHECK(size == 300u << 20);
    CHECK(hs__nbd_has_block_status(s.n));
    s.q = hs__qcow2_new(size);
    /* the map: the server may answer for less than asked */
    while (s.mapped < size) {
        s.mapping = 1;
        CHECK(hs__nbd_block_status(s.n, s.mapped, size - s.mapped, on_extent, on_mapped, &s) == 0);
        while (s.mapping)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK(s.status == 0);
    }
    hs__qcow2_plan(s.q);
    /* 1 MiB + 64 KiB + 3 MiB + 1 MiB of data; the zeroed MiB is not data */
    CHECK(hs__qcow2_data_count(s.q) == 16 + 1 + 48 + 16);
    s.fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(s.fd >= 0);
    meta = malloc(hs__qcow2_data_offset(s.q));
    hs__qcow2_meta(s.q, 0, meta, hs__qcow2_data_offset(s.q));
    CHECK(write(s.fd, meta, hs__qcow2_data_offset(s.q)) == (ssize_t)hs__qcow2_data_offset(s.q));
    free(meta);
    read_more(&s);
    while (!s.done)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(s.written == hs__qcow2_data_count(s.q) * C);
    close(s.fd);
    hs__nbd_close(s.n);
    uv_run(&loop, UV_RUN_DEFAULT);
    snprintf(cmd, sizeof(cmd), "qemu-img check -q %s && qemu-img compare -q -f qcow2 -F qcow2 %s %s",
             out, disk, out);
    CHECK(sh(cmd) == 0);
    hs__qcow2_free(s.q);
}

static int canceled;

static void on_canceled(struct hs_nbd *n, int status, void *data)
{
    if (status == -ECANCELED)
        canceled++;
}

static void test_close_with_reads_in_flight(void)
{
    struct stream s = {0};
    struct hs_err err = {0};
    static uint8_t buf[4][C];
    int i;

    CHECK(hs__nbd_open(&loop, sock, "vda", on_connected, &s, &s.n, &err) == 0);
    while (!s.connected)
        uv_run(&loop, UV_RUN_ONCE);
    for (i = 0; i < 4; i++)
        CHECK(hs__nbd_pread(s.n, buf[i], C, (uint64_t)i * C, on_canceled, NULL) == 0);
    CHECK(hs__nbd_in_flight(s.n) == 4);
    hs__nbd_close(s.n);
    CHECK(canceled == 4);
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void test_no_server(void)
{
    struct stream s = {0};
    struct hs_err err = {0};
    char path[300];

    snprintf(path, sizeof(path), "%s/none.sock", dir);
    if (hs__nbd_open(&loop, path, "vda", on_connected, &s, &s.n, &err) == 0) {
        while (!s.connected)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK(s.status < 0);
        hs__nbd_close(s.n);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        CHECK(strstr(err.msg, "none.sock"));
    }
}

/* ---- the whole image as a stream (engine/nbd_source.c) ---- */

struct pull {
    int opened, status, readies;
};

static void src_opened(struct hs_nbd_source *src, int status, const struct hs_err *err,
                       void *data)
{
    struct pull *p = data;

    p->opened = 1;
    p->status = status;
}

static void src_ready(struct hs_stream *st, void *data)
{
    ((struct pull *)data)->readies++;
}

/* Read @max bytes (or all) into @fd in reads of @step; returns the count. */
static uint64_t pull_into(struct hs_nbd_source *src, struct pull *p, int fd, size_t step,
                          uint64_t max)
{
    static uint8_t buf[200000];
    struct hs_err err = {0};
    uint64_t got = 0;
    ssize_t n;

    while (got < max) {
        n = hs__nbd_source_read(src, buf, step, &err);
        if (n == -EAGAIN) {
            int before = p->readies;

            while (p->readies == before)
                uv_run(&loop, UV_RUN_ONCE);
            continue;
        }
        CHECK(n >= 0);
        if (n == 0)
            break;
        if (fd >= 0)
            CHECK(write(fd, buf, (size_t)n) == n);
        got += (uint64_t)n;
    }
    return got;
}

static void file_sha512(const char *path, char *hex)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE], buf[65536];
    unsigned len;
    ssize_t n;
    int fd = open(path, O_RDONLY);

    CHECK(fd >= 0);
    EVP_DigestInit_ex(ctx, EVP_sha512(), NULL);
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    close(fd);
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    hs__hex(md, len, hex);
}

static void stream_format(const struct hs_nbd_export *ex, int qcow2)
{
    struct pull p = {0};
    struct hs_nbd_source *src;
    struct hs_err err = {0};
    char cmd[1024], hex[129];
    uint64_t size, got;
    int fd;

    CHECK(hs__nbd_source_open(&loop, ex, qcow2, HS_DIGEST_SHA512, src_opened, src_ready, &p, &src, &err) == 0);
    while (!p.opened)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(p.status == 0);
    size = hs__nbd_source_size(src);
    CHECK(hs__nbd_source_virtual_size(src) == 300u << 20);
    if (!qcow2)
        CHECK(size == 300u << 20);
    /* a retry: part of it, then from byte 0 again */
    CHECK(pull_into(src, &p, -1, 65536, 3u << 20) >= 3u << 20);
    hs__nbd_source_rewind(src);
    CHECK(hs__nbd_source_digest(src) == NULL);
    fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    got = pull_into(src, &p, fd, 12345, UINT64_MAX);
    CHECK(got == size); /* the Content-Length held */
    close(fd);
    /* every byte hashed in order, off the loop */
    while (!hs__nbd_source_digest(src))
        uv_run(&loop, UV_RUN_ONCE);
    file_sha512(out, hex);
    CHECK(!strcmp(hs__nbd_source_digest(src), hex));
    hs__nbd_source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (qcow2) {
        snprintf(cmd, sizeof(cmd), "qemu-img check -q -f qcow2 %s", out);
        CHECK(sh(cmd) == 0);
    }
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f qcow2 -F %s %s %s", qcow2 ? "qcow2" : "raw",
             disk, out);
    CHECK(sh(cmd) == 0);
}

static void test_stream_as_qcow2(void)
{
    stream_format(&served, 1);
}

static void test_stream_as_raw(void)
{
    stream_format(&served, 0);
}

/* Lent instead of read, as the store writes it: every chunk page-aligned,
 * up to three held at once (the stream waits for one back), the image whole
 * and its hash final at the end. */
static void test_stream_lent(void)
{
    struct pull p = {0};
    struct hs_nbd_source *src;
    struct hs_err err = {0};
    const void *ptr;
    char cmd[1024], hex[129];
    uint64_t got = 0;
    int fd, held = 0, most = 0;
    ssize_t n;

    CHECK(hs__nbd_source_open(&loop, &served, 1, HS_DIGEST_SHA512, src_opened, src_ready, &p,
                              &src, &err) == 0);
    while (!p.opened)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(p.status == 0);
    fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (;;) {
        if (held == 3) { /* as many as the store's worker may hold */
            hs__nbd_source_give_back(src);
            held--;
        }
        n = hs__nbd_source_lend(src, &ptr, &err);
        if (n == -EAGAIN && held > 0 && (got >> 20) % 3 == 0) {
            hs__nbd_source_give_back(src); /* now and then, before waiting */
            held--;
            continue;
        }
        if (n == -EAGAIN) {
            int before = p.readies;

            while (p.readies == before)
                uv_run(&loop, UV_RUN_ONCE);
            continue;
        }
        CHECK(n >= 0);
        if (n == 0)
            break;
        CHECK(((uintptr_t)ptr & 4095) == 0);
        CHECK(write(fd, ptr, (size_t)n) == n);
        got += (uint64_t)n;
        CHECK(got == hs__nbd_source_size(src) || n % 4096 == 0);
        if (++held > most)
            most = held;
    }
    while (held-- > 0)
        hs__nbd_source_give_back(src);
    close(fd);
    CHECK(got == hs__nbd_source_size(src));
    CHECK(most >= 2);
    file_sha512(out, hex);
    CHECK(hs__nbd_source_digest(src) && !strcmp(hs__nbd_source_digest(src), hex));
    hs__nbd_source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    snprintf(cmd, sizeof(cmd), "qemu-img compare -q -f qcow2 -F qcow2 %s %s", disk, out);
    CHECK(sh(cmd) == 0);
}

/* A server of the stream's own (offline): qemu-nbd started by libnbd with
 * socket activation, gone once the stream is closed. */
static void test_stream_from_own_server(void)
{
    char *argv[] = {"qemu-nbd", "-r", "-f", "qcow2", "-x", "vda", disk, NULL};
    struct hs_nbd_export own = {.argv = argv, .name = "vda"};
    int status;

    stream_format(&own, 1);
    /* libnbd reaped its child on close: no child of ours is left */
    CHECK(waitpid(-1, &status, WNOHANG) < 0 && errno == ECHILD);
}

/* An incremental image from a real dirty bitmap: qemu-nbd exports one (as
 * QEMU's backup exports "backup-<disk>"); the overlay holds only the
 * dirty clusters, and with its backing file reads as the disk does now. */
static void test_stream_an_overlay_from_a_dirty_bitmap(void)
{
    char disk2[300], base[300], top[300], cmd[2048];
    char *argv[] = {"qemu-nbd", "-r", "-f", "qcow2", "-B", "b0", "-x", "vda", disk2, NULL};
    struct hs_nbd_export own = {.argv = argv,
                                .name = "vda",
                                .dirty_context = "qemu:dirty-bitmap:b0",
                                .backing = "base.qcow2"};
    struct pull p = {0};
    struct hs_nbd_source *src;
    struct hs_err err = {0};
    char hex[129];
    uint64_t got;
    int fd;

    snprintf(disk2, sizeof(disk2), "%s/disk2.qcow2", dir);
    snprintf(base, sizeof(base), "%s/base.qcow2", dir);
    snprintf(top, sizeof(top), "%s/top.qcow2", dir);
    /* the chain's last image; then the guest writes, the bitmap marks */
    snprintf(cmd, sizeof(cmd),
             "qemu-img convert -f qcow2 -O qcow2 %s %s && cp %s %s && "
             "qemu-img bitmap --add -f qcow2 %s b0 && qemu-io -f qcow2 "
             "-c 'write -P 0x55 1M 64k' -c 'write -z 0 64k' -c 'write -P 0x66 150M 128k' "
             "-c 'write -P 0x77 299M 4k' %s >/dev/null",
             disk, base, disk, disk2, disk2, disk2);
    CHECK(sh(cmd) == 0);
    CHECK(hs__nbd_source_open(&loop, &own, 1, HS_DIGEST_SHA512, src_opened, src_ready, &p, &src,
                              &err) == 0);
    while (!p.opened)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(p.status == 0);
    /* read: the dirty clusters with data, 64k + 128k + 64k; the zeroed one is not read */
    CHECK(hs__nbd_source_guest_bytes(src) == (64u + 128u + 64u) << 10);
    fd = open(top, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    got = pull_into(src, &p, fd, 65536, UINT64_MAX);
    close(fd);
    CHECK(got == hs__nbd_source_size(src));
    CHECK(got < (1u << 20)); /* metadata and 4 clusters, not the disk */
    while (!hs__nbd_source_digest(src))
        uv_run(&loop, UV_RUN_ONCE);
    file_sha512(top, hex);
    CHECK(!strcmp(hs__nbd_source_digest(src), hex));
    hs__nbd_source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    snprintf(cmd, sizeof(cmd),
             "qemu-img check -q -f qcow2 %s && qemu-img compare -q -f qcow2 -F qcow2 %s %s", top,
             disk2, top);
    CHECK(sh(cmd) == 0);
    /* a bitmap the export does not have: refused, nothing streamed */
    memset(&p, 0, sizeof(p));
    own.dirty_context = "qemu:dirty-bitmap:none";
    CHECK(hs__nbd_source_open(&loop, &own, 1, HS_DIGEST_SHA512, src_opened, src_ready, &p, &src,
                              &err) == 0);
    while (!p.opened)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(p.status < 0);
    hs__nbd_source_close(src);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* an overlay is qcow2 */
    CHECK(hs__nbd_source_open(&loop, &own, 0, HS_DIGEST_SHA512, src_opened, src_ready, &p, &src,
                              &err) == -EINVAL);
    unlink(disk2);
    unlink(base);
    unlink(top);
}

static void test_close_mid_stream(void)
{
    struct pull p = {0};
    struct hs_nbd_source *src;
    struct hs_err err = {0};

    CHECK(hs__nbd_source_open(&loop, &served, 1, HS_DIGEST_SHA512, src_opened, src_ready, &p, &src, &err) == 0);
    while (!p.opened)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(pull_into(src, &p, -1, 65536, 2u << 20) >= 2u << 20);
    hs__nbd_source_close(src); /* reads and a hash in flight: freed when they end (ASan) */
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* ---- a dead connection's socket number, taken by another socket ---- */

static int dead_failed;
static int other_fired;

static void on_dead_read(struct hs_nbd *n, int status, void *data)
{
    dead_failed = status < 0;
}

static void on_other(uv_poll_t *p, int status, int events)
{
    other_fired = 1;
    uv_poll_stop(p);
}

static void on_timeout(uv_timer_t *t)
{
}

/* libnbd closes a dead connection's socket itself: the fd number may go to
 * the next socket made (curl's, another export's) before the adapter lets
 * go of the dead one. Closing the dead one must not stop the other's
 * events (seen: a concurrent upload stalled when a guest's export died). */
static void test_dead_connection_leaves_a_reused_fd_alone(void)
{
    char cmd[1024], sock2[300], pid2[300];
    struct stream s = {0};
    struct hs_err err = {0};
    static char buf[C];
    uv_poll_t other;
    uv_timer_t t;
    int sp[2], i;

    snprintf(sock2, sizeof(sock2), "%s/dying.sock", dir);
    snprintf(pid2, sizeof(pid2), "%s/dying.pid", dir);
    snprintf(cmd, sizeof(cmd), "qemu-nbd -r -f qcow2 -k %s -x vda --fork --pid-file=%s %s", sock2,
             pid2, disk);
    CHECK(sh(cmd) == 0);
    for (i = 0; i < 100 && access(sock2, F_OK) < 0; i++)
        usleep(50000);
    CHECK(hs__nbd_open(&loop, sock2, "vda", on_connected, &s, &s.n, &err) == 0);
    while (!s.connected)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(s.status == 0);
    snprintf(cmd, sizeof(cmd), "kill -9 $(cat %s)", pid2);
    CHECK(sh(cmd) == 0);
    CHECK(hs__nbd_pread(s.n, buf, C, 0, on_dead_read, NULL) == 0);
    while (!dead_failed)
        uv_run(&loop, UV_RUN_ONCE);
    /* the lowest free numbers: the dead socket's, if libnbd closed it */
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    CHECK(uv_poll_init(&loop, &other, sp[0]) == 0);
    CHECK(uv_poll_start(&other, UV_READABLE, on_other) == 0);
    uv_run(&loop, UV_RUN_NOWAIT); /* registered with the kernel now */
    hs__nbd_close(s.n);
    CHECK(write(sp[1], "x", 1) == 1);
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_timeout, 5000, 0);
    while (!other_fired && uv_is_active((uv_handle_t *)&t))
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(other_fired);
    uv_close((uv_handle_t *)&t, NULL);
    uv_close((uv_handle_t *)&other, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    close(sp[0]);
    close(sp[1]);
}

/* ---- a connect that fails after it began ---- */

/* A listener that never accepts: libnbd's connect is made and waits to be
 * writable; the listener goes first, the pending connection is reset, and
 * the wait ends with an error event (libuv stops the poll and says so).
 * The connect must end failed, not wait for ever (seen: a guest destroyed
 * as its export was opened held its job in extract until hotsnap was
 * killed). */
static void test_connect_that_fails_after_it_began(void)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct stream s = {0};
    struct hs_err err = {0};
    uv_timer_t t;
    int lfd;

    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/gone.sock", dir);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(lfd >= 0);
    CHECK(bind(lfd, (struct sockaddr *)&sun, sizeof(sun)) == 0);
    CHECK(listen(lfd, 8) == 0);
    CHECK(hs__nbd_open(&loop, sun.sun_path, "vda", on_connected, &s, &s.n, &err) == 0);
    close(lfd); /* the server goes before it ever answered: the connection is reset */
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, on_timeout, 5000, 0);
    while (!s.connected && uv_is_active((uv_handle_t *)&t))
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(s.connected);
    CHECK(s.status < 0);
    uv_close((uv_handle_t *)&t, NULL);
    hs__nbd_close(s.n);
    uv_run(&loop, UV_RUN_DEFAULT);
}

int main(void)
{
    char cmd[300];

    CHECK(mkdtemp(dir));
    uv_loop_init(&loop);
    start_server();
    RUN(test_stream_an_export_into_qcow2);
    RUN(test_close_with_reads_in_flight);
    RUN(test_no_server);
    RUN(test_stream_as_qcow2);
    RUN(test_stream_as_raw);
    RUN(test_stream_lent);
    RUN(test_close_mid_stream);
    RUN(test_stream_from_own_server);
    RUN(test_stream_an_overlay_from_a_dirty_bitmap);
    RUN(test_dead_connection_leaves_a_reused_fd_alone);
    RUN(test_connect_that_fails_after_it_began);
    stop_server();
    CHECK(uv_loop_close(&loop) == 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    sh(cmd);
    return 0;
}
