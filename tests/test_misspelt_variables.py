"""A near miss of a FMNIST_* variable of fmnist or fmnist-train is said, not ignored; a
variable of another of the three commands, which share a shell or a container, is not one."""

import pytest

from common import flags


def test_the_client_says_a_misspelt_variable_and_goes_on(target, capsys, monkeypatch):
    """FMNIST_TIMEOUTS=60 (for FMNIST_TIMEOUT) was ignored without a word: a slow call still
    ended at the default deadline, and nothing said why."""
    from serving.client import cli

    monkeypatch.setenv("FMNIST_TIMEOUTS", "60")
    monkeypatch.setenv("FMNIST_PORT", "6000")  # fmnist-serve's: no warning
    assert cli.main(["health", "--target", target]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "fmnist: warning: FMNIST_TIMEOUTS: not a setting of fmnist (did you mean "
        "FMNIST_TIMEOUT?); ignored"]


@pytest.mark.parametrize("command", ["fmnist-train", "fmnist"])
def test_no_variable_of_another_command_is_a_near_miss(monkeypatch, command):
    """fmnist-serve's, fmnist's and fmnist-train's variables (FMNIST_PORT,
    FMNIST_BASELINE_MODEL...) share a shell: none may read as a misspelling of another's."""
    from serving.client.cli import _parser
    from serving.settings import argument_parser
    from training.options import build_parser

    monkeypatch.setattr(flags, "READ", set())
    builders = {"fmnist-train": build_parser, "fmnist": _parser,
                "fmnist-serve": lambda: argument_parser(environ={})}
    builders.pop(command)()
    own = set(flags.READ)
    for build in builders.values():
        build()
    others = flags.READ - own
    assert len(others) > 30
    assert flags.near_misses(dict.fromkeys(others, "1"), own) == []
    misspelt = min(own) + "S"
    assert flags.near_misses({misspelt: "1"}, own) == [(misspelt, misspelt[:-1])]


@pytest.mark.parametrize("misspelt, meant", [
    ("FMNIST_AUTH_TOKN", "FMNIST_AUTH_TOKEN"),  # the server would ask no token
    ("FMNIST_TLS_CLIENTCA", "FMNIST_TLS_CLIENT_CA"),  # ... nor any client certificate
])
def test_the_server_refuses_a_misspelt_guard_rather_than_serve_without_it(misspelt, meant):
    """A variable that nearly spells the token's or a TLS file's was only warned about, and
    the server started without that guard: any client reached every method (the token's
    variable set but empty is refused at start for the same reason)."""
    from serving.settings import settings_from

    with pytest.raises(ValueError) as refused:
        settings_from([], {misspelt: "secret-or-path", "FMNIST_PORT": "6000"})
    assert str(refused.value).startswith(f"{misspelt}: ")
    assert meant in str(refused.value) and "secret-or-path" not in str(refused.value)


def test_the_client_refuses_a_misspelt_guard_rather_than_send_the_token_in_clear(
        target, capsys, monkeypatch):
    """FMNIST_TLSS=1 beside FMNIST_TOKEN: the client went plaintext, the token with it."""
    from serving.client import cli

    monkeypatch.setenv("FMNIST_TLSS", "1")
    monkeypatch.setenv("FMNIST_TOKEN", "s3cret")
    assert cli.main(["health", "--target", target]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fmnist: error: FMNIST_TLSS: ") and "FMNIST_TLS?" in error
    assert error.endswith(" (see fmnist --help)\n")
    assert error.count("\n") == 1 and "s3cret" not in error


def test_no_variable_any_command_reads_is_a_near_miss_of_a_guard(monkeypatch):
    """The variables of all three commands (they share shells and containers) are read as
    they are: none is refused as a misspelt token or TLS variable."""
    from serving.client.cli import _parser
    from serving.settings import argument_parser
    from training.options import build_parser

    monkeypatch.setattr(flags, "READ", set())
    monkeypatch.setattr(flags, "GUARDS", set())
    for build in (build_parser, _parser, lambda: argument_parser(environ={})):
        build()
    assert {"FMNIST_AUTH_TOKEN", "FMNIST_TLS_CLIENT_CA", "FMNIST_TOKEN", "FMNIST_TLS",
            "FMNIST_TLS_CA"} <= flags.GUARDS
    assert flags.near_misses(dict.fromkeys(flags.READ, "1"), flags.GUARDS) == []
