/*
 * Reading from Redis (SPEC §5 metrics, §7), on the main thread with a
 * blocking connection of its own: the comparison of an endpoint's versions
 * over the last minutes (metrics_redis_query) and the disagreement samples
 * of a version (metrics_redis_diffs); and the commands other main-thread
 * users (the rollout driver) send on the writer's connection
 * (metrics_redis_command). The writer is redis.c.
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* ---- reading: the comparison (SPEC §5 metrics) -------------------------------- */

struct qrow {
    char name[CFG_NAME_MAX + 1];
    const char *group;
    int configured;             /* effective share, hundredths; -1 for groups */
    bool is_default, is_control, is_mirror;
    uint64_t *v;                /* minutes x M_COUNT; routed: pinned taken out */
    uint64_t pinned;            /* versions: pinned requests over the minutes */
};

struct query {
    int minutes;
    uint32_t first;
    char ep[CFG_NAME_MAX + 1];
    struct qrow rows[CFG_MAX_VERSIONS + 3];
    int n_rows, n_versions;
};
/* Per minute: comparisons with a result and how many were equal. */
static void
series_agreement(json_t *pt, const uint64_t *v)
{
    uint64_t compared = v[M_CMP_TOTAL] - v[M_CMP_UNKNOWN];
    json_object_set_new(pt, "compared", json_integer((json_int_t)compared));
    json_object_set_new(pt, "equal", json_integer((json_int_t)v[M_CMP_EQUAL]));
}

/* SPEC §7: a mirror version's agreement with the live answers. */
static json_t *
agreement(const uint64_t *tot)
{
    uint64_t total = tot[M_CMP_TOTAL], unknown = tot[M_CMP_UNKNOWN];
    uint64_t compared = total >= unknown ? total - unknown : 0, eq = tot[M_CMP_EQUAL];
    json_t *o = json_object();
    json_object_set_new(o, "total", json_integer((json_int_t)total));
    json_object_set_new(o, "compared", json_integer((json_int_t)compared));
    json_object_set_new(o, "equal", json_integer((json_int_t)eq));
    json_object_set_new(o, "status_mismatches",
                        json_integer((json_int_t)tot[M_CMP_STATUS_MISMATCH]));
    json_object_set_new(o, "differences", json_integer((json_int_t)tot[M_CMP_DIFFERENT]));
    json_object_set_new(o, "unknown", json_integer((json_int_t)unknown));
    if (compared > 0) {
        double lo, hi;
        metrics_wilson(eq, compared, &lo, &hi);
        json_object_set_new(o, "equal_rate", json_real((double)eq / (double)compared));
        json_object_set_new(o, "equal_rate_ci95", json_pack("[f, f]", lo, hi));
    } else {
        json_object_set_new(o, "equal_rate", json_null());
        json_object_set_new(o, "equal_rate_ci95", json_null());
    }
    return o;
}

static json_t *
summarise(const struct query *q, const struct qrow *row, uint64_t live_total, uint64_t *tot)
{
    memset(tot, 0, M_COUNT * sizeof(uint64_t));
    json_t *series = json_array();
    for (int m = 0; m < q->minutes; m++) {
        const uint64_t *v = row->v + (size_t)m * M_COUNT;
        for (int k = 0; k < M_COUNT; k++)
            tot[k] += v[k];
        json_t *pt = json_pack("{s:I, s:I, s:I, s:f, s:f, s:f}",
            "minute", (json_int_t)(q->first + (uint32_t)m),
            "requests", (json_int_t)v[M_REQUESTS], "errors", (json_int_t)v[M_5XX],
            "p50_ms", metrics_quantile_ms(v + M_LAT_FIRST, 0.50),
            "p95_ms", metrics_quantile_ms(v + M_LAT_FIRST, 0.95),
            "p99_ms", metrics_quantile_ms(v + M_LAT_FIRST, 0.99));
        if (row->is_mirror && row->configured >= 0)
            series_agreement(pt, v);
        json_array_append_new(series, pt);
    }
    json_t *o = json_object();
    json_object_set_new(o, row->configured >= 0 ? "version" : "group",
                        json_string(row->configured >= 0 ? row->name : row->group));
    if (row->configured >= 0) {
        json_object_set_new(o, "group", json_string(row->group));
        json_object_set_new(o, "is_default", json_boolean(row->is_default));
        json_object_set_new(o, "configured_share", row->is_mirror ? json_null() :
                            json_real(row->configured / 100.0));
        json_object_set_new(o, "observed_share", row->is_mirror || live_total == 0 ?
                            json_null() :
                            json_real(100.0 * (double)tot[M_REQUESTS] / (double)live_total));
        /* Everything else here is routed traffic only (SPEC §3.3). */
        json_object_set_new(o, "pinned_requests", json_integer((json_int_t)row->pinned));
    }
    double n = (double)tot[M_REQUESTS];
    json_object_set_new(o, "requests", json_integer((json_int_t)tot[M_REQUESTS]));
    json_object_set_new(o, "errors", json_integer((json_int_t)tot[M_5XX]));
    json_object_set_new(o, "upstream_errors", json_integer((json_int_t)tot[M_UPSTREAM_ERRORS]));
    json_object_set_new(o, "error_rate", json_real(n > 0 ? (double)tot[M_5XX] / n : 0));
    json_object_set_new(o, "latency_mean_ms",
                        json_real(n > 0 ? (double)tot[M_LATENCY_SUM] / n / 1000.0 : 0));
    json_object_set_new(o, "p50_ms", json_real(metrics_quantile_ms(tot + M_LAT_FIRST, 0.50)));
    json_object_set_new(o, "p95_ms", json_real(metrics_quantile_ms(tot + M_LAT_FIRST, 0.95)));
    json_object_set_new(o, "p99_ms", json_real(metrics_quantile_ms(tot + M_LAT_FIRST, 0.99)));
    json_object_set_new(o, "series", series);
    if (row->is_mirror && row->configured >= 0)
        json_object_set_new(o, "agreement", agreement(tot));
    return o;
}

static json_t *
answer(struct query *q)
{
    json_t *ans;
    {
        uint64_t live = 0, tot[M_COUNT];
        for (int i = 0; i < q->n_versions; i++)
            if (!q->rows[i].is_mirror)
                for (int m = 0; m < q->minutes; m++)
                    live += q->rows[i].v[(size_t)m * M_COUNT + M_REQUESTS];
        json_t *versions = json_array(), *groups = json_array(), *cmp = json_array();
        uint64_t totals[CFG_MAX_VERSIONS][M_COUNT];
        int control = -1, def = 0;
        for (int i = 0; i < q->n_versions; i++) {
            json_array_append_new(versions, summarise(q, &q->rows[i], live, totals[i]));
            if (q->rows[i].is_control)
                control = i;
            if (q->rows[i].is_default)
                def = i;
        }
        for (int i = q->n_versions; i < q->n_rows; i++)
            json_array_append_new(groups, summarise(q, &q->rows[i], live, tot));
        if (control < 0)
            control = def;      /* no control marked: compare against the default */
        for (int i = 0; i < q->n_versions; i++) {
            if (i == control)
                continue;
            struct metrics_compare c;
            const uint64_t *tc = totals[control], *tt = totals[i];
            metrics_compare_errors(tc[M_REQUESTS], tc[M_5XX], tt[M_REQUESTS], tt[M_5XX], &c);
            json_t *o = json_pack("{s:s, s:s, s:s, s:f, s:[f, f], s:s}",
                "treatment", q->rows[i].name, "control", q->rows[control].name,
                "group", q->rows[i].group, "error_rate_diff", c.diff,
                "error_rate_diff_ci95", c.lo, c.hi, "verdict", c.verdict);
            static const struct { const char *name; double q; } qs[] = {
                {"p50_ratio", 0.5}, {"p95_ratio", 0.95}, {"p99_ratio", 0.99}};
            for (int k = 0; k < 3; k++) {
                double a = metrics_quantile_ms(tt + M_LAT_FIRST, qs[k].q);
                double b = metrics_quantile_ms(tc + M_LAT_FIRST, qs[k].q);
                json_object_set_new(o, qs[k].name, a >= 0 && b > 0 ? json_real(a / b) : json_null());
            }
            json_array_append_new(cmp, o);
        }
        ans = json_pack("{s:s, s:i, s:I, s:I, s:I, s:o, s:o, s:o}", "endpoint", q->ep,
                                "minutes", q->minutes, "from_minute", (json_int_t)q->first,
                                "to_minute", (json_int_t)(q->first + (uint32_t)q->minutes - 1),
                                "live_requests", (json_int_t)live,
                                "versions", versions, "groups", groups, "comparisons", cmp);
    }
    return ans;
}

static void
take_counters(uint64_t *v, redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < rep->elements; i += 2)
        for (int k = 0; k < M_COUNT; k++)
            if (strcmp(rep->element[i]->str, metrics_field_names[k]) == 0)
                v[k] = strtoull(rep->element[i + 1]->str, NULL, 10);
}

/* SPEC §3.3, §4: the comparison judges routed traffic only. A version's
 * pinned counts (pinnedminute) come off its row and off its group's. */
static void
take_pinned(struct query *q, int row, int minute, redisReply *rep)
{
    uint64_t pin[M_COUNT] = {0};
    take_counters(pin, rep);
    q->rows[row].pinned += pin[M_REQUESTS];
    int g = -1;
    for (int i = q->n_versions; i < q->n_rows; i++)
        if (strcmp(q->rows[i].group, q->rows[row].group) == 0)
            g = i;
    uint64_t *dst[2] = {q->rows[row].v + (size_t)minute * M_COUNT,
                        g >= 0 ? q->rows[g].v + (size_t)minute * M_COUNT : NULL};
    for (int d = 0; d < 2; d++)
        for (int k = 0; dst[d] != NULL && k < M_COUNT; k++)
            dst[d][k] = dst[d][k] >= pin[k] ? dst[d][k] - pin[k] : 0;
}

/* A short-lived synchronous connection for the admin API's reads: connect,
 * AUTH and SELECT with a one-second timeout; NULL with err set. */
static redisContext *
query_connect(struct metrics_redis *r, char *err, size_t errlen)
{
    struct timeval tv = {1, 0};
    char host[256];
    int port = 0;
    /* The primary as last known (never a sentinel round trip here); with
     * sentinels, briefly the old one during a failover. */
    bool known = metrics_primary_get(host, sizeof(host), &port);
    redisContext *c = known ? redisConnectWithTimeout(host, port, tv) : NULL;
    if (c == NULL || c->err) {
        if (known)
            snprintf(err, errlen, "cannot reach Redis at %s:%d", host, port);
        else
            snprintf(err, errlen, "no Redis primary known yet: the sentinels have not named one");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *rep = NULL;
    bool bad = false;
    if (r->password) {
        rep = redisCommand(c, "AUTH %s", r->password);
        bad = rep == NULL || rep->type == REDIS_REPLY_ERROR;
        freeReplyObject(rep);
    }
    if (!bad && r->db) {
        rep = redisCommand(c, "SELECT %d", r->db);
        bad = rep == NULL || rep->type == REDIS_REPLY_ERROR;
        freeReplyObject(rep);
    }
    if (bad) {
        snprintf(err, errlen, "Redis refused AUTH or SELECT");
        redisFree(c);
        return NULL;
    }
    return c;
}

/*
 * A blocking read on a connection of its own: the admin API asks rarely,
 * and an answer that outlives its request would be worse than a short
 * wait on the main thread (bounded by a one-second timeout).
 */
json_t *
metrics_redis_query(struct metrics_redis *r, const struct cfg_endpoint *ep, int minutes,
                    char *err, size_t errlen)
{
    redisContext *c = query_connect(r, err, errlen);
    if (c == NULL)
        return NULL;
    struct query *q = calloc(1, sizeof(*q));
    q->minutes = minutes;
    snprintf(q->ep, sizeof(q->ep), "%s", ep->name);
    uint32_t now = (uint32_t)(time(NULL) / 60);
    q->first = now - (uint32_t)minutes + 1;
    for (int i = 0; i < ep->n_versions; i++) {
        struct qrow *row = &q->rows[q->n_rows++];
        const struct cfg_version *v = &ep->versions[i];
        snprintf(row->name, sizeof(row->name), "%s", v->name);
        row->is_mirror = v->mirror > 0;
        row->group = config_group_name(row->is_mirror ? CFG_GROUP_SHADOW : v->group);
        row->configured = v->effective;
        row->is_default = v->is_default;
        row->is_control = v->group == CFG_GROUP_CONTROL && !row->is_mirror;
    }
    q->n_versions = q->n_rows;
    static const char *const groups[] = {"control", "treatment", "shadow"};
    for (int g = 0; g < 3; g++) {
        struct qrow *row = &q->rows[q->n_rows++];
        row->group = groups[g];
        row->configured = -1;
    }
    for (int i = 0; i < q->n_rows; i++) {
        q->rows[i].v = calloc((size_t)minutes * M_COUNT, sizeof(uint64_t));
        for (int m = 0; m < minutes; m++) {
            if (i < q->n_versions)
                redisAppendCommand(c, "HGETALL sluice:{%s}:minute:%s:%u", ep->name,
                                   q->rows[i].name, q->first + (uint32_t)m);
            else
                redisAppendCommand(c, "HGETALL sluice:{%s}:groupminute:%s:%u", ep->name,
                                   q->rows[i].group, q->first + (uint32_t)m);
        }
    }
    for (int i = 0; i < q->n_versions; i++)
        for (int m = 0; m < minutes; m++)
            redisAppendCommand(c, "HGETALL sluice:{%s}:pinnedminute:%s:%u", ep->name,
                               q->rows[i].name, q->first + (uint32_t)m);
    bool ok = true;
    for (int i = 0; i < q->n_rows + q->n_versions && ok; i++)
        for (int m = 0; m < minutes && ok; m++) {
            redisReply *rep = NULL;
            if (redisGetReply(c, (void **)&rep) != REDIS_OK || rep == NULL) {
                ok = false;
                break;
            }
            if (i < q->n_rows)
                take_counters(q->rows[i].v + (size_t)m * M_COUNT, rep);
            else
                take_pinned(q, i - q->n_rows, m, rep);
            freeReplyObject(rep);
        }
    redisFree(c);
    json_t *ans = ok ? answer(q) : NULL;
    if (!ok)
        snprintf(err, errlen, "Redis did not answer");
    for (int i = 0; i < q->n_rows; i++)
        free(q->rows[i].v);
    free(q);
    return ans;
}

/* ---- reading: disagreement samples (SPEC §7) ---------------------------------- */

json_t *
metrics_redis_diffs(struct metrics_redis *r, const char *ep, const char *version, int limit,
                    char *err, size_t errlen)
{
    redisContext *c = query_connect(r, err, errlen);
    if (c == NULL)
        return NULL;
    redisReply *rep = redisCommand(c, "LRANGE sluice:{%s}:diffs:%s 0 %d", ep, version, limit - 1);
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "Redis did not answer");
        freeReplyObject(rep);
        redisFree(c);
        return NULL;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < rep->elements; i++) {
        redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        json_t *j = json_loadb(e->str, e->len, 0, NULL);
        if (j != NULL)
            json_array_append_new(arr, j);
    }
    freeReplyObject(rep);
    redisFree(c);
    return arr;
}

/* ---- commands of other main-thread users (the rollout driver) ----------- */

struct foreign_cmd {
    metrics_redis_reply_fn fn;
    void *arg;
};

static void
on_foreign_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    struct foreign_cmd *fc = arg;
    fc->fn(reply, fc->arg);
    free(fc);
}

int
metrics_redis_command(struct metrics_redis *r, metrics_redis_reply_fn fn, void *arg, int argc,
                      const char **argv, const size_t *lens)
{
    if (r == NULL || !r->connected || r->ac == NULL)
        return -1;
    struct foreign_cmd *fc = malloc(sizeof(*fc));
    if (fc == NULL)
        return -1;
    fc->fn = fn;
    fc->arg = arg;
    if (redisAsyncCommandArgv(r->ac, fn ? on_foreign_reply : NULL, fn ? fc : NULL, argc, argv,
                              lens) != REDIS_OK) {
        free(fc);
        return -1;
    }
    if (fn == NULL)
        free(fc);
    return 0;
}
