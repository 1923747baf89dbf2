/* Helpers of the config unit tests (test_config.c, test_config_fleet.c):
 * a config parsed from an endpoint list or a whole document, and the exact
 * error looked for. */
#ifndef SLUICE_TEST_CONFIG_CHECK_H
#define SLUICE_TEST_CONFIG_CHECK_H
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "config/config.h"

/* A minimal valid config with the endpoint text substituted in. */
static const char *base_fmt =
    "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
    " \"endpoints\":[%s]}";

static struct config *
parse(const char *endpoints, struct cfg_errors *e)
{
    char doc[8192];
    json_error_t jerr;
    snprintf(doc, sizeof(doc), base_fmt, endpoints);
    json_t *j = json_loads(doc, 0, &jerr);
    if (j == NULL) {
        fprintf(stderr, "bad test JSON: %s\n%s\n", jerr.text, doc);
        abort();
    }
    cfg_errors_init(e);
    struct config *c = config_parse(j, "/tmp", e);
    json_decref(j);
    return c;
}

static struct config *
parse_root(const char *doc, struct cfg_errors *e)
{
    json_error_t jerr;
    json_t *j = json_loads(doc, 0, &jerr);
    if (j == NULL)
        abort();
    cfg_errors_init(e);
    struct config *c = config_parse(j, "/tmp", e);
    json_decref(j);
    return c;
}

static bool
has_error(const struct cfg_errors *e, const char *exact)
{
    for (int i = 0; i < e->n; i++)
        if (strcmp(e->msg[i], exact) == 0)
            return true;
    return false;
}

/* A version object: name, traffic percentile, more members. */
#define V(name, pct, extra) \
    "{\"name\":\"" name "\",\"upstreams\":[\"127.0.0.1:5001\"],\"traffic_percentile\":" #pct extra "}"

#endif
