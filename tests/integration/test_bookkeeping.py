"""Nothing Sluice writes to Redis grows without bound (SPEC §4, issue 17
finding 10): an instance's flush sequence and sluice:instances entry go
when it stops cleanly or has been silent for retention_minutes, and a
mirror's diff samples expire and are deleted with its compare block."""
import json
import time

import requests

from harness import Model, Redis, Sluice, endpoint, until, version

ADMIN = {"Authorization": "Bearer adm-secret-token"}



def sluice(redis, versions, retention=30):
    rc = {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100,
          "retention_minutes": retention}
    return Sluice([endpoint("epone", versions)], extra={"redis": rc, "admin": {"token": "adm-secret-token"}})


def test_clean_stop_leaves_no_flush_sequence():
    """Issue 17 finding 10: on 60f2a02 each start added a sluice:flushseq
    field that was never removed. A clean stop removes the instance's field
    and its sluice:instances entry, after its last batch is written."""
    redis = Redis()
    rc = redis.client()
    m = Model("versiona")
    for _ in range(3):
        s = sluice(redis, [version("versiona", [m.addr], 100)])
        assert requests.post(s.url("epone"), data=b"x", timeout=5).status_code == 200
        until(lambda: rc.hlen("sluice:flushseq") == 1, 10, "a flush")
        assert s.stop() == 0
        assert rc.hkeys("sluice:flushseq") == [], rc.hgetall("sluice:flushseq")
        assert rc.hkeys("sluice:instances") == [], rc.hgetall("sluice:instances")
    assert int(rc.hget("sluice:{epone}:total:versiona", "requests")) == 3


def test_silent_instances_swept():
    """Issue 17 finding 10: an instance silent for retention_minutes (it
    crashed: no clean stop) loses its sluice:instances entry and its flush
    sequence; a flush sequence whose instance has no entry goes too; a live
    instance keeps both."""
    redis = Redis()
    rc = redis.client()
    now = int(time.time())
    rc.hset("sluice:instances", "crashed:1:aa",
            json.dumps({"started": now - 7200, "last_flush": now - 3600, "version": "0.1.0",
                        "generation": 3}))
    rc.hset("sluice:instances", "recent:2:bb",
            json.dumps({"started": now - 30, "last_flush": now - 10, "version": "0.1.0",
                        "generation": 3}))
    rc.hset("sluice:flushseq", "crashed:1:aa", 17)
    rc.hset("sluice:flushseq", "recent:2:bb", 5)
    rc.hset("sluice:flushseq", "orphan:3:cc", 9)
    m = Model("versiona")
    s = sluice(redis, [version("versiona", [m.addr], 100)], retention=1)
    assert requests.post(s.url("epone"), data=b"x", timeout=5).status_code == 200
    until(lambda: rc.hexists("sluice:flushseq", "orphan:3:cc") == 0, 10, "the sweep")
    inst = rc.hkeys("sluice:instances")
    seqs = rc.hkeys("sluice:flushseq")
    assert "crashed:1:aa" not in inst and "crashed:1:aa" not in seqs, (inst, seqs)
    assert "recent:2:bb" in inst and "recent:2:bb" in seqs, (inst, seqs)
    mine = [k for k in inst if k != "recent:2:bb"]
    seqs = until(lambda: rc.hkeys("sluice:flushseq") if len(rc.hkeys("sluice:flushseq")) == 2
                 else None, 10, "its own flush")
    assert len(mine) == 1 and mine[0] in seqs, (inst, seqs)


def test_diff_samples_expire_and_go_with_compare():
    """Issue 17 finding 10, SPEC §4 and §7: diff samples (possibly personal
    data) expire after retention_minutes and are deleted when the mirror's
    compare block is removed; on 60f2a02 they stayed in Redis."""
    redis = Redis()
    rc = redis.client()
    live, mirror = Model("versiona"), Model("versionb")
    s = sluice(redis, [
        version("versiona", [live.addr], 100, is_default=True, type="control"),
        version("versionb", [mirror.addr], 0, mirror_percentile=50,
                compare={"mode": "json", "samples": 5})])
    key = "sluice:{epone}:diffs:versionb"
    for i in range(40):
        assert requests.post(s.url("epone"), data=b'{"x":%d}' % i, timeout=5).status_code == 200
    until(lambda: rc.llen(key) == 5, 10, "samples")
    ttl = rc.ttl(key)
    assert 0 < ttl <= 30 * 60, ttl
    r = requests.patch(s.admin("/admin/v1/endpoints/epone/versions/versionb"), headers=ADMIN,
                       json={"compare": None}, timeout=5)
    assert r.status_code == 200, r.text
    until(lambda: rc.exists(key) == 0, 10, "samples deleted")
    # Mirrored, no longer compared: nothing comes back.
    for i in range(5):
        assert requests.post(s.url("epone"), data=b'{"x":%d}' % i, timeout=5).status_code == 200
    time.sleep(0.5)
    assert rc.exists(key) == 0
