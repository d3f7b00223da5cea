/*
 * Glance (image API v2) on curl multi. Every record hotsnap makes has an id
 * it chose itself, so a create retried after a lost answer is a 409 on its
 * own id, never a second record; and every record made is accounted for:
 * published, deleted, or reported as left behind.
 *
 *   [auth] -> create -> upload -> verify -> done
 *
 * - Auth is a precondition of every request: a token near its end is renewed
 *   first, and a 401 renews it once and repeats the same step.
 * - create: 201; or 409 -> adopt: a record with our id that is ours (same
 *   hotsnap_job and hotsnap_disk) is taken up where it is; else the id is
 *   someone else's.
 * - upload: a transient failure (5xx, connection error, no progress for the
 *   stall timeout) -> backoff -> check the record: queued -> upload again into
 *   it; active with every byte sent -> verify; saving -> check again later;
 *   anything else -> the record is doomed and a new one made.
 * - verify: active, size, and the hash: sha512 (Glance's default), or the
 *   algorithm this Glance was seen to use (os_hash_algo, learned by the
 *   engine: the image that shows another one is checked by size, with a
 *   warning, and the next are hashed with it). Only this step succeeds.
 * - On failure or cancel every doomed record is deleted; one that cannot be
 *   is reported (a warning and req->left_behind).
 *
 * The image is a stream (engine/stream.h: a file read ahead, or an NBD
 * export laid out as it is read), hashed on the worker pool: the loop only
 * hands bytes to curl, which pauses while the stream has none ready. A
 * retry starts the stream again from byte 0. Credentials and tokens are
 * never logged or put in messages.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "http.h"
#include "keystone.h"
#include "stream.h"
#include "uploader.h"
#include "util.h"
#define HS_LOG_TAG "glance"
#include "log.h"

#define GLANCE_BACKOFF_MS 500
#define GLANCE_BACKOFF_MAX_MS 8000
/* Glance away (refused, unreachable, 502/503/504): tried again, backing off
 * to 16 s, for the target's outage_s before the upload gives up; a restart
 * (an upgrade) is routine and such tries do not count against the attempts */
#define GLANCE_OUTAGE_BACKOFF_MAX_MS 16000
/* curl's upload buffer and our reads (bench/upload.py 3 64K,256K,1M): with
 * 8 uploads at once 128 MB/s against 116 with 64 KiB and curl -T's 133,
 * alone the same within the runs' spread; 192 KiB more per open upload
 * (4 at once by default: 1 MiB in all). */
#define GLANCE_CHUNK (256 * 1024)
#define GLANCE_MAX_DOOMED 8

struct glance {
    struct hs_http *http;
    char *url;            /* image endpoint, without a trailing slash; NULL until auth */
    char *token;          /* NULL: no auth */
    double token_expires; /* 0: never */
    double token_issued;
    int keystone;   /* authenticate from OS_* variables */
    char *image_id; /* the operator's id for the (only) image */
    uint64_t max_rate;
    int attempts;
    int outage_s; /* 0: an outage's tries count as attempts */
    int stall_s;
};

enum glance_step {
    G_AUTH,
    G_CREATE,
    G_ADOPT, /* create said 409: is the record with our id ours? */
    G_UPLOAD,
    G_CHECK,  /* after a failed upload: what became of the record? */
    G_INFO,   /* plain upload forbidden (403): does Glance offer glance-direct import? */
    G_STAGE,  /* import: the data to the staging area */
    G_IMPORT, /* import: run it */
    G_VERIFY,
    G_DELETE, /* the doomed records, one request each */
    G_RECLAIM, /* a dead run's record: is it there, and ours? */
    G_ROTATE,  /* published backup: the instance's backups of its type listed */
    G_ROTDEL,  /* ... and those beyond the rotation deleted, one request each */
    G_DONE,
};

static const char *const step_names[] = {
    "authentication for the upload", "creation", "creation", "upload", "check", "import discovery",
    "staging", "import", "check", "deletion", "lookup", "rotation", "rotation", "upload",
};

struct glance_up {
    struct hs_http_req http;
    struct hs_upload_req *req;
    struct glance *g;
    enum glance_step step;
    enum glance_step resume;       /* what auth or a backoff leads back to */
    enum glance_step after_delete; /* where a pass over the doomed records leads */
    char id[64];                   /* the current record's id */
    char base[64]; /* the first one's, journaled: the records made again take the ids
                      that follow it (hs__uuid_next), which recovery finds */
    int remade;    /* how many records were made again */
    int have;                      /* the current record exists: made or adopted */
    char doomed[GLANCE_MAX_DOOMED][64];
    int ndoomed;
    int del_i; /* the doomed record being deleted in this pass */
    int attempt;
    int saw_saving; /* the last check found the record still saving */
    int reauthed;   /* a 401 renewed the token for this step already */
    int canceled;
    int importing; /* the data goes by glance-direct import, not by a plain upload */
    int reclaim;   /* not an upload: a dead run's record to remove (glance_reclaim) */
    int reclaimed; /* it was there, and ours: doomed */
    double import_deadline;
    char forbidden[512]; /* the 403 that sent us to import, reported if import is not offered */
    int streamed; /* the stream was read before: a retry rewinds it */
    int paused;            /* curl waits for the next chunk */
    double outage_since;   /* when Glance stopped answering, or 0 */
    int outage_tries;
    char hex[HS_DIGEST_HEX]; /* of req->up->digest */
    uv_timer_t backoff;
    int fail_code;
    char *body_json; /* create body */
    char (*rot)[64]; /* G_ROTDEL: the backups to delete, oldest last */
    int nrot, rot_i;
};

static void gu_step(struct glance_up *u);
static void gu_free(uv_handle_t *h);
static void gu_go(struct glance_up *u, enum glance_step step);
static void gu_canceled(struct glance_up *u);

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

static void gu_warn(struct glance_up *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gu_warn(struct glance_up *u, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    hs_log(HS_LOG_WARN, "%s", line);
    if (u->req->on_warn)
        u->req->on_warn(u->req, line);
}

/* ---- auth ---- */

#define NEEDS_OS_AUTH                                                                              \
    "target 'glance' needs OS_AUTH_URL and the other OS_* variables (or glance:URL)"

static int keystone_parse(struct glance_up *u)
{
    struct glance *g = u->g;
    char *url = NULL, red[1024];
    double expires = 0;
    int rc;

    rc = hs__keystone_catalog(u->http.body, hs__keystone_env("OS_INTERFACE", "public"),
                              hs__keystone_env("OS_REGION_NAME", NULL), &url, &expires, &u->req->err);
    if (rc < 0)
        return rc;
    if (!u->http.subject_token[0]) {
        free(url);
        return hs_err_set(&u->req->err, -EIO, HS_ERR_HTTP, 0, "Keystone gave no token");
    }
    free(g->url);
    g->url = url;
    free(g->token);
    g->token = hs__strdup(u->http.subject_token);
    g->token_issued = hs__now();
    g->token_expires = expires;
    hs_log(HS_LOG_DEBUG, "token from Keystone, image endpoint '%s'",
           hs__url_redact(g->url, red, sizeof(red)));
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
    const char *ca = hs__keystone_env("OS_CACERT", NULL), *cert = hs__keystone_env("OS_CERT", NULL);
    const char *key = hs__keystone_env("OS_KEY", NULL);

    u->http.data = u;
    hs__http_req_clear(&u->http);
    hs__http_req_init(&u->http, method, url);
    hs__http_header(&u->http, "Accept: application/json");
    hs__http_header(&u->http, "User-Agent: hotsnap");
    if (u->g->token && u->step != G_AUTH)
        hs__http_header(&u->http, "X-Auth-Token: %s", u->g->token);
    /* a peer that stops answering is a transient failure, not a hang */
    curl_easy_setopt(u->http.easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(u->http.easy, CURLOPT_LOW_SPEED_TIME, (long)u->g->stall_s);
    if (ca)
        curl_easy_setopt(u->http.easy, CURLOPT_CAINFO, ca);
    if (cert)
        curl_easy_setopt(u->http.easy, CURLOPT_SSLCERT, cert);
    if (key)
        curl_easy_setopt(u->http.easy, CURLOPT_SSLKEY, key);
}

/* curl's upload buffer: GLANCE_CHUNK, or the benchmark's HOTSNAP_UPLOAD_BUFFER
 * (bench/upload.py BUFFERS: 16 KiB to 2 MiB, curl's range) */
static long upload_buffer(void)
{
    const char *v = secure_getenv("HOTSNAP_UPLOAD_BUFFER");
    char *end;
    unsigned long x;

    if (!v || !*v)
        return GLANCE_CHUNK;
    x = strtoul(v, &end, 0);
    if (*end == 'K' || *end == 'k')
        x <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        x <<= 20, end++;
    return *end || x < (16u << 10) || x > (2u << 20) ? GLANCE_CHUNK : (long)x;
}

static size_t gu_read_cb(char *buf, size_t size, size_t n, void *data)
{
    struct glance_up *u = data;
    ssize_t got;

    if (u->canceled)
        return CURL_READFUNC_ABORT;
    got = hs__stream_read(u->req->src, buf, size * n, &u->req->err);
    if (got == -EAGAIN) {
        u->paused = 1; /* gu_source_ready lets curl go on */
        return CURL_READFUNC_PAUSE;
    }
    if (got < 0)
        return CURL_READFUNC_ABORT;
    u->req->sent += (uint64_t)got;
    if (got && u->req->on_progress)
        u->req->on_progress(u->req);
    return (size_t)got;
}

static void gu_source_ready(struct hs_stream *st, void *data)
{
    struct glance_up *u = data;

    if (u->paused && u->http.active) {
        u->paused = 0;
        curl_easy_pause(u->http.easy, CURLPAUSE_CONT);
    }
}

static int gu_start_upload(struct glance_up *u)
{
    struct hs_upload_req *req = u->req;
    char *url =
        hs__asprintf("%s/v2/images/%s/%s", u->g->url, u->id, u->importing ? "stage" : "file");

    hs__stream_reader(req->src, gu_source_ready, u);
    if (u->streamed)
        hs__stream_rewind(req->src);
    u->streamed = 1;
    req->sent = 0;
    u->paused = 0;
    gu_request(u, "PUT", url);
    free(url);
    hs__http_header(&u->http, "Content-Type: application/octet-stream");
    curl_easy_setopt(u->http.easy, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(u->http.easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->size);
    curl_easy_setopt(u->http.easy, CURLOPT_READFUNCTION, gu_read_cb);
    curl_easy_setopt(u->http.easy, CURLOPT_READDATA, u);
    curl_easy_setopt(u->http.easy, CURLOPT_UPLOAD_BUFFERSIZE, (long)upload_buffer());
    if (u->g->max_rate)
        curl_easy_setopt(u->http.easy, CURLOPT_MAX_SEND_SPEED_LARGE, (curl_off_t)u->g->max_rate);
    return 0;
}

static void gu_hash_done(struct glance_up *u)
{
    const char *hex = hs__stream_digest(u->req->src); /* of up->digest */

    snprintf(u->hex, sizeof(u->hex), "%s", hex ? hex : "");
}

static char *create_body(struct glance_up *u)
{
    struct hs_upload_req *req = u->req;
    cJSON *b = cJSON_CreateObject(), *it;
    char *s;

    cJSON_AddStringToObject(b, "id", u->id);
    cJSON_AddStringToObject(b, "name", req->name);
    cJSON_AddStringToObject(b, "disk_format", req->format);
    cJSON_AddStringToObject(b, "container_format", "bare");
    cJSON_AddStringToObject(b, "visibility", "private");
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

/* ---- rotation (Nova's createBackup): the oldest backups beyond N go ---- */

/* listed (200, in HS_HTTP_BODY_MAX) and deleted (64) per upload: a longer
 * backlog goes with the next uploads */
#define ROTATE_MAX 64

static const char *prop(const cJSON *o, const char *key)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* The instance's backups of this type and disk, newest first (Glance v2
 * filters by any property). */
static char *rotate_url(struct glance_up *u)
{
    const cJSON *p = u->req->props;
    char *a = curl_easy_escape(NULL, prop(p, "instance_uuid"), 0);
    char *b = curl_easy_escape(NULL, prop(p, "backup_type"), 0);
    char *c = curl_easy_escape(NULL, prop(p, "hotsnap_disk"), 0);
    char *url = hs__asprintf("%s/v2/images?instance_uuid=%s&image_type=backup&backup_type=%s&"
                             "hotsnap_disk=%s&sort_key=created_at&sort_dir=desc&limit=200",
                             u->g->url, a, b, c);

    curl_free(a);
    curl_free(b);
    curl_free(c);
    return url;
}

static int cmp_created_desc(const void *x, const void *y)
{
    const cJSON *a = *(const cJSON *const *)x, *b = *(const cJSON *const *)y;
    const char *ca = prop(a, "created_at"), *cb = prop(b, "created_at");
    const char *ta = prop(a, "hotsnap_backup_at"), *tb = prop(b, "hotsnap_backup_at");
    int c = strcmp(ca ? ca : "", cb ? cb : "");

    return -(c ? c : strcmp(ta ? ta : "", tb ? tb : ""));
}

/* The listing: what goes is chosen here, each record checked (a Glance that
 * ignored a filter must not make us delete another instance's images). */
static void gu_rotate_plan(struct glance_up *u, const char *body)
{
    static const char *const keys[] = {"instance_uuid", "backup_type", "hotsnap_disk"};
    const cJSON *p = u->req->props, *it;
    cJSON *j = cJSON_Parse(body);
    const cJSON **match = NULL;
    int n = 0, cap = 0, k, i, ok;

    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j, "images")) {
        const char *id = prop(it, "id"), *st = prop(it, "status"), *type = prop(it, "image_type");

        ok = id && strlen(id) < 64 && strcmp(id, u->id) && st && !strcmp(st, "active") && type &&
             !strcmp(type, "backup") && prop(it, "created_at");
        for (k = 0; ok && k < 3; k++)
            ok = prop(it, keys[k]) && prop(p, keys[k]) && !strcmp(prop(it, keys[k]),
                                                                   prop(p, keys[k]));
        if (!ok)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            match = realloc(match, (size_t)cap * sizeof(*match));
            if (!match)
                abort();
        }
        match[n++] = it;
    }
    if (n)
        qsort(match, (size_t)n, sizeof(*match), cmp_created_desc);
    /* this backup is one of the N kept */
    u->nrot = 0;
    for (i = u->req->rotation - 1; i < n && u->nrot < ROTATE_MAX; i++) {
        if (!u->rot) {
            u->rot = calloc(ROTATE_MAX, sizeof(*u->rot));
            if (!u->rot)
                abort();
        }
        snprintf(u->rot[u->nrot++], sizeof(u->rot[0]), "%s", prop(match[i], "id"));
    }
    free(match);
    cJSON_Delete(j);
    u->rot_i = 0;
}

/* A rotation's request answered, or failed: the backup is published either
 * way, so a failure is a warning and the old backups stay. */
static void gu_rotate_done(struct glance_up *u, CURLcode rc, long status, const char *why,
                           const char *body)
{
    if (u->step == G_ROTATE) {
        if (u->canceled) {
            gu_canceled(u); /* nothing was rotated yet: the cancel still holds */
            return;
        }
        if (rc != CURLE_OK || status != 200) {
            gu_warn(u, "image %s ('%s') published; its older backups could not be listed for "
                    "the rotation (%s), and stay", u->id, u->req->name, why);
            gu_go(u, G_DONE);
            return;
        }
        gu_rotate_plan(u, body);
    } else if (rc == CURLE_OK && (status < 300 || status == 404)) {
        hs_log(HS_LOG_INFO, "backup %s rotated out by %s", u->rot[u->rot_i], u->id);
        u->rot_i++;
    } else {
        gu_warn(u, "backup %s could not be deleted by the rotation (%s); it stays",
                u->rot[u->rot_i], why);
        u->rot_i++;
    }
    gu_go(u, u->rot_i < u->nrot ? G_ROTDEL : G_DONE);
}

/* A record with our id that hotsnap made for this very image: same name and
 * the same hotsnap_* properties (job id and disk). */
static int record_is_ours(const struct glance_up *u, const cJSON *rec)
{
    const cJSON *it;
    const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "name"));

    if (!name || strcmp(name, u->req->name))
        return 0;
    cJSON_ArrayForEach(it, u->req->props) {
        const char *v;

        if (strncmp(it->string, "hotsnap_", 8) || !cJSON_IsString(it))
            continue;
        v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, it->string));
        if (!v || strcmp(v, it->valuestring))
            return 0;
    }
    return 1;
}

static void gu_step(struct glance_up *u)
{
    const char *id = u->step == G_DELETE ? u->doomed[u->del_i] : u->id;
    char *url;
    int rc = 0;

    switch (u->step) {
    case G_AUTH: {
        char *body;

        url = hs__keystone_tokens_url();
        if (!url) {
            u->fail_code = hs_err_set(&u->req->err, -EINVAL, HS_ERR_INPUT, 0, "%s", NEEDS_OS_AUTH);
            u->step = G_DONE;
            gu_step(u);
            return;
        }
        gu_request(u, "POST", url);
        free(url);
        body = hs__keystone_body();
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
    case G_ADOPT:
    case G_CHECK:
    case G_VERIFY:
    case G_RECLAIM:
        url = hs__asprintf("%s/v2/images/%s", u->g->url, u->id);
        gu_request(u, "GET", url);
        free(url);
        break;
    case G_DELETE:
        url = hs__asprintf("%s/v2/images/%s", u->g->url, id);
        gu_request(u, "DELETE", url);
        free(url);
        break;
    case G_ROTATE:
        url = rotate_url(u);
        gu_request(u, "GET", url);
        free(url);
        break;
    case G_ROTDEL:
        url = hs__asprintf("%s/v2/images/%s", u->g->url, u->rot[u->rot_i]);
        gu_request(u, "DELETE", url);
        free(url);
        break;
    case G_DONE: {
        struct hs_upload_req *req = u->req;
        int code = u->fail_code, i;

        for (i = 0; i < u->ndoomed; i++)
            gu_warn(u, "image record %s ('%s') could not be deleted; it is left behind",
                    u->doomed[i], req->name);
        if (u->ndoomed)
            snprintf(req->left_behind, sizeof(req->left_behind), "%s", u->doomed[0]);
        if (req->src)
            hs__stream_reader(req->src, NULL, NULL);
        hs__http_req_clear(&u->http);
        if (u->reclaim)
            req->sent = u->reclaimed && !u->ndoomed; /* it was removed */
        if (code == 0 && !u->reclaim) {
            snprintf(req->image_id, sizeof(req->image_id), "%s", u->id);
            char shown[1024];

            /* shown, stored and published: never with the URL's password */
            req->location = hs__asprintf("%s/v2/images/%s",
                                         hs__url_redact(u->g->url, shown, sizeof(shown)), u->id);
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
        if (!u->req->err.code)
            hs_err_set(&u->req->err, rc, HS_ERR_SYS, -rc, "cannot start an HTTP request");
        u->fail_code = u->req->err.code;
        /* nothing more can be sent: what was made stays, and is reported */
        if (u->have && u->ndoomed < GLANCE_MAX_DOOMED)
            snprintf(u->doomed[u->ndoomed++], sizeof(u->doomed[0]), "%s", u->id);
        u->step = G_DONE;
        gu_step(u);
    }
}

/* Every request goes through here: a token near its end is renewed first. */
static void gu_go(struct glance_up *u, enum glance_step step)
{
    /* not before a rotation's requests: a failed renewal would fail (and
     * delete) the backup just published; a stale token there is a 401,
     * a warning */
    if (step != G_DONE && step != G_AUTH && step != G_ROTATE && step != G_ROTDEL &&
        token_stale(u->g)) {
        u->resume = step;
        step = G_AUTH;
    }
    u->step = step;
    gu_step(u);
}

/* The current record is not going to be published: delete it later. */
static void gu_doom(struct glance_up *u)
{
    if (!u->have)
        return;
    u->have = 0;
    if (u->ndoomed < GLANCE_MAX_DOOMED)
        snprintf(u->doomed[u->ndoomed++], sizeof(u->doomed[0]), "%s", u->id);
    else
        gu_warn(u, "image record %s ('%s') is left behind", u->id, u->req->name);
}

static void gu_delete_pass(struct glance_up *u, enum glance_step then)
{
    u->after_delete = then;
    u->del_i = 0;
    gu_go(u, u->ndoomed ? G_DELETE : then);
}

/* Leave with the error recorded in the request, deleting every record made. */
static void gu_fail(struct glance_up *u)
{
    u->fail_code = u->req->err.code ? u->req->err.code : -EIO;
    gu_doom(u);
    gu_delete_pass(u, G_DONE);
}

static void gu_canceled(struct glance_up *u)
{
    hs_err_clear(&u->req->err);
    hs_err_set(&u->req->err, -ECANCELED, HS_ERR_CANCELED, 0, "upload of image '%s' canceled",
               u->req->name);
    gu_fail(u);
}

static void gu_backoff_cb(uv_timer_t *t)
{
    struct glance_up *u = t->data;

    if (u->resume == G_CREATE && u->ndoomed)
        gu_delete_pass(u, G_CREATE); /* the broken records go before a new one is made */
    else
        gu_go(u, u->resume);
}

static uint64_t backoff_ms(int attempt)
{
    uint64_t d = GLANCE_BACKOFF_MS;
    int i;

    for (i = 1; i < attempt && d < GLANCE_BACKOFF_MAX_MS; i++)
        d <<= 1;
    return d < GLANCE_BACKOFF_MAX_MS ? d : GLANCE_BACKOFF_MAX_MS;
}

/* Glance is not there to answer (not a failure of the request itself). */
static int unreachable(CURLcode rc, long status)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           (rc == CURLE_OK && (status == 502 || status == 503 || status == 504));
}

/* A transient failure: @next after a backoff, or give up after the last
 * attempt; while Glance is away (@away), after outage_s of it. */
static void gu_retry_as(struct glance_up *u, const char *why, enum glance_step next, int away)
{
    unsigned jitter = 0;
    uint64_t delay;

    if (away && u->g->outage_s > 0 && !u->canceled) {
        double now = hs__now();

        if (!u->outage_since) {
            u->outage_since = now;
            u->outage_tries = 0;
        }
        if (now - u->outage_since < u->g->outage_s) {
            delay = backoff_ms(++u->outage_tries) * 2;
            if (delay > GLANCE_OUTAGE_BACKOFF_MAX_MS)
                delay = GLANCE_OUTAGE_BACKOFF_MAX_MS;
            hs_log(HS_LOG_INFO, "upload of '%s': %s; Glance is away, again in %.1f s",
                   u->req->name, why, (double)delay / 1000);
            u->resume = next;
            uv_timer_start(&u->backoff, gu_backoff_cb, delay, 0);
            return;
        }
        if (!u->req->err.code)
            hs_err_set(&u->req->err, -EIO, HS_ERR_HTTP, 0,
                       "upload of image '%s' failed: Glance did not answer for %d s: %s",
                       u->req->name, u->g->outage_s, why);
        gu_fail(u);
        return;
    }
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
    delay = backoff_ms(u->attempt);
    u->outage_since = 0;
    if (getrandom(&jitter, sizeof(jitter), 0) == sizeof(jitter))
        delay += jitter % (delay / 2 + 1);
    u->resume = next;
    uv_timer_start(&u->backoff, gu_backoff_cb, delay, 0);
}

static void gu_retry(struct glance_up *u, const char *why, enum glance_step next)
{
    gu_retry_as(u, why, next, 0);
}

/* The current record cannot take the data: doom it and make a new one, with
 * a new id (Glance does not give a deleted image's id out again). */
static void gu_replace(struct glance_up *u, const char *why)
{
    gu_doom(u);
    if (u->g->image_id) {
        hs_err_set(&u->req->err, -EIO, HS_ERR_HTTP, 0,
                   "upload of image %s ('%s') failed: %s; the record cannot be made again with "
                   "the same id",
                   u->id, u->req->name, why);
        gu_fail(u);
        return;
    }
    hs__uuid_next(u->base, ++u->remade, u->id);
    gu_retry(u, why, G_CREATE);
}

static int transient(CURLcode rc, long status)
{
    if (rc != CURLE_OK)
        return rc != CURLE_ABORTED_BY_CALLBACK;
    return status >= 500 || status == 0;
}

static void gu_delete_done(struct glance_up *u, CURLcode rc, long status, const char *why)
{
    if (rc == CURLE_OK && (status < 300 || status == 404)) {
        hs_log(HS_LOG_DEBUG, "image record %s deleted", u->doomed[u->del_i]);
        u->ndoomed--;
        memmove(u->doomed[u->del_i], u->doomed[u->del_i + 1],
                (size_t)(u->ndoomed - u->del_i) * sizeof(u->doomed[0]));
    } else if (rc == CURLE_OK && status == 401 && u->g->keystone && !u->reauthed) {
        u->reauthed = 1;
        free(u->g->token);
        u->g->token = NULL;
        gu_go(u, G_DELETE);
        return;
    } else {
        /* Glance is away: kept for the next pass (or reported at the end) */
        hs_log(HS_LOG_INFO, "image record %s could not be deleted yet: %s", u->doomed[u->del_i],
               why);
        u->del_i++;
    }
    u->reauthed = 0;
    if (u->del_i < u->ndoomed) {
        gu_go(u, G_DELETE);
        return;
    }
    if (u->canceled && (u->after_delete != G_DONE || !u->fail_code)) {
        /* canceled while tidying up, even after the verify: nothing is kept */
        gu_canceled(u);
        return;
    }
    gu_go(u, u->after_delete);
}

/* GET of our id after a 409 on create */
static void gu_adopt(struct glance_up *u, long status, const cJSON *rec)
{
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "status"));

    if (status == 200 && record_is_ours(u, rec)) {
        /* our own create, whose answer was lost */
        u->have = 1;
        if (st && !strcmp(st, "queued")) {
            hs_log(HS_LOG_INFO, "image record %s is ours, from a create retried", u->id);
            gu_go(u, u->importing ? G_STAGE : G_UPLOAD);
        } else {
            gu_replace(u, "the record made by a retried create is not queued");
        }
        return;
    }
    if (u->g->image_id) {
        hs_err_set(&u->req->err, -EEXIST, HS_ERR_HTTP, 409,
                   "creation of image '%s' failed: HTTP 409, image id %s is %s", u->req->name,
                   u->id, status == 200 ? "taken by another image" : "that of a deleted image");
        gu_fail(u);
        return;
    }
    hs__uuid_next(u->base, ++u->remade, u->id); /* an id that was taken: the next */
    gu_go(u, G_CREATE);
}

/* GET of the record after an upload failed */
static void gu_check(struct glance_up *u, long status, const cJSON *rec)
{
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rec, "status"));
    char why[128];

    if (status == 404) {
        u->have = 0; /* gone already */
        gu_replace(u, "the record is gone");
        return;
    }
    if (st && (!strcmp(st, "saving") || !strcmp(st, "uploading")) && !u->saw_saving) {
        /* a Glance that lives on puts the record back to queued once it sees
         * the upload broke; one killed mid-upload leaves it saving for good */
        u->saw_saving = 1;
        snprintf(why, sizeof(why), "Glance is still %s the broken upload", st);
        gu_retry(u, why, G_CHECK);
        return;
    }
    u->saw_saving = 0;
    if (st && !strcmp(st, "queued")) {
        gu_go(u, G_UPLOAD); /* the same record takes the data again */
    } else if (st && !strcmp(st, "active") && u->req->sent == u->req->size) {
        gu_hash_done(u); /* every byte went out; only the answer was lost */
        gu_go(u, G_VERIFY);
    } else {
        snprintf(why, sizeof(why), "the record is '%s' after a failed upload", st ? st : "?");
        gu_replace(u, why);
    }
}

/* GET of the record after the upload: publish, or fail */
static void gu_verify(struct glance_up *u, long status, const cJSON *j)
{
    struct hs_upload_req *req = u->req;
    const char *st, *algo, *val, *failed_import;
    enum hs_digest_algo galgo;
    double size;

    st = cJSON_GetStringValue(cJSON_GetObjectItem(j, "status"));
    failed_import = cJSON_GetStringValue(cJSON_GetObjectItem(j, "os_glance_failed_import"));
    if (u->importing && failed_import && *failed_import) {
        hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                   "glance-direct import of image %s ('%s') failed in Glance", u->id, req->name);
        gu_fail(u);
        return;
    }
    if (u->importing && st &&
        (!strcmp(st, "importing") || !strcmp(st, "uploading") || !strcmp(st, "queued")) &&
        hs__now() < u->import_deadline) {
        u->resume = G_VERIFY;
        uv_timer_start(&u->backoff, gu_backoff_cb, 500, 0);
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
    else if (!algo || hs__digest_parse(algo, &galgo) < 0 || galgo == HS_DIGEST_XXH128)
        gu_warn(u, "image %s ('%s'): Glance hashes with %s, which hotsnap does not; checked "
                "by size only", u->id, req->name, algo ? algo : "nothing");
    else if (galgo != req->up->digest) {
        gu_warn(u, "image %s ('%s'): Glance hashes with %s, not %s; checked by size only, and "
                "its next images by %s", u->id, req->name, algo,
                hs__digest_name(req->up->digest), algo);
        hs__uploader_learn(req->up, galgo);
    } else if (!val || strcmp(val, u->hex))
        hs_err_set(&req->err, -EIO, HS_ERR_HTTP, status,
                   "image %s ('%s'): Glance's %s differs from the bytes sent", u->id,
                   req->name, algo);
    if (req->err.code) {
        gu_fail(u);
        return;
    }
    /* published: delete what earlier attempts left, rotate, then done */
    u->fail_code = 0;
    gu_delete_pass(u, req->rotation > 0 ? G_ROTATE : G_DONE);
}

static void gu_done(struct hs_http_req *hr, CURLcode rc, long status)
{
    struct glance_up *u = hr->data;
    struct hs_upload_req *req = u->req;
    char why[300];
    cJSON *j;

    if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(why, sizeof(why), "no progress for %d s (%s)", u->g->stall_s, hr->errbuf);
    else if (rc != CURLE_OK || status == 0)
        snprintf(why, sizeof(why), "%s", hr->errbuf[0] ? hr->errbuf : curl_easy_strerror(rc));
    else
        snprintf(why, sizeof(why), "HTTP %ld", status);

    if (u->step == G_DELETE) {
        gu_delete_done(u, rc, status, why);
        return;
    }
    if (u->step == G_ROTATE || u->step == G_ROTDEL) {
        gu_rotate_done(u, rc, status, why, hr->body);
        return;
    }
    if (!u->canceled && rc == CURLE_ABORTED_BY_CALLBACK && req->err.code) {
        gu_fail(u); /* the file could not be read: not a cancel */
        return;
    }
    if (u->canceled || rc == CURLE_ABORTED_BY_CALLBACK) {
        gu_canceled(u);
        return;
    }
    if (transient(rc, status)) {
        int away = unreachable(rc, status);

        switch (u->step) {
        case G_UPLOAD:
            gu_retry(u, why, G_CHECK); /* did any of it arrive? */
            return;
        case G_STAGE:
        case G_IMPORT:
            gu_replace(u, why);
            return;
        case G_AUTH:
            gu_retry_as(u, why, u->resume, away);
            return;
        default:
            /* the same request again (create: the same id), Glance's restart waited out */
            gu_retry_as(u, why, u->step, away);
            return;
        }
    }
    u->outage_since = 0; /* it answered */
    if (status == 401 && u->g->keystone && !u->reauthed && u->step != G_AUTH) {
        /* the token ended early (revoked, clock skew): renew once, same step */
        u->reauthed = 1;
        free(u->g->token);
        u->g->token = NULL;
        gu_go(u, u->step == G_UPLOAD ? G_CHECK : u->step);
        return;
    }
    if (status == 409 && u->step == G_CREATE) {
        gu_go(u, G_ADOPT);
        return;
    }
    if ((status == 200 || status == 404) && u->step == G_RECLAIM) {
        j = status == 200 ? cJSON_Parse(hr->body) : NULL;
        u->reauthed = 0;
        if (j && record_is_ours(u, j)) {
            u->have = 1;
            u->reclaimed = 1;
            gu_doom(u); /* deleted by the pass; one that cannot be is left behind */
        } else if (j) {
            hs_log(HS_LOG_WARN, "image record %s is not the one job %s made; left alone",
                   u->id, u->req->name);
        }
        cJSON_Delete(j);
        gu_delete_pass(u, G_DONE);
        return;
    }
    if ((status == 200 || status == 404) && (u->step == G_ADOPT || u->step == G_CHECK)) {
        j = status == 200 ? cJSON_Parse(hr->body) : NULL;
        u->reauthed = 0;
        if (u->step == G_ADOPT)
            gu_adopt(u, status, j);
        else
            gu_check(u, status, j);
        cJSON_Delete(j);
        return;
    }
    if (status == 403 && u->step == G_UPLOAD && !u->importing) {
        /* plain upload forbidden by policy: interoperable import, if offered */
        hs_err_clear(&req->err);
        gu_http_error(u, "upload", status);
        snprintf(u->forbidden, sizeof(u->forbidden), "%s", req->err.msg);
        hs_err_clear(&req->err);
        gu_go(u, G_INFO);
        return;
    }
    if (status >= 300) {
        gu_http_error(u, step_names[u->step], status);
        gu_fail(u);
        return;
    }
    u->reauthed = 0;
    switch (u->step) {
    case G_AUTH:
        if (keystone_parse(u) < 0) {
            gu_fail(u);
            return;
        }
        gu_go(u, u->resume);
        return;
    case G_CREATE:
        u->have = 1;
        hs_log(HS_LOG_DEBUG, "image %s created for '%s'", u->id, req->name);
        gu_go(u, u->importing ? G_STAGE : G_UPLOAD);
        return;
    case G_UPLOAD:
    case G_STAGE:
        gu_hash_done(u);
        gu_go(u, u->importing ? G_IMPORT : G_VERIFY);
        return;
    case G_INFO: {
        cJSON *m, *it;
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
        gu_go(u, G_STAGE);
        return;
    }
    case G_IMPORT:
        /* the import runs in Glance: wait for the image to become active */
        u->import_deadline = hs__now() + 60 + (double)req->size / 10e6;
        gu_go(u, G_VERIFY);
        return;
    case G_VERIFY:
        j = cJSON_Parse(hr->body);
        gu_verify(u, status, j);
        cJSON_Delete(j);
        return;
    case G_ADOPT:
    case G_CHECK:
    case G_DELETE:
    case G_RECLAIM:
    case G_ROTATE:
    case G_ROTDEL:
    case G_DONE:
        break;
    }
    gu_fail(u); /* not reached */
}

static void gu_free(uv_handle_t *h)
{
    struct glance_up *u = h->data;

    free(u->body_json);
    free(u->rot);
    free(u);
}

static void gu_start_cb(uv_timer_t *t)
{
    struct glance_up *u = t->data;

    gu_go(u, u->reclaim ? G_RECLAIM : G_CREATE);
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
    if (g->image_id)
        snprintf(u->id, sizeof(u->id), "%s", g->image_id);
    else if (req->image_id[0])
        snprintf(u->id, sizeof(u->id), "%s", req->image_id); /* the job's, journaled */
    else
        hs__uuid4(u->id);
    snprintf(u->base, sizeof(u->base), "%s", u->id);
    uv_timer_init(up->loop, &u->backoff);
    u->backoff.data = u;
    req->priv = u;
    /* the first request starts on the next iteration: cb never runs inside begin */
    uv_timer_start(&u->backoff, gu_start_cb, 0, 0);
    return 0;
}

/* A dead run's record req->image_id: deleted if it is still there and is
 * the one that run made (its name and hotsnap_* properties, req->name and
 * req->props); gone, or another's, is done too. */
static int glance_reclaim(struct hs_uploader *up, struct hs_upload_req *req, hs_upload_cb cb)
{
    struct glance *g = up->ctx;
    struct glance_up *u = hs__calloc(1, sizeof(*u));

    req->up = up;
    req->cb = cb;
    u->req = req;
    u->g = g;
    u->reclaim = 1;
    snprintf(u->id, sizeof(u->id), "%s", req->image_id);
    uv_timer_init(up->loop, &u->backoff);
    u->backoff.data = u;
    req->priv = u;
    uv_timer_start(&u->backoff, gu_start_cb, 0, 0);
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
        gu_canceled(u);
        return;
    }
    if (u->step != G_DELETE && u->step != G_ROTDEL)
        hs__http_cancel(&u->http); /* deletes finish: they are the way out */
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
    char red[512];

    if (!env->http)
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "no HTTP client for glance");
    if (url && strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "glance endpoint '%s' is not an http:// or https:// URL",
                          hs__url_redact(url, red, sizeof(red)));
    if (!url && (!auth || !*auth))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "%s", NEEDS_OS_AUTH);
    if (!url && strncmp(auth, "http://", 7) && strncmp(auth, "https://", 8))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0,
                          "OS_AUTH_URL '%s' is not an http:// or https:// URL",
                          hs__url_redact(auth, red, sizeof(red)));
    if (env->image_id && strlen(env->image_id) >= sizeof(((struct glance_up *)0)->id))
        return hs_err_set(err, -EINVAL, HS_ERR_INPUT, 0, "image id '%.40s...' is too long",
                          env->image_id);
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
    g->stall_s = env->stall_s > 0 ? env->stall_s : HS_DEFAULT_STALL_TIMEOUT;
    g->outage_s = env->outage_s > 0 ? env->outage_s : 0;
    up->ctx = g;
    return 0;
}

const struct hs_uploader_ops hs_uploader_glance = {
    .name = "glance",
    .check = glance_check,
    .begin = glance_begin,
    .reclaim = glance_reclaim,
    .cancel = glance_cancel,
    .destroy = glance_destroy,
};
