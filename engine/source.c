#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "source.h"
#include "util.h"

/* 4 x 256 KiB per upload: curl's 64 KiB reads never wait on a healthy
 * disk, a store writes up to 768 KiB at once while the next is read, and
 * four uploads hold 4 MiB */
#define SRC_CHUNK (256 * 1024)
#define SRC_NBUF 4
#define SRC_ALIGN 4096u /* a store may write a buffer with O_DIRECT */

struct src_buf {
    unsigned char *data;
    size_t len;
    size_t off;
    int full; /* read, and not done with: handed out, or lent and not back */
};

struct hs_source {
    struct hs_stream st; /* first: the stream is the source */
    uv_work_t work;
    uv_loop_t *loop;
    char *path;
    int fd;
    uint64_t size;
    struct src_buf buf[SRC_NBUF];
    int head;          /* the buffer the loop reads from */
    int lent;          /* the oldest buffer lent */
    int nlent;
    int fill;          /* the buffer a worker fills next */
    uint64_t fill_off; /* where in the file the next fill starts */
    uint64_t gen;      /* bumped by rewind */
    uint64_t work_gen; /* gen of the read in flight */
    int busy;          /* a read is on the worker pool */
    int waiting;       /* the loop asked and got -EAGAIN */
    int closing;
    int rc;         /* a read failed: negative errno */
    size_t w_len;   /* worker: bytes read */
    int w_rc;       /* worker: 0 or negative errno */
    struct hs_digest digest;
    char w_hex[HS_DIGEST_HEX]; /* worker: the digest, once the last chunk is in */
    char hex[HS_DIGEST_HEX];
    int hashed;
};

static void src_free(struct hs_source *s)
{
    int i;

    for (i = 0; i < SRC_NBUF; i++)
        free(s->buf[i].data);
    if (s->fd >= 0)
        close(s->fd);
    hs__digest_free(&s->digest);
    free(s->path);
    free(s);
}

static void src_hash_final(struct hs_source *s, char *hex)
{
    hs__digest_final(&s->digest, hex);
}

/* Hashing is background work: a pool thread that hashes yields to the loop
 * thread (and to the guests) on a busy host. Linux takes a thread id here. */
static void src_yield_to_loop(void)
{
    static __thread int done;

    if (!done) {
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
        done = 1;
    }
}

/* Worker: the next chunk, hashed. */
static void src_work(uv_work_t *w)
{
    struct hs_source *s = hs_container_of(w, struct hs_source, work);
    struct src_buf *b = &s->buf[s->fill];
    uint64_t left = s->size - s->fill_off;
    size_t want = left < SRC_CHUNK ? (size_t)left : SRC_CHUNK, got = 0;
    ssize_t n;

    src_yield_to_loop();
    s->w_rc = 0;
    while (got < want) {
        n = pread(s->fd, b->data + got, want - got, (off_t)(s->fill_off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            s->w_rc = n < 0 ? -errno : -EIO; /* shorter than it was: changed under us */
            return;
        }
        got += (size_t)n;
    }
    hs__digest_update(&s->digest, b->data, got);
    s->w_len = got;
    if (s->fill_off + got == s->size)
        src_hash_final(s, s->w_hex);
}

static void src_after_work(uv_work_t *w, int status);

static void src_kick(struct hs_source *s)
{
    if (s->busy || s->rc || s->fill_off >= s->size || s->buf[s->fill].full)
        return;
    s->work_gen = s->gen;
    if (uv_queue_work(s->loop, &s->work, src_work, src_after_work) < 0) {
        s->rc = -ENOMEM;
        return;
    }
    s->busy = 1;
}

static void src_reset(struct hs_source *s)
{
    int i;

    for (i = 0; i < SRC_NBUF; i++)
        s->buf[i].full = 0;
    s->head = s->fill = 0;
    s->fill_off = 0;
    s->rc = 0;
    s->hashed = 0;
    hs__digest_reset(&s->digest);
    if (s->size == 0) {
        src_hash_final(s, s->hex);
        s->hashed = 1;
    }
}

static void src_after_work(uv_work_t *w, int status)
{
    struct hs_source *s = hs_container_of(w, struct hs_source, work);
    struct src_buf *b = &s->buf[s->fill];

    s->busy = 0;
    if (s->closing) {
        src_free(s);
        return;
    }
    if (s->work_gen != s->gen) {
        src_reset(s); /* rewound while the read ran */
    } else if (status < 0 || s->w_rc < 0) {
        s->rc = status < 0 ? status : s->w_rc;
    } else {
        b->len = s->w_len;
        b->off = 0;
        b->full = 1;
        s->fill_off += s->w_len;
        s->fill = (s->fill + 1) % SRC_NBUF;
        if (s->fill_off == s->size) {
            memcpy(s->hex, s->w_hex, sizeof(s->hex));
            s->hashed = 1;
        }
    }
    src_kick(s);
    if (s->waiting && (s->rc || s->buf[s->head].full)) {
        s->waiting = 0;
        hs__stream_wake(&s->st);
    }
}

static const struct hs_stream_ops src_ops;

int hs__source_open(uv_loop_t *loop, const char *path, uint64_t size, enum hs_digest_algo algo,
                    hs_stream_ready_cb ready, void *data, struct hs_source **out,
                    struct hs_err *err)
{
    struct hs_source *s = hs__calloc(1, sizeof(*s));
    int i;

    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) {
        int e = errno;

        free(s);
        return hs_err_set(err, -e, HS_ERR_SYS, e, "cannot open '%s': %s", path, strerror(e));
    }
    posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    s->loop = loop;
    s->path = hs__strdup(path);
    s->size = size;
    s->st.ops = &src_ops;
    s->st.size = size;
    hs__stream_reader(&s->st, ready, data);
    s->st.algo = algo;
    hs__digest_init(&s->digest, algo);
    for (i = 0; i < SRC_NBUF; i++) {
        if (posix_memalign((void **)&s->buf[i].data, SRC_ALIGN, SRC_CHUNK))
            abort();
    }
    src_reset(s);
    src_kick(s);
    *out = s;
    return 0;
}

/* The head buffer if it has bytes to hand out, else NULL with what to
 * return in *@rc. */
static struct src_buf *src_ready(struct hs_source *s, ssize_t *rc, struct hs_err *err)
{
    struct src_buf *b = &s->buf[s->head];

    if (s->busy && s->work_gen != s->gen) {
        s->waiting = 1; /* rewound: nothing before the read in flight ends */
        *rc = -EAGAIN;
        return NULL;
    }
    if (s->rc) {
        *rc = hs_err_set(err, s->rc, HS_ERR_SYS, -s->rc, "cannot read '%s': %s", s->path,
                         s->rc == -EIO ? "it changed while it was read" : strerror(-s->rc));
        return NULL;
    }
    if (!b->full || b->off == b->len) { /* not read, or lent and not back */
        *rc = 0; /* every byte was handed out */
        if (s->fill_off < s->size || s->busy) {
            s->waiting = 1;
            src_kick(s);
            *rc = -EAGAIN;
        }
        return NULL;
    }
    return b;
}

ssize_t hs__source_read(struct hs_source *s, void *buf, size_t len, struct hs_err *err)
{
    ssize_t rc;
    struct src_buf *b = src_ready(s, &rc, err);
    size_t n;

    if (!b)
        return rc;
    n = b->len - b->off < len ? b->len - b->off : len;
    memcpy(buf, b->data + b->off, n);
    b->off += n;
    if (b->off == b->len) {
        b->full = 0;
        s->head = (s->head + 1) % SRC_NBUF;
        src_kick(s);
    }
    return (ssize_t)n;
}

ssize_t hs__source_lend(struct hs_source *s, const void **p, struct hs_err *err)
{
    ssize_t rc;
    struct src_buf *b = src_ready(s, &rc, err);
    size_t n;

    if (!b)
        return rc;
    n = b->len - b->off;
    *p = b->data + b->off;
    b->off = b->len; /* stays full (not refilled) until given back */
    if (s->nlent++ == 0)
        s->lent = s->head;
    s->head = (s->head + 1) % SRC_NBUF;
    return (ssize_t)n;
}

void hs__source_give_back(struct hs_source *s)
{
    if (!s->nlent)
        abort(); /* nothing lent */
    s->buf[s->lent].full = 0;
    s->lent = (s->lent + 1) % SRC_NBUF;
    s->nlent--;
    src_kick(s);
}

void hs__source_rewind(struct hs_source *s)
{
    if (s->nlent)
        abort(); /* a reader gives back what it borrowed first */
    s->gen++;
    s->waiting = 0;
    s->hashed = 0;
    if (s->busy)
        return; /* the read in flight is thrown away when it ends */
    src_reset(s);
    src_kick(s);
}

const char *hs__source_digest(const struct hs_source *s)
{
    return s->hashed ? s->hex : NULL;
}

void hs__source_close(struct hs_source *s)
{
    if (!s)
        return;
    if (s->busy) {
        s->closing = 1;
        return;
    }
    src_free(s);
}

/* ---- as a stream ---- */

static ssize_t src_st_read(struct hs_stream *st, void *buf, size_t len, struct hs_err *err)
{
    return hs__source_read((struct hs_source *)st, buf, len, err);
}

static ssize_t src_st_lend(struct hs_stream *st, const void **p, struct hs_err *err)
{
    return hs__source_lend((struct hs_source *)st, p, err);
}

static void src_st_give_back(struct hs_stream *st)
{
    hs__source_give_back((struct hs_source *)st);
}

static void src_st_rewind(struct hs_stream *st)
{
    hs__source_rewind((struct hs_source *)st);
}

static const char *src_st_digest(const struct hs_stream *st)
{
    return hs__source_digest((const struct hs_source *)st);
}

static void src_st_close(struct hs_stream *st)
{
    hs__source_close((struct hs_source *)st);
}

static const struct hs_stream_ops src_ops = {
    .read = src_st_read,
    .lend = src_st_lend,
    .give_back = src_st_give_back,
    .rewind = src_st_rewind,
    .digest = src_st_digest,
    .close = src_st_close,
};

struct hs_stream *hs__source_stream(struct hs_source *src)
{
    return &src->st;
}
