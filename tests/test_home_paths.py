"""Every command's path flags take a leading ``~`` alike (``common.paths.home_path``): ``~`` and
``~NAME`` as a shell makes them of a word it sees alone, and a ``~NAME`` of no user on this
machine refused in one line naming the flag."""

import pytest

from serving.client import cli
from tests.training_runs import run_training

NOBODY = "fmnist-no-such-user"  # a user name no machine here has


def no_user(flag: str, program: str) -> str:
    return (f"{program}: error: {flag}: expected a path, got '~{NOBODY}/x': ~{NOBODY} is the "
            f"home folder of a user {NOBODY!r}, and there is none here (see {program} --help)")


@pytest.mark.parametrize("flag", ["--out", "--report-dir"])
def test_fmnist_train_refuses_the_home_of_no_user_in_one_line(tmp_path, flag):
    """`fmnist-train --out '~nosuchuser/x'` ended in a traceback, pathlib's "RuntimeError: Could
    not determine home directory.", where fmnist took it as the shell does."""
    flags = ["--out", str(tmp_path / "repo")] if flag != "--out" else []
    result = run_training(*flags, flag, f"~{NOBODY}/x", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, no_user(flag, "fmnist-train") + "\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--csv", "--json"])
def test_fmnist_refuses_the_home_of_no_user_as_fmnist_train_does(capsys, flag):
    with pytest.raises(SystemExit, match=r"^2$"):
        cli.main(["score", flag, f"~{NOBODY}/x"])
    assert capsys.readouterr().err == no_user(flag, "fmnist score") + "\n"


@pytest.mark.parametrize("command", [["score"], ["classify", "--test-index", "0"]])
def test_fmnist_data_dir_refuses_the_home_of_no_user_naming_the_flag(capsys, command):
    """`fmnist score --data-dir '~nosuchuser/x'` said "error: Could not determine home directory."
    (pathlib's, as the test set was read), exit 1, naming neither the flag nor the path."""
    with pytest.raises(SystemExit, match=r"^2$"):
        cli.main([*command, "--data-dir", f"~{NOBODY}/x"])
    assert capsys.readouterr().err == no_user("--data-dir", f"fmnist {command[0]}") + "\n"


@pytest.mark.parametrize(("flag", "others"), [("--model-repository", []),
                                               ("--tls-cert", ["--tls-key", "key.pem"])])
def test_fmnist_serve_refuses_the_home_of_no_user_as_the_others_do(capsys, flag, others):
    """`fmnist-serve --model-repository '~nosuchuser/x'` ended in pathlib's traceback,
    "RuntimeError: Could not determine home directory."; a TLS file's `~NOBODY` was taken as
    a file of that name, and failed later saying it was missing."""
    from serving import cli as serve

    assert serve.main([flag, f"~{NOBODY}/x", *others]) == 2
    assert capsys.readouterr().err == no_user(flag, "fmnist-serve") + "\n"


def test_fmnist_data_dir_variable_in_the_home_of_no_user_is_named(capsys, monkeypatch):
    """FMNIST_DATA_DIR=~nosuchuser/x: `fmnist score` said "error: Could not determine home
    directory." (pathlib's), naming neither the variable nor the path (common.dataset.data_dir,
    which the page's test images read too). Now --data-dir's variable, refused as a bad flag
    is (exit 2), before any call."""
    monkeypatch.setenv("FMNIST_DATA_DIR", f"~{NOBODY}/x")
    with pytest.raises(SystemExit) as refused:
        cli.main(["score", "--target", "127.0.0.1:1"])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"fmnist score: error: FMNIST_DATA_DIR: expected a path, got '~{NOBODY}/x': ~{NOBODY} is "
        f"the home folder of a user {NOBODY!r}, and there is none here (see fmnist score --help)\n")


@pytest.mark.parametrize("case", [
    ("fmnist-train", ["--out", "", "--report-dir", "full"], "--out"),
    ("fmnist-train", ["--out", "repo", "--report-dir", ""], "--report-dir"),
    ("fmnist-train", ["--out", "repo", "--data-dir", ""], "--data-dir"),
    ("fmnist-serve", ["--model-repository", ""], "--model-repository"),
    ("fmnist score", ["score", "--csv", ""], "--csv"),
    ("fmnist score", ["score", "--json="], "--json"),
    ("fmnist classify", ["classify", "--test-index", "0", "--data-dir", ""], "--data-dir"),
    ("fmnist classify", ["classify", "a.png", ""], "FILE"),
], ids=lambda case: " ".join([case[0], *case[1]]))
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(tmp_path, monkeypatch,
                                                                   capsys, case):
    """`fmnist-train --out "$REPO"`, REPO unset, trained into the current folder (Path("") is
    "."), and --report-dir "" wrote the report there; `fmnist score --csv ""` said "--csv .: Is
    a directory", `fmnist-serve --model-repository ""` served (or not) the current folder."""
    from serving import cli as serve
    from training import cli as train

    program, argv, named = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old-report.md").touch()
    main = {"fmnist-serve": serve.main, "fmnist": cli.main, "fmnist-train": train.main}
    try:
        status = main[program.split()[0]](argv)
    except SystemExit as exit_:
        status = exit_.code
    assert (status, capsys.readouterr().err) == (2, (
        f"{program}: error: {named}: expected a path, got '' (. is the current folder) "
        f"(see {program} --help)\n"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["full"]
