"""``serving`` runs without TensorFlow, Keras, scikit-learn, onnx or the training package, and
the client's command line starts without numpy or onnxruntime (``fmnist health`` stays fast)."""

import subprocess
import sys
import textwrap

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
