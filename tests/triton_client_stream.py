"""Runs tritonclient's stream (``start_stream`` + ``async_stream_infer``) against a server that
serves ``fragile`` (tests/fragile_model.py) and writes what its callback was given, in order,
as one JSON document; ``tests/test_triton_client.py`` runs it with .venv-triton's Python and
checks it.

Usage: python triton_client_stream.py HOST:PORT IMAGES.npy OUT.json
IMAGES.npy holds two images: one fragile's run answers, then one on which it fails.
"""

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as sync_client
from triton_client_checks import answer, images_input
from tritonclient.utils import InferenceServerException

ANSWER_WAIT_S = 10


def stream_checks(target: str, fine: np.ndarray, failing: np.ndarray) -> dict:
    """Three requests whose middle one fails, then a fourth once their answers came; the same
    with the middle one refused for its shape; all on one stream."""
    client = sync_client.InferenceServerClient(target)
    given = queue.Queue()
    client.start_stream(lambda result, error: given.put((result, error)))

    def send(*requests: tuple[str, np.ndarray]) -> list[dict]:
        try:
            for request_id, images in requests:
                client.async_stream_infer("fragile", [images_input(sync_client, images)],
                                          request_id=request_id)
        except InferenceServerException as error:  # the stream has ended
            return [{"not sent": error.message()}]
        return [next_given() for _ in requests]

    def next_given() -> dict:
        try:
            return seen(*given.get(timeout=ANSWER_WAIT_S))
        except queue.Empty:
            return {"not answered": f"within {ANSWER_WAIT_S} s"}

    out = {"failed run": send(("a", fine), ("b", failing), ("c", fine)),
           "after the failed run": send(("d", fine)),
           "wrong shape": send(("e", fine), ("f", fine.reshape(1, 784)), ("g", fine)),
           "after the wrong shape": send(("h", fine))}
    client.stop_stream()
    client.close()
    return out


def seen(result, error) -> dict:
    if error is None:
        return answer(result)
    return {"error": error.message(), "status": str(error.status()),
            "type": type(error).__name__}


def main() -> None:
    target, images_path, out_path = sys.argv[1:4]
    images = np.load(images_path)
    with open(out_path, "w") as file:
        json.dump(stream_checks(target, images[:1], images[1:2]), file)


if __name__ == "__main__":
    main()
