/*
 * Terminal output of the hotsnap command. On a terminal: one line per active
 * job (domain, phase, percent, rate, ETA) and a total line, redrawn in place
 * at most every 200 ms; otherwise plain progress lines every 10 s. With
 * --json every event is printed as one JSON line instead.
 */
#ifndef HS_CLI_PROGRESS_H
#define HS_CLI_PROGRESS_H

#include <stdio.h>
#include "hotsnap.h"

struct hs_cli_out {
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
void hs_cli_out_event(struct hs_cli_out *o, const cJSON *ev);
void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Format one job's progress line (exposed for tests). */
void hs_cli_out_format(const cJSON *job, char *buf, size_t len);
void hs_cli_out_free(struct hs_cli_out *o);

#endif
