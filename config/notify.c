/*
 * A rollout plan's notifications (SPEC §8): "notify": {"url": "https://…",
 * "headers": {"Authorization": "Bearer …"}}. Validated here with the rest
 * of the config, so a bad URL is refused by the admin change that sets it
 * (errors named by path, e.g. endpoints[0].versions[1].rollout.notify.url);
 * control/webhook.c sends.
 */
#include "config/config.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NOTIFY_URL_MAX 2048
#define NOTIFY_VALUE_MAX 4096

static bool
host_char(int c)
{
    return isalnum(c) || c == '.' || c == '-' || c == '_';
}

int
config_url_parse(const char *url, struct cfg_url *u, const char **why)
{
    memset(u, 0, sizeof(*u));
    const char *s;
    if (strncasecmp(url, "http://", 7) == 0) {
        s = url + 7;
        u->port = 80;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        s = url + 8;
        u->tls = true;
        u->port = 443;
    } else {
        *why = "must start with http:// or https://";
        return -1;
    }
    if (strlen(url) > NOTIFY_URL_MAX) {
        *why = "longer than 2048 bytes";
        return -1;
    }
    for (const char *c = url; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f) {
            *why = "control characters, spaces and non-ASCII bytes are not allowed "
                   "(percent-encode them)";
            return -1;
        }
    size_t alen = strcspn(s, "/?#");
    if (memchr(s, '@', alen) != NULL) {
        *why = "no user:password@ in the URL: put credentials in \"headers\"";
        return -1;
    }
    const char *h = s, *hend;
    const char *port = NULL;
    if (*h == '[') {
        hend = memchr(h, ']', alen);
        if (hend == NULL) {
            *why = "an IPv6 address needs its closing ]";
            return -1;
        }
        h++;
        if (hend + 1 < s + alen) {
            if (hend[1] != ':') {
                *why = "a host is followed by :port or a path";
                return -1;
            }
            port = hend + 2;
        }
    } else {
        hend = h;
        while (hend < s + alen && *hend != ':')
            hend++;
        if (hend < s + alen)
            port = hend + 1;
        for (const char *c = h; c < hend; c++)
            if (!host_char((unsigned char)*c)) {
                *why = "the host has a character that no host name has";
                return -1;
            }
    }
    size_t hlen = (size_t)(hend - h);
    if (hlen == 0 || hlen >= sizeof(u->host)) {
        *why = hlen == 0 ? "no host" : "the host is too long";
        return -1;
    }
    memcpy(u->host, h, hlen);
    u->host[hlen] = '\0';
    if (port != NULL) {
        long n = 0;
        const char *c = port;
        for (; c < s + alen && isdigit((unsigned char)*c) && n <= 65535; c++)
            n = n * 10 + (*c - '0');
        if (c == port || c != s + alen || n < 1 || n > 65535) {
            *why = "the port must be 1 to 65535";
            return -1;
        }
        u->port = (int)n;
    }
    u->path = s + alen;
    if (strchr(u->path, '#') != NULL) {
        *why = "no #fragment: it is never sent";
        return -1;
    }
    return 0;
}

static bool
token_char(int c)
{
    return isalnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

void
config_notify_parse(json_t *obj, const char *path, struct cfg_notify *n,
                    struct cfg_errors *errs)
{
    static const char *const reserved[] = {"host", "content-length", "content-type",
        "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
        "expect", NULL};
    const char *key;
    json_t *val;

    memset(n, 0, sizeof(*n));
    json_object_foreach(obj, key, val) {
        if (strcmp(key, "url") != 0 && strcmp(key, "headers") != 0)
            cfg_errors_add(errs, "%s.%s: unknown field (\"url\", \"headers\")", path, key);
    }
    json_t *url = json_object_get(obj, "url");
    struct cfg_url u;
    const char *why = NULL;
    if (!json_is_string(url))
        cfg_errors_add(errs, "%s.url: required: the http:// or https:// URL events are "
                       "POSTed to", path);
    else if (config_url_parse(json_string_value(url), &u, &why) < 0)
        cfg_errors_add(errs, "%s.url: %s", path, why);
    else
        n->url = strdup(json_string_value(url));
    json_t *hs = json_object_get(obj, "headers");
    if (hs == NULL || json_is_null(hs))
        return;
    if (!json_is_object(hs)) {
        cfg_errors_add(errs, "%s.headers: must be an object of header names and values",
                       path);
        return;
    }
    json_object_foreach(hs, key, val) {
        size_t len = strlen(key);
        bool ok = len > 0 && len <= 64;
        for (size_t i = 0; ok && i < len; i++)
            ok = token_char((unsigned char)key[i]);
        if (!ok) {
            cfg_errors_add(errs, "%s.headers: \"%.64s\" is not a header name", path, key);
            continue;
        }
        bool taken = false;
        for (int i = 0; reserved[i]; i++)
            taken |= strcasecmp(key, reserved[i]) == 0;
        for (int i = 0; i < n->n_headers; i++)
            taken |= strcasecmp(key, n->header_names[i]) == 0;
        if (taken) {
            cfg_errors_add(errs, "%s.headers.%s: set by Sluice or given twice", path, key);
            continue;
        }
        const char *v = json_string_value(val);
        ok = v != NULL && strlen(v) <= NOTIFY_VALUE_MAX;
        for (const char *c = v; ok && *c; c++)
            ok = ((unsigned char)*c >= 0x20 || *c == '\t') && *c != 0x7f;
        if (!ok) {
            cfg_errors_add(errs, "%s.headers.%s: must be a string of at most 4096 bytes "
                           "without control characters", path, key);
            continue;
        }
        if (n->n_headers == CFG_NOTIFY_MAX_HEADERS) {
            cfg_errors_add(errs, "%s.headers: at most %d headers", path,
                           CFG_NOTIFY_MAX_HEADERS);
            break;
        }
        n->header_names[n->n_headers] = strdup(key);
        n->header_values[n->n_headers] = strdup(v);
        n->n_headers++;
    }
}

void
config_notify_free(struct cfg_notify *n)
{
    free(n->url);
    for (int i = 0; i < n->n_headers; i++) {
        free(n->header_names[i]);
        free(n->header_values[i]);
    }
    memset(n, 0, sizeof(*n));
}
