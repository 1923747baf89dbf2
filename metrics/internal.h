/* Shared inside the metrics module only (redis.c, primary.c). */
#ifndef SLUICE_METRICS_INTERNAL_H
#define SLUICE_METRICS_INTERNAL_H

/* An event line through the logger set with metrics_set_logger(). */
void metrics_logf(const char *event, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Text for a log line, JSON-escaped (main thread; valid for a few calls). */
const char *metrics_jstr(const char *s);

#endif
