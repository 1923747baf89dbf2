/*
 * --fast: the benchmark backend, a fixed answer on raw sockets, and the
 * chaos soak's faulty upstream (X-Test-Fault, --fault-rate).
 *
 * Each connection reads into one buffer, parses every complete request in
 * it (head, then a Content-Length or chunked body, skipped), queues one
 * fixed response per request and writes them with one write(). While
 * output is pending the connection stops reading, so a client that does
 * not read holds at most one buffer. A connection that opens with the
 * HTTP/2 preface is handed to http2.c instead (which gives the same fixed
 * answer, and answers gRPC calls).
 */
#include <event2/event.h>
#include <event2/listener.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "model.h"

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
    int sniffed;            /* the first bytes were looked at */
    int feeding;            /* in h2_conn_feed: fast_h2_settle follows */
    int h2_paused;          /* reading stopped: too much output waits */
    struct h2_conn *h2;     /* an HTTP/2 connection (prior knowledge) */
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
    int blen = fast_body(body, sizeof(body));
    const char *fmt = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      "X-Model-Version: %s\r\nContent-Length: %d\r\n%s\r\n%s";
    size_t cap = 1024 + strlen(opt.name);

    fast_resp = malloc(cap);
    fast_resp_close = malloc(cap);
    if (fast_resp == NULL || fast_resp_close == NULL || blen < 0 || (size_t)blen >= sizeof(body)) {
        fprintf(stderr, "sluice-model: cannot build the --fast answer\n");
        exit(1);
    }
    fast_body_len = (size_t)blen;
    fast_resp_len = (size_t)snprintf(fast_resp, cap, fmt, opt.name, blen, "", body);
    fast_resp_close_len = (size_t)snprintf(fast_resp_close, cap, fmt, opt.name, blen,
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
    if (c->h2 != NULL)
        h2_conn_free(c->h2);
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
                      status, opt.name, c->close_req ? "Connection: close\r\n" : "",
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

    if (f == F_NONE && opt.fault_rate > 0 && (double)random() / RAND_MAX < opt.fault_rate) {
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
    case F_DELAY: pre = (int)(arg >= 0 ? arg : rand_upto(opt.slow_max_ms)); break;
    case F_STALL:
        c->mid_ms = (int)(arg >= 0 ? arg : rand_upto(opt.slow_max_ms));
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
    if (opt.idle_close_max_ms > 0 && c->in_len == 0 && c->state == FS_HEAD && !c->waiting) {
        struct timeval tv = idle_close_delay();
        evtimer_add(c->idle, &tv);
    }
}

/*
 * An HTTP/2 connection: http2.c queues its bytes in the output buffer;
 * they are written as the socket takes them, reading pauses while more
 * than FAST_OUT_HIGH wait, and the end comes once they went.
 */
static void
fast_h2_settle(struct fast_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(c->wev, NULL);
            if (c->out_len - c->out_off > FAST_OUT_HIGH && !c->h2_paused) {
                event_del(c->rev);
                c->h2_paused = 1;
            }
            return;
        }
        if (n <= 0) {
            fast_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    if (event_pending(c->wev, EV_WRITE, NULL))
        event_del(c->wev);
    if (c->closing) {
        fast_close(c);
        return;
    }
    if (c->h2_paused) {
        event_add(c->rev, NULL);
        c->h2_paused = 0;
    }
}

static int
fast_h2_write(void *arg, const uint8_t *data, size_t len)
{
    struct fast_conn *c = arg;

    if (c->closing || out_add(c, (const char *)data, len) < 0)
        return -1;
    if (!c->feeding)            /* a timer's answer: write when we can */
        event_add(c->wev, NULL);
    return 0;
}

static void
fast_h2_end(void *arg)
{
    struct fast_conn *c = arg;

    c->closing = 1;
    if (!c->feeding)
        event_add(c->wev, NULL);
}

static const struct h2_io fast_h2_io = {fast_h2_write, fast_h2_end};

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
    if (!c->sniffed) {
        int m = h2_preface_match(c->in, c->in_len);
        if (m == 0)
            return;             /* a part of the preface: wait for the rest */
        c->sniffed = 1;
        if (m > 0 && (c->h2 = h2_conn_new(&fast_h2_io, c)) == NULL) {
            fast_close(c);
            return;
        }
    }
    if (c->h2 != NULL) {
        c->feeding = 1;
        int r = h2_conn_feed(c->h2, (const uint8_t *)c->in, c->in_len);
        c->feeding = 0;
        c->in_len = 0;
        if (r < 0)
            fast_h2_end(c);
        fast_h2_settle(c);
        return;
    }
    fast_settle(c, fast_progress(c));
}

static void
fast_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct fast_conn *c = arg;

    if (c->h2 != NULL) {
        fast_h2_settle(c);
        return;
    }
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

struct evconnlistener *
fast_new(int fd)
{
    fast_build_responses();
    return evconnlistener_new(base, fast_accept, NULL, LEV_OPT_CLOSE_ON_FREE, -1, fd);
}

void
fast_report(void)
{
    fprintf(stderr, "faults: requests=%llu connections=%llu", n_reqs, n_conns);
    for (int f = 1; f < F_COUNT; f++)
        fprintf(stderr, " %s=%llu", fault_names[f], n_faults[f]);
    if (n_refused > 0)          /* HTTP/2 streams refused or dropped unprocessed */
        fprintf(stderr, " h2_refused=%llu", n_refused);
    fprintf(stderr, "\n");
}
