"""This server's HTTP side under load, beside MLServer 1.7.1's and KServe 0.21's REST on the
same ONNX file: wrk (C, closed loop, keep-alive, 127.0.0.1) posting Open Inference Protocol
binary requests (what tritonclient.http sends) and JSON ones to each server in turn, servers
alternating round by round; medians printed as markdown, with our ratio to the faster peer.

Ours runs as ``python -m serving --workers 1`` (default settings otherwise: the real
transport, pipeline and data plane); the peers through bench/peers/serve.sh (venvs from
bench/peers/setup.sh). The model is a stand-in of the real size (bench/stand_in_model.py)
unless ``--repository`` names a repository. A scenario a peer does not serve (an error
answer) shows as "-". A server that does not start stops the script, with its last line.

Usage: python bench/http_load.py [--repository DIR] [--duration 5] [--rounds 3]
                                 [--servers ours mlserver kserve]
"""

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from http_servers import infer_body, need_wrk, wrk
from startup import free_port, http_ready, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
PORT = 18975  # the peers': bench/peers/serve.sh puts HTTP on gRPC's + 1
SCENARIOS = (("binary", 1, 32), ("binary", 64, 4), ("binary", 1, 1), ("json", 1, 32),
             ("json", 64, 4))
PEERS = ("mlserver", "kserve")


def script(folder: Path, kind: str, images: int) -> Path:
    """A wrk Lua script posting one infer request body."""
    if kind == "binary":
        body, header_length = infer_body(images)
        header = f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"\n'
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (images, 28, 28), np.uint8)
        body = json.dumps({"id": "1", "inputs": [{"name": "images", "datatype": "UINT8",
                                       "shape": [images, 28, 28],
                                       "data": pixels.ravel().tolist()}]}).encode()
        header = 'wrk.headers["Content-Type"] = "application/json"\n'
    path = folder / f"{kind}{images}"
    path.write_bytes(body)
    lua = folder / f"{kind}{images}.lua"
    lua.write_text(f'local f = io.open("{path}", "rb")\nwrk.method = "POST"\n'
                   f'wrk.body = f:read("*all")\nf:close()\n{header}')
    return lua


def start(name: str, repository: Path) -> tuple[subprocess.Popen, int]:
    """Starts ``name`` and waits until it says ready; returns it and its HTTP port. A server
    that does not start is one line (SystemExit) ending with the last it said."""
    if name == "ours":  # -m imports the checkout's serving from ROOT first; a free port: a
        port = free_port()  # server left on a fixed one would answer for it
        command = [sys.executable, "-m", "serving", "--model-repository", str(repository),
                   "--host", "127.0.0.1", "--port", "0", "--http-port", str(port), "--workers",
                   "1", "--poll-interval", "0", "--log-level", "WARNING"]
    else:  # serve.sh puts HTTP on the gRPC port + 1
        command = [str(ROOT / "bench" / "peers" / "serve.sh"), name,
                   str(repository / "mlp" / "1" / "model.onnx"), str(PORT + 10)]
        port = PORT + 11
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    tail = collections.deque(maxlen=16)  # its output read as it comes (a peer logs each call)
    reader = threading.Thread(target=tail.extend, daemon=True,
                              args=(iter(lambda: server.stdout.read1(1 << 16), b""),))
    reader.start()
    try:
        wait_until_ready(server, lambda: http_ready(port), 120, 0.2)
    except SystemExit as failure:
        reader.join(5)
        said = b"".join(tail).decode(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"{name}: {failure}{': ' + said[0] if said else ''}") from None
    return server, port


def measure(name: str, repository: Path, scripts: dict, duration: float) -> dict:
    server, port = start(name, repository)
    try:
        url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
        results = {}
        for kind, images, connections in SCENARIOS:
            try:
                wrk(url, connections, 1, scripts[kind, images])  # warm-up
                results[kind, images, connections] = wrk(url, connections, duration,
                                                         scripts[kind, images])
            except (RuntimeError, subprocess.CalledProcessError):
                results[kind, images, connections] = None
        return results
    finally:
        server.terminate()
        server.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", nargs="+", default=["ours", *PEERS])
    args = parser.parse_args()
    need_wrk()
    runs: dict[str, list[dict]] = {name: [] for name in args.servers}
    with tempfile.TemporaryDirectory() as folder:
        repository = args.repository or Path(folder) / "models"
        if args.repository is None:
            subprocess.run([sys.executable, str(ROOT / "bench" / "stand_in_model.py"), "--out",
                            str(repository)], check=True, capture_output=True)
        scripts = {(kind, images): script(Path(folder), kind, images)
                   for kind, images, _ in SCENARIOS}
        for round_index in range(args.rounds):
            order = args.servers if round_index % 2 == 0 else args.servers[::-1]
            for name in order:
                runs[name].append(measure(name, repository, scripts, args.duration))
                print(f"round {round_index + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    print(f"| server | request | batch | connections | req/s | images/s | p50 ms | req/s / "
          f"faster peer |  ({args.rounds} rounds, median)")
    print("|---|---|---|---|---|---|---|---|")
    medians = {name: {scenario: _median([run[scenario] for run in results])
                      for scenario in SCENARIOS} for name, results in runs.items()}
    for name in args.servers:
        for scenario in SCENARIOS:
            kind, images, connections = scenario
            figures = medians[name][scenario]
            if figures is None:
                print(f"| {name} | {kind} | {images} | {connections} | - | - | - | - |")
                continue
            peers = [medians[peer][scenario]["rps"] for peer in PEERS
                     if peer in medians and medians[peer][scenario] is not None]
            ratio = f"{figures['rps'] / max(peers):.2f}" if peers and name == "ours" else ""
            print(f"| {name} | {kind} | {images} | {connections} | {figures['rps']:,.0f} | "
                  f"{figures['rps'] * images:,.0f} | {figures['p50_ms']:.2f} | {ratio} |")


def _median(results: list[dict | None]) -> dict | None:
    measured = [result for result in results if result is not None]
    if not measured:
        return None
    return {key: statistics.median(result[key] for result in measured)
            for key in ("rps", "p50_ms")}


if __name__ == "__main__":
    main()
