/*
 * A request's exchange with a model server and its one end (gateway/
 * internal.h, "the request's life"): the concurrency slot or the wait
 * queue (request_route, dispatch_waiters), the upstream connection
 * (start_upstream and req_ops: the head, the body, the response streamed
 * back to the client side, the keep-alive retry), Sluice's own replies
 * (request_reply), and request_end(): one access-log line and one count,
 * everything released, the client side told.
 *
 * request.c (the way in: endpoint, auth, version, shadows) calls down into
 * this file; nothing here calls back up, and nothing here sees a socket or
 * a protocol's bytes.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Ended requests kept for the next ones: an HTTP/2 connection alone has up
 * to h2_max_concurrent_streams (128) in flight. */
#define FREE_REQS_MAX 256

static void dispatch_waiters(struct worker *w);
static const struct upconn_ops req_ops;

static const struct cfg_version *
req_version(const struct request *r)
{
    return r->ep != NULL && r->version >= 0 ? &r->ep->versions[r->version] : NULL;
}

static const char *
group_of(const struct cfg_version *v)
{
    return config_group_name(v->mirror > 0 ? CFG_GROUP_SHADOW : v->group);
}

struct tags
request_tags(const struct request *r)
{
    const struct cfg_version *v = req_version(r);
    struct tags t = {v ? v->name : NULL, v ? group_of(v) : NULL, r->id, r->failover};
    return t;
}

static void
run(struct request *r)
{
    r->c->ops->run(r->c);
}

static void
ensure_id(struct request *r)
{
    if (r->id[0] == '\0') {
        struct worker *w = r->c->w;
        req_id_make(r->id, w->id_prefix, ++w->req_seq);
    }
}

void
request_take_id(struct request *r)
{
    struct head *hd = &r->head;
    int rid = hd->first[HC_REQUEST_ID];
    if (rid >= 0 && req_id_acceptable(HD_VAL(hd, rid), hd->h[rid].val_len)) {
        memcpy(r->id, HD_VAL(hd, rid), hd->h[rid].val_len);
        r->id[hd->h[rid].val_len] = '\0';
    } else
        ensure_id(r);
    trace_begin(r);                 /* and its trace context (SPEC §10) */
}

static void
request_recycle(struct worker *w, struct request *r)
{
    if (r->held != NULL) {
        evbuffer_free(r->held);
        r->held = NULL;
    }
    if (w->n_free_reqs < FREE_REQS_MAX && !w->draining) {
        if (r->head.cap > HEAD_KEEP_MAX)
            head_free(&r->head);    /* a big head's buffer is not kept */
        r->next_free = w->free_reqs;
        w->free_reqs = r;
        w->n_free_reqs++;
        return;
    }
    event_free(r->timer);
    event_free(r->hdr_timer);
    head_free(&r->head);
    free(r);
}

void
requests_free_all(struct worker *w)
{
    while (w->free_reqs != NULL) {
        struct request *r = w->free_reqs;
        w->free_reqs = r->next_free;
        event_free(r->timer);
        event_free(r->hdr_timer);
        head_free(&r->head);
        free(r);
    }
    w->n_free_reqs = 0;
    event_free(w->wait_poll);
    w->wait_poll = NULL;
}

/* Leave the wait queue; the client side reads the body again. */
static void
stop_waiting(struct request *r)
{
    if (r->waiting) {
        r->waiting = false;
        TAILQ_REMOVE(&r->c->w->waiters, r, wait_link);
        r->c->ops->resume_reading(r->c, r);
    }
}

static void
release_slot(struct request *r)
{
    if (r->slot != NULL) {
        route_give_slot(r->slot);
        r->slot = NULL;
        dispatch_waiters(r->c->w);
    }
}

static void
drop_shadows(struct request *r)
{
    for (int i = 0; i < r->n_shadows; i++)
        shadow_abandon(r->shadows[i]);
    r->n_shadows = 0;
}

/* The live outcome for the comparisons: only a relayed, complete response
 * is compared; anything else makes them unknown. */
static void
end_comparisons(struct request *r)
{
    bool ok = r->cause == RC_OK && r->status != 0;
    for (int i = 0; i < r->n_cmps; i++)
        cmp_end(r->cmps[i], CMP_LIVE, ok);
    r->n_cmps = 0;
}

void
request_end(struct request *r)
{
    struct client *c = r->c;
    struct worker *w = c->w;

    c->ops->detach(c, r);
    if (r->status == 0 && r->cause == RC_CLIENT_CLOSED)
        r->status = 499;            /* nginx's code for a client that left */
    const char *url = r->head.buf ? r->head.buf + r->head.url_off : NULL;
    struct req_record rec = {
        .cfg = r->cfg, .ep = r->ep, .version = r->version, .pinned = r->pinned,
        .failover = r->failover, .status = r->status, .cause = r->cause,
        .latency_us = r->t_start_us ? now_us() - r->t_start_us : 0,
        .bytes_in = r->bytes_in, .bytes_out = r->bytes_out, .request_id = r->id,
        .peer = c->peer,
        .method = r->t_start_us ? llhttp_method_name(r->line.method) : NULL,
        .path = url, .path_len = url ? r->head.url_len : 0,
        .upstream = r->pool ? r->pool->address : NULL, .trace = &r->trace.ctx,
        .protocol = c->protocol != NULL ? c->protocol :
                    r->line.major == 1 && r->line.minor == 0 ? "HTTP/1.0" : "HTTP/1.1",
        .grpc_status = r->grpc ? r->grpc_status : -2,
    };
    if (r->grpc && r->cause == RC_OK && r->status != 0)
        /* A call counts as its grpc-status says; one without is an error. */
        rec.count_status = r->grpc_status >= 0 ? grpc_http_status(r->grpc_status) : 502;
    if (rec.request_id[0] == '\0')
        ensure_id(r);
    trace_begin(r);                 /* refused before its head was whole */
    account_request(w, &rec);
    if (r->up != NULL)
        trace_hop_end(r, r->up->status);
    trace_end(r, &rec);

    stop_waiting(r);
    evtimer_del(r->timer);
    evtimer_del(r->hdr_timer);
    if (r->up != NULL) {
        upconn_close(r->up);        /* unfinished exchange: not reusable */
        r->up = NULL;
    }
    drop_shadows(r);
    end_comparisons(r);
    release_slot(r);
    config_drop(r->cfg);
    r->cfg = NULL;
    request_recycle(w, r);
    c->ops->ended(c);
}

void
request_maybe_end(struct request *r)
{
    if (r != NULL && r->phase == RP_ANSWERED && (r->body_done || r->c->ending))
        request_end(r);
}

void
request_client_left(struct request *r, enum req_cause cause)
{
    if (r != NULL && r->cause == RC_OK && r->phase != RP_ANSWERED)
        r->cause = cause;
}

/*
 * Answer the request with a JSON error (SPEC §3.6) for cause. With close,
 * the exchange ends after the answer: whenever the request's framing can no
 * longer be trusted or the rest of it will not be read. After a response
 * has started, only the exchange's end can tell the client.
 */
void
request_reply(struct request *r, enum req_cause cause, const char *msg, bool close)
{
    struct client *c = r->c;
    const struct req_cause_info *ci = req_cause_info(cause);

    r->cause = cause;
    if (r->up != NULL) {
        trace_hop_end(r, r->up->status);
        upconn_close(r->up);
        r->up = NULL;
    }
    evtimer_del(r->timer);
    stop_waiting(r);
    if (!r->body_done)
        drop_shadows(r);
    if (r->phase == RP_RESPONDING || r->phase == RP_ANSWERED || ci->status == 0) {
        c->ops->close_after(c, r);
        r->phase = RP_ANSWERED;
        return;
    }
    if (c->w->draining || (r->expect_continue && !r->body_done))
        close = true;
    if (close)
        c->ops->close_after(c, r);
    ensure_id(r);
    /* A request refused for its own sake reached no version. */
    if (cause == RC_BAD_REQUEST || cause == RC_BAD_VERSION || cause == RC_TOO_LARGE ||
        cause == RC_HEADERS_TOO_LARGE || cause == RC_UNAUTHORIZED ||
        (cause == RC_CLIENT_TIMEOUT && !r->routed))
        r->version = -1;
    if (r->grpc)
        r->grpc_status = grpc_status_for_http(ci->status);
    c->ops->send_error(c, r, ci->status, ci->code, msg);
    r->status = ci->status;
    r->phase = RP_ANSWERED;
    r->discard = true;
}

/* Hand the request to pool's connection: the head now, the body as it is
 * read. fresh: a new connection, never an idle one (a retry, with resend). */
static bool
start_upstream(struct request *r, struct upool *pool, bool fresh, struct evbuffer *resend)
{
    struct client *c = r->c;

    r->slot = pool->shared;
    r->pool = pool;
    r->up = upconn_acquire(c->w, pool, &req_ops, r, fresh);
    if (r->up == NULL) {
        request_reply(r, RC_UPSTREAM_CONNECT, "cannot connect to the model server",
                      !r->body_done);
        return false;
    }
    if (resend != NULL) {
        r->up->framing = r->up_framing;     /* the body's rest comes as before */
        trace_retry(r, resend);
        r->up->cls->send_again(r->up, resend);
    } else {
        const struct cfg_version *v = req_version(r);
        const struct head *hd = &r->head;
        bool own_path = v->path != NULL && !r->keep_path;
        char gt[16];
        struct upstream_request ur = {
            .method = llhttp_method_name(r->line.method),
            .path = own_path ? v->path : hd->buf + r->target.path_off,
            .path_len = own_path ? strlen(v->path) : r->target.path_len,
            .query = r->target.has_query ? hd->buf + r->target.query_off : NULL,
            .query_len = r->target.query_len,
            .hd = hd, .peer = c->peer, .proto = c->proto,
            .default_host = pool->address,
            .tags = request_tags(r), .framing = r->up_framing,
            .content_length = r->line.content_length,
        };
        char tp[TRACING_TRACEPARENT_LEN];
        trace_upstream_hop(r, &ur, tp);
        int timeout = r->ep->scoring_timeout_ms;
        if (r->grpc_timeout_ms > 0) {
            /* The smaller of the two, passed on less the time spent. */
            uint64_t spent = (now_us() - r->t_start_us) / 1000;
            uint64_t left = r->grpc_timeout_ms > spent ? r->grpc_timeout_ms - spent : 1;
            if (left < (uint64_t)timeout)
                timeout = (int)left;
            grpc_timeout_format(gt, left);
            ur.grpc_timeout = gt;
        }
        r->up->cls->send_head(r->up, &ur);
        if (r->held != NULL) {      /* what was read before the upstream was known */
            size_t n = evbuffer_get_length(r->held);
            if (n > 0)
                r->up->cls->send_body(r->up, (const char *)evbuffer_pullup(r->held, -1), n);
            evbuffer_free(r->held);
            r->held = NULL;
            if (r->body_done)
                r->up->cls->send_end(r->up);
        }
        if (r->expect_continue && !r->body_done)
            c->ops->send_continue(c, r);
        r->phase = RP_UPSTREAM;
        worker_arm(r->c->w, r->timer, timeout, timeout == r->ep->scoring_timeout_ms);
        return true;
    }
    r->phase = RP_UPSTREAM;
    worker_arm(r->c->w, r->timer, r->ep->scoring_timeout_ms, true);
    return true;
}

static int
rq_head(void *owner, struct upconn *u)
{
    struct request *r = owner;
    bool no_body = r->head_method || u->status == 204 || u->status == 304 || u->no_body;

    r->status = u->status;
    r->phase = RP_RESPONDING;
    route_eject_success(&u->pool->eject);
    struct resp_info ri = {
        .status = u->status, .hd = &u->head, .has_length = u->has_length,
        .content_length = u->content_length, .no_body = no_body,
    };
    r->c->ops->send_head(r->c, r, &ri);
    for (int i = 0; i < r->n_cmps; i++)
        cmp_head(r->cmps[i], CMP_LIVE, u->status);
    return r->head_method;
}

static void
rq_body(void *owner, struct upconn *u, const char *at, size_t len)
{
    struct request *r = owner;
    bool full = r->c->ops->send_body(r->c, r, at, len);
    /* Bytes already on their way to the client: hashed or copied, never held. */
    for (int i = 0; i < r->n_cmps; i++)
        cmp_body(r->cmps[i], CMP_LIVE, at, len);
    if (full)
        upconn_pause(u);
}

static void
rq_done(void *owner, struct upconn *u, bool reusable)
{
    struct request *r = owner;
    struct client *c = r->c;

    const struct head *trailers = u->has_trailers ? &u->trailers : NULL;
    if (r->grpc)
        r->grpc_status = grpc_status_of(trailers != NULL ? trailers : &u->head);
    c->ops->send_end(c, r, trailers);
    evtimer_del(r->timer);
    trace_hop_end(r, u->status);
    r->up = NULL;
    upconn_release(u, reusable && r->body_done);
    r->phase = RP_ANSWERED;
    r->cause = RC_OK;
    if (!r->body_done)
        /* The model server answered before the whole request was read:
         * the rest of it is not wanted, so the exchange ends here. */
        c->ops->close_after(c, r);
    request_maybe_end(r);
    c->ops->run(c);
}

static enum req_cause
fail_cause(enum up_fail why)
{
    switch (why) {
    case UPF_CONNECT: return RC_UPSTREAM_CONNECT;
    case UPF_RESET: return RC_UPSTREAM_RESET;
    case UPF_CLOSED: return RC_UPSTREAM_CLOSED;
    default: return RC_UPSTREAM_INVALID;
    }
}

static const char *
fail_message(enum up_fail why, bool early)
{
    switch (why) {
    case UPF_CONNECT: return "cannot connect to the model server";
    case UPF_RESET: return early ? "the model server reset the connection" :
                                   "the model server reset the connection mid-response";
    case UPF_CLOSED: return early ? "the model server closed the connection without answering" :
                                    "the model server closed the connection mid-response";
    default: return "invalid response from the model server";
    }
}

static void
rq_failed(void *owner, struct upconn *u, enum up_fail why, bool early)
{
    struct request *r = owner;
    struct client *c = r->c;
    struct worker *w = c->w;
    struct upool *pool = u->pool;
    bool connect_failed = !u->connected;

    trace_hop_end(r, u->status);
    if (why == UPF_CONNECT || why == UPF_RESET)
        upstream_failed(w, pool, req_version(r));
    /* Retry once when it is safe, as the connection's class says
     * (take_resend): nothing was sent (connect failed: on another
     * upstream); or nothing was processed (HTTP/1.1: a reused connection
     * closed before any answer, the keep-alive race; HTTP/2: a stream the
     * server refused): on a new connection, with what was sent. */
    struct evbuffer *resend = NULL;
    if (early && !r->retried && r->phase == RP_UPSTREAM &&
        (resend = u->cls->take_resend(u)) != NULL) {
        struct upool *other = NULL;
        enum pick pk = PICK_AT_LIMIT;
        route_give_slot(r->slot);
        r->slot = NULL;
        pk = upstream_pick(w, r->cfg, r->ep, r->version, connect_failed ? pool : NULL,
                           &other);
        if (pk == PICK_OK) {
            r->up = NULL;
            upconn_close(u);
            r->retried = true;
            start_upstream(r, other, true, resend);
            evbuffer_free(resend);
            run(r);
            return;
        }
        evbuffer_free(resend);
    }
    r->up = NULL;
    upconn_close(u);
    request_reply(r, fail_cause(why), fail_message(why, early), !r->body_done);
    request_maybe_end(r);
    c->ops->run(c);
}

static void
rq_drained(void *owner, struct upconn *u)
{
    run(owner);
}

static void
rq_progress(void *owner, struct upconn *u)
{
    struct request *r = owner;
    r->c->ops->progress(r->c);
}

void
request_client_drained(struct request *r)
{
    if (r->up != NULL)
        upconn_resume(r->up);
}

void
request_flush_upstream(struct request *r)
{
    if (r->up != NULL)
        upconn_flush(r->up);
}

bool
request_wants_body(const struct request *r)
{
    if (r->body_done || r->phase == RP_QUEUED)
        return false;
    if (r->up != NULL && upconn_backlog(r->up) > GW_HIGH_WATER)
        return false;               /* the model server does not keep up */
    return true;
}

/* Route a request whose version is chosen: to a healthy upstream, to the
 * default version on failover, into the wait queue at the concurrency
 * limit, or to a 503. */
void
request_route(struct request *r)
{
    struct worker *w = r->c->w;
    const struct cfg_endpoint *ep = r->ep;
    struct upool *pool = NULL;
    enum pick pk = upstream_pick(w, r->cfg, ep, r->version, NULL, &pool);

    if (pk == PICK_NO_HEALTHY && ep->failover_to_default && !r->pinned &&
        r->version != ep->default_version) {
        r->version = ep->default_version;
        r->failover = true;
        pk = upstream_pick(w, r->cfg, ep, r->version, NULL, &pool);
    }
    if (pk == PICK_OK) {
        start_upstream(r, pool, false, NULL);
        return;
    }
    if (pk == PICK_NO_HEALTHY) {
        request_reply(r, RC_UNAVAILABLE, "no healthy model server for this version", false);
        return;
    }
    const struct cfg_version *v = req_version(r);
    if (v->max_wait_ms <= 0) {
        request_reply(r, RC_OVERLOADED, "the version is at replica_max_concurrent_requests",
                      false);
        return;
    }
    /* Wait in line, with the rest of the request left unread. */
    r->phase = RP_QUEUED;
    r->waiting = true;
    TAILQ_INSERT_TAIL(&w->waiters, r, wait_link);
    worker_arm(r->c->w, r->timer, v->max_wait_ms, true);
    if (!evtimer_pending(w->wait_poll, NULL)) {
        struct timeval tv = {0, 2000};
        evtimer_add(w->wait_poll, &tv);
    }
}

/* Give queued requests the slots that are free now, in order. Starting a
 * request can end another (and free a slot) on the way: a nested call only
 * asks the running one to look again. */
static void
dispatch_waiters(struct worker *w)
{
    if (w->dispatching) {
        w->dispatch_again = true;
        return;
    }
    w->dispatching = true;
    do {
        w->dispatch_again = false;
        struct request *r;
        TAILQ_FOREACH(r, &w->waiters, wait_link) {
            struct upool *pool = NULL;
            if (upstream_pick(w, r->cfg, r->ep, r->version, NULL, &pool) != PICK_OK)
                continue;   /* others of other versions may still go */
            struct client *c = r->c;
            stop_waiting(r);
            evtimer_del(r->timer);
            if (start_upstream(r, pool, false, NULL))
                c->ops->run(c);
            else
                request_maybe_end(r);
            w->dispatch_again = true;   /* the list changed: start over */
            break;
        }
    } while (w->dispatch_again);
    w->dispatching = false;
    /* Slots freed by other workers are seen by looking again shortly. */
    if (!TAILQ_EMPTY(&w->waiters) && !evtimer_pending(w->wait_poll, NULL)) {
        struct timeval tv = {0, 2000};
        evtimer_add(w->wait_poll, &tv);
    }
}

static void
wait_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    dispatch_waiters(arg);
}

void
requests_worker_init(struct worker *w)
{
    TAILQ_INIT(&w->waiters);
    w->wait_poll = event_new(w->base, -1, 0, wait_poll_cb, w);
}

static const struct upconn_ops req_ops = {
    .on_head = rq_head, .on_body = rq_body, .on_done = rq_done,
    .on_failed = rq_failed, .on_drained = rq_drained, .on_progress = rq_progress,
    .retries = true,
};
