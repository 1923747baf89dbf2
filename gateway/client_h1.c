/*
 * The HTTP/1.1 client side: a client connection and the requests on it,
 * one at a time (gateway/internal.h, "the request's life"). This file owns
 * the bytes — llhttp (strict mode) parsing, the line-end checks, framing
 * the response (Content-Length, chunked, or until the close), keep-alive,
 * pipelining, lingering close — and request.c owns the request's life; they
 * meet through struct client and h1_ops.
 *
 * The parser pauses when a request has been read whole and resumes when
 * that request has ended, so pipelined requests are answered in order. A
 * request (and its parse state here) exists from its first byte: an idle
 * connection holds none, and no buffers either.
 *
 * Reading is bounded per connection (SPEC §3.7): it pauses while more than
 * limits.max_client_output_bytes wait to be sent, while max_pipelined
 * answers wait unsent, while unparsed input exceeds one head's worth, and
 * while the request cannot take its body (request_wants_body()).
 *
 * The connection's bytes and life (buffers, reads, writes, the lingering
 * close) are conn.c's; this file is what HTTP/1.1 makes of them.
 */

#include "gateway/conn.h"

#include <errno.h>
#include <openssl/ssl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define S(c) ((struct session *)(c))

static llhttp_settings_t req_settings;

/* ---- the client side of a request (h1_ops) ---------------------------------- */

/* A request from its first byte on, with this connection's parse state. */
static struct request *
begin_request(struct session *s)
{
    struct request *r = request_new(&s->c);
    if (r == NULL)
        return NULL;
    llhttp_init(&s->parser, HTTP_REQUEST, &req_settings);
    s->parser.data = s;
    s->scan = (struct line_scan){0};
    s->extra_bytes = 0;
    s->bad_line = 0;
    s->version_seen = false;
    s->trailers = false;
    s->head_too_large = false;
    s->resp_framing = FRAME_NONE;
    return r;
}

static enum conn_header
conn_header(const struct session *s, const struct request *r)
{
    return s->c.ending || !s->keep_alive ? CONN_CLOSE :
        r->line.minor == 0 ? CONN_KEEP_ALIVE : CONN_NONE;
}

static void
h1_send_head(struct client *c, struct request *r, const struct resp_info *ri)
{
    struct session *s = S(c);

    if (c->w->draining)
        c->ending = true;
    if (ri->no_body)
        /* A HEAD or 304 answer may carry the length of the body it leaves
         * out; a 204 never does. */
        s->resp_framing = ri->has_length && ri->status != 204 ? FRAME_LENGTH : FRAME_NONE;
    else if (ri->has_length)
        s->resp_framing = FRAME_LENGTH;
    else if (r->line.minor == 0) {
        s->resp_framing = FRAME_CLOSE;
        c->ending = true;           /* the length is known only by the close */
    } else
        s->resp_framing = FRAME_CHUNKED;
    struct tags t = request_tags(r);
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);
    compose_response_head(out, ri->status, ri->hd, &t,
                          s->resp_framing == FRAME_CLOSE ? FRAME_NONE : s->resp_framing,
                          ri->content_length, conn_header(s, r));
    r->bytes_out += evbuffer_get_length(out) - before;
}

static bool
h1_send_body(struct client *c, struct request *r, const char *at, size_t len)
{
    struct session *s = S(c);
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);

    if (s->resp_framing == FRAME_CHUNKED) {
        buf_chunk_size(out, len);
        evbuffer_add(out, at, len);
        BUF_LIT(out, "\r\n");
    } else
        evbuffer_add(out, at, len);
    size_t after = evbuffer_get_length(out);
    r->bytes_out += after - before;
    return after > GW_HIGH_WATER;
}

static void
h1_send_end(struct client *c, struct request *r, const struct head *trailers)
{
    struct session *s = S(c);
    if (s->resp_framing == FRAME_CHUNKED) {
        BUF_LIT(client_out(s), "0\r\n\r\n");
        r->bytes_out += 5;
    }
}

static void
h1_send_error(struct client *c, struct request *r, int status, const char *code,
              const char *message)
{
    struct session *s = S(c);
    struct tags t = request_tags(r);
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);
    /* A response to HEAD has no content (RFC 9110 §9.3.2): its length in
     * the head, no body (the chaos soak's framing check found it sent). */
    compose_error(out, c->w->scratch, status, code, message, &t, conn_header(s, r),
                  r->head_method);
    r->bytes_out += evbuffer_get_length(out) - before;
}

static void
h1_send_continue(struct client *c, struct request *r)
{
    BUF_LIT(client_out(S(c)), "HTTP/1.1 100 Continue\r\n\r\n");
}

/* The parser, paused at the end of the head while the request waited,
 * reads the body again. */
static void
h1_resume_reading(struct client *c, struct request *r)
{
    struct session *s = S(c);
    if (llhttp_get_errno(&s->parser) == HPE_PAUSED)
        llhttp_resume(&s->parser);
}

static void
h1_close_after(struct client *c, struct request *r)
{
    c->ending = true;
}

static void
h1_abort(struct client *c, struct request *r)
{
    start_closing(S(c));
}

static void
h1_run(struct client *c)
{
    session_run(S(c));
}

static void
h1_progress(struct client *c)
{
    struct session *s = S(c);
    client_flush(s);
    update_reading(s);
}

static void
h1_detach(struct client *c, struct request *r)
{
    S(c)->req = NULL;
}

/* The request is over: get ready for the next one, or close. */
static void
h1_ended(struct client *c)
{
    struct session *s = S(c);
    if (out_len(s) > 0)
        s->unsent_answers++;
    if (s->closed)
        return;
    if (c->ending || !s->keep_alive || c->w->draining) {
        start_closing(s);
        return;
    }
    update_reading(s);              /* idle: the idle deadline on the read event */
}

static const struct client_ops h1_ops = {
    .send_head = h1_send_head, .send_body = h1_send_body, .send_end = h1_send_end,
    .send_error = h1_send_error, .send_continue = h1_send_continue,
    .resume_reading = h1_resume_reading, .close_after = h1_close_after,
    .abort = h1_abort, .run = h1_run, .progress = h1_progress,
    .detach = h1_detach, .ended = h1_ended,
};


/* ---- llhttp callbacks for requests ------------------------------------------- */

static int
on_message_begin(llhttp_t *p)
{
    struct session *s = p->data;
    /* The header deadline runs from the first byte of each request, from
     * accept for the first one; no idle deadline while a request runs. */
    int ms = limits(s)->header_timeout_ms;
    if (!s->served) {
        uint64_t now = now_us();
        ms = s->deadline_us > now ? (int)((s->deadline_us - now) / 1000) + 1 : 1;
        s->served = true;
    }
    request_arm_header_deadline(s->req, ms);
    return 0;
}

static int
head_piece(struct session *s, int rc)
{
    struct request *r = s->req;
    /* Trailers land here too, after the head: one budget for both. */
    if (rc < 0 || r->head.len + s->extra_bytes > limits(s)->max_header_bytes) {
        s->head_too_large = true;
        return HPE_USER;
    }
    return 0;
}

/* Check the head's (or the trailers') line ends in this read. */
static bool
scan_head(struct session *s, const char *from)
{
    enum req_scan st = req_scan_lines(&s->scan, from, s->chunk, s->chunk_end, s->prev_byte);
    if (st == SCAN_BARE_LF || st == SCAN_FOLD)
        s->bad_line = (uint8_t)st;
    return s->bad_line == 0;
}

static int
on_method(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    if (!s->scan.active && s->req->head.url_len == 0 && !s->bad_line) {
        s->scan = (struct line_scan){.active = true};
        if (!scan_head(s, at))
            return HPE_USER;
    }
    return 0;
}

static int
on_version_complete(llhttp_t *p)
{
    struct session *s = p->data;
    s->version_seen = true;
    return 0;
}

static int
on_url(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return head_piece(s, head_url(&s->req->head, at, len));
}

static int
on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    struct request *r = s->req;
    if (r->t_start_us != 0 && !s->trailers) {
        /* The first trailer: its lines are checked like the head's. */
        s->trailers = true;
        s->scan = (struct line_scan){.active = true};
        if (!scan_head(s, at))
            return HPE_USER;
    }
    return head_piece(s, head_field(&r->head, at, len));
}

static int
on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return head_piece(s, head_value(&s->req->head, at, len));
}

/* Chunk extensions and trailers count toward max_header_bytes (SPEC §3.7). */
static int
on_extra_bytes(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    s->extra_bytes += len;
    if (s->req->head.len + s->extra_bytes > limits(s)->max_header_bytes) {
        s->head_too_large = true;
        return HPE_USER;
    }
    return 0;
}

/*
 * The head is complete: validate it as HTTP/1.1 (validate.c), then the
 * request's life takes it (request_start). Returns 0 to go on reading the
 * body (forwarded, or dropped after an answer), HPE_PAUSED while the
 * request waits for a slot, HPE_USER to stop reading (the connection
 * closes).
 */
static int
on_headers_complete(llhttp_t *p)
{
    struct session *s = p->data;
    struct worker *w = s->c.w;
    struct request *r = s->req;
    struct head *hd = &r->head;

    r->t_start_us = now_us();
    if (r->cfg != w->cfg) {         /* a new generation since the first byte */
        config_drop(r->cfg);
        r->cfg = config_take(w->cfg);
    }
    head_classify(hd);
    r->line = (struct req_line){
        .method = p->method, .major = p->http_major, .minor = p->http_minor,
        .chunked = (p->flags & F_CHUNKED) != 0,
        .has_length = (p->flags & F_CONTENT_LENGTH) != 0,
        .content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0,
        .upgrade = p->upgrade != 0 || (p->flags & F_UPGRADE) != 0,
    };
    r->head_method = p->method == HTTP_HEAD;
    s->keep_alive = llhttp_should_keep_alive(p);
    request_take_id(r);

    struct req_verdict vd = req_validate(hd, &r->line, limits(s), &r->target);
    if (vd.cause != RC_OK) {
        request_reply(r, vd.cause, vd.message, vd.close);
        return vd.close ? HPE_USER : 0;
    }
    /* A queued request's body stays unread until it gets a slot. */
    return request_start(r) ? HPE_PAUSED : 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return request_body(s->req, at, len) ? 0 : HPE_USER;
}

static int
on_message_complete(llhttp_t *p)
{
    struct session *s = p->data;
    request_body_end(s->req);
    return HPE_PAUSED;              /* the next request waits for this one's end */
}

/* ---- reading from the client ------------------------------------------------- */

/* A parse error: the request gets a 400 (or 431, 505) and the connection
 * closes; if it was already answered, the connection just closes. */
static void
parse_failed(struct session *s, enum llhttp_errno e)
{
    if (s->req == NULL) {
        s->req = begin_request(s);
        if (s->req == NULL) {
            session_close(s);
            return;
        }
    }
    struct request *r = s->req;
    if (r->phase == RP_ANSWERED || (r->phase != RP_HEAD && r->discard)) {
        s->c.ending = true;
    } else if (s->head_too_large) {
        request_reply(r, r->routed ? RC_BAD_REQUEST : RC_HEADERS_TOO_LARGE, r->routed ?
                      "chunk extensions or trailers over max_header_bytes" :
                      "the request headers are over max_header_bytes", true);
    } else if (s->bad_line) {
        request_reply(r, RC_BAD_REQUEST, s->bad_line == SCAN_FOLD ?
                      "malformed HTTP: a folded header line (obs-fold)" :
                      "malformed HTTP: a line of the head ends in a bare LF", true);
    } else {
        char msg[160];
        const char *why = llhttp_get_error_reason(&s->parser);
        snprintf(msg, sizeof(msg), "malformed HTTP: %s", why ? why : llhttp_errno_name(e));
        /* 505 for a well-formed version other than 1.0 and 1.1; a line
         * that goes wrong after its version is malformed (400). */
        request_reply(r, s->version_seen ? RC_BAD_REQUEST : req_parse_error_cause(e), msg, true);
    }
    s->c.ending = true;
    request_maybe_end(s->req);
}

/* Whether the parser may take more input now. */
static bool
may_parse(struct session *s)
{
    if (s->closing || s->closed)
        return false;
    if (out_len(s) > limits(s)->max_client_output_bytes)
        return false;               /* a client that does not read */
    if (s->req == NULL)             /* a new request starts here */
        return s->unsent_answers < limits(s)->max_pipelined;
    return request_wants_body(s->req);
}

/* A new connection on a listener that offers HTTP/2: TLS chose "h2", or a
 * plain client opens with the HTTP/2 preface (prior knowledge). 1: it
 * speaks HTTP/2 now, -1: wait for more bytes, 0: HTTP/1.1. */
static int
maybe_h2(struct session *s)
{
    int p;
    if (s->io.ssl != NULL) {
        const unsigned char *proto = NULL;
        unsigned int len = 0;
        SSL_get0_alpn_selected(s->io.ssl, &proto, &len);
        p = len == 2 && memcmp(proto, "h2", 2) == 0;
    } else
        p = h2_preface(s->io.in);
    if (p == 1 && !h2_attach(s)) {
        session_close(s);
        return -1;
    }
    return p;
}

/* Feed buffered client input to the parser for as long as it may run. */
static void
session_feed(struct session *s)
{
    struct evbuffer *in = s->io.in;

    if (s->h2_allowed && !s->served && s->req == NULL && in != NULL &&
        evbuffer_get_length(in) > 0) {
        int p = maybe_h2(s);
        s->sniffing = p == -1;
        if (p != 0) {
            if (p == 1)
                s->proto->run(s);
            return;
        }
        s->h2_allowed = false;      /* decided: HTTP/1.1 */
    }

    while (in != NULL && may_parse(s)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        /* A request (and its parser) exists from its first byte on: an
         * idle connection holds none. */
        if (s->req == NULL && (s->req = begin_request(s)) == NULL) {
            session_close(s);
            return;
        }
        struct request *r = s->req;
        s->chunk = v.iov_base;
        s->chunk_end = s->chunk + v.iov_len;
        enum llhttp_errno e;
        if (s->scan.active && !scan_head(s, s->chunk)) {
            e = HPE_USER;
            llhttp_set_error_reason(&s->parser, "malformed line in the head");
        } else
            e = llhttp_execute(&s->parser, v.iov_base, v.iov_len);
        if (s->closed)
            return;
        size_t n = v.iov_len;
        if (e == HPE_PAUSED)
            n = (size_t)(llhttp_get_error_pos(&s->parser) - (const char *)v.iov_base);
        if (n > 0)
            s->prev_byte = s->chunk[n - 1];
        r->bytes_in += n;
        evbuffer_drain(in, n);
        if (e != HPE_OK && e != HPE_PAUSED) {
            parse_failed(s, e);
            return;
        }
        if (e == HPE_PAUSED && s->req != NULL && s->req->body_done)
            request_maybe_end(s->req);  /* answered early, now read whole */
    }
}

/* Move everything along after any event: parse, flush, end what is done,
 * decide whether to read. */
void
session_run(struct session *s)
{
    if (s->closed)
        return;
    session_feed(s);
    if (s->closed)
        return;
    if (s->req != NULL)
        request_flush_upstream(s->req);
    if (s->closing) {
        start_closing(s);
        return;
    }
    client_flush(s);
    update_reading(s);
    release_bufs(s);
}

/* ---- a connection that speaks HTTP/1.1 ------------------------------------ */

static void
init_settings(void)
{
    if (req_settings.on_message_begin != NULL)
        return;
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = on_message_begin;
    req_settings.on_method = on_method;
    req_settings.on_version_complete = on_version_complete;
    req_settings.on_url = on_url;
    req_settings.on_header_field = on_header_field;
    req_settings.on_header_value = on_header_value;
    req_settings.on_chunk_extension_name = on_extra_bytes;
    req_settings.on_chunk_extension_value = on_extra_bytes;
    req_settings.on_headers_complete = on_headers_complete;
    req_settings.on_body = on_body;
    req_settings.on_message_complete = on_message_complete;
}

static bool
h1_busy(const struct session *s)
{
    return s->req != NULL;
}

static void
h1_end_all(struct session *s, enum req_cause cause)
{
    request_client_left(s->req, cause);
    request_end(s->req);
}

static void
h1_drained(struct session *s)
{
    if (s->req != NULL)
        request_client_drained(s->req);
}

/* The request being answered is the last one. */
static void
h1_drain(struct session *s)
{
    s->c.ending = true;
}

static void
h1_free(struct session *s)
{
}

static const struct conn_proto h1_proto = {
    .name = "HTTP/1.1", .feed = session_feed, .run = session_run, .busy = h1_busy,
    .end_all = h1_end_all, .drained = h1_drained, .drain = h1_drain, .free = h1_free,
};

static void
h1_attach(struct session *s)
{
    init_settings();
    s->c.ops = &h1_ops;
    s->proto = &h1_proto;
}

/* Every connection starts as HTTP/1.1 (and may turn HTTP/2 at its first
 * bytes: maybe_h2()). */
void
session_new(struct worker *w, int fd, struct sockaddr *sa, int salen, struct ssl_ctx_st *tls,
            bool http2)
{
    conn_accept(w, fd, sa, salen, tls, http2, h1_attach);
}
