/* The agent's log: one stamped line per call, to stderr (the --log file). */
#ifndef HS_AGENT_LOG_H
#define HS_AGENT_LOG_H

void ag_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
