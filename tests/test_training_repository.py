"""Publishing versions into the model repository (training.repository) and fmnist-train's
checks before it fits: numbers never given twice, nothing half-published, bad settings refused
before minutes of fitting."""

import json
import threading
from pathlib import Path

import pytest

from common.contract import MANIFEST, MODEL_FILE
from tests.conftest import tiny_classifier
from training.repository import (
    existing_versions,
    new_report_dir,
    publishing,
    stage_version,
    write_version,
)


def test_a_deleted_version_number_is_not_given_again(tmp_path):
    """A rollback deletes the newest version; a server that had loaded it as number 2 would
    never see a new model published under the same number."""
    for seed in (1, 2):
        write_version(tmp_path, "mlp", tiny_classifier(seed), {})
    (tmp_path / "mlp" / "2" / MODEL_FILE).unlink()
    (tmp_path / "mlp" / "2" / MANIFEST).unlink()
    (tmp_path / "mlp" / "2").rmdir()
    published = write_version(tmp_path, "mlp", tiny_classifier(3), {})
    assert published.name == "3"
    assert json.loads((published / MANIFEST).read_text())["version"] == 3


def test_a_stray_file_named_as_a_version_takes_its_number(tmp_path):
    """A file "2" (a mistaken cp) made the publisher retry number 2 forever."""
    write_version(tmp_path, "mlp", tiny_classifier(1), {})
    (tmp_path / "mlp" / "2").write_bytes(b"not a version")
    published = []
    writer = threading.Thread(target=lambda: published.append(
        write_version(tmp_path, "mlp", tiny_classifier(2), {})), daemon=True)
    writer.start()
    writer.join(20)
    assert published and published[0].name == "3"
    assert existing_versions(tmp_path, "mlp") == [1, 2, 3]


def test_a_staged_version_is_invisible_until_published_and_discard_leaves_nothing(tmp_path):
    staged = stage_version(tmp_path, "mlp", tiny_classifier(1), {"description": "d"})
    assert existing_versions(tmp_path, "mlp") == []
    staged.discard()
    assert [p.name for p in (tmp_path / "mlp").iterdir()] == []
    with publishing([stage_version(tmp_path, "mlp", tiny_classifier(1), {})]) as (target,):
        assert target.name == "1" and not target.exists()
    assert target.is_dir()
    assert sorted(p.name for p in (tmp_path / "mlp").iterdir()) == [".highest-version", "1"]


def test_a_rename_that_fails_puts_back_those_done_and_leaves_nothing(tmp_path):
    """All or none: the first model's version stayed published when the second's rename
    failed."""
    staged = [stage_version(tmp_path, name, tiny_classifier(1), {}) for name in ("a", "b")]
    with pytest.raises(OSError), publishing(staged) as (_, second):
        second.mkdir()
        (second / "in the way").write_text("")  # renaming onto a full directory fails
    assert existing_versions(tmp_path, "a") == []
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "a", "b", "b/1", "b/1/in the way"]  # no staging directory, no empty .highest-version


def test_a_corrupt_highest_version_file_is_named(tmp_path):
    write_version(tmp_path, "mlp", tiny_classifier(1), {})
    (tmp_path / "mlp" / ".highest-version").write_text("one\n")
    with pytest.raises(ValueError, match=f"{tmp_path}/mlp/.highest-version: expected the "
                                         "highest version published, got 'one'"):
        write_version(tmp_path, "mlp", tiny_classifier(2), {})


@pytest.mark.parametrize(("flag", "value"), [
    ("--learning-rate", "0"), ("--mlp-dropout", "1.5"), ("--optimizer", "adamm"),
    ("--patience", "-3"), ("--patience", "2.0"), ("--baseline-alpha", "-1"),
    ("--baseline-tol", "nan"), ("--validation-split", "1"),
    ("--baseline-alpha", "0"),  # failed in scikit-learn, after the Keras models had fitted
    ("--baseline-tol", "default"),  # meant no tolerance: 200 epochs where 0.001 ran 62
    ("--learning-rate", "none"),
])
def test_settings_that_cannot_train_are_refused_before_fitting(flag, value, capsys):
    """They used to fit (a learning rate of -1 published a model of 10% accuracy) or to fail
    only after the models before them had fit."""
    from training.options import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--out", "x", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"fmnist-train: error: {flag}: ") and error.count("\n") == 1


def test_an_optimizer_or_schedule_name_in_any_case_is_keras_name(monkeypatch):
    """--lr-schedule Cosine was refused while --optimizer Adam was taken."""
    from training.options import build_parser, keras_settings

    by_flag = build_parser().parse_args(["--out", "x", "--optimizer", "Adam",
                                         "--lr-schedule", "Cosine"])
    monkeypatch.setenv("FMNIST_OPTIMIZER", "RMSprop")
    monkeypatch.setenv("FMNIST_LR_SCHEDULE", "COSINE")
    by_env = build_parser().parse_args(["--out", "x"])
    assert [(keras_settings(args, "mlp").optimizer, keras_settings(args, "mlp").lr_schedule)
            for args in (by_flag, by_env)] == [("adam", "cosine"), ("rmsprop", "cosine")]


def test_a_published_version_is_readable_by_a_server_of_another_user(tmp_path):
    """Under a umask of 077 the manifest was written 0600: a server running as another user
    could not read it and refused the version."""
    import os
    import stat

    old_umask = os.umask(0o077)
    try:
        published = write_version(tmp_path, "mlp", tiny_classifier(1), {})
    finally:
        os.umask(old_umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode)
             for path in (published, published / MODEL_FILE, published / MANIFEST)}
    assert modes == {published.name: 0o755, MODEL_FILE: 0o644, MANIFEST: 0o644}


def test_runs_of_the_same_second_get_report_directories_of_their_own(tmp_path):
    made = [new_report_dir(tmp_path) for _ in range(3)]
    assert len(set(made)) == 3 and all(path.is_dir() for path in made)


def test_a_repository_made_under_a_strict_umask_is_readable_by_a_server_of_another_user(
        tmp_path):
    """Under a umask of 077 the version's files were made readable (0644, its directory 0755),
    but the directories the run made on the way, the repository and the model's, were 0700: a
    server running as another user could not list them ("Permission denied") and served
    nothing. Those it made are 0755 now; one that was there keeps its mode."""
    import os
    import stat

    from tests.training_runs import run_training

    (tmp_path / "private").mkdir(mode=0o700)
    repository = tmp_path / "private" / "new" / "repo"
    result = run_training("--out", str(repository), "--models", "baseline", "--train-subset",
                          "1000", "--progress", "none", preexec_fn=lambda: os.umask(0o077))
    assert result.returncode == 0, result.stderr
    made = (repository.parent, repository, repository / "baseline", repository / "baseline" / "1")
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "private", *made)}
    assert modes == {tmp_path / "private": 0o700} | dict.fromkeys(made, 0o755)


@pytest.mark.parametrize("given_as", ["flags", "variables"])
def test_a_leading_tilde_in_out_and_report_dir_is_the_home_directory(tmp_path, given_as):
    """--out=~/models (bash leaves the ~ of --flag=~/x alone, as an env file does that of
    FMNIST_OUT=~/models) published into a directory named "~" in the working directory,
    where --data-dir=~/x read the home's."""
    from tests.training_runs import run_training

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    places = {"out": "~/models", "report_dir": "~/report"}
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in places.items()]
    variables = {f"FMNIST_{key.upper()}": value for key, value in places.items()}
    result = run_training(*(flags if given_as == "flags" else []), "--models", "baseline",
                          "--train-subset", "500", "--progress", "none", cwd=work,
                          env={"HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
                          | (variables if given_as == "variables" else {}))
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "baseline" / "1" / MODEL_FILE).is_file()
    assert (home / "report" / "report.md").is_file()
    assert not list(work.iterdir())
