"""The ``fmnist-serve`` command's entry point, and ``python -m serving``'s: it holds the stop
signals and ignores SIGUSR1 and SIGUSR2 before it imports anything else, then runs
``serving.cli.main``. The stop signals stay held until the process has handlers of its own
(``serve``, the supervisor's start): one that arrived while the modules loaded (the
command-line module's own imports included) ended it with no line (killed by it; SIGINT:
exit 130)."""

import signal

# What drains the server: SIGHUP too (a closed terminal, `kill -HUP`), unless it was ignored
# from the start (nohup); read at import, before any handler is set (workers inherit it).
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT,
                signal.SIGHUP if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN
                else signal.SIGTERM}
# Ignored by every process of the server (workers inherit it): they mean nothing here, and
# their default action ends a process (log-rotation scripts send SIGUSR1 to every process of a
# name, `pkill -USR1`).
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def main() -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for number in IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    from serving.cli import main as serve

    return serve()
