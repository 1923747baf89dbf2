/*
 * sluicectl's tables (see sluicectl.c): endpoints, versions, keys, tokens,
 * generations, metrics, the fleet; `shadow` (SPEC §7), and the version
 * body built from a command's options.
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

static void
print_versions(json_t *ep)
{
    char a[32], b[32];
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(ep, "versions"), i, v) {
        char ups[512] = "";
        size_t k;
        json_t *u;
        json_array_foreach(json_object_get(v, "upstreams"), k, u) {
            if (k)
                strncat(ups, ",", sizeof(ups) - strlen(ups) - 1);
            strncat(ups, json_string_value(u), sizeof(ups) - strlen(ups) - 1);
        }
        printf("%-20s %-16s %-10s %-7s %10s %10s  %s\n",
               json_string_value(json_object_get(ep, "name")),
               json_string_value(json_object_get(v, "name")),
               json_string_value(json_object_get(v, "type")),
               json_is_true(json_object_get(v, "is_default")) ? "yes" : "",
               num(json_object_get(v, "traffic_percentile"), a, sizeof(a)),
               num(json_object_get(v, "effective_percentile"), b, sizeof(b)), ups);
    }
}

static void
print_header(void)
{
    printf("%-20s %-16s %-10s %-7s %10s %10s  %s\n", "ENDPOINT", "VERSION", "TYPE",
           "DEFAULT", "PERCENT", "EFFECTIVE", "UPSTREAMS");
}

void
table_endpoints(json_t *j)
{
    print_header();
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(j, "endpoints"), i, ep)
        print_versions(ep);
}

void
table_endpoint(json_t *ep)
{
    json_t *auth = json_object_get(ep, "auth");
    json_t *st = json_object_get(ep, "sticky");
    printf("endpoint %s  (generation %lld)\n", json_string_value(json_object_get(ep, "name")),
           (long long)json_integer_value(json_object_get(ep, "generation")));
    printf("  auth: keys %s, tokens %s; sticky: %s; failover to default: %s\n",
           json_is_true(json_object_get(auth, "keys")) ? "on" : "off",
           json_is_true(json_object_get(auth, "tokens")) ? "on" : "off",
           json_is_object(st) ? (json_object_get(st, "header") ? "header" : "cookie") : "off",
           json_is_true(json_object_get(ep, "failover_to_default")) ? "yes" : "no");
    print_header();
    print_versions(ep);
}

void
table_keys(json_t *j)
{
    printf("primary    %s\nsecondary  %s\n",
           json_string_value(json_object_get(j, "primary_key")),
           json_string_value(json_object_get(j, "secondary_key")));
}

void
table_token(json_t *j)
{
    time_t e = (time_t)json_integer_value(json_object_get(j, "expires_at"));
    time_t r = (time_t)json_integer_value(json_object_get(j, "refresh_by"));
    char es[64], rs[64];
    strftime(es, sizeof(es), "%Y-%m-%dT%H:%M:%SZ", gmtime(&e));
    strftime(rs, sizeof(rs), "%Y-%m-%dT%H:%M:%SZ", gmtime(&r));
    printf("%s\ntoken_type  Bearer\nexpires_at  %s\nrefresh_by  %s\n",
           json_string_value(json_object_get(j, "access_token")), es, rs);
}

void
table_generation(json_t *j)
{
    printf("reloaded: generation %lld\n",
           (long long)json_integer_value(json_object_get(j, "generation")));
}

void
table_metrics(json_t *j)
{
    char a[32], b[32];
    printf("endpoint %s, last %lld minutes\n", json_string_value(json_object_get(j, "endpoint")),
           (long long)json_integer_value(json_object_get(j, "minutes")));
    printf("%-16s %-10s %10s %9s %9s %8s %9s %9s %9s\n", "VERSION", "GROUP", "REQUESTS",
           "OBSERVED", "CONFIG", "ERRORS", "P50 ms", "P95 ms", "P99 ms");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(j, "versions"), i, v) {
        printf("%-16s %-10s %10lld %8.2f%% %8s%% %7.2f%% %9.2f %9.2f %9.2f\n",
               json_string_value(json_object_get(v, "version")),
               json_string_value(json_object_get(v, "group")),
               (long long)json_integer_value(json_object_get(v, "requests")),
               json_number_value(json_object_get(v, "observed_share")),
               num(json_object_get(v, "configured_share"), a, sizeof(a)),
               100 * json_number_value(json_object_get(v, "error_rate")),
               json_number_value(json_object_get(v, "p50_ms")),
               json_number_value(json_object_get(v, "p95_ms")),
               json_number_value(json_object_get(v, "p99_ms")));
    }
    json_array_foreach(json_object_get(j, "comparisons"), i, v) {
        json_t *ci = json_object_get(v, "error_rate_diff_ci95");
        printf("%s vs %s: error rate %+.3f%% [%+.3f%%, %+.3f%%], p99 x%s -> %s\n",
               json_string_value(json_object_get(v, "treatment")),
               json_string_value(json_object_get(v, "control")),
               100 * json_number_value(json_object_get(v, "error_rate_diff")),
               100 * json_number_value(json_array_get(ci, 0)),
               100 * json_number_value(json_array_get(ci, 1)),
               num(json_object_get(v, "p99_ratio"), b, sizeof(b)),
               json_string_value(json_object_get(v, "verdict")));
    }
}

void
table_fleet(json_t *j)
{
    json_t *g = json_object_get(j, "generation");
    printf("fleet %s, newest generation %s%lld\n", json_string_value(json_object_get(j, "fleet")),
           json_is_integer(g) ? "" : "unknown ", (long long)json_integer_value(g));
    printf("%-40s %10s %-7s %-20s %s\n", "INSTANCE", "GENERATION", "NEWEST", "LAST FLUSH",
           "VERSION");
    size_t i;
    json_t *in;
    json_array_foreach(json_object_get(j, "instances"), i, in) {
        time_t lf = (time_t)json_integer_value(json_object_get(in, "last_flush"));
        char ls[32] = "never";
        if (lf > 0)
            strftime(ls, sizeof(ls), "%Y-%m-%dT%H:%M:%SZ", gmtime(&lf));
        printf("%-40s %10lld %-7s %-20s %s%s\n", json_string_value(json_object_get(in, "id")),
               (long long)json_integer_value(json_object_get(in, "generation")),
               json_is_true(json_object_get(in, "applied_newest")) ? "yes" : "no", ls,
               json_string_value(json_object_get(in, "version")),
               json_is_true(json_object_get(in, "self")) ? "  (this one)" : "");
    }
}

/* ---- shadow: agreement of mirror versions (SPEC §7) ---------------------------- */

static void
print_diffs(json_t *d)
{
    size_t i;
    json_t *x;
    if (json_array_size(d) == 0) {
        printf("  no differences sampled (compare.samples 0, or none yet)\n");
        return;
    }
    printf("  latest differences:\n");
    json_array_foreach(d, i, x) {
        json_t *path = json_object_get(x, "path");
        printf("  %s  %s  status %lld/%lld  at %s\n",
               json_string_value(json_object_get(x, "time")),
               json_string_value(json_object_get(x, "request_id")),
               (long long)json_integer_value(json_object_get(x, "live_status")),
               (long long)json_integer_value(json_object_get(x, "shadow_status")),
               json_is_string(path) ? json_string_value(path) : "(status)");
        printf("    live:   %.120s\n    shadow: %.120s\n",
               json_string_value(json_object_get(x, "live")),
               json_string_value(json_object_get(x, "shadow")));
    }
}


int
cmd_shadow(const char *ep, long long minutes)
{
    char q[64];
    snprintf(q, sizeof(q), "/metrics?minutes=%lld", minutes);
    char *path = admin_path("/admin/v1/endpoints/", ep, q, NULL);
    struct response r = call("GET", path, NULL);
    free(path);
    if (r.status != 200) {
        int rc = server_error(&r);
        free(r.body);
        return rc;
    }
    json_t *m = json_loads(r.body, 0, NULL);
    free(r.body);
    json_t *out = json_object();
    size_t i;
    json_t *v;
    int mirrors = 0;
    if (!as_json)
        printf("endpoint %s, last %lld minutes\n", ep, minutes);
    json_array_foreach(json_object_get(m, "versions"), i, v) {
        json_t *a = json_object_get(v, "agreement");
        const char *name = json_string_value(json_object_get(v, "version"));
        if (!json_is_object(a) || name == NULL)
            continue;
        mirrors++;
        path = admin_path("/admin/v1/endpoints/", ep, "/versions/", name, "/diffs?limit=5",
                          NULL);
        struct response d = call("GET", path, NULL);
        free(path);
        json_t *dj = d.status == 200 ? json_loads(d.body, 0, NULL) : NULL;
        free(d.body);
        json_t *diffs = json_object_get(dj, "diffs");
        if (as_json) {
            json_object_set_new(out, name, json_pack("{s:O, s:O}", "agreement", a,
                                "diffs", diffs ? diffs : json_null()));
            json_decref(dj);
            continue;
        }
        json_t *ci = json_object_get(a, "equal_rate_ci95");
        printf("%s (mode %s): compared %lld of %lld, equal %lld",
               name, dj ? json_string_value(json_object_get(dj, "mode")) : "?",
               (long long)json_integer_value(json_object_get(a, "compared")),
               (long long)json_integer_value(json_object_get(a, "total")),
               (long long)json_integer_value(json_object_get(a, "equal")));
        if (json_is_number(json_object_get(a, "equal_rate")))
            printf(" = %.2f%% [%.2f%%, %.2f%%]",
                   100 * json_number_value(json_object_get(a, "equal_rate")),
                   100 * json_number_value(json_array_get(ci, 0)),
                   100 * json_number_value(json_array_get(ci, 1)));
        printf("\n  differences %lld, status mismatches %lld, unknown %lld\n",
               (long long)json_integer_value(json_object_get(a, "differences")),
               (long long)json_integer_value(json_object_get(a, "status_mismatches")),
               (long long)json_integer_value(json_object_get(a, "unknown")));
        if (diffs != NULL)
            print_diffs(diffs);
        else
            printf("  differences unavailable (%d)\n", d.status);
        json_decref(dj);
    }
    if (as_json) {
        char *text = json_dumps(out, JSON_INDENT(2));
        printf("%s\n", text);
        free(text);
    } else if (mirrors == 0)
        printf("no mirror versions\n");
    json_decref(out);
    json_decref(m);
    return 0;
}

/* Options of version create/update into a JSON body. */
const struct optdef version_opts[] = {
    {"upstream", true}, {"percent", true}, {"default", false}, {"control", false},
    {"treatment", false}, {"description", true}, {"tag", true}, {"path", true},
    {"mirror", true}, {NULL, false},
};

json_t *
version_body(const struct cmdline *c, const char *name, bool create)
{
    json_t *b = json_object();
    json_t *ups = NULL, *tags = NULL;
    if (create)
        json_object_set_new(b, "name", json_string(name));
    for (int i = 0; i < c->nopt; i++) {
        const char *o = c->opt[i].name, *val = c->opt[i].val;
        if (strcmp(o, "upstream") == 0) {
            if (ups == NULL)
                ups = json_array();
            json_array_append_new(ups, json_string(val));
        } else if (strcmp(o, "percent") == 0 || strcmp(o, "mirror") == 0) {
            json_object_set_new(b, o[0] == 'p' ? "traffic_percentile" : "mirror_percentile",
                                json_num(opt_number(o, val)));
        } else if (strcmp(o, "default") == 0)
            json_object_set_new(b, "is_default", json_true());
        else if (strcmp(o, "control") == 0 || strcmp(o, "treatment") == 0)
            json_object_set_new(b, "type", json_string(o));
        else if (strcmp(o, "description") == 0 || strcmp(o, "path") == 0)
            json_object_set_new(b, o, json_string(val));
        else if (strcmp(o, "tag") == 0) {
            const char *eq = strchr(val, '=');
            if (eq == NULL || eq == val)
                usage_error("--tag needs KEY=VALUE, got \"%s\"", val);
            if (tags == NULL)
                tags = json_object();
            char *k = strndup(val, (size_t)(eq - val));
            json_object_set_new(tags, k, json_string(eq + 1));
            free(k);
        }
    }
    if (ups)
        json_object_set_new(b, "upstreams", ups);
    if (tags)
        json_object_set_new(b, "tags", tags);
    return b;
}

const char *
real_or_dash(json_t *v, const char *fmt, double scale, char *buf, size_t len)
{
    if (json_is_number(v))
        snprintf(buf, len, fmt, json_number_value(v) * scale);
    else
        snprintf(buf, len, "-");
    return buf;
}
