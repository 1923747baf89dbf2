/*
 * Fleet sync (SPEC §6), reading and writing the shared config's key
 * (see fleet.c for the whole design): a text read from Redis applied when
 * it differs from what runs (take_remote, fetch), and admin changes run one
 * at a time with a compare-and-set script (CAS_SCRIPT), WAIT when asked,
 * retried on a lost race until their deadline.
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

static void send_restore(json_t *shared, uint64_t gen);

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
        fleet_set_running(s, gen, hash);
        return true;
    }
    fleet_apply_shared(s, gen, hash, via);
    return true;
}

/* Why a GET was sent, for the log; passed as an index, not a pointer. */
static const char *const vias[] = {"reconnect", "subscribe", "message", "poll"};

static void
on_get(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (r == NULL || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL))
        return;
    take_remote(r->type == REDIS_REPLY_STRING ? r->str : "",
                r->type == REDIS_REPLY_STRING ? r->len : 0, vias[(intptr_t)arg]);
}

void
fleet_fetch(int via)
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
    uint64_t deadline;              /* fleet_now_ms() by which it is answered */
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
void
fleet_cas_finish(struct cas *c, int status, const char *msg, const struct cfg_errors *errs)
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
        uint64_t now = fleet_now_ms();
        uint64_t left = F.q_head->deadline > now ? F.q_head->deadline - now : 0;
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
        evtimer_add(F.deadline_ev, &tv);
    }
    attempt(F.q_head);
}

/* The running change's deadline passed while Redis owed it a reply (a
 * frozen or unreachable-but-connected Redis): answered now, the outcome
 * open; the reply, when it comes, is handled (a won change applied) but
 * answers no one, and the next change runs meanwhile. */
void
fleet_on_deadline(evutil_socket_t fd, short what, void *arg)
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

void
fleet_on_next(evutil_socket_t fd, short what, void *arg)
{
    run_next();
}

/* The running change, again after a refusal that passes (BUSY, LOADING). */
void
fleet_on_retry(evutil_socket_t fd, short what, void *arg)
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
        fleet_cas_finish(c, 0, NULL, NULL);
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
    fleet_cas_finish(c, 503, msg, NULL);
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
        cfg = fleet_build(cur->doc, c->shared, cur->basedir, cur->path, &errs);
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
        fleet_set_pending(json_incref(c->shared), c->newgen, c->newhash, msg);
        fleet_cas_finish(c, 503, msg, NULL);
        return;
    }
    fleet_set_running(json_incref(c->shared), c->newgen, c->newhash);
    fleet_applied("change");
    int want = cur->redis.wait_replicas;
    if (want > 0) {
        if (!F.connected || redisAsyncCommand(F.ac, on_wait, c, "WAIT %d %d", want,
                                              control_current()->redis.wait_timeout_ms)
            != REDIS_OK)
            on_wait(F.ac, NULL, c);
        return;
    }
    fleet_cas_finish(c, 0, NULL, NULL);
}

static void
on_cas(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    struct cas *c = arg;
    if (c == NULL)
        return;
    if (r == NULL) {
        fleet_cas_finish(c, 503, "Redis went away during the change: it may or may not have been "
                         "made; read the config again", NULL);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "READONLY") != NULL) {
        /* Written to a demoted primary: nothing was written; find the new one. */
        fleet_cas_finish(c, 503, "the Redis primary is changing (failover): nothing was written; "
                         "try again", NULL);
        fleet_drop_all("the node is a replica now (READONLY)");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR && !c->restore && !c->abandoned && transient(r->str) &&
        fleet_now_ms() + 100 < c->deadline && F.retry_ev != NULL) {
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
        fleet_cas_finish(c, 503, msg, NULL);
        return;
    }
    if (r->element[0]->integer == 1) {
        if (c->restore) {
            /* Redis holds what runs here again (generation 1 for the
             * file's seed): adopt that number. */
            if (!config_fleet_same(c->newgen, c->newhash, F.gen, F.hash))
                fleet_apply_shared(json_incref(c->shared), c->newgen, c->newhash, "restore");
            fleet_cas_finish(c, 0, NULL, NULL);
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
        fleet_cas_finish(c, 0, NULL, NULL);
        return;
    }
    if (!usable) {
        /* Not a shared part at all: trying again would only spin. */
        fleet_cas_finish(c, 503, "the fleet config in Redis is unreadable (see the log): nothing "
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
        fleet_cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
        return;
    }
    if (fleet_now_ms() > c->deadline) {
        if (c->tries > 0)
            fleet_cas_finish(c, 409, "the fleet config kept changing under this change until its "
                             "deadline: nothing was written; try again", NULL);
        else
            fleet_cas_finish(c, 503, "this change could not be made before its deadline (it waited "
                             "behind other changes, or Redis was busy): nothing was written; try "
                             "again", NULL);
        return;
    }
    if (F.pending != NULL) {
        /* Behind the fleet: try the newest generation again first. */
        fleet_apply_shared(json_incref(F.pending), F.pending_gen, F.pending_hash, "retry");
        if (F.pending != NULL) {
            char msg[1024];
            snprintf(msg, sizeof(msg), "this instance has not applied the fleet's newest "
                     "generation (%llu): %s", (unsigned long long)F.pending_gen,
                     F.pending_why);
            config_utf8_fix(msg);
            fleet_cas_finish(c, 503, msg, NULL);
            return;
        }
    }
    struct config *cur = control_current();
    struct cfg_edit_result er = {0};
    json_t *doc = json_deep_copy(cur->doc);
    if (doc == NULL) {
        fleet_cas_finish(c, 503, "out of memory: nothing was written", NULL);
        return;
    }
    int rc = c->edit(c->arg, doc, &er);
    if (rc != 0) {
        json_decref(doc);
        fleet_cas_finish(c, er.status ? er.status : rc, er.message, NULL);
        return;
    }
    /* Keys of an endpoint this change creates: generated once, here. */
    config_fill_keys(doc);
    c->newgen = F.gen + 1;
    c->shared = config_fleet_shared(doc, c->newgen);
    json_decref(doc);
    if (c->shared == NULL || !config_fleet_hash(c->shared, c->newhash)) {
        fleet_cas_finish(c, 503, "out of memory: nothing was written", NULL);
        return;
    }
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    c->cfg = fleet_build(cur->doc, c->shared, cur->basedir, cur->path, &errs);
    if (c->cfg == NULL) {
        fleet_cas_finish(c, 400, errs.n ? errs.msg[0] : "invalid config", &errs);
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
        fleet_cas_finish(c, 503, "Redis is unreachable: the fleet config cannot change now", NULL);
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
    c->deadline = fleet_now_ms() + FLEET_CHANGE_DEADLINE_MS;
    if (F.q_tail != NULL)
        F.q_tail->next = c;
    else
        F.q_head = c;
    F.q_tail = c;
    run_next();
}
