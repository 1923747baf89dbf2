/*
 * Shared by the gateway's HTTP fuzz targets: the input is cut into reads
 * at fuzzer-chosen places (so that every header, chunk size and line end
 * also arrives in pieces), and heads are stored as the gateway stores them.
 */
#define _GNU_SOURCE             /* memmem */
#ifndef SLUICE_FUZZ_COMMON_H
#define SLUICE_FUZZ_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/internal.h"

/* The first byte of an input picks the read size (1 to 256 bytes, or the
 * whole input for 0); the rest is the bytes. */
struct reads {
    const uint8_t *data;
    size_t size, pos, step;
};

static inline void
reads_init(struct reads *r, const uint8_t *data, size_t size)
{
    r->step = size > 0 ? data[0] : 0;
    r->data = size > 0 ? data + 1 : data;
    r->size = size > 0 ? size - 1 : 0;
    r->pos = 0;
    if (r->step == 0)
        r->step = r->size ? r->size : 1;
}

static inline bool
reads_next(struct reads *r, const char **at, size_t *len)
{
    if (r->pos >= r->size)
        return false;
    size_t n = r->size - r->pos < r->step ? r->size - r->pos : r->step;
    *at = (const char *)r->data + r->pos;
    *len = n;
    r->pos += n;
    return true;
}

static inline int
fz_url(llhttp_t *p, const char *at, size_t len)
{
    return head_url(p->data, at, len) < 0 ? HPE_USER : 0;
}

static inline int
fz_field(llhttp_t *p, const char *at, size_t len)
{
    return head_field(p->data, at, len) < 0 ? HPE_USER : 0;
}

static inline int
fz_value(llhttp_t *p, const char *at, size_t len)
{
    return head_value(p->data, at, len) < 0 ? HPE_USER : 0;
}

/* Every line of a composed head ends in CR LF, has no bare CR or LF, and
 * every field line has a colon: nothing a client sent can split a header. */
static inline void
check_head_lines(const char *s, size_t n)
{
    const char *end = memmem(s, n, "\r\n\r\n", 4);
    if (end == NULL)
        abort();
    const char *line = s;
    bool first = true;
    while (line < end + 2) {
        const char *crlf = memmem(line, (size_t)(end + 2 - line), "\r\n", 2);
        if (crlf == NULL)
            abort();
        if (memchr(line, '\n', (size_t)(crlf - line)) || memchr(line, '\r', (size_t)(crlf - line)))
            abort();
        if (!first && memchr(line, ':', (size_t)(crlf - line)) == NULL)
            abort();
        first = false;
        line = crlf + 2;
    }
}
#endif
