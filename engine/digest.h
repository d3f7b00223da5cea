/*
 * The one digest of an image's bytes, taken as they stream: sha512 (what
 * Glance reports as os_hash_value), sha256, or XXH3's 128-bit hash
 * (libxxhash) for a local store. Not thread-safe: one thread at a time
 * (the streams hash chunk after chunk on the worker pool, in order).
 */
#ifndef HS_DIGEST_H
#define HS_DIGEST_H

#include <stddef.h>

enum hs_digest_algo {
    HS_DIGEST_SHA512,
    HS_DIGEST_SHA256,
    HS_DIGEST_XXH128,
};

#define HS_DIGEST_HEX 129 /* the longest, sha512, in hex with its NUL */

struct hs_digest {
    enum hs_digest_algo algo;
    void *ctx; /* an EVP_MD_CTX, or an XXH3_state_t */
};

/* "sha512", "sha256" or "xxh128" (Glance's os_hash_algo spelling for the
 * first two); 0 or -EINVAL. */
int hs__digest_parse(const char *s, enum hs_digest_algo *out);
const char *hs__digest_name(enum hs_digest_algo algo);
/* Ready for the first byte; aborts when out of memory, as the allocators do. */
void hs__digest_init(struct hs_digest *d, enum hs_digest_algo algo);
/* From the first byte again. */
void hs__digest_reset(struct hs_digest *d);
void hs__digest_update(struct hs_digest *d, const void *p, size_t n);
/* The digest of every byte so far, lower-case hex; the digest is then reset. */
void hs__digest_final(struct hs_digest *d, char hex[HS_DIGEST_HEX]);
void hs__digest_free(struct hs_digest *d);

#endif
