"""Everything the server writes on stderr goes through its log, in the format asked for: an
exception nothing caught, on the main thread or another, is one log record holding its
traceback."""

import json
import os
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("where", ["main", "thread"])
def test_an_uncaught_exception_is_one_json_log_record(where):
    """With --log-format json a thread dying printed Python's raw traceback on stderr
    (threading.excepthook was Python's own), lines no log collector could parse."""
    code = textwrap.dedent(f"""
        import threading
        from serving import logs
        logs.configure("INFO", "json")
        def fail():
            raise ValueError("no such thing")
        if {where!r} == "thread":
            thread = threading.Thread(target=fail, name="repository-watcher")
            thread.start()
            thread.join()
        else:
            fail()
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    record = json.loads(lines[0])
    assert (record["level"], record["message"], record["thread"]) == (
        "CRITICAL", "uncaught exception",
        "repository-watcher" if where == "thread" else "MainThread")
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: no such thing")


def test_a_thread_ending_by_system_exit_logs_nothing():
    """As with Python's own hook: SystemExit ends a thread without a word."""
    code = ("import sys, threading\nfrom serving import logs\nlogs.configure('INFO', 'json')\n"
            "thread = threading.Thread(target=sys.exit)\nthread.start()\nthread.join()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")


def test_text_and_json_lines_give_the_same_time_in_utc_whatever_the_hosts_zone():
    """The text format wrote the host's local time with no zone (TZ=Asia/Tokyo: 09:00 for
    JSON's 00:00 of the same moment, nothing saying which), so switching --log-format, or
    reading text logs from hosts in other zones beside metrics and JSON logs, moved events by
    hours, and an autumn DST change wrote an hour twice. Both now give UTC, as JSON did."""
    script = textwrap.dedent("""
        import json, logging
        from serving.logs import JsonFormatter, TextFormatter
        record = logging.LogRecord("serving.server", logging.INFO, "x.py", 1, "stopped",
                                   (), None)
        record.created, record.msecs = 0.25, 250.0
        print(TextFormatter().format(record))
        print(json.loads(JsonFormatter().format(record))["time"])
    """)
    text, json_time = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        env={**os.environ, "TZ": "Asia/Tokyo"}).stdout.splitlines()
    assert json_time == "1970-01-01T00:00:00.250+00:00"
    assert text.startswith(f"{json_time} INFO serving.server[")
