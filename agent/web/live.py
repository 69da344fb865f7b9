"""The live feed behind ``/events``: one poller for all open station pages.

While at least one page listens, the daemon's ``web.station`` view is fetched every
:data:`POLL_S` seconds over the control socket; when the rendered summary or cards change, the
new fragments go to every listener (each keeps only the newest: a slow phone never makes the
poller wait). With no listener nothing is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent.control import ControlError
from agent.web import pages

log = logging.getLogger(__name__)

POLL_S = 0.2
MAX_LISTENERS = 16


class TooManyListeners(Exception):
    pass


class LiveFeed:
    def __init__(self, fetch: Callable[[], Awaitable[Any]], poll_s: float = POLL_S) -> None:
        self._fetch = fetch
        self._poll_s = poll_s
        self._queues: set[asyncio.Queue[str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: str | None = None
        self._last_fragments: dict[str, str] | None = None

    @property
    def listeners(self) -> int:
        return len(self._queues)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[str]]:
        if len(self._queues) >= MAX_LISTENERS:
            raise TooManyListeners
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        if self._last is not None:
            q.put_nowait(self._last)
        self._queues.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="live-feed")
        try:
            yield q
        finally:
            self._queues.discard(q)

    async def _poll(self) -> None:
        while self._queues:
            try:
                data = await self._fetch()
                fragments = pages.live_fragments(data)
                ts = fragments.pop("asof")
            except ControlError as err:
                fragments = {"summary": pages.error_fragment(str(err)), "cards": ""}
                ts = ""
            # a bug in rendering must not end the feed for every open page (logged in full)
            except Exception:
                log.exception("live feed: rendering the station view failed")
                fragments = {"summary": pages.error_fragment("internal error"), "cards": ""}
                ts = ""
            if fragments != self._last_fragments:
                self._last_fragments = fragments
                self._publish(json.dumps({**fragments, "ts": ts}))
            await asyncio.sleep(self._poll_s)
        self._last = None  # nobody listens: the next listener gets a fresh view
        self._last_fragments = None

    def _publish(self, payload: str) -> None:
        self._last = payload
        for q in self._queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(payload)
