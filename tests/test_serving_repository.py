"""Loading the model repository, and the server refusing one it cannot vouch for."""

import gc
import hashlib
import json
import shutil
import subprocess
import sys
import weakref

import numpy as np
import onnx
import pytest

from common.contract import MANIFEST, MODEL_FILE
from serving import cli, native
from serving.errors import NotFound
from serving.repository import load_repository
from tests.conftest import rewrite_manifest

pytestmark = pytest.mark.usefixtures("restore_logging")  # cli.main sets up logging


def test_loads_every_version_and_ignores_hidden_and_non_model_directories(model_repository,
                                                                          policy):
    registry = load_repository(model_repository, policy)
    assert registry.names == ["baseline", "mlp", "softmax"]
    assert registry.versions("mlp") == [1, 2]
    assert registry.get("mlp").version == 2
    assert registry.get("mlp", 1).version == 1
    assert [(m.name, m.version) for m in registry.list()] == [
        ("baseline", 1), ("mlp", 1), ("mlp", 2), ("softmax", 1)]
    with pytest.raises(NotFound, match="no model 'reports'"):
        registry.get("reports")
    with pytest.raises(NotFound, match="model 'mlp' has no version 7; loaded versions: 1, 2"):
        registry.get("mlp", 7)



def test_a_removed_version_is_freed_when_its_last_call_lets_go_not_at_a_full_gc(
        model_repository, policy):
    """Each version's batcher held its ``_run``, a method bound to it: a cycle, so a version the
    watcher unloaded (its onnxruntime session, MBs) stayed in memory until the garbage
    collector's next full pass (70 rollouts took a worker from 105 to 221 MB RSS)."""
    registry = load_repository(model_repository, policy)
    version = registry.get("mlp", 1)
    version.predict(np.zeros((2, 28, 28), np.uint8))
    freed = weakref.ref(version)
    gc.disable()  # only reference counting frees it, as between a server's rare full passes
    try:
        registry.remove("mlp", 1)
        del version
        assert freed() is None
    finally:
        gc.enable()

def test_predict_runs_the_graph_with_its_preprocessing(model_repository, policy,
                                                             test_set):
    import onnxruntime

    model = load_repository(model_repository, policy).get("softmax")
    images = test_set[0][:50]
    prediction = model.predict(images)
    session = onnxruntime.InferenceSession(model_repository / "softmax/1/model.onnx")
    probabilities, labels = session.run(["probabilities", "label"], {"images": images})
    np.testing.assert_array_equal(prediction.probabilities, probabilities)
    np.testing.assert_array_equal(prediction.labels, labels)
    assert prediction.probabilities.shape == (50, 10)


def _damage(root, case: str):
    version = root / "mlp" / "2"
    if case == "missing":
        return root / "nowhere"
    if case == "empty":
        (root / "empty").mkdir()
        return root / "empty"
    if case == "sha256 mismatch":
        model = version / MODEL_FILE
        model.write_bytes(model.read_bytes() + b"\0")
    elif case == "bad json":
        (version / MANIFEST).write_text("{not json")
    elif case == "missing key":
        document = json.loads((version / MANIFEST).read_text())
        del document["sha256"]
        (version / MANIFEST).write_text(json.dumps(document))
    elif case == "wrong version":
        rewrite_manifest(version / MANIFEST, version=5)
    elif case == "missing model file":
        (version / MODEL_FILE).unlink()
    elif case == "a Triton repository":  # config.pbtxt beside the versions, no model.json
        (version / MANIFEST).unlink()
        (version.parent / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    elif case == "input not the contract's":
        rewrite_manifest(version / MANIFEST, inputs=[
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]}])
    elif case == "graph differs from manifest":  # its input renamed, the sha256 made to match
        graph = onnx.load(version / MODEL_FILE)
        graph.graph.input[0].name = "pixels"
        for node in graph.graph.node:
            node.input[:] = ["pixels" if name == "images" else name for name in node.input]
        onnx.save(graph, version / MODEL_FILE)
        digest = hashlib.sha256((version / MODEL_FILE).read_bytes()).hexdigest()
        rewrite_manifest(version / MANIFEST, sha256=digest)
    elif case == "no baseline":
        for path in sorted((root / "baseline").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "baseline").rmdir()
    return root


REFUSALS = {
    # `fmnist-serve` run before any training, or away from the checkout: no hint of what makes
    # one, where an empty repository's line said "run fmnist-train"
    "missing": "does not exist or is not a directory (fmnist-train --out DIR makes one)",
    "empty": "holds no model versions",
    "sha256 mismatch": "mlp/2/model.onnx: sha256 ",
    "bad json": "mlp/2/model.json: not valid JSON",
    "missing key": "mlp/2/model.json: missing key(s) sha256",
    "wrong version": "names mlp/5, expected mlp/2",
    "missing model file": "mlp/2/model.onnx: missing",
    # a Triton user's repository: "model.json: missing" said nothing of what reads config.pbtxt
    "a Triton repository": "mlp/2/model.json: missing (mlp/config.pbtxt is Triton's and is not "
                           "read: fmnist-train writes model.json, see README's 'From Triton')",
    "input not the contract's": "expected one UINT8 [-1,28,28] input 'images'",
    "graph differs from manifest": "graph inputs ['pixels'] differ from model.json's ['images']",
    "no baseline": "model repository has no 'baseline' model (found: mlp, softmax)",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_cli_refuses_a_repository_it_cannot_serve_with_one_line(case, repository_copy, capsys):
    # A damaged version is refused and the others serve, so mlp/2 is made the only mlp version.
    shutil.rmtree(repository_copy / "mlp" / "1")
    root = _damage(repository_copy, case)
    # One process: forking workers from pytest, whose gRPC threads are running, can deadlock.
    status = cli.main(["--model-repository", str(root), "--host", "127.0.0.1", "--port", "0",
                       "--workers", "1"])
    error_lines = [line for line in capsys.readouterr().err.splitlines()
                   if " INFO " not in line and "model version refused" not in line
                   and "model repository entry skipped" not in line]
    assert status == 1
    assert len(error_lines) == 1, error_lines
    assert error_lines[0].startswith("fmnist-serve: error: ")
    assert REFUSALS[case] in error_lines[0]


def test_load_repository_refuses_a_tampered_version_and_loads_the_rest(repository_copy,
                                                                      policy):
    _damage(repository_copy, "sha256 mismatch")
    registry = load_repository(repository_copy, policy)
    assert registry.versions("mlp") == [1]
    assert "the file changed after it was written" in registry.refused[("mlp", 2)]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_with_json_logs_every_line_is_json_the_fatal_one_too(tmp_path, workers):
    """It ended with a plain "fmnist-serve: error: ..." line that a log pipeline reading one
    JSON object per line could not parse; every line names its process."""
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(tmp_path / "none"),
         "--port", "0", "--log-format", "json", "--workers", workers],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert (lines[-1]["level"], lines[-1]["message"], lines[-1]["error"]) == (
        "CRITICAL", "cannot serve",
        f"model repository {tmp_path / 'none'} does not exist or is not a directory "
        "(fmnist-train --out DIR makes one)")
    assert all(isinstance(line["pid"], int) for line in lines)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unexpected_start_failure_is_logged_as_json_and_names_its_cause(model_repository,
                                                                           workers):
    """Out of threads (a pids or address-space limit: here 1,000 call threads of 8 MiB stacks
    in 4 GiB), the native server's stop joined threads it never started: the cause was
    "cannot join thread before it is started", and Python's tracebacks came as plain lines
    in a JSON log, from a worker or the single process."""
    if not native.available() or not shutil.which("prlimit"):
        pytest.skip("needs the native gRPC server and util-linux's prlimit")
    limits = ["prlimit", f"--as={4 * 2**30}", f"--stack={8 * 2**20}"]  # 1,000 stacks: 8 GiB
    result = subprocess.run(
        [*limits, sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--host", "127.0.0.1", "--port", "0", "--http-port", "0", "--grpc-server", "native",
         "--call-threads", "1000", "--log-format", "json", "--workers", workers],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    failures = [line for line in lines if line["level"] == "CRITICAL"]
    assert failures and all("RuntimeError: can't start new thread" in line.get(
        "exception", "") + line.get("error", "") for line in failures), failures
    assert "cannot join" not in result.stderr


def test_server_process_exits_non_zero_with_one_line_for_a_missing_repository(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(tmp_path / "none"),
         "--port", "0"],  # 50051 may be taken (./run serve in another terminal)
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fmnist-serve: error: model repository {tmp_path / 'none'} does not exist or is not a "
        "directory (fmnist-train --out DIR makes one)"]


def test_start_up_skips_what_the_watcher_skips_and_says_why(repository_copy, policy, caplog):
    """A version 0 is skipped with a warning at start-up, as the watcher skips it later: it
    never stops a server that would serve once started. (A model folder that cannot be read,
    such as a volume's lost+found, goes the same way; as root, none fails here.)"""
    shutil.copytree(repository_copy / "mlp" / "1", repository_copy / "mlp" / "0")
    registry = load_repository(repository_copy, policy)
    assert registry.versions("mlp") == [1, 2]
    assert [record.fields["reason"] for record in caplog.records
            if record.getMessage() == "model repository entry skipped"] == [
        f"{repository_copy / 'mlp' / '0'}: a version is a number from 1 to 2**63-1, no leading 0"]


def test_a_triton_config_beside_the_versions_is_named_as_not_read(repository_copy, policy,
                                                                   caplog):
    """A config.pbtxt kept beside model.json versions: its version policy (Triton's default,
    latest 1) and max_batch_size were silently not applied. Start-up says so."""
    (repository_copy / "mlp" / "config.pbtxt").write_text("version_policy: { latest: {} }\n")
    registry = load_repository(repository_copy, policy)
    assert registry.versions("mlp") == [1, 2]
    assert [record.fields["reason"] for record in caplog.records
            if record.getMessage() == "model repository entry skipped"] == [
        f"{repository_copy / 'mlp' / 'config.pbtxt'}: Triton's model configuration, not read: "
        "every version with a model.json serves, settings are flags (README's 'From Triton')"]


def test_a_version_past_int64_or_with_a_leading_0_is_skipped_not_served(repository_copy, policy,
                                                                        caplog):
    """The protocols' versions are int64: a version 99999999999999999999 loaded, then every
    call naming no version crashed INTERNAL (the newest could not be encoded); and "02" was
    version 2 too, which of the two directories served decided by the listing's order."""
    for name in ("99999999999999999999", "9" * 250, "02"):  # 255: a file name's most
        shutil.copytree(repository_copy / "mlp" / "1", repository_copy / "mlp" / name)
    registry = load_repository(repository_copy, policy)
    assert registry.versions("mlp") == [1, 2]
    assert {record.fields["reason"] for record in caplog.records
            if record.getMessage() == "model repository entry skipped"} == {
        f"{repository_copy / 'mlp' / name}: a version is a number from 1 to 2**63-1, no leading 0"
        for name in ("99999999999999999999", "9" * 250, "02")}
