/*
 * gateway/internal.h — the data plane's own declarations, shared by the
 * files of gateway/ only (the control plane sees gateway/gateway.h).
 *
 * Who calls whom (one way, top to bottom):
 *   worker.c -> client_h1.c                accept, drain, free
 *   client_h1.c -> request.c, validate.c, compose.c   the HTTP/1.1 client side
 *   request.c -> shadow.c, compare.c, upstream.c, account.c, validate.c
 *                (and back to its client through struct client_ops)
 *   shadow.c -> compare.c, upstream.c, account.c   (sends through its pool's class)
 *   compare.c -> account.c                 (shadow comparison, SPEC §7)
 *   upstream.c -> http.c, transport.c      (reports to its owner by callbacks)
 *   upstream_h2.c -> upstream_h2_retry.c   (what a retried HTTP/2 stream keeps)
 * OpenSSL is seen by tls.c and worker.c (context references); llhttp by
 * client_h1.c, upstream.c and validate.c.
 */
#ifndef SLUICE_GATEWAY_INTERNAL_H
#define SLUICE_GATEWAY_INTERNAL_H

#include "gateway/gateway.h"

#include <llhttp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "config/config.h"
#include "routing/routing.h"
#include "auth/auth.h"
#include "metrics/metrics.h"
#include "gateway/trace.h"
#include "compare/compare.h"

struct event_base;
struct event;
struct bufferevent;
struct evconnlistener;
struct evbuffer;
struct ssl_ctx_st;
struct ssl_st;

#define GW_HIGH_WATER (256 * 1024)  /* stop reading the other side above this */
#define GW_MAX_HEADERS 128
#define GW_REPLAY_MAX (64 * 1024)   /* request bytes an upstream keeps for one retry */

/* ---- heads: header storage and classification (http.c) ------------------ */

struct hdr {
    uint32_t name_off, name_len;
    uint32_t val_off, val_len;
};

/* What a header is to a proxy; computed once per message by head_classify(). */
enum hclass {
    HC_OTHER = 0,
    HC_HOP,                         /* hop-by-hop, or named by Connection */
    HC_CONNECTION,                  /* Connection itself (hop-by-hop) */
    HC_HOST, HC_AUTHORIZATION, HC_CONTENT_LENGTH, HC_TRANSFER_ENCODING, HC_EXPECT,
    HC_XFF, HC_XFP, HC_SLUICE, HC_REQUEST_ID, HC_COOKIE,
    HC_TRACEPARENT, HC_TRACESTATE,  /* W3C trace context: read, then replaced by ours */
    HC_COUNT,
};

/* A request or response head: url/reason text and headers, as offsets into
 * one growing buffer owned by the message. */
struct head {
    char *buf;
    size_t len, cap;
    uint32_t url_off, url_len;      /* request target or response reason */
    struct hdr h[GW_MAX_HEADERS];
    int n;
    bool in_value;                  /* last callback was a header value */
    uint8_t cls[GW_MAX_HEADERS];    /* enum hclass of each header */
    int16_t first[HC_COUNT];        /* first header of each class, -1 if none */
    int16_t count[HC_COUNT];
    int16_t pin;                    /* X-Sluice-Version, -1 if none */
    bool lowercase;                 /* every name arrived lowercase (HTTP/2) */
};

void head_reset(struct head *hd);
void head_free(struct head *hd);
/* Append a piece of the url (reason), a header name or a value; -1 when
 * out of memory or past GW_MAX_HEADERS. */
int head_url(struct head *hd, const char *at, size_t len);
int head_field(struct head *hd, const char *at, size_t len);
int head_value(struct head *hd, const char *at, size_t len);
#define HD_NAME(hd, i) ((hd)->buf + (hd)->h[i].name_off)
#define HD_VAL(hd, i) ((hd)->buf + (hd)->h[i].val_off)
static inline bool
head_name_is(const struct head *hd, int i, const char *lower)
{
    size_t n = strlen(lower);       /* folded for a literal */
    return hd->h[i].name_len == n && strncasecmp(HD_NAME(hd, i), lower, n) == 0;
}
/* Fill cls, first, count and pin once the head is complete. Headers that a
 * Connection header names become HC_HOP (RFC 9110 §7.6.1). */
void head_classify(struct head *hd);
/* The one Content-Length of a classified head, 1 to 19 digits and nothing
 * else (HTTP/2's, which nghttp2 checked: HTTP/1.1's is llhttp's); false
 * when there is none, or more than one. */
bool head_length(const struct head *hd, uint64_t *n);
/* Whether the comma-separated list v holds tok (case-insensitive). */
bool http_list_has(const char *v, size_t vlen, const char *tok, size_t tlen);

/* Small writers that avoid printf on the request path. */
#define BUF_LIT(b, lit) evbuffer_add((b), (lit), sizeof(lit) - 1)
void buf_str(struct evbuffer *b, const char *str);
void buf_u64(struct evbuffer *b, uint64_t n);
/* n in decimal at out (room for 20 digits); its length. No NUL. */
size_t fmt_u64(char *out, uint64_t n);
/* An empty evbuffer from the worker's pool (bufpool.c), and back (freed when
 * the pool is full or b not empty); NULL-safe. Only on the worker's thread. */
struct evbuffer *worker_buf_get(struct worker *w);
void worker_buf_put(struct worker *w, struct evbuffer *b);
void worker_bufs_free(struct worker *w);
/* ev armed to fire in ms (bufpool.c). fixed: ms is one of the config's
 * durations (header, send, scoring, queue timeouts), which go on
 * libevent's common-timeout queues (the first 8 a worker sees): O(1) to
 * add and delete, where the heap is O(log n) with every request's timers
 * in it. Others (what is left of a deadline, a gRPC call's own timeout)
 * go on the heap. */
void worker_arm(struct worker *w, struct event *ev, int ms, bool fixed);
void buf_chunk_size(struct evbuffer *b, size_t n);     /* "%zx\r\n" */
/* Append s to b as a JSON string body (no quotes), escaped. Bytes that are
 * not valid UTF-8 are escaped as \u00XX so the output is always JSON. */
void json_escape_add(struct evbuffer *b, const char *s, size_t len);
/* The reason phrase of a status, "Unknown" when there is none. */
const char *http_reason(int status);

/* ---- transports (transport.c, tls.c) ----------------------------------- */

/*
 * A client connection's I/O, kept lean for idle keep-alive connections:
 * the buffers exist only while there is something in them (they come from
 * a per-worker pool), and one read event carries the idle deadline as its
 * timeout. Reads go through tp->read() (one read(2), or SSL_read) into in;
 * writes through tp->flush() from out, directly; wev is created the first
 * time the socket does not take everything (want_write).
 */
struct conn_io {
    int fd;
    struct evbuffer *in, *out;      /* NULL while idle */
    struct event *rev;
    struct event *wev;
    struct ssl_st *ssl;
    bool tls_ready;                 /* TLS handshake done */
    bool want_write;                /* blocked until the socket takes more */
};

#define GW_READ_SIZE 16384
#define GW_READ_AGAIN (-1)
#define GW_READ_EOF 0
#define GW_READ_ERROR (-2)

struct transport {
    const char *proto;              /* "http" or "https" */
    /* Bytes read into io->in, or GW_READ_*; sets want_write when the TLS
     * handshake must write first. */
    int (*read)(struct conn_io *io);
    /* Send what io->out holds; 0 (want_write set when some is left), or -1
     * when the connection failed. */
    int (*flush)(struct conn_io *io);
    /* Free the transport's state (not the bufferevent). */
    void (*end)(struct conn_io *io);
    /* Bytes already read from the socket but not yet handed over (TLS
     * records OpenSSL holds): the socket will not signal them. */
    bool (*pending)(const struct conn_io *io);
};

extern const struct transport transport_plain;
extern const struct transport transport_tls;
/* One read(2) of fd into in: bytes, or GW_READ_*. */
int gw_read_fd(int fd, struct evbuffer *in);
/* Plain reads and writes of upstream connections (bufferevents). */
int gw_read(struct bufferevent *bev);
void gw_flush(struct bufferevent *bev, bool direct);

/* Attach a server-side SSL on fd to io; 0 or -1. */
int tls_start(struct conn_io *io, struct ssl_ctx_st *ctx, int fd);

/* ---- request validation and routing inputs (validate.c) -------------------
 *
 * Pure functions of a parsed head: no sockets, no state. */

/* Why a request ended; each has its status, log code and rejected kind
 * (account.c's table), so the log, the counters and the reply agree. */
enum req_cause {
    RC_OK = 0,                      /* relayed the model server's response */
    RC_BAD_REQUEST,                 /* 400 */
    RC_BAD_VERSION,                 /* 505 */
    RC_UNAUTHORIZED,                /* 401 */
    RC_NOT_FOUND,                   /* 404 */
    RC_CLIENT_TIMEOUT,              /* 408 */
    RC_TOO_LARGE,                   /* 413 */
    RC_HEADERS_TOO_LARGE,           /* 431 */
    RC_UNAVAILABLE,                 /* 503, no healthy upstream */
    RC_OVERLOADED,                  /* 503, concurrency limit */
    RC_UPSTREAM_CONNECT,            /* 502 */
    RC_UPSTREAM_RESET,              /* 502, or cut mid-response */
    RC_UPSTREAM_CLOSED,             /* 502, closed without (a complete) answer */
    RC_UPSTREAM_INVALID,            /* 502 */
    RC_UPSTREAM_TIMEOUT,            /* 504 */
    RC_CLIENT_CLOSED,               /* the client left before its answer */
    RC_CLIENT_ERROR,                /* reset, or TLS failure */
    RC_SEND_TIMEOUT,                /* the client took no bytes for send_timeout_ms */
    RC_SHUTDOWN,                    /* the worker stopped */
    RC_COUNT,
};

struct req_cause_info {
    int status;                     /* for the reply; 0 when none is sent */
    const char *code;               /* the JSON error code of the reply */
    const char *why;                /* the access log's "error" */
    int rejected;                   /* enum rejected_kind, -1 if not one */
};
const struct req_cause_info *req_cause_info(enum req_cause c);

/* What a request line and head say, as the parser reported them. */
struct req_line {
    int method;                     /* llhttp_method_t */
    int major, minor;
    bool chunked;                   /* Transfer-Encoding: chunked */
    bool has_length;                /* Content-Length given */
    uint64_t content_length;
    bool upgrade;
    bool fields_checked;            /* names and values already checked by
                                       libnghttp2 (RFC 9113 §8.2.1) */
};

/* The request target split up: offsets into the head's buffer. */
struct req_target {
    uint32_t path_off, path_len;
    uint32_t query_off, query_len;  /* without '?'; query_len 0 when none */
    bool has_query;
};

struct req_verdict {
    enum req_cause cause;           /* RC_OK when the request may be routed */
    const char *message;            /* static text for the reply */
    bool close;                     /* framing no longer trustworthy */
};

/* Check what SPEC §3.7 asks of a request head beyond llhttp's own checks
 * (version, Host, framing headers, names, targets, sizes); fill *t. */
struct req_verdict req_validate(const struct head *hd, const struct req_line *rl,
                                const struct cfg_limits *lim, struct req_target *t);
/* The endpoint name in /api/v1/service/{ep}/score; false when the path is
 * not a scoring URL. */
bool req_score_path(const char *path, size_t len, const char **ep, size_t *eplen);
/* The Open Inference Protocol's REST scoring URL (SPEC §9):
 * /v2/models/{ep}/infer, or /v2/models/{ep}/versions/{v}/infer (ver set). */
bool req_v2_path(const char *path, size_t len, const char **ep, size_t *eplen,
                 const char **ver, size_t *verlen);
/* The sticky key of a request: the configured header, or cookie. */
bool req_sticky_key(const struct head *hd, const struct cfg_endpoint *ep,
                    const char **key, size_t *len);
/* A usable incoming X-Request-Id (printable, no quotes, < 64 bytes). */
bool req_id_acceptable(const char *v, size_t len);
/* A fresh id: 32 hex digits from a per-worker prefix and a sequence. */
void req_id_make(char out[33], uint64_t prefix, uint64_t seq);
/* The mapping of an llhttp error to the cause of the reply. */
enum req_cause req_parse_error_cause(int llhttp_errno);
/*
 * llhttp (strict) holds field lines to CR LF but accepts a bare LF after the
 * request line and as the empty line that ends the head (or the trailers).
 * req_scan_lines() checks the line ends from the method (or the first
 * trailer) on, one read at a time, until the empty line: chunk..end is the
 * read, from where to look in it, prev the last byte of the read before.
 * It also refuses obs-fold (a line that starts with a space or a tab):
 * llhttp would hand the folded part to the value callback as a piece of
 * its own, so no check of the assembled value can see it.
 */
struct line_scan {
    bool active;                    /* the empty line not seen yet */
    bool line_start;                /* the last read ended with a line's CR LF */
    size_t line_bytes;              /* of the line being scanned, so far */
};
enum req_scan { SCAN_MORE, SCAN_END, SCAN_BARE_LF, SCAN_FOLD };
enum req_scan req_scan_lines(struct line_scan *sc, const char *from, const char *chunk,
                             const char *end, char prev);
/* Host syntax (RFC 9110 §7.2: reg-name, IPv4 or [IPv6], optional port). */
bool req_host_valid(const char *v, size_t len);

/* ---- composing heads (compose.c) -------------------------------------------
 *
 * Values in, bytes out: nothing here looks at a session. */

/* The tags Sluice adds (SPEC §3.5). */
struct tags {
    const char *version;            /* NULL: no version was chosen */
    const char *group;
    const char *request_id;
    bool failover;
};

enum framing {
    FRAME_NONE,                     /* no body */
    FRAME_LENGTH,                   /* Content-Length */
    FRAME_CHUNKED,                  /* Transfer-Encoding: chunked */
    FRAME_CLOSE,                    /* until the connection closes (HTTP/1.0) */
};

struct upstream_request {
    const char *method;
    const char *path;               /* the version's path, or the received one */
    size_t path_len;
    const char *query;              /* NULL when none */
    size_t query_len;
    const struct head *hd;          /* the client's head, classified */
    const char *peer;               /* client address for X-Forwarded-For */
    const char *default_host;       /* Host when the client sent none (HTTP/1.0) */
    const char *proto;              /* "http" or "https" */
    struct tags tags;
    enum framing framing;
    uint64_t content_length;
    const char *grpc_timeout;       /* replaces the client's grpc-timeout; NULL: none */
    /* This hop's W3C trace context (SPEC §10): traceparent is exactly
     * TRACING_TRACEPARENT_LEN characters (NULL: none sent), tracestate the
     * cleaned list to pass on (tracestate_len 0: none). */
    const char *traceparent;
    const char *tracestate;
    size_t tracestate_len;
};

/* The request head for the upstream: hop-by-hop headers, Authorization and
 * the client's X-Sluice-* / X-Forwarded-Proto / traceparent / tracestate
 * dropped, ours added. */
void compose_request_head(struct evbuffer *out, const struct upstream_request *r);

enum conn_header { CONN_NONE, CONN_CLOSE, CONN_KEEP_ALIVE };

/* The response head for the client from an upstream head (classified):
 * hop-by-hop, framing and X-Sluice-* headers dropped, ours added. */
void compose_response_head(struct evbuffer *out, int status, const struct head *up,
                           const struct tags *tags, enum framing framing,
                           uint64_t content_length, enum conn_header conn);
/* A JSON error reply (SPEC §3.6) with our tags; head_only: its head (with
 * the body's length) for a HEAD request. */
/* Sluice's JSON error body ({"error":{"code","message"}}) appended to out;
 * its length. */
size_t compose_error_body(struct evbuffer *out, const char *code, const char *message);
void compose_error(struct evbuffer *out, struct evbuffer *scratch, int status,
                   const char *code, const char *message, const struct tags *tags,
                   enum conn_header conn, bool head_only);

/* ---- accounting (account.c) ----------------------------------------------- */

struct worker;

/* Everything the access log and the counters need of one finished request. */
struct req_record {
    const struct config *cfg;
    const struct cfg_endpoint *ep;  /* NULL: reached no endpoint */
    int version;                    /* -1: reached no version */
    bool pinned, failover;
    int status;                     /* sent to the client; 0: nothing sent */
    enum req_cause cause;
    uint64_t latency_us;
    uint64_t bytes_in, bytes_out;
    const char *request_id;
    const char *peer;
    const char *method;
    const char *path;               /* the request target as received */
    size_t path_len;
    const char *upstream;           /* address, NULL when none */
    const struct tracing_ctx *trace;    /* trace_id and span_id of the log line */
    const char *protocol;           /* "HTTP/1.1", "HTTP/2", ... */
    int count_status;               /* counted as (gRPC: from grpc-status); 0: status */
    int grpc_status;                /* logged for gRPC calls; -2: not gRPC, -1: none */
};

/* One access-log line and one count (SPEC §3.7, §4). */
void account_request(struct worker *w, const struct req_record *r);
/* A shadow copy ended with status (0: no answer) after latency_us. */
void account_shadow(struct worker *w, const struct config *cfg,
                    const struct cfg_endpoint *ep, int version, int status,
                    uint64_t latency_us, bool dropped);
/* Write the worker's buffered access lines. */
void account_flush(struct worker *w);

/* ---- shadow comparison (compare.c; SPEC §7) ---------------------------------- */

enum cmp_result { CMP_EQUAL, CMP_DIFFERENT, CMP_STATUS_MISMATCH, CMP_UNKNOWN };
enum cmp_who { CMP_LIVE = 0, CMP_SHADOW = 1 };

/* A disagreement to keep as a sample (SPEC §7 samples). */
struct cmp_diff {
    const char *request_id;
    const char *trace_id;           /* 32 hex digits; NULL: not known */
    int live_status, shadow_status;
    const char *path;               /* first differing JSON path; NULL for none */
    const char *live, *shadow;      /* excerpts, valid UTF-8, at most CMP_EXCERPT bytes */
    bool excerpts_set;
};

/* Count one comparison of version vi's copy; d (may be NULL) is sampled
 * when the version keeps samples. */
void account_compare(struct worker *w, const struct config *cfg,
                     const struct cfg_endpoint *ep, int vi, enum cmp_result res,
                     const struct cmp_diff *d);

/*
 * The comparison of one copy, shared by its live request and its copy:
 * created by shadow_start() for a version with "compare"; each side reports
 * its head, body bytes and end (cmp_end exactly once per side), and the
 * second end compares, counts and frees it. NULL when the version does not
 * compare (or out of memory: counted unknown).
 */
struct shadow_cmp;
struct shadow_cmp *cmp_new(struct worker *w, struct config *cfg,
                           const struct cfg_endpoint *ep, int vi, const char *request_id);
/* The live request's trace id, for the sample (SPEC §10: a disagreement
 * can be looked up). */
void cmp_set_trace(struct shadow_cmp *c, const uint8_t trace_id[16]);
void cmp_head(struct shadow_cmp *c, enum cmp_who who, int status);
void cmp_body(struct shadow_cmp *c, enum cmp_who who, const char *at, size_t len);
/* ok: that side's response arrived complete. */
void cmp_end(struct shadow_cmp *c, enum cmp_who who, bool ok);

/* ---- upstream pools and connections (upstream.c) -------------------------- */

struct upool {
    char *address;
    struct sockaddr_storage sa;
    socklen_t salen;
    bool resolved;
    bool is_unix;
    int active;                     /* requests in flight on this worker */
    struct route_shared *shared;    /* in flight across workers, health */
    struct route_eject eject;       /* passive ejection, this worker's view */
    const struct upstream_class *cls;   /* the protocol its connections speak */
    void *h2;                       /* HTTP/2: its connections (upstream_h2.c) */
    TAILQ_HEAD(, upconn) idle;
    int n_idle;
    struct upool *next;             /* worker's list */
};

/* Why an exchange with an upstream failed. */
enum up_fail {
    UPF_CONNECT,                    /* could not connect */
    UPF_RESET,                      /* reset by the server */
    UPF_CLOSED,                     /* closed before the response ended */
    UPF_INVALID,                    /* not a valid HTTP/1.x response */
};

/*
 * How a connection reports to whoever holds it (a client request or a
 * shadow copy); set by upconn_acquire(). The connection never names its
 * owner's type. Each callback may release or close the connection.
 */
struct upconn_ops {
    /* The response head is complete (classified, in u->head). Return 1 when
     * the response has no body (HEAD), else 0. */
    int (*on_head)(void *owner, struct upconn *u);
    void (*on_body)(void *owner, struct upconn *u, const char *at, size_t len);
    /* The response ended; reusable when the connection may serve again. */
    void (*on_done)(void *owner, struct upconn *u, bool reusable);
    /* early: nothing of a response arrived, so a retry is safe. */
    void (*on_failed)(void *owner, struct upconn *u, enum up_fail why, bool early);
    /* The request bytes queued for the upstream were written. */
    void (*on_drained)(void *owner, struct upconn *u);
    /* A read was parsed and the response goes on: pass on what it gave. */
    void (*on_progress)(void *owner, struct upconn *u);
    /* The owner retries a request the server closed a reused connection
     * on (the keep-alive race): the connection keeps what it sends. */
    bool retries;
};

struct upconn {
    struct worker *w;
    struct upool *pool;
    const struct upstream_class *cls;
    struct bufferevent *bev;
    struct event *rev;              /* reads (see gw_read); idle timeout */
    const struct upconn_ops *ops;   /* the owner's, while busy */
    void *owner;
    llhttp_t parser;
    struct head head;               /* the response head, classified */
    struct head trailers;           /* HTTP/2: the response's trailers, classified */
    bool has_trailers;
    int status;
    bool has_length;                /* the response gave a Content-Length */
    uint64_t content_length;
    enum framing framing;           /* of the request body being sent */
    struct evbuffer *replay;        /* sent on a reused connection, for a retry */
    bool busy;                      /* owned (not idle in the pool) */
    bool connected;
    bool reused;                    /* served a request before this one */
    bool closed;
    bool got_bytes;                 /* a response byte arrived */
    bool response_done;
    bool keepalive;                 /* the response allows reuse */
    bool keepalive_denied;          /* a bodiless response announced a body */
    bool no_body;                   /* response to HEAD, 1xx, 204, 304 */
    bool paused;                    /* client output is full */
    bool in_idle;
    TAILQ_ENTRY(upconn) link;       /* pool idle list */
    struct upconn *gc_next;
};

/*
 * What an owner (a request, a shadow copy) may do with an upstream
 * connection, whatever protocol it speaks: one table per protocol, the
 * pool's. upstream_http1 (upstream.c) is the HTTP/1.1 one.
 */
struct upstream_class {
    const char *name;
    /* An idle pooled connection or a new one being connected, reporting to
     * owner through ops. NULL when no connection could be started.
     * fresh: never an idle one (a retry). */
    struct upconn *(*acquire)(struct worker *w, struct upool *p,
                              const struct upconn_ops *ops, void *owner, bool fresh);
    /* Give a finished connection back to its pool (or close it). */
    void (*release)(struct upconn *u, bool reusable);
    void (*close)(struct upconn *u);
    /* Backpressure from the client side: stop / restart reading the response. */
    void (*pause)(struct upconn *u);
    void (*resume)(struct upconn *u);
    /* Send what is queued for the upstream. */
    void (*flush)(struct upconn *u);
    /* The request: its head (framing says how the body comes), body pieces,
     * its end. */
    void (*send_head)(struct upconn *u, const struct upstream_request *r);
    void (*send_body)(struct upconn *u, const char *at, size_t len);
    void (*send_end)(struct upconn *u);
    /* A retry: what to send again on a new connection, taken from a failed
     * one (NULL when it cannot be retried: nothing may be sent again, too
     * big, or already answered); send_again() sends it on a new connection
     * of the same class. Its bytes are the class's own (HTTP/1.1: the
     * request as sent; HTTP/2: see upstream_h2_retry.c). */
    struct evbuffer *(*take_resend)(struct upconn *u);
    void (*send_again)(struct upconn *u, struct evbuffer *what);
    /* Request bytes accepted but not yet written to the upstream. */
    size_t (*backlog)(const struct upconn *u);
};
extern const struct upstream_class upstream_http1;
extern const struct upstream_class upstream_http2;     /* upstream_h2.c */
void upstream_h2_free_pool(struct upool *p);
/* An ended HTTP/2 upstream stream kept for the next one (true), instead of
 * freed: a stream's struct is a few KiB, and allocating one per request
 * cost more than the rest of opening it. upstream_h2_spares_free() at the
 * worker's end. */
bool upstream_h2_keep(struct worker *w, struct upconn *u);
/* A recycled request or stream keeps its heads' buffers up to this size. */
#define HEAD_KEEP_MAX 4096
void upstream_h2_spares_free(struct worker *w);

void upstream_worker_init(struct worker *w);
/* The worker's pool for an address and protocol (shared across generations). */
struct upool *upool_get(struct worker *w, const struct cfg_upstream *u, bool http2);
static inline struct upconn *
upconn_acquire(struct worker *w, struct upool *p, const struct upconn_ops *ops, void *owner,
               bool fresh)
{
    return p->cls->acquire(w, p, ops, owner, fresh);
}
static inline void upconn_release(struct upconn *u, bool reusable) { u->cls->release(u, reusable); }
static inline void upconn_close(struct upconn *u) { u->cls->close(u); }
static inline void upconn_pause(struct upconn *u) { u->cls->pause(u); }
static inline void upconn_resume(struct upconn *u) { u->cls->resume(u); }
static inline void upconn_flush(struct upconn *u) { u->cls->flush(u); }
static inline size_t upconn_backlog(const struct upconn *u) { return u->cls->backlog(u); }
void upstream_free_all(struct worker *w);
void upstream_gc(struct worker *w);

/*
 * Choose an upstream of version vi of ep (snapshot cfg) for a request:
 * route_pick_upstream() over the pools' state, then a concurrency slot.
 * On PICK_OK *out holds the slot of (*out)->shared.
 */
enum pick { PICK_OK, PICK_NO_HEALTHY, PICK_AT_LIMIT };
enum pick upstream_pick(struct worker *w, const struct config *cfg,
                        const struct cfg_endpoint *ep, int vi,
                        const struct upool *avoid, struct upool **out);
/* A connect failure or reset of p (counts toward passive ejection). */
void upstream_failed(struct worker *w, struct upool *p, const struct cfg_version *v);

/* ---- shadow traffic (shadow.c) -------------------------------------------- */

/* A mirror this far behind its live request is dropped. */
#define SHADOW_MAX_BEHIND (1024 * 1024)

struct shadow;

/*
 * Start a copy of a request for mirror version vi: ur is the request to
 * send (tags, traceparent and all), copied whole (its head and strings:
 * the copy keeps no pointer into the live request). The copy is fed the
 * body with shadow_body() and nothing is sent before shadow_complete(), so
 * a request found malformed after its head never reaches the mirror. It
 * is sent through the mirror pool's class (HTTP/1.1 or HTTP/2). NULL when
 * it is not sent (no room, no healthy mirror: counted as shadow_dropped).
 * grpc: a gRPC call's copy (not compared; counted by its grpc-status).
 * trace_id: the live request's, for its comparison's sample; span (may be
 * NULL): its CLIENT span, copied, submitted when the copy ends (trace.c).
 */
struct shadow *shadow_start(struct worker *w, struct config *cfg,
                            const struct cfg_endpoint *ep, int vi,
                            const struct upstream_request *ur, bool grpc, bool head_method,
                            const uint8_t trace_id[16], const struct tracing_span *span);
void shadow_body(struct shadow *sh, const char *at, size_t len);
/* The live request was read whole: send the copy, let it go on alone.
 * Returns the live side of its comparison (NULL when none): from here the
 * request feeds it its response and ends it (cmp_end) once. */
struct shadow_cmp *shadow_complete(struct shadow *sh);
/* The live request failed before it was complete: drop the copy (and end
 * both sides of its comparison: unknown). */
void shadow_abandon(struct shadow *sh);
void shadows_free_all(struct worker *w);

#include "gateway/request.h"         /* the request's life, its client sides, gRPC */

/* The HTTP/1.1 client side (client_h1.c): a connection and its requests,
 * one at a time, pipelined ones answered in order. */
void session_worker_init(struct worker *w);
void session_new(struct worker *w, int fd, struct sockaddr *sa, int salen,
                 struct ssl_ctx_st *tls, bool http2);
/* Drain: close idle sessions now; the rest close after their response. */
void session_drain_all(struct worker *w);
void sessions_free_all(struct worker *w);
void session_gc(struct worker *w);

/* ---- workers (worker.c) ---------------------------------------------------- */

struct listener_rt {
    struct evconnlistener *ev;
    int fd;
    struct ssl_ctx_st *tls;         /* the worker's reference; NULL for plain */
    bool http2;
    struct worker *w;
};


/* A worker's state for one endpoint of its current snapshot. */
struct ep_state {
    struct route_split split;
    struct upool *pools[CFG_MAX_VERSIONS][CFG_MAX_UPSTREAMS];
    struct metrics_slot *mslot[CFG_MAX_VERSIONS];   /* live (or shadow, for mirrors) */
    int mirror_acc[CFG_MAX_VERSIONS];
};

struct request;

struct worker {
    int id;
    pthread_t thread;
    struct event_base *base;
    struct config *cfg;             /* the worker's reference to the current snapshot */
    struct ep_state *eps;           /* per endpoint of cfg, same index */
    struct auth_ctx *auth;          /* built from cfg, this worker's own */
    struct metrics_worker *metrics; /* this worker's counters */
    struct listener_rt *listeners;
    int n_listeners;
    struct upool *pools;
    /* client connections (conn.c) and requests (request.c, exchange.c) */
    TAILQ_HEAD(, session) sessions;
    TAILQ_HEAD(, request) waiters;  /* waiting for a concurrency slot, FIFO */
    struct event *wait_poll;        /* slots free in other workers too */
    bool dispatching, dispatch_again;
    struct request *free_reqs;      /* recycled request structs */
    int n_free_reqs;
    struct evbuffer *free_bufs[512]; /* empty buffers, recycled (bufpool.c) */
    const struct timeval *timeouts[8];  /* common-timeout queues (worker_arm) */
    int timeout_ms[8], n_timeouts;
    int n_free_bufs;
    int n_sessions;
    struct session *gc_sessions;
    struct event *session_gc_ev;
    /* upstreams and shadows (upstream.c, shadow.c) */
    struct upconn *gc_upconns;
    struct event *upstream_gc_ev;
    struct upconn *h2_spares;       /* ended HTTP/2 upstream streams, reused */
    int n_h2_spares;
    TAILQ_HEAD(, shadow) shadows;
    int n_shadows;
    uint64_t cmp_retained;          /* response bytes held for comparisons (compare.c) */
    bool draining;
    /* the mailbox from the main thread */
    struct event *mail_ev;
    pthread_mutex_t mail_lock;      /* main thread -> worker messages only */
    struct config *mail_cfg;
    struct worker_listener *mail_listeners;     /* this worker's, malloc'ed */
    int mail_n_listeners;
    bool mail_drain;
    bool mail_stop;
    /* accounting (account.c) */
    struct evbuffer *access;        /* buffered access-log lines */
    time_t log_sec;                 /* the second log_date holds */
    char log_date[24];
    struct event *log_ev;
    struct evbuffer *scratch;       /* composing heads, then moved in one go */
    struct evbuffer *scratch2;
    uint64_t req_seq;
    uint64_t id_prefix;
};


extern struct worker *gw_workers;
/* A worker's loop state on base with cfg (taken over), without threads,
 * listeners or a mailbox: what workers_start() does for each worker, and
 * what the unit tests of the request's life build. */
void worker_setup(struct worker *w, int id, struct event_base *base, struct config *cfg);

#endif
