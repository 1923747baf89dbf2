/*
 * gateway/h2.h — HTTP/2 header lists (h2_fields.c), shared by the HTTP/2
 * client side (client_h2.c). Internal to gateway/.
 */
#ifndef SLUICE_GATEWAY_H2_H
#define SLUICE_GATEWAY_H2_H

#include <nghttp2/nghttp2.h>

#include "gateway/internal.h"

#define H2_MAX_FIELDS (GW_MAX_HEADERS + 8)

/* A header list being composed; the values it points to must live until
 * nghttp2 has copied them (nghttp2_submit_*). */
struct h2_fields {
    nghttp2_nv nv[H2_MAX_FIELDS];
    int n;
    char lower[GW_MAX_HEADERS][64]; /* lowercased names (RFC 9113 §8.2.1) */
    char status[24], length[24], grpc_status[8], grpc_message[600];
};

/* Once on each session (*primed false): the fields of its first header
 * list that are never indexed (x-request-id, traceparent: new values each
 * time) go in the HPACK table after all, so that every later one names
 * them by index and only their values are literal. */
void h2_fields_prime(nghttp2_nv *nv, size_t n, bool *primed);
/* A relayed response: :status, the model server's headers without the
 * hop-by-hop, framing and X-Sluice-* ones (names lowercase), its length,
 * our tags. */
void h2_fields_response(struct h2_fields *f, const struct resp_info *ri, const struct tags *t);
/* Sluice's JSON error reply of body_len bytes. */
void h2_fields_error(struct h2_fields *f, int status, size_t body_len, const struct tags *t);
/* Sluice's error to a gRPC client: Trailers-Only (:status 200,
 * grpc-status and grpc-message in the one HEADERS). */
void h2_fields_grpc_error(struct h2_fields *f, int status, const char *message,
                          const struct tags *t);
/* A copy of hd as fields (names lowercase), for trailers sent later:
 * *nva and *store malloc'ed (both NULL when hd is empty or out of memory). */
size_t h2_fields_copy(const struct head *hd, nghttp2_nv **nva, char **store);

/* A request to an HTTP/2 upstream as fields: pseudo headers, then the
 * headers compose_request_head() would send (names lowercase), without
 * framing. Every name and value is a literal or in store
 * (h2_fields_request_room(r) bytes), and flagged NO_COPY: store must live
 * until the HEADERS frame is sent or cancelled. nva has room for
 * H2_REQUEST_FIELDS(r). Returns the count. */
#define H2_REQUEST_FIELDS(r) ((size_t)(r)->hd->n + 18)
size_t h2_fields_request_room(const struct upstream_request *r);
size_t h2_fields_request(const struct upstream_request *r, nghttp2_nv *nva, char *store);

/* A request's header field into its head: pseudo headers (:path the
 * target, :authority the Host, :method into *method: an llhttp method,
 * -1 for one Sluice does not take), the rest as they are. 0, or -1 when
 * the head is full. */
int h2_request_field(struct head *hd, const char *name, size_t nlen, const char *value,
                     size_t vlen, int *method);
/* The request line HTTP/1.1 would have given (classified head): its
 * length from content-length, a body of unknown length chunked to an
 * HTTP/1.1 upstream. */
void h2_request_line(struct request *r, int method, bool end_stream);

/* An nghttp2 data source over a stream's buffer (out may be NULL: nothing
 * yet): up to len bytes into buf; NGHTTP2_ERR_DEFERRED (and *deferred set)
 * while empty and not at eof; the EOF flag once eof and empty. Both sides'
 * streams (client_h2.c's responses, upstream_h2.c's requests) use it. */
ssize_t h2_source_read(struct evbuffer *out, bool eof, bool *deferred, uint8_t *buf,
                       size_t len, uint32_t *flags);

/* One retry of an HTTP/2 upstream exchange (upstream_h2_retry.c). The
 * body a stream was given, copied into *replay up to GW_REPLAY_MAX (past
 * it: freed, *lost set). */
void h2_replay_add(struct evbuffer **replay, bool *lost, const char *at, size_t len);
void h2_replay_drop(struct evbuffer **replay);
/* An answer began: the body copy and the kept header list (submitted
 * already) go. */
void h2_retry_forget(struct evbuffer **replay, nghttp2_nv **nva, char **store);
/* The request as take_resend hands it over: the header list, framing, eof
 * and the body (moved out of body; NULL: none). NULL when out of memory. */
struct evbuffer *h2_resend_pack(const nghttp2_nv *nva, size_t n, enum framing framing,
                                bool eof, struct evbuffer *body);
/* Its head taken off what (the body stays): *nva (malloc'ed) points into
 * *store (malloc'ed). 0, or -1 when it is not such a request. */
int h2_resend_unpack(struct evbuffer *what, nghttp2_nv **nva, size_t *n, char **store,
                     enum framing *framing, bool *eof);

/* Flood accounting per connection (SPEC §9): within each second, more
 * stream resets than max_streams, or more than H2_FLOOD_FRAMES PING,
 * SETTINGS or empty DATA frames; or more than H2_MAX_CONTINUATIONS
 * CONTINUATION frames after one HEADERS. */
#define H2_FLOOD_FRAMES 100
#define H2_MAX_CONTINUATIONS 8
struct h2_flood {
    uint64_t second_start_us;
    int resets, pings, settings, empty_data, continuations;
};
/* A client connection's session, its SETTINGS (streams, window, header
 * list size) queued: window updates by hand (the stream's window opens as
 * its bytes are taken), nghttp2's own CONTINUATION and reset limits, no
 * closed streams kept (no RFC 7540 priority tree). 0, or nghttp2's error. */
int h2_server_new(nghttp2_session **ng, const nghttp2_session_callbacks *cb, void *user,
                  const struct cfg_limits *lim);
/* A frame header received: true when the connection must end. */
bool h2_flood_frame(struct h2_flood *f, uint8_t type, uint8_t flags, size_t length,
                    int max_streams, uint64_t now_us);
/* The kind of flood a frame of this type ended a connection for. */
static inline enum h2_flood_kind
h2_flood_kind(uint8_t type)
{
    switch (type) {
    case NGHTTP2_RST_STREAM: return H2F_RAPID_RESET;
    case NGHTTP2_CONTINUATION: return H2F_CONTINUATION;
    case NGHTTP2_PING: return H2F_PING;
    case NGHTTP2_SETTINGS: return H2F_SETTINGS;
    default: return H2F_EMPTY;
    }
}

/* The allocator for nghttp2 sessions (mem.c: gw_malloc's free lists):
 * pass it to nghttp2_session_*_new3. */
nghttp2_mem *h2_mem(void);

#endif
