/*
 * Instructions the request path spends on tracing, per request, in the
 * shapes a request takes (bench/tracing_cost.sh runs it under callgrind,
 * counting only measure()):
 *
 *   continue    a valid traceparent and a tracestate come in; one hop out
 *   new         no traceparent, not sampled (sample_ratio 0.01's common case)
 *   sampled     no traceparent, sampled: one hop, a server and a client span
 *               filled and submitted to the ring
 *
 *   tracing_cost CASE
 */
#include <event2/event.h>
#include <stdio.h>
#include <string.h>

#include "tracing/tracing.h"

#define ROUNDS 10000

static const char TP[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
static const char TS[] = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

static char sink[TRACING_TRACEPARENT_LEN * 2];

/* One request's tracing work. */
__attribute__((noinline)) static void
measure(int which, struct tracing_ring *ring)
{
    struct tracing_ctx ctx;
    struct tracing_span sp;
    char ts[sizeof(TS)];
    uint8_t hop[8];

    switch (which) {
    case 0:
        memcpy(ts, TS, sizeof(TS));
        tracing_ctx_begin(&ctx, TP, sizeof(TP) - 1, 1, ts, sizeof(TS) - 1, ts,
                          TRACING_SAMPLE_NONE);
        tracing_hop(&ctx, hop, sink);
        break;
    case 1:
        tracing_ctx_begin(&ctx, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_NONE);
        tracing_hop(&ctx, hop, sink);
        break;
    default:
        tracing_ctx_begin(&ctx, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_ALL);
        tracing_hop(&ctx, hop, sink);
        tracing_span_client(&sp, &ctx, hop);
        TRACING_SET(sp.endpoint, "fraud", 5);
        TRACING_SET(sp.version, "v2", 2);
        TRACING_SET(sp.group, "treatment", 9);
        TRACING_SET(sp.upstream, "10.0.0.1:8080", 13);
        sp.http_status = 200;
        sp.end_ns = tracing_now_ns();
        tracing_submit(ring, &sp);
        tracing_span_server(&sp, &ctx);
        TRACING_SET(sp.endpoint, "fraud", 5);
        TRACING_SET(sp.version, "v2", 2);
        TRACING_SET(sp.group, "treatment", 9);
        sp.http_status = 200;
        sp.end_ns = tracing_now_ns();
        tracing_submit(ring, &sp);
        break;
    }
}

int
main(int argc, char **argv)
{
    static const char *const names[] = {"continue", "new", "sampled"};
    int which = -1;

    for (int i = 0; i < 3 && argc == 2; i++)
        if (strcmp(argv[1], names[i]) == 0)
            which = i;
    if (which < 0) {
        fprintf(stderr, "usage: %s continue|new|sampled\n", argv[0]);
        return 2;
    }
    struct event_base *base = event_base_new();
    struct tracing_config cfg;
    char err[200];
    tracing_config_parse(NULL, &cfg, err, sizeof(err));
    cfg.queue_max_spans = 2 * ROUNDS > 16384 ? 32768 : 16384;
    struct tracing_exporter *exp = tracing_exporter_new(base, &cfg, 1, err, sizeof(err));
    struct tracing_ring *ring = tracing_exporter_ring(exp, 0);
    measure(which, ring);           /* seeds the thread's generator */
    for (int i = 0; i < ROUNDS; i++)
        measure(which, ring);
    struct tracing_stats st;
    tracing_exporter_stats(exp, &st);
    printf("%s: %d requests, %llu spans submitted, %llu dropped\n", names[which], ROUNDS,
           (unsigned long long)st.submitted, (unsigned long long)st.dropped);
    tracing_exporter_free(exp);
    event_base_free(base);
    return 0;
}
