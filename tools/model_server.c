/*
 * sluice-model: a small model server for tests, the demo and benchmarks.
 *
 * Answers every request with a JSON object naming its version and echoing
 * the request's method, path, headers and body size and hash:
 *   {"version", "status", "method", "uri", "body_bytes", "body_fnv1a",
 *    "score", "scores", ["nonce",] "headers"}
 * "score" (a float in [0,1)) and "scores" (three of them) are computed from
 * the body bytes, so two servers given the same body agree exactly: shadow
 * comparison tests (SPEC §7) get equal answers unless --noise or
 * --random-field makes them differ.
 *
 * Options:
 *   --listen HOST:PORT|unix:/path  where to listen (default 127.0.0.1:5001);
 *                              port 0 binds a free port. For TCP the server
 *                              prints "listening on PORT" (one line, stdout,
 *                              flushed) once it accepts connections.
 *   --name V                   the version name in answers (default "model")
 *   --latency-ms N, --jitter-ms N  answer after N ms plus 0..jitter ms
 *   --error-rate F             answer 500 to a fraction F of requests
 *   --noise EPS                add uniform noise in [-EPS, EPS] to each score
 *   --random-field             add "nonce": 32 random hex digits
 *   --idle-close-max-ms N      a keep-alive connection that goes idle after a
 *                              response is closed by the server at a uniformly
 *                              random moment within N ms, to reproduce the
 *                              upstream keep-alive race (a proxy reusing a
 *                              connection just as the server closes it)
 *   --fast                     benchmark backend: no evhttp, one raw-socket
 *                              responder that reads request heads and bodies
 *                              (Content-Length or chunked, pipelined requests
 *                              in order) and answers each with the same small
 *                              fixed JSON, HTTP/1.1 with Content-Length, keep-
 *                              alive unless the client sends Connection: close
 *                              or speaks HTTP/1.0. Ignores the per-request
 *                              controls, latency, errors and scores; honours
 *                              --idle-close-max-ms. About three times cheaper
 *                              per request than the evhttp server, so a bench
 *                              measures the proxy in front, not the model.
 *
 * Faults (with --fast; the chaos soak's upstreams, tests/soak): a request
 * gets a fault when it carries "X-Test-Fault: KIND[=N]", or, without one, at
 * random with --fault-rate F (each kind equally likely, N random):
 *   delay=MS       answer after MS ms
 *   stall=MS       send the head and half the body, the rest MS ms later
 *   big=N          a body of N bytes (Content-Length)
 *   chunked=N      a body of N bytes, chunked
 *   reset          send the head and part of the body, then a TCP reset
 *   cut            send the head and part of the body, then close
 *   drop           close without answering
 *   rst            reset without answering
 *   204body, 304body  a 204 or 304 followed by body bytes (304 with a
 *                  Content-Length), which a proxy must not relay
 *   close-after    answer whole, then close without a "Connection: close"
 *                  (the keep-alive race: the proxy reuses it as it closes)
 *   status=N       answer with status N
 *   garbage        a response that is not HTTP
 *   --fault-rate F     the share of requests without X-Test-Fault that get a
 *                      random fault (default 0)
 *   --slow-max-ms N    the bound of random delay and stall times (default 1000)
 *   --seed N           seed the random choices (default: the process id)
 * On exit (SIGTERM) the --fast server prints one line to stderr:
 * "faults: requests=N connections=N KIND=N ...".
 *
 * Per-request test controls (not in --fast), as request headers:
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

static const char *name = "model";
static int latency_ms;
static int jitter_ms;
static double error_rate;
static double noise_eps;
static int random_field;
static int idle_close_max_ms;
static unsigned long long n_conns, n_reqs;
static struct event_base *base;
static double fault_rate;
static int slow_max_ms = 1000;

/* A uniformly random delay in [0, idle_close_max_ms] ms. */
static struct timeval
idle_close_delay(void)
{
    long long us = (long long)(((double)random() / RAND_MAX) * idle_close_max_ms * 1000.0);
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    return tv;
}

/*
 * Per-connection state of the evhttp server, only kept with
 * --idle-close-max-ms. evhttp has no per-connection user data, so the states
 * sit in a list looked up by connection; tests open few connections.
 */
struct conn_state {
    LIST_ENTRY(conn_state) link;
    struct evhttp_connection *evcon;
    struct event *idle;
};
static LIST_HEAD(, conn_state) conn_states = LIST_HEAD_INITIALIZER(conn_states);

static void
conn_state_closed(struct evhttp_connection *evcon, void *arg)
{
    struct conn_state *st = arg;

    evhttp_connection_set_closecb(evcon, NULL, NULL);
    LIST_REMOVE(st, link);
    event_free(st->idle);
    free(st);
}

static void
conn_idle_expired(evutil_socket_t fd, short what, void *arg)
{
    struct conn_state *st = arg;

    /* The close callback frees st and its timer, which libevent allows
     * from inside the timer's own (non-persistent) callback. */
    evhttp_connection_free(st->evcon);
}

static struct conn_state *
conn_state_get(struct evhttp_connection *evcon)
{
    struct conn_state *st;

    LIST_FOREACH(st, &conn_states, link)
        if (st->evcon == evcon)
            return st;
    if ((st = calloc(1, sizeof(*st))) == NULL)
        return NULL;
    if ((st->idle = evtimer_new(base, conn_idle_expired, st)) == NULL) {
        free(st);
        return NULL;
    }
    st->evcon = evcon;
    LIST_INSERT_HEAD(&conn_states, st, link);
    evhttp_connection_set_closecb(evcon, conn_state_closed, st);
    return st;
}

/* The response went out and the connection waits for the next request:
 * arm the random close. (If the connection is closing anyway, its close
 * callback runs next and drops the timer.) */
static void
request_completed(struct evhttp_request *req, void *arg)
{
    struct conn_state *st = arg;
    struct timeval tv = idle_close_delay();

    evtimer_add(st->idle, &tv);
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
    if (idle_close_max_ms > 0) {
        struct conn_state *st = conn_state_get(evhttp_request_get_connection(req));
        if (st != NULL) {
            event_del(st->idle);
            evhttp_request_set_on_complete_cb(req, request_completed, st);
        }
    }
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        evhttp_send_error(req, 503, "out of memory");
        return;
    }
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
    if ((p->ev = evtimer_new(base, delayed, p)) == NULL) {
        answer(p);
        free(p);
        return;
    }
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(p->ev, &tv);
}

/*
 * --fast: a fixed answer on raw sockets. Each connection reads into one
 * buffer, parses every complete request in it (head, then a Content-Length
 * or chunked body, skipped), queues one fixed response per request and
 * writes them with one write(). While output is pending the connection
 * stops reading, so a client that does not read holds at most one buffer.
 */
enum fast_state { FS_HEAD, FS_BODY, FS_CHUNK_SIZE, FS_CHUNK_DATA, FS_CHUNK_CRLF, FS_TRAILER };

#define FAST_MAX_HEAD 65536
#define FAST_OUT_HIGH 262144

struct fast_conn {
    int fd;
    struct event *rev, *wev, *idle;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    enum fast_state state;
    unsigned long long body_left;
    int head_only;          /* the request being read is a HEAD */
    int close_req;          /* ... asked to close after its response */
    int closing;            /* a Connection: close response is queued */
    int reset;              /* close with a TCP reset (SO_LINGER 0) */
    int fault;              /* the request's X-Test-Fault kind, F_NONE */
    long fault_arg;         /* ... and its N (-1: none given) */
    /* A faulty answer in progress: parsing waits while it is scripted. */
    struct event *timer;
    int waiting;            /* 1: before the first part, 2: before the rest */
    char *resp;             /* the whole answer's bytes */
    size_t resp_len, resp_split;
    int mid_ms;             /* between the first part and the rest */
    int end;                /* END_KEEP, END_CLOSE or END_RESET */
};

enum fault { F_NONE, F_DELAY, F_STALL, F_BIG, F_CHUNKED, F_RESET, F_CUT, F_DROP, F_RST,
             F_204BODY, F_304BODY, F_CLOSE_AFTER, F_STATUS, F_GARBAGE, F_COUNT };
static const char *const fault_names[F_COUNT] = {
    [F_NONE] = "none", [F_DELAY] = "delay", [F_STALL] = "stall", [F_BIG] = "big",
    [F_CHUNKED] = "chunked", [F_RESET] = "reset", [F_CUT] = "cut", [F_DROP] = "drop",
    [F_RST] = "rst", [F_204BODY] = "204body", [F_304BODY] = "304body",
    [F_CLOSE_AFTER] = "close-after", [F_STATUS] = "status", [F_GARBAGE] = "garbage",
};
static unsigned long long n_faults[F_COUNT];
enum { END_KEEP, END_CLOSE, END_RESET };

static char *fast_resp, *fast_resp_close;
static size_t fast_resp_len, fast_resp_close_len, fast_body_len;

static void
fast_build_responses(void)
{
    char body[256];
    int blen = snprintf(body, sizeof(body), "{\"version\":\"%s\",\"status\":200,\"fast\":true}\n",
                        name);
    const char *fmt = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "X-Model-Version: %s\r\nContent-Length: %d\r\n%s\r\n%s";
    size_t cap = 1024 + strlen(name);

    fast_resp = malloc(cap);
    fast_resp_close = malloc(cap);
    if (fast_resp == NULL || fast_resp_close == NULL || blen < 0 || (size_t)blen >= sizeof(body)) {
        fprintf(stderr, "sluice-model: cannot build the --fast answer\n");
        exit(1);
    }
    fast_body_len = (size_t)blen;
    fast_resp_len = (size_t)snprintf(fast_resp, cap, fmt, name, blen, "", body);
    fast_resp_close_len = (size_t)snprintf(fast_resp_close, cap, fmt, name, blen,
                                           "Connection: close\r\n", body);
}

static void
fast_close(struct fast_conn *c)
{
    if (c->reset) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->idle);
    event_free(c->timer);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c->resp);
    free(c);
}

static int
out_add(struct fast_conn *c, const char *r, size_t n)
{
    if (n == 0)
        return 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *o = realloc(c->out, cap);
        if (o == NULL)
            return -1;
        c->out = o;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, r, n);
    c->out_len += n;
    return 0;
}

static int
fast_queue(struct fast_conn *c)
{
    const char *r = c->close_req ? fast_resp_close : fast_resp;
    size_t n = c->close_req ? fast_resp_close_len : fast_resp_len;

    if (c->head_only)
        n -= fast_body_len;
    if (out_add(c, r, n) < 0)
        return -1;
    n_reqs++;
    if (c->close_req)
        c->closing = 1;
    return 0;
}

/* A random number in [0, n]. */
static long
rand_upto(long n)
{
    return n > 0 ? (long)(random() % (n + 1)) : 0;
}

/* A faulty answer's bytes: status line, headers, then body_len bytes of
 * body (chunked or with a Content-Length of claim_len), or none for HEAD. */
static char *
fault_answer(struct fast_conn *c, int status, size_t body_len, size_t claim_len, int chunked,
             int send_body, size_t *len)
{
    char head[512];
    int hl = snprintf(head, sizeof(head), "HTTP/1.1 %d Fault\r\nContent-Type: "
                      "application/octet-stream\r\nX-Model-Version: %.64s\r\n%s%s",
                      status, name, c->close_req ? "Connection: close\r\n" : "",
                      chunked ? "Transfer-Encoding: chunked\r\n" : "");
    if (!chunked)
        hl += snprintf(head + hl, sizeof(head) - (size_t)hl, "Content-Length: %zu\r\n",
                       claim_len);
    hl += snprintf(head + hl, sizeof(head) - (size_t)hl, "\r\n");
    size_t cap = (size_t)hl + body_len + (chunked ? 64 + body_len / 1000 * 8 : 0) + 16;
    char *b = malloc(cap);
    if (b == NULL)
        return NULL;
    memcpy(b, head, (size_t)hl);
    size_t n = (size_t)hl;
    if (send_body) {
        for (size_t left = body_len; left > 0;) {
            size_t k = left;
            if (chunked) {
                k = left > 1000 ? 1000 : left;
                n += (size_t)snprintf(b + n, cap - n, "%zx\r\n", k);
            }
            memset(b + n, 'x', k);
            n += k;
            left -= k;
            if (chunked) {
                memcpy(b + n, "\r\n", 2);
                n += 2;
            }
        }
        if (chunked) {
            memcpy(b + n, "0\r\n\r\n", 5);
            n += 5;
        }
    }
    *len = n;
    return b;
}

/* Send the scripted answer's next part; at the end, keep, close or reset. */
static void fast_settle(struct fast_conn *c, int r);
static int fast_progress(struct fast_conn *c);

static void
fault_step(struct fast_conn *c)
{
    if (c->waiting == 1 && c->resp_split < c->resp_len && c->mid_ms >= 0) {
        if (out_add(c, c->resp, c->resp_split) < 0)
            c->end = END_RESET;
        else {
            c->waiting = 2;
            struct timeval tv = {c->mid_ms / 1000, (c->mid_ms % 1000) * 1000};
            evtimer_add(c->timer, &tv);
            return;
        }
    } else {
        size_t from = c->waiting == 2 ? c->resp_split : 0;
        if (out_add(c, c->resp + from, c->resp_len - from) < 0)
            c->end = END_RESET;
    }
    c->waiting = 0;
    free(c->resp);
    c->resp = NULL;
    if (c->end != END_KEEP)
        c->closing = 1;
    if (c->end == END_RESET)
        c->reset = 1;
}

static void
fast_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct fast_conn *c = arg;

    fault_step(c);
    fast_settle(c, fast_progress(c));
}

/* Answer the request just read: the fixed answer, or its fault. */
static int
fast_answer(struct fast_conn *c)
{
    int f = c->fault;
    long arg = c->fault_arg;

    if (f == F_NONE && fault_rate > 0 && (double)random() / RAND_MAX < fault_rate) {
        f = 1 + (int)(random() % (F_COUNT - 1));
        arg = -1;
    }
    if (f == F_NONE)
        return fast_queue(c);
    n_reqs++;
    n_faults[f]++;
    int pre = 0, status = 200, chunked = 0, send_body = !c->head_only;
    size_t body = 16, claim;
    c->mid_ms = -1;
    c->end = c->close_req ? END_CLOSE : END_KEEP;
    switch (f) {
    case F_DELAY: pre = (int)(arg >= 0 ? arg : rand_upto(slow_max_ms)); break;
    case F_STALL:
        c->mid_ms = (int)(arg >= 0 ? arg : rand_upto(slow_max_ms));
        body = 2048;
        break;
    case F_BIG: body = (size_t)(arg >= 0 ? arg : rand_upto(262144)); break;
    case F_CHUNKED: body = (size_t)(arg >= 0 ? arg : rand_upto(65536)); chunked = 1; break;
    case F_RESET: case F_CUT: body = 4096; break;
    case F_204BODY: status = 204; send_body = 1; break;
    case F_304BODY: status = 304; send_body = 1; break;
    case F_CLOSE_AFTER: c->end = END_CLOSE; break;
    case F_STATUS: {
        static const int some[] = {500, 503, 404, 201, 302};
        status = arg >= 100 && arg <= 599 ? (int)arg : some[random() % 5];
        break;
    }
    default: break;
    }
    claim = body;
    if (f == F_204BODY)
        claim = 0;
    free(c->resp);
    c->resp = fault_answer(c, status, body, claim, chunked, send_body, &c->resp_len);
    if (c->resp == NULL)
        return -1;
    if (f == F_204BODY) {       /* no Content-Length line on a 204 */
        char *cl = memmem(c->resp, c->resp_len, "Content-Length: 0\r\n", 19);
        if (cl != NULL) {
            memmove(cl, cl + 19, c->resp_len - (size_t)(cl + 19 - c->resp));
            c->resp_len -= 19;
        }
    }
    c->resp_split = c->resp_len;
    if (f == F_STALL && send_body)
        c->resp_split = c->resp_len - body / 2;
    if (f == F_RESET || f == F_CUT) {
        if (send_body)
            c->resp_len -= body - body / 4;     /* a quarter of the body, then the end */
        c->end = f == F_RESET ? END_RESET : END_CLOSE;
    }
    if (f == F_DROP || f == F_RST) {
        c->resp_len = 0;
        c->end = f == F_RST ? END_RESET : END_CLOSE;
    }
    if (f == F_GARBAGE) {
        static const char junk[] = "HTTP/1.1 2x0 What\r\nContent-Length: -4\r\n\r\n";
        memcpy(c->resp, junk, sizeof(junk) - 1);
        c->resp_len = sizeof(junk) - 1;
        c->resp_split = c->resp_len;
        c->end = END_CLOSE;
    }
    c->waiting = 1;
    if (pre > 0 || c->mid_ms >= 0) {
        struct timeval tv = {pre / 1000, (pre % 1000) * 1000};
        evtimer_add(c->timer, &tv);
        return 0;
    }
    fault_step(c);
    return 0;
}

/* "KIND" or "KIND=N" of an X-Test-Fault value. */
static void
parse_fault(struct fast_conn *c, const char *v, size_t vlen)
{
    while (vlen > 0 && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\r' || v[vlen - 1] == '\t'))
        vlen--;
    const char *eq = memchr(v, '=', vlen);
    size_t kl = eq ? (size_t)(eq - v) : vlen;
    for (int f = 1; f < F_COUNT; f++)
        if (strlen(fault_names[f]) == kl && strncasecmp(v, fault_names[f], kl) == 0) {
            c->fault = f;
            c->fault_arg = eq ? strtol(eq + 1, NULL, 10) : -1;
            return;
        }
}

/* Does the field value contain token tok (comma-separated, any case)? */
static int
has_token(const char *v, size_t vlen, const char *tok)
{
    size_t tl = strlen(tok);

    for (size_t i = 0; i + tl <= vlen; i++)
        if (strncasecmp(v + i, tok, tl) == 0)
            return 1;
    return 0;
}

/* Parse one request head in [p, p+len) (ending in CRLF CRLF). -1: invalid. */
static int
fast_head(struct fast_conn *c, const char *p, size_t len)
{
    const char *end = p + len, *eol = memchr(p, '\n', len);
    int chunked = 0, has_cl = 0, keep_alive = 0, close_tok = 0;
    unsigned long long cl = 0;

    if (eol == NULL)
        return -1;
    c->fault = F_NONE;
    c->head_only = len >= 5 && memcmp(p, "HEAD ", 5) == 0;
    int http10 = eol - p >= 9 && memcmp(eol - 9, "HTTP/1.0", 8) == 0;
    for (const char *l = eol + 1; l < end; l = eol + 1) {
        eol = memchr(l, '\n', (size_t)(end - l));
        if (eol == NULL)
            break;
        const char *colon = memchr(l, ':', (size_t)(eol - l));
        if (colon == NULL)
            continue;
        size_t nlen = (size_t)(colon - l);
        const char *v = colon + 1;
        size_t vlen = (size_t)(eol - v);
        if (nlen == 14 && strncasecmp(l, "content-length", 14) == 0) {
            char *e;
            while (vlen > 0 && (*v == ' ' || *v == '\t'))
                v++, vlen--;
            cl = strtoull(v, &e, 10);
            if (e == v)
                return -1;
            has_cl = 1;
        } else if (nlen == 17 && strncasecmp(l, "transfer-encoding", 17) == 0) {
            chunked = has_token(v, vlen, "chunked");
        } else if (nlen == 10 && strncasecmp(l, "connection", 10) == 0) {
            close_tok |= has_token(v, vlen, "close");
            keep_alive |= has_token(v, vlen, "keep-alive");
        } else if (nlen == 12 && strncasecmp(l, "x-test-fault", 12) == 0) {
            parse_fault(c, v, vlen);
        }
    }
    c->close_req = close_tok || (http10 && !keep_alive);
    if (chunked) {
        c->state = FS_CHUNK_SIZE;
    } else if (has_cl && cl > 0) {
        c->state = FS_BODY;
        c->body_left = cl;
    } else {
        c->state = FS_HEAD;
        return fast_answer(c);
    }
    return 0;
}

/* Parse what is buffered: 0 when it needs more input, 1 when it stopped
 * with the output at its mark (call again once written), -1 to close. */
static int
fast_parse(struct fast_conn *c)
{
    size_t pos = 0;
    int ret = 0;

    while (pos < c->in_len && !c->closing && !c->waiting) {
        if (c->out_len - c->out_off >= FAST_OUT_HIGH) {
            ret = 1;
            break;
        }
        char *p = c->in + pos;
        size_t avail = c->in_len - pos;
        char *e;

        switch (c->state) {
        case FS_HEAD: {
            char *hend = memmem(p, avail, "\r\n\r\n", 4);
            if (hend == NULL) {
                if (avail > FAST_MAX_HEAD)
                    return -1;
                goto more;
            }
            size_t hl = (size_t)(hend - p) + 4;
            if (fast_head(c, p, hl) < 0)
                return -1;
            pos += hl;
            break;
        }
        case FS_BODY:
        case FS_CHUNK_DATA: {
            size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
            c->body_left -= n;
            pos += n;
            if (c->body_left == 0) {
                if (c->state == FS_CHUNK_DATA) {
                    c->state = FS_CHUNK_CRLF;
                } else {
                    c->state = FS_HEAD;
                    if (fast_answer(c) < 0)
                        return -1;
                }
            }
            break;
        }
        case FS_CHUNK_CRLF:
            if (avail < 2)
                goto more;
            if (p[0] != '\r' || p[1] != '\n')
                return -1;
            pos += 2;
            c->state = FS_CHUNK_SIZE;
            break;
        case FS_CHUNK_SIZE:
        case FS_TRAILER: {
            char *nl = memchr(p, '\n', avail);
            if (nl == NULL) {
                if (avail > 4096)
                    return -1;
                goto more;
            }
            if (c->state == FS_TRAILER) {
                if (nl == p + 1 || nl == p) {   /* the empty line ends the body */
                    c->state = FS_HEAD;
                    if (fast_answer(c) < 0)
                        return -1;
                }
            } else {
                unsigned long long sz = strtoull(p, &e, 16);
                if (e == p)
                    return -1;
                if (sz == 0) {
                    c->state = FS_TRAILER;
                } else {
                    c->state = FS_CHUNK_DATA;
                    c->body_left = sz;
                }
            }
            pos += (size_t)(nl - p) + 1;
            break;
        }
        }
    }
more:
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return ret;
}

static void fast_on_read(evutil_socket_t fd, short what, void *arg);

/* Parse, write what is queued; 0 when all went out, 1 when waiting to
 * write, -1 to close. */
static int
fast_progress(struct fast_conn *c)
{
    for (;;) {
        if (c->out_off > 0) {           /* keep the buffer to what is unsent */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        int parsed = fast_parse(c);
        if (parsed < 0)
            return -1;
        while (c->out_off < c->out_len) {
            ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 1;
            if (n <= 0)
                return -1;
            c->out_off += (size_t)n;
        }
        c->out_off = c->out_len = 0;
        if (c->closing && !c->waiting)
            return -1;
        if (parsed == 0)
            return 0;
        /* parsing stopped at the output mark: go on with what is buffered */
    }
}

static void
fast_settle(struct fast_conn *c, int r)
{
    if (r < 0) {
        fast_close(c);
        return;
    }
    if (r == 1) {
        event_del(c->rev);
        event_add(c->wev, NULL);
        return;
    }
    event_del(c->wev);
    event_add(c->rev, NULL);
    if (idle_close_max_ms > 0 && c->in_len == 0 && c->state == FS_HEAD && !c->waiting) {
        struct timeval tv = idle_close_delay();
        evtimer_add(c->idle, &tv);
    }
}

static void
fast_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct fast_conn *c = arg;

    event_del(c->idle);
    if (c->in_cap - c->in_len < 16384) {
        size_t cap = c->in_cap ? c->in_cap * 2 : 32768;
        char *in = realloc(c->in, cap);
        if (in == NULL) {
            fast_close(c);
            return;
        }
        c->in = in;
        c->in_cap = cap;
    }
    ssize_t n = read(fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        fast_close(c);
        return;
    }
    c->in_len += (size_t)n;
    fast_settle(c, fast_progress(c));
}

static void
fast_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct fast_conn *c = arg;

    fast_settle(c, fast_progress(c));
}

static void
fast_on_idle(evutil_socket_t fd, short what, void *arg)
{
    fast_close(arg);
}

static void
fast_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int slen,
            void *arg)
{
    struct fast_conn *c = calloc(1, sizeof(*c));
    int one = 1;

    n_conns++;
    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->rev = event_new(base, fd, EV_READ | EV_PERSIST, fast_on_read, c);
    c->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, fast_on_write, c);
    c->idle = evtimer_new(base, fast_on_idle, c);
    c->timer = evtimer_new(base, fast_on_timer, c);
    if (c->rev == NULL || c->wev == NULL || c->idle == NULL || c->timer == NULL ||
        event_add(c->rev, NULL) < 0) {
        if (c->rev)
            event_free(c->rev);
        if (c->wev)
            event_free(c->wev);
        if (c->idle)
            event_free(c->idle);
        if (c->timer)
            event_free(c->timer);
        close(fd);
        free(c);
    }
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

/* A listening socket for "HOST:PORT" or "unix:/path"; -1 with a message. */
static int
listen_on(const char *addr)
{
    int fd, one = 1;

    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", addr + 5);
        unlink(sun.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 4096) < 0)
            goto fail;
        return fd;
    }
    char host[256];
    snprintf(host, sizeof(host), "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon == NULL) {
        fprintf(stderr, "sluice-model: --listen needs HOST:PORT\n");
        return -1;
    }
    *colon = '\0';
    const char *h = host;
    if (host[0] == '[' && colon > host + 1 && colon[-1] == ']') {
        colon[-1] = '\0';
        h = host + 1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai;
    if (getaddrinfo(*h ? h : NULL, colon + 1, &hints, &ai) != 0) {
        fprintf(stderr, "sluice-model: cannot resolve %s\n", addr);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        freeaddrinfo(ai);
        goto fail;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&ss)->sin_port);
        /* harnesses read this line to learn the port: no race for a free one */
        printf("listening on %d\n", port);
        fflush(stdout);
    }
    return fd;
fail:
    fprintf(stderr, "sluice-model: cannot listen on %s\n", addr);
    if (fd >= 0)
        close(fd);
    return -1;
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
        {"noise", required_argument, NULL, 'N'},
        {"random-field", no_argument, NULL, 'R'},
        {"idle-close-max-ms", required_argument, NULL, 'I'},
        {"fast", no_argument, NULL, 'F'},
        {"fault-rate", required_argument, NULL, 'f'},
        {"slow-max-ms", required_argument, NULL, 's'},
        {"seed", required_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    const char *listen_addr = "127.0.0.1:5001";
    int c, fast = 0;
    unsigned seed = (unsigned)getpid();

    while ((c = getopt_long(argc, argv, "l:n:d:j:e:", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen_addr = optarg; break;
        case 'n': name = optarg; break;
        case 'd': latency_ms = atoi(optarg); break;
        case 'j': jitter_ms = atoi(optarg); break;
        case 'e': error_rate = atof(optarg); break;
        case 'N': noise_eps = atof(optarg); break;
        case 'R': random_field = 1; break;
        case 'I': idle_close_max_ms = atoi(optarg); break;
        case 'F': fast = 1; break;
        case 'f': fault_rate = atof(optarg); break;
        case 's': slow_max_ms = atoi(optarg); break;
        case 'S': seed = (unsigned)strtoul(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: sluice-model [--listen HOST:PORT|unix:/path] "
                    "[--name V] [--latency-ms N] [--jitter-ms N] [--error-rate F]\n"
                    "       [--noise EPS] [--random-field] [--idle-close-max-ms N] [--fast]\n"
                    "       [--fault-rate F] [--slow-max-ms N] [--seed N]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    srandom(seed);
    base = event_base_new();
    if (base == NULL)
        return 1;
    int fd = listen_on(listen_addr);
    if (fd < 0)
        return 1;
    struct evhttp *http = NULL;
    struct evconnlistener *lev = NULL;
    if (fast) {
        fast_build_responses();
        lev = evconnlistener_new(base, fast_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (lev == NULL) {
            fprintf(stderr, "sluice-model: cannot accept on %s\n", listen_addr);
            return 1;
        }
    } else {
        http = evhttp_new(base);
        if (http == NULL)
            return 1;
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                   EVHTTP_REQ_HEAD | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                   EVHTTP_REQ_OPTIONS);
        evhttp_set_bevcb(http, on_connection, NULL);
        evhttp_set_gencb(http, on_request, NULL);
        evhttp_set_timeout(http, 120);
        if (evhttp_accept_socket(http, fd) < 0) {
            fprintf(stderr, "sluice-model: cannot accept on %s\n", listen_addr);
            return 1;
        }
    }
    struct event *st = evsignal_new(base, SIGTERM, on_signal, NULL);
    struct event *si = evsignal_new(base, SIGINT, on_signal, NULL);
    event_add(st, NULL);
    event_add(si, NULL);
    fprintf(stderr, "sluice-model %s listening on %s%s\n", name, listen_addr,
            fast ? " (fast)" : "");
    event_base_dispatch(base);
    if (fast) {
        fprintf(stderr, "faults: requests=%llu connections=%llu", n_reqs, n_conns);
        for (int f = 1; f < F_COUNT; f++)
            fprintf(stderr, " %s=%llu", fault_names[f], n_faults[f]);
        fprintf(stderr, "\n");
    }
    event_free(st);
    event_free(si);
    if (http != NULL)
        evhttp_free(http);
    if (lev != NULL)
        evconnlistener_free(lev);
    event_base_free(base);
    return 0;
}
