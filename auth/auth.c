/*
 * Keys and tokens (SPEC §3.2, §5).
 *
 * Keys are never compared as strings: the presented credential and every
 * configured key are hashed with SHA-256 and the digests compared with
 * CRYPTO_memcmp, so the time taken tells nothing about the key.
 *
 * Tokens: the header's "alg" and the payload's "iss" are read first (not
 * yet trusted) to pick the issuer; the algorithm must be that issuer's
 * configured one (never "none", never HS for an issuer with a public key);
 * then libjwt verifies the signature with that issuer's key, and exp, nbf,
 * iss and aud are checked with leeway. Verified tokens are cached until
 * their exp so that a token reused on a connection costs one SHA-256.
 */
#include "auth/auth.h"

#include <jansson.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CACHE_SLOTS 4096        /* power of two */

struct digest {
    unsigned char d[SHA256_DIGEST_LENGTH];
};

struct ep_keys {
    struct digest primary, secondary;
    bool has_primary, has_secondary;
};

struct issuer {
    const char *name;
    const char *audience;       /* NULL: the endpoint's name */
    jwt_alg_t alg;
    const char *alg_name;
    unsigned char *key;         /* HMAC secret or PEM public key */
    size_t keylen;
};

struct cache_slot {
    struct digest token;
    int64_t exp;
    int endpoint;
    bool used;
};

struct auth_ctx {
    const struct config *cfg;   /* the snapshot this context was built from */
    struct ep_keys *eps;
    struct digest admin;
    bool has_admin;
    struct issuer *issuers;     /* [0] is sluice's own */
    int n_issuers;
    unsigned char *sign_key;    /* own signing key (secret or private PEM) */
    size_t sign_keylen;
    int leeway;
    int ttl;
    struct cache_slot *cache;
    EVP_MD_CTX *md;             /* reused for every check */
};

static EVP_MD *sha256;             /* fetched once: an implicit fetch per call is slow */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
fetch_sha256(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static void
digest_of(const void *s, size_t len, struct digest *out)
{
    pthread_once(&sha256_once, fetch_sha256);
    if (sha256 == NULL || EVP_Digest(s, len, out->d, NULL, sha256, NULL) != 1)
        SHA256(s, len, out->d);
}

/* The request path's digest: the context's own EVP_MD_CTX, reused, so a
 * check allocates nothing. */
static void
ctx_digest(struct auth_ctx *c, const void *s, size_t len, struct digest *out)
{
    unsigned int n;
    if (c->md == NULL || EVP_DigestInit_ex2(c->md, sha256, NULL) != 1 ||
        EVP_DigestUpdate(c->md, s, len) != 1 || EVP_DigestFinal_ex(c->md, out->d, &n) != 1)
        digest_of(s, len, out);
}

bool
auth_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    struct digest da, db;
    digest_of(a, alen, &da);
    digest_of(b, blen, &db);
    return CRYPTO_memcmp(da.d, db.d, sizeof(da.d)) == 0;
}

/* Token times come from the token: any 64-bit value. Sums saturate
 * instead of overflowing (a signed overflow is undefined behaviour). */
static int64_t
time_add(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/* The same, clamped to time_t (which may be narrower than int64_t). */
static time_t
time_clamp(int64_t t)
{
    if (sizeof(time_t) < sizeof(int64_t)) {
        int64_t max = (int64_t)(((uint64_t)1 << (sizeof(time_t) * 8 - 1)) - 1);
        if (t > max)
            return (time_t)max;
        if (t < -max - 1)
            return (time_t)(-max - 1);
    }
    return (time_t)t;
}

static jwt_alg_t
alg_of(const char *name)
{
    jwt_alg_t a = jwt_str_alg(name);
    return a == JWT_ALG_INVAL ? JWT_ALG_NONE : a;
}

/* For RS and ES signing, verification needs the public half as PEM. */
static unsigned char *
public_pem(const char *private_pem, size_t *len, char *err, size_t errlen)
{
    BIO *in = BIO_new_mem_buf(private_pem, -1);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(in, NULL, NULL, NULL);
    BIO_free(in);
    if (k == NULL) {
        snprintf(err, errlen, "tokens.signing_key: not a PEM private key");
        return NULL;
    }
    BIO *out = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(out, k);
    EVP_PKEY_free(k);
    char *p;
    long n = BIO_get_mem_data(out, &p);
    unsigned char *r = malloc((size_t)n + 1);
    memcpy(r, p, (size_t)n);
    r[n] = '\0';
    *len = (size_t)n;
    BIO_free(out);
    return r;
}

struct auth_ctx *
auth_ctx_new(const struct config *cfg, char *err, size_t errlen)
{
    struct auth_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->cfg = cfg;
    pthread_once(&sha256_once, fetch_sha256);
    c->md = EVP_MD_CTX_new();
    c->leeway = cfg->tokens.leeway_s;
    c->ttl = cfg->tokens.ttl_s;
    c->eps = calloc((size_t)cfg->n_endpoints + 1, sizeof(*c->eps));
    c->cache = calloc(CACHE_SLOTS, sizeof(*c->cache));
    c->issuers = calloc((size_t)cfg->tokens.n_trusted + 1, sizeof(*c->issuers));
    if (c->eps == NULL || c->cache == NULL || c->issuers == NULL)
        goto fail;
    for (int i = 0; i < cfg->n_endpoints; i++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[i];
        if (ep->key_primary) {
            digest_of(ep->key_primary, strlen(ep->key_primary), &c->eps[i].primary);
            c->eps[i].has_primary = true;
        }
        if (ep->key_secondary) {
            digest_of(ep->key_secondary, strlen(ep->key_secondary), &c->eps[i].secondary);
            c->eps[i].has_secondary = true;
        }
    }
    if (cfg->admin_token) {
        digest_of(cfg->admin_token, strlen(cfg->admin_token), &c->admin);
        c->has_admin = true;
    }

    struct issuer *own = &c->issuers[c->n_issuers++];
    own->name = cfg->tokens.issuer;
    own->alg_name = cfg->tokens.algorithm;
    own->alg = alg_of(cfg->tokens.algorithm);
    if (cfg->tokens.signing_key) {
        c->sign_key = (unsigned char *)strdup(cfg->tokens.signing_key);
        c->sign_keylen = strlen(cfg->tokens.signing_key);
        if (cfg->tokens.algorithm[0] == 'H') {
            own->key = (unsigned char *)strdup(cfg->tokens.signing_key);
            own->keylen = c->sign_keylen;
        } else {
            own->key = public_pem(cfg->tokens.signing_key, &own->keylen, err, errlen);
            if (own->key == NULL)
                goto fail;
        }
    }
    for (int i = 0; i < cfg->tokens.n_trusted; i++) {
        const struct cfg_trusted_issuer *t = &cfg->tokens.trusted[i];
        struct issuer *is = &c->issuers[c->n_issuers++];
        is->name = t->issuer;
        is->audience = t->audience;
        is->alg_name = t->algorithm;
        is->alg = alg_of(t->algorithm);
        is->key = (unsigned char *)strdup(t->public_key);
        is->keylen = strlen(t->public_key);
    }
    return c;
fail:
    auth_ctx_free(c);
    return NULL;
}

void
auth_ctx_free(struct auth_ctx *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < c->n_issuers; i++) {
        if (c->issuers[i].key)
            OPENSSL_cleanse(c->issuers[i].key, c->issuers[i].keylen);
        free(c->issuers[i].key);
    }
    if (c->sign_key)
        OPENSSL_cleanse(c->sign_key, c->sign_keylen);
    free(c->sign_key);
    free(c->issuers);
    free(c->eps);
    free(c->cache);
    EVP_MD_CTX_free(c->md);
    free(c);
}

const char *
auth_status_reason(enum auth_status st)
{
    switch (st) {
    case AUTH_OK: return "ok";
    case AUTH_NO_HEADER: return "missing Authorization header";
    case AUTH_BAD_SCHEME: return "the Authorization scheme must be Bearer";
    case AUTH_EMPTY: return "empty bearer credential";
    case AUTH_BAD_KEY: return "invalid key";
    case AUTH_TOO_LONG: return "credential too long";
    case AUTH_TOKEN_MALFORMED: return "malformed token";
    case AUTH_TOKEN_ALG: return "token algorithm not accepted";
    case AUTH_TOKEN_SIGNATURE: return "token signature invalid";
    case AUTH_TOKEN_EXPIRED: return "token expired";
    case AUTH_TOKEN_NOT_YET_VALID: return "token not yet valid";
    case AUTH_TOKEN_ISSUER: return "token issuer not trusted";
    case AUTH_TOKEN_AUDIENCE: return "token not for this endpoint";
    case AUTH_NOT_ALLOWED: return "no credential is accepted here";
    }
    return "unauthorized";
}

/* "Bearer <credential>": the scheme is case-insensitive (RFC 9110 §11.1). */
static enum auth_status
bearer(const char *h, size_t len, const char **tok, size_t *toklen)
{
    if (h == NULL)
        return AUTH_NO_HEADER;
    if (len < 6 || strncasecmp(h, "Bearer", 6) != 0 || (len > 6 && h[6] != ' '))
        return AUTH_BAD_SCHEME;
    size_t i = 6;
    while (i < len && h[i] == ' ')
        i++;
    size_t e = len;
    while (e > i && (h[e - 1] == ' ' || h[e - 1] == '\t'))
        e--;
    if (e == i)
        return AUTH_EMPTY;
    for (size_t k = i; k < e; k++)
        if (h[k] == ' ' || h[k] == '\t')
            return AUTH_BAD_SCHEME;
    if (e - i > AUTH_MAX_CREDENTIAL)
        return AUTH_TOO_LONG;
    *tok = h + i;
    *toklen = e - i;
    return AUTH_OK;
}

static int
b64url_val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Decode one base64url part of a JWT into a JSON object, or NULL. */
static json_t *
part_json(const char *s, size_t len)
{
    if (len == 0 || len % 4 == 1)
        return NULL;
    char *out = malloc(len);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val(s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    json_t *j = json_loadb(out, o, JSON_REJECT_DUPLICATES, NULL);
    free(out);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static bool
aud_matches(json_t *aud, const char *want)
{
    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (json_is_array(aud)) {
        size_t i;
        json_t *a;
        json_array_foreach(aud, i, a)
            if (json_is_string(a) && strcmp(json_string_value(a), want) == 0)
                return true;
    }
    return false;
}

static enum auth_status
check_token(struct auth_ctx *c, int epi, const char *tok, size_t len, time_t now)
{
    const char *ep = c->cfg->endpoints[epi].name;
    const char *dot1 = memchr(tok, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok)) : NULL;
    if (dot1 == NULL || dot2 == NULL ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - tok)) != NULL)
        return AUTH_TOKEN_MALFORMED;
    if (dot2 + 1 == tok + len)
        return AUTH_TOKEN_SIGNATURE;        /* stripped signature ("none") */

    json_t *head = part_json(tok, (size_t)(dot1 - tok));
    json_t *body = part_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    enum auth_status st = AUTH_OK;
    const struct issuer *is = NULL;
    if (head == NULL || body == NULL) {
        st = AUTH_TOKEN_MALFORMED;
        goto out;
    }
    json_t *iss = json_object_get(body, "iss");
    if (!json_is_string(iss)) {
        st = AUTH_TOKEN_ISSUER;
        goto out;
    }
    for (int i = 0; i < c->n_issuers; i++)
        if (c->issuers[i].name && c->issuers[i].key &&
            strcmp(c->issuers[i].name, json_string_value(iss)) == 0) {
            is = &c->issuers[i];
            break;
        }
    if (is == NULL) {
        st = AUTH_TOKEN_ISSUER;
        goto out;
    }
    json_t *alg = json_object_get(head, "alg");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), is->alg_name) != 0) {
        st = AUTH_TOKEN_ALG;
        goto out;
    }
    char *copy = strndup(tok, len);
    jwt_t *jwt = NULL;
    int rc = jwt_decode(&jwt, copy, is->key, (int)is->keylen);
    free(copy);
    if (rc != 0 || jwt == NULL || jwt_get_alg(jwt) != is->alg) {
        jwt_free(jwt);
        st = AUTH_TOKEN_SIGNATURE;
        goto out;
    }
    jwt_free(jwt);
    /* The payload we read is the one just verified: same bytes. */
    json_t *exp = json_object_get(body, "exp");
    json_t *nbf = json_object_get(body, "nbf");
    if (!json_is_integer(exp) ||
        (int64_t)now > time_add(json_integer_value(exp), c->leeway)) {
        st = AUTH_TOKEN_EXPIRED;
        goto out;
    }
    if (nbf != NULL && (!json_is_integer(nbf) ||
                        time_add(now, c->leeway) < json_integer_value(nbf))) {
        st = AUTH_TOKEN_NOT_YET_VALID;
        goto out;
    }
    if (!aud_matches(json_object_get(body, "aud"), is->audience ? is->audience : ep)) {
        st = AUTH_TOKEN_AUDIENCE;
        goto out;
    }
    /* Cache it until it expires. */
    struct digest d;
    digest_of(tok, len, &d);
    uint32_t slot;
    memcpy(&slot, d.d, sizeof(slot));
    struct cache_slot *cs = &c->cache[slot & (CACHE_SLOTS - 1)];
    cs->token = d;
    cs->exp = json_integer_value(exp);
    cs->endpoint = epi;
    cs->used = true;
out:
    json_decref(head);
    json_decref(body);
    return st;
}

bool
auth_same(const void *a, const void *b, size_t len)
{
    /* In constant time, as CRYPTO_memcmp, but 8 bytes a step where it goes
     * byte by byte: this runs on every request (request.c's memo). The
     * empty asm keeps the compiler from ending the loop early. */
    const unsigned char *x = a, *y = b;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t p, q;
        memcpy(&p, x + i, 8);
        memcpy(&q, y + i, 8);
        acc |= p ^ q;
        __asm__ volatile("" : "+r"(acc));
    }
    for (; i < len; i++) {
        acc |= (uint64_t)(x[i] ^ y[i]);
        __asm__ volatile("" : "+r"(acc));
    }
    return acc == 0;
}

enum auth_status
auth_check(struct auth_ctx *c, const struct cfg_endpoint *ep, const char *header,
           size_t len, time_t now, time_t *valid_until)
{
    time_t dummy;
    if (valid_until == NULL)
        valid_until = &dummy;
    *valid_until = 0;
    if (!ep->auth_keys && !ep->auth_tokens)
        return AUTH_OK;
    const char *tok;
    size_t toklen;
    enum auth_status st = bearer(header, len, &tok, &toklen);
    if (st != AUTH_OK)
        return st;
    int epi = (int)(ep - c->cfg->endpoints);
    struct digest d;
    ctx_digest(c, tok, toklen, &d);
    if (ep->auth_keys) {
        const struct ep_keys *k = &c->eps[epi];
        /* Both comparisons always run: no early exit on the first. */
        int p = k->has_primary ? CRYPTO_memcmp(d.d, k->primary.d, sizeof(d.d)) == 0 : 0;
        int s = k->has_secondary ? CRYPTO_memcmp(d.d, k->secondary.d, sizeof(d.d)) == 0 : 0;
        if (p | s)
            return AUTH_OK;         /* a key: valid while this config is */
        if (!ep->auth_tokens)
            return AUTH_BAD_KEY;
    }
    uint32_t slot;
    memcpy(&slot, d.d, sizeof(slot));
    const struct cache_slot *cs = &c->cache[slot & (CACHE_SLOTS - 1)];
    if (cs->used && cs->endpoint == epi &&
        CRYPTO_memcmp(cs->token.d, d.d, sizeof(d.d)) == 0) {
        if ((int64_t)now > time_add(cs->exp, c->leeway))
            return AUTH_TOKEN_EXPIRED;
        *valid_until = time_clamp(time_add(cs->exp, c->leeway));
        return AUTH_OK;
    }
    st = check_token(c, epi, tok, toklen, now);
    if (st == AUTH_OK) {
        uint32_t slot2;
        memcpy(&slot2, d.d, sizeof(slot2));
        *valid_until = time_clamp(time_add(c->cache[slot2 & (CACHE_SLOTS - 1)].exp,
                                           c->leeway));
    }
    if (st == AUTH_TOKEN_MALFORMED && ep->auth_keys)
        return AUTH_BAD_KEY;        /* most likely a wrong key, not a token */
    return st;
}

bool
auth_admin_ok(const struct auth_ctx *c, const char *header, size_t len)
{
    const char *tok;
    size_t toklen;
    if (!c->has_admin || bearer(header, len, &tok, &toklen) != AUTH_OK)
        return false;
    struct digest d;
    digest_of(tok, toklen, &d);
    return CRYPTO_memcmp(d.d, c->admin.d, sizeof(d.d)) == 0;
}

char *
auth_issue_token(const struct auth_ctx *c, const char *ep, const char *subject,
                 time_t now, time_t *expires_at, time_t *refresh_by,
                 char *err, size_t errlen)
{
    const struct issuer *own = &c->issuers[0];
    if (c->sign_key == NULL) {
        snprintf(err, errlen, "tokens.signing_key is not set");
        return NULL;
    }
    jwt_t *jwt = NULL;
    if (jwt_new(&jwt) != 0) {
        snprintf(err, errlen, "cannot create a token");
        return NULL;
    }
    char *out = NULL;
    if (jwt_set_alg(jwt, own->alg, c->sign_key, (int)c->sign_keylen) != 0 ||
        jwt_add_grant(jwt, "iss", own->name) != 0 ||
        jwt_add_grant(jwt, "aud", ep) != 0 ||
        jwt_add_grant(jwt, "sub", subject) != 0 ||
        jwt_add_grant_int(jwt, "iat", (long)now) != 0 ||
        jwt_add_grant_int(jwt, "nbf", (long)now) != 0 ||
        jwt_add_grant_int(jwt, "exp", (long)time_add(now, c->ttl)) != 0 ||
        (out = jwt_encode_str(jwt)) == NULL) {
        snprintf(err, errlen, "cannot sign a token with %s", own->alg_name);
        jwt_free(jwt);
        return NULL;
    }
    jwt_free(jwt);
    *expires_at = time_clamp(time_add(now, c->ttl));
    *refresh_by = time_clamp(time_add(now, c->ttl / 2));
    return out;
}
