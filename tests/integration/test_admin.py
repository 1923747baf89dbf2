"""Operations: admin API, persistence, reload, sluicectl (issue 4)."""
import json
import os
import random
import signal
import subprocess
import threading
import time

import requests

from harness import (SLUICE, SLUICECTL, Model, Sluice, endpoint, free_port, start, stop,
                     tmpdir, version, wait_port)

TOKEN = "admin-token-for-tests"
H = {"Authorization": "Bearer " + TOKEN}
BODY = b'{"x":1}'


def admin_sluice(models, workers=1, **kw):
    extra = kw.pop("extra", {})
    s = Sluice([endpoint("mynewendpoint", [
        version("versiona", [models[0].addr], 20, is_default=True, type="control")])],
        workers=workers, extra=extra, **kw)
    s.config["admin"]["token"] = TOKEN
    s.write_config()
    os.kill(s.proc.pid, signal.SIGHUP)
    wait_generation(s, 2)
    return s


def wait_generation(s, gen, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = requests.get(s.admin("/readyz")).json()
        if r["generation"] >= gen:
            return r["generation"]
        time.sleep(0.01)
    raise AssertionError("generation %d not reached" % gen)


def ctl(s, *args):
    env = dict(os.environ, SLUICE_ADMIN_URL="http://127.0.0.1:%d" % s.admin_port,
               SLUICE_ADMIN_TOKEN=TOKEN)
    return subprocess.run([SLUICECTL] + list(args), capture_output=True, text=True, env=env,
                          timeout=30)


def split(s, n, ep="mynewendpoint"):
    counts = {}
    with requests.Session() as c:
        for _ in range(n):
            r = c.post(s.url(ep), data=BODY)
            assert r.status_code == 200, r.text
            v = r.headers["X-Sluice-Version"]
            counts[v] = counts.get(v, 0) + 1
    return counts


def test_rollout_guide_through_sluicectl():
    a, b = Model("versiona"), Model("versionb")
    s = admin_sluice([a, b])
    out = ctl(s, "version", "create", "mynewendpoint", "versionb", "--upstream", b.addr,
              "--percent", "10", "--treatment", "--description", "candidate", "--tag", "team=ml")
    assert out.returncode == 0, out.stderr
    assert "versionb" in out.stdout
    assert split(s, 1000) == {"versiona": 900, "versionb": 100}
    out = ctl(s, "version", "update", "mynewendpoint", "versionb", "--percent", "40", "--default")
    assert out.returncode == 0, out.stderr
    assert split(s, 1000) == {"versiona": 200, "versionb": 800}
    # versionb is now the default: deleting it while versiona remains is a conflict
    out = ctl(s, "version", "delete", "mynewendpoint", "versionb")
    assert out.returncode == 1
    assert "409 conflict" in out.stderr and "default" in out.stderr
    out = ctl(s, "version", "delete", "mynewendpoint", "versiona")
    assert out.returncode == 0, out.stderr
    assert split(s, 100) == {"versionb": 100}
    out = ctl(s, "--json", "show", "mynewendpoint")
    ep = json.loads(out.stdout)
    assert [v["name"] for v in ep["versions"]] == ["versionb"]
    assert ep["versions"][0]["tags"] == {"team": "ml"}
    assert ep["versions"][0]["effective_percentile"] == 100
    assert "keys" not in ep and "primary" not in out.stdout
    # usage errors exit 2, server errors 1
    assert ctl(s, "version", "frobnicate", "x", "y").returncode == 2
    assert ctl(s, "show", "nope").returncode == 1
    assert "404 not_found: no endpoint named nope" in ctl(s, "show", "nope").stderr


def test_conflicts_and_invalid_changes():
    a = Model("versiona")
    s = admin_sluice([a])
    base = s.admin("/admin/v1/endpoints/mynewendpoint")

    def post(v):
        return requests.post(base + "/versions", json=v, headers=H)
    r = post({"name": "versiona", "upstreams": [a.addr]})
    assert r.status_code == 409 and "already has a version named versiona" in r.json()["error"]["message"]
    r = post({"name": "versionc", "upstreams": [a.addr], "type": "control"})
    assert r.status_code == 409 and "second control" in r.json()["error"]["message"]
    for i in range(5):
        assert post({"name": "extra%d" % i, "upstreams": [a.addr]}).status_code == 201
    r = post({"name": "seventh", "upstreams": [a.addr]})
    assert r.status_code == 409 and "6 versions" in r.json()["error"]["message"]
    r = requests.delete(base + "/versions/versiona", headers=H)
    assert r.status_code == 409
    r = requests.patch(base + "/versions/extra0", json={"traffic_percentile": 12.345}, headers=H)
    assert r.status_code == 400
    assert r.json()["error"]["errors"] == [
        "endpoints[0].versions[1].traffic_percentile: at most two decimals"]
    r = requests.patch(base + "/versions/extra0", json={"traffic_percentile": 90}, headers=H)
    assert r.status_code == 400 and "sum to 110" in r.json()["error"]["message"]
    r = requests.patch(base + "/versions/extra0", json={"name": "renamed"}, headers=H)
    assert r.status_code == 400
    r = requests.patch(base + "/versions/nope", json={"traffic_percentile": 1}, headers=H)
    assert r.status_code == 404
    r = requests.post(s.admin("/admin/v1/endpoints/nope/versions"), json={"name": "abc"}, headers=H)
    assert r.status_code == 404
    r = requests.post(base + "/versions", data=b"{not json", headers=H)
    assert r.status_code == 400
    r = requests.put(s.admin("/admin/v1/endpoints/Bad_Name"), json={"versions": [
        {"name": "versiona", "upstreams": [a.addr]}]}, headers=H)
    assert r.status_code == 400
    assert r.json()["error"]["errors"][0].startswith("endpoints[1].name:")
    # nothing of the refused changes reached the file
    with open(s.path) as f:
        doc = json.load(f)
    names = [v["name"] for v in doc["endpoints"][0]["versions"]]
    assert names == ["versiona"] + ["extra%d" % i for i in range(5)]
    assert requests.get(base, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(base).headers["WWW-Authenticate"] == "Bearer"


def test_put_and_delete_endpoint_and_restart_keeps_everything():
    a, b = Model("versiona"), Model("versionb")
    s = admin_sluice([a, b])
    r = requests.put(s.admin("/admin/v1/endpoints/second"), headers=H, json={
        "versions": [{"name": "one", "upstreams": [a.addr], "traffic_percentile": 30},
                     {"name": "two", "upstreams": [b.addr], "traffic_percentile": 70,
                      "is_default": True}]})
    assert r.status_code == 201, r.text
    keys = requests.get(s.admin("/admin/v1/endpoints/second/keys"), headers=H).json()
    assert len(keys["primary_key"]) == 43 and len(keys["secondary_key"]) == 43
    before = requests.get(s.admin("/admin/v1/endpoints"), headers=H).json()
    port = s.port
    assert s.stop() == 0
    # start a new process on the same (persisted) file
    s.stderr.seek(0)
    s.proc = start([SLUICE, "-c", s.path], check_exit=True, stderr=s.stderr)
    s.wait_ready()
    after = requests.get(s.admin("/admin/v1/endpoints"), headers=H).json()
    for e in before["endpoints"]:
        e.pop("generation")
    for e in after["endpoints"]:
        e.pop("generation")
    assert before["endpoints"] == after["endpoints"]
    assert requests.get(s.admin("/admin/v1/endpoints/second/keys"), headers=H).json() == keys
    r = requests.post(s.url("second"), data=BODY,
                      headers={"Authorization": "Bearer " + keys["secondary_key"]})
    assert r.status_code == 200 and port == s.port
    r = requests.delete(s.admin("/admin/v1/endpoints/second"), headers=H)
    assert r.status_code == 200
    assert requests.post(s.url("second"), data=BODY).status_code == 404
    with open(s.path) as f:
        assert [e["name"] for e in json.load(f)["endpoints"]] == ["mynewendpoint"]


def test_kill9_during_changes_leaves_last_acknowledged():
    a = Model("versiona")
    s = admin_sluice([a])
    url = s.admin("/admin/v1/endpoints/mynewendpoint/versions")
    assert requests.post(url, json={"name": "versionb", "upstreams": [a.addr]},
                         headers=H).status_code == 201
    acked = []
    with requests.Session() as c:
        pct = 0
        for _ in range(random.randint(11, 60)):
            pct = pct % 50 + 1
            r = c.patch(url + "/versionb", json={"traffic_percentile": pct}, headers=H)
            assert r.status_code == 200
            acked.append(pct)
    # one more change in flight while the process dies
    t = threading.Thread(target=lambda: _quiet_patch(url + "/versionb", acked[-1] % 50 + 1))
    t.start()
    time.sleep(0.002)
    os.kill(s.proc.pid, signal.SIGKILL)
    t.join()
    s.proc.wait()
    assert len(acked) > 10
    out = subprocess.run([SLUICE, "-c", s.path, "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with open(s.path) as f:
        doc = json.load(f)
    pct = doc["endpoints"][0]["versions"][1]["traffic_percentile"]
    assert pct in (acked[-1], acked[-1] % 50 + 1), (pct, acked[-3:])
    leftovers = [f for f in os.listdir(s.dir) if ".tmp." in f]
    assert len(leftovers) <= 1      # at most the one write the kill interrupted


def _quiet_patch(url, pct):
    try:
        requests.patch(url, json={"traffic_percentile": pct}, headers=H, timeout=2)
    except requests.RequestException:
        pass


def test_unwritable_file_changes_nothing():
    a = Model("versiona")
    s = admin_sluice([a], extra={"log": {"access_log": "off"}})
    size = os.path.getsize(s.path)
    # A file-size limit below the config's size: every write of it fails,
    # as on a full disk (root ignores permission bits, not this).
    subprocess.run(["prlimit", "--pid", str(s.proc.pid), "--fsize=%d:unlimited" % (size // 2)],
                   check=True)
    with open(s.path) as f:
        before = f.read()
    r = requests.post(s.admin("/admin/v1/endpoints/mynewendpoint/versions"), headers=H,
                      json={"name": "versionb", "upstreams": [a.addr], "traffic_percentile": 50})
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "not_persisted"
    with open(s.path) as f:
        assert f.read() == before
    ep = requests.get(s.admin("/admin/v1/endpoints/mynewendpoint"), headers=H).json()
    assert [v["name"] for v in ep["versions"]] == ["versiona"]
    assert split(s, 50) == {"versiona": 50}
    assert [f for f in os.listdir(s.dir) if ".tmp." in f] == []
    subprocess.run(["prlimit", "--pid", str(s.proc.pid), "--fsize=unlimited:unlimited"],
                   check=True)
    r = requests.post(s.admin("/admin/v1/endpoints/mynewendpoint/versions"), headers=H,
                      json={"name": "versionb", "upstreams": [a.addr], "traffic_percentile": 50})
    assert r.status_code == 201


def test_reload_invalid_changes_nothing_and_valid_applies_listeners():
    a, b = Model("versiona"), Model("versionb")
    s = admin_sluice([a, b])
    good = json.load(open(s.path))
    bad = json.loads(json.dumps(good))
    bad["endpoints"][0]["versions"][0]["traffic_percentile"] = 150
    bad["endpoints"][0]["versions"].append({"name": "x", "upstreams": ["nope"]})
    with open(s.path, "w") as f:
        json.dump(bad, f)
    r = requests.post(s.admin("/admin/v1/reload"), headers=H)
    assert r.status_code == 400
    errs = r.json()["error"]["errors"]
    assert "endpoints[0].versions[0].traffic_percentile: must be between 0 and 100" in errs
    assert any(e.startswith("endpoints[0].versions[1].name") for e in errs)
    os.kill(s.proc.pid, signal.SIGHUP)
    time.sleep(0.3)
    assert '"event":"reload_failed"' in s.log()
    assert requests.get(s.admin("/readyz")).json()["generation"] == 2
    assert requests.post(s.url("mynewendpoint"), data=BODY).status_code == 200
    # A keep-alive connection stays up while listeners change under it.
    c = requests.Session()
    assert c.post(s.url("mynewendpoint"), data=BODY).status_code == 200
    new_port = free_port()
    good["listeners"] = [{"address": "127.0.0.1:%d" % new_port}]
    with open(s.path, "w") as f:
        json.dump(good, f)
    r = requests.post(s.admin("/admin/v1/reload"), headers=H)
    assert r.status_code == 200 and r.json()["generation"] == 3
    wait_port(new_port)
    r = requests.post("http://127.0.0.1:%d/api/v1/service/mynewendpoint/score" % new_port,
                      data=BODY)
    assert r.status_code == 200
    assert c.post(s.url("mynewendpoint"), data=BODY).status_code == 200    # old connection
    time.sleep(0.2)
    try:
        requests.post(s.url("mynewendpoint"), data=BODY, timeout=2)
        refused = False
    except requests.ConnectionError:
        refused = True
    assert refused, "the removed listener must be closed"


def test_tls_certificate_reload():
    a = Model("versiona")
    s = Sluice([endpoint("mynewendpoint", [version("versiona", [a.addr], 100)])], tls=True)
    s.config["admin"]["token"] = TOKEN
    s.write_config()
    os.kill(s.proc.pid, signal.SIGHUP)
    wait_generation(s, 2)

    def serial():
        out = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.tls_port],
                             input=b"", capture_output=True, timeout=10)
        pem = out.stdout[out.stdout.index(b"-----BEGIN"):out.stdout.index(b"-----END CERTIFICATE-----") + 25]
        return subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                              capture_output=True).stdout
    first = serial()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", os.path.join(s.dir, "key.pem"), "-out",
                    os.path.join(s.dir, "cert.pem"), "-days", "2", "-subj", "/CN=renewed"],
                   check=True, capture_output=True)
    assert requests.post(s.admin("/admin/v1/reload"), headers=H).status_code == 200
    assert serial() != first


def test_zero_failures_under_reloads_and_changes():
    a, b = Model("versiona"), Model("versionb")
    s = admin_sluice([a, b], workers=2, extra={"log": {"access_log": "off"}})
    assert requests.post(s.admin("/admin/v1/endpoints/mynewendpoint/versions"), headers=H,
                         json={"name": "versionb", "upstreams": [b.addr],
                               "traffic_percentile": 10}).status_code == 201
    d = tmpdir()
    script = os.path.join(d, "count.lua")
    with open(script, "w") as f:
        f.write("""
wrk.method = "POST"
wrk.body = '{"x":1}'
local bad = 0
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d connect=%d read=%d write=%d timeout=%d status=%d\\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, bad))
end
""")
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d8s", "-s", script, s.url("mynewendpoint")],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    url = s.admin("/admin/v1/endpoints/mynewendpoint/versions/versionb")
    gen = requests.get(s.admin("/readyz")).json()["generation"]
    for i in range(50):
        os.kill(s.proc.pid, signal.SIGHUP)
        gen = wait_generation(s, gen + 1)
        r = requests.patch(url, json={"traffic_percentile": 10 + i % 20}, headers=H)
        assert r.status_code == 200
        gen = r.json()["generation"]
        time.sleep(0.05)
    out, _ = wrk.communicate(timeout=30)
    line = [l for l in out.splitlines() if l.startswith("RESULT")][0]
    vals = dict(kv.split("=") for kv in line.split()[1:])
    assert int(vals["requests"]) > 1000, line
    for k in ("non2xx", "connect", "read", "write", "timeout", "status"):
        assert vals[k] == "0", line
    # The next 10,000 requests follow the last split (10 + 49 % 20 = 19 %).
    counts = split_wrk(s, 10000, d)
    assert abs(counts.get("versionb", 0) - 1900) <= 100, counts
    assert sum(counts.values()) == 10000


def split_wrk(s, n, d):
    script = os.path.join(d, "versions.lua")
    with open(script, "w") as f:
        f.write("""
wrk.method = "POST"
wrk.body = '{"x":1}'
local counts = {}
local n = 0
response = function(status, headers, body)
  if n >= %d then return end
  n = n + 1
  local v = headers["X-Sluice-Version"] or "none"
  counts[v] = (counts[v] or 0) + 1
  if n == %d then
    for k, c in pairs(counts) do io.write("COUNT " .. k .. " " .. c .. "\\n") end
    io.flush()
    os.exit(0)
  end
end
""" % (n, n))
    out = subprocess.run(["wrk", "-t1", "-c1", "-d60s", "-s", script, s.url("mynewendpoint")],
                         capture_output=True, text=True, timeout=90).stdout
    return {l.split()[1]: int(l.split()[2]) for l in out.splitlines() if l.startswith("COUNT")}


def test_thousand_reloads_do_not_leak():
    a = Model("versiona")
    s = admin_sluice([a], extra={"log": {"access_log": "off"}})
    with requests.Session() as c:
        for _ in range(50):
            c.post(s.url("mynewendpoint"), data=BODY)
    gen = requests.get(s.admin("/readyz")).json()["generation"]
    base = s.rss_kib()
    with requests.Session() as c:
        for i in range(1000):
            r = c.post(s.admin("/admin/v1/reload"), headers=H)
            assert r.status_code == 200
            if i % 10 == 0:
                assert c.post(s.url("mynewendpoint"), data=BODY).status_code == 200
    assert requests.get(s.admin("/readyz")).json()["generation"] == gen + 1000
    grown = s.rss_kib() - base
    if os.environ.get("SLUICE_SANITIZED") != "1":
        assert grown < 2048, "RSS grew %d KiB over 1,000 reloads" % grown
