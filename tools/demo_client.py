#!/usr/bin/python3
"""Send scoring requests through sluice and print the observed split and
client-side latency per version."""
import argparse
import json
import statistics
import time

import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--cacert")
    ap.add_argument("--key", help="endpoint key sent as Bearer")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--expect", default="", help="version=percent,... configured split")
    a = ap.parse_args()
    expect = dict((kv.split("=")[0], float(kv.split("=")[1]))
                  for kv in a.expect.split(",") if kv)
    headers = {"Content-Type": "application/json"}
    if a.key:
        headers["Authorization"] = "Bearer " + a.key
    per = {}
    with requests.Session() as s:
        for i in range(a.requests):
            body = json.dumps({"features": [i % 7, i % 11, i % 13]})
            t0 = time.perf_counter()
            r = s.post(a.url, data=body, headers=headers, verify=a.cacert or True)
            ms = (time.perf_counter() - t0) * 1000
            v = r.headers.get("X-Sluice-Version", "(none)")
            d = per.setdefault(v, {"group": r.headers.get("X-Sluice-Group"), "n": 0,
                                   "errors": 0, "lat": []})
            d["n"] += 1
            d["lat"].append(ms)
            if r.status_code >= 500:
                d["errors"] += 1
    total = sum(d["n"] for d in per.values())
    print("%-10s %-10s %9s %9s %9s %8s %8s %8s" % ("version", "group", "requests", "observed",
                                                  "configured", "5xx", "p50 ms", "p99 ms"))
    for v in sorted(per):
        d = per[v]
        lat = sorted(d["lat"])
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print("%-10s %-10s %9d %8.1f%% %8s%% %8d %8.2f %8.2f" % (
            v, d["group"], d["n"], 100.0 * d["n"] / total,
            ("%.1f" % expect[v]) if v in expect else "-", d["errors"],
            statistics.median(lat), p99))


if __name__ == "__main__":
    main()
