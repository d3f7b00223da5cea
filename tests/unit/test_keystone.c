/* Keystone: the token request from OS_* variables and the image endpoint from a catalog. */
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "check.h"
#include "err.h"
#include "keystone.h"

static const char *const os_vars[] = {
    "OS_AUTH_URL",         "OS_USERNAME",          "OS_USER_ID",
    "OS_PASSWORD",         "OS_PROJECT_NAME",      "OS_PROJECT_ID",
    "OS_USER_DOMAIN_NAME", "OS_USER_DOMAIN_ID",    "OS_PROJECT_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_ID", "OS_APPLICATION_CREDENTIAL_ID",
};

static void clear_env(void)
{
    size_t i;

    for (i = 0; i < sizeof(os_vars) / sizeof(os_vars[0]); i++)
        unsetenv(os_vars[i]);
}

static const char *path(cJSON *j, const char *const *keys)
{
    for (; *keys; keys++)
        j = cJSON_GetObjectItemCaseSensitive(j, *keys);
    return cJSON_GetStringValue(j);
}

#define PATH(j, ...) path((j), (const char *const[]){__VA_ARGS__, NULL})

static void test_body_names_and_ids(void)
{
    char *s;
    cJSON *j;

    clear_env();
    setenv("OS_USERNAME", "alice", 1);
    setenv("OS_PASSWORD", "pw", 1);
    setenv("OS_PROJECT_NAME", "demo", 1);
    setenv("OS_USER_DOMAIN_ID", "d-user", 1);
    setenv("OS_PROJECT_DOMAIN_NAME", "Projects", 1);
    s = hs__keystone_body();
    j = cJSON_Parse(s);
    CHECK(j);
    CHECK(!strcmp(PATH(j, "auth", "identity", "password", "user", "name"), "alice"));
    CHECK(!strcmp(PATH(j, "auth", "identity", "password", "user", "domain", "id"), "d-user"));
    CHECK(!PATH(j, "auth", "identity", "password", "user", "domain", "name"));
    CHECK(!strcmp(PATH(j, "auth", "scope", "project", "name"), "demo"));
    CHECK(!strcmp(PATH(j, "auth", "scope", "project", "domain", "name"), "Projects"));
    cJSON_Delete(j);
    free(s);

    /* ids win over names: no domain is needed then */
    setenv("OS_USER_ID", "u-1", 1);
    setenv("OS_PROJECT_ID", "p-1", 1);
    s = hs__keystone_body();
    j = cJSON_Parse(s);
    CHECK(!strcmp(PATH(j, "auth", "identity", "password", "user", "id"), "u-1"));
    CHECK(!cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(
                                   cJSON_GetObjectItem(j, "auth"), "identity"), "password"), "user"),
                               "domain"));
    CHECK(!strcmp(PATH(j, "auth", "scope", "project", "id"), "p-1"));
    CHECK(!PATH(j, "auth", "scope", "project", "name"));
    cJSON_Delete(j);
    free(s);
    clear_env();
}

static void test_tokens_url(void)
{
    char *u;

    clear_env();
    CHECK(hs__keystone_tokens_url() == NULL);
    setenv("OS_AUTH_URL", "http://k:5000", 1);
    u = hs__keystone_tokens_url();
    CHECK(!strcmp(u, "http://k:5000/v3/auth/tokens"));
    free(u);
    setenv("OS_AUTH_URL", "http://k:5000/v3/", 1);
    u = hs__keystone_tokens_url();
    CHECK(!strcmp(u, "http://k:5000/v3/auth/tokens"));
    free(u);
    clear_env();
}

static char *catalog(const char *endpoints)
{
    static char buf[4096];

    snprintf(buf, sizeof(buf),
             "{\"token\":{\"expires_at\":\"2026-12-01T10:00:15.000000Z\",\"catalog\":["
             "{\"type\":\"identity\",\"endpoints\":[{\"interface\":\"public\",\"region\":\"R1\","
             "\"url\":\"http://k/v3\"}]},"
             "{\"type\":\"image\",\"endpoints\":[%s]}]}}",
             endpoints);
    return buf;
}

#define EP(iface, region, url)                                                                     \
    "{\"interface\":\"" iface "\",\"region\":\"" region "\",\"url\":\"" url "\"}"

static void test_catalog(void)
{
    struct hs_err err = {0};
    char *url = NULL;
    double exp = 0;
    const char *two = catalog(EP("internal", "R1", "http://g1-int:9292") ","
                              EP("public", "R1", "http://g1:9292/") ","
                              EP("public", "R2", "http://g2:9292"));

    /* the region named, the interface named */
    CHECK(hs__keystone_catalog(two, "public", "R2", &url, &exp, &err) == 0);
    CHECK(!strcmp(url, "http://g2:9292"));
    CHECK(exp > 1.79e9);
    free(url);
    /* "publicURL" is "public"; no trailing slash */
    CHECK(hs__keystone_catalog(two, "publicURL", "R1", &url, &exp, &err) == 0);
    CHECK(!strcmp(url, "http://g1:9292"));
    free(url);
    CHECK(hs__keystone_catalog(two, "internal", NULL, &url, &exp, &err) == 0);
    CHECK(!strcmp(url, "http://g1-int:9292"));
    free(url);
    /* two regions and none named: no silent choice */
    url = NULL;
    CHECK(hs__keystone_catalog(two, "public", NULL, &url, &exp, &err) < 0);
    CHECK(url == NULL);
    CHECK(strstr(err.msg, "several regions (R1, R2)") && strstr(err.msg, "OS_REGION_NAME"));
    hs_err_clear(&err);
    /* a region with no image endpoint */
    CHECK(hs__keystone_catalog(two, "public", "R3", &url, &exp, &err) < 0);
    CHECK(strstr(err.msg, "no public image endpoint in region R3"));
    hs_err_clear(&err);
    /* only the web: a file:// endpoint is refused, credentials in it not echoed */
    CHECK(hs__keystone_catalog(catalog(EP("public", "R1", "file://u:pw@h/etc/passwd")), "public",
                               NULL, &url, &exp, &err) < 0);
    CHECK(strstr(err.msg, "not an http:// or https:// URL"));
    CHECK(!strstr(err.msg, "pw"));
    hs_err_clear(&err);
    /* garbage */
    CHECK(hs__keystone_catalog("not json", "public", NULL, &url, &exp, &err) < 0);
    hs_err_clear(&err);
    CHECK(hs__keystone_catalog(NULL, "public", NULL, &url, &exp, &err) < 0);
    hs_err_clear(&err);
}

int main(void)
{
    RUN(test_tokens_url);
    RUN(test_body_names_and_ids);
    RUN(test_catalog);
    return 0;
}
