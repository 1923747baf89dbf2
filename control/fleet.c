/*
 * Fleet membership (SPEC §6), on the main thread: the shared part of the
 * config (endpoints, tokens) lives in Redis at sluice:fleet:{NAME}:config
 * as {"generation": N, "hash": H, ...}; every instance applies what it
 * finds there, through control_apply(), exactly as a reload would.
 *
 * A generation is its number and its content hash (SHA-256 of endpoints and
 * tokens, config_fleet_hash()). An instance applies the key's content
 * whenever either differs from what it runs, an older number included: after
 * a Redis failover that lost a write, every instance converges on what Redis
 * holds, and two instances never run different content under one number.
 *
 * Two hiredis async connections on the main event loop: one for commands
 * (GET, the compare-and-set script, WAIT, the fleet listing) and one
 * subscribed to sluice:fleet:{NAME}:changed. A message only says "a
 * generation was written": the config is then read with GET, so a lost or
 * repeated message costs nothing, and a 5 s poll catches what the
 * subscription missed. Replies on one connection come in order, so a reply
 * never shows an older state than one handled before it.
 *
 * Admin changes are queued and run one at a time, so changes made on one
 * instance never race each other. A change is edited on the document in use
 * and written with CAS_SCRIPT, which sets the key only if it still holds the
 * generation (number and stored hash) that the change was computed from:
 * never a newer one this instance has only heard of. A change that loses is
 * computed again on what the script returned (after applying it here),
 * until it wins or its deadline passes (409). An instance that could not
 * apply the newest generation it read (a certificate it cannot load, a field
 * it does not know) keeps the reason, tries again on every poll and before
 * every change, and answers changes with 503 and the reason meanwhile. With
 * redis.wait_replicas, a written change is answered only after WAIT
 * confirms it; when WAIT falls short the answer is 503: the change is in the
 * primary and applied, but a failover now could lose it.
 *
 * Only the start (before any worker exists) talks to Redis synchronously, so
 * that an instance never serves a stale file when the fleet's config is
 * reachable. Keys are fleet-wide: they are generated once, by whoever seeds
 * the key or creates the endpoint, never by an instance joining the fleet.
 *
 * Each applied shared part is kept in a cache file beside the config
 * (0600, written atomically) so that a start without Redis serves the last
 * generation this instance knew rather than its file's seed.
 *
 * Both connections go to the primary that metrics/primary.c knows (the
 * address, or the sentinels' primary): when it moves, both are dropped and
 * opened again there; a connection error, a ROLE that is not master or a
 * READONLY error reports it lost so that the sentinels are asked again.
 *
 * The files: fleet.c holds the state (struct fleet_state, control/internal.h),
 * the start (synchronous), a reload's fleet part and applying a generation;
 * fleet_cas.c reading the key and the compare-and-set of changes;
 * fleet_conn.c the two connections, the fleet listing, start and stop.
 * Calls run fleet_conn.c -> fleet_cas.c -> fleet.c.
 */
#include "control/control.h"
#include "control/internal.h"

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
#include <time.h>

#define F fleet_state               /* the fleet's one state (control/internal.h) */

struct fleet_state fleet_state;

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

const char *
fleet_hash(void)
{
    return F.hash;
}

uint64_t
fleet_answered_generation(void)
{
    return F.answering;
}

const char *
fleet_behind(uint64_t *gen)
{
    if (F.pending == NULL)
        return NULL;
    if (gen != NULL)
        *gen = F.pending_gen;
    return F.pending_why;
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

uint64_t
fleet_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
    F.cache_path = control_state_path(cfg->path ? cfg->path : "sluice.json", ".fleet-cache");
    /* With sentinels: whichever primary they name, set at each connect. */
    F.host = strdup(cfg->redis.host ? cfg->redis.host : "");
    F.port = cfg->redis.port;
    F.db = cfg->redis.db;
    F.password = cfg->redis.password ? strdup(cfg->redis.password) : NULL;
    if (F.name == NULL || F.host == NULL || (cfg->redis.password && F.password == NULL))
        abort();
}

/* The address the connections use (or last tried). */
void
fleet_set_address(const char *host, int port)
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

/* The document in use with shared put in, parsed and stamped with shared's
 * generation and content hash; NULL with errs. */
struct config *
fleet_build(json_t *instance_doc, json_t *shared, const char *basedir, const char *path,
            struct cfg_errors *errs)
{
    json_t *doc = config_fleet_merge(instance_doc, shared);
    char hash[CFG_FLEET_HASH_LEN + 1];
    if (doc == NULL || !config_fleet_hash(shared, hash)) {
        json_decref(doc);
        cfg_errors_add(errs, "fleet: out of memory");
        return NULL;
    }
    struct config *cfg = config_parse(doc, basedir, errs);
    json_decref(doc);
    if (cfg == NULL)
        return NULL;
    if (path != NULL && (cfg->path = strdup(path)) == NULL)
        abort();
    json_t *g = json_object_get(shared, "generation");
    cfg->fleet_generation = json_is_integer(g) ? (uint64_t)json_integer_value(g) : 0;
    memcpy(cfg->fleet_hash, hash, sizeof(hash));
    return cfg;
}

void
fleet_stamp(struct config *cfg)
{
    if (!F.enabled || cfg == NULL)
        return;
    cfg->fleet_generation = F.gen;
    memcpy(cfg->fleet_hash, F.hash, sizeof(F.hash));
}

/* What runs now: shared (a reference taken over) at gen, content hash. */
void
fleet_set_running(json_t *shared, uint64_t gen, const char *hash)
{
    if (shared != F.shared) {
        json_decref(F.shared);
        F.shared = shared;
    } else
        json_decref(shared);
    F.gen = gen;
    snprintf(F.hash, sizeof(F.hash), "%s", hash);
    /* Whatever was pending is older than what Redis held for this. */
    json_decref(F.pending);
    F.pending = NULL;
    F.pending_gen = 0;
    F.pending_hash[0] = F.pending_why[0] = '\0';
}

/* The generation read from Redis could not be applied here: kept with why
 * (shared taken over), logged once per generation. */
void
fleet_set_pending(json_t *shared, uint64_t gen, const char *hash, const char *why)
{
    if (F.logged_gen != gen || strcmp(F.logged_hash, hash) != 0) {
        log_event(LOG_ERROR, "fleet_apply_failed", ",\"generation\":%llu,\"hash\":\"%s\","
                  "\"reason\":\"%s\"", (unsigned long long)gen, hash, log_json(why));
        F.logged_gen = gen;
        snprintf(F.logged_hash, sizeof(F.logged_hash), "%s", hash);
    }
    if (shared != F.pending) {
        json_decref(F.pending);
        F.pending = shared;
    } else
        json_decref(shared);
    F.pending_gen = gen;
    snprintf(F.pending_hash, sizeof(F.pending_hash), "%s", hash);
    snprintf(F.pending_why, sizeof(F.pending_why), "%s", why);
    config_utf8_fix(F.pending_why);
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

/* The shared part of a file's document with the keys it lacks generated:
 * only for seeding the fleet (or serving alone before it is known). */
static json_t *
seed_from(json_t *file_doc, uint64_t gen)
{
    json_t *doc = json_deep_copy(file_doc);
    if (doc == NULL)
        return NULL;
    config_fill_keys(doc);
    json_t *s = config_fleet_shared(doc, gen);
    json_decref(doc);
    return s;
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
    fleet_set_address(host, port);
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
        /* Absent: the first instance seeds it, with the keys its file lacks
         * generated here, once for the fleet; NX, so of two starting at
         * once one seeds and both read the same text on the second round. */
        json_t *seed = seed_from(file_doc, 1);
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
    } else {
        shared = cache_read(&gen, why, sizeof(why));
        source = "cache";
        if (shared == NULL) {
            /* Nothing better known: the file's own endpoints, generation 0,
             * replaced by the fleet's as soon as Redis answers; keys it
             * lacks are generated in memory only (they become the fleet's
             * only if this instance ends up seeding an empty key). */
            log_event(LOG_WARN, "fleet_cache_unusable", ",\"reason\":\"%s\"", log_json(why));
            shared = seed_from(file_cfg->doc, 0);
            source = "file";
            gen = 0;
        }
    }
    char hash[CFG_FLEET_HASH_LEN + 1];
    if (shared == NULL || !config_fleet_hash(shared, hash)) {
        json_decref(shared);
        cfg_errors_add(errs, "fleet: out of memory");
        config_drop(file_cfg);
        return NULL;
    }
    struct cfg_errors perr;
    cfg_errors_init(&perr);
    struct config *cfg = fleet_build(file_cfg->doc, shared, file_cfg->basedir, file_cfg->path,
                                     &perr);
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
    fleet_set_running(shared, gen, hash);
    if (strcmp(source, "redis") == 0)
        cache_write(shared);
    log_event(LOG_INFO, "fleet_config", ",\"fleet\":\"%s\",\"source\":\"%s\",\"generation\":%llu,"
              "\"hash\":\"%s\"", log_json(F.name), source, (unsigned long long)gen, F.hash);
    config_drop(file_cfg);
    return cfg;
}

json_t *
fleet_merge_current(json_t *file_doc)
{
    return config_fleet_merge(file_doc, F.shared);
}

/* ---- applying a generation read from Redis ---------------------------------- */

void
fleet_applied(const char *via)
{
    cache_write(F.shared);
    metrics_redis_set_fleet(control_metrics(), F.name, F.gen);
    log_event(LOG_INFO, "fleet_applied", ",\"fleet\":\"%s\",\"generation\":%llu,\"hash\":\"%s\","
              "\"via\":\"%s\"", log_json(F.name), (unsigned long long)F.gen, F.hash, via);
}

/* Apply shared (a reference taken over) at gen with content hash; false,
 * with the generation kept pending and why, if it cannot apply here. */
bool
fleet_apply_shared(json_t *shared, uint64_t gen, const char *hash, const char *via)
{
    struct config *cur = control_current();
    struct cfg_errors errs;
    char err[1024];
    cfg_errors_init(&errs);
    struct config *cfg = fleet_build(cur->doc, shared, cur->basedir, cur->path, &errs);
    if (cfg == NULL) {
        char *all = cfg_errors_join(&errs, "; ");
        snprintf(err, sizeof(err), "generation %llu does not validate here: %s",
                 (unsigned long long)gen, all ? all : "out of memory");
        free(all);
        cfg_errors_free(&errs);
        fleet_set_pending(shared, gen, hash, err);
        return false;
    }
    cfg_errors_free(&errs);
    char why[768];
    if (control_apply(cfg, why, sizeof(why)) < 0) {
        config_drop(cfg);
        snprintf(err, sizeof(err), "generation %llu cannot be applied here: %s",
                 (unsigned long long)gen, why);
        fleet_set_pending(shared, gen, hash, err);
        return false;
    }
    fleet_set_running(shared, gen, hash);
    fleet_applied(via);
    return true;
}



void
fleet_schedule_reconnect(void)
{
    struct timeval tv = {1, 0};
    if (F.reconnect_ev != NULL && !evtimer_pending(F.reconnect_ev, NULL))
        evtimer_add(F.reconnect_ev, &tv);
}

/* Both connections let go (their owed replies answered with NULL: a change
 * in flight gets 503); with why, the primary is reported lost. Safe inside
 * a callback of either: hiredis frees after it returns. */
void
fleet_drop_all(const char *why)
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
        fleet_schedule_reconnect();
    }
}

/* In a fleet a re-read file gives the instance part only: the shared part
 * stays the fleet's. Joining, leaving or renaming a fleet needs a restart. */
struct config *
fleet_reload(struct config *cfg, struct cfg_errors *errs)
{
    const char *was = fleet_enabled() ? fleet_name() : NULL;
    const char *now = cfg->fleet_name;
    if ((was == NULL) != (now == NULL) || (was && strcmp(was, now) != 0)) {
        cfg_errors_add(errs, "fleet.name: joining, leaving or changing a fleet needs a restart");
        config_drop(cfg);
        return NULL;
    }
    if (was == NULL)
        return cfg;
    json_t *doc = fleet_merge_current(cfg->doc);
    struct config *merged = doc ? config_parse(doc, cfg->basedir, errs) : NULL;
    json_decref(doc);
    if (merged != NULL && (merged->path = strdup(cfg->path)) == NULL)
        abort();
    fleet_stamp(merged);
    config_drop(cfg);
    return merged;
}
