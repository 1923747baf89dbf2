/*
 * libFuzzer target: request parsing and validation as the gateway does it.
 * The input (cut into reads, see fuzz_common.h) is parsed with llhttp in
 * strict mode into a struct head; each complete head is classified,
 * validated (req_validate) and, when valid, turned into the upstream request
 * head (compose_request_head) and an error reply (compose_error). The head
 * line scan runs over the same reads. Checked: no crash or UB; a composed
 * head is well-formed line by line (nothing the client sent can inject a
 * header); a valid target's path and query lie inside the stored URL.
 */
#include "fuzz_common.h"

#include <event2/buffer.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct evbuffer *out, *scratch;

static int
on_begin(llhttp_t *p)
{
    head_reset(p->data);
    return 0;
}

static int
on_headers(llhttp_t *p)
{
    struct head *hd = p->data;
    struct cfg_limits lim = {.max_header_bytes = 16384, .max_body_bytes = 1 << 20};
    struct req_line rl = {
        .method = p->method, .major = p->http_major, .minor = p->http_minor,
        .chunked = (p->flags & F_CHUNKED) != 0,
        .has_length = (p->flags & F_CONTENT_LENGTH) != 0,
        .content_length = (p->flags & F_CONTENT_LENGTH) ? p->content_length : 0,
        .upgrade = p->upgrade != 0,
    };
    struct req_target t;
    head_classify(hd);
    struct req_verdict v = req_validate(hd, &rl, &lim, &t);
    if (v.cause != RC_OK) {
        struct tags none = {NULL, NULL, "fuzz", false};
        compose_error(out, scratch, req_cause_info(v.cause)->status,
                      req_cause_info(v.cause)->code, v.message, &none, CONN_CLOSE, false);
        evbuffer_drain(out, evbuffer_get_length(out));
        return HPE_USER;
    }
    if (t.path_off < hd->url_off || t.path_off + t.path_len > hd->url_off + hd->url_len ||
        (t.has_query && t.query_off + t.query_len > hd->url_off + hd->url_len))
        abort();
    struct cfg_endpoint ep;
    memset(&ep, 0, sizeof(ep));
    ep.sticky = CFG_STICKY_COOKIE;
    ep.sticky_name = "uid";
    const char *key, *name;
    size_t klen, nlen;
    if (req_sticky_key(hd, &ep, &key, &klen) && (key < hd->buf || key + klen > hd->buf + hd->len))
        abort();
    req_score_path(hd->buf + t.path_off, t.path_len, &name, &nlen);
    struct upstream_request ur = {
        .method = llhttp_method_name(p->method),
        .path = hd->buf + t.path_off, .path_len = t.path_len,
        .query = t.has_query ? hd->buf + t.query_off : NULL, .query_len = t.query_len,
        .hd = hd, .peer = "127.0.0.1", .proto = "http", .default_host = "up:1",
        .tags = {"versiona", "control", "rid", false},
        .framing = rl.chunked ? FRAME_CHUNKED : rl.has_length ? FRAME_LENGTH : FRAME_NONE,
        .content_length = rl.content_length,
    };
    compose_request_head(out, &ur);
    size_t n = evbuffer_get_length(out);
    check_head_lines((const char *)evbuffer_pullup(out, -1), n);
    evbuffer_drain(out, n);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static llhttp_settings_t st;
    if (out == NULL) {
        out = evbuffer_new();
        scratch = evbuffer_new();
        llhttp_settings_init(&st);
        st.on_message_begin = on_begin;
        st.on_url = fz_url;
        st.on_header_field = fz_field;
        st.on_header_value = fz_value;
        st.on_headers_complete = on_headers;
    }
    struct head hd;
    memset(&hd, 0, sizeof(hd));
    head_reset(&hd);
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &st);
    p.data = &hd;
    struct line_scan sc = {.active = true};
    struct reads rd;
    reads_init(&rd, data, size);
    const char *at;
    size_t len;
    char prev = 0;
    while (reads_next(&rd, &at, &len)) {
        if (sc.active && req_scan_lines(&sc, at, at, at + len, prev) >= SCAN_BARE_LF)
            break;
        if (llhttp_execute(&p, at, len) != HPE_OK)
            break;
        prev = at[len - 1];
    }
    head_free(&hd);
    return 0;
}
