/* Sticky assignment, health thresholds, ejection, mirroring: pure logic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"
#include "check.h"

static struct cfg_endpoint
endpoint(int n, const int *eff)
{
    struct cfg_endpoint ep;
    memset(&ep, 0, sizeof(ep));
    ep.n_versions = n;
    for (int i = 0; i < n; i++) {
        snprintf(ep.versions[i].name, sizeof(ep.versions[i].name), "version%c", 'a' + i);
        ep.versions[i].effective = eff[i];
    }
    return ep;
}

static void
key(char *buf, size_t len, int i)
{
    snprintf(buf, len, "user-%d", i);
}

static void
check_shares(int n, const int *eff)
{
    struct cfg_endpoint ep = endpoint(n, eff);
    int count[CFG_MAX_VERSIONS] = {0};
    char k[32];
    for (int i = 0; i < 10000; i++) {
        key(k, sizeof(k), i);
        int v = route_sticky(&ep, k, strlen(k));
        count[v]++;
        CHECK(route_sticky(&ep, k, strlen(k)) == v, "same key, same version");
    }
    for (int v = 0; v < n; v++)
        CHECK(abs(count[v] - eff[v]) <= 150, "%d versions: version %d has %d of 10000 keys, "
              "share %d", n, v, count[v], eff[v]);
}

static void
test_sticky_shares(void)
{
    int two[] = {9000, 1000};
    int three[] = {5000, 3000, 2000};
    int six[] = {3333, 1667, 1250, 1250, 1, 2499};
    int zero[] = {8000, 0, 2000};
    check_shares(2, two);
    check_shares(3, three);
    check_shares(6, six);
    check_shares(3, zero);
    struct cfg_endpoint ep = endpoint(3, zero);
    char k[32];
    for (int i = 0; i < 10000; i++) {
        key(k, sizeof(k), i);
        CHECK(route_sticky(&ep, k, strlen(k)) != 1, "a 0 %% version never gets a key");
    }
}

static void
test_sticky_is_seedless(void)
{
    /* Fixed values: the same in every process, build and restart. */
    CHECK(route_hash("versiona", "user-1", 6) == route_hash("versiona", "user-1", 6), "stable");
    CHECK(route_hash("versiona", "user-1", 6) != route_hash("versionb", "user-1", 6), "per version");
    /* Both ends of the exact layout and the default's middle. */
    int eff[] = {5000, 3000, 2000};
    struct cfg_endpoint ep = endpoint(3, eff);
    char line[64] = "";
    for (int i = 0; i < 16; i++) {
        char k[32];
        key(k, sizeof(k), i);
        snprintf(line + strlen(line), sizeof(line) - strlen(line), "%d",
                 route_sticky(&ep, k, strlen(k)));
    }
    printf("     first 16 keys at 50/30/20: %s\n", line);
    CHECK(strcmp(line, STICKY_GOLDEN) == 0, "assignment changed: %s (golden %s)", line,
          STICKY_GOLDEN);
}

static void
test_ramp(void)
{
    int before[] = {9000, 1000}, after[] = {7000, 3000};
    struct cfg_endpoint a = endpoint(2, before), b = endpoint(2, after);
    int moved = 0, left_b = 0, moved_elsewhere = 0;
    static int orig[10000];
    char k[32];
    for (int i = 0; i < 10000; i++) {
        key(k, sizeof(k), i);
        orig[i] = route_sticky(&a, k, strlen(k));
        int now = route_sticky(&b, k, strlen(k));
        if (now != orig[i]) {
            moved++;
            if (now != 1)
                moved_elsewhere++;
        }
        if (orig[i] == 1 && now != 1)
            left_b++;
    }
    CHECK(abs(moved - 2000) <= 150, "raising versionb 10 -> 30 moved %d keys", moved);
    CHECK(moved_elsewhere == 0, "%d keys moved somewhere other than versionb", moved_elsewhere);
    CHECK(left_b == 0, "%d keys left versionb", left_b);
    int back = 0;
    for (int i = 0; i < 10000; i++) {
        key(k, sizeof(k), i);
        back += route_sticky(&a, k, strlen(k)) == orig[i];
    }
    CHECK(back == 10000, "lowering it back returns exactly those keys (%d)", back);
}

/* ---- exact ramps (SPEC §3.3, §8) and the rendezvous fallback ---------- */

#define RAMP_KEYS 20000
static char ramp_key[RAMP_KEYS][16];
static size_t ramp_len[RAMP_KEYS];

static void
ramp_keys(void)
{
    for (int i = 0; i < RAMP_KEYS; i++) {
        snprintf(ramp_key[i], sizeof(ramp_key[i]), "user-%d", i);
        ramp_len[i] = strlen(ramp_key[i]);
    }
}

static uint64_t
rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);      /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int
rng_below(uint64_t *s, int n)
{
    return (int)(rng_next(s) % (uint64_t)n);
}

/* A fresh endpoint over garbage, so nothing but the split can carry over. */
static void
build(struct cfg_endpoint *ep, int n, int def, const int *eff)
{
    memset(ep, 0xa5, sizeof(*ep));
    ep->n_versions = n;
    ep->default_version = def;
    for (int i = 0; i < n; i++) {
        struct cfg_version *v = &ep->versions[i];
        snprintf(v->name, sizeof(v->name), "model-%c%d", 'a' + i, i * 7);
        v->effective = eff[i];
        v->traffic = eff[i];
        v->mirror = 0;
        v->is_default = i == def;
    }
}

static void
assign(const struct cfg_endpoint *ep, int *out)
{
    for (int i = 0; i < RAMP_KEYS; i++)
        out[i] = route_sticky(ep, ramp_key[i], ramp_len[i]);
}

/* Worst |observed - effective| share over the versions, in basis points. */
static int
share_error(const struct cfg_endpoint *ep, const int *got)
{
    int count[CFG_MAX_VERSIONS] = {0}, worst = 0;
    for (int i = 0; i < RAMP_KEYS; i++)
        count[got[i]]++;
    for (int v = 0; v < ep->n_versions; v++) {
        int bp = (int)((int64_t)count[v] * CFG_PCT_TOTAL / RAMP_KEYS);
        int err = abs(bp - ep->versions[v].effective);
        if (err > worst)
            worst = err;
    }
    return worst;
}

/* A random split of n versions where version x goes from a to b and the
 * default takes the remainder; returns x. */
static int
random_ramp(uint64_t *s, int n, int def, int *eff_a, int *eff_b)
{
    int x;
    do
        x = rng_below(s, n);
    while (x == def);
    int left = CFG_PCT_TOTAL;
    for (int i = 0; i < n; i++) {
        eff_a[i] = eff_b[i] = 0;
        if (i == def || i == x)
            continue;
        /* Others take up to half of what is left; some stay at 0 %. */
        eff_a[i] = eff_b[i] = rng_below(s, 4) == 0 ? 0 : rng_below(s, left / 2 + 1);
        left -= eff_a[i];
    }
    int b = 1 + rng_below(s, left);
    int a = rng_below(s, 5) == 0 ? 0 : rng_below(s, b);
    eff_a[x] = a;
    eff_b[x] = b;
    eff_a[def] = left - a;
    eff_b[def] = left - b;
    return x;
}

static void
test_exact_ramps(void)
{
    static int before[RAMP_KEYS], after[RAMP_KEYS];
    uint64_t s = 13;
    int worst = 0, trials = 0;
    long moved_total = 0, expected_total = 0;

    for (int t = 0; t < 200; t++) {
        int n = 2 + t % 2;                  /* one or two non-default versions */
        int def = rng_below(&s, n);
        int eff_a[CFG_MAX_VERSIONS], eff_b[CFG_MAX_VERSIONS];
        int x = random_ramp(&s, n, def, eff_a, eff_b);
        struct cfg_endpoint a, b;
        build(&a, n, def, eff_a);
        build(&b, n, def, eff_b);
        assign(&a, before);
        assign(&b, after);
        int wrong = 0, moved = 0;
        for (int i = 0; i < RAMP_KEYS; i++) {
            if (before[i] == after[i])
                continue;
            moved++;
            wrong += before[i] != def || after[i] != x;
        }
        CHECK(wrong == 0, "trial %d: %d of %d moved keys did not go default -> version %d "
              "(%d -> %d)", t, wrong, moved, x, eff_a[x], eff_b[x]);
        moved_total += moved;
        expected_total += (long)(eff_b[x] - eff_a[x]) * RAMP_KEYS / CFG_PCT_TOTAL;

        int ea = share_error(&a, before), eb = share_error(&b, after);
        worst = ea > worst ? ea : worst;
        worst = eb > worst ? eb : worst;
        CHECK(ea <= 100 && eb <= 100, "trial %d: a share is %d / %d bp off", t, ea, eb);

        /* Lowering back, on an endpoint rebuilt from nothing, restores
         * every key; so does rebuilding the raised one. */
        struct cfg_endpoint a2, b2;
        build(&b2, n, def, eff_b);
        build(&a2, n, def, eff_a);
        int back = 0, same = 0;
        for (int i = 0; i < RAMP_KEYS; i++) {
            back += route_sticky(&a2, ramp_key[i], ramp_len[i]) == before[i];
            same += route_sticky(&b2, ramp_key[i], ramp_len[i]) == after[i];
        }
        CHECK(back == RAMP_KEYS && same == RAMP_KEYS, "trial %d: back %d, rebuilt %d", t,
              back, same);
        trials++;
    }
    printf("     %d ramps of 1-2 non-default versions: %ld keys moved (%ld expected), "
           "worst share error %.2f points\n", trials, moved_total, expected_total,
           worst / 100.0);
}

static void
test_rendezvous_consistent(void)
{
    static int before[RAMP_KEYS], after[RAMP_KEYS];
    uint64_t s = 29;
    int worst = 0;
    long stray = 0, moved_total = 0;

    for (int t = 0; t < 60; t++) {
        int n = 4 + t % 3;                  /* three to five non-default versions */
        int def = rng_below(&s, n);
        int eff_a[CFG_MAX_VERSIONS], eff_b[CFG_MAX_VERSIONS];
        int x = random_ramp(&s, n, def, eff_a, eff_b);
        struct cfg_endpoint a, b, a2, b2;
        build(&a, n, def, eff_a);
        build(&b, n, def, eff_b);
        assign(&a, before);
        assign(&b, after);
        int lost = 0;
        for (int i = 0; i < RAMP_KEYS; i++) {
            if (before[i] == after[i])
                continue;
            moved_total++;
            lost += before[i] == x;
            /* Not exact: a key the shrinking default loses may go to a
             * third version. Anything else would be a bug. */
            if (after[i] != x) {
                CHECK(before[i] == def, "trial %d: key %d moved %d -> %d", t, i, before[i],
                      after[i]);
                stray++;
            }
        }
        CHECK(lost == 0, "trial %d: version %d grew and lost %d keys", t, x, lost);
        int ea = share_error(&a, before), eb = share_error(&b, after);
        worst = ea > worst ? ea : worst;
        worst = eb > worst ? eb : worst;
        CHECK(ea <= 150 && eb <= 150, "trial %d: a share is %d / %d bp off", t, ea, eb);
        build(&a2, n, def, eff_a);
        build(&b2, n, def, eff_b);
        int back = 0, same = 0;
        for (int i = 0; i < RAMP_KEYS; i++) {
            back += route_sticky(&a2, ramp_key[i], ramp_len[i]) == before[i];
            same += route_sticky(&b2, ramp_key[i], ramp_len[i]) == after[i];
        }
        CHECK(back == RAMP_KEYS && same == RAMP_KEYS, "trial %d: back %d, rebuilt %d", t,
              back, same);
    }
    printf("     60 ramps of 3-5 non-default versions: %ld keys moved, %ld of them from the "
           "default to a third version; worst share error %.2f points\n", moved_total, stray,
           worst / 100.0);
}

static void
test_layout_edits(void)
{
    static int before[RAMP_KEYS], after[RAMP_KEYS];
    /* Appending a version at 0 % next to a live one moves nothing (config
     * order: the newcomer takes the other end), and its first step takes
     * keys only from the default. */
    int one[] = {9000, 1000}, two[] = {9000, 1000, 0}, step[] = {8500, 1000, 500};
    struct cfg_endpoint a, b, c;
    build(&a, 2, 0, one);
    build(&b, 3, 0, two);
    build(&c, 3, 0, step);
    assign(&a, before);
    assign(&b, after);
    CHECK(memcmp(before, after, sizeof(before)) == 0, "appending a 0 %% version moved keys");
    assign(&c, after);
    int wrong = 0, moved = 0;
    for (int i = 0; i < RAMP_KEYS; i++) {
        moved += before[i] != after[i];
        wrong += before[i] != after[i] && (before[i] != 0 || after[i] != 2);
    }
    CHECK(wrong == 0 && abs(moved - 1000) <= 100, "first step: %d moved, %d wrongly", moved,
          wrong);

    /* A mirror serves no live traffic: no keys, whatever its effective. */
    int mir[] = {9000, 1000, 0};
    build(&c, 3, 0, mir);
    c.versions[2].mirror = 1000;
    c.versions[2].effective = 500;          /* not a valid config; defensive */
    assign(&c, after);
    int got = 0;
    for (int i = 0; i < RAMP_KEYS; i++)
        got += after[i] == 2;
    CHECK(got == 0, "a mirror version got %d keys", got);

    /* The default need not be listed first: with it in the middle, the two
     * ends are still the non-default versions in config order. */
    int mid[] = {2000, 5000, 3000};
    build(&c, 3, 1, mid);
    CHECK(route_key_point("k", 1) >= 0 && route_key_point("k", 1) < CFG_PCT_TOTAL, "range");
    int bad = 0;
    for (int i = 0; i < RAMP_KEYS; i++) {
        int p = route_key_point(ramp_key[i], ramp_len[i]);
        int want = p < 2000 ? 0 : p >= 7000 ? 2 : 1;
        bad += route_sticky(&c, ramp_key[i], ramp_len[i]) != want;
    }
    CHECK(bad == 0, "%d keys off the interval layout", bad);
}

static void
test_health_thresholds(void)
{
    struct route_health h = {.healthy = true};
    CHECK(!route_health_observe(&h, false, 3, 2), "1st failure");
    CHECK(!route_health_observe(&h, false, 3, 2), "2nd failure");
    CHECK(route_health_observe(&h, false, 3, 2) && !h.healthy, "3rd failure flips");
    CHECK(!route_health_observe(&h, true, 3, 2) && !h.healthy, "1 success is not enough");
    CHECK(route_health_observe(&h, true, 3, 2) && h.healthy, "2 successes flip back");
    CHECK(!route_health_observe(&h, false, 3, 2), "counts restart");
    CHECK(!route_health_observe(&h, true, 3, 2) && h.healthy && h.failures == 0, "reset");
}

static void
test_ejection_backoff(void)
{
    struct route_eject e = {0};
    CHECK(!route_eject_failure(&e, 3, 1000) && !route_eject_failure(&e, 3, 1000), "below");
    CHECK(route_eject_failure(&e, 3, 1000) && e.until_ms == 2000, "ejected for 1 s");
    CHECK(route_eject_failure(&e, 3, 2000) && e.until_ms == 4000, "again: 2 s");
    CHECK(route_eject_failure(&e, 3, 4000) && e.until_ms == 8000, "then 4 s");
    for (int i = 0; i < 10; i++)
        route_eject_failure(&e, 3, 10000);
    CHECK(e.backoff_ms == ROUTE_EJECT_MAX_MS, "capped at 30 s");
    route_eject_success(&e);
    CHECK(e.until_ms == 0 && e.failures == 0 && e.backoff_ms == 0, "re-admitted");
}

static void
test_mirror_share(void)
{
    int acc = 0, n = 0;
    for (int i = 0; i < 10000; i++)
        n += route_mirror_next(&acc, 1250);
    CHECK(n == 1250, "12.5 %% of 10000 is %d", n);
    acc = 0;
    n = 0;
    for (int i = 0; i < 10000; i++)
        n += route_mirror_next(&acc, 0);
    CHECK(n == 0, "0 %% mirrors nothing");
}

static void
test_shared_slots(void)
{
    struct route_shared *s = route_shared_add("127.0.0.1:1");
    CHECK(route_shared_get("127.0.0.1:1") == s && route_shared_add("127.0.0.1:1") == s, "one");
    CHECK(route_take_slot(s, 2) && route_take_slot(s, 2), "two slots");
    CHECK(!route_take_slot(s, 2), "no third");
    route_give_slot(s);
    CHECK(route_take_slot(s, 2), "freed slot taken");
    CHECK(route_take_slot(s, 0), "no limit");
    route_shared_free_all();
}

/* Issue 17 finding 3: a rolled-back or aborted version refuses pins. */
static void
test_pins_refused(void)
{
    int eff[] = {10000, 0};
    struct cfg_endpoint ep = endpoint(2, eff);
    CHECK(route_pinned(&ep, "versionb", 8) == 1, "pinned");
    CHECK(route_pinned(&ep, "versionz", 8) == ROUTE_PIN_UNKNOWN, "unknown");
    ep.versions[1].rollout.refuses_pins = true;
    CHECK(route_pinned(&ep, "versionb", 8) == ROUTE_PIN_REFUSED, "refused");
    CHECK(route_pinned(&ep, "versiona", 8) == 0, "the other still pinned");
}

int
main(void)
{
    ramp_keys();
    static const struct testcase tests[] = {
        {"pins refused after a rollback", test_pins_refused},
        {"sticky shares 2 to 6 versions", test_sticky_shares},
        {"sticky is seedless", test_sticky_is_seedless},
        {"ramp moves keys only to the grown version", test_ramp},
        {"exact ramps with 1-2 non-default versions", test_exact_ramps},
        {"rendezvous with 3+ non-default versions is consistent", test_rendezvous_consistent},
        {"layout under edits: append, mirror, default in the middle", test_layout_edits},
        {"health thresholds", test_health_thresholds},
        {"ejection backoff", test_ejection_backoff},
        {"mirror share", test_mirror_share},
        {"shared slots", test_shared_slots},
        {NULL, NULL},
    };
    return run_tests(tests);
}
