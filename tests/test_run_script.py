"""./run, the project's one entry point: what it does before it hands over to fmnist-serve or
fmnist-train, run for real."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import held_port
from tests.training_runs import MODELS, manifest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / os.environ.get("FMNIST_VENV", ".venv")


@pytest.fixture
def installed():
    """./run serve here, not a first install of minutes."""
    if not list(VENV.glob(".installed-*")):
        pytest.skip("./run would install the project first")


@pytest.mark.parametrize("absolute_venv", [False, True])
def test_run_serve_takes_its_address_from_fmnist_host_and_fmnist_port(
        installed, model_repository, absolute_venv):
    """`FMNIST_PORT=N ./run serve` served on 50051 all the same: the script's own --host and
    --port won over the env vars (FMNIST_MODEL_REPOSITORY it honoured). An absolute
    FMNIST_VENV put `$PWD//abs/venv/bin` on PATH: 'fmnist-serve: command not found'."""
    port = held_port()
    env = {**os.environ, "FMNIST_PORT": str(port), "FMNIST_HOST": "127.0.0.1",
           "FMNIST_MODEL_REPOSITORY": str(model_repository), "FMNIST_WORKERS": "1",
           "FMNIST_VENV": str(VENV.resolve()) if absolute_venv else os.path.relpath(VENV, ROOT),
           "PATH": os.pathsep.join(entry for entry in os.environ["PATH"].split(os.pathsep)
                                   if Path(entry).resolve() != (VENV / "bin").resolve())}
    process = subprocess.Popen([ROOT / "run", "serve", "--http-port", "0"], env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = next((line for line in process.stderr if " serving address=" in line), "")
    finally:
        process.terminate()
        process.wait(30)
    assert f" serving address=127.0.0.1:{port} " in line


def test_run_serve_help_shows_the_flags_without_training_first(installed, tmp_path):
    """On a fresh clone `./run serve --help` (the README: it "takes fmnist-serve's flags")
    trained the three models for minutes before it printed fmnist-serve's help."""
    # were it to train, a small fit: the test stays short either way
    env = {**os.environ, "FMNIST_MODEL_REPOSITORY": str(tmp_path / "untrained"),
           "FMNIST_TRAIN_SUBSET": "300", "FMNIST_EPOCHS": "1", "FMNIST_MODELS": "baseline"}
    for flag in ("--help", "-h"):
        result = subprocess.run([ROOT / "run", "serve", "--port", "0", flag], env=env,
                                check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: fmnist-serve"), result.stdout[:300]
        assert not (tmp_path / "untrained").exists(), result.stdout[:300]


def test_run_serve_says_a_refused_flag_without_training_first(installed, tmp_path):
    """`./run serve --port abc` on a fresh clone trained for minutes, then fmnist-serve said
    the port was wrong."""
    env = {**os.environ, "FMNIST_MODEL_REPOSITORY": str(tmp_path / "untrained"),
           "FMNIST_TRAIN_SUBSET": "300", "FMNIST_EPOCHS": "1", "FMNIST_MODELS": "baseline"}
    result = subprocess.run([ROOT / "run", "serve", "--port", "abc"], env=env, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == ("fmnist-serve: error: --port: expected an integer "
                                              ">= 0 and <= 65535, got abc (see fmnist-serve "
                                              "--help)"), result.stderr
    assert not (tmp_path / "untrained").exists(), result.stdout[-300:]


def test_run_serve_trains_the_repository_it_is_told_to_serve(installed, model_repository, tmp_path):
    """`./run serve --model-repository DIR` looked for models in FMNIST_MODEL_REPOSITORY (or
    ./model_repository), trained them there for minutes if missing, then served DIR."""
    # were it to train, a small fit: the test stays short either way
    env = {**os.environ, "FMNIST_MODEL_REPOSITORY": str(tmp_path / "untrained"),
           "FMNIST_TRAIN_SUBSET": "300", "FMNIST_EPOCHS": "1", "FMNIST_WORKERS": "1"}
    for flags in (["--model-repository", str(model_repository)],
                  [f"--model-repository={model_repository}"]):
        process = subprocess.Popen([ROOT / "run", "serve", "--port", "0", "--http-port", "0",
                                    *flags], env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        try:
            output = _until_serving(process)
        finally:
            process.terminate()
            process.wait(30)
        assert " serving address=" in output[-1], "".join(output)[-2000:]  # it serves DIR
        assert not (tmp_path / "untrained").exists(), "".join(output)[:500]


def test_run_names_a_command_it_does_not_know():
    """`./run serv` printed ./run's help and exited 2 without a word of what was wrong."""
    result = subprocess.run([ROOT / "run", "serv"], check=False, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("run: error: unknown command 'serv' (serve, train "
                                              "or test)")
    assert "./run serve [FLAGS]" in result.stdout  # the help, as before


@pytest.mark.parametrize("asked", [[], ["help"], ["--help"], ["-h"]])
def test_run_help_names_every_command(asked):
    """`./run help` cut its own text short: `./run train`, which README's Training uses, was
    not in it; `./run --help`, as every other command of the project takes it, was refused as
    an unknown command, exit 2."""
    result = subprocess.run([ROOT / "run", *asked], check=False, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "train", "test"):
        assert f"./run {command} [" in result.stdout, result.stdout


def test_the_quick_starts_try_trains_the_models_readme_says(installed, tmp_path):
    """README's Quick start offered no try of seconds (its Training section had one, quoting
    "acc. 0.6-0.8" where the MLP got 0.5901): its command, run as written, gives the test
    accuracies it quotes."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^\./run (train --train-subset [^#]*)#", readme, re.M).group(1).split()
    said = re.search(r"The try's models \(test accuracy here:\s+([^)]*)\)", readme).group(1)
    quoted = {model: float(figure) for model, figure in re.findall(r"(\w+)\s+(0\.\d+)", said)}
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("FMNIST_") or key == "FMNIST_VENV"}
    env |= {"FMNIST_MODEL_REPOSITORY": str(tmp_path), "FMNIST_PROGRESS": "none"}
    result = subprocess.run([ROOT / "run", *command], env=env, check=False, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(quoted) == sorted(MODELS), said
    for model, accuracy in quoted.items():
        trained = manifest(tmp_path, model, 1)["metrics"]["test_accuracy"]
        assert abs(trained - accuracy) < 0.02, (model, trained, said)


@pytest.mark.parametrize(("number", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_run_serve_stopped_while_it_trains_leaves_no_training_behind(installed, tmp_path,
                                                                    number, status):
    """SIGTERM to `./run serve` while its first run trained (`kill` of the script, as a service
    manager stops it) ended the script alone: fmnist-train went on, orphaned, and published a
    repository nothing served. The script exits as a stop says (Ctrl-C: 130, it said 143)."""
    env = {**os.environ, "FMNIST_MODEL_REPOSITORY": str(tmp_path / "untrained"),
           "FMNIST_TRAIN_SUBSET": "300", "FMNIST_EPOCHS": "1", "FMNIST_MODELS": "baseline"}
    script = subprocess.Popen([ROOT / "run", "serve", "--port", "0", "--http-port", "0"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (trainer := _child_running(script.pid, b"fmnist-train")):  # no sleep: the stop
        assert time.monotonic() < deadline, "./run started no fmnist-train within 60 s"
    script.send_signal(number)  # at once: it may land as setpriv starts, before its pdeathsig
    assert script.wait(30) == status
    deadline = time.monotonic() + 60
    while trainer.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not trainer.exists(), "fmnist-train runs on without ./run"
    assert not list(tmp_path.glob("untrained/*/[0-9]*")), "a stopped run published"


def _child_running(pid: int, program: bytes) -> Path | None:
    """/proc's directory of the child of ``pid`` whose command line names ``program``."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if program in Path(f"/proc/{child}/cmdline").read_bytes():
                return Path(f"/proc/{child}")
        except OSError:  # it ended since the list was read: ENOENT, or ESRCH once opened
            pass
    return None


def test_run_serve_reads_relative_paths_from_where_it_was_called(installed, model_repository,
                                                                 tmp_path):
    """`~/fmnist/run serve --model-repository models` from another directory looked for
    `models` in the checkout (./run changes into it first): it trained a new repository
    there, and a relative --tls-cert or --report-dir was not found, or landed there."""
    name = f"models-{os.getpid()}"  # were it read in the checkout, a name nobody else uses
    (tmp_path / name).symlink_to(model_repository)
    env = {**os.environ, "FMNIST_TRAIN_SUBSET": "300", "FMNIST_EPOCHS": "1",
           "FMNIST_MODELS": "baseline", "FMNIST_WORKERS": "1"}
    env.pop("FMNIST_MODEL_REPOSITORY", None)
    process = subprocess.Popen([ROOT / "run", "serve", "--port", "0", "--http-port", "0",
                                "--model-repository", name], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = _until_serving(process)
        assert " serving address=" in output[-1], "".join(output)[-2000:]
        assert not (ROOT / name).exists(), "trained in the checkout"
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(ROOT / name, ignore_errors=True)


def _until_serving(process: subprocess.Popen) -> list[str]:
    """The output lines up to the serving line (the last), or to the end if none came."""
    output = [""]
    for line in process.stdout:
        output.append(line)
        if " serving address=" in line:
            break
    return output
