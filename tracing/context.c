/*
 * W3C Trace Context (Level 1) for a participating proxy: parse the
 * incoming traceparent and tracestate, decide sampling, give every hop a
 * new span id. Runs on the request path: no allocation, no locks; the
 * traceparent costs a table lookup per character.
 */
#include "tracing/tracing.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Of the incoming flags only "sampled" is defined by Level 1; the others
 * MUST be sent as zero. (Level 2's random-trace-id bit, 0x02, would be
 * added here.) */
#define FLAGS_KEPT TRACING_FLAG_SAMPLED

/* One more than the value of a lowercase hex digit, 0 for anything else
 * (uppercase hex is not valid in a traceparent). */
static const uint8_t hexval1[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
    ['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
    ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

static const char hexdig[16] = "0123456789abcdef";

/* n bytes from 2n hex characters; false on a non-lowercase-hex character. */
static bool
unhex(const char *s, uint8_t *out, size_t n)
{
    bool ok = true;

    for (size_t i = 0; i < n; i++) {
        unsigned hi = hexval1[(unsigned char)s[2 * i]];
        unsigned lo = hexval1[(unsigned char)s[2 * i + 1]];
        ok &= hi != 0 && lo != 0;
        out[i] = (uint8_t)((hi - 1) << 4 | ((lo - 1) & 0x0f));
    }
    return ok;
}

static bool
all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;

    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

void
tracing_hex(const uint8_t *id, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig[id[i] >> 4];
        out[2 * i + 1] = hexdig[id[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

static bool
ows(char c)
{
    return c == ' ' || c == '\t';
}

enum tracing_parent_status
tracing_traceparent_parse(const char *v, size_t len, struct tracing_parent *out)
{
    if (v == NULL)
        return TRACING_PARENT_ABSENT;
    while (len > 0 && ows(v[0])) {
        v++;
        len--;
    }
    while (len > 0 && ows(v[len - 1]))
        len--;

    /* The version: two lowercase hex digits and a dash, never ff. */
    uint8_t version;
    if (len < 3 || v[2] != '-' || !unhex(v, &version, 1) || version == 0xff)
        return TRACING_PARENT_VERSION;
    /* Version 00 is exactly 55 characters. A higher version is read as 00
     * if its first 55 characters parse and any more begin with a dash
     * (future versions only append fields). */
    if (version == 0 ? len != TRACING_TRACEPARENT_LEN
                     : len < TRACING_TRACEPARENT_LEN ||
                       (len > TRACING_TRACEPARENT_LEN && v[TRACING_TRACEPARENT_LEN] != '-'))
        return TRACING_PARENT_LENGTH;
    if (v[35] != '-' || v[52] != '-' ||
        !unhex(v + 3, out->trace_id, 16) || !unhex(v + 36, out->parent_id, 8) ||
        !unhex(v + 53, &out->flags, 1))
        return TRACING_PARENT_FORMAT;
    out->version = version;
    if (all_zero(out->trace_id, 16))
        return TRACING_PARENT_ZERO_TRACE_ID;
    if (all_zero(out->parent_id, 8))
        return TRACING_PARENT_ZERO_PARENT_ID;
    return TRACING_PARENT_OK;
}

/* ---- tracestate ---- */

static bool
key_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '*' || c == '/' || c == '@';
}

/* A list-member "key=value", its OWS already trimmed. Key: a lowercase
 * letter or digit, then up to 255 of a-z 0-9 _ - * / @. Value: 1 to 256
 * printable ASCII characters but ',' and '=', not ending in a space. */
static bool
member_valid(const char *m, size_t len)
{
    size_t k = 0;

    if (len == 0 || !((m[0] >= 'a' && m[0] <= 'z') || (m[0] >= '0' && m[0] <= '9')))
        return false;
    while (k < len && m[k] != '=') {
        if (!key_char((unsigned char)m[k]))
            return false;
        k++;
    }
    if (k == len || k > 256)
        return false;
    size_t vlen = len - k - 1;
    if (vlen == 0 || vlen > 256 || m[len - 1] == ' ')
        return false;
    for (size_t i = k + 1; i < len; i++) {
        unsigned char c = (unsigned char)m[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return true;
}

size_t
tracing_tracestate_clean(const char *in, size_t len, char *out)
{
    size_t start[TRACING_TRACESTATE_MEMBERS];
    uint16_t mlen[TRACING_TRACESTATE_MEMBERS];
    bool keep[TRACING_TRACESTATE_MEMBERS];
    int n = 0;
    size_t i = 0;

    if (in == NULL)
        return 0;
    /* Pass 1: find and check every member; any bad one drops them all. */
    while (i <= len) {
        size_t b = i, e;
        while (i < len && in[i] != ',')
            i++;
        e = i++;
        while (b < e && ows(in[b]))
            b++;
        while (e > b && ows(in[e - 1]))
            e--;
        if (b == e)
            continue;           /* empty and whitespace-only members are allowed */
        if (n == TRACING_TRACESTATE_MEMBERS || !member_valid(in + b, e - b))
            return 0;
        start[n] = b;
        mlen[n] = (uint16_t)(e - b);
        keep[n] = true;
        n++;
    }
    if (n == 0)
        return 0;

    /* Over the limit: drop whole members, those over 128 characters
     * first, then from the end. */
    size_t total = (size_t)n - 1;
    for (int j = 0; j < n; j++)
        total += mlen[j];
    for (int j = n - 1; j >= 0 && total > TRACING_TRACESTATE_MAX; j--)
        if (mlen[j] > 128) {
            keep[j] = false;
            total -= (size_t)mlen[j] + 1;
        }
    for (int j = n - 1; j >= 0 && total > TRACING_TRACESTATE_MAX; j--)
        if (keep[j]) {
            keep[j] = false;
            total -= (size_t)mlen[j] + 1;
        }

    /* Pass 2: write the kept members; never ahead of where they are read,
     * so out may be in. */
    size_t o = 0;
    for (int j = 0; j < n; j++) {
        if (!keep[j])
            continue;
        if (o > 0)
            out[o++] = ',';
        memmove(out + o, in + start[j], mlen[j]);
        o += mlen[j];
    }
    return o;
}

/* ---- ids and sampling ---- */

/* xoshiro256++ per thread, seeded once from getrandom(2). */
static _Thread_local uint64_t rng_s[4];
static _Thread_local bool rng_ready;

static uint64_t
splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static void
rng_seed(void)
{
    uint64_t seed[4];
    ssize_t got;

    do
        got = getrandom(seed, sizeof(seed), 0);
    while (got < 0 && errno == EINTR);
    if (got != (ssize_t)sizeof(seed)) {
        /* No getrandom: the time, the thread's stack and the pid, mixed. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)(uintptr_t)&ts ^ ((uint64_t)getpid() << 32);
        for (int i = 0; i < 4; i++)
            seed[i] = splitmix64(&x);
    }
    if ((seed[0] | seed[1] | seed[2] | seed[3]) == 0)
        seed[0] = 1;
    memcpy(rng_s, seed, sizeof(seed));
    rng_ready = true;
}

static inline uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t
rng_next(void)
{
    if (!rng_ready)
        rng_seed();
    uint64_t *s = rng_s;
    uint64_t r = rotl(s[0] + s[3], 23) + s[0];
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

void
tracing_random_id(uint8_t *id, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = rng_next();
            memcpy(id + i, &r, n - i < 8 ? n - i : 8);
        }
    } while (all_zero(id, n));
}

bool
tracing_sample(const uint8_t trace_id[16], uint64_t sample_threshold)
{
    uint64_t r = 0;

    /* The right-most 7 bytes, big-endian: the randomness W3C Level 2 and
     * OpenTelemetry's consistent probability sampling read. */
    for (int i = 9; i < 16; i++)
        r = r << 8 | trace_id[i];
    return r >= sample_threshold;
}

enum tracing_parent_status
tracing_ctx_begin(struct tracing_ctx *ctx, const char *traceparent, size_t tp_len,
                  unsigned tp_count, const char *tracestate, size_t ts_len,
                  char *ts_out, uint64_t sample_threshold)
{
    struct tracing_parent p;
    enum tracing_parent_status st;

    if (traceparent == NULL || tp_count == 0)
        st = TRACING_PARENT_ABSENT;
    else if (tp_count > 1)
        st = TRACING_PARENT_DUPLICATE;
    else
        st = tracing_traceparent_parse(traceparent, tp_len, &p);

    ctx->parent_status = (uint8_t)st;
    ctx->state = ts_out;
    ctx->state_len = 0;
    if (st == TRACING_PARENT_OK) {
        memcpy(ctx->trace_id, p.trace_id, 16);
        memcpy(ctx->parent_id, p.parent_id, 8);
        ctx->flags = p.flags & FLAGS_KEPT;
        /* Only with a valid traceparent is tracestate read at all. */
        if (tracestate != NULL && ts_out != NULL)
            ctx->state_len = (uint16_t)tracing_tracestate_clean(tracestate, ts_len, ts_out);
    } else {
        tracing_random_id(ctx->trace_id, 16);
        memset(ctx->parent_id, 0, 8);
        ctx->flags = tracing_sample(ctx->trace_id, sample_threshold) ? TRACING_FLAG_SAMPLED : 0;
    }
    tracing_random_id(ctx->span_id, 8);
    return st;
}

void
tracing_hop(const struct tracing_ctx *ctx, uint8_t span_id[8], char out[TRACING_TRACEPARENT_LEN])
{
    char buf[TRACING_TRACEPARENT_LEN + 1];

    tracing_random_id(span_id, 8);
    buf[0] = '0';
    buf[1] = '0';
    buf[2] = '-';
    tracing_hex(ctx->trace_id, 16, buf + 3);
    buf[35] = '-';
    tracing_hex(span_id, 8, buf + 36);
    buf[52] = '-';
    buf[53] = hexdig[(ctx->flags & FLAGS_KEPT) >> 4];
    buf[54] = hexdig[(ctx->flags & FLAGS_KEPT) & 0x0f];
    memcpy(out, buf, TRACING_TRACEPARENT_LEN);
}

/* ---- span records ---- */

_Static_assert(sizeof(struct tracing_span) == 256, "a span record is 256 bytes");

uint64_t
tracing_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void
tracing_span_server(struct tracing_span *sp, const struct tracing_ctx *ctx)
{
    memset(sp, 0, sizeof(*sp));
    memcpy(sp->trace_id, ctx->trace_id, 16);
    memcpy(sp->span_id, ctx->span_id, 8);
    memcpy(sp->parent_id, ctx->parent_id, 8);
    sp->kind = TRACING_KIND_SERVER;
    sp->trace_flags = ctx->flags;
    sp->parent_remote = ctx->parent_status == TRACING_PARENT_OK;
    sp->start_ns = tracing_now_ns();
}

void
tracing_span_client(struct tracing_span *sp, const struct tracing_ctx *ctx,
                    const uint8_t span_id[8])
{
    memset(sp, 0, sizeof(*sp));
    memcpy(sp->trace_id, ctx->trace_id, 16);
    memcpy(sp->span_id, span_id, 8);
    memcpy(sp->parent_id, ctx->span_id, 8);
    sp->kind = TRACING_KIND_CLIENT;
    sp->trace_flags = ctx->flags;
    sp->start_ns = tracing_now_ns();
}

void
tracing_copy(char *dst, size_t cap, const char *src, size_t len)
{
    if (cap == 0)
        return;
    if (src == NULL)
        len = 0;
    if (len > cap - 1) {
        len = cap - 1;
        /* Never end inside a UTF-8 sequence: back up to its lead byte. */
        while (len > 0 && ((unsigned char)src[len] & 0xc0) == 0x80)
            len--;
    }
    if (len > 0)
        memcpy(dst, src, len);
    dst[len] = '\0';
}

enum tracing_status
tracing_status_for_http(enum tracing_kind kind, int http_status)
{
    if (http_status <= 0 || http_status >= 500)
        return TRACING_STATUS_ERROR;
    if (kind == TRACING_KIND_CLIENT && http_status >= 400)
        return TRACING_STATUS_ERROR;
    return TRACING_STATUS_UNSET;
}
