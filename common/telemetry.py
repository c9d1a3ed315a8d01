"""onnxruntime 1.29+ sends usage telemetry to Microsoft from Linux by default, and keeps a
device id and an event cache under ``$HOME/.cache`` (on a read-only root it logs a warning
instead). Training and serving turn it off, unless the operator has set the variable."""

import os


def without_onnxruntime_telemetry() -> None:
    """Before onnxruntime is imported: it reads the variable once, at start-up."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
