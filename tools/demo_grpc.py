"""The demo's gRPC part (SPEC §9): an unchanged Open Inference Protocol
client (grpcio, stubs generated from tests/proto at run time) calls
ModelInfer with model_name = the endpoint over TLS (ALPN h2) and prints
the split it observed, from the output tensor that names the version."""
import argparse
import os
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "integration"))
import grpc_stubs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="host:port of a TLS listener")
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--model", required=True, help="the endpoint's name")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--expect", help="v=N,... exact counts")
    a = ap.parse_args()
    pb, rpc = grpc_stubs.load()
    with open(a.cacert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    seen = {}
    with grpc.secure_channel(a.address, creds,
                             options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
        st = rpc.GRPCInferenceServiceStub(ch)
        print("ServerLive: %s (answered by sluice)" % st.ServerLive(pb.ServerLiveRequest(),
                                                                    timeout=10).live)
        t = pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[1],
            contents=pb.InferTensorContents(fp32_contents=[0.5]))
        errors = {}
        for i in range(a.calls):
            try:
                out = st.ModelInfer(pb.ModelInferRequest(model_name=a.model, inputs=[t]),
                                    timeout=10)
                v = out.outputs[0].contents.bytes_contents[0].decode()
            except grpc.RpcError as e:      # the version's own errors (INTERNAL)
                md = dict(e.initial_metadata() or ())
                md.update(dict(e.trailing_metadata() or ()))
                v = md.get("x-sluice-version", "?")
                errors[v] = errors.get(v, 0) + 1
            seen[v] = seen.get(v, 0) + 1
    print("%d ModelInfer calls to model %s:" % (a.calls, a.model))
    for v in sorted(seen):
        print("  %-10s %4d  (%.0f %%)%s" % (v, seen[v], 100.0 * seen[v] / a.calls,
                                            ", %d answered INTERNAL" % errors[v]
                                            if errors.get(v) else ""))
    if a.expect:
        want = {k: int(n) for k, n in (p.split("=") for p in a.expect.split(","))}
        if seen != want:
            print("expected %s" % want)
            sys.exit(1)


if __name__ == "__main__":
    main()
