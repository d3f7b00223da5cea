/*
 * The job journal: the steps a job takes that change a domain (saved,
 * detached devices, scratch files), written under <state_dir>/journal before
 * each step and fsynced, so the next hotsnap run can undo what a dead run
 * left. A job holds an flock on <id>.lock while it lives; a journal whose
 * lock can be taken belongs to a dead run.
 *
 * The document is built on the loop thread; hs__journal_write() renders it and
 * is called from the worker that performs the step.
 */
#ifndef HS_JOURNAL_H
#define HS_JOURNAL_H

#include <cjson/cJSON.h>

#include "err.h"

struct hs_journal {
    char *path;      /* <dir>/<id>.json */
    char *lock_path; /* <dir>/<id>.lock */
    int lock_fd;
    int written; /* the .json exists */
    cJSON *doc;  /* owned */
};

/* Create the journal of job @id (takes its lock). 0 or negative errno. */
int hs__journal_open(const char *state_dir, const char *id, struct hs_journal **out,
                     struct hs_err *err);
/* Render @doc to a string the worker writes (caller frees). */
char *hs__journal_render(struct hs_journal *j);
/* Write a rendered journal atomically (any thread). 0 or negative errno. */
int hs__journal_write(struct hs_journal *j, const char *text);
/* Remove the files and release the lock; NULL-safe. */
void hs__journal_remove(struct hs_journal *j);
/* Release the lock but keep the files (the next run recovers); NULL-safe. */
void hs__journal_abandon(struct hs_journal *j);

char *hs__journal_dir(const char *state_dir);

#endif
