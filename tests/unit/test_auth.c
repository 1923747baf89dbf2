/* Key lookup and token checks, without sockets. */
#include <jansson.h>
#include <jwt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth.h"
#include "check.h"

static struct config *
load(const char *text)
{
    struct cfg_errors e;
    cfg_errors_init(&e);
    json_t *j = json_loads(text, 0, NULL);
    struct config *c = config_parse(j, "/tmp", &e);
    json_decref(j);
    if (c == NULL)
        fprintf(stderr, "config: %s\n", e.n ? e.msg[0] : "?");
    cfg_errors_free(&e);
    return c;
}

static const char *CFG =
    "{\"listeners\":[{\"address\":\"127.0.0.1:1\"}],"
    " \"admin\":{\"token\":\"the-admin-token-0\"},"
    " \"tokens\":{\"signing_key\":\"0123456789abcdef0123456789abcdef\",\"ttl_s\":600,\"leeway_s\":10},"
    " \"endpoints\":["
    "  {\"name\":\"alpha\",\"keys\":{\"primary\":\"alpha-primary\",\"secondary\":\"alpha-secondary\"},"
    "   \"versions\":[{\"name\":\"vvv\",\"upstreams\":[\"h:1\"]}]},"
    "  {\"name\":\"beta\",\"auth\":{\"keys\":false,\"tokens\":true},"
    "   \"versions\":[{\"name\":\"vvv\",\"upstreams\":[\"h:1\"]}]},"
    "  {\"name\":\"open\",\"auth\":{\"keys\":false,\"tokens\":false},"
    "   \"versions\":[{\"name\":\"vvv\",\"upstreams\":[\"h:1\"]}]}]}";

static enum auth_status
check(struct auth_ctx *a, const struct config *c, int ep, const char *hdr, time_t now)
{
    return auth_check(a, &c->endpoints[ep], hdr, hdr ? strlen(hdr) : 0, now, NULL);
}

static char *
hs_token(const char *iss, const char *aud, long iat, long exp, const char *key)
{
    jwt_t *j;
    jwt_new(&j);
    jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)key, (int)strlen(key));
    jwt_add_grant(j, "iss", iss);
    jwt_add_grant(j, "aud", aud);
    jwt_add_grant_int(j, "iat", iat);
    jwt_add_grant_int(j, "exp", exp);
    char *t = jwt_encode_str(j);
    jwt_free(j);
    return t;
}

static void
test_keys(void)
{
    struct config *c = load(CFG);
    char err[256];
    struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
    CHECK(a != NULL, "ctx: %s", err);
    time_t now = time(NULL);
    CHECK(check(a, c, 0, "Bearer alpha-primary", now) == AUTH_OK, "primary");
    CHECK(check(a, c, 0, "Bearer alpha-secondary", now) == AUTH_OK, "secondary");
    CHECK(check(a, c, 0, "bearer alpha-primary", now) == AUTH_OK, "scheme is case-insensitive");
    CHECK(check(a, c, 0, NULL, now) == AUTH_NO_HEADER, "missing");
    CHECK(check(a, c, 0, "Basic alpha-primary", now) == AUTH_BAD_SCHEME, "scheme");
    CHECK(check(a, c, 0, "Bearer ", now) == AUTH_EMPTY, "empty");
    CHECK(check(a, c, 0, "Bearer alpha-primaryX", now) == AUTH_BAD_KEY, "appended");
    CHECK(check(a, c, 0, "Bearer alpha-primar", now) == AUTH_BAD_KEY, "prefix");
    CHECK(check(a, c, 0, "Bearer ALPHA-PRIMARY", now) == AUTH_BAD_KEY, "case matters");
    CHECK(check(a, c, 2, NULL, now) == AUTH_OK, "open endpoint");
    CHECK(auth_admin_ok(a, "Bearer the-admin-token-0", 24), "admin");
    CHECK(!auth_admin_ok(a, "Bearer the-admin-toke", 21), "admin prefix refused");
    CHECK(auth_equal("abc", 3, "abc", 3) && !auth_equal("abc", 3, "abd", 3), "auth_equal");
    auth_ctx_free(a);
    config_drop(c);
}

static void
test_tokens(void)
{
    struct config *c = load(CFG);
    char err[256], hdr[4096];
    struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
    time_t now = time(NULL), exp, refresh;
    char *tok = auth_issue_token(a, "beta", "tester", now, &exp, &refresh, err, sizeof(err));
    CHECK(tok != NULL, "issue: %s", err);
    CHECK(exp == now + 600 && refresh == now + 300, "times");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(check(a, c, 1, hdr, now) == AUTH_OK, "fresh token");
    CHECK(check(a, c, 1, hdr, now) == AUTH_OK, "cached token");
    CHECK(check(a, c, 1, hdr, now + 605) == AUTH_OK, "within leeway");
    CHECK(check(a, c, 1, hdr, now + 611) == AUTH_TOKEN_EXPIRED, "expired (cached)");
    free(tok);

    struct auth_ctx *b = auth_ctx_new(c, err, sizeof(err));     /* empty cache */
    tok = auth_issue_token(b, "alpha", "tester", now, &exp, &refresh, err, sizeof(err));
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(check(b, c, 1, hdr, now) == AUTH_TOKEN_AUDIENCE, "other endpoint's token");
    free(tok);
    tok = hs_token("sluice", "beta", now - 100, now - 50, "0123456789abcdef0123456789abcdef");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(check(b, c, 1, hdr, now) == AUTH_TOKEN_EXPIRED, "expired");
    free(tok);
    tok = hs_token("someone", "beta", now, now + 50, "0123456789abcdef0123456789abcdef");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(check(b, c, 1, hdr, now) == AUTH_TOKEN_ISSUER, "issuer");
    free(tok);
    tok = hs_token("sluice", "beta", now, now + 50, "another-secret-another-secret-xx");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(check(b, c, 1, hdr, now) == AUTH_TOKEN_SIGNATURE, "wrong secret");
    free(tok);
    CHECK(check(b, c, 1, "Bearer a.b", now) == AUTH_TOKEN_MALFORMED, "two parts");
    CHECK(check(b, c, 1, "Bearer e30.e30.", now) == AUTH_TOKEN_SIGNATURE, "stripped signature");
    /* {"alg":"none"} . {"iss":"sluice","aud":"beta","exp":9999999999} . x */
    CHECK(check(b, c, 1, "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJzbHVpY2UiLCJhdWQiOiJiZXRhIiwiZXhwIjo5OTk5OTk5OTk5fQ.eA",
                now) == AUTH_TOKEN_ALG, "alg none");
    char *big = malloc(AUTH_MAX_CREDENTIAL + 32);
    strcpy(big, "Bearer ");
    memset(big + 7, 'a', AUTH_MAX_CREDENTIAL + 1);
    big[7 + AUTH_MAX_CREDENTIAL + 1] = '\0';
    CHECK(check(b, c, 1, big, now) == AUTH_TOO_LONG, "too long");
    free(big);
    auth_ctx_free(b);
    auth_ctx_free(a);
    config_drop(c);
}


/* Token times are any 64-bit values: sums with the leeway saturate. */
static void
test_token_time_overflow(void)
{
    struct config *c = load(CFG);
    char err[256], hdr[4096];
    struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
    time_t now = time(NULL), until = 0;
    char *tok = hs_token("sluice", "beta", now, INT64_MAX, "0123456789abcdef0123456789abcdef");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), now, &until) == AUTH_OK,
          "exp = 2^63-1 is far in the future, not expired");
    CHECK(until == INT64_MAX, "valid until saturates: %lld", (long long)until);
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), now, &until) == AUTH_OK &&
          until == INT64_MAX, "cached");
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), INT64_MAX, &until) == AUTH_OK,
          "now = 2^63-1");
    free(tok);
    tok = hs_token("sluice", "beta", now, INT64_MIN, "0123456789abcdef0123456789abcdef");
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), now, &until) ==
          AUTH_TOKEN_EXPIRED, "exp = -2^63");
    free(tok);
    /* nbf checked against now + leeway, with now at the very end of time. */
    jwt_t *j;
    jwt_new(&j);
    jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)"0123456789abcdef0123456789abcdef", 32);
    jwt_add_grant(j, "iss", "sluice");
    jwt_add_grant(j, "aud", "beta");
    jwt_add_grant_int(j, "exp", INT64_MAX);
    jwt_add_grant_int(j, "nbf", INT64_MAX);
    tok = jwt_encode_str(j);
    jwt_free(j);
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), now, &until) ==
          AUTH_TOKEN_NOT_YET_VALID, "nbf = 2^63-1 now");
    CHECK(auth_check(a, &c->endpoints[1], hdr, strlen(hdr), INT64_MAX - 5, &until) == AUTH_OK,
          "nbf = 2^63-1 at the end of time (now + leeway saturates)");
    free(tok);
    auth_ctx_free(a);
    config_drop(c);
}

/* auth_same: equal exactly when every byte is, whatever the length (the
 * 8-byte steps and the tail), a difference at any position seen. */
static void
test_same(void)
{
    unsigned char a[41], b[41];
    for (size_t i = 0; i < sizeof(a); i++)
        a[i] = b[i] = (unsigned char)(i * 37 + 1);
    for (size_t len = 0; len <= sizeof(a); len++) {
        CHECK(auth_same(a, b, len), "len %zu equal", len);
        for (size_t at = 0; at < len; at++)
            for (int bit = 0; bit < 8; bit += 7) {
                b[at] ^= (unsigned char)(1u << bit);
                CHECK(!auth_same(a, b, len), "len %zu, byte %zu bit %d differs", len, at, bit);
                b[at] ^= (unsigned char)(1u << bit);
            }
    }
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"keys", test_keys},
        {"tokens", test_tokens},
        {"token time overflow", test_token_time_overflow},
        {"same", test_same},
        {NULL, NULL},
    };
    return run_tests(tests);
}
