/*
 * Span export: per-worker rings drained on the main thread, POSTed as
 * OTLP/HTTP JSON.
 *
 * Each worker owns one single-producer/single-consumer ring: the worker
 * advances tail, the exporter (main thread) advances head; a span is a
 * 256-byte copy and a release store. A full ring drops the span, counted
 * by the worker in the ring itself. The request path never waits for the
 * exporter and the exporter never waits for the collector: at most one
 * batch is in flight, with a deadline; a failed, refused or late batch is
 * dropped and counted, never retried (the next batch is already queued).
 *
 * The timer drains every export_interval_ms. When a batch came back full
 * (or after tracing_exporter_flush()), the next one goes at once, from a
 * zero-delay event rather than from inside libevent's callback.
 */
#include "tracing/tracing.h"
#include "tracing/otlp.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CACHELINE 64
#define RESPONSE_MAX (4 << 20)      /* OTLP's recommended response limit */

struct tracing_ring {
    _Alignas(CACHELINE) _Atomic uint64_t tail;      /* producer's */
    _Atomic uint64_t submitted;                     /* producer's */
    _Atomic uint64_t dropped;                       /* producer's: ring full */
    _Alignas(CACHELINE) _Atomic uint64_t head;      /* consumer's */
    _Alignas(CACHELINE) uint64_t mask;
    struct tracing_span *slots;
};

struct tracing_exporter {
    struct event_base *base;
    struct tracing_config cfg;
    struct tracing_ring *rings;
    int n_rings;
    int rr;                         /* the ring a batch starts with */
    struct event *timer;            /* every export_interval_ms */
    struct event *kick;             /* the next batch now */
    struct event *deadline;         /* the batch in flight is late */
    struct evdns_base *dns;         /* for a host that is a name */
    struct evhttp_connection *conn; /* to cfg's endpoint; NULL until needed */
    struct evhttp_connection *req_conn;     /* the in-flight batch's */
    struct evhttp_connection *old_conn;     /* to a former endpoint, until its batch ends */
    struct evhttp_request *req;     /* in flight, or NULL */
    char host_header[TRACING_HOST_MAX + 10];
    bool again;                     /* send the next batch at once */
    bool flushing;                  /* tracing_exporter_flush(): until empty */
    _Atomic uint64_t inflight;      /* spans in the batch in flight */
    _Atomic uint64_t exported, dropped, batches_sent, batches_failed;
    struct otlp_buf body;
};

static void
count(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ---- the producer side (worker threads) ---- */

bool
tracing_submit(struct tracing_ring *r, const struct tracing_span *sp)
{
    uint64_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);

    /* Only this thread writes these two counters: no locked add needed. */
    atomic_store_explicit(&r->submitted,
                          atomic_load_explicit(&r->submitted, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (t - h > r->mask) {
        atomic_store_explicit(&r->dropped,
                              atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        return false;
    }
    r->slots[t & r->mask] = *sp;
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
    return true;
}

struct tracing_ring *
tracing_exporter_ring(struct tracing_exporter *exp, int i)
{
    return i >= 0 && i < exp->n_rings ? &exp->rings[i] : NULL;
}

/* ---- the consumer side (main thread) ---- */

static uint64_t
ring_pending(struct tracing_ring *r)
{
    return atomic_load_explicit(&r->tail, memory_order_acquire) -
           atomic_load_explicit(&r->head, memory_order_relaxed);
}

static uint64_t
all_pending(struct tracing_exporter *exp)
{
    uint64_t n = 0;

    for (int i = 0; i < exp->n_rings; i++)
        n += ring_pending(&exp->rings[i]);
    return n;
}

/* Throw away what the rings hold now, counted as dropped. */
static void
discard_rings(struct tracing_exporter *exp)
{
    for (int i = 0; i < exp->n_rings; i++) {
        struct tracing_ring *r = &exp->rings[i];
        uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
        uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
        count(&exp->dropped, t - h);
        atomic_store_explicit(&r->head, t, memory_order_release);
    }
}

/* Encode up to batch_max_spans spans from the rings into exp->body; the
 * number taken. The slots are released as soon as they are encoded. */
static unsigned
encode_batch(struct tracing_exporter *exp)
{
    unsigned n = 0, max = exp->cfg.batch_max_spans;

    exp->body.len = 0;
    exp->body.oom = false;
    otlp_begin(&exp->body, exp->cfg.service_name);
    for (int k = 0; k < exp->n_rings && n < max; k++) {
        struct tracing_ring *r = &exp->rings[(exp->rr + k) % exp->n_rings];
        uint64_t t = atomic_load_explicit(&r->tail, memory_order_acquire);
        uint64_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
        for (; h != t && n < max; h++, n++)
            otlp_span(&exp->body, &r->slots[h & r->mask], n == 0);
        atomic_store_explicit(&r->head, h, memory_order_release);
    }
    exp->rr = (exp->rr + 1) % exp->n_rings;
    otlp_end(&exp->body);
    return n;
}

static void
batch_failed(struct tracing_exporter *exp, uint64_t n)
{
    count(&exp->dropped, n);
    count(&exp->batches_failed, 1);
}

/* Spans a 2xx answer says were rejected (ExportTracePartialSuccess). */
static uint64_t
rejected_spans(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = in ? evbuffer_get_length(in) : 0;
    uint64_t n = 0;

    if (len == 0 || len > RESPONSE_MAX)
        return 0;
    json_t *doc = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, NULL);
    json_t *ps = json_object_get(json_object_get(doc, "partialSuccess"), "rejectedSpans");
    if (json_is_integer(ps) && json_integer_value(ps) > 0)
        n = (uint64_t)json_integer_value(ps);
    else if (json_is_string(ps))
        n = strtoull(json_string_value(ps), NULL, 10);
    json_decref(doc);
    return n;
}

static void
batch_done(struct evhttp_request *req, void *arg)
{
    struct tracing_exporter *exp = arg;
    uint64_t n = atomic_load_explicit(&exp->inflight, memory_order_relaxed);
    int code = req ? evhttp_request_get_response_code(req) : 0;

    event_del(exp->deadline);
    exp->req = NULL;
    exp->req_conn = NULL;
    if (code >= 200 && code < 300) {
        uint64_t rej = rejected_spans(req);
        if (rej > n)
            rej = n;
        count(&exp->exported, n - rej);
        count(&exp->dropped, rej);
    } else {
        batch_failed(exp, n);
    }
    atomic_store_explicit(&exp->inflight, 0, memory_order_relaxed);
    /* Neither free a connection nor start the next request from inside
     * libevent's callback: on_kick does both. */
    event_active(exp->kick, EV_TIMEOUT, 0);
}

static void
batch_late(evutil_socket_t fd, short what, void *arg)
{
    struct tracing_exporter *exp = arg;

    if (exp->req == NULL)
        return;
    /* Freeing the connection frees the request without its callback. */
    if (exp->conn == exp->req_conn)
        exp->conn = NULL;
    if (exp->old_conn == exp->req_conn)
        exp->old_conn = NULL;
    evhttp_connection_free(exp->req_conn);
    exp->req = NULL;
    exp->req_conn = NULL;
    batch_failed(exp, atomic_exchange(&exp->inflight, 0));
    if (exp->again || exp->flushing)
        event_active(exp->kick, EV_TIMEOUT, 0);
}

static bool
numeric_host(const char *h)
{
    unsigned char a[16];

    return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

static struct evhttp_connection *
connection(struct tracing_exporter *exp)
{
    bool numeric = numeric_host(exp->cfg.host);

    if (exp->conn != NULL)
        return exp->conn;
    /* A name is resolved by evdns, on the loop: without a dns base libevent
     * would call getaddrinfo() and block the main thread. */
    if (!numeric && exp->dns == NULL)
        exp->dns = evdns_base_new(exp->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!numeric && exp->dns == NULL)
        return NULL;
    exp->conn = evhttp_connection_base_new(exp->base, numeric ? NULL : exp->dns,
                                           exp->cfg.host, exp->cfg.port);
    if (exp->conn == NULL)
        return NULL;
    struct timeval tv = {exp->cfg.export_timeout_ms / 1000,
                         (exp->cfg.export_timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(exp->conn, &tv);
    evhttp_connection_set_retries(exp->conn, 0);
    evhttp_connection_set_max_body_size(exp->conn, RESPONSE_MAX);
    return exp->conn;
}

/* Send the next batch if there is one and none is in flight. */
static void
send_batch(struct tracing_exporter *exp)
{
    if (exp->req != NULL)
        return;
    if (!exp->cfg.export) {
        discard_rings(exp);
        exp->flushing = exp->again = false;
        return;
    }
    if (all_pending(exp) == 0) {
        exp->flushing = exp->again = false;
        return;
    }
    unsigned n = encode_batch(exp);
    exp->again = n == exp->cfg.batch_max_spans;
    count(&exp->batches_sent, 1);
    if (exp->body.oom) {
        batch_failed(exp, n);
        return;
    }
    struct evhttp_connection *conn = connection(exp);
    struct evhttp_request *req = conn ? evhttp_request_new(batch_done, exp) : NULL;
    if (req == NULL) {
        batch_failed(exp, n);
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", exp->host_header);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "sluice/" SLUICE_VERSION);
    evbuffer_add(evhttp_request_get_output_buffer(req), exp->body.p, exp->body.len);
    atomic_store_explicit(&exp->inflight, n, memory_order_relaxed);
    exp->req = req;
    exp->req_conn = conn;
    if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, exp->cfg.path) != 0) {
        /* Not queued (the connect could not even start): ours to free. */
        evhttp_request_free(req);
        exp->req = NULL;
        exp->req_conn = NULL;
        batch_failed(exp, atomic_exchange(&exp->inflight, 0));
        return;
    }
    struct timeval tv = {exp->cfg.export_timeout_ms / 1000,
                         (exp->cfg.export_timeout_ms % 1000) * 1000};
    evtimer_add(exp->deadline, &tv);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    send_batch(arg);
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
    struct tracing_exporter *exp = arg;

    if (exp->old_conn != NULL && exp->old_conn != exp->req_conn) {
        evhttp_connection_free(exp->old_conn);
        exp->old_conn = NULL;
    }
    if (exp->again || exp->flushing)
        send_batch(exp);
}

static void
apply_config(struct tracing_exporter *exp, const struct tracing_config *cfg)
{
    unsigned queue = exp->cfg.queue_max_spans;
    bool same_endpoint = exp->cfg.port == cfg->port && strcmp(exp->cfg.host, cfg->host) == 0;
    bool same_timeout = exp->cfg.export_timeout_ms == cfg->export_timeout_ms;

    exp->cfg = *cfg;
    if (queue)
        exp->cfg.queue_max_spans = queue;   /* the rings are in use */
    if (strchr(cfg->host, ':'))
        snprintf(exp->host_header, sizeof(exp->host_header), "[%s]:%u", cfg->host, cfg->port);
    else
        snprintf(exp->host_header, sizeof(exp->host_header), "%s:%u", cfg->host, cfg->port);
    if (exp->conn != NULL && (!same_endpoint || !same_timeout || !cfg->export)) {
        /* A batch in flight finishes on the old connection, freed after
         * it (on_kick); the next batch opens a new one. */
        if (exp->conn == exp->req_conn)
            exp->old_conn = exp->conn;
        else
            evhttp_connection_free(exp->conn);
        exp->conn = NULL;
    }
    struct timeval tv = {cfg->export_interval_ms / 1000, (cfg->export_interval_ms % 1000) * 1000};
    event_del(exp->timer);
    event_add(exp->timer, &tv);
}

struct tracing_exporter *
tracing_exporter_new(struct event_base *base, const struct tracing_config *cfg,
                     int n_rings, char *err, size_t errlen)
{
    struct tracing_exporter *exp;
    unsigned q = cfg->queue_max_spans;

    if (n_rings < 1 || q == 0 || (q & (q - 1)) != 0) {
        snprintf(err, errlen, "tracing: bad ring count or size");
        return NULL;
    }
    exp = calloc(1, sizeof(*exp));
    if (exp == NULL)
        goto fail_alloc;
    exp->base = base;
    exp->n_rings = n_rings;
    exp->rings = aligned_alloc(CACHELINE, sizeof(struct tracing_ring) * (size_t)n_rings);
    if (exp->rings == NULL)
        goto fail_rings;
    memset(exp->rings, 0, sizeof(struct tracing_ring) * (size_t)n_rings);
    for (int i = 0; i < n_rings; i++) {
        exp->rings[i].mask = q - 1;
        exp->rings[i].slots = calloc(q, sizeof(struct tracing_span));
        if (exp->rings[i].slots == NULL)
            goto fail_slots;
    }
    exp->timer = event_new(base, -1, EV_PERSIST, on_timer, exp);
    exp->kick = event_new(base, -1, 0, on_kick, exp);
    exp->deadline = evtimer_new(base, batch_late, exp);
    if (exp->timer == NULL || exp->kick == NULL || exp->deadline == NULL)
        goto fail_events;
    apply_config(exp, cfg);
    return exp;

fail_events:
    if (exp->timer)
        event_free(exp->timer);
    if (exp->kick)
        event_free(exp->kick);
    if (exp->deadline)
        event_free(exp->deadline);
fail_slots:
    for (int i = 0; i < n_rings; i++)
        free(exp->rings[i].slots);
    free(exp->rings);
fail_rings:
    free(exp);
fail_alloc:
    snprintf(err, errlen, "tracing: out of memory");
    return NULL;
}

void
tracing_exporter_reconfigure(struct tracing_exporter *exp, const struct tracing_config *cfg)
{
    apply_config(exp, cfg);
}

void
tracing_exporter_flush(struct tracing_exporter *exp)
{
    exp->flushing = true;
    event_active(exp->kick, EV_TIMEOUT, 0);
}

void
tracing_exporter_free(struct tracing_exporter *exp)
{
    if (exp == NULL)
        return;
    if (exp->req != NULL) {
        if (exp->conn == exp->req_conn)
            exp->conn = NULL;
        if (exp->old_conn == exp->req_conn)
            exp->old_conn = NULL;
        evhttp_connection_free(exp->req_conn);     /* and the request, without its callback */
        count(&exp->dropped, atomic_exchange(&exp->inflight, 0));
    }
    if (exp->conn != NULL)
        evhttp_connection_free(exp->conn);
    if (exp->old_conn != NULL)
        evhttp_connection_free(exp->old_conn);
    if (exp->dns != NULL)
        evdns_base_free(exp->dns, 0);
    discard_rings(exp);
    event_free(exp->timer);
    event_free(exp->kick);
    event_free(exp->deadline);
    for (int i = 0; i < exp->n_rings; i++)
        free(exp->rings[i].slots);
    free(exp->rings);
    otlp_buf_free(&exp->body);
    free(exp);
}

void
tracing_exporter_stats(const struct tracing_exporter *cexp, struct tracing_stats *st)
{
    struct tracing_exporter *exp = (struct tracing_exporter *)(uintptr_t)cexp;
    uint64_t ring_dropped = 0, pending = 0;

    memset(st, 0, sizeof(*st));
    for (int i = 0; i < exp->n_rings; i++) {
        struct tracing_ring *r = &exp->rings[i];
        st->submitted += atomic_load_explicit(&r->submitted, memory_order_relaxed);
        ring_dropped += atomic_load_explicit(&r->dropped, memory_order_relaxed);
        /* head first: it never passes the tail read after it. */
        uint64_t h = atomic_load_explicit(&r->head, memory_order_acquire);
        pending += atomic_load_explicit(&r->tail, memory_order_acquire) - h;
    }
    st->exported = atomic_load_explicit(&exp->exported, memory_order_relaxed);
    st->dropped = ring_dropped + atomic_load_explicit(&exp->dropped, memory_order_relaxed);
    st->batches_sent = atomic_load_explicit(&exp->batches_sent, memory_order_relaxed);
    st->batches_failed = atomic_load_explicit(&exp->batches_failed, memory_order_relaxed);
    st->pending = pending + atomic_load_explicit(&exp->inflight, memory_order_relaxed);
}
