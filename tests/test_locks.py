"""The image installs its Python packages from deploy/*.lock alone (``pip install
--require-hashes``), not from pyproject.toml: a lock that disagrees with pyproject.toml builds an
image on versions the project does not ask for. Regenerate them with
``.venv/bin/python scripts/lock_dependencies.py``."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCKS = ("serve", "train", "build")
REGENERATE = "run .venv/bin/python scripts/lock_dependencies.py"
# What uv writes among the sources of each package that pyproject.toml itself asks for.
FROM_PYPROJECT = "fashion-mnist-service (pyproject.toml)"


def asked(lock: str) -> list[Requirement]:
    """What pyproject.toml asks of a lock: the base dependencies and the extra of that name, or
    for `build` the build requirements (serve-venv builds the project with them)."""
    if lock == "build":
        return [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    project = PYPROJECT["project"]
    return [Requirement(text)
            for text in [*project["dependencies"], *project["optional-dependencies"][lock]]]


def entries(lock: str) -> list[tuple[Requirement, list[str], str]]:
    """Each entry of deploy/<lock>.lock: its requirement, its hashes and its comment lines."""
    text = (ROOT / "deploy" / f"{lock}.lock").read_text()
    found = []
    for block in re.split(r"\n(?=\S)", text.replace("\\\n", "")):
        if block.startswith("#"):
            continue
        line, *comments = block.splitlines()
        requirement, *hashes = line.split(" --hash=")
        found.append((Requirement(requirement), [h.strip() for h in hashes], "\n".join(comments)))
    return found


def pinned(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"{requirement} is not pinned to one version"
    return specifier.version


def versions(lock: str) -> dict[str, set[str]]:
    """Each package's versions (more than one where a marker splits them: numpy by Python)."""
    found: dict[str, set[str]] = {}
    for requirement, _, _ in entries(lock):
        found.setdefault(canonicalize_name(requirement.name), set()).add(pinned(requirement))
    return found


def test_every_lock_is_checked_here():
    assert sorted(path.stem for path in (ROOT / "deploy").glob("*.lock")) == sorted(LOCKS)


@pytest.mark.parametrize("lock", LOCKS)
def test_every_entry_is_one_version_with_hashes(lock):
    assert entries(lock), f"deploy/{lock}.lock is empty"
    for requirement, hashes, _ in entries(lock):
        pinned(requirement)
        assert hashes, f"deploy/{lock}.lock: {requirement} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), hashes


@pytest.mark.parametrize("lock", LOCKS)
def test_every_requirement_is_locked_at_a_version_it_admits(lock):
    locked = versions(lock)
    for requirement in asked(lock):
        pins = locked.get(canonicalize_name(requirement.name))
        assert pins, f"pyproject.toml asks for {requirement}, deploy/{lock}.lock has none"
        refused = sorted(v for v in pins if not requirement.specifier.contains(v, prereleases=True))
        assert not refused, (f"deploy/{lock}.lock has {requirement.name} {', '.join(refused)}, "
                             f"pyproject.toml asks for {requirement}: {REGENERATE}")


@pytest.mark.parametrize("lock", ["serve", "train"])
def test_every_package_locked_for_pyproject_is_still_asked_for(lock):
    names = {canonicalize_name(requirement.name) for requirement in asked(lock)}
    dropped = [str(requirement) for requirement, _, comments in entries(lock)
               if FROM_PYPROJECT in comments and canonicalize_name(requirement.name) not in names]
    assert not dropped, f"deploy/{lock}.lock has {dropped}, no longer asked for: {REGENERATE}"


def test_serve_and_train_lock_each_shared_package_at_one_version():
    serve, train = versions("serve"), versions("train")
    differ = {name: (serve[name], train[name]) for name in serve.keys() & train.keys()
              if serve[name] != train[name]}
    assert not differ, f"serve.lock and train.lock differ (serve, train): {differ}"


def test_the_serve_lock_has_no_training_framework():
    names = {canonicalize_name(requirement.name) for requirement, _, _ in entries("serve")}
    assert not names & {"tensorflow", "keras", "scikit-learn"}
