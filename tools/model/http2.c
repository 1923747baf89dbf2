/*
 * sluice-model's HTTP/2 server connection (libnghttp2 1.52, server side),
 * over any byte transport: the transport feeds what it reads to
 * h2_conn_feed and gives an h2_io that queues bytes and ends the
 * connection (http1.c's sniffing filter, fast.c's raw sockets).
 *
 * Each request stream is answered as its HTTP/1.1 twin would be: the JSON
 * answer with X-Model-Version (or --fast's fixed answer), /__stats, the
 * controls as request headers (x-test-delay-ms, x-test-status,
 * x-test-response-bytes, x-test-close) and the options (--latency-ms,
 * --jitter-ms, --error-rate, --noise, --random-field, --idle-close-max-ms,
 * which closes an idle connection without a GOAWAY). A request with
 * content-type application/grpc goes to grpc.c; where an HTTP request
 * would get an error status, a gRPC call gets a Trailers-Only answer with
 * the matching grpc-status (x-test-grpc-status: N or --grpc-status N ask
 * for one; x-test-grpc-no-trailers: 1 ends the answer with its DATA,
 * without trailers, a broken server). --h2-goaway-after N shuts each
 * connection down gracefully after N streams: the GOAWAY names stream N
 * as the last one processed; the streams above it are closed unanswered
 * (nghttp2 closes them when the GOAWAY is sent: the client knows from the
 * GOAWAY that they were not processed), and the connection closes once
 * the first N are answered. --h2-refuse-every N refuses every Nth stream
 * with RST_STREAM REFUSED_STREAM, as an overloaded server does.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "model.h"

#define H2_MAX_HEADERS 128
#define H2_MAX_BODY (64 * 1024 * 1024)

static unsigned long long begun_all;    /* request streams, for --h2-refuse-every */

struct h2_stream {
    TAILQ_ENTRY(h2_stream) link;
    struct h2_conn *conn;
    int32_t id;
    char *method, *path, *authority, *content_type;
    struct kv *hdrs;            /* the regular headers, copies */
    size_t n_hdrs, cap_hdrs;
    struct evbuffer *body;      /* the request body */
    struct evbuffer *out;       /* the response body still to send */
    long long fill_left;        /* x-test-response-bytes still to send */
    struct event *timer;        /* the delayed answer */
    int status;
    int grpc;                   /* a gRPC call: trailers after the body */
    int grpc_status;            /* -1: none asked for */
    int no_trailers;            /* x-test-grpc-no-trailers: end with the DATA */
    int refused;                /* above the GOAWAY's last stream: not answered */
};

struct h2_conn {
    nghttp2_session *session;
    const struct h2_io *io;
    void *arg;
    TAILQ_HEAD(, h2_stream) streams;
    struct event *idle;         /* --idle-close-max-ms */
    int closed;                 /* io->close was called */
    int served;                 /* a request was answered: idle close applies */
    unsigned begun;             /* request streams begun (--h2-goaway-after) */
    int32_t last_id;            /* the last of them */
    int goaway;                 /* the GOAWAY went: every new stream is refused */
    unsigned started;           /* request streams begun (--h2-drop-after) */
    int drop;                   /* closing without a GOAWAY: new streams refused */
};

int
h2_preface_match(const void *data, size_t len)
{
    size_t n = len < H2_PREFACE_LEN ? len : H2_PREFACE_LEN;

    if (memcmp(data, H2_PREFACE, n) != 0)
        return -1;
    return n == H2_PREFACE_LEN ? 1 : 0;
}

static void
conn_close(struct h2_conn *c)
{
    struct h2_stream *st;

    if (c->closed)
        return;
    c->closed = 1;
    TAILQ_FOREACH(st, &c->streams, link)
        if (st->timer != NULL)
            event_del(st->timer);
    if (c->idle != NULL)
        event_del(c->idle);
    c->io->close(c->arg);
}

/* Send what nghttp2 has queued; end the connection when it is done. */
static void
conn_flush(struct h2_conn *c)
{
    const uint8_t *data;
    ssize_t n;

    if (c->closed)
        return;
    while ((n = nghttp2_session_mem_send(c->session, &data)) > 0)
        if (c->io->write(c->arg, data, (size_t)n) < 0) {
            conn_close(c);
            return;
        }
    if (n < 0 || c->drop || (!nghttp2_session_want_read(c->session) &&
                             !nghttp2_session_want_write(c->session))) {
        conn_close(c);
        return;
    }
    if (c->idle != NULL && c->served && TAILQ_EMPTY(&c->streams)) {
        struct timeval tv = idle_close_delay();
        evtimer_add(c->idle, &tv);
    }
}

static void
on_idle(evutil_socket_t fd, short what, void *arg)
{
    conn_close(arg);            /* abruptly, as an HTTP/1.1 server would */
}

static void
stream_free(struct h2_stream *st)
{
    TAILQ_REMOVE(&st->conn->streams, st, link);
    if (st->timer != NULL)
        event_free(st->timer);
    evbuffer_free(st->body);
    evbuffer_free(st->out);
    free(st->method);
    free(st->path);
    free(st->authority);
    free(st->content_type);
    for (size_t i = 0; i < st->n_hdrs; i++) {
        free((void *)(uintptr_t)st->hdrs[i].name);     /* our strndup copies */
        free((void *)(uintptr_t)st->hdrs[i].value);
    }
    free(st->hdrs);
    free(st);
}

/* nghttp2_nv points at non-const bytes it never writes (NO_COPY unset). */
#define NV(n, v) {(uint8_t *)(uintptr_t)(n), (uint8_t *)(uintptr_t)(v), sizeof(n) - 1, strlen(v), \
                  NGHTTP2_NV_FLAG_NONE}

static ssize_t
read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
          nghttp2_data_source *source, void *user_data)
{
    struct h2_stream *st = source->ptr;
    size_t n;

    if (st->fill_left > 0) {
        n = (long long)length < st->fill_left ? length : (size_t)st->fill_left;
        memset(buf, 'x', n);
        st->fill_left -= (long long)n;
    } else {
        int got = evbuffer_remove(st->out, buf, length);
        n = got > 0 ? (size_t)got : 0;
    }
    if (st->fill_left > 0 || evbuffer_get_length(st->out) > 0)
        return (ssize_t)n;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->grpc && !st->no_trailers) {
        const nghttp2_nv ok[] = {
            NV("grpc-status", "0"),
        };
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(session, id, ok, 1) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}


/* A gRPC call's answer: the message and an OK trailer, or Trailers-Only. */
static void
answer_grpc(struct h2_stream *st)
{
    struct grpc_reply r = {.status = 0, .msg = st->out};
    char code[16];

    if (st->grpc_status > 0) {
        r.status = st->grpc_status;
        snprintf(r.message, sizeof(r.message), "sluice-model %s: %s", opt.name,
                 grpc_status_name(r.status));
    } else {
        size_t len = evbuffer_get_length(st->body);
        grpc_call(st->path, evbuffer_pullup(st->body, (ev_ssize_t)len), len, st->hdrs,
                  st->n_hdrs, &r);
    }
    if (r.status != 0) {
        snprintf(code, sizeof(code), "%d", r.status);
        nghttp2_nv nva[] = {
            NV(":status", "200"), NV("content-type", "application/grpc"),
            NV("x-model-version", opt.name), NV("grpc-status", code),
            NV("grpc-message", r.message),
        };
        evbuffer_drain(st->out, evbuffer_get_length(st->out));
        nghttp2_submit_response(st->conn->session, st->id, nva, 5, NULL);
        return;
    }
    /* the length prefix: not compressed, then the length, big-endian */
    size_t len = evbuffer_get_length(st->out);
    uint8_t prefix[5] = {0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                         (uint8_t)len};
    evbuffer_prepend(st->out, prefix, sizeof(prefix));
    nghttp2_nv nva[] = {
        NV(":status", "200"), NV("content-type", "application/grpc"),
        NV("x-model-version", opt.name),
    };
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_body};
    nghttp2_submit_response(st->conn->session, st->id, nva, 3, &prd);
}

static void
answer(struct h2_stream *st)
{
    char status[16], clen[32];
    const char *ctype = "application/json";

    if (st->grpc) {
        answer_grpc(st);
        return;
    }
    if (opt.fast) {
        static char b[256];
        static int n = -1;
        if (n < 0)
            n = fast_body(b, sizeof(b));
        evbuffer_add_reference(st->out, b, n > 0 && (size_t)n < sizeof(b) ? (size_t)n : 0,
                               NULL, NULL);
    } else if (st->fill_left > 0) {
        ctype = "application/octet-stream";
    } else {
        size_t len = evbuffer_get_length(st->body);
        struct kv hdrs[H2_MAX_HEADERS + 1];
        size_t n = 0;
        int has_host = 0;
        for (size_t i = 0; i < st->n_hdrs; i++)
            has_host |= strcmp(st->hdrs[i].name, "host") == 0;
        if (!has_host && st->authority != NULL)
            hdrs[n++] = (struct kv){"host", st->authority};
        if (st->n_hdrs > 0)         /* st->hdrs is NULL without headers */
            memcpy(hdrs + n, st->hdrs, st->n_hdrs * sizeof(hdrs[0]));
        n += st->n_hdrs;
        answer_json(st->out, st->status, method_label(st->method), st->path, len,
                    fnv1a_evbuffer(st->body), hdrs, n);
    }
    snprintf(status, sizeof(status), "%d", st->status);
    snprintf(clen, sizeof(clen), "%zu", evbuffer_get_length(st->out));
    nghttp2_nv nva[] = {
        NV(":status", status), NV("content-type", ctype), NV("x-model-version", opt.name),
        NV("content-length", clen),
    };
    size_t nnv = st->fill_left > 0 ? 3 : 4;
    int no_body = strcmp(st->method, "HEAD") == 0 || st->status == 204 || st->status == 304;
    if (no_body) {
        st->fill_left = 0;
        evbuffer_drain(st->out, evbuffer_get_length(st->out));
        nghttp2_submit_response(st->conn->session, st->id, nva, st->status == 204 ? 3 : nnv,
                                NULL);
        return;
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_body};
    if (nghttp2_submit_response(st->conn->session, st->id, nva, nnv, &prd) != 0)
        nghttp2_submit_rst_stream(st->conn->session, NGHTTP2_FLAG_NONE, st->id,
                                  NGHTTP2_INTERNAL_ERROR);
}

static void
on_delay(evutil_socket_t fd, short what, void *arg)
{
    struct h2_stream *st = arg;
    struct h2_conn *c = st->conn;

    answer(st);
    conn_flush(c);
}

static const char *
find_header(struct h2_stream *st, const char *name)
{
    for (size_t i = 0; i < st->n_hdrs; i++)
        if (strcmp(st->hdrs[i].name, name) == 0)
            return st->hdrs[i].value;
    return NULL;
}

/* The request is whole: answer it now or after its delay. */
static void
request_done(struct h2_stream *st)
{
    struct h2_conn *c = st->conn;
    const char *v;

    if (st->refused)
        return;                 /* refused at its start (--h2-goaway-after) */
    if (st->method == NULL || st->path == NULL) {
        nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, st->id,
                                  NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    if (strcmp(st->path, "/__stats") == 0 && !st->grpc) {
        stats_json(st->out);
        st->status = 200;
        nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_body};
        nghttp2_nv nva[] = {NV(":status", "200"), NV("content-type", "application/json")};
        nghttp2_submit_response(c->session, st->id, nva, 2, &prd);
        return;
    }
    n_reqs++;
    c->served = 1;
    if (opt.fast && !st->grpc) {
        st->status = 200;
        answer(st);
        return;
    }
    const char *interim = find_header(st, "x-test-interim");
    if (interim != NULL) {      /* a 1xx head first (100, 103 Early Hints) */
        nghttp2_nv iv[] = {NV(":status", interim)};
        nghttp2_submit_headers(c->session, NGHTTP2_FLAG_NONE, st->id, NULL, iv, 1, NULL);
    }
    if (find_header(st, "x-test-close") != NULL) {
        if (interim != NULL)
            c->drop = 1;        /* closed once the 1xx is out (conn_flush) */
        else
            conn_close(c);
        return;
    }
    if ((v = find_header(st, "x-test-status")) != NULL)
        st->status = atoi(v);
    else
        st->status = opt.fast ? 200 : pick_status();
    if (st->grpc) {
        st->no_trailers = find_header(st, "x-test-grpc-no-trailers") != NULL;
        if ((v = find_header(st, "x-test-grpc-status")) != NULL)
            st->grpc_status = atoi(v);
        else if (st->status != 200)
            st->grpc_status = opt.grpc_status > 0 ? opt.grpc_status
                                                  : grpc_status_of_http(st->status);
        else if (opt.grpc_status > 0 && opt.error_rate <= 0)
            st->grpc_status = opt.grpc_status;
    } else if ((v = find_header(st, "x-test-response-bytes")) != NULL) {
        st->fill_left = atoll(v);
    }
    int delay = opt.fast ? 0 : pick_delay_ms();
    if ((v = find_header(st, "x-test-delay-ms")) != NULL)
        delay = atoi(v);
    if (delay > 0 && (st->timer = evtimer_new(base, on_delay, st)) != NULL) {
        struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
        evtimer_add(st->timer, &tv);
        return;
    }
    answer(st);
}

static int
on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2_conn *c = user_data;
    struct h2_stream *st;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if ((st = calloc(1, sizeof(*st))) == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->body = evbuffer_new();
    st->out = evbuffer_new();
    if (st->body == NULL || st->out == NULL) {
        if (st->body)
            evbuffer_free(st->body);
        if (st->out)
            evbuffer_free(st->out);
        free(st);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->conn = c;
    st->id = frame->hd.stream_id;
    st->grpc_status = -1;
    if (opt.h2_goaway_after > 0 && !c->goaway && ++c->begun > opt.h2_goaway_after) {
        c->goaway = 1;          /* stream N was the last one processed */
        nghttp2_submit_goaway(session, NGHTTP2_FLAG_NONE, c->last_id, NGHTTP2_NO_ERROR,
                              NULL, 0);
    }
    if (opt.h2_drop_after >= 0 && c->started++ >= (unsigned)opt.h2_drop_after)
        c->drop = 1;            /* closed under this stream, after what is queued */
    if (c->goaway || c->drop)   /* closed unanswered once the GOAWAY is sent */
        st->refused = 1;
    else
        c->last_id = st->id;
    if (!st->refused && opt.h2_refuse_every > 0 && ++begun_all % opt.h2_refuse_every == 0) {
        st->refused = 1;
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
    }
    n_refused += st->refused;
    TAILQ_INSERT_TAIL(&c->streams, st, link);
    if (c->idle != NULL)
        event_del(c->idle);
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

static int
on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
          size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    char **slot = NULL;

    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;               /* trailers of a request are not echoed */
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        slot = &st->method;
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        slot = &st->path;
    else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
        slot = &st->authority;
    else if (name[0] == ':')
        return 0;
    if (slot != NULL) {
        free(*slot);
        return (*slot = strndup((const char *)value, valuelen)) == NULL
            ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
    }
    if (namelen == 12 && memcmp(name, "content-type", 12) == 0)
        st->grpc = valuelen >= 16 && strncasecmp((const char *)value, "application/grpc", 16) == 0;
    if (st->n_hdrs == H2_MAX_HEADERS)
        return 0;               /* the rest are not echoed */
    if (opt.fast && (namelen < 7 || memcmp(name, "x-test-", 7) != 0))
        return 0;               /* --fast echoes nothing: keep the controls only */
    char *n = strndup((const char *)name, namelen), *v = strndup((const char *)value, valuelen);
    if (n == NULL || v == NULL) {
        free(n);
        free(v);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (st->n_hdrs == st->cap_hdrs) {
        size_t cap = st->cap_hdrs ? 2 * st->cap_hdrs : 8;
        struct kv *h = realloc(st->hdrs, cap * sizeof(*h));
        if (h == NULL) {
            free(n);
            free(v);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        st->hdrs = h;
        st->cap_hdrs = cap;
    }
    st->hdrs[st->n_hdrs++] = (struct kv){n, v};
    return 0;
}

static int
on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
              size_t len, void *user_data)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, id);

    if (st == NULL || (opt.fast && !st->grpc))
        return 0;               /* --fast reads only gRPC messages */
    if (evbuffer_get_length(st->body) + len > H2_MAX_BODY)
        return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id,
                                         NGHTTP2_REFUSED_STREAM) == 0
            ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    return evbuffer_add(st->body, data, len) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int
on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    struct h2_stream *st;

    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st != NULL)
        request_done(st);
    return 0;
}

static int
on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user_data)
{
    struct h2_stream *st = nghttp2_session_get_stream_user_data(session, id);

    if (st != NULL) {
        nghttp2_session_set_stream_user_data(session, id, NULL);
        stream_free(st);
    }
    return 0;
}

struct h2_conn *
h2_conn_new(const struct h2_io *io, void *arg)
{
    struct h2_conn *c = calloc(1, sizeof(*c));
    nghttp2_session_callbacks *cbs;

    if (c == NULL)
        return NULL;
    c->io = io;
    c->arg = arg;
    TAILQ_INIT(&c->streams);
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        goto fail;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    int rv = nghttp2_session_server_new(&c->session, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        goto fail;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, opt.h2_max_streams},
    };
    if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, iv, 1) != 0)
        goto fail_session;
    if (opt.idle_close_max_ms > 0 && (c->idle = evtimer_new(base, on_idle, c)) == NULL)
        goto fail_session;
    return c;
fail_session:
    nghttp2_session_del(c->session);
fail:
    free(c);
    return NULL;
}

int
h2_conn_feed(struct h2_conn *c, const uint8_t *data, size_t len)
{
    if (c->closed)
        return 0;
    ssize_t n = nghttp2_session_mem_recv(c->session, data, len);
    if (n < 0) {
        /* a connection error: nghttp2 queued a GOAWAY; send it, then end */
        conn_flush(c);
        return -1;
    }
    conn_flush(c);
    return 0;
}

void
h2_conn_free(struct h2_conn *c)
{
    nghttp2_session_del(c->session);    /* calls no callbacks */
    while (!TAILQ_EMPTY(&c->streams))
        stream_free(TAILQ_FIRST(&c->streams));
    if (c->idle != NULL)
        event_free(c->idle);
    free(c);
}
