#!/usr/bin/python3
"""Memory per connection: sluice vs nginx vs HAProxy (one worker each).

Each case starts a fresh proxy (key authentication on, in front of two
sluice-model --fast servers), warms it up, and measures the RSS of its
process tree (nginx's workers included) from /proc.

idle     N keep-alive connections (default 5,000) each send one request,
         read the answer and stay open: RSS increase / N = KiB per idle
         connection.
idle-tls The same over TLS (TLS 1.3, ECDSA P-256 certificate).
valid    Non-reading pipelining clients: M connections (default 1,000) each
wrong    write up to 8 MiB of small pipelined requests
         (GET /api/v1/service/bench/score, with a Host header, and a valid
         or a wrong key) and never read an answer. Meanwhile one normal
         client on its own keep-alive connection sends one request after
         another. Printed: the proxy's peak RSS increase, how many request
         bytes the proxy accepted, and the normal client's p50/p99 latency
         and failures before and during the attack, and its longest stall.

nginx and HAProxy check the key with a header comparison (a wrong key gets
401 from the proxy itself), as sluice's key authentication does.

Runtime is bounded: each attack stops after --attack-seconds, or as soon as
the proxy's RSS passes --rss-cap-mib (the machine is shared), and every
socket operation has a timeout. SPEC §3.7 bounds what one connection may
hold in sluice (limits.max_pipelined, limits.max_client_output_bytes,
limits.send_timeout_ms); --sluice-limits passes such settings through.
"""
import argparse
import json
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

KEY = "bench-primary-key-0123456789abcdef"      # bench.sluice_config's keys variant
WRONG = "wrong-key-0123456789abcdef0123456789"
PATH = "/api/v1/service/bench/score"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def request(key):
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n"
            % (PATH, key)).encode()


def read_response(s, buf=b""):
    """Read one HTTP/1.1 response; returns (status, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed")
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    cl, chunked = 0, False
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            cl = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while b"0\r\n\r\n" not in rest:
            d = s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            rest += d
        return status, rest.split(b"0\r\n\r\n", 1)[1]
    while len(rest) < cl:
        d = s.recv(65536)
        if not d:
            raise ConnectionError("closed")
        rest += d
    return status, rest[cl:]


def start_proxy(kind, d, models, cert, key, redis_port, conns, sluice_limits):
    auth = "Bearer " + KEY
    if kind == "nginx":
        return bench.start_nginx(d, models, cert, key, conns=conns, auth=auth)
    if kind == "haproxy":
        return bench.start_haproxy(d, models, cert, key, maxconn=conns, auth=auth)
    limits = {"max_connections": conns}
    limits.update(sluice_limits)
    p = bench.start_sluice(d, "keys", models, cert, key, redis_port, limits=limits)
    p.name = "sluice"
    return p


def stop_proxy(p):
    if p.proc.poll() is None:
        p.proc.terminate()
        try:
            p.proc.wait(15)
        except Exception:
            p.proc.kill()
            p.proc.wait(5)
    if p.proc in bench.PROCS:
        bench.PROCS.remove(p.proc)


def warm_up(port, n=200):
    """A few connections and requests, so pools and caches exist before the
    baseline is read."""
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        buf = b""
        for _ in range(n // 4):
            s.sendall(request(KEY))
            st, buf = read_response(s, buf)
        s.close()
    time.sleep(0.5)


def idle_case(p, n, tls=False):
    warm_up(p.http_port)
    ctx = None
    port = p.http_port
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        port = p.https_port
        for _ in range(20):                 # the TLS path warmed up too
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
            s.sendall(request(KEY))
            read_response(s)
            s.close()
        time.sleep(0.5)
    rss0 = bench.rss_kib(p.proc.pid)
    socks, ok, failed = [], 0, 0
    t0 = time.time()
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if ctx is not None:
                s = ctx.wrap_socket(s)
            s.sendall(request(KEY))
            st, _ = read_response(s)
            ok += st == 200
            socks.append(s)
        except OSError:
            failed += 1
        if time.time() - t0 > 180:
            break
    time.sleep(1.0)
    rss1 = bench.rss_kib(p.proc.pid)
    # still open? a closed connection reads as EOF at once
    open_ = 0
    for s in socks:
        s.setblocking(False)
        try:
            open_ += s.recv(1) != b""
        except (BlockingIOError, ssl.SSLWantReadError):
            open_ += 1
        except OSError:
            pass
    for s in socks:
        s.close()
    return {"connections": len(socks), "ok": ok, "failed": failed, "still_open": open_,
            "rss_before_kib": rss0, "rss_after_kib": rss1,
            "kib_per_conn": (rss1 - rss0) / max(len(socks), 1)}


def attacker(port, nconns, payload, seconds, conn):
    """Child process: nconns connections each write payload and never read.
    Sends its counters through conn when done (or out of time), then keeps
    the connections open until it is terminated."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(nconns):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE, [s, 0])
    mv = memoryview(payload)
    sent = done = errors = 0
    deadline = time.time() + seconds
    while time.time() < deadline and sel.get_map():
        for key, _ in sel.select(timeout=0.2):
            st = key.data
            try:
                n = st[0].send(mv[st[1]:st[1] + 262144])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                errors += 1
                sel.unregister(st[0])
                continue
            st[1] += n
            sent += n
            if st[1] >= len(payload):
                done += 1
                sel.unregister(st[0])
    conn.send({"bytes_sent": sent, "conns_done": done, "conn_errors": errors,
               "elapsed": seconds - max(deadline - time.time(), 0)})
    time.sleep(3600)


class NormalClient(threading.Thread):
    """One keep-alive connection, one request after another; records
    (time, latency ms or None for a failure)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.log, self.stop = port, [], threading.Event()

    def run(self):
        s, buf = None, b""
        while not self.stop.is_set():
            t = time.time()
            try:
                if s is None:
                    s, buf = socket.create_connection(("127.0.0.1", self.port), timeout=5), b""
                s.sendall(request(KEY))
                st, buf = read_response(s, buf)
                self.log.append((t, (time.time() - t) * 1000.0 if st == 200 else None))
            except OSError:
                self.log.append((t, None))
                if s is not None:
                    s.close()
                s = None
                time.sleep(0.05)
            time.sleep(0.002)
        if s is not None:
            s.close()

    def window(self, t0, t1):
        ent = [(t, l) for t, l in self.log if t0 <= t < t1]
        lat = sorted(l for _, l in ent if l is not None)
        okt = [t + l / 1000.0 for t, l in ent if l is not None]   # answer times
        gaps = [b - a for a, b in zip([t0] + okt, okt + [t1])]
        q = (lambda f: lat[min(int(f * len(lat)), len(lat) - 1)] if lat else None)
        return {"requests": len(lat), "failures": len(ent) - len(lat),
                "p50_ms": q(0.5), "p99_ms": q(0.99),
                "longest_stall_s": max(gaps) if gaps else None}


def attack_case(p, key, nconns, mib, seconds, cap_mib):
    warm_up(p.http_port)
    rss0 = bench.rss_kib(p.proc.pid)
    req = request(key)
    payload = req * ((mib << 20) // len(req))
    nc = NormalClient(p.http_port)
    nc.start()
    time.sleep(2.0)
    t_start = time.time()
    parent, child = multiprocessing.Pipe()
    att = multiprocessing.Process(target=attacker,
                                  args=(p.http_port, nconns, payload, seconds, child))
    att.start()
    peak, capped, stats = rss0, False, None
    hard_end = t_start + seconds + 15
    while time.time() < hard_end:
        rss = bench.rss_kib(p.proc.pid)
        peak = max(peak, rss)
        if rss - rss0 > cap_mib * 1024:
            capped = True
            break
        if stats is None and parent.poll(0.25):
            stats = parent.recv()
            hard_end = time.time() + 2.0     # a last look with the data in
        elif stats is not None:
            time.sleep(0.25)
        if p.proc.poll() is not None:
            break
    t_end = time.time()
    rss_end = bench.rss_kib(p.proc.pid)
    att.terminate()
    att.join(10)
    if att.is_alive():
        att.kill()
        att.join(5)
    if stats is None and parent.poll(1):
        stats = parent.recv()
    # A proxy may still be working through what it read: look once more.
    time.sleep(1.0)
    rss_closed = bench.rss_kib(p.proc.pid)
    peak = max(peak, rss_end, rss_closed)
    nc.stop.set()
    nc.join(10)
    return {"rss_before_kib": rss0, "rss_peak_kib": peak, "rss_end_kib": rss_end,
            "rss_after_close_kib": rss_closed,
            "increase_mib": (peak - rss0) / 1024.0, "capped": capped,
            "proxy_alive": p.proc.poll() is None,
            "attack": stats or {}, "attack_seconds": t_end - t_start,
            "before": nc.window(t_start - 2.0, t_start),
            "during": nc.window(t_start, t_end)}


def fmt(v, spec):
    return "-" if v is None else spec % v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxies", default="nginx,haproxy,sluice")
    ap.add_argument("--cases", default="idle,idle-tls,valid,wrong")
    ap.add_argument("--idle-connections", type=int, default=5000)
    ap.add_argument("--attack-connections", type=int, default=1000)
    ap.add_argument("--attack-mib", type=int, default=8, help="MiB each attacker connection sends")
    ap.add_argument("--attack-seconds", type=int, default=15)
    ap.add_argument("--rss-cap-mib", type=int, default=2048,
                    help="stop an attack once the proxy grew this much")
    ap.add_argument("--sluice-limits", default="{}",
                    help='extra sluice "limits" as JSON, e.g. \'{"max_pipelined": 16}\'')
    ap.add_argument("--json", help="write the raw results here")
    a = ap.parse_args()
    nofile = raise_nofile()
    need = max(a.idle_connections, a.attack_connections) + 200
    if nofile < need:
        sys.exit("RLIMIT_NOFILE hard limit %d is below the %d descriptors needed" % (nofile, need))
    # client connections; upstream ones are few (pooled). HAProxy needs two
    # descriptors per maxconn, under the same hard limit.
    conns = max(a.idle_connections, a.attack_connections) + 1000
    sluice_limits = json.loads(a.sluice_limits)

    d = tempfile.mkdtemp(prefix="sluice-mem-")
    results = {}
    try:
        cert, key, models = bench.backends(d)
        for case in a.cases.split(","):
            for kind in a.proxies.split(","):
                p = start_proxy(kind, d, models, cert, key, bench.free_port(), conns,
                                sluice_limits)
                try:
                    if case in ("idle", "idle-tls"):
                        r = idle_case(p, a.idle_connections, tls=case == "idle-tls")
                        print("%-8s %-8s %5d connections (%d ok, %d still open): "
                              "RSS %.1f -> %.1f MiB, %.2f KiB per connection" % (
                                  case, kind, r["connections"], r["ok"], r["still_open"],
                                  r["rss_before_kib"] / 1024.0, r["rss_after_kib"] / 1024.0,
                                  r["kib_per_conn"]), flush=True)
                    else:
                        r = attack_case(p, KEY if case == "valid" else WRONG,
                                        a.attack_connections, a.attack_mib, a.attack_seconds,
                                        a.rss_cap_mib)
                        at = r["attack"]
                        print("%-6s %-8s RSS +%.1f MiB peak%s (%.1f -> %.1f, %.1f after the "
                              "attackers closed); attack %.1f s, %.1f MiB written, %d/%d "
                              "connections sent all; normal client before p50 %s p99 %s ms "
                              "(%d req), during p50 %s p99 %s ms (%d req, %d failed, longest "
                              "stall %.2f s)%s" % (
                                  case, kind, r["increase_mib"],
                                  " (CAPPED, attack stopped)" if r["capped"] else "",
                                  r["rss_before_kib"] / 1024.0, r["rss_peak_kib"] / 1024.0,
                                  r["rss_after_close_kib"] / 1024.0, r["attack_seconds"],
                                  at.get("bytes_sent", 0) / 1048576.0, at.get("conns_done", 0),
                                  a.attack_connections,
                                  fmt(r["before"]["p50_ms"], "%.2f"),
                                  fmt(r["before"]["p99_ms"], "%.2f"), r["before"]["requests"],
                                  fmt(r["during"]["p50_ms"], "%.2f"),
                                  fmt(r["during"]["p99_ms"], "%.2f"), r["during"]["requests"],
                                  r["during"]["failures"], r["during"]["longest_stall_s"] or 0,
                                  "" if r["proxy_alive"] else "  PROXY DIED"), flush=True)
                    results["%s|%s" % (case, kind)] = r
                finally:
                    stop_proxy(p)

        print("\nSummary (one worker each; RSS of the process tree)")
        kinds = a.proxies.split(",")
        for case, label in (("idle", "idle keep-alive"), ("idle-tls", "idle TLS keep-alive")):
            if case in a.cases.split(","):
                print("  %s, KiB per connection: " % label + ", ".join(
                    "%s %.2f" % (k, results["%s|%s" % (case, k)]["kib_per_conn"])
                    for k in kinds))
        for case in ("valid", "wrong"):
            if case not in a.cases.split(","):
                continue
            print("  %d non-reading pipelining clients, %s key:" % (a.attack_connections, case))
            print("    %-8s %14s %12s %12s %14s %14s %9s %9s" % (
                "proxy", "RSS +MiB", "MiB sent", "p50 before", "p50 during", "p99 during",
                "failed", "stall s"))
            for k in kinds:
                r = results["%s|%s" % (case, k)]
                print("    %-8s %14s %12.1f %12s %14s %14s %9d %9.2f" % (
                    k, ("%.1f%s" % (r["increase_mib"], " CAP" if r["capped"] else "")),
                    r["attack"].get("bytes_sent", 0) / 1048576.0,
                    fmt(r["before"]["p50_ms"], "%.2f"), fmt(r["during"]["p50_ms"], "%.2f"),
                    fmt(r["during"]["p99_ms"], "%.2f"), r["during"]["failures"],
                    r["during"]["longest_stall_s"] or 0))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
    except RuntimeError:
        bench.show_logs(d)
        raise
    finally:
        bench.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    main()
