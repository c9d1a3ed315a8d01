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
