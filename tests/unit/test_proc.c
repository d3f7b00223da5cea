/* Child processes: progress, stderr, exit status, cancel. */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "proc.h"

static uv_loop_t loop;
static int exit_status = 1;
static double last_pct = -1;
static int npct;
static char captured[256];
static char errmsg[256];

static void on_progress(struct hs_proc *p, double pct)
{
    CHECK(pct >= last_pct); /* monotonic in this script */
    last_pct = pct;
    npct++;
}

static void on_exit_cb(struct hs_proc *p, int status)
{
    exit_status = status;
    snprintf(errmsg, sizeof(errmsg), "%s", hs__proc_stderr(p));
    if (p->capture)
        snprintf(captured, sizeof(captured), "%s", p->capture);
}

static void run(char *const argv[], size_t capture)
{
    struct hs_proc *p;

    exit_status = 1;
    last_pct = -1;
    npct = 0;
    errmsg[0] = captured[0] = '\0';
    CHECK(hs__proc_spawn(&loop, argv, capture, on_progress, on_exit_cb, NULL, &p) == 0);
    CHECK(exit_status == 1); /* never from inside spawn */
    uv_run(&loop, UV_RUN_DEFAULT);
}

static void test_parse(void)
{
    const char s[] = "    (0.00/100%)\r    (42.50/100%)\r";

    CHECK(hs__proc_parse_progress(s, strlen(s)) == 42.5);
    CHECK(hs__proc_parse_progress("nothing", 7) == -1);
    CHECK(hs__proc_parse_progress("(250/100%)", 10) == -1);
}

static void test_progress_and_success(void)
{
    char *argv[] = {"/bin/sh", "-c",
                    "printf '    (0.00/100%%)\\r'; printf '    (50.00/100%%)\\r'; "
                    "printf '    (100.00/100%%)\\r\\n'",
                    NULL};

    run(argv, 0);
    CHECK(exit_status == 0);
    CHECK(npct == 3);
    CHECK(last_pct == 100.0);
}

static void test_failure_keeps_stderr(void)
{
    char *argv[] = {"/bin/sh", "-c", "echo 'qemu-img: Could not open x: No such file' >&2; exit 1",
                    NULL};

    run(argv, 0);
    CHECK(exit_status == -EIO);
    CHECK(strstr(errmsg, "Could not open x") != NULL);
    CHECK(strchr(errmsg, '\n') == NULL);
}

static void test_capture(void)
{
    char *argv[] = {"/bin/sh", "-c", "echo '{\"virtual-size\": 42}'", NULL};

    run(argv, 1024);
    CHECK(exit_status == 0);
    CHECK(strstr(captured, "\"virtual-size\": 42") != NULL);
}

static void cancel_timer_cb(uv_timer_t *t)
{
    hs__proc_cancel(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel(void)
{
    /* ignores SIGTERM: the SIGKILL after the grace period ends it */
    char *argv[] = {"/bin/sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30", NULL};
    struct hs_proc *p;
    uv_timer_t t;
    uint64_t start = uv_hrtime();

    exit_status = 1;
    CHECK(hs__proc_spawn(&loop, argv, 0, NULL, on_exit_cb, NULL, &p) == 0);
    uv_timer_init(&loop, &t);
    t.data = p;
    uv_timer_start(&t, cancel_timer_cb, 50, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(exit_status == -ECANCELED);
    CHECK(uv_hrtime() - start < 25ULL * 1000000000ULL); /* long before the sleep ends */
}

static void test_spawn_failure(void)
{
    char *argv[] = {"/nonexistent/qemu-img", NULL};
    struct hs_proc *p = NULL;

    CHECK(hs__proc_spawn(&loop, argv, 0, NULL, on_exit_cb, NULL, &p) < 0);
    CHECK(p == NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* its handles still close */
}

/* a name no directory of PATH has: -ENOENT before any fork, as execvp's */
static void test_not_in_path(void)
{
    char *argv[] = {"hs-no-such-tool", NULL};
    struct hs_proc *p = NULL;

    CHECK(hs__proc_spawn(&loop, argv, 0, NULL, on_exit_cb, NULL, &p) == -ENOENT);
    CHECK(p == NULL);
}

int main(void)
{
    CHECK(uv_loop_init(&loop) == 0);
    RUN(test_parse);
    RUN(test_progress_and_success);
    RUN(test_failure_keeps_stderr);
    RUN(test_capture);
    RUN(test_cancel);
    RUN(test_spawn_failure);
    RUN(test_not_in_path);
    CHECK(uv_loop_close(&loop) == 0);
    return 0;
}
