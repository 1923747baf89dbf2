/*
 * The control plane, on the main thread: config generations, listeners
 * and TLS contexts, reload from the file, and admin commits.
 *
 * A new generation is built completely off to the side (parsed, validated,
 * sockets bound, certificates loaded) before anything changes; if any step
 * fails, the old generation keeps serving and the new parts are thrown
 * away. Then it is handed to every worker; the admin listener reads the
 * current generation from here (control_current()) on each request.
 */
#include "control/control.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/ssl.h>

struct lsock {
    char *address;
    int *fds;                       /* one per worker */
    SSL_CTX *ctx;                   /* main thread's reference, NULL for plain */
};

static struct lsock *lsocks;
static struct metrics_backlog *backlog;
static struct metrics_redis *writer;
static int n_lsocks;
static struct config *current;
static uint64_t generation;
static int n_workers;

struct config *
control_current(void)
{
    return current;
}

static void
lsocks_free(struct lsock *ls, int n, bool close_fds)
{
    for (int i = 0; i < n; i++) {
        if (close_fds && ls[i].fds != NULL)
            for (int w = 0; w < n_workers; w++)
                if (ls[i].fds[w] >= 0)
                    close(ls[i].fds[w]);
        free(ls[i].fds);
        free(ls[i].address);
        if (ls[i].ctx)
            SSL_CTX_free(ls[i].ctx);
    }
    free(ls);
}

/*
 * The listener set for cfg: addresses already open keep their sockets
 * (no connection is dropped), new ones are bound, TLS contexts are loaded
 * anew (so a renewed certificate applies). NULL with a reason on failure;
 * then every socket it opened is closed again.
 */
/* Shared per-upstream state exists before any worker sees the address. */
static void
register_upstreams(const struct config *cfg)
{
    for (int i = 0; i < cfg->n_endpoints; i++)
        for (int v = 0; v < cfg->endpoints[i].n_versions; v++)
            for (int k = 0; k < cfg->endpoints[i].versions[v].n_upstreams; k++)
                route_shared_add(cfg->endpoints[i].versions[v].upstreams[k].address);
}

static struct lsock *
lsocks_build(const struct config *cfg, bool probe, char *err, size_t errlen)
{
    register_upstreams(cfg);
    struct lsock *ls = calloc((size_t)cfg->n_listeners + 1, sizeof(*ls));
    if (ls == NULL)
        return NULL;
    for (int i = 0; i < cfg->n_listeners; i++) {
        const struct cfg_listener *L = &cfg->listeners[i];
        ls[i].address = strdup(L->address);
        ls[i].fds = calloc((size_t)n_workers, sizeof(int));
        for (int w = 0; w < n_workers; w++)
            ls[i].fds[w] = -1;
        if (L->tls) {
            char why[512];
            ls[i].ctx = tls_server_ctx(L, why, sizeof(why));
            if (ls[i].ctx == NULL) {
                snprintf(err, errlen, "listeners[%d].tls: %s", i, why);
                goto fail;
            }
        }
        int old = -1;
        for (int j = 0; j < n_lsocks; j++)
            if (strcmp(lsocks[j].address, L->address) == 0)
                old = j;
        if (old >= 0) {
            memcpy(ls[i].fds, lsocks[old].fds, (size_t)n_workers * sizeof(int));
            continue;
        }
        char why[512];
        if (probe) {
            /* Without SO_REUSEPORT: fails if anything else holds it. */
            int p = listen_socket(L->host, L->port, false, why, sizeof(why));
            if (p < 0) {
                snprintf(err, errlen, "listeners[%d].address %s", i, why);
                goto fail;
            }
            close(p);
        }
        for (int w = 0; w < n_workers; w++) {
            ls[i].fds[w] = listen_socket(L->host, L->port, true, why, sizeof(why));
            if (ls[i].fds[w] < 0) {
                snprintf(err, errlen, "listeners[%d].address %s", i, why);
                goto fail;
            }
        }
    }
    return ls;
fail:
    /* Close only the sockets opened here, not the ones carried over. */
    for (int i = 0; i < cfg->n_listeners; i++) {
        bool carried = false;
        for (int j = 0; j < n_lsocks && ls[i].address; j++)
            carried |= strcmp(lsocks[j].address, ls[i].address) == 0;
        if (carried && ls[i].fds)
            for (int w = 0; w < n_workers; w++)
                ls[i].fds[w] = -1;
    }
    lsocks_free(ls, cfg->n_listeners, true);
    return NULL;
}

static struct worker_listener *
table_for(struct lsock *ls, const struct config *cfg)
{
    int n = cfg->n_listeners;
    struct worker_listener *t = calloc((size_t)(n_workers * n) + 1, sizeof(*t));
    for (int w = 0; w < n_workers; w++)
        for (int i = 0; i < n; i++) {
            t[w * n + i].fd = ls[i].fds[w];
            t[w * n + i].ctx = ls[i].ctx;
            t[w * n + i].http2 = cfg->listeners[i].http2;
        }
    return t;
}

int
control_start(struct config *cfg, int workers, char *err, size_t errlen)
{
    n_workers = workers;
    struct lsock *ls = lsocks_build(cfg, true, err, errlen);
    if (ls == NULL)
        return -1;
    cfg->generation = ++generation;
    struct worker_listener *t = table_for(ls, cfg);
    if (workers_start(cfg, workers, t, cfg->n_listeners) < 0) {
        free(t);
        lsocks_free(ls, cfg->n_listeners, true);
        snprintf(err, errlen, "cannot start %d workers", workers);
        return -1;
    }
    free(t);
    lsocks = ls;
    n_lsocks = cfg->n_listeners;
    current = cfg;
    health_apply(cfg);
    metrics_redis_set_sources(writer, workers_metrics(), n_workers);
    metrics_redis_configure(writer, cfg);
    return 0;
}

/* Apply a validated snapshot; takes over cfg's reference on success. */
int
control_apply(struct config *cfg, char *err, size_t errlen)
{
    struct lsock *ls = lsocks_build(cfg, true, err, errlen);
    if (ls == NULL)
        return -1;
    cfg->generation = ++generation;
    struct worker_listener *t = table_for(ls, cfg);
    workers_publish(cfg, t, cfg->n_listeners);
    free(t);
    /* Sockets no longer listed are closed by the workers as they drop
     * their listeners; here only the bookkeeping goes. */
    lsocks_free(lsocks, n_lsocks, false);
    lsocks = ls;
    n_lsocks = cfg->n_listeners;
    config_drop(current);
    current = cfg;
    health_apply(cfg);
    metrics_redis_configure(writer, cfg);
    trace_export_apply(cfg);
    log_event(LOG_INFO, "config_applied", ",\"generation\":%llu,\"endpoints\":%d,"
              "\"listeners\":%d", (unsigned long long)generation, cfg->n_endpoints,
              cfg->n_listeners);
    return 0;
}

struct config *
control_load(const char *path, struct cfg_errors *errs)
{
    char err[1024];
    struct config *cfg = config_load(path, errs);
    if (cfg == NULL)
        return NULL;
    /* In a fleet the keys are the fleet's (SPEC §6): generated once by
     * whoever seeds the fleet's config (fleet.c), never into a member's
     * file, where they would differ from the fleet's and never be used. */
    if (cfg->fleet_name != NULL)
        return cfg;
    json_t *doc = json_deep_copy(cfg->doc);
    if (!config_fill_keys(doc)) {
        json_decref(doc);
        return cfg;
    }
    /* Generated secrets are written back before anything uses them. */
    if (config_save(path, doc, err, sizeof(err)) < 0) {
        json_decref(doc);
        config_drop(cfg);
        cfg_errors_add(errs, "cannot persist generated keys: %s", err);
        return NULL;
    }
    log_event(LOG_INFO, "keys_generated", ",\"file\":\"%s\"", log_json(path));
    json_decref(doc);
    config_drop(cfg);
    return config_load(path, errs);
}

/* In a fleet a re-read file gives the instance part only: the shared part
 * stays the fleet's. Joining, leaving or renaming a fleet needs a restart. */
static struct config *
reload_fleet(struct config *cfg, struct cfg_errors *errs)
{
    const char *was = fleet_enabled() ? fleet_name() : NULL;
    const char *now = cfg->fleet_name;
    if ((was == NULL) != (now == NULL) || (was && strcmp(was, now) != 0)) {
        cfg_errors_add(errs, "fleet.name: joining, leaving or changing a fleet needs a restart");
        config_drop(cfg);
        return NULL;
    }
    if (was == NULL)
        return cfg;
    json_t *doc = fleet_merge_current(cfg->doc);
    struct config *merged = doc ? config_parse(doc, cfg->basedir, errs) : NULL;
    json_decref(doc);
    if (merged != NULL && (merged->path = strdup(cfg->path)) == NULL)
        abort();
    fleet_stamp(merged);
    config_drop(cfg);
    return merged;
}

int
control_reload(char *err, size_t errlen, struct cfg_errors *errs)
{
    struct config *cfg = control_load(current->path, errs);
    if (cfg != NULL)
        cfg = reload_fleet(cfg, errs);
    if (cfg == NULL) {
        if (errs->n > 0) {
            char *all = cfg_errors_join(errs, "; ");
            snprintf(err, errlen, "%s", all);
            config_utf8_fix(err);   /* a long list is cut: not inside a character */
            free(all);
        } else
            snprintf(err, errlen, "cannot persist generated keys");
        return -1;
    }
    if (control_apply(cfg, err, errlen) < 0) {
        config_drop(cfg);
        return -1;
    }
    log_event(LOG_INFO, "reload", ",\"file\":\"%s\",\"generation\":%llu", log_json(cfg->path),
              (unsigned long long)cfg->generation);
    return 0;
}

int
control_commit(json_t *doc, struct cfg_errors *errs, char *err, size_t errlen)
{
    config_fill_keys(doc);
    struct config *cfg = config_parse(doc, current->basedir, errs);
    if (cfg == NULL)
        return 400;
    cfg->path = strdup(current->path);
    /* The file first: a change that is not on disk is not acknowledged. */
    if (config_save(current->path, doc, err, errlen) < 0) {
        config_drop(cfg);
        return 500;
    }
    if (control_apply(cfg, err, errlen) < 0) {
        /* Put the file back as it was: nothing changed after all. */
        char e2[256];
        config_save(current->path, current->doc, e2, sizeof(e2));
        config_drop(cfg);
        return 500;
    }
    return 0;
}

static void
metrics_log(const char *event, const char *fields)
{
    log_event(LOG_INFO, event, "%s", fields);
}

void
control_metrics_start(struct event_base *base)
{
    metrics_set_logger(metrics_log);
    char host[128] = "sluice", id[256];
    unsigned char rnd[4];
    gethostname(host, sizeof(host) - 1);
    RAND_bytes(rnd, sizeof(rnd));
    snprintf(id, sizeof(id), "%s:%d:%02x%02x%02x%02x", host, (int)getpid(), rnd[0], rnd[1],
             rnd[2], rnd[3]);
    /* An hour of minutes for a dozen versions before folding into totals. */
    backlog = metrics_backlog_new(60 * 64);
    writer = metrics_redis_new(base, backlog, id);
}

struct metrics_redis *
control_metrics(void)
{
    return writer;
}

struct metrics_backlog *
control_backlog(void)
{
    return backlog;
}

void
control_stop(void)
{
    fleet_stop();
    metrics_redis_free(writer);
    writer = NULL;
    metrics_backlog_free(backlog);
    backlog = NULL;
    health_stop();
    lsocks_free(lsocks, n_lsocks, false);
    lsocks = NULL;
    n_lsocks = 0;
    config_drop(current);
    current = NULL;
}
