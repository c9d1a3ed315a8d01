"""Everything the server writes on stderr goes through its log, in the format asked for: an
exception nothing caught, on the main thread or another, is one log record holding its
traceback."""

import json
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
