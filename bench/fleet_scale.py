#!/usr/bin/python3
"""What one Redis primary pays per sluice instance (README "Scale on paper").

Starts one redis-server and N fleet members (one worker each, the default
flush_interval_ms of 1000, one endpoint with two versions), sends a steady
trickle of requests to every instance so that each flush carries counts for
both versions, and reads Redis's own accounting (INFO commandstats, INFO
stats) over a measured window:

  commands/s per instance   calls the instances send (EVALSHA, HSET, GET)
  bytes in per flush        network bytes into Redis per metrics flush
  usec per flush            Redis CPU time of one flush script (its HINCRBYs
                            and EXPIREs included)
  Redis CPU                 used_cpu_user + used_cpu_sys over the window

  /usr/bin/python3 bench/fleet_scale.py --instances 1 20 --seconds 10

Uses the integration harness (tests/integration/harness.py) for ports and
processes; SLUICE_BUILD points at the build folder as for the tests.
"""
import argparse
import os
import sys
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402
from harness import Model, Redis, Sluice, endpoint, version  # noqa: E402


def cmdstats(c):
    out = {}
    for k, v in c.info("commandstats").items():
        out[k.replace("cmdstat_", "")] = (int(v["calls"]), int(v["usec"]))
    return out


def snapshot(c):
    st = c.info("stats")
    cpu = c.info("cpu")
    return {"cmd": cmdstats(c), "in": int(st["total_net_input_bytes"]),
            "out": int(st["total_net_output_bytes"]),
            "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


def run(n, seconds, rps):
    r = Redis()
    a, b = Model("versiona"), Model("versionb")
    eps = [endpoint("scaleep", [version("versiona", [a.addr], 50, is_default=True,
                                        type="control"),
                                version("versionb", [b.addr], 50)])]
    extra = {"fleet": {"name": "bench"}, "redis": {"address": "127.0.0.1:%d" % r.port}}
    fleet = [Sluice(eps, extra=extra) for _ in range(n)]
    stop = threading.Event()

    def load():
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                s.post(fleet[i % n].url("scaleep"), data=b'{"x":1}', timeout=5)
                i += 1
                time.sleep(1.0 / rps)
    t = threading.Thread(target=load)
    t.start()
    time.sleep(2.5)             # every instance connected and flushing
    c = r.client()
    s0 = snapshot(c)
    time.sleep(seconds)
    s1 = snapshot(c)
    stop.set()
    t.join()
    harness.cleanup()

    def delta(cmd):
        c0 = s0["cmd"].get(cmd, (0, 0))
        c1 = s1["cmd"].get(cmd, (0, 0))
        return c1[0] - c0[0], c1[1] - c0[1]
    sent = {k: delta(k) for k in ("evalsha", "eval", "hset", "get", "hincrby", "expire")}
    flushes = sent["evalsha"][0] + sent["eval"][0]
    # commandstats counts the script's own calls too: its one HSET of
    # sluice:flushseq per flush is not a command an instance sends.
    heartbeats = sent["hset"][0] - flushes
    client_cmds = flushes + heartbeats + sent["get"][0]
    return {
        "instances": n,
        "commands_per_instance_s": client_cmds / n / seconds,
        "flushes": flushes,
        "hincrby_per_flush": sent["hincrby"][0] / max(flushes, 1),
        "bytes_in_per_flush": (s1["in"] - s0["in"]) / max(flushes, 1),
        "bytes_in_per_instance_s": (s1["in"] - s0["in"]) / n / seconds,
        "bytes_out_per_instance_s": (s1["out"] - s0["out"]) / n / seconds,
        "usec_per_flush": (sent["evalsha"][1] + sent["eval"][1]) / max(flushes, 1),
        "redis_cpu_pct": 100 * (s1["cpu"] - s0["cpu"]) / seconds,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rps", type=float, default=200, help="requests/s over the whole fleet")
    args = ap.parse_args()
    cols = ["instances", "commands_per_instance_s", "flushes", "hincrby_per_flush",
            "bytes_in_per_flush", "bytes_in_per_instance_s", "bytes_out_per_instance_s",
            "usec_per_flush", "redis_cpu_pct"]
    print(" ".join("%s" % c for c in cols))
    for n in args.instances:
        res = run(n, args.seconds, args.rps)
        print(" ".join(("%d" if isinstance(res[c], int) else "%.1f") % res[c] for c in cols),
              flush=True)


if __name__ == "__main__":
    main()
