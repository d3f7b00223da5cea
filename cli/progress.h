/*
 * Terminal output of the hotsnap command. On a terminal: one line per active
 * job (domain, phase, percent, rate, ETA) and a total line, redrawn in place
 * at most every 200 ms; otherwise plain progress lines every 10 s. With
 * --json every event is printed as one JSON line instead.
 *
 * Output never blocks the loop: on a terminal or a pipe hotsnap writes through
 * a non-blocking description of its own, keeps what the reader has not taken
 * and sends it when the fd is writable again; while a backlog waits, redraws
 * are dropped, never events or lines.
 */
#ifndef HS_CLI_PROGRESS_H
#define HS_CLI_PROGRESS_H

#include <stdio.h>
#include <uv.h>
#include "hotsnap.h"

struct hs_cli_sink {
    int fd;       /* where to write: our own non-blocking description, or the fd */
    int own;      /* fd is ours to close */
    char *buf;    /* what the reader has not taken yet */
    size_t len, cap;
    uv_poll_t poll;
    int polling;
    int started; /* poll initialized */
    int broken;  /* the reader went away: drop */
};

struct hs_cli_out {
    struct hs_cli_sink out, err;
    int json;
    int quiet;
    int tty;         /* stdout is a terminal: redraw the block in place */
    int drawn;       /* lines of the block on screen */
    double drawn_at; /* when it was last drawn */
    double plain_at; /* when plain progress lines were last printed */
    int done, failed, total;
    cJSON *active; /* job id -> {"domain","phase","percent","rate","eta"} */
};

void hs_cli_out_init(struct hs_cli_out *o, int json, int quiet);
/* Write without blocking @loop from now on. */
void hs_cli_out_start(struct hs_cli_out *o, uv_loop_t *loop);
/* Write out every backlog, blocking (before the summary and at the end). */
void hs_cli_out_drain(struct hs_cli_out *o);
/* Drain, and close the poll handles (the loop then runs their close). */
void hs_cli_out_stop(struct hs_cli_out *o);
void hs_cli_out_event(struct hs_cli_out *o, const cJSON *ev);
void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Format one job's progress line (exposed for tests). */
void hs_cli_out_format(const cJSON *job, char *buf, size_t len);
void hs_cli_out_free(struct hs_cli_out *o);

#endif
