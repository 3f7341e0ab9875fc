"""Where a submission's events go: a blocking queue for CLIs, an asyncio queue for the API."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator

from edge_agent.runtime.scheduler import Event, Finished


class QueueSink:
    """For synchronous callers; iterate to receive events until the finish."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def put(self, event: Event) -> None:
        self._queue.put(event)

    def wait_taken(self, timeout_seconds: float) -> None:
        """The reader runs on its own and needs no handoff."""

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._queue.get()
            yield event
            if isinstance(event, Finished):
                return


class AsyncSink:
    """For asyncio callers: the decode thread hands events to the loop thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._taken = threading.Event()

    def put(self, event: Event) -> None:
        self._taken.clear()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def wait_taken(self, timeout_seconds: float) -> None:
        self._taken.wait(timeout_seconds)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            if self._queue.empty():
                self._taken.set()
            yield event
            if isinstance(event, Finished):
                return
