/*
 * Shadow traffic (SPEC §3.5, §3.7): a copy of mirror_percentile of an
 * endpoint's requests goes to the mirror version, tagged X-Sluice-Group:
 * shadow. The live request never waits for its copy and never loses a
 * descriptor or a slot to it:
 * - at most limits.max_shadow_inflight copies per worker, and none while
 *   the process holds half of its descriptor limit; each copy is cut after
 *   limits.shadow_timeout_ms. A copy over a bound is dropped and counted
 *   as shadow_dropped;
 * - the copy's bytes are held until the live request is read whole (or
 *   past SHADOW_HOLD, then streamed), so a request refused part-way never
 *   reaches the mirror as a complete request; a copy that falls
 *   SHADOW_MAX_BEHIND behind is dropped;
 * - its answer is read and thrown away, unless the version compares
 *   (SPEC §7): then its status and body bytes go to the copy's comparison
 *   (compare.c), whose shadow side this file ends exactly once.
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
    struct evbuffer *held;          /* bytes not yet handed to the connection */
    uint64_t t_start_us;
    bool chunked;
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

static void
release_held(struct shadow *sh)
{
    if (sh->u == NULL)
        return;
    sh->u->cls->send_again(sh->u, sh->held);
    upconn_flush(sh->u);
}

struct shadow *
shadow_start(struct worker *w, struct config *cfg, const struct cfg_endpoint *ep, int vi,
             struct evbuffer *head, bool chunked, bool head_method, const char *request_id,
             const uint8_t trace_id[16], const struct tracing_span *span)
{
    const struct cfg_limits *lim = &w->cfg->limits;
    struct upool *pool = NULL;
    bool compares = ep->versions[vi].compare.mode != CFG_COMPARE_OFF;

    if (w->n_shadows >= lim->max_shadow_inflight ||
        __atomic_load_n(&gw_open_fds, __ATOMIC_RELAXED) >= gw_fd_limit / 2 ||
        upstream_pick(w, cfg, ep, vi, NULL, &pool) != PICK_OK) {
        evbuffer_drain(head, evbuffer_get_length(head));
        account_shadow(w, cfg, ep, vi, 0, 0, true);
        if (compares)               /* a dropped copy is an unknown comparison */
            account_compare(w, cfg, ep, vi, CMP_UNKNOWN, NULL);
        return NULL;
    }
    struct shadow *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        route_give_slot(pool->shared);
        evbuffer_drain(head, evbuffer_get_length(head));
        if (compares)
            account_compare(w, cfg, ep, vi, CMP_UNKNOWN, NULL);
        return NULL;
    }
    if (compares) {
        sh->cmp = cmp_new(w, cfg, ep, vi, request_id);
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
    sh->chunked = chunked;
    sh->head_method = head_method;
    sh->attached = true;
    sh->t_start_us = now_us();
    TAILQ_INSERT_TAIL(&w->shadows, sh, link);
    w->n_shadows++;
    sh->timer = evtimer_new(w->base, shadow_timeout, sh);
    sh->held = evbuffer_new();
    if (sh->timer == NULL || sh->held == NULL ||
        (sh->u = upconn_acquire(w, pool, &shadow_ops, sh, false)) == NULL) {
        evbuffer_drain(head, evbuffer_get_length(head));
        shadow_end(sh, 502, false, true);
        return sh;                  /* finished; freed when the request lets go */
    }
    evbuffer_add_buffer(sh->held, head);
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
    struct evbuffer *out = sh->held;
    if (sh->streaming &&
        upconn_backlog(sh->u) + len > SHADOW_MAX_BEHIND) {
        shadow_end(sh, 0, true, true);      /* the mirror cannot keep up */
        return;
    }
    if (sh->chunked)
        buf_chunk_size(out, len);
    evbuffer_add(out, at, len);
    if (sh->chunked)
        BUF_LIT(out, "\r\n");
    if (sh->streaming || evbuffer_get_length(out) > SHADOW_HOLD) {
        sh->streaming = true;
        release_held(sh);
    }
}

struct shadow_cmp *
shadow_complete(struct shadow *sh)
{
    struct shadow_cmp *c = sh->cmp;
    sh->attached = false;
    sh->live_handed = c != NULL;
    if (sh->finished) {
        shadow_free(sh);            /* ends the shadow side; the live side is the request's */
        return c;
    }
    if (sh->chunked)
        BUF_LIT(sh->held, "0\r\n\r\n");
    release_held(sh);
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
