/*
 * The progressive rollout driver (SPEC §8), on the main thread's event loop.
 *
 * A timer looks at every version whose rollout_state is "running". At the
 * end of a step it reads both sides' totals from Redis (the whole fleet's),
 * subtracts the totals read when the step started, and asks metrics_gate()
 * for a verdict; the next step, a rollback or the promotion is then an
 * ordinary config change, edited on a copy of the document in use,
 * validated, persisted (file, or Redis with the fleet's compare-and-set)
 * and applied as a new generation, exactly like an admin PATCH.
 *
 * Redis is only spoken to asynchronously, on the metrics writer's
 * connection (metrics_redis_command): a read sent after a flush is queued
 * behind this instance's batch, so it sees our own counts up to now; other
 * instances' counts lag by at most one flush interval, on both sides alike,
 * and what a step misses at its end counts in the next one (the next
 * window starts from the very totals this one ended on).
 *
 * Kept in Redis, so that a restarted instance or another member of the
 * fleet carries on and shows the same history:
 *   sluice:{EP}:rollout:VERSION        hash, "base": the step's start
 *                                      {"step","since","started","control",
 *                                       "version":[counters],"control":[...]};
 *                                      "tests": looks spent; "decision": the
 *                                      verdict of a step whose change is not
 *                                      yet applied (see below)
 *   sluice:{EP}:rollout:VERSION:evals  list, the last 20 gate evaluations
 *   sluice:fleet:{NAME}:leader         the driving instance (SET NX PX)
 *
 * The gate judges routed traffic only (SPEC §3.3, §8): each side is its
 * total minus its pinned counts, both read by one script, atomically.
 *
 * A decision is final (SPEC §8). A verdict that moves the rollout (next
 * step, rollback, promotion) is recorded in Redis with its evaluation in
 * one transaction before its change is made; until the change is applied,
 * that same change is retried every second, and the step is never judged
 * again (no look spent twice). A driver restarted, or another taking over,
 * finds the recorded decision of the current step and carries it out
 * instead of judging.
 *
 * A running step that cannot be judged (Redis unreachable, or the primary
 * unknown) for 3 x step_s is paused with the reason, its share set to 0
 * (resume restores the step's share): a share never stays raised
 * unjudged.
 *
 * Callbacks find their rollout by name, never by a pointer kept across a
 * round trip, so a version deleted meanwhile costs nothing.
 */
#include "control/control.h"

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

#define RO_TICK_MS 250
#define RO_KEEP_EVALS 20
#define RO_REFRESH_S 1.0            /* reread history and the leader this often */
#define RO_RETRY_S 1.0              /* a decided change that failed is tried again */

struct ro_change;

struct track {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    /* the step the baseline belongs to */
    int step;
    int64_t since;
    bool agreement;                 /* the pre-live agreement check of a mirror */
    bool have_base;
    char control[CFG_NAME_MAX + 1];
    uint64_t base_v[M_COUNT], base_c[M_COUNT];
    double started;                 /* unix seconds the window began */
    double next_look;
    bool busy;                      /* a read or a change in flight */
    int tests;                      /* gates of this rollout that tested live data */
    json_t *evals;                  /* newest last, at most RO_KEEP_EVALS */
    uint64_t evals_seq;             /* local appends, to drop stale rereads */
    double refreshed;
    bool refreshing;
    /* The decision of this step whose change is not applied yet: retried
     * every RO_RETRY_S, never judged again. */
    struct ro_change *decision;
    double retry_at;
    /* When this driver last made progress on the step: took it over, read
     * its baseline, or judged it. 3 x step_s without: paused. */
    double progress;
    struct track *next;
};

static struct {
    struct event_base *base;
    struct event *tick;
    struct track *tracks;
    bool stopped;
    /* the fleet lease */
    bool leader;
    double leader_until;            /* driving stops before the lease may have lapsed */
    double next_lease;
    bool lease_busy;
    char *driver;                   /* the lease holder's id as last read */
} R;

static double
now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static struct track *
track_find(const char *ep, const char *v, bool create)
{
    for (struct track *t = R.tracks; t; t = t->next)
        if (strcmp(t->ep, ep) == 0 && strcmp(t->v, v) == 0)
            return t;
    if (!create)
        return NULL;
    struct track *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    snprintf(t->ep, sizeof(t->ep), "%s", ep);
    snprintf(t->v, sizeof(t->v), "%s", v);
    t->evals = json_array();
    t->next = R.tracks;
    R.tracks = t;
    return t;
}

/* ---- Redis plumbing ------------------------------------------------------ */

/* redis.address or redis.sentinels: the metrics writer's connection follows
 * either (metrics/primary.c), and every read here goes through it. */
static bool
redis_configured(const struct config *cfg)
{
    return cfg->redis.host != NULL || cfg->redis.n_sentinels > 0;
}

static int
cmd(metrics_redis_reply_fn fn, void *arg, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc && i < 16; i++)
        lens[i] = strlen(argv[i]);
    return metrics_redis_command(control_metrics(), fn, arg, argc, argv, lens);
}

static void
key_base(char *out, size_t n, const char *ep, const char *v)
{
    snprintf(out, n, "sluice:{%s}:rollout:%s", ep, v);
}

static void
key_evals(char *out, size_t n, const char *ep, const char *v)
{
    snprintf(out, n, "sluice:{%s}:rollout:%s:evals", ep, v);
}

/* A HGETALL reply into counters in enum metric order. */
static void
counters_from(const redisReply *r, uint64_t *c)
{
    memset(c, 0, sizeof(uint64_t) * M_COUNT);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *val = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
            continue;
        for (int m = 0; m < M_COUNT; m++)
            if (strcmp(k->str, metrics_field_names[m]) == 0)
                c[m] = strtoull(val->str, NULL, 10);
    }
}

static json_t *
counters_json(const uint64_t *c)
{
    json_t *a = json_array();
    for (int m = 0; a && m < M_COUNT; m++)
        json_array_append_new(a, json_integer((json_int_t)c[m]));
    return a;
}

static void
counters_of_json(json_t *a, uint64_t *c)
{
    memset(c, 0, sizeof(uint64_t) * M_COUNT);
    for (int m = 0; m < M_COUNT; m++) {
        json_t *x = json_array_get(a, (size_t)m);
        c[m] = json_is_integer(x) ? (uint64_t)json_integer_value(x) : 0;
    }
}

/* ---- the version's place in the config -------------------------------- */

/* The version the gate compares with: the control group's, else the default. */
static int
control_of(const struct cfg_endpoint *ep, int vi)
{
    for (int i = 0; i < ep->n_versions; i++)
        if (i != vi && ep->versions[i].group == CFG_GROUP_CONTROL)
            return i;
    return ep->default_version != vi ? ep->default_version : -1;
}

/* A mirror that compares must agree before it serves live traffic. */
static bool
in_agreement_check(const struct cfg_version *v)
{
    return v->mirror > 0 && v->traffic == 0 && v->compare.mode != CFG_COMPARE_OFF &&
           v->rollout.step == 0;
}

/* ---- changes ------------------------------------------------------------- */

enum ro_op {
    RO_START, RO_PAUSE, RO_RESUME, RO_ABORT, RO_PROMOTE,    /* an operator's actions */
    RO_NEXT, RO_GO_LIVE, RO_ROLLBACK, RO_FINISH, RO_HALT,   /* the driver's */
};

static const char *const ro_op_names[] = {"start", "pause", "resume", "abort", "promote",
    "next_step", "go_live", "rollback", "finish", "halt"};

struct ro_change {
    enum ro_op op;
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    int64_t now;
    /* the driver's changes apply only to the step they were judged on */
    int step;
    int64_t since;
    char reason[256];
    /* the totals the judged window ended on: the next step's baseline */
    bool have_totals;
    char control[CFG_NAME_MAX + 1];
    uint64_t tot_v[M_COUNT], tot_c[M_COUNT];
    bool zero_share;                /* RO_HALT: the share goes to 0 too */
    bool edit_refused;              /* change_edit() said no: asking again will not help */
    rollout_done_fn done;
    void *arg;
};

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

static void store_base(struct track *t);

/* The change is applied: start the next window on the totals the last one
 * ended on, and forget a started rollout's old history. */
static void
change_applied(struct ro_change *c)
{
    log_change(c);
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
static struct ro_change *change_new(enum ro_op op, const char *ep, const char *v);
static void decide(struct track *t, struct ro_change *c);
static void decision_try(struct track *t);

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
static void
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
static void
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

static struct ro_change *
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

/* ---- baselines and evaluations in Redis ----------------------------------- */

static void
store_base(struct track *t)
{
    char key[160];
    key_base(key, sizeof(key), t->ep, t->v);
    json_t *o = json_pack("{s:i, s:I, s:f, s:b, s:s, s:o, s:o}", "step", t->step,
                          "since", (json_int_t)t->since, "started", t->started,
                          "agreement", t->agreement, "control", t->control,
                          "version", counters_json(t->base_v),
                          "control_counts", counters_json(t->base_c));
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text == NULL)
        return;
    /* A new window: a decision recorded for the last one is done. */
    const char *argv[] = {"HSET", key, "base", text};
    const char *a2[] = {"HDEL", key, "decision"};
    cmd(NULL, NULL, 4, argv);
    cmd(NULL, NULL, 3, a2);
    free(text);
}

static json_t *
side_json(uint64_t n, double err, double p99)
{
    return json_pack("{s:I, s:o, s:o}", "requests", (json_int_t)n,
                     "error_rate", err >= 0 ? json_real(err) : json_null(),
                     "p99_ms", p99 >= 0 ? json_real(p99) : json_null());
}

static json_t *
eval_json(const struct metrics_gate_result *g, int step, int pct, int look)
{
    json_t *agreement = json_null();
    if (g->has_agreement)
        agreement = json_pack("{s:I, s:I, s:o, s:o, s:o}", "compared",
                              (json_int_t)g->compared, "equal", (json_int_t)g->equal,
                              "rate", g->agreement >= 0 ? json_real(g->agreement) : json_null(),
                              "lower", g->agreement >= 0 ? json_real(g->agreement_lo)
                                                         : json_null(),
                              "upper", g->agreement >= 0 ? json_real(g->agreement_hi)
                                                         : json_null());
    json_t *pctj = pct % CFG_PCT_SCALE == 0 ? json_integer(pct / CFG_PCT_SCALE)
                                            : json_real(pct / (double)CFG_PCT_SCALE);
    bool have_diff = g->n_control > 0 && g->n_version > 0 && isfinite(g->lo) &&
                     isfinite(g->hi);
    return json_pack("{s:I, s:i, s:o, s:i, s:s, s:s, s:o, s:o, s:{s:o, s:o, s:o, s:f}, s:o, "
                     "s:o}",
                     "time", (json_int_t)time(NULL), "step", step, "percentile", pctj,
                     "look", look, "verdict", metrics_gate_verdict_name(g->verdict),
                     "reason", g->reason,
                     "version", side_json(g->n_version, g->err_version, g->p99_version_ms),
                     "control", side_json(g->n_control, g->err_control, g->p99_control_ms),
                     "error_rate_diff",
                     "estimate", have_diff ? json_real(g->diff) : json_null(),
                     "lower", have_diff ? json_real(g->lo) : json_null(),
                     "upper", have_diff ? json_real(g->hi) : json_null(),
                     "alpha", g->has_agreement ? 0.0 : g->alpha,
                     "p99_ratio", g->p99_ratio >= 0 ? json_real(g->p99_ratio) : json_null(),
                     "agreement", agreement);
}

static void
push_eval(struct track *t, json_t *ev)
{
    if (ev == NULL)
        return;
    char *text = json_dumps(ev, JSON_COMPACT);
    json_array_append_new(t->evals, ev);
    while (json_array_size(t->evals) > RO_KEEP_EVALS)
        json_array_remove(t->evals, 0);
    t->evals_seq++;
    if (text == NULL)
        return;
    char key[160];
    key_evals(key, sizeof(key), t->ep, t->v);
    const char *a1[] = {"RPUSH", key, text};
    const char *a2[] = {"LTRIM", key, "-20", "-1"};
    cmd(NULL, NULL, 3, a1);
    cmd(NULL, NULL, 4, a2);
    free(text);
}

/* ---- reads: baseline and judgement --------------------------------------- */

enum read_kind { READ_BASE, READ_JUDGE };

struct read {
    enum read_kind kind;
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1], control[CFG_NAME_MAX + 1];
    int step;
    int64_t since;
    bool agreement;
    int pending;
    bool failed;
    json_t *stored;                 /* the stored baseline, READ_BASE */
    int tests;                      /* the stored count of tests, READ_BASE */
    json_t *decision;               /* the stored decision, READ_BASE */
    uint64_t tot_v[M_COUNT], tot_c[M_COUNT];    /* routed: totals minus pinned */
};

/* The track a read belongs to, if it still describes the same step. */
static struct track *
read_track(struct read *rd)
{
    struct track *t = R.stopped ? NULL : track_find(rd->ep, rd->v, false);
    if (t == NULL)
        return NULL;
    /* Another step meanwhile: drive() has already started over. */
    if (t->step != rd->step || t->since != rd->since || t->agreement != rd->agreement)
        return NULL;
    return t;
}

static void
read_free(struct read *rd)
{
    json_decref(rd->stored);
    json_decref(rd->decision);
    free(rd);
}

/* ---- decisions in Redis --------------------------------------------------- */

static json_t *
decision_json(const struct ro_change *c)
{
    return json_pack("{s:s, s:i, s:I, s:s, s:b, s:s, s:o, s:o}", "op", ro_op_names[c->op],
                     "step", c->step, "since", (json_int_t)c->since, "reason", c->reason,
                     "have_totals", c->have_totals, "control", c->control,
                     "version", counters_json(c->tot_v), "control_counts",
                     counters_json(c->tot_c));
}

/* The recorded decision of step (step, since), or NULL. */
static struct ro_change *
decision_of_json(json_t *d, const char *ep, const char *v, int step, int64_t since)
{
    json_t *js = json_object_get(d, "step"), *jt = json_object_get(d, "since");
    json_t *jo = json_object_get(d, "op"), *jr = json_object_get(d, "reason");
    json_t *jc = json_object_get(d, "control");
    if (!json_is_integer(js) || json_integer_value(js) != step || !json_is_integer(jt) ||
        json_integer_value(jt) != since || !json_is_string(jo) || !json_is_string(jr) ||
        !json_is_string(jc))
        return NULL;
    int op = -1;
    for (int i = RO_NEXT; i <= RO_HALT; i++)
        if (strcmp(json_string_value(jo), ro_op_names[i]) == 0)
            op = i;
    if (op < 0)
        return NULL;
    struct ro_change *c = change_new((enum ro_op)op, ep, v);
    if (c == NULL)
        return NULL;
    c->step = step;
    c->since = since;
    snprintf(c->reason, sizeof(c->reason), "%s", json_string_value(jr));
    snprintf(c->control, sizeof(c->control), "%s", json_string_value(jc));
    c->have_totals = json_is_true(json_object_get(d, "have_totals"));
    counters_of_json(json_object_get(d, "version"), c->tot_v);
    counters_of_json(json_object_get(d, "control_counts"), c->tot_c);
    return c;
}

struct recording {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    struct ro_change *c;
};

/* The evaluation and its decision are in Redis (or the connection went:
 * the decision holds all the same): carry it out. */
static void
on_recorded(void *reply, void *arg)
{
    struct recording *rc = arg;
    struct track *t = R.stopped ? NULL : track_find(rc->ep, rc->v, false);
    if (t == NULL || t->step != rc->c->step || t->since != rc->c->since) {
        free(rc->c);
        free(rc);
        return;
    }
    if (reply == NULL || ((redisReply *)reply)->type != REDIS_REPLY_ARRAY)
        log_event(LOG_WARN, "rollout_decision_unrecorded", ",\"endpoint\":\"%s\","
                  "\"version\":\"%s\",\"step\":%d,\"op\":\"%s\",\"reason\":\"Redis did not "
                  "confirm the record: the decision is carried out all the same\"",
                  log_json(rc->ep), log_json(rc->v), rc->c->step, ro_op_names[rc->c->op]);
    t->busy = false;
    decide(t, rc->c);
    free(rc);
}

/* One transaction: the evaluation, the look it spent and the decision, so
 * that a driver that dies before the change is made (or another that takes
 * over) carries the decision out instead of judging the step again. */
static void
record_decision(struct track *t, json_t *ev, bool tested, struct ro_change *c)
{
    char kb[160], ke[160];
    key_base(kb, sizeof(kb), t->ep, t->v);
    key_evals(ke, sizeof(ke), t->ep, t->v);
    char *evt = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_t *dj = decision_json(c);
    char *dt = dj ? json_dumps(dj, JSON_COMPACT) : NULL;
    json_decref(dj);
    struct recording *rc = calloc(1, sizeof(*rc));
    bool sent = false;
    if (rc != NULL && evt != NULL && dt != NULL) {
        snprintf(rc->ep, sizeof(rc->ep), "%s", t->ep);
        snprintf(rc->v, sizeof(rc->v), "%s", t->v);
        rc->c = c;
        const char *m[] = {"MULTI"}, *x[] = {"EXEC"};
        const char *a1[] = {"RPUSH", ke, evt};
        const char *a2[] = {"LTRIM", ke, "-20", "-1"};
        const char *a3[] = {"HINCRBY", kb, "tests", "1"};
        const char *a4[] = {"HSET", kb, "decision", dt};
        sent = cmd(NULL, NULL, 1, m) == 0 && cmd(NULL, NULL, 3, a1) == 0 &&
               cmd(NULL, NULL, 4, a2) == 0 && (!tested || cmd(NULL, NULL, 4, a3) == 0) &&
               cmd(NULL, NULL, 4, a4) == 0 && cmd(on_recorded, rc, 1, x) == 0;
        /* A command refused halfway: the connection is gone, and with it
         * the open transaction. */
    }
    free(evt);
    free(dt);
    if (!sent) {
        free(rc);
        decide(t, c);
        return;
    }
    t->busy = true;
}

static void
base_done(struct read *rd)
{
    struct track *t = read_track(rd);
    if (t == NULL)
        return;
    t->busy = false;
    if (rd->failed || t->decision != NULL)
        return;
    json_t *s = rd->stored;
    json_t *js = json_object_get(s, "step"), *jt = json_object_get(s, "since");
    json_t *jc = json_object_get(s, "control"), *jst = json_object_get(s, "started");
    if (json_is_integer(js) && json_integer_value(js) == rd->step && json_is_integer(jt) &&
        json_integer_value(jt) == rd->since && json_is_string(jc) &&
        strcmp(json_string_value(jc), rd->control) == 0 && json_is_number(jst) &&
        json_is_true(json_object_get(s, "agreement")) == rd->agreement) {
        /* A restart, or another instance took over: the same window goes on. */
        counters_of_json(json_object_get(s, "version"), t->base_v);
        counters_of_json(json_object_get(s, "control_counts"), t->base_c);
        t->started = json_number_value(jst);
    } else {
        memcpy(t->base_v, rd->tot_v, sizeof(t->base_v));
        memcpy(t->base_c, rd->tot_c, sizeof(t->base_c));
        t->started = now_s();
        snprintf(t->control, sizeof(t->control), "%s", rd->control);
        store_base(t);
    }
    snprintf(t->control, sizeof(t->control), "%s", rd->control);
    t->tests = rd->tests;
    t->have_base = true;
    t->next_look = 0;
    t->progress = now_s();
    /* This step was judged already and its change not made (the driver
     * died, or lost the lease, in between): carry out that decision. */
    struct ro_change *c = rd->decision ? decision_of_json(rd->decision, rd->ep, rd->v,
                                                          rd->step, rd->since) : NULL;
    if (c != NULL) {
        log_event(LOG_INFO, "rollout_decision_resumed", ",\"endpoint\":\"%s\","
                  "\"version\":\"%s\",\"step\":%d,\"op\":\"%s\"", log_json(rd->ep),
                  log_json(rd->v), rd->step, ro_op_names[c->op]);
        decide(t, c);
    }
}

static void judge(struct track *t, struct read *rd);

static void
sub_pinned(uint64_t *tot, const uint64_t *pinned)
{
    for (int m = 0; m < M_COUNT; m++)
        tot[m] = tot[m] >= pinned[m] ? tot[m] - pinned[m] : 0;
}

static void
on_read_reply(void *reply, void *arg, int which)
{
    struct read *rd = arg;
    redisReply *r = reply;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        rd->failed = true;
    else if (which == 0 && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
        if (r->element[0]->type == REDIS_REPLY_STRING)
            rd->stored = json_loadb(r->element[0]->str, r->element[0]->len, 0, NULL);
        if (r->element[1]->type == REDIS_REPLY_STRING)
            rd->tests = atoi(r->element[1]->str);
        if (r->element[2]->type == REDIS_REPLY_STRING)
            rd->decision = json_loadb(r->element[2]->str, r->element[2]->len, 0, NULL);
    } else if (which == 1 && r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
        /* total:V, pinned:V, total:C, pinned:C, read at one instant */
        uint64_t pin[M_COUNT];
        counters_from(r->element[0], rd->tot_v);
        counters_from(r->element[1], pin);
        sub_pinned(rd->tot_v, pin);
        counters_from(r->element[2], rd->tot_c);
        counters_from(r->element[3], pin);
        sub_pinned(rd->tot_c, pin);
    } else if (which == 1)
        rd->failed = true;
    if (--rd->pending > 0)
        return;
    if (rd->kind == READ_BASE)
        base_done(rd);
    else {
        struct track *t = read_track(rd);
        if (t != NULL) {
            t->busy = false;
            if (!rd->failed && t->decision == NULL)
                judge(t, rd);
        }
    }
    read_free(rd);
}

static void on_reply_stored(void *reply, void *arg) { on_read_reply(reply, arg, 0); }
static void on_reply_counts(void *reply, void *arg) { on_read_reply(reply, arg, 1); }

/* Both sides' totals and pinned counts in one atomic read (one hash tag). */
static const char COUNTS_SCRIPT[] =
    "local out = {} for i = 1, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end "
    "return out";

/* Send the reads: the stored baseline, looks and decision (READ_BASE) and
 * both sides' routed counts, after this instance's own counts. */
static void
read_start(struct track *t, enum read_kind kind, const char *control)
{
    struct read *rd = calloc(1, sizeof(*rd));
    if (rd == NULL)
        return;
    rd->kind = kind;
    snprintf(rd->ep, sizeof(rd->ep), "%s", t->ep);
    snprintf(rd->v, sizeof(rd->v), "%s", t->v);
    snprintf(rd->control, sizeof(rd->control), "%s", control);
    rd->step = t->step;
    rd->since = t->since;
    rd->agreement = t->agreement;
    metrics_redis_flush(control_metrics());
    char kb[160], tv[160], pv[160], tc[160], pc[160];
    key_base(kb, sizeof(kb), t->ep, t->v);
    snprintf(tv, sizeof(tv), "sluice:{%s}:total:%s", t->ep, t->v);
    snprintf(pv, sizeof(pv), "sluice:{%s}:pinned:%s", t->ep, t->v);
    snprintf(tc, sizeof(tc), "sluice:{%s}:total:%s", t->ep, control);
    snprintf(pc, sizeof(pc), "sluice:{%s}:pinned:%s", t->ep, control);
    const char *a0[] = {"HMGET", kb, "base", "tests", "decision"};
    const char *a1[] = {"EVAL", COUNTS_SCRIPT, "4", tv, pv, tc, pc};
    /* Each command either gets its callback later or fails here. */
    if (kind == READ_BASE) {
        rd->pending = 2;
        if (cmd(on_reply_stored, rd, 5, a0) < 0) {
            free(rd);
            return;
        }
    } else
        rd->pending = 1;
    if (cmd(on_reply_counts, rd, 7, a1) < 0) {
        rd->failed = true;
        if (--rd->pending == 0) {
            read_free(rd);
            return;
        }
    }
    t->busy = true;
}

/* The gate on the step's window, and what follows from its verdict. */
static void
judge(struct track *t, struct read *rd)
{
    const struct config *cfg = control_current();
    const struct cfg_endpoint *ep = config_endpoint(cfg, t->ep, strlen(t->ep));
    int vi = ep ? config_version_index(ep, t->v, strlen(t->v)) : -1;
    if (vi < 0)
        return;
    const struct cfg_version *v = &ep->versions[vi];
    const struct cfg_rollout *ro = &v->rollout;
    if (ro->phase != CFG_ROLLOUT_RUNNING || ro->step != t->step || ro->since != t->since)
        return;
    uint64_t wv[M_COUNT], wc[M_COUNT];
    for (int m = 0; m < M_COUNT; m++) {
        wv[m] = rd->tot_v[m] >= t->base_v[m] ? rd->tot_v[m] - t->base_v[m] : 0;
        wc[m] = rd->tot_c[m] >= t->base_c[m] ? rd->tot_c[m] - t->base_c[m] : 0;
    }
    struct metrics_gate_params gp = {ro->min_requests, ro->max_error_rate_increase,
                                     ro->max_p99_ratio, ro->min_agreement};
    struct metrics_gate_input in;
    memset(&in, 0, sizeof(in));
    metrics_gate_side_from(&in.control, wc);
    metrics_gate_side_from(&in.version, wv);
    struct metrics_gate_agreement ag;
    if (t->agreement) {
        uint64_t total = wv[M_CMP_TOTAL], unknown = wv[M_CMP_UNKNOWN];
        ag.compared = total >= unknown ? total - unknown : 0;
        ag.equal = wv[M_CMP_EQUAL];
        in.agreement = &ag;
    }
    /* Every test of live data spends alpha, whichever step it judges: a
     * step run again (resumed) is a look beyond the plan. A step is never
     * judged twice otherwise: its decision is recorded with the look. */
    in.look = t->tests + 1;
    in.looks = ro->n_steps;
    double now = now_s();
    in.elapsed_s = now - t->started;
    in.step_s = ro->step_s;
    struct metrics_gate_result g;
    metrics_gate(&gp, &in, &g);
    t->progress = now;
    bool tested = !t->agreement && g.verdict != METRICS_GATE_HOLD;
    json_t *ev = eval_json(&g, ro->step, v->traffic, t->agreement ? 0 : in.look);
    log_event(LOG_INFO, "rollout_gate", ",\"endpoint\":\"%s\",\"version\":\"%s\",\"step\":%d,"
              "\"look\":%d,\"verdict\":\"%s\",\"reason\":\"%s\",\"requests\":%llu,"
              "\"control_requests\":%llu", log_json(t->ep), log_json(t->v), ro->step, t->agreement ? 0 : in.look,
              metrics_gate_verdict_name(g.verdict), log_json(g.reason),
              (unsigned long long)g.n_version, (unsigned long long)g.n_control);
    if (g.verdict == METRICS_GATE_HOLD) {
        push_eval(t, ev);
        double again = ro->step_s / 3.0;
        t->next_look = now + (again < 1 ? 1 : again);
        return;
    }
    enum ro_op op;
    if (g.verdict == METRICS_GATE_FAIL)
        op = RO_ROLLBACK;
    else if (t->agreement)
        op = RO_GO_LIVE;
    else if (ro->step + 1 < ro->n_steps)
        op = RO_NEXT;
    else
        op = RO_FINISH;
    struct ro_change *c = change_new(op, t->ep, t->v);
    if (c == NULL) {
        json_decref(ev);
        return;
    }
    c->step = ro->step;
    c->since = ro->since;
    /* Steps are counted from 1 here, as on the dashboard and in sluicectl. */
    if (t->agreement)
        snprintf(c->reason, sizeof(c->reason), "agreement check before step 1: %s", g.reason);
    else
        snprintf(c->reason, sizeof(c->reason), "step %d of %d (%g %%): %s", ro->step + 1,
                 ro->n_steps, ro->steps[ro->step] / (double)CFG_PCT_SCALE, g.reason);
    c->have_totals = true;
    snprintf(c->control, sizeof(c->control), "%s", rd->control);
    memcpy(c->tot_v, rd->tot_v, sizeof(c->tot_v));
    memcpy(c->tot_c, rd->tot_c, sizeof(c->tot_c));
    if (tested)
        t->tests++;
    /* Kept locally at once, like push_eval; Redis gets it with the decision. */
    json_t *local = ev ? json_deep_copy(ev) : NULL;
    if (local != NULL) {
        json_array_append_new(t->evals, local);
        while (json_array_size(t->evals) > RO_KEEP_EVALS)
            json_array_remove(t->evals, 0);
        t->evals_seq++;
    }
    record_decision(t, ev, tested, c);
    json_decref(ev);
}

/* ---- history for every instance ------------------------------------------ */

struct reread {
    char ep[CFG_NAME_MAX + 1], v[CFG_NAME_MAX + 1];
    uint64_t seq;
};

static void
on_evals(void *reply, void *arg)
{
    struct reread *rr = arg;
    redisReply *r = reply;
    struct track *t = R.stopped ? NULL : track_find(rr->ep, rr->v, false);
    if (t != NULL) {
        t->refreshing = false;
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && t->evals_seq == rr->seq) {
            json_t *a = json_array();
            for (size_t i = 0; a && i < r->elements; i++) {
                redisReply *e = r->element[i];
                json_t *ev = e->type == REDIS_REPLY_STRING
                    ? json_loadb(e->str, e->len, 0, NULL) : NULL;
                if (ev != NULL)
                    json_array_append_new(a, ev);
            }
            if (a != NULL) {
                json_decref(t->evals);
                t->evals = a;
            }
        }
    }
    free(rr);
}

static void
refresh(struct track *t, double now)
{
    if (t->refreshing || now - t->refreshed < RO_REFRESH_S)
        return;
    struct reread *rr = calloc(1, sizeof(*rr));
    if (rr == NULL)
        return;
    snprintf(rr->ep, sizeof(rr->ep), "%s", t->ep);
    snprintf(rr->v, sizeof(rr->v), "%s", t->v);
    rr->seq = t->evals_seq;
    char key[160];
    key_evals(key, sizeof(key), t->ep, t->v);
    const char *argv[] = {"LRANGE", key, "0", "-1"};
    if (cmd(on_evals, rr, 4, argv) < 0) {
        free(rr);
        return;
    }
    t->refreshing = true;
    t->refreshed = now;
}

/* ---- the fleet lease --------------------------------------------------------- */

static const char RENEW_SCRIPT[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
static const char RELEASE_SCRIPT[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('DEL', KEYS[1]) else return 0 end";

static void
lease_key(char *out, size_t n)
{
    snprintf(out, n, "sluice:fleet:{%s}:leader", fleet_name());
}

static void
set_driver(const char *id)
{
    if (R.driver != NULL && id != NULL && strcmp(R.driver, id) == 0)
        return;
    free(R.driver);
    R.driver = id ? strdup(id) : NULL;
}

static void
on_lease_get(void *reply, void *arg)
{
    redisReply *r = reply;
    if (!R.stopped && r != NULL)
        set_driver(r->type == REDIS_REPLY_STRING ? r->str : NULL);
}

/* fleet.leader_lease_ms: how long a driver that stopped renewing blocks
 * the others. */
static int
lease_ms(void)
{
    return control_current()->fleet_lease_ms;
}

static void
on_lease(void *reply, void *arg)
{
    redisReply *r = reply;
    double sent = *(double *)arg;
    free(arg);
    if (R.stopped)
        return;
    R.lease_busy = false;
    bool held = r != NULL && ((r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) ||
                              (r->type == REDIS_REPLY_INTEGER && r->integer == 1));
    bool was = R.leader;
    R.leader = held;
    if (held) {
        R.leader_until = sent + lease_ms() / 1000.0;
        R.next_lease = sent + lease_ms() / 3000.0;
        set_driver(metrics_redis_instance(control_metrics()));
    } else {
        R.next_lease = now_s() + 1;
        char key[160];
        lease_key(key, sizeof(key));
        const char *argv[] = {"GET", key};
        cmd(on_lease_get, NULL, 2, argv);
    }
    if (held != was) {
        log_event(LOG_INFO, held ? "rollout_driver_elected" : "rollout_driver_lost",
                  ",\"fleet\":\"%s\",\"lease_ms\":%d", log_json(fleet_name()), lease_ms());
        /* A new driver starts from what Redis holds (a decision recorded
         * there included), and gives the step time to be judged. */
        for (struct track *t = R.tracks; t; t = t->next) {
            t->have_base = false;
            t->busy = false;
            free(t->decision);
            t->decision = NULL;
            t->progress = 0;
        }
    }
}

static void
lease_tick(double now)
{
    if (R.leader && now >= R.leader_until - 1)
        R.leader = false;           /* unrenewed: another may hold it soon */
    if (R.lease_busy || now < R.next_lease)
        return;
    char key[160], ms[32];
    lease_key(key, sizeof(key));
    snprintf(ms, sizeof(ms), "%d", lease_ms());
    const char *id = metrics_redis_instance(control_metrics());
    double *sent = malloc(sizeof(*sent));
    if (sent == NULL)
        return;
    *sent = now;
    int rc;
    if (R.leader) {
        const char *argv[] = {"EVAL", RENEW_SCRIPT, "1", key, id, ms};
        rc = cmd(on_lease, sent, 6, argv);
    } else {
        const char *argv[] = {"SET", key, id, "NX", "PX", ms};
        rc = cmd(on_lease, sent, 6, argv);
    }
    if (rc < 0) {
        free(sent);
        R.next_lease = now + 1;
        return;
    }
    R.lease_busy = true;
}

/* ---- the timer ---------------------------------------------------------------- */

static void
drive(struct track *t, const struct cfg_endpoint *ep, int vi, double now)
{
    const struct cfg_version *v = &ep->versions[vi];
    const struct cfg_rollout *ro = &v->rollout;
    bool agreement = in_agreement_check(v);
    if (t->step != ro->step || t->since != ro->since || t->agreement != agreement) {
        t->step = ro->step;
        t->since = ro->since;
        t->agreement = agreement;
        t->have_base = false;
        t->busy = false;
        free(t->decision);
        t->decision = NULL;
        t->progress = now;
    }
    if (t->progress == 0)
        t->progress = now;
    if (t->decision != NULL) {
        /* Decided: only the change is left, the same one until applied. */
        if (now >= t->retry_at)
            decision_try(t);
        return;
    }
    if (now - t->progress > METRICS_GATE_HOLD_STEPS * (double)ro->step_s) {
        /* Not judged for 3 x step_s: Redis away, the sentinels silent, a
         * read never answered. The share goes back to 0 and the rollout
         * pauses, saying why (SPEC §8). */
        struct ro_change *c = change_new(RO_HALT, t->ep, t->v);
        if (c == NULL)
            return;
        c->step = ro->step;
        c->since = ro->since;
        c->zero_share = true;
        snprintf(c->reason, sizeof(c->reason), "step %d could not be judged for %.0f s "
                 "(3 x step_s): %s; the share is 0 until resumed", ro->step + 1,
                 now - t->progress, metrics_redis_connected(control_metrics()) ?
                 "Redis did not answer the gate's reads" : "Redis is unreachable");
        config_utf8_fix(c->reason);
        log_event(LOG_WARN, "rollout_unjudged", ",\"endpoint\":\"%s\",\"version\":\"%s\","
                  "\"step\":%d,\"reason\":\"%s\"", log_json(t->ep), log_json(t->v), ro->step,
                  log_json(c->reason));
        t->busy = false;            /* a read still owed is ignored once the state moves */
        decide(t, c);
        return;
    }
    if (t->busy)
        return;
    int ci = control_of(ep, vi);
    if (ci < 0)
        return;
    const char *control = ep->versions[ci].name;
    if (!t->have_base || strcmp(t->control, control) != 0) {
        /* A new step, a restart, a new driver, or a new control: find or
         * take the baseline. */
        t->have_base = false;
        read_start(t, READ_BASE, control);
        return;
    }
    /* One flush interval past the step's end: the fleet's counts for the
     * step are in Redis by then, on both sides alike. */
    double flush_s = control_current()->redis.flush_interval_ms / 1000.0;
    if (now < t->started + ro->step_s + flush_s || now < t->next_look)
        return;
    read_start(t, READ_JUDGE, control);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    const struct config *cfg = control_current();
    double now = now_s();
    if (cfg == NULL || !redis_configured(cfg))
        return;
    if (fleet_enabled())
        lease_tick(now);
    else {
        R.leader = true;
        set_driver(metrics_redis_instance(control_metrics()));
    }
    for (int e = 0; e < cfg->n_endpoints; e++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[e];
        for (int i = 0; i < ep->n_versions; i++) {
            const struct cfg_rollout *ro = &ep->versions[i].rollout;
            if (!ro->has_plan || ro->phase == CFG_ROLLOUT_NONE)
                continue;
            struct track *t = track_find(ep->name, ep->versions[i].name, true);
            if (t == NULL)
                continue;
            /* Others' history, or ours after a restart (nothing pushed
             * here yet): reread. */
            if (!R.leader || ro->phase != CFG_ROLLOUT_RUNNING || t->evals_seq == 0)
                refresh(t, now);
            if (R.leader && ro->phase == CFG_ROLLOUT_RUNNING)
                drive(t, ep, i, now);
        }
    }
}

void
rollout_start(struct event_base *base)
{
    R.base = base;
    R.tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    if (R.tick == NULL)
        return;
    struct timeval tv = {0, RO_TICK_MS * 1000};
    event_add(R.tick, &tv);
}

void
rollout_release(void)
{
    if (R.tick != NULL)
        event_del(R.tick);
    if (R.leader && fleet_enabled()) {
        char key[160];
        lease_key(key, sizeof(key));
        const char *id = metrics_redis_instance(control_metrics());
        const char *argv[] = {"EVAL", RELEASE_SCRIPT, "1", key, id};
        cmd(NULL, NULL, 5, argv);
    }
    R.leader = false;
}

void
rollout_stop(void)
{
    R.stopped = true;
    if (R.tick != NULL)
        event_free(R.tick);
    R.tick = NULL;
    while (R.tracks != NULL) {
        struct track *t = R.tracks;
        R.tracks = t->next;
        json_decref(t->evals);
        free(t->decision);
        free(t);
    }
    free(R.driver);
    R.driver = NULL;
}

/* ---- descriptions ---------------------------------------------------------- */

static json_t *
pct_json(int hundredths)
{
    if (hundredths % CFG_PCT_SCALE == 0)
        return json_integer(hundredths / CFG_PCT_SCALE);
    return json_real(hundredths / (double)CFG_PCT_SCALE);
}

json_t *
rollout_plan_json(const struct cfg_rollout *ro)
{
    if (!ro->has_plan)
        return json_null();
    json_t *steps = json_array();
    for (int i = 0; steps && i < ro->n_steps; i++)
        json_array_append_new(steps, pct_json(ro->steps[i]));
    return json_pack("{s:o, s:i, s:b, s:{s:I, s:f, s:f, s:f}}", "steps", steps,
                     "step_s", ro->step_s, "promote", ro->promote, "gate",
                     "min_requests", (json_int_t)ro->min_requests,
                     "max_error_rate_increase", ro->max_error_rate_increase,
                     "max_p99_ratio", ro->max_p99_ratio, "min_agreement", ro->min_agreement);
}

json_t *
rollout_state_json(const struct cfg_rollout *ro)
{
    if (ro->phase == CFG_ROLLOUT_NONE)
        return json_null();
    json_t *o = json_pack("{s:s, s:i, s:I, s:o}", "phase", config_rollout_phase_name(ro->phase),
                          "step", ro->step, "since", (json_int_t)ro->since,
                          "reason", ro->reason ? json_string(ro->reason) : json_null());
    if (o != NULL && ro->operator_changed)
        json_object_set_new(o, "operator_changed", json_true());
    return o;
}

json_t *
rollout_describe(const struct cfg_endpoint *ep, int vi)
{
    const struct cfg_version *v = &ep->versions[vi];
    const struct cfg_rollout *ro = &v->rollout;
    struct track *t = track_find(ep->name, v->name, false);
    json_t *state = json_null();
    if (ro->phase != CFG_ROLLOUT_NONE) {
        double started = (double)ro->since;
        if (t != NULL && t->have_base && t->step == ro->step && t->since == ro->since)
            started = t->started;
        state = json_pack("{s:s, s:i, s:I, s:o, s:o, s:I}", "phase",
                          config_rollout_phase_name(ro->phase), "step", ro->step,
                          "since", (json_int_t)ro->since,
                          "reason", ro->reason ? json_string(ro->reason) : json_null(),
                          "traffic_percentile", pct_json(v->traffic),
                          "step_started", (json_int_t)floor(started));
    }
    json_t *evals = t != NULL ? json_deep_copy(t->evals) : json_array();
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "endpoint", ep->name, "version",
                     v->name, "plan", rollout_plan_json(ro), "state", state,
                     "driver", R.driver ? json_string(R.driver) : json_null(),
                     "evaluations", evals ? evals : json_array());
}
