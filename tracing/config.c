/*
 * The "tracing" object (SPEC §10):
 *   {"otlp_endpoint": "http://HOST:PORT/v1/traces", "sample_ratio": 0.01,
 *    "service_name": "sluice", "batch_max_spans": 512,
 *    "queue_max_spans": 2048, "export_interval_ms": 1000,
 *    "export_timeout_ms": 10000}
 * Every field is optional. Pure: reads JSON, writes the struct, nothing else.
 */
#include "tracing/tracing.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int
fail(char *err, size_t errlen, const char *field, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err == NULL || errlen == 0)
        return -1;
    n = snprintf(err, errlen, "tracing%s%s: ", field ? "." : "", field ? field : "");
    if (n >= 0 && (size_t)n < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* The integer fields: name, where, default, range. */
struct uint_field {
    const char *name;
    size_t off;
    unsigned def, min, max;
};

static const struct uint_field uint_fields[] = {
    {"batch_max_spans", offsetof(struct tracing_config, batch_max_spans), 512, 1, 65536},
    {"queue_max_spans", offsetof(struct tracing_config, queue_max_spans), 2048, 16, 1u << 20},
    {"export_interval_ms", offsetof(struct tracing_config, export_interval_ms), 1000, 10, 3600000},
    {"export_timeout_ms", offsetof(struct tracing_config, export_timeout_ms), 10000, 10, 600000},
};

static bool
host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_';
}

/* http://HOST[:PORT][/PATH], HOST a name, an IPv4 address or [IPv6]. */
static int
parse_endpoint(const char *url, struct tracing_config *out, char *err, size_t errlen)
{
    static const char F[] = "otlp_endpoint";
    const char *p = url, *h, *he;

    if (strncmp(p, "https://", 8) == 0)
        return fail(err, errlen, F, "only http:// endpoints are supported");
    if (strncmp(p, "http://", 7) != 0)
        return fail(err, errlen, F, "must be a URL http://HOST:PORT/PATH");
    p += 7;
    if (*p == '[') {
        h = ++p;
        while (*p && *p != ']' && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                                   (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
            p++;
        if (*p != ']' || p == h)
            return fail(err, errlen, F, "bad IPv6 address");
        he = p++;
    } else {
        h = p;
        while (host_char(*p))
            p++;
        he = p;
    }
    if (he == h)
        return fail(err, errlen, F, "no host");
    if ((size_t)(he - h) > TRACING_HOST_MAX)
        return fail(err, errlen, F, "host longer than %d characters", TRACING_HOST_MAX);
    memcpy(out->host, h, (size_t)(he - h));
    out->host[he - h] = '\0';

    out->port = 80;
    if (*p == ':') {
        unsigned long port = 0;
        const char *d = ++p;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (unsigned long)(*p++ - '0');
        if (p == d || port == 0 || port > 65535)
            return fail(err, errlen, F, "port must be 1 to 65535");
        out->port = (uint16_t)port;
    }
    if (*p == '\0') {
        strcpy(out->path, "/v1/traces");
        return 0;
    }
    if (*p != '/')
        return fail(err, errlen, F, "must be a URL http://HOST:PORT/PATH");
    if (strlen(p) > TRACING_PATH_MAX)
        return fail(err, errlen, F, "path longer than %d characters", TRACING_PATH_MAX);
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '#')
            return fail(err, errlen, F, "path has a character that needs escaping");
    strcpy(out->path, p);
    return 0;
}

int
tracing_config_parse(const struct json_t *cobj, struct tracing_config *out,
                     char *err, size_t errlen)
{
    static const char *const known[] = {"otlp_endpoint", "sample_ratio", "service_name",
        "batch_max_spans", "queue_max_spans", "export_interval_ms", "export_timeout_ms", NULL};
    json_t *obj = (json_t *)(uintptr_t)cobj;     /* jansson's getters take non-const */
    const char *key;
    json_t *v;

    memset(out, 0, sizeof(*out));
    strcpy(out->service_name, "sluice");
    for (size_t i = 0; i < sizeof(uint_fields) / sizeof(uint_fields[0]); i++)
        *(unsigned *)((char *)out + uint_fields[i].off) = uint_fields[i].def;
    if (obj == NULL || json_is_null(obj)) {
        out->sample_ratio = 0;
        out->sample_threshold = TRACING_SAMPLE_NONE;
        return 0;
    }
    if (!json_is_object(obj))
        return fail(err, errlen, NULL, "must be an object");
    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (const char *const *k = known; *k; k++)
            ok |= strcmp(*k, key) == 0;
        if (!ok)
            return fail(err, errlen, key, "unknown field");
    }

    v = json_object_get(obj, "otlp_endpoint");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v))
            return fail(err, errlen, "otlp_endpoint", "must be a string");
        if (parse_endpoint(json_string_value(v), out, err, errlen) < 0)
            return -1;
        out->export = true;
    }

    out->sample_ratio = 1.0;
    v = json_object_get(obj, "sample_ratio");
    if (v != NULL && !json_is_null(v)) {
        double r = json_is_number(v) ? json_number_value(v) : -1;
        if (!json_is_number(v) || !(r >= 0 && r <= 1))
            return fail(err, errlen, "sample_ratio", "must be a number from 0 to 1");
        out->sample_ratio = r;
    }
    /* Sampled when the trace id's 56 random bits are at least (1 - r) * 2^56. */
    out->sample_threshold = (uint64_t)ldexp(1.0 - out->sample_ratio, 56);
    if (out->sample_ratio > 0 && out->sample_threshold >= TRACING_SAMPLE_NONE)
        out->sample_threshold = TRACING_SAMPLE_NONE - 1;

    v = json_object_get(obj, "service_name");
    if (v != NULL && !json_is_null(v)) {
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;
        if (s == NULL || s[0] == '\0' || strlen(s) > TRACING_SERVICE_MAX)
            return fail(err, errlen, "service_name", "must be a string of 1 to %d characters",
                        TRACING_SERVICE_MAX);
        strcpy(out->service_name, s);
    }

    for (size_t i = 0; i < sizeof(uint_fields) / sizeof(uint_fields[0]); i++) {
        const struct uint_field *f = &uint_fields[i];
        v = json_object_get(obj, f->name);
        if (v == NULL || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < f->min ||
            json_integer_value(v) > f->max)
            return fail(err, errlen, f->name, "must be an integer from %u to %u", f->min, f->max);
        *(unsigned *)((char *)out + f->off) = (unsigned)json_integer_value(v);
    }
    if (out->queue_max_spans & (out->queue_max_spans - 1))
        return fail(err, errlen, "queue_max_spans", "must be a power of two");
    if (out->batch_max_spans > out->queue_max_spans)
        return fail(err, errlen, "batch_max_spans", "must not exceed queue_max_spans");
    return 0;
}
