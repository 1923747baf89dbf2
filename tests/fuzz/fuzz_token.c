/*
 * libFuzzer target: auth_check() of a fuzzed Authorization credential for
 * an endpoint with keys and tokens on, at a fuzzed time. Input:
 *   byte 0: mode; bytes 1-8: "now" (any 64-bit value); then
 *   mode 0: the header value as is;
 *   mode 1: "Bearer " + a JWT built from the rest, split at the first NUL
 *           into header JSON and payload JSON (no NUL: the payload, with
 *           {"alg":"HS256"}), signed with the config's HS256 key, so that
 *           exp/nbf/iss/aud checks are reached with any values;
 *   mode 2: the same, with the signature part replaced by the rest's tail;
 *   mode 3: the admin token check;
 *   mode 4: a signed token whose exp and nbf are the next two 64-bit values
 *           (byte 25 says which are present; the rest is appended to the
 *           payload as extra members), so that time arithmetic sees every
 *           boundary value without the fuzzer having to spell 19 digits.
 * Each credential is checked twice: the second answer comes from the cache
 * and must be the same.
 */
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HS_KEY "0123456789abcdef0123456789abcdef"

static const char cfg_text[] =
    "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
    " \"admin\":{\"token\":\"the-admin-token-0\"},"
    " \"tokens\":{\"signing_key\":\"" HS_KEY "\",\"ttl_s\":600,\"leeway_s\":30},"
    " \"endpoints\":["
    "  {\"name\":\"alpha\",\"auth\":{\"keys\":true,\"tokens\":true},"
    "   \"keys\":{\"primary\":\"alpha-primary\",\"secondary\":\"alpha-secondary\"},"
    "   \"versions\":[{\"name\":\"vvv\",\"upstreams\":[\"h:1\"]}]}]}";

static struct config *cfg;
static struct auth_ctx *actx;

static size_t
b64url(const unsigned char *in, size_t n, char *out)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = t[v >> 18 & 63], out[o++] = t[v >> 12 & 63];
        out[o++] = t[v >> 6 & 63], out[o++] = t[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = t[v >> 18 & 63], out[o++] = t[v >> 12 & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = t[v >> 18 & 63], out[o++] = t[v >> 12 & 63], out[o++] = t[v >> 6 & 63];
    }
    return o;
}

static void
setup(void)
{
    struct cfg_errors e;
    cfg_errors_init(&e);
    json_t *j = json_loads(cfg_text, 0, NULL);
    cfg = config_parse(j, "/tmp", &e);
    json_decref(j);
    char err[256];
    actx = cfg ? auth_ctx_new(cfg, err, sizeof(err)) : NULL;
    if (actx == NULL)
        abort();
    cfg_errors_free(&e);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (actx == NULL)
        setup();
    if (size < 9 || size > 6000)
        return 0;
    int mode = data[0] % 5;
    int64_t now;
    memcpy(&now, data + 1, sizeof(now));
    const unsigned char *rest = data + 9;
    size_t rlen = size - 9;
    char *built = NULL;
    if (mode == 4) {
        if (rlen < 17)
            return 0;
        int64_t exp, nbf;
        memcpy(&exp, rest, 8);
        memcpy(&nbf, rest + 8, 8);
        unsigned flags = rest[16];
        size_t extra = rlen - 17;
        built = malloc(extra + 200);
        if (built == NULL)
            return 0;
        int n = snprintf(built, 200, "{\"iss\":\"sluice\",\"aud\":\"alpha\"");
        if (flags & 1)
            n += snprintf(built + n, 200 - (size_t)n, ",\"exp\":%lld", (long long)exp);
        if (flags & 2)
            n += snprintf(built + n, 200 - (size_t)n, ",\"nbf\":%lld", (long long)nbf);
        memcpy(built + n, rest + 17, extra);
        n += (int)extra;
        built[n++] = '}';
        rest = (const unsigned char *)built;
        rlen = (size_t)n;
        mode = 1;
    }
    char *hdr = malloc(16 + 2 * rlen + 128);
    if (hdr == NULL)
        return 0;
    size_t hl = 0;
    if (mode == 0 || mode == 3) {
        memcpy(hdr, rest, rlen);
        hl = rlen;
    } else {
        static const char defhead[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
        const unsigned char *nul = memchr(rest, 0, rlen);
        const unsigned char *h = (const unsigned char *)defhead, *pl = rest;
        size_t hn = sizeof(defhead) - 1, pn = rlen;
        if (nul != NULL) {
            h = rest, hn = (size_t)(nul - rest);
            pl = nul + 1, pn = rlen - hn - 1;
        }
        memcpy(hdr, "Bearer ", 7);
        hl = 7;
        size_t signed_from = hl;
        hl += b64url(h, hn, hdr + hl);
        hdr[hl++] = '.';
        if (mode == 2 && pn > 0) {
            /* The last byte of the payload becomes a bogus signature. */
            hl += b64url(pl, pn - 1, hdr + hl);
            hdr[hl++] = '.';
            hl += b64url(pl + pn - 1, 1, hdr + hl);
        } else {
            hl += b64url(pl, pn, hdr + hl);
            unsigned char mac[EVP_MAX_MD_SIZE];
            unsigned int ml = 0;
            HMAC(EVP_sha256(), HS_KEY, (int)strlen(HS_KEY),
                 (const unsigned char *)hdr + signed_from, hl - signed_from, mac, &ml);
            hdr[hl++] = '.';
            hl += b64url(mac, ml, hdr + hl);
        }
    }
    hdr[hl] = '\0';
    if (mode == 3) {
        (void)auth_admin_ok(actx, hdr, hl);
    } else {
        time_t until1 = 0, until2 = 0;
        enum auth_status a = auth_check(actx, &cfg->endpoints[0], hdr, hl, (time_t)now,
                                        &until1);
        enum auth_status b = auth_check(actx, &cfg->endpoints[0], hdr, hl, (time_t)now,
                                        &until2);
        if (a != b || until1 != until2)
            abort();
        (void)auth_status_reason(a);
    }
    free(hdr);
    free(built);
    return 0;
}
