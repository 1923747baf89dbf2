/*
 * gRPC's part of a request (SPEC §9), pure functions of bytes: is it gRPC,
 * the model name in the first message of an Open Inference Protocol call
 * (field 1, read without decoding the rest), grpc-timeout, and the
 * mappings between grpc-status and HTTP status classes (as Envoy maps
 * them). request.c decides with them; tests/unit/test_gateway.c checks
 * them.
 */
#include "gateway/internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

bool
grpc_is(const struct head *hd)
{
    for (int i = 0; i < hd->n; i++)
        if (head_name_is(hd, i, "content-type"))
            return hd->h[i].val_len >= 16 &&
                   strncasecmp(HD_VAL(hd, i), "application/grpc", 16) == 0 &&
                   (hd->h[i].val_len == 16 || HD_VAL(hd, i)[16] == '+' ||
                    HD_VAL(hd, i)[16] == ';');
    return false;
}

int
grpc_header(const struct head *hd, const char *lower_name)
{
    for (int i = 0; i < hd->n; i++)
        if (head_name_is(hd, i, lower_name))
            return i;
    return -1;
}

/* A protobuf varint at *p (before end); false when cut or too long. */
static bool
varint(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return false;
        unsigned char b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

enum grpc_name
grpc_model_name(const char *data, size_t len, const char **name, size_t *nlen)
{
    const unsigned char *p = (const unsigned char *)data;
    if (len < 5)
        return GRPC_NAME_MORE;
    if (p[0] != 0)
        return GRPC_NAME_NONE;      /* compressed: not read here */
    uint32_t mlen = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    const unsigned char *m = p + 5, *mend = m + mlen;
    const unsigned char *have = p + len;
    while (m < mend) {
        const unsigned char *at = m;
        uint64_t key, v;
        if (m >= have)
            return GRPC_NAME_MORE;
        if (!varint(&m, have < mend ? have : mend, &key))
            return have < mend ? GRPC_NAME_MORE : GRPC_NAME_NONE;
        unsigned wire = (unsigned)(key & 7);
        uint64_t field = key >> 3;
        switch (wire) {
        case 0:
            if (!varint(&m, have < mend ? have : mend, &v))
                return have < mend ? GRPC_NAME_MORE : GRPC_NAME_NONE;
            break;
        case 1:
            m += 8;
            break;
        case 5:
            m += 4;
            break;
        case 2:
            if (!varint(&m, have < mend ? have : mend, &v))
                return have < mend ? GRPC_NAME_MORE : GRPC_NAME_NONE;
            if (v > (uint64_t)(mend - m))
                return GRPC_NAME_NONE;
            if (field == 1) {
                if ((uint64_t)(have - m) < v)
                    return GRPC_NAME_MORE;
                *name = (const char *)m;
                *nlen = (size_t)v;
                return v > 0 ? GRPC_NAME_FOUND : GRPC_NAME_NONE;
            }
            m += v;
            break;
        default:
            return GRPC_NAME_NONE;
        }
        (void)at;
        if (m > mend)
            return GRPC_NAME_NONE;
    }
    return mlen > 0 && have < mend ? GRPC_NAME_MORE : GRPC_NAME_NONE;
}

bool
grpc_timeout_parse(const char *v, size_t len, uint64_t *ms)
{
    if (len < 2 || len > 9)
        return false;
    uint64_t n = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[len - 1]) {
    case 'H': *ms = n * 3600000; break;
    case 'M': *ms = n * 60000; break;
    case 'S': *ms = n * 1000; break;
    case 'm': *ms = n; break;
    case 'u': *ms = (n + 999) / 1000; break;
    case 'n': *ms = (n + 999999) / 1000000; break;
    default: return false;
    }
    return true;
}

void
grpc_timeout_format(char out[16], uint64_t ms)
{
    snprintf(out, 16, "%llum", (unsigned long long)(ms > 99999999 ? 99999999 : ms));
}

int
grpc_http_status(int grpc_status)
{
    static const int map[17] = {200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400,
                                501, 500, 503, 500, 401};
    return grpc_status >= 0 && grpc_status <= 16 ? map[grpc_status] : 500;
}

int
grpc_status_for_http(int status)
{
    switch (status) {
    case 400: return 3;             /* INVALID_ARGUMENT */
    case 401: return 16;            /* UNAUTHENTICATED */
    case 403: return 7;             /* PERMISSION_DENIED */
    case 404: return 5;             /* NOT_FOUND */
    case 408: case 504: return 4;   /* DEADLINE_EXCEEDED */
    case 413: case 429: case 431: return 8;     /* RESOURCE_EXHAUSTED */
    case 501: return 12;            /* UNIMPLEMENTED */
    case 502: case 503: return 14;  /* UNAVAILABLE */
    default: return status >= 200 && status < 300 ? 0 : 2;     /* OK, UNKNOWN */
    }
}

int
grpc_status_of(const struct head *hd)
{
    int i = grpc_header(hd, "grpc-status");
    if (i < 0 || hd->h[i].val_len == 0 || hd->h[i].val_len > 3)
        return -1;
    int v = 0;
    for (uint32_t k = 0; k < hd->h[i].val_len; k++) {
        char c = HD_VAL(hd, i)[k];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}

size_t
grpc_message_encode(char *out, size_t cap, const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 4 < cap; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%')
            out[n++] = (char)*p;
        else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = '\0';
    return n;
}
