/*
 * Heads: header storage for llhttp callbacks and what each header is to a
 * proxy. The parser may hand a name or value over in several pieces (when
 * it spans two reads), so pieces are appended to the last entry until the
 * other kind of callback arrives. Also the small writers that keep printf
 * off the request path.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void
head_reset(struct head *hd)
{
    hd->len = 0;
    hd->url_off = hd->url_len = 0;
    hd->n = 0;
    hd->in_value = false;
    hd->pin = -1;
    hd->lowercase = false;
    for (int c = 0; c < HC_COUNT; c++) {
        hd->first[c] = -1;          /* until head_classify() runs */
        hd->count[c] = 0;
    }
}

void
head_free(struct head *hd)
{
    free(hd->buf);
    memset(hd, 0, sizeof(*hd));
}

/* Append a piece; the buffer exists after the first piece, even an empty
 * one, so names and values always point into it. */
static int
append(struct head *hd, const char *at, size_t len)
{
    if (hd->buf == NULL || hd->len + len > hd->cap) {
        size_t cap = hd->cap ? hd->cap : 1024;
        while (cap < hd->len + len)
            cap *= 2;
        char *b = realloc(hd->buf, cap);
        if (b == NULL)
            return -1;
        hd->buf = b;
        hd->cap = cap;
    }
    if (len > 0)
        memcpy(hd->buf + hd->len, at, len);
    hd->len += len;
    return 0;
}

int
head_url(struct head *hd, const char *at, size_t len)
{
    if (hd->url_len == 0)
        hd->url_off = (uint32_t)hd->len;
    hd->url_len += (uint32_t)len;
    return append(hd, at, len);
}

int
head_field(struct head *hd, const char *at, size_t len)
{
    if (hd->n == 0 || hd->in_value) {
        if (hd->n == GW_MAX_HEADERS)
            return -1;
        struct hdr *h = &hd->h[hd->n++];
        h->name_off = (uint32_t)hd->len;
        h->name_len = 0;
        h->val_off = (uint32_t)hd->len;
        h->val_len = 0;
        hd->in_value = false;
    }
    hd->h[hd->n - 1].name_len += (uint32_t)len;
    return append(hd, at, len);
}

int
head_value(struct head *hd, const char *at, size_t len)
{
    if (hd->n == 0)
        return -1;
    struct hdr *h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        h->val_off = (uint32_t)hd->len;
        hd->in_value = true;
    }
    h->val_len += (uint32_t)len;
    return append(hd, at, len);
}


bool
http_list_has(const char *v, size_t vlen, const char *tok, size_t tlen)
{
    size_t i = 0;
    while (i < vlen) {
        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < vlen && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tlen && strncasecmp(v + s, tok, tlen) == 0)
            return true;
    }
    return false;
}

/* The class of a header name that has one, by its length first (one or
 * two comparisons, not a walk through every known name). */
static uint8_t
known_class(const char *name, uint32_t len)
{
    char c0 = (char)(name[0] | 0x20);       /* lowercase for letters */
#define IS(lit) (sizeof(lit) - 1 == len && c0 == (lit)[0] && strncasecmp(name, lit, len) == 0)
    switch (len) {
    case 2:  return IS("te") ? HC_HOP : HC_OTHER;
    case 4:  return IS("host") ? HC_HOST : HC_OTHER;
    case 6:  return IS("expect") ? HC_EXPECT : IS("cookie") ? HC_COOKIE : HC_OTHER;
    case 7:  return IS("trailer") || IS("upgrade") ? HC_HOP : HC_OTHER;
    case 10:
        if (c0 == 'c')
            return IS("connection") ? HC_CONNECTION : HC_OTHER;
        return IS("keep-alive") ? HC_HOP : IS("tracestate") ? HC_TRACESTATE : HC_OTHER;
    case 11: return IS("traceparent") ? HC_TRACEPARENT : HC_OTHER;
    case 12: return IS("x-request-id") ? HC_REQUEST_ID : HC_OTHER;
    case 13: return IS("authorization") ? HC_AUTHORIZATION : HC_OTHER;
    case 14:
        if (c0 == 'c')
            return IS("content-length") ? HC_CONTENT_LENGTH : HC_OTHER;
        return IS("x-sluice-group") ? HC_SLUICE : HC_OTHER;
    case 15: return IS("x-forwarded-for") ? HC_XFF : HC_OTHER;
    case 16:
        if (c0 == 'p')
            return IS("proxy-connection") ? HC_HOP : HC_OTHER;
        return IS("x-sluice-version") ? HC_SLUICE : HC_OTHER;
    case 17:
        if (c0 == 't')
            return IS("transfer-encoding") ? HC_TRANSFER_ENCODING : HC_OTHER;
        return IS("x-forwarded-proto") ? HC_XFP : IS("x-sluice-failover") ? HC_SLUICE : HC_OTHER;
    case 18: return IS("proxy-authenticate") ? HC_HOP : HC_OTHER;
    case 19: return IS("proxy-authorization") ? HC_HOP : HC_OTHER;
    default: return HC_OTHER;
    }
#undef IS
}

void
head_classify(struct head *hd)
{
    int nconn = 0;
    hd->pin = -1;
    for (int c = 0; c < HC_COUNT; c++) {
        hd->first[c] = -1;
        hd->count[c] = 0;
    }
    for (int i = 0; i < hd->n; i++) {
        uint32_t len = hd->h[i].name_len;
        const char *name = HD_NAME(hd, i);
        uint8_t cls = len > 0 ? known_class(name, len) : HC_OTHER;
        if (cls == HC_OTHER && len > 9 && strncasecmp(name, "x-sluice-", 9) == 0)
            cls = HC_SLUICE;        /* every X-Sluice-* is ours to set */
        if (cls == HC_CONNECTION)
            nconn++;
        else if (cls == HC_SLUICE && len == 16 && hd->pin < 0 &&
                 strncasecmp(name, "x-sluice-version", 16) == 0)
            hd->pin = (int16_t)i;
        hd->cls[i] = cls;
    }
    /* Headers that any Connection header names are hop-by-hop too; every
     * Connection header counts, however many there are. */
    for (int i = 0; nconn > 0 && i < hd->n; i++) {
        if (hd->cls[i] == HC_HOP || hd->cls[i] == HC_CONNECTION)
            continue;
        for (int c = 0; c < hd->n; c++)
            if (hd->cls[c] == HC_CONNECTION &&
                http_list_has(HD_VAL(hd, c), hd->h[c].val_len, HD_NAME(hd, i),
                              hd->h[i].name_len)) {
                if (hd->cls[i] == HC_SLUICE && i == hd->pin)
                    hd->pin = -1;
                hd->cls[i] = HC_HOP;
                break;
            }
    }
    for (int i = 0; i < hd->n; i++) {
        uint8_t c = hd->cls[i];
        if (hd->first[c] < 0)
            hd->first[c] = (int16_t)i;
        hd->count[c]++;
    }
}

bool
head_length(const struct head *hd, uint64_t *n)
{
    int cl = hd->first[HC_CONTENT_LENGTH];
    *n = 0;
    if (cl < 0 || hd->count[HC_CONTENT_LENGTH] != 1 || hd->h[cl].val_len == 0 ||
        hd->h[cl].val_len > 19)
        return false;
    uint64_t v = 0;
    for (uint32_t i = 0; i < hd->h[cl].val_len; i++) {
        char ch = HD_VAL(hd, cl)[i];            /* not NUL-ended: bounded */
        if (ch < '0' || ch > '9')
            return false;
        v = v * 10 + (uint64_t)(ch - '0');
    }
    *n = v;
    return true;
}

void
json_escape_add(struct evbuffer *b, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t need, k = config_utf8_char(s + i, len - i, &need);
            if (k > 0) {
                i += k;
                continue;
            }
        }
        if (i > start)
            evbuffer_add(b, str + start, i - start);
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            evbuffer_add(b, esc, 2);
        } else
            evbuffer_add(b, esc, 6);
        start = ++i;
    }
    if (len > start)
        evbuffer_add(b, str + start, len - start);
}

void
buf_str(struct evbuffer *b, const char *str)
{
    evbuffer_add(b, str, strlen(str));
}

void
buf_u64(struct evbuffer *b, uint64_t n)
{
    char tmp[24];
    evbuffer_add(b, tmp, fmt_u64(tmp, n));
}

size_t
fmt_u64(char *out, uint64_t n)
{
    char tmp[24];
    int i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    memcpy(out, tmp + i, sizeof(tmp) - (size_t)i);
    return sizeof(tmp) - (size_t)i;
}

void
buf_chunk_size(struct evbuffer *b, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[24];
    int i = sizeof(tmp);
    tmp[--i] = '\n';
    tmp[--i] = '\r';
    do {
        tmp[--i] = hex[n & 15];
        n >>= 4;
    } while (n > 0);
    evbuffer_add(b, tmp + i, sizeof(tmp) - (size_t)i);
}

const char *
http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* The monotonic clock in microseconds. */
uint64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
