/*
 * The HTTP/2 upstream class (SPEC §9, "upstream_protocol": "http2", prior
 * knowledge): a version's model servers reached over pooled, multiplexed
 * HTTP/2 connections. Each exchange is one stream, seen by its owner (a
 * request or a shadow copy) as a struct upconn of class upstream_http2,
 * exactly like an HTTP/1.1 connection: send the head, body pieces, the end;
 * on_head, on_body, on_done, on_failed back.
 *
 * A pool's connections take streams up to the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS; when every one is full (or none is up)
 * another connection is opened. A connection with no stream is closed
 * after upstream_idle_timeout_ms.
 *
 * Flow control: automatic WINDOW_UPDATEs are off; a response's bytes are
 * given back to the server's window (nghttp2_session_consume) once its
 * owner took them and is not paused, so a client that stops reading stops
 * the model server, stream by stream.
 *
 * Retries (upstream_h2_retry.c): a stream whose connection never came up,
 * that the server refused unprocessed, or whose reused connection closed
 * under it without a GOAWAY before any answer (the keep-alive race), is
 * sent again on a new connection. A connection that got a GOAWAY takes no
 * new streams.
 */
#include "gateway/h2.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_CONNS_PER_POOL 64
#define RESPONSE_HEAD_MAX (64 * 1024)
#define WINDOW (1024 * 1024)

struct h2up;

/* One stream: the struct upconn its owner holds (first member). */
struct h2stream_up {
    struct upconn u;
    struct h2up *conn;
    int32_t id;                     /* 0 until submitted */
    struct evbuffer *out;           /* request body waiting for nghttp2 */
    bool out_eof;
    bool deferred;
    bool submitted;
    bool head_done;                 /* the response head went to the owner */
    bool ended;                     /* END_STREAM or reset seen */
    size_t unconsumed;              /* response bytes not yet given back (paused) */
    nghttp2_nv *nva;                /* the request head, until submitted (a retrying */
    size_t n_nva;                   /* owner's: until its answer begins) */
    char *nv_store;
    struct evbuffer *replay;        /* the body given, for a retry (upstream_h2_retry.c) */
    bool replay_lost;               /* past GW_REPLAY_MAX, or an answer began */
    bool refused;                   /* closed by the server unprocessed */
    bool lost;                      /* its connection closed under it, no GOAWAY */
    struct h2stream_up *next, *prev;
};

struct h2up {
    struct worker *w;
    struct upool *pool;
    struct bufferevent *bev;
    nghttp2_session *ng;
    struct event *idle;
    struct event *kick;             /* one deferred run for many owners' flushes */
    bool connected, dead, in_ng;
    bool reserved;                  /* opened for a retry: its stream goes first */
    bool kicked;                    /* the kick event is active */
    bool primed;                    /* h2_fields_prime() */
    bool used;                      /* a stream was submitted on it */
    bool peer_closed;               /* EOF or an error on the socket */
    int n_streams;
    int n_heads;                    /* streams whose head waits to be submitted */
    struct h2stream_up *hd_st;      /* the stream of the header block being read */
    struct h2stream_up *streams;
    struct h2up *next;              /* the pool's list */
};

/* The pool's connections: kept in upool->h2 (a list of struct h2up). */

static void conn_kill(struct h2up *c, enum up_fail why);
static bool conn_run(struct h2up *c);

/* Owners' sends and flushes: the frames go out once, at the end of this
 * turn of the loop, however many streams asked. */
static void
conn_kick(struct h2up *c)
{
    if (c != NULL && !c->dead && c->kick != NULL && !c->kicked) {
        c->kicked = true;
        event_active(c->kick, EV_TIMEOUT, 1);
    }
}

static void
kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2up *c = arg;
    c->kicked = false;
    conn_run(c);
}

/* The stream's head is ready (st->nva): submitted at the connection's next
 * run, which looks for such streams only while n_heads says there are. */
static void
head_ready(struct h2stream_up *st)
{
    if (st->conn != NULL && !st->submitted)
        st->conn->n_heads++;
}

static void
stream_unlink(struct h2stream_up *st)
{
    struct h2up *c = st->conn;
    if (c == NULL)
        return;
    if (c->hd_st == st)
        c->hd_st = NULL;
    if (!st->submitted && st->nva != NULL)
        c->n_heads--;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    c->n_streams--;
    st->conn = NULL;
    st->next = st->prev = NULL;
    if (c->n_streams == 0 && !c->dead && c->idle != NULL) {
        int ms = c->w->cfg->limits.upstream_idle_timeout_ms;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(c->idle, &tv);
    }
}

static void
stream_free_later(struct h2stream_up *st)
{
    struct worker *w = st->u.w;
    worker_buf_put(w, st->out);
    st->out = NULL;
    gw_free(st->nva);
    gw_free(st->nv_store);
    st->nva = NULL;
    st->nv_store = NULL;
    h2_replay_drop(&st->replay);
    if (st->u.busy)
        st->u.pool->active--;
    st->u.busy = false;
    st->u.closed = true;
    st->u.gc_next = w->gc_upconns;
    w->gc_upconns = &st->u;
    event_active(w->upstream_gc_ev, EV_TIMEOUT, 1);
}

static void
owner_failed(struct h2stream_up *st, enum up_fail why)
{
    if (st->u.busy && !st->u.closed && !st->ended) {
        st->ended = true;
        st->u.ops->on_failed(st->u.owner, &st->u, why, !st->u.got_bytes);
    }
}

/* ---- nghttp2 callbacks ------------------------------------------------------------ */

static ssize_t
read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
          nghttp2_data_source *src, void *user)
{
    struct h2stream_up *st = src->ptr;
    /* A request with an empty body has no buffer at all (h2_source_read
     * takes NULL as empty). */
    return h2_source_read(st->out, st->out_eof, &st->deferred, buf, len, flags);
}

/* A header block begins: its stream is looked up once, not per field. */
static int
on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    struct h2up *c = user;
    c->hd_st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (c->hd_st != NULL)
        c->hd_st->u.got_bytes = true;   /* an answer began, be it a 1xx: no retry */
    return 0;
}

static int
on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
          const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct h2up *c = user;
    struct h2stream_up *st = c->hd_st;
    if (st == NULL || st->id != frame->hd.stream_id)
        st = c->hd_st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct upconn *u = &st->u;
    int rc = 0;
    if (st->head_done) {            /* trailers (gRPC's status): passed on */
        if (nlen > 0 && name[0] != ':') {
            u->has_trailers = true;
            if ((rc = head_field(&u->trailers, (const char *)name, nlen)) == 0)
                rc = head_value(&u->trailers, (const char *)value, vlen);
        }
        return rc < 0 || u->trailers.len > RESPONSE_HEAD_MAX ?
            NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        int status = 0;
        for (size_t i = 0; i < vlen && i < 3; i++)
            status = status * 10 + (value[i] - '0');
        u->status = status;
    } else if (nlen > 0 && name[0] != ':') {
        u->head.lowercase = true;   /* nghttp2 refuses uppercase names */
        if ((rc = head_field(&u->head, (const char *)name, nlen)) == 0)
            rc = head_value(&u->head, (const char *)value, vlen);
    }
    if (rc < 0 || u->head.len > RESPONSE_HEAD_MAX)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int
on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    struct h2stream_up *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st == NULL || !st->u.busy)
        return 0;
    struct upconn *u = &st->u;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && !st->head_done) {
        if (u->status >= 100 && u->status < 200) {
            head_reset(&u->head);   /* interim: the real head follows */
            u->status = 0;
            return 0;
        }
        st->head_done = true;
        u->got_bytes = true;
        /* An answer began: no retry from here on. */
        h2_retry_forget(&st->replay, &st->nva, &st->nv_store);
        st->replay_lost = true;
        u->no_body = end;           /* Trailers-Only (gRPC), or no body */
        head_classify(&u->head);
        u->has_length = head_length(&u->head, &u->content_length);
        u->ops->on_head(u->owner, u);
        if (u->closed || !u->busy)
            return 0;
    }
    if (end && st->head_done && u->busy && !u->closed && !st->ended) {
        st->ended = true;
        if (u->has_trailers)
            head_classify(&u->trailers);
        u->ops->on_done(u->owner, u, true);
    }
    return 0;
}

static int
on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
        void *user)
{
    struct h2stream_up *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st == NULL || !st->u.busy || st->u.closed) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    st->u.got_bytes = true;
    st->u.ops->on_body(st->u.owner, &st->u, (const char *)data, len);
    if (st->u.paused)
        st->unconsumed += len;      /* the window opens on resume */
    else
        nghttp2_session_consume(ng, id, len);
    return 0;
}

static int
on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    struct h2stream_up *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    st->id = 0;
    st->refused = code == NGHTTP2_REFUSED_STREAM && !st->u.got_bytes;
    if (!st->ended)
        owner_failed(st, st->u.got_bytes ? UPF_RESET : code == NGHTTP2_REFUSED_STREAM ?
                     UPF_CLOSED : UPF_RESET);
    stream_unlink(st);
    return 0;
}

static nghttp2_session_callbacks *callbacks;

static void
init_callbacks(void)
{
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
}

/* ---- the connection ------------------------------------------------------------------- */

static void
submit_stream(struct h2stream_up *st)
{
    struct h2up *c = st->conn;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_body};
    bool body = !(st->out_eof && (st->out == NULL || evbuffer_get_length(st->out) == 0)) ||
                st->u.framing != FRAME_NONE;
    h2_fields_prime(st->nva, st->n_nva, &c->primed);
    /* nva and nv_store stay until the answer begins (h2_retry_forget) or
     * the stream is over: nghttp2 reads them when the HEADERS frame goes
     * out (NO_COPY), and a retry may send them again. */
    int32_t id = nghttp2_submit_request(c->ng, NULL, st->nva, st->n_nva, body ? &prd : NULL, st);
    st->submitted = true;
    c->used = true;
    c->n_heads--;
    if (id < 0) {
        owner_failed(st, UPF_CLOSED);
        return;
    }
    st->id = id;
}

/* Submits the heads that wait and sends what nghttp2 has; false when the
 * connection is gone (freed: c may not be used after). */
static bool
conn_run(struct h2up *c)
{
    if (c->dead || !c->connected || c->in_ng)
        return !c->dead;
    for (struct h2stream_up *st = c->streams, *next; st != NULL && c->n_heads > 0; st = next) {
        next = st->next;
        if (!st->submitted && st->nva != NULL)
            submit_stream(st);
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (evbuffer_get_length(out) < GW_HIGH_WATER) {
        const uint8_t *data;
        c->in_ng = true;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        c->in_ng = false;
        if (n < 0) {
            conn_kill(c, UPF_RESET);
            return false;
        }
        if (n == 0)
            break;
        evbuffer_add(out, data, (size_t)n);
    }
    gw_flush(c->bev, c->connected);
    if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
        conn_kill(c, UPF_CLOSED);
        return false;
    }
    return true;
}

static void
conn_free(struct h2up *c)
{
    struct upool *p = c->pool;
    for (struct h2up **pp = (struct h2up **)&p->h2; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->idle != NULL)
        event_free(c->idle);
    if (c->kick != NULL)
        event_free(c->kick);
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        __atomic_sub_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
    }
    nghttp2_session_del(c->ng);
    free(c);
}

/* The connection failed: every stream on it fails (early when nothing of
 * its answer came), and it goes. */
static void
conn_kill(struct h2up *c, enum up_fail why)
{
    if (c->dead)
        return;
    c->dead = true;
    /* Closed by the server (EOF or an error on the socket, not our own
     * kill) with no GOAWAY either way: as HTTP/1.1's keep-alive race, a
     * stream taken on an idle reused connection that got nothing back may
     * go again (h2_take_resend). After a GOAWAY a stream at or below its
     * last-stream-id may have been processed: never. */
    bool race = c->peer_closed && c->connected && nghttp2_session_check_request_allowed(c->ng);
    while (c->streams != NULL) {
        struct h2stream_up *st = c->streams;
        st->lost = race;
        stream_unlink(st);
        owner_failed(st, why);
    }
    conn_free(c);
}

static void
conn_read(struct bufferevent *bev, void *arg)
{
    struct h2up *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (!c->dead && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        c->in_ng = true;
        ssize_t n = nghttp2_session_mem_recv(c->ng, v.iov_base, v.iov_len);
        c->in_ng = false;
        if (n < 0) {
            conn_kill(c, UPF_INVALID);
            return;
        }
        evbuffer_drain(in, (size_t)n);
    }
    conn_run(c);
}

static void
conn_write(struct bufferevent *bev, void *arg)
{
    struct h2up *c = arg;
    if (!conn_run(c))
        return;
    for (struct h2stream_up *st = c->streams, *next; !c->dead && st != NULL; st = next) {
        next = st->next;
        if (st->u.busy && st->u.ops->on_drained != NULL)
            st->u.ops->on_drained(st->u.owner, &st->u);
    }
}

static void
conn_event(struct bufferevent *bev, short events, void *arg)
{
    struct h2up *c = arg;
    if (events & BEV_EVENT_CONNECTED) {
        c->connected = true;
        c->reserved = false;        /* its first stream is submitted now */
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        for (struct h2stream_up *st = c->streams; st != NULL; st = st->next)
            st->u.connected = true;
        conn_run(c);
        return;
    }
    if (events & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
        c->peer_closed = true;
        conn_kill(c, c->connected ? (events & BEV_EVENT_EOF ? UPF_CLOSED : UPF_RESET) :
                  UPF_CONNECT);
    }
}

static void
idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct h2up *c = arg;
    if (c->n_streams == 0) {
        nghttp2_session_terminate_session(c->ng, NGHTTP2_NO_ERROR);
        if (conn_run(c))
            conn_kill(c, UPF_CLOSED);
    }
}

static struct h2up *
conn_new(struct worker *w, struct upool *p)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_callbacks);
    struct h2up *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->w = w;
    c->pool = p;
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    int rc = nghttp2_session_client_new3(&c->ng, callbacks, c, opt, h2_mem());
    nghttp2_option_del(opt);
    c->bev = rc == 0 ? bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE) : NULL;
    c->idle = evtimer_new(w->base, idle_cb, c);
    c->kick = event_new(w->base, -1, 0, kick_cb, c);
    if (c->bev == NULL || c->idle == NULL || c->kick == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        if (c->idle)
            event_free(c->idle);
        if (c->kick)
            event_free(c->kick);
        if (rc == 0)
            nghttp2_session_del(c->ng);
        free(c);
        return NULL;
    }
    bufferevent_setcb(c->bev, conn_read, conn_write, conn_event, c);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&p->sa, (int)p->salen) < 0) {
        bufferevent_free(c->bev);
        event_free(c->idle);
        event_free(c->kick);
        nghttp2_session_del(c->ng);
        free(c);
        return NULL;
    }
    bufferevent_enable(c->bev, EV_READ);
    __atomic_add_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW},
    };
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, 4 * WINDOW);
    c->next = p->h2;
    p->h2 = c;
    return c;
}

/* ---- spare streams --------------------------------------------------------------------- */

#define MAX_SPARES 128

/* A zeroed stream, but for its heads' buffers, which a spare keeps. */
static struct h2stream_up *
take_spare(struct worker *w)
{
    struct upconn *u = w->h2_spares;
    if (u == NULL)
        return calloc(1, sizeof(struct h2stream_up));
    w->h2_spares = u->gc_next;
    w->n_h2_spares--;
    /* All zero as calloc gave it, but the heads: emptied, buffers kept
     * (their header arrays are most of the struct). */
    memset(u, 0, offsetof(struct upconn, head));
    head_reset(&u->head);
    head_reset(&u->trailers);
    size_t rest = offsetof(struct upconn, trailers) + sizeof(u->trailers);
    memset((char *)u + rest, 0, sizeof(struct h2stream_up) - rest);
    return (struct h2stream_up *)u;
}

bool
upstream_h2_keep(struct worker *w, struct upconn *u)
{
    /* Not under ASan (a use after the end is seen), nor with a big head. */
    if (w->n_h2_spares >= MAX_SPARES || u->replay != NULL || !gw_mem_pooled() ||
        u->head.cap > HEAD_KEEP_MAX || u->trailers.cap > HEAD_KEEP_MAX)
        return false;
    u->gc_next = w->h2_spares;
    w->h2_spares = u;
    w->n_h2_spares++;
    return true;
}

void
upstream_h2_spares_free(struct worker *w)
{
    while (w->h2_spares != NULL) {
        struct upconn *u = w->h2_spares;
        w->h2_spares = u->gc_next;
        head_free(&u->head);
        head_free(&u->trailers);
        free(u);
    }
    w->n_h2_spares = 0;
}

/* ---- the class ----------------------------------------------------------------------- */

static struct upconn *
h2_acquire(struct worker *w, struct upool *p, const struct upconn_ops *ops, void *owner,
           bool fresh)
{
    struct h2up *c = NULL;
    int n = 0;
    for (struct h2up *k = p->h2; k != NULL; k = k->next, n++)
        if (!k->dead && !fresh && !k->reserved &&
            nghttp2_session_check_request_allowed(k->ng) &&
            (!k->connected ||
             (uint32_t)k->n_streams < nghttp2_session_get_remote_settings(
                 k->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))) {
            c = k;
            break;
        }
    if (c == NULL && (n >= MAX_CONNS_PER_POOL || (c = conn_new(w, p)) == NULL))
        return NULL;
    struct h2stream_up *st = take_spare(w);
    if (st == NULL)
        return NULL;
    c->reserved = fresh && !c->connected;
    struct upconn *u = &st->u;
    u->w = w;
    u->pool = p;
    u->cls = &upstream_http2;
    u->ops = ops;
    u->owner = owner;
    u->busy = true;
    u->connected = c->connected;
    /* Reused: taken idle after other streams, the one case where a close
     * without GOAWAY may be the keep-alive race (h2_take_resend). */
    u->reused = c->connected && c->n_streams == 0 && c->used;
    st->conn = c;
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    c->n_streams++;
    event_del(c->idle);
    p->active++;
    return u;
}

#define ST(u) ((struct h2stream_up *)(u))

static void
h2_close(struct upconn *u)
{
    struct h2stream_up *st = ST(u);
    if (u->closed)
        return;
    /* Answered before all of the request went out (RFC 9113 §8.1), the
     * stream is still open on our side: nghttp2 would keep it, with this
     * struct (a spare from now on) as its body's source, and count it
     * against the server's concurrent streams forever. */
    if (st->conn != NULL && st->id > 0 &&
        (!st->ended || nghttp2_session_get_stream_local_close(st->conn->ng, st->id) == 0)) {
        nghttp2_submit_rst_stream(st->conn->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        nghttp2_session_set_stream_user_data(st->conn->ng, st->id, NULL);
    } else if (st->conn != NULL && st->id > 0)
        nghttp2_session_set_stream_user_data(st->conn->ng, st->id, NULL);
    struct h2up *c = st->conn;
    stream_unlink(st);
    stream_free_later(st);
    if (c != NULL)
        conn_kick(c);
}

static void
h2_release(struct upconn *u, bool reusable)
{
    h2_close(u);                    /* the connection stays; the stream is over */
}

static void
h2_pause(struct upconn *u)
{
    u->paused = true;
}

static void
h2_resume(struct upconn *u)
{
    struct h2stream_up *st = ST(u);
    u->paused = false;
    if (st->unconsumed > 0 && st->conn != NULL && st->id > 0) {
        nghttp2_session_consume(st->conn->ng, st->id, st->unconsumed);
        st->unconsumed = 0;
        conn_kick(st->conn);
    }
}

static void
h2_flush(struct upconn *u)
{
    conn_kick(ST(u)->conn);
}

/* The request head as HTTP/2 fields (h2_fields_request), submitted once
 * the connection is up: names and values in nv_store (or literals). */
static void
h2_send_head(struct upconn *u, const struct upstream_request *r)
{
    struct h2stream_up *st = ST(u);
    st->nv_store = gw_malloc(h2_fields_request_room(r));
    st->nva = gw_malloc(H2_REQUEST_FIELDS(r) * sizeof(nghttp2_nv));
    if (st->nv_store == NULL || st->nva == NULL) {
        gw_free(st->nv_store);      /* no head: n_heads never counted it */
        gw_free(st->nva);
        st->nv_store = NULL;
        st->nva = NULL;
        owner_failed(st, UPF_CONNECT);
        return;
    }
    u->framing = r->framing;
    size_t n = h2_fields_request(r, st->nva, st->nv_store);
    st->n_nva = n;
    head_ready(st);
    if (r->framing == FRAME_NONE)
        st->out_eof = true;
    if (st->conn != NULL && st->conn->connected)
        conn_kick(st->conn);
}

static void
h2_send_body(struct upconn *u, const char *at, size_t len)
{
    struct h2stream_up *st = ST(u);
    if (st->out == NULL && (st->out = worker_buf_get(st->u.w)) == NULL)
        return;
    evbuffer_add(st->out, at, len);
    if (u->ops->retries)
        h2_replay_add(&st->replay, &st->replay_lost, at, len);
    if (st->deferred && st->id > 0 && st->conn != NULL) {
        st->deferred = false;
        nghttp2_session_resume_data(st->conn->ng, st->id);
    }
}

static void
h2_send_end(struct upconn *u)
{
    struct h2stream_up *st = ST(u);
    st->out_eof = true;
    if (st->deferred && st->id > 0 && st->conn != NULL) {
        st->deferred = false;
        nghttp2_session_resume_data(st->conn->ng, st->id);
    }
}

/* What to send again, when nothing of the exchange was processed (see
 * upstream_h2_retry.c): its connection never came up (all it was given is
 * still here), or the server refused the stream (the body from the copy). */
static struct evbuffer *
h2_take_resend(struct upconn *u)
{
    struct h2stream_up *st = ST(u);
    if (!u->ops->retries || st->nva == NULL || u->got_bytes ||
        (u->connected && !st->refused && !(st->lost && u->reused)))
        return NULL;
    struct evbuffer *body = st->replay_lost ? NULL : st->replay;
    if (!u->connected)
        body = st->out;             /* nothing was sent: whatever its size */
    else if (st->replay_lost)
        return NULL;                /* the body is no longer whole */
    return h2_resend_pack(st->nva, st->n_nva, u->framing, st->out_eof, body);
}

/* A retry's request (h2_take_resend's) on this new stream. */
static void
h2_send_again(struct upconn *u, struct evbuffer *what)
{
    struct h2stream_up *st = ST(u);
    bool eof = false;
    if (h2_resend_unpack(what, &st->nva, &st->n_nva, &st->nv_store, &u->framing, &eof) < 0) {
        evbuffer_drain(what, evbuffer_get_length(what));
        owner_failed(st, UPF_CONNECT);
        return;
    }
    head_ready(st);
    size_t n = evbuffer_get_length(what);
    if (n > 0)
        h2_send_body(u, (const char *)evbuffer_pullup(what, -1), n);
    evbuffer_drain(what, n);
    if (eof || u->framing == FRAME_NONE)
        h2_send_end(u);
    if (st->conn != NULL && st->conn->connected)
        conn_kick(st->conn);
}

static size_t
h2_backlog(const struct upconn *u)
{
    const struct h2stream_up *st = (const struct h2stream_up *)u;
    return st->out != NULL ? evbuffer_get_length(st->out) : 0;
}

const struct upstream_class upstream_http2 = {
    .name = "http2",
    .acquire = h2_acquire, .release = h2_release, .close = h2_close,
    .pause = h2_pause, .resume = h2_resume, .flush = h2_flush,
    .send_head = h2_send_head, .send_body = h2_send_body, .send_end = h2_send_end,
    .take_resend = h2_take_resend, .send_again = h2_send_again, .backlog = h2_backlog,
};

/* At the worker's end: every HTTP/2 connection of p. */
void
upstream_h2_free_pool(struct upool *p)
{
    while (p->h2 != NULL)
        conn_kill(p->h2, UPF_CLOSED);
}
