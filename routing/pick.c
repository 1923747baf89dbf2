/*
 * Choosing an upstream within a version: skip what is down or ejected (or
 * the one that just failed this request), skip what is at the concurrency
 * limit, take the one with the fewest requests in flight on this worker.
 * The scan starts at a rotating position so that ties spread evenly.
 */
#include "routing/routing.h"

enum route_pick_status
route_pick_upstream(const struct route_candidate *c, int n, int start, int limit,
                    uint64_t now_ms, int *out)
{
    bool healthy = false;
    int best = -1;

    for (int k = 0; k < n; k++) {
        int i = (start + k) % n;
        if (c[i].down || c[i].avoid || (c[i].ejected_until_ms != 0 &&
                                         now_ms < c[i].ejected_until_ms))
            continue;
        healthy = true;
        if (limit > 0 && c[i].inflight >= limit)
            continue;
        if (best < 0 || c[i].active < c[best].active)
            best = i;
    }
    if (best < 0)
        return healthy ? ROUTE_PICK_AT_LIMIT : ROUTE_PICK_NO_HEALTHY;
    *out = best;
    return ROUTE_PICK_OK;
}
