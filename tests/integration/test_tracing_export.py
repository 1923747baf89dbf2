"""The span exporter against a real local OTLP receiver, without the
gateway: tests/tracing/export_driver.c submits spans from worker threads
and runs the exporter until every span is exported or dropped; the
receiver (otlp_receiver.py) checks each batch against the OTLP JSON mapping.

Runs under tests/integration/run.py, or alone (meson test tracing_export):
    SLUICE_BUILD=build /usr/bin/python3 tests/integration/test_tracing_export.py
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from otlp_receiver import OtlpReceiver  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("SLUICE_BUILD", os.path.join(ROOT, "build"))
DRIVER = os.path.join(BUILD, "tests", "tracing_export_driver")


def drive(endpoint, spans, workers=1, queue=1024, batch=100, timeout_ms=10000, when="before",
          switch_to=None):
    """Run the driver to the end (it stops itself once every span is
    accounted for); its counts. With switch_to, the exporter moves to that
    endpoint after its first batch and `spans` more are submitted."""
    p = subprocess.Popen([DRIVER, endpoint, str(spans), str(workers), str(queue), str(batch),
                          str(timeout_ms), when] + ([switch_to] if switch_to else []),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError("export_driver did not finish")
    assert p.returncode == 0, "export_driver exited %d: %s" % (p.returncode, err)
    st = json.loads(out.strip().splitlines()[-1])
    assert st["submitted"] == spans * (2 if switch_to else 1), st
    assert st["exported"] + st["dropped"] == st["submitted"], st
    assert st["pending"] == 0, st
    return st


def until(fn, what, limit=20):
    """Wait for fn() (the receiver records a hung batch on its own thread);
    the limit only bounds a failing run."""
    t = time.monotonic()
    while not fn():
        if time.monotonic() - t > limit:
            raise AssertionError("never: " + what)
        time.sleep(0.02)


def with_receiver(fn, **kw):
    r = OtlpReceiver(**kw)
    try:
        return fn(r)
    finally:
        r.close()


def test_every_span_arrives_valid():
    def run(r):
        st = drive(r.url, 1000, workers=2, queue=1024, batch=100, when="during")
        assert st["exported"] == 1000 and st["dropped"] == 0, st
        assert st["batches_failed"] == 0, st
        assert r.errors == [], r.errors[:5]
        assert len(r.spans) == 1000, len(r.spans)
        assert all(n <= 100 for _, n, _ in r.batches), [n for _, n, _ in r.batches]
        assert len(r.batches) == st["batches_sent"], (len(r.batches), st)
        ids = {s["spanId"] for s in r.spans}
        assert len(ids) == 1000, "span ids not unique"
        for s in r.spans:
            assert s["resource"] == {"service.name": "sluice-test"}, s["resource"]
            assert s["scope"] == "sluice"
        servers = [s for s in r.spans if s["kind"] == 2]
        clients = [s for s in r.spans if s["kind"] == 3]
        assert len(servers) == 500 and len(clients) == 500
        s = servers[0]
        attrs = {a["key"]: a["value"] for a in s["attributes"]}
        assert attrs["status"] == {"intValue": "200"}, attrs
        assert attrs["endpoint"] == {"stringValue": "fraud"}
        assert attrs["pinned"] == {"boolValue": False} and attrs["shadow"] == {"boolValue": False}
        assert "parentSpanId" not in s, "a new trace's server span is a root"
        assert s["status"] == {"code": 0}
        assert int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"]) >= 1000
        c = clients[0]
        attrs = {a["key"]: a["value"] for a in c["attributes"]}
        assert attrs["shadow"] == {"boolValue": True} and attrs["status"] == {"intValue": "503"}
        assert c["status"] == {"code": 2}
        assert len(c["parentSpanId"]) == 16
        # Both workers' spans came (their versions are v0 and v1).
        versions = {a["value"]["stringValue"] for s in r.spans for a in s["attributes"]
                    if a["key"] == "version"}
        assert versions == {"v0", "v1"}, versions
    with_receiver(run)


def test_full_ring_drops_exactly():
    def run(r):
        # Every span is submitted before the exporter runs: 256 fit.
        st = drive(r.url, 300, workers=1, queue=256, batch=64)
        assert st["refused"] == 44 and st["dropped"] == 44, st
        assert st["exported"] == 256, st
        assert len(r.spans) == 256 and r.errors == [], (len(r.spans), r.errors[:5])
        assert [n for _, n, _ in r.batches] == [64, 64, 64, 64], [n for _, n, _ in r.batches]
    with_receiver(run)


def test_collector_down_drops_and_counts():
    def run(r):
        st = drive(r.url, 500, workers=2, queue=512, batch=100, when="during")
        assert st["exported"] == 0 and st["dropped"] == 500, st
        assert st["batches_failed"] == st["batches_sent"] >= 5, st
    with_receiver(run, mode="down")


def test_collector_503_drops_and_counts():
    def run(r):
        st = drive(r.url, 250, workers=1, queue=256, batch=100)
        assert st["exported"] == 0 and st["dropped"] == 250, st
        assert st["batches_sent"] == 3 and st["batches_failed"] == 3, st
        # The batches did arrive, well-formed: only the answer failed them.
        assert [n for _, n, _ in r.batches] == [100, 100, 50] and r.errors == [], r.batches
    with_receiver(run, mode="503")


def test_collector_that_never_answers():
    def run(r):
        # Each batch waits out its 300 ms deadline: dropped, and the next goes.
        st = drive(r.url, 50, workers=1, queue=64, batch=20, timeout_ms=1000)
        assert st["exported"] == 0 and st["dropped"] == 50, st
        assert st["batches_sent"] == 3 and st["batches_failed"] == 3, st
        until(lambda: len(r.batches) == 3, "3 batches at the receiver: %s" % r.batches)
        assert [n for _, n, _ in r.batches] == [20, 20, 10] and r.errors == [], r.batches
    with_receiver(run, mode="hang")


def test_submitting_never_waits_for_a_hung_collector():
    def run(r):
        # Far more spans than the rings hold while the batch in flight hangs:
        # the workers finish anyway and the overflow is counted. Every span
        # is either refused by a full ring or was in a batch that reached the
        # receiver (and timed out).
        st = drive(r.url, 20000, workers=2, queue=64, batch=64, timeout_ms=2000, when="during")
        assert st["exported"] == 0 and st["dropped"] == 20000, st
        assert st["refused"] > 10000, st
        until(lambda: st["refused"] + sum(n for _, n, _ in r.batches) == 20000,
              "every span refused or sent: %s, %s" % (st, r.batches))
    with_receiver(run, mode="hang")


def test_partial_success_counts_rejected_spans():
    def run(r):
        st = drive(r.url, 100, workers=1, queue=128, batch=25)
        assert st["batches_sent"] == 4 and st["batches_failed"] == 0, st
        assert st["exported"] == 88 and st["dropped"] == 12, st
    with_receiver(run, reject=3)


def test_reconfigure_moves_to_the_new_endpoint():
    def run(a):
        b = OtlpReceiver()
        try:
            st = drive(a.url, 40, queue=64, batch=50, switch_to=b.url)
        finally:
            b.close()
        assert st["exported"] == 80 and st["dropped"] == 0, st
        assert len(a.spans) == 40 and len(b.spans) == 40, (len(a.spans), len(b.spans))
        assert a.errors == [] and b.errors == []
        assert {s["attributes"][1]["value"]["stringValue"] for s in a.spans} == {"v0"}
        assert {s["attributes"][1]["value"]["stringValue"] for s in b.spans} == {"v1"}
    with_receiver(run)


def test_reconfigure_while_a_batch_hangs():
    def run(a):
        # The first batch hangs at the old endpoint and is dropped at its
        # deadline; the next goes to the new one.
        b = OtlpReceiver()
        try:
            st = drive(a.url, 30, queue=64, batch=50, timeout_ms=1000, switch_to=b.url)
        finally:
            b.close()
        assert st["exported"] == 30 and st["dropped"] == 30, st
        assert st["batches_failed"] == 1, st
        assert len(b.spans) == 30 and b.errors == [], b.errors[:3]
        until(lambda: len(a.batches) == 1, "the hung batch at the old endpoint")
        assert a.batches[0][1] == 30
    with_receiver(run, mode="hang")


def test_no_endpoint_drops_everything():
    st = drive("-", 100, workers=1, queue=128, batch=25)
    assert st["exported"] == 0 and st["dropped"] == 100 and st["batches_sent"] == 0, st


if __name__ == "__main__":
    failed = 0
    for name in sorted(n for n in dir() if n.startswith("test_")):
        try:
            globals()[name]()
            print("ok   %s" % name, flush=True)
        except Exception:
            import traceback
            failed += 1
            print("FAIL %s" % name, flush=True)
            traceback.print_exc()
    sys.exit(1 if failed else 0)
