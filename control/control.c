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
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/ssl.h>

struct lsock {
    char *address;
    int *fds;                       /* one per worker */
    SSL_CTX *ctx;                   /* main thread's reference, NULL for plain */
};

static struct lsock *lsocks;
static control_applied_fn watch_applied;      /* control_watch() */
static control_reloaded_fn watch_reloaded;
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
    if (watch_applied != NULL)
        watch_applied(cfg);
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
    if (watch_applied != NULL)
        watch_applied(cfg);
    log_event(LOG_INFO, "config_applied", ",\"generation\":%llu,\"endpoints\":%d,"
              "\"listeners\":%d", (unsigned long long)generation, cfg->n_endpoints,
              cfg->n_listeners);
    return 0;
}

/* ---- the state directory ---------------------------------------------------
 *
 * Without one, admin changes and generated keys are written back to the
 * config file (SPEC §5) and the fleet cache sits beside it. With
 * --state-dir DIR (systemd: StateDirectory=sluice, /var/lib/sluice), the
 * config file is only ever read: the edited document is written to
 * DIR/<the config file's name> and the fleet cache to DIR/<name>.fleet-cache.
 * At start and on reload the edited document is read instead of the file
 * while it is at least as new as the file; an operator who edits the file
 * afterwards makes the file win (logged), and the next admin change starts
 * the edited document again from it. Relative paths in either resolve
 * against the config file's folder. */
static char state_dir_buf[4096];
static const char *state_dir;      /* NULL, or state_dir_buf */

int
control_set_state_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0) {
        if (errno != ENOENT || mkdir(dir, 0700) < 0) {
            snprintf(err, errlen, "--state-dir %s: %s", dir, strerror(errno));
            return -1;
        }
    } else if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "--state-dir %s: not a directory", dir);
        return -1;
    }
    if (access(dir, W_OK | X_OK) < 0) {
        snprintf(err, errlen, "--state-dir %s: not writable: %s", dir, strerror(errno));
        return -1;
    }
    if (strlen(dir) >= sizeof(state_dir_buf) - 256) {
        snprintf(err, errlen, "--state-dir: the path is too long");
        return -1;
    }
    snprintf(state_dir_buf, sizeof(state_dir_buf), "%s", dir);
    state_dir = state_dir_buf;
    return 0;
}

char *
control_state_path(const char *config_path, const char *suffix)
{
    const char *base = strrchr(config_path, '/');
    base = base ? base + 1 : config_path;
    size_t n = (state_dir ? strlen(state_dir) + 1 + strlen(base) : strlen(config_path)) +
               strlen(suffix) + 1;
    char *out = malloc(n);
    if (out == NULL)
        abort();
    if (state_dir)
        snprintf(out, n, "%s/%s%s", state_dir, base, suffix);
    else
        snprintf(out, n, "%s%s", config_path, suffix);
    return out;
}

static bool
newer_or_same(const struct stat *a, const struct stat *b)
{
    return a->st_mtim.tv_sec > b->st_mtim.tv_sec ||
           (a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec >= b->st_mtim.tv_nsec);
}

/* The config file, or with a state directory the edited document kept
 * there when it is at least as new as the file. */
struct config *
control_read(const char *path, struct cfg_errors *errs)
{
    if (state_dir == NULL)
        return config_load(path, errs);
    char *sp = control_state_path(path, "");
    struct stat st_state, st_file;
    bool have_state = stat(sp, &st_state) == 0;
    if (!have_state || (stat(path, &st_file) == 0 && !newer_or_same(&st_state, &st_file))) {
        if (have_state)
            log_event(LOG_WARN, "state_config_older", ",\"file\":\"%s\",\"state\":\"%s\","
                      "\"message\":\"the config file was changed after the last admin "
                      "change: the file is used, the next admin change replaces the "
                      "edited document\"", log_json(path), log_json(sp));
        free(sp);
        return config_load(path, errs);
    }
    /* Parsed as if it were the file: its relative paths are the file's. */
    json_error_t jerr;
    json_t *doc = json_load_file(sp, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        cfg_errors_add(errs, "%s:%d:%d: %s", sp, jerr.line, jerr.column, jerr.text);
        cfg_errors_add(errs, "%s: the edited document in the state directory is unusable; "
                       "remove it to start from %s", sp, path);
        free(sp);
        return NULL;
    }
    /* the config file's folder, as config_load() takes it */
    const char *slash = strrchr(path, '/');
    char *dir = slash == NULL ? strdup(".") : slash == path ? strdup("/")
              : strndup(path, (size_t)(slash - path));
    struct config *cfg = dir ? config_parse(doc, dir, errs) : NULL;
    free(dir);
    json_decref(doc);
    if (cfg == NULL)
        cfg_errors_add(errs, "%s: the edited document in the state directory is invalid; "
                       "remove it to start from %s", sp, path);
    if (cfg != NULL && (cfg->path = strdup(path)) == NULL)
        abort();
    free(sp);
    return cfg;
}

/* Where admin changes and generated keys are written. */
static int
save_current(const char *path, json_t *doc, char *err, size_t errlen)
{
    char *sp = control_state_path(path, "");
    int rc = config_save(sp, doc, err, errlen);
    free(sp);
    return rc;
}

/* With a state directory, keys generated earlier live in the edited
 * document only: when the file wins over it, the keys the file does not
 * set are taken from there, so that they never change behind the
 * clients' backs. True when doc changed. */
static bool
keep_state_keys(json_t *doc, const char *path)
{
    if (state_dir == NULL)
        return false;
    char *sp = control_state_path(path, "");
    json_t *old = json_load_file(sp, 0, NULL);
    free(sp);
    if (old == NULL)
        return false;
    bool changed = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "endpoints"), i, e) {
        json_t *name = json_object_get(e, "name");
        json_t *oe = json_is_string(name) ?
            config_doc_endpoint(old, json_string_value(name), NULL) : NULL;
        json_t *ok = json_object_get(oe, "keys");
        if (!json_is_object(ok))
            continue;
        json_t *k = json_object_get(e, "keys");
        if (k == NULL || json_is_null(k)) {
            k = json_object();
            if (k == NULL || json_object_set_new(e, "keys", k) < 0)
                continue;
        }
        if (!json_is_object(k))
            continue;
        static const char *const which[] = {"primary", "secondary"};
        for (int w = 0; w < 2; w++) {
            json_t *have = json_object_get(k, which[w]), *was = json_object_get(ok, which[w]);
            if ((have == NULL || json_is_null(have)) && json_is_string(was)) {
                json_object_set(k, which[w], was);
                changed = true;
            }
        }
    }
    json_decref(old);
    return changed;
}

struct config *
control_load(const char *path, struct cfg_errors *errs)
{
    char err[1024];
    struct config *cfg = control_read(path, errs);
    if (cfg == NULL)
        return NULL;
    /* In a fleet the keys are the fleet's (SPEC §6): generated once by
     * whoever seeds the fleet's config (fleet.c), never into a member's
     * file, where they would differ from the fleet's and never be used. */
    if (cfg->fleet_name != NULL)
        return cfg;
    json_t *doc = json_deep_copy(cfg->doc);
    bool kept = keep_state_keys(doc, path);
    if (!config_fill_keys(doc) && !kept) {
        json_decref(doc);
        return cfg;
    }
    /* Generated secrets are written back before anything uses them. */
    if (save_current(path, doc, err, sizeof(err)) < 0) {
        json_decref(doc);
        config_drop(cfg);
        cfg_errors_add(errs, "cannot persist generated keys: %s", err);
        return NULL;
    }
    char *saved = control_state_path(path, "");
    log_event(LOG_INFO, "keys_generated", ",\"file\":\"%s\"", log_json(saved));
    free(saved);
    json_decref(doc);
    config_drop(cfg);
    return control_read(path, errs);
}

static control_reload_fn reload_hook;

void
control_watch(control_applied_fn applied, control_reloaded_fn reloaded)
{
    watch_applied = applied;
    watch_reloaded = reloaded;
}

void
control_set_reload(control_reload_fn fn)
{
    reload_hook = fn;
}

int
control_reload(char *err, size_t errlen, struct cfg_errors *errs)
{
    struct config *cfg = control_load(current->path, errs);
    if (cfg != NULL && reload_hook != NULL)
        cfg = reload_hook(cfg, errs);       /* in a fleet: fleet_reload() */
    if (cfg == NULL) {
        if (errs->n > 0) {
            char *all = cfg_errors_join(errs, "; ");
            snprintf(err, errlen, "%s", all);
            config_utf8_fix(err);   /* a long list is cut: not inside a character */
            free(all);
        } else
            snprintf(err, errlen, "cannot persist generated keys");
        if (watch_reloaded != NULL)
            watch_reloaded(false);
        return -1;
    }
    if (control_apply(cfg, err, errlen) < 0) {
        config_drop(cfg);
        if (watch_reloaded != NULL)
            watch_reloaded(false);
        return -1;
    }
    if (watch_reloaded != NULL)
        watch_reloaded(true);
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
    if (save_current(current->path, doc, err, errlen) < 0) {
        config_drop(cfg);
        return 500;
    }
    if (control_apply(cfg, err, errlen) < 0) {
        /* Put the file back as it was: nothing changed after all. */
        char e2[256];
        save_current(current->path, current->doc, e2, sizeof(e2));
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
