/*
 * Parsing and validation of the JSON config (SPEC §2): the top level
 * (listeners, tokens, redis, limits, log, admin, fleet: parse_root) and
 * the snapshot's lifetime (config_parse, config_load, take and drop,
 * lookups). Endpoints and versions are parsed in endpoint.c; the typed
 * field readers and error reporting are fields.c; text and name checks
 * text.c (declared in config/internal.h).
 *
 * Every object is read through the same few helpers: check_fields() refuses
 * unknown names, get_*() read one typed field with its default and range and
 * report errors by JSON path. Nothing is applied anywhere: the result is a
 * fresh snapshot or NULL.
 */
#include "config/config.h"
#include "config/internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void
parse_listener(struct pctx *p, json_t *obj, const char *path,
               struct cfg_listener *l)
{
    static const char *const fields[] = {"address", "tls", "http2", NULL};
    static const char *const tls_fields[] = {"certificate", "private_key", NULL};
    char sp[PATH_MAX_LEN];
    bool is_unix;

    if (!json_is_object(obj)) {
        cfg_err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);
    get_str(p, obj, path, "address", &l->address, NULL);
    subpath(sp, path, "address");
    if (l->address == NULL) {
        if (json_object_get(obj, "address") == NULL)
            cfg_err(p, sp, "required: host:port");
    } else if (config_parse_address(l->address, &l->host, &l->port,
                                    &is_unix) < 0 || is_unix) {
        cfg_err(p, sp, "\"%s\" is not host:port or [v6]:port", l->address);
    }
    get_bool(p, obj, path, "http2", &l->http2, true);     /* SPEC §9 */
    json_t *tls = get_obj(p, obj, path, "tls");
    subpath(sp, path, "tls");
    if (tls != NULL) {
        check_fields(p, tls, sp, tls_fields);
        l->tls = true;
        char *cert = NULL, *key = NULL;
        char fp[PATH_MAX_LEN];
        get_str(p, tls, sp, "certificate", &cert, NULL);
        get_str(p, tls, sp, "private_key", &key, NULL);
        if (cert == NULL) {
            subpath(fp, sp, "certificate");
            cfg_err(p, fp, "required: a PEM file");
        } else
            l->certificate = resolve_path(p, cert);
        if (key == NULL) {
            subpath(fp, sp, "private_key");
            cfg_err(p, fp, "required: a PEM file");
        } else
            l->private_key = resolve_path(p, key);
        free(cert);
        free(key);
    }
}

static void
parse_tokens(struct pctx *p, json_t *obj, struct cfg_tokens *t)
{
    static const char *const fields[] = {"issuer", "signing_key", "algorithm",
        "ttl_s", "leeway_s", "trusted_issuers", NULL};
    static const char *const ti_fields[] = {"issuer", "audience", "algorithm",
        "public_key", NULL};
    static const char *const algs[] = {"HS256", "HS384", "HS512", "RS256",
        "RS384", "RS512", "ES256", "ES384", "ES512", NULL};
    const char *path = "tokens";
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    if (obj != NULL)
        check_fields(p, obj, path, fields);
    get_str(p, obj, path, "issuer", &t->issuer, "sluice");
    get_secret(p, obj, path, "signing_key", &t->signing_key);
    get_str(p, obj, path, "algorithm", &t->algorithm, "HS256");
    get_int(p, obj, path, "ttl_s", &t->ttl_s, 3600, 1, 31 * 86400);
    get_int(p, obj, path, "leeway_s", &t->leeway_s, 30, 0, 3600);
    bool ok = false;
    for (const char *const *a = algs; *a; a++)
        if (t->algorithm && strcmp(*a, t->algorithm) == 0)
            ok = true;
    if (t->algorithm && !ok) {
        subpath(sp, path, "algorithm");
        cfg_err(p, sp, "\"%s\" is not one of HS256/384/512, RS256/384/512, "
                "ES256/384/512", t->algorithm);
    }
    json_t *arr = obj ? json_object_get(obj, "trusted_issuers") : NULL;
    subpath(sp, path, "trusted_issuers");
    if (arr == NULL || json_is_null(arr))
        return;
    if (!json_is_array(arr)) {
        cfg_err(p, sp, "must be an array");
        return;
    }
    t->trusted = calloc(json_array_size(arr) + 1, sizeof(*t->trusted));
    if (t->trusted == NULL)
        abort();
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        struct cfg_trusted_issuer *ti = &t->trusted[t->n_trusted++];
        indexpath(ip, sp, i);
        if (!json_is_object(o)) {
            cfg_err(p, ip, "must be an object");
            continue;
        }
        check_fields(p, o, ip, ti_fields);
        get_str(p, o, ip, "issuer", &ti->issuer, NULL);
        get_str(p, o, ip, "audience", &ti->audience, NULL);
        get_str(p, o, ip, "algorithm", &ti->algorithm, NULL);
        get_secret(p, o, ip, "public_key", &ti->public_key);
        char fp[PATH_MAX_LEN];
        if (ti->issuer == NULL) {
            subpath(fp, ip, "issuer");
            cfg_err(p, fp, "required");
        }
        if (ti->algorithm == NULL || ti->algorithm[0] == 'H') {
            subpath(fp, ip, "algorithm");
            cfg_err(p, fp, "required: RS256/384/512 or ES256/384/512");
        }
        if (ti->public_key == NULL) {
            subpath(fp, ip, "public_key");
            cfg_err(p, fp, "required: a PEM public key");
        }
    }
}

/* A Sentinel master name: what redis-sentinel accepts in a config line. */
static bool
master_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

/*
 * Where Redis is: redis.address (the default 127.0.0.1:6379 when neither is
 * given) or redis.sentinels + redis.master_name, never both: with two, which
 * one a writer follows after a failover would be a guess.
 */
static void
parse_redis_where(struct pctx *p, json_t *redis, struct cfg_redis *r)
{
    json_t *addr = json_object_get(redis, "address");
    json_t *sen = json_object_get(redis, "sentinels");
    json_t *mn = json_object_get(redis, "master_name");
    bool has_addr = addr != NULL && !json_is_null(addr);
    bool has_sen = sen != NULL && !json_is_null(sen);
    bool is_unix;
    char sp[PATH_MAX_LEN];

    if (!has_sen) {
        get_str(p, redis, "redis", "address", &r->address, "127.0.0.1:6379");
        if (mn != NULL && !json_is_null(mn))
            cfg_err(p, "redis.master_name", "only with redis.sentinels");
        return;
    }
    if (has_addr)
        cfg_err(p, "redis.sentinels", "give redis.address or redis.sentinels, not both");
    if (!json_is_array(sen) || json_array_size(sen) == 0 ||
        json_array_size(sen) > CFG_MAX_SENTINELS) {
        cfg_err(p, "redis.sentinels", "must be an array of 1 to %d \"host:port\"",
                CFG_MAX_SENTINELS);
    } else {
        size_t n = json_array_size(sen);
        r->sentinel_hosts = calloc(n, sizeof(*r->sentinel_hosts));
        r->sentinel_ports = calloc(n, sizeof(*r->sentinel_ports));
        if (r->sentinel_hosts == NULL || r->sentinel_ports == NULL)
            abort();
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(sen, i);
            indexpath(sp, "redis.sentinels", i);
            char *host = NULL;
            int port = 0;
            if (!json_is_string(e) ||
                config_parse_address(json_string_value(e), &host, &port, &is_unix) < 0 ||
                is_unix) {
                free(host);
                cfg_err(p, sp, "must be \"host:port\"");
                continue;
            }
            r->sentinel_hosts[r->n_sentinels] = host;
            r->sentinel_ports[r->n_sentinels++] = port;
        }
    }
    if (mn == NULL || json_is_null(mn))
        cfg_err(p, "redis.master_name", "required with redis.sentinels");
    else if (!json_is_string(mn) || !master_name_valid(json_string_value(mn)))
        cfg_err(p, "redis.master_name", "must be 1 to 64 of a-z A-Z 0-9 . _ -");
    else
        r->master_name = xstrdup(json_string_value(mn));
}

static struct config *
parse_root(struct pctx *p, json_t *root)
{
    static const char *const fields[] = {"workers", "listeners", "admin",
        "redis", "tokens", "limits", "log", "endpoints", "fleet", "tracing", NULL};
    static const char *const fleet_fields[] = {"name", "leader_lease_ms", NULL};
    static const char *const admin_fields[] = {"address", "token", "max_connections",
        NULL};
    static const char *const redis_fields[] = {"address", "db", "password",
        "flush_interval_ms", "retention_minutes", "sentinels", "master_name",
        "wait_replicas", "wait_timeout_ms", NULL};
    static const char *const limit_fields[] = {"max_header_bytes",
        "max_body_bytes", "header_timeout_ms", "idle_timeout_ms",
        "max_connections", "drain_timeout_ms", "max_pipelined",
        "max_client_output_bytes", "send_timeout_ms", "upstream_idle_timeout_ms",
        "max_shadow_inflight", "shadow_timeout_ms", "compare_budget_bytes",
        "h2_max_concurrent_streams", NULL};
    static const char *const log_fields[] = {"access_log", "level", NULL};
    char sp[PATH_MAX_LEN];
    bool is_unix;

    struct config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->refs = 1;
    if (!json_is_object(root)) {
        cfg_err(p, "", "the config must be a JSON object");
        return c;
    }
    check_fields(p, root, "", fields);
    get_int(p, root, "", "workers", &c->workers, 0, 0, 1024);

    json_t *ls = json_object_get(root, "listeners");
    if (!json_is_array(ls) || json_array_size(ls) == 0) {
        cfg_err(p, "listeners", "required: an array of at least one listener");
    } else {
        c->n_listeners = (int)json_array_size(ls);
        c->listeners = calloc((size_t)c->n_listeners, sizeof(*c->listeners));
        if (c->listeners == NULL)
            abort();
        for (int i = 0; i < c->n_listeners; i++) {
            indexpath(sp, "listeners", (size_t)i);
            parse_listener(p, json_array_get(ls, (size_t)i), sp,
                           &c->listeners[i]);
            for (int j = 0; j < i; j++)
                if (c->listeners[i].address && c->listeners[j].address &&
                    strcmp(c->listeners[i].address, c->listeners[j].address) == 0) {
                    char fp[PATH_MAX_LEN];
                    subpath(fp, sp, "address");
                    cfg_err(p, fp, "\"%s\" is already listeners[%d]",
                            c->listeners[i].address, j);
                }
        }
    }

    json_t *admin = get_obj(p, root, "", "admin");
    if (admin != NULL)
        check_fields(p, admin, "admin", admin_fields);
    get_str(p, admin, "admin", "address", &c->admin_address, "127.0.0.1:9901");
    if (c->admin_address != NULL &&
        (config_parse_address(c->admin_address, &c->admin_host,
                              &c->admin_port, &is_unix) < 0 || is_unix))
        cfg_err(p, "admin.address", "\"%s\" is not host:port", c->admin_address);
    get_secret(p, admin, "admin", "token", &c->admin_token);
    if (c->admin_token != NULL) {
        /* A placeholder left in a template, or a guessable token, would
         * open the admin API: refuse both (issue 20). */
        size_t n = strlen(c->admin_token);
        if (n < CFG_ADMIN_TOKEN_MIN)
            cfg_err(p, "admin.token", "must be at least %d bytes (it has %zu): make one with "
                    "openssl rand -base64 32", CFG_ADMIN_TOKEN_MIN, n);
        else if (contains_nocase(c->admin_token, "replace"))
            cfg_err(p, "admin.token", "is a placeholder (it contains \"REPLACE\"): set a "
                    "secret of your own");
    }
    get_int(p, admin, "admin", "max_connections", &c->admin_max_connections, 64, 1, 65536);

    json_t *redis = get_obj(p, root, "", "redis");
    if (redis != NULL)
        check_fields(p, redis, "redis", redis_fields);
    parse_redis_where(p, redis, &c->redis);
    if (c->redis.address != NULL &&
        (config_parse_address(c->redis.address, &c->redis.host,
                              &c->redis.port, &is_unix) < 0 || is_unix))
        cfg_err(p, "redis.address", "\"%s\" is not host:port", c->redis.address);
    get_int(p, redis, "redis", "db", &c->redis.db, 0, 0, 1000000);
    get_secret(p, redis, "redis", "password", &c->redis.password);
    /* At most a minute: per-minute counters are collected at least that often. */
    get_int(p, redis, "redis", "flush_interval_ms", &c->redis.flush_interval_ms,
            1000, 10, 60000);
    get_int(p, redis, "redis", "retention_minutes", &c->redis.retention_minutes,
            10080, 1, 5256000);
    get_int(p, redis, "redis", "wait_replicas", &c->redis.wait_replicas, 0, 0, 16);
    get_int(p, redis, "redis", "wait_timeout_ms", &c->redis.wait_timeout_ms, 1000, 10, 60000);

    parse_tokens(p, get_obj(p, root, "", "tokens"), &c->tokens);

    json_t *lim = get_obj(p, root, "", "limits");
    if (lim != NULL)
        check_fields(p, lim, "limits", limit_fields);
    uint64_t mhb;
    get_u64(p, lim, "limits", "max_header_bytes", &mhb, 16384, 1024, 81920);
    c->limits.max_header_bytes = (size_t)mhb;
    get_u64(p, lim, "limits", "max_body_bytes", &c->limits.max_body_bytes,
            16777216, 0, (uint64_t)1 << 40);
    get_int(p, lim, "limits", "header_timeout_ms", &c->limits.header_timeout_ms,
            10000, 1, 3600000);
    get_int(p, lim, "limits", "idle_timeout_ms", &c->limits.idle_timeout_ms,
            60000, 1, 86400000);
    get_int(p, lim, "limits", "max_connections", &c->limits.max_connections,
            20000, 1, 10000000);
    get_int(p, lim, "limits", "drain_timeout_ms", &c->limits.drain_timeout_ms,
            10000, 0, 3600000);
    get_int(p, lim, "limits", "max_pipelined", &c->limits.max_pipelined, 16, 1, 1024);
    get_int(p, lim, "limits", "h2_max_concurrent_streams", &c->limits.h2_max_concurrent_streams,
            128, 1, 1000);
    get_u64(p, lim, "limits", "max_client_output_bytes",
            &c->limits.max_client_output_bytes, 1048576, 4096, (uint64_t)1 << 30);
    get_int(p, lim, "limits", "send_timeout_ms", &c->limits.send_timeout_ms,
            30000, 1, 3600000);
    get_int(p, lim, "limits", "upstream_idle_timeout_ms",
            &c->limits.upstream_idle_timeout_ms, 4000, 1, 3600000);
    get_int(p, lim, "limits", "max_shadow_inflight", &c->limits.max_shadow_inflight,
            256, 0, 100000);
    get_int(p, lim, "limits", "shadow_timeout_ms", &c->limits.shadow_timeout_ms,
            5000, 1, 3600000);
    get_u64(p, lim, "limits", "compare_budget_bytes", &c->limits.compare_budget_bytes,
            16777216, 0, (uint64_t)1 << 34);

    json_t *log = get_obj(p, root, "", "log");
    if (log != NULL)
        check_fields(p, log, "log", log_fields);
    get_str(p, log, "log", "access_log", &c->log.access_log, "stderr");
    get_str(p, log, "log", "level", &c->log.level, "info");
    if (c->log.access_log != NULL && c->log.access_log[0] == '\0')
        cfg_err(p, "log.access_log", "must be \"stderr\", \"off\" or a path");
    else if (c->log.access_log != NULL && strcmp(c->log.access_log, "stderr") &&
             strcmp(c->log.access_log, "off")) {
        char *abs = resolve_path(p, c->log.access_log);
        free(c->log.access_log);
        c->log.access_log = abs;
    }
    if (c->log.level != NULL && strcmp(c->log.level, "debug") &&
        strcmp(c->log.level, "info") && strcmp(c->log.level, "warn") &&
        strcmp(c->log.level, "error"))
        cfg_err(p, "log.level", "must be debug, info, warn or error");

    char terr[256];
    if (tracing_config_parse(get_obj(p, root, "", "tracing"), &c->tracing, terr,
                             sizeof(terr)) < 0)
        cfg_err(p, "", "%s", terr); /* "tracing.FIELD: reason" */

    json_t *fleet = get_obj(p, root, "", "fleet");
    c->fleet_lease_ms = 10000;
    if (fleet != NULL) {
        check_fields(p, fleet, "fleet", fleet_fields);
        /* At least 3 s: the driver renews at a third and stops driving 1 s
         * before its lease may have lapsed. */
        get_int(p, fleet, "fleet", "leader_lease_ms", &c->fleet_lease_ms, 10000, 3000, 600000);
        get_str(p, fleet, "fleet", "name", &c->fleet_name, NULL);
        json_t *fn = json_object_get(fleet, "name");
        if (fn == NULL || json_is_null(fn))
            cfg_err(p, "fleet.name", "required: 1 to 64 of A-Z a-z 0-9 . _ -");
        else if (c->fleet_name != NULL && !config_fleet_name_valid(c->fleet_name))
            cfg_err(p, "fleet.name", "\"%s\" is not 1 to 64 of A-Z a-z 0-9 . _ -",
                    c->fleet_name);
    }

    json_t *eps = json_object_get(root, "endpoints");
    if (!json_is_array(eps)) {
        cfg_err(p, "endpoints", "required: an array of endpoints");
        return c;
    }
    c->n_endpoints = (int)json_array_size(eps);
    c->endpoints = calloc((size_t)c->n_endpoints + 1, sizeof(*c->endpoints));
    if (c->endpoints == NULL)
        abort();
    for (int i = 0; i < c->n_endpoints; i++) {
        indexpath(sp, "endpoints", (size_t)i);
        parse_endpoint(p, json_array_get(eps, (size_t)i), sp, &c->endpoints[i]);
        for (int j = 0; j < i; j++)
            if (c->endpoints[i].name[0] &&
                strcmp(c->endpoints[i].name, c->endpoints[j].name) == 0) {
                char fp[PATH_MAX_LEN];
                subpath(fp, sp, "name");
                cfg_err(p, fp, "duplicate endpoint name \"%s\"", c->endpoints[i].name);
            }
    }
    return c;
}

/* ---- lifetime ---------------------------------------------------------- */

static void
config_free(struct config *c)
{
    for (int i = 0; i < c->n_endpoints; i++) {
        struct cfg_endpoint *ep = &c->endpoints[i];
        free(ep->key_primary);
        free(ep->key_secondary);
        free(ep->sticky_name);
        for (int j = 0; j < CFG_MAX_VERSIONS; j++) {
            struct cfg_version *v = &ep->versions[j];
            for (int k = 0; k < v->n_upstreams; k++) {
                free(v->upstreams[k].address);
                free(v->upstreams[k].host);
            }
            free(v->upstreams);
            free(v->path);
            free(v->description);
            free(v->health.path);
            for (int k = 0; k < v->compare.n_ignore; k++)
                free(v->compare.ignore[k]);
            free(v->compare.ignore);
            free(v->rollout.reason);
            config_notify_free(&v->rollout.notify);
        }
    }
    free(c->endpoints);
    for (int i = 0; i < c->n_listeners; i++) {
        struct cfg_listener *l = &c->listeners[i];
        free(l->address);
        free(l->host);
        free(l->certificate);
        free(l->private_key);
    }
    free(c->listeners);
    free(c->admin_address);
    free(c->admin_host);
    free(c->admin_token);
    free(c->redis.address);
    free(c->redis.host);
    free(c->redis.password);
    for (int i = 0; i < c->redis.n_sentinels; i++)
        free(c->redis.sentinel_hosts[i]);
    free(c->redis.sentinel_hosts);
    free(c->redis.sentinel_ports);
    free(c->redis.master_name);
    free(c->tokens.issuer);
    free(c->tokens.signing_key);
    free(c->tokens.algorithm);
    for (int i = 0; i < c->tokens.n_trusted; i++) {
        struct cfg_trusted_issuer *t = &c->tokens.trusted[i];
        free(t->issuer);
        free(t->audience);
        free(t->algorithm);
        free(t->public_key);
    }
    free(c->tokens.trusted);
    free(c->log.access_log);
    free(c->log.level);
    free(c->fleet_name);
    free(c->path);
    free(c->basedir);
    if (c->doc)
        json_decref(c->doc);
    free(c);
}

struct config *
config_parse(json_t *doc, const char *basedir, struct cfg_errors *errs)
{
    struct pctx p = {.errs = errs, .basedir = basedir};
    int before = errs->n;
    struct config *c = parse_root(&p, doc);

    if (errs->n != before) {
        config_free(c);
        return NULL;
    }
    c->basedir = xstrdup(basedir);
    c->doc = json_deep_copy(doc);
    if (c->doc == NULL)
        abort();
    return c;
}

static char *
dirname_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    char *d = malloc((size_t)(slash - path) + 1);
    if (d == NULL)
        abort();
    memcpy(d, path, (size_t)(slash - path));
    d[slash - path] = '\0';
    return d;
}

struct config *
config_load(const char *path, struct cfg_errors *errs)
{
    struct pctx p = {.errs = errs, .basedir = NULL};
    json_error_t jerr;
    FILE *f = fopen(path, "rb");

    if (f == NULL) {
        cfg_err(&p, "", "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    json_t *doc = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (doc == NULL) {
        cfg_err(&p, "", "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    char *dir = dirname_of(path);
    struct config *c = config_parse(doc, dir, errs);
    free(dir);
    json_decref(doc);
    if (c != NULL)
        c->path = xstrdup(path);
    return c;
}

struct config *
config_take(struct config *c)
{
    if (c != NULL)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void
config_drop(struct config *c)
{
    if (c != NULL && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
}

const struct cfg_endpoint *
config_endpoint(const struct config *c, const char *name, size_t len)
{
    for (int i = 0; i < c->n_endpoints; i++) {
        const struct cfg_endpoint *ep = &c->endpoints[i];
        if (strlen(ep->name) == len && memcmp(ep->name, name, len) == 0)
            return ep;
    }
    return NULL;
}

int
config_version_index(const struct cfg_endpoint *ep, const char *name,
                     size_t len)
{
    for (int i = 0; i < ep->n_versions; i++)
        if (strlen(ep->versions[i].name) == len &&
            memcmp(ep->versions[i].name, name, len) == 0)
            return i;
    return -1;
}
