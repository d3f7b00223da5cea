/* The agent's request grammar, and the bus's transport URL (see api.h). */
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static int printable(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

static int prefix(const char *path, size_t len, const char *want)
{
    size_t n = strlen(want);

    return len >= n && !memcmp(path, want, n);
}

int ag_route_match(const char *path, size_t len, struct ag_route *out, char *err, size_t errlen)
{
    const char *q = memchr(path, '?', len);
    size_t plen = q ? (size_t)(q - path) : len;
    static const struct {
        const char *path;
        enum ag_endpoint ep;
    } fixed[] = {
        {"/v1/snapshots", AG_EP_SNAPSHOTS}, {"/v1/events", AG_EP_EVENTS},
        {"/v1/domains", AG_EP_DOMAINS},     {"/healthz", AG_EP_HEALTHZ},
        {"/metrics", AG_EP_METRICS},        {"/v1/targets", AG_EP_TARGETS},
    };
    size_t i;

    memset(out, 0, sizeof(*out));
    if (q) {
        out->query = q + 1;
        out->query_len = len - plen - 1;
    }
    if (plen > 1 && path[plen - 1] == '/')
        plen--; /* /v1/snapshots/ is /v1/snapshots */
    for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (plen == strlen(fixed[i].path) && !memcmp(path, fixed[i].path, plen)) {
            out->ep = fixed[i].ep;
            return 0;
        }
    }
    if (prefix(path, plen, "/v1/snapshots/")) {
        const char *id = path + strlen("/v1/snapshots/");
        size_t n = plen - strlen("/v1/snapshots/");

        if (n == 0 || n > AG_ID_MAX || !printable(id, n) || memchr(id, '/', n)) {
            snprintf(err, errlen, "a job id is 1 to %d printable characters without '/'",
                     AG_ID_MAX);
            return -1;
        }
        memcpy(out->id, id, n);
        out->id[n] = '\0';
        out->ep = AG_EP_SNAPSHOT;
    } else if (prefix(path, plen, "/v1/targets/") &&
               ((plen > strlen("/v1/targets//verify") &&
                 !memcmp(path + plen - strlen("/verify"), "/verify", strlen("/verify"))) ||
                (plen > strlen("/v1/targets//prune") &&
                 !memcmp(path + plen - strlen("/prune"), "/prune", strlen("/prune"))))) {
        int verify = path[plen - 1] == 'y';
        const char *name = path + strlen("/v1/targets/");
        size_t n = plen - strlen("/v1/targets/") - strlen(verify ? "/verify" : "/prune");

        if (n <= AG_ID_MAX) {
            memcpy(out->id, name, n);
            out->id[n] = '\0';
        }
        if (n > AG_ID_MAX || !ag_target_name_ok(out->id)) { /* id: "" when too long */
            snprintf(err, errlen, "a target's name is 1 to 64 of [A-Za-z0-9_.-]");
            return -1;
        }
        out->ep = verify ? AG_EP_VERIFY : AG_EP_PRUNE;
    }
    return 0;
}

int ag_method_allowed(enum ag_endpoint ep, const char *method, size_t len, const char **allow)
{
    const char *a = "GET";

    switch (ep) {
    case AG_EP_SNAPSHOTS:
        a = "GET, POST";
        break;
    case AG_EP_SNAPSHOT:
        a = "GET, DELETE";
        break;
    case AG_EP_VERIFY:
    case AG_EP_PRUNE:
        a = "POST";
        break;
    case AG_EP_NONE:
    case AG_EP_EVENTS:
    case AG_EP_DOMAINS:
    case AG_EP_HEALTHZ:
    case AG_EP_METRICS:
    case AG_EP_TARGETS:
        break;
    }
    *allow = a;
    if (len == 3 && !memcmp(method, "GET", 3))
        return ep != AG_EP_VERIFY && ep != AG_EP_PRUNE;
    if (len == 4 && !memcmp(method, "POST", 4))
        return ep == AG_EP_SNAPSHOTS || ep == AG_EP_VERIFY || ep == AG_EP_PRUNE;
    if (len == 6 && !memcmp(method, "DELETE", 6))
        return ep == AG_EP_SNAPSHOT;
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int ag_query_get(const char *q, size_t qlen, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key), i = 0;

    while (q && i < qlen) {
        size_t end = i, o = 0;

        while (end < qlen && q[end] != '&')
            end++;
        if (end - i > klen && !memcmp(q + i, key, klen) && q[i + klen] == '=') {
            for (i += klen + 1; i < end; i++) {
                int c = (unsigned char)q[i];

                if (c == '%') {
                    if (i + 2 >= end || hexval(q[i + 1]) < 0 || hexval(q[i + 2]) < 0)
                        return -1;
                    c = hexval(q[i + 1]) * 16 + hexval(q[i + 2]);
                    i += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (c == 0 || o + 1 >= outlen)
                    return -1;
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

int ag_bearer_ok(const char *hdr, size_t len, const char *token)
{
    static const char scheme[] = "Bearer ";
    size_t n = strlen(token), i;
    unsigned char diff = 0;

    if (len < sizeof(scheme) - 1 || strncasecmp(hdr, scheme, sizeof(scheme) - 1))
        return 0;
    hdr += sizeof(scheme) - 1;
    len -= sizeof(scheme) - 1;
    /* every byte of the token is looked at, whatever the header holds */
    diff = len != n;
    for (i = 0; i < n; i++)
        diff |= (unsigned char)token[i] ^ (unsigned char)(i < len ? hdr[i] : 0);
    return n > 0 && diff == 0;
}

int ag_key_ok(const char *key, size_t len)
{
    return len >= 1 && len <= AG_ID_MAX && printable(key, len);
}

int ag_target_ok(const char *t)
{
    return (!strncmp(t, "dir:", 4) && t[4]) || !strcmp(t, "glance") ||
           (!strncmp(t, "glance:", 7) && t[7]);
}

int ag_target_name_ok(const char *name)
{
    size_t i, n = strlen(name);

    if (n < 1 || n > 64 || name[0] == '.' || name[0] == '-' || name[0] == '_')
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* Where a URL's user information is in @s: [*@start, *@end) before '@'. */
static int userinfo(const char *s, size_t *start, size_t *end)
{
    const char *host = strstr(s, "://"), *stop, *at;

    if (!host)
        return 0;
    host += 3;
    stop = host + strcspn(host, "/?#");
    at = memrchr(host, '@', (size_t)(stop - host));
    if (!at)
        return 0;
    *start = (size_t)(host - s);
    *end = (size_t)(at - s);
    return 1;
}

const char *ag_spec_redact(const char *spec, char *buf, size_t len)
{
    size_t a, b;

    if (!spec)
        return "";
    if (!userinfo(spec, &a, &b))
        snprintf(buf, len, "%s", spec);
    else
        snprintf(buf, len, "%.*s***%s", (int)a, spec, spec + b);
    return buf;
}

void ag_spec_scrub(char *s)
{
    size_t a, b;

    if (s && userinfo(s, &a, &b))
        memset(s + a, '*', b - a);
}

int ag_target_parse(char *arg, struct ag_target *out, char *err, size_t errlen)
{
    char *eq = strchr(arg, '='), shown[512];

    if (!eq) {
        snprintf(err, errlen, "--allow-target '%s' is not NAME=TARGET",
                 ag_spec_redact(arg, shown, sizeof(shown)));
        return -1;
    }
    *eq = '\0';
    if (!ag_target_name_ok(arg)) {
        snprintf(err, errlen, "--allow-target: '%.80s' is not a name of 1 to 64 letters, digits, "
                 "'_', '.' or '-'", arg);
        return -1;
    }
    if (!strcmp(arg, AG_TARGET_DEFAULT)) {
        snprintf(err, errlen, "--allow-target: the name '%s' is --to's", AG_TARGET_DEFAULT);
        return -1;
    }
    if (!ag_target_ok(eq + 1)) {
        snprintf(err, errlen, "--allow-target %s: '%s' is not one of dir:PATH, glance or "
                 "glance:URL", arg, ag_spec_redact(eq + 1, shown, sizeof(shown)));
        return -1;
    }
    out->name = arg;
    out->spec = eq + 1;
    return 0;
}

/* One field of a request object; 0 or -1 with @err. */
static int want_field(const cJSON *f, struct ag_want *w, char *err, size_t errlen)
{
    const char *k = f->string, *s = cJSON_IsString(f) ? f->valuestring : NULL;
    char why[512];

    if (!strcmp(k, "compress") || !strcmp(k, "all_disks") || !strcmp(k, "incremental")) {
        if (!cJSON_IsBool(f))
            goto not_bool;
        *(!strcmp(k, "compress")      ? &w->opts.compress
          : !strcmp(k, "all_disks") ? &w->opts.all_disks
                                    : &w->opts.incremental) = cJSON_IsTrue(f);
        return 0;
    }
    if (!strcmp(k, "rotation")) {
        if (!cJSON_IsNumber(f) || !(f->valuedouble >= 1 && f->valuedouble <= 1000) ||
            f->valuedouble != (double)(int)f->valuedouble) {
            snprintf(err, errlen, "field 'rotation' must be a whole number from 1 to 1000");
            return -1;
        }
        w->opts.rotation = (int)f->valuedouble;
        return 0;
    }
    if (!strcmp(k, "backup_type")) {
        if (!s || (strcmp(s, "daily") && strcmp(s, "weekly"))) {
            snprintf(err, errlen, "field 'backup_type' must be \"daily\" or \"weekly\"");
            return -1;
        }
        w->opts.backup_type = s;
        return 0;
    }
    if (!strcmp(k, "priority")) {
        /* the range first: (int) of a double out of int's range is undefined */
        if (!cJSON_IsNumber(f) || !(f->valuedouble >= -1000 && f->valuedouble <= 1000) ||
            f->valuedouble != (double)(int)f->valuedouble) {
            snprintf(err, errlen, "field 'priority' must be a whole number from -1000 to 1000");
            return -1;
        }
        w->opts.priority = (int)f->valuedouble;
        return 0;
    }
    if (!s) {
        if (!strcmp(k, "domain") || !strcmp(k, "target") || !strcmp(k, "mode") ||
            !strcmp(k, "quiesce") || !strcmp(k, "format") || !strcmp(k, "name") ||
            !strcmp(k, "image_id")) {
            snprintf(err, errlen, "field '%s' must be a string", k);
            return -1;
        }
        goto unknown;
    }
    if (!strcmp(k, "domain")) {
        if (!*s || strlen(s) > 256) {
            snprintf(err, errlen, "field 'domain' must name a domain (1 to 256 characters)");
            return -1;
        }
        w->domain = s;
    } else if (!strcmp(k, "target")) {
        if (!ag_target_name_ok(s)) {
            char shown[256];

            snprintf(err, errlen, "field 'target' names one of the agent's targets "
                                  "(GET /v1/targets); '%.200s' is not a target's name",
                     ag_spec_redact(s, shown, sizeof(shown)));
            return -1;
        }
        w->target = s;
    } else if (!strcmp(k, "mode")) {
        if (hs_mode_parse(s, &w->opts.mode) < 0) {
            snprintf(err, errlen, "field 'mode': unknown mode '%.100s' (expected auto, stream, "
                                  "live, mirror, cold or offline)", s);
            return -1;
        }
    } else if (!strcmp(k, "quiesce")) {
        if (hs_quiesce_parse(s, &w->opts.quiesce) < 0) {
            snprintf(err, errlen, "field 'quiesce': '%.100s' is not auto, required or off", s);
            return -1;
        }
    } else if (!strcmp(k, "format")) {
        if (hs_format_parse(s, &w->opts.format) < 0) {
            snprintf(err, errlen, "field 'format': '%.100s' is not qcow2 or raw", s);
            return -1;
        }
    } else if (!strcmp(k, "name")) {
        if (hs_name_template_check(s, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "field 'name': %s", why);
            return -1;
        }
        w->opts.name = s;
    } else if (!strcmp(k, "image_id")) {
        if (hs_image_id_check(s, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "field 'image_id': %s", why);
            return -1;
        }
        w->opts.image_id = s;
    } else {
        goto unknown;
    }
    return 0;
not_bool:
    snprintf(err, errlen, "field '%s' must be true or false", k);
    return -1;
unknown:
    snprintf(err, errlen, "unknown field '%.100s'", k);
    return -1;
}

static int want_parse(const cJSON *o, const struct hs_snapshot_opts *defaults, struct ag_want *w,
                      char *err, size_t errlen)
{
    const cJSON *f;

    if (!cJSON_IsObject(o)) {
        snprintf(err, errlen, "a snapshot request must be a JSON object");
        return -1;
    }
    w->opts = *defaults;
    w->opts.target = NULL; /* the operations set it from the target named */
    w->domain = NULL;
    w->target = NULL;
    cJSON_ArrayForEach(f, o) {
        if (want_field(f, w, err, errlen) < 0)
            return -1;
    }
    if (!w->domain) {
        snprintf(err, errlen, "field 'domain' is missing");
        return -1;
    }
    if (w->opts.compress && w->opts.format == HS_FORMAT_RAW) {
        snprintf(err, errlen, "field 'compress' needs format qcow2");
        return -1;
    }
    if (w->opts.image_id && w->opts.all_disks) {
        snprintf(err, errlen, "field 'image_id' names one image; it cannot go with all_disks");
        return -1;
    }
    return 0;
}

int ag_parse_snapshots(const char *body, size_t len, const struct hs_snapshot_opts *defaults,
                       cJSON **doc, struct ag_want **wants, char *err, size_t errlen)
{
    cJSON *d, *o;
    struct ag_want *w = NULL;
    char prefix_[32];
    int n, i = 0;

    *doc = NULL;
    *wants = NULL;
    d = cJSON_ParseWithLength(body, len);
    if (!d) {
        snprintf(err, errlen, "the body is not JSON");
        return -1;
    }
    n = cJSON_IsArray(d) ? cJSON_GetArraySize(d) : 1;
    if (n < 1 || n > AG_MAX_BATCH) {
        snprintf(err, errlen, "a list holds 1 to %d snapshot requests", AG_MAX_BATCH);
        goto fail;
    }
    w = calloc((size_t)n, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!cJSON_IsArray(d)) {
        if (want_parse(d, defaults, &w[0], err, errlen) < 0)
            goto fail;
    } else {
        cJSON_ArrayForEach(o, d) {
            char why[512];

            if (want_parse(o, defaults, &w[i], why, sizeof(why)) < 0) {
                snprintf(prefix_, sizeof(prefix_), "request %d: ", i);
                snprintf(err, errlen, "%s%s", prefix_, why);
                goto fail;
            }
            i++;
        }
    }
    *doc = d;
    *wants = w;
    return n;
fail:
    free(w);
    cJSON_Delete(d);
    return -1;
}

/* The bus's transport URL (see api.h). */
static int pct_decode(const char *s, size_t len, char *out, size_t outlen)
{
    size_t i, o = 0;

    for (i = 0; i < len; i++) {
        unsigned c = (unsigned char)s[i];

        if (c == '%') {
            unsigned v;

            if (i + 2 >= len)
                return -1;
            if (sscanf(s + i + 1, "%2x", &v) != 1 || v == 0)
                return -1;
            c = v;
            i += 2;
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* oslo.config's booleans, as the URL's query gives them */
static int oslo_bool(const char *v)
{
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0",
                                                                               "no", "off"};
    size_t i;

    for (i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i]))
            return 1;
        if (!strcasecmp(v, no[i]))
            return 0;
    }
    return -1;
}

/* The options after '?': oslo.messaging reads them as its [oslo_messaging_rabbit]
 * options (ConfigOptsProxy); the TLS ones are the agent's too. */
static int amqp_query(const char *q, struct ag_amqp_url *out, char *err, size_t errlen)
{
    while (*q) {
        size_t len = strcspn(q, "&"), klen = strcspn(q, "=");
        char key[64], val[512];
        int b;

        if (klen > len)
            klen = len;
        if (klen == 0 || klen >= sizeof(key) || pct_decode(q, klen, key, sizeof(key)) < 0 ||
            (klen < len ? pct_decode(q + klen + 1, len - klen - 1, val, sizeof(val))
                        : (val[0] = '\0', 0)) < 0) {
            snprintf(err, errlen, "the transport URL's options are malformed");
            return -1;
        }
        if (!strcmp(key, "ssl") || !strcmp(key, "ssl_enforce_hostname_verification")) {
            if ((b = oslo_bool(val)) < 0) {
                snprintf(err, errlen, "the transport URL's '%s' is not true or false", key);
                return -1;
            }
            *(key[3] ? &out->verify_hostname : &out->ssl) = b;
        } else if (!strcmp(key, "ssl_ca_file") || !strcmp(key, "ssl_cert_file") ||
                   !strcmp(key, "ssl_key_file")) {
            char *dst = key[4] == 'c' && key[5] == 'a' ? out->ca
                        : key[4] == 'c'                ? out->cert
                                                       : out->key;

            if (val[0] != '/') {
                snprintf(err, errlen, "the transport URL's '%s' must be an absolute path", key);
                return -1;
            }
            snprintf(dst, sizeof(out->ca), "%s", val);
        } else if (!strcmp(key, "ssl_version")) {
            snprintf(err, errlen, "the transport URL's ssl_version is not taken: the agent speaks "
                                  "TLS 1.2 and later");
            return -1;
        } else {
            size_t n = strlen(out->ignored);

            snprintf(out->ignored + n, sizeof(out->ignored) - n, "%s%.60s", n ? ", " : "", key);
        }
        q += len + (q[len] == '&');
    }
    return 0;
}

int ag_amqp_url_parse(const char *url, struct ag_amqp_url *out, char *err, size_t errlen)
{
    const char *p, *at, *slash, *hostp, *colon;
    size_t n;
    char port[16];
    int port_given = 0;

    memset(out, 0, sizeof(*out));
    out->port = 5672;
    out->verify_hostname = 1;
    snprintf(out->vhost, sizeof(out->vhost), "/");
    snprintf(out->user, sizeof(out->user), "guest");
    snprintf(out->pass, sizeof(out->pass), "guest");
    if (!strncmp(url, "rabbit+ssl://", 13) || !strncmp(url, "amqps://", 8)) {
        snprintf(err, errlen, "oslo.messaging asks for TLS with rabbit://...?ssl=true, not by "
                              "the scheme");
        return -1;
    }
    if (strncmp(url, "rabbit://", 9)) {
        snprintf(err, errlen, "the transport URL must start with rabbit://");
        return -1;
    }
    p = url + 9;
    slash = strchr(p, '/');
    n = slash ? (size_t)(slash - p) : strlen(p);
    if (memchr(p, ',', n)) {
        snprintf(err, errlen, "the transport URL names several hosts; give one");
        return -1;
    }
    at = memrchr(p, '@', n);
    hostp = p;
    if (at) {
        const char *c = memchr(p, ':', (size_t)(at - p));

        if (pct_decode(p, (size_t)((c ? c : at) - p), out->user, sizeof(out->user)) < 0 ||
            (c && pct_decode(c + 1, (size_t)(at - c - 1), out->pass, sizeof(out->pass)) < 0)) {
            snprintf(err, errlen, "the transport URL's user or password is malformed");
            return -1;
        }
        hostp = at + 1;
    }
    n = (size_t)((slash ? slash : p + strlen(p)) - hostp);
    colon = memrchr(hostp, ':', n);
    if (colon && (hostp[0] != '[' || colon[-1] == ']')) {
        char *end;
        long v;

        snprintf(port, sizeof(port), "%.*s", (int)(n - (size_t)(colon - hostp) - 1), colon + 1);
        v = strtol(port, &end, 10);
        if (!port[0] || *end || v < 1 || v > 65535) {
            snprintf(err, errlen, "the transport URL's port is not a number from 1 to 65535");
            return -1;
        }
        out->port = (int)v;
        port_given = 1;
        n = (size_t)(colon - hostp);
    }
    if (n && hostp[0] == '[' && hostp[n - 1] == ']') {
        hostp++;
        n -= 2;
    }
    if (n == 0 || n >= sizeof(out->host)) {
        snprintf(err, errlen, "the transport URL names no host");
        return -1;
    }
    memcpy(out->host, hostp, n);
    out->host[n] = '\0';
    if (slash && slash[1]) {
        const char *q = strchr(slash + 1, '?');

        if (pct_decode(slash + 1, q ? (size_t)(q - slash - 1) : strlen(slash + 1), out->vhost,
                       sizeof(out->vhost)) < 0) {
            snprintf(err, errlen, "the transport URL's virtual host is malformed");
            return -1;
        }
        if (!out->vhost[0])
            snprintf(out->vhost, sizeof(out->vhost), "/");
        if (q && amqp_query(q + 1, out, err, errlen) < 0)
            return -1;
    }
    if (out->ssl && !port_given)
        out->port = 5671; /* kombu's, and so oslo's, default for AMQP over TLS */
    if (!out->ssl && (out->ca[0] || out->cert[0] || out->key[0])) {
        snprintf(err, errlen, "the transport URL names TLS files but not ssl=true");
        return -1;
    }
    if (!out->cert[0] != !out->key[0]) {
        snprintf(err, errlen, "the transport URL's ssl_cert_file and ssl_key_file go together");
        return -1;
    }
    return 0;
}

/* oslo.messaging's RPC messages (see api.h). */
int ag_rpc_unwrap(const char *body, size_t len, struct ag_rpc *out, char *err, size_t errlen)
{
    const char *inner;
    cJSON *msg;

    memset(out, 0, sizeof(*out));
    out->doc = cJSON_ParseWithLength(body, len);
    msg = out->doc;
    inner = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "oslo.message"));
    if (inner)
        msg = out->inner = cJSON_Parse(inner);
    if (!cJSON_IsObject(msg)) {
        snprintf(err, errlen, "the message is not an oslo.messaging RPC message");
        ag_rpc_free(out);
        return -1;
    }
    out->method = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "method"));
    out->args = cJSON_GetObjectItemCaseSensitive(msg, "args");
    if (cJSON_IsNull(out->args))
        out->args = NULL;
    out->msg_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "_msg_id"));
    out->reply_q = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "_reply_q"));
    out->unique_id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(msg, "_unique_id"));
    return 0;
}

void ag_rpc_free(struct ag_rpc *rpc)
{
    cJSON_Delete(rpc->inner);
    cJSON_Delete(rpc->doc);
    memset(rpc, 0, sizeof(*rpc));
}

char *ag_rpc_snapshot_body(const cJSON *args, const char *unique_id, char *key, size_t keylen,
                           char *err, size_t errlen)
{
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(args, "idempotency_key"), *a;
    cJSON *req;
    char *s;

    key[0] = '\0';
    if (args && !cJSON_IsObject(args)) {
        snprintf(err, errlen, "the message's args are not an object");
        return NULL;
    }
    if (k && !cJSON_IsNull(k) && !cJSON_IsString(k)) {
        snprintf(err, errlen, "argument 'idempotency_key' must be a string");
        return NULL;
    }
    /* a redelivered message is the same request: its id is the key */
    if (cJSON_IsString(k))
        snprintf(key, keylen, "%s", k->valuestring);
    else if (unique_id)
        snprintf(key, keylen, "amqp-%.58s", unique_id);
    req = cJSON_CreateObject();
    for (a = args ? args->child : NULL; a; a = a->next)
        if (!cJSON_IsNull(a) && strcmp(a->string, "idempotency_key"))
            cJSON_AddItemToObject(req, a->string, cJSON_Duplicate(a, 1));
    s = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!s)
        snprintf(err, errlen, "out of memory");
    return s;
}
