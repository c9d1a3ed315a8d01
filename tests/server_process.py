"""What tests/test_workers.py and tests/test_workers_start_up.py read of a server process:
its JSON log lines (``Logs``) and its child processes (``children``)."""

import json
import os
import threading
from pathlib import Path


class Logs:
    """The server's JSON log lines, read on a thread so that the pipe never fills."""

    def __init__(self, stream):
        self.lines: list[dict] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self._changed:
                self.lines.append(json.loads(line))
                self._changed.notify_all()

    def wait_for(self, message: str, count: int = 1, timeout: float = 60) -> list[dict]:
        with self._changed:
            found = self._changed.wait_for(
                lambda: len(self.matching(message)) >= count, timeout=timeout)
            assert found, f"no {message!r} log line in {self.lines}"
            return self.matching(message)

    def matching(self, message: str) -> list[dict]:
        return [line for line in self.lines if line["message"] == message]


def children(pid: int) -> list[int]:
    return [int(child) for task in os.listdir(f"/proc/{pid}/task")
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
