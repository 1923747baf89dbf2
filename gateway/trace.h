/*
 * gateway/trace.h — a request's W3C trace context and spans (SPEC §10):
 * what request.c and shadow.c call in trace.c, over the tracing library
 * (tracing/tracing.h). Included by gateway/internal.h.
 */
#ifndef SLUICE_GATEWAY_TRACE_H
#define SLUICE_GATEWAY_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#include "tracing/tracing.h"

struct cfg_version;
struct evbuffer;
struct req_record;
struct upstream_request;
struct worker;

/*
 * A request's trace context (SPEC §10; trace.c over tracing/): begun once
 * its head is classified (request_take_id()), or at its end for a request
 * refused before that, so every access-log line has ids. Each hop (the
 * upstream attempt, a retry, each shadow copy) gets a span id of its own
 * in the traceparent it sends. When the request is sampled and its
 * snapshot exports, it makes a SERVER span at its end and a CLIENT span
 * per upstream attempt and shadow copy, handed to its worker's ring.
 */
struct req_trace {
    struct tracing_ctx ctx;
    bool begun;
    bool spans;                     /* sampled, and "tracing.otlp_endpoint" set */
    bool hop_open;                  /* an upstream attempt's CLIENT span runs */
    uint8_t hop_id[8];              /* that attempt's span id */
    uint64_t start_ns, hop_start_ns;    /* unix ns; taken only with spans */
};

struct request;
/* Begin r's context from its classified head's traceparent and tracestate
 * (a no-op the second time). */
void trace_begin(struct request *r);
/* The upstream attempt about to be composed: a new span id, its
 * traceparent written into tp, which ur (and its tracestate) now points
 * to; its CLIENT span starts. */
void trace_upstream_hop(struct request *r, struct upstream_request *ur,
                        char tp[TRACING_TRACEPARENT_LEN]);
/* The upstream attempt ended (http_status 0: no response): its CLIENT
 * span is submitted. A no-op when none runs. */
void trace_hop_end(struct request *r, int http_status);
/* A retry sends resend again (our composed head first): its traceparent
 * gets a new span id and the retry a CLIENT span of its own. */
void trace_retry(struct request *r, struct evbuffer *resend);
/* A shadow copy to version v: like trace_upstream_hop(); returns its
 * CLIENT span started in buf, or NULL when the request makes no spans. */
struct tracing_span *trace_shadow_hop(struct request *r, struct upstream_request *ur,
                                      char tp[TRACING_TRACEPARENT_LEN],
                                      const struct cfg_version *v, struct tracing_span *buf);
/* The copy's span ends (http_status 0: no response) and is submitted on
 * w's ring. */
void trace_shadow_end(struct worker *w, struct tracing_span *sp, int http_status);
/* The request's end: its SERVER span, from what its log line says. */
void trace_end(struct request *r, const struct req_record *rec);

#endif
