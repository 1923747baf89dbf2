"""Fleet fault test (issue 17, "What must hold" item 3): the Jepsen idea at
the size of one machine. Concurrent writers make admin changes through every
instance of a fleet while faults are injected; each writer records its
history, and afterwards the history and the final state are checked against
what SPEC §6 promises.

The system: a Redis primary with two replicas and three sentinels (each data
node with an append-only file synced on every write), and three sluice
instances A, B, C of one fleet that reach Redis through the sentinels with
`redis.wait_replicas` 1 (a change is acknowledged only once a replica has
it). B also serves TLS. The fleet starts with endpoints wrt0..wrt5, one per
writer.

The history: six writer threads, each making changes one after the other
(seeded RNG, the seed printed; SLUICE_FAULT_SEED repeats a run), each through
an instance picked at random: either a PATCH of the description of the
version of its own endpoint wrtN to a value unique to the attempt
("wrtN-dK"), or a PUT creating a new endpoint "wrtN-eK" that no one else
touches. Every attempt
is recorded: writer, attempt, operation, instance, value, start and end
time, status, the generation the answer names, the error message.

The faults, one after another while the writers run:
1. freeze: C is SIGSTOPped for 2 s, then SIGCONTed.
2. cannot apply: B's certificate file is replaced by garbage, so B cannot
   apply the next generations (its listeners' TLS is rebuilt on every
   apply), for 3 s; then it is put back. Checked to have bitten: B logged
   fleet_apply_failed.
3. Redis killed and restarted: the primary is SIGKILLed and started again
   at once on its port, from its append-only file, the sentinels told to
   wait meanwhile (down-after-milliseconds 60 s): a failover decided while
   the old primary comes back is Sentinel's split brain (a write confirmed
   by a replica still attached to the restarted primary, then dropped when
   that replica follows the new one), which no client can prevent and SPEC
   §6 does not promise to survive. An early version of this test, without
   that, once lost 4 acknowledged creations under heavy machine load (the
   sanitized build, load average 11), all in the seconds of this fault; a
   second failover there is the likely cause, not confirmed (two runs that
   forced one lost nothing). Checked now: the sentinels' logs show exactly
   one failover in the whole run (fault 5).
4. Redis frozen: the primary is SIGSTOPped for 9 s (past the changes'
   8 s deadline; sentinels told to wait), then SIGCONTed. Changes waiting on
   it are answered 503 at their deadline with the outcome left open, and
   Redis runs them when it wakes.
5. a Sentinel failover that loses the last write: the writers are held (the
   changes under way finish), both replicas are SIGSTOPped, their
   replication links filled, and one more change (PUT of endpoint
   "lostwrite") is made through A: WAIT cannot be satisfied, so it must be
   answered 503 (written, unconfirmed). The primary is SIGKILLed, the
   replicas SIGCONTed, the sentinels promote one that never had the write
   (checked: the new primary lacks it). The writers go on.

What SPEC §6 promises, and exactly what is checked:
- I1: every answer is 2xx, 409 or 503: never a 500, never another status,
  never a dropped connection or a client timeout.
- I2: an acknowledged change is never lost, across every fault above
  (WAIT satisfied before each acknowledgement, so a failover keeps it):
  every endpoint whose PUT was answered 2xx is in the final config.
- I3: each writer's endpoint ends with the description of its last
  acknowledged PATCH, or of a later attempt whose outcome the answer left
  open (503 without "nothing was written"); never the value of an attempt
  refused outright (409, or 503 "nothing was written").
- I4: no two acknowledged changes were answered with the same generation
  number (each change is its own generation; none reused for an
  acknowledged one by the failover).
- I5: the lost write was answered 503 and is absent from the new primary;
  a write that was not confirmed may be lost, and then every instance drops
  it: it is in no instance's final config.
- I6: every instance converges on what Redis holds: /readyz generation and
  hash equal to the key's number and the SHA-256 of its shared part
  (computed here), and GET /admin/v1/endpoints shows the same endpoints and
  descriptions as the key.
- I7: every instance is alive at the end and exits 0 on SIGTERM (checked by
  the harness; on the sanitized build that is where a report would show).
"""
import hashlib
import json
import os
import random
import signal
import threading
import time

import requests

from harness import Model, SentinelGroup, Sluice, endpoint, until, version

TOKEN = "fault-admin-token"
H = {"Authorization": "Bearer " + TOKEN}
FLEET = "faults"
KEY = "sluice:fleet:{%s}:config" % FLEET
WRITERS = 6
FILLER_BYTES = 80 << 20         # as in test_sentinel: beyond what the kernel buffers
DOWN_MS = 3000                  # the sentinels' down-after-milliseconds (1 s saw a
                                # spurious failover on a loaded sanitized run)




def content_hash(shared):
    part = {k: shared[k] for k in ("endpoints", "tokens") if k in shared}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def member(g, model, tls=False):
    redis = {"sentinels": g.addresses(), "master_name": g.name, "flush_interval_ms": 200,
             "wait_replicas": 1, "wait_timeout_ms": 300}
    eps = [endpoint("wrt%d" % i, [version("versiona", [model.addr], 100)]) for i in range(WRITERS)]
    return Sluice(eps, tls=tls, extra={"redis": redis, "admin": {"token": TOKEN},
                                       "fleet": {"name": FLEET}})


def sentinels(g, down_ms):
    """Set every sentinel's down-after-milliseconds."""
    for port in g.sentinel_ports:
        g.client(port).execute_command("SENTINEL", "SET", g.name, "down-after-milliseconds",
                                       str(down_ms))


def switches(g):
    """How many failovers the sentinels' logs record (+switch-master, once
    per sentinel and failover)."""
    return g.logs().count("+switch-master") // len(g.sentinel_ports)


def indeterminate(status, message):
    """An answer that leaves open whether the change was made."""
    return status == 503 and "nothing was written" not in (message or "")


class Writer(threading.Thread):
    def __init__(self, n, seed, instances, gate):
        super().__init__()
        self.n, self.rng, self.instances, self.gate = n, random.Random(seed), instances, gate
        self.history = []
        self.stop_evt = threading.Event()
        self.idle = threading.Event()

    def run(self):
        k = 0
        with requests.Session() as http:
            while not self.stop_evt.is_set():
                if not self.gate.is_set():
                    self.idle.set()
                    self.gate.wait()
                    self.idle.clear()
                    continue
                name, s = self.rng.choice(self.instances)
                if self.rng.random() < 0.3:
                    op, value = "put", "wrt%d-e%d" % (self.n, k)
                    url = s.admin("/admin/v1/endpoints/" + value)
                    body = {"auth": {"keys": False},
                            "versions": [{"name": "versiona", "upstreams": [s.model_addr]}]}
                    method = http.put
                else:
                    op, value = "patch", "wrt%d-d%d" % (self.n, k)
                    url = s.admin("/admin/v1/endpoints/wrt%d/versions/versiona" % self.n)
                    body = {"description": value}
                    method = http.patch
                t0 = time.time()
                rec = {"writer": self.n, "k": k, "op": op, "instance": name, "value": value,
                       "start": t0}
                try:
                    resp = method(url, headers=H, json=body, timeout=30)
                    rec["status"] = resp.status_code
                    try:
                        j = resp.json()
                    except ValueError:
                        j = {}
                    rec["generation"] = j.get("generation")
                    rec["message"] = (j.get("error") or {}).get("message")
                except requests.RequestException as e:
                    rec["status"], rec["message"] = None, repr(e)
                rec["end"] = time.time()
                self.history.append(rec)
                k += 1
                time.sleep(self.rng.uniform(0.1, 0.4))
        self.idle.set()


def test_fleet_under_faults():
    seed = int(os.environ.get("SLUICE_FAULT_SEED", str(int(time.time() * 1000) % 1000000)))
    print("fleet fault test seed %d (SLUICE_FAULT_SEED=%d repeats it)" % (seed, seed), flush=True)
    rng = random.Random(seed)
    t_start = time.time()
    g = SentinelGroup(persist=True, down_ms=DOWN_MS)
    model = Model("versiona")
    A, B, C = member(g, model), member(g, model, tls=True), member(g, model)
    fleet = {"A": A, "B": B, "C": C}
    for s in fleet.values():
        s.model_addr = model.addr
    gate = threading.Event()
    gate.set()
    writers = [Writer(i, rng.randrange(1 << 30), sorted(fleet.items()), gate)
               for i in range(WRITERS)]
    faults = []

    def pause(a, b):
        time.sleep(rng.uniform(a, b))

    def hold():
        gate.clear()
        for w in writers:
            until(lambda: w.idle.is_set(), 40, "writer %d to finish its change" % w.n)

    for w in writers:
        w.start()
    try:
        # 1. An instance frozen and resumed.
        pause(1.5, 2.5)
        os.kill(C.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(2)
        finally:
            os.kill(C.proc.pid, signal.SIGCONT)
        faults.append("C frozen 2 s")

        # 2. An instance that cannot apply a generation, then can again.
        pause(1, 2)
        with open(B.cert) as f:
            cert = f.read()
        with open(B.cert, "w") as f:
            f.write("not a certificate\n")
        try:
            until(lambda: '"event":"fleet_apply_failed"' in B.log(), 15,
                  "B failing to apply a generation")
            time.sleep(3)
        finally:
            with open(B.cert, "w") as f:
                f.write(cert)
        faults.append("B unable to apply (certificate unreadable) ~3 s")

        # 3. Redis killed and restarted (from its append-only file), with
        # the sentinels told to wait: a failover while the old primary comes
        # back would be Sentinel's split brain (writes confirmed by a replica
        # on the restarted primary, then dropped by the failover), which no
        # client can prevent and SPEC §6 does not cover.
        pause(1, 2)
        sentinels(g, 60000)
        try:
            primary = g.primary_port
            g.kill(primary)
            g.restart(primary)
            until(lambda: g.role(primary) == "master", 30, "the restarted primary")
        finally:
            sentinels(g, DOWN_MS)
        faults.append("Redis primary SIGKILLed and restarted")

        # 4. Redis frozen past the changes' deadline (8 s), sentinels told
        # to wait: changes under way are answered 503 at their deadline,
        # the outcome open; Redis runs them when it wakes.
        pause(1, 2)
        sentinels(g, 60000)
        try:
            frozen = until(lambda: g.primary(), 30, "the sentinels naming a primary")
            g.pause(frozen)
            try:
                time.sleep(9)
            finally:
                g.resume(frozen)
        finally:
            sentinels(g, DOWN_MS)
        faults.append("Redis primary frozen 9 s")

        # 5. A Sentinel failover that loses the last write.
        pause(2, 3)
        hold()
        old = until(lambda: g.primary(), 30, "the sentinels naming a primary")
        until(lambda: g.role(old) == "master", 30, "the primary answering")
        p = g.client(old, socket_timeout=60)
        until(lambda: p.execute_command("WAIT", 2, 1000) == 2, 30, "both replicas in sync")
        # The replicas now (fault 3 may have moved the primary).
        replicas = [port for port in g.args if port != old and g.procs[port].poll() is None]
        assert len(replicas) == 2, (old, replicas)
        for port in replicas:
            g.pause(port)
        try:
            # This primary dies next and is not restarted: its append-only
            # file need not take the filler too.
            p.config_set("appendonly", "no")
            p.set("fault-test:filler", b"\0" * FILLER_BYTES)
            t0 = time.time()
            lost = requests.put(A.admin("/admin/v1/endpoints/lostwrite"), headers=H, timeout=30,
                                json={"auth": {"keys": False}, "versions": [
                                    {"name": "versiona", "upstreams": [model.addr]}]})
            j = lost.json()
            lost_rec = {"writer": "test", "k": 0, "op": "put", "instance": "A",
                        "value": "lostwrite", "start": t0, "end": time.time(),
                        "status": lost.status_code, "generation": j.get("generation"),
                        "message": (j.get("error") or {}).get("message")}
            assert "lostwrite" in [e["name"] for e in json.loads(p.get(KEY))["endpoints"]]
            g.kill(old)
        finally:
            for port in replicas:
                g.resume(port)
        new = g.wait_failover(old)
        assert new in replicas
        after = json.loads(g.client(new).get(KEY))
        # I5: the failover did lose the unconfirmed write (else the fault
        # did not happen as planned: reported with the other violations).
        lost_on_failover = "lostwrite" not in [e["name"] for e in after["endpoints"]]
        faults.append("Sentinel failover losing the last (unconfirmed) write")
        gate.set()
        pause(3, 4)
    finally:
        gate.set()
        for w in writers:
            w.stop_evt.set()
        for w in writers:
            w.join()
    history = sorted([lost_rec] + [r for w in writers for r in w.history],
                     key=lambda r: r["start"])
    violations = []
    if switches(g) != 1:
        violations.append("the faults were not as planned: %d failovers, not 1" % switches(g))
    if not lost_on_failover:
        violations.append("I5: the new primary had the write that no replica had right after "
                          "the failover (generation %d)" % after["generation"])
    if lost_rec["status"] != 503 or "only 0 of the 1 replicas" not in (lost_rec["message"] or ""):
        violations.append("I5: the write no replica had was answered %s (%s), not 503"
                          % (lost_rec["status"], lost_rec["message"]))

    # I1: honest answers only.
    statuses = {}
    for r in history:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    bad = [r for r in history if r["status"] not in (200, 201, 409, 503)]
    if bad:
        violations.append("I1: %d answers neither 2xx, 409 nor 503, e.g. %s" % (len(bad), bad[:3]))

    # The final state: Redis (the sentinels' primary, asked now: after an
    # unplanned failover the one the test last knew may be a replica) and
    # every instance on it.
    q = g.client(until(lambda: g.primary(), 30, "the sentinels naming a primary"))
    final = json.loads(q.get(KEY))
    want = (final["generation"], content_hash(final))
    if final.get("hash") != want[1]:
        violations.append("the key's hash %s is not the SHA-256 of its content %s"
                          % (final.get("hash"), want[1]))
    names = {e["name"]: e for e in final["endpoints"]}
    descs = {n: e["versions"][0].get("description") for n, e in names.items()}

    # I6: every instance converges on it (messages, else the 5 s poll).
    def state(s):
        j = requests.get(s.admin("/readyz"), timeout=5).json()
        eps = requests.get(s.admin("/admin/v1/endpoints"), headers=H, timeout=5).json()
        return ((j["generation"], j.get("hash")),
                {e["name"]: e["versions"][0]["description"] for e in eps["endpoints"]})
    for name, s in fleet.items():
        try:
            until(lambda: state(s) == (want, descs), 15, "convergence")
        except AssertionError:
            got = state(s)
            violations.append("I6: instance %s serves %s with %d endpoints (%d differ from "
                              "Redis's), not %s" % (name, got[0], len(got[1]), len(
                                  set(got[1].items()) ^ set(descs.items())), want))

    acked = [r for r in history if r["status"] in (200, 201)]
    # I2: every acknowledged creation survived.
    missing = [r for r in acked if r["op"] == "put" and r["value"] not in names]
    if missing:
        violations.append("I2: %d acknowledged creations lost, e.g. %s" % (len(missing),
                                                                          missing[:3]))
    # I3: each writer's description: its last acknowledged value or a later open one.
    for w in writers:
        mine = [r for r in w.history if r["op"] == "patch"]
        last_ack = max((i for i, r in enumerate(mine) if r["status"] in (200, 201)), default=-1)
        allowed = {None if last_ack < 0 else mine[last_ack]["value"]}
        allowed |= {r["value"] for r in mine[last_ack + 1:]
                    if indeterminate(r["status"], r["message"])}
        got = descs.get("wrt%d" % w.n)
        if got not in allowed:
            violations.append("I3: writer %d's endpoint ends with %r, not one of %s"
                              % (w.n, got, sorted(map(str, allowed))))
    # I4: one generation per acknowledged change.
    gens = [r["generation"] for r in acked]
    dup = sorted({x for x in gens if gens.count(x) > 1}, key=str)
    if dup:
        violations.append("I4: generations answered to more than one acknowledged change: %s"
                          % dup[:10])
    # I5: the unconfirmed lost write is nowhere.
    if "lostwrite" in names:
        violations.append("I5: the lost write is in the final config")

    refused = sum(1 for r in history if r["status"] in (409, 503))
    reasons = {}
    for r in history:
        if r["status"] == 503:
            m = r["message"] or ""
            why = next((name for key, name in (
                ("newest generation", "instance behind"), ("is unreachable", "Redis away"),
                ("went away during", "connection lost mid-change"),
                ("replicas", "WAIT short"), ("primary is changing", "READONLY"),
                ("did not answer", "no reply by the deadline"),
                ("before its deadline", "queued past the deadline"),
                ("not applied here", "not applied here"))
                if key in m), m[:40])
            reasons[why] = reasons.get(why, 0) + 1
    print("fleet fault test: seed %d, %.1f s, %d changes attempted, %d acknowledged, "
          "%d refused (%s; 503: %s), final generation %d with %d endpoints; faults: %s"
          % (seed, time.time() - t_start, len(history), len(acked), refused,
             ", ".join("%s: %d" % (k, v) for k, v in sorted(statuses.items(), key=str)),
             ", ".join("%s %d" % kv for kv in sorted(reasons.items())),
             final["generation"], len(names), "; ".join(faults)), flush=True)
    assert violations == [], "\n".join(violations)
