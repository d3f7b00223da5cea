#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "util.h"
#define HS_LOG_TAG "http"
#include "log.h"

struct hs_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    int sockets; /* uv_poll_t still open */
    int closing;
    void (*close_cb)(void *);
    void *close_data;
    uv_timer_t cancel_timer; /* delivers cancels on a later iteration */
    struct hs_http_req **canceled;
    size_t ncanceled;
};

struct http_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct hs_http *http;
};

static void http_check_done(struct hs_http *http)
{
    CURLMsg *msg;
    int pending;

    while ((msg = curl_multi_info_read(http->multi, &pending)) != NULL) {
        struct hs_http_req *req = NULL;
        long status = 0;

        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&req);
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(http->multi, msg->easy_handle);
        req->active = 0;
        req->done(req, msg->data.result, status);
    }
}

static void http_poll_cb(uv_poll_t *handle, int status, int events)
{
    struct http_sock *s = handle->data;
    int flags = 0, running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(s->http->multi, s->fd, flags, &running);
    http_check_done(s->http);
}

static void http_timer_cb(uv_timer_t *t)
{
    struct hs_http *http = t->data;
    int running;

    curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    http_check_done(http);
}

static int http_timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    struct hs_http *http = userp;

    if (timeout_ms < 0)
        uv_timer_stop(&http->timer);
    else
        /* never socket_action from inside curl: 0 becomes 1 ms */
        uv_timer_start(&http->timer, http_timer_cb, timeout_ms ? (uint64_t)timeout_ms : 1, 0);
    return 0;
}

static void http_sock_closed(uv_handle_t *h)
{
    struct http_sock *s = h->data;
    struct hs_http *http = s->http;

    free(s);
    http->sockets--;
}

static int http_socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    struct hs_http *http = userp;
    struct http_sock *s = sockp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, http_sock_closed);
            curl_multi_assign(http->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = hs__calloc(1, sizeof(*s));
        s->fd = fd;
        s->http = http;
        if (uv_poll_init_socket(http->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        http->sockets++;
        curl_multi_assign(http->multi, fd, s);
    }
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, http_poll_cb);
    return 0;
}

int hs__http_new(uv_loop_t *loop, struct hs_http **out)
{
    static int global_done;
    struct hs_http *http;

    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -ENOMEM;
        global_done = 1;
    }
    http = hs__calloc(1, sizeof(*http));
    http->loop = loop;
    http->multi = curl_multi_init();
    if (!http->multi) {
        free(http);
        return -ENOMEM;
    }
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, http_socket_fn);
    curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, http_timer_fn);
    curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
    uv_timer_init(loop, &http->timer);
    uv_timer_init(loop, &http->cancel_timer);
    http->timer.data = http->cancel_timer.data = http;
    *out = http;
    return 0;
}

static size_t http_write_cb(char *ptr, size_t size, size_t n, void *userdata)
{
    struct hs_http_req *req = userdata;
    size_t len = size * n, keep = len;

    if (req->body_len + keep > HS_HTTP_BODY_MAX)
        keep = HS_HTTP_BODY_MAX - req->body_len;
    if (keep) {
        char *p = realloc(req->body, req->body_len + keep + 1);

        if (!p)
            return 0;
        req->body = p;
        memcpy(req->body + req->body_len, ptr, keep);
        req->body_len += keep;
        req->body[req->body_len] = '\0';
    }
    return len;
}

static void header_value(const char *line, size_t len, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name), v;

    if (len <= n + 1 || strncasecmp(line, name, n) || line[n] != ':')
        return;
    for (v = n + 1; v < len && isspace((unsigned char)line[v]); v++)
        ;
    while (len > v && isspace((unsigned char)line[len - 1]))
        len--;
    snprintf(out, outlen, "%.*s", (int)(len - v), line + v);
}

static size_t http_header_cb(char *line, size_t size, size_t n, void *userdata)
{
    struct hs_http_req *req = userdata;
    size_t len = size * n;

    header_value(line, len, "X-Openstack-Request-Id", req->request_id, sizeof(req->request_id));
    header_value(line, len, "X-Subject-Token", req->subject_token, sizeof(req->subject_token));
    return len;
}

void hs__http_req_init(struct hs_http_req *req, const char *method, const char *url)
{
    void *data = req->data;

    memset(req, 0, sizeof(*req));
    req->data = data;
    req->easy = curl_easy_init();
    if (!req->easy)
        abort();
    curl_easy_setopt(req->easy, CURLOPT_URL, url);
    curl_easy_setopt(req->easy, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(req->easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt(req->easy, CURLOPT_WRITEFUNCTION, http_write_cb);
    curl_easy_setopt(req->easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_HEADERFUNCTION, http_header_cb);
    curl_easy_setopt(req->easy, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(req->easy, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(req->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(req->easy, CURLOPT_CONNECTTIMEOUT, 10L);
    /* a catalog or a redirect may name file:// or worse: only the web */
    curl_easy_setopt(req->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(req->easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(req->easy, CURLOPT_NOBODY, 1L);
}

void hs__http_header(struct hs_http_req *req, const char *fmt, ...)
{
    struct curl_slist *l;
    va_list ap;
    char *h;

    va_start(ap, fmt);
    if (vasprintf(&h, fmt, ap) < 0)
        abort();
    va_end(ap);
    l = curl_slist_append(req->headers, h);
    free(h);
    if (!l)
        abort();
    req->headers = l;
}

static void http_cancel_cb(uv_timer_t *t)
{
    struct hs_http *http = t->data;

    while (http->ncanceled > 0) {
        struct hs_http_req *req = http->canceled[--http->ncanceled];

        req->done(req, CURLE_ABORTED_BY_CALLBACK, 0);
    }
}

int hs__http_start(struct hs_http *http, struct hs_http_req *req, hs_http_done_cb done)
{
    CURLMcode mc;

    req->http = http;
    req->done = done;
    if (req->headers)
        curl_easy_setopt(req->easy, CURLOPT_HTTPHEADER, req->headers);
    mc = curl_multi_add_handle(http->multi, req->easy);
    if (mc != CURLM_OK)
        return -ENOMEM;
    req->active = 1;
    return 0;
}

void hs__http_cancel(struct hs_http_req *req)
{
    struct hs_http *http = req->http;

    if (!req->active)
        return;
    curl_multi_remove_handle(http->multi, req->easy);
    req->active = 0;
    http->canceled = realloc(http->canceled, (http->ncanceled + 1) * sizeof(*http->canceled));
    if (!http->canceled)
        abort();
    http->canceled[http->ncanceled++] = req;
    uv_timer_start(&http->cancel_timer, http_cancel_cb, 0, 0);
}

void hs__http_req_clear(struct hs_http_req *req)
{
    if (req->easy)
        curl_easy_cleanup(req->easy);
    curl_slist_free_all(req->headers);
    free(req->body);
    req->easy = NULL;
    req->headers = NULL;
    req->body = NULL;
    req->body_len = 0;
}

static void http_closed(uv_handle_t *h)
{
    struct hs_http *http = h->data;

    if (--http->closing > 0)
        return;
    free(http->canceled);
    if (http->close_cb)
        http->close_cb(http->close_data);
    free(http);
}

void hs__http_close(struct hs_http *http, void (*cb)(void *data), void *data)
{
    http->close_cb = cb;
    http->close_data = data;
    curl_multi_cleanup(http->multi); /* removes its sockets: their polls close */
    http->closing = 2;
    uv_close((uv_handle_t *)&http->timer, http_closed);
    uv_close((uv_handle_t *)&http->cancel_timer, http_closed);
}
