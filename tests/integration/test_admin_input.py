"""Hostile admin input (SPEC §3.7 "Admin input"): invalid UTF-8, long
non-ASCII names, secret references through the admin API, CR/LF in paths,
and log lines that stay JSON whatever the config holds. Each case checks
the process is alive afterwards and a normal admin request still works."""
import json
import os
import subprocess
import time

import requests

from harness import SLUICE, Model, Sluice, endpoint, parse_responses, raw, version

TOKEN = "admin-token-for-input-tests"
H = {"Authorization": "Bearer " + TOKEN}
EP = "mynewendpoint"
KEYS = {"primary": "primary-key-literal-0001", "secondary": "secondary-key-literal-0002"}


def keyed_sluice(model, keys=None, env=None, **kw):
    ep = endpoint(EP, [version("versiona", [model.addr], 20, is_default=True, type="control")],
                  auth={"keys": True}, keys=keys or dict(KEYS), **kw)
    return Sluice([ep], extra={"admin": {"token": TOKEN}}, env=env)


def api(s, path):
    return s.admin("/admin/v1/endpoints" + path)


def assert_error(r, status, *needles):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"] == "application/json", r.headers
    err = r.json()["error"]
    assert err["code"] == "invalid" if status == 400 else err["code"], err
    for n in needles:
        assert n in err["message"], (n, err["message"])
    return err


def assert_still_serving(s):
    assert s.proc.poll() is None, "sluice died: " + s.log()
    r = requests.get(api(s, ""), headers=H, timeout=5)
    assert r.status_code == 200, r.text
    assert [e["name"] for e in r.json()["endpoints"]] == [EP]
    r = requests.get(api(s, "/%s/keys" % EP), headers=H, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def test_long_non_ascii_version_name():
    m = Model("a")
    s = keyed_sluice(m)
    # Over 512 bytes, with every alignment of 2- and 3-byte characters to
    # a fixed-size buffer's end.
    for name in ("v" + "\u00e9" * 300, "\u00e9" * 300, "\u20ac" * 200, "vv" + "\u20ac" * 200):
        r = requests.post(api(s, "/%s/versions" % EP), headers=H, timeout=5,
                          json={"name": name, "upstreams": [m.addr]})
        err = assert_error(r, 400, "endpoints[0].versions[1].name", "must be 3-32")
        assert any("endpoints[0].versions[1].name" in e for e in err["errors"]), err
        assert_still_serving(s)


def test_patch_long_non_ascii_field_name():
    m = Model("a")
    s = keyed_sluice(m)
    r = requests.patch(api(s, "/%s/versions/versiona" % EP), headers=H, timeout=5,
                       data=json.dumps({"\u00fc" * 400: 1}, ensure_ascii=False).encode())
    err = assert_error(r, 400, "cannot be changed by update_version")
    assert err["message"].startswith("\u00fc" * 20), err
    assert_still_serving(s)


def test_raw_invalid_utf8_in_admin_url():
    m = Model("a")
    s = keyed_sluice(m)
    for target in (b"/admin/v1/endpoints/\xff", b"/admin/v1/endpoints/%s/versions/v\xc3" % EP.encode(),
                   b"/admin/v1/endpoints?x=\xfe"):
        out = raw(s.admin_port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n")
        resp = parse_responses(out)
        assert len(resp) == 1, out
        status, headers, body = resp[0]
        assert status == 400, out
        # The admin gate (issue 17 finding 9) parses the head first and
        # refuses such a URL itself; evhttp's own check said it in fewer words.
        assert json.loads(body)["error"]["message"].startswith("the URL must be valid UTF-8"), body
        assert_still_serving(s)
    # Bodies: strings and member names must be UTF-8 too (jansson checks).
    for body in (b'{"description": "\xff"}', b'{"\xc3": 1}', b'{"description": "\ud800"}'):
        r = requests.patch(api(s, "/%s/versions/versiona" % EP), headers=H, data=body,
                           timeout=5)
        assert_error(r, 400, "invalid JSON")
    assert_still_serving(s)


def test_binary_file_key_refused_on_reload():
    m = Model("a")
    s = keyed_sluice(m)
    with open(os.path.join(s.dir, "binary.key"), "wb") as f:
        f.write(b"\xff\xfe\x80binary\x01key")
    s.config["endpoints"][0]["keys"]["primary"] = "file:binary.key"
    s.write_config()
    r = requests.post(s.admin("/admin/v1/reload"), headers=H, timeout=5)
    assert_error(r, 400, "endpoints[0].keys.primary", "must be text")
    assert assert_still_serving(s) == {"primary_key": KEYS["primary"],
                                       "secondary_key": KEYS["secondary"]}
    # The same file at start-up: refused with the same reason.
    out = subprocess.run([SLUICE, "-c", s.path, "--check"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1, out
    assert "endpoints[0].keys.primary: must be text" in out.stderr, out.stderr


def test_admin_api_cannot_read_files_or_environment():
    m = Model("a")
    d_secret = "TOPSECRET-FILE-CONTENT-4711"
    e_secret = "TOPSECRET-ENV-VALUE-0815"
    s = keyed_sluice(m, env={"SLUICE_INPUT_TEST_SECRET": e_secret})
    secret_file = os.path.join(s.dir, "secret.txt")
    with open(secret_file, "w") as f:
        f.write(d_secret + "\n")
    seen = []
    for ref in ("file:" + secret_file, "file:secret.txt", "env:SLUICE_INPUT_TEST_SECRET"):
        for ep, idx in (("leaky", 1), (EP, 0)):     # a new endpoint, and a replacement
            for field in ("primary", "secondary"):
                keys = dict(KEYS)
                keys[field] = ref
                r = requests.put(api(s, "/" + ep), headers=H, timeout=5, json={
                    "auth": {"keys": True}, "keys": keys,
                    "versions": [{"name": "versiona", "upstreams": [m.addr]}]})
                seen.append(r.text)
                assert_error(r, 400, "endpoints[%d].keys.%s" % (idx, field),
                             "literal values only")
        r = requests.get(api(s, "/leaky/keys"), headers=H, timeout=5)
        assert r.status_code == 404, r.text
        seen.append(r.text)
    seen.append(json.dumps(assert_still_serving(s)))
    for text in seen:
        assert d_secret not in text and e_secret not in text
    with open(s.path) as f:
        persisted = f.read()
    assert "secret.txt" not in persisted and "SLUICE_INPUT_TEST_SECRET" not in persisted


def test_operator_file_reference_carried_along_by_edits():
    m = Model("a")
    s = keyed_sluice(m)
    with open(os.path.join(s.dir, "op.key"), "w") as f:
        f.write("operator-key-from-file-123\n")
    s.config["endpoints"][0]["keys"]["primary"] = "file:op.key"
    s.write_config()
    r = requests.post(s.admin("/admin/v1/reload"), headers=H, timeout=5)
    assert r.status_code == 200, r.text
    # An edit without keys carries the file reference along: allowed.
    r = requests.put(api(s, "/" + EP), headers=H, timeout=5, json={
        "auth": {"keys": True},
        "versions": [{"name": "versiona", "upstreams": [m.addr], "is_default": True}]})
    assert r.status_code == 200, r.text
    # So does one that repeats the operator's own reference unchanged.
    r = requests.put(api(s, "/" + EP), headers=H, timeout=5, json={
        "auth": {"keys": True}, "keys": {"primary": "file:op.key", "secondary": "other-literal-9"},
        "versions": [{"name": "versiona", "upstreams": [m.addr]}]})
    assert r.status_code == 200, r.text
    r = requests.patch(api(s, "/%s/versions/versiona" % EP), headers=H, timeout=5,
                       json={"traffic_percentile": 30})
    assert r.status_code == 200, r.text
    assert assert_still_serving(s) == {"primary_key": "operator-key-from-file-123",
                                       "secondary_key": "other-literal-9"}
    with open(s.path) as f:
        assert json.load(f)["endpoints"][0]["keys"]["primary"] == "file:op.key"


def test_crlf_and_spaces_in_paths_and_addresses():
    m = Model("a")
    s = keyed_sluice(m)
    cases = [
        ({"path": "/score\r\nX-Injected: 1"}, "endpoints[0].versions[0].path"),
        ({"path": "/score x"}, "endpoints[0].versions[0].path"),
        ({"health_check": {"path": "/health\r\n"}}, "endpoints[0].versions[0].health_check.path"),
        ({"upstreams": [m.addr, "127.0.0.1:5001\r\nHost: evil"]},
         "endpoints[0].versions[0].upstreams[1]"),
        ({"upstreams": ["unix:/tmp/a b.sock"]}, "endpoints[0].versions[0].upstreams[0]"),
    ]
    for extra, where in cases:
        v = {"name": "versiona", "upstreams": [m.addr]}
        v.update(extra)
        r = requests.put(api(s, "/" + EP), headers=H, timeout=5,
                         json={"auth": {"keys": True}, "versions": [v]})
        assert_error(r, 400, where, "must not contain control characters or spaces")
    r = requests.patch(api(s, "/%s/versions/versiona" % EP), headers=H, timeout=5,
                       json={"upstreams": ["127.0.0.1:1\n"]})
    assert_error(r, 400, "endpoints[0].versions[0].upstreams[0]")
    assert_still_serving(s)
    # The same rule for the operator's file: --check and reload.
    s.config["endpoints"][0]["versions"][0]["path"] = "/score\r\nX-Injected: 1"
    s.write_config()
    out = subprocess.run([SLUICE, "-c", s.path, "--check"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1, out
    assert ("endpoints[0].versions[0].path: must not contain control characters or spaces"
            in out.stderr), out.stderr
    r = requests.post(s.admin("/admin/v1/reload"), headers=H, timeout=5)
    assert_error(r, 400, "endpoints[0].versions[0].path")
    # Requests still go out with the old, clean path.
    r = requests.post(s.url(EP), headers={"Authorization": "Bearer " + KEYS["primary"]},
                      data=b"{}", timeout=5)
    assert r.status_code == 200, r.text
    assert m.stats()["requests"] == 1


def test_quote_in_upstream_address_keeps_log_lines_json():
    m = Model("a")
    bad = 'no"such\\host:5001'
    ep = endpoint(EP, [
        version("versiona", [m.addr], 0, is_default=True, type="control"),
        version("versionb", [bad], 10, health_check={"path": "/", "interval_ms": 20,
                                                      "timeout_ms": 200,
                                                      "failure_threshold": 1})])
    s = Sluice([ep], extra={"admin": {"token": TOKEN}})
    # An admin change with such an address is logged too.
    r = requests.patch(api(s, "/%s/versions/versionb" % EP), headers=H, timeout=5,
                       json={"upstreams": [bad, 'another"one:5002']})
    assert r.status_code == 200, r.text
    for _ in range(20):
        requests.post(s.url(EP), data=b"{}", headers={"X-Sluice-Version": "versionb"},
                      timeout=5)
    deadline = time.time() + 10
    while time.time() < deadline and '"upstream_health"' not in s.log():
        time.sleep(0.05)
    lines = [l for l in s.log().splitlines() if l.strip()]
    if os.environ.get("SLUICE_TEST_SHOW_LOG"):
        print("\n".join(lines))
    parsed = []
    for l in lines:
        try:
            parsed.append(json.loads(l))
        except ValueError:
            raise AssertionError("not a JSON line: %r" % l)
    health = [p for p in parsed if p["event"] == "upstream_health"]
    assert health and health[0]["upstream"] in (bad, 'another"one:5002'), parsed
    assert health[0]["healthy"] is False, health
    assert any(p["event"] == "admin_change" and p["version"] == "versionb" for p in parsed)
    assert s.proc.poll() is None
