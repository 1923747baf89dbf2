#!/usr/bin/python3
"""HTTP/2 and gRPC benchmark: h2load against the model server alone, nginx
and HAProxy (and sluice, once its listeners speak HTTP/2: --sluice), in
front of the same two model servers (versiona 90 %, versionb 10 %).

Scenarios, each over HTTP/2 with prior knowledge (h2c), the same load for
every target (h2load -c CONNS -m STREAMS for --duration seconds):
  h2 POST     a ~200-byte JSON POST to the scoring path; nginx proxies it
              to the models over HTTP/1.1 (its proxy_pass has no HTTP/2),
              HAProxy over HTTP/2 (proto h2), sluice as its config says
  gRPC infer  inference.GRPCInferenceService/ModelInfer with a fixed
              length-prefixed ModelInferRequest (model_name "bench", one
              FP32 input); nginx grpc_pass, HAProxy proto h2, both HTTP/2
              to the models
A "direct" run sends each scenario straight to one model server, in the
same rotation: the ceiling the backend allows; a warning is printed when
it is under twice the fastest proxy. Runs are interleaved over --rounds
(the order rotates each round); medians are printed: requests per second,
p50 and p99 request time, CPU per request of the proxy's and of the models'
process trees, peak RSS, each with its ratio to nginx. h2load counts a
2xx answer as a success; gRPC failures (grpc-status in trailers) are not
seen by it, the proxies' correctness is the tests' business.

Sluice's column: --sluice (or SLUICE_H2=1) adds it: HTTP/2 on both sides
(SPEC §9), with key auth, the 90/10 split and Redis metrics on (a
redis-server is started for it); --sluice-plain drops auth and metrics.
Every proxy checks the same Authorization value (nginx and HAProxy with one
string comparison, so they do no more than they must), and every target
gets it. nginx and HAProxy add X-Forwarded-For, as in bench.py's HTTP/1.1
configs. Latency: p50 and p99 from h2load's per-request log (--log-file).

--equal adds two more targets, nginx-eq and haproxy-eq: the same proxies
made to add what Sluice must add to every exchange (SPEC §3.5, §10):
X-Forwarded-Proto, X-Request-Id, X-Sluice-Version, X-Sluice-Group and a
traceparent to the request; X-Request-Id, X-Sluice-Version and
X-Sluice-Group to the response. Over HTTP/2 each such field is HPACK work
on both sides (a unique value is Huffman-coded every time), so this
column shows what the same job costs them.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (spawn, start_model, cpu and RSS readers)

SCORE = "/api/v1/service/bench/score"
INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
KEY = "bench-primary-key-0123456789abcdef"
AUTH = "Bearer " + KEY


def pb_key(field, wt):
    return pb_varint(field << 3 | wt)


def pb_varint(v):
    out = b""
    while True:
        b = v & 0x7f
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def pb_len(field, data):
    return pb_key(field, 2) + pb_varint(len(data)) + data


def infer_call(model):
    """A length-prefixed ModelInferRequest: model_name, one FP32 input of
    shape [1] with contents [0.5] (field numbers of tests/proto)."""
    contents = pb_len(6, struct.pack("<f", 0.5))                 # fp32_contents, packed
    tensor = pb_len(1, b"x") + pb_len(2, b"FP32") + pb_len(3, pb_varint(1)) + \
        pb_len(5, contents)
    msg = pb_len(1, model.encode()) + pb_len(5, tensor)
    return struct.pack(">BI", 0, len(msg)) + msg


# What Sluice adds to every exchange (SPEC §3.5, §10), for the "-eq" targets:
# the same header names with values of the same shape. Group and version
# are fixed strings there (neither proxy knows the split's meaning).
NGINX_EQ_REQUEST = """
            %(set)s X-Forwarded-Proto $scheme;
            %(set)s X-Request-Id $request_id;
            %(set)s X-Sluice-Version versiona;
            %(set)s X-Sluice-Group control;
            %(set)s traceparent 00-$request_id-$span_id-01;"""
NGINX_EQ_RESPONSE = """
            add_header X-Request-Id $request_id always;
            add_header X-Sluice-Version versiona always;
            add_header X-Sluice-Group control always;"""


def start_nginx_h2(d, models, equal=False):
    """equal: the "-eq" target, which also adds what Sluice adds."""
    name = "nginx-eq" if equal else "nginx"
    port = B.free_port()
    conf = os.path.join(d, "%s-h2.conf" % name)
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
worker_rlimit_nofile 8292;
pid %(d)s/%(name)s-h2.pid;
error_log %(d)s/%(name)s-h2-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/nginx-body;
    proxy_temp_path %(d)s/nginx-proxy;
    http2_max_concurrent_streams 256;
    http2_max_requests 1000000;
    upstream models {
        server %(a)s weight=9;
        server %(b)s weight=1;
        keepalive 128;
    }
    map $http_authorization $denied { "%(auth)s" 0; default 1; }
    map $request_id $span_id { "~^(?<s>.{16})" $s; }
    # its own pool: a kept HTTP/1.1 connection must not carry gRPC
    upstream grpcmodels {
        server %(a)s weight=9;
        server %(b)s weight=1;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:%(port)d http2;
        keepalive_requests 1000000;
        location /inference.GRPCInferenceService/ {
            if ($denied) { return 401; }
            grpc_pass grpc://grpcmodels;
            grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;%(grpc_eq)s%(resp_eq)s
        }
        location / {
            if ($denied) { return 401; }
            proxy_pass http://models;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;%(proxy_eq)s%(resp_eq)s
        }
    }
}
""" % dict(d=d, a=models[0], b=models[1], port=port, auth=AUTH, name=name,
           grpc_eq=NGINX_EQ_REQUEST % dict(set="grpc_set_header") if equal else "",
           proxy_eq=NGINX_EQ_REQUEST % dict(set="proxy_set_header") if equal else "",
           resp_eq=NGINX_EQ_RESPONSE if equal else ""))
    p = B.spawn(["nginx", "-c", conf, "-p", d, "-g", "daemon off;"],
                open(os.path.join(d, "%s-h2.log" % name), "w"))
    B.wait_port(port)
    return B.Proxy(name, p, port, None)


HAPROXY_EQ_FRONTEND = """
    unique-id-format %[uuid,regsub(-,,g)]
    unique-id-header X-Request-Id
    http-request set-header X-Forwarded-Proto http
    http-request set-header traceparent 00-%[unique-id]-%[rand,bytes(0,8),hex,lower]-01
    http-response set-header X-Request-Id %[unique-id]
    http-response set-header X-Sluice-Version %[srv_name]
    http-response set-header X-Sluice-Group control"""
HAPROXY_EQ_BACKEND = """
    http-send-name-header X-Sluice-Version
    http-request set-header X-Sluice-Group control"""


def start_haproxy_h2(d, models, equal=False):
    """equal: the "-eq" target, which also adds what Sluice adds."""
    name = "haproxy-eq" if equal else "haproxy"
    port = B.free_port()
    conf = os.path.join(d, "%s-h2.cfg" % name)
    with open(conf, "w") as f:
        f.write("""
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:%(port)d proto h2
    http-request deny deny_status 401 unless { req.hdr(authorization) -m str "%(auth)s" }
    option forwardfor%(fe_eq)s
    default_backend models
backend models
    balance roundrobin
    http-reuse always%(be_eq)s
    server versiona %(a)s weight 90 proto h2
    server versionb %(b)s weight 10 proto h2
""" % dict(a=models[0], b=models[1], port=port, auth=AUTH,
           fe_eq=HAPROXY_EQ_FRONTEND if equal else "", be_eq=HAPROXY_EQ_BACKEND if equal else ""))
    p = B.spawn(["haproxy", "-f", conf, "-db"], open(os.path.join(d, "%s-h2.log" % name), "w"))
    B.wait_port(port)
    return B.Proxy(name, p, port, None)


def start_sluice_h2(d, models, redis_port=None):
    """Sluice over HTTP/2 on both sides (SPEC §9). The gRPC calls name the
    endpoint "bench" in model_name. redis_port: key auth and Redis metrics
    on (the issue's "auth + split + metrics"); None: neither."""
    port, admin = B.free_port(), B.free_port()
    versions = [
        {"name": "versiona", "upstreams": [models[0]], "traffic_percentile": 90,
         "is_default": True, "type": "control", "upstream_protocol": "http2"},
        {"name": "versionb", "upstreams": [models[1]], "traffic_percentile": 10,
         "upstream_protocol": "http2"},
    ]
    cfg = {"workers": 1,
           "listeners": [{"address": "127.0.0.1:%d" % port}],
           "admin": {"address": "127.0.0.1:%d" % admin},
           "log": {"access_log": "off"},
           "endpoints": [{"name": "bench", "auth": {"keys": False}, "versions": versions}]}
    if redis_port:
        cfg["endpoints"][0]["auth"] = {"keys": True}
        cfg["endpoints"][0]["keys"] = {"primary": KEY,
                                       "secondary": "bench-secondary-key-0123456789abcd"}
        cfg["redis"] = {"address": "127.0.0.1:%d" % redis_port, "flush_interval_ms": 1000}
    path = os.path.join(d, "sluice-h2.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    p = B.spawn([B.SLUICE, "-c", path], open(os.path.join(d, "sluice-h2.log"), "w"))
    B.wait_port(port)
    return B.Proxy("sluice", p, port, None)


def parse_h2load(out):
    r = {"rps": 0.0, "mean_ms": None, "requests": 0, "errors": 0}
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored", out)
    if m:
        r["requests"] = int(m.group(4))
        r["errors"] = int(m.group(5)) + int(m.group(6))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] += int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if m:
        r["mean_ms"] = float(m.group(1)) * B.UNITS[m.group(2)]
    return r


def percentiles(log):
    """p50 and p99 (ms) of h2load's per-request log: start, status, us."""
    us = []
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3:
                us.append(int(parts[2]))
    if not us:
        return None, None
    us.sort()
    return us[len(us) // 2] / 1000.0, us[min(len(us) - 1, len(us) * 99 // 100)] / 1000.0


def run_h2load(proxy, path, data, headers, a, d):
    log = os.path.join(d, "h2load-requests.tsv")
    cmd = ["h2load", "-t", "1", "-c", str(a.connections), "-m", str(a.streams),
           "-D", str(a.duration), "--warm-up-time", "1", "-d", data,
           "--log-file", log, "-H", "authorization: " + AUTH] + headers
    models = [p.pid for p in B.MODEL_PROCS]
    own = [proxy.proc.pid] if proxy.name != B.DIRECT else []
    c0, m0 = B.cpu_seconds(own), B.cpu_seconds(models)
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (proxy.http_port, path)],
                         capture_output=True, text=True, timeout=a.duration + 60).stdout
    c1, m1 = B.cpu_seconds(own), B.cpu_seconds(models)
    r = parse_h2load(out)
    r["p50"], r["p99"] = percentiles(log)
    os.unlink(log)
    if r["requests"] == 0:
        r["out"] = out[-1500:]
    n = max(r["requests"], 1)
    r["cpu_us"] = (c1 - c0) * 1e6 / n if own else None
    r["model_cpu_us"] = (m1 - m0) * 1e6 / n
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--streams", type=int, default=16, help="concurrent streams per connection")
    ap.add_argument("--evhttp-model", action="store_true",
                    help="the full evhttp model server instead of --fast")
    ap.add_argument("--sluice", action="store_true", default=os.environ.get("SLUICE_H2") == "1",
                    help="add sluice (HTTP/2 on both sides, SPEC §9)")
    ap.add_argument("--sluice-plain", action="store_true",
                    help="sluice without key auth and Redis metrics")
    ap.add_argument("--targets", default="nginx,haproxy",
                    help="proxies besides direct (and sluice with --sluice): nginx, haproxy, "
                         "nginx-eq, haproxy-eq")
    ap.add_argument("--equal", action="store_true",
                    help="add the targets nginx-eq and haproxy-eq")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()
    if a.equal:
        a.targets += ",nginx-eq,haproxy-eq"

    d = tempfile.mkdtemp(prefix="sluice-bench-h2-")
    try:
        _, _, models = B.backends(d, fast=not a.evhttp_model)
        body = os.path.join(d, "body.json")
        with open(body, "w") as f:
            f.write(B.BODY)
        call = os.path.join(d, "infer.bin")
        with open(call, "wb") as f:
            f.write(infer_call("bench"))
        scen = [("h2 POST", SCORE, body, ["-H", "content-type: application/json"]),
                ("gRPC infer", INFER, call, GRPC_HEADERS)]
        starters = {"nginx": start_nginx_h2, "haproxy": start_haproxy_h2,
                    "nginx-eq": lambda d, m: start_nginx_h2(d, m, equal=True),
                    "haproxy-eq": lambda d, m: start_haproxy_h2(d, m, equal=True)}
        proxies = [starters[t](d, models) for t in a.targets.split(",") if t]
        if a.sluice:
            redis_port = None
            if not a.sluice_plain:
                redis_port = B.free_port()
                B.spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                         "--save", "", "--appendonly", "no"],
                        open(os.path.join(d, "redis.log"), "w"))
                B.wait_port(redis_port)
            proxies.append(start_sluice_h2(d, models, redis_port))
        direct = B.Proxy(B.DIRECT, B.MODEL_PROCS[0], int(models[0].rsplit(":", 1)[1]), None)
        targets = proxies + [direct]
        results = {}
        for rnd in range(a.rounds):
            for sname, path, data, headers in scen:
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for p in order:
                    r = run_h2load(p, path, data, headers, a, d)
                    results.setdefault((sname, p.name), []).append(r)
                    print("round %d  %-11s %-8s %10.0f req/s  p50 %6.2f ms  p99 %6.2f ms  "
                          "cpu %6s us/req  model %6s us/req  errors %d" % (
                              rnd + 1, sname, p.name, r["rps"], r["p50"] or -1, r["p99"] or -1,
                              B.fmt(r["cpu_us"], 0, 1), B.fmt(r["model_cpu_us"], 0, 1),
                              r["errors"]), flush=True)
                    if "out" in r:
                        print(r["out"])
        rss = {p.name: B.peak_rss_kib(p.proc.pid) for p in targets}

        def med(runs, k):
            vals = [x[k] for x in runs if x.get(k) is not None]
            return statistics.median(vals) if vals else float("nan")

        print("\nMedians over %d rounds of %d s, h2load -c %d -m %d, one worker each; "
              "ratio to nginx in ()" % (a.rounds, a.duration, a.connections, a.streams))
        print("backend: %s" % ("evhttp model" if a.evhttp_model else "sluice-model --fast"))
        warnings, summary = [], {}
        for sname, _, _, _ in scen:
            print("\n%s" % sname)
            print("  %-10s %18s %16s %16s %16s %18s %9s %7s" % (
                "target", "req/s", "p50 ms", "p99 ms", "peak RSS MiB", "cpu us/req",
                "model us", "errors"))
            have_nginx = (sname, "nginx") in results
            base = {k: med(results[(sname, "nginx")], k) if have_nginx else None
                    for k in ("rps", "p50", "p99", "cpu_us")}
            for p in targets:
                runs = results[(sname, p.name)]
                m = {k: med(runs, k) for k in ("rps", "p50", "p99", "cpu_us", "model_cpu_us")}
                mib = rss[p.name] / 1024.0
                summary["%s|%s" % (sname, p.name)] = dict(m, peak_rss_mib=mib)
                print("  %-10s %10.0f %s %8.2f %s %8.2f %s %8.1f %s %10s %s %9s %7d" % (
                    p.name, m["rps"], B.ratio(m["rps"], base["rps"]), m["p50"],
                    B.ratio(m["p50"], base["p50"]), m["p99"], B.ratio(m["p99"], base["p99"]),
                    mib,
                    B.ratio(mib, rss["nginx"] / 1024.0 if have_nginx else None),
                    B.fmt(m["cpu_us"], 10, 1), B.ratio(m["cpu_us"], base["cpu_us"]),
                    B.fmt(m["model_cpu_us"], 9, 1), sum(x["errors"] for x in runs)))
            if proxies:
                fastest = max(proxies, key=lambda p: med(results[(sname, p.name)], "rps"))
                f_rps = med(results[(sname, fastest.name)], "rps")
                d_rps = med(results[(sname, B.DIRECT)], "rps")
                d_cpu = med(results[(sname, B.DIRECT)], "model_cpu_us")
                print("  direct / fastest proxy (%s): %.2fx; model capacity %.0f req/s per core"
                      % (fastest.name, d_rps / f_rps, 1e6 / d_cpu if d_cpu else float("nan")))
                if not d_rps >= 2 * f_rps:
                    warnings.append("%s: direct %.0f req/s < 2 x %s %.0f req/s"
                                    % (sname, d_rps, fastest.name, f_rps))
        B.report_end(warnings, a.json, results, summary, rss)
    except RuntimeError:
        B.show_logs(d)
        raise
    finally:
        B.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
