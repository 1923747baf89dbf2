/*
 * Worker threads: one event_base each, with their own SO_REUSEPORT
 * listeners, sessions and upstream pools. The main thread talks to a worker
 * only through its mailbox (a mutex-guarded slot and an eventfd), never on
 * the request path. A worker hands accepted sockets to client_h1.c and keeps
 * its per-endpoint state (split, pools, counters) for the current snapshot.
 */
#define _GNU_SOURCE
#include "gateway/internal.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define ACCESS_FLUSH_MS 200

int gw_n_workers;
struct worker *gw_workers;

static int *mail_fds;
static struct metrics_worker **metrics_arr;

static struct worker_listener *give_listeners(const struct worker_listener *row, int n);
static void drop_listeners(struct worker_listener *ls, int n);


/* ---- config ----------------------------------------------------------- */

static void
worker_set_config(struct worker *w, struct config *cfg)
{
    if (w->metrics == NULL)
        w->metrics = metrics_worker_new();
    char err[256];
    struct auth_ctx *auth = auth_ctx_new(cfg, err, sizeof(err));
    if (auth == NULL)           /* validated on the main thread already */
        log_event(LOG_ERROR, "auth_setup_failed", ",\"reason\":\"%s\"", log_json(err));
    auth_ctx_free(w->auth);
    w->auth = auth;
    struct ep_state *eps = calloc((size_t)cfg->n_endpoints + 1, sizeof(*eps));
    if (eps == NULL)
        abort();
    for (int i = 0; i < cfg->n_endpoints; i++) {
        const struct cfg_endpoint *ep = &cfg->endpoints[i];
        route_split_init(&eps[i].split, ep);
        for (int v = 0; v < ep->n_versions; v++) {
            const struct cfg_version *ver = &ep->versions[v];
            for (int k = 0; k < ver->n_upstreams; k++)
                eps[i].pools[v][k] = upool_get(w, &ver->upstreams[k], ver->upstream_http2);
            eps[i].mslot[v] = metrics_slot(w->metrics, ep->name, ver->name,
                config_group_name(ver->mirror ? CFG_GROUP_SHADOW : ver->group));
        }
    }
    free(w->eps);
    w->eps = eps;
    config_drop(w->cfg);
    w->cfg = cfg;               /* the reference passed in becomes the worker's */
}

static void
access_flush(evutil_socket_t fd, short what, void *arg)
{
    account_flush(arg);
}

void
worker_setup(struct worker *w, int id, struct event_base *base, struct config *cfg)
{
    w->id = id;
    w->base = base;
    session_worker_init(w);
    upstream_worker_init(w);
    TAILQ_INIT(&w->shadows);
    worker_set_config(w, cfg);
    RAND_bytes((unsigned char *)&w->id_prefix, sizeof(w->id_prefix));
    w->access = evbuffer_new();
    w->scratch = evbuffer_new();
    w->scratch2 = evbuffer_new();
    w->log_ev = event_new(w->base, -1, EV_PERSIST, access_flush, w);
    struct timeval tv = {0, ACCESS_FLUSH_MS * 1000};
    event_add(w->log_ev, &tv);
}

/* ---- listeners and the mailbox ---------------------------------------- */

static void
accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
          int salen, void *arg)
{
    struct listener_rt *lr = arg;
    session_new(lr->w, fd, sa, salen, lr->tls, lr->http2);
}

static void
accept_resume(evutil_socket_t fd, short what, void *arg)
{
    evconnlistener_enable(arg);
}

static void
accept_error(struct evconnlistener *l, void *arg)
{
    /* Out of descriptors: pause accepting for a moment rather than spin. */
    struct listener_rt *lr = arg;
    evconnlistener_disable(l);
    log_event(LOG_WARN, "accept_failed", ",\"worker\":%d", lr->w->id);
    struct timeval tv = {0, 100000};
    event_base_once(lr->w->base, -1, EV_TIMEOUT, accept_resume, l, &tv);
}

static void
close_listeners(struct worker *w)
{
    for (int i = 0; i < w->n_listeners; i++) {
        if (w->listeners[i].ev != NULL)
            evconnlistener_free(w->listeners[i].ev);
        w->listeners[i].ev = NULL;
        if (w->listeners[i].tls != NULL)
            tls_ctx_free(w->listeners[i].tls);
        w->listeners[i].tls = NULL;
    }
    w->n_listeners = 0;
}

/*
 * Make the worker's listeners those of the table: sockets it has already
 * keep their listener (and its queue of pending connections), new ones get
 * one, and missing ones are closed. TLS contexts are swapped in place.
 */
static void
set_listeners(struct worker *w, const struct worker_listener *t, int n)
{
    struct listener_rt *ls = calloc((size_t)n + 1, sizeof(*ls));
    for (int i = 0; i < n; i++) {
        struct listener_rt *lr = &ls[i];
        lr->w = w;
        lr->fd = t[i].fd;
        lr->tls = t[i].ctx;         /* the reference give_listeners() took */
        lr->http2 = t[i].http2;
        for (int j = 0; j < w->n_listeners; j++)
            if (w->listeners[j].fd == t[i].fd && w->listeners[j].ev != NULL) {
                lr->ev = w->listeners[j].ev;
                w->listeners[j].ev = NULL;
                evconnlistener_set_cb(lr->ev, accept_cb, lr);
            }
        if (lr->ev == NULL) {
            lr->ev = evconnlistener_new(w->base, accept_cb, lr, LEV_OPT_CLOSE_ON_FREE,
                                        0, t[i].fd);
            if (lr->ev == NULL) {
                log_event(LOG_ERROR, "listener_failed", ",\"worker\":%d", w->id);
                continue;
            }
        }
        evconnlistener_set_error_cb(lr->ev, accept_error);
    }
    close_listeners(w);             /* what is left over is gone */
    free(w->listeners);
    w->listeners = ls;
    w->n_listeners = n;
}

static void
mail_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t n;
    ssize_t r = read(fd, &n, sizeof(n));
    (void)r;

    pthread_mutex_lock(&w->mail_lock);
    struct config *cfg = w->mail_cfg;
    struct worker_listener *ls = w->mail_listeners;
    int nls = w->mail_n_listeners;
    bool drain = w->mail_drain;
    bool stop = w->mail_stop;
    w->mail_cfg = NULL;
    w->mail_listeners = NULL;
    pthread_mutex_unlock(&w->mail_lock);

    if (cfg != NULL)
        worker_set_config(w, cfg);
    if (ls != NULL) {
        if (!w->draining) {
            set_listeners(w, ls, nls);
            free(ls);
        } else
            drop_listeners(ls, nls);
    }
    if (stop) {
        event_base_loopbreak(w->base);
        return;
    }
    if (drain && !w->draining) {
        w->draining = true;
        close_listeners(w);
        session_drain_all(w);
    }
}

static void
post(struct worker *w)
{
    uint64_t one = 1;
    ssize_t r = write(mail_fds[w->id], &one, sizeof(one));
    (void)r;
}

static int workers_ended;    /* atomic: worker loops that returned */

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    access_flush(-1, 0, w);
    gw_mem_thread_end();            /* (what it still holds, main frees later) */
    __atomic_add_fetch(&workers_ended, 1, __ATOMIC_RELEASE);
    return NULL;
}

bool
workers_all_ended(void)
{
    return __atomic_load_n(&workers_ended, __ATOMIC_ACQUIRE) == gw_n_workers;
}

int
workers_start(struct config *cfg, int n, const struct worker_listener *table,
              int n_listeners)
{
    struct rlimit rl;
    gw_fd_limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)INT32_MAX ?
        (int)rl.rlim_cur : INT32_MAX;
    gw_n_workers = n;
    gw_workers = calloc((size_t)n, sizeof(*gw_workers));
    mail_fds = calloc((size_t)n, sizeof(*mail_fds));
    if (gw_workers == NULL || mail_fds == NULL)
        return -1;
    for (int i = 0; i < n; i++) {
        struct worker *w = &gw_workers[i];
        struct event_config *ec = event_config_new();
        event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
        /* Coalesce event changes made within one loop turn into one
         * epoll_ctl (or none, when an add is undone in the same turn). */
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        struct event_base *base = event_base_new_with_config(ec);
        event_config_free(ec);
        if (base == NULL)
            return -1;
        worker_setup(w, i, base, config_take(cfg));
        pthread_mutex_init(&w->mail_lock, NULL);
        mail_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->mail_ev = event_new(w->base, mail_fds[i], EV_READ | EV_PERSIST, mail_cb, w);
        event_add(w->mail_ev, NULL);
        struct worker_listener *mine = give_listeners(table + i * n_listeners, n_listeners);
        set_listeners(w, mine, n_listeners);
        free(mine);
    }
    for (int i = 0; i < n; i++)
        if (pthread_create(&gw_workers[i].thread, NULL, worker_main, &gw_workers[i]) != 0)
            return -1;
    return 0;
}

/* A worker's copy of its row of the table, with a TLS context reference of
 * its own per entry: the main thread may free its references at any time. */
static struct worker_listener *
give_listeners(const struct worker_listener *row, int n)
{
    struct worker_listener *mine = calloc((size_t)n + 1, sizeof(*mine));
    memcpy(mine, row, (size_t)n * sizeof(*mine));
    for (int i = 0; i < n; i++)
        if (mine[i].ctx != NULL)
            SSL_CTX_up_ref(mine[i].ctx);
    return mine;
}

static void
drop_listeners(struct worker_listener *ls, int n)
{
    for (int i = 0; ls != NULL && i < n; i++)
        if (ls[i].ctx != NULL)
            tls_ctx_free(ls[i].ctx);
    free(ls);
}

void
workers_publish(struct config *cfg, const struct worker_listener *table, int n_listeners)
{
    for (int i = 0; i < gw_n_workers; i++) {
        struct worker *w = &gw_workers[i];
        struct worker_listener *mine = give_listeners(table + i * n_listeners, n_listeners);
        pthread_mutex_lock(&w->mail_lock);
        config_drop(w->mail_cfg);
        w->mail_cfg = config_take(cfg);
        drop_listeners(w->mail_listeners, w->mail_n_listeners);   /* superseded, unread */
        w->mail_listeners = mine;
        w->mail_n_listeners = n_listeners;
        pthread_mutex_unlock(&w->mail_lock);
        post(w);
    }
}

void
workers_drain(void)
{
    for (int i = 0; i < gw_n_workers; i++) {
        struct worker *w = &gw_workers[i];
        pthread_mutex_lock(&w->mail_lock);
        w->mail_drain = true;
        pthread_mutex_unlock(&w->mail_lock);
        post(w);
    }
}

void
workers_stop(void)
{
    for (int i = 0; i < gw_n_workers; i++) {
        struct worker *w = &gw_workers[i];
        pthread_mutex_lock(&w->mail_lock);
        w->mail_stop = true;
        pthread_mutex_unlock(&w->mail_lock);
        post(w);
    }
}

/* Wait for every worker until deadline_ms from now; then stop the rest. */
void
workers_join(int deadline_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += deadline_ms / 1000;
    ts.tv_nsec += (long)(deadline_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    bool stopped = false;
    for (int i = 0; i < gw_n_workers; i++) {
        if (!stopped && pthread_timedjoin_np(gw_workers[i].thread, NULL, &ts) == 0)
            continue;
        if (!stopped) {
            log_event(LOG_WARN, "drain_timeout", ",\"open_connections\":%d",
                      __atomic_load_n(&gw_open_connections, __ATOMIC_RELAXED));
            workers_stop();
            stopped = true;
        }
        pthread_join(gw_workers[i].thread, NULL);
    }
}

/* After workers_join(): free everything the workers owned. */
void
workers_free(void)
{
    for (int i = 0; i < gw_n_workers; i++) {
        struct worker *w = &gw_workers[i];
        close_listeners(w);
        w->draining = false;
        sessions_free_all(w);
        shadows_free_all(w);
        upstream_free_all(w);
        upstream_gc(w);
        upstream_h2_spares_free(w);
        worker_bufs_free(w);        /* again: the upstream streams' buffers come back */
        event_free(w->upstream_gc_ev);
        account_flush(w);
        evbuffer_free(w->access);
        evbuffer_free(w->scratch);
        evbuffer_free(w->scratch2);
        event_free(w->log_ev);
        event_free(w->mail_ev);
        close(mail_fds[i]);
        free(w->listeners);
        drop_listeners(w->mail_listeners, w->mail_n_listeners);
        free(w->eps);
        auth_ctx_free(w->auth);
        metrics_worker_free(w->metrics);
        config_drop(w->cfg);
        config_drop(w->mail_cfg);
        pthread_mutex_destroy(&w->mail_lock);
        event_base_free(w->base);
    }
    free(gw_workers);
    free(mail_fds);
    free(metrics_arr);
    metrics_arr = NULL;
    gw_workers = NULL;
    mail_fds = NULL;
    gw_n_workers = 0;
}


struct metrics_worker **
workers_metrics(void)
{
    if (metrics_arr == NULL) {
        metrics_arr = calloc((size_t)gw_n_workers + 1, sizeof(*metrics_arr));
        for (int i = 0; i < gw_n_workers; i++)
            metrics_arr[i] = gw_workers[i].metrics;
    }
    return metrics_arr;
}
