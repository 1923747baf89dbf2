/*
 * gateway/conn.h — a client connection, shared by conn.c (its bytes and its
 * life: buffers, reading with its deadline, writing with send_timeout_ms,
 * the lingering close) and client_h1.c (the HTTP/1.1 protocol on it).
 * Internal to gateway/: nothing else includes it.
 */
#ifndef SLUICE_GATEWAY_CONN_H
#define SLUICE_GATEWAY_CONN_H

#include "gateway/internal.h"

#include <event2/buffer.h>

struct conn_proto;

struct session {
    struct client c;                /* what its requests know of it (first) */
    const struct conn_proto *proto;
    void *proto_state;              /* the protocol's own (HTTP/2: its session) */
    const struct transport *tp;
    struct conn_io io;
    struct auth_memo auth;          /* the credential its requests last passed */
    struct request *req;            /* the request being read or answered;
                                     * NULL while idle */
    /* The current request's parse state (reset at its first byte). */
    llhttp_t parser;
    struct line_scan scan;          /* the head's line ends, until its end */
    const char *chunk, *chunk_end;  /* the input llhttp_execute() runs over */
    uint64_t extra_bytes;           /* chunk extensions */
    uint8_t bad_line;               /* SCAN_BARE_LF or SCAN_FOLD in the head, else 0 */
    bool version_seen : 1;          /* llhttp accepted the version number */
    bool trailers : 1;              /* trailer fields began */
    bool head_too_large : 1;
    enum framing resp_framing;      /* the response's framing to the client */
    uint64_t deadline_us;           /* the first head's (from accept), or the linger's */
    int rev_ms;                     /* the deadline on io.rev, 0 for none */
    int unsent_answers;             /* answers queued since output was empty */
    bool keep_alive : 1;            /* the client wants the connection kept */
    bool closing : 1;               /* flushing its last output, then linger */
    bool lingering : 1;
    bool closed : 1;
    bool reading : 1;               /* io.rev is added */
    bool served : 1;                /* a request was read on it */
    bool h2_allowed : 1;            /* its listener offers HTTP/2 */
    bool sniffing : 1;              /* a prefix of the HTTP/2 preface came: read on */
    char prev_byte;                 /* the last byte of the read before */
    TAILQ_ENTRY(session) link;
    struct session *gc_next;
};


static inline const struct cfg_limits *
limits(const struct session *s)
{
    return &s->c.w->cfg->limits;
}

/* The client's output, there while a request runs. */
static inline struct evbuffer *
client_out(struct session *s)
{
    return s->io.out;
}

static inline size_t
out_len(const struct session *s)
{
    return s->io.out != NULL ? evbuffer_get_length(s->io.out) : 0;
}

/* conn.c */
void client_flush(struct session *s);
void update_reading(struct session *s);
void release_bufs(struct session *s);
void start_closing(struct session *s);
void session_close(struct session *s);

/* The protocol a connection speaks (client_h1.c; client_h2.c), as conn.c
 * calls it. */
struct conn_proto {
    const char *name;                       /* "HTTP/1.1", "HTTP/2" */
    void (*feed)(struct session *s);        /* parse buffered input while it may */
    void (*run)(struct session *s);         /* move everything along after an event */
    bool (*busy)(const struct session *s);  /* a request is open on it */
    /* The connection goes: its open requests end (each once), with cause
     * unless they had one. HTTP/1.1's one request ends through its
     * client side, which comes back to start_closing(). */
    void (*end_all)(struct session *s, enum req_cause cause);
    /* The client took its output down to GW_HIGH_WATER. */
    void (*drained)(struct session *s);
    /* Drain: take no new requests; close once the open ones are answered. */
    void (*drain)(struct session *s);
    void (*free)(struct session *s);        /* the protocol's state, at gc */
};

/* client_h2.c */
bool h2_attach(struct session *s);          /* the connection speaks HTTP/2 from here */
int h2_preface(struct evbuffer *in);  /* 1: the HTTP/2 preface, 0: not, -1: not yet known */

/* A new client connection on fd, speaking what attach() sets up (its
 * protocol table and client ops: client_h1.c passes HTTP/1.1's). */
void conn_accept(struct worker *w, int fd, struct sockaddr *sa, int salen,
                 struct ssl_ctx_st *tls, bool h2, void (*attach)(struct session *s));

/* client_h1.c */
void session_run(struct session *s);        /* s->proto->run(s) */

#endif
