"""The one env-var mechanism of the three command lines: FMNIST_<DEST> for an option, named in
--help, used as its default, converted and checked as the flag would be."""

import argparse
from pathlib import Path

import pytest

from common.flags import ArgumentParser, add_option, bearer_token, env_var, positive_int


def parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    result = ArgumentParser(prog="tool", exit_on_error=False)
    add_option(result, "--max-batch-size", type=int, default=1024, help="most images",
               environ=environ)
    add_option(result, "--out", type=Path, required=True, help="where", environ=environ)
    group = result.add_argument_group("fitting")
    add_option(group, "--epochs", type=positive_int, default=20, help="epochs", environ=environ)
    add_option(group, "--progress", choices=("bar", "none"), default="bar", help="output",
               environ=environ)
    add_option(group, "--batch-norm", action=argparse.BooleanOptionalAction, default=False,
               help="normalise", environ=environ)
    add_option(group, "--debug", action="store_true", help="tracebacks", environ=environ)
    return result


def test_env_var_is_fmnist_and_the_dest_in_capitals():
    assert env_var("max_batch_size") == "FMNIST_MAX_BATCH_SIZE"


def test_a_flag_wins_over_its_env_var_which_wins_over_the_default():
    environ = {"FMNIST_MAX_BATCH_SIZE": "64", "FMNIST_OUT": "/tmp/env", "FMNIST_EPOCHS": "3"}
    args = parser(environ).parse_args(["--epochs", "5"])
    assert (args.max_batch_size, args.out, args.epochs, args.progress) == (
        64, Path("/tmp/env"), 5, "bar")


def test_an_empty_env_var_counts_as_unset():
    with pytest.raises(SystemExit):  # --out is still required
        parser({"FMNIST_OUT": "", "FMNIST_EPOCHS": ""}).parse_args([])
    assert parser({"FMNIST_EPOCHS": ""}).parse_args(["--out", "x"]).epochs == 20


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("yes", True), ("On", True),
                                                  ("0", False), ("no", False), ("OFF", False)])
def test_on_off_options_are_on_for_1_true_yes_on_off_for_0_false_no_off(value, expected):
    environ = {"FMNIST_BATCH_NORM": value, "FMNIST_DEBUG": value}
    args = parser(environ).parse_args(["--out", "x"])
    assert (args.batch_norm, args.debug) == (expected, expected)
    assert parser(environ).parse_args(["--out", "x", "--no-batch-norm"]).batch_norm is False


def test_help_names_each_env_var(capsys):
    with pytest.raises(SystemExit):
        parser({}).parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for help_text, name in [("most images (default: 1024)", "MAX_BATCH_SIZE"),
                            ("where", "OUT"), ("epochs (default: 20)", "EPOCHS"),
                            ("normalise", "BATCH_NORM")]:
        assert f"{help_text} [env FMNIST_{name}]" in text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FMNIST_MAX_BATCH_SIZE": "many"}, "FMNIST_MAX_BATCH_SIZE: invalid int value: 'many'"),
        ({"FMNIST_EPOCHS": "0"}, "FMNIST_EPOCHS: expected a positive integer, got 0"),
        ({"FMNIST_EPOCHS": "abc"}, "FMNIST_EPOCHS: expected a positive integer, got abc"),
        ({"FMNIST_BATCH_NORM": "maybe"},  # was off, silently
         "FMNIST_BATCH_NORM: expected 1, true, yes, on, 0, false, no or off, got 'maybe'"),
        ({"FMNIST_DEBUG": "tru"},
         "FMNIST_DEBUG: expected 1, true, yes, on, 0, false, no or off, got 'tru'"),
        ({"FMNIST_PROGRESS": "loud"},
         "FMNIST_PROGRESS: invalid choice: 'loud' (choose from 'bar', 'none')"),
    ],
)
def test_a_bad_env_var_is_a_value_error_naming_it(environ, message):
    with pytest.raises(ValueError) as caught:
        parser(environ).parse_args(["--out", "x"])
    assert str(caught.value) == message


@pytest.mark.parametrize("environ", [
    {"FMNIST_EPOCHS": "0", "FMNIST_BATCH_NORM": "maybe", "FMNIST_OUT": "x"},
    {"FMNIST_PROGRESS": "loud", "FMNIST_DEBUG": "tru", "FMNIST_MAX_BATCH_SIZE": "many"},
])
def test_a_bad_env_var_that_its_flag_overrides_is_not_refused(environ):
    """The flag wins over the env var, but a bad FMNIST_TARGET failed `fmnist health --target
    GOOD` (and a bad FMNIST_PORT `fmnist-serve --port 50051`): the value the flag replaces was
    refused first."""
    args = parser(environ).parse_args(["--out", "y", "--epochs", "2", "--no-batch-norm",
                                       "--progress", "none", "--debug", "--max-batch-size",
                                       "8"])
    assert (args.out, args.epochs, args.batch_norm, args.progress, args.debug,
            args.max_batch_size) == (Path("y"), 2, False, "none", True, 8)


def test_an_empty_secret_that_its_flag_overrides_is_not_refused(capsys):
    def token(environ, argv):
        result = ArgumentParser(prog="tool", exit_on_error=False)
        add_option(result, "--token", type=bearer_token, secret=True, environ=environ)
        return result.parse_args(argv).token

    assert token({"FMNIST_TOKEN": ""}, ["--token", "t0ken"]) == "t0ken"
    with pytest.raises(ValueError, match=r"^FMNIST_TOKEN: set but empty; unset it to go without"):
        token({"FMNIST_TOKEN": ""}, [])
    with pytest.raises(SystemExit):  # --help with the env var bad, its default hidden
        token({"FMNIST_TOKEN": " s3cret"}, ["--help"])
    assert "s3cret" not in capsys.readouterr().out


def test_options_of_subcommands_read_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("FMNIST_TARGET", "10.0.0.1:50051")
    top = argparse.ArgumentParser(prog="tool")
    health = top.add_subparsers(dest="command").add_parser("health")
    add_option(health, "--target", default="127.0.0.1:50051", help="server")
    assert top.parse_args(["health"]).target == "10.0.0.1:50051"
    assert top.parse_args(["health", "--target", "a:1"]).target == "a:1"


def test_help_never_shows_a_secret_set_by_its_env_var(capsys):
    result = argparse.ArgumentParser(prog="tool",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_option(result, "--token", secret=True, help="bearer token",
               environ={"FMNIST_TOKEN": "s3cret"})
    assert result.parse_args([]).token == "s3cret"
    with pytest.raises(SystemExit):
        result.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "bearer token [env FMNIST_TOKEN]" in " ".join(help_text.split())
    assert "s3cret" not in help_text


@pytest.mark.parametrize(("environ", "argv", "softmax", "mlp"), [
    ({"FMNIST_EPOCHS": "3"}, ["--mlp-epochs", "10"], 3, 10),  # a model's flag beats it
    ({"FMNIST_EPOCHS": "3", "FMNIST_MLP_EPOCHS": "10"}, [], 3, 10),  # so does its env var
    ({"FMNIST_MLP_EPOCHS": "10"}, ["--epochs", "4"], 4, 4),  # a shared flag beats both
])
def test_fmnist_train_shared_env_vars_are_both_models_defaults(monkeypatch, environ, argv,
                                                               softmax, mlp):
    from training.options import build_parser, keras_settings

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["--out", "repository", *argv])
    assert (keras_settings(args, "softmax").epochs, keras_settings(args, "mlp").epochs) == (
        softmax, mlp)


@pytest.mark.parametrize("argv", [["classify", "--help"], ["score", "--help"], ["--help"]])
def test_help_shows_no_empty_or_second_default(capsys, argv):
    """"(default: the server's) (default: )" and "(default: None)" were shown."""
    from serving.client import cli
    from serving.settings import argument_parser

    with pytest.raises(SystemExit):
        if argv == ["--help"]:
            argument_parser({}).parse_args(argv)
        else:
            cli.main(argv)
    text = " ".join(capsys.readouterr().out.split())
    for empty in ("(default: )", "(default: None)", "(default: [])", "(default: False)"):
        assert empty not in text
    assert "the server's) (default" not in text
    shown = {"classify": ["(default: 3)"], "score": ["first test image (default: 0)"],
             "--help": ["(0: none) (default: 0) [env FMNIST_HEALTH_PORT]"]}[argv[0]]
    for default in shown:  # 0 is a default to show, though 0 == False
        assert default in text


@pytest.mark.parametrize(("program", "argv", "named"), [
    ("fmnist-serve", ["--auth-tokn", "s3cret", "--port", "1"],
     "--auth-tokn (1 value not shown); did you mean --auth-token?"),
    ("fmnist-serve", ["stray", "--auth-tokn=s3cret", "s3cret"],
     "stray --auth-tokn (2 values not shown); did you mean --auth-token?"),
    ("fmnist health", ["health", "--tokn", "s3cret"],
     "--tokn (1 value not shown); did you mean --token?"),
    ("fmnist models", ["--tokn=s3cret", "models"],
     "--tokn (1 value not shown); did you mean --token?"),
    ("fmnist-train", ["--out", "repository", "--ot", "s3cret"],
     "--ot (1 value not shown); did you mean --out?"),
    # a token may start with "-" (1 in 64 of secrets.token_urlsafe()'s), or be stuck to -t
    ("fmnist-serve", ["--auth-tokn", "-s3cret"],
     "--auth-tokn (1 value not shown); did you mean --auth-token?"),
    ("fmnist health", ["health", "-ts3cret", "--bogus"], "-t --bogus (1 value not shown)"),
])
def test_an_unknown_flag_is_named_without_the_values_after_it(capsys, program, argv, named):
    """`fmnist-serve --auth-tokn SECRET` said "unrecognized arguments: --auth-tokn SECRET": a
    mistyped flag put its secret on stderr, hence in the logs. A word before any unknown flag
    is no flag's value: it is shown."""
    from serving import cli as serve
    from serving.client import cli as client
    from training import cli as train

    main = {"fmnist-serve": serve.main, "fmnist": client.main, "fmnist-train": train.main}
    with pytest.raises(SystemExit) as refused:
        main[program.split()[0]](argv)
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"{program}: error: unrecognized arguments: {named} (see {program} --help)\n")


def test_a_flag_cut_short_is_named_without_its_value(capsys):
    """`fmnist health --t=SECRET` (--target, --timeout, --token?) put the secret on stderr."""
    from serving.client import cli as client

    with pytest.raises(SystemExit) as refused:
        client.main(["health", "--t=s3cret could match"])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "s3cret" not in error
    assert ("fmnist health: error: unrecognized arguments: --t (1 value not shown); did you "
            "mean --target, --timeout,") in error


def test_number_in_says_its_bounds_as_written():
    """An int's bounds in full (it said <= 9.22337e+18), a float's as %g; nan and inf never."""
    from common.flags import number_in

    with pytest.raises(argparse.ArgumentTypeError,
                       match="expected an integer >= 0 and <= 9223372036854775807, got -1"):
        number_in(int, 0, 2**63 - 1)("-1")
    for text in ("nan", "inf", "1e3"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number > 0 and < 1"):
            number_in(float, 0, 1, low_open=True, high_open=True)(text)
    assert number_in(float, 0, none_word="none")("None") is None
    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 0 or 'none', "
                       "got default"):  # it meant None too: no tolerance, not the default one
        number_in(float, 0, none_word="none")("default")


@pytest.mark.parametrize(("argv", "named"), [
    ([], "FMNIST_REPORT_DIR=/r"),
    (["--report-dir", "/r"], "--report-dir /r"),
    (["--report-dir=/r"], "--report-dir /r"),
    (["--out", "/report-dir"], "FMNIST_REPORT_DIR=/r"),
])
def test_a_value_is_named_as_it_was_given(monkeypatch, argv, named):
    from common.flags import given

    monkeypatch.setenv("FMNIST_REPORT_DIR", "/r")
    assert given("--report-dir", "/r", argv) == named
    monkeypatch.delenv("FMNIST_REPORT_DIR")
    assert given("--report-dir", "/r", argv) == "--report-dir /r"
