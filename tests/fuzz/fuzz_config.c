/*
 * libFuzzer target: a config file's bytes through what `sluice --check`
 * does (JSON, every rule of config_parse, the auth context built from it),
 * plus the invariants the admin API relies on: every error text is valid
 * UTF-8 and names its place.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (doc == NULL)
        return 0;
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    struct config *c = config_parse(doc, "/nonexistent-fuzz-dir", &errs);
    for (int i = 0; i < errs.n; i++)
        if (!config_utf8_valid(errs.msg[i], strlen(errs.msg[i])))
            abort();                /* would break the admin API's JSON reply */
    if ((c == NULL) != (errs.n > 0))
        abort();
    if (c != NULL) {
        char err[512];
        struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
        auth_ctx_free(a);
        for (int i = 0; i < c->n_endpoints; i++) {
            const struct cfg_endpoint *ep = &c->endpoints[i];
            if (config_endpoint(c, ep->name, strlen(ep->name)) == NULL)
                abort();
            for (int v = 0; v < ep->n_versions; v++) {
                const struct cfg_version *ver = &ep->versions[v];
                if (ver->path && !config_text_plain(ver->path))
                    abort();
                for (int u = 0; u < ver->n_upstreams; u++)
                    if (!config_text_plain(ver->upstreams[u].address))
                        abort();
            }
        }
        /* The admin's check of an unchanged document never objects. */
        struct cfg_edit_result r = {0};
        if (config_edit_check_secrets(c->doc, c->doc, &r) != 0)
            abort();
        config_drop(c);
    }
    cfg_errors_free(&errs);
    json_decref(doc);
    return 0;
}
