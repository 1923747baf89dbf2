/*
 * The metrics module's event lines (main thread): the logger set with
 * metrics_set_logger(), and text JSON-escaped for a line. Used by redis.c,
 * query.c and primary.c (metrics/internal.h).
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static metrics_log_fn log_hook;

void
metrics_set_logger(metrics_log_fn fn)
{
    log_hook = fn;
}

/* An event line through the gateway's logger (metrics_set_logger); without
 * one (unit tests), a bare line on stderr. */
static void
vlog(const char *event, const char *fmt, va_list ap)
{
    char fields[1024];
    int n = vsnprintf(fields, sizeof(fields), fmt, ap);
    if (n < 0 || n >= (int)sizeof(fields))
        snprintf(fields, sizeof(fields), ",\"truncated\":true");
    if (log_hook != NULL) {
        log_hook(event, fields);
        return;
    }
    fprintf(stderr, "{\"event\":\"%s\"%s}\n", event, fields);
}

void
logf_(const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(event, fmt, ap);
    va_end(ap);
}

void
metrics_logf(const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(event, fmt, ap);
    va_end(ap);
}

/* Text from Redis or the config for a log line, escaped (main thread only;
 * a ring of four, enough for one line). */
const char *
jstr(const char *s)
{
    static char ring[4][512];
    static unsigned next;
    char *out = ring[next++ % 4];
    config_json_escape(out, sizeof(ring[0]), s ? s : "", s ? strlen(s) : 0);
    return out;
}

const char *
metrics_jstr(const char *s)
{
    return jstr(s);
}
