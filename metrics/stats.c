/* Statistics for comparing versions: pure functions, unit-tested. */
#include "metrics/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
metrics_error_interval(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t, double z,
                       double *diff, double *lo, double *hi)
{
    double pc = n_c ? (double)e_c / (double)n_c : 0;
    double pt = n_t ? (double)e_t / (double)n_t : 0;
    double se = 0;
    if (n_c && n_t)
        se = sqrt(pt * (1 - pt) / (double)n_t + pc * (1 - pc) / (double)n_c);
    *diff = pt - pc;
    *lo = *diff - z * se;
    *hi = *diff + z * se;
}

void
metrics_compare_errors(uint64_t n_c, uint64_t e_c, uint64_t n_t, uint64_t e_t,
                       struct metrics_compare *out)
{
    metrics_error_interval(n_c, e_c, n_t, e_t, 1.96, &out->diff, &out->lo, &out->hi);
    if (n_c < METRICS_MIN_SAMPLES || n_t < METRICS_MIN_SAMPLES)
        out->verdict = "too little data";
    else if (out->lo > 0)
        out->verdict = "worse";
    else if (out->hi < 0)
        out->verdict = "better";
    else
        out->verdict = "no significant difference";
}

/* A polynomial's value by Horner's rule, c[0] + c[1] x + ... + c[n-1] x^(n-1). */
static double
poly(const double *c, int n, double x)
{
    double v = c[n - 1];
    for (int i = n - 2; i >= 0; i--)
        v = v * x + c[i];
    return v;
}

/*
 * The standard normal quantile by Wichura's algorithm AS 241 (PPND16:
 * Applied Statistics 37 (1988) 477-484), three minimax rational functions
 * of degree 7 with a relative error below about 1e-16: one in
 * r = 0.180625 - (p - 0.5)^2 for |p - 0.5| <= 0.425, and two in
 * r = sqrt(-log(min(p, 1 - p))) for the tails (r <= 5, and beyond, down
 * to probabilities of 1e-300 and less). Written from the published
 * description and coefficients. The tail is passed as it is, never as
 * 1 - tail, so a small tail keeps its precision.
 */
static const double ppnd_a[8] = {
    3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
    1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
    3.3430575583588128105e4, 2.5090809287301226727e3};
static const double ppnd_b[8] = {
    1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
    2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
    5.2264952788528545610e3};
static const double ppnd_c[8] = {
    1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
    3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
    2.27238449892691845833e-2, 7.74545014278341407640e-4};
static const double ppnd_d[8] = {
    1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
    1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
    1.05075007164441684324e-9};
static const double ppnd_e[8] = {
    6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
    2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
    2.71155556874348757815e-5, 2.01033439929228813265e-7};
static const double ppnd_f[8] = {
    1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
    7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
    2.04426310338993978564e-15};

double
metrics_normal_quantile(double tail)
{
    if (!(tail > 0))
        return INFINITY;
    if (!(tail < 1))
        return -INFINITY;
    /* z with P(Z > z) = tail is minus the lower quantile of tail. */
    double q = tail - 0.5;
    if (fabs(q) <= 0.425) {
        double r = 0.180625 - q * q;
        return -q * poly(ppnd_a, 8, r) / poly(ppnd_b, 8, r);
    }
    double r = sqrt(-log(q < 0 ? tail : 1 - tail));
    double z;
    if (r <= 5) {
        r -= 1.6;
        z = poly(ppnd_c, 8, r) / poly(ppnd_d, 8, r);
    } else {
        r -= 5;
        z = poly(ppnd_e, 8, r) / poly(ppnd_f, 8, r);
    }
    /* tail < 0.5: the upper half, z > 0 */
    return q < 0 ? z : -z;
}

/*
 * The rollout gate (SPEC §8).
 *
 * Why a sequential method: a rollout looks at the data once per step, and a
 * plain 95 % interval checked at each of four looks rolls back an equal
 * version about four times as often as one look would (tests/unit/
 * test_rollout.c measures it). The error budget has to be for the whole
 * rollout.
 *
 * Which one: alpha spent across the steps (Bonferroni). Each gate sees only
 * its own step's window, so the looks are tests on disjoint samples; the
 * chance that any of them wrongly fails is at most the sum of their levels,
 * with nothing asymptotic beyond each window's normal approximation. A
 * mixture SPRT would instead need the counts accumulated over the whole
 * rollout, while a step's window is what the gate must judge (the version's
 * behaviour at its current share). Planned looks share the budget equally
 * (a Pocock-like split rather than O'Brien-Fleming's): the first gate has
 * the least data and must still be able to fail fast. A small reserve pays
 * for looks beyond the plan (a step evaluated again after a restart), in
 * halving shares, so no number of looks exceeds the budget.
 *
 * Only a look that tests spends alpha. A hold depends on the request counts
 * alone, never on the errors, so asking again after a hold is free; the
 * first answer with enough data on both sides is the step's one test.
 */
#define GATE_RESERVE 0.05       /* of the budget, for looks beyond the plan */

double
metrics_gate_alpha(int look, int looks)
{
    if (looks < 1)
        looks = 1;
    if (look < 1)
        look = 1;
    if (look <= looks)
        return METRICS_GATE_ALPHA * (1 - GATE_RESERVE) / looks;
    int beyond = look - looks;
    return METRICS_GATE_ALPHA * GATE_RESERVE * ldexp(1, -(beyond < 60 ? beyond : 60));
}

void
metrics_gate_side_from(struct metrics_gate_side *s, const uint64_t *counters)
{
    s->requests = counters[M_REQUESTS];
    s->errors = counters[M_5XX];
    for (int i = 0; i < METRICS_BUCKETS; i++)
        s->lat[i] = counters[M_LAT_FIRST + i];
}

const char *
metrics_gate_verdict_name(enum metrics_gate_verdict v)
{
    switch (v) {
    case METRICS_GATE_PASS: return "pass";
    case METRICS_GATE_HOLD: return "hold";
    case METRICS_GATE_FAIL: return "fail";
    }
    return "?";
}

static enum metrics_gate_verdict
verdict(struct metrics_gate_result *out, enum metrics_gate_verdict v, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum metrics_gate_verdict
verdict(struct metrics_gate_result *out, enum metrics_gate_verdict v, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof(out->reason), fmt, ap);
    va_end(ap);
    out->verdict = v;
    return v;
}

/* Too little data: hold, until the step has run METRICS_GATE_HOLD_STEPS
 * times its length. */
static void
short_of_data(struct metrics_gate_result *out, const struct metrics_gate_input *in,
              const char *what)
{
    if (in->elapsed_s >= METRICS_GATE_HOLD_STEPS * in->step_s)
        verdict(out, METRICS_GATE_FAIL, "%s after %d x step_s", what, METRICS_GATE_HOLD_STEPS);
    else
        verdict(out, METRICS_GATE_HOLD, "%s", what);
}

void
metrics_wilson(uint64_t eq, uint64_t n, double *lo, double *hi)
{
    double r = (double)eq / (double)n, z = 1.96, z2 = z * z, dn = (double)n;
    double mid = (r + z2 / (2 * dn)) / (1 + z2 / dn);
    double half = z / (1 + z2 / dn) * sqrt(r * (1 - r) / dn + z2 / (4 * dn * dn));
    *lo = mid - half < 0 ? 0 : mid - half;
    *hi = mid + half > 1 ? 1 : mid + half;
}

static void
gate_agreement(const struct metrics_gate_params *p, const struct metrics_gate_input *in,
               struct metrics_gate_result *out)
{
    const struct metrics_gate_agreement *a = in->agreement;
    uint64_t n = a->compared, eq = a->equal <= n ? a->equal : n;

    out->has_agreement = true;
    out->compared = n;
    out->equal = eq;
    out->agreement = out->agreement_lo = out->agreement_hi = -1;
    if (n > 0) {
        /* Wilson's interval: sensible at rates near 1, where a Wald
         * interval would reach past 100 %. */
        double r = (double)eq / (double)n, z = 1.96, z2 = z * z, dn = (double)n;
        double mid = (r + z2 / (2 * dn)) / (1 + z2 / dn);
        double half = z / (1 + z2 / dn) * sqrt(r * (1 - r) / dn + z2 / (4 * dn * dn));
        out->agreement = r;
        out->agreement_lo = mid - half;
        out->agreement_hi = mid + half;
    }
    if (in->elapsed_s < in->step_s) {
        verdict(out, METRICS_GATE_HOLD, "step running");
        return;
    }
    if (n < p->min_requests) {
        char what[96];
        snprintf(what, sizeof(what), "%llu comparisons, min_requests %llu",
                 (unsigned long long)n, (unsigned long long)p->min_requests);
        short_of_data(out, in, what);
        return;
    }
    /* The observed rate must reach the threshold: a bound would keep a
     * perfectly agreeing version out until thousands of comparisons. */
    if (out->agreement < p->min_agreement)
        verdict(out, METRICS_GATE_FAIL, "agreement %.4f below min_agreement %.4f",
                out->agreement, p->min_agreement);
    else
        verdict(out, METRICS_GATE_PASS, "agreement %.4f reaches %.4f", out->agreement,
                p->min_agreement);
}

void
metrics_gate(const struct metrics_gate_params *p, const struct metrics_gate_input *in,
             struct metrics_gate_result *out)
{
    const struct metrics_gate_side *c = &in->control, *v = &in->version;

    memset(out, 0, sizeof(*out));
    out->n_control = c->requests;
    out->n_version = v->requests;
    out->err_control = c->requests ? (double)c->errors / (double)c->requests : -1;
    out->err_version = v->requests ? (double)v->errors / (double)v->requests : -1;
    out->alpha = metrics_gate_alpha(in->look, in->looks);
    out->z = metrics_normal_quantile(out->alpha / 2);
    metrics_error_interval(c->requests, c->errors, v->requests, v->errors, out->z, &out->diff,
                           &out->lo, &out->hi);
    out->p99_control_ms = metrics_quantile_ms(c->lat, 0.99);
    out->p99_version_ms = metrics_quantile_ms(v->lat, 0.99);
    out->p99_ratio = out->p99_control_ms > 0 && out->p99_version_ms >= 0
        ? out->p99_version_ms / out->p99_control_ms : -1;

    if (in->agreement) {
        gate_agreement(p, in, out);
        return;
    }
    if (in->elapsed_s < in->step_s) {
        verdict(out, METRICS_GATE_HOLD, "step running");
        return;
    }
    if (c->requests < p->min_requests || v->requests < p->min_requests) {
        char what[128];
        snprintf(what, sizeof(what), "too little data: %llu control and %llu version "
                 "requests, min_requests %llu", (unsigned long long)c->requests,
                 (unsigned long long)v->requests, (unsigned long long)p->min_requests);
        short_of_data(out, in, what);
        return;
    }
    if (out->lo > p->max_error_rate_increase) {
        verdict(out, METRICS_GATE_FAIL, "error rate %.2f %% vs %.2f %%: the difference is at "
                "least %+.2f points (look %d, level %.4f), over the %.2f allowed",
                100 * out->err_version, 100 * out->err_control, 100 * out->lo, in->look,
                out->alpha, 100 * p->max_error_rate_increase);
        return;
    }
    if (p->max_p99_ratio > 0 && out->p99_ratio > p->max_p99_ratio) {
        verdict(out, METRICS_GATE_FAIL, "p99 %.1f ms vs %.1f ms: ratio %.2f over %.2f",
                out->p99_version_ms, out->p99_control_ms, out->p99_ratio, p->max_p99_ratio);
        return;
    }
    verdict(out, METRICS_GATE_PASS, "error rate %.2f %% vs %.2f %% (difference at least "
            "%+.2f points), p99 ratio %.2f", 100 * out->err_version, 100 * out->err_control,
            100 * out->lo, out->p99_ratio);
}
