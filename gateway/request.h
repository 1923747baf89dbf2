/*
 * gateway/request.h — the request's life (request.c, exchange.c), the
 * table a client side implements for it (struct client_ops), and gRPC's
 * pure helpers (grpc.c). Internal to gateway/: included by
 * gateway/internal.h, whose types it uses.
 */
#ifndef SLUICE_GATEWAY_REQUEST_H
#define SLUICE_GATEWAY_REQUEST_H

/* ---- gRPC (grpc.c): pure functions of bytes (SPEC §9) ---------------------- */

/* content-type application/grpc (or +proto, ;…). */
bool grpc_is(const struct head *hd);
/* The first header named lower_name, or -1. */
int grpc_header(const struct head *hd, const char *lower_name);
/* The model name in field 1 of the first length-prefixed message of data
 * (ModelInferRequest.model_name, ModelReadyRequest.name, …). */
enum grpc_name { GRPC_NAME_FOUND, GRPC_NAME_MORE, GRPC_NAME_NONE };
enum grpc_name grpc_model_name(const char *data, size_t len, const char **name, size_t *nlen);
/* grpc-timeout ("100m", "2S", …) in milliseconds (rounded up). */
bool grpc_timeout_parse(const char *v, size_t len, uint64_t *ms);
void grpc_timeout_format(char out[16], uint64_t ms);
/* grpc-status -> the HTTP status a call counts as (Envoy's mapping), and
 * Sluice's own HTTP errors -> the grpc-status a gRPC client gets. */
int grpc_http_status(int grpc_status);
int grpc_status_for_http(int status);
/* grpc-status in a head or trailers, -1 when absent or not a number. */
int grpc_status_of(const struct head *hd);
/* msg percent-encoded for grpc-message. */
size_t grpc_message_encode(char *out, size_t cap, const char *msg);

/* ---- the request's life (request.c) and its client sides ------------------
 *
 * A request goes, whatever protocol its client speaks: head parsed ->
 * validated (by its client side: the rules differ per protocol) -> endpoint
 * -> auth -> version (pin, sticky, split) -> shadow copies -> a concurrency
 * slot (or the wait queue) -> an upstream connection -> the response
 * streamed back -> comparisons -> one access-log line and one count -> end.
 * request.c holds that life and never looks at a socket or a protocol's
 * bytes: it reaches its client through struct client and its client_ops,
 * and its model server through struct upstream_class. client_h1.c (the
 * HTTP/1.1 connection) is one client side.
 */

enum req_phase {
    RP_HEAD,                        /* its head is being read (the header deadline runs) */
    RP_QUEUED,                      /* routed, waiting for a concurrency slot; body unread */
    RP_UPSTREAM,                    /* sent (or being sent) to a model server, no answer yet */
    RP_RESPONDING,                  /* the model server's response streams to the client */
    RP_ANSWERED,                    /* its response was handed whole to the client */
};

struct request;
struct client;

/* What a relayed response head is, for the client side to frame it. */
struct resp_info {
    int status;
    const struct head *hd;          /* the model server's head, classified */
    bool has_length;                /* hd gave a Content-Length */
    uint64_t content_length;
    bool no_body;                   /* a response to HEAD, or 204, 304 */
};

/*
 * How a request talks to its client, whatever the protocol. The request
 * calls these; each may be called only while the request is the client's.
 */
struct client_ops {
    /* The response head relayed from the model server (tags added). */
    void (*send_head)(struct client *c, struct request *r, const struct resp_info *ri);
    /* A piece of the response body; true when the client side now holds
     * more than GW_HIGH_WATER unsent (the request pauses its upstream until
     * request_client_drained()). */
    bool (*send_body)(struct client *c, struct request *r, const char *at, size_t len);
    /* The response ended; trailers (classified) or NULL. */
    void (*send_end)(struct client *c, struct request *r, const struct head *trailers);
    /* Sluice's own reply: a JSON error (SPEC §3.6) with the request's tags. */
    void (*send_error)(struct client *c, struct request *r, int status, const char *code,
                       const char *message);
    /* An interim 100 Continue (the client waits for it before its body). */
    void (*send_continue)(struct client *c, struct request *r);
    /* The request's body may be read again (it waited for a slot). */
    void (*resume_reading)(struct client *c, struct request *r);
    /* The exchange cannot go on normally: after what is queued, the client
     * side ends it (HTTP/1.1: the connection closes after this answer);
     * sets c->ending. */
    void (*close_after)(struct client *c, struct request *r);
    /* End it now (the rest of a request never came after its answer). */
    void (*abort)(struct client *c, struct request *r);
    /* Move everything along after an event: parse, flush, decide on reading. */
    void (*run)(struct client *c);
    /* The upstream handed on response bytes: send them. */
    void (*progress)(struct client *c);
    /* The request lets go of its client (first thing in request_end()),
     * and is over (last thing): the client side gets ready for the next
     * request or ends. */
    void (*detach)(struct client *c, struct request *r);
    void (*ended)(struct client *c);
};

/* The credential a connection last authenticated with: the same bytes again
 * (compared in constant time) on the same endpoint and config generation
 * need no new check. */
struct auth_memo {
    char *cred;
    uint32_t len;
    uint64_t gen;                   /* config generation it was checked on */
    int ep;                         /* endpoint index in that generation */
    time_t until;                   /* 0: until the config changes */
};

/* What every client side has, and all a request knows of it. */
struct client {
    const struct client_ops *ops;
    struct worker *w;
    const char *proto;              /* "http" or "https" (X-Forwarded-Proto) */
    const char *protocol;           /* "HTTP/2"; NULL: HTTP/1.x, as the request line says */
    char peer[48];                  /* the address, for X-Forwarded-For and the log */
    bool ending;                    /* ends after the current request */
    struct auth_memo *auth;         /* the connection's (shared by its streams) */
};

struct request {
    struct client *c;
    struct config *cfg;             /* snapshot this request runs on */
    enum req_phase phase;
    enum req_cause cause;
    const struct cfg_endpoint *ep;
    int version;                    /* -1 until one is chosen */
    bool pinned, failover, retried, head_method, expect_continue;
    bool routed;                    /* the head was accepted and routed */
    bool grpc;                      /* content-type application/grpc (SPEC §9) */
    bool await_name;                /* routed once the first message names the model */
    bool keep_path;                 /* forwarded with its path unchanged (gRPC, /v2) */
    int grpc_status;                /* of the answer; -1 none */
    uint64_t grpc_timeout_ms;       /* grpc-timeout, 0 none */
    struct evbuffer *held;          /* body read before the upstream was chosen */
    bool body_done;                 /* read whole */
    bool discard;                   /* answered early: the rest is dropped */
    enum framing up_framing;        /* the body's framing to the upstream */
    struct upool *pool;
    struct route_shared *slot;      /* concurrency slot held, if any */
    struct upconn *up;
    struct event *timer;            /* scoring timeout, or the wait deadline */
    struct event *hdr_timer;        /* header_timeout_ms: head and body read */
    struct shadow *shadows[CFG_MAX_VERSIONS];
    int n_shadows;
    /* The live sides of its copies' comparisons (SPEC §7), taken when the
     * copies are let go: fed the response, ended in request_end(). */
    struct shadow_cmp *cmps[CFG_MAX_VERSIONS];
    int n_cmps;
    struct req_line line;
    struct req_target target;
    int status;                     /* sent to the client */
    uint64_t body_in, bytes_in, bytes_out;
    uint64_t t_start_us;            /* end of the request head */
    char id[64];
    struct req_trace trace;         /* its W3C trace context and spans (trace.c) */
    struct head head;
    char trace_state[TRACING_TRACESTATE_MAX];   /* trace.ctx.state: not reset per request */
    TAILQ_ENTRY(request) wait_link;
    bool waiting;
    struct request *next_free;
};

/* A request for client c on the worker's current snapshot (recycled). */
struct request *request_new(struct client *c);
/* header_timeout_ms (or ms) runs until the request is read whole. */
void request_arm_header_deadline(struct request *r, int ms);
/* Its X-Request-Id, or a fresh one (before validation: replies carry it). */
void request_take_id(struct request *r);
/* The head is in r->head (classified) and r->line, validated by the client
 * side: find the endpoint, authenticate, choose the version, start the
 * shadows and the upstream exchange (or queue it, or answer it). Returns
 * true when the request waits for a slot with its body unread. */
bool request_start(struct request *r);
/* A piece of the body; false when it was refused (over max_body_bytes: the
 * answer is queued and the client side must stop reading). */
bool request_body(struct request *r, const char *at, size_t len);
/* The body was read whole. */
void request_body_end(struct request *r);
/* Answer with Sluice's error for cause (close: end the exchange after it). */
void request_reply(struct request *r, enum req_cause cause, const char *msg, bool close);
/* End it if it was answered and read whole (or its client is ending). */
void request_maybe_end(struct request *r);
/* The one end: log and count once, release everything, tell the client. */
void request_end(struct request *r);
/* A request whose version is chosen: to a healthy upstream, the default
 * version on failover, the wait queue at the concurrency limit, or a 503
 * (exchange.c). */
void request_route(struct request *r);
/* Whether the client side may read more of its body now. */
bool request_wants_body(const struct request *r);
/* The client took its output down to GW_HIGH_WATER: resume the upstream. */
void request_client_drained(struct request *r);
/* Send what is queued for its upstream. */
void request_flush_upstream(struct request *r);
/* Why it ended when its client goes away before its answer. */
void request_client_left(struct request *r, enum req_cause cause);
struct tags request_tags(const struct request *r);
void requests_worker_init(struct worker *w);
void requests_free_all(struct worker *w);

#endif
