/*
 * What the Redis writer (redis.c) keeps in Redis besides the counts
 * (SPEC §4, §7): the endpoints' version descriptions, this instance's entry
 * in sluice:instances (its heartbeat), disagreement samples, and the sweep
 * of stale bookkeeping. Best effort, on the writer's connection; called by
 * redis.c only.
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <hiredis/async.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Bookkeeping that would otherwise grow with every start (SPEC §4): an
 * instance silent (no flush, no start) for the retention time loses its
 * sluice:instances entry and its flush sequence; a flush sequence with no
 * entry (its instance stopped, or was swept) goes too. An instance writes
 * its entry before its first batch, in the same pipeline, and every flush
 * after that, so a live one always has an entry. */
static const char SWEEP_SCRIPT[] =
    "local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local live, gone = {}, 0\n"
    "local all = redis.call('HGETALL', 'sluice:instances')\n"
    "for i = 1, #all, 2 do\n"
    "  local ok, d = pcall(cjson.decode, all[i + 1])\n"
    "  local seen = 0\n"
    "  if ok and type(d) == 'table' then\n"
    "    seen = math.max(tonumber(d.last_flush) or 0, tonumber(d.started) or 0)\n"
    "  end\n"
    "  if now - seen > ttl then\n"
    "    redis.call('HDEL', 'sluice:instances', all[i])\n"
    "    gone = gone + 1\n"
    "  else\n"
    "    live[all[i]] = true\n"
    "  end\n"
    "end\n"
    "local seqs = redis.call('HKEYS', 'sluice:flushseq')\n"
    "for _, inst in ipairs(seqs) do\n"
    "  if not live[inst] then\n"
    "    redis.call('HDEL', 'sluice:flushseq', inst)\n"
    "    gone = gone + 1\n"
    "  end\n"
    "end\n"
    "return gone\n";
#define SWEEP_EVERY_S 60

void
write_versions(struct metrics_redis *r)
{
    if (!r->connected || r->versions == NULL)
        return;
    const char *ep;
    json_t *vs;
    json_object_foreach(r->versions, ep, vs) {
        char key[256];
        snprintf(key, sizeof(key), "sluice:{%s}:versions", ep);
        struct args a = {0};
        redisAsyncCommand(r->ac, NULL, NULL, "MULTI");
        redisAsyncCommand(r->ac, NULL, NULL, "DEL %s", key);
        args_str(&a, "HSET");
        args_str(&a, key);
        const char *v;
        json_t *text;
        json_object_foreach(vs, v, text) {
            args_str(&a, v);
            args_str(&a, json_string_value(text));
        }
        redisAsyncCommandArgv(r->ac, NULL, NULL, a.n, (const char **)(void *)a.v, a.len);
        redisAsyncCommand(r->ac, NULL, NULL, "EXEC");
        args_free(&a);
    }
    json_decref(r->versions);
    r->versions = NULL;
}

void
heartbeat(struct metrics_redis *r)
{
    if (!r->connected)
        return;
    char json[512];
    int n = snprintf(json, sizeof(json), "{\"started\":%lld,\"last_flush\":%lld,"
                     "\"version\":\"%s\",\"generation\":%llu", (long long)r->started,
                     (long long)r->last_flush, SLUICE_VERSION,
                     (unsigned long long)r->generation);
    /* Fleet names are plain (config_fleet_name_valid): no escaping needed. */
    if (r->fleet != NULL)
        n += snprintf(json + n, sizeof(json) - (size_t)n, ",\"fleet\":\"%s\","
                      "\"fleet_generation\":%llu", r->fleet,
                      (unsigned long long)r->fleet_generation);
    snprintf(json + n, sizeof(json) - (size_t)n, "}");
    redisAsyncCommand(r->ac, NULL, NULL, "HSET sluice:instances %s %s", r->instance, json);
}

/* Disagreement samples (SPEC §7): LPUSH + LTRIM, best effort. They are
 * taken from the workers only while connected; until then each worker's
 * ring keeps the latest METRICS_DIFF_RING. */
static void
send_diff(void *arg, const char *ep, const char *version, int keep, const char *text)
{
    struct metrics_redis *r = arg;
    char key[256];
    snprintf(key, sizeof(key), "sluice:{%s}:diffs:%s", ep, version);
    /* A comparison that ends after its compare block was removed (its
     * request began on the older generation) keeps no sample. */
    if (json_object_get(r->diff_keys, key) == NULL)
        return;
    redisAsyncCommand(r->ac, NULL, NULL, "LPUSH %s %s", key, text);
    redisAsyncCommand(r->ac, NULL, NULL, "LTRIM %s 0 %d", key, keep - 1);
    redisAsyncCommand(r->ac, NULL, NULL, "EXPIRE %s %d", key, r->retention_min * 60);
}

/* Diff samples of a mirror whose compare block (or version, or endpoint)
 * is gone are deleted (SPEC §4, §7); stale instance bookkeeping is swept. */
void
housekeeping(struct metrics_redis *r)
{
    const char *key;
    json_t *val;
    json_object_foreach(r->diff_drop, key, val)
        redisAsyncCommand(r->ac, NULL, NULL, "DEL %s", key);
    json_object_clear(r->diff_drop);
    time_t now = time(NULL);
    if (now - r->swept < SWEEP_EVERY_S)
        return;
    r->swept = now;
    redisAsyncCommand(r->ac, NULL, NULL, "EVAL %s 0 %lld %d", SWEEP_SCRIPT, (long long)now,
                      r->retention_min * 60);
}

void
flush_diffs(struct metrics_redis *r)
{
    for (int i = 0; i < r->n_workers; i++)
        if (r->workers[i] != NULL)
            metrics_diff_take(r->workers[i], send_diff, r);
}
