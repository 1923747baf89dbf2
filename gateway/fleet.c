/*
 * Fleet membership (SPEC §6), on the main thread: the shared part of the
 * config (endpoints, tokens) lives in Redis at sluice:fleet:{NAME}:config
 * as {"generation": N, ...}; every instance applies the newest generation
 * it sees there, through control_apply(), exactly as a reload would.
 *
 * Two hiredis async connections on the main event loop: one for commands
 * (GET, the compare-and-set script, the fleet listing) and one subscribed
 * to sluice:fleet:{NAME}:changed. A message only says "generation N
 * exists": the config is then read with GET, so a lost or repeated message
 * costs nothing, and a 5 s poll catches what the subscription missed.
 *
 * An admin change is edited on the document in use, validated, and written
 * with CAS_SCRIPT, which sets the key only if its generation is still the
 * one the change was based on, and publishes in the same step. A change
 * that loses is edited again on the generation the script returned, at most
 * FLEET_RETRIES times. Only the start (before any worker exists) talks to
 * Redis synchronously, so that an instance never serves a stale file when
 * the fleet's config is reachable.
 *
 * Each applied shared part is kept in a cache file beside the config
 * (0600, written atomically) so that a start without Redis serves the last
 * generation this instance knew rather than its file's seed.
 *
 * Both connections go to the primary that metrics/primary.c knows (the
 * address, or the sentinels' primary): when it moves, both are dropped and
 * opened again there; a connection error, a ROLE that is not master or a
 * READONLY error reports it lost so that the sentinels are asked again.
 */
#include "gateway/gateway.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLEET_RETRIES 3             /* re-edits after a lost race, then 409 */
#define FLEET_POLL_S 5
#define FLEET_BOOT_TIMEOUT_MS 1000

/* KEYS[1] the config key; ARGV: expected generation, new text, channel,
 * new generation. {1, gen} when written, {0, current text or ""} when the
 * key holds another generation. */
static const char CAS_SCRIPT[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local g = 0\n"
    "if cur then\n"
    "  local ok, d = pcall(cjson.decode, cur)\n"
    "  if ok and type(d) == 'table' and tonumber(d.generation) then\n"
    "    g = tonumber(d.generation)\n"
    "  end\n"
    "end\n"
    "if g ~= tonumber(ARGV[1]) then return {0, cur or ''} end\n"
    "redis.call('SET', KEYS[1], ARGV[2])\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
    "return {1, ARGV[4]}\n";

static struct {
    bool enabled;
    struct event_base *base;
    char *name, *key, *channel, *cache_path;
    char *host, *password;
    int port, db;
    redisAsyncContext *ac, *sub;
    bool connected, subscribed;
    bool warned_down;
    struct event *reconnect_ev, *poll_ev;
    json_t *shared;                 /* the shared part applied now */
    uint64_t gen;                   /* its generation; 0: the file's seed */
    uint64_t seen;                  /* the generation Redis had when last read */
    uint64_t bad_gen;               /* a generation that did not apply here */
} F;

bool
fleet_enabled(void)
{
    return F.enabled;
}

uint64_t
fleet_generation(void)
{
    return F.gen;
}

bool
fleet_connected(void)
{
    return F.enabled && F.connected;
}

const char *
fleet_name(void)
{
    return F.name;
}

static char *
xasprintf(const char *fmt, const char *a)
{
    size_t n = strlen(fmt) + strlen(a) + 1;
    char *s = malloc(n);
    if (s == NULL)
        abort();
    snprintf(s, n, fmt, a);
    return s;
}

static void
set_settings(const struct config *cfg)
{
    F.enabled = true;
    F.name = strdup(cfg->fleet_name);
    F.key = xasprintf("sluice:fleet:{%s}:config", cfg->fleet_name);
    F.channel = xasprintf("sluice:fleet:{%s}:changed", cfg->fleet_name);
    F.cache_path = xasprintf("%s.fleet-cache", cfg->path ? cfg->path : "sluice.json");
    /* With sentinels: whichever primary they name, set at each connect. */
    F.host = strdup(cfg->redis.host ? cfg->redis.host : "");
    F.port = cfg->redis.port;
    F.db = cfg->redis.db;
    F.password = cfg->redis.password ? strdup(cfg->redis.password) : NULL;
    if (F.name == NULL || F.host == NULL || (cfg->redis.password && F.password == NULL))
        abort();
}

/* The address the connections use (or last tried). */
static void
set_address(const char *host, int port)
{
    if (strcmp(F.host, host) != 0) {
        char *h = strdup(host);
        if (h == NULL)
            abort();
        free(F.host);
        F.host = h;
    }
    F.port = port;
}

/* The last applied shared part, kept for a start without Redis. */
static void
cache_write(json_t *shared)
{
    char err[512];
    /* config_save: mode 0600, temporary file, fsync, rename. */
    if (config_save(F.cache_path, shared, err, sizeof(err)) < 0)
        log_event(LOG_WARN, "fleet_cache_not_written", ",\"reason\":\"%s\"", log_json(err));
}

static json_t *
cache_read(uint64_t *gen, char *err, size_t errlen)
{
    FILE *f = fopen(F.cache_path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", F.cache_path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                snprintf(err, errlen, "%s: out of memory", F.cache_path);
                return NULL;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    char why[256];
    json_t *s = config_fleet_parse(buf, len, gen, why, sizeof(why));
    free(buf);
    if (s == NULL)
        snprintf(err, errlen, "%s: %s", F.cache_path, why);
    return s;
}

/* The document in use with shared put in, parsed; NULL with errs. */
static struct config *
build(json_t *instance_doc, json_t *shared, const char *basedir, const char *path,
      struct cfg_errors *errs)
{
    json_t *doc = config_fleet_merge(instance_doc, shared);
    if (doc == NULL) {
        cfg_errors_add(errs, "fleet: out of memory");
        return NULL;
    }
    struct config *cfg = config_parse(doc, basedir, errs);
    json_decref(doc);
    if (cfg != NULL && path != NULL && (cfg->path = strdup(path)) == NULL)
        abort();
    return cfg;
}

/* ---- start: synchronous, before any worker exists ------------------------- */

static redisReply *
boot_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        log_event(LOG_WARN, "fleet_redis_error", ",\"error\":\"%s\"", log_json(r->str));
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* The fleet's config text from Redis, seeded from file_doc when absent;
 * malloc'ed, or NULL when Redis cannot be asked. */
static char *
boot_fetch(json_t *file_doc, const struct cfg_redis *rc)
{
    struct timeval tv = {FLEET_BOOT_TIMEOUT_MS / 1000, (FLEET_BOOT_TIMEOUT_MS % 1000) * 1000};
    char host[256];
    int port;
    if (!metrics_primary_resolve(rc, host, sizeof(host), &port, FLEET_BOOT_TIMEOUT_MS / 2)) {
        log_event(LOG_WARN, "fleet_redis_unavailable", ",\"master_name\":\"%s\","
                  "\"error\":\"no sentinel named a primary\"", log_json(rc->master_name));
        return NULL;
    }
    set_address(host, port);
    redisContext *c = redisConnectWithTimeout(F.host, F.port, tv);
    char *text = NULL;
    if (c == NULL || c->err) {
        log_event(LOG_WARN, "fleet_redis_unavailable", ",\"address\":\"%s:%d\",\"error\":\"%s\"",
                  log_json(F.host), F.port, log_json(c ? c->errstr : "out of memory"));
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r;
    if (F.password && (r = boot_cmd(c, "AUTH %s", F.password)) == NULL)
        goto out;
    if (F.password)
        freeReplyObject(r);
    if (F.db && (r = boot_cmd(c, "SELECT %d", F.db)) == NULL)
        goto out;
    if (F.db)
        freeReplyObject(r);
    for (int round = 0; round < 2 && text == NULL; round++) {
        if ((r = boot_cmd(c, "GET %s", F.key)) == NULL)
            goto out;
        if (r->type == REDIS_REPLY_STRING) {
            text = strndup(r->str, r->len);
            freeReplyObject(r);
            break;
        }
        freeReplyObject(r);
        /* Absent: the first instance seeds it; NX, so of two starting at
         * once one seeds and both read the same text on the second round. */
        json_t *seed = config_fleet_shared(file_doc, 1);
        char *s = seed ? json_dumps(seed, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(seed);
        if (s == NULL)
            goto out;
        r = boot_cmd(c, "SET %s %s NX", F.key, s);
        free(s);
        if (r == NULL)
            goto out;
        if (r->type == REDIS_REPLY_STATUS)
            log_event(LOG_INFO, "fleet_seeded", ",\"fleet\":\"%s\",\"generation\":1",
                      log_json(F.name));
        freeReplyObject(r);
    }
out:
    if (text == NULL && c->err)
        log_event(LOG_WARN, "fleet_redis_unavailable", ",\"address\":\"%s:%d\",\"error\":\"%s\"",
                  log_json(F.host), F.port, log_json(c->errstr));
    redisFree(c);
    return text;
}

struct config *
fleet_boot(struct config *file_cfg, struct cfg_errors *errs)
{
    if (file_cfg->fleet_name == NULL)
        return file_cfg;
    set_settings(file_cfg);
    char why[512];
    const char *source = "redis";
    uint64_t gen = 0;
    json_t *shared = NULL;
    char *text = boot_fetch(file_cfg->doc, &file_cfg->redis);
    if (text != NULL) {
        shared = config_fleet_parse(text, strlen(text), &gen, why, sizeof(why));
        free(text);
        if (shared == NULL) {
            cfg_errors_add(errs, "%s: %s", F.key, why);
            config_drop(file_cfg);
            return NULL;
        }
        F.seen = gen;
    } else {
        shared = cache_read(&gen, why, sizeof(why));
        source = "cache";
        if (shared == NULL) {
            /* Nothing better known: the file's own endpoints, generation 0,
             * replaced by the fleet's as soon as Redis answers. */
            log_event(LOG_WARN, "fleet_cache_unusable", ",\"reason\":\"%s\"", log_json(why));
            shared = config_fleet_shared(file_cfg->doc, 0);
            source = "file";
            gen = 0;
        }
    }
    if (shared == NULL) {
        cfg_errors_add(errs, "fleet: out of memory");
        config_drop(file_cfg);
        return NULL;
    }
    struct cfg_errors perr;
    cfg_errors_init(&perr);
    struct config *cfg = build(file_cfg->doc, shared, file_cfg->basedir, file_cfg->path, &perr);
    if (cfg == NULL) {
        for (int i = 0; i < perr.n; i++)
            cfg_errors_add(errs, "fleet %s config (generation %llu): %s", source,
                           (unsigned long long)gen, perr.msg[i]);
        cfg_errors_free(&perr);
        json_decref(shared);
        config_drop(file_cfg);
        return NULL;
    }
    cfg_errors_free(&perr);
    F.shared = shared;
    F.gen = gen;
    if (strcmp(source, "redis") == 0)
        cache_write(shared);
    log_event(LOG_INFO, "fleet_config", ",\"fleet\":\"%s\",\"source\":\"%s\",\"generation\":%llu",
              log_json(F.name), source, (unsigned long long)gen);
    config_drop(file_cfg);
    return cfg;
}

json_t *
fleet_merge_current(json_t *file_doc)
{
    return config_fleet_merge(file_doc, F.shared);
}

/* ---- applying a generation seen in Redis ----------------------------------- */

/* Apply shared (a reference taken over) at gen; false if it cannot apply. */
static bool
apply_shared(json_t *shared, uint64_t gen, const char *why)
{
    struct config *cur = control_current();
    struct cfg_errors errs;
    char err[1024];
    cfg_errors_init(&errs);
    struct config *cfg = build(cur->doc, shared, cur->basedir, cur->path, &errs);
    if (cfg == NULL) {
        if (F.bad_gen != gen) {
            char *all = cfg_errors_join(&errs, "; ");
            log_event(LOG_ERROR, "fleet_config_invalid", ",\"generation\":%llu,\"errors\":\"%s\"",
                      (unsigned long long)gen, log_json(all ? all : "out of memory"));
            free(all);
        }
        F.bad_gen = gen;
        cfg_errors_free(&errs);
        json_decref(shared);
        return false;
    }
    cfg_errors_free(&errs);
    if (control_apply(cfg, err, sizeof(err)) < 0) {
        log_event(LOG_ERROR, "fleet_apply_failed", ",\"generation\":%llu,\"reason\":\"%s\"",
                  (unsigned long long)gen, log_json(err));
        config_drop(cfg);
        json_decref(shared);
        return false;
    }
    json_decref(F.shared);
    F.shared = shared;
    F.gen = gen;
    cache_write(shared);
    metrics_redis_set_fleet(control_metrics(), F.name, F.gen);
    log_event(LOG_INFO, "fleet_applied", ",\"fleet\":\"%s\",\"generation\":%llu,\"via\":\"%s\"",
              log_json(F.name), (unsigned long long)gen, why);
    return true;
}

struct cas;
static void send_cas(json_t *text_src, uint64_t expected, uint64_t newgen, struct cas *c);
static void drop_all(const char *why);

/* A text read from Redis: apply it when newer; when Redis holds an older
 * generation or none (it lost its data), put ours back. */
static void
take_remote(const char *text, size_t len, const char *via)
{
    if (len == 0) {
        F.seen = 0;
        if (F.shared != NULL) {
            log_event(LOG_WARN, "fleet_config_restored", ",\"generation\":%llu,"
                      "\"reason\":\"the key is absent\"", (unsigned long long)(F.gen ? F.gen : 1));
            send_cas(F.shared, 0, F.gen ? F.gen : 1, NULL);
        }
        return;
    }
    char why[256];
    uint64_t gen;
    json_t *s = config_fleet_parse(text, len, &gen, why, sizeof(why));
    if (s == NULL) {
        log_event(LOG_ERROR, "fleet_config_unreadable", ",\"key\":\"%s\",\"reason\":\"%s\"",
                  log_json(F.key), log_json(why));
        return;
    }
    F.seen = gen;
    if (config_fleet_newer(F.gen, gen)) {
        if (gen != F.bad_gen)
            apply_shared(s, gen, via);
        else
            json_decref(s);
        return;
    }
    json_decref(s);
    if (gen < F.gen) {
        log_event(LOG_WARN, "fleet_config_restored", ",\"generation\":%llu,\"found\":%llu",
                  (unsigned long long)F.gen, (unsigned long long)gen);
        send_cas(F.shared, gen, F.gen, NULL);
    }
}

/* Why a GET was sent, for the log; passed as an index, not a pointer. */
static const char *const vias[] = {"reconnect", "subscribe", "message", "poll"};
enum { VIA_RECONNECT, VIA_SUBSCRIBE, VIA_MESSAGE, VIA_POLL };

static void
on_get(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r == NULL || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL))
        return;
    take_remote(r->type == REDIS_REPLY_STRING ? r->str : "",
                r->type == REDIS_REPLY_STRING ? r->len : 0, vias[(intptr_t)arg]);
}

static void
fetch(int via)
{
    if (F.connected)
        redisAsyncCommand(F.ac, on_get, (void *)(intptr_t)via, "GET %s", F.key);
}

/* ---- compare-and-set ------------------------------------------------------ */

struct cas {
    fleet_edit_fn edit;
    fleet_done_fn done;
    void *arg;
    int tries;
    uint64_t newgen;
    struct config *cfg;             /* the validated result, applied on success */
    json_t *shared;
};

static void attempt(struct cas *c);

static void
cas_finish(struct cas *c, int status, const char *msg, const struct cfg_errors *errs)
{
    if (c->done)
        c->done(c->arg, status, msg, errs);
    config_drop(c->cfg);
    json_decref(c->shared);
    free(c);
}

static void
on_cas(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    struct cas *c = arg;
    if (c == NULL)
        return;
    if (r == NULL) {
        cas_finish(c, 503, "Redis went away during the change: it may or may not have been "
                   "made; read the endpoint again", NULL);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY") != NULL) {
        /* Written to a demoted primary: nothing was written; find the new one. */
        cas_finish(c, 503, "the Redis primary is changing (failover): try again", NULL);
        drop_all("the node is a replica now (READONLY)");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        log_event(LOG_ERROR, "fleet_cas_failed", ",\"error\":\"%s\"",
                  log_json(r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
        cas_finish(c, 500, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply from Redis",
                   NULL);
        return;
    }
    if (r->element[0]->integer == 1) {
        F.seen = c->newgen;
        if (c->edit == NULL) {          /* a restore: nothing to answer */
            cas_finish(c, 0, NULL, NULL);
            return;
        }
        /* Ours now; apply here before answering (the others follow by
         * message). The snapshot was validated before the write. */
        char err[1024];
        if (config_fleet_newer(F.gen, c->newgen)) {
            if (control_apply(c->cfg, err, sizeof(err)) < 0) {
                log_event(LOG_ERROR, "fleet_apply_failed", ",\"generation\":%llu,"
                          "\"reason\":\"%s\"", (unsigned long long)c->newgen, log_json(err));
                char msg[1200];
                snprintf(msg, sizeof(msg), "written to the fleet as generation %llu but not "
                         "applied here: %s", (unsigned long long)c->newgen, err);
                cas_finish(c, 500, msg, NULL);
                return;
            }
            c->cfg = NULL;              /* control_apply took it */
            json_decref(F.shared);
            F.shared = c->shared;
            c->shared = NULL;
            F.gen = c->newgen;
            cache_write(F.shared);
            metrics_redis_set_fleet(control_metrics(), F.name, F.gen);
            log_event(LOG_INFO, "fleet_applied", ",\"fleet\":\"%s\",\"generation\":%llu,"
                      "\"via\":\"change\"", log_json(F.name), (unsigned long long)F.gen);
        }
        cas_finish(c, 0, NULL, NULL);
        return;
    }
    /* Lost the race: catch up with what won, then edit that. */
    redisReply *cur = r->element[1];
    if (cur->type == REDIS_REPLY_STRING)
        take_remote(cur->str, cur->len, "race");
    if (c->edit == NULL) {
        cas_finish(c, 0, NULL, NULL);
        return;
    }
    if (++c->tries > FLEET_RETRIES) {
        cas_finish(c, 409, "the fleet config changed under this change too often; try again",
                   NULL);
        return;
    }
    config_drop(c->cfg);
    c->cfg = NULL;
    json_decref(c->shared);
    c->shared = NULL;
    attempt(c);
}

/* Write shared (text of it at newgen) if Redis still holds expected; with
 * c NULL, a restore that nobody waits for. */
static void
send_cas(json_t *shared, uint64_t expected, uint64_t newgen, struct cas *c)
{
    if (!F.connected) {
        if (c != NULL)
            cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
        return;
    }
    json_t *copy = json_deep_copy(shared);
    if (copy == NULL || json_object_set_new(copy, "generation",
                                            json_integer((json_int_t)newgen)) < 0) {
        json_decref(copy);
        if (c != NULL)
            cas_finish(c, 500, "out of memory", NULL);
        return;
    }
    char *text = json_dumps(copy, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(copy);
    if (text == NULL) {
        if (c != NULL)
            cas_finish(c, 500, "cannot serialise the fleet config", NULL);
        return;
    }
    if (c == NULL) {
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            free(text);
            return;
        }
    }
    c->newgen = newgen;
    char exp[24], ng[24];
    snprintf(exp, sizeof(exp), "%llu", (unsigned long long)expected);
    snprintf(ng, sizeof(ng), "%llu", (unsigned long long)newgen);
    const char *argv[] = {"EVAL", CAS_SCRIPT, "1", F.key, exp, text, F.channel, ng};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    if (redisAsyncCommandArgv(F.ac, on_cas, c, 8, argv, lens) != REDIS_OK)
        cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
    free(text);
}

static void
attempt(struct cas *c)
{
    if (!F.connected) {
        cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
        return;
    }
    struct config *cur = control_current();
    struct cfg_edit_result er = {0};
    json_t *doc = json_deep_copy(cur->doc);
    if (doc == NULL) {
        cas_finish(c, 500, "out of memory", NULL);
        return;
    }
    int rc = c->edit(c->arg, doc, &er);
    if (rc != 0) {
        json_decref(doc);
        cas_finish(c, er.status ? er.status : rc, er.message, NULL);
        return;
    }
    config_fill_keys(doc);
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    c->cfg = config_parse(doc, cur->basedir, &errs);
    if (c->cfg == NULL) {
        json_decref(doc);
        cas_finish(c, 400, errs.n ? errs.msg[0] : "invalid config", &errs);
        cfg_errors_free(&errs);
        return;
    }
    cfg_errors_free(&errs);
    if ((c->cfg->path = strdup(cur->path)) == NULL)
        abort();
    /* Above whatever Redis or this instance has seen: a restored or
     * re-seeded key never makes a generation go back. */
    uint64_t base = F.seen > F.gen ? F.seen : F.gen;
    c->shared = config_fleet_shared(doc, base + 1);
    json_decref(doc);
    if (c->shared == NULL) {
        cas_finish(c, 500, "out of memory", NULL);
        return;
    }
    send_cas(c->shared, F.seen, base + 1, c);
}

void
fleet_change(fleet_edit_fn edit, fleet_done_fn done, void *arg)
{
    struct cas *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        done(arg, 500, "out of memory", NULL);
        return;
    }
    c->edit = edit;
    c->done = done;
    c->arg = arg;
    attempt(c);
}

/* ---- the fleet listing ------------------------------------------------------ */

struct listing {
    fleet_status_fn done;
    void *arg;
    uint64_t newest;
    bool have_newest;
};

static void
on_listing_get(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    struct listing *l = arg;
    if (r != NULL && r->type == REDIS_REPLY_STRING) {
        char why[128];
        json_t *s = config_fleet_parse(r->str, r->len, &l->newest, why, sizeof(why));
        l->have_newest = s != NULL;
        json_decref(s);
    }
}

static void
on_listing(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    struct listing *l = arg;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        l->done(l->arg, 503, NULL, r && r->type == REDIS_REPLY_ERROR ? r->str :
                "Redis is unreachable");
        free(l);
        return;
    }
    const char *self = metrics_redis_instance(control_metrics());
    json_t *list = json_array();
    for (size_t i = 0; list && i + 1 < r->elements; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        json_t *info = json_loadb(v->str, v->len, 0, NULL);
        json_t *fl = json_object_get(info, "fleet");
        if (!json_is_string(fl) || strcmp(json_string_value(fl), F.name) != 0) {
            json_decref(info);
            continue;           /* another fleet's, or a lone instance's */
        }
        json_t *g = json_object_get(info, "fleet_generation");
        uint64_t gen = json_is_integer(g) ? (uint64_t)json_integer_value(g) : 0;
        json_t *lf = json_object_get(info, "last_flush");
        json_t *st = json_object_get(info, "started");
        json_t *ver = json_object_get(info, "version");
        json_t *o = json_pack("{s:s%, s:I, s:b, s:I, s:I, s:s, s:b}",
            "id", k->str, k->len,
            "generation", (json_int_t)gen,
            "applied_newest", l->have_newest && gen == l->newest,
            "last_flush", json_is_integer(lf) ? json_integer_value(lf) : (json_int_t)0,
            "started", json_is_integer(st) ? json_integer_value(st) : (json_int_t)0,
            "version", json_is_string(ver) ? json_string_value(ver) : "",
            "self", self != NULL && strlen(self) == k->len && memcmp(self, k->str, k->len) == 0);
        if (o != NULL)
            json_array_append_new(list, o);
        json_decref(info);
    }
    json_t *body = list ? json_pack("{s:s, s:o, s:I, s:o}", "fleet", F.name,
        "generation", l->have_newest ? json_integer((json_int_t)l->newest) : json_null(),
        "applied_here", (json_int_t)F.gen, "instances", list) : NULL;
    l->done(l->arg, body ? 200 : 500, body, body ? NULL : "out of memory");
    free(l);
}

void
fleet_status(fleet_status_fn done, void *arg)
{
    struct listing *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        done(arg, 500, NULL, "out of memory");
        return;
    }
    l->done = done;
    l->arg = arg;
    if (!F.connected) {
        free(l);
        done(arg, 503, NULL, "Redis is unreachable");
        return;
    }
    /* One connection, answered in order: the GET's reply comes first. */
    redisAsyncCommand(F.ac, on_listing_get, l, "GET %s", F.key);
    redisAsyncCommand(F.ac, on_listing, l, "HGETALL sluice:instances");
}

/* ---- connections ------------------------------------------------------------ */

static void connect_all(void);

static void
schedule_reconnect(void)
{
    struct timeval tv = {1, 0};
    if (F.reconnect_ev != NULL && !evtimer_pending(F.reconnect_ev, NULL))
        evtimer_add(F.reconnect_ev, &tv);
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
    if (ac->data == NULL)
        return;                 /* let go by fleet_stop() */
    bool is_sub = ac->data == &F.sub;
    if (status != REDIS_OK) {
        if (is_sub)
            F.sub = NULL;
        else
            F.ac = NULL;
        metrics_primary_lost();
        if (!F.warned_down && !is_sub)
            log_event(LOG_WARN, "fleet_redis_unavailable", ",\"address\":\"%s:%d\","
                      "\"error\":\"%s\"", log_json(F.host), F.port, log_json(ac->errstr));
        if (!is_sub)
            F.warned_down = true;
        schedule_reconnect();
        return;
    }
    if (is_sub)
        return;
    F.connected = true;
    F.warned_down = false;
    log_event(LOG_INFO, "fleet_redis_connected", ",\"address\":\"%s:%d\",\"generation\":%llu",
              log_json(F.host), F.port, (unsigned long long)F.gen);
    fetch(VIA_RECONNECT);             /* catch up with what changed meanwhile */
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    if (ac->data == NULL)
        return;
    if (ac->data == &F.sub) {
        F.sub = NULL;
        F.subscribed = false;
    } else {
        bool was = F.connected;
        F.ac = NULL;
        F.connected = false;
        if (was)
            log_event(LOG_WARN, "fleet_redis_disconnected", ",\"address\":\"%s:%d\","
                      "\"generation\":%llu", log_json(F.host), F.port,
                      (unsigned long long)F.gen);
        F.warned_down = true;
    }
    metrics_primary_lost();
    schedule_reconnect();
}

/* Both connections let go (their owed replies answered with NULL: a change
 * in flight gets 503); with why, the primary is reported lost. Safe inside
 * a callback of either: hiredis frees after it returns. */
static void
drop_all(const char *why)
{
    static time_t logged;          /* a replica named again and again: one line per 10 s */
    redisAsyncContext *a = F.ac, *s = F.sub;
    if (why != NULL && (a != NULL || s != NULL) && time(NULL) - logged >= 10) {
        logged = time(NULL);
        log_event(LOG_WARN, "fleet_redis_primary_left", ",\"address\":\"%s:%d\","
                  "\"reason\":\"%s\"", log_json(F.host), F.port, log_json(why));
    }
    F.ac = F.sub = NULL;
    F.connected = F.subscribed = false;
    if (a != NULL) {
        a->data = NULL;
        redisAsyncFree(a);
    }
    if (s != NULL) {
        s->data = NULL;
        redisAsyncFree(s);
    }
    if (why != NULL) {
        metrics_primary_lost();
        schedule_reconnect();
    }
}

/* With sentinels the node must still be the primary (see metrics/redis.c). */
static void
on_role(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (ac->data == NULL || r == NULL)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING && strcmp(r->element[0]->str, "master") == 0)
        return;
    drop_all("ROLE is not master");
}

/* The primary may have moved: follow it now. */
static void
on_primary(void *arg)
{
    char host[256];
    int port;
    if (!F.enabled || F.base == NULL || !metrics_primary_get(host, sizeof(host), &port))
        return;
    if (strcmp(F.host, host) == 0 && F.port == port) {
        if (F.ac == NULL && F.sub == NULL && !evtimer_pending(F.reconnect_ev, NULL))
            connect_all();
        return;
    }
    if (F.ac != NULL || F.sub != NULL)
        log_event(LOG_INFO, "fleet_redis_primary_follow", ",\"from\":\"%s:%d\","
                  "\"to\":\"%s:%d\"", log_json(F.host), F.port, log_json(host), port);
    drop_all(NULL);
    set_address(host, port);
    evtimer_del(F.reconnect_ev);
    connect_all();
}

static void
on_message(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        F.subscribed = true;
        fetch(VIA_SUBSCRIBE);         /* anything published before this is read now */
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    uint64_t gen = strtoull(r->element[2]->str, NULL, 10);
    if (config_fleet_newer(F.gen, gen))
        fetch(VIA_MESSAGE);
}

static redisAsyncContext *
open_conn(redisAsyncContext **slot)
{
    char host[256];
    int port;
    if (!metrics_primary_get(host, sizeof(host), &port))
        return NULL;                /* the sentinels have not answered: on_primary opens */
    set_address(host, port);
    redisAsyncContext *ac = redisAsyncConnect(F.host, F.port);
    if (ac == NULL || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        schedule_reconnect();
        return NULL;
    }
    ac->data = slot;
    redisLibeventAttach(ac, F.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (F.password)
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", F.password);
    if (F.db && slot == &F.ac)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", F.db);
    if (slot == &F.ac && metrics_primary_sentinels())
        redisAsyncCommand(ac, on_role, NULL, "ROLE");
    *slot = ac;
    return ac;
}

static void
connect_all(void)
{
    if (F.ac == NULL)
        open_conn(&F.ac);
    if (F.sub == NULL && open_conn(&F.sub) != NULL)
        redisAsyncCommand(F.sub, on_message, NULL, "SUBSCRIBE %s", F.channel);
}

static void
on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    connect_all();
}

static void
on_poll(evutil_socket_t fd, short what, void *arg)
{
    if (F.connected)
        fetch(VIA_POLL);
    else
        connect_all();
}

void
fleet_start(struct event_base *base)
{
    if (!F.enabled)
        return;
    F.base = base;
    F.reconnect_ev = evtimer_new(base, on_reconnect, NULL);
    F.poll_ev = event_new(base, -1, EV_PERSIST, on_poll, NULL);
    if (F.reconnect_ev == NULL || F.poll_ev == NULL)
        abort();
    struct timeval tv = {FLEET_POLL_S, 0};
    event_add(F.poll_ev, &tv);
    metrics_redis_set_fleet(control_metrics(), F.name, F.gen);
    metrics_primary_watch(on_primary, NULL);
    connect_all();
}

void
fleet_stop(void)
{
    if (!F.enabled)
        return;
    metrics_primary_unwatch(on_primary, NULL);
    /* Replies still owed run their callbacks with NULL (answered 503). */
    if (F.ac) {
        F.ac->data = NULL;
        redisAsyncFree(F.ac);
    }
    if (F.sub) {
        F.sub->data = NULL;
        redisAsyncFree(F.sub);
    }
    F.ac = F.sub = NULL;
    F.connected = false;
    if (F.reconnect_ev)
        event_free(F.reconnect_ev);
    if (F.poll_ev)
        event_free(F.poll_ev);
    json_decref(F.shared);
    free(F.name);
    free(F.key);
    free(F.channel);
    free(F.cache_path);
    free(F.host);
    free(F.password);
    memset(&F, 0, sizeof(F));
}
