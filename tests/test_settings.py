"""fmnist-serve's settings: flags over env vars over defaults, and one clear line for a value
out of its range, naming the flag or the env var that gave it."""

import re
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.settings import Settings, settings_from
from tests.server_process import server_process
from tests.test_ipv6_host import needs_ipv6


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--port", "x"], {}, "--port: expected an integer >= 0 and <= 65535, got x"),
        # an env var's error names the env var (it named the flag, which nobody had given)
        ([], {"FMNIST_MAX_REQUEST_IMAGES": "0"},
         "FMNIST_MAX_REQUEST_IMAGES: expected an integer >= 1, got 0"),
        (["--log-format", "xml"], {}, "--log-format: expected one of text, json, got 'xml'"),
        # one thread, held by an open stream, left none for health checks
        (["--call-threads", "1"], {}, "--call-threads: expected an integer >= 2, got 1"),
        (["--max-request-images", "100000"], {}, "--max-message-bytes: expected at least"),
        # a wait that long overflows the clock: SIGTERM then crashed the shutdown, which hung
        (["--grace-period", "inf"], {}, "--grace-period: expected a number >= 0 and <= 86400, "
         "got inf"),
        ([], {"FMNIST_POLL_INTERVAL": "nan"},
         "FMNIST_POLL_INTERVAL: expected 0 (no polling) or a number >= 0.1 and <= 86400, "
         "got nan"),
        # a scan of the repository every nanosecond: a near-busy loop, a core's worth of stat()
        (["--poll-interval", "1e-9"], {},
         "--poll-interval: expected 0 (no polling) or a number >= 0.1 and <= 86400, "
         "got 1e-9"),
        # a connection a millisecond: every client told GOAWAY, and reconnecting, without pause
        (["--max-connection-age", "1e-9"], {},
         "--max-connection-age: expected 0 (forever) or a number >= 0.1 and <= 86400, "
         "got 1e-9"),
        (["--batch-delay-us", "10000000000000"], {},
         "--batch-delay-us: expected an integer >= 0 and <= 1000000, got 10000000000000"),
        (["--max-message-bytes", "3000000000"], {},  # was a traceback from gRPC's C int
         "--max-message-bytes: expected an integer >= 1 and <= 2147483647, got 3000000000"),
        # with --workers 2 the servers shared the port (SO_REUSEPORT): calls went to either
        (["--port", "9000", "--http-port", "9000"], {"FMNIST_METRICS_PORT": "9100"},
         "--port 9000, --http-port 9000, --metrics-port 9100: expected different ports"),
        (["--health-port", "8080"], {}, "--port 50051, --http-port 8080, --health-port 8080: "
         "expected different ports"),
        # a Secret made from a file keeps its last newline: no client could ever present it
        # (it named --auth-token, which nobody had given)
        ([], {"FMNIST_AUTH_TOKEN": "s3cret\n"},
         "FMNIST_AUTH_TOKEN: begins or ends with white space"),
        (["--auth-token", "pässwörd"], {}, "--auth-token: begins or ends with white space"),
        # an empty Secret, or compose's ${FMNIST_AUTH_TOKEN} unset: it served with no check
        ([], {"FMNIST_AUTH_TOKEN": ""}, "FMNIST_AUTH_TOKEN: set but empty; unset it to go "
         "without one"),
    ],
)
def test_bad_settings_are_one_line(argv, environ, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        settings_from(argv, environ)


def test_settings_made_in_code_are_checked_as_flags_are(model_repository):
    with pytest.raises(ValueError, match=r"^--workers: expected an integer >= 1, got 0$"):
        Settings(model_repository=model_repository, workers=0)
    with pytest.raises(ValueError, match=r"^--grace-period: expected a number >= 0 and <= 86400, "
                                         r"got inf$"):
        Settings(model_repository=model_repository, grace_period=float("inf"))


def test_a_poll_interval_of_0_is_no_polling_and_of_0_1_s_or_more_is_taken(model_repository):
    for text, seconds in (("0", 0.0), ("-0", 0.0), ("0.1", 0.1), ("86400", 86400.0)):
        assert settings_from(["--poll-interval", text], {}).poll_interval == seconds
    assert Settings(model_repository=model_repository, poll_interval=0).poll_interval == 0
    with pytest.raises(ValueError, match=r"^--poll-interval: expected 0 \(no polling\) or a "
                       r"number >= 0.1 and <= 86400, got 0.05$"):
        Settings(model_repository=model_repository, poll_interval=0.05)


def test_a_connection_age_of_0_is_forever_and_of_0_1_s_or_more_is_taken():
    for text, seconds in (("0", 0.0), ("0.1", 0.1), ("86400", 86400.0)):
        assert settings_from(["--max-connection-age", text], {}).max_connection_age == seconds


def test_a_choice_is_taken_in_any_case_and_kept_as_written(tmp_path):
    """FMNIST_LOG_LEVEL=debug was taken, FMNIST_LOG_FORMAT=JSON and --grpc-server GRPCIO
    refused: the same kind of value, two rules."""
    environ = {"FMNIST_MODEL_REPOSITORY": str(tmp_path), "FMNIST_LOG_FORMAT": "JSON",
               "FMNIST_LOG_LEVEL": "warning"}
    settings = settings_from(["--grpc-server", "GRPCIO"], environ)
    assert (settings.log_format, settings.log_level, settings.grpc_server) == (
        "json", "WARNING", "grpcio")
    with pytest.raises(ValueError, match=r"^--log-format: expected one of text, json, got 'xml'$"):
        settings_from(["--log-format", "xml"], environ)


def test_flags_win_over_env_vars_which_win_over_defaults(tmp_path):
    environ = {"FMNIST_PORT": "6000", "FMNIST_MODEL_REPOSITORY": str(tmp_path),
               "FMNIST_LOG_LEVEL": "debug", "FMNIST_GRACE_PERIOD": "2.5"}
    settings = settings_from(["--port", "7000"], environ)
    assert settings.port == 7000
    assert settings.model_repository == tmp_path
    assert settings.log_level == "DEBUG"
    assert settings.grace_period == 2.5
    assert settings.max_request_images == 1024


def test_a_token_no_client_can_send_is_refused_at_start(model_repository):
    """A token of other than printable ASCII (a passphrase's "ö", a tab) started a server that
    refused every call: a gRPC client cannot put it in metadata (its own INTERNAL "Invalid
    metadata"), and over HTTP the header, read as Latin-1, never matched the token."""
    for token in ("pässwörd", "s3c\tret", "s3c\x00ret"):
        with pytest.raises(ValueError,
                           match=r"^--auth-token: .* printable ASCII: no gRPC or HTTP client"):
            Settings(model_repository=model_repository, auth_token=token)
    assert Settings(model_repository=model_repository, auth_token="a b~!").auth_token == "a b~!"


def test_an_env_var_no_setting_reads_is_named_in_a_warning(model_repository, monkeypatch):
    """A misspelt variable (FMNIST_METRIC_PORT for FMNIST_METRICS_PORT, FMNIST_GRACE for
    FMNIST_GRACE_PERIOD) was ignored without a word: the server ran without metrics, or with
    the default grace period, and nothing said why. Its warning names the setting it nearly
    spells, as fmnist's and fmnist-train's do (fmnist-serve's did not)."""
    monkeypatch.setenv("FMNIST_METRIC_PORT", "9090")
    monkeypatch.setenv("FMNIST_NO_SUCH_THING", "1")  # near no setting
    monkeypatch.setenv("FMNIST_DATA_DIR", "/nonexistent")  # read at run time, not a setting
    monkeypatch.setenv("FMNIST_GRACE_PERIOD", "1")
    with server_process(model_repository, "--workers", "1") as (_, logs):
        logs.wait_for("serving")
        warnings = [line["message"] for line in logs.lines if line.get("level") == "WARNING"]
    # (a tree without the native server built warns of that too)
    assert [text for text in warnings if text.startswith("FMNIST_")] == [
        "FMNIST_METRIC_PORT: not a setting of fmnist-serve (did you mean FMNIST_METRICS_PORT?); "
        "ignored", "FMNIST_NO_SUCH_THING: not a setting of fmnist-serve; ignored"]


@pytest.mark.parametrize("given_as", ["flag", "variable"])
def test_a_leading_tilde_in_the_model_repository_is_the_home_directory(tmp_path, monkeypatch,
                                                                        given_as):
    """fmnist-train --out=~/models publishes into the home's models; --model-repository=~/models
    (bash leaves that ~ alone, as an env file does) looked for a directory named "~"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["--model-repository=~/models"] if given_as == "flag" else []
    environ = {"FMNIST_MODEL_REPOSITORY": "~/models"} if given_as == "variable" else {}
    assert settings_from(argv, environ).model_repository == tmp_path / "models"


@needs_ipv6
def test_an_ipv6_host_in_brackets_is_the_address_itself(model_repository):
    """``--host [::1]``, as URLs write IPv6 (and the server's own log, ``address=[::1]:50051``),
    was no address: the server did not start ("cannot listen on [[::1]]:50051: gRPC C++ cannot
    bind [[::1]]:50051: in use, or not an address of this host"). The brackets are dropped,
    from the flag and from FMNIST_HOST alike."""
    assert settings_from(["--host", "[::1]"], {}).host == "::1"
    assert settings_from([], {"FMNIST_HOST": "[::1]"}).address == "[::1]:50051"
    with server_process(model_repository, "--host", "[::1]", "--workers", "1",
                        "--http-port", "0") as (_, logs):
        address = logs.wait_for("serving")[0]["address"]
        assert address.startswith("[::1]:")
        with grpc.insecure_channel(address) as channel:
            assert health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING)


def test_settings_made_in_code_drop_an_ipv6_hosts_brackets_too():
    """Only the flag and FMNIST_HOST dropped them: ``Settings(host="[::1]")`` kept its host
    "[::1]" and its address "[[::1]]:50051", which no server can bind."""
    assert (Settings(host="[::1]").host, Settings(host="[::1]").address) == ("::1", "[::1]:50051")
    assert Settings(host="::1") == Settings(host="[::1]")


@pytest.mark.parametrize("given_as", ["flag", "variable"])
def test_a_leading_tilde_in_the_tls_files_is_the_home_directory(tmp_path, monkeypatch, given_as):
    """--tls-cert=~/tls/cert.pem (bash leaves that ~ alone, as an env file does) named a file
    in a directory "~", which --model-repository=~/models no longer did; no TLS stays none."""
    monkeypatch.setenv("HOME", str(tmp_path))
    files = {"tls_cert": "cert.pem", "tls_key": "key.pem", "tls_client_ca": "ca.pem"}
    argv = [f"--{name.replace('_', '-')}=~/tls/{file}" for name, file in files.items()]
    environ = {f"FMNIST_{name.upper()}": f"~/tls/{file}" for name, file in files.items()}
    settings = (settings_from(argv, {}) if given_as == "flag" else settings_from([], environ))
    assert {name: getattr(settings, name) for name in files} == {
        name: str(tmp_path / "tls" / file) for name, file in files.items()}
    assert (settings_from([], {}).tls_cert, settings_from([], {}).tls_client_ca) == ("", "")


def test_settings_made_in_code_take_a_value_as_its_flag_takes_its_text(tmp_path, monkeypatch):
    """``Settings(model_repository="~/models")`` (an embedding program's, a test's) looked for
    a directory named "~", where --model-repository=~/models is the home's (a ~ of a TLS file
    alike), and kept "debug" for --log-level's DEBUG, which logging refuses: the flags'
    parsing was only checked in code, its result dropped."""
    monkeypatch.setenv("HOME", str(tmp_path))
    values = {"model_repository": "~/models", "tls_cert": "~/c.pem", "tls_key": "~/k.pem",
              "log_level": "debug", "grpc_server": "GRPCIO"}
    made = Settings(**values)
    assert (made.model_repository, made.tls_cert, made.log_level, made.grpc_server) == (
        tmp_path / "models", str(tmp_path / "c.pem"), "DEBUG", "grpcio")
    assert made == settings_from([f"--{name.replace('_', '-')}={text}"
                                  for name, text in values.items()], {})


@pytest.mark.parametrize("argv", [["--host", ""], ["--host", "[]"], ["--default-model", ""],
                                  ["--baseline-model", ""]])
def test_an_empty_host_or_model_is_refused_before_the_models_load(model_repository, argv):
    """`fmnist-serve --host "$HOST"` with HOST unset loaded every model, then failed as gRPC's
    "cannot bind" of ":50051" (`--default-model ""`: "no '' model"): refused now as an empty
    token or TLS file is, in one usage line."""
    started = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(model_repository),
         "--port", "0", "--http-port", "0", "--workers", "1", *argv],
        capture_output=True, text=True, timeout=60, check=False)
    assert (started.returncode, started.stdout) == (2, "")
    assert started.stderr == (f"fmnist-serve: error: {argv[0]}: empty (an unset variable?) "
                              "(see fmnist-serve --help)\n")
    with pytest.raises(ValueError, match=f"^{argv[0]}: empty"):
        Settings(**{argv[0][2:].replace("-", "_"): argv[1]})
