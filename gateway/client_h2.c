/*
 * The HTTP/2 client side (SPEC §9): one connection (conn.c's bytes and
 * life), many streams, each stream one request of request.c's, reached
 * through the stream's own struct client and h2_ops. libnghttp2 (1.52's
 * API) frames and checks the protocol: the HTTP messaging rules (pseudo
 * headers, connection-specific headers are stream errors), HPACK, flow
 * control, the CONTINUATION and reset-rate limits.
 *
 * A connection speaks HTTP/2 when TLS chose ALPN "h2", or when a plain
 * listener's client starts with the HTTP/2 preface (prior knowledge);
 * either way the listener must offer it ("http2", default true).
 *
 * Flow control is real backpressure: automatic WINDOW_UPDATEs are off, and
 * a stream's received bytes are given back to its window
 * (nghttp2_session_consume) only as its request hands them on to the
 * upstream connection, which it does only while that connection's backlog
 * is under GW_HIGH_WATER. So a connection holds at most its windows of
 * request bytes. Responses go the same way: a stream's response bytes wait
 * in its own buffer until nghttp2 sends them within the client's window,
 * and the upstream is paused while that buffer is over GW_HIGH_WATER.
 *
 * nghttp2 is never re-entered from its callbacks: the requests' runs are
 * batched into one per loop turn (run_ev). Floods (h2_flood_frame) end the
 * connection with GOAWAY ENHANCE_YOUR_CALM.
 */
#include "gateway/conn.h"
#include "gateway/h2.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

struct h2conn;

struct h2stream {
    struct client c;                /* what its request knows of it (first) */
    struct h2conn *h;
    int32_t id;
    struct request *req;
    struct evbuffer *in;            /* DATA received, not yet taken by the request */
    struct evbuffer *out;           /* response bytes waiting for nghttp2 */
    size_t head_bytes;              /* of the header list, for max_header_bytes */
    bool end_in;                    /* END_STREAM received */
    bool body_ended;                /* request_body_end() called */
    bool out_eof;                   /* the response's last byte is in out */
    bool responded;                 /* response HEADERS submitted */
    bool deferred;                  /* the data source waits for out */
    bool paused_up;                 /* the upstream was paused (out over high water) */
    bool reset_after;               /* end the stream (NO_ERROR) once answered */
    nghttp2_nv *trl;                /* trailers to send after the body */
    size_t n_trl;
    char *trl_store;
    bool closing;                   /* reset by us, or closed by nghttp2 */
    int method;                     /* llhttp_method_t; -1 unknown, -2 none yet */
    struct h2stream *next, *prev;
    struct h2stream *dead_next;     /* on h->dead, waiting for the reap event */
};

struct h2conn {
    struct session *s;
    nghttp2_session *ng;
    struct h2stream *streams;
    int n_streams;
    struct h2stream *hd_st;         /* the stream of the header block being read */
    struct h2stream *dead;          /* closed streams whose memory goes at reap */
    struct event *reap;
    bool in_ng;                     /* inside nghttp2: do not re-enter */
    struct event *run_ev;           /* the requests' runs, one per loop turn */
    bool run_armed;                 /* run_ev is active */
    bool want_run;                  /* a run was asked for while in_ng */
    bool goaway;                    /* no new streams */
    bool failed;                    /* fatal: close once what is queued is out */
    bool capped;                    /* feed or send stopped at max_client_output_bytes */
    bool primed;                    /* h2_fields_prime() */
    struct h2_flood flood;
    uint64_t now_us;                /* of this read, for the flood counts */
};

#define ST(c) ((struct h2stream *)(c))

static void h2_run(struct session *s);

/* ---- small helpers -------------------------------------------------------------- */

#define H(s) ((struct h2conn *)(s)->proto_state)

static void
stream_destroy(struct h2stream *st)
{
    worker_buf_put(st->c.w, st->in);
    worker_buf_put(st->c.w, st->out);
    free(st->trl);
    free(st->trl_store);
    gw_free(st);
}

/* The stream leaves the connection now; its memory goes from the reap
 * event, when none of our code is on the stack: nghttp2 may close a stream
 * while its own request is still ending (request_end() -> a waiter of the
 * same connection starts -> h2_run -> the last DATA goes out), and the
 * request's callers still use its client (ops->ended, ops->run) after. */
static void
stream_free(struct h2stream *st)
{
    struct h2conn *h = st->h;
    if (h->hd_st == st)
        h->hd_st = NULL;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    h->n_streams--;
    st->dead_next = h->dead;
    h->dead = st;
    event_active(h->reap, EV_TIMEOUT, 1);
}

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *h = arg;
    while (h->dead != NULL) {
        struct h2stream *st = h->dead;
        h->dead = st->dead_next;
        stream_destroy(st);
    }
}

/* End the connection: GOAWAY with code, then close once it is sent. */
static void
fail_conn(struct h2conn *h, uint32_t code)
{
    if (!h->failed)
        nghttp2_session_terminate_session(h->ng, code);
    h->failed = true;
    h->goaway = true;
}

/* ---- the request body: handed on as the upstream takes it ------------------------ */

/* Give the request what it may take of the stream's DATA, and the window
 * back for it; end the body when END_STREAM came and all was taken. */
/* n body bytes to the request (if any), their window given back. */
static void
take(struct h2stream *st, const void *at, size_t n)
{
    struct request *r = st->req;
    if (r != NULL) {
        r->bytes_in += n;
        if (!request_body(r, at, n)) {
            /* Refused (over max_body_bytes): the rest is dropped. */
            st->reset_after = true;
            if (st->req != NULL)
                request_maybe_end(st->req);
        }
    }
    nghttp2_session_consume(st->h->ng, st->id, n);
    st->h->want_run = true;
}

static void
pump(struct h2stream *st)
{
    while (st->in != NULL && evbuffer_get_length(st->in) > 0) {
        if (st->req != NULL && !request_wants_body(st->req))
            return;
        struct evbuffer_iovec v;
        if (evbuffer_peek(st->in, -1, NULL, &v, 1) < 1)
            break;
        take(st, v.iov_base, v.iov_len);
        evbuffer_drain(st->in, v.iov_len);
    }
    if (st->end_in && !st->body_ended && st->req != NULL &&
        (st->in == NULL || evbuffer_get_length(st->in) == 0) &&
        st->req->phase != RP_QUEUED) {
        st->body_ended = true;
        request_body_end(st->req);
        if (st->req != NULL)
            request_maybe_end(st->req);
    }
}

/* ---- the response: a data source over the stream's buffer ---------------------- */

static ssize_t
read_out(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
         nghttp2_data_source *src, void *user)
{
    struct h2stream *st = src->ptr;
    ssize_t n = h2_source_read(st->out, st->out_eof, &st->deferred, buf, len, flags);
    if (*flags & NGHTTP2_DATA_FLAG_EOF) {
        if (st->trl != NULL) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(ng, id, st->trl, st->n_trl);
            free(st->trl);
            free(st->trl_store);
            st->trl = NULL;
            st->trl_store = NULL;
        }
        if (st->reset_after && !st->end_in)
            /* Answered before the whole request came: the client may
             * stop sending (RFC 9113 §8.1). */
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    }
    return n;
}

static void
out_more(struct h2stream *st)
{
    if (st->deferred && st->responded) {
        st->deferred = false;
        nghttp2_session_resume_data(st->h->ng, st->id);
    }
}

/* Header lists: names lowercase (RFC 9113 §8.2.1). */
static void
submit(struct h2stream *st, struct h2_fields *v, bool body)
{
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_out};
    st->responded = true;
    h2_fields_prime(v->nv, (size_t)v->n, &st->h->primed);
    if (nghttp2_submit_response(st->h->ng, st->id, v->nv, (size_t)v->n,
                                body ? &prd : NULL) != 0)
        nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id,
                                  NGHTTP2_INTERNAL_ERROR);
    st->h->want_run = true;
}

/* ---- the stream's client side (h2_ops) ---------------------------------------------- */

static void
h2_send_head(struct client *c, struct request *r, const struct resp_info *ri)
{
    struct h2stream *st = ST(c);
    struct h2_fields f;
    struct tags t = request_tags(r);
    h2_fields_response(&f, ri, &t);
    if (ri->no_body)
        st->out_eof = true;
    submit(st, &f, !ri->no_body);
}

static bool
h2_send_body(struct client *c, struct request *r, const char *at, size_t len)
{
    struct h2stream *st = ST(c);
    if (st->out == NULL && (st->out = worker_buf_get(st->c.w)) == NULL)
        return false;
    evbuffer_add(st->out, at, len);
    r->bytes_out += len;
    out_more(st);
    st->h->want_run = true;
    if (evbuffer_get_length(st->out) > GW_HIGH_WATER) {
        st->paused_up = true;
        return true;
    }
    return false;
}

static void
h2_send_end(struct client *c, struct request *r, const struct head *trailers)
{
    struct h2stream *st = ST(c);
    if (trailers != NULL && trailers->n > 0 && st->trl == NULL)
        /* Copied: the upstream's head goes with its connection. */
        st->n_trl = h2_fields_copy(trailers, &st->trl, &st->trl_store);
    st->out_eof = true;
    out_more(st);
    st->h->want_run = true;
}

static void
h2_send_error(struct client *c, struct request *r, int status, const char *code,
              const char *message)
{
    struct h2stream *st = ST(c);
    struct h2_fields f;
    struct tags t = request_tags(r);
    st->out_eof = true;
    if (r->grpc) {
        h2_fields_grpc_error(&f, status, message, &t);
        submit(st, &f, false);
        return;
    }
    if (st->out == NULL && (st->out = worker_buf_get(st->c.w)) == NULL)
        return;
    size_t n = compose_error_body(st->out, code, message);
    /* A response to HEAD has no content (RFC 9110 §9.3.2): its length,
     * no DATA. */
    bool body = !r->head_method;
    if (body)
        r->bytes_out += n;
    else
        evbuffer_drain(st->out, n);
    h2_fields_error(&f, status, n, &t);
    submit(st, &f, body);
}

static void
h2_send_continue(struct client *c, struct request *r)
{
    /* none: flow control does what Expect did */
}

static void
h2_resume_reading(struct client *c, struct request *r)
{
    ST(c)->h->want_run = true;      /* the run pumps what waited */
}

static void
h2_close_after(struct client *c, struct request *r)
{
    c->ending = true;
    ST(c)->reset_after = true;
}

static void
h2_abort(struct client *c, struct request *r)
{
    struct h2stream *st = ST(c);
    st->closing = true;
    nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    request_client_left(r, RC_CLIENT_CLOSED);
    request_end(r);
    st->h->want_run = true;
}

/* What the requests ask (after an answer, a body piece, an end) runs once
 * at the end of this turn of the loop: many streams' frames go out in one
 * write, not one write each. */
static void
h2_ops_run(struct client *c)
{
    struct h2conn *h = ST(c)->h;
    h->want_run = true;
    if (h->run_ev != NULL && !h->run_armed) {
        h->run_armed = true;        /* once a turn, however many ask */
        event_active(h->run_ev, EV_TIMEOUT, 1);
    }
}

static void
run_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2conn *h = arg;
    h->run_armed = false;
    h2_run(h->s);
}

static void
h2_detach(struct client *c, struct request *r)
{
    struct h2stream *st = ST(c);
    st->req = NULL;
    if (!st->out_eof && !st->closing && !st->h->s->closed) {
        /* Its request ended before its response did (the model server
         * failed or timed out mid-response): nothing more will come, and
         * only a reset tells the client so (HTTP/1.1 closes instead). */
        st->closing = true;
        nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id,
                                  NGHTTP2_INTERNAL_ERROR);
        st->h->want_run = true;
    }
}

static void
h2_ended(struct client *c)
{
    /* the stream lives on until nghttp2 closes it (on_stream_close) */
}

static const struct client_ops h2_ops = {
    .send_head = h2_send_head, .send_body = h2_send_body, .send_end = h2_send_end,
    .send_error = h2_send_error, .send_continue = h2_send_continue,
    .resume_reading = h2_resume_reading, .close_after = h2_close_after, .abort = h2_abort,
    .run = h2_ops_run, .progress = h2_ops_run, .detach = h2_detach, .ended = h2_ended,
};

/* ---- nghttp2 callbacks: requests in ------------------------------------------------ */

static int
on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user)
{
    struct h2conn *h = user;
    if (h2_flood_frame(&h->flood, hd->type, hd->flags, hd->length,
                       h->s->c.w->cfg->limits.h2_max_concurrent_streams, h->now_us)) {
        fail_conn(h, NGHTTP2_ENHANCE_YOUR_CALM);
        metrics_h2_flood(h->s->c.w->metrics, h2_flood_kind(hd->type));
        log_event(LOG_WARN, "h2_flood", ",\"client\":\"%s\"", log_json(h->s->c.peer));
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int
on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    struct h2conn *h = user;
    struct session *s = h->s;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailers: their stream, looked up once a block, not once a field. */
        h->hd_st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        return 0;
    }
    if (h->goaway) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    /* From the thread's free lists: at 100 streams in flight, glibc's
     * thread cache (7 per size) no longer has them. */
    struct h2stream *st = gw_malloc(sizeof(*st));
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memset(st, 0, sizeof(*st));
    st->c.ops = &h2_ops;
    st->c.w = s->c.w;
    st->c.proto = s->c.proto;
    st->c.auth = &s->auth;
    st->c.protocol = "HTTP/2";
    memcpy(st->c.peer, s->c.peer, sizeof(st->c.peer));
    st->h = h;
    st->id = frame->hd.stream_id;
    st->method = -2;
    st->req = request_new(&st->c);
    if (st->req == NULL) {
        gw_free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->next = h->streams;
    if (h->streams != NULL)
        h->streams->prev = st;
    h->streams = st;
    h->n_streams++;
    s->served = true;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    h->hd_st = st;
    /* The head and the body within header_timeout_ms, as over HTTP/1.1. */
    request_arm_header_deadline(st->req, st->c.w->cfg->limits.header_timeout_ms);
    return 0;
}

static int
on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
          const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct h2conn *h = user;
    struct h2stream *st = h->hd_st;
    if (st == NULL || st->id != frame->hd.stream_id)
        st = h->hd_st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL || st->req == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct request *r = st->req;
    struct head *hd = &r->head;
    st->head_bytes += nlen + vlen + 32;     /* as SETTINGS_MAX_HEADER_LIST_SIZE counts */
    if (st->head_bytes > st->c.w->cfg->limits.max_header_bytes) {
        /* Trailers count too (SPEC §3.7): the stream ends. */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (r->t_start_us != 0)
        return 0;                   /* trailers: counted, not passed on */
    int rc = h2_request_field(hd, (const char *)name, nlen, (const char *)value, vlen,
                              &st->method);
    return rc < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}


/* The head is complete: the request's line as HTTP/1.1 would have said it,
 * validated, then the request's life takes it. */
static void
head_done(struct h2stream *st, bool end_stream)
{
    struct request *r = st->req;
    struct head *hd = &r->head;
    struct worker *w = st->c.w;

    r->t_start_us = now_us();
    if (r->cfg != w->cfg) {
        config_drop(r->cfg);
        r->cfg = config_take(w->cfg);
    }
    int method = st->method;
    head_classify(hd);
    h2_request_line(r, method, end_stream);
    r->grpc = grpc_is(hd);          /* so that even a refusal is a gRPC one */
    r->bytes_in += st->head_bytes;
    request_take_id(r);
    if (method < 0) {
        request_reply(r, RC_BAD_REQUEST, "method not supported over HTTP/2", true);
        return;
    }
    struct req_verdict vd = req_validate(hd, &r->line, &w->cfg->limits, &r->target);
    if (vd.cause != RC_OK) {
        request_reply(r, vd.cause, vd.message, vd.close);
        return;
    }
    request_start(r);
}

static int
on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    struct h2conn *h = user;
    struct h2stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL || st->req == NULL)
            break;
        if (st->req->t_start_us == 0) {
            if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                break;
            head_done(st, end);
        }
        if (end)
            st->end_in = true;
        if (st->req != NULL || end)
            pump(st);
        break;
    case NGHTTP2_DATA:
        if (st != NULL && end) {
            st->end_in = true;
            pump(st);
        }
        break;
    }
    h->want_run = true;
    return 0;
}

static int
on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
        void *user)
{
    struct h2conn *h = user;
    struct h2stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st == NULL || st->req == NULL) {
        nghttp2_session_consume(ng, id, len);   /* nobody wants it */
        return 0;
    }
    if ((st->in == NULL || evbuffer_get_length(st->in) == 0) && request_wants_body(st->req)) {
        take(st, data, len);        /* taken at once: not copied into in */
        return 0;
    }
    if (st->in == NULL && (st->in = worker_buf_get(st->c.w)) == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    evbuffer_add(st->in, data, len);
    pump(st);
    h->want_run = true;
    return 0;
}

static int
on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    struct h2stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st == NULL)
        return 0;
    st->closing = true;
    if (st->req != NULL) {
        /* Reset, or closed before its request ended: the client left. */
        request_client_left(st->req, code == NGHTTP2_NO_ERROR ? RC_CLIENT_CLOSED :
                            RC_CLIENT_ERROR);
        request_end(st->req);
    }
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    stream_free(st);
    return 0;
}

/* ---- the connection ----------------------------------------------------------------- */

static nghttp2_session_callbacks *callbacks;

static void
h2_feed(struct session *s)
{
    struct h2conn *h = H(s);
    struct evbuffer *in = s->io.in;
    h->now_us = now_us();
    while (in != NULL && !h->failed && !s->closing && !s->closed) {
        if (out_len(s) > limits(s)->max_client_output_bytes) {
            h->capped = evbuffer_get_length(in) > 0;
            break;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        h->in_ng = true;
        ssize_t n = nghttp2_session_mem_recv(h->ng, v.iov_base, v.iov_len);
        h->in_ng = false;
        if (n < 0) {
            bool calm = n == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;    /* a flood (SPEC §9) */
            if (calm && !h->failed)
                metrics_h2_flood(s->c.w->metrics, H2F_CONTINUATION);
            if (!h->failed)
                log_event(LOG_INFO, "h2_connection_error", ",\"client\":\"%s\",\"reason\":\"%s\"",
                          log_json(s->c.peer), log_json(nghttp2_strerror((int)n)));
            fail_conn(h, calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
            evbuffer_drain(in, evbuffer_get_length(in));
            break;
        }
        evbuffer_drain(in, (size_t)n);
    }
}

/* Frames out while the client takes them; streams whose response buffer
 * drained get their upstream back. */
static void
h2_send(struct session *s)
{
    struct h2conn *h = H(s);
    while (!s->closed) {
        if (out_len(s) > limits(s)->max_client_output_bytes) {
            h->capped = true;       /* nghttp2 may have more */
            break;
        }
        const uint8_t *data;
        h->in_ng = true;
        ssize_t n = nghttp2_session_mem_send(h->ng, &data);
        h->in_ng = false;
        if (n <= 0) {
            if (n < 0)
                fail_conn(h, NGHTTP2_INTERNAL_ERROR);
            break;
        }
        evbuffer_add(s->io.out, data, (size_t)n);
    }
    for (struct h2stream *st = h->streams; st != NULL; st = st->next)
        if (st->paused_up && st->req != NULL &&
            (st->out == NULL || evbuffer_get_length(st->out) <= GW_HIGH_WATER)) {
            st->paused_up = false;
            request_client_drained(st->req);
        }
}

static void
h2_run(struct session *s)
{
    struct h2conn *h = H(s);
    if (s->closed)
        return;
    if (h->in_ng) {
        h->want_run = true;
        return;
    }
again:
    h->capped = false;
    do {
        h->want_run = false;
        h2_feed(s);
        if (s->closed)
            return;
        for (struct h2stream *st = h->streams, *next; st != NULL; st = next) {
            next = st->next;
            if (st->req != NULL) {
                pump(st);           /* may end the request (its body's end) */
                if (st->req != NULL)
                    request_flush_upstream(st->req);
            }
        }
        h2_send(s);
    } while (h->want_run && !s->closed);
    if (s->closed)
        return;
    client_flush(s);
    if (s->closed)
        return;
    if (h->capped && !s->io.want_write &&
        out_len(s) <= limits(s)->max_client_output_bytes)
        /* Feeding or sending stopped at the output bound, and the socket
         * then took it all: no write event will come to go on, and the
         * client may send nothing until it has its data. */
        goto again;
    bool done = h->failed || (!nghttp2_session_want_read(h->ng) &&
                              !nghttp2_session_want_write(h->ng)) ||
                (h->goaway && h->n_streams == 0);
    if (done) {
        start_closing(s);
        return;
    }
    update_reading(s);
    release_bufs(s);
}

static bool
h2_busy(const struct session *s)
{
    return H(s) != NULL && H(s)->n_streams > 0;
}

static void
h2_end_all(struct session *s, enum req_cause cause)
{
    struct h2conn *h = H(s);
    for (struct h2stream *st = h->streams; st != NULL; st = st->next)
        if (st->req != NULL) {
            request_client_left(st->req, cause);
            request_end(st->req);
        }
    /* Streams without requests are freed with the session. */
    while (h->streams != NULL) {
        struct h2stream *st = h->streams;
        nghttp2_session_set_stream_user_data(h->ng, st->id, NULL);
        stream_free(st);
    }
}

static void
h2_drained(struct session *s)
{
    H(s)->want_run = true;
}

/* Drain: GOAWAY; the streams already begun finish, then the connection. */
static void
h2_drain(struct session *s)
{
    struct h2conn *h = H(s);
    if (!h->goaway) {
        h->goaway = true;
        nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
    }
    h2_run(s);
}

static void
h2_free(struct session *s)
{
    struct h2conn *h = H(s);
    if (h == NULL)
        return;
    while (h->streams != NULL)
        stream_free(h->streams);
    if (h->run_ev != NULL)
        event_free(h->run_ev);
    reap_cb(-1, 0, h);
    event_free(h->reap);
    nghttp2_session_del(h->ng);
    free(h);
    s->proto_state = NULL;
}

static const struct conn_proto h2_proto = {
    .name = "HTTP/2", .feed = h2_feed, .run = h2_run, .busy = h2_busy,
    .end_all = h2_end_all, .drained = h2_drained, .drain = h2_drain, .free = h2_free,
};

static void
init_callbacks(void)
{
    if (callbacks != NULL)
        return;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
}

/* The connection speaks HTTP/2 from here on: its settings go out first. */
bool
h2_attach(struct session *s)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_callbacks);
    struct h2conn *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return false;
    if (h2_server_new(&h->ng, callbacks, h, limits(s)) != 0) {
        free(h);
        return false;
    }
    h->s = s;
    h->run_ev = event_new(s->c.w->base, -1, 0, run_cb, h);
    if ((h->reap = event_new(s->c.w->base, -1, 0, reap_cb, h)) == NULL || h->run_ev == NULL) {
        if (h->reap != NULL)
            event_free(h->reap);
        if (h->run_ev != NULL)
            event_free(h->run_ev);
        nghttp2_session_del(h->ng);
        free(h);
        return false;
    }
    s->proto_state = h;
    s->proto = &h2_proto;
    s->c.ops = NULL;                /* requests talk to their streams */
    return true;
}
