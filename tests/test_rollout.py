"""Zero-downtime rollout: the server picks up, refuses and retires model versions while it
answers a steady load, and every call succeeds."""

import asyncio
import ctypes
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import REGISTRY

from common.contract import MANIFEST, MODEL_FILE
from fashion_mnist.v1 import classifier_pb2 as pb
from fashion_mnist.v1 import classifier_pb2_grpc as pb_grpc
from inference import grpc_service_pb2 as pb_v2
from inference import grpc_service_pb2_grpc as pb_v2_grpc
from tests.conftest import local_settings, running_server, tiny_classifier
from training.repository import write_version

CLIENTS = 8
POLL_INTERVAL = 0.1
CALLS_PER_PHASE = 30  # > CLIENTS: most of a phase's calls started in it
IMAGES = np.random.default_rng(3).integers(0, 256, (4, 28, 28), dtype=np.uint8)
REQUEST = pb.ClassifyRequest(images=[image.tobytes() for image in IMAGES])


@dataclass
class Load:
    """Outcomes of the calls of the client tasks, in the order they were started."""

    versions: list[int | None] = field(default_factory=list)  # None until it is answered
    answered: list[int] = field(default_factory=list)  # the versions, in order of answer
    failures: list[str] = field(default_factory=list)
    running: bool = True


async def _client(stub, load: Load) -> None:
    while load.running:
        index = len(load.versions)
        load.versions.append(None)
        try:
            response = await stub.Classify(REQUEST, timeout=10)
        except grpc.aio.AioRpcError as error:
            load.failures.append(f"{error.code().name}: {error.details()}")
        else:
            assert len(response.results) == len(IMAGES)
            load.versions[index] = response.model.version
            load.answered.append(response.model.version)


async def _default_version(stub, name: str = "mlp") -> int:
    return (await stub.GetModel(pb.GetModelRequest(name=name), timeout=5)).version


def _publish_tampered_copy(source: Path, version: int) -> Path:
    """A copy of ``source`` as ``version`` whose model file no longer matches its sha256,
    assembled in a hidden directory and renamed into place, as training.repository does."""
    staging = source.parent / ".staging-tampered"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / MANIFEST).read_text())
    (staging / MANIFEST).write_text(json.dumps({**manifest, "version": version}))
    with open(staging / MODEL_FILE, "ab") as model_file:
        model_file.write(b"tampered")
    return staging.rename(source.parent / str(version))


async def _v2_versions(channel) -> list[str]:
    """The versions of mlp the Open Inference Protocol's metadata lists."""
    stub = pb_v2_grpc.GRPCInferenceServiceStub(channel)
    return list((await stub.ModelMetadata(pb_v2.ModelMetadataRequest(name="mlp"))).versions)


async def _until_default_version(stub, version: int, polls: int = 200) -> None:
    """Waits (bounded) for the watcher to make ``version`` of mlp the default."""
    for _ in range(polls):
        if await _default_version(stub) == version:
            return
        await asyncio.sleep(POLL_INTERVAL / 2)
    raise AssertionError(f"mlp v{version} never became the default")


async def _answering(load: Load, calls: int = CALLS_PER_PHASE, within_s: float = 60) -> None:
    """Waits (bounded) for the load to have ``calls`` more calls answered: each phase of the
    rollout is seen by calls, however slow the machine."""
    wanted, deadline = len(load.answered) + calls, time.monotonic() + within_s
    while len(load.answered) < wanted:
        if time.monotonic() > deadline or load.failures:
            raise AssertionError(f"{len(load.answered)} of {wanted} calls answered: "
                                 f"{load.failures[:3]}")
        await asyncio.sleep(POLL_INTERVAL / 10)


async def test_rollout_under_load_loses_no_call(repository_copy, caplog):
    caplog.set_level(logging.INFO)
    settings = local_settings(model_repository=repository_copy,
                        parallel_inferences=2, poll_interval=POLL_INTERVAL)
    async with running_server(settings) as server, grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}"
    ) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        assert await _default_version(stub) == 2
        load = Load()
        clients = [asyncio.create_task(_client(stub, load)) for _ in range(CLIENTS)]
        await _answering(load)

        # A new version appears: it becomes the default, for both lists and answers.
        answered_before_write = len(load.answered)
        write_version(repository_copy, "mlp", tiny_classifier(9), {"description": "v3"})
        await _until_default_version(stub, 3)
        switched_at = len(load.versions)
        await _answering(load)
        listed = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
        assert [(m.version, m.is_default_version) for m in listed if m.name == "mlp"] == [
            (1, False), (2, False), (3, True)]
        assert await _v2_versions(channel) == ["1", "2", "3"]

        # A bad version is refused; v3 keeps serving.
        bad = _publish_tampered_copy(repository_copy / "mlp" / "3", version=4)
        for _ in range(100):
            if any(r.getMessage() == "model version refused" for r in caplog.records):
                break
            await asyncio.sleep(POLL_INTERVAL / 2)
        refusals = [r for r in caplog.records if r.getMessage() == "model version refused"]
        assert [(r.fields["model"], r.fields["version"]) for r in refusals] == [("mlp", 4)]
        assert "sha256" in refusals[0].fields["reason"]
        assert await _default_version(stub) == 3
        await _answering(load)

        # v3 is removed: v2 is the default again once the calls holding v3 have finished.
        removing_at = len(load.versions)
        shutil.rmtree(bad)
        shutil.rmtree(repository_copy / "mlp" / "3")
        await _until_default_version(stub, 2)
        removed_at = len(load.versions)
        assert await _v2_versions(channel) == ["1", "2"]
        v2 = pb_v2_grpc.GRPCInferenceServiceStub(channel)
        gone = v2.ModelReady(pb_v2.ModelReadyRequest(name="mlp", version="3"))
        assert await gone.code() == grpc.StatusCode.NOT_FOUND  # as Triton's
        await _answering(load)

        load.running = False
        await asyncio.gather(*clients)

    assert load.failures == []
    assert None not in load.versions
    # Each call started after a switch was seen is answered by the new default, none by the old.
    assert set(load.answered[:answered_before_write]) == {2}
    assert set(load.versions[switched_at:removing_at]) == {3}
    assert set(load.versions[removed_at:]) == {2}


def _exchange(one: Path, other: Path) -> None:
    """Swaps two directories in one step (renameat2's RENAME_EXCHANGE, what ``mv --exchange``
    does): no poll ever sees the version missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_cwd, exchange = -100, 2
    if libc.renameat2(at_cwd, bytes(one), at_cwd, bytes(other), exchange) != 0:
        raise OSError(ctypes.get_errno(), "renameat2", str(one))


def test_good_files_put_back_in_place_of_refused_ones_clear_the_refusal(repository_copy):
    """A version replaced in place by files that fail verification is refused while the files
    loaded before serve on; the same good files put back (swapped in, as they were) left it
    refused for good: fmnist_model_versions_refused, the failed rollout's alert, said 1 until
    a restart, and nothing said the version was whole again."""
    settings = local_settings(model_repository=repository_copy, poll_interval=POLL_INTERVAL)
    served, bad = repository_copy / "mlp" / "2", repository_copy / "mlp" / ".tampered"
    shutil.copytree(served, bad)
    with open(bad / MODEL_FILE, "ab") as model_file:
        model_file.write(b"tampered")  # its sha256 no longer the manifest's

    def refused() -> float:
        return REGISTRY.get_sample_value("fmnist_model_versions_refused", {"model": "mlp"})

    def until_refused(count: int) -> None:
        deadline = time.monotonic() + 10
        while refused() != count:
            assert time.monotonic() < deadline, f"mlp's refused versions never read {count}"
            time.sleep(0.02)

    with running_server(settings) as server, grpc.insecure_channel(
            f"127.0.0.1:{server.port}") as channel:
        sha256 = server.registry.get("mlp", 2).manifest.sha256
        until_refused(0)
        _exchange(served, bad)  # the tampered files serve as mlp v2
        until_refused(1)
        stub = pb_grpc.ClassifierStub(channel)
        assert stub.GetModel(pb.GetModelRequest(name="mlp", version=2)).sha256 == sha256
        _exchange(served, bad)  # the good files back, as they were
        until_refused(0)
        assert stub.GetModel(pb.GetModelRequest(name="mlp", version=2)).sha256 == sha256
