/*
 * Glance (image API v2) on curl multi: create the record, stream the file
 * (sha512 computed as the bytes go out, bounded memory), read the image
 * back and compare size and os_hash_value (Glance's default algorithm,
 * sha512; with another one configured, size only, and a warning). Transient failures (5xx,
 * connection errors) are retried with exponential backoff and jitter, on a
 * fresh record from byte 0; a failed upload deletes the record it created.
 *
 *   auth (Keystone, when no endpoint was given) -> create -> upload -> verify
 *
 * Credentials and tokens are never logged or put in messages.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/evp.h>

#include "http.h"
#include "uploader.h"
#include "util.h"
#define HS_LOG_TAG "glance"
#include "log.h"

#define GLANCE_BACKOFF_MS 500
#define GLANCE_BACKOFF_MAX_MS 8000
/* curl's upload buffer and our reads: 254 MB/s alone against curl -T's 268
 * (bench/upload.py); 256 KiB cost 270 KiB per open upload (engine-scale). */
#define GLANCE_CHUNK (64 * 1024)

struct glance {
    struct hs_http *http;
    char *url;            /* image endpoint, without a trailing slash; NULL until auth */
    char *token;          /* NULL: no auth */
    double token_expires; /* 0: never */
    double token_issued;
    int keystone;   /* authenticate from OS_* variables */
    char *image_id; /* client-chosen id */
    uint64_t max_rate;
    int attempts;
};

enum glance_step {
    G_AUTH,
    G_CREATE,
    G_UPLOAD,
    G_INFO,   /* plain upload forbidden (403): does Glance offer glance-direct import? */
    G_STAGE,  /* import: the data to the staging area */
    G_IMPORT, /* import: run it */
    G_VERIFY,
    G_DELETE,       /* after a failure, or before a retry */
    G_DELETE_STALE, /* a record whose delete failed while Glance was away */
    G_DONE,
};

struct glance_up {
    struct hs_http_req http;
    struct hs_upload_req *req;
    struct glance *g;
    enum glance_step step;
    char id[64];
    int created;
    int attempt;
    int reauthed;
    int canceled;
    int retry_after_delete;
    char stale[64]; /* a record to delete once Glance answers again */
    int importing;  /* the data goes by glance-direct import, not by a plain upload */
    double import_deadline;
    char forbidden[512]; /* the 403 that sent us to import, reported if import is not offered */
    FILE *f;
    EVP_MD_CTX *sha512;
    char sha512_hex[129];
    uv_timer_t backoff;
    int fail_code;
    char *body_json; /* create body */
};

static void gu_step(struct glance_up *u);
static void gu_free(uv_handle_t *h);

/* ---- messages ---- */

static const char *json_message(const char *body, char *buf, size_t len)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL, *m = NULL;

    buf[0] = '\0';
    if (j) {
        m = cJSON_GetObjectItemCaseSensitive(j, "message");
        if (!cJSON_IsString(m))
            m = cJSON_GetObjectItemCaseSensitive(j, "explanation");
        if (!cJSON_IsString(m) && cJSON_IsObject(j->child))
            m = cJSON_GetObjectItemCaseSensitive(j->child, "message");
        if (cJSON_IsString(m))
            snprintf(buf, len, "%s", m->valuestring);
        cJSON_Delete(j);
    } else if (body) {
        snprintf(buf, len, "%.200s", body);
    }
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return buf;
}

static int gu_http_error(struct glance_up *u, const char *what, long status)
{
    struct hs_upload_req *req = u->req;
    char msg[400], rid[128] = "";
    const char *why;

    json_message(u->http.body, msg, sizeof(msg));
    if (u->http.request_id[0])
        snprintf(rid, sizeof(rid), " (request %s)", u->http.request_id);
    switch (status) {
    case 401:
        why = "Glance refused the credentials";
        break;
    case 403:
        why = "forbidden by Glance's policy";
        break;
    case 404:
        why = "no such image";
        break;
    case 409:
        why = "the image does not accept data now (not queued, or another upload runs on it)";
        break;
    case 410:
        why = "the image was deleted during the upload";
        break;
    case 413:
        why =
            strstr(msg, "quota") ? "over the storage quota" : "larger than Glance's image size cap";
        break;
    case 415:
        why = "Glance refused the data's type";
        break;
    default:
        why = status >= 500 ? "Glance failed" : "unexpected answer";
        break;
    }
    return hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                      "%s of image '%s' failed: HTTP %ld, %s%s%s%s", what, req->name, status, why,
                      msg[0] ? ": " : "", msg, rid);
}

/* ---- auth (Keystone v3) ---- */

#define NEEDS_OS_AUTH                                                                              \
    "target 'glance' needs OS_AUTH_URL and the other OS_* variables (or glance:URL)"

/* OS_AUTH_URL's token endpoint ("/v3" added unless the URL ends with it);
 * NULL when the variable is unset. Caller frees. */
static char *keystone_tokens_url(void)
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

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);

    return v && *v ? v : dflt;
}

static char *keystone_body(void)
{
    cJSON *root = cJSON_CreateObject(), *auth = cJSON_AddObjectToObject(root, "auth");
    cJSON *id = cJSON_AddObjectToObject(auth, "identity");
    cJSON *methods = cJSON_AddArrayToObject(id, "methods");
    const char *acid = env_or("OS_APPLICATION_CREDENTIAL_ID", NULL);
    char *s;

    if (acid) {
        cJSON *ac = cJSON_AddObjectToObject(id, "application_credential");

        cJSON_AddItemToArray(methods, cJSON_CreateString("application_credential"));
        cJSON_AddStringToObject(ac, "id", acid);
        cJSON_AddStringToObject(ac, "secret", env_or("OS_APPLICATION_CREDENTIAL_SECRET", ""));
    } else {
        cJSON *pw = cJSON_AddObjectToObject(id, "password");
        cJSON *user = cJSON_AddObjectToObject(pw, "user");
        cJSON *scope = cJSON_AddObjectToObject(auth, "scope");
        cJSON *proj = cJSON_AddObjectToObject(scope, "project");

        cJSON_AddItemToArray(methods, cJSON_CreateString("password"));
        cJSON_AddStringToObject(user, "name", env_or("OS_USERNAME", ""));
        cJSON_AddStringToObject(cJSON_AddObjectToObject(user, "domain"), "name",
                                env_or("OS_USER_DOMAIN_NAME", "Default"));
        cJSON_AddStringToObject(user, "password", env_or("OS_PASSWORD", ""));
        cJSON_AddStringToObject(proj, "name", env_or("OS_PROJECT_NAME", ""));
        cJSON_AddStringToObject(cJSON_AddObjectToObject(proj, "domain"), "name",
                                env_or("OS_PROJECT_DOMAIN_NAME", "Default"));
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

/* The image endpoint from the token's catalog. */
static int keystone_parse(struct glance_up *u)
{
    struct glance *g = u->g;
    cJSON *j = cJSON_Parse(u->http.body), *tok, *cat, *svc, *ep;
    const char *iface = env_or("OS_INTERFACE", "public"), *region = env_or("OS_REGION_NAME", NULL);
    char *url = NULL;

    tok = cJSON_GetObjectItemCaseSensitive(j, "token");
    cat = cJSON_GetObjectItemCaseSensitive(tok, "catalog");
    cJSON_ArrayForEach(svc, cat) {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItem(svc, "type"));

        if (!type || strcmp(type, "image"))
            continue;
        cJSON_ArrayForEach(ep, cJSON_GetObjectItem(svc, "endpoints")) {
            const char *i = cJSON_GetStringValue(cJSON_GetObjectItem(ep, "interface"));
            const char *r = cJSON_GetStringValue(cJSON_GetObjectItem(ep, "region"));

            if (i && !strncmp(iface, i, strlen(i)) && (!region || (r && !strcmp(r, region))) &&
                !url)
                url = hs__strdup(cJSON_GetStringValue(cJSON_GetObjectItem(ep, "url")));
        }
    }
    if (!url || !u->http.subject_token[0]) {
        cJSON_Delete(j);
        free(url);
        return hs_err_set(&u->req->err, -EIO, HS_ERR_HTTP, 0,
                          "Keystone at '%s' gave no %s image endpoint%s%s", getenv("OS_AUTH_URL"),
                          iface, region ? " in region " : "", region ? region : "");
    }
    while (*url && url[strlen(url) - 1] == '/')
        url[strlen(url) - 1] = '\0';
    free(g->url);
    g->url = url;
    free(g->token);
    g->token = hs__strdup(u->http.subject_token);
    g->token_issued = hs__now();
    g->token_expires = parse_time(cJSON_GetStringValue(cJSON_GetObjectItem(tok, "expires_at")));
    cJSON_Delete(j);
    hs_log(HS_LOG_DEBUG, "token from Keystone, image endpoint '%s'", g->url);
    return 0;
}

/* Renew the token when a tenth of its life is left (at least 5 s, at most a minute). */
static int token_stale(const struct glance *g)
{
    double margin;

    if (!g->keystone)
        return 0;
    if (!g->token)
        return 1;
    if (g->token_expires <= 0)
        return 0;
    margin = (g->token_expires - g->token_issued) / 10;
    margin = margin < 5 ? 5 : margin > 60 ? 60 : margin;
    return hs__now() > g->token_expires - margin;
}

/* ---- requests ---- */

static void gu_done(struct hs_http_req *hr, CURLcode rc, long status);

static void gu_request(struct glance_up *u, const char *method, const char *url)
{
    u->http.data = u;
    hs__http_req_clear(&u->http);
    hs__http_req_init(&u->http, method, url);
    hs__http_header(&u->http, "Accept: application/json");
    hs__http_header(&u->http, "User-Agent: hotsnap");
    if (u->g->token && u->step != G_AUTH)
        hs__http_header(&u->http, "X-Auth-Token: %s", u->g->token);
}

static size_t gu_read_cb(char *buf, size_t size, size_t n, void *data)
{
    struct glance_up *u = data;
    size_t got;

    if (u->canceled)
        return CURL_READFUNC_ABORT;
    got = fread(buf, 1, size * n, u->f);
    if (got == 0 && ferror(u->f))
        return CURL_READFUNC_ABORT;
    EVP_DigestUpdate(u->sha512, buf, got);
    u->req->sent += got;
    if (got && u->req->on_progress)
        u->req->on_progress(u->req);
    return got;
}

static int gu_start_upload(struct glance_up *u)
{
    struct hs_upload_req *req = u->req;
    char *url =
        hs__asprintf("%s/v2/images/%s/%s", u->g->url, u->id, u->importing ? "stage" : "file");

    if (u->f)
        fclose(u->f);
    u->f = fopen(req->path, "rbe");
    if (!u->f) {
        free(url);
        return hs_err_set(&req->err, -errno, HS_ERR_SYS, errno, "cannot open '%s': %s", req->path,
                          strerror(errno));
    }
    setvbuf(u->f, NULL, _IOFBF, GLANCE_CHUNK);
    req->sent = 0;
    EVP_DigestInit_ex(u->sha512, EVP_sha512(), NULL);
    gu_request(u, "PUT", url);
    free(url);
    hs__http_header(&u->http, "Content-Type: application/octet-stream");
    curl_easy_setopt(u->http.easy, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(u->http.easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->size);
    curl_easy_setopt(u->http.easy, CURLOPT_READFUNCTION, gu_read_cb);
    curl_easy_setopt(u->http.easy, CURLOPT_READDATA, u);
    curl_easy_setopt(u->http.easy, CURLOPT_UPLOAD_BUFFERSIZE, (long)GLANCE_CHUNK);
    if (u->g->max_rate)
        curl_easy_setopt(u->http.easy, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t)u->g->max_rate);
    return 0;
}

static char *create_body(struct glance_up *u)
{
    struct hs_upload_req *req = u->req;
    cJSON *b = cJSON_CreateObject(), *it;
    char *s;

    cJSON_AddStringToObject(b, "name", req->name);
    cJSON_AddStringToObject(b, "disk_format", req->format);
    cJSON_AddStringToObject(b, "container_format", "bare");
    cJSON_AddStringToObject(b, "visibility", "private");
    if (u->g->image_id && u->attempt == 0)
        cJSON_AddStringToObject(b, "id", u->g->image_id);
    cJSON_ArrayForEach(it, req->props) {
        char num[32];

        if (!strncmp(it->string, "os_glance", 9) || cJSON_GetObjectItem(b, it->string))
            continue; /* reserved by Glance */
        if (!strcmp(it->string, "min_disk") || !strcmp(it->string, "min_ram"))
            cJSON_AddNumberToObject(b, it->string, it->valuedouble);
        else if (cJSON_IsString(it))
            cJSON_AddStringToObject(b, it->string, it->valuestring);
        else if (cJSON_IsNumber(it)) {
            snprintf(num, sizeof(num), "%.0f", it->valuedouble); /* extra properties are strings */
            cJSON_AddStringToObject(b, it->string, num);
        }
    }
    s = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    return s;
}

static void gu_step(struct glance_up *u)
{
    char *url;
    int rc = 0;

    switch (u->step) {
    case G_AUTH: {
        char *body;

        url = keystone_tokens_url();
        if (!url) {
            hs_err_set(&u->req->err, -EINVAL, HS_ERR_INPUT, 0, "%s", NEEDS_OS_AUTH);
            u->step = G_DONE;
            u->fail_code = -EINVAL;
            gu_step(u);
            return;
        }
        gu_request(u, "POST", url);
        free(url);
        body = keystone_body();
        hs__http_header(&u->http, "Content-Type: application/json");
        curl_easy_setopt(u->http.easy, CURLOPT_COPYPOSTFIELDS, body);
        free(body); /* copied: the password does not linger */
        break;
    }
    case G_CREATE:
        url = hs__asprintf("%s/v2/images", u->g->url);
        gu_request(u, "POST", url);
        free(url);
        free(u->body_json);
        u->body_json = create_body(u);
        hs__http_header(&u->http, "Content-Type: application/json");
        curl_easy_setopt(u->http.easy, CURLOPT_POSTFIELDS, u->body_json);
        break;
    case G_UPLOAD:
    case G_STAGE:
        rc = gu_start_upload(u);
        break;
    case G_INFO:
        url = hs__asprintf("%s/v2/info/import", u->g->url);
        gu_request(u, "GET", url);
        free(url);
        break;
    case G_IMPORT:
        url = hs__asprintf("%s/v2/images/%s/import", u->g->url, u->id);
        gu_request(u, "POST", url);
        free(url);
        hs__http_header(&u->http, "Content-Type: application/json");
        curl_easy_setopt(u->http.easy, CURLOPT_POSTFIELDS,
                         "{\"method\":{\"name\":\"glance-direct\"}}");
        break;
    case G_VERIFY:
        url = hs__asprintf("%s/v2/images/%s", u->g->url, u->id);
        gu_request(u, "GET", url);
        free(url);
        break;
    case G_DELETE:
    case G_DELETE_STALE:
        url = hs__asprintf("%s/v2/images/%s", u->g->url, u->step == G_DELETE ? u->id : u->stale);
        gu_request(u, "DELETE", url);
        free(url);
        break;
    case G_DONE: {
        struct hs_upload_req *req = u->req;
        int code = u->fail_code;

        if (u->stale[0]) {
            hs_log(HS_LOG_WARN, "image %s ('%s') could not be deleted; it is left behind", u->stale,
                   req->name);
            snprintf(req->left_behind, sizeof(req->left_behind), "%s", u->stale);
        }
        if (u->f)
            fclose(u->f);
        u->f = NULL;
        hs__http_req_clear(&u->http);
        if (code == 0) {
            snprintf(req->image_id, sizeof(req->image_id), "%s", u->id);
            req->location = hs__asprintf("%s/v2/images/%s", u->g->url, u->id);
        }
        req->priv = NULL;
        /* u is freed once its timer closed; the request is the caller's again */
        uv_close((uv_handle_t *)&u->backoff, gu_free);
        req->cb(req, code);
        return;
    }
    }
    if (rc == 0)
        rc = hs__http_start(u->g->http, &u->http, gu_done);
    if (rc < 0) {
        hs_err_set(&u->req->err, rc, HS_ERR_SYS, -rc, "cannot start an HTTP request");
        u->fail_code = u->req->err.code;
        u->step = G_DONE;
        gu_step(u);
    }
}

/* Leave with the error recorded in the request, deleting the record made. */
static void gu_fail(struct glance_up *u)
{
    u->fail_code = u->req->err.code ? u->req->err.code : -EIO;
    u->step = u->created ? G_DELETE : G_DONE;
    gu_step(u);
}

static void gu_poll_cb(uv_timer_t *t)
{
    struct glance_up *u = t->data;

    u->step = G_VERIFY;
    gu_step(u);
}

static void gu_backoff_cb(uv_timer_t *t)
{
    struct glance_up *u = t->data;

    u->step = token_stale(u->g) ? G_AUTH : G_CREATE;
    gu_step(u);
}

/* A transient failure: start over on a fresh record after a backoff, or give up. */
static void gu_retry(struct glance_up *u, const char *why)
{
    unsigned jitter = 0;
    uint64_t delay;

    if (++u->attempt >= u->g->attempts || u->canceled) {
        if (!u->req->err.code)
            hs_err_set(&u->req->err, -EIO, HS_ERR_HTTP, 0,
                       "upload of image '%s' failed after %d attempts: %s", u->req->name,
                       u->attempt, why);
        gu_fail(u);
        return;
    }
    hs_log(HS_LOG_INFO, "upload of '%s': %s; try %d of %d", u->req->name, why, u->attempt + 1,
           u->g->attempts);
    delay = GLANCE_BACKOFF_MS << (u->attempt - 1);
    if (delay > GLANCE_BACKOFF_MAX_MS)
        delay = GLANCE_BACKOFF_MAX_MS;
    if (getrandom(&jitter, sizeof(jitter), 0) == sizeof(jitter))
        delay += jitter % (delay / 2 + 1);
    if (u->created) {
        /* the old record cannot take data again: delete it, then start over */
        u->retry_after_delete = 1;
        u->step = G_DELETE;
        gu_step(u);
        return;
    }
    uv_timer_start(&u->backoff, gu_backoff_cb, delay, 0);
}

static int transient(CURLcode rc, long status)
{
    if (rc != CURLE_OK)
        return rc != CURLE_ABORTED_BY_CALLBACK;
    return status >= 500 || status == 0;
}

static void gu_done(struct hs_http_req *hr, CURLcode rc, long status)
{
    struct glance_up *u = hr->data;
    struct hs_upload_req *req = u->req;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len;
    char why[300];
    cJSON *j, *it;

    if (rc != CURLE_OK || status == 0)
        snprintf(why, sizeof(why), "%s", hr->errbuf[0] ? hr->errbuf : curl_easy_strerror(rc));
    else
        snprintf(why, sizeof(why), "HTTP %ld", status);

    if (u->step == G_DELETE_STALE) {
        if (rc != CURLE_OK || (status >= 300 && status != 404))
            hs_log(HS_LOG_WARN, "image %s ('%s') could not be deleted (%s); it is left behind",
                   u->stale, req->name, why);
        u->stale[0] = '\0';
        u->step = token_stale(u->g) ? G_AUTH : G_UPLOAD;
        gu_step(u);
        return;
    }
    if (u->step == G_DELETE) {
        if ((rc != CURLE_OK || status >= 500) && u->retry_after_delete && !u->canceled) {
            /* Glance is away: delete it once Glance answers again */
            snprintf(u->stale, sizeof(u->stale), "%s", u->id);
        } else if (rc != CURLE_OK || (status >= 300 && status != 404)) {
            hs_log(HS_LOG_WARN, "image %s ('%s') could not be deleted (%s); it is left behind",
                   u->id, req->name, why);
            snprintf(req->left_behind, sizeof(req->left_behind), "%s", u->id);
        }
        u->created = 0;
        if (u->retry_after_delete && !u->canceled) {
            u->retry_after_delete = 0;
            u->attempt--; /* counted already */
            gu_retry(u, "retrying");
            return;
        }
        u->step = G_DONE;
        gu_step(u);
        return;
    }
    if (u->canceled || rc == CURLE_ABORTED_BY_CALLBACK) {
        hs_err_set(&req->err, -ECANCELED, HS_ERR_CANCELED, 0, "upload of image '%s' canceled",
                   req->name);
        gu_fail(u);
        return;
    }
    if (transient(rc, status)) {
        gu_retry(u, why);
        return;
    }
    if (status == 401 && u->g->keystone && !u->reauthed && u->step != G_AUTH) {
        u->reauthed = 1;
        free(u->g->token);
        u->g->token = NULL;
        if (u->created) {
            u->retry_after_delete = 1;
            u->step = G_DELETE;
        } else {
            u->step = G_AUTH;
        }
        gu_step(u);
        return;
    }
    if (status == 403 && u->step == G_UPLOAD && !u->importing) {
        /* plain upload forbidden by policy: interoperable import, if offered */
        hs_err_clear(&req->err);
        gu_http_error(u, "upload", status);
        snprintf(u->forbidden, sizeof(u->forbidden), "%s", req->err.msg);
        hs_err_clear(&req->err);
        u->step = G_INFO;
        gu_step(u);
        return;
    }
    if (status >= 300) {
        gu_http_error(u,
                      u->step == G_AUTH     ? "authentication for the upload"
                      : u->step == G_CREATE ? "creation"
                      : u->step == G_UPLOAD ? "upload"
                      : u->step == G_STAGE  ? "staging"
                      : u->step == G_IMPORT ? "import"
                      : u->step == G_INFO   ? "import discovery"
                                            : "check",
                      status);
        gu_fail(u);
        return;
    }
    switch (u->step) {
    case G_AUTH:
        if (keystone_parse(u) < 0) {
            u->fail_code = req->err.code;
            u->step = G_DONE;
        } else {
            u->step = G_CREATE;
        }
        break;
    case G_CREATE:
        j = cJSON_Parse(hr->body);
        snprintf(u->id, sizeof(u->id), "%s",
                 cJSON_GetStringValue(cJSON_GetObjectItem(j, "id")) ?: "");
        cJSON_Delete(j);
        if (!u->id[0]) {
            u->fail_code = hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                                      "Glance created image '%s' but gave no id", req->name);
            u->step = G_DONE;
            break;
        }
        u->created = 1;
        hs_log(HS_LOG_DEBUG, "image %s created for '%s'", u->id, req->name);
        u->step = u->stale[0] ? G_DELETE_STALE : token_stale(u->g) ? G_AUTH : G_UPLOAD;
        break;
    case G_UPLOAD:
    case G_STAGE:
        EVP_DigestFinal_ex(u->sha512, md, &len);
        hs__hex(md, len, u->sha512_hex);
        u->step = u->importing ? G_IMPORT : G_VERIFY;
        break;
    case G_INFO: {
        cJSON *m;
        int offered = 0;

        j = cJSON_Parse(hr->body);
        m = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "import-methods"), "value");
        cJSON_ArrayForEach(it, m) {
            if (cJSON_IsString(it) && !strcmp(it->valuestring, "glance-direct"))
                offered = 1;
        }
        cJSON_Delete(j);
        if (!offered) {
            hs_err_set(&req->err, -EACCES, HS_ERR_HTTP, 403,
                       "%s (and Glance offers no glance-direct import)", u->forbidden);
            gu_fail(u);
            return;
        }
        hs_log(HS_LOG_INFO, "upload of '%s' forbidden; using glance-direct import", req->name);
        u->importing = 1;
        u->step = G_STAGE;
        break;
    }
    case G_IMPORT:
        /* the import runs in Glance: wait for the image to become active */
        u->import_deadline = hs__now() + 60 + (double)req->size / 10e6;
        u->step = G_VERIFY;
        break;
    case G_VERIFY: {
        const char *st, *algo, *val, *failed_import;
        double size;

        j = cJSON_Parse(hr->body);
        st = cJSON_GetStringValue(cJSON_GetObjectItem(j, "status"));
        failed_import = cJSON_GetStringValue(cJSON_GetObjectItem(j, "os_glance_failed_import"));
        if (u->importing && failed_import && *failed_import) {
            hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                       "glance-direct import of image %s ('%s') failed in Glance", u->id,
                       req->name);
            cJSON_Delete(j);
            gu_fail(u);
            return;
        }
        if (u->importing && st &&
            (!strcmp(st, "importing") || !strcmp(st, "uploading") || !strcmp(st, "queued")) &&
            hs__now() < u->import_deadline) {
            cJSON_Delete(j);
            uv_timer_start(&u->backoff, gu_poll_cb, 500, 0);
            return;
        }
        algo = cJSON_GetStringValue(cJSON_GetObjectItem(j, "os_hash_algo"));
        val = cJSON_GetStringValue(cJSON_GetObjectItem(j, "os_hash_value"));
        size = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "size"));
        if (!st || strcmp(st, "active"))
            hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                       "image %s ('%s') is '%s' after its upload, not active", u->id, req->name,
                       st ? st : "?");
        else if (isnan(size) || (uint64_t)size != req->size)
            hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                       "image %s ('%s') holds %.0f bytes, %llu were sent", u->id, req->name, size,
                       (unsigned long long)req->size);
        else if (!algo || strcmp(algo, "sha512"))
            /* md5 as well would cost a second hash of every byte on the loop */
            hs_log(HS_LOG_WARN,
                   "image %s ('%s'): Glance hashes with %s, not sha512; checked by "
                   "size only",
                   u->id, req->name, algo ? algo : "nothing");
        else if (!val || strcmp(val, u->sha512_hex))
            hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                       "image %s ('%s'): Glance's sha512 differs from the bytes sent", u->id,
                       req->name);
        cJSON_Delete(j);
        u->fail_code = req->err.code;
        u->step = u->fail_code ? G_DELETE : G_DONE;
        break;
    }
    case G_DELETE:
    case G_DELETE_STALE:
    case G_DONE:
        break;
    }
    gu_step(u);
}

static void gu_free(uv_handle_t *h)
{
    struct glance_up *u = h->data;

    EVP_MD_CTX_free(u->sha512);
    free(u->body_json);
    free(u);
}

static int glance_begin(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb)
{
    struct glance *g = up->ctx;
    struct glance_up *u = hs__calloc(1, sizeof(*u));

    req->up = up;
    req->cb = cb;
    req->sent = 0;
    u->req = req;
    u->g = g;
    u->sha512 = EVP_MD_CTX_new();
    if (!u->sha512)
        abort();
    uv_timer_init(up->loop, &u->backoff);
    u->backoff.data = u;
    req->priv = u;
    /* the first request starts on the next iteration: cb never runs inside begin */
    uv_timer_start(&u->backoff, gu_backoff_cb, 0, 0);
    return 0;
}

static void glance_cancel(struct hs_upload_req *req)
{
    struct glance_up *u = req->priv;

    if (!u || u->canceled)
        return;
    u->canceled = 1;
    if (uv_is_active((uv_handle_t *)&u->backoff)) {
        uv_timer_stop(&u->backoff);
        hs_err_set(&req->err, -ECANCELED, HS_ERR_CANCELED, 0, "upload of image '%s' canceled",
                   req->name);
        gu_fail(u);
        return;
    }
    if (u->step != G_DELETE)
        hs__http_cancel(&u->http);
}

static int glance_check(struct hs_uploader *up, struct hs_err *err)
{
    return 0; /* the endpoint answers or not when the image is created */
}

static void glance_destroy(struct hs_uploader *up)
{
    struct glance *g = up->ctx;

    free(g->url);
    free(g->token);
    free(g->image_id);
    free(g);
}

int hs__glance_new(const struct hs_uploader_env *env, const char *url, struct hs_uploader *up,
                   struct hs_err *err)
{
    struct glance *g;
    const char *auth = getenv("OS_AUTH_URL");

    if (!env->http)
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "no HTTP client for glance");
    if (url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "glance endpoint '%s' is not an http:// or https:// URL", url);
    if (!url && (!auth || !*auth))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "%s", NEEDS_OS_AUTH);
    g = hs__calloc(1, sizeof(*g));
    g->http = env->http;
    g->keystone = url == NULL;
    if (url) {
        g->url = hs__strdup(url);
        while (g->url[0] && g->url[strlen(g->url) - 1] == '/')
            g->url[strlen(g->url) - 1] = '\0';
    }
    g->token = env->token ? hs__strdup(env->token) : NULL;
    g->image_id = env->image_id ? hs__strdup(env->image_id) : NULL;
    g->max_rate = env->max_rate;
    g->attempts = env->attempts > 0 ? env->attempts : 5;
    up->ctx = g;
    return 0;
}

const struct hs_uploader_ops hs_uploader_glance = {
    .name = "glance",
    .check = glance_check,
    .begin = glance_begin,
    .cancel = glance_cancel,
    .destroy = glance_destroy,
};
