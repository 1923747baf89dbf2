/*
 * The shared part of a fleet's config (SPEC §6), as pure document
 * operations: splitting a document into what the fleet shares, putting a
 * shared part into an instance's document, and checking a shared part
 * read back from Redis or a cache file. The Redis side is control/fleet*.c.
 */
#include "config/config.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const shared_fields[] = {"endpoints", "tokens", NULL};

bool
config_fleet_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > CFG_FLEET_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* The content hash: SHA-256 of the shared fields alone, serialised
 * compactly with sorted keys, so that it depends on the content only (not
 * on the generation, the hash field or the order of members). */
bool
config_fleet_hash(json_t *shared, char out[CFG_FLEET_HASH_LEN + 1])
{
    json_t *o = json_object();
    bool ok = o != NULL;
    for (const char *const *f = shared_fields; ok && *f; f++) {
        json_t *v = json_object_get(shared, *f);
        if (v != NULL)
            ok = json_object_set(o, *f, v) == 0;
    }
    char *text = ok ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    if (text == NULL)
        return false;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    ok = EVP_Digest(text, strlen(text), md, &n, EVP_sha256(), NULL) == 1 && n == 32;
    free(text);
    if (!ok)
        return false;
    static const char hex[] = "0123456789abcdef";
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * n] = '\0';
    return true;
}

json_t *
config_fleet_shared(json_t *doc, uint64_t gen)
{
    char hash[CFG_FLEET_HASH_LEN + 1];
    json_t *s = json_object();
    if (s == NULL || json_object_set_new(s, "generation", json_integer((json_int_t)gen)) < 0)
        goto fail;
    for (const char *const *f = shared_fields; *f; f++) {
        json_t *v = json_object_get(doc, *f);
        if (v == NULL)
            continue;
        json_t *copy = json_deep_copy(v);
        if (copy == NULL || json_object_set_new(s, *f, copy) < 0)
            goto fail;
    }
    if (!config_fleet_hash(s, hash) || json_object_set_new(s, "hash", json_string(hash)) < 0)
        goto fail;
    return s;
fail:
    json_decref(s);
    return NULL;
}

json_t *
config_fleet_merge(json_t *instance, json_t *shared)
{
    json_t *m = json_is_object(instance) ? json_deep_copy(instance) : json_object();
    if (m == NULL)
        return NULL;
    for (const char *const *f = shared_fields; *f; f++) {
        json_t *v = json_object_get(shared, *f);
        if (v == NULL) {
            json_object_del(m, *f);
            continue;
        }
        json_t *copy = json_deep_copy(v);
        if (copy == NULL || json_object_set_new(m, *f, copy) < 0) {
            json_decref(m);
            return NULL;
        }
    }
    return m;
}

json_t *
config_fleet_parse(const char *text, size_t len, uint64_t *gen, char *err, size_t errlen)
{
    json_error_t je;
    json_t *s = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (s == NULL) {
        snprintf(err, errlen, "invalid JSON at line %d column %d: %s", je.line, je.column,
                 je.text);
        return NULL;
    }
    const char *why = NULL;
    json_t *g = json_object_get(s, "generation");
    json_t *t = json_object_get(s, "tokens");
    json_t *h = json_object_get(s, "hash");
    if (!json_is_object(s))
        why = "must be a JSON object";
    else if (!json_is_integer(g) || json_integer_value(g) < 1)
        why = "generation: must be a positive integer";
    else if (!json_is_array(json_object_get(s, "endpoints")))
        why = "endpoints: required, an array";
    else if (t != NULL && !json_is_object(t))
        why = "tokens: must be an object";
    else if (h != NULL && !json_is_string(h))
        why = "hash: must be a string";
    else {
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v) {
            if (strcmp(k, "generation") && strcmp(k, "hash") && strcmp(k, "endpoints") &&
                strcmp(k, "tokens")) {
                char clip[64];
                snprintf(err, errlen, "%s: not a shared field (endpoints, tokens)",
                         config_utf8_clip(clip, sizeof(clip), k));
                json_decref(s);
                return NULL;
            }
        }
    }
    if (why != NULL) {
        snprintf(err, errlen, "%s", why);
        json_decref(s);
        return NULL;
    }
    *gen = (uint64_t)json_integer_value(g);
    return s;
}

const char *
config_fleet_stored_hash(json_t *shared)
{
    const char *h = json_string_value(json_object_get(shared, "hash"));
    return h ? h : "";
}

bool
config_fleet_same(uint64_t gen_a, const char *hash_a, uint64_t gen_b, const char *hash_b)
{
    return gen_a == gen_b && strcmp(hash_a, hash_b) == 0;
}
