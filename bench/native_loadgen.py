"""Builds and runs bench/loadgen.cc, the C++ closed-loop load generator, reporting as loadgen.py.

Why: bench/loadgen.py spends ~0.28 ms of CPU per call, and on a 2-core machine the client
shares the cores with the server it measures; the C++ client leaves more of them to the server.

- ``build()`` compiles bench/loadgen.cc into .work/bin/loadgen when missing or stale;
- ``request_files()`` writes the serialized requests it sends, made by loadgen_requests.py;
- ``run()`` runs it and returns the dict ``loadgen.py --json`` prints (same keys), with the
  server's CPU sampled over the client's own measured window.
"""

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from loadgen_requests import (
    DOMAIN_METHOD,
    V2_METHOD,
    Plan,
    build_requests,
    check_answer,
)
from proc_cpu import process_tree, tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "bench" / "loadgen.cc"
BINARY = ROOT / ".work" / "bin" / "loadgen"
INSTALL_HINT = "apt-get install g++ pkg-config libgrpc++-dev"
DEADLINE_S = 10.0  # per call
# what the binary writes on stderr as its measured window opens and closes
WINDOW_START, WINDOW_END = "loadgen: window start", "loadgen: window end"


def build() -> Path:
    """The path of the binary, compiled first if it is missing or older than its source."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    if not (shutil.which("g++") and shutil.which("pkg-config")):
        raise SystemExit(f"building {SOURCE} needs g++ and pkg-config: {INSTALL_HINT}")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++", "grpc"],
                           capture_output=True, text=True, check=False)
    if flags.returncode:
        raise SystemExit(f"pkg-config finds no gRPC C++ ({flags.stderr.strip()}): {INSTALL_HINT}")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    partial = BINARY.with_name(f"{BINARY.name}.{os.getpid()}.partial")  # renamed when complete
    compiled = subprocess.run(
        ["g++", "-O2", "-std=c++17", str(SOURCE), "-o", str(partial), *flags.stdout.split()],
        capture_output=True, text=True, check=False, timeout=300)
    if compiled.returncode:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"g++ failed on {SOURCE} ({INSTALL_HINT}?):\n{compiled.stderr}")
    partial.replace(BINARY)
    return BINARY


def _plan(api: str, model: str, batch: int) -> Plan:
    """A loadgen.py plan for its request builder and answer check (only these fields count)."""
    if api not in ("v2", "domain"):
        raise ValueError(f"api must be 'v2' or 'domain', got {api!r}")
    return Plan(target="", api=api, model=model, batch=batch, concurrency=1, warmup_s=0,
                duration_s=0, decode=False, timeout_s=DEADLINE_S, seed=0)


def request_files(api: str, model: str, batch: int, directory: Path) -> list[Path]:
    """Writes the distinct requests (seeded random uint8 images) one per file, as loadgen.py
    builds them: v2 ``ModelInferRequest`` (raw UINT8 [batch,28,28]) or ``ClassifyRequest``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index, request in enumerate(build_requests(_plan(api, model, batch))):
        path = directory / f"{api}-{model}-b{batch}-{index}.bin"
        path.write_bytes(request)
        files.append(path)
    return files


class _StderrLines:
    """The binary's stderr, line by line, read by a thread so that waiting can time out."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.other: list[str] = []  # anything besides the window markers, for error messages
        self.reader = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, marker: str, deadline: float) -> bool:
        """True once ``marker`` is read; False if the binary closed stderr (ended) before."""
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                self.lines.put(None)  # keep the end visible to later waits
                return False
            if line == marker:
                return True
            self.other.append(line)

    def rest(self) -> str:
        """Everything else the binary wrote on stderr, once it has ended."""
        self.reader.join(5)
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line is not None and line not in (WINDOW_START, WINDOW_END):
                self.other.append(line)
        return "\n".join(self.other)


def run(target: str, api: str, model: str, batch: int, *, concurrency: int, warmup_s: float,
        duration_s: float, channels: int, server_pid: int | None = None) -> dict:
    """One closed-loop run of the C++ load generator; the keys of ``loadgen.py --json``.

    A lone caller (concurrency 1) uses one connection whatever ``channels`` says. With
    ``server_pid``, the CPU of that process and its descendants is read from /proc when the
    binary opens and closes its window. Errors are counted by status code; a caller whose
    first answer failed counts as ``"first answer CODE"``. Raises ValueError if the first
    answer is OK but not ``batch`` classifications, as loadgen.py does.
    """
    binary = build()
    plan = _plan(api, model, batch)
    with tempfile.TemporaryDirectory(prefix="native-loadgen-") as work:
        first_answer = Path(work) / "first-answer.bin"
        command = [str(binary), "--target", target,
                   "--method", V2_METHOD if api == "v2" else DOMAIN_METHOD,
                   "--concurrency", str(concurrency), "--warmup", str(warmup_s),
                   "--duration", str(duration_s), "--channels", str(channels),
                   "--deadline-ms", str(int(DEADLINE_S * 1000)),
                   "--first-answer", str(first_answer),
                   *map(str, request_files(api, model, batch, Path(work)))]
        # connecting and the last calls may each take a deadline; then a margin
        deadline = time.monotonic() + warmup_s + duration_s + 2 * DEADLINE_S + 30
        server_pids = process_tree([server_pid]) if server_pid else []
        server_cpu = None
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            stderr = _StderrLines(process)
            if stderr.wait_for(WINDOW_START, deadline):
                before = tree_cpu_seconds(server_pids)
                if stderr.wait_for(WINDOW_END, deadline):
                    server_cpu = tree_cpu_seconds(server_pids) - before
            process.wait(max(0.0, deadline - time.monotonic()))
        except (queue.Empty, subprocess.TimeoutExpired):
            raise SystemExit(f"{binary} did not finish in time: killed") from None
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = process.stdout.read()
        process.stdout.close()
        if process.returncode:
            raise SystemExit(f"{binary} failed (exit {process.returncode}):\n{stderr.rest()}")
        measured = json.loads(output.splitlines()[-1])
        if first_answer.stat().st_size:
            check_answer(plan, first_answer.read_bytes())
    requests = measured["requests"]

    def milliseconds(key: str) -> float:
        return float("nan") if measured[key] is None else measured[key]

    return {
        "target": target, "api": api, "model": model, "batch": batch,
        "concurrency": concurrency, "processes": 1, "channels": measured["channels"],
        "duration_s": duration_s, "requests": requests, "errors": measured["errors"],
        "requests_per_s": requests / duration_s, "images_per_s": requests * batch / duration_s,
        "p50_ms": milliseconds("p50_ms"), "p90_ms": milliseconds("p90_ms"),
        "p99_ms": milliseconds("p99_ms"),
        "client_cpu_s": measured["client_cpu_s"],
        "client_cpu_ms_per_request": measured["client_cpu_ms_per_request"],
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_request": (1e3 * server_cpu / requests
                                      if requests and server_cpu is not None else None),
        "loadavg_1m": os.getloadavg()[0],
    }
