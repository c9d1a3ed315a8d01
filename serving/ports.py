"""The ports several worker processes share (SO_REUSEPORT): checked free, then held while the
workers bind them (``serving.workers``)."""

import contextlib
import socket

from serving.errors import WorkerStartError
from serving.settings import Settings, host_port


@contextlib.contextmanager
def reserved_port(settings: Settings):
    """The port, bound (not listening) and held while the workers bind it too
    (SO_REUSEPORT): port 0 becomes one free port they share, and a port another program
    holds fails here, with one line."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for port, what in ((settings.port, ""), (settings.http_port, " for HTTP"),
                       (settings.health_port, " for health")):
        if port:
            _refuse_taken(family, settings.host, port, what)
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        for option in (socket.SO_REUSEADDR, socket.SO_REUSEPORT):  # (TIME_WAIT is no owner)
            holder.setsockopt(socket.SOL_SOCKET, option, 1)
        try:
            holder.bind((settings.host, settings.port))
        except OSError as error:
            raise WorkerStartError(f"cannot listen on {settings.address}: {error}") from None
        yield holder.getsockname()[1]


def _refuse_taken(family: socket.AddressFamily, host: str, port: int, what: str) -> None:
    """SO_REUSEPORT lets any process of this user bind a port its workers listen on: a server
    already there (another fmnist-serve) would silently share the clients. A plain bind
    fails on a port someone listens on."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as error:
            raise WorkerStartError(f"cannot listen{what} on {host_port(host, port)}: "
                                   f"{error}") from None
