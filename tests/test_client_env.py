"""``fmnist``'s FMNIST_* variables: each flag wins over its own, even one set to a value that
cannot work."""

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
