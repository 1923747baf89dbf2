/*
 * Drives the span exporter without the gateway, for
 * tests/integration/test_tracing_export.py: an exporter on an event_base,
 * worker threads each submitting spans to their own ring, then the loop
 * runs until every span is accounted for (exported or dropped, none
 * pending). Prints one JSON line of counts.
 *
 *   export_driver ENDPOINT SPANS WORKERS QUEUE BATCH TIMEOUT_MS WHEN [ENDPOINT2]
 *
 * WHEN is "before" (every span is submitted before the loop runs, so what
 * fits in the rings is exact) or "during" (the workers submit while the
 * exporter drains). ENDPOINT "-" configures no endpoint. With ENDPOINT2
 * (and "before"), once the first batch has gone the exporter is
 * reconfigured to ENDPOINT2 and as many spans again are submitted.
 */
#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tracing/tracing.h"

struct worker {
    pthread_t thread;
    int id;
    int n;
    struct tracing_ring *ring;
    unsigned refused;           /* tracing_submit() said false */
};

static atomic_int workers_done;
static struct tracing_exporter *exporter;
static struct event_base *base;
static int n_workers;
static bool flushed;
static bool during;
static struct tracing_config cfg2;
static bool switching;
static struct worker *ws;

static void *
work(void *arg)
{
    struct worker *w = arg;
    struct tracing_ctx ctx;
    struct tracing_span sp;
    char buf[64];
    uint8_t hop[8];
    char tp[TRACING_TRACEPARENT_LEN];

    for (int i = 0; i < w->n; i++) {
        tracing_ctx_begin(&ctx, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_ALL);
        if (i % 2 == 0) {
            tracing_span_server(&sp, &ctx);
            TRACING_SET(sp.name, "POST score", 10);
            sp.http_status = 200;
        } else {
            tracing_hop(&ctx, hop, tp);
            tracing_span_client(&sp, &ctx, hop);
            TRACING_SET(sp.name, "POST", 4);
            sp.http_status = 503;
            sp.shadow = 1;
        }
        sp.status = tracing_status_for_http(sp.kind, sp.http_status);
        TRACING_SET(sp.endpoint, "fraud", 5);
        int len = snprintf(buf, sizeof(buf), "v%d", w->id);
        TRACING_SET(sp.version, buf, (size_t)len);
        TRACING_SET(sp.group, "control", 7);
        len = snprintf(buf, sizeof(buf), "127.0.0.1:%d", i);
        TRACING_SET(sp.upstream, buf, (size_t)len);
        sp.end_ns = sp.start_ns + 1000 + (uint64_t)i;
        if (!tracing_submit(w->ring, &sp))
            w->refused++;
    }
    atomic_fetch_add(&workers_done, 1);
    return NULL;
}

static void
check(evutil_socket_t fd, short what, void *arg)
{
    struct tracing_stats st;

    if (atomic_load(&workers_done) < n_workers)
        return;
    if (switching) {
        /* The first batch went (it may still be in flight): switch, then
         * submit the second half from this thread, now ring 0's producer
         * (the worker was joined). */
        tracing_exporter_stats(exporter, &st);
        if (!flushed) {
            tracing_exporter_flush(exporter);
            flushed = true;
        }
        if (st.batches_sent == 0)
            return;
        tracing_exporter_reconfigure(exporter, &cfg2);
        switching = false;
        flushed = false;
        ws[0].id = 1;
        work(&ws[0]);
        return;
    }
    if (!flushed) {
        tracing_exporter_flush(exporter);
        flushed = true;
    }
    tracing_exporter_stats(exporter, &st);
    if (st.pending == 0 && st.exported + st.dropped == st.submitted)
        event_base_loopbreak(base);
}

static void
give_up(evutil_socket_t fd, short what, void *arg)
{
    fprintf(stderr, "export_driver: not settled in time\n");
    *(int *)arg = 1;
    event_base_loopbreak(base);
}

int
main(int argc, char **argv)
{
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s ENDPOINT SPANS WORKERS QUEUE BATCH TIMEOUT_MS before|during"
                " [ENDPOINT2]\n", argv[0]);
        return 2;
    }
    int spans = atoi(argv[2]);
    n_workers = atoi(argv[3]);
    during = strcmp(argv[7], "during") == 0;

    json_t *j = json_pack("{s:i, s:i, s:i, s:i, s:s}", "queue_max_spans", atoi(argv[4]),
                          "batch_max_spans", atoi(argv[5]), "export_timeout_ms", atoi(argv[6]),
                          "export_interval_ms", 50, "service_name", "sluice-test");
    if (strcmp(argv[1], "-") != 0)
        json_object_set_new(j, "otlp_endpoint", json_string(argv[1]));
    struct tracing_config cfg;
    char err[256];
    if (tracing_config_parse(j, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (argc == 9) {
        json_object_set_new(j, "otlp_endpoint", json_string(argv[8]));
        if (tracing_config_parse(j, &cfg2, err, sizeof(err)) < 0) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        switching = true;
        if (n_workers != 1 || during) {
            fprintf(stderr, "ENDPOINT2 needs 1 worker, before\n");
            return 2;
        }
    }
    json_decref(j);

    signal(SIGPIPE, SIG_IGN);       /* as the gateway does */
    base = event_base_new();
    exporter = tracing_exporter_new(base, &cfg, n_workers, err, sizeof(err));
    if (exporter == NULL) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    ws = calloc((size_t)n_workers, sizeof(*ws));
    for (int i = 0; i < n_workers; i++) {
        ws[i].id = i;
        ws[i].n = spans / n_workers + (i < spans % n_workers);
        ws[i].ring = tracing_exporter_ring(exporter, i);
        pthread_create(&ws[i].thread, NULL, work, &ws[i]);
        if (!during)
            pthread_join(ws[i].thread, NULL);
    }

    int late = 0;
    struct timeval tick = {0, 10000}, limit = {60, 0};
    struct event *ev = event_new(base, -1, EV_PERSIST, check, NULL);
    struct event *gu = evtimer_new(base, give_up, &late);
    event_add(ev, &tick);
    evtimer_add(gu, &limit);
    event_base_dispatch(base);

    unsigned refused = 0;
    for (int i = 0; i < n_workers; i++) {
        if (during)
            pthread_join(ws[i].thread, NULL);
        refused += ws[i].refused;
    }
    struct tracing_stats st;
    tracing_exporter_stats(exporter, &st);
    printf("{\"submitted\": %llu, \"exported\": %llu, \"dropped\": %llu, \"pending\": %llu,"
           " \"batches_sent\": %llu, \"batches_failed\": %llu, \"refused\": %u}\n",
           (unsigned long long)st.submitted, (unsigned long long)st.exported,
           (unsigned long long)st.dropped, (unsigned long long)st.pending,
           (unsigned long long)st.batches_sent, (unsigned long long)st.batches_failed, refused);
    event_free(ev);
    event_free(gu);
    tracing_exporter_free(exporter);
    event_base_free(base);
    free(ws);
    return late;
}
