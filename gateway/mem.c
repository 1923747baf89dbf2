/*
 * Small blocks for libevent and nghttp2 (gateway/gateway.h, gateway/h2.h):
 * per-thread free lists instead of malloc. A request allocates and frees a
 * dozen blocks inside nghttp2 and a few evbuffer chains (1 KiB and up:
 * above glibc's thread cache, each went through its slow path), and at a
 * hundred streams in flight glibc's cache (7 blocks a size) no longer holds
 * them anyway.
 *
 * No header and no rounding beyond glibc's own: every block is a plain
 * malloc'ed one, filed on free by what it can hold (malloc_usable_size),
 * so an idle connection's blocks cost what they did. Up to 1 KiB the
 * classes are glibc's own sizes (24, 40, 56 ... 1032 usable bytes), then
 * 2, 4, 8 and 16 KiB; larger blocks are not kept. A block freed on another thread than the one that took it
 * joins that thread's lists. A list keeps at most LIST_MAX blocks and a
 * thread LIST_BYTES in all; the rest goes back to malloc. Under
 * AddressSanitizer nothing is kept, so a use after free is still seen.
 */
#include "gateway/h2.h"

#include <event2/event.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FINE 64                     /* glibc's sizes: 24, 40 ... 1032 */
#define CLASSES (FINE + 4)          /* then 2, 4, 8, 16 KiB */
#define LIST_MAX 256                /* two connections' streams in flight */
#define LIST_BYTES (2u << 20)       /* a thread's lists in all */

#if defined(__SANITIZE_ADDRESS__)
#define POOLED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOLED 0
#endif
#endif
#ifndef POOLED
#define POOLED 1
#endif

struct blk {
    struct blk *next;
};

static __thread struct blk *lists[CLASSES];
static __thread int counts[CLASSES];
static __thread size_t kept;        /* bytes on this thread's lists */

/* What a block of class c holds; malloc(room(c)) gives exactly that. */
static size_t
room(unsigned c)
{
    return c < FINE ? 24 + (size_t)c * 16 : (size_t)2048 << (c - FINE);
}

/* The class a request of size bytes takes from; CLASSES when too big. */
static unsigned
class_for(size_t size)
{
    if (size <= room(FINE - 1))
        return size <= 24 ? 0 : (unsigned)((size - 24 + 15) / 16);
    for (unsigned c = FINE; c < CLASSES; c++)
        if (size <= room(c))
            return c;
    return CLASSES;
}

/* The class a block that holds n bytes is filed under (the largest whose
 * room it covers); CLASSES when it is too big or too small to keep. */
static unsigned
class_of(size_t n)
{
    if (n < 24)
        return CLASSES;
    if (n < 2048)
        return n >= room(FINE - 1) ? FINE - 1 : (unsigned)((n - 24) / 16);
    for (unsigned c = CLASSES; c-- > FINE;)
        if (n >= room(c))
            return n < 2 * room(c) ? c : CLASSES;
    return CLASSES;
}

void *
gw_malloc(size_t size)
{
    unsigned c = POOLED ? class_for(size) : CLASSES;
    if (c == CLASSES)
        return malloc(size);
    struct blk *b = lists[c];
    if (b == NULL)
        return malloc(room(c));
    lists[c] = b->next;
    counts[c]--;
    kept -= room(c);
    return b;
}

void
gw_free(void *ptr)
{
    if (ptr == NULL)
        return;
    unsigned c = POOLED ? class_of(malloc_usable_size(ptr)) : CLASSES;
    if (c == CLASSES || counts[c] >= LIST_MAX || kept + room(c) > LIST_BYTES) {
        free(ptr);
        return;
    }
    struct blk *b = ptr;
    b->next = lists[c];
    lists[c] = b;
    counts[c]++;
    kept += room(c);
}

void *
gw_realloc(void *ptr, size_t size)
{
    /* A plain block in, a plain block out (never freed by a size 0). */
    return realloc(ptr, size > 0 ? size : 1);
}

void
gw_mem_thread_end(void)
{
    for (int c = 0; c < CLASSES; c++) {
        while (lists[c] != NULL) {
            struct blk *b = lists[c];
            lists[c] = b->next;
            free(b);
        }
        counts[c] = 0;
    }
    kept = 0;
}

bool
gw_mem_pooled(void)
{
    return POOLED;
}

void
gw_mem_init(void)
{
    if (POOLED)
        event_set_mem_functions(gw_malloc, gw_realloc, gw_free);
}

/* ---- nghttp2's -------------------------------------------------------------------- */

static void *
ng_malloc(size_t size, void *ud)
{
    return gw_malloc(size);
}

static void
ng_free(void *ptr, void *ud)
{
    gw_free(ptr);
}

static void *
ng_calloc(size_t nmemb, size_t size, void *ud)
{
    if (size != 0 && nmemb > SIZE_MAX / size)
        return NULL;
    void *p = gw_malloc(nmemb * size);
    if (p != NULL)
        memset(p, 0, nmemb * size);
    return p;
}

static void *
ng_realloc(void *ptr, size_t size, void *ud)
{
    return gw_realloc(ptr, size);
}

static nghttp2_mem ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

nghttp2_mem *
h2_mem(void)
{
    return &ng_mem;
}
