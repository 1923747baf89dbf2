/*
 * sluicectl: the operator's CLI over the admin API (SPEC §1, §5).
 *
 * Exit codes: 0 done, 1 the server refused or could not be reached (its
 * error message is printed as given), 2 usage error.
 */
#include <sys/queue.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *admin_url;
static const char *admin_token;
static bool as_json;

struct response {
    int status;
    char *body;
    size_t len;
};

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: sluicectl [--admin URL] [--token TOKEN] [--json] COMMAND ...\n"
        "commands:\n"
        "  endpoints                          list endpoints and their versions\n"
        "  show EP                            describe one endpoint\n"
        "  version create EP V [options]      add a version\n"
        "  version update EP V [options]      change a version\n"
        "  version delete EP V                delete a version\n"
        "      --upstream HOST:PORT (repeat)  --percent N  --default\n"
        "      --control | --treatment        --description TEXT  --tag K=V (repeat)\n"
        "      --path /P                      --mirror N\n"
        "  keys EP                            show the endpoint's keys\n"
        "  regen-key EP primary|secondary     replace one key (the other keeps working)\n"
        "  token EP                           issue a token for the endpoint\n"
        "  reload                             re-read the config file\n"
        "  metrics EP [--minutes N]           compare the versions (from Redis)\n"
        "  fleet                              the fleet's instances and their generations\n"
        "  shadow EP [--minutes N]            mirror versions: agreement with the live\n"
        "                                     answers and the latest differences\n"
        "  rollout EP V start|status|pause|resume|abort|promote\n"
        "                                     a version's progressive rollout: its\n"
        "                                     state and the gate's evaluations\n"
        "defaults: --admin $SLUICE_ADMIN_URL or http://127.0.0.1:9901,\n"
        "          --token $SLUICE_ADMIN_TOKEN\n");
}

static struct event_base *client_base;

static void
on_done(struct evhttp_request *req, void *arg)
{
    struct response *r = arg;
    event_base_loopexit(client_base, NULL);     /* the connection may stay open */
    if (req != NULL) {
        r->status = evhttp_request_get_response_code(req);
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        r->len = evbuffer_get_length(in);
        r->body = malloc(r->len + 1);
        evbuffer_remove(in, r->body, r->len);
        r->body[r->len] = '\0';
    }
}

/* One request to the admin API; status 0 when it could not be sent. */
static struct response
call(enum evhttp_cmd_type method, const char *path, json_t *body)
{
    struct response r = {0};
    struct evhttp_uri *u = evhttp_uri_parse(admin_url);
    if (u == NULL || evhttp_uri_get_host(u) == NULL) {
        fprintf(stderr, "sluicectl: bad admin URL %s\n", admin_url);
        exit(2);
    }
    const char *host = evhttp_uri_get_host(u);
    int port = evhttp_uri_get_port(u);
    if (port < 0)
        port = 80;
    const char *prefix = evhttp_uri_get_path(u);
    char full[2048];
    snprintf(full, sizeof(full), "%s%s", prefix && strcmp(prefix, "/") ? prefix : "", path);

    struct event_base *base = event_base_new();
    client_base = base;
    struct evhttp_connection *conn = evhttp_connection_base_new(base, NULL, host,
                                                                (unsigned short)port);
    evhttp_connection_set_timeout(conn, 30);
    struct evhttp_request *req = evhttp_request_new(on_done, &r);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char hostport[300];
    snprintf(hostport, sizeof(hostport), "%s:%d", host, port);
    evhttp_add_header(h, "Host", hostport);
    if (admin_token != NULL) {
        char a[4096];
        snprintf(a, sizeof(a), "Bearer %s", admin_token);
        evhttp_add_header(h, "Authorization", a);
    }
    if (body != NULL) {
        char *text = json_dumps(body, JSON_COMPACT);
        char cl[32];
        snprintf(cl, sizeof(cl), "%zu", strlen(text));
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "Content-Length", cl);    /* evhttp adds it for POST/PUT only */
        evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
        free(text);
    }
    evhttp_make_request(conn, req, method, full);
    event_base_dispatch(base);
    evhttp_connection_free(conn);
    event_base_free(base);
    evhttp_uri_free(u);
    return r;
}

/* Print the server's error as given and return the exit code. */
static int
server_error(const struct response *r)
{
    if (r->status == 0) {
        fprintf(stderr, "sluicectl: cannot reach the admin API at %s\n", admin_url);
        return 1;
    }
    json_t *j = json_loads(r->body ? r->body : "", 0, NULL);
    json_t *e = json_object_get(j, "error");
    if (as_json)
        fprintf(stderr, "%s", r->body ? r->body : "");
    else if (json_is_object(e)) {
        fprintf(stderr, "sluicectl: %d %s: %s\n", r->status,
                json_string_value(json_object_get(e, "code")),
                json_string_value(json_object_get(e, "message")));
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(e, "errors"), i, x)
            if (i > 0 || strcmp(json_string_value(x),
                                json_string_value(json_object_get(e, "message"))) != 0)
                fprintf(stderr, "  %s\n", json_string_value(x));
    } else
        fprintf(stderr, "sluicectl: %d: %s\n", r->status, r->body ? r->body : "");
    json_decref(j);
    return 1;
}

static const char *
num(json_t *v, char *buf, size_t len)
{
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, len, "%.2f", json_real_value(v));
    else
        snprintf(buf, len, "-");
    return buf;
}

/* A 0-based step index as people count steps: from 1. */
static const char *
step1(json_t *v, char *buf, size_t len)
{
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v) + 1);
    else
        snprintf(buf, len, "-");
    return buf;
}

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

/* Print an answer (a table, or the JSON as given) and free it. */
static int
show(struct response *r, void (*table)(json_t *))
{
    int rc = 0;
    if (r->status < 200 || r->status >= 300)
        rc = server_error(r);
    else if (as_json)
        fputs(r->body, stdout);
    else {
        json_t *j = json_loads(r->body, 0, NULL);
        table(j);
        json_decref(j);
    }
    free(r->body);
    r->body = NULL;
    return rc;
}

static void
table_endpoints(json_t *j)
{
    print_header();
    size_t i;
    json_t *ep;
    json_array_foreach(json_object_get(j, "endpoints"), i, ep)
        print_versions(ep);
}

static void
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

static void
table_keys(json_t *j)
{
    printf("primary    %s\nsecondary  %s\n",
           json_string_value(json_object_get(j, "primary_key")),
           json_string_value(json_object_get(j, "secondary_key")));
}

static void
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

static void
table_generation(json_t *j)
{
    printf("reloaded: generation %lld\n",
           (long long)json_integer_value(json_object_get(j, "generation")));
}

static void
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

static void
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

static int
cmd_shadow(const char *ep, int minutes)
{
    char path[1024];
    snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/metrics?minutes=%d", ep, minutes);
    struct response r = call(EVHTTP_REQ_GET, path, NULL);
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
        printf("endpoint %s, last %d minutes\n", ep, minutes);
    json_array_foreach(json_object_get(m, "versions"), i, v) {
        json_t *a = json_object_get(v, "agreement");
        const char *name = json_string_value(json_object_get(v, "version"));
        if (!json_is_object(a) || name == NULL)
            continue;
        mirrors++;
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/versions/%s/diffs?limit=5", ep,
                 name);
        struct response d = call(EVHTTP_REQ_GET, path, NULL);
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
static json_t *
version_body(int argc, char **argv, const char *name, bool create)
{
    static const struct option opts[] = {
        {"upstream", required_argument, NULL, 'u'},
        {"percent", required_argument, NULL, 'p'},
        {"default", no_argument, NULL, 'd'},
        {"control", no_argument, NULL, 'c'},
        {"treatment", no_argument, NULL, 't'},
        {"description", required_argument, NULL, 'D'},
        {"tag", required_argument, NULL, 'T'},
        {"path", required_argument, NULL, 'P'},
        {"mirror", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    json_t *b = json_object();
    json_t *ups = NULL, *tags = NULL;
    int c;
    if (create)
        json_object_set_new(b, "name", json_string(name));
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        double d;
        switch (c) {
        case 'u':
            if (ups == NULL)
                ups = json_array();
            json_array_append_new(ups, json_string(optarg));
            break;
        case 'p':
        case 'm':
            d = strtod(optarg, &end);
            if (*end != '\0') {
                fprintf(stderr, "sluicectl: --%s needs a number\n", c == 'p' ? "percent" : "mirror");
                exit(2);
            }
            json_object_set_new(b, c == 'p' ? "traffic_percentile" : "mirror_percentile",
                                d == (long long)d ? json_integer((long long)d) : json_real(d));
            break;
        case 'd': json_object_set_new(b, "is_default", json_true()); break;
        case 'c': json_object_set_new(b, "type", json_string("control")); break;
        case 't': json_object_set_new(b, "type", json_string("treatment")); break;
        case 'D': json_object_set_new(b, "description", json_string(optarg)); break;
        case 'P': json_object_set_new(b, "path", json_string(optarg)); break;
        case 'T': {
            char *eq = strchr(optarg, '=');
            if (eq == NULL) {
                fprintf(stderr, "sluicectl: --tag needs KEY=VALUE\n");
                exit(2);
            }
            if (tags == NULL)
                tags = json_object();
            *eq = '\0';
            json_object_set_new(tags, optarg, json_string(eq + 1));
            break;
        }
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sluicectl: unexpected argument %s\n", argv[optind]);
        exit(2);
    }
    if (ups)
        json_object_set_new(b, "upstreams", ups);
    if (tags)
        json_object_set_new(b, "tags", tags);
    return b;
}

static const char *
real_or_dash(json_t *v, const char *fmt, double scale, char *buf, size_t len)
{
    if (json_is_number(v))
        snprintf(buf, len, fmt, json_number_value(v) * scale);
    else
        snprintf(buf, len, "-");
    return buf;
}

/* GET …/rollout as text: the plan, the state, then one line per gate
 * evaluation (oldest first). */
static void
table_rollout(json_t *j)
{
    char a[32], b[32], c[32], d[32], e[32], f[32], g[32];
    json_t *plan = json_object_get(j, "plan"), *st = json_object_get(j, "state");
    printf("endpoint %s  version %s  driver %s\n",
           json_string_value(json_object_get(j, "endpoint")),
           json_string_value(json_object_get(j, "version")),
           json_is_string(json_object_get(j, "driver")) ?
           json_string_value(json_object_get(j, "driver")) : "-");
    if (json_is_object(plan)) {
        printf("plan: steps");
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(plan, "steps"), i, x)
            printf(" %s", num(x, a, sizeof(a)));
        json_t *gate = json_object_get(plan, "gate");
        printf("  step_s %s  promote %s  min_requests %s  max_error_rate_increase %s  "
               "max_p99_ratio %s\n", num(json_object_get(plan, "step_s"), a, sizeof(a)),
               json_is_true(json_object_get(plan, "promote")) ? "yes" : "no",
               num(json_object_get(gate, "min_requests"), b, sizeof(b)),
               real_or_dash(json_object_get(gate, "max_error_rate_increase"), "%.4f", 1, c,
                            sizeof(c)),
               real_or_dash(json_object_get(gate, "max_p99_ratio"), "%.2f", 1, d, sizeof(d)));
    } else
        printf("plan: none\n");
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
           json_array_size(json_object_get(plan, "steps")),
           num(json_object_get(st, "traffic_percentile"), b, sizeof(b)), when,
           json_is_string(reason) ? "  reason: " : "",
           json_is_string(reason) ? json_string_value(reason) : "");
    json_t *evs = json_object_get(j, "evaluations");
    if (json_array_size(evs) == 0) {
        printf("no gate evaluations yet\n");
        return;
    }
    printf("%-8s %4s %7s %4s %-7s %8s %8s %8s %8s %17s %9s %9s %7s  %s\n", "TIME", "STEP",
           "PERCENT", "LOOK", "VERDICT", "N_VER", "N_CTRL", "ERR_VER", "ERR_CTRL",
           "DIFF_INTERVAL", "P99_VER", "P99_CTRL", "RATIO", "REASON");
    size_t i;
    json_t *x;
    json_array_foreach(evs, i, x) {
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
        printf("%-8s %4s %7s %4s %-7s %8s %8s %8s %8s %17s %9s %9s %7s  %s\n", ts,
               step1(json_object_get(x, "step"), a, sizeof(a)),
               num(json_object_get(x, "percentile"), b, sizeof(b)),
               num(json_object_get(x, "look"), c, sizeof(c)),
               json_string_value(json_object_get(x, "verdict")),
               num(json_object_get(ver, "requests"), d, sizeof(d)),
               num(json_object_get(ctl, "requests"), e, sizeof(e)),
               real_or_dash(json_object_get(ver, "error_rate"), "%.2f%%", 100, f, sizeof(f)),
               real_or_dash(json_object_get(ctl, "error_rate"), "%.2f%%", 100, g, sizeof(g)),
               iv, real_or_dash(json_object_get(ver, "p99_ms"), "%.1f", 1, p1, sizeof(p1)),
               real_or_dash(json_object_get(ctl, "p99_ms"), "%.1f", 1, p2, sizeof(p2)),
               real_or_dash(json_object_get(x, "p99_ratio"), "%.2f", 1, p3, sizeof(p3)),
               json_string_value(json_object_get(x, "reason")));
    }
}

static int
need(int argc, int n)
{
    if (argc < n) {
        usage(stderr);
        exit(2);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"admin", required_argument, NULL, 'a'},
        {"token", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    admin_url = getenv("SLUICE_ADMIN_URL");
    admin_token = getenv("SLUICE_ADMIN_TOKEN");
    while ((c = getopt_long(argc, argv, "+a:t:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'a': admin_url = optarg; break;
        case 't': admin_token = optarg; break;
        case 'j': as_json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (admin_url == NULL)
        admin_url = "http://127.0.0.1:9901";
    argc -= optind;
    argv += optind;
    if (argc < 1) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[0];
    char path[1024];
    struct response r;

    if (strcmp(cmd, "endpoints") == 0 && argc == 1) {
        r = call(EVHTTP_REQ_GET, "/admin/v1/endpoints", NULL);
        return show(&r, table_endpoints);
    }
    if (strcmp(cmd, "show") == 0 && argc == 2) {
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s", argv[1]);
        r = call(EVHTTP_REQ_GET, path, NULL);
        return show(&r, table_endpoint);
    }
    if (strcmp(cmd, "version") == 0) {
        need(argc, 4);
        const char *sub = argv[1], *ep = argv[2], *v = argv[3];
        if (strcmp(sub, "create") == 0) {
            json_t *b = version_body(argc - 3, argv + 3, v, true);
            snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/versions", ep);
            r = call(EVHTTP_REQ_POST, path, b);
            json_decref(b);
        } else if (strcmp(sub, "update") == 0) {
            json_t *b = version_body(argc - 3, argv + 3, v, false);
            snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/versions/%s", ep, v);
            r = call(EVHTTP_REQ_PATCH, path, b);
            json_decref(b);
        } else if (strcmp(sub, "delete") == 0 && argc == 4) {
            snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/versions/%s", ep, v);
            r = call(EVHTTP_REQ_DELETE, path, NULL);
        } else {
            usage(stderr);
            return 2;
        }
        return show(&r, table_endpoint);
    }
    if (strcmp(cmd, "keys") == 0 && argc == 2) {
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/keys", argv[1]);
        r = call(EVHTTP_REQ_GET, path, NULL);
        return show(&r, table_keys);
    }
    if (strcmp(cmd, "regen-key") == 0 && argc == 3) {
        const char *kt = strcmp(argv[2], "primary") == 0 ? "Primary" :
                         strcmp(argv[2], "secondary") == 0 ? "Secondary" : NULL;
        if (kt == NULL) {
            fprintf(stderr, "sluicectl: regen-key takes primary or secondary\n");
            return 2;
        }
        json_t *b = json_pack("{s:s}", "key_type", kt);
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/keys/regenerate", argv[1]);
        r = call(EVHTTP_REQ_POST, path, b);
        json_decref(b);
        return show(&r, table_keys);
    }
    if (strcmp(cmd, "token") == 0 && argc == 2) {
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/token", argv[1]);
        json_t *b = json_object();
        r = call(EVHTTP_REQ_POST, path, b);
        json_decref(b);
        return show(&r, table_token);
    }
    if (strcmp(cmd, "reload") == 0 && argc == 1) {
        r = call(EVHTTP_REQ_POST, "/admin/v1/reload", NULL);
        return show(&r, table_generation);
    }
    if (strcmp(cmd, "metrics") == 0 && (argc == 2 || argc == 4)) {
        int minutes = 60;
        if (argc == 4) {
            if (strcmp(argv[2], "--minutes") != 0 || (minutes = atoi(argv[3])) <= 0) {
                usage(stderr);
                return 2;
            }
        }
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/metrics?minutes=%d", argv[1],
                 minutes);
        r = call(EVHTTP_REQ_GET, path, NULL);
        return show(&r, table_metrics);
    }
    if (strcmp(cmd, "fleet") == 0 && argc == 1) {
        r = call(EVHTTP_REQ_GET, "/admin/v1/fleet", NULL);
        return show(&r, table_fleet);
    }
    if (strcmp(cmd, "shadow") == 0 && (argc == 2 || argc == 4)) {
        int minutes = 60;
        if (argc == 4 && (strcmp(argv[2], "--minutes") != 0 || (minutes = atoi(argv[3])) <= 0)) {
            usage(stderr);
            return 2;
        }
        return cmd_shadow(argv[1], minutes);
    }
    if (strcmp(cmd, "rollout") == 0 && argc == 4) {
        snprintf(path, sizeof(path), "/admin/v1/endpoints/%s/versions/%s/rollout", argv[1],
                 argv[2]);
        if (strcmp(argv[3], "status") == 0)
            r = call(EVHTTP_REQ_GET, path, NULL);
        else {
            json_t *b = json_pack("{s:s}", "action", argv[3]);
            r = call(EVHTTP_REQ_POST, path, b);
            json_decref(b);
        }
        return show(&r, table_rollout);
    }
    usage(stderr);
    return 2;
}
