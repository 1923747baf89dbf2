/*
 * sluicectl: the operator's CLI over the admin API (SPEC §1, §5, §8).
 *
 * HTTP goes through libcurl: http:// or https:// only (the certificate and
 * the host name verified unless --insecure; --cacert names the CA bundle),
 * no redirects followed, so the admin token only ever goes to the URL
 * given, and over TLS when that URL says https. Names are percent-encoded
 * into the paths.
 *
 * Options: the global ones (--admin, --token, --cacert, --insecure, -o
 * json/--json, --version, --help) anywhere on the line; a command's own
 * after the command. Every option takes "--name value" or "--name=value".
 *
 * Exit codes: 0 done, 1 the server refused or could not be reached (its
 * error message is printed as given), 2 usage error, 3 `rollout … status
 * --watch` saw the rollout end rolled back or aborted.
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

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "unknown"
#endif

#define EXIT_USAGE 2
#define EXIT_ROLLED_BACK 3

static const char *admin_url;
static const char *admin_token;
static const char *ca_file;
static bool insecure;
static bool as_json;
static char *admin_origin;          /* admin_url's scheme://host[:port] */
static char *base_path;             /* its path without the trailing '/' */

struct response {
    int status;                     /* 0: not sent or no answer */
    char *body;
    size_t len;
};

static void
usage(FILE *f)
{
    fprintf(f,
        "usage: sluicectl [--admin URL] [--token TOKEN] [--cacert FILE] [--insecure]\n"
        "                 [-o json | --json] COMMAND ...\n"
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
        "  rollout EP V status --watch [--interval 2s] [--timeout D]\n"
        "                                     follow it until it ends, printing each\n"
        "                                     step and gate evaluation once\n"
        "  rollout EP V plan --steps 5,10,25,50 --step 5m [--promote]\n"
        "      [--min-requests N] [--max-error-rate-increase X] [--max-p99-ratio X]\n"
        "      [--min-agreement X]            set the version's rollout plan\n"
        "  rollout EP V plan --remove         remove the plan (and its state)\n"
        "global options (anywhere on the line; --name=value works too):\n"
        "  --admin URL     http:// or https://; default $SLUICE_ADMIN_URL or\n"
        "                  http://127.0.0.1:9901\n"
        "  --token TOKEN   default $SLUICE_ADMIN_TOKEN\n"
        "  --cacert FILE   trust this CA (PEM) for https:// (default: the system's)\n"
        "  --insecure      do not verify the server's certificate (testing only)\n"
        "  -o json, --json print the server's answers as JSON\n"
        "  --version       print the version\n");
}

/* A usage error: one line naming what is wrong, exit 2. */
static void __attribute__((noreturn, format(printf, 1, 2)))
usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("sluicectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (sluicectl --help for usage)\n", stderr);
    exit(EXIT_USAGE);
}

static void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (p == NULL) {
        fputs("sluicectl: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

/* ---- command-line options ---------------------------------------------------- */

struct optdef {
    const char *name;               /* without the leading "--" */
    bool has_arg;
};

struct optval {
    const char *name;               /* the definition's name */
    const char *val;                /* NULL for a flag */
};

struct cmdline {
    int npos;
    char **pos;
    int nopt;
    struct optval *opt;
};

static const struct optdef global_opts[] = {
    {"admin", true}, {"token", true}, {"cacert", true}, {"insecure", false},
    {"json", false}, {"output", true}, {"version", false}, {"help", false},
    {NULL, false},
};

static const struct optdef *
find_opt(const struct optdef *defs, const char *name, size_t len)
{
    for (; defs != NULL && defs->name != NULL; defs++)
        if (strlen(defs->name) == len && strncmp(defs->name, name, len) == 0)
            return defs;
    return NULL;
}

/* Split argv into positionals and options known to defs ("--name value",
 * "--name=value", and "-o VALUE"/"-oVALUE" for "output", "-h" for "help").
 * With pass_unknown, options defs does not know are kept as positionals (the
 * first pass, for the global options, before the command is known); else
 * they are a usage error naming them. After "--" everything is positional. */
static void
parse_cmdline(int argc, char **argv, const struct optdef *defs, bool pass_unknown,
              const char *what, struct cmdline *out)
{
    memset(out, 0, sizeof(*out));
    out->pos = xrealloc(NULL, sizeof(char *) * ((size_t)argc + 1));
    out->opt = xrealloc(NULL, sizeof(struct optval) * ((size_t)argc + 1));
    bool rest = false;
    for (int i = 0; i < argc; i++) {
        char *a = argv[i];
        if (rest || a[0] != '-' || a[1] == '\0') {
            out->pos[out->npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            if (pass_unknown)
                out->pos[out->npos++] = a;    /* the second pass needs it too */
            rest = true;
            continue;
        }
        const char *name, *val = NULL;
        size_t len;
        char shortname[3] = {0};
        if (a[1] == '-') {
            name = a + 2;
            const char *eq = strchr(name, '=');
            len = eq ? (size_t)(eq - name) : strlen(name);
            if (eq)
                val = eq + 1;
        } else {
            /* -o VALUE, -oVALUE, -h */
            shortname[0] = a[0];
            shortname[1] = a[1];
            name = a[1] == 'o' ? "output" : a[1] == 'h' ? "help" : NULL;
            len = name ? strlen(name) : 0;
            if (name != NULL && a[1] == 'o' && a[2] != '\0')
                val = a[2] == '=' ? a + 3 : a + 2;
            else if (name != NULL && a[2] != '\0')
                name = NULL;
        }
        const struct optdef *d = name ? find_opt(defs, name, len) : NULL;
        if (d == NULL) {
            if (pass_unknown) {
                out->pos[out->npos++] = a;
                continue;
            }
            if (a[1] == '-')
                usage_error("unknown option --%.*s%s%s", (int)len, name,
                            what ? " for " : "", what ? what : "");
            usage_error("unknown option %s%s%s", a, what ? " for " : "", what ? what : "");
        }
        const char *shown = shortname[0] ? shortname : NULL;
        if (d->has_arg && val == NULL) {
            if (i + 1 >= argc) {
                if (shown)
                    usage_error("%s needs a value", shown);
                usage_error("--%s needs a value", d->name);
            }
            val = argv[++i];
        } else if (!d->has_arg && val != NULL)
            usage_error("--%s takes no value (got \"%s\")", d->name, val);
        out->opt[out->nopt].name = d->name;
        out->opt[out->nopt].val = val;
        out->nopt++;
    }
    out->pos[out->npos] = NULL;
}

/* The last value of an option, or NULL. */
static const char *
opt_last(const struct cmdline *c, const char *name)
{
    const char *v = NULL;
    for (int i = 0; i < c->nopt; i++)
        if (strcmp(c->opt[i].name, name) == 0)
            v = c->opt[i].val ? c->opt[i].val : "";
    return v;
}

static double
opt_number(const char *name, const char *val)
{
    char *end;
    errno = 0;
    double d = strtod(val, &end);
    if (*val == '\0' || *end != '\0' || errno != 0 || d != d)
        usage_error("--%s needs a number, got \"%s\"", name, val);
    return d;
}

static long long
opt_int(const char *name, const char *val, long long min)
{
    char *end;
    errno = 0;
    long long n = strtoll(val, &end, 10);
    if (*val == '\0' || *end != '\0' || errno != 0 || n < min)
        usage_error("--%s needs a whole number of at least %lld, got \"%s\"", name, min, val);
    return n;
}

/* A duration: N (seconds) or N followed by s, m or h. */
static long long
opt_duration(const char *name, const char *val)
{
    char *end;
    errno = 0;
    long long n = strtoll(val, &end, 10);
    long long mul = 0;
    if (end != val && errno == 0 && n > 0) {
        if (*end == '\0' || strcmp(end, "s") == 0)
            mul = 1;
        else if (strcmp(end, "m") == 0)
            mul = 60;
        else if (strcmp(end, "h") == 0)
            mul = 3600;
    }
    if (mul == 0 || n > 7 * 86400 / mul)
        usage_error("--%s needs a duration such as 90s, 5m or 1h, got \"%s\"", name, val);
    return n * mul;
}

static json_t *
json_num(double d)
{
    return d == (double)(long long)d ? json_integer((long long)d) : json_real(d);
}

/* Positionals of a command: exactly n, else a usage error naming it. */
static void
want_args(const struct cmdline *c, int n, const char *synopsis)
{
    if (c->npos != n)
        usage_error("usage: sluicectl %s", synopsis);
}

/* ---- HTTP: libcurl ------------------------------------------------------------ */

/* Parse and check --admin once: http or https, a host, no query. */
static void
admin_setup(void)
{
    CURLU *admin_base = curl_url();
    char *scheme = NULL, *host = NULL, *path = NULL, *query = NULL;
    CURLUcode rc = curl_url_set(admin_base, CURLUPART_URL, admin_url, 0);
    if (rc != CURLUE_OK)
        usage_error("--admin: not a URL: %s (%s)", admin_url, curl_url_strerror(rc));
    curl_url_get(admin_base, CURLUPART_SCHEME, &scheme, 0);
    if (scheme == NULL || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        usage_error("--admin: %s: the scheme must be http:// or https://, not %s://", admin_url,
                    scheme ? scheme : "?");
    if (curl_url_get(admin_base, CURLUPART_HOST, &host, 0) != CURLUE_OK || host == NULL ||
        *host == '\0')
        usage_error("--admin: %s: no host", admin_url);
    if (curl_url_get(admin_base, CURLUPART_QUERY, &query, 0) == CURLUE_OK && query != NULL)
        usage_error("--admin: %s: no query string allowed", admin_url);
    curl_url_get(admin_base, CURLUPART_PATH, &path, 0);
    size_t n = path ? strlen(path) : 0;
    while (n > 0 && path[n - 1] == '/')
        n--;
    base_path = xrealloc(NULL, n + 1);
    memcpy(base_path, path ? path : "", n);
    base_path[n] = '\0';
    /* The origin as curl writes it (the path set to "/", then dropped): the
     * paths are appended as built, encoded by admin_path. */
    char *origin = NULL;
    curl_url_set(admin_base, CURLUPART_PATH, "/", 0);
    curl_url_set(admin_base, CURLUPART_FRAGMENT, NULL, 0);
    curl_url_get(admin_base, CURLUPART_URL, &origin, 0);
    size_t olen = origin ? strlen(origin) : 0;
    if (olen > 0 && origin[olen - 1] == '/')
        olen--;
    admin_origin = xrealloc(NULL, olen + 1);
    memcpy(admin_origin, origin ? origin : "", olen);
    admin_origin[olen] = '\0';
    curl_free(origin);
    curl_url_cleanup(admin_base);
    /* A token in clear over a network: say so (loopback and a tunnel such
     * as kubectl port-forward are fine). */
    if (strcmp(scheme, "http") == 0 && admin_token != NULL && *admin_token != '\0' &&
        strncmp(host, "127.", 4) != 0 && strcmp(host, "localhost") != 0 &&
        strcmp(host, "[::1]") != 0)
        fprintf(stderr, "sluicectl: warning: the admin token goes to %s in clear text "
                "(http://); use https:// across a network\n", host);
    if (insecure && strcmp(scheme, "https") != 0)
        fprintf(stderr, "sluicectl: --insecure has no effect on %s\n", admin_url);
    curl_free(scheme);
    curl_free(host);
    curl_free(path);
    curl_free(query);
}

/* An admin path built from literal pieces and names: each name is
 * percent-encoded (RFC 3986: everything but unreserved characters), so a
 * name can never reach another path or a query. The pieces alternate:
 * literal, name, literal, name, ..., ending with NULL. Free the result. */
static char *
admin_path(const char *first, ...)
{
    va_list ap;
    size_t len = strlen(first);
    char *out = xrealloc(NULL, len + 1);
    memcpy(out, first, len + 1);
    va_start(ap, first);
    bool is_name = true;
    const char *piece;
    while ((piece = va_arg(ap, const char *)) != NULL) {
        char *enc = is_name ? curl_easy_escape(NULL, piece, 0) : NULL;
        const char *add = enc ? enc : piece;
        size_t alen = strlen(add);
        out = xrealloc(out, len + alen + 1);
        memcpy(out + len, add, alen + 1);
        len += alen;
        curl_free(enc);
        is_name = !is_name;
    }
    va_end(ap);
    return out;
}

static size_t
on_body(char *data, size_t size, size_t n, void *arg)
{
    struct response *r = arg;
    size_t add = size * n;
    r->body = xrealloc(r->body, r->len + add + 1);
    memcpy(r->body + r->len, data, add);
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

static char curl_error[CURL_ERROR_SIZE];
static CURLcode curl_result;

/* One request to the admin API. path is an admin_path (already encoded),
 * possibly with "?query". Status 0 when it could not be sent or answered;
 * curl_error says why. */
static struct response
call(const char *method, const char *path, json_t *body)
{
    struct response r = {0};
    char *url = xrealloc(NULL, strlen(admin_origin) + strlen(base_path) + strlen(path) + 1);
    sprintf(url, "%s%s%s", admin_origin, base_path, path);
    char *text = NULL;

    CURL *c = curl_easy_init();
    struct curl_slist *h = NULL;
    char *auth = NULL;
    if (c == NULL) {
        snprintf(curl_error, sizeof(curl_error), "cannot start libcurl");
        goto out;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sluicectl/" SLUICE_VERSION);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, insecure ? 0L : 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, insecure ? 0L : 2L);
    if (ca_file != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "GET") != 0 || body != NULL) {
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, text ? text : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(text ? strlen(text) : 0));
        /* No body: no Content-Type (libcurl would say form-urlencoded). */
        h = curl_slist_append(h, text != NULL ? "Content-Type: application/json" :
                              "Content-Type:");
    }
    h = curl_slist_append(h, "Expect:");
    if (admin_token != NULL) {
        auth = xrealloc(NULL, strlen(admin_token) + 32);
        sprintf(auth, "Authorization: Bearer %s", admin_token);
        h = curl_slist_append(h, auth);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_error[0] = '\0';
    curl_result = curl_easy_perform(c);
    if (curl_result == CURLE_OK) {
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        r.status = (int)code;
    } else if (curl_error[0] == '\0')
        snprintf(curl_error, sizeof(curl_error), "%s", curl_easy_strerror(curl_result));
out:
    if (r.status == 0) {
        free(r.body);
        r.body = NULL;
        r.len = 0;
    }
    if (auth != NULL) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    curl_slist_free_all(h);
    if (c != NULL)
        curl_easy_cleanup(c);
    free(text);
    free(url);
    return r;
}

/* Print the server's error as given and return the exit code. */
static int
server_error(const struct response *r)
{
    if (r->status == 0) {
        fprintf(stderr, "sluicectl: cannot reach the admin API at %s: %s\n", admin_url,
                curl_error);
        if (curl_result == CURLE_PEER_FAILED_VERIFICATION ||
            curl_result == CURLE_SSL_CACERT_BADFILE)
            fprintf(stderr, "sluicectl: the server's certificate was not verified: "
                    "--cacert FILE trusts its CA (--insecure skips the check)\n");
        return 1;
    }
    json_t *j = json_loads(r->body ? r->body : "", 0, NULL);
    json_t *e = json_object_get(j, "error");
    if (as_json)
        fprintf(stderr, "%s", r->body ? r->body : "");
    else if (json_is_object(e)) {
        const char *msg = json_string_value(json_object_get(e, "message"));
        fprintf(stderr, "sluicectl: %d %s: %s\n", r->status,
                json_string_value(json_object_get(e, "code")), msg ? msg : "");
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(e, "errors"), i, x)
            if (json_is_string(x) && (i > 0 || msg == NULL ||
                                      strcmp(json_string_value(x), msg) != 0))
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
    else if (as_json) {
        if (r->body != NULL && r->len > 0) {
            fputs(r->body, stdout);
            if (r->body[r->len - 1] != '\n')
                putchar('\n');
        }
    } else {
        json_t *j = json_loads(r->body ? r->body : "", 0, NULL);
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
static const struct optdef version_opts[] = {
    {"upstream", true}, {"percent", true}, {"default", false}, {"control", false},
    {"treatment", false}, {"description", true}, {"tag", true}, {"path", true},
    {"mirror", true}, {NULL, false},
};

static json_t *
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

static const char *
real_or_dash(json_t *v, const char *fmt, double scale, char *buf, size_t len)
{
    if (json_is_number(v))
        snprintf(buf, len, fmt, json_number_value(v) * scale);
    else
        snprintf(buf, len, "-");
    return buf;
}

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
    return json_pack("{s:o}", "rollout", plan);
}

static const struct optdef rollout_plan_opts[] = {
    {"steps", true}, {"step", true}, {"promote", false}, {"min-requests", true},
    {"max-error-rate-increase", true}, {"max-p99-ratio", true}, {"min-agreement", true},
    {"remove", false}, {NULL, false},
};
static const struct optdef rollout_status_opts[] = {
    {"watch", false}, {"interval", true}, {"timeout", true}, {NULL, false},
};
static const struct optdef no_opts[] = {{NULL, false}};
static const struct optdef minutes_opts[] = {{"minutes", true}, {NULL, false}};

static int
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

int
main(int argc, char **argv)
{
    static struct cmdline g;        /* static: reachable to the end (LSan) */
    parse_cmdline(argc - 1, argv + 1, global_opts, true, NULL, &g);
    admin_url = getenv("SLUICE_ADMIN_URL");
    admin_token = getenv("SLUICE_ADMIN_TOKEN");
    for (int i = 0; i < g.nopt; i++) {
        const char *o = g.opt[i].name, *val = g.opt[i].val;
        if (strcmp(o, "admin") == 0)
            admin_url = val;
        else if (strcmp(o, "token") == 0)
            admin_token = val;
        else if (strcmp(o, "cacert") == 0)
            ca_file = val;
        else if (strcmp(o, "insecure") == 0)
            insecure = true;
        else if (strcmp(o, "json") == 0)
            as_json = true;
        else if (strcmp(o, "output") == 0) {
            if (strcmp(val, "json") == 0)
                as_json = true;
            else if (strcmp(val, "table") == 0 || strcmp(val, "text") == 0)
                as_json = false;
            else
                usage_error("-o takes json or table, got \"%s\"", val);
        } else if (strcmp(o, "help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(o, "version") == 0) {
            curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
            printf("sluicectl %s (libcurl %s, %s)\n", SLUICE_VERSION, cv->version,
                   cv->ssl_version ? cv->ssl_version : "no TLS");
            return 0;
        }
    }
    if (admin_url == NULL || *admin_url == '\0')
        admin_url = "http://127.0.0.1:9901";
    if (ca_file != NULL && access(ca_file, R_OK) != 0)
        usage_error("--cacert: cannot read %s: %s", ca_file, strerror(errno));
    if (g.npos < 1) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fputs("sluicectl: cannot initialise libcurl\n", stderr);
        return 1;
    }
    admin_setup();
    argc = g.npos;
    argv = g.pos;
    const char *cmd = argv[0];
    static struct cmdline c;
    struct response r;
    char *path;
    int rc;

    if (strcmp(cmd, "rollout") == 0)
        return cmd_rollout(argc, argv);
    if (strcmp(cmd, "version") == 0) {
        const char *sub = argc > 1 ? argv[1] : "";
        bool create = strcmp(sub, "create") == 0, update = strcmp(sub, "update") == 0;
        if (!create && !update && strcmp(sub, "delete") != 0)
            usage_error("version takes create, update or delete, not \"%s\"", sub);
        parse_cmdline(argc, argv, create || update ? version_opts : no_opts, false,
                      create ? "version create" : update ? "version update" : "version delete",
                      &c);
        want_args(&c, 4, create ? "version create EP V [options]" :
                  update ? "version update EP V [options]" : "version delete EP V");
        const char *ep = c.pos[2], *v = c.pos[3];
        if (create) {
            json_t *b = version_body(&c, v, true);
            path = admin_path("/admin/v1/endpoints/", ep, "/versions", NULL);
            r = call("POST", path, b);
            json_decref(b);
        } else if (update) {
            json_t *b = version_body(&c, v, false);
            path = admin_path("/admin/v1/endpoints/", ep, "/versions/", v, NULL);
            r = call("PATCH", path, b);
            json_decref(b);
        } else {
            path = admin_path("/admin/v1/endpoints/", ep, "/versions/", v, NULL);
            r = call("DELETE", path, NULL);
        }
        free(path);
        return show(&r, table_endpoint);
    }
    bool minutes = strcmp(cmd, "metrics") == 0 || strcmp(cmd, "shadow") == 0;
    parse_cmdline(argc, argv, minutes ? minutes_opts : no_opts, false, cmd, &c);
    if (strcmp(cmd, "endpoints") == 0) {
        want_args(&c, 1, "endpoints");
        r = call("GET", "/admin/v1/endpoints", NULL);
        return show(&r, table_endpoints);
    }
    if (strcmp(cmd, "show") == 0) {
        want_args(&c, 2, "show EP");
        path = admin_path("/admin/v1/endpoints/", c.pos[1], NULL);
        r = call("GET", path, NULL);
        free(path);
        return show(&r, table_endpoint);
    }
    if (strcmp(cmd, "keys") == 0) {
        want_args(&c, 2, "keys EP");
        path = admin_path("/admin/v1/endpoints/", c.pos[1], "/keys", NULL);
        r = call("GET", path, NULL);
        free(path);
        return show(&r, table_keys);
    }
    if (strcmp(cmd, "regen-key") == 0) {
        want_args(&c, 3, "regen-key EP primary|secondary");
        const char *kt = strcmp(c.pos[2], "primary") == 0 ? "Primary" :
                         strcmp(c.pos[2], "secondary") == 0 ? "Secondary" : NULL;
        if (kt == NULL)
            usage_error("regen-key takes primary or secondary, not \"%s\"", c.pos[2]);
        json_t *b = json_pack("{s:s}", "key_type", kt);
        path = admin_path("/admin/v1/endpoints/", c.pos[1], "/keys/regenerate", NULL);
        r = call("POST", path, b);
        free(path);
        json_decref(b);
        return show(&r, table_keys);
    }
    if (strcmp(cmd, "token") == 0) {
        want_args(&c, 2, "token EP");
        path = admin_path("/admin/v1/endpoints/", c.pos[1], "/token", NULL);
        json_t *b = json_object();
        r = call("POST", path, b);
        free(path);
        json_decref(b);
        return show(&r, table_token);
    }
    if (strcmp(cmd, "reload") == 0) {
        want_args(&c, 1, "reload");
        r = call("POST", "/admin/v1/reload", NULL);
        return show(&r, table_generation);
    }
    if (strcmp(cmd, "fleet") == 0) {
        want_args(&c, 1, "fleet");
        r = call("GET", "/admin/v1/fleet", NULL);
        return show(&r, table_fleet);
    }
    if (minutes) {
        want_args(&c, 2, strcmp(cmd, "metrics") == 0 ? "metrics EP [--minutes N]" :
                  "shadow EP [--minutes N]");
        const char *mv = opt_last(&c, "minutes");
        long long n = mv ? opt_int("minutes", mv, 1) : 60;
        if (strcmp(cmd, "shadow") == 0)
            return cmd_shadow(c.pos[1], n);
        char q[64];
        snprintf(q, sizeof(q), "/metrics?minutes=%lld", n);
        path = admin_path("/admin/v1/endpoints/", c.pos[1], q, NULL);
        r = call("GET", path, NULL);
        free(path);
        return show(&r, table_metrics);
    }
    usage_error("unknown command \"%s\"", cmd);
    (void)rc;
}
