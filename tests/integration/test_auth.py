"""Authentication: endpoint keys, tokens, admin token (issue 6)."""
import base64
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time

import requests

from harness import Model, Sluice, tmpdir, version

ADMIN = {"Authorization": "Bearer adm-secret-token"}
SECRET = "test-signing-secret-0123456789abcdef0123"
KEYED = {"primary": "keyed-primary-0123456789", "secondary": "keyed-secondary-0123456789"}
OTHER = {"primary": "other-primary-0123456789", "secondary": "other-secondary-0123456789"}
BODY = b'{"x":1}'


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, claims, sign):
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(claims).encode())
    sig = sign((h + "." + p).encode()) if sign else b""
    return h + "." + p + "." + b64(sig)


def hs(key):
    return lambda msg: hmac.new(key if isinstance(key, bytes) else key.encode(), msg,
                                hashlib.sha256).digest()


def rs(keyfile):
    def sign(msg):
        return subprocess.run(["openssl", "dgst", "-sha256", "-sign", keyfile], input=msg,
                              capture_output=True, check=True).stdout
    return sign


def setup():
    m = Model("versiona")
    d = tmpdir()
    idp_key = os.path.join(d, "idp.pem")
    subprocess.run(["openssl", "genrsa", "-out", idp_key, "2048"], check=True, capture_output=True)
    pub = subprocess.run(["openssl", "rsa", "-in", idp_key, "-pubout"], check=True,
                         capture_output=True).stdout.decode()
    eps = [
        {"name": "keyed", "keys": dict(KEYED), "versions": [version("versiona", [m.addr], 100)]},
        {"name": "tokened", "auth": {"keys": False, "tokens": True},
         "versions": [version("versiona", [m.addr], 100)]},
        {"name": "other", "keys": dict(OTHER), "versions": [version("versiona", [m.addr], 100)]},
    ]
    s = Sluice(eps, wait=False, extra={
        "admin": {"token": "adm-secret-token"},
        "tokens": {"signing_key": SECRET, "ttl_s": 600, "leeway_s": 5, "trusted_issuers": [
            {"issuer": "idp.example", "audience": "tokened", "algorithm": "RS256",
             "public_key": pub}]}})
    s.config["admin"]["address"] = "127.0.0.1:%d" % s.admin_port
    s.config["admin"]["token"] = "adm-secret-token"
    s.write_config()
    s.wait_ready()
    return s, m, idp_key, pub


def admin_token(s, ep):
    r = requests.post(s.admin("/admin/v1/endpoints/%s/token" % ep), headers=ADMIN, json={})
    assert r.status_code == 200, r.text
    return r.json()


def test_refused_credentials_corpus():
    s, m, idp_key, pub = setup()
    now = int(time.time())
    good_tok = admin_token(s, "tokened")["access_token"]
    keyed_tok = admin_token(s, "keyed")["access_token"]
    old_primary = KEYED["primary"]
    r = requests.post(s.admin("/admin/v1/endpoints/keyed/keys/regenerate"), headers=ADMIN,
                      json={"key_type": "Primary"})
    assert r.status_code == 200 and r.json()["primary_key"] != old_primary
    head, payload, sig = good_tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = dict(claims, sub="root")
    base = {"iss": "sluice", "aud": "tokened", "iat": now, "exp": now + 300}

    def tok(**kw):
        c = dict(base)
        c.update(kw)
        return jwt({"alg": "HS256", "typ": "JWT"}, c, hs(SECRET))
    refused = [
        ("keyed", None, "missing header"),
        ("keyed", "Basic " + KEYED["secondary"], "wrong scheme"),
        ("keyed", "Bearer ", "empty bearer"),
        ("keyed", "Bearer", "bearer without credential"),
        ("keyed", "Bearer not-the-key", "wrong key"),
        ("keyed", "Bearer " + KEYED["secondary"] + "x", "key with a character appended"),
        ("keyed", "Bearer " + KEYED["secondary"].upper(), "key in another case"),
        ("keyed", "Bearer " + OTHER["primary"], "other endpoint's key"),
        ("keyed", "Bearer " + old_primary, "regenerated old key"),
        ("keyed", "Bearer " + KEYED["secondary"] + " extra", "two credentials"),
        ("keyed", "Bearer " + keyed_tok, "token on a keys-only endpoint"),
        ("tokened", "Bearer " + KEYED["secondary"], "key on a tokens-only endpoint"),
        ("tokened", "Bearer " + keyed_tok, "token for another endpoint"),
        ("tokened", "Bearer " + tok(exp=now - 60, iat=now - 120), "expired"),
        ("tokened", "Bearer " + tok(nbf=now + 120), "nbf in the future"),
        ("tokened", "Bearer " + tok(iss="evil"), "wrong issuer"),
        ("tokened", "Bearer " + jwt({"alg": "none"}, base, None), "alg none"),
        ("tokened", "Bearer " + jwt({"alg": "none"}, base, None) + "AAAA", "alg none with a signature"),
        ("tokened", "Bearer " + jwt({"alg": "HS256"}, dict(base, iss="idp.example"), hs(pub)),
         "HS256 signed with the RS256 issuer's public key"),
        ("tokened", "Bearer " + ".".join([head, b64(json.dumps(tampered).encode()), sig]),
         "tampered payload"),
        ("tokened", "Bearer " + head + "." + payload + ".", "stripped signature"),
        ("tokened", "Bearer " + head + "." + payload, "signature part missing"),
        ("tokened", "Bearer " + tok(pad="x" * 9000), "over-long token"),
        ("tokened", "Bearer !!!.@@@.###", "garbage base64"),
        ("tokened", "Bearer " + jwt({"alg": "HS256"}, base, hs("wrong-secret")), "wrong secret"),
        ("tokened", "Bearer " + jwt({"alg": "RS256"}, dict(base, iss="idp.example", aud="keyed"),
                                    rs(idp_key)), "trusted issuer, wrong audience"),
        ("tokened", "Bearer " + jwt({"alg": "HS512"}, base, lambda m: hmac.new(
            SECRET.encode(), m, hashlib.sha512).digest()), "algorithm not the configured one"),
    ]
    assert len(refused) >= 20
    with requests.Session() as c:
        for ep, h, why in refused:
            headers = {"Authorization": h} if h is not None else {}
            r = c.post(s.url(ep), data=BODY, headers=headers)
            assert r.status_code == 401, (why, r.status_code, r.text)
            assert r.headers.get("WWW-Authenticate") == "Bearer", why
            assert r.json()["error"]["code"] == "unauthorized", why
    assert m.stats()["requests"] == 0, "a refused request reached the model server"
    # Nothing secret in logs or the admin API's answers.
    text = s.log() + open(os.path.join(s.dir, "access.log")).read()
    text += requests.get(s.admin("/admin/v1/endpoints"), headers=ADMIN).text
    for secret in (KEYED["secondary"], OTHER["primary"], SECRET, good_tok, keyed_tok):
        assert secret not in text, secret[:10]


def test_accepted_credentials():
    s, m, idp_key, pub = setup()
    now = int(time.time())
    t = admin_token(s, "tokened")
    assert t["token_type"] == "Bearer"
    assert t["expires_at"] - now in (600, 599, 601)
    assert t["refresh_by"] == t["expires_at"] - 300
    idp = jwt({"alg": "RS256", "typ": "JWT"},
              {"iss": "idp.example", "aud": "tokened", "exp": now + 60, "sub": "u1"}, rs(idp_key))
    cases = [("keyed", KEYED["primary"]), ("keyed", KEYED["secondary"]),
             ("tokened", t["access_token"]), ("tokened", idp), ("other", OTHER["secondary"])]
    with requests.Session() as c:
        for ep, cred in cases:
            r = c.post(s.url(ep), data=BODY, headers={"Authorization": "Bearer " + cred})
            assert r.status_code == 200, (ep, r.text)
            assert "authorization" not in r.json()["headers"]
        # the same token again: served from the verified-token cache
        for _ in range(20):
            assert c.post(s.url("tokened"), data=BODY,
                          headers={"Authorization": "Bearer " + t["access_token"]}).status_code == 200
    assert requests.get(s.admin("/admin/v1/endpoints/keyed/keys")).status_code == 401
    assert requests.get(s.admin("/healthz")).status_code == 200


def test_regenerating_primary_never_breaks_secondary():
    s, m, idp_key, pub = setup()
    stop = threading.Event()
    codes = {}

    def hammer():
        with requests.Session() as c:
            while not stop.is_set():
                r = c.post(s.url("keyed"), data=BODY,
                           headers={"Authorization": "Bearer " + KEYED["secondary"]})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    current = KEYED["primary"]
    for _ in range(10):
        r = requests.post(s.admin("/admin/v1/endpoints/keyed/keys/regenerate"), headers=ADMIN,
                          json={"key_type": "Primary"})
        assert r.status_code == 200
        new = r.json()["primary_key"]
        assert r.json()["secondary_key"] == KEYED["secondary"]
        # the old value is refused at once, the new one works at once
        assert requests.post(s.url("keyed"), data=BODY,
                             headers={"Authorization": "Bearer " + current}).status_code == 401
        assert requests.post(s.url("keyed"), data=BODY,
                             headers={"Authorization": "Bearer " + new}).status_code == 200
        current = new
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert set(codes) == {200}, codes
    assert codes[200] > 50
    with open(s.path) as f:
        doc = json.load(f)
    assert doc["endpoints"][0]["keys"]["primary"] == current
