"""``fmnist --target``: what gRPC would take otherwise than it was meant."""

import re
import subprocess
import sys

import pytest

from serving.client import cli


def refused_by_flag_and_env_var(capsys, monkeypatch, address: str, message: str) -> None:
    """``fmnist health`` given ``address`` by --target, then by FMNIST_TARGET: exit 2 and one
    line naming where it came from, with ``message``."""
    with pytest.raises(SystemExit, match=r"^2$"):  # exit 2
        cli.main(["health", "--target", address])
    assert capsys.readouterr().err == (
        f"fmnist health: error: --target: {message} (see fmnist health --help)\n")
    monkeypatch.setenv("FMNIST_TARGET", address)
    with pytest.raises(SystemExit, match=r"^2$"):
        cli.main(["health"])
    assert capsys.readouterr().err == (
        f"fmnist health: error: FMNIST_TARGET: {message} (see fmnist health --help)\n")


@pytest.mark.parametrize("address", ["myhost", "localhost:", "dns:///localhost", "::1", "[::1]"])
def test_a_target_without_a_port_is_refused_naming_the_flag(capsys, monkeypatch, address):
    """`--target myhost` (or FMNIST_TARGET=myhost) went to port 443 without a word and failed
    as a server that was not there."""
    refused_by_flag_and_env_var(capsys, monkeypatch, address, (
        f"expected HOST:PORT (fmnist-serve's --port, 50051 unless set otherwise), got {address!r}: "
        "without a port gRPC tries 443"))


@pytest.mark.parametrize(("address", "shown"), [
    ("user:s3cret@127.0.0.1:50051", "user:***@127.0.0.1:50051"),
    ("dns:///user:s3cret@localhost:50051", "dns:///user:***@localhost:50051"),
    ("s3cret@127.0.0.1:50051", "***@127.0.0.1:50051"),
    ("http://user:s3cret@127.0.0.1:50051", "http://user:***@127.0.0.1:50051"),
    ("127.0.0.1:50051?token=s3cret", "127.0.0.1:50051?token=***"),
    ("127.0.0.1:50051?s3cret", "127.0.0.1:50051?***"),
    ("127.0.0.1:50051?model=mlp&token=s3cret", "127.0.0.1:50051?model=***&token=***")])
def test_a_target_with_credentials_is_refused_without_showing_them(capsys, monkeypatch, address,
                                                                   shown):
    """`--target user:s3cret@host:50051` (or FMNIST_TARGET=host:50051?token=s3cret, as a URL
    carries them) was refused as a target without a port, its secret said on stderr, into
    the logs; the token goes by --token or FMNIST_TOKEN, and nothing of a secret is shown."""
    refused_by_flag_and_env_var(capsys, monkeypatch, address, (
        f"expected HOST:PORT without credentials, got {shown!r}: give a token by --token or "
        "FMNIST_TOKEN instead (a target shows in logs and in ps)"))


@pytest.mark.parametrize(("address", "shown"), [
    ("@127.0.0.1:50051", "@127.0.0.1:50051"), ("user:@127.0.0.1:50051", "user:@127.0.0.1:50051"),
    ("127.0.0.1:50051?token=", "127.0.0.1:50051?token="),
    ("127.0.0.1:50051?model=mlp&token=", "127.0.0.1:50051?model=***&token=")])
def test_an_empty_credential_is_refused_as_given(capsys, monkeypatch, address, shown):
    """`--target @host:1` (`"$TOKEN@host:1"`, the variable unset) was said as '***@host:1', as if
    it held a secret: an empty one hides nothing, and is shown as given. Still refused: gRPC
    takes the @ for part of the host name, and drops an empty ?token= as any query."""
    refused_by_flag_and_env_var(capsys, monkeypatch, address, (
        f"expected HOST:PORT without credentials, got {shown!r}: give a token by --token or "
        "FMNIST_TOKEN instead (a target shows in logs and in ps)"))


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "dns:///localhost:65536", "myhost:-5",
                                     "[::1]:0"])
def test_a_port_out_of_range_is_refused(capsys, address):
    """gRPC took the port modulo 65536: `--target 127.0.0.1:111697` (a typo of 11697) reached
    whatever listened on 46161, and 99999 said "Connection refused" naming port 34463."""
    with pytest.raises(SystemExit) as refused:
        cli.main(["health", "--target", address])
    assert refused.value.code == 2
    assert capsys.readouterr().err == (
        f"fmnist health: error: --target: expected a port 1..65535, got {address!r} (see fmnist "
        "health --help)\n")


@pytest.mark.parametrize(("address", "port"), [("127.0.0.1:abc", "abc"), ("localhost:0x50", "0x50"),
                                               ("dns:///localhost:HTTP", "HTTP"),
                                               ("[::1]:\u0663", "\u0663"),
                                               ("127.0.0.1:50051?", "50051?")])  # no secret
def test_a_port_that_is_no_number_nor_service_is_refused(capsys, monkeypatch, address, port):
    """`--target 127.0.0.1:abc` was left to gRPC, exit 1: "UNAVAILABLE: errors resolving
    127.0.0.1:abc: [field:hostname lookup error:Failed to parse port in name: ...]"."""
    refused_by_flag_and_env_var(capsys, monkeypatch, address, (
        f"expected a port 1..65535, got {address!r}: {port!r} is neither a number nor a service "
        "name (such as http)"))


def test_a_service_name_is_taken_as_its_port():
    """gRPC resolves `:http` to port 80, as getaddrinfo does: taken as before. The command runs
    in a network namespace of its own, where nothing listens on port 80 (the machine's may
    have a web server: the call then waited out its --timeout, naming no port)."""
    namespace = ["unshare", "--user", "--map-root-user", "--net"]
    if subprocess.run([*namespace, "true"], check=False, capture_output=True).returncode:
        pytest.skip("unshare --user --net cannot run here")
    result = subprocess.run([*namespace, sys.executable, "-m", "serving.client", "health",
                             "--target", "127.0.0.1:http", "--timeout", "2"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert "ipv4:127.0.0.1:80: " in result.stderr


@pytest.mark.parametrize("address", ["myhost", "http://127.0.0.1:50051", "127.0.0.1:99999",
                                     "user:s3cret@127.0.0.1:50051"])
def test_the_python_api_refuses_the_targets_the_command_refuses(capsys, address):
    """`ClassifierClient("myhost")` went to port 443 without a word (and 127.0.0.1:99999 to
    34463), where `fmnist --target myhost` is refused: the same check, the same words."""
    from serving.client.api import ClassifierClient

    with pytest.raises(SystemExit):
        cli.main(["health", "--target", address])
    said = capsys.readouterr().err.removeprefix("fmnist health: error: --target: ").removesuffix(
        " (see fmnist health --help)\n")
    with pytest.raises(ValueError) as refused:
        ClassifierClient(address)
    assert str(refused.value) == said


@pytest.mark.parametrize(("address", "kind"), [(50051, "int"), (None, "NoneType"),
                                               (b"127.0.0.1:50051", "bytes")])
def test_the_python_api_refuses_a_target_that_is_no_str(address, kind):
    """`ClassifierClient(50051)` (the port alone) or `ClassifierClient(None)` (an unset
    setting) raised "AttributeError: 'int' object has no attribute 'lower'" from inside the
    target's check; bytes failed further on, "TypeError: a bytes-like object is required, not
    'str'"."""
    from serving.client.api import ClassifierClient

    with pytest.raises(TypeError) as refused:
        ClassifierClient(address)
    assert str(refused.value) == f"target: expected a str such as '127.0.0.1:50051', got {kind}"


def test_the_python_api_refuses_a_load_balancing_policy_grpc_lacks():
    """`ClassifierClient(target, lb_policy="roundrobin")` sent every call to one address, gRPC
    saying only in a C++ log line that it used pick_first instead (fmnist --lb refuses it)."""
    from serving.client.api import ClassifierClient

    with pytest.raises(ValueError) as refused:
        ClassifierClient("127.0.0.1:50051", lb_policy="roundrobin")
    assert str(refused.value) == ("lb_policy: expected pick_first or round_robin, got "
                                  "'roundrobin'")


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 0, -1, float("nan")])
def test_the_python_api_refuses_a_timeout_the_command_refuses(timeout):
    """`ClassifierClient(target, timeout=math.inf)` ("no limit") failed every call at once,
    DEADLINE_EXCEEDED, as did 1e10 s (gRPC's deadline overflows) and 0; fmnist --timeout
    refuses each. None is no limit."""
    from serving.client.api import ClassifierClient

    with pytest.raises(ValueError) as refused:
        ClassifierClient("127.0.0.1:50051", timeout=timeout)
    assert str(refused.value) == ("timeout: expected seconds > 0 and <= 86400 (a day), got "
                                  f"{timeout} (None: no limit)")
    ClassifierClient("127.0.0.1:50051", timeout=None).close()


def test_a_timeout_the_python_api_takes_is_one_its_calls_can_use(target):
    """`ClassifierClient(target, timeout=os.environ["TIMEOUT"])`: "5" passed the check that
    fmnist --timeout runs (the flag takes "5"), but was kept as it came, and every call then
    failed in gRPC's own code, "TypeError: unsupported operand type(s) for +: 'float' and
    'str'"; the seconds checked are the seconds used."""
    from serving.client.api import ClassifierClient

    with ClassifierClient(target, timeout="5") as client:
        assert client.timeout == 5.0
        assert client.list_models()


@pytest.mark.parametrize(("address", "shown"), [
    ("unix:/run/fmnist.sock?token=s3cret", "unix:/run/fmnist.sock?token=***"),
    ("unix://user:s3cret@/run/fmnist.sock", "unix://user:***@/run/fmnist.sock"),
    ("unix-abstract:fmnist?s3cret", "unix-abstract:fmnist?***"),
    ("vsock:s3cret@2:50051", "vsock:***@2:50051"),
    ("vsock:2:50051?token=s3cret", "vsock:2:50051?token=***")])
def test_a_local_target_with_credentials_is_refused_without_showing_them(capsys, monkeypatch,
                                                                         address, shown):
    """unix:, unix-abstract: and vsock: targets were taken as they came: gRPC dropped the query
    of `unix:/run/fmnist.sock?token=s3cret` and called the socket without a token, which
    showed in ps and in the logs. Checked as HOST:PORT is; only a path's own @ is taken."""
    scheme = address.partition(":")[0]
    refused_by_flag_and_env_var(capsys, monkeypatch, address, (
        f"expected a {scheme}: target without credentials, got {shown!r}: give a token by "
        "--token or FMNIST_TOKEN instead (a target shows in logs and in ps)"))


def test_a_unix_socket_whose_path_holds_an_at_sign_is_reached(tmp_path, capsys):
    """An @ in a socket's path (or an abstract name) is the path's own, not a user's: taken."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    name = f"fmnist-{tmp_path.name}@test"
    for address in (f"unix:{tmp_path}/user@1000.sock", f"unix-abstract:{name}"):
        server.add_insecure_port(address)
    server.start()
    try:
        for address in (f"unix:{tmp_path}/user@1000.sock", f"unix:///{tmp_path}/user@1000.sock",
                        f"unix-abstract:{name}"):
            assert cli.main(["health", "--target", address, "--timeout", "10"]) == 0, address
    finally:
        server.stop(None)
    assert capsys.readouterr().out == "SERVING\n" * 3


@pytest.mark.parametrize("address", ["unix:/tmp/fmnist.sock?", "unix:///tmp/fmnist.sock?",
                                     "unix-abstract:fmnist?", "vsock:2:50051?",
                                     "ipv4:127.0.0.1:50051?", "ipv6:[::1]:50051?"])
def test_a_grpc_name_with_an_empty_query_is_refused_as_host_port_is(capsys, monkeypatch,
                                                                    address):
    """`--target 'unix:/tmp/x.sock?'` was taken, and every call failed UNKNOWN "Failed to
    create channel ... the target uri is not valid: dns:///unix:/tmp/x.sock?", exit 1, where
    `HOST:PORT?` is refused, exit 2; the Python API says the same words."""
    from serving.client.api import ClassifierClient

    message = (f"expected a {address.partition(':')[0]}: target without a '?', got "
               f"{address!r}: gRPC makes no channel of an empty query")
    refused_by_flag_and_env_var(capsys, monkeypatch, address, message)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ClassifierClient(address)


@pytest.mark.parametrize(("address", "form"), [
    ("ipv4:{target}#x", "a ipv4: target"), ("dns:///{target}#x", "HOST:PORT"),
    ("{target}#x", "HOST:PORT"), ("{host}#x:{port}", "HOST:PORT"),
    ("unix:/tmp/fmnist.sock#x", "a unix: target")])
def test_a_target_with_a_fragment_is_refused_as_a_query_is(target, capsys, monkeypatch, address,
                                                           form):
    """gRPC drops a '#' and all after it without a word: `--target ipv4:HOST:PORT#x` reached the
    server as if it were not there, `HOST#x:PORT` went to port 443, and `HOST:PORT#x` was
    refused as a port that is no number. Refused, naming the '#', as `HOST:PORT?` is; the
    Python API says the same words."""
    from serving.client.api import ClassifierClient

    host, port = target.rsplit(":", 1)
    address = address.format(target=target, host=host, port=port)
    message = (f"expected {form} without a '#', got {address!r}: gRPC drops the '#' and all "
               "after it, without a word")
    refused_by_flag_and_env_var(capsys, monkeypatch, address, message)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ClassifierClient(address)
