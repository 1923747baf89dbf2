/*
 * tracing — W3C trace context on every hop and spans to an OpenTelemetry
 * collector (SPEC §10).
 *
 * Three parts, by who calls them:
 *  - Trace context (request path, any thread; no allocation, no locks):
 *    tracing_ctx_begin() reads the incoming traceparent/tracestate and
 *    decides sampling; tracing_hop() gives each upstream attempt, retry or
 *    shadow copy its own span id and traceparent value.
 *  - Config (pure): tracing_config_parse() reads the "tracing" object.
 *  - Export (off the request path): a worker hands a finished span to its
 *    own ring with tracing_submit(), which never blocks and never allocates
 *    (a full ring drops the span and counts it); the exporter, on the main
 *    thread's event_base, drains the rings on a timer and POSTs OTLP/HTTP
 *    JSON to the collector, one batch in flight at most.
 *
 * W3C Trace Context Level 1 as a participating proxy: the outgoing
 * traceparent is version 00 with a new parent-id per hop; of the flags only
 * "sampled" is kept (all others are cleared); tracestate is passed on
 * normalised and cut to TRACING_TRACESTATE_MAX characters by dropping whole
 * members (those over 128 characters first, then from the end).
 * libevent and jansson stay behind forward declarations.
 */
#ifndef SLUICE_TRACING_H
#define SLUICE_TRACING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct json_t;

#define TRACING_TRACEPARENT_LEN 55      /* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACING_TRACESTATE_MAX  512     /* characters passed on, at most */
#define TRACING_TRACESTATE_MEMBERS 32   /* list-members in a valid tracestate */
#define TRACING_FLAG_SAMPLED    0x01
#define TRACING_SAMPLE_ALL      0u                      /* threshold: ratio 1 */
#define TRACING_SAMPLE_NONE     (UINT64_C(1) << 56)     /* threshold: ratio 0 */

/* ---- trace context ---------------------------------------------------- */

enum tracing_parent_status {
    TRACING_PARENT_OK = 0,
    TRACING_PARENT_ABSENT,          /* no traceparent header */
    TRACING_PARENT_DUPLICATE,       /* more than one traceparent header */
    TRACING_PARENT_VERSION,         /* version not 2 lowercase hex, or ff */
    TRACING_PARENT_LENGTH,          /* 00 not exactly 55; higher < 55 or no '-' at 55 */
    TRACING_PARENT_FORMAT,          /* a field not lowercase hex, or a dash missing */
    TRACING_PARENT_ZERO_TRACE_ID,   /* trace-id all zero */
    TRACING_PARENT_ZERO_PARENT_ID,  /* parent-id all zero */
};

/* An incoming traceparent, parsed. */
struct tracing_parent {
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    uint8_t flags;                  /* as received, all bits */
    uint8_t version;
};

/*
 * A request's trace context: 48 bytes. state points into the caller's
 * buffer given to tracing_ctx_begin() (ts_out) and is valid as long as it.
 */
struct tracing_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];             /* this request's server span */
    uint8_t parent_id[8];           /* the caller's span; zero for a new trace */
    uint8_t flags;                  /* flags sent on: TRACING_FLAG_SAMPLED or 0 */
    uint8_t parent_status;          /* enum tracing_parent_status of the input */
    uint16_t state_len;             /* tracestate to pass on; 0: send none */
    const char *state;
};

/* Parse one traceparent value (OWS around it is ignored). Pure; the trace
 * context is usable only on TRACING_PARENT_OK. */
enum tracing_parent_status tracing_traceparent_parse(const char *v, size_t len,
                                                     struct tracing_parent *out);

/*
 * Validate and normalise a tracestate value (several header fields joined
 * with ',' in order first, RFC 9110 §5.3). Writes the list to pass on into
 * out (members joined by ',' with no whitespace, empty members left out,
 * at most TRACING_TRACESTATE_MAX characters; out needs
 * min(len, TRACING_TRACESTATE_MAX) bytes and may be the same as in) and
 * returns its length. 0: nothing to send, either because the value is
 * empty or because it is invalid (a malformed member, a key or value too
 * long, more than 32 members): an invalid tracestate is dropped whole.
 */
size_t tracing_tracestate_clean(const char *in, size_t len, char *out);

/*
 * Start a request's context from its headers. traceparent: the value of
 * the traceparent header (NULL if absent) and how many such headers came.
 * tracestate: the combined value (NULL if absent), cleaned into ts_out as
 * tracing_tracestate_clean() says, and dropped when the traceparent is not
 * valid (an orphan). A valid traceparent is continued (same trace id, its
 * parent-id as parent, its sampled flag honoured); otherwise a new trace id
 * is drawn and sampled when its random bits pass sample_threshold
 * (struct tracing_config's, or TRACING_SAMPLE_NONE without one). A new span
 * id is drawn for the request either way. Returns ctx->parent_status.
 */
enum tracing_parent_status tracing_ctx_begin(struct tracing_ctx *ctx,
                                             const char *traceparent, size_t tp_len,
                                             unsigned tp_count,
                                             const char *tracestate, size_t ts_len,
                                             char *ts_out, uint64_t sample_threshold);

static inline bool
tracing_sampled(const struct tracing_ctx *ctx)
{
    return (ctx->flags & TRACING_FLAG_SAMPLED) != 0;
}

/* The sampling decision for a new trace id: its right-most 56 bits (random
 * by construction, W3C's random-trace-id) at or above the threshold. */
bool tracing_sample(const uint8_t trace_id[16], uint64_t sample_threshold);

/*
 * One hop (an upstream attempt, a retry, a shadow copy): draws a new span
 * id into span_id and writes the traceparent value for it, exactly
 * TRACING_TRACEPARENT_LEN characters, no NUL, into out. The tracestate to
 * send with it is ctx->state / ctx->state_len (none when 0).
 */
void tracing_hop(const struct tracing_ctx *ctx, uint8_t span_id[8],
                 char out[TRACING_TRACEPARENT_LEN]);

/* n bytes as 2n lowercase hex characters and a NUL (for the access log). */
void tracing_hex(const uint8_t *id, size_t n, char *out);

/* 8 or 16 random bytes, never all zero, from a per-thread generator seeded
 * once from getrandom(2). */
void tracing_random_id(uint8_t *id, size_t n);

/* ---- config ----------------------------------------------------------- */

#define TRACING_HOST_MAX 255
#define TRACING_PATH_MAX 255
#define TRACING_SERVICE_MAX 63

struct tracing_config {
    bool export;                    /* an otlp_endpoint is set */
    char host[TRACING_HOST_MAX + 1];    /* from otlp_endpoint http://HOST:PORT/PATH */
    uint16_t port;                  /* default 80 */
    char path[TRACING_PATH_MAX + 1];    /* default /v1/traces */
    char service_name[TRACING_SERVICE_MAX + 1];     /* default "sluice" */
    double sample_ratio;            /* 0..1, default 1 (0 with no "tracing") */
    uint64_t sample_threshold;      /* derived from sample_ratio */
    unsigned batch_max_spans;       /* spans per POST, default 512 */
    unsigned queue_max_spans;       /* per worker ring, default 2048 (power of 2) */
    unsigned export_interval_ms;    /* drain period, default 1000 */
    unsigned export_timeout_ms;     /* one POST's deadline, default 10000 */
};

/* Fill out from the "tracing" object obj (NULL: the defaults of a config
 * without one: nothing exported, new traces not sampled). 0, or -1 with a
 * message naming the field ("tracing.sample_ratio: ...") in err. */
int tracing_config_parse(const struct json_t *obj, struct tracing_config *out,
                         char *err, size_t errlen);

/* ---- span records ----------------------------------------------------- */

enum tracing_kind {
    TRACING_KIND_SERVER = 2,        /* OTLP SpanKind values */
    TRACING_KIND_CLIENT = 3,
};

enum tracing_status {
    TRACING_STATUS_UNSET = 0,       /* OTLP StatusCode values */
    TRACING_STATUS_OK = 1,
    TRACING_STATUS_ERROR = 2,
};

#define TRACING_SPAN_NAME_MAX 39
#define TRACING_SPAN_ENDPOINT_MAX 32
#define TRACING_SPAN_VERSION_MAX 32
#define TRACING_SPAN_GROUP_MAX 11
#define TRACING_SPAN_UPSTREAM_MAX 81

/* A finished span: fixed size (256 bytes), copied into a ring. Strings are
 * NUL-terminated and may be empty (then the attribute is left out). */
struct tracing_span {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];           /* all zero: a root span */
    uint64_t start_ns, end_ns;      /* unix epoch, nanoseconds */
    uint8_t kind;                   /* enum tracing_kind */
    uint8_t status;                 /* enum tracing_status */
    uint8_t trace_flags;            /* the W3C flags of the context */
    uint8_t parent_remote : 1;      /* parent came in a traceparent */
    uint8_t pinned : 1;             /* attribute "pinned" */
    uint8_t shadow : 1;             /* attribute "shadow" */
    uint16_t http_status;           /* attribute "status"; 0: no response */
    char name[TRACING_SPAN_NAME_MAX + 1];
    char endpoint[TRACING_SPAN_ENDPOINT_MAX + 1];
    char version[TRACING_SPAN_VERSION_MAX + 1];
    char group[TRACING_SPAN_GROUP_MAX + 1];     /* control, treatment, shadow */
    char upstream[TRACING_SPAN_UPSTREAM_MAX + 1];   /* host:port */
};

/* Start a span record: zeroes it, copies the ids and flags (server: the
 * context's span with the caller's as parent; client: span_id from
 * tracing_hop() with the server span as parent), sets the start time. */
void tracing_span_server(struct tracing_span *sp, const struct tracing_ctx *ctx);
void tracing_span_client(struct tracing_span *sp, const struct tracing_ctx *ctx,
                         const uint8_t span_id[8]);

/* Copy len bytes of src into a field of cap bytes (cut at a UTF-8
 * character boundary so that it fits, NUL-terminated). */
void tracing_copy(char *dst, size_t cap, const char *src, size_t len);
#define TRACING_SET(field, src, len) tracing_copy((field), sizeof(field), (src), (len))

/* The span status OpenTelemetry's HTTP conventions give: a server span is
 * an error on 5xx, a client span on 4xx and 5xx, both when there was no
 * response (http_status 0). */
enum tracing_status tracing_status_for_http(enum tracing_kind kind, int http_status);

/* CLOCK_REALTIME in nanoseconds. */
uint64_t tracing_now_ns(void);

/* ---- export ----------------------------------------------------------- */

struct tracing_exporter;
struct tracing_ring;

struct tracing_stats {
    uint64_t submitted;             /* tracing_submit() calls */
    uint64_t exported;              /* spans the collector accepted */
    uint64_t dropped;               /* ring full, batch failed/rejected, no endpoint */
    uint64_t batches_sent;
    uint64_t batches_failed;        /* refused, non-2xx, timed out */
    uint64_t pending;               /* in the rings or in flight now */
};

/*
 * An exporter with n_rings single-producer rings of cfg->queue_max_spans
 * each (one per worker thread), on base (the main thread's loop; every
 * exporter call but tracing_submit() and tracing_exporter_stats() is made
 * on that thread). NULL with a reason in err.
 */
struct tracing_exporter *tracing_exporter_new(struct event_base *base,
                                              const struct tracing_config *cfg,
                                              int n_rings, char *err, size_t errlen);

/* Apply a reloaded config: endpoint, service name, batch size, interval and
 * timeout change at once (a batch in flight finishes on the old
 * connection); queue_max_spans only at the next tracing_exporter_new(). */
void tracing_exporter_reconfigure(struct tracing_exporter *exp,
                                  const struct tracing_config *cfg);

/* Send what the rings hold now, batch after batch, without waiting for the
 * timer (e.g. at shutdown, then run the loop until pending is 0). */
void tracing_exporter_flush(struct tracing_exporter *exp);

/* Stop: spans still in the rings or in flight are counted as dropped. */
void tracing_exporter_free(struct tracing_exporter *exp);

/* Ring i (0 <= i < n_rings): one thread only may submit to it. */
struct tracing_ring *tracing_exporter_ring(struct tracing_exporter *exp, int i);

/* Hand a finished span to the exporter: a copy into the ring, or false
 * (counted as dropped) when the ring is full. Never blocks. */
bool tracing_submit(struct tracing_ring *ring, const struct tracing_span *sp);

/* Counters, from any thread (each read atomically; sums may be a moment
 * apart). */
void tracing_exporter_stats(const struct tracing_exporter *exp, struct tracing_stats *st);

#endif
