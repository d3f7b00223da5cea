/*
 * Child processes (qemu-img) on the loop: uv_spawn, stdout and stderr read
 * through pipes, progress parsed from `qemu-img -p`, cancellable with SIGTERM
 * then SIGKILL after a grace period, SIGKILLed by the kernel when hotsnap
 * dies. Never waitpid, system or popen.
 */
#ifndef HS_PROC_H
#define HS_PROC_H

#include <stdint.h>
#include <uv.h>

#define HS_PROC_ERR_TAIL 2048
#define HS_PROC_GRACE_MS 5000

struct hs_proc;
/* percent in [0, 100] from a "(12.34/100%)" progress line */
typedef void (*hs_proc_progress_cb)(struct hs_proc *p, double percent);
/* The child exited and both pipes are drained. status: 0, or a negative errno
 * (-ECANCELED after hs__proc_cancel, -EIO for a non-zero exit or a signal). The
 * proc frees itself after this returns. */
typedef void (*hs_proc_exit_cb)(struct hs_proc *p, int status);

struct hs_proc {
    uv_process_t process;
    uv_pipe_t out;
    uv_pipe_t err;
    uv_timer_t kill_timer;
    int pending_close;
    int open_pipes;
    int exited;
    int64_t exit_status;
    int term_signal;
    int canceled;
    char *name;                     /* argv[0] basename, for messages */
    char errtail[HS_PROC_ERR_TAIL]; /* last bytes of stderr */
    size_t errlen;
    char *capture; /* stdout when capturing (e.g. qemu-img info --output=json) */
    size_t capture_len;
    size_t capture_max;
    char line[256]; /* partial progress line */
    size_t linelen;
    hs_proc_progress_cb on_progress;
    hs_proc_exit_cb on_exit;
    void *data;
};

/*
 * Spawn argv[0] (searched in PATH; -ENOENT when it is not there) under
 * `setpriv --pdeathsig KILL`: the child dies with hotsnap's loop thread.
 * With @capture_max > 0 stdout is kept (up to that many bytes), otherwise it
 * is parsed for progress. On success *out is the running child; on failure a
 * negative errno and nothing to free.
 */
int hs__proc_spawn(uv_loop_t *loop, char *const argv[], size_t capture_max,
                   hs_proc_progress_cb on_progress, hs_proc_exit_cb on_exit, void *data,
                   struct hs_proc **out);

/* SIGTERM now, SIGKILL after HS_PROC_GRACE_MS; on_exit still runs. */
void hs__proc_cancel(struct hs_proc *p);

/* stderr tail as one line (newlines folded), for error messages */
const char *hs__proc_stderr(struct hs_proc *p);

/* Parse the last "(N/100%)" in @buf; -1 when none. Exposed for tests. */
double hs__proc_parse_progress(const char *buf, size_t len);

#endif
