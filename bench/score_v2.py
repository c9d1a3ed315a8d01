"""Batch-scores the Fashion-MNIST test set over the Open Inference Protocol (``ModelInfer``, raw
UINT8), the way a Triton/KServe/MLServer user would: batches of ``--batch`` images, up to
``--in-flight`` requests at a time, answers in order. Prints images/s, seconds and accuracy
(or JSON). Works against any v2 server (ours, MLServer, KServe); loopback targets only.

Usage: python bench/score_v2.py --target 127.0.0.1:8001 [--model mlp] [--batch 1000]
"""

import argparse
import asyncio
import json
import time

import grpc
import numpy as np
from loadgen_requests import loopback_target

from common.dataset import load_test_set
from inference import grpc_service_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def requests(images: np.ndarray, model: str, batch: int) -> list[bytes]:
    return [pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="images", datatype="UINT8", shape=chunk.shape)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="label")],
        raw_input_contents=[chunk.tobytes()]).SerializeToString()
        for chunk in (images[start:start + batch] for start in range(0, len(images), batch))]


async def score(target: str, model: str, images: np.ndarray, batch: int,
                in_flight: int) -> tuple[float, np.ndarray]:
    """Seconds from the first request to the last answer, and the predicted labels."""
    messages = requests(images, model, batch)
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)
        await call(messages[0])  # connect and warm up, outside the timing
        slots = asyncio.Semaphore(in_flight)

        async def one(message: bytes) -> np.ndarray:
            async with slots:
                answer = pb.ModelInferResponse.FromString(await call(message, timeout=60))
            names = [output.name for output in answer.outputs]
            return np.frombuffer(answer.raw_output_contents[names.index("label")], dtype="<i8")

        started = time.perf_counter()
        labels = await asyncio.gather(*(one(message) for message in messages))
        return time.perf_counter() - started, np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, type=loopback_target)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch", type=int, default=1000, help="images per request")
    parser.add_argument("--in-flight", type=int, default=2, help="requests at a time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    images, labels = load_test_set()
    try:
        seconds, predicted = asyncio.run(score(args.target, args.model, images, args.batch,
                                               args.in_flight))
    except grpc.RpcError as error:  # one line, as fmnist says a call's failure
        raise SystemExit(f"score_v2.py: {error.code().name}: {error.details()}") from None
    result = {"images": len(images), "seconds": seconds, "images_per_s": len(images) / seconds,
              "accuracy": float(np.mean(predicted == labels))}
    print(json.dumps(result) if args.json else
          f"{len(images)} images in {seconds:.3f} s ({result['images_per_s']:,.0f} images/s), "
          f"accuracy {result['accuracy']:.4f}")


if __name__ == "__main__":
    main()
