#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <libnbd.h>

#include "nbd.h"
#include "nbd_source.h"
#include "qcow2.h"
#include "util.h"

#define C ((uint64_t)HS_QCOW2_CLUSTER)
#define NS_CHUNK (1u << 20) /* bytes of the image per chunk, a multiple of C */
#define NS_NBUF 4           /* chunks: 4 MiB of reads in flight per stream */
#define NS_NBUF_MAX 16
#define NS_ALIGN 4096u /* a store may write a chunk with O_DIRECT */
#define NS_MAP_STEP (1ull << 30)

struct ns_chunk {
    struct hs_nbd_source *s;
    uint8_t *buf;
    uint64_t off; /* where in the image */
    size_t len;
    size_t taken; /* handed to the reader */
    int reads;    /* NBD reads in flight into it */
    int used;     /* being filled, or full and not yet done with */
    int filled;
    int hashed;
    int lent; /* handed out whole, and not given back yet */
};

struct hs_nbd_source {
    struct hs_stream st; /* first: the source is a stream */
    uv_loop_t *loop;
    struct hs_nbd *n;
    struct hs_qcow2 *q; /* the map (both formats), the layout (qcow2) */
    int qcow2;
    uint64_t vsize, size;
    uint64_t mapped;       /* the map is known up to here: the lesser of the two below */
    uint64_t mapped_alloc; /* base:allocation's extents reach here */
    uint64_t mapped_dirty; /* the dirty bitmap's (an overlay), else UINT64_MAX */
    uint64_t map_asked;    /* where the block status in flight began */
    char *backing;         /* an overlay's backing file, or NULL */
    hs_nbd_source_open_cb opened;
    void *data;
    struct ns_chunk ch[NS_NBUF_MAX];
    size_t chunk; /* bytes per chunk: NS_CHUNK, or the bench's HOTSNAP_NBD_CHUNK */
    int nbuf;     /* chunks: NS_NBUF, or HOTSNAP_NBD_DEPTH */
    int head;          /* the chunk the reader reads */
    int lent;          /* the oldest chunk lent and not given back */
    int nlent;
    int fill;          /* the chunk filled next */
    uint64_t fill_off; /* where the next chunk starts */
    uint64_t cursor;   /* qcow2: the data cluster iterator, in step with fill_off */
    int reads;         /* in flight, all chunks */
    /* hashing, on the worker pool, chunk after chunk in order */
    uv_work_t work;
    struct hs_digest digest;
    int hashing;
    int hash_i; /* the chunk hashed next */
    char w_hex[HS_DIGEST_HEX];
    char hex[HS_DIGEST_HEX];
    int hashed_all;
    int waiting;
    int rewinding;
    int closing;
    int rc;
    struct hs_err err;
};

static void ns_kick(struct hs_nbd_source *s);

static void ns_free(struct hs_nbd_source *s)
{
    int i;

    for (i = 0; i < s->nbuf; i++)
        free(s->ch[i].buf);
    hs__qcow2_free(s->q);
    hs__digest_free(&s->digest);
    free(s->backing);
    free(s);
}

static void ns_fail(struct hs_nbd_source *s, int rc, const char *what)
{
    if (!s->rc) {
        s->rc = rc;
        hs_err_set(&s->err, rc, HS_ERR_SYS, -rc, "%s: %s", what, hs__nbd_error(s->n));
    }
}

static void ns_wake(struct hs_nbd_source *s)
{
    struct ns_chunk *c = &s->ch[s->head];

    if (s->waiting && (s->rc || !c->used || (c->hashed && c->taken < c->len))) {
        s->waiting = 0;
        hs__stream_wake(&s->st);
    }
}

/* ---- rewind: once nothing is in flight, from byte 0 ---- */

static void ns_reset(struct hs_nbd_source *s)
{
    int i;

    for (i = 0; i < s->nbuf; i++) {
        s->ch[i].used = s->ch[i].filled = s->ch[i].hashed = 0;
        s->ch[i].taken = 0;
    }
    s->head = s->fill = s->hash_i = 0;
    s->fill_off = s->cursor = 0;
    s->hashed_all = 0;
    s->rc = 0;
    hs_err_clear(&s->err);
    hs__digest_reset(&s->digest);
}

static int ns_settle_rewind(struct hs_nbd_source *s)
{
    if (!s->rewinding || s->reads || s->hashing)
        return 0;
    s->rewinding = 0;
    ns_reset(s);
    ns_kick(s);
    ns_wake(s);
    return 1;
}

/* ---- hashing ---- */

static void ns_hash_work(uv_work_t *w)
{
    struct hs_nbd_source *s = hs_container_of(w, struct hs_nbd_source, work);
    struct ns_chunk *c = &s->ch[s->hash_i];

    hs__digest_update(&s->digest, c->buf, c->len);
    if (c->off + c->len == s->size)
        hs__digest_final(&s->digest, s->w_hex);
}

static void ns_hash_done(uv_work_t *w, int status);

static void ns_hash_next(struct hs_nbd_source *s)
{
    struct ns_chunk *c = &s->ch[s->hash_i];

    if (s->hashing || s->rewinding || s->closing || !c->used || !c->filled || c->hashed)
        return;
    if (uv_queue_work(s->loop, &s->work, ns_hash_work, ns_hash_done) == 0)
        s->hashing = 1;
}

/* A chunk read and hashed is free again. */
static void ns_recycle(struct hs_nbd_source *s, struct ns_chunk *c)
{
    if (c->used && c->filled && c->hashed && c->taken == c->len && !c->lent) {
        c->used = c->filled = c->hashed = 0;
        c->taken = 0;
    }
}

static void ns_hash_done(uv_work_t *w, int status)
{
    struct hs_nbd_source *s = hs_container_of(w, struct hs_nbd_source, work);
    struct ns_chunk *c = &s->ch[s->hash_i];

    s->hashing = 0;
    if (s->closing) {
        ns_free(s); /* close canceled every read already */
        return;
    }
    if (ns_settle_rewind(s))
        return;
    c->hashed = 1;
    if (c->off + c->len == s->size) {
        memcpy(s->hex, s->w_hex, sizeof(s->hex));
        s->hashed_all = 1;
    }
    s->hash_i = (s->hash_i + 1) % s->nbuf;
    ns_recycle(s, c);
    ns_hash_next(s);
    ns_kick(s);
    ns_wake(s);
}

/* ---- filling ---- */

static void ns_read_done(struct hs_nbd *n, int status, void *data)
{
    struct ns_chunk *c = data;
    struct hs_nbd_source *s = c->s;

    c->reads--;
    s->reads--;
    if (s->closing)
        return; /* canceled by close, which frees */
    if (ns_settle_rewind(s))
        return;
    if (s->rewinding)
        return;
    if (status < 0)
        ns_fail(s, status, "reading the NBD export failed");
    if (!c->reads && !s->rc) {
        c->filled = 1;
        ns_hash_next(s);
    }
    ns_wake(s);
}

static int ns_read(struct hs_nbd_source *s, struct ns_chunk *c, size_t pos, uint64_t guest,
                   size_t len)
{
    uint64_t left = s->vsize - guest;
    size_t n = left < len ? (size_t)left : len;

    if (n < len)
        memset(c->buf + pos + n, 0, len - n); /* past the end of the disk */
    if (hs__nbd_pread(s->n, c->buf + pos, n, guest, ns_read_done, c) < 0)
        return -EIO;
    c->reads++;
    s->reads++;
    return 0;
}

/* Reads in the making: bytes contiguous both in the chunk and on the disk
 * go in one read. */
struct ns_run {
    size_t pos;
    uint64_t guest;
    size_t len;
};

/* Add [@pos, +@len) of the chunk, from @guest on the disk, to @r: it
 * extends the run, or the run so far is read and this one starts. */
static int ns_run_add(struct hs_nbd_source *s, struct ns_chunk *c, struct ns_run *r, size_t pos,
                      uint64_t guest, size_t len)
{
    int rc = 0;

    if (r->len && pos == r->pos + r->len && guest == r->guest + r->len) {
        r->len += len;
        return 0;
    }
    if (r->len)
        rc = ns_read(s, c, r->pos, r->guest, r->len);
    r->pos = pos;
    r->guest = guest;
    r->len = len;
    return rc;
}

/* Lay out chunk @c's bytes: metadata made here, data read from the export. */
static int ns_fill(struct hs_nbd_source *s, struct ns_chunk *c)
{
    uint64_t o = c->off, end = c->off + c->len, meta;
    struct ns_run run = {0};
    size_t pos;
    int rc = 0;

    c->reads = 1; /* held while the reads go out */
    if (s->qcow2) {
        meta = hs__qcow2_data_offset(s->q);
        if (o < meta) {
            size_t k = (size_t)((meta < end ? meta : end) - o);

            hs__qcow2_meta(s->q, o, c->buf, k);
            o += k;
        }
        for (; o < end && rc == 0; o += C)
            rc = ns_run_add(s, c, &run, (size_t)(o - c->off),
                            hs__qcow2_next_data(s->q, &s->cursor), C);
    } else {
        for (; o < end && rc == 0; o += C) {
            size_t k = end - o < C ? (size_t)(end - o) : C;

            pos = (size_t)(o - c->off);
            if (hs__qcow2_has_data(s->q, o))
                rc = ns_run_add(s, c, &run, pos, o, k);
            else
                memset(c->buf + pos, 0, k); /* a hole: zeros, not read */
        }
    }
    if (run.len && rc == 0)
        rc = ns_read(s, c, run.pos, run.guest, run.len);
    if (--c->reads == 0 && rc == 0) {
        c->filled = 1; /* metadata or holes only */
        ns_hash_next(s);
    }
    return rc;
}

static void ns_kick(struct hs_nbd_source *s)
{
    struct ns_chunk *c;

    while (!s->rc && !s->rewinding && !s->closing && s->fill_off < s->size &&
           !s->ch[s->fill].used) {
        c = &s->ch[s->fill];
        c->used = 1;
        c->filled = c->hashed = 0;
        c->taken = 0;
        c->off = s->fill_off;
        c->len = s->size - s->fill_off < s->chunk ? (size_t)(s->size - s->fill_off) : s->chunk;
        s->fill_off += c->len;
        s->fill = (s->fill + 1) % s->nbuf;
        if (ns_fill(s, c) < 0)
            ns_fail(s, -EIO, "cannot queue an NBD read");
    }
}

/* ---- opening: the map ---- */

static void ns_opened(struct hs_nbd_source *s, int status)
{
    if (status == 0) {
        hs__qcow2_plan(s->q);
        s->size = s->qcow2 ? hs__qcow2_size(s->q) : s->vsize;
        s->st.size = s->size;
        ns_kick(s);
    }
    s->opened(s, status, &s->err, s->data);
}

static void ns_extent(void *data, uint64_t off, uint64_t len, uint32_t flags)
{
    struct hs_nbd_source *s = data;

    if (flags & HS_NBD_DIRTY_EXTENT) {
        if (flags & 1)
            hs__qcow2_mark_dirty(s->q, off, len);
        if (off + len > s->mapped_dirty)
            s->mapped_dirty = off + len;
    } else {
        if (!(flags & LIBNBD_STATE_ZERO))
            hs__qcow2_mark(s->q, off, len);
        if (off + len > s->mapped_alloc)
            s->mapped_alloc = off + len;
    }
    s->mapped = s->mapped_alloc < s->mapped_dirty ? s->mapped_alloc : s->mapped_dirty;
}

static void ns_map_next(struct hs_nbd_source *s);

static void ns_mapped(struct hs_nbd *n, int status, void *data)
{
    struct hs_nbd_source *s = data;

    if (s->closing)
        return;
    if (status < 0) {
        ns_fail(s, status, "reading the NBD export's map failed");
        ns_opened(s, s->rc);
        return;
    }
    if (s->mapped == s->map_asked && s->mapped < s->vsize) {
        /* a reply without an extent of one of the contexts: asking again
         * from the same place would never end */
        s->rc = hs_err_set(&s->err, -EPROTO, HS_ERR_SYS, EPROTO,
                           "the NBD export's map made no progress at byte %llu",
                           (unsigned long long)s->mapped);
        ns_opened(s, s->rc);
        return;
    }
    ns_map_next(s);
}

static void ns_map_next(struct hs_nbd_source *s)
{
    uint64_t left = s->vsize - s->mapped;

    if (s->mapped >= s->vsize) {
        ns_opened(s, 0);
        return;
    }
    s->map_asked = s->mapped;
    if (hs__nbd_block_status(s->n, s->mapped, left < NS_MAP_STEP ? left : NS_MAP_STEP, ns_extent,
                             ns_mapped, s) < 0) {
        ns_fail(s, -EIO, "cannot ask for the NBD export's map");
        ns_opened(s, s->rc);
    }
}

static void ns_connected(struct hs_nbd *n, int status, void *data)
{
    struct hs_nbd_source *s = data;

    if (status < 0) {
        ns_fail(s, status, "connecting to the NBD export failed");
        ns_opened(s, s->rc);
        return;
    }
    s->vsize = hs__nbd_size(n);
    s->q = s->vsize ? hs__qcow2_new(s->vsize) : NULL;
    if (!s->q) {
        s->rc = hs_err_set(&s->err, -EINVAL, HS_ERR_INPUT, 0,
                           "an NBD export of %llu bytes cannot be a qcow2 image",
                           (unsigned long long)s->vsize);
        ns_opened(s, s->rc);
        return;
    }
    s->mapped_dirty = UINT64_MAX;
    if (s->backing) {
        /* an overlay: only what the export's dirty bitmap marks */
        if (hs__qcow2_set_backing(s->q, s->backing, "qcow2") < 0 ||
            !hs__nbd_has_dirty_context(n)) {
            s->rc = hs_err_set(&s->err, -EPROTO, HS_ERR_SYS, EPROTO,
                               "the NBD export offers no dirty bitmap to read an incremental "
                               "image from");
            ns_opened(s, s->rc);
            return;
        }
        s->mapped_dirty = 0;
    }
    if (!hs__nbd_has_block_status(n)) {
        hs__qcow2_mark(s->q, 0, s->vsize); /* no map: everything is data */
        s->mapped_alloc = s->vsize;
    }
    s->mapped = s->mapped_alloc < s->mapped_dirty ? s->mapped_alloc : s->mapped_dirty;
    ns_map_next(s);
}

static const struct hs_stream_ops ns_ops;

/* The benchmarks' hooks (bench/peer --tools hotsnap@SIZE[xDEPTH]): a chunk's size (a multiple of
 * a cluster, 64 KiB to 16 MiB) and how many are in flight (1 to 16). */
static uint64_t ns_tunable(const char *name, uint64_t def, uint64_t min, uint64_t max)
{
    const char *v = secure_getenv(name);
    char *end;
    unsigned long long x;

    if (!v || !*v)
        return def;
    x = strtoull(v, &end, 0);
    if (*end == 'K' || *end == 'k')
        x <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        x <<= 20, end++;
    return *end || x < min || x > max ? def : x;
}

int hs__nbd_source_open(uv_loop_t *loop, const struct hs_nbd_export *ex, int qcow2,
                        enum hs_digest_algo algo, hs_nbd_source_open_cb opened, hs_stream_ready_cb ready, void *data,
                        struct hs_nbd_source **out, struct hs_err *err)
{
    struct hs_nbd_source *s = hs__calloc(1, sizeof(*s));
    int i, rc;

    s->st.ops = &ns_ops;
    hs__stream_reader(&s->st, ready, data);
    s->loop = loop;
    s->qcow2 = qcow2;
    s->opened = opened;
    s->data = data;
    s->st.algo = algo;
    hs__digest_init(&s->digest, algo);
    s->chunk = ns_tunable("HOTSNAP_NBD_CHUNK", NS_CHUNK, C, 16u << 20) & ~(C - 1);
    s->nbuf = (int)ns_tunable("HOTSNAP_NBD_DEPTH", NS_NBUF, 1, NS_NBUF_MAX);
    if (ex->dirty_context && (!qcow2 || !ex->backing)) {
        ns_free(s);
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "an incremental image is a qcow2 overlay with a backing file");
    }
    s->backing = ex->backing ? hs__strdup(ex->backing) : NULL;
    for (i = 0; i < s->nbuf; i++) {
        s->ch[i].s = s;
        if (posix_memalign((void **)&s->ch[i].buf, NS_ALIGN, s->chunk))
            abort();
    }
    if (ex->dirty_context)
        rc = hs__nbd_open_dirty(loop, ex->socket, ex->argv, ex->name, ex->dirty_context,
                                ns_connected, s, &s->n, err);
    else if (ex->socket)
        rc = hs__nbd_open(loop, ex->socket, ex->name, ns_connected, s, &s->n, err);
    else
        rc = hs__nbd_open_command(loop, ex->argv, ex->name, ns_connected, s, &s->n, err);
    if (rc < 0) {
        ns_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

uint64_t hs__nbd_source_size(const struct hs_nbd_source *s)
{
    return s->size;
}

uint64_t hs__nbd_source_virtual_size(const struct hs_nbd_source *s)
{
    return s->vsize;
}

uint64_t hs__nbd_source_guest_bytes(const struct hs_nbd_source *s)
{
    uint64_t n = hs__qcow2_data_count(s->q) * C;

    return n > s->vsize ? s->vsize : n;
}

/* The head chunk if it has bytes to hand out, else NULL with what to
 * return in *@rc. */
static struct ns_chunk *ns_ready(struct hs_nbd_source *s, ssize_t *rc, struct hs_err *err)
{
    struct ns_chunk *c = &s->ch[s->head];

    if (s->rc) {
        *rc = hs_err_set(err, s->rc, s->err.kind, s->err.detail, "%s", s->err.msg);
        return NULL;
    }
    if (s->rewinding || (c->used && (!c->hashed || c->taken == c->len))) {
        /* not read and hashed yet: a chunk is handed out once hashed, so
         * the hash is final when the last byte has been handed out */
        s->waiting = 1;
        *rc = -EAGAIN;
        return NULL;
    }
    if (!c->used) {
        *rc = 0; /* every byte was handed out */
        if (s->fill_off < s->size) {
            s->waiting = 1;
            ns_kick(s);
            *rc = -EAGAIN;
        }
        return NULL;
    }
    return c;
}

/* @n more bytes of the head chunk are handed out. */
static void ns_take(struct hs_nbd_source *s, struct ns_chunk *c, size_t n)
{
    c->taken += n;
    if (c->taken == c->len) {
        s->head = (s->head + 1) % s->nbuf;
        ns_recycle(s, c);
        ns_kick(s);
    }
}

ssize_t hs__nbd_source_read(struct hs_nbd_source *s, void *buf, size_t len, struct hs_err *err)
{
    ssize_t rc;
    struct ns_chunk *c = ns_ready(s, &rc, err);
    size_t n;

    if (!c)
        return rc;
    n = c->len - c->taken < len ? c->len - c->taken : len;
    memcpy(buf, c->buf + c->taken, n);
    ns_take(s, c, n);
    return (ssize_t)n;
}

ssize_t hs__nbd_source_lend(struct hs_nbd_source *s, const void **p, struct hs_err *err)
{
    ssize_t rc;
    struct ns_chunk *c = ns_ready(s, &rc, err);
    size_t n;

    if (!c)
        return rc;
    n = c->len - c->taken;
    *p = c->buf + c->taken;
    if (s->nlent++ == 0)
        s->lent = (int)(c - s->ch);
    c->lent = 1;
    ns_take(s, c, n);
    return (ssize_t)n;
}

void hs__nbd_source_give_back(struct hs_nbd_source *s)
{
    struct ns_chunk *c = &s->ch[s->lent];

    if (!s->nlent)
        abort(); /* nothing lent */
    c->lent = 0;
    s->lent = (s->lent + 1) % s->nbuf;
    s->nlent--;
    ns_recycle(s, c);
    ns_kick(s);
}

void hs__nbd_source_rewind(struct hs_nbd_source *s)
{
    if (s->nlent)
        abort(); /* a reader gives back what it borrowed first */
    s->rewinding = 1;
    s->waiting = 0;
    s->hashed_all = 0;
    ns_settle_rewind(s);
}

const char *hs__nbd_source_digest(const struct hs_nbd_source *s)
{
    return s->hashed_all ? s->hex : NULL;
}

void hs__nbd_source_close(struct hs_nbd_source *s)
{
    if (!s)
        return;
    s->closing = 1;
    hs__nbd_close(s->n); /* reads in flight end canceled, here */
    s->n = NULL;
    if (!s->hashing)
        ns_free(s); /* else when the hash in flight ends */
}

/* ---- as a stream ---- */

static ssize_t ns_st_read(struct hs_stream *st, void *buf, size_t len, struct hs_err *err)
{
    return hs__nbd_source_read((struct hs_nbd_source *)st, buf, len, err);
}

static ssize_t ns_st_lend(struct hs_stream *st, const void **p, struct hs_err *err)
{
    return hs__nbd_source_lend((struct hs_nbd_source *)st, p, err);
}

static void ns_st_give_back(struct hs_stream *st)
{
    hs__nbd_source_give_back((struct hs_nbd_source *)st);
}

static void ns_st_rewind(struct hs_stream *st)
{
    hs__nbd_source_rewind((struct hs_nbd_source *)st);
}

static const char *ns_st_digest(const struct hs_stream *st)
{
    return hs__nbd_source_digest((const struct hs_nbd_source *)st);
}

static void ns_st_close(struct hs_stream *st)
{
    hs__nbd_source_close((struct hs_nbd_source *)st);
}

static const struct hs_stream_ops ns_ops = {
    .read = ns_st_read,
    .lend = ns_st_lend,
    .give_back = ns_st_give_back,
    .rewind = ns_st_rewind,
    .digest = ns_st_digest,
    .close = ns_st_close,
};

struct hs_stream *hs__nbd_source_stream(struct hs_nbd_source *s)
{
    return &s->st;
}
