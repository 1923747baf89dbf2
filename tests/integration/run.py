#!/usr/bin/python3
"""Run the integration tests: every test_* function of every test_*.py here
(or of the modules named on the command line). Prints one line per test and
a last line "N passed, M failed". Exit 1 if anything failed."""
import importlib
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


# Rough seconds per module and pass (a run on the 2-core machine), to share
# the modules among concurrent runners (SLUICE_SHARD=k/n, k from 1); a
# module not listed counts as 30 s. Only the balance depends on them.
WEIGHTS = {"test_rollout": 155, "test_fleet": 66, "test_core": 62, "test_edge": 62,
           "test_shadow_compare": 58, "test_metrics": 45, "test_fleet_faults": 42,
           "test_routing": 39, "test_admin": 38, "test_deploy": 39,
           "test_rollout_adversary": 28, "test_sentinel": 28, "test_sluicectl": 22,
           "test_dashboard": 19, "test_lifecycle": 14, "test_admin_input": 9,
           "test_bookkeeping": 8, "test_auth": 7, "test_admin_gate": 5, "test_h2": 12,
           "test_notify": 26, "test_state_dir": 8, "test_operator_metrics": 5,
           "test_model_h2": 12, "test_grpc": 12, "test_h2_shadow": 6, "test_h2_retry": 6,
           "test_tracing_export": 12, "test_tracing": 20}


def shard_names(names, k, n):
    """The modules of shard k of n: the heaviest first, each to the lightest
    shard so far (longest-processing-time first), in name order within."""
    load = [0] * n
    mine = []
    for name in sorted(names, key=lambda m: (-WEIGHTS.get(m, 30), m)):
        i = load.index(min(load))
        load[i] += WEIGHTS.get(name, 30)
        if i == k - 1:
            mine.append(name)
    return sorted(mine)


def main():
    names = sys.argv[1:]
    filt = os.environ.get("SLUICE_TEST_FILTER", "")
    if not names:
        names = sorted(f[:-3] for f in os.listdir(HERE)
                       if f.startswith("test_") and f.endswith(".py"))
    shard = os.environ.get("SLUICE_SHARD", "")
    if shard:
        names = shard_names(names, *(int(x) for x in shard.split("/")))
    passed = failed = 0
    sanitized = os.environ.get("SLUICE_SANITIZED") == "1"
    for modname in names:
        mod = importlib.import_module(modname.replace(".py", ""))
        # A module whose C paths the other modules already run under the
        # sanitizers says so (and why) with SANITIZED_PASS = "reason".
        if sanitized and isinstance(getattr(mod, "SANITIZED_PASS", None), str):
            print("skip %s on the sanitized build: %s" % (modname, mod.SANITIZED_PASS),
                  flush=True)
            continue
        for name in sorted(n for n in dir(mod) if n.startswith("test_")):
            if filt and filt not in name:
                continue
            fn = getattr(mod, name)
            t0 = time.time()
            err = None
            try:
                fn()
            except Exception:
                err = traceback.format_exc()
            bad = harness.cleanup()
            if err is None and bad:
                err = "after the test: " + "; ".join(bad) + "\n"
            if err is None:
                passed += 1
                print("ok   %s.%s (%.1fs)" % (modname, name, time.time() - t0), flush=True)
            else:
                failed += 1
                print("FAIL %s.%s (%.1fs)" % (modname, name, time.time() - t0), flush=True)
                print(err, end="", flush=True)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
