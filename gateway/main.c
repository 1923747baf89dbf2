/*
 * sluice: command line, start-up, signals, reload and drain (SPEC §1).
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <getopt.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static struct event_base *main_base;
static struct config *current;
static uint64_t generation;
static const char *config_path;

static void
usage(FILE *f)
{
    fprintf(f, "usage: sluice -c FILE [--check]\n"
               "       sluice --version\n"
               "  -c, --config FILE   the JSON config file\n"
               "      --check         validate the config, print every error, exit 0 or 1\n"
               "  -V, --version       print the version\n");
}

static void
print_errors(const struct cfg_errors *e)
{
    for (int i = 0; i < e->n; i++)
        fprintf(stderr, "%s\n", e->msg[i]);
}

/* Make cfg the current generation everywhere. Takes over the reference. */
static void
publish(struct config *cfg)
{
    cfg->generation = ++generation;
    workers_publish(cfg);
    admin_set_config(cfg);
    config_drop(current);
    current = cfg;
}

static void
on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    struct config *cfg = config_load(config_path, &errs);
    if (cfg == NULL) {
        char *all = cfg_errors_join(&errs, "; ");
        struct evbuffer *b = evbuffer_new();
        json_escape_add(b, all, strlen(all));
        evbuffer_add(b, "", 1);
        log_event(LOG_ERROR, "reload_failed", ",\"errors\":\"%s\"",
                  (const char *)evbuffer_pullup(b, -1));
        evbuffer_free(b);
        free(all);
        cfg_errors_free(&errs);
        return;
    }
    cfg_errors_free(&errs);
    publish(cfg);
    log_event(LOG_INFO, "reload", ",\"generation\":%llu,\"endpoints\":%d",
              (unsigned long long)generation, cfg->n_endpoints);
}

static void
on_reopen(evutil_socket_t sig, short what, void *arg)
{
    log_access_reopen();
}

static void
on_drain(evutil_socket_t sig, short what, void *arg)
{
    log_event(LOG_INFO, "drain", ",\"signal\":%d,\"drain_timeout_ms\":%d",
              (int)sig, current->limits.drain_timeout_ms);
    event_base_loopexit(main_base, NULL);
}

static void
raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool check = false;
    int c;
    char err[1024];

    while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'k': check = true; break;
        case 'V': printf("sluice %s\n", SLUICE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (config_path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    struct cfg_errors errs;
    cfg_errors_init(&errs);
    struct config *cfg = config_load(config_path, &errs);
    if (cfg == NULL) {
        print_errors(&errs);
        fprintf(stderr, "%s: %d error%s\n", config_path, errs.n, errs.n == 1 ? "" : "s");
        cfg_errors_free(&errs);
        return 1;
    }
    cfg_errors_free(&errs);

    int rc = 1;
    int n = 0;
    int *fds = NULL;
    int n_listeners = cfg->n_listeners;
    /* Certificates and addresses are part of what --check validates. */
    SSL_CTX **ctxs = calloc((size_t)cfg->n_listeners + 1, sizeof(*ctxs));
    for (int i = 0; i < cfg->n_listeners; i++) {
        if (!cfg->listeners[i].tls)
            continue;
        ctxs[i] = tls_server_ctx(&cfg->listeners[i], err, sizeof(err));
        if (ctxs[i] == NULL) {
            fprintf(stderr, "listeners[%d].tls: %s\n", i, err);
            goto out;
        }
    }
    if (check) {
        printf("%s: valid (%d listener%s, %d endpoint%s)\n", config_path,
               cfg->n_listeners, cfg->n_listeners == 1 ? "" : "s",
               cfg->n_endpoints, cfg->n_endpoints == 1 ? "" : "s");
        rc = 0;
        goto out;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();
    log_init();
    log_set_level(cfg->log.level);
    if (log_access_open(cfg->log.access_log, err, sizeof(err)) < 0) {
        fprintf(stderr, "log.access_log: %s\n", err);
        goto out;
    }

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    n = cfg->workers > 0 ? cfg->workers : (ncpu > 0 ? (int)ncpu : 1);
    fds = calloc((size_t)(n * cfg->n_listeners), sizeof(*fds));
    for (int i = 0; i < n * cfg->n_listeners; i++)
        fds[i] = -1;
    for (int l = 0; l < cfg->n_listeners; l++) {
        const struct cfg_listener *L = &cfg->listeners[l];
        /* Probe without SO_REUSEPORT: fails if anything holds the address. */
        int probe = listen_socket(L->host, L->port, false, err, sizeof(err));
        if (probe < 0) {
            fprintf(stderr, "listeners[%d].address %s\n", l, err);
            goto out;
        }
        close(probe);
        for (int w = 0; w < n; w++) {
            fds[w * cfg->n_listeners + l] = listen_socket(L->host, L->port, true,
                                                          err, sizeof(err));
            if (fds[w * cfg->n_listeners + l] < 0) {
                fprintf(stderr, "listeners[%d].address %s\n", l, err);
                goto out;
            }
        }
    }

    main_base = event_base_new();
    cfg->generation = ++generation;
    if (admin_start(main_base, cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "admin.address %s\n", err);
        goto out;
    }
    if (workers_start(cfg, n, fds, ctxs, cfg->n_listeners) < 0) {
        fprintf(stderr, "cannot start %d workers\n", n);
        goto out;
    }
    free(fds);
    fds = NULL;
    current = cfg;
    cfg = NULL;

    struct event *sig_term = evsignal_new(main_base, SIGTERM, on_drain, NULL);
    struct event *sig_int = evsignal_new(main_base, SIGINT, on_drain, NULL);
    struct event *sig_hup = evsignal_new(main_base, SIGHUP, on_reload, NULL);
    struct event *sig_usr1 = evsignal_new(main_base, SIGUSR1, on_reopen, NULL);
    event_add(sig_term, NULL);
    event_add(sig_int, NULL);
    event_add(sig_hup, NULL);
    event_add(sig_usr1, NULL);

    struct evbuffer *lb = evbuffer_new();
    for (int i = 0; i < current->n_listeners; i++)
        evbuffer_add_printf(lb, "%s\"%s%s\"", i ? "," : "", current->listeners[i].tls ?
                            "https://" : "http://", current->listeners[i].address);
    evbuffer_add(lb, "", 1);
    log_event(LOG_INFO, "start", ",\"version\":\"%s\",\"pid\":%d,\"workers\":%d,"
              "\"listeners\":[%s],\"admin\":\"%s\",\"endpoints\":%d,\"generation\":%llu",
              SLUICE_VERSION, (int)getpid(), n, (const char *)evbuffer_pullup(lb, -1),
              current->admin_address, current->n_endpoints, (unsigned long long)generation);
    evbuffer_free(lb);

    event_base_dispatch(main_base);

    /* Drain: stop accepting, let requests in flight finish. */
    admin_set_draining();
    workers_drain();
    workers_join(current->limits.drain_timeout_ms);
    log_event(LOG_INFO, "stop", ",\"generation\":%llu", (unsigned long long)generation);

    event_free(sig_term);
    event_free(sig_int);
    event_free(sig_hup);
    event_free(sig_usr1);
    workers_free();
    rc = 0;
out:
    admin_stop();
    if (fds != NULL) {
        for (int i = 0; i < n * n_listeners; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        free(fds);
    }
    for (int i = 0; i < n_listeners; i++)
        tls_ctx_free(ctxs[i]);
    free(ctxs);
    config_drop(cfg);
    config_drop(current);
    if (main_base != NULL)
        event_base_free(main_base);
    return rc;
}
