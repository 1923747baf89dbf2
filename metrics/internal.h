/*
 * metrics/internal.h — shared inside the metrics module only (everyone
 * else sees metrics/metrics.h): the Redis writer's state, shared by its
 * writer (redis.c), its bookkeeping (bookkeeping.c) and reader (query.c),
 * argument lists (args.c), event lines (log.c).
 *
 * Who calls whom (one way):
 *   redis.c -> bookkeeping.c, primary.c, counters.c, stats.c, args.c, log.c
 *   bookkeeping.c -> counters.c, args.c
 *   query.c -> stats.c, log.c;   primary.c -> log.c
 */
#ifndef SLUICE_METRICS_INTERNAL_H
#define SLUICE_METRICS_INTERNAL_H

#include <hiredis/async.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct event_base;
struct event;

struct args {
    char **v;
    size_t *len;
    int n, cap;
};

/* The Redis writer (redis.c); query.c reads its settings. */
struct metrics_redis {
    struct event_base *base;
    struct metrics_backlog *b;
    struct metrics_worker **workers;
    int n_workers;
    char *instance;
    char sha[41];
    /* settings */
    char *host;
    int port, db, flush_ms, retention_min;
    char *password;
    uint64_t generation;
    json_t *versions;           /* endpoint -> {version: json text} to write */
    /* connection */
    redisAsyncContext *ac;
    bool connected;
    struct event *flush_ev, *reconnect_ev;
    struct batch *inflight;
    uint64_t seq;
    time_t started, last_flush;
    bool warned_down;
    char *fleet;                /* fleet name, NULL outside a fleet */
    uint64_t fleet_generation;
    int wait_replicas, wait_timeout_ms;
    bool configured;            /* metrics_redis_configure() ran */
    time_t wait_warned;         /* the last redis_wait_short line */
    uint64_t wait_short;        /* short WAITs since that line */
    time_t swept;               /* the last SWEEP_SCRIPT */
    json_t *diff_keys;          /* "sluice:{EP}:diffs:V" -> true, samples kept now */
    json_t *diff_drop;          /* such keys whose samples must go (compare removed) */
};

/* An event line through the logger set with metrics_set_logger(). */
void metrics_logf(const char *event, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Text for a log line, JSON-escaped (main thread; valid for a few calls). */
const char *metrics_jstr(const char *s);

/* log.c */
void logf_(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *jstr(const char *s);

/* args.c */
void args_str(struct args *a, const char *s);
void args_fmt(struct args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void args_free(struct args *a);

/* bookkeeping.c */
void write_versions(struct metrics_redis *r);
void heartbeat(struct metrics_redis *r);
void housekeeping(struct metrics_redis *r);
void flush_diffs(struct metrics_redis *r);

#endif
