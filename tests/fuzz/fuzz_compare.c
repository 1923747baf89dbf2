/*
 * libFuzzer target: json-mode shadow comparison's one-pass path
 * (compare/jsoncmp.c) against jansson, the reference (SPEC §7). Input:
 *   byte 0: the compare settings (bits 0-1: tolerances; bit 2: ignore paths
 *           "nonce", "meta.timing_ms", "a.b");
 *   then the live text and the shadow text, split at the first NUL byte (no
 *   NUL: the shadow is the live text with its bytes reversed in the second
 *   half, so that near-identical pairs are common).
 * Checked: no crash or UB; the fast path's verdict, when it gives one, is
 * the one jansson's parse, strip and compare give, also with the two texts
 * swapped; byte-identical texts that jansson parses are equal.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "compare/compare.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *ignore[] = {"nonce", "meta.timing_ms", "a.b", NULL};

static void
check(const char *a, size_t na, const char *b, size_t nb, const struct cfg_compare *cc)
{
    enum jsoncmp_verdict f = jsoncmp_fast(a, na, b, nb, cc);
    if (f == JSONCMP_UNSURE)
        return;
    if (f != jsoncmp_reference(a, na, b, nb, cc))
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const double tols[4][2] = {{0, 0}, {1e-6, 1e-4}, {0.5, 0}, {0, 1e-3}};
    if (size < 1)
        return 0;
    struct cfg_compare cc = {.mode = CFG_COMPARE_JSON, .abs_tol = tols[data[0] & 3][0],
                             .rel_tol = tols[data[0] & 3][1]};
    if (data[0] & 4) {
        cc.ignore = ignore;
        cc.n_ignore = 3;
    }
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    const char *nul = memchr(text, '\0', n);
    /* Copies, so that reading past either text is caught. */
    size_t na, nb;
    char *a, *b;
    if (nul != NULL) {
        na = (size_t)(nul - text);
        nb = n - na - 1;
        a = malloc(na + 1);
        b = malloc(nb + 1);
        if (a == NULL || b == NULL)
            abort();
        memcpy(a, text, na);
        memcpy(b, nul + 1, nb);
    } else {
        na = nb = n;
        a = malloc(na + 1);
        b = malloc(nb + 1);
        if (a == NULL || b == NULL)
            abort();
        memcpy(a, text, na);
        memcpy(b, text, nb);
        for (size_t i = 0; i < (nb - nb / 2) / 2; i++) {
            char t = b[nb / 2 + i];
            b[nb / 2 + i] = b[nb - 1 - i];
            b[nb - 1 - i] = t;
        }
    }
    check(a, na, b, nb, &cc);
    check(b, nb, a, na, &cc);
    /* The same bytes: equal when jansson reads them at all. */
    enum jsoncmp_verdict self = jsoncmp_fast(a, na, a, na, &cc);
    if (self == JSONCMP_DIFFERENT)
        abort();
    free(a);
    free(b);
    return 0;
}
