#!/usr/bin/python3
"""Chaos soak (issue 17, "What must hold" item 2).

Real processes: redis-server, five sluice-model --fast servers with random
faults (slow answers, resets and closes mid-body, 204/304 with bodies,
garbage, idle keep-alive connections closed at random moments), a sixth
reached over HTTP/2 ("upstream_protocol": "http2") whose faults are
HTTP/2's (every 7th stream refused, each connection closed without a
GOAWAY as its 31st stream begins, idle connections closed at random
moments: the retry rules' three cases) and sluice
(the build under test, ASan+UBSan in tools/soak.sh) with a plain and a TLS
listener, two endpoints (keys, sticky keys, a mirror version with
comparison, a version with a concurrency limit and a wait queue, an
upstream that refuses) and every timer set small, so that timers race each
other every second.

Hundreds of concurrent clients (asyncio, raw sockets, plain and TLS) pick
at random what they do: plain and chunked requests, keep-alive reuse,
pipelining, slow heads and slow bodies (a byte every 0.1-1 s), aborts at
every phase, oversized heads and bodies, Expect: 100-continue, pins, sticky
keys, malformed requests, upstream faults asked for by header. Meanwhile
the config is reloaded (SIGHUP, POST /admin/v1/reload), changed through the
admin API (PATCH traffic_percentile), the access log reopened (SIGUSR1),
Redis paused (SIGSTOP/SIGCONT) and killed and restarted (SIGKILL, its
append-only file synced on every write).

At the end it checks invariants, each one a test in the "N passed, M
failed" line: no sanitizer report, the process alive and exiting 0 on
SIGTERM, every response a client received whole has exactly one access-log
line (matched by X-Request-Id, same status), no request id logged twice,
the Redis counters equal the access log's lines exactly (per version, status
class, pinned, minute and group, and sluice:rejected), RSS back near its
warm baseline, no descriptor leaked, no client left hanging, malformed
requests never answered 2xx, well-formed ones never refused as malformed.

Randomness is seeded (--seed, printed first); the same seed replays the
same choices by each client (timing still varies). Usage:
  SLUICE_BUILD=build-asan python3 tests/soak/soak.py --minutes 3 [--seed N]
"""
import argparse
import asyncio
import collections
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
import requests  # noqa: E402
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402
import h2.stream  # noqa: E402

KEY_PRIMARY = "soak-primary-key-Zx81pQ4tLm0vNw7yRb2c"
KEY_SECONDARY = "soak-secondary-key-Hq3sKd9uVf6jEo1gYt5a"
ADMIN_TOKEN = "soak-admin-token-4f9c2e"
HANG_S = 30.0                   # far beyond every timer in the config below

LIMITS = {
    "max_header_bytes": 4096, "max_body_bytes": 65536,
    "header_timeout_ms": 3000, "idle_timeout_ms": 1500,
    "max_connections": 4000, "drain_timeout_ms": 3000,
    "max_pipelined": 8, "max_client_output_bytes": 65536,
    "send_timeout_ms": 1500, "upstream_idle_timeout_ms": 500,
    "max_shadow_inflight": 32, "shadow_timeout_ms": 400,
}
SCORING_TIMEOUT_MS = 2500

# What a client does with one request (weights). "slow_body" is the kind
# that takes a pooled upstream connection and holds it past its idle timer.
KINDS = [
    ("normal", 20), ("get", 3), ("head", 2), ("chunked", 5), ("pipeline", 5),
    ("slow_head", 5), ("slow_body", 12), ("slow_chunked", 4), ("expect", 5),
    ("http10", 2), ("idle", 1),
    ("abort_head", 3), ("abort_body", 4), ("abort_queued", 4), ("abort_response", 4),
    ("slow_reader", 2), ("big_head", 2), ("big_body", 2), ("big_chunked", 2),
    ("malformed", 5),
]
# HTTP/2 connections (SPEC section 9): several streams at once, each one of
# these kinds, mirroring the HTTP/1.1 ones where they make sense; and what a
# connection does as a whole (H2_CONN_ACTS).
H2_KINDS = [
    ("h2_normal", 20), ("h2_get", 3), ("h2_head", 2), ("h2_slow_body", 8),
    ("h2_no_length", 4), ("h2_abort_body", 4), ("h2_abort_queued", 3),
    ("h2_abort_response", 4), ("h2_never_ends", 1), ("h2_big_body", 2),
    ("h2_big_response", 3), ("h2_zero_window", 3), ("h2_malformed", 4),
]
H2_MALFORMED = ["connection_header", "te_gzip", "transfer_encoding", "uppercase_name",
                "no_path", "length_mismatch", "pseudo_after_regular", "bad_method"]
H2_CONN_ACTS = [("none", 80), ("close_mid_stream", 8), ("rst_close", 4), ("not_reading", 8)]
H2_SHARE = 0.3                  # of the connections a client opens
FAULTS = ["delay", "stall", "big", "chunked", "reset", "cut", "drop", "rst", "204body",
          "304body", "close-after", "status", "garbage"]
MALFORMED = ["obs_fold", "obs_fold_te", "cl_and_te", "two_cl", "bare_lf", "bad_chunk",
             "bad_version", "http09", "no_colon", "space_before_colon", "nul", "bad_host"]
# sluice:rejected kinds of the access log's "error" when no version was chosen
REJECT_KIND = {"bad_request": "bad_request", "bad_version": "bad_request",
               "unauthorized": "unauthorized", "not_found": "not_found",
               "client_timeout": "timeout", "body_too_large": "too_large",
               "headers_too_large": "too_large"}
SANITIZER = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                       r"runtime error:|ThreadSanitizer|MemorySanitizer")


def log(msg):
    print("[%7.1fs] %s" % (time.time() - T0, msg), flush=True)


T0 = time.time()


# ---- the processes --------------------------------------------------------

class ChaosModel:
    """A sluice-model --fast with faults, stderr kept (its fault counts)."""

    def __init__(self, model, name, seed, d, fault_rate, extra=()):
        self.name = name
        for attempt in range(harness.START_ATTEMPTS):
            self.port = harness.free_port()
            self.addr = "127.0.0.1:%d" % self.port
            self.errpath = os.path.join(d, "model-%s-%d.log" % (name, self.port))
            self.err = open(self.errpath, "w+")
            self.proc = harness.start(
                [model, "--fast", "--listen", self.addr, "--name", name,
                 "--fault-rate", str(fault_rate), "--slow-max-ms", "1500",
                 "--idle-close-max-ms", "800", "--seed", str(seed)] + list(extra),
                stderr=self.err)

            def output(err=self.err):
                err.flush()
                err.seek(0)
                return err.read()
            try:
                harness.wait_owned(self.proc, [self.port], busy=("cannot listen",),
                                   output=output)
                return
            except harness.PortBusy:
                if attempt == harness.START_ATTEMPTS - 1:
                    raise

    def faults(self):
        self.err.flush()
        with open(self.errpath) as f:
            for line in f:
                if line.startswith("faults:"):
                    return {k: int(v) for k, v in
                            (kv.split("=") for kv in line.split()[1:])}
        return {}


def make_config(models, dead):
    hc = {"path": "/health", "interval_ms": 300, "timeout_ms": 250,
          "failure_threshold": 3, "success_threshold": 1}
    a1, a2, b, c, m, h2 = (x.addr for x in models)
    soak = harness.endpoint("soak", [
        harness.version("control1", [a1, a2], 35, is_default=True, type="control",
                        health_check=hc),
        harness.version("treat1", [b], 25, type="treatment",
                        replica_max_concurrent_requests=6, max_request_wait_time_ms=500),
        harness.version("treat2", [c, dead], 20, type="treatment", health_check=hc),
        harness.version("mirror1", [m], 0, mirror_percentile=30, type="treatment",
                        compare={"samples": 2}),
        harness.version("treat3h2", [h2], 5, type="treatment", upstream_protocol="http2"),
    ], auth={"keys": True}, keys={"primary": KEY_PRIMARY, "secondary": KEY_SECONDARY},
        sticky={"header": "X-User-Id"}, scoring_timeout_ms=SCORING_TIMEOUT_MS,
        failover_to_default=True)
    opn = harness.endpoint("open", [
        harness.version("open1", [a2, c], 60, is_default=True, type="control"),
        harness.version("vdead", [dead], 30, type="treatment",
                        health_check={"path": "/", "interval_ms": 300, "timeout_ms": 200,
                                      "failure_threshold": 1, "success_threshold": 1}),
    ], scoring_timeout_ms=SCORING_TIMEOUT_MS, failover_to_default=True)
    return [soak, opn]


def proc_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def fd_table(pid):
    """fd -> what it is: a file, or a TCP socket as "local->remote STATE"."""
    socks = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    socks[p[9]] = "%d->%d %s" % (int(p[1].rsplit(":", 1)[1], 16),
                                                 int(p[2].rsplit(":", 1)[1], 16), p[3])
        except OSError:
            pass
    out = {}
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                link = "tcp " + socks[link[8:-1]] if link[8:-1] in socks else link
            out[int(fd)] = link
    except OSError:
        pass
    return out


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


# ---- the clients ---------------------------------------------------------

class Stats:
    def __init__(self):
        self.sent = collections.Counter()        # kind -> requests sent
        self.status = collections.Counter()      # status -> complete responses
        self.faults = collections.Counter()      # X-Test-Fault asked for
        self.aborts = collections.Counter()      # phase -> aborts
        self.malformed = collections.Counter()
        self.complete = []      # (kind, status, request id, valid, malformed, headers)
        self.sent_ids = collections.Counter()
        self.hung = []
        self.driver_errors = []
        self.events = collections.Counter()      # reloads, admin changes, ...
        self.conns = collections.Counter()       # plain / tls / h2-plain / h2-tls
        self.h2_conn_acts = collections.Counter()   # what HTTP/2 connections did
        self.garbage = collections.Counter()     # kind -> answers that were not HTTP
        self.found_at = None    # when a sanitizer report began


class Conn:
    """A client connection: asyncio streams, plain or TLS."""

    def __init__(self, reader, writer, tls):
        self.r, self.w, self.tls = reader, writer, tls
        self.dead = False

    @classmethod
    async def open(cls, port, tls, tls_ctx):
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=tls_ctx if tls else None,
                                    limit=1 << 20), HANG_S)
        return cls(r, w, tls)

    async def send(self, data):
        self.w.write(data)
        await self.w.drain()

    def abort(self, rst):
        self.dead = True
        sock = self.w.get_extra_info("socket")
        if rst and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            except OSError:
                pass
        self.w.transport.abort()

    async def close(self):
        self.dead = True
        try:
            self.w.close()
        except Exception:
            pass

    async def _read(self, coro):
        return await asyncio.wait_for(coro, HANG_S)

    async def read_response(self, head_request=False, interim=None):
        """(status, headers, complete). status None: closed before a status
        line; complete False: closed (or cut) before the response's end."""
        try:
            while True:
                head = await self._read(self.r.readuntil(b"\r\n\r\n"))
                lines = head.decode("latin-1").split("\r\n")
                m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
                if not m:
                    return ("garbage", {}, False)
                status = int(m.group(1))
                hdrs = {}
                for l in lines[1:]:
                    if l:
                        k, _, v = l.partition(":")
                        hdrs.setdefault(k.strip().lower(), v.strip())
                if status < 200:
                    if interim is not None:
                        interim.set()
                    continue
                break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            return (None, {}, False)
        except asyncio.LimitOverrunError:
            return ("garbage", {}, False)
        if interim is not None:
            interim.set()
        try:
            if head_request or status in (204, 304):
                pass
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    line = await self._read(self.r.readuntil(b"\r\n"))
                    size = int(line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while await self._read(self.r.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        break
                    await self._read(self.r.readexactly(size + 2))
            elif "content-length" in hdrs:
                await self._read(self.r.readexactly(int(hdrs["content-length"])))
            else:
                await self._read(self.r.read())     # until close
                self.dead = True
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError,
                ValueError):
            return (status, hdrs, False)
        if "close" in hdrs.get("connection", "").lower():
            self.dead = True
        return (status, hdrs, True)


# RFC 9113 section 8.1.1: a response defined to have no content (a 304
# here) may carry a non-zero content-length with no DATA. python3-h2 4.1
# exempts only responses to HEAD: exempt a 304 too, so that the driver
# does not call a correct answer invalid.
_h2_initialize_content_length = h2.stream.H2Stream._initialize_content_length


def _h2_content_length(self, headers):
    _h2_initialize_content_length(self, headers)
    if any(k in (b":status", ":status") and v in (b"304", "304") for k, v in headers):
        self._expected_content_length = None


h2.stream.H2Stream._initialize_content_length = _h2_content_length


class H2Stream:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.body_len = 0
        self.ended = False
        self.reset = None
        self.done = asyncio.Event()
        self.head = asyncio.Event()


class H2Conn:
    """A hand-driven HTTP/2 client connection (python3-h2 over asyncio
    streams): plain with prior knowledge, or TLS with ALPN h2. One reader
    task dispatches frames to the streams; flow control is done by hand
    (received data is acknowledged unless the connection holds its window
    shut for a while)."""

    def __init__(self, reader, writer, tls, stats):
        self.r, self.w, self.tls, self.stats = reader, writer, tls, stats
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.streams = {}
        self.closed = False
        self.terminated = None      # the GOAWAY's error code
        self.window = asyncio.Event()
        self.ack = True             # acknowledge received DATA at once
        self.unacked = []           # (length, stream) while not acknowledging
        self.reading = asyncio.Event()
        self.reading.set()
        self.task = None

    @classmethod
    async def open(cls, port, tls, tls_ctx, stats):
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=tls_ctx if tls else None,
                                    limit=1 << 20), HANG_S)
        self = cls(r, w, tls, stats)
        if tls:
            so = w.get_extra_info("ssl_object")
            alpn = so.selected_alpn_protocol() if so is not None else None
            if alpn != "h2":
                stats.driver_errors.append("TLS listener chose ALPN %r, not h2" % alpn)
                w.close()
                raise ConnectionError("no h2")
        self.conn.initiate_connection()
        # A 1 MiB connection window: streams are held back by their own.
        self.conn.increment_flow_control_window(1 << 20)
        await self.flush()
        self.task = asyncio.ensure_future(self.reader())
        return self

    async def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.w.write(data)
            await asyncio.wait_for(self.w.drain(), HANG_S)

    def wake(self):
        self.window.set()
        self.window = asyncio.Event()

    def end_all(self):
        self.closed = True
        for st in self.streams.values():
            st.done.set()
            st.head.set()
        self.wake()

    async def reader(self):
        try:
            while not self.closed:
                await self.reading.wait()
                data = await self.r.read(65536)
                if not data:
                    break
                if self.closed:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    # After a GOAWAY (either way) python3-h2 refuses every
                    # frame, even those RFC 9113 allows for the streams
                    # already begun: only errors before one are the gateway's.
                    if self.terminated is None and \
                            self.conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                        self.stats.driver_errors.append(
                            "the gateway sent what python-h2 calls invalid HTTP/2: %r" % e)
                    break
                for ev in events:
                    self.event(ev)
                await self.flush()
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError):
            pass
        finally:
            self.end_all()

    def event(self, ev):
        st = self.streams.get(getattr(ev, "stream_id", None))
        if isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                          for k, v in ev.headers}
            try:
                st.status = int(st.headers.get(":status", ""))
            except ValueError:
                st.status = "garbage"
            st.head.set()
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                st.body_len += len(ev.data)
            if self.ack:
                self.ack_data(ev.flow_controlled_length, ev.stream_id)
            else:
                self.unacked.append((ev.flow_controlled_length, ev.stream_id))
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            st.ended = True
            st.done.set()
            st.head.set()
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            st.reset = ev.error_code
            st.done.set()
            st.head.set()
            self.wake()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.terminated = ev.error_code
            self.wake()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.wake()

    def ack_data(self, n, sid):
        if n <= 0:
            return
        try:
            self.conn.acknowledge_received_data(n, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            try:
                self.conn.increment_flow_control_window(n)
            except h2.exceptions.ProtocolError:
                pass

    async def hold_window(self, seconds):
        """Take no response bytes for a while (acknowledge none), then
        give back all that came."""
        self.ack = False
        await asyncio.sleep(seconds)
        self.ack = True
        for n, sid in self.unacked:
            self.ack_data(n, sid)
        self.unacked = []
        try:
            await self.flush()
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError):
            pass                # the connection went meanwhile

    async def start(self, headers, end):
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = st = H2Stream()
        if self.closed:
            st.done.set()
            st.head.set()
            return sid, st
        self.conn.send_headers(sid, headers, end_stream=end)
        await self.flush()
        return sid, st

    async def send_body(self, sid, data, end=True, delays=None):
        """Send data as flow control allows (in pieces with delays when
        given); False when the stream or connection ended first."""
        try:
            return await self._send_body(sid, data, end, delays)
        except (h2.exceptions.ProtocolError, KeyError, ConnectionError, ssl.SSLError,
                OSError, asyncio.TimeoutError):
            return False        # python3-h2 forgot the stream, or the connection went

    async def _send_body(self, sid, data, end, delays):
        st = self.streams[sid]
        pieces = [data] if not delays else [data[i:i + 1] for i in range(len(data))]
        for i, piece in enumerate(pieces):
            if delays and i > 0:
                await asyncio.sleep(delays[i - 1])
            off = 0
            while off < len(piece):
                if self.closed or st.reset is not None or st.ended:
                    return False
                try:
                    room = min(self.conn.local_flow_control_window(sid),
                               self.conn.max_outbound_frame_size, len(piece) - off)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    return False
                if room <= 0:
                    w = self.window
                    try:
                        await asyncio.wait_for(w.wait(), HANG_S)
                    except asyncio.TimeoutError:
                        self.stats.hung.append("an HTTP/2 stream's window stayed shut %ds"
                                               % HANG_S)
                        return False
                    continue
                try:
                    self.conn.send_data(sid, piece[off:off + room])
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    return False
                off += room
                await self.flush()
        if end:
            try:
                self.conn.end_stream(sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return False
            await self.flush()
        return True

    async def reset(self, sid, code=8):         # 8: CANCEL
        try:
            self.conn.reset_stream(sid, code)
            await self.flush()
        except (h2.exceptions.ProtocolError, KeyError, ConnectionError, ssl.SSLError,
                OSError):
            pass

    def abort(self, rst):
        self.closed = True
        sock = self.w.get_extra_info("socket")
        if rst and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            except OSError:
                pass
        self.w.transport.abort()
        self.end_all()

    async def close(self):
        if not self.closed:
            try:
                self.conn.close_connection()
                await self.flush()
            except Exception:   # noqa: BLE001 (closing anyway)
                pass
        self.closed = True
        try:
            # Gone at once, as a client that is done: a TLS close would wait
            # (up to asyncio's 30 s) for the gateway's close_notify, which a
            # gateway holding output for a client that stopped reading reads
            # only after send_timeout_ms: the descriptor check would count
            # the driver's lingering socket as the gateway's.
            self.w.transport.abort()
        except Exception:       # noqa: BLE001
            pass
        if self.task is not None:
            self.task.cancel()
        self.end_all()


class Client:
    def __init__(self, idx, seed, sl, stats, deadline, tls_ctx):
        self.idx = idx
        self.rng = random.Random("%d/%d" % (seed, idx))
        self.seed = seed
        self.sl = sl
        self.stats = stats
        self.deadline = deadline
        self.tls_ctx = tls_ctx
        self.n = 0

    # -- building requests --

    def rid(self):
        self.n += 1
        return "soak-%d-%d-%d" % (self.seed, self.idx, self.n)

    def head(self, method=b"POST", ep=None, body_len=None, chunked=False, extra=(),
             rid=True, proto=b"HTTP/1.1", fault=True, pin=True, auth=True):
        rng = self.rng
        ep = ep or (b"soak" if rng.random() < 0.8 else b"open")
        path = b"/api/v1/service/" + ep + b"/score"
        if rng.random() < 0.2:
            path += b"?q=%d" % rng.randrange(100)
        lines = [method + b" " + path + b" " + proto, b"Host: 127.0.0.1"]
        if auth and ep == b"soak":
            r = rng.random()
            key = (KEY_PRIMARY if r < 0.85 else KEY_SECONDARY if r < 0.95 else
                   "wrong-key" if r < 0.98 else None)
            if key is not None:
                lines.append(b"Authorization: Bearer " + key.encode())
        req_id = None
        if rid and rng.random() < 0.9:
            req_id = self.rid()
            lines.append(b"X-Request-Id: " + req_id.encode())
        if pin and rng.random() < 0.1:
            v = rng.choice([b"control1", b"treat1", b"treat2", b"mirror1", b"treat3h2", b"open1",
                            b"nope"])
            lines.append(b"X-Sluice-Version: " + v)
        if rng.random() < 0.3:
            lines.append(b"X-User-Id: u%d" % rng.randrange(200))
        if fault and rng.random() < 0.25:
            f = rng.choice(FAULTS)
            arg = {"delay": 1500, "stall": 1500, "big": 200000, "chunked": 60000,
                   "status": None}.get(f)
            if f == "status":
                val = "status=%d" % rng.choice([500, 503, 404, 201, 302])
            elif arg is not None:
                val = "%s=%d" % (f, rng.randrange(arg))
            else:
                val = f
            self.stats.faults[f] += 1
            lines.append(b"X-Test-Fault: " + val.encode())
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif body_len is not None:
            lines.append(b"Content-Length: %d" % body_len)
        if proto == b"HTTP/1.0" and rng.random() < 0.5:
            lines.append(b"Connection: keep-alive")
        lines.extend(extra)
        if req_id:
            self.stats.sent_ids[req_id] += 1
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def body(self, n):
        return bytes(self.rng.choice(b"abcdefghij{}:,\"0123456789") for _ in range(n))

    @staticmethod
    def chunk(data):
        return b"%x\r\n" % len(data) + data + b"\r\n"

    # -- running --

    async def run(self):
        rng = self.rng
        kinds, weights = zip(*KINDS)
        while time.time() < self.deadline:
            tls = rng.random() < 0.3
            port = self.sl.tls_port if tls else self.sl.port
            if rng.random() < H2_SHARE:
                await self.run_h2(port, tls)
                continue
            try:
                conn = await Conn.open(port, tls, self.tls_ctx)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                await asyncio.sleep(0.2)
                continue
            self.stats.conns["tls" if tls else "plain"] += 1
            try:
                for _ in range(rng.randint(1, 6)):
                    if conn.dead or time.time() >= self.deadline:
                        break
                    kind = rng.choices(kinds, weights)[0]
                    self.stats.sent[kind] += 1
                    await getattr(self, "k_" + kind)(conn)
                    if rng.random() < 0.3:
                        await asyncio.sleep(rng.random() * 0.05)
            except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
                pass
            except asyncio.TimeoutError:
                self.stats.hung.append("client %d request %d: a write blocked %ds"
                                       % (self.idx, self.n, HANG_S))
            except asyncio.CancelledError:
                conn.abort(False)
                raise
            except Exception:
                self.stats.driver_errors.append(traceback.format_exc())
            finally:
                if not conn.dead:
                    await conn.close()

    async def exchange(self, conn, kind, head, parts, delays=None, expect=False,
                       head_request=False, valid=True, malformed=None, head_parts=None):
        """Send head (in head_parts pieces, with delays) and body parts,
        reading the answer at the same time; record it."""
        interim = asyncio.Event() if expect else None

        async def sender():
            try:
                hp = head_parts or [head]
                for i, p in enumerate(hp):
                    await conn.send(p)
                    if i < len(hp) - 1:
                        await asyncio.sleep(delays[i] if delays else 0)
                if expect:
                    try:
                        await asyncio.wait_for(interim.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
                for i, p in enumerate(parts):
                    if head_parts is None and delays and i > 0:
                        await asyncio.sleep(delays[i - 1])
                    await conn.send(p)
                return True
            except (ConnectionError, ssl.SSLError, OSError):
                return False
        st = asyncio.ensure_future(sender())
        try:
            status, hdrs, complete = await conn.read_response(head_request, interim)
        except asyncio.TimeoutError:
            self.stats.hung.append("client %d %s: no answer within %ds" % (self.idx, kind, HANG_S))
            st.cancel()
            conn.abort(False)
            return
        if not st.done():
            st.cancel()
            conn.dead = True        # the rest of the request was never sent
        self.record(kind, status, hdrs, complete, valid, malformed)
        if status is None or not complete:
            conn.dead = True

    def record(self, kind, status, hdrs, complete, valid, malformed):
        if status == "garbage":
            # Bytes where a status line belongs: the gateway never sends
            # anything but HTTP (a model server's garbage becomes a 502), so
            # the connection's framing was lost (the previous answer's
            # body was longer than it said, or came after a HEAD's head).
            self.stats.garbage[kind] += 1
        if complete:
            self.stats.status[status] += 1
            self.stats.complete.append((kind, status, hdrs.get("x-request-id", ""), valid,
                                        malformed, hdrs.get("x-sluice-version")))

    # -- the kinds --

    async def k_normal(self, conn):
        body = self.body(self.rng.randrange(0, 2000))
        await self.exchange(conn, "normal", self.head(body_len=len(body)), [body])

    async def k_get(self, conn):
        await self.exchange(conn, "get", self.head(method=b"GET"), [])

    async def k_head(self, conn):
        await self.exchange(conn, "head", self.head(method=b"HEAD"), [], head_request=True)

    async def k_http10(self, conn):
        body = self.body(self.rng.randrange(0, 300))
        h = self.head(body_len=len(body), proto=b"HTTP/1.0")
        await self.exchange(conn, "http10", h, [body])
        if b"keep-alive" not in h:
            conn.dead = True

    async def k_chunked(self, conn):
        parts = [self.chunk(self.body(self.rng.randrange(1, 3000)))
                 for _ in range(self.rng.randint(1, 5))] + [b"0\r\n\r\n"]
        await self.exchange(conn, "chunked", self.head(chunked=True), [b"".join(parts)])

    async def k_pipeline(self, conn):
        rng = self.rng
        n = rng.randint(2, 6)
        reqs, methods = [], []
        for _ in range(n):
            m = rng.choice([b"POST", b"POST", b"GET", b"HEAD"])
            if m == b"POST":
                body = self.body(rng.randrange(0, 500))
                reqs.append(self.head(body_len=len(body)) + body)
            else:
                reqs.append(self.head(method=m))
            methods.append(m)
        try:
            await conn.send(b"".join(reqs))
        except (ConnectionError, ssl.SSLError, OSError):
            conn.dead = True
            return
        for m in methods:
            try:
                status, hdrs, complete = await conn.read_response(m == b"HEAD")
            except asyncio.TimeoutError:
                self.stats.hung.append("client %d pipeline: no answer within %ds"
                                       % (self.idx, HANG_S))
                conn.abort(False)
                return
            self.record("pipeline", status, hdrs, complete, True, None)
            if not complete:
                conn.dead = True
                return
            if conn.dead:
                return

    def slow_delays(self, n):
        rate = self.rng.uniform(0.1, 1.0)       # one piece per 0.1-1 s
        return [rate * self.rng.uniform(0.7, 1.3) for _ in range(n)]

    async def k_slow_head(self, conn):
        body = self.body(self.rng.randrange(0, 100))
        h = self.head(body_len=len(body))
        k = self.rng.randint(2, 6)
        cuts = sorted(self.rng.sample(range(1, len(h)), k - 1))
        pieces = [h[a:b] for a, b in zip([0] + cuts, cuts + [len(h)])]
        await self.exchange(conn, "slow_head", h, [body], delays=self.slow_delays(k),
                            head_parts=pieces)

    async def k_slow_body(self, conn):
        """A body that arrives one byte at a time (issue 17 finding 1)."""
        n = self.rng.randint(2, 12)
        body = self.body(n)
        await self.exchange(conn, "slow_body", self.head(body_len=n), list(body[i:i + 1]
                            for i in range(n)), delays=self.slow_delays(n))

    async def k_slow_chunked(self, conn):
        n = self.rng.randint(2, 6)
        parts = [self.chunk(self.body(self.rng.randint(1, 5))) for _ in range(n)]
        parts.append(b"0\r\n\r\n")
        await self.exchange(conn, "slow_chunked", self.head(chunked=True), parts,
                            delays=self.slow_delays(n + 1))

    async def k_expect(self, conn):
        body = self.body(self.rng.randrange(1, 3000))
        chunked = self.rng.random() < 0.3
        h = self.head(body_len=None if chunked else len(body), chunked=chunked,
                      extra=[b"Expect: 100-continue"])
        await self.exchange(conn, "expect", h, [self.chunk(body) + b"0\r\n\r\n" if chunked
                                                else body], expect=True)

    async def k_idle(self, conn):
        """A connection that sends nothing: closed, or a 408, by header_timeout_ms."""
        try:
            status, hdrs, complete = await conn.read_response()
        except asyncio.TimeoutError:
            self.stats.hung.append("client %d idle: not closed within %ds" % (self.idx, HANG_S))
            conn.abort(False)
            return
        self.record("idle", status, hdrs, complete, True, None)
        conn.dead = True

    async def abort_after(self, conn, phase, data, wait):
        try:
            await conn.send(data)
            await asyncio.sleep(wait)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        self.stats.aborts[phase] += 1
        conn.abort(self.rng.random() < 0.5)

    async def k_abort_head(self, conn):
        h = self.head(body_len=10)
        await self.abort_after(conn, "mid-head", h[:self.rng.randrange(1, len(h) - 2)],
                               self.rng.random() * 0.5)

    async def k_abort_body(self, conn):
        n = self.rng.randint(10, 3000)
        h = self.head(body_len=n)
        await self.abort_after(conn, "mid-body", h + self.body(self.rng.randrange(0, n)),
                               self.rng.random() * 1.0)

    async def k_abort_queued(self, conn):
        """Pinned to treat1 (6 requests at a time, a wait queue) with a slow
        answer: requests queue; leave while queued or waiting."""
        extra = [b"X-Sluice-Version: treat1",
                 b"X-Test-Fault: delay=%d" % self.rng.randrange(200, 1200)]
        body = self.body(self.rng.randrange(0, 200))
        h = self.head(body_len=len(body), pin=False, fault=False, extra=extra, ep=b"soak")
        if self.rng.random() < 0.6:
            await self.abort_after(conn, "queued", h + body, self.rng.random() * 0.6)
        else:
            await self.exchange(conn, "abort_queued", h, [body])

    async def k_abort_response(self, conn):
        big = self.rng.random() < 0.5
        extra = [b"X-Test-Fault: " + (b"big=%d" % self.rng.randrange(20000, 250000) if big
                                      else b"stall=%d" % self.rng.randrange(100, 2000))]
        h = self.head(method=b"GET", fault=False, extra=extra)
        try:
            await conn.send(h)
            await asyncio.wait_for(conn.r.readuntil(b"\r\n\r\n"), HANG_S)
            await asyncio.wait_for(conn.r.read(self.rng.randrange(1, 3000)), HANG_S)
        except asyncio.TimeoutError:
            self.stats.hung.append("client %d abort_response: no answer within %ds"
                                   % (self.idx, HANG_S))
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass
        self.stats.aborts["response-streaming"] += 1
        conn.abort(self.rng.random() < 0.5)

    async def k_slow_reader(self, conn):
        """Asks for a big answer and reads none of it for a while."""
        h = self.head(method=b"GET", fault=False,
                      extra=[b"X-Test-Fault: big=%d" % self.rng.randrange(100000, 250000)])
        try:
            await conn.send(h)
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        self.stats.aborts["slow-reader"] += 1
        conn.abort(self.rng.random() < 0.5)

    async def k_big_head(self, conn):
        h = self.head(body_len=0, extra=[b"X-Pad: " + b"p" * self.rng.randrange(4100, 9000)])
        await self.exchange(conn, "big_head", h, [], valid=False)
        conn.dead = True

    async def k_big_body(self, conn):
        n = self.rng.randrange(65537, 120000)
        await self.exchange(conn, "big_body", self.head(body_len=n), [self.body(n)],
                            valid=False)
        conn.dead = True

    async def k_big_chunked(self, conn):
        parts = [self.chunk(self.body(30000)) for _ in range(3)] + [b"0\r\n\r\n"]
        await self.exchange(conn, "big_chunked", self.head(chunked=True), [b"".join(parts)],
                            valid=False)
        conn.dead = True

    async def k_malformed(self, conn):
        m = self.rng.choice(MALFORMED)
        self.stats.malformed[m] += 1
        body = b"abc"
        h = self.head(body_len=3, fault=False)
        lines = h[:-4].split(b"\r\n")
        if m == "obs_fold":
            lines.insert(2, b"X-Folded: a\r\n b")
        elif m == "obs_fold_te":
            lines = [l for l in lines if not l.startswith(b"Content-Length")]
            lines.append(b"Transfer-Encoding:\r\n chunked")
            body = b"3\r\nabc\r\n0\r\n\r\n"
        elif m == "cl_and_te":
            lines.append(b"Transfer-Encoding: chunked")
            body = b"3\r\nabc\r\n0\r\n\r\n"
        elif m == "two_cl":
            lines.append(b"Content-Length: 4")
        elif m == "bare_lf":
            lines.insert(2, b"X-Bare: a\nX-Other: b")
        elif m == "bad_chunk":
            lines = [l for l in lines if not l.startswith(b"Content-Length")]
            lines.append(b"Transfer-Encoding: chunked")
            body = b"zz\r\nabc\r\n0\r\n\r\n"
        elif m == "bad_version":
            lines[0] = lines[0].rsplit(b" ", 1)[0] + b" HTTP/2.0"
        elif m == "http09":
            lines = [lines[0].rsplit(b" ", 1)[0]]
            body = b""
        elif m == "no_colon":
            lines.insert(2, b"X-No-Colon")
        elif m == "space_before_colon":
            lines.insert(2, b"X-Space : a")
        elif m == "nul":
            lines.insert(2, b"X-Nul: a\0b")
        elif m == "bad_host":
            lines[1] = b"Host: exa mple"
        data = b"\r\n".join(lines) + (b"\r\n" if m == "http09" else b"\r\n\r\n") + body
        await self.exchange(conn, "malformed", data, [], valid=False, malformed=m)
        conn.dead = True


    # -- HTTP/2 connections: several streams at once --

    async def run_h2(self, port, tls):
        rng = self.rng
        try:
            conn = await H2Conn.open(port, tls, self.h2_ctx, self.stats)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.2)
            return
        self.stats.conns["h2-tls" if tls else "h2-plain"] += 1
        kinds, weights = zip(*H2_KINDS)
        acts, aw = zip(*H2_CONN_ACTS)
        act = rng.choices(acts, aw)[0]
        self.stats.h2_conn_acts[act] += 1
        tasks = []
        try:
            for _ in range(rng.randint(1, 3)):          # waves of streams
                if conn.closed or time.time() >= self.deadline:
                    break
                for _ in range(rng.randint(1, 6)):
                    kind = rng.choices(kinds, weights)[0]
                    self.stats.sent[kind] += 1
                    tasks.append(asyncio.ensure_future(self.h2_stream(conn, kind)))
                    if rng.random() < 0.5:
                        await asyncio.sleep(rng.random() * 0.05)
                if act == "not_reading" and rng.random() < 0.5:
                    # The client reads nothing for a while: its socket fills.
                    conn.reading.clear()
                    await asyncio.sleep(rng.uniform(0.2, 2.0))
                    conn.reading.set()
                if act in ("close_mid_stream", "rst_close"):
                    await asyncio.sleep(rng.uniform(0.0, 1.5))
                    self.stats.aborts["h2-" + act] += 1
                    conn.abort(act == "rst_close")
                    break
                await asyncio.wait(tasks, timeout=rng.uniform(0.0, 1.0))
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=HANG_S + 5)
                for t in pending:
                    t.cancel()
                    self.stats.hung.append("client %d: an HTTP/2 stream still busy after %ds"
                                           % (self.idx, HANG_S + 5))
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        e = t.exception()
                        if not isinstance(e, (ConnectionError, ssl.SSLError, OSError,
                                              asyncio.TimeoutError)):
                            self.stats.driver_errors.append(
                                "".join(traceback.format_exception(type(e), e,
                                                                   e.__traceback__)))
        except asyncio.CancelledError:
            conn.abort(False)
            for t in tasks:
                t.cancel()
            raise
        except (ConnectionError, ssl.SSLError, OSError, asyncio.TimeoutError):
            pass
        except Exception:
            self.stats.driver_errors.append(traceback.format_exc())
        finally:
            await conn.close()

    def h2_head(self, method="POST", body_len=None, extra=(), fault=True, pin=True,
                ep=None):
        """An HTTP/1.1 head from head(), as an HTTP/2 header list."""
        h = self.head(method=method.encode(), ep=ep, body_len=body_len, fault=fault,
                      pin=pin, extra=extra)
        lines = h.rstrip(b"\r\n").split(b"\r\n")
        m, path, _ = lines[0].split(b" ", 2)
        out = [(b":method", m), (b":path", path), (b":scheme", b"http"),
               (b":authority", b"127.0.0.1")]
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            k = k.strip().lower()
            if k != b"host":
                out.append((k, v.strip()))
        return out

    async def h2_exchange(self, conn, kind, headers, body=b"", delays=None, valid=True,
                          malformed=None, end=True, head_request=False):
        """One stream: the head, the body (as flow control allows), the
        answer; recorded as the HTTP/1.1 ones are."""
        sid, st = await conn.start(headers, end=not body and end)
        if body or not end:
            sender = asyncio.ensure_future(conn.send_body(sid, body, end=end, delays=delays))
        else:
            sender = None
        try:
            await asyncio.wait_for(st.done.wait(), HANG_S)
        except asyncio.TimeoutError:
            rid = dict(headers).get(b"x-request-id", b"-").decode()
            try:        # what the gateway may still send: the stream's and the connection's
                window = "%d/%d" % (
                    conn.conn.streams[sid]._inbound_window_manager.current_window_size,
                    conn.conn._inbound_flow_control_window_manager.current_window_size)
            except (h2.exceptions.ProtocolError, KeyError, AttributeError):
                window = None
            self.stats.hung.append(
                "client %d %s (stream %d, %s): no HTTP/2 answer within %ds (status %s, "
                "%d body bytes, x-request-id %s, acking %s, window open to the gateway %s)"
                % (self.idx, kind, sid, rid, HANG_S, st.status, st.body_len,
                   st.headers.get("x-request-id"), conn.ack, window))
            await conn.reset(sid)
        if sender is not None and not sender.done():
            sender.cancel()
        self.h2_record(kind, st, valid, malformed, head_request)

    def h2_record(self, kind, st, valid, malformed, head_request=False):
        complete = st.ended and st.status is not None
        cl = st.headers.get("content-length")
        if complete and cl is not None and not head_request and st.status not in (204, 304):
            complete = cl.isdigit() and int(cl) == st.body_len
        self.record(kind, st.status, st.headers, complete, valid, malformed)

    async def h2_stream(self, conn, kind):
        try:
            await self.h2_kind(conn, kind)
        except (h2.exceptions.ProtocolError, KeyError):
            pass                    # the connection ended under the stream

    async def h2_kind(self, conn, kind):
        rng = self.rng
        if kind == "h2_normal":
            body = self.body(rng.randrange(0, 2000))
            await self.h2_exchange(conn, kind, self.h2_head(body_len=len(body)), body)
        elif kind == "h2_get":
            await self.h2_exchange(conn, kind, self.h2_head("GET"))
        elif kind == "h2_head":
            await self.h2_exchange(conn, kind, self.h2_head("HEAD"), head_request=True)
        elif kind == "h2_no_length":
            # No content-length: the body goes to an HTTP/1.1 upstream chunked.
            body = self.body(rng.randrange(1, 3000))
            await self.h2_exchange(conn, kind, self.h2_head(), body)
        elif kind == "h2_slow_body":
            n = rng.randint(2, 12)
            await self.h2_exchange(conn, kind, self.h2_head(body_len=n), self.body(n),
                                   delays=self.slow_delays(n))
        elif kind == "h2_big_body":
            n = rng.randrange(65537, 120000)
            await self.h2_exchange(conn, kind, self.h2_head(body_len=n), self.body(n),
                                   valid=False)
        elif kind == "h2_never_ends":
            # The head and part of a body, then nothing: 408 (header_timeout_ms)
            # or a reset.
            n = rng.randint(10, 300)
            await self.h2_exchange(conn, kind, self.h2_head(body_len=n),
                                   self.body(rng.randrange(0, n)), end=False)
        elif kind == "h2_abort_body":
            n = rng.randint(10, 3000)
            sid, st = await conn.start(self.h2_head(body_len=n), end=False)
            await conn.send_body(sid, self.body(rng.randrange(0, n)), end=False)
            await asyncio.sleep(rng.random() * 1.0)
            self.stats.aborts["h2-mid-body"] += 1
            await conn.reset(sid)
        elif kind == "h2_abort_queued":
            extra = [b"X-Sluice-Version: treat1",
                     b"X-Test-Fault: delay=%d" % rng.randrange(200, 1200)]
            body = self.body(rng.randrange(0, 200))
            hs = self.h2_head(body_len=len(body), pin=False, fault=False, extra=extra,
                              ep=b"soak")
            if rng.random() < 0.6:
                sid, st = await conn.start(hs, end=not body)
                if body:
                    await conn.send_body(sid, body)
                await asyncio.sleep(rng.random() * 0.6)
                self.stats.aborts["h2-queued"] += 1
                if st.done.is_set():
                    self.h2_record(kind, st, True, None)
                else:
                    await conn.reset(sid)
            else:
                await self.h2_exchange(conn, kind, hs, body)
        elif kind == "h2_abort_response":
            big = rng.random() < 0.5
            extra = [b"X-Test-Fault: " + (b"big=%d" % rng.randrange(20000, 250000) if big
                                          else b"stall=%d" % rng.randrange(100, 2000))]
            sid, st = await conn.start(self.h2_head("GET", fault=False, extra=extra), end=True)
            try:
                await asyncio.wait_for(st.head.wait(), HANG_S)
            except asyncio.TimeoutError:
                self.stats.hung.append("client %d h2_abort_response: no head within %ds"
                                       % (self.idx, HANG_S))
            await asyncio.sleep(rng.random() * 0.3)
            self.stats.aborts["h2-response-streaming"] += 1
            if st.done.is_set():
                self.h2_record(kind, st, True, None)
            else:
                await conn.reset(sid)
        elif kind in ("h2_big_response", "h2_zero_window"):
            extra = [b"X-Test-Fault: big=%d" % rng.randrange(100000, 250000)]
            hs = self.h2_head("GET", fault=False, extra=extra)
            if kind == "h2_zero_window":
                # The client takes none of the answer for a while: the
                # connection's window shuts (its other streams wait too).
                asyncio.ensure_future(conn.hold_window(rng.uniform(0.3, 2.5)))
            await self.h2_exchange(conn, kind, hs)
        elif kind == "h2_malformed":
            m = rng.choice(H2_MALFORMED)
            self.stats.malformed[m] += 1
            body = b"abc"
            hs = self.h2_head(body_len=3, fault=False)
            if m == "connection_header":
                hs.append((b"connection", b"keep-alive"))
            elif m == "te_gzip":
                hs.append((b"te", b"gzip"))
            elif m == "transfer_encoding":
                hs.append((b"transfer-encoding", b"chunked"))
            elif m == "uppercase_name":
                hs.append((b"X-Upper", b"a"))
            elif m == "no_path":
                hs = [h for h in hs if h[0] != b":path"]
            elif m == "length_mismatch":
                hs = [h for h in hs if h[0] != b"content-length"] + [(b"content-length", b"10")]
            elif m == "pseudo_after_regular":
                hs = hs[:1] + [(b"x-first", b"1")] + hs[1:]
            elif m == "bad_method":
                hs[0] = (b":method", b"PO ST")
            await self.h2_exchange(conn, kind, hs, body, valid=False, malformed=m)


# ---- the operator: reloads, admin changes, log reopen, Redis pauses -------

def operator(sl, redis, rng, stop, stats):
    url = sl.admin("/admin/v1/endpoints/soak/versions/")
    hdr = {"Authorization": "Bearer " + ADMIN_TOKEN}
    while not stop.wait(rng.uniform(1.0, 4.0)):
        what = rng.choice(["sighup", "reload", "patch", "patch", "usr1", "redis_pause",
                           "redis_restart"])
        try:
            if what == "sighup":
                eps = sl.config["endpoints"]
                v = eps[0]["versions"]
                v[1]["traffic_percentile"] = rng.randrange(0, 31)
                v[2]["traffic_percentile"] = rng.randrange(0, 31)
                v[0]["description"] = "soak reload %d" % rng.randrange(1 << 30)
                sl.write_config()
                os.kill(sl.proc.pid, signal.SIGHUP)
            elif what == "reload":
                requests.post(sl.admin("/admin/v1/reload"), headers=hdr, timeout=10)
            elif what == "patch":
                name = rng.choice(["treat1", "treat2", "treat3h2"])
                r = requests.patch(url + name, headers=hdr, timeout=10,
                                   json={"traffic_percentile": rng.randrange(0, 31)})
                stats.events["admin_%d" % r.status_code] += 1
            elif what == "usr1":
                os.kill(sl.proc.pid, signal.SIGUSR1)
            elif what == "redis_restart":
                # Killed mid-flush and back on its port with its append-only
                # file: a batch applied but not acknowledged is sent again and
                # must not count twice (SPEC section 4).
                redis.kill()
                stop.wait(rng.uniform(0.2, 3.0))
                redis.start()
            elif what == "redis_pause":
                os.kill(redis.proc.pid, signal.SIGSTOP)
                try:
                    stop.wait(rng.uniform(0.5, 2.5))
                finally:
                    os.kill(redis.proc.pid, signal.SIGCONT)
            stats.events[what] += 1
        except Exception as e:      # noqa: BLE001 (counted, and the soak goes on)
            stats.events[what + "_error"] += 1
            if sl.proc.poll() is None:
                log("operator %s failed: %s" % (what, e))


# ---- the run -------------------------------------------------------------

async def load(sl, seed, n_clients, seconds, stats, first_idx):
    tls_ctx = ssl.create_default_context()
    tls_ctx.check_hostname = False
    tls_ctx.verify_mode = ssl.CERT_NONE
    deadline = time.time() + seconds
    h2_ctx = ssl.create_default_context()
    h2_ctx.check_hostname = False
    h2_ctx.verify_mode = ssl.CERT_NONE
    h2_ctx.set_alpn_protocols(["h2"])
    clients = [Client(first_idx + i, seed, sl, stats, deadline, tls_ctx)
               for i in range(n_clients)]
    for c in clients:
        c.h2_ctx = h2_ctx
    tasks = [asyncio.ensure_future(c.run()) for c in clients]

    errpath = os.path.join(sl.dir, "stderr.log")

    async def watch():
        """Until the deadline, or until sluice dies or its sanitizer starts
        a report (symbolizing one takes seconds: the load stops at once)."""
        seen = 0
        while time.time() < deadline:
            if sl.proc.poll() is not None:
                return True
            try:
                with open(errpath, "rb") as f:
                    f.seek(seen)
                    new = f.read()
            except OSError:
                new = b""
            if SANITIZER.search(new.decode("latin-1")):
                stats.found_at = time.time()
                return True
            seen += max(0, len(new) - 200)      # a line cut in two is read again
            await asyncio.sleep(0.2)
        return False
    died = await watch()
    if died:
        for t in tasks:
            t.cancel()
    # Clients end by themselves after the deadline (their reads are bounded).
    done, pending = await asyncio.wait(tasks, timeout=HANG_S + 15)
    for t in pending:
        stats.hung.append("a client still busy %ds after the end of the load" % (HANG_S + 15))
        t.cancel()
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            stats.driver_errors.append(repr(t.exception()))
    return died


def health_allowance(endpoints):
    """Remote port -> how many health checks sluice runs against it. Each
    check keeps one evhttp connection, open or not as the model server's
    random idle close left it: those are the only sockets whose number
    varies on an idle gateway."""
    out = collections.Counter()
    for e in endpoints:
        for v in e["versions"]:
            if "health_check" in v:
                for u in v["upstreams"]:
                    out[int(u.rsplit(":", 1)[1])] += 1
    return out


def counted_fds(pid, allowance):
    """Descriptors, less the established connections of health checks."""
    left = collections.Counter(allowance)
    n = 0
    for fd, what in fd_table(pid).items():
        m = re.match(r"tcp \d+->(\d+) 01$", what)
        if m and left[int(m.group(1))] > 0:
            left[int(m.group(1))] -= 1
            continue
        n += 1
    return n


def settle(pid, seconds, allowance):
    """The smallest descriptor count and RSS seen over a quiet period."""
    fds, rss = [], []
    end = time.time() + seconds
    while time.time() < end:
        fds.append(counted_fds(pid, allowance))
        rss.append(rss_kib(pid))
        time.sleep(0.2)
    return min(fds), min(rss)


def sanitizer_report(text):
    lines = text.splitlines()
    for i, l in enumerate(lines):
        if SANITIZER.search(l):
            return "\n".join(lines[max(0, i - 2):i + 60])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="load duration (default 3)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--sluice", default=harness.SLUICE, help="the sluice binary")
    ap.add_argument("--model", default=harness.MODEL, help="the sluice-model binary")
    ap.add_argument("--out", help="keep the access log and sluice's stderr in this folder")
    ap.add_argument("--rss-bound-mib", type=int, default=96,
                    help="allowed RSS growth over the warm baseline (default 96)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    print("soak seed %d (replay: tools/soak.sh %g %d), %d clients, sluice %s"
          % (seed, args.minutes, seed, args.clients, args.sluice), flush=True)
    harness.SLUICE = args.sluice
    rng = random.Random(seed)
    results = []

    def check(name, ok, detail=""):
        results.append((name, bool(ok), detail))
        print("%s %s%s" % ("ok  " if ok else "FAIL", name, (": " + detail) if detail else ""),
              flush=True)

    stats = Stats()
    try:
        redis = harness.Redis(persist=True)
        d = harness.tmpdir()
        models = [ChaosModel(args.model, n, seed + i, d, 0.04)
                  for i, n in enumerate(["control1a", "control1b", "treat1", "treat2",
                                         "mirror1"])]
        models.append(ChaosModel(args.model, "treat3h2", seed + 5, d, 0,
                                 ("--h2-refuse-every", "7", "--h2-drop-after", "30")))
        dead = "127.0.0.1:%d" % harness.free_port()     # nothing listens there
        env = {}
        asan = os.environ.get("ASAN_OPTIONS", "")
        if "quarantine_size_mb" not in asan:
            # A bounded quarantine keeps RSS comparable; a freed object
            # still stays poisoned for 32 MiB of later frees.
            env["ASAN_OPTIONS"] = (asan + ":" if asan else "") + "quarantine_size_mb=32"
        sl = harness.Sluice(make_config(models, dead), tls=True, workers=2, limits=LIMITS,
                            extra={"admin": {"token": ADMIN_TOKEN},
                                   "redis": {"address": "127.0.0.1:%d" % redis.port,
                                             "flush_interval_ms": 200}},
                            env=env)
        pid = sl.proc.pid
        time.sleep(1.0)
        allowance = health_allowance(sl.config["endpoints"])
        fd_base, rss_start = settle(pid, 2.0, allowance)
        fds_start = fd_table(pid)
        log("sluice pid %d up: %d descriptors (%d in all), RSS %d KiB"
            % (pid, fd_base, proc_fds(pid), rss_start))

        total_s = max(20.0, args.minutes * 60)
        warm_s = min(15.0, total_s / 6)
        quiet_s = (LIMITS["idle_timeout_ms"] + LIMITS["upstream_idle_timeout_ms"]) / 1000 + 2.5
        t_load = time.time()
        died = asyncio.run(load(sl, seed, args.clients, warm_s, stats, 0))
        rss_warm = None
        if not died:
            _, rss_warm = settle(pid, quiet_s, allowance)
            log("warm-up done: %d requests, RSS %d KiB" % (sum(stats.sent.values()), rss_warm))
            stop = threading.Event()
            op = threading.Thread(target=operator, args=(sl, redis, rng, stop, stats),
                                  daemon=True)
            op.start()
            died = asyncio.run(load(sl, seed, args.clients, total_s - warm_s, stats,
                                    args.clients))
            stop.set()
            op.join()
        t_end = time.time()
        if died:
            if stats.found_at:
                log("sanitizer report %.1f s into the load" % (stats.found_at - t_load))
                for _ in range(150):        # let it finish the report and exit
                    if sl.proc.poll() is not None:
                        break
                    time.sleep(0.2)
            log("sluice DIED %.1f s into the load (exit %s)"
                % ((stats.found_at or t_end) - t_load, sl.proc.returncode))
        else:
            log("load done after %.1f s" % (t_end - t_load))

        # -- while it runs --
        alive = sl.proc.poll() is None
        fd_end = rss_end = None
        if alive:
            fd_end, rss_end = settle(pid, quiet_s, allowance)
            alive = sl.proc.poll() is None
        check("sluice_alive_after_load", alive,
              "" if alive else "exited %s %.1f s into the load" % (sl.proc.returncode,
                                                                  t_end - t_load))
        if alive:
            fds_end = fd_table(pid)
            ports = {"redis": redis.port, "listener": sl.port, "tls listener": sl.tls_port,
                     "admin": sl.admin_port}
            ports.update({"model " + m.name: m.port for m in models})
            names = {v: k for k, v in ports.items()}
            new_fds = ["%d: %s%s" % (fd, l, "".join(" (%s)" % names[int(x)] for x in
                                                 re.findall(r"\d+", l.split(" ")[1])
                                                 if int(x) in names) if l.startswith("tcp ")
                                     else "")
                       for fd, l in sorted(fds_end.items()) if fds_start.get(fd) != l]
            check("no_descriptor_leaked", fd_end <= fd_base,
                  "%d descriptors at start, %d after the load and %.1f s quiet (not "
                  "counting health checks' connections); new or changed: %s"
                  % (fd_base, fd_end, quiet_s, "; ".join(new_fds) or "none"))
            check("rss_back_near_baseline", rss_end - rss_warm <= args.rss_bound_mib * 1024,
                  "RSS %d KiB at start, %d KiB warm, %d KiB after the load (bound: warm + %d MiB)"
                  % (rss_start, rss_warm, rss_end, args.rss_bound_mib))
            rc = harness.stop(sl.proc)
            check("clean_exit_on_sigterm", rc == 0, "exit code %s" % rc)
        else:
            check("no_descriptor_leaked", False, "sluice died")
            check("rss_back_near_baseline", False, "sluice died")
            check("clean_exit_on_sigterm", False, "sluice died")
        err = sl.log()
        rep = sanitizer_report(err)
        check("no_sanitizer_report", rep is None, "" if rep is None else "\n" + rep)
        if rep is not None:
            summary = re.search(r"SUMMARY: .*", err)
            log("sanitizer: %s" % (summary.group(0) if summary else rep.splitlines()[0]))
            if re.search(r"heap-use-after-free", err) and re.search(
                    r"freed by thread.*?\n(?:.*\n){0,3}.*upstream_gc", err):
                log("this is issue 17 finding 1: a pooled upstream connection freed by "
                    "upstream_gc() (its idle timer fired while a request used it), used after")

        # -- the clients' view --
        check("no_client_left_hanging", not stats.hung,
              "%d: %s" % (len(stats.hung), "; ".join(stats.hung[:5])))
        check("driver_ran_cleanly", not stats.driver_errors,
              "%d errors, first:\n%s" % (len(stats.driver_errors),
                                         (stats.driver_errors or [""])[0]))
        check("responses_framed", not stats.garbage,
              "answers that did not start with a status line, by the kind of request "
              "that read them: %s" % dict(stats.garbage))
        no_id = [c for c in stats.complete if not c[2]]
        check("every_response_has_request_id", not no_id,
              "%d responses without X-Request-Id, e.g. %s" % (len(no_id), no_id[:3]))
        bad_ok = [c for c in stats.complete if c[4] and 200 <= c[1] < 300]
        check("malformed_never_2xx", not bad_ok,
              "%d malformed requests answered 2xx: %s" % (
                  len(bad_ok), sorted(collections.Counter(c[4] for c in bad_ok).items())))
        refused = [c for c in stats.complete if c[3] and c[5] is None and
                   c[1] in (400, 413, 431, 505)]
        check("valid_never_refused_as_malformed", not refused,
              "%d well-formed requests refused: %s" % (
                  len(refused), refused[:5]))
        missing = [k for k, _ in KINDS + H2_KINDS if stats.sent[k] == 0]
        check("every_kind_sent", not missing, "never sent: %s" % missing)

        # -- the access log and Redis, after the drain flushed them --
        lines = []
        lp = os.path.join(sl.dir, "access.log")
        bad_lines = 0
        for p in sorted(glob.glob(lp + "*")):
            with open(p) as f:
                for l in f:
                    if l.strip():
                        try:
                            lines.append(json.loads(l))
                        except ValueError:
                            bad_lines += 1
        check("access_log_lines_parse", bad_lines == 0, "%d unparseable lines" % bad_lines)
        by_id = collections.Counter(l.get("request_id") for l in lines)
        dup = [(k, n) for k, n in by_id.items() if n > 1]
        check("no_request_id_logged_twice", not dup,
              "%d ids logged more than once, e.g. %s" % (len(dup), dup[:5]))
        status_of = {l.get("request_id"): l.get("status") for l in lines}
        unlogged = [c for c in stats.complete if by_id.get(c[2], 0) != 1]
        wrong = [(c[2], c[1], status_of[c[2]]) for c in stats.complete
                 if by_id.get(c[2], 0) == 1 and status_of[c[2]] != c[1]]
        check("every_response_one_access_line", not unlogged and not wrong,
              "%s%d of %d complete responses not logged exactly once (e.g. %s); "
              "%d logged with another status (e.g. %s)"
              % ("" if alive else "sluice died, its buffered lines with it: ",
                 len(unlogged), len(stats.complete), [(c[0], c[1], c[2]) for c in unlogged[:5]],
                 len(wrong), wrong[:5]))
        if alive:
            redis_checks(check, redis.client(), lines, sl.config["endpoints"])
        else:
            check("redis_equals_access_log", False, "sluice died: its last counts were lost")

        # -- figures --
        faults = collections.Counter()
        for m in models:
            rc = harness.stop(m.proc)
            got = m.faults()
            if rc != 0 or not got:
                log("model %s exited %s; its stderr ends: %s"
                    % (m.name, rc, open(m.errpath).read()[-1500:]))
            faults.update(got)
        print("---- figures (seed %d) ----" % seed)
        print("time: %.1f s of load, %.1f s in all" % (t_end - t_load, time.time() - T0))
        print("requests sent by kind: %d %s" % (sum(stats.sent.values()),
                                                dict(sorted(stats.sent.items()))))
        print("connections: %s; HTTP/2 connection acts: %s"
              % (dict(stats.conns), dict(stats.h2_conn_acts)))
        print("complete responses by status: %d %s"
              % (sum(stats.status.values()),
                 dict(sorted(stats.status.items(), key=lambda kv: str(kv[0])))))
        print("malformed sent: %s" % dict(sorted(stats.malformed.items())))
        print("client aborts: %s" % dict(sorted(stats.aborts.items())))
        print("faults asked for by clients (X-Test-Fault): %s" % dict(sorted(stats.faults.items())))
        served = {k: faults.pop(k, 0) for k in ("requests", "connections")}
        print("model servers: %d requests on %d connections; faults injected (asked for + "
              "random): %d %s" % (served["requests"], served["connections"],
                                  sum(faults.values()), dict(sorted(faults.items()))))
        print("operator: %s" % dict(sorted(stats.events.items())))
        print("access log: %d lines; by error: %s" % (len(lines), dict(sorted(
            collections.Counter(l.get("error") or "-" for l in lines).items()))))
        print("access log by version: %s" % dict(sorted(
            collections.Counter(l.get("version") or "-" for l in lines).items())))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            shutil.copy(lp, os.path.join(args.out, "access.log"))
            with open(os.path.join(args.out, "sluice-stderr.log"), "w") as f:
                f.write(err)
            print("kept: %s (access.log, sluice-stderr.log)" % args.out)
    except Exception:
        traceback.print_exc()
        check("soak_setup_and_run", False, "the driver failed (above)")
    finally:
        bad = harness.cleanup()
        if bad:
            print("cleanup: %s" % "; ".join(bad))
    failed = sum(1 for _, ok, _ in results if not ok)
    print("%d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


def redis_checks(check, r, lines, endpoints):
    """Redis counters equal the access log's lines exactly."""
    mirror = {(e["name"], v["name"]) for e in endpoints for v in e["versions"]
              if v.get("mirror_percentile", 0) > 0}
    groups = {(e["name"], v["name"]): ("shadow" if (e["name"], v["name"]) in mirror else
                                       v.get("type", "treatment"))
              for e in endpoints for v in e["versions"]}
    want = collections.defaultdict(collections.Counter)
    rejected = collections.Counter()
    uncounted = []
    for l in lines:
        ep, v = l.get("endpoint"), l.get("version")
        if v is None:
            kind = REJECT_KIND.get(l.get("error"))
            if kind:
                rejected[kind] += 1
            elif l.get("status") not in (0, 499):
                uncounted.append(l)
            continue
        c = want[(ep, v)]
        c["requests"] += 1
        cls = l.get("status", 0) // 100
        if 2 <= cls <= 5:
            c["status_%dxx" % cls] += 1
        if l.get("pinned"):
            c["pinned"] += 1
    diffs = []
    # The per-version pinned hashes (SPEC section 4) came with issue 17
    # finding 3: compared only when this build writes them.
    pinned_hashes = any(True for _ in r.scan_iter("sluice:{*}:pinned:*"))
    if not pinned_hashes:
        print("note: no sluice:{EP}:pinned:VERSION hashes in Redis (a build before issue 17 "
              "finding 3): total.pinned is compared, the pinned hashes are not")
    fields = ["requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "pinned"]
    for (ep, v) in sorted(set(want) | set(groups)):
        tot = r.hgetall("sluice:{%s}:total:%s" % (ep, v))
        for f in fields[:-1]:
            got, exp = int(tot.get(f, 0)), want[(ep, v)][f]
            if (ep, v) in mirror:
                if got < exp:       # plus its shadow copies, which have no line
                    diffs.append("%s/%s %s: redis %d < log %d" % (ep, v, f, got, exp))
            elif got != exp:
                diffs.append("%s/%s %s: redis %d, log %d" % (ep, v, f, got, exp))
        got = int(tot.get("pinned", 0))
        pin = r.hgetall("sluice:{%s}:pinned:%s" % (ep, v))
        if got != want[(ep, v)]["pinned"] or (pinned_hashes and
                                              int(pin.get("requests", 0)) != got):
            diffs.append("%s/%s pinned: total.pinned %d, pinned.requests %s, log %d"
                         % (ep, v, got, pin.get("requests", 0), want[(ep, v)]["pinned"]))
        minute = sum(int(r.hget(k, "requests") or 0)
                     for k in r.scan_iter("sluice:{%s}:minute:%s:*" % (ep, v)))
        if minute != int(tot.get("requests", 0)):
            diffs.append("%s/%s: minute keys sum to %d requests, total %s"
                         % (ep, v, minute, tot.get("requests", 0)))
    for ep in {e["name"] for e in endpoints}:
        for g in ("control", "treatment", "shadow"):
            exp = sum(int(r.hget("sluice:{%s}:total:%s" % (ep, v), "requests") or 0)
                      for (e2, v), gg in groups.items() if e2 == ep and gg == g)
            got = int(r.hget("sluice:{%s}:group:%s" % (ep, g), "requests") or 0)
            if got != exp:
                diffs.append("%s group %s: %d requests, its versions %d" % (ep, g, got, exp))
    rej = r.hgetall("sluice:rejected")
    for k in set(rejected) | set(rej):
        if int(rej.get(k, 0)) != rejected[k]:
            diffs.append("sluice:rejected %s: redis %s, log %d" % (k, rej.get(k, 0), rejected[k]))
    check("redis_equals_access_log", not diffs, "; ".join(diffs[:12]))
    check("every_response_counted", not uncounted,
          "%d logged responses counted nowhere, e.g. %s" % (len(uncounted), uncounted[:3]))


if __name__ == "__main__":
    sys.exit(main())
