/*
 * Instructions per json-mode shadow comparison, for answers of a few shapes:
 * the way cmp_run() decides (identical bytes, then the one-pass walk of
 * compare/jsoncmp.c, then jansson when that is unsure) against jansson
 * alone (parse both, strip the ignored paths, compare). Run it under
 * callgrind with bench/cmp_cost.sh, which counts only measure().
 *
 *   cmp_cost CASE PATH      CASE: 0.., PATH: "fast" or "jansson"
 *   cmp_cost --list         the cases
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compare/compare.h"

#define ROUNDS 1000

static char *ignore[] = {"request_id", "meta.timing_ms", NULL};
static const struct cfg_compare cc = {.mode = CFG_COMPARE_JSON, .abs_tol = 1e-6,
                                      .rel_tol = 1e-4, .ignore = ignore, .n_ignore = 2};

/* A model's answer: a request id, n scores, a label, timing metadata. */
static void
answer(char *out, size_t cap, const char *id, int n, double noise, bool reorder, int timing)
{
    size_t len = 0;
    len += (size_t)snprintf(out + len, cap - len, reorder ? "{\"label\":\"cat\"," : "{");
    len += (size_t)snprintf(out + len, cap - len, "\"request_id\":\"%s\",\"scores\":[", id);
    for (int i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%.6f", i ? "," : "",
                                0.5 + 0.013 * i + noise);
    if (len < cap)
        len += (size_t)snprintf(out + len, cap - len, "],%s\"model\":\"resnet-50\","
                                "\"meta\":{\"timing_ms\":%d,\"device\":\"cpu\"}}",
                                reorder ? "" : "\"label\":\"cat\",", timing);
}

struct pair {
    const char *name;
    char a[4096], b[4096];
};

static struct pair cases[6];

static void
make_cases(void)
{
    cases[0].name = "fast model (bench/): \"version\" differs";
    snprintf(cases[0].a, 4096, "{\"version\":\"versiona\",\"status\":200,\"fast\":true}\n");
    snprintf(cases[0].b, 4096, "{\"version\":\"versionb\",\"status\":200,\"fast\":true}\n");
    cases[1].name = "identical bytes";
    answer(cases[1].a, 4096, "r-1", 32, 0, false, 3);
    answer(cases[1].b, 4096, "r-1", 32, 0, false, 3);
    cases[2].name = "ignored members differ";
    answer(cases[2].a, 4096, "r-1", 32, 0, false, 3);
    answer(cases[2].b, 4096, "r-2", 32, 0, false, 17);
    cases[3].name = "scores within tolerance, ignored differ";
    answer(cases[3].a, 4096, "r-1", 32, 0, false, 3);
    answer(cases[3].b, 4096, "r-2", 32, 0.00002, false, 17);
    cases[4].name = "scores past tolerance";
    answer(cases[4].a, 4096, "r-1", 32, 0, false, 3);
    answer(cases[4].b, 4096, "r-1", 32, 0.001, false, 3);
    cases[5].name = "members reordered (falls back to jansson)";
    answer(cases[5].a, 4096, "r-1", 32, 0, false, 3);
    answer(cases[5].b, 4096, "r-1", 32, 0, true, 3);
}

static enum jsoncmp_verdict
by_jansson(const char *a, size_t na, const char *b, size_t nb)
{
    return jsoncmp_reference(a, na, b, nb, &cc);
}

static enum jsoncmp_verdict
by_fast(const char *a, size_t na, const char *b, size_t nb)
{
    if (na == nb && memcmp(a, b, na) == 0)
        return JSONCMP_EQUAL;
    enum jsoncmp_verdict v = jsoncmp_fast(a, na, b, nb, &cc);
    return v != JSONCMP_UNSURE ? v : by_jansson(a, na, b, nb);
}

/* The only function callgrind counts (--toggle-collect=measure). */
__attribute__((noinline)) static int
measure(const struct pair *p, bool fast)
{
    size_t na = strlen(p->a), nb = strlen(p->b);
    int equal = 0;
    for (int i = 0; i < ROUNDS; i++)
        equal += (fast ? by_fast(p->a, na, p->b, nb) : by_jansson(p->a, na, p->b, nb)) ==
                 JSONCMP_EQUAL;
    return equal;
}

int
main(int argc, char **argv)
{
    make_cases();
    int n = (int)(sizeof(cases) / sizeof(cases[0]));
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < n; i++)
            printf("%d\t%zu\t%s\n", i, strlen(cases[i].a), cases[i].name);
        return 0;
    }
    if (argc != 3 || atoi(argv[1]) < 0 || atoi(argv[1]) >= n) {
        fprintf(stderr, "usage: cmp_cost CASE fast|jansson, or cmp_cost --list\n");
        return 2;
    }
    const struct pair *p = &cases[atoi(argv[1])];
    bool fast = strcmp(argv[2], "fast") == 0;
    /* The two paths must agree: a wrong answer is no saving. */
    size_t na = strlen(p->a), nb = strlen(p->b);
    if (by_fast(p->a, na, p->b, nb) != by_jansson(p->a, na, p->b, nb)) {
        fprintf(stderr, "cmp_cost: the paths disagree on case %s\n", argv[1]);
        return 1;
    }
    int equal = measure(p, fast);
    printf("%s %s: %s (%d rounds)\n", argv[1], argv[2], equal ? "equal" : "different", ROUNDS);
    return 0;
}
