"""The repository watcher: versions unloaded, replaced in place, and a repository or a model
folder that cannot be read for a moment."""

import errno
import json
import logging
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY

from common.contract import MANIFEST
from fashion_mnist.v1 import classifier_pb2
from serving.api.classifier import ClassifierAPI
from serving.repository import load_repository
from serving.watcher import RepositoryWatcher
from tests.conftest import rewrite_manifest


def test_model_info_reads_0_once_a_version_is_unloaded(repository_copy, policy):
    registry = load_repository(repository_copy, policy)
    shas = {version: registry.get("mlp", version).manifest.sha256[:12] for version in (1, 2)}

    def info(version: int) -> float | None:
        return REGISTRY.get_sample_value("fmnist_model_info", {
            "model": "mlp", "version": str(version), "sha256": shas[version]})

    assert (info(1), info(2)) == (1, 1)
    registry.remove("mlp", 2)
    assert (info(1), info(2)) == (1, 0)


def test_list_models_while_the_watcher_unloads_a_models_last_version(repository_copy, policy,
                                                                    monkeypatch):
    """The watcher may unload a model's last version between ListModels' two reads of the
    registry: the listing keeps the version it took, as it was (it crashed, INTERNAL)."""
    registry = load_repository(repository_copy, policy)
    api = ClassifierAPI(registry, "mlp", "baseline", 64)
    listed = registry.list

    def list_then_unload():
        models = listed()
        registry.remove("softmax", 1)
        return models

    monkeypatch.setattr(registry, "list", list_then_unload)
    answer = api.ListModels(classifier_pb2.ListModelsRequest(), None)
    softmax = [info for info in answer.models if info.name == "softmax"]
    assert [(info.version, info.is_default_version) for info in softmax] == [(1, True)]
    for model in listed():  # their fmnist_model_info series back to 0, as other tests expect
        registry.remove(model.name, model.version)


def _loaded(registry) -> list[tuple[str, int]]:
    return [(model.name, model.version) for model in registry.list()]


def test_a_repository_that_cannot_be_listed_unloads_nothing(repository_copy, policy, caplog):
    """A volume's hiccup (the root gone for a moment) read as an empty repository: every
    version but the required models' last was unloaded, and clients got NOT_FOUND. The line
    says why (it did not: gone, Permission denied, Too many open files?); once it can list it
    again a line says so (none did: the warning stood as the last word)."""
    caplog.set_level(logging.INFO, logger="serving.watcher")
    registry = load_repository(repository_copy, policy)
    watcher = RepositoryWatcher(repository_copy, registry, policy, required=("mlp", "baseline"))
    before = _loaded(registry)
    away = repository_copy.rename(repository_copy.with_name("away"))
    watcher.poll()
    watcher.poll()
    assert _loaded(registry) == before
    said = [record.fields for record in caplog.records if record.getMessage()
            == "model repository cannot be listed; the loaded versions keep serving"]
    assert said == [{"repository": str(repository_copy), "error": "No such file or directory"}]
    away.rename(repository_copy)
    shutil.rmtree(repository_copy / "softmax")
    watcher.poll()  # and it follows the repository again once it can list it
    assert _loaded(registry) == [key for key in before if key[0] != "softmax"]
    watcher.poll()
    assert [record.getMessage() for record in caplog.records].count(
        "model repository can be listed again") == 1


def test_a_model_folder_that_cannot_be_read_keeps_its_versions(repository_copy, policy,
                                                               monkeypatch, caplog):
    """... and what it refused stays refused (it was retried, and logged again, once the
    folder read again, with nothing changed on disk)."""
    shutil.copytree(repository_copy / "softmax" / "1", repository_copy / "softmax" / "2")
    rewrite_manifest(repository_copy / "softmax" / "2" / "model.json", version=2,
                      sha256="0" * 64)
    registry = load_repository(repository_copy, policy)
    watcher = RepositoryWatcher(repository_copy, registry, policy, required=("mlp", "baseline"))
    before = _loaded(registry)
    listing = Path.iterdir

    def iterdir(path):  # as NFS answers a folder it lost (as root, permissions never fail)
        if path.name == "softmax":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return listing(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    watcher.poll()
    assert _loaded(registry) == before
    monkeypatch.setattr(Path, "iterdir", listing)
    watcher.poll()
    assert [record.getMessage() for record in caplog.records].count(
        "model version refused") == 1  # at start-up only


def test_a_version_replaced_in_place_is_loaded_again(repository_copy, policy, caplog):
    """A version directory swapped for another under the same number went unnoticed: the
    process kept its old files, a worker started later loaded the new ones, and the two
    answered under one name and version with different models."""
    registry = load_repository(repository_copy, policy)
    watcher = RepositoryWatcher(repository_copy, registry, policy, required=("mlp", "baseline"))
    old_sha = registry.get("mlp", 2).manifest.sha256
    new = repository_copy / "mlp" / ".new"
    shutil.copytree(repository_copy / "softmax" / "1", new)
    rewrite_manifest(new / MANIFEST, name="mlp", version=2)
    (repository_copy / "mlp" / "2").rename(repository_copy / "mlp" / ".old")
    new.rename(repository_copy / "mlp" / "2")
    watcher.poll()
    replaced = registry.get("mlp", 2).manifest.sha256
    assert replaced == registry.get("softmax", 1).manifest.sha256 != old_sha
    assert [REGISTRY.get_sample_value("fmnist_model_info", {
        "model": "mlp", "version": "2", "sha256": sha[:12]}) for sha in (old_sha, replaced)] \
        == [0, 1]
    # a replacement that fails verification leaves the version that serves, refused once
    damaged = repository_copy / "mlp" / ".damaged"
    shutil.copytree(repository_copy / "mlp" / "2", damaged)
    rewrite_manifest(damaged / MANIFEST, sha256="0" * 64)
    shutil.rmtree(repository_copy / "mlp" / "2")
    damaged.rename(repository_copy / "mlp" / "2")
    watcher.poll()
    watcher.poll()
    assert registry.get("mlp", 2).manifest.sha256 == replaced
    [refused] = [record for record in caplog.records
                 if record.getMessage() == "model version refused"]
    # it says so: the refusal read as if mlp v2 were gone, while the files loaded before served
    assert refused.fields["still_serving_sha256"] == replaced[:12]
    for model in registry.list():  # their fmnist_model_info series back to 0
        registry.remove(model.name, model.version)


def test_a_version_replaced_by_a_copy_of_the_same_size_and_times_is_loaded_again(
        repository_copy, policy):
    """Models of one architecture have files of one size, and cp -p, rsync -a or tar keep
    the modification times: such a replacement still went unnoticed (its ctimes are new)."""
    registry = load_repository(repository_copy, policy)
    watcher = RepositoryWatcher(repository_copy, registry, policy, required=("mlp", "baseline"))
    served = repository_copy / "mlp" / "2"
    times = {path.name: (path.stat().st_atime_ns, path.stat().st_mtime_ns)
             for path in served.iterdir()}
    new = repository_copy / "mlp" / ".new"
    shutil.copytree(repository_copy / "mlp" / "1", new)
    manifest = json.loads((new / MANIFEST).read_text())
    manifest["version"] = 2
    padding = (served / MANIFEST).stat().st_size - len(json.dumps(manifest))
    manifest["description"] += " " * padding
    (new / MANIFEST).write_text(json.dumps(manifest))
    for name, stamps in times.items():
        os.utime(new / name, ns=stamps)
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in new.iterdir()) == \
        sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in served.iterdir())
    shutil.rmtree(served)
    new.rename(served)
    watcher.poll()
    assert registry.get("mlp", 2).manifest.sha256 == manifest["sha256"]
    for model in registry.list():  # their fmnist_model_info series back to 0
        registry.remove(model.name, model.version)


def test_a_hidden_file_leaving_a_version_loads_it_not_again(repository_copy, policy):
    """fmnist-train renames a version into place with its run's ``.lock`` inside and deletes
    the lock after (training.repository): a poll between the two saw the version's files
    change once the lock went, and loaded it a second time; hidden entries are nobody's."""
    lock = repository_copy / "mlp" / "2" / ".lock"
    lock.touch()
    registry = load_repository(repository_copy, policy)
    watcher = RepositoryWatcher(repository_copy, registry, policy, required=("mlp", "baseline"))
    loaded = registry.get("mlp", 2)
    lock.unlink()
    watcher.poll()
    assert registry.get("mlp", 2) is loaded
    for model in registry.list():  # their fmnist_model_info series back to 0
        registry.remove(model.name, model.version)
