"""A request's generation on a worker thread: chunks handed to the event loop, cancel on disconnect, SSE."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.errors import APIError, ClientGone, describe_error
from backend.generate import Chunk

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = object()


class GenerationRun:
    """One generation on its own thread; the event loop awaits its chunks and cancels it if the client leaves.

    Until the response starts, a watcher task listens for the client's disconnect (the body has been read, so the
    next ASGI message can only be that): a request still queued for the engine's lock, or a non-streamed one,
    is cancelled the moment its client goes. Once streaming, Starlette's StreamingResponse notices instead and
    closes the event generator, whose `finally` cancels.
    """

    def __init__(self, request: Request, start: Callable[[threading.Event], Iterator[Chunk]]) -> None:
        self.cancel = threading.Event()
        self.client_gone = False
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()
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
        self._watcher = asyncio.create_task(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.client_gone = True
        self.cancel.set()
        self._ready.set()

    def stop_watching(self) -> None:
        self._watcher.cancel()

    async def next(self) -> Chunk | None:
        """The next chunk; None once generation ended or the client left."""
        while not self.client_gone:
            if self._items:
                item = self._items[0]
                if item is _END:
                    return None
                self._items.popleft()
                if isinstance(item, Exception):
                    raise item
                return item
            self._ready.clear()
            if not self._items and not self.client_gone:
                await self._ready.wait()
        return None

    async def first(self) -> Chunk:
        """The first chunk, awaited before any header is sent so that errors get their own status code."""
        try:
            chunk = await self.next()
        except BaseException:
            self.stop_watching()
            raise
        if chunk is None:
            self.stop_watching()
            if self.client_gone:
                raise ClientGone()
            raise APIError(503, "the generation was cancelled before it began because the model was loaded or "
                                "unloaded meanwhile; send the request again.", code="cancelled", kind="server_error")
        return chunk

    async def rest(self, first: Chunk) -> list[Chunk]:
        """All chunks of a non-streamed answer."""
        try:
            chunks = [first]
            while (chunk := await self.next()) is not None:
                chunks.append(chunk)
        finally:
            self.stop_watching()
        if self.client_gone:
            raise ClientGone()
        return chunks


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def event_stream(run: GenerationRun, first: Chunk, render: Callable[[Chunk], list[dict]], prelude: list[dict],
                  closing: Callable[[Chunk], list[dict]], done: bool = True,
                  frame: Callable[[Any], str] = sse, media_type: str = "text/event-stream",
                  on_error: Callable[[Exception], Any] = lambda exc: describe_error(exc)[1]) -> StreamingResponse:
    """Server-sent events (or another framing: `frame`, e.g. NDJSON lines); a client that goes away closes this
    generator, and so cancels the generation. An error after the first chunk is the stream's last item."""
    async def events() -> AsyncIterator[str]:
        run.stop_watching()                             # StreamingResponse listens for the disconnect from here on
        try:
            for item in prelude:
                yield frame(item)
            chunk: Chunk | None = first
            last = first
            while chunk is not None:
                last = chunk
                for item in render(chunk):
                    yield frame(item)
                chunk = await run.next()
            for item in closing(last):
                yield frame(item)
            if done:
                yield frame("[DONE]")
        except Exception as exc:                        # the status line is already sent: report in the stream
            yield frame(on_error(exc))
        finally:
            run.cancel.set()
    return StreamingResponse(events(), media_type=media_type, headers=SSE_HEADERS)
