/*
 * The admin listener's gate (SPEC §3.7, issue 17 finding 9): what a client
 * of the admin listener can make Sluice hold before it has shown the admin
 * token.
 *
 * evhttp (libevent 2.1) reads a request's whole body before its callback
 * runs, and has no hook between the head and the body for a server, nor a
 * connection limit. So the gate watches each admin connection's input
 * buffer and parses the requests with llhttp as they are read, before
 * evhttp sees a byte:
 *  - a head is held (at most GATE_MAX_HEAD bytes) until it is complete;
 *  - a request for /admin/... with a valid admin token, or a request with
 *    no body for any other path, is passed on to evhttp unchanged, its
 *    body streamed as it comes;
 *  - anything else (no or a wrong token on /admin/, a body on a public
 *    path, a head llhttp refuses or one over the limit) is replaced by a
 *    short request of the gate's own, GET /__sluice_gate/WHY with
 *    "Connection: close", which admin.c answers (401, 400, 431); every
 *    later byte of the connection is dropped as it is read.
 * An unauthenticated request therefore costs at most its head. The
 * connections are counted from their bufferevent's creation (evhttp's
 * bevcb) to evhttp's close callback; at admin.max_connections the listener
 * stops accepting (the kernel's backlog holds the rest, as nginx and
 * HAProxy do at their limits) and accepts again when one closes.
 * (A bufferevent filter was tried first: it tells evhttp that a reply is
 * written once it is in the filter's buffer, and evhttp then frees the
 * socket with the reply unsent.)
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <llhttp.h>

#include "control/control.h"

#define GATE_MAX_HEAD (64 * 1024)   /* as evhttp_set_max_headers_size() */
#define GATE_MAX_AUTH 4096          /* the Authorization value kept */
#define GATE_MAX_PATH 32            /* "/admin/" and the gate's prefix */

enum gate_state { GS_HEAD, GS_BODY, GS_PASS, GS_DROP };

struct admin_gate_conn {
    llhttp_t parser;
    enum gate_state state;
    struct evbuffer *head;          /* the head so far (GS_HEAD) */
    size_t url_len, auth_len, field_len;
    char url[GATE_MAX_PATH];
    char auth[GATE_MAX_AUTH];
    char field[16];                 /* the field name being read, if short */
    bool in_auth, auth_seen, auth_too_long;
    bool headers_done, message_done;
    bool admitted_admin;            /* the request passed on is /admin/ with the token */
    admin_gate_auth_fn authorized;
};

/* ---- the parser's callbacks ------------------------------------------------ */

static int
on_url(llhttp_t *p, const char *at, size_t len)
{
    struct admin_gate_conn *g = p->data;
    size_t room = sizeof(g->url) - g->url_len;
    size_t n = len < room ? len : room;
    memcpy(g->url + g->url_len, at, n);
    g->url_len += n;
    return 0;
}

static int
on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct admin_gate_conn *g = p->data;
    if (g->in_auth || g->field_len == SIZE_MAX) {   /* a new field begins */
        g->in_auth = false;
        g->field_len = 0;
    }
    if (g->field_len + len <= sizeof(g->field)) {
        memcpy(g->field + g->field_len, at, len);
        g->field_len += len;
    } else
        g->field_len = sizeof(g->field) + 1;        /* too long to be ours */
    return 0;
}

static int
on_header_field_complete(llhttp_t *p)
{
    struct admin_gate_conn *g = p->data;
    g->in_auth = g->field_len == 13 && strncasecmp(g->field, "authorization", 13) == 0;
    if (g->in_auth) {
        if (g->auth_seen)           /* two of them: neither is trusted */
            g->auth_too_long = true;
        g->auth_seen = true;
        g->auth_len = 0;
    }
    return 0;
}

static int
on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct admin_gate_conn *g = p->data;
    if (!g->in_auth)
        return 0;
    if (g->auth_len + len > sizeof(g->auth)) {
        g->auth_too_long = true;
        return 0;
    }
    memcpy(g->auth + g->auth_len, at, len);
    g->auth_len += len;
    return 0;
}

static int
on_header_value_complete(llhttp_t *p)
{
    struct admin_gate_conn *g = p->data;
    g->field_len = SIZE_MAX;        /* the next field piece starts a name */
    return 0;
}

static int
on_headers_complete(llhttp_t *p)
{
    struct admin_gate_conn *g = p->data;
    g->headers_done = true;
    return HPE_PAUSED;              /* the gate decides before any body byte */
}

static int
on_message_complete(llhttp_t *p)
{
    struct admin_gate_conn *g = p->data;
    g->message_done = true;
    return HPE_PAUSED;              /* the next head is judged anew */
}

static llhttp_settings_t settings;

static void
init_settings(void)
{
    if (settings.on_url != NULL)
        return;
    llhttp_settings_init(&settings);
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_message_complete = on_message_complete;
}

/* ---- one connection ------------------------------------------------------- */

static void
head_begin(struct admin_gate_conn *g)
{
    g->state = GS_HEAD;
    g->url_len = g->auth_len = 0;
    g->field_len = SIZE_MAX;
    g->in_auth = g->auth_seen = g->auth_too_long = false;
    g->headers_done = g->message_done = false;
    g->admitted_admin = false;
}

struct admin_gate_conn *
admin_gate_conn_new(admin_gate_auth_fn authorized)
{
    struct admin_gate_conn *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->head = evbuffer_new();
    if (g->head == NULL) {
        free(g);
        return NULL;
    }
    init_settings();
    llhttp_init(&g->parser, HTTP_REQUEST, &settings);
    g->parser.data = g;
    g->authorized = authorized;
    head_begin(g);
    return g;
}

void
admin_gate_conn_free(struct admin_gate_conn *g)
{
    if (g == NULL)
        return;
    evbuffer_free(g->head);
    free(g);
}

/* The gate's own request in place of one it does not pass on. */
static void
substitute(struct admin_gate_conn *g, struct evbuffer *dst, const char *why)
{
    evbuffer_add_printf(dst, "GET " ADMIN_GATE_PREFIX "%s HTTP/1.1\r\nHost: sluice-gate\r\n"
                        "Connection: close\r\n\r\n", why);
    evbuffer_drain(g->head, evbuffer_get_length(g->head));
    g->state = GS_DROP;
}

/* The head is complete: pass it on, or not. */
static void
judge(struct admin_gate_conn *g, struct evbuffer *dst)
{
    llhttp_t *p = &g->parser;
    bool admin = g->url_len >= 7 && memcmp(g->url, "/admin/", 7) == 0;
    bool body = (p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)) != 0 || p->content_length > 0;
    if (admin && (g->auth_too_long || !g->auth_seen ||
                  !g->authorized(g->auth, g->auth_len))) {
        substitute(g, dst, "unauthorized");
        return;
    }
    if (!admin && body) {
        substitute(g, dst, "body_refused");
        return;
    }
    if (g->url_len >= sizeof(ADMIN_GATE_PREFIX) - 1 &&
        memcmp(g->url, ADMIN_GATE_PREFIX, sizeof(ADMIN_GATE_PREFIX) - 1) == 0) {
        substitute(g, dst, "reserved");     /* the gate's own words, not a client's */
        return;
    }
    evbuffer_add_buffer(dst, g->head);
    g->admitted_admin = admin;
    g->state = GS_BODY;
}

enum admin_gate_result
admin_gate_feed(struct admin_gate_conn *g, struct evbuffer *src, struct evbuffer *dst)
{
    for (;;) {
        if (g->state == GS_DROP) {
            evbuffer_drain(src, evbuffer_get_length(src));
            return ADMIN_GATE_DROPPING;
        }
        if (g->state == GS_PASS) {
            evbuffer_add_buffer(dst, src);
            return ADMIN_GATE_OK;
        }
        struct evbuffer_iovec v;
        if (evbuffer_peek(src, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            return ADMIN_GATE_OK;
        enum llhttp_errno e = llhttp_execute(&g->parser, v.iov_base, v.iov_len);
        size_t n = v.iov_len;
        if (e == HPE_PAUSED) {
            n = (size_t)(llhttp_get_error_pos(&g->parser) - (const char *)v.iov_base);
            llhttp_resume(&g->parser);
        }
        if (g->state == GS_HEAD) {
            evbuffer_remove_buffer(src, g->head, n);
            if (e != HPE_OK && e != HPE_PAUSED) {
                substitute(g, dst, e == HPE_INVALID_URL ? "malformed_url" : "malformed");
                continue;
            }
            if (g->headers_done) {
                g->headers_done = false;
                judge(g, dst);
            } else if (evbuffer_get_length(g->head) > GATE_MAX_HEAD) {
                substitute(g, dst, "head_too_large");
                continue;
            }
            if (g->message_done && g->state == GS_BODY)
                head_begin(g);      /* a message without a body */
            continue;
        }
        /* GS_BODY: an admitted request's body streams through. */
        evbuffer_remove_buffer(src, dst, n);
        if (e != HPE_OK && e != HPE_PAUSED) {
            /* After an authorized head, evhttp reports the error; after
             * any other, what follows is nobody's to read. */
            g->state = g->admitted_admin ? GS_PASS : GS_DROP;
            continue;
        }
        if (g->message_done)
            head_begin(g);
    }
}

/* ---- the listener ---------------------------------------------------------- */

/*
 * evhttp owns each connection's socket bufferevent (made here, in its
 * bevcb). The gate watches the bufferevent's input buffer: its callback
 * runs inside evbuffer_read(), before evhttp's read callback sees a byte,
 * and moves the bytes just read through admin_gate_feed(). The connection's
 * end is learnt from evhttp's close callback, set once evhttp has made the
 * connection (the bufferevent's callback argument is the evhttp_connection).
 */
struct gated {
    struct admin_gate_conn *g;
    struct bufferevent *bev;
    struct evhttp_connection *evcon;    /* once adopted */
    void (*closecb)(struct evhttp_connection *, void *);   /* admin.c's, if any */
    void *closearg;
    bool busy, counted;
    struct gated *next;
};

static struct {
    struct evconnlistener *listener;
    admin_gate_auth_fn authorized;
    int max, open;
    bool paused;
    struct gated *conns;
    struct evbuffer *scratch;
} gate;

static void
limit_check(void)
{
    if (gate.listener == NULL)
        return;
    bool full = gate.open >= gate.max;
    if (full && !gate.paused)
        evconnlistener_disable(gate.listener);
    else if (!full && gate.paused)
        evconnlistener_enable(gate.listener);
    gate.paused = full;
}

static void
input_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct gated *c = arg;
    if (c->busy || info->n_added == 0)
        return;                     /* our own moves, or evhttp draining */
    c->busy = true;
    size_t len = evbuffer_get_length(in);
    size_t fresh = info->n_added < len ? info->n_added : len;
    /* The bytes before the fresh ones were passed already: they stay. */
    evbuffer_remove_buffer(in, gate.scratch, len);
    evbuffer_remove_buffer(gate.scratch, in, len - fresh);
    admin_gate_feed(c->g, gate.scratch, in);
    evbuffer_drain(gate.scratch, evbuffer_get_length(gate.scratch));
    c->busy = false;
}

static void
unlink_conn(struct gated *c)
{
    for (struct gated **pp = &gate.conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->counted) {
        c->counted = false;
        gate.open--;
        limit_check();
    }
    admin_gate_conn_free(c->g);
    free(c);
}

static void
closed_cb(struct evhttp_connection *evcon, void *arg)
{
    struct gated *c = arg;
    if (c->closecb != NULL)
        c->closecb(evcon, c->closearg);
    evbuffer_remove_cb(bufferevent_get_input(c->bev), input_cb, c);
    unlink_conn(c);
}

/* Once evhttp has made the connection (the loop's next turn): hear of its end. */
static void
adopt_cb(evutil_socket_t fd, short what, void *arg)
{
    struct gated *c = arg;
    bufferevent_data_cb r, w;
    bufferevent_event_cb e;
    void *evcon = NULL;
    bufferevent_getcb(c->bev, &r, &w, &e, &evcon);
    if (e == NULL || evcon == NULL) {   /* evhttp gave it up already */
        bufferevent_decref(c->bev);
        unlink_conn(c);
        return;
    }
    c->evcon = evcon;
    evhttp_connection_set_closecb(c->evcon, closed_cb, c);
    bufferevent_decref(c->bev);         /* evhttp's alone from now on */
}

static struct bufferevent *
gate_bev(struct event_base *base, void *arg)
{
    struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    struct gated *c = calloc(1, sizeof(*c));
    if (bev == NULL || c == NULL || (c->g = admin_gate_conn_new(gate.authorized)) == NULL)
        goto fail;
    static const struct timeval now = {0, 0};
    if (event_base_once(base, -1, EV_TIMEOUT, adopt_cb, c, &now) < 0)
        goto fail;
    c->bev = bev;
    evbuffer_add_cb(bufferevent_get_input(bev), input_cb, c);
    bufferevent_incref(bev);            /* held until adopt_cb has looked */
    c->counted = true;
    c->next = gate.conns;
    gate.conns = c;
    gate.open++;
    limit_check();
    return bev;
fail:
    /* evhttp makes a bufferevent of its own: ungated, only when out of memory. */
    if (c != NULL)
        admin_gate_conn_free(c->g);
    free(c);
    if (bev != NULL)
        bufferevent_free(bev);
    return NULL;
}

void
admin_gate_on_close(struct evhttp_connection *evcon,
                    void (*cb)(struct evhttp_connection *, void *), void *arg)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    for (struct gated *c = gate.conns; c != NULL; c = c->next)
        if (c->bev == bev) {
            c->closecb = cb;
            c->closearg = arg;
            return;
        }
    evhttp_connection_set_closecb(evcon, cb, arg);  /* an ungated connection */
}

int
admin_gate_attach(struct evhttp *http, struct evconnlistener *listener, int max_connections,
                  admin_gate_auth_fn authorized)
{
    if (gate.scratch == NULL && (gate.scratch = evbuffer_new()) == NULL)
        return -1;
    gate.listener = listener;
    gate.authorized = authorized;
    gate.max = max_connections;
    evhttp_set_bevcb(http, gate_bev, NULL);
    limit_check();
    return 0;
}

void
admin_gate_set_max(int max_connections)
{
    gate.max = max_connections;
    limit_check();
}

int
admin_gate_open(void)
{
    return gate.open;
}

void
admin_gate_detach(void)
{
    gate.listener = NULL;           /* evhttp_free() has closed every connection */
    gate.paused = false;
    evbuffer_free(gate.scratch);
    gate.scratch = NULL;
}
