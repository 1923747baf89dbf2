/*
 * sluice-model's internal interface: the options every protocol obeys, the
 * shared answer pieces (answer.c), and the entry points of the three
 * servers: evhttp with HTTP/2 sniffing (http1.c), the --fast raw responder
 * (fast.c), HTTP/2 over any byte transport (http2.c) and the Open Inference
 * Protocol's gRPC service (grpc.c). main.c parses the options and listens.
 */
#ifndef SLUICE_MODEL_H
#define SLUICE_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

struct evbuffer;
struct evconnlistener;
struct evhttp;
struct event_base;

/* The command line, read by every protocol. */
struct model_opts {
    const char *name;           /* --name: the version name in answers */
    int latency_ms;             /* --latency-ms */
    int jitter_ms;              /* --jitter-ms */
    double error_rate;          /* --error-rate: share answered 500 / INTERNAL */
    double noise_eps;           /* --noise */
    int random_field;           /* --random-field */
    int idle_close_max_ms;      /* --idle-close-max-ms */
    double fault_rate;          /* --fault-rate (--fast) */
    int slow_max_ms;            /* --slow-max-ms (--fast) */
    int grpc_status;            /* --grpc-status: 0, or the code errors answer */
    unsigned h2_max_streams;    /* --h2-max-streams: SETTINGS_MAX_CONCURRENT_STREAMS */
    unsigned h2_goaway_after;   /* --h2-goaway-after: GOAWAY when stream N+1 begins */
    unsigned h2_refuse_every;   /* --h2-refuse-every: RST_STREAM REFUSED_STREAM every Nth */
    int h2_drop_after;          /* --h2-drop-after: close, no GOAWAY, as stream N+1 begins
                                   (-1: never) */
    int fast;                   /* --fast */
};

extern struct model_opts opt;
extern struct event_base *base;
extern unsigned long long n_conns, n_reqs, n_refused;   /* refused: HTTP/2 streams not processed */

/* answer.c: what every protocol answers with. */
struct kv {
    const char *name, *value;
};

uint64_t fnv1a(uint64_t h, const void *data, size_t len);
uint64_t fnv1a_evbuffer(struct evbuffer *b);
#define FNV1A_INIT 1469598103934665603ULL
double score_of(uint64_t h, unsigned i);
void json_str(struct evbuffer *b, const char *s);
/* The JSON answer: {"version", "status", "method", "uri", "body_bytes",
 * "body_fnv1a", "score", "scores", ["nonce",] "headers"} and a newline. */
void answer_json(struct evbuffer *b, int status, const char *method, const char *uri,
                 size_t body_bytes, uint64_t body_hash, const struct kv *hdrs, size_t n_hdrs);
/* GET /__stats: {"version", "connections", "requests", "refused"}. */
void stats_json(struct evbuffer *b);
/* The answer --fast gives to every request. */
int fast_body(char *buf, size_t cap);
/* "POST", "GET", "PUT", "HEAD" or "OTHER", as answers name methods. */
const char *method_label(const char *method);
/* A request's delay (--latency-ms plus up to --jitter-ms) and status (500
 * for the --error-rate share, else 200). */
int pick_delay_ms(void);
int pick_status(void);
/* A uniformly random delay in [0, --idle-close-max-ms] ms. */
struct timeval idle_close_delay(void);

/* http1.c: the evhttp server on a listening socket; connections that
 * open with the HTTP/2 preface are handed to http2.c. */
struct evhttp *http1_new(int fd);

/* fast.c: the --fast responder on a listening socket. */
struct evconnlistener *fast_new(int fd);
void fast_report(void);

/* http2.c: one HTTP/2 server connection over a byte transport. */
struct h2_io {
    /* Queue bytes for the peer; 0, or -1 when the transport is gone. */
    int (*write)(void *arg, const uint8_t *data, size_t len);
    /* End the connection once what is queued went out. Must not free the
     * h2_conn from inside the call; the transport frees it later. */
    void (*close)(void *arg);
};
struct h2_conn;

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24
/* 1: data starts with the whole preface; 0: it is a proper prefix of it
 * (wait for more); -1: it is not HTTP/2. */
int h2_preface_match(const void *data, size_t len);
struct h2_conn *h2_conn_new(const struct h2_io *io, void *arg);
/* Take bytes from the peer; -1 when the connection must end. */
int h2_conn_feed(struct h2_conn *c, const uint8_t *data, size_t len);
void h2_conn_free(struct h2_conn *c);

/* grpc.c: the unary calls of inference.GRPCInferenceService. */
struct grpc_reply {
    int status;                 /* grpc-status: 0 OK */
    char message[160];          /* grpc-message when status != 0 */
    struct evbuffer *msg;       /* the response message (no length prefix) */
};
/* Answer a call to path with the request body (length-prefixed messages,
 * as received) and its metadata (ModelInfer echoes it). r->msg must be an
 * empty buffer. */
void grpc_call(const char *path, const uint8_t *body, size_t len, const struct kv *hdrs,
               size_t n_hdrs, struct grpc_reply *r);
/* The grpc-status for an HTTP status the error controls chose. */
int grpc_status_of_http(int status);
const char *grpc_status_name(int status);

#endif
