/* The engine's running jobs, and the order jobs of one domain take. */
#include <string.h>

#include "job_int.h"

void hs__job_link(struct hs_job *job)
{
    job->next = job->eng->jobs;
    job->eng->jobs = job;
}

void hs__job_unlink(struct hs_job *job)
{
    struct hs_job **p;

    for (p = &job->eng->jobs; *p; p = &(*p)->next) {
        if (*p == job) {
            *p = job->next;
            job->next = NULL;
            return;
        }
    }
}

/* Jobs of one domain run one after another: libvirt serialises them on the
 * domain's job lock anyway, and a second backup would wait up to 30 s. */
int hs__job_domain_busy(struct hs_job *job)
{
    struct hs_job *other;

    for (other = job->eng->jobs; other; other = other->next)
        if (other != job && other->holds &&
            !memcmp(other->watch.uuid, job->uuid, sizeof(job->uuid)))
            return 1;
    return 0;
}

/* Reads finish in any order on the worker pool; jobs settle in the order
 * they were started, so jobs of one domain run in that order. The next to
 * settle: the oldest job that has read its domain, once no older job is
 * still reading; NULL when none may yet. */
struct hs_job *hs__job_next_to_settle(struct hs_engine *eng)
{
    struct hs_job *j, *first = NULL;
    uint64_t reading = UINT64_MAX;

    for (j = eng->jobs; j; j = j->next) {
        if (j->inspecting && j->seq < reading)
            reading = j->seq;
        if (j->inspect_deferred && (!first || j->seq < first->seq))
            first = j;
    }
    return first && first->seq < reading ? first : NULL;
}
