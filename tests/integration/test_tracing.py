"""Tracing through the gateway (SPEC §10, issue 21): W3C trace context as a
participating proxy, read where the model server received it (sluice-model
echoes the request headers; a Tap records what a mirror got, a scripted
Upstream what each attempt got), and spans exported to a local OTLP/HTTP
receiver (otlp_receiver.py) that checks every batch against the OTLP JSON
mapping (proto3 JSON of opentelemetry-proto's trace service, hand-written
checks: ids in lowercase hex, enums as integers, 64-bit times as decimal
strings, no unknown keys) and SPEC §10's attribute list.

The W3C examples are from https://www.w3.org/TR/trace-context/ (§3.2,
§3.3) and its test suite (w3c/trace-context test/test.py).
"""
import json
import os
import re
import signal
import subprocess
import threading

import requests

from harness import (Model, Redis, Sluice, Tap, Upstream, Reader, endpoint, exchange,
                     free_port, header, parse_responses, read_request, until, version,
                     _closers)
from otlp_receiver import OtlpReceiver, attributes

TID = "0af7651916cd43dd8448eb211c80319c"
PID = "b7ad6b7169203331"
TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
ZERO_T, ZERO_S = "0" * 32, "0" * 16
EP = "fraud"
SCORE = "/api/v1/service/%s/score" % EP


def receiver(**kw):
    r = OtlpReceiver(port=free_port(), **kw)
    _closers.append(r.close)        # closed with the test's processes
    return r


def traced(rcv=None, ratio=1.0, mirror=None, extra=None, pinning=True, timeout_ms=10000, **kw):
    """A sluice with one model (and a mirror address at 50 %: every second
    request, one worker), exporting to rcv when given; (sluice, live model).
    The export deadline is long (a loaded machine can keep the Python
    receiver from answering a batch for a while) except where a test wants
    batches to fail."""
    live = Model("model-a")
    versions = [version("model-a", [live.addr], 100)]
    if mirror is not None:
        versions.append(version("model-m", [mirror], 0, mirror_percentile=50))
    ex = dict(extra or {})
    if rcv is not None:
        ex["tracing"] = {"otlp_endpoint": rcv.url, "sample_ratio": ratio,
                         "service_name": "sluice-test", "export_interval_ms": 50,
                         "export_timeout_ms": timeout_ms}
    return Sluice([endpoint(EP, versions, pinning=pinning)], extra=ex, **kw), live


def parse_tp(v):
    m = TP_RE.match(v or "")
    assert m, "not a version-00 traceparent: %r" % v
    return m.groups()


def echo_pairs(body):
    """The model's echo, with every header kept (duplicates too)."""
    doc = json.loads(body, object_pairs_hook=lambda kv: kv)
    return dict(doc)["headers"]


def received(r):
    """(traceparent values, tracestate values) the model server got."""
    h = echo_pairs(r.content if hasattr(r, "content") else r)
    return [v for k, v in h if k == "traceparent"], [v for k, v in h if k == "tracestate"]


def raw_post(s, extra=b"", body=b"{}"):
    out, _ = exchange(s.port, b"POST " + SCORE.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra +
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    rs = parse_responses(out)
    assert len(rs) == 1, out[:300]
    return rs[0]


def log_by_id(s, n):
    """The access-log lines by request id, once there are n."""
    lines = until(lambda: (lambda ls: ls if len(ls) >= n else None)(s.access_lines(settle=0)),
                  10, "%d access-log lines" % n)
    assert len(lines) == n, lines
    return {l["request_id"]: l for l in lines}


def prom(s):
    out = {}
    for line in requests.get(s.admin("/metrics"), timeout=5).text.splitlines():
        if line.startswith("sluice_spans_"):
            k, v = line.split()
            out[k] = int(v)
    return out


def settled(s, submitted):
    """Wait until `submitted` spans were handed over and none is pending."""
    return until(lambda: (lambda m: m if m["sluice_spans_submitted_total"] == submitted and
                          m["sluice_spans_pending"] == 0 else None)(prom(s)),
                 20, "%d spans submitted and settled" % submitted, show=lambda: prom(s))


# ---- propagation ------------------------------------------------------------


def test_valid_traceparent_is_continued():
    """A valid traceparent is continued: the model server gets the same
    trace id, a new parent id (a new one for every request), version 00,
    the sampled flag kept and every other flag cleared, and the tracestate
    (OWS removed). The access log has the trace id and the request's own
    span id (neither the caller's nor the hop's). A higher version is read
    as 00 (W3C §3.2.4). No "tracing" section: nothing is exported, but the
    context is passed on all the same."""
    s, _ = traced()
    cases = [("01", "01"), ("00", "00"), ("03", "01"), ("02", "00"), ("ff", "01"),
             ("09", "01")]
    seen = set()
    for n, (flags, want) in enumerate(cases):
        rid = "req-%d" % n
        r = requests.post(s.url(EP), data=b"{}", headers={
            "traceparent": "00-%s-%s-%s" % (TID, PID, flags), "X-Request-Id": rid,
            "tracestate": "congo=t61rcWkgMzE , rojo=00f067aa0ba902b7"}, timeout=5)
        assert r.status_code == 200, r.text
        tps, tss = received(r)
        assert len(tps) == 1, tps
        t, p, f = parse_tp(tps[0])
        assert t == TID and f == want, (flags, tps)
        assert p not in (PID, ZERO_S) and p not in seen, (p, seen)
        seen.add(p)
        assert tss == ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"], tss
    # a higher version, its first 55 characters parsed
    r = requests.post(s.url(EP), data=b"{}", headers={
        "traceparent": "cc-%s-%s-01-what-the-future-will-be-like" % (TID, PID),
        "X-Request-Id": "req-hv", "tracestate": "congo=t61rcWkgMzE"}, timeout=5)
    (tp,), tss = received(r)
    t, p, f = parse_tp(tp)
    assert t == TID and f == "01" and p != PID and tss == ["congo=t61rcWkgMzE"], (tp, tss)
    logs = log_by_id(s, len(cases) + 1)
    for rid, l in logs.items():
        assert l["trace_id"] == TID, l
        assert re.fullmatch(r"[0-9a-f]{16}", l["span_id"]) and l["span_id"] not in seen | {
            PID, ZERO_S, p}, l
    assert len({l["span_id"] for l in logs.values()}) == len(logs)


INVALID = [
    ("version ff", b"traceparent: ff-%s-%s-01\r\n" % (TID.encode(), PID.encode())),
    ("trace id zero", b"traceparent: 00-%s-%s-01\r\n" % (ZERO_T.encode(), PID.encode())),
    ("parent id zero", b"traceparent: 00-%s-%s-01\r\n" % (TID.encode(), ZERO_S.encode())),
    ("uppercase", b"traceparent: 00-%s-%s-01\r\n" % (TID.upper().encode(), PID.upper().encode())),
    ("short parent id", b"traceparent: 00-%s-%s-01\r\n" % (TID.encode(), PID[:15].encode())),
    ("00 with more", b"traceparent: 00-%s-%s-01-what\r\n" % (TID.encode(), PID.encode())),
    ("not hex", b"traceparent: 00-%sg-%s-01\r\n" % (TID[:31].encode(), PID.encode())),
    ("bad flags", b"traceparent: 00-%s-%s-0g\r\n" % (TID.encode(), PID.encode())),
    ("two headers", b"traceparent: 00-%s-%s-01\r\ntraceparent: 00-%s-%s-01\r\n" % (
        TID.encode(), PID.encode(), ("1" * 32).encode(), ("2" * 16).encode())),
]


def test_invalid_traceparent_starts_a_new_trace_and_drops_tracestate():
    """Each invalid traceparent of the W3C examples (and two traceparent
    headers) starts a new trace: a fresh trace id, not sampled (sample_ratio
    0 without a "tracing" section), and the orphan tracestate is not passed
    on; the access log has the new trace id."""
    s, _ = traced()
    got = {}
    for name, tp in INVALID:
        st, _, body = raw_post(s, tp + b"tracestate: congo=t61rcWkgMzE\r\n"
                               b"X-Request-Id: %s\r\n" % name.replace(" ", "-").encode())
        assert st == 200, (name, body)
        tps, tss = received(body)
        assert len(tps) == 1 and tss == [], (name, tps, tss)
        t, p, f = parse_tp(tps[0])
        assert t not in (TID, ZERO_T, "1" * 32) and p != ZERO_S and f == "00", (name, tps)
        got[name.replace(" ", "-")] = t
    assert len(set(got.values())) == len(INVALID), got
    logs = log_by_id(s, len(INVALID))
    for rid, t in got.items():
        assert logs[rid]["trace_id"] == t, (rid, logs[rid])


def tracestate_expected(members):
    """W3C §3.3.1.5 as README.md (Tracing) says Sluice applies it: at most
    512 characters, members over 128 dropped first, then from the end."""
    out = list(members)
    if len(",".join(out)) > 512:
        out = [m for m in out if len(m) <= 128]
    while len(",".join(out)) > 512:
        out.pop()
    return ",".join(out)


def test_tracestate_passed_on_within_limits():
    """tracestate follows a valid traceparent: several headers combined in
    order, empty members left out, cut to 512 characters by whole members
    (long ones first), and dropped whole when a member is malformed or
    there are more than 32."""
    s, _ = traced()
    tp = b"traceparent: 00-%s-%s-01\r\n" % (TID.encode(), PID.encode())
    long_members = ["k%d=%s" % (i, "a" * 90) for i in range(8)]
    long_members.insert(2, "big=" + "b" * 200)
    cases = [
        (b"tracestate: congo=t61rcWkgMzE\r\ntracestate: rojo=00f067aa0ba902b7,,\r\n",
         ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]),
        (b"tracestate: " + ",".join(long_members).encode() + b"\r\n",
         [tracestate_expected(long_members)]),
        (b"tracestate: " + ",".join("m%d=1" % i for i in range(33)).encode() + b"\r\n", []),
        (b"tracestate: " + ",".join("m%d=1" % i for i in range(32)).encode() + b"\r\n",
         [",".join("m%d=1" % i for i in range(32))]),
        (b"tracestate: Congo=t61rcWkgMzE\r\n", []),          # uppercase key
        (b"tracestate: tenant@vendor=1,vendor=2\r\n", ["tenant@vendor=1,vendor=2"]),
    ]
    assert len(cases[1][1][0]) <= 512 and "big=" not in cases[1][1][0]
    for n, (ts, want) in enumerate(cases):
        st, _, body = raw_post(s, tp + ts)
        assert st == 200, body
        tps, tss = received(body)
        assert parse_tp(tps[0])[0] == TID, tps
        assert tss == want, (n, tss, want)


def test_each_shadow_copy_gets_its_own_span_id():
    """The upstream request and its shadow copy carry the same trace id and
    different parent ids (each hop its own span), neither the caller's; the
    copy gets the tracestate too."""
    mirror = Model("model-m")
    tap = Tap(mirror.addr)
    s, _ = traced(mirror=tap.addr)
    live_ids = []
    n = 5
    for i in range(2 * n):
        r = requests.post(s.url(EP), data=b"{}", timeout=5, headers={
            "traceparent": "00-%s-%s-01" % (TID, PID), "tracestate": "congo=t61rcWkgMzE",
            "X-Request-Id": "req-%d" % i})
        tps, _ = received(r)
        live_ids.append(parse_tp(tps[0])[1])
    heads = until(lambda: (lambda h: h if len(h) >= n else None)(tap_heads(tap)),
                  10, "%d shadow copies" % n)
    assert len(heads) == n, heads
    shadow_ids = []
    for h in heads:
        tp = re.findall(r"\r\ntraceparent: (\S+)\r\n", h)
        ts = re.findall(r"\r\ntracestate: (\S+)\r\n", h)
        assert len(tp) == 1 and ts == ["congo=t61rcWkgMzE"] and "X-Sluice-Group: shadow" in h, h
        t, p, f = parse_tp(tp[0])
        assert t == TID and f == "01", tp
        shadow_ids.append(p)
    ids = live_ids + shadow_ids
    assert len(set(ids)) == 3 * n and PID not in ids, ids


# ---- export -----------------------------------------------------------------


def tap_heads(tap):
    """The request heads a Tap passed on (bodies here are "{}")."""
    return re.findall(r"(POST .*?)\r\n\r\n", tap.sent().decode("latin-1"), re.S)


def by_kind(spans):
    server = {sp["spanId"]: sp for sp in spans if sp["kind"] == 2}
    client = [sp for sp in spans if sp["kind"] == 3]
    return server, client


def test_sampled_requests_export_server_and_client_spans():
    """sample_ratio 1: each request exports exactly one SERVER span (the ids
    of its access-log line, no parent) and one CLIENT span per hop (its id
    the parent id the model server or the mirror received, the server span
    its parent), with SPEC §10's attributes; every batch valid OTLP JSON."""
    rcv = receiver()
    mirror = Model("model-m")
    tap = Tap(mirror.addr)
    s, live = traced(rcv, mirror=tap.addr)
    n = 8
    hop = {}
    for i in range(n):
        r = requests.post(s.url(EP), data=b"{}", headers={"X-Request-Id": "req-%d" % i},
                          timeout=5)
        assert r.status_code == 200
        hop["req-%d" % i] = parse_tp(received(r)[0][0])
    r = requests.post(s.url(EP), data=b"{}", timeout=5, headers={
        "X-Request-Id": "pinned", "X-Sluice-Version": "model-a"})   # pinned: not mirrored
    assert r.status_code == 200, r.text
    hop["pinned"] = parse_tp(received(r)[0][0])
    want = 2 * n + n // 2 + 2       # every second request mirrored
    m = settled(s, want)
    assert m["sluice_spans_exported_total"] == want and m["sluice_spans_dropped_total"] == 0, m
    assert rcv.errors == [], rcv.errors[:5]
    assert len(rcv.spans) == want, len(rcv.spans)
    server, client = by_kind(rcv.spans)
    logs = log_by_id(s, n + 1)
    assert len(server) == n + 1
    shadow_heads = tap_heads(tap)
    shadow_hop = {re.search(r"\r\nX-Request-Id: (\S+)", h).group(1):
                  parse_tp(re.search(r"\r\ntraceparent: (\S+)", h).group(1))
                  for h in shadow_heads}
    assert len(shadow_hop) == n // 2
    for rid, l in logs.items():
        sp = server.get(l["span_id"])
        assert sp is not None and sp["traceId"] == l["trace_id"], (l, server.keys())
        assert "parentSpanId" not in sp and sp["flags"] == 0x101, sp
        assert sp["name"] == "POST /api/v1/service/{endpoint}/score", sp
        assert sp["resource"] == {"service.name": "sluice-test"} and sp["status"] == {"code": 0}
        pinned = rid == "pinned"
        assert attributes(sp["attributes"]) == {
            "endpoint": EP, "version": "model-a", "group": "treatment", "status": 200,
            "upstream": live.addr, "pinned": pinned, "shadow": False}, sp
        assert int(sp["startTimeUnixNano"]) <= int(sp["endTimeUnixNano"])
        kids = [c for c in client if c.get("parentSpanId") == sp["spanId"]]
        assert len(kids) == (2 if rid in shadow_hop else 1), kids
        for c in kids:
            a = attributes(c["attributes"])
            assert c["traceId"] == l["trace_id"] and c["name"] == "POST", c
            if a["shadow"]:
                assert a == {"endpoint": EP, "version": "model-m", "group": "shadow",
                             "status": 200, "upstream": tap.addr, "pinned": False,
                             "shadow": True}, c
                assert (c["traceId"], c["spanId"]) == shadow_hop[rid][:2], (c, shadow_hop[rid])
            else:
                assert a == {"endpoint": EP, "version": "model-a", "group": "treatment",
                             "status": 200, "upstream": live.addr, "pinned": pinned,
                             "shadow": False}, c
                assert (c["traceId"], c["spanId"]) == hop[rid][:2], (c, hop[rid])
            assert int(sp["startTimeUnixNano"]) <= int(c["startTimeUnixNano"]) <= \
                int(c["endTimeUnixNano"]) <= int(sp["endTimeUnixNano"]) or a["shadow"], (sp, c)


def test_sampling_honours_the_flag_and_the_ratio():
    """Parent-based: with sample_ratio 0, a caller's sampled flag still
    exports (the parent remote), an unsampled one does not, and new traces
    are not sampled; with 0.5, a new trace is sampled exactly when its
    trace id's 56 right-most bits are at least 2^55, and the model server
    sees the decision in the flag. Unsampled requests submit nothing."""
    rcv = receiver()
    s, _ = traced(rcv, ratio=0.0)
    for i in range(5):
        for tp in ("00-%032x-%s-00" % (i + 1, PID), None):
            h = {"traceparent": tp} if tp else {}
            assert requests.post(s.url(EP), data=b"{}", headers=h, timeout=5).status_code == 200
    sampled = set()
    for i in range(5):
        tid = "%032x" % (0xabc00 + i)
        r = requests.post(s.url(EP), data=b"{}", timeout=5,
                          headers={"traceparent": "00-%s-%s-01" % (tid, PID)})
        assert parse_tp(received(r)[0][0])[2] == "01"
        sampled.add(tid)
    m = settled(s, 10)
    assert m["sluice_spans_exported_total"] == 10, m
    assert {sp["traceId"] for sp in rcv.spans} == sampled and len(rcv.spans) == 10
    server, _ = by_kind(rcv.spans)
    assert all(sp["parentSpanId"] == PID and sp["flags"] == 0x301 for sp in server.values())

    rcv2 = receiver()
    s2, _ = traced(rcv2, ratio=0.5)
    decided = {}
    n = 60
    for i in range(n):
        r = requests.post(s2.url(EP), data=b"{}", timeout=5)
        t, _, f = parse_tp(received(r)[0][0])
        decided[t] = f == "01"
    want = {t for t, yes in decided.items() if int(t[-14:], 16) >= 1 << 55}
    assert {t for t, yes in decided.items() if yes} == want, decided
    settled(s2, 2 * len(want))
    assert {sp["traceId"] for sp in rcv2.spans} == want


def test_dead_or_hanging_collector_costs_requests_nothing():
    """A collector that refuses connections, or takes each batch and never
    answers (export_timeout_ms 300): every request answers 200, and every
    span is counted: exported + dropped == submitted, all dropped."""
    for mode in ("down", "hang"):
        rcv = receiver(mode=mode)
        s, _ = traced(rcv, timeout_ms=300)
        n = 30
        for i in range(n):
            r = requests.post(s.url(EP), data=b"{}", timeout=5)
            assert r.status_code == 200, (mode, r.status_code)
        m = settled(s, 2 * n)
        assert m["sluice_spans_exported_total"] == 0 and \
            m["sluice_spans_dropped_total"] == 2 * n, (mode, m)
        s.stop()


def test_refused_requests_have_trace_ids_and_spans():
    """A 404 (no such endpoint) continues a sampled caller's trace: its log
    line has the trace id, its SERVER span the status and no version; a
    request refused before its head was read whole (a malformed header) is
    logged with a trace id of its own."""
    rcv = receiver()
    s, _ = traced(rcv)
    r = requests.post("http://127.0.0.1:%d/api/v1/service/nosuch/score" % s.port, data=b"{}",
                      headers={"traceparent": "00-%s-%s-01" % (TID, PID),
                               "X-Request-Id": "nf"}, timeout=5)
    assert r.status_code == 404
    st, _, _ = raw_post(s, b"Bad Header: x\r\n")
    assert st == 400
    logs = until(lambda: (lambda ls: ls if len(ls) == 2 else None)(s.access_lines(settle=0)),
                 10, "2 log lines")
    nf = [l for l in logs if l["status"] == 404][0]
    bad = [l for l in logs if l["status"] == 400][0]
    assert nf["trace_id"] == TID and bad["trace_id"] not in (TID, ZERO_T), logs
    assert re.fullmatch(r"[0-9a-f]{32}", bad["trace_id"]) and bad["span_id"] != ZERO_S, bad
    m = settled(s, 2)
    assert m["sluice_spans_exported_total"] == 2, m
    server, _ = by_kind(rcv.spans)
    sp = server[nf["span_id"]]
    assert attributes(sp["attributes"]) == {"status": 404, "pinned": False, "shadow": False}, sp
    assert sp["name"] == "POST" and sp["parentSpanId"] == PID, sp
    # the 400's new trace was sampled too (ratio 1): one SERVER span
    assert attributes(server[bad["span_id"]]["attributes"])["status"] == 400


def test_keepalive_retry_gets_its_own_span_id():
    """The keep-alive race (SPEC §3.7): the model server closes a reused
    connection on the second request without answering; the retry, on a new
    connection, carries the same trace id and a new parent id, and each
    attempt has its CLIENT span (the first an error with no status)."""
    rcv = receiver()
    got = []                        # (connection number, traceparent) per request
    lock = threading.Lock()

    def handler(c, up):
        with lock:
            k = up.n_conns
        r = Reader(c)
        served = 0
        while True:
            rq = read_request(r)
            if rq is None:
                return
            with lock:
                got.append((k, header(rq[1], "traceparent")))
            if k == 1 and served == 1:
                return              # closed without an answer
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            served += 1
    up = Upstream(handler)
    s = Sluice([endpoint(EP, [version("model-a", [up.addr], 100)])], extra={"tracing": {
        "otlp_endpoint": rcv.url, "export_interval_ms": 50}})
    for rid in ("first", "second"):
        r = requests.post(s.url(EP), data=b"{}", headers={"X-Request-Id": rid}, timeout=5)
        assert r.status_code == 200, r.text
    assert [k for k, _ in got] == [1, 1, 2], got
    (a,), (b,) = got[1][1], got[2][1]
    ta, pa, _ = parse_tp(a)
    tb, pb, _ = parse_tp(b)
    assert ta == tb and pa != pb, (a, b)
    settled(s, 5)
    server, client = by_kind(rcv.spans)
    second = log_by_id(s, 2)["second"]
    kids = sorted((c for c in client if c["parentSpanId"] == second["span_id"]),
                  key=lambda c: int(c["startTimeUnixNano"]))
    assert [c["spanId"] for c in kids] == [pa, pb], (kids, pa, pb)
    assert kids[0]["status"] == {"code": 2} and "status" not in attributes(kids[0]["attributes"])
    assert attributes(kids[1]["attributes"])["status"] == 200 and kids[1]["status"] == {"code": 0}


def test_reload_turns_export_on_and_shutdown_flushes():
    """Export follows the config generation: off at start (nothing
    submitted), on after a reload names a collector; at SIGTERM the spans
    still queued (export_interval_ms one minute) are sent before exit."""
    rcv = receiver()
    s, _ = traced()
    assert requests.post(s.url(EP), data=b"{}", timeout=5).status_code == 200
    s.config["tracing"] = {"otlp_endpoint": rcv.url, "export_interval_ms": 60000}
    s.write_config()
    os.kill(s.proc.pid, signal.SIGHUP)
    until(lambda: "config_applied" in s.log() and "\"generation\":2" in s.log(), 10, "reload")
    for i in range(3):
        assert requests.post(s.url(EP), data=b"{}", timeout=5).status_code == 200
    until(lambda: prom(s)["sluice_spans_submitted_total"] == 6, 10, "6 spans submitted")
    assert rcv.spans == []          # the timer has not run yet
    assert s.stop() == 0
    assert len(rcv.spans) == 6 and rcv.errors == [], (len(rcv.spans), rcv.errors)


def test_diff_samples_carry_the_trace_id():
    """SPEC §7 samples of a mirror that disagrees carry the live request's
    trace id (the one its access-log line has), so a disagreement can be
    looked up."""
    redis = Redis()
    live, mirror = Model("model-a"), Model("model-m", "--noise", "1e-3")
    s = Sluice([endpoint(EP, [
        version("model-a", [live.addr], 100),
        version("model-m", [mirror.addr], 0, mirror_percentile=50,
                compare={"mode": "json", "ignore": ["headers", "version"], "samples": 5})])],
        extra={"redis": {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100},
               "admin": {"token": "adm-secret-token-0123456789abcdef"}})
    tids = set()
    for i in range(6):
        tid = "%032x" % (0xfeed0 + i)
        if i % 2:
            tids.add(tid)           # every second request is mirrored
        r = requests.post(s.url(EP), data=b'{"x":%d}' % i, timeout=5,
                          headers={"traceparent": "00-%s-%s-01" % (tid, PID)})
        assert r.status_code == 200

    def samples():
        r = requests.get(s.admin("/admin/v1/endpoints/%s/versions/model-m/diffs" % EP),
                         headers={"Authorization": "Bearer adm-secret-token-0123456789abcdef"},
                         timeout=5)
        d = r.json().get("diffs", []) if r.status_code == 200 else []
        return d if len(d) == 3 else None
    d = until(samples, 15, "3 samples")
    assert {x["trace_id"] for x in d} == tids, d


def test_http2_request_is_traced_like_http1():
    """HTTP/2 (curl --http2-prior-knowledge): the same propagation (trace id
    continued, a new parent id, flags cleaned, tracestate passed on) and the
    same spans; the access-log line says HTTP/2 and has the ids."""
    rcv = receiver()
    s, live = traced(rcv)
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-d", "{}",
                          "-H", "traceparent: 00-%s-%s-03" % (TID, PID),
                          "-H", "tracestate: congo=t61rcWkgMzE",
                          "-H", "X-Request-Id: h2-req", s.url(EP)],
                         capture_output=True, timeout=15)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    (tp,), tss = received(body)
    t, p, f = parse_tp(tp)
    assert t == TID and p != PID and f == "01" and tss == ["congo=t61rcWkgMzE"], (tp, tss)
    l = log_by_id(s, 1)["h2-req"]
    assert l["protocol"] == "HTTP/2" and l["trace_id"] == TID, l
    settled(s, 2)
    server, client = by_kind(rcv.spans)
    assert list(server) == [l["span_id"]] and server[l["span_id"]]["parentSpanId"] == PID
    assert [(c["spanId"], c["parentSpanId"]) for c in client] == [(p, l["span_id"])], client
    assert rcv.errors == []


def test_request_cut_at_shutdown_exports_its_spans():
    """A request still waiting for its model server when drain_timeout_ms
    runs out ends at shutdown (after the workers stopped): its SERVER span
    (no response: an error) and its CLIENT span are exported before the
    process exits 0."""
    rcv = receiver()
    slow = Model("model-s", "--latency-ms", "20000")
    s = Sluice([endpoint(EP, [version("model-s", [slow.addr], 100)])],
               limits={"drain_timeout_ms": 200},
               extra={"tracing": {"otlp_endpoint": rcv.url, "export_interval_ms": 60000}})
    errors = []

    def call():
        try:
            requests.post(s.url(EP), data=b"{}", timeout=30)
        except requests.RequestException as e:
            errors.append(e)
    t = threading.Thread(target=call)
    t.start()
    # At the model server, not just accepted: a connection counted before
    # its request was read has no span yet (this raced under load).
    until(lambda: slow.stats()["requests"] == 1, 10, "the request at the model server")
    assert s.stop() == 0
    t.join(30)
    server, client = by_kind(rcv.spans)
    assert len(server) == 1 and len(client) == 1 and rcv.errors == [], rcv.spans
    (sp,) = server.values()
    assert sp["status"] == {"code": 2} and "status" not in attributes(sp["attributes"]), sp
    assert client[0]["parentSpanId"] == sp["spanId"] and client[0]["status"] == {"code": 2}


def test_http2_upstream_hop_carries_the_context():
    """An HTTP/2 upstream ("upstream_protocol": "http2"; here a second
    sluice, as test_h2 does) gets the hop's traceparent: the inner sluice
    continues the trace, its SERVER span's parent is the outer sluice's
    CLIENT span, and the model server behind both sees the trace id."""
    rcv = receiver()
    inner, live = traced(rcv, pinning=False)     # the outer's X-Sluice-Version is no pin
    outer = Sluice([endpoint(EP, [version("via-h2", ["127.0.0.1:%d" % inner.port], 100,
                                          upstream_protocol="http2", path=SCORE)])],
                   extra={"tracing": {"otlp_endpoint": rcv.url, "export_interval_ms": 50}})
    r = requests.post(outer.url(EP), data=b"{}", timeout=5, headers={
        "traceparent": "00-%s-%s-01" % (TID, PID), "tracestate": "congo=t61rcWkgMzE"})
    assert r.status_code == 200, r.text
    (tp,), tss = received(r)
    assert parse_tp(tp)[0] == TID and tss == ["congo=t61rcWkgMzE"], (tp, tss)
    until(lambda: len(rcv.spans) == 4, 10, "4 spans", show=lambda: rcv.spans)
    assert rcv.errors == [] and all(sp["traceId"] == TID for sp in rcv.spans)
    server, client = by_kind(rcv.spans)
    outer_server = [sp for sp in server.values() if sp["parentSpanId"] == PID]
    assert len(outer_server) == 1, server
    outer_client = [c for c in client if c["parentSpanId"] == outer_server[0]["spanId"]]
    assert len(outer_client) == 1, client
    inner_server = [sp for sp in server.values() if sp["parentSpanId"] == outer_client[0]["spanId"]]
    assert len(inner_server) == 1, (server, outer_client)
    assert [c["parentSpanId"] for c in client if c is not outer_client[0]] == \
        [inner_server[0]["spanId"]] and parse_tp(tp)[1] != outer_client[0]["spanId"]
