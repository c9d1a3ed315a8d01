"""Which Python HTTP server library carries the REST transport: each candidate serves the same
WSGI app (no model: what the server library costs by itself), loaded by wrk (C, closed loop,
keep-alive) on 127.0.0.1, candidates alternating round by round; medians printed as markdown.

Scenarios: ``GET /v2/health/ready`` (a tiny JSON answer) at concurrency 32; ``POST`` an
Open-Inference-Protocol-shaped binary request (JSON header + uint8 pixels, Triton's binary
extension) of 1 image at concurrency 32 and of 64 images at concurrency 4, answered with a
binary FP32 [N,10] + INT64 [N] body; 1 image at concurrency 1 for the p50 latency.

Every candidate calls the app on the thread that read the request (no executor hop); uvicorn
is left out because a synchronous app under it needs one. Needs ``apt-get install wrk`` and the
candidates in the running Python (``pip install cheroot waitress gunicorn werkzeug granian``).

Usage: python bench/http_servers.py [--rounds 5] [--duration 4] [--threads 32]
       python bench/http_servers.py serve NAME PORT THREADS   (one server, used by the above)
"""

import argparse
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SERVERS = ("cheroot", "waitress", "werkzeug", "gunicorn-gthread", "granian-wsgi")
PORT = 18970
CLASSES = 10


def app(environ, start_response):
    """A stand-in for the REST transport: read the body, split header and tensor, answer."""
    if environ["REQUEST_METHOD"] == "GET":
        body = b'{"ready":true}'
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    header_length = int(environ["HTTP_INFERENCE_HEADER_CONTENT_LENGTH"])
    request = json.loads(data[:header_length])
    rows = request["inputs"][0]["shape"][0]
    pixels = np.frombuffer(data, np.uint8, offset=header_length).reshape(rows, 784)
    probabilities = np.full((rows, CLASSES), pixels.mean() / 2550, "<f4").tobytes()
    labels = np.zeros(rows, "<i8").tobytes()
    header = json.dumps({"model_name": "mlp", "model_version": "1", "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [rows, CLASSES],
         "parameters": {"binary_data_size": len(probabilities)}},
        {"name": "label", "datatype": "INT64", "shape": [rows],
         "parameters": {"binary_data_size": len(labels)}}]}).encode()
    body = header + probabilities + labels
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Inference-Header-Content-Length", str(len(header))),
                              ("Content-Length", str(len(body)))])
    return [body]


def serve(name: str, port: int, threads: int) -> None:
    host = "127.0.0.1"
    if name == "cheroot":
        from cheroot import wsgi

        wsgi.Server((host, port), app, numthreads=threads).safe_start()
    elif name == "waitress":
        import waitress

        waitress.serve(app, host=host, port=port, threads=threads, _quiet=True)
    elif name == "werkzeug":  # a thread per connection
        import logging

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        make_server(host, port, app, threaded=True).serve_forever()
    elif name == "gunicorn-gthread":
        from gunicorn.app.base import BaseApplication

        class Gunicorn(BaseApplication):
            def load_config(self):
                for key, value in {"bind": f"{host}:{port}", "workers": 1,
                                   "worker_class": "gthread", "threads": threads,
                                   "keepalive": 60, "loglevel": "warning"}.items():
                    self.cfg.set(key, value)

            def load(self):
                return app

        Gunicorn().run()
    elif name == "granian-wsgi":
        from granian import Granian

        sys.path.insert(0, str(Path(__file__).parent))
        Granian("http_servers:app", address=host, port=port, interface="wsgi", workers=1,
                blocking_threads=threads, log_enabled=False).serve()


def infer_body(images: int) -> tuple[bytes, int]:
    pixels = np.random.default_rng(0).integers(0, 256, (images, 784), np.uint8).tobytes()
    header = json.dumps({  # KServe's REST needs the id
        "id": "1",
        "inputs": [{"name": "images", "shape": [images, 28, 28], "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "label", "parameters": {"binary_data": True}}]})
    return header.encode() + pixels, len(header.encode())


def wrk_script(folder: Path, images: int) -> Path:
    body, header_length = infer_body(images)
    (folder / f"body{images}").write_bytes(body)
    script = folder / f"infer{images}.lua"
    script.write_text(
        f'local f = io.open("{folder / f"body{images}"}", "rb")\n'
        'wrk.method = "POST"\nwrk.body = f:read("*all")\nf:close()\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{header_length}"\n')
    return script


def need_wrk() -> None:
    """Both HTTP benchmarks drive wrk: without it they ended in a traceback after starting a
    server (FileNotFoundError: 'wrk')."""
    if shutil.which("wrk") is None:
        sys.exit(f"{Path(sys.argv[0]).name}: needs wrk, the HTTP load generator: apt-get install "
                 "wrk (Debian's package)")


def wrk(url: str, connections: int, duration: float, script: Path | None) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency", url]
    if script:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30,
                         check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors: {errors.group(0)}\n{out}")
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wait_listening(port: int, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(name: str, threads: int, duration: float, scripts: dict[int, Path]) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "serve", name, str(PORT), str(threads)])
    try:
        wait_listening(PORT)
        base = f"http://127.0.0.1:{PORT}"
        wrk(f"{base}/v2/health/ready", 32, 1, None)  # warm-up
        return {
            "ready c32 req/s": wrk(f"{base}/v2/health/ready", 32, duration, None)["rps"],
            "infer b1 c32 req/s": wrk(f"{base}/v2/models/m/infer", 32, duration,
                                      scripts[1])["rps"],
            "infer b64 c4 images/s": 64 * wrk(f"{base}/v2/models/m/infer", 4, duration,
                                              scripts[64])["rps"],
            "infer b1 c1 p50 ms": wrk(f"{base}/v2/models/m/infer", 1, duration,
                                      scripts[1])["p50_ms"],
        }
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS))
    args = parser.parse_args()
    need_wrk()
    results: dict[str, list[dict]] = {name: [] for name in args.servers}
    with tempfile.TemporaryDirectory() as folder:
        scripts = {images: wrk_script(Path(folder), images) for images in (1, 64)}
        for round_index in range(args.rounds):
            order = args.servers if round_index % 2 == 0 else args.servers[::-1]
            for name in order:
                results[name].append(measure(name, args.threads, args.duration, scripts))
                print(f"round {round_index + 1} {name}: {results[name][-1]}", file=sys.stderr)
    columns = list(next(iter(results.values()))[0])
    print(f"| server ({args.rounds} rounds, median) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, runs in results.items():
        medians = [statistics.median(run[column] for run in runs) for column in columns]
        print(f"| {name} | " + " | ".join(f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
                                           for value in medians) + " |")


if __name__ == "__main__":
    main()
