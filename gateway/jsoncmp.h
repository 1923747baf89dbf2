/*
 * The fast path of json-mode shadow comparison (gateway/jsoncmp.c): two
 * JSON texts walked in step, without building documents. jansson (compare.c,
 * cmp_json_equal) stays the reference: the fast path answers only when its
 * answer is the one jansson's parse-strip-compare would give, and says
 * "unsure" otherwise.
 */
#ifndef SLUICE_JSONCMP_H
#define SLUICE_JSONCMP_H
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

enum jsoncmp_verdict {
    JSONCMP_EQUAL,          /* jansson would find the documents equal */
    JSONCMP_DIFFERENT,      /* jansson would find them different (or one not JSON) */
    JSONCMP_UNSURE,         /* ask jansson */
};

enum jsoncmp_verdict jsoncmp_fast(const char *a, size_t na, const char *b, size_t nb,
                                  const struct cfg_compare *cc);

/* jansson's verdict on two texts, as the comparison reaches it when the
 * fast path is unsure (compare.c): not JSON on either side is a difference;
 * else both are parsed, the ignored paths stripped, and compared. The
 * reference the fast path is tested, fuzzed and measured against. */
enum jsoncmp_verdict jsoncmp_reference(const char *a, size_t na, const char *b, size_t nb,
                                       const struct cfg_compare *cc);

/* Two numbers as SPEC §7 compares them, shared by both paths so that they
 * agree to the last bit. An integer (is_int) is compared exactly with
 * another integer; x is the number as a double (the integer converted). */
bool cmp_numbers_equal(bool a_int, long long ia, double xa, bool b_int, long long ib,
                       double xb, double abs_tol, double rel_tol);

#endif
