#!/usr/bin/python3
"""Benchmark sluice against nginx and HAProxy on the same model servers.

Each proxy runs with one worker in front of the same two model servers
(versiona 90 %, versionb 10 %), by default sluice-model --fast: a fixed
answer on raw sockets, so that the backend is not what limits the proxies.
wrk drives each with the same load: a keep-alive POST of a ~200-byte JSON
body on 64 connections, over plain HTTP and TLS, plus TLS with a new
connection per request. A "direct" run sends the plain keep-alive load
straight to one model server, in the same rotation: it is the ceiling the
backend allows, and the script warns when it is under twice the fastest
proxy (then the model, not the proxy, sets the figures).

Runs are interleaved over several rounds (the order rotates each round) and
the medians are printed: requests per second, p50 and p99 latency, peak RSS
of the process tree (nginx's workers included), and CPU time per request
(utime + stime of the proxy's process tree over the run, from /proc,
divided by the requests wrk completed), each also as a ratio to nginx.

Sluice variants (--variants) run sluice with extra features on, for the
issues whose performance targets compare against the plain core:
  core      the plain split (the default)
  routing   three versions and a sticky header
  keys      key authentication
  token     token authentication, one token per connection
  metrics   counting with a Redis writer
  mirror    metrics, plus a mirror version receiving 50 % of requests as shadow
            copies (answers read and dropped)
  compare   the same mirror with shadow comparison on (SPEC §7, json mode):
            the cost of comparing is compare vs mirror (printed at the end)
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
SLUICE = os.path.join(BUILD, "control", "sluice")
# The model server comes from this tree (it has --fast), even when
# SLUICE_BUILD points at another sluice build to measure.
MODEL = os.environ.get("SLUICE_MODEL", os.path.join(ROOT, "build", "tools", "sluice-model"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
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


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree_pids(pid):
    """pid and its descendants (nginx's workers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def status_kib(pid, field):
    """Sum of a /proc/PID/status field (VmHWM, VmRSS) over the process tree."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def peak_rss_kib(pid):
    return status_kib(pid, "VmHWM")


def rss_kib(pid):
    return status_kib(pid, "VmRSS")


def cpu_seconds(pids):
    """utime + stime (all threads) of the processes and their descendants."""
    total = 0
    for root in pids:
        for p in tree_pids(root):
            try:
                with open("/proc/%d/stat" % p) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])   # utime, stime
            except (OSError, IndexError, ValueError):
                pass
    return total / CLK_TCK


class Proxy:
    def __init__(self, name, proc, http_port, https_port, auth=None):
        self.name, self.proc = name, proc
        self.http_port, self.https_port = http_port, https_port
        self.auth = auth                    # (header value) or None


DIRECT = "direct"                           # wrk straight at a model server


def start_nginx(d, models, cert, key, conns=4096, auth=None):
    """auth: the one Authorization value let through (others get 401)."""
    http, https = free_port(), free_port()
    check = ""
    if auth:
        check = 'if ($http_authorization != "%s") { return 401; }' % auth
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
worker_rlimit_nofile %(nofile)d;
pid %(d)s/nginx.pid;
error_log %(d)s/nginx-error.log warn;
events { worker_connections %(conns)d; }
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
            %(check)s
            proxy_pass http://models;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
    }
}
""" % dict(d=d, a=models[0], b=models[1], http=http, https=https, cert=cert, key=key,
           conns=conns, nofile=2 * conns + 100, check=check))
    p = spawn(["nginx", "-c", conf, "-p", d, "-g", "daemon off;"],
              open(os.path.join(d, "nginx.log"), "w"))
    wait_port(http)
    return Proxy("nginx", p, http, https)


def start_haproxy(d, models, cert, key, maxconn=8000, auth=None):
    """auth: the one Authorization value let through (others get 401)."""
    http, https = free_port(), free_port()
    check = ""
    if auth:
        check = 'http-request deny deny_status 401 unless { req.hdr(authorization) -m str "%s" }' \
            % auth
    pem = os.path.join(d, "haproxy.pem")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write("""
global
    nbthread 1
    maxconn %(maxconn)d
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
    %(check)s
    default_backend models
backend models
    balance roundrobin
    http-reuse always
    server versiona %(a)s weight 90
    server versionb %(b)s weight 10
""" % dict(a=models[0], b=models[1], http=http, https=https, pem=pem, maxconn=maxconn,
           check=check))
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
    if variant in ("mirror", "compare"):
        shadow_variant(variant, versions, extra, models, redis_port)
    return ep, extra


def shadow_variant(variant, versions, extra, models, redis_port):
    """mirror: 50 % shadow copies to a mirror version (on the second model
    server); compare: the same with shadow comparison on, so the two differ
    in the comparison only. Both count to Redis like the metrics variant."""
    extra["redis"] = {"address": "127.0.0.1:%d" % redis_port, "flush_interval_ms": 1000}
    mirror = {"name": "mirrorv", "upstreams": [models[1]], "traffic_percentile": 0,
              "mirror_percentile": 50}
    if variant == "compare":
        mirror["compare"] = {"mode": "json", "abs_tol": 1e-6, "ignore": ["meta.timing_ms"]}
    versions.append(mirror)


def shadow_cost(results, scen, med):
    """The cost of comparison: compare vs mirror, per scenario."""
    if not any(k[1] == "sluice-compare" for k in results) or \
            not any(k[1] == "sluice-mirror" for k in results):
        return
    print("\nshadow comparison cost (sluice-compare vs sluice-mirror, 50 % mirrored):")
    for sname, _, _ in scen:
        m = {k: med(results[(sname, "sluice-mirror")], k) for k in ("rps", "p99", "cpu_us")}
        c = {k: med(results[(sname, "sluice-compare")], k) for k in ("rps", "p99", "cpu_us")}
        print("  %-32s req/s %+6.1f %%  p99 %+6.1f %%  cpu/req %+6.1f %%" % (
            sname, 100 * (c["rps"] / m["rps"] - 1), 100 * (c["p99"] / m["p99"] - 1),
            100 * (c["cpu_us"] / m["cpu_us"] - 1)))
        if (sname, "sluice-metrics") in results:
            # The target (issue 12): comparing adds less per live request
            # than the mirror copy itself (mirror vs metrics, which differ in
            # the copy only).
            p = {k: med(results[(sname, "sluice-metrics")], k) for k in ("rps", "p99", "cpu_us")}
            copy, cmp = m["cpu_us"] - p["cpu_us"], c["cpu_us"] - m["cpu_us"]
            print("  %-32s cpu/req: mirror copy %+.1f us, comparison %+.1f us: %s" % (
                "", copy, cmp, "comparison < copy" if cmp < copy else "comparison >= copy"))


def start_sluice(d, variant, models, cert, key, redis_port, limits=None):
    http, https, admin = free_port(), free_port(), free_port()
    ep, extra = sluice_config(variant, models, redis_port, d)
    cfg = {"workers": 1,
           "listeners": [{"address": "127.0.0.1:%d" % http},
                         {"address": "127.0.0.1:%d" % https,
                          "tls": {"certificate": cert, "private_key": key}}],
           "admin": {"address": "127.0.0.1:%d" % admin},
           "log": {"access_log": "off"},
           "endpoints": [ep]}
    if limits:
        cfg["limits"] = limits
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


def start_model(d, name, *args):
    """A model server on a free port it picks itself; returns (proc, port)."""
    p = subprocess.Popen([MODEL, "--listen", "127.0.0.1:0", "--name", name] + list(args),
                         stdout=subprocess.PIPE, stderr=open(os.path.join(d, name + ".log"), "w"),
                         text=True)
    PROCS.append(p)
    line = p.stdout.readline()          # "listening on PORT", flushed at once
    m = re.match(r"listening on (\d+)", line)
    if not m:
        raise RuntimeError("%s did not say its port: %r" % (MODEL, line))
    return p, int(m.group(1))


MODEL_PROCS = []


def backends(d, fast=True):
    """A self-signed certificate and the two model servers every proxy uses."""
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "7", "-subj", "/CN=localhost"], check=True, capture_output=True)
    models = []
    for name in ("versiona", "versionb"):
        p, port = start_model(d, name, *(["--fast"] if fast else []))
        MODEL_PROCS.append(p)
        models.append("127.0.0.1:%d" % port)
    return cert, key, models


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(out):
    r = {"rps": 0.0, "p50": None, "p99": None, "errors": 0, "requests": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
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
    """One wrk run; adds the CPU the proxy's and the models' process trees
    spent per completed request (microseconds)."""
    port = proxy.https_port if tls else proxy.http_port
    url = "%s://127.0.0.1:%d%s" % ("https" if tls else "http", port, path)
    sticky = proxy.name == "sluice-routing"
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
           "-s", wrk_script(d, proxy.auth, sticky)]
    if close:
        cmd += ["-H", "Connection: close"]
    models = [p.pid for p in MODEL_PROCS]
    own = [proxy.proc.pid] if proxy.name != DIRECT else []
    c0, m0 = cpu_seconds(own), cpu_seconds(models)
    out = subprocess.run(cmd + [url], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    c1, m1 = cpu_seconds(own), cpu_seconds(models)
    r = parse_wrk(out)
    n = max(r["requests"], 1)
    r["cpu_us"] = (c1 - c0) * 1e6 / n if own else None
    r["model_cpu_us"] = (m1 - m0) * 1e6 / n
    return r


def fmt(v, w=10, prec=0):
    return ("%*.*f" % (w, prec, v)) if v is not None and v == v else "%*s" % (w, "-")


def ratio(v, b):
    if v is None or b is None or v != v or b != b or b == 0:
        return "(  -  )"
    return "(%5.2f)" % (v / b)



def report_end(warnings, json_path, results, summary, rss):
    """The headroom warning (if any), and the raw results to json_path."""
    if warnings:
        print("\n" + "!" * 78)
        print("!!! WARNING: the model server is not at least 2x faster than the fastest proxy.")
        print("!!! The backend may limit the proxies, so their ratios understate differences.")
        print("!!! (If the models used far less than a core, the machine was busy instead:")
        print("!!! other load shares the 2 cores; rerun, or compare CPU per request.)")
        for w in warnings:
            print("!!!   " + w)
        print("!" * 78)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"results": {"%s|%s" % k: v for k, v in results.items()},
                       "medians": summary, "peak_rss_kib": rss, "warnings": warnings},
                      f, indent=1)


def show_logs(d):
    """After a failed start: the tail of every process's log in d."""
    for f in sorted(os.listdir(d)):
        if f.endswith(".log"):
            print("--- %s\n%s" % (f, open(os.path.join(d, f)).read()[-2000:]))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--variants", default="core",
                    help="sluice variants: core,routing,keys,token,metrics,mirror,compare")
    ap.add_argument("--scenarios", default="0,1,2", help="indices into the scenario list")
    ap.add_argument("--evhttp-model", action="store_true",
                    help="use the full evhttp model server instead of --fast (the old bench)")
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="sluice-bench-")
    try:
        cert, key, models = backends(d, fast=not a.evhttp_model)
        redis_port = free_port()
        variants = [v for v in a.variants.split(",") if v]
        if {"metrics", "mirror", "compare"} & set(variants):
            spawn(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                   "--save", "", "--appendonly", "no"], open(os.path.join(d, "redis.log"), "w"))
            wait_port(redis_port)
        proxies = [start_nginx(d, models, cert, key), start_haproxy(d, models, cert, key)]
        for v in variants:
            proxies.append(start_sluice(d, v, models, cert, key, redis_port))
        direct = Proxy(DIRECT, MODEL_PROCS[0], int(models[0].rsplit(":", 1)[1]), None)
        paths = {p.name: "/api/v1/service/bench/score" for p in proxies}
        paths[DIRECT] = paths["nginx"]

        scen = [SCENARIOS[int(i)] for i in a.scenarios.split(",")]
        # The direct run is plain keep-alive whatever the scenario (the
        # proxies reuse their upstream connections): it runs once a round,
        # in the rotation of the plain scenario, or of the first one.
        direct_in = next((s[0] for s in scen if not s[1] and not s[2]), scen[0][0])
        results = {}                       # (scenario, name) -> [runs]
        for rnd in range(a.rounds):
            for sname, tls, close in scen:
                ps = proxies + ([direct] if sname == direct_in else [])
                order = ps[rnd % len(ps):] + ps[:rnd % len(ps)]
                for p in order:
                    if p is direct:
                        r = run_wrk(p, False, False, a.duration, a.connections, d, paths[p.name])
                        key_ = ("direct", DIRECT)
                    else:
                        r = run_wrk(p, tls, close, a.duration, a.connections, d, paths[p.name])
                        key_ = (sname, p.name)
                    results.setdefault(key_, []).append(r)
                    print("round %d  %-32s %-16s %10.0f req/s  p50 %7.2f ms  p99 %7.2f ms  "
                          "cpu %6s us/req  errors %d"
                          % (rnd + 1, sname if p is not direct else "plain keep-alive (direct)",
                             p.name, r["rps"], r["p50"] or -1, r["p99"] or -1,
                             fmt(r["cpu_us"], 0, 1), r["errors"]), flush=True)
        rss = {p.name: peak_rss_kib(p.proc.pid) for p in proxies}
        rss[DIRECT] = peak_rss_kib(direct.proc.pid)

        def med(runs, k):
            vals = [x[k] for x in runs if x.get(k) is not None]
            return statistics.median(vals) if vals else float("nan")

        dr = results[("direct", DIRECT)]
        d_rps = med(dr, "rps")
        # What one core of the model could serve, from its CPU per request in
        # the direct runs: unlike the direct rate, this does not depend on
        # how much of the machine wrk and other load left to the run.
        d_cpu = med(dr, "model_cpu_us")
        capacity = 1e6 / d_cpu if d_cpu and d_cpu == d_cpu else float("nan")
        print()
        print("Medians over %d rounds of %d s, %d connections, one worker each; ratio to nginx in ()"
              % (a.rounds, a.duration, a.connections))
        print("backend: %s; cpu = utime+stime of the proxy's process tree per request; "
              "model = the same for the model servers" % ("evhttp model" if a.evhttp_model
                                                          else "sluice-model --fast"))
        warnings = []
        summary = {}
        for sname, _, _ in scen:
            print("\n%s" % sname)
            print("  %-16s %18s %16s %16s %18s %18s %9s %7s" % (
                "proxy", "req/s", "p50 ms", "p99 ms", "peak RSS MiB", "cpu us/req",
                "model us", "errors"))
            base = results[(sname, "nginx")]
            b = {k: med(base, k) for k in ("rps", "p50", "p99", "cpu_us")}
            b_rss = rss["nginx"] / 1024.0
            rows = [(p.name, results[(sname, p.name)]) for p in proxies] + [(DIRECT, dr)]
            for name, runs in rows:
                m = {k: med(runs, k) for k in ("rps", "p50", "p99", "cpu_us", "model_cpu_us")}
                mib = rss[name] / 1024.0
                summary["%s|%s" % (sname, name)] = dict(m, peak_rss_mib=mib)
                label = name if name != DIRECT else "direct (plain)"
                print("  %-16s %10.0f %s %8.2f %s %8.2f %s %10.1f %s %10s %s %9s %7d" % (
                    label, m["rps"], ratio(m["rps"], b["rps"]), m["p50"], ratio(m["p50"], b["p50"]),
                    m["p99"], ratio(m["p99"], b["p99"]), mib, ratio(mib, b_rss),
                    fmt(m["cpu_us"], 10, 1), ratio(m["cpu_us"], b["cpu_us"]),
                    fmt(m["model_cpu_us"], 9, 1), sum(x["errors"] for x in runs)))
            fastest = max(proxies, key=lambda p: med(results[(sname, p.name)], "rps"))
            f_rps = med(results[(sname, fastest.name)], "rps")
            # the share of a core the models used behind the fastest proxy:
            # near 1 the backend is saturated; far below, the machine is busy
            f_model = f_rps * med(results[(sname, fastest.name)], "model_cpu_us") / 1e6
            print("  direct / fastest proxy (%s): %.2fx; models used %.0f %% of a core behind it; "
                  "model capacity %.0f req/s per core (%.1fx)"
                  % (fastest.name, d_rps / f_rps, 100 * f_model, capacity, capacity / f_rps))
            if not d_rps >= 2 * f_rps:
                warnings.append("%s: direct %.0f req/s < 2 x %s %.0f req/s (models at %.0f %% "
                                "of a core)" % (sname, d_rps, fastest.name, f_rps, 100 * f_model))
        shadow_cost(results, scen, med)
        report_end(warnings, a.json, results, summary, rss)
    except RuntimeError:
        show_logs(d)
        raise
    finally:
        stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
