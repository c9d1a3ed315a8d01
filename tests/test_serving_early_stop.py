"""A stop signal while a single process is still starting (importing gRPC, onnxruntime...)."""

import signal

from tests.server_process import server_process


def test_sigterm_while_the_server_imports_exits_0_with_a_line(model_repository, monkeypatch):
    """For its first ~0.4 s (imports, before serve() took SIGTERM) a single process died by a
    SIGTERM (a rollout replacing a replica just started, `docker compose stop` right after
    `up`): exit 143 and not a line. It says so and exits 0, as a stop does later."""
    # logged as soon as the log is set up, before the imports: when to send the signal
    monkeypatch.setenv("FMNIST_XYZZY", "1")
    with server_process(model_repository, "--workers", "1", "--http-port", "0",
                        "--poll-interval", "0") as (process, logs):
        logs.wait_for("FMNIST_XYZZY: not a setting of fmnist-serve; ignored")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, logs.lines[-3:]
    assert not logs.matching("serving"), logs.lines  # it did stop while starting
    stop = logs.wait_for("shutdown requested")
    assert stop[0]["signal"] == "SIGTERM", stop
