/* A minimal test harness: CHECK fails the test with file and line. */
#ifndef HS_CHECK_H
#define HS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        fprintf(stderr, "- %s\n", #fn);                                                            \
        fn();                                                                                      \
    } while (0)

#endif
