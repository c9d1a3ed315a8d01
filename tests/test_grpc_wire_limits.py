"""What a client can put on the wire that gRPC itself handles before any handler runs, on both
gRPC servers: a compressed request that would inflate past the message limit, a deadline
centuries away, large request metadata; and none of it, nor a failed TLS handshake, writes a
line outside a JSON log."""

import re
import socket
import struct
import subprocess
import tracemalloc
from pathlib import Path

import grpc
import pytest

from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as pb_v2
from tests.conftest import local_settings, running_server
from tests.server_process import server_process

INFLATED_BYTES = 100 * 1024 * 1024  # zeros: gzip makes ~100 KB of them


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_a_compressed_request_is_never_inflated_past_the_message_limit(model_repository,
                                                                       grpc_server):
    """gRPC C++ 1.51 inflated a compressed request whole before its size check: 100 KB of
    gzip became 100 MB in the server (and its one polling thread stalled every other call
    meanwhile). The native server takes uncompressed requests only; grpcio stops at the
    limit."""
    with server_process(model_repository, "--workers", "1", "--http-port", "0",
                        "--grpc-server", grpc_server) as (process, logs):
        address = logs.wait_for("serving")[0]["address"]
        before = _peak_rss_kb(process.pid)
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(pb.ClassifyRequest(images=[bytes(INFLATED_BYTES)]), timeout=30,
                              compression=grpc.Compression.Gzip)
            assert refused.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                            grpc.StatusCode.UNIMPLEMENTED)
            answer = stub.Classify(pb.ClassifyRequest(images=[bytes(784)]), timeout=10)
            assert len(answer.results) == 1
        assert _peak_rss_kb(process.pid) - before < 30 * 1024


def _grpc_frame(message: bytes) -> bytes:
    return struct.pack(">?I", False, len(message)) + message


def test_a_deadline_centuries_away_is_no_deadline(settings, tmp_path):
    """gRPC's deadline as a clock time overflowed 64 bits of nanoseconds past 292 years: the
    native server took "grpc-timeout: 99999999H" (the header's largest) as already passed."""
    body = tmp_path / "request"
    body.write_bytes(_grpc_frame(pb.ClassifyRequest(images=[bytes(784)]).SerializeToString()))
    with running_server(settings) as server:
        for timeout in ("2562048H", "99999999H"):
            exchange = subprocess.run(
                ["curl", "-sv", "--http2-prior-knowledge", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-H", f"grpc-timeout: {timeout}", "--data-binary",
                 f"@{body}", "-o", "/dev/null",
                 f"http://127.0.0.1:{server.port}/fashion_mnist.v1.Classifier/Classify"],
                capture_output=True, text=True, timeout=30, check=True)
            assert "< grpc-status: 0" in exchange.stderr, (timeout, exchange.stderr[-600:])


def test_request_metadata_up_to_16_kb_is_taken(settings):
    """A large bearer token (a JWT with many claims): gRPC C++ refused request metadata over
    8 KB; grpcio refused some calls at random between 8 and 16 KB (its soft limit)."""
    with running_server(settings) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for _ in range(10):
            answer = stub.Classify(pb.ClassifyRequest(images=[bytes(784)]), timeout=10,
                                   metadata=(("x-claims", "c" * 12_000),))
            assert len(answer.results) == 1


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_what_clients_put_on_the_wire_writes_nothing_outside_the_json_log(
        model_repository, grpc_server, tls, pki):
    """gRPC's own log lines, which any client could cause, one a call or a connection:
    compressed calls refused (native) and failed TLS handshakes (both) each wrote a line of
    gRPC's format into a JSON log, without a token and with no bound."""
    flags = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)) if tls else ()
    with server_process(model_repository, "--workers", "1", "--http-port", "0",
                        "--grpc-server", grpc_server, "--poll-interval", "0",
                        *flags) as (_process, logs):
        address = logs.wait_for("serving")[0]["address"]
        host, port = address.rsplit(":", 1)
        for _ in range(3):
            with socket.create_connection((host, int(port))) as garbage:
                garbage.sendall(b"\x16\x03\x01\x00\x05hello" if tls else b"GET / HTTP/1.1\r\n\r\n")
                garbage.recv(100)
        credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes()) if tls else None
        with (grpc.secure_channel(address, credentials) if tls
              else grpc.insecure_channel(address)) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError):  # the native server refuses compression
                    stub.Classify(pb.ClassifyRequest(), timeout=5,
                                  compression=grpc.Compression.Gzip)
    stray = [line["text"] for line in logs.all_lines() if line["message"] is None]
    assert not stray, "lines outside the JSON log, whole:\n" + "\n".join(stray)


@pytest.mark.parametrize("repeated", ["outputs", "shape", "inputs"])
def test_a_refusal_costs_no_more_than_the_request_whatever_it_repeats(model_repository,
                                                                     grpc_server, repeated):
    """Each of 300,000 requested outputs was looked at (and named) before the first unknown
    one was refused: 1.5 s of the GIL and 64 MB for a 2.7 MB request; a shape of 1,000,000
    dimensions or 190,000 inputs was copied and printed whole for a message cut to 1,000
    characters (20 MB). What the server allocates in Python to refuse it stays near its size."""
    tensor = pb_v2.ModelInferRequest.InferInputTensor
    images = tensor(name="images", datatype="UINT8", shape=[1, 28, 28])
    request = {
        "outputs": pb_v2.ModelInferRequest(
            model_name="mlp", inputs=[images], raw_input_contents=[bytes(784)],
            outputs=[pb_v2.ModelInferRequest.InferRequestedOutputTensor(name="x")] * 300_000),
        "shape": pb_v2.ModelInferRequest(model_name="mlp", inputs=[
            tensor(name="images", datatype="UINT8", shape=[1] * 1_000_000)]),
        "inputs": pb_v2.ModelInferRequest(model_name="mlp", inputs=[images] * 190_000),
    }[repeated].SerializeToString()
    settings = local_settings(model_repository=model_repository, poll_interval=0,
                              grpc_server=grpc_server)
    with (running_server(settings) as server,
          grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel):
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        tracemalloc.start()
        try:
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, timeout=30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith({
        "outputs": "outputs['x']: model 'mlp' has no such output",
        "shape": "inputs['images'].shape: expected [N,28,28], got [1, 1, 1,",
        "inputs": "inputs: expected one input 'images', got ['images', 'images',"}[repeated])
    assert peak < 2 * len(request) + (1 << 20), (peak, len(request))  # grpcio: bytes twice
