/*
 * Fleet sync (SPEC §6), the connections (see fleet.c for the whole design):
 * the command and subscriber connections to the primary metrics/primary.c
 * knows, reconnects, the subscription's messages and the 5 s poll; the
 * fleet listing (GET /admin/v1/fleet); fleet_start() and fleet_stop().
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
        fleet_schedule_reconnect();
        return;
    }
    if (is_sub)
        return;
    F.connected = true;
    F.warned_down = false;
    log_event(LOG_INFO, "fleet_redis_connected", ",\"address\":\"%s:%d\",\"generation\":%llu",
              log_json(F.host), F.port, (unsigned long long)F.gen);
    fleet_fetch(VIA_RECONNECT);             /* catch up with what changed meanwhile */
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
    fleet_schedule_reconnect();
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
    fleet_drop_all("ROLE is not master");
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
    fleet_drop_all(NULL);
    fleet_set_address(host, port);
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
        fleet_fetch(VIA_SUBSCRIBE);         /* anything published before this is read now */
        return;
    }
    if (strcmp(r->element[0]->str, "message") != 0 || r->element[2]->type != REDIS_REPLY_STRING)
        return;
    /* Any generation, older numbers too (a failover): the GET decides. */
    fleet_fetch(VIA_MESSAGE);
}

static redisAsyncContext *
open_conn(redisAsyncContext **slot)
{
    char host[256];
    int port;
    if (!metrics_primary_get(host, sizeof(host), &port))
        return NULL;                /* the sentinels have not answered: on_primary opens */
    fleet_set_address(host, port);
    redisAsyncContext *ac = redisAsyncConnect(F.host, F.port);
    if (ac == NULL || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        fleet_schedule_reconnect();
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
        fleet_fetch(VIA_POLL);
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
    F.next_ev = evtimer_new(base, fleet_on_next, NULL);
    F.retry_ev = evtimer_new(base, fleet_on_retry, NULL);
    F.deadline_ev = evtimer_new(base, fleet_on_deadline, NULL);
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
        fleet_cas_finish(F.q_head, 503, "the instance is stopping: nothing was written", NULL);
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
