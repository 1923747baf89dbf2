/*
 * Logs: JSON event lines on stderr and the access log. Workers buffer
 * access lines and hand whole buffers to log_access_write(), one write(2)
 * each, so lines from different workers never interleave.
 */
#include "gateway/internal.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static int access_fd = -1;          /* -1: off */
static char access_path[4096];      /* empty: stderr */
static pthread_mutex_t event_lock = PTHREAD_MUTEX_INITIALIZER;

/* One JSON object, parsed: the safety net for lines built by callers. */
static bool
json_valid_line(const char *line, size_t len)
{
    json_t *j = json_loadb(line, len, 0, NULL);
    bool ok = json_is_object(j);
    json_decref(j);
    return ok;
}

void
log_init(void)
{
    access_fd = STDERR_FILENO;
}

void
log_set_level(const char *level)
{
    if (strcmp(level, "debug") == 0)
        min_level = LOG_DEBUG;
    else if (strcmp(level, "warn") == 0)
        min_level = LOG_WARN;
    else if (strcmp(level, "error") == 0)
        min_level = LOG_ERROR;
    else
        min_level = LOG_INFO;
}

void
log_time_iso(char *out, size_t len)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, len - n, ".%06ldZ", (long)tv.tv_usec);
}

const char *
log_jsonn(const char *s, size_t len)
{
    static __thread char ring[LOG_JSON_RING][LOG_JSON_MAX + 1];
    static __thread unsigned next;
    char *out = ring[next++ % LOG_JSON_RING];
    if (s == NULL)
        len = 0;
    config_json_escape(out, LOG_JSON_MAX + 1, s ? s : "", len);
    return out;
}

const char *
log_json(const char *s)
{
    return log_jsonn(s, s ? strlen(s) : 0);
}

void
log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    char t[40], line[4096];
    int n, head;

    if (lvl < min_level)
        return;
    log_time_iso(t, sizeof(t));
    head = n = snprintf(line, sizeof(line),
                        "{\"time\":\"%s\",\"level\":\"%s\",\"event\":\"%s\"",
                        t, names[lvl], event);
    if (fmt != NULL && n < (int)sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    bool cut = n > (int)sizeof(line) - 3;
    if (cut)
        n = (int)sizeof(line) - 3;
    line[n++] = '}';
    /* Event lines are rare: checking each costs little and keeps every
     * line parseable even when a caller interpolated raw text. */
    if (cut || !json_valid_line(line, (size_t)n)) {
        char fields[2048];
        size_t fl = (size_t)(n - 1 - head);
        config_json_escape(fields, sizeof(fields), line + head, fl);
        n = snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\","
                     "\"event\":\"%s\",\"unescaped\":\"%s\"%s}", t, names[lvl],
                     log_json(event), fields, cut ? ",\"truncated\":true" : "");
        if (n > (int)sizeof(line) - 2)
            n = (int)sizeof(line) - 2;     /* cannot happen: 2 KiB of fields */
    }
    line[n++] = '\n';
    pthread_mutex_lock(&event_lock);
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    pthread_mutex_unlock(&event_lock);
    (void)w;
}

int
log_access_open(const char *target, char *err, size_t errlen)
{
    if (strcmp(target, "off") == 0) {
        access_path[0] = '\0';
        if (access_fd > STDERR_FILENO)
            close(access_fd);
        access_fd = -1;
        return 0;
    }
    if (strcmp(target, "stderr") == 0) {
        access_path[0] = '\0';
        if (access_fd > STDERR_FILENO)
            close(access_fd);
        access_fd = STDERR_FILENO;
        return 0;
    }
    int fd = open(target, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open access log %s: %s", target,
                 strerror(errno));
        return -1;
    }
    snprintf(access_path, sizeof(access_path), "%s", target);
    if (access_fd > STDERR_FILENO) {
        /* dup2 swaps the file under the workers' feet atomically. */
        dup2(fd, access_fd);
        close(fd);
    } else
        access_fd = fd;
    return 0;
}

int
log_access_reopen(void)
{
    char err[512];
    if (access_path[0] == '\0')
        return 0;
    char path[sizeof(access_path)];
    memcpy(path, access_path, sizeof(path));
    if (log_access_open(path, err, sizeof(err)) < 0) {
        log_event(LOG_ERROR, "access_log_reopen_failed", ",\"reason\":\"%s\"",
                  log_json(err));
        return -1;
    }
    log_event(LOG_INFO, "access_log_reopened", ",\"path\":\"%s\"", log_json(path));
    return 0;
}

bool
log_access_enabled(void)
{
    return access_fd >= 0;
}

void
log_access_write(struct evbuffer *b)
{
    if (access_fd < 0) {
        evbuffer_drain(b, evbuffer_get_length(b));
        return;
    }
    while (evbuffer_get_length(b) > 0) {
        int n = evbuffer_write(b, access_fd);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            evbuffer_drain(b, evbuffer_get_length(b));
            break;
        }
    }
}
