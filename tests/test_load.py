"""Bounded load on loopback (marked ``load``): the soak script, shortened."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.mark.load
def test_64_clients_for_10_seconds_get_no_error_and_memory_stays_flat(model_repository):
    result = subprocess.run(
        [sys.executable, str(SOAK), "--model-repository", str(model_repository),
         "--clients", "64", "--warmup", "3", "--duration", "10", "--workers", "2", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0, summary["errors_by_code"]
    assert summary["calls"] > 64
    assert summary["rss_growth_pct"] < 10, summary
    assert result.returncode == 0, result.stderr[-2000:]


def test_soak_starts_its_server_beside_one_on_the_default_ports(model_repository):
    """With `./run serve` up in another terminal (HTTP on 8080, the default), the README's soak
    command started a server that died on "cannot listen for HTTP on 127.0.0.1:8080", waited
    60 s for it and ended in a traceback. Here FMNIST_HTTP_PORT names a port that is taken."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = {**os.environ, "FMNIST_HTTP_PORT": str(taken.getsockname()[1])}
        result = subprocess.run(
            [sys.executable, str(SOAK), "--model-repository", str(model_repository),
             "--clients", "2", "--warmup", "0", "--duration", "1", "--workers", "1", "--json"],
            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert "cannot listen" not in result.stderr, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["errors"] == 0
