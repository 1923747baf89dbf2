/* One shadow copy's comparison (gateway/compare.c, SPEC §7): both orders of
 * ending, the budget, deferral to the worker's loop, counting and samples.
 * The pure comparison it calls (compare/) is tested in test_compare.c. */
#include <event2/event.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/internal.h"
#include "check.h"

static json_t *
J(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (j == NULL)
        fprintf(stderr, "bad test JSON %s: %s\n", text, e.text);
    return j;
}

/* ---- one copy's comparison, both orders of ending ---------------------- */

static struct worker tw;
static struct metrics_backlog *tb;
static struct config *tcfg;
static uint64_t got[M_COUNT];

static void
take(void *arg, const char *ep, const char *version, const char *group, uint32_t minute,
     const uint64_t *v)
{
    if (minute == 0)
        return;
    for (int k = 0; k < M_COUNT; k++)
        got[k] += v[k];
}

static char last_sample[1024];

static void
take_diff(void *arg, const char *ep, const char *version, int keep, const char *text)
{
    snprintf(last_sample, sizeof(last_sample), "%s", text);
}

/* The counters of the mirror version since the last call. */
static void
collect(void)
{
    uint64_t rej[REJ_COUNT];
    memset(got, 0, sizeof(got));
    metrics_collect(tb, &tw.metrics, 1);
    metrics_backlog_drain(tb, take, NULL, rej);
    last_sample[0] = '\0';
    metrics_diff_take(tw.metrics, take_diff, NULL);
}

static struct config *
cfg_with(const char *compare, const char *limits)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],%s\"endpoints\":[{\"name\":"
             "\"ep1\",\"auth\":{\"keys\":false},\"versions\":[{\"name\":\"live\",\"upstreams\":"
             "[\"127.0.0.1:1\"]},{\"name\":\"shadow\",\"upstreams\":[\"127.0.0.1:2\"],"
             "\"traffic_percentile\":0,\"mirror_percentile\":50,\"compare\":%s}]}]}",
             limits, compare);
    json_t *doc = J(text);
    struct cfg_errors e;
    cfg_errors_init(&e);
    struct config *c = config_parse(doc, NULL, &e);
    if (c == NULL)
        fprintf(stderr, "config: %s\n", e.msg[0]);
    cfg_errors_free(&e);
    json_decref(doc);
    return c;
}

/* One comparison: live and shadow answers, ended in the given order. */
static void
one(int live_status, const char *live, int shadow_status, const char *shadow, bool live_ok,
    bool shadow_ok, bool live_first)
{
    const struct cfg_endpoint *ep = &tcfg->endpoints[0];
    struct shadow_cmp *c = cmp_new(&tw, tcfg, ep, 1, "req-1");
    static const uint8_t trace_id[16] = {0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd,
                                         0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c};
    if (c == NULL)
        return;
    cmp_set_trace(c, trace_id);
    cmp_head(c, CMP_SHADOW, shadow_status);
    cmp_body(c, CMP_SHADOW, shadow, strlen(shadow));
    cmp_head(c, CMP_LIVE, live_status);
    cmp_body(c, CMP_LIVE, live, strlen(live));
    if (live_first) {
        cmp_end(c, CMP_LIVE, live_ok);
        CHECK(tw.cmp_retained <= strlen(live) + strlen(shadow), "held until both end");
        cmp_end(c, CMP_SHADOW, shadow_ok);
    } else {
        cmp_end(c, CMP_SHADOW, shadow_ok);
        cmp_end(c, CMP_LIVE, live_ok);
    }
    /* A live side ending last leaves the walk to a callback of the loop. */
    event_base_loop(tw.base, EVLOOP_NONBLOCK);
    CHECK(tw.cmp_retained == 0, "everything let go: %llu", (unsigned long long)tw.cmp_retained);
}

static void
test_lifecycle(void)
{
    tw.base = event_base_new();
    tw.thread = pthread_self();         /* comparisons may wait for this loop */
    tw.metrics = metrics_worker_new();
    tb = metrics_backlog_new(1000);
    tcfg = cfg_with("{\"mode\":\"json\",\"abs_tol\":0.01,\"ignore\":[\"t\"],\"samples\":2}", "");
    CHECK(tcfg != NULL, "config");
    if (tcfg == NULL)
        return;
    for (int order = 0; order < 2; order++) {
        one(200, "{\"s\":0.5,\"t\":1}", 200, "{\"t\":2,\"s\":0.505}", true, true, order);
        collect();
        CHECK(got[M_CMP_TOTAL] == 1 && got[M_CMP_EQUAL] == 1 && got[M_REQUESTS] == 0,
              "equal within tolerance, order %d", order);
        CHECK(last_sample[0] == '\0', "no sample for an equal answer");
        one(200, "{\"s\":0.5}", 200, "{\"s\":0.6}", true, true, order);
        collect();
        CHECK(got[M_CMP_DIFFERENT] == 1, "different, order %d", order);
        json_t *smp = J(last_sample);
        CHECK(smp && strcmp(json_string_value(json_object_get(smp, "path")), "s") == 0 &&
              strcmp(json_string_value(json_object_get(smp, "live")), "0.5") == 0 &&
              strcmp(json_string_value(json_object_get(smp, "shadow")), "0.6") == 0 &&
              strcmp(json_string_value(json_object_get(smp, "request_id")), "req-1") == 0 &&
              strcmp(json_string_value(json_object_get(smp, "trace_id")),
                     "0af7651916cd43dd8448eb211c80319c") == 0,
              "sample %s", last_sample);
        json_decref(smp);
        one(200, "{}", 500, "{}", true, true, order);
        collect();
        CHECK(got[M_CMP_STATUS_MISMATCH] == 1, "status mismatch");
        one(200, "{}", 200, "{}", false, true, order);
        one(200, "{}", 200, "{}", true, false, order);
        collect();
        CHECK(got[M_CMP_UNKNOWN] == 2 && got[M_CMP_TOTAL] == 2, "a failed side is unknown");
        one(200, "not json", 200, "not json", true, true, order);
        one(200, "not json", 200, "not jsoN", true, true, order);
        collect();
        CHECK(got[M_CMP_EQUAL] == 1 && got[M_CMP_DIFFERENT] == 1, "identical bytes, or not");
    }
    /* Not in front of the live answer: when the live side ends last, the
     * bodies are walked after the current callback, which flushes the client. */
    const struct cfg_endpoint *ep0 = &tcfg->endpoints[0];
    struct shadow_cmp *d1 = cmp_new(&tw, tcfg, ep0, 1, "d1");
    struct shadow_cmp *d2 = cmp_new(&tw, tcfg, ep0, 1, "d2");
    struct shadow_cmp *d3 = cmp_new(&tw, tcfg, ep0, 1, "d3");
    const char *bodies[3][2] = {{"{\"s\":1}", "{\"s\":2}"}, {"{\"s\":1}", "{\"s\": 1}"},
                                {"{\"s\":1}", "{\"s\":1}"}};
    struct shadow_cmp *ds[3] = {d1, d2, d3};
    for (int i = 0; i < 3; i++) {
        cmp_head(ds[i], CMP_SHADOW, 200);
        cmp_body(ds[i], CMP_SHADOW, bodies[i][1], strlen(bodies[i][1]));
        cmp_end(ds[i], CMP_SHADOW, true);
        cmp_head(ds[i], CMP_LIVE, 200);
        cmp_body(ds[i], CMP_LIVE, bodies[i][0], strlen(bodies[i][0]));
        cmp_end(ds[i], CMP_LIVE, true);
    }
    collect();
    CHECK(got[M_CMP_TOTAL] == 1 && got[M_CMP_EQUAL] == 1 && tw.cmp_retained == 29,
          "identical bodies at once, the two others wait: %llu %llu",
          (unsigned long long)got[M_CMP_TOTAL], (unsigned long long)tw.cmp_retained);
    event_base_loop(tw.base, EVLOOP_NONBLOCK);
    collect();
    CHECK(got[M_CMP_TOTAL] == 2 && got[M_CMP_EQUAL] == 1 && got[M_CMP_DIFFERENT] == 1 &&
          tw.cmp_retained == 0, "then run by the loop");
    /* Off the worker's thread (freeing after a stop): at once. */
    tw.thread = (pthread_t)0;
    d1 = cmp_new(&tw, tcfg, ep0, 1, "d4");
    cmp_head(d1, CMP_SHADOW, 200);
    cmp_body(d1, CMP_SHADOW, "[1]", 3);
    cmp_end(d1, CMP_SHADOW, true);
    cmp_head(d1, CMP_LIVE, 200);
    cmp_body(d1, CMP_LIVE, "[2]", 3);
    cmp_end(d1, CMP_LIVE, true);
    tw.thread = pthread_self();
    collect();
    CHECK(got[M_CMP_DIFFERENT] == 1 && tw.cmp_retained == 0, "counted without the loop");
    config_drop(tcfg);

    /* max_bytes, and the budget: past either, unknown, nothing held. */
    tcfg = cfg_with("{\"mode\":\"json\",\"max_bytes\":10}", "");
    one(200, "{\"s\":\"0123456789\"}", 200, "{}", true, true, true);
    collect();
    CHECK(got[M_CMP_UNKNOWN] == 1, "over max_bytes");
    config_drop(tcfg);
    tcfg = cfg_with("{\"mode\":\"json\"}", "\"limits\":{\"compare_budget_bytes\":16},");
    const struct cfg_endpoint *ep = &tcfg->endpoints[0];
    struct shadow_cmp *a = cmp_new(&tw, tcfg, ep, 1, "a");
    struct shadow_cmp *b = cmp_new(&tw, tcfg, ep, 1, "b");
    cmp_head(a, CMP_LIVE, 200);
    cmp_body(a, CMP_LIVE, "{\"x\":12345678}", 14);
    cmp_head(b, CMP_LIVE, 200);
    cmp_body(b, CMP_LIVE, "{\"x\":12345678}", 14);
    CHECK(tw.cmp_retained == 14, "the second does not fit: %llu",
          (unsigned long long)tw.cmp_retained);
    cmp_end(a, CMP_LIVE, true);
    cmp_end(b, CMP_LIVE, true);
    cmp_end(b, CMP_SHADOW, true);
    cmp_end(a, CMP_SHADOW, true);
    collect();
    CHECK(got[M_CMP_UNKNOWN] == 2 && tw.cmp_retained == 0, "budget: unknown, all freed");
    config_drop(tcfg);

    /* Bodies in pieces, and a head that starts a body again: kept whole,
     * the room doubling reserved given back at the end. */
    tcfg = cfg_with("{\"mode\":\"json\"}", "");
    ep = &tcfg->endpoints[0];
    char piece[1000];
    memset(piece, ' ', sizeof(piece));
    for (int empty = 0; empty < 2; empty++) {
        a = cmp_new(&tw, tcfg, ep, 1, "p");
        cmp_head(a, CMP_LIVE, 200);
        for (int i = 0; i < 10; i++)
            cmp_body(a, CMP_LIVE, piece, sizeof(piece));
        cmp_head(a, CMP_LIVE, 200);         /* a retried answer */
        if (!empty) {
            cmp_body(a, CMP_LIVE, "[1,", 3);
            for (int i = 0; i < 10; i++)
                cmp_body(a, CMP_LIVE, piece, sizeof(piece));
            cmp_body(a, CMP_LIVE, "2]", 2);
        }
        CHECK(tw.cmp_retained == (empty ? 0 : 10005), "only the retry's bytes: %llu",
              (unsigned long long)tw.cmp_retained);
        cmp_end(a, CMP_LIVE, true);
        cmp_head(a, CMP_SHADOW, 200);
        cmp_body(a, CMP_SHADOW, empty ? "" : "[1,2]", empty ? 0 : 5);
        cmp_end(a, CMP_SHADOW, true);
        collect();
        CHECK(got[M_CMP_EQUAL] == 1 && tw.cmp_retained == 0, "in pieces, equal (%d)", empty);
    }
    config_drop(tcfg);

    /* exact: SHA-256 of any split of the same bytes. */
    tcfg = cfg_with("{\"mode\":\"exact\"}", "");
    ep = &tcfg->endpoints[0];
    a = cmp_new(&tw, tcfg, ep, 1, "a");
    cmp_head(a, CMP_LIVE, 200);
    cmp_body(a, CMP_LIVE, "hello ", 6);
    cmp_body(a, CMP_LIVE, "world", 5);
    cmp_head(a, CMP_SHADOW, 200);
    cmp_body(a, CMP_SHADOW, "hello world", 11);
    CHECK(tw.cmp_retained == 0, "exact holds no body");
    cmp_end(a, CMP_SHADOW, true);
    cmp_end(a, CMP_LIVE, true);
    one(200, "hello world", 200, "hello worle", true, true, false);
    collect();
    CHECK(got[M_CMP_EQUAL] == 1 && got[M_CMP_DIFFERENT] == 1, "exact equal, then different");
    config_drop(tcfg);
    metrics_backlog_free(tb);
    metrics_worker_free(tw.metrics);
    event_base_free(tw.base);
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"comparison lifecycle", test_lifecycle},
        {NULL, NULL},
    };
    return run_tests(tests);
}
