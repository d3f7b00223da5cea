/* Keystone v3: token request from OS_* variables, image endpoint from the catalog. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>

#include "keystone.h"
#include "util.h"

const char *hs__keystone_env(const char *name, const char *dflt)
{
    const char *v = getenv(name);

    return v && *v ? v : dflt;
}

char *hs__keystone_tokens_url(void)
{
    const char *auth = getenv("OS_AUTH_URL");
    size_t n = auth ? strlen(auth) : 0;
    int slash, v3;

    if (!n)
        return NULL;
    slash = auth[n - 1] == '/';
    v3 = n >= 3 + (size_t)slash && !strncmp(auth + n - 3 - slash, "/v3", 3);
    return hs__asprintf("%s%s%sauth/tokens", auth, slash ? "" : "/", v3 ? "" : "v3/");
}

/* {"id": ID} when the ID variable is set, else {"name": NAME or dflt} */
static void add_ref(cJSON *obj, const char *key, const char *id_var, const char *name_var,
                    const char *dflt)
{
    cJSON *ref = cJSON_AddObjectToObject(obj, key);
    const char *id = hs__keystone_env(id_var, NULL);

    if (id)
        cJSON_AddStringToObject(ref, "id", id);
    else
        cJSON_AddStringToObject(ref, "name", hs__keystone_env(name_var, dflt));
}

char *hs__keystone_body(void)
{
    cJSON *root = cJSON_CreateObject(), *auth = cJSON_AddObjectToObject(root, "auth");
    cJSON *id = cJSON_AddObjectToObject(auth, "identity");
    cJSON *methods = cJSON_AddArrayToObject(id, "methods");
    const char *acid = hs__keystone_env("OS_APPLICATION_CREDENTIAL_ID", NULL);
    char *s;

    if (acid) {
        cJSON *ac = cJSON_AddObjectToObject(id, "application_credential");

        /* an application credential carries its own scope */
        cJSON_AddItemToArray(methods, cJSON_CreateString("application_credential"));
        cJSON_AddStringToObject(ac, "id", acid);
        cJSON_AddStringToObject(ac, "secret", hs__keystone_env("OS_APPLICATION_CREDENTIAL_SECRET", ""));
    } else {
        cJSON *pw = cJSON_AddObjectToObject(id, "password");
        cJSON *user = cJSON_AddObjectToObject(pw, "user");
        cJSON *scope = cJSON_AddObjectToObject(auth, "scope");
        const char *uid = hs__keystone_env("OS_USER_ID", NULL), *pid = hs__keystone_env("OS_PROJECT_ID", NULL);

        cJSON_AddItemToArray(methods, cJSON_CreateString("password"));
        if (uid) {
            cJSON_AddStringToObject(user, "id", uid);
        } else {
            cJSON_AddStringToObject(user, "name", hs__keystone_env("OS_USERNAME", ""));
            add_ref(user, "domain", "OS_USER_DOMAIN_ID", "OS_USER_DOMAIN_NAME", "Default");
        }
        cJSON_AddStringToObject(user, "password", hs__keystone_env("OS_PASSWORD", ""));
        if (pid) {
            cJSON_AddStringToObject(cJSON_AddObjectToObject(scope, "project"), "id", pid);
        } else {
            cJSON *proj = cJSON_AddObjectToObject(scope, "project");

            cJSON_AddStringToObject(proj, "name", hs__keystone_env("OS_PROJECT_NAME", ""));
            add_ref(proj, "domain", "OS_PROJECT_DOMAIN_ID", "OS_PROJECT_DOMAIN_NAME", "Default");
        }
    }
    s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static double parse_time(const char *iso)
{
    struct tm tm = {0};
    int y, mo, d, h, mi;
    double sec;

    if (!iso || sscanf(iso, "%d-%d-%dT%d:%d:%lf", &y, &mo, &d, &h, &mi, &sec) != 6)
        return 0;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    return (double)timegm(&tm) + sec;
}

static const char *str(const cJSON *obj, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

int hs__keystone_catalog(const char *body, const char *iface_in, const char *region, char **url_out,
                         double *expires, struct hs_err *err)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL, *tok, *svc, *ep;
    char iface[32], regions[256] = "", red[512];
    const char *url = NULL, *url_region = NULL;
    int nregions = 0, rc = 0;
    size_t n;

    /* "publicURL" (the v2 catalog's spelling, still in many openrc files) is "public" */
    snprintf(iface, sizeof(iface), "%s", iface_in && *iface_in ? iface_in : "public");
    n = strlen(iface);
    if (n > 3 && !strcmp(iface + n - 3, "URL"))
        iface[n - 3] = '\0';
    tok = cJSON_GetObjectItemCaseSensitive(j, "token");
    cJSON_ArrayForEach(svc, cJSON_GetObjectItemCaseSensitive(tok, "catalog")) {
        const char *type = str(svc, "type");

        if (!type || strcmp(type, "image"))
            continue;
        cJSON_ArrayForEach(ep, cJSON_GetObjectItemCaseSensitive(svc, "endpoints")) {
            const char *i = str(ep, "interface"), *r = str(ep, "region");
            const char *u = str(ep, "url");

            if (!i || strcmp(i, iface) || !u)
                continue;
            if (!r)
                r = str(ep, "region_id");
            if (region && (!r || strcmp(r, region)))
                continue;
            if (url && url_region && r && !strcmp(url_region, r))
                continue; /* the first endpoint of a region */
            if (url && !region) {
                if (nregions++ == 1)
                    snprintf(regions, sizeof(regions), "%s", url_region ? url_region : "?");
                n = strlen(regions);
                snprintf(regions + n, sizeof(regions) - n, ", %s", r ? r : "?");
                continue;
            }
            url = u;
            url_region = r;
            nregions = 1;
        }
    }
    if (!url) {
        rc = hs_err_set(err, -EIO, HS_ERR_HTTP, 0, "Keystone gave no %s image endpoint%s%s", iface,
                        region ? " in region " : "", region ? region : "");
    } else if (nregions > 1) {
        rc = hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                        "Keystone's catalog has %s image endpoints in several regions (%s): set "
                        "OS_REGION_NAME",
                        iface, regions);
    } else if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)) {
        rc = hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                        "Keystone's image endpoint '%s' is not an http:// or https:// URL",
                        hs__url_redact(url, red, sizeof(red)));
    } else {
        char *s = hs__strdup(url);

        for (n = strlen(s); n && s[n - 1] == '/'; n--)
            s[n - 1] = '\0';
        *url_out = s;
        *expires = parse_time(str(tok, "expires_at"));
    }
    cJSON_Delete(j);
    return rc;
}
