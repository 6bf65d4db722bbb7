"""Resumable, verified downloads of a repo's files into the models folder, blocking or on a thread."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from filelock import FileLock, Timeout
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from backend.hub.errors import (
    ChecksumError, DiskFullError, DownloadCancelled, DownloadError, NetworkError, translate_error,
)
from backend.hub.metadata import METADATA_FILE, read_metadata, write_metadata
from backend.hub.progress import Tracker, staged_size
from backend.hub.repo import destination, endpoint_url, is_weights, list_files, parse_repo, pick_files
from backend.hub.types import DownloadProgress, DownloadResult, ProgressCallback, RemoteFile, RepoRef

STAGING_DIR = ".downloads"  # hidden, so model lists (which skip dot-folders) never show a partial model


def download(repo: str | RepoRef, models_dir: str | Path = "models", *, token: str | None = None,
             endpoint: str | None = None, specific_files: Sequence[str] = (), threads: int = 4,
             allow_pickle: bool = False, allow_remote_code: bool = False, weights: bool = True,
             on_progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             retries: int = 4, backoff: float = 1.0) -> DownloadResult:
    """Fetch a repo into models_dir/<user>_<model>[_<branch>]; blocks. Raises DownloadError.

    `weights=False` fetches only the tokenizer, configs and docs (for a model a remote vLLM engine serves);
    like `specific_files`, it adds to the folder instead of replacing it, so a later full download completes it.
    """
    ref = parse_repo(repo) if isinstance(repo, str) else repo
    dest = destination(ref, models_dir)
    endpoint = endpoint_url(endpoint)
    listing = list_files(ref, token=token, endpoint=endpoint, allow_pickle=allow_pickle,
                         allow_remote_code=allow_remote_code)
    files = pick_files(listing, specific_files, allow_pickle, allow_remote_code)
    if not weights:
        files = [f for f in files if not is_weights(f.path)]
    recorded = _recorded_sha256(dest, listing.commit, files)
    if recorded is not None:
        size = sum(f.size for f in files)
        if on_progress:
            on_progress(DownloadProgress("", 0, 0, size, size, len(files), len(files), 0.0, 0.0, True))
        return DownloadResult(dest, ref, listing.commit, tuple(f.path for f in files), up_to_date=True,
                              sha256=recorded)
    staging = dest.parent / STAGING_DIR / dest.name
    staging.parent.mkdir(parents=True, exist_ok=True)
    # an OS lock, freed even if the process dies: one download per folder across app and CLI. The
    # lock file stays: deleting it would let a third downloader lock a new file while one waits on the old
    lock = FileLock(staging.parent / f"{dest.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DownloadError(f"{ref.repo_id} is already being downloaded into {dest}.") from None
    try:
        _prepare_staging(staging, listing.commit)
        _check_disk_space(staging, files)
        job = _Fetcher(ref, listing.commit, endpoint, token, staging, files, on_progress,
                       cancel or threading.Event(), retries, backoff)
        job.run(threads)
        hashes = {f.path: job.sha256[f.path] for f in files}
        write_metadata(staging, ref, endpoint, listing.commit, hashes)
        _install(staging, dest, whole=not specific_files and weights)
    finally:
        _drop_if_empty(staging)
        lock.release()
    return DownloadResult(dest, ref, listing.commit, tuple(f.path for f in files), sha256=hashes)


class DownloadJob:
    """A download on its own thread: read .progress, call .cancel(), then .wait() for the result."""

    def __init__(self, ref: RepoRef, models_dir: str | Path, on_progress: ProgressCallback | None,
                 kwargs: dict) -> None:
        self.progress: DownloadProgress | None = None
        self.result: DownloadResult | None = None
        self.error: DownloadError | None = None
        self._cancel = threading.Event()

        def report(progress: DownloadProgress) -> None:
            self.progress = progress
            if on_progress:
                on_progress(progress)

        def run() -> None:
            try:
                self.result = download(ref, models_dir, on_progress=report, cancel=self._cancel, **kwargs)
            except DownloadError as exc:
                self.error = exc
            except Exception as exc:  # a worker thread must not die silently
                self.error = DownloadError(f"Download of {ref.repo_id} failed unexpectedly: {exc!r}")

        self._thread = threading.Thread(target=run, name=f"download {ref.repo_id}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> DownloadResult | None:
        """The result once finished (None if still running after timeout); raises the job's error."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


def start_download(repo: str | RepoRef, models_dir: str | Path = "models", *,
                   on_progress: ProgressCallback | None = None, **kwargs) -> DownloadJob:
    """Start `download` on a background thread; same keyword arguments."""
    ref = parse_repo(repo) if isinstance(repo, str) else repo  # a bad name fails here, not later
    return DownloadJob(ref, models_dir, on_progress, kwargs)


class _Fetcher:
    """Downloads the files of one commit into the staging folder, resuming `<file>.incomplete`."""

    def __init__(self, ref, commit, endpoint, token, staging, files, on_progress, cancel,
                 retries, backoff) -> None:
        self.ref, self.commit, self.endpoint, self.token = ref, commit, endpoint, token
        self.staging, self.files, self.cancel = staging, files, cancel
        self.retries, self.backoff = retries, backoff
        self.abort = threading.Event()  # set when one file fails, so the others stop early
        self.sha256: dict[str, str] = {}
        self.tracker = Tracker(files, staging, on_progress)

    def run(self, threads: int) -> None:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            futures = [pool.submit(self._fetch, f) for f in self.files]
            errors = [e for e in (fut.exception() for fut in futures) if e is not None]
        for exc in sorted(errors, key=lambda e: isinstance(e, DownloadCancelled)):
            raise exc if isinstance(exc, DownloadError) else translate_error(exc, self.ref, self.endpoint)
        self.tracker.finish()

    def _check_stop(self) -> None:
        if self.cancel.is_set() or self.abort.is_set():
            raise DownloadCancelled("Download cancelled; run it again to resume where it stopped.")

    def _fetch(self, f: RemoteFile) -> None:
        try:
            self._fetch_verified(f)
        except BaseException:
            self.abort.set()
            raise

    def _fetch_verified(self, f: RemoteFile) -> None:
        final, part = self.staging / f.path, self.staging / (f.path + ".incomplete")
        if final.is_file():  # verified and renamed by an earlier run of this same commit
            self.sha256[f.path] = _hashes(final)[0]
            self.tracker.file_finished(f)
            return
        for attempt in range(self.retries + 1):
            self._check_stop()
            try:
                self._fetch_once(f, part)
                break
            except Exception as exc:
                err = translate_error(exc, self.ref, self.endpoint, f.path)
                if not isinstance(err, NetworkError) or attempt == self.retries:
                    raise err from exc
                if self.cancel.wait(self.backoff * 2 ** attempt):
                    self._check_stop()
        sha256, git_sha1 = _hashes(part)
        expected, actual = (f.sha256, sha256) if f.sha256 else (f.blob_id, git_sha1)
        if expected != actual:
            part.unlink()
            raise ChecksumError(f.path, expected, actual)
        os.replace(part, final)
        self.sha256[f.path] = sha256
        self.tracker.file_finished(f)

    def _fetch_once(self, f: RemoteFile, part: Path) -> None:
        url = hf_hub_url(self.ref.repo_id, f.path, revision=self.commit, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        if urlsplit(meta.location)[:2] != urlsplit(url)[:2]:
            headers.pop("authorization", None)  # a CDN's signed URL must not receive the Hub token
        have = part.stat().st_size if part.exists() else 0
        if have > f.size:
            part.unlink()
            have = 0
        with open(part, "ab") as fh:
            http_get(meta.location, fh, resume_size=have, headers=headers, expected_size=f.size,
                     tqdm_class=self.tracker.bar_class(f, self._check_stop))


def _recorded_sha256(dest: Path, commit: str, files: Sequence[RemoteFile]) -> dict[str, str] | None:
    """The hashes an earlier download of this commit recorded, if every file is still in place."""
    meta = read_metadata(dest)
    if meta is None or meta.commit != commit:
        return None
    if not all((dest / f.path).is_file() and (dest / f.path).stat().st_size == f.size for f in files):
        return None
    return {f.path: meta.sha256.get(f.path, "") for f in files}


def _prepare_staging(staging: Path, commit: str) -> None:
    marker = staging.parent / f"{staging.name}.commit"
    if staging.exists() and (not marker.is_file() or marker.read_text().strip() != commit):
        shutil.rmtree(staging)  # partial files of another commit cannot be resumed
    staging.mkdir(exist_ok=True)
    marker.write_text(commit + "\n")


def _drop_if_empty(staging: Path) -> None:
    """Forget a staging folder that holds nothing worth resuming."""
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()
    if not staging.exists():
        (staging.parent / f"{staging.name}.commit").unlink(missing_ok=True)


def _check_disk_space(staging: Path, files: Sequence[RemoteFile]) -> None:
    needed = sum(f.size - staged_size(staging, f) for f in files)
    free = shutil.disk_usage(staging).free
    if free < needed:
        raise DiskFullError(
            f"Not enough disk space: the download needs {needed / 1e9:.2f} GB but {staging.parent.parent} "
            f"has {free / 1e9:.2f} GB free. Free some space or use --models-dir on a larger disk.")


def _hashes(path: Path) -> tuple[str, str]:
    """sha256 (LFS files) and git blob sha1 (small files) in one read."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def _install(staging: Path, dest: Path, whole: bool) -> None:
    """Move verified files into place; a whole model appears in one rename."""
    (staging.parent / f"{staging.name}.commit").unlink(missing_ok=True)
    if not whole:
        dest.mkdir(exist_ok=True)
        for p in staging.iterdir():
            if p.name != METADATA_FILE or not (dest / METADATA_FILE).exists():
                os.replace(p, dest / p.name)
        shutil.rmtree(staging)
        return
    old = staging.parent / f"{dest.name}.old"
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
