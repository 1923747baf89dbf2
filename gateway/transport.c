/*
 * The plain transport: one read(2) per read event straight into the
 * bufferevent's input, and direct writes. libevent's own socket
 * bufferevent would make a FIONREAD ioctl before every read and arm
 * EV_WRITE (two epoll_ctl calls) for every response.
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <unistd.h>

int
gw_read(struct bufferevent *bev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v;
    int rc;

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

static int
plain_read(struct conn_io *io)
{
    return gw_read(io->bev);
}

static int
plain_flush(struct conn_io *io)
{
    gw_flush(io->bev, true);
    return 0;
}

static void
plain_end(struct conn_io *io)
{
}

static bool
plain_pending(const struct conn_io *io)
{
    return false;
}

const struct transport transport_plain = {
    .proto = "http", .read = plain_read, .flush = plain_flush, .end = plain_end,
    .pending = plain_pending,
};
