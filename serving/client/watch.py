"""The watch over a ClassifyStream call's answers that makes ``classify_batches``'s timeout one
per answer: gRPC's deadline is the whole stream's."""

import threading
import time

import grpc


class AnswerWatch:
    """Cancels ``call`` once an answer has not come ``seconds`` after both its request went
    (``sent``: each request's time, appended as it goes) and the caller began to wait for it
    (``awaited``: the answer's index and since when, None while the caller has an answer),
    saying so in ``fired``; one thread for the whole stream. A caller's generator slower than
    ``seconds`` to make its next batch was said to be a server that did not answer."""

    def __init__(self, call: grpc.Call, seconds: float, sent: list[float]):
        self.call, self.seconds, self.sent = call, seconds, sent
        self.awaited: tuple[int, float] | None = None
        self.fired = False
        self.ended = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            awaited, left = self.awaited, self.seconds  # (nothing due: a look again after it)
            if awaited is not None and len(self.sent) > awaited[0]:
                since = max(awaited[1], self.sent[awaited[0]])
                left = since + self.seconds - time.monotonic()
            if left <= 0:
                self.fired = True
                self.call.cancel()
                return
            if self.ended.wait(left):
                return
