/*
 * The Redis writer and reader (SPEC §4), on the main thread's event loop,
 * with hiredis' async API and its libevent adapter.
 *
 * Every flush_interval_ms the collector moves the workers' counts into the
 * backlog; if no batch is waiting for Redis, the backlog becomes one batch:
 * a single EVALSHA of FLUSH_SCRIPT carrying every key and field to add, and
 * this instance's next sequence number. The script applies the batch only
 * if its number is above the one stored for the instance, and stores it,
 * atomically. A batch stays in hand until Redis answers; after a reconnect
 * it is sent again unchanged, so a batch whose reply was lost is applied
 * once. While Redis is away, counts keep merging into the backlog.
 *
 * With redis.wait_replicas = N, a batch the script took is acknowledged
 * only after WAIT N says N replicas have it; until then it stays in hand
 * and is sent again at the next flush. A batch sent again is applied at
 * most once (the sequence check), and the script then still writes (the
 * stored number, unchanged), so the WAIT that follows covers the first
 * application too: replication is ordered, and a replica that has the
 * later write has the earlier one. A failover to a replica that never got
 * the batch therefore loses nothing: the batch goes to the new primary.
 *
 * Where Redis is comes from primary.c: an address, or the sentinels'
 * primary, followed through failovers. The reading side (the comparison
 * query, disagreement samples) and other users' commands are query.c; the
 * version descriptions, the heartbeat, samples and the sweep it writes
 * bookkeeping.c; the argument lists args.c, the event lines log.c; struct
 * metrics_redis is in metrics/internal.h.
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char FLUSH_SCRIPT[] =
    "local inst, seq, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local last = tonumber(redis.call('HGET', 'sluice:flushseq', inst) or '0')\n"
    "if seq <= last then\n"
    "  redis.call('HSET', 'sluice:flushseq', inst, last)\n"
    "  return 0\n"
    "end\n"
    "local i = 5\n"
    "for k = 1, tonumber(ARGV[4]) do\n"
    "  local key, minute, nf = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])\n"
    "  i = i + 3\n"
    "  for f = 1, nf do\n"
    "    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])\n"
    "    i = i + 2\n"
    "  end\n"
    "  if minute == '1' then redis.call('EXPIRE', key, ttl) end\n"
    "end\n"
    "redis.call('HSET', 'sluice:flushseq', inst, seq)\n"
    "return 1\n";

struct batch {
    uint64_t seq;
    struct args a;              /* EVALSHA sha 0 ARGV... */
    int keys;
    bool pending;               /* a reply (to the script or its WAIT) is owed */
};

#define WAIT_WARN_EVERY_S 10

static void send_batch(struct metrics_redis *r);
static void redis_connect(struct metrics_redis *r);
static void drop_conn(struct metrics_redis *r, const char *why);

/* ---- batches ---------------------------------------------------------------- */

static void
add_key(struct batch *bt, const char *key, bool minute, const uint64_t *v)
{
    int nf = 0;
    for (int k = 0; k < M_COUNT; k++)
        nf += v[k] != 0;
    if (nf == 0)
        return;
    args_str(&bt->a, key);
    args_str(&bt->a, minute ? "1" : "0");
    args_fmt(&bt->a, "%d", nf);
    for (int k = 0; k < M_COUNT; k++)
        if (v[k] != 0) {
            args_str(&bt->a, metrics_field_names[k]);
            args_fmt(&bt->a, "%llu", (unsigned long long)v[k]);
        }
    bt->keys++;
}

static void
batch_entry(void *arg, const char *ep, const char *version, const char *group,
            uint32_t minute, const uint64_t *v)
{
    struct batch *bt = arg;
    char key[256];
    if (strcmp(group, METRICS_PINNED_GROUP) == 0) {
        /* SPEC §4: a version's pinned requests on their own (they are in
         * its total and minute keys too). */
        snprintf(key, sizeof(key), "sluice:{%s}:pinned:%s", ep, version);
        add_key(bt, key, false, v);
        if (minute != 0) {
            snprintf(key, sizeof(key), "sluice:{%s}:pinnedminute:%s:%u", ep, version, minute);
            add_key(bt, key, true, v);
        }
        return;
    }
    snprintf(key, sizeof(key), "sluice:{%s}:total:%s", ep, version);
    add_key(bt, key, false, v);
    snprintf(key, sizeof(key), "sluice:{%s}:group:%s", ep, group);
    add_key(bt, key, false, v);
    if (minute == 0)
        return;                 /* folded into totals while Redis was away */
    snprintf(key, sizeof(key), "sluice:{%s}:minute:%s:%u", ep, version, minute);
    add_key(bt, key, true, v);
    snprintf(key, sizeof(key), "sluice:{%s}:groupminute:%s:%u", ep, group, minute);
    add_key(bt, key, true, v);
}

static struct batch *
batch_from_backlog(struct metrics_redis *r)
{
    struct batch *bt = calloc(1, sizeof(*bt));
    args_str(&bt->a, "EVALSHA");
    args_str(&bt->a, r->sha);
    args_str(&bt->a, "0");
    args_str(&bt->a, r->instance);
    bt->seq = ++r->seq;
    args_fmt(&bt->a, "%llu", (unsigned long long)bt->seq);
    args_fmt(&bt->a, "%d", r->retention_min * 60);
    args_str(&bt->a, "0");          /* key count, filled in below */
    uint64_t rej[REJ_COUNT];
    metrics_backlog_drain(r->b, batch_entry, bt, rej);
    int nf = 0;
    for (int k = 0; k < REJ_COUNT; k++)
        nf += rej[k] != 0;
    if (nf > 0) {
        args_str(&bt->a, "sluice:rejected");
        args_str(&bt->a, "0");
        args_fmt(&bt->a, "%d", nf);
        for (int k = 0; k < REJ_COUNT; k++)
            if (rej[k]) {
                args_str(&bt->a, metrics_rejected_names[k]);
                args_fmt(&bt->a, "%llu", (unsigned long long)rej[k]);
            }
        bt->keys++;
    }
    free(bt->a.v[6]);
    char n[24];
    int l = snprintf(n, sizeof(n), "%d", bt->keys);
    bt->a.v[6] = strdup(n);
    bt->a.len[6] = (size_t)l;
    return bt;
}

static void
batch_free(struct batch *bt)
{
    if (bt == NULL)
        return;
    args_free(&bt->a);
    free(bt);
}

static void
batch_done(struct metrics_redis *r, struct batch *bt)
{
    r->inflight = NULL;
    r->last_flush = time(NULL);
    batch_free(bt);
}

static void
on_wait_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    struct metrics_redis *r = ac->data;
    redisReply *rep = reply;
    struct batch *bt = arg;
    if (r == NULL || bt != r->inflight)
        return;
    bt->pending = false;
    if (rep == NULL)
        return;                 /* disconnected: sent again, WAIT again */
    if (rep->type == REDIS_REPLY_INTEGER && rep->integer >= r->wait_replicas) {
        if (r->wait_short > 0)
            logf_("redis_wait_satisfied", ",\"seq\":%llu,\"replicas\":%lld,"
                  "\"short_waits\":%llu", (unsigned long long)bt->seq, rep->integer,
                  (unsigned long long)r->wait_short);
        r->wait_short = 0;
        r->wait_warned = 0;
        batch_done(r, bt);
        return;
    }
    /* Kept (counts in hand, nothing lost) and sent again at the next flush;
     * one line per WAIT_WARN_EVERY_S says why the backlog grows. */
    r->wait_short++;
    time_t now = time(NULL);
    if (now - r->wait_warned >= WAIT_WARN_EVERY_S) {
        r->wait_warned = now;
        if (rep->type == REDIS_REPLY_INTEGER)
            logf_("redis_wait_short", ",\"seq\":%llu,\"replicas\":%lld,\"wanted\":%d,"
                  "\"timeout_ms\":%d,\"short_waits\":%llu,\"reason\":\"fewer replicas than "
                  "redis.wait_replicas confirmed the metrics batch: it stays unacknowledged "
                  "and is sent again\"", (unsigned long long)bt->seq, rep->integer,
                  r->wait_replicas, r->wait_timeout_ms, (unsigned long long)r->wait_short);
        else
            logf_("redis_wait_short", ",\"seq\":%llu,\"wanted\":%d,\"error\":\"%s\","
                  "\"reason\":\"WAIT failed: the metrics batch stays unacknowledged and is "
                  "sent again\"", (unsigned long long)bt->seq, r->wait_replicas,
                  jstr(rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply"));
    }
}

static void
on_batch_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    struct metrics_redis *r = ac->data;
    redisReply *rep = reply;
    struct batch *bt = arg;
    if (r == NULL || bt != r->inflight)
        return;
    bt->pending = false;
    if (rep == NULL)
        return;                 /* disconnected: sent again after reconnecting */
    if (rep->type == REDIS_REPLY_ERROR) {
        if (strncmp(rep->str, "NOSCRIPT", 8) == 0) {
            /* First use on this server: send the script itself. */
            free(bt->a.v[0]);
            free(bt->a.v[1]);
            bt->a.v[0] = strdup("EVAL");
            bt->a.len[0] = 4;
            bt->a.v[1] = strdup(FLUSH_SCRIPT);
            bt->a.len[1] = strlen(FLUSH_SCRIPT);
            send_batch(r);
            return;
        }
        logf_("redis_flush_failed", ",\"error\":\"%s\"", jstr(rep->str));
        /* A replica (the primary was demoted under us): find the new one. */
        if (strstr(rep->str, "READONLY") != NULL)
            drop_conn(r, "the node is a replica now (READONLY)");
        return;                 /* kept; tried again on the next flush */
    }
    if (r->wait_replicas > 0) {
        /* Applied (1) or already there (0, the stored number rewritten):
         * acknowledged once enough replicas have it. */
        bt->pending = true;
        if (redisAsyncCommand(ac, on_wait_reply, bt, "WAIT %d %d", r->wait_replicas,
                              r->wait_timeout_ms) != REDIS_OK)
            bt->pending = false;
        return;
    }
    batch_done(r, bt);
}

static void
send_batch(struct metrics_redis *r)
{
    struct batch *bt = r->inflight;
    if (bt == NULL || !r->connected || bt->pending)
        return;
    if (redisAsyncCommandArgv(r->ac, on_batch_reply, bt, bt->a.n,
                              (const char **)(void *)bt->a.v, bt->a.len) == REDIS_OK)
        bt->pending = true;
}

/* ---- connection ------------------------------------------------------------- */



static void
on_connect(const redisAsyncContext *ac, int status)
{
    struct metrics_redis *r = ac->data;
    if (r == NULL)
        return;
    if (status != REDIS_OK) {
        if (!r->warned_down)
            logf_("redis_unavailable", ",\"address\":\"%s:%d\",\"error\":\"%s\"",
                  jstr(r->host), r->port, jstr(ac->errstr));
        r->warned_down = true;
        r->ac = NULL;           /* hiredis frees it */
        struct timeval tv = {1, 0};
        evtimer_add(r->reconnect_ev, &tv);
        metrics_primary_lost();
        return;
    }
    r->connected = true;
    r->warned_down = false;
    logf_("redis_connected", ",\"address\":\"%s:%d\",\"pending_batch\":%s", jstr(r->host),
          r->port,
          r->inflight ? "true" : "false");
    write_versions(r);
    send_batch(r);              /* a batch not yet acknowledged goes again */
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    struct metrics_redis *r = ac->data;
    if (r == NULL)
        return;
    bool was = r->connected;
    r->connected = false;
    r->ac = NULL;
    if (was)
        logf_("redis_disconnected", ",\"address\":\"%s:%d\"", jstr(r->host), r->port);
    r->warned_down = true;
    if (r->inflight != NULL)
        r->inflight->pending = false;
    struct timeval tv = {1, 0};
    evtimer_add(r->reconnect_ev, &tv);
    metrics_primary_lost();
}

/* Let the connection go (not through on_disconnect: replies still owed
 * run with data NULL and are ignored; the batch in hand is sent again on
 * the next connection). Safe inside one of its own callbacks: hiredis
 * frees after the callback returns. */
static void
drop_conn(struct metrics_redis *r, const char *why)
{
    static time_t logged;          /* a replica named again and again: one line per 10 s */
    redisAsyncContext *ac = r->ac;
    if (ac == NULL)
        return;
    if (why != NULL && time(NULL) - logged >= WAIT_WARN_EVERY_S) {
        logged = time(NULL);
        logf_("redis_primary_left", ",\"address\":\"%s:%d\",\"reason\":\"%s\"",
              jstr(r->host), r->port, jstr(why));
    }
    r->ac = NULL;
    r->connected = false;
    ac->data = NULL;
    if (r->inflight != NULL)
        r->inflight->pending = false;
    redisAsyncFree(ac);
    if (why != NULL) {
        metrics_primary_lost();
        struct timeval tv = {1, 0};
        evtimer_add(r->reconnect_ev, &tv);
    }
}

/* With sentinels, the node reached must still be the primary: one that
 * answers ROLE as a replica (demoted while unreachable, or named by a
 * sentinel that has not heard of a failover) is left for the next answer. */
static void
on_role(redisAsyncContext *ac, void *reply, void *arg)
{
    struct metrics_redis *r = ac->data;
    redisReply *rep = reply;
    if (r == NULL || rep == NULL)
        return;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
        rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "master") == 0)
        return;
    drop_conn(r, rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
              rep->element[0]->type == REDIS_REPLY_STRING ?
              "ROLE is not master" : "ROLE failed");
}

/* The primary may have moved (primary.c): follow it now rather than at
 * the next reconnect. */
static void
on_primary(void *arg)
{
    struct metrics_redis *r = arg;
    char host[256];
    int port;
    if (!metrics_primary_get(host, sizeof(host), &port))
        return;
    bool same = r->host != NULL && strcmp(r->host, host) == 0 && r->port == port;
    if (same)
        return;                 /* in use, or tried: the reconnect timer has it */
    drop_conn(r, NULL);
    if (r->host != NULL)
        logf_("redis_primary_follow", ",\"from\":\"%s:%d\",\"to\":\"%s:%d\"",
              jstr(r->host), r->port, jstr(host), port);
    evtimer_del(r->reconnect_ev);
    redis_connect(r);
}

static void
on_auth(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *rep = reply;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR)
        logf_("redis_auth_failed", ",\"error\":\"%s\"", jstr(rep->str));
}

static void
redis_connect(struct metrics_redis *r)
{
    char host[256];
    int port;
    if (r->ac != NULL)
        return;
    if (!metrics_primary_get(host, sizeof(host), &port))
        return;                 /* the sentinels have not answered: on_primary connects */
    if (r->host == NULL || strcmp(r->host, host) != 0) {
        free(r->host);
        if ((r->host = strdup(host)) == NULL)
            return;
    }
    r->port = port;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        struct timeval tv = {1, 0};
        evtimer_add(r->reconnect_ev, &tv);
        return;
    }
    ac->data = r;
    redisLibeventAttach(ac, r->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* Queued ahead of everything else on this connection. */
    if (r->password)
        redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", r->password);
    if (r->db)
        redisAsyncCommand(ac, on_auth, NULL, "SELECT %d", r->db);
    if (metrics_primary_sentinels())
        redisAsyncCommand(ac, on_role, NULL, "ROLE");
    r->ac = ac;
}

static void
on_reconnect(evutil_socket_t fd, short what, void *arg)
{
    redis_connect(arg);
}

static void
on_flush_timer(evutil_socket_t fd, short what, void *arg)
{
    metrics_redis_flush(arg);
}

/* ---- public --------------------------------------------------------------------- */

struct metrics_redis *
metrics_redis_new(struct event_base *base, struct metrics_backlog *b, const char *instance)
{
    struct metrics_redis *r = calloc(1, sizeof(*r));
    r->base = base;
    r->b = b;
    r->instance = strdup(instance);
    r->diff_keys = json_object();
    r->diff_drop = json_object();
    r->started = time(NULL);
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)FLUSH_SCRIPT, strlen(FLUSH_SCRIPT), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        sprintf(r->sha + 2 * i, "%02x", d[i]);
    r->flush_ev = event_new(base, -1, EV_PERSIST, on_flush_timer, r);
    r->reconnect_ev = evtimer_new(base, on_reconnect, r);
    metrics_primary_watch(on_primary, r);
    return r;
}

void
metrics_redis_set_sources(struct metrics_redis *r, struct metrics_worker **workers, int n)
{
    r->workers = workers;
    r->n_workers = n;
}

void
metrics_redis_configure(struct metrics_redis *r, const struct config *cfg)
{
    const struct cfg_redis *c = &cfg->redis;
    bool moved = metrics_primary_configure(r->base, c);
    bool same = !moved && r->configured && r->db == c->db &&
                ((r->password == NULL && c->password == NULL) ||
                (r->password && c->password && strcmp(r->password, c->password) == 0));
    r->wait_replicas = c->wait_replicas;
    r->wait_timeout_ms = c->wait_timeout_ms;
    if (!same) {
        r->configured = true;
        free(r->password);
        r->db = c->db;
        r->password = c->password ? strdup(c->password) : NULL;
        drop_conn(r, NULL);
        free(r->host);
        r->host = NULL;
        redis_connect(r);
    }
    r->retention_min = c->retention_minutes;
    /* In a fleet, the fleet's generation (SPEC §6), not this process's count. */
    r->generation = cfg->fleet_name != NULL ? cfg->fleet_generation : cfg->generation;
    if (r->flush_ms != c->flush_interval_ms) {
        r->flush_ms = c->flush_interval_ms;
        struct timeval tv = {r->flush_ms / 1000, (r->flush_ms % 1000) * 1000};
        event_add(r->flush_ev, &tv);
    }
    /* sluice:{EP}:versions, rewritten for every generation; the diff
     * samples of mirrors that no longer keep any are deleted. */
    json_t *diff_keys = json_object();
    json_decref(r->versions);
    r->versions = json_object();
    for (int i = 0; i < cfg->n_endpoints; i++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[i];
        json_t *vs = json_object();
        for (int v = 0; v < ep->n_versions; v++) {
            const struct cfg_version *ver = &ep->versions[v];
            char text[256];
            snprintf(text, sizeof(text), "{\"group\":\"%s\",\"traffic_percentile\":%g,"
                     "\"effective_percentile\":%g,\"is_default\":%s,\"generation\":%llu}",
                     config_group_name(ver->mirror ? CFG_GROUP_SHADOW : ver->group),
                     ver->traffic / 100.0, ver->effective / 100.0,
                     ver->is_default ? "true" : "false",
                     (unsigned long long)r->generation);
            json_object_set_new(vs, ver->name, json_string(text));
            if (ver->compare.mode != CFG_COMPARE_OFF && ver->compare.samples > 0) {
                char key[256];
                snprintf(key, sizeof(key), "sluice:{%s}:diffs:%s", ep->name, ver->name);
                json_object_set_new(diff_keys, key, json_true());
            }
        }
        json_object_set_new(r->versions, ep->name, vs);
    }
    const char *key;
    json_t *val;
    json_object_foreach(r->diff_keys, key, val)
        if (json_object_get(diff_keys, key) == NULL)
            json_object_set_new(r->diff_drop, key, json_true());
    json_object_foreach(diff_keys, key, val)
        json_object_del(r->diff_drop, key);
    json_decref(r->diff_keys);
    r->diff_keys = diff_keys;
    write_versions(r);
}





void
metrics_redis_flush(struct metrics_redis *r)
{
    uint64_t merged = metrics_backlog_merged(r->b);
    metrics_collect(r->b, r->workers, r->n_workers);
    if (metrics_backlog_merged(r->b) != merged)
        logf_("metrics_minutes_merged", ",\"merged_total\":%llu,\"reason\":\"backlog full "
              "while Redis is away: the oldest minutes count in totals only\"",
              (unsigned long long)metrics_backlog_merged(r->b));
    if (!r->connected) {
        redis_connect(r);
        return;
    }
    heartbeat(r);
    flush_diffs(r);
    housekeeping(r);
    if (r->inflight != NULL) {
        /* One batch at a time. Unanswered: wait. Answered but refused, or
         * not yet confirmed by WAIT: send it again (applied at most once). */
        send_batch(r);
        return;
    }
    if (metrics_backlog_size(r->b) == 0) {
        r->last_flush = time(NULL);
        return;
    }
    r->inflight = batch_from_backlog(r);
    send_batch(r);
}

bool
metrics_redis_final_flush(struct metrics_redis *r, int timeout_ms)
{
    struct timeval start, now;
    gettimeofday(&start, NULL);
    /* Not connected at exit: give one connection attempt a short while
     * rather than the whole timeout. */
    if (!r->connected && timeout_ms > 500)
        timeout_ms = 500;
    for (;;) {
        metrics_redis_flush(r);
        if (r->inflight == NULL && metrics_backlog_size(r->b) == 0) {
            if (r->connected) {     /* this instance's id is never used again */
                redisAsyncCommand(r->ac, NULL, NULL, "HDEL sluice:instances %s", r->instance);
                redisAsyncCommand(r->ac, NULL, NULL, "HDEL sluice:flushseq %s", r->instance);
            }
            event_base_loop(r->base, EVLOOP_NONBLOCK);
            return true;
        }
        gettimeofday(&now, NULL);
        long ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_usec - start.tv_usec) / 1000;
        if (ms > timeout_ms) {
            logf_("redis_final_flush_incomplete", ",\"pending_entries\":%zu",
                  metrics_backlog_size(r->b) + (r->inflight ? 1 : 0));
            return false;
        }
        struct timeval tick = {0, 20000};
        event_base_loopexit(r->base, &tick);
        event_base_dispatch(r->base);
    }
}

void
metrics_redis_set_fleet(struct metrics_redis *r, const char *fleet, uint64_t generation)
{
    if (r == NULL)
        return;
    if (fleet != NULL && (r->fleet == NULL || strcmp(r->fleet, fleet) != 0)) {
        free(r->fleet);
        r->fleet = strdup(fleet);
    }
    r->fleet_generation = generation;
    heartbeat(r);
}

const char *
metrics_redis_instance(const struct metrics_redis *r)
{
    return r ? r->instance : NULL;
}

bool
metrics_redis_unacknowledged(const struct metrics_redis *r)
{
    return r != NULL && r->inflight != NULL;
}

bool
metrics_redis_connected(const struct metrics_redis *r)
{
    return r != NULL && r->connected;
}

void
metrics_redis_free(struct metrics_redis *r)
{
    if (r == NULL)
        return;
    metrics_primary_unwatch(on_primary, r);
    if (r->ac) {
        r->ac->data = NULL;
        redisAsyncFree(r->ac);
    }
    metrics_primary_stop();
    event_free(r->flush_ev);
    event_free(r->reconnect_ev);
    batch_free(r->inflight);
    json_decref(r->diff_keys);
    json_decref(r->diff_drop);
    json_decref(r->versions);
    free(r->host);
    free(r->password);
    free(r->instance);
    free(r->fleet);
    free(r);
}
