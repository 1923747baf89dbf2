/*
 * The shared part of a fleet's config (SPEC §6), as pure document
 * operations: splitting a document into what the fleet shares, putting a
 * shared part into an instance's document, and checking a shared part
 * read back from Redis or a cache file. The Redis side is gateway/fleet.c.
 */
#include "config/config.h"

#include <jansson.h>
#include <stdio.h>
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

json_t *
config_fleet_shared(json_t *doc, uint64_t gen)
{
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
    if (!json_is_object(s))
        why = "must be a JSON object";
    else if (!json_is_integer(g) || json_integer_value(g) < 1)
        why = "generation: must be a positive integer";
    else if (!json_is_array(json_object_get(s, "endpoints")))
        why = "endpoints: required, an array";
    else if (t != NULL && !json_is_object(t))
        why = "tokens: must be an object";
    else {
        const char *k;
        json_t *v;
        json_object_foreach(s, k, v) {
            if (strcmp(k, "generation") && strcmp(k, "endpoints") && strcmp(k, "tokens")) {
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

bool
config_fleet_newer(uint64_t applied, uint64_t seen)
{
    return seen > applied;
}
