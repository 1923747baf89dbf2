/*
 * What an HTTP/2 upstream stream keeps for one retry (upstream_h2.c's
 * take_resend and send_again; the rule is exchange.c's: once, when it is
 * safe). An HTTP/2 exchange is retried when nothing of it was processed:
 *   - its connection never came up (connect failure): on another upstream
 *     of the version, with everything it was given;
 *   - the server refused its stream (RST_STREAM REFUSED_STREAM, or a
 *     stream above a GOAWAY's last-stream-id, which nghttp2 closes with
 *     REFUSED_STREAM; a stream submitted on a connection that got a GOAWAY
 *     is closed the same way);
 *   - it was taken on an idle connection that had carried streams before,
 *     and the server closed that connection under it (EOF or an error on
 *     the socket) with no GOAWAY either way and no answer begun, not even
 *     a 1xx: HTTP/1.1's keep-alive race (a server that closes an idle
 *     connection without a GOAWAY as a stream arrives). A stream on a new
 *     or busy connection that closed meets the server failing, and after a
 *     GOAWAY a stream at or below its last-stream-id may have been
 *     processed: neither goes again.
 * The last two go on a new connection, provided the whole body is still
 * held: a copy kept up to GW_REPLAY_MAX, the bound of HTTP/1.1's resend
 * copy, and dropped once an answer begins.
 *
 * What take_resend hands over is one evbuffer, in the class's own layout
 * (struct upstream_class keeps it opaque):
 *
 *   "H2 <framing> <eof>\r\n"       enum framing, 1 when the body ended
 *   "<name>: <value>\r\n" ...      the header list as submitted, pseudo
 *                                  headers first (values hold no CR LF:
 *                                  RFC 9113 §8.2.1)
 *   "\r\n"
 *   <body bytes>                   what was given so far
 *
 * The same text shape as an HTTP/1.1 head, so trace_retry() finds this
 * hop's traceparent in it and gives the retry its own span id.
 */
#include "gateway/h2.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

void
h2_replay_add(struct evbuffer **replay, bool *lost, const char *at, size_t len)
{
    if (*lost)
        return;
    if (*replay == NULL && (*replay = evbuffer_new()) == NULL) {
        *lost = true;
        return;
    }
    if (evbuffer_get_length(*replay) + len > GW_REPLAY_MAX) {
        evbuffer_free(*replay);     /* too big to send again */
        *replay = NULL;
        *lost = true;
        return;
    }
    evbuffer_add(*replay, at, len);
}

void
h2_replay_drop(struct evbuffer **replay)
{
    if (*replay != NULL)
        evbuffer_free(*replay);
    *replay = NULL;
}

void
h2_retry_forget(struct evbuffer **replay, nghttp2_nv **nva, char **store)
{
    h2_replay_drop(replay);
    gw_free(*nva);
    gw_free(*store);
    *nva = NULL;
    *store = NULL;
}

struct evbuffer *
h2_resend_pack(const nghttp2_nv *nva, size_t n, enum framing framing, bool eof,
               struct evbuffer *body)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL)
        return NULL;
    char first[16] = "H2 0 0\r\n";
    first[3] = (char)('0' + (int)framing);
    first[5] = eof ? '1' : '0';
    evbuffer_add(b, first, 8);
    for (size_t i = 0; i < n; i++) {
        evbuffer_add(b, nva[i].name, nva[i].namelen);
        evbuffer_add(b, ": ", 2);
        evbuffer_add(b, nva[i].value, nva[i].valuelen);
        evbuffer_add(b, "\r\n", 2);
    }
    evbuffer_add(b, "\r\n", 2);
    if (body != NULL)
        evbuffer_add_buffer(b, body);
    return b;
}

int
h2_resend_unpack(struct evbuffer *what, nghttp2_nv **nva, size_t *n, char **store,
                 enum framing *framing, bool *eof)
{
    struct evbuffer_ptr end = evbuffer_search(what, "\r\n\r\n", 4, NULL);
    if (end.pos < 6)
        return -1;
    size_t hlen = (size_t)end.pos + 4;
    char *s = gw_malloc(hlen);      /* both freed with gw_free, as h2_send_head's */
    size_t lines = 0;
    if (s == NULL)
        return -1;
    evbuffer_remove(what, s, hlen);     /* the body stays in what */
    if (memcmp(s, "H2 ", 3) != 0 || s[3] < '0' || s[3] > '3') {
        gw_free(s);
        return -1;
    }
    *framing = (enum framing)(s[3] - '0');
    *eof = s[5] == '1';
    for (size_t i = 0; i + 1 < hlen; i++)
        lines += s[i] == '\r' && s[i + 1] == '\n';
    nghttp2_nv *v = gw_malloc(lines * sizeof(*v));
    if (v == NULL) {
        gw_free(s);
        return -1;
    }
    size_t k = 0;
    char *at = (char *)memchr(s, '\n', hlen) + 1, *stop = s + hlen - 2;    /* the empty line */
    while (at < stop) {
        char *eol = memchr(at, '\r', (size_t)(stop - at));
        /* a pseudo header's name begins with its ':' */
        char *colon = eol != NULL && eol > at + 1 ? memchr(at + 1, ':', (size_t)(eol - at - 1)) :
                      NULL;
        if (colon == NULL || colon + 1 >= eol || colon[1] != ' ' || k == lines) {
            gw_free(v);
            gw_free(s);
            return -1;
        }
        size_t nl = (size_t)(colon - at);
        /* new values every time: never indexed, as h2_fields_request says */
        bool once = (nl == 12 && memcmp(at, "x-request-id", 12) == 0) ||
                    (nl == 11 && memcmp(at, "traceparent", 11) == 0);
        v[k++] = (nghttp2_nv){(uint8_t *)at, (uint8_t *)colon + 2, nl,
                              (size_t)(eol - colon - 2),
                              once ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE};
        at = eol + 2;
    }
    *nva = v;
    *n = k;
    *store = s;
    return 0;
}
