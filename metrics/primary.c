/*
 * Where the Redis primary is (SPEC §6 Sentinel), for the metrics writer,
 * the fleet's connections and the admin API's reads, all on the main
 * thread.
 *
 * With redis.address it is that address, always. With redis.sentinels the
 * sentinels are asked (SENTINEL get-master-addr-by-name, each in turn until
 * one answers) at start, whenever a user of Redis reports the primary lost
 * (a connection error, a node that answers ROLE as a replica, a READONLY
 * error), and every PRIMARY_RECHECK_S as a safety net; and one sentinel's
 * +switch-master channel is followed, so a failover is seen the moment the
 * sentinels agree on it. Every answer goes to the watchers, which reconnect
 * when the address differs from the one they use.
 *
 * Everything is asynchronous (hiredis' async API on the main event loop)
 * except metrics_primary_resolve(), which a start calls before any worker or
 * event loop exists.
 */
#include "metrics/metrics.h"
#include "metrics/internal.h"

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PRIMARY_RECHECK_S 5         /* ask again this often even without a reason */
#define PRIMARY_ASK_TIMEOUT_MS 1000 /* a sentinel that does not answer is skipped */
#define PRIMARY_RETRY_MS 1000       /* after every sentinel failed, or a subscription dropped */
#define PRIMARY_WATCHERS 4
#define PRIMARY_WARN_EVERY_S 10

static struct {
    struct event_base *base;
    /* settings: n == 0 means a fixed address */
    int n;
    char **hosts;
    int *ports;
    char *master;
    char *fixed_host;
    int fixed_port;
    /* what is known */
    bool known;
    char host[256];
    int port;
    /* asking: one sentinel at a time */
    redisAsyncContext *ask;
    int ask_next;                   /* the sentinel to ask next */
    int ask_tried;                  /* in this round */
    bool ask_again;                 /* a loss reported while a round ran */
    struct event *ask_timeout, *ask_retry, *recheck;
    time_t warned;
    /* following +switch-master */
    redisAsyncContext *sub;
    int sub_next;
    struct event *sub_retry;
    struct { metrics_primary_fn fn; void *arg; } watchers[PRIMARY_WATCHERS];
} P;

static void ask_start(void);
static void sub_open(void);

static void
tv_ms(struct timeval *tv, int ms)
{
    tv->tv_sec = ms / 1000;
    tv->tv_usec = (ms % 1000) * 1000;
}

static void
notify(void)
{
    for (int i = 0; i < PRIMARY_WATCHERS; i++)
        if (P.watchers[i].fn != NULL)
            P.watchers[i].fn(P.watchers[i].arg);
}

/* An answer: the primary is host:port (via says who told). */
static void
found(const char *host, int port, const char *via)
{
    bool changed = !P.known || strcmp(P.host, host) != 0 || P.port != port;
    if (changed) {
        if (P.known)
            metrics_logf("redis_primary_switched", ",\"from\":\"%s:%d\",\"to\":\"%s:%d\","
                         "\"via\":\"%s\"", metrics_jstr(P.host), P.port, metrics_jstr(host), port,
                         via);
        else
            metrics_logf("redis_primary_found", ",\"address\":\"%s:%d\",\"via\":\"%s\"",
                         metrics_jstr(host), port, via);
        snprintf(P.host, sizeof(P.host), "%s", host);
        P.port = port;
        P.known = true;
    }
    notify();
}

/* ---- asking the sentinels ------------------------------------------------------ */

static void
ask_round_failed(void)
{
    time_t now = time(NULL);
    if (now - P.warned >= PRIMARY_WARN_EVERY_S) {
        P.warned = now;
        metrics_logf("redis_sentinels_unavailable", ",\"master_name\":\"%s\",\"sentinels\":%d,"
                     "\"reason\":\"no sentinel named a primary; asking again every %d ms\"",
                     metrics_jstr(P.master), P.n, PRIMARY_RETRY_MS);
    }
    struct timeval tv;
    tv_ms(&tv, PRIMARY_RETRY_MS);
    evtimer_add(P.ask_retry, &tv);
}

static void ask_one(void);

/* The sentinel asked did not answer usefully: the next one, or give up
 * this round. Called with P.ask already let go. */
static void
ask_failed(void)
{
    evtimer_del(P.ask_timeout);
    P.ask_next = (P.ask_next + 1) % P.n;
    if (++P.ask_tried >= P.n) {
        ask_round_failed();
        return;
    }
    ask_one();
}

static void
on_ask_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (ac->data != &P)
        return;                     /* let go (timeout, stop): nothing to do */
    ac->data = NULL;
    P.ask = NULL;
    evtimer_del(P.ask_timeout);
    if (r != NULL)
        redisAsyncDisconnect(ac);   /* deferred by hiredis until this callback returns */
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        /* NULL: unreachable; nil: this sentinel does not know master_name. */
        ask_failed();
        return;
    }
    char host[256];
    snprintf(host, sizeof(host), "%s", r->element[0]->str);
    int port = atoi(r->element[1]->str);
    P.ask_tried = 0;
    found(host, port, "sentinel");
    if (P.ask_again) {
        P.ask_again = false;
        ask_start();
    }
}

static void
ask_one(void)
{
    int i = P.ask_next;
    redisAsyncContext *ac = redisAsyncConnect(P.hosts[i], P.ports[i]);
    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        ask_failed();
        return;
    }
    ac->data = &P;
    redisLibeventAttach(ac, P.base);
    /* A failed connect runs on_ask_reply with NULL: one path for every failure. */
    if (redisAsyncCommand(ac, on_ask_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                          P.master) != REDIS_OK) {
        ac->data = NULL;
        redisAsyncFree(ac);
        ask_failed();
        return;
    }
    P.ask = ac;
    struct timeval tv;
    tv_ms(&tv, PRIMARY_ASK_TIMEOUT_MS);
    evtimer_add(P.ask_timeout, &tv);
}

static void
ask_start(void)
{
    if (P.n == 0 || P.base == NULL)
        return;
    if (P.ask != NULL) {
        P.ask_again = true;         /* the answer on its way may predate the loss */
        return;
    }
    if (evtimer_pending(P.ask_retry, NULL))
        return;                     /* a round just failed: the retry comes soon */
    P.ask_tried = 0;
    ask_one();
}

static void
on_ask_timeout(evutil_socket_t fd, short what, void *arg)
{
    redisAsyncContext *ac = P.ask;
    if (ac == NULL)
        return;
    P.ask = NULL;
    ac->data = NULL;
    redisAsyncFree(ac);             /* not inside its callbacks: freed now */
    ask_failed();
}

static void
on_ask_retry(evutil_socket_t fd, short what, void *arg)
{
    ask_start();
}

static void
on_recheck(evutil_socket_t fd, short what, void *arg)
{
    ask_start();
    if (P.sub == NULL && !evtimer_pending(P.sub_retry, NULL))
        sub_open();
}

/* ---- following +switch-master ----------------------------------------------------- */

static void
sub_retry_later(void)
{
    P.sub_next = (P.sub_next + 1) % P.n;
    struct timeval tv;
    tv_ms(&tv, PRIMARY_RETRY_MS);
    evtimer_add(P.sub_retry, &tv);
}

static void
on_sub_connect(const redisAsyncContext *ac, int status)
{
    if (ac->data != &P || status == REDIS_OK)
        return;
    P.sub = NULL;                   /* hiredis frees it */
    sub_retry_later();
}

static void
on_sub_disconnect(const redisAsyncContext *ac, int status)
{
    if (ac->data != &P)
        return;
    P.sub = NULL;
    metrics_logf("redis_sentinel_lost", ",\"sentinel\":\"%s:%d\"",
                 metrics_jstr(P.hosts[P.sub_next]), P.ports[P.sub_next]);
    sub_retry_later();
    ask_start();                    /* a switch may pass while nobody listens */
}

/* "+switch-master" messages: "<name> <old ip> <old port> <new ip> <new port>". */
static void
on_sub_message(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (ac->data != &P || r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        metrics_logf("redis_sentinel_following", ",\"sentinel\":\"%s:%d\",\"master_name\":\"%s\"",
                     metrics_jstr(P.hosts[P.sub_next]), P.ports[P.sub_next],
                     metrics_jstr(P.master));
        ask_start();                /* whatever switched before the subscription */
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    char name[128], old_ip[256], new_ip[256];
    int old_port, new_port;
    if (sscanf(r->element[2]->str, "%127s %255s %d %255s %d", name, old_ip, &old_port, new_ip,
               &new_port) != 5 || strcmp(name, P.master) != 0)
        return;
    found(new_ip, new_port, "switch-master");
}

static void
sub_open(void)
{
    int i = P.sub_next;
    redisAsyncContext *ac = redisAsyncConnect(P.hosts[i], P.ports[i]);
    if (ac == NULL || ac->err) {
        if (ac != NULL)
            redisAsyncFree(ac);
        sub_retry_later();
        return;
    }
    ac->data = &P;
    redisLibeventAttach(ac, P.base);
    redisAsyncSetConnectCallback(ac, on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, on_sub_disconnect);
    redisAsyncCommand(ac, on_sub_message, NULL, "SUBSCRIBE +switch-master");
    P.sub = ac;
}

static void
on_sub_retry(evutil_socket_t fd, short what, void *arg)
{
    if (P.sub == NULL)
        sub_open();
}

/* ---- settings ----------------------------------------------------------------------- */

static bool
same_settings(const struct cfg_redis *c)
{
    if (c->n_sentinels != P.n)
        return false;
    if (P.n == 0)
        return P.fixed_host != NULL && c->host != NULL && strcmp(P.fixed_host, c->host) == 0 &&
               P.fixed_port == c->port;
    if (strcmp(P.master, c->master_name) != 0)
        return false;
    for (int i = 0; i < P.n; i++)
        if (strcmp(P.hosts[i], c->sentinel_hosts[i]) != 0 || P.ports[i] != c->sentinel_ports[i])
            return false;
    return true;
}

static char *
xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (d == NULL)
        abort();
    return d;
}

static void
drop_conns(void)
{
    redisAsyncContext *ac;
    if ((ac = P.ask) != NULL) {
        P.ask = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    if ((ac = P.sub) != NULL) {
        P.sub = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

static void
clear_settings(void)
{
    for (int i = 0; i < P.n; i++)
        free(P.hosts[i]);
    free(P.hosts);
    free(P.ports);
    free(P.master);
    free(P.fixed_host);
    P.hosts = NULL;
    P.ports = NULL;
    P.master = P.fixed_host = NULL;
    P.n = 0;
    P.known = false;
}

static void
take_settings(const struct cfg_redis *c)
{
    clear_settings();
    if (c->n_sentinels == 0) {
        P.fixed_host = xstrdup(c->host);
        P.fixed_port = c->port;
        snprintf(P.host, sizeof(P.host), "%s", c->host ? c->host : "");
        P.port = c->port;
        P.known = c->host != NULL;
        return;
    }
    P.hosts = calloc((size_t)c->n_sentinels, sizeof(*P.hosts));
    P.ports = calloc((size_t)c->n_sentinels, sizeof(*P.ports));
    if (P.hosts == NULL || P.ports == NULL)
        abort();
    for (int i = 0; i < c->n_sentinels; i++) {
        P.hosts[i] = xstrdup(c->sentinel_hosts[i]);
        P.ports[i] = c->sentinel_ports[i];
    }
    P.n = c->n_sentinels;
    P.master = xstrdup(c->master_name);
    P.ask_next = P.sub_next = 0;
}

bool
metrics_primary_configure(struct event_base *base, const struct cfg_redis *c)
{
    bool first = P.base == NULL;
    if (first) {
        P.base = base;
        P.ask_timeout = evtimer_new(base, on_ask_timeout, NULL);
        P.ask_retry = evtimer_new(base, on_ask_retry, NULL);
        P.sub_retry = evtimer_new(base, on_sub_retry, NULL);
        P.recheck = event_new(base, -1, EV_PERSIST, on_recheck, NULL);
        if (P.ask_timeout == NULL || P.ask_retry == NULL || P.sub_retry == NULL ||
            P.recheck == NULL)
            abort();
    }
    bool same = same_settings(c);
    if (same && !first)
        return false;
    if (!same) {
        drop_conns();
        take_settings(c);
    }
    /* Kept when resolve() found it with these settings before the loop ran. */
    if (P.n == 0) {
        event_del(P.recheck);
        evtimer_del(P.ask_retry);
        evtimer_del(P.sub_retry);
        evtimer_del(P.ask_timeout);
        return !same;
    }
    struct timeval tv = {PRIMARY_RECHECK_S, 0};
    event_add(P.recheck, &tv);
    ask_start();
    sub_open();
    return !same;
}

bool
metrics_primary_sentinels(void)
{
    return P.n > 0;
}

bool
metrics_primary_get(char *host, size_t hostlen, int *port)
{
    if (!P.known)
        return false;
    snprintf(host, hostlen, "%s", P.host);
    *port = P.port;
    return true;
}

void
metrics_primary_lost(void)
{
    ask_start();
}

void
metrics_primary_watch(metrics_primary_fn fn, void *arg)
{
    for (int i = 0; i < PRIMARY_WATCHERS; i++)
        if (P.watchers[i].fn == NULL) {
            P.watchers[i].fn = fn;
            P.watchers[i].arg = arg;
            return;
        }
    abort();                        /* a fixed set of users: a programming error */
}

void
metrics_primary_unwatch(metrics_primary_fn fn, void *arg)
{
    for (int i = 0; i < PRIMARY_WATCHERS; i++)
        if (P.watchers[i].fn == fn && P.watchers[i].arg == arg)
            P.watchers[i].fn = NULL;
}

bool
metrics_primary_resolve(const struct cfg_redis *c, char *host, size_t hostlen, int *port,
                        int timeout_ms)
{
    if (c->n_sentinels == 0) {
        snprintf(host, hostlen, "%s", c->host ? c->host : "");
        *port = c->port;
        return c->host != NULL;
    }
    struct timeval tv;
    tv_ms(&tv, timeout_ms);
    for (int i = 0; i < c->n_sentinels; i++) {
        redisContext *rc = redisConnectWithTimeout(c->sentinel_hosts[i], c->sentinel_ports[i], tv);
        if (rc == NULL || rc->err) {
            if (rc != NULL)
                redisFree(rc);
            continue;
        }
        redisSetTimeout(rc, tv);
        redisReply *r = redisCommand(rc, "SENTINEL get-master-addr-by-name %s", c->master_name);
        bool ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                  r->element[0]->type == REDIS_REPLY_STRING &&
                  r->element[1]->type == REDIS_REPLY_STRING;
        if (ok) {
            snprintf(host, hostlen, "%s", r->element[0]->str);
            *port = atoi(r->element[1]->str);
        }
        freeReplyObject(r);
        redisFree(rc);
        if (ok) {
            /* The asynchronous side starts from this answer. */
            if (!same_settings(c))
                take_settings(c);
            snprintf(P.host, sizeof(P.host), "%s", host);
            P.port = *port;
            P.known = true;
            return true;
        }
    }
    return false;
}

void
metrics_primary_stop(void)
{
    drop_conns();
    if (P.base != NULL) {
        event_free(P.ask_timeout);
        event_free(P.ask_retry);
        event_free(P.sub_retry);
        event_free(P.recheck);
    }
    clear_settings();
    memset(&P, 0, sizeof(P));
}
