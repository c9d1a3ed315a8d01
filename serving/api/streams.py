"""Helpers for streaming RPCs."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable


async def map_ordered(
    items: AsyncIterator, function: Callable[..., Awaitable], window: int
) -> AsyncIterator:
    """Yields ``await function(item)`` for each item, in order, running up to ``window`` of
    them at the same time, so that one stream keeps every inference thread busy.

    The first error (of ``function`` or of reading ``items``) ends the iteration after the
    results before it, as a stream's contract says.
    """
    slots = asyncio.Semaphore(window)
    started: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()

    async def start_each():
        try:
            async for item in items:
                await slots.acquire()
                started.put_nowait(asyncio.ensure_future(function(item)))
        finally:
            started.put_nowait(None)

    reader = asyncio.create_task(start_each())
    try:
        while (future := await started.get()) is not None:
            try:
                result = await future
            finally:
                slots.release()
            yield result
        await reader  # raises what stopped the reading, if anything
    finally:
        reader.cancel()
        while not started.empty():
            pending = started.get_nowait()
            if pending is not None:
                pending.cancel()
