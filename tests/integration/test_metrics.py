"""Metrics in Redis, comparison API, Prometheus, dashboard (issue 5)."""
import json
import os
import signal
import socket
import subprocess
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import (SLUICECTL, Model, Redis, Sluice, endpoint, stop, version, wait_port)

ADMIN = {"Authorization": "Bearer adm-secret-token"}
FIELDS = ["requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "upstream_errors",
          "timeouts", "overloaded", "failover", "pinned", "bytes_in", "bytes_out",
          "latency_us_sum"] + ["lat_le_%s" % b for b in (
              500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000,
              2500000, 5000000, 10000000, "inf")]


def metrics_sluice(redis, models, workers=2, redis_extra=None, **kw):
    rc = {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100,
          "retention_minutes": 30}
    rc.update(redis_extra or {})
    return Sluice([endpoint("ep1", [
        version("versiona", [models[0].addr], 50, is_default=True, type="control"),
        version("versionb", [models[1].addr], 30),
        version("versionc", [models[2].addr], 20)])], workers=workers,
        extra={"redis": rc, "admin": {"token": "adm-secret-token"}}, **kw)


def send(s, n, counts=None, threads=4):
    counts = {} if counts is None else counts
    lock = threading.Lock()

    def run(k):
        with requests.Session() as c:
            for _ in range(k):
                r = c.post(s.url("ep1"), data=b'{"x":1}')
                with lock:
                    key = (r.headers.get("X-Sluice-Version"), r.status_code)
                    counts[key] = counts.get(key, 0) + 1
    ts = [threading.Thread(target=run, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return counts


def totals(rc):
    out = {}
    for v in ("versiona", "versionb", "versionc"):
        out[v] = int(rc.hget("sluice:{ep1}:total:%s" % v, "requests") or 0)
    return out


def wait_totals(rc, expected, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = totals(rc)
        if got == expected:
            return got
        time.sleep(0.05)
    return totals(rc)


def by_version(counts):
    out = {"versiona": 0, "versionb": 0, "versionc": 0}
    for (v, code), n in counts.items():
        assert code == 200, counts
        out[v] += n
    return out


def test_exact_totals_keys_fields_and_ttls():
    r = Redis()
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = metrics_sluice(r, ms)
    counts = send(s, 5000)
    expected = by_version(counts)
    assert sum(expected.values()) == 5000
    rc = r.client()
    assert wait_totals(rc, expected) == expected
    minute_sum = {v: 0 for v in expected}
    for key in rc.scan_iter("sluice:{ep1}:minute:*"):
        v = key.split(":")[3]
        minute_sum[v] += int(rc.hget(key, "requests"))
        ttl = rc.ttl(key)
        assert 30 * 60 - 5 <= ttl <= 30 * 60, (key, ttl)
    assert minute_sum == expected
    h = rc.hgetall("sluice:{ep1}:total:versiona")
    assert set(h) <= set(FIELDS) and {"requests", "status_2xx", "bytes_in", "bytes_out",
                                        "latency_us_sum"} <= set(h)
    assert sum(int(h.get(f, 0)) for f in FIELDS if f.startswith("lat_le_")) == expected["versiona"]
    assert int(h["status_2xx"]) == expected["versiona"]
    g = rc.hgetall("sluice:{ep1}:group:control")
    assert int(g["requests"]) == expected["versiona"]
    t = rc.hgetall("sluice:{ep1}:group:treatment")
    assert int(t["requests"]) == expected["versionb"] + expected["versionc"]
    gm = sum(int(rc.hget(k, "requests")) for k in rc.scan_iter("sluice:{ep1}:groupminute:treatment:*"))
    assert gm == expected["versionb"] + expected["versionc"]
    vs = rc.hgetall("sluice:{ep1}:versions")
    a = json.loads(vs["versiona"])
    assert a == {"group": "control", "traffic_percentile": 50, "effective_percentile": 50,
                 "is_default": True, "generation": 1}
    assert json.loads(vs["versionb"])["group"] == "treatment"
    inst = rc.hgetall("sluice:instances")
    assert len(inst) == 1
    info = json.loads(list(inst.values())[0])
    assert set(info) == {"started", "last_flush", "version", "generation"}
    requests.post(s.url("nope"), data=b"x")
    requests.post(s.url("ep1"), data=b"x" * 10, headers={"X-Sluice-Version": "zzz"})
    deadline = time.time() + 5
    while time.time() < deadline and rc.hget("sluice:rejected", "not_found") != "2":
        time.sleep(0.05)
    assert rc.hget("sluice:rejected", "not_found") == "2"


def test_redis_down_then_back_totals_exact():
    r = Redis(persist=True)
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = metrics_sluice(r, ms)
    counts = {}
    stop_evt = threading.Event()
    errors = []

    def load():
        with requests.Session() as c:
            while not stop_evt.is_set():
                resp = c.post(s.url("ep1"), data=b'{"x":1}')
                if resp.status_code != 200:
                    errors.append(resp.status_code)
                key = (resp.headers.get("X-Sluice-Version"), resp.status_code)
                counts[key] = counts.get(key, 0) + 1
    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    r.kill()
    time.sleep(10)                  # Redis away under load
    r.start()
    time.sleep(1)
    stop_evt.set()
    for t in threads:
        t.join()
    assert errors == []
    expected = by_version(counts)
    assert wait_totals(r.client(), expected, timeout=15) == expected
    log = s.log()
    assert '"event":"redis_disconnected"' in log and log.count('"event":"redis_connected"') >= 2


class DropOneReply:
    """A TCP proxy to Redis that forwards everything, except that it drops
    the reply to the first EVAL/EVALSHA it sees and cuts the connection."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.dropped = False
        self.closing = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.redis_port))
            threading.Thread(target=self.pump, args=(c, u), daemon=True).start()

    def pump(self, c, u):
        armed = [False]

        def up():
            try:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    if not self.dropped and b"EVAL" in d:
                        armed[0] = True
                    u.sendall(d)
            except OSError:
                pass
            u.close()

        threading.Thread(target=up, daemon=True).start()
        try:
            while True:
                d = u.recv(65536)
                if not d:
                    break
                if armed[0] and not self.dropped:
                    self.dropped = True      # Redis applied it; the answer is lost
                    time.sleep(0.05)
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()
        u.close()


def test_lost_reply_is_not_applied_twice():
    r = Redis()
    proxy = DropOneReply(r.port)
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = Sluice([endpoint("ep1", [
        version("versiona", [ms[0].addr], 50, is_default=True, type="control"),
        version("versionb", [ms[1].addr], 30),
        version("versionc", [ms[2].addr], 20)])], workers=1,
        extra={"redis": {"address": "127.0.0.1:%d" % proxy.port, "flush_interval_ms": 100},
               "admin": {"token": "adm-secret-token"}})
    counts = send(s, 300, threads=1)
    expected = by_version(counts)
    time.sleep(2.5)
    assert proxy.dropped
    assert wait_totals(r.client(), expected) == expected
    assert int(r.client().hget("sluice:{ep1}:group:control", "requests")) == expected["versiona"]


def test_password_and_db():
    r = Redis(password="s3cret")
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = metrics_sluice(r, ms, workers=1, redis_extra={"password": "s3cret", "db": 3})
    expected = by_version(send(s, 200, threads=2))
    assert wait_totals(r.client(db=3), expected) == expected
    assert r.client(db=0).keys("sluice:*") == []


def test_sigterm_flushes_before_exit():
    r = Redis()
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = metrics_sluice(r, ms, redis_extra={"flush_interval_ms": 60000})
    time.sleep(0.3)
    expected = by_version(send(s, 300))
    assert s.stop() == 0
    assert totals(r.client()) == expected


def test_comparison_api_and_sluicectl():
    r = Redis()
    ms = [Model("versiona"), Model("versionb", "--error-rate", "0.3"), Model("versionc")]
    s = metrics_sluice(r, ms)
    counts = {}
    send(s, 1200, counts)
    served = {"versiona": 0, "versionb": 0, "versionc": 0}
    errors = {"versiona": 0, "versionb": 0, "versionc": 0}
    for (v, code), n in counts.items():
        served[v] += n
        errors[v] += n if code >= 500 else 0
    rc = r.client()
    deadline = time.time() + 10
    while time.time() < deadline and sum(totals(rc).values()) < 1200:
        time.sleep(0.05)
    m = requests.get(s.admin("/admin/v1/endpoints/ep1/metrics?minutes=5"), headers=ADMIN).json()
    vs = {v["version"]: v for v in m["versions"]}
    for v in served:
        assert vs[v]["requests"] == served[v], (v, vs[v]["requests"], served)
        assert vs[v]["errors"] == errors[v]
        assert abs(vs[v]["observed_share"] - 100.0 * served[v] / 1200) < 1e-9
        assert abs(vs[v]["error_rate"] - errors[v] / served[v]) < 1e-9
        assert vs[v]["p50_ms"] >= 0 and vs[v]["p99_ms"] >= vs[v]["p50_ms"]
    assert vs["versiona"]["configured_share"] == 50
    cmp = {c["treatment"]: c for c in m["comparisons"]}
    assert cmp["versionb"]["control"] == "versiona"
    assert cmp["versionb"]["verdict"] == "worse", cmp["versionb"]
    assert cmp["versionc"]["verdict"] == "no significant difference", cmp["versionc"]
    groups = {g["group"]: g for g in m["groups"]}
    assert groups["treatment"]["requests"] == served["versionb"] + served["versionc"]
    env = dict(os.environ, SLUICE_ADMIN_URL="http://127.0.0.1:%d" % s.admin_port,
               SLUICE_ADMIN_TOKEN="adm-secret-token")
    out = subprocess.run([SLUICECTL, "metrics", "ep1", "--minutes", "5"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "versionb vs versiona" in out.stdout and "-> worse" in out.stdout
    line = [l for l in out.stdout.splitlines() if l.startswith("versionb ")][0]
    assert str(served["versionb"]) in line.split()
    r.kill()
    resp = requests.get(s.admin("/admin/v1/endpoints/ep1/metrics"), headers=ADMIN)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "redis_unavailable"


def test_prometheus_text_parses():
    r = Redis()
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    s = metrics_sluice(r, ms)
    expected = by_version(send(s, 400))
    text = requests.get(s.admin("/metrics")).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["sluice_request_duration_seconds"]
    assert hist.type == "histogram"
    count = {}
    for smp in hist.samples:
        if smp.name.endswith("_count"):
            count[smp.labels["version"]] = smp.value
        if smp.name.endswith("_bucket") and smp.labels["le"] == "+Inf":
            assert smp.value == count.get(smp.labels["version"], smp.value)
    assert count == {k: float(v) for k, v in expected.items()}
    reqs = [x for x in fams["sluice_requests"].samples if x.labels["status"] == "2xx"]
    assert sum(x.value for x in reqs) == 400
    gauges = {f.name: f.samples[0].value for f in fams.values() if f.type == "gauge"}
    assert gauges["sluice_config_generation"] == 1
    assert gauges["sluice_redis_connected"] == 1
    assert "sluice_open_connections" in gauges and "sluice_flush_backlog" in gauges
