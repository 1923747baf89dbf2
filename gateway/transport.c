/*
 * The plain transport: one read(2) per read event straight into the input
 * buffer, and direct writes. libevent's own socket bufferevent would make
 * a FIONREAD ioctl before every read and arm EV_WRITE (two epoll_ctl
 * calls) for every response. Upstream connections keep their bufferevents
 * (connects, write events) and use gw_read()/gw_flush().
 */
#include "gateway/internal.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <unistd.h>

int
gw_read_fd(int fd, struct evbuffer *in)
{
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(in, GW_READ_SIZE, &v, 1) < 1)
        return GW_READ_ERROR;
    ssize_t n = read(fd, v.iov_base, v.iov_len);
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(in, &v, 1);
        return (int)n;
    }
    if (n == 0)
        return GW_READ_EOF;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? GW_READ_AGAIN :
                                                                       GW_READ_ERROR;
}

int
gw_read(struct bufferevent *bev)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    /* A socket bufferevent freezes the end of its input so that only it
     * fills it; unfreeze around the read, as it does itself. */
    evbuffer_unfreeze(in, 0);
    int rc = gw_read_fd(bufferevent_getfd(bev), in);
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
    return gw_read_fd(io->fd, io->in);
}

static int
plain_flush(struct conn_io *io)
{
    if (io->out == NULL || evbuffer_get_length(io->out) == 0) {
        io->want_write = false;
        return 0;
    }
    if (evbuffer_write(io->out, io->fd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
        errno != EINTR)
        return -1;
    io->want_write = evbuffer_get_length(io->out) > 0;
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
