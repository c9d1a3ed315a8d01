"""A usage error (exit status 2) is one line, the same for the three commands: the program (and
`fmnist`'s subcommand), what is wrong, where to look. `fmnist` printed argparse's usage block
before it (so did `fmnist-serve` for an unknown flag), `fmnist-train` a line with "(see
fmnist-train --help)", `fmnist-serve` otherwise a bare line; argparse's "argument --epochs: "
beside `fmnist-serve`'s "--port: ". No flag is abbreviated (argparse took `--epoch 2` for
--epochs): an unknown one is named with those it begins or nearly spells."""

import pytest

CHOICES = "'classify', 'score', 'health', 'models'"
AMBIGUOUS_M = ("--model-repository, --max-request-images, --max-message-bytes, "
               "--max-batch-images, --metrics-port, --max-concurrent-calls or "
               "--max-connection-age")
EMPTY_FLAG = "empty (an unset variable?); leave the flag out to go without one"
CASES = [  # (command, argv, env, the line's program, its error)
    ("fmnist", [], {}, "fmnist", "the following arguments are required: COMMAND"),
    ("fmnist", ["foo"], {}, "fmnist", f"COMMAND: invalid choice: 'foo' (choose from {CHOICES})"),
    ("fmnist", ["classify", "--bogus"], {}, "fmnist classify", "unrecognized arguments: --bogus"),
    ("fmnist", ["--bogus", "health"], {}, "fmnist health", "unrecognized arguments: --bogus"),
    ("fmnist", ["health", "--tl", "1"], {}, "fmnist health",
     "unrecognized arguments: --tl (1 value not shown); did you mean --tls, --tls-ca, "
     "--tls-cert, --tls-key or --tls-server-name?"),
    ("fmnist", ["score", "--lim", "3"], {}, "fmnist score",  # it was taken for --limit
     "unrecognized arguments: --lim (1 value not shown); did you mean --limit?"),
    ("fmnist", ["classify", "--tpo", "3"], {}, "fmnist classify",
     "unrecognized arguments: --tpo; did you mean --top?"),
    ("fmnist", ["classify", "--top", "99"], {}, "fmnist classify", "--top: expected 1..10, got 99"),
    ("fmnist", ["classify", "--top"], {}, "fmnist classify", "--top: expected one argument"),
    ("fmnist", ["health"], {"FMNIST_TIMEOUT": "x"}, "fmnist health",
     "FMNIST_TIMEOUT: expected seconds > 0 and <= 86400 (a day), got x"),
    ("fmnist", ["health"], {"FMNIST_TOKN": "x"}, "fmnist", "FMNIST_TOKN: not a setting; did you "
     "mean FMNIST_TOKEN? (refused, not ignored: without it the server or the calls go unguarded)"),
    ("fmnist", ["health", "--tls-cert", "c.pem"], {}, "fmnist health",
     "--tls-cert (FMNIST_TLS_CERT) given without --tls-key (FMNIST_TLS_KEY): mutual TLS needs the "
     "client certificate and its key"),
    ("fmnist-serve", ["--bogus"], {}, "fmnist-serve", "unrecognized arguments: --bogus"),
    ("fmnist-serve", ["--m", "x"], {}, "fmnist-serve", "unrecognized arguments: --m (1 value "
     f"not shown); did you mean {AMBIGUOUS_M}?"),
    ("fmnist-serve", ["--po", "1"], {}, "fmnist-serve", "unrecognized arguments: --po (1 value "
     "not shown); did you mean --port or --poll-interval?"),
    # an empty flag or guard's variable (a script's unset "$TOKEN", compose's ${CERT}) turned
    # the token check, TLS (plaintext served) or client certificates off without a word
    *[("fmnist-serve", [flag, "", *others, "--model-repository", "none"], {}, "fmnist-serve",
       f"{flag}: {EMPTY_FLAG}") for flag, others in [
        ("--auth-token", []), ("--tls-cert", ["--tls-key", ""]), ("--tls-key", ["--tls-cert", ""]),
        ("--tls-client-ca", [])]],
    *[("fmnist", ["health", flag, "", *others], {}, "fmnist health", f"{flag}: {EMPTY_FLAG}")
      for flag, others in [("--token", []), ("--tls-ca", []), ("--tls-cert", ["--tls-key", ""]),
                           ("--tls-key", []), ("--tls-server-name", [])]],
    *[(command, [*argv, "--model-repository", "none"] if command == "fmnist-serve" else argv,
       {variable: ""}, program, f"{variable}: set but empty; unset it to go without one")
      for command, argv, program, variable in [
        ("fmnist-serve", [], "fmnist-serve", "FMNIST_TLS_CERT"),
        ("fmnist-serve", [], "fmnist-serve", "FMNIST_TLS_CLIENT_CA"),
        ("fmnist", ["health"], "fmnist health", "FMNIST_TLS"),
        ("fmnist", ["health"], "fmnist health", "FMNIST_TLS_CA"),
        ("fmnist", ["health"], "fmnist health", "FMNIST_TLS_KEY")]],
    ("fmnist-serve", ["--port", "x"], {}, "fmnist-serve",
     "--port: expected an integer >= 0 and <= 65535, got x"),
    ("fmnist-serve", ["--port"], {}, "fmnist-serve", "--port: expected one argument"),
    ("fmnist-serve", [], {"FMNIST_PORT": "x"}, "fmnist-serve",
     "FMNIST_PORT: expected an integer >= 0 and <= 65535, got x"),
    ("fmnist-train", [], {}, "fmnist-train", "the following arguments are required: --out"),
    ("fmnist-train", ["--out", "o", "--bogus"], {}, "fmnist-train",
     "unrecognized arguments: --bogus"),
    ("fmnist-train", ["--out", "o", "--epochs", "x"], {}, "fmnist-train",
     "--epochs: expected a positive integer, got x"),
    ("fmnist-train", ["--out", "o", "--epochs"], {}, "fmnist-train",
     "--epochs: expected one argument"),
    ("fmnist-train", ["--out", "o", "--ba", "3"], {}, "fmnist-train", "unrecognized arguments: "
     "--ba (1 value not shown); did you mean --batch-size, --baseline-max-iter, "
     "--baseline-alpha, --baseline-tol or --baseline-n-jobs?"),
    ("fmnist-train", ["--out", "o", "--epoch", "x"], {}, "fmnist-train",  # taken for --epochs
     "unrecognized arguments: --epoch (1 value not shown); did you mean --epochs?"),
    ("fmnist-train", ["--out", "o"], {"FMNIST_EPOCHS": "x"}, "fmnist-train",
     "FMNIST_EPOCHS: expected a positive integer, got x"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: " ".join([case[0], *case[1], *case[2]]))
def test_a_usage_error_is_one_line_naming_the_program_and_its_help(capsys, monkeypatch,
                                                                   tmp_path, case):
    command, argv, env, program, error = case
    from serving import cli as serve
    from serving.client import cli as client
    from training import cli as train

    monkeypatch.chdir(tmp_path)  # fmnist-train's --out o, never made: refused before
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    main = {"fmnist-serve": serve.main, "fmnist": client.main, "fmnist-train": train.main}
    try:
        status = main[command](argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    assert (status, captured.out, captured.err) == (
        2, "", f"{program}: error: {error} (see {program} --help)\n")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("argv", "message"), [
    (["health", "--timeout", "inf"], "--timeout: expected seconds > 0 and <= 86400 (a "
     "day), got inf"),
    # gRPC's deadline overflowed: every call failed at once, "DEADLINE_EXCEEDED: Deadline
    # Exceeded", as did score's stream at --timeout 1000000 for its 10,000 batches of 1
    (["health", "--timeout", "1e10"], "--timeout: expected seconds > 0 and <= 86400 "
     "(a day), got 1e10"),
    (["score", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["classify", "--top", "-2"], "--top: expected 1..10, got -2"),
    (["classify", "--version", "99999999999999999999"],  # protobuf's "Value out of range"
     "--version: expected a version 0..2^63-1, got 99999999999999999999"),
])
def test_bad_numbers_are_refused_before_any_call(capsys, argv, message):
    from serving.client import cli as client

    with pytest.raises(SystemExit) as refused:
        client.main(argv)
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"fmnist {argv[0]}: error: {message} (see fmnist {argv[0]} --help)\n")
