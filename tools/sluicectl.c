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
 *
 * The files: sluicectl.c the commands' dispatch (main); ctl_common.c the
 * usage, options, HTTP through libcurl and answers shown as given;
 * ctl_show.c the tables of endpoints, versions, keys, metrics, the fleet,
 * and `shadow`; ctl_rollout.c `rollout`. tools/sluicectl.h is theirs.
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
