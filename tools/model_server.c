/*
 * sluice-model: a small model server for tests, the demo and benchmarks.
 *
 * Answers every request with a JSON object naming its version and echoing
 * the request's method, path, headers and body size and hash. Options add
 * latency (fixed plus random jitter) and an error rate so that versions
 * differ visibly. Per-request test controls, as request headers:
 *   X-Test-Delay-Ms: N        answer after N ms
 *   X-Test-Status: N          answer with status N
 *   X-Test-Response-Bytes: N  answer with N bytes of body, chunked
 *   X-Test-Close: 1           close the connection without answering
 * GET /__stats answers {"connections", "requests"} seen so far.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *name = "model";
static int latency_ms;
static int jitter_ms;
static double error_rate;
static unsigned long long n_conns, n_reqs;
static struct event_base *base;

struct pending {
    struct evhttp_request *req;
    struct event *ev;
    int status;
    long long resp_bytes;
};

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

static void
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
    evbuffer_add_printf(b, ",\"body_bytes\":%zu,\"body_fnv1a\":\"%016llx\",\"headers\":{",
                        blen, (unsigned long long)h);
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

static void
delayed(evutil_socket_t fd, short what, void *arg)
{
    struct pending *p = arg;
    answer(p);
    event_free(p->ev);
    free(p);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *v;

    n_reqs++;
    if (strcmp(evhttp_request_get_uri(req), "/__stats") == 0) {
        struct evbuffer *b = evbuffer_new();
        evbuffer_add_printf(b, "{\"version\":\"%s\",\"connections\":%llu,\"requests\":%llu}\n",
                            name, n_conns, n_reqs - 1);
        n_reqs--;
        evhttp_send_reply(req, 200, NULL, b);
        evbuffer_free(b);
        return;
    }
    if ((v = evhttp_find_header(h, "X-Test-Close")) != NULL) {
        evhttp_connection_free(evhttp_request_get_connection(req));
        return;
    }
    struct pending *p = calloc(1, sizeof(*p));
    p->req = req;
    p->status = 200;
    if ((v = evhttp_find_header(h, "X-Test-Status")) != NULL)
        p->status = atoi(v);
    else if (error_rate > 0 && (double)random() / RAND_MAX < error_rate)
        p->status = 500;
    if ((v = evhttp_find_header(h, "X-Test-Response-Bytes")) != NULL)
        p->resp_bytes = atoll(v);
    int delay = latency_ms + (jitter_ms > 0 ? (int)(random() % (jitter_ms + 1)) : 0);
    if ((v = evhttp_find_header(h, "X-Test-Delay-Ms")) != NULL)
        delay = atoi(v);
    if (delay <= 0) {
        answer(p);
        free(p);
        return;
    }
    p->ev = evtimer_new(base, delayed, p);
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(p->ev, &tv);
}

static struct bufferevent *
on_connection(struct event_base *b, void *arg)
{
    n_conns++;
    return bufferevent_socket_new(b, -1, BEV_OPT_CLOSE_ON_FREE);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(base, NULL);
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"name", required_argument, NULL, 'n'},
        {"latency-ms", required_argument, NULL, 'd'},
        {"jitter-ms", required_argument, NULL, 'j'},
        {"error-rate", required_argument, NULL, 'e'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_addr = "127.0.0.1:5001";
    int c;

    while ((c = getopt_long(argc, argv, "l:n:d:j:e:", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen_addr = optarg; break;
        case 'n': name = optarg; break;
        case 'd': latency_ms = atoi(optarg); break;
        case 'j': jitter_ms = atoi(optarg); break;
        case 'e': error_rate = atof(optarg); break;
        default:
            fprintf(stderr, "usage: sluice-model [--listen HOST:PORT|unix:/path] "
                    "[--name V] [--latency-ms N] [--jitter-ms N] [--error-rate F]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    srandom((unsigned)getpid());
    base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                               EVHTTP_REQ_HEAD | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                               EVHTTP_REQ_OPTIONS);
    evhttp_set_bevcb(http, on_connection, NULL);
    evhttp_set_gencb(http, on_request, NULL);
    evhttp_set_timeout(http, 120);
    if (strncmp(listen_addr, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", listen_addr + 5);
        unlink(sun.sun_path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ||
            listen(fd, 1024) < 0 || evhttp_accept_socket(http, fd) < 0) {
            fprintf(stderr, "sluice-model: cannot listen on %s\n", listen_addr);
            return 1;
        }
    } else {
        char host[256];
        snprintf(host, sizeof(host), "%s", listen_addr);
        char *colon = strrchr(host, ':');
        if (colon == NULL) {
            fprintf(stderr, "sluice-model: --listen needs HOST:PORT\n");
            return 2;
        }
        *colon = '\0';
        if (evhttp_bind_socket(http, host, (ev_uint16_t)atoi(colon + 1)) < 0) {
            fprintf(stderr, "sluice-model: cannot listen on %s\n", listen_addr);
            return 1;
        }
    }
    struct event *st = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *si = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(st, NULL);
    event_add(si, NULL);
    fprintf(stderr, "sluice-model %s listening on %s\n", name, listen_addr);
    event_base_dispatch(base);
    event_free(st);
    event_free(si);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
