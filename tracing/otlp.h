/*
 * Internal to tracing/: the OTLP/HTTP JSON encoding of a batch of span
 * records (an ExportTraceServiceRequest), for export.c and the unit tests.
 */
#ifndef SLUICE_TRACING_OTLP_H
#define SLUICE_TRACING_OTLP_H

#include <stdbool.h>
#include <stddef.h>

#include "tracing/tracing.h"

/* A growing byte buffer; oom is set (and the text stops growing) when an
 * allocation fails. */
struct otlp_buf {
    char *p;
    size_t len, cap;
    bool oom;
};

/* {"resourceSpans":[{"resource":{service.name},"scopeSpans":[{"scope":...,
 * "spans":[ ... then otlp_span() per span, then otlp_end(). */
void otlp_begin(struct otlp_buf *b, const char *service_name);
void otlp_span(struct otlp_buf *b, const struct tracing_span *sp, bool first);
void otlp_end(struct otlp_buf *b);
void otlp_buf_free(struct otlp_buf *b);

#endif
