"""The rollout adversary (issue 17, "What must hold" item 4): a rollout
driven while clients and faults work against it, checked by invariants
rather than examples.

Adversaries: clients pinning requests to the version under rollout
(successful ones to a bad version, failing ones to a good version), sticky
traffic, the config file unwritable while a decision is being saved, Redis
killed during a step, and the driver SIGKILLed around a step boundary or
between a decision and its change, then restarted.

Invariants, checked on what an operator sees (the rollout's GET, the
admin_change log lines, the config file):
  1. a version whose routed traffic is worse is never promoted (and a good
     one is not rolled back by pins);
  2. a decision is never taken twice: at most one deciding evaluation
     (pass or fail) per step in the history, and no two admin_change lines
     by the rollout for the same (op, step);
  3. a rollout is never left unjudged: it ends in a terminal phase, or
     paused with a reason.

Timings (when each fault starts and how long it lasts) are drawn from a
seeded generator; the seed is printed (set SLUICE_ADVERSARY_SEED to replay
one). The assertions do not depend on the draw."""
import os
import random
import signal
import time

from harness import Model, Redis
from test_rollout import (STEADY, Pinner, Traffic, Unwritable, act, get, log_events, plan,
                          rollout_sluice, until, until_state, versions)

SEED = int(os.environ.get("SLUICE_ADVERSARY_SEED") or time.time_ns() % 1000000)
print("test_rollout_adversary: seed %d (SLUICE_ADVERSARY_SEED=%d to replay)" % (SEED, SEED),
      flush=True)


def rng(name):
    return random.Random("%d:%s" % (SEED, name))


def check_invariants(s, good):
    """The three invariants on the rollout's final state and history."""
    g = get(s)
    st = g["state"]
    # 3. never left unjudged
    assert st["phase"] in ("promoted", "rolled_back", "aborted") or (
        st["phase"] == "paused" and st["reason"]), g
    # 1. worse routed traffic is never promoted; pins never roll back a good one
    if good:
        assert st["phase"] != "rolled_back", g
    else:
        assert st["phase"] != "promoted", g
        assert versions(s)["versionb"]["is_default"] is False
    # 2. one decision per step, one change per decision
    decided = [e["step"] for e in g["evaluations"] if e["verdict"] in ("pass", "fail")]
    assert len(decided) == len(set(decided)), g["evaluations"]
    changes = [(c["op"], c["step"]) for c in log_events(s, "admin_change")
               if c.get("by") == "rollout"]
    assert len(changes) == len(set(changes)), changes
    return g


def decided(s):
    """(step, verdict) of the deciding evaluations in the rollout's history."""
    return [(e["step"], e["verdict"]) for e in get(s)["evaluations"] if e["verdict"] != "hold"]


def restart(s):
    s.spawn()
    s.wait_ready(timeout=20)


def test_bad_version_pinned_sticky_unsaved_decision_and_a_killed_driver():
    """A version failing 30 % of its requests, ramped with sticky keys while
    a client pins successful requests to it. Redis dies for a moment early
    in the step; the config file turns unwritable before the first gate;
    the driver is SIGKILLed after the gate's decision was recorded but
    before its change could be saved, and restarted while the file is still
    unwritable. The restarted driver carries out the recorded decision
    (it does not judge again); the version ends rolled back at its first
    step."""
    r = rng("bad")
    redis = Redis(persist=True)
    a = Model("versiona", *STEADY)
    b = Model("versionb", "--error-rate", "0.3", *STEADY)
    s = rollout_sluice(redis, a, b, plan(steps=(20, 40, 60), step_s=2, min_requests=60),
                       sticky="X-User")
    t = Traffic(s, threads=2, sticky="X-User")
    p = Pinner(s, threads=3)
    lock = None
    try:
        assert act(s, "start").status_code == 200
        lock = Unwritable(s)
        time.sleep(r.uniform(0.1, 0.8))
        redis.kill()
        time.sleep(r.uniform(0.3, 1.2))
        redis.start()
        until(lambda: log_events(s, "rollout_change_failed"), 30,
              "the decision failing to be saved")
        time.sleep(r.uniform(0, 1.5))
        s.stop(signal.SIGKILL)
        restart(s)
        until(lambda: log_events(s, "rollout_decision_resumed"), 20,
              "the restarted driver taking up the recorded decision")
        time.sleep(r.uniform(0.5, 2.5))
        lock.release()
        st = until_state(s, lambda st: st["phase"] != "running", 30, "the end of the rollout")
        assert st["phase"] == "rolled_back" and st["step"] == 0, get(s)
        until(lambda: decided(s) == [(0, "fail")], 10, "the history (reread from Redis)",
              show=lambda: get(s)["evaluations"])
        check_invariants(s, good=False)
        assert [c["op"] for c in log_events(s, "admin_change") if c.get("by") == "rollout"] \
            == ["rollout_rollback"]
        assert redis.client().hget("sluice:{ep1}:rollout:versionb", "tests") == "1"
    finally:
        if lock is not None:
            lock.release()
        p.stop()
        t.stop()


def test_good_version_pinned_failures_redis_lost_and_a_killed_driver():
    """A good version, ramped with sticky keys while a client pins failing
    requests (500) to it. After its first step passes, Redis dies for longer
    than 3 x step_s: the rollout pauses with the reason and the version's
    share goes to 0. Redis comes back, an operator resumes; the driver is
    SIGKILLed around a later step boundary and restarted. The version is
    promoted, each step decided once."""
    r = rng("good")
    redis = Redis(persist=True)
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    s = rollout_sluice(redis, a, b, plan(steps=(20, 40, 60), step_s=2, min_requests=30),
                       sticky="X-User")
    t = Traffic(s, threads=2, sticky="X-User")
    p = Pinner(s, threads=2, extra={"X-Test-Status": "500"})
    try:
        assert act(s, "start").status_code == 200
        until_state(s, lambda st: st["step"] >= 1, 30, "step 2")
        time.sleep(r.uniform(0, 1.5))
        redis.kill()
        st = until_state(s, lambda st: st["phase"] != "running", 30, "the pause")
        assert st["phase"] == "paused" and "could not be judged" in st["reason"], st
        assert st["traffic_percentile"] == 0
        check_invariants(s, good=True)
        redis.start()
        time.sleep(r.uniform(0.2, 1.5))
        resp = act(s, "resume")
        assert resp.status_code == 200, resp.text
        step = resp.json()["state"]["step"]
        assert resp.json()["state"]["traffic_percentile"] == (20, 40, 60)[step]
        if step < 2:
            until_state(s, lambda st: st["step"] > step or st["phase"] != "running", 30,
                        "the next step after resuming")
        # around the next step boundary: step_s after the step began, give or take
        time.sleep(2 + r.uniform(-0.4, 0.6))
        s.stop(signal.SIGKILL)
        restart(s)
        st = until_state(s, lambda st: st["phase"] != "running", 60, "the end of the rollout")
        assert st["phase"] == "promoted", get(s)
        until(lambda: decided(s) == [(0, "pass"), (1, "pass"), (2, "pass")], 10,
              "the history (reread from Redis)", show=lambda: get(s)["evaluations"])
        check_invariants(s, good=True)
    finally:
        p.stop()
        t.stop()
