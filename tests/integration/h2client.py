"""A small blocking HTTP/2 client over python3-h2 for tests that must see
frames a library client hides: Trailers-Only answers, trailers, resets,
GOAWAY, the server's SETTINGS, many streams on one connection.

    c = H2Client(port)
    sid = c.request("/score", b"body", [("x-test-delay-ms", "100")])
    r = c.response(sid)      # {"headers", "data", "trailers", "ended", "reset"}
    c.close()
"""
import socket
import time

import h2.config
import h2.connection
import h2.events

from harness import _closers


class H2Client:
    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(0.2)
        self.authority = "%s:%d" % (host, port)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.streams = {}
        self.eof = False            # the server closed the connection
        self.goaway = None          # its ConnectionTerminated event
        self.remote_settings = {}
        self._flush()
        _closers.append(self.close)

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path, body=b"", headers=(), method="POST"):
        """Send a request (headers, then the body if any); its stream id."""
        sid = self.conn.get_next_available_stream_id()
        hs = [(":method", method), (":scheme", "http"), (":authority", self.authority),
              (":path", path)] + list(headers)
        self.conn.send_headers(sid, hs, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.streams[sid] = {"headers": None, "data": b"", "trailers": None, "ended": False,
                             "reset": None, "frames": []}
        self._flush()
        return sid

    def pump(self):
        """Read once and handle what arrived; False once the connection is
        closed."""
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True             # nothing yet: the callers keep the time
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        for ev in self.conn.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                st["headers"] = dict(ev.headers)
                st["frames"].append("headers")
            elif isinstance(ev, h2.events.DataReceived):
                st["data"] += ev.data
                st["frames"].append("data")
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st["trailers"] = dict(ev.headers)
                st["frames"].append("trailers")
            elif isinstance(ev, h2.events.StreamEnded):
                st["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st["reset"] = ev.error_code
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for k, v in ev.changed_settings.items():
                    self.remote_settings[k] = v.new_value
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev
        self._flush()
        return True

    def response(self, sid, timeout=10):
        """Wait for stream sid to end (or be reset); its record."""
        deadline = time.time() + timeout
        st = self.streams[sid]
        while not st["ended"] and st["reset"] is None:
            if time.time() > deadline:
                raise AssertionError("stream %d not answered in %ss: %r" % (sid, timeout, st))
            if not self.pump():
                raise AssertionError("connection closed before stream %d ended: %r" % (sid, st))
        return st

    def wait_closed(self, timeout=10):
        """Wait until the server closes the connection; True if it did."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.pump():
                return True
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
