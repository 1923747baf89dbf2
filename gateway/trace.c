/*
 * A request's W3C trace context and spans (SPEC §10), over the tracing
 * library (tracing/tracing.h): the context begun from the client's head,
 * a span id per hop in the traceparent sent, and the spans of sampled
 * requests handed to the worker's ring (never blocking: a full ring drops
 * the span and counts it). Protocol-independent: it reads the classified
 * head that every client side fills.
 *
 * Cost when nothing is exported: tracing_ctx_begin() (ids drawn from a
 * per-thread generator, no allocation) and a 55-byte traceparent per hop.
 * The clock is read and span records are built only for a request whose
 * context is sampled and whose snapshot has an otlp_endpoint.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

/* ---- the rings, handed over by the control plane -------------------------- */

static struct tracing_ring **rings;
static int n_rings;

void
workers_set_trace_rings(struct tracing_ring *const *r, int n)
{
    /* Before the workers start, or after they ended (workers_join()). */
    free(rings);
    rings = NULL;
    n_rings = 0;
    if (r == NULL || n <= 0 || (rings = calloc((size_t)n, sizeof(*rings))) == NULL)
        return;
    memcpy(rings, r, (size_t)n * sizeof(*rings));
    n_rings = n;
}

/* Worker w's ring; NULL without an exporter (set before the workers start,
 * let go after they ended: never changed while they run). */
static struct tracing_ring *
ring_of(const struct worker *w)
{
    return w->id >= 0 && w->id < n_rings ? rings[w->id] : NULL;
}

/* A span to the worker's ring (none once the exporter is gone). */
static void
submit(struct worker *w, const struct tracing_span *sp)
{
    struct tracing_ring *ring = ring_of(w);
    if (ring != NULL)
        tracing_submit(ring, sp);
}

/* ---- the context ------------------------------------------------------------ */

void
trace_begin(struct request *r)
{
    struct req_trace *t = &r->trace;
    const struct head *hd = &r->head;
    const char *tp = NULL, *ts = NULL;
    size_t tp_len = 0, ts_len = 0;
    unsigned tp_count = 0;

    if (t->begun)
        return;
    t->begun = true;
    int i = hd->first[HC_TRACEPARENT];
    if (i >= 0) {
        tp = HD_VAL(hd, i);
        tp_len = hd->h[i].val_len;
        tp_count = (unsigned)hd->count[HC_TRACEPARENT];
    }
    i = hd->first[HC_TRACESTATE];
    struct evbuffer *joined = NULL;
    if (i >= 0 && tp != NULL) {
        if (hd->count[HC_TRACESTATE] == 1) {
            ts = HD_VAL(hd, i);
            ts_len = hd->h[i].val_len;
        } else {
            /* Several fields are one list, joined with ',' in order
             * (RFC 9110 §5.3). Rare: the worker's scratch buffer. */
            joined = r->c->w->scratch2;
            for (int k = i; k < hd->n; k++) {
                if (hd->cls[k] != HC_TRACESTATE)
                    continue;
                if (k != i)
                    BUF_LIT(joined, ",");
                evbuffer_add(joined, HD_VAL(hd, k), hd->h[k].val_len);
            }
            ts_len = evbuffer_get_length(joined);
            ts = (const char *)evbuffer_pullup(joined, (ev_ssize_t)ts_len);
        }
    }
    const struct tracing_config *tc = r->cfg != NULL ? &r->cfg->tracing : NULL;
    tracing_ctx_begin(&t->ctx, tp, tp_len, tp_count, ts, ts_len, r->trace_state,
                      tc != NULL ? tc->sample_threshold : TRACING_SAMPLE_NONE);
    if (joined != NULL)
        evbuffer_drain(joined, evbuffer_get_length(joined));
    t->spans = tracing_sampled(&t->ctx) && tc != NULL && tc->export &&
               ring_of(r->c->w) != NULL;
    t->hop_open = false;
    if (t->spans)
        t->start_ns = tracing_now_ns();
}

static void
hop(struct request *r, struct upstream_request *ur, char tp[TRACING_TRACEPARENT_LEN],
    uint8_t span_id[8])
{
    trace_begin(r);                 /* a client side that did not: begun here */
    tracing_hop(&r->trace.ctx, span_id, tp);
    ur->traceparent = tp;
    ur->tracestate = r->trace.ctx.state;
    ur->tracestate_len = r->trace.ctx.state_len;
}

void
trace_upstream_hop(struct request *r, struct upstream_request *ur,
                   char tp[TRACING_TRACEPARENT_LEN])
{
    hop(r, ur, tp, r->trace.hop_id);
    if (r->trace.spans) {
        r->trace.hop_open = true;
        r->trace.hop_start_ns = tracing_now_ns();
    }
}

/* The attributes of SPEC §10 for version v of r's endpoint. */
static void
span_attrs(struct tracing_span *sp, const struct request *r, const struct cfg_version *v,
           const char *group)
{
    const char *m = llhttp_method_name(r->line.method);
    TRACING_SET(sp->name, m, strlen(m));
    if (r->ep != NULL)
        TRACING_SET(sp->endpoint, r->ep->name, strlen(r->ep->name));
    if (v != NULL) {
        TRACING_SET(sp->version, v->name, strlen(v->name));
        TRACING_SET(sp->group, group, strlen(group));
    }
}

void
trace_hop_end(struct request *r, int http_status)
{
    struct req_trace *t = &r->trace;
    if (!t->hop_open)
        return;
    t->hop_open = false;
    struct tracing_span sp;
    const struct cfg_version *v = r->ep != NULL && r->version >= 0 ?
        &r->ep->versions[r->version] : NULL;
    tracing_span_client(&sp, &t->ctx, t->hop_id);     /* starts it now: that is its end */
    sp.end_ns = sp.start_ns;
    sp.start_ns = t->hop_start_ns;
    span_attrs(&sp, r, v, v == NULL ? NULL :
               config_group_name(v->mirror > 0 ? CFG_GROUP_SHADOW : v->group));
    sp.pinned = r->pinned;
    if (r->pool != NULL)
        TRACING_SET(sp.upstream, r->pool->address, strlen(r->pool->address));
    sp.http_status = (uint16_t)http_status;
    sp.status = (uint8_t)tracing_status_for_http(TRACING_KIND_CLIENT, http_status);
    submit(r->c->w, &sp);
}

void
trace_retry(struct request *r, struct evbuffer *resend)
{
    static const char name[] = "\r\ntraceparent: 00-";
    /* The head is what compose_request_head() wrote: one traceparent, ours,
     * before the empty line; the body after it is not searched. */
    struct evbuffer_ptr end = evbuffer_search(resend, "\r\n\r\n", 4, NULL);
    if (end.pos < 0)
        return;
    struct evbuffer_ptr at = evbuffer_search_range(resend, name, sizeof(name) - 1, NULL, &end);
    size_t id_off = (size_t)at.pos + sizeof(name) - 1 + 33;    /* trace-id and '-' */
    if (at.pos < 0 || id_off + 16 > (size_t)end.pos)
        return;
    unsigned char *p = evbuffer_pullup(resend, (ev_ssize_t)(id_off + 16));
    if (p == NULL)
        return;
    char hex[17];
    tracing_random_id(r->trace.hop_id, 8);
    tracing_hex(r->trace.hop_id, 8, hex);
    memcpy(p + id_off, hex, 16);
    if (r->trace.spans) {
        r->trace.hop_open = true;
        r->trace.hop_start_ns = tracing_now_ns();
    }
}

struct tracing_span *
trace_shadow_hop(struct request *r, struct upstream_request *ur,
                 char tp[TRACING_TRACEPARENT_LEN], const struct cfg_version *v,
                 struct tracing_span *buf)
{
    uint8_t id[8];
    hop(r, ur, tp, id);
    if (!r->trace.spans)
        return NULL;
    tracing_span_client(buf, &r->trace.ctx, id);
    span_attrs(buf, r, v, "shadow");
    buf->shadow = 1;
    return buf;
}

void
trace_shadow_end(struct worker *w, struct tracing_span *sp, int http_status)
{
    sp->end_ns = tracing_now_ns();
    sp->http_status = (uint16_t)http_status;
    sp->status = (uint8_t)tracing_status_for_http(TRACING_KIND_CLIENT, http_status);
    submit(w, sp);
}

/* ---- the request's end ---------------------------------------------------------- */

void
trace_end(struct request *r, const struct req_record *rec)
{
    struct req_trace *t = &r->trace;
    if (!t->spans)
        return;
    struct tracing_span sp;
    tracing_span_server(&sp, &t->ctx);  /* starts it now: that is its end */
    sp.end_ns = sp.start_ns;
    sp.start_ns = t->start_ns;
    const struct cfg_version *v = rec->ep != NULL && rec->version >= 0 ?
        &rec->ep->versions[rec->version] : NULL;
    /* "{method} {route}" (OpenTelemetry's HTTP server span name) when it
     * was a scoring URL, else the method alone. */
    const char *m = rec->method != NULL ? rec->method : "HTTP";
    size_t ml = strlen(m);
    memcpy(sp.name, m, ml < TRACING_SPAN_NAME_MAX ? ml : TRACING_SPAN_NAME_MAX);
    if (rec->ep != NULL && ml + sizeof(" /api/v1/service/{endpoint}/score") <= sizeof(sp.name))
        memcpy(sp.name + ml, " /api/v1/service/{endpoint}/score",
               sizeof(" /api/v1/service/{endpoint}/score"));
    if (rec->ep != NULL)
        TRACING_SET(sp.endpoint, rec->ep->name, strlen(rec->ep->name));
    if (v != NULL) {
        const char *g = config_group_name(v->mirror > 0 ? CFG_GROUP_SHADOW : v->group);
        TRACING_SET(sp.version, v->name, strlen(v->name));
        TRACING_SET(sp.group, g, strlen(g));
    }
    if (rec->upstream != NULL)
        TRACING_SET(sp.upstream, rec->upstream, strlen(rec->upstream));
    sp.pinned = rec->pinned;
    sp.http_status = (uint16_t)rec->status;
    sp.status = (uint8_t)tracing_status_for_http(TRACING_KIND_SERVER, rec->status);
    submit(r->c->w, &sp);
}
