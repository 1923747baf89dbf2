/*
 * auth — who may call a scoring URL (SPEC §3.2) and the admin API.
 *
 * auth_ctx_new() derives, from a config snapshot, everything checks need:
 * SHA-256 digests of every key (compared with CRYPTO_memcmp, in constant
 * time), the token verification keys and a bounded cache of verified
 * tokens. A context belongs to one thread (each worker builds its own);
 * auth_check() is then a function of (context, endpoint, header, time).
 * OpenSSL and libjwt are used here only.
 */
#ifndef SLUICE_AUTH_H
#define SLUICE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "config/config.h"

enum auth_status {
    AUTH_OK = 0,
    AUTH_NO_HEADER,             /* no Authorization header */
    AUTH_BAD_SCHEME,            /* not "Bearer <credential>" */
    AUTH_EMPTY,                 /* "Bearer" with nothing after it */
    AUTH_BAD_KEY,               /* not one of the endpoint's keys */
    AUTH_TOO_LONG,              /* credential over 8 KiB */
    AUTH_TOKEN_MALFORMED,       /* not three base64url JSON parts */
    AUTH_TOKEN_ALG,             /* algorithm not the one configured */
    AUTH_TOKEN_SIGNATURE,       /* signature does not verify */
    AUTH_TOKEN_EXPIRED,         /* exp passed (with leeway) */
    AUTH_TOKEN_NOT_YET_VALID,   /* nbf in the future (with leeway) */
    AUTH_TOKEN_ISSUER,          /* iss unknown */
    AUTH_TOKEN_AUDIENCE,        /* aud is not this endpoint */
    AUTH_NOT_ALLOWED,           /* the endpoint accepts neither kind */
};

#define AUTH_MAX_CREDENTIAL 8192

struct auth_ctx;

/* NULL with a reason (e.g. an unreadable PEM key) in err. */
struct auth_ctx *auth_ctx_new(const struct config *cfg, char *err, size_t errlen);
void auth_ctx_free(struct auth_ctx *ctx);

/* Check an Authorization header value (NULL when absent) for endpoint ep
 * of the context's config. An endpoint with keys and tokens both off is
 * open: AUTH_OK. On AUTH_OK, *valid_until (if given) is the accepted
 * token's exp plus leeway, or 0 for a key (valid until the config changes). */
enum auth_status auth_check(struct auth_ctx *ctx, const struct cfg_endpoint *ep,
                            const char *header, size_t len, time_t now,
                            time_t *valid_until);

/* Constant-time equality of two byte strings of the same length. */
bool auth_same(const void *a, const void *b, size_t len);

/* Check the admin token; false when none is configured. */
bool auth_admin_ok(const struct auth_ctx *ctx, const char *header, size_t len);

/* A short reason for logs and error bodies; never contains the credential. */
const char *auth_status_reason(enum auth_status st);

/* Issue a token for endpoint ep (SPEC §5 get_token). Returns the JWT
 * (malloc'ed) and its times, or NULL with a reason. */
char *auth_issue_token(const struct auth_ctx *ctx, const char *ep, const char *subject,
                       time_t now, time_t *expires_at, time_t *refresh_by,
                       char *err, size_t errlen);

/* Constant-time equality of two strings of any length (digests compared). */
bool auth_equal(const char *a, size_t alen, const char *b, size_t blen);

#endif
