/*
 * A client connection and the requests on it.
 *
 * Requests are parsed with http_parser straight from the bufferevent's input
 * and streamed to the upstream as they arrive. One request is in progress at
 * a time: the parser is paused when a request ends and resumed once its
 * response is done, so pipelined requests are answered in order.
 *
 * Every end of a session goes through session_close(); the struct itself is
 * freed later by the worker's gc event, so code still on the stack may look
 * at s->closed after a call that could have closed it.
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define SCORE_PREFIX "/api/v1/service/"
#define SCORE_SUFFIX "/score"
#define LINGER_MS 2000

static http_parser_settings req_settings;

static void session_parse(struct session *s);
static void release_slot(struct session *s);
static void stop_waiting(struct session *s);
static void client_read(struct bufferevent *bev, void *arg);
static void client_event(struct bufferevent *bev, short events, void *arg);

static void client_write(struct bufferevent *bev, void *arg);
static void client_raw_read(evutil_socket_t fd, short what, void *arg);

/* Start or stop reading from the client. */
static void
client_reading(struct session *s, bool on)
{
    if (on)
        event_add(s->rev, NULL);
    else
        event_del(s->rev);
}

/* Send what is queued for the client, through its transport. */
static void
client_flush(struct session *s)
{
    if (s->tls) {
        if (tls_flush(s) < 0)
            session_close(s, "tls_write_failed");
    } else
        gw_flush(s->bev, true);
}

/* TLS: the socket takes data again (or the handshake can go on). */
static void
client_tls_writable(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (!s->tls_ready) {
        client_raw_read(fd, EV_READ, s);
        return;
    }
    if (tls_flush(s) < 0) {
        session_close(s, "tls_write_failed");
        return;
    }
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
        client_write(s->bev, s);
}

static void
client_raw_read(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    int n = s->tls ? tls_read(s) : gw_read(s->bev);
    if (n > 0)
        client_read(s->bev, s);
    else if (n == GW_READ_EOF)
        client_event(s->bev, BEV_EVENT_EOF | BEV_EVENT_READING, s);
    else if (n == GW_READ_ERROR)
        client_event(s->bev, BEV_EVENT_ERROR | BEV_EVENT_READING, s);
}
static void start_closing(struct session *s);

/* ---- helpers --------------------------------------------------------- */

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
    return bufferevent_get_output(s->bev);
}

static const struct cfg_version *
req_version(const struct session *s)
{
    if (s->req.ep == NULL || s->req.version < 0)
        return NULL;
    return &s->req.ep->versions[s->req.version];
}

static const char *
group_of(const struct cfg_version *v)
{
    return config_group_name(v->mirror > 0 ? CFG_GROUP_SHADOW : v->group);
}

static void
sluice_headers_for(struct session *s, struct evbuffer *out, const struct cfg_version *v,
                   const char *group)
{
    if (v != NULL) {
        BUF_LIT(out, "X-Sluice-Version: ");
        buf_str(out, v->name);
        BUF_LIT(out, "\r\nX-Sluice-Group: ");
        buf_str(out, group);
        BUF_LIT(out, "\r\n");
    }
    if (s->req.failover)
        BUF_LIT(out, "X-Sluice-Failover: true\r\n");
    BUF_LIT(out, "X-Request-Id: ");
    buf_str(out, s->req.id);
    BUF_LIT(out, "\r\n");
}

static void
sluice_headers(struct session *s, struct evbuffer *out)
{
    const struct cfg_version *v = req_version(s);
    sluice_headers_for(s, out, v, v ? group_of(v) : NULL);
}

/*
 * Answer with a JSON error (SPEC §3.6). With close, the connection ends
 * after the answer: used whenever the request's framing can no longer be
 * trusted or the rest of it will not be read.
 */
static void
send_error(struct session *s, int status, const char *code, const char *msg,
           bool close)
{
    if (s->req.fail_reason == NULL)
        s->req.fail_reason = code;
    if (s->up != NULL) {
        upconn_close(s->up);
        s->up = NULL;
    }
    evtimer_del(s->up_timer);
    if (s->req.response_started) {
        /* Too late for a status: the client sees the connection end. */
        session_close(s, code);
        return;
    }
    struct evbuffer *out = client_out(s);
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    json_escape_add(body, msg, strlen(msg));
    BUF_LIT(body, "\"}}\n");
    size_t blen = evbuffer_get_length(body);

    if (s->w->draining || (s->req.expect_continue && !s->req.complete))
        close = true;
    size_t before = evbuffer_get_length(out);
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n", status,
                        http_status_str((enum http_status)status), blen);
    sluice_headers(s, out);
    if (status == 401)
        evbuffer_add_printf(out, "WWW-Authenticate: Bearer\r\n");
    if (status == 503)
        evbuffer_add_printf(out, "Retry-After: 1\r\n");
    if (close || !s->keep_alive)
        evbuffer_add_printf(out, "Connection: close\r\n");
    else if (s->parser.http_minor == 0)
        evbuffer_add_printf(out, "Connection: keep-alive\r\n");
    BUF_LIT(out, "\r\n");
    evbuffer_add_buffer(out, body);
    evbuffer_free(body);
    s->req.bytes_out += evbuffer_get_length(out) - before;
    s->req.status = status;
    s->req.response_started = true;
    s->req.response_done = true;
    s->req.response_close = close || !s->keep_alive;
    s->req.discard = true;
    if (close)
        s->req.complete = true;     /* nothing more will be read */
}

/* ---- request lifecycle ------------------------------------------------- */

static void
new_request_id(struct session *s)
{
    int i = s->head.first[HC_REQUEST_ID];
    if (i >= 0) {
        uint32_t n = s->head.h[i].val_len;
        const char *v = HD_VAL(&s->head, i);
        bool ok = n > 0 && n < sizeof(s->req.id);
        for (uint32_t k = 0; ok && k < n; k++)
            if (v[k] <= 0x20 || v[k] >= 0x7f || v[k] == '"' || v[k] == '\\')
                ok = false;
        if (ok) {
            memcpy(s->req.id, v, n);
            s->req.id[n] = '\0';
            return;
        }
    }
    static const char hex[] = "0123456789abcdef";
    struct worker *w = s->w;
    uint64_t parts[2] = {w->id_prefix, ++w->req_seq};
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 16; k++)
            s->req.id[p * 16 + k] = hex[(parts[p] >> (60 - 4 * k)) & 15];
    s->req.id[32] = '\0';
}

/* The request and its response are both done: log it and get ready for the
 * next one, or close. */
static void
end_request(struct session *s)
{
    struct worker *w = s->w;

    worker_request_done(w, s);
    if (s->up != NULL) {
        upconn_close(s->up);
        s->up = NULL;
    }
    evtimer_del(s->up_timer);
    evtimer_del(s->timer);
    release_slot(s);
    config_drop(s->req.cfg);
    bool close = s->req.response_close || !s->keep_alive || w->draining;
    memset(&s->req, 0, sizeof(s->req));
    s->req.version = -1;
    if (close) {
        start_closing(s);
        return;
    }
    s->state = SS_IDLE;
    arm(s->timer, limits(s)->idle_timeout_ms);
    http_parser_pause(&s->parser, 0);
}

static void
linger_done(evutil_socket_t fd, short what, void *arg)
{
    session_close(arg, NULL);
}

/* Flush what is queued for the client, then close. The socket is shut for
 * writing first and unread input drained for a moment, so that a client
 * still sending does not get a reset that destroys the answer. */
static void
start_closing(struct session *s)
{
    if (s->closed)
        return;
    s->state = SS_CLOSING;
    if (evbuffer_get_length(client_out(s)) > 0) {
        client_flush(s);
        if (s->closed)
            return;
        if (evbuffer_get_length(client_out(s)) > 0)
            return;                 /* client_write finishes it */
    }
    int fd = bufferevent_getfd(s->bev);
    if (fd >= 0) {
        shutdown(fd, SHUT_WR);
        evbuffer_drain(bufferevent_get_input(s->bev),
                       evbuffer_get_length(bufferevent_get_input(s->bev)));
        client_reading(s, true);
        evtimer_del(s->timer);
        event_assign(s->timer, s->w->base, -1, 0, linger_done, s);
        arm(s->timer, LINGER_MS);
        return;
    }
    session_close(s, NULL);
}

/* ---- http_parser callbacks for requests ------------------------------ */

static int
on_message_begin(http_parser *p)
{
    struct session *s = p->data;
    head_reset(&s->head);
    s->state = SS_HEAD;
    s->req.version = -1;
    /* The header deadline runs from the first byte of each request (from
     * accept for the first one, armed in session_new). */
    if (s->keep_alive)
        arm(s->timer, limits(s)->header_timeout_ms);
    return 0;
}

static int
check_head_size(struct session *s, int rc)
{
    if (rc < 0 || s->head.len > limits(s)->max_header_bytes) {
        s->req.status = 431;
        return -1;
    }
    return 0;
}

static int
on_url(http_parser *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return check_head_size(s, head_url(&s->head, at, len));
}

static int
on_header_field(http_parser *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return check_head_size(s, head_field(&s->head, at, len));
}

static int
on_header_value(http_parser *p, const char *at, size_t len)
{
    struct session *s = p->data;
    return check_head_size(s, head_value(&s->head, at, len));
}

/* Find the endpoint name in /api/v1/service/{ep}/score. */
static bool
score_path(const char *path, size_t len, const char **ep, size_t *eplen)
{
    size_t pl = sizeof(SCORE_PREFIX) - 1, sl = sizeof(SCORE_SUFFIX) - 1;
    if (len <= pl + sl || memcmp(path, SCORE_PREFIX, pl) != 0 ||
        memcmp(path + len - sl, SCORE_SUFFIX, sl) != 0)
        return false;
    *ep = path + pl;
    *eplen = len - pl - sl;
    return memchr(*ep, '/', *eplen) == NULL;
}

void
gw_request_head(struct session *s, struct evbuffer *out, const struct cfg_version *v,
                const char *group)
{
    const struct http_parser_url *u = &s->req.url;
    struct head *hd = &s->head;
    const char *url = hd->buf + hd->url_off;

    buf_str(out, http_method_str((enum http_method)s->parser.method));
    BUF_LIT(out, " ");
    if (v->path != NULL)
        evbuffer_add(out, v->path, strlen(v->path));
    else
        evbuffer_add(out, url + u->field_data[UF_PATH].off, u->field_data[UF_PATH].len);
    if (u->field_set & (1 << UF_QUERY)) {
        BUF_LIT(out, "?");
        evbuffer_add(out, url + u->field_data[UF_QUERY].off, u->field_data[UF_QUERY].len);
    }
    BUF_LIT(out, " HTTP/1.1\r\n");

    const char *xff = NULL;
    uint32_t xff_len = 0;
    for (int i = 0; i < hd->n; i++) {
        switch (hd->cls[i]) {
        case HC_OTHER: case HC_HOST: case HC_COOKIE:
            evbuffer_add(out, HD_NAME(hd, i), hd->h[i].name_len);
            BUF_LIT(out, ": ");
            evbuffer_add(out, HD_VAL(hd, i), hd->h[i].val_len);
            BUF_LIT(out, "\r\n");
            break;
        case HC_XFF:
            if (xff == NULL) {
                xff = HD_VAL(hd, i);
                xff_len = hd->h[i].val_len;
            }
            break;
        default:
            break;          /* hop-by-hop, or set by sluice below */
        }
    }
    BUF_LIT(out, "X-Forwarded-For: ");
    if (xff != NULL) {
        evbuffer_add(out, xff, xff_len);
        BUF_LIT(out, ", ");
    }
    buf_str(out, s->peer);
    if (s->tls)
        BUF_LIT(out, "\r\nX-Forwarded-Proto: https\r\n");
    else
        BUF_LIT(out, "\r\nX-Forwarded-Proto: http\r\n");
    sluice_headers_for(s, out, v, group);
    if (s->parser.flags & F_CHUNKED) {
        s->req.chunked_up = true;
        BUF_LIT(out, "Transfer-Encoding: chunked\r\n");
    } else if (s->parser.flags & F_CONTENTLENGTH) {
        BUF_LIT(out, "Content-Length: ");
        buf_u64(out, s->parser.content_length);
        BUF_LIT(out, "\r\n");
    }
    BUF_LIT(out, "\r\n");
}

static void
scoring_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    bool complete = s->req.complete;
    send_error(s, 504, "gateway_timeout",
               "the model server did not answer within scoring_timeout_ms", !complete);
    if (s->closed)
        return;
    s->req.fail_reason = "timeout";
    if (complete) {
        end_request(s);
        session_parse(s);
    } else
        start_closing(s);
    session_flush(s);
}

/* The sticky key of a request: the configured header, or cookie. */
static bool
sticky_key(struct session *s, const struct cfg_endpoint *ep, const char **key, size_t *len)
{
    struct head *hd = &s->head;
    if (ep->sticky == CFG_STICKY_HEADER) {
        for (int i = 0; i < hd->n; i++)
            if (head_name_is(hd, i, ep->sticky_name) && hd->h[i].val_len > 0) {
                *key = HD_VAL(hd, i);
                *len = hd->h[i].val_len;
                return true;
            }
        return false;
    }
    if (ep->sticky != CFG_STICKY_COOKIE)
        return false;
    size_t nl = strlen(ep->sticky_name);
    for (int i = 0; i < hd->n; i++) {
        if (hd->cls[i] != HC_COOKIE)
            continue;
        const char *v = HD_VAL(hd, i), *end = v + hd->h[i].val_len;
        while (v < end) {
            while (v < end && (*v == ' ' || *v == ';'))
                v++;
            const char *semi = memchr(v, ';', (size_t)(end - v));
            const char *stop = semi ? semi : end;
            const char *eq = memchr(v, '=', (size_t)(stop - v));
            if (eq && (size_t)(eq - v) == nl && memcmp(v, ep->sticky_name, nl) == 0 &&
                stop > eq + 1) {
                *key = eq + 1;
                *len = (size_t)(stop - eq - 1);
                return true;
            }
            v = stop;
        }
    }
    return false;
}

static uint64_t
now_ms(void)
{
    return now_us() / 1000;
}

static bool
pool_usable(const struct upool *p)
{
    /* The clock is read only for an upstream that was ejected. */
    return p != NULL && !__atomic_load_n(&p->shared->down, __ATOMIC_RELAXED) &&
           (p->eject.until_ms == 0 || p->eject.until_ms <= now_ms());
}

enum pick
gw_pick(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep, int vi,
        const struct upool *avoid, struct upool **out)
{
    const struct cfg_version *v = &ep->versions[vi];
    /* The worker's cached pools when the request runs on its snapshot. */
    struct ep_state *es = cfg == w->cfg ? &w->eps[ep - cfg->endpoints] : NULL;
    bool healthy = false;
    int start = v->n_upstreams > 1 ? (int)(w->req_seq % (uint64_t)v->n_upstreams) : 0;

    for (int tries = 0; tries < 2; tries++) {
        struct upool *best = NULL;
        for (int k = 0; k < v->n_upstreams; k++) {
            int idx = (start + k) % v->n_upstreams;
            struct upool *p = es ? es->pools[vi][idx] : upool_get(w, &v->upstreams[idx]);
            if (!pool_usable(p) || p == avoid)
                continue;
            healthy = true;
            if (v->max_concurrent > 0 &&
                __atomic_load_n(&p->shared->inflight, __ATOMIC_RELAXED) >= v->max_concurrent)
                continue;
            if (best == NULL || p->active < best->active)
                best = p;
        }
        if (best == NULL)
            return healthy ? PICK_AT_LIMIT : PICK_NO_HEALTHY;
        if (route_take_slot(best->shared, v->max_concurrent)) {
            *out = best;
            return PICK_OK;
        }
        /* another worker took the last slot in between: look again */
    }
    return PICK_AT_LIMIT;
}

static void
release_slot(struct session *s)
{
    if (s->req.slot != NULL) {
        route_give_slot(s->req.slot);
        s->req.slot = NULL;
        session_dispatch_waiters(s->w);
    }
}

/* Connect (or reuse) and send the request head; the body follows as the
 * parser reads it. */
static void
start_upstream(struct session *s, struct upool *pool)
{
    struct worker *w = s->w;
    s->req.slot = pool->shared;
    s->up = upconn_acquire(w, pool, s);
    if (s->up == NULL) {
        send_error(s, 502, "bad_gateway", "cannot connect to the model server", false);
        s->req.fail_reason = "upstream_connect_failed";
        return;
    }
    s->req.pool = pool;
    s->req.upstream_addr = pool->address;
    gw_request_head(s, w->scratch, req_version(s), group_of(req_version(s)));
    evbuffer_add_buffer(bufferevent_get_output(s->up->bev), w->scratch);
    if (s->req.expect_continue)
        BUF_LIT(client_out(s), "HTTP/1.1 100 Continue\r\n\r\n");
    arm(s->up_timer, s->req.ep->scoring_timeout_ms);
}

static void wait_expired(evutil_socket_t fd, short what, void *arg);

/*
 * Route a request whose version is chosen: to a healthy upstream, to the
 * default version on failover, into the wait queue at the concurrency
 * limit, or to a 503. Returns what on_headers_complete returns.
 */
static int
route_request(struct session *s)
{
    const struct cfg_endpoint *ep = s->req.ep;
    struct upool *pool = NULL;
    enum pick r = gw_pick(s->w, s->req.cfg, ep, s->req.version, NULL, &pool);

    if (r == PICK_NO_HEALTHY && ep->failover_to_default && !s->req.pinned &&
        s->req.version != ep->default_version) {
        s->req.version = ep->default_version;
        s->req.failover = true;
        r = gw_pick(s->w, s->req.cfg, ep, s->req.version, NULL, &pool);
    }
    if (r == PICK_OK) {
        start_upstream(s, pool);
        return 0;
    }
    if (r == PICK_NO_HEALTHY) {
        send_error(s, 503, "unavailable", "no healthy model server for this version", false);
        return 0;
    }
    const struct cfg_version *v = req_version(s);
    if (v->max_wait_ms <= 0) {
        send_error(s, 503, "overloaded", "the version is at replica_max_concurrent_requests",
                   false);
        return 0;
    }
    /* Wait in line, with the rest of the request left unread. */
    s->waiting = true;
    TAILQ_INSERT_TAIL(&s->w->waiters, s, wait_link);
    event_assign(s->up_timer, s->w->base, -1, 0, wait_expired, s);
    arm(s->up_timer, v->max_wait_ms);
    session_poll_waiters(s->w);
    http_parser_pause(&s->parser, 1);
    return 0;
}

static void
stop_waiting(struct session *s)
{
    if (!s->waiting)
        return;
    s->waiting = false;
    TAILQ_REMOVE(&s->w->waiters, s, wait_link);
    evtimer_del(s->up_timer);
    event_assign(s->up_timer, s->w->base, -1, 0, scoring_timeout, s);
}

/* A waiting request gets its turn or its answer: parse the rest of it. */
static void
resume_after_wait(struct session *s)
{
    http_parser_pause(&s->parser, 0);
    if (!s->closed) {
        session_parse(s);
        session_flush(s);
    }
}

static void
wait_expired(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    stop_waiting(s);
    send_error(s, 503, "overloaded",
               "the version stayed at replica_max_concurrent_requests for longer than "
               "max_request_wait_time_ms", false);
    if (!s->closed)
        resume_after_wait(s);
}

void
session_dispatch_waiters(struct worker *w)
{
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->waiters); s != NULL; s = next) {
        next = TAILQ_NEXT(s, wait_link);
        struct upool *pool = NULL;
        if (gw_pick(w, s->req.cfg, s->req.ep, s->req.version, NULL, &pool) != PICK_OK)
            continue;       /* others of other versions may still go */
        stop_waiting(s);
        start_upstream(s, pool);
        resume_after_wait(s);
    }
    session_poll_waiters(w);
}

/* Authenticate the request for ep (SPEC §3.2); 0, or -1 with a 401 sent. */
static int
check_auth(struct session *s, const struct cfg_endpoint *ep)
{
    struct worker *w = s->w;
    struct head *hd = &s->head;
    int az = hd->first[HC_AUTHORIZATION];
    const char *cred = az >= 0 ? HD_VAL(hd, az) : NULL;
    uint32_t len = az >= 0 ? hd->h[az].val_len : 0;
    time_t now = 0;

    if (!ep->auth_keys && !ep->auth_tokens)
        return 0;
    int epi = (int)(ep - s->req.cfg->endpoints);
    /* Generations are never reused (an address could be). */
    if (cred != NULL && s->auth_cred != NULL && s->auth_gen == s->req.cfg->generation &&
        s->auth_ep == epi && len == s->auth_cred_len &&
        auth_same(cred, s->auth_cred, len)) {
        if (s->auth_until == 0)
            return 0;
        now = time(NULL);
        if (now <= s->auth_until)
            return 0;
    }
    time_t until = 0;
    enum auth_status st = w->auth == NULL ? AUTH_NOT_ALLOWED :
        auth_check(w->auth, ep, cred, len, now ? now : time(NULL), &until);
    if (st != AUTH_OK) {
        send_error(s, 401, "unauthorized", auth_status_reason(st), false);
        return -1;
    }
    char *copy = realloc(s->auth_cred, len ? len : 1);
    if (copy != NULL) {
        memcpy(copy, cred, len);
        s->auth_cred = copy;
        s->auth_cred_len = len;
        s->auth_gen = s->req.cfg->generation;
        s->auth_ep = epi;
        s->auth_until = until;
    }
    return 0;
}

/* The request head is complete: route it and start the upstream request.
 * Returns 0 to go on parsing the body, -1 to stop (an error was sent). */
static int
on_headers_complete(http_parser *p)
{
    struct session *s = p->data;
    struct worker *w = s->w;
    struct head *hd = &s->head;
    char msg[256];

    clock_gettime(CLOCK_MONOTONIC, &s->req.t_start);
    head_classify(hd);
    s->req.cfg = config_take(w->cfg);
    s->req.version = -1;
    s->req.head_method = p->method == HTTP_HEAD;
    s->keep_alive = http_should_keep_alive(p);
    s->state = SS_BODY;
    new_request_id(s);
    int ex = hd->first[HC_EXPECT];
    s->req.expect_continue = ex >= 0 && p->http_minor >= 1 &&
        (p->flags & (F_CHUNKED | F_CONTENTLENGTH)) && p->content_length != 0 &&
        hd->h[ex].val_len == 12 && strncasecmp(HD_VAL(hd, ex), "100-continue", 12) == 0;

    if (!head_names_valid(hd)) {
        send_error(s, 400, "bad_request", "invalid header field name", true);
        return -1;
    }
    /* RFC 9112 §3.2: exactly one Host in HTTP/1.1. */
    int hosts = hd->count[HC_HOST];
    if ((p->http_major == 1 && p->http_minor >= 1 && hosts != 1) || hosts > 1) {
        send_error(s, 400, "bad_request", "a request needs exactly one Host header", true);
        return -1;
    }
    if (p->method == HTTP_CONNECT || p->upgrade) {
        send_error(s, 400, "bad_request", "protocol upgrades and CONNECT are not supported", true);
        return -1;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(hd->buf + hd->url_off, hd->url_len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH))) {
        send_error(s, 400, "bad_request", "invalid request target", true);
        return -1;
    }
    if ((p->flags & F_CONTENTLENGTH) &&
        p->content_length > limits(s)->max_body_bytes) {
        send_error(s, 413, "too_large", "the request body is over max_body_bytes", true);
        return -1;
    }
    const char *path = hd->buf + hd->url_off + u.field_data[UF_PATH].off;
    const char *epname;
    size_t eplen;
    const struct cfg_endpoint *ep = NULL;
    if (score_path(path, u.field_data[UF_PATH].len, &epname, &eplen))
        ep = config_endpoint(s->req.cfg, epname, eplen);
    if (ep == NULL) {
        snprintf(msg, sizeof(msg), "no endpoint at %.*s", (int)u.field_data[UF_PATH].len > 128 ? 128 : (int)u.field_data[UF_PATH].len, path);
        send_error(s, 404, "not_found", msg, false);
        return 0;
    }
    s->req.ep = ep;

    if (check_auth(s, ep) < 0)
        return 0;

    s->req.url = u;
    int pin = hd->first[HC_SLUICE_VERSION];
    if (pin >= 0) {
        int vi = route_pinned(ep, HD_VAL(hd, pin), hd->h[pin].val_len);
        if (vi < 0) {
            snprintf(msg, sizeof(msg), "endpoint %s has no version %.*s", ep->name,
                     (int)(hd->h[pin].val_len > 64 ? 64 : hd->h[pin].val_len),
                     HD_VAL(hd, pin));
            send_error(s, 404, "not_found", msg, false);
            return 0;
        }
        s->req.version = vi;
        s->req.pinned = true;
    } else {
        const char *key;
        size_t klen;
        struct ep_state *es = &w->eps[ep - s->req.cfg->endpoints];
        if (sticky_key(s, ep, &key, &klen))
            s->req.version = route_sticky(ep, key, klen);
        else
            s->req.version = route_split_next(&es->split);
        shadows_start(s, es);
    }
    return route_request(s);
}

static int
on_body(http_parser *p, const char *at, size_t len)
{
    struct session *s = p->data;

    s->req.body_in += len;
    if (s->req.body_in > limits(s)->max_body_bytes) {
        send_error(s, 413, "too_large", "the request body is over max_body_bytes", true);
        return -1;
    }
    if (s->n_shadows > 0)
        shadows_body(s, at, len);
    if (s->req.discard || s->up == NULL)
        return 0;
    struct evbuffer *out = bufferevent_get_output(s->up->bev);
    if (s->req.chunked_up) {
        buf_chunk_size(out, len);
        evbuffer_add(out, at, len);
        BUF_LIT(out, "\r\n");
    } else
        evbuffer_add(out, at, len);
    return 0;
}

static int
on_message_complete(http_parser *p)
{
    struct session *s = p->data;

    s->req.complete = true;
    if (s->n_shadows > 0)
        shadows_complete(s);
    if (s->up != NULL && s->req.chunked_up && !s->req.discard)
        BUF_LIT(bufferevent_get_output(s->up->bev), "0\r\n\r\n");
    evtimer_del(s->timer);
    s->state = SS_WAIT;
    http_parser_pause(p, 1);
    return 0;
}

/* ---- reading from the client ----------------------------------------- */

static void
parse_failed(struct session *s, enum http_errno e)
{
    if (s->req.status == 431 || e == HPE_HEADER_OVERFLOW) {
        send_error(s, 431, "headers_too_large",
                   "the request headers are over max_header_bytes", true);
    } else if (!s->req.response_started) {
        char msg[160];
        snprintf(msg, sizeof(msg), "malformed HTTP: %s", http_errno_description(e));
        send_error(s, 400, "bad_request", msg, true);
    }
    if (!s->closed)
        start_closing(s);
}

/* Feed buffered client input to the parser for as long as it may run. */
static void
session_parse(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);

    while (!s->closed && s->state != SS_CLOSING && !s->read_paused) {
        if (HTTP_PARSER_ERRNO(&s->parser) == HPE_PAUSED) {
            if (s->waiting || !s->req.response_done)
                break;          /* resumed when the response ends */
            end_request(s);
            continue;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        size_t n = http_parser_execute(&s->parser, &req_settings, v.iov_base, v.iov_len);
        if (s->closed)
            return;
        evbuffer_drain(in, n);
        s->req.bytes_in += n;
        enum http_errno e = HTTP_PARSER_ERRNO(&s->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            parse_failed(s, e);
            return;
        }
        if (s->state == SS_CLOSING ||
            (s->req.response_close && s->req.complete && s->req.response_done)) {
            start_closing(s);
            return;
        }
        if (s->up != NULL &&
            evbuffer_get_length(bufferevent_get_output(s->up->bev)) > GW_HIGH_WATER) {
            s->read_paused = true;
            client_reading(s, false);
        }
    }
}

static void
client_read(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;
    if (s->state == SS_CLOSING) {
        evbuffer_drain(bufferevent_get_input(bev),
                       evbuffer_get_length(bufferevent_get_input(bev)));
        return;
    }
    session_parse(s);
    session_flush(s);
}

static void
client_write(struct bufferevent *bev, void *arg)
{
    struct session *s = arg;

    if (!s->tls)
        bufferevent_disable(bev, EV_WRITE);     /* drained: back to direct writes */
    if (s->state == SS_CLOSING) {
        start_closing(s);
        return;
    }
    if (s->up != NULL) {
        upconn_resume(s->up);
        session_flush(s);
    }
}

static void
client_event(struct bufferevent *bev, short events, void *arg)
{
    struct session *s = arg;

    if (events & BEV_EVENT_CONNECTED)
        return;                     /* TLS handshake done */
    if (s->state == SS_CLOSING || s->state == SS_IDLE) {
        session_close(s, NULL);
        return;
    }
    if (s->req.fail_reason == NULL)
        s->req.fail_reason = (events & BEV_EVENT_EOF) ? "client_closed" : "client_error";
    if (s->req.status == 0)
        s->req.status = 499;
    worker_request_done(s->w, s);
    session_close(s, s->req.fail_reason);
}

static void
client_timer(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;

    if (s->state == SS_HEAD || s->state == SS_BODY) {
        bool headers = s->state == SS_HEAD;
        if (headers && !s->req.response_started)
            s->req.cfg = config_take(s->w->cfg);
        if (s->req.id[0] == '\0')
            new_request_id(s);
        send_error(s, 408, "timeout", headers ?
                   "request headers not received within header_timeout_ms" :
                   "request body not received within header_timeout_ms", true);
        if (!s->closed) {
            worker_request_done(s->w, s);
            start_closing(s);
        }
        return;
    }
    session_close(s, NULL);         /* idle keep-alive connection */
}

/* ---- upstream events (called from upstream.c) ------------------------ */

void
session_upstream_head(struct session *s, struct upconn *u)
{
    struct head *hd = &u->head;
    struct evbuffer *out = s->w->scratch;
    int status = u->parser.status_code;
    bool http10 = s->parser.http_minor == 0;

    s->req.status = status;
    s->req.response_started = true;
    route_eject_success(&u->pool->eject);
    if (s->w->draining)
        s->req.response_close = true;
    BUF_LIT(out, "HTTP/1.1 ");
    buf_u64(out, (uint64_t)status);
    BUF_LIT(out, " ");
    if (hd->url_len > 0)
        evbuffer_add(out, hd->buf + hd->url_off, hd->url_len);
    else
        buf_str(out, http_status_str((enum http_status)status));
    BUF_LIT(out, "\r\n");

    head_classify(hd);
    for (int i = 0; i < hd->n; i++) {
        switch (hd->cls[i]) {
        case HC_HOP: case HC_CONTENT_LENGTH: case HC_SLUICE_VERSION:
        case HC_SLUICE_GROUP: case HC_REQUEST_ID:
            continue;               /* hop-by-hop, or set by sluice below */
        default:
            break;
        }
        evbuffer_add(out, HD_NAME(hd, i), hd->h[i].name_len);
        BUF_LIT(out, ": ");
        evbuffer_add(out, HD_VAL(hd, i), hd->h[i].val_len);
        BUF_LIT(out, "\r\n");
    }
    bool has_body = !(s->req.head_method || status == 204 || status == 304);
    if (u->parser.flags & F_CONTENTLENGTH) {
        BUF_LIT(out, "Content-Length: ");
        buf_u64(out, u->parser.content_length);
        BUF_LIT(out, "\r\n");
    } else if (!has_body) {
        /* no body, no length */
    } else if (http10) {
        s->req.response_close = true;   /* length known only by the close */
    } else {
        s->req.response_chunked = true;
        BUF_LIT(out, "Transfer-Encoding: chunked\r\n");
    }
    sluice_headers(s, out);
    if (s->req.response_close || !s->keep_alive)
        BUF_LIT(out, "Connection: close\r\n");
    else if (http10)
        BUF_LIT(out, "Connection: keep-alive\r\n");
    BUF_LIT(out, "\r\n");
    s->req.bytes_out += evbuffer_get_length(out);
    evbuffer_add_buffer(client_out(s), out);
}

void
session_upstream_body(struct session *s, const char *at, size_t len)
{
    struct evbuffer *out = client_out(s);
    size_t before = evbuffer_get_length(out);

    if (s->req.response_chunked) {
        buf_chunk_size(out, len);
        evbuffer_add(out, at, len);
        BUF_LIT(out, "\r\n");
    } else
        evbuffer_add(out, at, len);
    s->req.bytes_out += evbuffer_get_length(out) - before;
    if (evbuffer_get_length(out) > GW_HIGH_WATER && s->up != NULL)
        upconn_pause(s->up);
}

void
session_upstream_done(struct session *s, struct upconn *u, bool reusable)
{
    if (s->req.response_chunked) {
        BUF_LIT(client_out(s), "0\r\n\r\n");
        s->req.bytes_out += 5;
    }
    evtimer_del(s->up_timer);
    s->up = NULL;
    s->req.response_done = true;
    upconn_release(u, reusable && s->req.complete);
    if (!s->req.complete) {
        /* The model server answered before the whole request was read:
         * the rest of it is not wanted, so the connection ends here. */
        s->req.response_close = true;
        worker_request_done(s->w, s);
        start_closing(s);
        return;
    }
    end_request(s);
    if (!s->closed)
        session_parse(s);
    session_flush(s);
}

void
session_upstream_failed(struct session *s, struct upconn *u, const char *why,
                        bool conn_error)
{
    struct worker *w = s->w;
    struct upool *pool = u->pool;
    const struct cfg_version *v = req_version(s);
    bool complete = s->req.complete;

    if (conn_error) {
        int threshold = v->health.enabled ? v->health.failure_threshold : 3;
        if (route_eject_failure(&pool->eject, threshold, now_ms()))
            log_event(LOG_WARN, "upstream_ejected", ",\"upstream\":\"%s\",\"worker\":%d,"
                      "\"backoff_ms\":%llu", pool->address, w->id,
                      (unsigned long long)pool->eject.backoff_ms);
    }
    /* Nothing went out yet: try once more on another upstream of the
     * version, handing it the bytes queued for this one. */
    struct upool *other = NULL;
    if (!u->connected && !s->req.retried && !s->req.response_started &&
        gw_pick(w, s->req.cfg, s->req.ep, s->req.version, pool, &other) == PICK_OK) {
        struct upconn *nu = upconn_acquire(w, other, s);
        if (nu != NULL) {
            s->req.retried = true;
            evbuffer_add_buffer(bufferevent_get_output(nu->bev),
                                bufferevent_get_output(u->bev));
            s->up = nu;
            upconn_close(u);
            route_give_slot(s->req.slot);
            s->req.slot = other->shared;
            s->req.pool = other;
            s->req.upstream_addr = other->address;
            session_flush(s);
            return;
        }
        route_give_slot(other->shared);
    }

    send_error(s, 502, "bad_gateway", why, !complete);
    if (s->closed)
        return;
    s->req.fail_reason = why;
    if (complete) {
        end_request(s);
        if (!s->closed)
            session_parse(s);
    } else {
        worker_request_done(s->w, s);
        start_closing(s);
    }
    session_flush(s);
}

void
session_upstream_drained(struct session *s)
{
    if (s->read_paused && !s->closed) {
        s->read_paused = false;
        client_reading(s, true);
        session_parse(s);
        session_flush(s);
    }
}

/* ---- lifetime --------------------------------------------------------- */

static void
init_settings(void)
{
    if (req_settings.on_message_begin != NULL)
        return;
    http_parser_settings_init(&req_settings);
    req_settings.on_message_begin = on_message_begin;
    req_settings.on_url = on_url;
    req_settings.on_header_field = on_header_field;
    req_settings.on_header_value = on_header_value;
    req_settings.on_headers_complete = on_headers_complete;
    req_settings.on_body = on_body;
    req_settings.on_message_complete = on_message_complete;
}

void
session_new(struct worker *w, int fd, struct sockaddr *sa, int salen,
            struct ssl_ctx_st *tls)
{
    int one = 1;

    if (__atomic_load_n(&gw_open_connections, __ATOMIC_RELAXED) >=
        w->cfg->limits.max_connections) {
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
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, s->peer, sizeof(s->peer));
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, s->peer, sizeof(s->peer));
    } else
        snprintf(s->peer, sizeof(s->peer), "unix");
    /* The bufferevent holds the buffers and owns the fd; reads and writes
     * go through client_raw_read() and client_flush(). */
    s->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (s->bev == NULL) {
        close(fd);
        free(s);
        return;
    }
    if (tls != NULL) {
        if (tls_session_start(s, tls, fd) < 0) {
            bufferevent_free(s->bev);
            free(s);
            return;
        }
        s->tls = true;
        s->wev = event_new(w->base, fd, EV_WRITE, client_tls_writable, s);
    }
    http_parser_init(&s->parser, HTTP_REQUEST);
    s->parser.data = s;
    head_reset(&s->head);
    s->req.version = -1;
    s->timer = evtimer_new(w->base, client_timer, s);
    s->up_timer = evtimer_new(w->base, scoring_timeout, s);
    bufferevent_setcb(s->bev, client_read, client_write, client_event, s);
    /* Plain sockets are written directly (gw_flush); TLS needs EV_WRITE. */
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);  /* EV_WRITE is on by default */
    s->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, client_raw_read, s);
    event_add(s->rev, NULL);
    s->state = SS_IDLE;
    arm(s->timer, w->cfg->limits.header_timeout_ms);
    TAILQ_INSERT_TAIL(&w->sessions, s, link);
    w->n_sessions++;
    __atomic_add_fetch(&gw_open_connections, 1, __ATOMIC_RELAXED);
}

void
session_close(struct session *s, const char *why)
{
    struct worker *w = s->w;

    if (s->closed)
        return;
    stop_waiting(s);
    if (s->up != NULL) {
        upconn_close(s->up);
        s->up = NULL;
    }
    shadows_detach(s);
    s->closed = true;
    release_slot(s);
    event_free(s->rev);
    s->rev = NULL;
    if (s->wev != NULL)
        event_free(s->wev);
    s->wev = NULL;
    tls_session_end(s);
    bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
    bufferevent_free(s->bev);
    s->bev = NULL;
    event_free(s->timer);
    event_free(s->up_timer);
    s->timer = s->up_timer = NULL;
    config_drop(s->req.cfg);
    s->req.cfg = NULL;
    TAILQ_REMOVE(&w->sessions, s, link);
    w->n_sessions--;
    __atomic_sub_fetch(&gw_open_connections, 1, __ATOMIC_RELAXED);
    s->gc_next = w->gc_sessions;
    w->gc_sessions = s;
    worker_gc(w);
}

void
session_free(struct session *s)
{
    if (s->auth_cred != NULL) {
        explicit_bzero(s->auth_cred, s->auth_cred_len);
        free(s->auth_cred);
    }
    head_free(&s->head);
    free(s);
}

void
session_drain_all(struct worker *w)
{
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->state == SS_IDLE || s->state == SS_CLOSING)
            session_close(s, "draining");
        else
            s->req.response_close = true;
    }
}

void
session_flush(struct session *s)
{
    if (s->closed)
        return;
    if (s->up != NULL && !s->up->closed)
        gw_flush(s->up->bev, s->up->connected);
    if (s->n_shadows > 0)
        shadows_flush(s);
    if (s->state != SS_CLOSING)
        client_flush(s);
}
