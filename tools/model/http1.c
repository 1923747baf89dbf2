/*
 * The default server: libevent's evhttp answers HTTP/1.x with the JSON
 * answer (answer.c) and the per-request test controls (X-Test-Delay-Ms,
 * X-Test-Status, X-Test-Response-Bytes, X-Test-Close), and closes idle
 * keep-alive connections at random with --idle-close-max-ms.
 *
 * Every connection's bufferevent is a filter over the socket's: it looks
 * at the first bytes, and a connection that opens with the HTTP/2 client
 * preface (prior knowledge) is served by http2.c from then on, its bytes
 * never reaching evhttp, which only keeps holding the socket until that
 * connection ends. Other connections pass through to evhttp unchanged.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
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
 * The sniffing filter. Its context lives as long as the filter
 * bufferevent (freed by libevent through sniff_free); an HTTP/2
 * connection's output goes straight to the socket's bufferevent.
 */
enum sniff_state { SNIFF_START, SNIFF_HTTP1, SNIFF_HTTP2 };

struct sniff {
    enum sniff_state state;
    struct bufferevent *filter, *sock;
    struct h2_conn *h2;
    struct event *linger;       /* waits for the output to go before the end */
    struct event *kick;         /* moves evhttp's output on (sniff_out_added) */
    struct evbuffer_cb_entry *out_cb;
    int linger_left;
    int closing;                /* the end was asked for: evhttp frees us */
};

static void
sniff_end(struct sniff *s)
{
    /* evhttp frees the connection on EOF; deferred, so the HTTP/2 code
     * that asked is off the stack by then. */
    bufferevent_trigger_event(s->filter, BEV_EVENT_EOF | BEV_EVENT_READING,
                              BEV_TRIG_DEFER_CALLBACKS);
}

/* End once the output went (a GOAWAY, the last answers), or after 2 s. */
static void
sniff_linger(evutil_socket_t fd, short what, void *arg)
{
    struct sniff *s = arg;
    struct timeval tv = {0, 5000};

    if (evbuffer_get_length(bufferevent_get_output(s->sock)) == 0 || s->linger_left-- <= 0)
        sniff_end(s);
    else
        evtimer_add(s->linger, &tv);
}

static int
sniff_write(void *arg, const uint8_t *data, size_t len)
{
    struct sniff *s = arg;

    if (s->closing)
        return -1;
    return evbuffer_add(bufferevent_get_output(s->sock), data, len);
}

static void
sniff_close(void *arg)
{
    struct sniff *s = arg;

    if (s->closing)
        return;
    s->closing = 1;
    s->linger_left = 400;
    if (s->linger == NULL || evbuffer_get_length(bufferevent_get_output(s->sock)) == 0)
        sniff_end(s);
    else
        sniff_linger(-1, 0, s);
}

static const struct h2_io sniff_h2_io = {sniff_write, sniff_close};

/*
 * libevent 2.1's filter moves output to the socket when bytes are added
 * while writing is enabled, or when the socket's write callback runs.
 * evhttp adds a response first and enables writing after: unless the
 * socket's first write event happened to be still pending, the response
 * would wait for ever. So added output gets a flush from the loop, once
 * evhttp has enabled writing.
 */
static void
sniff_kick(evutil_socket_t fd, short what, void *arg)
{
    struct sniff *s = arg;

    bufferevent_flush(s->filter, EV_WRITE, BEV_NORMAL);
}

static void
sniff_out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct sniff *s = arg;

    if (info->n_added > 0 && evbuffer_get_length(buf) > 0)
        event_active(s->kick, EV_TIMEOUT, 1);
}

static enum bufferevent_filter_result
sniff_in(struct evbuffer *src, struct evbuffer *dst, ev_ssize_t limit,
         enum bufferevent_flush_mode mode, void *arg)
{
    struct sniff *s = arg;

    if (s->state == SNIFF_START) {
        size_t len = evbuffer_get_length(src);
        unsigned char head[H2_PREFACE_LEN];
        size_t n = len < sizeof(head) ? len : sizeof(head);
        evbuffer_copyout(src, head, n);
        int m = h2_preface_match(head, n);
        if (m == 0)
            return BEV_NEED_MORE;
        if (m < 0) {
            s->state = SNIFF_HTTP1;
        } else {
            s->state = SNIFF_HTTP2;
            /* evhttp's idle timeout must not end a long HTTP/2 connection */
            bufferevent_set_timeouts(s->filter, NULL, NULL);
            s->h2 = h2_conn_new(&sniff_h2_io, s);
            s->linger = evtimer_new(base, sniff_linger, s);
            if (s->h2 == NULL) {
                evbuffer_drain(src, evbuffer_get_length(src));
                sniff_close(s);
                return BEV_NEED_MORE;
            }
        }
    }
    if (s->state == SNIFF_HTTP1) {
        evbuffer_remove_buffer(src, dst, limit < 0 ? evbuffer_get_length(src) : (size_t)limit);
        return BEV_OK;
    }
    while (evbuffer_get_length(src) > 0 && !s->closing) {
        size_t n = evbuffer_get_contiguous_space(src);
        if (n == 0)
            n = evbuffer_get_length(src);
        unsigned char *p = evbuffer_pullup(src, (ev_ssize_t)n);
        if (h2_conn_feed(s->h2, p, n) < 0) {
            evbuffer_drain(src, evbuffer_get_length(src));
            sniff_close(s);
            break;
        }
        evbuffer_drain(src, n);
    }
    evbuffer_drain(src, evbuffer_get_length(src));
    return BEV_NEED_MORE;       /* nothing for evhttp */
}

static void
sniff_free(void *arg)
{
    struct sniff *s = arg;

    if (s->h2 != NULL)
        h2_conn_free(s->h2);
    if (s->linger != NULL)
        event_free(s->linger);
    if (s->out_cb != NULL)
        evbuffer_remove_cb_entry(bufferevent_get_output(s->filter), s->out_cb);
    if (s->kick != NULL)
        event_free(s->kick);
    free(s);
}

static struct bufferevent *
on_connection(struct event_base *b, void *arg)
{
    struct sniff *s = calloc(1, sizeof(*s));

    n_conns++;
    if (s == NULL)
        return NULL;
    s->sock = bufferevent_socket_new(b, -1, BEV_OPT_CLOSE_ON_FREE);
    if (s->sock == NULL)
        goto fail;
    s->filter = bufferevent_filter_new(s->sock, sniff_in, NULL, BEV_OPT_CLOSE_ON_FREE,
                                       sniff_free, s);
    if (s->filter == NULL)
        goto fail_sock;
    s->kick = event_new(b, -1, 0, sniff_kick, s);
    s->out_cb = evbuffer_add_cb(bufferevent_get_output(s->filter), sniff_out_added, s);
    if (s->kick == NULL || s->out_cb == NULL) {
        bufferevent_free(s->filter);    /* frees s through sniff_free */
        return NULL;
    }
    return s->filter;
fail_sock:
    bufferevent_free(s->sock);
fail:
    free(s);
    return NULL;
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
