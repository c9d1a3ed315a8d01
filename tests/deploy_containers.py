"""A container of deploy/'s manifests started here as kubelet would start it, for
tests/test_deploy_serves.py and tests/test_deploy_health_port.py.

``prepare`` gives a ``Workload`` the argv and environment kubelet would start: the command,
args and env of the rendered YAML over the serve image's ENV (read from the Dockerfile),
``valueFrom`` resolved (CPU limit, Secrets), the image's paths mapped to the test's model
repository, certificates and virtual environment, its ports to free local ports.
``run_container`` starts it, where this machine allows a private mount namespace on a
read-only root file system with only its memory emptyDirs writable (``sandboxed_argv``);
``health`` and ``wait_until_serving`` are kubelet's gRPC probes.
"""

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.settings import PORTS as PORT_SETTINGS
from tests.conftest import held_port
from tests.deploy_manifests import (
    ROOT,
    Workload,
    container_argv,
    container_env,
    probe_ports,
    serve_image,
    server_settings,
)

START_TIMEOUT_S = 60


# --- what kubelet starts, mapped to this machine --------------------------------------------


def map_path(value: str, paths: Mapping[str, Path]) -> str:
    for inside, outside in paths.items():
        if value == inside or value.startswith(inside.rstrip("/") + "/"):
            return str(outside) + value[len(inside):]
    return value


@dataclass
class Started:
    """How a workload was started here: its argv and env (paths and ports mapped) and the
    local port of each port number the manifest names."""

    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]
    settings: dict[str, str]
    tmpfs: list[str]


def prepare(workload: Workload, paths: Mapping[str, Path],
            secrets: Mapping[tuple[str, str], str] | None = None,
            env_overrides: Mapping[str, str | None] | None = None) -> Started:
    """The workload's argv and env, with the container paths in ``paths`` mapped to local
    ones (the image's virtual environment to this one's), each port it listens on mapped to a
    free local port, and 0.0.0.0 to 127.0.0.1 (nothing listens on other interfaces).
    ``env_overrides`` changes variables (None: removes one) before mapping."""
    image = serve_image()
    env = container_env(workload, secrets, image)
    for name, value in (env_overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    argv = container_argv(workload, image)
    settings = server_settings(argv, env)
    ports = {int(settings[name]): held_port() for name in PORT_SETTINGS
             if int(settings[name]) != 0}

    paths = {"/opt/venv": Path(sys.prefix), **paths}

    def mapped(name: str, value: str) -> str:
        if name in PORT_SETTINGS:
            return str(ports.get(int(value), value))
        if name == "host" and value == "0.0.0.0":
            return "127.0.0.1"
        return map_path(value, paths)

    env = {key: (mapped(key[len("FMNIST_"):].lower(), value) if key.startswith("FMNIST_")
                 else value) for key, value in env.items()}
    env["PATH"] = ":".join(map_path(part, paths) for part in env["PATH"].split(":"))
    mapped_argv = [argv[0]]
    tokens = list(argv[1:])
    while tokens:  # every server flag takes a value: --flag VALUE or --flag=VALUE
        name, equals, value = tokens.pop(0).partition("=")
        setting = name[2:].replace("-", "_")
        if equals:
            mapped_argv.append(f"{name}={mapped(setting, value)}")
        else:
            mapped_argv += [name, mapped(setting, tokens.pop(0))]
    executable = shutil.which(mapped_argv[0], path=env["PATH"])
    assert executable, f"{mapped_argv[0]} is not on the container's PATH {env['PATH']}"
    mapped_argv[0] = executable
    # This checkout's code must win over an installed copy (as in the image, where it is the
    # only one); PYTHONPATH passes through for runs against another work tree.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.setdefault("HOME", "/nonexistent")  # the image user's home: nothing to write there
    tmpfs = [mount["mountPath"] for mount, volume in workload.mounts()
             if (volume.get("emptyDir") or {}).get("medium") == "Memory"]
    return Started(mapped_argv, env, ports, server_settings(mapped_argv, env), tmpfs)


# Runs in a private mount namespace (unshare --mount): remounts every file system read-only
# but /proc, /sys and /dev (a container runtime's /dev/shm stays writable), mounts a fresh
# tmpfs at each memory emptyDir unless a path the process needs lies beneath it (then that
# directory stays read-only: stricter), and executes the server in place (same pid).
_SANDBOX = textwrap.dedent("""
    import json, os, subprocess, sys
    spec = json.loads(sys.argv[1])
    def under(path, top):
        return path == top or path.startswith(top.rstrip("/") + "/")
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\\\040", " ") for line in mounts]
    for point in points:
        if not any(under(point, top) for top in ("/proc", "/sys", "/dev")):
            subprocess.run(["mount", "-o", "remount,bind,ro", point], check=point == "/",
                           stderr=subprocess.DEVNULL)
    for point in spec["tmpfs"]:
        if os.path.isdir(point) and not under(point, "/dev") and \\
                not any(under(path, point) for path in spec["keep"]):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "tmpfs", point],
                           check=True)
    os.execve(spec["argv"][0], spec["argv"], spec["env"])
""")


@functools.cache
def sandbox_available() -> bool:
    """Whether this machine lets us make a private mount namespace (root, CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        return False
    status = subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                            capture_output=True, check=False)
    return status.returncode == 0


def sandboxed_argv(started: Started, keep: list[Path]) -> list[str]:
    """The argv that runs ``started`` on a read-only root (``keep``: paths that must stay
    visible under the tmpfs mounts: code, model repository, certificates)."""
    spec = {"argv": started.argv, "env": started.env, "tmpfs": started.tmpfs,
            "keep": [str(path) for path in [*keep, ROOT, Path(sys.prefix), Path.cwd()]]}
    return [shutil.which("unshare"), "--mount", "--propagation", "private", "--",
            sys.executable, "-c", _SANDBOX, json.dumps(spec)]


# --- a container, started here ---------------------------------------------------------------


class Running:
    def __init__(self, process: subprocess.Popen, started: Started, log: Path):
        self.process = process
        self.started = started
        self._log = log

    def port(self, manifest_port: int) -> int:
        assert manifest_port in self.started.ports, \
            f"port {manifest_port} is none of the server's {sorted(self.started.ports)}"
        return self.started.ports[manifest_port]

    @property
    def main_port(self) -> int:
        return int(self.started.settings["port"])

    def log(self) -> str:
        lines = self._log.read_text(errors="replace").splitlines()
        return "\n".join(["--- server log (last 40 lines) ---", *lines[-40:]])

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def run_container(workload: Workload, paths: dict[str, Path], log_dir: Path, *,
                  secrets: dict | None = None, env_overrides: dict | None = None,
                  cpus: set[int] | None = None):
    """Starts ``workload`` as kubelet would (see the module docstring); ``cpus`` restricts the
    process to these CPUs, as a CPU manager's cpuset would."""
    started = prepare(workload, paths, secrets, env_overrides)
    argv = (sandboxed_argv(started, list(paths.values())) if sandbox_available()
            else started.argv)
    if cpus:  # taskset executes the command in place: the same pid, the affinity inherited
        argv = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *argv]
    log = log_dir / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, env=started.env, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
            cwd="/")
    running = Running(process, started, log)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def health(port: int, service: str = "", timeout: float = 2.0) -> str:
    """What kubelet's gRPC probe sees: a Check on a new plaintext connection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def wait_until_serving(running: Running, workload: Workload) -> None:
    """Each probe of the container, in kubelet's order, until it says SERVING."""
    for probe, manifest_port in probe_ports(workload).items():
        port = running.port(manifest_port)
        service = workload.container[probe]["grpc"].get("service", "")
        deadline = time.monotonic() + START_TIMEOUT_S
        while (status := health(port, service)) != "SERVING":
            assert running.alive(), f"exited {running.process.returncode}\n{running.log()}"
            assert time.monotonic() < deadline, f"{probe}: {status}\n{running.log()}"
            time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
