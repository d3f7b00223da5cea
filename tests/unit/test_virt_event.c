/* The libvirt event implementation on libuv, driven directly. */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "virt_event.h"

static uv_loop_t loop;
static int fired[8];
static int freed[8];
static int order[16], norder;
static int in_dispatch;
static int watch_b = -1;
static int removed_b;

static void handle_cb(int watch, int fd, int events, void *opaque)
{
    int i = (int)(intptr_t)opaque;
    char buf[16];

    fired[i]++;
    if (i == 1 && removed_b)
        CHECK(0); /* a watch removed in a dispatch never fires again */
    in_dispatch = 1;
    if (i == 0 && watch_b >= 0) {
        /* removal during dispatch: the other watch on this fd must not fire */
        CHECK(hs__vev_remove_handle(watch_b) == 0);
        watch_b = -1;
        removed_b = 1;
    }
    if (i == 2)
        (void)!read(fd, buf, sizeof(buf));
    in_dispatch = 0;
}

static void free_cb(void *opaque)
{
    int i = (int)(intptr_t)opaque;

    CHECK(!in_dispatch); /* ff runs from a clean stack */
    freed[i]++;
    order[norder++] = i;
}

static void setup(void)
{
    memset(fired, 0, sizeof(fired));
    memset(freed, 0, sizeof(freed));
    norder = 0;
    CHECK(uv_loop_init(&loop) == 0);
    CHECK(hs__vev_bind(&loop) == 0);
}

static void unbound(void *data)
{
    *(int *)data = 1;
}

static void teardown(void)
{
    int done = 0;

    hs__vev_unbind(unbound, &done);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(done);
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_shared_fd(void)
{
    int sv[2], a, b;

    setup();
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    a = hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)0, free_cb);
    b = hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)1, free_cb);
    CHECK(a > 0 && b > 0 && a != b);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(hs__vev_poll_count() == 2); /* a poll of its own for each, on its own dup */
    CHECK(write(sv[1], "x", 1) == 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(fired[0] >= 1 && fired[1] >= 1);
    /* a watch set to no events stops hearing the fd, the other still does */
    hs__vev_update_handle(b, 0);
    fired[0] = fired[1] = 0;
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(fired[0] >= 1 && fired[1] == 0);
    CHECK(hs__vev_remove_handle(a) == 0);
    CHECK(hs__vev_remove_handle(b) == 0);
    CHECK(hs__vev_remove_handle(b) == -1);
    CHECK(freed[0] == 0 && freed[1] == 0); /* not from inside the remove call */
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(freed[0] == 1 && freed[1] == 1);
    CHECK(hs__vev_poll_count() == 0);
    close(sv[0]);
    close(sv[1]);
    teardown();
}

static void test_remove_in_dispatch(void)
{
    int sv[2], a;

    setup();
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    /* a's callback removes b: b may have had its turn before, never after */
    watch_b = hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)1, free_cb);
    a = hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)0, free_cb);
    removed_b = 0;
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(write(sv[1], "x", 1) == 1);
    while (!removed_b)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(fired[0] == 1 && fired[1] <= 1);
    uv_run(&loop, UV_RUN_NOWAIT); /* the byte is still there: a fires, b does not */
    CHECK(fired[0] >= 2);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(freed[1] == 1 && freed[0] == 0);
    CHECK(hs__vev_remove_handle(a) == 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(freed[0] == 1);
    close(sv[0]);
    close(sv[1]);
    teardown();
}

static int timer_fired[4];

static void timeout_cb(int timer, void *opaque)
{
    timer_fired[(intptr_t)opaque]++;
}

static void test_timers(void)
{
    int t0, t1, t2, i;
    uint64_t start;

    setup();
    memset(timer_fired, 0, sizeof(timer_fired));
    t0 = hs__vev_add_timeout(0, timeout_cb, (void *)0, free_cb);  /* every iteration */
    t1 = hs__vev_add_timeout(-1, timeout_cb, (void *)1, free_cb); /* disabled */
    t2 = hs__vev_add_timeout(10, timeout_cb, (void *)2, free_cb); /* repeating */
    CHECK(t0 > 0 && t1 > 0 && t2 > 0);
    for (i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(timer_fired[0] >= 4); /* once per iteration */
    CHECK(timer_fired[1] == 0);
    start = uv_hrtime();
    while (uv_hrtime() - start < 60 * 1000000ULL)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(timer_fired[2] >= 3); /* it repeats */
    CHECK(timer_fired[1] == 0);
    /* enable the disabled one, disable the busy one */
    hs__vev_update_timeout(t1, 0);
    hs__vev_update_timeout(t0, -1);
    uv_run(&loop, UV_RUN_NOWAIT);
    timer_fired[0] = timer_fired[1] = 0;
    for (i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(timer_fired[0] == 0 && timer_fired[1] >= 2);
    /* ff order follows removal order, on later iterations */
    CHECK(hs__vev_remove_timeout(t2) == 0);
    CHECK(hs__vev_remove_timeout(t0) == 0);
    CHECK(hs__vev_remove_timeout(t1) == 0);
    CHECK(freed[0] + freed[1] + freed[2] == 0);
    for (i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(freed[0] == 1 && freed[1] == 1 && freed[2] == 1);
    teardown();
}

struct thread_arg {
    int fd;
    int id;
};

static void thread_add(void *arg)
{
    struct thread_arg *ta = arg;

    ta->id = hs__vev_add_handle(ta->fd, VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)2, free_cb);
}

static void test_other_thread(void)
{
    struct thread_arg ta;
    uv_thread_t th;
    int sv[2], i;

    setup();
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    ta.fd = sv[0];
    CHECK(uv_thread_create(&th, thread_add, &ta) == 0);
    uv_thread_join(&th);
    CHECK(ta.id > 0);
    CHECK(write(sv[1], "y", 1) == 1);
    for (i = 0; i < 5 && fired[2] == 0; i++)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(fired[2] == 1); /* the loop picked up a watch added from a worker */
    CHECK(hs__vev_remove_handle(ta.id) == 0);
    close(sv[0]);
    close(sv[1]);
    teardown();
    CHECK(freed[2] == 1);
}

static void test_unbind_frees_leftovers(void)
{
    int sv[2];

    setup();
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)3, free_cb) > 0);
    CHECK(hs__vev_add_timeout(1000, timeout_cb, (void *)3, free_cb) > 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    teardown(); /* checks uv_loop_close() == 0 */
    CHECK(freed[3] == 2);
    CHECK(hs__vev_add_timeout(1000, timeout_cb, NULL, NULL) == -1); /* unbound */
    close(sv[0]);
    close(sv[1]);
}

/* libvirt, on a worker, removes a watch and closes its fd (a connection
 * that died); the next socket made on the loop gets that number and is
 * watched by someone else (curl, say) before the loop has closed the old
 * poll. Closing it must not end the other socket's watch (seen: events of a
 * reconnected libvirt or of an upload lost after a libvirtd restart). */
struct remove_arg {
    int id, fd;
};

static void thread_remove_close(void *arg)
{
    struct remove_arg *ra = arg;

    CHECK(hs__vev_remove_handle(ra->id) == 0);
    close(ra->fd);
}

static int other_fired;

static void other_cb(uv_poll_t *p, int status, int events)
{
    other_fired = 1;
    uv_poll_stop(p);
}

static void nothing(uv_timer_t *t)
{
}

static void test_fd_number_reused_after_a_removal_elsewhere(void)
{
    struct remove_arg ra;
    uv_thread_t th;
    uv_poll_t other;
    uv_timer_t t;
    int sv[2], sv2[2], id;

    setup();
    other_fired = 0;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    id = hs__vev_add_handle(sv[0], VIR_EVENT_HANDLE_READABLE, handle_cb, (void *)4, free_cb);
    CHECK(id > 0);
    uv_run(&loop, UV_RUN_NOWAIT); /* the watch has its poll */
    ra.id = id;
    ra.fd = sv[0];
    CHECK(uv_thread_create(&th, thread_remove_close, &ra) == 0);
    uv_thread_join(&th);
    /* the freed number goes to a socket someone else watches, registered
     * with the kernel before the loop gets to the removal */
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2) == 0);
    CHECK(uv_poll_init(&loop, &other, sv2[0]) == 0);
    CHECK(uv_poll_start(&other, UV_READABLE, other_cb) == 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(write(sv2[1], "z", 1) == 1);
    uv_timer_init(&loop, &t);
    uv_timer_start(&t, nothing, 5000, 0);
    while (!other_fired && uv_is_active((uv_handle_t *)&t))
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(other_fired);
    CHECK(fired[4] == 0);
    uv_close((uv_handle_t *)&t, NULL);
    uv_close((uv_handle_t *)&other, NULL);
    close(sv[1]);
    teardown();
    close(sv2[0]);
    close(sv2[1]);
    CHECK(freed[4] == 1);
}

int main(void)
{
    RUN(test_shared_fd);
    RUN(test_remove_in_dispatch);
    RUN(test_timers);
    RUN(test_other_thread);
    RUN(test_unbind_frees_leftovers);
    RUN(test_fd_number_reused_after_a_removal_elsewhere);
    return 0;
}
