/* The plain effective split: exact proportions over windows of requests. */
#include <stdlib.h>
#include <string.h>

#include "routing/routing.h"
#include "check.h"

static struct cfg_endpoint
endpoint(int n, const int *effective)
{
    struct cfg_endpoint ep;
    memset(&ep, 0, sizeof(ep));
    ep.n_versions = n;
    for (int i = 0; i < n; i++)
        ep.versions[i].effective = effective[i];
    return ep;
}

/* Every window of 10,000 consecutive picks over 50,000 stays within one
 * percentage point (100 picks) of each effective share. */
static void
check_windows(int n, const int *eff)
{
    struct cfg_endpoint ep = endpoint(n, eff);
    struct route_split s;
    enum { TOTAL = 50000, WIN = 10000 };
    static int picks[TOTAL];
    route_split_init(&s, &ep);
    for (int i = 0; i < TOTAL; i++)
        picks[i] = route_split_next(&s);
    int count[CFG_MAX_VERSIONS] = {0};
    int worst = 0;
    for (int i = 0; i < TOTAL; i++) {
        count[picks[i]]++;
        if (i >= WIN)
            count[picks[i - WIN]]--;
        if (i >= WIN - 1)
            for (int v = 0; v < n; v++) {
                int d = abs(count[v] - eff[v]);   /* eff in hundredths = picks per 10,000 */
                if (d > worst)
                    worst = d;
            }
    }
    CHECK(worst <= 100, "%d versions: worst window deviation %d picks", n, worst);
    CHECK(worst <= 6, "smooth WRR should be within a few picks, got %d", worst);
}

static void
test_two_versions(void)
{
    int eff[] = {9000, 1000};
    check_windows(2, eff);
}

static void
test_six_versions_decimals(void)
{
    int eff[] = {3333, 1667, 1250, 1250, 1, 2499};
    check_windows(6, eff);
}

static void
test_zero_never_chosen(void)
{
    int eff[] = {10000, 0, 0};
    struct cfg_endpoint ep = endpoint(3, eff);
    struct route_split s;
    route_split_init(&s, &ep);
    int other = 0;
    for (int i = 0; i < 20000; i++)
        if (route_split_next(&s) != 0)
            other++;
    CHECK(other == 0, "a 0 %% version was chosen %d times", other);

    int eff2[] = {0, 10000};
    ep = endpoint(2, eff2);
    route_split_init(&s, &ep);
    other = 0;
    for (int i = 0; i < 1000; i++)
        if (route_split_next(&s) != 1)
            other++;
    CHECK(other == 0, "only the version with the whole share is chosen");
}

static void
test_exact_counts(void)
{
    int eff[] = {9000, 1000};
    struct cfg_endpoint ep = endpoint(2, eff);
    struct route_split s;
    route_split_init(&s, &ep);
    int c[2] = {0, 0};
    for (int i = 0; i < 1000; i++)
        c[route_split_next(&s)]++;
    CHECK(c[0] == 900 && c[1] == 100, "1000 picks: %d / %d", c[0], c[1]);
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"two versions 90/10", test_two_versions},
        {"six versions with decimals", test_six_versions_decimals},
        {"zero-share versions", test_zero_never_chosen},
        {"exact counts", test_exact_counts},
        {NULL, NULL},
    };
    return run_tests(tests);
}
