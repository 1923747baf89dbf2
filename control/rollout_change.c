/*
 * The rollout driver's changes (SPEC §8; see rollout.c for the design): an
 * operator's actions (start, pause, resume, abort, promote) and the
 * driver's decisions (next step, go live, rollback, finish, halt) as edits
 * of the document in use, validated, persisted (file, or the fleet's
 * compare-and-set) and applied like an admin PATCH; a decided change that
 * fails is retried, never judged again.
 */
#include "control/control.h"
#include "control/internal.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define R rollout_state             /* the driver's one state (control/internal.h) */

/* ---- changes ------------------------------------------------------------- */

const char *const ro_op_names[] = {"start", "pause", "resume", "abort", "promote",
    "next_step", "go_live", "rollback", "finish", "halt"};

static int
ch_fail(struct cfg_edit_result *er, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
ch_fail(struct cfg_edit_result *er, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(er->message, sizeof(er->message), fmt, ap);
    va_end(ap);
    config_utf8_fix(er->message);
    er->status = status;
    return status;
}

static const char *
doc_phase(json_t *x)
{
    json_t *ph = json_object_get(json_object_get(x, "rollout_state"), "phase");
    return json_is_string(ph) ? json_string_value(ph) : NULL;
}

static bool
phase_is(json_t *x, const char *name)
{
    const char *ph = doc_phase(x);
    return ph != NULL && strcmp(ph, name) == 0;
}

static void
set_state(json_t *x, const char *phase, int step, int64_t since, const char *reason)
{
    json_object_set_new(x, "rollout_state", json_pack("{s:s, s:i, s:I, s:o}", "phase", phase,
                        "step", step, "since", (json_int_t)since,
                        "reason", reason ? json_string(reason) : json_null()));
}

static bool
is_default_at(json_t *vs, size_t i)
{
    bool marked = false;
    size_t k;
    json_t *y;
    json_array_foreach(vs, k, y)
        marked |= json_is_true(json_object_get(y, "is_default"));
    return marked ? json_is_true(json_object_get(json_array_get(vs, i), "is_default")) : i == 0;
}

/* x becomes the default with all remaining traffic; the old default stays,
 * at 0 %, so that going back is one change. */
static void
promote_doc(json_t *vs, json_t *x)
{
    size_t i;
    json_t *y;
    json_array_foreach(vs, i, y) {
        if (y != x && is_default_at(vs, i)) {
            json_object_set_new(y, "traffic_percentile", json_integer(0));
            break;
        }
    }
    json_array_foreach(vs, i, y)
        if (y != x)
            json_object_del(y, "is_default");
    json_object_set_new(x, "is_default", json_true());
    json_object_set_new(x, "mirror_percentile", json_integer(0));
}

static int change_edit_doc(struct ro_change *c, json_t *doc, struct cfg_edit_result *er);

static int
change_edit(struct ro_change *c, json_t *doc, struct cfg_edit_result *er)
{
    int rc = change_edit_doc(c, doc, er);
    c->edit_refused = rc != 0;
    return rc;
}

static int
change_edit_doc(struct ro_change *c, json_t *doc, struct cfg_edit_result *er)
{
    json_t *e = config_doc_endpoint(doc, c->ep, NULL);
    if (e == NULL)
        return ch_fail(er, 404, "no endpoint named %s", c->ep);
    json_t *vs = json_object_get(e, "versions"), *x = NULL, *y;
    size_t i, xi = 0;
    json_array_foreach(vs, i, y) {
        json_t *n = json_object_get(y, "name");
        if (json_is_string(n) && strcmp(json_string_value(n), c->v) == 0) {
            x = y;
            xi = i;
        }
    }
    if (x == NULL)
        return ch_fail(er, 404, "endpoint %s has no version %s", c->ep, c->v);
    json_t *plan = json_object_get(x, "rollout");
    json_t *steps = json_object_get(plan, "steps");
    if (!json_is_object(plan) || !json_is_array(steps) || json_array_size(steps) == 0)
        return ch_fail(er, 409, "version %s has no rollout plan: PATCH a \"rollout\" first",
                       c->v);
    json_t *st = json_object_get(x, "rollout_state");
    json_t *js = json_object_get(st, "step"), *jt = json_object_get(st, "since");
    int step = json_is_integer(js) ? (int)json_integer_value(js) : 0;
    int64_t since = json_is_integer(jt) ? (int64_t)json_integer_value(jt) : 0;
    const char *ph = doc_phase(x);
    bool running = phase_is(x, "running"), paused = phase_is(x, "paused");
    json_t *mirror = json_object_get(x, "mirror_percentile");
    bool mirrored = json_is_number(mirror) && json_number_value(mirror) > 0;
    bool compares = json_is_object(json_object_get(x, "compare"));

    if (c->op >= RO_NEXT && (!running || step != c->step || since != c->since))
        return ch_fail(er, 409, "the rollout changed meanwhile");
    switch (c->op) {
    case RO_START:
        if (running || paused)
            return ch_fail(er, 409, "the rollout of %s is already %s", c->v, ph);
        if (is_default_at(vs, xi))
            return ch_fail(er, 409, "%s is the default version: there is nothing to roll out",
                           c->v);
        if (!(mirrored && compares)) {
            /* Nothing to agree on: live at once, and a live version is
             * no mirror. */
            json_object_set(x, "traffic_percentile", json_array_get(steps, 0));
            if (mirrored)
                json_object_set_new(x, "mirror_percentile", json_integer(0));
        }
        set_state(x, "running", 0, c->now, NULL);
        break;
    case RO_PAUSE:
        if (!running)
            return ch_fail(er, 409, "the rollout of %s is not running (%s)", c->v,
                           ph ? ph : "never started");
        set_state(x, "paused", step, c->now, "paused by operator");
        break;
    case RO_RESUME:
        if (!paused)
            return ch_fail(er, 409, "the rollout of %s is not paused (%s)", c->v,
                           ph ? ph : "never started");
        /* The step starts over: its window begins now, at the step's share
         * if a pause took it away (not for a mirror still proving its
         * agreement: it has no live share yet). */
        if (!(mirrored && compares && step == 0)) {
            json_t *tp = json_object_get(x, "traffic_percentile");
            if (!json_is_number(tp) || json_number_value(tp) == 0)
                json_object_set(x, "traffic_percentile", json_array_get(steps, (size_t)step));
        }
        set_state(x, "running", step, c->now, NULL);
        break;
    case RO_ABORT:
        if (!running && !paused)
            return ch_fail(er, 409, "the rollout of %s is not running or paused (%s)", c->v,
                           ph ? ph : "never started");
        json_object_set_new(x, "traffic_percentile", json_integer(0));
        json_object_set_new(x, "mirror_percentile", json_integer(0));
        set_state(x, "aborted", step, c->now, "aborted by operator");
        break;
    case RO_PROMOTE:
        if (!running && !paused)
            return ch_fail(er, 409, "the rollout of %s is not running or paused (%s)", c->v,
                           ph ? ph : "never started");
        promote_doc(vs, x);
        set_state(x, "promoted", step, c->now, "promoted by operator");
        break;
    case RO_NEXT:
        if ((size_t)step + 1 >= json_array_size(steps))
            return ch_fail(er, 409, "no step after %d", step);
        json_object_set(x, "traffic_percentile", json_array_get(steps, (size_t)step + 1));
        set_state(x, "running", step + 1, c->now, NULL);
        break;
    case RO_GO_LIVE:
        json_object_set_new(x, "mirror_percentile", json_integer(0));
        json_object_set(x, "traffic_percentile", json_array_get(steps, 0));
        set_state(x, "running", 0, c->now, NULL);
        break;
    case RO_ROLLBACK:
        json_object_set_new(x, "traffic_percentile", json_integer(0));
        json_object_set_new(x, "mirror_percentile", json_integer(0));
        set_state(x, "rolled_back", step, c->now, c->reason);
        break;
    case RO_HALT:
        if (c->zero_share)
            json_object_set_new(x, "traffic_percentile", json_integer(0));
        set_state(x, "paused", step, c->now, c->reason);
        break;
    case RO_FINISH:
        if (json_is_false(json_object_get(plan, "promote"))) {
            set_state(x, "paused", step, c->now,
                      "all steps passed; promote to make it the default");
        } else {
            promote_doc(vs, x);
            set_state(x, "promoted", step, c->now, "all steps passed");
        }
        break;
    }
    return 0;
}

static void
log_change(const struct ro_change *c)
{
    const struct config *cfg = control_current();
    const struct cfg_endpoint *ep = config_endpoint(cfg, c->ep, strlen(c->ep));
    int vi = ep ? config_version_index(ep, c->v, strlen(c->v)) : -1;
    if (vi < 0)
        return;
    const struct cfg_version *v = &ep->versions[vi];
    log_event(LOG_INFO, "admin_change", ",\"op\":\"rollout_%s\",\"endpoint\":\"%s\","
              "\"version\":\"%s\",\"by\":\"%s\",\"phase\":\"%s\",\"step\":%d,"
              "\"traffic_percentile\":%.2f,\"is_default\":%s,\"generation\":%llu,"
              "\"reason\":\"%s\"", ro_op_names[c->op], log_json(c->ep), log_json(c->v),
              c->op >= RO_NEXT ? "rollout" : "operator",
              config_rollout_phase_name(v->rollout.phase) ?
              config_rollout_phase_name(v->rollout.phase) : "", v->rollout.step,
              v->traffic / (double)CFG_PCT_SCALE, v->is_default ? "true" : "false",
              (unsigned long long)cfg->generation, log_json(v->rollout.reason));
}

/* The change is applied: start the next window on the totals the last one
 * ended on, and forget a started rollout's old history. */
/* Tell the plan's webhook (SPEC §8), with the evaluation that decided a
 * driver's change (the track's newest, pushed before the change). */
static void
notify_change(const struct ro_change *c, struct track *t)
{
    json_t *gate = NULL;
    if (t != NULL && (c->op == RO_NEXT || c->op == RO_GO_LIVE || c->op == RO_ROLLBACK ||
                      c->op == RO_FINISH)) {
        json_t *ev = json_array_get(t->evals, json_array_size(t->evals) - 1);
        json_t *st = json_object_get(ev, "step");
        if (json_is_integer(st) && json_integer_value(st) == c->step)
            gate = ev;
    }
    webhook_rollout(ro_op_names[c->op], c->ep, c->v, c->op >= RO_NEXT, gate);
}

static void
change_applied(struct ro_change *c)
{
    log_change(c);
    notify_change(c, track_find(c->ep, c->v, false));
    struct track *t = track_find(c->ep, c->v, true);
    if (t == NULL)
        return;
    t->busy = false;
    if (c->op >= RO_NEXT) {
        /* The decision is carried out: nothing left to retry. */
        free(t->decision);
        t->decision = NULL;
    }
    t->progress = now_s();
    if (c->op == RO_START) {
        char k1[160], k2[160];
        key_base(k1, sizeof(k1), c->ep, c->v);
        key_evals(k2, sizeof(k2), c->ep, c->v);
        const char *argv[] = {"DEL", k1, k2};
        cmd(NULL, NULL, 3, argv);
        json_array_clear(t->evals);
        t->evals_seq++;
        t->have_base = false;
    }
    if ((c->op == RO_NEXT || c->op == RO_GO_LIVE) && c->have_totals) {
        const struct config *cfg = control_current();
        const struct cfg_endpoint *ep = config_endpoint(cfg, c->ep, strlen(c->ep));
        int vi = ep ? config_version_index(ep, c->v, strlen(c->v)) : -1;
        if (vi < 0)
            return;
        t->step = ep->versions[vi].rollout.step;
        t->since = ep->versions[vi].rollout.since;
        t->agreement = in_agreement_check(&ep->versions[vi]);
        t->have_base = true;
        snprintf(t->control, sizeof(t->control), "%s", c->control);
        memcpy(t->base_v, c->tot_v, sizeof(t->base_v));
        memcpy(t->base_c, c->tot_c, sizeof(t->base_c));
        t->started = now_s();
        t->next_look = 0;
        store_base(t);
    }
}

static void change_run(struct ro_change *c);

static void
change_finish(struct ro_change *c, int status, const char *message,
              const struct cfg_errors *errs)
{
    if (status == 0)
        change_applied(c);
    else {
        const char *why = errs && errs->n ? errs->msg[0] : message ? message : "";
        struct track *t = track_find(c->ep, c->v, false);
        if (t != NULL)
            t->busy = false;
        if (c->op >= RO_NEXT)
            log_event(LOG_WARN, "rollout_change_failed", ",\"op\":\"%s\",\"endpoint\":\"%s\","
                      "\"version\":\"%s\",\"status\":%d,\"retry\":%s,\"reason\":\"%s\"",
                      ro_op_names[c->op], log_json(c->ep), log_json(c->v), status,
                      c->edit_refused || status == 400 ? "false" : "true", log_json(why));
        if (c->op >= RO_NEXT && t != NULL) {
            if (c->edit_refused || status == 400) {
                /* The rollout changed meanwhile (an operator paused or
                 * edited it, the version went away), or the config
                 * refuses the change: the decision has nothing left to
                 * do. */
                free(t->decision);
                t->decision = NULL;
            } else
                /* Not persisted (the file unwritable, the fleet's write
                 * failed): the same change again in a second, never a
                 * new judgement (SPEC §8: a decision is final). */
                t->retry_at = now_s() + RO_RETRY_S;
        }
        /* A step the config refuses (the shares would pass 100 %, say) will
         * not get better by asking again: the rollout pauses, saying why,
         * for an operator to decide. */
        if (status == 400 && !c->edit_refused &&
            (c->op == RO_NEXT || c->op == RO_GO_LIVE || c->op == RO_FINISH)) {
            struct ro_change *h = change_new(RO_HALT, c->ep, c->v);
            if (h != NULL) {
                h->step = c->step;
                h->since = c->since;
                snprintf(h->reason, sizeof(h->reason), "the next change was refused: %s", why);
                config_utf8_fix(h->reason);
                decide(t, h);
            }
        }
    }
    if (c->done != NULL)
        c->done(c->arg, status, message, errs);
    free(c);
}

/* Carry out a decision of the driver: kept on the track (t may be NULL:
 * run once) and run now; change_finish() retries it until it is applied. */
void
decide(struct track *t, struct ro_change *c)
{
    if (t == NULL) {
        change_run(c);
        return;
    }
    free(t->decision);
    t->decision = c;
    t->retry_at = 0;
    decision_try(t);
}

/* Run a copy of the track's decision (change_finish frees the copy). */
void
decision_try(struct track *t)
{
    if (t->decision == NULL || t->busy)
        return;
    struct ro_change *c = malloc(sizeof(*c));
    if (c == NULL)
        return;
    memcpy(c, t->decision, sizeof(*c));
    c->now = (int64_t)time(NULL);
    c->done = NULL;
    c->arg = NULL;
    c->edit_refused = false;
    t->busy = true;
    t->retry_at = now_s() + RO_RETRY_S;
    change_run(c);
}

static int
fleet_edit_cb(void *arg, json_t *doc, struct cfg_edit_result *er)
{
    return change_edit(arg, doc, er);
}

static void
fleet_done_cb(void *arg, int status, const char *message, const struct cfg_errors *errs)
{
    change_finish(arg, status, message, errs);
}

/* Edit, validate, persist, apply: the path of every admin change. */
static void
change_run(struct ro_change *c)
{
    if (fleet_enabled()) {
        fleet_change(fleet_edit_cb, fleet_done_cb, c);
        return;
    }
    struct cfg_edit_result er = {0};
    struct cfg_errors errs;
    char err[1024] = "";
    cfg_errors_init(&errs);
    json_t *doc = json_deep_copy(control_current()->doc);
    int rc = doc ? change_edit(c, doc, &er) : (er.status = 500,
        snprintf(er.message, sizeof(er.message), "out of memory"), 500);
    if (rc == 0)
        rc = control_commit(doc, &errs, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "%s", er.message);
    json_decref(doc);
    change_finish(c, rc, err, &errs);
    cfg_errors_free(&errs);
}

struct ro_change *
change_new(enum ro_op op, const char *ep, const char *v)
{
    struct ro_change *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->op = op;
    snprintf(c->ep, sizeof(c->ep), "%s", ep);
    snprintf(c->v, sizeof(c->v), "%s", v);
    c->now = (int64_t)time(NULL);
    return c;
}

void
rollout_action(const char *ep, const char *v, const char *action, rollout_done_fn done,
               void *arg)
{
    static const enum ro_op ops[] = {RO_START, RO_PAUSE, RO_RESUME, RO_ABORT, RO_PROMOTE};
    int op = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(action, ro_op_names[ops[i]]) == 0)
            op = (int)ops[i];
    if (op < 0) {
        done(arg, 400, "action: must be \"start\", \"pause\", \"resume\", \"abort\" or "
             "\"promote\"", NULL);
        return;
    }
    if (op == RO_START && !redis_configured(control_current())) {
        done(arg, 409, "a rollout's gate reads the counts from Redis: configure \"redis\"",
             NULL);
        return;
    }
    struct ro_change *c = change_new((enum ro_op)op, ep, v);
    if (c == NULL) {
        done(arg, 500, "out of memory", NULL);
        return;
    }
    c->done = done;
    c->arg = arg;
    change_run(c);
}
