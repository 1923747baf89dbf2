/*
 * The request's life (gateway/request.c) without sockets (issue 18 item 4):
 * a fake client side (struct client with recording client_ops) and a fake
 * upstream class (struct upstream_class whose connections the test answers
 * by calling their upconn_ops) drive requests through every way a request
 * ends, each enum req_cause, and check what a user sees of each: the status
 * sent, the access-log line (parsed as JSON: status, version, error) and
 * the counters (/metrics text after a collection).
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/internal.h"
#include "check.h"

/* ---- the fake upstream ------------------------------------------------------ */

struct fake_up {
    struct upconn u;
    struct evbuffer *sent;          /* what the request sent, as text */
    bool released, closed, reusable;
};

static struct fake_up *last_up;     /* the connection acquired last */
static int n_acquired;
static bool refuse_acquire;         /* acquire fails (cannot connect) */
static bool next_reused;            /* the next acquired connection was used before */

static struct upconn *
fk_acquire(struct worker *w, struct upool *p, const struct upconn_ops *ops, void *owner,
           bool fresh)
{
    if (refuse_acquire)
        return NULL;
    struct fake_up *f = calloc(1, sizeof(*f));
    f->u.w = w;
    f->u.pool = p;
    f->u.cls = p->cls;
    f->u.ops = ops;
    f->u.owner = owner;
    f->u.busy = true;
    f->u.connected = true;
    f->u.reused = next_reused && !fresh;
    next_reused = false;
    f->sent = evbuffer_new();
    p->active++;
    last_up = f;
    n_acquired++;
    return &f->u;
}

static void
fk_forget(struct upconn *u)
{
    struct fake_up *f = (struct fake_up *)u;
    if (u->busy)
        u->pool->active--;
    u->busy = false;
    if (last_up == f)
        last_up = NULL;
    evbuffer_free(f->sent);
    head_free(&u->head);
    free(f);
}

static void fk_release(struct upconn *u, bool reusable) { fk_forget(u); }
static void fk_close(struct upconn *u) { fk_forget(u); }
static void fk_nop(struct upconn *u) { }

static void
fk_send_head(struct upconn *u, const struct upstream_request *r)
{
    struct fake_up *f = (struct fake_up *)u;
    evbuffer_add_printf(f->sent, "%s %.*s version=%s group=%s|", r->method, (int)r->path_len,
                        r->path, r->tags.version, r->tags.group);
}

static void
fk_send_body(struct upconn *u, const char *at, size_t len)
{
    evbuffer_add(((struct fake_up *)u)->sent, at, len);
}

static void
fk_send_end(struct upconn *u)
{
    evbuffer_add_printf(((struct fake_up *)u)->sent, "|end");
}

static struct evbuffer *
fk_take_resend(struct upconn *u)
{
    if (u->connected && !u->reused)
        return NULL;                /* as the real classes: nothing safe to resend */
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_buffer(b, ((struct fake_up *)u)->sent);
    return b;
}

static void
fk_send_again(struct upconn *u, struct evbuffer *what)
{
    evbuffer_add_buffer(((struct fake_up *)u)->sent, what);
}

static size_t fk_backlog(const struct upconn *u) { return 0; }

static const struct upstream_class fake_class = {
    .name = "fake", .acquire = fk_acquire, .release = fk_release, .close = fk_close,
    .pause = fk_nop, .resume = fk_nop, .flush = fk_nop,
    .send_head = fk_send_head, .send_body = fk_send_body, .send_end = fk_send_end,
    .take_resend = fk_take_resend, .send_again = fk_send_again, .backlog = fk_backlog,
};

static char *
sent_text(void)
{
    static char buf[512];
    size_t n = evbuffer_copyout(last_up->sent, buf, sizeof(buf) - 1);
    buf[n] = '\0';
    return buf;
}

/* The model server answers: a head, a body, the end. */
static void
up_answer(int status, const char *body, bool done)
{
    struct upconn *u = &last_up->u;
    u->status = status;
    u->has_length = true;
    u->content_length = strlen(body);
    head_reset(&u->head);
    head_classify(&u->head);
    u->ops->on_head(u->owner, u);
    if (last_up == NULL)
        return;
    if (*body)
        u->ops->on_body(u->owner, u, body, strlen(body));
    if (done && last_up != NULL)
        u->ops->on_done(u->owner, u, true);
}

static void
up_fail(enum up_fail why, bool early)
{
    struct upconn *u = &last_up->u;
    if (why == UPF_CONNECT)
        u->connected = false;
    u->ops->on_failed(u->owner, u, why, early);
}

/* ---- the fake client side ---------------------------------------------------- */

struct fake_client {
    struct client c;
    struct auth_memo memo;
    struct request *req;
    int status;                     /* of the head or error sent */
    char code[32];
    struct evbuffer *body;
    bool end_sent, ended, aborted, continued;
    int runs;
};

#define FC(c) ((struct fake_client *)(c))

static void
fc_send_head(struct client *c, struct request *r, const struct resp_info *ri)
{
    FC(c)->status = ri->status;
}

static bool
fc_send_body(struct client *c, struct request *r, const char *at, size_t len)
{
    evbuffer_add(FC(c)->body, at, len);
    r->bytes_out += len;
    return false;
}

static void
fc_send_end(struct client *c, struct request *r, const struct head *t)
{
    FC(c)->end_sent = true;
}

static void
fc_send_error(struct client *c, struct request *r, int status, const char *code,
              const char *msg)
{
    FC(c)->status = status;
    snprintf(FC(c)->code, sizeof(FC(c)->code), "%s", code);
}

static void fc_send_continue(struct client *c, struct request *r) { FC(c)->continued = true; }
static void fc_resume(struct client *c, struct request *r) { }
static void fc_close_after(struct client *c, struct request *r) { c->ending = true; }
static void fc_run(struct client *c) { FC(c)->runs++; }
static void fc_progress(struct client *c) { }
static void fc_detach(struct client *c, struct request *r) { FC(c)->req = NULL; }
static void fc_ended(struct client *c) { FC(c)->ended = true; }

/* As the HTTP/1.1 side does: the client goes, and its request ends. */
static void
fc_abort(struct client *c, struct request *r)
{
    FC(c)->aborted = true;
    c->ending = true;
    request_client_left(r, RC_CLIENT_CLOSED);
    request_end(r);
}

static const struct client_ops fake_ops = {
    .send_head = fc_send_head, .send_body = fc_send_body, .send_end = fc_send_end,
    .send_error = fc_send_error, .send_continue = fc_send_continue,
    .resume_reading = fc_resume, .close_after = fc_close_after, .abort = fc_abort,
    .run = fc_run, .progress = fc_progress, .detach = fc_detach, .ended = fc_ended,
};

/* ---- the world: one worker on its own loop ------------------------------------- */

static struct worker W;
static struct metrics_backlog *backlog;

#define UP_A "127.0.0.1:9"
#define UP_B "127.0.0.1:10"
#define UP_Q "127.0.0.1:11"

static const char *config_json =
    "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
    " \"limits\":{\"header_timeout_ms\":60,\"max_body_bytes\":16},"
    " \"endpoints\":["
    "  {\"name\":\"epx\",\"auth\":{\"keys\":false},\"scoring_timeout_ms\":400,\"versions\":["
    "    {\"name\":\"vera\",\"upstreams\":[\"" UP_A "\"],\"traffic_percentile\":0,"
    "     \"is_default\":true,\"type\":\"control\"},"
    "    {\"name\":\"verb\",\"upstreams\":[\"" UP_B "\"],\"traffic_percentile\":0,"
    "     \"replica_max_concurrent_requests\":1,\"max_request_wait_time_ms\":0},"
    "    {\"name\":\"verq\",\"upstreams\":[\"" UP_Q "\"],\"traffic_percentile\":0,"
    "     \"replica_max_concurrent_requests\":1,\"max_request_wait_time_ms\":30}]},"
    "  {\"name\":\"locked\",\"keys\":{\"primary\":\"env:SLUICE_TEST_REQ_KEY\"},\"versions\":["
    "    {\"name\":\"vera\",\"upstreams\":[\"" UP_A "\"],\"traffic_percentile\":0}]}"
    " ]}";

static void
world_start(void)
{
    setenv("SLUICE_TEST_REQ_KEY", "k-0123456789abcdef", 1);
    json_error_t je;
    json_t *doc = json_loads(config_json, 0, &je);
    struct cfg_errors errs;
    cfg_errors_init(&errs);
    struct config *cfg = config_parse(doc, "/tmp", &errs);
    json_decref(doc);
    if (cfg == NULL) {
        fprintf(stderr, "config refused: %s\n", errs.n ? errs.msg[0] : "?");
        exit(1);
    }
    for (int i = 0; i < cfg->n_endpoints; i++)
        for (int v = 0; v < cfg->endpoints[i].n_versions; v++)
            for (int k = 0; k < cfg->endpoints[i].versions[v].n_upstreams; k++)
                route_shared_add(cfg->endpoints[i].versions[v].upstreams[k].address);
    worker_setup(&W, 0, event_base_new(), cfg);
    for (struct upool *p = W.pools; p != NULL; p = p->next)
        p->cls = &fake_class;
    backlog = metrics_backlog_new(1 << 16);
}

/* The counters now, as /metrics shows them. */
static unsigned long long
metric(const char *name, const char *labels)
{
    struct metrics_worker *mw[1] = {W.metrics};
    metrics_collect(backlog, mw, 1);
    char *text = metrics_prometheus(backlog);
    unsigned long long v = 0;
    char want[256];
    snprintf(want, sizeof(want), "%s{%s}", name, labels);
    const char *at = strstr(text, want);
    if (at != NULL)
        v = strtoull(at + strlen(want), NULL, 10);
    free(text);
    return v;
}

/* The access-log line of the request that ended last. */
static json_t *
last_log(void)
{
    size_t n = evbuffer_get_length(W.access);
    char *all = malloc(n + 1);
    evbuffer_copyout(W.access, all, n);
    all[n] = '\0';
    evbuffer_drain(W.access, n);
    char *nl = n > 1 ? memrchr(all, '\n', n - 1) : NULL;
    json_t *j = json_loads(nl ? nl + 1 : all, 0, NULL);
    free(all);
    return j;
}

static void
check_log(const char *what, int status, const char *version, const char *error)
{
    json_t *j = last_log();
    CHECK(j != NULL, "%s: no access-log line", what);
    if (j == NULL)
        return;
    CHECK(json_integer_value(json_object_get(j, "status")) == status, "%s: logged status %lld",
          what, json_integer_value(json_object_get(j, "status")));
    const char *v = json_string_value(json_object_get(j, "version"));
    CHECK(version ? v && strcmp(v, version) == 0 : v == NULL, "%s: logged version %s", what,
          v ? v : "null");
    const char *e = json_string_value(json_object_get(j, "error"));
    CHECK(error ? e && strcmp(e, error) == 0 : e == NULL, "%s: logged error %s", what,
          e ? e : "none");
    /* Every request has a trace context, refused ones too (SPEC §10). */
    const char *ids[2] = {json_string_value(json_object_get(j, "trace_id")),
                          json_string_value(json_object_get(j, "span_id"))};
    for (int k = 0; k < 2; k++) {
        size_t want = k == 0 ? 32 : 16;
        CHECK(ids[k] != NULL && strlen(ids[k]) == want &&
              strspn(ids[k], "0123456789abcdef") == want && strspn(ids[k], "0") < want,
              "%s: logged %s %s", what, k == 0 ? "trace_id" : "span_id", ids[k] ? ids[k] : "null");
    }
    json_decref(j);
}

/* A client with a request whose head says method path and headers
 * ("Name: value" strings, NULL-ended). */
static struct fake_client *
client_new(void)
{
    struct fake_client *fc = calloc(1, sizeof(*fc));
    fc->c.ops = &fake_ops;
    fc->c.w = &W;
    fc->c.proto = "http";
    fc->c.auth = &fc->memo;
    strcpy(fc->c.peer, "192.0.2.7");
    fc->body = evbuffer_new();
    return fc;
}

static void
client_free(struct fake_client *fc)
{
    evbuffer_free(fc->body);
    free(fc->memo.cred);
    free(fc);
}

/* Parse-side work of a client: the head, validated; then request_start().
 * Returns the request (still the client's) or NULL when it already ended. */
static struct request *
send_head(struct fake_client *fc, const char *path, int minor, uint64_t length,
          const char *const *headers)
{
    struct request *r = request_new(&fc->c);
    fc->req = r;
    head_url(&r->head, path, strlen(path));
    head_field(&r->head, "Host", 4);
    head_value(&r->head, "sluice", 6);
    for (int i = 0; headers && headers[i]; i++) {
        const char *colon = strchr(headers[i], ':');
        head_field(&r->head, headers[i], (size_t)(colon - headers[i]));
        head_value(&r->head, colon + 2, strlen(colon + 2));
    }
    if (length > 0) {
        char cl[24];
        snprintf(cl, sizeof(cl), "%llu", (unsigned long long)length);
        head_field(&r->head, "Content-Length", 14);
        head_value(&r->head, cl, strlen(cl));
    }
    head_classify(&r->head);
    r->line = (struct req_line){.method = HTTP_POST, .major = 1, .minor = minor,
                                .has_length = length > 0, .content_length = length};
    r->t_start_us = now_us();
    request_take_id(r);
    struct req_verdict vd = req_validate(&r->head, &r->line, &W.cfg->limits, &r->target);
    if (vd.cause != RC_OK) {
        request_reply(r, vd.cause, vd.message, vd.close);
        request_maybe_end(r);
    } else
        request_start(r);
    return fc->req;
}

static void
send_body(struct fake_client *fc, const char *body)
{
    if (fc->req == NULL)
        return;
    if (request_body(fc->req, body, strlen(body)))
        request_body_end(fc->req);
    if (fc->req != NULL)
        request_maybe_end(fc->req);
}

/* Let the loop run its timers until the client's request ended. */
static void
run_until_ended(struct fake_client *fc)
{
    /* Bounded by time, not turns: a loaded machine may take many turns.
     * The outcomes asserted do not depend on how long it took. */
    uint64_t until = now_us() + 5000000;
    while (!fc->ended && now_us() < until)
        event_base_loop(W.base, EVLOOP_ONCE);
}

/* ---- every way a request ends ---------------------------------------------------- */

static const char *const pin_b[] = {"X-Sluice-Version: verb", NULL};

static void
test_ok(void)
{
    struct fake_client *fc = client_new();
    unsigned long long before = metric("sluice_requests_total",
        "endpoint=\"epx\",version=\"vera\",group=\"control\",status=\"2xx\"");
    send_head(fc, "/api/v1/service/epx/score", 1, 4, NULL);
    send_body(fc, "{\"x\"");
    CHECK(last_up != NULL && strstr(sent_text(), "version=vera group=control|{\"x\"") != NULL,
          "the model server got %s", last_up ? sent_text() : "nothing");
    up_answer(200, "{\"y\":1}", true);
    CHECK(fc->ended && fc->status == 200 && fc->end_sent, "ended %d status %d", fc->ended,
          fc->status);
    CHECK(evbuffer_get_length(fc->body) == 7, "body %zu bytes", evbuffer_get_length(fc->body));
    check_log("ok", 200, "vera", NULL);
    CHECK(metric("sluice_requests_total",
                 "endpoint=\"epx\",version=\"vera\",group=\"control\",status=\"2xx\"") == before + 1,
          "counted once");
    client_free(fc);
}

static void
test_pinned_answered_before_body(void)
{
    /* The model server answers before the body is read: the exchange ends
     * after the answer (the rest is not wanted). */
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 4, pin_b);
    CHECK(last_up && strstr(sent_text(), "version=verb group=treatment|"), "sent %s",
          last_up ? sent_text() : "nothing");
    up_answer(200, "ok", true);
    CHECK(fc->ended && fc->c.ending && fc->status == 200, "ended %d ending %d status %d",
          fc->ended, fc->c.ending, fc->status);
    check_log("early answer", 200, "verb", NULL);
    CHECK(metric("sluice_pinned_total", "endpoint=\"epx\",version=\"verb\",group=\"treatment\"") >= 1,
          "pinned counted");
    client_free(fc);
}

struct refusal {
    const char *name;
    const char *path;
    int minor;
    const char *const *headers;
    int status;
    const char *error;
    const char *reason;             /* sluice_rejected_total's */
};

static const char *const bad_key[] = {"Authorization: Bearer nope", NULL};
static const char *const good_key[] = {"Authorization: Bearer k-0123456789abcdef", NULL};
static const char *const two_lengths[] = {"Host: other", NULL};
static const char *const pin_none[] = {"X-Sluice-Version: zz", NULL};

static void
test_refusals(void)
{
    static const struct refusal t[] = {
        {"bad request", "/api/v1/service/epx/score", 1, two_lengths, 400, "bad_request",
         "bad_request"},
        {"bad version", "/api/v1/service/epx/score", 2, NULL, 505, "bad_version", "bad_request"},
        {"unauthorized", "/api/v1/service/locked/score", 1, bad_key, 401, "unauthorized",
         "unauthorized"},
        {"not found", "/api/v1/service/nope/score", 1, NULL, 404, "not_found", "not_found"},
        {"no such version", "/api/v1/service/epx/score", 1, pin_none, 404, "not_found",
         "not_found"},
    };
    /* the endpoint each one named, if it got that far (sluice_rejected_total's
     * endpoint label: "" for none) */
    static const char *const named[] = {"", "", "locked", "", "epx"};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        char lab[96];
        snprintf(lab, sizeof(lab), "endpoint=\"%s\",reason=\"%s\"", named[i], t[i].reason);
        unsigned long long before = metric("sluice_rejected_total", lab);
        int acquired = n_acquired;
        struct fake_client *fc = client_new();
        send_head(fc, t[i].path, t[i].minor, t[i].headers == two_lengths ? 5 : 0,
                  t[i].headers);
        send_body(fc, "");
        CHECK(fc->ended && fc->status == t[i].status, "%s: ended %d status %d", t[i].name,
              fc->ended, fc->status);
        CHECK(n_acquired == acquired, "%s: reached a model server", t[i].name);
        check_log(t[i].name, t[i].status, NULL, t[i].error);
        CHECK(metric("sluice_rejected_total", lab) == before + 1, "%s: rejected count",
              t[i].name);
        client_free(fc);
    }
    /* The right key passes (and is remembered on the connection). */
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/locked/score", 1, 0, good_key);
    send_body(fc, "");
    CHECK(fc->memo.cred != NULL && last_up != NULL, "the key was refused");
    if (last_up)
        up_answer(204, "", true);
    CHECK(fc->ended && fc->status == 204, "keyed: status %d", fc->status);
    check_log("keyed", 204, "vera", NULL);
    client_free(fc);
}

static void
test_too_large(void)
{
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 20, NULL);
    send_body(fc, "01234567890123456789");      /* over max_body_bytes (16) */
    CHECK(fc->c.ending, "the exchange must end after a 413");
    request_maybe_end(fc->req);
    CHECK(fc->ended && fc->status == 413, "ended %d status %d", fc->ended, fc->status);
    check_log("too large", 413, NULL, "body_too_large");
    client_free(fc);

    /* The client side finds the head too large: same end, its cause. */
    fc = client_new();
    struct request *r = request_new(&fc->c);
    fc->req = r;
    request_reply(r, RC_HEADERS_TOO_LARGE, "the request headers are over max_header_bytes",
                  true);
    request_maybe_end(r);
    CHECK(fc->ended && fc->status == 431, "431: ended %d status %d", fc->ended, fc->status);
    check_log("headers too large", 431, NULL, "headers_too_large");
    client_free(fc);
}

static void
test_client_timeout(void)
{
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 4, NULL);
    request_arm_header_deadline(fc->req, 10);
    run_until_ended(fc);            /* the body never comes */
    CHECK(fc->ended && fc->status == 408, "ended %d status %d", fc->ended, fc->status);
    check_log("client timeout", 408, "vera", "client_timeout");
    client_free(fc);
}

static void
test_upstream_failures(void)
{
    static const struct { enum up_fail why; int status; const char *error; } t[] = {
        {UPF_RESET, 502, "upstream_reset"},
        {UPF_CLOSED, 502, "upstream_closed"},
        {UPF_INVALID, 502, "upstream_invalid_response"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        unsigned long long before = metric("sluice_upstream_errors_total",
            "endpoint=\"epx\",version=\"vera\",group=\"control\"");
        struct fake_client *fc = client_new();
        send_head(fc, "/api/v1/service/epx/score", 1, 2, NULL);
        send_body(fc, "{}");
        up_fail(t[i].why, true);    /* a fresh connection: no retry */
        CHECK(fc->ended && fc->status == t[i].status, "%s: ended %d status %d", t[i].error,
              fc->ended, fc->status);
        check_log(t[i].error, t[i].status, "vera", t[i].error);
        CHECK(metric("sluice_upstream_errors_total",
                     "endpoint=\"epx\",version=\"vera\",group=\"control\"") == before + 1,
              "%s: counted as an upstream error", t[i].error);
        client_free(fc);
    }
    /* Cannot connect at all. */
    struct fake_client *fc = client_new();
    refuse_acquire = true;
    send_head(fc, "/api/v1/service/epx/score", 1, 0, NULL);
    send_body(fc, "");
    refuse_acquire = false;
    CHECK(fc->ended && fc->status == 502, "connect: ended %d status %d", fc->ended, fc->status);
    check_log("connect", 502, "vera", "upstream_connect_failed");
    client_free(fc);

    /* Cut mid-response: the status already went out; the exchange ends. */
    fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 0, NULL);
    send_body(fc, "");
    up_answer(200, "par", false);
    up_fail(UPF_CLOSED, false);
    CHECK(fc->ended && fc->c.ending && fc->status == 200, "mid-response: ended %d status %d",
          fc->ended, fc->status);
    check_log("mid-response", 200, "vera", "upstream_closed");
    client_free(fc);
}

static void
test_retry_on_reused_connection(void)
{
    /* A reused connection closed before any answer: retried once on a new
     * one with the same bytes, and the client never knows. */
    struct fake_client *fc = client_new();
    next_reused = true;
    int before = n_acquired;
    send_head(fc, "/api/v1/service/epx/score", 1, 2, NULL);
    send_body(fc, "{}");
    up_fail(UPF_CLOSED, true);
    CHECK(n_acquired == before + 2 && last_up != NULL, "retried: %d connections",
          n_acquired - before);
    if (last_up != NULL) {
        CHECK(strstr(sent_text(), "version=vera group=control|{}|end") != NULL, "resent %s",
              sent_text());
        up_answer(200, "{}", true);
    }
    CHECK(fc->ended && fc->status == 200, "retry: status %d", fc->status);
    check_log("retry", 200, "vera", NULL);
    client_free(fc);
}

static void
test_upstream_timeout(void)
{
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 0, NULL);
    send_body(fc, "");
    run_until_ended(fc);            /* scoring_timeout_ms (400) passes */
    CHECK(fc->ended && fc->status == 504, "ended %d status %d", fc->ended, fc->status);
    check_log("upstream timeout", 504, "vera", "upstream_timeout");
    CHECK(metric("sluice_timeouts_total", "endpoint=\"epx\",version=\"vera\",group=\"control\"") >= 1,
          "timeout counted");
    client_free(fc);
}

static void
test_overloaded_and_unavailable(void)
{
    /* b allows one request at a time and no wait: the second gets a 503. */
    struct fake_client *one = client_new(), *two = client_new();
    send_head(one, "/api/v1/service/epx/score", 1, 0, pin_b);
    send_body(one, "");
    struct fake_up *held = last_up;
    send_head(two, "/api/v1/service/epx/score", 1, 0, pin_b);
    send_body(two, "");
    CHECK(two->ended && two->status == 503 && strcmp(two->code, "overloaded") == 0,
          "overloaded: status %d code %s", two->status, two->code);
    check_log("overloaded", 503, "verb", "overloaded");
    last_up = held;
    up_answer(200, "", true);
    CHECK(one->ended && one->status == 200, "the first: status %d", one->status);
    check_log("first", 200, "verb", NULL);
    client_free(one);
    client_free(two);

    /* Every upstream of b marked down by the active checks: 503. */
    for (struct upool *p = W.pools; p != NULL; p = p->next)
        if (strcmp(p->address, UP_A) != 0)
            __atomic_store_n(&p->shared->down, 1, __ATOMIC_RELAXED);
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/epx/score", 1, 0, pin_b);
    send_body(fc, "");
    CHECK(fc->ended && fc->status == 503 && strcmp(fc->code, "unavailable") == 0,
          "unavailable: status %d code %s", fc->status, fc->code);
    check_log("unavailable", 503, "verb", "no_healthy_upstream");
    for (struct upool *p = W.pools; p != NULL; p = p->next)
        __atomic_store_n(&p->shared->down, 0, __ATOMIC_RELAXED);
    client_free(fc);
}

static void
test_wait_queue(void)
{
    /* q takes one request at a time and lets others wait 30 ms: the second
     * waits (its body unread), gets the slot when the first ends; a third
     * that waits too long gets a 503. */
    struct fake_client *one = client_new(), *two = client_new(), *three = client_new();
    static const char *const pin_q[] = {"X-Sluice-Version: verq", NULL};
    send_head(one, "/api/v1/service/epx/score", 1, 0, pin_q);
    send_body(one, "");
    struct fake_up *first = last_up;
    CHECK(send_head(two, "/api/v1/service/epx/score", 1, 2, pin_q) != NULL &&
          two->req->phase == RP_QUEUED && !request_wants_body(two->req), "not queued");
    last_up = first;
    up_answer(200, "", true);
    CHECK(one->ended && one->status == 200, "first: status %d", one->status);
    check_log("first", 200, "verq", NULL);
    CHECK(two->req != NULL && two->req->phase == RP_UPSTREAM && last_up != NULL,
          "the waiting request did not get the slot");
    send_body(two, "{}");
    struct fake_up *second = last_up;
    send_head(three, "/api/v1/service/epx/score", 1, 0, pin_q);
    uint64_t until = now_us() + 5000000;
    while (three->status == 0 && now_us() < until)
        event_base_loop(W.base, EVLOOP_ONCE);
    send_body(three, "");           /* its (empty) body is read after the answer */
    CHECK(three->ended && three->status == 503 && strcmp(three->code, "overloaded") == 0,
          "waited too long: status %d code %s", three->status, three->code);
    check_log("waited too long", 503, "verq", "overloaded");
    last_up = second;
    if (second != NULL)
        up_answer(201, "", true);
    CHECK(two->ended && two->status == 201, "second: status %d", two->status);
    check_log("second", 201, "verq", NULL);
    client_free(one);
    client_free(two);
    client_free(three);
}

static void
test_client_side_ends(void)
{
    /* The client side reports why it went: the request ends with that cause,
     * whatever phase it was in, and 499 when nothing was sent. */
    static const struct { enum req_cause cause; const char *error; int status; } t[] = {
        {RC_CLIENT_CLOSED, "client_closed", 499},
        {RC_CLIENT_ERROR, "client_error", 0},
        {RC_SEND_TIMEOUT, "send_timeout", 0},
        {RC_SHUTDOWN, "shutdown", 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct fake_client *fc = client_new();
        send_head(fc, "/api/v1/service/epx/score", 1, 0, NULL);
        send_body(fc, "");
        CHECK(last_up != NULL && fc->req != NULL, "%s: not sent", t[i].error);
        fc->c.ending = true;
        request_client_left(fc->req, t[i].cause);
        request_end(fc->req);
        CHECK(fc->ended && last_up == NULL, "%s: the upstream connection was kept",
              t[i].error);
        check_log(t[i].error, t[i].status, "vera", t[i].error);
        client_free(fc);
    }
    /* Answered (404) with the exchange kept, but the rest of the body never
     * came: the client side is told to end it. */
    struct fake_client *fc = client_new();
    send_head(fc, "/api/v1/service/nope/score", 1, 4, NULL);
    CHECK(!fc->ended && !fc->c.ending && fc->status == 404, "404: ended %d ending %d",
          fc->ended, fc->c.ending);
    request_arm_header_deadline(fc->req, 10);
    run_until_ended(fc);
    CHECK(fc->aborted && fc->ended, "aborted %d ended %d", fc->aborted, fc->ended);
    check_log("rest never came", 404, NULL, "not_found");
    client_free(fc);
}

static void
test_every_cause_covered(void)
{
    /* The tests above end a request with each of these; a new cause must
     * get a test here too. */
    CHECK(RC_COUNT == 19, "%d causes: test the new one", RC_COUNT);
}

int
main(void)
{
    log_init();
    world_start();
    static const struct testcase t[] = {
        {"ok", test_ok},
        {"answered before the body", test_pinned_answered_before_body},
        {"refusals (400 505 401 404)", test_refusals},
        {"too large (413 431)", test_too_large},
        {"client timeout (408)", test_client_timeout},
        {"upstream failures (502)", test_upstream_failures},
        {"retry on a reused connection", test_retry_on_reused_connection},
        {"upstream timeout (504)", test_upstream_timeout},
        {"overloaded and unavailable (503)", test_overloaded_and_unavailable},
        {"wait queue", test_wait_queue},
        {"client side ends", test_client_side_ends},
        {"every cause covered", test_every_cause_covered},
        {NULL, NULL},
    };
    return run_tests(t);
}
