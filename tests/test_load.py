"""Bounded load on loopback (marked ``load``): the soak script, shortened."""

import json
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
