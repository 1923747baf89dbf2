/*
 * The request's life, whatever protocol its client speaks (gateway/
 * internal.h, "the request's life"): endpoint, auth, version, shadow
 * copies, the concurrency slot or the wait queue, the upstream exchange,
 * the response streamed back, comparisons, and its one end.
 *
 * A request goes through these phases, one at a time:
 *
 *   RP_HEAD      its head is being read (the header deadline runs)
 *   RP_QUEUED    routed, waiting for a concurrency slot; its body unread
 *   RP_UPSTREAM  sent (or being sent) to a model server, no answer yet
 *   RP_RESPONDING  the model server's response streams to the client
 *   RP_ANSWERED  its response was handed whole to the client: relayed, or
 *                Sluice's own reply (the rest of the body is read and
 *                dropped, or the exchange ends)
 *
 * A request ends in exactly one place, request_end() (exchange.c), once it
 * is answered and read whole (or its client is going away): it writes the
 * access-log line and counts it once (account.c), releases its slot,
 * leaves the wait queue, lets go of its shadow copies and its upstream
 * connection, drops its config snapshot, and hands its client back
 * (client_ops.ended). Why it ended is an enum req_cause.
 *
 * This file is the way in — the head to an endpoint (the scoring URL, the
 * Open Inference Protocol's REST URL, a gRPC method or its model name),
 * auth, the version, the shadow copies — and the body; exchange.c the
 * slot, the upstream exchange and the end. This file never sees a socket or a protocol's bytes: the client side is
 * struct client with its client_ops (client_h1.c for HTTP/1.1), the model
 * server an upstream connection of its pool's struct upstream_class.
 * tests/unit/test_request.c drives it with a fake client and a fake
 * upstream through every way a request ends.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- small helpers ------------------------------------------------------- */

/* ---- birth and recycling ---------------------------------------------------- */

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);
static void hdr_timer_cb(evutil_socket_t fd, short what, void *arg);

struct request *
request_new(struct client *c)
{
    struct worker *w = c->w;
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
    /* Everything before the head zeroed; the head emptied in place (its
     * buffer kept; copying the 2 KiB struct out and back cost more than
     * the rest of this). */
    memset(r, 0, offsetof(struct request, head));
    r->timer = timer;
    r->hdr_timer = hdr_timer;
    head_reset(&r->head);
    r->c = c;
    r->version = -1;
    r->grpc_status = -1;
    r->cfg = config_take(w->cfg);
    return r;
}

void
request_arm_header_deadline(struct request *r, int ms)
{
    worker_arm(r->c->w, r->hdr_timer, ms, ms == r->c->w->cfg->limits.header_timeout_ms);
}

/* ---- the one end of a request ----------------------------------------------- */

/* ---- Sluice's own replies ----------------------------------------------------- */

/* ---- the upstream exchange (the connection reports through req_ops) ----------- */

/* ---- routing a request ------------------------------------------------------ */

static void
req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct client *c = r->c;

    if (r->phase == RP_QUEUED)
        request_reply(r, RC_OVERLOADED, "the version stayed at replica_max_concurrent_requests "
                      "for longer than max_request_wait_time_ms", false);
    else
        request_reply(r, RC_UPSTREAM_TIMEOUT,
                      "the model server did not answer within scoring_timeout_ms",
                      !r->body_done);
    request_maybe_end(r);
    c->ops->run(c);
}

/* header_timeout_ms passed before the request was read whole. */
static void
hdr_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;
    struct client *c = r->c;

    if (!r->body_done && r->phase != RP_ANSWERED) {
        request_reply(r, RC_CLIENT_TIMEOUT, r->routed ?
                      "request body not received within header_timeout_ms" :
                      "request headers not received within header_timeout_ms", true);
        request_maybe_end(r);
        c->ops->run(c);
        return;
    }
    if (r->phase == RP_ANSWERED && !r->body_done)
        c->ops->abort(c, r);        /* answered, but the rest never came */
}

/* Authenticate the request for ep (SPEC §3.2); false with a 401 sent. */
static bool
check_auth(struct request *r, const struct cfg_endpoint *ep)
{
    struct auth_memo *m = r->c->auth;
    struct head *hd = &r->head;
    int az = hd->first[HC_AUTHORIZATION];
    const char *cred = az >= 0 ? HD_VAL(hd, az) : NULL;
    uint32_t len = az >= 0 ? hd->h[az].val_len : 0;
    time_t now = 0;

    if (!ep->auth_keys && !ep->auth_tokens)
        return true;
    int epi = (int)(ep - r->cfg->endpoints);
    /* Generations are never reused (an address could be). */
    if (cred != NULL && m->cred != NULL && m->gen == r->cfg->generation &&
        m->ep == epi && len == m->len && auth_same(cred, m->cred, len)) {
        if (m->until == 0)
            return true;
        now = time(NULL);
        if (now <= m->until)
            return true;
    }
    time_t until = 0;
    struct auth_ctx *ax = r->c->w->auth;
    enum auth_status st = ax == NULL ? AUTH_NOT_ALLOWED :
        auth_check(ax, ep, cred, len, now ? now : time(NULL), &until);
    if (st != AUTH_OK) {
        request_reply(r, RC_UNAUTHORIZED, auth_status_reason(st), false);
        return false;
    }
    char *copy = realloc(m->cred, len ? len : 1);
    if (copy != NULL) {
        memcpy(copy, cred, len);
        m->cred = copy;
        m->len = len;
        m->gen = r->cfg->generation;
        m->ep = epi;
        m->until = until;
    }
    return true;
}

/* Start the shadow copies of this request (mirror versions, by share). A
 * gRPC call's copy goes only to a version that speaks HTTP/2 to its model
 * servers (SPEC §9: else a failed copy, as the call would be a 502). The
 * body read before the copies began (a gRPC call routed by its first
 * message's model name) is theirs too. */
static void
start_shadows(struct request *r, struct ep_state *es)
{
    struct client *c = r->c;
    const struct cfg_endpoint *ep = r->ep;
    for (int i = 0; i < ep->n_versions; i++) {
        if (ep->versions[i].mirror <= 0 ||
            !route_mirror_next(&es->mirror_acc[i], ep->versions[i].mirror))
            continue;
        const struct cfg_version *v = &ep->versions[i];
        if (r->grpc && !v->upstream_http2) {
            account_shadow(c->w, r->cfg, ep, i, 502, 0, false);
            continue;
        }
        bool own_path = v->path != NULL && !r->keep_path;
        struct upstream_request ur = {
            .method = llhttp_method_name(r->line.method),
            .path = own_path ? v->path : r->head.buf + r->target.path_off,
            .path_len = own_path ? strlen(v->path) : r->target.path_len,
            .query = r->target.has_query ? r->head.buf + r->target.query_off : NULL,
            .query_len = r->target.query_len,
            .hd = &r->head, .peer = c->peer, .proto = c->proto,
            .default_host = v->upstreams[0].address,
            .tags = {v->name, "shadow", r->id, false},
            .framing = r->up_framing, .content_length = r->line.content_length,
        };
        char tp[TRACING_TRACEPARENT_LEN];
        struct tracing_span span;
        struct tracing_span *sp = trace_shadow_hop(r, &ur, tp, v, &span);
        struct shadow *sh = shadow_start(c->w, r->cfg, ep, i, &ur, r->grpc, r->head_method,
                                         r->trace.ctx.trace_id, sp);
        if (sh == NULL)
            continue;
        r->shadows[r->n_shadows++] = sh;
        size_t n = r->held != NULL ? evbuffer_get_length(r->held) : 0;
        if (n > 0)
            shadow_body(sh, (const char *)evbuffer_pullup(r->held, -1), n);
    }
}

/* The endpoint is known: authenticate, choose the version (a pin, given
 * by the path or X-Sluice-Version; the sticky key; the split), start the
 * shadow copies and route. Returns true when the request waits for a slot. */
static bool
route_to(struct request *r, const struct cfg_endpoint *ep, const char *pin, size_t pinlen)
{
    struct worker *w = r->c->w;
    struct head *hd = &r->head;
    char msg[200];

    r->ep = ep;
    if (!check_auth(r, ep))
        return false;
    if (pin == NULL && hd->pin >= 0 && ep->pinning) {
        pin = HD_VAL(hd, hd->pin);
        pinlen = hd->h[hd->pin].val_len;
    }
    if (pin != NULL) {
        int vi = route_pinned(ep, pin, pinlen);
        if (vi < 0) {
            int vl = pinlen > 64 ? 64 : (int)pinlen;
            snprintf(msg, sizeof(msg), vi == ROUTE_PIN_REFUSED ?
                     "endpoint %s: version %.*s was rolled back or aborted and takes no "
                     "pinned requests until it is changed again" :
                     "endpoint %s has no version %.*s", ep->name, vl, pin);
            request_reply(r, RC_NOT_FOUND, msg, false);
            return false;
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
            start_shadows(r, es);
    }
    r->routed = true;
    if (r->grpc && !ep->versions[r->version].upstream_http2) {
        snprintf(msg, sizeof(msg), "version %s speaks HTTP/1.1 to its model servers: a gRPC "
                 "call needs \"upstream_protocol\": \"http2\"", ep->versions[r->version].name);
        request_reply(r, RC_UPSTREAM_CONNECT, msg, false);
        return false;
    }
    request_route(r);
    /* A queued request's body stays unread until it gets a slot. */
    return r->phase == RP_QUEUED;
}

#define OIP_SERVICE "/inference.GRPCInferenceService/"

/* ServerLive and ServerReady without x-sluice-endpoint: Sluice answers
 * (live and ready while it serves): field 1 (bool) true. */
static void
grpc_answer_here(struct request *r)
{
    static const char msg[] = {0, 0, 0, 0, 2, 0x08, 0x01};
    struct head hd, tr;
    memset(&hd, 0, sizeof(hd));
    memset(&tr, 0, sizeof(tr));
    head_field(&hd, "content-type", 12);
    head_value(&hd, "application/grpc", 16);
    head_classify(&hd);
    head_field(&tr, "grpc-status", 11);
    head_value(&tr, "0", 1);
    head_classify(&tr);
    struct resp_info ri = {.status = 200, .hd = &hd};
    struct client *c = r->c;
    r->status = 200;
    r->grpc_status = 0;
    r->phase = RP_ANSWERED;
    r->discard = true;
    c->ops->send_head(c, r, &ri);
    c->ops->send_body(c, r, msg, sizeof(msg));
    c->ops->send_end(c, r, &tr);
    head_free(&hd);
    head_free(&tr);
}

bool
request_start(struct request *r)
{
    struct head *hd = &r->head;
    char msg[200];

    r->up_framing = r->line.chunked ? FRAME_CHUNKED :
        r->line.has_length ? FRAME_LENGTH : FRAME_NONE;
    int ex = hd->first[HC_EXPECT];
    /* The client waits for 100 Continue before its body; there is none to
     * wait for with Content-Length: 0. */
    r->expect_continue = ex >= 0 && r->line.minor >= 1 && r->up_framing != FRAME_NONE &&
        !(r->line.has_length && r->line.content_length == 0) &&
        hd->h[ex].val_len == 12 && strncasecmp(HD_VAL(hd, ex), "100-continue", 12) == 0;

    const char *path = hd->buf + r->target.path_off;
    size_t plen = r->target.path_len;
    const char *epname, *ver = NULL;
    size_t eplen, verlen = 0;
    const struct cfg_endpoint *ep = NULL;
    if (req_score_path(path, plen, &epname, &eplen))
        ep = config_endpoint(r->cfg, epname, eplen);
    else if (req_v2_path(path, plen, &epname, &eplen, &ver, &verlen)) {
        r->keep_path = true;
        ep = config_endpoint(r->cfg, epname, eplen);
    } else if ((r->grpc = grpc_is(hd))) {
        r->keep_path = true;
        int gt = grpc_header(hd, "grpc-timeout");
        if (gt >= 0 && !grpc_timeout_parse(HD_VAL(hd, gt), hd->h[gt].val_len,
                                           &r->grpc_timeout_ms))
            r->grpc_timeout_ms = 0;
        int xe = grpc_header(hd, "x-sluice-endpoint");
        const char *m = path + sizeof(OIP_SERVICE) - 1;
        size_t ml = plen - (sizeof(OIP_SERVICE) - 1);
        bool oip = plen > sizeof(OIP_SERVICE) - 1 &&
                   memcmp(path, OIP_SERVICE, sizeof(OIP_SERVICE) - 1) == 0;
        if (xe >= 0)
            ep = config_endpoint(r->cfg, HD_VAL(hd, xe), hd->h[xe].val_len);
        else if (oip && ((ml == 10 && memcmp(m, "ServerLive", 10) == 0) ||
                         (ml == 11 && memcmp(m, "ServerReady", 11) == 0))) {
            grpc_answer_here(r);
            return false;
        } else if (oip && ((ml == 10 && memcmp(m, "ModelInfer", 10) == 0) ||
                           (ml == 10 && memcmp(m, "ModelReady", 10) == 0) ||
                           (ml == 13 && memcmp(m, "ModelMetadata", 13) == 0))) {
            /* Routed by the model name in the first message (request_body). */
            r->await_name = true;
            return false;
        }
    }
    if (ep == NULL) {
        int pl = plen > 128 ? 128 : (int)plen;
        snprintf(msg, sizeof(msg), "no endpoint at %.*s", pl, path);
        request_reply(r, RC_NOT_FOUND, msg, false);
        return false;
    }
    return route_to(r, ep, ver, verlen);
}

#define HELD_MAX (64 * 1024)        /* bytes read for a model name at most */

/* A gRPC call waiting for its model name: the first message's field 1. */
static void
await_name(struct request *r, const char *at, size_t len)
{
    char msg[200];
    if (r->held == NULL && (r->held = evbuffer_new()) == NULL) {
        request_reply(r, RC_TOO_LARGE, "out of memory", true);
        return;
    }
    evbuffer_add(r->held, at, len);
    size_t n = evbuffer_get_length(r->held);
    const char *data = (const char *)evbuffer_pullup(r->held, -1);
    const char *name;
    size_t nlen;
    enum grpc_name g = grpc_model_name(data, n, &name, &nlen);
    if (g == GRPC_NAME_MORE && n < HELD_MAX && !r->body_done)
        return;
    r->await_name = false;
    if (g != GRPC_NAME_FOUND) {
        request_reply(r, RC_BAD_REQUEST, "the first message names no model (field 1)", false);
        return;
    }
    const struct cfg_endpoint *ep = config_endpoint(r->cfg, name, nlen);
    if (ep == NULL) {
        int nl = nlen > 64 ? 64 : (int)nlen;
        snprintf(msg, sizeof(msg), "no endpoint named %.*s", nl, name);
        request_reply(r, RC_NOT_FOUND, msg, false);
        return;
    }
    route_to(r, ep, NULL, 0);
}

/* ---- the body ------------------------------------------------------------------ */

bool
request_body(struct request *r, const char *at, size_t len)
{
    r->body_in += len;
    if (r->body_in > r->c->w->cfg->limits.max_body_bytes) {
        request_reply(r, RC_TOO_LARGE, "the request body is over max_body_bytes", true);
        return false;
    }
    for (int i = 0; i < r->n_shadows; i++)
        shadow_body(r->shadows[i], at, len);
    if (r->await_name)
        await_name(r, at, len);
    else if (!r->discard && r->up != NULL)
        r->up->cls->send_body(r->up, at, len);
    else if (!r->discard && r->held != NULL)
        evbuffer_add(r->held, at, len);     /* queued with what it held */
    return true;
}

void
request_body_end(struct request *r)
{
    r->body_done = true;
    if (r->await_name)
        await_name(r, "", 0);       /* the body ended without a model name */
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
    if (r->up != NULL && !r->discard)
        r->up->cls->send_end(r->up);
    evtimer_del(r->hdr_timer);
}
