/*
 * HTTP/2 header lists (gateway/h2.h): values in, fields out, nothing of a
 * session. What compose.c is to HTTP/1.1 heads: the relayed response
 * (hop-by-hop, framing and X-Sluice-* headers dropped, names lowercase,
 * our tags added), Sluice's JSON error replies and gRPC's Trailers-Only
 * errors, and trailers copied for later.
 */
#include "gateway/conn.h"
#include "gateway/h2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

static void
add_flags(struct h2_fields *f, const char *name, size_t nlen, const char *value, size_t vlen,
          uint8_t flags)
{
    if (f->n >= H2_MAX_FIELDS)
        return;
    /* nghttp2 copies them (no NO_COPY flags) and never writes to them. */
    f->nv[f->n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)name, (uint8_t *)(uintptr_t)value,
                                 nlen, vlen, flags};
}

static void
add(struct h2_fields *f, const char *name, size_t nlen, const char *value, size_t vlen)
{
    add_flags(f, name, nlen, value, vlen, NGHTTP2_NV_FLAG_NONE);
}

/* A literal name: lowercase and static, so nghttp2 need not copy it (nor
 * lowercase it again). */
#define ADD(f, n, val) add_flags((f), (n), sizeof(n) - 1, (val), strlen(val), \
                                 NGHTTP2_NV_FLAG_NO_COPY_NAME)

static void
add_tags(struct h2_fields *f, const struct tags *t)
{
    if (t->version != NULL) {
        ADD(f, "x-sluice-version", t->version);
        ADD(f, "x-sluice-group", t->group);
    }
    if (t->failover)
        ADD(f, "x-sluice-failover", "true");
    /* New on every response: never in the HPACK dynamic table, where it
     * would evict reusable entries and lengthen every lookup of its name. */
    add_flags(f, "x-request-id", 12, t->request_id, strlen(t->request_id),
              NGHTTP2_NV_FLAG_NO_INDEX | NGHTTP2_NV_FLAG_NO_COPY_NAME);
}

/* n in decimal, NUL-terminated (out has room for 21 bytes): snprintf cost
 * more than the rest of composing a response. */
static const char *
dec(char *out, uint64_t n)
{
    out[fmt_u64(out, n)] = '\0';
    return out;
}

static void
lower(char *out, const char *in, size_t n)
{
    for (size_t j = 0; j < n; j++)
        out[j] = in[j] >= 'A' && in[j] <= 'Z' ? (char)(in[j] + 32) : in[j];
}

void
h2_fields_prime(nghttp2_nv *nv, size_t n, bool *primed)
{
    if (*primed)
        return;
    *primed = true;
    for (size_t i = 0; i < n; i++)
        nv[i].flags &= (uint8_t)~NGHTTP2_NV_FLAG_NO_INDEX;
}

void
h2_fields_response(struct h2_fields *f, const struct resp_info *ri, const struct tags *t)
{
    f->n = 0;
    dec(f->status, (uint64_t)(unsigned)ri->status);
    ADD(f, ":status", f->status);
    const struct head *hd = ri->hd;
    int k = 0;
    for (int i = 0; i < hd->n && k < GW_MAX_HEADERS; i++) {
        switch (hd->cls[i]) {
        case HC_HOP: case HC_CONNECTION: case HC_CONTENT_LENGTH:
        case HC_TRANSFER_ENCODING: case HC_SLUICE: case HC_REQUEST_ID:
            continue;               /* hop-by-hop, framing, or ours */
        default:
            break;
        }
        size_t nl = hd->h[i].name_len;
        if (nl == 0 || nl >= sizeof(f->lower[0]))
            continue;               /* (keep-alive, upgrade...: HC_HOP, above) */
        if (hd->lowercase) {        /* nghttp2 copies it at once (no NO_COPY) */
            add(f, HD_NAME(hd, i), nl, HD_VAL(hd, i), hd->h[i].val_len);
            continue;
        }
        lower(f->lower[k], HD_NAME(hd, i), nl);
        add(f, f->lower[k++], nl, HD_VAL(hd, i), hd->h[i].val_len);
    }
    if (ri->has_length && ri->status != 204) {
        dec(f->length, ri->content_length);
        ADD(f, "content-length", f->length);
    }
    add_tags(f, t);
}

void
h2_fields_error(struct h2_fields *f, int status, size_t body_len, const struct tags *t)
{
    f->n = 0;
    dec(f->status, (uint64_t)(unsigned)status);
    dec(f->length, body_len);
    ADD(f, ":status", f->status);
    ADD(f, "content-type", "application/json");
    ADD(f, "content-length", f->length);
    add_tags(f, t);
    if (status == 401)
        ADD(f, "www-authenticate", "Bearer");
    if (status == 503)
        ADD(f, "retry-after", "1");
}

void
h2_fields_grpc_error(struct h2_fields *f, int status, const char *message,
                     const struct tags *t)
{
    f->n = 0;
    snprintf(f->grpc_status, sizeof(f->grpc_status), "%d", grpc_status_for_http(status));
    grpc_message_encode(f->grpc_message, sizeof(f->grpc_message), message);
    ADD(f, ":status", "200");
    ADD(f, "content-type", "application/grpc");
    ADD(f, "grpc-status", f->grpc_status);
    ADD(f, "grpc-message", f->grpc_message);
    add_tags(f, t);
}

size_t
h2_fields_copy(const struct head *hd, nghttp2_nv **nva, char **store)
{
    *nva = calloc((size_t)hd->n + 1, sizeof(nghttp2_nv));
    *store = malloc(hd->len + 1);
    if (*nva == NULL || *store == NULL) {
        free(*nva);
        free(*store);
        *nva = NULL;
        *store = NULL;
        return 0;
    }
    char *at = *store;
    size_t n = 0;
    for (int i = 0; i < hd->n; i++) {
        size_t nl = hd->h[i].name_len, vl = hd->h[i].val_len;
        char *name = at;
        lower(at, HD_NAME(hd, i), nl);
        at += nl;
        char *value = at;
        memcpy(at, HD_VAL(hd, i), vl);
        at += vl;
        (*nva)[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nl, vl,
                                   NGHTTP2_NV_FLAG_NONE};
    }
    return n;
}

/* ---- a request to an HTTP/2 upstream ----------------------------------------------- */

static void
lower_copy(char **at, const char *s, size_t n, bool already)
{
    if (already)
        memcpy(*at, s, n);
    else
        lower(*at, s, n);
    *at += n;
}

static size_t
len0(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

size_t
h2_fields_request_room(const struct upstream_request *r)
{
    return r->hd->len + r->path_len + r->query_len + 1024 + strlen(r->peer) +
           len0(r->default_host) + TRACING_TRACEPARENT_LEN + r->tracestate_len +
           len0(r->method) + len0(r->proto) + len0(r->tags.version) + len0(r->tags.group) +
           len0(r->tags.request_id) + len0(r->grpc_timeout);
}

size_t
h2_fields_request(const struct upstream_request *r, nghttp2_nv *nva, char *store)
{
    char *at = store;
    size_t n = 0;
    const struct head *hd = r->hd;
/* Every name is lowercase and every value is in store or a literal, and
 * store lives until the HEADERS frame is out (or cancelled): nghttp2
 * copies nothing (NO_COPY_NAME, NO_COPY_VALUE). A value that is new on
 * every request (its id, its trace) is never indexed: each would evict a
 * reusable entry, and nghttp2's table lookup compares a name's every
 * entry (NV1). */
#define KEEP (NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE)
#define NVF(name_, nlen_, val_, vlen_, flags_) do { \
        nva[n++] = (nghttp2_nv){(uint8_t *)(uintptr_t)(name_), \
            (uint8_t *)(uintptr_t)(val_), (nlen_), (vlen_), (flags_) | KEEP}; \
    } while (0)
/* NV: a literal value; NVC, NVC1: a value copied into store first. */
#define NV(name_, nlen_, val_, vlen_) NVF(name_, nlen_, val_, vlen_, 0)
#define NVC_(name_, nlen_, val_, vlen_, flags_) do { \
        char *v_ = at; size_t l_ = (vlen_); \
        memcpy(at, (val_), l_); \
        at += l_; \
        NVF(name_, nlen_, v_, l_, flags_); \
    } while (0)
#define NVC(name_, nlen_, val_, vlen_) NVC_(name_, nlen_, val_, vlen_, 0)
#define NVC1(name_, nlen_, val_, vlen_) NVC_(name_, nlen_, val_, vlen_, NGHTTP2_NV_FLAG_NO_INDEX)
    NVC(":method", 7, r->method, strlen(r->method));
    char *path = at;
    memcpy(at, r->path, r->path_len);
    at += r->path_len;
    if (r->query != NULL) {
        *at++ = '?';
        memcpy(at, r->query, r->query_len);
        at += r->query_len;
    }
    NVF(":path", 5, path, (size_t)(at - path), 0);
    NV(":scheme", 7, "http", 4);
    int host = hd->first[HC_HOST];
    if (host >= 0)
        NVC(":authority", 10, HD_VAL(hd, host), hd->h[host].val_len);
    else if (r->default_host != NULL)
        NVC(":authority", 10, r->default_host, strlen(r->default_host));
    const char *xff = NULL;
    size_t xff_len = 0;
    for (int i = 0; i < hd->n; i++) {
        if (hd->cls[i] == HC_XFF && xff == NULL) {
            xff = HD_VAL(hd, i);
            xff_len = hd->h[i].val_len;
        }
        if (hd->cls[i] != HC_OTHER && hd->cls[i] != HC_COOKIE)
            continue;               /* hop-by-hop, framing, credentials, ours, Host */
        /* (te, keep-alive, upgrade, proxy-connection are HC_HOP) */
        if (r->grpc_timeout != NULL && head_name_is(hd, i, "grpc-timeout"))
            continue;
        char *name = at;
        lower_copy(&at, HD_NAME(hd, i), hd->h[i].name_len, hd->lowercase);
        NVC(name, hd->h[i].name_len, HD_VAL(hd, i), hd->h[i].val_len);
    }
    /* gRPC needs "te: trailers" end to end (RFC 9113 §8.2.2 allows only it). */
    for (int i = 0; hd->first[HC_HOP] >= 0 && i < hd->n; i++)
        if (hd->cls[i] == HC_HOP && head_name_is(hd, i, "te") && hd->h[i].val_len == 8 &&
            strncasecmp(HD_VAL(hd, i), "trailers", 8) == 0)
            NV("te", 2, "trailers", 8);
    char *x = at;
    if (xff != NULL) {
        memcpy(at, xff, xff_len);
        at += xff_len;
        memcpy(at, ", ", 2);
        at += 2;
    }
    memcpy(at, r->peer, strlen(r->peer));
    at += strlen(r->peer);
    NVF("x-forwarded-for", 15, x, (size_t)(at - x), 0);
    NVC("x-forwarded-proto", 17, r->proto, strlen(r->proto));
    if (r->tags.version != NULL) {
        NVC("x-sluice-version", 16, r->tags.version, strlen(r->tags.version));
        NVC("x-sluice-group", 14, r->tags.group, strlen(r->tags.group));
    }
    if (r->tags.failover)
        NV("x-sluice-failover", 17, "true", 4);
    NVC1("x-request-id", 12, r->tags.request_id, strlen(r->tags.request_id));
    if (r->traceparent != NULL)     /* this hop's (SPEC §10): the caller's is on its stack */
        NVC1("traceparent", 11, r->traceparent, TRACING_TRACEPARENT_LEN);
    if (r->tracestate_len > 0)
        NVC("tracestate", 10, r->tracestate, r->tracestate_len);
    if (r->grpc_timeout != NULL)
        NVC("grpc-timeout", 12, r->grpc_timeout, strlen(r->grpc_timeout));
    char *cl = at;
    if (r->framing == FRAME_LENGTH) {
        at += fmt_u64(at, r->content_length);
        NVF("content-length", 14, cl, (size_t)(at - cl), 0);
    }
#undef NVC1
#undef NVC
#undef NVC_
#undef NV
#undef NVF
#undef KEEP
    return n;
}

/* ---- requests in ------------------------------------------------------------------- */

static const struct { const char *name; uint8_t len; int method; } methods[] = {
#define M(n, m) {n, sizeof(n) - 1, m}
    M("POST", HTTP_POST), M("GET", HTTP_GET), M("PUT", HTTP_PUT), M("HEAD", HTTP_HEAD),
    M("DELETE", HTTP_DELETE), M("OPTIONS", HTTP_OPTIONS), M("PATCH", HTTP_PATCH),
    M("TRACE", HTTP_TRACE),
#undef M
};

static bool
is(const char *a, size_t alen, const char *lit)
{
    return alen == strlen(lit) && memcmp(a, lit, alen) == 0;
}

int
h2_request_field(struct head *hd, const char *name, size_t nlen, const char *value,
                 size_t vlen, int *method)
{
    int rc = 0;
    hd->lowercase = true;           /* nghttp2 refuses uppercase names */
    if (nlen > 0 && name[0] == ':') {
        if (is(name, nlen, ":path"))
            rc = head_url(hd, value, vlen);
        else if (is(name, nlen, ":authority")) {
            if ((rc = head_field(hd, "host", 4)) == 0)
                rc = head_value(hd, value, vlen);
        } else if (is(name, nlen, ":method")) {
            *method = -1;
            for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++)
                if (vlen == methods[k].len && memcmp(value, methods[k].name, vlen) == 0) {
                    *method = methods[k].method;
                    break;
                }
        }
        /* :scheme: the listener's own is what X-Forwarded-Proto says. */
    } else if ((rc = head_field(hd, name, nlen)) == 0)
        rc = head_value(hd, value, vlen);
    return rc < 0 ? -1 : 0;
}

void
h2_request_line(struct request *r, int method, bool end_stream)
{
    uint64_t length;
    bool has_length = head_length(&r->head, &length);
    /* Validated as HTTP/1.1 (nghttp2 checked HTTP/2's own rules). */
    r->line = (struct req_line){
        .method = method < 0 ? HTTP_POST : method, .major = 1, .minor = 1,
        .chunked = !end_stream && !has_length, .has_length = has_length,
        .content_length = length, .fields_checked = true,
    };
    r->head_method = method == HTTP_HEAD;
}

/* ---- the connection's first bytes and its floods ------------------------------------ */

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24

int
h2_preface(struct evbuffer *in)
{
    char buf[H2_PREFACE_LEN];
    size_t n = evbuffer_get_length(in);
    if (n > H2_PREFACE_LEN)
        n = H2_PREFACE_LEN;
    evbuffer_copyout(in, buf, n);
    if (memcmp(buf, H2_PREFACE, n) != 0)
        return 0;
    return n == H2_PREFACE_LEN ? 1 : -1;
}

#define STREAM_WINDOW (256 * 1024)      /* per stream, announced */
#define CONN_WINDOW (1024 * 1024)       /* per connection */

int
h2_server_new(nghttp2_session **ng, const nghttp2_session_callbacks *cb, void *user,
              const struct cfg_limits *lim)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        return NGHTTP2_ERR_NOMEM;
    uint64_t max = (uint64_t)lim->h2_max_concurrent_streams;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_stream_reset_rate_limit(opt, max, max);
    int rc = nghttp2_session_server_new3(ng, cb, user, opt, h2_mem());
    nghttp2_option_del(opt);
    if (rc != 0)
        return rc;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)max},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)lim->max_header_bytes},
    };
    nghttp2_submit_settings(*ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(*ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW);
    return 0;
}

bool
h2_flood_frame(struct h2_flood *f, uint8_t type, uint8_t flags, size_t length,
               int max_streams, uint64_t now_us)
{
    if (now_us - f->second_start_us > 1000000) {
        f->second_start_us = now_us;
        f->resets = f->pings = f->settings = f->empty_data = 0;
    }
    switch (type) {
    case NGHTTP2_PING:
        return ++f->pings > H2_FLOOD_FRAMES;
    case NGHTTP2_SETTINGS:
        return ++f->settings > H2_FLOOD_FRAMES;
    case NGHTTP2_DATA:
        return length == 0 && !(flags & NGHTTP2_FLAG_END_STREAM) &&
               ++f->empty_data > H2_FLOOD_FRAMES;
    case NGHTTP2_RST_STREAM:
        return ++f->resets > max_streams;
    case NGHTTP2_HEADERS:
        f->continuations = 0;
        return false;
    case NGHTTP2_CONTINUATION:
        return ++f->continuations > H2_MAX_CONTINUATIONS;
    default:
        return false;
    }
}

ssize_t
h2_source_read(struct evbuffer *out, bool eof, bool *deferred, uint8_t *buf, size_t len,
               uint32_t *flags)
{
    size_t have = out != NULL ? evbuffer_get_length(out) : 0;
    if (have == 0 && !eof) {
        *deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = have < len ? have : len;
    if (n > 0)
        evbuffer_remove(out, buf, n);
    if (eof && have == n)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}
