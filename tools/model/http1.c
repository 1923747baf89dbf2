/*
 * The default server: libevent's evhttp answers HTTP/1.x with the JSON
 * answer (answer.c) and the per-request test controls (X-Test-Delay-Ms,
 * X-Test-Status, X-Test-Response-Bytes, X-Test-Close), and closes idle
 * keep-alive connections at random with --idle-close-max-ms.
 *
 * A connection whose first bytes are the HTTP/2 client preface (prior
 * knowledge) is served by http2.c instead (see the sniffer below); other
 * connections are evhttp's, unchanged.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>

#include "model.h"

/*
 * Per-connection state, only kept with --idle-close-max-ms. evhttp has no
 * per-connection user data, so the states sit in a list looked up by
 * connection; tests open few connections.
 */
struct conn_state {
    LIST_ENTRY(conn_state) link;
    struct evhttp_connection *evcon;
    struct event *idle;
};
static LIST_HEAD(, conn_state) conn_states = LIST_HEAD_INITIALIZER(conn_states);

static void
conn_state_closed(struct evhttp_connection *evcon, void *arg)
{
    struct conn_state *st = arg;

    evhttp_connection_set_closecb(evcon, NULL, NULL);
    LIST_REMOVE(st, link);
    event_free(st->idle);
    free(st);
}

static void
conn_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    struct conn_state *st = arg;

    /* The close callback frees st and its timer, which libevent allows
     * from inside the timer's own (non-persistent) callback. */
    evhttp_connection_free(st->evcon);
}

static struct conn_state *
conn_state_get(struct evhttp_connection *evcon)
{
    struct conn_state *st;

    LIST_FOREACH(st, &conn_states, link)
        if (st->evcon == evcon)
            return st;
    if ((st = calloc(1, sizeof(*st))) == NULL)
        return NULL;
    if ((st->idle = evtimer_new(base, conn_idle_expired, st)) == NULL) {
        free(st);
        return NULL;
    }
    st->evcon = evcon;
    LIST_INSERT_HEAD(&conn_states, st, link);
    evhttp_connection_set_closecb(evcon, conn_state_closed, st);
    return st;
}

/* The response went out and the connection waits for the next request:
 * arm the random close. (If the connection is closing anyway, its close
 * callback runs next and drops the timer.) */
static void
request_completed(struct evhttp_request *req, void *arg)
{
    struct conn_state *st = arg;
    struct timeval tv = idle_close_delay();

    evtimer_add(st->idle, &tv);
}

struct pending {
    struct evhttp_request *req;
    struct event *ev;
    int status;
    long long resp_bytes;
};

static const char *
command_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_HEAD: return "HEAD";
    default: return "OTHER";
    }
}

static void
answer(struct pending *p)
{
    struct evhttp_request *req = p->req;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    struct evbuffer *b = evbuffer_new();

    if (p->resp_bytes > 0) {
        evhttp_add_header(out, "Content-Type", "application/octet-stream");
        evhttp_send_reply_start(req, p->status, NULL);
        char chunk[65536];
        memset(chunk, 'x', sizeof(chunk));
        for (long long left = p->resp_bytes; left > 0;) {
            size_t n = left > (long long)sizeof(chunk) ? sizeof(chunk) : (size_t)left;
            evbuffer_add(b, chunk, n);
            evhttp_send_reply_chunk(req, b);
            left -= (long long)n;
        }
        evhttp_send_reply_end(req);
        evbuffer_free(b);
        return;
    }
    struct kv hdrs[128];
    size_t n = 0;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
        if (n == sizeof(hdrs) / sizeof(hdrs[0]))
            break;
        hdrs[n].name = kv->key;
        hdrs[n++].value = kv->value;
    }
    answer_json(b, p->status, command_name(evhttp_request_get_command(req)),
                evhttp_request_get_uri(req), evbuffer_get_length(in), fnv1a_evbuffer(in),
                hdrs, n);
    evhttp_add_header(out, "Content-Type", "application/json");
    evhttp_add_header(out, "X-Model-Version", opt.name);
    evhttp_send_reply(req, p->status, NULL, b);
    evbuffer_free(b);
}

static void
delayed(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    answer(p);
    event_free(p->ev);
    free(p);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *v;

    if (strcmp(evhttp_request_get_uri(req), "/__stats") == 0) {
        struct evbuffer *b = evbuffer_new();
        stats_json(b);
        evhttp_send_reply(req, 200, NULL, b);
        evbuffer_free(b);
        return;
    }
    n_reqs++;
    if ((v = evhttp_find_header(h, "X-Test-Close")) != NULL) {
        evhttp_connection_free(evhttp_request_get_connection(req));
        return;
    }
    if (opt.idle_close_max_ms > 0) {
        struct conn_state *st = conn_state_get(evhttp_request_get_connection(req));
        if (st != NULL) {
            event_del(st->idle);
            evhttp_request_set_on_complete_cb(req, request_completed, st);
        }
    }
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        evhttp_send_error(req, 503, "out of memory");
        return;
    }
    p->req = req;
    p->status = 200;
    if ((v = evhttp_find_header(h, "X-Test-Status")) != NULL)
        p->status = atoi(v);
    else
        p->status = pick_status();
    if ((v = evhttp_find_header(h, "X-Test-Response-Bytes")) != NULL)
        p->resp_bytes = atoll(v);
    int delay = pick_delay_ms();
    if ((v = evhttp_find_header(h, "X-Test-Delay-Ms")) != NULL)
        delay = atoi(v);
    if (delay <= 0) {
        answer(p);
        free(p);
        return;
    }
    if ((p->ev = evtimer_new(base, delayed, p)) == NULL) {
        answer(p);
        free(p);
        return;
    }
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(p->ev, &tv);
}

/*
 * The HTTP/2 sniffer. Each connection's socket bufferevent gets a callback
 * on its input buffer, which libevent runs when bytes arrive and before
 * evhttp's read callback. If they start with "PRI " (the HTTP/2 preface;
 * no HTTP/1.1 method), the bufferevent's callbacks become ours and the
 * connection is served by http2.c; evhttp's connection object keeps
 * holding the socket, never called again, until sniff_end frees it.
 * Other connections lose the callback and stay evhttp's, untouched.
 */
struct sniff {
    struct bufferevent *bev;
    struct evhttp_connection *evcon;
    struct h2_conn *h2;
    struct event *end;          /* ends the connection from the loop */
    int closing;                /* the end was asked for */
};

static void
sniff_free(struct sniff *s)
{
    if (s->h2 != NULL)
        h2_conn_free(s->h2);
    if (s->end != NULL)
        event_free(s->end);
    free(s);
}

/* evhttp frees the connection: at sniff_end, or when the server ends. */
static void
sniff_evcon_closed(struct evhttp_connection *evcon, void *arg)
{
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    sniff_free(arg);
}

static void
sniff_end(evutil_socket_t fd, short what, void *arg)
{
    struct sniff *s = arg;

    evhttp_connection_free(s->evcon);   /* frees s through the close callback */
}

static int
sniff_write(void *arg, const uint8_t *data, size_t len)
{
    struct sniff *s = arg;

    if (s->closing)
        return -1;
    return bufferevent_write(s->bev, data, len);
}

/* End once the output went (a GOAWAY, the last answers): from the write
 * callback, or at once; a peer that takes nothing for 2 s is dropped. */
static void
sniff_close(void *arg)
{
    struct sniff *s = arg;
    struct timeval tv = {2, 0};

    if (s->closing)
        return;
    s->closing = 1;
    bufferevent_disable(s->bev, EV_READ);
    bufferevent_set_timeouts(s->bev, NULL, &tv);
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        event_active(s->end, EV_TIMEOUT, 1);
}

static const struct h2_io sniff_h2_io = {sniff_write, sniff_close};

static void
sniff_readcb(struct bufferevent *bev, void *arg)
{
    struct sniff *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    if (s->h2 == NULL) {                /* the preface is not whole yet */
        unsigned char head[H2_PREFACE_LEN];
        size_t n = evbuffer_get_length(in);
        evbuffer_copyout(in, head, n < sizeof(head) ? n : sizeof(head));
        int m = h2_preface_match(head, n < sizeof(head) ? n : sizeof(head));
        if (m == 0)
            return;
        if (m < 0 || (s->h2 = h2_conn_new(&sniff_h2_io, s)) == NULL) {
            evbuffer_drain(in, n);
            sniff_close(s);
            return;
        }
    }
    while (evbuffer_get_length(in) > 0 && !s->closing) {
        size_t n = evbuffer_get_contiguous_space(in);
        if (n == 0)
            n = evbuffer_get_length(in);
        if (h2_conn_feed(s->h2, evbuffer_pullup(in, (ev_ssize_t)n), n) < 0)
            sniff_close(s);
        evbuffer_drain(in, n);
    }
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void
sniff_writecb(struct bufferevent *bev, void *arg)
{
    struct sniff *s = arg;

    if (s->closing)                     /* the output went */
        event_active(s->end, EV_TIMEOUT, 1);
}

static void
sniff_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct sniff *s = arg;

    s->closing = 1;
    event_active(s->end, EV_TIMEOUT, 1);
}

/* The first bytes of a connection arrived: HTTP/2, or evhttp's. */
static void
sniff_first_bytes(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct bufferevent *bev = arg;
    unsigned char head[4];
    size_t n = evbuffer_get_length(in);
    struct sniff *s;

    if (info->n_added == 0)
        return;
    if (n < sizeof(head)) {
        evbuffer_copyout(in, head, n);
        if (h2_preface_match(head, n) == 0)
            return;                     /* "P", "PR", "PRI": wait */
    }
    evbuffer_remove_cb(in, sniff_first_bytes, bev);
    evbuffer_copyout(in, head, sizeof(head));
    if (n < sizeof(head) || h2_preface_match(head, sizeof(head)) < 0)
        return;                         /* HTTP/1.x: evhttp's alone */
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return;                         /* evhttp answers it 501 */
    s->bev = bev;
    if ((s->end = evtimer_new(base, sniff_end, s)) == NULL) {
        free(s);
        return;
    }
    /* evhttp set its callbacks with its connection as their argument */
    void *evcon;
    bufferevent_getcb(bev, NULL, NULL, NULL, &evcon);
    s->evcon = evcon;
    evhttp_connection_set_closecb(s->evcon, sniff_evcon_closed, s);
    bufferevent_setcb(bev, sniff_readcb, sniff_writecb, sniff_eventcb, s);
    bufferevent_set_timeouts(bev, NULL, NULL);      /* evhttp's idle timeout */
    /* small frames (WINDOW_UPDATE, SETTINGS ACK, short answers) go at once:
     * with Nagle's algorithm a flow-controlled answer waited for ACKs */
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    /* libevent runs sniff_readcb next, with these bytes */
}

static struct bufferevent *
on_connection(struct event_base *b, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(b, -1, BEV_OPT_CLOSE_ON_FREE);

    n_conns++;
    if (bev != NULL)                    /* without it, evhttp's alone */
        evbuffer_add_cb(bufferevent_get_input(bev), sniff_first_bytes, bev);
    return bev;
}

struct evhttp *
http1_new(int fd)
{
    struct evhttp *http = evhttp_new(base);

    if (http == NULL)
        return NULL;
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                               EVHTTP_REQ_HEAD | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                               EVHTTP_REQ_OPTIONS);
    evhttp_set_bevcb(http, on_connection, NULL);
    evhttp_set_gencb(http, on_request, NULL);
    evhttp_set_timeout(http, 120);
    if (evhttp_accept_socket(http, fd) < 0) {
        evhttp_free(http);
        return NULL;
    }
    return http;
}
