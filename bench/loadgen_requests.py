"""What the load generators send, and where: the plan of a run, its requests (serialized
once, rotated over DISTINCT_REQUESTS), the check of an answer, and the loopback-only target.

Used by bench/loadgen.py, by bench/native_loadgen.py (the C++ client sends the same requests)
and, for ``loopback_target``, by bench/soak.py and bench/score_v2.py.
"""

import ipaddress
import socket
from dataclasses import dataclass

import numpy as np

from common.contract import IMAGE_SHAPE, NUM_CLASSES
from fashion_mnist.v1 import classifier_pb2
from inference import grpc_service_pb2

V2_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DOMAIN_METHOD = "/fashion_mnist.v1.Classifier/Classify"
DISTINCT_REQUESTS = 8  # rotated so no layer can answer from a cache of one request


@dataclass
class Plan:
    """What every client process does; picklable so it crosses the process boundary."""

    target: str
    api: str
    model: str
    batch: int
    concurrency: int
    warmup_s: float
    duration_s: float
    decode: bool
    timeout_s: float
    seed: int
    channels: int = 1
    start_at: float = 0.0


def loopback_target(target: str) -> str:
    """Returns ``target`` if its host resolves only to loopback addresses, else exits."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--target must be HOST:PORT, got {target!r}")
    addresses = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), int(port))}
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"--target {target} is not a loopback address: load stays on this host")
    return target


def build_requests(plan: Plan) -> list[bytes]:
    """Serialized requests of ``plan.batch`` random uint8 images each."""
    rng = np.random.default_rng(plan.seed)
    requests = []
    for _ in range(DISTINCT_REQUESTS):
        images = rng.integers(0, 256, (plan.batch, *IMAGE_SHAPE), dtype=np.uint8)
        if plan.api == "v2":
            message = grpc_service_pb2.ModelInferRequest(
                model_name=plan.model,
                inputs=[grpc_service_pb2.ModelInferRequest.InferInputTensor(
                    name="images", datatype="UINT8", shape=images.shape)],
                raw_input_contents=[images.tobytes()],
            )
        else:
            message = classifier_pb2.ClassifyRequest(
                model=plan.model, images=[image.tobytes() for image in images])
        requests.append(message.SerializeToString())
    return requests


def check_answer(plan: Plan, answer: bytes) -> None:
    """Decodes one answer and raises if it does not hold ``plan.batch`` classifications."""
    if plan.api == "v2":
        response = grpc_service_pb2.ModelInferResponse.FromString(answer)
        shapes = {output.name: list(output.shape) for output in response.outputs}
        if shapes.get("probabilities") != [plan.batch, NUM_CLASSES]:
            raise ValueError(f"unexpected ModelInfer outputs {shapes}")
    else:
        response = classifier_pb2.ClassifyResponse.FromString(answer)
        if len(response.results) != plan.batch:
            raise ValueError(f"{len(response.results)} results for {plan.batch} images")
