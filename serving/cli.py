"""``fmnist-serve`` / ``python -m serving`` (through ``serving.entry``): serve a model
repository over gRPC and HTTP.

Exit status: 0 after a graceful shutdown (SIGTERM, SIGINT or SIGHUP), 130 in a shell when a
second SIGINT cut it short (one process dies by it), 1 if the repository cannot be served, the
address cannot be bound, a TLS file cannot be read or used, a worker cannot start, or once the
gRPC port accepts no more connections (out of file descriptors: it drains first), 2 for bad
flags or env vars; errors are one line on stderr.
"""

import logging
import os
import sys
from collections.abc import Sequence

from common.flags import unread_env_var_warnings
from common.usage import usage_error
from serving.ports import check_free
from serving.settings import settings_from
from serving.workers_metrics import MULTIPROCESS_ENV


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except ValueError as error:
        return _fail(error, 2)
    from serving import errors, logs

    logs.configure(settings.log_level, settings.log_format)
    # a misspelt variable (FMNIST_METRIC_PORT) was ignored without a word; every one is said,
    # the server's environment its own (a shell's holds fmnist's too); FMNIST_DATA_DIR is read
    # at run time (the page's test images), FMNIST_VENV by ./run
    for line in unread_env_var_warnings("fmnist-serve", ["FMNIST_DATA_DIR", "FMNIST_VENV"]):
        logging.getLogger("serving").warning(line)
    try:
        if settings.workers > 1:  # nothing imported before may load prometheus_client: the
            # supervisor first sets up its multiprocess directory
            from serving.workers import supervise

            return supervise(settings)
        # one process keeps its metrics in memory and serves them: a PROMETHEUS_MULTIPROC_DIR
        # left in the environment (another program's) made it a worker without an endpoint
        # (the supervisor sets its own for its workers)
        os.environ.pop(MULTIPROCESS_ENV, None)
        check_free(settings)  # before the models load (several workers: reserved_port)
        from serving.server import serve

        status = serve(settings)
    except (errors.RepositoryError, errors.ListenError, errors.WorkerStartError) as error:
        return _fail(error, 1, settings.log_format)
    except KeyboardInterrupt:  # Ctrl-C twice to workers
        return 130
    # Not back into the interpreter, to be finalized: granian's threads (and gRPC's) may still
    # take the GIL meanwhile, and granian then aborts ("panic in a function that cannot unwind")
    logging.shutdown()
    os._exit(status)


def _fail(error: Exception, status: int, log_format: str = "text") -> int:
    """One line on stderr (status 2: a usage error's); a JSON log's last line is JSON too (bad
    flags come before it)."""
    if log_format == "json":
        logging.getLogger("serving").critical("cannot serve", extra={"fields": {"error": error}})
    else:
        print(usage_error("fmnist-serve", error) if status == 2 else
              f"fmnist-serve: error: {error}", file=sys.stderr)
    return status
