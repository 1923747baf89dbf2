#!/usr/bin/python3
"""The rollout part of the demo (DEMO_ROLLOUT=1 ./tools/demo.sh): keeps
scoring traffic flowing through sluice, starts the rollout of one version
through the admin API, prints every step and gate evaluation as it happens,
and returns when the rollout has ended (promoted, rolled back or aborted)."""
import argparse
import json
import sys
import threading
import time

import requests

END = ("promoted", "rolled_back", "aborted")


def traffic(url, key, cacert, stop, seen):
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    i = 0
    with requests.Session() as s:
        while not stop.is_set():
            i += 1
            try:
                r = s.post(url, data=json.dumps({"features": [i % 7, i % 11, i % 13]}),
                           headers=headers, verify=cacert, timeout=10)
            except requests.RequestException:
                continue
            v = r.headers.get("X-Sluice-Version", "(none)")
            seen[v] = seen.get(v, 0) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the scoring URL")
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120)
    a = ap.parse_args()
    auth = {"Authorization": "Bearer " + a.token}
    base = f"{a.admin}/admin/v1/endpoints/{a.endpoint}/versions/{a.version}/rollout"

    stop, seen = threading.Event(), {}
    threads = [threading.Thread(target=traffic, args=(a.url, a.key, a.cacert, stop, seen),
                                daemon=True) for _ in range(a.clients)]
    for t in threads:
        t.start()
    time.sleep(1)
    r = requests.post(base, json={"action": "start"}, headers=auth, timeout=10)
    if r.status_code != 200:
        print(f"start refused: {r.status_code} {r.text}")
        stop.set()
        return 1
    t0 = time.time()
    shown_evals, last = 0, None
    ro = r.json()
    try:
        while time.time() - t0 < a.max_seconds:
            ro = requests.get(base, headers=auth, timeout=10).json()
            st = ro.get("state") or {}
            evs = ro.get("evaluations") or []
            for e in evs[shown_evals:] if len(evs) > shown_evals else []:
                v, c = e.get("version") or {}, e.get("control") or {}
                d = e.get("error_rate_diff") or {}
                lo = d.get("lower")
                print("  gate  step %d at %s %%: %-4s  requests %d vs %d, errors %.1f %% vs %.1f %%"
                      ", diff lower bound %s, p99 ratio %s%s" % (
                          e["step"] + 1, e["percentile"], e["verdict"], v.get("requests", 0),
                          c.get("requests", 0), 100 * (v.get("error_rate") or 0),
                          100 * (c.get("error_rate") or 0),
                          "%.2f pt" % (100 * lo) if lo is not None else "-",
                          "%.2f" % e["p99_ratio"] if e.get("p99_ratio") is not None else "-",
                          (" (" + e["reason"] + ")") if e.get("reason") else ""))
            shown_evals = len(evs)
            now = (st.get("phase"), st.get("step"), st.get("traffic_percentile"))
            if now != last:
                print("  %5.1f s  phase %-11s step %s of %d, %s %% of traffic%s" % (
                    time.time() - t0, now[0], (now[1] or 0) + 1, len(ro["plan"]["steps"]),
                    now[2], (" — " + st["reason"]) if st.get("reason") else ""))
                last = now
            if st.get("phase") in END:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    print("  requests served per version while it ran: " +
          ", ".join(f"{v} {n}" for v, n in sorted(seen.items())))
    phase = (ro.get("state") or {}).get("phase")
    print(f"  outcome: {phase}")
    return 0 if phase in END else 1


if __name__ == "__main__":
    sys.exit(main())
