/*
 * libFuzzer target: chunked framing, both ways. The input (cut into reads)
 * is a chunked request body after a fixed head; llhttp (strict) parses it
 * and the body is re-chunked as the gateway forwards it (buf_chunk_size per
 * piece, then "0\r\n\r\n"). When llhttp accepts the whole message, the
 * re-chunked body must parse back, in one go, to exactly the same bytes:
 * what the model server gets is what the client sent. Chunk extensions and
 * trailers are bounded as in the gateway (max_header_bytes).
 */
#include "fuzz_common.h"

#include <event2/buffer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HEAD "POST /api/v1/service/ep1/score HTTP/1.1\r\nHost: a\r\n" \
             "Transfer-Encoding: chunked\r\n\r\n"
#define EXTRA_MAX 16384

struct state {
    struct evbuffer *body;          /* as received */
    struct evbuffer *rechunked;     /* as forwarded */
    size_t extra;
    bool complete;
};

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    struct state *s = p->data;
    evbuffer_add(s->body, at, len);
    if (s->rechunked != NULL) {
        buf_chunk_size(s->rechunked, len);
        evbuffer_add(s->rechunked, at, len);
        evbuffer_add(s->rechunked, "\r\n", 2);
    }
    return 0;
}

static int
on_extra(llhttp_t *p, const char *at, size_t len)
{
    struct state *s = p->data;
    s->extra += len;
    return s->extra > EXTRA_MAX ? HPE_USER : 0;
}

static int
on_complete(llhttp_t *p)
{
    struct state *s = p->data;
    s->complete = true;
    if (s->rechunked != NULL)
        evbuffer_add(s->rechunked, "0\r\n\r\n", 5);
    return HPE_PAUSED;
}

static llhttp_settings_t st;

static bool
parse(struct state *s, const char *text, size_t n, struct reads *rd)
{
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &st);
    p.data = s;
    if (llhttp_execute(&p, HEAD, sizeof(HEAD) - 1) != HPE_OK)
        abort();
    if (rd == NULL)
        return llhttp_execute(&p, text, n) == HPE_PAUSED && s->complete;
    const char *at;
    size_t len;
    while (reads_next(rd, &at, &len)) {
        enum llhttp_errno e = llhttp_execute(&p, at, len);
        if (e == HPE_PAUSED)
            return s->complete;
        if (e != HPE_OK)
            return false;
    }
    return false;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (st.on_body == NULL) {
        llhttp_settings_init(&st);
        st.on_body = on_body;
        st.on_chunk_extension_name = on_extra;
        st.on_chunk_extension_value = on_extra;
        st.on_header_field = on_extra;
        st.on_header_value = on_extra;
        st.on_message_complete = on_complete;
    }
    struct state a = {evbuffer_new(), evbuffer_new(), 0, false};
    struct reads rd;
    reads_init(&rd, data, size);
    if (parse(&a, NULL, 0, &rd)) {
        struct state b = {evbuffer_new(), NULL, 0, false};
        size_t n = evbuffer_get_length(a.rechunked);
        if (!parse(&b, (const char *)evbuffer_pullup(a.rechunked, -1), n, NULL))
            abort();                /* what we forward must parse */
        size_t la = evbuffer_get_length(a.body), lb = evbuffer_get_length(b.body);
        if (la != lb ||
            (la > 0 && memcmp(evbuffer_pullup(a.body, -1), evbuffer_pullup(b.body, -1), la)))
            abort();                /* and carry the same bytes */
        evbuffer_free(b.body);
    }
    evbuffer_free(a.body);
    evbuffer_free(a.rechunked);
    return 0;
}
