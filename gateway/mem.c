/*
 * Small blocks for libevent and nghttp2 (gateway/gateway.h, gateway/h2.h):
 * per-thread free lists by power-of-two size instead of malloc. A request
 * allocates and frees a dozen blocks inside nghttp2 and a few evbuffer
 * chains (1 KiB and up: above glibc's thread cache, each went through its
 * slow path). A block freed on another thread than the one that took it
 * joins that thread's lists. Each list keeps LIST_MIN blocks, or LIST_BYTES
 * of the big sizes (at most about 2.3 MiB a thread in all); the rest
 * goes back to malloc. Under AddressSanitizer nothing is pooled, so a use
 * after free is still seen.
 */
#include "gateway/h2.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CLASSES 9                   /* payloads of 64, 128, ... 16384 bytes */
#define SMALLEST 64
#define LIST_BYTES (128 * 1024)
#define LIST_MIN 256                /* two connections' streams in flight */
#define BIG 0xffu

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

/* Before each block: its size class (16 bytes keep malloc's alignment). */
struct blk {
    union {
        struct blk *next;           /* while on a free list */
        uint32_t cls;
    };
    uint64_t pad;
};

static __thread struct blk *lists[CLASSES];
static __thread int counts[CLASSES];

static unsigned
size_class(size_t size)
{
    if (!POOLED || size > ((size_t)SMALLEST << (CLASSES - 1)))
        return BIG;
    if (size <= SMALLEST)
        return 0;
    /* the smallest c with SMALLEST << c >= size */
    return (unsigned)(64 - __builtin_clzll((unsigned long long)(size - 1))) - 6;
}

void *
gw_malloc(size_t size)
{
    unsigned c = size_class(size);
    struct blk *b;
    if (c != BIG && lists[c] != NULL) {
        b = lists[c];
        lists[c] = b->next;
        counts[c]--;
    } else {
        if (size > SIZE_MAX - sizeof(struct blk))
            return NULL;
        b = malloc(sizeof(struct blk) + (c == BIG ? size : (size_t)SMALLEST << c));
        if (b == NULL)
            return NULL;
    }
    b->cls = c;
    return b + 1;
}

void
gw_free(void *ptr)
{
    if (ptr == NULL)
        return;
    struct blk *b = (struct blk *)ptr - 1;
    unsigned c = b->cls;
    size_t keep = c == BIG ? 0 : LIST_BYTES / ((size_t)SMALLEST << c);
    if (c == BIG || counts[c] >= (int)(keep > LIST_MIN ? keep : LIST_MIN)) {
        free(b);
        return;
    }
    b->next = lists[c];
    lists[c] = b;
    counts[c]++;
}

void *
gw_realloc(void *ptr, size_t size)
{
    if (ptr == NULL)
        return gw_malloc(size);
    struct blk *b = (struct blk *)ptr - 1;
    size_t room = b->cls == BIG ? SIZE_MAX : (size_t)SMALLEST << b->cls;
    if (b->cls == BIG && size_class(size) == BIG) {
        if (size > SIZE_MAX - sizeof(struct blk))
            return NULL;
        struct blk *nb = realloc(b, sizeof(struct blk) + size);
        if (nb == NULL)
            return NULL;
        nb->cls = BIG;
        return nb + 1;
    }
    if (size <= room && b->cls != BIG)
        return ptr;
    void *p = gw_malloc(size);
    if (p == NULL)
        return NULL;
    /* From a pooled block its whole room, from a big one (shrinking into
     * a pooled one) the new size. */
    memcpy(p, ptr, b->cls == BIG ? size : room);
    gw_free(ptr);
    return p;
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
