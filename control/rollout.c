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
 *
 * The files: rollout.c holds the state (struct rollout_state and struct
 * track, control/internal.h), the Redis plumbing, baselines and
 * evaluations, the history every instance rereads, the fleet lease and the
 * descriptions; rollout_change.c the changes (an operator's actions and
 * the driver's decisions as config edits); rollout_judge.c the reads, the
 * judgement, decisions recorded in Redis, and the timer. Calls run
 * rollout_judge.c -> rollout_change.c -> rollout.c.
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

struct rollout_state rollout_state;

double
now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

struct track *
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
bool
redis_configured(const struct config *cfg)
{
    return cfg->redis.host != NULL || cfg->redis.n_sentinels > 0;
}

int
cmd(metrics_redis_reply_fn fn, void *arg, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc && i < 16; i++)
        lens[i] = strlen(argv[i]);
    return metrics_redis_command(control_metrics(), fn, arg, argc, argv, lens);
}

void
key_base(char *out, size_t n, const char *ep, const char *v)
{
    snprintf(out, n, "sluice:{%s}:rollout:%s", ep, v);
}

void
key_evals(char *out, size_t n, const char *ep, const char *v)
{
    snprintf(out, n, "sluice:{%s}:rollout:%s:evals", ep, v);
}

/* A HGETALL reply into counters in enum metric order. */
void
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

json_t *
counters_json(const uint64_t *c)
{
    json_t *a = json_array();
    for (int m = 0; a && m < M_COUNT; m++)
        json_array_append_new(a, json_integer((json_int_t)c[m]));
    return a;
}

void
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
int
control_of(const struct cfg_endpoint *ep, int vi)
{
    for (int i = 0; i < ep->n_versions; i++)
        if (i != vi && ep->versions[i].group == CFG_GROUP_CONTROL)
            return i;
    return ep->default_version != vi ? ep->default_version : -1;
}

/* A mirror that compares must agree before it serves live traffic. */
bool
in_agreement_check(const struct cfg_version *v)
{
    return v->mirror > 0 && v->traffic == 0 && v->compare.mode != CFG_COMPARE_OFF &&
           v->rollout.step == 0;
}

/* ---- baselines and evaluations in Redis ----------------------------------- */

void
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

json_t *
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

void
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

void
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

void
lease_key(char *out, size_t n)
{
    snprintf(out, n, "sluice:fleet:{%s}:leader", fleet_name());
}

void
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

void
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
    json_t *plan = json_pack("{s:o, s:i, s:b, s:{s:I, s:f, s:f, s:f}}", "steps", steps,
                     "step_s", ro->step_s, "promote", ro->promote, "gate",
                     "min_requests", (json_int_t)ro->min_requests,
                     "max_error_rate_increase", ro->max_error_rate_increase,
                     "max_p99_ratio", ro->max_p99_ratio, "min_agreement", ro->min_agreement);
    /* The webhook's header values may be credentials: names only. */
    if (plan != NULL && ro->notify.url != NULL) {
        json_t *names = json_array();
        for (int i = 0; names && i < ro->notify.n_headers; i++)
            json_array_append_new(names, json_string(ro->notify.header_names[i]));
        json_object_set_new(plan, "notify", json_pack("{s:s, s:o}", "url", ro->notify.url,
                                                      "header_names", names));
    }
    return plan;
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
