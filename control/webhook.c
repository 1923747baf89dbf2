/*
 * Rollout notifications (SPEC §8): one JSON object POSTed per event of a
 * rollout to the plan's "notify" URL, from the main thread's loop, never on
 * the driver's path: rollout.c hands an event over and goes on; delivery,
 * retries and their log lines happen here.
 *
 * Who sends: the instance that made the change. The rollout driver (the
 * fleet's lease holder) makes every step, rollback and promotion; an
 * operator's start, pause, resume, abort or promote is made by the
 * instance that took the admin request. Each change is made once, on one
 * instance, so each event is posted once however many instances run.
 *
 * Order and retries: one queue per URL, one request in flight per queue, so
 * a receiver sees a rollout's events in the order they happened. A request
 * that fails (no connection, a TLS or certificate error, no answer within
 * 10 s, a status other than 2xx) is logged and sent again after 1, 2, 4, …
 * up to 60 s, until 10 minutes after the event; then it is dropped, logged.
 * The events behind it wait their turn.
 *
 * https:// is verified against the system's trust store (OpenSSL's default
 * paths; SSL_CERT_FILE and SSL_CERT_DIR override them) and the URL's host
 * name (or IP address); there is no way to turn verification off.
 */
#include "control/control.h"

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define WH_GIVE_UP_S 600.0          /* retried for up to 10 minutes */
#define WH_BACKOFF_MAX_S 60.0
#define WH_TIMEOUT_S 10
#define WH_MAX_QUEUED 1000          /* per URL; the oldest are dropped beyond */

struct wh_msg {
    struct wh_msg *next;
    char *event;
    char *body;
    char **names, **values;
    int n_headers;
    double first;                   /* when the event happened */
    int attempts;
};

struct wh_queue {
    struct wh_queue *next;
    char *url;
    struct cfg_url u;
    struct wh_msg *head, *tail;
    int n;
    struct event *timer;
    struct evhttp_connection *conn; /* the request in flight, if any */
    struct evhttp_connection *done; /* its connection once over: freed off libevent's stack */
    SSL *ssl;
};

static struct {
    struct event_base *base;
    struct evdns_base *dns;
    SSL_CTX *ctx;
    struct wh_queue *queues;
    bool stopped;
} W;

static double
now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void
msg_free(struct wh_msg *m)
{
    for (int i = 0; i < m->n_headers; i++) {
        free(m->names[i]);
        free(m->values[i]);
    }
    free(m->names);
    free(m->values);
    free(m->event);
    free(m->body);
    free(m);
}

static void
queue_pop(struct wh_queue *q)
{
    struct wh_msg *m = q->head;
    if (m == NULL)
        return;
    q->head = m->next;
    if (q->head == NULL)
        q->tail = NULL;
    q->n--;
    msg_free(m);
}

static void send_head(struct wh_queue *q);

static void
schedule(struct wh_queue *q, double delay_s)
{
    struct timeval tv = {(time_t)delay_s, (suseconds_t)((delay_s - (time_t)delay_s) * 1e6)};
    evtimer_add(q->timer, &tv);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct wh_queue *q = arg;
    if (q->done != NULL)
        evhttp_connection_free(q->done);
    q->done = NULL;
    send_head(q);
}

/* The head's attempt ended: next event, or the same again after a pause. */
static void
attempt_done(struct wh_queue *q, int status, const char *why)
{
    struct wh_msg *m = q->head;
    q->done = q->conn;
    q->conn = NULL;
    q->ssl = NULL;
    if (m == NULL)
        return;
    if (status >= 200 && status < 300) {
        if (m->attempts > 1)
            log_event(LOG_INFO, "rollout_notify_sent", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                      "\"attempts\":%d", log_json(q->url), log_json(m->event), m->attempts);
        queue_pop(q);
        schedule(q, 0);
        return;
    }
    double backoff = 1;
    for (int i = 1; i < m->attempts && backoff < WH_BACKOFF_MAX_S; i++)
        backoff *= 2;
    if (backoff > WH_BACKOFF_MAX_S)
        backoff = WH_BACKOFF_MAX_S;
    bool give_up = now_s() + backoff > m->first + WH_GIVE_UP_S;
    char retry[32] = "null";
    if (!give_up)
        snprintf(retry, sizeof(retry), "%.0f", backoff);
    log_event(LOG_WARN, "rollout_notify_failed", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
              "\"attempt\":%d,\"status\":%d,\"reason\":\"%s\",\"retry_in_s\":%s",
              log_json(q->url), log_json(m->event), m->attempts, status, log_json(why), retry);
    if (give_up) {
        log_event(LOG_ERROR, "rollout_notify_dropped", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                  "\"attempts\":%d,\"reason\":\"not delivered within 10 minutes\"",
                  log_json(q->url), log_json(m->event), m->attempts);
        queue_pop(q);
        schedule(q, 0);
        return;
    }
    schedule(q, backoff);
}

static void
on_response(struct evhttp_request *req, void *arg)
{
    struct wh_queue *q = arg;
    if (W.stopped)
        return;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    char why[256];
    if (status == 0) {
        long vr = q->ssl ? SSL_get_verify_result(q->ssl) : X509_V_OK;
        unsigned long e = ERR_peek_last_error();
        if (vr != X509_V_OK)
            snprintf(why, sizeof(why), "certificate not accepted: %s",
                     X509_verify_cert_error_string(vr));
        else if (q->ssl && e != 0)
            snprintf(why, sizeof(why), "TLS: %s", ERR_reason_error_string(e) ?
                     ERR_reason_error_string(e) : "handshake failed");
        else
            snprintf(why, sizeof(why), "no response (connection refused, reset or timed "
                     "out after %d s)", WH_TIMEOUT_S);
        ERR_clear_error();
    } else
        snprintf(why, sizeof(why), "answered %d", status);
    attempt_done(q, status, why);
}

static SSL *
tls_new(const struct cfg_url *u)
{
    if (W.ctx == NULL) {
        W.ctx = SSL_CTX_new(TLS_client_method());
        if (W.ctx == NULL)
            return NULL;
        SSL_CTX_set_min_proto_version(W.ctx, TLS1_2_VERSION);
        SSL_CTX_set_verify(W.ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_default_verify_paths(W.ctx);
    }
    SSL *ssl = SSL_new(W.ctx);
    if (ssl == NULL)
        return NULL;
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, u->host, addr) == 1 || inet_pton(AF_INET6, u->host, addr) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, u->host)
                   : X509_VERIFY_PARAM_set1_host(param, u->host, 0);
    if (!is_ip)
        ok = ok && SSL_set_tlsext_host_name(ssl, u->host);
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* Send the queue's first event (one attempt). */
static void
send_head(struct wh_queue *q)
{
    struct wh_msg *m = q->head;
    if (W.stopped || m == NULL || q->conn != NULL)
        return;
    m->attempts++;
    struct bufferevent *bev;
    SSL *ssl = NULL;
    if (q->u.tls) {
        ssl = tls_new(&q->u);
        bev = ssl ? bufferevent_openssl_socket_new(W.base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                   BEV_OPT_CLOSE_ON_FREE) : NULL;
        if (bev == NULL && ssl != NULL)
            SSL_free(ssl);
        if (bev != NULL)
            bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    } else
        bev = bufferevent_socket_new(W.base, -1, BEV_OPT_CLOSE_ON_FREE);
    struct evhttp_connection *conn = bev ? evhttp_connection_base_bufferevent_new(
        W.base, W.dns, bev, q->u.host, (unsigned short)q->u.port) : NULL;
    if (conn == NULL) {
        if (bev != NULL)
            bufferevent_free(bev);
        attempt_done(q, 0, "out of memory");
        return;
    }
    evhttp_connection_set_timeout(conn, WH_TIMEOUT_S);
    evhttp_connection_set_retries(conn, 0);
    struct evhttp_request *req = evhttp_request_new(on_response, q);
    if (req == NULL) {
        evhttp_connection_free(conn);
        attempt_done(q, 0, "out of memory");
        return;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char host[300];
    bool v6 = strchr(q->u.host, ':') != NULL;
    bool dflt = q->u.port == (q->u.tls ? 443 : 80);
    if (dflt)
        snprintf(host, sizeof(host), v6 ? "[%s]" : "%s", q->u.host);
    else
        snprintf(host, sizeof(host), v6 ? "[%s]:%d" : "%s:%d", q->u.host, q->u.port);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "sluice/" SLUICE_VERSION);
    evhttp_add_header(h, "Connection", "close");
    for (int i = 0; i < m->n_headers; i++)
        evhttp_add_header(h, m->names[i], m->values[i]);
    evbuffer_add(evhttp_request_get_output_buffer(req), m->body, strlen(m->body));
    q->conn = conn;
    q->ssl = ssl;
    const char *path = q->u.path[0] == '/' ? q->u.path : NULL;
    char slash[2048 + 2];
    if (path == NULL) {
        /* "https://host?x=1": the path is "/" */
        snprintf(slash, sizeof(slash), "/%s", q->u.path);
        path = slash;
    }
    if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, path) < 0)
        /* evhttp_make_request() freed the request; the timer frees conn */
        attempt_done(q, 0, "the request could not be sent");
}

static struct wh_queue *
queue_of(const char *url)
{
    for (struct wh_queue *q = W.queues; q; q = q->next)
        if (strcmp(q->url, url) == 0)
            return q;
    struct wh_queue *q = calloc(1, sizeof(*q));
    const char *why;
    if (q == NULL || (q->url = strdup(url)) == NULL ||
        config_url_parse(q->url, &q->u, &why) < 0 ||
        (q->timer = evtimer_new(W.base, on_timer, q)) == NULL) {
        if (q != NULL)
            free(q->url);
        free(q);
        return NULL;
    }
    q->next = W.queues;
    W.queues = q;
    return q;
}

void
webhook_init(struct event_base *base)
{
    W.base = base;
    W.stopped = false;
    W.dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                 EVDNS_BASE_DISABLE_WHEN_INACTIVE);
}

void
webhook_post(const struct cfg_notify *n, const char *event, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (W.base == NULL || W.stopped || n->url == NULL || text == NULL) {
        free(text);
        return;
    }
    struct wh_queue *q = queue_of(n->url);
    struct wh_msg *m = calloc(1, sizeof(*m));
    if (q == NULL || m == NULL) {
        log_event(LOG_ERROR, "rollout_notify_dropped", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                  "\"reason\":\"out of memory\"", log_json(n->url), log_json(event));
        free(m);
        free(text);
        return;
    }
    m->body = text;
    m->event = strdup(event);
    m->first = now_s();
    m->names = calloc((size_t)n->n_headers + 1, sizeof(char *));
    m->values = calloc((size_t)n->n_headers + 1, sizeof(char *));
    for (int i = 0; m->names && m->values && i < n->n_headers; i++) {
        m->names[m->n_headers] = strdup(n->header_names[i]);
        m->values[m->n_headers] = strdup(n->header_values[i]);
        m->n_headers++;
        if (m->names[i] == NULL || m->values[i] == NULL)
            break;
    }
    if (m->event == NULL || m->names == NULL || m->values == NULL ||
        (m->n_headers > 0 && (m->names[m->n_headers - 1] == NULL ||
                              m->values[m->n_headers - 1] == NULL))) {
        log_event(LOG_ERROR, "rollout_notify_dropped", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                  "\"reason\":\"out of memory\"", log_json(n->url), log_json(event));
        msg_free(m);
        return;
    }
    if (q->n >= WH_MAX_QUEUED && q->conn == NULL) {
        /* A receiver down for long under a storm of events: the oldest go. */
        log_event(LOG_ERROR, "rollout_notify_dropped", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                  "\"reason\":\"%d events queued for this URL\"", log_json(q->url),
                  log_json(q->head->event), WH_MAX_QUEUED);
        queue_pop(q);
    }
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->n++;
    if (q->conn == NULL && !evtimer_pending(q->timer, NULL))
        schedule(q, 0);
}

/* Events still queued are lost at exit: say how many. */
void
webhook_stop(void)
{
    W.stopped = true;
    while (W.queues != NULL) {
        struct wh_queue *q = W.queues;
        W.queues = q->next;
        if (q->n > 0)
            log_event(LOG_WARN, "rollout_notify_dropped", ",\"url\":\"%s\",\"events\":%d,"
                      "\"reason\":\"sluice stopped before they were delivered\"",
                      log_json(q->url), q->n);
        if (q->conn != NULL)
            evhttp_connection_free(q->conn);
        if (q->done != NULL)
            evhttp_connection_free(q->done);
        while (q->head != NULL)
            queue_pop(q);
        event_free(q->timer);
        free(q->url);
        free(q);
    }
    if (W.dns != NULL)
        evdns_base_free(W.dns, 0);
    W.dns = NULL;
    SSL_CTX_free(W.ctx);
    W.ctx = NULL;
}

/* ---- rollout events ------------------------------------------------------- */

static const char *
event_name(const char *op, const struct cfg_rollout *ro)
{
    if (strcmp(op, "start") == 0)
        return "started";
    if (strcmp(op, "resume") == 0)
        return "resumed";
    if (ro->phase == CFG_ROLLOUT_RUNNING)
        return "step";
    return config_rollout_phase_name(ro->phase);
}

void
webhook_rollout(const char *op, const char *ep_name, const char *v_name, bool by_driver,
                const json_t *gate)
{
    const struct config *cfg = control_current();
    const struct cfg_endpoint *ep = cfg ? config_endpoint(cfg, ep_name, strlen(ep_name)) : NULL;
    int vi = ep ? config_version_index(ep, v_name, strlen(v_name)) : -1;
    if (vi < 0)
        return;
    const struct cfg_version *v = &ep->versions[vi];
    const struct cfg_rollout *ro = &v->rollout;
    const char *event = event_name(op, ro);
    if (ro->notify.url == NULL || event == NULL)
        return;
    time_t now = time(NULL);
    struct tm tm;
    char when[32];
    gmtime_r(&now, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    double share = v->traffic / (double)CFG_PCT_SCALE;
    char text[768];
    snprintf(text, sizeof(text), "sluice: %s/%s %s at step %d of %d (%g %% of traffic)%s%s",
             ep->name, v->name, strcmp(event, "step") == 0 ? "moved on" :
             strcmp(event, "rolled_back") == 0 ? "rolled back" : event, ro->step + 1,
             ro->n_steps, share, ro->reason ? ": " : "", ro->reason ? ro->reason : "");
    config_utf8_fix(text);
    const char *instance = metrics_redis_instance(control_metrics());
    json_t *body = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:f, s:f, s:b, s:o, s:s, s:o, "
                             "s:s, s:I, s:o, s:o, s:I, s:s}",
        "event", event, "endpoint", ep->name, "version", v->name,
        "phase", config_rollout_phase_name(ro->phase) ? config_rollout_phase_name(ro->phase)
                                                      : "",
        "step", ro->step + 1, "steps", ro->n_steps, "share", share,
        "effective_share", v->effective / (double)CFG_PCT_SCALE, "is_default", v->is_default,
        "reason", ro->reason ? json_string(ro->reason) : json_null(),
        "by", by_driver ? "rollout" : "operator",
        "gate", gate ? json_deep_copy(gate) : json_null(),
        "time", when, "timestamp", (json_int_t)now,
        "instance", instance ? json_string(instance) : json_null(),
        "fleet", fleet_enabled() ? json_string(fleet_name()) : json_null(),
        "generation", (json_int_t)cfg->generation, "text", text);
    if (body == NULL)
        log_event(LOG_ERROR, "rollout_notify_dropped", ",\"url\":\"%s\",\"rollout_event\":\"%s\","
                  "\"reason\":\"the event could not be built\"", log_json(ro->notify.url),
                  event);
    webhook_post(&ro->notify, event, body);
}
