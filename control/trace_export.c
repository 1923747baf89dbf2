/*
 * Span export on the main thread (SPEC §10): the tracing library's exporter
 * (tracing/export.c) on the main event_base, one ring per worker, the
 * config applied with every generation, the rings sent at shutdown, and
 * its counters on /metrics.
 *
 * The exporter exists whenever Sluice runs, with or without
 * "tracing.otlp_endpoint": a reload may add an endpoint, and the rings,
 * handed to the workers before they start, cannot be replaced under them.
 * Without an endpoint nothing is submitted (gateway/trace.c checks the
 * request's config), so the rings stay empty.
 */
#include "control/control.h"
#include "tracing/tracing.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>

static struct tracing_exporter *exporter;
static struct event_base *exp_base;

int
trace_export_start(struct event_base *base, const struct config *cfg, int n_workers,
                   char *err, size_t errlen)
{
    exporter = tracing_exporter_new(base, &cfg->tracing, n_workers, err, errlen);
    if (exporter == NULL)
        return -1;
    exp_base = base;
    struct tracing_ring **rings = calloc((size_t)n_workers, sizeof(*rings));
    if (rings == NULL) {
        tracing_exporter_free(exporter);
        exporter = NULL;
        snprintf(err, errlen, "tracing: out of memory");
        return -1;
    }
    for (int i = 0; i < n_workers; i++)
        rings[i] = tracing_exporter_ring(exporter, i);
    workers_set_trace_rings(rings, n_workers);  /* copied */
    free(rings);
    return 0;
}

void
trace_export_apply(const struct config *cfg)
{
    if (exporter != NULL)
        tracing_exporter_reconfigure(exporter, &cfg->tracing);
}

static void
stop_waiting(evutil_socket_t fd, short what, void *arg)
{
    *(bool *)arg = true;
}

void
trace_export_stop(int deadline_ms)
{
    if (exporter == NULL)
        return;
    /* The workers have ended: every span is in a ring. Send them, batch
     * after batch, until none is left or the deadline passes. */
    struct tracing_stats st;
    bool late = false;
    struct event *deadline = evtimer_new(exp_base, stop_waiting, &late);
    struct timeval tv = {deadline_ms / 1000, (deadline_ms % 1000) * 1000};
    if (deadline != NULL)
        evtimer_add(deadline, &tv);
    tracing_exporter_flush(exporter);
    for (;;) {
        tracing_exporter_stats(exporter, &st);
        if (st.pending == 0 || late || deadline == NULL)
            break;
        event_base_loop(exp_base, EVLOOP_ONCE);
    }
    if (deadline != NULL)
        event_free(deadline);
    tracing_exporter_free(exporter);    /* what is left is counted dropped */
    exporter = NULL;
    workers_set_trace_rings(NULL, 0);
}

void
trace_export_prometheus(struct evbuffer *out)
{
    struct tracing_stats st = {0};
    if (exporter != NULL)
        tracing_exporter_stats(exporter, &st);
    evbuffer_add_printf(out,
        "# HELP sluice_spans_exported_total Spans the trace collector accepted.\n"
        "# TYPE sluice_spans_exported_total counter\nsluice_spans_exported_total %llu\n"
        "# HELP sluice_spans_dropped_total Spans not exported: a worker's queue was full, or "
        "the collector was down, slow or refused them.\n"
        "# TYPE sluice_spans_dropped_total counter\nsluice_spans_dropped_total %llu\n"
        "# HELP sluice_spans_submitted_total Spans of sampled requests handed to the "
        "exporter.\n"
        "# TYPE sluice_spans_submitted_total counter\nsluice_spans_submitted_total %llu\n"
        "# HELP sluice_spans_pending Spans queued or in flight to the collector now.\n"
        "# TYPE sluice_spans_pending gauge\nsluice_spans_pending %llu\n",
        (unsigned long long)st.exported, (unsigned long long)st.dropped,
        (unsigned long long)st.submitted, (unsigned long long)st.pending);
}
