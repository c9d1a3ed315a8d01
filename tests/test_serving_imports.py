"""``serving`` runs without TensorFlow, Keras, scikit-learn, onnx or the training package, and
the client's command line starts without numpy or onnxruntime (``fmnist health`` stays fast);
without the native gRPC server built, it serves with grpcio and says how to build it."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.server_process import server_process

BLOCKER = textwrap.dedent("""
    import importlib, pkgutil, sys

    BLOCKED = {"tensorflow", "keras", "sklearn", "onnx", "training"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)


def test_every_serving_module_imports_with_tensorflow_keras_sklearn_blocked():
    result = run_python(BLOCKER + textwrap.dedent("""
        import serving
        names = [m.name for m in pkgutil.walk_packages(serving.__path__, "serving.")
                 if not m.name.endswith("__main__")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print(len(names), "modules")
    """))
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 15


def test_the_blocker_does_block():
    result = run_python(BLOCKER + "import sklearn\n")
    assert result.returncode != 0
    assert "sklearn is blocked in this test" in result.stderr


def test_client_command_line_imports_nothing_heavy():
    result = run_python(textwrap.dedent("""
        import sys
        import serving.client.cli
        heavy = sorted({"numpy", "onnxruntime", "grpc", "PIL"} & set(sys.modules))
        assert not heavy, heavy
    """))
    assert result.returncode == 0, result.stderr


def test_onnxruntime_sends_no_telemetry_and_writes_nothing_under_home(tmp_path,
                                                                      model_repository):
    """onnxruntime 1.29+ kept a device id and an event cache under $HOME/.cache for its
    uploads to Microsoft; the server (a process of its own, a call served) and training's
    onnxruntime use turn that off."""
    home = tmp_path / "home"
    home.mkdir()
    environ = {name: value for name, value in os.environ.items()
               if name != "ORT_DISABLE_TELEMETRY"}
    model = model_repository / "mlp" / "1" / "model.onnx"
    for package in ("serving", "training"):
        result = subprocess.run(
            [sys.executable, "-c", f"import {package}, numpy, onnxruntime\n"
             f"session = onnxruntime.InferenceSession({str(model)!r})\n"
             "session.run(None, {'images': numpy.zeros((1, 28, 28), numpy.uint8)})\n"
             "print(session.get_inputs()[0].name)"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**environ, "HOME": str(home)})
        assert result.returncode == 0, result.stderr
        assert list(home.rglob("*")) == [], package


@pytest.mark.parametrize("extension, state", [
    (None, "not built"),
    (b"not an ELF file", "built but cannot be loaded"),  # a stale or foreign build
])
def test_a_tree_without_the_native_server_says_plainly_how_to_build_it(
        model_repository, tmp_path, monkeypatch, extension, state):
    """The start-up warning quoted Python's ImportError, "cannot import name '_server' from
    partially initialized module 'serving.native' (most likely due to a circular import)",
    which a newcomer read as a bug; one that could not be loaded was said to be "not built".
    Here the server runs from a copy of the tree without the built extension, or with one
    that cannot be loaded."""
    root = Path(__file__).resolve().parent.parent
    for package in ("serving", "common"):
        shutil.copytree(root / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("_server*.so", "__pycache__"))
    if extension is not None:
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        (tmp_path / "serving" / "native" / f"_server{suffix}").write_bytes(extension)
    monkeypatch.chdir(tmp_path)  # python -m serving imports the copy
    with server_process(model_repository, "--workers", "1", "--http-port", "0") as (_, logs):
        assert logs.wait_for("serving")[0]["transport"] == "grpcio"
    warnings = [line["message"] for line in logs.all_lines() if line.get("level") == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"grpcio serves: the native gRPC server is {state}"), warnings
    assert warnings[0].endswith("; to build it, install g++, pkg-config and libgrpc++-dev, then "
                                "pip install -e .")


def test_what_a_supervisor_imports_before_its_workers_fork_holds_no_metrics():
    """serving.metrics names its files per process once imported: imported in the supervisor
    (serving.native.server importing serving.grpc_transport did), its workers shared a
    requests_in_flight file, and a killed worker's call stayed counted in flight for good."""
    result = run_python(textwrap.dedent("""
        import importlib, sys
        from serving.workers import SHARED_IMPORTS
        for name in SHARED_IMPORTS:
            importlib.import_module(name)
        print(sorted(name for name in sys.modules if name.startswith("serving.metrics")))
    """))
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr
