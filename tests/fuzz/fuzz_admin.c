/*
 * libFuzzer target: the admin API's edits (config/edit.c) applied to a
 * valid config with fuzzed names and bodies, then what a commit does
 * (secrets check, key filling, validation). Input:
 *   byte 0: the operation; then "EP\nVERSION\n" and the JSON body.
 * An empty EP or VERSION means the config's own (mynewendpoint/versiona).
 * Invariants: every message is valid UTF-8 (it becomes a JSON reply), an
 * edit either succeeds or sets a 4xx, and no env:/file: secret that the
 * base config did not have survives the secrets check.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char base_text[] =
    "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
    " \"admin\":{\"address\":\"127.0.0.1:9901\",\"token\":\"admin-token-for-fuzzing\"},"
    " \"tokens\":{\"signing_key\":\"0123456789abcdef0123456789abcdef\"},"
    " \"endpoints\":["
    "  {\"name\":\"mynewendpoint\",\"auth\":{\"keys\":true,\"tokens\":true},"
    "   \"keys\":{\"primary\":\"pppppppppppppppppppp\",\"secondary\":\"env:HOME\"},"
    "   \"sticky\":{\"header\":\"X-User-Id\"},"
    "   \"versions\":["
    "    {\"name\":\"versiona\",\"upstreams\":[\"127.0.0.1:5001\"],\"path\":\"/score\","
    "     \"traffic_percentile\":20,\"is_default\":true,\"type\":\"control\","
    "     \"tags\":{\"a\":\"b\"},\"health_check\":{\"path\":\"/\"}},"
    "    {\"name\":\"versionb\",\"upstreams\":[\"127.0.0.1:5002\"],"
    "     \"traffic_percentile\":10}]},"
    "  {\"name\":\"other\",\"auth\":{\"keys\":false},"
    "   \"versions\":[{\"name\":\"only\",\"upstreams\":[\"unix:/tmp/x.sock\"]}]}]}";

static json_t *base;

static const char *
line(const char **p, const char *end, char *out, size_t cap, const char *def)
{
    size_t n = 0;
    while (*p < end && **p != '\n') {
        if (n + 1 < cap && **p != '\0')
            out[n++] = **p;
        (*p)++;
    }
    if (*p < end)
        (*p)++;
    out[n] = '\0';
    return n ? out : def;
}

static void
check_text(const char *s)
{
    if (!config_utf8_valid(s, strlen(s)))
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (base == NULL) {
        base = json_loads(base_text, 0, NULL);
        if (base == NULL)
            abort();
    }
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    char epbuf[256], vbuf[256];
    const char *ep = line(&p, end, epbuf, sizeof(epbuf), "mynewendpoint");
    const char *v = line(&p, end, vbuf, sizeof(vbuf), "versiona");
    json_t *body = json_loadb(p, (size_t)(end - p), JSON_REJECT_DUPLICATES, NULL);

    json_t *doc = json_deep_copy(base);
    struct cfg_edit_result r = {0};
    int rc;
    switch (data[0] % 7) {
    case 0: rc = body ? config_edit_create_version(doc, ep, body, &r) : -1; break;
    case 1: rc = body ? config_edit_update_version(doc, ep, v, body, &r) : -1; break;
    case 2: rc = config_edit_delete_version(doc, ep, v, &r); break;
    case 3: rc = body ? config_edit_put_endpoint(doc, ep, body, &r) : -1; break;
    case 4: rc = config_edit_delete_endpoint(doc, ep, &r); break;
    case 5: rc = config_edit_regen_key(doc, ep, v, &r); break;
    default: {
        /* Two edits in a row, as two admin requests would. */
        rc = body ? config_edit_update_version(doc, ep, v, body, &r) : -1;
        if (rc == 0)
            rc = config_edit_delete_version(doc, ep, "versionb", &r);
        break;
    }
    }
    if (rc > 0) {
        if (r.status != rc || rc < 400 || rc > 499)
            abort();
        check_text(r.message);
    }
    if (rc == 0) {
        struct cfg_edit_result sr = {0};
        int src = config_edit_check_secrets(base, doc, &sr);
        if (src != 0) {
            if (src != 400)
                abort();
            check_text(sr.message);
        } else {
            /* Independently: the only reference left is the base's own. */
            size_t i;
            json_t *e;
            json_array_foreach(json_object_get(doc, "endpoints"), i, e) {
                json_t *keys = json_object_get(e, "keys");
                const char *which[] = {"primary", "secondary"};
                for (int w = 0; w < 2; w++) {
                    const char *k = json_string_value(json_object_get(keys, which[w]));
                    if (k && (strncmp(k, "env:", 4) == 0 || strncmp(k, "file:", 5) == 0) &&
                        !(w == 1 && strcmp(k, "env:HOME") == 0 &&
                          strcmp(json_string_value(json_object_get(e, "name")),
                                 "mynewendpoint") == 0))
                        abort();
                }
            }
            config_fill_keys(doc);
            struct cfg_errors errs;
            cfg_errors_init(&errs);
            struct config *c = config_parse(doc, "/nonexistent-fuzz-dir", &errs);
            for (int k = 0; k < errs.n; k++)
                check_text(errs.msg[k]);
            if (c != NULL) {
                /* Only the base file's own reference may remain. */
                for (int k = 0; k < c->n_endpoints; k++) {
                    const struct cfg_endpoint *ce = &c->endpoints[k];
                    if (ce->key_primary)
                        check_text(ce->key_primary);
                    if (ce->key_secondary)
                        check_text(ce->key_secondary);
                }
                config_drop(c);
            }
            cfg_errors_free(&errs);
        }
    }
    json_decref(doc);
    json_decref(body);
    return 0;
}
