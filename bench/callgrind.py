#!/usr/bin/python3
"""Instructions per request for each sluice variant, under callgrind.

Throughput on this shared two-core machine moves by +-15 % from run to run,
far more than the few per cent a feature costs. Instruction counts do not:
callgrind counts the same instructions for the same binary and input. This
runs sluice (one worker) under callgrind for each variant of bench.py,
warms it up, zeroes the counters, sends N keep-alive requests from one
client, dumps, and prints user-space instructions per request and the
ratio to the plain core. (System calls are the same for every variant:
one read and one write on each side.)

h2 and grpc: HTTP/2 on both sides with key auth, the split and Redis
metrics on (bench/h2.py's Sluice), h2load sending N requests over 8
connections of 16 concurrent streams (an h2 POST of the same body, or a
gRPC ModelInfer). Under callgrind the gateway is slow, so more streams
arrive per read than at full speed: a figure to compare builds with, not
absolute.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests", "integration"))
import bench  # noqa: E402
import h2 as H2  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

import requests  # noqa: E402


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in " + path)


# tracing001, tracing1: the core variant with "tracing" exporting to a local
# OTLP receiver (otlp_receiver.py, in this process) at sample_ratio 0.01 and
# 1; the export's own work on the main thread is counted too.
TRACING = {"tracing001": 0.01, "tracing1": 1.0}


def run_h2_variant(d, variant, models, redis_port, n):
    """h2 / grpc: h2load sends n requests (after a warm-up run)."""
    out = os.path.join(d, "cg-%s.out" % variant)
    wrap = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
    proxy = start_h2_under(d, models, redis_port, wrap)
    if variant == "grpc":
        path, data, headers = H2.INFER, os.path.join(d, "infer.bin"), H2.GRPC_HEADERS
        with open(data, "wb") as f:
            f.write(H2.infer_call("bench"))
    else:
        path, data = "/api/v1/service/bench/score", os.path.join(d, "body.json")
        headers = ["-H", "content-type: application/json"]
        with open(data, "w") as f:
            f.write(bench.BODY)
    url = "http://127.0.0.1:%d%s" % (proxy.http_port, path)

    def load(k):
        r = subprocess.run(["h2load", "-t", "1", "-c", "8", "-m", "16", "-n", str(k), "-d", data,
                            "-H", "authorization: " + H2.AUTH] + headers + [url],
                           capture_output=True, text=True, timeout=600)
        res = H2.parse_h2load(r.stdout)
        assert res["requests"] == k and res["errors"] == 0, r.stdout[-800:]
    load(400)                                           # warm up: pools, caches
    time.sleep(1.2)
    subprocess.run(["callgrind_control", "-z", str(proxy.proc.pid)], capture_output=True,
                   check=True)
    load(n)
    subprocess.run(["callgrind_control", "-d", str(proxy.proc.pid)], capture_output=True,
                   check=True)
    proxy.proc.terminate()
    proxy.proc.wait(60)
    dumps = sorted(glob.glob(out + ".*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    if os.environ.get("CALLGRIND_KEEP"):
        shutil.copy(dumps[0], os.path.join(os.environ["CALLGRIND_KEEP"], "%s.callgrind" % variant))
    return total_ir(dumps[0]) / n


def start_h2_under(d, models, redis_port, wrap):
    """bench/h2.py's Sluice (auth, split, metrics) under callgrind."""
    real_spawn = bench.spawn

    def spawn(cmd, log):
        return real_spawn(wrap + cmd if cmd[:1] == [bench.SLUICE] else cmd, log)
    H2.B.spawn = spawn
    wait = bench.wait_port
    H2.B.wait_port = lambda port, timeout=60: wait(port, timeout=60)
    try:
        return H2.start_sluice_h2(d, models, redis_port)
    finally:
        H2.B.spawn = real_spawn
        H2.B.wait_port = wait


def run_variant(d, variant, models, cert, key, redis_port, n, otlp=None):
    if variant in ("h2", "grpc"):
        return run_h2_variant(d, variant, models, redis_port, n)
    http, https, admin = bench.free_port(), bench.free_port(), bench.free_port()
    # pinned: the metrics variant with every request pinned to versionb
    # (X-Sluice-Version), so each is counted again in its pinned hashes.
    base = {"pinned": "metrics", "tracing001": "core", "tracing1": "core"}.get(variant, variant)
    ep, extra = bench.sluice_config(base, models, redis_port, d)
    if variant in TRACING:
        extra["tracing"] = {"otlp_endpoint": otlp, "sample_ratio": TRACING[variant]}
    cfg = {"workers": 1, "listeners": [{"address": "127.0.0.1:%d" % http}],
           "admin": {"address": "127.0.0.1:%d" % admin}, "log": {"access_log": "off"},
           "endpoints": [ep]}
    cfg.update(extra)
    cfg["admin"]["address"] = "127.0.0.1:%d" % admin
    if variant not in ("metrics", "pinned"):
        cfg["redis"] = {"address": "127.0.0.1:%d" % bench.free_port()}   # nobody there
    path = os.path.join(d, "cg-%s.json" % variant)
    with open(path, "w") as f:
        json.dump(cfg, f)
    out = os.path.join(d, "cg-%s.out" % variant)
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                          bench.SLUICE, "-c", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.wait_port(http, timeout=60)
    headers = {"Content-Type": "application/json"}
    if variant == "keys":
        headers["Authorization"] = "Bearer " + ep["keys"]["primary"]
    if variant == "token":
        req = urllib.request.Request("http://127.0.0.1:%d/admin/v1/endpoints/bench/token" % admin,
                                     method="POST", data=b"{}",
                                     headers={"Authorization": "Bearer bench-admin-token"})
        headers["Authorization"] = "Bearer " + json.loads(
            urllib.request.urlopen(req).read())["access_token"]
    url = "http://127.0.0.1:%d/api/v1/service/bench/score" % http
    with requests.Session() as s:
        def send(k, offset):
            for i in range(k):
                h = dict(headers)
                if variant == "routing":
                    h["X-User-Id"] = "user-%d" % (offset + i)
                if variant == "pinned":
                    h["X-Sluice-Version"] = "versionb"
                r = s.post(url, data=bench.BODY, headers=h)
                assert r.status_code == 200, r.text
        send(200, 0)                                    # warm up: pools, caches
        time.sleep(1.2)                                 # let a metrics flush pass
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, check=True)
        send(n, 1000)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, check=True)
    p.terminate()
    p.wait(60)
    # The dump taken after zeroing holds exactly the n requests.
    dumps = sorted(glob.glob(out + ".*"), key=lambda f: int(f.rsplit(".", 1)[1]))
    if os.environ.get("CALLGRIND_KEEP"):
        shutil.copy(dumps[0], os.path.join(os.environ["CALLGRIND_KEEP"], "%s.callgrind" % variant))
    return total_ir(dumps[0]) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--variants", default="core,routing,keys,token,metrics,pinned")
    # tracing cost (issue 21): --variants core,tracing001,tracing1
    # HTTP/2 and gRPC (issue 19): --variants h2,grpc
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="sluice-cg-")
    try:
        cert, key, models = bench.backends(d)
        redis_port = bench.free_port()
        bench.spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                     "--save", "", "--appendonly", "no"], open(os.path.join(d, "redis.log"), "w"))
        bench.wait_port(redis_port)
        res = {}
        otlp = OtlpReceiver() if any(v in TRACING for v in a.variants.split(",")) else None
        for v in a.variants.split(","):
            res[v] = run_variant(d, v, models, cert, key, redis_port, a.requests,
                                 otlp.url if otlp else None)
            print("%-10s %10.0f instructions per request" % (v, res[v]), flush=True)
        base = res.get("core")
        print("\nvariant    instructions/request   vs core")
        for v, ir in res.items():
            print("%-10s %20.0f   %+6.1f %%" % (v, ir, 100.0 * (ir / base - 1) if base else 0))
        if otlp is not None:
            print("\nOTLP receiver: %d spans in %d batches, %d errors" % (
                len(otlp.spans), len(otlp.batches), len(otlp.errors)))
    finally:
        if otlp is not None:
            otlp.close()
        bench.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
