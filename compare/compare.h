/*
 * The shadow comparison's pure part (SPEC §7), a library with no event
 * loop: does one JSON answer equal another, within tolerances and with
 * member paths ignored? Two paths give the same verdicts: the one-pass walk
 * of two texts (jsoncmp.c, jsoncmp_fast) answers first when it can, and
 * jansson's parse-strip-compare (json.c) is the reference, which also
 * finds the first differing path and its values for a sample. Depends on
 * jansson and config/config.h (struct cfg_compare) only. The data plane's
 * per-copy comparison (gateway/compare.c) calls it; tests/unit/test_compare.c,
 * tests/fuzz/fuzz_compare.c and bench/cmp_cost.c test and measure it.
 */
#ifndef SLUICE_COMPARE_H
#define SLUICE_COMPARE_H
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

#define CMP_EXCERPT 256             /* bytes of each side kept in a sample */

enum jsoncmp_verdict {
    JSONCMP_EQUAL,          /* jansson would find the documents equal */
    JSONCMP_DIFFERENT,      /* jansson would find them different (or one not JSON) */
    JSONCMP_UNSURE,         /* ask jansson */
};

/* The fast path (jsoncmp.c): two JSON texts walked in step, without
 * building documents. It answers only when its answer is the one jansson's
 * parse-strip-compare would give, and says "unsure" otherwise. */
enum jsoncmp_verdict jsoncmp_fast(const char *a, size_t na, const char *b, size_t nb,
                                  const struct cfg_compare *cc);

/* jansson's verdict on two texts, as the comparison reaches it when the
 * fast path is unsure (json.c): not JSON on either side is a difference;
 * else both are parsed, the ignored paths stripped, and compared. The
 * reference the fast path is tested, fuzzed and measured against. */
enum jsoncmp_verdict jsoncmp_reference(const char *a, size_t na, const char *b, size_t nb,
                                       const struct cfg_compare *cc);

/* Two numbers as SPEC §7 compares them, shared by both paths so that they
 * agree to the last bit. An integer (is_int) is compared exactly with
 * another integer; x is the number as a double (the integer converted). */
bool cmp_numbers_equal(bool a_int, long long ia, double xa, bool b_int, long long ib,
                       double xb, double abs_tol, double rel_tol);

/* Remove the member paths from doc; compare two documents with cc's
 * tolerances, filling path (cap bytes, "$" for the root, "a.b[2].c") and
 * the differing values (either NULL when absent on that side). */
struct json_t;
void cmp_json_strip(struct json_t *doc, char *const *ignore, int n);
bool cmp_json_equal(struct json_t *a, struct json_t *b, const struct cfg_compare *cc,
                    char *path, size_t cap, struct json_t **da, struct json_t **db);
/* len bytes of s into out (cap bytes with the NUL), cut at a character
 * boundary, invalid bytes as '?'; the length written. */
size_t cmp_excerpt(char *out, size_t cap, const char *s, size_t len);
/* An excerpt of a value at the differing path ("(absent)" when !present):
 * a real number in its shortest exact form, anything else as compact JSON. */
void cmp_excerpt_value(char *out, size_t cap, struct json_t *v, bool present);

#endif
