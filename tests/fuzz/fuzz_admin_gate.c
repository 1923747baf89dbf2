/*
 * libFuzzer target: the admin listener's gate (control/admin_gate.c), what
 * decides which bytes of an admin connection evhttp may read before the
 * admin token was checked (issue 17 finding 9). The input is cut into reads
 * (fuzz_common.h) and fed to admin_gate_feed(); everything the gate passes
 * on is parsed again by a second, independent llhttp parser.
 * Invariants:
 *  - every request passed on under /admin/ carries the valid token, and
 *    every other request passed on (not the gate's own) has no body;
 *  - after the gate's own request (GET /__sluice_gate/...) nothing follows;
 *  - what is passed on parses, unless it is the body of an admitted
 *    /admin/ request (then evhttp reports the error) or follows a request
 *    that ends its connection;
 *  - the gate never passes more bytes than it got, its own request aside.
 */
#include "fuzz_common.h"
#include "control/control.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GOOD "Bearer good-admin-token"

static bool
authorized(const char *h, size_t len)
{
    return len == sizeof(GOOD) - 1 && memcmp(h, GOOD, len) == 0;
}

struct check {
    llhttp_t p;
    char url[64];
    size_t url_len;
    char field[16];
    size_t field_len;
    bool in_auth, auth_ok, auth_seen;
    bool admitted_admin;            /* the last head passed on: /admin/ with the token */
    bool gate_seen, gate_done, failed;
};

static int
c_url(llhttp_t *p, const char *at, size_t len)
{
    struct check *c = p->data;
    size_t n = len < sizeof(c->url) - c->url_len ? len : sizeof(c->url) - c->url_len;
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    return 0;
}

static int
c_field(llhttp_t *p, const char *at, size_t len)
{
    struct check *c = p->data;
    if (c->field_len < sizeof(c->field)) {
        size_t room = sizeof(c->field) - c->field_len;
        memcpy(c->field + c->field_len, at, len < room ? len : room);
    }
    c->field_len += len;
    return 0;
}

static int
c_field_done(llhttp_t *p)
{
    struct check *c = p->data;
    c->in_auth = c->field_len == 13 && strncasecmp(c->field, "authorization", 13) == 0;
    c->field_len = 0;
    if (c->in_auth) {
        c->auth_ok = !c->auth_seen;     /* a second one makes none valid */
        c->auth_seen = true;
        c->field_len = 0;
    }
    return 0;
}

static char auth_buf[8192];
static size_t auth_len;

static int
c_value(llhttp_t *p, const char *at, size_t len)
{
    struct check *c = p->data;
    if (c->in_auth) {
        if (auth_len + len > sizeof(auth_buf))
            c->auth_ok = false;
        else {
            memcpy(auth_buf + auth_len, at, len);
            auth_len += len;
        }
    }
    return 0;
}

static int
c_value_done(llhttp_t *p)
{
    struct check *c = p->data;
    if (c->in_auth && !authorized(auth_buf, auth_len))
        c->auth_ok = false;
    c->in_auth = false;
    auth_len = 0;
    return 0;
}

static int
c_headers_done(llhttp_t *p)
{
    struct check *c = p->data;
    bool admin = c->url_len >= 7 && memcmp(c->url, "/admin/", 7) == 0;
    bool gate = c->url_len >= sizeof(ADMIN_GATE_PREFIX) - 1 &&
                memcmp(c->url, ADMIN_GATE_PREFIX, sizeof(ADMIN_GATE_PREFIX) - 1) == 0;
    bool body = (p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)) != 0 || p->content_length > 0;
    if (c->gate_done) {
        fprintf(stderr, "a request passed on after the gate's own\n");
        abort();
    }
    if (admin && !(c->auth_seen && c->auth_ok)) {
        fprintf(stderr, "an /admin/ request without the token passed on: %.*s\n",
                (int)c->url_len, c->url);
        abort();
    }
    if (!admin && body && !gate) {
        fprintf(stderr, "a body on a public path passed on: %.*s\n", (int)c->url_len, c->url);
        abort();
    }
    c->gate_seen = gate;
    c->admitted_admin = admin;
    c->url_len = 0;
    c->auth_seen = c->auth_ok = false;
    return 0;
}

static int
c_message_done(llhttp_t *p)
{
    struct check *c = p->data;
    if (c->gate_seen)
        c->gate_done = true;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static llhttp_settings_t st;
    static bool init;
    if (!init) {
        llhttp_settings_init(&st);
        st.on_url = c_url;
        st.on_header_field = c_field;
        st.on_header_field_complete = c_field_done;
        st.on_header_value = c_value;
        st.on_header_value_complete = c_value_done;
        st.on_headers_complete = c_headers_done;
        st.on_message_complete = c_message_done;
        init = true;
    }
    struct check c;
    memset(&c, 0, sizeof(c));
    auth_len = 0;
    llhttp_init(&c.p, HTTP_REQUEST, &st);
    c.p.data = &c;

    struct admin_gate_conn *g = admin_gate_conn_new(authorized);
    struct evbuffer *src = evbuffer_new(), *dst = evbuffer_new();
    struct reads rd;
    reads_init(&rd, data, size);
    const char *at;
    size_t len, in_total = 0, out_total = 0;
    while (reads_next(&rd, &at, &len)) {
        evbuffer_add(src, at, len);
        in_total += len;
        admin_gate_feed(g, src, dst);
        if (evbuffer_get_length(src) != 0) {
            fprintf(stderr, "the gate left input unread\n");
            abort();
        }
        size_t n = evbuffer_get_length(dst);
        out_total += n;
        unsigned char *out = evbuffer_pullup(dst, -1);
        if (n > 0 && !c.failed) {
            enum llhttp_errno e = llhttp_execute(&c.p, (const char *)out, n);
            if (e != HPE_OK) {
                c.failed = true;
                /* After a request that ends its connection (Connection:
                 * close, HTTP/1.0) evhttp reads nothing more. */
                if (!c.admitted_admin && e != HPE_CLOSED_CONNECTION) {
                    fprintf(stderr, "what the gate passed on does not parse (%s) "
                            "outside an admitted body\n", llhttp_errno_name(e));
                    abort();
                }
            }
        }
        evbuffer_drain(dst, n);
    }
    size_t own = sizeof("GET " ADMIN_GATE_PREFIX "head_too_large HTTP/1.1\r\n"
                        "Host: sluice-gate\r\nConnection: close\r\n\r\n");
    if (out_total > in_total + own) {
        fprintf(stderr, "passed on %zu bytes of %zu\n", out_total, in_total);
        abort();
    }
    evbuffer_free(src);
    evbuffer_free(dst);
    admin_gate_conn_free(g);
    return 0;
}
