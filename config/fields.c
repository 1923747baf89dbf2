/*
 * The config parser's field readers (SPEC §2): errors reported by JSON
 * path (cfg_errors_*, err), check_fields() refusing unknown names, get_*()
 * reading one typed field with its default and range, secrets from files,
 * names. Shared by config.c and endpoint.c through config/internal.h.
 */
#include "config/config.h"
#include "config/internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- errors ---------------------------------------------------------- */

void
cfg_errors_init(struct cfg_errors *e)
{
    memset(e, 0, sizeof(*e));
}

void
cfg_errors_free(struct cfg_errors *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->msg[i]);
    free(e->msg);
    memset(e, 0, sizeof(*e));
}

void __attribute__((format(printf, 3, 4)))
cfg_err(struct pctx *p, const char *path, const char *fmt, ...)
{
    struct cfg_errors *e = p->errs;
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (e->n == e->cap) {
        int cap = e->cap ? e->cap * 2 : 8;
        char **m = realloc(e->msg, (size_t)cap * sizeof(*m));
        if (m == NULL)
            abort();
        e->msg = m;
        e->cap = cap;
    }
    size_t len = strlen(path) + strlen(reason) + 3;
    char *s = malloc(len);
    if (s == NULL)
        abort();
    if (path[0] != '\0')
        snprintf(s, len, "%s: %s", path, reason);
    else
        snprintf(s, len, "%s", reason);
    /* Names and values quoted in a reason may have been cut mid-character
     * by the fixed buffer (or be bytes from a file name): errors end up in
     * JSON replies and logs, which need valid UTF-8. */
    config_utf8_fix(s);
    e->msg[e->n++] = s;
}

void
cfg_errors_add(struct cfg_errors *e, const char *fmt, ...)
{
    struct pctx p = {.errs = e};
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cfg_err(&p, "", "%s", msg);
}

char *
cfg_errors_join(const struct cfg_errors *e, const char *sep)
{
    size_t len = 1;
    for (int i = 0; i < e->n; i++)
        len += strlen(e->msg[i]) + strlen(sep);
    char *s = malloc(len), *w = s;
    if (s == NULL)
        abort();
    *w = '\0';
    for (int i = 0; i < e->n; i++) {
        w += sprintf(w, "%s%s", i ? sep : "", e->msg[i]);
    }
    return s;
}

/* ---- small helpers ---------------------------------------------------- */

/* Bounded concatenation of path pieces; an over-long path is cut. */
static void
path_join(char *out, const char *a, const char *sep, const char *b)
{
    size_t n = 0;
    for (const char *parts[3] = {a, sep, b}, **p = parts; p < parts + 3; p++)
        for (const char *c = *p; *c && n < PATH_MAX_LEN - 1; c++)
            out[n++] = *c;
    out[config_utf8_cut(out, n)] = '\0';
}

void
subpath(char *out, const char *parent, const char *key)
{
    path_join(out, parent, parent[0] ? "." : "", key);
}

void
indexpath(char *out, const char *parent, size_t i)
{
    char idx[24];
    snprintf(idx, sizeof(idx), "[%zu]", i);
    path_join(out, parent, "", idx);
}

/* Refuse any field of obj not in the NULL-terminated list. */
void
check_fields(struct pctx *p, json_t *obj, const char *path,
             const char *const *allowed)
{
    const char *key;
    json_t *v;
    char sp[PATH_MAX_LEN];

    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, key) == 0)
                ok = true;
        if (!ok) {
            subpath(sp, path, key);
            cfg_err(p, sp, "unknown field");
        }
    }
}

/* The object at obj.key, or NULL when absent or null. Errors if not an object. */
json_t *
get_obj(struct pctx *p, json_t *obj, const char *path, const char *key)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    if (v == NULL || json_is_null(v))
        return NULL;
    if (!json_is_object(v)) {
        subpath(sp, path, key);
        cfg_err(p, sp, "must be an object");
        return NULL;
    }
    return v;
}

void
get_int(struct pctx *p, json_t *obj, const char *path, const char *key,
        int *dst, int def, long min, long max)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = def;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_integer(v)) {
        cfg_err(p, sp, "must be an integer");
        return;
    }
    json_int_t n = json_integer_value(v);
    if (n < min || n > max) {
        cfg_err(p, sp, "must be between %ld and %ld", min, max);
        return;
    }
    *dst = (int)n;
}

void
get_u64(struct pctx *p, json_t *obj, const char *path, const char *key,
        uint64_t *dst, uint64_t def, uint64_t min, uint64_t max)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = def;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        cfg_err(p, sp, "must be a non-negative integer");
        return;
    }
    uint64_t n = (uint64_t)json_integer_value(v);
    if (n < min || n > max) {
        cfg_err(p, sp, "must be between %llu and %llu",
                (unsigned long long)min, (unsigned long long)max);
        return;
    }
    *dst = n;
}

void
get_bool(struct pctx *p, json_t *obj, const char *path, const char *key,
         bool *dst, bool def)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = def;
    if (v == NULL || json_is_null(v))
        return;
    if (!json_is_boolean(v)) {
        subpath(sp, path, key);
        cfg_err(p, sp, "must be true or false");
        return;
    }
    *dst = json_is_true(v);
}

/* A string field, copied; def when absent (may be NULL). */
void
get_str(struct pctx *p, json_t *obj, const char *path, const char *key,
        char **dst, const char *def)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = NULL;
    if (v == NULL || json_is_null(v)) {
        *dst = xstrdup(def);
        return;
    }
    if (!json_is_string(v)) {
        subpath(sp, path, key);
        cfg_err(p, sp, "must be a string");
        return;
    }
    *dst = xstrdup(json_string_value(v));
}

char *
resolve_path(const struct pctx *p, const char *file)
{
    if (file[0] == '/' || p->basedir == NULL || p->basedir[0] == '\0')
        return xstrdup(file);
    size_t len = strlen(p->basedir) + strlen(file) + 2;
    char *s = malloc(len);
    if (s == NULL)
        abort();
    snprintf(s, len, "%s/%s", p->basedir, file);
    return s;
}

static char *
read_small_file(const char *file, size_t max, int *errnum)
{
    FILE *f = fopen(file, "rb");
    if (f == NULL) {
        *errnum = errno;
        return NULL;
    }
    char *buf = malloc(max + 1);
    if (buf == NULL)
        abort();
    size_t n = fread(buf, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        free(buf);
        *errnum = EFBIG;
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/*
 * A secret: a literal, "env:NAME" or "file:PATH" (relative to the config's
 * folder). Trailing newlines of a file are dropped. Error messages never
 * contain the secret itself.
 */
bool
contains_nocase(const char *s, const char *word)
{
    size_t n = strlen(word);
    for (; *s != '\0'; s++)
        if (strncasecmp(s, word, n) == 0)
            return true;
    return false;
}

void
get_secret(struct pctx *p, json_t *obj, const char *path, const char *key,
           char **dst)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = NULL;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_string(v)) {
        cfg_err(p, sp, "must be a string (a literal, env:NAME or file:PATH)");
        return;
    }
    const char *s = json_string_value(v);
    if (strncmp(s, "env:", 4) == 0) {
        const char *val = getenv(s + 4);
        if (val == NULL || val[0] == '\0') {
            cfg_err(p, sp, "environment variable %s is not set", s + 4);
            return;
        }
        *dst = xstrdup(val);
    } else if (strncmp(s, "file:", 5) == 0) {
        char *file = resolve_path(p, s + 5);
        int e = 0;
        char *val = read_small_file(file, 1 << 20, &e);
        if (val == NULL) {
            cfg_err(p, sp, "cannot read %s: %s", file, strerror(e));
            free(file);
            return;
        }
        free(file);
        size_t n = strlen(val);
        while (n > 0 && (val[n - 1] == '\n' || val[n - 1] == '\r'))
            val[--n] = '\0';
        if (n == 0) {
            cfg_err(p, sp, "file %s is empty", s + 5);
            free(val);
            return;
        }
        *dst = val;
    } else {
        if (s[0] == '\0') {
            cfg_err(p, sp, "must not be empty");
            return;
        }
        *dst = xstrdup(s);
    }
}

/* A percentile 0..max with at most two decimals, in hundredths. */
void
get_pct(struct pctx *p, json_t *obj, const char *path, const char *key,
        int *dst, int max)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = 0;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_number(v)) {
        cfg_err(p, sp, "must be a number");
        return;
    }
    double d = json_number_value(v);
    if (!(d >= 0 && d <= max)) {
        cfg_err(p, sp, "must be between 0 and %d", max);
        return;
    }
    double h = d * CFG_PCT_SCALE;
    long r = lround(h);
    if (fabs(h - (double)r) > 1e-6) {
        cfg_err(p, sp, "at most two decimals");
        return;
    }
    *dst = (int)r;
}

/* The "name" of an endpoint or version (SPEC §2.1) into out. */
void
get_name(struct pctx *p, json_t *obj, const char *path, char out[CFG_NAME_MAX + 1])
{
    char sp[PATH_MAX_LEN];
    json_t *name = json_object_get(obj, "name");
    subpath(sp, path, "name");
    if (!json_is_string(name))
        cfg_err(p, sp, "required: a string");
    else if (!config_name_valid(json_string_value(name), json_string_length(name))) {
        char q[48];
        cfg_err(p, sp, "\"%s\" must be 3-32 of a-z 0-9 -, starting with a letter",
                config_utf8_clip(q, sizeof(q), json_string_value(name)));
    }
    else
        snprintf(out, CFG_NAME_MAX + 1, "%s", json_string_value(name));
}
