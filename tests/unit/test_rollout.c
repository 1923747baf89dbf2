/* The rollout gate: simulated rollouts for its error budget and power, and
 * the small cases (hold, timeout, p99, agreement). Deterministic: seeded. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/metrics.h"
#include "check.h"

static bool
near(double a, double b, double eps)
{
    return fabs(a - b) <= eps;
}

/* ---- a seeded generator and exact binomial draws ---------------------- */

static uint64_t
rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);      /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double
uniform01(uint64_t *s)          /* (0, 1) */
{
    return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

/* Errors among n requests at rate p: jump from error to error with
 * geometric gaps, so the cost is the number of errors, not of requests. */
static uint64_t
binomial(uint64_t *s, uint64_t n, double p)
{
    if (p <= 0)
        return 0;
    double lq = log1p(-p), pos = 0;
    uint64_t k = 0;
    for (;;) {
        pos += floor(log(uniform01(s)) / lq) + 1;
        if (pos > (double)n)
            return k;
        k++;
    }
}

/* ---- simulated rollouts ------------------------------------------------ */

#define SIM_ROLLOUTS 10000
#define SIM_STEPS 4
static const int sim_share[SIM_STEPS] = {5, 10, 25, 50};
/* 100 requests a second over a 300 s step, split between the version (at
 * the step's share) and the control (the rest). */
#define SIM_PER_STEP 30000

struct sim_outcome {
    int caught_at[SIM_STEPS + 1];       /* rollouts failed at gate k (index k-1); [SIM_STEPS]: never */
    int naive_failed;                   /* a fixed 95 % interval at every gate */
};

static void
side(struct metrics_gate_side *sd, uint64_t n, uint64_t e)
{
    memset(sd, 0, sizeof(*sd));
    sd->requests = n;
    sd->errors = e;
    /* The same latency shape on both sides: this simulation is about error
     * rates, so the p99 ratio is 1. */
    sd->lat[3] = n - n / 100;
    sd->lat[4] = n / 100;
}

static void
simulate(uint64_t seed, double p_c, double p_v, double margin, struct sim_outcome *o)
{
    struct metrics_gate_params gp = {.min_requests = 200, .max_error_rate_increase = margin,
                                     .max_p99_ratio = 1.5, .min_agreement = 0.99};
    uint64_t s = seed;
    memset(o, 0, sizeof(*o));
    for (int r = 0; r < SIM_ROLLOUTS; r++) {
        int caught = SIM_STEPS;
        bool naive = false;
        for (int k = 0; k < SIM_STEPS; k++) {
            uint64_t n_v = (uint64_t)SIM_PER_STEP * sim_share[k] / 100, n_c = SIM_PER_STEP - n_v;
            uint64_t e_c = binomial(&s, n_c, p_c), e_v = binomial(&s, n_v, p_v);
            struct metrics_gate_input in = {.look = k + 1, .looks = SIM_STEPS,
                                            .elapsed_s = 300, .step_s = 300};
            side(&in.control, n_c, e_c);
            side(&in.version, n_v, e_v);
            struct metrics_gate_result res;
            metrics_gate(&gp, &in, &res);
            if (res.verdict == METRICS_GATE_FAIL && caught == SIM_STEPS)
                caught = k;
            /* What Flagger- or Argo-style fixed thresholds do: a fresh
             * 95 % interval at each look. */
            struct metrics_compare mc;
            metrics_compare_errors(n_c, e_c, n_v, e_v, &mc);
            naive |= mc.lo > margin;
            if (caught < SIM_STEPS && naive)
                break;
        }
        o->caught_at[caught]++;
        o->naive_failed += naive;
    }
}

static double
frac(int n)
{
    return (double)n / SIM_ROLLOUTS;
}

static void
test_equal_versions_rarely_rolled_back(void)
{
    struct sim_outcome plan, worst;
    simulate(1, 0.02, 0.02, 0.01, &plan);
    simulate(2, 0.02, 0.02, 0.0, &worst);
    double rb_plan = 1 - frac(plan.caught_at[SIM_STEPS]);
    double rb_worst = 1 - frac(worst.caught_at[SIM_STEPS]);
    printf("     equal versions at 2 %%, %d rollouts of 5/10/25/50 %% x %d requests:\n"
           "       max_error_rate_increase 0.01: %.2f %% rolled back (fixed 95 %% per look: "
           "%.2f %%)\n"
           "       max_error_rate_increase 0:    %.2f %% rolled back (fixed 95 %% per look: "
           "%.2f %%)\n", SIM_ROLLOUTS, SIM_PER_STEP, 100 * rb_plan, 100 * frac(plan.naive_failed),
           100 * rb_worst, 100 * frac(worst.naive_failed));
    CHECK(rb_plan <= 0.05, "%.4f of equal versions rolled back", rb_plan);
    /* At a margin of 0 the null is on the boundary: the whole budget is
     * at stake, and the fixed interval shows the peeking problem. */
    CHECK(rb_worst <= 0.05, "%.4f of equal versions rolled back at margin 0", rb_worst);
    CHECK(frac(worst.naive_failed) > 0.05, "the peeking problem did not show (%.4f)",
          frac(worst.naive_failed));
}

static void
test_twice_the_error_rate_caught_early(void)
{
    struct sim_outcome o, z;
    simulate(3, 0.02, 0.04, 0.01, &o);
    simulate(4, 0.02, 0.04, 0.0, &z);
    double by2 = frac(o.caught_at[0] + o.caught_at[1]);
    double by2z = frac(z.caught_at[0] + z.caught_at[1]);
    printf("     2 %% -> 4 %%, max_error_rate_increase 0.01: caught at gate 1 %.2f %%, by gate 2 "
           "%.2f %%, at all %.2f %%\n", 100 * frac(o.caught_at[0]), 100 * by2,
           100 * (1 - frac(o.caught_at[SIM_STEPS])));
    printf("     2 %% -> 4 %%, max_error_rate_increase 0:    caught at gate 1 %.2f %%, by gate 2 "
           "%.2f %%, at all %.2f %%\n", 100 * frac(z.caught_at[0]), 100 * by2z,
           100 * (1 - frac(z.caught_at[SIM_STEPS])));
    CHECK(by2 > 0.5, "only %.4f caught by the second gate", by2);
    CHECK(by2z > by2, "a margin of 0 catches more (%.4f vs %.4f)", by2z, by2);
}

/* ---- small cases ------------------------------------------------------- */

static const struct metrics_gate_params plan = {.min_requests = 200,
                                                .max_error_rate_increase = 0.01,
                                                .max_p99_ratio = 1.5, .min_agreement = 0.99};

static struct metrics_gate_input
step(uint64_t n_c, uint64_t e_c, uint64_t n_v, uint64_t e_v, double elapsed)
{
    struct metrics_gate_input in = {.look = 1, .looks = 4, .elapsed_s = elapsed,
                                    .step_s = 300};
    side(&in.control, n_c, e_c);
    side(&in.version, n_v, e_v);
    return in;
}

static void
test_alpha_spending(void)
{
    double sum = 0;
    for (int k = 1; k <= 4 + 60; k++)
        sum += metrics_gate_alpha(k, 4);
    CHECK(sum <= METRICS_GATE_ALPHA + 1e-15, "every look together spends %.6f", sum);
    CHECK(near(metrics_gate_alpha(1, 4), 0.011875, 1e-12), "look 1 of 4: %f",
          metrics_gate_alpha(1, 4));
    CHECK(metrics_gate_alpha(5, 4) < metrics_gate_alpha(4, 4) &&
          metrics_gate_alpha(6, 4) < metrics_gate_alpha(5, 4), "unplanned looks pay less");
    CHECK(near(metrics_normal_quantile(0.025), 1.959964, 1e-6), "z 0.025 %f",
          metrics_normal_quantile(0.025));
    CHECK(near(metrics_normal_quantile(0.5), 0, 1e-9), "z 0.5");

    struct metrics_gate_input in = step(10000, 200, 2000, 40, 300);
    struct metrics_gate_result r;
    metrics_gate(&plan, &in, &r);
    CHECK(near(r.z, 2.5164, 1e-3), "look 1 of 4: z %f", r.z);
    CHECK(r.verdict == METRICS_GATE_PASS && near(r.diff, 0, 1e-12) && r.lo < 0 && r.hi > 0,
          "equal: %s %f [%f, %f]", r.reason, r.diff, r.lo, r.hi);
    CHECK(near(r.hi - r.diff, r.diff - r.lo, 1e-12) && near(r.p99_ratio, 1, 1e-9), "symmetric");
}

static void
test_clearly_worse_fails_at_the_first_gate(void)
{
    /* 2 % vs 10 % on 1,500 requests: the bound is far above one point. */
    struct metrics_gate_input in = step(28500, 570, 1500, 150, 300);
    struct metrics_gate_result r;
    metrics_gate(&plan, &in, &r);
    printf("     %s: %s\n", metrics_gate_verdict_name(r.verdict), r.reason);
    CHECK(r.verdict == METRICS_GATE_FAIL, "verdict %d", r.verdict);
    CHECK(r.n_control == 28500 && r.n_version == 1500, "counts");
    CHECK(near(r.err_control, 0.02, 1e-12) && near(r.err_version, 0.10, 1e-12), "rates");
    CHECK(r.lo > 0.01 && strstr(r.reason, "error rate") != NULL, "lo %f: %s", r.lo, r.reason);

    /* 2.5 % vs 2 %: worse, but the bound is not over the allowed point. */
    in = step(28500, 570, 1500, 38, 300);
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "small increase: %s", r.reason);
}

static void
test_hold_and_timeout(void)
{
    struct metrics_gate_result r;
    struct metrics_gate_input in = step(28500, 570, 1500, 150, 120);
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_HOLD && strcmp(r.reason, "step running") == 0,
          "before step_s: %s", r.reason);

    /* 150 version requests < min_requests 200: hold, whatever the errors. */
    for (uint64_t e = 0; e <= 150; e += 50) {
        in = step(5000, 100, 150, e, 300);
        metrics_gate(&plan, &in, &r);
        CHECK(r.verdict == METRICS_GATE_HOLD, "%llu errors: %s", (unsigned long long)e,
              r.reason);
    }
    CHECK(strstr(r.reason, "150 version") != NULL, "reason names the count: %s", r.reason);
    in = step(150, 3, 5000, 100, 300);
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_HOLD, "control short: %s", r.reason);

    in = step(5000, 100, 150, 3, 899);
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_HOLD, "at 899 s of 300 s steps: still held");
    in = step(5000, 100, 150, 3, 900);
    metrics_gate(&plan, &in, &r);
    printf("     %s: %s\n", metrics_gate_verdict_name(r.verdict), r.reason);
    CHECK(r.verdict == METRICS_GATE_FAIL && strstr(r.reason, "3 x step_s") != NULL,
          "at 3 x step_s it fails: %s", r.reason);
    in = step(5000, 100, 200, 4, 900);
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "exactly min_requests after a hold: %s", r.reason);
}

static void
test_p99_ratio(void)
{
    struct metrics_gate_input in = step(10000, 200, 1000, 20, 300);
    /* Control: 99 % within 5 ms, 1 % within 10 ms. Version: the same
     * shape one bucket later in both places (10 ms, 25 ms). */
    memset(in.version.lat, 0, sizeof(in.version.lat));
    in.version.lat[4] = 990;
    in.version.lat[5] = 10;
    struct metrics_gate_result r;
    metrics_gate(&plan, &in, &r);
    printf("     %s: %s\n", metrics_gate_verdict_name(r.verdict), r.reason);
    CHECK(near(r.p99_control_ms, 5.0, 1e-9) && near(r.p99_version_ms, 10.0, 1e-9),
          "p99 %f %f", r.p99_control_ms, r.p99_version_ms);
    CHECK(r.verdict == METRICS_GATE_FAIL && near(r.p99_ratio, 2.0, 1e-9) &&
          strstr(r.reason, "p99") != NULL, "ratio 2 over 1.5: %s", r.reason);

    struct metrics_gate_params loose = plan;
    loose.max_p99_ratio = 2.5;
    metrics_gate(&loose, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "ratio 2 under 2.5: %s", r.reason);
    loose.max_p99_ratio = 0;
    metrics_gate(&loose, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "not checked at 0: %s", r.reason);
}

static void
test_agreement_before_first_live_step(void)
{
    struct metrics_gate_agreement a = {.compared = 1000, .equal = 985};
    struct metrics_gate_input in = step(0, 0, 0, 0, 300);   /* no live traffic yet */
    in.agreement = &a;
    struct metrics_gate_result r;
    metrics_gate(&plan, &in, &r);
    printf("     %s: %s\n", metrics_gate_verdict_name(r.verdict), r.reason);
    CHECK(r.verdict == METRICS_GATE_FAIL && r.has_agreement && near(r.agreement, 0.985, 1e-12),
          "98.5 %% < 99 %%: %s", r.reason);
    CHECK(r.agreement_lo < 0.985 && r.agreement_hi > 0.985 && r.agreement_hi < 1, "interval "
          "[%f, %f]", r.agreement_lo, r.agreement_hi);

    a.equal = 995;
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "99.5 %%: %s", r.reason);
    a.equal = 990;
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_PASS, "exactly 99 %%: %s", r.reason);

    a.compared = 150;
    a.equal = 150;
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_HOLD, "150 comparisons: %s", r.reason);
    in.elapsed_s = 900;
    metrics_gate(&plan, &in, &r);
    CHECK(r.verdict == METRICS_GATE_FAIL && strstr(r.reason, "3 x step_s"), "timeout: %s",
          r.reason);
}

static void
test_side_from_counters(void)
{
    uint64_t v[M_COUNT] = {0};
    v[M_REQUESTS] = 500;
    v[M_5XX] = 7;
    v[M_4XX] = 30;                      /* client errors are not the version's */
    v[M_LAT_FIRST + 2] = 480;
    v[M_LAT_FIRST + 14] = 20;
    struct metrics_gate_side sd;
    metrics_gate_side_from(&sd, v);
    CHECK(sd.requests == 500 && sd.errors == 7 && sd.lat[2] == 480 && sd.lat[14] == 20 &&
          sd.lat[0] == 0, "side");
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"alpha spent across looks", test_alpha_spending},
        {"clearly worse fails at the first gate", test_clearly_worse_fails_at_the_first_gate},
        {"hold, then fail at 3 x step_s", test_hold_and_timeout},
        {"p99 ratio", test_p99_ratio},
        {"agreement before the first live step", test_agreement_before_first_live_step},
        {"side from counters", test_side_from_counters},
        {"equal versions: at most 5 % rolled back", test_equal_versions_rarely_rolled_back},
        {"twice the error rate: caught by the second gate", test_twice_the_error_rate_caught_early},
        {NULL, NULL},
    };
    return run_tests(tests);
}
