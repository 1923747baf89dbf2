#!/usr/bin/python3
"""Benchmark sluice against nginx and HAProxy on the same model servers.

Each proxy runs with one worker in front of the same two model servers
(versiona 90 %, versionb 10 %). wrk drives each with the same load: a
keep-alive POST of a ~200-byte JSON body on 64 connections, over plain HTTP
and TLS, plus TLS with a new connection per request. Runs are interleaved
over several rounds (the proxy order rotates each round) and the medians are
printed, each also as a ratio to nginx.

Sluice variants (--variants) run sluice with extra features on, for the
issues whose performance targets compare against the plain core:
  core      the plain split (the default)
  routing   three versions and a sticky header
  keys      key authentication
  token     token authentication, one token per connection
  metrics   counting with a Redis writer
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
SLUICE = os.path.join(BUILD, "gateway", "sluice")
MODEL = os.path.join(BUILD, "tools", "sluice-model")
BODY = json.dumps({"model": "demo", "request_id": "bench-0000000001",
                   "features": [round(0.1 * i, 1) for i in range(30)],
                   "context": {"region": "eu-west", "tier": "gold"}})
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on %d" % port)


def spawn(cmd, log):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def tree_pids(pid):
    """pid and its children (nginx's workers)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(x) for x in out.split()]
    except OSError:
        pass
    return pids


def peak_rss_kib(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Proxy:
    def __init__(self, name, proc, http_port, https_port, auth=None):
        self.name, self.proc = name, proc
        self.http_port, self.https_port = http_port, https_port
        self.auth = auth                    # (header value) or None


def start_nginx(d, models, cert, key):
    http, https = free_port(), free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/nginx-body;
    proxy_temp_path %(d)s/nginx-proxy;
    upstream models {
        server %(a)s weight=9;
        server %(b)s weight=1;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:%(http)d;
        listen 127.0.0.1:%(https)d ssl;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        keepalive_requests 100000;
        location / {
            proxy_pass http://models;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
""" % dict(d=d, a=models[0], b=models[1], http=http, https=https, cert=cert, key=key))
    p = spawn(["nginx", "-c", conf, "-p", d, "-g", "daemon off;"],
              open(os.path.join(d, "nginx.log"), "w"))
    wait_port(http)
    return Proxy("nginx", p, http, https)


def start_haproxy(d, models, cert, key):
    http, https = free_port(), free_port()
    pem = os.path.join(d, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write("""
global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:%(http)d
    bind 127.0.0.1:%(https)d ssl crt %(pem)s alpn http/1.1
    option forwardfor
    default_backend models
backend models
    balance roundrobin
    http-reuse always
    server versiona %(a)s weight 90
    server versionb %(b)s weight 10
""" % dict(a=models[0], b=models[1], http=http, https=https, pem=pem))
    p = spawn(["haproxy", "-f", conf, "-db"], open(os.path.join(d, "haproxy.log"), "w"))
    wait_port(http)
    return Proxy("haproxy", p, http, https)


def sluice_config(variant, models, redis_port, d):
    versions = [
        {"name": "versiona", "upstreams": [models[0]], "traffic_percentile": 90,
         "is_default": True, "type": "control"},
        {"name": "versionb", "upstreams": [models[1]], "traffic_percentile": 10},
    ]
    ep = {"name": "bench", "auth": {"keys": False}, "versions": versions}
    extra = {}
    if variant == "routing":
        versions[0]["traffic_percentile"] = 80
        versions.append({"name": "versionc", "upstreams": [models[1]], "traffic_percentile": 10})
        ep["sticky"] = {"header": "X-User-Id"}
    if variant == "keys":
        ep["auth"] = {"keys": True}
        ep["keys"] = {"primary": "bench-primary-key-0123456789abcdef",
                      "secondary": "bench-secondary-key-0123456789abcd"}
    if variant == "token":
        ep["auth"] = {"keys": False, "tokens": True}
        extra["tokens"] = {"signing_key": "bench-signing-secret-0123456789abcdef0123"}
        extra["admin"] = {"token": "bench-admin-token"}
    if variant == "metrics":
        extra["redis"] = {"address": "127.0.0.1:%d" % redis_port, "flush_interval_ms": 1000}
    return ep, extra


def start_sluice(d, variant, models, cert, key, redis_port):
    http, https, admin = free_port(), free_port(), free_port()
    ep, extra = sluice_config(variant, models, redis_port, d)
    cfg = {"workers": 1,
           "listeners": [{"address": "127.0.0.1:%d" % http},
                         {"address": "127.0.0.1:%d" % https,
                          "tls": {"certificate": cert, "private_key": key}}],
           "admin": {"address": "127.0.0.1:%d" % admin},
           "log": {"access_log": "off"},
           "endpoints": [ep]}
    cfg.update(extra)
    if "admin" in extra:
        cfg["admin"]["address"] = "127.0.0.1:%d" % admin
    path = os.path.join(d, "sluice-%s.json" % variant)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    p = spawn([SLUICE, "-c", path], open(os.path.join(d, "sluice-%s.log" % variant), "w"))
    wait_port(http)
    auth = None
    if variant == "keys":
        auth = "Bearer " + ep["keys"]["primary"]
    if variant == "token":
        req = urllib.request.Request("http://127.0.0.1:%d/admin/v1/endpoints/bench/token" % admin,
                                     method="POST", data=b"{}",
                                     headers={"Authorization": "Bearer bench-admin-token"})
        tok = json.loads(urllib.request.urlopen(req).read())["access_token"]
        auth = "Bearer " + tok
    name = "sluice" if variant == "core" else "sluice-" + variant
    return Proxy(name, p, http, https, auth)


def wrk_script(d, auth, sticky):
    path = os.path.join(d, "post-%s-%s.lua" % (bool(auth), sticky))
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write("wrk.body = %s\n" % json.dumps(BODY))
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        if auth:
            f.write('wrk.headers["Authorization"] = %s\n' % json.dumps(auth))
        if sticky:
            # 4096 users in turn, as in real traffic; the requests are
            # formatted once, so wrk's Lua costs no more than the plain runs
            f.write('local reqs = {}\nlocal n = 0\n'
                    'init = function(args)\n  for i = 1, 4096 do\n'
                    '    wrk.headers["X-User-Id"] = "user-" .. i\n'
                    '    reqs[i] = wrk.format()\n  end\nend\n'
                    'request = function()\n  n = n % 4096 + 1\n  return reqs[n]\nend\n')
    return path


def backends(d):
    """A self-signed certificate and the two model servers every proxy uses."""
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "7", "-subj", "/CN=localhost"], check=True, capture_output=True)
    models = []
    for name in ("versiona", "versionb"):
        port = free_port()
        spawn([MODEL, "--listen", "127.0.0.1:%d" % port, "--name", name],
              open(os.path.join(d, name + ".log"), "w"))
        wait_port(port)
        models.append("127.0.0.1:%d" % port)
    return cert, key, models


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    r = {"rps": 0.0, "p50": None, "p99": None, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+([\d.]+)(us|ms|s)\s*$" % pct, out, re.M)
        if m:
            r[key] = float(m.group(1)) * UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    return r


SCENARIOS = [
    ("plain keep-alive", False, False),
    ("TLS keep-alive", True, False),
    ("TLS new connection per request", True, True),
]


def run_wrk(proxy, tls, close, duration, conns, d, path):
    port = proxy.https_port if tls else proxy.http_port
    url = "%s://127.0.0.1:%d%s" % ("https" if tls else "http", port, path)
    sticky = proxy.name == "sluice-routing"
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
           "-s", wrk_script(d, proxy.auth, sticky)]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True).stdout
    return parse_wrk(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--variants", default="core",
                    help="sluice variants: core,routing,keys,token,metrics")
    ap.add_argument("--scenarios", default="0,1,2", help="indices into the scenario list")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        cert, key, models = backends(d)
        redis_port = free_port()
        variants = [v for v in a.variants.split(",") if v]
        if "metrics" in variants:
            spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                   "--save", "", "--appendonly", "no"], open(os.path.join(d, "redis.log"), "w"))
            wait_port(redis_port)
        proxies = [start_nginx(d, models, cert, key), start_haproxy(d, models, cert, key)]
        for v in variants:
            proxies.append(start_sluice(d, v, models, cert, key, redis_port))
        paths = {p.name: "/api/v1/service/bench/score" for p in proxies}

        scen = [SCENARIOS[int(i)] for i in a.scenarios.split(",")]
        results = {}                       # (scenario, proxy) -> [runs]
        for rnd in range(a.rounds):
            order = proxies[rnd % len(proxies):] + proxies[:rnd % len(proxies)]
            for sname, tls, close in scen:
                for p in order:
                    r = run_wrk(p, tls, close, a.duration, a.connections, d, paths[p.name])
                    results.setdefault((sname, p.name), []).append(r)
                    print("round %d  %-32s %-16s %10.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d"
                          % (rnd + 1, sname, p.name, r["rps"], r["p50"] or -1, r["p99"] or -1,
                             r["errors"]), flush=True)
        rss = {p.name: peak_rss_kib(p.proc.pid) for p in proxies}

        def med(runs, k):
            vals = [x[k] for x in runs if x[k] is not None]
            return statistics.median(vals) if vals else float("nan")

        print()
        print("Medians over %d rounds of %d s, %d connections, one worker each; ratio to nginx in ()"
              % (a.rounds, a.duration, a.connections))
        for sname, _, _ in scen:
            print("\n%s" % sname)
            print("  %-16s %18s %20s %20s %20s %8s" % ("proxy", "req/s", "p50 ms", "p99 ms",
                                                     "peak RSS MiB", "errors"))
            base = results[(sname, "nginx")]
            b_rps, b_p50, b_p99 = med(base, "rps"), med(base, "p50"), med(base, "p99")
            for p in proxies:
                runs = results[(sname, p.name)]
                rps, p50, p99 = med(runs, "rps"), med(runs, "p50"), med(runs, "p99")
                print("  %-16s %10.0f (%5.2f) %12.2f (%5.2f) %12.2f (%5.2f) %12.1f (%5.2f) %8d" % (
                    p.name, rps, rps / b_rps, p50, p50 / b_p50, p99, p99 / b_p99,
                    rss[p.name] / 1024.0, rss[p.name] / max(rss["nginx"], 1),
                    sum(x["errors"] for x in runs)))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"results": {"%s|%s" % k: v for k, v in results.items()},
                           "peak_rss_kib": rss}, f, indent=1)
    except RuntimeError as e:
        for f in sorted(os.listdir(d)):
            if f.endswith(".log"):
                print("--- %s\n%s" % (f, open(os.path.join(d, f)).read()[-2000:]))
        raise
    finally:
        stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
