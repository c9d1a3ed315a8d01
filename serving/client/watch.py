"""The watch over a ClassifyStream call's answers that makes ``classify_batches``'s timeout one
per answer: gRPC's deadline is the whole stream's."""

import threading
import time

import grpc


class AnswerWatch:
    """Cancels ``call`` once an answer awaited since ``since`` (None: none awaited) has not
    come in ``seconds``, saying so in ``fired``; one thread for the whole stream."""

    def __init__(self, call: grpc.Call, seconds: float):
        self.call, self.seconds = call, seconds
        self.since: float | None = None
        self.fired = False
        self.ended = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            since = self.since
            left = self.seconds if since is None else since + self.seconds - time.monotonic()
            if left <= 0:
                self.fired = True
                self.call.cancel()
                return
            if self.ended.wait(left):
                return
