"""sluicectl on libcurl (issue 20 item 1) and its rollout commands (issue 20
item 2, the CLI side): against a real sluice over plain HTTP, and over HTTPS
through a TLS-terminating front written here (sluice's admin listener is
plain HTTP only) that records what reached it. What a user sees is asserted:
exit codes, the messages naming the option, the JSON printed, the request
line and headers on the wire, and the version's plan and state in sluice."""
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import requests

from harness import (until, SLUICE, SLUICECTL, Model, Reader, Redis, Sluice, Upstream, endpoint,
                     free_port, make_cert, read_request, tmpdir, version)

TOKEN = "adm-token-0123456789abcdef"
ADMIN = {"Authorization": "Bearer " + TOKEN}
EP = "ep1"


def ctl(*args, url=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_ADMIN")}
    if url is not None:
        env["SLUICE_ADMIN_URL"] = url
    env["SLUICE_ADMIN_TOKEN"] = TOKEN
    return subprocess.run([SLUICECTL] + list(args), capture_output=True, text=True, env=env,
                          errors="replace",
                          timeout=120)




def two_versions(redis=None, b_args=(), keys=False):
    a, b = Model("versiona", "--latency-ms", "20"), Model("versionb", "--latency-ms", "20",
                                                          *b_args)
    extra = {"admin": {"token": TOKEN}}
    if redis is not None:
        extra["redis"] = {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100}
    return Sluice([endpoint(EP, [
        version("versiona", [a.addr], 0, is_default=True, type="control"),
        version("versionb", [b.addr], 0)], auth={"keys": keys, "tokens": False})], extra=extra)


class TLSFront:
    """HTTPS in front of sluice's admin listener: terminates TLS with the
    given certificate, records each request (line, headers), forwards it to
    sluice and relays the answer. Connections whose handshake fails are
    counted, and never reach sluice."""

    def __init__(self, backend_port, cert, key):
        self.backend = backend_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.requests = []
        self.failed_handshakes = 0
        self.up = Upstream(self.handle)
        self.port = self.up.port

    def url(self, host="127.0.0.1", path=""):
        return "https://%s:%d%s" % (host, self.port, path)

    def handle(self, sock, up):
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            return
        req = read_request(Reader(tls))
        if req is None:
            return
        line, fields, body = req
        self.requests.append((line, fields))
        method, target, _ = line.split(" ")
        fwd = {k: v for k, v in fields if k in ("authorization", "content-type")}
        resp = requests.request(method, "http://127.0.0.1:%d%s" % (self.backend, target),
                                headers=fwd, data=body, timeout=10)
        tls.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n" % (resp.status_code, len(resp.content))
                    + resp.content)
        tls.close()


class Recorder:
    """A TCP listener that records the first message a client sends: an
    HTTP request head, or a TLS record (then it closes: no handshake)."""

    def __init__(self):
        self.got = []
        self.up = Upstream(self.handle)
        self.port = self.up.port

    def handle(self, sock, up):
        r = Reader(sock)
        first = r.exact(5)
        if first[0] == 0x16:                                # TLS handshake record
            data = first + r.exact(int.from_bytes(first[3:5], "big"))
        else:
            data = first + r.until(b"\r\n\r\n")
        self.got.append(data)
        if first[0] != 0x16:
            sock.sendall(b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def other_name_cert(d):
    """A self-signed certificate for other.example only (not 127.0.0.1)."""
    cert, key = os.path.join(d, "other.pem"), os.path.join(d, "other.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=other.example", "-addext",
                    "subjectAltName=DNS:other.example"], check=True, capture_output=True)
    return cert, key


# ---- https:// ----------------------------------------------------------------

def test_https_verifies_the_certificate_and_cacert_or_insecure_let_it_through():
    """issue 20 finding 1: https:// with certificate verification, --cacert,
    --insecure; the token goes out only inside a verified TLS session."""
    s = two_versions()
    d = tmpdir()
    cert, key = make_cert(d)
    front = TLSFront(s.admin_port, cert, key)
    # The system's CAs do not know this self-signed certificate: refused
    # before any HTTP is sent, with a hint.
    out = ctl("endpoints", url=front.url())
    assert out.returncode == 1, out.stdout + out.stderr
    assert "certificate" in out.stderr and "--cacert FILE" in out.stderr, out.stderr
    until(lambda: front.failed_handshakes >= 1, 10, "the refused handshake")
    assert front.requests == [] and out.stdout == ""
    # --cacert: verified, and the answer is sluice's own.
    out = ctl("--cacert", cert, "-o", "json", "endpoints", url=front.url())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == requests.get(s.admin("/admin/v1/endpoints"),
                                                  headers=ADMIN, timeout=5).json()
    ((line, fields),) = front.requests
    assert line == "GET /admin/v1/endpoints HTTP/1.1"
    assert dict(fields)["authorization"] == "Bearer " + TOKEN
    # --cacert=FILE, by the name in the certificate.
    out = ctl("show", EP, "--cacert=" + cert, url=front.url(host="localhost"))
    assert out.returncode == 0, out.stderr
    assert re.search(r"^ep1 +versiona +control +yes +0 +100 ", out.stdout, re.M), out.stdout
    # --insecure skips verification.
    out = ctl("--insecure", "endpoints", url=front.url())
    assert out.returncode == 0, out.stderr
    assert len(front.requests) == 3
    # A missing CA file is a usage error naming the option.
    out = ctl("--cacert", os.path.join(d, "nope.pem"), "endpoints", url=front.url())
    assert out.returncode == 2 and "--cacert: cannot read" in out.stderr, out.stderr


def test_https_checks_the_host_name():
    """issue 20 finding 1: a trusted certificate for another name is refused
    (host verification), unless --insecure."""
    s = two_versions()
    d = tmpdir()
    cert, key = other_name_cert(d)
    front = TLSFront(s.admin_port, cert, key)
    out = ctl("--cacert", cert, "endpoints", url=front.url())
    assert out.returncode == 1, out.stdout
    assert "127.0.0.1" in out.stderr and "certificate" in out.stderr, out.stderr
    assert front.requests == []
    out = ctl("--cacert", cert, "--insecure", "endpoints", url=front.url())
    assert out.returncode == 0, out.stderr
    assert len(front.requests) == 1


def test_the_token_never_goes_out_in_clear_to_an_https_url():
    """issue 20 finding 1: before, sluicectl spoke plain HTTP to an https://
    URL, token included. A listener that records what arrives: over http://
    the token is on the wire in clear (the recorder can see it), over
    https:// only a TLS ClientHello arrives."""
    rec = Recorder()
    out = ctl("endpoints", url="http://127.0.0.1:%d" % rec.port)
    assert out.returncode == 1 and "404" in out.stderr
    assert TOKEN.encode() in rec.got[0]
    out = ctl("endpoints", url="https://127.0.0.1:%d" % rec.port)
    assert out.returncode == 1
    until(lambda: len(rec.got) == 2, 10, "the second connection")
    hello = rec.got[1]
    assert hello[0] == 0x16 and hello[5] == 0x01, hello[:8]    # handshake, ClientHello
    assert TOKEN.encode() not in hello and b"Bearer" not in hello and b"HTTP/1" not in hello


def test_other_schemes_are_usage_errors():
    """issue 20 finding 1: ftp:// and friends were accepted; now a usage
    error naming --admin, and nothing is sent."""
    rec = Recorder()
    for url in ("ftp://127.0.0.1:%d/" % rec.port, "gopher://127.0.0.1:%d/" % rec.port,
                "file:///etc/passwd", "127.0.0.1:%d" % rec.port, "https://"):
        out = ctl("endpoints", url=url)
        assert out.returncode == 2, (url, out.stderr)
        assert out.stderr.startswith("sluicectl: --admin: "), out.stderr
        out = ctl("--admin", url, "endpoints")
        assert out.returncode == 2, (url, out.stderr)
    out = ctl("endpoints", url="ftp://127.0.0.1:%d/" % rec.port)
    assert "the scheme must be http:// or https://, not ftp://" in out.stderr
    assert rec.up.n_conns == 0 and rec.got == []
    # A token over http:// to another machine: a warning (checked with a
    # usage error after it, so nothing is sent); loopback is quiet.
    out = ctl("show", url="http://192.0.2.1:9901")
    assert out.returncode == 2
    assert out.stderr.startswith("sluicectl: warning: the admin token goes to 192.0.2.1 in "
                                 "clear text (http://); use https:// across a network\n")
    assert "warning" not in ctl("show", url="http://127.0.0.1:9901").stderr
    assert "warning" not in ctl("show", url="https://192.0.2.1:9901").stderr
    # The scheme is case-insensitive (RFC 3986): HTTP:// is http://.
    out = ctl("endpoints", url="HTTP://127.0.0.1:%d" % rec.port)
    assert out.returncode == 1 and "404" in out.stderr


# ---- names in paths ------------------------------------------------------------

def test_names_are_percent_encoded_in_paths():
    """issue 20 finding 1: names went into paths unescaped, so a name with
    '/' or '?' reached another resource ("ep1/keys" showed the keys)."""
    s = two_versions(keys=True)
    keys = requests.get(s.admin("/admin/v1/endpoints/ep1/keys"), headers=ADMIN,
                        timeout=5).json()
    out = ctl("show", "ep1/keys", url=s.admin(""))
    assert out.returncode == 1, out.stdout
    assert "404" in out.stderr and keys["primary_key"] not in out.stdout + out.stderr
    out = ctl("version", "delete", EP, "versionb?x=1", url=s.admin(""))
    assert out.returncode == 1 and "404" in out.stderr, out.stderr
    assert "versionb" in [v["name"] for v in requests.get(
        s.admin("/admin/v1/endpoints/ep1"), headers=ADMIN, timeout=5).json()["versions"]]
    # On the wire, through the HTTPS front, under a path prefix of the URL.
    d = tmpdir()
    cert, key = make_cert(d)
    front = TLSFront(s.admin_port, cert, key)
    out = ctl("--cacert", cert, "rollout", "ep 1", "v/1?x#y%", "status",
              url=front.url(path="/sluice/"))
    assert out.returncode == 1
    out = ctl("--cacert", cert, "shadow", "a&b=c", "--minutes=5", url=front.url())
    assert [l for l, _ in front.requests] == [
        "GET /sluice/admin/v1/endpoints/ep%201/versions/v%2F1%3Fx%23y%25/rollout HTTP/1.1",
        "GET /admin/v1/endpoints/a%26b%3Dc/metrics?minutes=5 HTTP/1.1"], front.requests


# ---- options -------------------------------------------------------------------

def test_json_in_any_position_and_flag_equals_value():
    """issue 20 finding 1: -o json / --json anywhere, --flag=value for every
    option, --version."""
    s = two_versions()
    url = s.admin("")
    want = requests.get(s.admin("/admin/v1/endpoints/ep1"), headers=ADMIN, timeout=5).json()
    for args in (["-o", "json", "show", EP], ["show", EP, "-o", "json"],
                 ["show", "-ojson", EP], ["show", EP, "--json"], ["--json", "show", EP],
                 ["--output=json", "show", EP], ["show", "--output", "json", EP],
                 ["show", EP, "-o=json"]):
        out = ctl(*args, url=url)
        assert out.returncode == 0, (args, out.stderr)
        assert json.loads(out.stdout) == want, args
    out = ctl("show", EP, url=url)
    assert out.returncode == 0 and out.stdout.startswith("endpoint ep1")
    # --admin=, --token=, the command's --name=value, in any order.
    out = ctl("version", "update", EP, "versionb", "--percent=30", "--admin=" + url,
              "--description=a b", "--token=" + TOKEN, "--tag=team=ml", "--json")
    assert out.returncode == 0, out.stderr
    vb = {v["name"]: v for v in json.loads(out.stdout)["versions"]}["versionb"]
    assert vb["traffic_percentile"] == 30 and vb["description"] == "a b"
    assert vb["tags"] == {"team": "ml"}
    out = ctl("--admin", url, "version", "update", EP, "versionb", "--percent", "40")
    assert out.returncode == 0, out.stderr
    got = requests.get(s.admin("/admin/v1/endpoints/ep1"), headers=ADMIN, timeout=5).json()
    assert {v["name"]: v["traffic_percentile"] for v in got["versions"]}["versionb"] == 40
    out = ctl("metrics", EP, "--minutes=5", "-o", "json", url=url)
    assert out.returncode == 1 and json.loads(out.stderr)["error"]  # no Redis here: an error
    out = ctl("--token=wrong", "endpoints", url=url)
    assert out.returncode == 1 and "401" in out.stderr
    # --version: no server needed.
    out = ctl("--version", url="http://127.0.0.1:1")
    ver = subprocess.run([SLUICE, "--version"], capture_output=True, text=True).stdout.split()[-1]
    assert out.returncode == 0 and out.stdout.startswith("sluicectl %s (libcurl " % ver), out.stdout


def test_usage_errors_name_the_option():
    """issue 20 finding 1: errors name the option; exit 2, nothing sent."""
    url = "http://127.0.0.1:%d" % free_port()
    cases = [
        (["version", "update", EP, "v1", "--percent"], "--percent needs a value"),
        (["version", "update", EP, "v1", "--percent=abc"], '--percent needs a number, got "abc"'),
        (["version", "update", EP, "v1", "--frob", "1"], "unknown option --frob for version update"),
        (["version", "update", EP, "v1", "--default=yes"], '--default takes no value (got "yes")'),
        (["version", "create", EP, "v1", "--tag", "novalue"], '--tag needs KEY=VALUE, got "novalue"'),
        (["metrics", EP, "--minutes=0"], '--minutes needs a whole number of at least 1, got "0"'),
        (["show", EP, "-o", "yaml"], '-o takes json or table, got "yaml"'),
        (["show", EP, "-o"], "-o needs a value"),
        (["show", EP, "--admin"], "--admin needs a value"),
        (["show"], "usage: sluicectl show EP"),
        (["rollout", EP, "v1", "plan", "--steps", "5,10"], "plan needs --step"),
        (["rollout", EP, "v1", "plan", "--steps=5,x", "--step=1m"], '--steps needs a number, got "x"'),
        (["rollout", EP, "v1", "plan", "--steps=5,,10", "--step=1m"], "--steps needs percentiles"),
        (["rollout", EP, "v1", "plan", "--steps=5", "--step=5y"], '--step needs a duration such as 90s, 5m or 1h, got "5y"'),
        (["rollout", EP, "v1", "plan", "--steps=5", "--step=1m", "--min-requests=-3"], "--min-requests needs a whole number"),
        (["rollout", EP, "v1", "status", "--interval=1s"], "--interval needs --watch"),
        (["rollout", EP, "v1", "start", "--watch"], "unknown option --watch for rollout"),
        (["rollout", EP, "v1", "frobnicate"], 'rollout: unknown action "frobnicate"'),
        (["frobnicate"], 'unknown command "frobnicate"'),
    ]
    for args, msg in cases:
        out = ctl(*args, url=url)
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert out.stderr.startswith("sluicectl: ") and msg in out.stderr, (args, out.stderr)


# ---- rollouts ------------------------------------------------------------------

class Traffic:
    """Scoring requests from a background thread until stopped."""

    def __init__(self, s):
        self.s, self.running = s, True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        with requests.Session() as c:
            while self.running:
                try:
                    c.post(self.s.url(EP), data=b'{"x":1}', timeout=5)
                except requests.RequestException:
                    time.sleep(0.05)

    def stop(self):
        self.running = False
        self.t.join(10)


def rollout_doc(s):
    r = requests.get(s.admin("/admin/v1/endpoints/ep1/versions/versionb/rollout"),
                     headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


EVAL_ROW = re.compile(r"^\d\d:\d\d:\d\d +(\d+|-) +\S+ +\S+ +(pass|hold|fail) ")


def test_rollout_plan_and_status_watch_to_promotion():
    """issue 20 finding 2: `rollout EP V plan` sets the plan (a PATCH of the
    version's rollout), `status --watch` follows it to its end, printing each
    gate evaluation and each state once, exit 0 on promotion."""
    s = two_versions(Redis())
    url = s.admin("")
    out = ctl("rollout", EP, "versionb", "plan", "--steps=25,50", "--step", "2s", "--promote",
              "--min-requests=5", "--max-error-rate-increase", "0.2", "--max-p99-ratio=5",
              "--min-agreement", "0.9", url=url)
    assert out.returncode == 0, out.stderr
    assert "plan: steps 25 50  step_s 2  promote yes  min_requests 5" in out.stdout, out.stdout
    assert rollout_doc(s)["plan"] == {"steps": [25, 50], "step_s": 2, "promote": True,
                                      "gate": {"min_requests": 5, "max_error_rate_increase": 0.2,
                                               "max_p99_ratio": 5, "min_agreement": 0.9}}
    assert rollout_doc(s)["state"] is None
    t = Traffic(s)
    try:
        out = ctl("rollout", EP, "versionb", "start", url=url)
        assert out.returncode == 0, out.stderr
        watch = ctl("rollout", EP, "versionb", "status", "--watch", "--interval=1s",
                    "--timeout", "120s", url=url)
    finally:
        t.stop()
    assert watch.returncode == 0, watch.stdout + watch.stderr
    doc = rollout_doc(s)
    assert doc["state"]["phase"] == "promoted"
    lines = watch.stdout.splitlines()
    assert lines[0].startswith("endpoint ep1  version versionb")
    assert lines[1].startswith("plan: steps 25 50")
    rows = [l for l in lines if EVAL_ROW.match(l)]
    assert [EVAL_ROW.match(l).group(2) for l in rows] == [e["verdict"] for e in doc["evaluations"]]
    assert len([l for l in lines if l.startswith("TIME ")]) == 1
    states = [l for l in lines if l.startswith("phase: ")]
    assert len(states) == len(set(states)) and states[-1].startswith("phase: promoted"), states
    assert [e["verdict"] for e in doc["evaluations"]].count("pass") == 2
    # Watching a rollout that has ended prints it once and exits at once.
    again = ctl("rollout", EP, "versionb", "status", "--watch", url=url)
    assert again.returncode == 0
    assert len([l for l in again.stdout.splitlines() if EVAL_ROW.match(l)]) == len(rows)


def test_rollout_watch_exits_3_on_rollback_and_streams_json():
    """issue 20 finding 2: a rolled-back rollout ends the watch with exit 3;
    with -o json each new document is one line; plan --remove removes it."""
    s = two_versions(Redis(), b_args=("--error-rate", "1"))
    url = s.admin("")
    out = ctl("rollout", EP, "versionb", "plan", "--steps", "50", "--step=1s",
              "--min-requests", "5", "-o", "json", url=url)
    assert out.returncode == 0, out.stderr
    vb = {v["name"]: v for v in json.loads(out.stdout)["versions"]}["versionb"]
    assert vb["rollout"]["steps"] == [50] and vb["rollout"]["promote"] is False
    t = Traffic(s)
    try:
        assert ctl("rollout", EP, "versionb", "start", url=url).returncode == 0
        watch = ctl("rollout", EP, "versionb", "status", "--watch", "--interval", "1",
                    "--json", url=url)
    finally:
        t.stop()
    assert watch.returncode == 3, watch.stdout + watch.stderr
    docs = [json.loads(l) for l in watch.stdout.splitlines()]
    assert docs[-1]["state"]["phase"] == "rolled_back"
    assert docs[-1] == rollout_doc(s)
    assert docs[-1]["evaluations"][-1]["verdict"] == "fail"
    # One line per change: no two consecutive documents alike.
    assert all(a != b for a, b in zip(docs, docs[1:]))
    out = ctl("rollout", EP, "versionb", "plan", "--remove", url=url)
    assert out.returncode == 0, out.stderr
    assert "plan: none" in out.stdout
    assert rollout_doc(s)["plan"] is None


def test_rollout_plan_keeps_or_says_its_notify():
    """A plan replaces the whole plan, its notify too, and Sluice never shows
    a notify header's value: `plan` takes --notify-url/--notify-header
    (the header really sent with each event), refuses to drop a notify
    silently (exit 2, the URL named, the plan unchanged), and drops it
    when told --no-notify."""
    from test_notify import Receiver
    s = two_versions(Redis())
    url = s.admin("")
    hook = Receiver()
    out = ctl("rollout", EP, "versionb", "plan", "--steps=10,20", "--step=1m",
              "--notify-url", hook.url(), "--notify-header", "X-Hook-Key: s3cret",
              "--notify-header=X-Team:ml", url=url)
    assert out.returncode == 0, out.stderr
    assert rollout_doc(s)["plan"]["notify"] == {"url": hook.url(),
                                                "header_names": ["X-Hook-Key", "X-Team"]}
    assert ctl("rollout", EP, "versionb", "start", url=url).returncode == 0
    until(lambda: hook.events(), 30, "the started event at the webhook")
    _, headers, body, _ = hook.got[0]
    assert json.loads(body)["event"] == "started"
    assert headers.get("X-Hook-Key") == "s3cret" and headers.get("X-Team") == "ml", headers
    assert ctl("rollout", EP, "versionb", "abort", url=url).returncode == 0
    out = ctl("rollout", EP, "versionb", "plan", "--steps=50", "--step=1m", url=url)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert hook.url() in out.stderr and "--no-notify" in out.stderr, out.stderr
    assert rollout_doc(s)["plan"]["steps"] == [10, 20]
    for args, msg in ((["--notify-header", "X-A: b"], "--notify-header needs --notify-url"),
                      (["--notify-url", hook.url(), "--no-notify"], "exclude each other"),
                      (["--notify-url", hook.url(), "--notify-header", "novalue"],
                       '--notify-header needs "Name: value"'),
                      # bytes that are not UTF-8 (\xff): refused, not dropped
                      (["--notify-url", hook.url() + "/\udcff"], "--notify-url needs UTF-8"),
                      (["--notify-url", hook.url(), "--notify-header", "X-Key: \udcff"],
                       "--notify-header needs UTF-8")):
        out = ctl("rollout", EP, "versionb", "plan", "--steps=50", "--step=1m", *args, url=url)
        assert out.returncode == 2 and msg in out.stderr, (args, out.stderr)
    assert rollout_doc(s)["plan"]["steps"] == [10, 20]
    out = ctl("rollout", EP, "versionb", "plan", "--steps=50", "--step=1m", "--no-notify",
              url=url)
    assert out.returncode == 0, out.stderr
    plan = rollout_doc(s)["plan"]
    assert plan["steps"] == [50] and "notify" not in plan, plan


def test_every_command_over_https():
    """issue 20 finding 1: each command through libcurl over a verified
    https:// URL, against a real sluice: the answers and the changes."""
    s = two_versions(keys=True)
    d = tmpdir()
    cert, key = make_cert(d)
    front = TLSFront(s.admin_port, cert, key)
    model = Model("versionc")

    def run(*args):
        out = ctl("--cacert", cert, *args, url=front.url())
        assert out.returncode == 0, (args, out.stderr)
        return out.stdout

    def api(path):
        return requests.get(s.admin(path), headers=ADMIN, timeout=5).json()

    assert re.search(r"^ep1 +versionb +treatment", run("endpoints"), re.M)
    keys = api("/admin/v1/endpoints/ep1/keys")
    assert run("keys", EP) == "primary    %s\nsecondary  %s\n" % (keys["primary_key"],
                                                                keys["secondary_key"])
    new = json.loads(run("regen-key", EP, "secondary", "-o", "json"))
    assert new["primary_key"] == keys["primary_key"] != new["secondary_key"]
    assert api("/admin/v1/endpoints/ep1/keys") == new
    tok = run("token", EP)
    assert "token_type  Bearer" in tok
    gen = api("/readyz")["generation"]
    assert run("reload") == "reloaded: generation %d\n" % (gen + 1)
    run("version", "create", EP, "versionc", "--upstream", model.addr, "--percent=10",
        "--description", "third", "--tag", "team=ml")
    vc = {v["name"]: v for v in api("/admin/v1/endpoints/ep1")["versions"]}["versionc"]
    assert vc["traffic_percentile"] == 10 and vc["upstreams"] == [model.addr]
    assert vc["description"] == "third" and vc["tags"] == {"team": "ml"}
    run("version", "update", EP, "versionc", "--percent", "20")
    run("version", "delete", EP, "versionc")
    assert "versionc" not in [v["name"] for v in api("/admin/v1/endpoints/ep1")["versions"]]
    assert "plan: none" in run("rollout", EP, "versionb", "status")
    methods = [l.split(" ")[0] for l, _ in front.requests]
    assert methods == ["GET", "GET", "POST", "POST", "POST", "POST", "PATCH", "DELETE", "GET"]
    # Every request carried the token, and a JSON body only when it had one.
    for line, fields in front.requests:
        h = dict(fields)
        assert h["authorization"] == "Bearer " + TOKEN
        assert ("content-type" in h) == line.startswith(("POST /admin/v1/endpoints/ep1/keys",
                                                         "POST /admin/v1/endpoints/ep1/token",
                                                         "POST /admin/v1/endpoints/ep1/versions",
                                                         "PATCH")), (line, h)
