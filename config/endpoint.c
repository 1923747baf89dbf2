/*
 * Endpoints and versions of the config (SPEC §2.1-§2.3, §7, §8): health
 * checks, upstreams, the shadow "compare" object, the progressive rollout
 * plan and state, each version, each endpoint with its split checks.
 * parse_endpoint() is called by parse_root() (config.c).
 */
#include "config/config.h"
#include "config/internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- sections ---------------------------------------------------------- */

/* A path that goes into an upstream request line (version and health
 * check paths): a CR, LF or space there would split or forge the request. */
static void
check_request_path(struct pctx *p, const char *parent, const char *value)
{
    char sp[PATH_MAX_LEN];
    if (value == NULL)
        return;
    subpath(sp, parent, "path");
    if (value[0] != '/')
        cfg_err(p, sp, "must start with /");
    else if (!config_text_plain(value))
        cfg_err(p, sp, "must not contain control characters or spaces");
}

/* Keys are presented in an Authorization header and returned as JSON by
 * the admin API: text, whatever source they came from. */
static void
check_key_text(struct pctx *p, const char *parent, const char *key, const char *value)
{
    char sp[PATH_MAX_LEN];
    if (value == NULL)
        return;
    bool ok = config_utf8_valid(value, strlen(value));
    for (const unsigned char *c = (const unsigned char *)value; ok && *c; c++)
        ok = *c >= 0x20 && *c != 0x7f;
    if (!ok) {
        subpath(sp, parent, key);
        cfg_err(p, sp, "must be text (UTF-8 without control characters)");
    }
}

static void
parse_health(struct pctx *p, json_t *obj, const char *path,
             struct cfg_health *h)
{
    static const char *const fields[] = {"path", "interval_ms", "timeout_ms",
        "failure_threshold", "success_threshold", NULL};

    memset(h, 0, sizeof(*h));
    if (obj == NULL)
        return;
    check_fields(p, obj, path, fields);
    h->enabled = true;
    get_str(p, obj, path, "path", &h->path, "/");
    check_request_path(p, path, h->path);
    get_int(p, obj, path, "interval_ms", &h->interval_ms, 2000, 10, 3600000);
    get_int(p, obj, path, "timeout_ms", &h->timeout_ms, 1000, 1, 3600000);
    get_int(p, obj, path, "failure_threshold", &h->failure_threshold, 3, 1, 100);
    get_int(p, obj, path, "success_threshold", &h->success_threshold, 1, 1, 100);
}

static void
parse_upstreams(struct pctx *p, json_t *obj, const char *path,
                struct cfg_version *v)
{
    json_t *arr = json_object_get(obj, "upstreams");
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    subpath(sp, path, "upstreams");
    if (arr == NULL || json_is_null(arr)) {
        cfg_err(p, sp, "required: 1 to %d upstream addresses", CFG_MAX_UPSTREAMS);
        return;
    }
    if (!json_is_array(arr)) {
        cfg_err(p, sp, "must be an array of addresses");
        return;
    }
    size_t n = json_array_size(arr);
    if (n < 1 || n > CFG_MAX_UPSTREAMS) {
        cfg_err(p, sp, "must hold 1 to %d addresses, not %zu", CFG_MAX_UPSTREAMS, n);
        return;
    }
    v->upstreams = calloc(n, sizeof(*v->upstreams));
    if (v->upstreams == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(arr, i);
        indexpath(ip, sp, i);
        if (!json_is_string(a)) {
            cfg_err(p, ip, "must be a string");
            continue;
        }
        struct cfg_upstream *u = &v->upstreams[v->n_upstreams];
        if (!config_text_plain(json_string_value(a))) {
            cfg_err(p, ip, "must not contain control characters or spaces");
            continue;
        }
        if (config_parse_address(json_string_value(a), &u->host, &u->port,
                                 &u->is_unix) < 0) {
            char q[128];
            cfg_err(p, ip, "\"%s\" is not host:port, [v6]:port or unix:/path",
                    config_utf8_clip(q, sizeof(q), json_string_value(a)));
            continue;
        }
        u->address = xstrdup(json_string_value(a));
        v->n_upstreams++;
    }
}

const char *
config_compare_mode_name(enum cfg_compare_mode m)
{
    return m == CFG_COMPARE_JSON ? "json" : m == CFG_COMPARE_EXACT ? "exact" : "off";
}

bool
config_compare_path_valid(const char *s)
{
    size_t len = strlen(s), seg = 0;
    if (len == 0 || len > 256 || !config_utf8_valid(s, len))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c == '.') {
            if (seg == 0)
                return false;
            seg = 0;
        } else
            seg++;
    }
    return seg > 0;
}

/* A non-negative finite number at obj.key (integer or real). */
static void
get_tol(struct pctx *p, json_t *obj, const char *path, const char *key, double *dst)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = 0;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 1e300) {
        cfg_err(p, sp, "must be a non-negative number");
        return;
    }
    *dst = json_number_value(v);
}

/* The "compare" object of a mirror version (SPEC §7). */
static void
parse_compare(struct pctx *p, json_t *obj, const char *path, struct cfg_compare *c)
{
    static const char *const fields[] = {"mode", "abs_tol", "rel_tol", "ignore",
        "max_bytes", "samples", NULL};
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    memset(c, 0, sizeof(*c));
    if (obj == NULL)
        return;
    check_fields(p, obj, path, fields);
    char *mode = NULL;
    get_str(p, obj, path, "mode", &mode, "json");
    c->mode = CFG_COMPARE_JSON;
    if (mode != NULL && strcmp(mode, "exact") == 0)
        c->mode = CFG_COMPARE_EXACT;
    else if (mode != NULL && strcmp(mode, "json") != 0) {
        subpath(sp, path, "mode");
        cfg_err(p, sp, "must be \"json\" or \"exact\"");
    }
    free(mode);
    get_tol(p, obj, path, "abs_tol", &c->abs_tol);
    get_tol(p, obj, path, "rel_tol", &c->rel_tol);
    get_u64(p, obj, path, "max_bytes", &c->max_bytes, 65536, 1, (uint64_t)64 << 20);
    get_int(p, obj, path, "samples", &c->samples, 0, 0, CFG_COMPARE_MAX_SAMPLES);
    json_t *ign = json_object_get(obj, "ignore");
    if (ign == NULL || json_is_null(ign))
        return;
    subpath(sp, path, "ignore");
    if (!json_is_array(ign)) {
        cfg_err(p, sp, "must be an array of member paths like \"meta.timing_ms\"");
        return;
    }
    size_t n = json_array_size(ign);
    if (n > CFG_COMPARE_MAX_IGNORE) {
        cfg_err(p, sp, "at most %d paths, not %zu", CFG_COMPARE_MAX_IGNORE, n);
        return;
    }
    c->ignore = calloc(n + 1, sizeof(*c->ignore));
    if (c->ignore == NULL)
        abort();
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(ign, i);
        indexpath(ip, sp, i);
        if (!json_is_string(e) || !config_compare_path_valid(json_string_value(e))) {
            cfg_err(p, ip, "must be a member path: names joined by \".\", none empty, "
                    "no control characters, at most 256 bytes");
            continue;
        }
        c->ignore[c->n_ignore++] = xstrdup(json_string_value(e));
    }
}

/* ---- progressive rollout (SPEC §8) ------------------------------------- */

static const char *const rollout_phase_names[] = {NULL, "running", "paused", "promoted",
    "rolled_back", "aborted"};

const char *
config_rollout_phase_name(enum cfg_rollout_phase ph)
{
    if ((int)ph < 0 || (size_t)ph >= sizeof(rollout_phase_names) / sizeof(*rollout_phase_names))
        return NULL;
    return rollout_phase_names[ph];
}

/* A fraction 0..max at obj.key, def when absent. */
static void
get_fraction(struct pctx *p, json_t *obj, const char *path, const char *key, double *dst,
             double def, double max)
{
    json_t *v = json_object_get(obj, key);
    char sp[PATH_MAX_LEN];

    *dst = def;
    if (v == NULL || json_is_null(v))
        return;
    subpath(sp, path, key);
    if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= max)) {
        cfg_err(p, sp, "must be a number between 0 and %g", max);
        return;
    }
    *dst = json_number_value(v);
}

/* The plan: "rollout": {"steps", "step_s", "promote", "gate"}. */
static void
parse_rollout_plan(struct pctx *p, json_t *obj, const char *path, struct cfg_rollout *r)
{
    static const char *const fields[] = {"steps", "step_s", "promote", "gate", "notify",
        NULL};
    static const char *const gate_fields[] = {"min_requests", "max_error_rate_increase",
        "max_p99_ratio", "min_agreement", NULL};
    char sp[PATH_MAX_LEN], ip[PATH_MAX_LEN];

    check_fields(p, obj, path, fields);
    r->has_plan = true;
    json_t *steps = json_object_get(obj, "steps");
    subpath(sp, path, "steps");
    if (!json_is_array(steps) || json_array_size(steps) == 0 ||
        json_array_size(steps) > CFG_ROLLOUT_MAX_STEPS) {
        cfg_err(p, sp, "required: an array of 1 to %d increasing traffic percentiles in (0, 100]",
                CFG_ROLLOUT_MAX_STEPS);
    } else {
        for (size_t i = 0; i < json_array_size(steps); i++) {
            json_t *e = json_array_get(steps, i);
            indexpath(ip, sp, i);
            double d = json_is_number(e) ? json_number_value(e) : -1;
            if (!(d > 0 && d <= 100)) {
                cfg_err(p, ip, "must be a number above 0 and at most 100");
                continue;
            }
            double h = d * CFG_PCT_SCALE;
            long rd = lround(h);
            if (fabs(h - (double)rd) > 1e-6) {
                cfg_err(p, ip, "at most two decimals");
                continue;
            }
            if (r->n_steps > 0 && rd <= r->steps[r->n_steps - 1]) {
                cfg_err(p, ip, "steps must increase (%g follows %g)", d,
                        r->steps[r->n_steps - 1] / (double)CFG_PCT_SCALE);
                continue;
            }
            r->steps[r->n_steps++] = (int)rd;
        }
    }
    get_int(p, obj, path, "step_s", &r->step_s, 300, 1, 7 * 86400);
    get_bool(p, obj, path, "promote", &r->promote, true);
    json_t *gate = get_obj(p, obj, path, "gate");
    subpath(sp, path, "gate");
    if (gate != NULL)
        check_fields(p, gate, sp, gate_fields);
    get_u64(p, gate, sp, "min_requests", &r->min_requests, 200, 1, 1000000000);
    get_fraction(p, gate, sp, "max_error_rate_increase", &r->max_error_rate_increase, 0.01, 1);
    get_fraction(p, gate, sp, "max_p99_ratio", &r->max_p99_ratio, 1.5, 1000);
    get_fraction(p, gate, sp, "min_agreement", &r->min_agreement, 0.99, 1);
    json_t *notify = get_obj(p, obj, path, "notify");
    subpath(sp, path, "notify");
    if (notify != NULL)
        config_notify_parse(notify, sp, &r->notify, p->errs);
}

/* The state the driver keeps: "rollout_state": {"phase", "step", "since", "reason",
 * "operator_changed"}. */
static void
parse_rollout_state(struct pctx *p, json_t *obj, const char *path, struct cfg_rollout *r)
{
    static const char *const fields[] = {"phase", "step", "since", "reason",
        "operator_changed", NULL};
    char sp[PATH_MAX_LEN];

    check_fields(p, obj, path, fields);
    char *phase = NULL;
    get_str(p, obj, path, "phase", &phase, NULL);
    subpath(sp, path, "phase");
    if (phase == NULL)
        cfg_err(p, sp, "required: \"running\", \"paused\", \"promoted\", \"rolled_back\" "
                "or \"aborted\"");
    else {
        for (int i = CFG_ROLLOUT_RUNNING; i <= CFG_ROLLOUT_ABORTED; i++)
            if (strcmp(phase, rollout_phase_names[i]) == 0)
                r->phase = (enum cfg_rollout_phase)i;
        if (r->phase == CFG_ROLLOUT_NONE)
            cfg_err(p, sp, "must be \"running\", \"paused\", \"promoted\", \"rolled_back\" "
                    "or \"aborted\"");
    }
    free(phase);
    get_int(p, obj, path, "step", &r->step, 0, 0, CFG_ROLLOUT_MAX_STEPS - 1);
    if (r->n_steps > 0 && r->step >= r->n_steps) {
        subpath(sp, path, "step");
        cfg_err(p, sp, "the plan has %d steps (0 to %d)", r->n_steps, r->n_steps - 1);
    }
    json_t *since = json_object_get(obj, "since");
    if (since != NULL && !json_is_null(since)) {
        if (!json_is_integer(since) || json_integer_value(since) < 0) {
            subpath(sp, path, "since");
            cfg_err(p, sp, "must be unix seconds");
        } else
            r->since = (int64_t)json_integer_value(since);
    }
    get_str(p, obj, path, "reason", &r->reason, NULL);
    get_bool(p, obj, path, "operator_changed", &r->operator_changed, false);
    r->refuses_pins = (r->phase == CFG_ROLLOUT_ROLLED_BACK ||
                       r->phase == CFG_ROLLOUT_ABORTED) && !r->operator_changed;
}

static void
parse_rollout(struct pctx *p, json_t *vobj, const char *path, struct cfg_rollout *r)
{
    char sp[PATH_MAX_LEN];

    memset(r, 0, sizeof(*r));
    json_t *plan = get_obj(p, vobj, path, "rollout");
    subpath(sp, path, "rollout");
    if (plan != NULL)
        parse_rollout_plan(p, plan, sp, r);
    json_t *state = get_obj(p, vobj, path, "rollout_state");
    subpath(sp, path, "rollout_state");
    if (state != NULL) {
        if (plan == NULL)
            cfg_err(p, sp, "a rollout_state needs a rollout plan");
        parse_rollout_state(p, state, sp, r);
    }
}

static void
parse_version(struct pctx *p, json_t *obj, const char *path,
              struct cfg_version *v)
{
    static const char *const fields[] = {"name", "upstreams", "path",
        "traffic_percentile", "is_default", "type", "description", "tags",
        "replica_max_concurrent_requests", "max_request_wait_time_ms",
        "mirror_percentile", "health_check", "compare", "rollout", "rollout_state",
        "upstream_protocol", NULL};
    char sp[PATH_MAX_LEN];

    if (!json_is_object(obj)) {
        cfg_err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);

    get_name(p, obj, path, v->name);
    char *proto = NULL;             /* SPEC §9 */
    get_str(p, obj, path, "upstream_protocol", &proto, "http1");
    if (proto != NULL && strcmp(proto, "http2") == 0)
        v->upstream_http2 = true;
    else if (proto != NULL && strcmp(proto, "http1") != 0) {
        subpath(sp, path, "upstream_protocol");
        cfg_err(p, sp, "must be \"http1\" or \"http2\"");
    }
    free(proto);

    parse_upstreams(p, obj, path, v);
    get_str(p, obj, path, "path", &v->path, NULL);
    check_request_path(p, path, v->path);
    get_pct(p, obj, path, "traffic_percentile", &v->traffic, 100);
    get_bool(p, obj, path, "is_default", &v->is_default, false);

    char *type = NULL;
    get_str(p, obj, path, "type", &type, "treatment");
    v->group = CFG_GROUP_TREATMENT;
    if (type != NULL) {
        if (strcmp(type, "control") == 0)
            v->group = CFG_GROUP_CONTROL;
        else if (strcmp(type, "treatment") != 0) {
            subpath(sp, path, "type");
            cfg_err(p, sp, "must be \"control\" or \"treatment\"");
        }
    }
    free(type);
    get_str(p, obj, path, "description", &v->description, NULL);

    json_t *tags = json_object_get(obj, "tags");
    if (tags != NULL && !json_is_null(tags)) {
        subpath(sp, path, "tags");
        if (!json_is_object(tags)) {
            cfg_err(p, sp, "must be an object of strings");
        } else {
            const char *k;
            json_t *tv;
            json_object_foreach(tags, k, tv) {
                if (!json_is_string(tv)) {
                    char tp[PATH_MAX_LEN];
                    subpath(tp, sp, k);
                    cfg_err(p, tp, "must be a string");
                }
            }
        }
    }
    get_int(p, obj, path, "replica_max_concurrent_requests", &v->max_concurrent,
            0, 0, 1000000);
    get_int(p, obj, path, "max_request_wait_time_ms", &v->max_wait_ms,
            500, 0, 3600000);
    get_pct(p, obj, path, "mirror_percentile", &v->mirror, 50);

    subpath(sp, path, "health_check");
    parse_health(p, get_obj(p, obj, path, "health_check"), sp, &v->health);
    subpath(sp, path, "compare");
    parse_compare(p, get_obj(p, obj, path, "compare"), sp, &v->compare);
    parse_rollout(p, obj, path, &v->rollout);
}

void
parse_endpoint(struct pctx *p, json_t *obj, const char *path,
               struct cfg_endpoint *ep)
{
    static const char *const fields[] = {"name", "auth", "keys", "sticky",
        "scoring_timeout_ms", "failover_to_default", "pinning", "versions", NULL};
    static const char *const auth_fields[] = {"keys", "tokens", NULL};
    static const char *const key_fields[] = {"primary", "secondary", NULL};
    static const char *const sticky_fields[] = {"header", "cookie", NULL};
    char sp[PATH_MAX_LEN], vp[PATH_MAX_LEN];

    if (!json_is_object(obj)) {
        cfg_err(p, path, "must be an object");
        return;
    }
    check_fields(p, obj, path, fields);

    get_name(p, obj, path, ep->name);

    json_t *auth = get_obj(p, obj, path, "auth");
    subpath(sp, path, "auth");
    if (auth != NULL)
        check_fields(p, auth, sp, auth_fields);
    get_bool(p, auth, sp, "keys", &ep->auth_keys, true);
    get_bool(p, auth, sp, "tokens", &ep->auth_tokens, false);

    json_t *keys = get_obj(p, obj, path, "keys");
    subpath(sp, path, "keys");
    if (keys != NULL) {
        check_fields(p, keys, sp, key_fields);
        get_secret(p, keys, sp, "primary", &ep->key_primary);
        get_secret(p, keys, sp, "secondary", &ep->key_secondary);
        check_key_text(p, sp, "primary", ep->key_primary);
        check_key_text(p, sp, "secondary", ep->key_secondary);
    }

    json_t *sticky = get_obj(p, obj, path, "sticky");
    subpath(sp, path, "sticky");
    if (sticky != NULL) {
        check_fields(p, sticky, sp, sticky_fields);
        char *h = NULL, *c = NULL;
        get_str(p, sticky, sp, "header", &h, NULL);
        get_str(p, sticky, sp, "cookie", &c, NULL);
        if ((h != NULL) == (c != NULL)) {
            cfg_err(p, sp, "needs exactly one of \"header\" or \"cookie\"");
            free(h);
            free(c);
        } else if ((h ? h : c)[0] == '\0') {
            cfg_err(p, sp, "the %s name must not be empty", h ? "header" : "cookie");
            free(h);
            free(c);
        } else {
            ep->sticky = h ? CFG_STICKY_HEADER : CFG_STICKY_COOKIE;
            ep->sticky_name = h ? h : c;
        }
    }
    get_int(p, obj, path, "scoring_timeout_ms", &ep->scoring_timeout_ms,
            60000, 1, 3600000);
    get_bool(p, obj, path, "failover_to_default", &ep->failover_to_default, true);
    get_bool(p, obj, path, "pinning", &ep->pinning, true);

    json_t *vs = json_object_get(obj, "versions");
    subpath(sp, path, "versions");
    if (!json_is_array(vs)) {
        cfg_err(p, sp, "required: an array of 1 to %d versions", CFG_MAX_VERSIONS);
        return;
    }
    size_t n = json_array_size(vs);
    if (n == 0) {
        cfg_err(p, sp, "an endpoint needs at least 1 version");
        return;
    }
    if (n > CFG_MAX_VERSIONS) {
        indexpath(vp, sp, CFG_MAX_VERSIONS);
        cfg_err(p, vp, "an endpoint has at most %d versions", CFG_MAX_VERSIONS);
        n = CFG_MAX_VERSIONS;
    }
    int errs_before = p->errs->n;
    for (size_t i = 0; i < n; i++) {
        indexpath(vp, sp, i);
        parse_version(p, json_array_get(vs, i), vp, &ep->versions[i]);
    }
    ep->n_versions = (int)n;
    if (p->errs->n != errs_before)
        return;     /* cross-version rules need valid versions */

    /* Rules across versions (SPEC §2.1). */
    int sum = 0, def = -1, control = -1;
    for (int i = 0; i < ep->n_versions; i++) {
        struct cfg_version *v = &ep->versions[i];
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)i);
        for (int j = 0; j < i; j++)
            if (strcmp(ep->versions[j].name, v->name) == 0) {
                subpath(fp, vp, "name");
                cfg_err(p, fp, "duplicate version name \"%s\"", v->name);
            }
        sum += v->traffic;
        if (v->is_default) {
            if (def >= 0) {
                subpath(fp, vp, "is_default");
                cfg_err(p, fp, "a second default version (%s is default)",
                        ep->versions[def].name);
            } else
                def = i;
        }
        if (v->group == CFG_GROUP_CONTROL) {
            if (control >= 0) {
                subpath(fp, vp, "type");
                cfg_err(p, fp, "a second control version (%s is control)",
                        ep->versions[control].name);
            } else
                control = i;
        }
        if (v->mirror > 0 && v->traffic > 0) {
            subpath(fp, vp, "mirror_percentile");
            cfg_err(p, fp, "a mirror version serves no live traffic: its "
                    "traffic_percentile must be 0");
        }
    }
    if (sum > CFG_PCT_TOTAL)
        cfg_err(p, sp, "traffic_percentile values sum to %d.%02d, at most 100",
                sum / CFG_PCT_SCALE, sum % CFG_PCT_SCALE);
    if (def < 0)
        def = 0;
    ep->default_version = def;
    for (int i = 0; i < ep->n_versions; i++)
        ep->versions[i].is_default = (i == def);
    if (ep->versions[def].mirror > 0) {
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)def);
        subpath(fp, vp, "mirror_percentile");
        cfg_err(p, fp, "the default version cannot be a mirror");
    }
    /* A rollout ramps a version up towards the default; the default itself
     * has nothing to ramp (a promoted version keeps its record). */
    const struct cfg_rollout *dr = &ep->versions[def].rollout;
    if (dr->has_plan && dr->phase != CFG_ROLLOUT_PROMOTED) {
        char fp[PATH_MAX_LEN];
        indexpath(vp, sp, (size_t)def);
        subpath(fp, vp, "rollout");
        cfg_err(p, fp, "not allowed on the default version (%s): roll out another version "
                "and promote it", ep->versions[def].name);
    }
    /* SPEC §2.2: the default takes its own share plus the remainder. */
    for (int i = 0; i < ep->n_versions; i++)
        ep->versions[i].effective = ep->versions[i].traffic;
    if (sum <= CFG_PCT_TOTAL)
        ep->versions[def].effective += CFG_PCT_TOTAL - sum;
}
