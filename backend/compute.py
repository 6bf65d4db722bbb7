"""The one thread that runs a process's model loads and generations, whoever asks for them."""
from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Callable, Iterator


class ComputeThread:
    """The one thread that runs a local engine's loads and generations, whoever asks for them.

    On CPU, each thread that runs PyTorch's parallel ops gets an OpenMP thread pool of its own, and pools of
    different threads compete for the same cores: generating on a fresh thread per request (what a web
    server does) measured ~1.3x slower per token than on the thread that had loaded the model. On CUDA,
    torch.compile's CUDA graphs are kept per thread: a graph recorded at load is replayed only on the thread
    that recorded it (another thread records its own, in its own memory pool). One thread for all of it.
    """

    _END = object()

    def __init__(self) -> None:
        # a daemon thread of our own rather than an executor's: quitting the app must not wait for a generation
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="engine-compute", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

    def submit(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def call(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) on the compute thread; its result or its exception here."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def iterate(self, make: Callable[[], Iterator], cancel: threading.Event) -> Iterator:
        """The items of `make()`, produced on the compute thread; a consumer that stops early sets `cancel`
        and waits for the producer to notice (within one item), so nothing runs on after this returns."""
        items: queue.SimpleQueue = queue.SimpleQueue()

        def produce() -> None:
            try:
                for item in make():
                    items.put((item, None))
            except BaseException as exc:    # handed to the consumer, which raises it
                items.put((None, exc))
            finally:
                items.put((self._END, None))

        future = self.submit(produce)
        finished = False
        try:
            while True:
                item, exc = items.get()
                if exc is not None:
                    finished = True
                    raise exc
                if item is self._END:
                    finished = True
                    return
                yield item
        finally:
            if not finished:
                cancel.set()
            future.result()


_compute_thread: ComputeThread | None = None
_compute_lock = threading.Lock()


def compute_thread() -> ComputeThread:
    """The process's compute thread (one, shared by every engine of the process: tests and benchmarks make several)."""
    global _compute_thread
    with _compute_lock:
        if _compute_thread is None:
            _compute_thread = ComputeThread()
        return _compute_thread
