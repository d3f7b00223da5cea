/*
 * An image as a stream: what an uploader reads, whatever the mode made it
 * from. A stream has a known length, hands out its bytes in order from the
 * loop thread, hashes them (one digest, engine/digest.h: the one its
 * uploader records) off the loop, and starts again from
 * byte 0 on request (a retried upload). Two kinds: a file read ahead on the
 * worker pool (engine/source.c: cold, offline with compression, mirror,
 * push) and an NBD export laid out as an image while it is read
 * (engine/nbd_source.c: pull, offline).
 *
 * A read that finds nothing ready returns -EAGAIN; the stream then calls the
 * reader's ready callback once more is there (or it failed), never from
 * inside the read.
 *
 * A reader that writes the bytes somewhere (the store) borrows them
 * instead: a lend hands out the rest of the stream's current buffer
 * (page-aligned; every lend but the last a multiple of 4 KiB long, when
 * the reader only lends), which stays the reader's until it is given back,
 * oldest first; the stream reads ahead into its other buffers meanwhile.
 * Whatever is lent is given back before a rewind; a close frees it.
 */
#ifndef HS_STREAM_H
#define HS_STREAM_H

#include <stdint.h>
#include <sys/types.h>

#include "digest.h"
#include "err.h"

struct hs_stream;
typedef void (*hs_stream_ready_cb)(struct hs_stream *st, void *data);

struct hs_stream_ops {
    ssize_t (*read)(struct hs_stream *st, void *buf, size_t len, struct hs_err *err);
    ssize_t (*lend)(struct hs_stream *st, const void **p, struct hs_err *err);
    void (*give_back)(struct hs_stream *st);
    void (*rewind)(struct hs_stream *st);
    const char *(*digest)(const struct hs_stream *st);
    void (*close)(struct hs_stream *st);
};

struct hs_stream {
    const struct hs_stream_ops *ops;
    uint64_t size; /* bytes, known before the first is read */
    enum hs_digest_algo algo; /* of its digest */
    hs_stream_ready_cb ready;
    void *data;
};

/* Who reads it now: its ready callback from here on. */
static inline void hs__stream_reader(struct hs_stream *st, hs_stream_ready_cb ready, void *data)
{
    st->ready = ready;
    st->data = data;
}

/* Up to @len bytes: the count, 0 after the last byte, -EAGAIN (the ready
 * callback runs once there is more), or a negative errno with the reason in
 * @err. Loop thread. */
static inline ssize_t hs__stream_read(struct hs_stream *st, void *buf, size_t len,
                                      struct hs_err *err)
{
    return st->ops->read(st, buf, len, err);
}

/* Like a read, without the copy: *@p points into the stream's buffer, which
 * is the reader's until hs__stream_give_back. Loop thread. */
static inline ssize_t hs__stream_lend(struct hs_stream *st, const void **p, struct hs_err *err)
{
    return st->ops->lend(st, p, err);
}

/* The oldest lend is done with: its buffer is the stream's again. */
static inline void hs__stream_give_back(struct hs_stream *st)
{
    st->ops->give_back(st);
}

/* From byte 0 again, the hash too. */
static inline void hs__stream_rewind(struct hs_stream *st)
{
    st->ops->rewind(st);
}

/* The digest (hex, of st->algo) of every byte, once all were handed out
 * and hashed; else NULL. */
static inline const char *hs__stream_digest(const struct hs_stream *st)
{
    return st->ops->digest(st);
}

/* Done with it: freed now, or once what is in flight has ended. NULL-safe. */
static inline void hs__stream_close(struct hs_stream *st)
{
    if (st)
        st->ops->close(st);
}

/* For the streams: tell the reader there is more (or an error). */
static inline void hs__stream_wake(struct hs_stream *st)
{
    if (st->ready)
        st->ready(st, st->data);
}

#endif
