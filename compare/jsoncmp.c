/*
 * json-mode shadow comparison without building documents (SPEC §7).
 *
 * Parsing both bodies with jansson, stripping the ignored paths and walking
 * the two trees cost ~20,000 instructions per compared copy, more than the
 * copy itself. Two answers of models that agree mostly have the same
 * members in the same order, so this walks the two texts in step with a
 * small validating tokenizer: values compared as they are read, ignored
 * members skipped on each side, nothing allocated.
 *
 * jansson (json.c) stays the reference. Each verdict here must be the one
 * json_loadb + cmp_json_strip + cmp_json_equal would give; whenever that is
 * not certain the answer is JSONCMP_UNSURE and the caller asks jansson:
 * - members in another order, or on one side only (jansson keeps the last of
 *   duplicate keys, so counts alone prove nothing);
 * - a difference behind which the same key comes again in an enclosing
 *   object (that later member replaces the one that differed);
 * - object keys with escapes, strings that differ and hold escapes, \u
 *   escapes of surrogates, numbers longer than 63 bytes, nesting deeper
 *   than 64, and anything jansson would refuse (then jansson says
 *   "different" itself; here every refusal is just "unsure").
 * Byte-identical texts are compared by the caller before this.
 * tests/unit/test_compare.c and tests/fuzz/fuzz_compare.c check the two
 * paths against each other.
 */
#include "compare/compare.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JC_MAX_DEPTH 64         /* jansson allows 2048; deeper is rare: unsure */
#define JC_NUM_MAX 63           /* number texts longer than this: unsure */

_Static_assert(CFG_COMPARE_MAX_IGNORE <= 32, "one bit per ignore path");

enum { JC_EQ, JC_DIFF, JC_UNSURE };

struct side {
    const unsigned char *p, *e;
};

struct jc {
    struct side a, b;
    const struct cfg_compare *cc;
};

/* The ignore paths still matching at an object: path i's next member name
 * is the len[i] bytes at ignore[i] + off[i]. */
struct ign {
    uint32_t mask;
    uint16_t off[CFG_COMPARE_MAX_IGNORE];
    uint16_t len[CFG_COMPARE_MAX_IGNORE];
};

static const struct ign no_ignore;

struct str {
    const unsigned char *s;     /* the raw text between the quotes */
    size_t n;
    bool esc;                   /* holds a backslash escape */
};

struct num {
    const unsigned char *s;
    size_t n;
    bool is_int;                /* no fraction, no exponent: a jansson integer */
};

static inline __attribute__((always_inline)) void
ws(struct side *x)
{
    /* Most tokens follow each other directly: no byte above ' ' is space. */
    if (x->p < x->e && *x->p > ' ')
        return;
    while (x->p < x->e && (*x->p == ' ' || *x->p == '\n' || *x->p == '\r' || *x->p == '\t'))
        x->p++;
}

/* Bytes a string holds as they are: printable ASCII but the quote and the
 * backslash. */
static const unsigned char str_plain[256] = {
    [0x20] = 1, [0x21] = 1, [0x23 ... 0x5B] = 1, [0x5D ... 0x7F] = 1,
};

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Length of a well-formed UTF-8 sequence at p (no overlong forms, no
 * surrogates, at most U+10FFFF: what jansson accepts), 0 if there is none. */
static size_t
utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned c = p[0];
    size_t n;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
    } else
        return 0;
    if ((size_t)(e - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (n == 3 && v < 0x800) ||
        (n == 4 && v < 0x10000))
        return 0;
    return n;
}

/* A string token, x->p at its opening quote. */
static int
scan_string(struct side *x, struct str *out)
{
    const unsigned char *p = x->p + 1, *e = x->e;
    bool esc = false;
    out->s = p;
    while (p < e) {
        unsigned char c = *p;
        if (c == '"') {
            out->n = (size_t)(p - out->s);
            out->esc = esc;
            x->p = p + 1;
            return 0;
        }
        if (str_plain[c]) {
            p++;
            while (p < e && str_plain[*p])
                p++;
            continue;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            esc = true;
            if (e - p < 2)
                return -1;
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                continue;
            case 'u':
                break;
            default:
                return -1;
            }
            if (e - p < 6)
                return -1;
            unsigned v = 0;
            for (int i = 2; i < 6; i++) {
                int h = hexval(p[i]);
                if (h < 0)
                    return -1;
                v = v * 16 + (unsigned)h;
            }
            if (v >= 0xD800 && v <= 0xDFFF)
                return -1;          /* pairs and lone halves: jansson's rules */
            p += 6;
            continue;
        }
        size_t k = utf8_seq(p, e);
        if (k == 0)
            return -1;
        p += k;
    }
    return -1;
}

static inline __attribute__((always_inline)) bool
is_digit(const unsigned char *p, const unsigned char *e)
{
    return p < e && *p >= '0' && *p <= '9';
}

/* Past a run of one or more digits: the first byte after it, or NULL when
 * there is no digit at p. */
static inline __attribute__((always_inline)) const unsigned char *
digits(const unsigned char *p, const unsigned char *e)
{
    if (!is_digit(p, e))
        return NULL;
    while (is_digit(p, e))
        p++;
    return p;
}

/*
 * A real whose digits make an integer M <= 2^53 and whose decimal exponent
 * k is within +-22: M and 10^|k| are exact doubles, so M * 10^k or
 * M / 10^-k is one correctly rounded operation, the same double strtod
 * returns (glibc rounds correctly), at a tenth of its cost. Model answers'
 * scores are mostly like this. Others: false, and strtod.
 */
static bool
quick_real(const struct num *t, double *out)
{
    static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
        1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const unsigned char *p = t->s, *e = t->s + t->n;
    const uint64_t max = UINT64_C(1) << 53;
    uint64_t m = 0;
    int k = 0;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; p < e && *p >= '0' && *p <= '9'; p++)
        if ((m = m * 10 + (uint64_t)(*p - '0')) > max)
            return false;
    if (p < e && *p == '.')
        for (p++; p < e && *p >= '0' && *p <= '9'; p++, k--)
            if ((m = m * 10 + (uint64_t)(*p - '0')) > max)
                return false;
    if (p < e && (*p == 'e' || *p == 'E')) {
        bool eneg = false;
        int x = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        for (; p < e; p++)
            if ((x = x * 10 + (*p - '0')) > 1000)
                return false;
        k += eneg ? -x : x;
    }
    if (k < -22 || k > 22)
        return false;
    double v = k < 0 ? (double)m / pow10[-k] : (double)m * pow10[k];
    *out = neg ? -v : v;
    return true;
}

/* The number's value as jansson reads it: strtoll for an integer (out of
 * range: jansson refuses the text), strtod for a real (overflow: refused). */
static int
num_value(const struct num *t, long long *iv, double *xv)
{
    char buf[JC_NUM_MAX + 1];
    if (t->is_int && t->n <= 18) {
        /* 18 digits at most, or 17 and a sign: no overflow, as strtoll. */
        const unsigned char *p = t->s;
        long long v = 0;
        bool neg = *p == '-';
        for (p += neg; p < t->s + t->n; p++)
            v = v * 10 + (*p - '0');
        *iv = neg ? -v : v;
        *xv = (double)*iv;
        return 0;
    }
    if (!t->is_int && quick_real(t, xv)) {
        *iv = 0;
        return 0;
    }
    memcpy(buf, t->s, t->n);
    buf[t->n] = '\0';
    errno = 0;
    if (t->is_int) {
        *iv = strtoll(buf, NULL, 10);
        if (errno == ERANGE)
            return -1;
        *xv = (double)*iv;
        return 0;
    }
    *iv = 0;
    *xv = strtod(buf, NULL);
    if ((*xv == HUGE_VAL || *xv == -HUGE_VAL) && errno == ERANGE)
        return -1;
    return 0;
}

/* A number token in JSON's grammar (jansson's: no leading zeros, digits
 * after "." and "e"), checked for what jansson refuses beyond the grammar. */
static int
scan_number(struct side *x, struct num *out)
{
    const unsigned char *p = x->p, *e = x->e;
    bool exp = false;
    out->s = p;
    out->is_int = true;
    if (p < e && *p == '-')
        p++;
    if (p >= e)
        return -1;
    if (*p == '0') {
        p++;
        if (is_digit(p, e))
            return -1;
    } else if ((p = digits(p, e)) == NULL)
        return -1;
    if (p < e && *p == '.') {
        if ((p = digits(p + 1, e)) == NULL)
            return -1;
        out->is_int = false;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if ((p = digits(p, e)) == NULL)
            return -1;
        out->is_int = false;
        exp = true;
    }
    out->n = (size_t)(p - out->s);
    if (out->n > JC_NUM_MAX)
        return -1;
    x->p = p;
    /* Out of range only with 19 digits or more, or with an exponent. */
    size_t digits = out->n - (out->s[0] == '-');
    if ((out->is_int && digits > 18) || exp) {
        long long iv;
        double xv;
        return num_value(out, &iv, &xv);
    }
    return 0;
}

static int
scan_literal(struct side *x)
{
    static const char *const lit[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lit[i]);
        if ((size_t)(x->e - x->p) >= n && memcmp(x->p, lit[i], n) == 0) {
            x->p += n;
            return 0;
        }
    }
    return -1;
}

enum kind { K_BAD, K_OBJ, K_ARR, K_STR, K_NUM, K_TRUE, K_FALSE, K_NULL };

static inline __attribute__((always_inline)) enum kind
kind_of(unsigned char c)
{
    switch (c) {
    case '{': return K_OBJ;
    case '[': return K_ARR;
    case '"': return K_STR;
    case 't': return K_TRUE;
    case 'f': return K_FALSE;
    case 'n': return K_NULL;
    case '-': return K_NUM;
    default: return c >= '0' && c <= '9' ? K_NUM : K_BAD;
    }
}

static int skip_value(struct side *x, int depth);

enum { M_END, M_KEY, M_ERR };

/* The next member of an object: its key, and x past the colon. "first":
 * no member read yet. A key with escapes is left to jansson: it might
 * spell an ignored or a repeated name differently, or hold a NUL (which
 * jansson refuses in keys). */
static int
next_member(struct side *x, bool *first, struct str *key)
{
    ws(x);
    if (x->p >= x->e)
        return M_ERR;
    if (*x->p == '}') {
        x->p++;
        return M_END;
    }
    if (!*first) {
        if (*x->p != ',')
            return M_ERR;
        x->p++;
        ws(x);
        if (x->p >= x->e)
            return M_ERR;
    }
    *first = false;
    if (*x->p != '"' || scan_string(x, key) != 0 || key->esc)
        return M_ERR;
    ws(x);
    if (x->p >= x->e || *x->p != ':')
        return M_ERR;
    x->p++;
    return M_KEY;
}

/* The rest of an array, x at the "," or "]" after an element. */
static int
finish_array(struct side *x, int depth)
{
    for (;;) {
        ws(x);
        if (x->p >= x->e)
            return -1;
        if (*x->p == ']') {
            x->p++;
            return 0;
        }
        if (*x->p != ',')
            return -1;
        x->p++;
        if (skip_value(x, depth + 1) != 0)
            return -1;
    }
}

/* The rest of an object after a member; key (if not NULL) must not come
 * again, since a later duplicate would replace the member that differed. */
static int
finish_object(struct side *x, bool *first, const struct str *key, int depth)
{
    for (;;) {
        struct str k;
        int m = next_member(x, first, &k);
        if (m == M_END)
            return 0;
        if (m == M_ERR)
            return -1;
        if (key != NULL && k.n == key->n && memcmp(k.s, key->s, k.n) == 0)
            return -1;
        if (skip_value(x, depth + 1) != 0)
            return -1;
    }
}

/* Skip one value, checking it as jansson would parse it. */
static int
skip_value(struct side *x, int depth)
{
    ws(x);
    if (x->p >= x->e)
        return -1;
    switch (kind_of(*x->p)) {
    case K_STR: {
        struct str s;
        return scan_string(x, &s);
    }
    case K_NUM: {
        struct num n;
        return scan_number(x, &n);
    }
    case K_TRUE: case K_FALSE: case K_NULL:
        return scan_literal(x);
    case K_ARR:
        if (depth >= JC_MAX_DEPTH)
            return -1;
        x->p++;
        ws(x);
        if (x->p < x->e && *x->p == ']') {
            x->p++;
            return 0;
        }
        if (skip_value(x, depth + 1) != 0)
            return -1;
        return finish_array(x, depth);
    case K_OBJ: {
        if (depth >= JC_MAX_DEPTH)
            return -1;
        x->p++;
        bool first = true;
        return finish_object(x, &first, NULL, depth);
    }
    default:
        return -1;
    }
}

/* Path i goes on at byte off of its text. */
static void
ign_set(struct ign *ig, int i, size_t off, const char *path)
{
    ig->mask |= UINT32_C(1) << i;
    ig->off[i] = (uint16_t)off;
    ig->len[i] = (uint16_t)strcspn(path + off, ".");
}

/* Does key end one of the ignore paths (the member is removed before
 * comparing)? child gets the paths that go on below it. */
static bool
ign_step(const struct cfg_compare *cc, const struct ign *ig, const struct str *k,
         struct ign *child)
{
    bool drop = false;
    child->mask = 0;
    for (uint32_t m = ig->mask; m != 0; m &= m - 1) {
        int i = __builtin_ctz(m);
        const char *c = cc->ignore[i] + ig->off[i];
        if (ig->len[i] != k->n || memcmp(c, k->s, k->n) != 0)
            continue;
        if (c[k->n] == '\0')
            drop = true;
        else
            ign_set(child, i, (size_t)ig->off[i] + k->n + 1, cc->ignore[i]);
    }
    return drop;
}

static int cmp_value(struct jc *j, const struct ign *ig, int depth);

static int
cmp_array(struct jc *j, int depth)
{
    struct side *a = &j->a, *b = &j->b;
    if (depth >= JC_MAX_DEPTH)
        return JC_UNSURE;
    a->p++;
    b->p++;
    ws(a);
    ws(b);
    if (a->p >= a->e || b->p >= b->e)
        return JC_UNSURE;
    bool ea = *a->p == ']', eb = *b->p == ']';
    if (ea && eb) {
        a->p++;
        b->p++;
        return JC_EQ;
    }
    if (ea || eb) {                 /* one is empty: different lengths */
        struct side *empty = ea ? a : b, *full = ea ? b : a;
        empty->p++;
        if (skip_value(full, depth + 1) != 0 || finish_array(full, depth) != 0)
            return JC_UNSURE;
        return JC_DIFF;
    }
    for (;;) {
        int r = cmp_value(j, &no_ignore, depth + 1);
        if (r == JC_UNSURE)
            return JC_UNSURE;
        ws(a);
        ws(b);
        if (a->p >= a->e || b->p >= b->e)
            return JC_UNSURE;
        unsigned char sa = *a->p, sb = *b->p;
        if ((sa != ',' && sa != ']') || (sb != ',' && sb != ']'))
            return JC_UNSURE;
        if (r == JC_EQ && sa == sb) {
            a->p++;
            b->p++;
            if (sa == ']')
                return JC_EQ;
            continue;
        }
        /* Elements differ, or one array is longer: read both to their end. */
        if (finish_array(a, depth) != 0 || finish_array(b, depth) != 0)
            return JC_UNSURE;
        return JC_DIFF;
    }
}

/* The next member on one side that no ignore path removes (skipping the
 * removed ones); child: the ignore paths below it. */
static int
next_kept(struct jc *j, struct side *x, bool *first, const struct ign *ig, struct str *key,
          struct ign *child, int depth)
{
    for (;;) {
        int m = next_member(x, first, key);
        if (m != M_KEY || !ign_step(j->cc, ig, key, child))
            return m;
        if (skip_value(x, depth + 1) != 0)
            return M_ERR;
    }
}

static int
cmp_object(struct jc *j, const struct ign *ig, int depth)
{
    struct side *a = &j->a, *b = &j->b;
    bool fa = true, fb = true;
    if (depth >= JC_MAX_DEPTH)
        return JC_UNSURE;
    a->p++;
    b->p++;
    for (;;) {
        struct str ka, kb;
        struct ign child, unused;
        int ma = next_kept(j, a, &fa, ig, &ka, &child, depth);
        int mb = next_kept(j, b, &fb, ig, &kb, &unused, depth);
        if (ma == M_ERR || mb == M_ERR)
            return JC_UNSURE;
        if (ma == M_END && mb == M_END)
            return JC_EQ;
        /* A member on one side only, or another order: behind it may be a
         * duplicate key, or the same members reordered. jansson decides. */
        if (ma != mb || ka.n != kb.n || memcmp(ka.s, kb.s, ka.n) != 0)
            return JC_UNSURE;
        int r = cmp_value(j, &child, depth + 1);
        if (r == JC_UNSURE)
            return JC_UNSURE;
        if (r == JC_DIFF) {
            if (finish_object(a, &fa, &ka, depth) != 0 || finish_object(b, &fb, &kb, depth) != 0)
                return JC_UNSURE;
            return JC_DIFF;
        }
    }
}

/* One value on each side; on JC_EQ and JC_DIFF both sides are past it. */
static int
cmp_value(struct jc *j, const struct ign *ig, int depth)
{
    struct side *a = &j->a, *b = &j->b;
    ws(a);
    ws(b);
    if (a->p >= a->e || b->p >= b->e)
        return JC_UNSURE;
    enum kind ta = kind_of(*a->p), tb = kind_of(*b->p);
    if (ta == K_BAD || tb == K_BAD)
        return JC_UNSURE;
    if (ta != tb) {
        if (skip_value(a, depth) != 0 || skip_value(b, depth) != 0)
            return JC_UNSURE;
        return JC_DIFF;
    }
    switch (ta) {
    case K_STR: {
        struct str x, y;
        if (scan_string(a, &x) != 0 || scan_string(b, &y) != 0)
            return JC_UNSURE;
        if (x.n == y.n && memcmp(x.s, y.s, x.n) == 0)
            return JC_EQ;
        /* Without escapes the raw bytes are the string; with them, "\u00e9"
         * and "é" are the same: jansson decodes. */
        return x.esc || y.esc ? JC_UNSURE : JC_DIFF;
    }
    case K_NUM: {
        struct num x, y;
        long long ix, iy;
        double dx, dy;
        if (scan_number(a, &x) != 0 || scan_number(b, &y) != 0)
            return JC_UNSURE;
        if (x.n == y.n && memcmp(x.s, y.s, x.n) == 0)
            return JC_EQ;
        if (num_value(&x, &ix, &dx) != 0 || num_value(&y, &iy, &dy) != 0)
            return JC_UNSURE;
        return cmp_numbers_equal(x.is_int, ix, dx, y.is_int, iy, dy, j->cc->abs_tol,
                                 j->cc->rel_tol) ? JC_EQ : JC_DIFF;
    }
    case K_TRUE: case K_FALSE: case K_NULL:
        if (scan_literal(a) != 0 || scan_literal(b) != 0)
            return JC_UNSURE;
        return JC_EQ;
    case K_ARR:
        return cmp_array(j, depth);
    case K_OBJ:
        return cmp_object(j, ig, depth);
    default:
        return JC_UNSURE;
    }
}

enum jsoncmp_verdict
jsoncmp_fast(const char *a, size_t na, const char *b, size_t nb, const struct cfg_compare *cc)
{
    if (a == NULL || b == NULL)
        return JSONCMP_UNSURE;
    struct jc j = {
        .a = {(const unsigned char *)a, (const unsigned char *)a + na},
        .b = {(const unsigned char *)b, (const unsigned char *)b + nb},
        .cc = cc,
    };
    struct ign root = {.mask = 0};
    int n = cc->n_ignore < CFG_COMPARE_MAX_IGNORE ? cc->n_ignore : CFG_COMPARE_MAX_IGNORE;
    for (int i = 0; i < n; i++)
        ign_set(&root, i, 0, cc->ignore[i]);
    int r = cmp_value(&j, &root, 0);
    if (r == JC_UNSURE)
        return JSONCMP_UNSURE;
    ws(&j.a);
    ws(&j.b);
    if (j.a.p != j.a.e || j.b.p != j.b.e)
        return JSONCMP_UNSURE;      /* bytes after the value: jansson refuses it */
    return r == JC_EQ ? JSONCMP_EQUAL : JSONCMP_DIFFERENT;
}
