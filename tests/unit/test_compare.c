/* Shadow comparison's pure parts (gateway/compare.c, SPEC §7): JSON with
 * tolerances and ignored member paths, the first differing path, excerpts
 * cut at a character boundary; and the config's "compare" object. */
#include <event2/event.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/gateway.h"
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

/* Compare two texts under cc; path gets the first differing path. */
static bool
eq(const char *a, const char *b, const struct cfg_compare *cc, char *path, size_t cap)
{
    json_t *ja = J(a), *jb = J(b), *da, *db;
    cmp_json_strip(ja, cc->ignore, cc->n_ignore);
    cmp_json_strip(jb, cc->ignore, cc->n_ignore);
    bool r = cmp_json_equal(ja, jb, cc, path, cap, &da, &db);
    json_decref(ja);
    json_decref(jb);
    return r;
}

static void
test_exact_values(void)
{
    struct cfg_compare cc = {.mode = CFG_COMPARE_JSON};
    char p[256];
    CHECK(eq("{\"a\":1,\"b\":[1,2,\"x\"]}", "{\"b\":[1,2,\"x\"],\"a\":1}", &cc, p, sizeof(p)),
          "objects by key, any order");
    CHECK(!eq("{\"a\":1}", "{\"a\":2}", &cc, p, sizeof(p)) && strcmp(p, "a") == 0, "path %s", p);
    CHECK(eq("{\"a\":1}", "{\"a\":1.0}", &cc, p, sizeof(p)), "1 and 1.0 are the same number");
    CHECK(!eq("{\"a\":\"1\"}", "{\"a\":1}", &cc, p, sizeof(p)) && strcmp(p, "a") == 0,
          "string vs number");
    CHECK(!eq("[1,2,3]", "[1,2]", &cc, p, sizeof(p)) && strcmp(p, "[2]") == 0, "length %s", p);
    CHECK(!eq("{\"a\":{\"b\":[0,{\"c\":true}]}}", "{\"a\":{\"b\":[0,{\"c\":false}]}}", &cc, p,
              sizeof(p)) && strcmp(p, "a.b[1].c") == 0, "nested path %s", p);
    CHECK(!eq("{\"a\":1}", "{\"a\":1,\"z\":null}", &cc, p, sizeof(p)) && strcmp(p, "z") == 0,
          "member only in the shadow %s", p);
    CHECK(!eq("{\"a\":1,\"y\":2}", "{\"a\":1}", &cc, p, sizeof(p)) && strcmp(p, "y") == 0,
          "member only live %s", p);
    CHECK(!eq("1", "\"x\"", &cc, p, sizeof(p)) && strcmp(p, "$") == 0, "root %s", p);
    CHECK(eq("null", "null", &cc, p, sizeof(p)) && eq("true", "true", &cc, p, sizeof(p)),
          "literals");
    CHECK(!eq("true", "false", &cc, p, sizeof(p)), "true vs false");
    CHECK(!eq("{\"s\":\"a\\u0000b\"}", "{\"s\":\"a\\u0000c\"}", &cc, p, sizeof(p)),
          "strings with NUL compare whole");
}

static void
test_tolerances(void)
{
    struct cfg_compare cc = {.mode = CFG_COMPARE_JSON, .abs_tol = 1e-6};
    char p[256];
    CHECK(eq("{\"s\":0.5}", "{\"s\":0.5000009}", &cc, p, sizeof(p)), "within abs_tol");
    CHECK(!eq("{\"s\":0.5}", "{\"s\":0.500002}", &cc, p, sizeof(p)) && strcmp(p, "s") == 0,
          "past abs_tol");
    cc.abs_tol = 0;
    cc.rel_tol = 1e-3;
    CHECK(eq("[1000]", "[1000.9]", &cc, p, sizeof(p)), "within rel_tol");
    CHECK(!eq("[1000]", "[1002]", &cc, p, sizeof(p)) && strcmp(p, "[0]") == 0, "past rel_tol");
    CHECK(!eq("[0]", "[1e-9]", &cc, p, sizeof(p)), "rel_tol alone: 0 equals only 0");
    cc.abs_tol = 1e-6;
    CHECK(eq("[0]", "[1e-9]", &cc, p, sizeof(p)), "either tolerance is enough");
    cc.abs_tol = cc.rel_tol = 0;
    CHECK(eq("[9007199254740993]", "[9007199254740993]", &cc, p, sizeof(p)),
          "large integers exactly");
    CHECK(!eq("[9007199254740993]", "[9007199254740992]", &cc, p, sizeof(p)),
          "large integers that a double cannot tell apart still differ");
}

static void
test_ignore(void)
{
    char *ign[] = {"meta.timing_ms", "nonce", "absent.path", NULL};
    struct cfg_compare cc = {.mode = CFG_COMPARE_JSON, .ignore = ign, .n_ignore = 3};
    char p[256];
    CHECK(eq("{\"score\":1,\"nonce\":\"ab\",\"meta\":{\"timing_ms\":3,\"m\":\"x\"}}",
             "{\"score\":1,\"nonce\":\"cd\",\"meta\":{\"timing_ms\":9,\"m\":\"x\"}}", &cc, p,
             sizeof(p)), "ignored members");
    CHECK(!eq("{\"meta\":{\"timing_ms\":3,\"m\":\"x\"}}", "{\"meta\":{\"timing_ms\":3,\"m\":\"y\"}}",
              &cc, p, sizeof(p)) && strcmp(p, "meta.m") == 0, "a sibling still counts %s", p);
    CHECK(eq("{\"nonce\":1}", "{}", &cc, p, sizeof(p)), "ignored on one side only");
    CHECK(eq("[1]", "[1]", &cc, p, sizeof(p)), "non-objects are left alone");
}

static void
test_excerpt(void)
{
    char out[CMP_EXCERPT + 1];
    char big[600];
    memset(big, 'a', sizeof(big));
    CHECK(cmp_excerpt(out, sizeof(out), big, sizeof(big)) == CMP_EXCERPT, "cut to 256");
    /* "é" is two bytes: one starting at byte 255 may not be split. */
    memcpy(big + 255, "\xc3\xa9", 2);
    size_t n = cmp_excerpt(out, sizeof(out), big, sizeof(big));
    CHECK(n == 255 && config_utf8_valid(out, n), "cut before a character: %zu", n);
    n = cmp_excerpt(out, sizeof(out), "ok\xff", 3);
    CHECK(n == 3 && strcmp(out, "ok?") == 0 && config_utf8_valid(out, n), "invalid byte");
    n = cmp_excerpt(out, sizeof(out), "", 0);
    CHECK(n == 0 && out[0] == '\0', "empty");
}

static struct config *
parse(const char *compare, struct cfg_errors *e)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],\"endpoints\":[{\"name\":\"ep1\","
             "\"auth\":{\"keys\":false},\"versions\":[{\"name\":\"live\",\"upstreams\":"
             "[\"127.0.0.1:1\"]},{\"name\":\"shadow\",\"upstreams\":[\"127.0.0.1:2\"],"
             "\"traffic_percentile\":0,\"mirror_percentile\":50,\"compare\":%s}]}]}", compare);
    json_t *doc = J(text);
    cfg_errors_init(e);
    struct config *c = config_parse(doc, NULL, e);
    json_decref(doc);
    return c;
}

static void
test_config(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"mode\":\"json\",\"abs_tol\":1e-6,\"rel_tol\":0.001,"
                             "\"ignore\":[\"meta.timing_ms\",\"nonce\"],\"samples\":5}", &e);
    CHECK(c != NULL, "valid: %s", e.n ? e.msg[0] : "");
    if (c != NULL) {
        const struct cfg_compare *cc = &c->endpoints[0].versions[1].compare;
        CHECK(cc->mode == CFG_COMPARE_JSON && cc->abs_tol == 1e-6 && cc->rel_tol == 0.001 &&
              cc->n_ignore == 2 && strcmp(cc->ignore[0], "meta.timing_ms") == 0 &&
              cc->max_bytes == 65536 && cc->samples == 5, "fields and defaults");
        CHECK(c->endpoints[0].versions[0].compare.mode == CFG_COMPARE_OFF, "off by default");
        CHECK(c->limits.compare_budget_bytes == 16777216, "budget default");
        config_drop(c);
    }
    cfg_errors_free(&e);
    c = parse("{\"mode\":\"exact\"}", &e);
    CHECK(c && c->endpoints[0].versions[1].compare.mode == CFG_COMPARE_EXACT, "exact");
    config_drop(c);
    cfg_errors_free(&e);
    static const struct { const char *compare, *error; } bad[] = {
        {"{\"mode\":\"fuzzy\"}", "endpoints[0].versions[1].compare.mode: must be"},
        {"{\"abs_tol\":-1}", "endpoints[0].versions[1].compare.abs_tol: must be"},
        {"{\"ignore\":[\"a..b\"]}", "endpoints[0].versions[1].compare.ignore[0]: must be"},
        {"{\"ignore\":[\".a\"]}", "endpoints[0].versions[1].compare.ignore[0]: must be"},
        {"{\"ignore\":\"a\"}", "endpoints[0].versions[1].compare.ignore: must be"},
        {"{\"samples\":1001}", "endpoints[0].versions[1].compare.samples: must be"},
        {"{\"max_bytes\":0}", "endpoints[0].versions[1].compare.max_bytes: must be"},
        {"{\"typo\":1}", "endpoints[0].versions[1].compare.typo: unknown field"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = parse(bad[i].compare, &e);
        CHECK(c == NULL && e.n == 1 && strncmp(e.msg[0], bad[i].error, strlen(bad[i].error)) == 0,
              "%s -> %s", bad[i].compare, e.n ? e.msg[0] : "(accepted)");
        config_drop(c);
        cfg_errors_free(&e);
    }
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
    if (c == NULL)
        return;
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
    CHECK(tw.cmp_retained == 0, "everything let go: %llu", (unsigned long long)tw.cmp_retained);
}

static void
test_lifecycle(void)
{
    tw.base = event_base_new();
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
              strcmp(json_string_value(json_object_get(smp, "request_id")), "req-1") == 0,
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
        {"exact values", test_exact_values},
        {"tolerances", test_tolerances},
        {"ignore paths", test_ignore},
        {"excerpts", test_excerpt},
        {"config compare", test_config},
        {"comparison lifecycle", test_lifecycle},
        {NULL, NULL},
    };
    return run_tests(tests);
}
