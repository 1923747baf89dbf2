"""Shadow copies to HTTP/2 mirrors and of gRPC calls (SPEC §3.5, §4, §7,
§9; h2fn item 1): a mirror version with "upstream_protocol": "http2"
gets its copies as HTTP/2 requests, from HTTP/1.1 and HTTP/2 clients
alike, and gRPC calls are mirrored to HTTP/2 mirrors. Asserts on what the
clients see, the mirror model server's request count, and the exact shadow
counts in Redis and on /metrics."""
import os
import subprocess
import time

import grpc
import requests

import grpc_stubs
from harness import Model, Redis, Sluice, endpoint, until, version

EP = "ep1"
# The model echoes the request headers (X-Sluice-Group differs) and its
# --name: neither is the model's answer.
ECHO = ["headers", "version"]
COUNTED = ("requests", "status_2xx", "status_4xx", "status_5xx", "upstream_errors",
           "shadow_dropped", "cmp_total", "cmp_equal", "cmp_unknown")


def with_redis(versions, workers=1):
    redis = Redis()
    rc = {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100,
          "retention_minutes": 30}
    s = Sluice([endpoint(EP, versions)], workers=workers, extra={"redis": rc})
    return s, redis.client()


def counts(rc, key):
    h = rc.hgetall("sluice:{%s}:%s" % (EP, key))
    return {k: int(h.get(k, 0)) for k in COUNTED}


def wait_counts(rc, key, want, timeout=15):
    """The hash's counters once they equal want (then still, 0.3 s later)."""
    def same():
        got = counts(rc, key)
        return all(got[k] == v for k, v in want.items())
    until(same, timeout, "%s = %r" % (key, want), show=lambda: counts(rc, key))
    time.sleep(0.3)                 # nothing more may come
    got = counts(rc, key)
    assert all(got[k] == v for k, v in want.items()), (key, got, want)
    return got


def prom_shadow(s, version, status="2xx"):
    want = ('sluice_requests_total{endpoint="%s",version="%s",group="shadow",status="%s"} '
            % (EP, version, status))
    for line in requests.get(s.admin("/metrics"), timeout=5).text.splitlines():
        if line.startswith(want):
            return int(line.rsplit(" ", 1)[1])
    return 0


def curl_h2(s, body):
    path = os.path.join(s.dir, "body.json")
    with open(path, "wb") as f:
        f.write(body)
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                        "--http2-prior-knowledge", "--max-time", "20", "--data-binary",
                        "@" + path, s.url(EP)],
                       capture_output=True, text=True, timeout=25)
    return r.stdout.strip()


def test_http1_and_http2_clients_mirrored_to_an_http2_version():
    """h2fn item 1: a mirror version speaking HTTP/2 to its model server,
    mirror_percentile 50: 10 requests from an HTTP/1.1 client and 10 from
    curl --http2-prior-knowledge, two of them with bodies past the 64 KiB
    a copy holds before it streams, all answered by the live version; the
    mirror's model server gets exactly the 10 copies, each compared equal
    (so each arrived whole: its answer hashes the body), and Redis and
    /metrics count exactly 10 shadow requests, all 2xx. (Before, every
    copy to an http2 mirror failed: counted 502, never sent.)"""
    live, mirror = Model("live"), Model("mirror")
    s, rc = with_redis([
        version("live", [live.addr], 100, is_default=True, type="control"),
        version("mirror", [mirror.addr], 0, mirror_percentile=50, upstream_protocol="http2",
                compare={"mode": "json", "ignore": ECHO})])
    big = b'{"x":"' + b"y" * 200000 + b'"}'
    with requests.Session() as c:
        for i in range(10):
            r = c.post(s.url(EP), data=big if i == 3 else b'{"x":%d}' % i)
            assert r.status_code == 200 and r.headers["X-Sluice-Version"] == "live", r.text
    for i in range(10):
        assert curl_h2(s, big if i == 4 else b'{"y":%d}' % i) == "2 200", i
    want = {"requests": 10, "status_2xx": 10, "status_5xx": 0, "upstream_errors": 0,
            "shadow_dropped": 0, "cmp_total": 10, "cmp_equal": 10}
    wait_counts(rc, "total:mirror", want)
    wait_counts(rc, "group:shadow", {"requests": 10, "status_2xx": 10})
    assert mirror.stats()["requests"] == 10
    assert live.stats()["requests"] == 20
    assert counts(rc, "total:live")["requests"] == 20
    assert prom_shadow(s, "mirror") == 10 and prom_shadow(s, "mirror", "5xx") == 0


def grpc_stub(port):
    pb, rpc = grpc_stubs.load()
    ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    return pb, rpc.GRPCInferenceServiceStub(ch), ch


def infer_request(pb, i):
    t = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[i]))
    return pb.ModelInferRequest(model_name=EP, id="r%d" % i, inputs=[t])


def test_grpc_calls_mirrored_to_http2_versions_only():
    """h2fn item 1: ModelInfer from a grpcio client, 10 calls, to an
    endpoint with three mirrors at mirror_percentile 50: an http2 one (with
    compare configured), an http2 one whose model answers grpc-status 14,
    and an http1-only one. Every call is answered OK by the live version.
    The http2 mirrors' model servers get 5 copies each: the first counted
    2xx, the second 5xx (as its grpc-status maps, SPEC §9) though its HTTP
    status is 200; gRPC copies are not compared (README). The http1 mirror
    gets nothing: its 5 copies count as failed (502, upstream errors)."""
    live = Model("live")
    m2, bad, m1 = Model("mirror"), Model("mirrorbad", "--grpc-status", "14"), Model("mirror1")
    s, rc = with_redis([
        version("live", [live.addr], 100, is_default=True, type="control",
                upstream_protocol="http2"),
        version("mirror", [m2.addr], 0, mirror_percentile=50, upstream_protocol="http2",
                compare={"mode": "exact"}),
        version("mirrorbad", [bad.addr], 0, mirror_percentile=50, upstream_protocol="http2"),
        version("mirror1", [m1.addr], 0, mirror_percentile=50)])
    pb, stub, ch = grpc_stub(s.port)
    try:
        for i in range(10):
            out, call = stub.ModelInfer.with_call(infer_request(pb, i), timeout=10)
            assert out.outputs[0].contents.bytes_contents[0].decode() == "live"
            assert out.id == "r%d" % i
            md = dict(call.initial_metadata())
            assert md["x-sluice-version"] == "live" and md["x-sluice-group"] == "control"
    finally:
        ch.close()
    wait_counts(rc, "total:mirror", {"requests": 5, "status_2xx": 5, "status_5xx": 0,
                                     "upstream_errors": 0, "cmp_total": 0})
    wait_counts(rc, "total:mirrorbad", {"requests": 5, "status_2xx": 0, "status_5xx": 5,
                                        "upstream_errors": 0})
    wait_counts(rc, "total:mirror1", {"requests": 5, "status_5xx": 5, "upstream_errors": 5})
    wait_counts(rc, "group:shadow", {"requests": 15, "status_2xx": 5, "status_5xx": 10})
    assert m2.stats()["requests"] == 5 and bad.stats()["requests"] == 5
    assert m1.stats()["requests"] == 0
    assert live.stats()["requests"] == 10
    lines = s.access_lines()
    assert len(lines) == 10 and all(l["status"] == 200 and l["grpc_status"] == 0 and
                                    l["version"] == "live" for l in lines), lines[:2]
    assert prom_shadow(s, "mirror") == 5 and prom_shadow(s, "mirrorbad", "5xx") == 5


def test_shutdown_with_a_copy_in_flight_to_an_http2_mirror():
    """review finding 2 (perf changes, item 6: stream buffers from the
    worker's pool): sluice stops (SIGTERM, drain_timeout_ms 200) while a
    copy to an HTTP/2 mirror is in flight (its model server answers after
    5 s): it exits 0. The copy's request buffer went back to the worker's
    pool after the pool was emptied, a leak the sanitized build reports
    (exit 23)."""
    live, mirror = Model("live"), Model("mirror", "--latency-ms", "5000")
    s = Sluice([endpoint(EP, [
        version("live", [live.addr], 100, is_default=True, type="control"),
        version("mirror", [mirror.addr], 0, mirror_percentile=50, upstream_protocol="http2")])],
        limits={"drain_timeout_ms": 200})
    for i in range(2):              # one of the two is copied
        r = requests.post(s.url(EP), data=b'{"x":%d}' % i, timeout=5)
        assert r.status_code == 200 and r.headers["X-Sluice-Version"] == "live", r.text
    # the copy reached the mirror (counted when whole, before its delay)
    until(lambda: mirror.stats()["requests"] == 1, 5, "the copy at the mirror")
    assert s.stop() == 0
