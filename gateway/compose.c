/*
 * Composing heads: the request head a model server gets, the response head
 * a client gets, and Sluice's own JSON error replies. Values in, bytes out:
 * nothing here knows about sessions or sockets (tests/unit/test_gateway.c).
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <string.h>

static void
add_tags(struct evbuffer *out, const struct tags *t)
{
    if (t->version != NULL) {
        BUF_LIT(out, "X-Sluice-Version: ");
        buf_str(out, t->version);
        BUF_LIT(out, "\r\nX-Sluice-Group: ");
        buf_str(out, t->group);
        BUF_LIT(out, "\r\n");
    }
    if (t->failover)
        BUF_LIT(out, "X-Sluice-Failover: true\r\n");
    BUF_LIT(out, "X-Request-Id: ");
    buf_str(out, t->request_id);
    BUF_LIT(out, "\r\n");
}

static void
add_header(struct evbuffer *out, const struct head *hd, int i)
{
    evbuffer_add(out, HD_NAME(hd, i), hd->h[i].name_len);
    BUF_LIT(out, ": ");
    evbuffer_add(out, HD_VAL(hd, i), hd->h[i].val_len);
    BUF_LIT(out, "\r\n");
}

static void
add_framing(struct evbuffer *out, enum framing f, uint64_t length)
{
    if (f == FRAME_CHUNKED)
        BUF_LIT(out, "Transfer-Encoding: chunked\r\n");
    else if (f == FRAME_LENGTH) {
        BUF_LIT(out, "Content-Length: ");
        buf_u64(out, length);
        BUF_LIT(out, "\r\n");
    }
}

static void
add_connection(struct evbuffer *out, enum conn_header c)
{
    if (c == CONN_CLOSE)
        BUF_LIT(out, "Connection: close\r\n");
    else if (c == CONN_KEEP_ALIVE)
        BUF_LIT(out, "Connection: keep-alive\r\n");
}

void
compose_request_head(struct evbuffer *out, const struct upstream_request *r)
{
    const struct head *hd = r->hd;
    const char *xff = NULL;
    uint32_t xff_len = 0;

    buf_str(out, r->method);
    BUF_LIT(out, " ");
    evbuffer_add(out, r->path, r->path_len);
    if (r->query != NULL) {
        BUF_LIT(out, "?");
        evbuffer_add(out, r->query, r->query_len);
    }
    BUF_LIT(out, " HTTP/1.1\r\n");
    for (int i = 0; i < hd->n; i++) {
        switch (hd->cls[i]) {
        case HC_OTHER: case HC_HOST: case HC_COOKIE:
            add_header(out, hd, i);
            break;
        case HC_XFF:
            if (xff == NULL) {
                xff = HD_VAL(hd, i);
                xff_len = hd->h[i].val_len;
            }
            break;
        default:
            break;          /* hop-by-hop, framing, credentials, or ours */
        }
    }
    if (hd->count[HC_HOST] == 0 && r->default_host != NULL) {
        BUF_LIT(out, "Host: ");
        buf_str(out, r->default_host);
        BUF_LIT(out, "\r\n");
    }
    BUF_LIT(out, "X-Forwarded-For: ");
    if (xff != NULL) {
        evbuffer_add(out, xff, xff_len);
        BUF_LIT(out, ", ");
    }
    buf_str(out, r->peer);
    BUF_LIT(out, "\r\nX-Forwarded-Proto: ");
    buf_str(out, r->proto);
    BUF_LIT(out, "\r\n");
    if (r->traceparent != NULL) {
        BUF_LIT(out, "traceparent: ");
        evbuffer_add(out, r->traceparent, TRACING_TRACEPARENT_LEN);
        BUF_LIT(out, "\r\n");
    }
    if (r->tracestate_len > 0) {
        BUF_LIT(out, "tracestate: ");
        evbuffer_add(out, r->tracestate, r->tracestate_len);
        BUF_LIT(out, "\r\n");
    }
    add_tags(out, &r->tags);
    add_framing(out, r->framing, r->content_length);
    BUF_LIT(out, "\r\n");
}

static void
status_line(struct evbuffer *out, int status, const char *reason, size_t reason_len)
{
    BUF_LIT(out, "HTTP/1.1 ");
    buf_u64(out, (uint64_t)status);
    BUF_LIT(out, " ");
    if (reason != NULL && reason_len > 0)
        evbuffer_add(out, reason, reason_len);
    else
        buf_str(out, http_reason(status));
    BUF_LIT(out, "\r\n");
}

void
compose_response_head(struct evbuffer *out, int status, const struct head *up,
                      const struct tags *tags, enum framing framing,
                      uint64_t content_length, enum conn_header conn)
{
    status_line(out, status, up->buf != NULL ? up->buf + up->url_off : NULL, up->url_len);
    for (int i = 0; i < up->n; i++) {
        switch (up->cls[i]) {
        case HC_HOP: case HC_CONNECTION: case HC_CONTENT_LENGTH:
        case HC_TRANSFER_ENCODING: case HC_SLUICE: case HC_REQUEST_ID:
            continue;               /* hop-by-hop, framing, or ours */
        default:
            add_header(out, up, i);
        }
    }
    add_framing(out, framing, content_length);
    add_tags(out, tags);
    add_connection(out, conn);
    BUF_LIT(out, "\r\n");
}

size_t
compose_error_body(struct evbuffer *out, const char *code, const char *message)
{
    size_t before = evbuffer_get_length(out);
    BUF_LIT(out, "{\"error\":{\"code\":\"");
    buf_str(out, code);
    BUF_LIT(out, "\",\"message\":\"");
    json_escape_add(out, message, strlen(message));
    BUF_LIT(out, "\"}}\n");
    return evbuffer_get_length(out) - before;
}

void
compose_error(struct evbuffer *out, struct evbuffer *scratch, int status,
              const char *code, const char *message, const struct tags *tags,
              enum conn_header conn, bool head_only)
{
    compose_error_body(scratch, code, message);

    status_line(out, status, NULL, 0);
    BUF_LIT(out, "Content-Type: application/json\r\n");
    add_framing(out, FRAME_LENGTH, evbuffer_get_length(scratch));
    add_tags(out, tags);
    if (status == 401)
        BUF_LIT(out, "WWW-Authenticate: Bearer\r\n");
    if (status == 503)
        BUF_LIT(out, "Retry-After: 1\r\n");
    add_connection(out, conn);
    BUF_LIT(out, "\r\n");
    /* Copied rather than moved: a moved chain is at least 1 KiB, and a
     * client that does not read may hold max_pipelined of these. */
    size_t n = evbuffer_get_length(scratch);
    if (!head_only)
        evbuffer_add(out, evbuffer_pullup(scratch, (ev_ssize_t)n), n);
    evbuffer_drain(scratch, n);
}
