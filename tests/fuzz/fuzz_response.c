/*
 * libFuzzer target: parsing a model server's response and composing the
 * client's response head, as upstream.c and session.c do. The input (cut
 * into reads) is parsed with llhttp (strict) as a response to a GET or,
 * when the first byte is odd, to a HEAD; each response head is classified
 * and composed with our tags. Checked: no crash or UB; the composed head is
 * well-formed line by line; it never carries the upstream's X-Sluice-*,
 * Connection or Transfer-Encoding headers; a bodiless response (HEAD, 1xx,
 * 204, 304) is handed no body bytes.
 */
#include "fuzz_common.h"

#include <event2/buffer.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct evbuffer *out;

struct resp {
    struct head hd;
    bool head_method;
    bool no_body;
};

static int
on_begin(llhttp_t *p)
{
    struct resp *r = p->data;
    head_reset(&r->hd);
    r->no_body = false;
    return 0;
}

static int
r_url(llhttp_t *p, const char *at, size_t len)
{
    return head_url(&((struct resp *)p->data)->hd, at, len) < 0 ? HPE_USER : 0;
}

static int
r_field(llhttp_t *p, const char *at, size_t len)
{
    return head_field(&((struct resp *)p->data)->hd, at, len) < 0 ? HPE_USER : 0;
}

static int
r_value(llhttp_t *p, const char *at, size_t len)
{
    return head_value(&((struct resp *)p->data)->hd, at, len) < 0 ? HPE_USER : 0;
}

static int
on_headers(llhttp_t *p)
{
    struct resp *r = p->data;
    int status = p->status_code;
    if (status >= 100 && status < 200)
        return status == 101 ? -1 : 1;
    head_classify(&r->hd);
    struct tags t = {"versiona", "control", "rid", false};
    bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->no_body = r->head_method || status == 204 || status == 304;
    enum framing f = r->no_body ? (has_length && status != 204 ? FRAME_LENGTH : FRAME_NONE) :
        has_length ? FRAME_LENGTH : FRAME_CHUNKED;
    compose_response_head(out, status, &r->hd, &t, f, p->content_length, CONN_NONE);
    size_t n = evbuffer_get_length(out);
    const char *s = (const char *)evbuffer_pullup(out, -1);
    check_head_lines(s, n);
    /* Ours only: one X-Sluice-Version field line (after the status line,
     * whose reason phrase may say anything printable), the one we added. */
    const char *fields = (const char *)memmem(s, n, "\r\n", 2) + 2;
    size_t fn = n - (size_t)(fields - s);
    const char *v = memmem(fields - 2, fn + 2, "\r\nX-Sluice-Version: versiona\r\n", 30);
    if (v == NULL || memmem(v + 2, (size_t)(s + n - (v + 2)), "\nX-Sluice-Version", 17))
        abort();
    for (const char *l = fields; l < s + n; ) {
        const char *e = memmem(l, (size_t)(s + n - l), "\r\n", 2);
        if (e == NULL)
            break;
        if ((size_t)(e - l) >= 11 && strncasecmp(l, "connection:", 11) == 0)
            abort();
        if ((size_t)(e - l) >= 18 && strncasecmp(l, "transfer-encoding:", 18) == 0 &&
            f != FRAME_CHUNKED)
            abort();
        l = e + 2;
    }
    evbuffer_drain(out, n);
    return r->no_body ? 1 : 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    struct resp *r = p->data;
    if (r->no_body)
        abort();                    /* llhttp was told: no body */
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static llhttp_settings_t st;
    if (out == NULL) {
        out = evbuffer_new();
        llhttp_settings_init(&st);
        st.on_message_begin = on_begin;
        st.on_status = r_url;
        st.on_header_field = r_field;
        st.on_header_value = r_value;
        st.on_headers_complete = on_headers;
        st.on_body = on_body;
    }
    struct resp r;
    memset(&r, 0, sizeof(r));
    head_reset(&r.hd);
    r.head_method = size > 0 && (data[0] & 1);
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &st);
    p.data = &r;
    struct reads rd;
    reads_init(&rd, data, size);
    const char *at;
    size_t len;
    while (reads_next(&rd, &at, &len))
        if (llhttp_execute(&p, at, len) != HPE_OK)
            break;
    head_free(&r.hd);
    return 0;
}
