/*
 * libFuzzer target: the HTTP/2 server side of a client connection, driven
 * the way a hostile client would (issue 19 item 7). The real code runs: a
 * worker from worker_setup() on its own event_base, a config parsed from
 * JSON, and a connection from session_new() on one end of a socketpair.
 * The input, after the client preface (which the target prepends), is
 * written to the other end in pieces; between pieces the loop runs until
 * it is idle and a fake upstream class (nothing connects anywhere) moves
 * each model-server exchange one step along a plan chosen per exchange:
 * answer at once, answer slowly (a head, a big body in pieces honouring
 * pause, the end), fail (reset early, or cut mid-response), take the body
 * slowly (a backlog over the high-water mark, then drained), answer 204 or
 * 503, or never answer. Then the peer end is closed and the loop runs
 * until the session is gone, and every exchange left (shadow copies
 * included) is failed, so that each iteration frees every stream, request
 * and connection (a leak is a finding).
 *
 * The config has a version that takes one request at a time with a long
 * wait queue (verb) and one whose waiters give up after 1 ms (verq), a
 * mirror with comparison, and an endpoint with keys.
 *
 * Input: byte 0 the write size (1-255 bytes; 0 all at once), byte 1 the
 * seed of the plans, the rest the client's bytes after the preface.
 *
 * Checked: no crash, UB or leak; the connection ends once its client has
 * gone (within a bounded number of loop turns); afterwards no session,
 * request waiting for a slot, shadow copy or upstream connection is left,
 * and every pool's in-flight count is back to 0; what the gateway wrote is
 * a sequence of well-formed HTTP/2 frames opening with SETTINGS (frame
 * sizes within the default maximum, connection-level frames on stream 0,
 * stream frames on client-initiated odd streams); every access-log line
 * parses as a JSON object that says "protocol":"HTTP/2".
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "gateway/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define BIG_PIECE 16384
#define BIG_PIECES 20               /* a slow answer's body: 320 KiB, past GW_HIGH_WATER */
#define MAX_TURNS 400               /* loop turns for the connection to end */

static void
fail_check(const char *what)
{
    fprintf(stderr, "fuzz_h2: invariant failed: %s\n", what);
    abort();
}

/* ---- the fake upstream: exchanges moved along by the driver -------------- */

enum plan { P_ANSWER, P_SLOW, P_FAIL, P_SLOW_BODY, P_NO_BODY, P_NEVER, P_COUNT };

struct fake_up {
    struct upconn u;
    enum plan plan;
    int step;
    bool paused, stuck, visited;
    struct fake_up *next, *prev;
};

static struct fake_up *fakes;
static int n_fakes;
static uint32_t rng;

static uint32_t
next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static struct upconn *
fk_acquire(struct worker *w, struct upool *p, const struct upconn_ops *ops, void *owner,
           bool fresh)
{
    struct fake_up *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->u.w = w;
    f->u.pool = p;
    f->u.cls = p->cls;
    f->u.ops = ops;
    f->u.owner = owner;
    f->u.busy = true;
    f->u.connected = true;
    f->plan = (enum plan)(next_rand() % P_COUNT);
    f->stuck = f->plan == P_SLOW_BODY;
    f->next = fakes;
    if (fakes != NULL)
        fakes->prev = f;
    fakes = f;
    n_fakes++;
    p->active++;
    return &f->u;
}

static void
fk_forget(struct upconn *u)
{
    struct fake_up *f = (struct fake_up *)u;
    if (u->busy)
        u->pool->active--;
    u->busy = false;
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        fakes = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    n_fakes--;
    head_free(&u->head);
    free(f);
}

static void fk_release(struct upconn *u, bool reusable) { fk_forget(u); }
static void fk_close(struct upconn *u) { fk_forget(u); }
static void fk_nop(struct upconn *u) { }
static void fk_pause(struct upconn *u) { ((struct fake_up *)u)->paused = true; }
static void fk_resume(struct upconn *u) { ((struct fake_up *)u)->paused = false; }
static void fk_send_head(struct upconn *u, const struct upstream_request *r) { }
static void fk_send_body(struct upconn *u, const char *at, size_t len) { }
static void fk_send_end(struct upconn *u) { }
static struct evbuffer *fk_take_resend(struct upconn *u) { return NULL; }
static void fk_send_again(struct upconn *u, struct evbuffer *what) { }

static size_t
fk_backlog(const struct upconn *u)
{
    return ((const struct fake_up *)u)->stuck ? GW_HIGH_WATER + 1 : 0;
}

static const struct upstream_class fake_class = {
    .name = "fake", .acquire = fk_acquire, .release = fk_release, .close = fk_close,
    .pause = fk_pause, .resume = fk_resume, .flush = fk_nop,
    .send_head = fk_send_head, .send_body = fk_send_body, .send_end = fk_send_end,
    .take_resend = fk_take_resend, .send_again = fk_send_again, .backlog = fk_backlog,
};

static bool
alive(const struct fake_up *f)
{
    for (const struct fake_up *g = fakes; g != NULL; g = g->next)
        if (g == f)
            return true;
    return false;
}

/* The model server's response head; false when the connection went. */
static bool
fk_head(struct fake_up *f, int status, bool has_length, uint64_t length, bool *no_body)
{
    struct upconn *u = &f->u;
    u->status = status;
    u->has_length = has_length;
    u->content_length = length;
    head_reset(&u->head);
    head_field(&u->head, "Content-Type", 12);
    head_value(&u->head, "application/json", 16);
    head_field(&u->head, "X-Model", 7);
    head_value(&u->head, "fake", 4);
    head_classify(&u->head);
    *no_body = u->ops->on_head(u->owner, u) != 0;
    return alive(f);
}

static bool
fk_body(struct fake_up *f, const char *at, size_t len)
{
    f->u.ops->on_body(f->u.owner, &f->u, at, len);
    return alive(f);
}

static void
fk_done(struct fake_up *f)
{
    f->u.ops->on_done(f->u.owner, &f->u, true);
}

static void
fk_fail(struct fake_up *f, enum up_fail why, bool early)
{
    f->u.ops->on_failed(f->u.owner, &f->u, why, early);
}

/* One step of the exchange's plan (the callbacks may free it). */
static void
fk_step(struct fake_up *f, bool finish)
{
    static char big[BIG_PIECE];
    bool no_body = false;
    static const char small[] = "{\"score\":0.5}";
    if (finish) {
        fk_fail(f, f->step == 0 ? UPF_RESET : UPF_CLOSED, f->step == 0);
        return;
    }
    switch (f->plan) {
    case P_ANSWER:
        if (fk_head(f, 200, true, sizeof(small) - 1, &no_body) &&
            (no_body || fk_body(f, small, sizeof(small) - 1)))
            fk_done(f);
        return;
    case P_NO_BODY:
        if (fk_head(f, next_rand() % 2 ? 204 : 503, false, 0, &no_body))
            fk_done(f);
        return;
    case P_FAIL:
        if (next_rand() % 2) {
            fk_fail(f, UPF_RESET, true);
        } else if (fk_head(f, 200, false, 0, &no_body)) {
            if (no_body || fk_body(f, small, 5))
                fk_fail(f, UPF_CLOSED, false);
        }
        return;
    case P_SLOW_BODY:
        /* Takes the request body slowly: then answers. */
        if (f->stuck) {
            f->stuck = false;
            f->u.ops->on_drained(f->u.owner, &f->u);
            return;
        }
        f->plan = P_ANSWER;
        return;
    case P_SLOW:
        if (f->step == 0) {
            f->step++;
            if (fk_head(f, 200, false, 0, &no_body) && no_body)
                fk_done(f);
            return;
        }
        if (f->step <= BIG_PIECES) {
            for (int i = 0; i < 4 && f->step <= BIG_PIECES && !f->paused; i++, f->step++)
                if (!fk_body(f, big, sizeof(big)))
                    return;
            if (!f->paused)
                f->u.ops->on_progress(f->u.owner, &f->u);
            return;
        }
        fk_done(f);
        return;
    case P_NEVER:
    default:
        return;
    }
}

/* Every exchange open now moves one step. */
static void
fakes_round(bool finish)
{
    for (struct fake_up *f = fakes; f != NULL; f = f->next)
        f->visited = false;
    for (;;) {
        struct fake_up *f = fakes;
        while (f != NULL && f->visited)
            f = f->next;
        if (f == NULL)
            return;
        f->visited = true;
        fk_step(f, finish);
    }
}

/* ---- the world ------------------------------------------------------------ */

static struct worker W;

static const char *config_json =
    "{\"listeners\":[{\"address\":\"127.0.0.1:8080\"}],"
    " \"limits\":{\"header_timeout_ms\":30000,\"idle_timeout_ms\":30000,"
    "  \"max_body_bytes\":4096,\"max_header_bytes\":2048,"
    "  \"max_client_output_bytes\":65536,\"send_timeout_ms\":30000,"
    "  \"h2_max_concurrent_streams\":16,\"shadow_timeout_ms\":30000},"
    " \"endpoints\":["
    "  {\"name\":\"epx\",\"auth\":{\"keys\":false},\"scoring_timeout_ms\":30000,"
    "   \"sticky\":{\"header\":\"x-user-id\"},\"versions\":["
    "    {\"name\":\"vera\",\"upstreams\":[\"127.0.0.1:9\"],\"traffic_percentile\":50,"
    "     \"is_default\":true,\"type\":\"control\"},"
    "    {\"name\":\"verb\",\"upstreams\":[\"127.0.0.1:10\"],\"traffic_percentile\":50,"
    "     \"replica_max_concurrent_requests\":1,\"max_request_wait_time_ms\":30000},"
    "    {\"name\":\"verq\",\"upstreams\":[\"127.0.0.1:12\"],\"traffic_percentile\":0,"
    "     \"replica_max_concurrent_requests\":1,\"max_request_wait_time_ms\":1},"
    "    {\"name\":\"verm\",\"upstreams\":[\"127.0.0.1:11\"],\"traffic_percentile\":0,"
    "     \"mirror_percentile\":50,\"compare\":{\"samples\":1}}]},"
    "  {\"name\":\"locked\",\"keys\":{\"primary\":\"env:SLUICE_FUZZ_H2_KEY\"},\"versions\":["
    "    {\"name\":\"vera\",\"upstreams\":[\"127.0.0.1:9\"],\"traffic_percentile\":100}]}"
    " ]}";

static void
world_start(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level("error");
    setenv("SLUICE_FUZZ_H2_KEY", "k-0123456789abcdef", 1);
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
}

/* ---- what the gateway wrote: a sequence of HTTP/2 frames ------------------- */

struct frames {
    struct evbuffer *buf;
    bool first_seen;
};

static void
frames_check(struct frames *fr)
{
    uint8_t hd[9];
    while (evbuffer_get_length(fr->buf) >= 9) {
        evbuffer_copyout(fr->buf, hd, 9);
        uint32_t len = (uint32_t)hd[0] << 16 | (uint32_t)hd[1] << 8 | hd[2];
        uint8_t type = hd[3];
        uint32_t sid = ((uint32_t)hd[5] << 24 | (uint32_t)hd[6] << 16 |
                        (uint32_t)hd[7] << 8 | hd[8]) & 0x7fffffff;
        if (len > 16384)
            fail_check("a frame over the default SETTINGS_MAX_FRAME_SIZE");
        if (!fr->first_seen && type != 0x4)
            fail_check("the gateway's first frame is not SETTINGS");
        fr->first_seen = true;
        switch (type) {
        case 0x0: case 0x1: case 0x3: case 0x9:       /* DATA HEADERS RST_STREAM CONTINUATION */
            if (sid == 0 || sid % 2 == 0)
                fail_check("a stream frame on stream 0 or a server-initiated stream");
            break;
        case 0x4: case 0x6: case 0x7:                   /* SETTINGS PING GOAWAY */
            if (sid != 0)
                fail_check("a connection frame on a stream");
            break;
        case 0x8:                                       /* WINDOW_UPDATE */
            break;
        default:
            fail_check("a frame of a type the gateway never sends (PUSH_PROMISE, PRIORITY, ...)");
        }
        if (evbuffer_get_length(fr->buf) < 9 + (size_t)len)
            return;
        evbuffer_drain(fr->buf, 9 + (size_t)len);
    }
}

/* Take everything the gateway wrote so far. */
static void
peer_read(int fd, struct frames *fr)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return;
        evbuffer_add(fr->buf, buf, (size_t)n);
        frames_check(fr);
    }
}

static void
turns(int n)
{
    for (int i = 0; i < n; i++)
        event_base_loop(W.base, EVLOOP_NONBLOCK);
}

/* Every access-log line is a JSON object of an HTTP/2 request. */
static void
check_access(void)
{
    size_t n = evbuffer_get_length(W.access);
    if (n == 0)
        return;
    char *all = (char *)evbuffer_pullup(W.access, -1);
    char *line = all, *end = all + n;
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (nl == NULL)
            fail_check("an access-log line without its newline");
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        if (!json_is_object(j))
            fail_check("an access-log line that is not a JSON object");
        const char *p = json_string_value(json_object_get(j, "protocol"));
        if (p == NULL || strcmp(p, "HTTP/2") != 0)
            fail_check("an access-log line without \"protocol\":\"HTTP/2\"");
        json_decref(j);
        line = nl + 1;
    }
    evbuffer_drain(W.access, n);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool started;
    if (!started) {
        world_start();
        started = true;
    }
    if (size < 2)
        return 0;
    size_t step = data[0] ? data[0] : size;
    rng = 0x9e3779b9u ^ ((uint32_t)data[1] * 0x01000193u);
    data += 2;
    size -= 2;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    session_new(&W, sv[0], (struct sockaddr *)&sa, sizeof(sa), NULL, true);
    struct frames fr = {.buf = evbuffer_new()};

    /* The preface and the input, in pieces; the loop and the model
     * servers move between pieces. */
    struct evbuffer *in = evbuffer_new();
    evbuffer_add(in, PREFACE, sizeof(PREFACE) - 1);
    evbuffer_add(in, data, size);
    int stalled = 0;
    while (evbuffer_get_length(in) > 0 && stalled < 8) {
        size_t n = evbuffer_get_length(in) < step ? evbuffer_get_length(in) : step;
        ssize_t w = write(sv[1], evbuffer_pullup(in, (ssize_t)n), n);
        if (w > 0) {
            evbuffer_drain(in, (size_t)w);
            stalled = 0;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            break;                  /* the gateway closed its end */
        } else {
            stalled++;              /* it reads no more for now: let it move */
        }
        turns(3);
        peer_read(sv[1], &fr);
        fakes_round(false);
        turns(2);
        peer_read(sv[1], &fr);
    }
    evbuffer_free(in);
    /* A few more rounds: slow answers go on while the client still reads. */
    for (int i = 0; i < 8 && n_fakes > 0; i++) {
        fakes_round(false);
        turns(2);
        peer_read(sv[1], &fr);
    }
    check_access();

    /* The client goes: the connection must end, and free everything. */
    close(sv[1]);
    for (int i = 0; i < MAX_TURNS && (W.n_sessions > 0 || W.gc_sessions != NULL); i++)
        turns(1);
    if (W.n_sessions > 0)
        fail_check("the connection did not end after its client closed");
    /* Shadow copies live on alone: their exchanges end too. */
    for (int i = 0; i < 16 && n_fakes > 0; i++) {
        fakes_round(true);
        turns(2);
    }
    turns(2);
    if (n_fakes > 0)
        fail_check("an upstream exchange outlived its requests and copies");
    if (W.n_shadows > 0)
        fail_check("a shadow copy outlived its exchange");
    if (!TAILQ_EMPTY(&W.waiters))
        fail_check("a request still waits for a slot");
    for (struct upool *p = W.pools; p != NULL; p = p->next)
        if (p->active != 0)
            fail_check("a pool's in-flight count is not back to 0");
    check_access();
    evbuffer_free(fr.buf);
    return 0;
}
