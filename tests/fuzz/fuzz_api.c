/*
 * libFuzzer harness for the agent's request handling (cli/agent/api.c): the
 * input is a request as the agent sees it once H2O has parsed it, written as
 * text: "METHOD PATH\n", header lines "Name: value\n", a blank line, the body
 * (a "Transport-URL:" line is given to the bus's URL parser; the body is also
 * read as a message from the bus).
 * Every function a request reaches runs on it, and what they return is
 * checked against what the handlers rely on.
 *
 *   build-fuzz/fuzz_api -max_total_time=30 CORPUS_DIR tests/fuzz/corpus
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/api.h"

static const char *line_end(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));

    return nl ? nl : end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size, *eol, *sp;
    struct hs_snapshot_opts defaults = {.priority = 0};
    struct ag_route rt;
    struct ag_want *wants;
    const char *allow;
    char err[1024], val[300];
    cJSON *doc;
    int n, i;

    eol = line_end(p, end);
    sp = memchr(p, ' ', (size_t)(eol - p));
    if (!sp)
        return 0;
    if (ag_route_match(sp + 1, (size_t)(eol - sp - 1), &rt, err, sizeof(err)) == 0) {
        assert(rt.ep != AG_EP_SNAPSHOT || (rt.id[0] && strlen(rt.id) <= AG_ID_MAX));
        (void)ag_method_allowed(rt.ep, p, (size_t)(sp - p), &allow);
        assert(allow && *allow);
        for (i = 0; i < 4; i++) {
            static const char *const keys[] = {"state", "domain", "limit", "job"};
            size_t cap = i == 1 ? sizeof(val) : 32;

            if (ag_query_get(rt.query, rt.query_len, keys[i], val, cap) == 1)
                assert(strlen(val) < cap);
        }
    } else {
        assert(err[0]);
    }
    /* headers */
    for (p = eol < end ? eol + 1 : end; p < end; p = eol + 1) {
        const char *colon;

        eol = line_end(p, end);
        if (eol == p)
            break;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon)
            continue;
        sp = colon + 1;
        while (sp < eol && *sp == ' ')
            sp++;
        if ((size_t)(colon - p) == 13 && !strncasecmp(p, "authorization", 13)) {
            (void)ag_bearer_ok(sp, (size_t)(eol - sp), "0123456789abcdef-token");
        } else if ((size_t)(colon - p) == 13 && !strncasecmp(p, "transport-url", 13)) {
            struct ag_amqp_url u;
            char url[512];

            snprintf(url, sizeof(url), "%.*s", (int)(eol - sp), sp);
            if (ag_amqp_url_parse(url, &u, err, sizeof(err)) == 0)
                assert(u.host[0] && u.port > 0 && u.port < 65536 && u.vhost[0]);
            else
                assert(err[0] && !strstr(err, "hunter2"));
        } else
            (void)ag_key_ok(sp, (size_t)(eol - sp));
        if (eol == end)
            break;
    }
    /* the body */
    p = eol < end ? eol + 1 : end;
    /* as a message from the bus */
    {
        struct ag_rpc rpc;
        char key[AG_ID_MAX + 1], *body;

        if (ag_rpc_unwrap(p, (size_t)(end - p), &rpc, err, sizeof(err)) == 0) {
            assert(rpc.doc);
            if (rpc.method && !strcmp(rpc.method, "snapshot")) {
                body = ag_rpc_snapshot_body(rpc.args, rpc.unique_id, key, sizeof(key), err,
                                            sizeof(err));
                assert(body || err[0]);
                assert(strlen(key) <= AG_ID_MAX);
                if (body) {
                    n = ag_parse_snapshots(body, strlen(body), &defaults, &doc, &wants, err,
                                           sizeof(err));
                    if (n > 0) {
                        free(wants);
                        cJSON_Delete(doc);
                    }
                    free(body);
                }
            }
            ag_rpc_free(&rpc);
        } else {
            assert(!rpc.doc && err[0]);
        }
    }
    n = ag_parse_snapshots(p, (size_t)(end - p), &defaults, &doc, &wants, err, sizeof(err));
    if (n < 0) {
        assert(!doc && !wants && err[0]);
        return 0;
    }
    assert(n >= 1 && n <= AG_MAX_BATCH);
    for (i = 0; i < n; i++) {
        assert(wants[i].domain && *wants[i].domain);
        assert(!(wants[i].opts.compress && wants[i].opts.format == HS_FORMAT_RAW));
        assert(!wants[i].opts.target || ag_target_ok(wants[i].opts.target));
    }
    free(wants);
    cJSON_Delete(doc);
    return 0;
}
