/* The gateway's pure parts: header classification and hop-by-hop handling,
 * request validation, head composition, JSON escaping, sticky keys, request
 * ids, and the choice of an upstream within a version. */
#include <event2/buffer.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/h2.h"
#include "check.h"

/* Build a classified head from "Name: value" lines (one per argument). */
static void
make_head(struct head *hd, const char *url, const char *const *lines)
{
    memset(hd, 0, sizeof(*hd));
    head_reset(hd);
    head_url(hd, url, strlen(url));
    for (; *lines; lines++) {
        const char *colon = strchr(*lines, ':');
        head_field(hd, *lines, (size_t)(colon - *lines));
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        head_value(hd, v, strlen(v));
    }
    head_classify(hd);
}

static char *
drain(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    return s;
}

static const struct req_line HTTP11 = {.method = HTTP_POST, .major = 1, .minor = 1};

static struct cfg_limits
lims(void)
{
    struct cfg_limits l = {.max_header_bytes = 16384, .max_body_bytes = 1000};
    return l;
}

static void
test_classify_connection_lists(void)
{
    struct head hd;
    /* Keep-Alive is a header, not a list of header names. */
    make_head(&hd, "/", (const char *const[]){"Host: a", "Keep-Alive: x-foo",
              "X-Foo: bar", NULL});
    CHECK(hd.cls[1] == HC_HOP, "keep-alive is hop-by-hop");
    CHECK(hd.cls[2] == HC_OTHER, "X-Foo stays (got %d)", hd.cls[2]);
    head_free(&hd);

    /* Every Connection header counts, the ninth too. */
    make_head(&hd, "/", (const char *const[]){"Host: a", "Connection: a", "Connection: b",
              "Connection: c", "Connection: d", "Connection: e", "Connection: f",
              "Connection: g", "Connection: h", "Connection: x-secret",
              "X-Secret: 1", "X-Other: 2", NULL});
    CHECK(hd.cls[10] == HC_HOP, "named by the ninth Connection header");
    CHECK(hd.cls[11] == HC_OTHER, "not named");
    CHECK(hd.count[HC_CONNECTION] == 9, "%d", hd.count[HC_CONNECTION]);
    head_free(&hd);

    /* Every X-Sluice-* is ours; the pin is found once. */
    make_head(&hd, "/", (const char *const[]){"X-Sluice-Failover: true",
              "x-sluice-version: v2", "X-Sluice-Anything: 1", NULL});
    CHECK(hd.cls[0] == HC_SLUICE && hd.cls[1] == HC_SLUICE && hd.cls[2] == HC_SLUICE, "ours");
    CHECK(hd.pin == 1, "pin %d", hd.pin);
    head_free(&hd);
}

static void
test_request_head_drops_hop_by_hop(void)
{
    struct head hd;
    make_head(&hd, "/api/v1/service/ep/score?x=1", (const char *const[]){
              "Host: example", "Connection: keep-alive, X-Drop", "X-Drop: 1",
              "Authorization: Bearer k", "X-Forwarded-For: 10.0.0.1",
              "X-Forwarded-Proto: https", "X-Sluice-Group: control", "TE: trailers",
              "Transfer-Encoding: chunked", "Cookie: a=b", "X-Keep: yes", NULL});
    struct evbuffer *b = evbuffer_new();
    struct upstream_request r = {
        .method = "POST", .path = "/score", .path_len = 6, .query = "x=1", .query_len = 3,
        .hd = &hd, .peer = "127.0.0.1", .proto = "http", .default_host = "up:1",
        .tags = {"versionb", "treatment", "abc", false}, .framing = FRAME_CHUNKED,
    };
    compose_request_head(b, &r);
    char *s = drain(b);
    CHECK(strncmp(s, "POST /score?x=1 HTTP/1.1\r\n", 26) == 0, "%s", s);
    CHECK(strstr(s, "Host: example\r\n") != NULL, "host kept");
    CHECK(strstr(s, "X-Keep: yes\r\n") != NULL, "other kept");
    CHECK(strstr(s, "Cookie: a=b\r\n") != NULL, "cookie kept");
    CHECK(strstr(s, "X-Drop") == NULL, "named by Connection: dropped");
    CHECK(strstr(s, "Authorization") == NULL, "credentials dropped");
    CHECK(strstr(s, "TE:") == NULL && strstr(s, "Connection") == NULL, "hop-by-hop dropped");
    CHECK(strstr(s, "X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n") != NULL, "xff appended");
    CHECK(strstr(s, "X-Forwarded-Proto: http\r\n") != NULL &&
          strstr(s, "X-Forwarded-Proto: https") == NULL, "xfp set");
    CHECK(strstr(s, "X-Sluice-Group: treatment\r\n") != NULL &&
          strstr(s, "X-Sluice-Group: control") == NULL, "group ours");
    CHECK(strstr(s, "Transfer-Encoding: chunked\r\n") != NULL, "framing");
    CHECK(strstr(s, "X-Request-Id: abc\r\n") != NULL, "id");
    CHECK(strcmp(s + strlen(s) - 4, "\r\n\r\n") == 0, "ends the head");
    CHECK(strstr(s, "traceparent") == NULL && strstr(s, "tracestate") == NULL,
          "no trace context given: none sent");
    free(s);
    head_free(&hd);

    /* The client's trace context is replaced by this hop's. */
    make_head(&hd, "/", (const char *const[]){"Host: a",
              "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
              "TRACESTATE: congo=t61rcWkgMzE", "tracestate: rojo=00f067aa0ba902b7", NULL});
    CHECK(hd.count[HC_TRACEPARENT] == 1 && hd.count[HC_TRACESTATE] == 2, "classified");
    r.hd = &hd;
    r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    r.tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7xx";
    r.tracestate_len = 39;          /* without the trailing "xx" */
    compose_request_head(b, &r);
    s = drain(b);
    CHECK(strstr(s, "\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
                 "\r\n") != NULL, "ours: %s", s);
    CHECK(strstr(s, "\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n") != NULL,
          "tracestate, combined: %s", s);
    CHECK(strstr(s, "b7ad6b7169203331") == NULL && strstr(s, "Traceparent") == NULL &&
          strstr(s, "TRACESTATE") == NULL, "the client's dropped");
    free(s);
    head_free(&hd);
    r.traceparent = NULL;
    r.tracestate_len = 0;

    /* HTTP/1.0 without Host: the upstream still gets one. */
    make_head(&hd, "/", (const char *const[]){NULL});
    r.hd = &hd;
    r.framing = FRAME_NONE;
    compose_request_head(b, &r);
    s = drain(b);
    CHECK(strstr(s, "Host: up:1\r\n") != NULL, "%s", s);
    free(s);
    head_free(&hd);
    evbuffer_free(b);
}

static void
test_response_head(void)
{
    struct head hd;
    make_head(&hd, "Not Modified", (const char *const[]){"ETag: \"x\"",
              "Content-Length: 12", "X-Sluice-Failover: true", "X-Sluice-Version: evil",
              "Connection: close", "Keep-Alive: timeout=5", "X-Request-Id: theirs", NULL});
    struct evbuffer *b = evbuffer_new();
    struct tags t = {"versiona", "control", "rid", false};
    compose_response_head(b, 304, &hd, &t, FRAME_LENGTH, 12, CONN_NONE);
    char *s = drain(b);
    CHECK(strncmp(s, "HTTP/1.1 304 Not Modified\r\n", 27) == 0, "%s", s);
    CHECK(strstr(s, "ETag: \"x\"\r\n") != NULL, "kept");
    CHECK(strstr(s, "Failover") == NULL, "upstream's X-Sluice-Failover removed");
    CHECK(strstr(s, "evil") == NULL, "upstream's X-Sluice-Version removed");
    CHECK(strstr(s, "X-Sluice-Version: versiona\r\n") != NULL, "ours added");
    CHECK(strstr(s, "theirs") == NULL && strstr(s, "X-Request-Id: rid\r\n") != NULL, "id");
    CHECK(strstr(s, "Keep-Alive") == NULL && strstr(s, "Connection") == NULL, "hop");
    CHECK(strstr(s, "Content-Length: 12\r\n") != NULL, "length");
    free(s);
    head_free(&hd);

    /* An error reply: JSON body, its length, our headers. */
    struct evbuffer *scratch = evbuffer_new();
    struct tags none = {NULL, NULL, "rid2", false};
    compose_error(b, scratch, 401, "unauthorized", "bad \"key\"", &none, CONN_CLOSE, false);
    s = drain(b);
    const char *body = strstr(s, "\r\n\r\n") + 4;
    CHECK(strncmp(s, "HTTP/1.1 401 Unauthorized\r\n", 27) == 0, "%s", s);
    CHECK(strcmp(body, "{\"error\":{\"code\":\"unauthorized\",\"message\":\"bad \\\"key\\\"\"}}\n")
          == 0, "%s", body);
    char cl[64];
    snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(body));
    CHECK(strstr(s, cl) != NULL, "length of the body");
    CHECK(strstr(s, "WWW-Authenticate: Bearer\r\n") != NULL, "challenge");
    CHECK(strstr(s, "X-Sluice-Version") == NULL, "no version on a refusal");
    CHECK(strstr(s, "X-Request-Id: rid2\r\n") != NULL, "id on every reply");
    CHECK(strstr(s, "Connection: close\r\n") != NULL, "close");
    free(s);
    evbuffer_free(scratch);
    evbuffer_free(b);
}

static enum req_cause
verdict(const char *url, const struct req_line *rl, const char *const *lines)
{
    struct head hd;
    struct req_target t;
    struct cfg_limits l = lims();
    make_head(&hd, url, lines);
    struct req_verdict v = req_validate(&hd, rl, &l, &t);
    head_free(&hd);
    return v.cause;
}

static void
test_validation(void)
{
    const char *const host[] = {"Host: example.com:8080", NULL};
    CHECK(verdict("/p?q", &HTTP11, host) == RC_OK, "valid");
    struct req_line v09 = HTTP11, v20 = HTTP11, v10 = HTTP11;
    v09.major = 0; v09.minor = 9;
    v20.major = 2; v20.minor = 0;
    v10.minor = 0;
    CHECK(verdict("/", &v09, host) == RC_BAD_REQUEST, "HTTP/0.9: 400");
    CHECK(verdict("/", &v20, host) == RC_BAD_VERSION, "HTTP/2.0: 505");
    CHECK(verdict("/", &v10, (const char *const[]){NULL}) == RC_OK, "1.0 needs no Host");
    CHECK(verdict("/", &HTTP11, (const char *const[]){NULL}) == RC_BAD_REQUEST, "1.1 needs Host");
    CHECK(verdict("/", &HTTP11, (const char *const[]){"Host: a", "Host: a", NULL})
          == RC_BAD_REQUEST, "two Hosts");
    static const char *const bad_hosts[] = {"bad host", "a/b", "[::1", "a:99999x", "",
                                            "a@b", "[zz]", NULL};
    for (const char *const *h = bad_hosts; *h; h++) {
        char line[64];
        snprintf(line, sizeof(line), "Host: %s", *h);
        CHECK(verdict("/", &HTTP11, (const char *const[]){line, NULL}) == RC_BAD_REQUEST,
              "bad Host %s", *h);
    }
    static const char *const good_hosts[] = {"localhost", "127.0.0.1:80", "[::1]:8443",
                                             "a-b.example", "x:", NULL};
    for (const char *const *h = good_hosts; *h; h++)
        CHECK(req_host_valid(*h, strlen(*h)), "good Host %s", *h);
    CHECK(verdict("/", &HTTP11, (const char *const[]){"Host: a",
          "Transfer-Encoding: chunked, identity", NULL}) == RC_BAD_REQUEST, "TE list");
    CHECK(verdict("/", &HTTP11, (const char *const[]){"Host: a",
          "Transfer-Encoding: gzip", NULL}) == RC_BAD_REQUEST, "TE gzip");
    CHECK(verdict("/", &HTTP11, (const char *const[]){"Host: a", "X: a\r\n b", NULL})
          == RC_BAD_REQUEST, "obs-fold");
    CHECK(verdict("/", &HTTP11, (const char *const[]){"Host: a", "Bad Name: 1", NULL})
          == RC_BAD_REQUEST, "space in a name");
    CHECK(verdict("*", &HTTP11, host) == RC_BAD_REQUEST, "asterisk");
    CHECK(verdict("http://example.com/p", &HTTP11, host) == RC_OK, "absolute form");
    CHECK(verdict("ftp://x/p", &HTTP11, host) == RC_BAD_REQUEST, "other scheme");
    struct req_line big = HTTP11;
    big.has_length = true;
    big.content_length = 1001;
    CHECK(verdict("/", &big, host) == RC_TOO_LARGE, "413 from Content-Length");
    struct req_line conn = HTTP11;
    conn.method = HTTP_CONNECT;
    CHECK(verdict("/", &conn, host) == RC_BAD_REQUEST, "CONNECT");

    struct head hd;
    struct req_target t;
    struct cfg_limits l = lims();
    make_head(&hd, "/a/b?x=1&y", host);
    req_validate(&hd, &HTTP11, &l, &t);
    CHECK(t.path_len == 4 && memcmp(hd.buf + t.path_off, "/a/b", 4) == 0, "path");
    CHECK(t.has_query && t.query_len == 5 && memcmp(hd.buf + t.query_off, "x=1&y", 5) == 0,
          "query");
    head_free(&hd);

    CHECK(req_cause_info(RC_BAD_VERSION)->status == 505, "505");
    CHECK(req_cause_info(RC_UPSTREAM_RESET)->status == 502 &&
          strcmp(req_cause_info(RC_UPSTREAM_RESET)->code, "bad_gateway") == 0, "502 code");
    CHECK(req_cause_info(RC_UNAUTHORIZED)->rejected == REJ_UNAUTHORIZED, "rejected kind");
    CHECK(req_parse_error_cause(HPE_INVALID_VERSION) == RC_BAD_VERSION, "version error");
    CHECK(req_parse_error_cause(HPE_INVALID_CHUNK_SIZE) == RC_BAD_REQUEST, "chunk error");
}

static void
test_score_path_and_sticky(void)
{
    const char *ep;
    size_t n;
    CHECK(req_score_path("/api/v1/service/abc/score", 25, &ep, &n) && n == 3 &&
          memcmp(ep, "abc", 3) == 0, "score path");
    CHECK(!req_score_path("/api/v1/service/a/b/score", 25, &ep, &n), "nested");
    CHECK(!req_score_path("/api/v1/service//score", 22, &ep, &n) || n == 0, "empty");

    struct cfg_endpoint e;
    memset(&e, 0, sizeof(e));
    e.sticky = CFG_STICKY_COOKIE;
    e.sticky_name = "uid";
    struct head hd;
    make_head(&hd, "/", (const char *const[]){"Cookie: a=1; uidx=2; uid=alice; z=3", NULL});
    const char *k;
    size_t kl;
    CHECK(req_sticky_key(&hd, &e, &k, &kl) && kl == 5 && memcmp(k, "alice", 5) == 0,
          "cookie key");
    head_free(&hd);
    e.sticky = CFG_STICKY_HEADER;
    e.sticky_name = "x-user-id";
    make_head(&hd, "/", (const char *const[]){"X-User-Id: bob", NULL});
    CHECK(req_sticky_key(&hd, &e, &k, &kl) && kl == 3, "header key");
    head_free(&hd);
    make_head(&hd, "/", (const char *const[]){"X-User-Id: ", NULL});
    CHECK(!req_sticky_key(&hd, &e, &k, &kl), "empty key: none");
    head_free(&hd);

    char id[33];
    req_id_make(id, 0x0123456789abcdefULL, 1);
    CHECK(strcmp(id, "0123456789abcdef0000000000000001") == 0, "%s", id);
    CHECK(req_id_acceptable("abc-1", 5), "ok id");
    CHECK(!req_id_acceptable("a\"b", 3) && !req_id_acceptable("a b", 3) &&
          !req_id_acceptable("", 0), "bad ids");
}

static void
test_json_escape(void)
{
    struct evbuffer *b = evbuffer_new();
    const char in[] = "a\"\\\n\x01 \xc3\xa9 \xff \xe2\x82";
    json_escape_add(b, in, sizeof(in) - 1);
    char *s = drain(b);
    CHECK(strcmp(s, "a\\\"\\\\\\u000a\\u0001 \xc3\xa9 \\u00ff \\u00e2\\u0082") == 0, "%s", s);
    free(s);
    evbuffer_free(b);
}

/* Scan text split into reads at every position. */
static enum req_scan
scan_split(const char *text, size_t cut)
{
    struct line_scan sc = {.active = true};
    size_t n = strlen(text);
    enum req_scan st = req_scan_lines(&sc, text, text, text + cut, 0);
    if (st != SCAN_MORE || cut == n)
        return st;
    return req_scan_lines(&sc, text + cut, text + cut, text + n, text[cut - 1]);
}

static void
test_scan_lines(void)
{
    static const char good[] = "POST / HTTP/1.1\r\nHost: a\r\n\r\nbody\nwith LF";
    static const char bad_line[] = "POST / HTTP/1.1\nHost: a\r\n\r\n";
    static const char bad_end[] = "POST / HTTP/1.1\r\nHost: a\r\n\n";
    for (size_t cut = 1; cut <= strlen(good); cut++) {
        CHECK(scan_split(good, cut) == SCAN_END || cut < 30, "good at %zu", cut);
        CHECK(scan_split(bad_line, cut > strlen(bad_line) ? strlen(bad_line) : cut) !=
              SCAN_END, "bare LF after the request line at %zu", cut);
    }
    for (size_t cut = 1; cut <= strlen(bad_end); cut++)
        CHECK(scan_split(bad_end, cut) == SCAN_BARE_LF || cut < strlen(bad_end) - 1,
              "bare LF ending the head at %zu", cut);
    CHECK(scan_split(bad_end, strlen(bad_end)) == SCAN_BARE_LF, "whole");
    CHECK(scan_split(good, strlen(good)) == SCAN_END, "the body is not scanned");
    /* obs-fold (issue 17 finding 2): a line that starts with a space or a
     * tab, wherever the read is cut (also between the CR LF and the space). */
    static const char *const folds[] = {
        "POST / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\t3\r\n\r\nabc",
        "POST / HTTP/1.1\r\n Host: a\r\n\r\n",
    };
    for (size_t f = 0; f < sizeof(folds) / sizeof(folds[0]); f++)
        for (size_t cut = 1; cut <= strlen(folds[f]); cut++)
            CHECK(scan_split(folds[f], cut) == SCAN_FOLD, "fold %zu cut at %zu", f, cut);
    /* Spaces inside a value, and a body that starts with one, are fine. */
    static const char spaced[] = "POST / HTTP/1.1\r\nX-A: b c\r\nHost: a\r\n\r\n body";
    for (size_t cut = 1; cut <= strlen(spaced); cut++)
        CHECK(scan_split(spaced, cut) == SCAN_END || cut < strlen(spaced) - 5,
              "spaced at %zu", cut);
}

static void
test_pick(void)
{
    struct route_candidate c[3] = {
        {.active = 2}, {.active = 1}, {.active = 1},
    };
    int i = -1;
    CHECK(route_pick_upstream(c, 3, 0, 0, 0, &i) == ROUTE_PICK_OK && i == 1, "fewest, first");
    CHECK(route_pick_upstream(c, 3, 2, 0, 0, &i) == ROUTE_PICK_OK && i == 2, "rotating start");
    c[1].down = true;
    c[2].ejected_until_ms = 5000;
    CHECK(route_pick_upstream(c, 3, 0, 0, 4000, &i) == ROUTE_PICK_OK && i == 0, "skip down");
    CHECK(route_pick_upstream(c, 3, 0, 0, 5000, &i) == ROUTE_PICK_OK && i == 2,
          "ejection over");
    c[0].inflight = 4;
    c[2].inflight = 4;
    CHECK(route_pick_upstream(c, 3, 0, 4, 6000, &i) == ROUTE_PICK_AT_LIMIT, "at limit");
    c[0].avoid = true;
    c[2].down = true;
    CHECK(route_pick_upstream(c, 3, 0, 4, 6000, &i) == ROUTE_PICK_NO_HEALTHY, "none");
}

/* gRPC's pure part (SPEC §9): the model name in field 1 of the first
 * message, read without decoding the rest, as bytes arrive. */
static void
test_grpc_model_name(void)
{
    /* ModelInferRequest{model_name (1) = "fraud", model_version (2) = "3"} */
    static const char msg[] = {0, 0, 0, 0, 10, 0x0a, 5, 'f', 'r', 'a', 'u', 'd', 0x12, 1, '3'};
    const char *name = NULL;
    size_t n = 0;
    CHECK(grpc_model_name(msg, sizeof(msg), &name, &n) == GRPC_NAME_FOUND && n == 5 &&
          memcmp(name, "fraud", 5) == 0, "found");
    for (size_t cut = 0; cut < 12; cut++)
        CHECK(grpc_model_name(msg, cut, &name, &n) == GRPC_NAME_MORE, "cut at %zu: more", cut);
    /* field 2 first, then field 1 */
    static const char later[] = {0, 0, 0, 0, 10, 0x12, 1, '3', 0x0a, 5, 'f', 'r', 'a', 'u', 'd'};
    CHECK(grpc_model_name(later, sizeof(later), &name, &n) == GRPC_NAME_FOUND && n == 5,
          "after another field");
    /* a varint field (wire type 0) skipped */
    static const char varint[] = {0, 0, 0, 0, 9, 0x18, 0x96, 0x01, 0x0a, 4, 'a', 'b', 'c', 'd'};
    CHECK(grpc_model_name(varint, sizeof(varint), &name, &n) == GRPC_NAME_FOUND && n == 4,
          "after a varint");
    static const char none[] = {0, 0, 0, 0, 3, 0x12, 1, '3'};
    CHECK(grpc_model_name(none, sizeof(none), &name, &n) == GRPC_NAME_NONE, "no field 1");
    static const char compressed[] = {1, 0, 0, 0, 7, 0x0a, 5, 'f', 'r', 'a', 'u', 'd'};
    CHECK(grpc_model_name(compressed, sizeof(compressed), &name, &n) == GRPC_NAME_NONE,
          "compressed: not read");
    static const char overlong[] = {0, 0, 0, 0, 4, 0x0a, 9, 'a', 'b'};
    CHECK(grpc_model_name(overlong, sizeof(overlong), &name, &n) == GRPC_NAME_NONE,
          "a length past its message");
    static const char badwire[] = {0, 0, 0, 0, 2, 0x0f, 0};
    CHECK(grpc_model_name(badwire, sizeof(badwire), &name, &n) == GRPC_NAME_NONE,
          "wire type 7");
}

static void
test_grpc_timeout_and_statuses(void)
{
    uint64_t ms = 0;
    CHECK(grpc_timeout_parse("100m", 4, &ms) && ms == 100, "100m");
    CHECK(grpc_timeout_parse("2S", 2, &ms) && ms == 2000, "2S");
    CHECK(grpc_timeout_parse("1M", 2, &ms) && ms == 60000, "1M");
    CHECK(grpc_timeout_parse("1H", 2, &ms) && ms == 3600000, "1H");
    CHECK(grpc_timeout_parse("1500u", 5, &ms) && ms == 2, "microseconds round up");
    CHECK(grpc_timeout_parse("1n", 2, &ms) && ms == 1, "nanoseconds round up");
    CHECK(!grpc_timeout_parse("m", 1, &ms) && !grpc_timeout_parse("12x", 3, &ms) &&
          !grpc_timeout_parse("123456789m", 10, &ms) && !grpc_timeout_parse("-1m", 3, &ms),
          "malformed or over 8 digits");
    char out[16];
    grpc_timeout_format(out, 250);
    CHECK(strcmp(out, "250m") == 0, "%s", out);
    static const int to_http[][2] = {{0, 200}, {1, 499}, {2, 500}, {3, 400}, {4, 504},
        {5, 404}, {7, 403}, {8, 429}, {12, 501}, {13, 500}, {14, 503}, {15, 500}, {16, 401},
        {17, 500}, {-1, 500}};
    for (size_t i = 0; i < sizeof(to_http) / sizeof(to_http[0]); i++)
        CHECK(grpc_http_status(to_http[i][0]) == to_http[i][1], "grpc %d -> %d", to_http[i][0],
              grpc_http_status(to_http[i][0]));
    static const int to_grpc[][2] = {{401, 16}, {404, 5}, {413, 8}, {502, 14}, {503, 14},
        {504, 4}, {400, 3}, {200, 0}, {500, 2}};
    for (size_t i = 0; i < sizeof(to_grpc) / sizeof(to_grpc[0]); i++)
        CHECK(grpc_status_for_http(to_grpc[i][0]) == to_grpc[i][1], "http %d -> %d",
              to_grpc[i][0], grpc_status_for_http(to_grpc[i][0]));
    char m[64];
    grpc_message_encode(m, sizeof(m), "no 100% café");
    CHECK(strcmp(m, "no 100%25 caf%C3%A9") == 0, "%s", m);
}

static void
test_v2_path(void)
{
    const char *ep, *v;
    size_t el, vl;
    const char *p = "/v2/models/fraud/infer";
    CHECK(req_v2_path(p, strlen(p), &ep, &el, &v, &vl) && el == 5 && v == NULL, "plain");
    p = "/v2/models/fraud/versions/versionb/infer";
    CHECK(req_v2_path(p, strlen(p), &ep, &el, &v, &vl) && el == 5 && vl == 8 &&
          memcmp(v, "versionb", 8) == 0, "versioned");
    static const char *const bad[] = {"/v2/models//infer", "/v2/models/fraud/ready",
        "/v2/models/fraud/x/infer", "/v2/models/fraud/versions//infer",
        "/v2/models/fraud/versions/a/b/infer", "/v1/models/fraud/infer", NULL};
    for (int i = 0; bad[i]; i++)
        CHECK(!req_v2_path(bad[i], strlen(bad[i]), &ep, &el, &v, &vl), "%s", bad[i]);
}

/* gw_malloc's free lists (mem.c): every size keeps its bytes through
 * reallocs up and down (across size classes and to and from blocks too big
 * to keep), a freed block comes back for a size of its class, and a
 * thousand blocks in flight at once are all distinct. */
static void
fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed * 31 + i * 7);
}

static int
same(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31 + i * 7))
            return 0;
    return 1;
}

static void
test_mem_free_lists(void)
{
    static const size_t sizes[] = {0, 1, 63, 64, 65, 1000, 1024, 1025, 4096, 16383, 16384,
                                   16385, 70000};
    size_t ns = sizeof(sizes) / sizeof(sizes[0]);
    for (size_t a = 0; a < ns; a++)
        for (size_t b = 0; b < ns; b++) {
            unsigned char *p = gw_malloc(sizes[a]);
            CHECK(p != NULL, "malloc %zu", sizes[a]);
            fill(p, sizes[a], (unsigned)(a * 13 + b));
            unsigned char *q = gw_realloc(p, sizes[b]);
            CHECK(q != NULL, "realloc %zu -> %zu", sizes[a], sizes[b]);
            size_t keep = sizes[a] < sizes[b] ? sizes[a] : sizes[b];
            CHECK(same(q, keep, (unsigned)(a * 13 + b)), "kept %zu -> %zu", sizes[a], sizes[b]);
            fill(q, sizes[b], 5);           /* all of it is writable */
            gw_free(q);
        }
    unsigned char *x = gw_malloc(200);
    gw_free(x);
    if (gw_mem_pooled()) {
        CHECK(gw_malloc(195) == x, "a freed block of the class is reused");
        gw_free(x);
    }
    enum { N = 1000 };
    static unsigned char *many[N];
    for (int i = 0; i < N; i++) {
        many[i] = gw_malloc((size_t)(i % 300) + 1);
        fill(many[i], (size_t)(i % 300) + 1, (unsigned)i);
    }
    int intact = 0;
    for (int i = 0; i < N; i++)
        intact += same(many[i], (size_t)(i % 300) + 1, (unsigned)i);
    CHECK(intact == N, "%d of %d blocks intact", intact, N);
    for (int i = 0; i < N; i++)
        gw_free(many[i]);
    gw_free(NULL);
    /* No rounding up to 1 KiB: a block costs what malloc's own would (an
     * idle connection's event, say), however many times it was reused. */
    int same_room = 0;
    for (size_t n = 1; n <= 1032; n++) {
        void *p = gw_malloc(n), *q = malloc(n);
        same_room += malloc_usable_size(p) == malloc_usable_size(q);
        free(q);
        gw_free(p);
        p = gw_malloc(n);
        same_room += malloc_usable_size(p) == malloc_usable_size(q = malloc(n));
        free(q);
        gw_free(p);
    }
    CHECK(same_room == 2 * 1032, "%d of %d sizes as malloc's", same_room, 2 * 1032);
    gw_mem_thread_end();
}

/* An HTTP/2 stream's request as take_resend hands it over and send_again
 * takes it back (upstream_h2_retry.c): the same fields, framing, eof and
 * body; the replay copy stops at GW_REPLAY_MAX. */
static void
test_h2_resend_round_trip(void)
{
#define NVS(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0}
    nghttp2_nv nva[] = {NVS(":method", "POST"), NVS(":path", "/a?b=c:d"),
                        NVS("x-empty", ""), NVS("traceparent", "00-ab-cd-01")};
#undef NVS
    struct evbuffer *body = evbuffer_new();
    static const char json[] = "{\"x\":\"\r\n\r\n\"}";     /* an empty line in the body */
    evbuffer_add(body, json, sizeof(json) - 1);
    struct evbuffer *b = h2_resend_pack(nva, 4, FRAME_LENGTH, true, body);
    CHECK(b != NULL && evbuffer_get_length(body) == 0, "packed, body moved");
    nghttp2_nv *got = NULL;
    size_t n = 0;
    char *store = NULL;
    enum framing fr = FRAME_NONE;
    bool eof = false;
    CHECK(h2_resend_unpack(b, &got, &n, &store, &fr, &eof) == 0, "unpacked");
    CHECK(n == 4 && fr == FRAME_LENGTH && eof, "n %zu framing %d eof %d", n, fr, eof);
    for (size_t i = 0; i < n && i < 4; i++)
        CHECK(got[i].namelen == nva[i].namelen && got[i].valuelen == nva[i].valuelen &&
              memcmp(got[i].name, nva[i].name, nva[i].namelen) == 0 &&
              memcmp(got[i].value, nva[i].value, nva[i].valuelen) == 0, "field %zu", i);
    CHECK(evbuffer_get_length(b) == sizeof(json) - 1 &&
          memcmp(evbuffer_pullup(b, -1), json, sizeof(json) - 1) == 0, "the body stays");
    gw_free(got);
    gw_free(store);
    evbuffer_drain(b, evbuffer_get_length(b));
    static const char h1[] = "GET / HTTP/1.1\r\n\r\n";
    evbuffer_add(b, h1, sizeof(h1) - 1);
    CHECK(h2_resend_unpack(b, &got, &n, &store, &fr, &eof) < 0, "not ours");
    evbuffer_free(b);
    evbuffer_free(body);
    struct evbuffer *replay = NULL;
    bool lost = false;
    static char chunk[16384];
    for (int i = 0; i < 4; i++)
        h2_replay_add(&replay, &lost, chunk, sizeof(chunk));
    CHECK(!lost && evbuffer_get_length(replay) == GW_REPLAY_MAX, "64 KiB kept");
    h2_replay_add(&replay, &lost, "x", 1);
    CHECK(lost && replay == NULL, "one byte more: not retried");
    h2_replay_add(&replay, &lost, "x", 1);
    CHECK(lost && replay == NULL, "and stays so");
}

int
main(void)
{
    static const struct testcase tests[] = {
        {"classify_connection_lists", test_classify_connection_lists},
        {"request_head_drops_hop_by_hop", test_request_head_drops_hop_by_hop},
        {"response_head", test_response_head},
        {"validation", test_validation},
        {"score_path_and_sticky", test_score_path_and_sticky},
        {"json_escape", test_json_escape},
        {"scan_lines", test_scan_lines},
        {"pick", test_pick},
        {"grpc_model_name", test_grpc_model_name},
        {"grpc_timeout_and_statuses", test_grpc_timeout_and_statuses},
        {"v2_path", test_v2_path},
        {"mem_free_lists", test_mem_free_lists},
        {"h2_resend_round_trip", test_h2_resend_round_trip},
        {NULL, NULL},
    };
    return run_tests(tests);
}
