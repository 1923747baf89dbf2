/*
 * OTLP/HTTP JSON (opentelemetry-proto docs/specification.md, "JSON Protobuf
 * Encoding"): the proto3 JSON mapping with lowerCamelCase keys, except that
 * trace and span ids are hex strings, not base64, and enums are integers.
 * 64-bit integers (the fixed64 times, int64 intValue) are decimal strings.
 */
#include "tracing/otlp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "0"
#endif

static void
put(struct otlp_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if none. */
static size_t
utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;

    if (s[0] < 0xc2 || s[0] > 0xf4)
        return 0;
    len = s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : 4;
    if (n < len)
        return 0;
    cp = s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A JSON string: quotes, escapes; bytes that are not UTF-8 become U+FFFD. */
static void
put_str(struct otlp_buf *b, const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, run = 0;

    PUTS(b, "\"");
    while (i < n) {
        unsigned char c = u[i];
        size_t l;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            run++;
            continue;
        }
        if (c >= 0x80 && (l = utf8_len(u + i, n - i)) > 0) {
            i += l;
            run += l;
            continue;
        }
        put(b, (const char *)u + i - run, run);
        run = 0;
        if (c == '"')
            PUTS(b, "\\\"");
        else if (c == '\\')
            PUTS(b, "\\\\");
        else if (c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(b, esc, 6);
        } else
            PUTS(b, "\\ufffd");
        i++;
    }
    put(b, (const char *)u + i - run, run);
    PUTS(b, "\"");
}

static void
put_hex(struct otlp_buf *b, const uint8_t *id, size_t n)
{
    char hex[33];

    tracing_hex(id, n, hex);
    PUTS(b, "\"");
    put(b, hex, 2 * n);
    PUTS(b, "\"");
}

/* Digits by hand: snprintf() was a third of a span's encoding. */
static void
put_u64(struct otlp_buf *b, uint64_t v, bool quoted)
{
    char num[24];
    size_t i = sizeof(num);

    if (quoted)
        num[--i] = '"';
    do {
        num[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    if (quoted)
        num[--i] = '"';
    put(b, num + i, sizeof(num) - i);
}

/* One KeyValue; *first says whether a comma is needed before it. The keys
 * are our own literals, plain ASCII: no escaping. */
static void
attr_key(struct otlp_buf *b, bool *first, const char *key)
{
    if (!*first)
        PUTS(b, ",");
    *first = false;
    PUTS(b, "{\"key\":\"");
    put(b, key, strlen(key));
    PUTS(b, "\",\"value\":{");
}

static void
attr_str(struct otlp_buf *b, bool *first, const char *key, const char *val)
{
    if (val[0] == '\0')
        return;
    attr_key(b, first, key);
    PUTS(b, "\"stringValue\":");
    put_str(b, val);
    PUTS(b, "}}");
}

static void
attr_int(struct otlp_buf *b, bool *first, const char *key, uint64_t val)
{
    attr_key(b, first, key);
    PUTS(b, "\"intValue\":");
    put_u64(b, val, true);
    PUTS(b, "}}");
}

static void
attr_bool(struct otlp_buf *b, bool *first, const char *key, bool val)
{
    attr_key(b, first, key);
    if (val)
        PUTS(b, "\"boolValue\":true}}");
    else
        PUTS(b, "\"boolValue\":false}}");
}

void
otlp_begin(struct otlp_buf *b, const char *service_name)
{
    PUTS(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":["
            "{\"key\":\"service.name\",\"value\":{\"stringValue\":");
    put_str(b, service_name);
    PUTS(b, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"sluice\",\"version\":");
    put_str(b, SLUICE_VERSION);
    PUTS(b, "},\"spans\":[");
}

void
otlp_span(struct otlp_buf *b, const struct tracing_span *sp, bool first)
{
    static const uint8_t zero[8];
    bool a = true;
    /* Span.flags: the W3C flags, and whether the parent was remote
     * (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, _IS_REMOTE_MASK). */
    uint32_t flags = (uint32_t)sp->trace_flags | 0x100 | (sp->parent_remote ? 0x200 : 0);

    if (!first)
        PUTS(b, ",");
    PUTS(b, "{\"traceId\":");
    put_hex(b, sp->trace_id, 16);
    PUTS(b, ",\"spanId\":");
    put_hex(b, sp->span_id, 8);
    if (memcmp(sp->parent_id, zero, 8) != 0) {
        PUTS(b, ",\"parentSpanId\":");
        put_hex(b, sp->parent_id, 8);
    }
    PUTS(b, ",\"flags\":");
    put_u64(b, flags, false);
    PUTS(b, ",\"name\":");
    put_str(b, sp->name[0] ? sp->name : (sp->kind == TRACING_KIND_CLIENT ? "upstream" : "request"));
    PUTS(b, ",\"kind\":");
    put_u64(b, sp->kind, false);
    PUTS(b, ",\"startTimeUnixNano\":");
    put_u64(b, sp->start_ns, true);
    PUTS(b, ",\"endTimeUnixNano\":");
    put_u64(b, sp->end_ns < sp->start_ns ? sp->start_ns : sp->end_ns, true);
    PUTS(b, ",\"attributes\":[");
    attr_str(b, &a, "endpoint", sp->endpoint);
    attr_str(b, &a, "version", sp->version);
    attr_str(b, &a, "group", sp->group);
    if (sp->http_status)
        attr_int(b, &a, "status", sp->http_status);
    attr_str(b, &a, "upstream", sp->upstream);
    attr_bool(b, &a, "pinned", sp->pinned);
    attr_bool(b, &a, "shadow", sp->shadow);
    PUTS(b, "],\"status\":{\"code\":");
    put_u64(b, sp->status, false);
    PUTS(b, "}}");
}

void
otlp_end(struct otlp_buf *b)
{
    PUTS(b, "]}]}]}");
}

void
otlp_buf_free(struct otlp_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}
