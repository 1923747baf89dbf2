/*
 * Admin changes as pure operations on the config document (SPEC §5), and
 * its atomic persistence. Each operation edits a copy of the document that
 * the caller then validates whole with config_parse(), writes with
 * config_save() and publishes; on any error nothing has changed.
 */
#include "config/config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int
fail(struct cfg_edit_result *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail(struct cfg_edit_result *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof(r->message), fmt, ap);
    va_end(ap);
    config_utf8_fix(r->message);    /* names quoted in it may have been cut */
    r->status = status;
    return status;
}

/* The member of array whose "name" is name (and its index), or NULL. */
static json_t *
find_named(json_t *array, const char *name, size_t *index)
{
    size_t i;
    json_t *x;
    json_array_foreach(array, i, x) {
        json_t *n = json_object_get(x, "name");
        if (json_is_string(n) && strcmp(json_string_value(n), name) == 0) {
            if (index)
                *index = i;
            return x;
        }
    }
    return NULL;
}

json_t *
config_doc_endpoint(json_t *doc, const char *ep, size_t *index)
{
    return find_named(json_object_get(doc, "endpoints"), ep, index);
}

static json_t *
find_version(json_t *e, const char *v, size_t *index)
{
    return find_named(json_object_get(e, "versions"), v, index);
}

static const char *
str_of(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Unmark every other default when `keep` becomes the default. */
static void
unmark_defaults(json_t *e, json_t *keep)
{
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(e, "versions"), i, x)
        if (x != keep && json_object_get(x, "is_default") != NULL)
            json_object_del(x, "is_default");
}

/* Checks that are conflicts (409) rather than invalid input (400). */
static int
version_conflicts(struct cfg_edit_result *r, json_t *e, json_t *nv, json_t *self)
{
    const char *name = str_of(nv, "name");
    const char *type = str_of(nv, "type");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(e, "versions"), i, x) {
        if (x == self)
            continue;
        const char *xn = str_of(x, "name");
        if (name && xn && strcmp(name, xn) == 0) {
            char q[64];
            return fail(r, 409, "endpoint %s already has a version named %s",
                        str_of(e, "name"), config_utf8_clip(q, sizeof(q), name));
        }
        const char *xt = str_of(x, "type");
        if (type && strcmp(type, "control") == 0 && xt && strcmp(xt, "control") == 0)
            return fail(r, 409, "a second control version (%s is control)", xn ? xn : "?");
    }
    return 0;
}

int
config_edit_create_version(json_t *doc, const char *ep, json_t *body,
                           struct cfg_edit_result *r)
{
    json_t *e = config_doc_endpoint(doc, ep, NULL);
    if (e == NULL)
        return fail(r, 404, "no endpoint named %s", ep);
    if (!json_is_object(body) || !json_is_string(json_object_get(body, "name")))
        return fail(r, 400, "the body must be a version object with a \"name\"");
    json_t *vs = json_object_get(e, "versions");
    if (json_array_size(vs) >= CFG_MAX_VERSIONS)
        return fail(r, 409, "endpoint %s already has %d versions, the most allowed",
                    ep, CFG_MAX_VERSIONS);
    if (json_object_get(body, "rollout_state") != NULL)
        return fail(r, 400, "rollout_state: written only by the rollout driver "
                    "(POST .../versions/{v}/rollout)");
    if (version_conflicts(r, e, body, NULL))
        return r->status;
    json_t *nv = json_deep_copy(body);
    if (json_is_true(json_object_get(nv, "is_default")))
        unmark_defaults(e, nv);
    json_array_append_new(vs, nv);
    return 0;
}

int
config_edit_update_version(json_t *doc, const char *ep, const char *v, json_t *body,
                           struct cfg_edit_result *r)
{
    static const char *const allowed[] = {"traffic_percentile", "is_default", "type",
        "description", "tags", "upstreams", "mirror_percentile", "compare", "rollout", NULL};
    json_t *e = config_doc_endpoint(doc, ep, NULL);
    if (e == NULL)
        return fail(r, 404, "no endpoint named %s", ep);
    json_t *x = find_version(e, v, NULL);
    if (x == NULL)
        return fail(r, 404, "endpoint %s has no version %s", ep, v);
    if (!json_is_object(body))
        return fail(r, 400, "the body must be a JSON object");
    const char *k;
    json_t *val;
    json_object_foreach(body, k, val) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(*a, k) == 0;
        if (!ok && strcmp(k, "rollout_state") == 0)
            return fail(r, 400, "rollout_state: written only by the rollout driver "
                        "(POST .../versions/{v}/rollout)");
        if (!ok) {
            char q[64];
            return fail(r, 400, "%s: cannot be changed by update_version",
                        config_utf8_clip(q, sizeof(q), k));
        }
    }
    json_t *probe = json_deep_copy(x);
    json_object_update(probe, body);
    int c = version_conflicts(r, e, probe, x);
    json_decref(probe);
    if (c)
        return c;
    config_edit_rollout_operator_change(x, r);
    json_object_update(x, body);
    if (json_is_true(json_object_get(body, "is_default")))
        unmark_defaults(e, x);
    else if (json_is_false(json_object_get(body, "is_default")))
        json_object_del(x, "is_default");
    /* "rollout": null forgets the rollout, its state included. */
    if (json_is_null(json_object_get(body, "rollout"))) {
        json_object_del(x, "rollout");
        json_object_del(x, "rollout_state");
    }
    return 0;
}

/* An operator's own change to a version under a running rollout pauses the
 * rollout instead of being undone by its next step (SPEC §8). A version
 * rolled back or aborted refuses pins until it is changed again (SPEC §3.3):
 * this is that change, recorded in its state. */
void
config_edit_rollout_operator_change(json_t *x, struct cfg_edit_result *r)
{
    json_t *st = json_object_get(x, "rollout_state");
    json_t *ph = json_object_get(st, "phase");
    if (json_is_string(ph) && (strcmp(json_string_value(ph), "rolled_back") == 0 ||
                               strcmp(json_string_value(ph), "aborted") == 0)) {
        json_object_set_new(st, "operator_changed", json_true());
        return;
    }
    if (!json_is_string(ph) || strcmp(json_string_value(ph), "running") != 0)
        return;
    json_object_set_new(st, "phase", json_string("paused"));
    json_object_set_new(st, "reason", json_string("operator change"));
    json_object_set_new(st, "since", json_integer((json_int_t)time(NULL)));
    r->rollout_paused = true;
}

int
config_edit_delete_version(json_t *doc, const char *ep, const char *v,
                           struct cfg_edit_result *r)
{
    json_t *e = config_doc_endpoint(doc, ep, NULL);
    if (e == NULL)
        return fail(r, 404, "no endpoint named %s", ep);
    size_t idx;
    json_t *x = find_version(e, v, &idx);
    if (x == NULL)
        return fail(r, 404, "endpoint %s has no version %s", ep, v);
    json_t *vs = json_object_get(e, "versions");
    if (json_array_size(vs) == 1)
        return fail(r, 409, "%s is the only version of %s: delete the endpoint instead", v, ep);
    /* The default is the marked one, or the first listed when none is. */
    bool marked = false;
    size_t i;
    json_t *y;
    json_array_foreach(vs, i, y)
        marked |= json_is_true(json_object_get(y, "is_default"));
    if (json_is_true(json_object_get(x, "is_default")) || (!marked && idx == 0))
        return fail(r, 409, "%s is the default version of %s: make another version "
                    "the default first", v, ep);
    json_array_remove(vs, idx);
    return 0;
}

int
config_edit_put_endpoint(json_t *doc, const char *ep, json_t *body,
                         struct cfg_edit_result *r)
{
    if (!json_is_object(body))
        return fail(r, 400, "the body must be an endpoint object");
    const char *n = str_of(body, "name");
    if (n != NULL && strcmp(n, ep) != 0) {
        char q[64];
        return fail(r, 400, "name: \"%s\" does not match the URL's %s",
                    config_utf8_clip(q, sizeof(q), n), ep);
    }
    json_t *ne = json_deep_copy(body);
    json_object_set_new(ne, "name", json_string(ep));
    size_t idx;
    json_t *old = config_doc_endpoint(doc, ep, &idx);
    json_t *eps = json_object_get(doc, "endpoints");
    if (old != NULL) {
        /* Replacing keeps the keys unless new ones are given. */
        if (json_object_get(ne, "keys") == NULL && json_object_get(old, "keys") != NULL)
            json_object_set(ne, "keys", json_object_get(old, "keys"));
        json_array_set_new(eps, idx, ne);
        r->created = false;
    } else {
        json_array_append_new(eps, ne);
        r->created = true;
    }
    return 0;
}

int
config_edit_delete_endpoint(json_t *doc, const char *ep, struct cfg_edit_result *r)
{
    size_t idx;
    if (config_doc_endpoint(doc, ep, &idx) == NULL)
        return fail(r, 404, "no endpoint named %s", ep);
    json_array_remove(json_object_get(doc, "endpoints"), idx);
    return 0;
}

static bool
is_reference(json_t *v)
{
    const char *s = json_string_value(v);
    return s != NULL && (strncmp(s, "env:", 4) == 0 || strncmp(s, "file:", 5) == 0);
}

/* obj.key of after, when it is a reference, must equal obj.key of before. */
static int
secret_same(struct cfg_edit_result *r, json_t *before_obj, json_t *after_obj,
            const char *key, const char *path)
{
    json_t *a = json_is_object(after_obj) ? json_object_get(after_obj, key) : NULL;
    if (!is_reference(a))
        return 0;
    json_t *b = json_is_object(before_obj) ? json_object_get(before_obj, key) : NULL;
    if (b != NULL && json_equal(a, b))
        return 0;
    return fail(r, 400, "%s.%s: secrets set through the admin API take literal values "
                "only (env: and file: belong to the config file)", path, key);
}

int
config_edit_check_secrets(json_t *before, json_t *after, struct cfg_edit_result *r)
{
    char path[96];
    if (secret_same(r, json_object_get(before, "admin"), json_object_get(after, "admin"),
                    "token", "admin") ||
        secret_same(r, json_object_get(before, "redis"), json_object_get(after, "redis"),
                    "password", "redis"))
        return r->status;
    json_t *bt = json_object_get(before, "tokens"), *at = json_object_get(after, "tokens");
    if (secret_same(r, bt, at, "signing_key", "tokens"))
        return r->status;
    json_t *bti = json_is_object(bt) ? json_object_get(bt, "trusted_issuers") : NULL;
    json_t *ati = json_is_object(at) ? json_object_get(at, "trusted_issuers") : NULL;
    size_t i;
    json_t *x;
    json_array_foreach(ati, i, x) {
        snprintf(path, sizeof(path), "tokens.trusted_issuers[%zu]", i);
        if (secret_same(r, json_array_get(bti, i), x, "public_key", path))
            return r->status;
    }
    /* Endpoints are matched by name: an edit may reorder or rename them. */
    json_array_foreach(json_object_get(after, "endpoints"), i, x) {
        json_t *ak = json_is_object(x) ? json_object_get(x, "keys") : NULL;
        if (!json_is_object(ak))
            continue;
        const char *name = str_of(x, "name");
        json_t *be = name ? config_doc_endpoint(before, name, NULL) : NULL;
        json_t *bk = be ? json_object_get(be, "keys") : NULL;
        snprintf(path, sizeof(path), "endpoints[%zu].keys", i);
        if (secret_same(r, bk, ak, "primary", path) ||
            secret_same(r, bk, ak, "secondary", path))
            return r->status;
    }
    return 0;
}

/* 32 bytes from OpenSSL's CSPRNG in base64url without padding (RFC 4648
 * §5): EVP_EncodeBlock's standard alphabet, with '+' and '/' translated
 * and the one '=' dropped. */
char *
config_new_key(void)
{
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        abort();                /* no randomness: never hand out a weak key */
    unsigned char enc[45];      /* 4 * ceil(32 / 3) + NUL */
    int n = EVP_EncodeBlock(enc, raw, sizeof(raw));
    OPENSSL_cleanse(raw, sizeof(raw));
    if (n != 44)
        abort();
    char *out = malloc(44);
    if (out == NULL)
        abort();
    size_t o = 0;
    for (int i = 0; i < n && enc[i] != '='; i++)
        out[o++] = enc[i] == '+' ? '-' : enc[i] == '/' ? '_' : (char)enc[i];
    out[o] = '\0';              /* 32 bytes -> 43 base64url characters */
    OPENSSL_cleanse(enc, sizeof(enc));
    return out;
}

int
config_edit_regen_key(json_t *doc, const char *ep, const char *which,
                      struct cfg_edit_result *r)
{
    json_t *e = config_doc_endpoint(doc, ep, NULL);
    if (e == NULL)
        return fail(r, 404, "no endpoint named %s", ep);
    const char *field;
    if (strcasecmp(which, "primary") == 0)
        field = "primary";
    else if (strcasecmp(which, "secondary") == 0)
        field = "secondary";
    else
        return fail(r, 400, "key_type: must be \"Primary\" or \"Secondary\"");
    json_t *keys = json_object_get(e, "keys");
    if (!json_is_object(keys)) {
        keys = json_object();
        json_object_set_new(e, "keys", keys);
    }
    char *k = config_new_key();
    json_object_set_new(keys, field, json_string(k));
    free(k);
    return 0;
}

bool
config_fill_keys(json_t *doc)
{
    bool changed = false;
    /* Token signing: an HMAC secret is generated like a key; RS/ES keys
     * are PEM files the operator provides. */
    json_t *tokens = json_object_get(doc, "tokens");
    if (tokens == NULL || json_is_object(tokens)) {
        json_t *alg = tokens ? json_object_get(tokens, "algorithm") : NULL;
        json_t *sk = tokens ? json_object_get(tokens, "signing_key") : NULL;
        bool hmac = alg == NULL || (json_is_string(alg) && json_string_value(alg)[0] == 'H');
        if (hmac && (sk == NULL || json_is_null(sk))) {
            if (tokens == NULL) {
                tokens = json_object();
                json_object_set_new(doc, "tokens", tokens);
            }
            char *nk = config_new_key();
            json_object_set_new(tokens, "signing_key", json_string(nk));
            free(nk);
            changed = true;
        }
    }
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "endpoints"), i, e) {
        if (!json_is_object(e))
            continue;
        json_t *auth = json_object_get(e, "auth");
        json_t *use = json_is_object(auth) ? json_object_get(auth, "keys") : NULL;
        if (use != NULL && json_is_false(use))
            continue;
        json_t *keys = json_object_get(e, "keys");
        if (keys != NULL && !json_is_object(keys))
            continue;           /* left for validation to report */
        if (keys == NULL) {
            keys = json_object();
            json_object_set_new(e, "keys", keys);
        }
        static const char *const which[] = {"primary", "secondary"};
        for (int w = 0; w < 2; w++) {
            json_t *k = json_object_get(keys, which[w]);
            if (k == NULL || json_is_null(k)) {
                char *nk = config_new_key();
                json_object_set_new(keys, which[w], json_string(nk));
                free(nk);
                changed = true;
            }
        }
    }
    return changed;
}

int
config_save(const char *path, json_t *doc, char *err, size_t errlen)
{
    char tmp[4096], dir[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';

    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text == NULL) {
        snprintf(err, errlen, "cannot serialise the config");
        return -1;
    }
    size_t len = strlen(text);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        free(text);
        return -1;
    }
    size_t off = 0;
    int rc = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        off += (size_t)n;
    }
    if (rc == 0 && write(fd, "\n", 1) != 1)
        rc = -1;
    if (rc == 0 && fsync(fd) < 0)
        rc = -1;
    int e = errno;
    close(fd);
    free(text);
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = -1;
        e = errno;
    }
    if (rc < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(e));
        unlink(tmp);
        return -1;
    }
    /* The rename is durable only once the folder is synced. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}
