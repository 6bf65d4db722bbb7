"""Download progress: byte counts from concurrent file downloads turned into DownloadProgress reports."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from backend.hub.types import DownloadProgress, ProgressCallback, RemoteFile


def staged_size(staging: Path, f: RemoteFile) -> int:
    """Bytes of `f` already in the staging folder (verified or partial) from an earlier run."""
    for p in (staging / f.path, staging / (f.path + ".incomplete")):
        if p.is_file():
            return min(p.stat().st_size, f.size)
    return 0


class Tracker:
    """Turns byte counts from concurrent downloads into DownloadProgress reports."""

    def __init__(self, files: Sequence[RemoteFile], staging: Path, on_progress: ProgressCallback | None):
        self.on_progress = on_progress
        self.lock = threading.Lock()
        self.totals = {f.path: f.size for f in files}
        self.done = {f.path: staged_size(staging, f) for f in files}
        self.files_done = 0
        self.window: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self.fetched = 0  # bytes received in this run, for the speed
        self._emit("")

    def bar_class(self, f: RemoteFile, check_stop: Callable[[], None]) -> type:
        tracker = self

        class _Bar:  # the tqdm subset huggingface_hub's http_get drives
            def __init__(self, *args, initial: int = 0, **kwargs) -> None:
                tracker.add(f.path, initial, restart=True)  # http_get restarts at 0 if Range is ignored

            def __enter__(self) -> _Bar:
                return self

            def __exit__(self, *exc) -> None:
                return None

            def update(self, n: int) -> None:
                check_stop()  # between chunks: the cancel point inside a file
                tracker.add(f.path, n)

        return _Bar

    def add(self, path: str, n: int, restart: bool = False) -> None:
        with self.lock:
            if restart:
                self.done[path] = n
            else:
                self.done[path] += n
                self.fetched += n
            self._emit(path)

    def file_finished(self, f: RemoteFile) -> None:
        with self.lock:
            self.done[f.path] = f.size
            self.files_done += 1
            self._emit(f.path)

    def finish(self) -> None:
        with self.lock:
            self._emit("", finished=True)

    def _emit(self, path: str, finished: bool = False) -> None:
        now = time.monotonic()
        self.window.append((now, self.fetched))
        while len(self.window) > 2 and now - self.window[0][0] > 5.0:
            self.window.popleft()
        (_, b0), span = self.window[0], now - self.window[0][0]
        speed = (self.fetched - b0) / span if span > 0 else 0.0
        done, total = sum(self.done.values()), sum(self.totals.values())
        eta = (total - done) / speed if speed > 0 else (0.0 if done >= total else None)
        if self.on_progress:
            self.on_progress(DownloadProgress(
                path, self.done.get(path, 0), self.totals.get(path, 0), done, total,
                self.files_done, len(self.totals), speed, eta, finished))
