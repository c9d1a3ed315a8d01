"""The floor of a grpcio synchronous server here (the server's programming model: a thread
pool, no interceptors), whose ``ModelInfer`` parses the request and returns one prebuilt
answer, with no model and no validation. Measured with the same load generator, it shows how
much of a server's time per request is gRPC in Python itself.

Usage: python bench/grpc_floor.py PORT   (serves 127.0.0.1:PORT until killed)
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from inference import grpc_service_pb2 as pb
from inference import grpc_service_pb2_grpc as pb_grpc

ANSWER = pb.ModelInferResponse(
    model_name="mlp", model_version="1",
    outputs=[pb.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32",
                                                     shape=[1, 10]),
             pb.ModelInferResponse.InferOutputTensor(name="label", datatype="INT64", shape=[1])],
    raw_output_contents=[np.zeros(10, np.float32).tobytes(), np.zeros(1, np.int64).tobytes()])


class FixedAnswer(pb_grpc.GRPCInferenceServiceServicer):
    def ModelReady(self, request, context):  # noqa: N802 (gRPC's name)
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request, context):  # noqa: N802 (gRPC's name)
        return ANSWER


def serve(port: int) -> None:
    server = grpc.server(ThreadPoolExecutor(64))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FixedAnswer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="serves 127.0.0.1:PORT until killed")
    serve(parser.parse_args().port)
