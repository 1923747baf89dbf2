"""Fleet: many instances, one gateway (SPEC §6, issue 11). Three sluice
processes and one Redis; every convergence is polled against a bounded
deadline and checked by routing (X-Sluice-Version, 401/200), not only by
the admin API."""
import hashlib
import json
import os
import signal
import stat
import subprocess
import threading
import time

import requests

from harness import (SLUICECTL, Model, Redis, Sluice, endpoint, free_port, start, tmpdir,
                     version)

TOKEN = "fleet-admin-token"
H = {"Authorization": "Bearer " + TOKEN}
FLEET = "prod"
KEY = "sluice:fleet:{%s}:config" % FLEET
KEYS = {"primary": "fleet-primary-0123456789abc", "secondary": "fleet-secondary-0123456789"}
APPLY_S = 1.0       # SPEC §6: in tests, every instance applies a change within 1 s


def fleet_member(redis, endpoints, redis_extra=None, **kw):
    extra = {"fleet": {"name": FLEET}, "admin": {"token": TOKEN},
             "redis": {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100}}
    extra["redis"].update(redis_extra or {})
    return Sluice(endpoints, extra=extra, **kw)


def split_endpoints(a, b, b_pct=0, **kw):
    return [endpoint("fleetep", [version("versiona", [a.addr], 0, is_default=True, type="control"),
                            version("versionb", [b.addr], b_pct)], **kw)]


def served_by(s, headers=None):
    r = requests.post(s.url("fleetep"), data=b'{"x":1}', headers=headers or {}, timeout=5)
    return r.status_code, r.headers.get("X-Sluice-Version")


def until(fn, want, timeout):
    """Poll fn() until it returns want or the deadline passes; the last value."""
    deadline = time.time() + timeout
    got = fn()
    while got != want and time.time() < deadline:
        time.sleep(0.01)
        got = fn()
    return got


def content_hash(shared):
    """SPEC §6 "hash": SHA-256 of the shared part (endpoints, tokens),
    serialised compactly with sorted keys."""
    part = {k: shared[k] for k in ("endpoints", "tokens") if k in shared}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def redis_config(r):
    text = r.client().get(KEY)
    return json.loads(text) if text is not None else None


def patch(s, v, body, ep="fleetep"):
    return requests.patch(s.admin("/admin/v1/endpoints/%s/versions/%s" % (ep, v)),
                          headers=H, json=body, timeout=10)


def test_split_change_served_by_all_within_1s():
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    fleet = [fleet_member(r, split_endpoints(a, b)) for _ in range(3)]
    seeded = redis_config(r)
    assert seeded["generation"] == 1
    assert [v["name"] for v in seeded["endpoints"][0]["versions"]] == ["versiona", "versionb"]
    assert sorted(seeded) == ["endpoints", "generation", "hash", "tokens"]
    assert seeded["hash"] == content_hash(seeded)
    for s in fleet:
        assert served_by(s) == (200, "versiona")

    resp = patch(fleet[0], "versionb", {"traffic_percentile": 100})
    assert resp.status_code == 200, resp.text
    t0 = time.time()
    # Applied on the instance that took the change before it answered.
    assert served_by(fleet[0]) == (200, "versionb")
    for s in fleet[1:]:
        assert until(lambda: served_by(s), (200, "versionb"),
                     APPLY_S - (time.time() - t0)) == (200, "versionb")
    assert redis_config(r)["generation"] == 2
    assert redis_config(r)["endpoints"][0]["versions"][1]["traffic_percentile"] == 100
    # Not written to the file: in a fleet the file's endpoints are the seed.
    with open(fleet[0].path) as f:
        assert json.load(f)["endpoints"][0]["versions"][1]["traffic_percentile"] == 0

    # The listing: every instance at the newest generation (heartbeats
    # every flush_interval_ms).
    def listing():
        j = requests.get(fleet[2].admin("/admin/v1/fleet"), headers=H, timeout=5).json()
        return (j["fleet"], j["generation"], len(j["instances"]),
                all(i["generation"] == 2 and i["applied_newest"] for i in j["instances"]),
                sum(i["self"] for i in j["instances"]))
    assert until(listing, (FLEET, 2, 3, True, 1), 5) == (FLEET, 2, 3, True, 1)
    out = subprocess.run([SLUICECTL, "--admin", fleet[1].admin(""), "--token", TOKEN, "fleet"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "fleet prod, newest generation 2", out.stdout
    assert len(lines) == 2 + 3 and sum("(this one)" in l for l in lines) == 1, out.stdout
    assert all(" 2 yes " in l for l in lines[2:]), out.stdout


def test_two_operators_at_once_both_succeed():
    """Two operators change different versions on two instances at the same
    moment, many times over: every change answers 200, and each takes
    exactly one generation (nothing lost, nothing applied twice)."""
    r = Redis()
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    eps = [endpoint("fleetep", [version("versiona", [ms[0].addr], 0, is_default=True),
                           version("versionb", [ms[1].addr], 0),
                           version("versionc", [ms[2].addr], 0)])]
    fleet = [fleet_member(r, eps) for _ in range(3)]
    rounds = 15
    statuses = []
    for i in range(rounds):
        go = threading.Barrier(2)
        results = {}

        def op(s, v, n):
            go.wait()
            resp = patch(s, v, {"description": "%s-%d" % (v, n), "traffic_percentile": n})
            results[v] = resp.status_code
        ts = [threading.Thread(target=op, args=(fleet[0], "versionb", i)),
              threading.Thread(target=op, args=(fleet[1], "versionc", i + 1))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        statuses.append(results)
    assert statuses == [{"versionb": 200, "versionc": 200}] * rounds
    cfg = redis_config(r)
    assert cfg["generation"] == 1 + 2 * rounds
    vs = {v["name"]: v for v in cfg["endpoints"][0]["versions"]}
    assert vs["versionb"]["description"] == "versionb-%d" % (rounds - 1)
    assert vs["versionc"]["description"] == "versionc-%d" % rounds
    # Every instance converges on the same generation and serves it.
    for s in fleet:
        def seen(s=s):
            j = requests.get(s.admin("/admin/v1/endpoints/fleetep"), headers=H, timeout=5).json()
            d = {v["name"]: (v["description"], v["traffic_percentile"]) for v in j["versions"]}
            return d["versionb"], d["versionc"]
        want = (("versionb-%d" % (rounds - 1), rounds - 1), ("versionc-%d" % rounds, rounds))
        assert until(seen, want, APPLY_S) == want


def test_regen_key_refused_everywhere_and_tokens_shared():
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    eps = split_endpoints(a, b, auth={"keys": True, "tokens": True}, keys=dict(KEYS))
    fleet = [fleet_member(r, eps) for _ in range(3)]
    old = {"Authorization": "Bearer " + KEYS["primary"]}
    second = {"Authorization": "Bearer " + KEYS["secondary"]}
    for s in fleet:
        assert served_by(s, old) == (200, "versiona")
        assert served_by(s) == (401, None)
    # A token issued by one instance works on all: the signing secret is shared.
    tok = requests.post(fleet[0].admin("/admin/v1/endpoints/fleetep/token"), headers=H, json={},
                        timeout=5).json()["access_token"]
    for s in fleet:
        assert served_by(s, {"Authorization": "Bearer " + tok}) == (200, "versiona")

    resp = requests.post(fleet[1].admin("/admin/v1/endpoints/fleetep/keys/regenerate"), headers=H,
                         json={"key_type": "Primary"}, timeout=10)
    assert resp.status_code == 200, resp.text
    t0 = time.time()
    new = resp.json()["primary_key"]
    assert new != KEYS["primary"] and resp.json()["secondary_key"] == KEYS["secondary"]
    assert served_by(fleet[1], old) == (401, None)
    for s in (fleet[0], fleet[2]):
        assert until(lambda: served_by(s, old)[0], 401, APPLY_S - (time.time() - t0)) == 401
    for s in fleet:
        assert served_by(s, {"Authorization": "Bearer " + new}) == (200, "versiona")
        assert served_by(s, second) == (200, "versiona")
        assert served_by(s, {"Authorization": "Bearer " + tok}) == (200, "versiona")
        keys = requests.get(s.admin("/admin/v1/endpoints/fleetep/keys"), headers=H, timeout=5).json()
        assert keys == {"primary_key": new, "secondary_key": KEYS["secondary"]}


def test_redis_away_keeps_serving_refuses_changes_and_catches_up():
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    fleet = [fleet_member(r, split_endpoints(a, b)) for _ in range(3)]
    assert patch(fleet[0], "versionb", {"traffic_percentile": 100}).status_code == 200
    for s in fleet:
        assert until(lambda: served_by(s), (200, "versionb"), APPLY_S) == (200, "versionb")

    r.kill()
    for s in fleet:
        # Refused once the instance has seen Redis go (at once for a closed socket).
        got = until(lambda: patch(s, "versionb", {"traffic_percentile": 0}).status_code, 503, 5)
        assert got == 503
        resp = patch(s, "versionb", {"traffic_percentile": 0})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        assert requests.get(s.admin("/admin/v1/fleet"), headers=H,
                            timeout=5).status_code == 503
        for _ in range(20):
            assert served_by(s) == (200, "versionb")

    # Back, empty (no persistence): the instances put generation 2 back,
    # then changes go through again and reach everyone.
    r.start()
    assert until(lambda: (redis_config(r) or {}).get("generation"), 2, 5) == 2
    assert until(lambda: patch(fleet[2], "versionb", {"traffic_percentile": 0}).status_code,
                 200, 5) == 200
    t0 = time.time()
    assert redis_config(r)["generation"] == 3
    for s in fleet:
        assert until(lambda: served_by(s), (200, "versiona"),
                     APPLY_S - (time.time() - t0)) == (200, "versiona")
    for s in fleet:
        assert '"event":"fleet_redis_disconnected"' in s.log()


def test_restart_while_redis_away_starts_from_cache():
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    fleet = [fleet_member(r, split_endpoints(a, b)) for _ in range(2)]
    assert patch(fleet[0], "versionb", {"traffic_percentile": 100}).status_code == 200
    s = fleet[1]
    assert until(lambda: served_by(s), (200, "versionb"), APPLY_S) == (200, "versionb")
    cache = s.path + ".fleet-cache"

    def cached_generation():
        try:
            with open(cache) as f:
                return json.load(f)["generation"]
        except (OSError, ValueError):
            return None
    # Written just after the workers have the generation.
    assert until(cached_generation, 2, APPLY_S) == 2
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600

    r.kill()
    assert s.stop() == 0
    s.spawn()
    s.wait_ready()
    # The file still says 0 %: the cache's generation 2 is what serves.
    assert '"source":"cache"' in s.log()
    for _ in range(20):
        assert served_by(s) == (200, "versionb")
    assert patch(s, "versionb", {"traffic_percentile": 0}).status_code == 503

    r.start()
    assert until(lambda: patch(s, "versionb", {"traffic_percentile": 0}).status_code,
                 200, 5) == 200
    t0 = time.time()
    assert redis_config(r)["generation"] == 3
    for m in fleet:
        assert until(lambda: served_by(m), (200, "versiona"),
                     APPLY_S - (time.time() - t0)) == (200, "versiona")
    with open(cache) as f:
        assert json.load(f)["generation"] == 3


def test_client_gone_while_change_waits_for_redis():
    """A change waits for Redis on the main loop; a client that hangs up
    meanwhile costs nothing: the change still lands everywhere."""
    import socket
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    fleet = [fleet_member(r, split_endpoints(a, b)) for _ in range(2)]
    # A script that keeps Redis busy for a second: the change's CAS waits
    # (or meets BUSY and is tried again).
    busy = threading.Thread(target=lambda: r.client().eval(
        "local t = redis.call('TIME') local s = t[1] + t[2] / 1e6 "
        "while true do t = redis.call('TIME') if t[1] + t[2] / 1e6 > s + 1 then break end "
        "end return 1", 0))
    busy.start()
    time.sleep(0.1)
    body = b'{"traffic_percentile": 100}'
    c = socket.create_connection(("127.0.0.1", fleet[0].admin_port))
    c.sendall(b"PATCH /admin/v1/endpoints/fleetep/versions/versionb HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
              % (TOKEN.encode(), len(body), body))
    time.sleep(0.1)
    c.close()
    busy.join()
    for s in fleet:
        assert until(lambda: served_by(s), (200, "versionb"), 5) == (200, "versionb")
        assert s.proc.poll() is None
    assert redis_config(r)["generation"] == 2
    assert patch(fleet[0], "versionb", {"traffic_percentile": 0}).status_code == 200


def test_missed_message_caught_by_poll_and_bad_changes_refused():
    """A generation written without a message (an operator's own SET, or a
    message lost) is picked up by the 5 s poll; changes that fail the rules
    are refused with their paths and leave the generation alone."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    fleet = [fleet_member(r, split_endpoints(a, b)) for _ in range(2)]
    resp = patch(fleet[0], "versionb", {"traffic_percentile": 101})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["errors"] == [
        "endpoints[0].versions[1].traffic_percentile: must be between 0 and 100"], resp.text
    assert patch(fleet[1], "nosuch", {"traffic_percentile": 1}).status_code == 404
    assert redis_config(r)["generation"] == 1

    cfg = redis_config(r)
    cfg["generation"] = 2
    cfg["endpoints"][0]["versions"][1]["traffic_percentile"] = 100
    r.client().set(KEY, json.dumps(cfg))        # no PUBLISH
    for s in fleet:
        assert until(lambda: served_by(s), (200, "versionb"), 5 + APPLY_S) == (200, "versionb")
        # Logged just after the workers have it (the cache file is written first).
        assert until(lambda: '"via":"poll"' in s.log(), True, 5), s.log()[-2000:]


def test_fleet_listing_outside_a_fleet():
    a = Model("versiona")
    s = Sluice([endpoint("lone", [version("versiona", [a.addr], 100)])],
               extra={"admin": {"token": TOKEN}})
    resp = requests.get(s.admin("/admin/v1/fleet"), headers=H, timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_reload_rereads_the_instance_part_only():
    """SIGHUP and POST /admin/v1/reload in a fleet: the file's endpoints are
    only the seed, so a reload keeps the fleet's; changing the fleet's name
    needs a restart (400, nothing changes)."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    s = fleet_member(r, split_endpoints(a, b))
    s.config["endpoints"][0]["versions"][1]["traffic_percentile"] = 100
    s.config["limits"] = {"max_body_bytes": 1000}
    s.write_config()
    resp = requests.post(s.admin("/admin/v1/reload"), headers=H, timeout=5)
    assert resp.status_code == 200, resp.text
    assert served_by(s) == (200, "versiona")           # the fleet's 0 %, not the file's 100
    big = requests.post(s.url("fleetep"), data=b"x" * 2000, timeout=5)
    assert big.status_code == 413                       # the instance part did apply
    assert redis_config(r)["generation"] == 1

    s.config["fleet"]["name"] = "staging"
    s.write_config()
    resp = requests.post(s.admin("/admin/v1/reload"), headers=H, timeout=5)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == \
        "fleet.name: joining, leaving or changing a fleet needs a restart"
    assert served_by(s) == (200, "versiona")


def readyz(s):
    j = requests.get(s.admin("/readyz"), timeout=5).json()
    return j.get("generation"), j.get("hash")


def descriptions(s, ep="fleetep"):
    j = requests.get(s.admin("/admin/v1/endpoints/%s" % ep), headers=H, timeout=5).json()
    return {v["name"]: v["description"] for v in j["versions"]}


def test_instance_behind_the_fleet_refuses_changes_and_loses_none():
    """issue 17 finding 6: instance B cannot apply generation 2 (its TLS
    certificate file is unreadable). An endpoint created through A (201)
    must survive an edit made through B: B computes changes on the
    generation it runs (1) while the fleet is at 2, so it must refuse them
    with 503 and the reason (on 60f2a02 it wrote generation 3 without the new
    endpoint and answered 500). Once the certificate is back, B catches up
    and the edit goes through on top of generation 2."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    A = fleet_member(r, split_endpoints(a, b))
    B = fleet_member(r, split_endpoints(a, b), tls=True)
    with open(B.cert) as f:
        cert = f.read()
    with open(B.cert, "w") as f:
        f.write("not a certificate\n")
    resp = requests.put(A.admin("/admin/v1/endpoints/newep"), headers=H, timeout=10, json={
        "auth": {"keys": False}, "versions": [version("versiona", [a.addr], 100)]})
    assert resp.status_code == 201, resp.text
    assert until(lambda: '"event":"fleet_apply_failed"' in B.log(), True, 5), B.log()[-2000:]

    resp = patch(B, "versiona", {"description": "edited through B"})
    assert resp.status_code == 503, resp.text
    err = resp.json()["error"]
    assert err["code"] == "unavailable"
    assert "generation (2)" in err["message"] and "listeners[1].tls" in err["message"], err
    cfg = redis_config(r)
    assert cfg["generation"] == 2
    assert [e["name"] for e in cfg["endpoints"]] == ["fleetep", "newep"]
    ready = requests.get(B.admin("/readyz"), timeout=5).json()
    assert ready["generation"] == 1 and ready["behind"]["generation"] == 2, ready

    with open(B.cert, "w") as f:
        f.write(cert)
    resp = patch(B, "versiona", {"description": "edited through B"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["generation"] == 3
    cfg = redis_config(r)
    assert cfg["generation"] == 3
    assert [e["name"] for e in cfg["endpoints"]] == ["fleetep", "newep"]
    assert cfg["endpoints"][0]["versions"][0]["description"] == "edited through B"
    want = (3, cfg["hash"])
    for s in (A, B):
        assert until(lambda: readyz(s), want, APPLY_S) == want
        assert requests.post(s.url("newep"), data=b"{}", timeout=5).status_code == 200
    assert "behind" not in requests.get(B.admin("/readyz"), timeout=5).json()


def test_failover_that_lost_a_write_converges_on_what_redis_holds():
    """issue 17 finding 7: A writes generation 2 while B is frozen; the
    write is then lost (the key goes back to generation 1, as after a
    failover to a replica that never had it); B writes its own generation 2.
    A must converge on B's generation 2 (same number, other content hash):
    on 60f2a02 A kept its own content under the same number for ever."""
    r = Redis()
    ms = [Model("versiona"), Model("versionb")]
    A = fleet_member(r, split_endpoints(*ms))
    B = fleet_member(r, split_endpoints(*ms))
    gen1 = r.client().get(KEY)
    os.kill(B.proc.pid, signal.SIGSTOP)
    try:
        resp = patch(A, "versionb", {"description": "the lost write"})
        assert resp.status_code == 200, resp.text
        os.kill(A.proc.pid, signal.SIGSTOP)
        try:
            r.client().set(KEY, gen1)
        finally:
            os.kill(B.proc.pid, signal.SIGCONT)
        resp = patch(B, "versiona", {"description": "after the failover"})
        assert resp.status_code == 200, resp.text
    finally:
        os.kill(A.proc.pid, signal.SIGCONT)
        os.kill(B.proc.pid, signal.SIGCONT)
    cfg = redis_config(r)
    assert cfg["generation"] == 2
    want = {"versiona": "after the failover", "versionb": None}
    for s in (A, B):
        assert until(lambda: descriptions(s), want, 5 + APPLY_S) == want
        assert until(lambda: readyz(s), (2, cfg["hash"]), APPLY_S) == (2, cfg["hash"])


def test_wait_replicas_short_is_an_honest_503():
    """issue 17 finding 7 (WAIT): with redis.wait_replicas 1, a fleet write
    is acknowledged only once a replica has it. With no replica, WAIT falls
    short: the answer is 503 saying the change is written and applied but
    could be lost by a failover (on 60f2a02: 200 without any WAIT). With a
    replica attached, 200."""
    r = Redis()
    ms = [Model("versiona"), Model("versionb")]
    A = fleet_member(r, split_endpoints(*ms),
                     redis_extra={"wait_replicas": 1, "wait_timeout_ms": 2000})
    resp = patch(A, "versionb", {"traffic_percentile": 10})
    assert resp.status_code == 503, resp.text
    msg = resp.json()["error"]["message"]
    assert "generation 2" in msg and "only 0 of the 1 replicas" in msg, msg
    assert redis_config(r)["generation"] == 2      # written and applied, unconfirmed
    assert readyz(A) == (2, redis_config(r)["hash"])

    port = free_port()
    start(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", tmpdir(),
           "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(r.port)])

    def linked():
        try:
            import redis as redislib
            info = redislib.Redis(port=port, decode_responses=True).info("replication")
            return info.get("master_link_status") == "up"
        except Exception:
            return False
    assert until(linked, True, 10)
    resp = patch(A, "versionb", {"traffic_percentile": 20})
    assert resp.status_code == 200, resp.text
    assert redis_config(r)["generation"] == 3


def test_changes_on_one_instance_are_queued_not_raced():
    """issue 17 finding 8: 8 concurrent PUTs to one instance (no other
    writer) all succeed (on 60f2a02, 3 to 4 answered 409), each as its own
    generation, and all 8 endpoints are in the final config."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    A = fleet_member(r, split_endpoints(a, b))
    go = threading.Barrier(8)
    out = {}

    def put(i):
        go.wait()
        resp = requests.put(A.admin("/admin/v1/endpoints/burst%d" % i), headers=H, timeout=15,
                            json={"auth": {"keys": False},
                                  "versions": [version("versiona", [a.addr], 100)]})
        out[i] = (resp.status_code, resp.json().get("generation"))
    ts = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(st for st, _ in out.values()) == [201] * 8, out
    assert sorted(g for _, g in out.values()) == list(range(2, 10)), out
    cfg = redis_config(r)
    assert cfg["generation"] == 9
    assert sorted(e["name"] for e in cfg["endpoints"]) == \
        ["burst%d" % i for i in range(8)] + ["fleetep"]


def test_forty_patches_through_two_instances_all_succeed():
    """issue 17 finding 8: 40 PATCHes of two versions fired at once through
    two instances (20 each) all answer 200 (on 60f2a02 about 30 answered
    409). Each takes exactly one generation (2 to 41, as its answer says),
    each answer shows its own description, and each version's final
    description is the one of its change with the highest generation:
    nothing acknowledged was lost or reordered."""
    r = Redis()
    ms = [Model("versiona"), Model("versionb"), Model("versionc")]
    eps = [endpoint("fleetep", [version("versiona", [ms[0].addr], 0, is_default=True),
                                version("versionb", [ms[1].addr], 0),
                                version("versionc", [ms[2].addr], 0)])]
    A, B = fleet_member(r, eps), fleet_member(r, eps)
    go = threading.Barrier(40)
    out = []
    lock = threading.Lock()

    def op(s, v, i):
        go.wait()
        resp = patch(s, v, {"description": "%s-%d" % (v, i)})
        body = resp.json()
        with lock:
            out.append((resp.status_code, v, i, body.get("generation"),
                        {x["name"]: x["description"] for x in body.get("versions", [])}))
    ts = [threading.Thread(target=op, args=(A, "versionb", i)) for i in range(20)] + \
        [threading.Thread(target=op, args=(B, "versionc", i)) for i in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(o[0] for o in out) == [200] * 40, [o[:4] for o in out if o[0] != 200]
    assert sorted(o[3] for o in out) == list(range(2, 42))
    for st, v, i, g, desc in out:
        assert desc[v] == "%s-%d" % (v, i), (v, i, g, desc)
    cfg = redis_config(r)
    assert cfg["generation"] == 41
    final = {v["name"]: v.get("description") for v in cfg["endpoints"][0]["versions"]}
    for v in ("versionb", "versionc"):
        last = max((o for o in out if o[1] == v), key=lambda o: o[3])
        assert final[v] == "%s-%d" % (v, last[2]), (final, last[:4])
    for s in (A, B):
        assert until(lambda: readyz(s), (41, cfg["hash"]), APPLY_S) == (41, cfg["hash"])


def test_restarted_instance_reports_the_fleet_generation():
    """issue 17 finding 10: /readyz and "generation" in sluice:instances
    report the fleet's generation, not a per-process counter: an instance
    restarted with Redis up, or from its cache file with Redis away, reports
    the fleet's 4 (on 60f2a02: 1)."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    A, B = fleet_member(r, split_endpoints(a, b)), fleet_member(r, split_endpoints(a, b))
    for pct in (10, 20, 30):
        assert patch(A, "versionb", {"traffic_percentile": pct}).status_code == 200
    assert until(lambda: readyz(B)[0], 4, APPLY_S) == 4
    assert B.stop() == 0
    B.spawn()
    B.wait_ready()
    assert readyz(B)[0] == 4
    assert requests.get(B.admin("/admin/v1/endpoints/fleetep"), headers=H,
                        timeout=5).json()["generation"] == 4

    def instance_generations():
        # The running A and the restarted B (ids are host:pid:random); the
        # stopped B's entry goes with its final flush, which a loaded
        # sanitized run can cut short (then the sweep takes it later).
        pids = {A.proc.pid, B.proc.pid}
        out = []
        for k, v in r.client().hgetall("sluice:instances").items():
            if int(k.rsplit(":", 2)[1]) in pids:
                j = json.loads(v)
                out.append((j["generation"], j["fleet_generation"]))
        return sorted(out)
    assert until(instance_generations, [(4, 4), (4, 4)], 5) == [(4, 4), (4, 4)]

    r.kill()
    assert B.stop() == 0
    B.spawn()
    B.wait_ready()
    assert '"source":"cache"' in B.log()
    assert readyz(B)[0] == 4


def test_joining_instance_generates_no_keys():
    """issue 17 finding 10: keys are fleet-wide. The instance that seeds the
    fleet generates the keys its file lacks once, into the fleet's config;
    an instance that joins uses the fleet's keys and generates none (on
    60f2a02 every instance wrote keys of its own into its file, keys the
    fleet never used). Neither file is rewritten."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    eps = split_endpoints(a, b, auth={"keys": True})
    A = fleet_member(r, eps)
    keys = redis_config(r)["endpoints"][0]["keys"]
    assert len(keys["primary"]) == 43 and len(keys["secondary"]) == 43
    B = fleet_member(r, eps)
    for s in (A, B):
        with open(s.path) as f:
            assert json.load(f) == s.config            # the file as written, no keys
        assert '"event":"keys_generated"' not in s.log()
        got = requests.get(s.admin("/admin/v1/endpoints/fleetep/keys"), headers=H, timeout=5)
        assert got.json() == {"primary_key": keys["primary"], "secondary_key": keys["secondary"]}
        assert served_by(s, {"Authorization": "Bearer " + keys["primary"]}) == (200, "versiona")
    assert redis_config(r)["endpoints"][0]["keys"] == keys
    assert redis_config(r)["generation"] == 1


def test_redis_busy_is_waited_out_not_a_500():
    """A change that meets a Redis busy with a long script (BUSY) is tried
    again until its deadline instead of failing: nothing was written, so
    trying again is safe (on 60f2a02 the answer was 500). Every answer of a
    fleet change is 2xx, 409 or 503 (issue 17 item 3)."""
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    A = fleet_member(r, split_endpoints(a, b))
    c = r.client()
    c.config_set("busy-reply-threshold", 100)       # BUSY after 0.1 s of a script
    busy = threading.Thread(target=lambda: r.client().eval(
        "local t = redis.call('TIME') local s = t[1] + t[2] / 1e6 "
        "while true do t = redis.call('TIME') if t[1] + t[2] / 1e6 > s + 1.5 then break end "
        "end return 1", 0))
    busy.start()
    time.sleep(0.3)
    try:
        resp = patch(A, "versionb", {"traffic_percentile": 100})
    finally:
        busy.join()
    assert resp.status_code == 200, resp.text
    assert redis_config(r)["generation"] == 2
    assert served_by(A) == (200, "versionb")
    assert '"event":"fleet_cas_failed"' not in A.log()
