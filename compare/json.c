/*
 * The reference comparison of two JSON answers (SPEC §7), with jansson:
 * ignored member paths stripped (cmp_json_strip), documents compared with
 * the tolerances, reporting the first differing path and values
 * (cmp_json_equal), numbers as both paths compare them (cmp_numbers_equal),
 * jansson's verdict on two texts (jsoncmp_reference), and excerpts cut at a
 * character boundary (cmp_excerpt, cmp_excerpt_value). Most pairs are
 * decided before this, by identical bytes or by the one-pass walk of
 * jsoncmp.c, which gives the same verdicts. Pure; unit tested in
 * tests/unit/test_compare.c.
 */
#include "compare/compare.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Remove one member path ("a.b.c") from doc, wherever the objects lead;
 * arrays on the way are not entered (paths name members only). */
static void
strip_path(json_t *doc, const char *path)
{
    const char *dot = strchr(path, '.');
    if (!json_is_object(doc))
        return;
    if (dot == NULL) {
        json_object_del(doc, path);
        return;
    }
    json_t *child = json_object_getn(doc, path, (size_t)(dot - path));
    if (child != NULL)
        strip_path(child, dot + 1);
}

void
cmp_json_strip(json_t *doc, char *const *ignore, int n)
{
    for (int i = 0; i < n; i++)
        strip_path(doc, ignore[i]);
}

bool
cmp_numbers_equal(bool a_int, long long ia, double x, bool b_int, long long ib, double y,
                  double abs_tol, double rel_tol)
{
    double d;
    if (a_int && b_int) {
        /* Exactly: doubles cannot tell large integers apart. */
        __int128 diff = (__int128)ia - ib;
        if (diff == 0)
            return true;
        d = fabs((double)diff);
    } else if (x == y)
        return true;
    else
        d = fabs(x - y);
    if (d <= abs_tol)
        return true;
    double m = fabs(x) > fabs(y) ? fabs(x) : fabs(y);
    return d <= rel_tol * m;
}

static bool
numbers_equal(const json_t *a, const json_t *b, double abs_tol, double rel_tol)
{
    return cmp_numbers_equal(json_is_integer(a), json_integer_value(a), json_number_value(a),
                             json_is_integer(b), json_integer_value(b), json_number_value(b),
                             abs_tol, rel_tol);
}

/* Append a member name or an index to the path being built. */
static void
path_push_key(char *path, size_t cap, size_t at, const char *key)
{
    if (at >= cap)
        return;
    snprintf(path + at, cap - at, at == 0 ? "%s" : ".%s", key);
}

static void
path_push_index(char *path, size_t cap, size_t at, size_t i)
{
    if (at >= cap)
        return;
    snprintf(path + at, cap - at, "[%zu]", i);
}

static bool
json_eq(json_t *a, json_t *b, const struct cfg_compare *cc, char *path, size_t cap,
        json_t **da, json_t **db)
{
    size_t at = strlen(path);
    if (json_is_number(a) && json_is_number(b)) {
        if (numbers_equal(a, b, cc->abs_tol, cc->rel_tol))
            return true;
        goto differ;
    }
    if (json_typeof(a) != json_typeof(b))
        goto differ;
    switch (json_typeof(a)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *va;
        json_object_foreach(a, k, va) {
            json_t *vb = json_object_get(b, k);
            path_push_key(path, cap, at, k);
            if (vb == NULL) {
                *da = va;
                *db = NULL;
                return false;
            }
            if (!json_eq(va, vb, cc, path, cap, da, db))
                return false;
            path[at] = '\0';
        }
        json_t *vb;
        json_object_foreach(b, k, vb) {
            if (json_object_get(a, k) == NULL) {
                path_push_key(path, cap, at, k);
                *da = NULL;
                *db = vb;
                return false;
            }
        }
        return true;
    }
    case JSON_ARRAY: {
        size_t na = json_array_size(a), nb = json_array_size(b);
        for (size_t i = 0; i < na && i < nb; i++) {
            path_push_index(path, cap, at, i);
            if (!json_eq(json_array_get(a, i), json_array_get(b, i), cc, path, cap, da, db))
                return false;
            path[at] = '\0';
        }
        if (na == nb)
            return true;
        /* The first element one side has and the other lacks. */
        size_t i = na < nb ? na : nb;
        path_push_index(path, cap, at, i);
        *da = na > i ? json_array_get(a, i) : NULL;
        *db = nb > i ? json_array_get(b, i) : NULL;
        return false;
    }
    case JSON_STRING:
        if (json_string_length(a) == json_string_length(b) &&
            memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0)
            return true;
        goto differ;
    default:                        /* true, false, null: same type is equal */
        return true;
    }
differ:
    *da = a;
    *db = b;
    return false;
}

bool
cmp_json_equal(json_t *a, json_t *b, const struct cfg_compare *cc, char *path, size_t cap,
               json_t **da, json_t **db)
{
    path[0] = '\0';
    *da = *db = NULL;
    bool eq = json_eq(a, b, cc, path, cap, da, db);
    if (!eq && path[0] == '\0')
        snprintf(path, cap, "$");   /* the documents differ at their root */
    return eq;
}

size_t
cmp_excerpt(char *out, size_t cap, const char *s, size_t len)
{
    if (cap == 0)
        return 0;
    size_t n = len < cap - 1 ? len : cap - 1;
    if (n < len)
        n = config_utf8_cut(s, n);
    memcpy(out, s, n);
    out[n] = '\0';
    config_utf8_fix(out);           /* bytes that are not text become '?' */
    return strlen(out);
}

enum jsoncmp_verdict
jsoncmp_reference(const char *a, size_t na, const char *b, size_t nb,
                  const struct cfg_compare *cc)
{
    json_t *ja = json_loadb(a, na, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    json_t *jb = json_loadb(b, nb, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    enum jsoncmp_verdict v = JSONCMP_DIFFERENT;
    if (ja != NULL && jb != NULL) {
        char path[256];
        json_t *da, *db;
        cmp_json_strip(ja, cc->ignore, cc->n_ignore);
        cmp_json_strip(jb, cc->ignore, cc->n_ignore);
        if (cmp_json_equal(ja, jb, cc, path, sizeof(path), &da, &db))
            v = JSONCMP_EQUAL;
    }
    json_decref(ja);
    json_decref(jb);
    return v;
}


void
cmp_excerpt_value(char *out, size_t cap, json_t *v, bool present)
{
    if (!present) {
        snprintf(out, cap, "(absent)");
        return;
    }
    if (json_is_real(v)) {
        /* The shortest text that reads back as the same double, as the
         * model most likely wrote it (jansson always writes 17 digits). */
        double x = json_real_value(v);
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(out, cap, "%.*g", prec, x);
            if (strtod(out, NULL) == x)
                break;
        }
        return;
    }
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL) {
        out[0] = '\0';
        return;
    }
    cmp_excerpt(out, cap, text, strlen(text));
    free(text);
}
