/*
 * The control plane's part of /metrics (issue 20): what an operator asks
 * of a gateway besides its request counters (metrics/counters.c) and the
 * process (metrics/process.c):
 *
 *   sluice_build_info{version,libevent,openssl} 1
 *   sluice_config_last_reload_successful, …_success_timestamp_seconds
 *       as Prometheus's own: the outcome of the last re-read of the config
 *       file (SIGHUP, POST /admin/v1/reload); the start counts as one.
 *   sluice_version_share_ratio{endpoint,version,kind}
 *       kind="configured": the effective share of SPEC §2.2 (0..1);
 *       kind="effective": the share of the endpoint's routed requests
 *       (pinned and shadow left out) this instance gave the version since
 *       the config generation in use was applied (NaN before the first).
 *   sluice_rollout_phase{endpoint,version,phase} 1 for the phase the
 *       version's rollout is in, 0 for the others ("not_started" before a
 *       start); sluice_rollout_step (counted from 1; 0 before a start) and
 *       sluice_rollout_steps; versions with a rollout plan only.
 *   sluice_rollout_gate_verdicts_total{endpoint,version,verdict}
 *       gate evaluations made by this instance (the driver), pass, hold
 *       or fail.
 *   sluice_upstream_healthy{endpoint,version,upstream}
 *       0 while the active health check says the upstream is down, else 1.
 */
#include "control/control.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <math.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

struct routed_base {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    uint64_t routed;                /* at the generation's start */
};

struct verdicts {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    uint64_t n[3];                  /* pass, hold, fail */
};

static struct {
    bool reload_ok;
    double reload_ts;
    struct routed_base *bases;
    int n_bases;
    struct verdicts *verdicts;
    int n_verdicts, cap_verdicts;
} P = {true, 0, NULL, 0, NULL, 0, 0};

static const char *const verdict_names[3] = {"pass", "hold", "fail"};

static double
now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

void
prometheus_reloaded(bool ok)
{
    P.reload_ok = ok;
    if (ok)
        P.reload_ts = now_s();
}

void
prometheus_generation(const struct config *cfg)
{
    if (P.reload_ts == 0)
        P.reload_ts = now_s();      /* the start's load */
    struct metrics_backlog *b = control_backlog();
    if (b == NULL)
        return;
    if (workers_metrics() != NULL)
        metrics_collect(b, workers_metrics(), gw_n_workers);
    int n = 0;
    for (int e = 0; e < cfg->n_endpoints; e++)
        n += cfg->endpoints[e].n_versions;
    struct routed_base *nb = calloc((size_t)n + 1, sizeof(*nb));
    if (nb == NULL)
        return;
    int k = 0;
    for (int e = 0; e < cfg->n_endpoints; e++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[e];
        for (int i = 0; i < ep->n_versions; i++, k++) {
            snprintf(nb[k].ep, sizeof(nb[k].ep), "%s", ep->name);
            snprintf(nb[k].v, sizeof(nb[k].v), "%s", ep->versions[i].name);
            nb[k].routed = metrics_backlog_routed(b, ep->name, ep->versions[i].name);
        }
    }
    free(P.bases);
    P.bases = nb;
    P.n_bases = n;
}

void
prometheus_gate_verdict(const char *ep, const char *v, const char *verdict)
{
    int which = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(verdict, verdict_names[i]) == 0)
            which = i;
    if (which < 0)
        return;
    for (int i = 0; i < P.n_verdicts; i++)
        if (strcmp(P.verdicts[i].ep, ep) == 0 && strcmp(P.verdicts[i].v, v) == 0) {
            P.verdicts[i].n[which]++;
            return;
        }
    if (P.n_verdicts == P.cap_verdicts) {
        int cap = P.cap_verdicts ? P.cap_verdicts * 2 : 8;
        struct verdicts *r = realloc(P.verdicts, (size_t)cap * sizeof(*r));
        if (r == NULL)
            return;
        P.verdicts = r;
        P.cap_verdicts = cap;
    }
    struct verdicts *x = &P.verdicts[P.n_verdicts++];
    memset(x, 0, sizeof(*x));
    snprintf(x->ep, sizeof(x->ep), "%s", ep);
    snprintf(x->v, sizeof(x->v), "%s", v);
    x->n[which] = 1;
}

static uint64_t
base_of(const char *ep, const char *v)
{
    for (int i = 0; i < P.n_bases; i++)
        if (strcmp(P.bases[i].ep, ep) == 0 && strcmp(P.bases[i].v, v) == 0)
            return P.bases[i].routed;
    return 0;
}

/* A label value: backslash, double quote and newline escaped. */
static void
label(struct evbuffer *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            evbuffer_add_printf(b, "\\%c", *s);
        else if (*s == '\n')
            evbuffer_add(b, "\\n", 2);
        else
            evbuffer_add(b, s, 1);
    }
}

static void
shares(struct evbuffer *b, const struct config *cfg)
{
    struct metrics_backlog *bl = control_backlog();
    if (cfg->n_endpoints == 0)
        return;
    evbuffer_add_printf(b, "# HELP sluice_version_share_ratio The share of an endpoint's "
        "traffic a version is configured to get (kind=\"configured\", SPEC 2.2) and the share "
        "of routed requests it got here since the config generation in use was applied "
        "(kind=\"effective\").\n# TYPE sluice_version_share_ratio gauge\n");
    for (int e = 0; e < cfg->n_endpoints; e++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[e];
        uint64_t got[CFG_MAX_VERSIONS], sum = 0;
        for (int i = 0; i < ep->n_versions; i++) {
            const char *v = ep->versions[i].name;
            uint64_t now = bl ? metrics_backlog_routed(bl, ep->name, v) : 0;
            uint64_t base = base_of(ep->name, v);
            got[i] = now >= base ? now - base : 0;
            sum += got[i];
        }
        for (int i = 0; i < ep->n_versions; i++) {
            const struct cfg_version *v = &ep->versions[i];
            evbuffer_add_printf(b, "sluice_version_share_ratio{endpoint=\"%s\",version=\"%s\","
                                "kind=\"configured\"} %g\n", ep->name, v->name,
                                v->effective / (100.0 * CFG_PCT_SCALE));
            if (sum > 0)
                evbuffer_add_printf(b, "sluice_version_share_ratio{endpoint=\"%s\","
                                    "version=\"%s\",kind=\"effective\"} %.6f\n", ep->name,
                                    v->name, (double)got[i] / (double)sum);
            else
                evbuffer_add_printf(b, "sluice_version_share_ratio{endpoint=\"%s\","
                                    "version=\"%s\",kind=\"effective\"} NaN\n", ep->name,
                                    v->name);
        }
    }
}

static void
rollouts(struct evbuffer *b, const struct config *cfg)
{
    static const char *const phases[] = {"not_started", "running", "paused", "promoted",
        "rolled_back", "aborted"};
    bool any = false;
    for (int e = 0; e < cfg->n_endpoints && !any; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++)
            any |= cfg->endpoints[e].versions[i].rollout.has_plan;
    if (!any)
        return;                     /* no family without a sample */
    evbuffer_add_printf(b, "# HELP sluice_rollout_phase 1 for the phase a version's rollout "
        "is in (SPEC 8), 0 for the others.\n# TYPE sluice_rollout_phase gauge\n");
    for (int e = 0; e < cfg->n_endpoints; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++) {
            const struct cfg_version *v = &cfg->endpoints[e].versions[i];
            if (!v->rollout.has_plan)
                continue;
            for (int ph = 0; ph < 6; ph++)
                evbuffer_add_printf(b, "sluice_rollout_phase{endpoint=\"%s\",version=\"%s\","
                                    "phase=\"%s\"} %d\n", cfg->endpoints[e].name, v->name,
                                    phases[ph], (int)v->rollout.phase == ph);
        }
    evbuffer_add_printf(b, "# HELP sluice_rollout_step The rollout's step, counted from 1 "
        "(0 before a start).\n# TYPE sluice_rollout_step gauge\n");
    for (int e = 0; e < cfg->n_endpoints; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++) {
            const struct cfg_version *v = &cfg->endpoints[e].versions[i];
            if (v->rollout.has_plan)
                evbuffer_add_printf(b, "sluice_rollout_step{endpoint=\"%s\",version=\"%s\"} "
                                    "%d\n", cfg->endpoints[e].name, v->name,
                                    v->rollout.phase == CFG_ROLLOUT_NONE ? 0 :
                                    v->rollout.step + 1);
        }
    evbuffer_add_printf(b, "# HELP sluice_rollout_steps The number of steps in the rollout "
        "plan.\n# TYPE sluice_rollout_steps gauge\n");
    for (int e = 0; e < cfg->n_endpoints; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++) {
            const struct cfg_version *v = &cfg->endpoints[e].versions[i];
            if (v->rollout.has_plan)
                evbuffer_add_printf(b, "sluice_rollout_steps{endpoint=\"%s\",version=\"%s\"} "
                                    "%d\n", cfg->endpoints[e].name, v->name,
                                    v->rollout.n_steps);
        }
    evbuffer_add_printf(b, "# HELP sluice_rollout_gate_verdicts_total Rollout gate "
        "evaluations made by this instance, by verdict.\n"
        "# TYPE sluice_rollout_gate_verdicts_total counter\n");
    for (int e = 0; e < cfg->n_endpoints; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++) {
            const struct cfg_version *v = &cfg->endpoints[e].versions[i];
            if (!v->rollout.has_plan)
                continue;
            const struct verdicts *x = NULL;
            for (int k = 0; k < P.n_verdicts && x == NULL; k++)
                if (strcmp(P.verdicts[k].ep, cfg->endpoints[e].name) == 0 &&
                    strcmp(P.verdicts[k].v, v->name) == 0)
                    x = &P.verdicts[k];
            for (int k = 0; k < 3; k++)
                evbuffer_add_printf(b, "sluice_rollout_gate_verdicts_total{endpoint=\"%s\","
                                    "version=\"%s\",verdict=\"%s\"} %llu\n",
                                    cfg->endpoints[e].name, v->name, verdict_names[k],
                                    (unsigned long long)(x ? x->n[k] : 0));
        }
}

static void
upstreams(struct evbuffer *b, const struct config *cfg)
{
    if (cfg->n_endpoints == 0)
        return;
    evbuffer_add_printf(b, "# HELP sluice_upstream_healthy 0 while the version's active "
        "health check says the upstream is down, else 1.\n"
        "# TYPE sluice_upstream_healthy gauge\n");
    for (int e = 0; e < cfg->n_endpoints; e++)
        for (int i = 0; i < cfg->endpoints[e].n_versions; i++) {
            const struct cfg_version *v = &cfg->endpoints[e].versions[i];
            for (int u = 0; u < v->n_upstreams; u++) {
                const struct route_shared *s = route_shared_get(v->upstreams[u].address);
                int down = s ? __atomic_load_n(&s->down, __ATOMIC_ACQUIRE) : 0;
                evbuffer_add_printf(b, "sluice_upstream_healthy{endpoint=\"%s\",version=\"%s\","
                                    "upstream=\"", cfg->endpoints[e].name, v->name);
                label(b, v->upstreams[u].address);
                evbuffer_add_printf(b, "\"} %d\n", down ? 0 : 1);
            }
        }
}

void
prometheus_render(struct evbuffer *b)
{
    const struct config *cfg = control_current();
    evbuffer_add_printf(b, "# HELP sluice_build_info The version of Sluice and of the "
        "libraries it runs on.\n# TYPE sluice_build_info gauge\n"
        "sluice_build_info{version=\"%s\",libevent=\"", SLUICE_VERSION);
    label(b, event_get_version());
    evbuffer_add_printf(b, "\",openssl=\"");
    label(b, OpenSSL_version(OPENSSL_VERSION_STRING));
    evbuffer_add_printf(b, "\"} 1\n");
    evbuffer_add_printf(b, "# HELP sluice_config_last_reload_successful Whether the last "
        "reload of the config file (SIGHUP, POST /admin/v1/reload) succeeded.\n"
        "# TYPE sluice_config_last_reload_successful gauge\n"
        "sluice_config_last_reload_successful %d\n"
        "# HELP sluice_config_last_reload_success_timestamp_seconds When the config was last "
        "loaded successfully (the start, or a reload).\n"
        "# TYPE sluice_config_last_reload_success_timestamp_seconds gauge\n"
        "sluice_config_last_reload_success_timestamp_seconds %.3f\n", P.reload_ok ? 1 : 0,
        P.reload_ts);
    if (cfg != NULL) {
        shares(b, cfg);
        rollouts(b, cfg);
        upstreams(b, cfg);
    }
    char *proc = metrics_process_prometheus();
    if (proc != NULL)
        evbuffer_add(b, proc, strlen(proc));
    free(proc);
}

void
prometheus_stop(void)
{
    free(P.bases);
    free(P.verdicts);
    P.bases = NULL;
    P.verdicts = NULL;
    P.n_bases = P.n_verdicts = P.cap_verdicts = 0;
}
