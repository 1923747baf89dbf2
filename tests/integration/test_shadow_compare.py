"""Shadow comparison (SPEC §7, issue 12): does the mirror answer like the
live version? Real sluice, sluice-model and redis-server processes; a
scripted mirror where a test needs to hold its answers back."""
import json
import os
import re
import subprocess
import threading
import time

import requests

from harness import (SLUICECTL, Model, Reader, Redis, Sluice, Upstream, endpoint,
                     read_request, version)

ADMIN = {"Authorization": "Bearer adm-secret-token"}
# The model echoes the request headers (X-Sluice-Group differs) and its
# --name: neither is the model's answer.
ECHO = ["headers", "version"]


def setup(live, mirror, compare, workers=1, limits=None, pct=50):
    redis = Redis()
    rc = {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100,
          "retention_minutes": 30}
    s = Sluice([endpoint("ep1", [
        version("live", [live.addr], 100, is_default=True, type="control"),
        version("mirror", [mirror.addr], 0, mirror_percentile=pct, compare=compare)])],
        workers=workers, limits=limits, extra={"redis": rc, "admin": {"token": "adm-secret-token"}})
    return s, redis.client()


def send(s, n, threads=4, body=lambda i: b'{"x":%d}' % i, headers=None):
    """n scoring requests from `threads` clients; every one must be a 200."""
    errors = []

    def run(k0):
        with requests.Session() as c:
            for i in range(k0, n, threads):
                r = c.post(s.url("ep1"), data=body(i), headers=headers or {})
                if r.status_code != 200 or r.headers["X-Sluice-Version"] != "live":
                    errors.append((r.status_code, r.text[:200]))
    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [], errors[:3]


def counts(rc, v="mirror"):
    h = rc.hgetall("sluice:{ep1}:total:%s" % v)
    return {k: int(h.get(k, 0)) for k in ("cmp_total", "cmp_equal", "cmp_different",
                                           "cmp_status_mismatch", "cmp_unknown")}


def wait_compared(rc, total, timeout=20):
    deadline = time.time() + timeout
    c = counts(rc)
    while time.time() < deadline:
        c = counts(rc)
        if c["cmp_total"] >= total:
            time.sleep(0.3)         # nothing more may come
            c = counts(rc)
            break
        time.sleep(0.05)
    assert c["cmp_total"] == total, c
    assert (c["cmp_equal"] + c["cmp_different"] + c["cmp_status_mismatch"] +
            c["cmp_unknown"]) == total, c
    return c


def diffs(s, limit=None):
    q = "?limit=%d" % limit if limit else ""
    r = requests.get(s.admin("/admin/v1/endpoints/ep1/versions/mirror/diffs" + q),
                     headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["diffs"]


def test_identical_models_agree():
    """2,000 requests, half mirrored: 1,000 comparisons, at least 99.9 %
    equal; the metrics API's agreement object, Prometheus and sluicectl
    shadow say the same."""
    live, mirror = Model("live"), Model("mirror")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO, "samples": 10})
    send(s, 2000)
    c = wait_compared(rc, 1000)
    assert c["cmp_equal"] >= 999 and c["cmp_different"] == 0, c
    assert c["cmp_status_mismatch"] == 0 and c["cmp_unknown"] <= 1, c
    # live counters are untouched by comparisons
    assert rc.hget("sluice:{ep1}:total:live", "cmp_total") is None
    m = requests.get(s.admin("/admin/v1/endpoints/ep1/metrics?minutes=5"), headers=ADMIN,
                     timeout=5).json()
    vs = {v["version"]: v for v in m["versions"]}
    assert "agreement" not in vs["live"]
    a = vs["mirror"]["agreement"]
    assert a["total"] == 1000 and a["compared"] == 1000 - c["cmp_unknown"], a
    assert a["equal"] == c["cmp_equal"] and a["differences"] == 0 and a["status_mismatches"] == 0
    lo, hi = a["equal_rate_ci95"]
    assert a["equal_rate"] >= 0.999 and lo < a["equal_rate"] <= hi <= 1.0 and lo > 0.99, a
    assert sum(p.get("compared", 0) for p in vs["mirror"]["series"]) == a["compared"]
    prom = requests.get(s.admin("/metrics"), timeout=5).text
    assert ('sluice_shadow_comparisons_total{endpoint="ep1",version="mirror",result="equal"} %d'
            % c["cmp_equal"]) in prom, prom[-1500:]
    assert diffs(s) == []
    out = subprocess.run([SLUICECTL, "--admin", "http://127.0.0.1:%d" % s.admin_port,
                          "--token", "adm-secret-token", "shadow", "ep1"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0, out.stderr
    assert "mirror" in out.stdout and "compared 1000" in out.stdout.replace(",", ""), out.stdout


def test_noise_within_tolerance_agrees_and_above_differs():
    """--noise 1e-8 with abs_tol 1e-6: every comparison equal; --noise 1e-3:
    every one different, first at "score" (or a "scores" element when the
    noise on "score" fell within the tolerance), sampled (samples: 5) with the
    two values as excerpts."""
    live = Model("live")
    small = Model("mirror", "--noise", "1e-8")
    s, rc = setup(live, small, {"mode": "json", "ignore": ECHO, "abs_tol": 1e-6,
                                "samples": 5})
    send(s, 200)
    c = wait_compared(rc, 100)
    assert c["cmp_equal"] == 100, c
    big = Model("mirror", "--noise", "1e-3")
    s2, rc2 = setup(live, big, {"mode": "json", "ignore": ECHO, "abs_tol": 1e-6,
                                "samples": 5})
    send(s2, 200)
    c = wait_compared(rc2, 100)
    assert c["cmp_different"] == 100, c
    d = diffs(s2)
    assert len(d) == 5 and rc2.llen("sluice:{ep1}:diffs:mirror") == 5, d
    for x in d:
        # The noise is uniform in [-1e-3, 1e-3] per score, so "score" itself
        # lands within abs_tol about once in 1,000 answers; then the first
        # difference is one of "scores".
        assert re.fullmatch(r"score|scores\[[0-3]\]", x["path"]), x
        assert x["live_status"] == 200 and x["shadow_status"] == 200, x
        assert 1e-6 < abs(float(x["live"]) - float(x["shadow"])) <= 1e-3 + 1e-12, x
        assert len(x["request_id"]) > 0 and x["time"].endswith("Z"), x
    assert len(diffs(s2, limit=2)) == 2
    out = subprocess.run([SLUICECTL, "--admin", "http://127.0.0.1:%d" % s2.admin_port,
                          "--token", "adm-secret-token", "shadow", "ep1"], capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0 and "differences 100" in out.stdout, out.stdout
    assert out.stdout.count(" at score") == 5, out.stdout


def test_ignored_random_field_causes_no_difference():
    """--random-field adds a "nonce": ignored, no difference; not ignored,
    every comparison differs at "nonce"."""
    live = Model("live")
    mirror = Model("mirror", "--random-field")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO + ["nonce"]})
    send(s, 200)
    assert wait_compared(rc, 100)["cmp_equal"] == 100
    s2, rc2 = setup(live, mirror, {"mode": "json", "ignore": ECHO, "samples": 3})
    send(s2, 20)
    assert wait_compared(rc2, 10)["cmp_different"] == 10
    assert [x["path"] for x in diffs(s2)] == ["nonce"] * 3


def test_shadow_error_rate_shows_as_status_mismatches():
    """A mirror failing 10 % of its answers: exactly its 500s are status
    mismatches, 10 % of 2,000 comparisons within 3 points (4.5 standard
    deviations), and none is a body difference."""
    live = Model("live")
    mirror = Model("mirror", "--error-rate", "0.1")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO})
    send(s, 4000)
    c = wait_compared(rc, 2000)
    errors = int(rc.hget("sluice:{ep1}:total:mirror", "status_5xx"))
    assert c["cmp_status_mismatch"] == errors, (c, errors)
    assert 140 <= c["cmp_status_mismatch"] <= 260, c
    assert c["cmp_equal"] + c["cmp_status_mismatch"] == 2000 and c["cmp_different"] == 0, c


def test_exact_mode_on_4_mib_bodies():
    """exact: 4 MiB bodies compared by SHA-256, equal; the model's JSON
    echo (X-Sluice-Group differs) is a difference, byte for byte."""
    live, mirror = Model("live"), Model("mirror")
    s, rc = setup(live, mirror, {"mode": "exact", "samples": 2})
    with requests.Session() as c:
        for _ in range(10):
            r = c.post(s.url("ep1"), data=b"x", headers={"X-Test-Response-Bytes": "4194304"})
            assert r.status_code == 200 and len(r.content) == 4194304
    c = wait_compared(rc, 5)
    assert c["cmp_equal"] == 5, c
    send(s, 10, threads=1)
    c = wait_compared(rc, 10)
    assert c["cmp_equal"] == 5 and c["cmp_different"] == 5, c
    for x in diffs(s):
        assert x["path"] is None and len(x["live"].encode()) <= 256, x


def test_samples_capped_and_excerpts_at_most_256_bytes():
    """samples: 3 keeps the latest 3 of 50 disagreements; a status mismatch
    keeps the start of each body, cut to 256 bytes on a character boundary."""
    live = Model("live")
    mirror = Model("mirror", "--error-rate", "1")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO, "samples": 3})
    # a multi-byte character across byte 256 of the live answer
    send(s, 100, body=lambda i: b'{"x":%d}' % i,
         headers={"X-Pad": "\u00e9" * 200})
    c = wait_compared(rc, 50)
    assert c["cmp_status_mismatch"] == 50, c
    time.sleep(0.3)
    assert rc.llen("sluice:{ep1}:diffs:mirror") == 3
    d = diffs(s)
    assert len(d) == 3
    for x in d:
        assert x["live_status"] == 200 and x["shadow_status"] == 500 and x["path"] is None, x
        n = len(x["live"].encode())
        assert 250 <= n <= 256, n            # cut at a boundary, never past 256
        assert x["live"].startswith('{"version":"live"'), x["live"][:40]
        assert len(x["shadow"].encode()) <= 256


def gated_upstream(gate, body):
    """An upstream that reads each request and answers only once gate is set."""
    def handler(c, up):
        r = Reader(c)
        while read_request(r) is not None:
            gate.wait(30)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return Upstream(handler)


def instant_upstream(body):
    def handler(c, up):
        r = Reader(c)
        while read_request(r) is not None:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return Upstream(handler)


def test_slow_mirror_adds_nothing_to_live_latency():
    """Structurally: the mirror answers nothing until every live response
    has arrived (it is held back), and the comparisons still complete
    afterwards, all equal."""
    body = b'{"score":0.25,"scores":[1,2,3]}'
    gate = threading.Event()
    live = instant_upstream(body)
    mirror = gated_upstream(gate, body)
    s, rc = setup(live, mirror, {"mode": "json"})
    try:
        with requests.Session() as c:
            for i in range(20):
                r = c.post(s.url("ep1"), data=b'{"x":%d}' % i)
                assert r.status_code == 200 and r.content == body
        assert not gate.is_set()
        time.sleep(0.3)
        assert counts(rc)["cmp_total"] == 0     # nothing compared before the mirror answers
    finally:
        gate.set()
    c = wait_compared(rc, 10)
    assert c["cmp_equal"] == 10, c


def test_memory_stays_within_budget_with_slow_mirror_and_large_bodies():
    """compare_budget_bytes 4 MiB, 2 MiB live answers, a mirror held back
    until all 80 live answers arrived: one live body fits the budget, the
    other 39 comparisons are unknown; the process grows far less than the
    80 MiB the live bodies would take."""
    big = b'{"pad":"' + b"x" * (2 << 20) + b'"}'
    gate = threading.Event()
    live = instant_upstream(big)
    mirror = gated_upstream(gate, b'{"pad":"y"}')
    s, rc = setup(live, mirror, {"mode": "json", "max_bytes": 8 << 20},
                  limits={"compare_budget_bytes": 4 << 20, "shadow_timeout_ms": 60000})
    before = s.rss_kib()
    try:
        with requests.Session() as c:
            for i in range(80):
                r = c.post(s.url("ep1"), data=b'{"x":%d}' % i)
                assert r.status_code == 200 and len(r.content) == len(big)
        grown = s.rss_kib() - before
    finally:
        gate.set()
    if os.environ.get("SLUICE_SANITIZED") != "1":     # ASan holds freed memory back
        assert grown < 40 * 1024, grown
    c = wait_compared(rc, 40)
    assert c["cmp_different"] == 1 and c["cmp_unknown"] == 39, c


def test_json_body_over_max_bytes_is_unknown():
    live, mirror = Model("live"), Model("mirror")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO, "max_bytes": 1000})
    with requests.Session() as c:
        for _ in range(4):
            r = c.post(s.url("ep1"), data=b"x", headers={"X-Test-Response-Bytes": "5000"})
            assert r.status_code == 200 and len(r.content) == 5000
    assert wait_compared(rc, 2)["cmp_unknown"] == 2


def test_compare_config_errors_and_admin_patch():
    """compare is validated with JSON paths; PATCH sets and clears it."""
    live, mirror = Model("live"), Model("mirror")
    s, rc = setup(live, mirror, None)
    url = s.admin("/admin/v1/endpoints/ep1/versions/mirror")
    r = requests.patch(url, headers=ADMIN, json={"compare": {"mode": "fuzzy",
                                                             "ignore": ["a..b"]}})
    assert r.status_code == 400, r.text
    text = json.dumps(r.json())
    assert "endpoints[0].versions[1].compare.mode" in text, text
    assert "endpoints[0].versions[1].compare.ignore[0]" in text, text
    r = requests.patch(url, headers=ADMIN, json={"compare": {"mode": "json", "ignore": ECHO}})
    assert r.status_code == 200, r.text
    got = requests.get(s.admin("/admin/v1/endpoints/ep1"), headers=ADMIN).json()
    cmpv = [v for v in got["versions"] if v["name"] == "mirror"][0]["compare"]
    assert cmpv["mode"] == "json" and cmpv["ignore"] == ECHO and cmpv["max_bytes"] == 65536
    send(s, 20)
    assert wait_compared(rc, 10)["cmp_equal"] == 10
    r = requests.patch(url, headers=ADMIN, json={"compare": None})
    assert r.status_code == 200, r.text
    send(s, 20)
    time.sleep(0.5)
    assert counts(rc)["cmp_total"] == 10
    r = requests.get(s.admin("/admin/v1/endpoints/ep1/versions/nope/diffs"), headers=ADMIN)
    assert r.status_code == 404


def test_dashboard_shows_agreement_and_differences():
    """The dashboard in headless Chromium: the mirror's agreement cells are
    the API's numbers, and its latest differences are listed, each with its
    trace id."""
    from harness import ROOT, tmpdir
    live = Model("live")
    mirror = Model("mirror", "--noise", "1e-3")
    s, rc = setup(live, mirror, {"mode": "json", "ignore": ECHO, "abs_tol": 1e-6,
                                 "samples": 4})
    send(s, 100)
    wait_compared(rc, 50)
    browser = os.path.join(ROOT, "tests", "browser")
    shot = os.path.join(tmpdir(), "dashboard.png")
    env = dict(os.environ, ADMIN="http://127.0.0.1:%d" % s.admin_port, TOKEN="adm-secret-token",
               ENDPOINT="ep1", SCREENSHOT=os.environ.get("SLUICE_SCREENSHOT", shot))
    out = subprocess.run(["node", os.path.join(browser, "dashboard.mjs")], cwd=browser,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["problems"] == []
    m = res["shown"]["mirror"]
    assert m["compared"] == "50" and m["differences"] == "50" and m["diff_rows"] == 4, m
    # each difference with the live request's trace id (SPEC §10), as the API has it
    assert m["trace_ids"] == [x["trace_id"] for x in diffs(s)], (m, diffs(s))
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in m["trace_ids"]), m
