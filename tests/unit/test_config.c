/* Config validation: every rule of SPEC §2.1, each with its exact path. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "check.h"
#include "config_check.h"

static void
expect_error(const char *endpoints, const char *exact)
{
    struct cfg_errors e;
    struct config *c = parse(endpoints, &e);
    CHECK(c == NULL, "config accepted, expected: %s", exact);
    CHECK(has_error(&e, exact), "missing error \"%s\"; got %d: %s", exact, e.n,
          e.n ? e.msg[0] : "(none)");
    config_drop(c);
    cfg_errors_free(&e);
}

static void
test_valid_example(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"mynewendpoint\",\"versions\":["
        V("versiona", 20, ",\"is_default\":true,\"type\":\"control\"") ","
        V("versionb", 10, "") "]}", &e);
    CHECK(c != NULL, "valid config refused: %s", e.n ? e.msg[0] : "");
    if (c == NULL)
        return;
    const struct cfg_endpoint *ep = &c->endpoints[0];
    CHECK(ep->n_versions == 2, "%d versions", ep->n_versions);
    CHECK(ep->default_version == 0, "default %d", ep->default_version);
    CHECK(ep->versions[0].effective == 9000, "versiona %d", ep->versions[0].effective);
    CHECK(ep->versions[1].effective == 1000, "versionb %d", ep->versions[1].effective);
    CHECK(ep->versions[0].group == CFG_GROUP_CONTROL, "group");
    CHECK(ep->versions[1].group == CFG_GROUP_TREATMENT, "default type is treatment");
    CHECK(ep->auth_keys && !ep->auth_tokens, "auth defaults");
    CHECK(ep->failover_to_default, "failover default");
    CHECK(ep->scoring_timeout_ms == 60000, "scoring timeout default");
    CHECK(c->limits.max_header_bytes == 16384, "limits default");
    CHECK(c->limits.max_body_bytes == 16777216, "body default");
    CHECK(c->redis.port == 6379 && c->redis.flush_interval_ms == 1000, "redis defaults");
    CHECK(strcmp(c->admin_address, "127.0.0.1:9901") == 0, "admin default");
    config_drop(c);
    cfg_errors_free(&e);
}

/* Issue 20: a short or placeholder admin token is refused, naming the field. */
static void
test_admin_token_strength(void)
{
    static const struct {
        const char *token, *error;
    } cases[] = {
        {"adm", "admin.token: must be at least 16 bytes (it has 3): make one with openssl "
                "rand -base64 32"},
        {"0123456789abcde", "admin.token: must be at least 16 bytes (it has 15): make one "
                            "with openssl rand -base64 32"},
        {"REPLACE-ME-WITH-A-SECRET", "admin.token: is a placeholder (it contains "
                                     "\"REPLACE\"): set a secret of your own"},
        {"please-replace-this-one", "admin.token: is a placeholder (it contains "
                                    "\"REPLACE\"): set a secret of your own"},
        {"0123456789abcdef", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char doc[512];
        snprintf(doc, sizeof(doc), "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                 "\"admin\":{\"token\":\"%s\"},\"endpoints\":[]}",
                 cases[i].token);
        struct cfg_errors e;
        struct config *c = parse_root(doc, &e);
        if (cases[i].error == NULL)
            CHECK(c != NULL && e.n == 0, "%s refused: %s", cases[i].token, e.n ? e.msg[0] : "");
        else
            CHECK(c == NULL && has_error(&e, cases[i].error), "%s: got %s", cases[i].token,
                  e.n ? e.msg[0] : "(accepted)");
        config_drop(c);
        cfg_errors_free(&e);
    }
}

static void
test_rollout_example(void)
{
    /* SPEC §2.2: versionb set to 40 and made default: 20 / 80. */
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"mynewendpoint\",\"versions\":["
        V("versiona", 20, "") "," V("versionb", 40, ",\"is_default\":true") "]}", &e);
    CHECK(c != NULL, "refused");
    if (c == NULL)
        return;
    CHECK(c->endpoints[0].versions[0].effective == 2000, "versiona");
    CHECK(c->endpoints[0].versions[1].effective == 8000, "versionb");
    CHECK(c->endpoints[0].default_version == 1, "default");
    config_drop(c);
    cfg_errors_free(&e);
}

static void
test_first_is_default(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"ep1\",\"versions\":["
        V("aaa", 0, "") "," V("bbb", 12.5, "") "]}", &e);
    CHECK(c != NULL, "refused");
    if (c == NULL)
        return;
    CHECK(c->endpoints[0].default_version == 0, "first listed is default");
    CHECK(c->endpoints[0].versions[0].is_default, "flag set");
    CHECK(c->endpoints[0].versions[0].effective == 8750, "remainder %d",
          c->endpoints[0].versions[0].effective);
    CHECK(c->endpoints[0].versions[1].effective == 1250, "decimals");
    config_drop(c);
    cfg_errors_free(&e);
}

static void
test_names(void)
{
    expect_error("{\"name\":\"ab\",\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].name: \"ab\" must be 3-32 of a-z 0-9 -, starting with a letter");
    expect_error("{\"name\":\"1abc\",\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].name: \"1abc\" must be 3-32 of a-z 0-9 -, starting with a letter");
    expect_error("{\"name\":\"Abc\",\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].name: \"Abc\" must be 3-32 of a-z 0-9 -, starting with a letter");
    expect_error("{\"name\":\"abcdefghijabcdefghijabcdefghijabc\",\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].name: \"abcdefghijabcdefghijabcdefghijabc\" must be 3-32 of a-z 0-9 -, starting with a letter");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("a_b", 0, "") "]}",
                 "endpoints[0].versions[0].name: \"a_b\" must be 3-32 of a-z 0-9 -, starting with a letter");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "]},"
                 "{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[1].name: duplicate endpoint name \"abc\"");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "," V("aaa", 0, "") "]}",
                 "endpoints[0].versions[1].name: duplicate version name \"aaa\"");
    CHECK(config_name_valid("a-1", 3), "a-1 valid");
    CHECK(!config_name_valid("a.1", 3), "a.1 invalid");
}

static void
test_version_count(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[]}",
                 "endpoints[0].versions: an endpoint needs at least 1 version");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("va1", 0, "") "," V("va2", 0, "") ","
                 V("va3", 0, "") "," V("va4", 0, "") "," V("va5", 0, "") "," V("va6", 0, "") ","
                 V("va7", 0, "") "]}",
                 "endpoints[0].versions[6]: an endpoint has at most 6 versions");
}

static void
test_percentiles(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 101, "") "]}",
                 "endpoints[0].versions[0].traffic_percentile: must be between 0 and 100");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", -1, "") "]}",
                 "endpoints[0].versions[0].traffic_percentile: must be between 0 and 100");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 10.125, "") "]}",
                 "endpoints[0].versions[0].traffic_percentile: at most two decimals");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 60, "") "," V("bbb", 40.01, "") "]}",
                 "endpoints[0].versions: traffic_percentile values sum to 100.01, at most 100");
}

static void
test_default_and_control(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"is_default\":true") ","
                 V("bbb", 0, ",\"is_default\":true") "]}",
                 "endpoints[0].versions[1].is_default: a second default version (aaa is default)");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "," V("bbb", 0, "") ","
                 V("versiona", 0, ",\"type\":\"control\"") "]},"
                 "{\"name\":\"def\",\"versions\":[" V("versiona", 0, ",\"type\":\"control\"") ","
                 V("bbb", 0, "") "," V("ccc", 0, ",\"type\":\"control\"") "]}",
                 "endpoints[1].versions[2].type: a second control version (versiona is control)");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"type\":\"canary\"") "]}",
                 "endpoints[0].versions[0].type: must be \"control\" or \"treatment\"");
}

static void
test_upstreams(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\"}]}",
                 "endpoints[0].versions[0].upstreams: required: 1 to 64 upstream addresses");
    expect_error("{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\",\"upstreams\":[]}]}",
                 "endpoints[0].versions[0].upstreams: must hold 1 to 64 addresses, not 0");
    expect_error("{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\",\"upstreams\":[\"localhost\"]}]}",
                 "endpoints[0].versions[0].upstreams[0]: \"localhost\" is not host:port, [v6]:port or unix:/path");
    expect_error("{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\",\"upstreams\":[\"h:70000\"]}]}",
                 "endpoints[0].versions[0].upstreams[0]: \"h:70000\" is not host:port, [v6]:port or unix:/path");
    expect_error("{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\",\"upstreams\":[\"::1:80\"]}]}",
                 "endpoints[0].versions[0].upstreams[0]: \"::1:80\" is not host:port, [v6]:port or unix:/path");
    char many[8192] = "{\"name\":\"abc\",\"versions\":[{\"name\":\"aaa\",\"upstreams\":[";
    for (int i = 0; i < 65; i++)
        strcat(many, i ? ",\"h:1\"" : "\"h:1\"");
    strcat(many, "]}]}");
    expect_error(many, "endpoints[0].versions[0].upstreams: must hold 1 to 64 addresses, not 65");

    char *host;
    int port;
    bool un;
    CHECK(config_parse_address("[::1]:8080", &host, &port, &un) == 0 &&
          strcmp(host, "::1") == 0 && port == 8080 && !un, "v6");
    free(host);
    CHECK(config_parse_address("unix:/run/m.sock", &host, &port, &un) == 0 && un &&
          strcmp(host, "/run/m.sock") == 0, "unix");
    free(host);
    CHECK(config_parse_address("unix:rel", &host, &port, &un) < 0, "unix needs absolute path");
}

static void
test_mirror(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"mirror_percentile\":51") "]}",
                 "endpoints[0].versions[1].mirror_percentile: must be between 0 and 50");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 10, ",\"mirror_percentile\":5") "]}",
                 "endpoints[0].versions[1].mirror_percentile: a mirror version serves no live traffic: its traffic_percentile must be 0");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"mirror_percentile\":5,\"is_default\":true") "]}",
                 "endpoints[0].versions[1].mirror_percentile: the default version cannot be a mirror");
}

/* SPEC §8: the plan and the state, each error at its path. */
static void
test_rollout_plan(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
        V("bbb", 5, ",\"rollout\":{\"steps\":[5,10.5,25],\"step_s\":60,\"promote\":false,"
          "\"gate\":{\"min_requests\":50,\"max_p99_ratio\":2}},"
          "\"rollout_state\":{\"phase\":\"running\",\"step\":1,\"since\":1764460000,"
          "\"reason\":null}") "]}", &e);
    CHECK(c != NULL, "rollout refused: %s", e.n ? e.msg[0] : "");
    if (c != NULL) {
        const struct cfg_rollout *r = &c->endpoints[0].versions[1].rollout;
        CHECK(r->has_plan && r->n_steps == 3, "steps %d", r->n_steps);
        CHECK(r->steps[0] == 500 && r->steps[1] == 1050 && r->steps[2] == 2500, "step values");
        CHECK(r->step_s == 60 && !r->promote && r->min_requests == 50, "plan fields");
        CHECK(r->max_error_rate_increase == 0.01 && r->max_p99_ratio == 2 &&
              r->min_agreement == 0.99, "gate defaults");
        CHECK(r->phase == CFG_ROLLOUT_RUNNING && r->step == 1 && r->since == 1764460000 &&
              r->reason == NULL, "state");
        CHECK(c->endpoints[0].versions[0].rollout.phase == CFG_ROLLOUT_NONE, "no state");
    }
    config_drop(c);
    cfg_errors_free(&e);
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5,25,10]}") "]}",
                 "endpoints[0].versions[1].rollout.steps[2]: steps must increase (10 follows 25)");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[0,10]}") "]}",
                 "endpoints[0].versions[1].rollout.steps[0]: must be a number above 0 and at most 100");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[]}") "]}",
                 "endpoints[0].versions[1].rollout.steps: required: an array of 1 to 20 increasing traffic percentiles in (0, 100]");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5],\"gate\":{\"max_error_rate_increase\":2}}") "]}",
                 "endpoints[0].versions[1].rollout.gate.max_error_rate_increase: must be a number between 0 and 1");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5],\"stepz\":1}") "]}",
                 "endpoints[0].versions[1].rollout.stepz: unknown field");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout_state\":{\"phase\":\"running\"}") "]}",
                 "endpoints[0].versions[1].rollout_state: a rollout_state needs a rollout plan");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5]},\"rollout_state\":{\"phase\":\"flying\"}") "]}",
                 "endpoints[0].versions[1].rollout_state.phase: must be \"running\", \"paused\", \"promoted\", \"rolled_back\" or \"aborted\"");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5,10]},\"rollout_state\":{\"phase\":\"running\",\"step\":2}") "]}",
                 "endpoints[0].versions[1].rollout_state.step: the plan has 2 steps (0 to 1)");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"rollout\":{\"steps\":[5]}") ","
                 V("bbb", 0, "") "]}",
                 "endpoints[0].versions[0].rollout: not allowed on the default version (aaa): roll out another version and promote it");
    /* a promoted version keeps its record as the default */
    c = parse("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
              V("bbb", 50, ",\"is_default\":true,\"rollout\":{\"steps\":[50]},"
                "\"rollout_state\":{\"phase\":\"promoted\",\"step\":0}") "]}", &e);
    CHECK(c != NULL, "promoted default refused: %s", e.n ? e.msg[0] : "");
    config_drop(c);
    cfg_errors_free(&e);
}

static void
test_unknown_fields_and_types(void)
{
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"trafic_percentile\":3") "]}",
                 "endpoints[0].versions[0].trafic_percentile: unknown field");
    expect_error("{\"name\":\"abc\",\"colour\":1,\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].colour: unknown field");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"is_default\":1") "]}",
                 "endpoints[0].versions[0].is_default: must be true or false");
    expect_error("{\"name\":\"abc\",\"sticky\":{},\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].sticky: needs exactly one of \"header\" or \"cookie\"");
    expect_error("{\"name\":\"abc\",\"keys\":{\"primary\":\"env:SLUICE_TEST_UNSET_VAR\"},\"versions\":[" V("aaa", 0, "") "]}",
                 "endpoints[0].keys.primary: environment variable SLUICE_TEST_UNSET_VAR is not set");
    expect_error("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, ",\"health_check\":{\"interval_ms\":0}") "]}",
                 "endpoints[0].versions[0].health_check.interval_ms: must be between 10 and 3600000");

    struct cfg_errors e;
    struct config *c = parse_root("{\"listeners\":[],\"endpoints\":[],\"limits\":{\"max_body_byte\":1}}", &e);
    CHECK(c == NULL, "accepted");
    CHECK(has_error(&e, "listeners: required: an array of at least one listener"), "listeners");
    CHECK(has_error(&e, "limits.max_body_byte: unknown field"), "limits typo");
    cfg_errors_free(&e);

    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:1\",\"tls\":{\"certificate\":\"c.pem\"}}],\"endpoints\":[]}", &e);
    CHECK(c == NULL, "accepted");
    CHECK(has_error(&e, "listeners[0].tls.private_key: required: a PEM file"), "key required");
    cfg_errors_free(&e);

    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:1\"}],\"endpoints\":[],\"workers\":-1}", &e);
    CHECK(has_error(&e, "workers: must be between 0 and 1024"), "workers");
    cfg_errors_free(&e);
}

static void
test_secrets(void)
{
    struct cfg_errors e;
    setenv("SLUICE_TEST_KEY", "k-from-env", 1);
    FILE *f = fopen("/tmp/sluice-test-secret", "w");
    fputs("k-from-file\n", f);
    fclose(f);
    struct config *c = parse("{\"name\":\"abc\",\"keys\":{\"primary\":\"env:SLUICE_TEST_KEY\","
                             "\"secondary\":\"file:sluice-test-secret\"},\"versions\":["
                             V("aaa", 0, "") "]}", &e);
    CHECK(c != NULL, "refused: %s", e.n ? e.msg[0] : "");
    if (c != NULL) {
        CHECK(strcmp(c->endpoints[0].key_primary, "k-from-env") == 0, "env secret");
        CHECK(strcmp(c->endpoints[0].key_secondary, "k-from-file") == 0, "file secret, newline dropped");
    }
    config_drop(c);
    cfg_errors_free(&e);
    unlink("/tmp/sluice-test-secret");
}

static void
test_refcount(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "]}", &e);
    CHECK(c && c->refs == 1, "fresh snapshot has one reference");
    config_take(c);
    CHECK(c->refs == 2, "take");
    config_drop(c);
    CHECK(c->refs == 1, "drop");
    CHECK(config_endpoint(c, "abc", 3) == &c->endpoints[0], "lookup");
    CHECK(config_endpoint(c, "abd", 3) == NULL, "lookup miss");
    config_drop(c);
    cfg_errors_free(&e);
}


/* SPEC §3.7: paths and addresses go into request lines. */
static void
test_plain_paths_and_addresses(void)
{
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"],"
                 "\"path\":\"/score\\r\\nX-Injected: 1\"}]}",
                 "endpoints[0].versions[0].path: must not contain control characters or spaces");
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"],"
                 "\"path\":\"/a b\"}]}",
                 "endpoints[0].versions[0].path: must not contain control characters or spaces");
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"],"
                 "\"path\":\"/a\\u007f\"}]}",
                 "endpoints[0].versions[0].path: must not contain control characters or spaces");
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"],"
                 "\"health_check\":{\"path\":\"/h\\n\"}}]}",
                 "endpoints[0].versions[0].health_check.path: must not contain control "
                 "characters or spaces");
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\","
                 "\"upstreams\":[\"h:1\",\"unix:/tmp/a\\tb\"]}]}",
                 "endpoints[0].versions[0].upstreams[1]: must not contain control characters "
                 "or spaces");
    expect_error("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\","
                 "\"upstreams\":[\"h:1\\r\\n\"]}]}",
                 "endpoints[0].versions[0].upstreams[0]: must not contain control characters "
                 "or spaces");
    /* Non-ASCII and quotes are neither: allowed (and escaped in logs). */
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"ep1\",\"versions\":[{\"name\":\"va1\","
                             "\"upstreams\":[\"unix:/tmp/a\\\"b.sock\"],\"path\":\"/s\\u00e9\"}]}",
                             &e);
    CHECK(c != NULL, "refused: %s", e.n ? e.msg[0] : "");
    config_drop(c);
    cfg_errors_free(&e);
}

/* Keys are returned as JSON and presented in a header: text only. */
static void
test_key_text(void)
{
    const char *f = "/tmp/sluice-test-binary.key";
    FILE *fp = fopen(f, "wb");
    fwrite("\xff\xfe\x80" "abc", 1, 6, fp);
    fclose(fp);
    expect_error("{\"name\":\"ep1\",\"keys\":{\"primary\":\"file:sluice-test-binary.key\"},"
                 "\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"]}]}",
                 "endpoints[0].keys.primary: must be text (UTF-8 without control characters)");
    expect_error("{\"name\":\"ep1\",\"keys\":{\"secondary\":\"ab\\u0001cd\"},"
                 "\"versions\":[{\"name\":\"va1\",\"upstreams\":[\"h:1\"]}]}",
                 "endpoints[0].keys.secondary: must be text (UTF-8 without control characters)");
    unlink(f);
}

/* Error texts quote hostile names: cut only between characters. */
static void
test_error_texts_utf8(void)
{
    char name[700], doc[2048];
    for (int lead = 0; lead < 3; lead++) {
        size_t n = 0;
        for (int i = 0; i < lead; i++)
            name[n++] = 'v';
        while (n < 600) {
            memcpy(name + n, "\xe2\x82\xac", 3);      /* U+20AC, 3 bytes */
            n += 3;
        }
        name[n] = '\0';
        snprintf(doc, sizeof(doc), "{\"name\":\"ep1\",\"versions\":[{\"name\":\"%s\","
                 "\"upstreams\":[\"h:1\"],\"%s\":1}]}", name, name);
        struct cfg_errors e;
        struct config *c = parse(doc, &e);
        CHECK(c == NULL && e.n == 2, "%d errors", e.n);
        for (int i = 0; i < e.n; i++)
            CHECK(config_utf8_valid(e.msg[i], strlen(e.msg[i])), "invalid UTF-8: %s", e.msg[i]);
        CHECK(has_error(&e, "endpoints[0].versions[0].name: \"" "\xe2\x82\xac\xe2\x82\xac"
                        "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
                        "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac"
                        "\xe2\x82\xac\xe2\x82\xac..." "\" must be 3-32 of a-z 0-9 -, "
                        "starting with a letter") || lead > 0, "%s", e.n ? e.msg[1] : "");
        bool named = false;
        for (int i = 0; i < e.n; i++)
            named |= strstr(e.msg[i], "must be 3-32 of a-z 0-9 -") != NULL;
        CHECK(named, "the name's reason is not cut off");
        config_drop(c);
        cfg_errors_free(&e);
    }
    char out[16];
    CHECK(config_utf8_cut("a\xc3\xa9", 2) == 1, "cut inside a 2-byte character");
    CHECK(config_utf8_cut("a\xc3\xa9", 3) == 3, "whole");
    CHECK(config_utf8_cut("\xf0\x9f\x98\x80", 3) == 0, "cut inside a 4-byte character");
    CHECK(strcmp(config_utf8_clip(out, sizeof(out), "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
                                  "\xc3\xa9\xc3\xa9\xc3\xa9"), "\xc3\xa9\xc3\xa9\xc3\xa9"
                                  "\xc3\xa9\xc3\xa9\xc3\xa9...") == 0, "clip: %s", out);
    char fix[] = "ok\xff" "x\xe2\x82";
    config_utf8_fix(fix);
    CHECK(strcmp(fix, "ok?x") == 0, "fix: %s", fix);
    CHECK(config_utf8_valid("\xed\xa0\x80", 3) == false, "surrogate");
    CHECK(config_utf8_valid("\xc0\xaf", 2) == false, "overlong");
    CHECK(config_utf8_valid("\xf4\x90\x80\x80", 4) == false, "above U+10FFFF");
    char esc[32];
    config_json_escape(esc, sizeof(esc), "a\"b\\c\n\x01\xff", 8);
    CHECK(strcmp(esc, "a\\\"b\\\\c\\n\\u0001\\ufffd") == 0, "escape: %s", esc);
    config_json_escape(esc, 8, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 8);
    CHECK(strcmp(esc, "\xc3\xa9\xc3\xa9\xc3\xa9") == 0, "escape cut: %s", esc);
}

/* SPEC §3.7: env:/file: only from the operator's file. */
static void
test_admin_secrets(void)
{
    json_t *before = json_loads("{\"admin\":{\"token\":\"env:ADMIN\"},\"endpoints\":["
        "{\"name\":\"aaa\",\"keys\":{\"primary\":\"file:op.key\",\"secondary\":\"lit\"}}]}",
        0, NULL);
    struct cfg_edit_result r = {0};
    CHECK(config_edit_check_secrets(before, before, &r) == 0, "unchanged: %s", r.message);
    json_t *after = json_deep_copy(before);
    json_array_append_new(json_object_get(after, "endpoints"), json_loads(
        "{\"name\":\"bbb\",\"keys\":{\"primary\":\"lit\",\"secondary\":\"file:/etc/shadow\"}}",
        0, NULL));
    memset(&r, 0, sizeof(r));
    CHECK(config_edit_check_secrets(before, after, &r) == 400, "new reference");
    CHECK(strstr(r.message, "endpoints[1].keys.secondary: secrets set through the admin API "
                 "take literal values only") == r.message, "%s", r.message);
    json_decref(after);
    /* The same reference moved to another endpoint is not carried along. */
    after = json_loads("{\"admin\":{\"token\":\"env:ADMIN\"},\"endpoints\":["
        "{\"name\":\"ccc\",\"keys\":{\"primary\":\"file:op.key\"}}]}", 0, NULL);
    memset(&r, 0, sizeof(r));
    CHECK(config_edit_check_secrets(before, after, &r) == 400, "moved reference");
    CHECK(strstr(r.message, "endpoints[0].keys.primary") == r.message, "%s", r.message);
    json_decref(after);
    after = json_loads("{\"admin\":{\"token\":\"env:OTHER\"},\"endpoints\":[]}", 0, NULL);
    memset(&r, 0, sizeof(r));
    CHECK(config_edit_check_secrets(before, after, &r) == 400 &&
          strstr(r.message, "admin.token") == r.message, "%s", r.message);
    json_decref(after);
    /* Literals of any kind are fine. */
    after = json_loads("{\"endpoints\":[{\"name\":\"aaa\",\"keys\":{\"primary\":\"envy:x\","
                       "\"secondary\":\"files:y\"}}]}", 0, NULL);
    memset(&r, 0, sizeof(r));
    CHECK(config_edit_check_secrets(before, after, &r) == 0, "%s", r.message);
    json_decref(after);
    json_decref(before);
}

/* Generated keys (SPEC §5): 32 random bytes as 43 base64url characters,
 * no padding; decoded here by hand, independently of OpenSSL. */
static void
test_new_key(void)
{
    static const char alpha[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *k1 = config_new_key(), *k2 = config_new_key();
    CHECK(strlen(k1) == 43 && strlen(k2) == 43, "43 characters: %s", k1);
    CHECK(strcmp(k1, k2) != 0, "two keys differ");
    CHECK(strspn(k1, alpha) == 43, "base64url alphabet only: %s", k1);
    /* 43 characters carry 258 bits: the last character's 2 low bits are 0 */
    const char *last = strchr(alpha, k1[42]);
    CHECK(last != NULL && ((last - alpha) & 3) == 0, "no stray bits: %c", k1[42]);
    unsigned char raw[33];
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (int i = 0; i < 43; i++) {
        acc = (acc << 6) | (unsigned)(strchr(alpha, k1[i]) - alpha);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            raw[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    CHECK(n == 32, "decodes to %zu bytes", n);
    int nonzero = 0;
    for (size_t i = 0; i < n; i++)
        nonzero += raw[i] != 0;
    CHECK(nonzero > 16, "random bytes, not zeros (%d of 32 non-zero)", nonzero);
    free(k1);
    free(k2);
}

/* "tracing" (SPEC §10): parsed by tracing/config.c, errors with their path. */
static void
test_tracing_field(void)
{
    struct cfg_errors e;
    struct config *c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                                  "\"endpoints\":[]}", &e);
    CHECK(c != NULL && !c->tracing.export && c->tracing.sample_threshold == TRACING_SAMPLE_NONE,
          "no tracing section: nothing exported, new traces not sampled");
    config_drop(c);
    cfg_errors_free(&e);
    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],\"endpoints\":[],"
                   "\"tracing\":{\"otlp_endpoint\":\"http://127.0.0.1:4318/v1/traces\","
                   "\"sample_ratio\":0.01,\"service_name\":\"edge\"}}", &e);
    CHECK(c != NULL && c->tracing.export && c->tracing.port == 4318 &&
          strcmp(c->tracing.host, "127.0.0.1") == 0 && strcmp(c->tracing.path, "/v1/traces") == 0 &&
          c->tracing.sample_ratio == 0.01 && strcmp(c->tracing.service_name, "edge") == 0,
          "%s", e.n ? e.msg[0] : "tracing fields");
    config_drop(c);
    cfg_errors_free(&e);
    static const struct { const char *tracing, *err; } bad[] = {
        {"{\"sample_ratio\":2}", "tracing.sample_ratio: must be a number from 0 to 1"},
        {"{\"otlp_endpoint\":\"https://c:4318\"}",
         "tracing.otlp_endpoint: only http:// endpoints are supported"},
        {"{\"sampel_ratio\":1}", "tracing.sampel_ratio: unknown field"},
        {"[]", "tracing: must be an object"},
        {NULL, NULL},
    };
    for (int i = 0; bad[i].tracing; i++) {
        char doc[512];
        snprintf(doc, sizeof(doc), "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                 "\"tracing\":%s,\"endpoints\":[]}", bad[i].tracing);
        c = parse_root(doc, &e);
        CHECK(c == NULL && has_error(&e, bad[i].err), "%s: got %s", bad[i].tracing,
              e.n ? e.msg[0] : "(accepted)");
        config_drop(c);
        cfg_errors_free(&e);
    }
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"tracing field", test_tracing_field},
        {"generated keys", test_new_key},
        {"valid example", test_valid_example},
        {"rollout example", test_rollout_example},
        {"first listed is default", test_first_is_default},
        {"names", test_names},
        {"version count", test_version_count},
        {"percentiles", test_percentiles},
        {"default and control", test_default_and_control},
        {"upstreams", test_upstreams},
        {"mirror", test_mirror},
        {"rollout plan and state", test_rollout_plan},
        {"unknown fields and types", test_unknown_fields_and_types},
        {"secrets", test_secrets},
        {"refcount", test_refcount},
        {"plain paths and addresses", test_plain_paths_and_addresses},
        {"key text", test_key_text},
        {"error texts are UTF-8", test_error_texts_utf8},
        {"admin secrets are literal", test_admin_secrets},
        {"admin token strength", test_admin_token_strength},
        {NULL, NULL},
    };
    return run_tests(tests);
}
