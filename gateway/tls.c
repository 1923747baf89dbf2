/* TLS: server contexts for listeners, and the TLS transport of client
 * connections. Besides this file, only worker.c (context references) and
 * control.c (building contexts off to the side) see OpenSSL types. */
#include "gateway/internal.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

static const unsigned char alpn_http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
/* HTTP/2 first, when the listener offers it (SPEC §9). */
static const unsigned char alpn_h2_http11[] = {2, 'h', '2',
                                               8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

static int
alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
            const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *o;
    const unsigned char *mine = arg != NULL ? alpn_h2_http11 : alpn_http11;
    unsigned int mine_len = arg != NULL ? sizeof(alpn_h2_http11) : sizeof(alpn_http11);
    if (SSL_select_next_proto(&o, outlen, mine, mine_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

static void
ssl_reason(char *out, size_t len)
{
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(out, len, "unknown error");
    else
        ERR_error_string_n(e, out, len);
    ERR_clear_error();
}

struct ssl_ctx_st *
tls_server_ctx(const struct cfg_listener *l, char *err, size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "TLS context: %s", why);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                        SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sluice", 6);
    static int offer_h2 = 1;        /* the callback's arg: non-NULL offers h2 */
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, l->http2 ? &offer_h2 : NULL);

    if (SSL_CTX_use_certificate_chain_file(ctx, l->certificate) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot load certificate: %s",
                 l->certificate, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, l->private_key, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(why, sizeof(why));
        snprintf(err, errlen, "%s: cannot load private key: %s",
                 l->private_key, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s: private key does not match certificate %s",
                 l->private_key, l->certificate);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void
tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

/* ---- the TLS transport for client connections ------------------------------
 *
 * Our own, rather than bufferevent_openssl: it reads until OpenSSL wants
 * more from the socket (read-ahead on, so one read(2) usually brings a whole
 * request) and writes each response as soon as it is composed, arming a
 * write event only when the socket is full. That is one read and one write
 * per request instead of three reads, a write and two epoll_ctl calls.
 */

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define TLS_MAX_READ_PER_EVENT (64 * 1024)
#define TLS_WRITE_CHUNK 16384

static void
tls_want_write(struct conn_io *io)
{
    io->want_write = true;          /* the session arms its write event */
}

int
tls_start(struct conn_io *io, struct ssl_ctx_st *ctx, int fd)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL)
        return -1;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return -1;
    }
    SSL_set_accept_state(ssl);
    io->ssl = ssl;
    return 0;
}

static void
tls_end(struct conn_io *io)
{
    if (io->ssl == NULL)
        return;
    if (io->tls_ready) {
        ERR_clear_error();
        SSL_shutdown(io->ssl);      /* best effort close_notify; never waits */
    }
    SSL_free(io->ssl);
    io->ssl = NULL;
    ERR_clear_error();
}

static int
tls_read(struct conn_io *io)
{
    SSL *ssl = io->ssl;
    int total = 0;

    ERR_clear_error();
    if (!io->tls_ready) {
        int r = SSL_do_handshake(ssl);
        if (r != 1) {
            int e = SSL_get_error(ssl, r);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ)
                return GW_READ_AGAIN;
            if (e == SSL_ERROR_WANT_WRITE) {
                tls_want_write(io);
                return GW_READ_AGAIN;
            }
            return GW_READ_ERROR;
        }
        io->tls_ready = true;
    }
    struct evbuffer *in = io->in;
    while (total < TLS_MAX_READ_PER_EVENT) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(in, GW_READ_SIZE, &v, 1) < 1)
            break;
        int n = SSL_read(ssl, v.iov_base, (int)v.iov_len);
        if (n > 0) {
            v.iov_len = (size_t)n;
            evbuffer_commit_space(in, &v, 1);
            total += n;
            /* Nothing left in OpenSSL's buffers: the socket event tells us
             * when more comes, so skip the read(2) that would say EAGAIN. */
            if (!SSL_has_pending(ssl))
                break;
            continue;
        }
        int e = SSL_get_error(ssl, n);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_WANT_WRITE) {
            tls_want_write(io);
            break;
        }
        if (total > 0)
            return total;           /* the EOF or error shows on the next read */
        return e == SSL_ERROR_ZERO_RETURN ? GW_READ_EOF :
               (e == SSL_ERROR_SYSCALL && errno == 0) ? GW_READ_EOF : GW_READ_ERROR;
    }
    return total > 0 ? total : GW_READ_AGAIN;
}

static int
tls_flush(struct conn_io *io)
{
    struct evbuffer *out = io->out;
    int rc = 0;

    if (!io->tls_ready || out == NULL)
        return 0;                   /* written once the handshake is done */
    io->want_write = false;
    ERR_clear_error();
    while (evbuffer_get_length(out) > 0) {
        size_t len = evbuffer_get_length(out);
        if (len > TLS_WRITE_CHUNK)
            len = TLS_WRITE_CHUNK;
        /* One record per write: join the head and body pieces first. */
        unsigned char *p = evbuffer_pullup(out, (ev_ssize_t)len);
        int n = SSL_write(io->ssl, p, (int)len);
        if (n > 0) {
            evbuffer_drain(out, (size_t)n);
            continue;
        }
        int e = SSL_get_error(io->ssl, n);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
            tls_want_write(io);
        else
            rc = -1;
        break;
    }
    return rc;
}

static bool
tls_pending(const struct conn_io *io)
{
    return io->ssl != NULL && io->tls_ready && SSL_has_pending(io->ssl);
}

const struct transport transport_tls = {
    .proto = "https", .read = tls_read, .flush = tls_flush, .end = tls_end,
    .pending = tls_pending,
};
