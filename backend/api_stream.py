"""A request's generation on a worker thread: chunks handed to the event loop, cancel on disconnect, SSE."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from backend.api_schemas import APIError, ClientGone, describe_error
from backend.generate import Chunk

POLL_S = 0.2                                    # how often a waiting request checks that its client is still there
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


class GenerationRun:
    """One generation on its own thread; the event loop awaits its chunks and cancels it if the client leaves."""

    def __init__(self, request: Request, start: Callable[[threading.Event], Iterator[Chunk]]) -> None:
        self.request = request
        self.cancel = threading.Event()
        self.client_gone = False
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()
        self._checked = time.monotonic()
        loop = asyncio.get_running_loop()

        def push(item: Any) -> None:
            self._items.append(item)
            with contextlib.suppress(RuntimeError):     # the loop closed at shutdown: nobody is waiting
                loop.call_soon_threadsafe(self._ready.set)

        def work() -> None:
            try:
                for chunk in start(self.cancel):
                    push(chunk)
            except Exception as exc:                    # handed to the request, which answers with it
                push(exc)
            finally:
                push(_END)

        threading.Thread(target=work, name="api-generation", daemon=True).start()

    async def next(self) -> Chunk | None:
        """The next chunk; None once generation ended, or once the client left (which cancels it)."""
        while True:
            if time.monotonic() - self._checked >= POLL_S:
                self._checked = time.monotonic()
                if await self.request.is_disconnected():
                    self.client_gone = True
                    self.cancel.set()
                    return None
            if self._items:
                item = self._items[0]
                if item is _END:
                    return None
                self._items.popleft()
                if isinstance(item, Exception):
                    raise item
                return item
            self._ready.clear()
            if not self._items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), POLL_S)

    async def first(self) -> Chunk:
        """The first chunk, awaited before any header is sent so that errors get their own status code."""
        chunk = await self.next()
        if chunk is None:
            if self.client_gone:
                raise ClientGone()
            raise APIError(503, "the generation was cancelled before it began because the model was loaded or "
                                "unloaded meanwhile; send the request again.", code="cancelled", kind="server_error")
        return chunk

    async def rest(self, first: Chunk) -> list[Chunk]:
        chunks = [first]
        while (chunk := await self.next()) is not None:
            chunks.append(chunk)
        if self.client_gone:
            raise ClientGone()
        return chunks


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(run: GenerationRun, first: Chunk, render: Callable[[Chunk], list[dict]], prelude: list[dict],
                  closing: Callable[[Chunk], list[dict]], done: bool = True) -> StreamingResponse:
    """Server-sent events; a client that goes away cancels the generation (finally, or run.next's check)."""
    async def events() -> AsyncIterator[str]:
        try:
            for item in prelude:
                yield sse(item)
            chunk: Chunk | None = first
            last = first
            while chunk is not None:
                last = chunk
                for item in render(chunk):
                    yield sse(item)
                chunk = await run.next()
            for item in closing(last):
                yield sse(item)
            if done:
                yield sse("[DONE]")
        except Exception as exc:                        # the status line is already sent: report in the stream
            yield sse(describe_error(exc)[1])
        finally:
            run.cancel.set()
    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
