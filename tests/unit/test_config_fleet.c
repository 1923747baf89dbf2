/* Config validation, fleets (SPEC §6): the redis and fleet fields, the
 * shared part split, merged and parsed; pinning edits. The rest of SPEC
 * §2.1 is test_config.c. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "check.h"
#include "config_check.h"

/* ---- fleets (SPEC §6) ---------------------------------------------------- */

/* redis.sentinels + redis.master_name instead of redis.address (SPEC §6). */
static void
test_redis_sentinels(void)
{
    struct cfg_errors e;
    struct config *c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
        "\"endpoints\":[],\"redis\":{\"sentinels\":[\"127.0.0.1:26379\",\"[::1]:26380\"],"
        "\"master_name\":\"mymaster\",\"wait_replicas\":1,\"wait_timeout_ms\":250}}", &e);
    CHECK(c != NULL, "sentinels accepted: %s", e.n ? e.msg[0] : "");
    if (c != NULL) {
        CHECK(c->redis.address == NULL && c->redis.host == NULL, "no address with sentinels");
        CHECK(c->redis.n_sentinels == 2 && strcmp(c->redis.sentinel_hosts[0], "127.0.0.1") == 0 &&
              c->redis.sentinel_ports[0] == 26379 && strcmp(c->redis.sentinel_hosts[1], "::1") == 0 &&
              c->redis.sentinel_ports[1] == 26380, "sentinel addresses");
        CHECK(strcmp(c->redis.master_name, "mymaster") == 0, "master_name");
        CHECK(c->redis.wait_replicas == 1 && c->redis.wait_timeout_ms == 250, "wait settings");
    }
    config_drop(c);
    cfg_errors_free(&e);
    /* wait_replicas with a plain address; defaults without it */
    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],\"endpoints\":[],"
                   "\"redis\":{\"address\":\"127.0.0.1:6390\",\"wait_replicas\":2}}", &e);
    CHECK(c != NULL && c->redis.port == 6390 && c->redis.wait_replicas == 2 &&
          c->redis.wait_timeout_ms == 1000 && c->redis.n_sentinels == 0 &&
          c->redis.master_name == NULL, "wait_replicas with an address");
    config_drop(c);
    cfg_errors_free(&e);
    static const struct { const char *redis, *err; } bad[] = {
        {"{\"sentinels\":[\"127.0.0.1:26379\"]}",
         "redis.master_name: required with redis.sentinels"},
        {"{\"master_name\":\"mymaster\"}", "redis.master_name: only with redis.sentinels"},
        {"{\"address\":\"127.0.0.1:6379\",\"sentinels\":[\"127.0.0.1:26379\"],"
         "\"master_name\":\"m\"}",
         "redis.sentinels: give redis.address or redis.sentinels, not both"},
        {"{\"sentinels\":[],\"master_name\":\"m\"}",
         "redis.sentinels: must be an array of 1 to 16 \"host:port\""},
        {"{\"sentinels\":\"127.0.0.1:26379\",\"master_name\":\"m\"}",
         "redis.sentinels: must be an array of 1 to 16 \"host:port\""},
        {"{\"sentinels\":[\"127.0.0.1:26379\",\"nope\"],\"master_name\":\"m\"}",
         "redis.sentinels[1]: must be \"host:port\""},
        {"{\"sentinels\":[\"unix:/tmp/s\"],\"master_name\":\"m\"}",
         "redis.sentinels[0]: must be \"host:port\""},
        {"{\"sentinels\":[\"127.0.0.1:26379\"],\"master_name\":\"my master\"}",
         "redis.master_name: must be 1 to 64 of a-z A-Z 0-9 . _ -"},
        {"{\"wait_replicas\":17}", "redis.wait_replicas: must be between 0 and 16"},
        {"{\"wait_timeout_ms\":0}", "redis.wait_timeout_ms: must be between 10 and 60000"},
        {"{\"sentinel\":[\"127.0.0.1:26379\"]}", "redis.sentinel: unknown field"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char doc[512];
        snprintf(doc, sizeof(doc), "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                 "\"endpoints\":[],\"redis\":%s}", bad[i].redis);
        c = parse_root(doc, &e);
        CHECK(c == NULL && has_error(&e, bad[i].err), "%s: got %s", bad[i].redis,
              e.n ? e.msg[0] : "(accepted)");
        config_drop(c);
        cfg_errors_free(&e);
    }
}

static void
test_fleet_field(void)
{
    struct cfg_errors e;
    struct config *c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                                  "\"fleet\":{\"name\":\"prod-eu.1_a\"},\"endpoints\":[]}", &e);
    CHECK(c != NULL && c->fleet_name && strcmp(c->fleet_name, "prod-eu.1_a") == 0, "%s",
          e.n ? e.msg[0] : "no fleet name");
    CHECK(c != NULL && c->fleet_lease_ms == 10000, "leader_lease_ms defaults to 10 s");
    config_drop(c);
    cfg_errors_free(&e);
    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                   "\"fleet\":{\"name\":\"p\",\"leader_lease_ms\":4000},\"endpoints\":[]}", &e);
    CHECK(c != NULL && c->fleet_lease_ms == 4000, "%s", e.n ? e.msg[0] : "leader_lease_ms");
    config_drop(c);
    cfg_errors_free(&e);
    c = parse_root("{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],\"endpoints\":[]}", &e);
    CHECK(c != NULL && c->fleet_name == NULL, "fleet without the field");
    config_drop(c);
    cfg_errors_free(&e);
    static const struct { const char *fleet, *err; } bad[] = {
        {"{\"name\":\"a{b}\"}", "fleet.name: \"a{b}\" is not 1 to 64 of A-Z a-z 0-9 . _ -"},
        {"{\"name\":\"\"}", "fleet.name: \"\" is not 1 to 64 of A-Z a-z 0-9 . _ -"},
        {"{}", "fleet.name: required: 1 to 64 of A-Z a-z 0-9 . _ -"},
        {"{\"name\":7}", "fleet.name: must be a string"},
        {"{\"name\":\"p\",\"nmae\":\"x\"}", "fleet.nmae: unknown field"},
        {"\"prod\"", "fleet: must be an object"},
        {"{\"name\":\"p\",\"leader_lease_ms\":2999}", "fleet.leader_lease_ms: must be between 3000 and 600000"},
        {"{\"name\":\"p\",\"leader_lease_ms\":\"10s\"}", "fleet.leader_lease_ms: must be an integer"},
        {NULL, NULL},
    };
    for (int i = 0; bad[i].fleet; i++) {
        char doc[512];
        snprintf(doc, sizeof(doc), "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
                 "\"fleet\":%s,\"endpoints\":[]}", bad[i].fleet);
        c = parse_root(doc, &e);
        CHECK(c == NULL && has_error(&e, bad[i].err), "%s: got %s", bad[i].fleet,
              e.n ? e.msg[0] : "(accepted)");
        config_drop(c);
        cfg_errors_free(&e);
    }
    char longname[80];
    memset(longname, 'a', 65);
    longname[65] = '\0';
    CHECK(!config_fleet_name_valid(longname), "65 characters");
    longname[64] = '\0';
    CHECK(config_fleet_name_valid(longname), "64 characters");
}

static void
test_fleet_split_merge(void)
{
    json_t *doc = json_loads("{\"workers\":2,\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
        "\"fleet\":{\"name\":\"prod\"},\"tokens\":{\"signing_key\":\"k\"},"
        "\"endpoints\":[{\"name\":\"aaa\",\"versions\":[" V("va", 10, "") "]}]}", 0, NULL);
    json_t *sh = config_fleet_shared(doc, 7);
    CHECK(json_object_size(sh) == 4, "generation, hash, endpoints, tokens only");
    char h1[CFG_FLEET_HASH_LEN + 1], h2[CFG_FLEET_HASH_LEN + 1];
    CHECK(config_fleet_hash(sh, h1) && strlen(h1) == 64, "a SHA-256 in hex");
    CHECK(strcmp(config_fleet_stored_hash(sh), h1) == 0, "the hash is kept in the JSON");
    /* The content alone: not the generation, not the order of members. */
    json_t *sh9 = config_fleet_shared(doc, 9);
    CHECK(config_fleet_hash(sh9, h2) && strcmp(h1, h2) == 0, "same content, same hash");
    json_decref(sh9);
    json_t *reordered = json_loads("{\"tokens\":{\"signing_key\":\"k\"},\"generation\":7,"
        "\"endpoints\":[{\"versions\":[" V("va", 10, "") "],\"name\":\"aaa\"}]}", 0, NULL);
    CHECK(config_fleet_hash(reordered, h2) && strcmp(h1, h2) == 0, "member order ignored");
    json_object_set_new(json_object_get(reordered, "tokens"), "signing_key", json_string("k2"));
    CHECK(config_fleet_hash(reordered, h2) && strcmp(h1, h2) != 0, "content changes it");
    json_decref(reordered);
    CHECK(json_integer_value(json_object_get(sh, "generation")) == 7, "generation");
    CHECK(json_equal(json_object_get(sh, "endpoints"), json_object_get(doc, "endpoints")) &&
          json_object_get(sh, "endpoints") != json_object_get(doc, "endpoints"), "a deep copy");
    /* Splitting and merging back gives the document again. */
    json_t *back = config_fleet_merge(doc, sh);
    CHECK(json_equal(back, doc), "round trip");
    json_decref(back);

    /* The instance part stays, the shared part is the fleet's. */
    json_t *other = json_loads("{\"generation\":9,\"endpoints\":[{\"name\":\"bbb\","
        "\"versions\":[" V("vbb", 10, "") "," V("vcc", 95, "") "]}]}", 0, NULL);
    json_t *m = config_fleet_merge(doc, other);
    CHECK(json_integer_value(json_object_get(m, "workers")) == 2, "workers kept");
    CHECK(json_object_get(m, "fleet") != NULL, "fleet kept");
    CHECK(json_object_get(m, "tokens") == NULL, "tokens: the fleet's, here none");
    CHECK(json_object_get(m, "generation") == NULL, "no generation in the document");
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(
          json_object_get(m, "endpoints"), 0), "name")), "bbb") == 0, "the fleet's endpoints");
    CHECK(json_object_get(doc, "tokens") != NULL, "the instance document is untouched");
    /* Validation of the merged document names JSON paths as always. */
    struct cfg_errors e;
    cfg_errors_init(&e);
    struct config *c = config_parse(m, "/tmp", &e);
    CHECK(c == NULL && has_error(&e, "endpoints[0].versions: traffic_percentile "
                                 "values sum to 105.00, at most 100"), "got %s", e.n ? e.msg[0] : "none");
    config_drop(c);
    cfg_errors_free(&e);
    json_decref(m);
    json_decref(other);
    json_decref(sh);
    json_decref(doc);
}

static void
test_fleet_parse(void)
{
    char err[256];
    uint64_t gen = 0;
    const char *good = "{\"generation\":12,\"endpoints\":[],\"tokens\":{}}";
    json_t *s = config_fleet_parse(good, strlen(good), &gen, err, sizeof(err));
    CHECK(s != NULL && gen == 12, "%s", err);
    json_decref(s);
    static const struct { const char *text, *err; } bad[] = {
        {"{\"generation\":0,\"endpoints\":[]}", "generation: must be a positive integer"},
        {"{\"generation\":\"3\",\"endpoints\":[]}", "generation: must be a positive integer"},
        {"{\"generation\":3}", "endpoints: required, an array"},
        {"{\"generation\":3,\"endpoints\":[],\"tokens\":[]}", "tokens: must be an object"},
        {"{\"generation\":3,\"endpoints\":[],\"workers\":4}",
         "workers: not a shared field (endpoints, tokens)"},
        {"[1]", "must be a JSON object"},
        {NULL, NULL},
    };
    for (int i = 0; bad[i].text; i++) {
        err[0] = '\0';
        s = config_fleet_parse(bad[i].text, strlen(bad[i].text), &gen, err, sizeof(err));
        CHECK(s == NULL && strcmp(err, bad[i].err) == 0, "%s: got %s", bad[i].text, err);
        json_decref(s);
    }
    s = config_fleet_parse("{\"generation\":", 14, &gen, err, sizeof(err));
    CHECK(s == NULL && strncmp(err, "invalid JSON", 12) == 0, "%s", err);
    const char *withhash = "{\"generation\":3,\"hash\":\"abc\",\"endpoints\":[]}";
    s = config_fleet_parse(withhash, strlen(withhash), &gen, err, sizeof(err));
    CHECK(s != NULL && gen == 3 && strcmp(config_fleet_stored_hash(s), "abc") == 0, "%s", err);
    json_decref(s);
    s = config_fleet_parse("{\"generation\":3,\"hash\":1,\"endpoints\":[]}", 40, &gen, err,
                           sizeof(err));
    CHECK(s == NULL && strcmp(err, "hash: must be a string") == 0, "got %s", err);
    CHECK(config_fleet_same(3, "aa", 3, "aa"), "same number and hash");
    CHECK(!config_fleet_same(3, "aa", 3, "bb"), "one number, two contents: differs");
    CHECK(!config_fleet_same(2, "aa", 3, "aa"), "another number differs");
    CHECK(!config_fleet_same(4, "aa", 3, "aa"), "an older number differs too (failover)");
}

/* Issue 17 finding 3: "pinning" (default true) and the pin refusal a
 * rollback or an abort sets until an operator changes the version. */
static void
test_pinning(void)
{
    struct cfg_errors e;
    struct config *c = parse("{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") "]},"
        "{\"name\":\"abd\",\"pinning\":false,\"versions\":[" V("aaa", 0, "") "]}", &e);
    CHECK(c != NULL, "refused: %s", e.n ? e.msg[0] : "");
    if (c != NULL)
        CHECK(c->endpoints[0].pinning && !c->endpoints[1].pinning, "default true, false");
    config_drop(c);
    cfg_errors_free(&e);
    c = parse("{\"name\":\"abc\",\"pinning\":1,\"versions\":[" V("aaa", 0, "") "]}", &e);
    CHECK(c == NULL && e.n == 1 && strncmp(e.msg[0], "endpoints[0].pinning", 20) == 0,
          "not a boolean: %s", e.n ? e.msg[0] : "");
    config_drop(c);
    cfg_errors_free(&e);
    static const struct { const char *state; bool refuses; } cases[] = {
        {"\"phase\":\"rolled_back\"", true},
        {"\"phase\":\"aborted\"", true},
        {"\"phase\":\"rolled_back\",\"operator_changed\":true", false},
        {"\"phase\":\"running\"", false},
        {"\"phase\":\"paused\"", false},
        {"\"phase\":\"promoted\"", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char ep[1024];
        snprintf(ep, sizeof(ep), "{\"name\":\"abc\",\"versions\":[" V("aaa", 0, "") ","
                 V("bbb", 0, ",\"rollout\":{\"steps\":[5]},\"rollout_state\":{%s}") "]}",
                 cases[i].state);
        c = parse(ep, &e);
        CHECK(c != NULL, "%s refused: %s", cases[i].state, e.n ? e.msg[0] : "");
        if (c != NULL)
            CHECK(c->endpoints[0].versions[1].rollout.refuses_pins == cases[i].refuses, "%s",
                  cases[i].state);
        config_drop(c);
        cfg_errors_free(&e);
    }
    /* an operator's change lifts the refusal; a running rollout pauses */
    json_t *x = json_loads("{\"rollout_state\":{\"phase\":\"aborted\"}}", 0, NULL);
    struct cfg_edit_result r = {0};
    config_edit_rollout_operator_change(x, &r);
    CHECK(json_is_true(json_object_get(json_object_get(x, "rollout_state"), "operator_changed"))
          && !r.rollout_paused, "aborted: marked changed");
    json_decref(x);
    x = json_loads("{\"rollout_state\":{\"phase\":\"running\"}}", 0, NULL);
    config_edit_rollout_operator_change(x, &r);
    CHECK(r.rollout_paused && json_object_get(json_object_get(x, "rollout_state"),
                                              "operator_changed") == NULL, "running: paused");
    json_decref(x);
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"pinning", test_pinning},
        {"fleet field", test_fleet_field},
        {"redis sentinels and wait", test_redis_sentinels},
        {"fleet split and merge", test_fleet_split_merge},
        {"fleet shared part parse", test_fleet_parse},
        {NULL, NULL},
    };
    return run_tests(tests);
}
