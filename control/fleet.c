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
 */
#include "control/control.h"

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

#define FLEET_POLL_S 5
#define FLEET_BOOT_TIMEOUT_MS 1000
/* The admin request's deadline for a change, its time in the queue
 * included: below common client timeouts (sluicectl's is 30 s, the tests'
 * 10 s), far above what a change takes (a few milliseconds a try). */
#define FLEET_CHANGE_DEADLINE_MS 8000

/* KEYS[1] the config key; ARGV: expected generation, expected stored hash
 * ("" for none), new text, channel, new generation. {1, gen} when written,
 * {0, current text or ""} when the key holds anything else. */
static const char CAS_SCRIPT[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "local g, h = 0, ''\n"
    "if cur then\n"
    "  local ok, d = pcall(cjson.decode, cur)\n"
    "  if ok and type(d) == 'table' then\n"
    "    if tonumber(d.generation) then g = tonumber(d.generation) end\n"
    "    if type(d.hash) == 'string' then h = d.hash end\n"
    "  end\n"
    "end\n"
    "if g ~= tonumber(ARGV[1]) or h ~= ARGV[2] then return {0, cur or ''} end\n"
    "redis.call('SET', KEYS[1], ARGV[3])\n"
    "redis.call('PUBLISH', ARGV[4], ARGV[5])\n"
    "return {1, ARGV[5]}\n";

struct cas;

static struct {
    bool enabled;
    struct event_base *base;
    char *name, *key, *channel, *cache_path;
    char *host, *password;
    int port, db;
    redisAsyncContext *ac, *sub;
    bool connected, subscribed;
    bool warned_down;
    struct event *reconnect_ev, *poll_ev, *next_ev, *retry_ev, *deadline_ev;
    json_t *shared;                 /* the shared part applied now, as stored */
    uint64_t gen;                   /* its generation; 0: the file's seed */
    char hash[CFG_FLEET_HASH_LEN + 1];  /* its content hash, computed here */
    /* The generation last read from Redis when it differs from the one
     * applied because it could not be applied here: why, and the text, to
     * try again (every poll, every change). Changes are refused meanwhile. */
    json_t *pending;
    uint64_t pending_gen;
    char pending_hash[CFG_FLEET_HASH_LEN + 1];
    char pending_why[768];
    uint64_t logged_gen;            /* the failed generation last logged */
    char logged_hash[CFG_FLEET_HASH_LEN + 1];
    time_t absent_since;            /* the key seen absent while running the file's seed */
    struct cas *q_head, *q_tail;    /* changes in order; the head one runs */
    bool running;
    uint64_t answering;             /* the generation of the change being answered */
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

static uint64_t
now_ms(void)
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

/* The document in use with shared put in, parsed and stamped with shared's
 * generation and content hash; NULL with errs. */
static struct config *
build(json_t *instance_doc, json_t *shared, const char *basedir, const char *path,
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
static void
set_running(json_t *shared, uint64_t gen, const char *hash)
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
static void
set_pending(json_t *shared, uint64_t gen, const char *hash, const char *why)
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
    set_running(shared, gen, hash);
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

static void
applied(const char *via)
{
    cache_write(F.shared);
    metrics_redis_set_fleet(control_metrics(), F.name, F.gen);
    log_event(LOG_INFO, "fleet_applied", ",\"fleet\":\"%s\",\"generation\":%llu,\"hash\":\"%s\","
              "\"via\":\"%s\"", log_json(F.name), (unsigned long long)F.gen, F.hash, via);
}

/* Apply shared (a reference taken over) at gen with content hash; false,
 * with the generation kept pending and why, if it cannot apply here. */
static bool
apply_shared(json_t *shared, uint64_t gen, const char *hash, const char *via)
{
    struct config *cur = control_current();
    struct cfg_errors errs;
    char err[1024];
    cfg_errors_init(&errs);
    struct config *cfg = build(cur->doc, shared, cur->basedir, cur->path, &errs);
    if (cfg == NULL) {
        char *all = cfg_errors_join(&errs, "; ");
        snprintf(err, sizeof(err), "generation %llu does not validate here: %s",
                 (unsigned long long)gen, all ? all : "out of memory");
        free(all);
        cfg_errors_free(&errs);
        set_pending(shared, gen, hash, err);
        return false;
    }
    cfg_errors_free(&errs);
    char why[768];
    if (control_apply(cfg, why, sizeof(why)) < 0) {
        config_drop(cfg);
        snprintf(err, sizeof(err), "generation %llu cannot be applied here: %s",
                 (unsigned long long)gen, why);
        set_pending(shared, gen, hash, err);
        return false;
    }
    set_running(shared, gen, hash);
    applied(via);
    return true;
}

static void send_restore(json_t *shared, uint64_t gen);
static void drop_all(const char *why);

/* A text read from Redis: apply it whenever its number or content differs
 * from what runs (an older number too: Redis is the truth after a failover).
 * An absent key (Redis lost its data) is seeded again from what runs. False
 * when the text is unusable (not a shared part). */
static bool
take_remote(const char *text, size_t len, const char *via)
{
    if (len == 0) {
        /* An instance that knows it is behind never puts its older
         * generation back: one that runs the newest will. */
        if (F.shared == NULL || F.pending != NULL)
            return true;
        /* An instance that never had the fleet's config (it started from its
         * file) waits a poll before seeding, so that an instance that runs a
         * real generation, with the fleet's keys, puts it back first. */
        if (F.gen == 0) {
            time_t now = time(NULL);
            if (F.absent_since == 0 || now - F.absent_since < FLEET_POLL_S) {
                if (F.absent_since == 0)
                    F.absent_since = now;
                return true;
            }
        }
        log_event(LOG_WARN, "fleet_config_restored", ",\"generation\":%llu,"
                  "\"reason\":\"the key is absent\"", (unsigned long long)(F.gen ? F.gen : 1));
        send_restore(F.shared, F.gen ? F.gen : 1);
        return true;
    }
    F.absent_since = 0;
    char why[256], hash[CFG_FLEET_HASH_LEN + 1];
    uint64_t gen;
    json_t *s = config_fleet_parse(text, len, &gen, why, sizeof(why));
    if (s == NULL) {
        log_event(LOG_ERROR, "fleet_config_unreadable", ",\"key\":\"%s\",\"reason\":\"%s\"",
                  log_json(F.key), log_json(why));
        return false;
    }
    if (!config_fleet_hash(s, hash)) {
        json_decref(s);
        return false;
    }
    if (config_fleet_same(gen, hash, F.gen, F.hash)) {
        /* The same content; keep the text as stored (its hash member is
         * what the compare-and-set compares). */
        set_running(s, gen, hash);
        return true;
    }
    apply_shared(s, gen, hash, via);
    return true;
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

/* ---- compare-and-set, one change at a time ---------------------------------- */

struct cas {
    struct cas *next;               /* the queue */
    fleet_edit_fn edit;
    fleet_done_fn done;
    void *arg;
    bool restore;                   /* putting an absent key back: not queued, not answered */
    bool abandoned;                 /* answered at its deadline while Redis owed a reply */
    int tries;
    uint64_t deadline;              /* now_ms() by which it is answered */
    uint64_t newgen;
    char newhash[CFG_FLEET_HASH_LEN + 1];
    struct config *base;            /* the generation it was computed on (a reference) */
    struct config *cfg;             /* the validated result, applied on success */
    json_t *shared;
};

static void attempt(struct cas *c);

static void
cas_clear(struct cas *c)
{
    config_drop(c->cfg);
    c->cfg = NULL;
    config_drop(c->base);
    c->base = NULL;
    json_decref(c->shared);
    c->shared = NULL;
}

/* Answer c and let the next change in the queue run (from the loop, not
 * from here: no recursion however long the queue). */
static void
cas_finish(struct cas *c, int status, const char *msg, const struct cfg_errors *errs)
{
    if (!c->restore) {
        if (F.q_head == c) {
            F.q_head = c->next;
            if (F.q_head == NULL)
                F.q_tail = NULL;
            F.running = false;
            if (F.deadline_ev != NULL)
                evtimer_del(F.deadline_ev);
        }
        if (F.q_head != NULL && F.next_ev != NULL)
            event_active(F.next_ev, EV_TIMEOUT, 0);
    }
    F.answering = status == 0 && !c->restore ? c->newgen : 0;
    if (c->done)
        c->done(c->arg, status, msg, errs);
    F.answering = 0;
    cas_clear(c);
    free(c);
}

static void
run_next(void)
{
    if (F.running || F.q_head == NULL)
        return;
    F.running = true;
    if (F.deadline_ev != NULL) {
        uint64_t now = now_ms(), left = F.q_head->deadline > now ? F.q_head->deadline - now : 0;
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
        evtimer_add(F.deadline_ev, &tv);
    }
    attempt(F.q_head);
}

/* The running change's deadline passed while Redis owed it a reply (a
 * frozen or unreachable-but-connected Redis): answered now, the outcome
 * open; the reply, when it comes, is handled (a won change applied) but
 * answers no one, and the next change runs meanwhile. */
static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct cas *c = F.q_head;
    if (!F.running || c == NULL)
        return;
    if (evtimer_pending(F.retry_ev, NULL)) {
        evtimer_del(F.retry_ev);
        attempt(c);                 /* answers: the deadline passed */
        return;
    }
    log_event(LOG_WARN, "fleet_change_unanswered", ",\"reason\":\"Redis owes the change a "
              "reply past its deadline\"");
    c->abandoned = true;
    F.q_head = c->next;
    if (F.q_head == NULL)
        F.q_tail = NULL;
    F.running = false;
    if (F.q_head != NULL)
        event_active(F.next_ev, EV_TIMEOUT, 0);
    fleet_done_fn done = c->done;
    c->done = NULL;
    if (done != NULL)
        done(c->arg, 503, "Redis did not answer the change before its deadline: it may or may "
             "not have been made; read the config again", NULL);
}

static void
on_next(evutil_socket_t fd, short what, void *arg)
{
    run_next();
}

/* The running change, again after a refusal that passes (BUSY, LOADING). */
static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
    if (F.running && F.q_head != NULL)
        attempt(F.q_head);
}

/* Redis errors after which the script did not run and soon will. */
static bool
transient(const char *err)
{
    static const char *const kinds[] = {"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", NULL};
    for (int i = 0; kinds[i]; i++)
        if (strncmp(err, kinds[i], strlen(kinds[i])) == 0)
            return true;
    return false;
}

static void
on_wait(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    struct cas *c = arg;
    int want = control_current()->redis.wait_replicas;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer >= want) {
        cas_finish(c, 0, NULL, NULL);
        return;
    }
    char msg[512];
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        snprintf(msg, sizeof(msg), "written and applied as generation %llu, but only %lld of "
                 "the %d replicas of redis.wait_replicas confirmed it within %d ms: a Redis "
                 "failover now could lose it; read the config again before repeating the change",
                 (unsigned long long)c->newgen, r->integer, want,
                 control_current()->redis.wait_timeout_ms);
    else
        snprintf(msg, sizeof(msg), "written and applied as generation %llu, but Redis did not "
                 "confirm its replicas (%s): a Redis failover now could lose it; read the "
                 "config again before repeating the change", (unsigned long long)c->newgen,
                 r == NULL ? "the connection closed" : r->type == REDIS_REPLY_ERROR ? r->str :
                 "unexpected reply");
    log_event(LOG_WARN, "fleet_wait_short", ",\"generation\":%llu,\"reason\":\"%s\"",
              (unsigned long long)c->newgen, log_json(msg));
    cas_finish(c, 503, msg, NULL);
}

/* The change is the fleet's now: apply it here, confirm its replicas. */
static void
cas_won(struct cas *c)
{
    struct config *cur = control_current();
    struct config *cfg = c->cfg;
    c->cfg = NULL;
    char err[1024];
    if (cfg != NULL && cur != c->base) {
        /* The instance part was reloaded meanwhile: build on the new one. */
        config_drop(cfg);
        struct cfg_errors errs;
        cfg_errors_init(&errs);
        cfg = build(cur->doc, c->shared, cur->basedir, cur->path, &errs);
        if (cfg == NULL) {
            char *all = cfg_errors_join(&errs, "; ");
            snprintf(err, sizeof(err), "%s", all ? all : "out of memory");
            free(all);
        }
        cfg_errors_free(&errs);
    }
    if (cfg != NULL && control_apply(cfg, err, sizeof(err)) < 0) {
        config_drop(cfg);
        cfg = NULL;
    }
    if (cfg == NULL) {
        char msg[1400];
        snprintf(msg, sizeof(msg), "written to the fleet as generation %llu (the other "
                 "instances apply it) but not applied here: %s; this instance refuses changes "
                 "until it has applied the fleet's newest generation",
                 (unsigned long long)c->newgen, err);
        set_pending(json_incref(c->shared), c->newgen, c->newhash, msg);
        cas_finish(c, 503, msg, NULL);
        return;
    }
    set_running(json_incref(c->shared), c->newgen, c->newhash);
    applied("change");
    int want = cur->redis.wait_replicas;
    if (want > 0) {
        if (!F.connected || redisAsyncCommand(F.ac, on_wait, c, "WAIT %d %d", want,
                                              control_current()->redis.wait_timeout_ms)
            != REDIS_OK)
            on_wait(F.ac, NULL, c);
        return;
    }
    cas_finish(c, 0, NULL, NULL);
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
                   "made; read the config again", NULL);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY") != NULL) {
        /* Written to a demoted primary: nothing was written; find the new one. */
        cas_finish(c, 503, "the Redis primary is changing (failover): nothing was written; "
                   "try again", NULL);
        drop_all("the node is a replica now (READONLY)");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && !c->restore && !c->abandoned && transient(r->str) &&
        now_ms() + 100 < c->deadline && F.retry_ev != NULL) {
        /* The script did not run; Redis will take it soon: again in 0.1 s. */
        struct timeval tv = {0, 100000};
        cas_clear(c);
        evtimer_add(F.retry_ev, &tv);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        /* LOADING, BUSY, MASTERDOWN, OOM ...: the script did not run. */
        char msg[512];
        snprintf(msg, sizeof(msg), "Redis refused the change (%s): nothing was written; "
                 "try again", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        config_utf8_fix(msg);
        log_event(LOG_WARN, "fleet_cas_failed", ",\"error\":\"%s\"", log_json(msg));
        cas_finish(c, 503, msg, NULL);
        return;
    }
    if (r->element[0]->integer == 1) {
        if (c->restore) {
            /* Redis holds what runs here again (generation 1 for the
             * file's seed): adopt that number. */
            if (!config_fleet_same(c->newgen, c->newhash, F.gen, F.hash))
                apply_shared(json_incref(c->shared), c->newgen, c->newhash, "restore");
            cas_finish(c, 0, NULL, NULL);
            return;
        }
        cas_won(c);
        return;
    }
    /* Lost the race: catch up with what won (applied here), then compute
     * the change again on it. */
    redisReply *cur = r->element[1];
    bool usable = take_remote(cur->type == REDIS_REPLY_STRING ? cur->str : "",
                              cur->type == REDIS_REPLY_STRING ? cur->len : 0, "race");
    if (c->restore || c->abandoned) {
        cas_finish(c, 0, NULL, NULL);
        return;
    }
    if (!usable) {
        /* Not a shared part at all: trying again would only spin. */
        cas_finish(c, 503, "the fleet config in Redis is unreadable (see the log): nothing "
                   "was written", NULL);
        return;
    }
    c->tries++;
    cas_clear(c);
    attempt(c);
}

/* The text of shared at newgen (its content, so its hash, unchanged). */
static char *
text_at(json_t *shared, uint64_t newgen)
{
    json_t *copy = json_deep_copy(shared);
    if (copy == NULL || json_object_set_new(copy, "generation",
                                            json_integer((json_int_t)newgen)) < 0) {
        json_decref(copy);
        return NULL;
    }
    char *text = json_dumps(copy, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(copy);
    return text;
}

/* Send the script: write text at c->newgen if Redis holds (expected,
 * expected_hash); false when it could not be sent. */
static bool
send_cas(const char *text, uint64_t expected, const char *expected_hash, struct cas *c)
{
    if (!F.connected)
        return false;
    char exp[24], ng[24];
    snprintf(exp, sizeof(exp), "%llu", (unsigned long long)expected);
    snprintf(ng, sizeof(ng), "%llu", (unsigned long long)c->newgen);
    const char *argv[] = {"EVAL", CAS_SCRIPT, "1", F.key, exp, expected_hash, text, F.channel,
                          ng};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    return redisAsyncCommandArgv(F.ac, on_cas, c, 9, argv, lens) == REDIS_OK;
}

/* Put what runs here back into an absent key, as generation gen. */
static void
send_restore(json_t *shared, uint64_t gen)
{
    char hash[CFG_FLEET_HASH_LEN + 1];
    char *text = text_at(shared, gen);
    struct cas *c = text && config_fleet_hash(shared, hash) ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        free(text);
        return;
    }
    c->restore = true;
    c->newgen = gen;
    memcpy(c->newhash, hash, sizeof(hash));
    c->shared = json_incref(shared);
    if (!send_cas(text, 0, "", c)) {
        cas_clear(c);
        free(c);
    }
    free(text);
}

static void
attempt(struct cas *c)
{
    if (!F.connected) {
        cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
        return;
    }
    if (now_ms() > c->deadline) {
        if (c->tries > 0)
            cas_finish(c, 409, "the fleet config kept changing under this change until its "
                       "deadline: nothing was written; try again", NULL);
        else
            cas_finish(c, 503, "this change could not be made before its deadline (it waited "
                       "behind other changes, or Redis was busy): nothing was written; try "
                       "again", NULL);
        return;
    }
    if (F.pending != NULL) {
        /* Behind the fleet: try the newest generation again first. */
        apply_shared(json_incref(F.pending), F.pending_gen, F.pending_hash, "retry");
        if (F.pending != NULL) {
            char msg[1024];
            snprintf(msg, sizeof(msg), "this instance has not applied the fleet's newest "
                     "generation (%llu): %s", (unsigned long long)F.pending_gen,
                     F.pending_why);
            config_utf8_fix(msg);
            cas_finish(c, 503, msg, NULL);
            return;
        }
    }
    struct config *cur = control_current();
    struct cfg_edit_result er = {0};
    json_t *doc = json_deep_copy(cur->doc);
    if (doc == NULL) {
        cas_finish(c, 503, "out of memory: nothing was written", NULL);
        return;
    }
    int rc = c->edit(c->arg, doc, &er);
    if (rc != 0) {
        json_decref(doc);
        cas_finish(c, er.status ? er.status : rc, er.message, NULL);
        return;
    }
    /* Keys of an endpoint this change creates: generated once, here. */
    config_fill_keys(doc);
    c->newgen = F.gen + 1;
    c->shared = config_fleet_shared(doc, c->newgen);
    json_decref(doc);
    if (c->shared == NULL || !config_fleet_hash(c->shared, c->newhash)) {
        cas_finish(c, 503, "out of memory: nothing was written", NULL);
        return;
    }
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    c->cfg = build(cur->doc, c->shared, cur->basedir, cur->path, &errs);
    if (c->cfg == NULL) {
        cas_finish(c, 400, errs.n ? errs.msg[0] : "invalid config", &errs);
        cfg_errors_free(&errs);
        return;
    }
    cfg_errors_free(&errs);
    c->base = config_take(cur);
    /* Expect exactly the generation this was computed on: for the file's
     * seed (generation 0), an absent key. */
    char *text = text_at(c->shared, c->newgen);
    bool sent = text != NULL && send_cas(text, F.gen, F.gen ? config_fleet_stored_hash(F.shared)
                                         : "", c);
    free(text);
    if (!sent)
        cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
}

void
fleet_change(fleet_edit_fn edit, fleet_done_fn done, void *arg)
{
    struct cas *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        done(arg, 503, "out of memory: nothing was written", NULL);
        return;
    }
    c->edit = edit;
    c->done = done;
    c->arg = arg;
    c->deadline = now_ms() + FLEET_CHANGE_DEADLINE_MS;
    if (F.q_tail != NULL)
        F.q_tail->next = c;
    else
        F.q_head = c;
    F.q_tail = c;
    run_next();
}

/* ---- the fleet listing ------------------------------------------------------ */

struct listing {
    fleet_status_fn done;
    void *arg;
    uint64_t newest;
    char hash[CFG_FLEET_HASH_LEN + 1];
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
        l->have_newest = s != NULL && config_fleet_hash(s, l->hash);
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
    json_t *body = list ? json_pack("{s:s, s:o, s:o, s:I, s:s, s:o}", "fleet", F.name,
        "generation", l->have_newest ? json_integer((json_int_t)l->newest) : json_null(),
        "hash", l->have_newest ? json_string(l->hash) : json_null(),
        "applied_here", (json_int_t)F.gen, "applied_hash", F.hash, "instances", list) : NULL;
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
    /* Any generation, older numbers too (a failover): the GET decides. */
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
    F.next_ev = evtimer_new(base, on_next, NULL);
    F.retry_ev = evtimer_new(base, on_retry, NULL);
    F.deadline_ev = evtimer_new(base, on_deadline, NULL);
    if (F.reconnect_ev == NULL || F.poll_ev == NULL || F.next_ev == NULL || F.retry_ev == NULL ||
        F.deadline_ev == NULL)
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
    /* Changes still queued: nothing of them was written. */
    while (F.q_head != NULL)
        cas_finish(F.q_head, 503, "the instance is stopping: nothing was written", NULL);
    if (F.reconnect_ev)
        event_free(F.reconnect_ev);
    if (F.poll_ev)
        event_free(F.poll_ev);
    if (F.next_ev)
        event_free(F.next_ev);
    if (F.retry_ev)
        event_free(F.retry_ev);
    if (F.deadline_ev)
        event_free(F.deadline_ev);
    json_decref(F.pending);
    json_decref(F.shared);
    free(F.name);
    free(F.key);
    free(F.channel);
    free(F.cache_path);
    free(F.host);
    free(F.password);
    memset(&F, 0, sizeof(F));
}
