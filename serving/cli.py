"""``fmnist-serve`` / ``python -m serving``: serve a model repository over gRPC.

Exit status: 0 after a graceful shutdown (SIGTERM/SIGINT), 1 if the repository cannot be served
or the address cannot be bound, 2 for bad flags or env vars; errors are one line on stderr.
"""

import asyncio
import sys
from collections.abc import Sequence

from serving.settings import settings_from


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from(argv)
    except ValueError as error:
        return _fail(error, 2)
    from serving import logs
    from serving.errors import RepositoryError
    from serving.server import ListenError, serve

    logs.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except (RepositoryError, ListenError) as error:
        return _fail(error, 1)
    except KeyboardInterrupt:  # Ctrl-C while still loading, before the signal handlers exist
        return 130
    return 0


def _fail(error: Exception, status: int) -> int:
    print(f"fmnist-serve: error: {error}", file=sys.stderr)
    return status
