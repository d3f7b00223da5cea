/*
 * A libvirt event implementation on libuv (virEventRegisterImpl).
 *
 * Handles share one uv_poll_t per fd; timeouts are repeating uv_timer_t, and a
 * timeout of 0 fires on every loop iteration (a uv_idle_t). Calls may come
 * from any thread: the model is guarded by a mutex and the loop thread
 * reconciles its uv handles with it, woken by uv_async_send. Free callbacks
 * run on a later loop iteration from a clean stack.
 */
#ifndef HS_VIRT_EVENT_H
#define HS_VIRT_EVENT_H

#include <uv.h>
#include <libvirt/libvirt.h>

/* Bind the implementation to @loop and register it with libvirt (once per
 * process; later binds reuse the registration). Must precede virConnectOpen.
 * 0 or a negative errno (-EBUSY when bound to a live loop already). */
int hs__vev_bind(uv_loop_t *loop);

/* Forget every remaining registration (their ff run), close every handle.
 * After @cb the loop holds none of ours. */
void hs__vev_unbind(void (*cb)(void *data), void *data);

/* The functions libvirt calls, exposed for unit tests. */
int hs__vev_add_handle(int fd, int events, virEventHandleCallback cb, void *opaque,
                       virFreeCallback ff);
void hs__vev_update_handle(int watch, int events);
int hs__vev_remove_handle(int watch);
int hs__vev_add_timeout(int timeout, virEventTimeoutCallback cb, void *opaque, virFreeCallback ff);
void hs__vev_update_timeout(int timer, int timeout);
int hs__vev_remove_timeout(int timer);

/* For tests: how many uv_poll_t are open (one per watched fd). */
int hs__vev_poll_count(void);

#endif
