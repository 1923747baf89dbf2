/*
 * metrics — counting requests per version and writing them to Redis
 * (SPEC §4), off the request path.
 *
 * Each worker counts into its own table (metrics_record: no lock, no
 * allocation, no system call). Counters live in a ring of per-minute
 * cells per (endpoint, version, group) slot; the main thread's collector
 * reads them with atomic loads and takes the difference from what it saw
 * last, so workers never wait for it. Deltas are merged into a backlog and
 * written to Redis in batches by one Lua script per flush, each batch with
 * a per-instance sequence number that the script checks, so a batch whose
 * reply was lost and that is sent again is applied once.
 *
 * hiredis is wrapped in redis.c; nothing else sees it.
 */
#ifndef SLUICE_METRICS_H
#define SLUICE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

struct event_base;
struct json_t;

/* Counter fields, in SPEC §4's order. */
enum metric {
    M_REQUESTS, M_2XX, M_3XX, M_4XX, M_5XX, M_UPSTREAM_ERRORS, M_TIMEOUTS,
    M_OVERLOADED, M_FAILOVER, M_PINNED, M_SHADOW_DROPPED, M_BYTES_IN, M_BYTES_OUT, M_LATENCY_SUM,
    M_LAT_FIRST,                    /* 15 histogram buckets follow */
    M_COUNT = M_LAT_FIRST + 15,
};
#define METRICS_BUCKETS 15
extern const char *const metrics_field_names[M_COUNT];
/* Upper bounds of the latency buckets in microseconds; the last is +inf. */
extern const uint64_t metrics_bucket_le[METRICS_BUCKETS];
/* The one bucket that holds a latency. */
int metrics_bucket(uint64_t latency_us);

enum rejected_kind { REJ_UNAUTHORIZED, REJ_NOT_FOUND, REJ_BAD_REQUEST, REJ_TOO_LARGE,
                     REJ_TIMEOUT, REJ_COUNT };
extern const char *const metrics_rejected_names[REJ_COUNT];

/* One request's outcome. */
struct metrics_sample {
    int status;
    uint64_t latency_us;
    uint64_t bytes_in, bytes_out;
    bool upstream_error, timeout, overloaded, failover, pinned;
    bool shadow_dropped;            /* a shadow copy not sent: counts only that */
};

/* ---- per worker (counters.c) ------------------------------------------ */

struct metrics_worker;
struct metrics_slot;

struct metrics_worker *metrics_worker_new(void);
void metrics_worker_free(struct metrics_worker *mw);
/* The slot of (endpoint, version, group); created on first use. Call on
 * the worker's thread (config changes), not per request. */
struct metrics_slot *metrics_slot(struct metrics_worker *mw, const char *ep,
                                  const char *version, const char *group);
/* Count one request; minute is unix time / 60. */
void metrics_record(struct metrics_slot *slot, uint32_t minute,
                    const struct metrics_sample *s);
void metrics_reject(struct metrics_worker *mw, enum rejected_kind k);

/* ---- collecting and the backlog (counters.c) -------------------------- */

/* The main thread's view: deltas gathered from workers, waiting for Redis,
 * and cumulative totals of this instance (for /metrics). */
struct metrics_backlog;

struct metrics_backlog *metrics_backlog_new(size_t max_minute_entries);
void metrics_backlog_free(struct metrics_backlog *b);
/* Move what the workers counted since the last call into the backlog. */
void metrics_collect(struct metrics_backlog *b, struct metrics_worker **workers, int n);
/* Entries waiting to be written. */
size_t metrics_backlog_size(const struct metrics_backlog *b);
/* Add a delta (the collector; tests). to_totals also counts it in the
 * instance totals that /metrics shows. */
void metrics_backlog_add(struct metrics_backlog *b, int series, uint32_t minute,
                         const uint64_t *delta, bool to_totals);
/* Hand every pending entry to fn once and empty the backlog; the pending
 * rejected counts are copied to rejected[REJ_COUNT]. */
void metrics_backlog_drain(struct metrics_backlog *b,
                           void (*fn)(void *arg, const char *ep, const char *version,
                                      const char *group, uint32_t minute, const uint64_t *v),
                           void *arg, uint64_t *rejected);
/* Minute buckets folded into totals because the backlog was full. */
uint64_t metrics_backlog_merged(const struct metrics_backlog *b);
/* Prometheus text for this instance's totals into a malloc'ed string. */
char *metrics_prometheus(const struct metrics_backlog *b);

/* ---- statistics (stats.c) -------------------------------------------- */

/* Quantile q (0..1) of a histogram of METRICS_BUCKETS counts, in ms,
 * linear within the bucket; -1 without data. */
double metrics_quantile_ms(const uint64_t *buckets, double q);

struct metrics_compare {
    double diff;                /* treatment error rate - control error rate */
    double lo, hi;              /* 95 % confidence interval of diff */
    const char *verdict;        /* better, worse, no significant difference, too little data */
};
/* Two-proportion comparison of error rates (normal approximation). */
void metrics_compare_errors(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t,
                            struct metrics_compare *out);
#define METRICS_MIN_SAMPLES 100

/* ---- the Redis writer (redis.c) --------------------------------------- */

struct metrics_redis;

struct metrics_redis *metrics_redis_new(struct event_base *base, struct metrics_backlog *b,
                                        const char *instance_id);
/* Settings and endpoint descriptions from a new config generation. */
void metrics_redis_configure(struct metrics_redis *r, const struct config *cfg);
/* Where the flush timer collects from. */
void metrics_redis_set_sources(struct metrics_redis *r, struct metrics_worker **workers, int n);
/* Collect and send what is pending now (the flush timer calls it). */
void metrics_redis_flush(struct metrics_redis *r);
/* Flush and run the loop up to timeout_ms until Redis has taken everything. */
bool metrics_redis_final_flush(struct metrics_redis *r, int timeout_ms);
bool metrics_redis_connected(const struct metrics_redis *r);
void metrics_redis_free(struct metrics_redis *r);

/* The comparison for endpoint ep over the last minutes, read from Redis
 * (SPEC §5 metrics): JSON, or NULL with a reason. */
struct json_t *metrics_redis_query(struct metrics_redis *r, const struct cfg_endpoint *ep,
                                   int minutes, char *err, size_t errlen);

#endif
