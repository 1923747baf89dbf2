"""HTTP/2 clients (SPEC §9, issue 19 items 1, 3 and 7): real clients (curl
with prior knowledge and ALPN, h2load) and hand-made frames (python3-h2)
against the same request path as HTTP/1.1. Each test asserts on what a
client sees: statuses, headers, bodies, GOAWAY and RST_STREAM codes, the
access log, the model servers' counts, and sluice's resident memory."""
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack

import harness
from harness import Model, Sluice, endpoint, version

ENHANCE_YOUR_CALM = 0xb
PROTOCOL_ERROR = 0x1


# Memory bounds are measured with ASan's quarantine small, so that freed
# buffers are reused as they are in a plain build.
SMALL_QUARANTINE = {"ASAN_OPTIONS": ":".join(filter(None, [
    os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=1",
    "thread_local_quarantine_size_kb=64"]))}


def two_versions(a, b, pct_b=30, **ep):
    return [endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100 - pct_b, is_default=True, type="control"),
        version("versionb", [b.addr], pct_b)], **ep)]


def curl(*args, timeout=20):
    r = subprocess.run(["curl", "-sS", "-i", "--max-time", str(timeout)] + list(args),
                       capture_output=True, text=True, timeout=timeout + 5)
    out = r.stdout.replace("\r\n", "\n")   # curl prints HTTP/2 heads with bare LFs
    head, _, body = out.partition("\n\n")
    lines = head.split("\n")
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    return r.returncode, lines[0] if lines else "", headers, body


class H2:
    """A hand-driven HTTP/2 client connection (python3-h2)."""

    def __init__(self, port, tls=False, window=None, settings=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(self.sock)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        if settings:
            self.conn.update_settings(settings)
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.responses = {}         # stream id -> {"status", "headers", "body", "ended", "reset"}
        self.terminated = None      # the GOAWAY's error code
        self.closed = False
        self.auto_ack = True

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data):
        self.sock.sendall(data)

    def request(self, path, body=b"", headers=(), end=True, method="POST"):
        sid = self.conn.get_next_available_stream_id()
        hs = [(":method", method), (":path", path), (":scheme", "http"),
              (":authority", "localhost")] + list(headers)
        self.conn.send_headers(sid, hs, end_stream=end and not body)
        self.responses[sid] = {"status": None, "headers": {}, "body": b"", "ended": False,
                               "reset": None}
        if body:
            self.send_body(sid, body, end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True):
        """Send body as far as flow control allows, reading as needed."""
        off = 0
        while off < len(body):
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump(0.5)
                if self.closed or self.responses[sid]["reset"] is not None:
                    return False
                continue
            chunk = body[off:off + room]
            self.conn.send_data(sid, chunk)
            off += len(chunk)
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()
        return True

    def pump(self, timeout=5.0):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLError):
            return
        except OSError:
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            r = self.responses.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                r["headers"] = dict(ev.headers)
                r["status"] = int(r["headers"][":status"])
            elif isinstance(ev, h2.events.DataReceived):
                if r is not None:
                    r["body"] += ev.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r["reset"] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev.error_code
        try:
            self.flush()
        except OSError:
            self.closed = True

    def wait(self, cond, timeout=15):
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline and not self.closed:
            self.pump(0.5)
        return cond()

    def wait_response(self, sid, timeout=15):
        r = self.responses[sid]
        # A GOAWAY with NO_ERROR (a drain) lets the streams begun finish.
        self.wait(lambda: r["ended"] or r["reset"] is not None or
                  self.terminated not in (None, 0), timeout)
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


SCORE = "/api/v1/service/mynewendpoint/score"


def test_prior_knowledge_alpn_and_tags():
    """issue 19 item 1: prior knowledge on the plain listener, ALPN h2 on the
    TLS one (HTTP/1.1 still chosen by a client that offers only it); the
    tags are lowercase headers, the answer comes from the version named,
    and the access log says "protocol"."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b), tls=True)
    rc, status, hd, body = curl("--http2-prior-knowledge", "-d", '{"x":1}', s.url("mynewendpoint"))
    assert rc == 0 and status.startswith("HTTP/2 200"), (rc, status)
    assert hd["x-sluice-version"] in ("versiona", "versionb"), hd
    assert json.loads(body)["version"] == hd["x-sluice-version"]
    assert hd["x-sluice-group"] == ("control" if hd["x-sluice-version"] == "versiona" else "treatment")
    rc, status, hd2, _ = curl("-k", "--http2", "-d", "{}", s.url("mynewendpoint", tls=True))
    assert rc == 0 and status.startswith("HTTP/2 200"), (rc, status)
    rc, status, _, _ = curl("-k", "--http1.1", "-d", "{}", s.url("mynewendpoint", tls=True))
    assert rc == 0 and status.startswith("HTTP/1.1 200"), (rc, status)
    rc, status, _, _ = curl("-d", "{}", s.url("mynewendpoint"))
    assert rc == 0 and status.startswith("HTTP/1.1 200"), (rc, status)
    protos = [l["protocol"] for l in s.access_lines()]
    assert protos == ["HTTP/2", "HTTP/2", "HTTP/1.1", "HTTP/1.1"], protos
    ids = {hd["x-request-id"], hd2["x-request-id"]}
    assert all(i in {l["request_id"] for l in s.access_lines(0)} for i in ids)


def test_http2_off_on_a_listener():
    """"http2": false: the HTTP/2 preface is just malformed HTTP/1.1 (400),
    and TLS offers only http/1.1."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b), tls=True)
    # Restarted with the listeners changed (a Sluice spawns at once: a
    # rewrite before it read its file would race it).
    assert s.stop() == 0
    for l in s.config["listeners"]:
        l["http2"] = False
    s.write_config()
    s.spawn()
    s.wait_ready()
    data = harness.raw(s.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data[:80]
    rc, status, _, _ = curl("-k", "--http2", "-d", "{}", s.url("mynewendpoint", tls=True))
    assert rc == 0 and status.startswith("HTTP/1.1 200"), (rc, status)


def test_split_exact_over_multiplexed_streams():
    """issue 19 item 1: 200 requests as 10 concurrent streams on each of 2
    connections (h2load): every one answered 200 and the split exact (30 %
    to versionb: 60 of 200), counted by the model servers and logged."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b, pct_b=30))
    body = os.path.join(s.dir, "body.json")
    with open(body, "w") as f:
        f.write('{"x":1}')
    r = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "10", "-d", body,
                        s.url("mynewendpoint")], capture_output=True, text=True, timeout=60)
    assert "200 succeeded" in r.stdout and "200 2xx" in r.stdout, r.stdout
    lines = s.access_lines()
    by = {}
    for l in lines:
        by[l["version"]] = by.get(l["version"], 0) + 1
    assert by == {"versiona": 140, "versionb": 60}, by
    assert a.stats()["requests"] == 140 and b.stats()["requests"] == 60
    assert all(l["protocol"] == "HTTP/2" and l["status"] == 200 for l in lines)


def test_errors_per_stream():
    """Sluice's own answers over HTTP/2, per stream, the connection kept:
    401 (with WWW-Authenticate), 404, 413, and a good request after them on
    the same connection."""
    a, b = Model("versiona"), Model("versionb")
    eps = two_versions(a, b)
    eps[0]["auth"] = {"keys": True}
    eps[0]["keys"] = {"primary": "k-primary-0123456789"}
    s = Sluice(eps, limits={"max_body_bytes": 1000})
    c = H2(s.port)
    try:
        s401 = c.request(SCORE, b"{}")
        s404 = c.request("/api/v1/service/nosuch/score", b"{}")
        s413 = c.request(SCORE, b"x" * 5000,
                         headers=[("authorization", "Bearer k-primary-0123456789")])
        ok = c.request(SCORE, b"{}", headers=[("authorization", "Bearer k-primary-0123456789")])
        for sid in (s401, s404, s413, ok):
            c.wait_response(sid)
        r = c.responses
        assert r[s401]["status"] == 401 and r[s401]["headers"].get("www-authenticate") == "Bearer"
        assert json.loads(r[s401]["body"])["error"]["code"] == "unauthorized"
        assert r[s404]["status"] == 404
        assert r[s413]["status"] == 413, r[s413]
        assert r[ok]["status"] == 200 and json.loads(r[ok]["body"])["version"] in (
            "versiona", "versionb")
        assert c.terminated is None
    finally:
        c.close()
    assert a.stats()["requests"] + b.stats()["requests"] == 1


def test_backpressure_64mib_each_way():
    """issue 19 item 3: a 64 MiB upload and a 64 MiB download over one
    HTTP/2 stream each (curl); sluice's resident memory, sampled all along,
    stays within a few MiB of what it was, because windows open only as the
    other side takes the bytes."""
    a = Model("versiona", "--fast")
    b = Model("versionb", "--fast")
    s = Sluice(two_versions(a, b, pct_b=0), limits={"max_body_bytes": 128 << 20},
               env=SMALL_QUARANTINE)
    big = os.path.join(s.dir, "big.bin")
    with open(big, "wb") as f:
        f.write(b"u" * (64 << 20))
    rc, status, _, _ = curl("--http2-prior-knowledge", "-d", "{}", s.url("mynewendpoint"))
    assert status.startswith("HTTP/2 200")
    base = s.rss_kib()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], s.rss_kib())
            time.sleep(0.02)
    t = threading.Thread(target=sample)
    t.start()
    try:
        up = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                             "-w", "%{http_code} %{size_upload}", "--data-binary", "@" + big,
                             s.url("mynewendpoint")], capture_output=True, text=True, timeout=120)
        down = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null",
                               "-w", "%{http_code} %{size_download}", "-H",
                               "x-test-fault: big=%d" % (64 << 20), "-d", "{}",
                               s.url("mynewendpoint")], capture_output=True, text=True, timeout=120)
    finally:
        done.set()
        t.join()
    assert up.stdout == "200 %d" % (64 << 20), up.stdout + up.stderr
    assert down.stdout == "200 %d" % (64 << 20), down.stdout + down.stderr
    assert peak[0] - base < 8 * 1024, (base, peak[0])


def test_stalled_reader_is_bounded():
    """issue 19 item 3: a client that opens no window (initial window 0)
    cannot make sluice hold more than a few MiB of a 32 MiB answer; the
    connection next to it is served meanwhile."""
    a = Model("versiona", "--fast")
    b = Model("versionb", "--fast")
    s = Sluice(two_versions(a, b, pct_b=0), env=SMALL_QUARANTINE)
    stalled = H2(s.port, window=0)
    stalled.auto_ack = False
    try:
        base = s.rss_kib()
        sid = stalled.request(SCORE, b"{}", headers=[("x-test-fault", "big=%d" % (32 << 20))])
        stalled.wait(lambda: stalled.responses[sid]["status"] is not None, timeout=10)
        time.sleep(1.0)             # give it every chance to buffer
        held = s.rss_kib()
        other = H2(s.port)
        try:
            oid = other.request(SCORE, b"{}")
            assert other.wait_response(oid)["status"] == 200
        finally:
            other.close()
    finally:
        stalled.close()
    assert held - base < 8 * 1024, (base, held)


def floods(s):
    """sluice_h2_floods_total by kind, from /metrics."""
    import requests
    out = {}
    for line in requests.get(s.admin("/metrics"), timeout=5).text.splitlines():
        if line.startswith("sluice_h2_floods_total{kind=\""):
            kind = line.split('"')[1]
            out[kind] = int(line.rsplit(" ", 1)[1])
    return out


FLOOD_KINDS = ("rapid_reset", "continuation", "ping", "settings", "empty")


def test_floods_end_the_connection():
    """issue 19 item 7: rapid reset, PING, SETTINGS, CONTINUATION and empty
    DATA floods each end their connection with GOAWAY ENHANCE_YOUR_CALM (or
    a close); nothing of it reaches a model server; a client next to them
    is served. h2fn item 3: each flood is counted once, under its kind, in
    sluice_h2_floods_total on /metrics."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b), limits={"h2_max_concurrent_streams": 16})
    enc = hpack.Encoder()
    assert floods(s) == {k: 0 for k in FLOOD_KINDS}
    seen = {k: 0 for k in FLOOD_KINDS}

    def counted(kind):
        seen[kind] += 1
        # the counters are merged off the request path: wait for this one
        harness.until(lambda: floods(s) == seen, 10, "flood %s counted" % kind,
                      show=lambda: floods(s))

    def headers_block(sid, end_headers=True, extra=0):
        block = enc.encode([(":method", "POST"), (":path", SCORE), (":scheme", "http"),
                            (":authority", "x")])
        return frame(0x1, (0x4 if end_headers else 0), sid, block)

    def flood(kind, send):
        """A new connection sends the flood; it must end calm, and count once."""
        c = H2(s.port)
        try:
            send(c)
        except OSError:
            pass
        c.wait(lambda: c.terminated is not None, timeout=10)
        assert c.terminated == ENHANCE_YOUR_CALM or c.closed, (kind, c.terminated)
        c.close()
        counted(kind)

    def rapid_reset(c):
        # streams opened and reset at once, more than 16 in a second
        for i in range(40):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(sid, [(":method", "POST"), (":path", SCORE),
                                      (":scheme", "http"), (":authority", "x")],
                                end_stream=False)
            c.conn.reset_stream(sid)
        c.flush()

    def continuation(c):
        # a head that never ends
        c.raw(headers_block(1, end_headers=False))
        for i in range(50):
            c.raw(frame(0x9, 0, 1, enc.encode([("x-pad-%d" % i, "y")])))

    def empty_data(c):
        # no END_STREAM, on a stream to an unknown endpoint: answered 404 at
        # its head, so nothing of it reaches a model either
        c.request("/nowhere", end=False)
        for i in range(300):
            c.raw(frame(0x0, 0, 1, b""))

    flood("rapid_reset", rapid_reset)
    flood("ping", lambda c: [c.raw(frame(0x6, 0, 0, struct.pack(">Q", i))) for i in range(300)])
    flood("settings", lambda c: [c.raw(frame(0x4, 0, 0, b"")) for i in range(300)])
    flood("continuation", continuation)
    flood("empty", empty_data)
    # The service goes on for others, and nothing flooded reached a model.
    ok = H2(s.port)
    try:
        sid = ok.request(SCORE, b"{}")
        assert ok.wait_response(sid)["status"] == 200
    finally:
        ok.close()
    assert a.stats()["requests"] + b.stats()["requests"] == 1
    assert floods(s) == seen        # the served client is no flood


def test_bad_heads_are_stream_errors():
    """issue 19 item 7: a header list over max_header_bytes, a forbidden
    connection-specific header, and a stream that never ends (past
    header_timeout_ms) end that stream, not the connection; none reaches a
    model server."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b), limits={"max_header_bytes": 4096, "header_timeout_ms": 500})
    c = H2(s.port)
    try:
        big = c.request(SCORE, b"{}", headers=[("x-big", "v" * 8000)])
        r = c.wait_response(big)
        assert r["reset"] is not None or (r["status"] or 0) >= 400, r
        # python-h2 refuses to send "connection" itself: frame it by hand.
        enc = hpack.Encoder()
        sid = c.conn.get_next_available_stream_id()
        block = enc.encode([(":method", "POST"), (":path", SCORE), (":scheme", "http"),
                            (":authority", "x"), ("connection", "keep-alive")])
        c.raw(frame(0x1, 0x4 | 0x1, sid, block))
        c.conn.local_settings.acknowledge()
        time.sleep(0.5)
        hang = c.request(SCORE, b"{", end=False)
        r = c.wait_response(hang)
        assert r["status"] == 408 or r["reset"] is not None, r
        assert c.terminated in (None, PROTOCOL_ERROR), c.terminated
    finally:
        c.close()
    assert a.stats()["requests"] + b.stats()["requests"] == 0


def test_drain_sends_goaway_and_finishes_streams():
    """SPEC §9: on drain (SIGTERM) an HTTP/2 connection gets GOAWAY
    (NO_ERROR) and the stream in flight is answered 200 before sluice exits
    (nghttp shows the frames; python-h2 drops streams after a GOAWAY)."""
    a = Model("versiona", "--latency-ms", "800")
    b = Model("versionb", "--latency-ms", "800")
    s = Sluice(two_versions(a, b))
    body = os.path.join(s.dir, "body.json")
    with open(body, "w") as f:
        f.write("{}")
    p = subprocess.Popen(["nghttp", "-nv", "-d", body, s.url("mynewendpoint")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        harness.until(lambda: a.stats()["requests"] + b.stats()["requests"] == 0 and
                      len(s.access_lines(0)) == 0 and p.poll() is None, 5, "in flight")
        time.sleep(0.3)
        s.proc.send_signal(15)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert "recv GOAWAY frame" in out and "error_code=NO_ERROR" in out, out[-1500:]
    assert ":status: 200" in out, out[-1500:]
    assert out.index("recv GOAWAY frame") < out.index(":status: 200"), out[-1500:]
    assert s.proc.wait(10) == 0


def test_http2_upstreams_both_ways():
    """issue 19 item 2: a version with "upstream_protocol": "http2" (here
    another sluice, which speaks HTTP/2 with prior knowledge): HTTP/1.1 and
    HTTP/2 clients both reach it, 300 multiplexed requests all answered,
    each seen by the upstream as HTTP/2, and the upstream's answer (its own
    version's body) relayed whole."""
    a, b = Model("versiona"), Model("versionb")
    inner = Sluice(two_versions(a, b, pct_b=50, pinning=False))
    outer = Sluice([endpoint("mynewendpoint", [
        version("viah2", ["127.0.0.1:%d" % inner.port], 100, is_default=True, type="control",
                upstream_protocol="http2", path=SCORE)])])
    for args in (["--http2-prior-knowledge"], ["--http1.1"]):
        rc, status, hd, body = curl(*args, "-d", '{"x":1}', outer.url("mynewendpoint"))
        assert rc == 0 and " 200" in status, (args, rc, status)
        # an empty body (Content-Length: 0) has no buffer on the HTTP/2 side:
        # it once crashed the gateway
        rc, status, _, _ = curl(*args, "-d", "", outer.url("mynewendpoint"))
        assert rc == 0 and " 200" in status, (args, rc, status)
        assert hd["x-sluice-version"] == "viah2"
        assert json.loads(body)["version"] in ("versiona", "versionb")
    body = os.path.join(outer.dir, "body.json")
    with open(body, "w") as f:
        f.write('{"x":1}')
    r = subprocess.run(["h2load", "-n", "300", "-c", "3", "-m", "10", "-d", body,
                        outer.url("mynewendpoint")], capture_output=True, text=True, timeout=60)
    assert "300 succeeded" in r.stdout and "300 2xx" in r.stdout, r.stdout
    lines = inner.access_lines()
    assert len(lines) == 304 and all(l["protocol"] == "HTTP/2" and l["status"] == 200
                                     for l in lines), lines[:3]
    assert a.stats()["requests"] + b.stats()["requests"] == 304


def test_http2_upstream_many_streams_no_stream_errors():
    """2,000 requests as 16 streams on each of 4 connections through
    HTTP/2 upstreams (sluice-model --fast, answers with a Content-Length):
    every stream succeeds, none ends in a stream error. (Found by the
    HTTP/2 bench: the upstream's content-length was read past its value,
    into stale bytes of the head buffer, so the client saw a length that
    did not match the DATA and reset the stream.)"""
    a, b = Model("versiona", "--fast"), Model("versionb", "--fast")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 90, is_default=True, type="control",
                upstream_protocol="http2"),
        version("versionb", [b.addr], 10, upstream_protocol="http2")])])
    body = os.path.join(s.dir, "body.json")
    with open(body, "w") as f:
        f.write('{"x":1}')
    r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16", "-d", body,
                        s.url("mynewendpoint")], capture_output=True, text=True, timeout=60)
    assert "2000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
    lines = s.access_lines()
    assert len(lines) == 2000 and all(l["status"] == 200 for l in lines)


def test_header_names_reach_http2_upstreams_lowercase():
    """RFC 9113 §8.2.1: an HTTP/1.1 client's mixed-case header names go to
    an HTTP/2 upstream lowercased (the model server's nghttp2 would reset a
    stream with an uppercase one); an HTTP/2 client's names, lowercase
    already, are passed as they came. Each value arrives whole, and the
    upstream's own (lowercase) response headers come back to both."""
    a = Model("versiona")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100, is_default=True, type="control",
                upstream_protocol="http2")])])
    for args in (["--http1.1", "-H", "X-Mixed-Case: Value One", "-H", "ACCEPT-LANGUAGE: de"],
                 ["--http2-prior-knowledge", "-H", "x-mixed-case: Value One",
                  "-H", "accept-language: de"]):
        rc, status, hd, body = curl(*args, "-d", '{"x":1}', s.url("mynewendpoint"))
        assert rc == 0 and " 200" in status, (args, rc, status, body)
        seen = json.loads(body)["headers"]
        assert seen.get("x-mixed-case") == "Value One", (args, seen)
        assert seen.get("accept-language") == "de", (args, seen)
        assert not [k for k in seen if k != k.lower()], (args, seen)
        assert hd["x-model-version"] == "versiona", hd


def test_a_first_byte_that_could_be_the_preface_then_nothing():
    """A plain client that sends "P" (which could begin "POST" or the HTTP/2
    preface) and nothing more gets the 408 an HTTP/1.1 client gets, not a
    silent close (found by test_core's slow-header test on a loaded run)."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b), limits={"header_timeout_ms": 500})
    c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        c.sendall(b"P")
        data = b""
        while True:
            d = c.recv(4096)
            if not d:
                break
            data += d
    finally:
        c.close()
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]


def _answering(status, body, delay=0.0):
    """An Upstream handler: every request answered status with body (its
    Content-Length, possibly 0) after delay seconds."""
    def handler(c, up):
        r = harness.Reader(c)
        while harness.read_request(r) is not None:
            time.sleep(delay)
            c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % (status, len(body)) + body)
    return handler


def test_empty_response_body():
    """fuzz_h2 finding: a model server's answer with Content-Length: 0 (not a
    204 or 304: a body of no bytes) crashed sluice on an HTTP/2 client (the
    data source read an output buffer that was never made). Both a 200 and
    a 503 with no bytes reach the client as a head and END_STREAM."""
    empty200 = harness.Upstream(_answering(200, b""))
    empty503 = harness.Upstream(_answering(503, b""))
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [empty200.addr], 100, is_default=True, type="control"),
        version("versionb", [empty503.addr], 0)])])
    c = H2(s.port)
    try:
        first = c.request(SCORE, b"{}")
        pinned = c.request(SCORE, b"{}", headers=[("x-sluice-version", "versionb")])
        r1, r2 = c.wait_response(first), c.wait_response(pinned)
        assert r1["status"] == 200 and r1["ended"] and r1["body"] == b"", r1
        assert r2["status"] == 503 and r2["ended"] and r2["body"] == b"", r2
    finally:
        c.close()
    assert s.proc.poll() is None, "sluice died"
    assert [l["status"] for l in sorted(s.access_lines(), key=lambda l: l["status"])] == \
        [200, 503]


def test_waiter_on_the_same_connection():
    """fuzz_h2 finding: streams of one connection pinned to a version at its
    concurrency limit. When the first's answer ended, its request's end gave
    the slot to the next stream, whose start sent the first stream's last
    frame, and nghttp2 closed (and sluice freed) the first stream while its
    request was still ending (heap-use-after-free under ASan). Every stream
    is answered, one at a time, and sluice lives on."""
    slow = harness.Upstream(_answering(200, b'{"ok":1}', delay=0.2))
    a = Model("versiona")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100, is_default=True, type="control"),
        version("versionb", [slow.addr], 0, replica_max_concurrent_requests=1,
                max_request_wait_time_ms=10000)])])
    c = H2(s.port)
    try:
        sids = [c.request(SCORE, b"{}", headers=[("x-sluice-version", "versionb")])
                for _ in range(4)]
        for sid in sids:
            r = c.wait_response(sid)
            assert r["status"] == 200 and r["ended"] and r["body"] == b'{"ok":1}', r
    finally:
        c.close()
    assert s.proc.poll() is None, "sluice died"
    assert len(s.access_lines()) == 4


def test_queued_stream_times_out():
    """soak finding (its HTTP/2 clients): a stream whose whole request came
    while it waited for a concurrency slot, refused when the wait ran out
    (503): the connection's run then read the body's end, which ended the
    request, and handed the ended request (NULL) to
    request_flush_upstream() (SEGV). The waiter gets its 503, the one
    holding the slot its 200, and sluice lives on."""
    slow = harness.Upstream(_answering(200, b'{"ok":1}', delay=1.0))
    a = Model("versiona")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100, is_default=True, type="control"),
        version("versionb", [slow.addr], 0, replica_max_concurrent_requests=1,
                max_request_wait_time_ms=200)])])
    c = H2(s.port)
    try:
        pin = [("x-sluice-version", "versionb")]
        holder = c.request(SCORE, b"{}", headers=pin)
        time.sleep(0.2)
        waiter = c.request(SCORE, b"{}", headers=pin)
        r = c.wait_response(waiter)
        assert r["status"] == 503 and r["ended"], r
        r = c.wait_response(holder)
        assert r["status"] == 200 and r["ended"], r
    finally:
        c.close()
    assert s.proc.poll() is None, "sluice died"


def test_response_cut_mid_body_resets_the_stream():
    """soak finding: a model server that sends a head and part of a body,
    then closes or resets its connection (sluice-model --fast faults cut and
    reset). Over HTTP/1.1 the client's connection closes; over HTTP/2 the
    stream stayed open with neither END_STREAM nor RST_STREAM, and the
    connection, busy with it, never idled out: the client hung. The stream
    is now reset (INTERNAL_ERROR) and the connection serves on."""
    a = Model("versiona", "--fast")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100, is_default=True, type="control")])])
    c = H2(s.port)
    try:
        for fault in ("cut", "reset"):
            sid = c.request(SCORE, b"{}", headers=[("x-test-fault", fault)])
            r = c.wait_response(sid, timeout=10)
            assert r["reset"] == 2 and not r["ended"], (fault, r)
        sid = c.request(SCORE, b"{}")
        r = c.wait_response(sid)
        assert r["status"] == 200 and r["ended"], r
    finally:
        c.close()
    errors = sorted(l.get("error") or "-" for l in s.access_lines())
    assert errors == ["-", "upstream_closed", "upstream_reset"], errors


def test_head_error_has_no_body():
    """soak finding: Sluice's own error reply to a HEAD request carried its
    JSON body in DATA frames; a response to HEAD has no content (RFC 9110
    9.3.2), and python3-h2 ends the whole connection over it. Now the head
    (with the length) ends the stream, and the connection serves on."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(two_versions(a, b))
    c = H2(s.port)
    try:
        sid = c.request("/api/v1/service/nope/score", method="HEAD")
        r = c.wait_response(sid)
        assert r["status"] == 404 and r["ended"] and r["body"] == b"", r
        sid = c.request(SCORE, b"{}")
        r = c.wait_response(sid)
        assert r["status"] == 200 and r["ended"], r
    finally:
        c.close()


def test_output_bound_does_not_stall_a_stream():
    """soak finding (h2_zero_window, h2_big_response: 30 streams hung with
    window open to the gateway): a response held back by a shut window, then
    a large window opened at once. nghttp2 had more to send than
    max_client_output_bytes, so sending stopped at the bound; the socket
    then took it all, no write event came to go on, and a client with a
    large window sends nothing until it has its data: the stream waited
    forever. Now the answer (200 kB) arrives whole."""
    a = Model("versiona", "--fast")
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [a.addr], 100, is_default=True, type="control")])],
        limits={"max_client_output_bytes": 65536})
    c = H2(s.port, window=0)
    try:
        sid = c.request(SCORE, method="GET", headers=[("x-test-fault", "big=200000")])
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            c.pump(0.1)         # the whole answer waits in sluice meanwhile
        c.conn.increment_flow_control_window(1 << 20, stream_id=sid)
        c.conn.increment_flow_control_window(1 << 20)
        c.flush()
        r = c.wait_response(sid, timeout=10)
        assert r["status"] == 200 and r["ended"] and len(r["body"]) == 200000, \
            (r["status"], r["ended"], r["reset"], len(r["body"]))
    finally:
        c.close()


def _early_h2_server(sock, up):
    """An HTTP/2 model server that answers each stream as soon as its head
    arrives (200 "ok", END_STREAM), before the request's body: no
    RST_STREAM after it, no WINDOW_UPDATE for the body (RFC 9113 §8.1
    allows both). At most 2 concurrent streams."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                with up.lock:
                    up.answered += 1
                conn.send_headers(ev.stream_id, [(":status", "200"),
                                                 ("content-length", "2")])
                conn.send_data(ev.stream_id, b"ok", end_stream=True)
        sock.sendall(conn.data_to_send())


def test_http2_upstream_answer_before_the_body_frees_the_stream():
    """review finding 1 (perf changes, item 2: recycled upstream streams):
    an HTTP/2 model server answers before the request's body is sent (the
    body is past its flow-control window) and allows 2 concurrent streams.
    Sluice's stream must end on its side too (RST_STREAM): left open,
    nghttp2 kept it with the recycled struct as its data source, and after
    2 such requests the connection took no new stream, so requests 3 to 6
    waited without an answer. All 6 get the early 200 "ok", each reaches
    the server."""
    up = harness.Upstream(_early_h2_server)
    up.answered = 0
    s = Sluice([endpoint("early", [version("early", [up.addr], 100, is_default=True,
                                        upstream_protocol="http2")])])
    got = []
    for i in range(6):
        c = socket.create_connection(("127.0.0.1", s.port), 5)
        try:
            c.sendall(b"POST /api/v1/service/early/score HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 100000\r\n\r\n" + b"y" * 100000)
            r = harness.Reader(c)
            status, fields, body = harness.read_response(r)
            got.append((status, body))
        except (socket.timeout, EOFError, OSError) as e:
            got.append(repr(e))
            break
        finally:
            c.close()
    assert got == [(200, b"ok")] * 6, got
    assert up.answered == 6
