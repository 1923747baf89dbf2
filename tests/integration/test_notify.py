"""Rollout notifications to a webhook (SPEC §8, issue 20): a real HTTP
receiver (Python's http.server on a harness port) gets one JSON object per
event of a rollout, in order, with its fields; a receiver that fails or is
down at first gets the event later (retries with backoff); an https://
receiver is verified. Short steps (1 s), as in test_rollout."""
import http.server
import json
import os
import ssl
import threading

import requests

import harness
from harness import Model, Redis, Sluice, endpoint, free_port, tmpdir, until, version
from test_rollout import ADMIN, EP, STEADY, Traffic, act, get, log_events, plan, versions


class Receiver:
    """A webhook receiver: records (path, headers, body) of each POST and
    answers the statuses of `script` in turn, then 200. started=False
    reserves the port and listens only after .listen()."""

    def __init__(self, script=(), port=None, started=True, tls_cert=None):
        self.port = port or free_port()
        self.got = []           # every request, failed ones included
        self.script = list(script)
        self.lock = threading.Lock()
        self.tls_cert = tls_cert
        self.server = None
        harness._closers.append(self.close)
        if started:
            self.listen()

    def listen(self):
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rec.lock:
                    status = rec.script.pop(0) if rec.script else 200
                    rec.got.append((self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls_cert)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/hook"):
        scheme = "https" if self.tls_cert else "http"
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def events(self):
        """The bodies of the requests answered 2xx, in arrival order."""
        with self.lock:
            return [json.loads(b) for _, _, b, st in self.got if 200 <= st < 300]

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def notify_sluice(redis, a, b, ro, env=None):
    vb = version("versionb", [b.addr], 0, rollout=ro)
    extra = {"redis": {"address": "127.0.0.1:%d" % redis.port, "flush_interval_ms": 100},
             "admin": {"token": "adm-secret-token"}}
    return Sluice([endpoint(EP, [
        version("versiona", [a.addr], 0, is_default=True, type="control"), vb])],
        extra=extra, env=env)


def with_notify(ro, url, headers=None):
    ro = dict(ro)
    ro["notify"] = {"url": url}
    if headers is not None:
        ro["notify"]["headers"] = headers
    return ro


def test_every_event_of_a_promoted_rollout_arrives_once_in_order():
    rcv = Receiver()
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    ro = with_notify(plan(steps=(25, 50), step_s=1, min_requests=20),
                     rcv.url("/hook?team=ml"), {"Authorization": "Bearer hook-secret",
                                                "X-Team": "ml"})
    s = notify_sluice(r, a, b, ro)
    t = Traffic(s)
    try:
        # the plan shows the URL and the header names, never the values
        shown = get(s)["plan"]["notify"]
        assert shown == {"url": rcv.url("/hook?team=ml"),
                         "header_names": ["Authorization", "X-Team"]}, shown
        assert act(s, "start").status_code == 200
        until(lambda: get(s)["state"]["phase"] == "promoted", 60, "the promotion",
              show=lambda: get(s))
        until(lambda: len(rcv.events()) >= 3, 15, "three events", show=rcv.events)
    finally:
        t.stop()
    evs = rcv.events()
    assert [e["event"] for e in evs] == ["started", "step", "promoted"], evs
    assert [(e["step"], e["share"]) for e in evs] == [(1, 25), (2, 50), (2, 50)], evs
    for e in evs:
        assert e["endpoint"] == EP and e["version"] == "versionb", e
        assert e["steps"] == 2 and isinstance(e["timestamp"], int), e
        assert e["time"].endswith("Z") and e["text"].startswith("sluice: ep1/versionb"), e
    assert evs[0]["by"] == "operator" and evs[0]["gate"] is None and evs[0]["phase"] == "running"
    assert evs[1]["by"] == "rollout" and evs[1]["gate"]["verdict"] == "pass", evs[1]
    assert evs[1]["gate"]["step"] == 0 and evs[1]["gate"]["version"]["requests"] >= 20
    assert evs[2]["phase"] == "promoted" and evs[2]["is_default"] is True
    assert evs[2]["reason"] == "all steps passed" and evs[2]["gate"]["step"] == 1, evs[2]
    # one POST per event, to the path and query given, with the headers given
    assert len(rcv.got) == 3, rcv.got
    for path, headers, _, _ in rcv.got:
        assert path == "/hook?team=ml"
        assert headers["Authorization"] == "Bearer hook-secret" and headers["X-Team"] == "ml"
        assert headers["Content-Type"] == "application/json"
        assert headers["Host"] == "127.0.0.1:%d" % rcv.port
    assert log_events(s, "rollout_notify_failed") == []
    # the rollout on /metrics: phase, step, and the gate's verdicts as made
    text = requests.get(s.admin("/metrics"), timeout=5).text
    lab = 'endpoint="ep1",version="versionb"'
    assert 'sluice_rollout_phase{%s,phase="promoted"} 1\n' % lab in text
    assert 'sluice_rollout_phase{%s,phase="running"} 0\n' % lab in text
    assert "sluice_rollout_step{%s} 2\n" % lab in text
    assert "sluice_rollout_steps{%s} 2\n" % lab in text
    verdicts = [e["verdict"] for e in get(s)["evaluations"]]
    assert verdicts.count("pass") == 2, verdicts
    for v in ("pass", "hold", "fail"):
        assert 'sluice_rollout_gate_verdicts_total{%s,verdict="%s"} %d\n' % (
            lab, v, verdicts.count(v)) in text, (v, verdicts, text)


def test_a_rollback_posts_rolled_back_with_the_reason():
    rcv = Receiver()
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", "--error-rate", "0.3", *STEADY)
    s = notify_sluice(r, a, b, with_notify(plan(step_s=1, min_requests=60), rcv.url()))
    t = Traffic(s)
    try:
        assert act(s, "start").status_code == 200
        until(lambda: get(s)["state"]["phase"] == "rolled_back", 60, "the rollback",
              show=lambda: get(s))
        until(lambda: len(rcv.events()) >= 2, 15, "two events", show=rcv.events)
    finally:
        t.stop()
    evs = rcv.events()
    assert [e["event"] for e in evs] == ["started", "rolled_back"], evs
    rb = evs[1]
    assert rb["share"] == 0 and rb["step"] == 1 and rb["by"] == "rollout", rb
    assert rb["reason"] == get(s)["state"]["reason"] and "error rate" in rb["reason"], rb
    assert rb["gate"]["verdict"] == "fail" and rb["gate"]["error_rate_diff"]["lower"] > 0.01
    assert "rolled back" in rb["text"]


def test_operator_actions_and_a_receiver_that_fails_twice():
    # 500, 500, then 200: the first event arrives on the third attempt, and
    # the events behind it wait their turn.
    rcv = Receiver(script=(500, 500))
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    s = notify_sluice(r, a, b, with_notify(plan(step_s=300), rcv.url()))
    assert act(s, "start").status_code == 200
    assert act(s, "pause").status_code == 200
    assert act(s, "resume").status_code == 200
    assert act(s, "abort").status_code == 200
    until(lambda: len(rcv.events()) >= 4, 30, "four events", show=lambda: rcv.got)
    evs = rcv.events()
    assert [e["event"] for e in evs] == ["started", "paused", "resumed", "aborted"], evs
    assert [e["by"] for e in evs] == ["operator"] * 4
    assert evs[1]["reason"] == "paused by operator" and evs[3]["share"] == 0
    assert [st for _, _, _, st in rcv.got] == [500, 500, 200, 200, 200, 200]
    fails = log_events(s, "rollout_notify_failed")
    assert [(f["attempt"], f["status"], f["retry_in_s"]) for f in fails] == \
        [(1, 500, 1), (2, 500, 2)], fails
    assert fails[0]["rollout_event"] == "started" and fails[0]["url"] == rcv.url()
    assert len(log_events(s, "rollout_notify_sent")) == 1


def test_a_receiver_that_is_down_at_first_gets_the_event():
    rcv = Receiver(started=False)
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    s = notify_sluice(r, a, b, with_notify(plan(step_s=300), rcv.url()))
    assert act(s, "start").status_code == 200
    until(lambda: len(log_events(s, "rollout_notify_failed")) >= 2, 15,
          "two failed attempts", show=s.log)
    assert rcv.got == []
    rcv.listen()
    until(lambda: rcv.events(), 30, "the event once the receiver is up")
    evs = rcv.events()
    assert [e["event"] for e in evs] == ["started"] and evs[0]["share"] == 25, evs
    fails = log_events(s, "rollout_notify_failed")
    assert all(f["status"] == 0 and "no response" in f["reason"] for f in fails), fails


def test_https_receiver_is_verified():
    d = tmpdir()
    cert = harness.make_cert(d)
    good = Receiver(tls_cert=cert)
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    # the receiver's certificate is trusted through SSL_CERT_FILE (OpenSSL's
    # default verify paths)
    s = notify_sluice(r, a, b, with_notify(plan(step_s=300), good.url()),
                      env={"SSL_CERT_FILE": cert[0]})
    assert act(s, "start").status_code == 200
    until(lambda: good.events(), 15, "the event over https")
    assert good.events()[0]["event"] == "started"
    s.stop()
    # the same receiver, not trusted: nothing delivered, the reason logged
    s2 = notify_sluice(r, a, b, with_notify(plan(step_s=300), good.url()),
                       env={"SSL_CERT_FILE": os.devnull})
    n = len(good.got)
    assert act(s2, "start").status_code == 200
    f = until(lambda: log_events(s2, "rollout_notify_failed"), 15, "a refused certificate",
              show=s2.log)
    assert "certificate" in f[0]["reason"], f
    assert len(good.got) == n


def test_notify_is_validated_with_its_path():
    r = Redis()
    a, b = Model("versiona", *STEADY), Model("versionb", *STEADY)
    s = notify_sluice(r, a, b, plan(step_s=300))
    path = "/admin/v1/endpoints/%s/versions/versionb" % EP
    cases = [
        ({"url": "ftp://x/y"}, "rollout.notify.url: must start with http:// or https://"),
        ({"url": "http://user:pw@127.0.0.1/"}, "rollout.notify.url: no user:password@"),
        ({"url": "http://127.0.0.1:99999/"}, "rollout.notify.url: the port must be"),
        ({}, "rollout.notify.url: required"),
        ({"url": "http://127.0.0.1/", "headers": {"Host": "x"}},
         "rollout.notify.headers.Host: set by Sluice"),
        ({"url": "http://127.0.0.1/", "headers": {"X-A": "a\nb"}},
         "rollout.notify.headers.X-A: must be a string"),
        ({"url": "http://127.0.0.1/", "extra": 1}, "rollout.notify.extra: unknown field"),
    ]
    for notify, want in cases:
        ro = dict(plan(step_s=300), notify=notify)
        resp = requests.patch(s.admin(path), headers=ADMIN, json={"rollout": ro}, timeout=5)
        assert resp.status_code == 400, (notify, resp.text)
        assert want in resp.text and "endpoints[0].versions[1]." in resp.text, \
            (notify, resp.text)
    ro = dict(plan(step_s=300), notify={"url": "http://127.0.0.1:1/x"})
    resp = requests.patch(s.admin(path), headers=ADMIN, json={"rollout": ro}, timeout=5)
    assert resp.status_code == 200, resp.text
    assert versions(s)["versionb"]["rollout"]["notify"]["url"] == "http://127.0.0.1:1/x"
