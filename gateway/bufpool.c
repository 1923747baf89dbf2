/*
 * Buffers and timers of a worker (gateway/internal.h): empty evbuffers
 * recycled, so a connection or an HTTP/2 stream does not allocate one each
 * time; timers on libevent's common-timeout queues. Only on the worker's
 * thread; at the bottom of gateway/ (it calls nothing here).
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>

void
worker_arm(struct worker *w, struct event *ev, int ms, bool fixed)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!fixed) {
        evtimer_add(ev, &tv);
        return;
    }
    for (int i = 0; i < w->n_timeouts; i++)
        if (w->timeout_ms[i] == ms) {
            evtimer_add(ev, w->timeouts[i]);
            return;
        }
    const struct timeval *common = NULL;
    if (w->n_timeouts < (int)(sizeof(w->timeouts) / sizeof(w->timeouts[0])) &&
        (common = event_base_init_common_timeout(w->base, &tv)) != NULL) {
        w->timeout_ms[w->n_timeouts] = ms;
        w->timeouts[w->n_timeouts++] = common;
    }
    evtimer_add(ev, common != NULL ? common : &tv);
}

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
