/*
 * Text and names, pure (SPEC §2): UTF-8 checks, cuts and repairs, JSON
 * escaping, the name rule, listen addresses, group names. Used by the
 * parser, fleet.c, edit.c and the rest of the program (config/config.h).
 */
#include "config/config.h"
#include "config/internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- text ------------------------------------------------------------- */

/* The length of the well-formed UTF-8 character at s[0..avail), 0 when the
 * bytes there are not one (RFC 3629: no overlongs, no surrogates, at most
 * U+10FFFF); *need is the length its lead byte announces. */
size_t
config_utf8_char(const unsigned char *s, size_t avail, size_t *need)
{
    unsigned c = s[0];
    size_t n;
    unsigned min, cp;
    if (c < 0x80) {
        *need = 1;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, min = 0x80, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, min = 0x800, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, min = 0x10000, cp = c & 0x07;
    } else {
        *need = 1;
        return 0;
    }
    *need = n;
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

bool
config_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, need;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = config_utf8_char(u + i, len - i, &need);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

size_t
config_utf8_cut(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    /* A lead byte within the last three whose character does not fit. */
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned c = u[len - back];
        if ((c & 0xc0) == 0x80)
            continue;               /* a continuation byte: look further back */
        if (c < 0x80)
            return len;
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        return need > back ? len - back : len;
    }
    return len;
}

void
config_utf8_fix(char *s)
{
    unsigned char *u = (unsigned char *)s;
    size_t len = strlen(s), i = 0, need;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = config_utf8_char(u + i, len - i, &need);
        if (n > 0) {
            i += n;
            continue;
        }
        if (need > len - i && config_utf8_cut(s, len) == i) {
            u[i] = '\0';            /* a character cut at the end */
            return;
        }
        u[i++] = '?';
    }
}

const char *
config_utf8_clip(char *out, size_t cap, const char *s)
{
    size_t len = strlen(s);
    if (len < cap) {
        memcpy(out, s, len + 1);
    } else {
        size_t n = config_utf8_cut(s, cap - 4);
        memcpy(out, s, n);
        memcpy(out + n, "...", 4);
    }
    config_utf8_fix(out);
    return out;
}

bool
config_text_plain(const char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= 0x20 || *c == 0x7f)
            return false;
    return true;
}

/*
 * s[0..len) as the inside of a JSON string into out (at most cap - 1 bytes
 * and a NUL); stops before a character or an escape that does not fit
 * whole. Returns the bytes written.
 */
size_t
config_json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned c = u[i];
        char esc[8];
        const char *w = esc;
        size_t wn, adv = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, wn = 2;
        } else if (c == '\n') {
            w = "\\n", wn = 2;
        } else if (c == '\t') {
            w = "\\t", wn = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4], esc[5] = hex[c & 15], wn = 6;
        } else if (c < 0x80) {
            esc[0] = (char)c, wn = 1;
        } else {
            size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (need <= len - i && config_utf8_valid(s + i, need)) {
                w = s + i, wn = need, adv = need;
            } else {
                w = "\\ufffd", wn = 6;   /* one invalid byte, one replacement */
            }
        }
        if (o + wn >= cap)
            break;
        memcpy(out + o, w, wn);
        o += wn;
        i += adv;
    }
    out[o] = '\0';
    return o;
}

/* ---- names and addresses --------------------------------------------- */

bool
config_name_valid(const char *name, size_t len)
{
    if (len < 3 || len > CFG_NAME_MAX)
        return false;
    if (name[0] < 'a' || name[0] > 'z')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int
config_parse_address(const char *addr, char **host, int *port, bool *is_unix)
{
    *host = NULL;
    *port = 0;
    *is_unix = false;
    if (strncmp(addr, "unix:", 5) == 0) {
        if (addr[5] != '/' || strlen(addr + 5) > 107)
            return -1;
        *host = xstrdup(addr + 5);
        *is_unix = true;
        return 0;
    }
    const char *colon;
    const char *h = addr;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':' || close == addr + 1)
            return -1;
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL || colon == addr)
            return -1;
        hlen = (size_t)(colon - addr);
        if (memchr(addr, ':', hlen) != NULL)  /* bare v6 needs brackets */
            return -1;
    }
    for (size_t i = 0; i < hlen; i++)
        if (isspace((unsigned char)h[i]) || h[i] == '/')
            return -1;
    const char *ps = colon + 1;
    if (*ps == '\0' || strlen(ps) > 5)
        return -1;
    long n = 0;
    for (const char *c = ps; *c; c++) {
        if (!isdigit((unsigned char)*c))
            return -1;
        n = n * 10 + (*c - '0');
    }
    if (n < 1 || n > 65535)
        return -1;
    *host = malloc(hlen + 1);
    if (*host == NULL)
        abort();
    memcpy(*host, h, hlen);
    (*host)[hlen] = '\0';
    *port = (int)n;
    return 0;
}

const char *
config_group_name(enum cfg_group g)
{
    switch (g) {
    case CFG_GROUP_CONTROL: return "control";
    case CFG_GROUP_TREATMENT: return "treatment";
    case CFG_GROUP_SHADOW: return "shadow";
    }
    return "treatment";
}

char *
xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        abort();
    return d;
}
