/*
 * Shadow traffic (SPEC §3.5, §3.7): a copy of mirror_percentile of an
 * endpoint's requests goes to the mirror version, tagged X-Sluice-Group:
 * shadow. The live request never waits for its copy and never loses a
 * descriptor or a slot to it:
 * - at most limits.max_shadow_inflight copies per worker, and none while
 *   the process holds half of its descriptor limit; each copy is cut after
 *   limits.shadow_timeout_ms. A copy over a bound is dropped and counted
 *   as shadow_dropped;
 * - the copy is held until the live request is read whole (or its body
 *   past SHADOW_HOLD, then streamed), so a request refused part-way never
 *   reaches the mirror as a complete request; a copy that falls
 *   SHADOW_MAX_BEHIND behind is dropped;
 * - what it holds is its own: the request to send (struct upstream_request
 *   with a copy of the client's head and of every string the request
 *   lent it) and the body's bytes. It is sent through the mirror pool's
 *   class (send_head, send_body, send_end), whatever protocol that speaks:
 *   HTTP/1.1, or HTTP/2 (SPEC §9), which a gRPC call's copy needs;
 * - its answer is read and thrown away, unless the version compares
 *   (SPEC §7): then its status and body bytes go to the copy's comparison
 *   (compare.c), whose shadow side this file ends exactly once. A gRPC
 *   call's copy is not compared, and counts as its grpc-status says, as
 *   its live call does.
 *
 * While the live request feeds it, a copy is "attached" and its owner (the
 * request) holds a pointer; a copy that ends then is only marked finished
 * and freed when the request lets go (shadow_complete / shadow_abandon).
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define SHADOW_HOLD (64 * 1024)

struct shadow {
    struct worker *w;
    struct upconn *u;
    struct config *cfg;
    const struct cfg_endpoint *ep;
    int version;
    struct route_shared *slot;
    struct event *timer;            /* shadow_timeout_ms */
    struct evbuffer *held;          /* body bytes not yet handed to the connection */
    struct upstream_request req;    /* the copy to send: its strings in store, */
    struct head hd;                 /* its head a copy of the client's */
    char *store;
    uint64_t t_start_us;
    bool head_sent;                 /* req went to the connection */
    bool grpc;                      /* a gRPC call's copy */
    bool head_method;
    bool attached;                  /* the live request still feeds it */
    bool streaming;                 /* past SHADOW_HOLD: bytes go out as they come */
    bool finished;                  /* ended while attached; freed on detach */
    bool answered_whole;            /* the mirror's response arrived complete */
    int answer;                     /* status of the mirror's response head */
    struct shadow_cmp *cmp;         /* its comparison, NULL when none */
    struct tracing_span *span;      /* its CLIENT span (SPEC §10), NULL when none */
    bool live_handed;               /* the request holds the live side of cmp */
    TAILQ_ENTRY(shadow) link;
};

int gw_fd_limit;

/* End the copy's sides of its comparison: the shadow side always, the
 * live side too when the request never took it. */
static void
cmp_detach(struct shadow *sh)
{
    if (sh->cmp == NULL)
        return;
    struct shadow_cmp *c = sh->cmp;
    sh->cmp = NULL;
    if (!sh->live_handed)
        cmp_end(c, CMP_LIVE, false);
    cmp_end(c, CMP_SHADOW, sh->answered_whole);
}

static void
shadow_free(struct shadow *sh)
{
    struct worker *w = sh->w;
    cmp_detach(sh);
    if (sh->timer != NULL)
        event_free(sh->timer);
    if (sh->held != NULL)
        evbuffer_free(sh->held);
    head_free(&sh->hd);
    free(sh->store);
    TAILQ_REMOVE(&w->shadows, sh, link);
    w->n_shadows--;
    config_drop(sh->cfg);
    free(sh->span);
    free(sh);
}

/*
 * The copy is over: release its connection and slot, count it (status 0 and
 * not dropped: abandoned with its live request, not counted), and free it
 * unless the live request still holds it.
 */
static void
shadow_end(struct shadow *sh, int status, bool dropped, bool count)
{
    if (sh->finished)
        return;
    sh->finished = true;
    if (sh->u != NULL) {
        upconn_close(sh->u);
        sh->u = NULL;
    }
    if (sh->slot != NULL) {
        route_give_slot(sh->slot);
        sh->slot = NULL;
    }
    evtimer_del(sh->timer);
    if (sh->cmp != NULL && (sh->live_handed || !sh->attached))
        cmp_detach(sh);
    if (count)
        account_shadow(sh->w, sh->cfg, sh->ep, sh->version, status,
                       now_us() - sh->t_start_us, dropped);
    if (count && sh->span != NULL)  /* a copy that was sent: its span */
        trace_shadow_end(sh->w, sh->span, sh->answer);
    if (!sh->attached)
        shadow_free(sh);
}

static void
shadow_timeout(evutil_socket_t fd, short what, void *arg)
{
    shadow_end(arg, 504, true, true);
}

/* ---- the connection's reports ----------------------------------------- */

static int
sh_head(void *owner, struct upconn *u)
{
    struct shadow *sh = owner;
    sh->answer = u->status;
    route_eject_success(&u->pool->eject);
    if (sh->cmp != NULL)
        cmp_head(sh->cmp, CMP_SHADOW, u->status);
    return sh->head_method ? 1 : 0;
}

static void
sh_body(void *owner, struct upconn *u, const char *at, size_t len)
{
    struct shadow *sh = owner;
    if (sh->cmp != NULL)
        cmp_body(sh->cmp, CMP_SHADOW, at, len);
    /* else read and dropped */
}

static void
sh_done(void *owner, struct upconn *u, bool reusable)
{
    struct shadow *sh = owner;
    if (sh->grpc) {                 /* counted as its grpc-status says (SPEC §9) */
        int gs = grpc_status_of(u->has_trailers ? &u->trailers : &u->head);
        sh->answer = gs >= 0 ? grpc_http_status(gs) : 502;
    }
    sh->u = NULL;
    /* A copy still being fed cannot hand its connection back. */
    upconn_release(u, reusable && !sh->attached);
    sh->answered_whole = true;
    shadow_end(sh, sh->answer, false, true);
}

static void
sh_failed(void *owner, struct upconn *u, enum up_fail why, bool early)
{
    struct shadow *sh = owner;
    if (why == UPF_CONNECT || why == UPF_RESET)
        upstream_failed(sh->w, u->pool, &sh->ep->versions[sh->version]);
    shadow_end(sh, 502, false, true);
}

static void
sh_drained(void *owner, struct upconn *u)
{
}

static const struct upconn_ops shadow_ops = {
    .on_head = sh_head, .on_body = sh_body, .on_done = sh_done,
    .on_failed = sh_failed, .on_drained = sh_drained, .on_progress = sh_drained,
};

/* ---- feeding ------------------------------------------------------------ */

/* Hand the connection the request (once) and the body held so far. A
 * failure on the way ends the copy (finished): it is freed only once the
 * live request lets go, so the caller keeps it attached meanwhile. */
static void
release_held(struct shadow *sh)
{
    if (sh->u == NULL || sh->finished)
        return;
    if (!sh->head_sent) {
        sh->head_sent = true;
        sh->u->cls->send_head(sh->u, &sh->req);
    }
    size_t n = evbuffer_get_length(sh->held);
    if (n > 0 && sh->u != NULL) {
        sh->u->cls->send_body(sh->u, (const char *)evbuffer_pullup(sh->held, -1), n);
        evbuffer_drain(sh->held, n);
    }
    if (sh->u != NULL)
        upconn_flush(sh->u);
}

/* The request as the copy's own: the client's head copied, and every
 * string that points into the live request (or its stack) copied into
 * one store. Method, scheme and the config's strings stay shared: static,
 * or kept by the copy's config reference. */
static bool
copy_request(struct shadow *sh, const struct upstream_request *ur)
{
    const struct head *hd = ur->hd;
    const char *id = ur->tags.request_id;
    size_t peer = strlen(ur->peer) + 1, idl = strlen(id) + 1;
    size_t cap = ur->path_len + ur->query_len + peer + idl + ur->tracestate_len +
                 TRACING_TRACEPARENT_LEN + 1;
    sh->hd = *hd;
    sh->hd.buf = malloc(hd->len > 0 ? hd->len : 1);
    sh->hd.cap = hd->len;
    sh->store = malloc(cap);
    if (sh->hd.buf == NULL || sh->store == NULL)
        return false;
    memcpy(sh->hd.buf, hd->buf, hd->len);
    sh->req = *ur;
    sh->req.hd = &sh->hd;
    char *at = sh->store;
#define COPY(field, len) do { \
        memcpy(at, (field), (len)); (field) = at; at += (len); \
    } while (0)
    COPY(sh->req.path, ur->path_len);
    if (ur->query != NULL)
        COPY(sh->req.query, ur->query_len);
    COPY(sh->req.peer, peer);
    COPY(sh->req.tags.request_id, idl);
    if (ur->traceparent != NULL)
        COPY(sh->req.traceparent, TRACING_TRACEPARENT_LEN);
    if (ur->tracestate_len > 0)
        COPY(sh->req.tracestate, ur->tracestate_len);
#undef COPY
    return true;
}

struct shadow *
shadow_start(struct worker *w, struct config *cfg, const struct cfg_endpoint *ep, int vi,
             const struct upstream_request *ur, bool grpc, bool head_method,
             const uint8_t trace_id[16], const struct tracing_span *span)
{
    const struct cfg_limits *lim = &w->cfg->limits;
    struct upool *pool = NULL;
    /* A gRPC call's copy is not compared (README: its bodies are messages
     * in frames, its outcome in trailers). */
    bool compares = ep->versions[vi].compare.mode != CFG_COMPARE_OFF && !grpc;

    if (w->n_shadows >= lim->max_shadow_inflight ||
        __atomic_load_n(&gw_open_fds, __ATOMIC_RELAXED) >= gw_fd_limit / 2 ||
        upstream_pick(w, cfg, ep, vi, NULL, &pool) != PICK_OK) {
        account_shadow(w, cfg, ep, vi, 0, 0, true);
        if (compares)               /* a dropped copy is an unknown comparison */
            account_compare(w, cfg, ep, vi, CMP_UNKNOWN, NULL);
        return NULL;
    }
    struct shadow *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        route_give_slot(pool->shared);
        if (compares)
            account_compare(w, cfg, ep, vi, CMP_UNKNOWN, NULL);
        return NULL;
    }
    if (compares) {
        sh->cmp = cmp_new(w, cfg, ep, vi, ur->tags.request_id);
        cmp_set_trace(sh->cmp, trace_id);
    }
    if (span != NULL && (sh->span = malloc(sizeof(*sh->span))) != NULL) {
        *sh->span = *span;
        TRACING_SET(sh->span->upstream, pool->address, strlen(pool->address));
    }
    sh->w = w;
    sh->cfg = config_take(cfg);
    sh->ep = ep;
    sh->version = vi;
    sh->slot = pool->shared;
    sh->grpc = grpc;
    sh->head_method = head_method;
    sh->attached = true;
    sh->t_start_us = now_us();
    TAILQ_INSERT_TAIL(&w->shadows, sh, link);
    w->n_shadows++;
    sh->timer = evtimer_new(w->base, shadow_timeout, sh);
    sh->held = evbuffer_new();
    if (sh->timer == NULL || sh->held == NULL || !copy_request(sh, ur) ||
        (sh->u = upconn_acquire(w, pool, &shadow_ops, sh, false)) == NULL) {
        shadow_end(sh, 502, false, true);
        return sh;                  /* finished; freed when the request lets go */
    }
    struct timeval tv = {lim->shadow_timeout_ms / 1000,
                         (lim->shadow_timeout_ms % 1000) * 1000};
    evtimer_add(sh->timer, &tv);
    return sh;
}

void
shadow_body(struct shadow *sh, const char *at, size_t len)
{
    if (sh->finished)
        return;
    if (sh->streaming &&
        upconn_backlog(sh->u) + len > SHADOW_MAX_BEHIND) {
        shadow_end(sh, 0, true, true);      /* the mirror cannot keep up */
        return;
    }
    evbuffer_add(sh->held, at, len);
    if (sh->streaming || evbuffer_get_length(sh->held) > SHADOW_HOLD) {
        sh->streaming = true;
        release_held(sh);
    }
}

struct shadow_cmp *
shadow_complete(struct shadow *sh)
{
    struct shadow_cmp *c = sh->cmp;
    sh->live_handed = c != NULL;
    release_held(sh);               /* still attached: a failure only finishes it */
    if (sh->u != NULL && !sh->finished)
        sh->u->cls->send_end(sh->u);
    if (sh->u != NULL && !sh->finished)
        upconn_flush(sh->u);
    sh->attached = false;
    if (sh->finished)
        shadow_free(sh);            /* ends the shadow side; the live side is the request's */
    return c;
}

void
shadow_abandon(struct shadow *sh)
{
    sh->attached = false;
    if (sh->finished)
        shadow_free(sh);
    else
        shadow_end(sh, 0, false, false);
}

void
shadows_free_all(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->shadows)) {
        struct shadow *sh = TAILQ_FIRST(&w->shadows);
        sh->attached = false;
        if (sh->finished)
            shadow_free(sh);
        else
            shadow_end(sh, 0, false, false);
    }
}
