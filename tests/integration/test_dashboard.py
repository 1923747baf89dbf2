"""The dashboard in a real headless Chromium (issue 5)."""
import json
import os
import subprocess
import time

import requests

from harness import ROOT, Model, Redis, Sluice, endpoint, tmpdir, version

BROWSER = os.path.join(ROOT, "tests", "browser")
# The page reads the admin API, which test_admin, test_metrics and
# test_rollout run under the sanitizers; Chromium is the cost here.
SANITIZED_PASS = "a browser over the admin API, which runs sanitized elsewhere"


def test_dashboard_shows_the_api_numbers():
    r = Redis()
    ms = [Model("versiona", "--latency-ms", "2"), Model("versionb", "--error-rate", "0.2")]
    s = Sluice([endpoint("ep1", [
        version("versiona", [ms[0].addr], 70, is_default=True, type="control"),
        version("versionb", [ms[1].addr], 30)])], workers=2,
        extra={"redis": {"address": "127.0.0.1:%d" % r.port, "flush_interval_ms": 100},
               "admin": {"token": "dash-token-0123456"}})
    with requests.Session() as c:
        for _ in range(500):
            c.post(s.url("ep1"), data=b'{"x":1}')
    time.sleep(0.5)
    shot = os.path.join(tmpdir(), "dashboard.png")
    env = dict(os.environ, ADMIN="http://127.0.0.1:%d" % s.admin_port, TOKEN="dash-token-0123456",
               ENDPOINT="ep1", SCREENSHOT=os.environ.get("SLUICE_SCREENSHOT", shot))
    out = subprocess.run(["node", os.path.join(BROWSER, "dashboard.mjs")], cwd=BROWSER,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["problems"] == []
    assert int(res["shown"]["versiona"]["requests"]) + int(res["shown"]["versionb"]["requests"]) == 500
    assert os.path.getsize(env["SCREENSHOT"]) > 10000


def test_dashboard_shows_a_rollout_and_its_gate():
    """A rollout that its first gate rolls back (20 % errors against none):
    the page shows the phase, the share it ended at and the evaluation."""
    r = Redis()
    ms = [Model("versiona"), Model("versionb", "--error-rate", "0.2")]
    plan = {"steps": [30, 60], "step_s": 1, "promote": True,
            "gate": {"min_requests": 40, "max_error_rate_increase": 0.01}}
    s = Sluice([endpoint("ep1", [
        version("versiona", [ms[0].addr], 0, is_default=True, type="control"),
        version("versionb", [ms[1].addr], 0, rollout=plan)])], workers=1,
        extra={"redis": {"address": "127.0.0.1:%d" % r.port, "flush_interval_ms": 100},
               "admin": {"token": "dash-token-0123456"}})
    auth = {"Authorization": "Bearer dash-token-0123456"}
    ro = "http://127.0.0.1:%d/admin/v1/endpoints/ep1/versions/versionb/rollout" % s.admin_port
    assert requests.post(ro, json={"action": "start"}, headers=auth).status_code == 200
    phase = None
    with requests.Session() as c:
        for _ in range(20000):
            c.post(s.url("ep1"), data=b'{"x":1}')
            state = requests.get(ro, headers=auth).json()["state"]
            phase = state["phase"]
            if phase != "running":
                break
    assert phase == "rolled_back"
    env = dict(os.environ, ADMIN="http://127.0.0.1:%d" % s.admin_port, TOKEN="dash-token-0123456",
               ENDPOINT="ep1", SCREENSHOT=os.environ.get("SLUICE_SCREENSHOT_ROLLOUT",
                                               os.path.join(tmpdir(), "rollout.png")))
    out = subprocess.run(["node", os.path.join(BROWSER, "dashboard.mjs")], cwd=BROWSER,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["problems"] == []
    assert res["rollouts"]["versionb"]["phase"] == "rolled_back"
    assert res["rollouts"]["versionb"]["share"] == "0"
    assert res["rollouts"]["versionb"]["evaluations"] >= 1
