"""``fmnist``'s FMNIST_* variables: each flag wins over its own, even one set to a value that
cannot work."""

import argparse
import json

import pytest

from serving.client import cli


@pytest.mark.parametrize(("setting", "flag"), [
    ("FMNIST_TARGET=myhost", "--target"), ("FMNIST_TARGET=http://x:1", "--target"),
    ("FMNIST_TIMEOUT=soon", "--timeout"), ("FMNIST_LB=random", "--lb"),
    ("FMNIST_TLS=maybe", "--tls"), ("FMNIST_TOKEN=", "--token")])
def test_a_bad_env_var_that_a_flag_overrides_does_not_fail_the_run(target, capsys, monkeypatch,
                                                                   setting, flag):
    """`FMNIST_TARGET=myhost fmnist health --target GOOD` exited 2 on FMNIST_TARGET, the value
    the flag was given to replace."""
    monkeypatch.setenv(*setting.split("="))
    given = {"--target": [target], "--timeout": ["5"], "--lb": ["pick_first"], "--tls": [],
             "--token": ["t0ken"]}[flag]
    argv = ["health", "--target", target, *([flag, *given] if flag != "--target" else [])]
    if flag == "--tls":  # plaintext server: the flag's own TLS fails, not the env var
        assert cli.main([*argv, "--timeout", "2"]) == 1
        assert capsys.readouterr().err.startswith("fmnist health: error: UNAVAILABLE: ")
        return
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "SERVING\n"
    with pytest.raises(SystemExit):  # and --help shows
        cli.main(["health", "--help"])
    assert "[env FMNIST_TARGET]" in capsys.readouterr().out


def _options():
    """(command, action) for every option of the three commands, but --help and --version."""
    from common import flags
    from serving.settings import argument_parser
    from training.options import build_parser

    parsers = {"fmnist-train": build_parser(), "fmnist-serve": argument_parser(environ={}),
               **{f"fmnist {name}": sub for name, sub in
                  cli._parser()._subparsers._group_actions[0].choices.items()}}
    return flags, [(command, action) for command, parser in parsers.items()
                   for action in parser._actions if action.option_strings and not isinstance(
                       action, (argparse._HelpAction, argparse._VersionAction))]


def test_every_option_reads_its_env_var_or_says_why_not():
    """The contract: every flag also as FMNIST_<FLAG>. `fmnist score --model`, `--version`,
    `--limit`, classify's `--top`, health's `--service` (all of fmnist's but the connection's)
    had none, and said nothing of it."""
    flags, options = _options()
    without = [(command, action.option_strings[0]) for command, action in options
               if f"[env {flags.env_var(action.dest)}]" not in action.help
               or flags.env_var(action.dest) not in flags.READ]
    assert without == [("fmnist classify", "--test-index"), ("fmnist score", "--batch-size")]
    for command, flag in without:  # each says why, in its help
        assert "no env var: " in next(action.help for name, action in options
                                      if name == command and action.option_strings[0] == flag)


def test_a_variable_two_commands_read_means_the_same_to_both():
    """fmnist score's --batch-size (images a call) may not read FMNIST_BATCH_SIZE, fmnist-train's
    Keras mini-batch: a shell or CI job holds both commands' variables. Between fmnist's
    subcommands a variable is one option (its type, choices and default)."""
    flags, options = _options()
    readers: dict[str, set] = {}
    for command, action in options:
        if f"[env {flags.env_var(action.dest)}]" in action.help:
            readers.setdefault(flags.env_var(action.dest), set()).add(command.split()[0])
            if command.startswith("fmnist "):
                kind = (action.type, action.choices, action.default, action.nargs)
                assert readers.setdefault(action.dest, kind) == kind, (command, action.dest)
    shared = {name for name, commands in readers.items() if isinstance(commands, set)
              and len(commands) > 1}
    # the data set's directory; this process's own certificate and key (a server's, a client's)
    assert shared == {"FMNIST_DATA_DIR", "FMNIST_TLS_CERT", "FMNIST_TLS_KEY"}


def test_fmnist_takes_its_per_call_options_from_env_vars(target, tmp_path, capsys, monkeypatch):
    """FMNIST_MODEL=softmax FMNIST_TOP=1 fmnist classify; FMNIST_OFFSET, FMNIST_LIMIT,
    FMNIST_JSON for score: each as its flag, and the flag still wins."""
    for name, value in {"FMNIST_MODEL": "softmax", "FMNIST_TOP": "1", "FMNIST_OFFSET": "100",
                        "FMNIST_LIMIT": "20", "FMNIST_JSON": str(tmp_path / "score.json"),
                        "FMNIST_NO_PROGRESS": "yes"}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["classify", "--target", target, "--test-index", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:15] for line in lines[1:]] == ["  softmax v1   ", "  baseline v1  "]
    assert lines[1].count("%") == 1
    assert cli.main(["score", "--target", target, "--limit", "30"]) == 0
    figures = json.loads((tmp_path / "score.json").read_text())
    assert (figures["offset"], figures["images"]) == (100, 30)
    assert figures["model"]["name"] == "softmax", figures["model"]


def test_an_error_names_the_env_var_that_gave_the_value(target, capsys, monkeypatch):
    """FMNIST_INVERT=1 beside --test-index alone was said as "--invert: no picture file ...",
    a flag nobody typed."""
    monkeypatch.setenv("FMNIST_INVERT", "1")
    monkeypatch.setenv("FMNIST_LIMIT", "20000")
    assert cli.main(["classify", "--target", target, "--test-index", "0"]) == 2
    assert capsys.readouterr().err.startswith(
        "fmnist classify: error: FMNIST_INVERT=1: no picture file to invert")
    assert cli.main(["score", "--target", target]) == 2
    assert capsys.readouterr().err.startswith(
        "fmnist score: error: --offset 0 FMNIST_LIMIT=20000: outside the 10000 test images")
