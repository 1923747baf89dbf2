/*
 * Header storage for http_parser callbacks. The parser may hand a name or
 * value over in several pieces (when it spans two reads), so pieces are
 * appended to the last entry until the other kind of callback arrives.
 */
#include "gateway/gateway.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <strings.h>

void
head_reset(struct head *hd)
{
    hd->len = 0;
    hd->url_off = hd->url_len = 0;
    hd->n = 0;
    hd->in_value = false;
    hd->too_many = false;
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

static int
append(struct head *hd, const char *at, size_t len)
{
    if (hd->len + len > hd->cap) {
        size_t cap = hd->cap ? hd->cap : 1024;
        while (cap < hd->len + len)
            cap *= 2;
        char *b = realloc(hd->buf, cap);
        if (b == NULL)
            return -1;
        hd->buf = b;
        hd->cap = cap;
    }
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
        if (hd->n == GW_MAX_HEADERS) {
            hd->too_many = true;
            return -1;
        }
        struct hdr *h = &hd->h[hd->n++];
        h->name_off = (uint32_t)hd->len;
        h->name_len = 0;
        h->val_off = 0;
        h->val_len = 0;
        hd->in_value = false;
    }
    hd->h[hd->n - 1].name_len += (uint32_t)len;
    return append(hd, at, len);
}

int
head_value(struct head *hd, const char *at, size_t len)
{
    struct hdr *h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        h->val_off = (uint32_t)hd->len;
        hd->in_value = true;
    }
    h->val_len += (uint32_t)len;
    return append(hd, at, len);
}

bool
head_name_is(const struct head *hd, int i, const char *lower)
{
    size_t n = strlen(lower);
    return hd->h[i].name_len == n &&
           strncasecmp(HD_NAME(hd, i), lower, n) == 0;
}

/* RFC 9110 §5.6.2 token characters. */
static bool
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

bool
head_names_valid(const struct head *hd)
{
    for (int i = 0; i < hd->n; i++) {
        const unsigned char *n = (const unsigned char *)HD_NAME(hd, i);
        if (hd->h[i].name_len == 0)
            return false;
        for (uint32_t k = 0; k < hd->h[i].name_len; k++)
            if (!is_tchar(n[k]))
                return false;
    }
    return true;
}

/* Whether the comma-separated list in value holds token (case-insensitive). */
static bool
list_has(const char *v, size_t vlen, const char *tok, size_t tlen)
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

/* Whether a Connection header names header i (RFC 9110 §7.6.1). */
static bool
named_by_connection(const struct head *hd, int i, const int conn[], int nconn)
{
    for (int c = 0; c < nconn; c++)
        if (list_has(HD_VAL(hd, conn[c]), hd->h[conn[c]].val_len,
                     HD_NAME(hd, i), hd->h[i].name_len))
            return true;
    return false;
}

static const struct {
    const char *name;
    uint8_t len;
    uint8_t cls;
} known[] = {
#define K(n, c) {n, sizeof(n) - 1, c}
    K("te", HC_HOP), K("host", HC_HOST), K("expect", HC_EXPECT), K("cookie", HC_COOKIE),
    K("trailer", HC_HOP), K("upgrade", HC_HOP), K("keep-alive", HC_HOP),
    K("connection", HC_HOP), K("x-request-id", HC_REQUEST_ID),
    K("authorization", HC_AUTHORIZATION), K("content-length", HC_CONTENT_LENGTH),
    K("x-sluice-group", HC_SLUICE_GROUP), K("x-forwarded-for", HC_XFF),
    K("proxy-connection", HC_HOP), K("x-sluice-version", HC_SLUICE_VERSION),
    K("transfer-encoding", HC_HOP), K("x-forwarded-proto", HC_XFP),
    K("x-sluice-failover", HC_SLUICE_FAILOVER), K("proxy-authenticate", HC_HOP),
    K("proxy-authorization", HC_HOP),
#undef K
};

void
head_classify(struct head *hd)
{
    int conn[8], nconn = 0;
    for (int c = 0; c < HC_COUNT; c++) {
        hd->first[c] = -1;
        hd->count[c] = 0;
    }
    for (int i = 0; i < hd->n; i++) {
        uint32_t len = hd->h[i].name_len;
        const char *name = HD_NAME(hd, i);
        uint8_t cls = HC_OTHER;
        for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
            if (known[k].len == len && strncasecmp(known[k].name, name, len) == 0) {
                cls = known[k].cls;
                break;
            }
        if (cls == HC_HOP && len == 10 && nconn < 8)
            conn[nconn++] = i;      /* a Connection header */
        hd->cls[i] = cls;
    }
    /* Headers that a Connection header names are hop-by-hop too. */
    for (int i = 0; nconn > 0 && i < hd->n; i++)
        if (hd->cls[i] != HC_HOP && named_by_connection(hd, i, conn, nconn))
            hd->cls[i] = HC_HOP;
    for (int i = 0; i < hd->n; i++) {
        uint8_t c = hd->cls[i];
        if (hd->first[c] < 0)
            hd->first[c] = (int16_t)i;
        hd->count[c]++;
    }
}

void
json_escape_add(struct evbuffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f)
            continue;
        if (i > start)
            evbuffer_add(b, s + start, i - start);
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            evbuffer_add(b, esc, 2);
        } else
            evbuffer_add(b, esc, 6);
        start = i + 1;
    }
    if (len > start)
        evbuffer_add(b, s + start, len - start);
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
    int i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    evbuffer_add(b, tmp + i, sizeof(tmp) - (size_t)i);
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

int
gw_read(struct bufferevent *bev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v;
    int rc;

    /* One read(2) into the input buffer, without the FIONREAD ioctl that
     * libevent's own read path makes before every read. */
    evbuffer_unfreeze(in, 0);
    if (evbuffer_reserve_space(in, GW_READ_SIZE, &v, 1) < 1) {
        evbuffer_freeze(in, 0);
        return GW_READ_ERROR;
    }
    ssize_t n = read(bufferevent_getfd(bev), v.iov_base, v.iov_len);
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(in, &v, 1);
        rc = (int)n;
    } else if (n == 0)
        rc = GW_READ_EOF;
    else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        rc = GW_READ_AGAIN;
    else
        rc = GW_READ_ERROR;
    evbuffer_freeze(in, 0);
    return rc;
}

void
gw_flush(struct bufferevent *bev, bool direct)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    if (evbuffer_get_length(out) == 0)
        return;
    /* Write now rather than wait a loop turn for EV_WRITE: saves the two
     * epoll_ctl calls per response that arming the write event costs. */
    if (direct) {
        /* A socket bufferevent freezes the start of its output so that only
         * it drains it; unfreeze around the write, as it does itself. */
        evbuffer_unfreeze(out, 1);
        evbuffer_write(out, bufferevent_getfd(bev));
        evbuffer_freeze(out, 1);
    }
    if (evbuffer_get_length(out) > 0)
        bufferevent_enable(bev, EV_WRITE);
}
