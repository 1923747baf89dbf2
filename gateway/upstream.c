/*
 * Upstream pools and connections. Each worker keeps one pool per upstream
 * address (surviving config generations), with idle keep-alive connections
 * reused across requests and closed after upstream_idle_timeout_ms. While a
 * connection is busy it reports to its owner (a client request or a shadow
 * copy) through the owner's upconn_ops, piece by piece, so bodies stream;
 * this file never names its owners.
 *
 * This file is the HTTP/1.1 upstream class (upstream_http1): a connection's
 * owner talks to it through struct upstream_class (gateway/internal.h) —
 * send the request head, body pieces, the end; pause, resume, release —
 * so another protocol's pool can sit beside it with the same owners.
 *
 * Responses are parsed with llhttp in strict mode and framed as RFC 9112
 * §6.3 says: a response to HEAD, a 1xx, 204 or 304 has no body, whatever
 * its headers claim; a connection whose server sent bytes that no response
 * accounts for is closed, never reused.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define MAX_IDLE_PER_POOL 256
#define MAX_RESPONSE_HEAD (64 * 1024)

static llhttp_settings_t resp_settings;

static void h1_close(struct upconn *u);

/* ---- pools ------------------------------------------------------------ */

static int
resolve(struct upool *p, const struct cfg_upstream *u)
{
    if (u->is_unix) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&p->sa;
        sun->sun_family = AF_UNIX;
        snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", u->host);
        p->salen = sizeof(*sun);
        p->is_unix = true;
        return 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    char port[8];
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", u->port);
    /* Numeric addresses do not block; a name is resolved once per worker
     * when its pool is created. */
    if (getaddrinfo(u->host, port, &hints, &res) != 0 || res == NULL)
        return -1;
    memcpy(&p->sa, res->ai_addr, res->ai_addrlen);
    p->salen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

struct upool *
upool_get(struct worker *w, const struct cfg_upstream *u, bool http2)
{
    const struct upstream_class *cls = http2 ? &upstream_http2 : &upstream_http1;
    for (struct upool *p = w->pools; p != NULL; p = p->next)
        if (strcmp(p->address, u->address) == 0 && p->cls == cls)
            return p->resolved ? p : NULL;
    struct upool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->address = strdup(u->address);
    p->shared = route_shared_get(u->address);
    if (p->address == NULL || p->shared == NULL) {
        /* The main thread registers every address before publishing. */
        free(p->address);
        free(p);
        return NULL;
    }
    TAILQ_INIT(&p->idle);
    p->cls = cls;
    p->resolved = resolve(p, u) == 0;
    if (!p->resolved)
        log_event(LOG_ERROR, "upstream_unresolved", ",\"upstream\":\"%s\"",
                  log_json(u->address));
    p->next = w->pools;
    w->pools = p;
    return p->resolved ? p : NULL;
}

static uint64_t
now_ms(void)
{
    return now_us() / 1000;
}

enum pick
upstream_pick(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep,
              int vi, const struct upool *avoid, struct upool **out)
{
    const struct cfg_version *v = &ep->versions[vi];
    /* The worker's cached pools when the request runs on its snapshot. */
    struct ep_state *es = cfg == w->cfg ? &w->eps[ep - cfg->endpoints] : NULL;
    struct route_candidate c[CFG_MAX_UPSTREAMS];
    struct upool *pools[CFG_MAX_UPSTREAMS];
    int n = v->n_upstreams;
    bool ejected = false;

    for (int tries = 0; tries < 2; tries++) {
        for (int k = 0; k < n; k++) {
            struct upool *p = es ? es->pools[vi][k] : upool_get(w, &v->upstreams[k], v->upstream_http2);
            pools[k] = p;
            if (p == NULL) {
                c[k] = (struct route_candidate){.down = true};
                continue;
            }
            c[k].down = __atomic_load_n(&p->shared->down, __ATOMIC_RELAXED) != 0;
            c[k].avoid = p == avoid;
            c[k].ejected_until_ms = p->eject.until_ms;
            c[k].inflight = v->max_concurrent > 0 ?
                __atomic_load_n(&p->shared->inflight, __ATOMIC_RELAXED) : 0;
            c[k].active = p->active;
            ejected |= p->eject.until_ms != 0;
        }
        int i;
        /* The clock is read only when an upstream was ejected. */
        enum route_pick_status st = route_pick_upstream(c, n,
            n > 1 ? (int)(w->req_seq % (uint64_t)n) : 0, v->max_concurrent,
            ejected ? now_ms() : 0, &i);
        if (st == ROUTE_PICK_NO_HEALTHY)
            return PICK_NO_HEALTHY;
        if (st == ROUTE_PICK_AT_LIMIT)
            return PICK_AT_LIMIT;
        if (route_take_slot(pools[i]->shared, v->max_concurrent)) {
            *out = pools[i];
            return PICK_OK;
        }
        /* another worker took the last slot in between: look again */
    }
    return PICK_AT_LIMIT;
}

void
upstream_failed(struct worker *w, struct upool *p, const struct cfg_version *v)
{
    int threshold = v->health.enabled ? v->health.failure_threshold : 3;
    if (route_eject_failure(&p->eject, threshold, now_ms()))
        log_event(LOG_WARN, "upstream_ejected", ",\"upstream\":\"%s\",\"worker\":%d,"
                  "\"backoff_ms\":%llu", log_json(p->address), w->id,
                  (unsigned long long)p->eject.backoff_ms);
}

void
upstream_free_all(struct worker *w)
{
    struct upool *p, *next;
    for (p = w->pools; p != NULL; p = next) {
        next = p->next;
        while (!TAILQ_EMPTY(&p->idle))
            upconn_close(TAILQ_FIRST(&p->idle));
        upstream_h2_free_pool(p);
        free(p->address);
        free(p);
    }
    w->pools = NULL;
}

/* ---- response parsing ------------------------------------------------- */

static bool skip_message(const struct upconn *u)
{
    return u->status >= 100 && u->status < 200;
}

static int
on_message_begin(llhttp_t *hp)
{
    struct upconn *u = hp->data;
    head_reset(&u->head);
    u->status = 0;
    return 0;
}

static int
head_piece(struct upconn *u, int rc)
{
    return rc < 0 || u->head.len > MAX_RESPONSE_HEAD ? HPE_USER : 0;
}

static int
on_status(llhttp_t *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_piece(u, head_url(&u->head, at, len));
}

static int
on_header_field(llhttp_t *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_piece(u, head_field(&u->head, at, len));
}

static int
on_header_value(llhttp_t *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_piece(u, head_value(&u->head, at, len));
}

static int
on_headers_complete(llhttp_t *hp)
{
    struct upconn *u = hp->data;

    u->status = hp->status_code;
    u->has_length = (hp->flags & F_CONTENT_LENGTH) != 0;
    u->content_length = u->has_length ? hp->content_length : 0;
    if (skip_message(u))
        /* 101 would switch protocols: not through a scoring URL. Other
         * 1xx are interim answers, dropped (Sluice answers 100 itself). */
        return u->status == 101 ? -1 : 1;
    head_classify(&u->head);
    if (u->replay != NULL) {
        evbuffer_free(u->replay);   /* an answer came: no retry from here on */
        u->replay = NULL;
    }
    int no_body = u->ops->on_head(u->owner, u);
    if (u->closed)
        return HPE_USER;
    if (no_body || u->status == 204 || u->status == 304) {
        u->no_body = true;
        /* Headers that announce a body nobody reads: the bytes, if the
         * server sends them, must not be taken for the next response. */
        if ((hp->flags & F_CHUNKED) || ((hp->flags & F_CONTENT_LENGTH) &&
                                        hp->content_length > 0))
            u->keepalive_denied = true;
        return 1;
    }
    return 0;
}

static int
on_body(llhttp_t *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    u->ops->on_body(u->owner, u, at, len);
    return u->closed ? HPE_USER : 0;
}

static int
on_message_complete(llhttp_t *hp)
{
    struct upconn *u = hp->data;
    if (skip_message(u))
        return 0;                   /* the real response follows */
    u->keepalive = llhttp_should_keep_alive(hp) && !u->keepalive_denied;
    u->response_done = true;
    return HPE_PAUSED;
}

static void
init_settings(void)
{
    if (resp_settings.on_message_begin != NULL)
        return;
    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = on_message_begin;
    resp_settings.on_status = on_status;
    resp_settings.on_header_field = on_header_field;
    resp_settings.on_header_value = on_header_value;
    resp_settings.on_headers_complete = on_headers_complete;
    resp_settings.on_body = on_body;
    resp_settings.on_message_complete = on_message_complete;
}

/* The exchange failed: tell the owner once. */
static void
owner_failed(struct upconn *u, enum up_fail why)
{
    if (u->busy && !u->closed)
        u->ops->on_failed(u->owner, u, why, !u->got_bytes);
}

/* Run the parser over buffered input; hand a finished response back. */
static void
up_parse(struct upconn *u, bool eof)
{
    struct evbuffer *in = bufferevent_get_input(u->bev);
    bool peer_closed = eof;

    while (!u->closed && u->busy && !u->paused && !u->response_done) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
            if (!eof)
                return;
            eof = false;
            /* A response delimited by the close ends here. */
            if (u->got_bytes)
                llhttp_finish(&u->parser);
            if (u->closed)
                return;
            if (!u->response_done) {
                owner_failed(u, UPF_CLOSED);
                return;
            }
            break;
        }
        enum llhttp_errno e = llhttp_execute(&u->parser, v.iov_base, v.iov_len);
        if (u->closed)
            return;
        size_t n = v.iov_len;
        if (e == HPE_PAUSED) {
            n = (size_t)(llhttp_get_error_pos(&u->parser) - (const char *)v.iov_base);
            llhttp_resume(&u->parser);
        } else if (e != HPE_OK) {
            owner_failed(u, UPF_INVALID);
            return;
        }
        evbuffer_drain(in, n);
    }
    if (u->response_done && !u->closed && u->busy) {
        /* Bytes after a complete response mean a confused server. */
        bool reusable = u->keepalive && !peer_closed && evbuffer_get_length(in) == 0;
        u->ops->on_done(u->owner, u, reusable);
    }
}

static void
up_event(struct bufferevent *bev, short events, void *arg);

static void
up_raw_read(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *u = arg;
    if (what & EV_TIMEOUT) {        /* idle too long in the pool */
        if (!u->busy)               /* never under a request that took it */
            h1_close(u);
        return;
    }
    int n = gw_read(u->bev);
    if (n > 0) {
        if (!u->busy) {             /* idle: the server closed or misbehaved */
            h1_close(u);
            return;
        }
        u->got_bytes = true;
        up_parse(u, false);
        if (u->busy && !u->closed && !u->response_done)
            u->ops->on_progress(u->owner, u);
    } else if (n == GW_READ_EOF)
        up_event(u->bev, BEV_EVENT_EOF | BEV_EVENT_READING, u);
    else if (n == GW_READ_ERROR)
        up_event(u->bev, BEV_EVENT_ERROR | BEV_EVENT_READING, u);
}

static void
up_write(struct bufferevent *bev, void *arg)
{
    struct upconn *u = arg;
    bufferevent_disable(bev, EV_WRITE);     /* drained: back to direct writes */
    if (u->busy)
        u->ops->on_drained(u->owner, u);
}

static void
up_event(struct bufferevent *bev, short events, void *arg)
{
    struct upconn *u = arg;

    if (events & BEV_EVENT_CONNECTED) {
        int one = 1;
        u->connected = true;
        if (!u->pool->is_unix)
            setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        gw_flush(bev, true);
        return;
    }
    if (!u->busy) {
        h1_close(u);
        return;
    }
    if (!u->connected) {
        owner_failed(u, UPF_CONNECT);
        return;
    }
    if ((events & BEV_EVENT_EOF) && !(events & BEV_EVENT_ERROR)) {
        up_parse(u, true);
        return;
    }
    owner_failed(u, UPF_RESET);
}

/* ---- connections ------------------------------------------------------ */

static struct upconn *
h1_acquire(struct worker *w, struct upool *p, const struct upconn_ops *ops,
               void *owner, bool fresh)
{
    struct upconn *u;

    init_settings();
    if (!fresh && !TAILQ_EMPTY(&p->idle)) {
        u = TAILQ_FIRST(&p->idle);
        TAILQ_REMOVE(&p->idle, u, link);
        u->in_idle = false;
        p->n_idle--;
        u->reused = true;
        /* No idle timeout while in use. event_add() with no timeout would
         * keep the pending one (libevent documents it) and the pool's timer
         * would close the connection under the request that took it (issue
         * 17 finding 1). event_remove_timer() drops only the timeout: the
         * read event stays registered, with no epoll_ctl() call. */
        event_remove_timer(u->rev);
    } else {
        u = calloc(1, sizeof(*u));
        if (u == NULL)
            return NULL;
        u->w = w;
        u->pool = p;
        u->cls = &upstream_http1;
        u->bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (u->bev == NULL) {
            free(u);
            return NULL;
        }
        bufferevent_setcb(u->bev, NULL, up_write, up_event, u);
        /* Reads go through our own event and gw_read(), writes through
         * gw_flush(); the bufferevent reports connect and write errors. */
        bufferevent_disable(u->bev, EV_READ | EV_WRITE);
        if (bufferevent_socket_connect(u->bev, (struct sockaddr *)&p->sa,
                                       (int)p->salen) < 0) {
            bufferevent_free(u->bev);
            free(u);
            return NULL;
        }
        u->rev = event_new(w->base, bufferevent_getfd(u->bev), EV_READ | EV_PERSIST,
                           up_raw_read, u);
        if (u->rev == NULL) {
            bufferevent_free(u->bev);
            free(u);
            return NULL;
        }
        event_add(u->rev, NULL);
        __atomic_add_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
        llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
        u->parser.data = u;
    }
    llhttp_reset(&u->parser);
    u->status = 0;
    u->response_done = false;
    u->keepalive = false;
    u->keepalive_denied = false;
    u->no_body = false;
    u->paused = false;
    u->got_bytes = false;
    u->ops = ops;
    u->owner = owner;
    u->busy = true;
    u->framing = FRAME_NONE;
    if (u->replay != NULL) {
        evbuffer_free(u->replay);
        u->replay = NULL;
    }
    if (u->reused && ops->retries)
        u->replay = evbuffer_new();
    p->active++;
    return u;
}

static void
unbusy(struct upconn *u)
{
    if (u->busy) {
        u->pool->active--;
        u->busy = false;
    }
    u->ops = NULL;
    u->owner = NULL;
}

static void
h1_release(struct upconn *u, bool reusable)
{
    struct upool *p = u->pool;

    unbusy(u);
    if (!reusable || u->w->draining || p->n_idle >= MAX_IDLE_PER_POOL ||
        evbuffer_get_length(bufferevent_get_output(u->bev)) > 0 ||
        evbuffer_get_length(bufferevent_get_input(u->bev)) > 0) {
        h1_close(u);
        return;
    }
    int ms = u->w->cfg->limits.upstream_idle_timeout_ms;
    struct timeval idle = {ms / 1000, (ms % 1000) * 1000};
    event_add(u->rev, &idle);
    u->paused = false;
    TAILQ_INSERT_HEAD(&p->idle, u, link);
    u->in_idle = true;
    p->n_idle++;
}

static void
h1_close(struct upconn *u)
{
    struct worker *w = u->w;

    if (u->closed)
        return;
    u->closed = true;
    unbusy(u);
    if (u->in_idle) {
        TAILQ_REMOVE(&u->pool->idle, u, link);
        u->pool->n_idle--;
        u->in_idle = false;
    }
    event_free(u->rev);
    u->rev = NULL;
    __atomic_sub_fetch(&gw_open_fds, 1, __ATOMIC_RELAXED);
    bufferevent_setcb(u->bev, NULL, NULL, NULL, NULL);
    bufferevent_free(u->bev);
    u->bev = NULL;
    u->gc_next = w->gc_upconns;
    w->gc_upconns = u;
    event_active(w->upstream_gc_ev, EV_TIMEOUT, 1);
}

static void
h1_pause(struct upconn *u)
{
    if (!u->paused && !u->closed) {
        u->paused = true;
        event_del(u->rev);
    }
}

static void
h1_resume(struct upconn *u)
{
    if (u->paused && !u->closed) {
        u->paused = false;
        event_add(u->rev, NULL);
        up_parse(u, false);
    }
}

static void
h1_flush(struct upconn *u)
{
    if (!u->closed)
        gw_flush(u->bev, u->connected);
}

/* What the connection's owner sends: the head composed here, the body
 * framed as the head announced. A connection that was reused keeps what it
 * was sent (up to GW_REPLAY_MAX) until an answer begins, for one retry on a
 * new connection if the server closed it first (the keep-alive race). */
static void
h1_send(struct upconn *u, const void *data, size_t len)
{
    evbuffer_add(bufferevent_get_output(u->bev), data, len);
    if (u->replay != NULL) {
        if (evbuffer_get_length(u->replay) + len <= GW_REPLAY_MAX)
            evbuffer_add(u->replay, data, len);
        else {
            evbuffer_free(u->replay);   /* too big to retry */
            u->replay = NULL;
        }
    }
}

static void
h1_send_head(struct upconn *u, const struct upstream_request *r)
{
    struct evbuffer *tmp = u->w->scratch;
    u->framing = r->framing;
    compose_request_head(tmp, r);
    size_t n = evbuffer_get_length(tmp);
    h1_send(u, evbuffer_pullup(tmp, (ev_ssize_t)n), n);
    evbuffer_drain(tmp, n);
}

static void
h1_send_body(struct upconn *u, const char *at, size_t len)
{
    if (u->framing == FRAME_CHUNKED) {
        char size[24];
        struct evbuffer *tmp = u->w->scratch;
        buf_chunk_size(tmp, len);
        size_t n = evbuffer_remove(tmp, size, sizeof(size));
        h1_send(u, size, n);
        h1_send(u, at, len);
        h1_send(u, "\r\n", 2);
    } else
        h1_send(u, at, len);
}

static void
h1_send_end(struct upconn *u)
{
    if (u->framing == FRAME_CHUNKED)
        h1_send(u, "0\r\n\r\n", 5);
}

/* what is moved (emptied). */
static void
h1_send_again(struct upconn *u, struct evbuffer *what)
{
    size_t n = evbuffer_get_length(what);
    if (u->replay != NULL)
        h1_send(u, evbuffer_pullup(what, (ev_ssize_t)n), n);
    else
        evbuffer_add_buffer(bufferevent_get_output(u->bev), what);
    evbuffer_drain(what, evbuffer_get_length(what));
}

static struct evbuffer *
h1_take_resend(struct upconn *u)
{
    struct evbuffer *b = NULL;
    if (!u->connected) {            /* nothing reached the server */
        if ((b = evbuffer_new()) != NULL)
            evbuffer_add_buffer(b, bufferevent_get_output(u->bev));
    } else if (u->reused) {
        b = u->replay;
        u->replay = NULL;
    }
    return b;
}

static size_t
h1_backlog(const struct upconn *u)
{
    return evbuffer_get_length(bufferevent_get_output(u->bev));
}

const struct upstream_class upstream_http1 = {
    .name = "http1",
    .acquire = h1_acquire, .release = h1_release, .close = h1_close,
    .pause = h1_pause, .resume = h1_resume, .flush = h1_flush,
    .send_head = h1_send_head, .send_body = h1_send_body, .send_end = h1_send_end,
    .send_again = h1_send_again, .take_resend = h1_take_resend, .backlog = h1_backlog,
};

/* ---- deferred frees ------------------------------------------------------ */

/* Connections are freed from their own event, never inside a callback of
 * theirs still on the stack. */
void
upstream_gc(struct worker *w)
{
    while (w->gc_upconns != NULL) {
        struct upconn *u = w->gc_upconns;
        w->gc_upconns = u->gc_next;
        if (u->cls == &upstream_http2 && upstream_h2_keep(w, u))
            continue;
        if (u->replay != NULL)
            evbuffer_free(u->replay);
        head_free(&u->head);
        head_free(&u->trailers);
        free(u);
    }
}

static void
gc_cb(evutil_socket_t fd, short what, void *arg)
{
    upstream_gc(arg);
}

void
upstream_worker_init(struct worker *w)
{
    w->upstream_gc_ev = event_new(w->base, -1, 0, gc_cb, w);
}
