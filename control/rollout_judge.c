/*
 * The rollout driver's judgement (SPEC §8; see rollout.c for the design):
 * a step's baseline and totals read from Redis, routed traffic only; the
 * gate's verdict (metrics_gate) recorded with its evaluation before its
 * change is made; the timer that drives every running rollout, the start,
 * release and stop of the driver.
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
    prometheus_gate_verdict(t->ep, t->v, metrics_gate_verdict_name(g.verdict));
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
