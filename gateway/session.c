/*
 * A client connection and the requests on it: the request lifecycle.
 *
 * A connection reads requests one at a time with llhttp (strict mode): the
 * parser pauses when a request has been read whole and resumes when that
 * request has ended, so pipelined requests are answered in order. A request
 * goes through these phases, one at a time:
 *
 *   RP_HEAD      its head is being read (the header deadline runs)
 *   RP_QUEUED    routed, waiting for a concurrency slot; its body unread
 *   RP_UPSTREAM  sent (or being sent) to a model server, no answer yet
 *   RP_RESPONDING  the model server's response streams to the client
 *   RP_ANSWERED  its response was handed whole to the client: relayed, or
 *                Sluice's own reply (the rest of the body is read and
 *                dropped, or the connection closes)
 *
 * A request ends in exactly one place, request_end(), once it is answered
 * and read whole (or its connection is closing): it writes the access-log
 * line and counts it once (account.c), releases its slot, leaves the wait
 * queue, lets go of its shadow copies and its upstream connection, drops
 * its config snapshot, and either gets the connection ready for the next
 * request or closes it. Why it ended is an enum req_cause.
 *
 * Reading is bounded per connection (SPEC §3.7): it pauses while more than
 * limits.max_client_output_bytes wait to be sent, while max_pipelined
 * answers wait unsent, and while unparsed input exceeds one head's worth.
 *
 * A session ends in session_close() only; the struct itself is freed from
 * the worker's gc event, so code still on the stack may look at s->closed.
 */
#include "gateway/internal.h"

#include <errno.h>
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

#define LINGER_MS 2000
#define REPLAY_MAX (64 * 1024)      /* request bytes kept for one retry */
#define FREE_REQS_MAX 64

enum req_phase { RP_HEAD, RP_QUEUED, RP_UPSTREAM, RP_RESPONDING, RP_ANSWERED };

struct request {
    struct session *s;
    llhttp_t parser;                /* from the request's first byte */
    struct config *cfg;             /* snapshot this request runs on */
    enum req_phase phase;
    enum req_cause cause;
    const struct cfg_endpoint *ep;
    int version;                    /* -1 until one is chosen */
    bool pinned, failover, retried, head_method, expect_continue;
    bool routed;                    /* the head was accepted and routed */
    bool body_done;                 /* read whole */
    bool discard;                   /* answered early: the rest is dropped */
    bool head_too_large;
    struct line_scan scan;          /* the head's line ends, until its end */
    const char *chunk, *chunk_end;  /* the input llhttp_execute() runs over */
    uint8_t bad_line;               /* SCAN_BARE_LF or SCAN_FOLD in the head, else 0 */
    bool version_seen;              /* llhttp accepted the version number */
    bool trailers;                  /* trailer fields began */
    enum framing up_framing;        /* the body's framing to the upstream */
    enum framing resp_framing;      /* the response's framing to the client */
    struct upool *pool;
    struct route_shared *slot;      /* concurrency slot held, if any */
    struct upconn *up;
    struct evbuffer *replay;        /* what went to a reused connection */
    struct event *timer;            /* scoring timeout, or the wait deadline */
    struct event *hdr_timer;        /* header_timeout_ms: head and body read */
    struct shadow *shadows[CFG_MAX_VERSIONS];
    int n_shadows;
    /* The live sides of its copies' comparisons (SPEC §7), taken when the
     * copies are let go: fed the response, ended in request_end(). */
    struct shadow_cmp *cmps[CFG_MAX_VERSIONS];
    int n_cmps;
    struct req_line line;
    struct req_target target;
    int status;                     /* sent to the client */
    uint64_t body_in, bytes_in, bytes_out;
    uint64_t extra_bytes;           /* chunk extensions */
    uint64_t t_start_us;            /* end of the request head */
    char id[64];
    struct head head;
    TAILQ_ENTRY(request) wait_link;
    bool waiting;
    struct request *next_free;
};

struct session {
    struct worker *w;
    const struct transport *tp;
    struct conn_io io;
    struct request *req;            /* the request being read or answered,
                                     * with its parser; NULL while idle */
    uint64_t deadline_us;           /* the first head's (from accept), or the linger's */
    int rev_ms;                     /* the deadline on io.rev, 0 for none */
    int unsent_answers;             /* answers queued since output was empty */
    bool keep_alive : 1;            /* the client wants the connection kept */
    bool close_after : 1;           /* close once the current request ends */
    bool closing : 1;               /* flushing its last output, then linger */
    bool lingering : 1;
    bool closed : 1;
    bool reading : 1;               /* io.rev is added */
    bool served : 1;                /* a request was read on it */
    char prev_byte;                 /* the last byte of the read before */
    char peer[INET6_ADDRSTRLEN];
    /* The credential this connection last authenticated with: the same
     * bytes again (compared in constant time) on the same endpoint and
     * config snapshot need no new check. */
    char *auth_cred;
    uint32_t auth_cred_len;
    uint64_t auth_gen;              /* config generation it was checked on */
    int auth_ep;                    /* endpoint index in that generation */
    time_t auth_until;              /* 0: until the config changes */
    TAILQ_ENTRY(session) link;
    struct session *gc_next;
};

static llhttp_settings_t req_settings;

static void session_run(struct session *s);
static void session_close(struct session *s);
static void request_reply(struct session *s, enum req_cause cause, const char *msg,
                          bool close);
static void request_maybe_end(struct session *s);
static void start_closing(struct session *s);
static void dispatch_waiters(struct worker *w);
static void update_reading(struct session *s);

/* ---- small helpers ------------------------------------------------------- */

static void
arm(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static const struct cfg_limits *
limits(const struct session *s)
{
    return &s->w->cfg->limits;
}

static struct evbuffer *
client_out(struct session *s)
{
    return s->io.out;               /* there while a request runs */
}

static size_t
out_len(const struct session *s)
{
    return s->io.out != NULL ? evbuffer_get_length(s->io.out) : 0;
}

static const struct cfg_version *
req_version(const struct request *r)
{
    return r->ep != NULL && r->version >= 0 ? &r->ep->versions[r->version] : NULL;
}

static const char *
group_of(const struct cfg_version *v)
{
    return config_group_name(v->mirror > 0 ? CFG_GROUP_SHADOW : v->group);
}

static struct tags
req_tags(const struct request *r)
{
    const struct cfg_version *v = req_version(r);
    struct tags t = {v ? v->name : NULL, v ? group_of(v) : NULL, r->id, r->failover};
    return t;
}

/* Send what is queued for the client. */
static void client_write_cb(evutil_socket_t fd, short what, void *arg);

/* Wait for the socket to take more; a client that takes nothing for
 * send_timeout_ms is closed (SPEC §3.7). */
static void
arm_write(struct session *s)
{
    if (s->io.wev == NULL) {
        s->io.wev = event_new(s->w->base, s->io.fd, EV_WRITE, client_write_cb, s);
        if (s->io.wev == NULL) {
            session_close(s);
            return;
        }
    }
    if (!event_pending(s->io.wev, EV_WRITE, NULL))
        arm(s->io.wev, limits(s)->send_timeout_ms);
}

static void
client_flush(struct session *s)
{
    if (s->closed)
        return;
    if (s->tp->flush(&s->io) < 0) {
        session_close(s);
        return;
    }
    if (s->io.want_write)
        arm_write(s);
    else if (s->io.out != NULL && evbuffer_get_length(s->io.out) == 0)
        s->unsent_answers = 0;
}

/* ---- buffers: from a per-worker pool, only while in use ------------------- */

static struct evbuffer *
buf_get(struct worker *w)
{
    return w->n_free_bufs > 0 ? w->free_bufs[--w->n_free_bufs] : evbuffer_new();
}

static void
buf_put(struct worker *w, struct evbuffer *b)
{
    if (b == NULL)
        return;
    if (w->n_free_bufs < (int)(sizeof(w->free_bufs) / sizeof(w->free_bufs[0])) &&
        evbuffer_get_length(b) == 0)
        w->free_bufs[w->n_free_bufs++] = b;
    else
        evbuffer_free(b);
}

static bool
ensure_bufs(struct session *s)
{
    if (s->io.in == NULL)
        s->io.in = buf_get(s->w);
    if (s->io.out == NULL)
        s->io.out = buf_get(s->w);
    return s->io.in != NULL && s->io.out != NULL;
}

/* An idle connection keeps no buffers. */
static void
release_bufs(struct session *s)
{
    if (s->req != NULL || s->closed || s->io.in == NULL ||
        evbuffer_get_length(s->io.in) > 0 || evbuffer_get_length(s->io.out) > 0 ||
        s->tp->pending(&s->io))
        return;
    buf_put(s->w, s->io.in);
    buf_put(s->w, s->io.out);
    s->io.in = s->io.out = NULL;
}

static void
ensure_id(struct request *r)
{
    if (r->id[0] == '\0') {
        struct worker *w = r->s->w;
        req_id_make(r->id, w->id_prefix, ++w->req_seq);
    }
}

/* ---- requests: birth and recycling --------------------------------------- */

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);
static void hdr_timer_cb(evutil_socket_t fd, short what, void *arg);

static struct request *
request_new(struct session *s)
{
    struct worker *w = s->w;
    struct request *r = w->free_reqs;
    if (r != NULL) {
        w->free_reqs = r->next_free;
        w->n_free_reqs--;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
        r->timer = evtimer_new(w->base, req_timer_cb, r);
        r->hdr_timer = evtimer_new(w->base, hdr_timer_cb, r);
        if (r->timer == NULL || r->hdr_timer == NULL) {
            if (r->timer)
                event_free(r->timer);
            free(r);
            return NULL;
        }
    }
    struct event *timer = r->timer, *hdr_timer = r->hdr_timer;
    struct head hd = r->head;
    memset(r, 0, offsetof(struct request, head));
    r->timer = timer;
    r->hdr_timer = hdr_timer;
    r->head = hd;
    head_reset(&r->head);
    r->s = s;
    r->version = -1;
    r->cfg = config_take(w->cfg);
    llhttp_init(&r->parser, HTTP_REQUEST, &req_settings);
    r->parser.data = s;
    return r;
}

static void
request_recycle(struct worker *w, struct request *r)
{
    if (r->replay != NULL) {
        evbuffer_free(r->replay);
        r->replay = NULL;
    }
    if (w->n_free_reqs < FREE_REQS_MAX && !w->draining) {
        r->next_free = w->free_reqs;
        w->free_reqs = r;
        w->n_free_reqs++;
        return;
    }
    event_free(r->timer);
    event_free(r->hdr_timer);
    head_free(&r->head);
    free(r);
}

static void
free_reqs_all(struct worker *w)
{
    while (w->free_reqs != NULL) {
        struct request *r = w->free_reqs;
        w->free_reqs = r->next_free;
        event_free(r->timer);
        event_free(r->hdr_timer);
        head_free(&r->head);
        free(r);
    }
    w->n_free_reqs = 0;
}

/* ---- the one end of a request ----------------------------------------------- */

/* Leave the wait queue; the parser, paused at the end of the head while
 * the request waited, reads the body again. */
static void
stop_waiting(struct request *r)
{
    if (r->waiting) {
        r->waiting = false;
        TAILQ_REMOVE(&r->s->w->waiters, r, wait_link);
        if (llhttp_get_errno(&r->parser) == HPE_PAUSED)
            llhttp_resume(&r->parser);
    }
}

static void
release_slot(struct request *r)
{
    if (r->slot != NULL) {
        route_give_slot(r->slot);
        r->slot = NULL;
        dispatch_waiters(r->s->w);
    }
}

static void
drop_shadows(struct request *r)
{
    for (int i = 0; i < r->n_shadows; i++)
        shadow_abandon(r->shadows[i]);
    r->n_shadows = 0;
}

/* The live outcome for the comparisons: only a relayed, complete response
 * is compared; anything else makes them unknown. */
static void
end_comparisons(struct request *r)
{
    bool ok = r->cause == RC_OK && r->status != 0;
    for (int i = 0; i < r->n_cmps; i++)
        cmp_end(r->cmps[i], CMP_LIVE, ok);
    r->n_cmps = 0;
}

/*
 * The request is over: answered whole and read whole, or its connection is
 * going away. Log and count it once, release everything it holds, and get
 * the connection ready for the next request (or close it).
 */
static void
request_end(struct session *s)
{
    struct worker *w = s->w;
    struct request *r = s->req;

    s->req = NULL;
    if (r->status == 0 && r->cause == RC_CLIENT_CLOSED)
        r->status = 499;            /* nginx's code for a client that left */
    const char *url = r->head.buf ? r->head.buf + r->head.url_off : NULL;
    struct req_record rec = {
        .cfg = r->cfg, .ep = r->ep, .version = r->version, .pinned = r->pinned,
        .failover = r->failover, .status = r->status, .cause = r->cause,
        .latency_us = r->t_start_us ? now_us() - r->t_start_us : 0,
        .bytes_in = r->bytes_in, .bytes_out = r->bytes_out, .request_id = r->id,
        .peer = s->peer,
        .method = r->t_start_us ? llhttp_method_name(r->line.method) : NULL,
        .path = url, .path_len = url ? r->head.url_len : 0,
        .upstream = r->pool ? r->pool->address : NULL,
    };
    if (rec.request_id[0] == '\0')
        ensure_id(r);
    account_request(w, &rec);

    stop_waiting(r);
    evtimer_del(r->timer);
    evtimer_del(r->hdr_timer);
    if (r->up != NULL) {
        upconn_close(r->up);        /* unfinished exchange: not reusable */
        r->up = NULL;
    }
    drop_shadows(r);
    end_comparisons(r);
    release_slot(r);
    config_drop(r->cfg);
    r->cfg = NULL;
    if (out_len(s) > 0)
        s->unsent_answers++;
    request_recycle(w, r);

    if (s->closed)
        return;
    if (s->close_after || !s->keep_alive || w->draining) {
        start_closing(s);
        return;
    }
    update_reading(s);              /* idle: the idle deadline on the read event */
}

/* Answered and read whole (or closing): end it. */
static void
request_maybe_end(struct session *s)
{
    struct request *r = s->req;
    if (r != NULL && r->phase == RP_ANSWERED && (r->body_done || s->close_after))
        request_end(s);
}

/* ---- Sluice's own replies ----------------------------------------------------- */

/*
 * Answer the request with a JSON error (SPEC §3.6) for cause. With close,
 * the connection ends after the answer: whenever the request's framing can
 * no longer be trusted or the rest of it will not be read. After a response
 * has started, only the connection's end can tell the client.
 */
static void
request_reply(struct session *s, enum req_cause cause, const char *msg, bool close)
{
    struct request *r = s->req;
    const struct req_cause_info *ci = req_cause_info(cause);

    r->cause = cause;
    if (r->up != NULL) {
        upconn_close(r->up);
        r->up = NULL;
    }
    evtimer_del(r->timer);
    stop_waiting(r);
    if (!r->body_done)
        drop_shadows(r);
    if (r->phase == RP_RESPONDING || r->phase == RP_ANSWERED || ci->status == 0) {
        s->close_after = true;
        r->phase = RP_ANSWERED;
        return;
    }
    if (s->w->draining || (r->expect_continue && !r->body_done))
        close = true;
    if (close)
        s->close_after = true;
    ensure_id(r);
    /* A request refused for its own sake reached no version. */
    if (cause == RC_BAD_REQUEST || cause == RC_BAD_VERSION || cause == RC_TOO_LARGE ||
        cause == RC_HEADERS_TOO_LARGE || cause == RC_UNAUTHORIZED ||
        (cause == RC_CLIENT_TIMEOUT && !r->routed))
        r->version = -1;
    struct tags t = req_tags(r);
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);
    enum conn_header conn = s->close_after || !s->keep_alive ? CONN_CLOSE :
        r->line.minor == 0 ? CONN_KEEP_ALIVE : CONN_NONE;
    compose_error(out, s->w->scratch, ci->status, ci->code, msg, &t, conn);
    r->bytes_out += evbuffer_get_length(out) - before;
    r->status = ci->status;
    r->phase = RP_ANSWERED;
    r->discard = true;
}

/* ---- upstream exchange (the connection reports through req_ops) ---------------- */

static const struct upconn_ops req_ops;

static void
send_to_upstream(struct request *r, const void *data, size_t len)
{
    evbuffer_add(upconn_output(r->up), data, len);
    if (r->replay != NULL) {
        if (evbuffer_get_length(r->replay) + len <= REPLAY_MAX)
            evbuffer_add(r->replay, data, len);
        else {
            evbuffer_free(r->replay);   /* too big to retry */
            r->replay = NULL;
        }
    }
}

/* Hand the request to pool's connection: the head now, the body as it is
 * read. fresh: a new connection, never an idle one (a retry). */
static bool
start_upstream(struct session *s, struct upool *pool, bool fresh, struct evbuffer *resend)
{
    struct request *r = s->req;
    struct worker *w = s->w;

    r->slot = pool->shared;
    r->pool = pool;
    r->up = upconn_acquire(w, pool, &req_ops, r, fresh);
    if (r->up == NULL) {
        request_reply(s, RC_UPSTREAM_CONNECT, "cannot connect to the model server",
                      !r->body_done);
        return false;
    }
    /* Keep what goes to a reused connection: if the server closed it just
     * as we sent, the request is retried once on a new one (SPEC §3.7). */
    if (r->up->reused && !r->retried)
        r->replay = evbuffer_new();
    if (resend != NULL) {
        size_t n = evbuffer_get_length(resend);
        send_to_upstream(r, evbuffer_pullup(resend, (ev_ssize_t)n), n);
    } else {
        const struct cfg_version *v = req_version(r);
        const struct head *hd = &r->head;
        struct upstream_request ur = {
            .method = llhttp_method_name(r->line.method),
            .path = v->path ? v->path : hd->buf + r->target.path_off,
            .path_len = v->path ? strlen(v->path) : r->target.path_len,
            .query = r->target.has_query ? hd->buf + r->target.query_off : NULL,
            .query_len = r->target.query_len,
            .hd = hd, .peer = s->peer, .proto = s->tp->proto,
            .default_host = pool->address,
            .tags = req_tags(r), .framing = r->up_framing,
            .content_length = r->line.content_length,
        };
        compose_request_head(w->scratch, &ur);
        size_t n = evbuffer_get_length(w->scratch);
        send_to_upstream(r, evbuffer_pullup(w->scratch, (ev_ssize_t)n), n);
        evbuffer_drain(w->scratch, n);
        if (r->expect_continue && !r->body_done)
            BUF_LIT(client_out(s), "HTTP/1.1 100 Continue\r\n\r\n");
    }
    r->phase = RP_UPSTREAM;
    arm(r->timer, r->ep->scoring_timeout_ms);
    return true;
}

static int
rq_head(void *owner, struct upconn *u)
{
    struct request *r = owner;
    struct session *s = r->s;
    bool http10 = r->line.minor == 0;
    bool no_body = r->head_method || u->status == 204 || u->status == 304;
    bool has_length = (u->parser.flags & F_CONTENT_LENGTH) != 0;

    r->status = u->status;
    r->phase = RP_RESPONDING;
    route_eject_success(&u->pool->eject);
    if (r->replay != NULL) {
        evbuffer_free(r->replay);   /* an answer came: no retry from here on */
        r->replay = NULL;
    }
    if (s->w->draining)
        s->close_after = true;
    if (no_body)
        /* A HEAD or 304 answer may carry the length of the body it leaves
         * out; a 204 never does. */
        r->resp_framing = has_length && u->status != 204 ? FRAME_LENGTH : FRAME_NONE;
    else if (has_length)
        r->resp_framing = FRAME_LENGTH;
    else if (http10) {
        r->resp_framing = FRAME_CLOSE;
        s->close_after = true;      /* the length is known only by the close */
    } else
        r->resp_framing = FRAME_CHUNKED;
    struct tags t = req_tags(r);
    enum conn_header conn = s->close_after || !s->keep_alive ? CONN_CLOSE :
        http10 ? CONN_KEEP_ALIVE : CONN_NONE;
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);
    compose_response_head(out, u->status, &u->head, &t,
                          r->resp_framing == FRAME_CLOSE ? FRAME_NONE : r->resp_framing,
                          u->parser.content_length, conn);
    r->bytes_out += evbuffer_get_length(out) - before;
    for (int i = 0; i < r->n_cmps; i++)
        cmp_head(r->cmps[i], CMP_LIVE, u->status);
    return r->head_method;
}

static void
rq_body(void *owner, struct upconn *u, const char *at, size_t len)
{
    struct request *r = owner;
    struct evbuffer *out = client_out(r->s);
    size_t before = evbuffer_get_length(out);

    if (r->resp_framing == FRAME_CHUNKED) {
        buf_chunk_size(out, len);
        evbuffer_add(out, at, len);
        BUF_LIT(out, "\r\n");
    } else
        evbuffer_add(out, at, len);
    r->bytes_out += evbuffer_get_length(out) - before;
    /* Bytes already on their way to the client: hashed or copied, never held. */
    for (int i = 0; i < r->n_cmps; i++)
        cmp_body(r->cmps[i], CMP_LIVE, at, len);
    if (evbuffer_get_length(out) > GW_HIGH_WATER)
        upconn_pause(u);
}

static void
rq_done(void *owner, struct upconn *u, bool reusable)
{
    struct request *r = owner;
    struct session *s = r->s;

    if (r->resp_framing == FRAME_CHUNKED) {
        BUF_LIT(client_out(s), "0\r\n\r\n");
        r->bytes_out += 5;
    }
    evtimer_del(r->timer);
    r->up = NULL;
    upconn_release(u, reusable && r->body_done);
    r->phase = RP_ANSWERED;
    r->cause = RC_OK;
    if (!r->body_done)
        /* The model server answered before the whole request was read:
         * the rest of it is not wanted, so the connection ends here. */
        s->close_after = true;
    request_maybe_end(s);
    session_run(s);
}

static enum req_cause
fail_cause(enum up_fail why)
{
    switch (why) {
    case UPF_CONNECT: return RC_UPSTREAM_CONNECT;
    case UPF_RESET: return RC_UPSTREAM_RESET;
    case UPF_CLOSED: return RC_UPSTREAM_CLOSED;
    default: return RC_UPSTREAM_INVALID;
    }
}

static const char *
fail_message(enum up_fail why, bool early)
{
    switch (why) {
    case UPF_CONNECT: return "cannot connect to the model server";
    case UPF_RESET: return early ? "the model server reset the connection" :
                                   "the model server reset the connection mid-response";
    case UPF_CLOSED: return early ? "the model server closed the connection without answering" :
                                    "the model server closed the connection mid-response";
    default: return "invalid response from the model server";
    }
}

static void
rq_failed(void *owner, struct upconn *u, enum up_fail why, bool early)
{
    struct request *r = owner;
    struct session *s = r->s;
    struct worker *w = s->w;
    struct upool *pool = u->pool;
    bool connect_failed = !u->connected;

    if (why == UPF_CONNECT || why == UPF_RESET)
        upstream_failed(w, pool, req_version(r));
    /* Retry once when it is safe: nothing was sent (connect failed: on
     * another upstream), or a reused connection closed before any answer
     * (the keep-alive race: on a new connection, with what was sent). */
    if (early && !r->retried && r->phase == RP_UPSTREAM &&
        (connect_failed || (u->reused && r->replay != NULL))) {
        struct evbuffer *resend = NULL;
        if (connect_failed) {
            resend = evbuffer_new();
            if (resend != NULL)
                evbuffer_add_buffer(resend, upconn_output(u));
        } else {
            resend = r->replay;
            r->replay = NULL;
        }
        struct upool *other = NULL;
        enum pick pk = PICK_AT_LIMIT;
        route_give_slot(r->slot);
        r->slot = NULL;
        if (resend != NULL)
            pk = upstream_pick(w, r->cfg, r->ep, r->version, connect_failed ? pool : NULL,
                               &other);
        if (pk == PICK_OK) {
            r->up = NULL;
            upconn_close(u);
            r->retried = true;
            start_upstream(s, other, true, resend);
            evbuffer_free(resend);
            session_run(s);
            return;
        }
        if (resend != NULL)
            evbuffer_free(resend);
    }
    r->up = NULL;
    upconn_close(u);
    request_reply(s, fail_cause(why), fail_message(why, early), !r->body_done);
    request_maybe_end(s);
    session_run(s);
}

static void
rq_drained(void *owner, struct upconn *u)
{
    session_run(((struct request *)owner)->s);
}

static void
rq_progress(void *owner, struct upconn *u)
{
    struct session *s = ((struct request *)owner)->s;
    client_flush(s);
    update_reading(s);
}

static const struct upconn_ops req_ops = {
    .on_head = rq_head, .on_body = rq_body, .on_done = rq_done,
    .on_failed = rq_failed, .on_drained = rq_drained, .on_progress = rq_progress,
};

/* ---- routing a request ------------------------------------------------------ */

static void
req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct session *s = r->s;

    if (r->phase == RP_QUEUED)
        request_reply(s, RC_OVERLOADED, "the version stayed at replica_max_concurrent_requests "
                      "for longer than max_request_wait_time_ms", false);
    else
        request_reply(s, RC_UPSTREAM_TIMEOUT,
                      "the model server did not answer within scoring_timeout_ms",
                      !r->body_done);
    request_maybe_end(s);
    session_run(s);
}

/* Route a request whose version is chosen: to a healthy upstream, to the
 * default version on failover, into the wait queue at the concurrency
 * limit, or to a 503. */
static void
route_request(struct session *s)
{
    struct request *r = s->req;
    const struct cfg_endpoint *ep = r->ep;
    struct upool *pool = NULL;
    enum pick pk = upstream_pick(s->w, r->cfg, ep, r->version, NULL, &pool);

    if (pk == PICK_NO_HEALTHY && ep->failover_to_default && !r->pinned &&
        r->version != ep->default_version) {
        r->version = ep->default_version;
        r->failover = true;
        pk = upstream_pick(s->w, r->cfg, ep, r->version, NULL, &pool);
    }
    if (pk == PICK_OK) {
        start_upstream(s, pool, false, NULL);
        return;
    }
    if (pk == PICK_NO_HEALTHY) {
        request_reply(s, RC_UNAVAILABLE, "no healthy model server for this version", false);
        return;
    }
    const struct cfg_version *v = req_version(r);
    if (v->max_wait_ms <= 0) {
        request_reply(s, RC_OVERLOADED, "the version is at replica_max_concurrent_requests",
                      false);
        return;
    }
    /* Wait in line, with the rest of the request left unread. */
    r->phase = RP_QUEUED;
    r->waiting = true;
    TAILQ_INSERT_TAIL(&s->w->waiters, r, wait_link);
    arm(r->timer, v->max_wait_ms);
    if (!evtimer_pending(s->w->wait_poll, NULL)) {
        struct timeval tv = {0, 2000};
        evtimer_add(s->w->wait_poll, &tv);
    }
}

/* Give queued requests the slots that are free now, in order. Starting a
 * request can end another (and free a slot) on the way: a nested call only
 * asks the running one to look again. */
static void
dispatch_waiters(struct worker *w)
{
    if (w->dispatching) {
        w->dispatch_again = true;
        return;
    }
    w->dispatching = true;
    do {
        w->dispatch_again = false;
        struct request *r;
        TAILQ_FOREACH(r, &w->waiters, wait_link) {
            struct upool *pool = NULL;
            if (upstream_pick(w, r->cfg, r->ep, r->version, NULL, &pool) != PICK_OK)
                continue;   /* others of other versions may still go */
            stop_waiting(r);
            evtimer_del(r->timer);
            if (start_upstream(r->s, pool, false, NULL))
                session_run(r->s);
            else
                request_maybe_end(r->s);
            w->dispatch_again = true;   /* the list changed: start over */
            break;
        }
    } while (w->dispatch_again);
    w->dispatching = false;
    /* Slots freed by other workers are seen by looking again shortly. */
    if (!TAILQ_EMPTY(&w->waiters) && !evtimer_pending(w->wait_poll, NULL)) {
        struct timeval tv = {0, 2000};
        evtimer_add(w->wait_poll, &tv);
    }
}

static void
wait_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    dispatch_waiters(arg);
}

/* Authenticate the request for ep (SPEC §3.2); false with a 401 sent. */
static bool
check_auth(struct session *s, const struct cfg_endpoint *ep)
{
    struct request *r = s->req;
    struct head *hd = &r->head;
    int az = hd->first[HC_AUTHORIZATION];
    const char *cred = az >= 0 ? HD_VAL(hd, az) : NULL;
    uint32_t len = az >= 0 ? hd->h[az].val_len : 0;
    time_t now = 0;

    if (!ep->auth_keys && !ep->auth_tokens)
        return true;
    int epi = (int)(ep - r->cfg->endpoints);
    /* Generations are never reused (an address could be). */
    if (cred != NULL && s->auth_cred != NULL && s->auth_gen == r->cfg->generation &&
        s->auth_ep == epi && len == s->auth_cred_len &&
        auth_same(cred, s->auth_cred, len)) {
        if (s->auth_until == 0)
            return true;
        now = time(NULL);
        if (now <= s->auth_until)
            return true;
    }
    time_t until = 0;
    enum auth_status st = s->w->auth == NULL ? AUTH_NOT_ALLOWED :
        auth_check(s->w->auth, ep, cred, len, now ? now : time(NULL), &until);
    if (st != AUTH_OK) {
        request_reply(s, RC_UNAUTHORIZED, auth_status_reason(st), false);
        return false;
    }
    char *copy = realloc(s->auth_cred, len ? len : 1);
    if (copy != NULL) {
        memcpy(copy, cred, len);
        s->auth_cred = copy;
        s->auth_cred_len = len;
        s->auth_gen = r->cfg->generation;
        s->auth_ep = epi;
        s->auth_until = until;
    }
    return true;
}

/* Start the shadow copies of this request (mirror versions, by share). */
static void
start_shadows(struct session *s, struct ep_state *es)
{
    struct request *r = s->req;
    const struct cfg_endpoint *ep = r->ep;
    for (int i = 0; i < ep->n_versions; i++) {
        if (ep->versions[i].mirror <= 0 ||
            !route_mirror_next(&es->mirror_acc[i], ep->versions[i].mirror))
            continue;
        const struct cfg_version *v = &ep->versions[i];
        struct upstream_request ur = {
            .method = llhttp_method_name(r->line.method),
            .path = v->path ? v->path : r->head.buf + r->target.path_off,
            .path_len = v->path ? strlen(v->path) : r->target.path_len,
            .query = r->target.has_query ? r->head.buf + r->target.query_off : NULL,
            .query_len = r->target.query_len,
            .hd = &r->head, .peer = s->peer, .proto = s->tp->proto,
            .default_host = v->upstreams[0].address,
            .tags = {v->name, "shadow", r->id, false},
            .framing = r->up_framing, .content_length = r->line.content_length,
        };
        compose_request_head(s->w->scratch2, &ur);
        struct shadow *sh = shadow_start(s->w, r->cfg, ep, i, s->w->scratch2,
                                         r->up_framing == FRAME_CHUNKED, r->head_method,
                                         r->id);
        if (sh != NULL)
            r->shadows[r->n_shadows++] = sh;
    }
}

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
    arm(s->req->hdr_timer, ms);
    return 0;
}

static int
head_piece(struct session *s, int rc)
{
    struct request *r = s->req;
    /* Trailers land here too, after the head: one budget for both. */
    if (rc < 0 || r->head.len + r->extra_bytes > limits(s)->max_header_bytes) {
        r->head_too_large = true;
        return HPE_USER;
    }
    return 0;
}

/* Check the head's (or the trailers') line ends in this read. */
static bool
scan_head(struct session *s, const char *from)
{
    struct request *r = s->req;
    enum req_scan st = req_scan_lines(&r->scan, from, r->chunk, r->chunk_end, s->prev_byte);
    if (st == SCAN_BARE_LF || st == SCAN_FOLD)
        r->bad_line = (uint8_t)st;
    return r->bad_line == 0;
}

static int
on_method(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    struct request *r = s->req;
    if (!r->scan.active && r->head.url_len == 0 && !r->bad_line) {
        r->scan = (struct line_scan){.active = true};
        if (!scan_head(s, at))
            return HPE_USER;
    }
    return 0;
}

static int
on_version_complete(llhttp_t *p)
{
    struct session *s = p->data;
    s->req->version_seen = true;
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
    if (r->t_start_us != 0 && !r->trailers) {
        /* The first trailer: its lines are checked like the head's. */
        r->trailers = true;
        r->scan = (struct line_scan){.active = true};
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
    struct request *r = s->req;
    r->extra_bytes += len;
    if (r->head.len + r->extra_bytes > limits(s)->max_header_bytes) {
        r->head_too_large = true;
        return HPE_USER;
    }
    return 0;
}

/*
 * The head is complete: validate it (request.c), find the endpoint,
 * authenticate, choose the version, start the shadows and the upstream
 * request. Returns 0 to go on reading the body (forwarded, or dropped after
 * an answer), HPE_USER to stop reading (the connection closes).
 */
static int
on_headers_complete(llhttp_t *p)
{
    struct session *s = p->data;
    struct worker *w = s->w;
    struct request *r = s->req;
    struct head *hd = &r->head;
    char msg[200];

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
    int rid = hd->first[HC_REQUEST_ID];
    if (rid >= 0 && req_id_acceptable(HD_VAL(hd, rid), hd->h[rid].val_len)) {
        memcpy(r->id, HD_VAL(hd, rid), hd->h[rid].val_len);
        r->id[hd->h[rid].val_len] = '\0';
    } else
        ensure_id(r);

    struct req_verdict vd = req_validate(hd, &r->line, limits(s), &r->target);
    if (vd.cause != RC_OK) {
        request_reply(s, vd.cause, vd.message, vd.close);
        return vd.close ? HPE_USER : 0;
    }
    r->up_framing = r->line.chunked ? FRAME_CHUNKED :
        r->line.has_length ? FRAME_LENGTH : FRAME_NONE;
    int ex = hd->first[HC_EXPECT];
    /* The client waits for 100 Continue before its body; there is none to
     * wait for with Content-Length: 0. */
    r->expect_continue = ex >= 0 && r->line.minor >= 1 && r->up_framing != FRAME_NONE &&
        !(r->line.has_length && r->line.content_length == 0) &&
        hd->h[ex].val_len == 12 && strncasecmp(HD_VAL(hd, ex), "100-continue", 12) == 0;

    const char *path = hd->buf + r->target.path_off;
    const char *epname;
    size_t eplen;
    const struct cfg_endpoint *ep = NULL;
    if (req_score_path(path, r->target.path_len, &epname, &eplen))
        ep = config_endpoint(r->cfg, epname, eplen);
    if (ep == NULL) {
        int pl = r->target.path_len > 128 ? 128 : (int)r->target.path_len;
        snprintf(msg, sizeof(msg), "no endpoint at %.*s", pl, path);
        request_reply(s, RC_NOT_FOUND, msg, false);
        return 0;
    }
    r->ep = ep;
    if (!check_auth(s, ep))
        return 0;
    if (hd->pin >= 0 && ep->pinning) {
        int vi = route_pinned(ep, HD_VAL(hd, hd->pin), hd->h[hd->pin].val_len);
        if (vi < 0) {
            int vl = hd->h[hd->pin].val_len > 64 ? 64 : (int)hd->h[hd->pin].val_len;
            snprintf(msg, sizeof(msg), vi == ROUTE_PIN_REFUSED ?
                     "endpoint %s: version %.*s was rolled back or aborted and takes no "
                     "pinned requests until it is changed again" :
                     "endpoint %s has no version %.*s", ep->name, vl, HD_VAL(hd, hd->pin));
            request_reply(s, RC_NOT_FOUND, msg, false);
            return 0;
        }
        r->version = vi;
        r->pinned = true;
    } else {
        const char *key;
        size_t klen;
        struct ep_state *es = r->cfg == w->cfg ? &w->eps[ep - r->cfg->endpoints] : NULL;
        if (req_sticky_key(hd, ep, &key, &klen))
            r->version = route_sticky(ep, key, klen);
        else if (es != NULL)
            r->version = route_split_next(&es->split);
        else
            r->version = ep->default_version;
        if (es != NULL)
            start_shadows(s, es);
    }
    r->routed = true;
    route_request(s);
    /* A queued request's body stays unread until it gets a slot. */
    return r->phase == RP_QUEUED ? HPE_PAUSED : 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    struct session *s = p->data;
    struct request *r = s->req;

    r->body_in += len;
    if (r->body_in > limits(s)->max_body_bytes) {
        request_reply(s, RC_TOO_LARGE, "the request body is over max_body_bytes", true);
        return HPE_USER;
    }
    for (int i = 0; i < r->n_shadows; i++)
        shadow_body(r->shadows[i], at, len);
    if (r->discard || r->up == NULL)
        return 0;
    if (r->up_framing == FRAME_CHUNKED) {
        char size[24];
        struct evbuffer *tmp = s->w->scratch;
        buf_chunk_size(tmp, len);
        size_t n = evbuffer_remove(tmp, size, sizeof(size));
        send_to_upstream(r, size, n);
        send_to_upstream(r, at, len);
        send_to_upstream(r, "\r\n", 2);
    } else
        send_to_upstream(r, at, len);
    return 0;
}

static int
on_message_complete(llhttp_t *p)
{
    struct session *s = p->data;
    struct request *r = s->req;

    r->body_done = true;
    for (int i = 0; i < r->n_shadows; i++) {
        struct shadow_cmp *c = shadow_complete(r->shadows[i]);
        if (c == NULL)
            continue;
        if (r->phase == RP_RESPONDING || r->phase == RP_ANSWERED)
            cmp_end(c, CMP_LIVE, false);    /* its answer began unseen: unknown */
        else
            r->cmps[r->n_cmps++] = c;
    }
    r->n_shadows = 0;
    if (r->up != NULL && r->up_framing == FRAME_CHUNKED && !r->discard)
        send_to_upstream(r, "0\r\n\r\n", 5);
    evtimer_del(r->hdr_timer);
    return HPE_PAUSED;              /* the next request waits for this one's end */
}

/* ---- reading from the client ------------------------------------------------- */

/* A parse error: the request gets a 400 (or 431, 505) and the connection
 * closes; if it was already answered, the connection just closes. */
static void
parse_failed(struct session *s, enum llhttp_errno e)
{
    if (s->req == NULL) {
        s->req = request_new(s);
        if (s->req == NULL) {
            session_close(s);
            return;
        }
    }
    struct request *r = s->req;
    if (r->phase == RP_ANSWERED || (r->phase != RP_HEAD && r->discard)) {
        s->close_after = true;
    } else if (r->head_too_large) {
        request_reply(s, r->routed ? RC_BAD_REQUEST : RC_HEADERS_TOO_LARGE, r->routed ?
                      "chunk extensions or trailers over max_header_bytes" :
                      "the request headers are over max_header_bytes", true);
    } else if (r->bad_line) {
        request_reply(s, RC_BAD_REQUEST, r->bad_line == SCAN_FOLD ?
                      "malformed HTTP: a folded header line (obs-fold)" :
                      "malformed HTTP: a line of the head ends in a bare LF", true);
    } else {
        char msg[160];
        const char *why = llhttp_get_error_reason(&r->parser);
        snprintf(msg, sizeof(msg), "malformed HTTP: %s", why ? why : llhttp_errno_name(e));
        /* 505 for a well-formed version other than 1.0 and 1.1; a line
         * that goes wrong after its version is malformed (400). */
        request_reply(s, r->version_seen ? RC_BAD_REQUEST : req_parse_error_cause(e), msg, true);
    }
    s->close_after = true;
    request_maybe_end(s);
}

/* Whether the parser may take more input now. */
static bool
may_parse(struct session *s)
{
    struct request *r = s->req;
    if (s->closing || s->closed)
        return false;
    if (out_len(s) > limits(s)->max_client_output_bytes)
        return false;               /* a client that does not read */
    if (r == NULL)                  /* a new request starts here */
        return s->unsent_answers < limits(s)->max_pipelined;
    if (r->body_done || r->phase == RP_QUEUED)
        return false;
    if (r->up != NULL && evbuffer_get_length(upconn_output(r->up)) > GW_HIGH_WATER)
        return false;               /* the model server does not keep up */
    return true;
}

/* Feed buffered client input to the parser for as long as it may run. */
static void
session_feed(struct session *s)
{
    struct evbuffer *in = s->io.in;

    while (in != NULL && may_parse(s)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        /* A request (and its parser) exists from its first byte on: an
         * idle connection holds none. */
        if (s->req == NULL && (s->req = request_new(s)) == NULL) {
            session_close(s);
            return;
        }
        struct request *r = s->req;
        r->chunk = v.iov_base;
        r->chunk_end = r->chunk + v.iov_len;
        enum llhttp_errno e;
        if (r->scan.active && !scan_head(s, r->chunk)) {
            e = HPE_USER;
            llhttp_set_error_reason(&r->parser, "malformed line in the head");
        } else
            e = llhttp_execute(&r->parser, v.iov_base, v.iov_len);
        if (s->closed)
            return;
        size_t n = v.iov_len;
        if (e == HPE_PAUSED)
            n = (size_t)(llhttp_get_error_pos(&r->parser) - (const char *)v.iov_base);
        if (n > 0)
            s->prev_byte = r->chunk[n - 1];
        r->bytes_in += n;
        evbuffer_drain(in, n);
        if (e != HPE_OK && e != HPE_PAUSED) {
            parse_failed(s, e);
            return;
        }
        if (e == HPE_PAUSED && s->req != NULL && s->req->body_done)
            request_maybe_end(s);   /* answered early, now read whole */
    }
}

/* Read from the client only while there is room: one read at a time, into
 * an empty input buffer. While the parser can run it takes everything it
 * is given (llhttp streams, heads included); while it cannot (the request
 * waits for its answer, the client does not read its answers), the one read
 * only notices the client leaving. The rest waits in the kernel, and TCP
 * pushes back on the client. */
static void
update_reading(struct session *s)
{
    if (s->closed || s->io.rev == NULL)
        return;
    size_t in = s->io.in ? evbuffer_get_length(s->io.in) : 0;
    bool on;
    if (s->lingering)
        on = true;
    else if (s->closing || out_len(s) > limits(s)->max_client_output_bytes)
        on = false;
    else
        on = in == 0;               /* the parser takes all it may have */
    if (on && in == 0 && s->tp->pending(&s->io))
        event_active(s->io.rev, EV_READ, 1);
    /* The read event carries the connection's deadline: the first head's
     * (from accept), the idle timeout, or the linger. It stays on while a
     * request runs (a timeout then is ignored): no timer work per request. */
    int ms = !on ? 0 : s->lingering ? LINGER_MS :
        s->served ? limits(s)->idle_timeout_ms : limits(s)->header_timeout_ms;
    if (on == s->reading && ms == s->rev_ms)
        return;
    if (!on)
        event_del(s->io.rev);
    else {
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(s->io.rev, &tv);
    }
    s->reading = on;
    s->rev_ms = ms;
}

/* Move everything along after any event: parse, flush, end what is done,
 * decide whether to read. */
static void
session_run(struct session *s)
{
    if (s->closed)
        return;
    session_feed(s);
    if (s->closed)
        return;
    if (s->req != NULL && s->req->up != NULL)
        upconn_flush(s->req->up);
    if (s->closing) {
        start_closing(s);
        return;
    }
    client_flush(s);
    update_reading(s);
    release_bufs(s);
}

/* Flush what is queued for the client, then close. The socket is shut for
 * writing first and unread input drained for a moment, so that a client
 * still sending does not get a reset that destroys the answer. */
static void
start_closing(struct session *s)
{
    if (s->closed || s->lingering)
        return;
    s->closing = true;
    if (s->req != NULL) {
        /* End the request first; its end comes back here to close. */
        s->close_after = true;
        if (s->req->cause == RC_OK && s->req->phase != RP_ANSWERED)
            s->req->cause = RC_CLIENT_CLOSED;
        request_end(s);
        return;
    }
    if (out_len(s) > 0) {
        client_flush(s);
        if (s->closed || out_len(s) > 0)
            return;                 /* the write callback comes back here */
    }
    shutdown(s->io.fd, SHUT_WR);
    s->lingering = true;
    s->deadline_us = now_us() + LINGER_MS * 1000;
    if (s->io.in != NULL)
        evbuffer_drain(s->io.in, evbuffer_get_length(s->io.in));
    update_reading(s);
}

static void
client_gone(struct session *s, enum req_cause cause)
{
    struct request *r = s->req;
    if (r != NULL && r->cause == RC_OK && r->phase != RP_ANSWERED)
        r->cause = cause;
    session_close(s);
}

static void
client_readable(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;

    if (what & EV_TIMEOUT) {
        /* The idle deadline, the first head's, or the linger's end. */
        if (s->req == NULL || s->lingering)
            session_close(s);
        return;
    }
    if (!ensure_bufs(s)) {
        session_close(s);
        return;
    }
    int n = s->tp->read(&s->io);
    if (s->io.want_write)
        arm_write(s);               /* the TLS handshake wants to write */
    if (s->lingering) {
        evbuffer_drain(s->io.in, evbuffer_get_length(s->io.in));
        if (n == GW_READ_EOF || n == GW_READ_ERROR || now_us() > s->deadline_us)
            session_close(s);
        return;
    }
    if (n == GW_READ_EOF || n == GW_READ_ERROR) {
        /* Parse what came before the end first: it may finish a request. */
        session_feed(s);
        if (!s->closed)
            client_gone(s, n == GW_READ_EOF ? RC_CLIENT_CLOSED : RC_CLIENT_ERROR);
        return;
    }
    if (n > 0)
        session_run(s);
    else
        release_bufs(s);
}

/* The client took everything queued (plain), or its socket takes more (TLS). */
static void
client_writable(struct session *s)
{
    client_flush(s);
    if (s->closed)
        return;
    if (s->closing) {
        start_closing(s);
        return;
    }
    if (s->req != NULL && s->req->up != NULL &&
        out_len(s) <= GW_HIGH_WATER)
        upconn_resume(s->req->up);
    if (!s->closed)
        session_run(s);
}

static void
client_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (what & EV_TIMEOUT) {
        client_gone(s, RC_SEND_TIMEOUT);
        return;
    }
    if (!s->io.tls_ready && s->io.ssl != NULL) {
        client_readable(fd, EV_READ, s);    /* the handshake wanted to write */
        return;
    }
    client_writable(s);
}

/* header_timeout_ms passed before the request was read whole. */
static void
hdr_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct session *s = r->s;

    if (r != NULL && !r->body_done && r->phase != RP_ANSWERED) {
        request_reply(s, RC_CLIENT_TIMEOUT, r->routed ?
                      "request body not received within header_timeout_ms" :
                      "request headers not received within header_timeout_ms", true);
        request_maybe_end(s);
        session_run(s);
        return;
    }
    if (r->phase == RP_ANSWERED && !r->body_done)
        start_closing(s);           /* answered, but the rest never came */
}

/* ---- lifetime ----------------------------------------------------------------- */

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

void
session_new(struct worker *w, int fd, struct sockaddr *sa, int salen,
            struct ssl_ctx_st *tls)
{
    const struct cfg_limits *lim = &w->cfg->limits;
    int one = 1;

    if (__atomic_load_n(&gw_open_connections, __ATOMIC_RELAXED) >= lim->max_connections) {
        close(fd);
        return;
    }
    init_settings();
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->w = w;
    s->tp = tls ? &transport_tls : &transport_plain;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, s->peer, sizeof(s->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, s->peer, sizeof(s->peer));
    else
        snprintf(s->peer, sizeof(s->peer), "unix");
    s->io.fd = fd;
    evutil_make_socket_nonblocking(fd);
    if (tls != NULL && tls_start(&s->io, tls, fd) < 0) {
        close(fd);
        free(s);
        return;
    }
    s->io.rev = event_new(w->base, fd, EV_READ | EV_PERSIST, client_readable, s);
    if (s->io.rev == NULL) {
        s->tp->end(&s->io);
        close(fd);
        free(s);
        return;
    }
    /* The first request's head must arrive within header_timeout_ms. */
    s->deadline_us = now_us() + (uint64_t)lim->header_timeout_ms * 1000;
    update_reading(s);
    TAILQ_INSERT_TAIL(&w->sessions, s, link);
    w->n_sessions++;
    __atomic_add_fetch(&gw_open_connections, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
}

/* The only way a session dies: its request (if any) ends first, with the
 * cause it has. */
static void
session_close(struct session *s)
{
    struct worker *w = s->w;

    if (s->closed)
        return;
    s->closing = true;
    s->close_after = true;
    if (s->req != NULL) {
        if (s->req->cause == RC_OK && s->req->phase != RP_ANSWERED)
            s->req->cause = RC_CLIENT_CLOSED;
        s->closed = true;           /* request_end must not start closing again */
        request_end(s);
    }
    s->closed = true;
    event_free(s->io.rev);
    s->io.rev = NULL;
    if (s->io.wev != NULL)
        event_free(s->io.wev);
    s->io.wev = NULL;
    s->tp->end(&s->io);
    close(s->io.fd);
    s->io.fd = -1;
    if (s->io.in != NULL) {
        evbuffer_drain(s->io.in, evbuffer_get_length(s->io.in));
        buf_put(w, s->io.in);
    }
    if (s->io.out != NULL) {
        evbuffer_drain(s->io.out, evbuffer_get_length(s->io.out));
        buf_put(w, s->io.out);
    }
    s->io.in = s->io.out = NULL;
    TAILQ_REMOVE(&w->sessions, s, link);
    w->n_sessions--;
    __atomic_sub_fetch(&gw_open_connections, 1, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
    s->gc_next = w->gc_sessions;
    w->gc_sessions = s;
    event_active(w->session_gc_ev, EV_TIMEOUT, 1);
}

void
session_gc(struct worker *w)
{
    while (w->gc_sessions != NULL) {
        struct session *s = w->gc_sessions;
        w->gc_sessions = s->gc_next;
        if (s->auth_cred != NULL) {
            explicit_bzero(s->auth_cred, s->auth_cred_len);
            free(s->auth_cred);
        }
        free(s);
    }
    if (w->draining && w->n_sessions == 0)
        event_base_loopexit(w->base, NULL);
}

static void
gc_cb(evutil_socket_t fd, short what, void *arg)
{
    session_gc(arg);
    upstream_gc(arg);
}

void
session_worker_init(struct worker *w)
{
    TAILQ_INIT(&w->sessions);
    TAILQ_INIT(&w->waiters);
    w->session_gc_ev = event_new(w->base, -1, 0, gc_cb, w);
    w->wait_poll = event_new(w->base, -1, 0, wait_poll_cb, w);
}

void
session_drain_all(struct worker *w)
{
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->req == NULL || s->closing)
            session_close(s);
        else
            s->close_after = true;
    }
    session_gc(w);
}

void
sessions_free_all(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->sessions)) {
        struct session *s = TAILQ_FIRST(&w->sessions);
        if (s->req != NULL && s->req->cause == RC_OK && s->req->phase != RP_ANSWERED)
            s->req->cause = RC_SHUTDOWN;
        session_close(s);
    }
    session_gc(w);
    free_reqs_all(w);
    while (w->n_free_bufs > 0)
        evbuffer_free(w->free_bufs[--w->n_free_bufs]);
    event_free(w->session_gc_ev);
    event_free(w->wait_poll);
}
