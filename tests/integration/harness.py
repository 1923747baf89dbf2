"""Integration test harness: real processes on free ports, stopped by PID.

Each test module defines functions named test_*; run.py runs them all and
prints "N passed, M failed". Processes a test starts are registered with the
harness and always stopped (SIGTERM, then SIGKILL) when the test ends.
"""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
SLUICE = os.path.join(BUILD, "gateway", "sluice")
MODEL = os.path.join(BUILD, "tools", "sluice-model")
SLUICECTL = os.path.join(BUILD, "tools", "sluicectl")

_procs = []
_tmpdirs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tmpdir():
    d = tempfile.mkdtemp(prefix="sluice-test-")
    _tmpdirs.append(d)
    return d


def start(cmd, check_exit=False, **kw):
    """Start a process; with check_exit, cleanup() reports it if it does not
    exit 0 on SIGTERM (under the sanitizers that is how a leak shows)."""
    p = subprocess.Popen(cmd, stdout=kw.pop("stdout", subprocess.DEVNULL),
                         stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
    p.check_exit = check_exit
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=10):
    """Stop one process by PID; returns its exit code."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode


def cleanup():
    """Stop every process the test started; returns a list of complaints
    about processes that were still running and did not exit 0."""
    bad = []
    while _procs:
        p = _procs.pop()
        running = p.poll() is None
        rc = stop(p)
        if running and p.check_exit and rc != 0:
            bad.append("%s exited %d on SIGTERM" % (os.path.basename(p.args[0]), rc))
    while _tmpdirs:
        shutil.rmtree(_tmpdirs.pop(), ignore_errors=True)
    return bad


def wait_port(port, timeout=10, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("nothing listening on port %d" % port)


class Model:
    """A sluice-model process."""

    def __init__(self, name, *args):
        self.port = free_port()
        self.name = name
        self.addr = "127.0.0.1:%d" % self.port
        self.proc = start([MODEL, "--listen", self.addr, "--name", name] + list(args))
        wait_port(self.port)

    def stats(self):
        return requests.get("http://%s/__stats" % self.addr, timeout=5).json()


def make_cert(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def endpoint(name, versions, **kw):
    ep = {"name": name, "auth": {"keys": False}, "versions": versions}
    ep.update(kw)
    return ep


def version(name, upstreams, pct=0, **kw):
    v = {"name": name, "upstreams": upstreams, "traffic_percentile": pct}
    v.update(kw)
    return v


class Sluice:
    """A sluice process on free ports with a generated config."""

    def __init__(self, endpoints, tls=False, workers=1, limits=None, extra=None,
                 env=None, wait=True):
        self.dir = tmpdir()
        self.port = free_port()
        self.admin_port = free_port()
        listeners = [{"address": "127.0.0.1:%d" % self.port}]
        self.tls_port = None
        if tls:
            cert, key = make_cert(self.dir)
            self.cert = cert
            self.tls_port = free_port()
            listeners.append({"address": "127.0.0.1:%d" % self.tls_port,
                              "tls": {"certificate": "cert.pem", "private_key": "key.pem"}})
        self.config = {"workers": workers, "listeners": listeners,
                       "admin": {"address": "127.0.0.1:%d" % self.admin_port},
                       "log": {"access_log": os.path.join(self.dir, "access.log")},
                       "endpoints": endpoints}
        if limits:
            self.config["limits"] = limits
        if extra:
            extra = dict(extra)
            self.config["admin"].update(extra.pop("admin", {}))
            self.config.update(extra)
        self.path = os.path.join(self.dir, "sluice.json")
        self.write_config()
        self.stderr = open(os.path.join(self.dir, "stderr.log"), "w+")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = start([SLUICE, "-c", self.path], check_exit=True, stderr=self.stderr,
                          env=e)
        if wait:
            self.wait_ready()

    def write_config(self):
        with open(self.path, "w") as f:
            json.dump(self.config, f, indent=2)

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("sluice exited %d: %s" % (self.proc.returncode, self.log()))
            try:
                if requests.get(self.admin("/readyz"), timeout=1).status_code == 200:
                    wait_port(self.port)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise AssertionError("sluice not ready: " + self.log())

    def url(self, ep, tls=False):
        if tls:
            return "https://127.0.0.1:%d/api/v1/service/%s/score" % (self.tls_port, ep)
        return "http://127.0.0.1:%d/api/v1/service/%s/score" % (self.port, ep)

    def admin(self, path):
        return "http://127.0.0.1:%d%s" % (self.admin_port, path)

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log(self):
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def access_lines(self, settle=0.5):
        time.sleep(settle)      # workers flush their access buffers every 200 ms
        p = os.path.join(self.dir, "access.log")
        if not os.path.exists(p):
            return []
        with open(p) as f:
            return [json.loads(l) for l in f if l.strip()]

    def stop(self, sig=signal.SIGTERM):
        return stop(self.proc, sig)


def raw(port, data, timeout=5, read_until_close=True, tls=False):
    """Send raw bytes, return everything the server sends until it closes
    (or the timeout passes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    s.sendall(data)
    out = b""
    s.settimeout(timeout)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if not read_until_close:
                break
    except socket.timeout:
        pass
    except ConnectionResetError:
        out += b"<RESET>"
    s.close()
    return out


def parse_responses(data):
    """Split raw bytes into (status, headers-dict, body) responses; handles
    Content-Length and chunked bodies."""
    out = []
    while data.startswith(b"HTTP/"):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        if status < 200:
            data = rest
            out.append((status, headers, b""))
            continue
        if "content-length" in headers:
            n = int(headers["content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2:]
            data = rest
        else:
            body, data = rest, b""
        out.append((status, headers, body))
    return out


class Redis:
    """A redis-server on a free port; with persist, an append-only file
    synced on every write, so that a SIGKILL loses nothing acknowledged."""

    def __init__(self, password=None, persist=False, port=None):
        import redis as redislib
        self.dir = tmpdir()
        self.port = port or free_port()
        self.password = password
        self.persist = persist
        self.args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                     "--dir", self.dir, "--save", ""]
        self.args += (["--appendonly", "yes", "--appendfsync", "always"] if persist
                      else ["--appendonly", "no"])
        if password:
            self.args += ["--requirepass", password]
        self.start()
        self.lib = redislib

    def start(self):
        self.proc = start(self.args)
        wait_port(self.port)

    def client(self, db=0):
        import redis as redislib
        return redislib.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                              decode_responses=True)

    def kill(self):
        stop(self.proc, signal.SIGKILL)
