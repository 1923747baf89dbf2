/*
 * Logs: JSON event lines on stderr and the access log. Workers buffer
 * access lines and hand whole buffers to log_access_write(), one write(2)
 * each, so lines from different workers never interleave.
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static int access_fd = -1;          /* -1: off */
static char access_path[4096];      /* empty: stderr */
static pthread_mutex_t event_lock = PTHREAD_MUTEX_INITIALIZER;

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

void
log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    char t[40], line[4096];
    int n;

    if (lvl < min_level)
        return;
    log_time_iso(t, sizeof(t));
    n = snprintf(line, sizeof(line),
                 "{\"time\":\"%s\",\"level\":\"%s\",\"event\":\"%s\"",
                 t, names[lvl], event);
    if (fmt != NULL && n < (int)sizeof(line)) {
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
    }
    if (n > (int)sizeof(line) - 3)
        n = (int)sizeof(line) - 3;
    line[n++] = '}';
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
        log_event(LOG_ERROR, "access_log_reopen_failed", ",\"reason\":\"%s\"", err);
        return -1;
    }
    log_event(LOG_INFO, "access_log_reopened", ",\"path\":\"%s\"", path);
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
