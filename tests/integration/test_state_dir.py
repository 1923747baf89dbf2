"""Runtime state under a state directory (issue 20 item 3; systemd's
StateDirectory=): with --state-dir, admin changes, generated keys and the
fleet cache are written there and the config file is only read; the edited
document is used at start and on reload while it is the newer of the two."""
import os
import signal
import stat
import subprocess

import requests

from harness import SLUICE, Model, Redis, Sluice, endpoint, start, tmpdir, until, version

ADMIN = {"Authorization": "Bearer adm-secret-token"}


class StateSluice(Sluice):
    """A Sluice started with --state-dir."""

    def __init__(self, state, *args, files=None, **kw):
        self.state = state
        self.files = files or {}        # written into the config's folder first
        super().__init__(*args, **kw)

    def spawn(self):
        for name, text in self.files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        self.proc = start([SLUICE, "-c", self.path, "--state-dir", self.state],
                          check_exit=True, stderr=self.stderr, env=self.env,
                          preexec_fn=self.preexec_fn)

    def restart(self):
        assert self.stop() == 0
        self.stderr.seek(0)
        self.stderr.truncate()
        self.spawn()
        self.wait_ready()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def describe(s, v="versionb"):
    r = requests.get(s.admin("/admin/v1/endpoints/ep1"), headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    return {x["name"]: x for x in r.json()["versions"]}[v]


def patch(s, body, v="versionb"):
    return requests.patch(s.admin("/admin/v1/endpoints/ep1/versions/" + v), headers=ADMIN,
                          json=body, timeout=5)


def test_admin_change_survives_a_restart_and_the_file_is_untouched():
    a, b = Model("versiona"), Model("versionb")
    state = os.path.join(tmpdir(), "state")         # created (0700) by sluice
    # a relative file: secret resolves against the config's folder, whichever
    # document is read (test_admin reaches the admin API with the token)
    s = StateSluice(state, [endpoint("ep1", [
        version("versiona", [a.addr], 0, is_default=True),
        version("versionb", [b.addr], 10)], auth={"keys": True})],
        extra={"admin": {"token": "file:admin.token"}},
        files={"admin.token": "adm-secret-token"})
    before = read(s.path)
    edited = os.path.join(state, "sluice.json")
    # generated keys went to the state directory, not into the file
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert os.path.exists(edited) and stat.S_IMODE(os.stat(edited).st_mode) == 0o600
    keys = requests.get(s.admin("/admin/v1/endpoints/ep1/keys"), headers=ADMIN, timeout=5).json()
    assert len(keys["primary_key"]) == 43
    assert patch(s, {"traffic_percentile": 30}).status_code == 200
    assert describe(s)["traffic_percentile"] == 30
    assert read(s.path) == before
    assert os.listdir(os.path.dirname(s.path)).count("sluice.json") == 1
    assert not [f for f in os.listdir(os.path.dirname(s.path)) if f.startswith("sluice.json.")]
    s.restart()
    assert describe(s)["traffic_percentile"] == 30
    assert requests.get(s.admin("/admin/v1/endpoints/ep1/keys"), headers=ADMIN,
                        timeout=5).json() == keys
    # a reload keeps the edited document while it is the newer
    assert requests.post(s.admin("/admin/v1/reload"), headers=ADMIN, timeout=5).status_code == 200
    assert describe(s)["traffic_percentile"] == 30
    assert read(s.path) == before
    # --check reads what a start would use: the edited document
    out = subprocess.run([SLUICE, "-c", s.path, "--state-dir", state, "--check"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    with open(edited, "w") as f:
        f.write("{")
    out = subprocess.run([SLUICE, "-c", s.path, "--state-dir", state, "--check"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and edited in out.stderr, out.stderr
    assert subprocess.run([SLUICE, "-c", s.path, "--check"], capture_output=True,
                          timeout=30).returncode == 0


def test_an_edited_file_wins_over_older_state():
    a, b = Model("versiona"), Model("versionb")
    state = tmpdir()
    s = StateSluice(state, [endpoint("ep1", [
        version("versiona", [a.addr], 0, is_default=True),
        version("versionb", [b.addr], 10)])],
        extra={"admin": {"token": "adm-secret-token"}})
    assert patch(s, {"traffic_percentile": 30}).status_code == 200
    keys = requests.get(s.admin("/admin/v1/endpoints/ep1/keys"), headers=ADMIN, timeout=5).json()
    # the operator edits the file afterwards: it is newer, so it wins
    s.config["endpoints"][0]["versions"][1]["traffic_percentile"] = 15
    s.write_config()
    st = os.stat(os.path.join(state, "sluice.json"))
    os.utime(s.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    os.kill(s.proc.pid, signal.SIGHUP)
    until(lambda: describe(s)["traffic_percentile"] == 15, 10, "the file's share")
    assert '"event":"state_config_older"' in s.log()
    # the keys generated at the first start stay (the file has none)
    assert requests.get(s.admin("/admin/v1/endpoints/ep1/keys"), headers=ADMIN,
                        timeout=5).json() == keys
    # the next admin change starts from the file's document
    assert patch(s, {"description": "from the file"}).status_code == 200
    s.restart()
    v = describe(s)
    assert v["traffic_percentile"] == 15 and v["description"] == "from the file"


def test_fleet_cache_in_the_state_directory():
    r = Redis()
    a = Model("versiona")
    state = tmpdir()
    s = StateSluice(state, [endpoint("ep1", [version("versiona", [a.addr], 0)])],
                    extra={"redis": {"address": "127.0.0.1:%d" % r.port},
                           "fleet": {"name": "prod"}, "admin": {"token": "adm-secret-token"}})
    cache = os.path.join(state, "sluice.json.fleet-cache")
    until(lambda: os.path.exists(cache), 10, "the fleet cache")
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert not os.path.exists(s.path + ".fleet-cache")
