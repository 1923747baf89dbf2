/*
 * routing — which version serves a request (SPEC §2.2, §3.3).
 *
 * Pure functions of (config snapshot, per-worker state, request key). The
 * state lives in the caller (one per worker and endpoint), so no locks.
 */
#ifndef SLUICE_ROUTING_H
#define SLUICE_ROUTING_H

#include <stddef.h>
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

/* The version named by a pin header; -1 when the endpoint has none. */
int route_pinned(const struct cfg_endpoint *ep, const char *name, size_t len);

#endif
