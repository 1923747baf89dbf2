/*
 * routing — which version serves a request (SPEC §2.2, §3.3).
 *
 * Pure functions of (config snapshot, per-worker state, request key). The
 * state lives in the caller (one per worker and endpoint), so no locks.
 */
#ifndef SLUICE_ROUTING_H
#define SLUICE_ROUTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config/config.h"

/*
 * Smooth weighted round robin over the versions' effective shares (the
 * algorithm nginx uses for upstream weights). It is deterministic and, for
 * every window of consecutive picks, each version's count stays within a
 * few picks of its exact share, so any 10,000 consecutive requests match the
 * configured split to far better than one percentage point.
 */
struct route_split {
    int n;
    int weight[CFG_MAX_VERSIONS];
    int current[CFG_MAX_VERSIONS];
};

void route_split_init(struct route_split *s, const struct cfg_endpoint *ep);
/* Index of the version for the next request; never one with weight 0. */
int route_split_next(struct route_split *s);

/* The version named by a pin header; ROUTE_PIN_UNKNOWN when the endpoint
 * has none, ROUTE_PIN_REFUSED when that version's rollout was rolled back
 * or aborted and it was not changed since (SPEC §3.3). Callers check
 * ep->pinning first: an endpoint with "pinning": false ignores the header. */
#define ROUTE_PIN_UNKNOWN (-1)
#define ROUTE_PIN_REFUSED (-2)
int route_pinned(const struct cfg_endpoint *ep, const char *name, size_t len);

/* Sticky assignment (sticky.c): the version for a key, the same in every
 * process for the same split. With at most two non-default versions a
 * share change moves keys only between the default and the version that
 * changed; with more it stays consistent but not exact. See sticky.c. */
int route_sticky(const struct cfg_endpoint *ep, const char *key, size_t len);
/* The seedless 64-bit hash of (version name, key) it uses. */
uint64_t route_hash(const char *name, const char *key, size_t len);
/* A key's point in [0, 10000) basis points, for the exact layout. */
int route_key_point(const char *key, size_t len);

/* Shadow traffic: true for mirror/10000 of calls, evenly spread; *acc is
 * the caller's running state (start at 0). */
bool route_mirror_next(int *acc, int mirror);

/* ---- choosing an upstream within a version (pick.c) ------------------------ */

/* What the caller knows of one upstream of the version. */
struct route_candidate {
    bool down;                  /* active checks say unhealthy */
    bool avoid;                 /* just failed this request */
    uint64_t ejected_until_ms;  /* passive ejection; 0 when not ejected */
    int inflight;               /* in flight across workers (the limit's count) */
    int active;                 /* in flight on this worker */
};
enum route_pick_status { ROUTE_PICK_OK, ROUTE_PICK_NO_HEALTHY, ROUTE_PICK_AT_LIMIT };
/* The usable candidate with the fewest active requests, scanning from
 * start; limit is replica_max_concurrent_requests (0: none). now_ms need
 * only be set when a candidate has ejected_until_ms. NO_HEALTHY when every
 * candidate is down, ejected or avoided; AT_LIMIT when the usable ones are
 * all at the limit. */
enum route_pick_status route_pick_upstream(const struct route_candidate *c, int n,
                                           int start, int limit, uint64_t now_ms,
                                           int *out);

/* ---- health (health.c) -------------------------------------------------- */

/* Active checks: consecutive results against the thresholds. */
struct route_health {
    bool healthy;               /* start true */
    int failures, successes;
};
/* Record one check; true when the state flipped. */
bool route_health_observe(struct route_health *h, bool ok, int failure_threshold,
                          int success_threshold);

/* Passive ejection after consecutive connect failures or resets, for a
 * backoff that doubles each time (1 s to 30 s), then re-admission. */
#define ROUTE_EJECT_MIN_MS 1000
#define ROUTE_EJECT_MAX_MS 30000
struct route_eject {
    int failures;
    uint64_t backoff_ms;
    uint64_t until_ms;          /* ejected while now < until_ms */
};
/* True when this failure ejects the upstream. */
bool route_eject_failure(struct route_eject *e, int threshold, uint64_t now_ms);
void route_eject_success(struct route_eject *e);

/* Per-upstream state shared by all workers: requests in flight (for
 * replica_max_concurrent_requests) and the active check's verdict. */
struct route_shared {
    char *address;
    int inflight;               /* atomic */
    int down;                   /* atomic: 1 when active checks say unhealthy */
    struct route_shared *next;
};
/* Lookup (any thread) and creation (main thread only, before publishing). */
struct route_shared *route_shared_get(const char *address);
struct route_shared *route_shared_add(const char *address);
void route_shared_free_all(void);
/* Take a slot if fewer than limit are in flight (limit 0: no limit). */
bool route_take_slot(struct route_shared *s, int limit);
void route_give_slot(struct route_shared *s);

#endif
