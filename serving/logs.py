"""Log set-up: one line per event, as text or JSON, naming the process (workers log side by
side); structured fields go in ``extra={"fields": {...}}`` and are rendered as ``key=value``
pairs or JSON keys."""

import json
import logging
import os
import sys
import threading
import time

# control characters (C0, DEL and C1: NEL ends a line for str.splitlines(), CSI drives a
# terminal) as \xNN, Unicode's line and paragraph separators as \uNNNN: a client's text in a
# message cannot start a line of its own
_ESCAPED = {code: f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
            for code in (*range(32), *range(127, 160), 0x2028, 0x2029)}


class TextFormatter(logging.Formatter):
    # the time in UTC, ISO 8601 (JSON's "time" too): the host's local time, with no zone, moved
    # the text lines by hours against JSON's, metrics and other hosts' logs
    converter = time.gmtime
    default_time_format, default_msec_format = "%Y-%m-%dT%H:%M:%S", "%s.%03d+00:00"

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The line, fields included, escaped; a traceback follows it as it is."""
        fields = getattr(record, "fields", {})
        line = " ".join([super().formatMessage(record), *(f"{k}={v}" for k, v in fields.items())])
        return line.translate(_ESCAPED)


class JsonFormatter(TextFormatter):  # its time
    def format(self, record: logging.LogRecord) -> str:
        document = {"time": self.formatTime(record), "level": record.levelname,
                    "logger": record.name, "pid": record.process,  # pid: which worker process
                    "message": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure(level: str, log_format: str) -> None:
    """Python's log; gRPC's own lines (its format, not JSON) are its errors (no file
    descriptor left, an assertion before a crash), those a client causes at will (a failed
    TLS handshake, a compressed call refused) only at DEBUG, unless GRPC_VERBOSITY, gRPC's
    variable, says otherwise; set here, before gRPC starts."""
    os.environ.setdefault("GRPC_VERBOSITY", "INFO" if level == "DEBUG" else "ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Python's tracebacks (a worker's failure, an uncaught exception on any thread) as log
    # lines too: in JSON, one object whose "exception" holds the traceback
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda hook: _log_uncaught(*hook)


def _log_uncaught(exc_type, value, traceback, _thread=None) -> None:
    """sys.excepthook, and threading.excepthook (on the thread that dies, named here); a
    thread's SystemExit ends it without a word, as with Python's own hook."""
    if exc_type is not SystemExit:
        logging.critical("uncaught exception", exc_info=(exc_type, value, traceback),
                         extra={"fields": {"thread": threading.current_thread().name}})
