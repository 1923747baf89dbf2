/*
 * metrics — counting requests per version and writing them to Redis
 * (SPEC §4), off the request path.
 *
 * Each worker counts into its own table (metrics_record: no lock, no
 * system call, and no allocation but a version's first pinned request on
 * the worker, which makes its pinned companion slot). Counters live in a ring of per-minute
 * cells per (endpoint, version, group) slot; the main thread's collector
 * reads them with atomic loads and takes the difference from what it saw
 * last, so workers never wait for it. Deltas are merged into a backlog and
 * written to Redis in batches by one Lua script per flush, each batch with
 * a per-instance sequence number that the script checks, so a batch whose
 * reply was lost and that is sent again is applied once.
 *
 * hiredis is wrapped in redis.c, query.c and primary.c; nothing else sees it.
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
    /* shadow comparison (SPEC §7), on the mirror version's counters */
    M_CMP_TOTAL, M_CMP_EQUAL, M_CMP_DIFFERENT, M_CMP_STATUS_MISMATCH, M_CMP_UNKNOWN,
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

/* HTTP/2 floods a client connection was ended for (SPEC §9), on /metrics as
 * sluice_h2_floods_total{kind}: more stream resets in a second than
 * h2_max_concurrent_streams, CONTINUATION frames after one HEADERS, PING,
 * SETTINGS or empty DATA frames in a second. */
enum h2_flood_kind { H2F_RAPID_RESET, H2F_CONTINUATION, H2F_PING, H2F_SETTINGS, H2F_EMPTY,
                     H2F_COUNT };
extern const char *const metrics_h2_flood_names[H2F_COUNT];

/* One request's outcome. */
struct metrics_sample {
    int status;
    uint64_t latency_us;
    uint64_t bytes_in, bytes_out;
    bool upstream_error, timeout, overloaded, failover, pinned;
    bool shadow_dropped;            /* a shadow copy not sent: counts only that */
    /* A comparison: counts only cmp_total and this one of M_CMP_EQUAL..
     * M_CMP_UNKNOWN (0: not a comparison). */
    int cmp_field;
};

/* ---- per worker (counters.c) ------------------------------------------ */

struct metrics_worker;
struct metrics_slot;

struct metrics_worker *metrics_worker_new(void);
void metrics_worker_free(struct metrics_worker *mw);
/* The slot of (endpoint, version, group); created on first use. Call on
 * the worker's thread (config changes), not per request. A pinned request
 * counts in its slot and again in the slot's companion of group
 * METRICS_PINNED_GROUP (made on the worker's thread by the version's first
 * pinned request there), whose counts go to sluice:{EP}:pinned:VERSION and
 * sluice:{EP}:pinnedminute:VERSION:MINUTE (SPEC §4), never to a group. */
#define METRICS_PINNED_GROUP "pinned"
struct metrics_slot *metrics_slot(struct metrics_worker *mw, const char *ep,
                                  const char *version, const char *group);
/* Count one request; minute is unix time / 60. */
void metrics_record(struct metrics_slot *slot, uint32_t minute,
                    const struct metrics_sample *s);
void metrics_reject(struct metrics_worker *mw, enum rejected_kind k);
/* A client connection ended for a flood of kind k. */
void metrics_h2_flood(struct metrics_worker *mw, enum h2_flood_kind k);

/* A disagreement sample (SPEC §7), JSON text, for sluice:{ep}:diffs:version
 * trimmed to keep entries. Each worker keeps the latest METRICS_DIFF_RING
 * until the collector takes them (a short per-worker lock, taken only when
 * a sample is kept, never for counting). */
#define METRICS_DIFF_RING 64
void metrics_diff_push(struct metrics_worker *mw, const char *ep, const char *version,
                       int keep, const char *json_text);
/* Hand each waiting sample to fn (oldest first) and forget it. */
void metrics_diff_take(struct metrics_worker *mw,
                       void (*fn)(void *arg, const char *ep, const char *version, int keep,
                                  const char *text),
                       void *arg);

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
/* Routed requests (requests minus pinned, shadow copies left out) of a
 * version counted by this instance since it started. */
uint64_t metrics_backlog_routed(const struct metrics_backlog *b, const char *ep,
                                const char *version);
/* A rejection with its endpoint when one was named (NULL: none); counted
 * in sluice:rejected like metrics_reject(), and per endpoint on /metrics. */
void metrics_reject_ep(struct metrics_worker *mw, const char *ep, enum rejected_kind k);

/* ---- the process (process.c) ----------------------------------------- */

/* process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds and
 * process_start_time_seconds as Prometheus text (malloc'ed), from /proc/self. */
char *metrics_process_prometheus(void);

/* ---- statistics (stats.c) -------------------------------------------- */

/* Quantile q (0..1) of a histogram of METRICS_BUCKETS counts, in ms,
 * linear within the bucket; -1 without data. */
double metrics_quantile_ms(const uint64_t *buckets, double q);

struct metrics_compare {
    double diff;                /* treatment error rate - control error rate */
    double lo, hi;              /* 95 % confidence interval of diff */
    const char *verdict;        /* better, worse, no significant difference, too little data */
};
/* The 95 % Wilson interval of eq successes in n (n > 0). */
void metrics_wilson(uint64_t eq, uint64_t n, double *lo, double *hi);
/* Two-proportion comparison of error rates (normal approximation). */
void metrics_compare_errors(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t,
                            struct metrics_compare *out);
#define METRICS_MIN_SAMPLES 100
/* The interval both use: (treatment - control) error rate +- z standard
 * errors (Wald, unpooled). */
void metrics_error_interval(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t, double z,
                            double *diff, double *lo, double *hi);
/* z with P(Z > z) = tail for a standard normal Z (0 < tail < 1). */
double metrics_normal_quantile(double tail);

/* ---- the rollout gate (stats.c; SPEC §8) --------------------------------
 * A pure function of one step's numbers: the driver reads both sides' counters
 * for the step's window from Redis (the whole fleet) and asks for a verdict.
 *
 * Error rates: the step fails when the lower bound of an interval of
 * (version - control) error rate exceeds max_error_rate_increase. The
 * interval is 95 % over the whole rollout, not per look: alpha is spent
 * across the looks (stats.c says how and why), so checking it at every step
 * rolls back a version that is within the allowed increase, for its error
 * rate, at most 2.5 % of the time over the whole rollout (one tail of a
 * two-sided 95 %; normal approximation within each window). */

enum metrics_gate_verdict {
    METRICS_GATE_PASS,          /* go to the next step */
    METRICS_GATE_HOLD,          /* ask again later: the step is not over or has too little data */
    METRICS_GATE_FAIL,          /* roll back */
};

struct metrics_gate_side {
    uint64_t requests;
    uint64_t errors;                    /* status_5xx (upstream errors included) */
    uint64_t lat[METRICS_BUCKETS];      /* lat_le_* counts, one bucket per request */
};

struct metrics_gate_params {            /* the plan's "gate" */
    uint64_t min_requests;              /* per side, and comparisons for agreement */
    double max_error_rate_increase;     /* a fraction: 0.01 is one percentage point */
    double max_p99_ratio;               /* version p99 / control p99; 0: not checked */
    double min_agreement;               /* equal / compared, for a mirrored version */
};

struct metrics_gate_agreement {         /* shadow comparison counts (SPEC §7) */
    uint64_t compared;                  /* cmp_total - cmp_unknown */
    uint64_t equal;                     /* cmp_equal */
};

struct metrics_gate_input {
    struct metrics_gate_side control, version;  /* over this step's window only */
    /* Non-NULL: the check a mirrored version passes before its first live
     * step. Only agreement is judged then (the version serves no live
     * traffic yet) and no alpha is spent. */
    const struct metrics_gate_agreement *agreement;
    int look;                           /* 1 for the first step's gate, ... */
    int looks;                          /* the plan's number of steps */
    double elapsed_s;                   /* time since the step started */
    double step_s;                      /* the plan's step_s */
};

struct metrics_gate_result {
    enum metrics_gate_verdict verdict;
    char reason[200];
    uint64_t n_control, n_version;
    double err_control, err_version;    /* fractions; -1 without requests */
    double diff, lo, hi;                /* version - control error rate and its interval */
    double alpha;                       /* two-sided level spent on this look */
    double z;                           /* half-width of the interval in standard errors */
    double p99_control_ms, p99_version_ms;  /* -1 without data */
    double p99_ratio;                   /* -1 when either p99 is missing */
    bool has_agreement;
    uint64_t compared, equal;
    double agreement, agreement_lo, agreement_hi;   /* rate and its 95 % Wilson interval */
};

#define METRICS_GATE_ALPHA 0.05         /* for the whole rollout, two-sided */
#define METRICS_GATE_HOLD_STEPS 3       /* too little data fails after 3 x step_s */

/* Fill a side from a counter array in enum metric order (M_COUNT values). */
void metrics_gate_side_from(struct metrics_gate_side *s, const uint64_t *counters);
/* The level spent on look (1-based) of looks planned; the sum over every
 * look, planned or not, is at most METRICS_GATE_ALPHA. */
double metrics_gate_alpha(int look, int looks);
void metrics_gate(const struct metrics_gate_params *p, const struct metrics_gate_input *in,
                  struct metrics_gate_result *out);
const char *metrics_gate_verdict_name(enum metrics_gate_verdict v);

/* ---- where the Redis primary is (primary.c) ----------------------------
 * redis.address, or the primary the sentinels name (redis.sentinels +
 * redis.master_name), followed through failovers. Main thread only. */

/* Called after every answer about the primary (it may be the same one):
 * reconnect when metrics_primary_get() differs from the address in use. */
typedef void (*metrics_primary_fn)(void *arg);
/* Take the settings (each config apply); true when they changed. */
bool metrics_primary_configure(struct event_base *base, const struct cfg_redis *c);
/* The primary as last known; false while unknown (sentinels not answered). */
bool metrics_primary_get(char *host, size_t hostlen, int *port);
/* True with sentinels: a node's role is worth checking, a loss worth reporting. */
bool metrics_primary_sentinels(void);
/* A user lost the primary (connection error, ROLE says replica, READONLY):
 * ask the sentinels again, asynchronously. */
void metrics_primary_lost(void);
void metrics_primary_watch(metrics_primary_fn fn, void *arg);
void metrics_primary_unwatch(metrics_primary_fn fn, void *arg);
/* Blocking, for a start before the event loop runs: ask each sentinel in
 * turn (timeout_ms each); the answer also seeds the asynchronous side. */
bool metrics_primary_resolve(const struct cfg_redis *c, char *host, size_t hostlen, int *port,
                             int timeout_ms);
void metrics_primary_stop(void);

/* ---- the Redis writer (redis.c) and reader (query.c) ------------------ */

struct metrics_redis;

/* Where the writer's events (redis_connected, redis_unavailable, …) go:
 * fn(event, fields) with fields already-encoded JSON members. */
typedef void (*metrics_log_fn)(const char *event, const char *fields);
void metrics_set_logger(metrics_log_fn fn);
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
/* True while a batch is in hand: sent and unanswered, refused, or not yet
 * confirmed by WAIT (redis.wait_replicas). */
bool metrics_redis_unacknowledged(const struct metrics_redis *r);
/* Fleet membership for sluice:instances ("fleet", "fleet_generation"),
 * written at once and with every flush. */
void metrics_redis_set_fleet(struct metrics_redis *r, const char *fleet, uint64_t generation);
/* This instance's id in sluice:instances. */
const char *metrics_redis_instance(const struct metrics_redis *r);
void metrics_redis_free(struct metrics_redis *r);
/* A command of another main-thread user (the rollout driver) on the
 * writer's connection, queued behind every batch already sent: a read after
 * metrics_redis_flush() sees this instance's counts sent so far. fn (may be
 * NULL) gets the hiredis reply (a redisReply *, NULL when the connection
 * went away) exactly once. -1 when not connected: fn is not called. */
typedef void (*metrics_redis_reply_fn)(void *reply, void *arg);
int metrics_redis_command(struct metrics_redis *r, metrics_redis_reply_fn fn, void *arg,
                          int argc, const char **argv, const size_t *lens);

/* The comparison for endpoint ep over the last minutes, read from Redis
 * (SPEC §5 metrics): JSON, or NULL with a reason. */
struct json_t *metrics_redis_query(struct metrics_redis *r, const struct cfg_endpoint *ep,
                                   int minutes, char *err, size_t errlen);
/* The latest (at most limit) disagreement samples of a mirror version,
 * newest first (SPEC §7): a JSON array, or NULL with a reason. */
struct json_t *metrics_redis_diffs(struct metrics_redis *r, const char *ep,
                                   const char *version, int limit, char *err, size_t errlen);

#endif
