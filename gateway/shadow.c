/*
 * Shadow traffic (SPEC §3.5): a copy of mirror_percentile of an endpoint's
 * requests goes to the mirror version, tagged X-Sluice-Group: shadow. The
 * copy is fed the same bytes as the live request while it streams, but the
 * live request never waits for it: a copy that falls SHADOW_MAX_BEHIND
 * behind, or whose client leaves mid-request, is dropped; its answer is
 * read and thrown away; a slow or dead mirror only costs the copy.
 */
#include "gateway/gateway.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

static void
shadow_end(struct shadow *sh, const char *why)
{
    struct worker *w = sh->w;
    if (sh->u != NULL) {
        upconn_close(sh->u);
        sh->u = NULL;
    }
    if (sh->s != NULL) {
        struct session *s = sh->s;
        for (int i = 0; i < s->n_shadows; i++)
            if (s->shadows[i] == sh) {
                s->shadows[i] = s->shadows[--s->n_shadows];
                break;
            }
        sh->s = NULL;
    }
    if (sh->slot != NULL)
        route_give_slot(sh->slot);
    if (sh->status != 0)
        worker_shadow_done(w, sh);      /* answered, failed or timed out */
    if (why != NULL)
        log_event(LOG_DEBUG, "shadow_dropped", ",\"version\":\"%s\",\"reason\":\"%s\"",
                  sh->ep->versions[sh->version].name, why);
    event_free(sh->timer);
    TAILQ_REMOVE(&w->shadows, sh, link);
    config_drop(sh->cfg);
    free(sh);
}

static void
shadow_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct shadow *sh = arg;
    sh->status = 504;
    shadow_end(sh, "timeout");
}

static void
shadow_start(struct session *s, int vi)
{
    struct worker *w = s->w;
    struct upool *pool = NULL;
    if (gw_pick(w, s->req.cfg, s->req.ep, vi, NULL, &pool) != PICK_OK)
        return;                     /* no room or no healthy mirror: no copy */
    struct shadow *sh = calloc(1, sizeof(*sh));
    if (sh == NULL) {
        route_give_slot(pool->shared);
        return;
    }
    sh->w = w;
    sh->s = s;
    sh->cfg = config_take(s->req.cfg);
    sh->ep = s->req.ep;
    sh->version = vi;
    sh->slot = pool->shared;
    sh->head_method = s->req.head_method;
    clock_gettime(CLOCK_MONOTONIC, &sh->t_start);
    sh->timer = evtimer_new(w->base, shadow_timeout, sh);
    TAILQ_INSERT_TAIL(&w->shadows, sh, link);
    sh->u = upconn_acquire(w, pool, NULL);
    if (sh->u == NULL) {
        shadow_end(sh, "connect");
        return;
    }
    sh->u->sh = sh;
    s->shadows[s->n_shadows++] = sh;
    gw_request_head(s, w->scratch, &sh->ep->versions[vi], "shadow");
    sh->chunked = s->req.chunked_up;
    evbuffer_add_buffer(bufferevent_get_output(sh->u->bev), w->scratch);
    struct timeval tv = {sh->ep->scoring_timeout_ms / 1000,
                         (sh->ep->scoring_timeout_ms % 1000) * 1000};
    evtimer_add(sh->timer, &tv);
}

void
shadows_start(struct session *s, struct ep_state *es)
{
    const struct cfg_endpoint *ep = s->req.ep;
    for (int i = 0; i < ep->n_versions; i++)
        if (ep->versions[i].mirror > 0 &&
            route_mirror_next(&es->mirror_acc[i], ep->versions[i].mirror))
            shadow_start(s, i);
}

void
shadows_body(struct session *s, const char *at, size_t len)
{
    for (int i = 0; i < s->n_shadows;) {
        struct shadow *sh = s->shadows[i];
        struct evbuffer *out = bufferevent_get_output(sh->u->bev);
        if (evbuffer_get_length(out) > SHADOW_MAX_BEHIND) {
            shadow_end(sh, "behind");       /* removes it from s->shadows */
            continue;
        }
        if (sh->chunked)
            buf_chunk_size(out, len);
        evbuffer_add(out, at, len);
        if (sh->chunked)
            BUF_LIT(out, "\r\n");
        i++;
    }
}

void
shadows_complete(struct session *s)
{
    for (int i = 0; i < s->n_shadows; i++) {
        struct shadow *sh = s->shadows[i];
        if (sh->chunked)
            BUF_LIT(bufferevent_get_output(sh->u->bev), "0\r\n\r\n");
        gw_flush(sh->u->bev, sh->u->connected);
        sh->s = NULL;               /* complete: it goes on alone */
    }
    s->n_shadows = 0;
}

void
shadows_flush(struct session *s)
{
    for (int i = 0; i < s->n_shadows; i++)
        gw_flush(s->shadows[i]->u->bev, s->shadows[i]->u->connected);
}

void
shadows_detach(struct session *s)
{
    while (s->n_shadows > 0)
        shadow_end(s->shadows[0], "client left mid-request");
}

void
shadows_free_all(struct worker *w)
{
    while (!TAILQ_EMPTY(&w->shadows))
        shadow_end(TAILQ_FIRST(&w->shadows), NULL);
}

int
shadow_head(struct shadow *sh, struct upconn *u)
{
    sh->answer = u->parser.status_code;
    route_eject_success(&u->pool->eject);
    return sh->head_method ? 1 : 0;
}

void
shadow_done(struct shadow *sh, struct upconn *u, bool reusable)
{
    sh->u = NULL;
    sh->status = sh->answer;
    /* A copy still being fed cannot hand its connection back. */
    upconn_release(u, reusable && sh->s == NULL);
    shadow_end(sh, NULL);
}

void
shadow_failed(struct shadow *sh, struct upconn *u, const char *why, bool conn_error)
{
    if (conn_error) {
        const struct cfg_version *v = &sh->ep->versions[sh->version];
        int threshold = v->health.enabled ? v->health.failure_threshold : 3;
        route_eject_failure(&u->pool->eject, threshold, now_us() / 1000);
    }
    sh->status = 502;
    shadow_end(sh, why);
}
