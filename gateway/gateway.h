/*
 * gateway — the data plane: workers, client sessions, upstream connections,
 * TLS, logs and the admin listener. This header is shared by the gateway's
 * own files only; nothing outside gateway/ includes it.
 *
 * Threads: the main thread owns signals, the admin listener and config
 * publishing; each worker thread owns one event_base, its listeners, its
 * sessions and its upstream pools. Nothing on the request path takes a lock.
 */
#ifndef SLUICE_GATEWAY_H
#define SLUICE_GATEWAY_H

#include <http_parser.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>

#include "config/config.h"
#include "routing/routing.h"
#include "auth/auth.h"
#include "metrics/metrics.h"

struct event_base;
struct event;
struct bufferevent;
struct evconnlistener;
struct evbuffer;
struct ssl_ctx_st;
struct ssl_st;

#define GW_HIGH_WATER (256 * 1024)  /* stop reading the other side above this */
#define GW_MAX_HEADERS 128

/* ---- header storage shared by both parsers (http.c) -------------------- */

struct hdr {
    uint32_t name_off, name_len;
    uint32_t val_off, val_len;
};

/* What a header is to a proxy; computed once per message by head_classify(). */
enum hclass {
    HC_OTHER = 0,
    HC_HOP,                         /* hop-by-hop, or named by Connection */
    HC_HOST, HC_AUTHORIZATION, HC_CONTENT_LENGTH, HC_EXPECT, HC_XFF, HC_XFP,
    HC_SLUICE_VERSION, HC_SLUICE_GROUP, HC_SLUICE_FAILOVER, HC_REQUEST_ID, HC_COOKIE,
    HC_COUNT,
};

/* Raw request or response head: url/status text and headers, as offsets
 * into one growing buffer owned by the message. */
struct head {
    char *buf;
    size_t len, cap;
    uint32_t url_off, url_len;      /* request URL or response reason */
    struct hdr h[GW_MAX_HEADERS];
    int n;
    bool in_value;                  /* last callback was a header value */
    bool too_many;
    uint8_t cls[GW_MAX_HEADERS];    /* enum hclass of each header */
    int16_t first[HC_COUNT];        /* first header of each class, -1 if none */
    int16_t count[HC_COUNT];
};

void head_reset(struct head *hd);
void head_free(struct head *hd);
int head_url(struct head *hd, const char *at, size_t len);
int head_field(struct head *hd, const char *at, size_t len);
int head_value(struct head *hd, const char *at, size_t len);
/* Header i's name or value as a pointer into the buffer. */
#define HD_NAME(hd, i) ((hd)->buf + (hd)->h[i].name_off)
#define HD_VAL(hd, i) ((hd)->buf + (hd)->h[i].val_off)
bool head_name_is(const struct head *hd, int i, const char *lower);
/* Every header name is an RFC 9110 token (no spaces before the colon). */
bool head_names_valid(const struct head *hd);
/* Fill cls, first and count (after the head is complete). */
void head_classify(struct head *hd);

/* Small writers that avoid printf on the request path. */
#define BUF_LIT(b, lit) evbuffer_add((b), (lit), sizeof(lit) - 1)
void buf_str(struct evbuffer *b, const char *str);
void buf_u64(struct evbuffer *b, uint64_t n);
void buf_chunk_size(struct evbuffer *b, size_t n);     /* "%zx\r\n" */
/*
 * Send what is queued on a bufferevent. Plain sockets keep EV_WRITE off and
 * are written directly (direct = true); EV_WRITE is armed only when the
 * kernel would not take everything. TLS bufferevents pass direct = false.
 */
void gw_flush(struct bufferevent *bev, bool direct);
/*
 * Plain sockets are read through an event of our own with gw_read(), one
 * read(2) into the bufferevent's input; returns the bytes read or one of
 * these. TLS bufferevents read through libevent.
 */
#define GW_READ_SIZE 16384
#define GW_READ_AGAIN (-1)
#define GW_READ_EOF 0
#define GW_READ_ERROR (-2)
int gw_read(struct bufferevent *bev);

/* Append s to b as a JSON string body (no quotes) with escaping. */
void json_escape_add(struct evbuffer *b, const char *s, size_t len);

/* ---- logs (log.c) -------------------------------------------------------- */

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_init(void);
void log_set_level(const char *level);
/* One JSON event line on stderr: {"time","level","event",...fields}.
 * fmt is either NULL or a printf format of already-encoded JSON members
 * (",\"k\":v..."); every interpolated text goes through log_json():
 *   log_event(LOG_WARN, "x", ",\"upstream\":\"%s\"", log_json(addr));
 * A line that is not valid JSON all the same (a caller that forgot) is
 * written as {"time","level","event","unescaped":"<the fields as text>"}. */
void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* s escaped for use inside a JSON string ("" for NULL): quotes, backslashes
 * and control characters escaped, invalid UTF-8 as U+FFFD, cut (at a
 * character boundary) to at most LOG_JSON_MAX bytes of output. The result
 * lives in a small per-thread ring of LOG_JSON_RING buffers: valid until
 * that many more calls on the same thread, so one log_event() call may use
 * up to LOG_JSON_RING of them. */
#define LOG_JSON_MAX 1023
#define LOG_JSON_RING 8
const char *log_json(const char *s);
/* The same for len bytes of s (need not be NUL-ended). */
const char *log_jsonn(const char *s, size_t len);
/* Open (or reopen, for SIGUSR1) the access log target; 0 or -1. */
int log_access_open(const char *target, char *err, size_t errlen);
int log_access_reopen(void);
bool log_access_enabled(void);
/* Write a buffer of whole lines to the access log. */
void log_access_write(struct evbuffer *b);
void log_time_iso(char *out, size_t len);

/* ---- TLS (tls.c) --------------------------------------------------------- */

/* A server context for a listener: TLS 1.2-1.3, modern ciphers, ALPN
 * http/1.1, session cache and tickets. NULL with a reason naming the file. */
struct ssl_ctx_st *tls_server_ctx(const struct cfg_listener *l, char *err,
                                  size_t errlen);
void tls_ctx_free(struct ssl_ctx_st *ctx);

struct session;
/* The TLS transport of a client session (SSL over the session's socket). */
int tls_session_start(struct session *s, struct ssl_ctx_st *ctx, int fd);
void tls_session_end(struct session *s);
/* Like gw_read(): bytes read into the input, or GW_READ_*. */
int tls_read(struct session *s);
/* Write what is queued; arms s->wev when the socket is full. 0 or -1. */
int tls_flush(struct session *s);

/* ---- listeners (listen.c) ---------------------------------------------- */

/* A bound, listening, non-blocking TCP socket; with reuseport, one of a
 * SO_REUSEPORT group (one per worker). Without it, binding fails when
 * anything else holds the address: used to probe before a start. */
int listen_socket(const char *host, int port, bool reuseport, char *err,
                  size_t errlen);

/* ---- upstream pools (upstream.c) ----------------------------------------- */

struct worker;
struct session;
struct shadow;
struct ep_state;

struct upool {
    char *address;
    struct sockaddr_storage sa;
    socklen_t salen;
    bool resolved;
    bool is_unix;
    int active;                     /* requests in flight on this worker */
    struct route_shared *shared;    /* in flight across workers, health */
    struct route_eject eject;       /* passive ejection, this worker's view */
    TAILQ_HEAD(, upconn) idle;
    int n_idle;
    struct upool *next;             /* worker's list */
};

struct upconn {
    struct worker *w;
    struct upool *pool;
    struct bufferevent *bev;
    struct event *rev;              /* reads (see gw_read) */
    struct session *s;              /* owner while a request uses it, or */
    struct shadow *sh;              /* owner while a shadow copy uses it */
    bool busy;                      /* owned (not idle in the pool) */
    http_parser parser;
    struct head head;
    bool connected;
    bool reused;
    bool closed;
    bool skip_message;              /* a 1xx response being dropped */
    bool response_done;
    bool keepalive;                 /* the response allows reuse */
    bool paused;                    /* client output is full */
    bool in_idle;
    TAILQ_ENTRY(upconn) link;       /* pool idle list */
    struct upconn *gc_next;
};

struct upool *upool_get(struct worker *w, const struct cfg_upstream *u);
/* An idle pooled connection or a new one being connected, owned by s. */
struct upconn *upconn_acquire(struct worker *w, struct upool *p,
                              struct session *s);
/* Give a finished connection back to its pool (or close it). */
void upconn_release(struct upconn *u, bool reusable);
void upconn_close(struct upconn *u);
/* Backpressure from the client side: stop / restart reading the response. */
void upconn_pause(struct upconn *u);
void upconn_resume(struct upconn *u);
void upconn_free(struct upconn *u);
void upool_free_all(struct worker *w);

/* ---- sessions (session.c) ------------------------------------------------ */

enum sess_state {
    SS_IDLE,            /* waiting for the first byte of a request */
    SS_HEAD,            /* reading request headers */
    SS_BODY,            /* streaming the request body */
    SS_WAIT,            /* request read, waiting for the response to end */
    SS_CLOSING,         /* flushing output, then close */
};

struct request {
    struct config *cfg;             /* snapshot this request runs on */
    const struct cfg_endpoint *ep;
    int version;
    bool pinned;
    struct upool *pool;
    uint64_t body_in;               /* request body bytes received */
    uint64_t bytes_in;              /* all request bytes */
    uint64_t bytes_out;             /* all response bytes to the client */
    bool chunked_up;                /* request body is re-chunked upstream */
    bool complete;                  /* request fully read */
    bool discard;                   /* body read and dropped (error sent) */
    bool response_started;          /* response head sent to the client */
    bool response_done;             /* response fully queued to the client */
    bool expect_continue;           /* client waits for 100 Continue */
    bool response_chunked;          /* response re-chunked to the client */
    bool response_close;            /* close the client after the response */
    bool failover;                  /* served by the default instead */
    bool retried;                   /* already moved to another upstream once */
    struct http_parser_url url;     /* the parsed request target */
    struct route_shared *slot;      /* concurrency slot held, if any */
    struct metrics_slot *mslot;     /* where it is counted */
    bool counted;                   /* ended: counted and logged once */
    bool head_method;
    int status;
    const char *fail_reason;
    struct timespec t_start;        /* end of request headers */
    char id[64];
    const char *upstream_addr;
};

struct session {
    struct worker *w;
    struct bufferevent *bev;
    struct event *rev;              /* reads (see gw_read, tls_read) */
    struct event *wev;              /* TLS: socket writable again */
    struct ssl_st *ssl;             /* TLS transport, NULL for plain */
    bool tls_ready;                 /* handshake done */
    bool tls;
    char peer[64];
    http_parser parser;
    struct head head;
    enum sess_state state;
    struct request req;
    struct upconn *up;
    struct event *timer;            /* header/body deadline or idle timeout */
    struct event *up_timer;         /* scoring timeout */
    bool keep_alive;                /* client wants the connection kept */
    bool read_paused;               /* backpressure from the upstream */
    bool waiting;                   /* in the worker's queue for a slot */
    /* The credential this connection last authenticated with: the same
     * bytes again (compared in constant time) on the same endpoint and
     * config snapshot need no new check. */
    char *auth_cred;
    uint32_t auth_cred_len;
    uint64_t auth_gen;              /* config generation it was checked on */
    int auth_ep;                    /* endpoint index in that generation */
    time_t auth_until;              /* 0: until the config changes */
    struct shadow *shadows[CFG_MAX_VERSIONS];   /* copies still being fed */
    int n_shadows;
    TAILQ_ENTRY(session) wait_link;
    bool closed;
    TAILQ_ENTRY(session) link;
    struct session *gc_next;
};

void session_new(struct worker *w, int fd, struct sockaddr *sa, int salen,
                 struct ssl_ctx_st *tls);
void session_close(struct session *s, const char *why);
void session_free(struct session *s);
/* Callbacks from upstream.c. */
void session_upstream_head(struct session *s, struct upconn *u);
void session_upstream_body(struct session *s, const char *at, size_t len);
void session_upstream_done(struct session *s, struct upconn *u, bool reusable);
/* conn_error: a connect failure or reset (counts toward ejection). */
void session_upstream_failed(struct session *s, struct upconn *u,
                             const char *why, bool conn_error);
/* Choose an upstream of version vi of ep (from snapshot cfg): healthy,
 * under its concurrency limit, fewest in flight here; not avoid. On
 * PICK_OK a slot of *out's shared counter is taken. */
enum pick { PICK_OK, PICK_NO_HEALTHY, PICK_AT_LIMIT };
enum pick gw_pick(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep,
                  int vi, const struct upool *avoid, struct upool **out);
/* The request head for version v, tagged with group. */
void gw_request_head(struct session *s, struct evbuffer *out, const struct cfg_version *v,
                     const char *group);
/* Give queued requests the slots that are free now. */
void session_dispatch_waiters(struct worker *w);
/* Keep polling for slots while requests wait (slots free in other workers). */
void session_poll_waiters(struct worker *w);
void session_upstream_drained(struct session *s);
/* Send what is queued to the client and the upstream. */
void session_flush(struct session *s);
/* Drain: close idle sessions now; the rest close after their response. */
void session_drain_all(struct worker *w);

/* ---- shadow traffic (shadow.c) ------------------------------------------------ */

#define SHADOW_MAX_BEHIND (1024 * 1024)    /* a mirror this far behind is dropped */

/* A copy of a live request sent to a mirror version; its answer is read
 * and dropped. It never holds up the client's request: it is fed what the
 * client sends, is abandoned if it falls behind or the client goes away
 * mid-request, and otherwise finishes on its own. */
struct shadow {
    struct worker *w;
    struct session *s;              /* while the request streams; then NULL */
    struct upconn *u;
    struct config *cfg;
    const struct cfg_endpoint *ep;
    int version;
    struct route_shared *slot;
    struct event *timer;            /* scoring_timeout_ms */
    struct timespec t_start;
    bool chunked;
    bool head_method;
    int answer;                     /* status of the mirror's response head */
    int status;                     /* the outcome once it ends; 0: not counted */
    TAILQ_ENTRY(shadow) link;
};

/* Start the copies this request gets (mirror versions, by their share). */
void shadows_start(struct session *s, struct ep_state *es);
/* Feed them the request's body bytes, then its end. */
void shadows_body(struct session *s, const char *at, size_t len);
void shadows_complete(struct session *s);
void shadows_flush(struct session *s);
/* The session ends: complete copies go on alone, incomplete ones stop. */
void shadows_detach(struct session *s);
void shadows_free_all(struct worker *w);
/* From upstream.c. */
int shadow_head(struct shadow *sh, struct upconn *u);
void shadow_done(struct shadow *sh, struct upconn *u, bool reusable);
void shadow_failed(struct shadow *sh, struct upconn *u, const char *why, bool conn_error);

/* ---- workers (worker.c) ---------------------------------------------------- */

struct listener_rt {
    struct evconnlistener *ev;
    int fd;
    struct ssl_ctx_st *tls;         /* the worker's reference; NULL for plain */
    struct worker *w;
};

/* One listening socket of one worker, as the main thread hands it over. */
struct worker_listener {
    int fd;
    struct ssl_ctx_st *ctx;
};

struct ep_state {
    struct route_split split;
    struct upool *pools[CFG_MAX_VERSIONS][CFG_MAX_UPSTREAMS];
    struct metrics_slot *mslot[CFG_MAX_VERSIONS];   /* live (or shadow, for mirrors) */
    int mirror_acc[CFG_MAX_VERSIONS];
};

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
    TAILQ_HEAD(, session) sessions;
    TAILQ_HEAD(, session) waiters;  /* waiting for a concurrency slot, FIFO */
    struct event *wait_poll;        /* retries waiters: slots free in other workers too */
    TAILQ_HEAD(, shadow) shadows;
    int n_sessions;
    bool draining;
    struct event *gc_ev;
    struct session *gc_sessions;
    struct upconn *gc_upconns;
    struct event *mail_ev;
    pthread_mutex_t mail_lock;      /* main thread -> worker messages only */
    struct config *mail_cfg;
    struct worker_listener *mail_listeners;     /* this worker's, malloc'ed */
    int mail_n_listeners;
    bool mail_drain;
    bool mail_stop;
    struct evbuffer *access;        /* buffered access-log lines */
    time_t log_sec;                 /* the second log_date holds */
    char log_date[24];
    struct evbuffer *scratch;       /* composing heads, then moved in one go */
    struct event *log_ev;
    uint64_t req_seq;
    uint64_t id_prefix;
};

extern int gw_n_workers;
extern struct worker *gw_workers;
extern int gw_open_connections;     /* atomic, all workers */

/* table holds n workers x n_listeners entries, worker-major. */
int workers_start(struct config *cfg, int n, const struct worker_listener *table,
                  int n_listeners);
void workers_publish(struct config *cfg, const struct worker_listener *table,
                     int n_listeners);
void workers_drain(void);
void workers_stop(void);
/* Wait for the workers to finish draining, at most deadline_ms. */
void workers_join(int deadline_ms);
void workers_free(void);
void worker_gc(struct worker *w);
/* A request ended: count it and write its access-log line. */
void worker_request_done(struct worker *w, struct session *s);
/* A shadow copy ended. */
void worker_shadow_done(struct worker *w, const struct shadow *sh);
/* The workers' counters, for the collector. */
struct metrics_worker **workers_metrics(void);
uint64_t now_us(void);

/* ---- control plane (control.c) --------------------------------------------- */

struct json_t;
/* Bind the listeners of cfg and start the workers; cfg becomes current. */
int control_start(struct config *cfg, int workers, char *err, size_t errlen);
/* Load a file, generating and persisting missing keys first. */
struct config *control_load(const char *path, struct cfg_errors *errs);
/* Re-read the config file and apply it; -1 with the reasons. */
int control_reload(char *err, size_t errlen, struct cfg_errors *errs);
/* Validate, persist and apply an edited document (admin changes): 0, 400
 * (errs filled), or 500 (err: the file could not be written). */
int control_commit(struct json_t *doc, struct cfg_errors *errs, char *err,
                   size_t errlen);
int control_apply(struct config *cfg, char *err, size_t errlen);
struct config *control_current(void);
void control_stop(void);
/* The metrics writer and its backlog (main thread). */
void control_metrics_start(struct event_base *base);
struct metrics_redis *control_metrics(void);
struct metrics_backlog *control_backlog(void);

/* ---- active health checks (health.c), main thread --------------------------- */

void health_init(struct event_base *base);
/* Check the upstreams of cfg's versions that have a health_check. */
void health_apply(const struct config *cfg);
void health_stop(void);

/* ---- admin (admin.c) ------------------------------------------------------- */

/* Listen on cfg's admin address; requests are answered from the control
 * plane's current generation (control_current()). */
int admin_start(struct event_base *base, struct config *cfg, char *err,
                size_t errlen);
void admin_set_draining(void);
void admin_stop(void);

#endif
