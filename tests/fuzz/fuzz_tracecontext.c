/*
 * libFuzzer target: the W3C trace context a client controls. The input is
 * a traceparent value, then (after the first '\n') a tracestate value.
 * Checked on every input:
 *  - a traceparent that parses is exactly what it says (its fields,
 *    written back, are its first 55 characters) and has non-zero ids;
 *  - a cleaned tracestate is at most 512 characters and no longer than
 *    the input, cleaning it again changes nothing, and cleaning in place
 *    gives the same bytes;
 *  - a request's context keeps a tracestate only after a valid
 *    traceparent, and the traceparent of every hop parses, with the
 *    request's trace id and flags 00 or 01.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tracing/tracing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    const char *nl = memchr(in, '\n', size);
    size_t tp_len = nl ? (size_t)(nl - in) : size;
    const char *ts = nl ? nl + 1 : NULL;
    size_t ts_len = nl ? size - tp_len - 1 : 0;

    /* traceparent */
    struct tracing_parent p;
    if (tracing_traceparent_parse(in, tp_len, &p) == TRACING_PARENT_OK) {
        const char *v = in;
        size_t n = tp_len;
        while (n > 0 && (*v == ' ' || *v == '\t')) {
            v++;
            n--;
        }
        char tid[33], pid[17], back[64];
        tracing_hex(p.trace_id, 16, tid);
        tracing_hex(p.parent_id, 8, pid);
        snprintf(back, sizeof(back), "%02x-%s-%s-%02x", p.version, tid, pid, p.flags);
        if (n < TRACING_TRACEPARENT_LEN || memcmp(back, v, TRACING_TRACEPARENT_LEN) != 0)
            abort();
        if (strcmp(tid, "00000000000000000000000000000000") == 0 ||
            strcmp(pid, "0000000000000000") == 0 || p.version == 0xff)
            abort();
    }

    /* tracestate */
    char *a = malloc(ts_len + 1), *b = malloc(ts_len + 1), *c = malloc(TRACING_TRACESTATE_MAX + 1);
    size_t na = ts ? tracing_tracestate_clean(ts, ts_len, a) : 0;
    if (na > TRACING_TRACESTATE_MAX || na > ts_len)
        abort();
    if (na > 0) {
        size_t nc = tracing_tracestate_clean(a, na, c);
        if (nc != na || memcmp(a, c, na) != 0)
            abort();
        int commas = 0;
        for (size_t i = 0; i < na; i++) {
            commas += a[i] == ',';
            if (a[i] == '\t' || (a[i] == ' ' && (i + 1 == na || a[i + 1] == ',')))
                abort();
        }
        if (commas >= TRACING_TRACESTATE_MEMBERS)
            abort();
    }
    if (ts) {
        memcpy(b, ts, ts_len);
        size_t nb = tracing_tracestate_clean(b, ts_len, b);
        if (nb != na || memcmp(a, b, na) != 0)
            abort();
    }

    /* a request's context and its hops */
    struct tracing_ctx ctx;
    char *copy = malloc(ts_len + 1);
    if (ts)
        memcpy(copy, ts, ts_len);
    enum tracing_parent_status st = tracing_ctx_begin(&ctx, in, tp_len, 1, ts ? copy : NULL,
                                                      ts_len, copy, UINT64_C(1) << 55);
    if (st != TRACING_PARENT_OK && ctx.state_len != 0)
        abort();
    if (st == TRACING_PARENT_OK && (memcmp(ctx.trace_id, p.trace_id, 16) != 0 ||
                                    ctx.state_len != na || memcmp(ctx.state, a, na) != 0))
        abort();
    char hop[TRACING_TRACEPARENT_LEN];
    uint8_t span[8];
    struct tracing_parent q;
    tracing_hop(&ctx, span, hop);
    if (tracing_traceparent_parse(hop, sizeof(hop), &q) != TRACING_PARENT_OK ||
        memcmp(q.trace_id, ctx.trace_id, 16) != 0 || memcmp(q.parent_id, span, 8) != 0 ||
        q.version != 0 || (q.flags & ~TRACING_FLAG_SAMPLED) != 0)
        abort();
    free(a);
    free(b);
    free(c);
    free(copy);
    return 0;
}
