"""The dashboard in a real headless Chromium (issue 5)."""
import json
import os
import subprocess
import time

import requests

from harness import ROOT, Model, Redis, Sluice, endpoint, tmpdir, version

BROWSER = os.path.join(ROOT, "tests", "browser")


def test_dashboard_shows_the_api_numbers():
    r = Redis()
    ms = [Model("versiona", "--latency-ms", "2"), Model("versionb", "--error-rate", "0.2")]
    s = Sluice([endpoint("ep1", [
        version("versiona", [ms[0].addr], 70, is_default=True, type="control"),
        version("versionb", [ms[1].addr], 30)])], workers=2,
        extra={"redis": {"address": "127.0.0.1:%d" % r.port, "flush_interval_ms": 100},
               "admin": {"token": "dash-token"}})
    with requests.Session() as c:
        for _ in range(500):
            c.post(s.url("ep1"), data=b'{"x":1}')
    time.sleep(0.5)
    shot = os.path.join(tmpdir(), "dashboard.png")
    env = dict(os.environ, ADMIN="http://127.0.0.1:%d" % s.admin_port, TOKEN="dash-token",
               ENDPOINT="ep1", SCREENSHOT=os.environ.get("SLUICE_SCREENSHOT", shot))
    out = subprocess.run(["node", os.path.join(BROWSER, "dashboard.mjs")], cwd=BROWSER,
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["problems"] == []
    assert int(res["shown"]["versiona"]["requests"]) + int(res["shown"]["versionb"]["requests"]) == 500
    assert os.path.getsize(env["SCREENSHOT"]) > 10000
