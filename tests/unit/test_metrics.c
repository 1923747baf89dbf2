/* Counting, collecting and the comparison statistics, without Redis. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "metrics/metrics.h"
#include "check.h"

static bool
near(double a, double b, double eps)
{
    return fabs(a - b) <= eps;
}

static void
test_buckets(void)
{
    CHECK(metrics_bucket(0) == 0 && metrics_bucket(500) == 0, "<= 500");
    CHECK(metrics_bucket(501) == 1 && metrics_bucket(1000) == 1, "<= 1000");
    CHECK(metrics_bucket(10000000) == 13, "<= 10 s");
    CHECK(metrics_bucket(10000001) == 14, "inf");
    CHECK(strcmp(metrics_field_names[M_LAT_FIRST], "lat_le_500") == 0 &&
          strcmp(metrics_field_names[M_COUNT - 1], "lat_le_inf") == 0, "names");
}

static void
test_quantiles_worked_example(void)
{
    /* 100 requests: 50 in (0, 0.5 ms], 40 in (1, 2.5 ms], 10 in (5, 10 ms].
     * p50: the 50th is the last of the first bucket: 0.5 ms.
     * p95: 95 - 90 = 5 of 10 into (5, 10]: 7.5 ms.
     * p80: 80 - 50 = 30 of 40 into (1, 2.5]: 1 + 0.75 * 1.5 = 2.125 ms. */
    uint64_t b[METRICS_BUCKETS] = {0};
    b[0] = 50;
    b[2] = 40;
    b[4] = 10;
    CHECK(near(metrics_quantile_ms(b, 0.50), 0.5, 1e-9), "p50 %f", metrics_quantile_ms(b, 0.5));
    CHECK(near(metrics_quantile_ms(b, 0.95), 7.5, 1e-9), "p95 %f", metrics_quantile_ms(b, 0.95));
    CHECK(near(metrics_quantile_ms(b, 0.80), 2.125, 1e-9), "p80 %f", metrics_quantile_ms(b, 0.8));
    uint64_t none[METRICS_BUCKETS] = {0};
    CHECK(metrics_quantile_ms(none, 0.5) < 0, "no data");
    uint64_t inf[METRICS_BUCKETS] = {0};
    inf[14] = 3;
    CHECK(near(metrics_quantile_ms(inf, 0.99), 10000, 1e-9), "inf reports its lower bound");
}

static void
test_compare_worked_examples(void)
{
    struct metrics_compare c;
    /* control 20/1000 = 2 %, treatment 50/1000 = 5 %: diff 0.03,
     * SE = sqrt(.05*.95/1000 + .02*.98/1000) = sqrt(6.71e-5) = 0.0081915,
     * CI = 0.03 +- 1.96 * 0.0081915 = [0.013945, 0.046055]: worse. */
    metrics_compare_errors(1000, 20, 1000, 50, &c);
    CHECK(near(c.diff, 0.03, 1e-12), "diff %f", c.diff);
    CHECK(near(c.lo, 0.013945, 1e-6) && near(c.hi, 0.046055, 1e-6), "ci [%f, %f]", c.lo, c.hi);
    CHECK(strcmp(c.verdict, "worse") == 0, "%s", c.verdict);
    /* the other way round: better */
    metrics_compare_errors(1000, 50, 1000, 20, &c);
    CHECK(strcmp(c.verdict, "better") == 0 && near(c.hi, -0.013945, 1e-6), "%s", c.verdict);
    /* 10/1000 vs 12/1000: diff 0.002, SE = sqrt(.012*.988/1000 + .01*.99/1000)
     * = sqrt(2.1756e-5) = 0.0046644; CI [-0.007142, 0.011142]: no difference. */
    metrics_compare_errors(1000, 10, 1000, 12, &c);
    CHECK(near(c.lo, -0.007142, 1e-6) && near(c.hi, 0.011142, 1e-6), "ci [%f, %f]", c.lo, c.hi);
    CHECK(strcmp(c.verdict, "no significant difference") == 0, "%s", c.verdict);
    metrics_compare_errors(1000, 10, 99, 50, &c);
    CHECK(strcmp(c.verdict, "too little data") == 0, "%s", c.verdict);
}

struct seen_entry {
    char version[40];
    uint32_t minute;
    uint64_t v[M_COUNT];
};
static struct seen_entry drained[64];
static int n_drained;

static void
collect_entry(void *arg, const char *ep, const char *version, const char *group,
              uint32_t minute, const uint64_t *v)
{
    struct seen_entry *e = &drained[n_drained++];
    snprintf(e->version, sizeof(e->version), "%s/%s/%s", ep, version, group);
    e->minute = minute;
    memcpy(e->v, v, sizeof(e->v));
}

static const struct seen_entry *
find(const char *name, uint32_t minute)
{
    for (int i = 0; i < n_drained; i++)
        if (strcmp(drained[i].version, name) == 0 && drained[i].minute == minute)
            return &drained[i];
    return NULL;
}

static void
test_record_collect_drain(void)
{
    struct metrics_worker *w1 = metrics_worker_new(), *w2 = metrics_worker_new();
    struct metrics_worker *ws[2] = {w1, w2};
    struct metrics_backlog *b = metrics_backlog_new(1000);
    struct metrics_slot *a1 = metrics_slot(w1, "ep", "va", "control");
    struct metrics_slot *a2 = metrics_slot(w2, "ep", "va", "control");
    CHECK(metrics_slot(w1, "ep", "va", "control") == a1, "same slot");
    struct metrics_sample ok = {.status = 200, .latency_us = 700, .bytes_in = 10, .bytes_out = 20};
    struct metrics_sample bad = {.status = 502, .latency_us = 30000, .upstream_error = true};
    for (int i = 0; i < 7; i++)
        metrics_record(a1, 1000, &ok);
    metrics_record(a2, 1000, &bad);
    metrics_record(a2, 1001, &ok);
    metrics_reject(w1, REJ_UNAUTHORIZED);
    metrics_collect(b, ws, 2);
    /* collecting again finds nothing new */
    metrics_collect(b, ws, 2);
    uint64_t rej[REJ_COUNT];
    n_drained = 0;
    metrics_backlog_drain(b, collect_entry, NULL, rej);
    const struct seen_entry *m0 = find("ep/va/control", 1000), *m1 = find("ep/va/control", 1001);
    CHECK(m0 && m0->v[M_REQUESTS] == 8 && m0->v[M_2XX] == 7 && m0->v[M_5XX] == 1, "minute 1000");
    CHECK(m0 && m0->v[M_UPSTREAM_ERRORS] == 1 && m0->v[M_BYTES_IN] == 70, "fields");
    CHECK(m0 && m0->v[M_LAT_FIRST + 1] == 7 && m0->v[M_LAT_FIRST + 6] == 1, "histogram");
    CHECK(m0 && m0->v[M_LATENCY_SUM] == 7 * 700 + 30000, "latency sum");
    CHECK(m1 && m1->v[M_REQUESTS] == 1, "minute 1001");
    CHECK(n_drained == 2, "%d entries", n_drained);
    CHECK(rej[REJ_UNAUTHORIZED] == 1, "rejected");
    CHECK(metrics_backlog_size(b) == 0, "drained");
    /* more after a drain: only the new ones */
    metrics_record(a1, 1000, &ok);
    /* rejections naming an endpoint: in sluice:rejected as before, and per
     * endpoint on /metrics, summed over the workers */
    metrics_reject_ep(w2, "ep", REJ_UNAUTHORIZED);
    metrics_reject_ep(w2, "ep", REJ_UNAUTHORIZED);
    metrics_reject_ep(w1, "ep", REJ_UNAUTHORIZED);
    metrics_reject_ep(w1, NULL, REJ_NOT_FOUND);
    metrics_collect(b, ws, 2);
    n_drained = 0;
    metrics_backlog_drain(b, collect_entry, NULL, rej);
    CHECK(n_drained == 1 && drained[0].v[M_REQUESTS] == 1, "delta only");
    CHECK(rej[REJ_UNAUTHORIZED] == 3 && rej[REJ_NOT_FOUND] == 1, "rejected for Redis");
    char *prom = metrics_prometheus(b);
    CHECK(strstr(prom, "sluice_request_duration_seconds_count{endpoint=\"ep\",version=\"va\","
                       "group=\"control\"} 10") != NULL, "prometheus count");
    CHECK(strstr(prom, "sluice_rejected_total{endpoint=\"\",reason=\"unauthorized\"} 1\n") != NULL,
          "rejected without an endpoint");
    CHECK(strstr(prom, "sluice_rejected_total{endpoint=\"ep\",reason=\"unauthorized\"} 3\n") != NULL,
          "rejected naming ep");
    CHECK(strstr(prom, "sluice_rejected_total{endpoint=\"\",reason=\"not_found\"} 1\n") != NULL,
          "not found");
    free(prom);
    metrics_backlog_free(b);
    metrics_worker_free(w1);
    metrics_worker_free(w2);
}

static void
test_backlog_is_bounded(void)
{
    /* Redis away for long: at most 5 minute buckets, the rest in totals. */
    struct metrics_worker *w = metrics_worker_new();
    struct metrics_backlog *b = metrics_backlog_new(5);
    struct metrics_slot *s = metrics_slot(w, "ep", "va", "treatment");
    struct metrics_sample ok = {.status = 200, .latency_us = 100};
    uint64_t total = 0;
    for (uint32_t m = 100; m < 160; m++) {
        for (uint32_t i = 0; i <= m % 3; i++, total++)
            metrics_record(s, m, &ok);
        metrics_collect(b, &w, 1);
    }
    CHECK(metrics_backlog_size(b) <= 6, "%zu entries", metrics_backlog_size(b));
    CHECK(metrics_backlog_merged(b) == 55, "%llu merged",
          (unsigned long long)metrics_backlog_merged(b));
    uint64_t rej[REJ_COUNT], sum = 0;
    n_drained = 0;
    metrics_backlog_drain(b, collect_entry, NULL, rej);
    for (int i = 0; i < n_drained; i++)
        sum += drained[i].v[M_REQUESTS];
    CHECK(sum == total, "nothing lost: %llu of %llu", (unsigned long long)sum,
          (unsigned long long)total);
    CHECK(find("ep/va/treatment", 0) != NULL, "a totals-only entry");
    CHECK(find("ep/va/treatment", 159) != NULL, "the newest minute kept");
    metrics_backlog_free(b);
    metrics_worker_free(w);
}

/* Issue 17 finding 3: a pinned request counts in its version's series and
 * again in the version's "pinned" companion (sluice:{EP}:pinned:V), which
 * the comparison and the gate subtract; /metrics counts it once. */
static void
test_pinned_companion(void)
{
    struct metrics_worker *w = metrics_worker_new();
    struct metrics_backlog *b = metrics_backlog_new(100);
    struct metrics_slot *s = metrics_slot(w, "ep", "vb", "treatment");
    struct metrics_sample routed = {.status = 500, .latency_us = 700};
    struct metrics_sample pinned = {.status = 200, .latency_us = 700, .pinned = true};
    for (int i = 0; i < 3; i++)
        metrics_record(s, 2000, &routed);
    for (int i = 0; i < 5; i++)
        metrics_record(s, 2000, &pinned);
    metrics_collect(b, &w, 1);
    uint64_t rej[REJ_COUNT];
    n_drained = 0;
    char *prom = metrics_prometheus(b);
    metrics_backlog_drain(b, collect_entry, NULL, rej);
    const struct seen_entry *all = find("ep/vb/treatment", 2000);
    const struct seen_entry *pin = find("ep/vb/" METRICS_PINNED_GROUP, 2000);
    CHECK(all && all->v[M_REQUESTS] == 8 && all->v[M_PINNED] == 5 && all->v[M_5XX] == 3,
          "the version's series has every request");
    CHECK(pin && pin->v[M_REQUESTS] == 5 && pin->v[M_PINNED] == 5 && pin->v[M_2XX] == 5 &&
          pin->v[M_5XX] == 0 && pin->v[M_LAT_FIRST + 1] == 5, "the companion has the pins only");
    CHECK(n_drained == 2, "%d entries", n_drained);
    CHECK(strstr(prom, "sluice_pinned_total{endpoint=\"ep\",version=\"vb\",group=\"treatment\"} 5")
          != NULL, "prometheus pinned");
    CHECK(strstr(prom, "group=\"pinned\"") == NULL, "the companion is not a series of its own");
    free(prom);
    CHECK(metrics_slot(w, "ep", "vb", "treatment") == s, "same slot, same companion");
    metrics_backlog_free(b);
    metrics_worker_free(w);
}

/* metrics_normal_quantile (AS 241) against values computed with 50-digit
 * arithmetic (mpmath: bisection on 0.5 erfc(z / sqrt 2) = tail, for the
 * tail's exact double value), to a few units in the last place, and
 * against the C library's erfc over a grid. */
static void
test_normal_quantile(void)
{
    static const struct { double tail, z; } known[] = {
        {0.025, 1.9599639845400542118}, {0.005, 2.5758293035489007538},
        {1e-10, 6.3613409024040561991}, {1e-20, 9.2623400897984075796},
        {1e-300, 37.047096299361199237}, {0.3, 0.52440051270804081597},
        {0.0001, 3.7190164854556805523}, {0.4999, 0.00025066283008800749239},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        double z = metrics_normal_quantile(known[i].tail);
        CHECK(fabs(z - known[i].z) <= 4e-16 * fabs(known[i].z), "tail %g: %.17g, want %.17g",
              known[i].tail, z, known[i].z);
        double m = metrics_normal_quantile(1 - known[i].tail);
        /* 1 - tail is itself rounded: compare where it is exact enough */
        if (known[i].tail >= 1e-3)
            CHECK(fabs(m + known[i].z) <= 1e-13 * fabs(known[i].z), "symmetry %g: %.17g",
                  known[i].tail, m);
    }
    CHECK(metrics_normal_quantile(0.5) == 0, "the median");
    CHECK(isinf(metrics_normal_quantile(0)) && metrics_normal_quantile(0) > 0, "tail 0");
    CHECK(isinf(metrics_normal_quantile(1)) && metrics_normal_quantile(1) < 0, "tail 1");
    double worst = 0;
    for (double t = 1e-12; t < 0.5; t *= 1.07) {
        double z = metrics_normal_quantile(t);
        double back = 0.5 * erfc(z / M_SQRT2);
        double rel = fabs(back - t) / t;
        if (rel > worst)
            worst = rel;
    }
    CHECK(worst < 1e-13, "round trip through erfc: worst relative error %g", worst);
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"pinned companion", test_pinned_companion},
        {"buckets", test_buckets},
        {"quantiles, worked example", test_quantiles_worked_example},
        {"error-rate comparison, worked examples", test_compare_worked_examples},
        {"normal quantile (AS 241)", test_normal_quantile},
        {"record, collect, drain", test_record_collect_drain},
        {"backlog is bounded", test_backlog_is_bounded},
        {NULL, NULL},
    };
    return run_tests(tests);
}
