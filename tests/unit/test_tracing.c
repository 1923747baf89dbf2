/*
 * Trace context, tracestate, sampling, config and the OTLP JSON encoding,
 * without sockets. The traceparent and tracestate cases are the W3C Trace
 * Context recommendation's own examples and its test suite's (w3c/
 * trace-context test/test.py, strict level 2) as unit cases.
 */
#include <event2/event.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tracing/otlp.h"
#include "tracing/tracing.h"
#include "check.h"

#define TID "12345678901234567890123456789012"
#define PID "1234567890123456"

static enum tracing_parent_status
parse(const char *v)
{
    struct tracing_parent p;
    return tracing_traceparent_parse(v, strlen(v), &p);
}

static bool
hex_is(const uint8_t *id, size_t n, const char *want)
{
    char h[33];
    tracing_hex(id, n, h);
    return strcmp(h, want) == 0;
}

static void
test_traceparent_valid(void)
{
    struct tracing_parent p;
    const char *v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    CHECK(tracing_traceparent_parse(v, strlen(v), &p) == TRACING_PARENT_OK, "spec example");
    CHECK(hex_is(p.trace_id, 16, "4bf92f3577b34da6a3ce929d0e0e4736"), "trace id");
    CHECK(hex_is(p.parent_id, 8, "00f067aa0ba902b7"), "parent id");
    CHECK(p.flags == 1 && p.version == 0, "flags %d version %d", p.flags, p.version);
    v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    CHECK(tracing_traceparent_parse(v, strlen(v), &p) == TRACING_PARENT_OK && p.flags == 0,
          "not sampled example");
    /* OWS around the value is not part of it. */
    CHECK(parse(" 00-" TID "-" PID "-01") == TRACING_PARENT_OK, "leading space");
    CHECK(parse("\t00-" TID "-" PID "-01") == TRACING_PARENT_OK, "leading tab");
    CHECK(parse("00-" TID "-" PID "-01 ") == TRACING_PARENT_OK, "trailing space");
    CHECK(parse("\t 00-" TID "-" PID "-01 \t") == TRACING_PARENT_OK, "both");
    CHECK(parse("00-" TID "-" PID "-ff") == TRACING_PARENT_OK, "all flags set is valid");
    CHECK(tracing_traceparent_parse(NULL, 0, &p) == TRACING_PARENT_ABSENT, "absent");
}

static void
test_traceparent_invalid(void)
{
    CHECK(parse("ff-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version ff");
    CHECK(parse(".0-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version .0");
    CHECK(parse("0.-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version 0.");
    CHECK(parse("000-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version too long");
    CHECK(parse("0000-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version too long 2");
    CHECK(parse("0-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version too short");
    CHECK(parse("0A-" TID "-" PID "-01") == TRACING_PARENT_VERSION, "version uppercase");
    CHECK(parse("") == TRACING_PARENT_VERSION, "empty");
    CHECK(parse("00-00000000000000000000000000000000-" PID "-01") ==
          TRACING_PARENT_ZERO_TRACE_ID, "trace id all zero");
    CHECK(parse("00-" TID "-0000000000000000-01") == TRACING_PARENT_ZERO_PARENT_ID,
          "parent id all zero");
    CHECK(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01") ==
          TRACING_PARENT_FORMAT, "uppercase trace id");
    CHECK(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01") ==
          TRACING_PARENT_FORMAT, "uppercase parent id");
    CHECK(parse("00-" TID "-" PID "-0A") == TRACING_PARENT_FORMAT, "uppercase flags");
    CHECK(parse("00-.2345678901234567890123456789012-" PID "-01") == TRACING_PARENT_FORMAT,
          "trace id illegal character first");
    CHECK(parse("00-1234567890123456789012345678901.-" PID "-01") == TRACING_PARENT_FORMAT,
          "trace id illegal character last");
    CHECK(parse("00-" TID "-.234567890123456-01") == TRACING_PARENT_FORMAT, "parent id illegal");
    CHECK(parse("00-" TID "-123456789012345.-01") == TRACING_PARENT_FORMAT, "parent id illegal 2");
    CHECK(parse("00-" TID "-" PID "-.0") == TRACING_PARENT_FORMAT, "flags illegal");
    CHECK(parse("00-" TID "-" PID "-0.") == TRACING_PARENT_FORMAT, "flags illegal 2");
    /* Lengths: version 00 is exactly 55 characters. */
    CHECK(parse("00-" TID "-" PID "-01.") == TRACING_PARENT_LENGTH, "trailing character");
    CHECK(parse("00-" TID "-" PID "-01-what-the-future-will-be-like") == TRACING_PARENT_LENGTH,
          "00 with extra fields");
    CHECK(parse("00-" TID "3-" PID "-01") == TRACING_PARENT_LENGTH, "trace id too long");
    CHECK(parse("00-1234567890123456789012345678901-" PID "-01") == TRACING_PARENT_LENGTH,
          "trace id too short");
    CHECK(parse("00-" TID "-12345678901234567-01") == TRACING_PARENT_LENGTH, "parent id too long");
    CHECK(parse("00-" TID "-123456789012345-01") == TRACING_PARENT_LENGTH, "parent id too short");
    CHECK(parse("00-" TID "-" PID "-001") == TRACING_PARENT_LENGTH, "flags too long");
    CHECK(parse("00-" TID "-" PID "-1") == TRACING_PARENT_LENGTH, "flags too short");
    CHECK(parse("00_" TID "-" PID "-01") == TRACING_PARENT_VERSION, "wrong first separator");
    CHECK(parse("00-" TID "_" PID "-01") == TRACING_PARENT_FORMAT, "wrong second separator");
}

/* Every byte value at every id position: valid exactly for 0-9 a-f, and
 * decoded to its value (the ids are decoded 8 characters at a time). */
static void
test_traceparent_every_character(void)
{
    char v[TRACING_TRACEPARENT_LEN + 1];
    struct tracing_parent p;
    int bad = 0;

    for (int pos = 3; pos < 52; pos++) {
        if (pos == 35)
            continue;
        for (int c = 1; c < 256; c++) {
            strcpy(v, "00-" TID "-" PID "-01");
            v[pos] = (char)c;
            bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            enum tracing_parent_status st = tracing_traceparent_parse(v, TRACING_TRACEPARENT_LEN, &p);
            if (hex != (st == TRACING_PARENT_OK) &&
                !(hex && c == '0' && st != TRACING_PARENT_FORMAT)) {
                bad++;
                continue;
            }
            if (st != TRACING_PARENT_OK)
                continue;
            char h[33];
            if (pos < 35) {
                tracing_hex(p.trace_id, 16, h);
                bad += h[pos - 3] != c || memcmp(h, v + 3, 32) != 0;
            } else {
                tracing_hex(p.parent_id, 8, h);
                bad += h[pos - 36] != c || memcmp(h, v + 36, 16) != 0;
            }
        }
    }
    CHECK(bad == 0, "%d characters misread", bad);
}

static void
test_traceparent_future_version(void)
{
    struct tracing_parent p;
    const char *v = "cc-" TID "-" PID "-01-what-the-future-will-be-like";

    CHECK(parse("cc-" TID "-" PID "-01") == TRACING_PARENT_OK, "version cc");
    CHECK(tracing_traceparent_parse(v, strlen(v), &p) == TRACING_PARENT_OK, "cc with more fields");
    CHECK(p.version == 0xcc && hex_is(p.trace_id, 16, TID) && p.flags == 1, "cc fields");
    CHECK(parse("cc-" TID "-" PID "-01.what-the-future-will-be-like") == TRACING_PARENT_LENGTH,
          "cc with no dash after the flags");
    CHECK(parse("cc-" TID "-" PID "-1") == TRACING_PARENT_LENGTH, "cc shorter than 55");
    CHECK(parse("fe-" TID "-" PID "-01-") == TRACING_PARENT_OK, "fe with an empty extra field");
}

static void
test_context_continue(void)
{
    struct tracing_ctx ctx;
    const char *tp = "00-" TID "-" PID "-01";
    char ts[64] = "foo=1,bar=2";
    char out[TRACING_TRACEPARENT_LEN + 1] = {0};
    uint8_t hop1[8], hop2[8];

    CHECK(sizeof(struct tracing_ctx) <= 64, "context is %zu bytes", sizeof(struct tracing_ctx));
    CHECK(tracing_ctx_begin(&ctx, tp, strlen(tp), 1, ts, strlen(ts), ts, TRACING_SAMPLE_NONE) ==
          TRACING_PARENT_OK, "continued");
    CHECK(hex_is(ctx.trace_id, 16, TID), "same trace id");
    CHECK(hex_is(ctx.parent_id, 8, PID), "the caller's span is the parent");
    CHECK(!hex_is(ctx.span_id, 8, PID) && !hex_is(ctx.span_id, 8, "0000000000000000"),
          "a new span id");
    CHECK(tracing_sampled(&ctx), "sampled flag honoured even at ratio 0");
    CHECK(ctx.state_len == 11 && memcmp(ctx.state, "foo=1,bar=2", 11) == 0, "tracestate kept");

    tracing_hop(&ctx, hop1, out);
    CHECK(strncmp(out, "00-" TID "-", 36) == 0, "hop keeps version 00 and the trace id: %s", out);
    CHECK(strcmp(out + 52, "-01") == 0, "hop flags: %s", out);
    CHECK(!hex_is(hop1, 8, "0000000000000000"), "hop span id not zero");
    char h[17];
    tracing_hex(hop1, 8, h);
    CHECK(memcmp(out + 36, h, 16) == 0, "the header carries the hop's span id");
    CHECK(memcmp(hop1, ctx.span_id, 8) != 0 && memcmp(hop1, ctx.parent_id, 8) != 0,
          "hop span differs from the server span and the parent");
    tracing_hop(&ctx, hop2, out);
    CHECK(memcmp(hop1, hop2, 8) != 0, "a new span id for every hop");
    struct tracing_parent p;
    CHECK(tracing_traceparent_parse(out, TRACING_TRACEPARENT_LEN, &p) == TRACING_PARENT_OK,
          "the hop's traceparent parses");

    /* Not sampled in: not sampled out, even at ratio 1. */
    tp = "00-" TID "-" PID "-00";
    tracing_ctx_begin(&ctx, tp, strlen(tp), 1, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    CHECK(!tracing_sampled(&ctx) && hex_is(ctx.trace_id, 16, TID), "unsampled parent honoured");
    CHECK(ctx.state_len == 0, "no tracestate");
    tracing_hop(&ctx, hop1, out);
    CHECK(strcmp(out + 52, "-00") == 0, "flags 00: %s", out);

    /* Unknown flags cleared. */
    tp = "00-" TID "-" PID "-ff";
    tracing_ctx_begin(&ctx, tp, strlen(tp), 1, NULL, 0, NULL, TRACING_SAMPLE_NONE);
    tracing_hop(&ctx, hop1, out);
    CHECK(strcmp(out + 52, "-01") == 0, "ff becomes 01: %s", out);
    tp = "00-" TID "-" PID "-02";
    tracing_ctx_begin(&ctx, tp, strlen(tp), 1, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    tracing_hop(&ctx, hop1, out);
    CHECK(strcmp(out + 52, "-00") == 0, "02 becomes 00: %s", out);

    /* A future version is continued as version 00. */
    tp = "cc-" TID "-" PID "-01-what-the-future-will-be-like";
    tracing_ctx_begin(&ctx, tp, strlen(tp), 1, NULL, 0, NULL, TRACING_SAMPLE_NONE);
    tracing_hop(&ctx, hop1, out);
    CHECK(strncmp(out, "00-" TID "-", 36) == 0 && strcmp(out + 52, "-01") == 0,
          "downgraded to 00: %s", out);
}

static void
test_context_restart(void)
{
    struct tracing_ctx ctx;
    char ts[64];
    const char *tp = "00-" TID "-" PID "-01";
    const char *bad = "00-00000000000000000000000000000000-" PID "-01";

    strcpy(ts, "foo=1");
    CHECK(tracing_ctx_begin(&ctx, NULL, 0, 0, ts, 5, ts, TRACING_SAMPLE_ALL) ==
          TRACING_PARENT_ABSENT, "absent");
    CHECK(!hex_is(ctx.trace_id, 16, "00000000000000000000000000000000"), "new trace id");
    CHECK(hex_is(ctx.parent_id, 8, "0000000000000000"), "a root: no parent");
    CHECK(ctx.state_len == 0, "orphan tracestate dropped");
    CHECK(tracing_sampled(&ctx), "ratio 1 samples a new trace");

    CHECK(tracing_ctx_begin(&ctx, bad, strlen(bad), 1, ts, 5, ts, TRACING_SAMPLE_NONE) ==
          TRACING_PARENT_ZERO_TRACE_ID, "invalid");
    CHECK(!hex_is(ctx.trace_id, 16, "00000000000000000000000000000000"), "restarted");
    CHECK(ctx.state_len == 0, "tracestate of an invalid traceparent dropped");
    CHECK(!tracing_sampled(&ctx), "ratio 0 does not sample a new trace");

    CHECK(tracing_ctx_begin(&ctx, tp, strlen(tp), 2, ts, 5, ts, TRACING_SAMPLE_NONE) ==
          TRACING_PARENT_DUPLICATE, "two traceparent headers");
    CHECK(!hex_is(ctx.trace_id, 16, TID), "duplicates start a new trace");
    CHECK(ctx.state_len == 0, "and drop the tracestate");

    /* Every request its own trace and span. */
    struct tracing_ctx a, b;
    tracing_ctx_begin(&a, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    tracing_ctx_begin(&b, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    CHECK(memcmp(a.trace_id, b.trace_id, 16) != 0 && memcmp(a.span_id, b.span_id, 8) != 0,
          "distinct ids");
}

static size_t
clean(const char *in, char *out)
{
    size_t n = tracing_tracestate_clean(in, strlen(in), out);
    out[n] = '\0';
    return n;
}

static void
test_tracestate(void)
{
    char out[8192], big[8192];

    CHECK(clean("foo=1,bar=2", out) && strcmp(out, "foo=1,bar=2") == 0, "plain: %s", out);
    CHECK(clean("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", out) &&
          strcmp(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == 0, "spec example: %s", out);
    clean("foo=1 \t , \t bar=2, \t baz=3", out);
    CHECK(strcmp(out, "foo=1,bar=2,baz=3") == 0, "OWS: %s", out);
    clean("\t foo=1 \t", out);
    CHECK(strcmp(out, "foo=1") == 0, "OWS around one: %s", out);
    CHECK(clean("", out) == 0, "empty");
    CHECK(clean(" , ,\t,", out) == 0, "only empty members");
    clean("foo=1,,bar=2,", out);
    CHECK(strcmp(out, "foo=1,bar=2") == 0, "empty members left out: %s", out);
    clean("foo= x", out);
    CHECK(strcmp(out, "foo= x") == 0, "leading space of a value kept: %s", out);
    clean("foo=1,foo=2", out);
    CHECK(strcmp(out, "foo=1,foo=2") == 0, "duplicate keys passed on: %s", out);
    /* Several header fields, joined with ',' in order. */
    clean("foo=1,bar=2,rojo=1,congo=2,baz=3", out);
    CHECK(strcmp(out, "foo=1,bar=2,rojo=1,congo=2,baz=3") == 0, "order kept: %s", out);

    CHECK(clean("foo =1", out) == 0, "space in key");
    CHECK(clean("FOO=1", out) == 0, "uppercase key");
    CHECK(clean("foo.bar=1", out) == 0, "dot in key");
    CHECK(clean("@foo=1,bar=2", out) == 0, "key starting with @: all dropped");
    CHECK(clean("foo=bar=baz", out) == 0, "= in value");
    CHECK(clean("foo=,bar=3", out) == 0, "empty value: all dropped");
    CHECK(clean("foo", out) == 0, "no =");
    CHECK(clean("foo=a\x01", out) == 0, "control character in value");
    CHECK(clean("foo=\xc3\xa9", out) == 0, "non-ASCII value");
    clean("foo@=1,bar=2", out);
    CHECK(strcmp(out, "foo@=1,bar=2") == 0, "@ at the end of a key: %s", out);
    clean("foo@@bar=1,bar=2", out);
    CHECK(strcmp(out, "foo@@bar=1,bar=2") == 0, "@@: %s", out);
    clean("t@vvvvvvvvvvvvvvv=1", out);
    CHECK(strcmp(out, "t@vvvvvvvvvvvvvvv=1") == 0, "long system part: %s", out);

    /* Every allowed character. */
    char key[64], val[128], m[200];
    int k = 0, v = 0;
    for (int c = 'a'; c <= 'z'; c++)
        key[k++] = (char)c;
    memcpy(key + k, "0123456789_-*/@", 15);
    key[k + 15] = '\0';
    for (int c = 0x20; c <= 0x7e; c++)
        if (c != ',' && c != '=')
            val[v++] = (char)c;
    val[v] = '\0';
    snprintf(m, sizeof(m), "%s=%s", key, val);
    clean(m, out);
    CHECK(strcmp(out, m) == 0, "all allowed characters: %s", out);

    /* Key length: 256 valid, 257 not. */
    memset(big, 'z', 256);
    strcpy(big + 256, "=1");
    CHECK(clean(big, out) == 258, "key of 256");
    memset(big, 'z', 257);
    strcpy(big + 257, "=1,foo=1");
    CHECK(clean(big, out) == 0, "key of 257 drops all");
    /* Value length: 256 valid, 257 not. */
    strcpy(big, "k=");
    memset(big + 2, 'v', 256);
    big[258] = '\0';
    CHECK(clean(big, out) == 258, "value of 256");
    strcpy(big, "k=");
    memset(big + 2, 'v', 257);
    big[259] = '\0';
    CHECK(clean(big, out) == 0, "value of 257");

    /* 32 members valid, 33 invalid. */
    int o = 0;
    for (int i = 1; i <= 32; i++)
        o += sprintf(big + o, "%sbar%02d=%02d", i > 1 ? "," : "", i, i);
    CHECK(clean(big, out) == (size_t)o, "32 members kept");
    sprintf(big + o, ",bar33=33");
    CHECK(clean(big, out) == 0, "33 members: dropped");

    /* Over 512: whole members from the end. */
    o = 0;
    for (int i = 0; i < 10; i++) {
        o += sprintf(big + o, "%sk%d=", i ? "," : "", i);
        memset(big + o, 'a' + i, 57);
        o += 57;
    }
    big[o] = '\0';              /* 10 members of 60: 609 characters */
    size_t n = clean(big, out);
    CHECK(n == 8 * 60 + 7 && memcmp(out, big, n) == 0, "cut to 8 members: %zu", n);
    /* A member over 128 characters goes first, wherever it is. */
    o = 0;
    for (int i = 0; i < 6; i++) {
        o += sprintf(big + o, "%sk%d=", i ? "," : "", i);
        int len = i == 1 ? 200 : 57;
        memset(big + o, 'a' + i, (size_t)len);
        o += len;
    }
    big[o] = '\0';              /* 60 + 203 + 4*60 + 5 commas = 508: fits */
    CHECK(clean(big, out) == (size_t)o, "under 512 kept whole (%d)", o);
    o += sprintf(big + o, ",k6=");
    memset(big + o, 'x', 57);
    o += 57;
    big[o] = '\0';              /* 569 */
    n = clean(big, out);
    CHECK(n == 6 * 60 + 5 && strstr(out, "k1=") == NULL && strstr(out, "k6=") != NULL,
          "the long member dropped, the last kept: %zu", n);

    /* In place, as tracing_ctx_begin() uses it. */
    strcpy(big, "  a=1 ,\t, b=2  ");
    n = tracing_tracestate_clean(big, strlen(big), big);
    CHECK(n == 7 && memcmp(big, "a=1,b=2", 7) == 0, "in place");
}

static void
test_sampling(void)
{
    struct tracing_config c;
    char err[200];
    uint8_t id[16] = {0};
    json_t *j;

    /* The threshold reads the right-most 7 bytes. */
    j = json_pack("{s:f}", "sample_ratio", 0.5);
    CHECK(tracing_config_parse(j, &c, err, sizeof(err)) == 0, "%s", err);
    json_decref(j);
    CHECK(c.sample_threshold == (UINT64_C(1) << 55), "half: %llx",
          (unsigned long long)c.sample_threshold);
    id[9] = 0x80;
    CHECK(tracing_sample(id, c.sample_threshold), "upper half sampled");
    id[9] = 0x7f;
    memset(id + 10, 0xff, 6);
    id[0] = 0xff;               /* the left bytes do not count */
    CHECK(!tracing_sample(id, c.sample_threshold), "lower half not");
    CHECK(tracing_sample(id, TRACING_SAMPLE_ALL), "ratio 1");
    memset(id, 0xff, 16);
    CHECK(!tracing_sample(id, TRACING_SAMPLE_NONE), "ratio 0");

    /* 0.01 over a fixed sequence of ids: close to 1 %. */
    j = json_pack("{s:f}", "sample_ratio", 0.01);
    tracing_config_parse(j, &c, err, sizeof(err));
    json_decref(j);
    uint64_t x = 12345;
    int hits = 0;
    for (int i = 0; i < 100000; i++) {
        for (int b = 0; b < 16; b++) {
            x = x * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
            id[b] = (uint8_t)(x >> 56);
        }
        hits += tracing_sample(id, c.sample_threshold);
    }
    CHECK(hits > 850 && hits < 1150, "1 %% of 100000: %d", hits);

    /* The same trace id, the same decision, every time. */
    bool first = tracing_sample(id, c.sample_threshold);
    for (int i = 0; i < 10; i++)
        CHECK(tracing_sample(id, c.sample_threshold) == first, "deterministic per trace");
}

static int
cfg(const char *text, struct tracing_config *c, char *err)
{
    json_t *j = json_loads(text, 0, NULL);
    int r = tracing_config_parse(j, c, err, 200);
    json_decref(j);
    return r;
}

static void
test_config(void)
{
    struct tracing_config c;
    char err[200] = "";

    CHECK(tracing_config_parse(NULL, &c, err, sizeof(err)) == 0 && !c.export &&
          c.sample_threshold == TRACING_SAMPLE_NONE, "no tracing section");
    CHECK(cfg("{\"otlp_endpoint\": \"http://127.0.0.1:4318/v1/traces\", \"sample_ratio\": 0.01,"
              " \"service_name\": \"gw\"}", &c, err) == 0, "%s", err);
    CHECK(c.export && strcmp(c.host, "127.0.0.1") == 0 && c.port == 4318 &&
          strcmp(c.path, "/v1/traces") == 0 && strcmp(c.service_name, "gw") == 0 &&
          c.sample_ratio == 0.01, "fields");
    CHECK(cfg("{}", &c, err) == 0 && !c.export && c.sample_ratio == 1.0 &&
          c.sample_threshold == 0 && strcmp(c.service_name, "sluice") == 0 &&
          c.batch_max_spans == 512 && c.queue_max_spans == 2048 &&
          c.export_interval_ms == 1000 && c.export_timeout_ms == 10000, "defaults");
    CHECK(cfg("{\"otlp_endpoint\": \"http://collector.local\"}", &c, err) == 0 &&
          c.port == 80 && strcmp(c.path, "/v1/traces") == 0 &&
          strcmp(c.host, "collector.local") == 0, "no port or path");
    CHECK(cfg("{\"otlp_endpoint\": \"http://[::1]:4318/otlp/v1/traces\"}", &c, err) == 0 &&
          strcmp(c.host, "::1") == 0 && c.port == 4318 &&
          strcmp(c.path, "/otlp/v1/traces") == 0, "IPv6");
    CHECK(cfg("{\"batch_max_spans\": 100, \"queue_max_spans\": 1024, \"export_interval_ms\": 50,"
              " \"export_timeout_ms\": 2000}", &c, err) == 0 && c.batch_max_spans == 100 &&
          c.queue_max_spans == 1024 && c.export_interval_ms == 50 &&
          c.export_timeout_ms == 2000, "knobs");

    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"{\"sample_ratio\": 2}", "tracing.sample_ratio: must be a number from 0 to 1"},
        {"{\"sample_ratio\": -0.1}", "tracing.sample_ratio: must be a number from 0 to 1"},
        {"{\"sample_ratio\": \"0.5\"}", "tracing.sample_ratio: must be a number from 0 to 1"},
        {"{\"otlp_endpoint\": \"https://h:4318/v1/traces\"}",
         "tracing.otlp_endpoint: only http:// endpoints are supported"},
        {"{\"otlp_endpoint\": \"h:4318\"}", "tracing.otlp_endpoint: must be a URL http://HOST:PORT/PATH"},
        {"{\"otlp_endpoint\": \"http://h:0/\"}", "tracing.otlp_endpoint: port must be 1 to 65535"},
        {"{\"otlp_endpoint\": \"http://h:65536/\"}", "tracing.otlp_endpoint: port must be 1 to 65535"},
        {"{\"otlp_endpoint\": \"http://:80/\"}", "tracing.otlp_endpoint: no host"},
        {"{\"otlp_endpoint\": \"http://h/a b\"}", "tracing.otlp_endpoint: path has a character that needs escaping"},
        {"{\"otlp_endpoint\": 5}", "tracing.otlp_endpoint: must be a string"},
        {"{\"service_name\": \"\"}", "tracing.service_name: must be a string of 1 to 63 characters"},
        {"{\"queue_max_spans\": 1000}", "tracing.queue_max_spans: must be a power of two"},
        {"{\"batch_max_spans\": 0}", "tracing.batch_max_spans: must be an integer from 1 to 65536"},
        {"{\"batch_max_spans\": 4096, \"queue_max_spans\": 1024}",
         "tracing.batch_max_spans: must not exceed queue_max_spans"},
        {"{\"sample_rate\": 0.1}", "tracing.sample_rate: unknown field"},
        {"[]", "tracing: must be an object"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        CHECK(cfg(bad[i].text, &c, err) == -1 && strcmp(err, bad[i].msg) == 0,
              "%s: got \"%s\"", bad[i].text, err);
    }
}

static void
fill_span(struct tracing_span *sp, struct tracing_ctx *ctx)
{
    tracing_span_server(sp, ctx);
    TRACING_SET(sp->name, "POST score", 10);
    TRACING_SET(sp->endpoint, "fraud", 5);
    TRACING_SET(sp->version, "v2", 2);
    TRACING_SET(sp->group, "treatment", 9);
    TRACING_SET(sp->upstream, "10.0.0.1:8080", 13);
    sp->http_status = 503;
    sp->status = tracing_status_for_http(TRACING_KIND_SERVER, 503);
    sp->end_ns = sp->start_ns + 1500;
}

static const char *
attr(json_t *span, const char *key, const char *type)
{
    static char buf[64];
    size_t i;
    json_t *kv;

    json_array_foreach(json_object_get(span, "attributes"), i, kv) {
        if (strcmp(json_string_value(json_object_get(kv, "key")), key) != 0)
            continue;
        json_t *v = json_object_get(json_object_get(kv, "value"), type);
        if (json_is_string(v))
            return json_string_value(v);
        if (json_is_boolean(v))
            return json_is_true(v) ? "true" : "false";
        snprintf(buf, sizeof(buf), "?");
        return buf;
    }
    return NULL;
}

static void
test_encoding(void)
{
    struct tracing_ctx ctx;
    struct tracing_span sp, cl;
    struct otlp_buf b = {0};
    const char *tp = "00-" TID "-" PID "-01";
    uint8_t hop[8];
    char out[TRACING_TRACEPARENT_LEN], h[17];

    tracing_ctx_begin(&ctx, tp, strlen(tp), 1, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    fill_span(&sp, &ctx);
    tracing_hop(&ctx, hop, out);
    tracing_span_client(&cl, &ctx, hop);
    TRACING_SET(cl.endpoint, "a\"b\\c\n\xff\xc3\xa9", 9);  /* escapes, a bad byte, é */
    cl.shadow = 1;
    cl.end_ns = cl.start_ns;

    otlp_begin(&b, "sluice");
    otlp_span(&b, &sp, true);
    otlp_span(&b, &cl, false);
    otlp_end(&b);
    CHECK(!b.oom, "encoded");
    json_error_t je;
    json_t *doc = json_loads(b.p, 0, &je);
    CHECK(doc != NULL, "valid JSON: %s: %s", je.text, b.p);
    json_t *rs = json_array_get(json_object_get(doc, "resourceSpans"), 0);
    json_t *res_attr = json_array_get(json_object_get(json_object_get(rs, "resource"), "attributes"), 0);
    CHECK(strcmp(json_string_value(json_object_get(res_attr, "key")), "service.name") == 0 &&
          strcmp(json_string_value(json_object_get(json_object_get(res_attr, "value"),
                                                   "stringValue")), "sluice") == 0, "resource");
    json_t *spans = json_object_get(json_array_get(json_object_get(rs, "scopeSpans"), 0), "spans");
    CHECK(json_array_size(spans) == 2, "two spans");
    json_t *s0 = json_array_get(spans, 0), *s1 = json_array_get(spans, 1);
    CHECK(strcmp(json_string_value(json_object_get(s0, "traceId")), TID) == 0, "traceId hex");
    CHECK(strcmp(json_string_value(json_object_get(s0, "parentSpanId")), PID) == 0, "parent");
    tracing_hex(ctx.span_id, 8, h);
    CHECK(strcmp(json_string_value(json_object_get(s0, "spanId")), h) == 0, "spanId");
    CHECK(strcmp(json_string_value(json_object_get(s1, "parentSpanId")), h) == 0,
          "the client span's parent is the server span");
    tracing_hex(hop, 8, h);
    CHECK(strcmp(json_string_value(json_object_get(s1, "spanId")), h) == 0, "client spanId");
    CHECK(json_integer_value(json_object_get(s0, "kind")) == 2 &&
          json_integer_value(json_object_get(s1, "kind")) == 3, "kinds as integers");
    CHECK(json_integer_value(json_object_get(s0, "flags")) == 0x301 &&
          json_integer_value(json_object_get(s1, "flags")) == 0x101, "flags");
    json_t *st = json_object_get(s0, "startTimeUnixNano"), *en = json_object_get(s0, "endTimeUnixNano");
    CHECK(json_is_string(st) && json_is_string(en) &&
          strtoull(json_string_value(en), NULL, 10) - strtoull(json_string_value(st), NULL, 10) == 1500,
          "times as decimal strings");
    CHECK(json_integer_value(json_object_get(json_object_get(s0, "status"), "code")) == 2,
          "status code as an integer");
    CHECK(strcmp(attr(s0, "status", "intValue"), "503") == 0, "status attribute as a string");
    CHECK(strcmp(attr(s0, "endpoint", "stringValue"), "fraud") == 0 &&
          strcmp(attr(s0, "version", "stringValue"), "v2") == 0 &&
          strcmp(attr(s0, "group", "stringValue"), "treatment") == 0 &&
          strcmp(attr(s0, "upstream", "stringValue"), "10.0.0.1:8080") == 0 &&
          strcmp(attr(s0, "pinned", "boolValue"), "false") == 0 &&
          strcmp(attr(s0, "shadow", "boolValue"), "false") == 0, "attributes");
    CHECK(strcmp(attr(s1, "endpoint", "stringValue"), "a\"b\\c\n\xef\xbf\xbd\xc3\xa9") == 0,
          "escaped, the bad byte replaced");
    CHECK(strcmp(attr(s1, "shadow", "boolValue"), "true") == 0, "shadow");
    CHECK(attr(s1, "status", "intValue") == NULL && attr(s1, "version", "stringValue") == NULL,
          "absent attributes left out");
    json_decref(doc);
    otlp_buf_free(&b);
}

static void
test_span_helpers(void)
{
    char small[6];

    tracing_copy(small, sizeof(small), "ab\xc3\xa9\xc3\xa9", 6);     /* "abéé" */
    CHECK(strcmp(small, "ab\xc3\xa9") == 0, "cut before a split character: %s", small);
    tracing_copy(small, sizeof(small), "abcdefgh", 8);
    CHECK(strcmp(small, "abcde") == 0, "cut");
    tracing_copy(small, sizeof(small), NULL, 3);
    CHECK(small[0] == '\0', "NULL is empty");
    CHECK(tracing_status_for_http(TRACING_KIND_SERVER, 404) == TRACING_STATUS_UNSET, "server 4xx");
    CHECK(tracing_status_for_http(TRACING_KIND_CLIENT, 404) == TRACING_STATUS_ERROR, "client 4xx");
    CHECK(tracing_status_for_http(TRACING_KIND_SERVER, 502) == TRACING_STATUS_ERROR, "5xx");
    CHECK(tracing_status_for_http(TRACING_KIND_CLIENT, 0) == TRACING_STATUS_ERROR, "no response");
    CHECK(tracing_status_for_http(TRACING_KIND_SERVER, 200) == TRACING_STATUS_UNSET, "200");

    uint8_t ids[64][8];
    for (int i = 0; i < 64; i++) {
        tracing_random_id(ids[i], 8);
        for (int j = 0; j < i; j++)
            CHECK(memcmp(ids[i], ids[j], 8) != 0, "ids distinct");
    }
}

/* The rings without a collector: exact accounting of what was submitted. */
static void
test_ring(void)
{
    struct event_base *base = event_base_new();
    struct tracing_config c;
    struct tracing_stats st;
    struct tracing_span sp;
    struct tracing_ctx ctx;
    char err[200];

    cfg("{\"queue_max_spans\": 16, \"batch_max_spans\": 8}", &c, err);
    struct tracing_exporter *exp = tracing_exporter_new(base, &c, 2, err, sizeof(err));
    CHECK(exp != NULL, "%s", err);
    tracing_ctx_begin(&ctx, NULL, 0, 0, NULL, 0, NULL, TRACING_SAMPLE_ALL);
    fill_span(&sp, &ctx);
    int ok = 0;
    for (int i = 0; i < 20; i++)
        ok += tracing_submit(tracing_exporter_ring(exp, 0), &sp);
    CHECK(ok == 16, "a full ring refuses: %d", ok);
    ok = tracing_submit(tracing_exporter_ring(exp, 1), &sp);
    CHECK(ok == 1, "the other ring has room");
    CHECK(tracing_exporter_ring(exp, 2) == NULL, "no ring 2");
    tracing_exporter_stats(exp, &st);
    CHECK(st.submitted == 21 && st.dropped == 4 && st.pending == 17 && st.exported == 0,
          "counts %llu %llu %llu", (unsigned long long)st.submitted,
          (unsigned long long)st.dropped, (unsigned long long)st.pending);
    /* No endpoint: a drain discards and counts. */
    tracing_exporter_flush(exp);
    event_base_loop(base, EVLOOP_NONBLOCK);
    tracing_exporter_stats(exp, &st);
    CHECK(st.dropped == 21 && st.pending == 0 && st.batches_sent == 0,
          "discarded without an endpoint: %llu", (unsigned long long)st.dropped);
    CHECK(tracing_submit(tracing_exporter_ring(exp, 0), &sp), "room again");
    tracing_exporter_free(exp);
    event_base_free(base);
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"traceparent_valid", test_traceparent_valid},
        {"traceparent_invalid", test_traceparent_invalid},
        {"traceparent_every_character", test_traceparent_every_character},
        {"traceparent_future_version", test_traceparent_future_version},
        {"context_continue", test_context_continue},
        {"context_restart", test_context_restart},
        {"tracestate", test_tracestate},
        {"sampling", test_sampling},
        {"config", test_config},
        {"encoding", test_encoding},
        {"span_helpers", test_span_helpers},
        {"ring", test_ring},
        {NULL, NULL},
    };
    return run_tests(tests);
}
