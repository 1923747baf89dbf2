/*
 * sluice-model's options (see model_server.c) and the answer both backends
 * give: the JSON naming the version, with scores computed from the body.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/model_server.h"

const char *name = "model";
int latency_ms;
int jitter_ms;
double error_rate;
double noise_eps;
int random_field;
int idle_close_max_ms;
unsigned long long n_conns, n_reqs;
struct event_base *base;
double fault_rate;
int slow_max_ms = 1000;

/* A uniformly random delay in [0, idle_close_max_ms] ms. */
struct timeval
idle_close_delay(void)
{
    long long us = (long long)(((double)random() / RAND_MAX) * idle_close_max_ms * 1000.0);
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    return tv;
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
static double
score_of(uint64_t h, unsigned i)
{
    double s = (double)(mix64(h + i) >> 11) * (1.0 / 9007199254740992.0);

    if (noise_eps > 0)
        s += (2.0 * ((double)random() / RAND_MAX) - 1.0) * noise_eps;
    return s;
}

static void
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

void
answer(struct pending *p)
{
    struct evhttp_request *req = p->req;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    struct evbuffer *b = evbuffer_new();

    if (p->resp_bytes > 0) {
        evhttp_add_header(out, "Content-Type", "application/octet-stream");
        evhttp_send_reply_start(req, p->status, NULL);
        char chunk[65536];
        memset(chunk, 'x', sizeof(chunk));
        for (long long left = p->resp_bytes; left > 0;) {
            size_t n = left > (long long)sizeof(chunk) ? sizeof(chunk) : (size_t)left;
            evbuffer_add(b, chunk, n);
            evhttp_send_reply_chunk(req, b);
            left -= (long long)n;
        }
        evhttp_send_reply_end(req);
        evbuffer_free(b);
        return;
    }
    /* FNV-1a of the body, so tests can check it arrived intact. */
    uint64_t h = 1469598103934665603ULL;
    size_t blen = evbuffer_get_length(in);
    struct evbuffer_ptr pos;
    evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET);
    struct evbuffer_iovec v[16];
    size_t seen = 0;
    while (seen < blen) {
        int n = evbuffer_peek(in, -1, &pos, v, 16);
        for (int i = 0; i < n && i < 16; i++) {
            const unsigned char *d = v[i].iov_base;
            for (size_t k = 0; k < v[i].iov_len; k++) {
                h ^= d[k];
                h *= 1099511628211ULL;
            }
            seen += v[i].iov_len;
        }
        if (evbuffer_ptr_set(in, &pos, seen, EVBUFFER_PTR_SET) < 0)
            break;
    }
    evbuffer_add_printf(b, "{\"version\":");
    json_str(b, name);
    evbuffer_add_printf(b, ",\"status\":%d,\"method\":\"%s\",\"uri\":", p->status,
                        evhttp_request_get_command(req) == EVHTTP_REQ_POST ? "POST" :
                        evhttp_request_get_command(req) == EVHTTP_REQ_GET ? "GET" :
                        evhttp_request_get_command(req) == EVHTTP_REQ_PUT ? "PUT" :
                        evhttp_request_get_command(req) == EVHTTP_REQ_HEAD ? "HEAD" : "OTHER");
    json_str(b, evhttp_request_get_uri(req));
    evbuffer_add_printf(b, ",\"body_bytes\":%zu,\"body_fnv1a\":\"%016llx\"",
                        blen, (unsigned long long)h);
    evbuffer_add_printf(b, ",\"score\":%.17g,\"scores\":[%.17g,%.17g,%.17g]",
                        score_of(h, 0), score_of(h, 1), score_of(h, 2), score_of(h, 3));
    if (random_field) {
        evbuffer_add_printf(b, ",\"nonce\":\"%08lx%08lx%08lx%08lx\"",
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL,
                            (unsigned long)random() & 0xffffffffUL);
    }
    evbuffer_add_printf(b, ",\"headers\":{");
    struct evkeyval *kv;
    int first = 1;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
        if (!first)
            evbuffer_add(b, ",", 1);
        first = 0;
        char lower[256];
        snprintf(lower, sizeof(lower), "%s", kv->key);
        for (char *c = lower; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c + 32);
        json_str(b, lower);
        evbuffer_add(b, ":", 1);
        json_str(b, kv->value);
    }
    evbuffer_add_printf(b, "}}\n");
    evhttp_add_header(out, "Content-Type", "application/json");
    evhttp_add_header(out, "X-Model-Version", name);
    evhttp_send_reply(req, p->status, NULL, b);
    evbuffer_free(b);
}
