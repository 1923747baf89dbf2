/*
 * The admin listener (SPEC §5), served by libevent's evhttp on the main
 * thread, away from the data plane. Every change is an edit of a copy of
 * the config document (config/edit.c), validated whole, written to the
 * file and applied as a new generation by control_commit() before the reply.
 * The generation in use is read from the control plane on every request;
 * the control plane does not call in here.
 *
 * Input is hostile until checked: the URL and every text must be UTF-8
 * (jansson enforces it for bodies), texts quoted back are cut only at
 * character boundaries, and every JSON value built here is checked, so no
 * request can end in a NULL dereference.
 *
 * The files: admin.c the listener, the router (on_request) and the
 * handlers that only read (token, metrics, samples, Prometheus, dashboard,
 * reload, fleet, gate); admin_change.c the changes and their handlers
 * (endpoints, versions, keys, rollout actions); admin_http.c the plumbing
 * they share: the generation in use and the admin admin_auth, replies,
 * descriptions, routes, bodies, requests answered later (control/internal.h).
 * Calls run admin.c -> admin_change.c -> admin_http.c.
 */
#include "control/control.h"
#include "control/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashboard.h"          /* generated from dashboard.html */

static struct evhttp *http;

static bool draining;

static void
on_token(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = admin_ep_for(req, r, EVHTTP_REQ_POST);
    if (ep == NULL)
        return;
    json_t *body = admin_read_body(req, false);
    if (body == NULL)
        return;
    json_t *sub = json_object_get(body, "subject");
    time_t exp, refresh;
    char *tok = auth_issue_token(admin_auth, ep->name, json_is_string(sub) ?
                                 json_string_value(sub) : "admin",
                                 time(NULL), &exp, &refresh, why, sizeof(why));
    json_decref(body);
    if (tok == NULL) {
        admin_reply_error(req, 500, "internal", why, NULL);
        return;
    }
    admin_reply(req, 200, json_pack("{s:s, s:s, s:I, s:I, s:b}", "access_token", tok,
                                    "token_type", "Bearer", "expires_at", (json_int_t)exp,
                                    "refresh_by", (json_int_t)refresh,
                                    "token_auth_enabled", ep->auth_tokens));
    free(tok);
}

static void
on_ep_metrics(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = admin_ep_for(req, r, EVHTTP_REQ_GET);
    if (ep == NULL)
        return;
    int minutes = 60;
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        const char *m = evhttp_find_header(&q, "minutes");
        char *end = NULL;
        if (m != NULL) {
            long v = strtol(m, &end, 10);
            if (*m == '\0' || *end != '\0' || v < 1 || v > 1440) {
                evhttp_clear_headers(&q);
                admin_reply_error(req, 400, "invalid", "minutes: 1 to 1440", NULL);
                return;
            }
            minutes = (int)v;
        }
        evhttp_clear_headers(&q);
    }
    /* Counts still in the workers or the backlog go first, so the answer
     * includes what was served up to now when Redis is reachable. */
    metrics_redis_flush(control_metrics());
    json_t *ans = metrics_redis_query(control_metrics(), ep, minutes, why, sizeof(why));
    if (ans == NULL) {
        admin_reply_error(req, 503, "redis_unavailable", why, NULL);
        return;
    }
    /* Each version's rollout, if it has had one (SPEC §8), for the dashboard. */
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(ans, "versions"), i, row) {
        const char *name = json_string_value(json_object_get(row, "version"));
        int vi = name ? config_version_index(ep, name, strlen(name)) : -1;
        const struct cfg_version *v = vi >= 0 ? &ep->versions[vi] : NULL;
        if (v == NULL || v->rollout.phase == CFG_ROLLOUT_NONE)
            json_object_set_new(row, "rollout", json_null());
        else
            json_object_set_new(row, "rollout", json_pack("{s:s, s:i, s:o}", "phase",
                                config_rollout_phase_name(v->rollout.phase),
                                "step", v->rollout.step,
                                "traffic_percentile", admin_pct_json(v->traffic)));
    }
    admin_reply(req, 200, ans);
}

/* GET …/versions/{v}/diffs[?limit=N]: the latest disagreement samples. */
static void
on_diffs(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = admin_ep_for(req, r, EVHTTP_REQ_GET);
    if (ep == NULL)
        return;
    int vi = admin_version_or_404(req, ep, r);
    if (vi < 0)
        return;
    const struct cfg_version *v = &ep->versions[vi];
    int limit = v->compare.samples > 0 ? v->compare.samples : CFG_COMPARE_MAX_SAMPLES;
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        const char *l = evhttp_find_header(&q, "limit");
        char *end = NULL;
        if (l != NULL) {
            long n = strtol(l, &end, 10);
            if (*l == '\0' || *end != '\0' || n < 1 || n > CFG_COMPARE_MAX_SAMPLES) {
                evhttp_clear_headers(&q);
                admin_reply_error(req, 400, "invalid", "limit: 1 to 1000", NULL);
                return;
            }
            limit = (int)n;
        }
        evhttp_clear_headers(&q);
    }
    /* Samples still in the workers go first. */
    metrics_redis_flush(control_metrics());
    json_t *arr = metrics_redis_diffs(control_metrics(), ep->name, v->name, limit, why,
                                      sizeof(why));
    if (arr == NULL) {
        admin_reply_error(req, 503, "redis_unavailable", why, NULL);
        return;
    }
    admin_reply(req, 200, json_pack("{s:s, s:s, s:s, s:i, s:o}", "endpoint", ep->name,
                                    "version", v->name, "mode",
                                    config_compare_mode_name(v->compare.mode),
                                    "samples", v->compare.samples, "diffs", arr));
}

static void
on_prometheus(struct evhttp_request *req)
{
    metrics_collect(control_backlog(), workers_metrics(), gw_n_workers);
    char *text = metrics_prometheus(control_backlog());
    struct evbuffer *b = evbuffer_new();
    if (text == NULL || b == NULL) {
        free(text);
        if (b != NULL)
            evbuffer_free(b);
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add(b, text, strlen(text));
    free(text);
    evbuffer_add_printf(b,
        "# HELP sluice_open_connections Client connections open now.\n"
        "# TYPE sluice_open_connections gauge\nsluice_open_connections %d\n"
        "# HELP sluice_config_generation The configuration generation in use.\n"
        "# TYPE sluice_config_generation gauge\nsluice_config_generation %llu\n"
        "# HELP sluice_redis_connected 1 while the metrics writer is connected to Redis.\n"
        "# TYPE sluice_redis_connected gauge\nsluice_redis_connected %d\n"
        "# HELP sluice_redis_unacknowledged_batch 1 while a metrics batch waits for Redis "
        "(its reply, or WAIT for redis.wait_replicas).\n"
        "# TYPE sluice_redis_unacknowledged_batch gauge\nsluice_redis_unacknowledged_batch %d\n"
        "# HELP sluice_fleet_generation The fleet config generation applied here (0 outside "
        "a fleet).\n"
        "# TYPE sluice_fleet_generation gauge\nsluice_fleet_generation %llu\n"
        "# HELP sluice_workers Worker threads.\n"
        "# TYPE sluice_workers gauge\nsluice_workers %d\n",
        __atomic_load_n(&gw_open_connections, __ATOMIC_RELAXED),
        (unsigned long long)admin_cur()->generation,
        metrics_redis_connected(control_metrics()) ? 1 : 0,
        metrics_redis_unacknowledged(control_metrics()) ? 1 : 0,
        (unsigned long long)(fleet_enabled() ? fleet_generation() : 0), gw_n_workers);
    prometheus_render(b);
    trace_export_prometheus(b);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, NULL, b);
    evbuffer_free(b);
}

static void
on_dashboard(struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add(b, dashboard_html, strlen(dashboard_html));
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/html; charset=utf-8");
    evhttp_add_header(h, "Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                      "connect-src 'self'; img-src data:");
    evhttp_send_reply(req, 200, NULL, b);
    evbuffer_free(b);
}

static void
on_reload(struct evhttp_request *req)
{
    struct cfg_errors errs;
    char err[4096];
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        admin_reply_error(req, 405, "method_not_allowed", "POST only", NULL);
        return;
    }
    cfg_errors_init(&errs);
    if (notify_reload(err, sizeof(err), &errs) < 0) {
        log_event(LOG_ERROR, "reload_failed", ",\"source\":\"admin\"");
        admin_reply_error(req, 400, "invalid", errs.n ? errs.msg[0] : err, &errs);
    } else
        admin_reply(req, 200, json_pack("{s:I}", "generation",
                                        admin_shown_generation(admin_cur())));
    cfg_errors_free(&errs);
}

/* GET /admin/v1/fleet (SPEC §6): answered once Redis has. */
static void
fleet_listed(void *arg, int status, json_t *body, const char *why)
{
    struct waiting *w = arg;
    struct evhttp_request *req = admin_wait_end(w);
    free(w);
    if (status == 200)
        admin_reply(req, 200, body);
    else {
        json_decref(body);
        admin_reply_error(req, status, status == 503 ? "redis_unavailable" : "internal",
                          why ? why : "", NULL);
    }
}

static void
on_fleet(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        admin_reply_error(req, 405, "method_not_allowed", "GET only", NULL);
        return;
    }
    if (!fleet_enabled()) {
        admin_reply_error(req, 404, "not_found", "this instance is in no fleet (no \"fleet\" in "
                          "its config)", NULL);
        return;
    }
    struct waiting *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        admin_reply_error(req, 500, "internal", "out of memory", NULL);
        return;
    }
    admin_wait_begin(w, req);
    fleet_status(fleet_listed, w);
}

/* A request the gate (admin_gate.c) kept from evhttp, body unread. */
static void
on_gate(struct evhttp_request *req, const char *why)
{
    if (strcmp(why, "unauthorized") == 0)
        admin_reply_error(req, 401, "unauthorized", "a valid admin token is required", NULL);
    else if (strcmp(why, "body_refused") == 0)
        admin_reply_error(req, 400, "invalid", "a request body is read only for an authenticated "
                          "request under /admin/", NULL);
    else if (strcmp(why, "reserved") == 0)
        admin_reply_error(req, 404, "not_found", "no such resource", NULL);
    else if (strcmp(why, "malformed_url") == 0)
        admin_reply_error(req, 400, "invalid", "the URL must be valid UTF-8, without spaces or "
                          "control characters", NULL);
    else if (strcmp(why, "head_too_large") == 0)
        admin_reply_error(req, 431, "too_large", "the request head is over 64 KiB", NULL);
    else
        admin_reply_error(req, 400, "invalid", "malformed HTTP request", NULL);
}

static bool
gate_authorized(const char *h, size_t len)
{
    admin_cur();                          /* the token of the generation in use */
    return admin_auth != NULL && auth_admin_ok(admin_auth, h, len);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *target = evhttp_request_get_uri(req);
    if (path == NULL)
        path = "/";
    /* Names from the URL are quoted back in errors and logs. */
    if (target == NULL || !config_utf8_valid(target, strlen(target))) {
        admin_reply_error(req, 400, "invalid", "the URL must be valid UTF-8", NULL);
        return;
    }
    if (admin_cur() == NULL) {
        admin_reply_error(req, 503, "starting", "no configuration applied yet", NULL);
        return;
    }

    if (strncmp(path, ADMIN_GATE_PREFIX, sizeof(ADMIN_GATE_PREFIX) - 1) == 0) {
        on_gate(req, path + sizeof(ADMIN_GATE_PREFIX) - 1);
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        admin_reply(req, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        json_t *body = json_pack("{s:s, s:I}", "status", draining ? "draining" : "ready",
                                 "generation", admin_shown_generation(admin_cur()));
        if (body != NULL && fleet_enabled()) {
            /* The content hash, and why the fleet's newest is not applied. */
            uint64_t behind_gen = 0;
            const char *behind = fleet_behind(&behind_gen);
            json_object_set_new(body, "hash", json_string(admin_cur()->fleet_hash));
            if (behind != NULL)
                json_object_set_new(body, "behind", json_pack("{s:I, s:o}", "generation",
                                    (json_int_t)behind_gen, "reason", admin_text_json(behind)));
        }
        admin_reply(req, draining ? 503 : 200, body);
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        on_prometheus(req);
        return;
    }
    if (strcmp(path, "/dashboard") == 0 || strcmp(path, "/dashboard/") == 0) {
        on_dashboard(req);
        return;
    }
    if (strncmp(path, "/admin/", 7) != 0) {
        admin_reply_error(req, 404, "not_found", "no such resource", NULL);
        return;
    }
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");
    if (admin_auth == NULL || !auth_admin_ok(admin_auth, h, h ? strlen(h) : 0)) {
        admin_reply_error(req, 401, "unauthorized", "a valid admin token is required", NULL);
        return;
    }
    struct route r;
    if (strcmp(path, "/admin/v1/reload") == 0) {
        on_reload(req);
        return;
    }
    if (strcmp(path, "/admin/v1/fleet") == 0) {
        on_fleet(req);
        return;
    }
    if (!admin_parse_route(path, &r)) {
        admin_reply_error(req, 404, "not_found", "no such admin resource", NULL);
        return;
    }
    if (r.tail[0] == '\0')
        admin_on_endpoint(req, &r);
    else if (strcmp(r.tail, "versions") == 0)
        admin_on_versions(req, &r);
    else if (strcmp(r.tail, "keys") == 0 || strcmp(r.tail, "keys/regenerate") == 0)
        admin_on_keys(req, &r);
    else if (strcmp(r.tail, "token") == 0)
        on_token(req, &r);
    else if (strcmp(r.tail, "metrics") == 0)
        on_ep_metrics(req, &r);
    else if (strcmp(r.tail, "diffs") == 0)
        on_diffs(req, &r);
    else if (strcmp(r.tail, "rollout") == 0)
        admin_on_rollout(req, &r);
    else
        admin_reply_error(req, 404, "not_found", "no such admin resource", NULL);
}

/* ---- lifetime ------------------------------------------------------------- */

int
admin_start(struct event_base *base, struct config *cfg, char *err, size_t errlen)
{
    http = evhttp_new(base);
    if (http == NULL) {
        snprintf(err, errlen, "cannot create the HTTP server");
        return -1;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                               EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
    evhttp_set_max_body_size(http, 1 << 20);
    evhttp_set_max_headers_size(http, 64 * 1024);
    evhttp_set_timeout(http, 30);
    evhttp_set_gencb(http, on_request, NULL);
    int fd = listen_socket(cfg->admin_host, cfg->admin_port, false, err, errlen);
    if (fd < 0)
        return -1;
    struct evhttp_bound_socket *bound = evhttp_accept_socket_with_handle(http, fd);
    if (bound == NULL) {
        snprintf(err, errlen, "%s: cannot accept", cfg->admin_address);
        return -1;
    }
    if (admin_gate_attach(http, evhttp_bound_socket_get_listener(bound),
                          cfg->admin_max_connections, gate_authorized) < 0) {
        snprintf(err, errlen, "%s: out of memory", cfg->admin_address);
        return -1;
    }
    return 0;
}

void
admin_set_draining(void)
{
    draining = true;
}

void
admin_stop(void)
{
    if (http != NULL) {
        evhttp_free(http);
        admin_gate_detach();
    }
    http = NULL;
    auth_ctx_free(admin_auth);
    admin_auth = NULL;
    config_drop(admin_auth_cfg);
    admin_auth_cfg = NULL;
}
