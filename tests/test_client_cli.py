"""The client: ``ClassifierClient`` and the ``fmnist`` command line against a real server."""

import os
import subprocess
import sys

import numpy as np
import pytest

from common.contract import CLASS_NAMES
from serving.client import cli
from serving.client.api import ClassifierClient
from tests.conftest import reference


def test_client_classify_returns_arrays_equal_to_onnxruntime(target, test_set, model_repository):
    images = test_set[0][:64]
    with ClassifierClient(target) as client:
        answer = client.classify(images, model="softmax", request_id="r1")
    assert (answer.model.name, answer.model.version, answer.request_id) == ("softmax", 1, "r1")
    assert answer.model.probabilities.shape == (64, 10)
    probabilities, labels = reference(model_repository, "softmax", 1, images)
    np.testing.assert_array_equal(answer.model.probabilities, probabilities)
    np.testing.assert_array_equal(answer.model.labels, labels)
    np.testing.assert_array_equal(answer.baseline.labels,
                                  reference(model_repository, "baseline", 1, images)[1])
    assert answer.model.class_names == [CLASS_NAMES[label] for label in labels]


def test_client_classify_batches_streams_in_order(target, test_set):
    batches = [test_set[0][i : i + 100] for i in range(0, 1000, 100)]
    with ClassifierClient(target) as client:
        answers = list(client.classify_batches(batches))
    assert [a.request_id for a in answers] == [str(i) for i in range(10)]
    assert sum(len(a) for a in answers) == 1000


def top_class(output: str, row: int) -> str:
    """The first class named on the model line of the ``row``-th image of ``fmnist classify``."""
    model_line = output.splitlines()[3 * row + 1]
    return model_line[len("  baseline v1  ") :].split("%")[0].rsplit(" ", 1)[0].strip()


def test_classify_test_indices_prints_top_classes_and_baseline(target, capsys, test_set,
                                                               model_repository):
    status = cli.main(["classify", "--target", target, "--test-index", "0", "1", "2"])
    output = capsys.readouterr().out
    assert status == 0
    lines = output.splitlines()
    assert len(lines) == 9
    assert lines[0] == "test[0]  (true: Ankle boot)"
    assert lines[1].startswith("  mlp v2 ")
    assert lines[2].startswith("  baseline v1 ")
    assert lines[1].count("%") == 3
    _, labels = reference(model_repository, "mlp", 2, test_set[0][:3])
    assert [top_class(output, row) for row in range(3)] == [CLASS_NAMES[k] for k in labels]


def test_test_index_given_twice_classifies_both(target, capsys):
    """`--test-index 0 --test-index 5` classified image 5 alone, saying nothing of image 0."""
    assert cli.main(["classify", "--target", target, "--test-index", "0", "--test-index", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[::3] == ["test[0]  (true: Ankle boot)",
                                                         "test[5]  (true: Trouser)"]


def test_classify_errors_are_one_line(target, capsys):
    status = cli.main(["classify", "--target", target, "--model", "resnet", "--test-index", "0"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == ("fmnist classify: error: NOT_FOUND: model: no model 'resnet'; "
                   "loaded models: baseline, mlp, softmax\n")
    assert cli.main(["classify", "--target", target, "--test-index", "10000"]) == 2  # usage
    assert capsys.readouterr().err == (
        "fmnist classify: error: --test-index 10000: expected 0..9999 (see fmnist classify "
        "--help)\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["classify"], "fmnist classify: error: nothing to classify: give image/.npy files or "
     "--test-index"),
    (["score", "--offset", "10000"], "fmnist score: error: --offset 10000: outside the 10000 "
     "test images"),  # said "--limit None"
    (["score", "--tolerance", "0.01"], "fmnist score: error: --tolerance 0.01 without "
     "--expect-accuracy: it is the allowed difference from the expected accuracy"),  # ignored
])
def test_arguments_that_cannot_work_exit_2_with_one_line(target, capsys, argv, message):
    """As argparse's own errors: they were exit 1, as if the server had failed."""
    assert cli.main([*argv, "--target", target]) == 2
    assert capsys.readouterr().err == f"{message} (see fmnist {argv[0]} --help)\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["score", "--expect-accuracy", "1.5"], "expected a fraction 0..1 or 'manifest', got 1.5"),
    (["score", "--expect-accuracy", "foo"], "expected a fraction 0..1 or 'manifest', got foo"),
    (["score", "--limit", "0"], "expected a positive integer, got 0"),
    (["score", "--offset", "-1"], "expected an index >= 0, got -1"),
    (["classify", "--top", "11", "--test-index", "0"], "expected 1..10, got 11"),  # showed 10
    # said "UNAVAILABLE: errors resolving http://...: ... Misformatted domain name"
    (["models", "--target", "http://127.0.0.1:8080/"], "fmnist speaks gRPC: expected its "
     "HOST:PORT (the server's --port), not an HTTP URL, got 'http://127.0.0.1:8080/'"),
])
def test_argument_values_are_checked_before_anything_runs(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(f"{message} (see fmnist {argv[0]} --help)\n")


def test_health_and_models(target, capsys):
    assert cli.main(["health", "--target", target]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert cli.main(["health", "--target", target, "--service", "fashion_mnist.v1.Classifier"]) == 0
    capsys.readouterr()
    assert cli.main(["health", "--target", target, "--service", "nosuch"]) == 1
    assert capsys.readouterr().err == (  # gRPC's health service gives no details
        "fmnist health: error: NOT_FOUND: the server has no service 'nosuch'\n")
    assert cli.main(["models", "--target", target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [
        ["baseline", "1"], ["mlp", "1"], ["mlp", "2"], ["softmax", "1"]]
    assert lines[0].split()[2] == "newest"  # of its model's versions; not the default model
    assert lines[3].split()[2] == "yes"


def test_models_shows_a_dash_for_an_accuracy_nobody_measured(repository_copy, capsys):
    """A version published by hand, without metrics, read as an accuracy of 0.0000."""
    from tests.conftest import local_settings, running_server, tiny_classifier
    from training.repository import write_version

    write_version(repository_copy, "softmax", tiny_classifier(5), {"description": "by hand"})
    with running_server(local_settings(model_repository=repository_copy)) as server:
        assert cli.main(["models", "--target", f"127.0.0.1:{server.port}"]) == 0
    rows = {tuple(line.split()[:2]): line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["softmax", "2"][2:4] == ["yes", "-"] and rows["softmax", "1"][2] == "0.1000"


@pytest.mark.parametrize(("target", "code"), [("127.0.0.1:9", "UNAVAILABLE"),
                                              ("ipv4:127.0.0.1", "UNKNOWN")])  # gRPC C++ logged
# 3 lines first (for an empty target, which fmnist now refuses as a HOST without a PORT)
def test_health_of_a_server_that_is_not_there_exits_1_with_one_line(target, code):
    environ = {name: value for name, value in os.environ.items() if name != "GRPC_VERBOSITY"}
    result = subprocess.run(
        [sys.executable, "-m", "serving.client", "health", "--target", target,
         "--timeout", "2"], capture_output=True, text=True, timeout=60, check=False, env=environ)
    assert result.returncode == 1
    assert result.stderr.startswith(f"fmnist health: error: {code}: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_the_command_quiets_grpc_for_itself_only(target, capsys, monkeypatch):
    """Set in the calling process, GRPC_VERBOSITY=NONE reached every process it started later
    (a server's own gRPC log then said nothing)."""
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    assert cli.main(["health", "--target", target]) == 0
    assert "GRPC_VERBOSITY" not in os.environ
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")
    assert cli.main(["health", "--target", target]) == 0
    assert os.environ["GRPC_VERBOSITY"] == "ERROR"


def test_env_vars_say_where_the_server_is(target, capsys, monkeypatch):
    monkeypatch.setenv("FMNIST_TARGET", target)
    monkeypatch.setenv("FMNIST_TIMEOUT", "5")
    assert cli.main(["health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert cli.main(["health", "--target", "127.0.0.1:9", "--timeout", "1"]) == 1  # flags win


@pytest.mark.parametrize("timeout", ["soon", "inf", "0", "-1", "nan"])
def test_a_bad_env_var_is_one_line_naming_it(capsys, monkeypatch, timeout):
    monkeypatch.setenv("FMNIST_TIMEOUT", timeout)
    with pytest.raises(SystemExit, match=r"^2$"):  # exit 2
        cli.main(["health"])
    assert capsys.readouterr().err == (
        f"fmnist health: error: FMNIST_TIMEOUT: expected seconds > 0 and <= 86400 (a day), got "
        f"{timeout} (see fmnist health --help)\n")


def test_help_never_shows_the_token(capsys, monkeypatch):
    monkeypatch.setenv("FMNIST_TOKEN", "s3cret")
    with pytest.raises(SystemExit):
        cli.main(["models", "--help"])
    help_text = capsys.readouterr().out
    assert "[env FMNIST_TOKEN]" in " ".join(help_text.split())
    assert "s3cret" not in help_text


@pytest.mark.parametrize(("flags", "environ", "message"), [
    (["--tls-cert", "client.pem"], {}, "--tls-cert (FMNIST_TLS_CERT) given without --tls-key "
     "(FMNIST_TLS_KEY): mutual TLS needs the client certificate and its key"),
    ([], {"FMNIST_TLS_KEY": "client.key"}, "--tls-key (FMNIST_TLS_KEY) given without "
     "--tls-cert (FMNIST_TLS_CERT): mutual TLS needs the client certificate and its key"),
])
def test_a_client_certificate_without_its_key_is_a_usage_error(capsys, monkeypatch, flags,
                                                               environ, message):
    """It exited 1, as a server's failure would, saying 'a client certificate needs its key
    and the key its certificate' without naming the flag or variable that gave one."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["health", "--target", "127.0.0.1:9", *flags]) == 2
    assert capsys.readouterr().err == (
        f"fmnist health: error: {message} (see fmnist health --help)\n")


@pytest.mark.parametrize(("flags", "environ", "message"), [
    (["--tls-ca", "/nonexistent/ca.pem"], {},
     "--tls-ca /nonexistent/ca.pem: No such file or directory"),
    (["--tls-cert", "/dev/null", "--tls-key", "/nonexistent/client.key"], {},
     "--tls-key /nonexistent/client.key: No such file or directory"),
    (["--tls-key", "/dev/null"], {"FMNIST_TLS_CERT": "/"}, "FMNIST_TLS_CERT=/: Is a directory"),
    (["--tls"], {"FMNIST_TLS_CA": "/nonexistent/ca.pem"},  # --tls is no --tls-ca abbreviated
     "FMNIST_TLS_CA=/nonexistent/ca.pem: No such file or directory"),
])
def test_a_tls_file_that_cannot_be_read_is_named_by_its_flag(capsys, monkeypatch, flags,
                                                             environ, message):
    """It said "[Errno 2] No such file or directory: '/nonexistent/ca.pem'", naming no flag."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["health", "--target", "127.0.0.1:9", *flags]) == 1
    assert capsys.readouterr().err == f"fmnist health: error: {message}\n"


def test_fmnist_tls_turns_tls_on_as_the_other_security_variables_do(target, capsys,
                                                                    monkeypatch):
    """FMNIST_TLS=1 was ignored without a word: the client spoke plaintext to a TLS server and
    got 'Socket closed', while FMNIST_TLS_CA beside it turned TLS on."""
    monkeypatch.setenv("FMNIST_TLS", "yes")  # this server speaks plaintext: TLS fails
    assert cli.main(["health", "--target", target, "--timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith("fmnist health: error: UNAVAILABLE: ")
    monkeypatch.setenv("FMNIST_TLS", "off")
    assert cli.main(["health", "--target", target]) == 0
    monkeypatch.setenv("FMNIST_TLS", "maybe")
    with pytest.raises(SystemExit, match=r"^2$"):  # exit 2
        cli.main(["health", "--target", target])
    assert capsys.readouterr().err == ("fmnist health: error: FMNIST_TLS: expected 1, true, yes, "
                                       "on, 0, false, no or off, got 'maybe' (see fmnist health "
                                       "--help)\n")


def test_options_may_come_before_the_command(target, capsys):
    """`fmnist --target HOST:PORT health`, as kubectl and docker take options (and as the
    README's Kubernetes section writes `fmnist --lb round_robin`), said "argument COMMAND:
    invalid choice: 'HOST:PORT'"."""
    assert cli.main(["--target", target, "--lb", "round_robin", "health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert cli.main(["--top", "1", "classify", "--target", target, "--test-index", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3



def test_options_with_no_command_after_them_say_the_command_is_missing(capsys):
    """`fmnist --timeout 1` said "COMMAND: invalid choice: '1'", taking the option's value for
    a command: the command is what is missing."""
    for argv in (["--timeout", "1"], ["--target", "127.0.0.1:9", "--lb", "round_robin"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err == (
            "fmnist: error: no COMMAND after the options: give one of classify, score, health, "
            "models (see fmnist --help)\n")

def test_targets_with_a_port_reach_the_server_as_before(target, capsys):
    port = target.rsplit(":", 1)[1]
    for address in (f"localhost:{port}", f"dns:///127.0.0.1:{port}", f"dns:127.0.0.1:{port}",
                    f"ipv4:127.0.0.1:{port}", f"DNS:///127.0.0.1:{port}",  # any case, as gRPC's
                    f"IPv4:127.0.0.1:{port},127.0.0.1:9"):
        assert cli.main(["health", "--target", address]) == 0, capsys.readouterr().err
    for address in ("[::1]:9", "unix:/nonexistent/fmnist.sock"):  # taken, and nothing there
        assert cli.main(["health", "--target", address, "--timeout", "1"]) == 1
        assert capsys.readouterr().err.startswith("fmnist health: error: UNAVAILABLE: ")


@pytest.mark.parametrize("address", ["grpc://127.0.0.1:50051", "passthrough:///127.0.0.1:50051"])
def test_a_target_of_a_scheme_grpc_lacks_is_refused_as_such(capsys, address):
    """It was refused as "without a port gRPC tries 443", though it had one."""
    with pytest.raises(SystemExit):
        cli.main(["health", "--target", address])
    assert capsys.readouterr().err == (
        f"fmnist health: error: --target: expected HOST:PORT or a gRPC name such as "
        f"dns:///NAME:PORT, got {address!r}: gRPC has no {address.partition(':')[0]}: scheme "
        "(see fmnist health --help)\n")


def test_every_option_of_fmnist_says_what_to_give():
    """`--timeout TIMEOUT`, `--csv CSV`, `--batch-size BATCH_SIZE`: argparse's placeholder, the
    flag's own name, said nothing of what to give (seconds? a file? how many?)."""
    commands = cli._parser()._subparsers._group_actions[0].choices
    said = {}
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.nargs != 0 and not action.choices:
                said[f"{name} {action.option_strings[0]}"] = action.metavar
                assert action.metavar, (name, action.dest)  # chosen, not argparse's
    assert said["score --timeout"] == "SECONDS" and said["health --target"] == "HOST:PORT"
    assert (said["score --csv"], said["score --json"], said["score --batch-size"],
            said["score --expect-accuracy"]) == ("FILE", "FILE", "N", "ACCURACY")
    assert "[--target HOST:PORT]" in commands["models"].format_usage()  # as README's table
