"""The native server's idle spin (server.cc, ``kSpin``): a pool thread that finds no call spins
a while before it sleeps, and the next new call is its own, no sleeping thread woken for it.
Every other call must still wake a thread."""

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from serving.grpc_transport import grpc_server as make_grpc_server
from tests.echo_service import started

CLIENTS, ROUNDS = 3, 300


def test_calls_arriving_together_during_a_spin_are_each_taken_by_a_thread():
    """Rounds of 3 calls sent at once, each from a client of its own, as soon as the round
    before has ended (within the spin): each call's handler waits at a barrier for the round's
    other calls, so a call left in the queue, its thread never woken, fails its round (the
    barrier times out)."""
    barriers: dict[bytes, threading.Barrier] = {}
    round_ended = threading.Barrier(CLIENTS)

    def meet(name: bytes, context: grpc.ServicerContext) -> bytes:
        barriers.setdefault(name, threading.Barrier(CLIENTS)).wait(timeout=5)
        return name

    def client(port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            meet_call = channel.unary_unary("/test.Spin/Meet")
            meet_call(b"warm-up", timeout=10)
            for index in range(ROUNDS):
                name = f"round {index}".encode()
                assert meet_call(name, timeout=10) == name
                round_ended.wait(timeout=10)

    handler = grpc.method_handlers_generic_handler(
        "test.Spin", {"Meet": grpc.unary_unary_rpc_method_handler(meet)})
    server = make_grpc_server("native", 8, [], 1 << 20, reuse_port=False, max_running=8)
    port = started(server, handler)
    try:
        with ThreadPoolExecutor(CLIENTS) as clients:
            for done in [clients.submit(client, port) for _ in range(CLIENTS)]:
                done.result()
    finally:
        server.stop(0).wait()
