/* TLS server contexts for listeners. Only this file and session.c's accept
 * path see OpenSSL. */
#include "gateway/gateway.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

static const unsigned char alpn_http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

static int
alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
            const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, alpn_http11, sizeof(alpn_http11),
                              in, inlen) != OPENSSL_NPN_NEGOTIATED)
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
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sluice", 6);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);

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
