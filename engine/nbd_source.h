/*
 * A disk's image streamed from an NBD export: the export's map first (block
 * status), then, for qcow2, the layout of engine/qcow2.c (so the size is
 * known before the first byte: a Content-Length), then the bytes in one
 * sequential pass, read from the export with several reads in flight and
 * hashed (its one digest) on the worker pool. raw streams the whole disk, holes as
 * zeros without reading them. Same reading contract as engine/source.h.
 */
#ifndef HS_NBD_SOURCE_H
#define HS_NBD_SOURCE_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "err.h"
#include "stream.h"

struct hs_nbd_source;
/* Opened (mapped, laid out) or failed: status 0 or a negative errno with
 * the reason in @err. */
typedef void (*hs_nbd_source_open_cb)(struct hs_nbd_source *s, int status,
                                      const struct hs_err *err, void *data);

/* Where the export is: at a unix @socket, or (no socket) served by @argv,
 * a server libnbd starts for the connection alone (socket activation). */
struct hs_nbd_export {
    const char *socket;
    char *const *argv;
    const char *name;
    /* an incremental image: the export's dirty bitmap context (e.g.
     * "qemu:dirty-bitmap:backup-vda"), and the previous image of the
     * chain as the overlay names it (qcow2 only); else both NULL */
    const char *dirty_context;
    const char *backing;
};

/* @qcow2: a qcow2 image, else raw; hashed with @algo. @ready: as for
 * engine/stream.h. */
int hs__nbd_source_open(uv_loop_t *loop, const struct hs_nbd_export *ex, int qcow2,
                        enum hs_digest_algo algo, hs_nbd_source_open_cb opened,
                        hs_stream_ready_cb ready, void *data, struct hs_nbd_source **out,
                        struct hs_err *err);
/* The image's size in bytes, once opened; and the disk's. */
uint64_t hs__nbd_source_size(const struct hs_nbd_source *s);
uint64_t hs__nbd_source_virtual_size(const struct hs_nbd_source *s);
/* The bytes of the disk read to make the image (an overlay: the dirty
 * clusters with data only), once opened. */
uint64_t hs__nbd_source_guest_bytes(const struct hs_nbd_source *s);
/* Up to @len bytes: the count, 0 after the last, -EAGAIN (then @ready runs
 * once there is more), or a negative errno with the reason in @err. */
ssize_t hs__nbd_source_read(struct hs_nbd_source *s, void *buf, size_t len, struct hs_err *err);
/* The rest of the current chunk, without a copy (engine/stream.h). */
ssize_t hs__nbd_source_lend(struct hs_nbd_source *s, const void **p, struct hs_err *err);
void hs__nbd_source_give_back(struct hs_nbd_source *s);
/* From byte 0 again (a retried upload). */
void hs__nbd_source_rewind(struct hs_nbd_source *s);
/* The digest (hex) of every byte, once all were read and hashed; else NULL. */
const char *hs__nbd_source_digest(const struct hs_nbd_source *s);
/* Done: disconnects; freed once nothing is in flight. */
void hs__nbd_source_close(struct hs_nbd_source *s);
/* The same source as an image stream (size known once opened). */
struct hs_stream *hs__nbd_source_stream(struct hs_nbd_source *s);

#endif
