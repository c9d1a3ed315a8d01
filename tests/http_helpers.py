"""The HTTP transport around a running server, for the tests/test_http_*.py modules."""

import contextlib
from pathlib import Path

from serving.http.transport import HttpTransport
from serving.settings import Settings
from tests.conftest import running_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".work" / "artifacts"  # what a person looks at after the run (screenshots)


def http_settings(model_repository: Path, **overrides) -> Settings:
    return Settings(**{"host": "127.0.0.1", "port": 0, "model_repository": model_repository,
                       "parallel_inferences": 2, "workers": 1, "max_request_images": 8,
                       "poll_interval": 0, "grace_period": 2.0, **overrides})


@contextlib.contextmanager
def http_server(settings: Settings, **options):
    """``(server, base URL)``: a real server and its HTTP transport on 127.0.0.1:0."""
    with running_server(settings) as server:
        transport = HttpTransport(settings, server.pipeline, server.classifier, server.inference,
                                  host=settings.host, port=0, **options)
        port = transport.start()
        scheme = "https" if settings.tls_cert else "http"
        try:
            yield server, f"{scheme}://127.0.0.1:{port}"
        finally:
            transport.stop(1.0)
