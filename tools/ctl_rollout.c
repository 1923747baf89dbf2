/*
 * sluicectl's `rollout` (SPEC §8): start with a plan, pause, resume, abort,
 * promote, status (--watch follows it to its end).
 */
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "tools/sluicectl.h"

/* ---- rollout (SPEC §8) ----------------------------------------------------------- */

static void
print_plan(json_t *j)
{
    char a[32], b[32], c[32], d[32], e[32];
    json_t *plan = json_object_get(j, "plan");
    printf("endpoint %s  version %s  driver %s\n",
           json_string_value(json_object_get(j, "endpoint")),
           json_string_value(json_object_get(j, "version")),
           json_is_string(json_object_get(j, "driver")) ?
           json_string_value(json_object_get(j, "driver")) : "-");
    if (!json_is_object(plan)) {
        printf("plan: none\n");
        return;
    }
    printf("plan: steps");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(plan, "steps"), i, x)
        printf(" %s", num(x, a, sizeof(a)));
    json_t *gate = json_object_get(plan, "gate");
    printf("  step_s %s  promote %s  min_requests %s  max_error_rate_increase %s  "
           "max_p99_ratio %s  min_agreement %s\n",
           num(json_object_get(plan, "step_s"), a, sizeof(a)),
           json_is_true(json_object_get(plan, "promote")) ? "yes" : "no",
           num(json_object_get(gate, "min_requests"), b, sizeof(b)),
           real_or_dash(json_object_get(gate, "max_error_rate_increase"), "%.4f", 1, c,
                        sizeof(c)),
           real_or_dash(json_object_get(gate, "max_p99_ratio"), "%.2f", 1, d, sizeof(d)),
           real_or_dash(json_object_get(gate, "min_agreement"), "%.4f", 1, e, sizeof(e)));
}

/* "phase: running  step 2 of 4  traffic 10 %  since ... UTC  reason: ..." */
static void
print_state(json_t *j)
{
    char a[32], b[32];
    json_t *st = json_object_get(j, "state");
    if (!json_is_object(st)) {
        printf("phase: never started\n");
        return;
    }
    time_t since = (time_t)json_integer_value(json_object_get(st, "since"));
    char when[32];
    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", gmtime(&since));
    json_t *reason = json_object_get(st, "reason");
    printf("phase: %s  step %s of %zu  traffic %s %%  since %s UTC%s%s\n",
           json_string_value(json_object_get(st, "phase")),
           step1(json_object_get(st, "step"), a, sizeof(a)),
           json_array_size(json_object_get(json_object_get(j, "plan"), "steps")),
           num(json_object_get(st, "traffic_percentile"), b, sizeof(b)), when,
           json_is_string(reason) ? "  reason: " : "",
           json_is_string(reason) ? json_string_value(reason) : "");
}

static void
print_eval_header(void)
{
    printf("%-8s %4s %7s %4s %-7s %8s %8s %8s %8s %17s %9s %9s %7s  %s\n", "TIME", "STEP",
           "PERCENT", "LOOK", "VERDICT", "N_VER", "N_CTRL", "ERR_VER", "ERR_CTRL",
           "DIFF_INTERVAL", "P99_VER", "P99_CTRL", "RATIO", "REASON");
}

static void
print_eval(json_t *x)
{
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32];
    time_t t = (time_t)json_integer_value(json_object_get(x, "time"));
    char ts[16], iv[40], p1[32], p2[32], p3[32];
    strftime(ts, sizeof(ts), "%H:%M:%S", gmtime(&t));
    json_t *ver = json_object_get(x, "version"), *ctl = json_object_get(x, "control");
    json_t *diff = json_object_get(x, "error_rate_diff");
    if (json_is_number(json_object_get(diff, "lower")))
        snprintf(iv, sizeof(iv), "[%+.2f,%+.2f]",
                 100 * json_number_value(json_object_get(diff, "lower")),
                 100 * json_number_value(json_object_get(diff, "upper")));
    else
        snprintf(iv, sizeof(iv), "-");
    const char *verdict = json_string_value(json_object_get(x, "verdict"));
    const char *reason = json_string_value(json_object_get(x, "reason"));
    printf("%-8s %4s %7s %4s %-7s %8s %8s %8s %8s %17s %9s %9s %7s  %s\n", ts,
           step1(json_object_get(x, "step"), a, sizeof(a)),
           num(json_object_get(x, "percentile"), b, sizeof(b)),
           num(json_object_get(x, "look"), c, sizeof(c)), verdict ? verdict : "-",
           num(json_object_get(ver, "requests"), d, sizeof(d)),
           num(json_object_get(ctl, "requests"), e, sizeof(e)),
           real_or_dash(json_object_get(ver, "error_rate"), "%.2f%%", 100, f, sizeof(f)),
           real_or_dash(json_object_get(ctl, "error_rate"), "%.2f%%", 100, g, sizeof(g)),
           iv, real_or_dash(json_object_get(ver, "p99_ms"), "%.1f", 1, p1, sizeof(p1)),
           real_or_dash(json_object_get(ctl, "p99_ms"), "%.1f", 1, p2, sizeof(p2)),
           real_or_dash(json_object_get(x, "p99_ratio"), "%.2f", 1, p3, sizeof(p3)),
           reason ? reason : "");
}

/* GET …/rollout as text: the plan, the state, then one line per gate
 * evaluation (oldest first). */
static void
table_rollout(json_t *j)
{
    print_plan(j);
    print_state(j);
    if (!json_is_object(json_object_get(j, "state")))
        return;
    json_t *evs = json_object_get(j, "evaluations");
    if (json_array_size(evs) == 0) {
        printf("no gate evaluations yet\n");
        return;
    }
    print_eval_header();
    size_t i;
    json_t *x;
    json_array_foreach(evs, i, x)
        print_eval(x);
}

static bool
phase_is_terminal(const char *phase)
{
    return phase != NULL && (strcmp(phase, "promoted") == 0 ||
                             strcmp(phase, "rolled_back") == 0 ||
                             strcmp(phase, "aborted") == 0);
}

/* What identifies a state or an evaluation, to print each once. */
static char *
state_key(json_t *j)
{
    json_t *st = json_object_get(j, "state");
    if (!json_is_object(st))
        return strdup("none");
    json_t *k = json_pack("[O,O,O,O]", json_object_get(st, "phase") ?: json_null(),
                          json_object_get(st, "step") ?: json_null(),
                          json_object_get(st, "traffic_percentile") ?: json_null(),
                          json_object_get(st, "reason") ?: json_null());
    char *s = json_dumps(k, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(k);
    return s;
}

struct seen {
    size_t n, cap;
    char **keys;
};

/* True the first time a key is seen (it is then kept). */
static bool
seen_first(struct seen *s, char *key)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->keys[i], key) == 0) {
            free(key);
            return false;
        }
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 32;
        s->keys = xrealloc(s->keys, s->cap * sizeof(char *));
    }
    s->keys[s->n++] = key;
    return true;
}

/* rollout EP V status --watch: poll GET …/rollout every interval; print the
 * plan and state once, then each new gate evaluation and each change of
 * state, once; stop when the phase is terminal (promoted: exit 0;
 * rolled_back or aborted: exit 3), or after timeout_s (exit 1). With
 * --json, one line of JSON per document that brought something new. */
static int
watch_rollout(const char *path, long long interval_s, long long timeout_s)
{
    struct seen evals = {0};
    char *last_state = NULL;
    bool header = false, first = true;
    time_t deadline = timeout_s > 0 ? time(NULL) + timeout_s : 0;
    int rc;
    for (;;) {
        struct response r = call("GET", path, NULL);
        if (r.status != 200) {
            rc = server_error(&r);
            free(r.body);
            break;
        }
        json_t *j = json_loads(r.body, 0, NULL);
        free(r.body);
        if (!json_is_object(j)) {
            fprintf(stderr, "sluicectl: the server's answer is not JSON\n");
            rc = 1;
            break;
        }
        bool news = false;
        char *sk = state_key(j);
        bool state_changed = last_state == NULL || strcmp(sk, last_state) != 0;
        if (first && !as_json) {
            print_plan(j);
            if (!json_is_object(json_object_get(j, "state")))
                print_state(j);
        }
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(j, "evaluations"), i, x) {
            if (!seen_first(&evals, json_dumps(x, JSON_COMPACT | JSON_SORT_KEYS)))
                continue;
            news = true;
            if (as_json)
                continue;
            if (!header) {
                print_eval_header();
                header = true;
            }
            print_eval(x);
        }
        if (state_changed && json_is_object(json_object_get(j, "state"))) {
            news = true;
            if (!as_json)
                print_state(j);
        }
        if (as_json && (news || first)) {
            char *text = json_dumps(j, JSON_COMPACT);
            printf("%s\n", text);
            free(text);
        }
        fflush(stdout);
        free(last_state);
        last_state = sk;
        first = false;
        const char *phase = json_string_value(json_object_get(json_object_get(j, "state"),
                                                              "phase"));
        if (phase_is_terminal(phase)) {
            rc = strcmp(phase, "promoted") == 0 ? 0 : EXIT_ROLLED_BACK;
            json_decref(j);
            break;
        }
        json_decref(j);
        if (deadline != 0 && time(NULL) + interval_s > deadline) {
            fprintf(stderr, "sluicectl: the rollout did not end within %llds\n", timeout_s);
            rc = 1;
            break;
        }
        sleep((unsigned)interval_s);
    }
    for (size_t i = 0; i < evals.n; i++)
        free(evals.keys[i]);
    free(evals.keys);
    free(last_state);
    return rc;
}

/* rollout EP V plan …: PATCH the version's "rollout" (SPEC §8). */
static json_t *
plan_body(const struct cmdline *c)
{
    if (opt_last(c, "remove") != NULL) {
        if (c->nopt != 1)
            usage_error("plan --remove takes no other option");
        return json_pack("{s:n}", "rollout");
    }
    const char *steps = opt_last(c, "steps"), *step = opt_last(c, "step");
    if (steps == NULL)
        usage_error("plan needs --steps, e.g. --steps 5,10,25,50");
    if (step == NULL)
        usage_error("plan needs --step, the time each step runs (e.g. --step 5m)");
    json_t *arr = json_array();
    char *copy = strdup(steps), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save))
        json_array_append_new(arr, json_num(opt_number("steps", t)));
    free(copy);
    if (json_array_size(arr) == 0 || steps[strlen(steps) - 1] == ',' || steps[0] == ',' ||
        strstr(steps, ",,") != NULL)
        usage_error("--steps needs percentiles separated by commas, got \"%s\"", steps);
    json_t *gate = json_object();
    const char *v;
    if ((v = opt_last(c, "min-requests")) != NULL)
        json_object_set_new(gate, "min_requests", json_integer(opt_int("min-requests", v, 1)));
    if ((v = opt_last(c, "max-error-rate-increase")) != NULL)
        json_object_set_new(gate, "max_error_rate_increase",
                            json_num(opt_number("max-error-rate-increase", v)));
    if ((v = opt_last(c, "max-p99-ratio")) != NULL)
        json_object_set_new(gate, "max_p99_ratio", json_num(opt_number("max-p99-ratio", v)));
    if ((v = opt_last(c, "min-agreement")) != NULL)
        json_object_set_new(gate, "min_agreement", json_num(opt_number("min-agreement", v)));
    json_t *plan = json_pack("{s:o, s:I, s:b}", "steps", arr, "step_s",
                             (json_int_t)opt_duration("step", step),
                             "promote", opt_last(c, "promote") != NULL);
    if (json_object_size(gate) > 0)
        json_object_set_new(plan, "gate", gate);
    else
        json_decref(gate);
    const char *url = opt_last(c, "notify-url");
    if (url != NULL && opt_last(c, "no-notify") != NULL)
        usage_error("--notify-url and --no-notify exclude each other");
    json_t *headers = json_object();
    for (int i = 0; i < c->nopt; i++) {
        if (strcmp(c->opt[i].name, "notify-header") != 0)
            continue;
        const char *h = c->opt[i].val, *colon = strchr(h, ':');
        if (colon == NULL || colon == h)
            usage_error("--notify-header needs \"Name: value\", got \"%s\"", h);
        char *name = strndup(h, (size_t)(colon - h));
        const char *val = colon + 1;
        while (*val == ' ' || *val == '\t')
            val++;
        json_t *jv = json_string(val);
        if (name == NULL || jv == NULL || json_object_set_new(headers, name, jv) != 0)
            usage_error("--notify-header needs UTF-8 text, got \"%s\"", h);
        free(name);
    }
    if (json_object_size(headers) > 0 && url == NULL)
        usage_error("--notify-header needs --notify-url");
    if (url != NULL) {
        json_t *n = json_pack("{s:s, s:o}", "url", url, "headers", headers);
        if (n == NULL || json_object_set_new(plan, "notify", n) != 0)
            usage_error("--notify-url needs UTF-8 text, got \"%s\"", url);
    } else
        json_decref(headers);
    return json_pack("{s:o}", "rollout", plan);
}

/* A plan replaces the whole plan, its notify too (SPEC §8). The server
 * shows a notify's URL and header names but not the header values (they
 * may hold secrets), so sluicectl cannot carry one over: rather than drop
 * it unsaid, it refuses a plan that does not say --notify-url again or
 * --no-notify. When the current plan cannot be read, nothing is sent
 * either (a 404 is left to the PATCH, which names what is missing).
 * Returns 0, or the exit code. */
static int
check_notify_kept(const struct cmdline *c, const char *path)
{
    if (opt_last(c, "notify-url") != NULL || opt_last(c, "no-notify") != NULL ||
        opt_last(c, "remove") != NULL)
        return 0;
    struct response r = call("GET", path, NULL);
    if (r.status == 404) {
        free(r.body);
        return 0;
    }
    json_t *j = r.status == 200 && r.body != NULL ? json_loads(r.body, 0, NULL) : NULL;
    if (j == NULL) {
        int rc = r.status == 200 ? 1 : server_error(&r);
        if (r.status == 200)
            fprintf(stderr, "sluicectl: the server's answer is not JSON\n");
        free(r.body);
        return rc;
    }
    free(r.body);
    const char *url = json_string_value(json_object_get(
        json_object_get(json_object_get(j, "plan"), "notify"), "url"));
    if (url != NULL)
        usage_error("the current plan sends its events to %s: a new plan replaces it, so "
                    "give --notify-url (and each --notify-header) again, or --no-notify", url);
    json_decref(j);
    return 0;
}

static const struct optdef rollout_plan_opts[] = {
    {"steps", true}, {"step", true}, {"promote", false}, {"min-requests", true},
    {"max-error-rate-increase", true}, {"max-p99-ratio", true}, {"min-agreement", true},
    {"notify-url", true}, {"notify-header", true}, {"no-notify", false},
    {"remove", false}, {NULL, false},
};
static const struct optdef rollout_status_opts[] = {
    {"watch", false}, {"interval", true}, {"timeout", true}, {NULL, false},
};

int
cmd_rollout(int argc, char **argv)
{
    /* rollout EP V ACTION [options] */
    const char *action = argc >= 4 ? argv[3] : "";
    bool is_plan = strcmp(action, "plan") == 0, is_status = strcmp(action, "status") == 0;
    static struct cmdline c;
    parse_cmdline(argc, argv, is_plan ? rollout_plan_opts : is_status ? rollout_status_opts :
                  no_opts, false, is_plan ? "rollout plan" : is_status ? "rollout status" :
                  "rollout", &c);
    want_args(&c, 4, "rollout EP V start|status|pause|resume|abort|promote|plan [options]");
    const char *ep = c.pos[1], *v = c.pos[2];
    action = c.pos[3];
    char *path = admin_path("/admin/v1/endpoints/", ep, "/versions/", v, "/rollout", NULL);
    struct response r;
    int rc;
    if (strcmp(action, "status") == 0) {
        bool watch = opt_last(&c, "watch") != NULL;
        const char *iv = opt_last(&c, "interval"), *to = opt_last(&c, "timeout");
        if (!watch && (iv || to))
            usage_error("--%s needs --watch", iv ? "interval" : "timeout");
        if (watch) {
            rc = watch_rollout(path, iv ? opt_duration("interval", iv) : 2,
                               to ? opt_duration("timeout", to) : 0);
            free(path);
            return rc;
        }
        r = call("GET", path, NULL);
    } else if (is_plan) {
        json_t *b = plan_body(&c);
        if ((rc = check_notify_kept(&c, path)) != 0) {
            json_decref(b);
            free(path);
            return rc;
        }
        char *vpath = admin_path("/admin/v1/endpoints/", ep, "/versions/", v, NULL);
        r = call("PATCH", vpath, b);
        free(vpath);
        json_decref(b);
        if (r.status >= 200 && r.status < 300 && !as_json) {
            free(r.body);
            r = call("GET", path, NULL);      /* show the plan as the server took it */
        }
    } else if (strcmp(action, "start") == 0 || strcmp(action, "pause") == 0 ||
               strcmp(action, "resume") == 0 || strcmp(action, "abort") == 0 ||
               strcmp(action, "promote") == 0) {
        json_t *b = json_pack("{s:s}", "action", action);
        r = call("POST", path, b);
        json_decref(b);
    } else
        usage_error("rollout: unknown action \"%s\" (start, status, pause, resume, abort, "
                    "promote, plan)", action);
    free(path);
    return show(&r, table_rollout);
}
