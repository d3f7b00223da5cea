/*
 * A qcow2 image written in one sequential pass, for streaming: from the map
 * of which clusters of a disk hold data, the whole layout is known before
 * the first byte goes out, and so is the image's exact size (a
 * Content-Length). The file is
 *
 *   header | refcount table | refcount blocks | L1 table | L2 tables | data
 *
 * with 64 KiB clusters, 16-bit refcounts, every cluster referenced once,
 * and the data clusters in guest order: a cluster the map says is a hole or
 * reads as zeros is left unallocated (it reads as zeros).
 *
 * An overlay (an incremental image) names a backing file, the previous
 * image of its chain, and holds only the clusters a dirty map marks: a
 * dirty cluster with data is written, a dirty one without is a zero
 * cluster (it reads as zeros, not as the backing file), and every other
 * cluster is left unallocated and reads as the backing file.
 * Metadata is computed cluster by cluster as it is asked for, so a disk of
 * any size costs one bit of memory per guest cluster. The layout follows
 * QEMU's docs/interop/qcow2.txt (version 3).
 */
#ifndef HS_QCOW2_H
#define HS_QCOW2_H

#include <stddef.h>
#include <stdint.h>

#define HS_QCOW2_CLUSTER_BITS 16
#define HS_QCOW2_CLUSTER (1u << HS_QCOW2_CLUSTER_BITS)

struct hs_qcow2;

/* A plan for a disk of @virtual_size bytes (rounded up to whole 512-byte
 * sectors, as qcow2 counts them), every cluster a hole until marked. NULL
 * when the size is 0 or too large for qcow2. */
struct hs_qcow2 *hs__qcow2_new(uint64_t virtual_size);
void hs__qcow2_free(struct hs_qcow2 *q);
/* Mark the clusters that hold any byte of [@off, @off + @len) as data. */
void hs__qcow2_mark(struct hs_qcow2 *q, uint64_t off, uint64_t len);
/* Make it an overlay of @file (its name as the image will record it,
 * relative to the image's own directory or absolute) of format @fmt: from
 * here on only dirty clusters are the image's. Before any mark_dirty; 0, or
 * -1 when the name cannot be recorded. */
int hs__qcow2_set_backing(struct hs_qcow2 *q, const char *file, const char *fmt);
/* An overlay: mark the clusters that hold any byte of [@off, @off + @len)
 * as changed since the backing file. */
void hs__qcow2_mark_dirty(struct hs_qcow2 *q, uint64_t off, uint64_t len);
/* Whether the cluster holding guest byte @off is marked as data. */
int hs__qcow2_has_data(const struct hs_qcow2 *q, uint64_t off);
/* Lay the image out: after this, no more marks (and for an overlay,
 * has_data and the data clusters are those both marked and dirty). */
void hs__qcow2_plan(struct hs_qcow2 *q);

/* The image's size in bytes, and where its data clusters begin (all before
 * is metadata). */
uint64_t hs__qcow2_size(const struct hs_qcow2 *q);
uint64_t hs__qcow2_data_offset(const struct hs_qcow2 *q);
/* Guest clusters with data, in order: the n-th data cluster of the image
 * holds guest bytes [hs__qcow2_data_guest(q, n), + HS_QCOW2_CLUSTER). */
uint64_t hs__qcow2_data_count(const struct hs_qcow2 *q);
/* Iterate: @cursor starts at 0; returns the guest offset of the next data
 * cluster and advances, or UINT64_MAX after the last. */
uint64_t hs__qcow2_next_data(const struct hs_qcow2 *q, uint64_t *cursor);
/* The metadata bytes [@off, @off + @len) (within [0, data_offset)) into @buf. */
void hs__qcow2_meta(const struct hs_qcow2 *q, uint64_t off, void *buf, size_t len);

#endif
