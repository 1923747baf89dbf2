"""Integration test harness: real processes on free ports, stopped by PID.

Each test module defines functions named test_*; run.py runs them all and
prints "N passed, M failed". Processes a test starts are registered with the
harness and always stopped (SIGTERM, then SIGKILL) when the test ends.
"""
import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
SLUICE = os.path.join(BUILD, "control", "sluice")
MODEL = os.path.join(BUILD, "tools", "sluice-model")
SLUICECTL = os.path.join(BUILD, "tools", "sluicectl")

_procs = []
_tmpdirs = []
_closers = []       # in-process servers (Tap, Upstream): closed at cleanup


# Ports. A port found free by binding port 0 lies in the kernel's ephemeral
# range, so any outgoing connection (ours or another process's) can be given
# it before the server we start binds it. Ports are therefore handed out from
# BELOW the ephemeral range, where the kernel never picks a client's port,
# never twice in one run, only after a test bind, and claimed across
# concurrent runs on the machine by a file naming the owner's PID (shared
# with free_port in tools/common.sh). Starting a server still re-checks that
# it owns its port and retries on fresh ports if it lost a race.
PORT_DIR = "/tmp/sluice-ports"
_handed_out = set()
_claimed = []


class PortBusy(Exception):
    """A process could not bind its port: start it again on fresh ports."""


def _port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo - 10000 >= 2000:
        return 10000, lo - 1
    if 65535 - hi >= 2000:          # an ephemeral range that starts low: use the top
        return hi + 1, 65535
    raise RuntimeError("no port range outside the ephemeral ports %d-%d" % (lo, hi))


def _reserved_ports():
    out = set()
    try:
        with open("/proc/sys/net/ipv4/ip_local_reserved_ports") as f:
            text = f.read().strip()
    except OSError:
        return out
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _pid_alive(pid):
    return pid > 0 and os.path.exists("/proc/%d" % pid)


def _claim(port, owner):
    """Create PORT_DIR/port naming owner; take over a claim whose owner is
    gone or that is over a day old. True when the claim is ours."""
    path = os.path.join(PORT_DIR, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                age = time.time() - os.stat(path).st_mtime
                with open(path) as f:
                    text = f.read().strip()
            except OSError:
                return False
            if not text.isdigit():
                if age < 10:
                    return False    # just created: its owner is writing its PID
                text = "0"
            if _pid_alive(int(text)) and age < 86400:
                return False
            try:
                os.unlink(path)
            except OSError:
                return False
            continue
        os.write(fd, b"%d\n" % owner)
        os.close(fd)
        return True
    return False


def _release(port):
    try:
        os.unlink(os.path.join(PORT_DIR, str(port)))
    except OSError:
        pass


def _release_all():
    while _claimed:
        _release(_claimed.pop())


atexit.register(_release_all)


def _bindable(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))     # no SO_REUSEADDR: stricter than the servers
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(owner=None):
    """A port below the ephemeral range, never handed out before in this
    run, claimed for this run (or for the process owner), bindable now."""
    owner = owner or os.getpid()
    os.makedirs(PORT_DIR, mode=0o1777, exist_ok=True)
    lo, hi = _port_range()
    reserved = _reserved_ports()
    n = hi - lo + 1
    start_at = random.SystemRandom().randrange(n)
    for i in range(n):
        port = lo + (start_at + i) % n
        if port in _handed_out or port in reserved:
            continue
        if not _claim(port, owner):
            continue
        if not _bindable(port):
            _release(port)
            continue
        _handed_out.add(port)
        if owner == os.getpid():
            _claimed.append(port)
        return port
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def _listen_inodes(port):
    """Socket inodes listening on a TCP port (IPv4 and IPv6)."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        out.append(parts[9])
        except OSError:
            pass
    return out


def _pid_sockets(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    try:
        for fd in os.listdir(d):
            try:
                link = os.readlink(os.path.join(d, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[8:-1])
    except OSError:
        pass
    return out


def port_owner(pid, port):
    """"ours" when every listener on the port is the process pid's,
    "foreign" when another process listens there too (SO_REUSEPORT lets
    two processes share a port), None while nobody listens."""
    inodes = _listen_inodes(port)
    if not inodes:
        return None
    mine = _pid_sockets(pid)
    return "ours" if all(i in mine for i in inodes) else "foreign"


def wait_owned(proc, ports, timeout=10, busy=("in use",), output=None):
    """Wait until proc listens on every port and owns each alone. Raises
    PortBusy (after stopping proc) when it exits naming an address in use
    or shares a port with another process; AssertionError on other
    failures."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            text = output() if output else ""
            if proc.returncode != 0 and any(b in text for b in busy):
                raise PortBusy(text.strip()[-300:])
            raise AssertionError("%s exited %d: %s" % (os.path.basename(proc.args[0]),
                                                       proc.returncode, text[-2000:]))
        states = [port_owner(proc.pid, p) for p in ports]
        if "foreign" in states:
            stop(proc, signal.SIGKILL)
            raise PortBusy("another process listens on one of %s" % (ports,))
        if all(st == "ours" for st in states):
            return
        time.sleep(0.02)
    raise AssertionError("%s not listening on %s: %s" % (
        os.path.basename(proc.args[0]), ports, (output() if output else "")[-2000:]))


START_ATTEMPTS = 5


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
    while _closers:
        try:
            _closers.pop()()
        except Exception:       # a closer must not hide the test's result
            pass
    while _procs:
        p = _procs.pop()
        running = p.poll() is None
        rc = stop(p)
        if running and p.check_exit and rc != 0:
            bad.append("%s exited %d on SIGTERM" % (os.path.basename(p.args[0]), rc))
    while _tmpdirs:
        shutil.rmtree(_tmpdirs.pop(), ignore_errors=True)
    return bad


def until(fn, timeout, what, step=0.05, show=None):
    """Poll fn() until it returns a true value, and return that value; after
    timeout seconds fail, naming what was awaited and the last value (or
    what show() says)."""
    deadline = time.time() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError("timed out (%ss) waiting for %s (last: %r)" % (
                timeout, what, show() if show else got))
        time.sleep(step)


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

    def __init__(self, name, *args, check_exit=False):
        self.name = name
        self.args = list(args)
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            self.addr = "127.0.0.1:%d" % self.port
            out = tempfile.TemporaryFile("w+")
            self.proc = start([MODEL, "--listen", self.addr, "--name", name] + self.args,
                              stderr=out, check_exit=check_exit)

            def output(out=out):
                out.flush()
                out.seek(0)
                return out.read()
            try:
                wait_owned(self.proc, [self.port], busy=("cannot listen",), output=output)
                break
            except PortBusy:
                if attempt == START_ATTEMPTS - 1:
                    raise
        # One connection, as before: tests count the model's connections.
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
                 env=None, wait=True, preexec_fn=None):
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
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.preexec_fn = preexec_fn
        self.spawn()
        if wait:
            self.wait_ready()

    def spawn(self):
        self.proc = start([SLUICE, "-c", self.path], check_exit=True, stderr=self.stderr,
                          env=self.env, preexec_fn=self.preexec_fn)

    def write_config(self):
        with open(self.path, "w") as f:
            json.dump(self.config, f, indent=2)

    def _addresses(self):
        """The config's address fields, as (dict, key) pairs."""
        out = [(l, "address") for l in self.config.get("listeners", [])]
        if "address" in self.config.get("admin", {}):
            out.append((self.config["admin"], "address"))
        return out

    def _own_ports(self):
        """The harness's ports that the config still uses."""
        used = {d[k] for d, k in self._addresses()}
        return [p for p in (self.port, self.admin_port, self.tls_port)
                if p and "127.0.0.1:%d" % p in used]

    def _move_ports(self):
        """Lost a port race: every harness port anew, in config and fields."""
        for attr in ("port", "admin_port", "tls_port"):
            old = getattr(self, attr)
            if not old:
                continue
            new = free_port()
            setattr(self, attr, new)
            for d, k in self._addresses():
                if d[k] == "127.0.0.1:%d" % old:
                    d[k] = "127.0.0.1:%d" % new
        self.write_config()
        self.stderr.seek(0)
        self.stderr.truncate()

    def wait_ready(self, timeout=10):
        for attempt in range(START_ATTEMPTS):
            try:
                wait_owned(self.proc, self._own_ports(), timeout, busy=("in use",),
                           output=self.log)
                break
            except PortBusy:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self._move_ports()
                self.spawn()
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
    s = connect(port, tls, timeout)
    s.sendall(data)
    out = b""
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
        self.lib = redislib
        self.dir = tmpdir()
        self.password = password
        self.persist = persist
        for attempt in range(START_ATTEMPTS):
            self.port = port or free_port()
            self.args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                         "--dir", self.dir, "--save", ""]
            self.args += (["--appendonly", "yes", "--appendfsync", "always"] if persist
                          else ["--appendonly", "no"])
            if password:
                self.args += ["--requirepass", password]
            try:
                self.start()
                break
            except PortBusy:
                if port or attempt == START_ATTEMPTS - 1:
                    raise

    def start(self):
        """Start (or restart, on the same port) redis-server; it logs to
        stdout, "Could not create server TCP listening socket ... in use"."""
        out = open(os.path.join(self.dir, "redis.log"), "w+")
        self.proc = start(self.args, stdout=out)

        def output():
            out.flush()
            out.seek(0)
            return out.read()
        wait_owned(self.proc, [self.port], busy=("in use",), output=output)
        deadline = time.time() + 10
        while True:
            try:
                pid = int(self.client().info("server")["process_id"])
                break
            except self.lib.exceptions.BusyLoadingError:
                pass
            except self.lib.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise AssertionError("redis-server exited: " + output()[-2000:])
            if time.time() > deadline:
                raise AssertionError("redis-server not answering: " + output()[-2000:])
            time.sleep(0.02)
        if pid != self.proc.pid:
            stop(self.proc, signal.SIGKILL)
            raise PortBusy("port %d answered by redis pid %d, not %d" % (self.port, pid,
                                                                         self.proc.pid))

    def client(self, db=0):
        import redis as redislib
        return redislib.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                              decode_responses=True)

    def kill(self):
        stop(self.proc, signal.SIGKILL)


# ---- raw HTTP on sockets: scripted upstreams, a recording proxy ------------

class Reader:
    """Buffered reads from a socket with the socket's timeout (set one:
    every read in a test is bounded). EOF raises EOFError."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def until(self, sep, limit=1 << 20):
        while sep not in self.buf:
            if len(self.buf) > limit:
                raise AssertionError("no %r within %d bytes" % (sep, limit))
            self._more()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self):
        """Everything until the peer closes (or the timeout passes)."""
        try:
            while True:
                self._more()
        except (EOFError, socket.timeout, ConnectionResetError):
            pass
        out, self.buf = self.buf, b""
        return out


def _parse_head(head):
    lines = head.decode("latin-1").split("\r\n")
    fields = []
    for l in lines[1:]:
        if l:
            k, _, v = l.partition(":")
            fields.append((k.strip().lower(), v.strip()))
    return lines[0], fields


def _read_body(r, fields, no_body=False):
    h = dict(fields)
    if no_body:
        return b""
    if h.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(r.until(b"\r\n").split(b";")[0].strip(), 16)
            if size == 0:
                while r.until(b"\r\n") != b"\r\n":
                    pass            # trailers
                return body
            body += r.exact(size)
            r.exact(2)
    if "content-length" in h:
        return r.exact(int(h["content-length"]))
    return None


def read_response(r, head_request=False):
    """One response from Reader r: (status, [(name, value)...], body).
    Skips interim 1xx responses. A body without framing reads to close."""
    while True:
        head = r.until(b"\r\n\r\n")
        line, fields = _parse_head(head)
        if not re.match(r"HTTP/1\.[01] [1-5][0-9][0-9]( |$)", line):
            raise AssertionError("not a status line: %r" % head[:200])
        status = int(line.split()[1])
        if status >= 200:
            break
    no_body = head_request or status in (204, 304)
    body = _read_body(r, fields, no_body)
    if body is None:
        body = r.rest()
    return status, fields, body


def read_request(r):
    """One request from Reader r: (request line, [(name, value)...], body);
    None when the peer closed between requests."""
    try:
        head = r.until(b"\r\n\r\n")
    except EOFError:
        return None
    line, fields = _parse_head(head)
    body = _read_body(r, fields)
    return line, fields, body or b""


def header(fields, name):
    """All values of a header in a (name, value) list."""
    return [v for k, v in fields if k == name.lower()]


class _Server:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            try:
                self.sock.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if attempt == START_ATTEMPTS - 1:
                    raise
        self.sock.listen(1024)
        self.addr = "127.0.0.1:%d" % self.port
        self.conns = []
        self.closing = False
        self.lock = threading.Lock()
        _closers.append(self.close)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def close(self):
        self.closing = True
        for c in [self.sock] + self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


class Upstream(_Server):
    """A scripted upstream on a harness port: handler(sock, upstream) runs
    in a thread for each connection; .n_conns counts them. For answers no
    well-behaved model server gives (bodies on 204/304, X-Sluice-* headers)."""

    def __init__(self, handler):
        self.handler = handler
        self.n_conns = 0
        super().__init__()

    def _serve(self, c):
        with self.lock:
            self.n_conns += 1
        c.settimeout(30)
        try:
            self.handler(c, self)
        except (OSError, EOFError):
            pass
        finally:
            c.close()


class Tap(_Server):
    """A recording TCP proxy in front of an upstream address: what sluice
    sent there is .sent() (all connections, in order of connection)."""

    def __init__(self, target):
        self.target = target
        self.streams = []
        super().__init__()

    def _serve(self, c):
        host, port = self.target.rsplit(":", 1)
        try:
            u = socket.create_connection((host, int(port)), 5)
        except OSError:
            c.close()
            return
        try:
            u.settimeout(None)
            c.settimeout(None)
        except OSError:             # the tap was closed meanwhile (test over)
            u.close()
            c.close()
            return
        rec = bytearray()
        with self.lock:
            self.conns.append(u)
            self.streams.append(rec)

        def pump(src, dst, record):
            try:
                while True:
                    d = src.recv(65536)
                    if not d:
                        break
                    if record is not None:
                        with self.lock:
                            record.extend(d)
                    dst.sendall(d)
            except OSError:
                pass
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        threading.Thread(target=pump, args=(u, c, None), daemon=True).start()
        pump(c, u, rec)

    def sent(self):
        with self.lock:
            return b"".join(bytes(r) for r in self.streams)


def connect(port, tls=False, timeout=5):
    """A client socket to 127.0.0.1:port (TLS without verification), with
    every read bounded by timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(s)
    s.settimeout(timeout)
    return s


def exchange(port, data, tls=False, timeout=3):
    """Send data on a new connection and read until the server closes:
    (bytes received, closed). closed is False when the timeout passed with
    the connection still open."""
    s = connect(port, tls, timeout)
    out = b""
    closed = False
    try:
        s.sendall(data)
        while True:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            out += d
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        closed = True
    finally:
        s.close()
    return out, closed


# ---- Redis with Sentinel: a primary, replicas, sentinels -------------------

class SentinelGroup:
    """A Redis primary, `replicas` replicas and `sentinels` sentinels
    (redis-sentinel) monitoring it as `name`, all on 127.0.0.1 on harness
    ports and stopped by PID. Timings are short so that a failover takes a
    few seconds: down-after-milliseconds `down_ms`, failover-timeout
    `failover_ms`. Nodes are known by port; pause/resume/kill act on the
    process of a port."""

    def __init__(self, name="mymaster", replicas=2, sentinels=3, quorum=2, down_ms=1000,
                 failover_ms=4000, timeout=30, persist=False):
        import redis as redislib
        self.lib = redislib
        self.name = name
        self.dir = tmpdir()
        self.persist = persist      # data nodes: an append-only file synced on every write
        self.procs = {}             # port -> Popen, data nodes and sentinels
        self.args = {}              # port -> the data node's command line, for restart()
        self.primary_port = self._node()
        self.replica_ports = [self._node(replicaof=self.primary_port) for _ in range(replicas)]
        self.sentinel_ports = [self._sentinel(quorum, down_ms, failover_ms)
                               for _ in range(sentinels)]
        self.wait_ready(timeout)

    def _log(self, port):
        return os.path.join(self.dir, "%d.log" % port)

    def _spawn(self, args, port):
        out = open(self._log(port), "w+")
        p = start(args, stdout=out)

        def output():
            out.flush()
            out.seek(0)
            return out.read()
        wait_owned(p, [port], busy=("in use",), output=output)
        self.procs[port] = p
        return p

    def _node(self, replicaof=None):
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            d = os.path.join(self.dir, "node-%d" % port)
            os.makedirs(d, exist_ok=True)
            # Diskless sync without a delay: a replica attaches at once. No
            # output limit for replicas: a test may queue a large write
            # behind a paused replica.
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", d,
                    "--save", "", "--appendonly", "no", "--repl-diskless-sync", "yes",
                    "--repl-diskless-sync-delay", "0",
                    "--client-output-buffer-limit", "replica 0 0 0"]
            if self.persist:
                args[args.index("--appendonly") + 1] = "yes"
                args += ["--appendfsync", "always"]
            if replicaof:
                args += ["--replicaof", "127.0.0.1", str(replicaof)]
            try:
                self._spawn(args, port)
                self.args[port] = args
                return port
            except PortBusy:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def _sentinel(self, quorum, down_ms, failover_ms):
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            conf = os.path.join(self.dir, "sentinel-%d.conf" % port)
            with open(conf, "w") as f:
                f.write("bind 127.0.0.1\nport %d\ndir %s\n"
                        "sentinel monitor %s 127.0.0.1 %d %d\n"
                        "sentinel down-after-milliseconds %s %d\n"
                        "sentinel failover-timeout %s %d\n"
                        "sentinel parallel-syncs %s 2\n"
                        % (port, self.dir, self.name, self.primary_port, quorum,
                           self.name, down_ms, self.name, failover_ms, self.name))
            try:
                self._spawn(["redis-sentinel", conf], port)
                return port
            except PortBusy:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def client(self, port, **kw):
        kw.setdefault("socket_timeout", 5)
        return self.lib.Redis(host="127.0.0.1", port=port, decode_responses=True, **kw)

    def sentinel_view(self, port):
        """(primary port, replicas, other sentinels) as one sentinel sees it."""
        m = self.client(port).execute_command("SENTINEL", "MASTER", self.name)
        if isinstance(m, list):
            m = dict(zip(m[::2], m[1::2]))
        return (int(m["port"]), int(m["num-slaves"]), int(m["num-other-sentinels"]))

    def wait_ready(self, timeout):
        """Every replica in sync and every sentinel knowing the others and
        the replicas."""
        deadline = time.time() + timeout
        want = (self.primary_port, len(self.replica_ports), len(self.sentinel_ports) - 1)
        while True:
            try:
                views = [self.sentinel_view(p) for p in self.sentinel_ports]
                links = [self.client(p).info("replication").get("master_link_status")
                         for p in self.replica_ports]
                if all(v == want for v in views) and all(l == "up" for l in links):
                    return
            except self.lib.exceptions.RedisError:
                views = links = None
            if time.time() > deadline:
                raise AssertionError("sentinel group not ready: views %s (want %s), links %s"
                                     % (views, want, links))
            time.sleep(0.05)

    def addresses(self):
        return ["127.0.0.1:%d" % p for p in self.sentinel_ports]

    def primary(self):
        """The primary's port as the first answering sentinel names it."""
        for p in self.sentinel_ports:
            try:
                host, port = self.client(p).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                return int(port)
            except (self.lib.exceptions.RedisError, TypeError, ValueError):
                continue
        return None

    def role(self, port):
        try:
            return self.client(port).execute_command("ROLE")[0]
        except self.lib.exceptions.RedisError:
            return None

    def wait_failover(self, old, timeout=60):
        """Wait until every sentinel names a primary other than old, and
        that node says it is master and has a replica attached; its port."""
        deadline = time.time() + timeout
        while True:
            try:
                named = {self.sentinel_view(p)[0] for p in self.sentinel_ports}
            except self.lib.exceptions.RedisError:
                named = set()
            if len(named) == 1 and old not in named:
                new = named.pop()
                try:
                    info = self.client(new).info("replication")
                    if info.get("role") == "master" and int(info.get("connected_slaves", 0)) >= 1:
                        self.primary_port = new
                        return new
                except self.lib.exceptions.RedisError:
                    pass
            if time.time() > deadline:
                raise AssertionError("no failover away from %d within %ss; sentinel logs: %s"
                                     % (old, timeout, self.logs()[-3000:]))
            time.sleep(0.05)

    def pause(self, port):
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port):
        os.kill(self.procs[port].pid, signal.SIGCONT)

    def kill(self, port):
        stop(self.procs[port], signal.SIGKILL)

    def restart(self, port):
        """Start a data node killed before again, same port and folder (with
        persist, from its append-only file)."""
        self._spawn(self.args[port], port)

    def logs(self):
        out = []
        for p in self.sentinel_ports:
            with open(self._log(p)) as f:
                out.append("--- sentinel %d\n%s" % (p, f.read()))
        return "\n".join(out)
