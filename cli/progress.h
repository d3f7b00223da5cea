/* Terminal output of the hotsnap command: event lines, a live status line, the summary. */
#ifndef HS_CLI_PROGRESS_H
#define HS_CLI_PROGRESS_H

#include <stdio.h>
#include "hotsnap.h"

struct hs_cli_out {
    int json;
    int quiet;
    int tty; /* stdout is a terminal: keep a status line redrawn in place */
    int status_shown;
    cJSON *active; /* job id -> {"domain","phase","percent"} */
};

void hs_cli_out_init(struct hs_cli_out *o, int json, int quiet);
void hs_cli_out_event(struct hs_cli_out *o, const cJSON *ev);
void hs_cli_out_line(struct hs_cli_out *o, FILE *f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void hs_cli_out_free(struct hs_cli_out *o);

#endif
