/*
 * A client connection's bytes and life (gateway/conn.h), whatever protocol
 * it speaks: buffers from a per-worker pool (only while in use: an idle
 * keep-alive connection holds none), reads through its transport (plain or
 * TLS) with the connection's deadline on the one read event, writes with
 * send_timeout_ms, backpressure (no reading while the client does not take
 * its answers), the lingering close, and its place in the worker's list.
 * The protocol on it (client_h1.c) parses what it reads and answers.
 *
 * A session ends in session_close() only; the struct itself is freed from
 * the worker's gc event, so code still on the stack may look at s->closed.
 */
#include "gateway/conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINGER_MS 2000

static void client_write_cb(evutil_socket_t fd, short what, void *arg);

/* ---- writing ------------------------------------------------------------- */

/* Wait for the socket to take more; a client that takes nothing for
 * send_timeout_ms is closed (SPEC §3.7). */
static void
arm_write(struct session *s)
{
    if (s->io.wev == NULL) {
        s->io.wev = event_new(s->c.w->base, s->io.fd, EV_WRITE, client_write_cb, s);
        if (s->io.wev == NULL) {
            session_close(s);
            return;
        }
    }
    if (!event_pending(s->io.wev, EV_WRITE, NULL))
        worker_arm(s->c.w, s->io.wev, limits(s)->send_timeout_ms, true);
}

void
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

static bool
ensure_bufs(struct session *s)
{
    if (s->io.in == NULL)
        s->io.in = worker_buf_get(s->c.w);
    if (s->io.out == NULL)
        s->io.out = worker_buf_get(s->c.w);
    return s->io.in != NULL && s->io.out != NULL;
}

/* An idle connection keeps no buffers. */
void
release_bufs(struct session *s)
{
    if (s->proto->busy(s) || s->closed || s->io.in == NULL ||
        evbuffer_get_length(s->io.in) > 0 || evbuffer_get_length(s->io.out) > 0 ||
        s->tp->pending(&s->io))
        return;
    worker_buf_put(s->c.w, s->io.in);
    worker_buf_put(s->c.w, s->io.out);
    s->io.in = s->io.out = NULL;
}

/* ---- reading ------------------------------------------------------------- */

/* Read from the client only while there is room: one read at a time, into
 * an empty input buffer. While the parser can run it takes everything it
 * is given (llhttp streams, heads included); while it cannot (the request
 * waits for its answer, the client does not read its answers), the one read
 * only notices the client leaving. The rest waits in the kernel, and TCP
 * pushes back on the client. */
void
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
    else                            /* the parser takes all it may have */
        on = in == 0 || s->sniffing;
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

/* Flush what is queued for the client, then close. The socket is shut for
 * writing first and unread input drained for a moment, so that a client
 * still sending does not get a reset that destroys the answer. */
void
start_closing(struct session *s)
{
    if (s->closed || s->lingering)
        return;
    s->closing = true;
    if (s->proto->busy(s)) {
        /* End the requests first (HTTP/1.1's end comes back here). */
        s->c.ending = true;
        s->proto->end_all(s, RC_CLIENT_CLOSED);
        if (s->closed || s->lingering)
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

static void close_with(struct session *s, enum req_cause cause);

static void
client_gone(struct session *s, enum req_cause cause)
{
    close_with(s, cause);
}

static void
client_readable(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;

    if (what & EV_TIMEOUT) {
        /* The idle deadline, the first head's, or the linger's end. */
        if (s->sniffing && !s->lingering) {
            /* A first byte that could begin the HTTP/2 preface, and no more
             * within the deadline: HTTP/1.1 takes it (and answers 408). */
            s->sniffing = false;
            s->h2_allowed = false;
            s->proto->run(s);
            return;
        }
        if (!s->proto->busy(s) || s->lingering)
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
        s->proto->feed(s);
        if (!s->closed)
            client_gone(s, n == GW_READ_EOF ? RC_CLIENT_CLOSED : RC_CLIENT_ERROR);
        return;
    }
    if (n > 0)
        s->proto->run(s);
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
    if (out_len(s) <= GW_HIGH_WATER)
        s->proto->drained(s);
    if (!s->closed)
        s->proto->run(s);
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

/* ---- lifetime ----------------------------------------------------------------- */


void
conn_accept(struct worker *w, int fd, struct sockaddr *sa, int salen,
            struct ssl_ctx_st *tls, bool h2, void (*attach)(struct session *s))
{
    const struct cfg_limits *lim = &w->cfg->limits;
    int one = 1;

    if (__atomic_load_n(&gw_open_connections, __ATOMIC_RELAXED) >= lim->max_connections) {
        close(fd);
        return;
    }
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        close(fd);
        return;
    }
    s->c.w = w;
    s->tp = tls ? &transport_tls : &transport_plain;
    s->c.proto = s->tp->proto;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, s->c.peer, sizeof(s->c.peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, s->c.peer,
                  sizeof(s->c.peer));
    else
        snprintf(s->c.peer, sizeof(s->c.peer), "unix");
    s->io.fd = fd;
    s->c.auth = &s->auth;
    s->h2_allowed = h2;
    attach(s);
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

/* The only way a session dies: its requests (if any) end first, with the
 * cause they have, else cause. */
static void
close_with(struct session *s, enum req_cause cause)
{
    struct worker *w = s->c.w;

    if (s->closed)
        return;
    s->closing = true;
    s->c.ending = true;
    s->closed = true;               /* request_end must not start closing again */
    if (s->proto->busy(s))
        s->proto->end_all(s, cause);
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
        worker_buf_put(w, s->io.in);
    }
    if (s->io.out != NULL) {
        evbuffer_drain(s->io.out, evbuffer_get_length(s->io.out));
        worker_buf_put(w, s->io.out);
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
session_close(struct session *s)
{
    close_with(s, RC_CLIENT_CLOSED);
}

void
session_gc(struct worker *w)
{
    while (w->gc_sessions != NULL) {
        struct session *s = w->gc_sessions;
        w->gc_sessions = s->gc_next;
        s->proto->free(s);
        if (s->auth.cred != NULL) {
            explicit_bzero(s->auth.cred, s->auth.len);
            free(s->auth.cred);
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
    w->session_gc_ev = event_new(w->base, -1, 0, gc_cb, w);
    requests_worker_init(w);
}

void
session_drain_all(struct worker *w)
{
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (!s->proto->busy(s) || s->closing)
            session_close(s);
        else
            s->proto->drain(s);
    }
    session_gc(w);
}

void
sessions_free_all(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->sessions)) {
        struct session *s = TAILQ_FIRST(&w->sessions);
        close_with(s, RC_SHUTDOWN);
    }
    session_gc(w);
    requests_free_all(w);
    worker_bufs_free(w);
    event_free(w->session_gc_ev);
}
