"""Python stubs for the Open Inference Protocol's gRPC service, generated at
test time from tests/proto/grpc_service.proto (protoc's Python output and
grpc_python_plugin; Debian: protobuf-compiler, protobuf-compiler-grpc,
python3-grpcio, python3-protobuf). Nothing generated is committed.

    pb, rpc = grpc_stubs.load()
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        stub = rpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(pb.ModelInferRequest(model_name="m"))

Also: frame() / unframe() for the length-prefixed messages, for tests that
speak gRPC without grpcio (h2load bodies, raw HTTP/2 clients)."""
import importlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(os.path.dirname(HERE), "proto")
PROTO = "grpc_service.proto"

_loaded = None


def generate(out_dir):
    """Write grpc_service_pb2.py and grpc_service_pb2_grpc.py into out_dir."""
    plugin = shutil.which("grpc_python_plugin")
    if plugin is None:
        raise RuntimeError("grpc_python_plugin not found (Debian: protobuf-compiler-grpc)")
    subprocess.run(["protoc", "-I", PROTO_DIR, "--python_out", out_dir,
                    "--grpc_python_out", out_dir, "--plugin=protoc-gen-grpc_python=" + plugin,
                    os.path.join(PROTO_DIR, PROTO)], check=True)


def load():
    """(pb2, pb2_grpc): the message and service modules, generated once per
    process into a temporary directory (removed at exit)."""
    global _loaded
    if _loaded is None:
        d = tempfile.mkdtemp(prefix="sluice-grpc-stubs-")
        import atexit
        atexit.register(shutil.rmtree, d, True)
        generate(d)
        sys.path.insert(0, d)
        try:
            pb2 = importlib.import_module("grpc_service_pb2")
            pb2_grpc = importlib.import_module("grpc_service_pb2_grpc")
        finally:
            sys.path.remove(d)
        _loaded = (pb2, pb2_grpc)
    return _loaded


def frame(msg):
    """One length-prefixed gRPC message (uncompressed) from a protobuf
    message or bytes."""
    data = msg if isinstance(msg, (bytes, bytearray)) else msg.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + bytes(data)


def unframe(data):
    """The messages (bytes) of a length-prefixed gRPC body."""
    out = []
    while data:
        flag, n = struct.unpack(">BI", data[:5])
        assert flag == 0, "compressed gRPC message"
        out.append(bytes(data[5:5 + n]))
        data = data[5 + n:]
    return out


SERVICE = "/inference.GRPCInferenceService/"
