"""Redis Sentinel and WAIT (SPEC §6, issue 11): a primary, two replicas and
three sentinels, real processes. Sluice finds the primary through the
sentinels, follows a failover with both the metrics writer and the fleet
connections, and with wait_replicas: 1 loses no counted request and counts
none twice when the primary dies holding a batch that no replica has.

Every step waits on a condition with a generous deadline; nothing relies on
a fixed sleep."""
import json
import threading
import time

import requests

from harness import (Model, Reader, SentinelGroup, Sluice, Upstream, endpoint, free_port, stop,
                     until, version)

TOKEN = "sentinel-admin-token"
H = {"Authorization": "Bearer " + TOKEN}
EP = "sentep"
VERSIONS = ("versiona", "versionb")
FLEET = "ha"
FLEET_KEY = "sluice:fleet:{%s}:config" % FLEET
# Far more than the kernel can buffer on the way to a paused replica
# (tcp_rmem's maximum, 32 MiB here, plus the sender's tcp_wmem): whatever
# is written after it stays in the primary's own output buffer.
FILLER_BYTES = 80 << 20




def sentinel_sluice(group, models, fleet=False, sentinels=None, wait_replicas=1):
    redis = {"sentinels": sentinels or group.addresses(), "master_name": group.name,
             "flush_interval_ms": 100, "retention_minutes": 30,
             "wait_replicas": wait_replicas, "wait_timeout_ms": 200}
    extra = {"redis": redis, "admin": {"token": TOKEN}}
    if fleet:
        extra["fleet"] = {"name": FLEET}
    return Sluice([endpoint(EP, [
        version("versiona", [models[0].addr], 50, is_default=True, type="control"),
        version("versionb", [models[1].addr], 50)])], workers=2, extra=extra)


class Traffic:
    """Steady requests from three threads, counted on the client side by the
    version that answered; any answer but 200 is recorded as an error.
    hold() lets the requests under way finish and starts no new one until
    go()."""

    def __init__(self, s, threads=3):
        self.s = s
        self.counts = {v: 0 for v in VERSIONS}
        self.errors = []
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.idle = 0
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def hold(self):
        self.running.clear()
        until(lambda: self.idle == len(self.threads), 30, "requests under way to finish")

    def go(self):
        self.running.set()

    def run(self):
        with requests.Session() as c:
            while not self.stop_evt.is_set():
                if not self.running.is_set():
                    with self.lock:
                        self.idle += 1
                    self.running.wait()
                    with self.lock:
                        self.idle -= 1
                try:
                    r = c.post(self.s.url(EP), data=b'{"x":1}', timeout=10)
                except requests.RequestException as e:
                    with self.lock:
                        self.errors.append(repr(e))
                    continue
                with self.lock:
                    v = r.headers.get("X-Sluice-Version")
                    if r.status_code == 200 and v in self.counts:
                        self.counts[v] += 1
                    else:
                        self.errors.append((r.status_code, v))

    def total(self):
        with self.lock:
            return sum(self.counts.values())

    def finish(self):
        self.stop_evt.set()
        self.running.set()
        for t in self.threads:
            t.join()
        return dict(self.counts)


def gauge(s, name):
    for line in requests.get(s.admin("/metrics"), timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s on /metrics" % name)


def totals(client):
    return {v: int(client.hget("sluice:{%s}:total:%s" % (EP, v), "requests") or 0)
            for v in VERSIONS}


def flushseq(client):
    """This test's single instance's last applied batch number."""
    seqs = client.hgetall("sluice:flushseq")
    assert len(seqs) <= 1, seqs
    return int(next(iter(seqs.values()))) if seqs else 0


def test_failover_with_wait_loses_no_count_and_counts_none_twice():
    g = SentinelGroup()
    models = [Model(v) for v in VERSIONS]
    s = sentinel_sluice(g, models)
    old = g.primary_port
    p = g.client(old)
    traffic = Traffic(s)
    try:
        # Counting through the sentinels' primary, each batch confirmed.
        until(lambda: sum(totals(p).values()) >= 50, 30, "first totals on the primary")

        # A moment with no batch in hand (every count so far applied and
        # confirmed), so that the next batch is one that starts after the
        # replicas stop: requests pause for that moment only.
        traffic.hold()
        held = dict(traffic.counts)
        until(lambda: totals(p) == held and gauge(s, "sluice_redis_unacknowledged_batch") == 0,
              30, "every count so far applied and confirmed")
        # A slow network to both replicas: the primary takes the next batch,
        # no replica gets it. The filler fills the replication path first, so
        # that the batch stays in the primary's own buffers.
        for port in g.replica_ports:
            g.pause(port)
        try:
            p.set("sentinel-test:filler", b"\0" * FILLER_BYTES)
            s0 = flushseq(p)
            traffic.go()
            s1 = until(lambda: flushseq(p) > s0 and flushseq(p), 30,
                       "a batch applied on the primary while the replicas are paused")
            # WAIT cannot be satisfied: the batch stays unacknowledged.
            until(lambda: '"event":"redis_wait_short"' in s.log(), 30,
                  "the log line saying why the batch is held")
            assert gauge(s, "sluice_redis_unacknowledged_batch") == 1
            assert flushseq(p) == s1        # held: sent again, never a new batch
            g.kill(old)
        finally:
            for port in g.replica_ports:
                g.resume(port)
        # Neither replica has the last batch: a failover without WAIT would
        # have lost it.
        for port in g.replica_ports:
            assert flushseq(g.client(port)) < s1

        new = g.wait_failover(old)
        assert new in g.replica_ports
        q = g.client(new)
        # The held batch and later ones reach the new primary under traffic.
        until(lambda: flushseq(q) >= s1 + 2, 60, "batches flushed to the new primary")
        n_after = traffic.total()
        until(lambda: traffic.total() >= n_after + 50, 30, "traffic after the failover")
    finally:
        counts = traffic.finish()
    assert traffic.errors == []
    assert counts["versiona"] > 0 and counts["versionb"] > 0, counts

    # Every counted request exactly once on the new primary, before and
    # after a graceful stop's final flush.
    until(lambda: totals(q) == counts, 30, "new primary's totals == client counts %s (got %s)"
          % (counts, totals(q)))
    assert s.stop() == 0
    assert totals(q) == counts
    log = s.log()
    assert '"event":"redis_primary_switched"' in log, log[-3000:]
    assert '"event":"redis_wait_satisfied"' in log


def test_config_change_after_failover_reaches_the_new_primary():
    g = SentinelGroup()
    models = [Model(v) for v in VERSIONS]
    s = sentinel_sluice(g, models, fleet=True)
    old = g.primary_port
    seeded = until(lambda: g.client(old).get(FLEET_KEY), 30, "the fleet config seeded")
    assert json.loads(seeded)["generation"] == 1
    # The fleet connection is up on the primary before it goes.
    until(lambda: requests.get(s.admin("/admin/v1/fleet"), headers=H, timeout=5)
          .status_code == 200, 30, "the fleet listing")
    # Replicated before the primary dies (WAIT on a client of our own).
    assert g.client(old).execute_command("WAIT", 2, 5000) == 2
    g.kill(old)
    new = g.wait_failover(old)
    assert json.loads(g.client(new).get(FLEET_KEY))["generation"] == 1

    def change():
        r = requests.patch(s.admin("/admin/v1/endpoints/%s/versions/versionb" % EP),
                           headers=H, json={"traffic_percentile": 0}, timeout=10)
        # 503 only while the fleet connection has not reached the new
        # primary yet: nothing was written then.
        assert r.status_code in (200, 503), (r.status_code, r.text)
        return r.status_code == 200
    until(change, 30, "a config change accepted after the failover", step=0.2)
    cfg = json.loads(g.client(new).get(FLEET_KEY))
    assert cfg["generation"] == 2
    vb = [v for v in cfg["endpoints"][0]["versions"] if v["name"] == "versionb"][0]
    assert vb["traffic_percentile"] == 0
    served = [requests.post(s.url(EP), data=b'{"x":1}', timeout=5) for _ in range(20)]
    assert [(r.status_code, r.headers.get("X-Sluice-Version")) for r in served] == \
        [(200, "versiona")] * 20
    # The metrics writer followed too.
    until(lambda: int(g.client(new).hget("sluice:{%s}:total:versiona" % EP, "requests") or 0)
          == 20, 30, "metrics on the new primary")
    assert '"event":"fleet_redis_connected","address":"127.0.0.1:%d"' % new in s.log()


def test_no_reachable_sentinel_still_serves():
    models = [Model(v) for v in VERSIONS]
    nobody = ["127.0.0.1:%d" % free_port() for _ in range(3)]    # nothing listens there
    s = Sluice([endpoint(EP, [
        version("versiona", [models[0].addr], 50, is_default=True, type="control"),
        version("versionb", [models[1].addr], 50)])], workers=2,
        extra={"redis": {"sentinels": nobody, "master_name": "mymaster",
                         "wait_replicas": 1, "flush_interval_ms": 100},
               "admin": {"token": TOKEN}, "fleet": {"name": FLEET}})
    statuses = {}
    with requests.Session() as c:
        for _ in range(200):
            r = c.post(s.url(EP), data=b'{"x":1}', timeout=5)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses == {200: 200}
    text = requests.get(s.admin("/metrics"), timeout=5).text
    assert "sluice_redis_connected 0" in text
    assert "sluice_requests_total" in text
    until(lambda: '"event":"redis_sentinels_unavailable"' in s.log(), 10,
          "the log line naming the sentinels unavailable")
    # Changes need the fleet's Redis: refused, nothing applied.
    r = requests.patch(s.admin("/admin/v1/endpoints/%s/versions/versionb" % EP), headers=H,
                       json={"traffic_percentile": 100}, timeout=10)
    assert r.status_code == 503, r.text
    assert stop(s.proc) == 0


class FakeSentinel:
    """A stand-in for a sentinel that names whichever node the test sets in
    .named (a port), right or wrong; it confirms a SUBSCRIBE and sends
    nothing more."""

    def __init__(self, named):
        self.named = named
        self.up = Upstream(self.handle)
        self.addr = self.up.addr

    def handle(self, c, up):
        r = Reader(c)
        while True:
            n = int(r.until(b"\r\n")[1:-2])
            args = []
            for _ in range(n):
                size = int(r.until(b"\r\n")[1:-2])
                args.append(r.exact(size + 2)[:-2].decode())
            cmd = args[0].upper()
            if cmd == "SENTINEL":
                port = str(self.named).encode()
                c.sendall(b"*2\r\n$9\r\n127.0.0.1\r\n$%d\r\n%s\r\n" % (len(port), port))
            elif cmd == "SUBSCRIBE":
                c.sendall(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n")
            else:
                c.sendall(b"-ERR not a sentinel\r\n")


def test_a_replica_named_as_primary_is_left_by_its_role():
    g = SentinelGroup(replicas=1, sentinels=1, quorum=1)
    replica, primary = g.replica_ports[0], g.primary_port
    fake = FakeSentinel(replica)            # a sentinel with a wrong answer
    models = [Model(v) for v in VERSIONS]
    s = Sluice([endpoint(EP, [
        version("versiona", [models[0].addr], 50, is_default=True, type="control"),
        version("versionb", [models[1].addr], 50)])], workers=2,
        extra={"redis": {"sentinels": [fake.addr], "master_name": "mymaster",
                         "flush_interval_ms": 100},
               "admin": {"token": TOKEN}, "fleet": {"name": FLEET}})
    counts = {v: 0 for v in VERSIONS}
    with requests.Session() as c:
        for _ in range(30):
            r = c.post(s.url(EP), data=b'{"x":1}', timeout=5)
            assert r.status_code == 200
            counts[r.headers["X-Sluice-Version"]] += 1
    # Both the metrics writer and the fleet connection check ROLE and leave.
    until(lambda: '"event":"redis_primary_left"' in s.log() and
          '"event":"fleet_redis_primary_left"' in s.log(), 30, "both leaving the replica")
    assert '"reason":"ROLE is not master"' in s.log()
    assert totals(g.client(primary)) == {v: 0 for v in VERSIONS}    # nothing written yet
    # The sentinel's answer is right now: everything goes to the primary.
    fake.named = primary
    until(lambda: totals(g.client(primary)) == counts, 30,
          "the counts on the primary %s (got %s)" % (counts, totals(g.client(primary))))
    until(lambda: g.client(primary).get(FLEET_KEY), 30, "the fleet config on the primary")
    assert json.loads(g.client(primary).get(FLEET_KEY))["generation"] >= 1
