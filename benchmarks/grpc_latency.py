"""Unary TF Serving Predict latency and throughput with the official grpcio client (asyncio).

Used by benchmarks/grpc_latency.sh; stubs are generated from proto/ into a temp dir.
Prints one line: target, concurrency, requests, p50/p99 ms, requests/s.

  python grpc_latency.py --proto proto --target 127.0.0.1:8500 --concurrency 1 --requests 2000
"""

import argparse
import asyncio
import importlib
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def stubs(proto_dir, out):
    files = []
    for root, _, names in os.walk(proto_dir):
        files += [os.path.relpath(os.path.join(root, n), proto_dir) for n in names if n.endswith(".proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    if protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"] + files):
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    imp = importlib.import_module
    return (imp("tensorflow_serving.apis.predict_pb2"), imp("tensorflow_serving.apis.model_pb2"),
            imp("tensorflow_serving.apis.prediction_service_pb2_grpc"), imp("tensorflow.core.framework.tensor_pb2"),
            imp("tensorflow.core.framework.types_pb2"))


async def run(a, mods):
    predict_pb2, model_pb2, svc, tensor_pb2, types_pb2 = mods
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=a.model))
    req.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0, 5.0]))
    async with grpc.aio.insecure_channel(a.target) as ch:
        stub = svc.PredictionServiceStub(ch)
        for _ in range(50):  # warm-up: connection, stubs, the edge's upstream pool
            await stub.Predict(req, timeout=10)
        lat = []
        per = a.requests // a.concurrency

        async def worker():
            for _ in range(per):
                t = time.perf_counter()
                await stub.Predict(req, timeout=10)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
    print(f"{a.target} c={a.concurrency} n={len(lat)} p50={q(0.50):.3f}ms p99={q(0.99):.3f}ms rps={len(lat) / wall:.0f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proto", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--model", default="half_plus_two")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=2000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(a, stubs(a.proto, tmp)))


if __name__ == "__main__":
    main()
