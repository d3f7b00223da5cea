/*
 * HTTP on the loop: libcurl's multi interface driven by libuv (one uv_poll_t
 * per socket, one uv_timer_t for curl's timeouts), as curl's multi-uv example
 * does. Requests are easy handles the caller sets up; completion is
 * done(req, result, status) on the loop, never from inside hs__http_start.
 */
#ifndef HS_HTTP_H
#define HS_HTTP_H

#include <curl/curl.h>
#include <uv.h>

struct hs_http;
struct hs_http_req;
typedef void (*hs_http_done_cb)(struct hs_http_req *req, CURLcode result, long status);

#define HS_HTTP_BODY_MAX (1 << 20)

struct hs_http_req {
    CURL *easy;                 /* owned: made by hs__http_req_init */
    struct curl_slist *headers; /* owned */
    char *body;                 /* response body, up to HS_HTTP_BODY_MAX */
    size_t body_len;
    char request_id[96];      /* X-Openstack-Request-Id of the response */
    char subject_token[4096]; /* X-Subject-Token (Keystone) */
    char errbuf[CURL_ERROR_SIZE];
    struct hs_http *http;
    hs_http_done_cb done;
    int active;
    void *data;
};

int hs__http_new(uv_loop_t *loop, struct hs_http **out);
/* All requests must be done; @cb once every handle is closed. */
void hs__http_close(struct hs_http *http, void (*cb)(void *data), void *data);

/* A fresh easy handle for @method on @url, collecting the response body and
 * headers. Add headers with hs__http_header, then start. */
void hs__http_req_init(struct hs_http_req *req, const char *method, const char *url);
void hs__http_header(struct hs_http_req *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int hs__http_start(struct hs_http *http, struct hs_http_req *req, hs_http_done_cb done);
/* Stop a request; its done callback runs with CURLE_ABORTED_BY_CALLBACK. */
void hs__http_cancel(struct hs_http_req *req);
/* Free what init made (after done, or instead of start). */
void hs__http_req_clear(struct hs_http_req *req);

#endif
