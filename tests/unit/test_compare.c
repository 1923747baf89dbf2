/* The shadow comparison library (compare/, SPEC §7): JSON with tolerances
 * and ignored member paths, the first differing path, excerpts cut at a
 * character boundary, the one-pass walk against jansson; and the config's
 * "compare" object. One copy's comparison object (gateway/compare.c) is
 * tested in test_shadow_cmp.c. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compare/compare.h"
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

/* ---- the one-pass fast path against jansson ---------------------------------- */

static char *ign3[] = {"nonce", "meta.timing_ms", "a.b", NULL};

/* The fast path's verdict on a pair, checked against jansson; returns it. */
static enum jsoncmp_verdict
agree(const char *a, size_t na, const char *b, size_t nb, const struct cfg_compare *cc)
{
    enum jsoncmp_verdict f = jsoncmp_fast(a, na, b, nb, cc);
    enum jsoncmp_verdict r = jsoncmp_reference(a, na, b, nb, cc);
    CHECK(f == JSONCMP_UNSURE || f == r, "fast %d, jansson %d: <%.*s> <%.*s>", f, r, (int)na, a,
          (int)nb, b);
    return f;
}

static enum jsoncmp_verdict
fast(const char *a, const char *b, const struct cfg_compare *cc)
{
    return agree(a, strlen(a), b, strlen(b), cc);
}

static void
test_fast_cases(void)
{
    struct cfg_compare cc = {.mode = CFG_COMPARE_JSON, .abs_tol = 1e-6, .rel_tol = 1e-4,
                             .ignore = ign3, .n_ignore = 3};
    struct cfg_compare plain = {.mode = CFG_COMPARE_JSON};
    /* Decided in one pass. */
    CHECK(fast("{\"a\":1, \"s\":\"x\"}", "{ \"a\" : 1,\"s\":\"x\" }\n", &cc) == JSONCMP_EQUAL,
          "whitespace");
    CHECK(fast("[100]", "[1e2]", &plain) == JSONCMP_EQUAL, "1e2 is 100");
    CHECK(fast("[-0]", "[0]", &plain) == JSONCMP_EQUAL, "-0 is 0");
    CHECK(fast("[-0.0, 0]", "[0.0, -0]", &plain) == JSONCMP_EQUAL, "-0.0 is 0.0");
    CHECK(fast("[0.5]", "[0.5000009]", &cc) == JSONCMP_EQUAL, "within abs_tol");
    CHECK(fast("[1000]", "[1000.09]", &cc) == JSONCMP_EQUAL, "within rel_tol");
    CHECK(fast("[1000]", "[1001]", &cc) == JSONCMP_DIFFERENT, "past both");
    CHECK(fast("[9007199254740993]", "[9007199254740992]", &plain) == JSONCMP_DIFFERENT,
          "integers exactly");
    CHECK(fast("{\"version\":\"a\",\"n\":1}", "{\"version\":\"b\",\"n\":1}", &cc) ==
          JSONCMP_DIFFERENT, "a string differs");
    CHECK(fast("{\"s\":\"\xc3\xa9\\n\"}", "{\"s\":\"\xc3\xa9\\n\"}", &cc) == JSONCMP_EQUAL,
          "the same escapes and UTF-8");
    CHECK(fast("{\"nonce\":\"x\",\"v\":[1,{\"q\":null}]}", "{\"v\":[1,{\"q\":null}],\"nonce\":7}",
               &cc) == JSONCMP_EQUAL, "an ignored member on either side, anywhere");
    CHECK(fast("{\"meta\":{\"timing_ms\":3,\"m\":1}}", "{\"meta\":{\"m\":1,\"timing_ms\":4}}",
               &cc) == JSONCMP_EQUAL, "a nested ignored member");
    CHECK(fast("{\"meta\":{\"m\":1}}", "{\"meta\":{\"m\":2}}", &cc) == JSONCMP_DIFFERENT,
          "its sibling counts");
    CHECK(fast("[{\"nonce\":1}]", "[{\"nonce\":2}]", &cc) == JSONCMP_DIFFERENT,
          "ignore paths start at the root object");
    CHECK(fast("[1,2]", "[1,2,3]", &plain) == JSONCMP_DIFFERENT, "array lengths");
    CHECK(fast("[]", "[0]", &plain) == JSONCMP_DIFFERENT, "empty array");
    CHECK(fast("{\"a\":true}", "{\"a\":false}", &plain) == JSONCMP_DIFFERENT, "true, false");
    CHECK(fast("{\"a\":\"1\"}", "{\"a\":1}", &plain) == JSONCMP_DIFFERENT, "types");
    /* Left to jansson. */
    CHECK(fast("{\"a\":1,\"b\":2}", "{\"b\":2,\"a\":1}", &plain) == JSONCMP_UNSURE,
          "another member order");
    CHECK(fast("{\"a\":1,\"a\":2}", "{\"a\":2,\"a\":2}", &plain) == JSONCMP_UNSURE,
          "a later duplicate replaces the member that differs");
    CHECK(fast("{\"x\":{\"a\":1},\"x\":{\"a\":3}}", "{\"x\":{\"a\":2},\"x\":{\"a\":3}}", &plain) ==
          JSONCMP_UNSURE, "a duplicate of an enclosing member");
    CHECK(fast("{\"a\":1,\"a\":1}", "{\"a\":1}", &plain) == JSONCMP_UNSURE, "duplicates");
    CHECK(fast("{\"s\":\"\\u00e9\"}", "{\"s\":\"\xc3\xa9\"}", &plain) == JSONCMP_UNSURE,
          "escapes that may spell the same string");
    CHECK(fast("{\"\\u0061\":1}", "{\"a\":1}", &plain) == JSONCMP_UNSURE, "escaped keys");
    CHECK(fast("[1e400]", "[1e400]", &plain) == JSONCMP_UNSURE, "overflow: not JSON to jansson");
    CHECK(fast("{\"nonce\":1e400}", "{}", &cc) == JSONCMP_UNSURE, "even when ignored");
    CHECK(fast("[99999999999999999999]", "[1]", &plain) == JSONCMP_UNSURE, "too big an integer");
    CHECK(fast("[1,]", "[1]", &plain) == JSONCMP_UNSURE, "not JSON");
    CHECK(fast("[01]", "[1]", &plain) == JSONCMP_UNSURE, "leading zero");
    CHECK(fast("\"\xed\xa0\x80\"", "\"x\"", &plain) == JSONCMP_UNSURE, "a UTF-8 surrogate");
    CHECK(fast("\"\xc0\xaf\"", "\"x\"", &plain) == JSONCMP_UNSURE, "overlong UTF-8");
    CHECK(fast("[1] x", "[1]", &plain) == JSONCMP_UNSURE, "bytes after the value");
    CHECK(fast("", "[1]", &plain) == JSONCMP_UNSURE, "empty");
}

/* ---- random pairs ---- */

static uint64_t rng_state;

static uint32_t
rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 16) % n);
}

struct gen {
    char *out;
    size_t len, cap;
    uint64_t doc, spell, mut;   /* three streams: structure, spelling, mutation */
    int countdown;              /* values until the one mutated (side B), -1: none */
};

static uint32_t
pick(uint64_t *stream, uint32_t n)
{
    uint64_t saved = rng_state;
    rng_state = *stream;
    uint32_t r = rnd(n);
    *stream = rng_state;
    rng_state = saved;
    return r;
}

static void
put(struct gen *g, const char *s)
{
    size_t n = strlen(s);
    if (g->len + n < g->cap) {
        memcpy(g->out + g->len, s, n);
        g->len += n;
        g->out[g->len] = '\0';
    }
}

static void
space(struct gen *g)
{
    static const char *const ws[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    put(g, ws[pick(&g->spell, 7)]);
}

/* Spellings of the same number, and numbers near each other. */
static const char *const numbers[][5] = {
    {"0", "-0", "0.0", "-0.0", "0e5"},
    {"1", "1.0", "1e0", "10e-1", "1E+0"},
    {"100", "1e2", "1E2", "100.0", "1.00e+2"},
    {"0.5", "5e-1", "0.50", "5.0E-1", "0.5"},
    {"0.5000009", "0.5000009", "5.000009e-1", "0.5000009", "0.5000009"},
    {"0.500002", "0.500002", "0.500002", "5.00002e-1", "0.500002"},
    {"1000", "1000", "1e3", "1000.0", "1000"},
    {"1000.09", "1000.09", "1.00009e3", "1000.09", "1000.09"},
    {"1001", "1001", "1001", "1.001e3", "1001"},
    {"9007199254740993", "9007199254740993", "9007199254740993", "9007199254740993",
     "9007199254740993"},
    {"9007199254740992", "9007199254740992", "9007199254740992", "9.007199254740992e15",
     "9007199254740992"},
    {"9223372036854775807", "9223372036854775807", "9223372036854775807",
     "9223372036854775807", "9223372036854775807"},
    {"-9223372036854775808", "-9223372036854775808", "-9223372036854775808",
     "-9223372036854775808", "-9223372036854775808"},
    {"9223372036854775808", "9223372036854775808", "9223372036854775808",
     "9223372036854775808", "9223372036854775808"},
    {"1e400", "1e400", "1E400", "1e400", "1e400"},
    {"1e-400", "1e-400", "0.0", "1e-400", "0"},
    {"-1.5", "-1.5", "-15e-1", "-1.50", "-1.5"},
    {"123456.789", "123456.789", "1.23456789e5", "123456.789", "123456.789"},
};
#define N_NUMBERS (sizeof(numbers) / sizeof(numbers[0]))

/* Strings: the decoded text's spellings (raw, escaped). */
static const char *const strings[][3] = {
    {"", "", ""},
    {"a", "a", "\\u0061"},
    {"abc", "abc", "a\\u0062c"},
    {"\xc3\xa9", "\xc3\xa9", "\\u00e9"},
    {"\xe6\x97\xa5\xe6\x9c\xac", "\xe6\x97\xa5\xe6\x9c\xac", "\\u65e5\xe6\x9c\xac"},
    {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80", "\\ud83d\\ude00"},
    {"a/b", "a\\/b", "a/b"},
    {"q\\\"", "q\\\"", "q\\u0022"},
    {"t\\t", "t\\t", "t\\u0009"},
    {"n\\u0000", "n\\u0000", "n\\u0000"},
    {"versiona", "versiona", "versiona"},
    {"versionb", "versionb", "version\\u0062"},
    {"x\\ud800", "x\\ud800", "\\udc00x"},          /* lone surrogates: not JSON to jansson */
};
#define N_STRINGS (sizeof(strings) / sizeof(strings[0]))

static const char *const keys[][2] = {
    {"a", "\\u0061"}, {"b", "b"}, {"c", "c"}, {"meta", "meta"}, {"timing_ms", "timing_ms"},
    {"nonce", "nonce"}, {"s", "s"}, {"\xc3\xa9", "\\u00e9"},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static void value(struct gen *g, int depth);

/* A value as the document has it, spelled by the spelling stream. */
static void
plain_value(struct gen *g, int depth)
{
    char buf[64];
    /* Mostly an object at the root, as models answer; scalars deeper. */
    uint32_t t = depth == 0 && pick(&g->doc, 4) != 0 ? 7 : pick(&g->doc, depth >= 4 ? 6 : 8);
    switch (t) {
    case 0: case 1: {
        uint32_t i = pick(&g->doc, N_NUMBERS);
        put(g, numbers[i][pick(&g->spell, 8) < 5 ? 0 : pick(&g->spell, 5)]);
        break;
    }
    case 2: case 3: {
        uint32_t i = pick(&g->doc, N_STRINGS);
        put(g, "\"");
        put(g, strings[i][pick(&g->spell, 6) ? 1 : 2]);
        put(g, "\"");
        break;
    }
    case 4:
        put(g, pick(&g->doc, 2) ? "true" : "false");
        break;
    case 5:
        if (pick(&g->doc, 2))
            put(g, "null");
        else {
            snprintf(buf, sizeof(buf), "%u", pick(&g->doc, 1000));
            put(g, buf);
        }
        break;
    case 6: {
        uint32_t n = pick(&g->doc, 4);
        put(g, "[");
        for (uint32_t i = 0; i < n; i++) {
            if (i)
                put(g, ",");
            space(g);
            value(g, depth + 1);
            space(g);
        }
        put(g, "]");
        break;
    }
    default: {
        uint32_t n = pick(&g->doc, 5);
        /* Members in the document's order, rarely another (a spelling
         * jansson accepts as the same object when no key repeats). */
        char *member[5];
        for (uint32_t i = 0; i < n; i++) {
            struct gen sub = *g;
            uint32_t k = pick(&g->doc, N_KEYS);
            sub.out = malloc(4096);
            sub.cap = 4096;
            sub.len = 0;
            sub.out[0] = '\0';
            put(&sub, "\"");
            put(&sub, keys[k][pick(&g->spell, 10) ? 0 : 1]);
            put(&sub, "\"");
            space(&sub);
            put(&sub, ":");
            space(&sub);
            sub.doc = g->doc;
            sub.spell = g->spell;
            value(&sub, depth + 1);
            g->doc = sub.doc;
            g->spell = sub.spell;
            g->mut = sub.mut;
            g->countdown = sub.countdown;
            member[i] = sub.out;
        }
        if (n > 1 && pick(&g->spell, 8) == 0) {
            char *t0 = member[0];
            member[0] = member[n - 1];
            member[n - 1] = t0;
        }
        put(g, "{");
        for (uint32_t i = 0; i < n; i++) {
            if (i)
                put(g, ",");
            space(g);
            put(g, member[i]);
            free(member[i]);
        }
        put(g, "}");
        break;
    }
    }
}

/* The value, or on side B at the chosen place a mutated one. */
static void
value(struct gen *g, int depth)
{
    if (g->countdown < 0 || g->countdown-- != 0) {
        plain_value(g, depth);
        return;
    }
    /* Keep the document stream in step: draw the original into a scratch. */
    struct gen scratch = *g;
    scratch.out = malloc(8192);
    scratch.cap = 8192;
    scratch.len = 0;
    scratch.countdown = -1;
    plain_value(&scratch, depth);
    g->doc = scratch.doc;
    g->spell = scratch.spell;
    switch (pick(&g->mut, 6)) {
    case 0: {                           /* a nearby number */
        put(g, numbers[pick(&g->mut, N_NUMBERS)][pick(&g->mut, 5)]);
        break;
    }
    case 1:                             /* another string */
        put(g, "\"");
        put(g, strings[pick(&g->mut, N_STRINGS)][pick(&g->mut, 3)]);
        put(g, "\"");
        break;
    case 2:                             /* another type */
        put(g, pick(&g->mut, 2) ? "null" : "[]");
        break;
    case 3:                             /* the value wrapped, or repeated */
        put(g, "[");
        put(g, scratch.out);
        put(g, pick(&g->mut, 2) ? "]" : ",1]");
        break;
    case 4: {                           /* an object with a repeated or an ignored member */
        static const char *const tails[] = {"\"a\":1", "\"nonce\":7", "\"meta\":{\"timing_ms\":1}",
                                            "\"a\":{\"b\":2}", "\"b\":[]"};
        put(g, "{");
        put(g, tails[pick(&g->mut, 5)]);
        put(g, ",");
        put(g, tails[pick(&g->mut, 5)]);
        put(g, "}");
        break;
    }
    default:                            /* unchanged after all */
        put(g, scratch.out);
        break;
    }
    free(scratch.out);
}

/* A byte edit: mostly makes the text invalid, sometimes another document. */
static void
edit(char *s, size_t *len, size_t cap)
{
    static const char bytes[] = "{}[],:\"\\0123456789eE.-+ ntrfalsu\x80\xc3\xa9\xff";
    if (*len == 0)
        return;
    size_t at = rnd((uint32_t)*len);
    switch (rnd(3)) {
    case 0:
        memmove(s + at, s + at + 1, *len - at);
        (*len)--;
        break;
    case 1:
        if (*len + 1 < cap) {
            memmove(s + at + 1, s + at, *len - at + 1);
            s[at] = bytes[rnd(sizeof(bytes) - 1)];
            (*len)++;
        }
        break;
    default:
        s[at] = bytes[rnd(sizeof(bytes) - 1)];
        break;
    }
}

/* One decimal number, digits d (no sign) times 10^k, spelled: 0 as a plain
 * decimal, 1 with an exponent on an integer mantissa, 2 with d.ddd and an
 * exponent. */
static void
spell_number(char *out, size_t cap, bool neg, const char *d, int k, int how)
{
    static const char zeros[] = "0000000000000000000000000000000000000000";
    int n = (int)strlen(d);
    const char *sg = neg ? "-" : "";
    if (how == 1)
        snprintf(out, cap, "%s%se%d", sg, d, k);
    else if (how == 2)
        snprintf(out, cap, "%s%c%s%sE%+d", sg, d[0], n > 1 ? "." : "", d + 1, k + n - 1);
    else if (k >= 0)
        snprintf(out, cap, "%s%s%.*s%s", sg, d, k, zeros, k ? ".0" : "");
    else if (-k < n)
        snprintf(out, cap, "%s%.*s.%s", sg, n + k, d, d + n + k);
    else
        snprintf(out, cap, "%s0.%.*s%s", sg, -k - n, zeros, d);
}

static void
test_fast_numbers(void)
{
    struct cfg_compare exact = {.mode = CFG_COMPARE_JSON};
    struct cfg_compare tol = {.mode = CFG_COMPARE_JSON, .abs_tol = 1e-9, .rel_tol = 1e-12};
    int decided = 0, equal = 0, failures = check_failures;
    rng_state = 0x2545f4914f6cdd1dULL;
    for (int i = 0; i < 100000 && check_failures - failures < 10; i++) {
        char d[32], x[80], y[80], a[200], b[200];
        int n = 1 + (int)rnd(19);
        d[0] = (char)('1' + rnd(9));
        for (int j = 1; j < n; j++)
            d[j] = (char)('0' + rnd(10));
        d[n] = '\0';
        int k = (int)rnd(61) - 30;
        bool neg = rnd(4) == 0;
        spell_number(x, sizeof(x), neg, d, k, (int)rnd(3));
        if (rnd(2)) {
            /* The same value spelled otherwise: always equal. */
            spell_number(y, sizeof(y), neg, d, k, (int)rnd(3));
        } else {
            /* The last digit moved: equal only past a double's precision. */
            d[n - 1] = (char)('0' + (d[n - 1] - '0' + 1 + (int)rnd(9)) % 10);
            if (d[0] == '0')
                d[0] = '1';
            spell_number(y, sizeof(y), neg, d, k, (int)rnd(3));
        }
        snprintf(a, sizeof(a), "[%s]", x);
        snprintf(b, sizeof(b), "[%s]", y);
        enum jsoncmp_verdict v = agree(a, strlen(a), b, strlen(b), rnd(2) ? &exact : &tol);
        decided += v != JSONCMP_UNSURE;
        equal += v == JSONCMP_EQUAL;
    }
    printf("     numbers: %d of 100000 pairs decided in one pass, %d equal\n", decided, equal);
    CHECK(decided > 90000 && equal > 40000, "numbers decided");
}

static void
test_fast_random(void)
{
    char *ign1[] = {"a", NULL};
    struct cfg_compare cfgs[] = {
        {.mode = CFG_COMPARE_JSON},
        {.mode = CFG_COMPARE_JSON, .abs_tol = 1e-6, .rel_tol = 1e-4, .ignore = ign3, .n_ignore = 3},
        {.mode = CFG_COMPARE_JSON, .rel_tol = 1e-3, .ignore = ign1, .n_ignore = 1},
    };
    static char a[16384], b[16384];
    int count[3][3] = {{0}};            /* [jansson][fast] */
    int failures = check_failures;
    rng_state = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 200000 && check_failures - failures < 10; i++) {
        uint64_t doc = (uint64_t)rnd(1u << 30) << 20 | (uint64_t)(i + 1);
        struct gen ga = {.out = a, .cap = sizeof(a), .doc = doc, .spell = doc * 31 + 7,
                         .mut = 0, .countdown = -1};
        a[0] = '\0';
        value(&ga, 0);
        uint32_t kind = rnd(10);
        struct gen gb = {.out = b, .cap = sizeof(b), .doc = doc,
                         /* the same spelling, or another one */
                         .spell = kind < 3 ? doc * 31 + 7 : doc * 131 + 3 + (uint64_t)i,
                         .mut = doc ^ 0x5bd1e995, .countdown = kind < 4 ? -1 : (int)rnd(6)};
        b[0] = '\0';
        value(&gb, 0);
        size_t na = ga.len, nb = gb.len;
        if (kind == 9)
            edit(b, &nb, sizeof(b));
        const struct cfg_compare *cc = &cfgs[rnd(3)];
        enum jsoncmp_verdict f = agree(a, na, b, nb, cc);
        count[jsoncmp_reference(a, na, b, nb, cc)][f]++;
    }
    /* The property means little if the fast path never answers. */
    printf("     jansson equal: fast equal %d, unsure %d; jansson different: fast different %d, "
           "unsure %d\n", count[JSONCMP_EQUAL][JSONCMP_EQUAL], count[JSONCMP_EQUAL][JSONCMP_UNSURE],
           count[JSONCMP_DIFFERENT][JSONCMP_DIFFERENT],
           count[JSONCMP_DIFFERENT][JSONCMP_UNSURE]);
    CHECK(count[JSONCMP_EQUAL][JSONCMP_EQUAL] > 3000 &&
          count[JSONCMP_DIFFERENT][JSONCMP_DIFFERENT] > 3000 &&
          count[JSONCMP_EQUAL][JSONCMP_UNSURE] > 100 &&
          count[JSONCMP_DIFFERENT][JSONCMP_UNSURE] > 100, "both paths exercised");
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

int
main(void)
{
    static const struct testcase tests[] = {
        {"exact values", test_exact_values},
        {"tolerances", test_tolerances},
        {"ignore paths", test_ignore},
        {"excerpts", test_excerpt},
        {"fast path cases", test_fast_cases},
        {"fast path against jansson, random pairs", test_fast_random},
        {"fast path against jansson, numbers", test_fast_numbers},
        {"config compare", test_config},
        {NULL, NULL},
    };
    return run_tests(tests);
}
