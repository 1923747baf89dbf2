/*
 * The admin API's plumbing (SPEC §5), shared by admin.c and admin_change.c:
 * the generation in use and the admin auth that follows it, replies and
 * errors, descriptions of endpoints and versions (secrets left out), the
 * route of a URL, request bodies, endpoint lookups, commits, and requests
 * answered later.
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

struct config *admin_auth_cfg;      /* the generation auth was built from (a reference) */
struct auth_ctx *admin_auth;        /* admin token and token signing */

/* The generation in use; the admin token and signing keys follow it. If a
 * new generation's auth cannot be built, the last one keeps answering. */
struct config *
admin_cur(void)
{
    struct config *c = control_current();
    if (c != NULL && c != admin_auth_cfg) {
        char err[256];
        admin_gate_set_max(c->admin_max_connections);
        struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
        if (a != NULL) {
            auth_ctx_free(admin_auth);
            admin_auth = a;
            config_drop(admin_auth_cfg);
            admin_auth_cfg = config_take(c);
        }
    }
    return c;
}

#define PREFIX "/admin/v1/endpoints"

/* The generation reported: in a fleet the fleet's (SPEC §6), the same on
 * every instance that runs it; alone, this process's count. */
json_int_t
admin_shown_generation(const struct config *c)
{
    return (json_int_t)(c->fleet_name != NULL ? c->fleet_generation : c->generation);
}

/* ---- replies ------------------------------------------------------------ */

/* Send body (consumed). A body that could not be built or serialised is a
 * 500 with a fixed text: never a crash, never half a document. */
void
admin_reply(struct evhttp_request *req, int code, json_t *body)
{
    static const char failed[] = "{\n  \"error\": {\n    \"code\": \"internal\",\n"
        "    \"message\": \"the reply could not be encoded\"\n  }\n}\n";
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        json_decref(body);
        evhttp_send_error(req, 500, NULL);
        return;
    }
    char *text = body ? json_dumps(body, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    if (text == NULL) {
        code = 500;
        evbuffer_add(b, failed, sizeof(failed) - 1);
    } else {
        evbuffer_add(b, text, strlen(text));
        evbuffer_add(b, "\n", 1);
    }
    free(text);
    json_decref(body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, code, NULL, b);
    evbuffer_free(b);
}

/* A JSON string of any text: invalid UTF-8 (which should not reach here)
 * is repaired rather than dropped. */
json_t *
admin_text_json(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j == NULL && s != NULL) {
        char *copy = strdup(s);
        if (copy != NULL) {
            config_utf8_fix(copy);
            j = json_string(copy);
            free(copy);
        }
    }
    return j;
}

void
admin_reply_error(struct evhttp_request *req, int code, const char *ecode, const char *msg,
                  const struct cfg_errors *errs)
{
    json_t *e = json_object();
    if (e != NULL) {
        json_object_set_new(e, "code", admin_text_json(ecode));
        json_object_set_new(e, "message", admin_text_json(msg));
    }
    if (e != NULL && errs != NULL && errs->n > 0) {
        json_t *list = json_array();
        for (int i = 0; i < errs->n; i++)
            json_array_append_new(list, admin_text_json(errs->msg[i]));
        json_object_set_new(e, "errors", list);
    }
    if (code == 401)
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer");
    admin_reply(req, code, json_pack("{s:o}", "error", e));
}

const char *
admin_status_code_name(int status)
{
    switch (status) {
    case 400: return "invalid";
    case 401: return "unauthorized";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 503: return "unavailable";
    default: return "internal";
    }
}

/* ---- descriptions (secrets left out) -------------------------------------- */

json_t *
admin_pct_json(int hundredths)
{
    if (hundredths % CFG_PCT_SCALE == 0)
        return json_integer(hundredths / CFG_PCT_SCALE);
    return json_real(hundredths / (double)CFG_PCT_SCALE);
}

static json_t *
describe_compare(const struct cfg_compare *c)
{
    if (c->mode == CFG_COMPARE_OFF)
        return json_null();
    json_t *ign = json_array();
    for (int i = 0; i < c->n_ignore; i++)
        json_array_append_new(ign, json_string(c->ignore[i]));
    return json_pack("{s:s, s:f, s:f, s:o, s:I, s:i}", "mode",
                     config_compare_mode_name(c->mode), "abs_tol", c->abs_tol,
                     "rel_tol", c->rel_tol, "ignore", ign,
                     "max_bytes", (json_int_t)c->max_bytes, "samples", c->samples);
}

json_t *
admin_describe_version(const struct cfg_endpoint *ep, int vi, json_t *docv)
{
    const struct cfg_version *v = &ep->versions[vi];
    json_t *ups = json_array();
    for (int i = 0; i < v->n_upstreams; i++)
        json_array_append_new(ups, json_string(v->upstreams[i].address));
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(v->name));
    json_object_set_new(o, "upstreams", ups);
    json_object_set_new(o, "path", v->path ? json_string(v->path) : json_null());
    json_object_set_new(o, "traffic_percentile", admin_pct_json(v->traffic));
    json_object_set_new(o, "effective_percentile", admin_pct_json(v->effective));
    json_object_set_new(o, "is_default", json_boolean(v->is_default));
    json_object_set_new(o, "type", json_string(config_group_name(v->group)));
    json_object_set_new(o, "description", v->description ? json_string(v->description)
                                                         : json_null());
    json_t *tags = docv ? json_object_get(docv, "tags") : NULL;
    json_object_set_new(o, "tags", tags ? json_deep_copy(tags) : json_object());
    json_object_set_new(o, "replica_max_concurrent_requests", json_integer(v->max_concurrent));
    json_object_set_new(o, "max_request_wait_time_ms", json_integer(v->max_wait_ms));
    json_object_set_new(o, "mirror_percentile", admin_pct_json(v->mirror));
    if (v->health.enabled)
        json_object_set_new(o, "health_check", json_pack("{s:s, s:i, s:i, s:i, s:i}",
            "path", v->health.path, "interval_ms", v->health.interval_ms,
            "timeout_ms", v->health.timeout_ms,
            "failure_threshold", v->health.failure_threshold,
            "success_threshold", v->health.success_threshold));
    else
        json_object_set_new(o, "health_check", json_null());
    json_object_set_new(o, "compare", describe_compare(&v->compare));
    json_object_set_new(o, "rollout", rollout_plan_json(&v->rollout));
    json_object_set_new(o, "rollout_state", rollout_state_json(&v->rollout));
    return o;
}

json_t *
admin_describe_endpoint(const struct config *cfg, const struct cfg_endpoint *ep)
{
    json_t *doce = config_doc_endpoint(cfg->doc, ep->name, NULL);
    json_t *vs = json_array();
    json_t *docvs = doce ? json_object_get(doce, "versions") : NULL;
    for (int i = 0; i < ep->n_versions; i++)
        json_array_append_new(vs, admin_describe_version(ep, i, json_array_get(docvs, (size_t)i)));
    json_t *sticky = json_null();
    if (ep->sticky == CFG_STICKY_HEADER)
        sticky = json_pack("{s:s}", "header", ep->sticky_name);
    else if (ep->sticky == CFG_STICKY_COOKIE)
        sticky = json_pack("{s:s}", "cookie", ep->sticky_name);
    return json_pack("{s:s, s:{s:b, s:b}, s:o, s:i, s:b, s:b, s:I, s:o}",
                     "name", ep->name,
                     "auth", "keys", ep->auth_keys, "tokens", ep->auth_tokens,
                     "sticky", sticky,
                     "scoring_timeout_ms", ep->scoring_timeout_ms,
                     "failover_to_default", ep->failover_to_default,
                     "pinning", ep->pinning,
                     "generation", admin_shown_generation(cfg),
                     "versions", vs);
}

/* ---- request plumbing ---------------------------------------------------- */

/* Split /admin/v1/endpoints[/EP[/versions[/V]|/keys[/regenerate]|/token|/metrics]]. */
bool
admin_parse_route(const char *path, struct route *r)
{
    memset(r, 0, sizeof(*r));
    size_t pl = strlen(PREFIX);
    if (strncmp(path, PREFIX, pl) != 0)
        return false;
    const char *p = path + pl;
    if (*p == '\0')
        return true;
    if (*p != '/')
        return false;
    p++;
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= sizeof(r->ep))
        return false;
    memcpy(r->ep, p, n);
    r->has_ep = true;
    if (slash == NULL)
        return true;
    p = slash + 1;
    if (strncmp(p, "versions", 8) == 0 && (p[8] == '\0' || p[8] == '/')) {
        snprintf(r->tail, sizeof(r->tail), "versions");
        if (p[8] == '/' && p[9] != '\0') {
            const char *vs = strchr(p + 9, '/');
            size_t vn = vs ? (size_t)(vs - (p + 9)) : strlen(p + 9);
            if (vn == 0 || vn >= sizeof(r->v))
                return false;
            if (vs != NULL) {
                /* versions/V/diffs: the shadow comparison's samples;
                 * versions/V/rollout: its progressive rollout */
                if (strcmp(vs, "/diffs") != 0 && strcmp(vs, "/rollout") != 0)
                    return false;
                snprintf(r->tail, sizeof(r->tail), "%s", vs + 1);
            }
            memcpy(r->v, p + 9, vn);
            r->has_v = true;
        }
        return true;
    }
    if (strlen(p) >= sizeof(r->tail))
        return false;
    snprintf(r->tail, sizeof(r->tail), "%s", p);
    return true;
}

/* The request's JSON object body (an empty one when none is sent and none
 * is required), or NULL with the 400 answered. */
json_t *
admin_read_body(struct evhttp_request *req, bool required)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char why[512];
    json_t *j = NULL;
    if (len == 0) {
        if (!required)
            return json_object();
        snprintf(why, sizeof(why), "a JSON body is required");
    } else {
        json_error_t jerr;
        j = json_loadb((const char *)evbuffer_pullup(in, -1), len, JSON_REJECT_DUPLICATES,
                       &jerr);
        if (j == NULL)
            snprintf(why, sizeof(why), "invalid JSON at line %d column %d: %s", jerr.line,
                     jerr.column, jerr.text);
        else if (json_is_object(j))
            return j;
        else {
            snprintf(why, sizeof(why), "the body must be a JSON object");
            json_decref(j);
        }
    }
    admin_reply_error(req, 400, "invalid", why, NULL);
    return NULL;
}

const struct cfg_endpoint *
admin_find_ep(const char *name)
{
    return config_endpoint(admin_cur(), name, strlen(name));
}

/* The route's endpoint, or a 404 answered. */
const struct cfg_endpoint *
admin_ep_or_404(struct evhttp_request *req, const struct route *r)
{
    const struct cfg_endpoint *ep = admin_find_ep(r->ep);
    if (ep == NULL) {
        char why[256];
        snprintf(why, sizeof(why), "no endpoint named %s", r->ep);
        admin_reply_error(req, 404, "not_found", why, NULL);
    }
    return ep;
}

/* The index of the route's version in ep; -1 after a 404 reply. */
int
admin_version_or_404(struct evhttp_request *req, const struct cfg_endpoint *ep,
                     const struct route *r)
{
    int vi = config_version_index(ep, r->v, strlen(r->v));
    if (vi < 0) {
        char why[512];
        snprintf(why, sizeof(why), "endpoint %s has no version %s", ep->name, r->v);
        admin_reply_error(req, 404, "not_found", why, NULL);
    }
    return vi;
}

/* The endpoint of a read-only or action route that takes one method; NULL
 * after a 405 or 404 reply. */
const struct cfg_endpoint *
admin_ep_for(struct evhttp_request *req, const struct route *r, enum evhttp_cmd_type cmd)
{
    if (evhttp_request_get_command(req) != cmd) {
        admin_reply_error(req, 405, "method_not_allowed",
                          cmd == EVHTTP_REQ_GET ? "GET only" : "POST only", NULL);
        return NULL;
    }
    return admin_ep_or_404(req, r);
}

/* Validate, persist and apply doc. */
bool
admin_commit(struct evhttp_request *req, json_t *doc)
{
    struct cfg_errors errs;
    char err[1024];
    cfg_errors_init(&errs);
    int rc = control_commit(doc, &errs, err, sizeof(err));
    if (rc == 400)
        admin_reply_error(req, 400, "invalid", errs.n ? errs.msg[0] : "invalid config", &errs);
    else if (rc != 0) {
        log_event(LOG_ERROR, "admin_change_not_persisted", ",\"reason\":\"%s\"",
                  log_json(err));
        admin_reply_error(req, 500, "not_persisted", err, NULL);
    }
    cfg_errors_free(&errs);
    return rc == 0;
}

void
admin_on_waiting_closed(struct evhttp_connection *conn, void *arg)
{
    struct waiting *w = arg;
    w->conn = NULL;
}

void
admin_wait_begin(struct waiting *w, struct evhttp_request *req)
{
    w->req = req;
    w->conn = evhttp_request_get_connection(req);
    if (w->conn != NULL)
        admin_gate_on_close(w->conn, admin_on_waiting_closed, w);
}

/* The request to answer now. The close callback goes first: answering may
 * free the connection. */
struct evhttp_request *
admin_wait_end(struct waiting *w)
{
    if (w->conn != NULL)
        admin_gate_on_close(w->conn, NULL, NULL);
    w->conn = NULL;
    return w->req;
}
