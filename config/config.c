/*
 * Parsing and validation of the JSON config (SPEC §2).
 *
 * Every object is read through the same few helpers: check_fields() refuses
 * unknown names, get_*() read one typed field with its default and range and
 * report errors by JSON path. Nothing is applied anywhere: the result is a
 * fresh snapshot or NULL.
 */
#include "config/config.h"

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

#define PATH_MAX_LEN 256

struct pctx {
    struct cfg_errors *errs;
    const char *basedir;
};

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

static void __attribute__((format(printf, 3, 4)))
err(struct pctx *p, const char *path, const char *fmt, ...)
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
    err(&p, "", "%s", msg);
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

/* ---- text ------------------------------------------------------------- */

/* The length of the well-formed UTF-8 character at s[0..avail), 0 when the
 * bytes there are not one (RFC 3629: no overlongs, no surrogates, at most
 * U+10FFFF); *need is the length its lead byte announces. */
size_t
config_utf8_char(const unsigned char *s, size_t avail, size_t *need)
{
    unsigned c = s[0];
    size_t n;
    unsigned min, cp;
    if (c < 0x80) {
        *need = 1;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, min = 0x80, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, min = 0x800, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, min = 0x10000, cp = c & 0x07;
    } else {
        *need = 1;
        return 0;
    }
    *need = n;
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

bool
config_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, need;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = config_utf8_char(u + i, len - i, &need);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

size_t
config_utf8_cut(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    /* A lead byte within the last three whose character does not fit. */
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned c = u[len - back];
        if ((c & 0xc0) == 0x80)
            continue;               /* a continuation byte: look further back */
        if (c < 0x80)
            return len;
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        return need > back ? len - back : len;
    }
    return len;
}

void
config_utf8_fix(char *s)
{
    unsigned char *u = (unsigned char *)s;
    size_t len = strlen(s), i = 0, need;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = config_utf8_char(u + i, len - i, &need);
        if (n > 0) {
            i += n;
            continue;
        }
        if (need > len - i && config_utf8_cut(s, len) == i) {
            u[i] = '\0';            /* a character cut at the end */
            return;
        }
        u[i++] = '?';
    }
}

const char *
config_utf8_clip(char *out, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (len < cap) {
        memcpy(out, s, len + 1);
    } else {
        size_t n = config_utf8_cut(s, cap - 4);
        memcpy(out, s, n);
        memcpy(out + n, "...", 4);
    }
    config_utf8_fix(out);
    return out;
}

bool
config_text_plain(const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= 0x20 || *c == 0x7f)
            return false;
    return true;
}

/*
 * s[0..len) as the inside of a JSON string into out (at most cap - 1 bytes
 * and a NUL); stops before a character or an escape that does not fit
 * whole. Returns the bytes written.
 */
size_t
config_json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned c = u[i];
        char esc[8];
        const char *w = esc;
        size_t wn, adv = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, wn = 2;
        } else if (c == '\n') {
            w = "\\n", wn = 2;
        } else if (c == '\t') {
            w = "\\t", wn = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4], esc[5] = hex[c & 15], wn = 6;
        } else if (c < 0x80) {
            esc[0] = (char)c, wn = 1;
        } else {
            size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (need <= len - i && config_utf8_valid(s + i, need)) {
                w = s + i, wn = need, adv = need;
            } else {
                w = "\\ufffd", wn = 6;   /* one invalid byte, one replacement */
            }
        }
        if (o + wn >= cap)
            break;
        memcpy(out + o, w, wn);
        o += wn;
        i += adv;
    }
    out[o] = '\0';
    return o;
}

/* ---- small helpers ---------------------------------------------------- */

static char *
xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        abort();
    return d;
}

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

static void
subpath(char *out, const char *parent, const char *key)
{
    path_join(out, parent, parent[0] ? "." : "", key);
}

static void
indexpath(char *out, const char *parent, size_t i)
{
    char idx[24];
    snprintf(idx, sizeof(idx), "[%zu]", i);
    path_join(out, parent, "", idx);
}

/* Refuse any field of obj not in the NULL-terminated list. */
static void
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
            err(p, sp, "unknown field");
        }
    }
}

/* The object at obj.key, or NULL when absent or null. Errors if not an object. */
static json_t *
get_obj(struct pctx *p, json_t *obj, const char *path, const char *key)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    if (v == NULL || json_is_null(v))
        return NULL;
    if (!json_is_object(v)) {
        subpath(sp, path, key);
        err(p, sp, "must be an object");
        return NULL;
    }
    return v;
}

static void
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
        err(p, sp, "must be an integer");
        return;
    }
    json_int_t n = json_integer_value(v);
    if (n < min || n > max) {
        err(p, sp, "must be between %ld and %ld", min, max);
        return;
    }
    *dst = (int)n;
}

static void
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
        err(p, sp, "must be a non-negative integer");
        return;
    }
    uint64_t n = (uint64_t)json_integer_value(v);
    if (n < min || n > max) {
        err(p, sp, "must be between %llu and %llu",
            (unsigned long long)min, (unsigned long long)max);
        return;
    }
    *dst = n;
}

static void
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
        err(p, sp, "must be true or false");
        return;
    }
    *dst = json_is_true(v);
}

/* A string field, copied; def when absent (may be NULL). */
static void
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
        err(p, sp, "must be a string");
        return;
    }
    *dst = xstrdup(json_string_value(v));
}

static char *
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
static bool
contains_nocase(const char *s, const char *word)
{
    size_t n = strlen(word);
    for (; *s != '\0'; s++)
        if (strncasecmp(s, word, n) == 0)
            return true;
    return false;
}

static void
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
        err(p, sp, "must be a string (a literal, env:NAME or file:PATH)");
        return;
    }
    const char *s = json_string_value(v);
    if (strncmp(s, "env:", 4) == 0) {
        const char *val = getenv(s + 4);
        if (val == NULL || val[0] == '\0') {
            err(p, sp, "environment variable %s is not set", s + 4);
            return;
        }
        *dst = xstrdup(val);
    } else if (strncmp(s, "file:", 5) == 0) {
        char *file = resolve_path(p, s + 5);
        int e = 0;
        char *val = read_small_file(file, 1 << 20, &e);
        if (val == NULL) {
            err(p, sp, "cannot read %s: %s", file, strerror(e));
            free(file);
            return;
        }
        free(file);
        size_t n = strlen(val);
        while (n > 0 && (val[n - 1] == '\n' || val[n - 1] == '\r'))
            val[--n] = '\0';
        if (n == 0) {
            err(p, sp, "file %s is empty", s + 5);
            free(val);
            return;
        }
        *dst = val;
    } else {
        if (s[0] == '\0') {
            err(p, sp, "must not be empty");
            return;
        }
        *dst = xstrdup(s);
    }
}

/* A percentile 0..max with at most two decimals, in hundredths. */
static void
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
        err(p, sp, "must be a number");
        return;
    }
    double d = json_number_value(v);
    if (!(d >= 0 && d <= max)) {
        err(p, sp, "must be between 0 and %d", max);
        return;
    }
    double h = d * CFG_PCT_SCALE;
    long r = lround(h);
    if (fabs(h - (double)r) > 1e-6) {
        err(p, sp, "at most two decimals");
        return;
    }
    *dst = (int)r;
}

/* ---- names and addresses --------------------------------------------- */

bool
config_name_valid(const char *name, size_t len)
{
    if (len < 3 || len > CFG_NAME_MAX)
        return false;
    if (name[0] < 'a' || name[0] > 'z')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int
config_parse_address(const char *addr, char **host, int *port, bool *is_unix)
{
    *host = NULL;
    *port = 0;
    *is_unix = false;
    if (strncmp(addr, "unix:", 5) == 0) {
        if (addr[5] != '/' || strlen(addr + 5) > 107)
            return -1;
        *host = xstrdup(addr + 5);
        *is_unix = true;
        return 0;
    }
    const char *colon;
    const char *h = addr;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':' || close == addr + 1)
            return -1;
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL || colon == addr)
            return -1;
        hlen = (size_t)(colon - addr);
        if (memchr(addr, ':', hlen) != NULL)  /* bare v6 needs brackets */
            return -1;
    }
    for (size_t i = 0; i < hlen; i++)
        if (isspace((unsigned char)h[i]) || h[i] == '/')
            return -1;
    const char *ps = colon + 1;
    if (*ps == '\0' || strlen(ps) > 5)
        return -1;
    long n = 0;
    for (const char *c = ps; *c; c++) {
        if (!isdigit((unsigned char)*c))
            return -1;
        n = n * 10 + (*c - '0');
    }
    if (n < 1 || n > 65535)
        return -1;
    *host = malloc(hlen + 1);
    if (*host == NULL)
        abort();
    memcpy(*host, h, hlen);
    (*host)[hlen] = '\0';
    *port = (int)n;
    return 0;
}

const char *
config_group_name(enum cfg_group g)
{
    switch (g) {
    case CFG_GROUP_CONTROL: return "control";
    case CFG_GROUP_TREATMENT: return "treatment";
    case CFG_GROUP_SHADOW: return "shadow";
    }
    return "treatment";
}

/* The "name" of an endpoint or version (SPEC §2.1) into out. */
static void
get_name(struct pctx *p, json_t *obj, const char *path, char out[CFG_NAME_MAX + 1])
{
    char sp[PATH_MAX_LEN];
    json_t *name = json_object_get(obj, "name");
    subpath(sp, path, "name");
    if (!json_is_string(name))
        err(p, sp, "required: a string");
    else if (!config_name_valid(json_string_value(name), json_string_length(name))) {
        char q[48];
        err(p, sp, "\"%s\" must be 3-32 of a-z 0-9 -, starting with a letter",
            config_utf8_clip(q, sizeof(q), json_string_value(name)));
    }
    else
        snprintf(out, CFG_NAME_MAX + 1, "%s", json_string_value(name));
}

/* ---- sections ---------------------------------------------------------- */

/* A path that goes into an upstream request line (version and health
 * check paths): a CR, LF or space there would split or forge the request. */
static void
check_request_path(struct pctx *p, const char *parent, const char *value)
{
    char sp[PATH_MAX_LEN];
    if (value == NULL)
        return;
    subpath(sp, parent, "path");
    if (value[0] != '/')
        err(p, sp, "must start with /");
    else if (!config_text_plain(value))
        err(p, sp, "must not contain control characters or spaces");
}

/* Keys are presented in an Authorization header and returned as JSON by
 * the admin API: text, whatever source they came from. */
static void
check_key_text(struct pctx *p, const char *parent, const char *key, const char *value)
{
    char sp[PATH_MAX_LEN];
    if (value == NULL)
        return;
    bool ok = config_utf8_valid(value, strlen(value));
    for (const unsigned char *c = (const unsigned char *)value; ok && *c; c++)
        ok = *c >= 0x20 && *c != 0x7f;
    if (!ok) {
        subpath(sp, parent, key);
        err(p, sp, "must be text (UTF-8 without control characters)");
    }
}

static void
parse_health(struct pctx *p, json_t *obj, const char *path,
             struct cfg_health *h)
{
    static const char *const fields[] = {"path", "interval_ms", "timeout_ms",
        "failure_threshold", "success_threshold", NULL};

    memset(h, 0, sizeof(*h));
    if (obj == NULL)
        return;
    check_fields(p, obj, path, fields);
    h->enabled = true;
    get_str(p, obj, path, "path", &h->path, "/");
    check_request_path(p, path, h->path);
    get_int(p, obj, path, "interval_ms", &h->interval_ms, 2000, 10, 3600000);
    get_int(p, obj, path, "timeout_ms", &h->timeout_ms, 1000, 1, 3600000);
    get_int(p, obj, path, "failure_threshold", &h->failure_threshold, 3, 1, 100);
    get_int(p, obj, path, "success_threshold", &h->success_threshold, 1, 1, 100);
}

static void
parse_upstreams(struct pctx *p, json_t *obj, const char *path,
                struct cfg_version *v)
{
    json_t *arr = json_object_get(obj, "upstreams");
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    subpath(sp, path, "upstreams");
    if (arr == NULL || json_is_null(arr)) {
        err(p, sp, "required: 1 to %d upstream addresses", CFG_MAX_UPSTREAMS);
        return;
    }
    if (!json_is_array(arr)) {
        err(p, sp, "must be an array of addresses");
        return;
    }
    size_t n = json_array_size(arr);
    if (n < 1 || n > CFG_MAX_UPSTREAMS) {
        err(p, sp, "must hold 1 to %d addresses, not %zu", CFG_MAX_UPSTREAMS, n);
        return;
    }
    v->upstreams = calloc(n, sizeof(*v->upstreams));
    if (v->upstreams == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        indexpath(ip, sp, i);
        if (!json_is_string(a)) {
            err(p, ip, "must be a string");
            continue;
        }
        struct cfg_upstream *u = &v->upstreams[v->n_upstreams];
        if (!config_text_plain(json_string_value(a))) {
            err(p, ip, "must not contain control characters or spaces");
            continue;
        }
        if (config_parse_address(json_string_value(a), &u->host, &u->port,
                                 &u->is_unix) < 0) {
            char q[128];
            err(p, ip, "\"%s\" is not host:port, [v6]:port or unix:/path",
                config_utf8_clip(q, sizeof(q), json_string_value(a)));
            continue;
        }
        u->address = xstrdup(json_string_value(a));
        v->n_upstreams++;
    }
}

const char *
config_compare_mode_name(enum cfg_compare_mode m)
{
    return m == CFG_COMPARE_JSON ? "json" : m == CFG_COMPARE_EXACT ? "exact" : "off";
}

bool
config_compare_path_valid(const char *s)
{
    size_t len = strlen(s), seg = 0;
    if (len == 0 || len > 256 || !config_utf8_valid(s, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c == '.') {
            if (seg == 0)
                return false;
            seg = 0;
        } else
            seg++;
    }
    return seg > 0;
}

/* A non-negative finite number at obj.key (integer or real). */
static void
get_tol(struct pctx *p, json_t *obj, const char *path, const char *key, double *dst)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = 0;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e300) {
        err(p, sp, "must be a non-negative number");
        return;
    }
    *dst = json_number_value(v);
}

/* The "compare" object of a mirror version (SPEC §7). */
static void
parse_compare(struct pctx *p, json_t *obj, const char *path, struct cfg_compare *c)
{
    static const char *const fields[] = {"mode", "abs_tol", "rel_tol", "ignore",
        "max_bytes", "samples", NULL};
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    memset(c, 0, sizeof(*c));
    if (obj == NULL)
        return;
    check_fields(p, obj, path, fields);
    char *mode = NULL;
    get_str(p, obj, path, "mode", &mode, "json");
    c->mode = CFG_COMPARE_JSON;
    if (mode != NULL && strcmp(mode, "exact") == 0)
        c->mode = CFG_COMPARE_EXACT;
    else if (mode != NULL && strcmp(mode, "json") != 0) {
        subpath(sp, path, "mode");
        err(p, sp, "must be \"json\" or \"exact\"");
    }
    free(mode);
    get_tol(p, obj, path, "abs_tol", &c->abs_tol);
    get_tol(p, obj, path, "rel_tol", &c->rel_tol);
    get_u64(p, obj, path, "max_bytes", &c->max_bytes, 65536, 1, (uint64_t)64 << 20);
    get_int(p, obj, path, "samples", &c->samples, 0, 0, CFG_COMPARE_MAX_SAMPLES);
    json_t *ign = json_object_get(obj, "ignore");
    if (ign == NULL || json_is_null(ign))
        return;
    subpath(sp, path, "ignore");
    if (!json_is_array(ign)) {
        err(p, sp, "must be an array of member paths like \"meta.timing_ms\"");
        return;
    }
    size_t n = json_array_size(ign);
    if (n > CFG_COMPARE_MAX_IGNORE) {
        err(p, sp, "at most %d paths, not %zu", CFG_COMPARE_MAX_IGNORE, n);
        return;
    }
    c->ignore = calloc(n + 1, sizeof(*c->ignore));
    if (c->ignore == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(ign, i);
        indexpath(ip, sp, i);
        if (!json_is_string(e) || !config_compare_path_valid(json_string_value(e))) {
            err(p, ip, "must be a member path: names joined by \".\", none empty, "
                "no control characters, at most 256 bytes");
            continue;
        }
        c->ignore[c->n_ignore++] = xstrdup(json_string_value(e));
    }
}

/* ---- progressive rollout (SPEC §8) ------------------------------------- */

static const char *const rollout_phase_names[] = {NULL, "running", "paused", "promoted",
    "rolled_back", "aborted"};

const char *
config_rollout_phase_name(enum cfg_rollout_phase ph)
{
    if ((int)ph < 0 || (size_t)ph >= sizeof(rollout_phase_names) / sizeof(*rollout_phase_names))
        return NULL;
    return rollout_phase_names[ph];
}

/* A fraction 0..max at obj.key, def when absent. */
static void
get_fraction(struct pctx *p, json_t *obj, const char *path, const char *key, double *dst,
             double def, double max)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = def;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= max)) {
        err(p, sp, "must be a number between 0 and %g", max);
        return;
    }
    *dst = json_number_value(v);
}

/* The plan: "rollout": {"steps", "step_s", "promote", "gate"}. */
static void
parse_rollout_plan(struct pctx *p, json_t *obj, const char *path, struct cfg_rollout *r)
{
    static const char *const fields[] = {"steps", "step_s", "promote", "gate", NULL};
    static const char *const gate_fields[] = {"min_requests", "max_error_rate_increase",
        "max_p99_ratio", "min_agreement", NULL};
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    check_fields(p, obj, path, fields);
    r->has_plan = true;
    json_t *steps = json_object_get(obj, "steps");
    subpath(sp, path, "steps");
    if (!json_is_array(steps) || json_array_size(steps) == 0 ||
        json_array_size(steps) > CFG_ROLLOUT_MAX_STEPS) {
        err(p, sp, "required: an array of 1 to %d increasing traffic percentiles in (0, 100]",
            CFG_ROLLOUT_MAX_STEPS);
    } else {
        for (size_t i = 0; i < json_array_size(steps); i++) {
            json_t *e = json_array_get(steps, i);
            indexpath(ip, sp, i);
            double d = json_is_number(e) ? json_number_value(e) : -1;
            if (!(d > 0 && d <= 100)) {
                err(p, ip, "must be a number above 0 and at most 100");
                continue;
            }
            double h = d * CFG_PCT_SCALE;
            long rd = lround(h);
            if (fabs(h - (double)rd) > 1e-6) {
                err(p, ip, "at most two decimals");
                continue;
            }
            if (r->n_steps > 0 && rd <= r->steps[r->n_steps - 1]) {
                err(p, ip, "steps must increase (%g follows %g)", d,
                    r->steps[r->n_steps - 1] / (double)CFG_PCT_SCALE);
                continue;
            }
            r->steps[r->n_steps++] = (int)rd;
        }
    }
    get_int(p, obj, path, "step_s", &r->step_s, 300, 1, 7 * 86400);
    get_bool(p, obj, path, "promote", &r->promote, true);
    json_t *gate = get_obj(p, obj, path, "gate");
    subpath(sp, path, "gate");
    if (gate != NULL)
        check_fields(p, gate, sp, gate_fields);
    get_u64(p, gate, sp, "min_requests", &r->min_requests, 200, 1, 1000000000);
    get_fraction(p, gate, sp, "max_error_rate_increase", &r->max_error_rate_increase, 0.01, 1);
    get_fraction(p, gate, sp, "max_p99_ratio", &r->max_p99_ratio, 1.5, 1000);
    get_fraction(p, gate, sp, "min_agreement", &r->min_agreement, 0.99, 1);
}

/* The state the driver keeps: "rollout_state": {"phase", "step", "since", "reason",
 * "operator_changed"}. */
static void
parse_rollout_state(struct pctx *p, json_t *obj, const char *path, struct cfg_rollout *r)
{
    static const char *const fields[] = {"phase", "step", "since", "reason",
        "operator_changed", NULL};
    char sp[PATH_MAX_LEN];

    check_fields(p, obj, path, fields);
    char *phase = NULL;
    get_str(p, obj, path, "phase", &phase, NULL);
    subpath(sp, path, "phase");
    if (phase == NULL)
        err(p, sp, "required: \"running\", \"paused\", \"promoted\", \"rolled_back\" "
            "or \"aborted\"");
    else {
        for (int i = CFG_ROLLOUT_RUNNING; i <= CFG_ROLLOUT_ABORTED; i++)
            if (strcmp(phase, rollout_phase_names[i]) == 0)
                r->phase = (enum cfg_rollout_phase)i;
        if (r->phase == CFG_ROLLOUT_NONE)
            err(p, sp, "must be \"running\", \"paused\", \"promoted\", \"rolled_back\" "
                "or \"aborted\"");
    }
    free(phase);
    get_int(p, obj, path, "step", &r->step, 0, 0, CFG_ROLLOUT_MAX_STEPS - 1);
    if (r->n_steps > 0 && r->step >= r->n_steps) {
        subpath(sp, path, "step");
        err(p, sp, "the plan has %d steps (0 to %d)", r->n_steps, r->n_steps - 1);
    }
    json_t *since = json_object_get(obj, "since");
    if (since != NULL && !json_is_null(since)) {
        if (!json_is_integer(since) || json_integer_value(since) < 0) {
            subpath(sp, path, "since");
            err(p, sp, "must be unix seconds");
        } else
            r->since = (int64_t)json_integer_value(since);
    }
    get_str(p, obj, path, "reason", &r->reason, NULL);
    get_bool(p, obj, path, "operator_changed", &r->operator_changed, false);
    r->refuses_pins = (r->phase == CFG_ROLLOUT_ROLLED_BACK ||
                       r->phase == CFG_ROLLOUT_ABORTED) && !r->operator_changed;
}

static void
parse_rollout(struct pctx *p, json_t *vobj, const char *path, struct cfg_rollout *r)
{
    char sp[PATH_MAX_LEN];

    memset(r, 0, sizeof(*r));
    json_t *plan = get_obj(p, vobj, path, "rollout");
    subpath(sp, path, "rollout");
    if (plan != NULL)
        parse_rollout_plan(p, plan, sp, r);
    json_t *state = get_obj(p, vobj, path, "rollout_state");
    subpath(sp, path, "rollout_state");
    if (state != NULL) {
        if (plan == NULL)
            err(p, sp, "a rollout_state needs a rollout plan");
        parse_rollout_state(p, state, sp, r);
    }
}

static void
parse_version(struct pctx *p, json_t *obj, const char *path,
              struct cfg_version *v)
{
    static const char *const fields[] = {"name", "upstreams", "path",
        "traffic_percentile", "is_default", "type", "description", "tags",
        "replica_max_concurrent_requests", "max_request_wait_time_ms",
        "mirror_percentile", "health_check", "compare", "rollout", "rollout_state", NULL};
    char sp[PATH_MAX_LEN];

    if (!json_is_object(obj)) {
        err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);

    get_name(p, obj, path, v->name);

    parse_upstreams(p, obj, path, v);
    get_str(p, obj, path, "path", &v->path, NULL);
    check_request_path(p, path, v->path);
    get_pct(p, obj, path, "traffic_percentile", &v->traffic, 100);
    get_bool(p, obj, path, "is_default", &v->is_default, false);

    char *type = NULL;
    get_str(p, obj, path, "type", &type, "treatment");
    v->group = CFG_GROUP_TREATMENT;
    if (type != NULL) {
        if (strcmp(type, "control") == 0)
            v->group = CFG_GROUP_CONTROL;
        else if (strcmp(type, "treatment") != 0) {
            subpath(sp, path, "type");
            err(p, sp, "must be \"control\" or \"treatment\"");
        }
    }
    free(type);
    get_str(p, obj, path, "description", &v->description, NULL);

    json_t *tags = json_object_get(obj, "tags");
    if (tags != NULL && !json_is_null(tags)) {
        subpath(sp, path, "tags");
        if (!json_is_object(tags)) {
            err(p, sp, "must be an object of strings");
        } else {
            const char *k;
            json_t *tv;
            json_object_foreach(tags, k, tv) {
                if (!json_is_string(tv)) {
                    char tp[PATH_MAX_LEN];
                    subpath(tp, sp, k);
                    err(p, tp, "must be a string");
                }
            }
        }
    }
    get_int(p, obj, path, "replica_max_concurrent_requests", &v->max_concurrent,
            0, 0, 1000000);
    get_int(p, obj, path, "max_request_wait_time_ms", &v->max_wait_ms,
            500, 0, 3600000);
    get_pct(p, obj, path, "mirror_percentile", &v->mirror, 50);

    subpath(sp, path, "health_check");
    parse_health(p, get_obj(p, obj, path, "health_check"), sp, &v->health);
    subpath(sp, path, "compare");
    parse_compare(p, get_obj(p, obj, path, "compare"), sp, &v->compare);
    parse_rollout(p, obj, path, &v->rollout);
}

static void
parse_endpoint(struct pctx *p, json_t *obj, const char *path,
               struct cfg_endpoint *ep)
{
    static const char *const fields[] = {"name", "auth", "keys", "sticky",
        "scoring_timeout_ms", "failover_to_default", "pinning", "versions", NULL};
    static const char *const auth_fields[] = {"keys", "tokens", NULL};
    static const char *const key_fields[] = {"primary", "secondary", NULL};
    static const char *const sticky_fields[] = {"header", "cookie", NULL};
    char sp[PATH_MAX_LEN], vp[PATH_MAX_LEN];

    if (!json_is_object(obj)) {
        err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);

    get_name(p, obj, path, ep->name);

    json_t *auth = get_obj(p, obj, path, "auth");
    subpath(sp, path, "auth");
    if (auth != NULL)
        check_fields(p, auth, sp, auth_fields);
    get_bool(p, auth, sp, "keys", &ep->auth_keys, true);
    get_bool(p, auth, sp, "tokens", &ep->auth_tokens, false);

    json_t *keys = get_obj(p, obj, path, "keys");
    subpath(sp, path, "keys");
    if (keys != NULL) {
        check_fields(p, keys, sp, key_fields);
        get_secret(p, keys, sp, "primary", &ep->key_primary);
        get_secret(p, keys, sp, "secondary", &ep->key_secondary);
        check_key_text(p, sp, "primary", ep->key_primary);
        check_key_text(p, sp, "secondary", ep->key_secondary);
    }

    json_t *sticky = get_obj(p, obj, path, "sticky");
    subpath(sp, path, "sticky");
    if (sticky != NULL) {
        check_fields(p, sticky, sp, sticky_fields);
        char *h = NULL, *c = NULL;
        get_str(p, sticky, sp, "header", &h, NULL);
        get_str(p, sticky, sp, "cookie", &c, NULL);
        if ((h != NULL) == (c != NULL)) {
            err(p, sp, "needs exactly one of \"header\" or \"cookie\"");
            free(h);
            free(c);
        } else if ((h ? h : c)[0] == '\0') {
            err(p, sp, "the %s name must not be empty", h ? "header" : "cookie");
            free(h);
            free(c);
        } else {
            ep->sticky = h ? CFG_STICKY_HEADER : CFG_STICKY_COOKIE;
            ep->sticky_name = h ? h : c;
        }
    }
    get_int(p, obj, path, "scoring_timeout_ms", &ep->scoring_timeout_ms,
            60000, 1, 3600000);
    get_bool(p, obj, path, "failover_to_default", &ep->failover_to_default, true);
    get_bool(p, obj, path, "pinning", &ep->pinning, true);

    json_t *vs = json_object_get(obj, "versions");
    subpath(sp, path, "versions");
    if (!json_is_array(vs)) {
        err(p, sp, "required: an array of 1 to %d versions", CFG_MAX_VERSIONS);
        return;
    }
    size_t n = json_array_size(vs);
    if (n == 0) {
        err(p, sp, "an endpoint needs at least 1 version");
        return;
    }
    if (n > CFG_MAX_VERSIONS) {
        indexpath(vp, sp, CFG_MAX_VERSIONS);
        err(p, vp, "an endpoint has at most %d versions", CFG_MAX_VERSIONS);
        n = CFG_MAX_VERSIONS;
    }
    int errs_before = p->errs->n;
    for (size_t i = 0; i < n; i++) {
        indexpath(vp, sp, i);
        parse_version(p, json_array_get(vs, i), vp, &ep->versions[i]);
    }
    ep->n_versions = (int)n;
    if (p->errs->n != errs_before)
        return;     /* cross-version rules need valid versions */

    /* Rules across versions (SPEC §2.1). */
    int sum = 0, def = -1, control = -1;
    for (int i = 0; i < ep->n_versions; i++) {
        struct cfg_version *v = &ep->versions[i];
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)i);
        for (int j = 0; j < i; j++)
            if (strcmp(ep->versions[j].name, v->name) == 0) {
                subpath(fp, vp, "name");
                err(p, fp, "duplicate version name \"%s\"", v->name);
            }
        sum += v->traffic;
        if (v->is_default) {
            if (def >= 0) {
                subpath(fp, vp, "is_default");
                err(p, fp, "a second default version (%s is default)",
                    ep->versions[def].name);
            } else
                def = i;
        }
        if (v->group == CFG_GROUP_CONTROL) {
            if (control >= 0) {
                subpath(fp, vp, "type");
                err(p, fp, "a second control version (%s is control)",
                    ep->versions[control].name);
            } else
                control = i;
        }
        if (v->mirror > 0 && v->traffic > 0) {
            subpath(fp, vp, "mirror_percentile");
            err(p, fp, "a mirror version serves no live traffic: its "
                "traffic_percentile must be 0");
        }
    }
    if (sum > CFG_PCT_TOTAL)
        err(p, sp, "traffic_percentile values sum to %d.%02d, at most 100",
            sum / CFG_PCT_SCALE, sum % CFG_PCT_SCALE);
    if (def < 0)
        def = 0;
    ep->default_version = def;
    for (int i = 0; i < ep->n_versions; i++)
        ep->versions[i].is_default = (i == def);
    if (ep->versions[def].mirror > 0) {
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)def);
        subpath(fp, vp, "mirror_percentile");
        err(p, fp, "the default version cannot be a mirror");
    }
    /* A rollout ramps a version up towards the default; the default itself
     * has nothing to ramp (a promoted version keeps its record). */
    const struct cfg_rollout *dr = &ep->versions[def].rollout;
    if (dr->has_plan && dr->phase != CFG_ROLLOUT_PROMOTED) {
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)def);
        subpath(fp, vp, "rollout");
        err(p, fp, "not allowed on the default version (%s): roll out another version "
            "and promote it", ep->versions[def].name);
    }
    /* SPEC §2.2: the default takes its own share plus the remainder. */
    for (int i = 0; i < ep->n_versions; i++)
        ep->versions[i].effective = ep->versions[i].traffic;
    if (sum <= CFG_PCT_TOTAL)
        ep->versions[def].effective += CFG_PCT_TOTAL - sum;
}

static void
parse_listener(struct pctx *p, json_t *obj, const char *path,
               struct cfg_listener *l)
{
    static const char *const fields[] = {"address", "tls", "http2", NULL};
    static const char *const tls_fields[] = {"certificate", "private_key", NULL};
    char sp[PATH_MAX_LEN];
    bool is_unix;

    if (!json_is_object(obj)) {
        err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);
    get_str(p, obj, path, "address", &l->address, NULL);
    subpath(sp, path, "address");
    if (l->address == NULL) {
        if (json_object_get(obj, "address") == NULL)
            err(p, sp, "required: host:port");
    } else if (config_parse_address(l->address, &l->host, &l->port,
                                    &is_unix) < 0 || is_unix) {
        err(p, sp, "\"%s\" is not host:port or [v6]:port", l->address);
    }
    get_bool(p, obj, path, "http2", &l->http2, true);     /* SPEC §9 */
    json_t *tls = get_obj(p, obj, path, "tls");
    subpath(sp, path, "tls");
    if (tls != NULL) {
        check_fields(p, tls, sp, tls_fields);
        l->tls = true;
        char *cert = NULL, *key = NULL;
        char fp[PATH_MAX_LEN];
        get_str(p, tls, sp, "certificate", &cert, NULL);
        get_str(p, tls, sp, "private_key", &key, NULL);
        if (cert == NULL) {
            subpath(fp, sp, "certificate");
            err(p, fp, "required: a PEM file");
        } else
            l->certificate = resolve_path(p, cert);
        if (key == NULL) {
            subpath(fp, sp, "private_key");
            err(p, fp, "required: a PEM file");
        } else
            l->private_key = resolve_path(p, key);
        free(cert);
        free(key);
    }
}

static void
parse_tokens(struct pctx *p, json_t *obj, struct cfg_tokens *t)
{
    static const char *const fields[] = {"issuer", "signing_key", "algorithm",
        "ttl_s", "leeway_s", "trusted_issuers", NULL};
    static const char *const ti_fields[] = {"issuer", "audience", "algorithm",
        "public_key", NULL};
    static const char *const algs[] = {"HS256", "HS384", "HS512", "RS256",
        "RS384", "RS512", "ES256", "ES384", "ES512", NULL};
    const char *path = "tokens";
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    if (obj != NULL)
        check_fields(p, obj, path, fields);
    get_str(p, obj, path, "issuer", &t->issuer, "sluice");
    get_secret(p, obj, path, "signing_key", &t->signing_key);
    get_str(p, obj, path, "algorithm", &t->algorithm, "HS256");
    get_int(p, obj, path, "ttl_s", &t->ttl_s, 3600, 1, 31 * 86400);
    get_int(p, obj, path, "leeway_s", &t->leeway_s, 30, 0, 3600);
    bool ok = false;
    for (const char *const *a = algs; *a; a++)
        if (t->algorithm && strcmp(*a, t->algorithm) == 0)
            ok = true;
    if (t->algorithm && !ok) {
        subpath(sp, path, "algorithm");
        err(p, sp, "\"%s\" is not one of HS256/384/512, RS256/384/512, "
            "ES256/384/512", t->algorithm);
    }
    json_t *arr = obj ? json_object_get(obj, "trusted_issuers") : NULL;
    subpath(sp, path, "trusted_issuers");
    if (arr == NULL || json_is_null(arr))
        return;
    if (!json_is_array(arr)) {
        err(p, sp, "must be an array");
        return;
    }
    t->trusted = calloc(json_array_size(arr) + 1, sizeof(*t->trusted));
    if (t->trusted == NULL)
        abort();
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        struct cfg_trusted_issuer *ti = &t->trusted[t->n_trusted++];
        indexpath(ip, sp, i);
        if (!json_is_object(o)) {
            err(p, ip, "must be an object");
            continue;
        }
        check_fields(p, o, ip, ti_fields);
        get_str(p, o, ip, "issuer", &ti->issuer, NULL);
        get_str(p, o, ip, "audience", &ti->audience, NULL);
        get_str(p, o, ip, "algorithm", &ti->algorithm, NULL);
        get_secret(p, o, ip, "public_key", &ti->public_key);
        char fp[PATH_MAX_LEN];
        if (ti->issuer == NULL) {
            subpath(fp, ip, "issuer");
            err(p, fp, "required");
        }
        if (ti->algorithm == NULL || ti->algorithm[0] == 'H') {
            subpath(fp, ip, "algorithm");
            err(p, fp, "required: RS256/384/512 or ES256/384/512");
        }
        if (ti->public_key == NULL) {
            subpath(fp, ip, "public_key");
            err(p, fp, "required: a PEM public key");
        }
    }
}

/* A Sentinel master name: what redis-sentinel accepts in a config line. */
static bool
master_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

/*
 * Where Redis is: redis.address (the default 127.0.0.1:6379 when neither is
 * given) or redis.sentinels + redis.master_name, never both: with two, which
 * one a writer follows after a failover would be a guess.
 */
static void
parse_redis_where(struct pctx *p, json_t *redis, struct cfg_redis *r)
{
    json_t *addr = json_object_get(redis, "address");
    json_t *sen = json_object_get(redis, "sentinels");
    json_t *mn = json_object_get(redis, "master_name");
    bool has_addr = addr != NULL && !json_is_null(addr);
    bool has_sen = sen != NULL && !json_is_null(sen);
    bool is_unix;
    char sp[PATH_MAX_LEN];

    if (!has_sen) {
        get_str(p, redis, "redis", "address", &r->address, "127.0.0.1:6379");
        if (mn != NULL && !json_is_null(mn))
            err(p, "redis.master_name", "only with redis.sentinels");
        return;
    }
    if (has_addr)
        err(p, "redis.sentinels", "give redis.address or redis.sentinels, not both");
    if (!json_is_array(sen) || json_array_size(sen) == 0 ||
        json_array_size(sen) > CFG_MAX_SENTINELS) {
        err(p, "redis.sentinels", "must be an array of 1 to %d \"host:port\"",
            CFG_MAX_SENTINELS);
    } else {
        size_t n = json_array_size(sen);
        r->sentinel_hosts = calloc(n, sizeof(*r->sentinel_hosts));
        r->sentinel_ports = calloc(n, sizeof(*r->sentinel_ports));
        if (r->sentinel_hosts == NULL || r->sentinel_ports == NULL)
            abort();
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(sen, i);
            indexpath(sp, "redis.sentinels", i);
            char *host = NULL;
            int port = 0;
            if (!json_is_string(e) ||
                config_parse_address(json_string_value(e), &host, &port, &is_unix) < 0 ||
                is_unix) {
                free(host);
                err(p, sp, "must be \"host:port\"");
                continue;
            }
            r->sentinel_hosts[r->n_sentinels] = host;
            r->sentinel_ports[r->n_sentinels++] = port;
        }
    }
    if (mn == NULL || json_is_null(mn))
        err(p, "redis.master_name", "required with redis.sentinels");
    else if (!json_is_string(mn) || !master_name_valid(json_string_value(mn)))
        err(p, "redis.master_name", "must be 1 to 64 of a-z A-Z 0-9 . _ -");
    else
        r->master_name = xstrdup(json_string_value(mn));
}

static struct config *
parse_root(struct pctx *p, json_t *root)
{
    static const char *const fields[] = {"workers", "listeners", "admin",
        "redis", "tokens", "limits", "log", "endpoints", "fleet", "tracing", NULL};
    static const char *const fleet_fields[] = {"name", "leader_lease_ms", NULL};
    static const char *const admin_fields[] = {"address", "token", "max_connections",
        NULL};
    static const char *const redis_fields[] = {"address", "db", "password",
        "flush_interval_ms", "retention_minutes", "sentinels", "master_name",
        "wait_replicas", "wait_timeout_ms", NULL};
    static const char *const limit_fields[] = {"max_header_bytes",
        "max_body_bytes", "header_timeout_ms", "idle_timeout_ms",
        "max_connections", "drain_timeout_ms", "max_pipelined",
        "max_client_output_bytes", "send_timeout_ms", "upstream_idle_timeout_ms",
        "max_shadow_inflight", "shadow_timeout_ms", "compare_budget_bytes",
        "h2_max_concurrent_streams", NULL};
    static const char *const log_fields[] = {"access_log", "level", NULL};
    char sp[PATH_MAX_LEN];
    bool is_unix;

    struct config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->refs = 1;
    if (!json_is_object(root)) {
        err(p, "", "the config must be a JSON object");
        return c;
    }
    check_fields(p, root, "", fields);
    get_int(p, root, "", "workers", &c->workers, 0, 0, 1024);

    json_t *ls = json_object_get(root, "listeners");
    if (!json_is_array(ls) || json_array_size(ls) == 0) {
        err(p, "listeners", "required: an array of at least one listener");
    } else {
        c->n_listeners = (int)json_array_size(ls);
        c->listeners = calloc((size_t)c->n_listeners, sizeof(*c->listeners));
        if (c->listeners == NULL)
            abort();
        for (int i = 0; i < c->n_listeners; i++) {
            indexpath(sp, "listeners", (size_t)i);
            parse_listener(p, json_array_get(ls, (size_t)i), sp,
                           &c->listeners[i]);
            for (int j = 0; j < i; j++)
                if (c->listeners[i].address && c->listeners[j].address &&
                    strcmp(c->listeners[i].address, c->listeners[j].address) == 0) {
                    char fp[PATH_MAX_LEN];
                    subpath(fp, sp, "address");
                    err(p, fp, "\"%s\" is already listeners[%d]",
                        c->listeners[i].address, j);
                }
        }
    }

    json_t *admin = get_obj(p, root, "", "admin");
    if (admin != NULL)
        check_fields(p, admin, "admin", admin_fields);
    get_str(p, admin, "admin", "address", &c->admin_address, "127.0.0.1:9901");
    if (c->admin_address != NULL &&
        (config_parse_address(c->admin_address, &c->admin_host,
                              &c->admin_port, &is_unix) < 0 || is_unix))
        err(p, "admin.address", "\"%s\" is not host:port", c->admin_address);
    get_secret(p, admin, "admin", "token", &c->admin_token);
    if (c->admin_token != NULL) {
        /* A placeholder left in a template, or a guessable token, would
         * open the admin API: refuse both (issue 20). */
        size_t n = strlen(c->admin_token);
        if (n < CFG_ADMIN_TOKEN_MIN)
            err(p, "admin.token", "must be at least %d bytes (it has %zu): make one with "
                "openssl rand -base64 32", CFG_ADMIN_TOKEN_MIN, n);
        else if (contains_nocase(c->admin_token, "replace"))
            err(p, "admin.token", "is a placeholder (it contains \"REPLACE\"): set a "
                "secret of your own");
    }
    get_int(p, admin, "admin", "max_connections", &c->admin_max_connections, 64, 1, 65536);

    json_t *redis = get_obj(p, root, "", "redis");
    if (redis != NULL)
        check_fields(p, redis, "redis", redis_fields);
    parse_redis_where(p, redis, &c->redis);
    if (c->redis.address != NULL &&
        (config_parse_address(c->redis.address, &c->redis.host,
                              &c->redis.port, &is_unix) < 0 || is_unix))
        err(p, "redis.address", "\"%s\" is not host:port", c->redis.address);
    get_int(p, redis, "redis", "db", &c->redis.db, 0, 0, 1000000);
    get_secret(p, redis, "redis", "password", &c->redis.password);
    /* At most a minute: per-minute counters are collected at least that often. */
    get_int(p, redis, "redis", "flush_interval_ms", &c->redis.flush_interval_ms,
            1000, 10, 60000);
    get_int(p, redis, "redis", "retention_minutes", &c->redis.retention_minutes,
            10080, 1, 5256000);
    get_int(p, redis, "redis", "wait_replicas", &c->redis.wait_replicas, 0, 0, 16);
    get_int(p, redis, "redis", "wait_timeout_ms", &c->redis.wait_timeout_ms, 1000, 10, 60000);

    parse_tokens(p, get_obj(p, root, "", "tokens"), &c->tokens);

    json_t *lim = get_obj(p, root, "", "limits");
    if (lim != NULL)
        check_fields(p, lim, "limits", limit_fields);
    uint64_t mhb;
    get_u64(p, lim, "limits", "max_header_bytes", &mhb, 16384, 1024, 81920);
    c->limits.max_header_bytes = (size_t)mhb;
    get_u64(p, lim, "limits", "max_body_bytes", &c->limits.max_body_bytes,
            16777216, 0, (uint64_t)1 << 40);
    get_int(p, lim, "limits", "header_timeout_ms", &c->limits.header_timeout_ms,
            10000, 1, 3600000);
    get_int(p, lim, "limits", "idle_timeout_ms", &c->limits.idle_timeout_ms,
            60000, 1, 86400000);
    get_int(p, lim, "limits", "max_connections", &c->limits.max_connections,
            20000, 1, 10000000);
    get_int(p, lim, "limits", "drain_timeout_ms", &c->limits.drain_timeout_ms,
            10000, 0, 3600000);
    get_int(p, lim, "limits", "max_pipelined", &c->limits.max_pipelined, 16, 1, 1024);
    get_int(p, lim, "limits", "h2_max_concurrent_streams", &c->limits.h2_max_concurrent_streams,
            128, 1, 1000);
    get_u64(p, lim, "limits", "max_client_output_bytes",
            &c->limits.max_client_output_bytes, 1048576, 4096, (uint64_t)1 << 30);
    get_int(p, lim, "limits", "send_timeout_ms", &c->limits.send_timeout_ms,
            30000, 1, 3600000);
    get_int(p, lim, "limits", "upstream_idle_timeout_ms",
            &c->limits.upstream_idle_timeout_ms, 4000, 1, 3600000);
    get_int(p, lim, "limits", "max_shadow_inflight", &c->limits.max_shadow_inflight,
            256, 0, 100000);
    get_int(p, lim, "limits", "shadow_timeout_ms", &c->limits.shadow_timeout_ms,
            5000, 1, 3600000);
    get_u64(p, lim, "limits", "compare_budget_bytes", &c->limits.compare_budget_bytes,
            16777216, 0, (uint64_t)1 << 34);

    json_t *log = get_obj(p, root, "", "log");
    if (log != NULL)
        check_fields(p, log, "log", log_fields);
    get_str(p, log, "log", "access_log", &c->log.access_log, "stderr");
    get_str(p, log, "log", "level", &c->log.level, "info");
    if (c->log.access_log != NULL && c->log.access_log[0] == '\0')
        err(p, "log.access_log", "must be \"stderr\", \"off\" or a path");
    else if (c->log.access_log != NULL && strcmp(c->log.access_log, "stderr") &&
             strcmp(c->log.access_log, "off")) {
        char *abs = resolve_path(p, c->log.access_log);
        free(c->log.access_log);
        c->log.access_log = abs;
    }
    if (c->log.level != NULL && strcmp(c->log.level, "debug") &&
        strcmp(c->log.level, "info") && strcmp(c->log.level, "warn") &&
        strcmp(c->log.level, "error"))
        err(p, "log.level", "must be debug, info, warn or error");

    char terr[256];
    if (tracing_config_parse(get_obj(p, root, "", "tracing"), &c->tracing, terr,
                             sizeof(terr)) < 0)
        err(p, "", "%s", terr);     /* "tracing.FIELD: reason" */

    json_t *fleet = get_obj(p, root, "", "fleet");
    c->fleet_lease_ms = 10000;
    if (fleet != NULL) {
        check_fields(p, fleet, "fleet", fleet_fields);
        /* At least 3 s: the driver renews at a third and stops driving 1 s
         * before its lease may have lapsed. */
        get_int(p, fleet, "fleet", "leader_lease_ms", &c->fleet_lease_ms, 10000, 3000, 600000);
        get_str(p, fleet, "fleet", "name", &c->fleet_name, NULL);
        json_t *fn = json_object_get(fleet, "name");
        if (fn == NULL || json_is_null(fn))
            err(p, "fleet.name", "required: 1 to 64 of A-Z a-z 0-9 . _ -");
        else if (c->fleet_name != NULL && !config_fleet_name_valid(c->fleet_name))
            err(p, "fleet.name", "\"%s\" is not 1 to 64 of A-Z a-z 0-9 . _ -",
                c->fleet_name);
    }

    json_t *eps = json_object_get(root, "endpoints");
    if (!json_is_array(eps)) {
        err(p, "endpoints", "required: an array of endpoints");
        return c;
    }
    c->n_endpoints = (int)json_array_size(eps);
    c->endpoints = calloc((size_t)c->n_endpoints + 1, sizeof(*c->endpoints));
    if (c->endpoints == NULL)
        abort();
    for (int i = 0; i < c->n_endpoints; i++) {
        indexpath(sp, "endpoints", (size_t)i);
        parse_endpoint(p, json_array_get(eps, (size_t)i), sp, &c->endpoints[i]);
        for (int j = 0; j < i; j++)
            if (c->endpoints[i].name[0] &&
                strcmp(c->endpoints[i].name, c->endpoints[j].name) == 0) {
                char fp[PATH_MAX_LEN];
                subpath(fp, sp, "name");
                err(p, fp, "duplicate endpoint name \"%s\"", c->endpoints[i].name);
            }
    }
    return c;
}

/* ---- lifetime ---------------------------------------------------------- */

static void
config_free(struct config *c)
{
    for (int i = 0; i < c->n_endpoints; i++) {
        struct cfg_endpoint *ep = &c->endpoints[i];
        free(ep->key_primary);
        free(ep->key_secondary);
        free(ep->sticky_name);
        for (int j = 0; j < CFG_MAX_VERSIONS; j++) {
            struct cfg_version *v = &ep->versions[j];
            for (int k = 0; k < v->n_upstreams; k++) {
                free(v->upstreams[k].address);
                free(v->upstreams[k].host);
            }
            free(v->upstreams);
            free(v->path);
            free(v->description);
            free(v->health.path);
            for (int k = 0; k < v->compare.n_ignore; k++)
                free(v->compare.ignore[k]);
            free(v->compare.ignore);
            free(v->rollout.reason);
        }
    }
    free(c->endpoints);
    for (int i = 0; i < c->n_listeners; i++) {
        struct cfg_listener *l = &c->listeners[i];
        free(l->address);
        free(l->host);
        free(l->certificate);
        free(l->private_key);
    }
    free(c->listeners);
    free(c->admin_address);
    free(c->admin_host);
    free(c->admin_token);
    free(c->redis.address);
    free(c->redis.host);
    free(c->redis.password);
    for (int i = 0; i < c->redis.n_sentinels; i++)
        free(c->redis.sentinel_hosts[i]);
    free(c->redis.sentinel_hosts);
    free(c->redis.sentinel_ports);
    free(c->redis.master_name);
    free(c->tokens.issuer);
    free(c->tokens.signing_key);
    free(c->tokens.algorithm);
    for (int i = 0; i < c->tokens.n_trusted; i++) {
        struct cfg_trusted_issuer *t = &c->tokens.trusted[i];
        free(t->issuer);
        free(t->audience);
        free(t->algorithm);
        free(t->public_key);
    }
    free(c->tokens.trusted);
    free(c->log.access_log);
    free(c->log.level);
    free(c->fleet_name);
    free(c->path);
    free(c->basedir);
    if (c->doc)
        json_decref(c->doc);
    free(c);
}

struct config *
config_parse(json_t *doc, const char *basedir, struct cfg_errors *errs)
{
    struct pctx p = {.errs = errs, .basedir = basedir};
    int before = errs->n;
    struct config *c = parse_root(&p, doc);

    if (errs->n != before) {
        config_free(c);
        return NULL;
    }
    c->basedir = xstrdup(basedir);
    c->doc = json_deep_copy(doc);
    if (c->doc == NULL)
        abort();
    return c;
}

static char *
dirname_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    char *d = malloc((size_t)(slash - path) + 1);
    if (d == NULL)
        abort();
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = '\0';
    return d;
}

struct config *
config_load(const char *path, struct cfg_errors *errs)
{
    struct pctx p = {.errs = errs, .basedir = NULL};
    json_error_t jerr;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        err(&p, "", "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    json_t *doc = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (doc == NULL) {
        err(&p, "", "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    char *dir = dirname_of(path);
    struct config *c = config_parse(doc, dir, errs);
    free(dir);
    json_decref(doc);
    if (c != NULL)
        c->path = xstrdup(path);
    return c;
}

struct config *
config_take(struct config *c)
{
    if (c != NULL)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void
config_drop(struct config *c)
{
    if (c != NULL && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
}

const struct cfg_endpoint *
config_endpoint(const struct config *c, const char *name, size_t len)
{
    for (int i = 0; i < c->n_endpoints; i++) {
        const struct cfg_endpoint *ep = &c->endpoints[i];
        if (strlen(ep->name) == len && memcmp(ep->name, name, len) == 0)
            return ep;
    }
    return NULL;
}

int
config_version_index(const struct cfg_endpoint *ep, const char *name,
                     size_t len)
{
    for (int i = 0; i < ep->n_versions; i++)
        if (strlen(ep->versions[i].name) == len &&
            memcmp(ep->versions[i].name, name, len) == 0)
            return i;
    return -1;
}
