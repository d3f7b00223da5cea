/*
 * The candidates for a store's one digest, timed through hotsnap's own
 * hs__digest_* on this CPU: 1 GiB of incompressible bytes hashed in 1 MiB
 * chunks (a stream's), best of 5, single thread. Prints one JSON line per
 * algorithm: {"algo", "mb_s", "cpu_s_per_gib"}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "digest.h"

#define CHUNK (1u << 20)
#define TOTAL (1024u * CHUNK)

static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
    static const enum hs_digest_algo algos[] = {HS_DIGEST_XXH128, HS_DIGEST_SHA256,
                                                HS_DIGEST_SHA512};
    unsigned char *buf = malloc(CHUNK);
    char hex[HS_DIGEST_HEX];
    size_t i, a, r, off;
    unsigned s = 1;

    if (!buf)
        return 1;
    for (i = 0; i < CHUNK; i++) {
        s = s * 1103515245u + 12345u;
        buf[i] = (unsigned char)(s >> 16);
    }
    for (a = 0; a < sizeof(algos) / sizeof(algos[0]); a++) {
        struct hs_digest d;
        double best = 1e9, t;

        hs__digest_init(&d, algos[a]);
        for (r = 0; r < 5; r++) {
            t = cpu_now();
            for (off = 0; off < TOTAL; off += CHUNK)
                hs__digest_update(&d, buf, CHUNK);
            hs__digest_final(&d, hex);
            t = cpu_now() - t;
            if (t < best)
                best = t;
        }
        hs__digest_free(&d);
        printf("{\"algo\": \"%s\", \"mb_s\": %.0f, \"cpu_s_per_gib\": %.3f}\n",
               hs__digest_name(algos[a]), (double)TOTAL / 1e6 / best, best);
    }
    free(buf);
    return 0;
}
