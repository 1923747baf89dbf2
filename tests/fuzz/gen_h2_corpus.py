#!/usr/bin/python3
"""Seed corpus of fuzz_h2 (tests/fuzz/fuzz_h2.c): a few valid HTTP/2
exchanges as a client sends them, made with python3-h2 and hpack.

Each file is: one byte for the write size (0: all at once), one byte for
the seed of the fake model servers' plans, then the client's frames after
the preface (the target prepends the preface). Run from anywhere:
  /usr/bin/python3 tests/fuzz/gen_h2_corpus.py
writes tests/fuzz/corpus/h2/."""
import os
import struct

import h2.config
import h2.connection
import h2.settings
import hpack

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "h2")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SCORE = "/api/v1/service/epx/score"


def client(settings=None):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    if settings:
        c.update_settings(settings)
    return c


def frames(c):
    data = c.data_to_send()
    return data[len(PREFACE):] if data.startswith(PREFACE) else data


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


def head(path=SCORE, method="POST", extra=()):
    return [(":method", method), (":path", path), (":scheme", "http"),
            (":authority", "sluice")] + list(extra)


def post(c, body, path=SCORE, extra=(), end=True):
    sid = c.get_next_available_stream_id()
    hs = head(path, extra=[("content-type", "application/json"),
                           ("content-length", str(len(body)))] + list(extra))
    c.send_headers(sid, hs, end_stream=end and not body)
    if body:
        c.send_data(sid, body, end_stream=end)
    return sid


def seeds():
    out = {}
    c = client()
    post(c, b'{"x":[1,2,3]}')
    out["post"] = frames(c)

    c = client()
    post(c, b'{"a":1}', extra=[("x-user-id", "u7")])
    post(c, b'{"b":2}', extra=[("x-sluice-version", "verb")])
    post(c, b'{"c":3}', extra=[("x-sluice-version", "verb"), ("x-request-id", "fz-1")])
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, head(method="GET"), end_stream=True)
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, head(method="HEAD"), end_stream=True)
    out["streams"] = frames(c)

    c = client()
    sid = post(c, b'{"partial":', end=False)
    c.reset_stream(sid)
    post(c, b"{}")
    out["rst_stream"] = frames(c)

    c = client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.ping(b"12345678")
    post(c, b'{"zero window"}')
    data = frames(c)
    data += frame(0x8, 0, 0, struct.pack(">I", 1 << 20))
    data += frame(0x8, 0, 1, struct.pack(">I", 1 << 16))
    data += frame(0x4, 0, 0, struct.pack(">HI", 0x4, 65535))
    out["ping_window"] = data

    c = client()
    data = frames(c)
    enc = hpack.Encoder()
    block = enc.encode(head() + [("content-length", "2")])
    data += frame(0x1, 0x0, 1, block[:10]) + frame(0x9, 0x0, 1, block[10:20]) + \
        frame(0x9, 0x4, 1, block[20:])
    data += frame(0x0, 0x1, 1, b"{}")
    out["continuation"] = data

    c = client()
    post(c, b"{}", path="/api/v1/service/locked/score",
         extra=[("authorization", "Bearer k-0123456789abcdef")])
    post(c, b"{}", path="/api/v1/service/locked/score",
         extra=[("authorization", "Bearer wrong")])
    post(c, b"{}", path="/api/v1/service/nope/score")
    out["auth_notfound"] = frames(c)

    c = client()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, head(extra=[("te", "trailers")]))
    c.send_data(sid, b'{"chunked":true}')
    c.send_headers(sid, [("x-trailer", "t")], end_stream=True)
    out["trailers"] = frames(c)

    c = client()
    post(c, b"z" * 5000)
    out["too_large"] = frames(c)

    c = client()
    for _ in range(3):
        post(c, b"{}", extra=[("x-sluice-version", "verq")])
    out["queued_timeout"] = frames(c)

    c = client()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, head())
    c.send_data(sid, b'{"never":')
    c.close_connection()
    out["never_ends_goaway"] = frames(c)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in seeds().items():
        for step, seed in ((0, 1), (7, 2), (64, 3), (1, 4)):
            with open(os.path.join(OUT, "%s-%d" % (name, step)), "wb") as f:
                f.write(bytes([step, seed]) + data)


if __name__ == "__main__":
    main()
