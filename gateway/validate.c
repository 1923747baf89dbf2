/*
 * Request validation and the routing inputs of a request head: pure
 * functions of a parsed head, tested without a socket (tests/unit/
 * test_gateway.c). llhttp (strict mode) checks the syntax of the request
 * line, field lines and chunked framing; what SPEC §3.7 asks beyond that
 * is checked here.
 */
#include "gateway/internal.h"

#include <string.h>
#include <strings.h>

#define SCORE_PREFIX "/api/v1/service/"
#define SCORE_SUFFIX "/score"

static const struct req_cause_info causes[RC_COUNT] = {
    [RC_OK] = {0, NULL, NULL, -1},
    [RC_BAD_REQUEST] = {400, "bad_request", "bad_request", REJ_BAD_REQUEST},
    [RC_BAD_VERSION] = {505, "http_version_not_supported", "bad_version", REJ_BAD_REQUEST},
    [RC_UNAUTHORIZED] = {401, "unauthorized", "unauthorized", REJ_UNAUTHORIZED},
    [RC_NOT_FOUND] = {404, "not_found", "not_found", REJ_NOT_FOUND},
    [RC_CLIENT_TIMEOUT] = {408, "timeout", "client_timeout", REJ_TIMEOUT},
    [RC_TOO_LARGE] = {413, "too_large", "body_too_large", REJ_TOO_LARGE},
    [RC_HEADERS_TOO_LARGE] = {431, "headers_too_large", "headers_too_large", REJ_TOO_LARGE},
    [RC_UNAVAILABLE] = {503, "unavailable", "no_healthy_upstream", -1},
    [RC_OVERLOADED] = {503, "overloaded", "overloaded", -1},
    [RC_UPSTREAM_CONNECT] = {502, "bad_gateway", "upstream_connect_failed", -1},
    [RC_UPSTREAM_RESET] = {502, "bad_gateway", "upstream_reset", -1},
    [RC_UPSTREAM_CLOSED] = {502, "bad_gateway", "upstream_closed", -1},
    [RC_UPSTREAM_INVALID] = {502, "bad_gateway", "upstream_invalid_response", -1},
    [RC_UPSTREAM_TIMEOUT] = {504, "gateway_timeout", "upstream_timeout", -1},
    [RC_CLIENT_CLOSED] = {0, NULL, "client_closed", -1},
    [RC_CLIENT_ERROR] = {0, NULL, "client_error", -1},
    [RC_SEND_TIMEOUT] = {0, NULL, "send_timeout", -1},
    [RC_SHUTDOWN] = {0, NULL, "shutdown", -1},
};

const struct req_cause_info *
req_cause_info(enum req_cause c)
{
    return &causes[(unsigned)c < RC_COUNT ? c : RC_BAD_REQUEST];
}

enum req_cause
req_parse_error_cause(int e)
{
    return e == HPE_INVALID_VERSION ? RC_BAD_VERSION : RC_BAD_REQUEST;
}

/* RFC 3986 unreserved / sub-delims / pct-encoded, the characters of a
 * reg-name (and, with digits and dots, of an IPv4 address). */
static bool
regname_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("-._~!$&'()*+,;=%", c) != NULL;
}

bool
req_host_valid(const char *v, size_t len)
{
    size_t i = 0;
    if (len == 0)
        return false;
    if (v[0] == '[') {
        /* IP-literal: hex digits, colons and dots (an embedded IPv4). */
        const char *close = memchr(v, ']', len);
        if (close == NULL || close == v + 1)
            return false;
        for (const char *p = v + 1; p < close; p++)
            if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
                  (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
                return false;
        i = (size_t)(close - v) + 1;
    } else {
        while (i < len && v[i] != ':') {
            unsigned char c = (unsigned char)v[i];
            if (!regname_char(c))
                return false;
            if (c == '%' && (i + 2 >= len || !strchr("0123456789abcdefABCDEF", v[i + 1]) ||
                             !strchr("0123456789abcdefABCDEF", v[i + 2])))
                return false;
            i++;
        }
        if (i == 0)
            return false;
    }
    if (i == len)
        return true;
    if (v[i] != ':')
        return false;
    size_t digits = 0;
    for (i++; i < len; i++, digits++)
        if (v[i] < '0' || v[i] > '9' || digits == 5)
            return false;
    return true;                    /* "host:" (empty port) is allowed by RFC 3986 */
}

/* RFC 9110 §5.6.2 token characters. */
static bool
tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Split origin-form or absolute-form (http/https) targets into path and
 * query. */
static bool
parse_target(const struct head *hd, struct req_target *t)
{
    const char *u = hd->buf + hd->url_off;
    size_t n = hd->url_len, p = 0;

    if (n == 0)
        return false;
    if (u[0] != '/') {
        size_t sl;
        if (n > 7 && strncasecmp(u, "http://", 7) == 0)
            sl = 7;
        else if (n > 8 && strncasecmp(u, "https://", 8) == 0)
            sl = 8;
        else
            return false;
        const char *slash = memchr(u + sl, '/', n - sl);
        if (slash == NULL || !req_host_valid(u + sl, (size_t)(slash - u) - sl))
            return false;
        p = (size_t)(slash - u);
    }
    for (size_t k = p; k < n; k++) {
        unsigned char c = (unsigned char)u[k];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return false;           /* llhttp allows some of these in strict mode */
    }
    const char *q = memchr(u + p, '?', n - p);
    t->path_off = hd->url_off + (uint32_t)p;
    t->path_len = (uint32_t)((q ? (size_t)(q - u) : n) - p);
    t->has_query = q != NULL;
    t->query_off = q ? hd->url_off + (uint32_t)(q - u) + 1 : 0;
    t->query_len = q ? (uint32_t)(n - (size_t)(q - u) - 1) : 0;
    return true;
}

static struct req_verdict
refuse(enum req_cause c, const char *msg, bool close)
{
    struct req_verdict v = {c, msg, close};
    return v;
}

struct req_verdict
req_validate(const struct head *hd, const struct req_line *rl,
             const struct cfg_limits *lim, struct req_target *t)
{
    if (rl->major == 0)             /* a version-less HTTP/0.9 line */
        return refuse(RC_BAD_REQUEST, "the request line has no HTTP version", true);
    if (rl->major != 1 || rl->minor > 1)
        return refuse(RC_BAD_VERSION, "only HTTP/1.0 and HTTP/1.1 are supported", true);
    for (int i = 0; !rl->fields_checked && i < hd->n; i++) {
        const unsigned char *nm = (const unsigned char *)HD_NAME(hd, i);
        if (hd->h[i].name_len == 0)
            return refuse(RC_BAD_REQUEST, "empty header field name", true);
        for (uint32_t k = 0; k < hd->h[i].name_len; k++)
            if (!tchar(nm[k]))
                return refuse(RC_BAD_REQUEST, "invalid header field name", true);
        /* Folded lines are refused by req_scan_lines(); CR, LF or NUL in a
         * value would still be a smuggling vector if llhttp let one by. */
        const char *val = HD_VAL(hd, i);
        if (memchr(val, '\r', hd->h[i].val_len) || memchr(val, '\n', hd->h[i].val_len) ||
            memchr(val, '\0', hd->h[i].val_len))
            return refuse(RC_BAD_REQUEST, "invalid header field value", true);
    }
    int hosts = hd->count[HC_HOST];
    if (hosts > 1 || (rl->minor == 1 && hosts != 1))
        return refuse(RC_BAD_REQUEST, "a request needs exactly one Host header", true);
    if (hosts == 1) {
        int h = hd->first[HC_HOST];
        if (!req_host_valid(HD_VAL(hd, h), hd->h[h].val_len))
            return refuse(RC_BAD_REQUEST, "invalid Host header", true);
    }
    if (rl->method == HTTP_CONNECT || rl->upgrade)
        return refuse(RC_BAD_REQUEST, "protocol upgrades and CONNECT are not supported", true);
    /* Only "chunked" as a transfer coding: anything else leaves the length
     * of the body to guesswork (llhttp would flag some of it only after
     * the head, when it may have been routed already). */
    int te = hd->first[HC_TRANSFER_ENCODING];
    if (te >= 0 && (hd->count[HC_TRANSFER_ENCODING] != 1 || hd->h[te].val_len != 7 ||
                    strncasecmp(HD_VAL(hd, te), "chunked", 7) != 0 || rl->minor == 0))
        return refuse(RC_BAD_REQUEST, "unsupported Transfer-Encoding", true);
    if (te >= 0 && hd->count[HC_CONTENT_LENGTH] > 0)
        return refuse(RC_BAD_REQUEST, "both Content-Length and Transfer-Encoding", true);
    if (!parse_target(hd, t))
        return refuse(RC_BAD_REQUEST, "invalid request target", true);
    if (rl->has_length && rl->content_length > lim->max_body_bytes)
        return refuse(RC_TOO_LARGE, "the request body is over max_body_bytes", true);
    return refuse(RC_OK, NULL, false);
}

enum req_scan
req_scan_lines(struct line_scan *sc, const char *from, const char *chunk, const char *end,
               char prev)
{
    if (sc->line_start && from < end) {
        sc->line_start = false;
        if (*from == ' ' || *from == '\t') {
            sc->active = false;
            return SCAN_FOLD;
        }
    }
    while (from < end) {
        const char *lf = memchr(from, '\n', (size_t)(end - from));
        if (lf == NULL) {
            sc->line_bytes += (size_t)(end - from);
            return SCAN_MORE;       /* the next read goes on */
        }
        char before = lf > chunk ? lf[-1] : prev;
        if (before != '\r') {
            sc->active = false;
            return SCAN_BARE_LF;
        }
        size_t line = sc->line_bytes + (size_t)(lf - from);
        sc->line_bytes = 0;
        from = lf + 1;
        if (line == 1) {            /* CR alone: the empty line */
            sc->active = false;
            return SCAN_END;
        }
        if (from == end) {          /* the next line starts in the next read */
            sc->line_start = true;
        } else if (*from == ' ' || *from == '\t') {
            sc->active = false;     /* obs-fold (issue 17 finding 2) */
            return SCAN_FOLD;
        }
    }
    return SCAN_MORE;
}

bool
req_score_path(const char *path, size_t len, const char **ep, size_t *eplen)
{
    size_t pl = sizeof(SCORE_PREFIX) - 1, sl = sizeof(SCORE_SUFFIX) - 1;
    if (len <= pl + sl || memcmp(path, SCORE_PREFIX, pl) != 0 ||
        memcmp(path + len - sl, SCORE_SUFFIX, sl) != 0)
        return false;
    *ep = path + pl;
    *eplen = len - pl - sl;
    return memchr(*ep, '/', *eplen) == NULL;
}

bool
req_v2_path(const char *path, size_t len, const char **ep, size_t *eplen, const char **ver,
            size_t *verlen)
{
    static const char prefix[] = "/v2/models/", infer[] = "/infer", vers[] = "/versions/";
    size_t pl = sizeof(prefix) - 1, il = sizeof(infer) - 1;
    if (len <= pl + il || memcmp(path, prefix, pl) != 0 ||
        memcmp(path + len - il, infer, il) != 0)
        return false;
    const char *p = path + pl, *end = path + len - il;
    const char *slash = memchr(p, '/', (size_t)(end - p));
    *ep = p;
    *ver = NULL;
    *verlen = 0;
    if (slash == NULL) {
        *eplen = (size_t)(end - p);
        return *eplen > 0;
    }
    *eplen = (size_t)(slash - p);
    size_t vl = sizeof(vers) - 1;
    if ((size_t)(end - slash) <= vl || memcmp(slash, vers, vl) != 0)
        return false;
    *ver = slash + vl;
    *verlen = (size_t)(end - *ver);
    return *eplen > 0 && memchr(*ver, '/', *verlen) == NULL;
}

bool
req_sticky_key(const struct head *hd, const struct cfg_endpoint *ep, const char **key,
               size_t *len)
{
    if (ep->sticky == CFG_STICKY_HEADER) {
        for (int i = 0; i < hd->n; i++)
            if (head_name_is(hd, i, ep->sticky_name) && hd->h[i].val_len > 0) {
                *key = HD_VAL(hd, i);
                *len = hd->h[i].val_len;
                return true;
            }
        return false;
    }
    if (ep->sticky != CFG_STICKY_COOKIE)
        return false;
    size_t nl = strlen(ep->sticky_name);
    for (int i = 0; i < hd->n; i++) {
        if (hd->cls[i] != HC_COOKIE)
            continue;
        const char *v = HD_VAL(hd, i), *end = v + hd->h[i].val_len;
        while (v < end) {
            while (v < end && (*v == ' ' || *v == ';'))
                v++;
            const char *semi = memchr(v, ';', (size_t)(end - v));
            const char *stop = semi ? semi : end;
            const char *eq = memchr(v, '=', (size_t)(stop - v));
            if (eq && (size_t)(eq - v) == nl && memcmp(v, ep->sticky_name, nl) == 0 &&
                stop > eq + 1) {
                *key = eq + 1;
                *len = (size_t)(stop - eq - 1);
                return true;
            }
            v = stop;
        }
    }
    return false;
}

bool
req_id_acceptable(const char *v, size_t n)
{
    if (n == 0 || n >= 64)
        return false;
    for (size_t k = 0; k < n; k++)
        if (v[k] <= 0x20 || v[k] >= 0x7f || v[k] == '"' || v[k] == '\\')
            return false;
    return true;
}

void
req_id_make(char out[33], uint64_t prefix, uint64_t seq)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t parts[2] = {prefix, seq};
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < 16; k++)
            out[p * 16 + k] = hex[(parts[p] >> (60 - 4 * k)) & 15];
    out[32] = '\0';
}
