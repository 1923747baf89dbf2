/*
 * gateway — the data plane's public face: what the control plane (control/)
 * and the tools may call. The workers, their client connections, upstream
 * pools, proxying and shadow copies are the gateway's own (gateway/internal.h).
 *
 * Threads: the main thread (control/) owns signals, the admin listener and
 * config publishing; each worker thread owns one event_base, its listeners,
 * its client connections and its upstream pools. The control plane hands
 * workers a new config snapshot with workers_publish(); nothing on the
 * request path takes a lock.
 */
#ifndef SLUICE_GATEWAY_H
#define SLUICE_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "config/config.h"
#include "metrics/metrics.h"

struct evbuffer;
struct ssl_ctx_st;

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

/* ---- listeners (listen.c) ---------------------------------------------- */

/* A bound, listening, non-blocking TCP socket; with reuseport, one of a
 * SO_REUSEPORT group (one per worker). Without it, binding fails when
 * anything else holds the address: used to probe before a start. */
int listen_socket(const char *host, int port, bool reuseport, char *err,
                  size_t errlen);

/* ---- TLS server contexts (tls.c) -------------------------------------- */

/* A server context for a listener: TLS 1.2-1.3, modern ciphers, ALPN
 * http/1.1, session cache and tickets. NULL with a reason naming the file. */
struct ssl_ctx_st *tls_server_ctx(const struct cfg_listener *l, char *err,
                                  size_t errlen);
void tls_ctx_free(struct ssl_ctx_st *ctx);

/* ---- workers (worker.c) ---------------------------------------------------- */

/* One listening socket of one worker, as the main thread hands it over. */
struct worker_listener {
    int fd;
    struct ssl_ctx_st *ctx;
    bool http2;                     /* HTTP/2 offered (ALPN h2, or prior knowledge) */
};

extern int gw_n_workers;
extern int gw_open_connections;     /* atomic, all workers */
extern int gw_open_fds;             /* atomic: client and upstream sockets */
extern int gw_fd_limit;             /* RLIMIT_NOFILE at start */

/* table holds n workers x n_listeners entries, worker-major. */
int workers_start(struct config *cfg, int n, const struct worker_listener *table,
                  int n_listeners);
void workers_publish(struct config *cfg, const struct worker_listener *table,
                     int n_listeners);
void workers_drain(void);
/* Whether every worker's loop has returned (drained or stopped). */
bool workers_all_ended(void);
void workers_stop(void);
/* Wait for the workers to finish draining, at most deadline_ms. */
void workers_join(int deadline_ms);
void workers_free(void);
/* The span rings of the tracing exporter (SPEC §10): ring i is worker i's
 * (copied; set before workers_start(), NULL after the workers ended). */
struct tracing_ring;
void workers_set_trace_rings(struct tracing_ring *const *rings, int n);
/* The workers' counters, for the collector. */
struct metrics_worker **workers_metrics(void);
uint64_t now_us(void);

/* Small blocks from per-thread free lists (mem.c), for libevent and
 * nghttp2. gw_mem_init() before any other libevent call: libevent's
 * allocator from then on. gw_mem_thread_end() as a thread ends: its lists
 * back to malloc. */
void gw_mem_init(void);
void gw_mem_thread_end(void);
void *gw_malloc(size_t size);
void *gw_realloc(void *ptr, size_t size);
void gw_free(void *ptr);
bool gw_mem_pooled(void);           /* false under AddressSanitizer */

#endif
