/*
 * Upstream pools and connections. Each worker keeps one pool per upstream
 * address (surviving config generations), with idle keep-alive connections
 * reused across requests. A connection belongs to one session while its
 * request runs; responses are parsed with http_parser and handed to the
 * session piece by piece, so bodies stream.
 */
#include "gateway/gateway.h"

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
#define IDLE_TIMEOUT_S 30
#define MAX_RESPONSE_HEAD (64 * 1024)

static http_parser_settings resp_settings;

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
upool_get(struct worker *w, const struct cfg_upstream *u)
{
    for (struct upool *p = w->pools; p != NULL; p = p->next)
        if (strcmp(p->address, u->address) == 0)
            return p->resolved ? p : NULL;
    struct upool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->address = strdup(u->address);
    p->shared = route_shared_get(u->address);
    if (p->shared == NULL)          /* the main thread adds every address first */
        abort();
    TAILQ_INIT(&p->idle);
    p->resolved = resolve(p, u) == 0;
    if (!p->resolved)
        log_event(LOG_ERROR, "upstream_unresolved", ",\"upstream\":\"%s\"", u->address);
    p->next = w->pools;
    w->pools = p;
    return p->resolved ? p : NULL;
}

void
upool_free_all(struct worker *w)
{
    struct upool *p, *next;
    for (p = w->pools; p != NULL; p = next) {
        next = p->next;
        while (!TAILQ_EMPTY(&p->idle))
            upconn_close(TAILQ_FIRST(&p->idle));
        free(p->address);
        free(p);
    }
    w->pools = NULL;
}

/* ---- response parsing ------------------------------------------------- */

static int
on_message_begin(http_parser *hp)
{
    struct upconn *u = hp->data;
    head_reset(&u->head);
    return 0;
}

static int
on_status(http_parser *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_url(&u->head, at, len) < 0 || u->head.len > MAX_RESPONSE_HEAD ? -1 : 0;
}

static int
on_header_field(http_parser *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_field(&u->head, at, len) < 0 || u->head.len > MAX_RESPONSE_HEAD ? -1 : 0;
}

static int
on_header_value(http_parser *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    return head_value(&u->head, at, len) < 0 || u->head.len > MAX_RESPONSE_HEAD ? -1 : 0;
}

static int
on_headers_complete(http_parser *hp)
{
    struct upconn *u = hp->data;

    if (hp->status_code / 100 == 1) {
        if (hp->status_code == 101)
            return -1;              /* no upgrades through a scoring URL */
        u->skip_message = true;     /* 100 Continue and friends: dropped */
        return 0;
    }
    if (u->sh != NULL)
        return shadow_head(u->sh, u);
    if (u->s == NULL)
        return -1;
    session_upstream_head(u->s, u);
    return u->s->req.head_method ? 1 : 0;
}

static int
on_body(http_parser *hp, const char *at, size_t len)
{
    struct upconn *u = hp->data;
    if (u->skip_message || u->s == NULL)
        return 0;                   /* a shadow's answer is read and dropped */
    session_upstream_body(u->s, at, len);
    return 0;
}

static int
on_message_complete(http_parser *hp)
{
    struct upconn *u = hp->data;
    if (u->skip_message) {
        u->skip_message = false;
        return 0;
    }
    u->keepalive = http_should_keep_alive(hp);
    u->response_done = true;
    http_parser_pause(hp, 1);
    return 0;
}

static void
init_settings(void)
{
    if (resp_settings.on_message_begin != NULL)
        return;
    http_parser_settings_init(&resp_settings);
    resp_settings.on_message_begin = on_message_begin;
    resp_settings.on_status = on_status;
    resp_settings.on_header_field = on_header_field;
    resp_settings.on_header_value = on_header_value;
    resp_settings.on_headers_complete = on_headers_complete;
    resp_settings.on_body = on_body;
    resp_settings.on_message_complete = on_message_complete;
}

/* The request on u failed: tell whoever owns it. */
static void
owner_failed(struct upconn *u, const char *why, bool conn_error)
{
    if (u->sh != NULL)
        shadow_failed(u->sh, u, why, conn_error);
    else if (u->s != NULL)
        session_upstream_failed(u->s, u, why, conn_error);
}

/* Run the parser over buffered input; hand a finished response back. */
static void
up_parse(struct upconn *u, bool eof)
{
    struct evbuffer *in = bufferevent_get_input(u->bev);

    while (!u->closed && !u->paused && !u->response_done) {
        struct evbuffer_iovec v;
        size_t n;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
            if (!eof)
                return;
            http_parser_execute(&u->parser, &resp_settings, NULL, 0);
            eof = false;
            if (u->closed)
                return;
            if (!u->response_done) {
                owner_failed(u, u->parser.status_code ?
                    "the model server closed the connection mid-response" :
                    "the model server closed the connection without answering", true);
                return;
            }
            break;
        }
        n = http_parser_execute(&u->parser, &resp_settings, v.iov_base, v.iov_len);
        if (u->closed)
            return;
        evbuffer_drain(in, n);
        enum http_errno e = HTTP_PARSER_ERRNO(&u->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            owner_failed(u, "invalid response from the model server", false);
            return;
        }
    }
    if (u->response_done && !u->closed && u->busy) {
        /* Bytes after a complete response mean a confused server. */
        bool reusable = u->keepalive && !eof && evbuffer_get_length(in) == 0;
        if (u->sh != NULL)
            shadow_done(u->sh, u, reusable);
        else
            session_upstream_done(u->s, u, reusable);
    }
}

static void
up_read(struct bufferevent *bev, void *arg)
{
    struct upconn *u = arg;
    if (!u->busy) {                 /* idle: the server closed or misbehaved */
        upconn_close(u);
        return;
    }
    struct session *s = u->s;       /* stays valid: sessions are freed by gc */
    up_parse(u, false);
    if (s != NULL)
        session_flush(s);
}

static void up_event(struct bufferevent *bev, short events, void *arg);

static void
up_raw_read(evutil_socket_t fd, short what, void *arg)
{
    struct upconn *u = arg;
    if (what & EV_TIMEOUT) {        /* idle too long in the pool */
        upconn_close(u);
        return;
    }
    int n = gw_read(u->bev);
    if (n > 0)
        up_read(u->bev, u);
    else if (n == GW_READ_EOF)
        up_event(u->bev, BEV_EVENT_EOF | BEV_EVENT_READING, u);
    else if (n == GW_READ_ERROR)
        up_event(u->bev, BEV_EVENT_ERROR | BEV_EVENT_READING, u);
}

static void
up_write(struct bufferevent *bev, void *arg)
{
    struct upconn *u = arg;
    bufferevent_disable(bev, EV_WRITE);     /* drained: back to direct writes */
    if (u->s != NULL)
        session_upstream_drained(u->s);
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
        upconn_close(u);
        return;
    }
    if (!u->connected) {
        owner_failed(u, "cannot connect to the model server", true);
        return;
    }
    if ((events & BEV_EVENT_EOF) && !(events & BEV_EVENT_ERROR)) {
        up_parse(u, true);
        return;
    }
    owner_failed(u, u->parser.status_code ?
        "the model server reset the connection mid-response" :
        "the model server reset the connection", true);
}

/* ---- connections ------------------------------------------------------ */

struct upconn *
upconn_acquire(struct worker *w, struct upool *p, struct session *s)
{
    struct upconn *u;

    init_settings();
    if (!TAILQ_EMPTY(&p->idle)) {
        u = TAILQ_FIRST(&p->idle);
        TAILQ_REMOVE(&p->idle, u, link);
        u->in_idle = false;
        p->n_idle--;
        u->reused = true;
        event_add(u->rev, NULL);    /* no idle timeout while in use */
    } else {
        u = calloc(1, sizeof(*u));
        if (u == NULL)
            return NULL;
        u->w = w;
        u->pool = p;
        u->bev = bufferevent_socket_new(w->base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (u->bev == NULL) {
            free(u);
            return NULL;
        }
        bufferevent_setcb(u->bev, up_read, up_write, up_event, u);
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
        event_add(u->rev, NULL);
    }
    http_parser_init(&u->parser, HTTP_RESPONSE);
    u->parser.data = u;
    u->response_done = false;
    u->skip_message = false;
    u->keepalive = false;
    u->paused = false;
    u->s = s;
    u->sh = NULL;
    u->busy = true;
    p->active++;
    return u;
}

void
upconn_release(struct upconn *u, bool reusable)
{
    struct upool *p = u->pool;

    if (u->busy) {
        p->active--;
        u->busy = false;
    }
    u->s = NULL;
    u->sh = NULL;
    if (!reusable || u->w->draining || p->n_idle >= MAX_IDLE_PER_POOL ||
        evbuffer_get_length(bufferevent_get_output(u->bev)) > 0) {
        upconn_close(u);
        return;
    }
    struct timeval idle = {IDLE_TIMEOUT_S, 0};
    event_add(u->rev, &idle);
    u->paused = false;
    TAILQ_INSERT_HEAD(&p->idle, u, link);
    u->in_idle = true;
    p->n_idle++;
}

void
upconn_close(struct upconn *u)
{
    struct worker *w = u->w;

    if (u->closed)
        return;
    u->closed = true;
    if (u->busy) {
        u->pool->active--;
        u->busy = false;
    }
    u->s = NULL;
    u->sh = NULL;
    if (u->in_idle) {
        TAILQ_REMOVE(&u->pool->idle, u, link);
        u->pool->n_idle--;
        u->in_idle = false;
    }
    event_free(u->rev);
    u->rev = NULL;
    bufferevent_setcb(u->bev, NULL, NULL, NULL, NULL);
    bufferevent_free(u->bev);
    u->bev = NULL;
    u->gc_next = w->gc_upconns;
    w->gc_upconns = u;
    worker_gc(w);
}

void
upconn_free(struct upconn *u)
{
    head_free(&u->head);
    free(u);
}

void
upconn_pause(struct upconn *u)
{
    if (!u->paused) {
        u->paused = true;
        event_del(u->rev);
    }
}

void
upconn_resume(struct upconn *u)
{
    if (u->paused && !u->closed) {
        u->paused = false;
        event_add(u->rev, NULL);
        up_parse(u, false);
    }
}
