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
 */
#include "control/control.h"

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
static struct config *auth_cfg;     /* the generation auth was built from (a reference) */
static struct auth_ctx *auth;       /* admin token and token signing */
static bool draining;

/* The generation in use; the admin token and signing keys follow it. If a
 * new generation's auth cannot be built, the last one keeps answering. */
static struct config *
cur(void)
{
    struct config *c = control_current();
    if (c != NULL && c != auth_cfg) {
        char err[256];
        admin_gate_set_max(c->admin_max_connections);
        struct auth_ctx *a = auth_ctx_new(c, err, sizeof(err));
        if (a != NULL) {
            auth_ctx_free(auth);
            auth = a;
            config_drop(auth_cfg);
            auth_cfg = config_take(c);
        }
    }
    return c;
}

#define PREFIX "/admin/v1/endpoints"

/* The generation reported: in a fleet the fleet's (SPEC §6), the same on
 * every instance that runs it; alone, this process's count. */
static json_int_t
shown_generation(const struct config *c)
{
    return (json_int_t)(c->fleet_name != NULL ? c->fleet_generation : c->generation);
}

/* ---- replies ------------------------------------------------------------ */

/* Send body (consumed). A body that could not be built or serialised is a
 * 500 with a fixed text: never a crash, never half a document. */
static void
reply(struct evhttp_request *req, int code, json_t *body)
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
static json_t *
text_json(const char *s)
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

static void
reply_error(struct evhttp_request *req, int code, const char *ecode, const char *msg,
            const struct cfg_errors *errs)
{
    json_t *e = json_object();
    if (e != NULL) {
        json_object_set_new(e, "code", text_json(ecode));
        json_object_set_new(e, "message", text_json(msg));
    }
    if (e != NULL && errs != NULL && errs->n > 0) {
        json_t *list = json_array();
        for (int i = 0; i < errs->n; i++)
            json_array_append_new(list, text_json(errs->msg[i]));
        json_object_set_new(e, "errors", list);
    }
    if (code == 401)
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer");
    reply(req, code, json_pack("{s:o}", "error", e));
}

static const char *
status_code_name(int status)
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

static json_t *
pct_json(int hundredths)
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

static json_t *
describe_version(const struct cfg_endpoint *ep, int vi, json_t *docv)
{
    const struct cfg_version *v = &ep->versions[vi];
    json_t *ups = json_array();
    for (int i = 0; i < v->n_upstreams; i++)
        json_array_append_new(ups, json_string(v->upstreams[i].address));
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(v->name));
    json_object_set_new(o, "upstreams", ups);
    json_object_set_new(o, "path", v->path ? json_string(v->path) : json_null());
    json_object_set_new(o, "traffic_percentile", pct_json(v->traffic));
    json_object_set_new(o, "effective_percentile", pct_json(v->effective));
    json_object_set_new(o, "is_default", json_boolean(v->is_default));
    json_object_set_new(o, "type", json_string(config_group_name(v->group)));
    json_object_set_new(o, "description", v->description ? json_string(v->description)
                                                         : json_null());
    json_t *tags = docv ? json_object_get(docv, "tags") : NULL;
    json_object_set_new(o, "tags", tags ? json_deep_copy(tags) : json_object());
    json_object_set_new(o, "replica_max_concurrent_requests", json_integer(v->max_concurrent));
    json_object_set_new(o, "max_request_wait_time_ms", json_integer(v->max_wait_ms));
    json_object_set_new(o, "mirror_percentile", pct_json(v->mirror));
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

static json_t *
describe_endpoint(const struct config *cfg, const struct cfg_endpoint *ep)
{
    json_t *doce = config_doc_endpoint(cfg->doc, ep->name, NULL);
    json_t *vs = json_array();
    json_t *docvs = doce ? json_object_get(doce, "versions") : NULL;
    for (int i = 0; i < ep->n_versions; i++)
        json_array_append_new(vs, describe_version(ep, i, json_array_get(docvs, (size_t)i)));
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
                     "generation", shown_generation(cfg),
                     "versions", vs);
}

/* ---- request plumbing ---------------------------------------------------- */

struct route {
    char ep[CFG_NAME_MAX * 4];
    char v[CFG_NAME_MAX * 4];
    char tail[64];                  /* "", "versions", "keys", "keys/regenerate", ... */
    bool has_ep, has_v;
};

/* Split /admin/v1/endpoints[/EP[/versions[/V]|/keys[/regenerate]|/token|/metrics]]. */
static bool
parse_route(const char *path, struct route *r)
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
static json_t *
read_body(struct evhttp_request *req, bool required)
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
    reply_error(req, 400, "invalid", why, NULL);
    return NULL;
}

static const struct cfg_endpoint *
find_ep(const char *name)
{
    return config_endpoint(cur(), name, strlen(name));
}

/* The route's endpoint, or a 404 answered. */
static const struct cfg_endpoint *
ep_or_404(struct evhttp_request *req, const struct route *r)
{
    const struct cfg_endpoint *ep = find_ep(r->ep);
    if (ep == NULL) {
        char why[256];
        snprintf(why, sizeof(why), "no endpoint named %s", r->ep);
        reply_error(req, 404, "not_found", why, NULL);
    }
    return ep;
}

/* The endpoint of a read-only or action route that takes one method; NULL
 * after a 405 or 404 reply. */
static const struct cfg_endpoint *
ep_for(struct evhttp_request *req, const struct route *r, enum evhttp_cmd_type cmd)
{
    if (evhttp_request_get_command(req) != cmd) {
        reply_error(req, 405, "method_not_allowed",
                    cmd == EVHTTP_REQ_GET ? "GET only" : "POST only", NULL);
        return NULL;
    }
    return ep_or_404(req, r);
}

/* Validate, persist and apply doc. */
static bool
commit(struct evhttp_request *req, json_t *doc)
{
    struct cfg_errors errs;
    char err[1024];
    cfg_errors_init(&errs);
    int rc = control_commit(doc, &errs, err, sizeof(err));
    if (rc == 400)
        reply_error(req, 400, "invalid", errs.n ? errs.msg[0] : "invalid config", &errs);
    else if (rc != 0) {
        log_event(LOG_ERROR, "admin_change_not_persisted", ",\"reason\":\"%s\"",
                  log_json(err));
        reply_error(req, 500, "not_persisted", err, NULL);
    }
    cfg_errors_free(&errs);
    return rc == 0;
}

/* ---- changes -------------------------------------------------------------
 *
 * A change is kept as what was asked (operation, names, body) rather than
 * as an edited document, so that in a fleet it can be edited again on a
 * newer generation after losing a race (fleet.c), and answered later.
 */

enum change_op { CH_PUT_EP, CH_DELETE_EP, CH_CREATE_V, CH_UPDATE_V, CH_DELETE_V, CH_REGEN_KEY };

static const char *const change_op_names[] = {"put_endpoint", "delete_endpoint",
    "create_version", "update_version", "delete_version", "regen_key"};

/* A request answered later. Its connection may close meanwhile: libevent
 * then frees the connection but keeps a request the user still holds, and
 * frees it when it is answered; only the close callback must not outlive
 * us. */
struct waiting {
    struct evhttp_request *req;
    struct evhttp_connection *conn;
};

struct change {
    struct waiting w;               /* first: on_waiting_closed sees a struct waiting */
    enum change_op op;
    struct route r;
    json_t *body;                   /* NULL for deletes */
    char vname[CFG_NAME_MAX * 4];   /* the version, for the log */
    bool created;
    bool rollout_paused;            /* the change paused the version's rollout */
};

static void
on_waiting_closed(struct evhttp_connection *conn, void *arg)
{
    struct waiting *w = arg;
    w->conn = NULL;
}

static void
wait_begin(struct waiting *w, struct evhttp_request *req)
{
    w->req = req;
    w->conn = evhttp_request_get_connection(req);
    if (w->conn != NULL)
        admin_gate_on_close(w->conn, on_waiting_closed, w);
}

/* The request to answer now. The close callback goes first: answering may
 * free the connection. */
static struct evhttp_request *
wait_end(struct waiting *w)
{
    if (w->conn != NULL)
        admin_gate_on_close(w->conn, NULL, NULL);
    w->conn = NULL;
    return w->req;
}

static void
change_free(struct change *c)
{
    json_decref(c->body);
    free(c);
}

/* The operation on doc, then the secrets rule; 0 or a status with er. */
static int
change_edit(struct change *c, json_t *doc, struct cfg_edit_result *er)
{
    int rc = 0;
    json_t *kt;
    switch (c->op) {
    case CH_PUT_EP: rc = config_edit_put_endpoint(doc, c->r.ep, c->body, er); break;
    case CH_DELETE_EP: rc = config_edit_delete_endpoint(doc, c->r.ep, er); break;
    case CH_CREATE_V: rc = config_edit_create_version(doc, c->r.ep, c->body, er); break;
    case CH_UPDATE_V: rc = config_edit_update_version(doc, c->r.ep, c->r.v, c->body, er); break;
    case CH_DELETE_V: rc = config_edit_delete_version(doc, c->r.ep, c->r.v, er); break;
    case CH_REGEN_KEY:
        kt = json_object_get(c->body, "key_type");
        if (!json_is_string(kt)) {
            er->status = 400;
            snprintf(er->message, sizeof(er->message),
                     "key_type: required, \"Primary\" or \"Secondary\"");
            return 400;
        }
        if (config_doc_endpoint(doc, c->r.ep, NULL) == NULL) {
            er->status = 404;
            snprintf(er->message, sizeof(er->message), "no endpoint named %s", c->r.ep);
            config_utf8_fix(er->message);
            return 404;
        }
        rc = config_edit_regen_key(doc, c->r.ep, json_string_value(kt), er);
        break;
    }
    if (rc == 0)
        rc = config_edit_check_secrets(cur()->doc, doc, er);
    if (rc == 0) {
        c->created = er->created;
        c->rollout_paused = er->rollout_paused;
    }
    return rc;
}

/* The answer to a change applied: from the generation now in use, with
 * gen (> 0) as the change's own generation (in a fleet a later one may
 * already run when the answer goes). */
static void
change_answer(struct evhttp_request *req, struct change *c, uint64_t gen)
{
    const char *op = change_op_names[c->op];
    if (c->op == CH_PUT_EP || c->op == CH_DELETE_EP || c->op == CH_REGEN_KEY)
        log_event(LOG_INFO, "admin_change", ",\"op\":\"%s\",\"endpoint\":\"%s\"", op,
                  log_json(c->r.ep));
    else
        log_event(LOG_INFO, "admin_change", ",\"op\":\"%s\",\"endpoint\":\"%s\","
                  "\"version\":\"%s\"", op, log_json(c->r.ep), log_json(c->vname));
    if (c->rollout_paused)
        log_event(LOG_INFO, "rollout_paused", ",\"endpoint\":\"%s\",\"version\":\"%s\","
                  "\"by\":\"operator\",\"reason\":\"operator change\"", log_json(c->r.ep),
                  log_json(c->vname));
    const struct cfg_endpoint *ep = find_ep(c->r.ep);
    json_int_t g = gen > 0 ? (json_int_t)gen : shown_generation(cur());
    if (c->op == CH_DELETE_EP || ep == NULL) {
        /* ep NULL otherwise cannot happen: the edit kept the endpoint. */
        reply(req, 200, c->op == CH_DELETE_EP ?
              json_pack("{s:s, s:I}", "deleted", c->r.ep, "generation", g) :
              json_pack("{s:I}", "generation", g));
        return;
    }
    if (c->op == CH_REGEN_KEY) {
        reply(req, 200, json_pack("{s:s?, s:s?}", "primary_key", ep->key_primary,
                                  "secondary_key", ep->key_secondary));
        return;
    }
    int code = (c->op == CH_CREATE_V || (c->op == CH_PUT_EP && c->created)) ? 201 : 200;
    json_t *body = describe_endpoint(cur(), ep);
    if (body != NULL)
        json_object_set_new(body, "generation", json_integer(g));
    reply(req, code, body);
}

static int
fleet_edit_cb(void *arg, json_t *doc, struct cfg_edit_result *er)
{
    return change_edit(arg, doc, er);
}

/* The answer to a change that was not applied: 400 with the error paths,
 * 500 (logged) when it could not be persisted, or the status as given. */
static void
reply_change_failed(struct evhttp_request *req, int status, const char *message,
                    const struct cfg_errors *errs)
{
    if (status == 500)
        log_event(LOG_ERROR, "admin_change_not_persisted", ",\"reason\":\"%s\"",
                  log_json(message ? message : ""));
    if (status == 400 && errs != NULL && errs->n > 0)
        reply_error(req, 400, "invalid", errs->msg[0], errs);
    else
        reply_error(req, status, status == 500 ? "not_persisted" : status_code_name(status),
                    message ? message : "", NULL);
}

static void
fleet_done_cb(void *arg, int status, const char *message, const struct cfg_errors *errs)
{
    struct change *c = arg;
    struct evhttp_request *req = wait_end(&c->w);
    if (status == 0)
        change_answer(req, c, fleet_answered_generation());
    else
        reply_change_failed(req, status, message, errs);
    change_free(c);
}

/* Edit, validate, persist and apply, then answer: at once for a lone
 * instance (written to its file), later in a fleet (written to Redis). */
static void
change_run(struct evhttp_request *req, struct change *c)
{
    if (fleet_enabled()) {
        wait_begin(&c->w, req);
        fleet_change(fleet_edit_cb, fleet_done_cb, c);
        return;
    }
    struct cfg_edit_result er = {0};
    json_t *doc = json_deep_copy(cur()->doc);
    int rc = doc ? change_edit(c, doc, &er) : (er.status = 500,
        snprintf(er.message, sizeof(er.message), "out of memory"), 500);
    if (rc != 0)
        reply_error(req, er.status, status_code_name(er.status), er.message, NULL);
    else if (commit(req, doc))
        change_answer(req, c, 0);
    json_decref(doc);
    change_free(c);
}

/* A change of op on route r with body (taken over); NULL when out of memory
 * (answered). */
static struct change *
change_new(struct evhttp_request *req, enum change_op op, const struct route *r, json_t *body)
{
    struct change *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        json_decref(body);
        reply_error(req, 500, "internal", "out of memory", NULL);
        return NULL;
    }
    c->op = op;
    c->r = *r;
    c->body = body;
    const char *vname = r->has_v ? r->v : json_string_value(json_object_get(body, "name"));
    snprintf(c->vname, sizeof(c->vname), "%s", vname ? vname : "");
    config_utf8_fix(c->vname);
    return c;
}

/* ---- handlers ------------------------------------------------------------ */

static void
on_endpoint(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    if (!r->has_ep) {
        if (m != EVHTTP_REQ_GET) {
            reply_error(req, 405, "method_not_allowed", "GET only", NULL);
            return;
        }
        json_t *list = json_array();
        for (int i = 0; i < cur()->n_endpoints; i++)
            json_array_append_new(list, describe_endpoint(cur(), &cur()->endpoints[i]));
        reply(req, 200, json_pack("{s:o, s:I}", "endpoints", list,
                                  "generation", shown_generation(cur())));
        return;
    }
    if (m == EVHTTP_REQ_GET) {
        const struct cfg_endpoint *ep = ep_or_404(req, r);
        if (ep != NULL)
            reply(req, 200, describe_endpoint(cur(), ep));
        return;
    }
    json_t *body = NULL;
    if (m == EVHTTP_REQ_PUT) {
        body = read_body(req, true);
        if (body == NULL)
            return;
    } else if (m != EVHTTP_REQ_DELETE) {
        reply_error(req, 405, "method_not_allowed", "GET, PUT or DELETE", NULL);
        return;
    }
    struct change *c = change_new(req, m == EVHTTP_REQ_PUT ? CH_PUT_EP : CH_DELETE_EP, r, body);
    if (c != NULL)
        change_run(req, c);
}

static void
on_versions(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char why[512];

    if (!r->has_v && m == EVHTTP_REQ_GET) {
        on_endpoint(req, r);
        return;
    }
    if (r->has_v && m == EVHTTP_REQ_GET) {
        const struct cfg_endpoint *ep = find_ep(r->ep);
        int vi = ep ? config_version_index(ep, r->v, strlen(r->v)) : -1;
        if (vi < 0) {
            snprintf(why, sizeof(why), ep ? "endpoint %s has no version %s" :
                     "no endpoint named %s", r->ep, r->v);
            reply_error(req, 404, "not_found", why, NULL);
            return;
        }
        json_t *doce = config_doc_endpoint(cur()->doc, ep->name, NULL);
        reply(req, 200, describe_version(ep, vi,
              json_array_get(json_object_get(doce, "versions"), (size_t)vi)));
        return;
    }
    enum change_op op;
    if (!r->has_v && m == EVHTTP_REQ_POST)
        op = CH_CREATE_V;
    else if (r->has_v && m == EVHTTP_REQ_PATCH)
        op = CH_UPDATE_V;
    else if (r->has_v && m == EVHTTP_REQ_DELETE)
        op = CH_DELETE_V;
    else {
        reply_error(req, 405, "method_not_allowed",
                    r->has_v ? "GET, PATCH or DELETE" : "GET or POST", NULL);
        return;
    }
    json_t *body = NULL;
    if (op != CH_DELETE_V && (body = read_body(req, true)) == NULL)
        return;
    struct change *c = change_new(req, op, r, body);
    if (c != NULL)
        change_run(req, c);
}

static void
on_keys(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    const struct cfg_endpoint *ep = ep_or_404(req, r);
    if (ep == NULL)
        return;
    bool regen = strcmp(r->tail, "keys/regenerate") == 0;
    if ((!regen && m != EVHTTP_REQ_GET) || (regen && m != EVHTTP_REQ_POST)) {
        reply_error(req, 405, "method_not_allowed", regen ? "POST only" : "GET only", NULL);
        return;
    }
    if (regen) {
        json_t *body = read_body(req, true);
        if (body == NULL)
            return;
        struct change *c = change_new(req, CH_REGEN_KEY, r, body);
        if (c != NULL)
            change_run(req, c);
        return;
    }
    reply(req, 200, json_pack("{s:s?, s:s?}", "primary_key", ep->key_primary,
                              "secondary_key", ep->key_secondary));
}

static void
on_token(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = ep_for(req, r, EVHTTP_REQ_POST);
    if (ep == NULL)
        return;
    json_t *body = read_body(req, false);
    if (body == NULL)
        return;
    json_t *sub = json_object_get(body, "subject");
    time_t exp, refresh;
    char *tok = auth_issue_token(auth, ep->name, json_is_string(sub) ?
                                 json_string_value(sub) : "admin",
                                 time(NULL), &exp, &refresh, why, sizeof(why));
    json_decref(body);
    if (tok == NULL) {
        reply_error(req, 500, "internal", why, NULL);
        return;
    }
    reply(req, 200, json_pack("{s:s, s:s, s:I, s:I, s:b}", "access_token", tok,
                              "token_type", "Bearer", "expires_at", (json_int_t)exp,
                              "refresh_by", (json_int_t)refresh,
                              "token_auth_enabled", ep->auth_tokens));
    free(tok);
}

static void
on_ep_metrics(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = ep_for(req, r, EVHTTP_REQ_GET);
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
                reply_error(req, 400, "invalid", "minutes: 1 to 1440", NULL);
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
        reply_error(req, 503, "redis_unavailable", why, NULL);
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
                                "traffic_percentile", pct_json(v->traffic)));
    }
    reply(req, 200, ans);
}

/* GET …/versions/{v}/diffs[?limit=N]: the latest disagreement samples. */
static void
on_diffs(struct evhttp_request *req, const struct route *r)
{
    char why[512];
    const struct cfg_endpoint *ep = ep_for(req, r, EVHTTP_REQ_GET);
    if (ep == NULL)
        return;
    int vi = config_version_index(ep, r->v, strlen(r->v));
    if (vi < 0) {
        snprintf(why, sizeof(why), "endpoint %s has no version %s", ep->name, r->v);
        reply_error(req, 404, "not_found", why, NULL);
        return;
    }
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
                reply_error(req, 400, "invalid", "limit: 1 to 1000", NULL);
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
        reply_error(req, 503, "redis_unavailable", why, NULL);
        return;
    }
    reply(req, 200, json_pack("{s:s, s:s, s:s, s:i, s:o}", "endpoint", ep->name,
                              "version", v->name, "mode",
                              config_compare_mode_name(v->compare.mode),
                              "samples", v->compare.samples, "diffs", arr));
}

/* GET …/versions/{v}/rollout: the state and the gate's history; POST with
 * {"action"}: start, pause, resume, abort, promote (SPEC §8). */
static void
rollout_answered(void *arg, int status, const char *message, const struct cfg_errors *errs)
{
    struct change *c = arg;
    struct evhttp_request *req = wait_end(&c->w);
    if (status == 0) {
        const struct cfg_endpoint *ep = find_ep(c->r.ep);
        int vi = ep ? config_version_index(ep, c->r.v, strlen(c->r.v)) : -1;
        if (vi >= 0)
            reply(req, 200, rollout_describe(ep, vi));
        else
            reply(req, 200, json_pack("{s:I}", "generation", shown_generation(cur())));
    } else
        reply_change_failed(req, status, message, errs);
    change_free(c);
}

static void
on_rollout(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char why[512];
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_POST) {
        reply_error(req, 405, "method_not_allowed", "GET or POST", NULL);
        return;
    }
    const struct cfg_endpoint *ep = ep_or_404(req, r);
    if (ep == NULL)
        return;
    int vi = config_version_index(ep, r->v, strlen(r->v));
    if (vi < 0) {
        snprintf(why, sizeof(why), "endpoint %s has no version %s", ep->name, r->v);
        reply_error(req, 404, "not_found", why, NULL);
        return;
    }
    if (m == EVHTTP_REQ_GET) {
        reply(req, 200, rollout_describe(ep, vi));
        return;
    }
    json_t *body = read_body(req, true);
    if (body == NULL)
        return;
    json_t *act = json_object_get(body, "action");
    if (!json_is_string(act)) {
        json_decref(body);
        reply_error(req, 400, "invalid", "action: required, \"start\", \"pause\", "
                    "\"resume\", \"abort\" or \"promote\"", NULL);
        return;
    }
    struct change *c = change_new(req, CH_UPDATE_V, r, body);
    if (c == NULL)
        return;
    wait_begin(&c->w, req);
    rollout_action(c->r.ep, c->r.v, json_string_value(act), rollout_answered, c);
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
        (unsigned long long)cur()->generation,
        metrics_redis_connected(control_metrics()) ? 1 : 0,
        metrics_redis_unacknowledged(control_metrics()) ? 1 : 0,
        (unsigned long long)(fleet_enabled() ? fleet_generation() : 0), gw_n_workers);
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
        reply_error(req, 405, "method_not_allowed", "POST only", NULL);
        return;
    }
    cfg_errors_init(&errs);
    if (notify_reload(err, sizeof(err), &errs) < 0) {
        log_event(LOG_ERROR, "reload_failed", ",\"source\":\"admin\"");
        reply_error(req, 400, "invalid", errs.n ? errs.msg[0] : err, &errs);
    } else
        reply(req, 200, json_pack("{s:I}", "generation", shown_generation(cur())));
    cfg_errors_free(&errs);
}

/* GET /admin/v1/fleet (SPEC §6): answered once Redis has. */
static void
fleet_listed(void *arg, int status, json_t *body, const char *why)
{
    struct waiting *w = arg;
    struct evhttp_request *req = wait_end(w);
    free(w);
    if (status == 200)
        reply(req, 200, body);
    else {
        json_decref(body);
        reply_error(req, status, status == 503 ? "redis_unavailable" : "internal",
                    why ? why : "", NULL);
    }
}

static void
on_fleet(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        reply_error(req, 405, "method_not_allowed", "GET only", NULL);
        return;
    }
    if (!fleet_enabled()) {
        reply_error(req, 404, "not_found", "this instance is in no fleet (no \"fleet\" in "
                    "its config)", NULL);
        return;
    }
    struct waiting *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        reply_error(req, 500, "internal", "out of memory", NULL);
        return;
    }
    wait_begin(w, req);
    fleet_status(fleet_listed, w);
}

/* A request the gate (admin_gate.c) kept from evhttp, body unread. */
static void
on_gate(struct evhttp_request *req, const char *why)
{
    if (strcmp(why, "unauthorized") == 0)
        reply_error(req, 401, "unauthorized", "a valid admin token is required", NULL);
    else if (strcmp(why, "body_refused") == 0)
        reply_error(req, 400, "invalid", "a request body is read only for an authenticated "
                    "request under /admin/", NULL);
    else if (strcmp(why, "reserved") == 0)
        reply_error(req, 404, "not_found", "no such resource", NULL);
    else if (strcmp(why, "malformed_url") == 0)
        reply_error(req, 400, "invalid", "the URL must be valid UTF-8, without spaces or "
                    "control characters", NULL);
    else if (strcmp(why, "head_too_large") == 0)
        reply_error(req, 431, "too_large", "the request head is over 64 KiB", NULL);
    else
        reply_error(req, 400, "invalid", "malformed HTTP request", NULL);
}

static bool
gate_authorized(const char *h, size_t len)
{
    cur();                          /* the token of the generation in use */
    return auth != NULL && auth_admin_ok(auth, h, len);
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
        reply_error(req, 400, "invalid", "the URL must be valid UTF-8", NULL);
        return;
    }
    if (cur() == NULL) {
        reply_error(req, 503, "starting", "no configuration applied yet", NULL);
        return;
    }

    if (strncmp(path, ADMIN_GATE_PREFIX, sizeof(ADMIN_GATE_PREFIX) - 1) == 0) {
        on_gate(req, path + sizeof(ADMIN_GATE_PREFIX) - 1);
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        reply(req, 200, json_pack("{s:s}", "status", "ok"));
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        json_t *body = json_pack("{s:s, s:I}", "status", draining ? "draining" : "ready",
                                 "generation", shown_generation(cur()));
        if (body != NULL && fleet_enabled()) {
            /* The content hash, and why the fleet's newest is not applied. */
            uint64_t behind_gen = 0;
            const char *behind = fleet_behind(&behind_gen);
            json_object_set_new(body, "hash", json_string(cur()->fleet_hash));
            if (behind != NULL)
                json_object_set_new(body, "behind", json_pack("{s:I, s:o}", "generation",
                                    (json_int_t)behind_gen, "reason", text_json(behind)));
        }
        reply(req, draining ? 503 : 200, body);
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
        reply_error(req, 404, "not_found", "no such resource", NULL);
        return;
    }
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req),
                                       "Authorization");
    if (auth == NULL || !auth_admin_ok(auth, h, h ? strlen(h) : 0)) {
        reply_error(req, 401, "unauthorized", "a valid admin token is required", NULL);
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
    if (!parse_route(path, &r)) {
        reply_error(req, 404, "not_found", "no such admin resource", NULL);
        return;
    }
    if (r.tail[0] == '\0')
        on_endpoint(req, &r);
    else if (strcmp(r.tail, "versions") == 0)
        on_versions(req, &r);
    else if (strcmp(r.tail, "keys") == 0 || strcmp(r.tail, "keys/regenerate") == 0)
        on_keys(req, &r);
    else if (strcmp(r.tail, "token") == 0)
        on_token(req, &r);
    else if (strcmp(r.tail, "metrics") == 0)
        on_ep_metrics(req, &r);
    else if (strcmp(r.tail, "diffs") == 0)
        on_diffs(req, &r);
    else if (strcmp(r.tail, "rollout") == 0)
        on_rollout(req, &r);
    else
        reply_error(req, 404, "not_found", "no such admin resource", NULL);
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
    auth_ctx_free(auth);
    auth = NULL;
    config_drop(auth_cfg);
    auth_cfg = NULL;
}
