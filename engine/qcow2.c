#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define C ((uint64_t)HS_QCOW2_CLUSTER)
#define L2_ENTRIES (C / 8)      /* guest clusters per L2 table */
#define RB_ENTRIES (C / 2)      /* clusters per refcount block (16-bit refcounts) */
#define MAX_L1_BYTES (32u << 20) /* QEMU refuses larger L1 tables */
#define COPIED (1ull << 63)     /* refcount is exactly 1 */

struct hs_qcow2 {
    uint64_t vsize;
    uint64_t vclusters; /* guest clusters */
    uint64_t *bits;     /* guest clusters with data */
    /* an overlay: only the dirty clusters are the image's, the rest is the
     * backing file's; a dirty cluster without data reads as zeros */
    uint64_t *dirty;    /* guest clusters changed since the backing file */
    uint64_t *zero;     /* dirty without data: a zero cluster (after plan) */
    char *backing;      /* its name, or NULL */
    char *backing_fmt;
    uint64_t l1_size;   /* L1 entries */
    uint64_t *rank;     /* per L1 entry: data clusters before its range */
    uint64_t *l2_of;    /* per L1 entry: its L2 table's index, or UINT64_MAX */
    uint64_t *l1_of;    /* per L2 table: its L1 entry */
    uint64_t nl2;
    uint64_t ndata;
    uint64_t rt_clusters, rb_clusters, l1_clusters;
    uint64_t rt_first, rb_first, l1_first, l2_first, data_first; /* cluster indexes */
    uint64_t total; /* clusters in the file */
};

static void be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void be32(uint8_t *p, uint32_t v)
{
    be16(p, (uint16_t)(v >> 16));
    be16(p + 2, (uint16_t)v);
}

static void be64(uint8_t *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static int bit(const struct hs_qcow2 *q, uint64_t c)
{
    return (q->bits[c / 64] >> (c % 64)) & 1;
}

struct hs_qcow2 *hs__qcow2_new(uint64_t virtual_size)
{
    struct hs_qcow2 *q;
    uint64_t vclusters = div_up(virtual_size, C);

    if (!virtual_size || virtual_size > UINT64_MAX - C ||
        div_up(vclusters, L2_ENTRIES) * 8 > MAX_L1_BYTES)
        return NULL;
    q = calloc(1, sizeof(*q));
    if (!q)
        abort();
    q->vsize = (virtual_size + 511) & ~(uint64_t)511; /* qcow2 sizes are whole sectors */
    q->vclusters = vclusters;
    q->l1_size = div_up(vclusters, L2_ENTRIES);
    q->bits = calloc(div_up(vclusters, 64), sizeof(uint64_t));
    q->rank = calloc(q->l1_size, sizeof(uint64_t));
    q->l2_of = calloc(q->l1_size, sizeof(uint64_t));
    if (!q->bits || !q->rank || !q->l2_of)
        abort();
    return q;
}

void hs__qcow2_free(struct hs_qcow2 *q)
{
    if (!q)
        return;
    free(q->bits);
    free(q->dirty);
    free(q->zero);
    free(q->backing);
    free(q->backing_fmt);
    free(q->rank);
    free(q->l2_of);
    free(q->l1_of);
    free(q);
}

/* Set in @bits the clusters that hold any byte of [@off, @off + @len). */
static void mark_in(const struct hs_qcow2 *q, uint64_t *bits, uint64_t off, uint64_t len)
{
    uint64_t c, end;

    if (!len || off >= q->vsize)
        return;
    end = len > q->vsize - off ? q->vsize : off + len;
    for (c = off / C; c < div_up(end, C); c++)
        bits[c / 64] |= 1ull << (c % 64);
}

void hs__qcow2_mark(struct hs_qcow2 *q, uint64_t off, uint64_t len)
{
    mark_in(q, q->bits, off, len);
}

int hs__qcow2_set_backing(struct hs_qcow2 *q, const char *file, const char *fmt)
{
    size_t words = div_up(q->vclusters, 64);

    /* QEMU reads a backing name of up to 1023 bytes; it and the format's
     * extension go in the header's cluster */
    if (!file || !*file || strlen(file) > 1023 || !fmt || !*fmt || strlen(fmt) > 16 || q->dirty)
        return -1;
    q->backing = strdup(file);
    q->backing_fmt = strdup(fmt);
    q->dirty = calloc(words, sizeof(uint64_t));
    q->zero = calloc(words, sizeof(uint64_t));
    if (!q->backing || !q->backing_fmt || !q->dirty || !q->zero)
        abort();
    return 0;
}

void hs__qcow2_mark_dirty(struct hs_qcow2 *q, uint64_t off, uint64_t len)
{
    if (q->dirty)
        mark_in(q, q->dirty, off, len);
}

int hs__qcow2_has_data(const struct hs_qcow2 *q, uint64_t off)
{
    return off < q->vsize && bit(q, off / C);
}

void hs__qcow2_plan(struct hs_qcow2 *q)
{
    uint64_t i, w, n, z, total, rb = 1, rt = 1;

    if (q->dirty)
        for (w = 0; w < div_up(q->vclusters, 64); w++) {
            q->zero[w] = q->dirty[w] & ~q->bits[w];
            q->bits[w] &= q->dirty[w];
        }
    for (i = 0; i < q->l1_size; i++) {
        q->rank[i] = q->ndata;
        n = z = 0;
        /* L2_ENTRIES is a multiple of 64: whole words, the tail beyond the
         * disk is never marked */
        for (w = i * L2_ENTRIES / 64; w < (i + 1) * L2_ENTRIES / 64 && w < div_up(q->vclusters, 64);
             w++) {
            n += (uint64_t)__builtin_popcountll(q->bits[w]);
            z |= q->zero ? q->zero[w] : 0;
        }
        q->l2_of[i] = n || z ? q->nl2++ : UINT64_MAX;
        q->ndata += n;
    }
    q->l1_of = calloc(q->nl2 ? q->nl2 : 1, sizeof(uint64_t));
    if (!q->l1_of)
        abort();
    for (i = 0; i < q->l1_size; i++)
        if (q->l2_of[i] != UINT64_MAX)
            q->l1_of[q->l2_of[i]] = i;
    q->l1_clusters = div_up(q->l1_size * 8, C);
    /* the refcount blocks count themselves and the table: to a fixed point */
    for (;;) {
        total = 1 + rt + rb + q->l1_clusters + q->nl2 + q->ndata;
        n = div_up(total, RB_ENTRIES);
        w = div_up(n * 8, C);
        if (n == rb && w == rt)
            break;
        rb = n;
        rt = w;
    }
    q->rt_clusters = rt;
    q->rb_clusters = rb;
    q->total = total;
    q->rt_first = 1;
    q->rb_first = q->rt_first + rt;
    q->l1_first = q->rb_first + rb;
    q->l2_first = q->l1_first + q->l1_clusters;
    q->data_first = q->l2_first + q->nl2;
}

uint64_t hs__qcow2_size(const struct hs_qcow2 *q)
{
    return q->total * C;
}

uint64_t hs__qcow2_data_offset(const struct hs_qcow2 *q)
{
    return q->data_first * C;
}

uint64_t hs__qcow2_data_count(const struct hs_qcow2 *q)
{
    return q->ndata;
}

uint64_t hs__qcow2_next_data(const struct hs_qcow2 *q, uint64_t *cursor)
{
    uint64_t c = *cursor, word;

    while (c < q->vclusters) {
        word = q->bits[c / 64] >> (c % 64);
        if (!word) {
            c = (c / 64 + 1) * 64; /* nothing more in this word */
            continue;
        }
        c += (uint64_t)__builtin_ctzll(word);
        if (c >= q->vclusters)
            break;
        *cursor = c + 1;
        return c * C;
    }
    *cursor = q->vclusters;
    return UINT64_MAX;
}

static void header(const struct hs_qcow2 *q, uint8_t *p)
{
    be32(p + 0, 0x514649fb); /* "QFI\xfb" */
    be32(p + 4, 3);          /* version */
    be32(p + 20, HS_QCOW2_CLUSTER_BITS);
    be64(p + 24, q->vsize);
    be32(p + 36, (uint32_t)q->l1_size);
    be64(p + 40, q->l1_first * C);
    be64(p + 48, q->rt_first * C);
    be32(p + 56, (uint32_t)q->rt_clusters);
    be32(p + 96, 4);   /* refcount_order: 16-bit refcounts */
    be32(p + 100, 104); /* header_length; the extensions follow, then a zero marker */
    if (q->backing) {
        size_t flen = strlen(q->backing_fmt), pad = (flen + 7) & ~(size_t)7;

        be32(p + 104, 0xe2792aca); /* the backing file's format */
        be32(p + 108, (uint32_t)flen);
        memcpy(p + 112, q->backing_fmt, flen);
        /* the end marker's 8 zero bytes, then the name */
        be64(p + 8, 112 + pad + 8);
        be32(p + 16, (uint32_t)strlen(q->backing));
        memcpy(p + 112 + pad + 8, q->backing, strlen(q->backing));
    }
}

/* Metadata cluster @ci, whole, into @p (C bytes). */
static void meta_cluster(const struct hs_qcow2 *q, uint64_t ci, uint8_t *p)
{
    uint64_t k, j, i, c, rank;

    memset(p, 0, C);
    if (ci == 0) {
        header(q, p);
    } else if (ci < q->rb_first) { /* refcount table */
        for (k = 0; k < C / 8; k++) {
            j = (ci - q->rt_first) * (C / 8) + k;
            if (j < q->rb_clusters)
                be64(p + 8 * k, (q->rb_first + j) * C);
        }
    } else if (ci < q->l1_first) { /* refcount blocks: every cluster of the file once */
        for (k = 0; k < RB_ENTRIES; k++) {
            c = (ci - q->rb_first) * RB_ENTRIES + k;
            if (c < q->total)
                be16(p + 2 * k, 1);
        }
    } else if (ci < q->l2_first) { /* L1 */
        for (k = 0; k < C / 8; k++) {
            j = (ci - q->l1_first) * (C / 8) + k;
            if (j < q->l1_size && q->l2_of[j] != UINT64_MAX)
                be64(p + 8 * k, ((q->l2_first + q->l2_of[j]) * C) | COPIED);
        }
    } else if (ci < q->data_first) { /* an L2 table */
        i = q->l1_of[ci - q->l2_first];
        rank = q->rank[i];
        for (k = 0; k < L2_ENTRIES; k++) {
            c = i * L2_ENTRIES + k;
            if (c >= q->vclusters)
                break;
            if (bit(q, c))
                be64(p + 8 * k, ((q->data_first + rank++) * C) | COPIED);
            else if (q->zero && ((q->zero[c / 64] >> (c % 64)) & 1))
                be64(p + 8 * k, 1); /* reads as zeros, not as the backing file */
        }
    }
}

void hs__qcow2_meta(const struct hs_qcow2 *q, uint64_t off, void *buf, size_t len)
{
    uint8_t *out = buf, *cl = malloc(C);
    uint64_t ci, in;
    size_t n;

    if (!cl)
        abort();
    while (len > 0) {
        ci = off / C;
        in = off % C;
        n = C - in < len ? (size_t)(C - in) : len;
        meta_cluster(q, ci, cl);
        memcpy(out, cl + in, n);
        out += n;
        off += n;
        len -= n;
    }
    free(cl);
}
