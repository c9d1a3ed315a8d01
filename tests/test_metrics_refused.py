"""A model version the server refuses (a bad sha256, a graph that fails the load-time trial
run) shows in the metrics, not only in the log: an operator can alert on a failed rollout."""

import asyncio
import shutil
import time

from test_metrics import scrape, value
from test_rollout import _publish_tampered_copy

from tests.conftest import held_port, local_settings, running_server
from tests.server_process import server_process

REFUSED = "fmnist_model_versions_refused"


async def until_refused(port: int, model: str, count: int, within_s: float = 30) -> None:
    """Waits (bounded) for the watcher's poll to show ``count`` refused versions of ``model``."""
    deadline = time.monotonic() + within_s
    while (seen := value(await asyncio.to_thread(scrape, port), REFUSED, model=model)) != count:
        assert time.monotonic() < deadline, f"{model}: {seen} refused, expected {count}"
        await asyncio.sleep(0.05)


async def test_refused_versions_are_counted_per_model_until_they_go(repository_copy):
    """At start-up, and in a rollout the watcher picks up; back to 0 once the version is
    removed. Every model's series is there, at 0, before anything is refused."""
    _publish_tampered_copy(repository_copy / "mlp" / "2", 3)
    port = held_port()
    settings = local_settings(model_repository=repository_copy, metrics_port=port,
                              poll_interval=0.1)
    async with running_server(settings):
        samples = await asyncio.to_thread(scrape, port)
        assert {model: value(samples, REFUSED, model=model)
                for model in ("mlp", "softmax", "baseline")} == {
            "mlp": 1, "softmax": 0, "baseline": 0}
        assert (REFUSED, (("model", "softmax"),)) in samples
        _publish_tampered_copy(repository_copy / "softmax" / "1", 2)  # a rollout that fails
        await until_refused(port, "softmax", 1)
        shutil.rmtree(repository_copy / "mlp" / "3")
        await until_refused(port, "mlp", 0)
        assert value(await asyncio.to_thread(scrape, port), REFUSED, model="softmax") == 1


def test_several_workers_count_a_refused_version_once(repository_copy):
    """Each worker loads the repository, and refuses the version, itself: the supervisor's
    endpoint says 1, not 1 per worker."""
    _publish_tampered_copy(repository_copy / "mlp" / "2", 3)
    port = held_port()
    with server_process(repository_copy, "--workers", "2", "--metrics-port", str(port),
                        "--poll-interval", "0") as (_, logs):
        logs.wait_for("serving")
        assert value(scrape(port), REFUSED, model="mlp") == 1
