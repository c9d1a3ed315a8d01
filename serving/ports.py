"""The server's ports checked free before the models load; those several worker processes
share (SO_REUSEPORT) then held while the workers bind them (``serving.workers``)."""

import contextlib
import errno
import socket
from collections.abc import Callable
from typing import Any

from serving.errors import ListenError
from serving.settings import Settings, host_port


def check_free(settings: Settings) -> None:
    """ListenError "cannot listen{ for HTTP, health, metrics} on HOST:PORT: ..." if a port is
    another program's: said at once, not once the models have loaded (one process's case)."""
    for port, what in ((settings.port, ""), (settings.http_port, " for HTTP"), (
            settings.health_port, " for health"), (settings.metrics_port, " for metrics")):
        if port:
            _bound(settings.host, port, what).close()


@contextlib.contextmanager
def reserved_port(settings: Settings):
    """The port, bound (not listening) and held while the workers bind it too
    (SO_REUSEPORT): port 0 becomes one free port they share, and a port another program
    holds fails here, with one line.

    SO_REUSEPORT lets any process of this user bind a port its workers listen on: a server
    already there (another fmnist-serve) would silently share the clients. So each port is
    first bound without it (``check_free``): a plain bind fails on a port someone listens on."""
    check_free(settings)
    with _bound(settings.host, settings.port, "", socket.SO_REUSEPORT) as holder:
        yield holder.getsockname()[1]


def _bound(host: str, port: int, what: str, *options: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEADDR (TIME_WAIT is no owner) and
    ``options``; ListenError "cannot listen{what} on HOST:PORT: ..." if it cannot be."""
    bound = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    for option in (socket.SO_REUSEADDR, *options):
        bound.setsockopt(socket.SOL_SOCKET, option, 1)
    try:
        listening(what, host, port, lambda: bound.bind((host, port)))
    except ListenError:
        bound.close()
        raise
    return bound


def listening(what: str, host: str, port: int, listen: Callable[[], Any]) -> Any:
    """``listen()``'s result; ListenError "cannot listen{what} on HOST:PORT: ..." if it cannot:
    the one wording of a port that cannot be had, whichever part binds it."""
    try:
        return listen()
    except (OSError, RuntimeError) as error:  # sockets; the gRPC servers
        if getattr(error, "errno", None) == errno.EADDRNOTAVAIL:  # "Cannot assign requested..."
            error = f"{host} is not an address of this host (0.0.0.0: every interface)"
        raise ListenError(f"cannot listen{what} on {host_port(host, port)}: {error}") from None
