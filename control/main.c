/*
 * sluice: command line, start-up, signals and drain (SPEC §1).
 */
#include "control/control.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

static struct event_base *main_base;

static void
usage(FILE *f)
{
    fprintf(f, "usage: sluice -c FILE [--state-dir DIR] [--check]\n"
               "       sluice --version\n"
               "  -c, --config FILE   the JSON config file\n"
               "      --state-dir DIR admin changes, generated keys and the fleet cache go\n"
               "                      here; the config file is then only read\n"
               "      --check         validate the config, print every error, exit 0 or 1\n"
               "  -V, --version       print the version\n");
}

static void
on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct cfg_errors errs;
    char err[4096];
    cfg_errors_init(&errs);
    if (notify_reload(err, sizeof(err), &errs) < 0) {
        log_event(LOG_ERROR, "reload_failed", ",\"signal\":\"SIGHUP\",\"errors\":\"%s\"",
                  log_json(err));
    }
    cfg_errors_free(&errs);
}

static void
on_reopen(evutil_socket_t sig, short what, void *arg)
{
    log_access_reopen();
}

static bool draining;
static struct timeval drain_deadline;

static void
on_drain(evutil_socket_t sig, short what, void *arg)
{
    if (draining) {                 /* a second signal: stop now */
        log_event(LOG_INFO, "drain_cut_short", ",\"signal\":%d", (int)sig);
        event_base_loopexit(main_base, NULL);
        return;
    }
    log_event(LOG_INFO, "drain", ",\"signal\":%d,\"drain_timeout_ms\":%d",
              (int)sig, control_current()->limits.drain_timeout_ms);
    event_base_loopexit(main_base, NULL);
}

/* While the workers drain, the main loop goes on: /healthz, /metrics and
 * /readyz (503, draining) keep answering, metrics keep flushing. */
static void
on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    if (workers_all_ended() || timercmp(&now, &drain_deadline, >=))
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

/* Load with fn; on failure print every error (one a line) and a count. */
static struct config *
load_or_report(const char *path, struct config *(*fn)(const char *, struct cfg_errors *))
{
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    struct config *cfg = fn(path, &errs);
    if (cfg == NULL) {
        for (int i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msg[i]);
        fprintf(stderr, "%s: %d error%s\n", path, errs.n, errs.n == 1 ? "" : "s");
    }
    cfg_errors_free(&errs);
    return cfg;
}

/* A fleet member starts from the fleet's shared config (SPEC §6). */
static struct config *
fleet_boot_or_report(const char *path, struct config *cfg)
{
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    cfg = fleet_boot(cfg, &errs);
    if (cfg == NULL) {
        for (int i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msg[i]);
        fprintf(stderr, "%s: %d error%s\n", path, errs.n, errs.n == 1 ? "" : "s");
    }
    cfg_errors_free(&errs);
    return cfg;
}

/* --check: everything a start would check, without binding or writing. */
static int
check_only(const char *path)
{
    char err[1024];
    int rc = 0;
    struct config *cfg = load_or_report(path, control_read);
    if (cfg == NULL)
        return 1;
    for (int i = 0; i < cfg->n_listeners; i++) {
        if (!cfg->listeners[i].tls)
            continue;
        struct ssl_ctx_st *ctx = tls_server_ctx(&cfg->listeners[i], err, sizeof(err));
        if (ctx == NULL) {
            fprintf(stderr, "listeners[%d].tls: %s\n", i, err);
            rc = 1;
        }
        tls_ctx_free(ctx);
    }
    struct auth_ctx *a = auth_ctx_new(cfg, err, sizeof(err));
    if (a == NULL) {
        fprintf(stderr, "%s\n", err);
        rc = 1;
    }
    auth_ctx_free(a);
    if (rc == 0)
        printf("%s: valid (%d listener%s, %d endpoint%s)\n", path,
               cfg->n_listeners, cfg->n_listeners == 1 ? "" : "s",
               cfg->n_endpoints, cfg->n_endpoints == 1 ? "" : "s");
    config_drop(cfg);
    return rc;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"state-dir", required_argument, NULL, 's'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *state = NULL;
    bool check = false;
    int c;
    char err[4096];

    gw_mem_init();                  /* before any libevent call */

    while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 'k': check = true; break;
        case 's': state = optarg; break;
        case 'V': printf("sluice %s\n", SLUICE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (state != NULL && control_set_state_dir(state, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check)
        return check_only(path);

    struct config *cfg = load_or_report(path, control_load);
    if (cfg == NULL)
        return 1;
    if (cfg->fleet_name != NULL) {
        log_init();
        if ((cfg = fleet_boot_or_report(path, cfg)) == NULL)
            return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);      /* a full file is an error to report, not a death */
    raise_fd_limit();
    log_init();
    log_set_level(cfg->log.level);
    if (log_access_open(cfg->log.access_log, err, sizeof(err)) < 0) {
        fprintf(stderr, "log.access_log: %s\n", err);
        config_drop(cfg);
        return 1;
    }
    struct auth_ctx *probe = auth_ctx_new(cfg, err, sizeof(err));
    if (probe == NULL) {
        fprintf(stderr, "%s\n", err);
        config_drop(cfg);
        return 1;
    }
    auth_ctx_free(probe);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = cfg->workers > 0 ? cfg->workers : (ncpu > 0 ? (int)ncpu : 1);
    main_base = event_base_new();
    health_init(main_base);
    control_metrics_start(main_base);
    if (admin_start(main_base, cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "admin.address %s\n", err);
        admin_stop();
        config_drop(cfg);
        event_base_free(main_base);
        return 1;
    }
    control_watch(prometheus_generation, prometheus_reloaded);   /* /metrics (prometheus.c) */
    if (trace_export_start(main_base, cfg, n, err, sizeof(err)) < 0 ||
        control_start(cfg, n, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        trace_export_stop(0);
        admin_stop();
        config_drop(cfg);
        event_base_free(main_base);
        return 1;
    }
    fleet_start(main_base);
    control_set_reload(fleet_reload);
    rollout_start(main_base);
    webhook_init(main_base);
    if (cfg->admin_token == NULL)
        log_event(LOG_WARN, "admin_token_missing", ",\"message\":\"admin.token is not "
                  "set: everything under /admin/ answers 401\"");

    struct event *sig_term = evsignal_new(main_base, SIGTERM, on_drain, NULL);
    struct event *sig_int = evsignal_new(main_base, SIGINT, on_drain, NULL);
    struct event *sig_hup = evsignal_new(main_base, SIGHUP, on_reload, NULL);
    struct event *sig_usr1 = evsignal_new(main_base, SIGUSR1, on_reopen, NULL);
    event_add(sig_term, NULL);
    event_add(sig_int, NULL);
    event_add(sig_hup, NULL);
    event_add(sig_usr1, NULL);

    struct evbuffer *lb = evbuffer_new();
    for (int i = 0; i < cfg->n_listeners; i++)
        evbuffer_add_printf(lb, "%s\"%s%s\"", i ? "," : "", cfg->listeners[i].tls ?
                            "https://" : "http://", log_json(cfg->listeners[i].address));
    evbuffer_add(lb, "", 1);
    log_event(LOG_INFO, "start", ",\"version\":\"%s\",\"pid\":%d,\"workers\":%d,"
              "\"listeners\":[%s],\"admin\":\"%s\",\"endpoints\":%d,\"generation\":%llu",
              SLUICE_VERSION, (int)getpid(), n, (const char *)evbuffer_pullup(lb, -1),
              log_json(cfg->admin_address), cfg->n_endpoints,
              (unsigned long long)cfg->generation);
    evbuffer_free(lb);
    notify_ready((unsigned long long)cfg->generation);

    event_base_dispatch(main_base);

    /* Drain: stop accepting, let requests in flight finish, the admin
     * listener answering all along (readyz: 503). */
    admin_set_draining();
    notify_stopping();
    workers_drain();
    draining = true;
    int drain_ms = control_current()->limits.drain_timeout_ms;
    struct timeval now, span = {drain_ms / 1000, (drain_ms % 1000) * 1000};
    gettimeofday(&now, NULL);
    timeradd(&now, &span, &drain_deadline);
    struct timeval tick = {0, 20000};
    struct event *drain_ev = event_new(main_base, -1, EV_PERSIST, on_drain_tick, NULL);
    event_add(drain_ev, &tick);
    event_base_dispatch(main_base);
    event_free(drain_ev);
    workers_join(0);
    rollout_release();
    /* Every count of every request, in Redis before exit when it can be. */
    metrics_redis_final_flush(control_metrics(), 3000);
    log_event(LOG_INFO, "stop", ",\"generation\":%llu",
              (unsigned long long)control_current()->generation);

    event_free(sig_term);
    event_free(sig_int);
    event_free(sig_hup);
    event_free(sig_usr1);
    fleet_stop();                   /* changes still owed are answered before admin goes */
    rollout_stop();
    webhook_stop();
    admin_stop();
    control_stop();
    prometheus_stop();
    workers_free();                 /* requests cut short end here: their spans are queued */
    trace_export_stop(2000);        /* and sent, for at most 2 s */
    route_shared_free_all();
    event_base_free(main_base);
    return 0;
}
