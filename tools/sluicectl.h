/*
 * sluicectl's own declarations, shared by its files (sluicectl.c,
 * ctl_common.c, ctl_show.c, ctl_rollout.c). Calls run sluicectl.c ->
 * ctl_rollout.c -> ctl_show.c -> ctl_common.c.
 */
#ifndef SLUICE_SLUICECTL_H
#define SLUICE_SLUICECTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#ifndef SLUICE_VERSION
#define SLUICE_VERSION "unknown"
#endif

#define EXIT_USAGE 2
#define EXIT_ROLLED_BACK 3

/* The global options (ctl_common.c). */
extern const char *admin_url;
extern const char *admin_token;
extern const char *ca_file;
extern bool insecure;
extern bool as_json;
extern char *admin_origin;          /* admin_url's scheme://host[:port] */
extern char *base_path;             /* its path without the trailing '/' */

struct response {
    int status;                     /* 0: not sent or no answer */
    char *body;
    size_t len;
};

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

/* ctl_common.c */
extern const struct optdef global_opts[], no_opts[], minutes_opts[];
void usage(FILE *f);
void usage_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void *xrealloc(void *p, size_t n);
void parse_cmdline(int argc, char **argv, const struct optdef *defs, bool pass_unknown,
                   const char *what, struct cmdline *out);
const char *opt_last(const struct cmdline *c, const char *name);
double opt_number(const char *name, const char *val);
long long opt_int(const char *name, const char *val, long long min);
long long opt_duration(const char *name, const char *val);
json_t *json_num(double d);
void want_args(const struct cmdline *c, int n, const char *synopsis);
void admin_setup(void);
char *admin_path(const char *first, ...);
struct response call(const char *method, const char *path, json_t *body);
int server_error(const struct response *r);
const char *num(json_t *v, char *buf, size_t len);
const char *step1(json_t *v, char *buf, size_t len);
int show(struct response *r, void (*table)(json_t *));

/* ctl_show.c */
extern const struct optdef version_opts[];
void table_endpoints(json_t *j);
void table_endpoint(json_t *ep);
void table_keys(json_t *j);
void table_token(json_t *j);
void table_generation(json_t *j);
void table_metrics(json_t *j);
void table_fleet(json_t *j);
int cmd_shadow(const char *ep, long long minutes);
json_t *version_body(const struct cmdline *c, const char *name, bool create);
const char *real_or_dash(json_t *v, const char *fmt, double scale, char *buf, size_t len);

/* ctl_rollout.c */
int cmd_rollout(int argc, char **argv);

#endif
