"""``fmnist``'s file flags take a leading ``~`` as the home folder, as a shell does where it
sees the word alone: quoted, after ``--csv=``, or in an env var (a compose file's, a CI job's)
the shell leaves it, and the command made a folder named ``~`` or said "No such file"."""

import json
import shutil

import pytest

from common.dataset import DEFAULT_DATA_DIR
from serving.client import cli
from tests.conftest import local_settings, running_server


@pytest.fixture
def home(tmp_path, monkeypatch):
    """HOME set to a folder of the test's own, the command run elsewhere (where a ``~`` folder
    made by mistake would show)."""
    folder = tmp_path / "home"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.chdir(tmp_path / "elsewhere")
    return folder


def test_csv_and_json_under_the_home_folder(target, home, capsys):
    assert cli.main(["score", "--target", target, "--limit", "3", "--no-progress",
                     "--csv", "~/p.csv", "--json=~/run.json"]) == 0
    capsys.readouterr()
    assert len((home / "p.csv").read_text().splitlines()) == 4
    assert json.loads((home / "run.json").read_text())["images"] == 3
    assert list((home.parent / "elsewhere").iterdir()) == []


def test_tls_files_under_the_home_folder_by_flag_and_env_var(pki, model_repository, home,
                                                             monkeypatch, capsys):
    for name in ("ca", "client_cert", "client_key"):
        shutil.copy(getattr(pki, name), home / f"{name}.pem")
    mutual = local_settings(model_repository=model_repository, tls_cert=str(pki.server_cert),
                            tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    with running_server(mutual) as server:
        health = ["health", "--target", f"localhost:{server.port}", "--timeout", "10"]
        assert cli.main([*health, "--tls-ca", "~/ca.pem", "--tls-cert", "~/client_cert.pem",
                         "--tls-key=~/client_key.pem"]) == 0, capsys.readouterr().err
        for flag in ("ca", "cert", "key"):
            monkeypatch.setenv(f"FMNIST_TLS_{flag.upper()}",
                               f"~/{'ca' if flag == 'ca' else f'client_{flag}'}.pem")
        assert cli.main(health) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "SERVING\n" * 2


def test_a_missing_file_under_home_is_named_by_its_whole_path(home, capsys):
    assert cli.main(["health", "--target", "127.0.0.1:9", "--tls-ca", "~/none.pem"]) == 1
    assert capsys.readouterr().err == (
        f"fmnist health: error: --tls-ca {home}/none.pem: No such file or directory\n")


def test_the_test_set_under_the_home_folder(target, home, capsys):
    """`--data-dir "~/fashion-mnist"`, as `--data-dir=~/...` or a quoted word leaves it."""
    shutil.copytree(DEFAULT_DATA_DIR, home / "fashion-mnist",
                    ignore=shutil.ignore_patterns("train-*"))
    assert cli.main(["score", "--target", target, "--limit", "3", "--no-progress",
                     "--data-dir", "~/fashion-mnist"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("images                 3 (test set 0..2)\n")
