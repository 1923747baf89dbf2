/*
 * config/internal.h — shared by the files of config/ only (everyone else
 * sees config/config.h): the parser's context and the field readers of
 * fields.c, used by config.c (the top level) and endpoint.c (endpoints and
 * versions).
 *
 * Who calls whom (one way):
 *   config.c -> endpoint.c -> fields.c -> text.c
 *   config.c -> fields.c, text.c, fleet.c (config_fleet_name_valid)
 *   edit.c, fleet.c -> text.c
 */
#ifndef SLUICE_CONFIG_INTERNAL_H
#define SLUICE_CONFIG_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

#define PATH_MAX_LEN 256

struct pctx {
    struct cfg_errors *errs;
    const char *basedir;
};

/* fields.c */
/* One error at a JSON path (the parser's err(), exported under a prefix so
 * as not to stand in for libc's err(3)). */
void cfg_err(struct pctx *p, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void subpath(char *out, const char *parent, const char *key);
void indexpath(char *out, const char *parent, size_t i);
void check_fields(struct pctx *p, json_t *obj, const char *path,
                  const char *const *allowed);
json_t *get_obj(struct pctx *p, json_t *obj, const char *path, const char *key);
void get_int(struct pctx *p, json_t *obj, const char *path, const char *key,
             int *dst, int def, long min, long max);
void get_u64(struct pctx *p, json_t *obj, const char *path, const char *key,
             uint64_t *dst, uint64_t def, uint64_t min, uint64_t max);
void get_bool(struct pctx *p, json_t *obj, const char *path, const char *key,
              bool *dst, bool def);
void get_str(struct pctx *p, json_t *obj, const char *path, const char *key,
             char **dst, const char *def);
char *resolve_path(const struct pctx *p, const char *file);
bool contains_nocase(const char *s, const char *word);
void get_secret(struct pctx *p, json_t *obj, const char *path, const char *key,
                char **dst);
void get_pct(struct pctx *p, json_t *obj, const char *path, const char *key,
             int *dst, int max);
void get_name(struct pctx *p, json_t *obj, const char *path, char out[CFG_NAME_MAX + 1]);

/* endpoint.c */
void parse_endpoint(struct pctx *p, json_t *obj, const char *path,
                    struct cfg_endpoint *ep);

/* text.c */
char *xstrdup(const char *s);

#endif
