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
    int eff[] = {9000, 1000};
    struct cfg_endpoint ep = endpoint(2, eff);
    int got[8];
    for (int i = 0; i < 8; i++) {
        char k[32];
        key(k, sizeof(k), i);
        got[i] = route_sticky(&ep, k, strlen(k));
    }
    char line[64] = "";
    for (int i = 0; i < 8; i++)
        sprintf(line + strlen(line), "%d", got[i]);
    printf("     first 8 keys at 90/10: %s\n", line);
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

int
main(void)
{
    static const struct testcase tests[] = {
        {"sticky shares 2 to 6 versions", test_sticky_shares},
        {"sticky is seedless", test_sticky_is_seedless},
        {"ramp moves keys only to the grown version", test_ramp},
        {"health thresholds", test_health_thresholds},
        {"ejection backoff", test_ejection_backoff},
        {"mirror share", test_mirror_share},
        {"shared slots", test_shared_slots},
        {NULL, NULL},
    };
    return run_tests(tests);
}
