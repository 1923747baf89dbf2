/*
 * The admin API's changes (SPEC §5): endpoints put and deleted, versions
 * created, updated and deleted, keys regenerated, rollout actions. A change
 * is an edit of a copy of the config document, validated whole, persisted
 * and applied (control_commit, or the fleet's compare-and-set) before its
 * reply.
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

/* ---- changes -------------------------------------------------------------
 *
 * A change is kept as what was asked (operation, names, body) rather than
 * as an edited document, so that in a fleet it can be edited again on a
 * newer generation after losing a race (fleet.c), and answered later.
 */

enum change_op { CH_PUT_EP, CH_DELETE_EP, CH_CREATE_V, CH_UPDATE_V, CH_DELETE_V, CH_REGEN_KEY };

static const char *const change_op_names[] = {"put_endpoint", "delete_endpoint",
    "create_version", "update_version", "delete_version", "regen_key"};

struct change {
    struct waiting w;               /* first: admin_on_waiting_closed sees a struct waiting */
    enum change_op op;
    struct route r;
    json_t *body;                   /* NULL for deletes */
    char vname[CFG_NAME_MAX * 4];   /* the version, for the log */
    bool created;
    bool rollout_paused;            /* the change paused the version's rollout */
};

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
        rc = config_edit_check_secrets(admin_cur()->doc, doc, er);
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
    const struct cfg_endpoint *ep = admin_find_ep(c->r.ep);
    json_int_t g = gen > 0 ? (json_int_t)gen : admin_shown_generation(admin_cur());
    if (c->op == CH_DELETE_EP || ep == NULL) {
        /* ep NULL otherwise cannot happen: the edit kept the endpoint. */
        admin_reply(req, 200, c->op == CH_DELETE_EP ?
                    json_pack("{s:s, s:I}", "deleted", c->r.ep, "generation", g) :
                    json_pack("{s:I}", "generation", g));
        return;
    }
    if (c->op == CH_REGEN_KEY) {
        admin_reply(req, 200, json_pack("{s:s?, s:s?}", "primary_key", ep->key_primary,
                                        "secondary_key", ep->key_secondary));
        return;
    }
    int code = (c->op == CH_CREATE_V || (c->op == CH_PUT_EP && c->created)) ? 201 : 200;
    json_t *body = admin_describe_endpoint(admin_cur(), ep);
    if (body != NULL)
        json_object_set_new(body, "generation", json_integer(g));
    admin_reply(req, code, body);
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
        admin_reply_error(req, 400, "invalid", errs->msg[0], errs);
    else
        admin_reply_error(req, status,
                          status == 500 ? "not_persisted" : admin_status_code_name(status),
                          message ? message : "", NULL);
}

static void
fleet_done_cb(void *arg, int status, const char *message, const struct cfg_errors *errs)
{
    struct change *c = arg;
    struct evhttp_request *req = admin_wait_end(&c->w);
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
        admin_wait_begin(&c->w, req);
        fleet_change(fleet_edit_cb, fleet_done_cb, c);
        return;
    }
    struct cfg_edit_result er = {0};
    json_t *doc = json_deep_copy(admin_cur()->doc);
    int rc = doc ? change_edit(c, doc, &er) : (er.status = 500,
        snprintf(er.message, sizeof(er.message), "out of memory"), 500);
    if (rc != 0)
        admin_reply_error(req, er.status, admin_status_code_name(er.status), er.message, NULL);
    else if (admin_commit(req, doc))
        change_answer(req, c, 0);
    json_decref(doc);
    change_free(c);
}

/* A change of op on route r with body (taken over); NULL when out of memory
 * (answered). */
static struct change *
admin_change_new(struct evhttp_request *req, enum change_op op, const struct route *r, json_t *body)
{
    struct change *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        json_decref(body);
        admin_reply_error(req, 500, "internal", "out of memory", NULL);
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

void
admin_on_endpoint(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    if (!r->has_ep) {
        if (m != EVHTTP_REQ_GET) {
            admin_reply_error(req, 405, "method_not_allowed", "GET only", NULL);
            return;
        }
        json_t *list = json_array();
        for (int i = 0; i < admin_cur()->n_endpoints; i++)
            json_array_append_new(list, admin_describe_endpoint(admin_cur(),
                                                                &admin_cur()->endpoints[i]));
        admin_reply(req, 200, json_pack("{s:o, s:I}", "endpoints", list,
                                        "generation", admin_shown_generation(admin_cur())));
        return;
    }
    if (m == EVHTTP_REQ_GET) {
        const struct cfg_endpoint *ep = admin_ep_or_404(req, r);
        if (ep != NULL)
            admin_reply(req, 200, admin_describe_endpoint(admin_cur(), ep));
        return;
    }
    json_t *body = NULL;
    if (m == EVHTTP_REQ_PUT) {
        body = admin_read_body(req, true);
        if (body == NULL)
            return;
    } else if (m != EVHTTP_REQ_DELETE) {
        admin_reply_error(req, 405, "method_not_allowed", "GET, PUT or DELETE", NULL);
        return;
    }
    struct change *c = admin_change_new(req, m == EVHTTP_REQ_PUT ? CH_PUT_EP : CH_DELETE_EP, r,
                                        body);
    if (c != NULL)
        change_run(req, c);
}

void
admin_on_versions(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char why[512];

    if (!r->has_v && m == EVHTTP_REQ_GET) {
        admin_on_endpoint(req, r);
        return;
    }
    if (r->has_v && m == EVHTTP_REQ_GET) {
        const struct cfg_endpoint *ep = admin_find_ep(r->ep);
        int vi = ep ? config_version_index(ep, r->v, strlen(r->v)) : -1;
        if (vi < 0) {
            snprintf(why, sizeof(why), ep ? "endpoint %s has no version %s" :
                     "no endpoint named %s", r->ep, r->v);
            admin_reply_error(req, 404, "not_found", why, NULL);
            return;
        }
        json_t *doce = config_doc_endpoint(admin_cur()->doc, ep->name, NULL);
        admin_reply(req, 200, admin_describe_version(ep, vi,
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
        admin_reply_error(req, 405, "method_not_allowed",
                          r->has_v ? "GET, PATCH or DELETE" : "GET or POST", NULL);
        return;
    }
    json_t *body = NULL;
    if (op != CH_DELETE_V && (body = admin_read_body(req, true)) == NULL)
        return;
    struct change *c = admin_change_new(req, op, r, body);
    if (c != NULL)
        change_run(req, c);
}

void
admin_on_keys(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    const struct cfg_endpoint *ep = admin_ep_or_404(req, r);
    if (ep == NULL)
        return;
    bool regen = strcmp(r->tail, "keys/regenerate") == 0;
    if ((!regen && m != EVHTTP_REQ_GET) || (regen && m != EVHTTP_REQ_POST)) {
        admin_reply_error(req, 405, "method_not_allowed", regen ? "POST only" : "GET only", NULL);
        return;
    }
    if (regen) {
        json_t *body = admin_read_body(req, true);
        if (body == NULL)
            return;
        struct change *c = admin_change_new(req, CH_REGEN_KEY, r, body);
        if (c != NULL)
            change_run(req, c);
        return;
    }
    admin_reply(req, 200, json_pack("{s:s?, s:s?}", "primary_key", ep->key_primary,
                                    "secondary_key", ep->key_secondary));
}

/* GET …/versions/{v}/rollout: the state and the gate's history; POST with
 * {"action"}: start, pause, resume, abort, promote (SPEC §8). */
static void
rollout_answered(void *arg, int status, const char *message, const struct cfg_errors *errs)
{
    struct change *c = arg;
    struct evhttp_request *req = admin_wait_end(&c->w);
    if (status == 0) {
        const struct cfg_endpoint *ep = admin_find_ep(c->r.ep);
        int vi = ep ? config_version_index(ep, c->r.v, strlen(c->r.v)) : -1;
        if (vi >= 0)
            admin_reply(req, 200, rollout_describe(ep, vi));
        else
            admin_reply(req, 200, json_pack("{s:I}", "generation",
                                            admin_shown_generation(admin_cur())));
    } else
        reply_change_failed(req, status, message, errs);
    change_free(c);
}

void
admin_on_rollout(struct evhttp_request *req, const struct route *r)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_POST) {
        admin_reply_error(req, 405, "method_not_allowed", "GET or POST", NULL);
        return;
    }
    const struct cfg_endpoint *ep = admin_ep_or_404(req, r);
    if (ep == NULL)
        return;
    int vi = admin_version_or_404(req, ep, r);
    if (vi < 0)
        return;
    if (m == EVHTTP_REQ_GET) {
        admin_reply(req, 200, rollout_describe(ep, vi));
        return;
    }
    json_t *body = admin_read_body(req, true);
    if (body == NULL)
        return;
    json_t *act = json_object_get(body, "action");
    if (!json_is_string(act)) {
        json_decref(body);
        admin_reply_error(req, 400, "invalid", "action: required, \"start\", \"pause\", "
                          "\"resume\", \"abort\" or \"promote\"", NULL);
        return;
    }
    struct change *c = admin_change_new(req, CH_UPDATE_V, r, body);
    if (c == NULL)
        return;
    admin_wait_begin(&c->w, req);
    rollout_action(c->r.ep, c->r.v, json_string_value(act), rollout_answered, c);
}
