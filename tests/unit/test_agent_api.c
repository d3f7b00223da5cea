/* The agent's request grammar (cli/agent/api.c). */
#include <string.h>

#include "agent/api.h"
#include "check.h"

static int route(const char *path, struct ag_route *rt)
{
    char err[256];

    return ag_route_match(path, strlen(path), rt, err, sizeof(err));
}

static void test_routes(void)
{
    struct ag_route rt;
    const char *allow;
    char id[AG_ID_MAX + 20];

    CHECK(route("/v1/snapshots", &rt) == 0 && rt.ep == AG_EP_SNAPSHOTS && !rt.query);
    CHECK(route("/v1/snapshots/?state=done", &rt) == 0 && rt.ep == AG_EP_SNAPSHOTS);
    CHECK(rt.query_len == 10 && !memcmp(rt.query, "state=done", 10));
    CHECK(route("/v1/snapshots/abc-1", &rt) == 0 && rt.ep == AG_EP_SNAPSHOT);
    CHECK(!strcmp(rt.id, "abc-1"));
    CHECK(route("/v1/snapshots/a/b", &rt) < 0);
    CHECK(route("/v1/snapshots//", &rt) < 0); /* found by the fuzzer: an empty id */
    memset(id, 'x', sizeof(id));
    memcpy(id, "/v1/snapshots/", 14);
    id[sizeof(id) - 1] = '\0';
    CHECK(route(id, &rt) < 0); /* an id too long */
    CHECK(route("/v1/events?job=x", &rt) == 0 && rt.ep == AG_EP_EVENTS);
    CHECK(route("/healthz", &rt) == 0 && rt.ep == AG_EP_HEALTHZ);
    CHECK(route("/metrics", &rt) == 0 && rt.ep == AG_EP_METRICS);
    CHECK(route("/v1/domains", &rt) == 0 && rt.ep == AG_EP_DOMAINS);
    CHECK(route("/v1/targets/local/verify", &rt) == 0 && rt.ep == AG_EP_VERIFY);
    CHECK(!strcmp(rt.id, "local"));
    CHECK(route("/v1/targets/local/verify/", &rt) == 0 && rt.ep == AG_EP_VERIFY);
    CHECK(route("/v1/targets//verify", &rt) == 0 && rt.ep == AG_EP_NONE);
    CHECK(route("/v1/targets/../verify", &rt) < 0);   /* not a target's name */
    CHECK(route("/v1/targets/a/b/verify", &rt) < 0);  /* '/' in a name */
    CHECK(route("/v1/targets/local/verifyX", &rt) == 0 && rt.ep == AG_EP_NONE);
    CHECK(ag_method_allowed(AG_EP_VERIFY, "POST", 4, &allow) && !strcmp(allow, "POST"));
    CHECK(!ag_method_allowed(AG_EP_VERIFY, "GET", 3, &allow));
    CHECK(route("/v1/snapshotsX", &rt) == 0 && rt.ep == AG_EP_NONE);
    CHECK(route("/", &rt) == 0 && rt.ep == AG_EP_NONE);

    CHECK(ag_method_allowed(AG_EP_SNAPSHOTS, "POST", 4, &allow));
    CHECK(!ag_method_allowed(AG_EP_SNAPSHOTS, "DELETE", 6, &allow));
    CHECK(!strcmp(allow, "GET, POST"));
    CHECK(ag_method_allowed(AG_EP_SNAPSHOT, "DELETE", 6, &allow));
    CHECK(!ag_method_allowed(AG_EP_METRICS, "POST", 4, &allow) && !strcmp(allow, "GET"));
}

static void test_query(void)
{
    const char *q = "state=done&domain=web%201+x&bad=%zz&empty=";
    char v[16];

    CHECK(ag_query_get(q, strlen(q), "state", v, sizeof(v)) == 1 && !strcmp(v, "done"));
    CHECK(ag_query_get(q, strlen(q), "domain", v, sizeof(v)) == 1 && !strcmp(v, "web 1 x"));
    CHECK(ag_query_get(q, strlen(q), "bad", v, sizeof(v)) == -1);
    CHECK(ag_query_get(q, strlen(q), "empty", v, sizeof(v)) == 1 && !strcmp(v, ""));
    CHECK(ag_query_get(q, strlen(q), "job", v, sizeof(v)) == 0);
    CHECK(ag_query_get(q, strlen(q), "stat", v, sizeof(v)) == 0);
    CHECK(ag_query_get(q, strlen(q), "domain", v, 4) == -1); /* too long for the buffer */
    CHECK(ag_query_get("a=%4", 4, "a", v, sizeof(v)) == -1);  /* cut escape */
    CHECK(ag_query_get("a=%00", 5, "a", v, sizeof(v)) == -1); /* NUL */
    CHECK(ag_query_get(NULL, 0, "a", v, sizeof(v)) == 0);
}

static void test_bearer(void)
{
    const char *tok = "0123456789abcdef";

    CHECK(ag_bearer_ok("Bearer 0123456789abcdef", 23, tok));
    CHECK(ag_bearer_ok("bearer 0123456789abcdef", 23, tok));
    CHECK(!ag_bearer_ok("Bearer 0123456789abcdeX", 23, tok));
    CHECK(!ag_bearer_ok("Bearer 0123456789abcde", 22, tok));
    CHECK(!ag_bearer_ok("Bearer 0123456789abcdef0", 24, tok));
    CHECK(!ag_bearer_ok("Basic 0123456789abcdef", 22, tok));
    CHECK(!ag_bearer_ok("Bearer ", 7, ""));
    CHECK(ag_key_ok("k-1", 3) && !ag_key_ok("a b", 3) && !ag_key_ok("", 0));
}

static int parse(const char *body, struct ag_want **w, cJSON **doc, char *err)
{
    struct hs_snapshot_opts dflt = {.target = "glance", .priority = 7};

    return ag_parse_snapshots(body, strlen(body), &dflt, doc, w, err, 512);
}

static void test_bodies(void)
{
    struct ag_want *w;
    cJSON *doc;
    char err[512];

    CHECK(parse("{\"domain\":\"web\"}", &w, &doc, err) == 1);
    /* the target is the operations' to set, from the name a request gives */
    CHECK(!strcmp(w[0].domain, "web") && !w[0].opts.target && !w[0].target);
    CHECK(w[0].opts.priority == 7 && w[0].opts.mode == HS_MODE_AUTO);
    free(w);
    cJSON_Delete(doc);

    CHECK(parse("[{\"domain\":\"a\",\"mode\":\"cold\",\"format\":\"raw\",\"priority\":-3},"
                "{\"domain\":\"b\",\"compress\":true,\"target\":\"local-2\","
                "\"quiesce\":\"off\",\"all_disks\":true,\"name\":\"{domain}-{disk}\","
                "\"incremental\":true}]",
                &w, &doc, err) == 2);
    CHECK(!w[0].opts.incremental && w[1].opts.incremental);
    CHECK(w[0].opts.mode == HS_MODE_COLD && w[0].opts.format == HS_FORMAT_RAW);
    CHECK(w[0].opts.priority == -3);
    CHECK(w[1].opts.compress && w[1].opts.all_disks && !strcmp(w[1].target, "local-2"));
    CHECK(!w[1].opts.target);
    CHECK(w[1].opts.quiesce == HS_QUIESCE_OFF && !strcmp(w[1].opts.name, "{domain}-{disk}"));
    free(w);
    cJSON_Delete(doc);

    static const struct {
        const char *body, *words;
    } bad[] = {
        {"", "not JSON"},
        {"{\"domain\":\"a\"", "not JSON"},
        {"[]", "1 to"},
        {"\"web\"", "JSON object"},
        {"{}", "'domain' is missing"},
        {"{\"domain\":\"\"}", "field 'domain'"},
        {"{\"domain\":1}", "field 'domain' must be a string"},
        {"{\"domain\":\"a\",\"priority\":1.5}", "field 'priority'"},
        {"{\"domain\":\"a\",\"priority\":5000}", "field 'priority'"},
        {"{\"domain\":\"a\",\"priority\":1e300}", "field 'priority'"}, /* no (int) of it */
        {"{\"domain\":\"a\",\"priority\":-1e300}", "field 'priority'"},
        {"{\"domain\":\"a\",\"image_id\":\"x\"}", "not a UUID"},
        {"{\"domain\":\"a\",\"image_id\":\"../0b8fd3f6-7b43-4d5c-9d0e-6a3e2b1c4f5\"}", "not a UUID"},
        {"{\"domain\":\"a\",\"compress\":\"yes\"}", "field 'compress' must be true or false"},
        {"{\"domain\":\"a\",\"compress\":true,\"format\":\"raw\"}", "needs format qcow2"},
        {"{\"domain\":\"a\",\"image_id\":\"0b8fd3f6-7b43-4d5c-9d0e-6a3e2b1c4f50\","
         "\"all_disks\":true}",
         "all_disks"},
        {"{\"domain\":\"a\",\"target\":\"dir:\"}", "field 'target'"},
        {"{\"domain\":\"a\",\"target\":\"dir:/etc\"}", "not a target's name"},
        {"{\"domain\":\"a\",\"target\":\"glance:http://u:pw@h/\"}", "'glance:http://***@h/'"},
        {"{\"domain\":\"a\",\"target\":\"../x\"}", "field 'target'"},
        {"{\"domain\":\"a\",\"target\":\"\"}", "field 'target'"},
        {"{\"domain\":\"a\",\"name\":\"{x}\"}", "field 'name'"},
        {"{\"domain\":\"a\",\"colour\":\"red\"}", "unknown field 'colour'"},
        {"[{\"domain\":\"a\"},{\"mode\":\"x\",\"domain\":\"b\"}]", "request 1: field 'mode'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(parse(bad[i].body, &w, &doc, err) == -1 && !w && !doc);
        if (!strstr(err, bad[i].words)) {
            fprintf(stderr, "%s: '%s' does not say '%s'\n", bad[i].body, err, bad[i].words);
            CHECK(0);
        }
    }
}

static void test_targets(void)
{
    struct ag_target t;
    char arg[128], buf[128], err[256];

    CHECK(ag_target_name_ok("default") && ag_target_name_ok("a") && ag_target_name_ok("b-1.x_y"));
    CHECK(!ag_target_name_ok("") && !ag_target_name_ok(".x") && !ag_target_name_ok("-x"));
    CHECK(!ag_target_name_ok("a/b") && !ag_target_name_ok("a b") && !ag_target_name_ok("a:b"));
    memset(arg, 'a', 65);
    arg[65] = '\0';
    CHECK(!ag_target_name_ok(arg));
    snprintf(arg, sizeof(arg), "prod=glance:https://u:secret@glance:9292");
    CHECK(ag_target_parse(arg, &t, err, sizeof(err)) == 0);
    CHECK(!strcmp(t.name, "prod") && !strcmp(t.spec, "glance:https://u:secret@glance:9292"));
    snprintf(arg, sizeof(arg), "default=dir:/srv");
    CHECK(ag_target_parse(arg, &t, err, sizeof(err)) < 0 && strstr(err, "--to's"));
    snprintf(arg, sizeof(arg), "x=s3:bucket");
    CHECK(ag_target_parse(arg, &t, err, sizeof(err)) < 0 && strstr(err, "'s3:bucket'"));
    snprintf(arg, sizeof(arg), "glance:https://u:secret@h");
    CHECK(ag_target_parse(arg, &t, err, sizeof(err)) < 0 && !strstr(err, "secret"));
    CHECK(!strcmp(ag_spec_redact("glance:http://u:p@h:1/x@y", buf, sizeof(buf)),
                  "glance:http://***@h:1/x@y"));
    CHECK(!strcmp(ag_spec_redact("glance:http://h:1", buf, sizeof(buf)), "glance:http://h:1"));
    CHECK(!strcmp(ag_spec_redact("dir:/srv/a@b", buf, sizeof(buf)), "dir:/srv/a@b"));
    snprintf(arg, sizeof(arg), "glance:http://user:pw@h/");
    ag_spec_scrub(arg);
    CHECK(!strcmp(arg, "glance:http://*******@h/"));
}

static void test_transport_url(void)
{
    struct ag_amqp_url u;
    char err[256];

    CHECK(ag_amqp_url_parse("rabbit://nova:s%40cret@10.0.0.5:5673/cloud%2Fa", &u, err,
                            sizeof(err)) == 0);
    CHECK(!strcmp(u.user, "nova") && !strcmp(u.pass, "s@cret") && !strcmp(u.host, "10.0.0.5"));
    CHECK(u.port == 5673 && !strcmp(u.vhost, "cloud/a"));
    CHECK(ag_amqp_url_parse("rabbit://h", &u, err, sizeof(err)) == 0);
    CHECK(!strcmp(u.host, "h") && u.port == 5672 && !strcmp(u.vhost, "/"));
    CHECK(!strcmp(u.user, "guest"));
    CHECK(ag_amqp_url_parse("rabbit://u:p@[::1]:5672/", &u, err, sizeof(err)) == 0);
    CHECK(!strcmp(u.host, "::1") && !strcmp(u.vhost, "/"));
    CHECK(ag_amqp_url_parse("amqp://h/", &u, err, sizeof(err)) < 0 && strstr(err, "rabbit://"));
    CHECK(ag_amqp_url_parse("rabbit://u:p@h1,u:p@h2/", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit://u:p@h:99999/", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit://u:p@/", &u, err, sizeof(err)) < 0);
    /* a bad URL's message never shows the password */
    CHECK(ag_amqp_url_parse("rabbit://u:hunter2@h:x/", &u, err, sizeof(err)) < 0);
    CHECK(!strstr(err, "hunter2"));
    CHECK(ag_amqp_url_parse("rabbit://u:p%zz@h/", &u, err, sizeof(err)) < 0);
    /* TLS in oslo.messaging's terms: the query's options */
    CHECK(ag_amqp_url_parse("rabbit://u:p@h/", &u, err, sizeof(err)) == 0 && !u.ssl);
    CHECK(ag_amqp_url_parse("rabbit://u:p@h/v?ssl=1&ssl_ca_file=/etc/ca%20x.pem"
                            "&ssl_cert_file=/c.pem&ssl_key_file=/k.pem&heartbeat_rate=3",
                            &u, err, sizeof(err)) == 0);
    CHECK(u.ssl && u.port == 5671 && u.verify_hostname && !strcmp(u.vhost, "v"));
    CHECK(!strcmp(u.ca, "/etc/ca x.pem") && !strcmp(u.cert, "/c.pem") && !strcmp(u.key, "/k.pem"));
    CHECK(!strcmp(u.ignored, "heartbeat_rate"));
    CHECK(ag_amqp_url_parse("rabbit://h:5000/?ssl=True&ssl_enforce_hostname_verification=false",
                            &u, err, sizeof(err)) == 0);
    CHECK(u.ssl && u.port == 5000 && !u.verify_hostname);
    CHECK(ag_amqp_url_parse("rabbit://h/?ssl=maybe", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit://h/?ssl_ca_file=/ca", &u, err, sizeof(err)) < 0 &&
          strstr(err, "ssl=true"));
    CHECK(ag_amqp_url_parse("rabbit://h/?ssl=1&ssl_ca_file=ca.pem", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit://h/?ssl=1&ssl_cert_file=/c", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit://h/?ssl=1&ssl_version=TLSv1", &u, err, sizeof(err)) < 0);
    CHECK(ag_amqp_url_parse("rabbit+ssl://h/", &u, err, sizeof(err)) < 0 && strstr(err, "ssl=true"));
}

static int unwrap(const char *s, struct ag_rpc *rpc, char *err)
{
    return ag_rpc_unwrap(s, strlen(s), rpc, err, 256);
}

static void test_rpc(void)
{
    const char *call = "{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"method\\\": "
                       "\\\"snapshot\\\", \\\"args\\\": {\\\"domain\\\": \\\"web\\\", "
                       "\\\"mode\\\": null}, \\\"_msg_id\\\": \\\"m1\\\", "
                       "\\\"_reply_q\\\": \\\"reply_1\\\", \\\"_unique_id\\\": \\\"u1\\\"}\"}";
    struct ag_rpc rpc;
    char err[256], key[AG_ID_MAX + 1], *body;

    CHECK(unwrap(call, &rpc, err) == 0);
    CHECK(!strcmp(rpc.method, "snapshot") && !strcmp(rpc.msg_id, "m1"));
    CHECK(!strcmp(rpc.reply_q, "reply_1") && !strcmp(rpc.unique_id, "u1"));
    body = ag_rpc_snapshot_body(rpc.args, rpc.unique_id, key, sizeof(key), err, sizeof(err));
    CHECK(body && !strcmp(body, "{\"domain\":\"web\"}")); /* null: left out */
    CHECK(!strcmp(key, "amqp-u1"));
    free(body);
    ag_rpc_free(&rpc);
    /* a bare message (no envelope), a cast with its own key */
    CHECK(unwrap("{\"method\":\"snapshot\",\"args\":{\"domain\":\"a\","
                 "\"idempotency_key\":\"k9\"}}", &rpc, err) == 0);
    CHECK(!rpc.msg_id && !rpc.reply_q);
    body = ag_rpc_snapshot_body(rpc.args, rpc.unique_id, key, sizeof(key), err, sizeof(err));
    CHECK(body && !strcmp(key, "k9") && !strstr(body, "idempotency_key"));
    free(body);
    ag_rpc_free(&rpc);
    CHECK(unwrap("{\"args\":{\"idempotency_key\":5}}", &rpc, err) == 0);
    CHECK(!rpc.method);
    CHECK(!ag_rpc_snapshot_body(rpc.args, NULL, key, sizeof(key), err, sizeof(err)));
    CHECK(strstr(err, "idempotency_key"));
    ag_rpc_free(&rpc);
    CHECK(unwrap("[1]", &rpc, err) < 0 && !rpc.doc);
    CHECK(unwrap("{\"oslo.message\":\"nope\"}", &rpc, err) < 0);
}

int main(void)
{
    RUN(test_rpc);
    RUN(test_targets);
    RUN(test_transport_url);
    RUN(test_routes);
    RUN(test_query);
    RUN(test_bearer);
    RUN(test_bodies);
    return 0;
}
