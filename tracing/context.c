/*
 * W3C Trace Context (Level 1) for a participating proxy: parse the
 * incoming traceparent and tracestate, decide sampling, give every hop a
 * new span id. Runs on the request path: no allocation, no locks; the
 * traceparent costs a table lookup per character.
 */
#include "tracing/tracing.h"

#include <endian.h>
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

/* The two lowercase hex digits of each byte. */
#define HEXROW(h) {h, '0'}, {h, '1'}, {h, '2'}, {h, '3'}, {h, '4'}, {h, '5'}, {h, '6'}, \
    {h, '7'}, {h, '8'}, {h, '9'}, {h, 'a'}, {h, 'b'}, {h, 'c'}, {h, 'd'}, {h, 'e'}, {h, 'f'}
static const char hexpair[256][2] = {
    HEXROW('0'), HEXROW('1'), HEXROW('2'), HEXROW('3'), HEXROW('4'), HEXROW('5'),
    HEXROW('6'), HEXROW('7'), HEXROW('8'), HEXROW('9'), HEXROW('a'), HEXROW('b'),
    HEXROW('c'), HEXROW('d'), HEXROW('e'), HEXROW('f'),
};

/* n bytes from 2n hex characters; false on a non-lowercase-hex character. */
static bool
unhex(const char *s, uint8_t *out, size_t n)
{
    unsigned bad = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned hi = hexval1[(unsigned char)s[2 * i]] - 1u;    /* UINT_MAX if not hex */
        unsigned lo = hexval1[(unsigned char)s[2 * i + 1]] - 1u;
        bad |= hi | lo;
        out[i] = (uint8_t)(hi << 4 | (lo & 0x0f));
    }
    return bad < 16;
}

/*
 * 8 hex characters into 4 bytes, all at once (SWAR on one 64-bit word):
 * a byte is valid when it is in '0'..'9' or 'a'..'f', which adding
 * constants to every byte and looking at the top bits tells without a
 * branch; a letter's low nibble plus 9 is its value.
 */
#define BYTES(c) (UINT64_C(0x0101010101010101) * (c))
static inline bool
unhex8(const char *s, uint8_t out[4])
{
    uint64_t x, top = BYTES(0x80);

    memcpy(&x, s, 8);
    uint64_t digit = (x + BYTES(0x80 - '0')) & ~(x + BYTES(0x80 - '9' - 1));
    uint64_t letter = (x + BYTES(0x80 - 'a')) & ~(x + BYTES(0x80 - 'f' - 1));
    if ((x & top) != 0 || ((digit | letter) & top) != top)
        return false;
    uint64_t nib = (x & BYTES(0x0f)) + ((letter & top) >> 7) * 9;
    /* Bytes n0 n1 n2 ... (n0 first in memory): (n0 << 4 | n1) at bytes 0, 2, 4, 6. */
    uint64_t y = ((nib << 4) | (nib >> 8)) & UINT64_C(0x00ff00ff00ff00ff);
    y = (y | (y >> 8)) & UINT64_C(0x0000ffff0000ffff);
    y = (y | (y >> 16)) & UINT64_C(0x00000000ffffffff);
    uint32_t w = (uint32_t)y;
    memcpy(out, &w, 4);
    return true;
}
#undef BYTES

static bool
all_zero(const uint8_t *b, size_t n)
{
    uint8_t acc = 0;

    for (size_t i = 0; i < n; i++)
        acc |= b[i];
    return acc == 0;
}

static inline bool
zero8(const uint8_t *b)
{
    uint64_t x;

    memcpy(&x, b, 8);
    return x == 0;
}

static inline void
hex_nonul(const uint8_t *id, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        memcpy(out + 2 * i, hexpair[id[i]], 2);
}

void
tracing_hex(const uint8_t *id, size_t n, char *out)
{
    hex_nonul(id, n, out);
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
        !unhex8(v + 3, out->trace_id) || !unhex8(v + 11, out->trace_id + 4) ||
        !unhex8(v + 19, out->trace_id + 8) || !unhex8(v + 27, out->trace_id + 12) ||
        !unhex8(v + 36, out->parent_id) || !unhex8(v + 44, out->parent_id + 4) ||
        !unhex(v + 53, &out->flags, 1))
        return TRACING_PARENT_FORMAT;
    out->version = version;
    if (zero8(out->trace_id) && zero8(out->trace_id + 8))
        return TRACING_PARENT_ZERO_TRACE_ID;
    if (zero8(out->parent_id))
        return TRACING_PARENT_ZERO_PARENT_ID;
    return TRACING_PARENT_OK;
}

/* ---- tracestate ---- */

/* Character classes of a tracestate: V, a value character (printable
 * ASCII but ',' and '='); K, a key character (a-z 0-9 _ - * / @). */
#define V 1
#define K 2
static const uint8_t ts_class[256] = {
    [0x20 ... 0x29] = V, ['*'] = V | K, ['+'] = V, ['-'] = V | K, ['.'] = V,
    ['/'] = V | K, ['0' ... '9'] = V | K, [':' ... '<'] = V, ['>' ... '?'] = V,
    ['@'] = V | K, ['A' ... '^'] = V, ['_'] = V | K, ['`'] = V, ['a' ... 'z'] = V | K,
    ['{' ... '~'] = V,
};

size_t
tracing_tracestate_clean(const char *in, size_t len, char *out)
{
    size_t start[TRACING_TRACESTATE_MEMBERS];
    uint16_t mlen[TRACING_TRACESTATE_MEMBERS];
    bool keep[TRACING_TRACESTATE_MEMBERS];
    const unsigned char *u = (const unsigned char *)in;
    int n = 0;
    size_t i = 0;

    if (in == NULL)
        return 0;
    /* Pass 1: find and check every member ("key=value", OWS around it);
     * any bad one drops the whole list. Empty members are allowed. */
    while (i < len) {
        while (i < len && ows(in[i]))
            i++;
        if (i == len)
            break;
        if (in[i] == ',') {
            i++;
            continue;
        }
        /* Key: a lowercase letter or digit first, 256 characters at most. */
        size_t b = i;
        if ((ts_class[u[i]] & K) == 0 || in[i] == '_' || in[i] == '-' || in[i] == '*' ||
            in[i] == '/' || in[i] == '@')
            return 0;
        while (i < len && (ts_class[u[i]] & K))
            i++;
        if (i == len || in[i] != '=' || i - b > 256)
            return 0;
        /* Value: 1 to 256 characters, the last not a space (trailing
         * spaces are OWS). */
        size_t v = ++i;
        while (i < len && (ts_class[u[i]] & V))
            i++;
        size_t e = i;
        while (e > v && in[e - 1] == ' ')
            e--;
        if (e == v || e - v > 256)
            return 0;
        while (i < len && ows(in[i]))
            i++;
        if (i < len && in[i] != ',')
            return 0;
        if (n == TRACING_TRACESTATE_MEMBERS)
            return 0;
        start[n] = b;
        mlen[n] = (uint16_t)(e - b);
        keep[n] = true;
        n++;
        i++;
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

#undef V
#undef K

/* ---- ids and sampling ---- */

/* xoshiro256++ per thread, seeded once from getrandom(2). The library is
 * linked into the executable, so the initial-exec TLS model holds and a
 * draw costs no __tls_get_addr() call. */
struct rng {
    uint64_t s[4];
    bool ready;
};
static _Thread_local struct rng rng __attribute__((tls_model("initial-exec")));

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
    memcpy(rng.s, seed, sizeof(seed));
    rng.ready = true;
}

static inline uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t
rng_next(void)
{
    if (__builtin_expect(!rng.ready, 0))
        rng_seed();
    uint64_t *s = rng.s;
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
    uint64_t acc;

    do {
        acc = 0;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = rng_next();
            if (n - i >= 8)
                memcpy(id + i, &r, 8);
            else
                memcpy(id + i, &r, n - i);
            acc |= r;       /* a short tail ignores some bits: re-checked below */
        }
    } while (acc == 0 || (n % 8 != 0 && all_zero(id, n)));
}

bool
tracing_sample(const uint8_t trace_id[16], uint64_t sample_threshold)
{
    uint64_t r;

    /* The right-most 7 bytes, big-endian: the randomness W3C Level 2 and
     * OpenTelemetry's consistent probability sampling read. */
    memcpy(&r, trace_id + 8, 8);
    r = be64toh(r) & ((UINT64_C(1) << 56) - 1);
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
    tracing_random_id(span_id, 8);
    memcpy(out, "00-", 3);
    hex_nonul(ctx->trace_id, 16, out + 3);
    out[35] = '-';
    hex_nonul(span_id, 8, out + 36);
    out[52] = '-';
    memcpy(out + 53, hexpair[ctx->flags & FLAGS_KEPT], 2);
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
