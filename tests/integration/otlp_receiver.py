#!/usr/bin/python3
"""A local OTLP/HTTP JSON trace receiver for tests: POST /v1/traces on
127.0.0.1, port 0 (read back), checking every batch against the OTLP JSON
mapping.

The checks are hand-written (Debian ships no OpenTelemetry proto or JSON
schema package) from opentelemetry-proto's docs/specification.md, "JSON
Protobuf Encoding", and the message definitions in
opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto:
proto3 JSON with lowerCamelCase keys, trace and span ids as hex (not
base64), enums as integers (never names), 64-bit integers (fixed64 times,
int64 intValue) as decimal strings, AnyValue as exactly one of its oneof
members. Stricter than a collector on purpose, since it checks our encoder:
unknown keys are errors (a collector must ignore them), ids must be
lowercase and non-zero, the times must be strings and end >= start.

Modes: "ok" (200 with an empty ExportTraceServiceResponse), "503" (with a
Status body), "hang" (read the request, never answer until close()),
"slow" (answer after `delay` seconds), "down" (the port is bound but not
listening: every connect is refused), and reject=K (200 with a partial
success rejecting K spans of each batch).

In a test:
    r = OtlpReceiver(mode="ok"); r.url  # http://127.0.0.1:PORT/v1/traces
    (port=P binds that port, e.g. one from the integration harness's allocator)
    ... r.spans, r.batches, r.errors ...; r.close()
As a program: otlp_receiver.py [--mode M] [--delay S] [--reject K]
prints "PORT" and then one JSON line per batch received.
"""
import argparse
import base64
import json
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
DECIMAL = re.compile(r"^-?[0-9]+$")
U64_MAX = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
U32_MAX = (1 << 32) - 1

# Field names (lowerCamelCase) of each message, from the .proto files.
FIELDS = {
    "ExportTraceServiceRequest": {"resourceSpans"},
    "ResourceSpans": {"resource", "scopeSpans", "schemaUrl"},
    "Resource": {"attributes", "droppedAttributesCount", "entityRefs"},
    "ScopeSpans": {"scope", "spans", "schemaUrl"},
    "InstrumentationScope": {"name", "version", "attributes", "droppedAttributesCount"},
    "Span": {"traceId", "spanId", "traceState", "parentSpanId", "flags", "name", "kind",
             "startTimeUnixNano", "endTimeUnixNano", "attributes", "droppedAttributesCount",
             "events", "droppedEventsCount", "links", "droppedLinksCount", "status"},
    "Event": {"timeUnixNano", "name", "attributes", "droppedAttributesCount"},
    "Link": {"traceId", "spanId", "traceState", "attributes", "droppedAttributesCount",
             "flags"},
    "Status": {"message", "code"},
    "KeyValue": {"key", "value"},
    "AnyValue": {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue",
                 "kvlistValue", "bytesValue"},
}


class Checker:
    def __init__(self):
        self.errors = []

    def err(self, path, msg):
        self.errors.append("%s: %s" % (path, msg))

    def obj(self, v, path, msg_type):
        if not isinstance(v, dict):
            self.err(path, "%s must be an object" % msg_type)
            return False
        for k in v:
            if k not in FIELDS[msg_type]:
                self.err(path, "unknown field %r of %s (keys are lowerCamelCase)" % (k, msg_type))
        return True

    def list_of(self, v, path, fn):
        if v is None:
            return
        if not isinstance(v, list):
            self.err(path, "a repeated field must be an array")
            return
        for i, x in enumerate(v):
            fn(x, "%s[%d]" % (path, i))

    def string(self, v, path):
        if v is not None and not isinstance(v, str):
            self.err(path, "must be a string")

    def uint32(self, v, path):
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U32_MAX:
            self.err(path, "must be a uint32 number")

    def enum(self, v, path, lo, hi):
        if v is None:
            return
        if isinstance(v, str):
            self.err(path, "enum as a name %r: OTLP JSON allows integers only" % v)
        elif isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.err(path, "enum must be an integer from %d to %d" % (lo, hi))

    def fixed64(self, v, path):
        """A fixed64 as this exporter must write it: a decimal string."""
        if not isinstance(v, str) or not DECIMAL.match(v) or v.startswith("-"):
            self.err(path, "a fixed64 must be a decimal string, got %r" % (v,))
            return None
        n = int(v)
        if n > U64_MAX:
            self.err(path, "out of the uint64 range")
            return None
        return n

    def trace_id(self, v, path, required=True):
        if v is None or v == "":
            if required:
                self.err(path, "missing")
            return
        if not isinstance(v, str) or not HEX32.match(v):
            self.err(path, "must be 32 lowercase hex digits, got %r" % (v,))
        elif v == "0" * 32:
            self.err(path, "all zero")

    def span_id(self, v, path, required=True):
        if v is None or v == "":
            if required:
                self.err(path, "missing")
            return
        if not isinstance(v, str) or not HEX16.match(v):
            self.err(path, "must be 16 lowercase hex digits, got %r" % (v,))
        elif v == "0" * 16:
            self.err(path, "all zero")

    def any_value(self, v, path):
        if not self.obj(v, path, "AnyValue"):
            return
        if len(v) != 1:
            self.err(path, "AnyValue must set exactly one of its oneof members, has %s"
                     % sorted(v))
            return
        (k, x), = v.items()
        if k == "stringValue":
            self.string(x, path + ".stringValue")
        elif k == "boolValue":
            if not isinstance(x, bool):
                self.err(path + ".boolValue", "must be true or false")
        elif k == "intValue":
            # int64: a decimal string (numbers are accepted when decoding).
            ok = (isinstance(x, str) and DECIMAL.match(x)) or \
                 (isinstance(x, int) and not isinstance(x, bool))
            if not ok or not I64_MIN <= int(x) <= I64_MAX:
                self.err(path + ".intValue", "must be an int64 as a decimal string")
        elif k == "doubleValue":
            if isinstance(x, bool) or not isinstance(x, (int, float, str)):
                self.err(path + ".doubleValue", "must be a number")
        elif k == "arrayValue":
            if self.obj(x, path + ".arrayValue", "KeyValue") and set(x) - {"values"}:
                self.err(path + ".arrayValue", "only 'values'")
            self.list_of(x.get("values") if isinstance(x, dict) else None,
                         path + ".arrayValue.values", self.any_value)
        elif k == "kvlistValue":
            self.list_of(x.get("values") if isinstance(x, dict) else None,
                         path + ".kvlistValue.values", self.key_value)
        elif k == "bytesValue":
            try:
                base64.b64decode(x, validate=True)
            except Exception:
                self.err(path + ".bytesValue", "must be base64")

    def key_value(self, v, path):
        if not self.obj(v, path, "KeyValue"):
            return
        if not isinstance(v.get("key"), str) or not v.get("key"):
            self.err(path + ".key", "must be a non-empty string")
        if "value" not in v:
            self.err(path, "no value")
        else:
            self.any_value(v["value"], path + ".value")

    def attributes(self, v, path):
        self.list_of(v, path, self.key_value)
        if isinstance(v, list):
            keys = [a.get("key") for a in v if isinstance(a, dict)]
            if len(keys) != len(set(keys)):
                self.err(path, "duplicate attribute keys %s" % keys)

    def status(self, v, path):
        if v is None or not self.obj(v, path, "Status"):
            return
        self.string(v.get("message"), path + ".message")
        self.enum(v.get("code"), path + ".code", 0, 2)

    def span(self, v, path):
        if not self.obj(v, path, "Span"):
            return
        self.trace_id(v.get("traceId"), path + ".traceId")
        self.span_id(v.get("spanId"), path + ".spanId")
        self.span_id(v.get("parentSpanId"), path + ".parentSpanId", required=False)
        self.string(v.get("traceState"), path + ".traceState")
        self.uint32(v.get("flags"), path + ".flags")
        if not isinstance(v.get("name"), str) or not v.get("name"):
            self.err(path + ".name", "must be a non-empty string")
        self.enum(v.get("kind"), path + ".kind", 0, 5)
        start = self.fixed64(v.get("startTimeUnixNano"), path + ".startTimeUnixNano")
        end = self.fixed64(v.get("endTimeUnixNano"), path + ".endTimeUnixNano")
        if start is not None and end is not None and end < start:
            self.err(path, "ends before it starts")
        self.attributes(v.get("attributes"), path + ".attributes")
        for f in ("droppedAttributesCount", "droppedEventsCount", "droppedLinksCount"):
            self.uint32(v.get(f), path + "." + f)
        self.list_of(v.get("events"), path + ".events", self.event)
        self.list_of(v.get("links"), path + ".links", self.link)
        self.status(v.get("status"), path + ".status")

    def event(self, v, path):
        if self.obj(v, path, "Event"):
            self.fixed64(v.get("timeUnixNano"), path + ".timeUnixNano")
            self.attributes(v.get("attributes"), path + ".attributes")

    def link(self, v, path):
        if self.obj(v, path, "Link"):
            self.trace_id(v.get("traceId"), path + ".traceId")
            self.span_id(v.get("spanId"), path + ".spanId")
            self.attributes(v.get("attributes"), path + ".attributes")

    def scope_spans(self, v, path):
        if not self.obj(v, path, "ScopeSpans"):
            return
        sc = v.get("scope")
        if sc is not None and self.obj(sc, path + ".scope", "InstrumentationScope"):
            self.string(sc.get("name"), path + ".scope.name")
            self.string(sc.get("version"), path + ".scope.version")
            self.attributes(sc.get("attributes"), path + ".scope.attributes")
        self.list_of(v.get("spans"), path + ".spans", self.span)
        self.string(v.get("schemaUrl"), path + ".schemaUrl")

    def resource_spans(self, v, path):
        if not self.obj(v, path, "ResourceSpans"):
            return
        res = v.get("resource")
        if res is not None and self.obj(res, path + ".resource", "Resource"):
            self.attributes(res.get("attributes"), path + ".resource.attributes")
            self.uint32(res.get("droppedAttributesCount"), path + ".resource.droppedAttributesCount")
        self.list_of(v.get("scopeSpans"), path + ".scopeSpans", self.scope_spans)
        self.string(v.get("schemaUrl"), path + ".schemaUrl")


def validate_export_request(doc):
    """The errors (a list of strings, empty when valid) of one decoded
    ExportTraceServiceRequest."""
    c = Checker()
    if c.obj(doc, "$", "ExportTraceServiceRequest"):
        c.list_of(doc.get("resourceSpans"), "$.resourceSpans", c.resource_spans)
    return c.errors


# The attributes SPEC §10 names, with their AnyValue member.
SLUICE_ATTRIBUTES = {"endpoint": "stringValue", "version": "stringValue",
                     "group": "stringValue", "status": "intValue",
                     "upstream": "stringValue", "pinned": "boolValue",
                     "shadow": "boolValue"}


def sluice_profile_errors(span):
    """What a Sluice span must also satisfy: SERVER or CLIENT, only the
    attributes SPEC §10 names, each of its type."""
    errs = []
    if span.get("kind") not in (2, 3):
        errs.append("kind %r is neither SERVER (2) nor CLIENT (3)" % span.get("kind"))
    for a in span.get("attributes", []):
        want = SLUICE_ATTRIBUTES.get(a.get("key"))
        if want is None:
            errs.append("attribute %r not in SPEC §10" % a.get("key"))
        elif want not in a.get("value", {}):
            errs.append("attribute %r is not a %s" % (a.get("key"), want))
    return errs


def attributes(kvs):
    """A decoded attribute list as a dict of plain values."""
    out = {}
    for a in kvs or []:
        (k, v), = a["value"].items()
        out[a["key"]] = int(v) if k == "intValue" else v
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        r = self.server.receiver
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != r.path:
            r._record_error("POST to %s, not %s" % (self.path, r.path))
            return self._answer(404, {"code": 5, "message": "not found"})
        ctype = self.headers.get("Content-Type", "")
        errors = []
        if ctype.split(";")[0].strip() != "application/json":
            errors.append("Content-Type %r, not application/json" % ctype)
        try:
            doc = json.loads(body)
        except ValueError as e:
            doc = None
            errors.append("not JSON: %s" % e)
        if doc is not None:
            errors += validate_export_request(doc)
        spans = []
        if doc is not None and not errors:
            for rs in doc.get("resourceSpans", []):
                res = attributes(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        errors += ["%s: %s" % (sp.get("spanId"), e)
                                   for e in sluice_profile_errors(sp)]
                        spans.append(dict(sp, resource=res,
                                          scope=ss.get("scope", {}).get("name")))
        r._record(len(body), spans, errors)
        if r.mode == "hang":
            r._closed.wait()
            self.close_connection = True
            return
        if r.mode == "slow":
            r._closed.wait(r.delay)
        if r.mode == "503":
            return self._answer(503, {"code": 14, "message": "unavailable"})
        if r.reject:
            k = min(r.reject, len(spans))
            return self._answer(200, {"partialSuccess": {"rejectedSpans": str(k),
                                                         "errorMessage": "test rejects"}})
        self._answer(200, {})


class OtlpReceiver:
    def __init__(self, mode="ok", delay=0.0, reject=0, path="/v1/traces", port=0):
        self.mode, self.delay, self.reject, self.path = mode, delay, reject, path
        self.batches = []           # (bytes, number of spans, errors) per POST
        self.spans = []             # every span of a valid batch, decoded
        self.errors = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._server = None
        self._sock = None
        if mode == "down":
            # Bound, never listening: a connect gets a reset, at once.
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._sock.bind(("127.0.0.1", port))
            self.port = self._sock.getsockname()[1]
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
            self._server.daemon_threads = True
            self._server.receiver = self
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        self.url = "http://127.0.0.1:%d%s" % (self.port, path)

    def _record(self, nbytes, spans, errors):
        with self._lock:
            self.batches.append((nbytes, len(spans), errors))
            self.spans.extend(spans)
            self.errors.extend(errors)
        if self.on_batch is not None:
            self.on_batch(nbytes, spans, errors)

    def _record_error(self, msg):
        with self._lock:
            self.errors.append(msg)

    on_batch = None

    def close(self):
        self._closed.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._sock is not None:
            self._sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="ok", choices=["ok", "503", "hang", "slow", "down"])
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--reject", type=int, default=0)
    args = ap.parse_args()
    r = OtlpReceiver(args.mode, args.delay, args.reject)

    def show(nbytes, spans, errors):
        print(json.dumps({"bytes": nbytes, "spans": spans, "errors": errors}), flush=True)

    r.on_batch = show
    print(r.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    r.close()


if __name__ == "__main__":
    sys.exit(main())
