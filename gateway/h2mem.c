/*
 * nghttp2's memory for a worker's sessions (gateway/h2.h): small blocks
 * come from per-size free lists of the worker instead of malloc. nghttp2
 * allocates a dozen blocks per stream and frees them at its end; at a
 * hundred streams in flight glibc's thread cache overflows and every block
 * went through its slow path. Only on the worker's thread, as its sessions
 * are. Under AddressSanitizer the lists are skipped, so a use after free
 * inside nghttp2 is still seen.
 */
#include "gateway/h2.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CLASSES 8                   /* 64, 128, ... 8192 bytes with the header */
#define SMALLEST 64
#define LIST_BYTES (128 * 1024)     /* at most this much kept per size */
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

struct h2_mem {
    nghttp2_mem mem;
    struct blk *free[CLASSES];
    int n[CLASSES];
};

static unsigned
size_class(size_t size)
{
    size_t need = size + sizeof(struct blk);
    unsigned c = 0;
    for (size_t s = SMALLEST; s < need; s <<= 1)
        if (++c >= CLASSES)
            return BIG;
    return c;
}

static void *
m_malloc(size_t size, void *ud)
{
    struct h2_mem *m = ud;
    unsigned c = POOLED ? size_class(size) : BIG;
    struct blk *b;
    if (c != BIG && m->free[c] != NULL) {
        b = m->free[c];
        m->free[c] = b->next;
        m->n[c]--;
    } else {
        if (size > SIZE_MAX - sizeof(struct blk) - SMALLEST)
            return NULL;
        b = malloc(c == BIG ? size + sizeof(struct blk) : (size_t)SMALLEST << c);
        if (b == NULL)
            return NULL;
    }
    b->cls = c;
    return b + 1;
}

static void
m_free(void *ptr, void *ud)
{
    struct h2_mem *m = ud;
    if (ptr == NULL)
        return;
    struct blk *b = (struct blk *)ptr - 1;
    unsigned c = b->cls;
    if (c == BIG || m->n[c] >= (int)(LIST_BYTES / ((size_t)SMALLEST << c))) {
        free(b);
        return;
    }
    b->next = m->free[c];
    m->free[c] = b;
    m->n[c]++;
}

static void *
m_calloc(size_t nmemb, size_t size, void *ud)
{
    if (size != 0 && nmemb > SIZE_MAX / size)
        return NULL;
    void *p = m_malloc(nmemb * size, ud);
    if (p != NULL)
        memset(p, 0, nmemb * size);
    return p;
}

static void *
m_realloc(void *ptr, size_t size, void *ud)
{
    if (ptr == NULL)
        return m_malloc(size, ud);
    struct blk *b = (struct blk *)ptr - 1;
    if (b->cls == BIG) {
        struct blk *nb = realloc(b, size + sizeof(struct blk));
        if (nb == NULL)
            return NULL;
        nb->cls = BIG;
        return nb + 1;
    }
    size_t room = ((size_t)SMALLEST << b->cls) - sizeof(struct blk);
    if (size <= room)
        return ptr;
    void *p = m_malloc(size, ud);
    if (p != NULL) {
        memcpy(p, ptr, room);
        m_free(ptr, ud);
    }
    return p;
}

nghttp2_mem *
h2_mem(struct worker *w)
{
    if (w->h2mem == NULL) {
        struct h2_mem *m = calloc(1, sizeof(*m));
        if (m == NULL)
            return NULL;                /* nghttp2's own malloc, then */
        m->mem = (nghttp2_mem){m, m_malloc, m_free, m_calloc, m_realloc};
        w->h2mem = m;
    }
    return &w->h2mem->mem;
}

void
h2_mem_free(struct worker *w)
{
    struct h2_mem *m = w->h2mem;
    if (m == NULL)
        return;
    for (int c = 0; c < CLASSES; c++)
        while (m->free[c] != NULL) {
            struct blk *b = m->free[c];
            m->free[c] = b->next;
            free(b);
        }
    free(m);
    w->h2mem = NULL;
}
