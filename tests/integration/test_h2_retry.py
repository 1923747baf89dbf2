"""Retries to HTTP/2 upstreams (h2fn item 2), as HTTP/1.1's: once, when
nothing was processed. A connect failure goes to another upstream of the
version; a stream the server refused (above a GOAWAY's last-stream-id),
or whose reused connection closed under it without a GOAWAY (the
keep-alive race), goes again on a new connection. Asserts on what clients see (every
request a 200), the access log, and the live model server's counts."""
import json
import os
import re
import subprocess
import threading

import requests

from h2client import H2Client
from harness import Model, Sluice, _closers, endpoint, free_port, until, version
from otlp_receiver import OtlpReceiver

EP = "ep1"


def fnv1a(data):
    """The body hash sluice-model answers with (64-bit FNV-1a, hex)."""
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h



def post_both_ways(s, n_http1, n_http2, early=False):
    """n_http1 POSTs from an HTTP/1.1 client, then n_http2 from curl
    --http2-prior-knowledge, to EP; their status codes in order.

    early: the answers may come before the request's body was sent (an
    upstream that fails at once), so the HTTP/2 ones come from nghttp.
    Sluice then ends the stream with RST_STREAM NO_ERROR after the whole
    answer (RFC 9113 §8.1), which Debian 12's curl 7.88 reports as error
    92 with no status (curl issue 22984)."""
    codes = []
    with requests.Session() as c:
        for i in range(n_http1):
            codes.append(c.post(s.url(EP), data=b'{"x":%d}' % i).status_code)
    body = os.path.join(s.dir, "h2-body.json")
    for i in range(n_http2):
        if early:
            with open(body, "w") as f:
                f.write('{"y":%d}' % i)
            r = subprocess.run(["nghttp", "-v", "-d", body, s.url(EP)], capture_output=True,
                               text=True, timeout=25)
            m = re.search(r":status: (\d+)", r.stdout)
            codes.append(int(m.group(1)) if m else 0)
            continue
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--http2-prior-knowledge", "--max-time", "20", "-d",
                            '{"y":%d}' % i, s.url(EP)], capture_output=True, text=True,
                           timeout=25)
        codes.append(int(r.stdout or 0))
    return codes

def live_http2(*model_args, **sluice_kw):
    """A model server "live" (with model_args) as the one http2 version of
    EP: (model, sluice)."""
    live = Model("live", *model_args)
    return live, Sluice([endpoint(EP, [
        version("live", [live.addr], 100, is_default=True, upstream_protocol="http2")])],
        **sluice_kw)


def post_together(port, bodies):
    """One POST of each body to EP, as streams of a single write of one
    HTTP/2 client connection: they reach sluice together, so they share its
    connection to the model server. Their responses, in order."""
    c = H2Client(port)
    try:
        sids = []
        for b in bodies:
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"),
                                      (":authority", c.authority),
                                      (":path", "/api/v1/service/%s/score" % EP)])
            c.conn.send_data(sid, b, end_stream=True)
            c.streams[sid] = {"headers": None, "data": b"", "trailers": None, "ended": False,
                              "reset": None, "frames": []}
            sids.append(sid)
        c._flush()
        return [c.response(sid) for sid in sids]
    finally:
        c.close()


def test_connect_failure_retried_on_the_other_upstream():
    """h2fn item 2: an http2 version with two upstreams, one a port nobody
    listens on: 30 requests from an HTTP/1.1 client and 10 from curl
    --http2-prior-knowledge all succeed; the live model server answers all
    40, each counted once (40 access-log lines, all 200)."""
    live = Model("live")
    dead = "127.0.0.1:%d" % free_port()
    s = Sluice([endpoint(EP, [
        version("live", [dead, live.addr], 100, is_default=True, upstream_protocol="http2")])])
    codes = post_both_ways(s, 30, 10)
    assert codes == [200] * 40, codes
    assert live.stats()["requests"] == 40
    lines = s.access_lines()
    assert len(lines) == 40 and all(l["status"] == 200 and l["upstream"] == live.addr
                                    for l in lines), [l for l in lines if l["status"] != 200]


def test_streams_above_a_goaway_are_retried():
    """h2fn item 2: the model server shuts each HTTP/2 connection down after
    3 streams (sluice-model --h2-goaway-after 3: GOAWAY naming stream 3,
    the streams above refused unprocessed) while 8 requests are in flight
    on it: no client sees an error; the refused streams go again on new
    connections, so the model server answers each of the 8 requests once
    (refused streams are not counted by it), over more than one
    connection, each with its whole body (length and hash echoed) and head
    (its X-Request-Id, tags, a traceparent), and the access log has 8
    lines, all 200."""
    live, s = live_http2("--h2-goaway-after", "3", "--latency-ms", "200")

    def body(i):
        return b'{"x":"' + b"y" * (800 * i) + b'"}'
    got = post_together(s.port, [body(i) for i in range(8)])
    assert [dict(r["headers"])[":status"] for r in got] == ["200"] * 8, got
    # each answer echoes what the model server got: the retried requests
    # with their whole head and body, as the others
    for i, r in enumerate(got):
        e = json.loads(r["data"])
        assert e["body_bytes"] == len(body(i)) and e["body_fnv1a"] == fnv1a(body(i)), (i, e)
        h = e["headers"]
        assert h["x-request-id"] == dict(r["headers"])["x-request-id"], (i, h)
        assert h["x-sluice-version"] == "live" and h["x-forwarded-proto"] == "http", (i, h)
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", h["traceparent"]), (i, h)
    stats = live.stats()
    assert stats["requests"] == 8 and stats["refused"] >= 1 and stats["connections"] >= 2, stats
    lines = s.access_lines()
    assert len(lines) == 8 and all(l["status"] == 200 for l in lines), lines


def drop_run(after, n_http1, n_http2, early=False):
    """post_both_ways through a model server that closes each HTTP/2
    connection without a GOAWAY as stream after+1 begins
    (--h2-drop-after): the status codes, (requests processed, streams
    dropped) as the model server counts them, the access log's statuses."""
    live, s = live_http2("--h2-drop-after", str(after))
    codes = post_both_ways(s, n_http1, n_http2, early)
    st = live.stats()
    return codes, (st["requests"], st["refused"]), [l["status"] for l in s.access_lines()]


def test_reused_connection_closed_without_goaway_is_retried():
    """The HTTP/2 twin of the keep-alive race: the model server closes each
    HTTP/2 connection, with no GOAWAY, as its third stream begins
    (sluice-model --h2-drop-after 2: that stream is not processed). 12
    requests one after another (8 from an HTTP/1.1 client, 4 from curl
    over HTTP/2): every one a 200. Requests 3, 5, 7, 9 and 11 each meet a
    closing connection they reused and go again on a new one, so the model
    server answers each request once (12) and dropped exactly 5 streams;
    12 access-log lines, all 200."""
    got = drop_run(2, 8, 4)
    assert got == ([200] * 12, (12, 5), [200] * 12), got


def test_fresh_connection_closed_is_not_retried():
    """...but a stream whose connection was new (its first) and closed under
    it is the server's own failure, not a race: not sent again. The model
    server drops every connection's first stream (--h2-drop-after 0): each
    of 3 requests is a 502 after one attempt (3 streams dropped, none
    processed), the access log says 502 three times."""
    got = drop_run(0, 2, 1, early=True)
    assert got == ([502] * 3, (0, 3), [502] * 3), got


def test_closed_under_a_begun_answer_is_not_retried():
    """Once an answer began, even a 1xx, the server may be working on the
    request: a close without GOAWAY then is not the keep-alive race. The
    first request goes normally; the second, on that idle connection, asks
    the model server for a 103 and then a close (x-test-interim,
    x-test-close): a 502, and the model server processed 2 requests, not 3
    (it was not sent again)."""
    live, s = live_http2()
    with requests.Session() as c:
        r1 = c.post(s.url(EP), data=b'{"x":1}')
        r2 = c.post(s.url(EP), data=b'{"x":2}',
                    headers={"X-Test-Interim": "103", "X-Test-Close": "1"})
    assert (r1.status_code, r2.status_code) == (200, 502), (r1.text, r2.text)
    assert live.stats()["requests"] == 2
    assert [l["status"] for l in s.access_lines()] == [200, 502]


def test_busy_new_connection_closed_is_not_retried():
    """Streams that share a new connection the server then closes without
    a GOAWAY met a failing server, not the keep-alive race: it may have
    processed them. Three streams from one client write share Sluice's
    first connection; the model server (--h2-drop-after 2, answers after
    300 ms) takes the first two and closes as the third begins: three
    502s, and the model server processed exactly 2 requests and dropped 1
    (none was sent again)."""
    live, s = live_http2("--h2-drop-after", "2", "--latency-ms", "300")
    got = post_together(s.port, [b'{"x":%d}' % i for i in range(3)])
    assert [dict(r["headers"])[":status"] for r in got] == ["502"] * 3, got
    st = live.stats()
    assert (st["requests"], st["refused"]) == (2, 1), st


def test_refused_stream_of_an_http1_client_and_concurrent_clients():
    """h2fn item 2: the same graceful shutdowns under 4 concurrent HTTP/1.1
    clients, 40 requests: every one a 200, each answered once."""
    live, s = live_http2("--h2-goaway-after", "3", "--latency-ms", "20")
    codes = []
    lock = threading.Lock()

    def run(k):
        with requests.Session() as c:
            for i in range(10):
                r = c.post(s.url(EP), data=b'{"x":%d}' % (k * 10 + i))
                with lock:
                    codes.append(r.status_code)
    ts = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert codes == [200] * 40, codes
    stats = live.stats()
    assert stats["requests"] == 40 and stats["refused"] >= 1, stats
    assert len(s.access_lines()) == 40


def test_refused_stream_retried_on_a_new_connection():
    """h2fn item 2: an overloaded model server refuses every third stream
    with RST_STREAM REFUSED_STREAM, unprocessed (sluice-model
    --h2-refuse-every 3): 12 requests one after the other from an HTTP/1.1
    client and 6 from curl --http2-prior-knowledge all succeed, each
    answered once (18 counted by the model server, 8 streams refused:
    every refused one was sent again), 18 access-log lines, all 200."""
    live, s = live_http2("--h2-refuse-every", "3")
    codes = post_both_ways(s, 12, 6)
    assert codes == [200] * 18, codes
    stats = live.stats()
    assert stats["requests"] == 18 and stats["refused"] == 8, stats
    lines = s.access_lines()
    assert len(lines) == 18 and all(l["status"] == 200 for l in lines), lines


def test_retried_stream_gets_its_own_span():
    """h2fn item 2 with tracing (SPEC §10): the second request's first
    stream is refused (sluice-model --h2-refuse-every 2) and sent again;
    the request has two CLIENT spans under its SERVER span, the first an
    error, the second the one whose id the model server received as the
    parent id (the retry's traceparent is its own, as for HTTP/1.1)."""
    rcv = OtlpReceiver(port=free_port())
    _closers.append(rcv.close)
    live, s = live_http2("--h2-refuse-every", "2",
                         extra={"tracing": {"otlp_endpoint": rcv.url, "export_interval_ms": 50,
                                            "export_timeout_ms": 10000}})
    seen = {}
    for rid in ("first", "second"):
        r = requests.post(s.url(EP), data=b"{}", headers={"X-Request-Id": rid}, timeout=10)
        assert r.status_code == 200, r.text
        seen[rid] = r.json()["headers"]["traceparent"].split("-")[2]
    assert live.stats()["refused"] == 1
    # 2 SERVER spans, 1 CLIENT span for the first, 2 for the second
    until(lambda: len(rcv.spans) >= 5, 20, "5 spans", show=lambda: len(rcv.spans))
    lines = {l["request_id"]: l for l in s.access_lines()}
    kids = sorted((sp for sp in rcv.spans if sp["kind"] == 3 and
                   sp["parentSpanId"] == lines["second"]["span_id"]),
                  key=lambda sp: int(sp["startTimeUnixNano"]))
    assert len(kids) == 2 and kids[1]["spanId"] == seen["second"] and \
        kids[0]["spanId"] != seen["second"], (kids, seen)
    assert kids[0]["status"] == {"code": 2} and kids[1]["status"] == {"code": 0}, kids
    assert len(rcv.spans) == 5, len(rcv.spans)
