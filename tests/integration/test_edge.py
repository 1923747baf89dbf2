"""Conformance and limits at the edge (SPEC §3.7), on plain and TLS
listeners alike: strict request framing, clean responses, hop-by-hop
headers, bounded memory per connection, bounded shadow traffic, upstream
keep-alive races."""
import json
import os
import re
import resource
import socket
import ssl
import subprocess
import threading
import time

import requests

from harness import (MODEL, Model, Reader, Redis, Sluice, Tap, Upstream, connect, endpoint,
                     exchange, header, parse_responses, read_request, read_response, version)

SCORE = b"/api/v1/service/ep1/score"
KEYS = {"primary": "edge-primary-0123456789", "secondary": "edge-secondary-0123456789"}
FOLLOW = b"GET /api/v1/service/ep1/score?followup=1 HTTP/1.1\r\nHost: x\r\nX-Marker: followup\r\n" \
         b"Connection: close\r\n\r\n"

# Python's own descriptors: the shadow test holds hundreds of connections.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, 65536), _hard))


def edge(limits=None, **kw):
    """ep1 -> a model behind a recording proxy; plain and TLS listeners."""
    m = Model("versiona")
    tap = Tap(m.addr)
    s = Sluice([endpoint("ep1", [version("versiona", [tap.addr], 100)])], tls=True,
               limits=limits, **kw)
    return s, m, tap


def post(extra_headers=b"", body=b"hi", path=SCORE, proto=b"HTTP/1.1"):
    return (b"POST " + path + b" " + proto + b"\r\nHost: x\r\n" + extra_headers +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chunked(chunks, extra_headers=b""):
    return (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + extra_headers +
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks)


def refused(s, tap, cases, status=400, must_close=True, follow=True):
    """Send each case (name, bytes) on a new connection to the plain and the
    TLS listener, followed by a valid pipelined request when follow is set.
    Required: exactly one response, with the status (or one of a tuple of
    statuses); with must_close the connection closes after it (the
    follow-up is never answered); the follow-up and anything marked
    `refused-<name>` never reach the model (each case arrives in one
    segment: sluice has all of it before it could send anything upstream).
    Returns a list of problems, empty when all is well."""
    problems = []
    for tls in (False, True):
        for name, data in cases:
            where = "%s %s" % ("tls" if tls else "plain", name)
            marker = b"refused-" + name.encode()
            data = data.replace(b"@MARK@", marker)
            before = len(tap.sent())
            out, closed = exchange(s.tls_port if tls else s.port,
                                   data + (FOLLOW if follow else b""), tls=tls)
            try:
                rs = parse_responses(out)
            except Exception:
                rs = None
            allowed = status if isinstance(status, tuple) else (status,)
            if rs is None or len(rs) != 1 or rs[0][0] not in allowed:
                problems.append("%s: expected one %s, got %r" % (where, allowed, out[:300]))
            elif must_close and not closed:
                problems.append("%s: connection left open after the %d" % (where, rs[0][0]))
            seen = tap.sent()[before:]
            if b"followup" in seen:
                problems.append("%s: the follow-up request reached the model" % where)
            if marker in seen:
                problems.append("%s: the refused request reached the model" % where)
    return problems


def assert_no_problems(problems, m, before=0):
    reqs = m.stats()["requests"]
    if reqs != before:
        problems.append("the model counted %d requests, expected %d" % (reqs, before))
    assert not problems, "\n".join(problems)


# ---- requests ---------------------------------------------------------------

def test_chunk_extension_bare_lf_is_400_and_close():
    """SPEC §3.7: bare LF anywhere in the framing, chunk extensions
    included, is 400 and close. `5;a=b\\nhello` must not be read as a valid
    chunk (today the bytes after it are answered as another request: a
    desync); the pipelined request after it is never answered or proxied."""
    s, m, tap = edge()
    M = b"X-Marker: @MARK@\r\n"
    cases = [("ext-lf", chunked(b"5;a=b\nhello\r\n0\r\n\r\n", M)),
             # read as extension "a=b\nhello", then 5 bytes XXXXX, then the end:
             # without the fix the follow-up is answered as a second request
             ("ext-lf-smuggle", chunked(b"5;a=b\nhello\r\nXXXXX\r\n0\r\n\r\n", M)),
             ("ext-lf-alone", chunked(b"5;a=b\nhello\r\n", M))]
    problems = refused(s, tap, cases[:2])
    problems += refused(s, tap, cases[2:], follow=False)
    assert_no_problems(problems, m)


def test_invalid_host_is_400():
    """SPEC §3.7: Host must be a valid host[:port] (reg-name, IPv4 or
    [IPv6]); anything else is 400, and the request never reaches a model.
    Valid forms are still served."""
    s, m, tap = edge()
    bad = [b"bad host", b"a/b", b"x@y", b"[::1", b"::1", b"x:abc", b"x:1:2",
           b"\"x\"", b"x\\y", b"x y:80", b"[::1]x"]
    cases = [("host-%d" % i, post(b"X-Marker: @MARK@\r\nConnection: close\r\n").replace(
        b"Host: x", b"Host: " + h))
             for i, h in enumerate(bad)]
    problems = refused(s, tap, cases, must_close=False, follow=False)
    for h in (b"x", b"example.com:8080", b"127.0.0.1", b"[::1]:443", b"a-b.c_d"):
        out, _ = exchange(s.port, post(b"Connection: close\r\n").replace(b"Host: x",
                                                                           b"Host: " + h))
        rs = parse_responses(out)
        if [r[0] for r in rs] != [200]:
            problems.append("valid Host %r: got %r" % (h, out[:200]))
    assert_no_problems(problems, m, before=5)


def test_http_versions_505_and_http09_400():
    """SPEC §3.7: HTTP/1.0 and HTTP/1.1 only: any other version is 505; a
    version-less (HTTP/0.9) request line is 400 and close. Neither reaches
    the model."""
    s, m, tap = edge()
    v505 = [(v.decode(), b"GET " + SCORE + b"?x=@MARK@ " + v + b"\r\nHost: x\r\n"
             b"Connection: close\r\n\r\n") for v in (b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.0")]
    problems = refused(s, tap, v505, status=505, must_close=False, follow=False)
    v09 = [("v0.9", b"GET " + SCORE + b"?x=@MARK@\r\nHost: x\r\n\r\n"),
           ("v0.9-bare", b"GET " + SCORE + b"?x=@MARK@\r\n\r\n")]
    problems += refused(s, tap, v09, status=400)
    assert_no_problems(problems, m)


def test_malformed_framing_is_400_and_close():
    """SPEC §3.7: a field name with whitespace before the colon, a field
    line without a colon, bare CR, NUL, and bare LF anywhere in the framing
    (request line, field lines, chunk sizes, chunk extensions, trailers) are
    400 and the connection is closed; nothing of it reaches the model."""
    s, m, tap = edge()
    M = b"X-Marker: @MARK@\r\n"
    cases = [
        ("ws-before-colon", post(M + b"X-Foo : bar\r\n")),
        ("tab-before-colon", post(M + b"X-Foo\t: bar\r\n")),
        ("no-colon", post(M + b"X-Foo bar\r\n")),
        ("bare-cr-value", post(M + b"X-Foo: a\rb\r\n")),
        ("bare-cr-line", post(M + b"X-Foo: a\r")),
        ("bare-cr-request-line", b"POST " + SCORE + b"?@MARK@ HTTP/1.1\rHost: x\r\n"
         b"Content-Length: 0\r\n\r\n"),
        ("nul-value", post(M + b"X-Foo: a\x00b\r\n")),
        ("nul-name", post(M + b"X-F\x00oo: b\r\n")),
        ("nul-target", b"POST " + SCORE + b"?a\x00@MARK@ HTTP/1.1\r\nHost: x\r\n"
         b"Content-Length: 0\r\n\r\n"),
        ("lf-request-line", b"POST " + SCORE + b"?@MARK@ HTTP/1.1\nHost: x\r\n"
         b"Content-Length: 0\r\n\r\n"),
        ("lf-field-line", post(M + b"X-Foo: a\nX-Bar: b\r\n")),
        ("lf-end-of-head", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                            b"Content-Length: 0\r\n\n")),
        ("lf-chunk-size", chunked(b"5\nhello\r\n0\r\n\r\n", M)),
        ("lf-after-chunk-data", chunked(b"5\r\nhello\n0\r\n\r\n", M)),
        ("lf-last-chunk", chunked(b"5\r\nhello\r\n0\n\r\n", M)),
        ("lf-trailer", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n", M)),
        ("lf-end-of-trailers", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\n", M)),
        ("cr-chunk-ext", chunked(b"5;a=b\rc\r\nhello\r\n0\r\n\r\n", M)),
        ("nul-chunk-ext", chunked(b"5;a=\x00\r\nhello\r\n0\r\n\r\n", M)),
        ("trailer-no-colon", chunked(b"5\r\nhello\r\n0\r\nX-T 1\r\n\r\n", M)),
    ]
    assert_no_problems(refused(s, tap, cases), m)


def test_obs_fold_is_400_and_close():
    """Issue 17 finding 2, SPEC §3.7: a folded field line (obs-fold: a line
    that starts with a space or a tab) is 400 and the connection closes,
    in any header and in the framing headers above all (a proxy in front
    that unfolds differently would see another body length); nothing of it
    reaches the model. Each case also goes in reads cut between the CR LF
    and the space."""
    s, m, tap = edge()
    M = b"X-Marker: @MARK@\r\n"
    cases = [
        ("fold-plain", post(M + b"X-A: b\r\n c\r\n")),
        ("fold-tab", post(M + b"X-A: b\r\n\tc\r\n")),
        ("fold-te", b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
         b"Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("fold-cl", b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
         b"Content-Length:\r\n 3\r\n\r\nabc"),
        ("fold-first", b"POST " + SCORE + b" HTTP/1.1\r\n Host: x\r\n" + M +
         b"Content-Length: 0\r\n\r\n"),
    ]
    assert_no_problems(refused(s, tap, cases), m)
    # The same bytes in two reads cut right after the CR LF of the line
    # before the fold: the check spans reads.
    problems = []
    for name, data in cases:
        data = data.replace(b"@MARK@", b"refused-" + name.encode())
        cut = data.index(b"\r\n ") + 2 if b"\r\n " in data else data.index(b"\r\n\t") + 2
        for tls in (False, True):
            c = connect(s.tls_port if tls else s.port, tls)
            c.sendall(data[:cut])
            time.sleep(0.05)
            c.sendall(data[cut:])
            try:
                st, _, _ = read_response(Reader(c))
            except Exception as e:     # noqa: BLE001
                st = repr(e)
            if st != 400:
                problems.append("%s (%s, two reads): %r" % (name, "tls" if tls else "plain", st))
            c.close()
    assert_no_problems(problems, m)


def test_ambiguous_framing_is_400_and_close():
    """SPEC §3.6/§3.7: ambiguous framing -- both Content-Length and
    Transfer-Encoding, repeated differing Content-Length, bad chunk sizes,
    a Transfer-Encoding that does not end in chunked -- is 400 and close;
    nothing of it reaches the model."""
    s, m, tap = edge()
    M = b"X-Marker: @MARK@\r\n"
    cases = [
        ("cl-and-te", chunked(b"3\r\nabc\r\n0\r\n\r\n", M + b"Content-Length: 3\r\n")),
        ("te-and-cl", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                       b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\n\r\n")),
        ("cl-differ", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                       b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")),
        ("cl-list-differ", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                            b"Content-Length: 3, 4\r\n\r\nabcd")),
        ("cl-sign", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                     b"Content-Length: +3\r\n\r\nabc")),
        ("cl-hex", (b"POST " + SCORE + b" HTTP/1.1\r\nHost: x\r\n" + M +
                    b"Content-Length: 0x3\r\n\r\nabc")),
        ("te-chunked-identity", chunked(b"3\r\nabc\r\n0\r\n\r\n", M).replace(
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, identity")),
        ("te-gzip", chunked(b"abc", M).replace(b"Transfer-Encoding: chunked",
                                               b"Transfer-Encoding: gzip")),
        ("te-chunked-twice", chunked(b"3\r\nabc\r\n0\r\n\r\n", M).replace(
            b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked, chunked")),
        ("chunk-size-zz", chunked(b"zz\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-size-neg", chunked(b"-3\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-size-plus", chunked(b"+3\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-size-0x", chunked(b"0x3\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-size-empty", chunked(b"\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-size-overflow", chunked(b"10000000000000003\r\nabc\r\n0\r\n\r\n", M)),
        ("chunk-data-too-long", chunked(b"3\r\nabcd\r\n0\r\n\r\n", M)),
    ]
    assert_no_problems(refused(s, tap, cases), m)


def test_chunk_extension_and_trailer_size_limited():
    """SPEC §3.7: chunk extensions and trailers have a size limit (part of
    max_header_bytes, 4096 here): a 64 KiB chunk extension or trailer
    section is refused (400 or 431) and the connection closed; nothing of
    it reaches the model. A small extension and trailer are served."""
    s, m, tap = edge(limits={"max_header_bytes": 4096})
    M = b"X-Marker: @MARK@\r\n"
    cases = [("big-ext", chunked(b"5;a=" + b"x" * 65536 + b"\r\nhello\r\n0\r\n\r\n", M)),
             ("big-trailer", chunked(b"5\r\nhello\r\n0\r\n" + b"X-T: 1\r\n" * 8192 +
                                     b"\r\n", M))]
    problems = refused(s, tap, cases, status=(400, 431))
    out, _ = exchange(s.port, chunked(b"5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
                                      b"Connection: close\r\n"))
    if [r[0] for r in parse_responses(out)] != [200]:
        problems.append("a small extension and trailer were not served: %r" % out[:200])
    assert_no_problems(problems, m, before=1)


# ---- responses --------------------------------------------------------------

def scripted(sock, up):
    """Answers by the request's ?case=: misbehaving and edge-case upstream
    responses that no model server of ours would send."""
    r = Reader(sock)
    n = 0
    while True:
        req = read_request(r)
        if req is None:
            return
        line, fields, body = req
        n += 1
        m = re.search(r"[?&]case=([a-z0-9-]+)", line)
        case = m.group(1) if m else "ok"
        if case == "204-body":
            sock.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHELLO")
        elif case == "304-body":
            sock.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"e\"\r\n\r\n"
                         b"HELLO")
        elif case == "304-nobody":
            sock.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"e\"\r\n\r\n")
        elif case == "head":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        elif case == "head-body":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLO")
        elif case == "owned":
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Sluice-Version: forged\r\nX-Sluice-Group: forged"
                         b"\r\nX-Sluice-Failover: true\r\nx-sluice-version: forged2\r\n"
                         b"X-Sluice-Other: forged\r\nX-Request-Id: forged-id\r\n"
                         b"X-Kept: yes\r\nContent-Length: 5\r\n\r\nowned")
        else:
            b = b"OK-" + case.encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(b) + b)


def scripted_sluice():
    up = Upstream(scripted)
    s = Sluice([endpoint("ep1", [version("versiona", [up.addr], 100, type="control")],
                         scoring_timeout_ms=30000)], tls=True)
    return s, up


def req(case, method=b"POST", close=False):
    body = b"" if method in (b"GET", b"HEAD") else b"hi"
    return (method + b" " + SCORE + b"?case=" + case + b" HTTP/1.1\r\nHost: x\r\n" +
            (b"Connection: close\r\n" if close else b"") +
            (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n" + body)


def two_on_one_connection(s, first, head, pipelined, tls):
    """first, then a plain request on the same connection (sequential or
    pipelined): both responses, and the bytes after the second (none)."""
    c = connect(s.tls_port if tls else s.port, tls, timeout=3)
    r = Reader(c)
    second = req(b"after", close=True)
    try:
        if pipelined:
            c.sendall(first + second)
            r1 = read_response(r, head_request=head)
        else:
            c.sendall(first)
            r1 = read_response(r, head_request=head)
            c.sendall(second)
        r2 = read_response(r)
        rest = r.rest()
    finally:
        c.close()
    return r1, r2, rest


def test_bodyless_responses_reach_the_client_without_body():
    """SPEC §3.7: 204, 304 and responses to HEAD reach the client without a
    body; an upstream that sends body bytes with them has them dropped (and
    its connection closed), so the next response on the client connection,
    sequential or pipelined, is intact -- no injected bytes. A 304 with
    Content-Length and no body completes at once: the next request on the
    same connection is answered (scoring_timeout_ms is 30 s, the read
    timeout 3 s)."""
    s, up = scripted_sluice()
    problems = []
    for tls in (False, True):
        for case, method, status in ((b"204-body", b"POST", 204), (b"304-body", b"GET", 304),
                                     (b"304-nobody", b"GET", 304), (b"head", b"HEAD", 200),
                                     (b"head-body", b"HEAD", 200)):
            for pipelined in (False, True):
                where = "%s %s %s" % ("tls" if tls else "plain", case.decode(),
                                      "pipelined" if pipelined else "sequential")
                try:
                    r1, r2, rest = two_on_one_connection(s, req(case, method), method == b"HEAD",
                                                         pipelined, tls)
                except (AssertionError, EOFError, OSError) as e:
                    problems.append("%s: %s" % (where, str(e)[:200]))
                    continue
                if r1[0] != status:
                    problems.append("%s: first status %d" % (where, r1[0]))
                if r2[0] != 200 or r2[2] != b"OK-after" or rest != b"":
                    problems.append("%s: second response %r, then %r" % (where, r2, rest[:100]))
    assert not problems, "\n".join(problems)


def test_upstream_sluice_headers_are_replaced():
    """SPEC §3.7: headers sluice owns (X-Sluice-*) are removed from upstream
    responses before its own are added: exactly one X-Sluice-Version (the
    version), one X-Sluice-Group, no X-Sluice-Failover (no failover
    happened), no other X-Sluice-* header; other headers pass."""
    s, up = scripted_sluice()
    for tls in (False, True):
        c = connect(s.tls_port if tls else s.port, tls)
        c.sendall(req(b"owned", close=True))
        st, fields, body = read_response(Reader(c))
        c.close()
        assert st == 200 and body == b"owned", (st, body)
        assert header(fields, "x-sluice-version") == ["versiona"], fields
        assert header(fields, "x-sluice-group") == ["control"], fields
        assert sorted(k for k, v in fields if k.startswith("x-sluice-")) == \
            ["x-sluice-group", "x-sluice-version"], fields
        assert len(header(fields, "x-request-id")) == 1, fields
        assert header(fields, "x-request-id")[0] not in ("", "forged-id"), fields
        assert header(fields, "x-kept") == ["yes"], fields


# ---- hop-by-hop ---------------------------------------------------------------

def test_hop_by_hop_keep_alive_and_many_connection_headers():
    """SPEC §3.5: hop-by-hop headers are stripped. A Keep-Alive header's
    value is parameters, not header names: with `Keep-Alive: x-foo`, X-Foo
    still reaches the upstream. Every Connection header counts, however many:
    nine of them, the ninth naming X-Secret, and X-Secret does not reach the
    upstream (nor Keep-Alive, nor Connection)."""
    a = Model("versiona")
    s = Sluice([endpoint("ep1", [version("versiona", [a.addr], 100)])], tls=True)
    problems = []
    for tls in (False, True):
        conn = b"".join(b"Connection: keep-alive\r\n" for _ in range(8))
        data = post(b"Keep-Alive: x-foo\r\nX-Foo: bar\r\n" + conn +
                    b"Connection: X-Secret\r\nX-Secret: s3cret\r\nX-Other: kept\r\n")
        c = connect(s.tls_port if tls else s.port, tls)
        c.sendall(data)
        st, fields, body = read_response(Reader(c))
        c.close()
        assert st == 200, body
        h = json.loads(body)["headers"]
        where = "tls" if tls else "plain"
        if h.get("x-foo") != "bar":
            problems.append("%s: X-Foo (named only by Keep-Alive) was dropped" % where)
        if "x-secret" in h:
            problems.append("%s: X-Secret (named by the 9th Connection header) was forwarded"
                            % where)
        if h.get("x-other") != "kept" or "keep-alive" in h or \
                h.get("connection", "keep-alive").lower() != "keep-alive":
            problems.append("%s: headers upstream %r" % (where, h))
    assert not problems, "\n".join(problems)


# ---- memory per connection ------------------------------------------------------

N_HOGS = 32
HOG_BYTES = 8 << 20
RSS_BOUND_KIB = 64 << 10
# AddressSanitizer's quarantine keeps freed memory: RSS is bounded on the
# normal build only (as in test_core); everything else is checked on both.
SANITIZED = os.environ.get("SLUICE_SANITIZED") == "1"


def pipeline_hogs(s, request, rss_bound_kib):
    """N_HOGS connections each pipeline up to HOG_BYTES of `request` and
    never read. Pushes until every connection has sent its share or no
    byte has gone out for 3 s (sluice stopped reading: backpressure), or
    sluice's RSS rose past the bound (stop early: the test has failed);
    then watches RSS until sluice has used no CPU for 1 s.
    Returns (peak RSS rise in KiB, the sockets, still open)."""
    socks = []
    for _ in range(N_HOGS):
        c = socket.create_connection(("127.0.0.1", s.port), 5)
        c.setblocking(False)
        socks.append(c)
    block = request * (65536 // len(request) + 1)
    sent = [0] * N_HOGS
    base = s.rss_kib()
    peak = 0
    last_progress = time.time()
    deadline = time.time() + 25
    while time.time() < deadline:
        progress = False
        for i, c in enumerate(socks):
            if sent[i] >= HOG_BYTES:
                continue
            try:
                n = c.send(block)
                sent[i] += n
                progress = progress or n > 0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                sent[i] = HOG_BYTES         # sluice closed it: fine for memory
        peak = max(peak, s.rss_kib() - base)
        if peak > rss_bound_kib or all(x >= HOG_BYTES for x in sent):
            break
        if progress:
            last_progress = time.time()
        elif time.time() - last_progress > 3:
            break
        else:
            time.sleep(0.01)
    # The kernel's socket buffers hold megabytes per connection: sluice may
    # still be working through them. Watch until it has been idle for 1 s.
    quiet_since, ticks = time.time(), cpu_ticks(s.proc.pid)
    while time.time() < deadline + 10 and peak <= rss_bound_kib:
        time.sleep(0.1)
        peak = max(peak, s.rss_kib() - base)
        now = cpu_ticks(s.proc.pid)
        if now - ticks > 2:
            quiet_since, ticks = time.time(), now
        elif time.time() - quiet_since > 1:
            break
    return peak, socks


def cpu_ticks(pid):
    """The process's user + system CPU time, in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def hog_test(auth_header):
    a = Model("versiona")
    s = Sluice([endpoint("ep1", [version("versiona", [a.addr], 100)], auth={"keys": True},
                         keys=dict(KEYS))])
    good = {"Authorization": "Bearer " + KEYS["primary"]}
    with requests.Session() as c:       # warm up pools and buffers
        for _ in range(20):
            assert c.post(s.url("ep1"), data=b"hi", headers=good, timeout=5).status_code == 200
    request = post(auth_header + b"X-Test-Response-Bytes: 65536\r\n")
    peak, socks = pipeline_hogs(s, request, (1 << 40) if SANITIZED else RSS_BOUND_KIB)
    try:
        r = requests.post(s.url("ep1"), data=b"hi", headers=good, timeout=5)
        served = r.status_code
    except requests.RequestException as e:
        served = str(e)
    for c in socks:
        c.close()
    assert s.proc.poll() is None, s.log()[-1000:]
    assert SANITIZED or peak <= RSS_BOUND_KIB, \
        "RSS rose %d KiB with %d pipelining connections (bound %d)" % (peak, N_HOGS,
                                                                       RSS_BOUND_KIB)
    assert served == 200, served


# Bound: per connection at most max_pipelined (16) small requests read ahead
# and max_client_output_bytes (1 MiB) of unsent output, plus one read buffer
# and one 64 KiB upstream chunk over the mark: about 1.2 MiB, so 32
# connections need about 40 MiB; 64 MiB leaves room for allocator slack.
# Without the limits sluice reads all 32 x 8 MiB (and, unauthenticated,
# queues a 401 for every request), far over the bound.

def test_pipelining_memory_bounded_authenticated():
    """SPEC §3.7 (pipelining and slow readers): 32 connections each pipeline
    8 MiB of small authenticated requests (64 KiB responses) and never
    read; sluice reads at most max_pipelined requests ahead and pauses while
    a connection's unsent output exceeds max_client_output_bytes, so its
    RSS rises by at most 64 MiB in all; a normal client is served (200)."""
    hog_test(b"Authorization: Bearer " + KEYS["primary"].encode() + b"\r\n")


def test_pipelining_memory_bounded_unauthenticated():
    """SPEC §3.7: the same with a wrong key -- sluice's own 401 replies are
    output too: RSS rises by at most 64 MiB; a normal client is served."""
    hog_test(b"Authorization: Bearer wrong-key\r\n")


def test_client_accepting_nothing_is_closed_after_send_timeout():
    """SPEC §3.7: a client that accepts no bytes for limits.send_timeout_ms
    (1000 here) is closed. The client asks for a 64 MiB response and reads
    nothing for 3 s; when it then reads, it gets what the kernel buffered
    and then the end of the connection, well short of 64 MiB. Plain and
    TLS."""
    a = Model("versiona")
    s = Sluice([endpoint("ep1", [version("versiona", [a.addr], 100)])], tls=True,
               limits={"send_timeout_ms": 1000})
    total = 64 << 20
    for tls in (False, True):
        c = connect(s.tls_port if tls else s.port, tls, timeout=5)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.sendall(post(b"X-Test-Response-Bytes: %d\r\n" % total))
        time.sleep(3)
        got, closed = 0, False
        try:
            while got < total + 4096:
                d = c.recv(1 << 20)
                if not d:
                    closed = True
                    break
                got += len(d)
        except (ConnectionResetError, ssl.SSLError):
            closed = True
        except socket.timeout:
            pass
        c.close()
        assert closed and got < total, "%s: %d bytes received, closed %s" % (
            "tls" if tls else "plain", got, closed)
    assert s.proc.poll() is None


# ---- shadow traffic ---------------------------------------------------------------

def never_answers(sock, up):
    """Accept, read, never answer."""
    while sock.recv(65536):
        pass


def test_shadow_copies_bounded_and_never_hurt_live_traffic():
    """SPEC §3.7: shadow copies are bounded (limits.max_shadow_inflight 8,
    limits.shadow_timeout_ms 300 here); a copy over either bound is dropped
    and counted as shadow_dropped on the mirror version (§4), and shadow
    traffic never uses a descriptor or slot a live request needs. The mirror
    accepts connections and never answers; sluice runs with RLIMIT_NOFILE
    256; 528 live requests (half mirrored) all succeed: 400 from 8 clients
    on a new connection each, then 128 over 64 connections opened at once.
    Redis shows shadow_dropped > 0."""
    r = Redis()
    a = Model("versiona")
    sink = Upstream(never_answers)

    def small_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    s = Sluice([endpoint("ep1", [
        version("versiona", [a.addr], 100, is_default=True),
        version("shadowv", [sink.addr], 0, mirror_percentile=50)])],
        limits={"max_shadow_inflight": 8, "shadow_timeout_ms": 300},
        extra={"redis": {"address": "127.0.0.1:%d" % r.port, "flush_interval_ms": 100}},
        preexec_fn=small_nofile)
    errors = []
    ok = [0]
    lock = threading.Lock()

    def count(fn):
        try:
            resp = fn()
            with lock:
                if resp.status_code != 200:
                    errors.append(resp.status_code)
                else:
                    ok[0] += 1
        except requests.RequestException as e:
            with lock:
                errors.append(type(e).__name__)

    def one_by_one():
        # A new connection per request: each needs a descriptor after the
        # copies have piled up.
        for _ in range(50):
            if len(errors) > 20:
                return
            count(lambda: requests.post(s.url("ep1"), data=b"hi", timeout=3,
                                        headers={"Connection": "close"}))
    barrier = threading.Barrier(64)

    def together():
        # 64 connections open at once, 2 requests each.
        with requests.Session() as c:
            try:
                barrier.wait(10)
            except threading.BrokenBarrierError:
                pass
            for _ in range(2):
                count(lambda: c.post(s.url("ep1"), data=b"hi", timeout=3))
    for target, n in ((one_by_one, 8), (together, 64)):
        ts = [threading.Thread(target=target) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == [] and ok[0] == 528, (ok[0], errors[:20], len(errors))
    rc = r.client()
    deadline = time.time() + 5
    dropped = 0
    while time.time() < deadline:
        dropped = int(rc.hget("sluice:{ep1}:total:shadowv", "shadow_dropped") or 0)
        if dropped > 0:
            break
        time.sleep(0.1)
    assert dropped > 0, rc.hgetall("sluice:{ep1}:total:shadowv")
    assert s.proc.poll() is None


# ---- upstream keep-alive --------------------------------------------------------------

def model_supports(flag):
    out = subprocess.run([MODEL, "--no-such-option"], capture_output=True, text=True, timeout=5)
    return flag in out.stderr + out.stdout


def test_slow_body_on_reused_upstream_connection():
    """Issue 17 finding 1, SPEC §3.7: a client that sends its body slowly on
    a reused upstream connection is an ordinary event. A first request
    leaves its upstream connection idle in the pool; the next request, on a
    new client connection, takes it and sends its body one byte every
    60 ms, well past upstream_idle_timeout_ms (150). The pool's idle timer
    must not fire under the request that took the connection (on 60f2a02
    it closed and freed it: a use-after-free, a crash in a release build).
    Every request gets its 200 with the whole body counted by the model;
    plain and TLS; sluice is alive afterwards."""
    m = Model("versiona")
    s = Sluice([endpoint("ep1", [version("versiona", [m.addr], 100)])], tls=True,
               limits={"upstream_idle_timeout_ms": 150, "header_timeout_ms": 10000})
    body = b"0123456789"
    results = []
    for round_ in range(2):
        for tls in (False, True):
            port = s.tls_port if tls else s.port
            st, _, _ = exchange_one(port, post(body=b"warm"), tls)
            results.append(("warm", tls, st))
            c = connect(port, tls, timeout=10)
            head = post(body=body)[:-len(body)]
            c.sendall(head)
            for i in range(len(body)):
                time.sleep(0.06)
                c.sendall(body[i:i + 1])
            st, fields, got = read_response(Reader(c))
            c.close()
            n = json.loads(got)["body_bytes"] if st == 200 else None
            results.append(("slow", tls, st, n))
    assert s.proc.poll() is None, "sluice died: " + s.log()[-3000:]
    bad = [r for r in results if r[2] != 200 or (r[0] == "slow" and r[3] != len(body))]
    assert not bad, (bad, s.log()[-2000:])


def exchange_one(port, data, tls):
    c = connect(port, tls)
    c.sendall(data)
    st, fields, body = read_response(Reader(c))
    c.close()
    return st, fields, body


def test_upstream_keepalive_close_race_is_retried():
    """SPEC §3.7 (upstream keep-alive): a request whose reused upstream
    connection closes before any response byte arrives is retried once on a
    new connection. The model closes idle keep-alive connections at a random
    moment within 2 ms of going idle (sluice-model --idle-close-max-ms 2);
    20,000 requests over 4 keep-alive client connections (2 plain, 2 TLS),
    default upstream_idle_timeout_ms: 0 client errors."""
    if not model_supports("--idle-close-max-ms"):
        raise AssertionError("%s has no --idle-close-max-ms (it comes with the model-server "
                             "change): cannot run this test" % MODEL)
    a = Model("versiona", "--idle-close-max-ms", "2")
    s = Sluice([endpoint("ep1", [version("versiona", [a.addr], 100)])], tls=True)
    errors = []
    done = [0]
    lock = threading.Lock()
    per = 5000

    def client(tls):
        port = s.tls_port if tls else s.port
        c = connect(port, tls)
        r = Reader(c)
        data = post(b"X-Client: %d\r\n" % tls)
        n = 0
        while n < per:
            try:
                c.sendall(data)
                st, fields, body = read_response(r)
                if st != 200:
                    with lock:
                        errors.append(st)
                if header(fields, "connection") == ["close"]:
                    raise EOFError("closed")
            except (OSError, EOFError, AssertionError, ssl.SSLError) as e:
                with lock:
                    errors.append(type(e).__name__)
                c.close()
                c = connect(port, tls)
                r = Reader(c)
            n += 1
            if len(errors) > 200:
                break
        c.close()
        with lock:
            done[0] += n
    ts = [threading.Thread(target=client, args=(tls,)) for tls in (False, False, True, True)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [], "%d errors in %d requests: %s" % (len(errors), done[0], errors[:20])
    assert done[0] == 4 * per


def test_head_error_replies_have_no_body():
    """Sluice's own error answer to HEAD carries the body's length and no
    body (RFC 9110 §9.3.2), so the next response on a keep-alive connection
    is read where it starts (found by the chaos soak's framing check)."""
    s, m, tap = edge()
    import harness
    data = harness.raw(s.port, b"HEAD /api/v1/service/nope/score HTTP/1.1\r\nHost: x\r\n\r\n" +
                       FOLLOW.replace(b"ep1", b"nope"))
    first_end = data.index(b"\r\n\r\n") + 4
    assert data.startswith(b"HTTP/1.1 404 "), data[:60]
    assert b"Content-Length: 85" in data[:first_end], data[:first_end]
    assert data[first_end:].startswith(b"HTTP/1.1 404 "), data[first_end:first_end + 60]
    assert data.count(b'{"error"') == 1, data
