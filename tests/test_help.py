"""The three commands' --help (fmnist-train, fmnist-serve, fmnist): each default as the
command then takes it, and a help that cannot be written said as any other output is; their
--version."""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest

import serving


def help_of(command: list[str]) -> str:
    """The --help that ``command`` (``["fmnist", "score"]``) prints, from the parser the command
    builds, reading the env vars as it does (os.environ, as monkeypatch set them)."""
    from serving.client import cli
    from serving.settings import argument_parser
    from training.options import build_parser

    program, *argv = command
    shown = io.StringIO()
    with pytest.raises(SystemExit) as ended, contextlib.redirect_stdout(shown):
        {"fmnist-train": lambda: build_parser().parse_args([*argv, "--help"]),
         "fmnist-serve": lambda: argument_parser().parse_args([*argv, "--help"]),
         "fmnist": lambda: cli.main([*argv, "--help"])}[program]()
    assert ended.value.code == 0
    return shown.getvalue()


@pytest.mark.parametrize(("command", "environ", "shown"), [
    (["fmnist-train"], {"FMNIST_MLP_EPOCHS": "abc"},
     "--mlp-epochs N maximum epochs (default: refused: FMNIST_MLP_EPOCHS: expected a positive "
     "integer, got abc) [env FMNIST_MLP_EPOCHS]"),
    (["fmnist-train"], {"FMNIST_SEED": "-1"},
     "same models (default: refused: FMNIST_SEED: expected an integer >= 0 and <= 4294967295, "
     "got -1) [env FMNIST_SEED]"),
    (["fmnist-train"], {"FMNIST_EPOCHS": "0"},
     "--epochs N maximum epochs (default: refused: FMNIST_EPOCHS: expected a positive integer, "
     "got 0) [env FMNIST_EPOCHS]"),
    (["fmnist-train"], {"FMNIST_TRAIN_SUBSET": "all"}, "(default: refused: FMNIST_TRAIN_SUBSET: "
     "expected a positive integer, got all) [env FMNIST_TRAIN_SUBSET]"),
    (["fmnist-train"], {"FMNIST_MLP_EPOCHS": "7", "FMNIST_MLP_HIDDEN": "64,32"},
     "--mlp-epochs N maximum epochs (default: 7)"),  # a good value is the default shown
    (["fmnist-train"], {"FMNIST_MLP_HIDDEN": "64,32"}, "comma-separated (default: 64,32)"),
    (["fmnist-serve"], {"FMNIST_PARALLEL_INFERENCES": "abc"},
     "(default: refused: FMNIST_PARALLEL_INFERENCES:"),
    (["fmnist", "health"], {"FMNIST_TIMEOUT": "abc"}, "(default: refused: FMNIST_TIMEOUT: "
     "expected seconds > 0 and <= 86400 (a day), got abc) [env FMNIST_TIMEOUT]"),
])
def test_help_shows_the_default_an_env_var_gives_or_its_refusal(monkeypatch, command, environ,
                                                                  shown):
    """`fmnist-train --help` showed the built-in default (mlp epochs 20, seed 42) beside a
    variable holding a bad value that the run then refused, or a good one it then used (7),
    where fmnist's and fmnist-serve's --help show "refused: ..." and the variable's value; a
    help that tells its default in words (fmnist-serve's --parallel-inferences) hid it too."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert shown in " ".join(help_of(command).split())


@pytest.mark.parametrize(("command", "environ", "shown"), [
    (["fmnist-serve"], {"FMNIST_PARALLEL_INFERENCES": "3"},
     "(default: the CPUs this process may use) [env FMNIST_PARALLEL_INFERENCES=3]"),
    (["fmnist-train"], {"FMNIST_REPORT_DIR": "/r"},
     "(default: DIR/reports/<UTC timestamp>/) [env FMNIST_REPORT_DIR=/r]"),
    (["fmnist", "score"], {"FMNIST_LIMIT": "20", "FMNIST_CSV": "/tmp/100%.csv"},
     "(default: all from --offset on) [env FMNIST_LIMIT=20]"),
    (["fmnist", "score"], {"FMNIST_CSV": "/tmp/100%.csv"}, "[env FMNIST_CSV=/tmp/100%.csv]"),
    (["fmnist", "health"], {"FMNIST_TOKEN": "s3cret"}, "in ps) [env FMNIST_TOKEN]"),  # never
])
def test_help_shows_the_value_a_variable_gives_where_the_help_tells_its_default_in_words(
        monkeypatch, command, environ, shown):
    """FMNIST_PARALLEL_INFERENCES=3 fmnist-serve --help said "(default: the CPUs this process
    may use)", and FMNIST_LIMIT=20 fmnist score --help "(default: all from --offset on)":
    the default in words, not the one the command then takes. A token's value never shows."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    text = " ".join(help_of(command).split())
    assert shown in text and "s3cret" not in text


@pytest.mark.parametrize(("module", "program"), [
    ("training", "fmnist-train"), ("serving", "fmnist-serve"), ("serving.client", "fmnist")])
def test_each_command_says_its_version(module, program):
    """None had a --version: which release a container or a venv ran could not be asked of
    it. The package's, as argparse's action="version" says it; fmnist's subcommands keep
    theirs for the model's version (fmnist classify --version 2)."""
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"{program} {serving.__version__}\n", "")


def test_a_subcommands_version_is_still_the_models():
    from serving.client.cli import _parser

    assert _parser().parse_args(["classify", "--test-index", "0", "--version", "2"]).version == 2


HELPS = [["fmnist-train"], ["fmnist-serve"], *(["fmnist", *command] for command in (
    ["classify"], ["score"], ["health"], ["models"]))]


@pytest.mark.parametrize("command", HELPS, ids=" ".join)
def test_every_flag_says_its_default_before_its_env_var(monkeypatch, command):
    """Some flags read "(default: 42) [env FMNIST_SEED]", others "[env FMNIST_SEED] (default:
    42)", by whether the help text held its default (fmnist-train's per-model flags, --top) or
    the formatter added it after the variable add_option had put last; a refused variable's
    default too. One order: the default, then the variable, last on every flag."""
    # a refused default in each command's help: fmnist-train's, fmnist-serve's, fmnist's
    for variable, bad in (("FMNIST_SEED", "-1"), ("FMNIST_PARALLEL_INFERENCES", "abc"),
                          ("FMNIST_TIMEOUT", "abc")):
        monkeypatch.setenv(variable, bad)
    text = " ".join(help_of(command).split())
    assert "[env FMNIST_" in text and "(default: refused: FMNIST_" in text
    assert re.findall(r"\[env FMNIST_\w+\] \(default", text) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux's full disk)")
@pytest.mark.parametrize(("module", "argv", "program"), [
    ("training", ["--help"], "fmnist-train"), ("serving", ["--help"], "fmnist-serve"),
    ("serving.client", ["--help"], "fmnist"), ("serving.client", ["score", "--help"],
                                                "fmnist score"),
    ("serving", ["--version"], "fmnist-serve")])
def test_a_help_that_cannot_be_written_is_said(module, argv, program):
    """`fmnist-train --help > /dev/full` exited 0 and said nothing (argparse drops the error
    of writing its help), as if the help had been shown; a reader that stopped reading it
    (`| head -1`) is still no error."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", module, *argv], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (
        1, f"{program}: error: stdout: No space left on device\n")
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as stopped:
        result = subprocess.run([sys.executable, "-m", module, *argv], stdout=stopped,
                                stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("command", [*HELPS, ["fmnist"]], ids=" ".join)
def test_every_help_fits_an_80_column_terminal(monkeypatch, command):
    """fmnist-train's description and examples, written out by hand, ran to 94 columns and
    one group's title (never wrapped by argparse) to 176: an 80-column terminal broke them
    mid-word, where the other commands' help is wrapped to the terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    lines = help_of(command).splitlines()
    assert [line for line in lines if len(line) > 80] == []
    # an env var's tag kept whole: "[env" at a line's end, its name on the next, was seen
    assert [line for line in lines if line.endswith("[env")] == []
    # a flag or word kept whole: fmnist-serve's "(needs --tls-" at a line's end, "key)" on the
    # next, and fmnist's "or test-", "set images"
    assert [line for line in lines if re.search(r"\w-$", line)] == []


@pytest.mark.parametrize("command", HELPS, ids=" ".join)
def test_a_switch_says_its_default_as_on_or_off(monkeypatch, command):
    """fmnist-train's --mlp-batch-norm said "(default: True)", --mlp-flip-augment "(default:
    False)", and a switch an env var turned on (FMNIST_TLS=1) "(default: True)": Python's
    words. A switch's default is "on" or "off", as its variable takes it; a plain switch (no
    --no- form) that is off says nothing, as not giving it means."""
    for variable in ("FMNIST_TLS", "FMNIST_DEBUG", "FMNIST_CONFUSION_MATRIX"):
        monkeypatch.setenv(variable, "yes")
    program, *argv = command
    text = " ".join(help_of(command).split())
    assert re.findall(r"\(default: (?:True|False)\)", text) == []
    shown = {"fmnist-train": ["after each hidden layer (default: on) [env FMNIST_MLP_BATCH_NORM]",
                              "epoch) (default: off) [env FMNIST_MLP_FLIP_AUGMENT]",
                              "on errors (default: on) [env FMNIST_DEBUG=yes]"],
             "fmnist": ["CA certificates (default: on) [env FMNIST_TLS=yes]"]}.get(program, [])
    for said in shown + (["accuracy (default: on) [env FMNIST_CONFUSION_MATRIX=yes]"]
                         if argv == ["score"] else []):
        assert said in text


@pytest.mark.parametrize("module", ["training", "serving", "serving.client"])
def test_each_commands_help_says_its_flags_are_env_vars_too(module):
    """fmnist-train's and fmnist-serve's --help said that every flag is also FMNIST_<FLAG>;
    fmnist's said nothing of it (its subcommands' helps name each variable)."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=60, check=True)
    text = " ".join(result.stdout.split())
    assert re.search(r"([Ee]very (flag|option) (has|can also be set by) an|[Oo]ptions can also "
                     r"be set by) env(ironment)? var(iable)?s?:? \(?FMNIST_", text), text[-400:]


def test_fmnists_help_says_where_the_server_is_and_reads_as_no_pipe():
    """`fmnist --help` showed -h and --version alone, no word of --target (README: options may
    come before the command too, `fmnist --target HOST:PORT health`), and joined its examples
    with " | ", read as a shell pipe beside README's `curl -s URL | fmnist classify -`."""
    result = subprocess.run([sys.executable, "-m", "serving.client", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)
    text = " ".join(result.stdout.split())
    assert "fmnist --target HOST:PORT health (options may come before COMMAND too)" in text
    assert " | fmnist" not in text, text[-400:]


def test_fmnist_serves_help_example_listens_on_this_machine_only():
    """fmnist-serve --help's example, `fmnist-serve --model-repository model_repository --port
    50051`, listened on every interface (--host's default 0.0.0.0), tokenless, where README's
    Serving example gives --host 127.0.0.1."""
    result = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True,
                            text=True, timeout=60, check=True)
    text = " ".join(result.stdout.split())
    assert "Example: fmnist-serve --model-repository model_repository --host 127.0.0.1" in text


@pytest.mark.parametrize("columns", [80, 120, 129])
@pytest.mark.parametrize("command", [["fmnist-train"], ["fmnist-serve"], ["fmnist"]], ids=" ".join)
def test_every_helps_prose_fills_the_terminal_as_the_others_do(monkeypatch, command, columns):
    """fmnist-train's description and the words after its examples were wrapped by hand to 80
    columns (argparse's RawDescriptionHelpFormatter): at 120 they stayed there, where
    fmnist-serve's and fmnist's fill the terminal (common.flags' formatter, which breaks no
    word at a hyphen in an option's help, but did in theirs: "fmnist classify --test-",
    "index 0 1 2" at 129). Its examples stay as written."""
    monkeypatch.setenv("COLUMNS", str(columns))
    text = help_of(command)
    lines = text.splitlines()
    assert [line for line in lines if len(line) > columns or re.search(r"\w-$", line)] == []
    paragraphs = text.split("\n\n")
    for prose in (paragraphs[1], paragraphs[-1]):  # the description (after the usage), the last
        first, *more = prose.splitlines()
        assert not more or len(first) > columns - 25, prose  # more than a line: filled
    if command == ["fmnist-train"]:
        assert "\n    fmnist-train --out model_repository\n" in text  # an example, as written
