"""Writes the lock files the image builds install from (deploy/*.lock), out of pyproject.toml.

A range such as ``onnxruntime>=1.20`` installs whatever is newest on the day of the build; a lock
names every package of one stage, transitive ones too, at one version with the sha256 of each of
its files, so that every build installs the same files and pip refuses any other
(``pip install --require-hashes``). uv (from the dev extra) resolves for Python 3.11 and later on
any platform. The serve and train extras are resolved together first and each lock is held to
that resolution, so that a package of both has one version: the onnxruntime that checks the
export at training is the one that serves the model. The image installs wheels only, so each
locked package must have one for every base the Dockerfile supports.

After editing pyproject.toml's dependencies: ``.venv/bin/python scripts/lock_dependencies.py``
"""

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ".venv/bin/python scripts/lock_dependencies.py"
PYTHON = "3.11"  # requires-python's floor: a universal lock holds from there up
# The Dockerfile's bases: Python 3.11 (Debian 12) and 3.12 (python:3.12-slim), glibc 2.36 and up.
TARGETS = [(python, f"{machine}-manylinux_2_36")
           for python in ("3.11", "3.12") for machine in ("x86_64", "aarch64")]


def uv(*args: str, stdin: str | None = None) -> None:
    result = subprocess.run([find_uv_bin(), "pip", "compile", "--quiet", *args], cwd=ROOT,
                            input=stdin, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"uv pip compile {' '.join(args)} failed")


def lock(name: str, sources: list[str], together: Path, stdin: str | None = None) -> Path:
    """deploy/<name>.lock from the sources, each version the one of the joint resolution."""
    path = ROOT / "deploy" / f"{name}.lock"
    uv(*sources, "--universal", f"--python-version={PYTHON}", "--generate-hashes",
       f"--constraints={together}", f"--custom-compile-command={COMMAND}", f"--output-file={path}",
       stdin=stdin)
    # uv names the temporary constraints file among each package's sources: noise that would
    # change the lock at every run.
    text = path.read_text().replace(f"    # via -c {together}\n", "")
    path.write_text(text.replace(f"    #   -c {together}\n", ""))
    return path


def check_wheels(path: Path) -> None:
    """Fails unless each package of the lock has a wheel for every base of the Dockerfile."""
    for python, platform in TARGETS:
        uv(str(path), "--no-deps", "--only-binary=:all:", f"--python-version={python}",
           f"--python-platform={platform}", "--output-file=/dev/null")


def main() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = "\n".join(pyproject["build-system"]["requires"])  # setuptools, in serve-venv
    with tempfile.TemporaryDirectory() as tmp:
        together = Path(tmp) / "together.txt"
        uv("pyproject.toml", "--extra=serve", "--extra=train", "-", "--universal",
           f"--python-version={PYTHON}", f"--output-file={together}", stdin=build)
        locks = [lock("serve", ["pyproject.toml", "--extra=serve"], together),
                 lock("train", ["pyproject.toml", "--extra=train"], together),
                 lock("build", ["-"], together, stdin=build)]
    for path in locks:
        check_wheels(path)
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
