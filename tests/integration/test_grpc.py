"""gRPC through Sluice (SPEC §9, issue 19 items 4 and 6): an unchanged
grpcio client of the Open Inference Protocol (stubs generated from
tests/proto at test time) against one endpoint with two versions served
by sluice-model over HTTP/2. Asserts on what the client sees (status
codes, the output tensor naming the version), the access log (protocol,
grpc_status) and the model servers' counts."""
import json
import os
import time

import grpc
import requests

import grpc_stubs
from h2client import H2Client
from harness import Model, Redis, Sluice, endpoint, until, version

EP = "fraudmodel"


def infer_request(pb, **kw):
    t = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[0.5]))
    return pb.ModelInferRequest(inputs=[t], **kw)


def stub(port):
    pb, rpc = grpc_stubs.load()
    ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    return pb, rpc.GRPCInferenceServiceStub(ch), ch


def code_of(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def grpc_versions(a, b, pct_b, **kw):
    return [endpoint(EP, [
        version("versiona", [a.addr], 100 - pct_b, is_default=True, type="control",
                upstream_protocol="http2"),
        version("versionb", [b.addr], pct_b, upstream_protocol="http2")], **kw)]


def test_unchanged_client_split_exact():
    """issue 19 item 6: ModelInfer with model_name = the endpoint, 100 calls
    from an unchanged grpcio client: every one OK, the output tensor names
    the version that answered, the split exact (30 to versionb), each
    logged as HTTP/2 with grpc_status 0, and nothing else reached a model."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(grpc_versions(a, b, 30))
    pb, st, ch = stub(s.port)
    seen = {}
    try:
        for i in range(100):
            out, call = st.ModelInfer.with_call(infer_request(pb, model_name=EP, id="r%d" % i),
                                                timeout=10)
            v = out.outputs[0].contents.bytes_contents[0].decode()
            seen[v] = seen.get(v, 0) + 1
            md = dict(call.initial_metadata())
            assert md["x-sluice-version"] == v and md["x-sluice-group"] in ("control",
                                                                            "treatment")
            assert out.model_name == EP and out.id == "r%d" % i
    finally:
        ch.close()
    assert seen == {"versiona": 70, "versionb": 30}, seen
    lines = s.access_lines()
    assert len(lines) == 100
    assert all(l["protocol"] == "HTTP/2" and l["grpc_status"] == 0 and l["status"] == 200
               for l in lines), lines[:2]
    assert a.stats()["requests"] == 70 and b.stats()["requests"] == 30


def test_health_names_and_metadata():
    """ServerLive and ServerReady without x-sluice-endpoint are answered by
    Sluice (no model server sees them); ModelReady and ModelMetadata are
    routed by their name field; another service is routed by the
    x-sluice-endpoint metadata; an unknown model name is NOT_FOUND and a
    service without the metadata too."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(grpc_versions(a, b, 0))
    pb, st, ch = stub(s.port)
    try:
        assert st.ServerLive(pb.ServerLiveRequest(), timeout=10).live is True
        assert st.ServerReady(pb.ServerReadyRequest(), timeout=10).ready is True
        assert a.stats()["requests"] == 0
        assert st.ModelReady(pb.ModelReadyRequest(name=EP), timeout=10).ready is True
        md = st.ModelMetadata(pb.ModelMetadataRequest(name=EP), timeout=10)
        assert list(md.versions) == ["versiona"]
        out = st.ModelInfer(infer_request(pb, model_name="whatever"), timeout=10,
                            metadata=[("x-sluice-endpoint", EP)])
        assert out.outputs[0].contents.bytes_contents == [b"versiona"]
        code, details = code_of(st.ModelInfer, infer_request(pb, model_name="nosuchmodel"),
                                timeout=10)
        assert code == grpc.StatusCode.NOT_FOUND and "nosuchmodel" in details, (code, details)
        other = ch.unary_unary("/other.Service/Method")
        code, _ = code_of(other, b"", timeout=10)
        assert code == grpc.StatusCode.NOT_FOUND, code
    finally:
        ch.close()
    assert a.stats()["requests"] == 3 and b.stats()["requests"] == 0


def test_auth_and_http1_version_errors():
    """Sluice's own errors reach a gRPC client as Trailers-Only with the
    matching code: no key → UNAUTHENTICATED, the key in the metadata → OK;
    a version without upstream_protocol http2 → UNAVAILABLE (a gRPC call
    needs HTTP/2 to its model server)."""
    a, b = Model("versiona"), Model("versionb")
    eps = grpc_versions(a, b, 0)
    eps[0]["auth"] = {"keys": True}
    eps[0]["keys"] = {"primary": "k-primary-0123456789"}
    eps.append(endpoint("plainmodel", [version("versionc", [a.addr], 100, is_default=True,
                                               type="control")]))
    s = Sluice(eps)
    pb, st, ch = stub(s.port)
    try:
        code, _ = code_of(st.ModelInfer, infer_request(pb, model_name=EP), timeout=10)
        assert code == grpc.StatusCode.UNAUTHENTICATED, code
        out = st.ModelInfer(infer_request(pb, model_name=EP), timeout=10,
                            metadata=[("authorization", "Bearer k-primary-0123456789")])
        assert out.outputs[0].contents.bytes_contents == [b"versiona"]
        code, details = code_of(st.ModelInfer, infer_request(pb, model_name="plainmodel"),
                                timeout=10)
        assert code == grpc.StatusCode.UNAVAILABLE and "http2" in details, (code, details)
    finally:
        ch.close()
    c = H2Client(s.port)
    sid = c.request(grpc_stubs.SERVICE + "ModelInfer",
                    grpc_stubs.frame(infer_request(pb, model_name=EP)),
                    [("content-type", "application/grpc"), ("te", "trailers")])
    r = c.response(sid)
    c.close()
    assert r["frames"] == ["headers"] and r["headers"]["grpc-status"] == "16", r
    grpc_lines = [l for l in s.access_lines() if "grpc_status" in l]
    assert [l["grpc_status"] for l in grpc_lines] == [16, 0, 14, 16], grpc_lines


def test_upstream_errors_counted_by_grpc_status():
    """A version whose model server answers UNAVAILABLE: the client gets
    UNAVAILABLE (trailers relayed), the call is logged with grpc_status 14
    and counted as a 5xx in /metrics, the healthy version's as 2xx."""
    a = Model("versiona")
    b = Model("versionb", "--grpc-status", "14")
    s = Sluice(grpc_versions(a, b, 50))
    pb, st, ch = stub(s.port)
    codes = {}
    try:
        for _ in range(20):
            code, _ = code_of(st.ModelInfer, infer_request(pb, model_name=EP), timeout=10)
            codes[code] = codes.get(code, 0) + 1
    finally:
        ch.close()
    assert codes == {grpc.StatusCode.OK: 10, grpc.StatusCode.UNAVAILABLE: 10}, codes
    by = {}
    for l in s.access_lines():
        by[(l["version"], l["grpc_status"])] = by.get((l["version"], l["grpc_status"]), 0) + 1
    assert by == {("versiona", 0): 10, ("versionb", 14): 10}, by
    m = requests.get(s.admin("/metrics"), timeout=5).text
    assert ('sluice_requests_total{endpoint="%s",version="versionb",group="treatment",'
            'status="5xx"} 10' % EP) in m, m[:3000]
    assert ('sluice_requests_total{endpoint="%s",version="versiona",group="control",'
            'status="2xx"} 10' % EP) in m


def test_grpc_timeout_deadline():
    """grpc-timeout is honoured: a model that takes 1.5 s and a client
    deadline of 0.3 s give DEADLINE_EXCEEDED from Sluice's side (logged
    upstream_timeout), well before scoring_timeout_ms."""
    a = Model("versiona", "--latency-ms", "1500")
    s = Sluice(grpc_versions(a, a, 0, scoring_timeout_ms=10000))
    pb, st, ch = stub(s.port)
    try:
        code, _ = code_of(st.ModelInfer, infer_request(pb, model_name=EP), timeout=0.3)
    finally:
        ch.close()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, code
    until(lambda: len(s.access_lines(0)) == 1, 5, "the call logged")
    line = s.access_lines(0)[0]
    assert line["error"] in ("upstream_timeout", "client_closed", "client_error"), line


def test_rest_v2_infer_urls():
    """The Open Inference Protocol's REST scoring URL: /v2/models/{ep}/infer
    forwarded with its path unchanged (the model sees it), and
    /v2/models/{ep}/versions/{v}/infer pins the version."""
    a, b = Model("versiona"), Model("versionb")
    s = Sluice(grpc_versions(a, b, 50))
    base = "http://127.0.0.1:%d/v2/models/%s" % (s.port, EP)
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
    for _ in range(4):
        r = requests.post(base + "/infer", json=body, timeout=10)
        assert r.status_code == 200 and r.json()["uri"] == "/v2/models/%s/infer" % EP, r.text
    for _ in range(3):
        r = requests.post(base + "/versions/versionb/infer", json=body, timeout=10)
        assert r.status_code == 200 and r.headers["X-Sluice-Version"] == "versionb"
        assert r.json()["uri"] == "/v2/models/%s/versions/versionb/infer" % EP
    r = requests.post(base + "/versions/nosuch/infer", json=body, timeout=10)
    assert r.status_code == 404
    r = requests.post("http://127.0.0.1:%d/v2/models/nosuch/infer" % s.port, json=body,
                      timeout=10)
    assert r.status_code == 404
    assert a.stats()["requests"] + b.stats()["requests"] == 7


def test_grpc_rollout_unavailable_version_rolled_back():
    """issue 19 item 6: a progressive rollout driven by gRPC traffic alone.
    Two versions behind one endpoint, an unchanged grpcio client calling
    ModelInfer with model_name = the endpoint; the new version answers
    UNAVAILABLE to a fifth of its calls, which counts as 5xx (SPEC §9), so
    the gate rolls it back at its first step and no call reaches it after."""
    import test_rollout as tr
    r = Redis()
    a = Model("versiona", *tr.STEADY)
    b = Model("versionb", "--error-rate", "0.2", "--grpc-status", "14", *tr.STEADY)
    vb = version("versionb", [b.addr], 0, upstream_protocol="http2",
                 rollout=tr.plan(min_requests=100))
    s = Sluice([endpoint(tr.EP, [
        version("versiona", [a.addr], 0, is_default=True, type="control",
                upstream_protocol="http2"), vb])],
        extra={"redis": {"address": "127.0.0.1:%d" % r.port, "flush_interval_ms": 100},
               "admin": {"token": "adm-secret-token"}})
    pb, rpc = grpc_stubs.load()
    stop = [False]
    served = {}

    def traffic():
        ch = grpc.insecure_channel("127.0.0.1:%d" % s.port)
        st = rpc.GRPCInferenceServiceStub(ch)
        while not stop[0]:
            try:
                out, call = st.ModelInfer.with_call(infer_request(pb, model_name=tr.EP),
                                                    timeout=10)
                v = out.outputs[0].contents.bytes_contents[0].decode()
            except grpc.RpcError as e:
                md = dict(e.initial_metadata() or ())
                md.update(dict(e.trailing_metadata() or ()))    # Trailers-Only
                v = md.get("x-sluice-version", "error")
            served[v] = served.get(v, 0) + 1
        ch.close()
    import threading
    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert tr.act(s, "start").status_code == 200
        st = tr.until_state(s, lambda st: st["phase"] != "running", 60, "the rollback")
        assert st["phase"] == "rolled_back" and st["traffic_percentile"] == 0, st
        assert "error rate" in st["reason"], st
        assert served.get("versionb", 0) > 0, served      # it did get calls at its step
        time.sleep(0.5)
        served.clear()
        until(lambda: served.get("versiona", 0) >= 200, 60, "calls after the rollback")
        assert served.get("versionb", 0) == 0, served
    finally:
        stop[0] = True
        for t in threads:
            t.join()
    lines = s.access_lines()
    assert any(l["version"] == "versionb" and l.get("grpc_status") == 14 for l in lines)
