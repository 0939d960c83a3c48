"""TF Serving gRPC calls with the official grpcio client, for tests/grpc_tfserving.rs.

Stubs are generated at run time by grpc_tools.protoc from the repository's proto/ folder (the
tensorflow-serving-api package would pull in all of TensorFlow). Each call is made twice on one
channel: through the generated stub (what an application does; its parsed answer is reported)
and as a raw unary call whose response deserializer keeps the message bytes as received (for
byte comparisons). Prints one JSON object per call, in a list:

  {"code": "OK", "details": "", "raw": "<hex>", "y": [...], "trailing": [[k, v], ...],
   "initial": [[k, v], ...]}

Usage: tfs_grpc.py --proto DIR --target HOST:PORT [--ca PEM --authority NAME] --calls JSON
where JSON is a list of {"method": "predict"|"status"|"reload", "model": NAME, "x": [floats] or "n": N,
"timeout": seconds, "meta": {key: value}}.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def stubs(proto_dir, out):
    files = []
    for root, _, names in os.walk(proto_dir):
        files += [os.path.relpath(os.path.join(root, n), proto_dir) for n in names if n.endswith(".proto")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"] + files)
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    mods = {}
    for m in ["predict_pb2", "get_model_status_pb2", "model_pb2", "prediction_service_pb2_grpc", "model_service_pb2_grpc"]:
        mods[m] = importlib.import_module(f"tensorflow_serving.apis.{m}")
    mods["tensor_pb2"] = importlib.import_module("tensorflow.core.framework.tensor_pb2")
    mods["tensor_shape_pb2"] = importlib.import_module("tensorflow.core.framework.tensor_shape_pb2")
    mods["types_pb2"] = importlib.import_module("tensorflow.core.framework.types_pb2")
    return mods


def request(m, call):
    spec = m["model_pb2"].ModelSpec(name=call.get("model", ""))
    if call["method"] == "predict":
        # "n": that many inputs 0, 1, …, 99, 0, … (too many for a command line).
        x = [float(i % 100) for i in range(call["n"])] if "n" in call else call.get("x", [1.0, 2.0, 5.0])
        shape = m["tensor_shape_pb2"].TensorShapeProto(dim=[m["tensor_shape_pb2"].TensorShapeProto.Dim(size=len(x))])
        t = m["tensor_pb2"].TensorProto(dtype=m["types_pb2"].DT_FLOAT, tensor_shape=shape, float_val=x)
        req = m["predict_pb2"].PredictRequest(model_spec=spec)
        req.inputs["x"].CopyFrom(t)
        return "/tensorflow.serving.PredictionService/Predict", req
    if call["method"] == "status":
        return "/tensorflow.serving.ModelService/GetModelStatus", m["get_model_status_pb2"].GetModelStatusRequest(model_spec=spec)
    if call["method"] == "reload":
        # HandleReloadConfigRequest, model management; an empty ReloadConfigRequest on the wire.
        return "/tensorflow.serving.ModelService/HandleReloadConfigRequest", m["get_model_status_pb2"].GetModelStatusRequest()
    sys.exit(f"unknown method {call['method']}")


def md(pairs):
    return [[k, v if isinstance(v, str) else v.hex()] for k, v in (pairs or [])]


def one(m, channel, call):
    path, req = request(m, call)
    kw = {"timeout": call.get("timeout", 10), "metadata": list(call.get("meta", {}).items())}
    out = {}
    # The generated stub, as an application calls it.
    try:
        if call["method"] == "predict":
            resp, c = m["prediction_service_pb2_grpc"].PredictionServiceStub(channel).Predict.with_call(req, **kw)
            out["y"] = list(resp.outputs["y"].float_val)
            out["version"] = resp.model_spec.version.value
        elif call["method"] == "status":
            resp, c = m["model_service_pb2_grpc"].ModelServiceStub(channel).GetModelStatus.with_call(req, **kw)
            out["states"] = [[s.version, s.state, s.status.error_code] for s in resp.model_version_status]
        else:
            c = None
        if c is not None:
            out["stub_code"] = c.code().name
    except grpc.RpcError as e:
        out["stub_code"] = e.code().name
    # The same call, raw: the response message's bytes as they arrived.
    raw = channel.unary_unary(path, request_serializer=lambda r: r.SerializeToString(), response_deserializer=lambda b: b)
    try:
        body, c = raw.with_call(req, **kw)
        out.update(code=c.code().name, details=c.details() or "", raw=body.hex(), trailing=md(c.trailing_metadata()), initial=md(c.initial_metadata()))
    except grpc.RpcError as e:
        out.update(code=e.code().name, details=e.details() or "", raw=None, trailing=md(e.trailing_metadata()), initial=md(e.initial_metadata()))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proto", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--ca")
    p.add_argument("--authority")
    p.add_argument("--calls", required=True)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = stubs(a.proto, tmp)
        if a.ca:
            creds = grpc.ssl_channel_credentials(root_certificates=open(a.ca, "rb").read())
            opts = [("grpc.ssl_target_name_override", a.authority)] if a.authority else []
            channel = grpc.secure_channel(a.target, creds, options=opts)
        else:
            channel = grpc.insecure_channel(a.target)
        with channel:
            print(json.dumps([one(m, channel, c) for c in json.loads(a.calls)]))


if __name__ == "__main__":
    main()
