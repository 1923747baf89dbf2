/* A minimal test harness: CHECK records failures; main runs a table. */
#ifndef SLUICE_TEST_CHECK_H
#define SLUICE_TEST_CHECK_H
#include <stdio.h>

static int check_failures;
static int check_count;

#define CHECK(cond, ...) do { \
        check_count++; \
        if (!(cond)) { \
            check_failures++; \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__); \
            fprintf(stderr, "\n"); \
        } \
    } while (0)

struct testcase {
    const char *name;
    void (*fn)(void);
};

static inline int
run_tests(const struct testcase *t)
{
    for (; t->name; t++) {
        int before = check_failures;
        t->fn();
        printf("%s %s\n", check_failures == before ? "ok  " : "FAIL", t->name);
    }
    printf("%d checks, %d failed\n", check_count, check_failures);
    return check_failures ? 1 : 0;
}
#endif
