/*
 * Health of upstreams: thresholds of active checks, passive ejection with
 * backoff, and the per-upstream state shared by every worker.
 */
#include "routing/routing.h"

#include <stdlib.h>
#include <string.h>

bool
route_health_observe(struct route_health *h, bool ok, int failure_threshold,
                     int success_threshold)
{
    bool was = h->healthy;
    if (ok) {
        h->failures = 0;
        if (!h->healthy && ++h->successes >= success_threshold) {
            h->healthy = true;
            h->successes = 0;
        }
    } else {
        h->successes = 0;
        if (h->healthy && ++h->failures >= failure_threshold) {
            h->healthy = false;
            h->failures = 0;
        }
    }
    return was != h->healthy;
}

bool
route_eject_failure(struct route_eject *e, int threshold, uint64_t now_ms)
{
    if (++e->failures < threshold)
        return false;
    e->backoff_ms = e->backoff_ms == 0 ? ROUTE_EJECT_MIN_MS :
        (e->backoff_ms * 2 > ROUTE_EJECT_MAX_MS ? ROUTE_EJECT_MAX_MS : e->backoff_ms * 2);
    e->until_ms = now_ms + e->backoff_ms;
    e->failures = threshold - 1;        /* after the backoff, one failure re-ejects */
    return true;
}

void
route_eject_success(struct route_eject *e)
{
    e->failures = 0;
    e->backoff_ms = 0;
    e->until_ms = 0;
}

/* Shared state: an append-only list; the main thread adds entries before
 * it publishes a config naming them, workers only read. */
static struct route_shared *shared_head;

struct route_shared *
route_shared_get(const char *address)
{
    for (struct route_shared *s = __atomic_load_n(&shared_head, __ATOMIC_ACQUIRE); s;
         s = s->next)
        if (strcmp(s->address, address) == 0)
            return s;
    return NULL;
}

struct route_shared *
route_shared_add(const char *address)
{
    struct route_shared *s = route_shared_get(address);
    if (s != NULL)
        return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    s->address = strdup(address);
    s->next = shared_head;
    __atomic_store_n(&shared_head, s, __ATOMIC_RELEASE);
    return s;
}

void
route_shared_free_all(void)
{
    struct route_shared *s = shared_head, *n;
    shared_head = NULL;
    for (; s; s = n) {
        n = s->next;
        free(s->address);
        free(s);
    }
}

bool
route_take_slot(struct route_shared *s, int limit)
{
    if (limit <= 0) {
        __atomic_add_fetch(&s->inflight, 1, __ATOMIC_RELAXED);
        return true;
    }
    int cur = __atomic_load_n(&s->inflight, __ATOMIC_RELAXED);
    while (cur < limit)
        if (__atomic_compare_exchange_n(&s->inflight, &cur, cur + 1, true,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return true;
    return false;
}

void
route_give_slot(struct route_shared *s)
{
    __atomic_sub_fetch(&s->inflight, 1, __ATOMIC_RELEASE);
}

bool
route_mirror_next(int *acc, int mirror)
{
    /* The same smooth counting as the split: exactly mirror/10000 of
     * requests, evenly spread. */
    *acc += mirror;
    if (*acc >= CFG_PCT_TOTAL) {
        *acc -= CFG_PCT_TOTAL;
        return true;
    }
    return false;
}
