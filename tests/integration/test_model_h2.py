"""sluice-model over HTTP/2 and gRPC (issue 19 item 5), straight at the model
server: one port answers HTTP/1.1 and, to clients that open with the
HTTP/2 preface, HTTP/2 with the same answers, controls and options; gRPC
calls of the Open Inference Protocol get answers naming the version, and
errors as Trailers-Only answers with the matching grpc-status."""
import json
import os
import re
import socket
import subprocess
import time

import grpc
import h2.config
import h2.connection
import h2.events
import requests

import grpc_stubs
from h2client import H2Client
from harness import Model, tmpdir

INFER = "/v2/models/m/infer"
BODY = b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[0.5]}]}'


def fnv1a(data):
    h = 1469598103934665603
    for c in data:
        h ^= c
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def curl_h2(port, path, body=None, headers=()):
    """curl --http2-prior-knowledge: (status, http_version, headers, body)."""
    cmd = ["curl", "-s", "--http2-prior-knowledge", "-D", "-", "-o", "-",
           "-w", "\n%{http_code} %{http_version}", "--max-time", "20"]
    for h in headers:
        cmd += ["-H", h]
    if body is not None:
        cmd += ["--data-binary", "@-"]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, path)], input=body or b"",
                         capture_output=True, check=True).stdout
    head, _, rest = out.partition(b"\r\n\r\n")
    body, _, tail = rest.rpartition(b"\n")
    code, ver = tail.decode().split()
    fields = {}
    for line in head.decode().split("\r\n")[1:]:
        k, _, v = line.partition(":")
        fields[k.strip().lower()] = v.strip()
    return int(code), ver, fields, body


def stub(port):
    pb, rpc = grpc_stubs.load()
    ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    return pb, rpc.GRPCInferenceServiceStub(ch), ch


def infer_request(pb, **kw):
    t = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[0.5]))
    return pb.ModelInferRequest(inputs=[t], **kw)


def test_h2_prior_knowledge_and_http1_on_one_port():
    """curl --http2-prior-knowledge gets the HTTP/1.1 answer over HTTP/2:
    the version, the body's size and hash, its scores, the headers echoed
    (with :authority as host); HTTP/1.1 on the same port still works and
    agrees; the model counts both requests and both connections."""
    m = Model("versionh2", check_exit=True)
    code, ver, fields, body = curl_h2(m.port, INFER, BODY, ["X-Custom: abc"])
    assert (code, ver) == (200, "2"), (code, ver, body)
    assert fields["x-model-version"] == "versionh2"
    assert fields["content-type"] == "application/json"
    assert int(fields["content-length"]) == len(body)
    a = json.loads(body)
    assert a["version"] == "versionh2" and a["status"] == 200
    assert (a["method"], a["uri"]) == ("POST", INFER)
    assert a["body_bytes"] == len(BODY) and a["body_fnv1a"] == fnv1a(BODY)
    assert a["headers"]["x-custom"] == "abc"
    assert a["headers"]["host"] == "127.0.0.1:%d" % m.port
    r = requests.post("http://%s%s" % (m.addr, INFER), data=BODY, timeout=10)
    assert r.status_code == 200 and r.raw.version == 11
    b = r.json()
    assert r.headers["X-Model-Version"] == "versionh2"
    for k in ("version", "status", "method", "uri", "body_bytes", "body_fnv1a", "score",
              "scores"):
        assert a[k] == b[k], (k, a[k], b[k])
    st = m.stats()
    assert st["requests"] == 2 and st["connections"] == 4, st   # with the harness's probe
    # a body past the 64 KiB flow-control windows arrives whole
    big = bytes(range(256)) * 4096 + b"end"
    code, ver, fields, body = curl_h2(m.port, INFER, big)
    a = json.loads(body)
    assert (code, a["body_bytes"], a["body_fnv1a"]) == (200, len(big), fnv1a(big)), a


def test_h2_controls_and_many_streams_on_one_connection():
    """The per-request controls work per stream on one connection: a
    status, a large body (past the 64 KiB flow-control window), a delay
    that lets later streams overtake it, HEAD without a body; x-test-close
    closes the connection without answering."""
    m = Model("versionh2", check_exit=True)
    c = H2Client(m.port)
    slow = c.request(INFER, BODY, [("x-test-delay-ms", "2000")])
    s503 = c.request(INFER, BODY, [("x-test-status", "503")])
    big = c.request(INFER, BODY, [("x-test-response-bytes", "300000")])
    head = c.request(INFER, method="HEAD")
    fast = [c.request(INFER, b"%d" % i) for i in range(20)]
    order = []
    pending = set([slow, s503, big, head] + fast)
    while pending:
        assert c.pump(), "connection closed"
        for sid in list(pending):
            if c.streams[sid]["ended"]:
                order.append(sid)
                pending.discard(sid)
    assert order[-1] == slow, order             # answered after the other 23
    r = c.streams[s503]
    assert r["headers"][":status"] == "503" and json.loads(r["data"])["status"] == 503
    r = c.streams[big]
    assert r["headers"][":status"] == "200" and r["data"] == b"x" * 300000
    r = c.streams[head]
    assert r["headers"][":status"] == "200" and r["data"] == b""
    for i, sid in enumerate(fast):
        a = json.loads(c.streams[sid]["data"])
        assert a["body_fnv1a"] == fnv1a(b"%d" % i) and a["version"] == "versionh2"
    sid = c.request(INFER, BODY, [("x-test-close", "1")])
    assert c.wait_closed(), "x-test-close did not close the connection"
    assert c.streams[sid]["headers"] is None
    assert m.stats()["requests"] == 25


def test_h2_settings_and_latency_option():
    """--h2-max-streams is the SETTINGS_MAX_CONCURRENT_STREAMS the server
    sends; --latency-ms delays HTTP/2 and gRPC answers (a lower bound only,
    with 50 ms for libevent's coarse clock)."""
    m = Model("versionslow", "--latency-ms", "500", "--h2-max-streams", "7", check_exit=True)
    c = H2Client(m.port)
    t0 = time.monotonic()
    sid = c.request(INFER, BODY)
    r = c.response(sid)
    assert time.monotonic() - t0 >= 0.45
    assert r["headers"][":status"] == "200"
    assert c.remote_settings[3] == 7, c.remote_settings     # MAX_CONCURRENT_STREAMS
    pb, s, ch = stub(m.port)
    t0 = time.monotonic()
    out = s.ModelInfer(infer_request(pb, model_name="m"), timeout=20)
    assert time.monotonic() - t0 >= 0.45
    assert out.outputs[0].contents.bytes_contents == [b"versionslow"]
    ch.close()


def test_grpc_inference_service():
    """A grpcio client with stubs generated from tests/proto: the health
    calls, model metadata, and ModelInfer, whose answer carries the
    request's model name, version and id and an output tensor naming the
    server's version; the score is a function of the request."""
    m = Model("versiongrpc", check_exit=True)
    pb, s, ch = stub(m.port)
    assert s.ServerLive(pb.ServerLiveRequest(), timeout=10).live is True
    assert s.ServerReady(pb.ServerReadyRequest(), timeout=10).ready is True
    assert s.ModelReady(pb.ModelReadyRequest(name="m"), timeout=10).ready is True
    md = s.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=10)
    assert md.name == "fraud" and list(md.versions) == ["versiongrpc"]
    assert [o.name for o in md.outputs] == ["version", "score"]
    req = infer_request(pb, model_name="fraud", model_version="3", id="req-17")
    out, call = s.ModelInfer.with_call(req, timeout=10, metadata=[("x-sluice-group", "control")])
    assert (out.model_name, out.model_version, out.id) == ("fraud", "3", "req-17")
    # the request's metadata, echoed as parameters (grpcio sends a grpc-timeout)
    assert out.parameters["x-sluice-group"].string_param == "control"
    assert out.parameters["content-type"].string_param == "application/grpc"
    assert re.fullmatch(r"\d+[HMSmun]", out.parameters["grpc-timeout"].string_param), out
    assert [(o.name, o.datatype, list(o.shape)) for o in out.outputs] == [
        ("version", "BYTES", [1]), ("score", "FP64", [1])]
    assert list(out.outputs[0].contents.bytes_contents) == [b"versiongrpc"]
    score = out.outputs[1].contents.fp64_contents[0]
    assert 0 <= score < 1
    assert call.code() == grpc.StatusCode.OK
    assert dict(call.initial_metadata())["x-model-version"] == "versiongrpc"
    again = s.ModelInfer(req, timeout=10)
    assert again.outputs[1].contents.fp64_contents[0] == score
    other = s.ModelInfer(infer_request(pb, model_name="other"), timeout=10)
    assert other.outputs[1].contents.fp64_contents[0] != score
    unknown = ch.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
    try:
        unknown(b"", timeout=10)
        raise AssertionError("an unknown method answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, e
    ch.close()
    assert m.stats()["requests"] == 8


def grpc_code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_grpc_errors_are_trailers_only():
    """Where HTTP gets an error status, gRPC gets a Trailers-Only answer (one
    HEADERS frame ending the stream: :status 200, grpc-status,
    grpc-message, no DATA) with the matching code: x-test-status 503 →
    UNAVAILABLE, 500 → INTERNAL, 504 → DEADLINE_EXCEEDED; x-test-grpc-status
    names one; --error-rate 1 → INTERNAL; --grpc-status 14 → UNAVAILABLE
    for every call; a body that is not a length-prefixed message →
    INTERNAL."""
    m = Model("versionerr", check_exit=True)
    pb, s, ch = stub(m.port)
    req = infer_request(pb, model_name="m")
    for md, want in [([("x-test-status", "503")], grpc.StatusCode.UNAVAILABLE),
                     ([("x-test-status", "500")], grpc.StatusCode.INTERNAL),
                     ([("x-test-status", "504")], grpc.StatusCode.DEADLINE_EXCEEDED),
                     ([("x-test-grpc-status", "8")], grpc.StatusCode.RESOURCE_EXHAUSTED),
                     ([("x-test-status", "200")], grpc.StatusCode.OK)]:
        code, details = grpc_code(s.ModelInfer, req, metadata=md, timeout=10)
        assert code == want, (md, code, details)
    ch.close()
    c = H2Client(m.port)
    grpc_h = [("content-type", "application/grpc"), ("te", "trailers")]
    sid = c.request(grpc_stubs.SERVICE + "ModelInfer", grpc_stubs.frame(req),
                    grpc_h + [("x-test-status", "503")])
    r = c.response(sid)
    assert r["frames"] == ["headers"] and r["ended"], r
    assert r["headers"][":status"] == "200" and r["headers"]["grpc-status"] == "14", r
    assert r["headers"]["content-type"] == "application/grpc" and r["headers"]["grpc-message"]
    sid = c.request(grpc_stubs.SERVICE + "ModelInfer", grpc_stubs.frame(req), grpc_h)
    r = c.response(sid)
    assert r["frames"] == ["headers", "data", "trailers"], r
    assert r["trailers"]["grpc-status"] == "0"
    out = pb.ModelInferResponse.FromString(grpc_stubs.unframe(r["data"])[0])
    assert list(out.outputs[0].contents.bytes_contents) == [b"versionerr"]
    sid = c.request(grpc_stubs.SERVICE + "ModelInfer", b"\x00\x00\x00\x00\x09ab", grpc_h)
    assert c.response(sid)["headers"]["grpc-status"] == "13"
    # a broken server: the answer ends with its DATA, no trailers
    sid = c.request(grpc_stubs.SERVICE + "ModelInfer", grpc_stubs.frame(req),
                    grpc_h + [("x-test-grpc-no-trailers", "1")])
    r = c.response(sid)
    assert r["frames"] == ["headers", "data"] and r["ended"] and r["trailers"] is None, r
    pb, s, ch = stub(m.port)
    code, details = grpc_code(s.ModelInfer, req, metadata=[("x-test-grpc-no-trailers", "1")],
                              timeout=10)
    assert code != grpc.StatusCode.OK, (code, details)
    ch.close()
    for args, want in [(("--error-rate", "1"), grpc.StatusCode.INTERNAL),
                       (("--grpc-status", "14"), grpc.StatusCode.UNAVAILABLE)]:
        e = Model("versionerr", *args, check_exit=True)
        pb, s, ch = stub(e.port)
        for _ in range(3):
            code, details = grpc_code(s.ModelInfer, req, timeout=10)
            assert code == want, (args, code, details)
            assert "versionerr" in details
        ch.close()
        if args[0] == "--error-rate":
            # its HTTP/2 twin: a 500 with the JSON answer
            code, ver, fields, body = curl_h2(e.port, INFER, BODY)
            assert (code, ver, json.loads(body)["status"]) == (500, "2", 500)


def test_idle_close_over_h2():
    """--idle-close-max-ms closes an HTTP/2 connection that went idle after
    an answer (as it does HTTP/1.1 keep-alive connections), on evhttp and
    on --fast; a delayed gRPC answer (a timer's output) still goes out."""
    for args in [(), ("--fast",)]:
        m = Model("versionidle", "--idle-close-max-ms", "100", *args, check_exit=not args)
        c = H2Client(m.port)
        r = c.response(c.request(INFER, BODY))
        assert r["headers"][":status"] == "200"
        assert c.wait_closed(timeout=10), "the idle connection stayed open"
        pb, s, ch = stub(m.port)
        out = s.ModelInfer(infer_request(pb, model_name="m"), timeout=10,
                           metadata=[("x-test-delay-ms", "50")])
        assert list(out.outputs[0].contents.bytes_contents) == [b"versionidle"]
        ch.close()


def h2load(port, path, n, extra=(), data=None):
    """h2load over prior knowledge; its "requests:" line as a dict."""
    cmd = ["h2load", "-n", str(n), "-c", "2", "-m", "10", "-t", "1"] + list(extra)
    if data is not None:
        cmd += ["-d", data]
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    assert m, out
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    keys = ("total", "started", "done", "succeeded", "failed", "errored")
    res = dict(zip(keys, map(int, m.groups())))
    res["2xx"] = int(st.group(1))
    return res, out


def test_h2load_many_concurrent_streams():
    """h2load with 2 connections of 10 concurrent streams each: all 200
    POSTs succeed, and as many gRPC ModelInfer calls, on the evhttp server
    and on --fast; the model counts each exactly."""
    d = tmpdir()
    body = os.path.join(d, "body")
    with open(body, "wb") as f:
        f.write(BODY)
    pb, _ = grpc_stubs.load()
    call = os.path.join(d, "call")
    with open(call, "wb") as f:
        f.write(grpc_stubs.frame(infer_request(pb, model_name="m")))
    grpc_h = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for args in [(), ("--fast",)]:
        m = Model("versionload", *args, check_exit=not args)
        res, out = h2load(m.port, INFER, 200, data=body)
        assert (res["succeeded"], res["failed"], res["errored"], res["2xx"]) == (200, 0, 0, 200), out
        res, out = h2load(m.port, grpc_stubs.SERVICE + "ModelInfer", 200, grpc_h, data=call)
        assert (res["succeeded"], res["failed"], res["errored"], res["2xx"]) == (200, 0, 0, 200), out
        if not args:
            assert m.stats()["requests"] == 400
        code, ver, fields, got = curl_h2(m.port, INFER, BODY)
        assert (code, ver, fields["x-model-version"]) == (200, "2", "versionload")
        r = requests.post("http://%s%s" % (m.addr, INFER), data=BODY, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == "versionload"


def test_preface_and_http1_split_across_writes():
    """The sniffer decides on whole evidence: an HTTP/2 preface sent in
    pieces ("PR", then "I * HTTP/2.0...") is HTTP/2; an HTTP/1.1 request
    sent as "P" then "OST ..." stays HTTP/1.1. On evhttp and on --fast."""
    for args in [(), ("--fast",)]:
        m = Model("versionsplit", *args, check_exit=not args)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                   header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "http"),
                              (":authority", m.addr), (":path", "/split")], end_stream=True)
        data = conn.data_to_send()
        s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in (data[:2], data[2:3], data[3:30], data[30:]):
            s.sendall(piece)
            time.sleep(0.05)
        got, status, body = False, None, b""
        while not got:
            d = s.recv(65536)
            assert d, "closed before the answer"
            for ev in conn.receive_data(d):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[":status"]
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    got = True
            s.sendall(conn.data_to_send())
        s.close()
        assert status == "200" and json.loads(body)["version"] == "versionsplit", (status, body)
        s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = b"POST /split HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        for piece in (req[:1], req[1:3], req[3:]):
            s.sendall(piece)
            time.sleep(0.05)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
        s.close()
        assert out.startswith(b"HTTP/1.1 200"), out[:200]
        assert b'"version":"versionsplit"' in out


def test_goaway_after_n_streams():
    """sluice-model --h2-goaway-after 3 (h2fn item 2's graceful shutdown):
    h2load's five streams on one connection: a GOAWAY after the third, so
    3 are answered and 2 not processed (h2load counts them failed), and
    the model server counts 3 requests. (python3-h2 cannot take answers
    after a GOAWAY, so h2load is the client here.)"""
    m = Model("m", "--h2-goaway-after", "3", "--latency-ms", "100")
    r = subprocess.run(["h2load", "-n", "5", "-c", "1", "-m", "5",
                        "http://%s%s" % (m.addr, INFER)], capture_output=True, text=True,
                       timeout=30)
    assert "5 done, 3 succeeded, 2 failed" in r.stdout and "3 2xx" in r.stdout, r.stdout
    assert m.stats()["requests"] == 3
