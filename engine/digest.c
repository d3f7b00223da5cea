#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "digest.h"
#include "util.h"

static const char *const names[] = {
    [HS_DIGEST_SHA512] = "sha512",
    [HS_DIGEST_SHA256] = "sha256",
    [HS_DIGEST_XXH128] = "xxh128",
};

int hs__digest_parse(const char *s, enum hs_digest_algo *out)
{
    size_t i;

    for (i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
        if (!strcmp(s, names[i])) {
            *out = (enum hs_digest_algo)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *hs__digest_name(enum hs_digest_algo algo)
{
    return names[algo];
}

void hs__digest_init(struct hs_digest *d, enum hs_digest_algo algo)
{
    d->algo = algo;
    d->ctx = algo == HS_DIGEST_XXH128 ? (void *)XXH3_createState() : (void *)EVP_MD_CTX_new();
    if (!d->ctx)
        abort();
    hs__digest_reset(d);
}

void hs__digest_reset(struct hs_digest *d)
{
    int ok;

    switch (d->algo) {
    case HS_DIGEST_XXH128:
        ok = XXH3_128bits_reset(d->ctx) == XXH_OK;
        break;
    case HS_DIGEST_SHA256:
        ok = EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL);
        break;
    default:
        ok = EVP_DigestInit_ex(d->ctx, EVP_sha512(), NULL);
        break;
    }
    if (!ok)
        abort();
}

void hs__digest_update(struct hs_digest *d, const void *p, size_t n)
{
    if (d->algo == HS_DIGEST_XXH128)
        XXH3_128bits_update(d->ctx, p, n);
    else
        EVP_DigestUpdate(d->ctx, p, n);
}

void hs__digest_final(struct hs_digest *d, char hex[HS_DIGEST_HEX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len;

    if (d->algo == HS_DIGEST_XXH128) {
        XXH128_canonical_t c;

        /* big-endian, as xxhsum -H2 prints it */
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(d->ctx));
        hs__hex(c.digest, sizeof(c.digest), hex);
    } else {
        EVP_DigestFinal_ex(d->ctx, md, &len);
        hs__hex(md, len, hex);
    }
    hs__digest_reset(d);
}

void hs__digest_free(struct hs_digest *d)
{
    if (!d->ctx)
        return;
    if (d->algo == HS_DIGEST_XXH128)
        XXH3_freeState(d->ctx);
    else
        EVP_MD_CTX_free(d->ctx);
    d->ctx = NULL;
}
