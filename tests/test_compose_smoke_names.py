"""The names scripts/compose_smoke.sh gives what it creates, read by sourcing it (which runs no
podman): two runs at once (two CI jobs, a developer's run beside CI's) must not share a compose
project, whose teardown would remove the other run's containers, nor an image tag, which one
run's build would move under the other's containers (or a user's own `:latest`)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compose_smoke.sh"


def _names(**env: str) -> list[str]:
    """The compose project and the two images a run would use, with ``env`` set."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("FMNIST_COMPOSE_PROJECT", "FMNIST_IMAGE_TAG")}
    done = subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}" && echo "$PROJECT $SERVE_IMAGE ${{LB_IMAGE-unset}}"'],
        capture_output=True, text=True, timeout=30, env={**clean, **env}, check=True)
    return done.stdout.split()


def test_two_runs_at_once_get_a_project_and_images_of_their_own():
    """The default project was `fmnist-smoke` for every run: a second run's first step (tear
    down what an interrupted run of that name left) removed the first's containers mid-test,
    which cost a CI run; and each built `fashion-mnist-service:latest`, replacing the image a
    user ran as `latest` (and removing it) and the one the other run was testing."""
    first, second = _names(), _names()
    assert first[0] != second[0], (first, second)
    for project, serve, lb in (first, second):
        assert project.startswith("fmnist-smoke-"), project
        assert serve == f"localhost/fashion-mnist-service:{project}", serve
        assert lb == f"localhost/fashion-mnist-lb:{project}", lb


def test_a_project_and_tag_given_are_used():
    project, serve, lb = _names(FMNIST_COMPOSE_PROJECT="mine", FMNIST_IMAGE_TAG="t1")
    assert (project, serve, lb) == (
        "mine", "localhost/fashion-mnist-service:t1", "localhost/fashion-mnist-lb:t1")
    assert _names(FMNIST_COMPOSE_PROJECT="mine")[1:] == [
        "localhost/fashion-mnist-service:mine", "localhost/fashion-mnist-lb:mine"]


def test_podman_never_reads_a_half_written_config(tmp_path):
    """Each run writes podman's config files into the shared work folder as it starts; written
    in place, a podman command of a run already going read an empty or half file in between
    (and ran with crun and the host's limits: 'cgroups in hybrid mode not supported')."""
    script = subprocess.Popen(
        ["bash", "-c", f'source "{SCRIPT}" && for i in $(seq 200); do write_podman_configs; '
                       "done"],
        env={**os.environ, "FMNIST_COMPOSE_WORK": str(tmp_path)}, stderr=subprocess.PIPE)
    seen, reads = set(), 0
    try:
        while script.poll() is None:
            for name, last in (("containers.conf", "network_config_dir"),
                               ("storage.conf", "runroot")):
                try:
                    text = (tmp_path / name).read_text()
                except FileNotFoundError:
                    continue  # before the first run's
                reads += 1
                lines = text.splitlines()
                if not lines or not lines[-1].startswith(last):
                    seen.add(repr(text[-40:]))
    finally:
        script.kill()
        script.wait()
    assert script.returncode == 0 and reads > 100, (script.returncode, reads)
    assert not seen, seen


def _their_folder(path: Path) -> Path:
    """``path``, made and given to another user (nobody), as one they made first would be."""
    path.mkdir(mode=0o755)
    try:
        os.chown(path, 65534, 65534)
    except PermissionError:
        pytest.skip("only root can give a folder to another user")
    return path


@pytest.mark.parametrize("case", ["theirs", "under theirs", "anyone's"])
def test_root_keeps_nothing_in_a_work_folder_others_may_write(tmp_path, case):
    """The work folder (/var/tmp/fmnist-compose: anyone may make it first) holds what the run,
    as root, runs and deletes in: podman-compose's venv, podman's configs, a rootfs it prunes.
    It wrote its configs into a folder another user had made, or may write in, and so ran
    their podman-compose and followed their symlinks. Such a folder is refused, nothing
    written."""
    if case == "theirs":
        work = _their_folder(tmp_path / "work")
    elif case == "under theirs":  # they may swap a folder of root's in it for one of theirs
        work = _their_folder(tmp_path / "theirs") / "work"
    else:
        work = tmp_path / "work"
        work.mkdir()
        work.chmod(0o1777)  # sticky too: they may still make the files it is about to write
    done = subprocess.run(["bash", "-c", f'source "{SCRIPT}" && write_podman_configs'],
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**os.environ, "FMNIST_COMPOSE_WORK": str(work)})
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith(f"compose smoke test FAILED: work folder {work}: "), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not (work.exists() and any(work.iterdir())), list(work.iterdir())
