/*
 * Active health checks (SPEC §2 health_check), on the main thread: a GET of
 * the version's health path on each upstream every interval_ms; a 2xx
 * within timeout_ms is a success. The verdict (by the thresholds, in
 * routing/health.c) is published to the workers through the upstream's
 * shared state. Checks are rebuilt on every config generation.
 */
#include "control/control.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct check {
    struct route_shared *shared;
    char *host;
    int port;
    char *path;
    int interval_ms, timeout_ms, fail_th, ok_th;
    struct route_health state;
    struct event *timer;
    struct evhttp_connection *conn;
    bool in_flight;
};

static struct event_base *base;
static struct check *checks;
static int n_checks;

void
health_init(struct event_base *b)
{
    base = b;
}

static void probe(evutil_socket_t fd, short what, void *arg);

static void
schedule(struct check *c)
{
    struct timeval tv = {c->interval_ms / 1000, (c->interval_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void
on_reply(struct evhttp_request *req, void *arg)
{
    struct check *c = arg;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    bool ok = code >= 200 && code < 300;
    c->in_flight = false;
    if (route_health_observe(&c->state, ok, c->fail_th, c->ok_th)) {
        __atomic_store_n(&c->shared->down, c->state.healthy ? 0 : 1, __ATOMIC_RELEASE);
        log_event(c->state.healthy ? LOG_INFO : LOG_WARN, "upstream_health",
                  ",\"upstream\":\"%s\",\"healthy\":%s,\"status\":%d",
                  log_json(c->shared->address),
                  c->state.healthy ? "true" : "false", code);
    }
}

static void
probe(evutil_socket_t fd, short what, void *arg)
{
    struct check *c = arg;
    schedule(c);
    if (c->in_flight)
        return;
    if (c->conn == NULL) {
        c->conn = evhttp_connection_base_new(base, NULL, c->host, (unsigned short)c->port);
        evhttp_connection_set_retries(c->conn, 0);
    }
    struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c->conn, &tv);
    struct evhttp_request *req = evhttp_request_new(on_reply, c);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", c->host);
    evhttp_add_header(evhttp_request_get_output_headers(req), "User-Agent", "sluice-health");
    c->in_flight = true;
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_GET, c->path) < 0) {
        c->in_flight = false;
        on_reply(NULL, c);
    }
}

void
health_stop(void)
{
    for (int i = 0; i < n_checks; i++) {
        event_free(checks[i].timer);
        if (checks[i].conn)
            evhttp_connection_free(checks[i].conn);
        free(checks[i].host);
        free(checks[i].path);
    }
    free(checks);
    checks = NULL;
    n_checks = 0;
}

void
health_apply(const struct config *cfg)
{
    int total = 0;
    for (int i = 0; i < cfg->n_endpoints; i++)
        for (int v = 0; v < cfg->endpoints[i].n_versions; v++)
            if (cfg->endpoints[i].versions[v].health.enabled)
                total += cfg->endpoints[i].versions[v].n_upstreams;
    /* Keep the verdicts of upstreams still checked; clear the others. */
    struct check *old = checks;
    int n_old = n_checks;
    checks = calloc((size_t)total + 1, sizeof(*checks));
    n_checks = 0;
    for (int i = 0; i < cfg->n_endpoints; i++)
        for (int v = 0; v < cfg->endpoints[i].n_versions; v++) {
            const struct cfg_version *ver = &cfg->endpoints[i].versions[v];
            if (!ver->health.enabled)
                continue;
            for (int k = 0; k < ver->n_upstreams; k++) {
                const struct cfg_upstream *u = &ver->upstreams[k];
                if (u->is_unix)
                    continue;       /* evhttp's client speaks TCP only */
                struct check *c = &checks[n_checks++];
                c->shared = route_shared_get(u->address);
                c->host = strdup(u->host);
                c->port = u->port;
                c->path = strdup(ver->health.path);
                c->interval_ms = ver->health.interval_ms;
                c->timeout_ms = ver->health.timeout_ms;
                c->fail_th = ver->health.failure_threshold;
                c->ok_th = ver->health.success_threshold;
                c->state.healthy = true;
                for (int j = 0; j < n_old; j++)
                    if (old[j].shared == c->shared)
                        c->state = old[j].state;
                c->timer = evtimer_new(base, probe, c);
                struct timeval now = {0, 1000};
                evtimer_add(c->timer, &now);
            }
        }
    for (int j = 0; j < n_old; j++) {
        bool kept = false;
        for (int i = 0; i < n_checks; i++)
            kept |= checks[i].shared == old[j].shared;
        if (!kept)
            __atomic_store_n(&old[j].shared->down, 0, __ATOMIC_RELEASE);
    }
    struct check *keep = checks;
    int n_keep = n_checks;
    checks = old;
    n_checks = n_old;
    health_stop();
    checks = keep;
    n_checks = n_keep;
}
