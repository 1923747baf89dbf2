/*
 * Buffers of a worker (gateway/internal.h): empty evbuffers recycled, so a
 * connection or an HTTP/2 stream does not allocate one each time. Only on
 * the worker's thread; at the bottom of gateway/ (it calls nothing here).
 */
#include "gateway/internal.h"

#include <event2/buffer.h>

struct evbuffer *
worker_buf_get(struct worker *w)
{
    return w->n_free_bufs > 0 ? w->free_bufs[--w->n_free_bufs] : evbuffer_new();
}

void
worker_buf_put(struct worker *w, struct evbuffer *b)
{
    if (b == NULL)
        return;
    if (w->n_free_bufs < (int)(sizeof(w->free_bufs) / sizeof(w->free_bufs[0])) &&
        evbuffer_get_length(b) == 0)
        w->free_bufs[w->n_free_bufs++] = b;
    else
        evbuffer_free(b);
}

void
worker_bufs_free(struct worker *w)
{
    while (w->n_free_bufs > 0)
        evbuffer_free(w->free_bufs[--w->n_free_bufs]);
}
