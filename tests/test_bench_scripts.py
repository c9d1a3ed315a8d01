"""The benchmark scripts refuse what they cannot measure in one line and a non-zero status: a
model repository or file that is not there, a port that is not a number, a server that does not
answer. They printed a Python traceback, or (bench/memory.py) a table of refused
connections and exit 0, a figure that could land in BENCHMARKS.md as if measured."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe is closed


@pytest.mark.parametrize(("script", "arguments", "said"), [
    ("memory.py", ["{missing}", "--rounds", "1", "--calls", "1", "--images", "1"],
     "the server exited"),
    ("drain.py", ["{missing}", "--rounds", "1", "--seconds", "1"], "the server exited"),
    ("soak.py", ["--model-repository", "{missing}", "--duration", "1", "--warmup", "0",
                 "--clients", "1"], "the server exited"),
    ("dataplane.py", ["--repository", "{missing}"], "{missing}"),
    ("ort_limit.py", ["{missing}/model.onnx", "--seconds", "0.1"], "{missing}/model.onnx"),
    ("grpc_floor.py", ["PORT"], "PORT"),
    ("score_v2.py", ["--target", "127.0.0.1:{closed}"], "UNAVAILABLE"),
])
def test_a_bench_script_refuses_in_one_line(tmp_path, script, arguments, said):
    missing = tmp_path / "no-such-repository"

    def filled(text: str) -> str:
        return text.format(missing=missing, closed=_closed_port())

    result = subprocess.run([sys.executable, str(BENCH / script), *map(filled, arguments)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "| round |" not in result.stdout  # no table of a server that never answered
    assert filled(said) in result.stderr.strip().splitlines()[-1], result.stderr


def test_dataplane_measures_every_step(model_repository):
    """bench/dataplane.py on a repository it can serve: a row per step, onnxruntime's alone
    too (its "onnxruntime alone" step called an attribute the model version no longer has,
    and the script died after the first rows' warm-up)."""
    result = subprocess.run([sys.executable, str(BENCH / "dataplane.py"), "--repository",
                             str(model_repository), "--batches", "1", "--calls", "10"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()[2:]]
    assert rows == ["parse the request (protobuf)", "decode (codecs)",
                    "predict (batcher + onnxruntime)", "onnxruntime alone", "encode (codecs)",
                    "serialize the response", "all: parse, ModelInfer, serialize"]


@pytest.mark.parametrize("server", ["ours", "mlserver"])
def test_http_load_says_why_a_server_did_not_start(tmp_path, server):
    """bench/http_load.py sent its servers' output to /dev/null: a server that could not start
    (ours on a repository that is not there; a peer whose venv bench/peers/setup.sh did not
    make) was "the server exited with status 1 before it was ready", never why. Its start is
    called alone: the script itself first needs wrk, which the test run does not install."""
    missing = tmp_path / "no-such-repository"
    if server == "mlserver":  # a repository that is there, with no peer venv beside it
        subprocess.run([sys.executable, str(BENCH / "stand_in_model.py"), "--out",
                        str(missing)], check=True, capture_output=True, timeout=120)
        peers = BENCH / "peers" / "serve.sh"
        script = tmp_path / "bench" / "peers" / "serve.sh"  # its ../../.work/peers: none
        script.parent.mkdir(parents=True)
        script.write_bytes(peers.read_bytes())
        script.chmod(0o755)
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import http_load; http_load.ROOT = Path(sys.argv[3]); "
            "http_load.start(sys.argv[4], Path(sys.argv[2]))")
    result = subprocess.run([sys.executable, "-c", code, str(BENCH), str(missing),
                             str(tmp_path if server == "mlserver" else BENCH.parent), server],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{server}: the server exited with status ")
    said = str(missing) if server == "ours" else ".work/peers/mlserver/bin/mlserver"
    assert said in line.partition("before it was ready")[2], line
