/*
 * sluicectl's common part (see sluicectl.c): the global settings, usage,
 * command-line options, HTTP to the admin API through libcurl, and
 * answers shown as given (show, server_error, num).
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

const char *admin_url;
const char *admin_token;
const char *ca_file;
bool insecure;
bool as_json;
char *admin_origin;          /* admin_url's scheme://host[:port] */
char *base_path;             /* its path without the trailing '/' */

void
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
        "      [--notify-url URL [--notify-header 'Name: value']... | --no-notify]\n"
        "                                     its notifications (a plan replaces the\n"
        "                                     current one's; dropping it needs --no-notify)\n"
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
void __attribute__((noreturn, format(printf, 1, 2)))
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

void *
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

const struct optdef global_opts[] = {
    {"admin", true}, {"token", true}, {"cacert", true}, {"insecure", false},
    {"json", false}, {"output", true}, {"version", false}, {"help", false},
    {NULL, false},
};
const struct optdef no_opts[] = {{NULL, false}};
const struct optdef minutes_opts[] = {{"minutes", true}, {NULL, false}};

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
void
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
const char *
opt_last(const struct cmdline *c, const char *name)
{
    const char *v = NULL;
    for (int i = 0; i < c->nopt; i++)
        if (strcmp(c->opt[i].name, name) == 0)
            v = c->opt[i].val ? c->opt[i].val : "";
    return v;
}

double
opt_number(const char *name, const char *val)
{
    char *end;
    errno = 0;
    double d = strtod(val, &end);
    if (*val == '\0' || *end != '\0' || errno != 0 || d != d)
        usage_error("--%s needs a number, got \"%s\"", name, val);
    return d;
}

long long
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
long long
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

json_t *
json_num(double d)
{
    return d == (double)(long long)d ? json_integer((long long)d) : json_real(d);
}

/* Positionals of a command: exactly n, else a usage error naming it. */
void
want_args(const struct cmdline *c, int n, const char *synopsis)
{
    if (c->npos != n)
        usage_error("usage: sluicectl %s", synopsis);
}

/* ---- HTTP: libcurl ------------------------------------------------------------ */

/* Parse and check --admin once: http or https, a host, no query. */
void
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
char *
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
struct response
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
int
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

const char *
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
const char *
step1(json_t *v, char *buf, size_t len)
{
    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v) + 1);
    else
        snprintf(buf, len, "-");
    return buf;
}
/* Print an answer (a table, or the JSON as given) and free it. */
int
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
