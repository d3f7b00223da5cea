/*
 * An image file read ahead and hashed on the worker pool, for uploads that
 * send it from the loop. Two chunks per source: while the loop hands one to
 * curl, a worker reads the next and updates the digest with it, so the loop
 * thread never reads or hashes a byte, and uploads hash in parallel on a host
 * with several cores. One read per source is in flight at a time, which
 * keeps the hash in file order.
 */
#ifndef HS_SOURCE_H
#define HS_SOURCE_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "err.h"
#include "stream.h"

struct hs_source;

/* Open @path, expected to hold @size bytes, and start reading ahead, hashed
 * with @algo; @ready runs (loop thread) once the chunk a read waited for is
 * there. */
int hs__source_open(uv_loop_t *loop, const char *path, uint64_t size, enum hs_digest_algo algo,
                    hs_stream_ready_cb ready, void *data, struct hs_source **out,
                    struct hs_err *err);
/* Up to @len bytes into @buf: the count, 0 after the last byte, -EAGAIN when
 * the next chunk is not read yet (@ready runs once it is), or a negative
 * errno with the reason in @err. Loop thread. */
ssize_t hs__source_read(struct hs_source *src, void *buf, size_t len, struct hs_err *err);
/* The rest of the current buffer, without a copy (engine/stream.h). */
ssize_t hs__source_lend(struct hs_source *src, const void **p, struct hs_err *err);
void hs__source_give_back(struct hs_source *src);
/* From byte 0 again, the hash too. */
void hs__source_rewind(struct hs_source *src);
/* The digest (hex) of the whole file, once every byte was read; else NULL. */
const char *hs__source_digest(const struct hs_source *src);
/* Done with it: freed now, or once the read in flight has finished. */
void hs__source_close(struct hs_source *src);
/* The same source as an image stream (engine/stream.h); its ready callback
 * is the one given to open until a reader sets its own. */
struct hs_stream *hs__source_stream(struct hs_source *src);

#endif
