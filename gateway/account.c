/*
 * Accounting: the access-log line and the counters of each finished
 * request and shadow copy (SPEC §1 logs, §3.7 last bullet, §4). Called
 * once per request, from the one place a request ends (request_end in exchange.c).
 *
 * Access lines are buffered per worker and written whole, one write(2)
 * per buffer, so lines of different workers never interleave.
 */
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ACCESS_FLUSH_BYTES (64 * 1024)
#define PATH_LOG_MAX 2048

/* Open client connections, all workers (atomic): counted by conn.c,
 * read by worker.c and the admin API. Defined here, with the other
 * counters, so that conn.c does not depend back on worker.c. */
int gw_open_connections;
int gw_open_fds;

static uint32_t
minute_now(struct worker *w)
{
    struct timeval tv;
    event_base_gettimeofday_cached(w->base, &tv);
    return (uint32_t)(tv.tv_sec / 60);
}

/* The counters of version vi of ep: cached for the worker's snapshot. */
static struct metrics_slot *
slot_of(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep, int vi)
{
    if (cfg == w->cfg)
        return w->eps[ep - cfg->endpoints].mslot[vi];
    const struct cfg_version *v = &ep->versions[vi];
    return metrics_slot(w->metrics, ep->name, v->name,
                        config_group_name(v->mirror ? CFG_GROUP_SHADOW : v->group));
}

static void
count(struct worker *w, const struct req_record *r)
{
    const struct req_cause_info *ci = req_cause_info(r->cause);
    if (r->ep == NULL || r->version < 0) {
        /* Reached no version: SPEC's sluice:rejected kinds. */
        if (ci->rejected >= 0)
            metrics_reject_ep(w->metrics, r->ep ? r->ep->name : NULL,
                              (enum rejected_kind)ci->rejected);
        return;
    }
    struct metrics_sample m = {
        .status = r->count_status ? r->count_status : r->status, .latency_us = r->latency_us, .bytes_in = r->bytes_in,
        .bytes_out = r->bytes_out, .failover = r->failover, .pinned = r->pinned,
        .upstream_error = ci->status == 502,
        .timeout = r->cause == RC_UPSTREAM_TIMEOUT,
        .overloaded = r->cause == RC_OVERLOADED,
    };
    metrics_record(slot_of(w, r->cfg, r->ep, r->version), minute_now(w), &m);
}

static void
add_str(struct evbuffer *b, const char *key, const char *s, size_t len)
{
    buf_str(b, key);
    if (s == NULL) {
        BUF_LIT(b, "null");
        return;
    }
    BUF_LIT(b, "\"");
    json_escape_add(b, s, len);
    BUF_LIT(b, "\"");
}

static void
log_line(struct worker *w, const struct req_record *r)
{
    struct evbuffer *b = w->access;
    struct timeval tv;
    char t[40];

    /* The loop's cached clock, and the date formatted once a second. */
    event_base_gettimeofday_cached(w->base, &tv);
    if (tv.tv_sec != w->log_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(w->log_date, sizeof(w->log_date), "%Y-%m-%dT%H:%M:%S", &tm);
        w->log_sec = tv.tv_sec;
    }
    snprintf(t, sizeof(t), "%s.%06ldZ", w->log_date, (long)tv.tv_usec);
    const struct cfg_version *v = (r->ep && r->version >= 0) ?
        &r->ep->versions[r->version] : NULL;
    BUF_LIT(b, "{\"time\":\"");
    buf_str(b, t);
    BUF_LIT(b, "\"");
    add_str(b, ",\"request_id\":", r->request_id, strlen(r->request_id));
    if (r->trace != NULL) {
        /* "trace_id":"32 hex","span_id":"16 hex" (the request's server span) */
        char ids[sizeof(",\"trace_id\":\"") - 1 + 32 + sizeof("\",\"span_id\":\"") - 1 + 16 + 2];
        char *p = ids;
        memcpy(p, ",\"trace_id\":\"", 13);
        tracing_hex(r->trace->trace_id, 16, p + 13);
        p += 13 + 32;
        memcpy(p, "\",\"span_id\":\"", 13);
        tracing_hex(r->trace->span_id, 8, p + 13);
        p += 13 + 16;
        *p++ = '"';
        evbuffer_add(b, ids, (size_t)(p - ids));
    }
    add_str(b, ",\"client\":", r->peer, strlen(r->peer));
    add_str(b, ",\"endpoint\":", r->ep ? r->ep->name : NULL, r->ep ? strlen(r->ep->name) : 0);
    add_str(b, ",\"version\":", v ? v->name : NULL, v ? strlen(v->name) : 0);
    const char *g = v ? config_group_name(v->mirror ? CFG_GROUP_SHADOW : v->group) : NULL;
    add_str(b, ",\"group\":", g, g ? strlen(g) : 0);
    if (r->pinned)
        BUF_LIT(b, ",\"pinned\":true");
    else
        BUF_LIT(b, ",\"pinned\":false");
    add_str(b, ",\"protocol\":", r->protocol, r->protocol ? strlen(r->protocol) : 0);
    add_str(b, ",\"method\":", r->method, r->method ? strlen(r->method) : 0);
    add_str(b, ",\"path\":", r->path, r->path_len > PATH_LOG_MAX ? PATH_LOG_MAX : r->path_len);
    BUF_LIT(b, ",\"status\":");
    buf_u64(b, (uint64_t)r->status);
    add_str(b, ",\"upstream\":", r->upstream, r->upstream ? strlen(r->upstream) : 0);
    BUF_LIT(b, ",\"latency_us\":");
    buf_u64(b, r->latency_us);
    BUF_LIT(b, ",\"bytes_in\":");
    buf_u64(b, r->bytes_in);
    BUF_LIT(b, ",\"bytes_out\":");
    buf_u64(b, r->bytes_out);
    if (r->grpc_status >= 0) {
        BUF_LIT(b, ",\"grpc_status\":");
        buf_u64(b, (uint64_t)r->grpc_status);
    } else if (r->grpc_status == -1)
        BUF_LIT(b, ",\"grpc_status\":null");
    const char *why = req_cause_info(r->cause)->why;
    if (why != NULL)
        add_str(b, ",\"error\":", why, strlen(why));
    BUF_LIT(b, "}\n");
    if (evbuffer_get_length(b) > ACCESS_FLUSH_BYTES)
        log_access_write(b);
}

void
account_request(struct worker *w, const struct req_record *r)
{
    count(w, r);
    if (log_access_enabled())
        log_line(w, r);
}

void
account_shadow(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep,
               int version, int status, uint64_t latency_us, bool dropped)
{
    struct metrics_sample m = {
        .status = status,
        .latency_us = latency_us,
        .upstream_error = status == 502 || status == 0,
        .timeout = status == 504,
        .shadow_dropped = dropped,
    };
    metrics_record(slot_of(w, cfg, ep, version), minute_now(w), &m);
}

static void
sample_str(struct evbuffer *b, const char *key, const char *s)
{
    buf_str(b, key);
    if (s == NULL) {
        BUF_LIT(b, "null");
        return;
    }
    BUF_LIT(b, "\"");
    json_escape_add(b, s, strlen(s));
    BUF_LIT(b, "\"");
}

void
account_compare(struct worker *w, const struct config *cfg, const struct cfg_endpoint *ep,
                int vi, enum cmp_result res, const struct cmp_diff *d)
{
    static const int field[] = {
        [CMP_EQUAL] = M_CMP_EQUAL, [CMP_DIFFERENT] = M_CMP_DIFFERENT,
        [CMP_STATUS_MISMATCH] = M_CMP_STATUS_MISMATCH, [CMP_UNKNOWN] = M_CMP_UNKNOWN,
    };
    struct metrics_sample m = {.cmp_field = field[res]};
    metrics_record(slot_of(w, cfg, ep, vi), minute_now(w), &m);
    const struct cfg_version *v = &ep->versions[vi];
    if (d == NULL || v->compare.samples <= 0)
        return;
    /* {"time","request_id","trace_id","live_status","shadow_status","path","live",
     *  "shadow"} */
    struct evbuffer *b = evbuffer_new();     /* rare: only disagreements are sampled */
    char t[40];
    if (b == NULL)
        return;
    log_time_iso(t, sizeof(t));
    sample_str(b, "{\"time\":", t);
    sample_str(b, ",\"request_id\":", d->request_id);
    sample_str(b, ",\"trace_id\":", d->trace_id);
    BUF_LIT(b, ",\"live_status\":");
    buf_u64(b, (uint64_t)d->live_status);
    BUF_LIT(b, ",\"shadow_status\":");
    buf_u64(b, (uint64_t)d->shadow_status);
    sample_str(b, ",\"path\":", d->path);
    sample_str(b, ",\"live\":", d->live);
    sample_str(b, ",\"shadow\":", d->shadow);
    BUF_LIT(b, "}");
    BUF_LIT(b, "\0");
    metrics_diff_push(w->metrics, ep->name, v->name, v->compare.samples,
                      (const char *)evbuffer_pullup(b, -1));
    evbuffer_free(b);
}

void
account_flush(struct worker *w)
{
    if (evbuffer_get_length(w->access) > 0)
        log_access_write(w->access);
}
