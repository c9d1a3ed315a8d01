"""What the data plane costs a call, with no transport: each step of a v2 ``ModelInfer`` run in a
loop on one thread, as a markdown table of microseconds a call per batch size.

The server's own histogram (``fmnist_request_duration_seconds``) holds these steps plus what
threads and the GIL add under load; the gap between a client's latency and these rows is gRPC,
the kernel and the wake-ups of threads.

Usage: python bench/dataplane.py [--repository DIR] [--model mlp] [--batches 1 64] [--calls N]
"""

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.contract import IMAGES, LABEL, MODEL_FILE, PROBABILITIES
from inference import grpc_service_pb2 as pb
from serving.codecs.inference import decode_infer_request, encode_infer_response
from serving.errors import RepositoryError
from serving.pipeline import Call
from serving.server import ModelServer
from serving.settings import Settings

CALL = Call(method="/inference.GRPCInferenceService/ModelInfer")


def microseconds(step: Callable[[], object], calls: int) -> float:
    """Median over 5 rounds of the mean time of ``calls`` calls, after a warm-up."""
    for _ in range(calls // 10):
        step()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            step()
        rounds.append((time.perf_counter() - started) / calls)
    return 1e6 * float(np.median(rounds))


def session_alone(server: ModelServer, model_name: str):
    """An onnxruntime session of its own on the file the server loaded, with the server's
    thread settings (the server's is held by the model's batcher, not to be reached)."""
    import onnxruntime  # here, as serving imports it: once ``serving`` turned telemetry off

    model = server.registry.get(model_name)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = server.settings.intra_op_threads
    options.inter_op_num_threads = 1
    path = server.settings.model_repository / model_name / str(model.version) / MODEL_FILE
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def steps(server: ModelServer, model_name: str, batch: int) -> dict[str, Callable[[], object]]:
    model = server.registry.get(model_name)
    session = session_alone(server, model_name)
    request = pb.ModelInferRequest(model_name=model_name, raw_input_contents=[
        np.random.default_rng(0).integers(0, 256, (batch, 28, 28), dtype=np.uint8).tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[batch, 28, 28])
    data = request.SerializeToString()
    query = decode_infer_request(request, model, server.settings.max_request_images)
    prediction = model.predict(query.images, CALL)
    response = encode_infer_response(query, model, prediction, request.id)
    api = server.inference
    return {
        "parse the request (protobuf)": lambda: pb.ModelInferRequest.FromString(data),
        "decode (codecs)": lambda: decode_infer_request(
            request, model, server.settings.max_request_images),
        "predict (batcher + onnxruntime)": lambda: model.predict(query.images, CALL),
        "onnxruntime alone": lambda: session.run([PROBABILITIES, LABEL],
                                                 {IMAGES: query.images}),
        "encode (codecs)": lambda: encode_infer_response(query, model, prediction, request.id),
        "serialize the response": response.SerializeToString,
        "all: parse, ModelInfer, serialize": lambda: api.ModelInfer(
            pb.ModelInferRequest.FromString(data), CALL).SerializeToString(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path(".work/bench-repo"))
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--calls", type=int, default=2000, help="calls a round (5 rounds)")
    args = parser.parse_args()
    try:
        server = ModelServer.from_settings(
            Settings(model_repository=args.repository, http_port=0, poll_interval=0))
    except RepositoryError as error:
        parser.error(str(error))
    table = {batch: steps(server, args.model, batch) for batch in args.batches}
    print("| step | " + " | ".join(f"b{batch} us" for batch in args.batches) + " |")
    print("| --- |" + " --- |" * len(args.batches))
    for name in table[args.batches[0]]:
        cells = [f"{microseconds(table[batch][name], args.calls):.1f}" for batch in args.batches]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
