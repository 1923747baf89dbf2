/* Statistics for comparing versions: pure functions, unit-tested. */
#include "metrics/metrics.h"

#include <math.h>

double
metrics_quantile_ms(const uint64_t *buckets, double q)
{
    uint64_t n = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++)
        n += buckets[i];
    if (n == 0)
        return -1;
    double target = q * (double)n;
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        if (buckets[i] == 0)
            continue;
        double lo = i == 0 ? 0 : (double)metrics_bucket_le[i - 1];
        if (cum + buckets[i] >= target) {
            if (i == METRICS_BUCKETS - 1)
                return lo / 1000.0;         /* +inf: the lower bound is all we know */
            double hi = (double)metrics_bucket_le[i];
            double frac = (target - (double)cum) / (double)buckets[i];
            return (lo + frac * (hi - lo)) / 1000.0;
        }
        cum += buckets[i];
    }
    return (double)metrics_bucket_le[METRICS_BUCKETS - 2] / 1000.0;
}

void
metrics_compare_errors(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t,
                       struct metrics_compare *out)
{
    double pc = n_c ? (double)e_c / (double)n_c : 0;
    double pt = n_t ? (double)e_t / (double)n_t : 0;
    out->diff = pt - pc;
    double se = 0;
    if (n_c && n_t)
        se = sqrt(pt * (1 - pt) / (double)n_t + pc * (1 - pc) / (double)n_c);
    out->lo = out->diff - 1.96 * se;
    out->hi = out->diff + 1.96 * se;
    if (n_c < METRICS_MIN_SAMPLES || n_t < METRICS_MIN_SAMPLES)
        out->verdict = "too little data";
    else if (out->lo > 0)
        out->verdict = "worse";
    else if (out->hi < 0)
        out->verdict = "better";
    else
        out->verdict = "no significant difference";
}
