/*
 * Per-worker counters and the main thread's backlog.
 *
 * A worker is the only writer of its cells (plain increments stored with
 * relaxed atomics so the collector never reads a torn value). A slot keeps
 * a ring of RING per-minute cells; a cell is reused RING minutes later, long
 * after the collector (which runs at least once a minute) has taken its
 * last counts. Reuse marks the cell's minute 0 while it is cleared, and the
 * collector skips a cell whose minute changed while it read it.
 */
#include "metrics/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RING 8

const char *const metrics_field_names[M_COUNT] = {
    "requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx",
    "upstream_errors", "timeouts", "overloaded", "failover", "pinned",
    "shadow_dropped", "bytes_in", "bytes_out", "latency_us_sum",
    "cmp_total", "cmp_equal", "cmp_different", "cmp_status_mismatch", "cmp_unknown",
    "lat_le_500", "lat_le_1000", "lat_le_2500", "lat_le_5000", "lat_le_10000",
    "lat_le_25000", "lat_le_50000", "lat_le_100000", "lat_le_250000", "lat_le_500000",
    "lat_le_1000000", "lat_le_2500000", "lat_le_5000000", "lat_le_10000000", "lat_le_inf",
};

const uint64_t metrics_bucket_le[METRICS_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, UINT64_MAX,
};

const char *const metrics_rejected_names[REJ_COUNT] = {
    "unauthorized", "not_found", "bad_request", "too_large", "timeout",
};

const char *const metrics_h2_flood_names[H2F_COUNT] = {
    "rapid_reset", "continuation", "ping", "settings", "empty",
};

int
metrics_bucket(uint64_t us)
{
    for (int i = 0; i < METRICS_BUCKETS - 1; i++)
        if (us <= metrics_bucket_le[i])
            return i;
    return METRICS_BUCKETS - 1;
}

struct mcell {
    uint32_t minute;            /* 0 while being cleared */
    uint64_t v[M_COUNT];
};

struct seen {
    uint32_t minute;
    uint64_t v[M_COUNT];
};

struct metrics_slot {
    char ep[CFG_NAME_MAX + 1];
    char version[CFG_NAME_MAX + 1];
    char group[16];
    struct mcell ring[RING];
    /* the collector's own: */
    int series;                 /* -1 until known */
    struct seen seen[RING];
    struct metrics_worker *owner;
    struct metrics_slot *pinned;    /* the companion for pinned requests, or NULL */
    bool is_pinned;                 /* this is a companion */
    struct metrics_slot *next;
};

struct diff_entry {
    char ep[CFG_NAME_MAX + 1];
    char version[CFG_NAME_MAX + 1];
    int keep;
    char *text;
};

/* Rejections per endpoint named by the request (for /metrics only; Redis
 * keeps SPEC §4's instance-wide sluice:rejected). */
#define REJ_EPS 64
struct rej_ep {
    char ep[CFG_NAME_MAX + 1];
    uint64_t n[REJ_COUNT];          /* the worker's, read atomically */
    uint64_t seen[REJ_COUNT];       /* the collector's */
};

struct metrics_worker {
    struct metrics_slot *slots;     /* atomic head; appended by the worker */
    struct rej_ep rej_eps[REJ_EPS];
    int n_rej_eps;                  /* atomic: an entry is published after its name */
    pthread_mutex_t diff_lock;
    struct diff_entry diffs[METRICS_DIFF_RING];
    unsigned diff_first, diff_n;
    uint64_t rejected[REJ_COUNT];
    uint64_t rej_seen[REJ_COUNT];   /* the collector's */
    uint64_t floods[H2F_COUNT];
    uint64_t flood_seen[H2F_COUNT]; /* the collector's */
};

struct metrics_worker *
metrics_worker_new(void)
{
    struct metrics_worker *mw = calloc(1, sizeof(struct metrics_worker));
    if (mw != NULL)
        pthread_mutex_init(&mw->diff_lock, NULL);
    return mw;
}

void
metrics_worker_free(struct metrics_worker *mw)
{
    if (mw == NULL)
        return;
    struct metrics_slot *s = mw->slots, *n;
    for (; s; s = n) {
        n = s->next;
        free(s);
    }
    for (unsigned i = 0; i < METRICS_DIFF_RING; i++)
        free(mw->diffs[i].text);
    pthread_mutex_destroy(&mw->diff_lock);
    free(mw);
}

static struct metrics_slot *
slot_get(struct metrics_worker *mw, const char *ep, const char *version, const char *group)
{
    for (struct metrics_slot *s = mw->slots; s; s = s->next)
        if (strcmp(s->ep, ep) == 0 && strcmp(s->version, version) == 0 &&
            strcmp(s->group, group) == 0)
            return s;
    struct metrics_slot *s = calloc(1, sizeof(*s));
    if (s == NULL)
        abort();
    snprintf(s->ep, sizeof(s->ep), "%s", ep);
    snprintf(s->version, sizeof(s->version), "%s", version);
    snprintf(s->group, sizeof(s->group), "%s", group);
    s->series = -1;
    s->owner = mw;
    s->is_pinned = strcmp(group, METRICS_PINNED_GROUP) == 0;
    s->next = mw->slots;
    __atomic_store_n(&mw->slots, s, __ATOMIC_RELEASE);
    return s;
}

struct metrics_slot *
metrics_slot(struct metrics_worker *mw, const char *ep, const char *version,
             const char *group)
{
    return slot_get(mw, ep, version, group);
}

static inline void
add(uint64_t *p, uint64_t d)
{
    __atomic_store_n(p, *p + d, __ATOMIC_RELAXED);  /* single writer */
}

/* One request's counts in one slot. */
static inline __attribute__((always_inline)) void
record_one(struct metrics_slot *slot, uint32_t minute, const struct metrics_sample *s)
{
    struct mcell *c = &slot->ring[minute % RING];
    if (c->minute != minute) {
        __atomic_store_n(&c->minute, 0, __ATOMIC_RELEASE);
        for (int i = 0; i < M_COUNT; i++)
            __atomic_store_n(&c->v[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->minute, minute, __ATOMIC_RELEASE);
    }
    uint64_t *v = c->v;
    if (s->cmp_field != 0) {
        add(&v[M_CMP_TOTAL], 1);
        add(&v[s->cmp_field], 1);
        return;
    }
    if (s->shadow_dropped) {
        add(&v[M_SHADOW_DROPPED], 1);
        return;
    }
    add(&v[M_REQUESTS], 1);
    int cls = s->status / 100;
    if (cls >= 2 && cls <= 5)
        add(&v[M_2XX + cls - 2], 1);
    if (s->upstream_error)
        add(&v[M_UPSTREAM_ERRORS], 1);
    if (s->timeout)
        add(&v[M_TIMEOUTS], 1);
    if (s->overloaded)
        add(&v[M_OVERLOADED], 1);
    if (s->failover)
        add(&v[M_FAILOVER], 1);
    add(&v[M_BYTES_IN], s->bytes_in);
    add(&v[M_BYTES_OUT], s->bytes_out);
    add(&v[M_LATENCY_SUM], s->latency_us);
    add(&v[M_LAT_FIRST + metrics_bucket(s->latency_us)], 1);
}

/* A pinned request: counted, marked, and counted again in the version's
 * pinned companion, made at the version's first pin on this worker (the
 * one allocation here: most versions are never pinned, and a slot is some
 * 4 KiB). Out of line, so that the common path stays a leaf. */
static void __attribute__((noinline, cold))
record_pinned(struct metrics_slot *slot, uint32_t minute, const struct metrics_sample *s)
{
    record_one(slot, minute, s);
    add(&slot->ring[minute % RING].v[M_PINNED], 1);
    if (slot->is_pinned)
        return;
    if (slot->pinned == NULL)
        slot->pinned = slot_get(slot->owner, slot->ep, slot->version, METRICS_PINNED_GROUP);
    record_one(slot->pinned, minute, s);
    add(&slot->pinned->ring[minute % RING].v[M_PINNED], 1);
}

void
metrics_record(struct metrics_slot *slot, uint32_t minute, const struct metrics_sample *s)
{
    if (__builtin_expect(s->pinned, 0)) {
        record_pinned(slot, minute, s);
        return;
    }
    record_one(slot, minute, s);
}

void
metrics_reject(struct metrics_worker *mw, enum rejected_kind k)
{
    add(&mw->rejected[k], 1);
}

void
metrics_h2_flood(struct metrics_worker *mw, enum h2_flood_kind k)
{
    add(&mw->floods[k], 1);
}

void
metrics_reject_ep(struct metrics_worker *mw, const char *ep, enum rejected_kind k)
{
    add(&mw->rejected[k], 1);
    if (ep == NULL)
        return;
    int n = mw->n_rej_eps;          /* the worker is the only writer */
    for (int i = 0; i < n; i++)
        if (strcmp(mw->rej_eps[i].ep, ep) == 0) {
            add(&mw->rej_eps[i].n[k], 1);
            return;
        }
    if (n == REJ_EPS)
        return;                     /* counted without an endpoint */
    snprintf(mw->rej_eps[n].ep, sizeof(mw->rej_eps[n].ep), "%s", ep);
    add(&mw->rej_eps[n].n[k], 1);
    __atomic_store_n(&mw->n_rej_eps, n + 1, __ATOMIC_RELEASE);
}

/* ---- disagreement samples ------------------------------------------------ */

void
metrics_diff_push(struct metrics_worker *mw, const char *ep, const char *version, int keep,
                  const char *json_text)
{
    char *text = strdup(json_text);
    if (text == NULL)
        return;
    pthread_mutex_lock(&mw->diff_lock);
    struct diff_entry *e;
    if (mw->diff_n == METRICS_DIFF_RING) {
        /* Full (Redis away): the oldest goes, as LTRIM would drop it. */
        e = &mw->diffs[mw->diff_first];
        mw->diff_first = (mw->diff_first + 1) % METRICS_DIFF_RING;
        free(e->text);
    } else
        e = &mw->diffs[(mw->diff_first + mw->diff_n++) % METRICS_DIFF_RING];
    snprintf(e->ep, sizeof(e->ep), "%s", ep);
    snprintf(e->version, sizeof(e->version), "%s", version);
    e->keep = keep;
    e->text = text;
    pthread_mutex_unlock(&mw->diff_lock);
}

void
metrics_diff_take(struct metrics_worker *mw,
                  void (*fn)(void *arg, const char *ep, const char *version, int keep,
                             const char *text),
                  void *arg)
{
    struct diff_entry taken[METRICS_DIFF_RING];
    unsigned n;
    pthread_mutex_lock(&mw->diff_lock);
    n = mw->diff_n;
    for (unsigned i = 0; i < n; i++) {
        struct diff_entry *e = &mw->diffs[(mw->diff_first + i) % METRICS_DIFF_RING];
        taken[i] = *e;
        e->text = NULL;
    }
    mw->diff_first = 0;
    mw->diff_n = 0;
    pthread_mutex_unlock(&mw->diff_lock);
    for (unsigned i = 0; i < n; i++) {
        fn(arg, taken[i].ep, taken[i].version, taken[i].keep, taken[i].text);
        free(taken[i].text);
    }
}

/* ---- the backlog -------------------------------------------------------- */

struct series {
    char ep[CFG_NAME_MAX + 1];
    char version[CFG_NAME_MAX + 1];
    char group[16];
    uint64_t total[M_COUNT];        /* this instance, since start (for /metrics) */
};

struct entry {
    int series;
    uint32_t minute;                /* 0: totals only (merged from old minutes) */
    uint64_t v[M_COUNT];
    bool used;
};

struct metrics_backlog {
    struct series *series;
    int n_series, cap_series;
    struct entry *entries;          /* open addressing on (series, minute) */
    size_t n_entries, cap_entries;
    size_t max_minute_entries;
    uint64_t rejected[REJ_COUNT];   /* pending */
    uint64_t rejected_total[REJ_COUNT];
    uint64_t floods_total[H2F_COUNT];   /* HTTP/2 floods, for /metrics only */
    struct rej_total {              /* the part of rejected_total with an endpoint */
        char ep[CFG_NAME_MAX + 1];
        uint64_t n[REJ_COUNT];
    } *rej_eps;
    int n_rej_eps, cap_rej_eps;
    uint64_t merged_minutes;        /* minute buckets folded into totals */
};

struct metrics_backlog *
metrics_backlog_new(size_t max_minute_entries)
{
    struct metrics_backlog *b = calloc(1, sizeof(*b));
    b->max_minute_entries = max_minute_entries;
    b->cap_entries = 256;
    b->entries = calloc(b->cap_entries, sizeof(*b->entries));
    return b;
}

void
metrics_backlog_free(struct metrics_backlog *b)
{
    if (b == NULL)
        return;
    free(b->series);
    free(b->entries);
    free(b->rej_eps);
    free(b);
}

static int
series_of(struct metrics_backlog *b, const struct metrics_slot *s)
{
    for (int i = 0; i < b->n_series; i++)
        if (strcmp(b->series[i].ep, s->ep) == 0 &&
            strcmp(b->series[i].version, s->version) == 0 &&
            strcmp(b->series[i].group, s->group) == 0)
            return i;
    if (b->n_series == b->cap_series) {
        b->cap_series = b->cap_series ? b->cap_series * 2 : 16;
        b->series = realloc(b->series, (size_t)b->cap_series * sizeof(*b->series));
    }
    struct series *se = &b->series[b->n_series];
    memset(se, 0, sizeof(*se));
    memcpy(se->ep, s->ep, sizeof(se->ep));
    memcpy(se->version, s->version, sizeof(se->version));
    memcpy(se->group, s->group, sizeof(se->group));
    return b->n_series++;
}

static size_t
hash(int series, uint32_t minute, size_t cap)
{
    uint64_t k = ((uint64_t)(uint32_t)series << 32 | minute) * 0x9e3779b97f4a7c15ULL;
    return (size_t)(k >> 17) & (cap - 1);
}

static struct entry *
entry_for(struct metrics_backlog *b, int series, uint32_t minute);

static void
grow(struct metrics_backlog *b)
{
    struct entry *old = b->entries;
    size_t n = b->cap_entries;
    b->cap_entries *= 2;
    b->entries = calloc(b->cap_entries, sizeof(*b->entries));
    b->n_entries = 0;
    for (size_t i = 0; i < n; i++)
        if (old[i].used) {
            struct entry *e = entry_for(b, old[i].series, old[i].minute);
            memcpy(e->v, old[i].v, sizeof(e->v));
        }
    free(old);
}

static struct entry *
entry_for(struct metrics_backlog *b, int series, uint32_t minute)
{
    if ((b->n_entries + 1) * 2 > b->cap_entries)
        grow(b);
    size_t i = hash(series, minute, b->cap_entries);
    while (b->entries[i].used) {
        if (b->entries[i].series == series && b->entries[i].minute == minute)
            return &b->entries[i];
        i = (i + 1) & (b->cap_entries - 1);
    }
    b->entries[i].used = true;
    b->entries[i].series = series;
    b->entries[i].minute = minute;
    memset(b->entries[i].v, 0, sizeof(b->entries[i].v));
    b->n_entries++;
    return &b->entries[i];
}

void
metrics_backlog_add(struct metrics_backlog *b, int series, uint32_t minute,
                    const uint64_t *delta, bool to_totals)
{
    struct entry *e = entry_for(b, series, minute);
    for (int k = 0; k < M_COUNT; k++) {
        e->v[k] += delta[k];
        if (to_totals)
            b->series[series].total[k] += delta[k];
    }
}

/* Keep at most max_minute_entries minute buckets: fold the oldest into
 * totals-only entries (SPEC §4: bounded memory, nothing dropped). */
static void
cap_minutes(struct metrics_backlog *b)
{
    size_t minutes = 0;
    uint32_t oldest = UINT32_MAX;
    for (size_t i = 0; i < b->cap_entries; i++)
        if (b->entries[i].used && b->entries[i].minute != 0)
            minutes++;
    while (minutes > b->max_minute_entries) {
        oldest = UINT32_MAX;
        for (size_t i = 0; i < b->cap_entries; i++)
            if (b->entries[i].used && b->entries[i].minute != 0 &&
                b->entries[i].minute < oldest)
                oldest = b->entries[i].minute;
        /* Collect first (rehashing while iterating would lose entries). */
        size_t cap = b->cap_entries;
        struct entry *copy = malloc(cap * sizeof(*copy));
        memcpy(copy, b->entries, cap * sizeof(*copy));
        memset(b->entries, 0, cap * sizeof(*b->entries));
        b->n_entries = 0;
        for (size_t i = 0; i < cap; i++) {
            if (!copy[i].used)
                continue;
            uint32_t m = copy[i].minute == oldest ? 0 : copy[i].minute;
            if (copy[i].minute == oldest) {
                minutes--;
                b->merged_minutes++;
            }
            struct entry *e = entry_for(b, copy[i].series, m);
            for (int k = 0; k < M_COUNT; k++)
                e->v[k] += copy[i].v[k];
        }
        free(copy);
    }
}

/* A worker's per-endpoint rejections since the last look, into the
 * backlog's totals (at most 256 endpoints; beyond, they count without). */
static void
collect_rej_ep(struct metrics_backlog *b, struct rej_ep *e)
{
    uint64_t d[REJ_COUNT];
    bool any = false;
    for (int k = 0; k < REJ_COUNT; k++) {
        uint64_t v = __atomic_load_n(&e->n[k], __ATOMIC_RELAXED);
        d[k] = v - e->seen[k];
        e->seen[k] = v;
        any |= d[k] != 0;
    }
    if (!any)
        return;
    struct rej_total *t = NULL;
    for (int i = 0; i < b->n_rej_eps && t == NULL; i++)
        if (strcmp(b->rej_eps[i].ep, e->ep) == 0)
            t = &b->rej_eps[i];
    if (t == NULL) {
        if (b->n_rej_eps == 256)
            return;
        if (b->n_rej_eps == b->cap_rej_eps) {
            int cap = b->cap_rej_eps ? b->cap_rej_eps * 2 : 8;
            struct rej_total *r = realloc(b->rej_eps, (size_t)cap * sizeof(*r));
            if (r == NULL)
                return;
            b->rej_eps = r;
            b->cap_rej_eps = cap;
        }
        t = &b->rej_eps[b->n_rej_eps++];
        memset(t, 0, sizeof(*t));
        snprintf(t->ep, sizeof(t->ep), "%s", e->ep);
    }
    for (int k = 0; k < REJ_COUNT; k++)
        t->n[k] += d[k];
}

uint64_t
metrics_backlog_routed(const struct metrics_backlog *b, const char *ep, const char *version)
{
    uint64_t n = 0;
    for (int i = 0; i < b->n_series; i++) {
        const struct series *s = &b->series[i];
        if (strcmp(s->ep, ep) != 0 || strcmp(s->version, version) != 0 ||
            strcmp(s->group, METRICS_PINNED_GROUP) == 0 || strcmp(s->group, "shadow") == 0)
            continue;
        n += s->total[M_REQUESTS] >= s->total[M_PINNED] ? s->total[M_REQUESTS] -
             s->total[M_PINNED] : 0;
    }
    return n;
}

void
metrics_collect(struct metrics_backlog *b, struct metrics_worker **workers, int n)
{
    for (int w = 0; w < n; w++) {
        struct metrics_worker *mw = workers[w];
        if (mw == NULL)
            continue;
        for (struct metrics_slot *s = __atomic_load_n(&mw->slots, __ATOMIC_ACQUIRE); s;
             s = s->next) {
            if (s->series < 0)
                s->series = series_of(b, s);
            for (int r = 0; r < RING; r++) {
                struct mcell *c = &s->ring[r];
                uint32_t m1 = __atomic_load_n(&c->minute, __ATOMIC_ACQUIRE);
                if (m1 == 0)
                    continue;
                uint64_t v[M_COUNT];
                for (int k = 0; k < M_COUNT; k++)
                    v[k] = __atomic_load_n(&c->v[k], __ATOMIC_RELAXED);
                if (__atomic_load_n(&c->minute, __ATOMIC_ACQUIRE) != m1)
                    continue;       /* reused while read: next time */
                struct seen *se = &s->seen[r];
                if (se->minute != m1) {
                    se->minute = m1;
                    memset(se->v, 0, sizeof(se->v));
                }
                if (v[M_REQUESTS] == se->v[M_REQUESTS] &&
                    memcmp(v, se->v, sizeof(v)) == 0)
                    continue;
                uint64_t d[M_COUNT];
                for (int k = 0; k < M_COUNT; k++)
                    d[k] = v[k] - se->v[k];
                memcpy(se->v, v, sizeof(v));
                metrics_backlog_add(b, s->series, m1, d, true);
            }
        }
        for (int k = 0; k < REJ_COUNT; k++) {
            uint64_t v = __atomic_load_n(&mw->rejected[k], __ATOMIC_RELAXED);
            b->rejected[k] += v - mw->rej_seen[k];
            b->rejected_total[k] += v - mw->rej_seen[k];
            mw->rej_seen[k] = v;
        }
        for (int k = 0; k < H2F_COUNT; k++) {
            uint64_t v = __atomic_load_n(&mw->floods[k], __ATOMIC_RELAXED);
            b->floods_total[k] += v - mw->flood_seen[k];
            mw->flood_seen[k] = v;
        }
        int ne = __atomic_load_n(&mw->n_rej_eps, __ATOMIC_ACQUIRE);
        for (int i = 0; i < ne; i++)
            collect_rej_ep(b, &mw->rej_eps[i]);
    }
    cap_minutes(b);
}

size_t
metrics_backlog_size(const struct metrics_backlog *b)
{
    size_t n = b->n_entries;
    for (int k = 0; k < REJ_COUNT; k++)
        if (b->rejected[k] != 0)
            return n + 1;           /* the rejected counts wait too */
    return n;
}

uint64_t
metrics_backlog_merged(const struct metrics_backlog *b)
{
    return b->merged_minutes;
}

/* Walk and empty the backlog: fn gets each pending entry once. */
void
metrics_backlog_drain(struct metrics_backlog *b,
                      void (*fn)(void *arg, const char *ep, const char *version,
                                 const char *group, uint32_t minute, const uint64_t *v),
                      void *arg, uint64_t *rejected)
{
    for (size_t i = 0; i < b->cap_entries; i++) {
        struct entry *e = &b->entries[i];
        if (!e->used)
            continue;
        const struct series *se = &b->series[e->series];
        fn(arg, se->ep, se->version, se->group, e->minute, e->v);
        e->used = false;
    }
    b->n_entries = 0;
    memcpy(rejected, b->rejected, sizeof(b->rejected));
    memset(b->rejected, 0, sizeof(b->rejected));
}

char *
metrics_prometheus(const struct metrics_backlog *b)
{
    size_t cap = 6144 + (size_t)b->n_series * 8192 + (size_t)b->n_rej_eps * 512, len = 0;
    char *out = malloc(cap);
#define P(...) len += (size_t)snprintf(out + len, cap - len, __VA_ARGS__)
    P("# HELP sluice_requests_total Requests served, by endpoint, version, group and status class.\n"
      "# TYPE sluice_requests_total counter\n");
    static const char *const cls[] = {"2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < b->n_series; i++) {
        const struct series *s = &b->series[i];
        if (strcmp(s->group, METRICS_PINNED_GROUP) == 0)
            continue;   /* counted in their own version's series already */
        for (int c = 0; c < 4; c++)
            P("sluice_requests_total{endpoint=\"%s\",version=\"%s\",group=\"%s\",status=\"%s\"} %llu\n",
              s->ep, s->version, s->group, cls[c], (unsigned long long)s->total[M_2XX + c]);
    }
    static const struct { int f; const char *name, *help; } simple[] = {
        {M_UPSTREAM_ERRORS, "sluice_upstream_errors_total", "Requests whose model server failed."},
        {M_TIMEOUTS, "sluice_timeouts_total", "Requests that ran out of scoring_timeout_ms."},
        {M_OVERLOADED, "sluice_overloaded_total", "Requests refused at the concurrency limit."},
        {M_FAILOVER, "sluice_failover_total", "Requests served by the default version instead."},
        {M_PINNED, "sluice_pinned_total", "Requests pinned with X-Sluice-Version."},
        {M_SHADOW_DROPPED, "sluice_shadow_dropped_total",
         "Shadow copies dropped at max_shadow_inflight or shadow_timeout_ms."},
        {M_BYTES_IN, "sluice_request_bytes_total", "Bytes received from clients."},
        {M_BYTES_OUT, "sluice_response_bytes_total", "Bytes sent to clients."},
    };
    for (size_t f = 0; f < sizeof(simple) / sizeof(simple[0]); f++) {
        P("# HELP %s %s\n# TYPE %s counter\n", simple[f].name, simple[f].help, simple[f].name);
        for (int i = 0; i < b->n_series; i++) {
            const struct series *s = &b->series[i];
            if (strcmp(s->group, METRICS_PINNED_GROUP) == 0)
                continue;
            P("%s{endpoint=\"%s\",version=\"%s\",group=\"%s\"} %llu\n", simple[f].name, s->ep,
              s->version, s->group, (unsigned long long)s->total[simple[f].f]);
        }
    }
    P("# HELP sluice_shadow_comparisons_total Shadow comparisons of mirror versions "
      "by result (SPEC §7).\n# TYPE sluice_shadow_comparisons_total counter\n");
    static const struct { int f; const char *name; } cmp_results[] = {
        {M_CMP_EQUAL, "equal"}, {M_CMP_DIFFERENT, "different"},
        {M_CMP_STATUS_MISMATCH, "status_mismatch"}, {M_CMP_UNKNOWN, "unknown"},
    };
    for (int i = 0; i < b->n_series; i++) {
        const struct series *s = &b->series[i];
        if (s->total[M_CMP_TOTAL] == 0 || strcmp(s->group, METRICS_PINNED_GROUP) == 0)
            continue;
        for (int k = 0; k < 4; k++)
            P("sluice_shadow_comparisons_total{endpoint=\"%s\",version=\"%s\",result=\"%s\"} "
              "%llu\n", s->ep, s->version, cmp_results[k].name,
              (unsigned long long)s->total[cmp_results[k].f]);
    }
    P("# HELP sluice_request_duration_seconds From the end of the request headers to the "
      "last byte of the response.\n# TYPE sluice_request_duration_seconds histogram\n");
    for (int i = 0; i < b->n_series; i++) {
        const struct series *s = &b->series[i];
        if (strcmp(s->group, METRICS_PINNED_GROUP) == 0)
            continue;
        uint64_t cum = 0;
        for (int k = 0; k < METRICS_BUCKETS; k++) {
            cum += s->total[M_LAT_FIRST + k];
            if (k == METRICS_BUCKETS - 1)
                P("sluice_request_duration_seconds_bucket{endpoint=\"%s\",version=\"%s\","
                  "group=\"%s\",le=\"+Inf\"} %llu\n", s->ep, s->version, s->group,
                  (unsigned long long)cum);
            else
                P("sluice_request_duration_seconds_bucket{endpoint=\"%s\",version=\"%s\","
                  "group=\"%s\",le=\"%g\"} %llu\n", s->ep, s->version, s->group,
                  metrics_bucket_le[k] / 1e6, (unsigned long long)cum);
        }
        P("sluice_request_duration_seconds_sum{endpoint=\"%s\",version=\"%s\",group=\"%s\"} %.6f\n",
          s->ep, s->version, s->group, s->total[M_LATENCY_SUM] / 1e6);
        P("sluice_request_duration_seconds_count{endpoint=\"%s\",version=\"%s\",group=\"%s\"} %llu\n",
          s->ep, s->version, s->group, (unsigned long long)s->total[M_REQUESTS]);
    }
    P("# HELP sluice_rejected_total Requests that reached no version, by the endpoint "
      "they named (\"\": none, or unknown) and reason.\n"
      "# TYPE sluice_rejected_total counter\n");
    for (int k = 0; k < REJ_COUNT; k++) {
        uint64_t named = 0;
        for (int i = 0; i < b->n_rej_eps; i++)
            named += b->rej_eps[i].n[k];
        P("sluice_rejected_total{endpoint=\"\",reason=\"%s\"} %llu\n",
          metrics_rejected_names[k], (unsigned long long)(b->rejected_total[k] >= named ?
          b->rejected_total[k] - named : 0));
    }
    for (int i = 0; i < b->n_rej_eps; i++)
        for (int k = 0; k < REJ_COUNT; k++)
            P("sluice_rejected_total{endpoint=\"%s\",reason=\"%s\"} %llu\n", b->rej_eps[i].ep,
              metrics_rejected_names[k], (unsigned long long)b->rej_eps[i].n[k]);
    P("# HELP sluice_h2_floods_total HTTP/2 client connections ended with GOAWAY "
      "ENHANCE_YOUR_CALM for a flood, by kind (SPEC §9).\n"
      "# TYPE sluice_h2_floods_total counter\n");
    for (int k = 0; k < H2F_COUNT; k++)
        P("sluice_h2_floods_total{kind=\"%s\"} %llu\n", metrics_h2_flood_names[k],
          (unsigned long long)b->floods_total[k]);
    P("# HELP sluice_flush_backlog Metric entries waiting to be written to Redis.\n"
      "# TYPE sluice_flush_backlog gauge\nsluice_flush_backlog %zu\n", b->n_entries);
#undef P
    return out;
}
