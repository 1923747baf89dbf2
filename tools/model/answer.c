/*
 * What sluice-model answers, whatever the protocol: the JSON answer naming
 * the version and echoing the request, the scores computed from the body
 * hash (equal bodies get equal scores unless --noise), the /__stats
 * answer, the --fast answer, and the per-request choices of delay, error
 * and idle close drawn from the options.
 */
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* The options and counts every part reads (defined here, the bottom of
 * the model's call graph, so that no two of its files call each other). */
struct model_opts opt = {
    .name = "model",
    .slow_max_ms = 1000,
    .h2_max_streams = 128,
    .h2_drop_after = -1,
};
unsigned long long n_conns, n_reqs, n_refused;
struct event_base *base;

uint64_t
fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *d = data;

    for (size_t k = 0; k < len; k++) {
        h ^= d[k];
        h *= 1099511628211ULL;
    }
    return h;
}

/* FNV-1a of a whole buffer, so tests can check a body arrived intact. */
uint64_t
fnv1a_evbuffer(struct evbuffer *in)
{
    uint64_t h = FNV1A_INIT;
    size_t blen = evbuffer_get_length(in);
    struct evbuffer_ptr pos;
    struct evbuffer_iovec v[16];
    size_t seen = 0;

    evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET);
    while (seen < blen) {
        int n = evbuffer_peek(in, -1, &pos, v, 16);
        for (int i = 0; i < n && i < 16; i++) {
            h = fnv1a(h, v[i].iov_base, v[i].iov_len);
            seen += v[i].iov_len;
        }
        if (evbuffer_ptr_set(in, &pos, seen, EVBUFFER_PTR_SET) < 0)
            break;
    }
    return h;
}

static uint64_t
mix64(uint64_t x)
{
    /* splitmix64's finaliser: spreads the body hash over all bits */
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* A float in [0,1) from the body hash, plus the --noise. */
double
score_of(uint64_t h, unsigned i)
{
    double s = (double)(mix64(h + i) >> 11) * (1.0 / 9007199254740992.0);

    if (opt.noise_eps > 0)
        s += (2.0 * ((double)random() / RAND_MAX) - 1.0) * opt.noise_eps;
    return s;
}

void
json_str(struct evbuffer *b, const char *s)
{
    evbuffer_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            evbuffer_add_printf(b, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            evbuffer_add_printf(b, "\\u%04x", c);
        else
            evbuffer_add(b, s, 1);
    }
    evbuffer_add(b, "\"", 1);
}

const char *
method_label(const char *m)
{
    static const char *const known[] = {"POST", "GET", "PUT", "HEAD"};

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(m, known[i]) == 0)
            return known[i];
    return "OTHER";
}

void
answer_json(struct evbuffer *b, int status, const char *method, const char *uri,
            size_t blen, uint64_t h, const struct kv *hdrs, size_t n_hdrs)
{
    double s0 = score_of(h, 0), s1 = score_of(h, 1), s2 = score_of(h, 2), s3 = score_of(h, 3);

    evbuffer_add_printf(b, "{\"version\":");
    json_str(b, opt.name);
    evbuffer_add_printf(b, ",\"status\":%d,\"method\":\"%s\",\"uri\":", status, method);
    json_str(b, uri);
    evbuffer_add_printf(b, ",\"body_bytes\":%zu,\"body_fnv1a\":\"%016llx\"",
                        blen, (unsigned long long)h);
    evbuffer_add_printf(b, ",\"score\":%.17g,\"scores\":[%.17g,%.17g,%.17g]", s0, s1, s2, s3);
    if (opt.random_field) {
        evbuffer_add_printf(b, ",\"nonce\":\"%08lx%08lx%08lx%08lx\"",
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL);
    }
    evbuffer_add_printf(b, ",\"headers\":{");
    for (size_t i = 0; i < n_hdrs; i++) {
        if (i > 0)
            evbuffer_add(b, ",", 1);
        char lower[256];
        snprintf(lower, sizeof(lower), "%s", hdrs[i].name);
        for (char *c = lower; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        json_str(b, lower);
        evbuffer_add(b, ":", 1);
        json_str(b, hdrs[i].value);
    }
    evbuffer_add_printf(b, "}}\n");
}

void
stats_json(struct evbuffer *b)
{
    evbuffer_add_printf(b, "{\"version\":\"%s\",\"connections\":%llu,\"requests\":%llu,"
                        "\"refused\":%llu}\n", opt.name, n_conns, n_reqs, n_refused);
}

int
fast_body(char *buf, size_t cap)
{
    return snprintf(buf, cap, "{\"version\":\"%s\",\"status\":200,\"fast\":true}\n", opt.name);
}

int
pick_delay_ms(void)
{
    return opt.latency_ms + (opt.jitter_ms > 0 ? (int)(random() % (opt.jitter_ms + 1)) : 0);
}

int
pick_status(void)
{
    if (opt.error_rate > 0 && (double)random() / RAND_MAX < opt.error_rate)
        return 500;
    return 200;
}

struct timeval
idle_close_delay(void)
{
    long long us = (long long)(((double)random() / RAND_MAX) * opt.idle_close_max_ms * 1000.0);
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    return tv;
}
