/*
 * Argument lists for hiredis' argv commands (struct args, metrics/internal.h):
 * each argument copied with its length, so binary-safe.
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- argument lists -------------------------------------------------------- */

static void
args_add(struct args *a, const char *s, size_t len)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = realloc(a->v, (size_t)a->cap * sizeof(*a->v));
        a->len = realloc(a->len, (size_t)a->cap * sizeof(*a->len));
    }
    a->v[a->n] = malloc(len + 1);
    memcpy(a->v[a->n], s, len);
    a->v[a->n][len] = '\0';
    a->len[a->n++] = len;
}

void
args_str(struct args *a, const char *s)
{
    args_add(a, s, strlen(s));
}

void
args_fmt(struct args *a, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    args_add(a, buf, (size_t)n);
}

void
args_free(struct args *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
    free(a->len);
    memset(a, 0, sizeof(*a));
}
