/*
 * The test guest's writer: rewrites a ring of 4 KiB blocks on one or more
 * disks in order, one O_DIRECT write at a time, round robin over the disks
 * (write s goes to disk s % ndisks, block (s / ndisks) % BLOCKS), each block
 * carrying the global sequence number, its position, the guest time and a
 * CRC over the whole block. A copy of the disks taken at one instant holds,
 * for some M, exactly the latest write with sequence <= M in every block of
 * every disk (checker.py); a torn block fails its CRC, a fuzzy copy (read
 * while the writer went on) holds blocks from several instants. Every second
 * it prints "HSW hb <seq> <max gap us>" on the console.
 *
 * usage: writer DEV[,DEV...] BLOCKS RATE   (RATE writes/s, 0 = as fast as it can)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BS 4096

static uint32_t crc_table[256];

static void crc_init(void)
{
    uint32_t c;
    int i, k;

    for (i = 0; i < 256; i++) {
        c = (uint32_t)i;
        for (k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;

    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    unsigned char *b;
    uint64_t seq, blocks, rate, t, last, hb, gap, maxgap = 0, period;
    uint32_t crc;
    int fds[8], nfd = 0;
    char *dev, *save = NULL;
    size_t i;

    if (argc != 4) {
        fprintf(stderr, "usage: writer DEVICE BLOCKS RATE\n");
        return 2;
    }
    blocks = strtoull(argv[2], NULL, 10);
    rate = strtoull(argv[3], NULL, 10);
    period = rate ? 1000000000ull / rate : 0;
    crc_init();
    for (dev = strtok_r(argv[1], ",", &save); dev && nfd < 8; dev = strtok_r(NULL, ",", &save)) {
        fds[nfd] = open(dev, O_RDWR | O_DIRECT);
        if (fds[nfd++] < 0) {
            perror(dev);
            return 1;
        }
    }
    if (nfd == 0 || posix_memalign((void **)&b, BS, BS)) {
        perror("writer");
        return 1;
    }
    printf("HSW start %llu blocks\n", (unsigned long long)blocks);
    fflush(stdout);
    last = hb = now_ns();
    for (seq = 0;; seq++) {
        uint64_t idx = (seq / (uint64_t)nfd) % blocks;
        int fd = fds[seq % (uint64_t)nfd];

        t = now_ns();
        memset(b, 0, 64);
        memcpy(b, "HSWRITE1", 8);
        memcpy(b + 8, &seq, 8);
        memcpy(b + 16, &idx, 8);
        memcpy(b + 24, &t, 8);
        for (i = 64; i < BS; i++)
            b[i] = (unsigned char)((seq * 2654435761u + i) >> 3);
        crc = crc32(b, BS);
        memcpy(b + 32, &crc, 4);
        if (pwrite(fd, b, BS, (off_t)(idx * BS)) != BS) {
            perror("writer: pwrite");
            return 1;
        }
        t = now_ns();
        gap = t - last;
        if (gap > maxgap)
            maxgap = gap;
        last = t;
        if (t - hb >= 1000000000ull) {
            printf("HSW hb %llu %llu\n", (unsigned long long)seq,
                   (unsigned long long)(maxgap / 1000));
            fflush(stdout);
            hb = t;
            maxgap = 0;
        }
        if (period) {
            struct timespec ts = {0, (long)period};
            nanosleep(&ts, NULL);
            last = now_ns(); /* the sleep is ours, not a stall */
        }
    }
}
