/*
 * An NBD client on the loop: libnbd's asynchronous API driven from a
 * uv_poll_t on its socket, so hundreds of exports are read on the one loop
 * thread with several requests in flight each. libnbd's own callbacks only
 * record what completed; the caller's callbacks run afterwards, outside
 * libnbd, where they may queue further commands.
 */
#ifndef HS_NBD_H
#define HS_NBD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "err.h"

struct hs_nbd;
/* A command (or the connect) ended: 0, or a negative errno with the reason
 * in hs__nbd_error(). Loop thread. */
typedef void (*hs_nbd_done_cb)(struct hs_nbd *n, int status, void *data);
/* One extent of a block status reply: flags are LIBNBD_STATE_HOLE/_ZERO of
 * base:allocation, or, with HS_NBD_DIRTY_EXTENT set, the dirty bitmap's
 * (bit 0: dirty). */
#define HS_NBD_DIRTY_EXTENT (1u << 31)
typedef void (*hs_nbd_extent_cb)(void *data, uint64_t off, uint64_t len, uint32_t flags);

/* Connect to @export on the unix socket @path, asking for base:allocation;
 * @connected runs once the handshake is done or failed. */
int hs__nbd_open(uv_loop_t *loop, const char *path, const char *export_name,
                 hs_nbd_done_cb connected, void *data, struct hs_nbd **out, struct hs_err *err);
/* Start the NBD server @argv (e.g. qemu-nbd) as a child with systemd socket
 * activation and connect to its @export: the server lives as long as the
 * connection, so it ends with hs__nbd_close, or with this process. */
int hs__nbd_open_command(uv_loop_t *loop, char *const *argv, const char *export_name,
                         hs_nbd_done_cb connected, void *data, struct hs_nbd **out,
                         struct hs_err *err);
/* As either open (@path, else @argv), asking for the dirty bitmap's meta
 * context @context (e.g. "qemu:dirty-bitmap:backup-vda") as well: block
 * status then reports its extents too. */
int hs__nbd_open_dirty(uv_loop_t *loop, const char *path, char *const *argv,
                       const char *export_name, const char *context, hs_nbd_done_cb connected,
                       void *data, struct hs_nbd **out, struct hs_err *err);
/* Whether the server agreed to the dirty bitmap's context. */
int hs__nbd_has_dirty_context(const struct hs_nbd *n);
/* The export's size, once connected. */
uint64_t hs__nbd_size(const struct hs_nbd *n);
/* Whether the server answers block status (base:allocation). */
int hs__nbd_has_block_status(const struct hs_nbd *n);
/* Read [@off, @off + @len) into @buf. 0, or < 0 when it cannot be queued. */
int hs__nbd_pread(struct hs_nbd *n, void *buf, size_t len, uint64_t off, hs_nbd_done_cb done,
                  void *data);
/* The extents of [@off, @off + @len): @extent for each (the server may
 * answer for less than asked; the caller asks again from where it ended),
 * then @done. */
int hs__nbd_block_status(struct hs_nbd *n, uint64_t off, uint64_t len, hs_nbd_extent_cb extent,
                         hs_nbd_done_cb done, void *data);
/* Commands still in flight. */
int hs__nbd_in_flight(const struct hs_nbd *n);
/* Why the last command failed. */
const char *hs__nbd_error(const struct hs_nbd *n);
/* Disconnect; commands in flight end with -ECANCELED. Freed on a later
 * iteration. */
void hs__nbd_close(struct hs_nbd *n);

#endif
