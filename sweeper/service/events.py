"""Live updates: the supervisor's thread publishes an event (a trial finished, a stage began,
a sweep ended); every open page's event stream gets it at once. Nothing is pushed between
events, so an open page costs nothing while a trial runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

KEEPALIVE_S = 15.0
#: Events one page may fall behind by; a page further behind gets a "reload" instead (it reads
#: the study again), so a stalled page cannot make the service hold every event for it.
BACKLOG = 100


class Hub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        """From any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: dict[str, Any] | None) -> None:
        for q in self.listeners:
            if q.full():  # a page that stopped reading: what it missed is one reload
                while not q.empty():
                    q.get_nowait()
                q.put_nowait({"event": "changed", "missed": True})
            q.put_nowait(event)

    def close(self) -> None:
        self._fan_out(None)

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events until the hub closes (a comment now and then keeps proxies and
        browsers from giving up on a quiet stream)."""
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(BACKLOG)
        self.listeners.add(q)
        try:
            yield ": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event is None:
                    return
                yield f"data: {json.dumps(event)}\n\n"
        finally:
            self.listeners.discard(q)
