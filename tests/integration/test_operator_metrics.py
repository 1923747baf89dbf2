"""The /metrics an operator asks for (issue 20, item 6): build info, the
config reload outcome, configured and effective share per version,
rejections per endpoint, upstream health and the process_* families.
Values are checked exactly where they can be (counts the test made, the
process's own /proc numbers), else by order (CPU time between two reads)."""
import os
import resource
import signal
import subprocess

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import SLUICE, Model, Sluice, endpoint, until, version

ADMIN = {"Authorization": "Bearer adm-secret-token"}


def samples(s):
    """{(name, frozenset(labels)): value} of the instance's /metrics."""
    text = requests.get(s.admin("/metrics"), timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, frozenset(smp.labels.items()))] = smp.value
    return out


def value(s, name, **labels):
    return samples(s).get((name, frozenset(labels.items())))


def test_build_info_and_reload_outcome():
    m = Model("versiona")
    s = Sluice([endpoint("ep1", [version("versiona", [m.addr], 0)])],
               extra={"admin": {"token": "adm-secret-token"}})
    got = samples(s)
    info = [k for k in got if k[0] == "sluice_build_info"]
    assert len(info) == 1 and got[info[0]] == 1
    labels = dict(info[0][1])
    out = subprocess.run([SLUICE, "--version"], capture_output=True, text=True)
    assert labels["version"] in out.stdout + out.stderr, (labels, out)
    assert labels["openssl"].startswith("3.") and labels["libevent"], labels
    assert value(s, "sluice_config_last_reload_successful") == 1
    t0 = value(s, "sluice_config_last_reload_success_timestamp_seconds")
    assert t0 > 0
    # a broken file: refused, the old config keeps serving, the gauge says so
    with open(s.path) as f:
        good = f.read()
    with open(s.path, "w") as f:
        f.write('{"listeners": [}')
    os.kill(s.proc.pid, signal.SIGHUP)
    until(lambda: value(s, "sluice_config_last_reload_successful") == 0, 10, "a failed reload")
    assert value(s, "sluice_config_last_reload_success_timestamp_seconds") == t0
    resp = requests.post(s.admin("/admin/v1/reload"), headers=ADMIN, timeout=5)
    assert resp.status_code == 400, resp.text
    assert value(s, "sluice_config_last_reload_successful") == 0
    with open(s.path, "w") as f:
        f.write(good)
    resp = requests.post(s.admin("/admin/v1/reload"), headers=ADMIN, timeout=5)
    assert resp.status_code == 200, resp.text
    assert value(s, "sluice_config_last_reload_successful") == 1
    assert value(s, "sluice_config_last_reload_success_timestamp_seconds") >= t0


def test_configured_and_effective_share_and_rejections_per_endpoint():
    a, b = Model("versiona"), Model("versionb")
    s = Sluice([endpoint("ep1", [
        version("versiona", [a.addr], 20, is_default=True, type="control"),
        version("versionb", [b.addr], 10)], auth={"keys": True},
        keys={"primary": "key-one-for-ep1", "secondary": "key-two-for-ep1"}),
        endpoint("ep2", [version("versiona", [a.addr], 0)])],
        extra={"admin": {"token": "adm-secret-token"}})
    share = lambda v, kind: value(s, "sluice_version_share_ratio", endpoint="ep1",  # noqa: E731
                                  version=v, kind=kind)
    assert share("versiona", "configured") == 0.9 and share("versionb", "configured") == 0.1
    # no routed request yet in this generation: the effective share is NaN
    assert share("versiona", "effective") != share("versiona", "effective")
    got = {"versiona": 0, "versionb": 0}
    with requests.Session() as c:
        for _ in range(300):
            r = c.post(s.url("ep1"), data=b"{}", headers={"Authorization": "Bearer key-one-for-ep1"})
            assert r.status_code == 200
            got[r.headers["X-Sluice-Version"]] += 1
        # pinned requests are not routed: they leave the effective share alone
        for _ in range(20):
            r = c.post(s.url("ep1"), data=b"{}", headers={
                "Authorization": "Bearer key-one-for-ep1", "X-Sluice-Version": "versionb"})
            assert r.status_code == 200
        for _ in range(7):
            assert c.post(s.url("ep1"), data=b"{}", headers={
                "Authorization": "Bearer wrong"}).status_code == 401
        for _ in range(3):
            assert c.post(s.url("nope"), data=b"{}").status_code == 404
    assert abs(share("versionb", "effective") - got["versionb"] / 300) < 1e-6, got
    assert abs(share("versiona", "effective") - got["versiona"] / 300) < 1e-6, got
    assert value(s, "sluice_rejected_total", endpoint="ep1", reason="unauthorized") == 7
    assert value(s, "sluice_rejected_total", endpoint="", reason="not_found") == 3
    assert value(s, "sluice_rejected_total", endpoint="", reason="unauthorized") == 0
    # a new generation starts the effective share over
    resp = requests.patch(s.admin("/admin/v1/endpoints/ep1/versions/versionb"), headers=ADMIN,
                          json={"traffic_percentile": 50}, timeout=5)
    assert resp.status_code == 200, resp.text
    assert share("versionb", "configured") == 0.5
    assert share("versionb", "effective") != share("versionb", "effective")


def test_upstream_health_per_upstream():
    a = Model("versiona")
    dead = "127.0.0.1:1"
    hc = {"path": "/", "interval_ms": 100, "timeout_ms": 500, "failure_threshold": 1}
    s = Sluice([endpoint("ep1", [
        version("versiona", [a.addr, dead], 0, is_default=True, health_check=hc),
        version("versionb", [a.addr], 10)])])
    until(lambda: value(s, "sluice_upstream_healthy", endpoint="ep1", version="versiona",
                        upstream=dead) == 0, 10, "the dead upstream reported down")
    assert value(s, "sluice_upstream_healthy", endpoint="ep1", version="versiona",
                 upstream=a.addr) == 1
    # no health check: nothing says it is down
    assert value(s, "sluice_upstream_healthy", endpoint="ep1", version="versionb",
                 upstream=a.addr) == 1


def proc_stat(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields     # fields[0] is field 3 (state)


def test_process_metrics_match_proc():
    m = Model("versiona")

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (3000, 3000))
    s = Sluice([endpoint("ep1", [version("versiona", [m.addr], 0)])], preexec_fn=limit)
    pid = s.proc.pid
    hz = os.sysconf("SC_CLK_TCK")
    got = samples(s)
    v = lambda n: got[(n, frozenset())]         # noqa: E731
    # CPU time (getrusage: all threads) is spent, and grows with work done
    cpu0 = v("process_cpu_seconds_total")
    assert cpu0 > 0
    with requests.Session() as c:
        for _ in range(300):
            assert c.post(s.url("ep1"), data=b"{}").status_code == 200
    assert samples(s)[("process_cpu_seconds_total", frozenset())] > cpu0
    assert v("process_max_fds") == 3000
    fds = len(os.listdir("/proc/%d/fd" % pid))
    assert 5 <= v("process_open_fds") <= fds + 2, (v("process_open_fds"), fds)
    with open("/proc/stat") as f:
        btime = int([l for l in f if l.startswith("btime")][0].split()[1])
    start = btime + int(proc_stat(pid)[19]) / hz      # field 22
    assert round(v("process_start_time_seconds"), 2) == round(start, 2), \
        (v("process_start_time_seconds"), start)
    with open("/proc/%d/statm" % pid) as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGESIZE")
    assert rss / 2 <= v("process_resident_memory_bytes") <= rss * 2, \
        (v("process_resident_memory_bytes"), rss)
