/*
 * Keystone v3 for the glance uploader: the token request made from the OS_*
 * variables an operator's openrc sets, and the image endpoint picked from the
 * token's catalog. No I/O here: the uploader sends and receives.
 */
#ifndef HS_KEYSTONE_H
#define HS_KEYSTONE_H

#include "err.h"

/* The OS_* variable @name, or @dflt when it is unset or empty. */
const char *hs__keystone_env(const char *name, const char *dflt);

/* OS_AUTH_URL's token endpoint ("/v3" added unless the URL ends with it);
 * NULL when the variable is unset. Caller frees. */
char *hs__keystone_tokens_url(void);

/* The POST body of a token request: an application credential
 * (OS_APPLICATION_CREDENTIAL_ID/_SECRET) or a password, the user by
 * OS_USER_ID or OS_USERNAME in OS_USER_DOMAIN_ID or _NAME, scoped to
 * OS_PROJECT_ID or OS_PROJECT_NAME in OS_PROJECT_DOMAIN_ID or _NAME.
 * Caller frees (and should not keep it: it holds the secret). */
char *hs__keystone_body(void);

/* From a token response @body, the image endpoint of interface @iface
 * ("public", "internal", "admin"; "publicURL" and the like accepted) in
 * @region, or in the only region that has one when @region is NULL. The URL
 * must be http:// or https://. On success *url (caller frees, no trailing
 * slash) and *expires (seconds since the epoch; 0: not given). */
int hs__keystone_catalog(const char *body, const char *iface, const char *region, char **url,
                         double *expires, struct hs_err *err);

#endif
