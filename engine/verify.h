/* One image of a store checked against its sidecar (engine/verify.c). */
#ifndef HS_VERIFY_H
#define HS_VERIFY_H

#include <stddef.h>

/* Worker: the image the sidecar @sidecar ("<id>.json", at @dirfd) names is
 * read again and its size and digest compared with what the sidecar
 * records. 0 when intact; else -1 and the reason in @why. The image's file
 * name (as the sidecar gives it) goes into @file_out. */
int hs__verify_image(int dirfd, const char *sidecar, char *file_out, size_t file_len, char *why,
                     size_t why_len);

#endif
